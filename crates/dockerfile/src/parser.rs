//! The Dockerfile parser: a port of buildkit's `frontend/dockerfile/parser` with the same
//! line handling (directives, continuations, comments, here-documents) and the same
//! per-instruction argument parsers, producing an [`Ast`] whose dump equals buildkit's.

use std::collections::HashSet;

use firebuild_plan::Span;

use crate::ast::{
    Ast, Directive, Heredoc, MAX_DOCKERFILE_BYTES, MAX_DOCKERFILE_LINES, MAX_LINE_BYTES, Node,
    Warning,
};
use crate::error::{Error, SyntaxError};

/// Parses a Dockerfile.
///
/// Rejects inputs over [`MAX_DOCKERFILE_BYTES`] or [`MAX_DOCKERFILE_LINES`] before looking at
/// them. The error names no file; add one with [`Error::with_file`].
///
/// ```
/// let ast = firebuild_dockerfile::parse("FROM alpine\nRUN echo hi \\\n  there\n").unwrap();
/// assert_eq!(ast.nodes[1].args, ["echo hi   there"]);
/// assert_eq!((ast.nodes[1].span.start_line, ast.nodes[1].span.end_line), (2, 3));
/// ```
pub fn parse(src: &str) -> Result<Ast, Error> {
    check_size(src.len())?;
    Parser::new(src).run()
}

/// Parses a Dockerfile given as bytes: checks the size first, then that it is UTF-8.
pub fn parse_bytes(src: &[u8]) -> Result<Ast, Error> {
    check_size(src.len())?;
    let text = std::str::from_utf8(src).map_err(|e| Error::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    Parser::new(text).run()
}

fn check_size(len: usize) -> Result<(), Error> {
    if len > MAX_DOCKERFILE_BYTES {
        return Err(Error::TooLarge {
            size: len,
            limit: MAX_DOCKERFILE_BYTES,
        });
    }
    Ok(())
}

/// Go's `unicode.IsSpace` (the Unicode White_Space property).
pub(crate) fn is_space(c: char) -> bool {
    c.is_whitespace()
}

/// Buildkit's `reWhitespace`: `[\t\v\f\r ]`.
pub(crate) fn is_token_ws(c: char) -> bool {
    matches!(c, '\t' | '\u{0b}' | '\u{0c}' | '\r' | ' ')
}

/// RE2's `\s`: `[\t\n\f\r ]`.
fn is_re_space(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\u{0c}' | '\r' | ' ')
}

fn trim_newline(s: &str) -> &str {
    s.trim_end_matches(['\r', '\n'])
}

fn is_comment(line: &str) -> bool {
    line.trim_start_matches(is_space).starts_with('#')
}

/// Splits on runs of `[\t\v\f\r ]` (`reWhitespace.Split(s, -1)`, empty first/last parts
/// kept as Go does).
pub(crate) fn split_token_ws(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_sep = false;
    for (i, c) in s.char_indices() {
        if is_token_ws(c) {
            if !in_sep {
                out.push(s[start..i].to_owned());
                in_sep = true;
            }
        } else if in_sep {
            in_sep = false;
            start = i;
        }
    }
    out.push(if in_sep {
        String::new()
    } else {
        s[start..].to_owned()
    });
    out
}

/// Splits at the first run of `[\t\v\f\r ]` (`reWhitespace.Split(s, 2)`).
pub(crate) fn split2_token_ws(s: &str) -> (&str, Option<&str>) {
    match s.find(is_token_ws) {
        None => (s, None),
        Some(i) => {
            let rest = s[i..].trim_start_matches(is_token_ws);
            (&s[..i], Some(rest))
        }
    }
}

struct DirectiveState {
    done: bool,
    seen: HashSet<String>,
}

struct Parser<'a> {
    src: &'a str,
    lines: Vec<&'a str>,
    escape: char,
    directives_state: DirectiveState,
    directives: Vec<Directive>,
}

/// What a line parser returns: buildkit's `Next` chain as a list, the `json` attribute, and
/// the ONBUILD child.
struct Parsed {
    args: Vec<String>,
    json: bool,
    sub: Option<Box<Node>>,
}

impl Parsed {
    fn none() -> Self {
        Self {
            args: Vec::new(),
            json: false,
            sub: None,
        }
    }

    fn args(args: Vec<String>) -> Self {
        Self {
            args,
            json: false,
            sub: None,
        }
    }
}

/// A line parser error before it gets a location.
type LineResult<T> = Result<T, SyntaxError>;

