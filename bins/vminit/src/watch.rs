//! Watch mode: long-poll the metadata and re-apply what may change at run time.

use std::path::Path;
use std::time::{Duration, Instant};

use firebuild_guest::source::{Found, MetadataSource, SourceError, error_chain};

/// How long one long-poll may wait.
const POLL: Duration = Duration::from_secs(300);

/// Watches `source` from `revision` on, re-applying each new document, until the source says it
/// cannot be watched.
pub async fn run(root: &Path, source: &dyn MetadataSource, mut revision: Option<String>) {
    tracing::info!(
        source = source.name(),
        revision = %revision.as_deref().unwrap_or("-"),
        "watching metadata"
    );
    let mut backoff = Duration::from_millis(500);
    loop {
        match source
            .watch(revision.as_deref(), Instant::now() + POLL)
            .await
        {
            Ok(None) => continue,
            Ok(Some(doc)) => {
                backoff = Duration::from_millis(500);
                let new_rev = doc.revision.clone();
                match Found::new(source.name(), doc) {
                    Ok(found) => {
                        match crate::configure::apply(
                            root,
                            Some(&found.metadata),
                            crate::configure::Why::Found,
                        )
                        .await
                        {
                            Ok(_) => tracing::info!(
                                revision = %new_rev.as_deref().unwrap_or("-"),
                                "metadata revision applied"
                            ),
                            Err(e) => tracing::error!("re-applying metadata: {e:#}"),
                        }
                    }
                    Err(e) => tracing::error!("{}", error_chain(&e)),
                }
                revision = new_rev;
            }
            Err(e @ SourceError::Unsupported { .. }) => {
                tracing::warn!("{e}: not watching");
                return;
            }
            Err(e) => {
                tracing::warn!("{}; retrying in {backoff:?}", error_chain(&e));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}
