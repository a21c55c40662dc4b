//! The guest status over vsock, for VMMs whose metadata service the guest cannot write
//! (Firecracker): the host side, and the framing both sides share.
//!
//! The metadata names the port ([`crate::schema::StatusChannel`]); vminit then sends each
//! [`GuestStatus`] as **one line**: the compact JSON of the status (which never holds a raw
//! newline) and `\n`, at most [`MAX_GUEST_STATUS_BYTES`] of JSON ([`encode_line`],
//! [`decode_line`]). Values the guest consumed are listed in `consumed`; the host deletes them
//! (only those [`is_consumable`] allows), because the guest cannot.
//!
//! Firecracker's vsock is "hybrid": its config has `vsock: {guest_cid, uds_path}`, and a guest
//! connection to CID 2 (the host) port P becomes a connection to the host Unix socket
//! `{uds_path}_{P}` ([`socket_path`]), which a host program must be listening on.
//! [`StatusListener`] is that program's side: it reads the lines (bounded, schema-checked as
//! `PUT /guest/status` is on [`crate::server`]), deletes consumed values through a
//! [`HostStore`] (Firecracker's API socket, [`crate::firecracker::FirecrackerApi`], or this
//! crate's server), and offers the statuses as [`crate::server::ServerHandle`] offers them: a
//! watch of a document with the status at [`GUEST_STATUS_POINTER`], and
//! [`StatusHandle::consumed`].
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use firebuild_mmds::schema::{GuestPhase, GuestStatus, GUEST_STATUS_POINTER};
//! use firebuild_mmds::vsock::{StatusListener, encode_line, socket_path};
//! use tokio::io::AsyncWriteExt as _;
//!
//! let dir = tempfile::tempdir()?;
//! // Firecracker's config said `"uds_path": "DIR/v.sock"`; the metadata `"vsock-port": 10240`.
//! let path = socket_path(&dir.path().join("v.sock"), 10240);
//! let listener = StatusListener::builder(&path).start().await?;
//! let mut changes = listener.subscribe();
//!
//! // What the guest's connection delivers:
//! let mut guest = tokio::net::UnixStream::connect(&path).await?;
//! guest.write_all(&encode_line(&GuestStatus::new(GuestPhase::Running))?).await?;
//!
//! changes.changed().await?;
//! let doc = changes.borrow().data.clone();
//! assert_eq!(doc.pointer(GUEST_STATUS_POINTER).unwrap()["phase"], "running");
//! listener.shutdown().await;
//! # Ok(()) }
//! ```

use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::schema::{GUEST_STATUS_POINTER, GuestStatus, MAX_GUEST_STATUS_BYTES, is_consumable};
use crate::server::{Consumed, ServerHandle};
use crate::store::{Snapshot, StoreError, etag_of};

/// The host's vsock context id, where the guest sends its status.
pub const HOST_CID: u32 = 2;

/// Longest status line: the JSON and its newline.
pub const MAX_LINE_BYTES: usize = MAX_GUEST_STATUS_BYTES + 1;

/// Connections served at once; one more is closed at once (a guest needs one).
pub const MAX_CONNECTIONS: usize = 4;

/// Once a line has started, the rest must arrive within this. A connection may stay idle
/// between lines for as long as the guest likes.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(10);

/// Statuses kept for [`StatusHandle::statuses`].
const HISTORY: usize = 256;

/// Who deleted a consumed value, in [`Consumed::by`].
const CONSUMED_BY: &str = "host (the guest's vsock status)";

/// Errors of the vsock status channel.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The listening socket could not be made.
    #[error("cannot listen on {}", path.display())]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line longer than [`MAX_LINE_BYTES`] (the connection is closed: no resync).
    #[error("status line is {len} bytes or more, more than {limit}")]
    TooLong {
        /// Bytes read before giving up.
        len: usize,
        /// [`MAX_LINE_BYTES`].
        limit: usize,
    },
    /// The connection ended, or the line timed out, before its newline.
    #[error("status line of {len} bytes ends without a newline")]
    Unterminated {
        /// Bytes read.
        len: usize,
    },
    /// A complete line that is not a valid [`GuestStatus`].
    #[error("invalid status line: {reason}")]
    Invalid {
        /// What the schema check said.
        reason: String,
    },
}

