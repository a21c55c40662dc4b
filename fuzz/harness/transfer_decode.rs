//! The `transfer_decode` fuzz harness, shared by the cargo-fuzz target and the stable replay test
//! (`crates/transfer/tests/fuzz_corpus.rs`): bytes are decoded into a sequence of frames, fed to
//! a `Reassembler`. Errors are fine; panics and anything placed outside the sink's root are not.
//!
//! The fuzz target runs in memory ([`run`]): the reassembler writes into a [`MemSink`] that
//! checks what `DirSink` relies on (every entry path relative with normal components only, its
//! parent a directory placed earlier by the same stream, never a symlink; content only inside a
//! file entry and never beyond its declared size nor the total limit). The replay test also runs
//! every input through a real `DirSink` in a scratch directory ([`run_dir`]) and checks that
//! nothing appears outside its root.
//!
//! Decoding (deterministic, every byte string is valid): `op = byte % 4`
//! - 0 header: index, kind, path, mode, size, mtime, link target (path bytes < 0x80 map to a
//!   small alphabet so paths collide and nest often, bytes >= 0x80 to ASCII; one flag bit picks
//!   "the expected index").
//! - 1 chunk: entry, offset (flag: the expected one), data, crc (flag: the correct one).
//! - 2 eof: digest (flag: the digest of what was accepted so far).
//! - 3 ask `resume_point()` / call `finish()`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use firebuild_transfer::digest::ResourceDigest;
use firebuild_transfer::{
    Chunk, DirSink, EntryKind, Eof, Frame, Header, Limits, Ownership, Reassembler, Sink,
};

/// The limits the harness reassembles with (small, so the fuzzer reaches them).
pub const LIMITS: Limits = Limits {
    max_entries: 64,
    max_path_len: 64,
    max_depth: 8,
    max_file_size: 4096,
    max_total_size: 16384,
    max_chunk_size: 64,
};

/// An in-memory sink that asserts every placement is confined (see the module docs).
#[derive(Debug, Default)]
pub struct MemSink {
    /// What was placed, by path (`""` is the root).
    pub nodes: HashMap<String, EntryKind>,
    /// The file being written: path, declared size, bytes received.
    open: Option<(String, u64, u64)>,
    /// Content bytes written in total.
    pub written: u64,
    /// Whether `finish` was called.
    pub finished: bool,
}

impl Sink for MemSink {
    fn begin_entry(&mut self, h: &Header) -> io::Result<()> {
        assert!(
            self.open.is_none(),
            "entry {:?} begins inside a file",
            h.path
        );
        assert!(!self.finished, "entry after finish");
        let p = h.path.as_str();
        if !p.is_empty() {
            assert!(!p.contains('\0'), "NUL in {p:?}");
            assert!(
                p.split('/').all(|c| !c.is_empty() && c != "." && c != ".."),
                "unconfined entry path {p:?}"
            );
            let parent = p.rsplit_once('/').map_or("", |(parent, _)| parent);
            assert_eq!(
                self.nodes.get(parent),
                Some(&EntryKind::Dir),
                "{p:?}: parent is not a directory placed by this stream"
            );
        } else {
            assert!(self.nodes.is_empty(), "root entry after other entries");
        }
        // A directory over a directory merges; anything else replaces.
        if self.nodes.get(p) == Some(&EntryKind::Dir) && h.kind != EntryKind::Dir {
            let prefix = format!("{p}/");
            self.nodes.retain(|k, _| !k.starts_with(&prefix));
        }
        self.nodes.insert(h.path.clone(), h.kind);
        if h.kind == EntryKind::File {
            self.open = Some((h.path.clone(), h.size, 0));
        }
        Ok(())
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        let Some((path, size, received)) = &mut self.open else {
            panic!("{} bytes written outside a file entry", data.len());
        };
        *received += data.len() as u64;
        assert!(*received <= *size, "{path:?}: more than its declared size");
        self.written += data.len() as u64;
        assert!(
            self.written <= LIMITS.max_total_size,
            "over the total limit"
        );
        Ok(())
    }

    fn end_entry(&mut self) -> io::Result<()> {
        if let Some((path, size, received)) = self.open.take() {
            assert_eq!(received, size, "{path:?} ended short");
        }
        Ok(())
    }

    fn finish(&mut self) -> io::Result<()> {
        assert!(self.open.is_none(), "finish inside a file");
        self.finished = true;
        Ok(())
    }

    fn abort(&mut self) {
        self.open = None;
    }
}

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

/// Runs one input in memory. Returns the number of entries placed when the stream was complete
/// and verified.
pub fn run(data: &[u8]) -> Option<u32> {
    let (finished, sink) = run_with(data, MemSink::default());
    assert_eq!(finished.is_some(), sink.finished, "finish reached the sink");
    if let Some(n) = finished {
        assert!(n as usize >= sink.nodes.len(), "more placed than accepted");
    }
    finished
}

/// Runs one input through a `DirSink` under `scratch` (an empty directory), checking that nothing
/// lands outside its root. Returns what [`run`] returns.
pub fn run_dir(data: &[u8], scratch: &Path) -> Option<u32> {
    let boxed = scratch.join("box");
    let outside = scratch.join("outside");
    fs::create_dir_all(&boxed).unwrap();
    fs::create_dir_all(&outside).unwrap();
    let root = boxed.join("out");
    let sink = DirSink::new(&root).ownership(Ownership::Never);
    let (finished, _) = run_with(data, sink);
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

/// Decodes `data` into frames and pushes them into a reassembler writing to `sink`.
pub fn run_with<S: Sink>(data: &[u8], sink: S) -> (Option<u32>, S) {
    let mut rx = Reassembler::with_limits(sink, LIMITS);
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
    (finished, rx.into_sink())
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
