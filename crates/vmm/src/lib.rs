//! VM drivers behind one trait — Firecracker, QEMU microvm, a namespace sandbox — and the
//! guest kernel they boot.
//!
//! - [`VmSpec`]: what to boot (kernel, drives, vCPUs, memory, network, metadata).
//! - [`Driver`]: `prepare` → `start` → `wait(timeout)` → `stop`, plus the console log path;
//!   implemented by [`QemuDriver`], [`FirecrackerDriver`] and [`SandboxDriver`].
//! - Metadata: QEMU relays the guest's `169.254.169.254:80` to a caller-run MMDS server
//!   ([`Metadata::Server`], e.g. `firebuild_mmds::server`), the sandbox forwards it the same way,
//!   Firecracker uses its own MMDS V2 ([`Metadata::Firecracker`]). The guest reaches the host's
//!   loopback ports at `169.254.0.2` under QEMU and in the sandbox.
//! - The sandbox is **weaker isolation than a VM** (namespaces over the host kernel).
//! - [`kvm::check`]: whether `/dev/kvm` runs a test guest at hardware speed, in under 0.5 s;
//!   QEMU's `Accel::Auto` asks it before its boot probe ([`qemu::probe_kvm`]).
//! - [`kernel::KernelBuilder`] / [`kernel::Kernel`]: Debian's cloud kernel fetched through apt,
//!   an initramfs that loads the virtio modules, and the ELF `vmlinux`, cached per version.
//!
//! ```
//! use firebuild_vmm::{Driver, Metadata, Network, QemuDriver, QemuOptions, VmSpec};
//!
//! let dir = std::env::temp_dir();
//! let mut spec = VmSpec::new("demo", &dir, dir.join("rootfs.ext4"));
//! spec.network = Network::User;
//! spec.metadata = Metadata::Server("127.0.0.1:8080".parse().unwrap());
//! let driver = QemuDriver::new(spec, QemuOptions::default());
//! assert_eq!(driver.name(), "qemu");
//! assert!(driver.console_log().ends_with("console.log"));
//! // driver.run(Duration::from_secs(120)) boots it (needs a prepared kernel and the image).
//! ```

/// The kernel parameters every firebuild guest boots with, as a literal for `concat!`: see
/// [`kernel::FAST_BOOT_ARGS`].
macro_rules! fast_boot_args {
    () => {
        "quiet audit=0 cryptomgr.notests pci=off 8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd"
    };
}

mod driver;
mod error;
pub mod firecracker;
pub mod kernel;
pub mod kvm;
pub mod netns;
mod process;
pub mod qemu;
pub mod sandbox;
mod spec;

pub use driver::{CANCEL_POLL, Driver, RunOutcome, VmExit};
pub use error::{Error, Result};
pub use firecracker::{FirecrackerDriver, FirecrackerOptions};
pub use process::which;
pub use qemu::{Accel, QemuDriver, QemuOptions};
pub use sandbox::{SandboxDriver, SandboxOptions};
/// The line vminit (PID 1) writes to the console right before it powers the VM off, followed by
/// the agent's exit code (the workload's exit status, 128 + signal when it was killed) and a
/// newline: `firebuild: exit code 0`. The line is not prefixed by the log formatter, so a host
/// that captured the serial console (QEMU `-serial`, Firecracker's stdout) finds it with
/// [`parse_exit_code`].
pub const EXIT_MARKER: &str = "firebuild: exit code ";

/// The exit code of the last [`EXIT_MARKER`] line in a console log, if any.
pub fn parse_exit_code(console: &str) -> Option<u8> {
    console.lines().rev().find_map(|line| {
        let rest = line.trim_end_matches('\r').strip_prefix(EXIT_MARKER)?;
        rest.trim().parse().ok()
    })
}

pub use spec::{Drive, KernelFiles, Metadata, Network, TapConfig, VmSpec};

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn exit_code_from_the_last_marker_line() {
        let log = "[    1.0] Run /init as init process\r\n\
                   firebuild: exit code 3\r\n\
                   2026-12-02T20:00:00Z INFO agent exited with 7; powering off\r\n\
                   firebuild: exit code 7\r\n\
                   [    9.9] reboot: Power down\r\n";
        assert_eq!(parse_exit_code(log), Some(7));
        assert_eq!(parse_exit_code("INFO agent exited with 7\n"), None);
        assert_eq!(parse_exit_code(&format!("{EXIT_MARKER}137\n")), Some(137));
    }
}
