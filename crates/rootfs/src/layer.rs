//! Applying image layers (tar, gzip or zstd) to a directory: owners, modes, special bits,
//! symlinks, hardlinks, xattrs and device nodes; whiteouts (`.wh.NAME`) and opaque directories
//! (`.wh..wh..opq`); every path confined to the root.
//!
//! Confinement follows chroot semantics (what Docker gets by unpacking inside a chroot): an
//! entry's parent directories are resolved inside the root, so a symlink `lib -> usr/lib` or even
//! `lib -> /usr/lib` is followed *within* the tree and `..` stops at the root; an entry's own last
//! component is never followed (it is replaced). Entries with a `..` component are rejected.
//!
//! Ownership: as root ([`Ownership::Native`]) owners, modes, xattrs and device nodes are applied
//! to the tree itself. Otherwise ([`Ownership::SideTable`]) the tree keeps the caller's owner and
//! owner-accessible modes, and the real owner, mode, device numbers and xattrs of every entry
//! go into a [`SideTable`] that [`crate::ext4`] replays under `fakeroot` before `mkfs.ext4 -d`.

use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, CWD, FileType, Gid, Mode, Timespec, Timestamps, Uid, XattrFlags};
use serde::{Deserialize, Serialize};
use tar::EntryType;
use tracing::debug;

use crate::digest::{Digest, HashingReader};
use crate::error::{Error, Result};

/// Symlink hops allowed while resolving one path (Linux's limit).
const MAX_SYMLINK_HOPS: u32 = 40;
/// Deepest path accepted in a layer.
const MAX_PATH_DEPTH: usize = 256;

/// How file ownership is realised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// Apply owners, modes, xattrs and device nodes to the tree (needs root).
    Native,
    /// Record them in a [`SideTable`] (unprivileged; replayed under `fakeroot`).
    SideTable,
}

impl Ownership {
    /// [`Ownership::Native`] when running as root, else [`Ownership::SideTable`].
    pub fn detect() -> Self {
        if rustix::process::geteuid().is_root() {
            Ownership::Native
        } else {
            Ownership::SideTable
        }
    }
}

/// Special file kinds recorded in a side table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// Anything whose type is already right on disk.
    Plain,
    /// Character device (`major`, `minor`); a placeholder file is on disk.
    Char(u32, u32),
    /// Block device (`major`, `minor`); a placeholder file is on disk.
    Block(u32, u32),
}

/// The real metadata of one path when it could not be applied natively.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Permission bits including setuid/setgid/sticky (`0o7777`).
    pub mode: u32,
    /// Whether the path is a symlink (mode is then not applied).
    pub symlink: bool,
    /// Device node to create in place of the placeholder.
    pub node: NodeKind,
    /// Extended attributes (`security.capability`...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

/// Metadata to replay under `fakeroot`, keyed by path relative to the root.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SideTable {
    /// Entries, sorted by path (parents before children).
    pub entries: BTreeMap<PathBuf, FileMeta>,
}

impl SideTable {
    /// Whether nothing was recorded (always the case under [`Ownership::Native`]).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn remove_tree(&mut self, rel: &Path) {
        let doomed: Vec<PathBuf> = self
            .entries
            .range(rel.to_path_buf()..)
            .take_while(|(k, _)| k.starts_with(rel))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.entries.remove(&k);
        }
    }
}

/// Compression of a layer stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// Detects the compression from the first bytes (media types lie often enough that the
    /// magic number is what counts).
    pub fn sniff(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Wraps `r` in the right decompressor.
pub fn decompress<'a, R: Read + 'a>(r: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut r = BufReader::with_capacity(256 << 10, r);
    let c = Compression::sniff(r.fill_buf()?);
    Ok(match c {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(
            ruzstd::decoding::StreamingDecoder::new(r)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?,
        ),
    })
}

/// Applies layers, bottom first, to one root directory.
#[derive(Debug)]
pub struct Applier {
    root: PathBuf,
    ownership: Ownership,
    side: SideTable,
}

struct Ctx<'a> {
    layer: &'a str,
    this_layer: HashSet<PathBuf>,
}

