//! Small HTTP/1 helpers shared by the client, the Firecracker writer and the server.

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};

/// A failure below HTTP: connecting, I/O, protocol, an oversized reply.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// Connecting or reading/writing the socket failed.
    #[error("i/o")]
    Io(#[from] std::io::Error),
    /// The HTTP exchange failed.
    #[error("http")]
    Http(#[from] hyper::Error),
    /// The attempt took longer than its share of the deadline.
    #[error("no reply within {0:?}")]
    TimedOut(std::time::Duration),
    /// The reply body is larger than the bound.
    #[error("reply body larger than {limit} bytes")]
    BodyTooLarge {
        /// The bound.
        limit: usize,
    },
}

/// A reply with its body read in full.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// Sends one request on a fresh connection and reads at most `max_body` bytes of reply.
pub(crate) async fn roundtrip<IO>(
    io: IO,
    req: Request<Full<Bytes>>,
    max_body: usize,
    title_case_headers: bool,
) -> Result<Reply, TransportError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .title_case_headers(title_case_headers)
        .handshake(hyper_util::rt::TokioIo::new(io))
        .await?;
    let driver = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "mmds http connection ended");
        }
    });
    let result = async {
        let resp = sender.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, max_body)
            .collect()
            .await
            .map_err(|e| match e.downcast::<hyper::Error>() {
                Ok(h) => TransportError::Http(*h),
                Err(_) => TransportError::BodyTooLarge { limit: max_body },
            })?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
    .await;
    driver.abort();
    result
}

/// Percent-encodes a path, keeping `/` and RFC 3986 unreserved characters.
pub(crate) fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes (and `+` as space in queries when `plus` is set); `None` if the
/// result is not UTF-8 or an escape is malformed.
pub(crate) fn percent_decode(s: &str, plus: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn encode_decode() {
        let p = "/a b/\"c\"/~d";
        let e = encode_path(p);
        assert_eq!(e, "/a%20b/%22c%22/~d");
        assert_eq!(percent_decode(&e, false).unwrap(), p);
        assert_eq!(percent_decode("%2", false), None);
        assert_eq!(percent_decode("a+b", true).unwrap(), "a b");
    }
}
