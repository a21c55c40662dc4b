//! Mount-point stubs, as BuildKit's executor does: PID 1 creates `/proc`, `/sys` and `/dev` only
//! when the image lacks them, remembers which it created, and removes those again (if empty)
//! after unmounting at shutdown, so an image that had no such directory is left without one.

use std::path::{Path, PathBuf};

/// The directories PID 1 created under a root.
#[derive(Debug, Default)]
pub struct Stubs {
    created: Vec<PathBuf>,
}

impl Stubs {
    /// Creates each of `dirs` (absolute guest paths) under `root` that does not exist yet (not
    /// even as a symlink), mode 0755; remembers what it created.
    pub fn ensure(root: &Path, dirs: &[&str]) -> Self {
        let mut created = Vec::new();
        for dir in dirs {
            let path = root.join(dir.trim_start_matches('/'));
            if std::fs::symlink_metadata(&path).is_ok() {
                continue;
            }
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    tracing::debug!("created the mount point {}", path.display());
                    created.push(path);
                }
                Err(e) => tracing::warn!("creating the mount point {}: {e}", path.display()),
            }
        }
        Self { created }
    }

    /// What [`Stubs::ensure`] created.
    pub fn created(&self) -> &[PathBuf] {
        &self.created
    }

    /// Removes the directories it created, if empty (call after unmounting them); a directory
    /// something was written into is kept.
    pub fn remove(&self) {
        for path in self.created.iter().rev() {
            match std::fs::remove_dir(path) {
                Ok(()) => tracing::debug!("removed the mount point {}", path.display()),
                Err(e) => tracing::warn!("removing the mount point {}: {e}", path.display()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_created_stubs_are_removed_and_only_when_empty() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir(r.join("proc")).unwrap();
        std::os::unix::fs::symlink("proc", r.join("sys")).unwrap();
        let stubs = Stubs::ensure(r, &["/proc", "/sys", "/dev", "/run"]);
        assert_eq!(stubs.created(), [r.join("dev"), r.join("run")]);
        assert!(r.join("dev").is_dir() && r.join("run").is_dir());
        // Something was left in /run: it stays.
        std::fs::write(r.join("run/kept"), "").unwrap();
        stubs.remove();
        assert!(!r.join("dev").exists(), "the stub it created is gone");
        assert!(r.join("run/kept").exists(), "a non-empty stub is kept");
        assert!(r.join("proc").is_dir(), "the image's own /proc stays");
        assert!(
            std::fs::symlink_metadata(r.join("sys"))
                .unwrap()
                .file_type()
                .is_symlink(),
            "a symlink is not replaced"
        );
    }
}
