//! Shared helpers of the firebuild-vmm integration tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Returns the path of `tool`, or `None` after printing why the test is skipped; panics under CI.
pub fn need(tool: &str, why: &str) -> Option<PathBuf> {
    match firebuild_vmm::which(tool) {
        Some(p) => Some(p),
        None => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{tool} is required ({why}) and missing: scripts/test.sh installs it"
            );
            eprintln!("skipping: {tool} not found ({why})");
            None
        }
    }
}

/// A static busybox, or `None` (skip) / panic under CI.
pub fn static_busybox() -> Option<PathBuf> {
    let bb = need("busybox", "guest userland")?;
    let bytes = std::fs::read(&bb).unwrap();
    if firebuild_vmm::kernel::is_static_elf(&bytes) {
        Some(bb)
    } else {
        assert!(
            std::env::var_os("CI").is_none(),
            "busybox is not static: install busybox-static"
        );
        eprintln!(
            "skipping: {} is not static (install busybox-static)",
            bb.display()
        );
        None
    }
}

/// A static busybox when `tools` (name, why) are all there too; else `None` (skip) / panic under
/// CI, as [`need`].
pub fn busybox_and(tools: &[(&str, &str)]) -> Option<PathBuf> {
    let busybox = static_busybox()?;
    for (tool, why) in tools {
        need(tool, why)?;
    }
    Some(busybox)
}

/// A QEMU microvm driver for `image` booting `kernel` (with its initramfs), user networking and
/// the metadata server at `mmds`.
pub fn qemu_driver(
    name: &str,
    dir: &Path,
    image: &Path,
    kernel: &firebuild_vmm::kernel::Kernel,
    mmds: SocketAddr,
    memory_mib: u32,
) -> firebuild_vmm::QemuDriver {
    let mut spec = firebuild_vmm::VmSpec::new(name, dir, image);
    spec.kernel = Some(firebuild_vmm::KernelFiles {
        kernel: kernel.vmlinux(),
        initrd: Some(kernel.initramfs()),
    });
    spec.network = firebuild_vmm::Network::User;
    spec.metadata = firebuild_vmm::Metadata::Server(mmds);
    spec.memory_mib = memory_mib;
    let opts = firebuild_vmm::QemuOptions {
        probe_cache: Some(kernel.dir.join("kvm-probe")),
        ..firebuild_vmm::QemuOptions::default()
    };
    firebuild_vmm::QemuDriver::new(spec, opts)
}

/// A QEMU microvm driver booting `kernel` with `initrd` (default: the kernel's initramfs), the
/// kernel command line `cmdline`, isolated user networking reaching the host's loopback `ports`
/// at 169.254.0.2, and the metadata server `mmds` (if any).
#[allow(clippy::too_many_arguments)]
pub fn qemu_driver_with(
    name: &str,
    dir: &Path,
    image: &Path,
    kernel: &firebuild_vmm::kernel::Kernel,
    initrd: Option<&Path>,
    mmds: Option<SocketAddr>,
    ports: &[u16],
    cmdline: &str,
    memory_mib: u32,
) -> firebuild_vmm::QemuDriver {
    let mut spec = firebuild_vmm::VmSpec::new(name, dir, image);
    spec.kernel = Some(firebuild_vmm::KernelFiles {
        kernel: kernel.vmlinux(),
        initrd: Some(initrd.map_or_else(|| kernel.initramfs(), Path::to_path_buf)),
    });
    spec.network = firebuild_vmm::Network::User;
    spec.metadata = mmds.map_or(
        firebuild_vmm::Metadata::None,
        firebuild_vmm::Metadata::Server,
    );
    spec.cmdline = Some(cmdline.to_owned());
    spec.memory_mib = memory_mib;
    let opts = firebuild_vmm::QemuOptions {
        probe_cache: Some(kernel.dir.join("kvm-probe")),
        forward_ports: ports.to_vec(),
        ..firebuild_vmm::QemuOptions::default()
    };
    firebuild_vmm::QemuDriver::new(spec, opts)
}

/// The host's first global IPv4 address (`ip -4 -o addr show scope global`).
pub fn host_global_ipv4() -> Option<String> {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let cidr = text.lines().next()?.split_whitespace().nth(3)?;
    Some(cidr.split('/').next()?.to_owned())
}

