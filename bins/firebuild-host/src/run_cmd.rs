//! `firebuild-host run`: boots a built image over [`firebuild_build::Runner`]; the console on
//! stdout, the workload's exit code as ours.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use firebuild_build::{RunRequest, Runner};

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

/// Runs the subcommand; the exit code is the workload's.
pub fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let mut req = RunRequest::new(&args.image);
    req.metadata = args.metadata.as_deref().map(read_metadata).transpose()?;
    req.args = args.args.clone();
    req.timeout = Duration::from_secs(args.timeout);
    let runner = Runner::new(args.guest.options()?);
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let ran = rt.block_on(runner.run(&req, crate::progress::Progress::plain().sink()))?;
    eprintln!("==> workload exited with {}", ran.exit_code);
    Ok(ExitCode::from(u8::try_from(ran.exit_code).unwrap_or(1)))
}
