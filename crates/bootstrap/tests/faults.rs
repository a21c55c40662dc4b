//! Fault injection on 127.0.0.1 (issue 16 item 5): a TCP proxy between the guest client and the
//! server cuts connections at seeded points of a large transfer, kills or freezes the "host"
//! mid-build, or kills the "guest" mid-step. Every fault is bounded in count and time; the only timing
//! assertions are the documented windows with a wide margin.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use firebuild_bootstrap::{
    BootstrapClient, ClientError, ClientOptions, DEFAULT_HEARTBEAT_TIMEOUT, Event, HostLost,
    Outcome, OutputOptions, OutputStream, StepRef,
};
use firebuild_plan::ResourceKind;
use firebuild_transfer::{ChunkPlanner, DirSink, Frame, ResourceEncoder};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tonic::Code;

/// Server→client bytes forwarded so far (all connections) and the cut points still ahead.
#[derive(Default)]
struct Cuts {
    down: u64,
    pending: VecDeque<u64>,
    done: usize,
}

/// A TCP proxy on 127.0.0.1 in front of `upstream`.
///
/// - Cuts: when the total of server→client bytes over all connections reaches the next cut
///   point, the connection carrying it is dropped in the middle of whatever it was sending.
/// - Kill: every open connection is dropped and the listener closed (later connects are
///   refused), as when the process on the other side is killed.
/// - Freeze: nothing more is forwarded either way and new connections are accepted but never
///   answered, every socket staying open, as when the process on the other side is stopped (or
///   the link stalls); a thaw lets the open connections go on.
struct FaultProxy {
    addr: SocketAddr,
    cuts: Arc<Mutex<Cuts>>,
    kill: watch::Sender<bool>,
    freeze: watch::Sender<bool>,
}

impl FaultProxy {
    async fn start(upstream: SocketAddr, cut_points: Vec<u64>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cuts = Arc::new(Mutex::new(Cuts {
            pending: cut_points.into(),
            ..Cuts::default()
        }));
        let (kill, killed) = watch::channel(false);
        let (freeze, frozen) = watch::channel(false);
        let c = Arc::clone(&cuts);
        tokio::spawn(async move {
            let mut stop = killed.clone();
            // Connections accepted while frozen: held open, never answered.
            let mut held = Vec::new();
            loop {
                let (down, _) = tokio::select! {
                    _ = stop.wait_for(|k| *k) => return, // drops the listener
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => return },
                };
                if *frozen.borrow() {
                    held.push(down);
                    continue;
                }
                let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let mut stop = killed.clone();
                let c = Arc::clone(&c);
                let frozen = frozen.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = stop.wait_for(|k| *k) => {}
                        () = forward(down, up, c, frozen) => {}
                    }
                    // Both sockets are dropped here: the connection ends abruptly.
                });
            }
        });
        FaultProxy {
            addr,
            cuts,
            kill,
            freeze,
        }
    }

    fn down_bytes(&self) -> u64 {
        self.cuts.lock().unwrap().down
    }

    fn cuts_done(&self) -> usize {
        self.cuts.lock().unwrap().done
    }

    fn kill(&self) {
        self.kill.send_replace(true);
    }

    fn freeze(&self) {
        self.freeze.send_replace(true);
    }

    /// Ends a freeze: the bytes held back go through, connections accepted meanwhile stay dead.
    fn thaw(&self) {
        self.freeze.send_replace(false);
    }

    async fn wait_down_bytes(&self, at_least: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.down_bytes() < at_least {
            assert!(Instant::now() < deadline, "transfer did not start");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn forward(
    mut down: tokio::net::TcpStream,
    mut up: tokio::net::TcpStream,
    cuts: Arc<Mutex<Cuts>>,
    frozen: watch::Receiver<bool>,
) {
    let (mut dr, mut dw) = down.split();
    let (mut ur, mut uw) = up.split();
    // Frozen: the bytes read are held back until a thaw, the sockets stay open.
    let stall = || {
        let mut frozen = frozen.clone();
        async move {
            let _ = frozen.wait_for(|f| !*f).await;
        }
    };
    let to_server = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = dr.read(&mut buf).await.unwrap_or(0);
            stall().await;
            if n == 0 || uw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let to_client = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = ur.read(&mut buf).await.unwrap_or(0);
            stall().await;
            if n == 0 {
                return;
            }
            // How much of this read may pass before the next cut point.
            let (pass, cut) = {
                let mut c = cuts.lock().unwrap();
                match c.pending.front().copied() {
                    Some(at) if at < c.down + n as u64 => {
                        c.pending.pop_front();
                        c.done += 1;
                        let pass = at.saturating_sub(c.down) as usize;
                        c.down += pass as u64;
                        (pass, true)
                    }
                    _ => {
                        c.down += n as u64;
                        (n, false)
                    }
                }
            };
            if dw.write_all(&buf[..pass]).await.is_err() || cut {
                return;
            }
        }
    };
    tokio::select! {
        () = to_server => {}
        () = to_client => {}
    }
}

