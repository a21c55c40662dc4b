//! The Debian example built through the library in a real VM (QEMU microvm, TCG here), on a
//! merged-/usr Debian 12 base with no /etc/resolv.conf and a custom ENV in its config
//! (`scripts/debian-base.sh`), then booted: one build, many checks.
//!
//! Needs the static vminit (`bash scripts/build-vminit.sh`), QEMU, e2fsprogs, mmdebstrap and the
//! Debian mirror; `bash scripts/test.sh` provides them. Outside CI a missing tool skips with the
//! reason printed; under `CI` it fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

mod support;

use support::{collector, debugfs, guest, prerequisites, repo};

use firebuild_build::{BuildOptions, BuildRequest, Builder, Event, RunRequest, Runner};

/// Every path in the ext4 image (`rdump` of `/` as root keeps the tree; names are all we use).
fn image_paths(image: &Path, scratch: &Path) -> BTreeSet<String> {
    let dump = scratch.join("dump");
    std::fs::create_dir_all(&dump).unwrap();
    let out = Command::new("debugfs")
        .args(["-R", &format!("rdump / {}", dump.display())])
        .arg(image)
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut paths = BTreeSet::new();
    walk(&dump, &dump, &mut paths);
    std::fs::remove_dir_all(&dump).unwrap();
    paths
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        out.insert(rel);
        if entry.file_type().unwrap().is_dir() {
            walk(root, &path, out);
        }
    }
}

/// Every path in the base layout's single uncompressed layer.
fn base_paths(layout: &Path) -> BTreeSet<String> {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let blob = |digest: &str| layout.join("blobs/sha256").join(&digest[7..]);
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    let layer = blob(manifest["layers"][0]["digest"].as_str().unwrap());
    let out = Command::new("tar").arg("-tf").arg(&layer).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_owned())
        .filter(|l| !l.is_empty() && l != ".")
        .collect()
}

/// Paths the steps of examples/debian may add to the base: the package, the user, the
/// example's own files, and apt/dpkg's bookkeeping.
fn written_by_the_steps(path: &str, package_files: &BTreeSet<String>) -> bool {
    const PREFIXES: &[&str] = &[
        "home/app",
        "opt/app",
        "etc/build-info",
        "tmp/kept-in-tmp",
        "run/app",
        "var/lib/dpkg/",
        "var/lib/apt/",
        "var/cache/apt/",
        "var/cache/debconf/",
        "var/log/",
        "var/mail/app",
        "etc/passwd-",
        "etc/group-",
        "etc/shadow-",
        "etc/gshadow-",
        "etc/subuid",
        "etc/subgid",
    ];
    package_files.contains(path) || PREFIXES.iter().any(|p| path.starts_with(p))
}

fn consoles(seen: &Mutex<Vec<Event>>) -> String {
    seen.lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::Console { line } => Some(format!("{line}\n")),
            _ => None,
        })
        .collect()
}

