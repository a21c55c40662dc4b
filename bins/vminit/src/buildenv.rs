//! The build environment of build mode: `/etc/resolv.conf`, `/etc/hosts` and the kernel
//! hostname, as BuildKit gives every RUN, put back exactly as they were afterwards.
//!
//! The rule: BuildKit bind-mounts these two files into every RUN container and never commits
//! them to the image (its executor's `MountStubsCleaner` names exactly `/etc/resolv.conf` and
//! `/etc/hosts`); the hostname is only the UTS name, with no `/etc/hostname` (a RUN listing
//! `/etc` under Docker shows none). firebuild runs the steps on the image itself, so it writes them for
//! the duration of the steps and restores the originals (absent, a regular file's bytes, mode,
//! owner and times, or a symlink's target) before it reports `Success` or `Abort`.

use std::net::Ipv4Addr;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rustix::fs::{AtFlags, CWD, Timespec, Timestamps};

/// BuildKit's hostname for build containers.
pub const HOSTNAME: &str = "buildkitsandbox";
/// BuildKit's `/etc/hosts` for build containers.
pub const HOSTS: &str =
    "127.0.0.1\tlocalhost buildkitsandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n";
/// Largest original file kept in memory; a larger one makes the build fail rather than be lost.
const MAX_ORIGINAL: u64 = 1 << 20;

/// What a path was before the build.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Original {
    Absent,
    File {
        bytes: Vec<u8>,
        mode: u32,
        owner: (u32, u32),
        times: (Timespec, Timespec),
    },
    Symlink {
        target: PathBuf,
        owner: (u32, u32),
        times: (Timespec, Timespec),
    },
}

/// The files written for the build and what they replaced; [`BuildEnv::restore`] (or drop)
/// puts the originals back.
#[derive(Debug)]
pub struct BuildEnv {
    saved: Vec<(PathBuf, Original)>,
    etc: PathBuf,
    /// `None`: `/etc` was created for the build.
    etc_times: Option<(Timespec, Timespec)>,
    hostname: Option<Vec<u8>>,
    done: bool,
}

/// The contents of `/etc/resolv.conf` for the name servers `dns`.
pub fn resolv_conf(dns: &[Ipv4Addr]) -> String {
    let mut text = String::from("# firebuild build environment (not kept in the image)\n");
    for ns in dns {
        text.push_str(&format!("nameserver {ns}\n"));
    }
    text
}

fn times(md: &std::fs::Metadata) -> (Timespec, Timespec) {
    (
        Timespec {
            tv_sec: md.atime(),
            tv_nsec: md.atime_nsec(),
        },
        Timespec {
            tv_sec: md.mtime(),
            tv_nsec: md.mtime_nsec(),
        },
    )
}

fn set_times(path: &Path, (atime, mtime): (Timespec, Timespec)) -> std::io::Result<()> {
    let ts = Timestamps {
        last_access: atime,
        last_modification: mtime,
    };
    rustix::fs::utimensat(CWD, path, &ts, AtFlags::SYMLINK_NOFOLLOW).map_err(Into::into)
}

fn save(path: &Path) -> anyhow::Result<Original> {
    let md = match std::fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Original::Absent),
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", path.display())),
    };
    let owner = (md.uid(), md.gid());
    if md.file_type().is_symlink() {
        let target =
            std::fs::read_link(path).with_context(|| format!("reading {}", path.display()))?;
        return Ok(Original::Symlink {
            target,
            owner,
            times: times(&md),
        });
    }
    anyhow::ensure!(
        md.file_type().is_file(),
        "{} is neither a file nor a symlink",
        path.display()
    );
    let bytes = firebuild_guest::paths::read_bounded(path, MAX_ORIGINAL)?
        .with_context(|| format!("{} vanished", path.display()))?;
    Ok(Original::File {
        bytes,
        mode: md.permissions().mode() & 0o7777,
        owner,
        times: times(&md),
    })
}

