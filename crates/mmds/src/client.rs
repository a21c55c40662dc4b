//! The guest-side MMDS client.
//!
//! V2 by default: a session token from `PUT /latest/api/token` is cached and refreshed before
//! it expires (and once more on a 401); V1 (no token) only when configured. Every call has one
//! overall deadline; within it, connection failures, timeouts and 5xx replies are retried with
//! exponential backoff. The errors keep apart what a guest must not confuse:
//! [`Error::Unreachable`] (no answer: an outage, never "a new instance"), [`Error::NotFound`]
//! (the server answered that nothing is there), [`Error::Unauthorized`] and
//! [`Error::Disabled`].
//!
//! ```no_run
//! # async fn f() -> Result<(), firebuild_mmds::client::Error> {
//! use firebuild_mmds::client::{Client, ClientConfig};
//!
//! let client = Client::new(ClientConfig::default()); // 169.254.169.254:80, V2
//! let (metadata, etag) = client.fetch_metadata().await?;
//! if metadata.is_build_mode() { /* connect to the bootstrap server */ }
//! // Block until the host changes anything (or 60 s pass).
//! let _changed = client
//!     .wait_for_change("/", &etag, std::time::Duration::from_secs(60))
//!     .await?;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, ETAG, HOST};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::MmdsVersion;
use crate::http::{Reply, TransportError, encode_path, roundtrip};
use crate::imds;
use crate::schema::{self, Metadata};
use crate::server::{TOKEN_HEADER, TOKEN_PATH, TTL_HEADER};
use crate::store::etag_of;

/// Errors of the guest client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No HTTP answer within the deadline (connection refused, reset, timed out).
    #[error("metadata service at {addr} unreachable after {attempts} attempts")]
    Unreachable {
        /// The service address.
        addr: SocketAddr,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        #[source]
        source: TransportError,
    },
    /// The service answered 404 for the path.
    #[error("no metadata at `{path}`")]
    NotFound {
        /// The requested path.
        path: String,
    },
    /// The service refused the token (or, in V2, a fresh one too).
    #[error("metadata service refused the session token for `{path}`")]
    Unauthorized {
        /// The requested path.
        path: String,
    },
    /// The host switched the guest side off (503).
    #[error("metadata service is disabled")]
    Disabled,
    /// Any other status (400, 405, 501, or a 5xx that lasted until the deadline).
    #[error("metadata service answered {status} for `{path}`: {body}")]
    Status {
        /// The requested path.
        path: String,
        /// The status.
        status: StatusCode,
        /// The start of the body (at most 200 bytes).
        body: String,
    },
    /// The answer is not the JSON it should be.
    #[error("metadata at `{path}` is not JSON")]
    Json {
        /// The requested path.
        path: String,
        /// The decoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// The answer is not valid UTF-8 text.
    #[error("metadata at `{path}` is not UTF-8 text")]
    NotText {
        /// The requested path.
        path: String,
    },
    /// The IMDS listing is malformed.
    #[error("metadata listing at `{path}` is malformed")]
    Listing {
        /// The requested path.
        path: String,
        /// The parser's error.
        #[source]
        source: imds::ParseError,
    },
    /// The metadata document breaks the schema.
    #[error("metadata document refused")]
    Metadata(#[source] schema::Error),
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Service address (default `169.254.169.254:80`).
    pub addr: SocketAddr,
    /// V2 (tokens, the default) or V1.
    pub version: MmdsVersion,
    /// TTL asked for each token (1..=21600 s; default 21600 s).
    pub token_ttl: Duration,
    /// One overall deadline per call, retries included (default 10 s).
    pub deadline: Duration,
    /// Longest single attempt (default 2 s).
    pub attempt_timeout: Duration,
    /// First pause between attempts (default 50 ms), doubling each time.
    pub initial_backoff: Duration,
    /// Longest pause between attempts (default 1 s).
    pub max_backoff: Duration,
    /// Largest reply body accepted (default 1 MiB).
    pub max_body: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            addr: SocketAddr::from(([169, 254, 169, 254], 80)),
            version: MmdsVersion::V2,
            token_ttl: Duration::from_secs(21600),
            deadline: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(2),
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            max_body: 1 << 20,
        }
    }
}

impl ClientConfig {
    /// Defaults, talking to `addr`.
    pub fn with_addr(addr: SocketAddr) -> Self {
        ClientConfig {
            addr,
            ..ClientConfig::default()
        }
    }
}

