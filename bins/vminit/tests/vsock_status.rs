//! The guest status over vsock in a real VM, the way it goes on Firecracker.
//!
//! Firecracker's vsock is "hybrid": a guest connection to CID 2 port P arrives on the host Unix
//! socket `{uds_path}_{P}`. rust-vmm's `vhost-device-vsock` does the same behind QEMU's
//! `vhost-user-vsock-device`, so QEMU microvm (TCG) stands in for Firecracker here: the metadata
//! comes on the kernel command line (no MMDS the guest could write), names the status port, and
//! sets a user's password hash. vminit applies the hash, reports every phase over vsock with the
//! hash listed as consumed, and the host's `StatusListener` deletes it through the Firecracker
//! API (this crate's MMDS server mirrors that API) and sees the workload's exit code.
//!
//! Needs root, `qemu-system-x86_64`, `mkfs.ext4`, `debugfs`, GNU `cpio`, the static vminit
//! (`scripts/build-vminit.sh`), the guest kernel prepared by firebuild-vmm's tests, and
//! `vhost-device-vsock` (`scripts/vsock-tools.sh`, which `scripts/test.sh` runs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use firebuild_mmds::firecracker::FirecrackerApi;
use firebuild_mmds::schema::GuestPhase;
use firebuild_mmds::server::Server;
use firebuild_mmds::vsock::{StatusListener, socket_path};

const PORT: u32 = 10240;
const GUEST_CID: u32 = 3;
/// `openssl passwd -6 -salt saltsalt secret`.
const HASH: &str = "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";

/// Standard base64 with padding (`firebuild.metadata=base64:`).
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The cache the project's scripts use: `${XDG_CACHE_HOME:-$HOME/.cache}/firebuild`.
fn cache() -> PathBuf {
    match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"),
    }
    .join("firebuild")
}

fn vhost_device_vsock() -> Option<PathBuf> {
    let path = std::env::var_os("FIREBUILD_VHOST_DEVICE_VSOCK").map_or_else(
        || cache().join("tools/vhost-device-vsock-0.3.0/bin/vhost-device-vsock"),
        PathBuf::from,
    );
    if path.is_file() {
        Some(path)
    } else {
        support::skip(&format!(
            "no {} (bash scripts/vsock-tools.sh installs it)",
            path.display()
        ))?;
        None
    }
}

/// The prepared guest kernel's directory (`vmlinuz`, `initramfs.cpio`). firebuild-vmm's VM
/// tests prepare it; without it this test is skipped, in CI too, with the reason printed.
fn kernel_dir() -> Option<PathBuf> {
    let dir = cache().join("kernel/current");
    if dir.join("vmlinuz").is_file() && dir.join("initramfs.cpio").is_file() {
        return Some(dir);
    }
    eprintln!(
        "skipped: no prepared guest kernel at {} (firebuild-vmm's VM tests prepare it)",
        dir.display()
    );
    None
}

fn vminit_binary() -> Option<PathBuf> {
    let path = std::env::var_os("FIREBUILD_VMINIT").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/vminit/vminit"),
        PathBuf::from,
    );
    if path.is_file() {
        Some(path)
    } else {
        support::skip(&format!(
            "no static vminit at {} (bash scripts/build-vminit.sh)",
            path.display()
        ))?;
        None
    }
}