/// `{uds_path}_{port}`: where a guest connection to the host's `port` arrives on Firecracker.
pub fn socket_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut s = uds_path.as_os_str().to_owned();
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// One status as one line: compact JSON and `\n`. Refuses a status whose JSON would be longer
/// than [`MAX_GUEST_STATUS_BYTES`] (or that the host's checks would refuse).
pub fn encode_line(status: &GuestStatus) -> Result<Vec<u8>, Error> {
    let mut line = serde_json::to_vec(status).map_err(|e| Error::Invalid {
        reason: e.to_string(),
    })?;
    if line.len() > MAX_GUEST_STATUS_BYTES {
        return Err(Error::TooLong {
            len: line.len() + 1,
            limit: MAX_LINE_BYTES,
        });
    }
    GuestStatus::from_guest(&line).map_err(|reason| Error::Invalid { reason })?;
    line.push(b'\n');
    Ok(line)
}

/// Parses one line as [`encode_line`] writes it: at most [`MAX_LINE_BYTES`], ending in `\n`,
/// checked as a guest's `PUT /guest/status` is ([`GuestStatus::from_guest`]). A `\r` before the
/// newline is allowed.
pub fn decode_line(line: &[u8]) -> Result<GuestStatus, Error> {
    let Some(json) = line.strip_suffix(b"\n") else {
        return Err(if line.len() >= MAX_LINE_BYTES {
            Error::TooLong {
                len: line.len(),
                limit: MAX_LINE_BYTES,
            }
        } else {
            Error::Unterminated { len: line.len() }
        });
    };
    if line.len() > MAX_LINE_BYTES {
        return Err(Error::TooLong {
            len: line.len(),
            limit: MAX_LINE_BYTES,
        });
    }
    let json = json.strip_suffix(b"\r").unwrap_or(json);
    GuestStatus::from_guest(json).map_err(|reason| Error::Invalid { reason })
}

/// A boxed future returned by [`HostStore`] methods.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, crate::Error>> + Send + 'a>>;

/// The metadata store the host controls, where consumed values are deleted.
///
/// Implemented for Firecracker's API socket ([`crate::firecracker::FirecrackerApi`], whose
/// [`delete_pointer`](crate::firecracker::FirecrackerApi::delete_pointer) reads the store and
/// patches the value away) and for this crate's server ([`ServerHandle`], in an `Arc`, which also
/// records each status at [`GUEST_STATUS_POINTER`] so its watchers see it).
pub trait HostStore: Send + Sync {
    /// Deletes the value at `pointer`; `Ok(false)` if nothing was there.
    fn delete<'a>(&'a self, pointer: &'a str) -> StoreFuture<'a, bool>;

    /// Records a status the guest sent. The default records nothing: Firecracker's MMDS is the
    /// guest's to read, and the listener keeps the status itself.
    fn put_status<'a>(&'a self, status: &'a GuestStatus) -> StoreFuture<'a, ()> {
        let _ = status;
        Box::pin(async { Ok(()) })
    }
}

impl HostStore for crate::firecracker::FirecrackerApi {
    fn delete<'a>(&'a self, pointer: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            // A file is consumable only where the document marks it (`consume`).
            if pointer.starts_with("/files/")
                && !crate::schema::is_consumable_in(&self.get().await?, pointer)
            {
                return Ok(false);
            }
            Ok(self.delete_pointer(pointer).await?)
        })
    }
}

impl HostStore for ServerHandle {
    fn delete<'a>(&'a self, pointer: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            if !crate::schema::is_consumable_in(&self.get().data, pointer) {
                return Ok(false);
            }
            match ServerHandle::delete(self, pointer) {
                Ok(_) => Ok(true),
                Err(StoreError::NotFound { .. }) => Ok(false),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn put_status<'a>(&'a self, status: &'a GuestStatus) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let value = serde_json::to_value(status).unwrap_or_default();
            self.put_at(GUEST_STATUS_POINTER, value)?;
            Ok(())
        })
    }
}

impl<T: HostStore + ?Sized> HostStore for Arc<T> {
    fn delete<'a>(&'a self, pointer: &'a str) -> StoreFuture<'a, bool> {
        (**self).delete(pointer)
    }

    fn put_status<'a>(&'a self, status: &'a GuestStatus) -> StoreFuture<'a, ()> {
        (**self).put_status(status)
    }
}

