//! Shell-word expansion with the semantics of buildkit's `frontend/dockerfile/shell` lexer.
//!
//! A Dockerfile word such as `"${HOME:-/root}"/bin` is expanded against an environment the way
//! buildkit does it: single and double quotes, an escape character (`\` by default, or the
//! backtick chosen with `# escape=` ), `$NAME`, `${NAME}` and the modifiers
//! `${X:-w} ${X-w} ${X:+w} ${X+w} ${X?m} ${X:?m} ${X#p} ${X##p} ${X%p} ${X%%p} ${X/p/r} ${X//p/r}`.
//!
//! Patterns in `#`, `%` and `/` modifiers are buildkit's shell patterns: `*` (any string), `?`
//! (any character), `\*`, `\?` and `\\` for the literal characters; every other character,
//! brackets included, is literal (buildkit does not support bracket expressions there). They are
//! matched with a linear-time automaton, never by backtracking.
//!
//! ```
//! use std::collections::HashMap;
//! use firebuild_dockerfile::shell::Lexer;
//!
//! let env = HashMap::from([("NAME".to_owned(), "world wide".to_owned())]);
//! let lexer = Lexer::new('\\');
//! assert_eq!(lexer.expand_word("'hi' \"${NAME%% *}\"!", &env).unwrap(), "hi world!");
//! assert_eq!(lexer.expand_words("a ${NAME}", &env).unwrap(), ["a", "world", "wide"]);
//! let used = lexer.process_word("${NAME} $UNSET", &env).unwrap();
//! assert!(used.matched.contains("NAME") && used.unmatched.contains("UNSET"));
//! ```

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasher;

use firebuild_plan::EnvVar;

/// Longest word an expansion may produce: as long as the largest Dockerfile
/// ([`crate::ast::MAX_DOCKERFILE_BYTES`]). Buildkit has no bound, so `ARG V=$V$V` repeated 28
/// times in a 353-byte Dockerfile asks it for 4 GiB; here it fails at the line that crosses this.
pub const MAX_WORD_BYTES: usize = crate::ast::MAX_DOCKERFILE_BYTES;

/// Most pattern-matching steps one expansion may take: a step is one character of a value read
/// against one position of a `#`, `%` or `/` pattern, plus one per character, so this is a
/// 1 MiB value against a 3-character pattern, or 64 KiB against 63, and about 15 ms of work in
/// a release build. Real Dockerfiles (`${VERSION%%.*}`, `${PATH//:/ }`) take thousands.
/// Output alone is no bound on the work: `${V%%*x}` on a 16 MiB value produces nothing, and
/// `${V//p/r}` rescans the value after each match. Callers that expand many words share one
/// budget with [`Lexer::expand_word_within`]; a plan does. Buildkit has no bound.
pub const MAX_MATCH_STEPS: u64 = 1 << 22;

/// A source of variables for expansion.
///
/// Implemented for `HashMap<String, String>`, `BTreeMap<String, String>`, slices and vectors of
/// [`EnvVar`] or of `(name, value)` pairs (the last definition of a name wins, like buildkit's
/// `BuildEnvs`), references to any of those, and closures wrapped in [`FnEnv`].
pub trait Env {
    /// The value of `name`, or `None` when it is not set (set-but-empty is `Some("")`).
    fn lookup(&self, name: &str) -> Option<Cow<'_, str>>;
}

impl<T: Env + ?Sized> Env for &T {
    fn lookup(&self, name: &str) -> Option<Cow<'_, str>> {
        (**self).lookup(name)
    }
}

impl<S: BuildHasher> Env for HashMap<String, String, S> {
    fn lookup(&self, name: &str) -> Option<Cow<'_, str>> {
        self.get(name).map(|v| Cow::Borrowed(v.as_str()))
    }
}

impl Env for BTreeMap<String, String> {
    fn lookup(&self, name: &str) -> Option<Cow<'_, str>> {
        self.get(name).map(|v| Cow::Borrowed(v.as_str()))
    }
}

impl Env for [EnvVar] {
    fn lookup(&self, name: &str) -> Option<Cow<'_, str>> {
        self.iter()
            .rev()
            .find(|v| v.name == name)
            .map(|v| Cow::Borrowed(v.value.as_str()))
    }
}

impl Env for Vec<EnvVar> {
    fn lookup(&self, name: &str) -> Option<Cow<'_, str>> {
        self.as_slice().lookup(name)
    }
}

impl<K: AsRef<str>, V: AsRef<str>> Env for [(K, V)] {
    fn lookup(&self, name: &str) -> Option<Cow<'_, str>> {
        self.iter()
            .rev()
            .find(|(k, _)| k.as_ref() == name)
            .map(|(_, v)| Cow::Borrowed(v.as_ref()))
    }
}

impl<K: AsRef<str>, V: AsRef<str>> Env for Vec<(K, V)> {
    fn lookup(&self, name: &str) -> Option<Cow<'_, str>> {
        self.as_slice().lookup(name)
    }
}

/// Adapts a closure `Fn(&str) -> Option<String>` to [`Env`].
#[derive(Debug, Clone, Copy)]
pub struct FnEnv<F>(pub F);

impl<F: Fn(&str) -> Option<String>> Env for FnEnv<F> {
    fn lookup(&self, name: &str) -> Option<Cow<'_, str>> {
        (self.0)(name).map(Cow::Owned)
    }
}