#[test]
fn the_debian_example_builds_and_runs() {
    let Some((vminit, layout)) = prerequisites() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let rt = tokio::runtime::Runtime::new().unwrap();

    // Build.
    let mut req = BuildRequest::new(repo().join("examples/debian"), "debian", &out_dir);
    req.build_args = vec![("BASE".into(), format!("oci:{}", layout.display()))];
    let cache = dir.path().join("layers");
    let builder = Builder::new(BuildOptions::new(guest(&vminit), &cache));
    let (sink, seen) = collector();
    let built = rt.block_on(builder.build(&req, sink));
    let events = seen.lock().unwrap().clone();
    let output: String = events
        .iter()
        .filter_map(|e| match e {
            Event::Output { line, .. } => Some(format!("{line}\n")),
            _ => None,
        })
        .collect();
    let built = built.unwrap_or_else(|e| panic!("{e:?}\noutput:\n{output}"));
    let image = &built.image;

    // The events: steps with their instruction text, the agent in, credentials scrubbed.
    assert!(events.contains(&Event::AgentConnected), "{events:?}");
    assert!(events.contains(&Event::CredentialsScrubbed), "{events:?}");
    assert!(
        events.iter().any(|e| matches!(e,
        // apt, useradd, COPY, RUN, WORKDIR (a step: buildkit makes the directory at its line).
        Event::StepStarted { number: 1, total: 5, instruction, .. }
            if instruction.starts_with("RUN apt-get update"))),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::StepFinished {
                number: 5,
                exit_code: 0,
                ..
            }
        )),
        "{events:?}"
    );
    assert!(output.contains("Setting up hello"), "{output}");

    // The package is installed (apt reached the mirror through the build's resolver), the
    // COPY kept its owner, the base's ENV reached RUN, and /tmp and /run writes are kept.
    assert!(debugfs(image, "stat /usr/bin/hello").contains("Mode:  0755"));
    let greet = debugfs(image, "stat /opt/app/bin/greet");
    assert!(greet.contains("User:  1000   Group:  1000"), "{greet}");
    let info = debugfs(image, "cat /etc/build-info");
    assert!(
        info.starts_with("base says debian-12; PATH=/opt/app/bin:/usr/local/sbin:/usr/local/bin:"),
        "{info:?}"
    );
    assert_eq!(debugfs(image, "cat /tmp/kept-in-tmp"), "kept\n");
    assert_eq!(debugfs(image, "cat /run/app/kept-in-run"), "kept\n");

    // Nothing of the build is left: the image is the base plus what the steps wrote.
    let base = base_paths(&layout);
    let package_files: BTreeSet<String> = debugfs(image, "cat /var/lib/dpkg/info/hello.list")
        .lines()
        .map(|l| l.trim_start_matches('/').to_owned())
        .collect();
    let extra: Vec<String> = image_paths(image, dir.path())
        .into_iter()
        .filter(|p| !base.contains(p) && !written_by_the_steps(p, &package_files))
        .filter(|p| p != "lost+found")
        .collect();
    assert!(
        extra.is_empty(),
        "paths not from the base nor the steps: {extra:?}"
    );
    for absent in [
        "/etc/resolv.conf",
        "/etc/hostname",
        "/var/lib/firebuild",
        "/firebuild",
    ] {
        assert!(
            debugfs(image, &format!("stat {absent}")).is_empty(),
            "{absent}"
        );
    }
    assert!(
        !base.contains("etc/resolv.conf"),
        "the base must have no resolv.conf"
    );

    // The manifest carries the image config as Docker would: base ENV merged, CMD, USER.
    let config = &built.manifest.image;
    let env = |name: &str| {
        config
            .env
            .iter()
            .find(|v| v.name == name)
            .map(|v| v.value.clone())
    };
    assert_eq!(env("FIREBUILD_BASE").as_deref(), Some("debian-12"));
    assert!(
        env("PATH")
            .unwrap()
            .starts_with("/opt/app/bin:/usr/local/sbin")
    );
    assert_eq!(config.user.as_deref(), Some("app"));
    assert_eq!(config.workdir.as_deref(), Some("/home/app"));
    // Content (~280 MB with apt's caches) + ext4 metadata + a 16 MiB journal + 32 MiB headroom,
    // not the 4 GiB work image it was built in (328 MiB when measured).
    assert!(built.size_bytes < 360 << 20, "{} bytes", built.size_bytes);
    eprintln!("debian image: {} MiB", built.size_bytes >> 20);

    // Booted without metadata: the CMD runs as the image's user, with its ENV.
    let runner = Runner::new(guest(&vminit));
    let (sink, seen) = collector();
    let ran = rt
        .block_on(runner.run(&RunRequest::new(image), sink))
        .unwrap();
    let console = consoles(&seen);
    assert_eq!(ran.exit_code, 0, "{console}");
    assert!(console.contains("Hello, world!"), "{console}");
    assert!(
        console.contains("greet: running as app in /home/app; FIREBUILD_BASE=debian-12"),
        "{console}"
    );

    // Arguments replace CMD; the workload's exit code comes back.
    let mut req = RunRequest::new(image);
    req.args = vec!["sh".into(), "-c".into(), "echo args ran; exit 3".into()];
    let (sink, seen) = collector();
    let ran = rt.block_on(runner.run(&req, sink)).unwrap();
    let console = consoles(&seen);
    assert_eq!(ran.exit_code, 3, "{console}");
    assert!(console.contains("args ran"), "{console}");

    // With metadata: hostname, a user with an SSH key, a file and a first-boot script.
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPtestkeyfortheruntest operator@host";
    let mut req = RunRequest::new(image);
    req.metadata = Some(serde_json::json!({
        "instance-id": "i-run-test",
        "hostname": "runbox",
        "users": [{"name": "ops", "uid": 1500, "ssh-authorized-keys": [key]}],
        "files": {"motd": {"path": "/etc/motd", "mode": "0644",
                           "content": {"base64": "d2VsY29tZSB0byBydW5ib3gK"}}},
        "firstboot": {"script": "#!/bin/sh\necho firstboot ran on $(hostname) > /var/firstboot.txt\n"},
    }));
    req.args = vec![
        "sh".into(),
        "-c".into(),
        "echo host is $(hostname); cat /etc/motd".into(),
    ];
    let (sink, seen) = collector();
    let ran = rt.block_on(runner.run(&req, sink)).unwrap();
    let console = consoles(&seen);
    assert_eq!(ran.exit_code, 0, "{console}");
    assert!(console.contains("host is runbox"), "{console}");
    assert!(console.contains("welcome to runbox"), "{console}");
    assert_eq!(debugfs(image, "cat /etc/hostname"), "runbox\n");
    assert!(debugfs(image, "cat /home/ops/.ssh/authorized_keys").contains(key));
    assert_eq!(
        debugfs(image, "cat /var/firstboot.txt"),
        "firstboot ran on runbox\n"
    );
}
