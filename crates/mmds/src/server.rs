//! An embedded MMDS-compatible server with Firecracker's guest-side rules.
//!
//! The guest side listens on TCP (the VM driver forwards `169.254.169.254:80` to it). The host
//! side listens on an optional Unix socket the guest cannot reach and mirrors Firecracker's API,
//! plus JSON-pointer CRUD, `If-Match` compare-and-swap and a guest on/off switch. Everything the
//! socket offers is also a method of [`ServerHandle`].
//!
//! # Guest side (TCP)
//!
//! | request | answer |
//! |---|---|
//! | `PUT /latest/api/token` with `X-metadata-token-ttl-seconds: 1..=21600` | 200, the token |
//! | same, TTL missing or out of range | 400 |
//! | any `PUT` carrying `X-Forwarded-For` | 400 |
//! | `PUT` anywhere else | 404 |
//! | `GET <json-pointer>` (V2: with `X-metadata-token`) | 200: JSON if `Accept: application/json`, else IMDS text |
//! | no or bad token (V2) | 401 |
//! | nothing at the path | 404 |
//! | IMDS text of a number, boolean, array or null | 501 |
//! | other methods | 405 with `Allow: GET, PUT` |
//! | guest side disabled | 503 |
//! | `GET ...?wait_for_change=true&last_etag=E&timeout_sec=N` | 200 at once if the value's ETag is not `E`, otherwise when it changes; 304 after `N` s |
//! | `last_etag` unbalanced, over 128 bytes or not an entity tag | 400 |
//!
//! `E` may be given as the `ETag` header gives it (`"abc"`, raw or percent-encoded), weak
//! (`W/"abc"`) or bare (`abc`). Every 4xx carries a short `text/plain` reason; client input
//! quoted in it is cut to 256 bytes with control characters dropped.
//!
//! Every guest response carries an `ETag`: for a `GET`, the strong hash of the canonical JSON
//! of the value at the path (or of "absent" for a 404); otherwise the whole document's.
//! `X-aws-ec2-metadata-token` and `X-aws-ec2-metadata-token-ttl-seconds` are accepted as
//! aliases, as Firecracker does.
//!
//! # Host side (Unix socket)
//!
//! | request | answer |
//! |---|---|
//! | `GET /mmds` | 200, the document |
//! | `PUT /mmds` (replace) / `PATCH /mmds` (RFC 7396) | 204; 400 bad JSON; 413 past the limit |
//! | `PUT /mmds/config {"version": "V1"\|"V2", ...}` | 204 (other keys accepted, ignored) |
//! | `GET`/`PUT`/`PATCH`/`DELETE /mmds/<json-pointer>` | 200/204; 404 if absent |
//! | any write with `If-Match: <etag>` (`*`: exists) | 412 if the target's ETag differs |
//! | `GET`/`PUT /guest-access {"enabled": bool}` | the guest-side switch |
//!
//! Errors have Firecracker's body `{"fault_message": "..."}` (bounded like the guest's reasons). Writes answer with the new
//! `ETag` of the addressed value. `PUT /mmds/config` is always the configuration endpoint; to
//! store a data key named `config`, use `PATCH /mmds`.
//!
//! # Fairness and bounds
//!
//! One request per connection (keep-alive off), its head read and checked before hyper sees
//! it, so a malformed or oversized head gets a reason too (`head.rs`). One task per
//! connection, at most [`ServerBuilder::max_connections`] at once per listener
//! (further clients wait in the accept queue), 16 KiB of headers, request bodies bounded
//! (guest: 1 KiB; host: the data limit plus 1 KiB), header and body read timeouts, long polls
//! capped at [`MAX_LONG_POLL_SECS`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, ALLOW, CONTENT_TYPE, ETAG, IF_MATCH};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::MmdsVersion;
use crate::head::{self, Replay};
use crate::http::percent_decode;
use crate::imds;
use crate::store::{DEFAULT_DATA_LIMIT, Snapshot, Store, StoreError, etag_of};
use crate::token::{MAX_TTL_SECS, MIN_TTL_SECS, TokenAuthority};

/// The token endpoint.
pub const TOKEN_PATH: &str = "/latest/api/token";
/// Header carrying the requested token TTL.
pub const TTL_HEADER: &str = "x-metadata-token-ttl-seconds";
/// Header carrying the token.
pub const TOKEN_HEADER: &str = "x-metadata-token";
const EC2_TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const EC2_TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
/// Longest long poll a guest may ask for.
pub const MAX_LONG_POLL_SECS: u64 = 3600;
/// Default for [`ServerBuilder::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

