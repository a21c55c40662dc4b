//! The guest side (what vminit uses): connect from the MMDS `bootstrap` section, fetch the plan,
//! pull resources into a [`Sink`], report output and the outcome.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use firebuild_pki::ClientBundle;
use firebuild_plan::BuildPlan;
use firebuild_transfer::{
    EntryKind, Header, Limits, Outcome as TransferOutcome, Reassembler, Sink,
};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::{Channel, Endpoint, Uri};
use tracing::{debug, warn};
use zeroize::Zeroizing;

use crate::GuestBoot;
use crate::pb;
use crate::pb::bootstrap_client::BootstrapClient as GrpcClient;
use crate::secret::{MAX_SECRET_BYTES, SecretBytes};
use crate::server::{OutputStream, StepRef};
use crate::tuning::{
    DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_HEARTBEAT_TIMEOUT, DEFAULT_MAX_MESSAGE_SIZE, Http2Tuning,
};

/// The client private key (PEM): zeroized on drop, redacted in `Debug`.
#[derive(Clone)]
pub struct ClientKey(Zeroizing<String>);

impl<'de> Deserialize<'de> for ClientKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(ClientKey::new)
    }
}

impl ClientKey {
    /// Wraps a PEM private key.
    pub fn new(pem: String) -> Self {
        Self(Zeroizing::new(pem))
    }

    /// The PEM text.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientKey([redacted])")
    }
}

/// The MMDS `bootstrap` section: where to connect and how to authenticate.
///
/// ```
/// let json = r#"{"grpc-host-port": "169.254.0.2:7000", "tls-ca-cert": "CA",
///                "tls-cert": "CERT", "tls-key": "-----BEGIN PRIVATE KEY-----..."}"#;
/// let cfg: firebuild_bootstrap::BootstrapConfig = serde_json::from_str(json)?;
/// assert_eq!(cfg.grpc_host_port, "169.254.0.2:7000");
/// assert!(!format!("{cfg:?}").contains("PRIVATE KEY"));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, Deserialize)]
pub struct BootstrapConfig {
    /// `host:port` of the bootstrap server; the host is also the name its certificate must carry.
    #[serde(rename = "grpc-host-port")]
    pub grpc_host_port: String,
    /// PEM of the CA that signed the server certificate.
    #[serde(rename = "tls-ca-cert")]
    pub tls_ca_cert: String,
    /// PEM of this guest's client certificate.
    #[serde(rename = "tls-cert")]
    pub tls_cert: String,
    /// PEM of its private key.
    #[serde(rename = "tls-key")]
    pub tls_key: ClientKey,
}

/// Retry, size, timeout and HTTP/2 settings of the client.
///
/// The defaults keep every wait of the guest inside the server's heartbeat timeout
/// ([`DEFAULT_HEARTBEAT_TIMEOUT`], 30 s), so that a host that died or froze is noticed by the
/// guest no later than the guest's silence is noticed by the host:
///
/// - [`HeartbeatTask::lost`] fires once no heartbeat was answered for `heartbeat_window` (30 s;
///   heartbeats go every [`DEFAULT_HEARTBEAT_INTERVAL`], 2 s);
/// - one unary call (all its attempts and pauses) ends within `heartbeat_window`, each attempt
///   within `call_timeout` (10 s); a resource pull gives up once it made no progress for
///   `heartbeat_window`, and a stream that delivers nothing for `call_timeout` is resumed;
/// - HTTP/2 pings every `keepalive_interval` (5 s) of silence, even between calls, close a
///   connection whose ping is not answered within `keepalive_timeout` (5 s): a frozen host (its
///   sockets open, nothing answering) breaks the connection within 10 s and every stream on it
///   fails instead of hanging.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Connection attempts before giving up (at least 1).
    pub connect_attempts: u32,
    /// First retry delay; doubled after each failure up to `max_backoff`.
    pub initial_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Attempts of one unary call or one resource pull (resumes included).
    pub call_attempts: u32,
    /// Maximum gRPC message size in both directions (must equal the server's setting).
    pub max_message_size: usize,
    /// HTTP/2 flow control.
    pub http2: Http2Tuning,
    /// Limits applied to received resources.
    pub limits: Limits,
    /// Timeout of one TCP + TLS connection attempt.
    pub connect_timeout: Duration,
    /// The host is lost when no heartbeat was answered for this long; also the longest one unary
    /// call may take over all its attempts, and the longest a pull may go without progress.
    pub heartbeat_window: Duration,
    /// Timeout of one attempt of a unary call, and the longest a resource stream may deliver
    /// nothing before it is resumed.
    pub call_timeout: Duration,
    /// HTTP/2 ping after this much silence on the connection (also while no call is open).
    pub keepalive_interval: Duration,
    /// The connection is closed when a ping is not answered within this.
    pub keepalive_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            call_attempts: 8,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            http2: Http2Tuning::default(),
            limits: Limits::default(),
            connect_timeout: Duration::from_secs(10),
            heartbeat_window: DEFAULT_HEARTBEAT_TIMEOUT,
            call_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(5),
            keepalive_timeout: Duration::from_secs(5),
        }
    }
}

