//! The crate's error: one variant per step of the flows, so a failure says which step broke.

use std::path::PathBuf;
use std::time::Duration;

/// What went wrong in a build or a run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read, written or created.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// What was attempted (`read`, `create`...).
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The Dockerfile did not resolve into a plan (the message names file:line:col).
    #[error("{0}")]
    Plan(String),
    /// The plan asks for something the build cannot do yet.
    #[error("{file}: {reason}")]
    Unsupported {
        /// The Dockerfile (with `:line` where known).
        file: String,
        /// What and why.
        reason: String,
    },
    /// A request or option is invalid.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// The field.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The base image could not be resolved or prepared.
    #[error("base image {reference}")]
    Base {
        /// The reference.
        reference: String,
        /// The cause.
        #[source]
        source: firebuild_rootfs::Error,
    },
    /// The guest kernel or the agent's initramfs could not be prepared.
    #[error("guest kernel")]
    Kernel(#[source] firebuild_vmm::Error),
    /// The per-build PKI could not be minted.
    #[error("build PKI")]
    Pki(#[source] firebuild_pki::Error),
    /// The bootstrap server failed.
    #[error("bootstrap server")]
    Bootstrap(#[source] firebuild_bootstrap::ServerError),
    /// The metadata server failed.
    #[error("metadata server")]
    Metadata(#[source] firebuild_mmds::server::Error),
    /// The bootstrap credentials are still readable from the metadata after the guest
    /// connected: the build is refused rather than leaving the key exposed.
    #[error("the bootstrap credentials could not be removed from the metadata: {0}")]
    Scrub(String),
    /// The VM could not be started or stopped.
    #[error("VM ({console})", console = console.display())]
    Vm {
        /// The console log kept for inspection.
        console: PathBuf,
        /// The cause.
        #[source]
        source: firebuild_vmm::Error,
    },
    /// A step failed in the guest.
    #[error("{location}build failed{code}: {message} (console: {console})",
        code = exit_code.map(|c| format!(" with exit code {c}")).unwrap_or_default(),
        console = console.display())]
    StepFailed {
        /// `Dockerfile:LINE: ` of the failing instruction, empty when unknown.
        location: String,
        /// The step's exit code, when it ran.
        exit_code: Option<i32>,
        /// The guest's message (last lines of output).
        message: String,
        /// The console log kept for inspection.
        console: PathBuf,
    },
    /// The VM ran past the deadline and was stopped.
    #[error("the VM did not finish within {timeout:?} (console: {console})", console = console.display())]
    Timeout {
        /// The deadline.
        timeout: Duration,
        /// The console log kept for inspection.
        console: PathBuf,
    },
    /// A step ran longer than the step timeout: the VM was stopped.
    #[error("{0}")]
    StepTimeout(Box<TimedOutStep>),
    /// The build or run was cancelled (its [`Cancel`](crate::Cancel) token, or the future
    /// dropped): the VM was stopped and the work files removed.
    #[error("cancelled{}", removed_list(removed))]
    Cancelled {
        /// What the build removed on its way out (its work directory).
        removed: Vec<PathBuf>,
    },
    /// The VM ended without the guest reporting a result.
    #[error("the VM exited without a result from the guest: {what} (console: {console})", console = console.display())]
    NoResult {
        /// What was seen instead.
        what: String,
        /// The console log kept for inspection.
        console: PathBuf,
    },
    /// Finishing the image (check, shrink, manifest) failed.
    #[error("image {}", path.display())]
    Image {
        /// The image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: firebuild_rootfs::Error,
    },
    /// An `ADD <url>` source could not be downloaded or verified.
    #[error("{location}cannot fetch {url}")]
    Fetch {
        /// `Dockerfile:LINE: ` of the first instruction naming the URL (empty when unknown).
        location: String,
        /// The URL as written in the Dockerfile.
        url: String,
        /// The cause.
        #[source]
        source: crate::fetch::FetchError,
    },
    /// A background task panicked or was cancelled.
    #[error("internal task failed: {0}")]
    Task(String),
}

/// The step an [`Error::StepTimeout`] stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}step {number}/{total} of stage {stage}, `{instruction}`, ran longer than the step timeout ({timeout:?}): the VM was stopped (console: {console})",
    console = console.display())]
#[non_exhaustive]
pub struct TimedOutStep {
    /// `Dockerfile:LINE: ` of the instruction, empty when unknown.
    pub location: String,
    /// The stage: its index, and its `AS` name where it has one (`1 (build)`).
    pub stage: String,
    /// The step's 1-based position among all steps of the build.
    pub number: usize,
    /// Steps in the build.
    pub total: usize,
    /// The instruction, shortened (`RUN sleep 600`).
    pub instruction: String,
    /// The step timeout.
    pub timeout: Duration,
    /// The console log kept for inspection.
    pub console: PathBuf,
}

fn removed_list(removed: &[PathBuf]) -> String {
    if removed.is_empty() {
        return String::new();
    }
    let paths: Vec<String> = removed.iter().map(|p| p.display().to_string()).collect();
    format!("; removed {}", paths.join(", "))
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::Io`] builder for `map_err`.
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }

    /// An [`Error::Image`] builder for `map_err`.
    pub(crate) fn image(path: &std::path::Path) -> impl FnOnce(firebuild_rootfs::Error) -> Self {
        let path = path.to_path_buf();
        move |source| Error::Image { path, source }
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Error::Task(e.to_string())
    }
}