const GUEST_BODY_LIMIT: usize = 1024;
const HEADER_BUF: usize = 16 * 1024;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNECTION_LIFETIME: Duration = Duration::from_secs(MAX_LONG_POLL_SECS + 600);

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The guest listener could not bind.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The host API socket could not be created.
    #[error("cannot listen on unix socket {}", path.display())]
    BindUnix {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The initial data is not an object or is over the limit.
    #[error("initial data refused")]
    InitialData(#[source] StoreError),
    /// The system random generator failed.
    #[error("cannot generate the token key")]
    Random,
}

/// Configures and starts a [`ServerHandle`].
#[derive(Debug)]
pub struct ServerBuilder {
    listen: SocketAddr,
    api_socket: Option<PathBuf>,
    initial: Value,
    limit: usize,
    max_connections: usize,
    version: MmdsVersion,
    guest_enabled: bool,
    relay_key: bool,
    guest_writes: bool,
}

/// Namespace for [`Server::builder`].
#[derive(Debug)]
pub struct Server;

impl Server {
    /// A builder listening on `127.0.0.1:0`, V2, empty data, Firecracker's default limit.
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_socket: None,
            initial: Value::Object(serde_json::Map::new()),
            limit: DEFAULT_DATA_LIMIT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            version: MmdsVersion::V2,
            guest_enabled: true,
            relay_key: false,
            guest_writes: false,
        }
    }
}

impl ServerBuilder {
    /// Guest-side TCP address (port 0 picks one; see [`ServerHandle::local_addr`]).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Host API Unix socket path (a stale socket there is replaced; created mode 0600).
    pub fn api_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.api_socket = Some(path.into());
        self
    }

    /// Initial document (a JSON object).
    pub fn initial_data(mut self, data: Value) -> Self {
        self.initial = data;
        self
    }

    /// Data store limit in bytes of serialised JSON (default 51200, as Firecracker).
    pub fn data_limit(mut self, bytes: usize) -> Self {
        self.limit = bytes;
        self
    }

    /// Most connections served at once, per listener.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// V2 (tokens required, the default) or V1 (tokens optional).
    pub fn version(mut self, v: MmdsVersion) -> Self {
        self.version = v;
        self
    }

    /// Start with the guest side disabled.
    pub fn guest_enabled(mut self, enabled: bool) -> Self {
        self.guest_enabled = enabled;
        self
    }

    /// Let the guest write back, beyond Firecracker's read-only MMDS: with its V2 token it may
    /// `DELETE` a consumable value once applied (`schema::is_consumable`: a user's password
    /// hash), recorded in [`ServerHandle::consumed`], and `PUT` its status document at
    /// `schema::GUEST_STATUS_POINTER` (bounded, schema-checked). Every other guest write stays
    /// `405`. Off by default.
    pub fn guest_writes(mut self, allowed: bool) -> Self {
        self.guest_writes = allowed;
        self
    }

    /// Require every guest-side connection to open with a random per-server key
    /// ([`ServerHandle::relay_key`]) before its request. The VM's relay (the VMM driver's port
    /// forward) sends it; another local process that finds the loopback port does not know it,
    /// and gets a 403 without any metadata.
    pub fn require_relay_key(mut self, required: bool) -> Self {
        self.relay_key = required;
        self
    }

    /// Binds the listeners and starts serving on the current tokio runtime.
    pub async fn start(self) -> Result<ServerHandle, Error> {
        let store = Store::new(self.initial, self.limit).map_err(Error::InitialData)?;
        let tokens = TokenAuthority::generate().map_err(|_| Error::Random)?;
        let relay_key = if self.relay_key {
            Some(relay_key().ok_or(Error::Random)?)
        } else {
            None
        };
        let shared = Arc::new(Shared {
            store,
            tokens,
            relay_key,
            guest_writes: self.guest_writes,
            consumed: std::sync::Mutex::new(Vec::new()),
            guest_enabled: AtomicBool::new(self.guest_enabled),
            version: AtomicU8::new(self.version as u8),
        });
        let tcp = TcpListener::bind(self.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: self.listen,
                source,
            })?;
        let local_addr = tcp.local_addr().map_err(|source| Error::Bind {
            addr: self.listen,
            source,
        })?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(accept_loop(
            Listener::Tcp(tcp),
            shared.clone(),
            Side::Guest,
            self.max_connections,
            stop_rx.clone(),
        ));
        if let Some(path) = &self.api_socket {
            let unix = bind_unix(path).map_err(|source| Error::BindUnix {
                path: path.clone(),
                source,
            })?;
            tasks.spawn(accept_loop(
                Listener::Unix(unix),
                shared.clone(),
                Side::Host,
                self.max_connections,
                stop_rx,
            ));
        }
        tracing::info!(%local_addr, api_socket = ?self.api_socket, "mmds server listening");
        Ok(ServerHandle {
            shared,
            local_addr,
            api_socket: self.api_socket,
            stop: stop_tx,
            tasks,
        })
    }
}

