//! The Firecracker driver: configuration over the API socket, optional jailer, a tap device
//! with cleanup on every exit path, and Firecracker's own MMDS (V2).
//!
//! Requests are sent in this order (what [`FirecrackerDriver::api_requests`] returns):
//! `PUT /boot-source`, `PUT /machine-config`, `PUT /drives/{id}` per drive,
//! `PUT /network-interfaces/{id}`, `PUT /mmds/config` (V2, after the interface it names),
//! `PUT /mmds`, then `PUT /actions {"action_type":"InstanceStart"}`. `stop` sends
//! `SendCtrlAltDel` and kills Firecracker if the guest has not exited after the grace period.
//!
//! The guest console is Firecracker's standard output, written to the console log.
//!
//! Note: Firecracker describes virtio devices to the guest with `virtio_mmio.device=` kernel
//! parameters (or ACPI from Firecracker 1.8 on); Debian's cloud kernel lacks
//! `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`, so use a Firecracker with ACPI or a kernel built for it.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::driver::{
    Driver, Reaped, VmExit, check_not_started, kill_child, kill_unreaped, spawn_vmm, stop_vmm,
    wait_child, wait_vmm,
};
use crate::error::{Error, Result};
use crate::kernel::Kernel;
use crate::spec::{KernelFiles, Metadata, Network, TapConfig, VmSpec};

/// The kernel command line used when the spec gives none.
///
/// No `init=`: the initramfs starts vminit from itself when it holds one
/// ([`crate::kernel::agent_initramfs`]).
pub const DEFAULT_CMDLINE: &str = concat!(
    "console=ttyS0 ",
    fast_boot_args!(),
    " reboot=k panic=1 ip=169.254.0.15::169.254.0.2:255.255.0.0::eth0:off root=/dev/vda"
);

/// The `ip=` part of [`DEFAULT_CMDLINE`], dropped when the VM has no network.
const DEFAULT_IP: &str = " ip=169.254.0.15::169.254.0.2:255.255.0.0::eth0:off";

/// `sun_path` is 108 bytes including the terminating NUL.
pub const SUN_PATH_MAX: usize = 107;

/// Largest API response read.
const MAX_RESPONSE: usize = 1 << 20;

/// Checks that `path` fits in a Unix socket address.
pub fn check_socket_path(path: &Path) -> Result<()> {
    let len = path.as_os_str().len();
    if len > SUN_PATH_MAX {
        return Err(Error::SocketPathTooLong {
            path: path.to_path_buf(),
            len,
        });
    }
    Ok(())
}

/// Running Firecracker under its jailer.
#[derive(Debug, Clone)]
pub struct JailerOptions {
    /// The `jailer` binary.
    pub jailer: PathBuf,
    /// The uid Firecracker runs as.
    pub uid: u32,
    /// The gid Firecracker runs as.
    pub gid: u32,
    /// `--chroot-base-dir` (jailer default `/srv/jailer`).
    pub chroot_base: PathBuf,
}

/// Options of the Firecracker driver.
#[derive(Debug, Clone)]
pub struct FirecrackerOptions {
    /// The `firecracker` binary.
    pub firecracker: PathBuf,
    /// Run under the jailer.
    pub jailer: Option<JailerOptions>,
    /// The API socket; `None` means `work_dir/firecracker.sock`.
    pub api_socket: Option<PathBuf>,
    /// How long `stop` waits after `SendCtrlAltDel` before killing.
    pub stop_grace: Duration,
    /// How long `start` waits for the API socket to appear.
    pub socket_timeout: Duration,
}

impl Default for FirecrackerOptions {
    fn default() -> Self {
        Self {
            firecracker: PathBuf::from("firecracker"),
            jailer: None,
            api_socket: None,
            stop_grace: Duration::from_secs(3),
            socket_timeout: Duration::from_secs(5),
        }
    }
}