impl Applier {
    /// Prepares `root` (created if missing) for layers.
    pub fn new(root: impl Into<PathBuf>, ownership: Ownership) -> Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(Error::io("create", &root))?;
        Ok(Self {
            root,
            ownership,
            side: SideTable::default(),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Applies one layer file (compression sniffed). Returns the digest of the uncompressed
    /// tar stream (the layer's *diff id*), for the caller to check against the image config.
    pub fn apply_file(&mut self, name: &str, path: &Path) -> Result<Digest> {
        let f = fs::File::open(path).map_err(Error::io("open", path))?;
        self.apply_reader(name, f)
    }

    /// Applies one layer from a reader (compression sniffed). `name` labels errors.
    pub fn apply_reader(&mut self, name: &str, r: impl Read) -> Result<Digest> {
        let read_err = |source| Error::LayerRead {
            layer: name.to_owned(),
            source,
        };
        let tar_stream = HashingReader::new(decompress(r).map_err(read_err)?);
        let mut archive = tar::Archive::new(tar_stream);
        let mut ctx = Ctx {
            layer: name,
            this_layer: HashSet::new(),
        };
        for entry in archive.entries().map_err(read_err)? {
            let mut entry = entry.map_err(read_err)?;
            self.apply_entry(&mut ctx, &mut entry)?;
        }
        archive.into_inner().finish().map_err(read_err)
    }

    /// Finishes and returns the side table (empty under [`Ownership::Native`]).
    pub fn finish(self) -> SideTable {
        self.side
    }

    fn apply_entry<R: Read>(
        &mut self,
        ctx: &mut Ctx<'_>,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let err = |reason: String| Error::Layer {
            layer: ctx.layer.to_owned(),
            entry: shown.clone(),
            reason,
        };
        let Some(rel) = clean(&raw).map_err(&err)? else {
            // The root itself (`./`): only its metadata.
            if entry.header().entry_type() == EntryType::Directory {
                let root = self.root.clone();
                self.set_meta(entry, &root, Path::new(""), false)
                    .map_err(&err)?;
            }
            return Ok(());
        };
        let (parent_rel, name) = match (rel.parent(), rel.file_name()) {
            (Some(p), Some(n)) => (p.to_path_buf(), n.to_os_string()),
            _ => return Err(err("no file name".into())),
        };
        let name_bytes = name.as_bytes();

        // Whiteouts.
        if name_bytes == b".wh..wh..opq" {
            let parent = self.resolve(&parent_rel, true).map_err(&err)?;
            self.opaque(ctx, &parent).map_err(&err)?;
            return Ok(());
        }
        if let Some(hidden) = name_bytes.strip_prefix(b".wh.") {
            if matches!(hidden, b"" | b"." | b"..") {
                return Err(err(format!(
                    "whiteout names {:?}, not an entry",
                    String::from_utf8_lossy(hidden)
                )));
            }
            let parent = match self.resolve(&parent_rel, false) {
                Ok(p) => p,
                Err(_) => return Ok(()), // nothing below to hide
            };
            let target = parent.join(OsStr::from_bytes(hidden));
            self.remove(&target).map_err(&err)?;
            return Ok(());
        }

        let parent = self.resolve(&parent_rel, true).map_err(&err)?;
        let path = parent.join(&name);
        let rel_real = path
            .strip_prefix(&self.root)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let kind = entry.header().entry_type();

        // Replace what is there, except a directory over a directory.
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() && kind == EntryType::Directory => {}
            Ok(_) => self.remove(&path).map_err(&err)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(format!("stat: {e}"))),
        }

