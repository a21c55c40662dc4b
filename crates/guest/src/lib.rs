//! Guest-side logic of vminit: steps, files, users, guest configuration, metadata sources.
//!
//! (Being written; see the crate README.)

pub mod config;
mod error;
pub mod passwd;
pub mod paths;
pub mod place;
pub mod source;
pub mod step;

pub use error::{Error, Result};
