//! Applying image layers (tar, gzip or zstd) to a directory: owners, modes, special bits,
//! symlinks, hardlinks, xattrs and device nodes; whiteouts (`.wh.NAME`) and opaque directories
//! (`.wh..wh..opq`); every path confined to the root; bounded in bytes and entries.
//!
//! Confinement follows chroot semantics (what Docker gets by unpacking inside a chroot): an
//! entry's parent directories are resolved inside the root, so a symlink `lib -> usr/lib` or even
//! `lib -> /usr/lib` is followed *within* the tree and `..` stops at the root; an entry's own last
//! component is never followed (it is replaced). Entries with a `..` component are rejected.
//!
//! Every decision is made here, once; the result is carried out on a [`Tree`] through confined
//! relative paths only: [`DirTree`] (a directory on disk, what [`Applier::new`] uses) or any
//! other implementation (the `oci_layer` fuzz harness applies layers to an in-memory tree).
//!
//! Bounds ([`Limits`]): the decompressed stream and the file content written are each counted
//! as they flow, so a decompression bomb (or a sparse file claiming terabytes) stops at the
//! limit, during extraction, with [`Error::LayerLimit`]; so does a layer with too many entries.
//!
//! Ownership: as root ([`Ownership::Native`]) owners, modes, xattrs and device nodes are applied
//! to the tree itself. Otherwise ([`Ownership::SideTable`]) the tree keeps the caller's owner and
//! owner-accessible modes, and the real owner, mode, device numbers and xattrs of every entry
//! go into a [`SideTable`] that [`crate::ext4`] replays under `fakeroot` before `mkfs.ext4 -d`.

mod tree;

use std::cell::Cell;
use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use tar::EntryType;
use tracing::debug;

pub use self::tree::{Attrs, DirTree, NodeType, Special, Tree};
use crate::digest::{Digest, HashingReader};
use crate::error::{Error, Result};

/// Symlink hops allowed while resolving one path (Linux's limit).
const MAX_SYMLINK_HOPS: u32 = 40;
/// Deepest path accepted in a layer.
pub const MAX_PATH_DEPTH: usize = 256;

/// Bounds on what an [`Applier`] extracts, over all the layers it applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum bytes of decompressed tar stream read, and (separately) of file content written.
    pub max_bytes: u64,
    /// Maximum number of tar entries.
    pub max_entries: u64,
}

impl Default for Limits {
    /// 256 GiB and 16 Mi entries: far above any real base image, far below a disk-filling bomb
    /// of the `42.zip` kind. Callers that know the target image size pass it instead.
    fn default() -> Self {
        Limits {
            max_bytes: 256 << 30,
            max_entries: 16 << 20,
        }
    }
}

/// What an [`Applier`] has extracted so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Decompressed tar stream bytes read.
    pub stream_bytes: u64,
    /// File content bytes written.
    pub file_bytes: u64,
    /// Tar entries seen.
    pub entries: u64,
}

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

/// Applies layers, bottom first, to one root: a directory ([`DirTree`], the default) or any
/// other [`Tree`].
#[derive(Debug)]
pub struct Applier<T: Tree = DirTree> {
    tree: T,
    ownership: Ownership,
    side: SideTable,
    limits: Limits,
    usage: Usage,
}

struct Ctx<'a> {
    layer: &'a str,
    this_layer: HashSet<PathBuf>,
}

/// Counts bytes flowing through against a budget; never hands out a byte beyond it.
struct Capped<'a, R> {
    inner: R,
    used: &'a Cell<u64>,
    max: u64,
    hit: &'a Cell<bool>,
}

impl<R: Read> Read for Capped<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let used = self.used.get();
        // One byte beyond the budget tells "exactly at the limit" from "over it".
        let room = self.max.saturating_sub(used).saturating_add(1);
        let len = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..len])?;
        let used = used + n as u64;
        if used > self.max {
            self.hit.set(true);
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "layer size limit reached",
            ));
        }
        self.used.set(used);
        Ok(n)
    }
}

impl Applier<DirTree> {
    /// Prepares `root` (created if missing) for layers, with default [`Limits`].
    pub fn new(root: impl Into<PathBuf>, ownership: Ownership) -> Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(Error::io("create", &root))?;
        Ok(Self::with_tree(DirTree::new(root), ownership))
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        self.tree.root()
    }
}