/// Why a word could not be expanded. Offsets are byte offsets into the word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExpandError {
    /// A quote or a `${...}` nesting was not closed before the end of the word.
    #[error("unexpected end of word at offset {offset} while looking for matching {expected}")]
    Unterminated {
        /// Where the word ended.
        offset: usize,
        /// What was missing: `'`, `"`, `}` or `/`.
        expected: char,
    },
    /// `${` with nothing after it, or a `${NAME...` without its closing brace.
    #[error("syntax error at offset {offset}: missing '}}'")]
    MissingBrace {
        /// Offset of the `$` that opened the substitution.
        offset: usize,
    },
    /// `${}`, `${{..}`, `${:..}`.
    #[error("syntax error at offset {offset}: bad substitution")]
    BadSubstitution {
        /// Offset of the `$` that opened the substitution.
        offset: usize,
    },
    /// A `${NAME<modifier>...}` with a modifier buildkit does not support (such as `:=`).
    #[error("unsupported modifier ({modifier}) in substitution at offset {offset}")]
    UnsupportedModifier {
        /// Offset of the `$` that opened the substitution.
        offset: usize,
        /// The modifier as written.
        modifier: String,
    },
    /// `${NAME?message}` or `${NAME:?message}` with `NAME` unset (or empty, for `:?`).
    #[error("{name}: {message}")]
    Required {
        /// Offset of the `$` that opened the substitution.
        offset: usize,
        /// The variable.
        name: String,
        /// The message from the word, or buildkit's default message.
        message: String,
    },
    /// A malformed pattern in a `#`, `%` or `/` modifier (an escape other than `\*`, `\?`,
    /// `\\`, `\}`, `\/`).
    #[error("invalid pattern ({pattern}) in substitution at offset {offset}: {reason}")]
    InvalidPattern {
        /// Offset of the `$` that opened the substitution.
        offset: usize,
        /// The pattern after expansion.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The expansion grew past [`MAX_WORD_BYTES`].
    #[error("expansion at offset {offset} produces more than {limit} bytes")]
    TooLong {
        /// How far into the word the expansion had got.
        offset: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// Pattern matching used up its budget of steps ([`MAX_MATCH_STEPS`], or what the caller
    /// gave [`Lexer::expand_word_within`]).
    #[error(
        "pattern matching at offset {offset} takes more than its budget of {MAX_MATCH_STEPS} steps (a value's characters times the pattern's length)"
    )]
    TooMuchMatching {
        /// Offset of the `$` that opened the substitution.
        offset: usize,
    },
}

impl ExpandError {
    /// The byte offset in the word where the error was detected.
    pub fn offset(&self) -> usize {
        match self {
            ExpandError::Unterminated { offset, .. }
            | ExpandError::MissingBrace { offset }
            | ExpandError::BadSubstitution { offset }
            | ExpandError::UnsupportedModifier { offset, .. }
            | ExpandError::Required { offset, .. }
            | ExpandError::InvalidPattern { offset, .. }
            | ExpandError::TooLong { offset, .. }
            | ExpandError::TooMuchMatching { offset } => *offset,
        }
    }
}

/// The full result of expanding one word.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expansion {
    /// The expanded word (what [`Lexer::expand_word`] returns).
    pub value: String,
    /// The word split into fields after expansion (what [`Lexer::expand_words`] returns).
    pub words: Vec<String>,
    /// Names that were referenced and set.
    pub matched: BTreeSet<String>,
    /// Names that were referenced and not set.
    pub unmatched: BTreeSet<String>,
}

/// A shell-word lexer: buildkit's `shell.Lex`.
///
/// Cheap to build and `Copy`; one lexer may expand any number of words, from several threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lexer {
    escape: char,
    raw_quotes: bool,
    raw_escapes: bool,
    skip_process_quotes: bool,
    skip_unset_env: bool,
}

impl Default for Lexer {
    fn default() -> Self {
        Lexer::new('\\')
    }
}

impl Lexer {
    /// A lexer whose escape character is `escape` (`\` or `` ` ``).
    pub fn new(escape: char) -> Self {
        Lexer {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_process_quotes: false,
            skip_unset_env: false,
        }
    }

    /// The escape character.
    pub fn escape(&self) -> char {
        self.escape
    }

    /// Keep quote characters in the output (buildkit `RawQuotes`).
    pub fn with_raw_quotes(mut self, on: bool) -> Self {
        self.raw_quotes = on;
        self
    }

    /// Keep escape characters in the output (buildkit `RawEscapes`).
    pub fn with_raw_escapes(mut self, on: bool) -> Self {
        self.raw_escapes = on;
        self
    }

    /// Treat quotes as ordinary characters (buildkit `SkipProcessQuotes`).
    pub fn with_skip_process_quotes(mut self, on: bool) -> Self {
        self.skip_process_quotes = on;
        self
    }

    /// Leave references to unset variables as written (buildkit `SkipUnsetEnv`).
    pub fn with_skip_unset_env(mut self, on: bool) -> Self {
        self.skip_unset_env = on;
        self
    }

    /// Expands `word` into one string (buildkit `ProcessWord`).
    pub fn expand_word<E: Env + ?Sized>(&self, word: &str, env: &E) -> Result<String, ExpandError> {
        let mut steps = MAX_MATCH_STEPS;
        self.expand_word_within(word, env, &mut steps)
    }

