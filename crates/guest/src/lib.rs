//! Guest-side logic of vminit: steps, files, users, guest configuration, metadata sources.
//!
//! (Being written; see the crate README.)

pub mod source;