/// xorshift64*: the cut points are reproducible from the printed seed.
fn next(x: &mut u64) -> u64 {
    *x ^= *x >> 12;
    *x ^= *x << 25;
    *x ^= *x >> 27;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// `n` cut points in `[from, to)`, one per equal slot, at least `gap` apart.
fn cut_points(seed: u64, n: u64, from: u64, to: u64, gap: u64) -> Vec<u64> {
    let mut x = (seed ^ 0x9e37_79b9_7f4a_7c15).max(1);
    let slot = (to - from) / n;
    assert!(slot > gap);
    (0..n)
        .map(|i| from + i * slot + next(&mut x) % (slot - gap))
        .collect()
}

/// The digest the server's encoder puts in the resource's `Eof`, computed locally.
fn expected_digest(path: &Path) -> [u8; 32] {
    let planner = ChunkPlanner::with_overhead(4 << 20, 64).unwrap();
    for frame in ResourceEncoder::new(path, planner).unwrap() {
        if let Frame::Eof(eof) = frame.unwrap() {
            return eof.digest;
        }
    }
    panic!("no eof for {}", path.display());
}

async fn client_via(proxy: &FaultProxy, h: &Harness, options: ClientOptions) -> BootstrapClient {
    BootstrapClient::connect_with(&config(proxy.addr, &h.pki.client), options)
        .await
        .unwrap()
}

/// Whether this process has `path` open (the server's encoder holds a file while sending it).
fn holds_open(path: &Path) -> bool {
    let want = std::fs::canonicalize(path).unwrap();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .any(|target| target == want)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_seeded_cuts_during_a_16_mib_pull_resume_and_every_digest_matches() {
    const SIZE: u64 = 16 << 20;
    const CUTS: u64 = 5;
    let seed = std::env::var("FIREBUILD_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0016);
    // All cuts fall inside the big file's bytes, at least 1 MiB apart, so every connection
    // moves the transfer forward.
    let points = cut_points(seed, CUTS, 1 << 20, SIZE - (1 << 20), 1 << 20);
    eprintln!("FIREBUILD_FAULT_SEED={seed}: cuts at server->client bytes {points:?}");

    let ctx = context(SIZE);
    write_pseudo_random(&ctx.path().join("second.bin"), 3 << 20, 7);
    let plan = plan(&[("ctx:second", "second.bin", ResourceKind::File)]);
    let mut h = start(plan, ctx.path(), |b| b).await;
    let proxy = FaultProxy::start(h.server.local_addr(), points.clone()).await;
    // The default retry budget (8 streams per pull), short pauses.
    let client = client_via(&proxy, &h, fast_options()).await;
    client.commands().await.unwrap();

    let out = tempfile::tempdir().unwrap();
    for (id, src, dest) in [
        ("ctx:big", "big.bin", "big.bin"),
        ("ctx:tree", "tree", "app"),
        ("ctx:second", "second.bin", "second.bin"),
    ] {
        let mut sink = DirSink::new(out.path().join(dest));
        let outcome = client
            .pull(id, &mut sink)
            .await
            .unwrap_or_else(|e| panic!("{id} (seed {seed}): {}", chain(&e)));
        assert_eq!(
            outcome.digest,
            expected_digest(&ctx.path().join(src)),
            "{id}: digest (seed {seed})"
        );
    }
    assert_eq!(
        proxy.cuts_done(),
        CUTS as usize,
        "every cut point was reached"
    );
    // What landed on disk is the source, byte for byte.
    assert_eq!(
        sha256_file(&out.path().join("big.bin")),
        sha256_file(&ctx.path().join("big.bin"))
    );
    assert_eq!(
        sha256_file(&out.path().join("second.bin")),
        sha256_file(&ctx.path().join("second.bin"))
    );
    assert_eq!(
        std::fs::read(out.path().join("app/etc/conf.d/app.conf")).unwrap(),
        b"key=value\n"
    );
    assert_eq!(
        std::fs::read_link(out.path().join("app/run")).unwrap(),
        Path::new("bin/run")
    );
    // Nothing half-written is left beside the results.
    let mut names: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["app", "big.bin", "second.bin"]);

    // The guest reconnected after each cut, and the big file's last stream was a resume that
    // did not send the file again from the start.
    client.success().await.unwrap();
    let events = h.events_until(|e| matches!(e, Event::Succeeded)).await;
    let connected = events
        .iter()
        .filter(|e| matches!(e, Event::Connected { .. }))
        .count();
    assert!(
        connected > CUTS as usize,
        "{connected} connections for {CUTS} cuts"
    );
    let big: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::ResourceSent { id, bytes, resumed } if id == "ctx:big" => {
                Some((*bytes, *resumed))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        big.len(),
        1,
        "one stream of ctx:big reached its eof: {big:?}"
    );
    assert!(big[0].1, "the completing stream resumed: {big:?}");
    assert!(
        big[0].0 <= SIZE - points[CUTS as usize - 1] + (2 << 20),
        "the last stream resent more than the tail after the last cut: {big:?}"
    );
    h.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_killed_mid_transfer_the_guest_gives_up_within_the_heartbeat_window() {
    const SIZE: u64 = 16 << 20;
    let ctx = context(SIZE);
    let h = start(plan(&[]), ctx.path(), |b| b).await;
    let proxy = FaultProxy::start(h.server.local_addr(), vec![]).await;
    // The guest's real retry budget: vminit connects with `ClientOptions::default()`.
    let client = client_via(&proxy, &h, ClientOptions::default()).await;
    client.commands().await.unwrap();
    let _heartbeat = client.spawn_heartbeat(None);
    let step = StepRef { stage: 0, step: 2 };
    client.step_started(step).await.unwrap();

    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("big.bin");
    let pull = {
        let client = client.clone();
        let dest = dest.clone();
        tokio::spawn(async move {
            let mut sink = DirSink::new(&dest);
            client.pull("ctx:big", &mut sink).await
        })
    };
    proxy.wait_down_bytes(2 << 20).await;
    // kill -9 of the host: its sockets close, nothing listens any more.
    proxy.kill();
    let killed = Instant::now();
    h.server.shutdown().await.unwrap();

    // What vminit does in an ADD step: the pull fails, it reports the step's end, that fails
    // too, and it exits with the error chain.
    let err = pull.await.unwrap().unwrap_err();
    let ClientError::Rpc {
        rpc: "ResourceChunk",
        attempts,
        status,
    } = &err
    else {
        panic!("{}", chain(&err))
    };
    assert_eq!(*attempts, ClientOptions::default().call_attempts);
    assert_eq!(status.code(), Code::Unavailable, "{}", chain(&err));
    assert!(
        chain(&err).starts_with("ResourceChunk failed after 8 attempts: "),
        "{}",
        chain(&err)
    );
    let err = client.step_finished(step, 1).await.unwrap_err();
    assert!(
        chain(&err).starts_with("StepFinished failed after 8 attempts: "),
        "{}",
        chain(&err)
    );
    let gave_up = killed.elapsed();
    eprintln!("the guest gave up {gave_up:?} after the host was killed");
    assert!(
        gave_up < DEFAULT_HEARTBEAT_TIMEOUT,
        "the guest needed {gave_up:?} to give up, the host waits {DEFAULT_HEARTBEAT_TIMEOUT:?} for it"
    );
    // The interrupted file is not left half-written.
    assert!(!dest.exists());
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_killed_mid_step_the_server_reports_it_and_lets_go() {
    const SIZE: u64 = 16 << 20;
    const TIMEOUT: Duration = Duration::from_secs(1);
    let ctx = context(SIZE);
    let mut h = start(plan(&[]), ctx.path(), |b| b.heartbeat_timeout(TIMEOUT)).await;
    let proxy = FaultProxy::start(h.server.local_addr(), vec![]).await;
    let client = client_via(&proxy, &h, fast_options()).await;
    client.commands().await.unwrap();
    let heartbeat = client.spawn_heartbeat(Some(Duration::from_millis(100)));

    // Step 0 runs and prints; step 2 (ADD big.bin) is pulling when the guest dies.
    let run = StepRef { stage: 0, step: 0 };
    client.step_started(run).await.unwrap();
    let reporter = client.output(OutputOptions::default());
    reporter
        .line(run, OutputStream::Stdout, "hello")
        .await
        .unwrap();
    assert_eq!(reporter.finish().await.unwrap(), 1);
    client.step_finished(run, 0).await.unwrap();
    let add = StepRef { stage: 0, step: 2 };
    client.step_started(add).await.unwrap();
    let out = tempfile::tempdir().unwrap();
    let pull = {
        let client = client.clone();
        let dest = out.path().join("big.bin");
        tokio::spawn(async move {
            let mut sink = DirSink::new(&dest);
            client.pull("ctx:big", &mut sink).await
        })
    };
    proxy.wait_down_bytes(2 << 20).await;
    let big = ctx.path().join("big.bin");
    assert!(holds_open(&big), "the server is sending big.bin");

    // The guest dies: its tasks stop, its TCP connections close without a goodbye.
    pull.abort();
    drop(heartbeat);
    drop(client);
    proxy.kill();
    let killed = Instant::now();

    let outcome = tokio::time::timeout(TIMEOUT * 20, h.server.wait())
        .await
        .expect("no outcome within 20 heartbeat timeouts")
        .unwrap();
    assert_eq!(outcome, Outcome::HeartbeatLost { timeout: TIMEOUT });
    eprintln!(
        "guest lost reported {:?} after it was killed",
        killed.elapsed()
    );
    assert!(
        killed.elapsed() >= TIMEOUT / 2,
        "lost before the guest was silent for the timeout: {:?}",
        killed.elapsed()
    );
    let events = h
        .events_until(|e| matches!(e, Event::HeartbeatLost { .. }))
        .await;
    let started = events
        .iter()
        .rposition(|e| *e == Event::StepStarted { step: add })
        .expect("step 2 started");
    assert!(
        !events[started..].iter().any(|e| matches!(
            e,
            Event::StepFinished { .. } | Event::Succeeded | Event::Aborted { .. }
        )),
        "nothing after the guest died but the loss: {events:#?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::ResourceSent { .. })),
        "the interrupted stream never completed: {events:#?}"
    );

    // The stream's encoder stops and closes the file once the connection is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while holds_open(&big) {
        assert!(
            Instant::now() < deadline,
            "the server still holds big.bin open 10 s after the guest died"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A guest coming back with the build's certificate finds the build over.
    let late = h.client().await;
    let err = late.commands().await.unwrap_err();
    let status = status_of(&err);
    assert_eq!(status.code(), Code::FailedPrecondition, "{status}");
    assert!(
        status
            .message()
            .contains("build already ended: guest lost: no heartbeat for 1.0s"),
        "{status}"
    );
    drop(late);
    // Nothing keeps the server from stopping at once.
    let stopping = Instant::now();
    h.server.shutdown().await.unwrap();
    assert!(
        stopping.elapsed() < firebuild_bootstrap::SHUTDOWN_GRACE,
        "shutdown waited for calls of a dead guest: {:?}",
        stopping.elapsed()
    );
}

/// Heartbeat window of the host-loss tests: short, so each test takes seconds.
const WINDOW: Duration = Duration::from_secs(3);

/// The guest's options with a short heartbeat window (and per-call timeout to match).
fn short_window_options() -> ClientOptions {
    ClientOptions {
        heartbeat_window: WINDOW,
        call_timeout: Duration::from_secs(1),
        keepalive_interval: Duration::from_secs(1),
        keepalive_timeout: Duration::from_secs(1),
        ..fast_options()
    }
}

/// A guest in a long idle RUN step (it only heartbeats) whose host is healthy for longer than
/// the window: no loss is signalled. Returns the client, its heartbeat and the running step.
async fn idle_step_with_healthy_host(
    proxy: &FaultProxy,
    h: &Harness,
) -> (BootstrapClient, firebuild_bootstrap::HeartbeatTask, StepRef) {
    let client = client_via(proxy, h, short_window_options()).await;
    let heartbeat = client.spawn_heartbeat(Some(Duration::from_millis(200)));
    client.commands().await.unwrap();
    let step = StepRef { stage: 0, step: 0 };
    client.step_started(step).await.unwrap();
    let early = tokio::time::timeout(WINDOW + WINDOW / 2, heartbeat.lost()).await;
    assert!(
        early.is_err(),
        "host lost while it answered every heartbeat: {early:?}"
    );
    (client, heartbeat, step)
}

/// The loss signal after a fault at `faulted`: it fires, says the host was silent for at least
/// the window, and comes within a generous bound (the window plus scheduling slack).
async fn assert_lost_in_time(heartbeat: &firebuild_bootstrap::HeartbeatTask, faulted: Instant) {
    let lost = tokio::time::timeout(WINDOW * 5, heartbeat.lost())
        .await
        .unwrap_or_else(|_| panic!("no loss signalled {:?} after the fault", WINDOW * 5));
    let after = faulted.elapsed();
    eprintln!("host lost signalled {after:?} after the fault: {lost}");
    let HostLost::Silent { silent } = &lost else {
        panic!("{lost:?}")
    };
    assert!(*silent >= WINDOW, "{lost:?}");
    assert!(
        lost.to_string().starts_with("no heartbeat answered for 3s"),
        "{lost}"
    );
    // A signal already fired is seen again by a later waiter at once.
    assert_eq!(heartbeat.lost().await, lost);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_frozen_during_an_idle_step_the_guest_signals_the_loss_within_the_window() {
    let ctx = context(16);
    let h = start(plan(&[]), ctx.path(), |b| b).await;
    let proxy = FaultProxy::start(h.server.local_addr(), vec![]).await;
    let (client, heartbeat, step) = idle_step_with_healthy_host(&proxy, &h).await;

    // SIGSTOP of the host: its sockets stay open, nothing answers, new connections hang.
    proxy.freeze();
    let frozen = Instant::now();
    assert_lost_in_time(&heartbeat, frozen).await;

    // A call made now does not hang either: its attempts end within the window.
    let calling = Instant::now();
    let err = client.step_finished(step, 0).await.unwrap_err();
    let ClientError::Rpc { status, .. } = &err else {
        panic!("{}", chain(&err))
    };
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Unavailable),
        "{}",
        chain(&err)
    );
    assert!(
        calling.elapsed() < WINDOW * 5,
        "StepFinished to a frozen host took {:?}",
        calling.elapsed()
    );
    proxy.kill();
    h.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_killed_during_an_idle_step_the_guest_signals_the_loss_within_the_window() {
    let ctx = context(16);
    let h = start(plan(&[]), ctx.path(), |b| b).await;
    let proxy = FaultProxy::start(h.server.local_addr(), vec![]).await;
    let (_client, heartbeat, _step) = idle_step_with_healthy_host(&proxy, &h).await;

    // kill -9 of the host: its sockets close, nothing listens any more.
    proxy.kill();
    let killed = Instant::now();
    h.server.shutdown().await.unwrap();
    assert_lost_in_time(&heartbeat, killed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_ending_the_build_is_signalled_as_a_loss() {
    const TIMEOUT: Duration = Duration::from_millis(500);
    let ctx = context(16);
    let mut h = start(plan(&[]), ctx.path(), |b| b.heartbeat_timeout(TIMEOUT)).await;
    let proxy = FaultProxy::start(h.server.local_addr(), vec![]).await;
    let client = client_via(&proxy, &h, short_window_options()).await;
    // Spawned before `Commands`: the early refusals ("Commands must be called first") do not
    // end it.
    let heartbeat = client.spawn_heartbeat(Some(Duration::from_millis(50)));
    let early = tokio::time::timeout(Duration::from_millis(300), heartbeat.lost()).await;
    assert!(early.is_err(), "{early:?}");
    client.commands().await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), heartbeat.lost()).await;
    assert!(early.is_err(), "{early:?}");

    // The link stalls for longer than the server's timeout (shorter than the guest's window):
    // the server ends the build; once the link is back, it refuses the next heartbeat.
    proxy.freeze();
    let outcome = tokio::time::timeout(Duration::from_secs(20), h.server.wait())
        .await
        .expect("the server noticed the silence")
        .unwrap();
    assert_eq!(outcome, Outcome::HeartbeatLost { timeout: TIMEOUT });
    proxy.thaw();
    let lost = tokio::time::timeout(WINDOW * 5, heartbeat.lost())
        .await
        .expect("loss signalled");
    let HostLost::Refused { message } = &lost else {
        panic!("{lost:?}")
    };
    assert!(
        message.contains("build already ended: guest lost"),
        "{message}"
    );
    assert!(
        lost.to_string().starts_with("the server ended the build: "),
        "{lost}"
    );
    proxy.kill();
    h.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_the_guest_ends_itself_is_not_a_loss() {
    let ctx = context(16);
    let mut h = start(plan(&[]), ctx.path(), |b| b).await;
    let client = BootstrapClient::connect_with(
        &config(h.server.local_addr(), &h.pki.client),
        short_window_options(),
    )
    .await
    .unwrap();
    let heartbeat = client.spawn_heartbeat(Some(Duration::from_millis(20)));
    client.commands().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    client.success().await.unwrap();
    assert_eq!(h.server.wait().await.unwrap(), Outcome::Succeeded);
    // The server now refuses every heartbeat; that is the end the guest asked for.
    let after = tokio::time::timeout(Duration::from_millis(500), heartbeat.lost()).await;
    assert!(after.is_err(), "{after:?}");
    h.server.shutdown().await.unwrap();
}