    /// [`Lexer::expand_word`] with pattern matching taken out of `steps`, a budget the caller
    /// shares between words (see [`MAX_MATCH_STEPS`]); what the word used is subtracted, and
    /// the expansion fails with [`ExpandError::TooMuchMatching`] once it would go below zero.
    pub fn expand_word_within<E: Env + ?Sized>(
        &self,
        word: &str,
        env: &E,
        steps: &mut u64,
    ) -> Result<String, ExpandError> {
        if self.is_plain(word) {
            return Ok(word.to_owned());
        }
        self.run(word, env, false, false, steps).map(|e| e.value)
    }

    /// Whether `word` has nothing to expand: no `$`, quote, escape character or leading
    /// byte-order mark, so that [`Lexer::expand_word`] returns it unchanged.
    fn is_plain(&self, word: &str) -> bool {
        let escape = self.escape;
        !word.starts_with('\u{feff}')
            && !word
                .chars()
                .any(|c| matches!(c, '$' | '\'' | '"') || c == escape)
    }

    /// Expands `word` and splits the result into fields on unquoted whitespace that came from
    /// the word or from a variable's value (buildkit `ProcessWords`).
    pub fn expand_words<E: Env + ?Sized>(
        &self,
        word: &str,
        env: &E,
    ) -> Result<Vec<String>, ExpandError> {
        let mut steps = MAX_MATCH_STEPS;
        self.run(word, env, true, false, &mut steps)
            .map(|e| e.words)
    }

    /// Expands `word`, returning the value, the fields and which variables were referenced
    /// (buildkit `ProcessWordWithMatches`).
    pub fn process_word<E: Env + ?Sized>(
        &self,
        word: &str,
        env: &E,
    ) -> Result<Expansion, ExpandError> {
        let mut steps = MAX_MATCH_STEPS;
        self.process_word_within(word, env, &mut steps)
    }

    /// [`Lexer::process_word`] within a shared budget of pattern-matching steps, as
    /// [`Lexer::expand_word_within`].
    pub fn process_word_within<E: Env + ?Sized>(
        &self,
        word: &str,
        env: &E,
        steps: &mut u64,
    ) -> Result<Expansion, ExpandError> {
        self.run(word, env, true, true, steps)
    }

    fn run<E: Env + ?Sized>(
        &self,
        word: &str,
        env: &E,
        want_words: bool,
        track: bool,
        steps: &mut u64,
    ) -> Result<Expansion, ExpandError> {
        // text/scanner skips a byte-order mark at the start of its input.
        let (src, base) = match word.strip_prefix('\u{feff}') {
            Some(rest) => (rest, '\u{feff}'.len_utf8()),
            None => (word, 0),
        };
        let mut sw = ShellWord {
            lexer: self,
            sc: Scanner { src, pos: 0 },
            env,
            raw_escapes: self.raw_escapes,
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
            track,
            steps: *steps,
        };
        let result = sw.process_stop_on(None, self.raw_escapes, want_words);
        *steps = sw.steps;
        let (value, words) = result.map_err(|e| shift(e, base))?;
        Ok(Expansion {
            value,
            words,
            matched: sw.matched,
            unmatched: sw.unmatched,
        })
    }
}

fn shift(mut e: ExpandError, base: usize) -> ExpandError {
    match &mut e {
        ExpandError::Unterminated { offset, .. }
        | ExpandError::MissingBrace { offset }
        | ExpandError::BadSubstitution { offset }
        | ExpandError::UnsupportedModifier { offset, .. }
        | ExpandError::Required { offset, .. }
        | ExpandError::InvalidPattern { offset, .. }
        | ExpandError::TooLong { offset, .. }
        | ExpandError::TooMuchMatching { offset } => *offset += base,
    }
    e
}

struct Scanner<'a> {
    src: &'a str,
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<char> {
        self.src.get(self.pos..)?.chars().next()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn rest(&self) -> &'a str {
        self.src.get(self.pos..).unwrap_or("")
    }
}

/// Field splitting state (buildkit `wordsStruct`); does nothing when disabled (nested words
/// and callers that only want the joined value).
struct Words {
    enabled: bool,
    word: String,
    words: Vec<String>,
    in_word: bool,
}

impl Words {
    fn new(enabled: bool) -> Self {
        Words {
            enabled,
            word: String::new(),
            words: Vec::new(),
            in_word: false,
        }
    }

    fn add_char(&mut self, ch: char) {
        if !self.enabled {
            return;
        }
        if ch.is_whitespace() {
            if self.in_word && !self.word.is_empty() {
                self.words.push(std::mem::take(&mut self.word));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(ch);
        }
    }

    fn add_raw_char(&mut self, ch: char) {
        if !self.enabled {
            return;
        }
        self.word.push(ch);
        self.in_word = true;
    }

    fn add_string(&mut self, s: &str) {
        if !self.enabled {
            return;
        }
        for ch in s.chars() {
            self.add_char(ch);
        }
    }

    fn add_raw_string(&mut self, s: &str) {
        if !self.enabled {
            return;
        }
        self.word.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if !self.word.is_empty() {
            self.words.push(self.word);
        }
        self.words
    }
}

struct ShellWord<'l, 'a, E: Env + ?Sized> {
    lexer: &'l Lexer,
    sc: Scanner<'a>,
    env: &'l E,
    raw_escapes: bool,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
    /// Whether to record variable names in `matched`/`unmatched`.
    track: bool,
    /// Pattern-matching steps left ([`MAX_MATCH_STEPS`]).
    steps: u64,
}

impl<'l, 'a, E: Env + ?Sized> ShellWord<'l, 'a, E> {
    fn process_stop_on(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
        want_words: bool,
    ) -> Result<(String, Vec<String>), ExpandError> {
        let saved = std::mem::replace(&mut self.raw_escapes, raw_escapes);
        let r = self.process_stop_on_inner(stop, want_words);
        self.raw_escapes = saved;
        r
    }

