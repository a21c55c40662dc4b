//! The embedded server against a real HTTP client on loopback: every Firecracker rule.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{guest, host, token};
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
    let r = guest(
        addr,
        Method::GET,
        "/latest/meta-data",
        &[("x-metadata-token", &t)],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "instance-id\nlist\nn\nnil\nsub/\nt");
    assert!(r.header("etag").is_some());
    let r = guest(
        addr,
        Method::GET,
        "/latest/meta-data/instance-id",
        &[("x-metadata-token", &t)],
    )
    .await;
    assert_eq!((r.status, r.text()), (StatusCode::OK, "i-1".to_owned()));
    // Repeated and trailing slashes are sanitised as Firecracker does.
    let r = guest(
        addr,
        Method::GET,
        "//latest//meta-data/sub/",
        &[("x-metadata-token", &t)],
    )
    .await;
    assert_eq!((r.status, r.text()), (StatusCode::OK, "a".to_owned()));
    for leaf in ["n", "list", "t", "nil"] {
        let r = guest(
            addr,
            Method::GET,
            &format!("/latest/meta-data/{leaf}"),
            &[("x-metadata-token", &t)],
        )
        .await;
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
    let r = guest(addr, Method::GET, "/a~1b/~0c", &[("x-metadata-token", &t)]).await;
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
    let r2 = guest(addr, Method::GET, &uri, &[("x-metadata-token", &t)]).await;
    assert_eq!(r2.status, StatusCode::NOT_MODIFIED);
    assert_eq!(r2.etag(), r.etag());
    s.shutdown().await;
}
