//! `COPY --from=<stage|image>`: copying between two trees in the guest.
//!
//! The source stage's (or image's) file system is mounted read-only at `src_root`; the image
//! being built is `dst_root`. [`copy`] resolves each source pattern inside `src_root` and
//! copies what matched into `dst_root` with buildkit's rules for a copy from another state
//! (`llb.Copy` carried out by `fsutil/copy`):
//!
//! - Source paths are relative to the source root; symlinks in them are followed but confined to
//!   it ([`crate::paths::resolve`]). Globs (`*`, `?`, `[...]`, `\` escapes, as Go's
//!   `filepath.Match`) may appear in any component; a pattern that matches nothing is an error.
//! - A directory source copies its **contents** into the destination (created if missing); a
//!   file goes to the destination, or under it by its base name when the destination ends in
//!   `/` or is an existing directory. Several matches need a directory destination.
//! - Metadata is kept (buildkit keeps uid/gid for a copy from a stage, unlike a copy from the
//!   context): owner unless `--chown` (resolved in the destination's `/etc/passwd`), mode with
//!   setuid/setgid/sticky unless `--chmod`, xattrs (including `security.capability`, set after
//!   the `lchown` that would clear it), access and modification times (a directory's after its
//!   children). Symlinks are copied as links, hard links inside the copy stay hard links, device
//!   nodes are recreated with `mknod`; FIFOs and sockets are skipped, as BuildKit skips them.
//! - The destination is confined like [`crate::place::Placer`]'s: every directory is resolved
//!   with [`crate::paths::resolve`] and every leaf with [`crate::paths::resolve_nofollow`], so a
//!   symlink already in the image cannot redirect a write outside `dst_root`. Directories merge
//!   into existing ones (which take the source's metadata, except the destination directory
//!   itself when it exists); files replace files; a directory never replaces a non-directory nor
//!   the reverse.
//! - `--exclude` patterns are matched against the path relative to the directory being copied
//!   (for a matched file: its name), `**` matching any number of components; an excluded
//!   directory is skipped whole. `--parents` is refused.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use firebuild_plan::{Chmod, Source, Transfer};
use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps, XattrFlags};

use crate::error::{Error, Result};
use crate::passwd::UserDb;
use crate::paths;
use crate::place::{MAX_TREE_DEPTH, apply_chmod, refuse_dir, resolve_owner};

/// Most matches one source pattern may expand to.
pub const MAX_MATCHES: usize = 100_000;
/// Largest xattr list or value copied (the kernel's own limit, `XATTR_LIST_MAX`).
const MAX_XATTR: usize = 64 * 1024;

