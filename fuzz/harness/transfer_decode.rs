//! The `transfer_decode` fuzz harness, shared by the cargo-fuzz target and the stable replay test
//! (`crates/transfer/tests/fuzz_corpus.rs`): bytes are decoded into a sequence of frames, fed to
//! a `Reassembler` writing into a `DirSink` under a scratch directory. Errors are fine; panics and
//! anything written outside the sink's root are not.
//!
//! Decoding (deterministic, every byte string is valid): `op = byte % 4`
//! - 0 header: index, kind, path, mode, size, mtime, link target (path bytes < 0x80 map to a
//!   small alphabet so paths collide and nest often, bytes >= 0x80 to ASCII; one flag bit picks
//!   "the expected index").
//! - 1 chunk: entry, offset (flag: the expected one), data, crc (flag: the correct one).
//! - 2 eof: digest (flag: the digest of what was accepted so far).
//! - 3 ask `resume_point()` / call `finish()`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use firebuild_transfer::digest::ResourceDigest;
use firebuild_transfer::{
    Chunk, DirSink, EntryKind, Eof, Frame, Header, Limits, Ownership, Reassembler,
};

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn text(&mut self, max: u8) -> String {
        const ALPHABET: &[u8] = b"ab/./..x";
        let n = self.u8() % max;
        (0..n)
            .map(|_| {
                let b = self.u8();
                if b >= 0x80 {
                    char::from(b & 0x7f)
                } else {
                    char::from(ALPHABET[usize::from(b) % ALPHABET.len()])
                }
            })
            .collect()
    }
}

/// Mirrors what the reassembler accepted, so that the harness can produce a correct digest.
#[derive(Default)]
struct Mirror {
    digest: ResourceDigest,
    next_index: u32,
    /// (index, size, received) of the file in progress.
    current: Option<(u32, u64, u64)>,
}

/// Runs one input. `scratch` is an empty directory. Returns the number of entries placed when the
/// stream was complete and verified.
pub fn run(data: &[u8], scratch: &Path) -> Option<u32> {
    let boxed = scratch.join("box");
    let outside = scratch.join("outside");
    fs::create_dir_all(&boxed).unwrap();
    fs::create_dir_all(&outside).unwrap();
    let root = boxed.join("out");
    let limits = Limits {
        max_entries: 64,
        max_path_len: 64,
        max_depth: 8,
        max_file_size: 4096,
        max_total_size: 16384,
        max_chunk_size: 64,
    };
    let sink = DirSink::new(&root).ownership(Ownership::Never);
    let mut rx = Reassembler::with_limits(sink, limits);
    let mut m = Mirror::default();
    let mut b = Bytes(data);
    let mut finished = None;
    while !b.0.is_empty() {
        let op = b.u8();
        match op % 4 {
            0 => {
                let idx = b.u8();
                let index = if idx & 0x80 == 0 {
                    m.next_index
                } else {
                    u32::from(idx & 0x7f)
                };
                let kind = EntryKind::from_code(b.u8() % 3 + 1).unwrap();
                let path = if idx & 0x40 == 0 && index == 0 {
                    String::new()
                } else {
                    b.text(24)
                };
                let mode = u32::from(b.u16()) & if idx & 0x20 == 0 { 0o7777 } else { 0xffff };
                let size = if b.u8() & 1 == 0 {
                    u64::from(b.u8())
                } else {
                    u64::from(b.u16())
                };
                let mtime_secs = i64::from(b.u16() as i16) * 100_000;
                let mtime_nanos = u32::from(b.u8()) * 3_900_000;
                let link_target = b.text(24);
                let h = Header {
                    index,
                    path,
                    kind,
                    mode,
                    uid: 0,
                    gid: 0,
                    size,
                    mtime_secs,
                    mtime_nanos,
                    link_target,
                };
                let repeat = m.current.is_some_and(|(i, _, _)| i == h.index);
                if rx.push_ref(&Frame::Header(h.clone())).is_ok() && !repeat {
                    m.digest.header(&h);
                    m.next_index += 1;
                    if h.kind == EntryKind::File {
                        if h.size == 0 {
                            m.digest.end_file();
                        } else {
                            m.current = Some((h.index, h.size, 0));
                        }
                    }
                }
            }
            1 => {
                let flags = b.u8();
                let (cur_index, cur_received) =
                    m.current.map_or((m.next_index, 0), |(i, _, r)| (i, r));
                let entry = if flags & 1 == 0 {
                    cur_index
                } else {
                    u32::from(b.u8())
                };
                let offset = if flags & 2 == 0 {
                    cur_received
                } else {
                    u64::from(b.u16())
                };
                let len = usize::from(b.u8() % 80);
                let data: Vec<u8> = (0..len).map(|_| b.u8()).collect();
                let mut c = Chunk::new(entry, offset, data);
                if flags & 4 != 0 {
                    c.crc32c = b.u32();
                }
                if rx.push_ref(&Frame::Chunk(c.clone())).is_ok() {
                    m.digest.content(&c.data);
                    if let Some((i, size, received)) = m.current {
                        let received = received + c.data.len() as u64;
                        if received == size {
                            m.digest.end_file();
                            m.current = None;
                        } else {
                            m.current = Some((i, size, received));
                        }
                    }
                }
            }
            2 => {
                let digest = if b.u8() & 1 == 0 {
                    m.digest.clone().finish()
                } else {
                    let mut d = [0u8; 32];
                    d.iter_mut().for_each(|x| *x = b.u8());
                    d
                };
                let _ = rx.push(Frame::Eof(Eof { digest }));
            }
            _ => {
                let p = rx.resume_point();
                assert!(
                    p.entry <= m.next_index,
                    "resume point beyond accepted entries"
                );
                if b.u8() & 1 == 1
                    && let Ok(outcome) = rx.finish()
                {
                    finished = Some(outcome.entries);
                }
            }
        }
    }
    if finished.is_none() {
        match rx.finish() {
            Ok(outcome) => finished = Some(outcome.entries),
            Err(_) => rx.abort(),
        }
    }
    drop(rx);
    // Nothing escapes: `outside` stays empty and `box` holds at most `out`.
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "write outside the sink root"
    );
    for e in fs::read_dir(&boxed).unwrap() {
        let e = e.unwrap();
        assert_eq!(e.file_name(), "out", "stray file next to the sink root");
    }
    make_removable(&boxed);
    fs::remove_dir_all(&boxed).unwrap();
    finished
}

/// Restores owner access on directories the stream made read-only so the scratch can be removed.
fn make_removable(dir: &Path) {
    let Ok(m) = fs::symlink_metadata(dir) else {
        return;
    };
    if !m.is_dir() {
        return;
    }
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            make_removable(&e.path());
        }
    }
}
