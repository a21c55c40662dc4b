//! The QEMU `-M microvm` driver: virtio-mmio devices, KVM when [`probe_kvm`] finds it usable,
//! else TCG.
//!
//! Networking is QEMU user mode on `169.254.0.0/16`: the host's `127.0.0.1:PORT` is the guest's
//! `169.254.0.2:PORT`, and the guest's `169.254.169.254:80` is relayed by a command QEMU spawns
//! per connection (`guestfwd=...-cmd:`) to the embedded MMDS server
//! ([`Metadata::Server`]). The default relay is
//! `busybox nc 127.0.0.1 PORT` (busybox-static is already needed for the initramfs).
//!
//! **Isolation** ([`QemuOptions::isolate`], on by default): QEMU runs in its own network
//! namespace (`unshare --net`), so "the host's loopback" above is that namespace's empty
//! loopback, where only the metadata port and [`QemuOptions::forward_ports`] are forwarded to
//! the real host loopback. The namespace's only route out is `slirp4netns
//! --disable-host-loopback`, and every address the host owns is a blackhole route in it: the
//! guest reaches the internet, as a `docker build` does, and of the host only the forwarded
//! ports ([`crate::netns::Isolation`], `docs/isolation.md`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use crate::driver::{
    Driver, Reaped, VmExit, check_not_started, kill_child, kill_unreaped, spawn_vmm, stop_vmm,
    wait_child, wait_vmm,
};
use crate::error::{Error, Result};
use crate::kernel::Kernel;
use crate::netns::Isolation;
use crate::spec::{KernelFiles, Metadata, Network, VmSpec};

/// The guest's address under user networking.
pub const GUEST_IP: &str = "169.254.0.15";
/// The host as the guest sees it under user networking.
pub const HOST_IP: &str = "169.254.0.2";
/// QEMU's DNS forwarder under user networking (`dns=`), the guest's name server.
pub const DNS_IP: &str = "169.254.0.3";

/// The kernel command line used when the spec gives none (before `tsc_early_khz`).
///
/// No `init=`: the initramfs starts vminit from itself when it holds one
/// ([`crate::kernel::agent_initramfs`]). `ip=`'s `dns0` field is QEMU user networking's DNS
/// forwarder ([`DNS_IP`], pinned with `dns=` on the netdev), the build's name server.
/// [`crate::kernel::FAST_BOOT_ARGS`] come after the console.
pub const DEFAULT_CMDLINE: &str = concat!(
    "console=ttyS0 ",
    fast_boot_args!(),
    " reboot=k panic=-1 ip=169.254.0.15::169.254.0.2:255.255.0.0::eth0:off:169.254.0.3 root=/dev/vda"
);

/// The `ip=` part of [`DEFAULT_CMDLINE`], dropped when the VM has no network.
const DEFAULT_IP: &str = " ip=169.254.0.15::169.254.0.2:255.255.0.0::eth0:off:169.254.0.3";

/// The relay command template; `{port}` becomes the metadata server's port.
pub const DEFAULT_RELAY: &str = "busybox nc 127.0.0.1 {port}";

/// How long QEMU's KVM boot probe may take to reach the initramfs. It runs only after
/// [`crate::kvm::check`] found a vCPU that runs natively, so only a QEMU-side failure waits it
/// out.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// QEMU acceleration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Accel {
    /// KVM if [`probe_kvm`] finds it usable, else TCG.
    Auto,
    /// Hardware virtualisation.
    Kvm,
    /// Software emulation.
    Tcg,
}

/// Options of the QEMU driver.
#[derive(Debug, Clone)]
pub struct QemuOptions {
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// Acceleration choice.
    pub accel: Accel,
    /// The metadata relay command; `{port}` is replaced by the server's port.
    pub relay: String,
    /// Where the KVM probe result is cached (a small file); `None`: in memory only.
    pub probe_cache: Option<PathBuf>,
    /// Confine user networking to the internet plus the forwarded ports (see the module docs);
    /// `false` gives the guest every port of the host's loopback at `169.254.0.2`.
    pub isolate: bool,
    /// The slirp4netns binary, used when isolating.
    pub slirp4netns: PathBuf,
    /// Host loopback ports the isolated guest reaches at `169.254.0.2:PORT` (the metadata
    /// server's port is forwarded for its relay without being listed).
    pub forward_ports: Vec<u16>,
    /// The line the relay sends first on each metadata connection
    /// (`firebuild_mmds::server::ServerHandle::relay_key`); needs `isolate`.
    pub metadata_key: Option<Vec<u8>>,
}

