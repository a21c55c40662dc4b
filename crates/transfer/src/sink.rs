//! Where reassembled entries go: the [`Sink`] trait and the ready [`DirSink`].

use std::collections::HashSet;
use std::fs::{self, File, FileTimes, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use crate::frame::{EntryKind, Header};
use crate::path;

/// Receives validated entries from a [`Reassembler`](crate::Reassembler), in stream order.
///
/// For every entry: `begin_entry`, then (files only) `write` calls with consecutive content, then
/// `end_entry`. After the verified `Eof`, [`Reassembler::finish`](crate::Reassembler::finish)
/// calls `finish`. The header path is already checked (relative, no `..`, parent is a directory
/// of the same stream) but a sink placing files should confine it again.
pub trait Sink {
    /// A new entry starts.
    fn begin_entry(&mut self, header: &Header) -> io::Result<()>;
    /// The next bytes of the current file.
    fn write(&mut self, data: &[u8]) -> io::Result<()>;
    /// The current entry is complete.
    fn end_entry(&mut self) -> io::Result<()>;
    /// The whole resource is complete and verified.
    fn finish(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// The transfer is abandoned: drop partial output.
    fn abort(&mut self) {}
}

impl<S: Sink + ?Sized> Sink for &mut S {
    fn begin_entry(&mut self, header: &Header) -> io::Result<()> {
        (**self).begin_entry(header)
    }
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        (**self).write(data)
    }
    fn end_entry(&mut self) -> io::Result<()> {
        (**self).end_entry()
    }
    fn finish(&mut self) -> io::Result<()> {
        (**self).finish()
    }
    fn abort(&mut self) {
        (**self).abort()
    }
}

/// When [`DirSink`] applies the sender's uid/gid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ownership {
    /// Only when the process runs as root (the default).
    #[default]
    IfRoot,
    /// Always (fails unless permitted).
    Always,
    /// Never: entries belong to the current user.
    Never,
}

#[derive(Debug)]
struct OpenFile {
    tmp: PathBuf,
    target: PathBuf,
    file: File,
    header: Header,
}

/// Places a resource on the local file system.
///
/// The root entry (path `""`) lands at `root` itself: a directory resource is merged into the
/// directory `root` (created if missing, followed if it is a symlink to a directory; its own
/// metadata applied only with [`DirSink::root_dir_metadata`]), a file or symlink resource becomes
/// the file `root`.
/// Files are written to a temporary name in the target directory and renamed into place when
/// complete; modes, mtimes and (see [`Ownership`]) owners are applied; directory modes and times
/// are applied in [`Sink::finish`], deepest first. Symlinks are created as links (their own mtime is
/// not set) and never traversed: an entry must sit under a directory placed by this same stream,
/// and a directory entry replaces an existing symlink or file of the same name.
#[derive(Debug)]
pub struct DirSink {
    root: PathBuf,
    /// Whether owners are applied; `None` until known (see [`Ownership::IfRoot`]).
    chown: Option<bool>,
    set_mtime: bool,
    root_dir_metadata: bool,
    placed_dirs: HashSet<String>,
    open: Option<OpenFile>,
    dirs: Vec<(PathBuf, Header)>,
    counter: u64,
}

