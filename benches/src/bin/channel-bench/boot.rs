//! The bootstrap channel: `firebuild-bootstrap` server and client. (Wired once the crate's
//! server and client land.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::StepMode;
use crate::certs::Loaded;

/// Serves a file (or a plan of no-op steps) until killed.
pub fn serve(
    _pki: Loaded,
    _file: Option<PathBuf>,
    _steps: Option<usize>,
    _port_file: &Path,
) -> anyhow::Result<()> {
    anyhow::bail!("bootstrap server not wired yet")
}

/// Pulls the plan's resource to `out`.
pub fn pull(_pki: Loaded, _addr: &str, _out: &Path) -> anyhow::Result<(u64, Duration)> {
    anyhow::bail!("bootstrap client not wired yet")
}

/// Runs the step-latency client against a child server.
pub fn steps(
    _pki: &Path,
    _steps: usize,
    _mode: StepMode,
    _report: Option<&Path>,
) -> anyhow::Result<()> {
    anyhow::bail!("bootstrap client not wired yet")
}