/// Removes whatever is at `path` without following a symlink (a missing path is fine).
fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Writes a new regular file at `path` (replacing a file or symlink, never following it).
fn write_new(path: &Path, bytes: &[u8], mode: u32, owner: (u32, u32)) -> std::io::Result<()> {
    use std::io::Write as _;
    remove(path)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    f.write_all(bytes)?;
    // chown first: it clears set-id bits that chmod then sets. Skipped when already right (an
    // unprivileged `--root` run).
    let md = f.metadata()?;
    if (md.uid(), md.gid()) != owner {
        std::os::unix::fs::fchown(&f, Some(owner.0), Some(owner.1))?;
    }
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn put_back(path: &Path, original: &Original) -> std::io::Result<()> {
    match original {
        Original::Absent => remove(path),
        Original::File {
            bytes,
            mode,
            owner,
            times,
        } => {
            write_new(path, bytes, *mode, *owner)?;
            set_times(path, *times)
        }
        Original::Symlink {
            target,
            owner,
            times,
        } => {
            remove(path)?;
            std::os::unix::fs::symlink(target, path)?;
            let md = std::fs::symlink_metadata(path)?;
            if (md.uid(), md.gid()) != *owner {
                std::os::unix::fs::lchown(path, Some(owner.0), Some(owner.1))?;
            }
            set_times(path, *times)
        }
    }
}

impl BuildEnv {
    /// Saves the originals under `root` and writes the build's files; `kernel_hostname` also
    /// sets the kernel's hostname (only for the real root). On an error, what was already
    /// written is put back (drop).
    pub fn install(root: &Path, dns: &[Ipv4Addr], kernel_hostname: bool) -> anyhow::Result<Self> {
        if dns.is_empty() {
            tracing::warn!(
                "no name server in the kernel's ip= (dns0/dns1 fields): the build has no DNS"
            );
        }
        let etc = root.join("etc");
        let etc_times = match std::fs::symlink_metadata(&etc) {
            Ok(md) if md.is_dir() => Some(times(&md)),
            Ok(_) => anyhow::bail!("{} is not a directory", etc.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&etc).with_context(|| format!("creating {}", etc.display()))?;
                std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o755))?;
                None
            }
            Err(e) => return Err(e).with_context(|| format!("inspecting {}", etc.display())),
        };
        let mut env = Self {
            saved: Vec::new(),
            etc,
            etc_times,
            hostname: None,
            done: false,
        };
        let files = [
            ("resolv.conf", resolv_conf(dns)),
            ("hosts", HOSTS.to_owned()),
        ];
        for (name, text) in files {
            let path = env.etc.join(name);
            let original = save(&path)?;
            env.saved.push((path.clone(), original));
            write_new(&path, text.as_bytes(), 0o644, (0, 0))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        if kernel_hostname {
            let old = rustix::system::uname().nodename().to_bytes().to_vec();
            rustix::system::sethostname(HOSTNAME.as_bytes()).context("setting the hostname")?;
            env.hostname = Some(old);
        }
        tracing::info!(
            nameservers = ?dns,
            "build environment: /etc/resolv.conf, /etc/hosts (restored after the steps)"
        );
        Ok(env)
    }

    /// Puts every original back (deletes what was absent, removes `/etc` again if it was
    /// created and is empty); idempotent. Tries everything, returns the first error.
    pub fn restore(&mut self) -> anyhow::Result<()> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        let mut first = None;
        for (path, original) in self.saved.iter().rev() {
            if let Err(e) = put_back(path, original) {
                tracing::error!("restoring {}: {e}", path.display());
                first.get_or_insert_with(|| anyhow::anyhow!("restoring {}: {e}", path.display()));
            }
        }
        match self.etc_times {
            Some(t) => {
                if let Err(e) = set_times(&self.etc, t) {
                    tracing::warn!("restoring the times of {}: {e}", self.etc.display());
                }
            }
            None => {
                if let Err(e) = std::fs::remove_dir(&self.etc) {
                    tracing::info!("keeping {} (created by the build): {e}", self.etc.display());
                }
            }
        }
        if let Some(old) = &self.hostname
            && let Err(e) = rustix::system::sethostname(old)
        {
            tracing::warn!("restoring the hostname: {e}");
        }
        if first.is_none() {
            tracing::info!("build environment removed: /etc files restored");
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for BuildEnv {
    fn drop(&mut self) {
        let _ = self.restore();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// Symlink?, bytes or target, mode, owner, mtime.
    type State = (bool, Vec<u8>, u32, (u32, u32), (i64, i64));

    /// Everything observable about a path.
    fn state(path: &Path) -> Option<State> {
        let md = std::fs::symlink_metadata(path).ok()?;
        let link = md.file_type().is_symlink();
        let data = if link {
            std::fs::read_link(path)
                .unwrap()
                .into_os_string()
                .into_encoded_bytes()
        } else {
            std::fs::read(path).unwrap()
        };
        Some((
            link,
            data,
            md.mode(),
            (md.uid(), md.gid()),
            (md.mtime(), md.mtime_nsec()),
        ))
    }

    #[test]
    fn absent_file_and_symlink_are_restored_exactly() {
        let root = tempfile::tempdir().unwrap();
        let etc = root.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        // hosts: a regular file with an unusual mode and an old mtime; resolv.conf: a symlink
        // (dangling, as systemd-resolved images have); hostname: absent.
        std::fs::write(etc.join("hosts"), "10.0.0.1 image-host\n").unwrap();
        std::fs::set_permissions(etc.join("hosts"), std::fs::Permissions::from_mode(0o640))
            .unwrap();
        set_times(
            &etc.join("hosts"),
            (
                Timespec {
                    tv_sec: 1_000_000,
                    tv_nsec: 5,
                },
                Timespec {
                    tv_sec: 2_000_000,
                    tv_nsec: 7,
                },
            ),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            "../run/systemd/resolve/stub-resolv.conf",
            etc.join("resolv.conf"),
        )
        .unwrap();
        let names = ["hosts", "resolv.conf", "hostname"];
        let before: Vec<_> = names.iter().map(|n| state(&etc.join(n))).collect();
        let etc_mtime = std::fs::metadata(&etc).unwrap().mtime();

        let mut env =
            BuildEnv::install(root.path(), &[Ipv4Addr::new(169, 254, 0, 3)], false).unwrap();
        assert_eq!(
            std::fs::read_to_string(etc.join("resolv.conf")).unwrap(),
            "# firebuild build environment (not kept in the image)\nnameserver 169.254.0.3\n"
        );
        assert!(
            !std::fs::symlink_metadata(etc.join("resolv.conf"))
                .unwrap()
                .file_type()
                .is_symlink(),
            "the symlink is replaced, not followed"
        );
        assert!(
            !root.path().join("run").exists(),
            "nothing written through the link"
        );
        assert_eq!(std::fs::read_to_string(etc.join("hosts")).unwrap(), HOSTS);
        assert!(
            !etc.join("hostname").exists(),
            "no /etc/hostname, as under BuildKit"
        );
        env.restore().unwrap();
        let after: Vec<_> = names.iter().map(|n| state(&etc.join(n))).collect();
        assert_eq!(after, before);
        assert!(before[2].is_none(), "hostname stays absent");
        assert_eq!(std::fs::metadata(&etc).unwrap().mtime(), etc_mtime);
        env.restore().unwrap();
        assert_eq!(
            names
                .iter()
                .map(|n| state(&etc.join(n)))
                .collect::<Vec<_>>(),
            before
        );
    }

    #[test]
    fn a_created_etc_is_removed_again_on_drop() {
        let root = tempfile::tempdir().unwrap();
        {
            let _env = BuildEnv::install(root.path(), &[], false).unwrap();
            let text = std::fs::read_to_string(root.path().join("etc/resolv.conf")).unwrap();
            assert!(
                !text.contains("nameserver"),
                "no name server invented: {text}"
            );
        }
        assert!(!root.path().join("etc").exists());
        // A step that wrote into the created /etc keeps it (and what it wrote).
        let mut env = BuildEnv::install(root.path(), &[], false).unwrap();
        std::fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\n",
        )
        .unwrap();
        env.restore().unwrap();
        let left: Vec<_> = std::fs::read_dir(root.path().join("etc"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["passwd"]);
    }
}
