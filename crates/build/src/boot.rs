//! The guest kernel and the initramfs both flows boot: the kernel's own initramfs (modules,
//! `/init`) with the agent appended at `/firebuild/vminit`, and, for a run, the image config at
//! `/firebuild/image.json`. Nothing of firebuild goes into the image itself.

use std::path::{Path, PathBuf};

use firebuild_plan::ImageConfig;
use firebuild_vmm::kernel::{IMAGE_CONFIG_PATH, Kernel, KernelBuilder};

use crate::error::{Error, Result};
use crate::options::GuestOptions;

/// A kernel and an initramfs ready to boot.
#[derive(Debug, Clone)]
pub struct Boot {
    /// The prepared kernel.
    pub kernel: Kernel,
    /// The initramfs with the agent (and the image config, for a run).
    pub initramfs: PathBuf,
}

/// Prepares (or finds cached) the kernel.
pub async fn kernel(guest: &GuestOptions) -> Result<Kernel> {
    let cache = guest.kernel_cache.clone();
    // The kernel the cache points at is used as it is: asking apt which version is newest costs
    // two `apt-cache show` runs (~1.5 s) per build and needs apt's lists. The first build
    // prepares it; `firebuild-host kernel` moves to a newer one.
    tokio::task::spawn_blocking(move || {
        Kernel::find(&cache).or_else(|_| KernelBuilder::new(cache).prepare())
    })
    .await?
    .map_err(Error::Kernel)
}

/// Writes the agent's initramfs for `kernel` to `out`, with `config` as the image config
/// when given.
pub fn initramfs(
    kernel: &Kernel,
    guest: &GuestOptions,
    config: Option<&ImageConfig>,
    out: &Path,
) -> Result<()> {
    let json = match config {
        Some(c) => Some(serde_json::to_vec(c).map_err(|e| Error::Invalid {
            what: "image config",
            reason: e.to_string(),
        })?),
        None => None,
    };
    let extra: Vec<(&str, &[u8], u32)> = json
        .as_deref()
        .map(|j| vec![(IMAGE_CONFIG_PATH, j, 0o644)])
        .unwrap_or_default();
    firebuild_vmm::kernel::agent_initramfs(kernel, &guest.vminit, &extra, out)
        .map_err(Error::Kernel)
}

/// The kernel and a fresh initramfs in `dir`.
pub async fn prepare(
    guest: &GuestOptions,
    config: Option<&ImageConfig>,
    dir: &Path,
) -> Result<Boot> {
    let kernel = kernel(guest).await?;
    let path = dir.join("initramfs.cpio");
    match config {
        None => build_initramfs(&kernel, guest, &path)?,
        Some(_) => initramfs(&kernel, guest, config, &path)?,
    }
    Ok(Boot {
        kernel,
        initramfs: path,
    })
}

/// A build's initramfs (no image config): linked from the one cached beside the kernel
/// ([`firebuild_vmm::kernel::cached_agent_initramfs`]), or written afresh when the cache
/// cannot hold it (a read-only cache directory).
fn build_initramfs(kernel: &Kernel, guest: &GuestOptions, out: &Path) -> Result<()> {
    match firebuild_vmm::kernel::cached_agent_initramfs(kernel, &guest.vminit) {
        Ok(cached) => crate::image::link_or_copy(&cached, out),
        Err(e) => {
            tracing::debug!("the cached initramfs is not usable ({e}); writing one");
            initramfs(kernel, guest, None, out)
        }
    }
}
