//! Fuzz target: any byte string read as a CPIO config device must never panic nor exceed the
//! reader's limits; what it maps to is validated against the metadata schema.
#![no_main]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use libfuzzer_sys::fuzz_target;

#[path = "../harness/cpio_source.rs"]
mod harness;

fuzz_target!(|data: &[u8]| {
    let _ = harness::run(data);
});
