//! Network namespaces around a guest: wait for one to appear, configure it with `ip` through
//! `nsenter`, and forward chosen ports from its loopback to the host's.
//!
//! The QEMU driver's isolated user networking ([`Isolation`]) and the sandbox driver both use
//! these. Isolation puts QEMU in a fresh network namespace whose only way out is `slirp4netns
//! --disable-host-loopback`; the namespace blackholes every address the host owns, and the
//! ports the guest must reach (the build's bootstrap and metadata servers) are forwarded one by
//! one from the namespace's loopback to the host's.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How long slirp4netns may take to configure the namespace.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits until process `pid` is in a `kind` namespace (`user`, `net`) other than ours.
pub(crate) fn wait_for_ns(driver: &'static str, pid: u32, kind: &str) -> Result<()> {
    let own_path = format!("/proc/self/ns/{kind}");
    let own = std::fs::read_link(&own_path).map_err(Error::io(&own_path))?;
    let theirs = PathBuf::from(format!("/proc/{pid}/ns/{kind}"));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if std::fs::read_link(&theirs).is_ok_and(|ns| ns != own) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::State {
                driver,
                reason: format!("{kind} namespace of pid {pid} did not appear"),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `ip ARGS` in the network namespace of `pid` (joining its user namespace too when we
/// are not root, as the namespace then belongs to it).
pub(crate) fn ip_in(pid: u32, args: &[&str]) -> Result<()> {
    let nsenter = crate::process::require("guest networking", "nsenter")?;
    let mut cmd = Command::new(nsenter);
    cmd.arg(format!("--target={pid}")).arg("--net");
    if !rustix::process::geteuid().is_root() {
        cmd.args(["--user", "--preserve-credentials"]);
    }
    crate::process::run(cmd.arg("--").arg("ip").args(args))?;
    Ok(())
}

/// Binds `addr` inside the network namespace `netns` from a helper thread (sockets keep the
/// namespace they were created in), leaving this process's namespaces untouched.
pub(crate) fn listen_in(
    driver: &'static str,
    netns: &Path,
    addr: SocketAddr,
) -> Result<TcpListener> {
    let netns = netns.to_path_buf();
    let bind = std::thread::spawn(move || -> std::io::Result<TcpListener> {
        let target = std::fs::File::open(&netns)?;
        // This thread ends right after binding, so it never needs to move back.
        rustix::thread::move_into_link_name_space(
            target.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )?;
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    });
    match bind.join() {
        Ok(Ok(listener)) => Ok(listener),
        Ok(Err(source)) => Err(Error::Io {
            path: PathBuf::from(format!("{driver} listener {addr}")),
            source,
        }),
        Err(_) => Err(Error::State {
            driver,
            reason: "listener thread panicked".to_owned(),
        }),
    }
}

/// Port forwarders from a namespace to the host, running until dropped.
#[derive(Debug, Default)]
pub(crate) struct Forwards {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Forwards {
    /// Accepts on `listen` inside the namespace of `pid` and connects each connection to
    /// `target`, which first receives `preamble` (e.g. a metadata server's relay key).
    pub(crate) fn add(
        &mut self,
        driver: &'static str,
        pid: u32,
        listen: SocketAddr,
        target: SocketAddr,
        preamble: &[u8],
    ) -> Result<()> {
        let netns = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let listener = listen_in(driver, &netns, listen)?;
        let stop = Arc::clone(&self.stop);
        let preamble = preamble.to_vec();
        self.threads.push(std::thread::spawn(move || {
            forward(listener, target, &preamble, &stop)
        }));
        Ok(())
    }

    /// Stops accepting and joins the accept threads.
    pub(crate) fn release(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

impl Drop for Forwards {
    fn drop(&mut self) {
        self.release();
    }
}

/// Accepts in the namespace, connects on the host, and copies both ways until `stop`.
fn forward(listener: TcpListener, target: SocketAddr, preamble: &[u8], stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((inside, _)) => {
                let _ = inside.set_nonblocking(false);
                let connected = TcpStream::connect(target).and_then(|mut outside| {
                    outside.write_all(preamble)?;
                    Ok(outside)
                });
                match connected {
                    Ok(outside) => splice(inside, outside),
                    Err(e) => tracing::warn!(%target, error = %e, "forward: connect failed"),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                tracing::warn!(%target, error = %e, "forward: accept failed");
                return;
            }
        }
    }
}

fn splice(a: TcpStream, b: TcpStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let pump = |mut from: TcpStream, mut to: TcpStream| {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Write);
        })
    };
    pump(a, b2);
    pump(b, a2);
}

/// The addresses this host owns outside loopback and link-local scope (`ip -j addr`): a guest
/// must not reach any of them.
pub(crate) fn host_addresses() -> Result<Vec<IpAddr>> {
    let ip = crate::process::require("guest networking", "ip")?;
    let out = crate::process::run(Command::new(ip).args(["-j", "addr", "show"]))?;
    parse_addresses(&out.stdout)
        .ok_or_else(|| Error::Spec("`ip -j addr show`: unexpected output".to_owned()))
}

fn parse_addresses(json: &[u8]) -> Option<Vec<IpAddr>> {
    let links: Vec<serde_json::Value> = serde_json::from_slice(json).ok()?;
    let mut addrs = Vec::new();
    for info in links
        .iter()
        .filter_map(|l| l.get("addr_info")?.as_array())
        .flatten()
    {
        let scope = info.get("scope").and_then(|s| s.as_str()).unwrap_or("");
        let Some(addr) = info
            .get("local")
            .and_then(|a| a.as_str()?.parse::<IpAddr>().ok())
        else {
            continue;
        };
        if scope == "global" || scope == "site" {
            addrs.push(addr);
        }
    }
    addrs.sort();
    addrs.dedup();
    Some(addrs)
}

/// A guest network namespace's way out: `slirp4netns --disable-host-loopback` plus the
/// forwarded host ports. Dropping it stops both.
#[derive(Debug)]
pub struct Isolation {
    slirp: Child,
    forwards: Forwards,
}

impl Isolation {
    /// Configures the network namespace of `pid` (the guest's VMM, waiting before it starts):
    /// `lo` up, a blackhole route for each of the host's own addresses, `slirp4netns` on
    /// `tap0` as the only route out, and `ports` of the host's loopback forwarded to the same
    /// ports on the namespace's loopback (each connection opened with its preamble).
    pub(crate) fn setup(
        driver: &'static str,
        slirp4netns: &Path,
        pid: u32,
        ports: &[(u16, &[u8])],
    ) -> Result<Self> {
        wait_for_ns(driver, pid, "net")?;
        ip_in(pid, &["link", "set", "lo", "up"])?;
        for addr in host_addresses()? {
            let route = if addr.is_ipv4() {
                format!("{addr}/32")
            } else {
                format!("{addr}/128")
            };
            match ip_in(pid, &["route", "add", "blackhole", &route]) {
                Ok(()) => {}
                // Without IPv6 in the namespace the guest has no IPv6 route to block.
                Err(e) if addr.is_ipv6() => tracing::debug!(error = %e, "no IPv6 blackhole"),
                Err(e) => return Err(e),
            }
        }
        let slirp = start_slirp4netns(slirp4netns, pid)?;
        let mut isolation = Self {
            slirp,
            forwards: Forwards::default(),
        };
        for (port, preamble) in ports {
            let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), *port);
            isolation.forwards.add(driver, pid, addr, addr, preamble)?;
        }
        Ok(isolation)
    }
}

