//! The bootstrap channel: `firebuild-bootstrap`'s server and guest client, used exactly as the
//! host and vminit use them (mutual TLS from `firebuild-pki`, default HTTP/2 tuning, default
//! message limit, `DirSource` on the host, `DirSink` in the guest).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use firebuild_bootstrap::{
    BootstrapClient, BootstrapConfig, BootstrapServer, ClientKey, DirSource, Outcome,
    OutputOptions, OutputStream, StepRef,
};
use firebuild_plan::{
    BuildPlan, Command, Origin, Resource, ResourceKind, Run, Source, Span, Step, StepContext,
    StepKind, Transfer,
};
use firebuild_transfer::DirSink;

use crate::StepMode;
use crate::certs::{Loaded, SERVER_NAME};

/// Resource id of the file in the transfer plan.
const FILE_ID: &str = "ctx:payload";

fn plan(steps: Vec<Step>) -> BuildPlan {
    BuildPlan::scratch(steps)
}

/// `COPY <file name> /payload`: one file resource from the context.
fn transfer_plan(file_name: &str) -> BuildPlan {
    plan(vec![Step {
        index: 0,
        span: Span::lines(2, 2),
        context: StepContext::default(),
        kind: StepKind::Copy(Transfer {
            origin: Origin::Context,
            sources: vec![Source::Path {
                pattern: file_name.to_owned(),
                resources: vec![Resource {
                    id: FILE_ID.to_owned(),
                    path: file_name.to_owned(),
                    kind: ResourceKind::File,
                    target: "/payload".to_owned(),
                    extract: false,
                }],
            }],
            dest: "/payload".to_owned(),
            chown: None,
            chmod: None,
            link: false,
            parents: false,
            exclude: Vec::new(),
            keep_git_dir: false,
        }),
    }])
}

/// `n` times `RUN true`.
fn steps_plan(n: usize) -> BuildPlan {
    plan(
        (0..n)
            .map(|i| Step {
                index: i,
                span: {
                    let line = u32::try_from(i + 2).unwrap_or(u32::MAX);
                    Span::lines(line, line)
                },
                context: StepContext::default(),
                kind: StepKind::Run(Run::new(Command::Shell("true".into()))),
            })
            .collect(),
    )
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

/// Serves `file` as the one resource of a COPY plan until killed, or, with `steps`, a plan of
/// that many `RUN true` steps until the guest reports its outcome. Publishes the port in
/// `port_file`, or on stdout when absent.
pub fn serve(
    pki: Loaded,
    file: Option<PathBuf>,
    steps: Option<usize>,
    port_file: Option<&Path>,
) -> anyhow::Result<()> {
    let (plan, context, one_build) = match (file, steps) {
        (Some(file), None) => {
            let file = std::path::absolute(&file)?;
            let (Some(dir), Some(name)) = (file.parent(), file.file_name()) else {
                bail!("{} has no parent directory", file.display());
            };
            let name = name.to_str().context("file name is not UTF-8")?;
            (transfer_plan(name), dir.to_owned(), false)
        }
        (None, Some(n)) => (steps_plan(n), std::env::temp_dir(), true),
        _ => bail!("give exactly one of --file and --steps"),
    };
    runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let (mut server, mut events) = BootstrapServer::builder()
            .resources(DirSource::new(&plan, context))
            .plan(plan)
            .tls(pki.server.clone())
            .expected_client(pki.build_id.clone())
            // The transfer server outlives many clients and idles between hyperfine runs.
            .heartbeat_timeout(Duration::from_secs(24 * 3600))
            .serve(listener)
            .await?;
        // A host reads its events (progress, output lines); so does the bench.
        let drain = tokio::spawn(async move {
            let mut n = 0u64;
            while events.recv().await.is_some() {
                n += 1;
            }
            n
        });
        let port = server.local_addr().port();
        match port_file {
            Some(path) => crate::report::publish_port(path, port)?,
            None => println!("{port}"),
        }
        if !one_build {
            // Until killed.
            std::future::pending::<()>().await;
        }
        let outcome = server.wait().await;
        server.shutdown().await?;
        drop(drain);
        match outcome {
            Some(Outcome::Succeeded) => Ok(()),
            other => bail!("build ended with {other:?}"),
        }
    })
}

fn client_config(pki: &Loaded, addr: &str) -> BootstrapConfig {
    BootstrapConfig {
        grpc_host_port: addr.to_owned(),
        tls_ca_cert: pki.client.ca_cert_pem().to_owned(),
        tls_cert: pki.client.cert_pem().to_owned(),
        tls_key: ClientKey::new(pki.client.key_pem().expose_secret().to_owned()),
    }
}

