//! Guest paths confined to the guest root, directory creation and atomic writes.
//!
//! Every guest path (`/etc/passwd`, a COPY destination, a WORKDIR) is resolved against the root
//! directory the caller gave, the way the kernel would inside a `chroot`: `..` never climbs above
//! the root and a symlink (absolute or relative) is resolved relative to the root, so no link in
//! the guest can make this crate touch a host file outside it. Resolution is done in user space
//! with `lstat`/`readlink`; it assumes nothing else rewrites the guest tree concurrently (true
//! while vminit configures a guest or places a build resource).

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// Most symlinks followed while resolving one path (Linux's `MAXSYMLINKS`).
pub const MAX_SYMLINKS: usize = 40;
/// Most components in one guest path.
pub const MAX_DEPTH: usize = 256;

/// Resolves `guest` (absolute or relative to `/`) to a host path under `root`, following every
/// symlink (including the last component) inside the root. Components that do not exist are
/// appended as written (`..` after them is applied lexically).
pub fn resolve(root: &Path, guest: &str) -> Result<PathBuf> {
    resolve_inner(root, guest, true)
}

/// Like [`resolve`] but the last component is not followed if it is a symlink: the result names
/// the link itself (for creating, replacing or removing it).
pub fn resolve_nofollow(root: &Path, guest: &str) -> Result<PathBuf> {
    resolve_inner(root, guest, false)
}

fn resolve_inner(root: &Path, guest: &str, follow_last: bool) -> Result<PathBuf> {
    let fail = |reason| Error::Resolve {
        path: guest.to_owned(),
        reason,
    };
    if guest.as_bytes().contains(&0) {
        return Err(fail("contains a NUL byte"));
    }
    // Components still to walk, in reverse (a stack).
    let mut todo: Vec<Vec<u8>> = Vec::new();
    push_components(&mut todo, guest.as_bytes());
    if todo.len() > MAX_DEPTH {
        return Err(fail("too many components"));
    }
    let mut done: Vec<Vec<u8>> = Vec::new();
    let mut links = 0usize;
    let mut missing = false;
    while let Some(c) = todo.pop() {
        if c == b".." {
            done.pop();
            continue;
        }
        done.push(c);
        if missing {
            continue;
        }
        let host = join(root, &done);
        let is_last = todo.is_empty();
        match fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() && (follow_last || !is_last) => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(fail("too many levels of symbolic links"));
                }
                let target = fs::read_link(&host).map_err(Error::io("read link", &host))?;
                done.pop();
                let t = target.as_os_str().as_bytes();
                if t.first() == Some(&b'/') {
                    done.clear();
                }
                push_components(&mut todo, t);
                if todo.len() + done.len() > MAX_DEPTH {
                    return Err(fail("too many components"));
                }
            }
            Ok(m) if !m.is_dir() && !is_last => {
                return Err(fail("a parent is not a directory"));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing = true,
            Err(e) => return Err(Error::io("stat", host)(e)),
        }
    }
    Ok(join(root, &done))
}

/// Pushes the components of `path` onto `stack` so that popping yields them in order.
fn push_components(stack: &mut Vec<Vec<u8>>, path: &[u8]) {
    let parts: Vec<&[u8]> = path
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect();
    for c in parts.into_iter().rev() {
        stack.push(c.to_vec());
    }
}

fn join(root: &Path, parts: &[Vec<u8>]) -> PathBuf {
    let mut p = root.to_path_buf();
    for c in parts {
        p.push(OsStr::from_bytes(c));
    }
    p
}

