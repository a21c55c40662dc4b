//! The guest's end of the vsock status channel: sends each [`GuestStatus`] to the host as one
//! line (the framing of [`firebuild_mmds::vsock`]), where the metadata says
//! ([`firebuild_mmds::schema::StatusChannel`]); the guest never picks the port itself.
//!
//! [`StatusSender`] keeps one connection and reconnects when the host has closed it. Each
//! [`StatusSender::send`] is bounded by one short deadline ([`SEND_TIMEOUT`]), reconnect
//! included, so a host that does not listen costs the boot at most that per status.
//!
//! ```no_run
//! # async fn f() -> Result<(), firebuild_guest::vsock::Error> {
//! use firebuild_guest::vsock::{StatusSender, Target};
//! use firebuild_mmds::schema::{GuestPhase, GuestStatus};
//!
//! let mut sender = StatusSender::new(Target::host(10240));
//! sender.send(&GuestStatus::new(GuestPhase::Running)).await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd as _, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use firebuild_mmds::schema::GuestStatus;
use firebuild_mmds::vsock::{HOST_CID, encode_line};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};
use tokio::io::AsyncWriteExt as _;
use tokio::io::unix::AsyncFd;
use tokio::net::UnixStream;
use tokio::time::Instant;

/// The deadline of one [`StatusSender::send`], connecting included.
pub const SEND_TIMEOUT: Duration = Duration::from_millis(100);

