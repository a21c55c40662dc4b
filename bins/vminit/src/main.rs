//! `vminit`: firebuild's guest agent.
//!
//! As PID 1 it (with `--switch-root DIR`, started by the initramfs it lives in) moves the root
//! mounted at DIR onto `/`, mounts the API file systems (creating `/proc`, `/sys`, `/dev` only
//! when the image lacks them, and removing those again at shutdown), brings up `lo`, starts a
//! copy of itself as the agent (so that orphans are reparented to PID 1 and reaped there, never
//! stealing the agent's own children from it), forwards SIGTERM/SIGINT, and when the agent ends
//! syncs, remounts the root read-only, writes `firebuild: exit code N` on the console and powers
//! off. The agent:
//!
//! 1. configures the interface named by the kernel's `ip=` when it has no address (only when the
//!    root is `/`);
//! 2. reads metadata from the sources of [`firebuild_guest::source`] under one deadline;
//! 3. with a `bootstrap` section runs the build (build mode: no guest configuration, a
//!    BuildKit-like `/etc/resolv.conf`, `/etc/hosts`, `/etc/hostname` for the steps, restored
//!    afterwards) and exits 0/1; otherwise configures the guest, mounts `/run` and `/tmp`
//!    (tmpfs), runs the image's entrypoint/cmd (run mode) and exits with its status; `--watch`
//!    keeps re-reading metadata and re-applying hostname, SSH keys and files.
//!
//! The image config of run mode (ENTRYPOINT, CMD, ENV, WORKDIR, USER, SHELL) comes from
//! `/firebuild/image.json` in the initramfs (read by PID 1 before the root switch and handed to
//! the agent as `VMINIT_IMAGE_CONFIG=/proc/1/fd/N`), else from the image's
//! `/etc/firebuild/image.json`.
//!
//! Not PID 1 (tests, images with their own init): `--root DIR` resolves every guest path under
//! DIR and runs steps chrooted there; `--once` exits instead of waiting.

mod agent;
mod build;
mod buildenv;
mod configure;
mod disks;
mod init;
mod logging;
mod mounts;
mod net;
mod place;
mod run;
mod status;
mod stubs;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// Command line of vminit.
#[derive(Debug, Clone, Parser)]
#[command(version, about = "firebuild guest agent (PID 1)")]
pub struct Args {
    /// The guest's root directory: every guest path is resolved under it and steps run chrooted
    /// there.
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// Do the work once and exit (tests, images that keep their own init); never powers off.
    #[arg(long)]
    pub once: bool,
    /// After starting the workload, long-poll metadata and re-apply hostname, SSH keys and files.
    #[arg(long)]
    pub watch: bool,
    /// Base URL of the MMDS.
    #[arg(long, default_value = firebuild_guest::source::DEFAULT_MMDS_URL)]
    pub metadata_url: String,
    /// Do not ask MMDS.
    #[arg(long)]
    pub no_mmds: bool,
    /// Read the CPIO config archive from this image file or device instead of scanning block
    /// devices.
    #[arg(long)]
    pub cpio_device: Option<PathBuf>,
    /// Overall deadline for reading metadata, in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub metadata_timeout: f64,
    /// Skip the guest configuration (hostname, users, keys, files...).
    #[arg(long)]
    pub no_configure: bool,
    /// PID 1 only: the root file system is mounted at DIR (by the initramfs vminit was started
    /// from); move it onto `/` and enter it first.
    #[arg(long, value_name = "DIR")]
    pub switch_root: Option<PathBuf>,
}

impl Args {
    fn metadata_deadline(&self) -> Duration {
        Duration::from_secs_f64(self.metadata_timeout.clamp(0.0, 3600.0))
    }
}

fn main() -> ExitCode {
    init::mark_started();
    logging::init();
    let args = match Args::try_parse() {
        Ok(args) => args,
        // The kernel hands init every command line word it does not know (`quiet`, `splash`):
        // PID 1 must not die on them (a dying init panics the kernel).
        Err(e) if init::is_pid1() || init::is_agent_child() => {
            tracing::warn!("ignoring init arguments: {}", e.kind());
            Args::parse_from(["vminit"])
        }
        Err(e) => e.exit(),
    };
    if init::is_pid1() && !init::is_agent_child() {
        return init::pid1(&args);
    }
    ExitCode::from(run_agent(args))
}

/// The agent (configure the guest, then build or run); its exit code. Run by `main`, or by the
/// copy of PID 1 it forked (`init::pid1`).
fn run_agent(args: Args) -> u8 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("starting the runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(agent::run(args)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            1
        }
    }
}
