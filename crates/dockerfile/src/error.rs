//! Errors of this crate, and a caret snippet renderer for any [`Span`].
//!
//! Parse errors carry a [`Location`] (optional file name, span, rendered snippet) and a
//! [`SyntaxError`] saying what is wrong. Displayed, they read like
//!
//! ```text
//! Dockerfile:2:1: unknown instruction: RUNN
//!     2 | RUNN make
//!       | ^^^^
//! ```

use std::fmt;

use firebuild_plan::Span;

/// Where an error is: the file (for messages), the span, and the source excerpt rendered
/// with a caret under the column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// File name as the user gave it, when known.
    pub file: Option<String>,
    /// The offending region.
    pub span: Span,
    /// [`render_snippet`] of the source at `span` (empty when the span has no line).
    pub snippet: String,
}

impl Location {
    /// A location in `src` with its snippet rendered.
    pub fn new(src: &str, span: Span) -> Self {
        Self {
            file: None,
            span,
            snippet: render_snippet(src, span),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.span.start_line == 0 {
            // The whole file (e.g. "file with no instructions").
            return f.write_str(self.file.as_deref().unwrap_or("dockerfile"));
        }
        match &self.file {
            Some(file) => write!(f, "{file}:{}:{}", self.span.start_line, self.span.start_col),
            None => write!(f, "line {}:{}", self.span.start_line, self.span.start_col),
        }
    }
}

/// What is wrong with a Dockerfile. The messages follow buildkit's where buildkit has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SyntaxError {
    /// A physical line longer than buildkit's scanner accepts.
    #[error("dockerfile line greater than max allowed size of {limit}")]
    LineTooLong {
        /// The limit in bytes.
        limit: usize,
    },
    /// A parser directive given twice.
    #[error("only one {0} parser directive can be used")]
    DuplicateDirective(String),
    /// `# escape=` with something other than `\` or a backtick.
    #[error("invalid escape token '{0}' does not match ` or \\")]
    InvalidEscape(String),
    /// No instruction at all (empty file, only comments or blank lines).
    #[error("file with no instructions")]
    NoInstructions,
    /// `ENV KEY` / `LABEL KEY` without a value.
    #[error("{0} must have two arguments")]
    MissingValue(String),
    /// `ENV a=1 b` in the `name=value` form.
    #[error("syntax error - can't find = in {0:?}. Must be of the form: name=value")]
    MissingEquals(String),
    /// A JSON array whose elements are not all strings.
    #[error("when using JSON array syntax, arrays must be comprised of strings only")]
    JsonNotStrings,
    /// A here-document whose delimiter line never came.
    #[error("unterminated heredoc {0:?}")]
    UnterminatedHeredoc(String),
    /// An instruction keyword buildkit does not know.
    #[error("unknown instruction: {name}{}", did_you_mean(.suggestion))]
    UnknownInstruction {
        /// The keyword as written.
        name: String,
        /// The closest known instruction, when one is close (buildkit's suggestion).
        suggestion: Option<String>,
    },
    /// A `--flag` the instruction does not take.
    #[error("unknown flag: {flag} for {instruction}{}", did_you_mean(.suggestion))]
    UnknownFlag {
        /// The instruction, upper case.
        instruction: String,
        /// The flag name without dashes.
        flag: String,
        /// The closest flag the instruction takes, when one is close.
        suggestion: Option<String>,
    },
    /// A non-repeatable flag given twice.
    #[error("duplicate flag specified: {0}")]
    DuplicateFlag(String),
    /// `--from` without `=value`, or `--link=`.
    #[error("missing a value on flag: {0}")]
    MissingFlagValue(String),
    /// A boolean flag given something other than `true`/`false`.
    #[error("expecting boolean value for flag {flag}, not: {value}")]
    NotBool {
        /// Flag name.
        flag: String,
        /// The value given.
        value: String,
    },
    /// A flag value that does not parse (`--interval=5x`, `--network=foo`, a bad `--mount`).
    #[error("invalid value {value:?} for flag {flag}: {reason}")]
    BadFlagValue {
        /// Flag name.
        flag: String,
        /// The value given.
        value: String,
        /// Why it is invalid.
        reason: String,
    },
    /// An instruction that needs an argument got none.
    #[error("{0} requires at least one argument")]
    AtLeastOneArgument(String),
    /// An instruction that takes one argument got another count.
    #[error("{0} requires exactly one argument")]
    ExactlyOneArgument(String),
    /// COPY/ADD with fewer than two arguments.
    #[error(
        "{0} requires at least two arguments, but only one was provided. Destination could not be determined"
    )]
    NoDestination(String),
    /// ENV/LABEL/ARG with an empty name.
    #[error("{0} names can not be blank")]
    BlankName(String),
    /// COPY/ADD whose destination is a here-document.
    #[error("{0} cannot accept a heredoc as a destination")]
    HeredocDestination(String),
    /// FROM with two or more than three arguments, or a middle word other than AS.
    #[error("FROM requires either one or three arguments")]
    FromArguments,
    /// `FROM x AS 1bad`.
    #[error(
        "invalid name for build stage: {0:?}, name can't start with a number or contain symbols"
    )]
    StageName(String),
    /// SHELL (or another JSON-only instruction) in shell form.
    #[error("{0} requires the arguments to be in JSON form")]
    NotJson(String),
    /// `ONBUILD ONBUILD ...`.
    #[error("chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")]
    OnbuildChain,
    /// `ONBUILD FROM` / `ONBUILD MAINTAINER`.
    #[error("{0} isn't allowed as an ONBUILD trigger")]
    OnbuildTrigger(String),
    /// `HEALTHCHECK NONE something`.
    #[error("HEALTHCHECK NONE takes no arguments")]
    HealthcheckNoneArgs,
    /// `HEALTHCHECK CMD` without a command.
    #[error("missing command after HEALTHCHECK CMD")]
    HealthcheckMissingCommand,
    /// `HEALTHCHECK FOO`.
    #[error("unknown type {0:?} in HEALTHCHECK (try CMD)")]
    HealthcheckType(String),
    /// VOLUME with an empty path.
    #[error("VOLUME specified can not be an empty string")]
    EmptyVolume,
    /// Any other problem (used by plan resolution for its own span errors).
    #[error("{0}")]
    Other(String),
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(s) => format!(" (did you mean {s}?)"),
        None => String::new(),
    }
}

