//! Placing COPY/ADD resources with Docker's semantics.
//!
//! # Staged placement
//! vminit receives each resource with `firebuild_transfer::DirSink` into a **staging path**
//! inside the guest root (same file system, e.g. `/.firebuild-staging/<n>`), and then calls
//! [`Placer::place_resource`]. Placing from a staged copy, rather than through a `Sink` writing at
//! the final place, keeps every Docker rule in one synchronous, testable function that only runs
//! once the whole resource arrived and was verified: a transfer that fails half-way leaves the
//! image untouched, and the decisions that depend on the guest's state (is the destination an
//! existing directory? who is `--chown=app`?) are taken once, at the end. Files are moved with
//! `rename(2)` (no copy) when the staging path is on the same file system, copied otherwise.
//!
//! # Rules (buildkit's)
//! - A file goes to its target; when the target is an existing directory (symlinks followed
//!   inside the root) it goes into it under the source's base name.
//! - A directory's contents are merged into the target, created if missing; existing
//!   subdirectories take the source's mode, owner and time, the target directory itself keeps
//!   its own if it exists. A directory never replaces a file (error), nor a file a directory.
//! - Several sources need a destination ending in `/` ([`Placer::new`] checks).
//! - Owners: `--chown` resolved in the guest's `/etc/passwd` and `/etc/group` (a name gives the
//!   user's primary group, an id the same id as group), else `0:0`; missing parent directories
//!   are created 0755 with the same owner (buildkit's `CreateDestPath`).
//! - Modes: the source's, or `--chmod` (octal, or symbolic relative to each file's mode, `X` as in
//!   chmod(1)); symlinks are placed as links, never followed.
//! - ADD of a local archive (`Resource::extract`): tar, optionally gzip, bzip2, xz or zstd
//!   compressed (detected from the magic bytes), extracted into the target; entry owners come
//!   from the archive unless `--chown` is given; device nodes and FIFOs are skipped.
//! - Every destination path is confined to the root: `..` and symlinks resolve inside it (see
//!   [`crate::paths`]); archive entries are confined to the extraction directory.

