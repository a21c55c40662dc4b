//! The guest client against the embedded server (and two fakes) on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use firebuild_mmds::MmdsVersion;
use firebuild_mmds::client::{Client, ClientConfig, Error};
use firebuild_mmds::server::Server;
use http::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A V1 (tokenless) client with [`quick`] timing.
fn v1_client(addr: SocketAddr) -> Client {
    Client::new(ClientConfig {
        version: MmdsVersion::V1,
        ..quick(addr)
    })
}

fn quick(addr: SocketAddr) -> ClientConfig {
    ClientConfig {
        deadline: Duration::from_millis(800),
        attempt_timeout: Duration::from_millis(300),
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        ..ClientConfig::with_addr(addr)
    }
}

#[tokio::test]
async fn fetch_metadata_merges_parts_and_returns_the_etag() {
    let s = common::serve(json!({"hostname": "vm1", "user-data": {"b": {"env": {"B": "2"}}, "a": {"env": {"A": "1"}}}})).await;
    let c = Client::new(quick(s.local_addr()));
    let (md, etag) = c.fetch_metadata().await.unwrap();
    assert_eq!(md.hostname.as_deref(), Some("vm1"));
    assert_eq!(md.env.keys().collect::<Vec<_>>(), ["A", "B"]);
    assert!(md.user_data.is_empty());
    assert_eq!(etag, s.get().etag);
    // IMDS text and listing.
    let entries = c.list("/").await.unwrap();
    let names: Vec<_> = entries
        .iter()
        .map(|e| (e.name.as_str(), e.is_dir))
        .collect();
    assert_eq!(names, [("hostname", false), ("user-data", true)]);
    assert_eq!(c.get_text("/hostname").await.unwrap().0, "vm1");
    s.shutdown().await;
}

#[tokio::test]
async fn invalid_metadata_is_refused_with_its_path() {
    let s = common::serve(json!({"users": [{"name": "a", "uid": "zero"}]})).await;
    let c = Client::new(quick(s.local_addr()));
    match c.fetch_metadata().await {
        Err(Error::Metadata(e)) => assert!(format!("{e}").contains("users[0].uid"), "{e}"),
        other => panic!("{other:?}"),
    }
    s.shutdown().await;
}

#[tokio::test]
async fn unreachable_not_found_unauthorized_disabled_are_distinct() {
    // Nothing listens: unreachable, after several attempts within the deadline.
    let closed = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    match Client::new(quick(closed)).fetch_metadata().await {
        Err(Error::Unreachable { attempts, .. }) => assert!(attempts >= 2, "{attempts}"),
        other => panic!("{other:?}"),
    }
    let s = common::serve(json!({"k": "v", "n": 1})).await;
    let c = Client::new(quick(s.local_addr()));
    assert!(
        matches!(c.get_json("/missing").await, Err(Error::NotFound { path }) if path == "/missing")
    );
    assert!(matches!(
        c.get_text("/n").await,
        Err(Error::Status {
            status: StatusCode::NOT_IMPLEMENTED,
            ..
        })
    ));
    // A V1 client (no token) against a V2 server.
    let v1 = v1_client(s.local_addr());
    assert!(matches!(
        v1.get_json("/k").await,
        Err(Error::Unauthorized { .. })
    ));
    s.set_version(MmdsVersion::V1);
    assert_eq!(v1.get_json("/k").await.unwrap().0, "v");
    s.set_guest_enabled(false);
    assert!(matches!(c.get_json("/k").await, Err(Error::Disabled)));
    s.shutdown().await;
}

#[tokio::test]
async fn token_is_refreshed_after_expiry_and_after_a_server_restart() {
    let s = common::serve(json!({"k": "v"})).await;
    let addr = s.local_addr();
    let c = Client::new(ClientConfig {
        token_ttl: Duration::from_secs(1),
        ..quick(addr)
    });
    assert_eq!(c.get_json("/k").await.unwrap().0, "v");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        c.get_json("/k").await.unwrap().0,
        "v",
        "expired token replaced"
    );
    // A new server on the same port has a new key: the cached token gets 401, is replaced.
    let c = Client::new(quick(addr));
    assert_eq!(c.get_json("/k").await.unwrap().0, "v");
    s.shutdown().await;
    let s2 = Server::builder()
        .listen(addr)
        .initial_data(json!({"k": "w"}))
        .start()
        .await
        .unwrap();
    assert_eq!(c.get_json("/k").await.unwrap().0, "w");
    s2.shutdown().await;
}

#[tokio::test]
async fn long_poll_returns_the_new_value_or_none() {
    let s = common::serve(json!({"k": {"a": "1"}})).await;
    let c = Arc::new(Client::new(quick(s.local_addr())));
    let (v, etag) = c.get_json("/k").await.unwrap();
    assert_eq!(v, json!({"a": "1"}));
    assert_eq!(
        c.wait_for_change("/k", &etag, Duration::from_secs(1))
            .await
            .unwrap(),
        None
    );
    let c2 = c.clone();
    let e2 = etag.clone();
    let waiter =
        tokio::spawn(async move { c2.wait_for_change("/k", &e2, Duration::from_secs(30)).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A change elsewhere does not wake a poll on /k ...
    s.patch(&json!({"other": "x"})).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished());
    // ... a change of /k does, with the new value and ETag.
    s.patch(&json!({"k": {"b": "2"}})).unwrap();
    let (v, new) = waiter.await.unwrap().unwrap().unwrap();
    assert_eq!(v, json!({"a": "1", "b": "2"}));
    assert_ne!(new, etag);
    s.shutdown().await;
}

/// A fake V1 service answering `statuses` in turn, then 200 with `{"k":"v"}`.
async fn fake(statuses: Vec<u16>) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let n = count.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let i = n.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf).await;
            let reply = match statuses.get(i) {
                Some(code) => format!(
                    "HTTP/1.1 {code} X\r\nContent-Length: 4\r\nConnection: close\r\n\r\noops"
                ),
                None => {
                    "HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\n{\"k\":\"v\"}"
                        .to_owned()
                }
            };
            let _ = s.write_all(reply.as_bytes()).await;
        }
    });
    (addr, count)
}

#[tokio::test]
async fn server_errors_are_retried_within_the_deadline() {
    let (addr, count) = fake(vec![500, 502]).await;
    let c = v1_client(addr);
    let (v, etag) = c.get_json("/").await.unwrap();
    assert_eq!(v, json!({"k": "v"}));
    assert!(
        etag.starts_with('"'),
        "an ETag is computed when the server sends none"
    );
    assert_eq!(count.load(Ordering::SeqCst), 3);
    // 400 is final, no retry.
    let (addr, count) = fake(vec![400]).await;
    let c = v1_client(addr);
    assert!(matches!(
        c.get_json("/").await,
        Err(Error::Status {
            status: StatusCode::BAD_REQUEST,
            ..
        })
    ));
    assert_eq!(count.load(Ordering::SeqCst), 1);
    // A lasting 500 ends as a status error, not as "unreachable".
    let (addr, _) = fake(vec![500; 1000]).await;
    let c = v1_client(addr);
    assert!(matches!(
        c.get_json("/").await,
        Err(Error::Status {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            ..
        })
    ));
}