impl ClientOptions {
    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.min(16);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// Errors of the guest client.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The bootstrap section is unusable (bad PEM, bad address).
    #[error("invalid bootstrap configuration: {what}")]
    Config {
        /// What is wrong.
        what: String,
    },
    /// The certificates or key do not form a client configuration.
    #[error("invalid bootstrap credentials")]
    Credentials(#[from] firebuild_pki::Error),
    /// Could not connect within the allowed attempts.
    #[error("cannot connect to bootstrap server {addr} after {attempts} attempts")]
    Connect {
        /// `host:port`.
        addr: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        #[source]
        source: tonic::transport::Error,
    },
    /// A call failed.
    #[error("{rpc} failed after {attempts} attempts")]
    Rpc {
        /// The RPC name.
        rpc: &'static str,
        /// Attempts made.
        attempts: u32,
        /// The last status.
        #[source]
        status: tonic::Status,
    },
    /// The server sent a message that does not convert to the domain type.
    #[error("{rpc} returned an invalid message")]
    Invalid {
        /// The RPC name.
        rpc: &'static str,
        /// The conversion error.
        #[source]
        source: crate::ConversionError,
    },
    /// A resource failed validation or could not be placed.
    #[error("resource {id:?} failed")]
    Transfer {
        /// The resource id.
        id: String,
        /// The transfer error.
        #[source]
        source: firebuild_transfer::Error,
    },
    /// The output reporter's background task ended abnormally.
    #[error("output reporter stopped")]
    Reporter,
}

/// What `Commands` returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commands {
    /// The plan to run.
    pub plan: BuildPlan,
    /// Every resource id of the plan, in step order.
    pub resource_ids: Vec<String>,
    /// The build id the server serves.
    pub build_id: String,
    /// The negotiated message size limit.
    pub max_message_size: usize,
    /// The host snapshots the root filesystem at each successful step's end: freeze it before
    /// [`BootstrapClient::step_finished`], thaw it after (see `ServerBuilder::step_hook`).
    pub snapshot_steps: bool,
    /// The host takes the disk when [`BootstrapClient::success`] arrives: freeze the root
    /// filesystem before it, thaw it after (see `ServerBuilder::success_hook`).
    pub freeze_at_success: bool,
}

/// A connected guest client. Cheap to clone (one HTTP/2 connection, reconnected on demand).
#[derive(Debug, Clone)]
pub struct BootstrapClient {
    grpc: GrpcClient<Channel>,
    options: Arc<ClientOptions>,
    /// Set once `Success` or `Abort` is sent: the server's refusals of heartbeats are then
    /// expected, not a loss.
    ending: Arc<AtomicBool>,
}

/// Whether a failed call may succeed if repeated: transport trouble yes, a TLS refusal (the
/// peer rejected our certificate, or we rejected its) or an application error no.
fn transient(status: &tonic::Status) -> bool {
    if tls_failure(status) {
        return false;
    }
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled
            | Code::Aborted
            | Code::DeadlineExceeded
    )
}

/// A TLS error somewhere in the status' source chain (tokio-rustls reports TLS failures, alerts
/// included, as `InvalidData` I/O errors).
fn tls_failure(status: &tonic::Status) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = cur {
        if e.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::InvalidData
        {
            return true;
        }
        cur = e.source();
    }
    false
}

/// The status of an attempt that got no answer in time; retried like a transport failure.
fn no_answer(after: Duration) -> tonic::Status {
    tonic::Status::deadline_exceeded(format!("no answer within {after:?}"))
}

/// Whether a connection error is worth retrying (refused, reset, timed out) rather than a TLS
/// verification failure that will fail the same way again.
fn retryable_connect(err: &tonic::transport::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.downcast_ref::<rustls::Error>().is_some() {
            return false;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
        {
            return false;
        }
        cur = e.source();
    }
    true
}

impl BootstrapClient {
    /// Connects with default [`ClientOptions`].
    pub async fn connect(config: &BootstrapConfig) -> Result<Self, ClientError> {
        Self::connect_with(config, ClientOptions::default()).await
    }