/// 32 random bytes in hex and a newline: the line a guest connection opens with.
fn relay_key() -> Option<Vec<u8>> {
    let mut raw = [0u8; 32];
    aws_lc_rs::rand::fill(&mut raw).ok()?;
    let mut line: Vec<u8> = raw
        .iter()
        .flat_map(|b| format!("{b:02x}").into_bytes())
        .collect();
    line.push(b'\n');
    Some(line)
}

/// Reads the relay key line from a guest connection and checks it in constant time.
async fn relay_key_matches(stream: &mut Stream, key: &[u8]) -> bool {
    let mut got = vec![0u8; key.len()];
    let read = tokio::time::timeout(HEADER_READ_TIMEOUT, stream.read_exact(&mut got)).await;
    matches!(read, Ok(Ok(_)))
        && aws_lc_rs::constant_time::verify_slices_are_equal(&got, key).is_ok()
}

/// Binds a Unix socket at `path` (a stale socket there is replaced), mode 0600.
pub(crate) fn bind_unix(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && meta.file_type().is_socket()
    {
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

#[derive(Debug)]
struct Shared {
    store: Store,
    tokens: TokenAuthority,
    relay_key: Option<Vec<u8>>,
    guest_writes: bool,
    consumed: std::sync::Mutex<Vec<Consumed>>,
    guest_enabled: AtomicBool,
    version: AtomicU8,
}

impl Shared {
    fn version(&self) -> MmdsVersion {
        if self.version.load(Ordering::Relaxed) == MmdsVersion::V1 as u8 {
            MmdsVersion::V1
        } else {
            MmdsVersion::V2
        }
    }
}

/// A value the guest consumed and deleted ([`ServerBuilder::guest_writes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumed {
    /// The JSON pointer deleted.
    pub pointer: String,
    /// When, as seconds since the Unix epoch.
    pub at_unix: u64,
    /// Who: the guest side, identified by a valid V2 token.
    pub by: &'static str,
}

/// A running server. Dropping it stops the listeners too; [`ServerHandle::shutdown`] also
/// waits for them.
#[derive(Debug)]
pub struct ServerHandle {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    api_socket: Option<PathBuf>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl ServerHandle {
    /// The guest-side address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The line every guest connection must open with, when
    /// [`ServerBuilder::require_relay_key`] asked for one (a secret: give it only to the relay).
    pub fn relay_key(&self) -> Option<&[u8]> {
        self.shared.relay_key.as_deref()
    }

    /// What the guest consumed and deleted so far, oldest first.
    pub fn consumed(&self) -> Vec<Consumed> {
        self.shared
            .consumed
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    /// The host API socket, if any.
    pub fn api_socket(&self) -> Option<&Path> {
        self.api_socket.as_deref()
    }

    /// The whole document and its ETag.
    pub fn get(&self) -> Snapshot {
        self.shared.store.snapshot()
    }

    /// The value at a JSON pointer (`""` is the root) and its ETag.
    pub fn get_at(&self, pointer: &str) -> Option<(Value, String)> {
        let snap = self.shared.store.snapshot();
        let v = snap.data.pointer(pointer)?;
        Some((v.clone(), etag_of(Some(v))))
    }

    /// Replaces the document (`PUT /mmds`). Returns the new ETag.
    pub fn put(&self, data: Value) -> Result<String, StoreError> {
        self.shared.store.replace(data, None).map(|s| s.etag)
    }

    /// RFC 7396 merge into the document (`PATCH /mmds`). Returns the new ETag.
    pub fn patch(&self, patch: &Value) -> Result<String, StoreError> {
        self.shared.store.patch(patch, None).map(|s| s.etag)
    }

    /// Sets the value at a JSON pointer, creating parent objects. Returns the document's ETag.
    pub fn put_at(&self, pointer: &str, value: Value) -> Result<String, StoreError> {
        self.shared
            .store
            .put_at(pointer, value, None)
            .map(|s| s.etag)
    }

    /// Removes the value at a JSON pointer (scrub: `delete("/bootstrap")`).
    pub fn delete(&self, pointer: &str) -> Result<String, StoreError> {
        self.shared.store.delete_at(pointer, None).map(|s| s.etag)
    }

    /// Compare-and-swap at a JSON pointer: writes `value` (or deletes on `None`) only if the
    /// pointer's current ETag is `if_match` (`*`: it exists).
    pub fn compare_and_swap(
        &self,
        pointer: &str,
        if_match: &str,
        value: Option<Value>,
    ) -> Result<String, StoreError> {
        let store = &self.shared.store;
        match value {
            Some(v) => store.put_at(pointer, v, Some(if_match)),
            None => store.delete_at(pointer, Some(if_match)),
        }
        .map(|s| s.etag)
    }

    /// Watches the document: the receiver sees every committed change.
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.shared.store.subscribe()
    }

    /// Turns the guest side on or off (off: every guest request gets 503).
    pub fn set_guest_enabled(&self, enabled: bool) {
        self.shared.guest_enabled.store(enabled, Ordering::Relaxed);
        tracing::info!(enabled, "mmds guest side switched");
    }

    /// Whether the guest side answers.
    pub fn guest_enabled(&self) -> bool {
        self.shared.guest_enabled.load(Ordering::Relaxed)
    }

    /// Switches between V1 and V2 (`PUT /mmds/config`).
    pub fn set_version(&self, v: MmdsVersion) {
        self.shared.version.store(v as u8, Ordering::Relaxed);
    }

    /// Stops accepting, closes open connections and waits for the listener tasks.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        if let Some(p) = &self.api_socket {
            let _ = std::fs::remove_file(p);
        }
    }
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

#[derive(Debug, Clone, Copy)]
enum Side {
    Guest,
    Host,
}

async fn accept_loop(
    listener: Listener,
    shared: Arc<Shared>,
    side: Side,
    max_connections: usize,
    mut stop: watch::Receiver<bool>,
) {
    let sem = Arc::new(Semaphore::new(max_connections));
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let permit = tokio::select! {
            p = sem.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stop.changed() => break,
        };
        let accepted = tokio::select! {
            a = accept(&listener) => a,
            _ = stop.changed() => break,
        };
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "mmds accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        conns.spawn(async move {
            serve_connection(stream, shared, side).await;
            drop(permit);
        });
    }
    conns.shutdown().await;
}