impl<'a> Parser<'a> {
    fn new(src: &'a str) -> Self {
        Self {
            src,
            lines: {
                let mut lines = Vec::with_capacity(src.bytes().filter(|&b| b == b'\n').count() + 1);
                lines.extend(src.split_inclusive('\n'));
                lines
            },
            escape: '\\',
            directives_state: DirectiveState {
                done: false,
                seen: HashSet::new(),
            },
            directives: Vec::new(),
        }
    }

    fn err(&self, span: Span, kind: SyntaxError) -> Error {
        Error::at(self.src, span, kind)
    }

    fn line_span(&self, line: u32) -> Span {
        Span {
            start_line: line,
            start_col: 1,
            end_line: line,
            end_col: self.line_end_col(line),
        }
    }

    /// Column just past the last character of `line` (1-based), line ending excluded.
    fn line_end_col(&self, line: u32) -> u32 {
        let Some(text) = (line as usize)
            .checked_sub(1)
            .and_then(|i| self.lines.get(i))
        else {
            return 1;
        };
        let text = if line == 1 { strip_bom(text) } else { text };
        u32::try_from(trim_newline(text).chars().count())
            .unwrap_or(u32::MAX - 1)
            .saturating_add(1)
    }

    fn line_start_col(&self, line: u32) -> u32 {
        let Some(text) = (line as usize)
            .checked_sub(1)
            .and_then(|i| self.lines.get(i))
        else {
            return 1;
        };
        let text = if line == 1 { strip_bom(text) } else { text };
        let lead = text.chars().take_while(|c| is_space(*c)).count();
        u32::try_from(lead)
            .unwrap_or(u32::MAX - 1)
            .saturating_add(1)
    }

    fn run(mut self) -> Result<Ast, Error> {
        if self.lines.len() > MAX_DOCKERFILE_LINES {
            return Err(Error::TooManyLines {
                limit: MAX_DOCKERFILE_LINES,
            });
        }
        // Each instruction starts on a line that is neither blank nor a comment: their count
        // bounds the number of nodes.
        let mut starts = 0usize;
        for (i, line) in self.lines.iter().enumerate() {
            let lead = line.trim_start_matches(is_space);
            if !lead.is_empty() && !lead.starts_with('#') {
                starts += 1;
            }
            if trim_newline(line).len() > MAX_LINE_BYTES {
                let n = u32::try_from(i + 1).unwrap_or(u32::MAX);
                return Err(self.err(
                    Span::lines(n, n),
                    SyntaxError::LineTooLong {
                        limit: MAX_LINE_BYTES,
                    },
                ));
            }
        }

        let mut nodes: Vec<Node> = Vec::with_capacity(starts);
        let mut warnings: Vec<Warning> = Vec::new();
        let mut comments: Vec<String> = Vec::new();
        let mut next = 0usize; // index of the next physical line to read
        let mut current_line: u32 = 0;

        while next < self.lines.len() {
            let mut raw = self.lines[next];
            next += 1;
            if current_line == 0 {
                raw = strip_bom(raw);
            }
            if is_comment(raw) {
                let mut chars = raw.chars();
                chars.next();
                let comment = chars.as_str().trim();
                if comment.is_empty() {
                    comments.clear();
                } else {
                    comments.push(comment.to_owned());
                }
            }
            let (processed, directive_ok) = self
                .process_line(raw, true, current_line + 1)
                .map_err(|kind| self.err(self.line_span(current_line + 1), kind))?;
            if directive_ok {
                comments.pop();
            }
            current_line += 1;

            let start_line = current_line;
            let (first, mut is_end) = self.trim_continuation(processed);
            if is_end && first.is_empty() {
                continue;
            }
            let mut line = first.to_owned();

            let mut has_empty_continuation = false;
            while !is_end && next < self.lines.len() {
                let raw = self.lines[next];
                next += 1;
                let (processed, _) = self
                    .process_line(raw, false, current_line + 1)
                    .map_err(|kind| self.err(self.line_span(current_line + 1), kind))?;
                current_line += 1;
                if is_comment(raw) {
                    continue;
                }
                if processed.trim_start_matches(is_space).is_empty() {
                    has_empty_continuation = true;
                    continue;
                }
                let (part, end) = self.trim_continuation(processed);
                is_end = end;
                line.push_str(part);
            }

            if has_empty_continuation {
                warnings.push(Warning {
                    message: format!("Empty continuation line found in: {line}"),
                    span: Span::lines(current_line, current_line),
                });
            }

            let start_col = self.line_start_col(start_line);
            let end_line_of_text = current_line;
            let mut node = self
                .node_from_line(&line, std::mem::take(&mut comments))
                .map_err(|kind| {
                    let span = Span {
                        start_line,
                        start_col,
                        end_line: end_line_of_text,
                        end_col: self.line_end_col(end_line_of_text),
                    };
                    self.err(span, kind)
                })?;

            if can_contain_heredoc(&node) && line.contains("<<") {
                let docs = heredocs_from_line(&line);
                for mut doc in docs {
                    let mut terminated = false;
                    while next < self.lines.len() {
                        let raw = self.lines[next];
                        next += 1;
                        current_line += 1;
                        let mut candidate = trim_newline(raw);
                        if doc.chomp {
                            candidate = candidate.trim_start_matches('\t');
                        }
                        if candidate == doc.name {
                            terminated = true;
                            break;
                        }
                        doc.content.push_str(raw);
                    }
                    if !terminated {
                        let span = Span {
                            start_line,
                            start_col,
                            end_line: current_line.max(start_line),
                            end_col: self.line_end_col(current_line.max(start_line)),
                        };
                        return Err(self.err(span, SyntaxError::UnterminatedHeredoc(doc.name)));
                    }
                    node.heredocs.push(doc);
                }
            }

            node.span = Span {
                start_line,
                start_col,
                end_line: current_line,
                end_col: self.line_end_col(current_line),
            };
            if let Some(sub) = node.sub.as_mut() {
                sub.span = node.span;
            }
            node.original = line;
            nodes.push(node);
        }

        if nodes.is_empty() {
            // Buildkit reports the last line; the whole file is what is wrong.
            return Err(self.err(Span::default(), SyntaxError::NoInstructions));
        }

        Ok(Ast {
            directives: self.directives,
            nodes,
            warnings,
            escape: self.escape,
            source: self.src.to_owned(),
        })
    }

