//! The crate's error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the guest logic.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file system operation failed.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done (`read`, `write`, `create directory`...).
        op: &'static str,
        /// The host path (under the guest root).
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A line of a database file (`/etc/passwd`...) is malformed.
    #[error("{}:{line}: {reason}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A file is larger than this crate accepts.
    #[error("{} is larger than {limit} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit in bytes.
        limit: u64,
    },
    /// A user name or id that does not resolve.
    #[error("unable to find user {0}: no matching entries in passwd file")]
    UnknownUser(String),
    /// A group name that does not resolve.
    #[error("unable to find group {0}: no matching entries in group file")]
    UnknownGroup(String),
    /// A user or group spec, name or field that is not acceptable.
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        /// What kind of value (`user name`, `uid`, `home`...).
        what: &'static str,
        /// The value.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// A user or group that already exists with different attributes.
    #[error("{what} {name:?} already exists")]
    Exists {
        /// `user` or `group`.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// No free id left in the allowed range.
    #[error("no free {0} id left")]
    IdsExhausted(&'static str),
    /// A guest path could not be resolved inside the root (symlink loop, non-directory parent).
    #[error("cannot resolve {path:?} inside the guest root: {reason}")]
    Resolve {
        /// The guest path.
        path: String,
        /// Why.
        reason: &'static str,
    },
    /// A process could not be started.
    #[error("cannot start {program:?}")]
    Spawn {
        /// argv\[0\].
        program: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A COPY/ADD could not be carried out as asked.
    #[error("cannot place {what}: {reason}")]
    Place {
        /// The source or destination concerned.
        what: String,
        /// Why.
        reason: String,
    },
    /// A guest configuration step failed.
    #[error("guest configuration step {step} failed: {reason}")]
    Config {
        /// The step's name (`hostname`, `network`...).
        step: &'static str,
        /// Why.
        reason: String,
    },
}

impl Error {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
