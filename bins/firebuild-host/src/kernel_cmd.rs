//! `firebuild-host kernel ...`: guest kernel preparation. Being written.

/// Arguments of `firebuild-host kernel`.
#[derive(Debug, clap::Args)]
pub struct KernelArgs {}

/// Runs `firebuild-host kernel`.
pub fn run(_args: &KernelArgs) -> anyhow::Result<()> {
    anyhow::bail!("`kernel` is not written yet")
}