        let mut symlink = false;
        match kind {
            EntryType::Directory => {
                if !path.is_dir() {
                    fs::create_dir(&path).map_err(|e| err(format!("mkdir: {e}")))?;
                }
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                    .open(&path)
                    .map_err(|e| err(format!("create: {e}")))?;
                io::copy(entry, &mut f).map_err(|e| err(format!("write: {e}")))?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| err("symlink without target".into()))?
                    .into_owned();
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                    .map_err(|e| err(format!("symlink: {e}")))?;
                symlink = true;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| err("hardlink without target".into()))?
                    .into_owned();
                let target_rel = clean(&target)
                    .map_err(&err)?
                    .ok_or_else(|| err("hardlink to the root".into()))?;
                let tparent = self
                    .resolve(target_rel.parent().unwrap_or(Path::new("")), false)
                    .map_err(|e| err(format!("hardlink target: {e}")))?;
                let tname = target_rel.file_name().unwrap_or_default();
                let tpath = tparent.join(tname);
                fs::hard_link(&tpath, &path).map_err(|e| {
                    err(format!(
                        "hardlink to {}: {e}",
                        String::from_utf8_lossy(&target)
                    ))
                })?;
                ctx.this_layer.insert(rel_real);
                // A hardlink shares the target's inode and metadata.
                if let Some(meta) = tpath
                    .strip_prefix(&self.root)
                    .ok()
                    .and_then(|t| self.side.entries.get(t).cloned())
                {
                    let key = path
                        .strip_prefix(&self.root)
                        .map(Path::to_path_buf)
                        .unwrap_or_default();
                    self.side.entries.insert(key, meta);
                }
                return Ok(());
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                self.make_node(entry, &path, kind).map_err(&err)?;
            }
            other => {
                debug!(layer = ctx.layer, entry = %shown, ?other, "skipping unsupported tar entry type");
                return Ok(());
            }
        }
        ctx.this_layer.insert(rel_real.clone());
        self.set_meta(entry, &path, &rel_real, symlink)
            .map_err(&err)?;
        Ok(())
    }

    fn make_node<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        path: &Path,
        kind: EntryType,
    ) -> Result<(), String> {
        let h = entry.header();
        let major = h.device_major().ok().flatten().unwrap_or(0);
        let minor = h.device_minor().ok().flatten().unwrap_or(0);
        let dev = rustix::fs::makedev(major, minor);
        let ft = match kind {
            EntryType::Char => FileType::CharacterDevice,
            EntryType::Block => FileType::BlockDevice,
            _ => FileType::Fifo,
        };
        if ft == FileType::Fifo || self.ownership == Ownership::Native {
            rustix::fs::mknodat(CWD, path, ft, Mode::from_raw_mode(0o600), dev)
                .map_err(|e| format!("mknod: {e}"))?;
        } else {
            // Placeholder; the side table turns it into a node under fakeroot.
            fs::File::create(path).map_err(|e| format!("placeholder: {e}"))?;
        }
        Ok(())
    }

    fn set_meta<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: &Path,
        rel: &Path,
        symlink: bool,
    ) -> Result<(), String> {
        let h = entry.header();
        let uid = h.uid().map_err(|e| format!("uid: {e}"))? as u32;
        let gid = h.gid().map_err(|e| format!("gid: {e}"))? as u32;
        let mode = h.mode().map_err(|e| format!("mode: {e}"))? & 0o7777;
        let mtime = h.mtime().unwrap_or(0);
        let kind = h.entry_type();
        let node = match kind {
            EntryType::Char | EntryType::Block => {
                let major = h.device_major().ok().flatten().unwrap_or(0);
                let minor = h.device_minor().ok().flatten().unwrap_or(0);
                if kind == EntryType::Char {
                    NodeKind::Char(major, minor)
                } else {
                    NodeKind::Block(major, minor)
                }
            }
            _ => NodeKind::Plain,
        };
        let mut xattrs = BTreeMap::new();
        if let Ok(Some(exts)) = entry.pax_extensions() {
            for ext in exts.flatten() {
                if let Ok(key) = ext.key()
                    && let Some(name) = key.strip_prefix("SCHILY.xattr.")
                {
                    xattrs.insert(name.to_owned(), ext.value_bytes().to_vec());
                }
            }
        }
        let is_dir = kind == EntryType::Directory;

        match self.ownership {
            Ownership::Native => {
                rustix::fs::chownat(
                    CWD,
                    path,
                    Some(Uid::from_raw(uid)),
                    Some(Gid::from_raw(gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| format!("chown: {e}"))?;
                if !symlink {
                    // After chown, which clears setuid/setgid.
                    fs::set_permissions(path, fs::Permissions::from_mode(mode))
                        .map_err(|e| format!("chmod: {e}"))?;
                }
                for (name, value) in &xattrs {
                    rustix::fs::lsetxattr(path, name.as_str(), value, XattrFlags::empty())
                        .map_err(|e| format!("setxattr {name}: {e}"))?;
                }
            }
            Ownership::SideTable => {
                if !symlink {
                    let owner_bits = if is_dir { 0o700 } else { 0o600 };
                    fs::set_permissions(
                        path,
                        fs::Permissions::from_mode((mode & 0o777) | owner_bits),
                    )
                    .map_err(|e| format!("chmod: {e}"))?;
                }
                self.side.entries.insert(
                    rel.to_path_buf(),
                    FileMeta {
                        uid,
                        gid,
                        mode,
                        symlink,
                        node,
                        xattrs,
                    },
                );
            }
        }
        if !is_dir {
            let t = Timespec {
                tv_sec: mtime as i64,
                tv_nsec: 0,
            };
            let ts = Timestamps {
                last_access: t,
                last_modification: t,
            };
            // Best effort: a timestamp is not worth failing a build over.
            let _ = rustix::fs::utimensat(CWD, path, &ts, AtFlags::SYMLINK_NOFOLLOW);
        }
        Ok(())
    }

    /// Resolves `rel` (a directory path relative to the root) inside the root, following
    /// symlinks with chroot semantics. Missing directories are created when `create`.
    fn resolve(&mut self, rel: &Path, create: bool) -> Result<PathBuf, String> {
        let mut pending: Vec<OsString> = rel
            .components()
            .rev()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                _ => None,
            })
            .collect();
        let mut cur: Vec<OsString> = Vec::new();
        let mut hops = 0;
        while let Some(c) = pending.pop() {
            if c == ".." {
                cur.pop();
                continue;
            }
            if c == "." || c.is_empty() {
                continue;
            }
            let mut p = self.root.clone();
            p.extend(&cur);
            p.push(&c);
            match fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_symlink() => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err("too many levels of symbolic links".into());
                    }
                    let target = fs::read_link(&p).map_err(|e| format!("readlink: {e}"))?;
                    if target.is_absolute() {
                        cur.clear();
                    }
                    for t in target.components().rev() {
                        match t {
                            Component::Normal(n) => pending.push(n.to_os_string()),
                            Component::ParentDir => pending.push("..".into()),
                            _ => {}
                        }
                    }
                }
                Ok(m) if m.is_dir() => cur.push(c),
                Ok(_) => {
                    return Err(format!("{} is not a directory", p.display()));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    fs::create_dir(&p).map_err(|e| format!("mkdir {}: {e}", p.display()))?;
                    if self.ownership == Ownership::SideTable {
                        let rel = p
                            .strip_prefix(&self.root)
                            .map(Path::to_path_buf)
                            .unwrap_or_default();
                        self.side.entries.insert(
                            rel,
                            FileMeta {
                                uid: 0,
                                gid: 0,
                                mode: 0o755,
                                symlink: false,
                                node: NodeKind::Plain,
                                xattrs: BTreeMap::new(),
                            },
                        );
                    }
                    cur.push(c);
                }
                Err(e) => return Err(format!("stat {}: {e}", p.display())),
            }
            if cur.len() > MAX_PATH_DEPTH {
                return Err("path too deep".into());
            }
        }
        let mut p = self.root.clone();
        p.extend(&cur);
        Ok(p)
    }

    fn remove(&mut self, path: &Path) -> Result<(), String> {
        let m = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("stat {}: {e}", path.display())),
        };
        if m.is_dir() {
            fs::remove_dir_all(path)
        } else {
            fs::remove_file(path)
        }
        .map_err(|e| format!("remove {}: {e}", path.display()))?;
        if let Ok(rel) = path.strip_prefix(&self.root) {
            let rel = rel.to_path_buf();
            self.side.remove_tree(&rel);
        }
        Ok(())
    }

    fn opaque(&mut self, ctx: &Ctx<'_>, dir: &Path) -> Result<(), String> {
        let rd = fs::read_dir(dir).map_err(|e| format!("read_dir {}: {e}", dir.display()))?;
        let mut doomed = Vec::new();
        for ent in rd {
            let ent = ent.map_err(|e| format!("read_dir {}: {e}", dir.display()))?;
            let p = ent.path();
            let rel = p
                .strip_prefix(&self.root)
                .map(Path::to_path_buf)
                .unwrap_or_default();
            if !ctx.this_layer.contains(&rel) {
                doomed.push(p);
            }
        }
        for p in doomed {
            self.remove(&p)?;
        }
        Ok(())
    }
}

