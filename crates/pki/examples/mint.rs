//! Mints a per-build PKI, prints what the guest would receive (keys redacted) and how long
//! minting and one loopback mTLS handshake take.
//!
//! `cargo run -p firebuild-pki --example mint --release -- [build-id] [rounds]`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Instant;

use firebuild_pki::{BuildId, BuildPki, ClientPolicy, Validity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let build = BuildId::new(args.next().unwrap_or_else(|| "example-build".to_owned()))?;
    let rounds: u32 = args.next().map(|r| r.parse()).transpose()?.unwrap_or(20);

    let start = Instant::now();
    for _ in 0..rounds {
        BuildPki::generate(build.clone(), &["127.0.0.1"], &Validity::default())?;
    }
    let mint = start.elapsed() / rounds;

    let pki = BuildPki::generate(build.clone(), &["127.0.0.1"], &Validity::default())?;
    println!("client bundle for MMDS: {:#?}", pki.client);

    let acceptor = TlsAcceptor::from(Arc::new(
        pki.server.server_config(&ClientPolicy::Build(build))?,
    ));
    let connector = TlsConnector::from(Arc::new(pki.client.client_config()?));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        for _ in 0..rounds {
            let (tcp, _) = listener.accept().await?;
            let mut tls = acceptor.accept(tcp).await?;
            let mut b = [0u8; 1];
            tls.read_exact(&mut b).await?;
            tls.write_all(&b).await?;
            tls.shutdown().await?;
        }
        anyhow::Ok(())
    });
    let start = Instant::now();
    for _ in 0..rounds {
        let tcp = TcpStream::connect(addr).await?;
        let mut tls = connector
            .connect(firebuild_pki::server_name("127.0.0.1")?, tcp)
            .await?;
        tls.write_all(b"x").await?;
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await?;
    }
    let handshake = start.elapsed() / rounds;
    server.await??;
    println!("mint CA + server + client: {mint:?} per build ({rounds} rounds)");
    println!("mTLS handshake + 1-byte echo over loopback: {handshake:?} per connection");
    Ok(())
}
