//! Buildkit's `Node.Dump()` format: one `(cmd ["flag" ...] "arg" ...)` line per instruction,
//! every string quoted as Go's `strconv.Quote` does.

use std::fmt::Write as _;

use crate::ast::{Ast, Node};

impl Ast {
    /// Renders the tree as buildkit's `Dump()` does, one line per instruction, each ending in
    /// a newline.
    ///
    /// ```
    /// let ast = firebuild_dockerfile::parse("FROM a\nONBUILD RUN [\"x\"]\nENV k v\n").unwrap();
    /// assert_eq!(ast.dump(), "(from \"a\")\n(onbuild (run \"x\"))\n(env \"k\" \"v\" \"\")\n");
    /// ```
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            out.push('(');
            out.push_str(&node.dump());
            out.push_str(")\n");
        }
        out
    }
}

impl Node {
    /// One instruction in buildkit's dump format, without the outer parentheses.
    pub fn dump(&self) -> String {
        let mut s = self.command.clone();
        if !self.flags.is_empty() {
            s.push_str(" [");
            for (i, flag) in self.flags.iter().enumerate() {
                if i > 0 {
                    s.push(' ');
                }
                s.push_str(&go_quote(flag));
            }
            s.push(']');
        }
        if let Some(sub) = &self.sub {
            s.push_str(" (");
            s.push_str(&sub.dump());
            s.push(')');
        }
        for arg in &self.args {
            s.push(' ');
            s.push_str(&go_quote(arg));
        }
        s.trim().to_owned()
    }
}

/// Quotes `s` exactly as Go's `strconv.Quote`: `"` and `\` escaped, `\a \b \f \n \r \t \v`
/// for those controls, other non-printable characters as `\xHH`, `\uHHHH` or `\UHHHHHHHH`,
/// printable Unicode kept as is.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            ' '..='~' if c != '"' && c != '\\' => out.push(c),
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{07}' => out.push_str("\\a"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{0b}' => out.push_str("\\v"),
            c if is_go_printable(c) => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if (c as u32) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

/// An approximation of Go's `strconv.IsPrint` (categories L, M, N, P, S and U+0020) without
/// Unicode tables: control, whitespace other than space, format characters, surrogates,
/// private-use and non-characters are not printable; unassigned code points are treated as
/// printable.
fn is_go_printable(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    let u = c as u32;
    let format = matches!(
        u,
        0x00AD
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x180E
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
    );
    let private_use = matches!(u, 0xE000..=0xF8FF | 0xF0000..=0xFFFFD | 0x100000..=0x10FFFD);
    let non_character = matches!(u, 0xFDD0..=0xFDEF) || (u & 0xFFFE) == 0xFFFE;
    !(format || private_use || non_character)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_matches_go() {
        assert_eq!(go_quote("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(
            go_quote("\u{7}\u{8}\u{c}\n\r\t\u{b}\0\u{1b}\u{7f}"),
            r#""\a\b\f\n\r\t\v\x00\x1b\x7f""#
        );
        assert_eq!(go_quote("♥ ☃ é"), "\"♥ ☃ é\"");
        assert_eq!(
            go_quote("\u{a0}\u{200b}\u{feff}"),
            r#""\u00a0\u200b\ufeff""#
        );
        assert_eq!(go_quote("\u{10ffff}"), r#""\U0010ffff""#);
        assert_eq!(go_quote("\u{85}"), r#""\u0085""#);
    }

    #[test]
    fn node_dump_shows_flags_children_and_args() {
        let ast =
            crate::parse("COPY --from=a --link x y\nONBUILD COPY --chown=1 a b\nHEALTHCHECK\n")
                .unwrap();
        assert_eq!(
            ast.dump(),
            "(copy [\"--from=a\" \"--link\"] \"x\" \"y\")\n(onbuild (copy [\"--chown=1\"] \"a\" \"b\"))\n(healthcheck)\n"
        );
    }
}
