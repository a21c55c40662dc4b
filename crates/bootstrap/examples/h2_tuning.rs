//! Measures one resource transfer through the bootstrap channel (mTLS on 127.0.0.1) with
//! hyper's default HTTP/2 flow control and with [`Http2Tuning::default`].
//!
//! `cargo run --release -p firebuild-bootstrap --example h2_tuning -- [MiB] [rounds]`
//!
//! The guest side discards the bytes after verifying them (CRC-32C per chunk, SHA-256 over the
//! resource), so the figure is the protocol's, not the disk's.

use std::io;
use std::time::Instant;

use firebuild_bootstrap::{
    BootstrapClient, BootstrapConfig, BootstrapServer, ClientKey, ClientOptions, DirSource,
    Http2Tuning,
};
use firebuild_pki::{BuildId, BuildPki, Validity};
use firebuild_plan::BuildPlan;
use firebuild_transfer::{Header, Sink};

struct Discard;

impl Sink for Discard {
    fn begin_entry(&mut self, _: &Header) -> io::Result<()> {
        Ok(())
    }
    fn write(&mut self, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn end_entry(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn plan() -> anyhow::Result<BuildPlan> {
    Ok(serde_json::from_str(
        r#"{"schema_version":1,"dockerfile":"Dockerfile","target":0,"stages":[{
        "index":0,"base":{"kind":"scratch"},"span":{"start_line":1,"start_col":1,"end_line":1,"end_col":1},
        "config":{},"steps":[{"index":0,"span":{"start_line":2,"start_col":1,"end_line":2,"end_col":1},
        "context":{"env":[],"args":[],"workdir":"/","shell":["/bin/sh","-c"]},
        "kind":{"kind":"copy","origin":{"kind":"context"},"dest":"/f","sources":[{"type":"path",
        "pattern":"f","resources":[{"id":"f","path":"f","kind":"file","target":"/f"}]}]}}]}]}"#,
    )?)
}

/// MB/s of one pull: verified and reassembled (`verify`), or frames drained without checks.
async fn run(dir: &std::path::Path, tuning: Http2Tuning, verify: bool) -> anyhow::Result<f64> {
    let build = BuildId::new("bench")?;
    let pki = BuildPki::generate(build.clone(), &["127.0.0.1"], &Validity::default())?;
    let plan = plan()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let (server, events) = BootstrapServer::builder()
        .resources(DirSource::new(&plan, dir))
        .plan(plan)
        .tls(pki.server.clone())
        .expected_client(build)
        .http2(tuning)
        .serve(listener)
        .await?;
    drop(events);
    let config = BootstrapConfig {
        grpc_host_port: server.local_addr().to_string(),
        tls_ca_cert: pki.client.ca_cert_pem().to_owned(),
        tls_cert: pki.client.cert_pem().to_owned(),
        tls_key: ClientKey::new(pki.client.key_pem().expose_secret().to_owned()),
    };
    let options = ClientOptions {
        http2: tuning,
        ..ClientOptions::default()
    };
    let client = BootstrapClient::connect_with(&config, options).await?;
    client.commands().await?;
    let start = Instant::now();
    let bytes = if verify {
        client.pull("f", &mut Discard).await?.bytes
    } else {
        let req = firebuild_bootstrap::pb::ResourceChunkRequest {
            resource_id: "f".into(),
            resume: None,
        };
        let mut grpc = client
            .grpc()
            .max_decoding_message_size(firebuild_bootstrap::DEFAULT_MAX_MESSAGE_SIZE);
        let mut stream = grpc.resource_chunk(req).await?.into_inner();
        let mut bytes = 0u64;
        while let Some(frame) = stream.message().await? {
            if let Some(firebuild_bootstrap::pb::resource_frame::Frame::Chunk(c)) = frame.frame {
                bytes += c.data.len() as u64;
            }
        }
        bytes
    };
    let secs = start.elapsed().as_secs_f64();
    server.shutdown().await?;
    Ok(bytes as f64 / secs / 1e6)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mib: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(512);
    let rounds: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(3);
    let dir = tempfile::tempdir()?;
    let data: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    {
        use std::io::Write;
        let mut f = io::BufWriter::new(std::fs::File::create(dir.path().join("f"))?);
        for _ in 0..mib {
            f.write_all(&data)?;
        }
    }
    println!("{mib} MiB, {rounds} rounds, MB/s (best of rounds)");
    for (name, tuning) in [
        ("library defaults", Http2Tuning::library_defaults()),
        ("tuned (default)", Http2Tuning::default()),
        (
            "adaptive window only",
            Http2Tuning {
                adaptive_window: true,
                ..Http2Tuning::library_defaults()
            },
        ),
    ] {
        for verify in [false, true] {
            let mut best = 0f64;
            let mut all = Vec::new();
            for _ in 0..rounds {
                let r = run(dir.path(), tuning, verify).await?;
                best = best.max(r);
                all.push(format!("{r:.0}"));
            }
            let mode = if verify {
                "pull (verify)"
            } else {
                "drain frames"
            };
            println!("{name:>22} {mode:>14}: {best:>6.0}  ({})", all.join(", "));
        }
    }
    Ok(())
}
