//! A writer for Firecracker's API socket: `PUT /mmds/config`, `PUT /mmds`, `PATCH /mmds`,
//! `GET /mmds`.
//!
//! The same calls work against this crate's [`crate::server`] host socket, which mirrors them.
//! Firecracker's faults (`{"fault_message": "..."}` with 400 or 413) become
//! [`Error::BadRequest`] and [`Error::PayloadTooLarge`] carrying its message.
//!
//! ```no_run
//! # async fn f() -> Result<(), firebuild_mmds::firecracker::Error> {
//! use firebuild_mmds::firecracker::{FirecrackerApi, MmdsConfig};
//!
//! let api = FirecrackerApi::new("/run/fc/api.sock");
//! api.put_config(&MmdsConfig::v2(["eth0"])).await?;
//! api.put(&serde_json::json!({"hostname": "vm1"})).await?;
//! api.patch(&serde_json::json!({"bootstrap": null})).await?; // scrub
//! # Ok(()) }
//! ```

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HOST};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use serde_json::Value;

use crate::MmdsVersion;
use crate::http::{TransportError, roundtrip};
use crate::schema::Metadata;

/// Largest reply body read from the API socket.
const MAX_REPLY: usize = 4 << 20;

/// Errors talking to Firecracker's API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The socket could not be reached or the exchange failed.
    #[error("firecracker api at {} failed", socket.display())]
    Transport {
        /// The API socket.
        socket: PathBuf,
        /// Why.
        #[source]
        source: TransportError,
    },
    /// 400 with Firecracker's fault message.
    #[error("firecracker rejected {method} {path}: {message}")]
    BadRequest {
        /// Request method.
        method: Method,
        /// Request path.
        path: String,
        /// `fault_message` from the reply.
        message: String,
    },
    /// 413: the data store limit was exceeded.
    #[error("firecracker refused {method} {path} as too large: {message}")]
    PayloadTooLarge {
        /// Request method.
        method: Method,
        /// Request path.
        path: String,
        /// `fault_message` from the reply.
        message: String,
    },
    /// Another unexpected status.
    #[error("firecracker answered {status} to {method} {path}: {message}")]
    Status {
        /// Request method.
        method: Method,
        /// Request path.
        path: String,
        /// The status.
        status: StatusCode,
        /// `fault_message`, or the start of the body.
        message: String,
    },
    /// `GET /mmds` did not return JSON.
    #[error("firecracker returned data that is not JSON")]
    Json(#[source] serde_json::Error),
    /// The request could not be encoded.
    #[error("cannot encode the request body")]
    Encode(#[source] serde_json::Error),
}

/// The body of `PUT /mmds/config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MmdsConfig {
    /// `"V1"` or `"V2"`.
    pub version: &'static str,
    /// Guest interfaces (Firecracker `iface_id`s) that may reach MMDS.
    pub network_interfaces: Vec<String>,
    /// MMDS address (Firecracker default `169.254.169.254`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<Ipv4Addr>,
    /// Answer IMDS text regardless of `Accept` (Firecracker 1.11+).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub imds_compat: Option<bool>,
}

impl MmdsConfig {
    /// V2 on these interfaces, default address.
    pub fn v2<S: Into<String>>(ifaces: impl IntoIterator<Item = S>) -> Self {
        Self::new(MmdsVersion::V2, ifaces)
    }

    /// The given version on these interfaces, default address.
    pub fn new<S: Into<String>>(version: MmdsVersion, ifaces: impl IntoIterator<Item = S>) -> Self {
        MmdsConfig {
            version: match version {
                MmdsVersion::V1 => "V1",
                MmdsVersion::V2 => "V2",
            },
            network_interfaces: ifaces.into_iter().map(Into::into).collect(),
            ipv4_address: None,
            imds_compat: None,
        }
    }
}

/// A client of Firecracker's API socket for MMDS.
#[derive(Debug, Clone)]
pub struct FirecrackerApi {
    socket: PathBuf,
    timeout: Duration,
}