impl Default for QemuOptions {
    fn default() -> Self {
        Self {
            qemu: PathBuf::from("qemu-system-x86_64"),
            accel: Accel::Auto,
            relay: DEFAULT_RELAY.to_owned(),
            probe_cache: None,
            isolate: true,
            slirp4netns: PathBuf::from("slirp4netns"),
            forward_ports: Vec::new(),
            metadata_key: None,
        }
    }
}

/// Runs in QEMU's new network namespace before QEMU: waits until the driver has configured the
/// namespace, then becomes QEMU (`$@`).
const NETNS_INNER: &str = r#"read -r go
[ "$go" = go ] || { echo "firebuild: guest network setup failed" >&2; exit 1; }
exec "$@" </dev/null
"#;

/// Runs a [`VmSpec`] in QEMU microvm.
#[derive(Debug)]
pub struct QemuDriver {
    spec: VmSpec,
    opts: QemuOptions,
    console: PathBuf,
    kernel: Option<KernelFiles>,
    accel: Option<Accel>,
    child: Option<Child>,
    exit: Option<VmExit>,
    isolation: Option<Isolation>,
}

impl QemuDriver {
    /// A driver for `spec`.
    pub fn new(spec: VmSpec, opts: QemuOptions) -> Self {
        let console = spec.console_log_path();
        Self {
            spec,
            opts,
            console,
            kernel: None,
            accel: None,
            child: None,
            exit: None,
            isolation: None,
        }
    }

    /// Whether this VM's networking is confined (user networking with [`QemuOptions::isolate`]).
    fn isolated(&self) -> bool {
        self.opts.isolate && self.spec.network == Network::User
    }

    /// `cmd` run inside a new network namespace (and, unless root, a user namespace mapping
    /// the caller to root), held by [`NETNS_INNER`] until [`Self::confine`] writes `go`.
    fn in_netns(cmd: &Command) -> Command {
        let mut wrapped = Command::new("unshare");
        if !rustix::process::geteuid().is_root() {
            wrapped.args(["--user", "--map-root-user"]);
        }
        wrapped
            .args(["--net", "--", "/bin/sh", "-c", NETNS_INNER, "sh"])
            .arg(cmd.get_program())
            .args(cmd.get_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        wrapped
    }

    /// Configures the network namespace of the started QEMU and lets it run.
    fn confine(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        let mut ports: Vec<(u16, &[u8])> = self
            .opts
            .forward_ports
            .iter()
            .map(|p| (*p, &b""[..]))
            .collect();
        if let Metadata::Server(addr) = &self.spec.metadata {
            ports.push((
                addr.port(),
                self.opts.metadata_key.as_deref().unwrap_or_default(),
            ));
        }
        let setup = Isolation::setup("qemu", &self.opts.slirp4netns, child.id(), &ports);
        let go: &[u8] = if setup.is_ok() { b"go\n" } else { b"fail\n" };
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            let _ = stdin.write_all(go);
        }
        match setup {
            Ok(isolation) => {
                self.isolation = Some(isolation);
                Ok(())
            }
            Err(e) => {
                let _ = self.stop();
                Err(e)
            }
        }
    }

    /// The acceleration chosen by `prepare` (KVM or TCG).
    pub fn accel(&self) -> Option<Accel> {
        self.accel
    }

    /// The kernel command line for `accel`.
    pub fn cmdline(&self, accel: Accel) -> String {
        let mut cmdline = self.spec.cmdline.clone().unwrap_or_else(|| {
            if self.spec.network == Network::None {
                DEFAULT_CMDLINE.replace(DEFAULT_IP, "")
            } else {
                DEFAULT_CMDLINE.to_owned()
            }
        });
        if accel == Accel::Tcg
            && !cmdline.contains("tsc_early_khz=")
            && let Some(khz) = host_cpu_khz()
        {
            cmdline.push_str(&format!(" tsc_early_khz={khz}"));
        }
        cmdline
    }