    /// Buildkit's `processLine`: strips the line ending (and leading whitespace on a first
    /// line), looks for a parser directive, and blanks comment lines. Returns the processed
    /// text and whether the line was a directive.
    fn process_line(
        &mut self,
        raw: &'a str,
        strip_left: bool,
        line_no: u32,
    ) -> LineResult<(&'a str, bool)> {
        let mut token = trim_newline(raw);
        if strip_left {
            token = token.trim_start_matches(is_space);
        }
        let directive_ok = self.possible_directive(token, line_no)?;
        let out = if is_comment(token) { "" } else { token };
        Ok((out, directive_ok))
    }

    fn possible_directive(&mut self, line: &str, line_no: u32) -> LineResult<bool> {
        if self.directives_state.done {
            return Ok(false);
        }
        let Some(rest) = line.strip_prefix('#') else {
            self.directives_state.done = true;
            return Ok(false);
        };
        let rest = rest.trim_start_matches(is_space);
        let Some((name, value)) = match_directive(rest) else {
            self.directives_state.done = true;
            return Ok(false);
        };
        let key = name.to_ascii_lowercase();
        if !matches!(key.as_str(), "syntax" | "escape" | "check") {
            self.directives_state.done = true;
            return Ok(false);
        }
        if !self.directives_state.seen.insert(key.clone()) {
            return Err(SyntaxError::DuplicateDirective(key));
        }
        if key == "escape" {
            match value {
                "`" => self.escape = '`',
                "\\" => self.escape = '\\',
                other => return Err(SyntaxError::InvalidEscape(other.to_owned())),
            }
        }
        self.directives.push(Directive {
            name: key,
            value: value.to_owned(),
            line: line_no,
        });
        Ok(true)
    }

    /// Buildkit's continuation regex `([^E])E[ \t]*$|^E[ \t]*$`, replaced by `$1`.
    fn trim_continuation(&self, line: &'a str) -> (&'a str, bool) {
        let t = line.trim_end_matches([' ', '\t']);
        let Some(before) = t.strip_suffix(self.escape) else {
            return (line, true);
        };
        if before.is_empty() || !before.ends_with(self.escape) {
            (before, false)
        } else {
            (line, true)
        }
    }

