//! MMDS as a metadata source (V2 tokens), through the firebuild-mmds client.

use std::time::Instant;

use futures::future::BoxFuture;

use super::{Fetch, MetadataSource, SourceError};

/// Firecracker's MMDS address.
pub const DEFAULT_URL: &str = "http://169.254.169.254";

/// MMDS, asked over HTTP with a V2 session token.
#[derive(Debug, Clone)]
pub struct MmdsSource {
    url: String,
}

impl MmdsSource {
    /// A source asking the MMDS at `url` (`http://169.254.169.254`).
    pub fn new(url: String) -> Self {
        Self { url }
    }
}

impl MetadataSource for MmdsSource {
    fn name(&self) -> &str {
        "mmds"
    }

    fn fetch(&self, _deadline: Instant) -> BoxFuture<'_, Result<Fetch, SourceError>> {
        Box::pin(async move {
            Err(SourceError::Unreachable {
                source_name: "mmds".into(),
                source: format!("{}: client not wired yet", self.url).into(),
            })
        })
    }

    fn needs_network(&self) -> bool {
        true
    }
}
