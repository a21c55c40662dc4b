//! The crate's error type.

use std::path::PathBuf;

/// Errors of kernel preparation and of the VM drivers.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file system operation failed.
    #[error("i/o on {path}")]
    Io {
        /// The path operated on.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A helper program could not be started.
    #[error("starting {program}")]
    Spawn {
        /// The program.
        program: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A helper program ran and failed.
    #[error("{program} failed ({status}): {stderr}")]
    Tool {
        /// The program and its arguments, as run.
        program: String,
        /// Its exit status.
        status: String,
        /// The end of its standard error.
        stderr: String,
    },
    /// A program the operation needs is not installed.
    #[error("{what} needs `{program}`, which is not on PATH")]
    MissingTool {
        /// What needed it.
        what: &'static str,
        /// The program.
        program: String,
    },
    /// The kernel package could not be resolved or is not laid out as expected.
    #[error("kernel package {package}: {reason}")]
    Package {
        /// The package name.
        package: String,
        /// What is wrong.
        reason: String,
    },
    /// No kernel has been prepared in the cache directory.
    #[error(
        "no prepared guest kernel in {}: run `firebuild-host kernel prepare` (KernelBuilder)",
        cache.display()
    )]
    NoKernel {
        /// The cache directory searched.
        cache: PathBuf,
    },
    /// The bzImage could not be read or its payload decompressed.
    #[error("bzImage {path}: {reason}")]
    BzImage {
        /// The bzImage.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A kernel module named by the initramfs is missing or malformed.
    #[error("kernel module {name}: {reason}")]
    Module {
        /// The module name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A Unix socket path does not fit `sun_path`.
    #[error(
        "unix socket path {path} is {len} bytes; sun_path holds at most 107 bytes plus its NUL: use a shorter directory"
    )]
    SocketPathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
    /// The Firecracker API refused a request or could not be reached.
    #[error("firecracker api {method} {uri}: {reason}")]
    Api {
        /// The request method.
        method: &'static str,
        /// The request path.
        uri: String,
        /// The response status and body, or the transport failure.
        reason: String,
    },
    /// The VM specification cannot be run by this driver.
    #[error("vm spec: {0}")]
    Spec(String),
    /// A driver method was called in the wrong state (e.g. `wait` before `start`).
    #[error("driver {driver}: {reason}")]
    State {
        /// The driver name.
        driver: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A JSON document could not be written or read.
    #[error("json {what}")]
    Json {
        /// Which document.
        what: String,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
