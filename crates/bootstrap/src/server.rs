//! The host side: serves a build plan and its resources to one guest over mutual TLS, and
//! reports what the guest does as a stream of [`Event`]s.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use firebuild_pki::{BuildId, ClientPolicy, ServerBundle};
use firebuild_plan::{BuildPlan, RunMount, StepKind};
use firebuild_transfer::digest::ResourceDigest;
use firebuild_transfer::{
    Chunk, ChunkPlanner, EntryKind, Eof, Frame, Header, ResourceEncoder, ResumePoint,
};
use futures::Stream;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::pb;
use crate::pb::bootstrap_server::{Bootstrap, BootstrapServer as GrpcServer};
use crate::secret::{MAX_SECRET_BYTES, SecretBytes};
use crate::source::{ResourceSource, SourceError};
use crate::tuning::{self, DEFAULT_HEARTBEAT_TIMEOUT, DEFAULT_MAX_MESSAGE_SIZE, Http2Tuning};

/// How long [`ServerHandle::shutdown`] lets calls in flight finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Identifies a step of the plan: stage index and step index within the stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StepRef {
    /// [`firebuild_plan::Stage::index`].
    pub stage: usize,
    /// [`firebuild_plan::Step::index`].
    pub step: usize,
}

impl fmt::Display for StepRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stage {} step {}", self.stage, self.step)
    }
}

impl From<StepRef> for pb::StepRef {
    fn from(s: StepRef) -> Self {
        pb::StepRef {
            stage: s.stage as u64,
            step: s.step as u64,
        }
    }
}

impl TryFrom<pb::StepRef> for StepRef {
    type Error = crate::ConversionError;

    fn try_from(s: pb::StepRef) -> Result<Self, Self::Error> {
        let conv = |field, v: u64| {
            usize::try_from(v).map_err(|_| crate::ConversionError::Invalid {
                field,
                reason: format!("{v} does not fit in usize"),
            })
        };
        Ok(StepRef {
            stage: conv("StepRef.stage", s.stage)?,
            step: conv("StepRef.step", s.step)?,
        })
    }
}

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// How the build ended, from the server's point of view.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest called `Success`.
    Succeeded,
    /// The guest called `Abort`.
    Aborted {
        /// The guest's error message.
        error: String,
        /// The failing step, if any.
        step: Option<StepRef>,
        /// Its exit code, if it ran.
        exit_code: Option<i32>,
    },
    /// No sign of life from the guest within the heartbeat timeout.
    HeartbeatLost {
        /// The configured timeout that elapsed.
        timeout: Duration,
    },
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Succeeded => f.write_str("succeeded"),
            Outcome::Aborted {
                error,
                step,
                exit_code,
                ..
            } => {
                write!(f, "aborted by the guest: {error}")?;
                if let Some(step) = step {
                    write!(f, " ({step}")?;
                    if let Some(code) = exit_code {
                        write!(f, ", exit code {code}")?;
                    }
                    f.write_str(")")?;
                }
                Ok(())
            }
            Outcome::HeartbeatLost { timeout } => write!(
                f,
                "guest lost: no heartbeat for {:.1}s",
                timeout.as_secs_f64()
            ),
        }
    }
}

/// What the guest did, in order. Read them from [`Events`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A client completed the mutual-TLS handshake with this build's certificate.
    Connected {
        /// Its address.
        peer: SocketAddr,
    },
    /// A connection was refused during or right after the handshake, or a request was refused
    /// because the running step may not have what it asked for (a secret outside the RUN step
    /// that mounts it, or asked twice).
    Rejected {
        /// Its address (`0.0.0.0:0` when unknown).
        peer: SocketAddr,
        /// Why (the TLS or identity error, or the refused request; never a secret's value).
        reason: String,
    },
    /// The guest reported how its boot went (with its first `Commands`).
    GuestBooted(crate::GuestBoot),
    /// The plan was served (`Commands`).
    CommandsServed,
    /// A step began.
    StepStarted {
        /// The step.
        step: StepRef,
    },
    /// A step ended.
    StepFinished {
        /// The step.
        step: StepRef,
        /// Its exit code.
        exit_code: i32,
    },
    /// One line of output (lossily decoded as UTF-8).
    Output {
        /// The step that printed it.
        step: StepRef,
        /// stdout or stderr.
        stream: OutputStream,
        /// The line without its terminator.
        line: String,
    },
    /// A `ResourceChunk` stream ended with its `Eof`.
    ResourceSent {
        /// The resource id (`secret:<id>` for a secret: its value is never in an event).
        id: String,
        /// Content bytes sent in this stream (less than the resource after a resume).
        bytes: u64,
        /// Whether the stream resumed an earlier transfer.
        resumed: bool,
    },
    /// The guest aborted the build.
    Aborted {
        /// The guest's error message.
        error: String,
        /// The failing step, if any.
        step: Option<StepRef>,
        /// Its exit code, if it ran.
        exit_code: Option<i32>,
    },
    /// The guest reported success.
    Succeeded,
    /// The guest stopped sending heartbeats; the build is over.
    HeartbeatLost {
        /// The timeout that elapsed.
        timeout: Duration,
    },
}