    fn process_stop_on_inner(
        &mut self,
        stop: Option<char>,
        want_words: bool,
    ) -> Result<(String, Vec<String>), ExpandError> {
        let mut result = String::new();
        let mut words = Words::new(want_words);
        let quotes = !self.lexer.skip_process_quotes;
        while let Some(ch) = self.sc.peek() {
            if Some(ch) == stop {
                self.sc.next();
                return Ok((result, words.finish()));
            }
            if ch == '$' {
                let tmp = self.process_dollar()?;
                result.push_str(&tmp);
                words.add_string(&tmp);
            } else if quotes && ch == '\'' {
                let tmp = self.process_single_quote()?;
                result.push_str(&tmp);
                words.add_raw_string(&tmp);
            } else if quotes && ch == '"' {
                let tmp = self.process_double_quote()?;
                result.push_str(&tmp);
                words.add_raw_string(&tmp);
            } else {
                self.sc.next();
                let mut ch = ch;
                if ch == self.lexer.escape {
                    if self.raw_escapes {
                        words.add_raw_char(ch);
                        result.push(ch);
                    }
                    // The escape character escapes anything, except the end of the word.
                    match self.sc.next() {
                        None => break,
                        Some(c) => {
                            ch = c;
                            words.add_raw_char(c);
                        }
                    }
                } else {
                    words.add_char(ch);
                }
                result.push(ch);
            }
            bounded(result.len(), self.sc.pos)?;
        }
        match stop {
            Some(expected) => Err(ExpandError::Unterminated {
                offset: self.sc.pos,
                expected,
            }),
            None => Ok((result, words.finish())),
        }
    }

    fn process_single_quote(&mut self) -> Result<Cow<'a, str>, ExpandError> {
        // Everything up to the next single quote is literal; a single quote cannot be escaped.
        let start = self.sc.pos;
        self.sc.next();
        let rest = self.sc.rest();
        let Some(end) = rest.find('\'') else {
            self.sc.pos = self.sc.src.len();
            return Err(ExpandError::Unterminated {
                offset: self.sc.pos,
                expected: '\'',
            });
        };
        self.sc.pos += end + 1;
        if self.lexer.raw_quotes {
            Ok(Cow::Borrowed(
                self.sc.src.get(start..self.sc.pos).unwrap_or(""),
            ))
        } else {
            Ok(Cow::Borrowed(rest.get(..end).unwrap_or("")))
        }
    }

    fn process_double_quote(&mut self) -> Result<String, ExpandError> {
        // Everything up to the next double quote is literal except `$` and the escape
        // character, which escapes only `"`, `$` and itself.
        let mut result = String::new();
        if let Some(q) = self.sc.next()
            && self.lexer.raw_quotes
        {
            result.push(q);
        }
        loop {
            match self.sc.peek() {
                None => {
                    return Err(ExpandError::Unterminated {
                        offset: self.sc.pos,
                        expected: '"',
                    });
                }
                Some('"') => {
                    self.sc.next();
                    if self.lexer.raw_quotes {
                        result.push('"');
                    }
                    return Ok(result);
                }
                Some('$') => {
                    let value = self.process_dollar()?;
                    result.push_str(&value);
                    bounded(result.len(), self.sc.pos)?;
                }
                Some(mut ch) => {
                    self.sc.next();
                    if ch == self.lexer.escape {
                        if self.raw_escapes {
                            result.push(ch);
                        }
                        match self.sc.peek() {
                            None => continue,
                            Some(n) if n == '"' || n == '$' || n == self.lexer.escape => {
                                self.sc.next();
                                ch = n;
                            }
                            Some(_) => {}
                        }
                    }
                    result.push(ch);
                }
            }
        }
    }