/// One request on one connection: the head is read and checked by [`head::read`] (refusals
/// are answered there, with a reason), then replayed to hyper. Keep-alive is off so that
/// every head passes that check.
async fn serve_connection(mut stream: Stream, shared: Arc<Shared>, side: Side) {
    if let (Side::Guest, Some(key)) = (side, &shared.relay_key)
        && !relay_key_matches(&mut stream, key).await
    {
        tracing::warn!("mmds: a guest-side connection without the relay key was refused");
        let why = "connection did not come through the VM's relay";
        let bytes = head::render(StatusCode::FORBIDDEN, why, false, None);
        let _ = tokio::time::timeout(BODY_READ_TIMEOUT, async {
            stream.write_all(&bytes).await?;
            stream.shutdown().await
        })
        .await;
        return;
    }
    let prefix = match head::read(&mut stream, HEADER_BUF, HEADER_READ_TIMEOUT).await {
        Ok(p) => p,
        Err(head::Refused::Closed) => return,
        Err(head::Refused::Answer(status, why)) => {
            let (json, etag) = match side {
                Side::Guest => (false, Some(shared.store.snapshot().etag)),
                Side::Host => (true, None),
            };
            let bytes = head::render(status, &why, json, etag.as_deref());
            let _ = tokio::time::timeout(BODY_READ_TIMEOUT, async {
                stream.write_all(&bytes).await?;
                stream.shutdown().await
            })
            .await;
            return;
        }
    };
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move {
            Ok::<_, Infallible>(match side {
                Side::Guest => guest(&shared, req).await,
                Side::Host => host(&shared, req).await,
            })
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(false)
        .header_read_timeout(HEADER_READ_TIMEOUT)
        // The head was bounded by `head::read`; its query may have grown by percent-encoding.
        .max_buf_size(HEADER_BUF * 4)
        .serve_connection(TokioIo::new(Replay::new(prefix, stream)), service);
    match tokio::time::timeout(MAX_CONNECTION_LIFETIME, conn).await {
        Ok(Err(e)) => tracing::debug!(error = %e, "mmds connection error"),
        Err(_) => tracing::debug!("mmds connection lifetime reached"),
        Ok(Ok(())) => {}
    }
}

/// An accepted connection of either listener.
enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

async fn accept(l: &Listener) -> std::io::Result<Stream> {
    match l {
        Listener::Tcp(t) => {
            let (s, _) = t.accept().await?;
            let _ = s.set_nodelay(true);
            Ok(Stream::Tcp(s))
        }
        Listener::Unix(u) => {
            let (s, _) = u.accept().await?;
            Ok(Stream::Unix(s))
        }
    }
}

type Resp = Response<Full<Bytes>>;

fn response(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn text(status: StatusCode, body: impl Into<String>) -> Resp {
    response(status, "text/plain", body.into())
}

fn with_etag(mut r: Resp, etag: &str) -> Resp {
    if let Ok(v) = HeaderValue::from_str(etag) {
        r.headers_mut().insert(ETAG, v);
    }
    r
}

fn header<'a>(h: &'a HeaderMap, names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|n| h.get(*n))
        .map(|v| v.to_str().unwrap_or("\u{fffd}"))
}

