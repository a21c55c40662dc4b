//! Helpers the VM test binaries of this crate share (`debian.rs`, `reference/`).
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use firebuild_build::{Event, EventSink};

/// The workspace root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// An event sink that keeps every event, and the list it fills.
pub fn collector() -> (EventSink, Arc<Mutex<Vec<Event>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    (Arc::new(move |e: Event| sink.lock().unwrap().push(e)), seen)
}

/// Runs a base script (`scripts/<name>`, cached in the XDG cache), which prints the OCI
/// layout's directory; its stderr when it fails.
pub fn base_layout(script: &str) -> Result<PathBuf, String> {
    let out = Command::new("bash")
        .arg(repo().join("scripts").join(script))
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(format!(
            "scripts/{script} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}
