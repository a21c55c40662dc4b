//! The build context: resolving COPY/ADD sources to concrete files, confined to the context.
//!
//! [`BuildContext`] answers "what does this source pattern name?" for one context directory:
//! it normalises the pattern, expands Go-style globs component by component, follows symlinks
//! only while they stay inside the context, drops what `.dockerignore` (and a step's
//! `--exclude`) leaves out, and walks directory sources into one [`Entry`] per file, link and
//! directory. Anything that would leave the context (`..` past the root, an absolute path, a
//! symlink pointing outside) is an error, and so is a source that matches nothing.
//!
//! It also holds the small path helpers the resolver needs: [`clean_path`] (Go's `path.Clean`),
//! [`join_workdir`], [`normalize_workdir`] and [`archive_kind`] (tar/compressed-archive detection by magic bytes).
//!
//! The context directory is read-only input: nothing here writes, spawns or touches the
//! network.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use firebuild_plan::ResourceKind;

/// Most entries a single source may expand to (a bound on untrusted input).
pub const MAX_ENTRIES: usize = 1_000_000;
/// Deepest directory nesting walked under a source.
pub const MAX_DEPTH: usize = 256;
/// Most symlinks followed while resolving one path (Linux's `ELOOP` limit).
pub const MAX_SYMLINKS: usize = 40;

/// Why a source could not be resolved in the context.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContextError {
    /// An absolute source path: sources are relative to the context.
    #[error("source path {path:?} is absolute: sources must be relative to the build context")]
    Absolute {
        /// The source as written.
        path: String,
    },
    /// A source whose `..` components climb above the context root.
    #[error("source path {path:?} points outside the build context")]
    OutsideContext {
        /// The source as written.
        path: String,
    },
    /// A symlink on the way to (or at) a source points outside the context.
    #[error("symlink {link:?} (for source {path:?}) points outside the build context")]
    SymlinkOutside {
        /// The source as written.
        path: String,
        /// The offending link, relative to the context.
        link: String,
    },
    /// Too many symlinks while resolving a source.
    #[error("too many levels of symbolic links resolving source {path:?}")]
    SymlinkLoop {
        /// The source as written.
        path: String,
    },
    /// Nothing in the context matches the source (or all matches are ignored).
    #[error("source {path:?} not found in the build context")]
    NotFound {
        /// The source as written.
        path: String,
    },
    /// A glob pattern that does not parse (`[` without `]`).
    #[error("bad pattern {pattern:?} in source")]
    BadPattern {
        /// The pattern.
        pattern: String,
    },
    /// A source expanded past [`MAX_ENTRIES`] or [`MAX_DEPTH`].
    #[error("source {path:?} expands to too many entries or nests too deep")]
    TooLarge {
        /// The source as written.
        path: String,
    },
    /// Reading the context failed.
    #[error("cannot read {path}")]
    Io {
        /// The path that could not be read.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Decides which context paths are left out: `.dockerignore` or a step's `--exclude`.
pub trait PathFilter {
    /// Whether `rel` (relative to the filter's root, `/`-separated, no leading `/`) is excluded.
    fn excluded(&self, rel: &str) -> bool;

    /// Whether a path under an excluded directory can be included again (`!pattern`). When
    /// not, an excluded directory is not walked at all.
    fn has_exceptions(&self) -> bool {
        true
    }
}

/// A filter that excludes nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoFilter;

impl PathFilter for NoFilter {
    fn excluded(&self, _rel: &str) -> bool {
        false
    }

    fn has_exceptions(&self) -> bool {
        false
    }
}

/// Glob matching of one path component (Go `path.Match` semantics).
pub trait ComponentMatcher {
    /// Whether `name` matches `pattern`; `Err(())` when the pattern is malformed.
    #[allow(clippy::result_unit_err)]
    fn matches(&self, pattern: &str, name: &str) -> Result<bool, ()>;
}

/// One concrete thing a source resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The path as matched (relative to the context, normalised): what decides target names.
    pub matched: String,
    /// Where the content really is, relative to the context, after following symlinks that
    /// stay inside it (equals `matched` when no symlink was followed).
    pub path: String,
    /// File, directory or symlink (a followed symlink reports its target's kind).
    pub kind: ResourceKind,
    /// For entries found by walking a directory source: the path relative to that source
    /// (`None` for the top-level match itself).
    pub within: Option<String>,
}