/// Firecracker's URI sanitising: repeated `/` collapse, a trailing `/` goes.
fn sanitize(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        out.push_str(seg);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// The JSON pointer for a sanitised path (`/` is the root, `""`).
fn pointer_of(path: &str) -> &str {
    if path == "/" { "" } else { path }
}

/// Why a request body was not read.
#[derive(Debug)]
enum BodyError {
    TooLarge(usize),
    Unreadable,
    TimedOut,
}

impl BodyError {
    fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::Unreadable => StatusCode::BAD_REQUEST,
            BodyError::TimedOut => StatusCode::REQUEST_TIMEOUT,
        }
    }

    fn reason(&self) -> String {
        match self {
            BodyError::TooLarge(limit) => format!("Request body too large (limit {limit} bytes)."),
            BodyError::Unreadable => "Cannot read the request body.".into(),
            BodyError::TimedOut => "Request body read timed out.".into(),
        }
    }
}

async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, BodyError> {
    match tokio::time::timeout(BODY_READ_TIMEOUT, Limited::new(body, limit).collect()).await {
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(BodyError::TooLarge(limit))
        }
        Ok(Err(_)) => Err(BodyError::Unreadable),
        Err(_) => Err(BodyError::TimedOut),
    }
}

/// Most bytes of client input (a path, a header value, a query key) quoted in a reason.
const ECHO_LIMIT: usize = 256;
/// Most bytes of any reason body.
const REASON_LIMIT: usize = 1024;

/// `s` as it may appear in a reason: control characters dropped, at most `limit` bytes (cut
/// on a character boundary, `...` marking the cut).
fn clamp(s: &str, limit: usize) -> String {
    let mut out = String::with_capacity(s.len().min(limit + 3));
    for c in s.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > limit {
            out.push_str("...");
            break;
        }
        out.push(c);
    }
    out
}

/// Client input quoted in a reason.
fn echo(s: &str) -> String {
    clamp(s, ECHO_LIMIT)
}

/// A guest-side refusal: plain text, bounded.
fn refuse(status: StatusCode, reason: impl AsRef<str>) -> Resp {
    text(status, clamp(reason.as_ref(), REASON_LIMIT))
}

async fn guest(shared: &Shared, req: Request<Incoming>) -> Resp {
    let whole_etag = shared.store.snapshot().etag;
    let r = guest_inner(shared, req).await;
    if r.headers().contains_key(ETAG) {
        r
    } else {
        with_etag(r, &whole_etag)
    }
}

async fn guest_inner(shared: &Shared, req: Request<Incoming>) -> Resp {
    if !shared.guest_enabled.load(Ordering::Relaxed) {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "MMDS is disabled.");
    }
    let path = sanitize(req.uri().path());
    let (parts, body) = req.into_parts();
    if shared.guest_writes {
        let pointer = pointer_of(&path);
        let writable = match parts.method {
            Method::DELETE => {
                crate::schema::is_consumable_in(&shared.store.snapshot().data, pointer)
            }
            Method::PUT => pointer == crate::schema::GUEST_STATUS_POINTER,
            _ => false,
        };
        if writable {
            return guest_write(shared, &parts, body, pointer).await;
        }
    }
    match parts.method {
        Method::PUT => {
            if let Err(e) = read_body(body, GUEST_BODY_LIMIT).await {
                return refuse(e.status(), e.reason());
            }
            if parts.headers.contains_key("x-forwarded-for") {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "Invalid header. Reason: Unsupported header name. Key: X-Forwarded-For",
                );
            }
            if path != TOKEN_PATH {
                return refuse(
                    StatusCode::NOT_FOUND,
                    format!("Resource not found: {}.", echo(&path)),
                );
            }
            let Some(ttl) = header(&parts.headers, &[TTL_HEADER, EC2_TTL_HEADER]) else {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "Token time to live value not found. Use `X-metadata-token-ttl-seconds` \
                     header to specify the token's lifetime.",
                );
            };
            match ttl.trim().parse::<u32>() {
                Ok(t) if (MIN_TTL_SECS..=MAX_TTL_SECS).contains(&t) => text(
                    StatusCode::OK,
                    shared.tokens.mint(Duration::from_secs(u64::from(t))),
                ),
                _ => refuse(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "Invalid time to live value provided for token: {}. Please provide \
                         a value between {MIN_TTL_SECS} and {MAX_TTL_SECS}.",
                        echo(ttl)
                    ),
                ),
            }
        }
        Method::GET => {
            if shared.version() == MmdsVersion::V2
                && let Some(refused) = check_token(shared, &parts.headers)
            {
                return refused;
            }
            let json = parts
                .headers
                .get_all(ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|m| {
                    m.split(';')
                        .next()
                        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
                });
            let poll = match LongPoll::parse(parts.uri.query()) {
                Ok(p) => p,
                Err(msg) => return refuse(StatusCode::BAD_REQUEST, msg),
            };
            let pointer = pointer_of(&path).to_owned();
            let snap = match poll {
                Some(p) => match wait_for_change(shared, &pointer, &p).await {
                    Some(s) => s,
                    None => {
                        let cur = etag_of(shared.store.snapshot().data.pointer(&pointer));
                        return with_etag(text(StatusCode::NOT_MODIFIED, ""), &cur);
                    }
                },
                None => shared.store.snapshot(),
            };
            let Some(value) = snap.data.pointer(&pointer) else {
                return with_etag(
                    refuse(
                        StatusCode::NOT_FOUND,
                        format!("Resource not found: {}.", echo(&path)),
                    ),
                    &etag_of(None),
                );
            };
            let etag = etag_of(Some(value));
            let r = if json {
                response(
                    StatusCode::OK,
                    "application/json",
                    serde_json::to_vec(value).unwrap_or_default(),
                )
            } else {
                match imds::render(value) {
                    Some(t) => text(StatusCode::OK, t),
                    None => text(
                        StatusCode::NOT_IMPLEMENTED,
                        "Cannot retrieve value. The value has an unsupported type.",
                    ),
                }
            };
            with_etag(r, &etag)
        }
        _ => {
            let mut r = refuse(StatusCode::METHOD_NOT_ALLOWED, "Not allowed HTTP method.");
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, PUT"));
            r
        }
    }
}