    /// Reads a parameter name: a run of digits, one special parameter, or letters, digits and
    /// underscores.
    fn process_name(&mut self) -> &'a str {
        let start = self.sc.pos;
        let src = self.sc.src;
        match self.sc.peek() {
            Some(c) if c.is_ascii_digit() => {
                while self.sc.peek().is_some_and(|c| c.is_ascii_digit()) {
                    self.sc.next();
                }
            }
            Some('@' | '*' | '#' | '?' | '-' | '$' | '!') => {
                self.sc.next();
            }
            _ => {
                while self
                    .sc
                    .peek()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_')
                {
                    self.sc.next();
                }
            }
        }
        src.get(start..self.sc.pos).unwrap_or("")
    }

    fn get_env(&mut self, name: &str) -> Option<Cow<'l, str>> {
        let env: &'l E = self.env;
        match env.lookup(name) {
            Some(v) => {
                if self.track && !self.matched.contains(name) {
                    self.matched.insert(name.to_owned());
                }
                Some(v)
            }
            None => {
                if self.track && !self.unmatched.contains(name) {
                    self.unmatched.insert(name.to_owned());
                }
                None
            }
        }
    }

    fn process_dollar(&mut self) -> Result<Cow<'l, str>, ExpandError> {
        let at = self.sc.pos;
        self.sc.next();

        if self.sc.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok(Cow::Borrowed("$"));
            }
            return Ok(match self.get_env(name) {
                Some(v) => v,
                None if self.lexer.skip_unset_env => Cow::Owned(format!("${name}")),
                None => Cow::Borrowed(""),
            });
        }

        self.sc.next();
        match self.sc.peek() {
            None => return Err(ExpandError::MissingBrace { offset: at }),
            Some('{' | '}' | ':') => return Err(ExpandError::BadSubstitution { offset: at }),
            Some(_) => {}
        }
        let name = self.process_name();
        let first = self.sc.next();
        match first {
            Some('}') => Ok(match self.get_env(name) {
                Some(v) => v,
                None if self.lexer.skip_unset_env => Cow::Owned(format!("${{{name}}}")),
                None => Cow::Borrowed(""),
            }),
            Some(c @ (':' | '+' | '-' | '?' | '#' | '%')) => {
                let null_is_unset = c == ':';
                let op = if null_is_unset {
                    self.sc.next()
                } else {
                    Some(c)
                };
                let mut modifier = String::from(c);
                if null_is_unset && let Some(op) = op {
                    modifier.push(op);
                }
                let raw = matches!(op, Some('#' | '%'));
                let word = match self.process_stop_on(Some('}'), raw, false) {
                    Ok((w, _)) => w,
                    Err(e) => {
                        return Err(if self.sc.peek().is_none() {
                            ExpandError::MissingBrace { offset: at }
                        } else {
                            e
                        });
                    }
                };
                let value = self.get_env(name).map(Cow::into_owned);
                if value.is_none() && self.lexer.skip_unset_env {
                    return Ok(Cow::Owned(format!("${{{name}{modifier}{word}}}")));
                }
                self.apply(at, name, op, null_is_unset, &modifier, value, word)
                    .map(Cow::Owned)
            }
            Some('/') => {
                let replace_all = self.sc.peek() == Some('/');
                if replace_all {
                    self.sc.next();
                }
                let pattern = match self.process_stop_on(Some('/'), true, false) {
                    Ok((p, _)) => p,
                    Err(e) => {
                        return Err(if self.sc.peek().is_none() {
                            ExpandError::Unterminated {
                                offset: self.sc.pos,
                                expected: '/',
                            }
                        } else {
                            e
                        });
                    }
                };
                let replacement = match self.process_stop_on(Some('}'), true, false) {
                    Ok((r, _)) => r,
                    Err(e) => {
                        return Err(if self.sc.peek().is_none() {
                            ExpandError::MissingBrace { offset: at }
                        } else {
                            e
                        });
                    }
                };
                let value = match self.get_env(name) {
                    Some(value) => value,
                    None if self.lexer.skip_unset_env => {
                        return Ok(Cow::Owned(format!("${{{name}/{pattern}/{replacement}}}")));
                    }
                    None => Cow::Borrowed(""),
                };
                replace(
                    at,
                    &pattern,
                    &value,
                    &replacement,
                    replace_all,
                    &mut self.steps,
                )
                .map(Cow::Owned)
            }
            other => Err(ExpandError::UnsupportedModifier {
                offset: at,
                modifier: other.map(String::from).unwrap_or_default(),
            }),
        }
    }

    /// Applies a `-`, `+`, `?`, `#` or `%` modifier to `value` (`None` when unset).
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        at: usize,
        name: &str,
        op: Option<char>,
        null_is_unset: bool,
        modifier: &str,
        value: Option<String>,
        word: String,
    ) -> Result<String, ExpandError> {
        let unset = match &value {
            None => true,
            Some(v) => null_is_unset && v.is_empty(),
        };
        let required = |message: &str, word: String| ExpandError::Required {
            offset: at,
            name: name.to_owned(),
            message: if word.is_empty() {
                message.to_owned()
            } else {
                word
            },
        };
        match op {
            Some('-') if unset => Ok(word),
            Some('-') => Ok(value.unwrap_or_default()),
            Some('+') if unset => Ok(String::new()),
            Some('+') => Ok(word),
            Some('?') => match value {
                None => Err(required("is not allowed to be unset", word)),
                Some(_) if unset => Err(required("is not allowed to be empty", word)),
                Some(v) => Ok(v),
            },
            Some(c @ ('#' | '%')) => {
                let value = value.unwrap_or_default();
                let (greedy, pattern) = match word.strip_prefix(c) {
                    Some(rest) => (true, rest),
                    None => (false, word.as_str()),
                };
                let toks =
                    parse_shell_pattern(pattern).map_err(|reason| ExpandError::InvalidPattern {
                        offset: at,
                        pattern: pattern.to_owned(),
                        reason,
                    })?;
                let exhausted = |e: Exhausted| e.at(at);
                let steps = &mut self.steps;
                if c == '#' {
                    let chars = value.char_indices();
                    let n = match_prefix(&toks, chars, value.len(), greedy, false, steps)
                        .map_err(exhausted)?;
                    Ok(value.get(n.unwrap_or(0)..).unwrap_or("").to_owned())
                } else {
                    let rev: Vec<PTok> = toks.into_iter().rev().collect();
                    let chars = value.char_indices().rev();
                    let n = match_prefix(&rev, chars, value.len(), greedy, true, steps)
                        .map_err(exhausted)?;
                    Ok(value
                        .get(..value.len() - n.unwrap_or(0))
                        .unwrap_or("")
                        .to_owned())
                }
            }
            _ => Err(ExpandError::UnsupportedModifier {
                offset: at,
                modifier: modifier.to_owned(),
            }),
        }
    }
}

