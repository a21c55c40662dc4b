//! Fuzz target: any byte string, decoded into frames and reassembled into an in-memory sink
//! that checks every placement, must never panic nor place anything outside the root.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../harness/transfer_decode.rs"]
mod harness;

fuzz_target!(|data: &[u8]| {
    let _ = harness::run(data);
});