/// One API request: method, path and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiRequest {
    /// `PUT` or `PATCH`.
    pub method: &'static str,
    /// The request path (`/boot-source`).
    pub path: String,
    /// The JSON body.
    pub body: Value,
}

impl ApiRequest {
    fn put(path: impl Into<String>, body: Value) -> Self {
        Self {
            method: "PUT",
            path: path.into(),
            body,
        }
    }
}

/// A blocking client for Firecracker's HTTP API on a Unix socket (one connection per request).
#[derive(Debug, Clone)]
pub struct ApiClient {
    socket: PathBuf,
}

impl ApiClient {
    /// A client for the socket at `socket` (checked against the `sun_path` limit).
    pub fn new(socket: impl Into<PathBuf>) -> Result<Self> {
        let socket = socket.into();
        check_socket_path(&socket)?;
        Ok(Self { socket })
    }

    /// Sends `req`; a 2xx status is success, anything else an [`Error::Api`] carrying
    /// Firecracker's `fault_message`.
    pub fn send(&self, req: &ApiRequest) -> Result<()> {
        let api_err = |reason: String| Error::Api {
            method: req.method,
            uri: req.path.clone(),
            reason,
        };
        let body = serde_json::to_vec(&req.body).map_err(|source| Error::Json {
            what: format!("{} body", req.path),
            source,
        })?;
        let mut stream = UnixStream::connect(&self.socket)
            .map_err(|e| api_err(format!("connecting to {}: {e}", self.socket.display())))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| api_err(e.to_string()))?;
        let head = format!(
            "{} {} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            req.method,
            req.path,
            body.len()
        );
        stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(&body))
            .map_err(|e| api_err(format!("sending: {e}")))?;
        let (status, body) = read_response(&mut stream).map_err(api_err)?;
        if (200..300).contains(&status) {
            tracing::debug!(method = req.method, path = %req.path, status, "firecracker api");
            return Ok(());
        }
        let fault = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("fault_message")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        Err(api_err(format!("status {status}: {fault}")))
    }
}

fn read_response(stream: &mut UnixStream) -> Result<(u16, Vec<u8>), String> {
    let mut reader = BufReader::new(stream.take(MAX_RESPONSE as u64));
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| format!("reading the response: {e}"))?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("malformed status line {:?}", line.trim()))?;
    let mut length = 0usize;
    loop {
        line.clear();
        reader
            .read_line(&mut line)
            .map_err(|e| format!("reading the response headers: {e}"))?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value
                .trim()
                .parse()
                .map_err(|_| format!("bad content-length {value:?}"))?;
        }
    }
    if length > MAX_RESPONSE {
        return Err(format!("response body of {length} bytes"));
    }
    let mut body = vec![0; length];
    reader
        .read_exact(&mut body)
        .map_err(|e| format!("reading the response body: {e}"))?;
    Ok((status, body))
}

/// A tap device that is deleted when dropped.
#[derive(Debug)]
pub struct Tap {
    name: String,
    created: bool,
}

impl Tap {
    /// Creates the tap `config.name` (`ip tuntap add ... mode tap`), gives the host end
    /// `host_cidr` and brings it up. On failure, whatever was created is removed.
    pub fn create(config: &TapConfig) -> Result<Self> {
        if config.name.is_empty()
            || config.name.len() > 15
            || !config
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Error::Spec(format!(
                "tap name {:?}: 1 to 15 letters, digits, - or _",
                config.name
            )));
        }
        let ip = crate::process::require("creating a tap device", "ip")?;
        crate::process::run(Command::new(&ip).args([
            "tuntap",
            "add",
            "dev",
            &config.name,
            "mode",
            "tap",
        ]))?;
        let tap = Self {
            name: config.name.clone(),
            created: true,
        };
        if let Some(cidr) = &config.host_cidr {
            crate::process::run(Command::new(&ip).args([
                "addr",
                "add",
                cidr,
                "dev",
                &config.name,
            ]))?;
        }
        crate::process::run(Command::new(&ip).args(["link", "set", &config.name, "up"]))?;
        tracing::debug!(tap = %tap.name, "tap created");
        Ok(tap)
    }

    /// The device name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        if self.created {
            let out = Command::new("ip")
                .args(["link", "del", &self.name])
                .output();
            match out {
                Ok(o) if o.status.success() => tracing::debug!(tap = %self.name, "tap deleted"),
                _ => tracing::warn!(tap = %self.name, "could not delete tap device"),
            }
        }
    }
}

