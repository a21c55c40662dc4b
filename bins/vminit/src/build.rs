//! Build mode: connect to the bootstrap server, provide the build environment
//! ([`crate::buildenv`]), run every step of the plan in order, stream the output, pull and place
//! ADD/COPY resources, restore the environment, then `Success` or `Abort`.
//!
//! When the host is lost (no heartbeat answered for the heartbeat window, or the server ended the
//! build), the build stops where it is: the running step's process is killed, the environment
//! restored, and vminit exits non-zero so the VM powers off (init's shutdown then stops whatever
//! the step left running).

use std::collections::VecDeque;
use std::path::Path;

use anyhow::Context as _;
use firebuild_bootstrap::{
    BootstrapClient, BootstrapConfig, ClientKey, HostLost, OutputOptions, OutputReporter,
    OutputStream, StepRef,
};
use firebuild_guest::step::{self, Exit, Stream};
use firebuild_mmds::schema::Bootstrap;
use firebuild_plan::{Step, StepKind, Transfer};

use crate::buildenv::BuildEnv;

/// Lines kept for the `Abort` message of a failed step.
const LAST_LINES: usize = 20;
/// Longest `Abort` message.
const MAX_ABORT: usize = 4096;
/// How long the host may take to snapshot the disk at a step's end.
const SNAPSHOT_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// The client configuration from the metadata's `bootstrap` section.
pub fn client_config(b: &Bootstrap) -> BootstrapConfig {
    if let Some(name) = &b.server_name
        && Some(name.as_str()) != b.grpc_host_port.rsplit_once(':').map(|(h, _)| h)
    {
        tracing::warn!(
            "bootstrap server-name {name:?} is ignored: the client checks the host of grpc-host-port"
        );
    }
    BootstrapConfig {
        grpc_host_port: b.grpc_host_port.clone(),
        tls_ca_cert: b.tls_ca_cert.clone(),
        tls_cert: b.tls_cert.clone(),
        tls_key: ClientKey::new(b.tls_key.expose().to_owned()),
    }
}

/// Runs the build; `Ok(true)` when every step succeeded and `Success` was acknowledged; an error
/// when the bootstrap server is lost.
pub async fn run(root: &Path, bootstrap: &Bootstrap) -> anyhow::Result<bool> {
    tracing::info!(server = %bootstrap.grpc_host_port, "build mode: connecting to the bootstrap server");
    let client = BootstrapClient::connect(&client_config(bootstrap))
        .await
        .context("connecting to the bootstrap server")?;
    let heartbeat = client.spawn_heartbeat(None);
    tokio::select! {
        biased;
        result = build(root, &client) => result,
        // Dropping the build drops the running step: its process is killed (`kill_on_drop`),
        // its mounts taken down and the build environment restored by their guards.
        lost = heartbeat.lost() => match lost {
            HostLost::Silent { .. } => {
                anyhow::bail!("bootstrap server lost: {lost}; aborting the build")
            }
            _ => anyhow::bail!("{lost}; aborting the build"),
        },
    }
}

/// How this guest's boot went, for the host's timings: `None` when a point is unknown.
fn guest_boot() -> Option<firebuild_bootstrap::GuestBoot> {
    let agent = crate::init::vminit_started()?;
    Some(firebuild_bootstrap::GuestBoot {
        // Without the initramfs's word, vminit was the first program the kernel ran.
        init: firebuild_guest::boot::init_started().map_or(agent, |init| init.min(agent)),
        agent,
        request: firebuild_guest::boot::uptime(),
    })
}

