//! Test helpers: a plain HTTP/1 client over TCP or a Unix socket.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};

/// A reply with its body.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).unwrap()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }
    pub fn etag(&self) -> String {
        self.header("etag").expect("response without ETag")
    }
}

async fn exchange<IO>(io: IO, req: Request<Full<Bytes>>) -> Reply
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = tx.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

pub fn request(
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "localhost");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

/// One request to the guest side.
pub async fn guest(addr: SocketAddr, method: Method, uri: &str, headers: &[(&str, &str)]) -> Reply {
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    exchange(s, request(method, uri, headers, "")).await
}

/// A guest `GET uri` with the V2 session token `token`.
pub async fn guest_get(addr: SocketAddr, uri: &str, token: &str) -> Reply {
    guest(addr, Method::GET, uri, &[("x-metadata-token", token)]).await
}

/// One request to the host API socket.
pub async fn host(
    sock: &Path,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let s = tokio::net::UnixStream::connect(sock).await.unwrap();
    exchange(s, request(method, uri, headers, body)).await
}

/// A V2 token with a one-hour TTL.
pub async fn token(addr: SocketAddr) -> String {
    let r = guest(
        addr,
        Method::PUT,
        "/latest/api/token",
        &[("x-metadata-token-ttl-seconds", "3600")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.text()
}

/// A guest PUT with a body.
pub async fn guest_with_body(addr: SocketAddr, uri: &str, body: &str) -> Reply {
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    exchange(
        s,
        request(
            Method::PUT,
            uri,
            &[("x-metadata-token-ttl-seconds", "60")],
            body,
        ),
    )
    .await
}

/// Sends raw bytes, returns the status line of the answer.
pub async fn raw_status(addr: SocketAddr, raw: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 256];
    let n = s.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

/// An MMDS server on loopback (defaults) holding `data`.
pub async fn serve(data: serde_json::Value) -> firebuild_mmds::server::ServerHandle {
    firebuild_mmds::server::Server::builder()
        .initial_data(data)
        .start()
        .await
        .unwrap()
}

/// A raw answer: status code, lower-cased header lines, body.
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends raw bytes (the server closes after one answer) and parses the whole answer.
pub async fn raw<S>(mut s: S, raw: &[u8]) -> RawReply
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    s.write_all(raw).await.unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    RawReply {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// [`raw`] to the guest side.
pub async fn raw_guest(addr: SocketAddr, bytes: &[u8]) -> RawReply {
    raw(tokio::net::TcpStream::connect(addr).await.unwrap(), bytes).await
}