/// A merged-/usr root (Debian 12 style: `/bin`, `/sbin`, `/lib` are symlinks into `usr/`) with
/// busybox and `applets` in `usr/bin`, `/etc/passwd` and `/etc/group` with root, and no `/proc`,
/// `/sys`, `/dev`, `/run` (vminit must create and remove what it needs).
pub fn merged_usr_root(dir: &Path, busybox: &Path, applets: &[&str]) -> PathBuf {
    let root = dir.join("root");
    for d in ["usr/bin", "usr/sbin", "usr/lib", "etc", "tmp", "srv"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for (link, target) in [("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib")] {
        std::os::unix::fs::symlink(target, root.join(link)).unwrap();
    }
    std::fs::copy(busybox, root.join("usr/bin/busybox")).unwrap();
    for applet in std::iter::once(&"sh").chain(applets) {
        std::os::unix::fs::symlink("busybox", root.join("usr/bin").join(applet)).unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    std::fs::set_permissions(
        root.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    root
}

/// `debugfs -R "ls -l PATH" image`: the names in that directory.
pub fn ext4_ls(image: &Path, path: &str) -> Vec<String> {
    let out = std::process::Command::new("debugfs")
        .args(["-R", &format!("ls -l {path}")])
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
        .filter(|n| n != "." && n != "..")
        .collect()
}

/// A root directory with busybox in /bin and the usual mount points; `init` at `init_path`.
pub fn busybox_root(dir: &Path, busybox: &Path, init_path: &str, init: &str) -> PathBuf {
    let root = dir.join("root");
    for d in ["bin", "sbin", "proc", "sys", "dev", "tmp", "etc", "run"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    let init_file = root.join(init_path.trim_start_matches('/'));
    std::fs::create_dir_all(init_file.parent().unwrap()).unwrap();
    std::fs::write(&init_file, init).unwrap();
    std::fs::set_permissions(
        &init_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    root
}

/// A tiny HTTP/1.0 server on 127.0.0.1: answers every request with
/// `body_for(method, path, lowercased header lines)`,
/// records `METHOD PATH` lines.
pub struct HttpServer {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<String>>>,
}

pub fn http_server(body_for: fn(&str, &str, &[String]) -> (u16, String)) -> HttpServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let record = Arc::clone(&record);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    return;
                }
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or("").to_owned();
                let path = parts.next().unwrap_or("").to_owned();
                let mut len = 0usize;
                let mut headers = Vec::new();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                        break;
                    }
                    headers.push(h.trim().to_ascii_lowercase());
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; len];
                let _ = reader.read_exact(&mut body);
                record.lock().unwrap().push(format!("{method} {path}"));
                let (status, reply) = body_for(&method, &path, &headers);
                let _ = write!(
                    stream,
                    "HTTP/1.0 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                    reply.len()
                );
            });
        }
    });
    HttpServer { addr, seen }
}

/// Prints the console log (for failures) and returns its text.
pub fn console(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    eprintln!(
        "---- console log {} ----\n{text}\n---- end ----",
        path.display()
    );
    text
}

/// The prepared guest kernel (cached under the default cache dir; the first run downloads it).
pub fn kernel() -> Option<firebuild_vmm::kernel::Kernel> {
    need("apt-get", "fetching the guest kernel")?;
    let cache = firebuild_vmm::kernel::default_cache_dir().unwrap();
    match firebuild_vmm::kernel::KernelBuilder::new(&cache).prepare() {
        Ok(k) => Some(k),
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            assert!(
                std::env::var_os("CI").is_none(),
                "preparing the guest kernel: {msg}"
            );
            eprintln!("skipping: cannot prepare the guest kernel: {msg}");
            None
        }
    }
}

/// `mkfs.ext4 -d root` into `image` (`size_mib`).
pub fn make_ext4(root: &Path, image: &Path, size_mib: u32) {
    let out = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "root_owner=0:0", "-d"])
        .arg(root)
        .arg(image)
        .arg(format!("{size_mib}M"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mkfs.ext4: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The size in bytes of the ext4 file system in `image` (block count × block size, `dumpe2fs -h`).
pub fn ext4_fs_bytes(image: &Path) -> u64 {
    let out = std::process::Command::new("dumpe2fs")
        .arg("-h")
        .arg(image)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    field("Block count:") * field("Block size:")
}

/// Keeps the console log of a failed boot: copies it under the target dir and prints where.
pub fn keep_console(path: &Path, name: &str) -> PathBuf {
    let keep = std::env::temp_dir().join(format!("firebuild-vmm-{name}-console.log"));
    let _ = std::fs::copy(path, &keep);
    eprintln!("console log kept at {}", keep.display());
    keep
}

/// The static vminit to boot: `$FIREBUILD_VMINIT`, else `target/vminit/vminit` (built by
/// `scripts/build-vminit.sh`). `None` (skip) when missing; a panic under CI.
pub fn vminit() -> Option<PathBuf> {
    let path = std::env::var_os("FIREBUILD_VMINIT").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/vminit/vminit"),
        PathBuf::from,
    );
    if !path.is_file() {
        assert!(
            std::env::var_os("CI").is_none(),
            "no vminit at {} (run scripts/build-vminit.sh or set FIREBUILD_VMINIT)",
            path.display()
        );
        eprintln!(
            "skipping: no vminit at {} (run scripts/build-vminit.sh or set FIREBUILD_VMINIT)",
            path.display()
        );
        return None;
    }
    Some(path)
}

/// Copies `binary` to `dest` inside `root`; a dynamically linked binary gets the libraries
/// `ldd` lists copied to the same paths (tests may use a host-built vminit).
pub fn install_binary(root: &Path, binary: &Path, dest: &str) {
    let target = root.join(dest.trim_start_matches('/'));
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::copy(binary, &target).unwrap();
    if firebuild_vmm::kernel::is_static_elf(&std::fs::read(binary).unwrap()) {
        return;
    }
    let out = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .unwrap();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let lib = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(Path::new);
        if let Some(lib) = lib {
            let dest = root.join(lib.strip_prefix("/").unwrap());
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(lib, &dest).unwrap();
        }
    }
}