    /// The full QEMU command for `accel` (after `prepare` resolved the kernel).
    pub fn command(&self, accel: Accel) -> Result<Command> {
        let kernel = self.kernel_files()?;
        let spec = &self.spec;
        let mut cmd = Command::new(&self.opts.qemu);
        cmd.args(["-M", "microvm,x-option-roms=off,rtc=on"])
            .args(["-accel", if accel == Accel::Kvm { "kvm" } else { "tcg" }])
            .args(["-cpu", if accel == Accel::Kvm { "host" } else { "max" }])
            .args(["-smp", &spec.vcpus.max(1).to_string()])
            .args(["-m", &format!("{}M", spec.memory_mib)])
            .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", self.console.display()))
            .arg("-kernel")
            .arg(&kernel.kernel);
        if let Some(initrd) = &kernel.initrd {
            cmd.arg("-initrd").arg(initrd);
        }
        cmd.arg("-append").arg(self.cmdline(accel));
        for drive in &spec.drives {
            let mut opt = format!(
                "id={},file={},format=raw,if=none,cache=unsafe",
                drive.id,
                qemu_escape(&drive.path.to_string_lossy())
            );
            if drive.read_only {
                opt.push_str(",readonly=on");
            }
            cmd.arg("-drive")
                .arg(opt)
                .arg("-device")
                .arg(format!("virtio-blk-device,drive={0},serial={0}", drive.id));
        }
        match &spec.network {
            Network::None => {}
            Network::User => {
                // QEMU puts its DNS forwarder at net|0x0203 (169.254.2.3 for a /16) unless told:
                // pin it to the address the kernel's ip= names.
                let mut netdev =
                    format!("user,id=n0,net=169.254.0.0/16,host={HOST_IP},dns={DNS_IP}");
                if let Metadata::Server(addr) = &spec.metadata {
                    let relay = self.opts.relay.replace("{port}", &addr.port().to_string());
                    netdev.push_str(&format!(
                        ",guestfwd=tcp:169.254.169.254:80-cmd:{}",
                        qemu_escape(&relay)
                    ));
                }
                cmd.arg("-netdev")
                    .arg(netdev)
                    .args(["-device", "virtio-net-device,netdev=n0"]);
            }
            Network::Tap(_) => {
                return Err(Error::Spec(
                    "the qemu driver uses user networking (Network::User), not a tap".to_owned(),
                ));
            }
        }
        if let Metadata::Firecracker(_) = spec.metadata {
            return Err(Error::Spec(
                "the qemu driver serves metadata through Metadata::Server, not Firecracker's MMDS"
                    .to_owned(),
            ));
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        Ok(cmd)
    }

    fn kernel_files(&self) -> Result<&KernelFiles> {
        self.kernel.as_ref().ok_or(Error::State {
            driver: "qemu",
            reason: "prepare() has not run".to_owned(),
        })
    }
}

impl Driver for QemuDriver {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn prepare(&mut self) -> Result<()> {
        let kernel = match &self.spec.kernel {
            Some(files) => files.clone(),
            None => {
                let k = Kernel::find_default()?;
                KernelFiles {
                    kernel: k.vmlinux(),
                    initrd: Some(k.initramfs()),
                }
            }
        };
        for drive in &self.spec.drives {
            if !drive.path.is_file() {
                return Err(Error::Spec(format!(
                    "drive {}: {} is not a file",
                    drive.id,
                    drive.path.display()
                )));
            }
        }
        self.kernel = Some(kernel.clone());
        let accel = match self.opts.accel {
            Accel::Auto => {
                if probe_kvm(
                    &self.opts.qemu,
                    &kernel,
                    self.opts.probe_cache.as_deref(),
                    &self.spec.work_dir,
                ) {
                    Accel::Kvm
                } else {
                    Accel::Tcg
                }
            }
            other => other,
        };
        tracing::debug!(?accel, "qemu acceleration");
        self.accel = Some(accel);
        Ok(())
    }