    /// Connects (TCP + mutual TLS + HTTP/2) with bounded retries and exponential backoff.
    /// TLS verification failures are not retried.
    pub async fn connect_with(
        config: &BootstrapConfig,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        let bundle = ClientBundle::from_pem(
            &config.tls_ca_cert,
            &config.tls_cert,
            config.tls_key.expose_secret(),
        )?;
        let mut tls = bundle.client_config()?;
        tls.alpn_protocols = vec![firebuild_pki::ALPN_H2.to_vec()];
        let tls = tokio_rustls::TlsConnector::from(Arc::new(tls));
        let addr = config.grpc_host_port.clone();
        let host = host_of(&addr).ok_or_else(|| ClientError::Config {
            what: format!("grpc-host-port {addr:?} is not host:port"),
        })?;
        let server_name = firebuild_pki::server_name(host)?;
        let uri: Uri = format!("http://{addr}")
            .parse()
            .map_err(|e| ClientError::Config {
                what: format!("grpc-host-port {addr:?}: {e}"),
            })?;
        let h2 = options.http2;
        let endpoint = Endpoint::from(uri)
            .connect_timeout(options.connect_timeout)
            .http2_adaptive_window(h2.adaptive_window)
            .initial_stream_window_size(h2.stream_window)
            .initial_connection_window_size(h2.connection_window)
            .max_frame_size(h2.max_frame_size)
            .tcp_nodelay(h2.tcp_nodelay)
            .http2_keep_alive_interval(options.keepalive_interval)
            .keep_alive_timeout(options.keepalive_timeout)
            .keep_alive_while_idle(true);

        let nodelay = h2.tcp_nodelay;
        let connector = tower::service_fn(move |_: Uri| {
            let tls = tls.clone();
            let server_name = server_name.clone();
            let addr = addr.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(&addr).await?;
                tcp.set_nodelay(nodelay)?;
                let stream = tls.connect(server_name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        });

        let attempts = options.connect_attempts.max(1);
        let mut attempt = 0;
        let channel = loop {
            attempt += 1;
            match endpoint.connect_with_connector(connector.clone()).await {
                Ok(channel) => break channel,
                Err(e) if attempt < attempts && retryable_connect(&e) => {
                    let delay = options.backoff(attempt - 1);
                    debug!(attempt, ?delay, error = %e, "bootstrap connect failed, retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(source) => {
                    return Err(ClientError::Connect {
                        addr: config.grpc_host_port.clone(),
                        attempts: attempt,
                        source,
                    });
                }
            }
        };
        let grpc = GrpcClient::new(channel)
            .max_decoding_message_size(options.max_message_size)
            .max_encoding_message_size(options.max_message_size);
        Ok(Self {
            grpc,
            options: Arc::new(options),
            ending: Arc::new(AtomicBool::new(false)),
        })
    }

    async fn unary<Req, Resp, F, Fut>(
        &self,
        rpc: &'static str,
        req: Req,
        call: F,
    ) -> Result<Resp, ClientError>
    where
        Req: Clone,
        F: Fn(GrpcClient<Channel>, Req) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let (call_timeout, window) = (self.options.call_timeout, self.options.heartbeat_window);
        self.unary_within(rpc, req, call, call_timeout, window)
            .await
    }

    /// [`unary`](Self::unary) with its own per-call timeout and overall window.
    async fn unary_within<Req, Resp, F, Fut>(
        &self,
        rpc: &'static str,
        req: Req,
        call: F,
        call_timeout: Duration,
        window: Duration,
    ) -> Result<Resp, ClientError>
    where
        Req: Clone,
        F: Fn(GrpcClient<Channel>, Req) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let attempts = self.options.call_attempts.max(1);
        let deadline = Instant::now() + window;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let budget = deadline
                .saturating_duration_since(Instant::now())
                .min(call_timeout);
            let result = tokio::time::timeout(budget, call(self.grpc.clone(), req.clone()))
                .await
                .unwrap_or_else(|_| Err(no_answer(budget)));
            let delay = self.options.backoff(attempt - 1);
            match result {
                Ok(r) => return Ok(r.into_inner()),
                Err(status)
                    if attempt < attempts
                        && transient(&status)
                        && Instant::now() + delay < deadline =>
                {
                    debug!(rpc, attempt, ?delay, %status, "retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(status) => {
                    return Err(ClientError::Rpc {
                        rpc,
                        attempts: attempt,
                        status,
                    });
                }
            }
        }
    }

    /// The generated gRPC client on the same connection, for calls this API does not wrap. The
    /// server's guards apply as usual.
    pub fn grpc(&self) -> GrpcClient<Channel> {
        self.grpc.clone()
    }

    /// Fetches the plan. Must be the first call.
    pub async fn commands(&self) -> Result<Commands, ClientError> {
        self.commands_reporting(None).await
    }

