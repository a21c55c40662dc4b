//! What to boot: [`VmSpec`] and its parts, shared by every driver.

use std::net::SocketAddr;
use std::path::PathBuf;

/// A VM to run: kernel, root drive(s), size, network and metadata.
///
/// Drivers read the fields they support and refuse ([`crate::Error::Spec`]) what they cannot do.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// A short name, used for tap devices and log lines.
    pub name: String,
    /// Directory for the driver's files (API socket, console log, scratch); must exist.
    pub work_dir: PathBuf,
    /// The kernel and initramfs; `None` uses the cached kernel ([`crate::kernel::Kernel::find_default`]).
    pub kernel: Option<KernelFiles>,
    /// The kernel command line; `None` uses the driver's default.
    pub cmdline: Option<String>,
    /// Block devices, the first being the root (`/dev/vda`).
    pub drives: Vec<Drive>,
    /// Virtual CPUs.
    pub vcpus: u8,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Networking.
    pub network: Network,
    /// Metadata (MMDS) handling.
    pub metadata: Metadata,
    /// The console log; `None` means `work_dir/console.log`.
    pub console_log: Option<PathBuf>,
}

impl VmSpec {
    /// A spec with one root drive, 1 vCPU, 512 MiB, no network and no metadata.
    pub fn new(
        name: impl Into<String>,
        work_dir: impl Into<PathBuf>,
        rootfs: impl Into<PathBuf>,
    ) -> Self {
        Self {
            name: name.into(),
            work_dir: work_dir.into(),
            kernel: None,
            cmdline: None,
            drives: vec![Drive::new("rootfs", rootfs)],
            vcpus: 1,
            memory_mib: 512,
            network: Network::None,
            metadata: Metadata::None,
            console_log: None,
        }
    }

    /// The console log path.
    pub fn console_log_path(&self) -> PathBuf {
        self.console_log
            .clone()
            .unwrap_or_else(|| self.work_dir.join("console.log"))
    }
}

/// Kernel image and optional initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelFiles {
    /// The kernel: a bzImage for QEMU, an ELF `vmlinux` for Firecracker.
    pub kernel: PathBuf,
    /// The initramfs, if any.
    pub initrd: Option<PathBuf>,
}

/// A block device backed by a host file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drive {
    /// Identifier (Firecracker `drive_id`, QEMU `-drive id=`): letters, digits, `_`.
    pub id: String,
    /// The backing image (raw, e.g. ext4).
    pub path: PathBuf,
    /// Attach read-only.
    pub read_only: bool,
}

impl Drive {
    /// A read-write drive.
    pub fn new(id: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        Self {
            id: id.into(),
            path: path.into(),
            read_only: false,
        }
    }
}

/// Guest networking.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Network {
    /// No network device.
    #[default]
    None,
    /// The driver's unprivileged default: QEMU user networking (guest `169.254.0.15/16`, host
    /// reachable at `169.254.0.2`); the sandbox shares the host's network namespace.
    User,
    /// A host tap device (Firecracker). The driver creates it and deletes it on every exit path.
    Tap(TapConfig),
}

/// A tap device for the guest's `eth0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapConfig {
    /// The device name (at most 15 bytes).
    pub name: String,
    /// The guest MAC address.
    pub guest_mac: String,
    /// Address and prefix given to the host end, e.g. `169.254.0.2/16`; `None` leaves it unconfigured.
    pub host_cidr: Option<String>,
}

/// How the guest reaches its metadata.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub enum Metadata {
    /// No metadata.
    #[default]
    None,
    /// An MMDS-compatible HTTP server on the host (loopback): QEMU relays the guest's
    /// `169.254.169.254:80` to it; the sandbox guest reaches it directly.
    Server(SocketAddr),
    /// Firecracker's own MMDS (V2), filled with this document before boot.
    Firecracker(serde_json::Value),
}
