//! Fuzz target: parse + instructions + plan against an empty context must never panic.
#![no_main]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

#[path = "../harness/parse_plan.rs"]
mod harness;

static CONTEXT: OnceLock<tempfile::TempDir> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let ctx = CONTEXT.get_or_init(|| tempfile::tempdir().expect("temp context"));
    harness::run(data, ctx.path());
});
