//! The data store: one JSON document, size-limited, versioned by ETag, watched for changes.

use std::sync::Arc;

use serde_json::{Map, Value};
use tokio::sync::watch;

/// Firecracker's default data store limit, in bytes of serialised JSON.
pub const DEFAULT_DATA_LIMIT: usize = 51200;

/// A snapshot of the store: the data and its ETag.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The whole document.
    pub data: Arc<Value>,
    /// Strong ETag of the whole document (quoted).
    pub etag: String,
}

/// Why a store change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The result would exceed the data limit.
    #[error("the data store would be {size} bytes, more than the limit of {limit}")]
    TooLarge {
        /// Serialised size of the refused result.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// `If-Match` did not match the current ETag of the target.
    #[error("precondition failed: `{path}` has ETag {current}")]
    PreconditionFailed {
        /// The JSON pointer addressed.
        path: String,
        /// Its current ETag.
        current: String,
    },
    /// Nothing at the JSON pointer.
    #[error("nothing at `{path}`")]
    NotFound {
        /// The JSON pointer addressed.
        path: String,
    },
    /// The pointer cannot be written (its parent is not an object or array, bad index...).
    #[error("cannot write at `{path}`: {reason}")]
    BadPath {
        /// The JSON pointer addressed.
        path: String,
        /// Why.
        reason: &'static str,
    },
    /// The document root must be a JSON object.
    #[error("the data store root must be a JSON object")]
    NotAnObject,
}

/// Strong ETag (quoted, 32 hex digits of SHA-256) of the canonical JSON of a value, or of
/// "absent" for `None`. serde_json's default map is ordered, so equal documents hash equally.
pub fn etag_of(v: Option<&Value>) -> String {
    let bytes = match v {
        Some(v) => serde_json::to_vec(v).unwrap_or_default(),
        None => b"\0absent".to_vec(),
    };
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
    let mut s = String::with_capacity(34);
    s.push('"');
    for b in &d.as_ref()[..16] {
        s.push_str(&format!("{b:02x}"));
    }
    s.push('"');
    s
}

/// RFC 7396 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// Unescapes one JSON pointer token (`~1` → `/`, `~0` → `~`).
fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// The store shared by the server's guest side, host side and handle.
#[derive(Debug)]
pub(crate) struct Store {
    tx: watch::Sender<Snapshot>,
    limit: usize,
}

impl Store {
    pub(crate) fn new(initial: Value, limit: usize) -> Result<Store, StoreError> {
        if !initial.is_object() {
            return Err(StoreError::NotAnObject);
        }
        check_size(&initial, limit)?;
        let etag = etag_of(Some(&initial));
        let (tx, _) = watch::channel(Snapshot {
            data: Arc::new(initial),
            etag,
        });
        Ok(Store { tx, limit })
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        self.tx.borrow().clone()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.tx.subscribe()
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Applies `f` to a copy of the document at `pointer`; commits only if it succeeds, the
    /// `if_match` precondition holds (on the ETag of the value at `pointer`) and the result
    /// fits the limit. Returns the new snapshot.
    pub(crate) fn modify(
        &self,
        pointer: &str,
        if_match: Option<&str>,
        f: impl FnOnce(&mut Value) -> Result<(), StoreError>,
    ) -> Result<Snapshot, StoreError> {
        let mut result = Ok(());
        self.tx.send_if_modified(|snap| {
            let current = snap.data.pointer(pointer);
            if let Some(expected) = if_match {
                let matches = if expected.trim() == "*" {
                    current.is_some()
                } else {
                    let etag = etag_of(current);
                    expected.split(',').any(|e| e.trim() == etag)
                };
                if !matches {
                    result = Err(StoreError::PreconditionFailed {
                        path: pointer.to_owned(),
                        current: etag_of(current),
                    });
                    return false;
                }
            }
            let mut next = (*snap.data).clone();
            if let Err(e) = f(&mut next) {
                result = Err(e);
                return false;
            }
            if !next.is_object() {
                result = Err(StoreError::NotAnObject);
                return false;
            }
            if let Err(e) = check_size(&next, self.limit) {
                result = Err(e);
                return false;
            }
            if next == *snap.data {
                return false;
            }
            snap.etag = etag_of(Some(&next));
            snap.data = Arc::new(next);
            true
        });
        result.map(|()| self.snapshot())
    }

    pub(crate) fn replace(
        &self,
        data: Value,
        if_match: Option<&str>,
    ) -> Result<Snapshot, StoreError> {
        self.modify("", if_match, move |v| {
            *v = data;
            Ok(())
        })
    }

    pub(crate) fn patch(
        &self,
        patch: &Value,
        if_match: Option<&str>,
    ) -> Result<Snapshot, StoreError> {
        self.modify("", if_match, |v| {
            merge_patch(v, patch);
            Ok(())
        })
    }

    pub(crate) fn put_at(
        &self,
        pointer: &str,
        value: Value,
        if_match: Option<&str>,
    ) -> Result<Snapshot, StoreError> {
        self.modify(pointer, if_match, |doc| set_pointer(doc, pointer, value))
    }

    pub(crate) fn delete_at(
        &self,
        pointer: &str,
        if_match: Option<&str>,
    ) -> Result<Snapshot, StoreError> {
        self.modify(pointer, if_match, |doc| remove_pointer(doc, pointer))
    }
}

fn check_size(v: &Value, limit: usize) -> Result<(), StoreError> {
    let size = serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX);
    if size > limit {
        return Err(StoreError::TooLarge { size, limit });
    }
    Ok(())
}