/// Copies the sources of a `COPY --from` transfer from the tree at `src_root` into the tree at
/// `dst_root` (see the [module docs](self) for the rules).
pub fn copy(src_root: &Path, dst_root: &Path, t: &Transfer) -> Result<()> {
    if t.parents {
        return Err(place(&t.dest, "--parents is not supported with --from"));
    }
    if t.sources.len() > 1 && !t.dest.ends_with('/') {
        return Err(several_need_dir(&t.dest));
    }
    let owner = match &t.chown {
        // As `Placer::new`: `--chown` names are looked up in the image being built.
        Some(c) => Some(resolve_owner(&UserDb::load(dst_root)?, Some(c))?),
        None => None,
    };
    let excludes = t
        .exclude
        .iter()
        .map(|p| {
            if p.starts_with('!') {
                Err(place(p, "negated --exclude patterns are not supported"))
            } else {
                Ok(split(p).map(str::to_owned).collect::<Vec<_>>())
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let mut matches = Vec::new();
    for s in &t.sources {
        let Source::Path { pattern, .. } = s else {
            return Err(place(
                &t.dest,
                "only paths can be copied from a stage or image",
            ));
        };
        let found = expand(src_root, pattern)?;
        if found.is_empty() {
            return Err(place(pattern, "no such file or directory in the source"));
        }
        matches.extend(found);
    }
    let dest = paths::normalize(&t.dest);
    let dest_is_dir = t.dest.ends_with('/') || paths::resolve(dst_root, &dest)?.is_dir();
    if matches.len() > 1 && !dest_is_dir {
        return Err(several_need_dir(&t.dest));
    }
    let mut copier = Copier {
        dst_root,
        owner,
        // Missing parents of the destination: 0755, owned by `--chown`'s owner or root
        // (buildkit's `CreateDestPath`).
        parent_owner: owner.unwrap_or((0, 0)),
        chmod: t.chmod.as_ref(),
        excludes,
        links: HashMap::new(),
    };
    for m in &matches {
        copier.copy_match(m, &dest, dest_is_dir)?;
    }
    Ok(())
}

fn place(what: &str, reason: &str) -> Error {
    Error::Place {
        what: what.to_owned(),
        reason: reason.to_owned(),
    }
}

fn several_need_dir(dest: &str) -> Error {
    place(
        dest,
        "when using COPY with more than one source, the destination must be a directory and end \
         with a /",
    )
}

/// The non-empty components of a `/`-separated path other than `.`.
fn split(p: &str) -> impl Iterator<Item = &str> {
    p.split('/').filter(|c| !c.is_empty() && *c != ".")
}

/// One path a source pattern matched.
#[derive(Debug)]
struct Match {
    /// Host path of the match, symlinks followed inside the source root.
    host: PathBuf,
    /// Its name as the pattern reached it (the link's name, not its target's).
    name: String,
}

/// Expands `pattern` inside `src_root`: globs in any component, in sorted order; literal paths
/// that do not exist yield nothing.
fn expand(src_root: &Path, pattern: &str) -> Result<Vec<Match>> {
    let norm = paths::normalize(pattern);
    let comps: Vec<&str> = split(&norm).collect();
    if comps.len() > paths::MAX_DEPTH {
        return Err(place(pattern, "too many components"));
    }
    let globbed = comps.iter().any(|c| is_glob(c));
    let mut found: Vec<String> = vec![String::new()];
    for comp in &comps {
        let mut next = Vec::new();
        for prefix in &found {
            if !is_glob(comp) {
                next.push(format!("{prefix}/{comp}"));
                continue;
            }
            let glob = Glob::new(comp);
            let dir = match paths::resolve(src_root, or_root(prefix)) {
                Ok(d) => d,
                Err(Error::Resolve { .. }) => continue,
                Err(e) => return Err(e),
            };
            let Ok(rd) = fs::read_dir(&dir) else {
                continue; // not a directory, or missing: no match under it
            };
            let mut names = Vec::new();
            for e in rd {
                let e = e.map_err(Error::io("read directory", &dir))?;
                if let Some(n) = e.file_name().to_str().filter(|n| glob.matches(n)) {
                    names.push(n.to_owned());
                }
            }
            names.sort();
            next.extend(names.into_iter().map(|n| format!("{prefix}/{n}")));
            if next.len() > MAX_MATCHES {
                return Err(place(pattern, "matches too many files"));
            }
        }
        found = next;
    }
    let mut out = Vec::with_capacity(found.len());
    for guest in found {
        let host = match paths::resolve(src_root, or_root(&guest)) {
            Ok(h) => h,
            Err(Error::Resolve { .. }) if globbed => continue,
            Err(e) => return Err(e),
        };
        match fs::symlink_metadata(&host) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("stat", host)(e)),
        }
        let name = guest.rsplit('/').next().unwrap_or_default().to_owned();
        out.push(Match { host, name });
    }
    Ok(out)
}

fn or_root(guest: &str) -> &str {
    if guest.is_empty() { "/" } else { guest }
}

/// `guest_dir/name` for a normalised guest directory.
fn child(guest_dir: &str, name: &str) -> String {
    format!("{}/{name}", guest_dir.trim_end_matches('/'))
}

struct Copier<'a> {
    dst_root: &'a Path,
    /// `--chown` resolved; `None` keeps each source entry's owner.
    owner: Option<(u32, u32)>,
    parent_owner: (u32, u32),
    chmod: Option<&'a Chmod>,
    /// `--exclude` patterns, split into components.
    excludes: Vec<Vec<String>>,
    /// Source `(dev, ino)` of multiply-linked entries → where the first copy went.
    links: HashMap<(u64, u64), PathBuf>,
}

/// How [`Copier::apply_meta`] picks the mode.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ModeRule {
    /// `--chmod` if given, else the source's.
    Copied,
    /// Always the source's: the destination directory created to hold a directory's contents
    /// (as [`crate::place::Placer`]: Docker leaves it with the source directory's mode).
    Holder,
}

