//! The host end of the vsock status channel, over a Unix socket as Firecracker's hybrid vsock
//! delivers a guest connection: valid, oversize, garbage and unfinished lines, order, several
//! connections, and consumed values deleted from the store the host controls (this crate's
//! server, and Firecracker's API as this crate's server mirrors it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use firebuild_mmds::firecracker::FirecrackerApi;
use firebuild_mmds::schema::{GUEST_STATUS_POINTER, GuestPhase, GuestStatus};
use firebuild_mmds::server::Server;
use firebuild_mmds::vsock::{
    MAX_CONNECTIONS, MAX_LINE_BYTES, StatusHandle, StatusListener, encode_line, socket_path,
};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

fn status(phase: GuestPhase) -> GuestStatus {
    GuestStatus::new(phase)
}

async fn listener(dir: &tempfile::TempDir) -> StatusHandle {
    StatusListener::builder(socket_path(&dir.path().join("v.sock"), 10240))
        .start()
        .await
        .unwrap()
}

/// Reads until the listener closes the connection; true if it did within 2 s.
async fn closed_by_host(s: &mut UnixStream) -> bool {
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn a_valid_line_is_the_latest_status_in_the_servers_shape() {
    let dir = tempfile::tempdir().unwrap();
    let h = listener(&dir).await;
    assert!(h.path().ends_with("v.sock_10240"));
    let mut changes = h.subscribe();
    assert!(
        changes
            .borrow()
            .data
            .pointer(GUEST_STATUS_POINTER)
            .is_none()
    );

    let mut guest = UnixStream::connect(h.path()).await.unwrap();
    let mut s = status(GuestPhase::Exited);
    s.workload_exit = Some(3);
    guest.write_all(&encode_line(&s).unwrap()).await.unwrap();

    changes.changed().await.unwrap();
    let doc = changes.borrow().data.clone();
    assert_eq!(
        doc.pointer(GUEST_STATUS_POINTER).unwrap(),
        &json!({"phase": "exited", "workload-exit": 3})
    );
    assert_eq!(h.latest(), Some(s));
    assert_eq!(h.rejected(), 0);
}

#[tokio::test]
async fn several_statuses_arrive_in_order_on_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let h = listener(&dir).await;
    let phases = [
        GuestPhase::Booting,
        GuestPhase::Configuring,
        GuestPhase::Configured,
        GuestPhase::Running,
        GuestPhase::Exited,
    ];
    let mut guest = UnixStream::connect(h.path()).await.unwrap();
    // All in one write: the listener splits them at the newlines.
    let bytes: Vec<u8> = phases
        .iter()
        .flat_map(|p| encode_line(&status(*p)).unwrap())
        .collect();
    guest.write_all(&bytes).await.unwrap();
    until("5 statuses", || h.statuses().len() == 5).await;
    let got: Vec<_> = h.statuses().iter().map(|s| s.phase).collect();
    assert_eq!(got, phases);
    // A reconnecting guest goes on where it left off.
    drop(guest);
    let mut again = UnixStream::connect(h.path()).await.unwrap();
    again
        .write_all(&encode_line(&status(GuestPhase::Failed)).unwrap())
        .await
        .unwrap();
    until("the 6th", || h.statuses().len() == 6).await;
    assert_eq!(h.latest().unwrap().phase, GuestPhase::Failed);
}

#[tokio::test]
async fn a_garbage_line_is_refused_and_the_next_one_read() {
    let dir = tempfile::tempdir().unwrap();
    let h = listener(&dir).await;
    let mut guest = UnixStream::connect(h.path()).await.unwrap();
    for bad in [
        &b"not json\n"[..],
        b"{\"phase\":\"nope\"}\n",
        b"{\"phase\":\"running\",\"extra\":1}\n",
        b"{\"phase\":\"failed\",\"message\":\"a\\u001bb\"}\n",
        b"\xff\xfe\n",
        b"\n",
    ] {
        guest.write_all(bad).await.unwrap();
    }
    guest
        .write_all(&encode_line(&status(GuestPhase::Running)).unwrap())
        .await
        .unwrap();
    until("the valid line", || h.latest().is_some()).await;
    assert_eq!(h.rejected(), 6);
    assert_eq!(h.statuses().len(), 1);
}