    fn start(&mut self) -> Result<()> {
        check_not_started("qemu", self.child.as_ref())?;
        let accel = self.accel.ok_or(Error::State {
            driver: "qemu",
            reason: "prepare() has not run".to_owned(),
        })?;
        let mut cmd = self.command(accel)?;
        if self.opts.metadata_key.is_some() && !self.isolated() {
            return Err(Error::Spec(
                "a metadata relay key needs isolated user networking (QemuOptions::isolate)"
                    .to_owned(),
            ));
        }
        if self.isolated() {
            crate::process::require("isolated guest networking", "unshare")?;
            cmd = Self::in_netns(&cmd);
        }
        tracing::info!(name = %self.spec.name, ?accel, console = %self.console.display(), "starting qemu");
        tracing::debug!(command = %crate::process::describe(&cmd), "qemu command");
        self.child = Some(spawn_vmm(&mut cmd, &self.opts.qemu)?);
        if self.isolated() {
            self.confine()?;
        }
        Ok(())
    }

    fn wait(&mut self, timeout: Duration) -> Result<Option<VmExit>> {
        let reaped = wait_vmm("qemu", self.child.as_mut(), &mut self.exit, timeout)?;
        if let Reaped::Now(exit) = reaped
            && !exit.status.success()
        {
            let mut stderr = String::new();
            if let Some(mut err) = self.child.as_mut().and_then(|c| c.stderr.take()) {
                use std::io::Read;
                let _ = err.read_to_string(&mut stderr);
            }
            tracing::warn!(status = %exit.status, stderr = %stderr.trim(), "qemu exited with an error");
        }
        if let Reaped::Now(_) = reaped {
            self.isolation = None;
        }
        Ok(reaped.exit())
    }

    fn stop(&mut self) -> Result<Option<VmExit>> {
        let reaped = stop_vmm(self.child.as_mut(), &mut self.exit, kill_child)?;
        self.isolation = None;
        Ok(reaped.exit())
    }

    fn console_log(&self) -> &Path {
        &self.console
    }
}

impl Drop for QemuDriver {
    fn drop(&mut self) {
        kill_unreaped(self.child.as_mut(), self.exit);
    }
}

/// Doubles commas, QEMU's escape inside an option value.
fn qemu_escape(s: &str) -> String {
    s.replace(',', ",,")
}

/// The host CPU frequency in kHz from `/proc/cpuinfo` (`cpu MHz`).
pub fn host_cpu_khz() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    parse_cpu_khz(&text)
}

