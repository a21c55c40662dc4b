//! Boots one VM through the chosen driver and waits for it, on a blocking thread.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Stop the VM as soon as the guest's `Success` arrives ([`TakeAtSuccess`]).
    pub take: Option<TakeAtSuccess>,
}

/// The host's side of `freeze_at_success`: the bootstrap server's success hook
/// ([`TakeAtSuccess::hook`]) asks for the VM to be stopped and waits until it is gone, the guest
/// frozen meanwhile; [`run`]'s thread stops it when asked. The disk is then clean without the
/// guest's shutdown (its sync, unmounts and power-off: ~0.15 s under TCG).
#[derive(Debug, Clone)]
pub struct TakeAtSuccess(Arc<TakeState>);

#[derive(Debug)]
struct TakeState {
    requested: AtomicBool,
    gone: tokio::sync::watch::Sender<bool>,
}

impl Default for TakeAtSuccess {
    fn default() -> Self {
        Self(Arc::new(TakeState {
            requested: AtomicBool::new(false),
            gone: tokio::sync::watch::channel(false).0,
        }))
    }
}

impl TakeAtSuccess {
    /// The success hook for the bootstrap server.
    pub fn hook(&self) -> firebuild_bootstrap::SuccessHook {
        let take = self.clone();
        Arc::new(move || {
            let take = take.clone();
            Box::pin(async move {
                take.0.requested.store(true, Ordering::SeqCst);
                let mut gone = take.0.gone.subscribe();
                let _ = gone.wait_for(|g| *g).await;
            })
        })
    }

    /// Whether the hook asked for the VM to be stopped.
    pub fn requested(&self) -> bool {
        self.0.requested.load(Ordering::SeqCst)
    }

    fn mark_gone(&self) {
        self.0.gone.send_replace(true);
    }
}

/// How the VM ended, and where its console went.
#[derive(Debug)]
pub struct VmResult {
    /// The driver's outcome (or why it failed).
    pub outcome: std::result::Result<RunOutcome, firebuild_vmm::Error>,
    /// The console log.
    pub console: PathBuf,
    /// Stopped because the guest reported success ([`VmRequest::take`]).
    pub taken: bool,
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
    let take = req.take.clone();
    let taker = take.clone();
    // Started, waited for and stopped on one blocking thread: QEMU's parent-death signal is
    // tied to the thread that spawned it.
    let outcome = tokio::task::spawn_blocking(move || {
        let stop = || cancel.is_cancelled() || taker.as_ref().is_some_and(TakeAtSuccess::requested);
        let outcome = driver.run_until(timeout, &stop);
        if let Some(t) = &taker {
            t.mark_gone();
        }
        outcome
    })
    .await?;
    let taken = take.is_some_and(|t| t.requested());
    Ok(VmResult {
        outcome,
        console,
        taken,
    })
}
