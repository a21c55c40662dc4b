//! Docker's image against firebuild's: every difference, minus the ones that are by design (each
//! listed once, with its reason, in docs/conformance.md, which the harness writes from
//! [`BY_DESIGN`]).

use firebuild_plan::{Command, ImageConfig};
use firebuild_rootfs::config::{OciImageConfig, OciRunConfig};

use super::tree::Tree;

/// Which side may have a path the other lacks, or differ in what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    /// Docker's export shows the container's file here, not the image's: not compared unless
    /// only firebuild has it.
    Container,
    /// Only Docker's export has it.
    OnlyInDocker,
    /// Only firebuild's image has it.
    OnlyInFirebuild,
}

/// A difference that is by design: the path, which side may have it, and why.
pub struct Rule {
    pub path: &'static str,
    pub allowed: Allowed,
    pub why: &'static str,
}

const CONTAINER: &str = "written by `docker create` into the container (its init layer) over \
    whatever the image has, for Docker to bind-mount; `docker export` shows the container's";

const MOUNT_POINT: &str = "a mount point `docker create` adds to the container (its init layer) \
    when the image lacks it; the image has none";

/// The differences that are by design.
pub const BY_DESIGN: &[Rule] = &[
    Rule {
        path: "/.dockerenv",
        allowed: Allowed::Container,
        why: CONTAINER,
    },
    Rule {
        path: "/etc/hostname",
        allowed: Allowed::Container,
        why: CONTAINER,
    },
    Rule {
        path: "/etc/hosts",
        allowed: Allowed::Container,
        why: CONTAINER,
    },
    Rule {
        path: "/etc/resolv.conf",
        allowed: Allowed::Container,
        why: CONTAINER,
    },
    Rule {
        path: "/etc/mtab",
        allowed: Allowed::Container,
        why: CONTAINER,
    },
    Rule {
        path: "/dev/console",
        allowed: Allowed::Container,
        why: CONTAINER,
    },
    Rule {
        path: "/dev",
        allowed: Allowed::OnlyInDocker,
        why: MOUNT_POINT,
    },
    Rule {
        path: "/dev/pts",
        allowed: Allowed::OnlyInDocker,
        why: MOUNT_POINT,
    },
    Rule {
        path: "/dev/shm",
        allowed: Allowed::OnlyInDocker,
        why: MOUNT_POINT,
    },
    Rule {
        path: "/proc",
        allowed: Allowed::OnlyInDocker,
        why: MOUNT_POINT,
    },
    Rule {
        path: "/sys",
        allowed: Allowed::OnlyInDocker,
        why: MOUNT_POINT,
    },
    Rule {
        path: "/etc",
        allowed: Allowed::OnlyInDocker,
        why: "the parent `docker create` makes for the container's /etc files above, on a base \
            without /etc",
    },
    Rule {
        path: "/lost+found",
        allowed: Allowed::OnlyInFirebuild,
        why: "ext4's directory for fsck, made by mkfs.ext4; not a file of the image",
    },
];

fn allowed(path: &str, side: Allowed) -> bool {
    BY_DESIGN
        .iter()
        .any(|r| r.allowed == side && r.path == path)
}

/// The file trees' differences, one line each.
pub fn trees(docker: &Tree, firebuild: &Tree) -> Vec<String> {
    let mut diffs = Vec::new();
    for (path, d) in docker {
        if allowed(path, Allowed::Container) {
            continue;
        }
        match firebuild.get(path) {
            None if allowed(path, Allowed::OnlyInDocker) => {}
            None => diffs.push(format!("{path}: only in docker ({d})")),
            Some(f) if f != d => diffs.push(format!("{path}: docker {d}; firebuild {f}")),
            Some(_) => {}
        }
    }
    for (path, f) in firebuild {
        if !docker.contains_key(path) && !allowed(path, Allowed::OnlyInFirebuild) {
            diffs.push(format!("{path}: only in firebuild ({f})"));
        }
    }
    diffs
}

/// A shell-form CMD/ENTRYPOINT as the argv Docker stores (`shell + [command]`).
fn as_exec(command: Option<Command>, shell: &[String]) -> Option<Vec<String>> {
    command.map(|c| match c {
        Command::Exec(argv) => argv,
        Command::Shell(line) => shell.iter().cloned().chain([line]).collect(),
    })
}

/// The image configs' differences, one line per field.
pub fn configs(docker: &OciRunConfig, firebuild: &ImageConfig) -> Vec<String> {
    let docker = OciImageConfig {
        config: docker.clone(),
        ..OciImageConfig::default()
    }
    .to_image_config();
    let default_shell = vec!["/bin/sh".to_owned(), "-c".to_owned()];
    let shell = firebuild.shell.clone().unwrap_or(default_shell);
    let mut f = firebuild.clone();
    let mut d = docker;
    let (f_cmd, d_cmd) = (as_exec(f.cmd.take(), &shell), as_exec(d.cmd.take(), &[]));
    let (f_ep, d_ep) = (
        as_exec(f.entrypoint.take(), &shell),
        as_exec(d.entrypoint.take(), &[]),
    );
    let mut diffs = Vec::new();
    let mut field = |name: &str, d: String, f: String| {
        if d != f {
            diffs.push(format!("config {name}: docker {d}; firebuild {f}"));
        }
    };
    field("Cmd", format!("{d_cmd:?}"), format!("{f_cmd:?}"));
    field("Entrypoint", format!("{d_ep:?}"), format!("{f_ep:?}"));
    let env = |c: &ImageConfig| -> Vec<String> {
        c.env
            .iter()
            .map(|e| format!("{}={}", e.name, e.value))
            .collect()
    };
    field("Env", format!("{:?}", env(&d)), format!("{:?}", env(&f)));
    field(
        "WorkingDir",
        format!("{:?}", d.workdir),
        format!("{:?}", f.workdir),
    );
    field("User", format!("{:?}", d.user), format!("{:?}", f.user));
    field("Shell", format!("{:?}", d.shell), format!("{:?}", f.shell));
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    field(
        "ExposedPorts",
        format!("{:?}", sorted(d.exposed_ports.clone())),
        format!("{:?}", sorted(f.exposed_ports.clone())),
    );
    field(
        "Labels",
        format!("{:?}", d.labels),
        format!("{:?}", f.labels),
    );
    field(
        "Volumes",
        format!("{:?}", sorted(d.volumes.clone())),
        format!("{:?}", sorted(f.volumes.clone())),
    );
    field(
        "StopSignal",
        format!("{:?}", d.stop_signal),
        format!("{:?}", f.stop_signal),
    );
    field(
        "Healthcheck",
        format!("{:?}", d.healthcheck),
        format!("{:?}", f.healthcheck),
    );
    field(
        "OnBuild",
        format!("{:?}", d.onbuild),
        format!("{:?}", f.onbuild),
    );
    diffs
}

/// The RUN steps' output, step by step.
pub fn outputs(docker: &[Vec<String>], firebuild: &[Vec<String>]) -> Vec<String> {
    if docker == firebuild {
        return Vec::new();
    }
    vec![format!(
        "RUN output: docker {docker:?}; firebuild {firebuild:?}"
    )]
}