/// Errors sending a status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The status is too large or not valid for the host.
    #[error("cannot frame the status")]
    Encode(#[source] firebuild_mmds::vsock::Error),
    /// No connection to the host.
    #[error("cannot connect to {target}")]
    Connect {
        /// Where.
        target: Target,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The connection broke while writing.
    #[error("writing the status to {target}")]
    Write {
        /// Where.
        target: Target,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The deadline passed.
    #[error("sending the status to {target} took more than {timeout:?}")]
    TimedOut {
        /// Where.
        target: Target,
        /// The deadline.
        timeout: Duration,
    },
}

/// Where statuses go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A vsock address: the host is CID 2 ([`Target::host`]).
    Vsock {
        /// Context id.
        cid: u32,
        /// Port.
        port: u32,
    },
    /// A Unix socket (a sandbox without a VM, tests): the host end directly.
    Unix(PathBuf),
}

impl Target {
    /// The host (CID 2) on `port`.
    pub fn host(port: u32) -> Self {
        Target::Vsock {
            cid: HOST_CID,
            port,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Vsock { cid, port } => write!(f, "vsock {cid}:{port}"),
            Target::Unix(p) => write!(f, "unix {}", p.display()),
        }
    }
}

/// Sends statuses to one [`Target`] over a kept connection.
#[derive(Debug)]
pub struct StatusSender {
    target: Target,
    timeout: Duration,
    conn: Option<Conn>,
}

impl StatusSender {
    /// A sender to `target`; nothing is connected until the first [`StatusSender::send`].
    pub fn new(target: Target) -> Self {
        StatusSender {
            target,
            timeout: SEND_TIMEOUT,
            conn: None,
        }
    }

    /// Changes the deadline of each send ([`SEND_TIMEOUT`] by default).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Where statuses go.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Sends `status` as one line. A kept connection the host has closed is replaced; a write
    /// that fails on a kept connection is tried once more on a new one, within the deadline.
    pub async fn send(&mut self, status: &GuestStatus) -> Result<(), Error> {
        let line = encode_line(status).map_err(Error::Encode)?;
        let deadline = Instant::now() + self.timeout;
        if self.conn.as_ref().is_some_and(|c| peer_closed(c.fd())) {
            self.conn = None;
        }
        let attempts = if self.conn.is_some() { 2 } else { 1 };
        let mut result = Ok(());
        for _ in 0..attempts {
            result = match tokio::time::timeout_at(deadline, self.write_line(&line)).await {
                Ok(r) => r,
                Err(_) => Err(Error::TimedOut {
                    target: self.target.clone(),
                    timeout: self.timeout,
                }),
            };
            match &result {
                Ok(()) => return Ok(()),
                Err(Error::TimedOut { .. }) => break,
                Err(_) => {}
            }
            self.conn = None;
        }
        self.conn = None;
        result
    }

    async fn write_line(&mut self, line: &[u8]) -> Result<(), Error> {
        let conn = match &mut self.conn {
            Some(c) => c,
            None => {
                let c = Conn::connect(&self.target)
                    .await
                    .map_err(|source| Error::Connect {
                        target: self.target.clone(),
                        source,
                    })?;
                self.conn.insert(c)
            }
        };
        conn.write_all(line).await.map_err(|source| Error::Write {
            target: self.target.clone(),
            source,
        })
    }
}

/// Whether the host has closed a connection (or it broke): a non-blocking peek reads 0 bytes
/// or fails. The host never sends anything, so "would block" means open.
fn peer_closed(fd: BorrowedFd<'_>) -> bool {
    let mut byte = [0u8; 1];
    match rustix::net::recv(fd, &mut byte, RecvFlags::PEEK | RecvFlags::DONTWAIT) {
        Ok((_, 0)) => true,
        Ok(_) => false,
        Err(e) => e != rustix::io::Errno::AGAIN,
    }
}

#[derive(Debug)]
enum Conn {
    Vsock(AsyncFd<OwnedFd>),
    Unix(UnixStream),
}

impl Conn {
    async fn connect(target: &Target) -> io::Result<Conn> {
        match target {
            Target::Vsock { cid, port } => vsock_connect(*cid, *port).await.map(Conn::Vsock),
            Target::Unix(path) => UnixStream::connect(path).await.map(Conn::Unix),
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Conn::Vsock(fd) => fd.get_ref().as_fd(),
            Conn::Unix(s) => s.as_fd(),
        }
    }

    async fn write_all(&mut self, mut buf: &[u8]) -> io::Result<()> {
        let fd = match self {
            Conn::Unix(s) => return s.write_all(buf).await,
            Conn::Vsock(fd) => fd,
        };
        while !buf.is_empty() {
            let mut ready = fd.writable().await?;
            // NOSIGNAL: a closed peer is an error here, not a SIGPIPE.
            match ready.try_io(|fd| {
                rustix::net::send(fd.get_ref(), buf, SendFlags::NOSIGNAL).map_err(io::Error::from)
            }) {
                Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(Ok(n)) => buf = &buf[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
        Ok(())
    }
}

/// A non-blocking `AF_VSOCK` stream connected to `cid:port`.
async fn vsock_connect(cid: u32, port: u32) -> io::Result<AsyncFd<OwnedFd>> {
    let fd = rustix::net::socket_with(
        AddressFamily::VSOCK,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?;
    match raw_connect(&fd, cid, port) {
        Ok(()) => return register(fd),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let fd = register(fd)?;
    // The connection is made (or refused) when the socket turns writable.
    let _ready = fd.writable().await?;
    rustix::net::sockopt::socket_error(fd.get_ref())??;
    Ok(fd)
}

/// Registers a non-blocking socket with tokio's reactor.
#[allow(unsafe_code)]
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` is an open descriptor that only it closes, and it always returns the
    // same one; the `AsyncFd` owns it, so it stays open and unchanged while registered.
    Ok(unsafe { AsyncFd::register(fd)? })
}

/// `connect(2)` with a `sockaddr_vm`, which rustix has no type for.
#[allow(unsafe_code)]
fn raw_connect(fd: &OwnedFd, cid: u32, port: u32) -> io::Result<()> {
    let addr = libc::sockaddr_vm {
        svm_family: libc::AF_VSOCK as libc::sa_family_t,
        svm_reserved1: 0,
        svm_port: port,
        svm_cid: cid,
        svm_zero: [0; 4],
    };
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: `fd` is an open socket borrowed for the call; `addr` is a fully initialised
    // `sockaddr_vm` that lives across the call, and `len` is its exact size, so the kernel reads
    // only initialised memory it owns no reference to afterwards.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&raw const addr).cast::<libc::sockaddr>(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use firebuild_mmds::schema::GuestPhase;
    use firebuild_mmds::vsock::StatusListener;

    async fn until(mut f: impl FnMut() -> bool) {
        for _ in 0..500 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out");
    }

    #[tokio::test]
    async fn the_host_listener_reads_what_the_sender_frames() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock_10240");
        let host = StatusListener::builder(&path).start().await.unwrap();
        let mut sender =
            StatusSender::new(Target::Unix(path.clone())).with_timeout(Duration::from_secs(5));
        let mut sent = Vec::new();
        for phase in [
            GuestPhase::Booting,
            GuestPhase::Configured,
            GuestPhase::Failed,
        ] {
            let mut s = GuestStatus::new(phase);
            s.consumed.push("/users/0/password".into());
            s.message = Some("quote \" backslash \\ and ünïcode".into());
            sender.send(&s).await.unwrap();
            sent.push(s);
        }
        until(|| host.statuses().len() == 3).await;
        assert_eq!(host.statuses(), sent);
        assert_eq!(host.rejected(), 0);

        // The host restarts: the kept connection is found closed and replaced.
        host.shutdown().await;
        let host = StatusListener::builder(&path).start().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let s = GuestStatus::new(GuestPhase::Exited);
        sender.send(&s).await.unwrap();
        until(|| host.latest().is_some()).await;
        assert_eq!(host.latest(), Some(s));
    }

    #[tokio::test]
    async fn an_oversize_status_is_refused_before_sending() {
        let mut s = GuestStatus::new(GuestPhase::Failed);
        s.message = Some("x".repeat(5000));
        let mut sender = StatusSender::new(Target::Unix("/nonexistent".into()));
        assert!(matches!(sender.send(&s).await, Err(Error::Encode(_))));
    }

    #[tokio::test]
    async fn no_listener_is_an_error_not_a_wait() {
        let mut sender = StatusSender::new(Target::Unix("/nonexistent/v.sock_1".into()));
        let s = GuestStatus::new(GuestPhase::Running);
        assert!(matches!(sender.send(&s).await, Err(Error::Connect { .. })));
        // On this host there is no vsock peer at CID 2 (or no vsock at all): refused, or
        // cut at the deadline, never waited on.
        let mut sender = StatusSender::new(Target::host(0x7fff_fff0));
        let r = tokio::time::timeout(Duration::from_secs(5), sender.send(&s)).await;
        assert!(matches!(r, Ok(Err(_))), "{r:?}");
    }
}
