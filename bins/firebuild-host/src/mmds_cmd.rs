//! `firebuild-host mmds serve`: the embedded MMDS-compatible server as a process;
//! `firebuild-host mmds get`: read (or follow) a value through a server's host API.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use firebuild_mmds::server::Server;

/// Arguments of `firebuild-host mmds`.
#[derive(Debug, clap::Args)]
pub struct MmdsArgs {
    #[command(subcommand)]
    command: MmdsCmd,
}

#[derive(Debug, clap::Subcommand)]
enum MmdsCmd {
    /// Serve MMDS (Firecracker V2 rules) to guests on TCP, with the host API on a Unix socket.
    ///
    /// Prints `listening on ADDR` once ready; runs until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Print the value at a JSON pointer from a server's host API (e.g. `/guest/status`);
    /// `--follow` prints it again each time it changes, until SIGINT.
    Get(GetArgs),
}

#[derive(Debug, clap::Args)]
struct GetArgs {
    /// The server's host API Unix socket (`serve --api-sock`, or Firecracker's API socket).
    #[arg(long, value_name = "PATH")]
    api_sock: PathBuf,
    /// JSON pointer (`""` or `/` for the whole document).
    #[arg(default_value = "")]
    pointer: String,
    /// Keep printing the value each time it changes.
    #[arg(long)]
    follow: bool,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Guest-side address (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// Host API Unix socket (Firecracker's `/mmds` API, plus JSON-pointer CRUD).
    #[arg(long, value_name = "PATH")]
    api_sock: PathBuf,
    /// Initial data: a file holding a JSON object.
    #[arg(long, value_name = "FILE")]
    data: Option<PathBuf>,
    /// Data store limit in bytes of serialised JSON.
    #[arg(long, value_name = "N", default_value_t = firebuild_mmds::store::DEFAULT_DATA_LIMIT)]
    limit: usize,
    /// Let guests delete consumed credentials and write `/guest/status` (not in Firecracker).
    #[arg(long)]
    guest_writes: bool,
}

/// Runs `firebuild-host mmds`.
pub fn run(args: &MmdsArgs) -> anyhow::Result<()> {
    match &args.command {
        MmdsCmd::Serve(a) => serve(a),
        MmdsCmd::Get(a) => get(a),
    }
}

/// How often `get --follow` asks the host API (it has no long-poll).
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

fn get(args: &GetArgs) -> anyhow::Result<()> {
    let pointer = if args.pointer == "/" {
        ""
    } else {
        args.pointer.as_str()
    };
    let api = firebuild_mmds::firecracker::FirecrackerApi::new(&args.api_sock);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async {
        let mut last = None;
        loop {
            let doc = api
                .get()
                .await
                .with_context(|| format!("reading {}", args.api_sock.display()))?;
            let value = doc.pointer(pointer).cloned();
            if !args.follow {
                let value = value.with_context(|| format!("nothing at {pointer:?}"))?;
                println!("{value}");
                return Ok(());
            }
            if value != last {
                if let Some(v) = &value {
                    println!("{v}");
                }
                last = value;
            }
            tokio::select! {
                r = tokio::signal::ctrl_c() => return r.context("waiting for SIGINT"),
                () = tokio::time::sleep(FOLLOW_EVERY) => {}
            }
        }
    })
}

fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let initial = match &args.data {
        Some(path) => {
            let len = std::fs::metadata(path)
                .with_context(|| format!("reading {}", path.display()))?
                .len();
            // Bound the read: the store refuses anything past the limit anyway.
            if len > (args.limit as u64).saturating_mul(4).max(1 << 20) {
                anyhow::bail!(
                    "{} is {len} bytes, far past the limit of {}",
                    path.display(),
                    args.limit
                );
            }
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let v: serde_json::Value = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            if firebuild_mmds::Metadata::from_value(v.clone()).is_err() {
                tracing::warn!(path = %path.display(), "data is not a firebuild metadata document; serving it as is");
            }
            v
        }
        None => serde_json::Value::Object(serde_json::Map::new()),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async {
        let server = Server::builder()
            .listen(args.listen)
            .api_socket(&args.api_sock)
            .initial_data(initial)
            .data_limit(args.limit)
            .guest_writes(args.guest_writes)
            .start()
            .await
            .context("starting the MMDS server")?;
        println!("listening on {}", server.local_addr());
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
            _ = term.recv() => {}
        }
        tracing::info!("mmds: shutting down");
        server.shutdown().await;
        Ok(())
    })
}
