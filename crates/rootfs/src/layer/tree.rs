//! Where a layer lands: the [`Tree`] trait (every operation the [`Applier`](super::Applier)
//! performs, on paths relative to the root) and [`DirTree`], a directory on disk.
//!
//! The applier makes every decision (path cleaning, chroot-style symlink resolution, whiteouts,
//! opaque directories, limits) and hands a tree only *confined* relative paths: normal
//! components only, every parent resolved to a directory (never through a symlink). A tree
//! executes; it does not decide. An in-memory tree (the fuzz harness has one) therefore sees
//! exactly what a directory would.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, FileType, Gid, Mode, Timespec, Timestamps, Uid, XattrFlags};

/// What a path is, without following a symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeType {
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// Anything else (file, device node, fifo, socket).
    Other,
}

/// A special file to create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    /// A named pipe.
    Fifo,
    /// A character device (`major`, `minor`).
    Char(u32, u32),
    /// A block device (`major`, `minor`).
    Block(u32, u32),
}

/// Metadata to apply to one path, in this order: owner, mode, xattrs, mtime.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attrs {
    /// Owner and group to set (without following a symlink).
    pub owner: Option<(u32, u32)>,
    /// Mode to set (never on a symlink).
    pub mode: Option<u32>,
    /// Extended attributes to set.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Modification (and access) time, seconds since the epoch; best effort.
    pub mtime: Option<i64>,
}

/// The operations a layer needs from the tree it is applied to. Paths are relative to the root
/// (`""` is the root itself), have normal components only, and their parents were resolved by
/// the applier to directories. Nothing here follows a symlink in the last component.
pub trait Tree {
    /// What `rel` is, `None` when missing.
    fn node_type(&self, rel: &Path) -> io::Result<Option<NodeType>>;
    /// The target of the symlink `rel`.
    fn read_link(&self, rel: &Path) -> io::Result<PathBuf>;
    /// Creates the directory `rel` (its parent exists).
    fn create_dir(&mut self, rel: &Path) -> io::Result<()>;
    /// Creates the new file `rel` (nothing is there) with `content`; returns the bytes written.
    fn write_file(&mut self, rel: &Path, content: &mut dyn Read) -> io::Result<u64>;
    /// Creates the symlink `rel` pointing at `target` (stored as is, never followed here).
    fn symlink(&mut self, target: &OsStr, rel: &Path) -> io::Result<()>;
    /// Makes `rel` a hard link to `existing`.
    fn hard_link(&mut self, existing: &Path, rel: &Path) -> io::Result<()>;
    /// Creates the special file `rel`.
    fn make_node(&mut self, rel: &Path, node: Special) -> io::Result<()>;
    /// Removes `rel`, recursively when it is a directory (a symlink is removed, not followed).
    fn remove(&mut self, rel: &Path) -> io::Result<()>;
    /// The names in the directory `rel`.
    fn list_dir(&self, rel: &Path) -> io::Result<Vec<OsString>>;
    /// Applies `attrs` to `rel`.
    fn set_attrs(&mut self, rel: &Path, attrs: &Attrs) -> io::Result<()>;
}

/// A directory on disk.
#[derive(Debug, Clone)]
pub struct DirTree {
    root: PathBuf,
}

impl DirTree {
    /// The tree rooted at `root` (which must exist).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn at(&self, rel: &Path) -> PathBuf {
        self.root.join(rel)
    }
}

impl Tree for DirTree {
    fn node_type(&self, rel: &Path) -> io::Result<Option<NodeType>> {
        match fs::symlink_metadata(self.at(rel)) {
            Ok(m) if m.is_dir() => Ok(Some(NodeType::Dir)),
            Ok(m) if m.file_type().is_symlink() => Ok(Some(NodeType::Symlink)),
            Ok(_) => Ok(Some(NodeType::Other)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn read_link(&self, rel: &Path) -> io::Result<PathBuf> {
        fs::read_link(self.at(rel))
    }

    fn create_dir(&mut self, rel: &Path) -> io::Result<()> {
        fs::create_dir(self.at(rel))
    }

    fn write_file(&mut self, rel: &Path, content: &mut dyn Read) -> io::Result<u64> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(self.at(rel))?;
        io::copy(content, &mut f)
    }

    fn symlink(&mut self, target: &OsStr, rel: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(target, self.at(rel))
    }

    fn hard_link(&mut self, existing: &Path, rel: &Path) -> io::Result<()> {
        fs::hard_link(self.at(existing), self.at(rel))
    }

    fn make_node(&mut self, rel: &Path, node: Special) -> io::Result<()> {
        let (ft, dev) = match node {
            Special::Fifo => (FileType::Fifo, 0),
            Special::Char(ma, mi) => (FileType::CharacterDevice, rustix::fs::makedev(ma, mi)),
            Special::Block(ma, mi) => (FileType::BlockDevice, rustix::fs::makedev(ma, mi)),
        };
        rustix::fs::mknodat(CWD, self.at(rel), ft, Mode::from_raw_mode(0o600), dev)?;
        Ok(())
    }

    fn remove(&mut self, rel: &Path) -> io::Result<()> {
        let p = self.at(rel);
        if fs::symlink_metadata(&p)?.is_dir() {
            fs::remove_dir_all(p)
        } else {
            fs::remove_file(p)
        }
    }

    fn list_dir(&self, rel: &Path) -> io::Result<Vec<OsString>> {
        fs::read_dir(self.at(rel))?
            .map(|e| e.map(|e| e.file_name()))
            .collect()
    }

    fn set_attrs(&mut self, rel: &Path, attrs: &Attrs) -> io::Result<()> {
        let p = self.at(rel);
        if let Some((uid, gid)) = attrs.owner {
            rustix::fs::chownat(
                CWD,
                &p,
                Some(Uid::from_raw(uid)),
                Some(Gid::from_raw(gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )?;
        }
        if let Some(mode) = attrs.mode {
            fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
        }
        for (name, value) in &attrs.xattrs {
            rustix::fs::lsetxattr(&p, name.as_str(), value, XattrFlags::empty()).map_err(|e| {
                io::Error::new(io::Error::from(e).kind(), format!("setxattr {name}: {e}"))
            })?;
        }
        if let Some(secs) = attrs.mtime {
            let t = Timespec {
                tv_sec: secs,
                tv_nsec: 0,
            };
            let ts = Timestamps {
                last_access: t,
                last_modification: t,
            };
            // Best effort: a timestamp is not worth failing a build over.
            let _ = rustix::fs::utimensat(CWD, &p, &ts, AtFlags::SYMLINK_NOFOLLOW);
        }
        Ok(())
    }
}
