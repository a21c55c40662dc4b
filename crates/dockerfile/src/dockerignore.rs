//! `.dockerignore` reading and matching with the semantics of moby's `patternmatcher` and
//! `ignorefile.ReadAll`, plus a Go `filepath.Match`-compatible [`glob_match`].
//!
//! - [`IgnoreFile`] reads a `.dockerignore`: a UTF-8 byte-order mark is dropped, lines starting
//!   with `#` are comments, lines are trimmed, patterns are cleaned like Go's `filepath.Clean`
//!   and a leading `/` is removed; `!` marks an exception.
//! - [`PatternMatcher`] decides whether a context path is excluded: the last pattern that
//!   matches the path *or one of its parent directories* wins, `**` matches any number of
//!   directories, `.` is never excluded and no patterns exclude nothing.
//!
//! ```
//! use firebuild_dockerfile::dockerignore::IgnoreFile;
//!
//! let m = IgnoreFile::parse("# build output\n/target\n*.log\n!keep.log\n", ".dockerignore")
//!     .unwrap();
//! assert!(m.matches("target/debug/app"));
//! assert!(m.matches("err.log"));
//! assert!(!m.matches("keep.log"));
//! assert!(!m.matches("src/err.log")); // `*` does not cross `/`
//! assert!(IgnoreFile::parse("ok\n[\n", ".dockerignore").unwrap_err().to_string()
//!     .starts_with(".dockerignore:2: "));
//! ```
//!
//! Matching uses a small linear-time automaton instead of Go's regular expressions; the only
//! differences are in inputs Go itself treats oddly: an escaped letter (`\b`) is that letter
//! here (in Go a regexp escape), a `^` outside brackets is a literal character, and `*` or `?`
//! inside brackets are members of the class.

use std::borrow::Cow;
use std::fmt;

/// A malformed pattern, in a `.dockerignore` or given to [`glob_match`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    /// A pattern that is only `!`.
    #[error("{}illegal exclusion pattern \"!\"", Location(.file, .line))]
    LoneExclusion {
        /// The ignore file, when the pattern came from one.
        file: Option<String>,
        /// The 1-based line in that file.
        line: Option<usize>,
    },
    /// A pattern `filepath.Match` rejects: an unclosed or empty `[...]`, a bad range, a
    /// trailing `\`.
    #[error("{}syntax error in pattern {pattern:?} at offset {offset}: {reason}", Location(.file, .line))]
    Malformed {
        /// The ignore file, when the pattern came from one.
        file: Option<String>,
        /// The 1-based line in that file.
        line: Option<usize>,
        /// The pattern (cleaned, without its `!`).
        pattern: String,
        /// Byte offset of the problem in `pattern`.
        offset: usize,
        /// What is wrong.
        reason: &'static str,
    },
}

struct Location<'a>(&'a Option<String>, &'a Option<usize>);

impl fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0, self.1) {
            (Some(file), Some(line)) => write!(f, "{file}:{line}: "),
            (Some(file), None) => write!(f, "{file}: "),
            (None, Some(line)) => write!(f, "line {line}: "),
            (None, None) => Ok(()),
        }
    }
}

/// Go's `filepath.Clean` for `/`-separated paths: collapses `//`, removes `.` elements and
/// resolves `..` lexically; an empty result is `.`.
pub fn clean_path(path: &str) -> String {
    clean(path).into_owned()
}

/// [`clean_path`] without allocating when `path` is already clean.
fn clean(path: &str) -> Cow<'_, str> {
    if is_clean(path) {
        return Cow::Borrowed(path);
    }
    if path.is_empty() {
        return Cow::Borrowed(".");
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&last) if last != ".." => {
                    parts.pop();
                }
                _ if rooted => {}
                _ => parts.push(".."),
            },
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    Cow::Owned(match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    })
}

/// Whether `clean_path` would return `path` unchanged (checked without allocating).
fn is_clean(path: &str) -> bool {
    if path == "/" {
        return true;
    }
    let body = path.strip_prefix('/').unwrap_or(path);
    !body.is_empty() && body.split('/').all(|seg| !matches!(seg, "" | "." | ".."))
}

