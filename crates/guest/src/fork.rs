//! `fork()` without `exec`, for a process that has one thread: PID 1 starting the agent as a
//! copy of itself instead of running its own binary again (under TCG the `exec` of the static
//! agent and its start-up cost ~0.1 s of every boot).

use std::io;

/// What [`fork_single_threaded`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    /// In the parent: the child's PID.
    Parent(rustix::process::Pid),
    /// In the child.
    Child,
    /// Nothing: the process has more than one thread (or `/proc` is not mounted), where a
    /// forked child could inherit a lock another thread held; start the child with `exec`.
    MultiThreaded,
}

/// Forks this process if, and only if, it has one thread (`/proc/self/task` has one entry).
pub fn fork_single_threaded() -> io::Result<Forked> {
    let threads = std::fs::read_dir("/proc/self/task").map(Iterator::count);
    if threads.ok() != Some(1) {
        return Ok(Forked::MultiThreaded);
    }
    fork()
}

#[allow(unsafe_code)]
fn fork() -> io::Result<Forked> {
    // SAFETY: `fork_single_threaded` checked that this process has a single thread, so no lock
    // or allocator state can be held by a thread the child lacks; the child goes on running
    // ordinary Rust code, as the only thread of its own process.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => rustix::process::Pid::from_raw(pid)
            .map(Forked::Parent)
            .ok_or_else(|| io::Error::other("fork returned an invalid pid")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_multi_threaded_process_is_not_forked() {
        // The test harness runs tests on their own threads: never a single thread here.
        assert_eq!(fork_single_threaded().unwrap(), Forked::MultiThreaded);
    }
}