impl Copier<'_> {
    fn copy_match(&mut self, m: &Match, dest: &str, dest_is_dir: bool) -> Result<()> {
        let meta = fs::symlink_metadata(&m.host).map_err(Error::io("stat", &m.host))?;
        if meta.is_dir() {
            return self.copy_top_dir(&m.host, &meta, dest);
        }
        if !m.name.is_empty() && self.excluded(&m.name) {
            return Ok(());
        }
        let guest = if dest_is_dir {
            child(dest, &m.name)
        } else {
            dest.to_owned()
        };
        if let Some(parent) = Path::new(&guest).parent() {
            let (uid, gid) = self.parent_owner;
            paths::create_dirs(self.dst_root, &parent.to_string_lossy(), 0o755, uid, gid)?;
        }
        self.copy_leaf(&m.host, &meta, &guest)
    }

    /// A directory source: its contents merged into `dest`, which is created (with the source
    /// directory's metadata) when missing and otherwise left as it is (buildkit's
    /// `copyDirectory` with `overwriteTargetMetadata` false at the top).
    fn copy_top_dir(&mut self, src: &Path, meta: &fs::Metadata, dest: &str) -> Result<()> {
        let mut host = paths::resolve(self.dst_root, dest)?;
        let created = match fs::symlink_metadata(&host) {
            Ok(m) if m.is_dir() => false,
            Ok(_) => return Err(place(dest, "cannot overwrite non-directory with directory")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(parent) = Path::new(dest).parent() {
                    let (uid, gid) = self.parent_owner;
                    paths::create_dirs(self.dst_root, &parent.to_string_lossy(), 0o755, uid, gid)?;
                }
                host = paths::resolve(self.dst_root, dest)?;
                fs::create_dir(&host).map_err(Error::io("create directory", &host))?;
                true
            }
            Err(e) => return Err(Error::io("stat", host)(e)),
        };
        self.copy_children(src, dest, "", 0)?;
        if created {
            self.apply_meta(src, meta, &host, ModeRule::Holder)?;
        }
        Ok(())
    }

    /// Copies the entries of the source directory `src` into the guest directory `guest_dir`;
    /// `rel` is `src`'s path relative to the copied directory (for `--exclude`).
    fn copy_children(
        &mut self,
        src: &Path,
        guest_dir: &str,
        rel: &str,
        depth: usize,
    ) -> Result<()> {
        if depth > MAX_TREE_DEPTH {
            return Err(place(guest_dir, "directory tree too deep"));
        }
        let mut entries: Vec<_> = fs::read_dir(src)
            .map_err(Error::io("read directory", src))?
            .collect::<io::Result<_>>()
            .map_err(Error::io("read directory", src))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let from = e.path();
            let name = e.file_name();
            let Some(name) = name.to_str() else {
                return Err(Error::Place {
                    what: from.display().to_string(),
                    reason: "file name is not UTF-8".into(),
                });
            };
            let rel = if rel.is_empty() {
                name.to_owned()
            } else {
                format!("{rel}/{name}")
            };
            if self.excluded(&rel) {
                continue;
            }
            let guest = child(guest_dir, name);
            let meta = fs::symlink_metadata(&from).map_err(Error::io("stat", &from))?;
            if !meta.is_dir() {
                self.copy_leaf(&from, &meta, &guest)?;
                continue;
            }
            // Directories merge (symlinks on the way followed inside the root, like Placer).
            let host = paths::resolve(self.dst_root, &guest)?;
            match fs::symlink_metadata(&host) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(place(
                        &guest,
                        "cannot overwrite non-directory with directory",
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&host).map_err(Error::io("create directory", &host))?;
                }
                Err(e) => return Err(Error::io("stat", host)(e)),
            }
            self.copy_children(&from, &guest, &rel, depth + 1)?;
            // Existing subdirectories take the source's metadata too (`overwriteTargetMetadata`
            // for everything below the top), after their children so the time sticks.
            self.apply_meta(&from, &meta, &host, ModeRule::Copied)?;
        }
        Ok(())
    }

    /// Copies one non-directory entry to the guest path `guest` (replacing a non-directory).
    fn copy_leaf(&mut self, src: &Path, meta: &fs::Metadata, guest: &str) -> Result<()> {
        let host = paths::resolve_nofollow(self.dst_root, guest)?;
        refuse_dir(&host, guest)?;
        match fs::remove_file(&host) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove", &host)(e)),
        }
        let key = (meta.dev(), meta.ino());
        if meta.nlink() > 1
            && let Some(first) = self.links.get(&key)
        {
            // A hard link within the copied tree stays one (buildkit's hardlink tracking).
            return fs::hard_link(first, &host).map_err(Error::io("create hard link", &host));
        }
        let ft = meta.file_type();
        if ft.is_file() {
            let mut from = File::open(src).map_err(Error::io("open", src))?;
            let mut to = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&host)
                .map_err(Error::io("create", &host))?;
            io::copy(&mut from, &mut to).map_err(Error::io("copy to", &host))?;
        } else if ft.is_symlink() {
            let target = fs::read_link(src).map_err(Error::io("read link", src))?;
            std::os::unix::fs::symlink(&target, &host).map_err(Error::io("create link", &host))?;
        } else if ft.is_fifo() || ft.is_socket() {
            // BuildKit's copier (fsutil `copy.go`) has no case for pipes and sockets: its
            // `default:` arm wraps a nil error, so they are skipped without a word. Same here.
            tracing::debug!(path = %src.display(), "fifo or socket not copied (as BuildKit)");
            return Ok(());
        } else if ft.is_char_device() || ft.is_block_device() {
            rustix::fs::mknodat(
                CWD,
                &host,
                FileType::from_raw_mode(meta.mode()),
                Mode::from_raw_mode(meta.mode() & 0o777),
                meta.rdev(),
            )
            .map_err(|e| Error::io("create node", &host)(e.into()))?;
        } else {
            return Err(Error::Place {
                what: src.display().to_string(),
                reason: "unsupported file type".into(),
            });
        }
        self.apply_meta(src, meta, &host, ModeRule::Copied)?;
        if meta.nlink() > 1 {
            self.links.insert(key, host);
        }
        Ok(())
    }

    /// Owner, mode, xattrs, times, in that order: `lchown` clears setuid/setgid and
    /// `security.capability`, so the mode and the xattrs come after it (buildkit's
    /// `copyFileInfo` then `copyXAttrs`).
    fn apply_meta(
        &self,
        src: &Path,
        meta: &fs::Metadata,
        host: &Path,
        rule: ModeRule,
    ) -> Result<()> {
        let (uid, gid) = self.owner.unwrap_or((meta.uid(), meta.gid()));
        paths::chown(host, uid, gid)?;
        let is_link = meta.file_type().is_symlink();
        if !is_link {
            let mode = match (self.chmod, rule) {
                (Some(c), ModeRule::Copied) => apply_chmod(c, meta.mode(), meta.is_dir())?,
                _ => meta.mode() & 0o7777,
            };
            fs::set_permissions(host, Permissions::from_mode(mode))
                .map_err(Error::io("chmod", host))?;
        }
        copy_xattrs(src, host, is_link)?;
        let ts = |s: i64, ns: i64| Timespec {
            tv_sec: s,
            tv_nsec: ns,
        };
        let times = Timestamps {
            last_access: ts(meta.atime(), meta.atime_nsec()),
            last_modification: ts(meta.mtime(), meta.mtime_nsec()),
        };
        rustix::fs::utimensat(CWD, host, &times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| Error::io("set time of", host)(e.into()))
    }

    fn excluded(&self, rel: &str) -> bool {
        let path: Vec<&str> = split(rel).collect();
        self.excludes.iter().any(|p| match_path(p, &path))
    }
}