#[tokio::test]
async fn an_oversize_line_closes_the_connection_and_a_new_one_works() {
    let dir = tempfile::tempdir().unwrap();
    let h = listener(&dir).await;
    let mut guest = UnixStream::connect(h.path()).await.unwrap();
    let huge = format!(
        r#"{{"phase":"failed","message":"{}"}}"#,
        "x".repeat(MAX_LINE_BYTES * 4)
    );
    // The host stops reading at the limit, so the write may fail once it has closed.
    let _ = guest.write_all(huge.as_bytes()).await;
    let _ = guest.write_all(b"\n").await;
    assert!(closed_by_host(&mut guest).await, "the host closes it");
    until("the rejection", || h.rejected() == 1).await;
    assert!(h.latest().is_none());

    let mut again = UnixStream::connect(h.path()).await.unwrap();
    again
        .write_all(&encode_line(&status(GuestPhase::Running)).unwrap())
        .await
        .unwrap();
    until("the status", || h.latest().is_some()).await;
}

#[tokio::test]
async fn a_line_cut_off_by_the_guest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let h = listener(&dir).await;
    let mut guest = UnixStream::connect(h.path()).await.unwrap();
    guest.write_all(br#"{"phase":"runn"#).await.unwrap();
    drop(guest);
    until("the rejection", || h.rejected() == 1).await;
    assert!(h.latest().is_none());
}

#[tokio::test]
async fn connections_past_the_limit_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let h = listener(&dir).await;
    let mut open = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        let mut s = UnixStream::connect(h.path()).await.unwrap();
        // A status through each proves each is being served.
        s.write_all(&encode_line(&status(GuestPhase::Running)).unwrap())
            .await
            .unwrap();
        open.push(s);
    }
    until("one status per connection", || {
        h.statuses().len() == MAX_CONNECTIONS
    })
    .await;
    let mut extra = UnixStream::connect(h.path()).await.unwrap();
    assert!(closed_by_host(&mut extra).await);
    // Closing one frees its place.
    drop(open.pop());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut next = UnixStream::connect(h.path()).await.unwrap();
    next.write_all(&encode_line(&status(GuestPhase::Exited)).unwrap())
        .await
        .unwrap();
    until("the status", || {
        h.latest().map(|s| s.phase) == Some(GuestPhase::Exited)
    })
    .await;
}

fn consumed_status() -> GuestStatus {
    let mut s = status(GuestPhase::Configured);
    s.consumed = vec![
        "/users/0/password".into(),
        // Host-owned: never deleted, whatever the guest says.
        "/bootstrap".into(),
        "/hostname".into(),
    ];
    s
}

fn document() -> serde_json::Value {
    json!({
        "hostname": "vm1",
        "bootstrap": {"grpc-host-port": "10.0.0.1:1"},
        "status-channel": {"vsock-port": 10240},
        "users": [{"name": "ops", "password": {"hash": "$6$salt$hash"}}, {"name": "app"}],
    })
}