impl FirecrackerApi {
    /// Talks to the API socket at `socket` (10 s per request).
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        FirecrackerApi {
            socket: socket.into(),
            timeout: Duration::from_secs(10),
        }
    }

    /// Changes the per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The API socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `PUT /mmds/config` (before the VM starts).
    pub async fn put_config(&self, config: &MmdsConfig) -> Result<(), Error> {
        let body = serde_json::to_vec(config).map_err(Error::Encode)?;
        self.call(Method::PUT, "/mmds/config", Some(body))
            .await
            .map(drop)
    }

    /// `PUT /mmds`: replaces the data store.
    pub async fn put(&self, data: &Value) -> Result<(), Error> {
        let body = serde_json::to_vec(data).map_err(Error::Encode)?;
        self.call(Method::PUT, "/mmds", Some(body)).await.map(drop)
    }

    /// `PUT /mmds` with a [`Metadata`] document.
    pub async fn put_metadata(&self, md: &Metadata) -> Result<(), Error> {
        self.put(&md.to_json_value()).await
    }

    /// `PATCH /mmds`: RFC 7396 merge (`null` removes a key).
    pub async fn patch(&self, patch: &Value) -> Result<(), Error> {
        let body = serde_json::to_vec(patch).map_err(Error::Encode)?;
        self.call(Method::PATCH, "/mmds", Some(body))
            .await
            .map(drop)
    }

    /// `GET /mmds`: the whole data store.
    pub async fn get(&self) -> Result<Value, Error> {
        let body = self.call(Method::GET, "/mmds", None).await?;
        serde_json::from_slice(&body).map_err(Error::Json)
    }

    /// Deletes the value at a JSON pointer (a consumed credential, `/users/0/password`);
    /// `Ok(false)` if nothing is there.
    ///
    /// Firecracker has no pointer API, and its `PATCH /mmds` is RFC 7396, which cannot address
    /// an array element. So this reads the data store (`GET /mmds`) and sends the smallest merge
    /// patch that removes the value: `null` at its key, or, below an array, that array without
    /// the value (`{"users": [...]}`). Not atomic: another host write to the same top-level key
    /// between the two calls is lost, so the caller should be that key's only writer.
    pub async fn delete_pointer(&self, pointer: &str) -> Result<bool, Error> {
        let doc = self.get().await?;
        let Some(patch) = removal_patch(&doc, pointer) else {
            return Ok(false);
        };
        self.patch(&patch).await?;
        Ok(true)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, Error> {
        let transport = |source| Error::Transport {
            socket: self.socket.clone(),
            source,
        };
        let mut req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(HOST, "localhost")
            .header(ACCEPT, "application/json");
        if body.is_some() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| transport(TransportError::Io(std::io::Error::other(e))))?;
        let exchange = async {
            let stream = tokio::net::UnixStream::connect(&self.socket).await?;
            roundtrip(stream, req, MAX_REPLY, true).await
        };
        let reply = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| transport(TransportError::TimedOut(self.timeout)))?
            .map_err(transport)?;
        if reply.status.is_success() {
            return Ok(reply.body);
        }
        let message = fault_message(&reply.body);
        let path = path.to_owned();
        Err(match reply.status {
            StatusCode::BAD_REQUEST => Error::BadRequest {
                method,
                path,
                message,
            },
            StatusCode::PAYLOAD_TOO_LARGE => Error::PayloadTooLarge {
                method,
                path,
                message,
            },
            status => Error::Status {
                method,
                path,
                status,
                message,
            },
        })
    }
}

/// The RFC 7396 merge patch that removes the value at `pointer` from `doc`, or `None` if there
/// is none (or the pointer is the root or malformed).
fn removal_patch(doc: &Value, pointer: &str) -> Option<Value> {
    let tokens: Vec<&str> = pointer.strip_prefix('/')?.split('/').collect();
    patch_below(doc, &tokens)
}

fn patch_below(doc: &Value, tokens: &[&str]) -> Option<Value> {
    let (first, rest) = tokens.split_first()?;
    let key = first.replace("~1", "/").replace("~0", "~");
    let child = doc.as_object()?.get(&key)?;
    let inner = match child {
        _ if rest.is_empty() => Value::Null,
        Value::Object(_) => patch_below(child, rest)?,
        Value::Array(_) => {
            // A merge patch replaces an array whole: send it without the value.
            let mut copy = child.clone();
            crate::store::remove_pointer(&mut copy, &format!("/{}", rest.join("/"))).ok()?;
            copy
        }
        _ => return None,
    };
    let mut patch = serde_json::Map::new();
    patch.insert(key, inner);
    Some(Value::Object(patch))
}