impl Drop for Isolation {
    fn drop(&mut self) {
        self.forwards.release();
        let _ = self.slirp.kill();
        let _ = self.slirp.wait();
    }
}

/// Starts slirp4netns for the namespace of `pid` and waits until it reports the namespace
/// configured (`--ready-fd`).
#[allow(unsafe_code)]
fn start_slirp4netns(program: &Path, pid: u32) -> Result<Child> {
    let program = crate::process::require("isolated guest networking", &program.to_string_lossy())?;
    let (ready_r, ready_w) = std::io::pipe().map_err(Error::io("pipe"))?;
    let mut cmd = Command::new(&program);
    cmd.args(["--configure", "--mtu=65520", "--disable-host-loopback"])
        .arg(format!("--ready-fd={}", ready_w.as_raw_fd()))
        .arg(pid.to_string())
        .arg("tap0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let raw = ready_w.as_raw_fd();
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: fcntl is async-signal-safe, and the fd stays open in the parent until spawn
        // returns, so the child clears FD_CLOEXEC on a valid descriptor.
        unsafe {
            cmd.pre_exec(move || {
                let fd = rustix::fd::BorrowedFd::borrow_raw(raw);
                rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
                Ok(())
            });
        }
    }
    let mut child = crate::driver::spawn_vmm(&mut cmd, &program)?;
    drop(ready_w);
    if let Err(reason) = wait_ready(ready_r) {
        let _ = child.kill();
        let mut stderr = String::new();
        if let Some(mut err) = child.stderr.take() {
            let _ = err.read_to_string(&mut stderr);
        }
        let _ = child.wait();
        return Err(Error::State {
            driver: "slirp4netns",
            reason: format!("{reason}: {}", stderr.trim()),
        });
    }
    Ok(child)
}

/// Reads slirp4netns's `1` from the ready pipe within [`READY_TIMEOUT`].
fn wait_ready(ready: std::io::PipeReader) -> std::result::Result<(), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        let mut ready = ready;
        let _ = tx.send(ready.read(&mut byte).map(|n| n == 1 && byte[0] == b'1'));
    });
    match rx.recv_timeout(READY_TIMEOUT) {
        Ok(Ok(true)) => Ok(()),
        Ok(_) => Err("exited before configuring the namespace".to_owned()),
        Err(_) => Err(format!("not ready after {READY_TIMEOUT:?}")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn host_addresses_skip_loopback_and_link_local() {
        let json = br#"[
          {"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","scope":"host"},
                                      {"family":"inet6","local":"::1","scope":"host"}]},
          {"ifname":"eth0","addr_info":[{"family":"inet","local":"192.0.2.2","scope":"global"},
                                        {"family":"inet6","local":"fe80::1","scope":"link"},
                                        {"family":"inet6","local":"fd00::2","scope":"global"}]},
          {"ifname":"docker0","addr_info":[{"family":"inet","local":"172.17.0.1","scope":"global"}]},
          {"ifname":"tap9"}
        ]"#;
        let got: Vec<String> = parse_addresses(json)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got, ["172.17.0.1", "192.0.2.2", "fd00::2"]);
        assert!(parse_addresses(b"not json").is_none());
    }
}