struct CachedToken {
    value: Zeroizing<String>,
    refresh_at: Instant,
}

/// The guest-side MMDS client (cheap to share behind an `Arc`; calls may run concurrently).
pub struct Client {
    cfg: ClientConfig,
    token: Mutex<Option<CachedToken>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// A successful reply to a GET.
struct Got {
    status: StatusCode,
    etag: Option<String>,
    body: Bytes,
}

enum Step {
    /// Retry after a pause; the failure is remembered.
    Retry(Failure),
    /// Retry at once (a refreshed token).
    Again,
    Done(Result<Got, Error>),
}

enum Failure {
    Transport(TransportError),
    Status(StatusCode, String),
}

impl Client {
    /// A client with these settings.
    pub fn new(cfg: ClientConfig) -> Client {
        Client {
            cfg,
            token: Mutex::new(None),
        }
    }

    /// The settings.
    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// The whole document as JSON, decoded, validated and with its user-data parts merged
    /// ([`Metadata::effective`]), plus its ETag.
    pub async fn fetch_metadata(&self) -> Result<(Metadata, String), Error> {
        let got = self.get("/", true, None).await?;
        let md = Metadata::from_json_slice_with_limit(&got.body, self.cfg.max_body)
            .and_then(|m| m.effective())
            .map_err(Error::Metadata)?;
        let etag = etag_or_hash(&got, "/")?;
        Ok((md, etag))
    }

    /// The JSON value at `path` (`/` for the root) and its ETag.
    pub async fn get_json(&self, path: &str) -> Result<(Value, String), Error> {
        let got = self.get(path, true, None).await?;
        let v = json_of(&got.body, path)?;
        let etag = got.etag.unwrap_or_else(|| etag_of(Some(&v)));
        Ok((v, etag))
    }

    /// The IMDS text at `path` (a string leaf raw, or an object's listing) and the ETag the
    /// server sent, if any.
    pub async fn get_text(&self, path: &str) -> Result<(String, Option<String>), Error> {
        let got = self.get(path, false, None).await?;
        let text = String::from_utf8(got.body.to_vec()).map_err(|_| Error::NotText {
            path: path.to_owned(),
        })?;
        Ok((text, got.etag))
    }

    /// The keys of the object at `path`, parsed from its IMDS listing.
    pub async fn list(&self, path: &str) -> Result<Vec<imds::Entry>, Error> {
        let (text, _) = self.get_text(path).await?;
        imds::parse_listing(&text).map_err(|source| Error::Listing {
            path: path.to_owned(),
            source,
        })
    }

    /// Long-polls `path`: returns the new value and ETag as soon as the value's ETag is not
    /// `last_etag`, or `None` if nothing changed within `timeout` (whole seconds, at least 1).
    ///
    /// Only this crate's server supports it; Firecracker's own MMDS has no long-poll (poll
    /// [`Client::get_json`] there and compare ETags, which the client computes itself when the
    /// server sends none).
    pub async fn wait_for_change(
        &self,
        path: &str,
        last_etag: &str,
        timeout: Duration,
    ) -> Result<Option<(Value, String)>, Error> {
        let secs = timeout
            .as_secs()
            .clamp(1, crate::server::MAX_LONG_POLL_SECS);
        let query = format!(
            "wait_for_change=true&last_etag={}&timeout_sec={secs}",
            encode_path(last_etag)
        );
        let got = self
            .get(path, true, Some((query, Duration::from_secs(secs))))
            .await?;
        if got.status == StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        let v = json_of(&got.body, path)?;
        let etag = got.etag.unwrap_or_else(|| etag_of(Some(&v)));
        Ok(Some((v, etag)))
    }

    /// Deletes a consumed value (`schema::is_consumable`) on a server that allows guest writes
    /// (this crate's, `ServerBuilder::guest_writes`). One attempt, token-bound.
    pub async fn delete(&self, path: &str) -> Result<(), Error> {
        self.write(Method::DELETE, path, Bytes::new()).await
    }

    /// Writes the guest status (`schema::GUEST_STATUS_POINTER`) on a server that allows guest
    /// writes. One attempt, token-bound.
    pub async fn put_status(&self, status: &crate::schema::GuestStatus) -> Result<(), Error> {
        let body = serde_json::to_vec(status).unwrap_or_default();
        self.write(
            Method::PUT,
            crate::schema::GUEST_STATUS_POINTER,
            body.into(),
        )
        .await
    }