use std::fs::{self, File, FileTimes, OpenOptions, Permissions};
use std::io::{self, BufReader, Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use firebuild_plan::{Chmod, Chown, Resource, Transfer};

use crate::error::{Error, Result};
use crate::passwd::{UserDb, parse_id};
use crate::paths;

/// Most entries extracted from one archive.
pub const MAX_ARCHIVE_ENTRIES: u64 = 1_000_000;
/// Deepest directory tree placed.
pub const MAX_TREE_DEPTH: usize = 256;

/// The mode of a file COPY writes from a heredoc (buildkit's `dispatchCopy`).
const HEREDOC_MODE: u32 = 0o664;

/// Resolves `--chown` in the guest's user database: `(uid, gid)`; `(0, 0)` when absent.
pub fn resolve_owner(db: &UserDb, chown: Option<&Chown>) -> Result<(u32, u32)> {
    let Some(c) = chown else {
        return Ok((0, 0));
    };
    let (uid, mut gid) = match (parse_id(&c.user), db.user(&c.user)) {
        (Some(id), _) => (id, id),
        (None, Some(u)) => (u.uid, u.gid),
        (None, None) => return Err(Error::UnknownUser(c.user.clone())),
    };
    if let Some(g) = c.group.as_deref().filter(|g| !g.is_empty()) {
        gid = db.resolve_group(g)?;
    }
    Ok((uid, gid))
}

/// Applies `--chmod` to a file's current permission bits.
pub fn apply_chmod(chmod: &Chmod, mode: u32, is_dir: bool) -> Result<u32> {
    match chmod {
        Chmod::Octal(m) => Ok(m & 0o7777),
        Chmod::Symbolic(s) => symbolic(s, mode & 0o7777, is_dir).ok_or_else(|| Error::Invalid {
            what: "chmod",
            value: s.clone(),
            reason: "not a symbolic mode like u+x,go-w",
        }),
    }
}

fn symbolic(spec: &str, mut mode: u32, is_dir: bool) -> Option<u32> {
    for clause in spec.split(',') {
        let op_at = clause.find(['+', '-', '='])?;
        let (who, rest) = clause.split_at(op_at);
        let mut who_mask = 0u32;
        for c in who.chars() {
            who_mask |= match c {
                'u' => 0o4700,
                'g' => 0o2070,
                'o' => 0o1007,
                'a' => 0o7777,
                _ => return None,
            };
        }
        if who_mask == 0 {
            who_mask = 0o7777;
        }
        let mut chars = rest.chars().peekable();
        while let Some(op) = chars.next() {
            if !matches!(op, '+' | '-' | '=') {
                return None;
            }
            let mut bits = 0u32;
            while let Some(&c) = chars.peek() {
                if matches!(c, '+' | '-' | '=') {
                    break;
                }
                chars.next();
                bits |= match c {
                    'r' => 0o444,
                    'w' => 0o222,
                    'x' => 0o111,
                    'X' if is_dir || mode & 0o111 != 0 => 0o111,
                    'X' => 0,
                    's' => 0o6000,
                    't' => 0o1000,
                    _ => return None,
                };
            }
            let bits = bits & who_mask;
            match op {
                '+' => mode |= bits,
                '-' => mode &= !bits,
                _ => mode = (mode & !(who_mask & 0o777)) | bits,
            }
        }
    }
    Some(mode & 0o7777)
}

/// Places the resources of one COPY/ADD step under a guest root.
#[derive(Debug, Clone)]
pub struct Placer {
    root: PathBuf,
    owner: (u32, u32),
    chown: bool,
    chmod: Option<Chmod>,
}

impl Placer {
    /// A placer for `transfer` under `root`: resolves `--chown` in the guest and checks that
    /// several sources have a directory destination.
    pub fn new(root: &Path, transfer: &Transfer) -> Result<Self> {
        if transfer.sources.len() > 1 && !transfer.dest.ends_with('/') {
            return Err(Error::Place {
                what: transfer.dest.clone(),
                reason: "when using COPY or ADD with more than one source, the destination must \
                         be a directory and end with a /"
                    .into(),
            });
        }
        let db = UserDb::load(root)?;
        let owner = resolve_owner(&db, transfer.chown.as_ref())?;
        Ok(Placer {
            root: root.to_path_buf(),
            owner,
            chown: transfer.chown.is_some(),
            chmod: transfer.chmod.clone(),
        })
    }

    /// A placer with an explicit owner and mode change (no `Transfer` at hand).
    pub fn with(root: &Path, owner: Option<(u32, u32)>, chmod: Option<Chmod>) -> Self {
        Placer {
            root: root.to_path_buf(),
            owner: owner.unwrap_or((0, 0)),
            chown: owner.is_some(),
            chmod,
        }
    }

    /// The owner placed files get (`--chown` resolved, or `0:0`).
    pub fn owner(&self) -> (u32, u32) {
        self.owner
    }

    /// Places a plan resource received at `staged` (consumed: moved when possible).
    pub fn place_resource(&self, resource: &Resource, staged: &Path) -> Result<PathBuf> {
        let name = resource.path.rsplit('/').next().unwrap_or(&resource.path);
        if resource.extract && is_archive(staged)? {
            self.extract(staged, &resource.target)
        } else {
            self.place(staged, &resource.target, name)
        }
    }

    /// Places the file, symlink or directory at `staged` at the guest path `target`; `name` is
    /// the source's base name (used when `target` is an existing directory). Returns the host
    /// path written.
    pub fn place(&self, staged: &Path, target: &str, name: &str) -> Result<PathBuf> {
        let meta = fs::symlink_metadata(staged).map_err(Error::io("stat", staged))?;
        let target = paths::normalize(target);
        if meta.is_dir() {
            return self.place_dir(staged, &meta, &target);
        }
        let guest = self.file_target(&target, name)?;
        self.create_parents(&guest)?;
        let host = paths::resolve_nofollow(&self.root, &guest)?;
        self.put_entry(staged, &meta, &host, &guest)?;
        Ok(host)
    }

    /// Writes `content` as a file named `name` at `target` (COPY from a heredoc), mode 0664
    /// unless `--chmod`: buildkit makes an inline document with `llb.Mkfile(f, 0664, data)`.
    pub fn place_bytes(&self, content: &[u8], target: &str, name: &str) -> Result<PathBuf> {
        let guest = self.file_target(&paths::normalize(target), name)?;
        self.create_parents(&guest)?;
        let host = paths::resolve_nofollow(&self.root, &guest)?;
        refuse_dir(&host, &guest)?;
        let mode = match &self.chmod {
            Some(c) => apply_chmod(c, HEREDOC_MODE, false)?,
            None => HEREDOC_MODE,
        };
        let meta = paths::FileMeta {
            mode,
            uid: self.owner.0,
            gid: self.owner.1,
        };
        paths::write_atomic(&host, content, Some(meta), meta)?;
        Ok(host)
    }

    /// `target`, or `target/name` when `target` is an existing directory.
    fn file_target(&self, target: &str, name: &str) -> Result<String> {
        let resolved = paths::resolve(&self.root, target)?;
        if resolved.is_dir() && !name.is_empty() && name != "." {
            if name.contains('/') || name == ".." {
                return Err(Error::Place {
                    what: name.to_owned(),
                    reason: "bad source name".into(),
                });
            }
            Ok(format!("{}/{name}", target.trim_end_matches('/')))
        } else {
            Ok(target.to_owned())
        }
    }

    fn create_parents(&self, guest: &str) -> Result<()> {
        if let Some(parent) = Path::new(guest).parent() {
            paths::create_dirs(
                &self.root,
                &parent.to_string_lossy(),
                0o755,
                self.owner.0,
                self.owner.1,
            )?;
        }
        Ok(())
    }

    fn mode_for(&self, source_mode: u32, is_dir: bool) -> Result<u32> {
        match &self.chmod {
            Some(c) => apply_chmod(c, source_mode, is_dir),
            None => Ok(source_mode & 0o7777),
        }
    }

    /// Moves one non-directory entry into place and sets owner, mode and time.
    fn put_entry(
        &self,
        staged: &Path,
        meta: &fs::Metadata,
        host: &Path,
        guest: &str,
    ) -> Result<()> {
        refuse_dir(host, guest)?;
        if meta.file_type().is_symlink() {
            let t = fs::read_link(staged).map_err(Error::io("read link", staged))?;
            let _ = fs::remove_file(host);
            std::os::unix::fs::symlink(&t, host).map_err(Error::io("create link", host))?;
            return paths::chown(host, self.owner.0, self.owner.1);
        }
        if !meta.is_file() {
            tracing::debug!(path = %staged.display(), "special file skipped");
            return Ok(());
        }
        match fs::rename(staged, host) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
                copy_file(staged, host, meta)?;
            }
            Err(e) => return Err(Error::io("move into", host)(e)),
        }
        paths::chown(host, self.owner.0, self.owner.1)?;
        let mode = self.mode_for(meta.mode(), false)?;
        fs::set_permissions(host, Permissions::from_mode(mode)).map_err(Error::io("chmod", host))
    }

    fn place_dir(&self, staged: &Path, meta: &fs::Metadata, target: &str) -> Result<PathBuf> {
        let host = paths::resolve(&self.root, target)?;
        match fs::symlink_metadata(&host) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::Place {
                    what: target.to_owned(),
                    reason: "cannot overwrite non-directory with directory".into(),
                });
            }
            Err(_) => {
                self.create_parents(target)?;
                let host = paths::resolve(&self.root, target)?;
                fs::create_dir(&host).map_err(Error::io("create directory", &host))?;
                paths::chown(&host, self.owner.0, self.owner.1)?;
                // `--chmod` applies to what is copied, not to the directory made to hold it
                // (Docker: `COPY --chmod=0750 d /c/d` leaves /c/d as the source dir's mode).
                let mode = meta.mode() & 0o7777;
                fs::set_permissions(&host, Permissions::from_mode(mode))
                    .map_err(Error::io("chmod", &host))?;
                set_mtime(&host, meta)?;
            }
        }
        self.merge(staged, target, 0)?;
        paths::resolve(&self.root, target)
    }

    fn merge(&self, staged_dir: &Path, guest_dir: &str, depth: usize) -> Result<()> {
        if depth > MAX_TREE_DEPTH {
            return Err(Error::Place {
                what: guest_dir.to_owned(),
                reason: "directory tree too deep".into(),
            });
        }
        let mut entries: Vec<_> = fs::read_dir(staged_dir)
            .map_err(Error::io("read directory", staged_dir))?
            .collect::<io::Result<_>>()
            .map_err(Error::io("read directory", staged_dir))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let src = e.path();
            let name = e.file_name();
            let name = name.to_string_lossy();
            let guest = format!("{}/{name}", guest_dir.trim_end_matches('/'));
            let meta = fs::symlink_metadata(&src).map_err(Error::io("stat", &src))?;
            if meta.is_dir() {
                let host = paths::resolve(&self.root, &guest)?;
                match fs::symlink_metadata(&host) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        return Err(Error::Place {
                            what: guest,
                            reason: "cannot overwrite non-directory with directory".into(),
                        });
                    }
                    Err(_) => {
                        fs::create_dir(&host).map_err(Error::io("create directory", &host))?
                    }
                }
                self.merge(&src, &guest, depth + 1)?;
                paths::chown(&host, self.owner.0, self.owner.1)?;
                // `--chmod` applies to what is copied, not to the directory made to hold it
                // (Docker: `COPY --chmod=0750 d /c/d` leaves /c/d as the source dir's mode).
                let mode = meta.mode() & 0o7777;
                fs::set_permissions(&host, Permissions::from_mode(mode))
                    .map_err(Error::io("chmod", &host))?;
                set_mtime(&host, &meta)?;
            } else {
                let host = paths::resolve_nofollow(&self.root, &guest)?;
                self.put_entry(&src, &meta, &host, &guest)?;
            }
        }
        Ok(())
    }

    /// Extracts the archive at `staged` into the guest directory `target` (created if missing).
    pub fn extract(&self, staged: &Path, target: &str) -> Result<PathBuf> {
        let target = paths::normalize(target);
        paths::create_dirs(&self.root, &target, 0o755, self.owner.0, self.owner.1)?;
        let dir = paths::resolve(&self.root, &target)?;
        let mut file = File::open(staged).map_err(Error::io("open", staged))?;
        let compression = Compression::detect(&mut file, staged)?;
        let reader = BufReader::new(file);
        let bad = |e: io::Error| Error::Place {
            what: staged.display().to_string(),
            reason: format!("archive: {e}"),
        };
        match compression {
            Compression::Gzip => self.untar(flate2::read::MultiGzDecoder::new(reader), &dir),
            Compression::Bzip2 => self.untar(bzip2::read::MultiBzDecoder::new(reader), &dir),
            Compression::Zstd => {
                let dec = ruzstd::decoding::StreamingDecoder::new(reader)
                    .map_err(|e| bad(io::Error::other(e.to_string())))?;
                self.untar(dec, &dir)
            }
            Compression::Xz => {
                // lzma-rs decodes into a writer: go through an unnamed temporary file.
                let mut tmp = tempfile_in(&dir)?;
                let mut r = reader;
                lzma_rs::xz_decompress(&mut r, &mut tmp)
                    .map_err(|e| bad(io::Error::other(e.to_string())))?;
                tmp.rewind().map_err(Error::io("read", staged))?;
                self.untar(BufReader::new(tmp), &dir)
            }
            Compression::None => self.untar(reader, &dir),
        }
        .map_err(|e| match e {
            Error::Io { source, .. } if source.kind() == io::ErrorKind::InvalidData => bad(source),
            other => other,
        })?;
        Ok(dir)
    }

    fn untar(&self, reader: impl Read, dir: &Path) -> Result<()> {
        let mut archive = tar::Archive::new(reader);
        let entries = archive
            .entries()
            .map_err(Error::io("read archive for", dir))?;
        let mut dirs: Vec<(PathBuf, u32, u32, u32, u64)> = Vec::new();
        let mut count = 0u64;
        for entry in entries {
            let mut entry = entry.map_err(Error::io("read archive for", dir))?;
            count += 1;
            if count > MAX_ARCHIVE_ENTRIES {
                return Err(Error::Place {
                    what: dir.display().to_string(),
                    reason: format!("archive has more than {MAX_ARCHIVE_ENTRIES} entries"),
                });
            }
            let raw = entry.path_bytes().into_owned();
            let rel = String::from_utf8_lossy(&raw).into_owned();
            let Some(rel) = confine_rel(&rel) else {
                return Err(Error::Place {
                    what: rel,
                    reason: "archive entry escapes the destination".into(),
                });
            };
            if rel.is_empty() {
                continue;
            }
            let h = entry.header();
            let (uid, gid) = if self.chown {
                self.owner
            } else {
                (
                    h.uid()
                        .ok()
                        .and_then(|v| u32::try_from(v).ok())
                        .unwrap_or(0),
                    h.gid()
                        .ok()
                        .and_then(|v| u32::try_from(v).ok())
                        .unwrap_or(0),
                )
            };
            let kind = h.entry_type();
            let is_dir = kind.is_dir();
            let mode = self.mode_for(
                h.mode().unwrap_or(if is_dir { 0o755 } else { 0o644 }),
                is_dir,
            )?;
            let mtime = h.mtime().unwrap_or(0);
            // Parents inside the extraction directory (created 0755, owner like the entry's).
            if let Some(parent) = Path::new(&rel).parent() {
                paths::create_dirs(dir, &parent.to_string_lossy(), 0o755, uid, gid)?;
            }
            let host = paths::resolve_nofollow(dir, &rel)?;
            if is_dir {
                let host = paths::resolve(dir, &rel)?;
                match fs::symlink_metadata(&host) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        fs::remove_file(&host).map_err(Error::io("remove", &host))?;
                        fs::create_dir(&host).map_err(Error::io("create directory", &host))?;
                    }
                    Err(_) => {
                        fs::create_dir(&host).map_err(Error::io("create directory", &host))?
                    }
                }
                paths::chown(&host, uid, gid)?;
                dirs.push((host, mode, uid, gid, mtime));
                continue;
            }
            refuse_dir(&host, &rel)?;
            if kind.is_symlink() {
                let Some(t) = entry.link_name_bytes() else {
                    continue;
                };
                let t = PathBuf::from(String::from_utf8_lossy(&t).into_owned());
                let _ = fs::remove_file(&host);
                std::os::unix::fs::symlink(&t, &host).map_err(Error::io("create link", &host))?;
                paths::chown(&host, uid, gid)?;
            } else if kind.is_hard_link() {
                let Some(t) = entry.link_name_bytes() else {
                    continue;
                };
                let t = String::from_utf8_lossy(&t).into_owned();
                let Some(t) = confine_rel(&t) else {
                    return Err(Error::Place {
                        what: t,
                        reason: "hard link escapes the destination".into(),
                    });
                };
                let src = paths::resolve_nofollow(dir, &t)?;
                let _ = fs::remove_file(&host);
                fs::hard_link(&src, &host).map_err(Error::io("create hard link", &host))?;
            } else if kind.is_file() || kind == tar::EntryType::Continuous {
                let _ = fs::remove_file(&host);
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&host)
                    .map_err(Error::io("create", &host))?;
                io::copy(&mut entry, &mut f).map_err(Error::io("extract", &host))?;
                paths::chown(&host, uid, gid)?;
                f.set_permissions(Permissions::from_mode(mode))
                    .map_err(Error::io("chmod", &host))?;
                f.set_times(FileTimes::new().set_modified(UNIX_EPOCH + Duration::from_secs(mtime)))
                    .map_err(Error::io("set time of", &host))?;
            } else {
                tracing::debug!(entry = %rel, "archive entry of unsupported kind skipped");
            }
        }
        // Directory modes and times last, deepest first (a 0555 directory must stay writable
        // while its contents are extracted).
        dirs.sort_by_key(|d| std::cmp::Reverse(d.0.components().count()));
        for (host, mode, _, _, mtime) in dirs {
            fs::set_permissions(&host, Permissions::from_mode(mode))
                .map_err(Error::io("chmod", &host))?;
            let f = File::open(&host).map_err(Error::io("open", &host))?;
            f.set_times(FileTimes::new().set_modified(UNIX_EPOCH + Duration::from_secs(mtime)))
                .map_err(Error::io("set time of", &host))?;
        }
        Ok(())
    }
}