/// One element of a buildkit shell pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PTok {
    Lit(char),
    Any,
    Star,
}

/// Parses a pattern as buildkit's `convertShellPatternToRegex` reads it.
fn parse_shell_pattern(pattern: &str) -> Result<Vec<PTok>, String> {
    let mut out = Vec::with_capacity(pattern.len());
    let mut it = pattern.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '*' => out.push(PTok::Star),
            '?' => out.push(PTok::Any),
            '\\' => {
                // `\}` and `\/` are escapes of the `${}` syntax, not of the pattern.
                if matches!(it.peek(), Some('}' | '/')) {
                    continue;
                }
                match it.next() {
                    Some(n @ ('*' | '?' | '\\')) => out.push(PTok::Lit(n)),
                    Some(n) => return Err(format!("invalid escape '\\{n}'")),
                    None => return Err("invalid escape at end of pattern".to_owned()),
                }
            }
            c => out.push(PTok::Lit(c)),
        }
    }
    Ok(out)
}

/// Follows `*` tokens that can match the empty string.
fn close(toks: &[PTok], set: &mut [bool]) {
    for i in 0..toks.len() {
        if set[i] && toks[i] == PTok::Star {
            set[i + 1] = true;
        }
    }
}

fn step(toks: &[PTok], cur: &[bool], next: &mut [bool], c: char) {
    next.iter_mut().for_each(|b| *b = false);
    for (i, t) in toks.iter().enumerate() {
        if !cur[i] {
            continue;
        }
        match *t {
            PTok::Star => next[i] = true,
            PTok::Any => next[i + 1] = true,
            PTok::Lit(l) if l == c => next[i + 1] = true,
            PTok::Lit(_) => {}
        }
    }
    close(toks, next);
}

/// The budget of pattern-matching steps ran out.
struct Exhausted;

impl Exhausted {
    /// The error for the substitution whose `$` is at `offset`.
    fn at(self, offset: usize) -> ExpandError {
        ExpandError::TooMuchMatching { offset }
    }
}

/// Takes one step per automaton state (`states`) out of `steps`: the cost of reading one
/// character.
fn spend(steps: &mut u64, states: usize) -> Result<(), Exhausted> {
    *steps = steps.checked_sub(states as u64).ok_or(Exhausted)?;
    Ok(())
}

/// Length in bytes of the shortest (or longest) prefix of a string matched by `toks`, reading
/// characters from `chars` (forward `char_indices`, or reversed for suffixes).
fn match_prefix(
    toks: &[PTok],
    chars: impl Iterator<Item = (usize, char)>,
    len: usize,
    longest: bool,
    reversed: bool,
    steps: &mut u64,
) -> Result<Option<usize>, Exhausted> {
    let m = toks.len();
    let mut cur = vec![false; m + 1];
    let mut next = vec![false; m + 1];
    cur[0] = true;
    close(toks, &mut cur);
    let mut best = cur[m].then_some(0);
    if best.is_some() && !longest {
        return Ok(best);
    }
    for (i, c) in chars {
        spend(steps, m + 1)?;
        step(toks, &cur, &mut next, c);
        std::mem::swap(&mut cur, &mut next);
        if !cur.iter().any(|b| *b) {
            break;
        }
        if cur[m] {
            let consumed = if reversed { len - i } else { i + c.len_utf8() };
            best = Some(consumed);
            if !longest {
                break;
            }
        }
    }
    Ok(best)
}

/// What one [`find`] call costs on top of the characters it reads: its set-up, so that
/// `${V//""/r}` (a match at every position, each found by a call that reads one character)
/// pays for its calls.
const FIND_CALL_STEPS: usize = 16;

/// The automaton's state sets for [`find`], allocated once per `${V//p/r}`: for each state, the
/// smallest start offset of a thread in it.
struct Threads {
    cur: Vec<Option<usize>>,
    next: Vec<Option<usize>>,
}

impl Threads {
    fn new(toks: &[PTok]) -> Self {
        Threads {
            cur: vec![None; toks.len() + 1],
            next: vec![None; toks.len() + 1],
        }
    }
}

