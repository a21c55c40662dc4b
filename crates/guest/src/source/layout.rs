//! What the other clouds' layouts ([`super::ec2`], [`super::openstack`]) share: a bounded reader
//! of single paths on the MMDS endpoint, the user-data rules, and the document they map onto.
//!
//! # User-data
//!
//! cloud-init accepts many user-data formats; vminit runs only one of them:
//!
//! | user-data starts with | becomes |
//! |---|---|
//! | `#!` | the first-boot script (`firstboot.script`, run once per instance) |
//! | `#cloud-config` | nothing: a note (logged as a warning) says cloud-config is not supported |
//! | anything else | nothing: a note says it was ignored (unknown format) and not run |
//!
//! User-data is bounded by [`MAX_USER_DATA`]; a larger one makes the metadata invalid (the
//! resolution stops with an error naming the path and the sizes), as an oversize document does.
//!
//! # Whose SSH keys
//!
//! cloud-init gives EC2 and OpenStack keys to the image's *default user* (`ec2-user`, `ubuntu`,
//! created by cloud-init from its distro config). The firebuild schema has no default user, and
//! vminit creates none; the one convention it has is the CPIO config device's
//! `authorized_keys`, which go to `root` (as the illumos metadata agent does). The cloud layouts
//! follow it: their keys become `users[name = root].ssh-authorized-keys`.

use std::time::Instant;

use firebuild_mmds::client::{Client, Error as MmdsError};
use firebuild_mmds::imds::Entry;
use serde_json::{Map, Value};

use super::SourceError;

/// Largest user-data accepted from another cloud's layout (OpenStack's own limit is 65535
/// bytes, EC2's 16 KiB).
pub const MAX_USER_DATA: usize = 64 << 10;

/// Largest single text value (a host name, an instance id, one public key entry).
pub const MAX_FIELD: usize = 16 << 10;

/// Most public keys accepted from one layout.
pub const MAX_KEYS: usize = 64;

const SOURCE: &str = "mmds";

/// Reads single paths from the MMDS endpoint, each bounded by the source's deadline.
pub(super) struct Reader<'a> {
    client: &'a Client,
    deadline: Instant,
    base: &'a str,
}

impl<'a> Reader<'a> {
    /// Reads through `client` until `deadline`; `base` is the URL shown in errors.
    pub(super) fn new(client: &'a Client, deadline: Instant, base: &'a str) -> Self {
        Self {
            client,
            deadline,
            base,
        }
    }

    /// `SourceError::Invalid` for what was read at `path`.
    pub(super) fn invalid(
        &self,
        path: &str,
        e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> SourceError {
        SourceError::Invalid {
            source_name: SOURCE.to_owned(),
            origin: format!("{}{path}", self.base),
            source: e.into(),
        }
    }

    async fn call<T>(
        &self,
        fut: impl Future<Output = Result<T, MmdsError>>,
    ) -> Result<Result<T, MmdsError>, SourceError> {
        tokio::time::timeout_at(tokio::time::Instant::from_std(self.deadline), fut)
            .await
            .map_err(|_| SourceError::Timeout {
                source_name: SOURCE.to_owned(),
            })
    }

    /// 404 → `None`; an answer that is not what the path should hold → invalid; no answer (or
    /// anything else) → unreachable, an outage.
    fn classify<T>(&self, path: &str, e: MmdsError) -> Result<Option<T>, SourceError> {
        match e {
            MmdsError::NotFound { .. } => Ok(None),
            e @ (MmdsError::Json { .. }
            | MmdsError::NotText { .. }
            | MmdsError::Listing { .. }
            | MmdsError::Metadata(_)) => Err(self.invalid(path, e)),
            // 501: the value is not text (a number, a list).
            e @ MmdsError::Status { status, .. } if status.as_u16() == 501 => {
                Err(self.invalid(path, e))
            }
            e => Err(SourceError::Unreachable {
                source_name: SOURCE.to_owned(),
                source: Box::new(e),
            }),
        }
    }

    /// The text at `path` (at most `max` bytes), `None` on 404.
    pub(super) async fn text(&self, path: &str, max: usize) -> Result<Option<String>, SourceError> {
        match self.call(self.client.get_text(path)).await? {
            Ok((text, _)) if text.len() > max => Err(self.invalid(
                path,
                format!("{} bytes, more than the limit of {max}", text.len()),
            )),
            Ok((text, _)) => Ok(Some(text)),
            Err(e) => self.classify(path, e),
        }
    }

    /// The user-data at `path`, `None` on 404. Larger than [`MAX_USER_DATA`] → invalid.
    pub(super) async fn user_data(&self, path: &str) -> Result<Option<UserData>, SourceError> {
        match self.call(self.client.get_text(path)).await? {
            Ok((text, _)) if text.len() > MAX_USER_DATA => Err(self.invalid(
                path,
                format!(
                    "user-data is {} bytes, more than the limit of {MAX_USER_DATA}",
                    text.len()
                ),
            )),
            Ok((text, _)) => Ok(Some(UserData::classify(text))),
            Err(MmdsError::NotText { .. }) => Ok(Some(UserData::NotText)),
            Err(e) => self.classify(path, e),
        }
    }

    /// The JSON document at `path`: a JSON object in the tree, or a string holding one (as a
    /// host that copied the file's text stores it). `None` on 404.
    pub(super) async fn json(&self, path: &str) -> Result<Option<Map<String, Value>>, SourceError> {
        let value = match self.call(self.client.get_json(path)).await? {
            Ok((v, _)) => v,
            Err(e) => return self.classify(path, e),
        };
        let value = match value {
            Value::String(s) => serde_json::from_str(&s).map_err(|e| self.invalid(path, e))?,
            v => v,
        };
        match value {
            Value::Object(m) => Ok(Some(m)),
            _ => Err(self.invalid(path, "not a JSON object")),
        }
    }

    /// The IMDS listing at `path`, `None` on 404.
    pub(super) async fn list(&self, path: &str) -> Result<Option<Vec<Entry>>, SourceError> {
        match self.call(self.client.list(path)).await? {
            Ok(entries) => Ok(Some(entries)),
            Err(e) => self.classify(path, e),
        }
    }
}

/// User-data as read, classified by its first bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum UserData {
    /// Empty or only white space: nothing to do.
    Empty,
    /// A `#!` script: the first-boot script.
    Script(String),
    /// `#cloud-config`: not supported.
    CloudConfig,
    /// Any other format (bytes): ignored.
    Unknown(usize),
    /// Not UTF-8 (gzip, binary): ignored.
    NotText,
}