    fn node_from_line(&self, line: &str, comments: Vec<String>) -> LineResult<Node> {
        let (keyword, flags, args) = split_command(line);
        let command = if keyword.is_ascii() {
            keyword.to_ascii_lowercase()
        } else {
            keyword.to_lowercase()
        };
        let parsed = match command.as_str() {
            "add" | "copy" | "volume" => parse_maybe_json_to_list(args)?,
            "arg" => Parsed::args(
                parse_words(args, self.escape)
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
            ),
            "cmd" | "entrypoint" | "run" | "shell" => parse_maybe_json(args)?,
            "env" => parse_name_val(args, "ENV", self.escape)?,
            "label" => parse_name_val(args, "LABEL", self.escape)?,
            "expose" | "from" => Parsed::args(if args.is_empty() {
                Vec::new()
            } else {
                split_token_ws(args)
            }),
            "healthcheck" => parse_health_config(args)?,
            "maintainer" | "stopsignal" | "user" | "workdir" => Parsed::args(if args.is_empty() {
                Vec::new()
            } else {
                vec![args.to_owned()]
            }),
            "onbuild" => {
                if args.is_empty() {
                    Parsed::none()
                } else {
                    let mut child = self.node_from_line(args, Vec::new())?;
                    child.original = args.to_owned();
                    Parsed {
                        args: Vec::new(),
                        json: false,
                        sub: Some(Box::new(child)),
                    }
                }
            }
            _ => Parsed::args(vec![String::new()]),
        };
        Ok(Node {
            command,
            keyword: keyword.to_owned(),
            flags,
            args: parsed.args,
            json: parsed.json,
            sub: parsed.sub,
            heredocs: Vec::new(),
            // Set by the caller, which owns the logical line.
            original: String::new(),
            comments,
            span: Span::default(),
        })
    }
}

fn strip_bom(s: &str) -> &str {
    s.strip_prefix('\u{feff}').unwrap_or(s)
}

/// Matches `^([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$` (RE2 semantics).
fn match_directive(s: &str) -> Option<(&str, &str)> {
    let mut chars = s.char_indices();
    let (_, first) = chars.next()?;
    if !first.is_ascii_alphabetic() {
        return None;
    }
    let name_end = s
        .char_indices()
        .find(|(_, c)| !c.is_ascii_alphanumeric())
        .map_or(s.len(), |(i, _)| i);
    let name = &s[..name_end];
    let rest = s[name_end..].trim_start_matches(is_re_space);
    let after_eq = rest.strip_prefix('=')?;
    let value_start = after_eq.trim_start_matches(is_re_space);
    if value_start.is_empty() {
        // `.+?` needs a character: the greedy `\s*` gives back its last one.
        let last = after_eq.char_indices().last()?;
        return Some((name, &after_eq[last.0..]));
    }
    Some((name, value_start.trim_end_matches(is_re_space)))
}

/// Buildkit's `splitCommand`: keyword, flags, and the rest (trimmed).
fn split_command(line: &str) -> (&str, Vec<String>, &str) {
    let (cmd, rest) = split2_token_ws(line.trim());
    match rest {
        Some(rest) => {
            let (args, flags) = extract_builder_flags(rest);
            (cmd, flags, args.trim())
        }
        None => (cmd, Vec::new(), ""),
    }
}

