//! A 1 GiB file moves through encoder → reassembler → `DirSink` in a child process whose peak
//! resident memory (`VmHWM`) stays under 64 MiB.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::Path;
use std::process::Command;

use firebuild_transfer::{ChunkPlanner, DirSink, Ownership, Reassembler, ResourceEncoder};

const CHILD_ENV: &str = "FIREBUILD_TRANSFER_MEMORY_CHILD";
const MIB: u64 = 1 << 20;
const SIZE_MIB: u64 = 1024;

#[test]
fn one_gib_file_moves_in_bounded_memory() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "one_gib_file_moves_in_bounded_memory",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hwm_kib: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("child VmHWM kB: "))
        .unwrap_or_else(|| panic!("no VmHWM in child output: {stdout}"))
        .trim()
        .parse()
        .unwrap();
    println!(
        "child peak RSS {} MiB for a {SIZE_MIB} MiB file",
        hwm_kib / 1024
    );
    assert!(hwm_kib < 64 * 1024, "peak RSS {hwm_kib} kB");
    assert!(stdout.contains("child moved 1073741824 bytes"), "{stdout}");
}

/// Writes 1 GiB of pseudo-random data, moves it, prints the peak RSS.
fn child(dir: &Path) {
    let src = dir.join("src.bin");
    let mut f =
        std::io::BufWriter::with_capacity(MIB as usize, std::fs::File::create(&src).unwrap());
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut block = vec![0u8; MIB as usize];
    for w in block.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.copy_from_slice(&x.to_le_bytes());
    }
    for i in 0..SIZE_MIB {
        // Every block differs: stamp its index into the random block.
        block[..8].copy_from_slice(&i.to_le_bytes());
        block[MIB as usize / 2..][..8].copy_from_slice(&(!i).to_le_bytes());
        f.write_all(&block).unwrap();
    }
    f.into_inner().unwrap().sync_all().unwrap();
    drop(block);

    // Sender and receiver on two threads, as on two machines, joined by a channel of 4 frames.
    let dst = dir.join("dst.bin");
    let (tx, frames) = std::sync::mpsc::sync_channel(4);
    let sender = std::thread::spawn(move || {
        let mut enc = ResourceEncoder::new(&src, ChunkPlanner::default()).unwrap();
        for frame in enc.by_ref() {
            tx.send(frame.unwrap()).unwrap();
        }
        enc.digest()
    });
    let mut rx = Reassembler::new(DirSink::new(&dst).ownership(Ownership::Never));
    for frame in frames {
        rx.push(frame).unwrap();
    }
    let outcome = rx.finish().unwrap();
    assert_eq!(Some(outcome.digest), sender.join().unwrap());
    assert_eq!(std::fs::metadata(&dst).unwrap().len(), SIZE_MIB * MIB);
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .to_string();
    println!("child moved {} bytes", outcome.bytes);
    println!("child VmHWM kB: {hwm}");
}
