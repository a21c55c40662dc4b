//! Load: 100 simulated guests at once against one bootstrap server and one embedded MMDS, over
//! loopback with mutual TLS, while guests holding certificates of other builds try to get in.
//!
//! Each guest does what vminit does in build mode: takes an MMDS V2 token and reads the metadata
//! (through a relay that sends the MMDS relay key, as the VM's port forward does), connects with
//! the client certificate of the `bootstrap` section, fetches the plan, runs its steps (output
//! lines on the batched `StdOut`/`StdErr` streams, the COPY directory and the 4 MiB ADD file
//! pulled with `ResourceChunk`; the file's bytes and resource digest checked against the host's)
//! and reports success.
//!
//! How 100 guests share one build: a server serves exactly one build (one expected client build
//! id, one outcome), so all 100 guests use that build's client certificate from the same MMDS
//! document. The first `Success` ends the build and every later call but a repeated `Success` is
//! refused, so the guests do all their work, wait for each other, and then all report success
//! (the repeats are acknowledged). The real build flow allows one guest per build: it scrubs
//! `/bootstrap` from the metadata on the first connection, which this test does not do.
//!
//! Figures (throughput, latency percentiles, peak RSS) are printed, never asserted: run
//! `bash benches/load.sh` for release figures; CI runs this in debug for correctness only.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use firebuild_bootstrap::{
    BootstrapClient, BootstrapConfig, BootstrapServer, ClientKey, DirSource, Event, Outcome,
    OutputOptions, OutputStream, StepRef,
};
use firebuild_mmds::client::{Client as MmdsClient, ClientConfig as MmdsConfig};
use firebuild_mmds::server::Server as MmdsServer;
use firebuild_pki::{BuildPki, CertificateAuthority, Validity};
use firebuild_plan::{BuildPlan, ResourceKind, StepKind};
use firebuild_transfer::{EntryKind, Frame, Header, ResourceEncoder, Sink};
use support::{chain, config, context, fast_options, pki};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Barrier, watch};

const GUESTS: usize = 100;
const RESOURCE: u64 = 4 << 20;
const STDOUT_LINES: usize = 20;
const STDERR_LINES: usize = 5;
const BUILD: &str = "load-1";
const OTHER_BUILD: &str = "load-other";
/// Fails the test instead of hanging it if something deadlocks.
const LOAD_TIMEOUT: Duration = Duration::from_secs(300);

/// What a guest timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    /// MMDS: token PUT + document GET + validation.
    Metadata,
    /// TCP + mutual TLS + HTTP/2.
    Connect,
    Commands,
    Heartbeat,
    StepStarted,
    StepFinished,
    /// `ResourceChunk` of the COPY directory (one entry, no content).
    PullDir,
    /// `ResourceChunk` of the 4 MiB ADD file, to the verified end.
    PullFile,
    /// `OutputReporter::finish`: last flush, both streams closed, acknowledged.
    Output,
    Success,
}

impl Op {
    /// gRPC calls the operation makes (the reporter holds one `StdOut` and one `StdErr` call).
    fn grpc_calls(self) -> usize {
        match self {
            Op::Metadata | Op::Connect => 0,
            Op::Output => 2,
            _ => 1,
        }
    }
}

#[derive(Debug, Default)]
struct GuestReport {
    samples: Vec<(Op, Duration)>,
    file_bytes: u64,
}

/// Shared by the guests.
struct Env {
    /// The MMDS relay's address (what the guest sees as 169.254.169.254:80).
    metadata: SocketAddr,
    plan: BuildPlan,
    /// BLAKE3 of the file's bytes, and the resource digest the host computes for it.
    file_blake3: [u8; 32],
    file_digest: [u8; 32],
    /// Guests that have fetched the plan.
    planned: watch::Sender<usize>,
    /// The guests and the intruder driver meet here before anyone reports success.
    done: Barrier,
}