/// Builds a [`StatusListener`].
pub struct StatusListenerBuilder {
    path: PathBuf,
    store: Option<Arc<dyn HostStore>>,
}

impl std::fmt::Debug for StatusListenerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusListenerBuilder")
            .field("path", &self.path)
            .field("store", &self.store.is_some())
            .finish()
    }
}

/// The host's end of the guest's vsock status channel (see the module docs).
#[derive(Debug)]
pub struct StatusListener;

impl StatusListener {
    /// A listener on the Unix socket `path` ([`socket_path`] on Firecracker).
    pub fn builder(path: impl Into<PathBuf>) -> StatusListenerBuilder {
        StatusListenerBuilder {
            path: path.into(),
            store: None,
        }
    }
}

impl StatusListenerBuilder {
    /// Where consumed values are deleted. Without one they are only logged (and not listed
    /// in [`StatusHandle::consumed`]).
    pub fn store(mut self, store: impl HostStore + 'static) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Binds the socket (a stale socket at the path is replaced; mode 0600) and serves it
    /// until the handle is shut down or dropped.
    pub async fn start(self) -> Result<StatusHandle, Error> {
        let listener = crate::server::bind_unix(&self.path).map_err(|source| Error::Bind {
            path: self.path.clone(),
            source,
        })?;
        let (tx, _) = watch::channel(document(None));
        let shared = Arc::new(Shared {
            store: self.store,
            tx,
            state: Mutex::new(State::default()),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        tracing::debug!(path = %self.path.display(), "listening for the guest's vsock status");
        Ok(StatusHandle {
            path: self.path,
            shared,
            task: Some(task),
        })
    }
}

/// A running [`StatusListener`]. Dropping it stops it and removes the socket.
#[derive(Debug)]
pub struct StatusHandle {
    path: PathBuf,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl StatusHandle {
    /// The socket listened on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Watches the statuses as [`ServerHandle::subscribe`] does: each snapshot is a document
    /// with the latest status at [`GUEST_STATUS_POINTER`] (`{}` before the first).
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.shared.tx.subscribe()
    }

    /// The latest status received.
    pub fn latest(&self) -> Option<GuestStatus> {
        self.shared.lock().history.back().cloned()
    }

    /// The statuses received, oldest first (the last 256).
    pub fn statuses(&self) -> Vec<GuestStatus> {
        self.shared.lock().history.iter().cloned().collect()
    }

    /// What the guest consumed and the host deleted, oldest first (as
    /// [`ServerHandle::consumed`]).
    pub fn consumed(&self) -> Vec<Consumed> {
        self.shared.lock().consumed.clone()
    }

    /// Lines refused (too long, not the schema, unfinished).
    pub fn rejected(&self) -> u64 {
        self.shared.lock().rejected
    }

    /// Stops serving, closes the connections and removes the socket.
    pub async fn shutdown(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for StatusHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

struct Shared {
    store: Option<Arc<dyn HostStore>>,
    tx: watch::Sender<Snapshot>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct State {
    history: VecDeque<GuestStatus>,
    consumed: Vec<Consumed>,
    /// Pointers deleted, or being deleted, by the host.
    claimed: BTreeSet<String>,
    rejected: u64,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the state is still consistent.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn reject(&self, e: &Error) {
        tracing::warn!("vsock status: refused a line: {e}");
        self.lock().rejected += 1;
    }

    /// Deletes what the status says was consumed (once each), records the status in the store,
    /// then publishes it: a watcher that sees `consumed` sees it deleted.
    async fn apply(&self, status: GuestStatus) {
        for pointer in &status.consumed {
            self.delete_consumed(pointer).await;
        }
        if let Some(store) = &self.store
            && let Err(e) = store.put_status(&status).await
        {
            tracing::warn!("vsock status: recording the status in the metadata: {e}");
        }
        tracing::debug!(phase = ?status.phase, "vsock status received");
        let doc = document(Some(&status));
        {
            let mut state = self.lock();
            if state.history.len() == HISTORY {
                state.history.pop_front();
            }
            state.history.push_back(status);
        }
        self.tx.send_replace(doc);
    }

    async fn delete_consumed(&self, pointer: &str) {
        if !is_consumable(pointer) {
            tracing::warn!(
                pointer = %pointer.escape_debug(),
                "vsock status: the guest listed a host-owned value as consumed; not deleted"
            );
            return;
        }
        if !self.lock().claimed.insert(pointer.to_owned()) {
            return;
        }
        let Some(store) = &self.store else {
            tracing::warn!(
                pointer,
                "the guest consumed a value; no store to delete it from"
            );
            return;
        };
        match store.delete(pointer).await {
            Ok(true) => {
                tracing::info!(pointer, "the guest consumed a value; deleted by the host");
                let at_unix = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                self.lock().consumed.push(Consumed {
                    pointer: pointer.to_owned(),
                    at_unix,
                    by: CONSUMED_BY,
                });
            }
            Ok(false) => tracing::debug!(pointer, "consumed value already gone"),
            Err(e) => {
                tracing::warn!(
                    pointer,
                    "deleting a consumed value: {e}; retried with the next status"
                );
                self.lock().claimed.remove(pointer);
            }
        }
    }
}

/// The document a [`StatusHandle::subscribe`] snapshot holds.
fn document(status: Option<&GuestStatus>) -> Snapshot {
    let data = match status.and_then(|s| serde_json::to_value(s).ok()) {
        Some(s) => json!({"guest": {"status": s}}),
        None => Value::Object(serde_json::Map::new()),
    };
    Snapshot {
        etag: etag_of(Some(&data)),
        data: Arc::new(data),
    }
}

async fn accept_loop(listener: UnixListener, shared: Arc<Shared>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Dropped with this task: aborting the loop closes every connection.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let shared = shared.clone();
                        connections.spawn(async move {
                            serve(stream, &shared).await;
                            drop(permit);
                        });
                    }
                    Err(_) => tracing::warn!(
                        "vsock status: more than {MAX_CONNECTIONS} connections; one closed"
                    ),
                },
                Err(e) => {
                    tracing::warn!("vsock status: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Reads lines until the guest closes; a bad line is skipped, a line too long or unfinished
/// closes the connection (the guest reconnects for its next status).
async fn serve(stream: UnixStream, shared: &Shared) {
    let mut reader = BufReader::with_capacity(MAX_LINE_BYTES, stream);
    let mut line = Vec::with_capacity(512);
    loop {
        line.clear();
        // Idle between lines for as long as the guest likes.
        match reader.fill_buf().await {
            Ok([]) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!("vsock status connection: {e}");
                return;
            }
        }
        let mut bounded = (&mut reader).take(MAX_LINE_BYTES as u64);
        let read = bounded.read_until(b'\n', &mut line);
        match tokio::time::timeout(LINE_TIMEOUT, read).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!("vsock status connection: {e}");
                return;
            }
            Err(_) => {
                shared.reject(&Error::Unterminated { len: line.len() });
                return;
            }
        }
        match decode_line(&line) {
            Ok(status) => shared.apply(status).await,
            Err(e @ Error::Invalid { .. }) => shared.reject(&e),
            Err(e) => {
                shared.reject(&e);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::schema::GuestPhase;

    #[test]
    fn lines_round_trip_and_are_bounded() {
        let mut s = GuestStatus::new(GuestPhase::Configured);
        s.consumed.push("/users/0/password".into());
        s.message = Some("multi\u{2028}line but no control".into());
        let line = encode_line(&s).unwrap();
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(decode_line(&line).unwrap(), s);

        s.message = Some("x".repeat(MAX_GUEST_STATUS_BYTES));
        assert!(matches!(encode_line(&s), Err(Error::TooLong { .. })));
        s.message = Some("a\nb".into());
        assert!(matches!(encode_line(&s), Err(Error::Invalid { .. })));

        assert!(matches!(
            decode_line(br#"{"phase":"running"}"#),
            Err(Error::Unterminated { .. })
        ));
        assert!(matches!(
            decode_line(&[b'x'; MAX_LINE_BYTES]),
            Err(Error::TooLong { .. })
        ));
        assert!(matches!(
            decode_line(b"{nope\n"),
            Err(Error::Invalid { .. })
        ));
        assert_eq!(
            decode_line(b"{\"phase\":\"running\"}\r\n").unwrap().phase,
            GuestPhase::Running
        );
    }

    #[test]
    fn firecracker_socket_path() {
        assert_eq!(
            socket_path(Path::new("/run/fc/v.sock"), 10240),
            Path::new("/run/fc/v.sock_10240")
        );
    }
}