    /// [`BootstrapClient::commands`], reporting how the guest's boot went (the server emits it
    /// as [`crate::Event::GuestBooted`]).
    pub async fn commands_reporting(
        &self,
        boot: Option<GuestBoot>,
    ) -> Result<Commands, ClientError> {
        let req = pb::CommandsRequest {
            max_message_size: u32::try_from(self.options.max_message_size).unwrap_or(u32::MAX),
            boot: boot.map(Into::into),
        };
        let resp = self
            .unary(
                "Commands",
                req,
                |mut c, r| async move { c.commands(r).await },
            )
            .await?;
        let invalid = |source| ClientError::Invalid {
            rpc: "Commands",
            source,
        };
        let plan = resp
            .plan
            .ok_or(crate::ConversionError::Missing {
                field: "CommandsResponse.plan",
            })
            .map_err(invalid)?;
        Ok(Commands {
            plan: plan.try_into().map_err(invalid)?,
            resource_ids: resp.resource_ids,
            build_id: resp.build_id,
            max_message_size: resp.max_message_size as usize,
            snapshot_steps: resp.snapshot_steps,
            freeze_at_success: resp.freeze_at_success,
        })
    }

    /// Pulls resource `id` into `sink`, verifying every chunk and the final digest. After a
    /// disconnect, a truncated stream or a stream silent for [`ClientOptions::call_timeout`] it
    /// resumes from the last verified position, up to [`ClientOptions::call_attempts`] streams
    /// in all, and gives up once no stream made progress for
    /// [`ClientOptions::heartbeat_window`].
    ///
    /// The sink is written on the calling task; a disk sink blocks it for the duration of each
    /// chunk write.
    pub async fn pull<S: Sink>(
        &self,
        id: &str,
        sink: &mut S,
    ) -> Result<TransferOutcome, ClientError> {
        self.pull_with_limits(id, sink, self.options.limits).await
    }

    /// Pulls resource `id`, which must be one regular file of at most `max_bytes`, into memory,
    /// verified as [`BootstrapClient::pull`] verifies files. The buffer is allocated once at the
    /// declared size and zeroised when dropped or when the transfer fails.
    pub async fn pull_to_memory(
        &self,
        id: &str,
        max_bytes: u64,
    ) -> Result<SecretBytes, ClientError> {
        let limits = Limits {
            max_entries: 1,
            max_file_size: max_bytes,
            max_total_size: max_bytes,
            ..self.options.limits
        };
        let mut sink = MemorySink {
            max: max_bytes,
            buf: None,
        };
        self.pull_with_limits(id, &mut sink, limits).await?;
        Ok(sink.buf.unwrap_or_default().into())
    }