/// A sink that keeps nothing: it hashes file content and records the entries.
#[derive(Default)]
struct HashSink {
    content: blake3::Hasher,
    entries: Vec<(EntryKind, String)>,
    bytes: u64,
    finished: bool,
}

impl Sink for HashSink {
    fn begin_entry(&mut self, header: &Header) -> std::io::Result<()> {
        self.entries.push((header.kind, header.path.clone()));
        Ok(())
    }
    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.content.update(data);
        self.bytes += data.len() as u64;
        Ok(())
    }
    fn end_entry(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn finish(&mut self) -> std::io::Result<()> {
        self.finished = true;
        Ok(())
    }
}

async fn timed<T>(samples: &mut Vec<(Op, Duration)>, op: Op, call: impl Future<Output = T>) -> T {
    let start = Instant::now();
    let out = call.await;
    samples.push((op, start.elapsed()));
    out
}

/// The client configuration from the metadata's `bootstrap` section, as vminit builds it.
fn client_config(b: &firebuild_mmds::schema::Bootstrap) -> BootstrapConfig {
    BootstrapConfig {
        grpc_host_port: b.grpc_host_port.clone(),
        tls_ca_cert: b.tls_ca_cert.clone(),
        tls_cert: b.tls_cert.clone(),
        tls_key: ClientKey::new(b.tls_key.expose().to_owned()),
    }
}