#[tokio::test]
async fn a_consumed_value_is_deleted_from_the_embedded_server_once() {
    let server = Arc::new(
        Server::builder()
            .initial_data(document())
            .start()
            .await
            .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let h = StatusListener::builder(dir.path().join("v.sock_1"))
        .store(server.clone())
        .start()
        .await
        .unwrap();
    let mut server_changes = server.subscribe();
    let mut guest = UnixStream::connect(h.path()).await.unwrap();
    guest
        .write_all(&encode_line(&consumed_status()).unwrap())
        .await
        .unwrap();
    until("the status", || h.latest().is_some()).await;

    let doc = server.get().data;
    assert!(doc.pointer("/users/0/password").is_none(), "{doc}");
    assert_eq!(doc["users"][0]["name"], "ops");
    assert_eq!(doc["hostname"], "vm1");
    assert!(doc.get("bootstrap").is_some(), "host-owned keys stay");
    // The server's own watchers see the status where the guest would have PUT it.
    server_changes.changed().await.unwrap();
    assert_eq!(
        doc.pointer(GUEST_STATUS_POINTER).unwrap()["phase"],
        "configured"
    );
    let consumed: Vec<_> = h.consumed().into_iter().map(|c| c.pointer).collect();
    assert_eq!(consumed, ["/users/0/password"]);

    // Every later status repeats the list; it is deleted once.
    guest
        .write_all(
            &encode_line(&{
                let mut s = consumed_status();
                s.phase = GuestPhase::Running;
                s
            })
            .unwrap(),
        )
        .await
        .unwrap();
    until("the second status", || h.statuses().len() == 2).await;
    assert_eq!(h.consumed().len(), 1);
}

#[tokio::test]
async fn a_consumed_value_is_patched_away_through_the_firecracker_api() {
    // This crate's server mirrors Firecracker's `GET`/`PATCH /mmds` on its API socket.
    let dir = tempfile::tempdir().unwrap();
    let api_sock = dir.path().join("api.sock");
    let server = Server::builder()
        .api_socket(&api_sock)
        .initial_data(document())
        .start()
        .await
        .unwrap();
    let h = StatusListener::builder(socket_path(&dir.path().join("v.sock"), 10240))
        .store(FirecrackerApi::new(&api_sock))
        .start()
        .await
        .unwrap();
    let mut guest = UnixStream::connect(h.path()).await.unwrap();
    guest
        .write_all(&encode_line(&consumed_status()).unwrap())
        .await
        .unwrap();
    until("the status", || h.latest().is_some()).await;
    let doc = server.get().data;
    assert!(doc.pointer("/users/0/password").is_none(), "{doc}");
    assert_eq!(doc["users"][1], json!({"name": "app"}));
    assert!(doc.get("bootstrap").is_some() && doc.get("hostname").is_some());
    // Firecracker's MMDS is the guest's to read: the status is not written into it.
    assert!(doc.pointer(GUEST_STATUS_POINTER).is_none());
    assert_eq!(h.consumed().len(), 1);
    assert_eq!(h.consumed()[0].pointer, "/users/0/password");
}

#[tokio::test]
async fn a_failed_delete_is_retried_with_the_next_status() {
    // The API socket is not there yet: the first delete fails.
    let dir = tempfile::tempdir().unwrap();
    let api_sock = dir.path().join("api.sock");
    let h = StatusListener::builder(dir.path().join("v.sock_2"))
        .store(FirecrackerApi::new(&api_sock).with_timeout(Duration::from_secs(1)))
        .start()
        .await
        .unwrap();
    let mut guest = UnixStream::connect(h.path()).await.unwrap();
    guest
        .write_all(&encode_line(&consumed_status()).unwrap())
        .await
        .unwrap();
    until("the status", || h.latest().is_some()).await;
    assert!(h.consumed().is_empty());

    let server = Server::builder()
        .api_socket(&api_sock)
        .initial_data(document())
        .start()
        .await
        .unwrap();
    guest
        .write_all(&encode_line(&consumed_status()).unwrap())
        .await
        .unwrap();
    until("the second status", || h.statuses().len() == 2).await;
    assert_eq!(h.consumed().len(), 1);
    assert!(server.get().data.pointer("/users/0/password").is_none());
}

#[tokio::test]
async fn shutdown_removes_the_socket_and_a_stale_one_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock_3");
    let first = StatusListener::builder(&path).start().await.unwrap();
    drop(first);
    assert!(!path.exists(), "dropping removes it");
    // A socket file left by a killed process is replaced.
    let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
    drop(stale);
    let h = StatusListener::builder(&path).start().await.unwrap();
    let mut guest = UnixStream::connect(&path).await.unwrap();
    guest
        .write_all(&encode_line(&status(GuestPhase::Running)).unwrap())
        .await
        .unwrap();
    until("the status", || h.latest().is_some()).await;
    h.shutdown().await;
    assert!(!path.exists());
    // A regular file there is not removed.
    std::fs::write(&path, b"keep").unwrap();
    assert!(StatusListener::builder(&path).start().await.is_err());
    assert_eq!(std::fs::read(&path).unwrap(), b"keep");
}
