//! The embedded server against a real HTTP client on loopback: every Firecracker rule.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{guest, guest_get, host, token};
use firebuild_mmds::server::{Server, ServerHandle};
use http::{Method, StatusCode};
use serde_json::json;

fn data() -> serde_json::Value {
    json!({
        "latest": {"meta-data": {"instance-id": "i-1", "n": 5, "list": [1, 2], "t": true, "nil": null,
                                  "sub": {"a": "x"}}},
        "bootstrap": {"grpc-host-port": "127.0.0.1:1", "tls-key": "secret"},
        "a/b": {"~c": "escaped"}
    })
}

/// A server holding `data` with a data limit of `limit` bytes, and its API socket.
async fn start_limited(
    limit: usize,
    data: serde_json::Value,
) -> (ServerHandle, tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let s = Server::builder()
        .api_socket(&sock)
        .data_limit(limit)
        .initial_data(data)
        .start()
        .await
        .unwrap();
    (s, dir, sock)
}

async fn start() -> (ServerHandle, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::builder()
        .api_socket(dir.path().join("api.sock"))
        .initial_data(data())
        .start()
        .await
        .unwrap();
    (server, dir)
}

#[tokio::test]
async fn v2_token_flow_and_imds_text() {
    let (s, _d) = start().await;
    let addr = s.local_addr();
    let t = token(addr).await;
    assert!(t.len() <= 70);
    let r = guest_get(addr, "/latest/meta-data", &t).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "instance-id\nlist\nn\nnil\nsub/\nt");
    assert!(r.header("etag").is_some());
    let r = guest_get(addr, "/latest/meta-data/instance-id", &t).await;
    assert_eq!((r.status, r.text()), (StatusCode::OK, "i-1".to_owned()));
    // Repeated and trailing slashes are sanitised as Firecracker does.
    let r = guest_get(addr, "//latest//meta-data/sub/", &t).await;
    assert_eq!((r.status, r.text()), (StatusCode::OK, "a".to_owned()));
    for leaf in ["n", "list", "t", "nil"] {
        let r = guest_get(addr, &format!("/latest/meta-data/{leaf}"), &t).await;
        assert_eq!(r.status, StatusCode::NOT_IMPLEMENTED, "{leaf}");
        assert!(r.header("etag").is_some());
    }
    // JSON on request, including non-string leaves; JSON pointer escapes.
    let r = guest(
        addr,
        Method::GET,
        "/latest/meta-data",
        &[("x-metadata-token", &t), ("accept", "application/json")],
    )
    .await;
    assert_eq!(r.json(), data()["latest"]["meta-data"]);
    assert_eq!(r.header("content-type").unwrap(), "application/json");
    let r = guest_get(addr, "/a~1b/~0c", &t).await;
    assert_eq!(r.text(), "escaped");
    // The EC2 header names are accepted too.
    let r = guest(
        addr,
        Method::GET,
        "/latest/meta-data/instance-id",
        &[("x-aws-ec2-metadata-token", &t)],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    s.shutdown().await;
}

