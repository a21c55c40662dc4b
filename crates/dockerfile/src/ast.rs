//! The parse tree of a Dockerfile, as buildkit's `parser.Node` has it but flattened into
//! Rust types: one [`Node`] per instruction, each with its [`Span`], original text, flags,
//! arguments and here-documents.
//!
//! Nothing in the tree is expanded: words are kept exactly as buildkit's line parsers leave
//! them (quotes and escapes of shell-form text included).

use firebuild_plan::Span;

/// Largest Dockerfile [`crate::parse`] accepts, in bytes (16 MiB).
pub const MAX_DOCKERFILE_BYTES: usize = 16 * 1024 * 1024;

/// Largest number of lines [`crate::parse`] accepts.
pub const MAX_DOCKERFILE_LINES: usize = 1_000_000;

/// Longest physical line buildkit accepts, in bytes without the line ending (its scanner's
/// 64 KiB token limit).
pub const MAX_LINE_BYTES: usize = 65_535;

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ast {
    /// Parser directives found at the top of the file (`# syntax=`, `# escape=`, `# check=`).
    pub directives: Vec<Directive>,
    /// The instructions, in file order.
    pub nodes: Vec<Node>,
    /// Non-fatal findings (empty continuation lines).
    pub warnings: Vec<Warning>,
    /// The escape character in force (`\` unless `# escape=` changed it to a backtick).
    pub escape: char,
    /// The source text (BOM included), kept to render error snippets.
    pub source: String,
}

impl Ast {
    /// The value of a parser directive (`"syntax"`, `"escape"`, `"check"`), if present.
    pub fn directive(&self, name: &str) -> Option<&str> {
        self.directives
            .iter()
            .find(|d| d.name.eq_ignore_ascii_case(name))
            .map(|d| d.value.as_str())
    }
}

/// A parser directive (`# escape=\``).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// Lower-cased directive name: `syntax`, `escape` or `check`.
    pub name: String,
    /// The value, trimmed.
    pub value: String,
    /// 1-based line of the directive.
    pub line: u32,
}

/// A non-fatal finding of the parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// Short description (`Empty continuation line found in: RUN ...`).
    pub message: String,
    /// Where it was found.
    pub span: Span,
}

/// One instruction of the Dockerfile.
///
/// `args` holds what buildkit's node chain holds after the instruction node:
///
/// | instruction | `args` |
/// |---|---|
/// | RUN, CMD, ENTRYPOINT, SHELL (shell form) | one string, the rest of the line |
/// | same, JSON form (`json == true`) | one string per array element |
/// | ADD, COPY, VOLUME | JSON elements, or whitespace-separated words |
/// | FROM, EXPOSE | whitespace-separated words |
/// | ENV, LABEL | triples `key`, `value`, `"="` (or `""` for the legacy `KEY value` form) |
/// | ARG | words (`name` or `name=value`), quotes kept |
/// | USER, WORKDIR, STOPSIGNAL, MAINTAINER | one string, the rest of the line |
/// | HEALTHCHECK | the type word (`CMD`, `NONE`...) then the command as for CMD |
/// | ONBUILD | empty; the trigger is in `sub` |
/// | unknown instruction | one empty string (buildkit ignores the arguments) |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Lower-cased instruction keyword (`run`, `copy`, ... or an unknown word).
    pub command: String,
    /// The keyword as written (`Run`, `RUN`).
    pub keyword: String,
    /// Instruction flags as written after quote removal (`--from=build`, `--link`).
    pub flags: Vec<String>,
    /// The arguments (see the table above).
    pub args: Vec<String>,
    /// Whether the arguments came from a JSON array (exec form).
    pub json: bool,
    /// The trigger instruction of an `ONBUILD`.
    pub sub: Option<Box<Node>>,
    /// Here-documents attached to the instruction (RUN, COPY, ADD and their ONBUILD forms).
    pub heredocs: Vec<Heredoc>,
    /// The logical line: continuation lines joined, comment lines inside them dropped.
    pub original: String,
    /// Comment lines directly above the instruction (text after `#`, trimmed).
    pub comments: Vec<String>,
    /// Where the instruction is, here-document bodies included.
    pub span: Span,
}

impl Node {
    /// Buildkit's flattened argument list (`nodeArgs`): for ONBUILD, the trigger's keyword
    /// followed by its arguments; otherwise `args`.
    pub fn flat_args(&self) -> Vec<String> {
        match &self.sub {
            Some(sub) => {
                let mut out = Vec::with_capacity(sub.args.len() + 1);
                out.push(sub.keyword.clone());
                out.extend(sub.flat_args());
                out
            }
            None => self.args.clone(),
        }
    }
}

/// A here-document (`<<EOF` ... `EOF`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter word with quotes removed (`EOF`).
    pub name: String,
    /// The file descriptor written before `<<` (`3<<EOF`), 0 when absent.
    pub fd: u32,
    /// Whether the body is subject to expansion (the delimiter was not quoted).
    pub expand: bool,
    /// `<<-`: leading tabs are stripped from each body line ([`Heredoc::body`]).
    pub chomp: bool,
    /// The raw body: every line up to the delimiter line, line endings included.
    pub content: String,
}

impl Heredoc {
    /// The body as the instruction uses it: `content` with leading tabs removed from every
    /// line when `chomp` (`<<-`) is set.
    pub fn body(&self) -> String {
        if !self.chomp {
            return self.content.clone();
        }
        let mut out = String::with_capacity(self.content.len());
        for line in self.content.split_inclusive('\n') {
            out.push_str(line.trim_start_matches('\t'));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chomped_heredoc_body_loses_leading_tabs_only() {
        let doc = Heredoc {
            name: "EOF".into(),
            fd: 0,
            expand: true,
            chomp: true,
            content: "\t\techo a\n  \tb\n\tc\n".into(),
        };
        assert_eq!(doc.body(), "echo a\n  \tb\nc\n");
        let plain = Heredoc {
            chomp: false,
            ..doc
        };
        assert_eq!(plain.body(), "\t\techo a\n  \tb\n\tc\n");
    }
}
