//! Fault injection for the guest client on 127.0.0.1 (issue 16 item 5): bursts of 5xx,
//! resets and hangs from a proxy in front of the embedded server, and restarts of the server
//! itself. The client retries within its one deadline and succeeds once the service is back;
//! an outage longer than the deadline is reported as one (`Unreachable`), never as "no
//! metadata".
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use firebuild_mmds::client::{Client, ClientConfig, Error};
use firebuild_mmds::server::{Server, ServerHandle};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// What the proxy does with one connection (one request: the client and server use one
/// request per connection).
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Answer this status with a short body, without asking the server.
    Status(u16),
    /// Read the request, close without an answer.
    Reset,
    /// Read the request, never answer (the client's attempt timeout ends it).
    Hang,
}

/// A proxy in front of the server: the first connections get the scripted faults, the rest
/// are forwarded.
struct FaultProxy {
    addr: SocketAddr,
    script: Arc<Mutex<VecDeque<Fault>>>,
    connections: Arc<AtomicUsize>,
}

impl FaultProxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let script: Arc<Mutex<VecDeque<Fault>>> = Arc::default();
        let connections = Arc::new(AtomicUsize::new(0));
        let (s, n) = (Arc::clone(&script), Arc::clone(&connections));
        tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                n.fetch_add(1, Ordering::SeqCst);
                let fault = s.lock().unwrap().pop_front();
                tokio::spawn(async move {
                    let Some(fault) = fault else {
                        if let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                        }
                        return;
                    };
                    let mut buf = [0u8; 4096];
                    let _ = down.read(&mut buf).await;
                    match fault {
                        Fault::Status(code) => {
                            let reply = format!(
                                "HTTP/1.1 {code} Injected\r\nContent-Length: 8\r\n\
                                 Connection: close\r\n\r\ninjected"
                            );
                            let _ = down.write_all(reply.as_bytes()).await;
                        }
                        Fault::Reset => {}
                        Fault::Hang => tokio::time::sleep(Duration::from_secs(60)).await,
                    }
                });
            }
        });
        FaultProxy {
            addr,
            script,
            connections,
        }
    }

    fn inject(&self, faults: &[Fault]) {
        self.script.lock().unwrap().extend(faults.iter().copied());
    }

    fn pending(&self) -> usize {
        self.script.lock().unwrap().len()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

fn document() -> serde_json::Value {
    json!({"instance-id": "i-0123", "hostname": "vm1", "env": {"A": "1"}})
}

async fn serve_at(addr: SocketAddr, data: serde_json::Value) -> ServerHandle {
    Server::builder()
        .listen(addr)
        .initial_data(data)
        .start()
        .await
        .unwrap()
}

/// Short pauses and attempts, a deadline well above what the faults cost.
fn config(addr: SocketAddr, deadline: Duration) -> ClientConfig {
    ClientConfig {
        deadline,
        attempt_timeout: Duration::from_millis(400),
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        ..ClientConfig::with_addr(addr)
    }
}

#[tokio::test]
async fn bursts_of_5xx_resets_and_hangs_are_retried_within_the_deadline() {
    let server = Server::builder()
        .initial_data(document())
        .start()
        .await
        .unwrap();
    let proxy = FaultProxy::start(server.local_addr()).await;
    let deadline = Duration::from_secs(10);
    let client = Client::new(config(proxy.addr, deadline));

    // First contact (V2: token, then the document) through a burst of every transient kind.
    let burst = [
        Fault::Status(500),
        Fault::Status(502),
        Fault::Reset,
        Fault::Status(504),
        Fault::Hang,
        Fault::Status(429),
        Fault::Status(500),
    ];
    proxy.inject(&burst);
    let started = Instant::now();
    let (md, etag) = client.fetch_metadata().await.unwrap();
    assert!(started.elapsed() < deadline);
    assert_eq!(md.instance_id.as_deref(), Some("i-0123"));
    assert_eq!(md.hostname.as_deref(), Some("vm1"));
    assert_eq!(etag, server.get().etag);
    assert_eq!(proxy.pending(), 0, "every injected fault was met");
    // The burst, then one token request and one GET.
    assert_eq!(proxy.connections(), burst.len() + 2);

    // With a cached token: a second burst on the GET alone.
    proxy.inject(&[Fault::Status(502), Fault::Reset, Fault::Status(500)]);
    let before = proxy.connections();
    let (v, _) = client.get_json("/hostname").await.unwrap();
    assert_eq!(v, "vm1");
    assert_eq!(proxy.connections() - before, 4);

    // A burst longer than the deadline ends as the last status, not as "nothing there".
    let short = Client::new(config(proxy.addr, Duration::from_millis(600)));
    proxy.inject(&[Fault::Status(500); 64]);
    match short.get_json("/hostname").await {
        Err(Error::Status { status, .. }) => assert_eq!(status.as_u16(), 500),
        other => panic!("{other:?}"),
    }
    proxy.script.lock().unwrap().clear();
    assert_eq!(short.get_json("/hostname").await.unwrap().0, "vm1");
    server.shutdown().await;
}

#[tokio::test]
async fn server_restarts_mid_fetch_are_retried_and_keep_the_etag() {
    let first = Server::builder()
        .initial_data(document())
        .start()
        .await
        .unwrap();
    let addr = first.local_addr();
    let deadline = Duration::from_secs(10);
    let client = Client::new(config(addr, deadline));
    let (_, etag) = client.fetch_metadata().await.unwrap();
    first.shutdown().await;

    // Three restarts: each time the client asks while nothing listens, the server comes back
    // 1 s later with the same document and a new token key (the cached token gets a 401 and
    // is replaced).
    for round in 0..3 {
        let restart = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            serve_at(addr, document()).await
        });
        let started = Instant::now();
        let (md, again) = client
            .fetch_metadata()
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(900),
            "round {round}: answered before the restart ({took:?})"
        );
        assert!(took < deadline, "round {round}: {took:?}");
        assert_eq!(md.instance_id.as_deref(), Some("i-0123"));
        assert_eq!(
            again, etag,
            "round {round}: a restart with the same document is not a change"
        );
        restart.await.unwrap().shutdown().await;
    }
}

