//! The request head, read before hyper sees it.
//!
//! hyper answers a head it cannot parse with a bare status and no body, and `httparse` refuses
//! a raw `"` in the request target, which is how `curl` sends
//! `?last_etag="abc"` (the ETag exactly as the server's header gives it). So each connection's
//! head is read here first, bounded in size and time: `"`, `<`, `>` and non-ASCII bytes in the
//! query are percent-encoded (the query is percent-decoded by its reader; the path is left
//! alone), and a head that is too large or malformed is answered here, with a reason, instead
//! of by hyper. The head and whatever followed it are then replayed to hyper through
//! [`Replay`]. One request per connection: the server turns keep-alive off, so every head
//! passes through here.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf as _, Bytes};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};

/// Most headers in a request, as hyper.
const MAX_HEADERS: usize = 100;

/// Why a head was not handed on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The peer closed or went quiet before a whole head arrived: nothing to answer.
    Closed,
    /// Answer with this status and reason.
    Answer(StatusCode, String),
}

/// Reads one request head from `io` (at most `limit` bytes, within `timeout`) and returns it
/// with the query fixed up, followed by any bytes read past it.
pub(crate) async fn read<S: AsyncRead + Unpin>(
    io: &mut S,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, Refused> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(done) = check(&buf, limit)? {
            return Ok(done);
        }
        let n = match tokio::time::timeout_at(deadline, io.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return Err(Refused::Closed),
        };
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}

/// `Some(head)` once `buf` holds a whole valid head, `None` while more is needed.
fn check(buf: &[u8], limit: usize) -> Result<Option<Bytes>, Refused> {
    let Some(line_end) = buf.iter().position(|&b| b == b'\n') else {
        return too_large(buf.len(), limit).map(|()| None);
    };
    let (line, rest) = buf.split_at(line_end);
    let mut fixed = fix_request_line(line);
    fixed.extend_from_slice(rest);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let added = fixed.len().saturating_sub(buf.len());
    match req.parse(&fixed) {
        Ok(httparse::Status::Complete(len)) => {
            too_large(len.saturating_sub(added), limit)?;
            let target = req.path.unwrap_or_default();
            if target.parse::<http::Uri>().is_err() {
                return Err(Refused::Answer(
                    StatusCode::BAD_REQUEST,
                    "malformed request target".into(),
                ));
            }
            let mut lengths = req
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| h.value);
            if let Some(first) = lengths.next()
                && (first.is_empty()
                    || !first.iter().all(u8::is_ascii_digit)
                    || lengths.any(|v| v != first))
            {
                return Err(Refused::Answer(
                    StatusCode::BAD_REQUEST,
                    "bad Content-Length".into(),
                ));
            }
            Ok(Some(Bytes::from(fixed)))
        }
        Ok(httparse::Status::Partial) => too_large(buf.len(), limit).map(|()| None),
        Err(httparse::Error::TooManyHeaders) => Err(Refused::Answer(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("more than {MAX_HEADERS} headers"),
        )),
        Err(e) => Err(Refused::Answer(
            StatusCode::BAD_REQUEST,
            format!("malformed request head: {e}"),
        )),
    }
}

fn too_large(len: usize, limit: usize) -> Result<(), Refused> {
    if len > limit {
        Err(Refused::Answer(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("request head larger than {limit} bytes"),
        ))
    } else {
        Ok(())
    }
}

/// Percent-encodes the bytes `httparse` refuses in the query of a request line
/// (`METHOD SP target SP version`); everything else is kept as sent.
fn fix_request_line(line: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.len() + 16);
    let mut spaces = 0;
    let mut in_query = false;
    for &b in line {
        match b {
            b' ' => {
                spaces += 1;
                in_query = false;
            }
            b'?' if spaces == 1 => in_query = true,
            _ => {}
        }
        if in_query && spaces == 1 && (matches!(b, b'"' | b'<' | b'>') || b >= 0x80) {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        } else {
            out.push(b);
        }
    }
    out
}