/// `debugfs -R "cat PATH" image`.
pub fn ext4_cat(image: &Path, path: &str) -> String {
    let out = std::process::Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Guest uptime (seconds) at which the initramfs handed over to init, and at which the kernel
/// ran the initramfs `/init`, from the lines `/init` prints on the console.
pub fn boot_times(log: &str) -> (Option<f64>, Option<f64>) {
    let uptime = |marker: &str| {
        log.lines().filter(|l| l.contains(marker)).find_map(|l| {
            let rest = l.split("firebuild-initramfs: uptime ").nth(1)?;
            rest.split('s').next()?.parse().ok()
        })
    };
    (uptime(": starting "), uptime(": loading modules"))
}

/// A one-step plan (`RUN echo hi > /built`), its bootstrap server (PKI with SAN 169.254.0.2) and
/// an embedded MMDS server holding the `bootstrap` section that points at 169.254.0.2:PORT.
pub struct BootstrapFixture {
    pub port: u16,
    pub mmds_addr: SocketAddr,
    pub events: Arc<Mutex<Vec<String>>>,
    server: Option<firebuild_bootstrap::ServerHandle>,
    _mmds: firebuild_mmds::server::ServerHandle,
    _context: tempfile::TempDir,
}

const PLAN: &str = r#"{"schema_version":1,"dockerfile":"Dockerfile","target":0,"stages":[{
  "index":0,"base":{"kind":"scratch"},"span":{"start_line":1,"start_col":1,"end_line":1,"end_col":1},
  "config":{},"steps":[
  {"index":0,"span":{"start_line":2,"start_col":1,"end_line":2,"end_col":1},
   "context":{"env":[],"args":[],"workdir":"/","shell":["/bin/sh","-c"]},
   "kind":{"kind":"run","command":{"form":"shell","value":"echo hi > /built && echo step ran"}}}]}]}"#;

impl BootstrapFixture {
    pub fn start(rt: &tokio::runtime::Runtime) -> Self {
        Self::start_with(rt, "echo hi > /built && echo step ran")
    }

    /// The same with `command` (shell form) as the one RUN step.
    pub fn start_with(rt: &tokio::runtime::Runtime, command: &str) -> Self {
        use firebuild_bootstrap::{BootstrapServer, DirSource, Event};
        use firebuild_pki::{BuildId, BuildPki, Validity};
        let plan = PLAN.replace(
            "\"echo hi > /built && echo step ran\"",
            &serde_json::to_string(command).unwrap(),
        );
        let plan: firebuild_plan::BuildPlan = serde_json::from_str(&plan).unwrap();
        let context = tempfile::tempdir().unwrap();
        let build = BuildId::new("vmm-e2e").unwrap();
        let pki =
            BuildPki::generate(build.clone(), &["169.254.0.2"], &Validity::default()).unwrap();
        let (server, mut events) = rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            BootstrapServer::builder()
                .resources(DirSource::new(&plan, context.path()))
                .plan(plan.clone())
                .tls(pki.server.clone())
                .expected_client(build)
                .serve(listener)
                .await
                .unwrap()
        });
        let port = server.local_addr().port();
        let metadata = serde_json::json!({
            "bootstrap": {
                "grpc-host-port": format!("169.254.0.2:{port}"),
                "tls-ca-cert": pki.client.ca_cert_pem(),
                "tls-cert": pki.client.cert_pem(),
                "tls-key": pki.client.key_pem().expose_secret(),
            }
        });
        let mmds = rt
            .block_on(
                firebuild_mmds::server::Server::builder()
                    .initial_data(metadata)
                    .start(),
            )
            .unwrap();
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let record = Arc::clone(&seen);
        rt.spawn(async move {
            while let Some(event) = events.recv().await {
                record.lock().unwrap().push(format!("{event:?}"));
                if let Event::Succeeded = event {
                    break;
                }
            }
        });
        Self {
            port,
            mmds_addr: mmds.local_addr(),
            events: seen,
            server: Some(server),
            _mmds: mmds,
            _context: context,
        }
    }

    /// The build outcome (waits up to 5 s), then shuts the server down.
    pub fn outcome(mut self, rt: &tokio::runtime::Runtime) -> Option<firebuild_bootstrap::Outcome> {
        let mut server = self.server.take()?;
        let outcome = rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(5), server.wait())
                .await
                .ok()
                .flatten()
        });
        if !matches!(outcome, Some(firebuild_bootstrap::Outcome::Succeeded)) {
            eprintln!("host events: {:#?}", self.events.lock().unwrap());
        }
        rt.block_on(async {
            let _ = server.shutdown().await;
        });
        outcome
    }
}