#[tokio::test]
async fn an_outage_longer_than_the_deadline_is_unreachable_and_the_next_call_recovers() {
    let server = serve_at("127.0.0.1:0".parse().unwrap(), document()).await;
    let addr = server.local_addr();
    let client = Client::new(config(addr, Duration::from_millis(800)));
    client.fetch_metadata().await.unwrap();
    server.shutdown().await;

    let started = Instant::now();
    match client.fetch_metadata().await {
        Err(Error::Unreachable { attempts, .. }) => {
            assert!(attempts >= 2, "retried within the deadline: {attempts}")
        }
        other => panic!("an outage must be Unreachable, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    let back = serve_at(addr, document()).await;
    let (md, _) = client.fetch_metadata().await.unwrap();
    assert_eq!(md.instance_id.as_deref(), Some("i-0123"));
    back.shutdown().await;
}

#[tokio::test]
async fn a_long_poll_across_a_restart_returns_the_new_document() {
    let server = serve_at("127.0.0.1:0".parse().unwrap(), document()).await;
    let addr = server.local_addr();
    let client = Arc::new(Client::new(config(addr, Duration::from_secs(10))));
    let (_, etag) = client.get_json("/").await.unwrap();
    let waiter = {
        let client = Arc::clone(&client);
        let etag = etag.clone();
        tokio::spawn(async move {
            client
                .wait_for_change("/", &etag, Duration::from_secs(20))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished());
    // The server restarts with a changed document while the guest waits.
    server.shutdown().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut changed = document();
    changed["hostname"] = json!("vm2");
    let back = serve_at(addr, changed).await;
    let (v, new) = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("the long poll did not end")
        .unwrap()
        .unwrap()
        .expect("a change, not a timeout");
    assert_eq!(v["hostname"], "vm2");
    assert_ne!(new, etag);
    assert_eq!(new, back.get().etag);
    back.shutdown().await;
}