/// Go's `filepath.Dir`.
fn dir(path: &str) -> Cow<'_, str> {
    match path.rfind('/') {
        None => Cow::Borrowed("."),
        Some(0) => Cow::Borrowed("/"),
        Some(i) => clean(path.get(..i).unwrap_or("")),
    }
}

/// A bracket expression.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Class {
    negated: bool,
    ranges: Vec<(char, char)>,
}

impl Class {
    fn matches(&self, c: char) -> bool {
        self.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != self.negated
    }
}

/// What one automaton step accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Matcher {
    Lit(char),
    NotSlash,
    Any,
    Class(Class),
}

impl Matcher {
    fn accepts(&self, c: char) -> bool {
        match self {
            Matcher::Lit(l) => *l == c,
            Matcher::NotSlash => c != '/',
            Matcher::Any => true,
            Matcher::Class(class) => class.matches(c),
        }
    }
}

/// An automaton state; edges only go forward (or loop), so one forward pass computes the
/// epsilon closure.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    /// Consumes one accepted character, then goes on.
    One(Matcher),
    /// Consumes any number of accepted characters (`*`, trailing `**`).
    Loop(Matcher),
    /// Start of `(.*/)?`: goes on to the next node (the inner loop) or skips it.
    DirsEntry,
    /// Inside `(.*/)?`: any character loops, a `/` may also leave.
    DirsInner,
}

/// A compiled automaton matching whole strings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Program {
    nodes: Vec<Node>,
    /// Literal text every match starts with (a cheap reject before running the automaton).
    prefix: String,
    /// Literal text every match ends with.
    suffix: String,
}

impl Program {
    fn new(nodes: Vec<Node>) -> Program {
        let lit = |n: &Node| match n {
            Node::One(Matcher::Lit(c)) => Some(*c),
            _ => None,
        };
        let prefix: String = nodes.iter().map_while(lit).collect();
        let suffix = if prefix.chars().count() == nodes.len() {
            String::new()
        } else {
            let mut rev: Vec<char> = nodes.iter().rev().map_while(lit).collect();
            rev.reverse();
            rev.into_iter().collect()
        };
        Program {
            nodes,
            prefix,
            suffix,
        }
    }

    fn close(&self, set: &mut [bool]) {
        for i in 0..self.nodes.len() {
            if !set[i] {
                continue;
            }
            match self.nodes[i] {
                Node::Loop(_) => set[i + 1] = true,
                Node::DirsEntry => {
                    set[i + 1] = true;
                    if let Some(s) = set.get_mut(i + 2) {
                        *s = true;
                    }
                }
                Node::One(_) | Node::DirsInner => {}
            }
        }
    }

    fn is_match(&self, s: &str) -> bool {
        if !s.starts_with(self.prefix.as_str()) || !s.ends_with(self.suffix.as_str()) {
            return false;
        }
        if self.nodes.len() < 64 {
            self.is_match_bits(s)
        } else {
            self.is_match_vec(s)
        }
    }

    /// [`Node`] closure on a bit set (patterns of fewer than 64 nodes: no allocation).
    fn close_bits(&self, mut set: u64) -> u64 {
        for (i, node) in self.nodes.iter().enumerate() {
            if set >> i & 1 == 0 {
                continue;
            }
            match node {
                Node::Loop(_) => set |= 1 << (i + 1),
                // A `DirsEntry` is always followed by its `DirsInner`, so `i + 2 <= len < 64`.
                Node::DirsEntry => set |= 0b11 << (i + 1),
                Node::One(_) | Node::DirsInner => {}
            }
        }
        set
    }

    fn is_match_bits(&self, s: &str) -> bool {
        let mut cur = self.close_bits(1);
        for c in s.chars() {
            let mut next = 0u64;
            for (i, node) in self.nodes.iter().enumerate() {
                if cur >> i & 1 == 0 {
                    continue;
                }
                match node {
                    Node::One(m) if m.accepts(c) => next |= 1 << (i + 1),
                    Node::Loop(m) if m.accepts(c) => next |= 1 << i,
                    Node::DirsInner if c == '/' => next |= 0b11 << i,
                    Node::DirsInner => next |= 1 << i,
                    _ => {}
                }
            }
            if next == 0 {
                return false;
            }
            cur = self.close_bits(next);
        }
        cur >> self.nodes.len() & 1 == 1
    }

