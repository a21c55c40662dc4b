//! Base images to ext4 root filesystems, with a manifest.
//!
//! (Being written; see the crate README.)
