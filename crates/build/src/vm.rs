//! Boots one VM through the chosen driver and waits for it, on a blocking thread.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use firebuild_vmm::{
    Drive, Driver, KernelFiles, Metadata, Network, QemuDriver, RunOutcome, VmSpec,
};

use crate::boot::Boot;
use crate::error::{Error, Result};
use crate::options::{GuestOptions, VmDriver};

/// What to boot, beyond the guest options.
#[derive(Debug, Clone)]
pub struct VmRequest<'a> {
    /// A name for log lines.
    pub name: String,
    /// The driver's directory (console log, sockets).
    pub dir: &'a Path,
    /// The root drive.
    pub rootfs: &'a Path,
    /// More drives, after the root (the guest finds each by its serial, the drive id).
    pub disks: Vec<Drive>,
    /// Kernel and initramfs.
    pub boot: &'a Boot,
    /// The embedded metadata server the guest reaches at 169.254.169.254, if any.
    pub metadata: Option<SocketAddr>,
    /// Host loopback ports the guest reaches at `169.254.0.2:PORT` (the bootstrap server's);
    /// the rest of the host stays out of its reach (`QemuOptions::isolate`).
    pub host_ports: Vec<u16>,
    /// The metadata server's relay key (`ServerHandle::relay_key`), sent by the relay only.
    pub metadata_key: Option<Vec<u8>>,
    /// Extra kernel parameters after the driver's defaults.
    pub extra_cmdline: &'a str,
}

/// How the VM ended, and where its console went.
#[derive(Debug)]
pub struct VmResult {
    /// The driver's outcome (or why it failed).
    pub outcome: std::result::Result<RunOutcome, firebuild_vmm::Error>,
    /// The console log.
    pub console: PathBuf,
}

fn spec(guest: &GuestOptions, req: &VmRequest<'_>, cmdline: String) -> VmSpec {
    let mut spec = VmSpec::new(req.name.clone(), req.dir, req.rootfs);
    spec.kernel = Some(KernelFiles {
        kernel: req.boot.kernel.vmlinux(),
        initrd: Some(req.boot.initramfs.clone()),
    });
    spec.cmdline = Some(cmdline);
    spec.console_log = Some(console_path(req));
    spec.network = Network::User;
    spec.metadata = req.metadata.map_or(Metadata::None, Metadata::Server);
    spec.memory_mib = guest.memory_mib;
    spec.vcpus = guest.vcpus;
    spec.drives.extend(req.disks.iter().cloned());
    spec
}

/// The console log path the driver will write for `req`.
pub fn console_path(req: &VmRequest<'_>) -> PathBuf {
    req.dir.join("console.log")
}

/// Runs the VM until it powers off or `timeout` passes (then it is stopped).
pub async fn run(guest: &GuestOptions, req: &VmRequest<'_>, timeout: Duration) -> Result<VmResult> {
    std::fs::create_dir_all(req.dir).map_err(Error::io("create", req.dir))?;
    let VmDriver::Qemu(opts) = &guest.driver;
    let mut opts = opts.clone();
    opts.forward_ports.extend(&req.host_ports);
    opts.metadata_key.clone_from(&req.metadata_key);
    if opts.probe_cache.is_none() {
        opts.probe_cache = Some(req.boot.kernel.dir.join("kvm-probe"));
    }
    let cmdline = format!(
        "{} {}",
        firebuild_vmm::qemu::DEFAULT_CMDLINE,
        req.extra_cmdline
    );
    let mut driver = QemuDriver::new(spec(guest, req, cmdline.trim_end().to_owned()), opts);
    let console = driver.console_log().to_path_buf();
    let cancel = guest.cancel.clone();
    // Started, waited for and stopped on one blocking thread: QEMU's parent-death signal is
    // tied to the thread that spawned it.
    let outcome =
        tokio::task::spawn_blocking(move || driver.run_until(timeout, &|| cancel.is_cancelled()))
            .await?;
    Ok(VmResult { outcome, console })
}
