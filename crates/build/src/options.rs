//! What a build or a run takes: the request (what to build) and the options (how), validated
//! up front.

use std::path::{Path, PathBuf};
use std::time::Duration;

use firebuild_rootfs::registry::PullOptions;
use firebuild_vmm::QemuOptions;

use crate::cancel::Cancel;
use crate::error::{Error, Result};

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The build context directory.
    pub context: PathBuf,
    /// The Dockerfile (default: `context/Dockerfile`).
    pub dockerfile: Option<PathBuf>,
    /// `--build-arg NAME=VALUE` pairs, in order (a later pair wins).
    pub build_args: Vec<(String, String)>,
    /// The stage to build (default: the last).
    pub target: Option<String>,
    /// Base name of the outputs (`NAME.ext4`, `NAME.manifest.json`...).
    pub name: String,
    /// The directory the outputs are written to (created if missing).
    pub out_dir: PathBuf,
    /// `--secret id=ID,...` values, by id: served over the mutual-TLS channel only to the
    /// RUN steps that mount them; never in the image, plan, manifest, metadata or a log.
    pub secrets: Vec<(String, firebuild_bootstrap::SecretBytes)>,
}

impl BuildRequest {
    /// A request for `context/Dockerfile`, outputs named `name` in `out_dir`.
    pub fn new(
        context: impl Into<PathBuf>,
        name: impl Into<String>,
        out_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            context: context.into(),
            dockerfile: None,
            build_args: Vec::new(),
            target: None,
            name: name.into(),
            out_dir: out_dir.into(),
            secrets: Vec::new(),
        }
    }

    /// The Dockerfile's path.
    pub fn dockerfile_path(&self) -> PathBuf {
        self.dockerfile
            .clone()
            .unwrap_or_else(|| self.context.join("Dockerfile"))
    }

    /// Checks the name: it becomes file names and the build's certificate identity.
    pub(crate) fn validate(&self) -> Result<()> {
        let ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && !self.name.starts_with('.');
        if ok {
            return Ok(());
        }
        Err(Error::Invalid {
            what: "name",
            reason: format!(
                "{:?}: use 1 to 64 of [A-Za-z0-9._-], not starting with '.'",
                self.name
            ),
        })
    }
}

/// The VM backend.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum VmDriver {
    /// QEMU `-M microvm` (KVM when it works, TCG otherwise).
    Qemu(QemuOptions),
}

impl Default for VmDriver {
    fn default() -> Self {
        VmDriver::Qemu(QemuOptions::default())
    }
}

/// The guest kernel and agent both flows boot.
#[derive(Debug, Clone)]
pub struct GuestOptions {
    /// The static `vminit` binary; it goes into the initramfs, never into the image.
    pub vminit: PathBuf,
    /// The kernel cache (`firebuild_vmm::kernel::default_cache_dir()`); prepared there on first
    /// use (Debian's cloud kernel, through apt).
    pub kernel_cache: PathBuf,
    /// The VM backend.
    pub driver: VmDriver,
    /// Guest memory, MiB.
    pub memory_mib: u32,
    /// Guest vCPUs.
    pub vcpus: u8,
    /// Stops the flows using these options when cancelled: the VM is stopped (its driver
    /// polls the token while it waits), the work files removed, and the flow returns
    /// [`Error::Cancelled`]. Keep a clone and call [`Cancel::cancel`] (on `SIGINT`, say).
    pub cancel: Cancel,
}

impl GuestOptions {
    /// 1 GiB and 2 vCPUs under QEMU.
    pub fn new(vminit: impl Into<PathBuf>, kernel_cache: impl Into<PathBuf>) -> Self {
        Self {
            vminit: vminit.into(),
            kernel_cache: kernel_cache.into(),
            driver: VmDriver::default(),
            memory_mib: 1024,
            vcpus: 2,
            cancel: Cancel::new(),
        }
    }
}