impl DirSink {
    /// A sink placing the resource at `root`, owners applied only when running as root.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirSink {
            root: root.into(),
            chown: Self::ownership_active(Ownership::IfRoot),
            set_mtime: true,
            root_dir_metadata: false,
            placed_dirs: HashSet::new(),
            open: None,
            dirs: Vec::new(),
            counter: 0,
        }
    }

    /// Chooses when owners are applied.
    pub fn ownership(mut self, ownership: Ownership) -> Self {
        self.chown = Self::ownership_active(ownership);
        self
    }

    /// Whether to apply the sender's modification times (default: yes).
    pub fn preserve_mtime(mut self, yes: bool) -> Self {
        self.set_mtime = yes;
        self
    }

    /// Whether a directory resource's own mode, owner and mtime are applied to the root
    /// directory (default: no — like `COPY dir/ /dest/`, an existing destination keeps its
    /// metadata and a missing one is created with default permissions).
    pub fn root_dir_metadata(mut self, yes: bool) -> Self {
        self.root_dir_metadata = yes;
        self
    }

    /// The destination root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn ownership_active(o: Ownership) -> Option<bool> {
        match o {
            Ownership::Always => Some(true),
            Ownership::Never => Some(false),
            // /proc/self belongs to the process's effective uid. Without /proc (early boot), the
            // owner of the first file this sink creates tells (see `chown_for`).
            Ownership::IfRoot => fs::metadata("/proc/self").ok().map(|m| m.uid() == 0),
        }
    }

    /// Whether to apply owners, deciding from `created` (a file this sink just created) if
    /// still unknown.
    fn chown_for(&mut self, created: &Path) -> io::Result<bool> {
        if let Some(c) = self.chown {
            return Ok(c);
        }
        let root = fs::symlink_metadata(created)?.uid() == 0;
        self.chown = Some(root);
        Ok(root)
    }

    fn target(&self, h: &Header) -> io::Result<PathBuf> {
        if path::check_relative(&h.path).is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "unsafe entry path",
            ));
        }
        let Some(parent) = path::parent(&h.path) else {
            return Ok(self.root.clone());
        };
        if !self.placed_dirs.contains(parent) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "parent is not a directory placed by this stream",
            ));
        }
        Ok(self.root.join(&h.path))
    }

    fn tmp_name(&mut self, target: &Path) -> io::Result<PathBuf> {
        let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "destination has no parent directory",
            ));
        };
        self.counter += 1;
        let mut tmp = std::ffi::OsString::from(".");
        tmp.push(name);
        tmp.push(format!(".fbtmp.{}.{}", std::process::id(), self.counter));
        Ok(dir.join(tmp))
    }

    fn times(h: &Header) -> FileTimes {
        let t = if h.mtime_secs >= 0 {
            UNIX_EPOCH + Duration::new(h.mtime_secs.unsigned_abs(), h.mtime_nanos)
        } else {
            UNIX_EPOCH - Duration::from_secs(h.mtime_secs.unsigned_abs())
                + Duration::from_nanos(u64::from(h.mtime_nanos))
        };
        FileTimes::new().set_modified(t)
    }

    fn begin(&mut self, h: &Header) -> io::Result<()> {
        let target = self.target(h)?;
        if h.path.is_empty()
            && let Some(parent) = target.parent()
            && !parent.as_os_str().is_empty()
        {
            fs::create_dir_all(parent)?;
        }
        match h.kind {
            EntryKind::Dir => {
                // The root was chosen by the caller: a symlink to a directory there is followed
                // (merged-usr `/lib`). Inside the tree nothing is followed.
                let is_root = h.path.is_empty();
                let existing = if is_root {
                    fs::metadata(&target)
                } else {
                    fs::symlink_metadata(&target)
                };
                if !existing.is_ok_and(|m| m.is_dir()) {
                    match fs::symlink_metadata(&target) {
                        Ok(_) => fs::remove_file(&target)?,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                    fs::create_dir(&target)?;
                }
                self.placed_dirs.insert(h.path.clone());
                if !is_root || self.root_dir_metadata {
                    // Keep it writable until `finish` applies the real mode.
                    fs::set_permissions(&target, Permissions::from_mode(0o700 | (h.mode & 0o777)))?;
                    self.dirs.push((target, h.clone()));
                }
            }
            EntryKind::File => {
                let tmp = self.tmp_name(&target)?;
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)?;
                self.open = Some(OpenFile {
                    tmp,
                    target,
                    file,
                    header: h.clone(),
                });
            }
            EntryKind::Symlink => {
                let tmp = self.tmp_name(&target)?;
                std::os::unix::fs::symlink(&h.link_target, &tmp)?;
                let chown = self.chown_for(&tmp);
                if let Err(e) = chown.and_then(|c| {
                    if c {
                        std::os::unix::fs::lchown(&tmp, Some(h.uid), Some(h.gid))?;
                    }
                    Ok(())
                }) {
                    let _ = fs::remove_file(&tmp);
                    return Err(e);
                }
                if let Err(e) = fs::rename(&tmp, &target) {
                    let _ = fs::remove_file(&tmp);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn close(&mut self, f: OpenFile) -> io::Result<()> {
        let h = &f.header;
        let chown = self.chown_for(&f.tmp);
        let r = (|| {
            if chown? {
                std::os::unix::fs::fchown(&f.file, Some(h.uid), Some(h.gid))?;
            }
            f.file.set_permissions(Permissions::from_mode(h.mode))?;
            if self.set_mtime {
                f.file.set_times(Self::times(h))?;
            }
            fs::rename(&f.tmp, &f.target)
        })();
        if r.is_err() {
            let _ = fs::remove_file(&f.tmp);
        }
        r
    }
}

impl Sink for DirSink {
    fn begin_entry(&mut self, header: &Header) -> io::Result<()> {
        if self.open.is_some() {
            return Err(io::Error::other("previous file not ended"));
        }
        self.begin(header)
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.open {
            Some(f) => f.file.write_all(data),
            None => Err(io::Error::other("write outside a file entry")),
        }
    }

    fn end_entry(&mut self) -> io::Result<()> {
        match self.open.take() {
            Some(f) => self.close(f),
            None => Ok(()),
        }
    }

    fn finish(&mut self) -> io::Result<()> {
        for (dir, h) in std::mem::take(&mut self.dirs).into_iter().rev() {
            if self.chown_for(&dir)? {
                std::os::unix::fs::chown(&dir, Some(h.uid), Some(h.gid))?;
            }
            if self.set_mtime {
                File::open(&dir)?.set_times(Self::times(&h))?;
            }
            fs::set_permissions(&dir, Permissions::from_mode(h.mode))?;
        }
        Ok(())
    }

    fn abort(&mut self) {
        if let Some(f) = self.open.take() {
            drop(f.file);
            let _ = fs::remove_file(&f.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn hdr(index: u32, path: &str, kind: EntryKind, mode: u32, size: u64) -> Header {
        Header {
            index,
            path: path.into(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            size,
            mtime_secs: 1_000_000_000,
            mtime_nanos: 123_456_789,
            link_target: if kind == EntryKind::Symlink {
                "../target".into()
            } else {
                String::new()
            },
        }
    }

    #[test]
    fn places_file_root_with_mode_and_mtime_via_temp_name() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("sub/file.txt");
        let mut s = DirSink::new(&dest).ownership(Ownership::Never);
        s.begin_entry(&hdr(0, "", EntryKind::File, 0o640, 3))
            .unwrap();
        s.write(b"abc").unwrap();
        // Not visible under its final name until complete.
        assert!(!dest.exists());
        s.end_entry().unwrap();
        s.finish().unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"abc");
        let m = fs::metadata(&dest).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o640);
        assert_eq!((m.mtime(), m.mtime_nsec()), (1_000_000_000, 123_456_789));
        assert_eq!(fs::read_dir(dest.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn directory_modes_and_times_applied_at_finish() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("r");
        let mut s = DirSink::new(&root).ownership(Ownership::Never);
        s.begin_entry(&hdr(0, "", EntryKind::Dir, 0o755, 0))
            .unwrap();
        s.end_entry().unwrap();
        s.begin_entry(&hdr(1, "ro", EntryKind::Dir, 0o555, 0))
            .unwrap();
        s.end_entry().unwrap();
        s.begin_entry(&hdr(2, "ro/f", EntryKind::File, 0o444, 1))
            .unwrap();
        s.write(b"x").unwrap();
        s.end_entry().unwrap();
        s.begin_entry(&hdr(3, "ro/link", EntryKind::Symlink, 0o777, 0))
            .unwrap();
        s.end_entry().unwrap();
        s.finish().unwrap();
        let m = fs::metadata(root.join("ro")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o555);
        assert_eq!(m.mtime(), 1_000_000_000);
        assert_eq!(
            fs::read_link(root.join("ro/link")).unwrap(),
            Path::new("../target")
        );
        fs::set_permissions(root.join("ro"), Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn directory_entry_replaces_an_existing_symlink_instead_of_following_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("r");
        let outside = dir.path().join("outside");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("d")).unwrap();
        let mut s = DirSink::new(&root).ownership(Ownership::Never);
        s.begin_entry(&hdr(0, "", EntryKind::Dir, 0o755, 0))
            .unwrap();
        s.begin_entry(&hdr(1, "d", EntryKind::Dir, 0o755, 0))
            .unwrap();
        s.begin_entry(&hdr(2, "d/f", EntryKind::File, 0o644, 1))
            .unwrap();
        s.write(b"x").unwrap();
        s.end_entry().unwrap();
        s.finish().unwrap();
        assert!(fs::symlink_metadata(root.join("d")).unwrap().is_dir());
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn root_directory_keeps_its_metadata_and_may_be_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("usr-lib");
        fs::create_dir(&real).unwrap();
        fs::set_permissions(&real, Permissions::from_mode(0o751)).unwrap();
        let root = dir.path().join("lib");
        std::os::unix::fs::symlink("usr-lib", &root).unwrap();
        let mut s = DirSink::new(&root).ownership(Ownership::Never);
        s.begin_entry(&hdr(0, "", EntryKind::Dir, 0o700, 0))
            .unwrap();
        s.begin_entry(&hdr(1, "f", EntryKind::File, 0o644, 1))
            .unwrap();
        s.write(b"x").unwrap();
        s.end_entry().unwrap();
        s.finish().unwrap();
        assert!(
            fs::symlink_metadata(&root)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read(real.join("f")).unwrap(), b"x");
        assert_eq!(fs::metadata(&real).unwrap().mode() & 0o7777, 0o751);

        let mut s = DirSink::new(&real)
            .ownership(Ownership::Never)
            .root_dir_metadata(true);
        s.begin_entry(&hdr(0, "", EntryKind::Dir, 0o700, 0))
            .unwrap();
        s.finish().unwrap();
        assert_eq!(fs::metadata(&real).unwrap().mode() & 0o7777, 0o700);
    }

    #[test]
    fn refuses_paths_outside_placed_directories() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = DirSink::new(dir.path()).ownership(Ownership::Never);
        s.begin_entry(&hdr(0, "", EntryKind::Dir, 0o755, 0))
            .unwrap();
        for bad in ["../x", "/x", "nodir/x", "a/../b"] {
            let err = s
                .begin_entry(&hdr(1, bad, EntryKind::File, 0o644, 0))
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad}");
        }
    }

    #[test]
    fn abort_removes_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = DirSink::new(dir.path().join("f")).ownership(Ownership::Never);
        s.begin_entry(&hdr(0, "", EntryKind::File, 0o644, 10))
            .unwrap();
        s.write(b"abc").unwrap();
        s.abort();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