/// The stream of [`Event`]s of a running server.
///
/// Events are delivered through a bounded queue: a guest that produces output faster than the
/// embedder reads it is slowed down, not buffered without limit. Drop `Events` to ignore them.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event, `None` once the server has stopped.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

/// TLS for the server: a [`ServerBundle`] (the server then requires this build's client
/// certificate inside the handshake) or a ready rustls config (it must require client
/// certificates; the build id is checked after the handshake either way).
#[derive(Debug, Clone)]
pub enum ServerTls {
    /// CA, certificate and key from `firebuild-pki`.
    Bundle(ServerBundle),
    /// A rustls server configuration built elsewhere.
    Rustls(Arc<rustls::ServerConfig>),
}

impl From<ServerBundle> for ServerTls {
    fn from(b: ServerBundle) -> Self {
        ServerTls::Bundle(b)
    }
}

impl From<rustls::ServerConfig> for ServerTls {
    fn from(c: rustls::ServerConfig) -> Self {
        ServerTls::Rustls(Arc::new(c))
    }
}

impl From<Arc<rustls::ServerConfig>> for ServerTls {
    fn from(c: Arc<rustls::ServerConfig>) -> Self {
        ServerTls::Rustls(c)
    }
}

/// Errors starting or stopping the server.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A required builder setting is missing.
    #[error("bootstrap server needs {what}")]
    Missing {
        /// `plan`, `resources`, `tls` or `expected_client`.
        what: &'static str,
    },
    /// Building the TLS configuration failed.
    #[error("cannot build the server TLS configuration")]
    Tls(#[from] firebuild_pki::Error),
    /// The listener has no local address.
    #[error("cannot read the listener address")]
    Listener(#[source] std::io::Error),
    /// The gRPC server failed.
    #[error("bootstrap server failed")]
    Serve(#[source] tonic::transport::Error),
    /// The server task panicked or was cancelled.
    #[error("bootstrap server task ended abnormally")]
    Join(#[source] tokio::task::JoinError),
}

/// Entry point of the server API: [`BootstrapServer::builder`].
#[derive(Debug)]
pub struct BootstrapServer;

impl BootstrapServer {
    /// A builder; `plan`, `resources`, `tls` and `expected_client` are required.
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            plan: None,
            source: None,
            tls: None,
            build_id: None,
            heartbeat_timeout: DEFAULT_HEARTBEAT_TIMEOUT,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            http2: Http2Tuning::default(),
            event_capacity: 1024,
            single_connection: true,
            step_hook: None,
            success_hook: None,
        }
    }
}

/// What [`ServerBuilder::step_hook`] runs at a successful step's end, with the guest's root
/// filesystem frozen until the future completes.
pub type StepHook = Arc<
    dyn Fn(StepRef) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// What [`ServerBuilder::success_hook`] runs when the guest reports success, with the guest's
/// root filesystem frozen until the future completes.
pub type SuccessHook =
    Arc<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync>;

/// Configures a [`BootstrapServer`].
pub struct ServerBuilder {
    plan: Option<BuildPlan>,
    source: Option<Arc<dyn ResourceSource>>,
    tls: Option<ServerTls>,
    build_id: Option<BuildId>,
    heartbeat_timeout: Duration,
    max_message_size: usize,
    http2: Http2Tuning,
    event_capacity: usize,
    single_connection: bool,
    step_hook: Option<StepHook>,
    success_hook: Option<SuccessHook>,
}

impl fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("plan", &self.plan.is_some())
            .field("source", &self.source.is_some())
            .field("tls", &self.tls.is_some())
            .field("build_id", &self.build_id)
            .field("heartbeat_timeout", &self.heartbeat_timeout)
            .field("max_message_size", &self.max_message_size)
            .field("http2", &self.http2)
            .finish()
    }
}

impl ServerBuilder {
    /// The plan to serve.
    pub fn plan(mut self, plan: BuildPlan) -> Self {
        self.plan = Some(plan);
        self
    }