#[tokio::test]
async fn long_poll_wakes_on_patch_with_new_data() {
    let (s, _d) = start().await;
    let addr = s.local_addr();
    let t = token(addr).await;
    let first = guest(
        addr,
        Method::GET,
        "/latest",
        &[("x-metadata-token", &t), ("accept", "application/json")],
    )
    .await;
    let etag = first.etag();
    // A different last_etag returns at once.
    let r = guest(
        addr,
        Method::GET,
        "/latest?wait_for_change=true&last_etag=%22stale%22&timeout_sec=30",
        &[("x-metadata-token", &t), ("accept", "application/json")],
    )
    .await;
    assert_eq!((r.status, r.etag()), (StatusCode::OK, etag.clone()));
    let uri = format!(
        "/latest?wait_for_change=true&last_etag={}&timeout_sec=30",
        etag.replace('"', "%22")
    );
    let t2 = t.clone();
    let waiter = tokio::spawn(async move {
        let r = guest(
            addr,
            Method::GET,
            &uri,
            &[("x-metadata-token", &t2), ("accept", "application/json")],
        )
        .await;
        (r, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sock = s.api_socket().unwrap().to_owned();
    let patch_sent = Instant::now();
    let patched = host(
        &sock,
        Method::PATCH,
        "/mmds",
        &[],
        r#"{"latest": {"meta-data": {"instance-id": "i-2"}}}"#,
    )
    .await;
    assert_eq!(patched.status, StatusCode::NO_CONTENT);
    let (r, woke_at) = waiter.await.unwrap();
    println!(
        "long-poll latency after PATCH: {:?}",
        woke_at.saturating_duration_since(patch_sent)
    );
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["meta-data"]["instance-id"], "i-2");
    assert_ne!(r.etag(), etag);
    // Nothing changes: 304 after the timeout, same ETag.
    let uri = format!(
        "/latest?wait_for_change=true&last_etag={}&timeout_sec=1",
        r.etag().replace('"', "%22")
    );
    let r2 = guest_get(addr, &uri, &t).await;
    assert_eq!(r2.status, StatusCode::NOT_MODIFIED);
    assert_eq!(r2.etag(), r.etag());
    s.shutdown().await;
}

#[tokio::test]
async fn token_ttl_bounds_and_put_rules() {
    let (s, _d) = start().await;
    let addr = s.local_addr();
    for (ttl, want) in [
        (Some("0"), StatusCode::BAD_REQUEST),
        (Some("1"), StatusCode::OK),
        (Some("21600"), StatusCode::OK),
        (Some("21601"), StatusCode::BAD_REQUEST),
        (Some("-5"), StatusCode::BAD_REQUEST),
        (Some("abc"), StatusCode::BAD_REQUEST),
        (None, StatusCode::BAD_REQUEST),
    ] {
        let headers: Vec<(&str, &str)> = ttl
            .map(|t| ("x-metadata-token-ttl-seconds", t))
            .into_iter()
            .collect();
        let r = guest(addr, Method::PUT, "/latest/api/token", &headers).await;
        assert_eq!(r.status, want, "ttl {ttl:?}: {}", r.text());
        assert!(r.header("etag").is_some());
    }
    // X-Forwarded-For on a PUT: 400, even on the token path.
    let r = guest(
        addr,
        Method::PUT,
        "/latest/api/token",
        &[
            ("x-metadata-token-ttl-seconds", "60"),
            ("x-forwarded-for", "10.0.0.1"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().contains("X-Forwarded-For"));
    // PUT elsewhere: 404.
    let r = guest(
        addr,
        Method::PUT,
        "/latest/meta-data",
        &[("x-metadata-token-ttl-seconds", "60")],
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Other methods: 405 with Allow.
    for m in [Method::POST, Method::DELETE, Method::PATCH, Method::OPTIONS] {
        let r = guest(addr, m.clone(), "/latest/meta-data", &[]).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{m}");
        assert_eq!(r.header("allow").as_deref(), Some("GET, PUT"));
        assert!(r.header("etag").is_some());
    }
    s.shutdown().await;
}

#[tokio::test]
async fn tokens_are_checked() {
    let (s, _d) = start().await;
    let (other, _d2) = start().await;
    let addr = s.local_addr();
    let path = "/latest/meta-data/instance-id";
    let r = guest(addr, Method::GET, path, &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.header("etag").is_some());
    let long = "A".repeat(71);
    let foreign = token(other.local_addr()).await;
    for bad in ["garbage", long.as_str(), foreign.as_str()] {
        let r = guest(addr, Method::GET, path, &[("x-metadata-token", bad)]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{bad}");
    }
    // A token with a one-second TTL expires.
    let r = guest(
        addr,
        Method::PUT,
        "/latest/api/token",
        &[("x-metadata-token-ttl-seconds", "1")],
    )
    .await;
    let short = r.text();
    assert_eq!(
        guest(addr, Method::GET, path, &[("x-metadata-token", &short)])
            .await
            .status,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        guest(addr, Method::GET, path, &[("x-metadata-token", &short)])
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    // 404 and a distinct ETag for absent paths.
    let t = token(addr).await;
    let r = guest_get(addr, "/nope", &t).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.header("etag").is_some());
    s.shutdown().await;
    other.shutdown().await;
}

#[tokio::test]
async fn host_api_mirrors_firecracker() {
    let (s, d) = start().await;
    let sock = d.path().join("api.sock");
    let addr = s.local_addr();
    let r = host(&sock, Method::GET, "/mmds", &[], "").await;
    assert_eq!((r.status, r.json()), (StatusCode::OK, data()));
    let r = host(&sock, Method::PUT, "/mmds", &[], r#"{"k": {"a": "1"}}"#).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = host(
        &sock,
        Method::PATCH,
        "/mmds",
        &[],
        r#"{"k": {"b": "2", "a": null}, "z": "q"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        host(&sock, Method::GET, "/mmds", &[], "").await.json(),
        json!({"k": {"b": "2"}, "z": "q"})
    );
    assert_eq!(s.get().data.as_ref(), &json!({"k": {"b": "2"}, "z": "q"}));
    // Bad JSON: 400 with a Firecracker fault body.
    let r = host(&sock, Method::PUT, "/mmds", &[], "{nope").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["fault_message"].is_string());
    // Config: V1 lets tokenless GETs through, V2 closes them again.
    let path = "/k/b";
    let r = host(
        &sock,
        Method::PUT,
        "/mmds/config",
        &[],
        r#"{"version": "V1", "network_interfaces": ["eth0"]}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(guest(addr, Method::GET, path, &[]).await.text(), "2");
    host(
        &sock,
        Method::PUT,
        "/mmds/config",
        &[],
        r#"{"version": "V2", "network_interfaces": ["eth0"]}"#,
    )
    .await;
    assert_eq!(
        guest(addr, Method::GET, path, &[]).await.status,
        StatusCode::UNAUTHORIZED
    );
    let r = host(
        &sock,
        Method::PUT,
        "/mmds/config",
        &[],
        r#"{"version": "V3"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // Pointer CRUD.
    let r = host(&sock, Method::PUT, "/mmds/new/deep", &[], r#""v""#).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        host(&sock, Method::GET, "/mmds/new", &[], "").await.json(),
        json!({"deep": "v"})
    );
    assert_eq!(
        host(&sock, Method::GET, "/mmds/absent", &[], "")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        host(&sock, Method::DELETE, "/mmds/new/deep", &[], "")
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        host(&sock, Method::DELETE, "/mmds/new/deep", &[], "")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let r = host(&sock, Method::POST, "/mmds", &[], "").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.header("allow").as_deref(), Some("GET, PUT, PATCH"));
    assert_eq!(
        host(&sock, Method::GET, "/elsewhere", &[], "").await.status,
        StatusCode::NOT_FOUND
    );
    s.shutdown().await;
    assert!(!sock.exists(), "shutdown removes the API socket");
}

#[tokio::test]
async fn if_match_compare_and_swap() {
    let (s, d) = start().await;
    let sock = d.path().join("api.sock");
    let r = host(
        &sock,
        Method::GET,
        "/mmds/latest/meta-data/instance-id",
        &[],
        "",
    )
    .await;
    let etag = r.etag();
    let r = host(
        &sock,
        Method::PUT,
        "/mmds/latest/meta-data/instance-id",
        &[("if-match", "\"0000\"")],
        r#""i-x""#,
    )
    .await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(r.etag(), etag, "412 tells the current ETag");
    let r = host(
        &sock,
        Method::PUT,
        "/mmds/latest/meta-data/instance-id",
        &[("if-match", &etag)],
        r#""i-x""#,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let new = r.etag();
    assert_ne!(new, etag);
    // The old ETag no longer matches; the whole-document form works the same way.
    let r = host(
        &sock,
        Method::DELETE,
        "/mmds/latest/meta-data/instance-id",
        &[("if-match", &etag)],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    let whole = host(&sock, Method::GET, "/mmds", &[], "").await.etag();
    assert_eq!(
        host(
            &sock,
            Method::PATCH,
            "/mmds",
            &[("if-match", "\"stale\"")],
            "{}"
        )
        .await
        .status,
        StatusCode::PRECONDITION_FAILED
    );
    assert_eq!(
        host(
            &sock,
            Method::PATCH,
            "/mmds",
            &[("if-match", &whole)],
            r#"{"x": "1"}"#
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    // `*` means "exists".
    assert_eq!(
        host(
            &sock,
            Method::DELETE,
            "/mmds/nothing",
            &[("if-match", "*")],
            ""
        )
        .await
        .status,
        StatusCode::PRECONDITION_FAILED
    );
    // The guest sees the same ETag for the same value.
    let t = token(s.local_addr()).await;
    let g = guest(
        s.local_addr(),
        Method::GET,
        "/latest/meta-data/instance-id",
        &[("x-metadata-token", &t)],
    )
    .await;
    assert_eq!(g.etag(), new);
    // In process.
    assert!(s.compare_and_swap("/x", "\"nope\"", None).is_err());
    let (_, e) = s.get_at("/x").unwrap();
    s.compare_and_swap("/x", &e, Some(json!("2"))).unwrap();
    assert_eq!(s.get_at("/x").unwrap().0, "2");
    s.shutdown().await;
}

#[tokio::test]
async fn scrub_and_guest_switch() {
    let (s, d) = start().await;
    let sock = d.path().join("api.sock");
    let addr = s.local_addr();
    let t = token(addr).await;
    assert_eq!(
        guest_get(addr, "/bootstrap/tls-key", &t).await.text(),
        "secret"
    );
    assert_eq!(
        host(&sock, Method::DELETE, "/mmds/bootstrap", &[], "")
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    for p in ["/bootstrap", "/bootstrap/tls-key"] {
        assert_eq!(
            guest_get(addr, p, &t).await.status,
            StatusCode::NOT_FOUND,
            "{p}"
        );
    }
    let r = guest_get(addr, "/", &t).await;
    assert!(!r.text().contains("bootstrap"), "{}", r.text());
    // The guest switch, over the socket and in process.
    let r = host(
        &sock,
        Method::PUT,
        "/guest-access",
        &[],
        r#"{"enabled": false}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(!s.guest_enabled());
    for (m, h) in [
        (Method::GET, ("x-metadata-token", t.as_str())),
        (Method::PUT, ("x-metadata-token-ttl-seconds", "60")),
    ] {
        let r = guest(addr, m, "/latest/api/token", &[h]).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.header("etag").is_some());
    }
    assert_eq!(
        host(&sock, Method::GET, "/guest-access", &[], "")
            .await
            .json(),
        json!({"enabled": false})
    );
    s.set_guest_enabled(true);
    assert_eq!(guest_get(addr, "/latest", &t).await.status, StatusCode::OK);
    s.shutdown().await;
}

#[tokio::test]
async fn size_limits() {
    let (s, _dir, sock) = start_limited(100, json!({})).await;
    let big = format!(r#"{{"k": "{}"}}"#, "x".repeat(100));
    let r = host(&sock, Method::PUT, "/mmds", &[], &big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        r.json()["fault_message"]
            .as_str()
            .unwrap()
            .contains("limit")
    );
    host(&sock, Method::PUT, "/mmds", &[], r#"{"a": "1"}"#).await;
    // A PATCH that grows the document past the limit is refused and changes nothing.
    let r = host(
        &sock,
        Method::PATCH,
        "/mmds",
        &[],
        &format!(r#"{{"b": "{}"}}"#, "y".repeat(95)),
    )
    .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(s.get().data.as_ref(), &json!({"a": "1"}));
    assert!(s.put(json!({"k": "x".repeat(200)})).is_err());
    // A body far past the limit is cut off before it is parsed.
    let r = host(&sock, Method::PUT, "/mmds", &[], &" ".repeat(10_000)).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Guest-side bodies and headers are bounded too.
    let r = common::guest_with_body(s.local_addr(), "/latest/api/token", &"z".repeat(4096)).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    let huge = "h".repeat(20_000);
    let status = common::raw_status(
        s.local_addr(),
        &format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {huge}\r\n\r\n"),
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 431"), "{status}");
    s.shutdown().await;
}

#[tokio::test]
async fn connections_are_bounded() {
    let s = Server::builder()
        .max_connections(1)
        .initial_data(json!({"k": "v"}))
        .version(firebuild_mmds::MmdsVersion::V1)
        .start()
        .await
        .unwrap();
    let addr = s.local_addr();
    let hog = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = tokio::spawn(async move { guest(addr, Method::GET, "/k", &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "served past the connection limit");
    drop(hog);
    let r = second.await.unwrap();
    assert_eq!((r.status, r.text()), (StatusCode::OK, "v".to_owned()));
    s.shutdown().await;
}

#[tokio::test]
async fn concurrent_guests_are_all_served() {
    let s = common::serve(json!({"k": "v"})).await;
    let addr = s.local_addr();
    let t = token(addr).await;
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let t = t.clone();
        tasks.push(tokio::spawn(async move { guest_get(addr, "/k", &t).await }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().text(), "v");
    }
    s.shutdown().await;
}

/// `GET path` with a V2 token, as raw bytes (the query may hold a raw `"`, which `http::Uri`
/// refuses to build).
fn raw_get(target: &str, token: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: x\r\nX-metadata-token: {token}\r\n\r\n").into_bytes()
}

#[tokio::test]
async fn long_poll_takes_last_etag_quoted_weak_or_bare() {
    let s = common::serve(json!({"k": "v"})).await;
    let addr = s.local_addr();
    let t = token(addr).await;
    let etag = guest_get(addr, "/k", &t).await.etag();
    let bare = etag.trim_matches('"');
    assert_eq!(bare.len(), 32, "{etag}");
    // The ETag exactly as the header gave it (raw and percent-encoded), weak, and bare: all
    // mean "unchanged", so each waits its one second and ends in 304 with the same ETag.
    let enc = etag.replace('"', "%22");
    for given in [
        etag.clone(),
        enc.clone(),
        format!("W/{etag}"),
        format!("W/{enc}"),
        bare.to_owned(),
    ] {
        let target = format!("/k?wait_for_change=true&last_etag={given}&timeout_sec=1");
        let r = common::raw_guest(addr, &raw_get(&target, &t)).await;
        assert_eq!(r.status, 304, "{given}: {r:?}");
        assert_eq!(r.header("etag"), Some(etag.as_str()), "{given}");
    }
    // A different tag, in any form, answers at once with the value.
    for stale in ["\"0000\"", "W/\"0000\"", "0000"] {
        let target = format!("/k?wait_for_change=true&last_etag={stale}&timeout_sec=30");
        let r = common::raw_guest(addr, &raw_get(&target, &t)).await;
        assert_eq!((r.status, r.body.as_str()), (200, "v"), "{stale}");
    }
    s.shutdown().await;
}

/// A 4xx as a guest or host sees it: status, a Content-Type and a short, bounded reason.
fn assert_reason(r: &common::RawReply, status: u16, ctype: &str, has: &str) {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(r.header("content-type"), Some(ctype), "{r:?}");
    assert!(r.body.contains(has), "want {has:?} in {r:?}");
    assert!(r.body.len() <= 1100, "reason of {} bytes", r.body.len());
    assert!(!r.body.chars().any(char::is_control), "{r:?}");
}

#[tokio::test]
async fn every_guest_4xx_has_a_reason() {
    let (s, _d) = start().await;
    let addr = s.local_addr();
    let t = token(addr).await;
    let long_path = format!("/{}", "p".repeat(10_000));
    let long_ttl = "9".repeat(5_000);
    let put = |target: &str, headers: &str, body: &str| {
        format!(
            "PUT {target} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    #[rustfmt::skip]
    let rows: Vec<(String, u16, &str)> = vec![
        (put("/latest/api/token", "", ""), 400, "Token time to live value not found"),
        (put("/latest/api/token", &format!("X-metadata-token-ttl-seconds: {long_ttl}\r\n"), ""), 400, "Invalid time to live value"),
        (put("/latest/api/token", "X-metadata-token-ttl-seconds: 60\r\nX-Forwarded-For: 1.2.3.4\r\n", ""), 400, "X-Forwarded-For"),
        (put(&long_path, "X-metadata-token-ttl-seconds: 60\r\n", ""), 404, "Resource not found: /ppp"),
        (put("/latest/api/token", "X-metadata-token-ttl-seconds: 60\r\n", &"z".repeat(2000)), 413, "Request body too large (limit 1024 bytes)"),
        ("GET /k HTTP/1.1\r\nHost: x\r\n\r\n".into(), 401, "No MMDS token provided"),
        ("GET /k HTTP/1.1\r\nHost: x\r\nX-metadata-token: nope\r\n\r\n".into(), 401, "MMDS token not valid"),
        (String::from_utf8(raw_get(&long_path, &t)).unwrap(), 404, "Resource not found: /ppp"),
        (String::from_utf8(raw_get("/latest?wait_for_change=true&last_etag=\"ab&timeout_sec=1", &t)).unwrap(), 400, "Bad last_etag"),
        (String::from_utf8(raw_get("/latest?wait_for_change=true&timeout_sec=0", &t)).unwrap(), 400, "timeout_sec must be between"),
        (String::from_utf8(raw_get("/latest?wait_for_change=perhaps", &t)).unwrap(), 400, "wait_for_change must be"),
        (String::from_utf8(raw_get("/latest?last_etag=%ff", &t)).unwrap(), 400, "Invalid query parameter: last_etag"),
        ("DELETE /k HTTP/1.1\r\nHost: x\r\n\r\n".into(), 405, "Not allowed HTTP method"),
        ("GET /k HTTP/1.1\r\nno colon here\r\n\r\n".into(), 400, "malformed request head"),
        ("GET /k HTTP/1.1\r\nContent-Length: -1\r\n\r\n".into(), 400, "bad Content-Length"),
        (format!("GET /k HTTP/1.1\r\nX-Big: {}\r\n\r\n", "h".repeat(20_000)), 431, "request head larger than 16384 bytes"),
    ];
    for (req, status, has) in rows {
        let r = common::raw_guest(addr, req.as_bytes()).await;
        let first = req.lines().next().unwrap_or("");
        assert_reason(&r, status, "text/plain", has);
        assert!(r.header("etag").is_some(), "{first}: no ETag");
    }
    // Echoed input is cut: the 10 000-byte path and the 5 000-digit TTL come back short.
    let r = common::raw_guest(addr, &raw_get(&long_path, &t)).await;
    assert!(r.body.ends_with("....") && r.body.len() < 300, "{}", r.body);
    let ttl = format!("X-metadata-token-ttl-seconds: {long_ttl}\r\n");
    let r = common::raw_guest(addr, put("/latest/api/token", &ttl, "").as_bytes()).await;
    assert!(r.body.len() < 400, "{} bytes", r.body.len());
    s.shutdown().await;
}

#[tokio::test]
async fn every_host_4xx_has_a_reason() {
    let (s, _dir, sock) = start_limited(100, json!({"k": "v"})).await;
    let req = |m: &str, target: &str, headers: &str, body: &str| {
        format!(
            "{m} {target} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let long = format!("/{}", "q".repeat(10_000));
    #[rustfmt::skip]
    let rows: Vec<(String, u16, &str)> = vec![
        (req("GET", &long, "", ""), 404, "Invalid request path: /qqq"),
        (req("GET", "/mmds/absent", "", ""), 404, "Resource not found: /absent"),
        (req("DELETE", "/mmds/absent", "", ""), 404, "nothing at"),
        (req("PUT", "/mmds", "", "{nope"), 400, "Invalid JSON body"),
        (req("PUT", "/mmds", "", &format!(r#"{{"k": "{}"}}"#, "x".repeat(200))), 413, "limit"),
        (req("PUT", "/mmds", "", &" ".repeat(5_000)), 413, "Request body too large (limit 1124 bytes)"),
        (req("PUT", "/mmds/k", "If-Match: \"0000\"\r\n", "\"w\""), 412, "precondition failed"),
        (req("PUT", "/mmds/config", "", r#"{"version": "V3"}"#), 400, "unknown variant"),
        (req("PUT", "/guest-access", "", "{}"), 400, "enabled"),
        (req("POST", "/mmds", "", ""), 405, "Not allowed HTTP method"),
        (req("GET", "/mmds/%zz", "", ""), 400, "Invalid path encoding"),
        ("GET /mmds HTTP/1.1\r\nno colon here\r\n\r\n".into(), 400, "malformed request head"),
    ];
    for (raw, status, has) in rows {
        let conn = tokio::net::UnixStream::connect(&sock).await.unwrap();
        let r = common::raw(conn, raw.as_bytes()).await;
        assert_reason(&r, status, "application/json", has);
        let fault: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert!(fault["fault_message"].is_string(), "{r:?}");
    }
    s.shutdown().await;
}

/// Raw request on a fresh connection, optionally opened with `prefix`; the whole answer.
async fn raw(addr: std::net::SocketAddr, prefix: &[u8], request: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(prefix).await.unwrap();
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn relay_key_keeps_other_local_processes_out() {
    let s = Server::builder()
        .initial_data(data())
        .require_relay_key(true)
        .start()
        .await
        .unwrap();
    let addr = s.local_addr();
    let key = s.relay_key().unwrap().to_vec();
    assert_eq!(key.len(), 65, "64 hex digits and a newline");
    let put =
        "PUT /latest/api/token HTTP/1.1\r\nHost: x\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n";
    // Without the key, or with a wrong one: 403 with a reason, and no token.
    for prefix in [&b""[..], &[b'0'; 65][..]] {
        let answer = raw(addr, prefix, put).await;
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
        assert!(
            answer.contains("did not come through the VM's relay"),
            "{answer}"
        );
    }
    // With it, the normal V2 flow; the key does not leak into the answer.
    let answer = raw(addr, &key, put).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let token = answer.rsplit("\r\n\r\n").next().unwrap().to_owned();
    let get =
        format!("GET /bootstrap/tls-key HTTP/1.1\r\nHost: x\r\nX-metadata-token: {token}\r\n\r\n");
    let answer = raw(addr, &key, &get).await;
    assert!(answer.ends_with("secret"), "{answer}");
    assert!(!answer.contains(std::str::from_utf8(&key[..64]).unwrap()));
    // A server without the option keeps Firecracker's behaviour.
    let (plain, _d) = start().await;
    assert!(plain.relay_key().is_none());
    assert!(
        raw(plain.local_addr(), b"", put)
            .await
            .starts_with("HTTP/1.1 200")
    );
}

#[tokio::test]
async fn guest_writes_consume_credentials_and_report_status_only() {
    let doc = json!({
        "hostname": "vm1",
        "users": [{"name": "ops", "password": {"hash": "$6$salt$hash"}}],
        "files": {
            "conf": {"path": "/etc/app.conf", "content": {"base64": "eAo="}},
            "token": {"path": "/run/join", "content": {"base64": "eAo="}, "consume": true},
        },
    });
    let s = Server::builder()
        .initial_data(doc)
        .guest_writes(true)
        .start()
        .await
        .unwrap();
    let addr = s.local_addr();
    let t = token(addr).await;
    let req = |method: &str, path: &str, token: &str, body: &str| {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nX-metadata-token: {token}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let mut changes = s.subscribe();
    changes.borrow_and_update();
    // Consume the hash: 204, then gone (404), recorded, and the host's watch fires.
    let r = raw(addr, b"", &req("DELETE", "/users/0/password", &t, "")).await;
    assert!(r.starts_with("HTTP/1.1 204"), "{r}");
    assert!(changes.has_changed().unwrap());
    let r = guest_get(addr, "/users/0/password", &t).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let consumed = s.consumed();
    assert_eq!(consumed.len(), 1);
    assert_eq!(consumed[0].pointer, "/users/0/password");
    assert!(
        s.get().data.pointer("/users/0/name").is_some(),
        "only the password went"
    );
    // A one-time file (`consume`) goes whole; a file not marked stays.
    let r = raw(addr, b"", &req("DELETE", "/files/token", &t, "")).await;
    assert!(r.starts_with("HTTP/1.1 204"), "{r}");
    assert!(s.get().data.pointer("/files/token").is_none());
    assert_eq!(s.consumed()[1].pointer, "/files/token");
    // Host-owned keys stay read-only, answered as Firecracker does (405; PUT: 404).
    for (method, path, code) in [
        ("DELETE", "/hostname", "405"),
        ("DELETE", "/users/0", "405"),
        ("DELETE", "/files/conf", "405"),
        ("DELETE", "/files/conf/content", "405"),
        ("PUT", "/hostname", "404"),
        ("PUT", "/guest", "404"),
    ] {
        let r = raw(addr, b"", &req(method, path, &t, "\"evil\"")).await;
        assert!(
            r.starts_with(&format!("HTTP/1.1 {code}")),
            "{method} {path}: {r}"
        );
    }
    assert_eq!(s.get().data["hostname"], "vm1");
    // Writes are token-bound, also for the status.
    let status = r#"{"phase":"configured","steps":{"hostname":"applied"}}"#;
    let r = raw(addr, b"", &req("PUT", "/guest/status", "bogus", status)).await;
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    let r = raw(addr, b"", &req("DELETE", "/users/0/password", "bogus", "")).await;
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    // The status: schema-checked, bounded, then readable by the host.
    let r = raw(
        addr,
        b"",
        &req(
            "PUT",
            "/guest/status",
            &t,
            r#"{"phase":"configured","hostname":"x"}"#,
        ),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let big = format!(r#"{{"phase":"failed","message":"{}"}}"#, "x".repeat(5000));
    let r = raw(addr, b"", &req("PUT", "/guest/status", &t, &big)).await;
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
    let r = raw(addr, b"", &req("PUT", "/guest/status", &t, status)).await;
    assert!(r.starts_with("HTTP/1.1 204"), "{r}");
    assert_eq!(s.get().data["guest"]["status"]["phase"], "configured");
    // Without the option, the same DELETE is Firecracker's 405.
    let (plain, _d) = start().await;
    let t2 = token(plain.local_addr()).await;
    let r = raw(
        plain.local_addr(),
        b"",
        &req("DELETE", "/bootstrap/tls-key", &t2, ""),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 405"), "{r}");
}