/// The leftmost, then longest, match of `toks` in `s` starting at or after byte `from`.
fn find(
    toks: &[PTok],
    s: &str,
    from: usize,
    threads: &mut Threads,
    steps: &mut u64,
) -> Result<Option<(usize, usize)>, Exhausted> {
    let m = toks.len();
    spend(steps, FIND_CALL_STEPS + m)?;
    let Threads { cur, next } = threads;
    cur.iter_mut().for_each(|x| *x = None);
    let mut best: Option<(usize, usize)> = None;
    let mut chars = s.get(from..).unwrap_or("").char_indices();
    let mut pos = from;
    loop {
        if best.is_none() && cur[0].is_none() {
            cur[0] = Some(pos);
        }
        for i in 0..m {
            if toks[i] == PTok::Star
                && let Some(st) = cur[i]
            {
                cur[i + 1] = Some(cur[i + 1].map_or(st, |o| o.min(st)));
            }
        }
        if let Some(st) = cur[m]
            && best.is_none_or(|(bs, be)| st < bs || (st == bs && pos > be))
        {
            best = Some((st, pos));
        }
        if let Some((bs, _)) = best {
            for x in cur.iter_mut() {
                if x.is_some_and(|v| v > bs) {
                    *x = None;
                }
            }
            if cur.iter().all(Option::is_none) {
                break;
            }
        }
        let Some((_, c)) = chars.next() else { break };
        spend(steps, m + 1)?;
        next.iter_mut().for_each(|x| *x = None);
        for (i, t) in toks.iter().enumerate() {
            let Some(st) = cur[i] else { continue };
            let target = match *t {
                PTok::Star => i,
                PTok::Any => i + 1,
                PTok::Lit(l) if l == c => i + 1,
                PTok::Lit(_) => continue,
            };
            next[target] = Some(next[target].map_or(st, |o| o.min(st)));
        }
        std::mem::swap(cur, next);
        pos += c.len_utf8();
    }
    Ok(best)
}

/// Fails with [`ExpandError::TooLong`] once an expansion's output is longer than
/// [`MAX_WORD_BYTES`].
fn bounded(len: usize, offset: usize) -> Result<(), ExpandError> {
    if len > MAX_WORD_BYTES {
        return Err(ExpandError::TooLong {
            offset,
            limit: MAX_WORD_BYTES,
        });
    }
    Ok(())
}