    /// Where resource bytes come from (for example a [`crate::DirSource`]).
    pub fn resources(mut self, source: impl ResourceSource) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// Server certificate, key and client CA.
    pub fn tls(mut self, tls: impl Into<ServerTls>) -> Self {
        self.tls = Some(tls.into());
        self
    }

    /// The build whose client certificate is accepted; any other client is refused.
    pub fn expected_client(mut self, build_id: BuildId) -> Self {
        self.build_id = Some(build_id);
        self
    }

    /// Time without any request from the guest after which the build ends with
    /// [`Outcome::HeartbeatLost`] (default 30 s). Counted from the first connection.
    pub fn heartbeat_timeout(mut self, timeout: Duration) -> Self {
        self.heartbeat_timeout = timeout;
        self
    }

    /// Runs `hook` when a step ends successfully, before `StepFinished` is answered, and asks
    /// the guest to freeze its root filesystem for it (`snapshot_steps` in `Commands`): the
    /// hook sees the guest's disk settled at the step's end, for as long as it runs (a step
    /// cache snapshots the disk there). A repeated `StepFinished` (a retried call) runs it again.
    pub fn step_hook(mut self, hook: StepHook) -> Self {
        self.step_hook = Some(hook);
        self
    }

    /// Runs `hook` when the guest reports success, after [`Event::Succeeded`] and before
    /// `Success` is answered, and asks the guest to freeze its root filesystem for it
    /// (`freeze_at_success` in `Commands`): the hook sees the guest's disk settled, so it may
    /// take it and stop the VM without waiting for the guest's shutdown. A repeated `Success`
    /// (a retried call) runs it again.
    pub fn success_hook(mut self, hook: SuccessHook) -> Self {
        self.success_hook = Some(hook);
        self
    }

    /// Serve only the newest verified guest connection (the default): a guest that reconnects
    /// (after a cut, to resume) supersedes its old connection, and anything still arriving on a
    /// superseded connection fails. `false` serves every verified connection at once (load
    /// tests sharing one build's certificate).
    pub fn single_guest_connection(mut self, single: bool) -> Self {
        self.single_connection = single;
        self
    }

    /// Maximum gRPC message size in both directions (default 4 MiB). Chunks are sized so that no
    /// frame exceeds the smaller of this and the guest's limit.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// HTTP/2 flow control (default: tuned for bulk transfer).
    pub fn http2(mut self, tuning: Http2Tuning) -> Self {
        self.http2 = tuning;
        self
    }