/// Connects, fetches the plan and pulls its one resource to `out` (a `DirSink` placing the file
/// at `out`). Returns the bytes placed and the time from connect to the verified end.
pub fn pull(pki: Loaded, addr: &str, out: &Path) -> anyhow::Result<(u64, Duration)> {
    let config = client_config(&pki, addr);
    runtime()?.block_on(async move {
        let start = Instant::now();
        let client = BootstrapClient::connect(&config).await?;
        let commands = client.commands().await?;
        let Some(id) = commands.resource_ids.first() else {
            bail!("the plan has no resource");
        };
        let mut sink = DirSink::new(out);
        let outcome = client.pull(id, &mut sink).await?;
        Ok((outcome.bytes, start.elapsed()))
    })
}

/// The guest side of the step bench: connect, `Commands`, then per step `StepStarted`, (the
/// step's argv run per `mode`), one output line, `StepFinished`; then `Success`. Returns the
/// steps run, the time of the step loop and the whole time from connect to the acknowledged
/// `Success`.
async fn run_steps(
    config: &BootstrapConfig,
    mode: StepMode,
) -> anyhow::Result<(usize, Duration, Duration)> {
    let start = Instant::now();
    let client = BootstrapClient::connect(config).await?;
    let commands = client.commands().await?;
    let output = client.output(OutputOptions::default());
    let loop_start = Instant::now();
    let mut ran = 0usize;
    let mut lines = 0u64;
    for (stage, step) in commands.plan.steps() {
        let at = StepRef {
            stage: stage.index,
            step: step.index,
        };
        if mode == StepMode::Guest {
            let (exit, taken) = guest_step(&client, step, at).await?;
            anyhow::ensure!(exit == 0, "step {at} exited with {exit}");
            lines += taken;
            ran += 1;
            continue;
        }
        client.step_started(at).await?;
        let exit_code = match (mode, &step.kind) {
            (StepMode::Spawn, StepKind::Run(run)) => {
                let argv = run.command.argv(&step.context.shell);
                let (prog, args) = argv.split_first().context("empty argv")?;
                let status = tokio::process::Command::new(prog)
                    .args(args)
                    .stdin(Stdio::null())
                    .status()
                    .await?;
                status.code().unwrap_or(-1)
            }
            _ => 0,
        };
        output
            .line(at, OutputStream::Stdout, done_line(step))
            .await?;
        client.step_finished(at, exit_code).await?;
        ran += 1;
    }
    let loop_time = loop_start.elapsed();
    lines += output.finish().await?;
    client.success().await?;
    anyhow::ensure!(
        lines == ran as u64,
        "server took {lines} of {ran} output lines"
    );
    Ok((ran, loop_time, start.elapsed()))
}

/// The bench's one output line per step.
fn done_line(step: &Step) -> String {
    format!("step {} done", step.index)
}

/// One RUN step the way vminit runs it (`bins/vminit/src/build.rs`, `build` and `run_step` for a
/// RUN without `--mount`s; keep the two in step): `StepStarted` sent as the step is spawned, a
/// reporter for the step, the step run by `firebuild_guest::step::run_step` under `/` with its
/// lines (plus the bench's one line) forwarded once `StepStarted` is answered, the reporter
/// finished, then `StepFinished`. Returns the exit code and the lines the server took.
async fn guest_step(
    client: &BootstrapClient,
    step: &Step,
    at: StepRef,
) -> anyhow::Result<(i32, u64)> {
    let (acked, ack) = tokio::sync::oneshot::channel();
    let started = async {
        client.step_started(at).await?;
        let _ = acked.send(());
        anyhow::Ok(())
    };
    let work = async {
        let reporter = client.output(OutputOptions::default());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(OutputStream, Vec<u8>)>();
        let run = async move {
            firebuild_guest::step::run_step(Path::new("/"), step, |stream, line| {
                let stream = match stream {
                    firebuild_guest::step::Stream::Stdout => OutputStream::Stdout,
                    firebuild_guest::step::Stream::Stderr => OutputStream::Stderr,
                };
                let _ = tx.send((stream, line.to_vec()));
            })
            .await
        };
        let forward = async {
            let _ = ack.await;
            while let Some((stream, line)) = rx.recv().await {
                reporter.line(at, stream, line).await?;
            }
            anyhow::Ok(())
        };
        let (sent, exit) = tokio::join!(biased; forward, run);
        sent?;
        reporter
            .line(at, OutputStream::Stdout, done_line(step))
            .await?;
        let taken = reporter.finish().await?;
        anyhow::Ok((exit?.code(), taken))
    };
    let ((), (exit, taken)) = tokio::try_join!(biased; started, work)?;
    client.step_finished(at, exit).await?;
    Ok((exit, taken))
}