/// The option closest to `value` by edit distance, if within 2 edits (buildkit's
/// `suggest.Search`).
pub(crate) fn suggest<'a>(
    value: &str,
    options: &[&'a str],
    case_sensitive: bool,
) -> Option<&'a str> {
    if value.is_empty() {
        return None;
    }
    let norm = |s: &str| {
        if case_sensitive {
            s.to_owned()
        } else {
            s.to_lowercase()
        }
    };
    let value = norm(value);
    let mut best: Option<(usize, &'a str)> = None;
    for opt in options {
        let d = levenshtein(&value, &norm(opt));
        if d < 3 && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, opt));
        }
    }
    best.map(|(_, o)| o)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Errors of `firebuild-dockerfile`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input is larger than [`crate::ast::MAX_DOCKERFILE_BYTES`].
    TooLarge {
        /// Size of the input in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The input has more lines than [`crate::ast::MAX_DOCKERFILE_LINES`].
    TooManyLines {
        /// The limit.
        limit: usize,
    },
    /// The input is not UTF-8.
    NotUtf8 {
        /// Offset of the first invalid byte.
        offset: usize,
    },
    /// The Dockerfile is malformed at `location`.
    Syntax {
        /// Where (boxed to keep `Result`s small).
        location: Box<Location>,
        /// What.
        kind: SyntaxError,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::TooLarge { size, limit } => {
                write!(
                    f,
                    "dockerfile is {size} bytes, larger than the limit of {limit} bytes"
                )
            }
            Error::TooManyLines { limit } => write!(f, "dockerfile has more than {limit} lines"),
            Error::NotUtf8 { offset } => {
                write!(f, "dockerfile is not valid UTF-8 (byte offset {offset})")
            }
            Error::Syntax { location, kind } => {
                write!(f, "{location}: {kind}")?;
                if !location.snippet.is_empty() {
                    write!(f, "\n{}", location.snippet)?;
                }
                Ok(())
            }
        }
    }
}

impl Error {
    /// A syntax error at `span` of `src`, with its snippet rendered.
    pub fn at(src: &str, span: Span, kind: SyntaxError) -> Self {
        Error::Syntax {
            location: Box::new(Location::new(src, span)),
            kind,
        }
    }

    /// Names the file in the message (`Dockerfile:7:5: ...`).
    #[must_use]
    pub fn with_file(mut self, file: impl Into<String>) -> Self {
        if let Error::Syntax { location, .. } = &mut self {
            location.file = Some(file.into());
        }
        self
    }

