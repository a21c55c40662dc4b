//! `channel-bench`: the processes `benches/transfer/run.sh` times.
//!
//! - `certs`: mints a throwaway PKI with `firebuild-pki` and writes it to a directory (0600 keys).
//! - `tls-serve` / `tls-pull`: the baseline, a raw rustls stream (TLS 1.3, mutual auth) copying
//!   a file disk → socket → disk with 1 MiB buffers.
//! - `boot-serve` / `boot-pull`: the same file through the bootstrap channel
//!   (`firebuild-bootstrap` server serving it as a COPY resource, client pulling it to disk).
//! - `boot-steps`: N no-op RUN steps through the bootstrap client/server (spawn of `true`
//!   excluded, included as a bare spawn, or run the way vminit runs a step), against a
//!   `boot-serve --steps N` child process.
//!
//! Each client appends one JSON line (bytes, seconds, its own peak RSS) to `--report`; servers
//! publish their port in `--port-file` and are killed by the script, which reads their `VmHWM`.
//! Nothing here asserts a timing.

mod boot;
mod certs;
mod report;
mod tls;

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(about = "Bootstrap channel benchmark processes (driven by benches/transfer/run.sh)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// How a no-op step runs `/bin/sh -c true`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StepMode {
    /// The step's process is not spawned: protocol round trips only.
    NoSpawn,
    /// Each step spawns its argv with a bare `tokio::process::Command` (std's posix_spawn) and
    /// waits for it: a lower bound, without the step runner's setup.
    Spawn,
    /// Each step runs as vminit runs it: the sequencing of `bins/vminit/src/build.rs` (a
    /// reporter per step) and `firebuild_guest::step::run_step` under `/` (user resolved in
    /// `/etc/passwd`, workdir created, env built, credentials and workdir set in the child,
    /// process group, output pipes read line by line).
    Guest,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mint a CA, a server certificate for `--san` and a client certificate into `--out`.
    Certs {
        /// Directory to create.
        #[arg(long)]
        out: PathBuf,
        /// Server SANs (IP addresses or DNS names).
        #[arg(long, default_value = "127.0.0.1")]
        san: Vec<String>,
    },
    /// Raw rustls server: sends `--file` to every connection.
    TlsServe {
        /// Directory written by `certs`.
        #[arg(long)]
        pki: PathBuf,
        /// The file to serve.
        #[arg(long)]
        file: PathBuf,
        /// Where to write the bound port.
        #[arg(long)]
        port_file: PathBuf,
    },
    /// Raw rustls client: reads the stream to `--out`.
    TlsPull {
        /// Directory written by `certs`.
        #[arg(long)]
        pki: PathBuf,
        /// `host:port` of `tls-serve`.
        #[arg(long)]
        addr: String,
        /// Destination file.
        #[arg(long)]
        out: PathBuf,
        /// JSON lines file to append the result to (stderr when absent).
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Bootstrap server: serves `--file` as the resource of a one-COPY plan, or with `--steps N`
    /// a plan of N no-op RUN steps.
    BootServe {
        /// Directory written by `certs`.
        #[arg(long)]
        pki: PathBuf,
        /// The file to serve.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Serve a plan of this many `RUN true` steps instead (exits after the outcome).
        #[arg(long)]
        steps: Option<usize>,
        /// Where to write the bound port (stdout when absent).
        #[arg(long)]
        port_file: Option<PathBuf>,
    },
    /// Bootstrap client: pulls the plan's single resource to `--out`.
    BootPull {
        /// Directory written by `certs`.
        #[arg(long)]
        pki: PathBuf,
        /// `host:port` of `boot-serve`.
        #[arg(long)]
        addr: String,
        /// Destination file.
        #[arg(long)]
        out: PathBuf,
        /// JSON lines file to append the result to (stderr when absent).
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Starts `boot-serve --steps N` as a child process and runs the N steps against it.
    BootSteps {
        /// Directory written by `certs`.
        #[arg(long)]
        pki: PathBuf,
        /// Number of steps.
        #[arg(long, default_value_t = 1000)]
        steps: usize,
        /// Spawn `true` per step or not, and how.
        #[arg(long, value_enum)]
        mode: StepMode,
        /// JSON lines file to append the result to (stderr when absent).
        #[arg(long)]
        report: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Certs { out, san } => certs::mint_to_dir(&out, &san),
        Cmd::TlsServe {
            pki,
            file,
            port_file,
        } => {
            let pki = certs::Loaded::from_dir(&pki)?;
            let config = Arc::new(pki.raw_server_config()?);
            let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
            report::publish_port(&port_file, listener.local_addr()?.port())?;
            tls::serve(listener, config, &file)
        }
        Cmd::TlsPull {
            pki,
            addr,
            out,
            report,
        } => {
            let pki = certs::Loaded::from_dir(&pki)?;
            let config = Arc::new(pki.raw_client_config()?);
            let (bytes, elapsed) = tls::pull(&addr, config, certs::SERVER_NAME, &out)?;
            report::append(report.as_deref(), "tls-client", bytes, elapsed, &[])
        }
        Cmd::BootServe {
            pki,
            file,
            steps,
            port_file,
        } => {
            let pki = certs::Loaded::from_dir(&pki)?;
            boot::serve(pki, file, steps, port_file.as_deref())
        }
        Cmd::BootPull {
            pki,
            addr,
            out,
            report,
        } => {
            let pki = certs::Loaded::from_dir(&pki)?;
            let (bytes, elapsed) = boot::pull(pki, &addr, &out)?;
            report::append(report.as_deref(), "boot-client", bytes, elapsed, &[])
        }
        Cmd::BootSteps {
            pki,
            steps,
            mode,
            report,
        } => boot::steps(&pki, steps, mode, report.as_deref()),
    }
}
