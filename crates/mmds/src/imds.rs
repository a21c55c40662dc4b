//! The IMDS text format: rendering (server) and a bounded listing parser (client).
//!
//! Firecracker's rules: an object renders as its keys, one per line, sub-objects suffixed with
//! `/`, no trailing newline; a string renders raw; any other value cannot be rendered (the
//! server answers 501).

use serde_json::Value;

/// Largest IMDS text body [`parse_listing`] accepts.
pub const MAX_LISTING_BYTES: usize = 1 << 20;
/// Most entries [`parse_listing`] accepts.
pub const MAX_LISTING_ENTRIES: usize = 16384;
/// Longest key [`parse_listing`] accepts, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// Renders a value as IMDS text; `None` if it has no IMDS form (numbers, booleans, arrays,
/// null).
pub fn render(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(m) => {
            let mut out = String::new();
            for (i, (k, v)) in m.iter().enumerate() {
                if i > 0 {
                    out.push('\n');
                }
                out.push_str(k);
                if v.is_object() {
                    out.push('/');
                }
            }
            Some(out)
        }
        _ => None,
    }
}

/// One line of an IMDS listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key, without the trailing `/`.
    pub name: String,
    /// Whether the key names a sub-object (the line ended with `/`).
    pub is_dir: bool,
}

/// Why a listing was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The body is larger than [`MAX_LISTING_BYTES`].
    #[error("listing is {len} bytes, more than {MAX_LISTING_BYTES}")]
    TooLarge {
        /// Body length.
        len: usize,
    },
    /// More than [`MAX_LISTING_ENTRIES`] lines.
    #[error("listing has more than {MAX_LISTING_ENTRIES} entries")]
    TooManyEntries,
    /// A line is empty, too long, or holds a control character.
    #[error("listing line {line}: {reason}")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// The same key appears twice.
    #[error("listing line {line}: key `{name}` repeats")]
    Duplicate {
        /// 1-based line number.
        line: usize,
        /// The key.
        name: String,
    },
}

/// Parses an IMDS listing (the body of a GET on an object in text form). One trailing newline
/// and CRLF line ends are tolerated; an empty body is an empty object.
pub fn parse_listing(text: &str) -> Result<Vec<Entry>, ParseError> {
    if text.len() > MAX_LISTING_BYTES {
        return Err(ParseError::TooLarge { len: text.len() });
    }
    let body = text.strip_suffix('\n').unwrap_or(text);
    let body = body.strip_suffix('\r').unwrap_or(body);
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let mut out: Vec<Entry> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (i, raw) in body.split('\n').enumerate() {
        let line = i + 1;
        if out.len() >= MAX_LISTING_ENTRIES {
            return Err(ParseError::TooManyEntries);
        }
        let l = raw.strip_suffix('\r').unwrap_or(raw);
        if l.len() > MAX_KEY_BYTES + 1 {
            return Err(ParseError::BadLine {
                line,
                reason: "key too long",
            });
        }
        if l.chars().any(char::is_control) {
            return Err(ParseError::BadLine {
                line,
                reason: "control character",
            });
        }
        let (name, is_dir) = match l.strip_suffix('/') {
            Some(n) => (n, true),
            None => (l, false),
        };
        if name.is_empty() {
            return Err(ParseError::BadLine {
                line,
                reason: "empty key",
            });
        }
        if !seen.insert(name) {
            return Err(ParseError::Duplicate {
                line,
                name: name.to_owned(),
            });
        }
        out.push(Entry {
            name: name.to_owned(),
            is_dir,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use serde_json::json;

    #[test]
    fn render_follows_firecracker() {
        let v = json!({"b": {"x": 1}, "a": "s", "n": 1});
        assert_eq!(render(&v).unwrap(), "a\nb/\nn");
        assert_eq!(render(&json!("raw\nstring")).unwrap(), "raw\nstring");
        assert_eq!(render(&json!({})).unwrap(), "");
        for v in [json!(1), json!(true), json!(null), json!([1])] {
            assert_eq!(render(&v), None, "{v}");
        }
    }

    #[test]
    fn listing_round_trips_render() {
        let v = json!({"b": {"x": 1}, "a": "s", "with space": 2});
        let entries = parse_listing(&render(&v).unwrap()).unwrap();
        let names: Vec<_> = entries
            .iter()
            .map(|e| (e.name.as_str(), e.is_dir))
            .collect();
        assert_eq!(names, [("a", false), ("b", true), ("with space", false)]);
        assert_eq!(parse_listing("").unwrap(), []);
        assert_eq!(parse_listing("a\r\nb/\n").unwrap().len(), 2);
    }

    #[test]
    fn listing_rejects_junk() {
        assert!(matches!(
            parse_listing("a\n\nb"),
            Err(ParseError::BadLine { line: 2, .. })
        ));
        assert!(matches!(
            parse_listing("a\nb\x00"),
            Err(ParseError::BadLine { line: 2, .. })
        ));
        assert!(matches!(
            parse_listing("a\na/"),
            Err(ParseError::Duplicate { line: 2, .. })
        ));
        assert!(matches!(
            parse_listing("/"),
            Err(ParseError::BadLine { .. })
        ));
        let long = "k".repeat(MAX_KEY_BYTES + 2);
        assert!(parse_listing(&long).is_err());
        let many = "k\n".repeat(10)
            + &(0..MAX_LISTING_ENTRIES + 1)
                .map(|i| format!("{i}\n"))
                .collect::<String>();
        assert!(parse_listing(&many).is_err());
    }
}