/// The build proper: plan, environment, steps, outcome.
async fn build(root: &Path, client: &BootstrapClient) -> anyhow::Result<bool> {
    let commands = client
        .commands_reporting(guest_boot())
        .await
        .context("fetching the build plan")?;
    let total = commands.plan.steps().count();
    tracing::info!(build = %commands.build_id, steps = total, "build plan received");
    if commands.plan.schema_version > firebuild_plan::SCHEMA_VERSION {
        let message = format!(
            "the build plan has schema version {}; this vminit reads up to {}: rebuild vminit \
             with the same firebuild as the host",
            commands.plan.schema_version,
            firebuild_plan::SCHEMA_VERSION
        );
        return abort(client, message).await;
    }
    let dns = crate::net::kernel_dns(root);
    let real_root = firebuild_guest::paths::is_real_root(root);
    let mut env = match BuildEnv::install(root, &dns, real_root) {
        Ok(env) => env,
        Err(e) => return abort(client, format!("preparing the build environment: {e:#}")).await,
    };
    for (n, (stage, step)) in commands.plan.steps().enumerate() {
        let at = StepRef {
            stage: stage.index,
            step: step.index,
        };
        tracing::info!("step {}/{total} ({at}): {}", n + 1, describe(step));
        let overlap = matches!(&step.kind, StepKind::Run(run) if run.mounts.is_empty());
        if !overlap {
            client
                .step_started(at)
                .await
                .context("reporting step start")?;
        }
        let result = match &step.kind {
            // `StepStarted` goes out as the step's process is spawned, not before, so its round
            // trip overlaps the spawn. The host still hears it first: the step's lines wait for
            // its answer (`run_step`'s `started`), and `StepFinished` goes after both. A failed
            // `StepStarted` ends the build as before, killing the step (dropped with `work`).
            // With `--mount`s it is awaited first: the host serves secrets to the running step
            // only.
            StepKind::Run(_) if overlap => {
                let (acked, ack) = tokio::sync::oneshot::channel();
                let started = async {
                    client
                        .step_started(at)
                        .await
                        .context("reporting step start")?;
                    let _ = acked.send(());
                    anyhow::Ok(())
                };
                let work = async {
                    let reporter = client.output(OutputOptions::default());
                    let started = async {
                        let _ = ack.await;
                    };
                    let result = run_step(root, step, at, &reporter, started).await;
                    anyhow::Ok(flushed(reporter, result).await)
                };
                // `started` polled first (`biased`): its request is queued before the spawn
                // blocks this thread.
                let ((), result) = tokio::try_join!(biased; started, work)?;
                result
            }
            StepKind::Run(run) => {
                let reporter = client.output(OutputOptions::default());
                let result = run_with_mounts(root, client, step, run, at, &reporter).await;
                flushed(reporter, result).await
            }
            StepKind::Copy(t) | StepKind::Add(t) => place(root, client, t)
                .await
                .map(|()| (Exit::Code(0), VecDeque::new())),
            StepKind::Workdir => firebuild_guest::step::make_workdir(root, &step.context)
                .map(|()| (Exit::Code(0), VecDeque::new()))
                .map_err(anyhow::Error::from),
        };
        let (exit, last) = match result {
            Ok(r) => r,
            Err(e) => (Exit::Code(1), VecDeque::from([format!("{e:#}")])),
        };
        if exit.success() && commands.snapshot_steps {
            let snapshot = snapshot_point(root, client, at, &mut env, &dns, real_root).await;
            if let Err(e) = snapshot {
                return abort(
                    client,
                    format!("step {at}: snapshot for the step cache: {e:#}"),
                )
                .await;
            }
            continue;
        }
        client
            .step_finished(at, exit.code())
            .await
            .context("reporting step end")?;
        if !exit.success() {
            let what = match exit {
                Exit::Code(c) => format!("exit code {c}"),
                Exit::Signal(s) => format!("signal {s}"),
            };
            tracing::error!("step {}/{total} ({at}) failed: {what}", n + 1);
            let mut message = format!("step {at} failed ({what})");
            if !last.is_empty() {
                message.push_str("; last lines:\n");
                for l in &last {
                    message.push_str(l);
                    message.push('\n');
                }
            }
            if let Err(e) = env.restore() {
                message.push_str(&format!("\nrestoring the build environment: {e:#}"));
            }
            let message = truncate(message, MAX_ABORT);
            client
                .abort(&message, Some(at), Some(exit.code()))
                .await
                .context("reporting the failure")?;
            return Ok(false);
        }
    }
    // Before `Success`: the host may take the image as soon as it is told.
    if let Err(e) = env.restore() {
        return abort(client, format!("restoring the build environment: {e:#}")).await;
    }
    // The host takes the disk at `Success` when it says so: frozen, it is clean as it is.
    let frozen = if commands.freeze_at_success {
        match firebuild_guest::live::Frozen::freeze(root) {
            Ok(f) => Some(f),
            Err(e) => {
                let message = format!("freezing {} for the host to take it: {e}", root.display());
                return abort(client, message).await;
            }
        }
    } else {
        None
    };
    let reported = client.success().await;
    if let Some(frozen) = frozen {
        frozen
            .thaw()
            .with_context(|| format!("thawing {}", root.display()))?;
    }
    reported.context("reporting success")?;
    tracing::info!("build succeeded");
    Ok(true)
}

