//! VM drivers behind one trait: Firecracker, QEMU microvm, namespace sandbox.
//!
//! (Being written; see the crate README.)
