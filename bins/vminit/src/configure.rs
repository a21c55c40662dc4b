//! Guest configuration from metadata. The logic lives in [`firebuild_guest::config`] (journal
//! keyed by instance id, identity only on a new instance id); vminit only decides what to pass:
//! the metadata when found, `None` on an outage or when no source has any (nothing derived from
//! metadata changes, the identity is kept).

use std::path::Path;

use firebuild_guest::config::{Configurator, Outcome, Report};
use firebuild_mmds::schema::Metadata;

/// Why configure is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Metadata was found.
    Found,
    /// No source has metadata.
    NoMetadata,
    /// Sources were unreachable: identity must be kept.
    Outage,
}

/// Applies the guest configuration; returns the number of steps that failed.
pub async fn apply(root: &Path, md: Option<&Metadata>, why: Why) -> anyhow::Result<Report> {
    match why {
        Why::Outage => tracing::warn!("metadata unreachable: guest identity kept as it is"),
        Why::NoMetadata => tracing::info!("no metadata: guest configuration left as it is"),
        Why::Found => {}
    }
    let md = if why == Why::Found { md } else { None };
    let report = Configurator::new(root).apply(md).await?;
    let count = |f: fn(&Outcome) -> bool| report.steps.iter().filter(|s| f(&s.outcome)).count();
    let applied = count(|o| matches!(o, Outcome::Applied));
    let unchanged = count(|o| matches!(o, Outcome::Unchanged));
    let failed = count(|o| matches!(o, Outcome::Failed(_)));
    tracing::info!(
        new_instance = report.new_instance,
        "guest configured: {applied} applied, {unchanged} unchanged, {failed} failed"
    );
    Ok(report)
}