/// Buildkit's `extractBuilderFlags`: leading `--flag[=value]` words (quotes removed, `\`
/// escapes resolved), stopping at the first word not starting with `--` or after `--`.
fn extract_builder_flags(line: &str) -> (&str, Vec<String>) {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    // Most instructions have no flags: answer without scanning character by character.
    let trimmed = line.trim_start_matches(is_space);
    if !trimmed.starts_with("--") {
        return (trimmed, Vec::new());
    }
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut pos = 0;
    while pos <= chars.len() {
        let at_end = pos == chars.len();
        let ch = if at_end { '\0' } else { chars[pos].1 };
        if phase == Phase::Spaces {
            if at_end {
                break;
            }
            if is_space(ch) {
                pos += 1;
                continue;
            }
            let next_is_dash = chars.get(pos + 1).is_some_and(|(_, c)| *c == '-');
            if ch != '-' || !next_is_dash {
                return (&line[chars[pos].0..], words);
            }
            phase = Phase::Word;
        }
        if at_end {
            if word != "--" && (blank_ok || !word.is_empty()) {
                words.push(word);
            }
            break;
        }
        if phase == Phase::Word {
            if is_space(ch) {
                phase = Phase::Spaces;
                if word == "--" {
                    return (&line[chars[pos].0..], words);
                }
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                word.clear();
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
                pos += 1;
                continue;
            }
            let mut c = ch;
            if c == '\\' {
                if pos + 1 == chars.len() {
                    pos += 1;
                    continue;
                }
                pos += 1;
                c = chars[pos].1;
            }
            word.push(c);
            pos += 1;
            continue;
        }
        // in quote
        if ch == quote {
            phase = Phase::Word;
            pos += 1;
            continue;
        }
        let mut c = ch;
        if c == '\\' {
            if pos + 1 == chars.len() {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            pos += 1;
            c = chars[pos].1;
        }
        word.push(c);
        pos += 1;
    }
    ("", words)
}

/// Buildkit's `parseWords`: whitespace-separated words, quotes and escapes kept. Each word
/// is a slice of `rest` (an escape character ending the input is dropped).
pub(crate) fn parse_words(rest: &str, escape: char) -> Vec<&str> {
    let mut words = Vec::new();
    let mut it = rest.char_indices().peekable();
    let mut in_word = false;
    let mut in_quote = false;
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut start = 0;
    while let Some((i, ch)) = it.next() {
        if !in_word {
            if is_space(ch) {
                continue;
            }
            in_word = true;
            start = i;
        }
        if !in_quote {
            if is_space(ch) {
                if blank_ok || i > start {
                    words.push(&rest[start..i]);
                }
                in_word = false;
                blank_ok = false;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                in_quote = true;
            }
        } else if ch == quote {
            in_quote = false;
        }
        let escapes = ch == escape && (!in_quote || quote != '\'');
        if escapes && it.next().is_none() {
            // A trailing escape character is dropped.
            if blank_ok || i > start {
                words.push(&rest[start..i]);
            }
            return words;
        }
    }
    if in_word && (blank_ok || start < rest.len()) {
        words.push(&rest[start..]);
    }
    words
}

fn parse_name_val(rest: &str, key: &str, escape: char) -> LineResult<Parsed> {
    let words = parse_words(rest, escape);
    if words.is_empty() {
        return Ok(Parsed::none());
    }
    if !words[0].contains('=') {
        let (name, value) = split2_token_ws(rest);
        let Some(value) = value else {
            return Err(SyntaxError::MissingValue(key.to_owned()));
        };
        return Ok(Parsed::args(vec![
            name.to_owned(),
            value.to_owned(),
            String::new(),
        ]));
    }
    let mut args = Vec::with_capacity(words.len() * 3);
    for word in words {
        let Some((k, v)) = word.split_once('=') else {
            return Err(SyntaxError::MissingEquals(word.to_owned()));
        };
        args.push(k.to_owned());
        args.push(v.to_owned());
        args.push("=".to_owned());
    }
    Ok(Parsed::args(args))
}

enum JsonOutcome {
    Array(Vec<String>),
    NotStrings,
    NotJson,
}

fn parse_json(rest: &str) -> JsonOutcome {
    let rest = rest.trim_start_matches(is_space);
    if !rest.starts_with('[') {
        return JsonOutcome::NotJson;
    }
    let fixed = replace_lone_surrogates(rest);
    let Ok(values) = serde_json::from_str::<Vec<serde_json::Value>>(&fixed) else {
        return JsonOutcome::NotJson;
    };
    let mut out = Vec::with_capacity(values.len());
    for v in values {
        match v {
            serde_json::Value::String(s) => out.push(s),
            _ => return JsonOutcome::NotStrings,
        }
    }
    JsonOutcome::Array(out)
}

/// Go's JSON decoder turns an unpaired `\uD800`-`\uDFFF` escape into U+FFFD where
/// `serde_json` fails: rewrite those escapes to `\ufffd` first (only inside strings).
fn replace_lone_surrogates(json: &str) -> std::borrow::Cow<'_, str> {
    if !json.contains("\\u") {
        return std::borrow::Cow::Borrowed(json);
    }
    let hex = |s: &str| -> Option<u32> {
        let digits = s.get(2..6)?;
        if s.starts_with("\\u") && digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            u32::from_str_radix(digits, 16).ok()
        } else {
            None
        }
    };
    let mut out = String::with_capacity(json.len());
    let mut in_string = false;
    let mut i = 0;
    while i < json.len() {
        let rest = &json[i..];
        let Some(c) = rest.chars().next() else { break };
        if !in_string {
            in_string = c == '"';
            out.push(c);
            i += c.len_utf8();
            continue;
        }
        match c {
            '"' => {
                in_string = false;
                out.push(c);
                i += 1;
            }
            '\\' => match hex(rest) {
                Some(0xD800..=0xDBFF) => match hex(&rest[6..]) {
                    Some(0xDC00..=0xDFFF) => {
                        out.push_str(&rest[..12]);
                        i += 12;
                    }
                    _ => {
                        out.push_str("\\ufffd");
                        i += 6;
                    }
                },
                Some(0xDC00..=0xDFFF) => {
                    out.push_str("\\ufffd");
                    i += 6;
                }
                _ => {
                    // Any other escape: copy the backslash and the escaped character.
                    out.push('\\');
                    i += 1;
                    if let Some(next) = json[i..].chars().next() {
                        out.push(next);
                        i += next.len_utf8();
                    }
                }
            },
            _ => {
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    std::borrow::Cow::Owned(out)
}

fn parse_maybe_json(rest: &str) -> LineResult<Parsed> {
    if rest.is_empty() {
        return Ok(Parsed::none());
    }
    match parse_json(rest) {
        JsonOutcome::Array(args) => Ok(Parsed {
            args,
            json: true,
            sub: None,
        }),
        JsonOutcome::NotStrings => Err(SyntaxError::JsonNotStrings),
        JsonOutcome::NotJson => Ok(Parsed::args(vec![rest.to_owned()])),
    }
}

fn parse_maybe_json_to_list(rest: &str) -> LineResult<Parsed> {
    match parse_json(rest) {
        JsonOutcome::Array(args) => Ok(Parsed {
            args,
            json: true,
            sub: None,
        }),
        JsonOutcome::NotStrings => Err(SyntaxError::JsonNotStrings),
        JsonOutcome::NotJson if rest.is_empty() => Ok(Parsed::none()),
        JsonOutcome::NotJson => Ok(Parsed::args(split_token_ws(rest))),
    }
}

fn parse_health_config(rest: &str) -> LineResult<Parsed> {
    let sep = rest.find(is_space).unwrap_or(rest.len());
    if sep == 0 {
        return Ok(Parsed::none());
    }
    let typ = &rest[..sep];
    let cmd = rest[sep..].trim_start_matches(is_space);
    let parsed = parse_maybe_json(cmd)?;
    let mut args = Vec::with_capacity(parsed.args.len() + 1);
    args.push(typ.to_owned());
    args.extend(parsed.args);
    Ok(Parsed {
        args,
        json: parsed.json,
        sub: None,
    })
}

fn can_contain_heredoc(node: &Node) -> bool {
    let target = match (&node.command[..], &node.sub) {
        ("onbuild", Some(sub)) => sub.as_ref(),
        _ => node,
    };
    matches!(target.command.as_str(), "add" | "copy" | "run") && !target.json
}

/// The here-documents a line opens, in order (buildkit's `heredocsFromLine`).
fn heredocs_from_line(line: &str) -> Vec<Heredoc> {
    let Some(words) = lex_words(line, true, true) else {
        return Vec::new();
    };
    words.iter().filter_map(|w| parse_heredoc_word(w)).collect()
}

/// Buildkit's `ParseHeredoc` on one word: `[fd]<<[-]NAME` with NAME possibly quoted.
/// Returns `None` when the word is not a here-document opener.
pub(crate) fn parse_heredoc_word(word: &str) -> Option<Heredoc> {
    let digits = word.len() - word.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let fd_text = &word[..digits];
    let after = word[digits..].strip_prefix("<<")?;
    let (chomp, rest) = match after.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, after),
    };
    if rest.contains('<') || rest.is_empty() {
        return None;
    }
    let fd = fd_text.parse::<u32>().unwrap_or(0);
    let words = lex_words(rest, false, false)?;
    if words.len() != 1 {
        return None;
    }
    let raw = lex_words(rest, true, false)?;
    if raw.len() != words.len() {
        return None;
    }
    let quotes = |s: &str| s.chars().filter(|c| *c == '\'' || *c == '"').count();
    let expand = quotes(&words[0]) == quotes(&raw[0]);
    Some(Heredoc {
        name: words[0].clone(),
        fd,
        expand,
        chomp,
        content: String::new(),
    })
}