/// Runs a [`VmSpec`] in Firecracker.
#[derive(Debug)]
pub struct FirecrackerDriver {
    spec: VmSpec,
    opts: FirecrackerOptions,
    console: PathBuf,
    socket: PathBuf,
    kernel: Option<KernelFiles>,
    tap: Option<Tap>,
    child: Option<Child>,
    exit: Option<VmExit>,
}

impl FirecrackerDriver {
    /// A driver for `spec`.
    pub fn new(spec: VmSpec, opts: FirecrackerOptions) -> Self {
        let console = spec.console_log_path();
        let socket = match (&opts.jailer, &opts.api_socket) {
            (Some(j), _) => jail_root(j, &spec.name).join("run/firecracker.socket"),
            (None, Some(s)) => s.clone(),
            (None, None) => spec.work_dir.join("firecracker.sock"),
        };
        Self {
            spec,
            opts,
            console,
            socket,
            kernel: None,
            tap: None,
            child: None,
            exit: None,
        }
    }

    /// The API socket path.
    pub fn api_socket(&self) -> &Path {
        &self.socket
    }

    /// The configuration requests, in the order they are sent (ending with `InstanceStart`).
    /// `kernel` paths are used as given (inside the jail when jailed).
    pub fn api_requests(&self, kernel: &KernelFiles) -> Result<Vec<ApiRequest>> {
        let spec = &self.spec;
        let mut reqs = Vec::new();
        let mut boot = json!({
            "kernel_image_path": kernel.kernel,
            "boot_args": spec.cmdline.clone().unwrap_or_else(|| {
                if spec.network == Network::None {
                    DEFAULT_CMDLINE.replace(DEFAULT_IP, "")
                } else {
                    DEFAULT_CMDLINE.to_owned()
                }
            }),
        });
        if let Some(initrd) = &kernel.initrd {
            boot["initrd_path"] = json!(initrd);
        }
        reqs.push(ApiRequest::put("/boot-source", boot));
        reqs.push(ApiRequest::put(
            "/machine-config",
            json!({"vcpu_count": spec.vcpus.max(1), "mem_size_mib": spec.memory_mib, "smt": false}),
        ));
        for (i, drive) in spec.drives.iter().enumerate() {
            check_id(&drive.id)?;
            reqs.push(ApiRequest::put(
                format!("/drives/{}", drive.id),
                json!({
                    "drive_id": drive.id,
                    "path_on_host": self.guest_visible(&drive.path),
                    "is_root_device": i == 0,
                    "is_read_only": drive.read_only,
                }),
            ));
        }
        let mut iface = None;
        match &spec.network {
            Network::None => {}
            Network::Tap(tap) => {
                reqs.push(ApiRequest::put(
                    "/network-interfaces/eth0",
                    json!({"iface_id": "eth0", "guest_mac": tap.guest_mac, "host_dev_name": tap.name}),
                ));
                iface = Some("eth0");
            }
            Network::User => {
                return Err(Error::Spec(
                    "firecracker has no user networking: use Network::Tap".to_owned(),
                ));
            }
        }
        match &spec.metadata {
            Metadata::None => {}
            Metadata::Firecracker(doc) => {
                let Some(iface) = iface else {
                    return Err(Error::Spec(
                        "firecracker's MMDS needs a network interface (Network::Tap)".to_owned(),
                    ));
                };
                // The body type comes from firebuild-mmds (its Firecracker API writer).
                let mut config = firebuild_mmds::firecracker::MmdsConfig::v2([iface]);
                config.ipv4_address = Some(std::net::Ipv4Addr::new(169, 254, 169, 254));
                let body = serde_json::to_value(&config).map_err(|source| Error::Json {
                    what: "/mmds/config body".to_owned(),
                    source,
                })?;
                reqs.push(ApiRequest::put("/mmds/config", body));
                reqs.push(ApiRequest::put("/mmds", doc.clone()));
            }
            Metadata::Server(_) => {
                return Err(Error::Spec(
                    "firecracker serves metadata itself: use Metadata::Firecracker".to_owned(),
                ));
            }
        }
        reqs.push(ApiRequest::put(
            "/actions",
            json!({"action_type": "InstanceStart"}),
        ));
        Ok(reqs)
    }