/// `${X/p/r}` and `${X//p/r}`, with Go's `ReplaceAllString` rules for empty matches. The
/// replacement is inserted literally.
fn replace(
    at: usize,
    pattern: &str,
    value: &str,
    replacement: &str,
    all: bool,
    steps: &mut u64,
) -> Result<String, ExpandError> {
    let toks = parse_shell_pattern(pattern).map_err(|reason| ExpandError::InvalidPattern {
        offset: at,
        pattern: pattern.to_owned(),
        reason,
    })?;
    let mut threads = Threads::new(&toks);
    let mut find = |from| find(&toks, value, from, &mut threads, steps).map_err(|e| e.at(at));
    if !all {
        return Ok(match find(0)? {
            Some((s, e)) => {
                let mut out = String::with_capacity(value.len() + replacement.len());
                out.push_str(value.get(..s).unwrap_or(""));
                out.push_str(replacement);
                out.push_str(value.get(e..).unwrap_or(""));
                out
            }
            None => value.to_owned(),
        });
    }
    let mut out = String::with_capacity(value.len());
    let mut last_end = 0;
    let mut search = 0;
    while search <= value.len() {
        let Some((s, e)) = find(search)? else {
            break;
        };
        out.push_str(value.get(last_end..s).unwrap_or(""));
        // No replacement for an empty match right after another match.
        if e > last_end || s == 0 {
            out.push_str(replacement);
            bounded(out.len(), at)?;
        }
        last_end = e;
        let width = value
            .get(search..)
            .and_then(|r| r.chars().next())
            .map_or(1, char::len_utf8);
        search = if search + width > e {
            search + width
        } else {
            e
        };
    }
    out.push_str(value.get(last_end..).unwrap_or(""));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Vec<(&'static str, &'static str)> {
        vec![("PWD", "/home"), ("NULL", ""), ("P", "a/b/c.tar.gz")]
    }

    fn x(word: &str) -> Result<String, ExpandError> {
        Lexer::new('\\').expand_word(word, &env())
    }

    #[test]
    fn trims_prefix_and_suffix() {
        assert_eq!(x("${P#*/}").unwrap(), "b/c.tar.gz");
        assert_eq!(x("${P##*/}").unwrap(), "c.tar.gz");
        assert_eq!(x("${P%.*}").unwrap(), "a/b/c.tar");
        assert_eq!(x("${P%%.*}").unwrap(), "a/b/c");
        assert_eq!(x("${P#x}").unwrap(), "a/b/c.tar.gz");
        assert_eq!(x("${P%\\*}").unwrap(), "a/b/c.tar.gz");
        assert_eq!(x("${UNSET#a}").unwrap(), "");
    }

    #[test]
    fn replaces_first_and_all() {
        assert_eq!(x("${P/\\//-}").unwrap(), "a-b/c.tar.gz");
        assert_eq!(x("${P//\\//-}").unwrap(), "a-b-c.tar.gz");
        assert_eq!(x("${P/b*/X}").unwrap(), "a/X");
        assert_eq!(x("${P//?/.}").unwrap(), "............");
        assert_eq!(x("${UNSET/a/b}").unwrap(), "");
    }

    #[test]
    fn invalid_pattern_escape_is_an_error() {
        let e = x("${P#\\a}").unwrap_err();
        assert!(matches!(e, ExpandError::InvalidPattern { .. }), "{e}");
    }

    #[test]
    fn required_messages() {
        let e = x("${X?must be set}").unwrap_err();
        assert_eq!(e.to_string(), "X: must be set");
        assert_eq!(
            x("${NULL:?}").unwrap_err().to_string(),
            "NULL: is not allowed to be empty"
        );
        assert_eq!(
            x("${X?}").unwrap_err().to_string(),
            "X: is not allowed to be unset"
        );
        assert_eq!(x("${NULL?}").unwrap(), "");
    }

    #[test]
    fn backtick_escape() {
        let lexer = Lexer::new('`');
        assert_eq!(lexer.expand_word("a`$PWD\\b", &env()).unwrap(), "a$PWD\\b");
        assert_eq!(lexer.expand_word("\"`\"\"", &env()).unwrap(), "\"");
    }

    #[test]
    fn records_matched_and_unmatched_names() {
        let r = Lexer::new('\\')
            .process_word("$PWD ${NOPE:-x} ${NULL}", &env())
            .unwrap();
        assert_eq!(r.value, "/home x ");
        assert_eq!(r.words, ["/home", "x"]);
        assert!(r.matched.contains("PWD") && r.matched.contains("NULL"));
        assert!(r.unmatched.contains("NOPE"));
    }

    #[test]
    fn skip_unset_env_keeps_references() {
        let lexer = Lexer::new('\\').with_skip_unset_env(true);
        assert_eq!(
            lexer.expand_word("$A ${B} ${C:-d} $PWD", &env()).unwrap(),
            "$A ${B} ${C:-d} /home"
        );
    }

    #[test]
    fn error_offsets_point_at_the_substitution() {
        assert_eq!(x("abc${}").unwrap_err().offset(), 3);
        assert_eq!(x("ab'cd").unwrap_err().offset(), 5);
    }

    #[test]
    fn env_sources_agree_and_last_definition_wins() {
        let vars = vec![EnvVar::new("A", "1"), EnvVar::new("A", "2")];
        let map = HashMap::from([("A".to_owned(), "2".to_owned())]);
        let f = FnEnv(|n: &str| (n == "A").then(|| "2".to_owned()));
        let lexer = Lexer::new('\\');
        for got in [
            lexer.expand_word("$A${B-x}", &vars),
            lexer.expand_word("$A${B-x}", &map),
            lexer.expand_word("$A${B-x}", &f),
            lexer.expand_word("$A${B-x}", &vars[..]),
        ] {
            assert_eq!(got.unwrap(), "2x");
        }
    }

    #[test]
    fn leading_byte_order_mark_is_dropped_like_go_text_scanner() {
        assert_eq!(x("\u{feff}$PWD").unwrap(), "/home");
        assert_eq!(x("a\u{feff}").unwrap(), "a\u{feff}");
    }

    #[test]
    fn nested_stars_stay_fast() {
        let value = "a".repeat(2000);
        let pattern = "*a".repeat(200) + "b";
        let env = vec![("V", value.as_str())];
        let word = format!("${{V##{pattern}}}");
        assert_eq!(Lexer::new('\\').expand_word(&word, &env).unwrap(), value);
        let word = format!("${{V//{pattern}/x}}");
        assert_eq!(Lexer::new('\\').expand_word(&word, &env).unwrap(), value);
    }

    #[test]
    fn pattern_matching_takes_its_steps_from_the_callers_budget() {
        let env = vec![("V", "abcabc")];
        let lexer = Lexer::new('\\');
        // `${V%%c*}` reads the six characters (reversed) against three states each.
        let mut steps = 100;
        assert_eq!(
            lexer
                .expand_word_within("${V%%c*}", &env, &mut steps)
                .unwrap(),
            "ab"
        );
        assert_eq!(steps, 100 - 6 * 3);
        // Words without a pattern take nothing.
        assert_eq!(
            lexer.expand_word_within("$V-x", &env, &mut steps).unwrap(),
            "abcabc-x"
        );
        assert_eq!(steps, 82);
        // Once the budget cannot pay for a character, the word fails at its `$`.
        let mut steps = 10;
        let err = lexer
            .expand_word_within("x ${V//b/B}", &env, &mut steps)
            .unwrap_err();
        assert_eq!(err, ExpandError::TooMuchMatching { offset: 2 });
        assert!(err.to_string().contains("budget of 4194304 steps"), "{err}");
    }

    #[test]
    fn every_search_of_a_replacement_pays_for_its_set_up() {
        // An empty pattern matches at every position, each found by its own search that reads
        // one character: seven searches of 17 steps and more do not fit in 100.
        let env = vec![("V", "abcdef")];
        let lexer = Lexer::new('\\');
        assert_eq!(
            lexer.expand_word("${V///-}", &env).unwrap(),
            "-a-b-c-d-e-f-"
        );
        let err = lexer
            .expand_word_within("${V///-}", &env, &mut 100)
            .unwrap_err();
        assert_eq!(err, ExpandError::TooMuchMatching { offset: 0 });
    }

    proptest::proptest! {
        #[test]
        fn plain_words_skip_the_scanner_with_the_same_result(
            word in "[a-c$'\"\\\\` {}:/\u{feff}-]{0,12}",
            escape in proptest::sample::select(vec!['\\', '`']),
        ) {
            let lexer = Lexer::new(escape);
            let env: HashMap<String, String> =
                [("a".to_owned(), "x y".to_owned())].into_iter().collect();
            let mut steps = MAX_MATCH_STEPS;
            let slow = lexer.run(&word, &env, false, false, &mut steps).map(|e| e.value);
            proptest::prop_assert_eq!(lexer.expand_word(&word, &env), slow);
        }
    }
}
