//! The [`Driver`] trait every VM backend implements.

use std::path::Path;
use std::process::{Child, Command, ExitStatus};
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
        self.run_until(timeout, &|| false)
    }

    /// [`run`](Self::run), also stopping the VM as soon as `cancelled()` answers true (asked
    /// before starting and every [`CANCEL_POLL`] while it runs). Everything happens on the
    /// calling thread, so the VMM's parent-death signal stays armed.
    fn run_until(&mut self, timeout: Duration, cancelled: &dyn Fn() -> bool) -> Result<RunOutcome> {
        if cancelled() {
            return Ok(RunOutcome::Cancelled);
        }
        self.prepare()?;
        self.start()?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if let Some(exit) = self.wait(left.min(CANCEL_POLL))? {
                return Ok(RunOutcome::Exited(exit));
            }
            if cancelled() {
                self.stop()?;
                return Ok(RunOutcome::Cancelled);
            }
            if left.is_zero() {
                self.stop()?;
                return Ok(RunOutcome::TimedOut);
            }
        }
    }
}

/// How often [`Driver::run_until`] asks whether to stop: often enough that a build which
/// stops its VM at the guest's success (its disk frozen meanwhile) does not wait on it. The
/// question is an atomic load; the exit is polled every 20 ms anyway.
pub const CANCEL_POLL: Duration = Duration::from_millis(20);

/// The result of [`Driver::run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RunOutcome {
    /// The VM exited by itself.
    Exited(VmExit),
    /// The timeout passed and the VM was stopped.
    TimedOut,
    /// The caller cancelled ([`Driver::run_until`]); the VM was stopped or never started.
    Cancelled,
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

/// What [`wait_vmm`] or [`stop_vmm`] found of a driver's VMM process.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Reaped {
    /// No exit: still running after the timeout (`wait`), or never started (`stop`).
    Not,
    /// It had exited before; the exit recorded then.
    Before(VmExit),
    /// It exited (or was stopped) just now; the exit is recorded.
    Now(VmExit),
}

impl Reaped {
    /// The exit, earlier or now.
    pub(crate) fn exit(self) -> Option<VmExit> {
        match self {
            Reaped::Not => None,
            Reaped::Before(exit) | Reaped::Now(exit) => Some(exit),
        }
    }
}

/// Fails with "already started" when `child` is set.
pub(crate) fn check_not_started(driver: &'static str, child: Option<&Child>) -> Result<()> {
    if child.is_some() {
        return Err(Error::State {
            driver,
            reason: "already started".to_owned(),
        });
    }
    Ok(())
}

/// Spawns the VMM `cmd`; a failure names `program`.
///
/// The VMM gets `SIGKILL` when its parent dies (`PR_SET_PDEATHSIG`), so a killed caller never
/// orphans a VM. Linux sends it when the *thread* that spawned the VMM exits: start and wait
/// on one thread (as [`Driver::run`] does), or keep the starting thread alive while the VM runs.
#[allow(unsafe_code)]
pub(crate) fn spawn_vmm(cmd: &mut Command, program: &Path) -> Result<Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
    cmd.spawn().map_err(|source| Error::Spawn {
        program: program.display().to_string(),
        source,
    })
}

/// The shared part of [`Driver::wait`]: the recorded `exit` if there is one, else waits up to
/// `timeout` for `child` and records its exit.
pub(crate) fn wait_vmm(
    driver: &'static str,
    child: Option<&mut Child>,
    exit: &mut Option<VmExit>,
    timeout: Duration,
) -> Result<Reaped> {
    if let Some(exit) = *exit {
        return Ok(Reaped::Before(exit));
    }
    let Some(child) = child else {
        return Err(Error::State {
            driver,
            reason: "wait() before start()".to_owned(),
        });
    };
    let Some(status) = wait_child(child, timeout, driver)? else {
        return Ok(Reaped::Not);
    };
    Ok(Reaped::Now(*exit.insert(VmExit {
        status,
        stopped: false,
    })))
}

/// The shared part of [`Driver::stop`]: the recorded `exit` if there is one, else ends `child`
/// with `end` and records its exit as stopped.
pub(crate) fn stop_vmm(
    child: Option<&mut Child>,
    exit: &mut Option<VmExit>,
    end: impl FnOnce(&mut Child) -> Result<ExitStatus>,
) -> Result<Reaped> {
    if let Some(exit) = *exit {
        return Ok(Reaped::Before(exit));
    }
    let Some(child) = child else {
        return Ok(Reaped::Not);
    };
    let status = end(child)?;
    Ok(Reaped::Now(*exit.insert(VmExit {
        status,
        stopped: true,
    })))
}

/// Kills `child` unless its `exit` is recorded: what a driver's `Drop` does first.
pub(crate) fn kill_unreaped(child: Option<&mut Child>, exit: Option<VmExit>) {
    if let Some(child) = child
        && exit.is_none()
    {
        let _ = kill_child(child);
    }
}