    /// The value of build secret `id` (`RUN --mount=type=secret,id=<id>`), at most
    /// [`MAX_SECRET_BYTES`]. Call it between `step_started` and `step_finished` of the RUN step
    /// that mounts it: the server serves a secret only then, once per step start
    /// (`PERMISSION_DENIED` otherwise). `Ok(None)` when the build was not given the secret
    /// (skip the mount unless it is `required`).
    pub async fn fetch_secret(&self, id: &str) -> Result<Option<SecretBytes>, ClientError> {
        let resource = firebuild_plan::secret_resource_id(id);
        match self.pull_to_memory(&resource, MAX_SECRET_BYTES).await {
            Ok(value) => Ok(Some(value)),
            Err(ClientError::Rpc { status, .. }) if status.code() == Code::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn pull_with_limits<S: Sink>(
        &self,
        id: &str,
        sink: &mut S,
        limits: Limits,
    ) -> Result<TransferOutcome, ClientError> {
        let mut rx = Reassembler::with_limits(sink, limits);
        let attempts = self.options.call_attempts.max(1);
        let window = self.options.heartbeat_window;
        let mut deadline = Instant::now() + window;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let from = rx.resume_point();
            let err = match self.stream_once(id, &mut rx).await {
                Ok(()) => {
                    return rx.finish().map_err(|source| ClientError::Transfer {
                        id: id.to_owned(),
                        source,
                    });
                }
                Err(e) => e,
            };
            // A stream that moved the transfer forward renews the time allowed.
            if rx.resume_point() != from {
                deadline = Instant::now() + window;
            }
            let delay = self.options.backoff(attempt - 1);
            let retry = match &err {
                PullError::Status(s) => transient(s),
                PullError::Truncated => true,
                PullError::Transfer(e) => matches!(
                    e,
                    firebuild_transfer::Error::BadChecksum { .. }
                        | firebuild_transfer::Error::Truncated { .. }
                ),
                PullError::Invalid(_) => false,
            };
            if !retry || attempt >= attempts || Instant::now() + delay >= deadline {
                rx.abort();
                return Err(match err {
                    PullError::Status(status) => ClientError::Rpc {
                        rpc: "ResourceChunk",
                        attempts: attempt,
                        status,
                    },
                    PullError::Truncated => ClientError::Rpc {
                        rpc: "ResourceChunk",
                        attempts: attempt,
                        status: tonic::Status::unavailable("stream ended before eof"),
                    },
                    PullError::Transfer(source) => ClientError::Transfer {
                        id: id.to_owned(),
                        source,
                    },
                    PullError::Invalid(source) => ClientError::Invalid {
                        rpc: "ResourceChunk",
                        source,
                    },
                });
            }
            warn!(id, ?from, to = ?rx.resume_point(), attempt, ?delay, error = %err, "resource stream interrupted, resuming");
            tokio::time::sleep(delay).await;
        }
    }

    async fn stream_once<S: Sink>(
        &self,
        id: &str,
        rx: &mut Reassembler<S>,
    ) -> Result<(), PullError> {
        let req = pb::ResourceChunkRequest {
            resource_id: id.to_owned(),
            resume: Some(rx.resume_point().into()),
        };
        // A host that stops sending (frozen, or the connection silently gone) must not hang the
        // pull: the stream is resumed after `call_timeout` without a message.
        let idle = self.options.call_timeout;
        let mut grpc = self.grpc.clone();
        let mut stream = tokio::time::timeout(idle, grpc.resource_chunk(req))
            .await
            .unwrap_or_else(|_| Err(no_answer(idle)))
            .map_err(PullError::Status)?
            .into_inner();
        while let Some(frame) = tokio::time::timeout(idle, stream.message())
            .await
            .unwrap_or_else(|_| Err(no_answer(idle)))
            .map_err(PullError::Status)?
        {
            let frame = firebuild_transfer::Frame::try_from(frame).map_err(PullError::Invalid)?;
            let eof = matches!(frame, firebuild_transfer::Frame::Eof(_));
            rx.push(frame).map_err(PullError::Transfer)?;
            if eof {
                return Ok(());
            }
        }
        Err(PullError::Truncated)
    }

    /// Reports that a step begins.
    pub async fn step_started(&self, step: StepRef) -> Result<(), ClientError> {
        let req = pb::StepStartedRequest {
            step: Some(step.into()),
        };
        self.unary("StepStarted", req, |mut c, r| async move {
            c.step_started(r).await
        })
        .await
        .map(drop)
    }

    /// Reports that a step ended with `exit_code`.
    pub async fn step_finished(&self, step: StepRef, exit_code: i32) -> Result<(), ClientError> {
        let req = pb::StepFinishedRequest {
            step: Some(step.into()),
            exit_code,
        };
        self.unary("StepFinished", req, |mut c, r| async move {
            c.step_finished(r).await
        })
        .await
        .map(drop)
    }

    /// [`step_finished`](Self::step_finished) when the host snapshots the disk before it answers
    /// ([`Commands::snapshot_steps`]): each attempt may take up to `wait`.
    pub async fn step_finished_snapshot(
        &self,
        step: StepRef,
        wait: Duration,
    ) -> Result<(), ClientError> {
        let req = pb::StepFinishedRequest {
            step: Some(step.into()),
            exit_code: 0,
        };
        let call = |mut c: GrpcClient<Channel>, r| async move { c.step_finished(r).await };
        self.unary_within("StepFinished", req, call, wait, wait)
            .await
            .map(drop)
    }

    /// Reports success: every step ran.
    pub async fn success(&self) -> Result<(), ClientError> {
        self.ending.store(true, Ordering::Release);
        self.unary("Success", pb::SuccessRequest {}, |mut c, r| async move {
            c.success(r).await
        })
        .await
        .map(drop)
    }

    /// Reports failure.
    pub async fn abort(
        &self,
        error: impl Into<String>,
        step: Option<StepRef>,
        exit_code: Option<i32>,
    ) -> Result<(), ClientError> {
        self.ending.store(true, Ordering::Release);
        let req = pb::AbortRequest {
            error: error.into(),
            step: step.map(Into::into),
            exit_code,
        };
        self.unary("Abort", req, |mut c, r| async move { c.abort(r).await })
            .await
            .map(drop)
    }

    /// One heartbeat.
    pub async fn heartbeat(&self, sequence: u64) -> Result<(), ClientError> {
        self.unary(
            "Heartbeat",
            pb::HeartbeatRequest { sequence },
            |mut c, r| async move { c.heartbeat(r).await },
        )
        .await
        .map(drop)
    }

    /// Sends a heartbeat every `interval` (default [`DEFAULT_HEARTBEAT_INTERVAL`] when `None`)
    /// until the returned task is dropped, the server refuses one (build over) or none was
    /// answered for [`ClientOptions::heartbeat_window`]; [`HeartbeatTask::lost`] tells the last
    /// two apart from a healthy host. Each heartbeat waits at most
    /// [`ClientOptions::call_timeout`] for its answer.
    ///
    /// A refusal before any heartbeat was answered (the plan not fetched yet) is not an end:
    /// the task keeps trying, so it may be spawned before [`BootstrapClient::commands`]. A
    /// refusal after this client sent `Success` or `Abort` ends the task without a loss.
    pub fn spawn_heartbeat(&self, interval: Option<Duration>) -> HeartbeatTask {
        let interval = interval.unwrap_or(DEFAULT_HEARTBEAT_INTERVAL);
        let (lost_tx, lost) = watch::channel(None);
        let task = tokio::spawn(heartbeat_loop(
            self.grpc.clone(),
            interval,
            self.options.heartbeat_window,
            self.options.call_timeout,
            Arc::clone(&self.ending),
            lost_tx,
        ));
        HeartbeatTask { task, lost }
    }

    /// An output reporter: lines are batched per stream and flushed when a batch reaches
    /// `options.max_batch_bytes` or every `options.flush_interval`.
    pub fn output(&self, options: OutputOptions) -> OutputReporter {
        let (tx, rx) = mpsc::channel(options.queue);
        let max_batch = options
            .max_batch_bytes
            .min(self.options.max_message_size.saturating_sub(1024))
            .max(1);
        let task = tokio::spawn(batcher(
            rx,
            self.grpc.clone(),
            max_batch,
            options.flush_interval,
        ));
        OutputReporter { tx, task }
    }
}

/// The heartbeat loop of [`BootstrapClient::spawn_heartbeat`]; ends by publishing the loss.
async fn heartbeat_loop(
    mut grpc: GrpcClient<Channel>,
    interval: Duration,
    window: Duration,
    call_timeout: Duration,
    ending: Arc<AtomicBool>,
    lost: watch::Sender<Option<HostLost>>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sequence = 0u64;
    let mut answered = false;
    // The connection was just made: the window starts now.
    let mut last_answer = Instant::now();
    let silence = tokio::time::sleep_until(last_answer + window);
    tokio::pin!(silence);
    loop {
        let beat = async {
            ticker.tick().await;
            sequence += 1;
            tokio::time::timeout(
                call_timeout,
                grpc.heartbeat(pb::HeartbeatRequest { sequence }),
            )
            .await
            .unwrap_or_else(|_| Err(no_answer(call_timeout)))
        };
        tokio::select! {
            () = &mut silence => {
                let silent = last_answer.elapsed();
                warn!(?silent, "no heartbeat answered: bootstrap server lost");
                lost.send_replace(Some(HostLost::Silent { silent }));
                return;
            }
            result = beat => match result {
                Ok(_) => {
                    answered = true;
                    last_answer = Instant::now();
                    silence.as_mut().reset(last_answer + window);
                }
                Err(s) if s.code() == Code::FailedPrecondition && answered => {
                    debug!(status = %s, "heartbeat refused, stopping");
                    // After our own `Success` or `Abort` the refusal is the expected end.
                    if !ending.load(Ordering::Acquire) {
                        lost.send_replace(Some(HostLost::Refused {
                            message: s.message().to_owned(),
                        }));
                    }
                    return;
                }
                Err(s) => debug!(status = %s, "heartbeat failed"),
            },
        }
    }
}

/// Why [`HeartbeatTask::lost`] fired: the guest should stop the build.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostLost {
    /// No heartbeat was answered for the heartbeat window (the host died, froze or is cut off).
    #[error("no heartbeat answered for {}s", silent.as_secs())]
    Silent {
        /// Time since the last answered heartbeat (or since the task started).
        silent: Duration,
    },
    /// The server refused a heartbeat after answering earlier ones: it ended the build.
    #[error("the server ended the build: {message}")]
    Refused {
        /// The server's message.
        message: String,
    },
}

