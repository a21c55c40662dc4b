//! `firebuild-host run`: boots a built image over [`firebuild_build::Runner`]; the console on
//! stdout, the workload's exit code as ours.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use firebuild_build::{RunRequest, Runner};

use crate::interrupt::{Ended, Signals};

/// Largest metadata file read (the embedded MMDS holds 51200 bytes by default).
const MAX_METADATA: u64 = 1 << 20;

/// Arguments of `firebuild-host run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The built image (`NAME.ext4`, with `NAME.manifest.json` beside it). Booted read-write.
    #[arg(value_name = "IMAGE.ext4")]
    pub image: PathBuf,
    /// A metadata document (JSON, firebuild's schema) served to the guest through the embedded
    /// MMDS: hostname, users and SSH keys, files, network, first-boot script.
    #[arg(long, value_name = "FILE")]
    pub metadata: Option<PathBuf>,
    #[command(flatten)]
    pub guest: crate::build_cmd::GuestArgs,
    /// Stop the VM after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    pub timeout: u64,
    /// Arguments replacing the image's CMD.
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<String>,
}

fn read_metadata(path: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    let bytes = firebuild_build::read_bounded(path, MAX_METADATA, "metadata")?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("metadata {} is not valid JSON", path.display()))
}

/// Runs the subcommand; the exit code is the workload's, or 130/143 when interrupted by
/// `SIGINT`/`SIGTERM` (after the VM is stopped and the work files removed).
pub fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let mut req = RunRequest::new(&args.image);
    req.metadata = args.metadata.as_deref().map(read_metadata).transpose()?;
    req.args = args.args.clone();
    req.timeout = Duration::from_secs(args.timeout);
    let guest = args.guest.options()?;
    let cancel = guest.cancel.clone();
    let runner = Runner::new(guest);
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let ended = rt.block_on(async {
        let mut signals = Signals::catch()?;
        let run = runner.run(&req, crate::progress::Progress::plain().sink());
        anyhow::Ok(crate::interrupt::until_signal(run, &cancel, &mut signals).await)
    });
    // A VM thread that missed the cancellation must not hold the exit: the VMM gets SIGKILL
    // when its thread ends with the process.
    rt.shutdown_timeout(crate::interrupt::SHUTDOWN);
    let ran = match ended? {
        Ended::Done(ran) | Ended::Interrupted(_, Some(ran @ Ok(_))) => ran?,
        Ended::Interrupted(signal, _) => {
            // The run's work directory went with it; the VM's thread saw the token.
            eprintln!("interrupted by {signal}: stopped the VM and removed its work files");
            return Ok(ExitCode::from(signal.exit_code()));
        }
    };
    eprintln!("==> workload exited with {}", ran.exit_code);
    Ok(ExitCode::from(u8::try_from(ran.exit_code).unwrap_or(1)))
}