/// One guest's build up to (not including) `Success`.
async fn work(i: usize, env: &Env) -> anyhow::Result<(BootstrapClient, GuestReport)> {
    let mut r = GuestReport::default();
    let mmds = MmdsClient::new(MmdsConfig::with_addr(env.metadata));
    let (md, _etag) = timed(&mut r.samples, Op::Metadata, mmds.fetch_metadata())
        .await
        .context("reading the metadata")?;
    let bootstrap = md.bootstrap.context("no bootstrap section")?;
    let client = timed(
        &mut r.samples,
        Op::Connect,
        BootstrapClient::connect(&client_config(&bootstrap)),
    )
    .await
    .map_err(|e| anyhow::anyhow!("connect: {}", chain(&e)))?;
    let commands = timed(&mut r.samples, Op::Commands, client.commands())
        .await
        .map_err(|e| anyhow::anyhow!("commands: {}", chain(&e)))?;
    ensure!(commands.plan == env.plan, "the guest got another plan");
    ensure!(commands.build_id == BUILD, "build id {}", commands.build_id);
    ensure!(
        commands.resource_ids == ["ctx:tree", "ctx:big"],
        "{:?}",
        commands.resource_ids
    );
    env.planned.send_modify(|n| *n += 1);
    timed(&mut r.samples, Op::Heartbeat, client.heartbeat(1))
        .await
        .map_err(|e| anyhow::anyhow!("heartbeat: {}", chain(&e)))?;

    let reporter = client.output(OutputOptions::default());
    for (stage, step) in commands.plan.steps() {
        let at = StepRef {
            stage: stage.index,
            step: step.index,
        };
        timed(&mut r.samples, Op::StepStarted, client.step_started(at))
            .await
            .map_err(|e| anyhow::anyhow!("{at} started: {}", chain(&e)))?;
        match &step.kind {
            StepKind::Run(_) => {
                for n in 0..STDOUT_LINES {
                    reporter
                        .line(at, OutputStream::Stdout, format!("guest {i} line {n}"))
                        .await?;
                }
                for n in 0..STDERR_LINES {
                    reporter
                        .line(at, OutputStream::Stderr, format!("guest {i} warning {n}"))
                        .await?;
                }
            }
            StepKind::Copy(t) | StepKind::Add(t) => {
                for source in &t.sources {
                    let firebuild_plan::Source::Path { resources, .. } = source else {
                        continue;
                    };
                    for res in resources {
                        let mut sink = HashSink::default();
                        let op = match res.kind {
                            ResourceKind::File => Op::PullFile,
                            _ => Op::PullDir,
                        };
                        let outcome = timed(&mut r.samples, op, client.pull(&res.id, &mut sink))
                            .await
                            .map_err(|e| anyhow::anyhow!("pull {}: {}", res.id, chain(&e)))?;
                        ensure!(sink.finished, "{}: sink not finished", res.id);
                        ensure!(outcome.bytes == sink.bytes, "{}: byte count", res.id);
                        if op == Op::PullFile {
                            ensure!(
                                sink.entries == [(EntryKind::File, String::new())],
                                "{:?}",
                                sink.entries
                            );
                            ensure!(sink.bytes == RESOURCE, "{} bytes", sink.bytes);
                            ensure!(
                                *sink.content.finalize().as_bytes() == env.file_blake3,
                                "the file's bytes differ from the host's"
                            );
                            ensure!(
                                outcome.digest == env.file_digest,
                                "resource digest differs from the host's"
                            );
                            r.file_bytes += sink.bytes;
                        } else {
                            // Directory entries are resources of their own in a real plan.
                            ensure!(
                                sink.entries == [(EntryKind::Dir, String::new())],
                                "{:?}",
                                sink.entries
                            );
                        }
                    }
                }
            }
            StepKind::Workdir => {}
        }
        timed(
            &mut r.samples,
            Op::StepFinished,
            client.step_finished(at, 0),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{at} finished: {}", chain(&e)))?;
    }
    let acked = timed(&mut r.samples, Op::Output, reporter.finish())
        .await
        .map_err(|e| anyhow::anyhow!("output: {}", chain(&e)))?;
    ensure!(
        acked == (STDOUT_LINES + STDERR_LINES) as u64,
        "{acked} lines acknowledged"
    );
    Ok((client, r))
}

/// A guest: its build, then (once everyone is done) `Success`.
async fn guest(i: usize, env: Arc<Env>) -> anyhow::Result<GuestReport> {
    let worked = work(i, &env).await;
    // Everyone reaches the barrier, failed or not, so a failure cannot hang the others.
    env.done.wait().await;
    let (client, mut r) = worked.with_context(|| format!("guest {i}"))?;
    timed(&mut r.samples, Op::Success, client.success())
        .await
        .map_err(|e| anyhow::anyhow!("guest {i}: success: {}", chain(&e)))?;
    Ok(r)
}

/// What a guest of another build got.
#[derive(Debug)]
struct Intrusion {
    /// Guests that had fetched the plan when it tried.
    planned_before: usize,
    /// The client's error (`None` if it got the plan).
    error: Option<String>,
}

/// Connects and asks for the plan; the error chain if refused.
async fn intrude(cfg: &BootstrapConfig) -> Option<String> {
    let result = match BootstrapClient::connect_with(cfg, fast_options()).await {
        Ok(client) => client.commands().await.map(drop),
        Err(e) => Err(e),
    };
    result.err().map(|e| chain(&e))
}

/// Once half the guests have the plan, a guest of another build tries this server: first one
/// whose certificate comes from the same CA (only the build id differs), then one with a whole
/// PKI of its own (as every real build mints), trusting our CA as well as its own.
async fn intruders(
    env: Arc<Env>,
    same_ca: BootstrapConfig,
    own_ca: BootstrapConfig,
) -> [Intrusion; 2] {
    let mut planned = env.planned.subscribe();
    let _ = planned.wait_for(|n| *n >= GUESTS / 2).await;
    let mut out = Vec::new();
    for cfg in [same_ca, own_ca] {
        let planned_before = *env.planned.borrow();
        let error = intrude(&cfg).await;
        out.push(Intrusion {
            planned_before,
            error,
        });
    }
    env.done.wait().await;
    out.try_into().unwrap()
}

/// Forwards each connection to `upstream` after sending `key` first: the VM's metadata relay.
async fn relay(upstream: SocketAddr, key: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut down, _)) = listener.accept().await {
            let key = key.clone();
            tokio::spawn(async move {
                let Ok(mut up) = TcpStream::connect(upstream).await else {
                    return;
                };
                if up.write_all(&key).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                }
            });
        }
    });
    addr
}