    /// Capacity of the event queue (default 1024).
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity.max(1);
        self
    }

    /// Starts serving on `listener`. Returns a handle to wait for the outcome or stop the
    /// server, and the event stream.
    pub async fn serve(self, listener: TcpListener) -> Result<(ServerHandle, Events), ServerError> {
        let plan = self.plan.ok_or(ServerError::Missing { what: "plan" })?;
        let source = self
            .source
            .ok_or(ServerError::Missing { what: "resources" })?;
        let tls = self.tls.ok_or(ServerError::Missing { what: "tls" })?;
        let build_id = self.build_id.ok_or(ServerError::Missing {
            what: "expected_client",
        })?;
        let mut config = match tls {
            ServerTls::Bundle(bundle) => {
                bundle.server_config(&ClientPolicy::Build(build_id.clone()))?
            }
            ServerTls::Rustls(config) => (*config).clone(),
        };
        config.alpn_protocols = vec![firebuild_pki::ALPN_H2.to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let local_addr = listener.local_addr().map_err(ServerError::Listener)?;

        let (events_tx, events_rx) = mpsc::channel(self.event_capacity);
        let (outcome_tx, outcome_rx) = watch::channel(None);
        let (stop_tx, stop_rx) = watch::channel(false);

        let mut steps = HashSet::new();
        let mut secret_steps: HashMap<StepRef, HashSet<String>> = HashMap::new();
        let mut resource_ids = Vec::new();
        for (stage, step) in plan.steps() {
            let at = StepRef {
                stage: stage.index,
                step: step.index,
            };
            steps.insert(at);
            match &step.kind {
                StepKind::Copy(t) | StepKind::Add(t) => {
                    for s in &t.sources {
                        match s {
                            firebuild_plan::Source::Path { resources, .. } => {
                                resource_ids.extend(resources.iter().map(|r| r.id.clone()));
                            }
                            firebuild_plan::Source::Url { id, .. } => {
                                resource_ids.push(id.clone());
                            }
                            firebuild_plan::Source::Heredoc { .. } => {}
                        }
                    }
                }
                StepKind::Run(run) => {
                    for m in &run.mounts {
                        match m {
                            RunMount::Bind { resources, .. } => {
                                resource_ids.extend(resources.iter().map(|r| r.id.clone()));
                            }
                            RunMount::Secret { id, .. } => {
                                resource_ids.push(firebuild_plan::secret_resource_id(id));
                                secret_steps.entry(at).or_default().insert(id.clone());
                            }
                            RunMount::Cache { .. } | RunMount::Tmpfs { .. } => {}
                        }
                    }
                }
                StepKind::Workdir => {}
            }
        }

        let state = Arc::new(State {
            build_id: build_id.clone(),
            plan: pb::BuildPlan::from(&plan),
            steps,
            secret_steps,
            running: Mutex::new(Running::default()),
            resource_ids,
            source,
            events: events_tx,
            commands_served: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            max_message_size: self.max_message_size,
            negotiated: AtomicUsize::new(self.max_message_size),
            last_seen: Mutex::new(Instant::now()),
            outcome: outcome_tx,
            heartbeat_timeout: self.heartbeat_timeout,
            generation: Arc::new(AtomicU64::new(0)),
            single_connection: self.single_connection,
            step_hook: self.step_hook,
            success_hook: self.success_hook,
        });

        let (conn_tx, conn_rx) = mpsc::channel::<std::io::Result<GuestConn>>(16);
        let accept = tokio::spawn(accept_loop(
            listener,
            acceptor,
            Arc::clone(&state),
            conn_tx,
            stop_rx.clone(),
            self.http2.tcp_nodelay,
        ));
        let watchdog = tokio::spawn(watchdog(Arc::clone(&state), stop_rx.clone()));

        let service = GrpcServer::from_arc(Arc::clone(&state))
            .max_decoding_message_size(self.max_message_size)
            .max_encoding_message_size(self.max_message_size);
        let h2 = self.http2;
        let mut stop = stop_rx;
        let server = tonic::transport::Server::builder()
            .http2_adaptive_window(Some(h2.adaptive_window))
            .initial_stream_window_size(h2.stream_window)
            .initial_connection_window_size(h2.connection_window)
            .max_frame_size(h2.max_frame_size)
            .add_service(service)
            .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), async move {
                let _ = stop.wait_for(|s| *s).await;
            });
        let task = tokio::spawn(server);
        info!(%local_addr, build = %build_id, "bootstrap server listening");
        Ok((
            ServerHandle {
                local_addr,
                stop: stop_tx,
                outcome: outcome_rx,
                task,
                accept,
                watchdog,
            },
            Events { rx: events_rx },
        ))
    }
}

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    outcome: watch::Receiver<Option<Outcome>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
    accept: JoinHandle<()>,
    watchdog: JoinHandle<()>,
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The outcome so far (`None` while the build runs).
    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome.borrow().clone()
    }

    /// Waits until the build has an outcome: success, abort or lost heartbeat.
    pub async fn wait(&mut self) -> Option<Outcome> {
        let outcome = self.outcome.wait_for(Option::is_some).await.ok()?;
        outcome.clone()
    }

    /// Stops accepting and waits for the server to end: calls in flight get
    /// [`SHUTDOWN_GRACE`] to finish, then their connections are dropped.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        let _ = self.stop.send(true);
        self.accept.abort();
        self.watchdog.abort();
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut self.task).await {
            Ok(joined) => joined
                .map_err(ServerError::Join)?
                .map_err(ServerError::Serve),
            Err(_) => {
                warn!("calls still open after the shutdown grace period, dropping them");
                self.task.abort();
                Ok(())
            }
        }
    }
}

/// The step the guest last reported started (until it reports it finished), and the secrets
/// already handed to it.
#[derive(Default)]
struct Running {
    step: Option<StepRef>,
    secrets_served: HashSet<String>,
}

struct State {
    build_id: BuildId,
    plan: pb::BuildPlan,
    steps: HashSet<StepRef>,
    /// The secret ids each RUN step mounts.
    secret_steps: HashMap<StepRef, HashSet<String>>,
    running: Mutex<Running>,
    resource_ids: Vec<String>,
    source: Arc<dyn ResourceSource>,
    events: mpsc::Sender<Event>,
    commands_served: AtomicBool,
    connected: AtomicBool,
    max_message_size: usize,
    negotiated: AtomicUsize,
    last_seen: Mutex<Instant>,
    outcome: watch::Sender<Option<Outcome>>,
    heartbeat_timeout: Duration,
    /// Bumped by each verified connection; a connection of an older generation is superseded.
    generation: Arc<AtomicU64>,
    single_connection: bool,
    step_hook: Option<StepHook>,
    success_hook: Option<SuccessHook>,
}

