//! The namespace sandbox: no VM, just Linux namespaces around a root directory.
//!
//! `unshare(1)` creates user (run as root: uids/gids 0..65536 mapped to themselves with
//! `setgroups` allowed; otherwise only the caller, mapped to root), mount, PID, UTS, IPC and network
//! namespaces; a host shell inside them mounts `/proc`, `/sys` and the host's `/dev` into the
//! root directory and `chroot`s to the init (PID 1 of the new PID namespace). The network
//! namespace is private: it has only `lo`, on which the driver adds `169.254.0.2` and
//! `169.254.169.254` and forwards connections to the host so the guest sees the same addresses
//! as under QEMU: `169.254.169.254:80` reaches the [`Metadata::Server`]
//! and `169.254.0.2:P` reaches the host's `127.0.0.1:P` for each port in
//! [`SandboxOptions::forward_ports`].
//!
//! **This is weaker isolation than a VM**: the guest shares the host kernel, sees the host's
//! `/dev`, and a kernel bug or a namespace escape is a host compromise. Use it where no
//! virtualization is available, for trusted builds. A guest `poweroff` ends the PID namespace
//! (its init is killed with `SIGINT`), which ends `unshare`.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::driver::{
    Driver, Reaped, VmExit, check_not_started, kill_child, spawn_vmm, stop_vmm, wait_vmm,
};
use crate::error::{Error, Result};
use crate::netns::{Forwards, ip_in, wait_for_ns};
use crate::spec::{Metadata, Network, VmSpec};

/// The host as the sandbox sees it.
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 2);
/// The metadata address.
pub const MMDS_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// Runs inside the namespaces (host `/bin/sh`, before the chroot): waits for the driver to set
/// up networking, mounts, then execs the init. `$1` root, `$2` hostname, `$3...` init and args.
const INNER: &str = r#"set -e
root="$1"; name="$2"; shift 2
read -r go
[ "$go" = go ] || { echo "firebuild-sandbox: error: host setup failed" >&2; exit 1; }
[ -d "$root/proc" ] && mount -t proc proc "$root/proc"
[ -d "$root/sys" ] && { mount -t sysfs sysfs "$root/sys" 2>/dev/null || mount --rbind /sys "$root/sys"; }
[ -d "$root/dev" ] && mount --rbind /dev "$root/dev"
[ -d "$root/run" ] && mount -t tmpfs tmpfs "$root/run"
hostname "$name"
echo "firebuild-sandbox: starting $1"
exec chroot "$root" "$@" </dev/null
"#;

/// Options of the sandbox driver.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// The `unshare` binary (util-linux).
    pub unshare: PathBuf,
    /// The init inside the root directory.
    pub init: String,
    /// Arguments to the init.
    pub init_args: Vec<String>,
    /// Host loopback ports the guest reaches at `169.254.0.2:PORT`.
    pub forward_ports: Vec<u16>,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        Self {
            unshare: PathBuf::from("unshare"),
            init: "/sbin/vminit".to_owned(),
            init_args: Vec::new(),
            forward_ports: Vec::new(),
        }
    }
}

/// Runs a [`VmSpec`] whose first drive is a root **directory** in Linux namespaces.
#[derive(Debug)]
pub struct SandboxDriver {
    spec: VmSpec,
    opts: SandboxOptions,
    console: PathBuf,
    child: Option<Child>,
    exit: Option<VmExit>,
    forwards: Forwards,
}

impl SandboxDriver {
    /// A driver for `spec`.
    pub fn new(spec: VmSpec, opts: SandboxOptions) -> Self {
        let console = spec.console_log_path();
        Self {
            spec,
            opts,
            console,
            child: None,
            exit: None,
            forwards: Forwards::default(),
        }
    }

    fn root(&self) -> Result<&Path> {
        let Some(drive) = self.spec.drives.first() else {
            return Err(Error::Spec(
                "the sandbox needs a root directory as its first drive".to_owned(),
            ));
        };
        if !drive.path.is_dir() {
            return Err(Error::Spec(format!(
                "the sandbox runs a root directory, and {} is not one",
                drive.path.display()
            )));
        }
        Ok(&drive.path)
    }