/// A step's end when the host snapshots the disk (the step cache): the build environment put
/// back (it is never part of the image), the root frozen so the disk is clean while the host
/// copies it, `StepFinished` (answered once the copy is done), then thawed and the environment
/// installed again for the next step.
async fn snapshot_point(
    root: &Path,
    client: &BootstrapClient,
    at: StepRef,
    env: &mut BuildEnv,
    dns: &[std::net::Ipv4Addr],
    real_root: bool,
) -> anyhow::Result<()> {
    env.restore().context("restoring the build environment")?;
    let frozen = firebuild_guest::live::Frozen::freeze(root)
        .with_context(|| format!("freezing {}", root.display()))?;
    let reported = client.step_finished_snapshot(at, SNAPSHOT_WAIT).await;
    frozen
        .thaw()
        .with_context(|| format!("thawing {}", root.display()))?;
    reported.context("reporting step end")?;
    *env = BuildEnv::install(root, dns, real_root).context("preparing the build environment")?;
    Ok(())
}

/// Reports a failure outside any step and ends the build (`Ok(false)`).
async fn abort(client: &BootstrapClient, message: String) -> anyhow::Result<bool> {
    let message = truncate(message, MAX_ABORT);
    tracing::error!("{message}");
    client
        .abort(&message, None, None)
        .await
        .context("reporting the failure")?;
    Ok(false)
}

fn describe(step: &Step) -> String {
    let mut s = match &step.kind {
        StepKind::Run(r) => format!("RUN {:?}", r.command),
        StepKind::Copy(t) => format!("COPY -> {}", t.dest),
        StepKind::Add(t) => format!("ADD -> {}", t.dest),
        StepKind::Workdir => format!("WORKDIR {}", step.context.workdir),
    };
    s = truncate(s, 200);
    s
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// Finishes a RUN step's output reporter (one per step, finished before `StepFinished`: the
/// server has handled every line of the step when it hears the step ended).
async fn flushed(
    reporter: OutputReporter,
    result: anyhow::Result<(Exit, VecDeque<String>)>,
) -> anyhow::Result<(Exit, VecDeque<String>)> {
    match reporter.finish().await {
        Ok(_) => result,
        Err(e) => result.and(Err(e).context("flushing step output")),
    }
}

/// Sets up a RUN step's `--mount`s, runs it, and takes them down whatever happened.
async fn run_with_mounts(
    root: &Path,
    client: &BootstrapClient,
    step: &Step,
    run: &firebuild_plan::Run,
    at: StepRef,
    reporter: &OutputReporter,
) -> anyhow::Result<(Exit, VecDeque<String>)> {
    let started = std::future::ready(());
    if run.mounts.is_empty() {
        return run_step(root, step, at, reporter, started).await;
    }
    let mut mounts = crate::mounts::StepMounts::setup(root, client, &run.mounts).await?;
    let result = if mounts.env.is_empty() {
        run_step(root, step, at, reporter, started).await
    } else {
        // Secret `env=` values reach the step's environment only, never the plan or a log.
        let mut with_env = step.clone();
        with_env.context.env.extend(std::mem::take(&mut mounts.env));
        run_step(root, &with_env, at, reporter, started).await
    };
    mounts.teardown();
    result
}

/// Runs a RUN step, streaming its lines to the server as they come once `started` is ready (the
/// host has taken `StepStarted`); returns the exit and the last lines.
async fn run_step(
    root: &Path,
    step: &Step,
    at: StepRef,
    reporter: &OutputReporter,
    started: impl std::future::Future<Output = ()>,
) -> anyhow::Result<(Exit, VecDeque<String>)> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(OutputStream, String)>();
    let run = async move {
        step::run_step(root, step, |stream, line| {
            let stream = match stream {
                Stream::Stdout => OutputStream::Stdout,
                Stream::Stderr => OutputStream::Stderr,
            };
            let _ = tx.send((stream, String::from_utf8_lossy(line).into_owned()));
        })
        .await
    };
    let forward = async {
        // Lines queue in `rx` meanwhile; the host must see the step start before its output.
        started.await;
        let mut last = VecDeque::with_capacity(LAST_LINES);
        let mut result = Ok(());
        while let Some((stream, line)) = rx.recv().await {
            if last.len() == LAST_LINES {
                last.pop_front();
            }
            last.push_back(line.clone());
            if result.is_ok() {
                result = reporter.line(at, stream, line).await;
            }
        }
        (last, result)
    };
    // `forward` polled first (`biased`): it sends nothing before `started`, and polling `run`
    // spawns the step, which blocks this thread for the spawn.
    let ((last, sent), exit) = tokio::join!(biased; forward, run);
    sent.context("streaming step output")?;
    Ok((exit?, last))
}

/// Pulls every resource of a COPY/ADD into its target under the root, then applies `--chown`
/// and `--chmod`.
async fn place(root: &Path, client: &BootstrapClient, t: &Transfer) -> anyhow::Result<()> {
    crate::place::transfer(root, client, t).await
}
