//! Running helper programs with useful errors.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::error::{Error, Result};

/// How much of a failed program's stderr goes into the error.
const STDERR_TAIL: usize = 2000;

/// Describes a command for error messages: program and arguments.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion, returning its output; a non-zero exit is an [`Error::Tool`].
pub(crate) fn run(cmd: &mut Command) -> Result<Output> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    tracing::debug!(command = %describe(cmd), "running");
    let out = cmd.output().map_err(|source| Error::Spawn {
        program: program.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(tool_error(cmd, &out));
    }
    Ok(out)
}

pub(crate) fn tool_error(cmd: &Command, out: &Output) -> Error {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stderr = stderr.trim();
    let start = stderr
        .char_indices()
        .rev()
        .nth(STDERR_TAIL)
        .map_or(0, |(i, _)| i);
    Error::Tool {
        program: describe(cmd),
        status: out.status.to_string(),
        stderr: stderr[start..].to_owned(),
    }
}

/// Finds `program` on PATH (or returns it when it is a path that exists).
pub fn which(program: impl AsRef<OsStr>) -> Option<PathBuf> {
    let program = program.as_ref();
    let as_path = Path::new(program);
    if as_path.components().count() > 1 {
        return as_path.is_file().then(|| as_path.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Like [`which`], but a missing program is an [`Error::MissingTool`].
pub(crate) fn require(what: &'static str, program: &str) -> Result<PathBuf> {
    which(program).ok_or_else(|| Error::MissingTool {
        what,
        program: program.to_owned(),
    })
}