/// `None` when the request carries a valid V2 session token, else the 401 to answer.
fn check_token(shared: &Shared, headers: &HeaderMap) -> Option<Resp> {
    match header(headers, &[TOKEN_HEADER, EC2_TOKEN_HEADER]) {
        None => Some(refuse(
            StatusCode::UNAUTHORIZED,
            "No MMDS token provided. Use `X-metadata-token` header to specify the session token.",
        )),
        Some(t) if !shared.tokens.verify(t) => {
            Some(refuse(StatusCode::UNAUTHORIZED, "MMDS token not valid."))
        }
        Some(_) => None,
    }
}

/// A guest write allowed by [`ServerBuilder::guest_writes`]: always token-bound (even in V1),
/// `DELETE` of a consumable value or `PUT` of the guest status.
async fn guest_write(
    shared: &Shared,
    parts: &http::request::Parts,
    body: Incoming,
    pointer: &str,
) -> Resp {
    if let Some(refused) = check_token(shared, &parts.headers) {
        return refused;
    }
    let bytes = match read_body(body, crate::schema::MAX_GUEST_STATUS_BYTES).await {
        Ok(b) => b,
        Err(e) => return refuse(e.status(), e.reason()),
    };
    if parts.method == Method::DELETE {
        return match shared.store.delete_at(pointer, None) {
            Ok(_) => {
                record_consumed(shared, pointer);
                text(StatusCode::NO_CONTENT, "")
            }
            Err(_) => refuse(
                StatusCode::NOT_FOUND,
                format!("Resource not found: {}.", echo(pointer)),
            ),
        };
    }
    let status = match crate::schema::GuestStatus::from_guest(&bytes) {
        Ok(s) => s,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    let value = serde_json::to_value(status).unwrap_or_default();
    match shared.store.put_at(pointer, value, None) {
        Ok(_) => text(StatusCode::NO_CONTENT, ""),
        Err(e) => refuse(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
    }
}

fn record_consumed(shared: &Shared, pointer: &str) {
    tracing::info!(pointer, "mmds: the guest consumed a value");
    let at_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if let Ok(mut log) = shared.consumed.lock() {
        log.push(Consumed {
            pointer: pointer.to_owned(),
            at_unix,
            by: "guest (V2 token)",
        });
    }
}

struct LongPoll {
    /// The opaque part of the caller's ETag (see [`opaque_tag`]).
    last_etag: String,
    timeout: Duration,
}

impl LongPoll {
    fn parse(query: Option<&str>) -> Result<Option<LongPoll>, String> {
        let Some(q) = query else { return Ok(None) };
        let mut wait = false;
        let mut last = None;
        let mut timeout = None;
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v, true)
                .ok_or_else(|| format!("Invalid query parameter: {}.", echo(k)))?;
            match k {
                "wait_for_change" => {
                    wait = match v.as_str() {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => return Err("wait_for_change must be true or false.".into()),
                    }
                }
                "last_etag" => {
                    let tag = opaque_tag(&v).ok_or_else(|| {
                        "Bad last_etag: give it as the ETag header does (\"tag\" or W/\"tag\") \
                         or bare."
                            .to_owned()
                    })?;
                    last = Some(tag.to_owned());
                }
                "timeout_sec" => {
                    let n: u64 = v
                        .parse()
                        .map_err(|_| "timeout_sec must be a number of seconds.".to_owned())?;
                    if !(1..=MAX_LONG_POLL_SECS).contains(&n) {
                        return Err(format!(
                            "timeout_sec must be between 1 and {MAX_LONG_POLL_SECS}."
                        ));
                    }
                    timeout = Some(Duration::from_secs(n));
                }
                _ => {}
            }
        }
        if !wait {
            return Ok(None);
        }
        Ok(Some(LongPoll {
            last_etag: last.unwrap_or_default(),
            timeout: timeout.unwrap_or(Duration::from_secs(60)),
        }))
    }
}

