//! The step cache: each step's result, keyed by content, so an unchanged rebuild boots no VM
//! and a change re-runs only the steps from the first one it touches.
//!
//! A step's result is the stage's root disk as it was when the step ended: the guest freezes
//! its root file system at each step's end (`snapshot_steps`), and the host stores the disk
//! image as content-addressed chunks ([`store`]) under the step's key ([`key`]) before it lets
//! the guest go on. The stage's start (its base imported, or the stage it is based on) is
//! stored the same way under the start key. A later build restores the longest stored prefix of
//! a stage's steps into its work image and runs the rest; a stage whose every step is stored
//! needs no VM.

pub mod key;
pub mod store;

use std::path::Path;

use firebuild_plan::Stage;
use firebuild_rootfs::BaseProvenance;

pub use key::{Inputs, Key, StartFrom};
pub use store::{Entry, Published, Store};

/// The keys of one stage: its start, then one per step up to the first step that cannot be
/// keyed (that step and those after it always run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageKeys {
    /// The key of the stage's start.
    pub start: Key,
    /// The keys of its first steps.
    pub steps: Vec<Key>,
    /// Why the keys stop before the stage's last step, if they do.
    pub stopped: Option<String>,
}

impl StageKeys {
    /// The keys of `stage`, or why it cannot be cached at all.
    pub fn of(
        stage: &Stage,
        start: &StartFrom<'_>,
        work_size_mib: u64,
        inputs: &Inputs<'_>,
    ) -> Result<StageKeys, String> {
        let start = key::start_key(start, work_size_mib)?;
        let mut steps: Vec<Key> = Vec::with_capacity(stage.steps.len());
        let mut stopped = None;
        for step in &stage.steps {
            let prev = steps.last().unwrap_or(&start);
            match key::step_key(prev, step, inputs) {
                Ok(k) => steps.push(k),
                Err(why) => {
                    stopped = Some(why);
                    break;
                }
            }
        }
        Ok(StageKeys {
            start,
            steps,
            stopped,
        })
    }

    /// The key after `done` steps (0: the start).
    pub fn after(&self, done: usize) -> Option<&Key> {
        match done {
            0 => Some(&self.start),
            n => self.steps.get(n - 1),
        }
    }

    /// The key of the stage's result, when every step has one.
    pub fn last(&self, stage: &Stage) -> Option<&Key> {
        (self.steps.len() == stage.steps.len())
            .then(|| self.after(self.steps.len()))
            .flatten()
    }
}

/// A restored prefix of a stage.
#[derive(Debug, Clone)]
pub struct Restored {
    /// Steps whose result the image holds (0: only the start).
    pub done: usize,
    /// What was recorded with the entry.
    pub meta: StageMeta,
}

/// What an entry records besides the disk: where the stage's base came from, and the mount
/// point stubs the guest's PID 1 creates in this stage's images.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StageMeta {
    /// The stage's base provenance (for the manifest).
    pub base: BaseProvenance,
    /// The API mount points (`/proc`, `/sys`, `/dev`) the stage's start lacks: the guest
    /// creates them at boot and removes them at shutdown (BuildKit's rule), so a disk stored at
    /// a step's end holds them and a restored one must lose them again.
    #[serde(default)]
    pub stubs: Vec<String>,
}

/// The mount points PID 1 creates when an image lacks them (vminit's `STUBS`).
const STUBS: [&str; 3] = ["proc", "sys", "dev"];

/// Which of [`STUBS`] the root directory of the ext4 `image` lacks.
pub fn missing_stubs(image: &Path) -> firebuild_rootfs::Result<Vec<String>> {
    let names = firebuild_rootfs::ext4::root_names(image)?;
    Ok(STUBS
        .iter()
        .filter(|s| !names.iter().any(|n| n == *s))
        .map(|s| format!("/{s}"))
        .collect())
}

/// Removes the (empty) stub directories `stubs` from the ext4 `image` in one `debugfs` run
/// (only the constant names of [`STUBS`] are passed on).
pub fn remove_stubs(image: &Path, stubs: &[String]) -> firebuild_rootfs::Result<()> {
    let known: Vec<&str> = stubs
        .iter()
        .map(String::as_str)
        .filter(|stub| STUBS.iter().any(|s| stub.strip_prefix('/') == Some(s)))
        .collect();
    firebuild_rootfs::ext4::remove_empty_dirs(image, &known)
}

/// Restores into `image` the longest stored prefix of `keys` (the start counts), or `None`.
/// An entry that fails verification is dropped and the next shorter one tried.
pub fn restore_longest(store: &Store, keys: &StageKeys, image: &Path) -> Option<Restored> {
    // Shared: a prune (exclusive) does not remove chunks while they are read.
    let _lock = store.lock(false).ok()?;
    for done in (0..=keys.steps.len()).rev() {
        let key = keys.after(done)?;
        let Some(entry) = store.get(key) else {
            continue;
        };
        let meta: StageMeta = serde_json::from_value(entry.extra.clone()).unwrap_or_default();
        let restored = store.restore(&entry, image).and_then(|()| match done {
            0 => Ok(()),
            _ => remove_stubs(image, &meta.stubs).map_err(crate::error::Error::image(image)),
        });
        match restored {
            Ok(()) => return Some(Restored { done, meta }),
            Err(e) => tracing::warn!(key = %key, "step cache entry not used: {e}"),
        }
    }
    let _ = std::fs::remove_file(image);
    None
}

#[cfg(test)]
mod tests;
