//! The configuration journal: which step was applied with which input, for which instance.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::paths::{self, FileMeta};

/// Guest path of the journal.
pub const JOURNAL_PATH: &str = "/var/lib/firebuild/journal.json";
/// Largest journal read.
pub const MAX_JOURNAL: u64 = 1 << 20;

/// One applied step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// SHA-256 (hex) of the step's input.
    pub digest: String,
    /// When it was applied (seconds since the epoch).
    pub applied_at: u64,
}

/// Where the firstboot script is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FirstbootState {
    /// Recorded just before it was started; still there after a crash.
    Started,
    /// It ran to the end.
    Finished,
}

/// The firstboot record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Firstboot {
    /// Started or finished.
    pub state: FirstbootState,
    /// Digest of the script.
    pub digest: String,
    /// Exit code when it finished normally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Signal when it was killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
}

/// The journal file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// Format version (1).
    pub version: u32,
    /// The instance the entries belong to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Applied steps by name.
    #[serde(default)]
    pub steps: BTreeMap<String, Entry>,
    /// The firstboot script of this instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firstboot: Option<Firstboot>,
    /// The swap file set up for this instance (enabled again on every boot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_path: Option<String>,
    /// Changed since loaded or saved.
    #[serde(skip)]
    dirty: bool,
}

impl Journal {
    /// Reads the journal under `root`; an absent journal is empty, a corrupt one an error (the
    /// caller must not guess: a lost journal would regenerate an instance's identity).
    pub fn load(root: &Path) -> Result<Self> {
        let host = Self::host_path(root)?;
        let Some(bytes) = paths::read_bounded(&host, MAX_JOURNAL)? else {
            return Ok(Journal {
                version: 1,
                ..Journal::default()
            });
        };
        serde_json::from_slice(&bytes).map_err(|e| Error::Parse {
            path: host,
            line: e.line(),
            reason: format!("journal: {e}"),
        })
    }

    fn host_path(root: &Path) -> Result<PathBuf> {
        paths::resolve(root, JOURNAL_PATH)
    }

    /// Writes the journal atomically, mode 0600, after flushing the file system (so whatever
    /// the recorded steps wrote without `fsync` is on disk before the record is).
    pub fn save(&mut self, root: &Path) -> Result<()> {
        paths::create_dirs(root, "/var/lib/firebuild", 0o700, 0, 0)?;
        paths::sync_fs(root)?;
        let host = Self::host_path(root)?;
        let mut text = serde_json::to_vec_pretty(self).map_err(|e| Error::Config {
            step: "journal",
            reason: e.to_string(),
        })?;
        text.push(b'\n');
        let meta = FileMeta {
            mode: 0o600,
            uid: 0,
            gid: 0,
        };
        paths::write_atomic(&host, &text, Some(meta), meta)?;
        self.dirty = false;
        Ok(())
    }

    /// Whether there are changes not saved yet.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Marks the journal changed (after editing a public field).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Whether `step` was applied with exactly `digest`.
    pub fn is_applied(&self, step: &str, digest: &str) -> bool {
        self.steps.get(step).is_some_and(|e| e.digest == digest)
    }

    /// Records `step` as applied with `digest`.
    pub fn record(&mut self, step: &str, digest: &str) {
        self.steps.insert(
            step.to_owned(),
            Entry {
                digest: digest.to_owned(),
                applied_at: now(),
            },
        );
        self.dirty = true;
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn round_trip_mode_and_corruption() {
        let t = tempfile::tempdir().unwrap();
        let mut j = Journal::load(t.path()).unwrap();
        assert!(j.steps.is_empty());
        j.instance_id = Some("i-1".into());
        j.record("hostname", "abc");
        j.save(t.path()).unwrap();
        let back = Journal::load(t.path()).unwrap();
        assert!(back.is_applied("hostname", "abc"));
        assert!(!back.is_applied("hostname", "abd"));
        let p = t.path().join("var/lib/firebuild/journal.json");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        std::fs::write(&p, "{ not json").unwrap();
        let err = Journal::load(t.path()).unwrap_err().to_string();
        assert!(err.contains("journal.json:1: journal:"), "{err}");
    }
}
