//! Every way a peer can fail authentication is refused with a clear error, over real TCP and
//! TLS on 127.0.0.1. Each test also proves the refusal is real: the call that would succeed with
//! verification removed fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use firebuild_bootstrap::{BootstrapClient, ClientError, Event};
use firebuild_pki::{BuildPki, CertificateAuthority, Validity};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The server refused the connection: an event names the reason, and the client's first call
/// (or connect) fails.
async fn assert_server_rejects(
    h: &mut Harness,
    cfg: firebuild_bootstrap::BootstrapConfig,
    needle: &str,
) {
    server_rejects(h, cfg, needle, true).await;
}

async fn server_rejects(
    h: &mut Harness,
    cfg: firebuild_bootstrap::BootstrapConfig,
    needle: &str,
    in_handshake: bool,
) {
    let result = match BootstrapClient::connect_with(&cfg, fast_options()).await {
        Ok(client) => client.commands().await.map(drop),
        Err(e) => Err(e),
    };
    let err = result.expect_err("a rejected client must not get the plan");
    // A certificate refused with a TLS alert is not retried: it would fail the same way. (A
    // connection closed after the handshake looks like a network failure to the client.) With
    // TLS 1.3 the server's verdict can reach the client after its first request, and that
    // failure does not always look like a TLS one: one retry may happen, never the whole budget
    // (`fast_options` allows 8 attempts).
    if let (true, ClientError::Rpc { attempts, .. }) = (in_handshake, &err) {
        assert!(*attempts <= 2, "{}", chain(&err));
    }
    let events = h
        .events_until(|e| matches!(e, Event::Rejected { .. }))
        .await;
    // Counted by reason, not by number: a retried connection is refused for the same reason
    // (and its event may come later).
    let reasons: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::Rejected { reason, .. } => Some(reason.as_str()),
            _ => None,
        })
        .collect();
    let named = reasons.iter().filter(|r| r.contains(needle)).count();
    assert!(
        named >= 1 && named == reasons.len(),
        "reasons {reasons:?}: not all name {needle:?}; client error: {}",
        chain(&err)
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Connected { .. } | Event::CommandsServed)),
        "{events:?}"
    );
}

/// The client refused the server: connect fails at once (no retries) naming the reason.
async fn assert_client_rejects(cfg: firebuild_bootstrap::BootstrapConfig, needle: &str) {
    let err = BootstrapClient::connect_with(&cfg, fast_options())
        .await
        .expect_err("the client must refuse this server");
    let text = chain(&err);
    assert!(text.contains(needle), "{text}");
    assert!(
        matches!(err, ClientError::Connect { attempts: 1, .. }),
        "verification failures are not retried: {text}"
    );
}