/// A relative, normalised archive path (leading `/` and `./` dropped); `None` if `..` climbs out.
/// How an ADD source is compressed, from its magic bytes (moby's `archive.DetectCompression`).
enum Compression {
    None,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

impl Compression {
    /// Reads the magic bytes of `file` and rewinds it.
    fn detect(file: &mut File, path: &Path) -> Result<Self> {
        let mut magic = [0u8; 6];
        let n = read_up_to(file, &mut magic).map_err(Error::io("read", path))?;
        file.rewind().map_err(Error::io("read", path))?;
        Ok(match &magic[..n] {
            [0x1f, 0x8b, ..] => Self::Gzip,
            [b'B', b'Z', b'h', ..] => Self::Bzip2,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Self::Zstd,
            [0xfd, b'7', b'z', b'X', b'Z', 0] => Self::Xz,
            _ => Self::None,
        })
    }
}

/// A writer that keeps the first `limit` bytes and then refuses more (to decode only the start
/// of an xz stream).
struct Head {
    bytes: Vec<u8>,
    limit: usize,
}

impl Write for Head {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.limit - self.bytes.len();
        if room == 0 {
            return Err(io::Error::other("enough"));
        }
        let n = room.min(buf.len());
        self.bytes.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether an ADD source is extracted: Docker's rule (BuildKit's `isArchivePath`) is that a local
/// file is an archive when, decompressed as its magic bytes say, its first tar header reads. Any
/// other file (a `.gz` of something that is not a tar, an empty file, text) is copied as it is.
pub fn is_archive(path: &Path) -> Result<bool> {
    const HEADER: usize = 512;
    let mut file = File::open(path).map_err(Error::io("open", path))?;
    if !file.metadata().map_err(Error::io("stat", path))?.is_file() {
        return Ok(false);
    }
    let compression = Compression::detect(&mut file, path)?;
    let mut head = [0u8; HEADER];
    let read = |mut r: Box<dyn Read>, head: &mut [u8]| read_up_to(&mut r, head).unwrap_or(0);
    let reader = BufReader::new(file);
    let n = match compression {
        Compression::None => read(Box::new(reader), &mut head),
        Compression::Gzip => read(
            Box::new(flate2::read::MultiGzDecoder::new(reader)),
            &mut head,
        ),
        Compression::Bzip2 => read(
            Box::new(bzip2::read::MultiBzDecoder::new(reader)),
            &mut head,
        ),
        Compression::Zstd => match ruzstd::decoding::StreamingDecoder::new(reader) {
            Ok(dec) => read(Box::new(dec), &mut head),
            Err(_) => 0,
        },
        Compression::Xz => {
            let mut out = Head {
                bytes: Vec::with_capacity(HEADER),
                limit: HEADER,
            };
            let _ = lzma_rs::xz_decompress(&mut { reader }, &mut out);
            head[..out.bytes.len()].copy_from_slice(&out.bytes);
            out.bytes.len()
        }
    };
    // Raw: the first header only, not the long-name or PAX records it may announce.
    let mut archive = tar::Archive::new(&head[..n]);
    Ok(matches!(
        archive.entries().ok().and_then(|e| e.raw(true).next()),
        Some(Ok(_))
    ))
}

fn confine_rel(p: &str) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            c => out.push(c),
        }
    }
    Some(out.join("/"))
}