/// Most bytes of an entity tag a guest may send.
const MAX_ETAG: usize = 128;

/// The opaque part of an entity tag given strong and quoted (`"abc"`, as the `ETag` header
/// gives it), weak (`W/"abc"`) or bare (`abc`). `None` if it is unbalanced, longer than
/// [`MAX_ETAG`] or holds a character RFC 9110 does not allow in one.
fn opaque_tag(s: &str) -> Option<&str> {
    let s = s.strip_prefix("W/").unwrap_or(s);
    let s = match s.strip_prefix('"') {
        Some(inner) => inner.strip_suffix('"')?,
        None => s,
    };
    let ok = s.len() <= MAX_ETAG && s.bytes().all(|b| b.is_ascii_graphic() && b != b'"');
    ok.then_some(s)
}

/// Waits until the value at `pointer` has an ETag other than `last_etag`; `None` on timeout.
async fn wait_for_change(shared: &Shared, pointer: &str, p: &LongPoll) -> Option<Snapshot> {
    let deadline = tokio::time::Instant::now() + p.timeout;
    let mut rx = shared.store.subscribe();
    loop {
        let snap = rx.borrow_and_update().clone();
        let etag = etag_of(snap.data.pointer(pointer));
        if opaque_tag(&etag) != Some(p.last_etag.as_str()) {
            return Some(snap);
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return None },
            _ = tokio::time::sleep_until(deadline) => return None,
        }
    }
}

/// A host-side refusal: Firecracker's `{"fault_message": ...}`, bounded.
fn fault(status: StatusCode, message: impl AsRef<str>) -> Resp {
    let body = serde_json::json!({ "fault_message": clamp(message.as_ref(), REASON_LIMIT) });
    response(
        status,
        "application/json",
        serde_json::to_vec(&body).unwrap_or_default(),
    )
}

fn store_fault(e: &StoreError) -> Resp {
    let status = match e {
        StoreError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        StoreError::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
        StoreError::NotFound { .. } => StatusCode::NOT_FOUND,
        _ => StatusCode::BAD_REQUEST,
    };
    let r = fault(status, e.to_string());
    match e {
        StoreError::PreconditionFailed { current, .. } => with_etag(r, current),
        _ => r,
    }
}

fn no_content(etag: &str) -> Resp {
    with_etag(response(StatusCode::NO_CONTENT, "text/plain", ""), etag)
}

fn not_allowed(allow: &'static str) -> Resp {
    let mut r = fault(StatusCode::METHOD_NOT_ALLOWED, "Not allowed HTTP method.");
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    r
}

async fn json_body(body: Incoming, limit: usize) -> Result<Value, Resp> {
    let bytes = read_body(body, limit)
        .await
        .map_err(|e| fault(e.status(), e.reason()))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| fault(StatusCode::BAD_REQUEST, format!("Invalid JSON body: {e}.")))
}