/// Splits a pointer into its parent pointer and unescaped last token.
fn split_last(pointer: &str) -> Option<(&str, String)> {
    let idx = pointer.rfind('/')?;
    Some((&pointer[..idx], unescape(&pointer[idx + 1..])))
}

/// Sets the value at `pointer`, creating missing parent objects.
pub(crate) fn set_pointer(doc: &mut Value, pointer: &str, value: Value) -> Result<(), StoreError> {
    if pointer.is_empty() {
        *doc = value;
        return Ok(());
    }
    if !pointer.starts_with('/') {
        return Err(StoreError::BadPath {
            path: pointer.to_owned(),
            reason: "a JSON pointer starts with `/`",
        });
    }
    let mut cur = doc;
    let tokens: Vec<String> = pointer[1..].split('/').map(unescape).collect();
    let Some((last, parents)) = tokens.split_last() else {
        return Ok(());
    };
    for t in parents {
        cur = match cur {
            Value::Object(m) => m
                .entry(t.clone())
                .or_insert_with(|| Value::Object(Map::new())),
            Value::Array(a) => {
                let i = array_index(t, a.len(), pointer)?;
                &mut a[i]
            }
            _ => {
                return Err(StoreError::BadPath {
                    path: pointer.to_owned(),
                    reason: "a parent is neither an object nor an array",
                });
            }
        };
    }
    match cur {
        Value::Object(m) => {
            m.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(a) => {
            let i = array_index(last, a.len(), pointer)?;
            a[i] = value;
            Ok(())
        }
        _ => Err(StoreError::BadPath {
            path: pointer.to_owned(),
            reason: "the parent is neither an object nor an array",
        }),
    }
}

fn array_index(t: &str, len: usize, pointer: &str) -> Result<usize, StoreError> {
    match t.parse::<usize>() {
        Ok(i) if i < len && (t == "0" || !t.starts_with('0')) => Ok(i),
        _ => Err(StoreError::BadPath {
            path: pointer.to_owned(),
            reason: "array index out of range",
        }),
    }
}

/// Removes the value at `pointer`.
pub(crate) fn remove_pointer(doc: &mut Value, pointer: &str) -> Result<(), StoreError> {
    let not_found = || StoreError::NotFound {
        path: pointer.to_owned(),
    };
    let Some((parent, last)) = split_last(pointer) else {
        return Err(StoreError::BadPath {
            path: pointer.to_owned(),
            reason: "the root cannot be deleted (PUT {} instead)",
        });
    };
    match doc.pointer_mut(parent).ok_or_else(not_found)? {
        Value::Object(m) => m.remove(&last).map(drop).ok_or_else(not_found),
        Value::Array(a) => {
            let i = array_index(&last, a.len(), pointer).map_err(|_| not_found())?;
            a.remove(i);
            Ok(())
        }
        _ => Err(not_found()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc7396_examples() {
        // RFC 7396 appendix A, a selection.
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!([1, 2]),
                json!({"a": "b", "c": null}),
                json!({"a": "b"}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ];
        for (mut t, p, want) in cases {
            merge_patch(&mut t, &p);
            assert_eq!(t, want, "patch {p}");
        }
    }

    #[test]
    fn pointers_set_and_remove() {
        let mut d = json!({"a": {"x/y": 1}, "l": [1, 2]});
        set_pointer(&mut d, "/b/c", json!("v")).unwrap();
        set_pointer(&mut d, "/l/1", json!(3)).unwrap();
        assert_eq!(d.pointer("/b/c"), Some(&json!("v")));
        assert_eq!(d["l"], json!([1, 3]));
        remove_pointer(&mut d, "/a/x~1y").unwrap();
        assert_eq!(d["a"], json!({}));
        assert!(matches!(
            remove_pointer(&mut d, "/nope"),
            Err(StoreError::NotFound { .. })
        ));
        assert!(set_pointer(&mut d, "/l/7", json!(0)).is_err());
        assert!(set_pointer(&mut d, "/b/c/d", json!(0)).is_err());
    }

    #[test]
    fn limit_and_if_match() {
        let s = Store::new(json!({}), 20).unwrap();
        let e0 = s.snapshot().etag;
        assert!(matches!(
            s.replace(json!({"k": "a long value here"}), None),
            Err(StoreError::TooLarge { limit: 20, .. })
        ));
        assert_eq!(
            s.snapshot().etag,
            e0,
            "a refused change leaves the data alone"
        );
        // The ETag of "absent" works as create-if-absent.
        s.put_at("/k", json!("v"), Some(&etag_of(None))).unwrap();
        assert!(s.put_at("/k", json!("x"), Some(&etag_of(None))).is_err());
        let ek = etag_of(Some(&json!("v")));
        assert!(s.put_at("/k", json!("w"), Some("\"0\"")).is_err());
        s.put_at("/k", json!("w"), Some(&ek)).unwrap();
        assert_eq!(s.snapshot().data["k"], "w");
        assert_ne!(s.snapshot().etag, e0);
    }
}