/// Starts `boot-serve --steps n` as a child process, then runs the n steps against it: per step
/// `StepStarted`, (the step's argv `/bin/sh -c true` run per `mode`), one output line,
/// `StepFinished`; then `Success`. Reports the whole client time and the step loop alone.
pub fn steps(
    pki_dir: &Path,
    n: usize,
    mode: StepMode,
    report: Option<&Path>,
) -> anyhow::Result<()> {
    let pki = Loaded::from_dir(pki_dir)?;
    let exe = std::env::current_exe().context("locating channel-bench")?;
    let mut child = std::process::Command::new(exe)
        .arg("boot-serve")
        .arg("--pki")
        .arg(pki_dir)
        .arg("--steps")
        .arg(n.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting boot-serve")?;
    let mut line = String::new();
    let stdout = child.stdout.take().context("boot-serve stdout")?;
    BufReader::new(stdout).read_line(&mut line)?;
    let port: u16 = line
        .trim()
        .parse()
        .with_context(|| format!("boot-serve printed {line:?}, not a port"))?;
    let config = client_config(&pki, &format!("{SERVER_NAME}:{port}"));
    let result = runtime()?.block_on(run_steps(&config, mode));
    let server = child.wait()?;
    let (ran, loop_time, total) = result?;
    anyhow::ensure!(server.success(), "boot-serve exited with {server}");
    anyhow::ensure!(ran == n, "ran {ran} of {n} steps");
    let per_step_ms = loop_time.as_secs_f64() * 1000.0 / n.max(1) as f64;
    let mode = match mode {
        StepMode::NoSpawn => "no-spawn",
        StepMode::Spawn => "spawn",
        StepMode::Guest => "guest",
    };
    crate::report::append(
        report,
        "boot-steps",
        0,
        total,
        &[
            ("mode", mode.into()),
            ("steps", n.into()),
            ("loop_secs", loop_time.as_secs_f64().into()),
            ("per_step_ms", per_step_ms.into()),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_plan_serves_the_file_from_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f.bin"), b"abc").unwrap();
        let plan = transfer_plan("f.bin");
        let source = DirSource::new(&plan, dir.path());
        use firebuild_bootstrap::ResourceSource;
        let resolved = source.resolve(FILE_ID).unwrap();
        assert_eq!(std::fs::read(resolved.path).unwrap(), b"abc");
    }

    type Served = (
        tempfile::TempDir,
        String,
        Loaded,
        std::thread::JoinHandle<anyhow::Result<()>>,
    );

    fn served(file: Option<PathBuf>, steps: Option<usize>) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let pki_dir = dir.path().join("pki");
        crate::certs::mint_to_dir(&pki_dir, &["127.0.0.1".to_owned()]).unwrap();
        let port_file = dir.path().join("port");
        let (pki, server_pki) = (
            Loaded::from_dir(&pki_dir).unwrap(),
            Loaded::from_dir(&pki_dir).unwrap(),
        );
        let pf = port_file.clone();
        let server = std::thread::spawn(move || serve(server_pki, file, steps, Some(&pf)));
        let port = (0..500)
            .find_map(|_| {
                let text = std::fs::read_to_string(&port_file).ok();
                if text.is_none() {
                    std::thread::sleep(Duration::from_millis(10));
                }
                text
            })
            .unwrap();
        (dir, format!("127.0.0.1:{}", port.trim()), pki, server)
    }

    #[test]
    fn pull_places_a_byte_identical_file() {
        let src_dir = tempfile::tempdir().unwrap();
        let src = src_dir.path().join("payload.bin");
        // Several chunks and a partial last one.
        let data: Vec<u8> = (0..(3 << 20) + 4321)
            .map(|i: u32| (i % 253) as u8)
            .collect();
        std::fs::write(&src, &data).unwrap();
        let (dir, addr, pki, _server) = served(Some(src), None);
        let out = dir.path().join("out.bin");
        let (bytes, _) = pull(pki, &addr, &out).unwrap();
        assert_eq!(bytes, data.len() as u64);
        assert_eq!(std::fs::read(&out).unwrap(), data);
    }

    #[test]
    fn steps_run_every_step_and_the_server_sees_success() {
        for mode in [StepMode::NoSpawn, StepMode::Spawn, StepMode::Guest] {
            // The plan's steps run as root, as vminit runs them; a non-root runner cannot switch.
            if mode == StepMode::Guest && !running_as_root() {
                eprintln!("skipping --mode guest: the steps run as root and this test is not root");
                continue;
            }
            let (_dir, addr, pki, server) = served(None, Some(5));
            let config = client_config(&pki, &addr);
            let (ran, _, _) = runtime()
                .unwrap()
                .block_on(run_steps(&config, mode))
                .unwrap();
            assert_eq!(ran, 5);
            // The step server exits Ok only on `Outcome::Succeeded`.
            server.join().unwrap().unwrap();
        }
    }

    fn running_as_root() -> bool {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
    }

    #[test]
    fn steps_plan_has_n_run_true_steps() {
        let plan = steps_plan(3);
        let argvs: Vec<Vec<String>> = plan
            .steps()
            .map(|(_, s)| match &s.kind {
                StepKind::Run(r) => r.command.argv(&s.context.shell),
                other => panic!("unexpected {}", other.name()),
            })
            .collect();
        assert_eq!(argvs, vec![vec!["/bin/sh", "-c", "true"]; 3]);
    }
}
