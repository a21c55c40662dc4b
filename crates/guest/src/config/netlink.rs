//! Network configuration through rtnetlink (placeholder, filled below).

use firebuild_mmds::schema::Network;

use crate::error::{Error, Result};

/// Applies `net` to the running system's interfaces.
pub fn apply(_net: &Network) -> Result<()> {
    Err(Error::Config {
        step: "network",
        reason: "not implemented".into(),
    })
}
