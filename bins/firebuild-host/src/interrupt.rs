//! `SIGINT` and `SIGTERM` during `build` and `run`: the flow's [`Cancel`] token is cancelled
//! (its VM stops, its work files go), the flow gets a moment to wind down, and the command
//! exits with 128 + the signal's number, as a shell reports a process the signal killed.

use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use firebuild_build::Cancel;
use tokio::signal::unix::{SignalKind, signal};

/// How long a cancelled flow gets to stop its VM and remove its files before it is dropped
/// (dropping it removes them too; a second signal drops it at once).
pub const GRACE: Duration = Duration::from_secs(20);

/// How long the runtime waits at exit for blocking threads (a VM's) still running.
pub const SHUTDOWN: Duration = Duration::from_secs(5);

/// The signals handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// `SIGINT` (Ctrl-C).
    Int,
    /// `SIGTERM`.
    Term,
}

impl Signal {
    /// 128 + the signal's number: 130 and 143.
    pub fn exit_code(self) -> u8 {
        match self {
            Signal::Int => 130,
            Signal::Term => 143,
        }
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Signal::Int => "SIGINT",
            Signal::Term => "SIGTERM",
        })
    }
}

/// `SIGINT` and `SIGTERM`, caught from creation on (they no longer kill the process).
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    /// Starts catching both. Call from within the runtime.
    pub fn catch() -> anyhow::Result<Self> {
        let int = signal(SignalKind::interrupt()).context("cannot catch SIGINT")?;
        let term = signal(SignalKind::terminate()).context("cannot catch SIGTERM")?;
        Ok(Self { int, term })
    }

    /// The next signal.
    pub async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.int.recv() => Signal::Int,
            _ = self.term.recv() => Signal::Term,
        }
    }
}

/// How a flow raced against the signals ended.
#[derive(Debug)]
pub enum Ended<T> {
    /// It finished by itself.
    Done(T),
    /// A signal came first: the token was cancelled, then the flow either returned within the
    /// grace period (`Some`, usually its cancellation error) or was dropped (`None`).
    Interrupted(Signal, Option<T>),
}

/// Runs `flow` until it ends or a signal arrives; then cancels `cancel` and waits up to
/// [`GRACE`] (until a second signal) for `flow` to wind down.
pub async fn until_signal<T>(
    flow: impl Future<Output = T>,
    cancel: &Cancel,
    signals: &mut Signals,
) -> Ended<T> {
    tokio::pin!(flow);
    let signal = tokio::select! {
        result = &mut flow => return Ended::Done(result),
        signal = signals.recv() => signal,
    };
    tracing::info!(%signal, "cancelling");
    cancel.cancel();
    let result = tokio::select! {
        result = tokio::time::timeout(GRACE, &mut flow) => result.ok(),
        _ = signals.recv() => None,
    };
    Ended::Interrupted(signal, result)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn exit_codes_are_128_plus_the_signal() {
        assert_eq!(Signal::Int.exit_code(), 128 + 2);
        assert_eq!(Signal::Term.exit_code(), 128 + 15);
    }
}
