//! `firebuild-host mmds ...`: the embedded MMDS-compatible server. Being written.

/// Arguments of `firebuild-host mmds`.
#[derive(Debug, clap::Args)]
pub struct MmdsArgs {}

/// Runs `firebuild-host mmds`.
pub fn run(_args: &MmdsArgs) -> anyhow::Result<()> {
    anyhow::bail!("`mmds` is not written yet")
}