/// A small port of buildkit's shell lexer `ProcessWords` with an empty environment and
/// unset variables kept as written: splits `s` into words, honouring quotes and `\`
/// escapes. `raw_quotes`/`raw_escapes` keep quote characters/escape characters in the
/// output. Returns `None` on an unterminated quote.
fn lex_words(s: &str, raw_quotes: bool, raw_escapes: bool) -> Option<Vec<String>> {
    let chars: Vec<char> = s.chars().collect();
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut i = 0;
    while i < chars.len() {
        let ch = chars[i];
        match ch {
            '\'' => {
                i += 1;
                let mut part = String::new();
                if raw_quotes {
                    part.push('\'');
                }
                loop {
                    let c = *chars.get(i)?;
                    i += 1;
                    if c == '\'' {
                        break;
                    }
                    part.push(c);
                }
                if raw_quotes {
                    part.push('\'');
                }
                word.push_str(&part);
                in_word = true;
            }
            '"' => {
                i += 1;
                let mut part = String::new();
                if raw_quotes {
                    part.push('"');
                }
                loop {
                    let c = *chars.get(i)?;
                    if c == '"' {
                        i += 1;
                        break;
                    }
                    i += 1;
                    let mut out = c;
                    if c == '\\' {
                        if raw_escapes {
                            part.push(c);
                        }
                        match chars.get(i) {
                            None => continue,
                            Some('"' | '$' | '\\') => {
                                out = chars[i];
                                i += 1;
                            }
                            Some(_) => {}
                        }
                    }
                    part.push(out);
                }
                if raw_quotes {
                    part.push('"');
                }
                word.push_str(&part);
                in_word = true;
            }
            '\\' => {
                i += 1;
                if raw_escapes {
                    word.push('\\');
                }
                let Some(&next) = chars.get(i) else {
                    break;
                };
                i += 1;
                word.push(next);
                in_word = true;
            }
            c if is_space(c) => {
                i += 1;
                if in_word && !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                i += 1;
                word.push(c);
                in_word = true;
            }
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    Some(words)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The former character-vector port of `parseWords`, kept as the oracle for the
    /// slice-based [`parse_words`].
    fn parse_words_reference(rest: &str, escape: char) -> Vec<String> {
        #[derive(PartialEq)]
        enum Phase {
            Spaces,
            Word,
            Quote,
        }
        let chars: Vec<char> = rest.chars().collect();
        let mut words = Vec::new();
        let mut phase = Phase::Spaces;
        let mut quote = '\0';
        let mut blank_ok = false;
        let mut word = String::new();
        let mut pos = 0;
        while pos <= chars.len() {
            let at_end = pos == chars.len();
            let mut ch = if at_end { '\0' } else { chars[pos] };
            if phase == Phase::Spaces {
                if at_end {
                    break;
                }
                if is_space(ch) {
                    pos += 1;
                    continue;
                }
                phase = Phase::Word;
            }
            if at_end {
                if blank_ok || !word.is_empty() {
                    words.push(word);
                }
                break;
            }
            if phase == Phase::Word {
                if is_space(ch) {
                    phase = Phase::Spaces;
                    if blank_ok || !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                    word.clear();
                    blank_ok = false;
                    pos += 1;
                    continue;
                }
                if ch == '\'' || ch == '"' {
                    quote = ch;
                    blank_ok = true;
                    phase = Phase::Quote;
                }
                if ch == escape {
                    if pos + 1 == chars.len() {
                        pos += 1;
                        continue;
                    }
                    word.push(ch);
                    pos += 1;
                    ch = chars[pos];
                }
                word.push(ch);
                pos += 1;
                continue;
            }
            // in quote
            if ch == quote {
                phase = Phase::Word;
            }
            if ch == escape && quote != '\'' {
                if pos + 1 == chars.len() {
                    phase = Phase::Word;
                    pos += 1;
                    continue;
                }
                pos += 1;
                word.push(ch);
                ch = chars[pos];
            }
            word.push(ch);
            pos += 1;
        }
        words
    }

    proptest! {
        #[test]
        fn slice_words_equal_the_reference(s in "[a-c =\\\\`'\"\t\u{a0}é]{0,24}") {
            for escape in ['\\', '`'] {
                prop_assert_eq!(parse_words(&s, escape), parse_words_reference(&s, escape));
            }
        }
    }

    fn node(src: &str) -> Node {
        let ast = parse(src).unwrap();
        ast.nodes.into_iter().last().unwrap()
    }

    #[test]
    fn words_split_like_buildkit() {
        // buildkit's TestParseWords.
        let cases: &[(&str, &[&str])] = &[
            ("foo", &["foo"]),
            ("foo bar", &["foo", "bar"]),
            ("foo\\ bar", &["foo\\ bar"]),
            ("foo=bar", &["foo=bar"]),
            ("foo bar 'abc xyz'", &["foo", "bar", "'abc xyz'"]),
            ("foo bar \"abc xyz\"", &["foo", "bar", "\"abc xyz\""]),
            ("àöû", &["àöû"]),
            ("föo bàr \"âbc xÿz\"", &["föo", "bàr", "\"âbc xÿz\""]),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_words(input, '\\'), *expected, "{input}");
        }
    }

    #[test]
    fn overlong_lines_fail_like_buildkit_scanner() {
        // buildkit's TestParseReturnsScannerErrors.
        let src = format!("\n\t\tFROM image\n\t\tLABEL test={}\n", "a".repeat(65536));
        let err = parse(&src).unwrap_err();
        assert_eq!(
            err.kind().map(ToString::to_string).as_deref(),
            Some("dockerfile line greater than max allowed size of 65535")
        );
        let ok = format!("FROM a\nLABEL t={}\n", "a".repeat(MAX_LINE_BYTES - 8));
        assert!(parse(&ok).is_ok());
    }

    #[test]
    fn flags_are_split_from_arguments() {
        let n = node("COPY --from=\"a b\" --link -- --x y\n");
        assert_eq!(n.flags, ["--from=a b", "--link"]);
        assert_eq!(n.args, ["--x", "y"]);
    }

    #[test]
    fn directives_are_read_until_the_first_other_line() {
        let ast =
            parse("# syntax=docker/dockerfile:1\n# escape=`\n# check=skip=all\nFROM a\n").unwrap();
        assert_eq!(ast.escape, '`');
        assert_eq!(ast.directive("syntax"), Some("docker/dockerfile:1"));
        assert_eq!(ast.directive("check"), Some("skip=all"));
        assert_eq!(ast.directives[1].line, 2);
        let late = parse("FROM a\n# escape=`\nRUN a \\\n b\n").unwrap();
        assert_eq!(late.escape, '\\');
        assert_eq!(late.nodes[1].args, ["a  b"]);
    }

    #[test]
    fn duplicate_and_invalid_directives_are_errors() {
        let err = parse("# escape=`\n# escape=\\\nFROM a\n").unwrap_err();
        assert_eq!(
            err.kind(),
            Some(&SyntaxError::DuplicateDirective("escape".into()))
        );
        assert_eq!(err.span().unwrap().start_line, 2);
        let err = parse("# escape=x\nFROM a\n").unwrap_err();
        assert_eq!(err.kind(), Some(&SyntaxError::InvalidEscape("x".into())));
    }

    #[test]
    fn heredoc_word_parsing_follows_buildkit() {
        let h = parse_heredoc_word("<<EOF").unwrap();
        assert_eq!(
            (h.name.as_str(), h.expand, h.chomp, h.fd),
            ("EOF", true, false, 0)
        );
        let h = parse_heredoc_word("<<-'EOF'").unwrap();
        assert_eq!((h.name.as_str(), h.expand, h.chomp), ("EOF", false, true));
        let h = parse_heredoc_word("3<<\"E F\"").unwrap();
        assert_eq!((h.name.as_str(), h.expand, h.fd), ("E F", false, 3));
        assert!(parse_heredoc_word("<<").is_none());
        assert!(parse_heredoc_word("a<<EOF").is_none());
        assert!(parse_heredoc_word("<<<EOF").is_none());
    }

    #[test]
    fn unpaired_surrogates_decode_to_replacement_like_go() {
        let n = node("CMD [\"a\\ud800b\", \"\\udc00\", \"\\ud83d\\ude00\", \"\\ud800\\u0041\"]\n");
        assert!(n.json);
        assert_eq!(n.args, ["a\u{fffd}b", "\u{fffd}", "😀", "\u{fffd}A"]);
        let n = node("CMD [\"\\\\ud800\"]\n");
        assert_eq!(n.args, ["\\ud800"]);
    }

    #[test]
    fn unknown_instructions_keep_one_empty_argument() {
        let n = node("FROM a\nFOO bar baz\n");
        assert_eq!(n.command, "foo");
        assert_eq!(n.args, [""]);
    }

    #[test]
    fn crlf_lines_are_handled() {
        let ast = parse("FROM a\r\nRUN x \\\r\n  y\r\n").unwrap();
        assert_eq!(ast.nodes[1].args, ["x   y"]);
        assert_eq!(ast.nodes[1].span.end_col, 4);
    }

    #[test]
    fn size_limits_are_checked_first() {
        let big = vec![b'#'; MAX_DOCKERFILE_BYTES + 1];
        assert!(matches!(parse_bytes(&big), Err(Error::TooLarge { .. })));
        let long = format!("FROM a\nRUN {}\n", "x".repeat(MAX_LINE_BYTES));
        let err = parse(&long).unwrap_err();
        assert!(matches!(err.kind(), Some(SyntaxError::LineTooLong { .. })));
        assert_eq!(err.span().unwrap().start_line, 2);
        assert!(matches!(
            parse_bytes(b"FROM \xff\n"),
            Err(Error::NotUtf8 { offset: 5 })
        ));
    }
}
