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

fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

/// CPU time of this thread (ns), so that a busy machine does not distort the numbers.
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Prints wall-clock and per-CPU-second throughput of a phase.
fn report(what: &str, bytes: u64, wall: Instant, cpu0: u64) {
    // schedstat is updated at scheduler ticks: very short phases may read as 0.
    let cpu = ((cpu_ns() - cpu0) as f64 / 1e9).max(1e-3);
    println!(
        "{what:<26} {:6.0} MB/s wall, {:6.0} MB/s per CPU-second",
        mbps(bytes, wall.elapsed().as_secs_f64()),
        mbps(bytes, cpu)
    );
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

    let buf = vec![0x5au8; 16 << 20];
    let (t, c0) = (Instant::now(), cpu_ns());
    let d = firebuild_transfer::digest::blake3(&buf);
    report("blake3 (digest)", buf.len() as u64, t, c0);
    let (t, c0) = (Instant::now(), cpu_ns());
    let s = firebuild_transfer::digest::sha256(&buf);
    report("sha256 (on request)", buf.len() as u64, t, c0);
    assert!(d != s);
    let (t, c0) = (Instant::now(), cpu_ns());
    let c = crc32c::crc32c(&buf);
    report("crc32c", buf.len() as u64, t, c0);
    assert!(d[0] != 0 || c != 0);
    drop(buf);

    let planner = ChunkPlanner::default();
    let (t, c0) = (Instant::now(), cpu_ns());
    let mut n = 0u64;
    for f in ResourceEncoder::new(&src, planner).unwrap() {
        if let Frame::Chunk(c) = f.unwrap() {
            n += c.data.len() as u64;
        }
    }
    assert_eq!(n, size);
    let enc_cpu = cpu_ns() - c0;
    report("encoder only", size, t, c0);

    let (t, c0) = (Instant::now(), cpu_ns());
    let dst = dir.path().join("dst.bin");
    let mut rx = Reassembler::new(DirSink::new(&dst).ownership(Ownership::Never));
    let enc = ResourceEncoder::new(&src, planner).unwrap();
    for f in enc {
        rx.push(f.unwrap()).unwrap();
    }
    let out = rx.finish().unwrap();
    let both_cpu = cpu_ns() - c0;
    report("encode+reassemble+write", size, t, c0);
    println!(
        "{:<26} {:6.0} MB/s per CPU-second (combined minus encoder)",
        "reassemble+write",
        mbps(size, both_cpu.saturating_sub(enc_cpu) as f64 / 1e9)
    );

    // Sender and receiver on two threads (as on two machines), 4 frames in flight.
    let t = Instant::now();
    let dst2 = dir.path().join("dst2.bin");
    let (tx, frames) = std::sync::mpsc::sync_channel(4);
    let src2 = src.clone();
    let sender = std::thread::spawn(move || {
        for f in ResourceEncoder::new(&src2, planner).unwrap() {
            tx.send(f.unwrap()).unwrap();
        }
    });
    let mut rx = Reassembler::new(DirSink::new(&dst2).ownership(Ownership::Never));
    for f in frames {
        rx.push(f).unwrap();
    }
    assert_eq!(rx.finish().unwrap().digest, out.digest);
    sender.join().unwrap();
    println!(
        "{:<26} {:6.0} MB/s wall",
        "pipelined, 2 threads",
        mbps(size, t.elapsed().as_secs_f64())
    );
    assert_eq!(std::fs::metadata(&dst).unwrap().len(), size);
    println!(
        "({mib} MiB, {} chunks of {} KiB)",
        size.div_ceil(planner.chunk_size() as u64),
        planner.chunk_size() >> 10
    );
    println!("resource digest (BLAKE3) {}", hex::encode(out.digest));
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
