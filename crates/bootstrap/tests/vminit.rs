//! Simulated vminit: a guest client against a real server over TCP and mutual TLS on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use firebuild_bootstrap::{ClientOptions, Event, Outcome, OutputOptions, OutputStream, StepRef};
use firebuild_plan::{ResourceKind, StepKind};
use firebuild_transfer::DirSink;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vminit_runs_run_add_copy_with_tree_and_100_mib_file() {
    let ctx = context(BIG);
    let plan = plan(&[]);
    let mut h = start(plan.clone(), ctx.path(), |b| b).await;
    let client = h.client().await;
    let _hb = client.spawn_heartbeat(Some(Duration::from_millis(200)));

    let commands = client.commands().await.unwrap();
    assert_eq!(
        commands.plan, plan,
        "the guest sees exactly the host's plan"
    );
    assert_eq!(commands.resource_ids, ["ctx:tree", "ctx:big"]);
    assert_eq!(commands.build_id, "build-1");

    let rootfs = tempfile::tempdir().unwrap();
    let reporter = client.output(OutputOptions::default());
    for (stage, step) in commands.plan.steps() {
        let at = StepRef {
            stage: stage.index,
            step: step.index,
        };
        client.step_started(at).await.unwrap();
        match &step.kind {
            StepKind::Run(_) => {
                for i in 0..3 {
                    reporter
                        .line(at, OutputStream::Stdout, format!("hello {i}"))
                        .await
                        .unwrap();
                }
                reporter
                    .line(at, OutputStream::Stderr, "warning: x")
                    .await
                    .unwrap();
            }
            StepKind::Workdir => {}
            StepKind::Copy(t) | StepKind::Add(t) => {
                for source in &t.sources {
                    let firebuild_plan::Source::Path { resources, .. } = source else {
                        continue;
                    };
                    for r in resources {
                        let dest = rootfs.path().join(r.target.trim_start_matches('/'));
                        let mut sink = DirSink::new(&dest);
                        let outcome = client.pull(&r.id, &mut sink).await.unwrap();
                        if r.kind == ResourceKind::File {
                            assert_eq!(outcome.bytes, BIG);
                            // The plain SHA-256 is off by default (BLAKE3 verifies the transfer).
                            assert_eq!(outcome.file_sha256, None);
                            assert_eq!(
                                sha256_file(&dest),
                                sha256_file(&ctx.path().join("big.bin"))
                            );
                        }
                    }
                }
            }
        }
        client.step_finished(at, 0).await.unwrap();
    }
    assert_eq!(reporter.finish().await.unwrap(), 4);
    client.success().await.unwrap();
    assert_eq!(h.server.wait().await, Some(Outcome::Succeeded));

    // The 100 MiB file arrived intact.
    let big = rootfs.path().join("big.bin");
    assert_eq!(std::fs::metadata(&big).unwrap().len(), BIG);
    assert_eq!(sha256_file(&big), sha256_file(&ctx.path().join("big.bin")));
    // The tree kept its contents, modes and symlink.
    let app = rootfs.path().join("app");
    assert_eq!(
        std::fs::read(app.join("etc/conf.d/app.conf")).unwrap(),
        b"key=value\n"
    );
    let mode = |p: &str| std::fs::symlink_metadata(app.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("bin/run"), 0o755);
    assert_eq!(mode("etc/conf.d/app.conf"), 0o640);
    assert_eq!(mode("etc"), 0o750);
    assert_eq!(std::fs::read(app.join("empty")).unwrap(), b"");
    assert_eq!(
        std::fs::read_link(app.join("run")).unwrap().to_str(),
        Some("bin/run")
    );

    let events = h.events_until(|e| matches!(e, Event::Succeeded)).await;
    assert!(matches!(events[0], Event::Connected { .. }), "{events:?}");
    assert!(events.contains(&Event::CommandsServed));
    let lines: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Output { stream, line, step } => Some((*stream, line.as_str(), *step)),
            _ => None,
        })
        .collect();
    let run = StepRef { stage: 0, step: 0 };
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.0 == OutputStream::Stdout)
            .map(|l| (l.1, l.2))
            .collect::<Vec<_>>(),
        [("hello 0", run), ("hello 1", run), ("hello 2", run)]
    );
    assert!(lines.contains(&(OutputStream::Stderr, "warning: x", run)));
    assert!(events.iter().any(|e| matches!(e,
        Event::ResourceSent { id, bytes, resumed: false } if id == "ctx:big" && *bytes == BIG)));
    assert!(events.contains(&Event::StepFinished {
        step: StepRef { stage: 0, step: 2 },
        exit_code: 0
    }));
    h.server.shutdown().await.unwrap();
}

