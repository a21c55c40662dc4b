//! Fuzz target `imds_text`: see `harness/imds_text.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../harness/imds_text.rs"]
mod harness;

fuzz_target!(|data: &[u8]| {
    let _ = harness::run(data);
});