/// The server's events, counted.
#[derive(Debug, Default)]
struct Tally {
    connected: usize,
    rejected: Vec<String>,
    commands_served: usize,
    started: usize,
    finished: usize,
    /// Per guest, in arrival order.
    stdout: BTreeMap<usize, Vec<String>>,
    stderr: BTreeMap<usize, Vec<String>>,
    /// `(id, bytes, resumed)` per `ResourceSent`.
    sent: Vec<(String, u64, bool)>,
    succeeded: usize,
    other: Vec<Event>,
}

async fn tally(mut events: firebuild_bootstrap::Events) -> Tally {
    let mut t = Tally::default();
    while let Some(event) = events.recv().await {
        match event {
            Event::Connected { .. } => t.connected += 1,
            Event::Rejected { reason, .. } => t.rejected.push(reason),
            Event::CommandsServed => t.commands_served += 1,
            Event::StepStarted { .. } => t.started += 1,
            Event::StepFinished { exit_code: 0, .. } => t.finished += 1,
            Event::Output { stream, line, .. } => {
                let guest = line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(usize::MAX);
                let per = match stream {
                    OutputStream::Stdout => &mut t.stdout,
                    _ => &mut t.stderr,
                };
                per.entry(guest).or_default().push(line);
            }
            Event::ResourceSent { id, bytes, resumed } => t.sent.push((id, bytes, resumed)),
            Event::Succeeded => t.succeeded += 1,
            other => t.other.push(other),
        }
    }
    t
}

/// The resource digest and content BLAKE3 of `path`, as the host would send it.
fn host_digests(path: &std::path::Path) -> ([u8; 32], [u8; 32]) {
    let planner =
        firebuild_bootstrap::chunk_planner(firebuild_bootstrap::DEFAULT_MAX_MESSAGE_SIZE).unwrap();
    let mut encoder = ResourceEncoder::builder(path)
        .planner(planner)
        .build()
        .unwrap();
    let mut digest = None;
    while let Some(frame) = encoder.next_frame().unwrap() {
        if let Frame::Eof(eof) = frame {
            digest = Some(eof.digest);
        }
    }
    let content = *blake3::hash(&std::fs::read(path).unwrap()).as_bytes();
    (content, digest.unwrap())
}

