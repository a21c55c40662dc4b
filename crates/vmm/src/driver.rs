//! The [`Driver`] trait every VM backend implements.

use std::path::Path;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How a VM ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmExit {
    /// The VMM process's exit status.
    pub status: ExitStatus,
    /// Whether the driver stopped it (`stop`), as opposed to the guest powering off.
    pub stopped: bool,
}

/// A VM backend: Firecracker, QEMU microvm or the namespace sandbox.
///
/// The life cycle is `prepare` → `start` → `wait` (with a timeout, repeatable) → `stop` (always
/// safe, also after exit). Dropping a driver stops its VM and releases what `prepare` made.
pub trait Driver {
    /// The driver's name (`qemu`, `firecracker`, `sandbox`).
    fn name(&self) -> &'static str;

    /// Checks the spec and sets up host resources (tap devices, sockets, probes).
    fn prepare(&mut self) -> Result<()> {
        Ok(())
    }

    /// Starts the VM.
    fn start(&mut self) -> Result<()>;

    /// Waits up to `timeout` for the VM to exit; `Ok(None)` if it is still running.
    fn wait(&mut self, timeout: Duration) -> Result<Option<VmExit>>;

    /// Stops the VM (gracefully where the VMM supports it, then by killing it) and releases
    /// host resources. Returns how it ended, or `None` if it never started.
    fn stop(&mut self) -> Result<Option<VmExit>>;

    /// The file the guest console is written to.
    fn console_log(&self) -> &Path;

    /// `prepare`, `start`, then `wait` up to `timeout`; stops the VM when it does not exit in time.
    fn run(&mut self, timeout: Duration) -> Result<RunOutcome> {
        self.prepare()?;
        self.start()?;
        match self.wait(timeout)? {
            Some(exit) => Ok(RunOutcome::Exited(exit)),
            None => {
                self.stop()?;
                Ok(RunOutcome::TimedOut)
            }
        }
    }
}

/// The result of [`Driver::run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RunOutcome {
    /// The VM exited by itself.
    Exited(VmExit),
    /// The timeout passed and the VM was stopped.
    TimedOut,
}

/// Polls `child` until it exits or `timeout` passes.
pub(crate) fn wait_child(
    child: &mut Child,
    timeout: Duration,
    driver: &'static str,
) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(Some(status)),
            Ok(None) => {}
            Err(e) => {
                return Err(Error::State {
                    driver,
                    reason: format!("waiting for the vmm process: {e}"),
                });
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(20)));
    }
}

/// Kills `child` (SIGKILL) and reaps it.
pub(crate) fn kill_child(child: &mut Child) -> Result<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Ok(status);
    }
    let _ = child.kill();
    child.wait().map_err(|source| Error::Io {
        path: "vmm process".into(),
        source,
    })
}