    /// The syntax error kind, if this is a syntax error.
    pub fn kind(&self) -> Option<&SyntaxError> {
        match self {
            Error::Syntax { kind, .. } => Some(kind),
            _ => None,
        }
    }

    /// The span of a syntax error.
    pub fn span(&self) -> Option<Span> {
        match self {
            Error::Syntax { location, .. } => Some(location.span),
            _ => None,
        }
    }
}

/// Renders the first line of `span` in `src` with a gutter and carets under the spanned
/// columns:
///
/// ```text
///     7 | RUNN foo
///       | ^^^^
/// ```
///
/// Columns are 1-based characters; tabs before the column are repeated under the line so the
/// caret lines up. A span on line 0 or past the end renders as an empty string.
pub fn render_snippet(src: &str, span: Span) -> String {
    let Some(idx) = (span.start_line as usize).checked_sub(1) else {
        return String::new();
    };
    let Some(line) = src.split('\n').nth(idx) else {
        return String::new();
    };
    let line = line.strip_suffix('\r').unwrap_or(line);
    let line = if idx == 0 {
        line.strip_prefix('\u{feff}').unwrap_or(line)
    } else {
        line
    };
    let chars: Vec<char> = line.chars().collect();
    let start = (span.start_col.max(1) as usize - 1).min(chars.len());
    let end = if span.end_line == span.start_line && span.end_col as usize > start + 1 {
        (span.end_col as usize - 1).min(chars.len())
    } else if span.end_line > span.start_line {
        chars.len()
    } else {
        start + 1
    };
    let width = end.saturating_sub(start).max(1);
    let gutter = span.start_line.to_string();
    let pad = " ".repeat(gutter.len());
    let mut under = String::new();
    for c in &chars[..start] {
        under.push(if *c == '\t' { '\t' } else { ' ' });
    }
    under.push_str(&"^".repeat(width));
    format!("{gutter:>5} | {line}\n{pad:>5} | {under}")
}

/// An error and its sources joined on one line (`a: b: c`), for messages that must carry the
/// whole cause without a chain-printing caller.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(l: u32, c: u32, el: u32, ec: u32) -> Span {
        Span {
            start_line: l,
            start_col: c,
            end_line: el,
            end_col: ec,
        }
    }

    #[test]
    fn suggestions_are_within_two_edits() {
        let names = ["RUN", "COPY", "ENTRYPOINT"];
        assert_eq!(suggest("RUNN", &names, false), Some("RUN"));
        assert_eq!(suggest("cpy", &names, false), Some("COPY"));
        assert_eq!(suggest("ENTRYPOIN", &names, false), Some("ENTRYPOINT"));
        assert_eq!(suggest("FOOBAR", &names, false), None);
        assert_eq!(suggest("run", &names, true), None);
    }

    #[test]
    fn snippet_puts_carets_under_the_span() {
        let src = "FROM a\n  RUNN make\n";
        let s = render_snippet(src, span(2, 3, 2, 7));
        assert_eq!(s, "    2 |   RUNN make\n      |   ^^^^");
    }

    #[test]
    fn snippet_keeps_tabs_aligned_and_handles_out_of_range() {
        let src = "\tRUN x\n";
        assert_eq!(
            render_snippet(src, span(1, 2, 1, 2)),
            "    1 | \tRUN x\n      | \t^"
        );
        assert_eq!(render_snippet(src, span(0, 0, 0, 0)), "");
        assert_eq!(render_snippet(src, span(9, 1, 9, 1)), "");
    }

    #[test]
    fn display_names_file_line_column_and_shows_the_line() {
        let err = Error::at(
            "FROM a\nRUNN x\n",
            span(2, 1, 2, 5),
            SyntaxError::UnknownInstruction {
                name: "RUNN".into(),
                suggestion: Some("RUN".into()),
            },
        )
        .with_file("Dockerfile");
        assert_eq!(
            err.to_string(),
            "Dockerfile:2:1: unknown instruction: RUNN (did you mean RUN?)\n    2 | RUNN x\n      | ^^^^"
        );
        assert_eq!(err.span().map(|s| s.start_line), Some(2));
        let whole = Error::at("", Span::default(), SyntaxError::NoInstructions);
        assert_eq!(whole.to_string(), "dockerfile: file with no instructions");
        assert_eq!(
            whole.with_file("Dockerfile").to_string(),
            "Dockerfile: file with no instructions"
        );
    }
}