/// Receives a one-file resource into a zeroised buffer of its declared size.
struct MemorySink {
    max: u64,
    buf: Option<Zeroizing<Vec<u8>>>,
}

impl Sink for MemorySink {
    fn begin_entry(&mut self, header: &Header) -> std::io::Result<()> {
        let refuse = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        if header.index != 0 || header.kind != EntryKind::File || !header.path.is_empty() {
            return Err(refuse(format!(
                "expected one regular file, got a {:?} entry {:?}",
                header.kind, header.path
            )));
        }
        if header.size > self.max {
            return Err(refuse(format!(
                "{} bytes, more than the {} allowed",
                header.size, self.max
            )));
        }
        let size = usize::try_from(header.size).map_err(|_| refuse("too large".into()))?;
        // Exact capacity: the vector never reallocates, so no unzeroised copy is left behind.
        self.buf = Some(Zeroizing::new(Vec::with_capacity(size)));
        Ok(())
    }

    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        let buf = self.buf.as_mut().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "data before the header")
        })?;
        if buf.len() + data.len() > buf.capacity() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "more data than declared",
            ));
        }
        buf.extend_from_slice(data);
        Ok(())
    }

    fn end_entry(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    fn abort(&mut self) {
        // Dropping the Zeroizing buffer wipes it.
        self.buf = None;
    }
}

enum PullError {
    Status(tonic::Status),
    Truncated,
    Transfer(firebuild_transfer::Error),
    Invalid(crate::ConversionError),
}