/// Copies every extended attribute of `src` to `dst` (both unfollowed). A destination file
/// system without xattrs, or one refusing `user.*` on a symlink, is not an error.
fn copy_xattrs(src: &Path, dst: &Path, is_link: bool) -> Result<()> {
    let tolerated = |e: rustix::io::Errno| {
        e == rustix::io::Errno::OPNOTSUPP || (is_link && e == rustix::io::Errno::PERM)
    };
    let size = match rustix::fs::llistxattr_query(src) {
        Ok(0) => return Ok(()),
        Ok(n) => n.min(MAX_XATTR),
        Err(e) if tolerated(e) => return Ok(()),
        Err(e) => return Err(Error::io("list xattrs of", src)(e.into())),
    };
    let mut list = vec![0u8; size];
    let n = rustix::fs::llistxattr(src, &mut list[..])
        .map_err(|e| Error::io("list xattrs of", src)(e.into()))?;
    let mut value = vec![0u8; MAX_XATTR];
    for name in list[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = std::ffi::OsStr::from_bytes(name);
        let len = rustix::fs::lgetxattr(src, name, &mut value[..])
            .map_err(|e| Error::io("read xattr of", src)(e.into()))?;
        match rustix::fs::lsetxattr(dst, name, &value[..len], XattrFlags::empty()) {
            Ok(()) => {}
            Err(e) if tolerated(e) => {
                tracing::debug!(path = %dst.display(), name = ?name, "xattr not supported here");
            }
            Err(e) => return Err(Error::io("set xattr of", dst)(e.into())),
        }
    }
    Ok(())
}

/// Whether a `.dockerignore`-style pattern (components, `**` for any number of them) matches
/// the whole of `path`.
fn match_path(pat: &[String], path: &[&str]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((p, rest)) if p == "**" => {
            (0..=path.len()).any(|skip| match_path(rest, &path[skip..]))
        }
        Some((p, rest)) => match path.split_first() {
            Some((c, tail)) => Glob::new(p).matches(c) && match_path(rest, tail),
            None => false,
        },
    }
}