/// A build context directory, with its `.dockerignore` filter.
pub struct BuildContext<'a> {
    root: PathBuf,
    ignore: &'a dyn PathFilter,
    glob: &'a dyn ComponentMatcher,
}

impl std::fmt::Debug for BuildContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildContext")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// `true` if the pattern has Go glob metacharacters.
pub fn has_glob_meta(s: &str) -> bool {
    s.contains(['*', '?', '[', '\\'])
}

/// Go's `path.Clean` for `/`-separated paths: collapses `//`, `.` and `..`, no trailing `/`
/// (except the root); `""` becomes `"."`.
pub fn clean_path(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for comp in p.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|last| *last != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

/// `WORKDIR` semantics: an absolute `dir` replaces `current`, a relative one is joined to it;
/// the result is cleaned and absolute.
pub fn join_workdir(current: &str, dir: &str) -> String {
    if dir.starts_with('/') {
        clean_path(dir)
    } else {
        clean_path(&format!(
            "{}/{dir}",
            if current.is_empty() { "/" } else { current }
        ))
    }
}

/// The working directory after `WORKDIR requested`, as buildkit's `normalizeWorkdirUnix` makes it:
/// a relative path is joined to `current` and cleaned, an absolute one is kept as written (the
/// image config shows `/a/b/../c` if that is what the Dockerfile says; the guest cleans it when
/// it makes or enters the directory).
pub fn normalize_workdir(current: &str, requested: &str) -> String {
    if requested.starts_with('/') {
        requested.to_owned()
    } else {
        join_workdir(current, requested)
    }
}

/// An archive format ADD extracts, recognised by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    /// Uncompressed tar (`ustar` magic at offset 257).
    Tar,
    /// gzip (`1f 8b`).
    Gzip,
    /// bzip2 (`BZh`).
    Bzip2,
    /// xz (`fd 37 7a 58 5a 00`).
    Xz,
    /// zstd (`28 b5 2f fd`).
    Zstd,
}

/// Recognises an archive from the first bytes of a file (at least 262 for tar). Compressed
/// formats are reported as archives without decompressing: ADD extracts them.
pub fn archive_kind(head: &[u8]) -> Option<ArchiveKind> {
    if head.starts_with(&[0x1f, 0x8b]) {
        Some(ArchiveKind::Gzip)
    } else if head.starts_with(b"BZh") {
        Some(ArchiveKind::Bzip2)
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Some(ArchiveKind::Xz)
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some(ArchiveKind::Zstd)
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        Some(ArchiveKind::Tar)
    } else {
        None
    }
}

/// Normalises a source as written into components relative to the context root.
fn source_components(pattern: &str) -> Result<Vec<String>, ContextError> {
    if pattern.starts_with('/') {
        return Err(ContextError::Absolute {
            path: pattern.to_owned(),
        });
    }
    let mut parts: Vec<String> = Vec::new();
    for comp in pattern.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(ContextError::OutsideContext {
                        path: pattern.to_owned(),
                    });
                }
            }
            other => parts.push(other.to_owned()),
        }
    }
    Ok(parts)
}

