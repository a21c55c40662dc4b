//! Firecracker driver (being written).
#![allow(missing_docs)]
use crate::{Driver, Error, Result, VmExit, VmSpec};
use std::path::{Path, PathBuf};
use std::time::Duration;
#[derive(Debug, Clone, Default)]
pub struct FirecrackerOptions {}
#[derive(Debug)]
pub struct FirecrackerDriver {
    spec: VmSpec,
    console: PathBuf,
}
impl FirecrackerDriver {
    pub fn new(spec: VmSpec, _o: FirecrackerOptions) -> Self {
        let console = spec.console_log_path();
        Self { spec, console }
    }
}
impl Driver for FirecrackerDriver {
    fn name(&self) -> &'static str {
        "firecracker"
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