fn is_glob(component: &str) -> bool {
    component.contains(['*', '?', '['])
}

/// One pattern component, Go `filepath.Match` style: `*`, `?`, `[abc]`, `[a-z]`, `[!x]` /
/// `[^x]`, `\` escaping the next character. An unterminated `[` matches itself.
#[derive(Debug)]
struct Glob(Vec<Tok>);

#[derive(Debug)]
enum Tok {
    Star,
    Any,
    Lit(char),
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Glob {
    fn new(p: &str) -> Self {
        let chars: Vec<char> = p.chars().collect();
        let mut toks = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '*' => {
                    if !matches!(toks.last(), Some(Tok::Star)) {
                        toks.push(Tok::Star);
                    }
                }
                '?' => toks.push(Tok::Any),
                '\\' if i + 1 < chars.len() => {
                    i += 1;
                    toks.push(Tok::Lit(chars[i]));
                }
                '[' => match class(&chars[i + 1..]) {
                    Some((tok, used)) => {
                        toks.push(tok);
                        i += used;
                    }
                    None => toks.push(Tok::Lit('[')),
                },
                c => toks.push(Tok::Lit(c)),
            }
            i += 1;
        }
        Glob(toks)
    }

    /// Iterative matching with backtracking to the last `*` only: linear in practice, never
    /// exponential.
    fn matches(&self, name: &str) -> bool {
        let n: Vec<char> = name.chars().collect();
        let (mut p, mut i) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while i < n.len() {
            let one = |t: &Tok| match t {
                Tok::Any => true,
                Tok::Lit(c) => *c == n[i],
                Tok::Class { negated, ranges } => {
                    ranges.iter().any(|&(a, b)| a <= n[i] && n[i] <= b) != *negated
                }
                Tok::Star => false,
            };
            match self.0.get(p) {
                Some(Tok::Star) => {
                    star = Some((p, i));
                    p += 1;
                }
                Some(t) if one(t) => {
                    p += 1;
                    i += 1;
                }
                _ => match star {
                    Some((sp, si)) => {
                        star = Some((sp, si + 1));
                        p = sp + 1;
                        i = si + 1;
                    }
                    None => return false,
                },
            }
        }
        self.0[p..].iter().all(|t| matches!(t, Tok::Star))
    }
}

/// Parses a class after its `[`: the token and how many characters it used including `]`.
fn class(c: &[char]) -> Option<(Tok, usize)> {
    let mut i = 0;
    let negated = matches!(c.first(), Some('!' | '^'));
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let mut lo = *c.get(i)?;
        if lo == ']' && !first {
            return Some((Tok::Class { negated, ranges }, i + 1));
        }
        first = false;
        if lo == '\\' {
            i += 1;
            lo = *c.get(i)?;
        }
        i += 1;
        let mut hi = lo;
        if c.get(i) == Some(&'-') && c.get(i + 1).is_some_and(|&h| h != ']') {
            hi = c[i + 1];
            i += 2;
            if hi == '\\' {
                hi = *c.get(i)?;
                i += 1;
            }
        }
        ranges.push((lo, hi));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn globs_match_like_go_filepath_match() {
        let m = |p: &str, n: &str| Glob::new(p).matches(n);
        assert!(m("*.so", "libc.so"));
        assert!(m("*.so", ".so"));
        assert!(!m("*.so", "libc.so.6"));
        assert!(m("lib?.a", "libx.a"));
        assert!(!m("lib?.a", "lib.a"));
        assert!(m("[a-c]x", "bx"));
        assert!(!m("[!a-c]x", "bx"));
        assert!(m("[^a-c]x", "dx"));
        assert!(m("[]]", "]"));
        assert!(m("\\*", "*"));
        assert!(!m("\\*", "a"));
        assert!(m("[ab", "[ab"));
        assert!(m("*a*b*c*", "xxaxxbxxcxx"));
        assert!(!m("*a*a*a*a*a*a*b", &"a".repeat(200)));
    }

    #[test]
    fn exclude_paths_match_by_component() {
        let p = |s: &str| split(s).map(str::to_owned).collect::<Vec<_>>();
        fn path(s: &str) -> Vec<&str> {
            split(s).collect()
        }
        assert!(match_path(&p("*.txt"), &path("a.txt")));
        assert!(!match_path(&p("*.txt"), &path("d/a.txt")));
        assert!(match_path(&p("**/*.txt"), &path("d/e/a.txt")));
        assert!(match_path(&p("**/*.txt"), &path("a.txt")));
        assert!(match_path(&p("d/**"), &path("d/x/y")));
        assert!(!match_path(&p("d"), &path("e")));
    }
}
