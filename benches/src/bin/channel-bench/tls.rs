//! The baseline: a raw rustls stream (TLS 1.3, mutual auth) copying a file disk → socket → disk
//! with large buffers, blocking I/O, no framing. This is the ceiling the bootstrap channel is
//! measured against.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection, StreamOwned};

/// Read/write buffer size on both sides.
pub const BUF: usize = 1 << 20;

/// Accepts connections forever; sends `file` whole to each, then closes it (`close_notify`).
/// Connections are served one at a time, as the bench runs one client at a time.
pub fn serve(listener: TcpListener, config: Arc<ServerConfig>, file: &Path) -> anyhow::Result<()> {
    let mut buf = vec![0u8; BUF];
    for conn in listener.incoming() {
        let tcp = conn.context("accepting")?;
        if let Err(err) = serve_one(tcp, &config, file, &mut buf) {
            eprintln!("tls-serve: connection failed: {err:#}");
        }
    }
    Ok(())
}

fn serve_one(
    tcp: TcpStream,
    config: &Arc<ServerConfig>,
    file: &Path,
    buf: &mut [u8],
) -> anyhow::Result<u64> {
    tcp.set_nodelay(true)?;
    let conn = ServerConnection::new(config.clone())?;
    let mut tls = StreamOwned::new(conn, tcp);
    let mut src = File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let mut sent = 0u64;
    loop {
        let n = src.read(buf)?;
        if n == 0 {
            break;
        }
        tls.write_all(&buf[..n])?;
        sent += n as u64;
    }
    tls.conn.send_close_notify();
    tls.flush()?;
    Ok(sent)
}

/// Connects to `addr`, reads the stream to `out` until `close_notify`; returns bytes and time.
pub fn pull(
    addr: &str,
    config: Arc<ClientConfig>,
    server_name: &str,
    out: &Path,
) -> anyhow::Result<(u64, Duration)> {
    let start = Instant::now();
    let tcp = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(server_name.to_owned())?;
    let conn = ClientConnection::new(config, name)?;
    let mut tls = StreamOwned::new(conn, tcp);
    let mut dst = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut buf = vec![0u8; BUF];
    let mut got = 0u64;
    loop {
        let n = tls.read(&mut buf).context("reading the TLS stream")?;
        if n == 0 {
            break;
        }
        dst.write_all(&buf[..n])?;
        got += n as u64;
    }
    dst.flush()?;
    Ok((got, start.elapsed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_copy_is_byte_identical_over_mtls() {
        let dir = tempfile::tempdir().unwrap();
        crate::certs::mint_to_dir(&dir.path().join("pki"), &["127.0.0.1".to_owned()]).unwrap();
        let pki = crate::certs::Loaded::from_dir(&dir.path().join("pki")).unwrap();
        let src = dir.path().join("src");
        // Not a multiple of the buffer or of a TLS record.
        let data: Vec<u8> = (0..(3 * BUF + 12345))
            .map(|i| (i * 7 + i / 251) as u8)
            .collect();
        std::fs::write(&src, &data).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = Arc::new(pki.raw_server_config().unwrap());
        std::thread::spawn(move || serve(listener, server, &src));
        let out = dir.path().join("out");
        let client = Arc::new(pki.raw_client_config().unwrap());
        let (bytes, _) = pull(&addr, client, crate::certs::SERVER_NAME, &out).unwrap();
        assert_eq!(bytes, data.len() as u64);
        assert_eq!(std::fs::read(&out).unwrap(), data);
    }
}