impl<T: Tree> Applier<T> {
    /// Applies layers to `tree`, with default [`Limits`].
    pub fn with_tree(tree: T, ownership: Ownership) -> Self {
        Self {
            tree,
            ownership,
            side: SideTable::default(),
            limits: Limits::default(),
            usage: Usage::default(),
        }
    }

    /// Sets the limits (over all layers applied from now on, counting what was already used).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// What has been extracted so far.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// The tree layers are applied to.
    pub fn tree(&self) -> &T {
        &self.tree
    }

    /// Applies one layer file (compression sniffed). Returns the digest of the uncompressed
    /// tar stream (the layer's *diff id*), for the caller to check against the image config.
    pub fn apply_file(&mut self, name: &str, path: &Path) -> Result<Digest> {
        let f = fs::File::open(path).map_err(Error::io("open", path))?;
        self.apply_reader(name, f)
    }

    /// Applies one layer from a reader (compression sniffed). `name` labels errors.
    pub fn apply_reader(&mut self, name: &str, r: impl Read) -> Result<Digest> {
        let stream_used = Cell::new(self.usage.stream_bytes);
        let hit = Cell::new(false);
        let limits = self.limits;
        let limit_err = |what: &'static str, limit: u64| Error::LayerLimit {
            layer: name.to_owned(),
            what,
            limit,
        };
        let read_err = |source: io::Error| {
            if hit.get() {
                limit_err("decompressed size", limits.max_bytes)
            } else {
                Error::LayerRead {
                    layer: name.to_owned(),
                    source,
                }
            }
        };
        let capped = Capped {
            inner: decompress(r).map_err(read_err)?,
            used: &stream_used,
            max: limits.max_bytes,
            hit: &hit,
        };
        let mut archive = tar::Archive::new(HashingReader::new(capped));
        let mut ctx = Ctx {
            layer: name,
            this_layer: HashSet::new(),
        };
        let result = (|| {
            for entry in archive.entries().map_err(read_err)? {
                let mut entry = entry.map_err(read_err)?;
                self.usage.entries += 1;
                if self.usage.entries > limits.max_entries {
                    return Err(limit_err("entry count", limits.max_entries));
                }
                self.apply_entry(&mut ctx, &mut entry, &hit)?;
            }
            Ok(())
        })();
        self.usage.stream_bytes = stream_used.get();
        result?;
        let digest = archive.into_inner().finish().map_err(read_err);
        self.usage.stream_bytes = stream_used.get();
        digest
    }

    /// Finishes and returns the side table (empty under [`Ownership::Native`]).
    pub fn finish(self) -> SideTable {
        self.side
    }

    /// Finishes and returns the tree and the side table.
    pub fn into_parts(self) -> (T, SideTable) {
        (self.tree, self.side)
    }

    fn apply_entry<R: Read>(
        &mut self,
        ctx: &mut Ctx<'_>,
        entry: &mut tar::Entry<'_, R>,
        stream_hit: &Cell<bool>,
    ) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let err = |reason: String| Error::Layer {
            layer: ctx.layer.to_owned(),
            entry: shown.clone(),
            reason,
        };
        let limit_err = |what: &'static str, limit: u64| Error::LayerLimit {
            layer: ctx.layer.to_owned(),
            what,
            limit,
        };
        let Some(rel) = clean(&raw).map_err(&err)? else {
            // The root itself (`./`): only its metadata.
            if entry.header().entry_type() == EntryType::Directory {
                self.set_meta(entry, Path::new(""), false).map_err(&err)?;
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
        let kind = entry.header().entry_type();

        // Replace what is there, except a directory over a directory.
        match self.tree.node_type(&path) {
            Ok(Some(NodeType::Dir)) if kind == EntryType::Directory => {}
            Ok(Some(_)) => self.remove(&path).map_err(&err)?,
            Ok(None) => {}
            Err(e) => return Err(err(format!("stat: {e}"))),
        }

        let mut symlink = false;
        match kind {
            EntryType::Directory => {
                if self.tree.node_type(&path).ok().flatten() != Some(NodeType::Dir) {
                    self.tree
                        .create_dir(&path)
                        .map_err(|e| err(format!("mkdir: {e}")))?;
                }
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                // Content is counted as written: a sparse entry can expand far beyond the
                // stream that carries it.
                let used = Cell::new(self.usage.file_bytes);
                let hit = Cell::new(false);
                let mut content = Capped {
                    inner: &mut *entry,
                    used: &used,
                    max: self.limits.max_bytes,
                    hit: &hit,
                };
                let written = self.tree.write_file(&path, &mut content);
                self.usage.file_bytes = used.get();
                if let Err(e) = written {
                    if hit.get() {
                        return Err(limit_err("file content", self.limits.max_bytes));
                    }
                    if stream_hit.get() {
                        return Err(limit_err("decompressed size", self.limits.max_bytes));
                    }
                    return Err(err(format!("write: {e}")));
                }
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| err("symlink without target".into()))?
                    .into_owned();
                self.tree
                    .symlink(OsStr::from_bytes(&target), &path)
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
                self.tree.hard_link(&tpath, &path).map_err(|e| {
                    err(format!(
                        "hardlink to {}: {e}",
                        String::from_utf8_lossy(&target)
                    ))
                })?;
                ctx.this_layer.insert(path.clone());
                // A hardlink shares the target's inode and metadata.
                if let Some(meta) = self.side.entries.get(&tpath).cloned() {
                    self.side.entries.insert(path, meta);
                }
                return Ok(());
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let h = entry.header();
                let major = h.device_major().ok().flatten().unwrap_or(0);
                let minor = h.device_minor().ok().flatten().unwrap_or(0);
                let node = match kind {
                    EntryType::Char => Special::Char(major, minor),
                    EntryType::Block => Special::Block(major, minor),
                    _ => Special::Fifo,
                };
                if node == Special::Fifo || self.ownership == Ownership::Native {
                    self.tree
                        .make_node(&path, node)
                        .map_err(|e| err(format!("mknod: {e}")))?;
                } else {
                    // Placeholder; the side table turns it into a node under fakeroot.
                    self.tree
                        .write_file(&path, &mut io::empty())
                        .map_err(|e| err(format!("placeholder: {e}")))?;
                }
            }
            other => {
                debug!(layer = ctx.layer, entry = %shown, ?other, "skipping unsupported tar entry type");
                return Ok(());
            }
        }
        ctx.this_layer.insert(path.clone());
        self.set_meta(entry, &path, symlink).map_err(&err)?;
        Ok(())
    }

    fn set_meta<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
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
        let mut attrs = Attrs {
            // Not on directories: a directory's mtime changes as entries land in it anyway.
            mtime: (!is_dir).then_some(mtime as i64),
            ..Attrs::default()
        };
        match self.ownership {
            Ownership::Native => {
                attrs.owner = Some((uid, gid));
                // Applied after chown, which clears setuid/setgid.
                attrs.mode = (!symlink).then_some(mode);
                attrs.xattrs = xattrs.into_iter().collect();
                self.tree
                    .set_attrs(rel, &attrs)
                    .map_err(|e| format!("set attributes: {e}"))?;
            }
            Ownership::SideTable => {
                let owner_bits = if is_dir { 0o700 } else { 0o600 };
                attrs.mode = (!symlink).then_some((mode & 0o777) | owner_bits);
                self.tree
                    .set_attrs(rel, &attrs)
                    .map_err(|e| format!("set attributes: {e}"))?;
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
        Ok(())
    }

    /// Resolves `rel` (a directory path relative to the root) inside the root, following
    /// symlinks with chroot semantics; the result has normal components only and names a
    /// directory. Missing directories are created when `create`.
    fn resolve(&mut self, rel: &Path, create: bool) -> Result<PathBuf, String> {
        let mut pending: Vec<PathBuf> = rel
            .components()
            .rev()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(PathBuf::from(n)),
                _ => None,
            })
            .collect();
        let mut cur = PathBuf::new();
        let mut depth = 0;
        let mut hops = 0;
        while let Some(c) = pending.pop() {
            if c.as_os_str() == ".." {
                if cur.pop() {
                    depth -= 1;
                }
                continue;
            }
            if c.as_os_str() == "." || c.as_os_str().is_empty() {
                continue;
            }
            let p = cur.join(&c);
            match self.tree.node_type(&p) {
                Ok(Some(NodeType::Symlink)) => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err("too many levels of symbolic links".into());
                    }
                    let target = self
                        .tree
                        .read_link(&p)
                        .map_err(|e| format!("readlink: {e}"))?;
                    if target.is_absolute() {
                        cur.clear();
                        depth = 0;
                    }
                    for t in target.components().rev() {
                        match t {
                            Component::Normal(n) => pending.push(PathBuf::from(n)),
                            Component::ParentDir => pending.push(PathBuf::from("..")),
                            _ => {}
                        }
                    }
                    if pending.len() > MAX_PATH_DEPTH * 4 {
                        return Err("symlink expansion too long".into());
                    }
                    continue;
                }
                Ok(Some(NodeType::Dir)) => {}
                Ok(Some(NodeType::Other)) => {
                    return Err(format!("{} is not a directory", p.display()));
                }
                Ok(None) if create => {
                    self.tree
                        .create_dir(&p)
                        .map_err(|e| format!("mkdir {}: {e}", p.display()))?;
                    if self.ownership == Ownership::SideTable {
                        self.side.entries.insert(
                            p.clone(),
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
                }
                Ok(None) => return Err(format!("{} does not exist", p.display())),
                Err(e) => return Err(format!("stat {}: {e}", p.display())),
            }
            cur = p;
            depth += 1;
            if depth > MAX_PATH_DEPTH {
                return Err("path too deep".into());
            }
        }
        Ok(cur)
    }

    fn remove(&mut self, rel: &Path) -> Result<(), String> {
        match self.tree.node_type(rel) {
            Ok(None) => return Ok(()),
            Ok(Some(_)) => {}
            Err(e) => return Err(format!("stat {}: {e}", rel.display())),
        }
        self.tree
            .remove(rel)
            .map_err(|e| format!("remove {}: {e}", rel.display()))?;
        self.side.remove_tree(rel);
        Ok(())
    }

    fn opaque(&mut self, ctx: &Ctx<'_>, dir: &Path) -> Result<(), String> {
        let names = self
            .tree
            .list_dir(dir)
            .map_err(|e| format!("read_dir {}: {e}", dir.display()))?;
        for name in names {
            let rel = dir.join(name);
            if !ctx.this_layer.contains(&rel) {
                self.remove(&rel)?;
            }
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

    #[test]
    fn gzip_bomb_stops_at_the_limit_on_disk() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let max = 64 << 10;
        let mut a = Applier::new(&root, Ownership::SideTable)
            .unwrap()
            .limits(Limits {
                max_bytes: max,
                max_entries: 10,
            });
        let zeros = vec![0u8; 4 << 20];
        let t = tar_with(&[("zeros", EntryType::Regular, &zeros, "")]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&t).unwrap();
        let bomb = gz.finish().unwrap();
        assert!(bomb.len() < 16 << 10, "the bomb is small: {}", bomb.len());
        let err = a.apply_reader("l0", &bomb[..]).unwrap_err();
        assert!(
            matches!(err, Error::LayerLimit { limit, .. } if limit == max),
            "{err}"
        );
        assert!(a.usage().stream_bytes <= max);
        let on_disk = fs::metadata(root.join("zeros")).map_or(0, |m| m.len());
        assert!(on_disk <= max, "{on_disk} bytes extracted");
    }

    #[test]
    fn entry_count_is_bounded_over_layers() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Applier::new(dir.path(), Ownership::SideTable)
            .unwrap()
            .limits(Limits {
                max_bytes: 1 << 20,
                max_entries: 3,
            });
        let t = tar_with(&[
            ("a", EntryType::Regular, b"", ""),
            ("b", EntryType::Regular, b"", ""),
        ]);
        a.apply_reader("l0", &t[..]).unwrap();
        let err = a.apply_reader("l1", &t[..]).unwrap_err();
        assert!(
            matches!(
                err,
                Error::LayerLimit {
                    what: "entry count",
                    ..
                }
            ),
            "{err}"
        );
    }
}