    async fn write(&self, method: Method, path: &str, body: Bytes) -> Result<(), Error> {
        for retry in [false, true] {
            let token = match self.token().await {
                Ok(t) => t,
                Err(Step::Done(Err(e))) => return Err(e),
                Err(Step::Retry(f)) => return Err(self.give_up(path, 1, f)),
                Err(_) => continue,
            };
            let req = Request::builder()
                .method(method.clone())
                .uri(encode_path(path))
                .header(HOST, self.host())
                .header(http::header::CONTENT_TYPE, "application/json")
                .header(TOKEN_HEADER, token.as_str());
            let sent =
                tokio::time::timeout(self.cfg.attempt_timeout, self.send_body(req, body.clone()));
            let reply = match sent.await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => return Err(self.give_up(path, 1, Failure::Transport(e))),
                Err(_) => {
                    let timed_out = TransportError::TimedOut(self.cfg.attempt_timeout);
                    return Err(self.give_up(path, 1, Failure::Transport(timed_out)));
                }
            };
            match reply.status {
                s if s.is_success() => return Ok(()),
                StatusCode::UNAUTHORIZED if !retry => *self.token.lock().await = None,
                StatusCode::NOT_FOUND => {
                    return Err(Error::NotFound {
                        path: path.to_owned(),
                    });
                }
                s => {
                    return Err(Error::Status {
                        path: path.to_owned(),
                        status: s,
                        body: snippet(&reply.body),
                    });
                }
            }
        }
        Err(Error::Unauthorized {
            path: path.to_owned(),
        })
    }

    /// Forgets the cached token (the next call fetches a new one).
    pub async fn reset_token(&self) {
        *self.token.lock().await = None;
    }