    /// The (listen inside the sandbox, connect on the host) pairs.
    fn forward_list(&self) -> Vec<(SocketAddr, SocketAddr)> {
        let mut list = Vec::new();
        if let Metadata::Server(target) = &self.spec.metadata {
            list.push((SocketAddr::V4(SocketAddrV4::new(MMDS_IP, 80)), *target));
        }
        for port in &self.opts.forward_ports {
            list.push((
                SocketAddr::V4(SocketAddrV4::new(HOST_IP, *port)),
                SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, *port)),
            ));
        }
        list
    }

    fn setup_namespaces(&mut self, pid: u32, as_root: bool) -> Result<()> {
        if as_root {
            wait_for_ns("sandbox", pid, "user")?;
            for file in ["uid_map", "gid_map"] {
                let path = PathBuf::from(format!("/proc/{pid}/{file}"));
                std::fs::write(&path, "0 0 65536\n").map_err(Error::io(&path))?;
            }
        }
        self.setup_network(pid)
    }

    fn setup_network(&mut self, pid: u32) -> Result<()> {
        wait_for_ns("sandbox", pid, "net")?;
        ip_in(pid, &["link", "set", "lo", "up"])?;
        if self.spec.network != Network::None {
            ip_in(pid, &["addr", "add", "169.254.0.2/32", "dev", "lo"])?;
            ip_in(pid, &["addr", "add", "169.254.169.254/32", "dev", "lo"])?;
            ip_in(pid, &["addr", "add", "169.254.0.15/16", "dev", "lo"])?;
            for (listen, target) in self.forward_list() {
                self.forwards.add("sandbox", pid, listen, target, b"")?;
            }
        }
        Ok(())
    }

    fn release(&mut self) {
        self.forwards.release();
    }
}

impl Driver for SandboxDriver {
    fn name(&self) -> &'static str {
        "sandbox"
    }

    fn prepare(&mut self) -> Result<()> {
        let root = self.root()?;
        let init = root.join(self.opts.init.trim_start_matches('/'));
        if std::fs::symlink_metadata(&init).is_err() {
            return Err(Error::Spec(format!(
                "init {} not found in {}",
                self.opts.init,
                root.display()
            )));
        }
        if let Network::Tap(_) = self.spec.network {
            return Err(Error::Spec("the sandbox has no tap networking".to_owned()));
        }
        if let Metadata::Firecracker(_) = self.spec.metadata {
            return Err(Error::Spec(
                "the sandbox serves metadata through Metadata::Server".to_owned(),
            ));
        }
        crate::process::require("the sandbox", &self.opts.unshare.to_string_lossy())?;
        Ok(())
    }

    fn start(&mut self) -> Result<()> {
        check_not_started("sandbox", self.child.as_ref())?;
        let root = self.root()?.to_path_buf();
        let console = std::fs::File::create(&self.console).map_err(Error::io(&self.console))?;
        let console2 = console.try_clone().map_err(Error::io(&self.console))?;
        let mut cmd = Command::new(&self.opts.unshare);
        // As root the driver writes a 0..65536 identity map itself (setgroups allowed, so steps
        // may switch users and groups); otherwise only the caller is mapped, to root.
        let as_root = rustix::process::geteuid().is_root();
        cmd.arg("--user");
        if !as_root {
            cmd.arg("--map-root-user");
        }
        cmd.args([
            "--mount",
            "--pid",
            "--uts",
            "--ipc",
            "--net",
            "--fork",
            "--kill-child",
            "--",
            "/bin/sh",
            "-c",
            INNER,
            "sh",
        ])
        .arg(&root)
        .arg(&self.spec.name)
        .arg(&self.opts.init)
        .args(&self.opts.init_args)
        .stdin(Stdio::piped())
        .stdout(console)
        .stderr(console2);
        tracing::info!(name = %self.spec.name, root = %root.display(), "starting sandbox");
        let child = spawn_vmm(&mut cmd, &self.opts.unshare)?;
        let pid = child.id();
        self.child = Some(child);
        let setup = self.setup_namespaces(pid, as_root);
        let go: &[u8] = if setup.is_ok() { b"go\n" } else { b"fail\n" };
        if let Some(mut stdin) = self.child.as_mut().and_then(|c| c.stdin.take()) {
            let _ = stdin.write_all(go);
        }
        if let Err(e) = setup {
            let _ = self.stop();
            return Err(e);
        }
        Ok(())
    }

    fn wait(&mut self, timeout: Duration) -> Result<Option<VmExit>> {
        let reaped = wait_vmm("sandbox", self.child.as_mut(), &mut self.exit, timeout)?;
        if let Reaped::Now(_) = reaped {
            self.release();
        }
        Ok(reaped.exit())
    }

    fn stop(&mut self) -> Result<Option<VmExit>> {
        // SIGKILL to unshare; --kill-child takes the namespace's init (and so all of it) down.
        let reaped = stop_vmm(self.child.as_mut(), &mut self.exit, kill_child)?;
        if let Reaped::Now(_) = reaped {
            self.release();
        }
        Ok(reaped.exit())
    }

    fn console_log(&self) -> &Path {
        &self.console
    }
}

impl Drop for SandboxDriver {
    fn drop(&mut self) {
        let _ = self.stop();
        self.release();
    }
}