    fn is_match_vec(&self, s: &str) -> bool {
        let n = self.nodes.len();
        let mut cur = vec![false; n + 1];
        let mut next = vec![false; n + 1];
        cur[0] = true;
        self.close(&mut cur);
        for c in s.chars() {
            next.iter_mut().for_each(|b| *b = false);
            let mut any = false;
            for (i, node) in self.nodes.iter().enumerate() {
                if !cur[i] {
                    continue;
                }
                match node {
                    Node::One(m) if m.accepts(c) => next[i + 1] = true,
                    Node::Loop(m) if m.accepts(c) => next[i] = true,
                    Node::DirsInner => {
                        next[i] = true;
                        if c == '/' {
                            next[i + 1] = true;
                        }
                    }
                    _ => continue,
                }
                any = true;
            }
            if !any {
                return false;
            }
            self.close(&mut next);
            std::mem::swap(&mut cur, &mut next);
        }
        cur[n]
    }
}

type SyntaxError = (usize, &'static str);

/// Parses a bracket expression with Go `filepath.Match` rules; `chars` is just after the `[`.
fn parse_class(
    chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>,
    len: usize,
) -> Result<Class, SyntaxError> {
    let mut negated = false;
    if chars.peek().is_some_and(|&(_, c)| c == '^') {
        chars.next();
        negated = true;
    }
    let mut ranges = Vec::new();
    loop {
        if let Some(&(_, ']')) = chars.peek()
            && !ranges.is_empty()
        {
            chars.next();
            return Ok(Class { negated, ranges });
        }
        let lo = class_char(chars, len)?;
        let mut hi = lo;
        if chars.peek().is_some_and(|&(_, c)| c == '-') {
            chars.next();
            hi = class_char(chars, len)?;
        }
        ranges.push((lo, hi));
    }
}

/// Go's `getEsc`: one (possibly escaped) class character, which must not be the last of the
/// pattern.
fn class_char(
    chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>,
    len: usize,
) -> Result<char, SyntaxError> {
    let (at, mut c) = match chars.next() {
        None => return Err((len, "unterminated character class")),
        Some((at, c @ ('-' | ']'))) => return Err((at, bad_class_char(c))),
        Some(x) => x,
    };
    if c == '\\' {
        match chars.next() {
            Some((_, n)) => c = n,
            None => return Err((at, "escape at end of pattern")),
        }
    }
    if chars.peek().is_none() {
        return Err((len, "unterminated character class"));
    }
    Ok(c)
}

fn bad_class_char(c: char) -> &'static str {
    if c == '-' {
        "misplaced '-' in character class"
    } else {
        "empty character class"
    }
}

/// Compiles a Go `filepath.Match` pattern.
fn compile_glob(pattern: &str) -> Result<Program, SyntaxError> {
    let mut nodes = Vec::new();
    let mut chars = pattern.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        nodes.push(match c {
            '*' => Node::Loop(Matcher::NotSlash),
            '?' => Node::One(Matcher::NotSlash),
            '[' => Node::One(Matcher::Class(parse_class(&mut chars, pattern.len())?)),
            '\\' => match chars.next() {
                Some((_, n)) => Node::One(Matcher::Lit(n)),
                None => return Err((at, "escape at end of pattern")),
            },
            c => Node::One(Matcher::Lit(c)),
        });
    }
    Ok(Program::new(nodes))
}

/// Go's `filepath.Match` on `/`-separated names: `*` matches any run of characters except `/`,
/// `?` one character except `/`, `[...]` / `[^...]` a class (ranges, `\` escapes), `\x` the
/// character `x`. The whole pattern must match the whole name. A malformed pattern is an error
/// whatever the name.
pub fn glob_match(pattern: &str, name: &str) -> Result<bool, PatternError> {
    let program = compile_glob(pattern).map_err(|(offset, reason)| PatternError::Malformed {
        file: None,
        line: None,
        pattern: pattern.to_owned(),
        offset,
        reason,
    })?;
    Ok(program.is_match(name))
}

/// How a pattern is matched (patternmatcher's `matchType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Exact,
    Prefix,
    Suffix,
    Program,
}

