//! Fuzz target `oci_layer`: see `harness/oci_layer.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../harness/oci_layer.rs"]
mod harness;

fuzz_target!(|data: &[u8]| {
    let _ = harness::run(data);
});