impl State {
    async fn emit(&self, event: Event) {
        // A closed queue means the embedder does not want events.
        let _ = self.events.send(event).await;
    }

    fn touch(&self) {
        if let Ok(mut t) = self.last_seen.lock() {
            *t = Instant::now();
        }
    }

    fn ended(&self) -> Option<Outcome> {
        self.outcome.borrow().clone()
    }

    /// Every call but `Commands`: the build is running and the plan was served.
    fn guard(&self, rpc: &str) -> Result<(), Status> {
        self.touch();
        if let Some(outcome) = self.ended() {
            return Err(Status::failed_precondition(format!(
                "{rpc}: build already ended: {outcome}"
            )));
        }
        if !self.commands_served.load(Ordering::Acquire) {
            return Err(Status::failed_precondition(format!(
                "{rpc}: Commands must be called first"
            )));
        }
        Ok(())
    }

    fn step(&self, step: Option<pb::StepRef>, rpc: &str) -> Result<StepRef, Status> {
        let step = step.ok_or_else(|| Status::invalid_argument(format!("{rpc}: missing step")))?;
        let step =
            StepRef::try_from(step).map_err(|e| Status::invalid_argument(format!("{rpc}: {e}")))?;
        if !self.steps.contains(&step) {
            return Err(Status::invalid_argument(format!(
                "{rpc}: no {step} in the plan"
            )));
        }
        Ok(step)
    }

    /// The value of secret `id` if the running step mounts it and has not had it yet; else the
    /// refusal (`PERMISSION_DENIED`, also reported as [`Event::Rejected`]) or `NOT_FOUND` when
    /// the build was not given it. Messages name the id, never the value.
    async fn secret(&self, id: &str, peer: Option<SocketAddr>) -> Result<SecretBytes, Status> {
        let refusal = match self.running.lock() {
            Err(_) => Some(format!("secret {id:?} refused: step state unavailable")),
            Ok(mut guard) => {
                let running = &mut *guard;
                match running.step {
                    None => Some(format!("secret {id:?} requested while no step runs")),
                    Some(step)
                        if !self
                            .secret_steps
                            .get(&step)
                            .is_some_and(|ids| ids.contains(id)) =>
                    {
                        Some(format!(
                            "secret {id:?} requested during {step}, which does not mount it"
                        ))
                    }
                    Some(step) if !running.secrets_served.insert(id.to_owned()) => Some(format!(
                        "secret {id:?} requested again during {step} (served once per step)"
                    )),
                    Some(_) => None,
                }
            }
        };
        if let Some(reason) = refusal {
            let peer = peer.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
            warn!(%peer, %reason, "secret refused");
            self.emit(Event::Rejected {
                peer,
                reason: reason.clone(),
            })
            .await;
            return Err(Status::permission_denied(reason));
        }
        let Some(value) = self.source.secret(id) else {
            return Err(Status::not_found(format!(
                "secret {id} was not given to the build (--secret id={id},...)"
            )));
        };
        if value.len() as u64 > MAX_SECRET_BYTES {
            return Err(Status::failed_precondition(format!(
                "secret {id} is {} bytes, more than the {MAX_SECRET_BYTES} bytes a step may mount",
                value.len()
            )));
        }
        Ok(value)
    }

    /// Records the outcome once; `true` if this call set it.
    fn finish(&self, outcome: Outcome) -> bool {
        self.outcome.send_if_modified(|o| {
            if o.is_some() {
                return false;
            }
            *o = Some(outcome);
            true
        })
    }

    async fn output(
        &self,
        request: Request<Streaming<pb::OutputBatch>>,
        stream: OutputStream,
        rpc: &str,
    ) -> Result<Response<pb::OutputAck>, Status> {
        self.guard(rpc)?;
        let mut batches = request.into_inner();
        let mut lines = 0u64;
        while let Some(batch) = batches.message().await? {
            self.touch();
            for line in batch.lines {
                let step = self.step(line.step, rpc)?;
                lines += 1;
                self.emit(Event::Output {
                    step,
                    stream,
                    line: String::from_utf8_lossy(&line.line).into_owned(),
                })
                .await;
            }
        }
        Ok(Response::new(pb::OutputAck { lines }))
    }
}