/// A refusal as raw HTTP/1.1: the status, a plain-text (or, with `json`, Firecracker fault)
/// reason, optionally an ETag; the connection closes after it.
pub(crate) fn render(status: StatusCode, reason: &str, json: bool, etag: Option<&str>) -> Vec<u8> {
    let (ctype, body) = if json {
        let v = serde_json::json!({ "fault_message": reason });
        ("application/json", v.to_string())
    } else {
        ("text/plain", reason.to_owned())
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    if let Some(e) = etag {
        out.push_str(&format!("etag: {e}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&body);
    out.into_bytes()
}

/// A stream that first yields `prefix`, then reads from the inner stream; writes go straight
/// through.
#[derive(Debug)]
pub(crate) struct Replay<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Replay<S> {
    pub(crate) fn new(prefix: Bytes, inner: S) -> Self {
        Replay { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.has_remaining() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn head(s: &str) -> Result<Option<Bytes>, Refused> {
        check(s.as_bytes(), 16 * 1024)
    }

    #[test]
    fn quotes_in_the_query_are_encoded_not_in_the_path() {
        let h = head("GET /k?last_etag=W/\"ab\"&x=<> HTTP/1.1\r\nHost: x\r\n\r\nBODY")
            .unwrap()
            .unwrap();
        assert_eq!(
            &h[..],
            b"GET /k?last_etag=W/%22ab%22&x=%3C%3E HTTP/1.1\r\nHost: x\r\n\r\nBODY"
        );
        // The path is not percent-decoded, so it is left alone (a raw `"` is legal there).
        let h = head("GET /a\"b HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(&h[..], b"GET /a\"b HTTP/1.1\r\nHost: x\r\n\r\n");
        // What hyper would answer with a bare 400 is answered here, with a reason.
        for (raw, why) in [
            (
                "GET /k HTTP/1.1\r\nno colon\r\n\r\n",
                "malformed request head",
            ),
            (
                "GET /k HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                "bad Content-Length",
            ),
            (
                "GET /k HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "bad Content-Length",
            ),
        ] {
            match head(raw) {
                Err(Refused::Answer(s, got)) => {
                    assert_eq!(s, StatusCode::BAD_REQUEST, "{raw:?}");
                    assert!(got.starts_with(why), "{raw:?}: {got}");
                }
                other => panic!("{raw:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn partial_heads_wait_and_large_ones_are_refused() {
        assert_eq!(head("GET /k HTTP/1.1\r\nHost: x\r\n"), Ok(None));
        assert_eq!(head("GET /k?a=\"b"), Ok(None));
        let big = format!("GET /k HTTP/1.1\r\nX: {}\r\n", "a".repeat(20_000));
        assert_eq!(
            head(&big),
            Err(Refused::Answer(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request head larger than 16384 bytes".into()
            ))
        );
        let many: String = (0..=MAX_HEADERS).map(|i| format!("h{i}: v\r\n")).collect();
        let r = head(&format!("GET / HTTP/1.1\r\n{many}\r\n"));
        assert!(
            matches!(
                &r,
                Err(Refused::Answer(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    _
                ))
            ),
            "{r:?}"
        );
    }

    #[test]
    fn rendered_refusals_have_a_type_and_a_length() {
        let r = String::from_utf8(render(StatusCode::BAD_REQUEST, "why", false, Some("\"e\"")))
            .unwrap();
        assert_eq!(
            r,
            "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: 3\r\n\
             connection: close\r\netag: \"e\"\r\n\r\nwhy"
        );
        let r = String::from_utf8(render(StatusCode::BAD_REQUEST, "why", true, None)).unwrap();
        assert!(r.ends_with("{\"fault_message\":\"why\"}"), "{r}");
    }

    #[tokio::test]
    async fn replay_yields_the_prefix_then_the_stream() {
        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"tail")
            .await
            .unwrap();
        drop(a);
        let mut r = Replay::new(Bytes::from_static(b"head-"), b);
        let mut out = String::new();
        r.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "head-tail");
    }
}
