//! Fuzz target: any byte string, decoded into frames and reassembled into a `DirSink`, must never
//! panic nor write outside the sink's root.
#![no_main]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

#[path = "../harness/transfer_decode.rs"]
mod harness;

static SCRATCH: OnceLock<tempfile::TempDir> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let scratch = SCRATCH.get_or_init(|| tempfile::tempdir().expect("scratch dir"));
    let _ = harness::run(data, scratch.path());
});