/// A secret as the frames of a one-file resource (mode 0400, owner 0:0, mtime 0; the guest
/// applies the mount's own mode and owner).
fn secret_frames(value: &SecretBytes, planner: ChunkPlanner) -> Vec<Frame> {
    let bytes = value.expose_secret();
    let header = Header {
        index: 0,
        path: String::new(),
        kind: EntryKind::File,
        mode: 0o400,
        uid: 0,
        gid: 0,
        size: bytes.len() as u64,
        mtime_secs: 0,
        mtime_nanos: 0,
        link_target: String::new(),
    };
    let mut digest = ResourceDigest::new();
    digest.header(&header);
    let mut frames = vec![Frame::Header(header)];
    for (offset, len) in planner.chunks(bytes.len() as u64) {
        // `chunks` yields offsets and lengths within `bytes`.
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let Some(data) = bytes.get(start..start.saturating_add(len)) else {
            break;
        };
        digest.content(data);
        frames.push(Frame::Chunk(Chunk::new(0, offset, data.to_vec())));
    }
    digest.end_file();
    frames.push(Frame::Eof(Eof {
        digest: digest.finish(),
    }));
    frames
}

fn source_status(err: &SourceError) -> Status {
    match err {
        SourceError::NotFound { .. } => Status::not_found(err.to_string()),
        SourceError::Outside { .. } => Status::permission_denied(err.to_string()),
        SourceError::ChecksumMismatch { .. } | SourceError::BadChecksum { .. } => {
            Status::failed_precondition(err.to_string())
        }
        _ => Status::internal(err.to_string()),
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        s.push_str(": ");
        s.push_str(&e.to_string());
        cur = e.source();
    }
    s
}

#[tonic::async_trait]
impl Bootstrap for State {
    async fn commands(
        &self,
        request: Request<pb::CommandsRequest>,
    ) -> Result<Response<pb::CommandsResponse>, Status> {
        self.touch();
        if let Some(outcome) = self.ended() {
            return Err(Status::failed_precondition(format!(
                "Commands: build already ended: {outcome}"
            )));
        }
        let client_max = request.get_ref().max_message_size as usize;
        let negotiated = if client_max == 0 {
            self.max_message_size
        } else {
            client_max.min(self.max_message_size)
        };
        self.negotiated.store(negotiated, Ordering::Release);
        let first = !self.commands_served.swap(true, Ordering::AcqRel);
        if first {
            // A malformed report is dropped (logged): it only feeds the host's timings.
            match request.get_ref().boot.map(crate::GuestBoot::try_from) {
                Some(Ok(boot)) => self.emit(Event::GuestBooted(boot)).await,
                Some(Err(e)) => tracing::warn!("Commands: ignoring the guest's boot report: {e}"),
                None => {}
            }
            self.emit(Event::CommandsServed).await;
        }
        Ok(Response::new(pb::CommandsResponse {
            plan: Some(self.plan.clone()),
            resource_ids: self.resource_ids.clone(),
            build_id: self.build_id.as_str().to_owned(),
            max_message_size: u32::try_from(negotiated).unwrap_or(u32::MAX),
            snapshot_steps: self.step_hook.is_some(),
            freeze_at_success: self.success_hook.is_some(),
        }))
    }

    type ResourceChunkStream = ReceiverStream<Result<pb::ResourceFrame, Status>>;