pub(crate) fn refuse_dir(host: &Path, guest: &str) -> Result<()> {
    match fs::symlink_metadata(host) {
        Ok(m) if m.is_dir() => Err(Error::Place {
            what: guest.to_owned(),
            reason: "cannot overwrite directory with non-directory".into(),
        }),
        _ => Ok(()),
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn tempfile_in(dir: &Path) -> Result<File> {
    let p = dir.join(format!(".fbxz.{}", std::process::id()));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&p)
        .map_err(Error::io("create", &p))?;
    fs::remove_file(&p).map_err(Error::io("remove", &p))?;
    Ok(f)
}

fn copy_file(src: &Path, dst: &Path, meta: &fs::Metadata) -> Result<()> {
    let tmp = dst.with_file_name(format!(
        ".{}.fbtmp.{}",
        dst.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    fs::copy(src, &tmp).map_err(Error::io("copy to", &tmp))?;
    set_mtime(&tmp, meta)?;
    fs::rename(&tmp, dst).map_err(Error::io("rename", dst))?;
    let _ = fs::remove_file(src);
    Ok(())
}

fn set_mtime(host: &Path, meta: &fs::Metadata) -> Result<()> {
    let t = UNIX_EPOCH + Duration::new(u64::try_from(meta.mtime()).unwrap_or(0), 0);
    let f = File::open(host).map_err(Error::io("open", host))?;
    f.set_times(FileTimes::new().set_modified(t))
        .map_err(Error::io("set time of", host))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn symbolic_modes() {
        let s = |spec: &str, m: u32, d: bool| symbolic(spec, m, d).unwrap();
        assert_eq!(s("u+x", 0o644, false), 0o744);
        assert_eq!(s("go-w", 0o666, false), 0o644);
        assert_eq!(s("a=r", 0o777, false), 0o444);
        assert_eq!(s("+X", 0o644, false), 0o644);
        assert_eq!(s("+X", 0o644, true), 0o755);
        assert_eq!(s("u=rwx,g=rx,o=", 0o000, false), 0o750);
        assert_eq!(s("u+s", 0o755, false), 0o4755);
        assert!(symbolic("q+x", 0, false).is_none());
        assert!(symbolic("u", 0, false).is_none());
    }

    #[test]
    fn archive_paths_are_confined() {
        assert_eq!(confine_rel("/etc/passwd").as_deref(), Some("etc/passwd"));
        assert_eq!(confine_rel("./a/../b").as_deref(), Some("b"));
        assert_eq!(confine_rel("../x"), None);
        assert_eq!(confine_rel("a/../../x"), None);
    }
}