    /// The path Firecracker sees for a host file (inside the jail when jailed).
    fn guest_visible(&self, path: &Path) -> PathBuf {
        match (&self.opts.jailer, path.file_name()) {
            (Some(_), Some(name)) => Path::new("/").join(name),
            _ => path.to_path_buf(),
        }
    }

    /// The command that starts Firecracker (or the jailer).
    pub fn command(&self) -> Command {
        match &self.opts.jailer {
            None => {
                let mut cmd = Command::new(&self.opts.firecracker);
                cmd.arg("--api-sock")
                    .arg(&self.socket)
                    .args(["--id", &self.spec.name]);
                cmd
            }
            Some(j) => {
                let mut cmd = Command::new(&j.jailer);
                cmd.args(["--id", &self.spec.name])
                    .arg("--exec-file")
                    .arg(&self.opts.firecracker)
                    .args(["--uid", &j.uid.to_string(), "--gid", &j.gid.to_string()])
                    .arg("--chroot-base-dir")
                    .arg(&j.chroot_base)
                    .args(["--", "--api-sock", "/run/firecracker.socket"]);
                cmd
            }
        }
    }

    /// Hard-links (or copies) kernel, initrd and drives into the jail root; returns the
    /// kernel files as the jailed Firecracker sees them.
    fn stage_jail(&self, j: &JailerOptions, kernel: &KernelFiles) -> Result<KernelFiles> {
        let root = jail_root(j, &self.spec.name);
        std::fs::create_dir_all(root.join("run")).map_err(Error::io(&root))?;
        let mut files: Vec<&Path> = vec![&kernel.kernel];
        files.extend(kernel.initrd.as_deref());
        files.extend(self.spec.drives.iter().map(|d| d.path.as_path()));
        for file in files {
            let Some(name) = file.file_name() else {
                return Err(Error::Spec(format!("{} has no file name", file.display())));
            };
            let dest = root.join(name);
            let _ = std::fs::remove_file(&dest);
            if std::fs::hard_link(file, &dest).is_err() {
                std::fs::copy(file, &dest).map_err(Error::io(file))?;
            }
            std::os::unix::fs::chown(&dest, Some(j.uid), Some(j.gid)).map_err(Error::io(&dest))?;
        }
        Ok(KernelFiles {
            kernel: self.guest_visible(&kernel.kernel),
            initrd: kernel.initrd.as_deref().map(|p| self.guest_visible(p)),
        })
    }