fn parse_cpu_khz(cpuinfo: &str) -> Option<u64> {
    let mhz: f64 = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("cpu MHz")?.split(':').nth(1))?
        .trim()
        .parse()
        .ok()?;
    (mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

static PROBE: Mutex<Option<bool>> = Mutex::new(None);

/// Whether QEMU can run `kernel` with KVM, checked in two steps:
///
/// 1. [`crate::kvm::check`], in-process ioctls on `/dev/kvm` (about 10 ms where KVM works, at
///    most 0.5 s): the device exists and opens read-write, speaks API 12, and a vCPU runs a
///    10-million-iteration loop and its `out`/`hlt` before the deadline. This answers `false`
///    fast for no device, no permission, and a KVM that hangs or emulates guest code (nested or
///    PVM hosts, where the boot below never reached the initramfs and cost the full 20 s).
/// 2. Only when that passes: QEMU boots `kernel` with `-accel kvm -cpu host` until the
///    initramfs prints `probe ok` (`firebuild.probe` on the command line) and powers off
///    (a kernel boot; not measured on the hosts here, which stop at step 1). It covers what
///    the ioctls cannot: a QEMU built without KVM, CPU features `-cpu host` asks for that KVM
///    refuses, and a boot of our real kernel on microvm.
///
/// The answer is kept for the process and, when `cache` is given, in that file (`kvm` or
/// `tcg`); delete the file to probe again. `scratch` holds the probe's console log.
pub fn probe_kvm(qemu: &Path, kernel: &KernelFiles, cache: Option<&Path>, scratch: &Path) -> bool {
    let Ok(mut memo) = PROBE.lock() else {
        return false;
    };
    if let Some(known) = *memo {
        return known;
    }
    if let Some(cached) = cache.and_then(|c| std::fs::read_to_string(c).ok()) {
        let known = cached.trim() == "kvm";
        *memo = Some(known);
        return known;
    }
    let works = probe_uncached(Path::new(crate::kvm::KVM_DEVICE), qemu, kernel, scratch);
    *memo = Some(works);
    if let Some(cache) = cache {
        let _ = std::fs::write(cache, if works { "kvm\n" } else { "tcg\n" });
    }
    works
}

/// [`probe_kvm`]'s two steps, for the KVM `device`.
fn probe_uncached(device: &Path, qemu: &Path, kernel: &KernelFiles, scratch: &Path) -> bool {
    let check = crate::kvm::check(device, crate::kvm::CHECK_DEADLINE);
    if !check.works() {
        tracing::info!(kvm = false, reason = %check, "kvm probe");
        return false;
    }
    let works = run_probe(qemu, kernel, scratch);
    tracing::info!(
        kvm = works,
        reason = if works {
            "qemu booted the kernel with kvm"
        } else {
            "the ioctl check passed but qemu did not boot the kernel with kvm"
        },
        "kvm probe"
    );
    works
}

/// Boots `kernel` in QEMU with KVM until the initramfs prints `probe ok` ([`PROBE_TIMEOUT`]).
fn run_probe(qemu: &Path, kernel: &KernelFiles, scratch: &Path) -> bool {
    let log = scratch.join("kvm-probe.log");
    let mut cmd = Command::new(qemu);
    cmd.args([
        "-M",
        "microvm,x-option-roms=off,rtc=on",
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-m",
        "256M",
    ])
    .args([
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-serial",
    ])
    .arg(format!("file:{}", log.display()))
    .arg("-kernel")
    .arg(&kernel.kernel)
    .args(["-append", "console=ttyS0 reboot=k panic=-1 firebuild.probe"])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if let Some(initrd) = &kernel.initrd {
        cmd.arg("-initrd").arg(initrd);
    }
    let Ok(mut child) = cmd.spawn() else {
        return false;
    };
    let exited = wait_child(&mut child, PROBE_TIMEOUT, "qemu").ok().flatten();
    if exited.is_none() {
        let _ = kill_child(&mut child);
    }
    let ok =
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("firebuild-initramfs: probe ok"));
    let _ = std::fs::remove_file(&log);
    ok
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::spec::Drive;

    fn driver(dir: &Path, network: Network, metadata: Metadata) -> QemuDriver {
        let mut spec = VmSpec::new("t", dir, dir.join("root.ext4"));
        spec.kernel = Some(KernelFiles {
            kernel: dir.join("vmlinux"),
            initrd: Some(dir.join("initrd")),
        });
        spec.network = network;
        spec.metadata = metadata;
        spec.drives.push(Drive {
            id: "data".into(),
            path: dir.join("a,b.img"),
            read_only: true,
        });
        let mut d = QemuDriver::new(spec, QemuOptions::default());
        d.kernel = d.spec.kernel.clone();
        d
    }

    fn args(cmd: &Command) -> Vec<String> {
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn tcg_command_has_microvm_devices_relay_and_tsc() {
        let dir = Path::new("/w");
        let d = driver(
            dir,
            Network::User,
            Metadata::Server("127.0.0.1:4567".parse().unwrap()),
        );
        let a = args(&d.command(Accel::Tcg).unwrap());
        let joined = a.join(" ");
        assert!(joined.contains("-M microvm"), "{joined}");
        assert!(
            joined.contains("rtc=on"),
            "the guest needs the wall clock for TLS: {joined}"
        );
        assert!(joined.contains("-accel tcg"));
        assert!(joined.contains("-no-reboot"));
        assert!(joined.contains("-serial file:/w/console.log"));
        assert!(joined.contains("-drive id=rootfs,file=/w/root.ext4,format=raw,if=none"));
        assert!(joined.contains("-device virtio-blk-device,drive=rootfs,serial=rootfs"));
        assert!(
            joined.contains("file=/w/a,,b.img"),
            "commas escaped: {joined}"
        );
        assert!(joined.contains(",readonly=on"));
        assert!(joined.contains(
            "user,id=n0,net=169.254.0.0/16,host=169.254.0.2,dns=169.254.0.3,guestfwd=tcp:169.254.169.254:80-cmd:busybox nc 127.0.0.1 4567"
        ));
        assert!(joined.contains("virtio-net-device,netdev=n0"));
        let append = &a[a.iter().position(|x| x == "-append").unwrap() + 1];
        assert!(append.starts_with(DEFAULT_CMDLINE), "{append}");
        assert!(
            !append.contains("init="),
            "vminit comes from the initramfs: {append}"
        );
        assert!(
            append.contains(" ip=169.254.0.15::169.254.0.2:255.255.0.0::eth0:off:169.254.0.3 "),
            "QEMU's DNS forwarder as dns0: {append}"
        );
        if host_cpu_khz().is_some() {
            assert!(append.contains(" tsc_early_khz="), "{append}");
        }
    }

    #[test]
    fn kvm_command_has_no_tsc_and_no_network_without_user_net() {
        let d = driver(Path::new("/w"), Network::None, Metadata::None);
        let a = args(&d.command(Accel::Kvm).unwrap());
        let joined = a.join(" ");
        assert!(joined.contains("-accel kvm"));
        assert!(!joined.contains("tsc_early_khz"));
        assert!(!joined.contains("-netdev"));
        assert!(
            !joined.contains(" ip="),
            "no ip= without a network: {joined}"
        );
        assert!(joined.contains("root=/dev/vda"), "{joined}");
    }

    #[test]
    fn tap_networking_is_refused() {
        let tap = Network::Tap(crate::spec::TapConfig {
            name: "fb0".into(),
            guest_mac: "06:00:00:00:00:01".into(),
            host_cidr: None,
        });
        let err = driver(Path::new("/w"), tap, Metadata::None)
            .command(Accel::Tcg)
            .unwrap_err();
        assert!(err.to_string().contains("user networking"), "{err}");
    }

    fn kernel_without_initrd(dir: &Path) -> KernelFiles {
        KernelFiles {
            kernel: dir.join("vmlinux"),
            initrd: None,
        }
    }

    /// A stand-in QEMU that writes the initramfs's probe line to its `-serial file:` and exits.
    fn fake_qemu(dir: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("qemu");
        std::fs::write(
            &path,
            concat!(
                "#!/bin/sh\n",
                "while [ $# -gt 0 ]; do\n",
                "  case \"$1\" in -serial) shift; log=\"${1#file:}\";; esac\n",
                "  shift\n",
                "done\n",
                "[ -n \"$log\" ] && echo 'firebuild-initramfs: probe ok' > \"$log\"\n",
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        // A child forked by another test while the file was open for writing (the kvm check
        // forks without exec) makes exec fail with ETXTBSY until it exits.
        while let Err(e) = Command::new(&path).status() {
            assert_eq!(e.raw_os_error(), Some(libc::ETXTBSY), "{e}");
            std::thread::sleep(Duration::from_millis(10));
        }
        path
    }

    #[test]
    fn the_boot_probe_reads_the_initramfs_line() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = kernel_without_initrd(dir.path());
        assert!(run_probe(&fake_qemu(dir.path()), &kernel, dir.path()));
        assert!(
            !dir.path().join("kvm-probe.log").exists(),
            "log left behind"
        );
        assert!(
            !run_probe(Path::new("true"), &kernel, dir.path()),
            "no probe line, no kvm"
        );
    }

    #[test]
    fn qemu_is_not_asked_when_the_kvm_check_fails() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = kernel_without_initrd(dir.path());
        let qemu = fake_qemu(dir.path());
        // The stand-in would say yes: only the ioctl check can answer these.
        let missing = dir.path().join("kvm");
        assert!(!probe_uncached(&missing, &qemu, &kernel, dir.path()));
        assert!(!probe_uncached(
            Path::new("/dev/null"),
            &qemu,
            &kernel,
            dir.path()
        ));
    }

    #[test]
    fn cpu_mhz_becomes_khz() {
        assert_eq!(
            parse_cpu_khz("processor : 0\ncpu MHz\t\t: 2499.982\n"),
            Some(2_499_982)
        );
        assert_eq!(parse_cpu_khz("processor : 0\n"), None);
    }
}