/// One cleaned `.dockerignore` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    exclusion: bool,
    line: Option<usize>,
    kind: Kind,
    program: Program,
}

impl Pattern {
    fn compile(text: String, exclusion: bool, line: Option<usize>) -> Pattern {
        let mut nodes = Vec::new();
        let mut kind = Kind::Exact;
        let mut chars = text.char_indices().peekable();
        let mut first = true;
        while let Some((_, c)) = chars.next() {
            match c {
                '*' if chars.peek().is_some_and(|&(_, n)| n == '*') => {
                    chars.next();
                    // `**/` is `**`.
                    if chars.peek().is_some_and(|&(_, n)| n == '/') {
                        chars.next();
                    }
                    if chars.peek().is_none() {
                        if kind == Kind::Exact {
                            kind = Kind::Prefix;
                        } else {
                            nodes.push(Node::Loop(Matcher::Any));
                            kind = Kind::Program;
                        }
                    } else {
                        nodes.push(Node::DirsEntry);
                        nodes.push(Node::DirsInner);
                        kind = Kind::Program;
                    }
                    if first {
                        kind = Kind::Suffix;
                    }
                }
                '*' => {
                    nodes.push(Node::Loop(Matcher::NotSlash));
                    kind = Kind::Program;
                }
                '?' => {
                    nodes.push(Node::One(Matcher::NotSlash));
                    kind = Kind::Program;
                }
                '\\' => match chars.next() {
                    Some((_, n)) => {
                        nodes.push(Node::One(Matcher::Lit(n)));
                        kind = Kind::Program;
                    }
                    None => nodes.push(Node::One(Matcher::Lit('\\'))),
                },
                '[' => {
                    // Validated by `compile_glob` already; an error here cannot happen, and
                    // would only make the class match nothing.
                    let class = parse_class(&mut chars, text.len()).unwrap_or(Class {
                        negated: false,
                        ranges: Vec::new(),
                    });
                    nodes.push(Node::One(Matcher::Class(class)));
                    kind = Kind::Program;
                }
                ']' => {
                    nodes.push(Node::One(Matcher::Lit(']')));
                    kind = Kind::Program;
                }
                c => nodes.push(Node::One(Matcher::Lit(c))),
            }
            first = false;
        }
        Pattern {
            text,
            exclusion,
            line,
            kind,
            program: Program::new(nodes),
        }
    }

    /// The cleaned pattern, without its leading `!`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether this is an exception (`!pattern`).
    pub fn is_exclusion(&self) -> bool {
        self.exclusion
    }

    /// The 1-based line of the ignore file this pattern came from, if any.
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// Whether this pattern alone matches `path` exactly (no parent-directory rule).
    pub fn matches_exact(&self, path: &str) -> bool {
        match self.kind {
            Kind::Exact => path == self.text,
            Kind::Prefix => self
                .text
                .get(..self.text.len().saturating_sub(2))
                .is_some_and(|p| path.starts_with(p)),
            Kind::Suffix => {
                let suffix = self.text.get(2..).unwrap_or("");
                path.ends_with(suffix) || suffix.strip_prefix('/').is_some_and(|s| path == s)
            }
            Kind::Program => self.program.is_match(path),
        }
    }

    /// Whether this pattern matches `path` or one of its parent directories.
    fn matches_or_parent(&self, path: &str, parent: &str) -> bool {
        if self.matches_exact(path) {
            return true;
        }
        if parent == "." {
            return false;
        }
        parent
            .match_indices('/')
            .map(|(j, _)| parent.get(..j).unwrap_or(""))
            .chain(std::iter::once(parent))
            .any(|p| self.matches_exact(p))
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.exclusion {
            f.write_str("!")?;
        }
        f.write_str(&self.text)
    }
}

/// Per-pattern results for a directory, handed to its children by a walker (buildkit's
/// `MatchInfo`). The default value means "nothing known about the parent".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MatchInfo {
    parent_matched: Vec<bool>,
}

/// An ordered list of `.dockerignore` patterns (moby's `PatternMatcher`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatternMatcher {
    patterns: Vec<Pattern>,
    exclusions: bool,
}