/// `fault_message` of a Firecracker error body, else the start of the body.
fn fault_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Fault {
        fault_message: String,
    }
    match serde_json::from_slice::<Fault>(body) {
        Ok(f) => f.fault_message,
        Err(_) => String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use serde_json::json;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::UnixListener;

    /// Accepts one connection, records the raw request, answers `reply`.
    async fn record_one(listener: &UnixListener, reply: &'static str) -> String {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "client closed before a full request");
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let len = text[..end]
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .map_or(0, |v| v.parse::<usize>().unwrap());
                if buf.len() >= end + 4 + len {
                    break;
                }
            }
        }
        s.write_all(reply.as_bytes()).await.unwrap();
        s.shutdown().await.unwrap();
        String::from_utf8(buf).unwrap()
    }

    const NO_CONTENT: &str = "HTTP/1.1 204 No Content\r\nServer: Firecracker API\r\n\r\n";

    async fn pinned<F, Fut>(reply: &'static str, call: F) -> (String, Result<Value, Error>)
    where
        F: FnOnce(FirecrackerApi) -> Fut,
        Fut: std::future::Future<Output = Result<Value, Error>>,
    {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("fc.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let api = FirecrackerApi::new(&sock);
        let (raw, result) = tokio::join!(record_one(&listener, reply), call(api));
        (raw, result)
    }

    /// What `call` sent to an API that answers 204; the call must succeed.
    async fn sent<F, Fut>(call: F) -> String
    where
        F: FnOnce(FirecrackerApi) -> Fut,
        Fut: std::future::Future<Output = Result<(), Error>>,
    {
        let (raw, r) = pinned(NO_CONTENT, |api| async move {
            call(api).await.map(|()| Value::Null)
        })
        .await;
        r.unwrap();
        raw
    }

    #[test]
    fn removal_patches_are_minimal_merge_patches() {
        let doc = json!({
            "hostname": "vm1",
            "users": [{"name": "a", "password": {"hash": "$6$x"}}, {"name": "b"}],
            "a": {"b/c": {"d": 1, "e": 2}},
        });
        let users = json!({"users": [{"name": "a"}, {"name": "b"}]});
        assert_eq!(
            removal_patch(&doc, "/users/0/password"),
            Some(users.clone())
        );
        assert_eq!(
            removal_patch(&doc, "/hostname"),
            Some(json!({"hostname": null}))
        );
        assert_eq!(
            removal_patch(&doc, "/a/b~1c/d"),
            Some(json!({"a": {"b/c": {"d": null}}}))
        );
        for absent in [
            "/users/1/password",
            "/users/9/password",
            "/nope",
            "/hostname/x",
            "",
            "x",
        ] {
            assert_eq!(removal_patch(&doc, absent), None, "{absent}");
        }
        // Applied as Firecracker applies a PATCH, it removes exactly that value.
        let mut after = doc.clone();
        crate::store::merge_patch(&mut after, &users);
        assert_eq!(after["users"][0], json!({"name": "a"}));
        assert_eq!(after["hostname"], "vm1");
    }

    #[tokio::test]
    async fn put_config_bytes() {
        let raw = sent(|api| async move { api.put_config(&MmdsConfig::v2(["eth0"])).await }).await;
        assert_eq!(
            raw,
            "PUT /mmds/config HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
             Content-Type: application/json\r\nContent-Length: 46\r\n\r\n\
             {\"version\":\"V2\",\"network_interfaces\":[\"eth0\"]}"
        );
        let mut c = MmdsConfig::new(MmdsVersion::V1, ["eth0", "eth1"]);
        c.ipv4_address = Some(Ipv4Addr::new(169, 254, 170, 2));
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"version":"V1","network_interfaces":["eth0","eth1"],"ipv4_address":"169.254.170.2"}"#
        );
    }

    #[tokio::test]
    async fn put_and_patch_bytes() {
        let raw = sent(|api| async move {
            api.put(&json!({"latest": {"meta-data": {"ami-id": "ami-1"}}}))
                .await
        })
        .await;
        assert_eq!(
            raw,
            "PUT /mmds HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
             Content-Type: application/json\r\nContent-Length: 43\r\n\r\n\
             {\"latest\":{\"meta-data\":{\"ami-id\":\"ami-1\"}}}"
        );
        let raw = sent(|api| async move { api.patch(&json!({"bootstrap": null})).await }).await;
        assert_eq!(
            raw,
            "PATCH /mmds HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
             Content-Type: application/json\r\nContent-Length: 18\r\n\r\n{\"bootstrap\":null}"
        );
    }

    #[tokio::test]
    async fn put_metadata_bytes() {
        let md = Metadata::from_json_slice(br#"{"hostname": "vm1"}"#).unwrap();
        let raw = sent(|api| async move { api.put_metadata(&md).await }).await;
        assert_eq!(
            raw,
            "PUT /mmds HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
             Content-Type: application/json\r\nContent-Length: 30\r\n\r\n\
             {\"hostname\":\"vm1\",\"version\":1}"
        );
    }

    #[tokio::test]
    async fn get_bytes_and_body() {
        let (raw, r) = pinned(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n{\"a\":\"b\"}",
            |api| async move { api.get().await },
        )
        .await;
        assert_eq!(r.unwrap(), json!({"a": "b"}));
        assert_eq!(
            raw,
            "GET /mmds HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn faults_become_typed_errors() {
        let (_, r) = pinned(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 43\r\n\r\n{\"fault_message\":\"The MMDS is not enabled\"}",
            |api| async move { api.put(&json!({})).await.map(|()| Value::Null) },
        )
        .await;
        match r {
            Err(Error::BadRequest { message, path, .. }) => {
                assert_eq!(message, "The MMDS is not enabled");
                assert_eq!(path, "/mmds");
            }
            other => panic!("{other:?}"),
        }
        let (_, r) = pinned(
            "HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n{\"fault_message\":\"The MMDS data store size limit was exceeded.\"}",
            |api| async move { api.patch(&json!({"k": "v"})).await.map(|()| Value::Null) },
        )
        .await;
        assert!(
            matches!(&r, Err(Error::PayloadTooLarge { message, .. }) if message.contains("limit")),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn missing_socket_is_a_transport_error() {
        let api = FirecrackerApi::new("/nonexistent/fc.sock");
        assert!(matches!(api.get().await, Err(Error::Transport { .. })));
    }
}