impl UserData {
    pub(super) fn classify(text: String) -> Self {
        if text.starts_with("#!") {
            return Self::Script(text);
        }
        if text.trim().is_empty() {
            return Self::Empty;
        }
        let first = text
            .trim_start()
            .lines()
            .next()
            .unwrap_or_default()
            .trim_end();
        if first == "#cloud-config" {
            return Self::CloudConfig;
        }
        Self::Unknown(text.len())
    }
}

/// A document of the firebuild schema built from another cloud's layout, and what could not be
/// mapped.
#[derive(Debug, Default)]
pub(super) struct Mapped {
    pub(super) doc: Map<String, Value>,
    pub(super) notes: Vec<String>,
    keys: Vec<String>,
}

impl Mapped {
    /// Records something that was not mapped (and logs it: the operator asked for it).
    pub(super) fn note(&mut self, note: String) {
        tracing::warn!("metadata: {note}");
        self.notes.push(note);
    }

    /// Sets a string field from a value read as text (trimmed; empty is absent).
    pub(super) fn set_text(&mut self, key: &str, value: Option<&str>) {
        if let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) {
            self.doc.insert(key.to_owned(), Value::String(v.to_owned()));
        }
    }

    /// Adds the non-empty, non-comment lines of `text` as SSH keys (duplicates dropped).
    pub(super) fn add_keys(&mut self, text: &str) {
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            if !self.keys.iter().any(|k| k == line) {
                self.keys.push(line.to_owned());
            }
        }
    }

    /// Maps user-data read at `path` (see the module docs).
    pub(super) fn user_data(&mut self, path: &str, ud: UserData) {
        match ud {
            UserData::Empty => {}
            UserData::Script(script) => {
                self.doc
                    .insert("firstboot".into(), serde_json::json!({ "script": script }));
            }
            UserData::CloudConfig => self.note(format!(
                "user-data at `{path}` is #cloud-config, which vminit does not support: none of \
                 it was applied (give a `#!` script to run at first boot, or use the firebuild \
                 metadata schema)"
            )),
            UserData::Unknown(len) => self.note(format!(
                "user-data at `{path}` ignored: unknown format ({len} bytes, neither a `#!` \
                 script nor #cloud-config); it was not run"
            )),
            UserData::NotText => self.note(format!(
                "user-data at `{path}` ignored: not UTF-8 text (compressed or binary); it was \
                 not run"
            )),
        }
    }

    /// The document: the fields set, the keys as `root`'s (see the module docs).
    pub(super) fn finish(mut self) -> (Value, Vec<String>) {
        if !self.keys.is_empty() {
            self.doc.insert(
                "users".into(),
                serde_json::json!([{ "name": "root", "ssh-authorized-keys": self.keys }]),
            );
        }
        (Value::Object(self.doc), self.notes)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn user_data_formats() {
        let c = |s: &str| UserData::classify(s.to_owned());
        assert_eq!(
            c("#!/bin/sh\necho hi\n"),
            UserData::Script("#!/bin/sh\necho hi\n".into())
        );
        assert_eq!(
            c("#cloud-config\npackages: [nginx]\n"),
            UserData::CloudConfig
        );
        assert_eq!(c("\n#cloud-config \r\nusers: []"), UserData::CloudConfig);
        assert_eq!(c("#cloud-config-archive\n- type: x"), UserData::Unknown(31));
        assert_eq!(c("#include\nhttp://x"), UserData::Unknown(17));
        assert_eq!(c(" \n\t"), UserData::Empty);
        // A `#!` must be at the very start, as the kernel wants it.
        assert_eq!(c(" #!/bin/sh"), UserData::Unknown(10));
    }

    #[test]
    fn mapped_document_and_notes() {
        let mut m = Mapped::default();
        m.set_text("hostname", Some(" web-1\n"));
        m.set_text("instance-id", Some("  "));
        m.add_keys("ssh-ed25519 AAAA a\n# comment\n\nssh-ed25519 AAAA a\n");
        m.add_keys("ssh-rsa BBBB b");
        m.user_data("/latest/user-data", UserData::CloudConfig);
        let (doc, notes) = m.finish();
        assert_eq!(
            doc,
            serde_json::json!({"hostname": "web-1", "users": [{"name": "root",
                "ssh-authorized-keys": ["ssh-ed25519 AAAA a", "ssh-rsa BBBB b"]}]})
        );
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("#cloud-config"), "{}", notes[0]);
        assert!(notes[0].contains("/latest/user-data"), "{}", notes[0]);
    }
}