async fn host(shared: &Shared, req: Request<Incoming>) -> Resp {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let limit = shared.store.limit().saturating_add(1024);
    let if_match = parts
        .headers
        .get(IF_MATCH)
        .map(|v| v.to_str().unwrap_or("\u{fffd}").to_owned());
    let if_match = if_match.as_deref();
    let store = &shared.store;
    let ok_json = |v: &Value| {
        with_etag(
            response(
                StatusCode::OK,
                "application/json",
                serde_json::to_vec(v).unwrap_or_default(),
            ),
            &etag_of(Some(v)),
        )
    };
    if path == "/guest-access" {
        return match parts.method {
            Method::GET => ok_json(&serde_json::json!({
                "enabled": shared.guest_enabled.load(Ordering::Relaxed)
            })),
            Method::PUT => match json_body(body, limit).await {
                Ok(v) => match v.get("enabled").and_then(Value::as_bool) {
                    Some(on) => {
                        shared.guest_enabled.store(on, Ordering::Relaxed);
                        tracing::info!(enabled = on, "mmds guest side switched");
                        response(StatusCode::NO_CONTENT, "text/plain", "")
                    }
                    None => fault(StatusCode::BAD_REQUEST, "Expected {\"enabled\": bool}."),
                },
                Err(r) => r,
            },
            _ => not_allowed("GET, PUT"),
        };
    }
    if path == "/mmds/config" && parts.method == Method::PUT {
        return match json_body(body, limit).await {
            Ok(v) => match v.get("version").map(|v| v.as_str()) {
                None | Some(Some("V2")) => {
                    shared
                        .version
                        .store(MmdsVersion::V2 as u8, Ordering::Relaxed);
                    response(StatusCode::NO_CONTENT, "text/plain", "")
                }
                Some(Some("V1")) => {
                    shared
                        .version
                        .store(MmdsVersion::V1 as u8, Ordering::Relaxed);
                    response(StatusCode::NO_CONTENT, "text/plain", "")
                }
                Some(_) => fault(
                    StatusCode::BAD_REQUEST,
                    "An error occurred when deserializing the json body of a request: unknown \
                     variant, expected `V1` or `V2`.",
                ),
            },
            Err(r) => r,
        };
    }
    let pointer = if path == "/mmds" || path == "/mmds/" {
        String::new()
    } else if let Some(rest) = path.strip_prefix("/mmds/") {
        match percent_decode(rest, false) {
            Some(p) => format!("/{p}"),
            None => return fault(StatusCode::BAD_REQUEST, "Invalid path encoding."),
        }
    } else {
        return fault(
            StatusCode::NOT_FOUND,
            format!("Invalid request path: {}.", echo(&path)),
        );
    };
    let done = |r: Result<Snapshot, StoreError>| match r {
        Ok(s) => no_content(&etag_of(s.data.pointer(&pointer))),
        Err(e) => store_fault(&e),
    };
    match parts.method {
        Method::GET => match store.snapshot().data.pointer(&pointer) {
            Some(v) => ok_json(v),
            None => fault(
                StatusCode::NOT_FOUND,
                format!("Resource not found: {}.", echo(&pointer)),
            ),
        },
        Method::PUT => match json_body(body, limit).await {
            Ok(v) if pointer.is_empty() => done(store.replace(v, if_match)),
            Ok(v) => done(store.put_at(&pointer, v, if_match)),
            Err(r) => r,
        },
        Method::PATCH => match json_body(body, limit).await {
            Ok(v) => done(store.modify(&pointer, if_match, |doc| {
                let mut target = doc.pointer(&pointer).cloned().unwrap_or(Value::Null);
                crate::store::merge_patch(&mut target, &v);
                crate::store::set_pointer(doc, &pointer, target)
            })),
            Err(r) => r,
        },
        Method::DELETE if !pointer.is_empty() => done(store.delete_at(&pointer, if_match)),
        _ if pointer.is_empty() => not_allowed("GET, PUT, PATCH"),
        _ => not_allowed("GET, PUT, PATCH, DELETE"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn sanitize_like_firecracker() {
        assert_eq!(sanitize("/"), "/");
        assert_eq!(sanitize(""), "/");
        assert_eq!(sanitize("//latest///meta-data/"), "/latest/meta-data");
        assert_eq!(pointer_of("/"), "");
    }

    #[test]
    fn long_poll_query() {
        assert!(LongPoll::parse(None).unwrap().is_none());
        assert!(LongPoll::parse(Some("a=b")).unwrap().is_none());
        let p = LongPoll::parse(Some(
            "wait_for_change=true&last_etag=%22ab%22&timeout_sec=5",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(p.last_etag, "ab");
        assert_eq!(p.timeout, Duration::from_secs(5));
        // Quoted as the ETag header gives it, weak, or bare: the same tag.
        for q in ["%22ab%22", "W/%22ab%22", "ab", "W/ab"] {
            let p = LongPoll::parse(Some(&format!("wait_for_change=true&last_etag={q}")))
                .unwrap()
                .unwrap();
            assert_eq!(p.last_etag, "ab", "{q}");
        }
        for bad in ["%22ab", "a%22b", "a%20b", "%0A", &"a".repeat(MAX_ETAG + 1)] {
            let e = LongPoll::parse(Some(&format!("wait_for_change=true&last_etag={bad}")))
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(e.starts_with("Bad last_etag"), "{bad}: {e}");
        }
        assert!(LongPoll::parse(Some("wait_for_change=true&timeout_sec=0")).is_err());
        assert!(LongPoll::parse(Some("wait_for_change=true&timeout_sec=99999")).is_err());
        assert!(LongPoll::parse(Some("wait_for_change=maybe")).is_err());
    }

    #[test]
    fn echoed_input_is_bounded_and_printable() {
        assert_eq!(echo("/a\nb\u{1b}[31mc"), "/ab[31mc");
        let long = "é".repeat(200);
        let e = echo(&long);
        assert!(
            e.len() <= ECHO_LIMIT + 3 && e.ends_with("..."),
            "{}",
            e.len()
        );
        assert_eq!(echo("/short"), "/short");
    }
}
