//! Firecracker MMDS: metadata schema, guest client, Firecracker API writer, embedded server.
//!
//! (Being written; see the crate README.)
