//! Helpers the VM test binaries of this crate share (`debian.rs`, `reference/`).
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use firebuild_build::{Event, EventSink, GuestOptions};

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

/// The static vminit and the Debian base layout; `None` (reason printed) outside CI.
pub fn prerequisites() -> Option<(PathBuf, PathBuf)> {
    let vminit = std::env::var_os("FIREBUILD_VMINIT")
        .map_or_else(|| repo().join("target/vminit/vminit"), PathBuf::from);
    let missing: Vec<&str> = ["qemu-system-x86_64", "debugfs", "mkfs.ext4", "apt-get"]
        .into_iter()
        .filter(|t| firebuild_vmm::which(t).is_none())
        .collect();
    let mut why = Vec::new();
    if !missing.is_empty() {
        why.push(format!("missing {}", missing.join(", ")));
    }
    if !vminit.is_file() {
        why.push(format!("no static vminit at {}", vminit.display()));
    }
    if why.is_empty() {
        match base_layout("debian-base.sh") {
            Ok(layout) => return Some((vminit, layout)),
            Err(e) => why.push(e),
        }
    }
    assert!(std::env::var_os("CI").is_none(), "{}", why.join("; "));
    eprintln!("skipping: {}", why.join("; "));
    None
}

pub fn guest(vminit: &Path) -> GuestOptions {
    GuestOptions::new(vminit, firebuild_vmm::kernel::default_cache_dir().unwrap())
}

pub fn debugfs(image: &Path, request: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", request])
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}
