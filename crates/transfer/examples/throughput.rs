//! Moves a 1 GiB file of pseudo-random bytes through encoder → reassembler → `DirSink` and prints
//! throughput and peak RSS.
//!
//! ```sh
//! cargo run --release -p firebuild-transfer --example throughput [-- SIZE_MIB [DIR]]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use firebuild_transfer::{ChunkPlanner, DirSink, Frame, Ownership, Reassembler, ResourceEncoder};
use sha2::Digest;

fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

fn main() {
    let mib: u64 = std::env::args().nth(1).map_or(1024, |s| s.parse().unwrap());
    let dir = match std::env::args().nth(2) {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let size = mib << 20;
    let src = dir.path().join("src.bin");
    write_random(&src, mib);

    let buf = vec![0x5au8; 64 << 20];
    let t = Instant::now();
    let d = sha2::Sha256::digest(&buf);
    println!(
        "sha256 raw:   {:7.0} MB/s ({:02x})",
        mbps(buf.len() as u64, t.elapsed().as_secs_f64()),
        d[0]
    );
    let t = Instant::now();
    let c = crc32c::crc32c(&buf);
    println!(
        "crc32c raw:   {:7.0} MB/s ({c:08x})",
        mbps(buf.len() as u64, t.elapsed().as_secs_f64())
    );
    drop(buf);

    let planner = ChunkPlanner::default();
    let t = Instant::now();
    let mut n = 0u64;
    for f in ResourceEncoder::new(&src, planner).unwrap() {
        if let Frame::Chunk(c) = f.unwrap() {
            n += c.data.len() as u64;
        }
    }
    assert_eq!(n, size);
    println!(
        "encoder only: {:7.0} MB/s",
        mbps(size, t.elapsed().as_secs_f64())
    );

    let t = Instant::now();
    let dst = dir.path().join("dst.bin");
    let mut rx = Reassembler::new(DirSink::new(&dst).ownership(Ownership::Never));
    let enc = ResourceEncoder::new(&src, planner).unwrap();
    for f in enc {
        rx.push(f.unwrap()).unwrap();
    }
    let out = rx.finish().unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(std::fs::metadata(&dst).unwrap().len(), size);
    println!(
        "encode+reassemble+write: {:7.0} MB/s ({mib} MiB, {} chunks of {} KiB)",
        mbps(size, secs),
        size.div_ceil(planner.chunk_size() as u64),
        planner.chunk_size() >> 10
    );
    println!("file sha256 {}", hex::encode(out.file_sha256.unwrap()));
    println!("{}", vm_hwm_line());
}

/// 1 MiB blocks of xorshift output, each block different.
fn write_random(path: &Path, mib: u64) {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for w in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&block).unwrap();
    }
    f.flush().unwrap();
}

fn vm_hwm_line() -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap_or("VmHWM: ?")
        .to_string()
}