impl PatternMatcher {
    /// Compiles patterns as moby's `patternmatcher.New` does: each is trimmed (empty ones are
    /// skipped) and cleaned; a leading `!` makes an exception.
    pub fn new<I, S>(patterns: I) -> Result<PatternMatcher, PatternError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::build(patterns.into_iter().map(|p| (None, p)), None)
    }

    fn build<I, S>(patterns: I, file: Option<&str>) -> Result<PatternMatcher, PatternError>
    where
        I: IntoIterator<Item = (Option<usize>, S)>,
        S: AsRef<str>,
    {
        let mut pm = PatternMatcher::default();
        for (line, p) in patterns {
            let p = p.as_ref().trim();
            if p.is_empty() {
                continue;
            }
            let cleaned = clean_path(p);
            let (exclusion, text) = match cleaned.strip_prefix('!') {
                Some("") => {
                    return Err(PatternError::LoneExclusion {
                        file: file.map(str::to_owned),
                        line,
                    });
                }
                Some(rest) => (true, rest.to_owned()),
                None => (false, cleaned),
            };
            if let Err((offset, reason)) = compile_glob(&text) {
                return Err(PatternError::Malformed {
                    file: file.map(str::to_owned),
                    line,
                    pattern: text,
                    offset,
                    reason,
                });
            }
            pm.exclusions |= exclusion;
            pm.patterns.push(Pattern::compile(text, exclusion, line));
        }
        Ok(pm)
    }

    /// The compiled patterns, in order.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Whether any pattern is an exception (`!`): when false, a walker may skip a whole
    /// directory as soon as the directory itself is excluded.
    pub fn exclusions(&self) -> bool {
        self.exclusions
    }

    /// Whether `path` (relative to the context, `/`-separated) is excluded: the last pattern
    /// that matches the path or one of its parent directories decides (moby's
    /// `MatchesOrParentMatches`). The path is cleaned first; `.` is never excluded.
    pub fn matches(&self, path: &str) -> bool {
        let file = clean(path);
        if file == "." {
            return false;
        }
        let parent = dir(&file);
        let mut matched = false;
        for pattern in &self.patterns {
            // An inclusion cannot change a match, an exclusion cannot change a non-match.
            if pattern.exclusion != matched {
                continue;
            }
            if pattern.matches_or_parent(&file, &parent) {
                matched = !pattern.exclusion;
            }
        }
        matched
    }

    /// Like [`matches`](Self::matches), for a walker that visits parents before children:
    /// `parent` is what this call returned for the parent directory (or the default value for
    /// a top-level entry), and the returned [`MatchInfo`] is what to pass for this entry's
    /// children. `path` must already be clean. Moby's `MatchesUsingParentResults`.
    pub fn matches_using_parent_results(
        &self,
        path: &str,
        parent: &MatchInfo,
    ) -> (bool, MatchInfo) {
        let known = parent.parent_matched.len() == self.patterns.len() && !self.patterns.is_empty();
        let parent_dir = if known { Cow::Borrowed("") } else { dir(path) };
        let mut matched = false;
        let mut info = MatchInfo {
            parent_matched: vec![false; self.patterns.len()],
        };
        for (i, pattern) in self.patterns.iter().enumerate() {
            let mut hit = known && parent.parent_matched[i];
            if !hit {
                if pattern.exclusion != matched {
                    continue;
                }
                hit = if known {
                    pattern.matches_exact(path)
                } else {
                    pattern.matches_or_parent(path, &parent_dir)
                };
            }
            info.parent_matched[i] = hit;
            if hit {
                matched = !pattern.exclusion;
            }
        }
        (matched, info)
    }
}

/// One pattern line of an ignore file, after `ignorefile.ReadAll` normalisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoreLine {
    /// 1-based line number.
    pub line: usize,
    /// The normalised pattern, `!` included.
    pub pattern: String,
}

/// The patterns of a `.dockerignore` file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IgnoreFile {
    /// The pattern lines, in order (comments and blank lines dropped).
    pub lines: Vec<IgnoreLine>,
}