#[tokio::test]
async fn client_trusting_another_ca_refuses_the_server() {
    let ctx = context(16);
    let h = start(plan(&[]), ctx.path(), |b| b).await;
    let mut cfg = config(h.server.local_addr(), &h.pki.client);
    cfg.tls_ca_cert = pki("build-1").client.ca_cert_pem().to_owned();
    assert_client_rejects(cfg, "UnknownIssuer").await;
    h.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_rejected() {
    let ctx = context(16);
    let mut h = start(plan(&[]), ctx.path(), |b| b).await;
    // Same build id, but issued by a foreign CA; the client trusts the real server CA.
    let foreign = pki("build-1");
    let mut cfg = config(h.server.local_addr(), &foreign.client);
    cfg.tls_ca_cert = h.pki.client.ca_cert_pem().to_owned();
    assert_server_rejects(&mut h, cfg, "UnknownIssuer").await;
    h.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn client_without_certificate_is_rejected() {
    let ctx = context(16);
    let mut h = start(plan(&[]), ctx.path(), |b| b).await;
    // A TLS client that trusts the server but presents no certificate.
    let mut roots = rustls::RootCertStore::empty();
    for ca in h.pki.client.ca_certs_der() {
        roots.add(ca.clone()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(firebuild_pki::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(h.server.local_addr())
        .await
        .unwrap();
    let name = firebuild_pki::server_name("127.0.0.1").unwrap();
    // TLS 1.3: the client may finish its side before the server's verdict arrives; the
    // connection must then die on first use.
    if let Ok(mut stream) = connector.connect(name, tcp).await {
        let _ = stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        let mut buf = [0u8; 64];
        let read = stream.read(&mut buf).await;
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "server answered a client without certificate: {read:?}"
        );
    }
    let events = h
        .events_until(|e| matches!(e, Event::Rejected { .. }))
        .await;
    let Some(Event::Rejected { reason, .. }) = events.last() else {
        unreachable!()
    };
    assert!(reason.contains("no certificates"), "{reason}");
    h.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn expired_client_certificate_is_rejected() {
    let ctx = context(16);
    let pki = pki("build-1");
    let now = SystemTime::now();
    let past = Validity::between(
        now - Duration::from_secs(7200),
        now - Duration::from_secs(3600),
    )
    .unwrap();
    let expired = pki.ca.issue_client(&pki.build_id, &past).unwrap();
    let tls = pki.server.clone().into();
    let mut h = start_with(plan(&[]), ctx.path(), tls, pki, |b| b).await;
    let cfg = config(h.server.local_addr(), &expired);
    assert_server_rejects(&mut h, cfg, "certificate expired").await;
    h.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn expired_server_certificate_is_refused_by_the_client() {
    let ctx = context(16);
    let ca = CertificateAuthority::generate(&Validity::default()).unwrap();
    let now = SystemTime::now();
    let past = Validity::between(
        now - Duration::from_secs(7200),
        now - Duration::from_secs(3600),
    )
    .unwrap();
    let server = ca.issue_server(&["127.0.0.1"], &past).unwrap();
    let pki = BuildPki::issue_from(
        ca,
        build_id("build-1"),
        &["127.0.0.1"],
        &Validity::default(),
    )
    .unwrap();
    let h = start_with(plan(&[]), ctx.path(), server.into(), pki, |b| b).await;
    assert_client_rejects(
        config(h.server.local_addr(), &h.pki.client),
        "certificate expired",
    )
    .await;
    h.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn server_san_mismatch_is_refused_by_the_client() {
    let ctx = context(16);
    // The server certificate names another host than the one the guest dials.
    let pki = BuildPki::generate(
        build_id("build-1"),
        &["10.9.9.9", "bootstrap.example"],
        &Validity::default(),
    )
    .unwrap();
    let tls = pki.server.clone().into();
    let h = start_with(plan(&[]), ctx.path(), tls, pki, |b| b).await;
    assert_client_rejects(
        config(h.server.local_addr(), &h.pki.client),
        "certificate not valid for name",
    )
    .await;
    h.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn client_certificate_of_another_build_is_rejected() {
    let ctx = context(16);
    let mut h = start(plan(&[]), ctx.path(), |b| b).await;
    let other = h
        .pki
        .ca
        .issue_client(&build_id("build-2"), &Validity::default())
        .unwrap();
    let cfg = config(h.server.local_addr(), &other);
    assert_server_rejects(&mut h, cfg, "client certificate is for build build-2").await;
    h.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn build_id_is_checked_even_with_a_lenient_rustls_config() {
    // An embedder passing its own rustls config that accepts any client of the CA still gets
    // the build check after the handshake.
    let ctx = context(16);
    let pki = pki("build-1");
    let lenient = pki
        .server
        .server_config(&firebuild_pki::ClientPolicy::AnyClientOfCa)
        .unwrap();
    let other = pki
        .ca
        .issue_client(&build_id("build-2"), &Validity::default())
        .unwrap();
    let mut h = start_with(plan(&[]), ctx.path(), lenient.into(), pki, |b| b).await;
    let cfg = config(h.server.local_addr(), &other);
    server_rejects(
        &mut h,
        cfg,
        "client certificate is for build build-2",
        false,
    )
    .await;

    // The right client still gets in.
    let client = h.client().await;
    client.commands().await.unwrap();
    h.server.shutdown().await.unwrap();
}

/// One guest connection is served at a time: a second connection with the build's certificate
/// supersedes the first, whose next call needs a connection of its own (a third `Connected`),
/// never the old one. A reconnecting guest (after a cut) works the same way.
#[tokio::test]
async fn a_newer_guest_connection_supersedes_the_older_one() {
    let ctx = context(0);
    let mut h = start(plan(&[]), ctx.path(), |b| b).await;
    let first = h.client().await;
    first.commands().await.unwrap();
    let connected = |evs: &[Event]| {
        evs.iter()
            .filter(|e| matches!(e, Event::Connected { .. }))
            .count()
    };
    let mut seen = h
        .events_until(|e| matches!(e, Event::Connected { .. }))
        .await;
    let second = h.client().await;
    second.heartbeat(1).await.unwrap();
    seen.extend(
        h.events_until(|e| matches!(e, Event::Connected { .. }))
            .await,
    );
    assert_eq!(connected(&seen), 2);
    // The first guest's old connection is no longer served: its call goes over a new one.
    let _ = first.heartbeat(2).await;
    seen.extend(
        h.events_until(|e| matches!(e, Event::Connected { .. }))
            .await,
    );
    assert_eq!(connected(&seen), 3, "{seen:#?}");

    // With the rule off (load tests), both stay on their connections.
    let mut h = start(plan(&[]), ctx.path(), |b| b.single_guest_connection(false)).await;
    let a = h.client().await;
    a.commands().await.unwrap();
    let b = h.client().await;
    b.heartbeat(1).await.unwrap();
    a.heartbeat(2).await.unwrap();
    b.heartbeat(3).await.unwrap();
    let mut seen = Vec::new();
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(300), h.events.recv()).await
    {
        seen.push(ev);
    }
    assert_eq!(connected(&seen), 2, "{seen:#?}");
}

/// The step cache's hook: `Commands` tells the guest to freeze at each step's end, a successful
/// `StepFinished` is answered only once the hook is done, and a failed step does not run it.
#[tokio::test]
async fn a_step_hook_holds_a_successful_step_end_until_it_is_done() {
    let ctx = context(0);
    let (tx, mut done) = tokio::sync::mpsc::unbounded_channel();
    let hook: firebuild_bootstrap::StepHook = Arc::new(move |at| {
        let tx = tx.clone();
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = tx.send(at);
        })
    });
    let h = start(plan(&[]), ctx.path(), |b| b.step_hook(hook)).await;
    let client = h.client().await;
    assert!(client.commands().await.unwrap().snapshot_steps);
    let first = firebuild_bootstrap::StepRef { stage: 0, step: 0 };
    client.step_started(first).await.unwrap();
    client
        .step_finished_snapshot(first, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        done.try_recv().unwrap(),
        first,
        "answered before the hook ended"
    );
    let second = firebuild_bootstrap::StepRef { stage: 0, step: 1 };
    client.step_started(second).await.unwrap();
    client.step_finished(second, 2).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(done.try_recv().is_err(), "the hook ran for a failed step");

    // Without a hook the guest is not asked to freeze.
    let plain = start(plan(&[]), ctx.path(), |b| b).await;
    assert!(
        !plain
            .client()
            .await
            .commands()
            .await
            .unwrap()
            .snapshot_steps
    );
}

/// The hook that takes the disk at success: `Commands` tells the guest to freeze before
/// `Success`, which is answered only once the hook is done (the event first, so the embedder
/// knows the outcome while the hook stops the VM), and a retried `Success` waits for it too.
#[tokio::test]
async fn a_success_hook_holds_the_answer_to_success_until_it_is_done() {
    let ctx = context(0);
    let (tx, mut done) = tokio::sync::mpsc::unbounded_channel();
    let hook: firebuild_bootstrap::SuccessHook = Arc::new(move || {
        let tx = tx.clone();
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = tx.send(());
        })
    });
    let mut h = start(plan(&[]), ctx.path(), |b| b.success_hook(hook)).await;
    let client = h.client().await;
    let commands = client.commands().await.unwrap();
    assert!(commands.freeze_at_success && !commands.snapshot_steps);
    client.success().await.unwrap();
    assert!(done.try_recv().is_ok(), "answered before the hook ended");
    let mut seen = Vec::new();
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(300), h.events.recv()).await
    {
        seen.push(ev);
    }
    assert!(
        seen.iter()
            .any(|e| matches!(e, firebuild_bootstrap::Event::Succeeded)),
        "{seen:#?}"
    );
    client.success().await.unwrap();
    assert!(done.try_recv().is_ok(), "a retried Success did not wait");

    // Without a hook the guest is not asked to freeze.
    let plain = start(plan(&[]), ctx.path(), |b| b).await;
    let commands = plain.client().await.commands().await.unwrap();
    assert!(!commands.freeze_at_success);
}