    async fn get(
        &self,
        path: &str,
        json: bool,
        long_poll: Option<(String, Duration)>,
    ) -> Result<Got, Error> {
        let extra = long_poll.as_ref().map_or(Duration::ZERO, |(_, d)| *d);
        let deadline = Instant::now() + self.cfg.deadline + extra;
        let mut backoff = self.cfg.initial_backoff;
        let mut attempts = 0u32;
        let mut refreshed = false;
        let mut last = Failure::Transport(TransportError::TimedOut(Duration::ZERO));
        let target = match &long_poll {
            Some((q, _)) => format!("{}?{q}", encode_path(path)),
            None => encode_path(path),
        };
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(self.give_up(path, attempts, last));
            }
            attempts += 1;
            let attempt = (self.cfg.attempt_timeout + extra).min(deadline - now);
            let step = match tokio::time::timeout(
                attempt,
                self.attempt(path, &target, json, &mut refreshed),
            )
            .await
            {
                Ok(step) => step,
                Err(_) => Step::Retry(Failure::Transport(TransportError::TimedOut(attempt))),
            };
            match step {
                Step::Done(r) => return r,
                Step::Again => continue,
                Step::Retry(f) => {
                    tracing::debug!(path, attempts, "mmds attempt failed; retrying");
                    last = f;
                }
            }
            let pause = backoff.min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(self.cfg.max_backoff);
        }
    }

    fn give_up(&self, path: &str, attempts: u32, last: Failure) -> Error {
        match last {
            Failure::Transport(source) => Error::Unreachable {
                addr: self.cfg.addr,
                attempts,
                source,
            },
            Failure::Status(status, body) => Error::Status {
                path: path.to_owned(),
                status,
                body,
            },
        }
    }

    async fn attempt(&self, path: &str, target: &str, json: bool, refreshed: &mut bool) -> Step {
        let token = match self.cfg.version {
            MmdsVersion::V1 => None,
            MmdsVersion::V2 => match self.token().await {
                Ok(t) => Some(t),
                Err(step) => return step,
            },
        };
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(target)
            .header(HOST, self.host());
        if json {
            req = req.header(ACCEPT, "application/json");
        }
        if let Some(t) = &token {
            req = req.header(TOKEN_HEADER, t.as_str());
        }
        let reply = match self.send(req).await {
            Ok(r) => r,
            Err(e) => return Step::Retry(Failure::Transport(e)),
        };
        match reply.status {
            StatusCode::OK | StatusCode::NOT_MODIFIED => Step::Done(Ok(Got {
                status: reply.status,
                etag: reply
                    .headers
                    .get(ETAG)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                body: reply.body,
            })),
            StatusCode::NOT_FOUND => Step::Done(Err(Error::NotFound {
                path: path.to_owned(),
            })),
            StatusCode::UNAUTHORIZED if self.cfg.version == MmdsVersion::V2 && !*refreshed => {
                *refreshed = true;
                *self.token.lock().await = None;
                Step::Again
            }
            StatusCode::UNAUTHORIZED => Step::Done(Err(Error::Unauthorized {
                path: path.to_owned(),
            })),
            StatusCode::SERVICE_UNAVAILABLE => Step::Done(Err(Error::Disabled)),
            s if s.is_server_error() && s != StatusCode::NOT_IMPLEMENTED
                || s == StatusCode::TOO_MANY_REQUESTS =>
            {
                Step::Retry(Failure::Status(s, snippet(&reply.body)))
            }
            s => Step::Done(Err(Error::Status {
                path: path.to_owned(),
                status: s,
                body: snippet(&reply.body),
            })),
        }
    }

    /// A valid cached token or a new one (one attempt; errors become steps).
    async fn token(&self) -> Result<Zeroizing<String>, Step> {
        let mut guard = self.token.lock().await;
        if let Some(t) = guard.as_ref()
            && Instant::now() < t.refresh_at
        {
            return Ok(t.value.clone());
        }
        let ttl = self.cfg.token_ttl.as_secs().clamp(1, 21600);
        let req = Request::builder()
            .method(Method::PUT)
            .uri(TOKEN_PATH)
            .header(HOST, self.host())
            .header(TTL_HEADER, ttl.to_string());
        let reply = self
            .send(req)
            .await
            .map_err(|e| Step::Retry(Failure::Transport(e)))?;
        match reply.status {
            StatusCode::OK => {
                let value = Zeroizing::new(
                    String::from_utf8(reply.body.to_vec())
                        .map_err(|_| {
                            Step::Done(Err(Error::NotText {
                                path: TOKEN_PATH.to_owned(),
                            }))
                        })?
                        .trim()
                        .to_owned(),
                );
                // Refresh when a fifth of the lifetime (at most a minute) is left.
                let ttl = Duration::from_secs(ttl);
                let margin = (ttl / 5).min(Duration::from_secs(60));
                *guard = Some(CachedToken {
                    value: value.clone(),
                    refresh_at: Instant::now() + ttl - margin,
                });
                Ok(value)
            }
            StatusCode::SERVICE_UNAVAILABLE => Err(Step::Done(Err(Error::Disabled))),
            // Transient as for a GET: a 429 while asking for the token is not final either.
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                Err(Step::Retry(Failure::Status(s, snippet(&reply.body))))
            }
            s => Err(Step::Done(Err(Error::Status {
                path: TOKEN_PATH.to_owned(),
                status: s,
                body: snippet(&reply.body),
            }))),
        }
    }

    fn host(&self) -> String {
        match self.cfg.addr.port() {
            80 => self.cfg.addr.ip().to_string(),
            _ => self.cfg.addr.to_string(),
        }
    }

    async fn send(&self, req: http::request::Builder) -> Result<Reply, TransportError> {
        self.send_body(req, Bytes::new()).await
    }

    async fn send_body(
        &self,
        req: http::request::Builder,
        body: Bytes,
    ) -> Result<Reply, TransportError> {
        let req = req
            .body(Full::new(body))
            .map_err(|e| TransportError::Io(std::io::Error::other(e)))?;
        let stream = tokio::net::TcpStream::connect(self.cfg.addr).await?;
        let _ = stream.set_nodelay(true);
        roundtrip(stream, req, self.cfg.max_body, false).await
    }
}

fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(&body[..body.len().min(200)]);
    s.into_owned()
}

fn json_of(body: &[u8], path: &str) -> Result<Value, Error> {
    serde_json::from_slice(body).map_err(|source| Error::Json {
        path: path.to_owned(),
        source,
    })
}

fn etag_or_hash(got: &Got, path: &str) -> Result<String, Error> {
    match &got.etag {
        Some(e) => Ok(e.clone()),
        None => Ok(etag_of(Some(&json_of(&got.body, path)?))),
    }
}