    async fn resource_chunk(
        &self,
        request: Request<pb::ResourceChunkRequest>,
    ) -> Result<Response<Self::ResourceChunkStream>, Status> {
        self.guard("ResourceChunk")?;
        let peer = request.remote_addr();
        let req = request.into_inner();
        let id = req.resource_id;
        let resume: ResumePoint = req.resume.map(Into::into).unwrap_or_default();
        let resumed = resume != ResumePoint::default();
        let planner = tuning::chunk_planner(self.negotiated.load(Ordering::Acquire))
            .map_err(|e| Status::internal(format!("ResourceChunk: {e}")))?;

        if let Some(secret) = firebuild_plan::secret_of_resource(&id) {
            let value = self.secret(secret, peer).await?;
            let frames = secret_frames(&value, planner);
            drop(value);
            let bytes = frames
                .iter()
                .map(|f| match f {
                    Frame::Chunk(c) => c.data.len() as u64,
                    _ => 0,
                })
                .sum();
            debug!(id, bytes, "serving secret");
            let (tx, rx) = mpsc::channel(frames.len().max(1));
            for frame in frames {
                // The channel holds every frame; it only fails once the client is gone.
                let _ = tx.try_send(Ok(frame.into()));
            }
            self.emit(Event::ResourceSent {
                id,
                bytes,
                resumed: false,
            })
            .await;
            return Ok(Response::new(ReceiverStream::new(rx)));
        }

        let source = Arc::clone(&self.source);
        let rid = id.clone();
        let encoder = tokio::task::spawn_blocking(move || {
            let resolved = source.resolve(&rid).map_err(|e| source_status(&e))?;
            let filter = resolved.filter.clone();
            let mut builder = ResourceEncoder::builder(&resolved.path)
                .planner(planner)
                .resume_from(resume);
            if let Some(f) = filter.as_deref() {
                let f: &dyn Fn(&Path, bool) -> bool = f;
                builder = builder.filter(f);
            }
            builder
                .build()
                .map_err(|e| Status::internal(format!("resource {rid:?}: {}", error_chain(&e))))
        })
        .await
        .map_err(|e| Status::internal(format!("ResourceChunk: {e}")))??;

        debug!(
            id,
            ?resume,
            chunk = planner.chunk_size(),
            "serving resource"
        );
        let (tx, rx) = mpsc::channel(4);
        let events = self.events.clone();
        tokio::task::spawn_blocking(move || {
            let mut encoder = encoder;
            let mut bytes = 0u64;
            loop {
                match encoder.next_frame() {
                    Ok(Some(frame)) => {
                        if let Frame::Chunk(c) = &frame {
                            bytes += c.data.len() as u64;
                        }
                        let eof = matches!(frame, Frame::Eof(_));
                        if tx.blocking_send(Ok(frame.into())).is_err() {
                            debug!(id, "resource stream cancelled by the client");
                            return;
                        }
                        if eof {
                            let _ =
                                events.blocking_send(Event::ResourceSent { id, bytes, resumed });
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        warn!(id, error = %error_chain(&e), "resource stream failed");
                        let _ = tx.blocking_send(Err(Status::internal(format!(
                            "resource {id:?}: {}",
                            error_chain(&e)
                        ))));
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn std_out(
        &self,
        request: Request<Streaming<pb::OutputBatch>>,
    ) -> Result<Response<pb::OutputAck>, Status> {
        self.output(request, OutputStream::Stdout, "StdOut").await
    }

    async fn std_err(
        &self,
        request: Request<Streaming<pb::OutputBatch>>,
    ) -> Result<Response<pb::OutputAck>, Status> {
        self.output(request, OutputStream::Stderr, "StdErr").await
    }

    async fn step_started(
        &self,
        request: Request<pb::StepStartedRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        self.guard("StepStarted")?;
        let step = self.step(request.into_inner().step, "StepStarted")?;
        if let Ok(mut running) = self.running.lock() {
            running.step = Some(step);
            running.secrets_served.clear();
        }
        self.emit(Event::StepStarted { step }).await;
        Ok(Response::new(pb::Ack {}))
    }

    async fn step_finished(
        &self,
        request: Request<pb::StepFinishedRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        self.guard("StepFinished")?;
        let req = request.into_inner();
        let step = self.step(req.step, "StepFinished")?;
        if let Ok(mut running) = self.running.lock()
            && running.step == Some(step)
        {
            *running = Running::default();
        }
        if req.exit_code == 0
            && let Some(hook) = &self.step_hook
        {
            hook(step).await;
            self.touch();
        }
        self.emit(Event::StepFinished {
            step,
            exit_code: req.exit_code,
        })
        .await;
        Ok(Response::new(pb::Ack {}))
    }

    async fn abort(&self, request: Request<pb::AbortRequest>) -> Result<Response<pb::Ack>, Status> {
        let req = request.into_inner();
        let step = match req.step {
            Some(s) => Some(self.step(Some(s), "Abort")?),
            None => None,
        };
        let outcome = Outcome::Aborted {
            error: req.error.clone(),
            step,
            exit_code: req.exit_code,
        };
        // A retried Abort whose first answer was lost is fine.
        if self.ended().as_ref() == Some(&outcome) {
            return Ok(Response::new(pb::Ack {}));
        }
        self.guard("Abort")?;
        if self.finish(outcome) {
            warn!(error = %req.error, ?step, "guest aborted the build");
            self.emit(Event::Aborted {
                error: req.error,
                step,
                exit_code: req.exit_code,
            })
            .await;
        }
        Ok(Response::new(pb::Ack {}))
    }

    async fn success(
        &self,
        _request: Request<pb::SuccessRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        // A retried Success whose first answer was lost is fine, and waits for the hook too:
        // the guest must not thaw while the host takes its disk.
        if self.ended() != Some(Outcome::Succeeded) {
            self.guard("Success")?;
            if self.finish(Outcome::Succeeded) {
                info!("guest reported success");
                self.emit(Event::Succeeded).await;
            }
        }
        if let Some(hook) = &self.success_hook {
            hook().await;
        }
        Ok(Response::new(pb::Ack {}))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        self.guard("Heartbeat")?;
        Ok(Response::new(pb::HeartbeatResponse {
            sequence: request.into_inner().sequence,
        }))
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<State>,
    conns: mpsc::Sender<std::io::Result<GuestConn>>,
    mut stop: watch::Receiver<bool>,
    nodelay: bool,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(nodelay);
        let acceptor = acceptor.clone();
        let state = Arc::clone(&state);
        let conns = conns.clone();
        tokio::spawn(async move {
            let reason = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Err(_) => "tls handshake timed out".to_owned(),
                Ok(Err(e)) => format!("tls handshake failed: {}", handshake_reason(&e)),
                Ok(Ok(tls)) => match check_client(&tls, &state.build_id) {
                    Ok(()) => {
                        let generation = state.generation.fetch_add(1, Ordering::AcqRel) + 1;
                        if generation > 1 && state.single_connection {
                            info!(%peer, "guest reconnected: its previous connection is superseded");
                        } else {
                            info!(%peer, "guest connected");
                        }
                        state.touch();
                        state.connected.store(true, Ordering::Release);
                        state.emit(Event::Connected { peer }).await;
                        let conn = GuestConn {
                            inner: tls,
                            generation,
                            current: state
                                .single_connection
                                .then(|| Arc::clone(&state.generation)),
                        };
                        let _ = conns.send(Ok(conn)).await;
                        return;
                    }
                    Err(reason) => reason,
                },
            };
            warn!(%peer, %reason, "connection rejected");
            state.emit(Event::Rejected { peer, reason }).await;
        });
    }
}

/// A verified guest connection; with [`ServerBuilder::single_guest_connection`], reads and
/// writes fail once a newer one was accepted.
struct GuestConn {
    inner: TlsStream<TcpStream>,
    generation: u64,
    current: Option<Arc<AtomicU64>>,
}

impl GuestConn {
    fn superseded(&self) -> Option<std::io::Error> {
        let current = self.current.as_ref()?.load(Ordering::Acquire);
        (current != self.generation).then(|| {
            std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "superseded by a newer connection of the guest",
            )
        })
    }
}

impl tokio::io::AsyncRead for GuestConn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if let Some(e) = self.superseded() {
            return std::task::Poll::Ready(Err(e));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for GuestConn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if let Some(e) = self.superseded() {
            return std::task::Poll::Ready(Err(e));
        }
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for GuestConn {
    type ConnectInfo = <TlsStream<TcpStream> as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// The handshake error in words; a build id mismatch from `firebuild-pki`'s verifier is
/// spelled out instead of rustls' debug rendering.
fn handshake_reason(err: &std::io::Error) -> String {
    let rustls_err = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>());
    if let Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) =
        rustls_err
        && let Some(mismatch) = other.0.downcast_ref::<firebuild_pki::BuildIdMismatch>()
    {
        return format!("invalid peer certificate: {mismatch}");
    }
    error_chain(err)
}

/// Defense in depth: whatever the rustls config, only this build's client certificate passes.
fn check_client(tls: &TlsStream<TcpStream>, expected: &BuildId) -> Result<(), String> {
    let (_, conn) = tls.get_ref();
    let Some(cert) = conn.peer_certificates().and_then(|c| c.first()) else {
        return Err("client presented no certificate".to_owned());
    };
    match firebuild_pki::client_build_id(cert) {
        Some(id) if &id == expected => Ok(()),
        Some(id) => Err(format!(
            "client certificate is for build {id}, this server serves build {expected}"
        )),
        None => Err(format!(
            "client certificate carries no firebuild build id, this server serves build {expected}"
        )),
    }
}

async fn watchdog(state: Arc<State>, mut stop: watch::Receiver<bool>) {
    let timeout = state.heartbeat_timeout;
    let tick = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(tick) => {}
        }
        if state.ended().is_some() {
            return;
        }
        if !state.connected.load(Ordering::Acquire) {
            continue;
        }
        let silent = state
            .last_seen
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or_default();
        if silent >= timeout && state.finish(Outcome::HeartbeatLost { timeout }) {
            warn!(?timeout, "guest heartbeat lost");
            state.emit(Event::HeartbeatLost { timeout }).await;
            return;
        }
    }
}