/// A TCP proxy that cuts its first connection after `cut_after` bytes from the server, and
/// forwards later connections untouched.
async fn cutting_proxy(upstream: std::net::SocketAddr, cut_after: usize) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((mut down, _)) = listener.accept().await {
            let first = conns.fetch_add(1, Ordering::SeqCst) == 0;
            tokio::spawn(async move {
                let mut up = tokio::net::TcpStream::connect(upstream).await.unwrap();
                if !first {
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    return;
                }
                let (mut dr, mut dw) = down.split();
                let (mut ur, mut uw) = up.split();
                let to_server = tokio::io::copy(&mut dr, &mut uw);
                let to_client = async {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut sent = 0;
                    while sent < cut_after {
                        let n = ur.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        let n = n.min(cut_after - sent);
                        if dw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        sent += n;
                    }
                };
                tokio::select! {
                    _ = to_server => {}
                    () = to_client => {}
                }
                // Dropping both sockets cuts the connection mid-stream.
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cut_mid_transfer_resumes_and_digest_matches() {
    const SIZE: u64 = 24 << 20;
    let ctx = context(SIZE);
    let mut h = start(plan(&[]), ctx.path(), |b| b).await;
    let proxy = cutting_proxy(h.server.local_addr(), 6 << 20).await;
    let cfg = config(proxy, &h.pki.client);
    let client = firebuild_bootstrap::BootstrapClient::connect_with(&cfg, fast_options())
        .await
        .unwrap();
    client.commands().await.unwrap();

    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("big.bin");
    let mut sink = DirSink::new(&dest);
    let outcome = client.pull("ctx:big", &mut sink).await.unwrap();
    assert_eq!(outcome.bytes, SIZE);
    assert_eq!(sha256_file(&dest), sha256_file(&ctx.path().join("big.bin")));

    // The server saw a resumed stream that sent less than the whole file.
    let events = h
        .events_until(|e| matches!(e, Event::ResourceSent { resumed: true, .. }))
        .await;
    let Some(Event::ResourceSent { bytes, .. }) = events.last() else {
        unreachable!()
    };
    assert!(*bytes < SIZE, "resumed stream resent everything: {bytes}");
    assert!(
        events
            .iter()
            .filter(|e| matches!(e, Event::Connected { .. }))
            .count()
            >= 2,
        "the guest reconnected: {events:?}"
    );
    h.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn calls_before_commands_are_refused() {
    let ctx = context(16);
    let h = start(plan(&[]), ctx.path(), |b| b).await;
    let client = h.client().await;

    let err = client.heartbeat(1).await.unwrap_err();
    let status = status_of(&err);
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("Commands must be called first"),
        "{status}"
    );

    let mut sink = DirSink::new(tempfile::tempdir().unwrap().path().join("x"));
    let err = client.pull("ctx:big", &mut sink).await.unwrap_err();
    assert_eq!(status_of(&err).code(), Code::FailedPrecondition);
    let err = client.success().await.unwrap_err();
    assert_eq!(status_of(&err).code(), Code::FailedPrecondition);

    client.commands().await.unwrap();
    client.heartbeat(2).await.unwrap();
    h.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn unknown_and_escaping_resources_are_refused() {
    let ctx = context(16);
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"secret").unwrap();
    let escape = format!(
        "../{}/secret",
        outside.path().file_name().unwrap().to_str().unwrap()
    );
    std::fs::create_dir(ctx.path().join("sub")).unwrap();
    std::os::unix::fs::symlink(outside.path(), ctx.path().join("sub/link")).unwrap();
    let plan = plan(&[
        ("ctx:dotdot", &escape, ResourceKind::File),
        ("ctx:via-link", "sub/link/secret", ResourceKind::File),
    ]);
    let h = start(plan, ctx.path(), |b| b).await;
    let client = h.client().await;
    client.commands().await.unwrap();
    let dest = tempfile::tempdir().unwrap();

    let mut sink = DirSink::new(dest.path().join("a"));
    let err = client.pull("no-such-id", &mut sink).await.unwrap_err();
    let status = status_of(&err);
    assert_eq!(status.code(), Code::NotFound, "{status}");
    assert!(status.message().contains("no-such-id"), "{status}");

    for id in ["ctx:dotdot", "ctx:via-link"] {
        let mut sink = DirSink::new(dest.path().join(id));
        let err = client.pull(id, &mut sink).await.unwrap_err();
        let status = status_of(&err);
        assert_eq!(status.code(), Code::PermissionDenied, "{id}: {status}");
        assert!(status.message().contains("outside its root"), "{status}");
        assert!(!dest.path().join(id).exists());
    }
    h.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn silent_guest_ends_the_build_with_heartbeat_lost() {
    let ctx = context(16);
    let mut h = start(plan(&[]), ctx.path(), |b| {
        b.heartbeat_timeout(Duration::from_millis(300))
    })
    .await;
    let client = h.client().await;
    client.commands().await.unwrap();
    // The guest goes silent (no heartbeat task).
    let outcome = h.server.wait().await.unwrap();
    assert_eq!(
        outcome,
        Outcome::HeartbeatLost {
            timeout: Duration::from_millis(300)
        }
    );
    assert!(outcome.to_string().contains("no heartbeat"), "{outcome}");
    h.events_until(|e| matches!(e, Event::HeartbeatLost { .. }))
        .await;
    let err = client.success().await.unwrap_err();
    let status = status_of(&err);
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("build already ended: guest lost"),
        "{status}"
    );
    h.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn heartbeats_keep_the_build_alive_and_abort_is_reported() {
    let ctx = context(16);
    let mut h = start(plan(&[]), ctx.path(), |b| {
        b.heartbeat_timeout(Duration::from_millis(1500))
    })
    .await;
    let client = h.client().await;
    client.commands().await.unwrap();
    let hb = client.spawn_heartbeat(Some(Duration::from_millis(50)));
    // Well past the timeout: only the heartbeats keep the build alive.
    tokio::time::sleep(Duration::from_millis(4000)).await;
    assert_eq!(h.server.outcome(), None, "heartbeats keep the build alive");
    let step = StepRef { stage: 0, step: 0 };
    client
        .abort("command failed", Some(step), Some(2))
        .await
        .unwrap();
    drop(hb);
    let outcome = h.server.wait().await.unwrap();
    assert_eq!(
        outcome.to_string(),
        "aborted by the guest: command failed (stage 0 step 0, exit code 2)"
    );
    let events = h.events_until(|e| matches!(e, Event::Aborted { .. })).await;
    assert_eq!(
        events.last(),
        Some(&Event::Aborted {
            error: "command failed".into(),
            step: Some(step),
            exit_code: Some(2)
        })
    );
    h.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_fit_an_odd_message_limit_exactly() {
    // Both ends at an odd limit: a chunk one byte too big would be refused by the client's
    // decoder with OUT_OF_RANGE.
    const LIMIT: usize = 100_003;
    let ctx = context(3 << 20);
    let h = start(plan(&[]), ctx.path(), |b| b.max_message_size(LIMIT)).await;
    let options = ClientOptions {
        max_message_size: LIMIT,
        ..fast_options()
    };
    let client = firebuild_bootstrap::BootstrapClient::connect_with(
        &config(h.server.local_addr(), &h.pki.client),
        options,
    )
    .await
    .unwrap();
    let commands = client.commands().await.unwrap();
    assert_eq!(commands.max_message_size, LIMIT);
    let chunk = firebuild_bootstrap::chunk_planner(LIMIT)
        .unwrap()
        .chunk_size();
    assert!(firebuild_bootstrap::chunk_frame_len(chunk) <= LIMIT);
    assert!(firebuild_bootstrap::chunk_frame_len(chunk + 1) > LIMIT);

    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("big.bin");
    let outcome = client
        .pull("ctx:big", &mut DirSink::new(&dest))
        .await
        .unwrap();
    assert_eq!(outcome.bytes, 3 << 20);
    assert_eq!(sha256_file(&dest), sha256_file(&ctx.path().join("big.bin")));
    let meta = std::fs::metadata(&dest).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o777,
        std::fs::metadata(ctx.path().join("big.bin"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    );
    h.server.shutdown().await.unwrap();
}

/// A server for `plan` with `source`, its events, and a client that has fetched the commands.
async fn serve_source(
    plan: firebuild_plan::BuildPlan,
    source: firebuild_bootstrap::DirSource,
) -> (
    firebuild_bootstrap::ServerHandle,
    firebuild_bootstrap::BootstrapClient,
    firebuild_bootstrap::Events,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pki = pki("build-1");
    let (server, events) = firebuild_bootstrap::BootstrapServer::builder()
        .plan(plan)
        .resources(source)
        .tls(pki.server.clone())
        .expected_client(pki.build_id.clone())
        .serve(listener)
        .await
        .unwrap();
    let client = firebuild_bootstrap::BootstrapClient::connect_with(
        &config(server.local_addr(), &pki.client),
        fast_options(),
    )
    .await
    .unwrap();
    client.commands().await.unwrap();
    (server, client, events)
}

#[tokio::test]
async fn context_filter_leaves_ignored_entries_out() {
    let ctx = context(16);
    let plan = plan(&[]);
    // A .dockerignore-like filter: drop etc/ and everything named "empty".
    let source = firebuild_bootstrap::DirSource::new(&plan, ctx.path())
        .walk_directories()
        .filter(|path, _is_dir| {
            path != std::path::Path::new("etc") && path.file_name() != Some("empty".as_ref())
        });
    let (server, client, _events) = serve_source(plan, source).await;
    let out = tempfile::tempdir().unwrap();
    let app = out.path().join("app");
    client
        .pull("ctx:tree", &mut DirSink::new(&app))
        .await
        .unwrap();
    assert!(app.join("bin/run").is_file());
    assert!(app.join("run").symlink_metadata().is_ok());
    assert!(!app.join("etc").exists(), "filtered directory was sent");
    assert!(!app.join("empty").exists(), "filtered file was sent");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_directory_resource_is_sent_alone_by_default() {
    // Plans from firebuild-dockerfile list a directory's kept entries as resources of their
    // own: walking the directory would send them twice, and the .dockerignored ones too.
    let ctx = context(16);
    let plan = plan(&[]);
    let source = firebuild_bootstrap::DirSource::new(&plan, ctx.path());
    let (server, client, _events) = serve_source(plan, source).await;
    let out = tempfile::tempdir().unwrap();
    let app = out.path().join("app");
    let outcome = client
        .pull("ctx:tree", &mut DirSink::new(&app))
        .await
        .unwrap();
    assert!(app.is_dir());
    assert_eq!(
        std::fs::read_dir(&app).unwrap().count(),
        0,
        "entries were sent"
    );
    assert_eq!(outcome.bytes, 0);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_lines_arrive_in_order_and_success_is_idempotent() {
    let ctx = context(16);
    let mut h = start(plan(&[]), ctx.path(), |b| b).await;
    let client = h.client().await;
    client.commands().await.unwrap();
    let step = StepRef { stage: 0, step: 0 };
    let reporter = client.output(OutputOptions {
        max_batch_bytes: 4096,
        ..OutputOptions::default()
    });
    // Events are bounded (backpressure reaches the guest), so the host reads them while the
    // guest writes.
    let guest = async {
        for i in 0..5000 {
            reporter
                .line(step, OutputStream::Stdout, format!("line {i}"))
                .await
                .unwrap();
        }
        reporter.finish().await.unwrap()
    };
    let host = h.events_until(|e| matches!(e, Event::Output { line, .. } if line == "line 4999"));
    let (acked, events) = tokio::join!(guest, host);
    assert_eq!(acked, 5000);
    let lines: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Output { line, .. } => Some(line.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        lines,
        (0..5000).map(|i| format!("line {i}")).collect::<Vec<_>>()
    );

    // A line for a step the plan does not have is refused.
    let reporter = client.output(OutputOptions::default());
    reporter
        .line(StepRef { stage: 7, step: 0 }, OutputStream::Stderr, "x")
        .await
        .unwrap();
    let err = reporter.finish().await.unwrap_err();
    assert_eq!(status_of(&err).code(), Code::InvalidArgument);

    client.success().await.unwrap();
    // A retried Success (its first answer lost) is accepted; an Abort after it is not.
    client.success().await.unwrap();
    let err = client.abort("late", None, None).await.unwrap_err();
    assert_eq!(status_of(&err).code(), Code::FailedPrecondition);
    // The server refuses output once the build ended; a reporter given no line makes no call
    // at all (each cost the guest tens of milliseconds per step under TCG), so it still
    // finishes.
    let late = client.output(OutputOptions::default());
    late.line(step, OutputStream::Stdout, "late").await.unwrap();
    let err = late.finish().await.unwrap_err();
    assert_eq!(status_of(&err).code(), Code::FailedPrecondition);
    let idle = client.output(OutputOptions::default());
    assert_eq!(idle.finish().await.unwrap(), 0);
    assert_eq!(h.server.wait().await, Some(Outcome::Succeeded));
    h.server.shutdown().await.unwrap();
}
