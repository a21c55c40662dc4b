//! Sandbox driver (being written).
#![allow(missing_docs)]
use crate::{Driver, Error, Result, VmExit, VmSpec};
use std::path::{Path, PathBuf};
use std::time::Duration;
#[derive(Debug, Clone, Default)]
pub struct SandboxOptions {}
#[derive(Debug)]
pub struct SandboxDriver {
    spec: VmSpec,
    console: PathBuf,
}
impl SandboxDriver {
    pub fn new(spec: VmSpec, _o: SandboxOptions) -> Self {
        let console = spec.console_log_path();
        Self { spec, console }
    }
}
impl Driver for SandboxDriver {
    fn name(&self) -> &'static str {
        "sandbox"
    }
    fn start(&mut self) -> Result<()> {
        Err(Error::Spec(format!("{} unwritten", self.spec.name)))
    }
    fn wait(&mut self, _t: Duration) -> Result<Option<VmExit>> {
        Ok(None)
    }
    fn stop(&mut self) -> Result<Option<VmExit>> {
        Ok(None)
    }
    fn console_log(&self) -> &Path {
        &self.console
    }
}