/// How to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Kernel, agent and VM size.
    pub guest: GuestOptions,
    /// Registry access and the layer cache for bases.
    pub pull: PullOptions,
    /// Size of the sparse work image the steps run in, MiB (shrunk afterwards).
    pub work_size_mib: u64,
    /// Free space left in the finished image, MiB (ignored when `size_mib` is set).
    pub headroom_mib: u64,
    /// Exact size of the finished image, MiB (refused when the content does not fit).
    pub size_mib: Option<u64>,
    /// The whole build's deadline.
    pub timeout: Duration,
    /// The longest one step may run; past it the VM is stopped and the build fails with
    /// [`Error::StepTimeout`] naming the step (`None`: no limit but `timeout`).
    pub step_timeout: Option<Duration>,
    /// Record the build args in the manifest (off by default: they often carry tokens).
    pub record_build_args: bool,
    /// Add a network interface on this host tap device, and Firecracker's MMDS, to the
    /// Firecracker config written beside the image (`None`: no network, no metadata).
    pub firecracker_tap: Option<String>,
    /// `--no-cache`: no step's result is reused from the step cache (results are still
    /// stored, for later builds), and cache mounts start empty (BuildKit's `--no-cache` does
    /// both).
    pub no_cache: bool,
    /// The step cache's directory (see [`crate::stepcache`]); `None`: no step cache, every step
    /// runs and nothing is stored.
    pub step_cache: Option<PathBuf>,
    /// `--no-cache-filter`: stages (by name or index) whose steps are not reused from the step
    /// cache.
    pub no_cache_filter: Vec<String>,
    /// The step cache's size limit in bytes: after a build, the least recently used entries
    /// go until the rest fits (`None`: no limit).
    pub step_cache_max_bytes: Option<u64>,
}

impl BuildOptions {
    /// Defaults: 4 GiB work image, 64 MiB headroom, 30 minutes.
    pub fn new(guest: GuestOptions, layer_cache: impl Into<PathBuf>) -> Self {
        Self {
            guest,
            pull: PullOptions::new(layer_cache),
            work_size_mib: 4096,
            headroom_mib: DEFAULT_HEADROOM_MIB,
            size_mib: None,
            timeout: Duration::from_secs(1800),
            step_timeout: None,
            record_build_args: false,
            firecracker_tap: None,
            no_cache: false,
            step_cache: None,
            no_cache_filter: Vec::new(),
            step_cache_max_bytes: None,
        }
    }
}

/// Default free space left in a finished image, MiB.
pub const DEFAULT_HEADROOM_MIB: u64 = 32;

/// What to boot.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The built image (`NAME.ext4`, with `NAME.manifest.json` beside it). Booted read-write,
    /// as Firecracker boots a root drive.
    pub image: PathBuf,
    /// A metadata document (our schema, JSON) served to the guest through the embedded MMDS:
    /// hostname, users and keys, files, network, first-boot script... `None`: the guest boots
    /// with `firebuild.metadata=off` and starts its workload at once.
    pub metadata: Option<serde_json::Value>,
    /// Arguments replacing the image's CMD (`docker run IMAGE ARGS...`).
    pub args: Vec<String>,
    /// The deadline; the VM is stopped past it.
    pub timeout: Duration,
}

impl RunRequest {
    /// A run of `image` without metadata, ten minutes at most.
    pub fn new(image: impl Into<PathBuf>) -> Self {
        Self {
            image: image.into(),
            metadata: None,
            args: Vec::new(),
            timeout: Duration::from_secs(600),
        }
    }

    /// `NAME.manifest.json` beside `NAME.ext4`.
    pub fn manifest_path(&self) -> PathBuf {
        manifest_beside(&self.image)
    }
}

/// The manifest path written beside an image.
pub fn manifest_beside(image: &Path) -> PathBuf {
    image.with_extension("manifest.json")
}

/// Reads at most `max` bytes of `path`; a larger file is an error naming it and `what` it is.
pub fn read_bounded(path: &Path, max: u64, what: &'static str) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(Error::io("read", path))?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(Error::io("read", path))?;
    if bytes.len() as u64 > max {
        return Err(Error::Invalid {
            what,
            reason: format!("{} is larger than {max} bytes", path.display()),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn names_that_would_escape_or_hide_are_refused() {
        for bad in ["", ".hidden", "a/b", "../x", "a b", &"x".repeat(65)] {
            let e = BuildRequest::new(".", bad, "out").validate().unwrap_err();
            assert!(e.to_string().starts_with("invalid name: "), "{e}");
        }
        BuildRequest::new(".", "debian-12_v1.0", "out")
            .validate()
            .unwrap();
    }

    #[test]
    fn bounded_reads_name_the_file_and_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("md.json");
        std::fs::write(&path, [b'x'; 11]).unwrap();
        assert_eq!(read_bounded(&path, 11, "metadata").unwrap().len(), 11);
        let e = read_bounded(&path, 10, "metadata").unwrap_err().to_string();
        assert!(e.contains("md.json is larger than 10 bytes"), "{e}");
        let e = read_bounded(&dir.path().join("none"), 10, "metadata").unwrap_err();
        assert!(e.to_string().starts_with("cannot read "), "{e}");
    }
}
