//! Fuzz target `metadata_decode`: see `harness/metadata_decode.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../harness/metadata_decode.rs"]
mod harness;

fuzz_target!(|data: &[u8]| {
    let _ = harness::run(data);
});
