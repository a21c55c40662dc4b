//! Loopback TLS handshakes with tokio-rustls for the integration tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// What the server saw.
#[derive(Debug)]
pub struct ServerSide {
    pub peer_certs: Vec<CertificateDer<'static>>,
    pub alpn: Option<Vec<u8>>,
}

/// What both ends of one connection attempt saw.
#[derive(Debug)]
pub struct Outcome {
    pub server: io::Result<ServerSide>,
    pub client: io::Result<Option<Vec<u8>>>,
}

/// The rustls error inside an io::Error from tokio-rustls, if any.
pub fn rustls_error(err: &io::Error) -> Option<&rustls::Error> {
    err.get_ref()?.downcast_ref::<rustls::Error>()
}

/// One connection over 127.0.0.1: TLS handshake, then the client sends `ping` and must read
/// `pong` back. Both results are returned; neither side's failure hides the other's.
pub async fn handshake(
    server: rustls::ServerConfig,
    client: rustls::ClientConfig,
    server_name: &str,
) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        if &buf != b"ping" {
            return Err(io::Error::other("unexpected request"));
        }
        tls.write_all(b"pong").await?;
        tls.shutdown().await?;
        let (_, conn) = tls.get_ref();
        Ok(ServerSide {
            peer_certs: conn
                .peer_certificates()
                .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default(),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        })
    });

    let name = firebuild_pki::server_name(server_name).unwrap();
    let connector = TlsConnector::from(Arc::new(client));
    let client_result = async {
        let tcp = TcpStream::connect(addr).await?;
        let mut tls = connector.connect(name, tcp).await?;
        tls.write_all(b"ping").await?;
        tls.flush().await?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        if &buf != b"pong" {
            return Err(io::Error::other("unexpected response"));
        }
        Ok(tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec))
    };
    // A guard against a hung test, not an assertion about time.
    let guard = Duration::from_secs(30);
    let client = tokio::time::timeout(guard, client_result)
        .await
        .expect("client hung");
    let server = tokio::time::timeout(guard, server_task)
        .await
        .expect("server hung")
        .expect("server task panicked");
    Outcome { server, client }
}
