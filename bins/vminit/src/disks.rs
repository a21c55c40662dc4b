//! The extra disks of a build VM: earlier stages and images (read-only) and cache mounts
//! (read-write), each found by its virtio serial ([`DiskRole::serial`], which the host sets to
//! the drive id) and mounted on demand under `/dev/.firebuild/disks/<serial>`: in the devtmpfs,
//! so nothing of it reaches the image being built.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use firebuild_plan::{DiskRole, Origin};
use rustix::mount::{MountFlags, UnmountFlags, mount, unmount};

/// Where disks are mounted (the devtmpfs, not the image).
const MOUNTS: &str = "/dev/.firebuild/disks";

/// The block device whose virtio serial is `serial` (`/sys/block/vd*/serial`).
pub fn device(serial: &str) -> anyhow::Result<PathBuf> {
    let entries = std::fs::read_dir("/sys/block").context("listing /sys/block")?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str().filter(|n| n.starts_with("vd")) else {
            continue;
        };
        let found = std::fs::read_to_string(entry.path().join("serial")).unwrap_or_default();
        if found.trim_end_matches(['\0', '\n']) == serial {
            return Ok(Path::new("/dev").join(name));
        }
    }
    anyhow::bail!(
        "no disk with serial {serial} is attached to this VM (the host attaches one per stage, image and cache the stage reads)"
    )
}

/// The role of the disk holding `origin`'s files, `None` for the context.
pub fn role_of(origin: &Origin) -> Option<DiskRole> {
    match origin {
        Origin::Context => None,
        Origin::Stage { index } => Some(DiskRole::Stage(*index)),
        Origin::Image { reference } => Some(DiskRole::Image(reference.clone())),
    }
}

/// A mounted disk, unmounted on drop.
#[derive(Debug)]
pub struct Mounted {
    dir: PathBuf,
}

impl Mounted {
    /// Mounts the disk of `role` (ext4); read-only for stages and images.
    pub fn mount(role: &DiskRole) -> anyhow::Result<Self> {
        let serial = role.serial();
        let dev = device(&serial)?;
        let dir = Path::new(MOUNTS).join(&serial);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let (flags, data) = match role {
            // `noload`: a read-only device cannot replay a journal (the host's images were
            // unmounted cleanly; this only guards against a crash).
            DiskRole::Stage(_) | DiskRole::Image(_) => (MountFlags::RDONLY, c"noload"),
            DiskRole::Cache(_) => (MountFlags::empty(), c""),
        };
        mount(
            &dev,
            &dir,
            "ext4",
            flags | MountFlags::NOSUID | MountFlags::NODEV,
            data,
        )
        .with_context(|| format!("mounting {} ({serial}) on {}", dev.display(), dir.display()))?;
        tracing::debug!("mounted {} ({serial}) on {}", dev.display(), dir.display());
        Ok(Self { dir })
    }

    /// The mount's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = unmount(&self.dir, UnmountFlags::empty()) {
            tracing::warn!("unmounting {}: {e}; detaching", self.dir.display());
            let _ = unmount(&self.dir, UnmountFlags::DETACH);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}