/// The normalised absolute form of a guest path (`a/../b/` → `/b`), without touching the disk.
pub fn normalize(guest: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in guest.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    let mut s = String::with_capacity(guest.len() + 1);
    for c in out {
        s.push('/');
        s.push_str(c);
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

/// Creates the guest directory `guest` and its missing parents, each new one with `mode` and
/// owner `uid:gid` (existing ones are left alone). Returns the resolved host path.
pub fn create_dirs(root: &Path, guest: &str, mode: u32, uid: u32, gid: u32) -> Result<PathBuf> {
    let norm = normalize(guest);
    let mut prefix = String::new();
    let mut host = root.to_path_buf();
    for c in norm.split('/').filter(|c| !c.is_empty()) {
        prefix.push('/');
        prefix.push_str(c);
        host = resolve(root, &prefix)?;
        match fs::symlink_metadata(&host) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::Resolve {
                    path: prefix,
                    reason: "exists and is not a directory",
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // `host` is symlink-free from the first missing component on (a followed link
                // may have led to a path with several missing components): create them all.
                let rel = host.strip_prefix(root).map_err(|_| Error::Resolve {
                    path: prefix.clone(),
                    reason: "resolved outside the root",
                })?;
                let mut at = root.to_path_buf();
                for c in rel.components() {
                    at.push(c);
                    if fs::symlink_metadata(&at).is_err() {
                        fs::create_dir(&at).map_err(Error::io("create directory", &at))?;
                        fs::set_permissions(&at, Permissions::from_mode(mode))
                            .map_err(Error::io("chmod", &at))?;
                        chown(&at, uid, gid)?;
                    }
                }
            }
            Err(e) => return Err(Error::io("stat", &host)(e)),
        }
    }
    Ok(host)
}

/// `lchown` that reports the path.
pub fn chown(host: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::lchown(host, Some(uid), Some(gid)).map_err(Error::io("chown", host))
}

/// How [`write_atomic`] sets the new file's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMeta {
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// Writes `data` to the host path `path` atomically: a temporary file in the same directory,
/// fsync, then rename over the target. The file gets `meta`, or when `meta` is `None` the mode
/// and owner of the file it replaces (or `default` if there is none).
pub fn write_atomic(
    path: &Path,
    data: &[u8],
    meta: Option<FileMeta>,
    default: FileMeta,
) -> Result<()> {
    write_atomic_with(path, data, meta, default, true)
}

/// [`write_atomic`] with the `fsync` before the rename optional: without it the new content is
/// still never seen half-written (rename is atomic), but may be lost in a crash; callers that
/// batch many writes call [`sync_fs`] once before committing a record of them.
pub fn write_atomic_with(
    path: &Path,
    data: &[u8],
    meta: Option<FileMeta>,
    default: FileMeta,
    sync: bool,
) -> Result<()> {
    let meta = match meta {
        Some(m) => m,
        None => match fs::metadata(path) {
            Ok(m) => FileMeta {
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
            },
            Err(_) => default,
        },
    };
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(Error::io("write", path)(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no parent directory",
        )));
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".fbtmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| -> Result<()> {
        let mut f: File = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(Error::io("create", &tmp))?;
        chown(&tmp, meta.uid, meta.gid)?;
        f.set_permissions(Permissions::from_mode(meta.mode))
            .map_err(Error::io("chmod", &tmp))?;
        f.write_all(data).map_err(Error::io("write", &tmp))?;
        if sync {
            f.sync_all().map_err(Error::io("sync", &tmp))?;
        }
        fs::rename(&tmp, path).map_err(Error::io("rename", path))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Flushes the file system holding `root` (`syncfs(2)`).
pub fn sync_fs(root: &Path) -> Result<()> {
    let dir = File::open(root).map_err(Error::io("open", root))?;
    rustix::fs::syncfs(&dir).map_err(|e| Error::io("sync", root)(e.into()))
}

/// Reads a host file of at most `limit` bytes; `Ok(None)` when it does not exist.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Option<Vec<u8>>> {
    use std::io::Read;
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open", path)(e)),
    };
    let mut buf = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(Error::io("read", path))?;
    if buf.len() as u64 > limit {
        return Err(Error::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    Ok(Some(buf))
}

/// Whether a host path is `/` (the caller runs on the real guest, not on a tree).
pub fn is_real_root(root: &Path) -> bool {
    root.components().all(|c| matches!(c, Component::RootDir))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_and_dotdot_stay_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::create_dir_all(root.join("etc")).unwrap();
        symlink("/", root.join("etc/up")).unwrap();
        symlink("../../../../..", root.join("etc/rel")).unwrap();
        symlink("/etc", root.join("abs")).unwrap();
        assert_eq!(resolve(root, "/etc/up/etc/x").unwrap(), root.join("etc/x"));
        assert_eq!(
            resolve(root, "/etc/rel/passwd").unwrap(),
            root.join("passwd")
        );
        assert_eq!(resolve(root, "../../abs/p").unwrap(), root.join("etc/p"));
        assert_eq!(resolve_nofollow(root, "/abs").unwrap(), root.join("abs"));
        assert_eq!(resolve(root, "/abs").unwrap(), root.join("etc"));
        assert_eq!(resolve(root, "/missing/../etc").unwrap(), root.join("etc"));
    }

    #[test]
    fn symlink_loops_are_errors() {
        let t = tempfile::tempdir().unwrap();
        symlink("b", t.path().join("a")).unwrap();
        symlink("a", t.path().join("b")).unwrap();
        let err = resolve(t.path(), "/a/x").unwrap_err();
        assert!(err.to_string().contains("symbolic links"), "{err}");
    }

    #[test]
    fn create_dirs_sets_owner_and_mode_on_new_dirs_only() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("a")).unwrap();
        fs::set_permissions(t.path().join("a"), Permissions::from_mode(0o700)).unwrap();
        let p = create_dirs(t.path(), "/a/b/c", 0o755, 12, 34).unwrap();
        assert_eq!(p, t.path().join("a/b/c"));
        let a = fs::metadata(t.path().join("a")).unwrap();
        assert_eq!(a.mode() & 0o7777, 0o700);
        let c = fs::metadata(&p).unwrap();
        assert_eq!((c.mode() & 0o7777, c.uid(), c.gid()), (0o755, 12, 34));
    }

    #[test]
    fn write_atomic_keeps_mode_and_owner() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        fs::write(&p, "old").unwrap();
        fs::set_permissions(&p, Permissions::from_mode(0o640)).unwrap();
        chown(&p, 7, 8).unwrap();
        let d = FileMeta {
            mode: 0o644,
            uid: 0,
            gid: 0,
        };
        write_atomic(&p, b"new", None, d).unwrap();
        let m = fs::metadata(&p).unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o640, 7, 8));
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 1);
    }

    #[test]
    fn normalize_is_lexical() {
        assert_eq!(normalize("a/../b/./c/"), "/b/c");
        assert_eq!(normalize("/../.."), "/");
    }
}