impl IgnoreFile {
    /// Reads the patterns as moby's `ignorefile.ReadAll` does. Never fails: syntax is checked
    /// when the patterns are compiled.
    pub fn read(text: &str) -> IgnoreFile {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut lines = Vec::new();
        for (i, raw) in text.split('\n').enumerate() {
            let raw = raw.strip_suffix('\r').unwrap_or(raw);
            if raw.starts_with('#') {
                continue;
            }
            let mut pattern = raw.trim();
            if pattern.is_empty() {
                continue;
            }
            let invert = pattern.starts_with('!');
            if invert {
                pattern = pattern.get(1..).unwrap_or("").trim();
            }
            let mut out = String::with_capacity(pattern.len() + 1);
            if invert {
                out.push('!');
            }
            if !pattern.is_empty() {
                let cleaned = clean_path(pattern);
                match cleaned.strip_prefix('/') {
                    Some(rest) if !rest.is_empty() => out.push_str(rest),
                    _ => out.push_str(&cleaned),
                }
            }
            lines.push(IgnoreLine {
                line: i + 1,
                pattern: out,
            });
        }
        IgnoreFile { lines }
    }

    /// Reads `text` and compiles its patterns; errors name `file_name` and the line.
    pub fn parse(text: &str, file_name: &str) -> Result<PatternMatcher, PatternError> {
        IgnoreFile::read(text).compile(file_name)
    }

    /// Compiles the patterns; errors name `file_name` and the line.
    pub fn compile(&self, file_name: &str) -> Result<PatternMatcher, PatternError> {
        PatternMatcher::build(
            self.lines
                .iter()
                .map(|l| (Some(l.line), l.pattern.as_str())),
            Some(file_name),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_like_go() {
        for (input, want) in [
            ("", "."),
            ("a/b/../c", "a/c"),
            ("/../a", "/a"),
            ("../../a", "../../a"),
            ("a//b/./", "a/b"),
            ("/", "/"),
            ("./", "."),
            ("a/..", "."),
        ] {
            assert_eq!(clean_path(input), want, "{input:?}");
        }
    }

    #[test]
    fn glob_match_like_filepath_match() {
        assert!(glob_match("*.txt", "a.txt").unwrap());
        assert!(!glob_match("*.txt", "d/a.txt").unwrap());
        assert!(glob_match("[a-c]?", "bz").unwrap());
        assert!(glob_match("[^a-c]", "z").unwrap());
        assert!(!glob_match("[^a-c]", "b").unwrap());
        assert!(glob_match("a\\*", "a*").unwrap());
        assert!(glob_match("[\\]]", "]").unwrap());
        for bad in ["[", "[]", "[a-]", "a\\", "[^]", "[-a]", "x[a"] {
            assert!(glob_match(bad, "x").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reads_ignore_file_like_moby() {
        let f = IgnoreFile::read("\u{feff}# c\r\n  /a/b/  \n ! /c \n\n  # not a comment\n!\n");
        let got: Vec<(usize, &str)> = f
            .lines
            .iter()
            .map(|l| (l.line, l.pattern.as_str()))
            .collect();
        assert_eq!(
            got,
            [(2, "a/b"), (3, "!c"), (5, "# not a comment"), (6, "!")]
        );
    }

    #[test]
    fn walker_results_agree_with_matches() {
        let m = PatternMatcher::new(["a", "!a/keep", "**/*.o"]).unwrap();
        let (a, ia) = m.matches_using_parent_results("a", &MatchInfo::default());
        let (keep, ik) = m.matches_using_parent_results("a/keep", &ia);
        let (inner, _) = m.matches_using_parent_results("a/keep/x.c", &ik);
        let (obj, _) = m.matches_using_parent_results("a/keep/x.o", &ik);
        assert_eq!(
            (a, keep, inner, obj),
            (
                m.matches("a"),
                m.matches("a/keep"),
                m.matches("a/keep/x.c"),
                m.matches("a/keep/x.o")
            )
        );
        assert_eq!((a, keep, inner, obj), (true, false, false, true));
        assert!(m.exclusions());
    }

    #[test]
    fn dot_and_empty_never_match() {
        assert!(!PatternMatcher::new(["**"]).unwrap().matches("."));
        assert!(
            !PatternMatcher::new(Vec::<String>::new())
                .unwrap()
                .matches("a")
        );
    }
}