impl fmt::Display for PullError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PullError::Status(s) => write!(f, "{s}"),
            PullError::Truncated => f.write_str("stream ended before eof"),
            PullError::Transfer(e) => write!(f, "{e}"),
            PullError::Invalid(e) => write!(f, "{e}"),
        }
    }
}

fn host_of(addr: &str) -> Option<&str> {
    let (host, port) = addr.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then_some(host)
}

/// The background heartbeat; stops when dropped.
#[derive(Debug)]
pub struct HeartbeatTask {
    task: JoinHandle<()>,
    lost: watch::Receiver<Option<HostLost>>,
}

impl HeartbeatTask {
    /// Stops sending heartbeats.
    pub fn stop(self) {}

    /// Resolves when the host is lost: no heartbeat answered for
    /// [`ClientOptions::heartbeat_window`], or a heartbeat refused because the server ended the
    /// build. Pending for as long as the host answers. Independent of `self` (select on it while
    /// the task runs); cancel-safe.
    ///
    /// ```no_run
    /// # async fn build(client: firebuild_bootstrap::BootstrapClient) {
    /// let heartbeat = client.spawn_heartbeat(None);
    /// tokio::select! {
    ///     () = async { /* run the steps */ } => {}
    ///     lost = heartbeat.lost() => eprintln!("bootstrap server lost: {lost}"),
    /// }
    /// # }
    /// ```
    pub fn lost(&self) -> impl Future<Output = HostLost> + Send + 'static {
        let mut rx = self.lost.clone();
        async move {
            if let Ok(lost) = rx.wait_for(Option::is_some).await
                && let Some(lost) = lost.clone()
            {
                return lost;
            }
            // The task was stopped without a loss: never fires.
            std::future::pending().await
        }
    }
}

impl Drop for HeartbeatTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Batching settings of an [`OutputReporter`].
#[derive(Debug, Clone, Copy)]
pub struct OutputOptions {
    /// Flush a stream's batch once it holds this many bytes of lines (capped below the message
    /// limit).
    pub max_batch_bytes: usize,
    /// Flush pending lines at least this often.
    pub flush_interval: Duration,
    /// Lines queued between the caller and the batcher.
    pub queue: usize,
}

impl Default for OutputOptions {
    fn default() -> Self {
        Self {
            max_batch_bytes: 64 * 1024,
            flush_interval: Duration::from_millis(50),
            queue: 1024,
        }
    }
}

/// Streams output lines to the server in batches (at most one `StdOut` and one `StdErr` call for
/// the reporter's lifetime, each opened by its stream's first line; not one RPC per line).
#[derive(Debug)]
pub struct OutputReporter {
    tx: mpsc::Sender<(OutputStream, StepRef, Vec<u8>)>,
    task: JoinHandle<Result<u64, ClientError>>,
}

impl OutputReporter {
    /// Queues one line (without its terminator).
    pub async fn line(
        &self,
        step: StepRef,
        stream: OutputStream,
        line: impl Into<Vec<u8>>,
    ) -> Result<(), ClientError> {
        self.tx
            .send((stream, step, line.into()))
            .await
            .map_err(|_| ClientError::Reporter)
    }

    /// Flushes everything, closes both streams and returns how many lines the server took.
    pub async fn finish(self) -> Result<u64, ClientError> {
        drop(self.tx);
        self.task.await.map_err(|_| ClientError::Reporter)?
    }
}

/// One output stream's call (`StdOut` or `StdErr`), opened by the stream's first batch: a
/// step that writes nothing to a stream costs no call (under TCG each call costs the guest tens
/// of milliseconds).
struct OutputCall {
    stream: OutputStream,
    open: Option<(mpsc::Sender<pb::OutputBatch>, CallAnswer)>,
}

/// The answer to an output call: how many lines the server took.
type CallAnswer = JoinHandle<Result<u64, tonic::Status>>;

impl OutputCall {
    fn new(stream: OutputStream) -> Self {
        Self { stream, open: None }
    }

    /// Sends `batch`, opening the call first if needed. A closed stream surfaces as the call's
    /// error in [`OutputCall::close`].
    async fn send(&mut self, grpc: &GrpcClient<Channel>, batch: pb::OutputBatch) {
        let stream = self.stream;
        let (tx, _) = self.open.get_or_insert_with(|| {
            let (tx, rx) = mpsc::channel::<pb::OutputBatch>(4);
            let mut grpc = grpc.clone();
            let call = tokio::spawn(async move {
                let batches = tokio_stream::wrappers::ReceiverStream::new(rx);
                let answer = match stream {
                    OutputStream::Stdout => grpc.std_out(batches).await,
                    OutputStream::Stderr => grpc.std_err(batches).await,
                };
                answer.map(|r| r.into_inner().lines)
            });
            (tx, call)
        });
        let _ = tx.send(batch).await;
    }