/// Normalises a tar path: strips `/` and `./`, rejects `..`. `None` is the root itself.
fn clean(raw: &[u8]) -> Result<Option<PathBuf>, String> {
    let mut out = PathBuf::new();
    let mut depth = 0;
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("path has a `..` component".into()),
            p => {
                if p.contains(&0) {
                    return Err("path has a NUL byte".into());
                }
                depth += 1;
                if depth > MAX_PATH_DEPTH {
                    return Err("path too deep".into());
                }
                out.push(OsStr::from_bytes(p));
            }
        }
    }
    Ok(if out.as_os_str().is_empty() {
        None
    } else {
        Some(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(entries: &[(&str, EntryType, &[u8], &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(if *kind == EntryType::Directory {
                0o755
            } else {
                0o644
            });
            h.set_size(data.len() as u64);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            if !link.is_empty() {
                h.set_link_name(link).unwrap();
            }
            // `append_data` refuses `..`; write the name raw to test our own check.
            let name = h.as_gnu_mut().unwrap();
            name.name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn clean_rejects_dotdot_and_strips_prefixes() {
        assert_eq!(clean(b"./a//b/").unwrap(), Some(PathBuf::from("a/b")));
        assert_eq!(clean(b"/").unwrap(), None);
        assert!(clean(b"a/../../etc").is_err());
    }

    #[test]
    fn sniff_compression() {
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(Compression::sniff(b"etc/"), Compression::None);
    }

    #[test]
    fn dotdot_entry_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Applier::new(dir.path().join("root"), Ownership::SideTable).unwrap();
        let t = tar_with(&[("../evil", EntryType::Regular, b"x", "")]);
        let err = a.apply_reader("l0", &t[..]).unwrap_err();
        assert!(err.to_string().contains("`..`"), "{err}");
        assert!(!dir.path().join("evil").exists());
    }

    #[test]
    fn symlinked_parent_stays_inside_root() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let mut a = Applier::new(dir.path().join("root"), Ownership::SideTable).unwrap();
        // An absolute symlink to a host directory, then a file written "through" it.
        let t = tar_with(&[
            ("esc", EntryType::Symlink, b"", outside.to_str().unwrap()),
            ("esc/pwned", EntryType::Regular, b"x", ""),
            ("up", EntryType::Symlink, b"", "../../../.."),
            ("up/pwned2", EntryType::Regular, b"y", ""),
        ]);
        a.apply_reader("l0", &t[..]).unwrap();
        assert!(
            !outside.join("pwned").exists(),
            "wrote through a symlink out of the root"
        );
        let inside = dir
            .path()
            .join("root")
            .join(outside.strip_prefix("/").unwrap())
            .join("pwned");
        assert_eq!(fs::read(inside).unwrap(), b"x");
        assert_eq!(fs::read(dir.path().join("root/pwned2")).unwrap(), b"y");
        assert!(!dir.path().join("pwned2").exists());
    }

    #[test]
    fn whiteout_of_dot_dot_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let keep = dir.path().join("keep");
        fs::write(&keep, b"k").unwrap();
        let mut a = Applier::new(&root, Ownership::SideTable).unwrap();
        let t = tar_with(&[(".wh...", EntryType::Regular, b"", "")]);
        let err = a.apply_reader("l0", &t[..]).unwrap_err();
        assert!(err.to_string().contains("whiteout"), "{err}");
        assert!(
            keep.exists() && root.exists(),
            "a whiteout deleted outside the root"
        );
    }

    #[test]
    fn whiteout_and_opaque() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let mut a = Applier::new(&root, Ownership::SideTable).unwrap();
        let l1 = tar_with(&[
            ("a", EntryType::Regular, b"1", ""),
            ("d", EntryType::Directory, b"", ""),
            ("d/old", EntryType::Regular, b"o", ""),
        ]);
        let l2 = tar_with(&[
            (".wh.a", EntryType::Regular, b"", ""),
            ("d", EntryType::Directory, b"", ""),
            ("d/new", EntryType::Regular, b"n", ""),
            ("d/.wh..wh..opq", EntryType::Regular, b"", ""),
        ]);
        a.apply_reader("l1", &l1[..]).unwrap();
        a.apply_reader("l2", &l2[..]).unwrap();
        assert!(!root.join("a").exists());
        assert!(!root.join("d/old").exists());
        assert_eq!(fs::read(root.join("d/new")).unwrap(), b"n");
        let side = a.finish();
        assert!(!side.entries.contains_key(Path::new("a")));
        assert!(side.entries.contains_key(Path::new("d/new")));
    }
}