/// The prepared initramfs, then a second archive with vminit and the current `/init` (the
/// kernel unpacks concatenated archives in order), as firebuild-vmm's `agent_initramfs` does.
fn agent_initramfs(kernel: &Path, vminit: &Path, dir: &Path, out: &Path) -> Option<()> {
    let cpio = support::tool("cpio")?;
    let stage = dir.join("initramfs-extra");
    std::fs::create_dir_all(stage.join("firebuild")).unwrap();
    std::fs::copy(vminit, stage.join("firebuild/vminit")).unwrap();
    std::fs::write(
        stage.join("init"),
        include_str!("../../../crates/vmm/src/kernel/init.sh"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(stage.join("init"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut child = Command::new(cpio)
        .args(["-o", "--quiet", "-H", "newc", "-R", "0:0"])
        .current_dir(&stage)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"firebuild\nfirebuild/vminit\ninit\n")
        .unwrap();
    let extra = child.wait_with_output().unwrap();
    assert!(extra.status.success());
    let mut bytes = std::fs::read(kernel.join("initramfs.cpio")).unwrap();
    bytes.resize(bytes.len().div_ceil(4) * 4, 0);
    bytes.extend_from_slice(&extra.stdout);
    std::fs::write(out, bytes).unwrap();
    Some(())
}

/// Kills and reaps a child when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn host_cpu_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info
        .lines()
        .find_map(|l| l.strip_prefix("cpu MHz")?.split(':').nth(1))?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}

/// One boot with the status port named in the metadata, and a host listening on it (or not).
/// Fields drop in order: the host's servers, then their runtime, then the files.
struct Boot {
    listener: Option<firebuild_mmds::vsock::StatusHandle>,
    mmds: firebuild_mmds::server::ServerHandle,
    _rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    powered_off: bool,
    elapsed: Duration,
    console: String,
}

impl Boot {
    fn image(&self) -> PathBuf {
        self.dir.path().join("rootfs.ext4")
    }

    fn dump(&self) {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        eprintln!(
            "--- console ---\n{}\n--- qemu ---\n{}\n--- vhost-device-vsock ---\n{}",
            self.console,
            read("qemu.log"),
            read("vhost-device-vsock.log")
        );
    }
}

fn boot(listen: bool) -> Option<Boot> {
    let qemu = support::tool("qemu-system-x86_64")?;
    let mkfs = support::tool("mkfs.ext4")?;
    let daemon = vhost_device_vsock()?;
    let vminit = vminit_binary()?;
    let kernel = kernel_dir()?;
    let root = support::busybox_root()?;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // The image: the busybox tree (/etc/passwd, /etc/group, /etc/shadow).
    let image = d.join("rootfs.ext4");
    let out = Command::new(mkfs)
        .args(["-q", "-F", "-E", "root_owner=0:0", "-d"])
        .arg(root.path())
        .arg(&image)
        .arg("32M")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let initrd = d.join("initramfs.cpio");
    agent_initramfs(&kernel, &vminit, d, &initrd)?;

    // What the host would PUT into Firecracker's MMDS, given to the guest on the command line.
    let metadata = serde_json::json!({
        "status-channel": {"vsock-port": PORT},
        "users": [{"name": "ops", "password": {"hash": HASH}}],
        "cmd": ["/bin/sh", "-c", "exit 3"],
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api_sock = d.join("api.sock");
    let mmds = rt
        .block_on(
            Server::builder()
                .api_socket(&api_sock)
                .initial_data(metadata.clone())
                .start(),
        )
        .unwrap();
    let uds = d.join("v.sock");
    let listener = listen.then(|| {
        rt.block_on(
            StatusListener::builder(socket_path(&uds, PORT))
                .store(FirecrackerApi::new(&api_sock))
                .start(),
        )
        .unwrap()
    });

    let vhost_sock = d.join("vhost.sock");
    let _daemon = Reaped(
        Command::new(daemon)
            .arg("--guest-cid")
            .arg(GUEST_CID.to_string())
            .arg("--socket")
            .arg(&vhost_sock)
            .arg("--uds-path")
            .arg(&uds)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("vhost-device-vsock.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let waited = Instant::now();
    while !vhost_sock.exists() {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "vhost-device-vsock made no socket: {}",
            std::fs::read_to_string(d.join("vhost-device-vsock.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let doc = base64(metadata.to_string().as_bytes());
    let mut cmdline =
        format!("console=ttyS0 reboot=k panic=-1 root=/dev/vda firebuild.metadata=base64:{doc}");
    if let Some(khz) = host_cpu_khz() {
        cmdline.push_str(&format!(" tsc_early_khz={khz}"));
    }
    let console = d.join("console.log");
    let started = Instant::now();
    let mut vm = Reaped(
        Command::new(qemu)
            .args(["-M", "microvm,x-option-roms=off,rtc=on,memory-backend=mem"])
            .args(["-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "256M"])
            // vhost-user needs the guest memory shared with the device's process.
            .args(["-object", "memory-backend-memfd,id=mem,size=256M,share=on"])
            .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-kernel")
            .arg(kernel.join("vmlinuz"))
            .arg("-initrd")
            .arg(&initrd)
            .arg("-append")
            .arg(&cmdline)
            .arg("-drive")
            .arg(format!(
                "id=rootfs,file={},format=raw,if=none",
                image.display()
            ))
            .args(["-device", "virtio-blk-device,drive=rootfs"])
            .arg("-chardev")
            .arg(format!("socket,id=vsock0,path={}", vhost_sock.display()))
            .args(["-device", "vhost-user-vsock-device,chardev=vsock0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("qemu.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let powered_off = loop {
        if vm.0.try_wait().unwrap().is_some() {
            break true;
        }
        if started.elapsed() > Duration::from_secs(90) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let elapsed = started.elapsed();
    drop(vm);
    // The last status may still be on its way through the daemon.
    if let Some(l) = &listener {
        let settle = Instant::now();
        while l.latest().map(|s| s.phase) != Some(GuestPhase::Exited)
            && settle.elapsed() < Duration::from_secs(2)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let console = std::fs::read_to_string(&console).unwrap_or_default();
    Some(Boot {
        listener,
        mmds,
        _rt: rt,
        dir,
        powered_off,
        elapsed,
        console,
    })
}

#[test]
fn status_and_consumed_hash_reach_the_host_over_vsock() {
    let Some(debugfs) = support::tool("debugfs") else {
        return;
    };
    let Some(boot) = boot(true) else {
        return;
    };
    let listener = boot.listener.as_ref().unwrap();
    let statuses = listener.statuses();
    let phases: Vec<_> = statuses.iter().map(|s| s.phase).collect();
    if phases.last() != Some(&GuestPhase::Exited) {
        boot.dump();
    }
    assert!(boot.powered_off, "the VM did not power off within 90 s");
    eprintln!(
        "boot to power-off {:.1} s under TCG; statuses over vsock: {phases:?}",
        boot.elapsed.as_secs_f64()
    );
    assert_eq!(
        phases,
        [
            GuestPhase::Configuring,
            GuestPhase::Configured,
            GuestPhase::Running,
            GuestPhase::Exited
        ],
        "every phase, in order"
    );
    let last = statuses.last().unwrap();
    assert_eq!(last.workload_exit, Some(3));
    assert_eq!(last.consumed, ["/users/0/password"]);
    assert_eq!(
        statuses[1].steps.get("users").map(String::as_str),
        Some("applied")
    );
    assert_eq!(listener.rejected(), 0);

    // The host deleted the hash from the metadata it controls; the guest applied it.
    let after = boot.mmds.get().data;
    assert!(after.pointer("/users/0/password").is_none(), "{after}");
    assert_eq!(after["users"][0]["name"], "ops");
    let consumed: Vec<_> = listener.consumed().into_iter().map(|c| c.pointer).collect();
    assert_eq!(consumed, ["/users/0/password"]);
    let shadow = Command::new(debugfs)
        .args(["-R", "cat /etc/shadow"])
        .arg(boot.image())
        .output()
        .unwrap();
    let shadow = String::from_utf8_lossy(&shadow.stdout);
    assert!(
        shadow
            .lines()
            .any(|l| l.starts_with(&format!("ops:{HASH}:"))),
        "the hash is ops's password: {shadow}"
    );
    assert!(
        !boot.console.contains("sending the guest status"),
        "no send failed: {}",
        boot.console
    );
}

/// The status port is named but nothing listens on the host: vhost-device-vsock leaves the
/// guest's connection request unanswered, so each send is cut at vminit's 100 ms deadline; the
/// boot goes on, the guest warns once, and the hash stays in the metadata (no one was told).
/// Two boots, so not in CI: `cargo test -p vminit --test vsock_status -- --ignored --nocapture`
/// prints both boot times and the guest's status log lines.
#[test]
#[ignore = "a second VM boot; run by hand to compare the boot time without a listener"]
fn without_a_listener_the_boot_goes_on() {
    let Some(with) = boot(true) else {
        return;
    };
    let Some(without) = boot(false) else {
        return;
    };
    if !without.powered_off || firebuild_exit_code(&without.console) != Some(3) {
        without.dump();
    }
    assert!(without.powered_off, "the VM did not power off within 90 s");
    assert_eq!(firebuild_exit_code(&without.console), Some(3));
    assert_eq!(
        without.console.matches("sending the guest status").count(),
        1,
        "warned once"
    );
    // Nobody deleted the hash: the host never heard of it.
    assert!(
        without
            .mmds
            .get()
            .data
            .pointer("/users/0/password")
            .is_some()
    );
    eprintln!(
        "boot to power-off under TCG: {:.1} s with a listener, {:.1} s without",
        with.elapsed.as_secs_f64(),
        without.elapsed.as_secs_f64()
    );
    for line in without.console.lines().filter(|l| l.contains("status")) {
        eprintln!("  {line}");
    }
}

/// The code of the last `firebuild: exit code N` line on the console.
fn firebuild_exit_code(console: &str) -> Option<u8> {
    console.lines().rev().find_map(|l| {
        l.trim_end_matches('\r')
            .strip_prefix("firebuild: exit code ")?
            .trim()
            .parse()
            .ok()
    })
}