    fn wait_for_socket(&mut self) -> Result<()> {
        let deadline = Instant::now() + self.opts.socket_timeout;
        while Instant::now() < deadline {
            if UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(Error::State {
                    driver: "firecracker",
                    reason: format!("firecracker exited ({status}) before its API socket appeared"),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(Error::State {
            driver: "firecracker",
            reason: format!("api socket {} did not appear", self.socket.display()),
        })
    }

    fn release(&mut self) {
        self.tap = None;
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn jail_root(j: &JailerOptions, id: &str) -> PathBuf {
    j.chroot_base.join("firecracker").join(id).join("root")
}

fn check_id(id: &str) -> Result<()> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(Error::Spec(format!(
            "drive id {id:?}: letters, digits and _ only"
        )));
    }
    Ok(())
}

impl Driver for FirecrackerDriver {
    fn name(&self) -> &'static str {
        "firecracker"
    }

    fn prepare(&mut self) -> Result<()> {
        check_socket_path(&self.socket)?;
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
        // Validate the whole configuration before touching the host.
        self.api_requests(&kernel)?;
        if let Network::Tap(config) = &self.spec.network {
            self.tap = Some(Tap::create(config)?);
        }
        self.kernel = Some(kernel);
        Ok(())
    }

    fn start(&mut self) -> Result<()> {
        let Some(kernel) = self.kernel.clone() else {
            return Err(Error::State {
                driver: "firecracker",
                reason: "prepare() has not run".to_owned(),
            });
        };
        check_not_started("firecracker", self.child.as_ref())?;
        let kernel = match &self.opts.jailer {
            Some(j) => self.stage_jail(&j.clone(), &kernel)?,
            None => kernel,
        };
        let requests = self.api_requests(&kernel)?;
        let _ = std::fs::remove_file(&self.socket);
        let console = std::fs::File::create(&self.console).map_err(Error::io(&self.console))?;
        let log_path = self.spec.work_dir.join("firecracker.log");
        let log = std::fs::File::create(&log_path).map_err(Error::io(&log_path))?;
        let mut cmd = self.command();
        cmd.stdin(Stdio::null()).stdout(console).stderr(log);
        tracing::info!(name = %self.spec.name, console = %self.console.display(), "starting firecracker");
        self.child = Some(spawn_vmm(&mut cmd, &self.opts.firecracker)?);
        let configured = self.wait_for_socket().and_then(|()| {
            let client = ApiClient::new(&self.socket)?;
            requests.iter().try_for_each(|r| client.send(r))
        });
        if let Err(e) = configured {
            let _ = self.stop();
            return Err(e);
        }
        Ok(())
    }

    fn wait(&mut self, timeout: Duration) -> Result<Option<VmExit>> {
        let reaped = wait_vmm("firecracker", self.child.as_mut(), &mut self.exit, timeout)?;
        if let Reaped::Now(_) = reaped {
            self.release();
        }
        Ok(reaped.exit())
    }

    fn stop(&mut self) -> Result<Option<VmExit>> {
        let socket = &self.socket;
        let grace = self.opts.stop_grace;
        let reaped = stop_vmm(self.child.as_mut(), &mut self.exit, |child| {
            let graceful = ApiClient::new(socket).and_then(|c| {
                c.send(&ApiRequest::put(
                    "/actions",
                    json!({"action_type": "SendCtrlAltDel"}),
                ))
            });
            match graceful {
                Ok(()) => match wait_child(child, grace, "firecracker")? {
                    Some(status) => Ok(status),
                    None => kill_child(child),
                },
                Err(_) => kill_child(child),
            }
        })?;
        self.release();
        Ok(reaped.exit())
    }

    fn console_log(&self) -> &Path {
        &self.console
    }
}

impl Drop for FirecrackerDriver {
    fn drop(&mut self) {
        kill_unreaped(self.child.as_mut(), self.exit);
        self.release();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::sync::{Arc, Mutex};

    /// A stand-in for Firecracker's API: records each request (method, path, JSON body) and
    /// answers 204, or 400 with a `fault_message` for paths in `fail`.
    fn fake_api(
        socket: &Path,
        fail: &'static [&'static str],
    ) -> Arc<Mutex<Vec<(String, String, Value)>>> {
        let listener = UnixListener::bind(socket).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap().to_owned();
                let path = parts.next().unwrap().to_owned();
                let mut len = 0;
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).unwrap();
                    if h.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                let body: Value = serde_json::from_slice(&body).unwrap();
                record.lock().unwrap().push((method, path.clone(), body));
                if fail.contains(&path.as_str()) {
                    let msg = br#"{"fault_message":"The kernel file cannot be opened"}"#;
                    write!(
                        stream,
                        "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\n\r\n",
                        msg.len()
                    )
                    .unwrap();
                    stream.write_all(msg).unwrap();
                } else {
                    stream
                        .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                        .unwrap();
                }
            }
        });
        seen
    }

    fn spec(dir: &Path) -> VmSpec {
        let mut spec = VmSpec::new("fb-test", dir, "/img/rootfs.ext4");
        spec.kernel = Some(KernelFiles {
            kernel: "/k/vmlinux".into(),
            initrd: Some("/k/initramfs.cpio".into()),
        });
        spec.vcpus = 2;
        spec.memory_mib = 1024;
        spec.drives.push(crate::Drive {
            id: "scratch".into(),
            path: "/img/scratch.ext4".into(),
            read_only: true,
        });
        spec.network = Network::Tap(TapConfig {
            name: "fbtap0".into(),
            guest_mac: "06:00:a9:fe:00:0f".into(),
            host_cidr: Some("169.254.0.2/16".into()),
        });
        spec.metadata =
            Metadata::Firecracker(json!({"bootstrap": {"grpc-host-port": "169.254.0.2:5000"}}));
        spec
    }

    #[test]
    fn requests_follow_the_api_spec_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec(dir.path());
        let driver = FirecrackerDriver::new(spec.clone(), FirecrackerOptions::default());
        let socket = dir.path().join("api.sock");
        let seen = fake_api(&socket, &[]);
        let client = ApiClient::new(&socket).unwrap();
        for req in driver.api_requests(spec.kernel.as_ref().unwrap()).unwrap() {
            client.send(&req).unwrap();
        }
        let seen = seen.lock().unwrap().clone();
        let paths: Vec<_> = seen.iter().map(|(m, p, _)| format!("{m} {p}")).collect();
        assert_eq!(
            paths,
            [
                "PUT /boot-source",
                "PUT /machine-config",
                "PUT /drives/rootfs",
                "PUT /drives/scratch",
                "PUT /network-interfaces/eth0",
                "PUT /mmds/config",
                "PUT /mmds",
                "PUT /actions",
            ]
        );
        let body = |i: usize| seen[i].2.clone();
        assert_eq!(
            body(0),
            json!({"kernel_image_path": "/k/vmlinux", "initrd_path": "/k/initramfs.cpio", "boot_args": DEFAULT_CMDLINE})
        );
        assert!(
            !DEFAULT_CMDLINE.contains("init="),
            "vminit comes from the initramfs: {DEFAULT_CMDLINE}"
        );
        assert!(DEFAULT_CMDLINE.contains(DEFAULT_IP), "{DEFAULT_CMDLINE}");
        assert_eq!(
            body(1),
            json!({"vcpu_count": 2, "mem_size_mib": 1024, "smt": false})
        );
        assert_eq!(
            body(2),
            json!({"drive_id": "rootfs", "path_on_host": "/img/rootfs.ext4", "is_root_device": true, "is_read_only": false})
        );
        assert_eq!(
            body(3),
            json!({"drive_id": "scratch", "path_on_host": "/img/scratch.ext4", "is_root_device": false, "is_read_only": true})
        );
        assert_eq!(
            body(4),
            json!({"iface_id": "eth0", "guest_mac": "06:00:a9:fe:00:0f", "host_dev_name": "fbtap0"})
        );
        assert_eq!(
            body(5),
            json!({"version": "V2", "network_interfaces": ["eth0"], "ipv4_address": "169.254.169.254"})
        );
        assert_eq!(
            body(6),
            json!({"bootstrap": {"grpc-host-port": "169.254.0.2:5000"}})
        );
        assert_eq!(body(7), json!({"action_type": "InstanceStart"}));
    }

    #[test]
    fn api_errors_carry_the_fault_message() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let _seen = fake_api(&socket, &["/boot-source"]);
        let client = ApiClient::new(&socket).unwrap();
        let err = client
            .send(&ApiRequest::put(
                "/boot-source",
                json!({"kernel_image_path": "/nope"}),
            ))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "firecracker api PUT /boot-source: status 400: The kernel file cannot be opened"
        );
    }

    #[test]
    fn long_socket_paths_are_refused_up_front() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = spec(dir.path());
        spec.network = Network::None;
        spec.metadata = Metadata::None;
        let long = dir.path().join("x".repeat(120)).join("firecracker.sock");
        let opts = FirecrackerOptions {
            api_socket: Some(long.clone()),
            ..FirecrackerOptions::default()
        };
        let mut driver = FirecrackerDriver::new(spec, opts);
        let err = driver.prepare().unwrap_err();
        assert!(
            matches!(err, Error::SocketPathTooLong { len, .. } if len == long.as_os_str().len())
        );
        assert!(err.to_string().contains("107 bytes"), "{err}");
        assert!(ApiClient::new(&long).is_err());
    }

    #[test]
    fn mmds_without_an_interface_and_user_networking_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(dir.path());
        s.network = Network::None;
        let d = FirecrackerDriver::new(s.clone(), FirecrackerOptions::default());
        let err = d.api_requests(s.kernel.as_ref().unwrap()).unwrap_err();
        assert!(
            err.to_string().contains("needs a network interface"),
            "{err}"
        );
        s.network = Network::User;
        let d = FirecrackerDriver::new(s.clone(), FirecrackerOptions::default());
        assert!(d.api_requests(s.kernel.as_ref().unwrap()).is_err());
    }

    #[test]
    fn jailer_command_and_paths() {
        let dir = tempfile::tempdir().unwrap();
        let opts = FirecrackerOptions {
            jailer: Some(JailerOptions {
                jailer: "/usr/bin/jailer".into(),
                uid: 123,
                gid: 456,
                chroot_base: "/srv/jailer".into(),
            }),
            ..FirecrackerOptions::default()
        };
        let s = spec(dir.path());
        let d = FirecrackerDriver::new(s.clone(), opts);
        assert_eq!(
            d.api_socket(),
            Path::new("/srv/jailer/firecracker/fb-test/root/run/firecracker.socket")
        );
        let cmd = d.command();
        let args: Vec<_> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args.join(" "),
            "--id fb-test --exec-file firecracker --uid 123 --gid 456 --chroot-base-dir /srv/jailer -- --api-sock /run/firecracker.socket"
        );
        let reqs = d.api_requests(s.kernel.as_ref().unwrap()).unwrap();
        assert_eq!(reqs[2].body["path_on_host"], "/rootfs.ext4");
    }

    #[test]
    fn tap_is_created_and_removed_on_drop() {
        if !Path::new("/dev/net/tun").exists() || crate::process::which("ip").is_none() {
            eprintln!("skipping: no /dev/net/tun or no `ip`");
            return;
        }
        let name = format!("fbt{}", std::process::id() % 100_000);
        let config = TapConfig {
            name: name.clone(),
            guest_mac: "06:00:00:00:00:01".into(),
            host_cidr: None,
        };
        let tap = match Tap::create(&config) {
            Ok(t) => t,
            Err(e) if std::env::var_os("CI").is_none() => {
                eprintln!("skipping: cannot create a tap here: {e}");
                return;
            }
            Err(e) => panic!("creating a tap: {e}"),
        };
        assert!(Path::new("/sys/class/net").join(&name).exists());
        drop(tap);
        assert!(
            !Path::new("/sys/class/net").join(&name).exists(),
            "tap {name} left behind"
        );
        let bad = TapConfig {
            name: "a-name-longer-than-15".into(),
            ..config
        };
        assert!(
            Tap::create(&bad)
                .unwrap_err()
                .to_string()
                .contains("1 to 15")
        );
    }
}