    /// Ends the request stream (at once: the other call's end need not wait for this one's
    /// answer) and returns the answer to come.
    fn close(self) -> impl Future<Output = Result<u64, ClientError>> {
        let rpc = match self.stream {
            OutputStream::Stdout => "StdOut",
            OutputStream::Stderr => "StdErr",
        };
        let call = self.open.map(|(_, call)| call);
        async move {
            let Some(call) = call else {
                // Never opened: nothing was sent.
                return Ok(0);
            };
            call.await
                .map_err(|_| ClientError::Reporter)?
                .map_err(|status| ClientError::Rpc {
                    rpc,
                    attempts: 1,
                    status,
                })
        }
    }
}

async fn batcher(
    mut rx: mpsc::Receiver<(OutputStream, StepRef, Vec<u8>)>,
    grpc: GrpcClient<Channel>,
    max_batch: usize,
    interval: Duration,
) -> Result<u64, ClientError> {
    let mut batches = [
        (pb::OutputBatch::default(), 0usize),
        (pb::OutputBatch::default(), 0usize),
    ];
    let mut calls = [
        OutputCall::new(OutputStream::Stdout),
        OutputCall::new(OutputStream::Stderr),
    ];
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    async fn flush(
        slot: &mut (pb::OutputBatch, usize),
        call: &mut OutputCall,
        grpc: &GrpcClient<Channel>,
    ) {
        if slot.0.lines.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut slot.0);
        slot.1 = 0;
        call.send(grpc, batch).await;
    }
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let Some((stream, step, line)) = msg else { break };
                let i = usize::from(stream == OutputStream::Stderr);
                let len = line.len() + 16;
                if batches[i].1 + len > max_batch {
                    flush(&mut batches[i], &mut calls[i], &grpc).await;
                }
                batches[i].0.lines.push(pb::OutputLine { step: Some(step.into()), line });
                batches[i].1 += len;
            }
            _ = ticker.tick() => {
                for (slot, call) in batches.iter_mut().zip(&mut calls) {
                    flush(slot, call, &grpc).await;
                }
            }
        }
    }
    for (slot, call) in batches.iter_mut().zip(&mut calls) {
        flush(slot, call, &grpc).await;
    }
    let [out, err] = calls.map(OutputCall::close);
    let (out, err) = tokio::join!(out, err);
    Ok(out? + err?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_splits_ipv4_ipv6_and_names() {
        assert_eq!(host_of("169.254.0.2:7000"), Some("169.254.0.2"));
        assert_eq!(host_of("[::1]:7000"), Some("::1"));
        assert_eq!(host_of("bootstrap.local:1"), Some("bootstrap.local"));
        assert_eq!(host_of("nohost"), None);
        assert_eq!(host_of(":80"), None);
        assert_eq!(host_of("h:notaport"), None);
    }

    #[test]
    fn config_reads_mmds_names_and_redacts_the_key() {
        let json = r#"{"grpc-host-port":"10.0.0.1:5","tls-ca-cert":"ca","tls-cert":"c",
                       "tls-key":"-----BEGIN PRIVATE KEY-----\nsecret"}"#;
        let cfg: BootstrapConfig = serde_json::from_str(json).unwrap();
        assert_eq!(cfg.tls_ca_cert, "ca");
        assert!(cfg.tls_key.expose_secret().contains("secret"));
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("secret") && dbg.contains("redacted"), "{dbg}");
        // A missing field is an error naming it.
        let err = serde_json::from_str::<BootstrapConfig>(r#"{"grpc-host-port":"a:1"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("tls-ca-cert"), "{err}");
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let o = ClientOptions::default();
        assert_eq!(o.backoff(0), Duration::from_millis(100));
        assert_eq!(o.backoff(1), Duration::from_millis(200));
        assert_eq!(o.backoff(3), Duration::from_millis(800));
        assert_eq!(o.backoff(30), Duration::from_secs(5));
    }

    #[test]
    fn default_waits_fit_in_the_servers_heartbeat_timeout() {
        let o = ClientOptions::default();
        // The guest gives up on a silent host no later than the host gives up on the guest.
        assert!(o.heartbeat_window <= DEFAULT_HEARTBEAT_TIMEOUT);
        // A frozen connection is closed, and one attempt ends, well inside the window, so a
        // call gets at least a second attempt on a new connection.
        assert!(o.keepalive_interval + o.keepalive_timeout < o.heartbeat_window / 2);
        assert!(o.call_timeout < o.heartbeat_window / 2);
        assert!(o.connect_timeout <= o.call_timeout);
        // Several heartbeats per window: one lost packet is not a lost host.
        assert!(DEFAULT_HEARTBEAT_INTERVAL * 5 < o.heartbeat_window);
    }
}