/// `VmHWM` (peak resident set) of this process in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Nearest-rank percentile of sorted `v`.
fn percentile(v: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn report(reports: &[GuestReport], wall: Duration, rss_before: u64, rss_peak: u64) {
    let secs = wall.as_secs_f64();
    let bytes: u64 = reports.iter().map(|r| r.file_bytes).sum();
    let samples: Vec<(Op, Duration)> = reports.iter().flat_map(|r| r.samples.clone()).collect();
    let calls: usize = samples.iter().map(|(op, _)| op.grpc_calls()).sum();
    let mut by_op: BTreeMap<Op, Vec<Duration>> = BTreeMap::new();
    for (op, d) in &samples {
        by_op.entry(*op).or_default().push(*d);
    }
    let mut unary = Vec::new();
    for (op, v) in &mut by_op {
        v.sort();
        if !matches!(
            op,
            Op::Metadata | Op::Connect | Op::PullDir | Op::PullFile | Op::Output
        ) {
            unary.extend_from_slice(v);
        }
    }
    unary.sort();
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    eprintln!(
        "load: {GUESTS} guests, {} MiB file each, {profile} build, {} threads",
        RESOURCE >> 20,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    eprintln!("load: wall {secs:.2} s (all guests started at once, until the last Success)");
    eprintln!(
        "load: resource data {:.0} MB in {secs:.2} s = {:.1} MB/s aggregate",
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / secs
    );
    eprintln!(
        "load: gRPC calls {calls} in {secs:.2} s = {:.0} calls/s (plus {} MMDS HTTP requests)",
        calls as f64 / secs,
        2 * reports.len()
    );
    eprintln!(
        "load: unary calls (Commands, Heartbeat, StepStarted, StepFinished, Success): p50 {} ms, p99 {} ms",
        ms(percentile(&unary, 50.0)),
        ms(percentile(&unary, 99.0))
    );
    eprintln!(
        "load: peak RSS (VmHWM, whole process: server, MMDS and the {GUESTS} clients) {} MiB; {} MiB before the guests started",
        rss_peak / 1024,
        rss_before / 1024
    );
    eprintln!("load: | operation | calls | p50 ms | p99 ms | max ms |");
    eprintln!("load: |---|---|---|---|---|");
    for (op, v) in &by_op {
        eprintln!(
            "load: | {op:?} | {} | {} | {} | {} |",
            v.len(),
            ms(percentile(v, 50.0)),
            ms(percentile(v, 99.0)),
            ms(*v.last().unwrap())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_guests_share_one_build_and_other_builds_are_refused() {
    let ctx = context(RESOURCE);
    let plan = support::plan(&[]);
    let (file_blake3, file_digest) = host_digests(&ctx.path().join("big.bin"));
    let ours = pki(BUILD);

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (mut server, events) = BootstrapServer::builder()
        .single_guest_connection(false)
        .resources(DirSource::new(&plan, ctx.path()))
        .plan(plan.clone())
        .tls(ours.server.clone())
        .expected_client(ours.build_id.clone())
        .serve(listener)
        .await
        .unwrap();
    let tally = tokio::spawn(tally(events));
    let addr = server.local_addr();

    // The metadata session.rs writes, behind the relay key the VM's port forward sends.
    let mmds = MmdsServer::builder()
        .initial_data(serde_json::json!({
            "instance-id": format!("build-{BUILD}"),
            "bootstrap": {
                "grpc-host-port": addr.to_string(),
                "tls-ca-cert": ours.client.ca_cert_pem(),
                "tls-cert": ours.client.cert_pem(),
                "tls-key": ours.client.key_pem().expose_secret(),
            }
        }))
        .require_relay_key(true)
        .start()
        .await
        .unwrap();
    let metadata = relay(mmds.local_addr(), mmds.relay_key().unwrap().to_vec()).await;

    // Another build of the same CA (only the build id differs), and another build with its own
    // CA whose guest also trusts ours.
    let ca = CertificateAuthority::from_pem(ours.ca.cert_pem(), ours.ca.key_pem().expose_secret())
        .unwrap();
    let sibling = BuildPki::issue_from(
        ca,
        support::build_id(OTHER_BUILD),
        &["127.0.0.1"],
        &Validity::default(),
    )
    .unwrap();
    let same_ca = config(addr, &sibling.client);
    let foreign = pki(OTHER_BUILD);
    let mut own_ca = config(addr, &foreign.client);
    own_ca.tls_ca_cert = format!(
        "{}{}",
        foreign.client.ca_cert_pem(),
        ours.client.ca_cert_pem()
    );

    let env = Arc::new(Env {
        metadata,
        plan: plan.clone(),
        file_blake3,
        file_digest,
        planned: watch::channel(0).0,
        done: Barrier::new(GUESTS + 1),
    });

    let rss_before = peak_rss_kib();
    let start = Instant::now();
    let guests: Vec<_> = (0..GUESTS)
        .map(|i| tokio::spawn(guest(i, Arc::clone(&env))))
        .collect();
    let intruders = tokio::spawn(intruders(Arc::clone(&env), same_ca, own_ca));
    let joined = tokio::time::timeout(LOAD_TIMEOUT, futures::future::join_all(guests))
        .await
        .expect("the load did not finish in time");
    let wall = start.elapsed();
    let rss_peak = peak_rss_kib();
    let intrusions = tokio::time::timeout(LOAD_TIMEOUT, intruders)
        .await
        .unwrap()
        .unwrap();

    // All 100 completed, each with a verified file.
    let mut reports = Vec::new();
    let mut failures = Vec::new();
    for (i, j) in joined.into_iter().enumerate() {
        match j {
            Ok(Ok(r)) => reports.push(r),
            Ok(Err(e)) => failures.push(format!("{e:#}")),
            Err(e) => failures.push(format!("guest {i} task: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} guests failed: {failures:#?}",
        failures.len()
    );
    assert_eq!(reports.len(), GUESTS);
    assert!(reports.iter().all(|r| r.file_bytes == RESOURCE));
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), server.wait())
            .await
            .unwrap(),
        Some(Outcome::Succeeded)
    );
    report(&reports, wall, rss_before, rss_peak);

    // Both intruders tried while the build ran (no Success before the barrier) and were refused.
    for (n, i) in intrusions.iter().enumerate() {
        eprintln!(
            "load: intruder {n}: tried after {} guests had the plan; refused: {:?}",
            i.planned_before, i.error
        );
        assert!(i.planned_before >= GUESTS / 2, "{i:?}");
        assert!(i.error.is_some(), "intruder {n} got the plan");
    }

    server.shutdown().await.unwrap();
    mmds.shutdown().await;
    let t = tokio::time::timeout(Duration::from_secs(30), tally)
        .await
        .expect("the event stream did not end after shutdown")
        .unwrap();

    // The server refused the intruders and nobody else: the same-CA one with the build
    // mismatch named, the other one's certificate as of an unknown issuer. (A refused client
    // may retry once: in TLS 1.3 the server's verdict can arrive after the client sent its
    // first request, and that failure does not always look like a TLS one to the client.)
    let mismatch =
        format!("client certificate is for build {OTHER_BUILD}, this server serves build {BUILD}");
    let named = t.rejected.iter().filter(|r| r.contains(&mismatch)).count();
    let unknown = t
        .rejected
        .iter()
        .filter(|r| r.contains("UnknownIssuer"))
        .count();
    assert!(named >= 1 && unknown >= 1, "{:#?}", t.rejected);
    assert_eq!(named + unknown, t.rejected.len(), "{:#?}", t.rejected);
    assert!(
        t.rejected
            .iter()
            .all(|r| r.contains("tls handshake failed")),
        "{:#?}",
        t.rejected
    );
    // Nothing else was disturbed: one connection per guest, every step and line, every file
    // sent whole, one outcome.
    assert_eq!(t.connected, GUESTS);
    assert_eq!(
        t.commands_served, 1,
        "the event marks the first Commands only"
    );
    assert_eq!(t.started, 3 * GUESTS);
    assert_eq!(t.finished, 3 * GUESTS);
    assert_eq!(t.succeeded, 1);
    assert!(t.other.is_empty(), "{:#?}", t.other);
    assert_eq!(t.stdout.len(), GUESTS);
    assert_eq!(t.stderr.len(), GUESTS);
    for i in 0..GUESTS {
        let out: Vec<String> = (0..STDOUT_LINES)
            .map(|n| format!("guest {i} line {n}"))
            .collect();
        let err: Vec<String> = (0..STDERR_LINES)
            .map(|n| format!("guest {i} warning {n}"))
            .collect();
        assert_eq!(t.stdout.get(&i), Some(&out), "stdout of guest {i}");
        assert_eq!(t.stderr.get(&i), Some(&err), "stderr of guest {i}");
    }
    let files: Vec<_> = t.sent.iter().filter(|s| s.0 == "ctx:big").collect();
    assert_eq!(files.len(), GUESTS);
    assert!(files.iter().all(|s| s.1 == RESOURCE && !s.2), "{files:?}");
    assert_eq!(t.sent.iter().filter(|s| s.0 == "ctx:tree").count(), GUESTS);
}