fn io_err(path: &Path, source: std::io::Error) -> ContextError {
    ContextError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn kind_of(ft: fs::FileType) -> ResourceKind {
    if ft.is_dir() {
        ResourceKind::Dir
    } else if ft.is_symlink() {
        ResourceKind::Symlink
    } else {
        ResourceKind::File
    }
}

impl<'a> BuildContext<'a> {
    /// A context rooted at `root` (which must exist and be a directory).
    pub fn new(
        root: &Path,
        ignore: &'a dyn PathFilter,
        glob: &'a dyn ComponentMatcher,
    ) -> Result<Self, ContextError> {
        let root = fs::canonicalize(root).map_err(|e| io_err(root, e))?;
        let meta = fs::metadata(&root).map_err(|e| io_err(&root, e))?;
        if !meta.is_dir() {
            return Err(io_err(
                &root,
                std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
            ));
        }
        Ok(Self { root, ignore, glob })
    }

    /// A context whose `root` the caller already canonicalised and checked to be a directory
    /// (as [`BuildContext::new`] does): saves the system calls when many sources are resolved.
    pub fn with_canonical_root(
        root: PathBuf,
        ignore: &'a dyn PathFilter,
        glob: &'a dyn ComponentMatcher,
    ) -> Self {
        Self { root, ignore, glob }
    }

    /// The canonical context root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads up to `n` bytes from the start of a context file (for archive detection).
    pub fn read_head(&self, rel: &str, n: usize) -> Result<Vec<u8>, ContextError> {
        let full = self.root.join(rel);
        let file = fs::File::open(&full).map_err(|e| io_err(&full, e))?;
        let mut buf = Vec::with_capacity(n);
        file.take(n as u64)
            .read_to_end(&mut buf)
            .map_err(|e| io_err(&full, e))?;
        Ok(buf)
    }

    /// Resolves one source pattern: the top-level matches, sorted, each followed by the
    /// entries found walking it when it is a directory. `exclude` (a step's `--exclude`) is
    /// applied to top-level matches by their context path and to walked entries by their path
    /// relative to the directory source.
    pub fn resolve(
        &self,
        pattern: &str,
        exclude: &dyn PathFilter,
    ) -> Result<Vec<Entry>, ContextError> {
        let comps = source_components(pattern)?;
        let mut matches = self.expand(pattern, &comps)?;
        matches.sort();
        matches.dedup();
        let mut out = Vec::new();
        for matched in matches {
            if !matched.is_empty() && (self.ignore.excluded(&matched) || exclude.excluded(&matched))
            {
                continue;
            }
            let (path, kind) = self.follow(pattern, &matched)?;
            if !path.is_empty() && path != matched && self.ignore.excluded(&path) {
                // The link points at something .dockerignore keeps out of the context.
                continue;
            }
            out.push(Entry {
                matched: matched.clone(),
                path: path.clone(),
                kind,
                within: None,
            });
            if kind == ResourceKind::Dir {
                self.walk(pattern, &path, "", 0, exclude, &mut out)?;
            }
            if out.len() > MAX_ENTRIES {
                return Err(ContextError::TooLarge {
                    path: pattern.to_owned(),
                });
            }
        }
        if out.is_empty() {
            return Err(ContextError::NotFound {
                path: pattern.to_owned(),
            });
        }
        Ok(out)
    }

    /// Expands glob components into the list of existing matched paths (not yet filtered).
    fn expand(&self, pattern: &str, comps: &[String]) -> Result<Vec<String>, ContextError> {
        let mut current: Vec<String> = vec![String::new()];
        for comp in comps {
            let mut next = Vec::new();
            if !has_glob_meta(comp) {
                for base in &current {
                    next.push(join_rel(base, comp));
                }
            } else {
                for base in &current {
                    // List the directory `base` (following in-context symlinks to get there).
                    let Ok((dir, kind)) = self.follow(pattern, base) else {
                        continue;
                    };
                    if kind != ResourceKind::Dir {
                        continue;
                    }
                    let full = self.root.join(&dir);
                    let rd = match fs::read_dir(&full) {
                        Ok(rd) => rd,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(io_err(&full, e)),
                    };
                    let mut names = Vec::new();
                    for ent in rd {
                        let ent = ent.map_err(|e| io_err(&full, e))?;
                        names.push(ent.file_name().to_string_lossy().into_owned());
                    }
                    names.sort();
                    for name in names {
                        match self.glob.matches(comp, &name) {
                            Ok(true) => next.push(join_rel(base, &name)),
                            Ok(false) => {}
                            Err(()) => {
                                return Err(ContextError::BadPattern {
                                    pattern: pattern.to_owned(),
                                });
                            }
                        }
                        if next.len() > MAX_ENTRIES {
                            return Err(ContextError::TooLarge {
                                path: pattern.to_owned(),
                            });
                        }
                    }
                }
            }
            current = next;
        }
        // Literal paths must exist (without following a final symlink; `follow` checks it).
        let mut out = Vec::new();
        for rel in current {
            match self.follow(pattern, &rel) {
                Ok(_) => out.push(rel),
                Err(ContextError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Follows `rel` component by component, resolving symlinks inside the context. Returns
    /// the resolved relative path and its kind.
    fn follow(&self, pattern: &str, rel: &str) -> Result<(String, ResourceKind), ContextError> {
        let mut todo: Vec<String> = rel
            .split('/')
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .rev()
            .collect();
        let mut resolved: Vec<String> = Vec::new();
        let mut hops = 0usize;
        let mut kind = ResourceKind::Dir;
        while let Some(comp) = todo.pop() {
            match comp.as_str() {
                "." => continue,
                ".." => {
                    if resolved.pop().is_none() {
                        return Err(ContextError::OutsideContext {
                            path: pattern.to_owned(),
                        });
                    }
                    kind = ResourceKind::Dir;
                    continue;
                }
                _ => {}
            }
            let mut here = resolved.clone();
            here.push(comp.clone());
            let full = self.root.join(here.join("/"));
            let meta = match fs::symlink_metadata(&full) {
                Ok(m) => m,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                    ) =>
                {
                    return Err(ContextError::NotFound {
                        path: pattern.to_owned(),
                    });
                }
                Err(e) => return Err(io_err(&full, e)),
            };
            if meta.file_type().is_symlink() {
                hops += 1;
                if hops > MAX_SYMLINKS {
                    return Err(ContextError::SymlinkLoop {
                        path: pattern.to_owned(),
                    });
                }
                let target = fs::read_link(&full).map_err(|e| io_err(&full, e))?;
                let target = target.to_string_lossy().into_owned();
                let link = here.join("/");
                let outside = || ContextError::SymlinkOutside {
                    path: pattern.to_owned(),
                    link: link.clone(),
                };
                if let Some(abs) = target.strip_prefix('/') {
                    // Absolute targets are allowed only when they land inside the context.
                    let root = self.root.to_string_lossy();
                    let root_rel = root.trim_start_matches('/');
                    let cleaned = clean_path(&format!("/{abs}"));
                    let inside = cleaned
                        .trim_start_matches('/')
                        .strip_prefix(root_rel)
                        .filter(|rest| rest.is_empty() || rest.starts_with('/'));
                    let Some(rest) = inside else {
                        return Err(outside());
                    };
                    resolved.clear();
                    for c in rest.split('/').rev().filter(|c| !c.is_empty()) {
                        todo.push(c.to_owned());
                    }
                } else {
                    // Relative to the link's directory; `..` past the root is outside.
                    let mut depth = resolved.len() as isize;
                    for c in target.split('/') {
                        match c {
                            "" | "." => {}
                            ".." => depth -= 1,
                            _ => depth += 1,
                        }
                        if depth < 0 {
                            return Err(outside());
                        }
                    }
                    for c in target.split('/').rev().filter(|c| !c.is_empty()) {
                        todo.push(c.to_owned());
                    }
                }
                kind = ResourceKind::Dir;
                continue;
            }
            kind = kind_of(meta.file_type());
            resolved.push(comp);
            if kind != ResourceKind::Dir && !todo.is_empty() {
                return Err(ContextError::NotFound {
                    path: pattern.to_owned(),
                });
            }
        }
        Ok((resolved.join("/"), kind))
    }

    /// Walks the directory `dir` (context-relative), appending every entry not ignored.
    fn walk(
        &self,
        pattern: &str,
        dir: &str,
        within: &str,
        depth: usize,
        exclude: &dyn PathFilter,
        out: &mut Vec<Entry>,
    ) -> Result<(), ContextError> {
        if depth >= MAX_DEPTH {
            return Err(ContextError::TooLarge {
                path: pattern.to_owned(),
            });
        }
        let full = self.root.join(dir);
        let rd = fs::read_dir(&full).map_err(|e| io_err(&full, e))?;
        let mut ents = Vec::new();
        for ent in rd {
            let ent = ent.map_err(|e| io_err(&full, e))?;
            let ft = ent.file_type().map_err(|e| io_err(&ent.path(), e))?;
            ents.push((ent.file_name().to_string_lossy().into_owned(), ft));
        }
        ents.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, ft) in ents {
            let path = join_rel(dir, &name);
            let rel = join_rel(within, &name);
            let kind = kind_of(ft);
            let by_ignore = self.ignore.excluded(&path);
            let by_exclude = exclude.excluded(&rel);
            let ignored = by_ignore || by_exclude;
            if !ignored {
                out.push(Entry {
                    matched: path.clone(),
                    path: path.clone(),
                    kind,
                    within: Some(rel.clone()),
                });
                if out.len() > MAX_ENTRIES {
                    return Err(ContextError::TooLarge {
                        path: pattern.to_owned(),
                    });
                }
            }
            // An ignored directory is still walked when a `!pattern` may re-include a child.
            let prune = (by_ignore && !self.ignore.has_exceptions())
                || (by_exclude && !exclude.has_exceptions());
            if kind == ResourceKind::Dir && !prune {
                self.walk(pattern, &path, &rel, depth + 1, exclude, out)?;
            }
        }
        Ok(())
    }
}

fn join_rel(base: &str, name: &str) -> String {
    if base.is_empty() {
        name.to_owned()
    } else {
        format!("{base}/{name}")
    }
}

/// Why a `--chmod` value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid --chmod value {value:?}: expected octal (0755) or symbolic (u+x,go-w)")]
pub struct ChmodError {
    /// The value as written.
    pub value: String,
}

/// Parses `--chmod`: octal up to `7777`, or symbolic clauses `[ugoa]*([-+=][rwxXst]*|[-+=][ugo])+`
/// separated by commas.
pub fn parse_chmod(value: &str) -> Result<firebuild_plan::Chmod, ChmodError> {
    let err = || ChmodError {
        value: value.to_owned(),
    };
    if value.is_empty() {
        return Err(err());
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        if value.len() > 5 || value.bytes().any(|b| b > b'7') {
            return Err(err());
        }
        let mode = u32::from_str_radix(value, 8).map_err(|_| err())?;
        if mode > 0o7777 {
            return Err(err());
        }
        return Ok(firebuild_plan::Chmod::Octal(mode));
    }
    for clause in value.split(',') {
        let bytes = clause.as_bytes();
        let mut i = 0;
        while i < bytes.len() && matches!(bytes[i], b'u' | b'g' | b'o' | b'a') {
            i += 1;
        }
        if i == bytes.len() {
            return Err(err());
        }
        while i < bytes.len() {
            if !matches!(bytes[i], b'+' | b'-' | b'=') {
                return Err(err());
            }
            i += 1;
            if i < bytes.len() && matches!(bytes[i], b'u' | b'g' | b'o') {
                i += 1;
                continue;
            }
            while i < bytes.len() && matches!(bytes[i], b'r' | b'w' | b'x' | b'X' | b's' | b't') {
                i += 1;
            }
        }
    }
    Ok(firebuild_plan::Chmod::Symbolic(value.to_owned()))
}

/// Why a `--chown` value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid --chown value {value:?}: expected user, user:group, uid or uid:gid")]
pub struct ChownError {
    /// The value as written.
    pub value: String,
}

/// Parses `--chown=user[:group]` (names or numeric ids; neither part may be empty).
pub fn parse_chown(value: &str) -> Result<firebuild_plan::Chown, ChownError> {
    let err = || ChownError {
        value: value.to_owned(),
    };
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= 256
            && !s
                .chars()
                .any(|c| c == ':' || c == '/' || c.is_whitespace() || c.is_control())
    };
    let (user, group) = match value.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (value, None),
    };
    if !valid(user) || group.is_some_and(|g| !valid(g)) {
        return Err(err());
    }
    Ok(firebuild_plan::Chown {
        user: user.to_owned(),
        group: group.map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use firebuild_plan::Chmod;

    /// A tiny glob for unit tests: `*` only.
    struct Star;
    impl ComponentMatcher for Star {
        fn matches(&self, pattern: &str, name: &str) -> Result<bool, ()> {
            if pattern.contains('[') && !pattern.contains(']') {
                return Err(());
            }
            Ok(match pattern.split_once('*') {
                Some((pre, post)) => {
                    name.len() >= pre.len() + post.len()
                        && name.starts_with(pre)
                        && name.ends_with(post)
                }
                None => pattern == name,
            })
        }
    }

    struct Prefix(&'static str);
    impl PathFilter for Prefix {
        fn excluded(&self, rel: &str) -> bool {
            rel == self.0 || rel.starts_with(&format!("{}/", self.0))
        }
    }

    fn ctx_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("src/sub")).unwrap();
        fs::write(root.join("src/a.rs"), "a").unwrap();
        fs::write(root.join("src/b.rs"), "b").unwrap();
        fs::write(root.join("src/sub/c.txt"), "c").unwrap();
        fs::write(root.join("top.txt"), "t").unwrap();
        dir
    }

    #[test]
    fn clean_path_matches_go() {
        assert_eq!(clean_path("/a/b/../c/./d/"), "/a/c/d");
        assert_eq!(clean_path("/../x"), "/x");
        assert_eq!(clean_path(""), ".");
        assert_eq!(clean_path("a/../.."), "..");
        assert_eq!(clean_path("//"), "/");
    }

    #[test]
    fn workdir_joins_relative_to_previous() {
        assert_eq!(join_workdir("/", "app"), "/app");
        assert_eq!(join_workdir("/app", "src/../lib"), "/app/lib");
        assert_eq!(join_workdir("/app", "/srv/"), "/srv");
        assert_eq!(join_workdir("/app", ".."), "/");
        assert_eq!(normalize_workdir("/app", "/a/b/../c/"), "/a/b/../c/");
        assert_eq!(normalize_workdir("/a/b/../c/", "d/../e"), "/a/c/e");
    }

    #[test]
    fn chmod_octal_and_symbolic() {
        assert_eq!(parse_chmod("0755"), Ok(Chmod::Octal(0o755)));
        assert_eq!(parse_chmod("644"), Ok(Chmod::Octal(0o644)));
        assert_eq!(parse_chmod("4755"), Ok(Chmod::Octal(0o4755)));
        assert!(parse_chmod("0789").is_err());
        assert!(parse_chmod("17777").is_err());
        assert_eq!(
            parse_chmod("u+x,go-w"),
            Ok(Chmod::Symbolic("u+x,go-w".into()))
        );
        assert!(parse_chmod("a=rX").is_ok());
        assert!(parse_chmod("g=u").is_ok());
        for bad in ["", "u", "u+q", "x+r", "u+x,", "+-k", "rwx"] {
            assert!(parse_chmod(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn chown_forms() {
        let c = parse_chown("app:staff").unwrap();
        assert_eq!(
            (c.user.as_str(), c.group.as_deref()),
            ("app", Some("staff"))
        );
        assert_eq!(parse_chown("1000").unwrap().group, None);
        for bad in ["", ":g", "u:", "a:b:c", "a b"] {
            assert!(parse_chown(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn archives_by_magic() {
        assert_eq!(archive_kind(&[0x1f, 0x8b, 8, 0]), Some(ArchiveKind::Gzip));
        assert_eq!(archive_kind(b"BZh91AY"), Some(ArchiveKind::Bzip2));
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        assert_eq!(archive_kind(&tar), Some(ArchiveKind::Tar));
        assert_eq!(archive_kind(b"plain text that is long enough"), None);
    }

    #[test]
    fn resolves_dirs_globs_and_ignores() {
        let dir = ctx_dir();
        let ignore = Prefix("src/sub");
        let ctx = BuildContext::new(dir.path(), &ignore, &Star).unwrap();
        let got = ctx.resolve("src", &NoFilter).unwrap();
        let paths: Vec<_> = got.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["src", "src/a.rs", "src/b.rs"]);
        let got = ctx.resolve("./src/*.rs", &NoFilter).unwrap();
        let paths: Vec<_> = got.iter().map(|e| e.matched.as_str()).collect();
        assert_eq!(paths, ["src/a.rs", "src/b.rs"]);
        assert!(matches!(
            ctx.resolve("src/sub/c.txt", &NoFilter),
            Err(ContextError::NotFound { .. })
        ));
        let got = ctx.resolve("src", &Prefix("a.rs")).unwrap();
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn confinement() {
        let dir = ctx_dir();
        let ctx = BuildContext::new(dir.path(), &NoFilter, &Star).unwrap();
        assert!(matches!(
            ctx.resolve("../etc/passwd", &NoFilter),
            Err(ContextError::OutsideContext { .. })
        ));
        assert!(matches!(
            ctx.resolve("/etc/passwd", &NoFilter),
            Err(ContextError::Absolute { .. })
        ));
        assert!(ctx.resolve("src/../top.txt", &NoFilter).is_ok());
        std::os::unix::fs::symlink("/etc", dir.path().join("etc")).unwrap();
        assert!(matches!(
            ctx.resolve("etc/passwd", &NoFilter),
            Err(ContextError::SymlinkOutside { .. })
        ));
        std::os::unix::fs::symlink("../../x", dir.path().join("src/up")).unwrap();
        assert!(matches!(
            ctx.resolve("src/up", &NoFilter),
            Err(ContextError::SymlinkOutside { .. })
        ));
        std::os::unix::fs::symlink("src/a.rs", dir.path().join("alias")).unwrap();
        let got = ctx.resolve("alias", &NoFilter).unwrap();
        assert_eq!(got[0].path, "src/a.rs");
        assert_eq!(got[0].matched, "alias");
        assert_eq!(got[0].kind, ResourceKind::File);
    }
}
