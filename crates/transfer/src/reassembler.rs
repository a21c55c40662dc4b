//! Strict validation of a frame stream and placement through a [`Sink`].

use std::collections::HashSet;

use crate::digest::ResourceDigest;
use crate::error::Error;
use crate::frame::{Chunk, EntryKind, Eof, Frame, Header, ResumePoint};
use crate::path;
use crate::sink::Sink;

/// Bounds on what a [`Reassembler`] accepts from the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum number of entries in a resource.
    pub max_entries: u32,
    /// Maximum length in bytes of an entry path or a symlink target.
    pub max_path_len: usize,
    /// Maximum number of components of an entry path.
    pub max_depth: usize,
    /// Maximum declared size of a single file.
    pub max_file_size: u64,
    /// Maximum sum of declared file sizes.
    pub max_total_size: u64,
    /// Maximum data bytes in one chunk (the sender's [`ChunkPlanner`](crate::ChunkPlanner)
    /// chunk size, or the transport's message limit).
    pub max_chunk_size: usize,
}

impl Default for Limits {
    /// 1 Mi entries, 4096-byte paths, depth 256, 64 GiB per file and 256 GiB in total, 4 MiB
    /// chunks.
    fn default() -> Self {
        Limits {
            max_entries: 1 << 20,
            max_path_len: 4096,
            max_depth: 256,
            max_file_size: 64 << 30,
            max_total_size: 256 << 30,
            max_chunk_size: 4 << 20,
        }
    }
}

/// What a completed transfer produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The verified resource digest.
    pub digest: [u8; 32],
    /// Plain content SHA-256 when the resource is a single regular file and
    /// [`Reassembler::plain_sha256`] was on (for `ADD --checksum`); `None` otherwise.
    pub file_sha256: Option<[u8; 32]>,
    /// Number of entries placed.
    pub entries: u32,
    /// Number of content bytes placed.
    pub bytes: u64,
}

#[derive(Debug)]
struct Current {
    header: Header,
    received: u64,
    chunks: u64,
}

/// Validates frames strictly, in order, and writes them through a [`Sink`].
///
/// Feed frames with [`push`](Self::push), then call [`finish`](Self::finish). Every frame is
/// checked before anything reaches the sink: entry order, path safety and limits, chunk order,
/// size and CRC-32C; `Eof` checks the resource digest. A rejected frame leaves the reassembler
/// unchanged, so after a disconnect or a corrupted chunk the transfer can continue from
/// [`resume_point`](Self::resume_point) with a resumed stream. A sink failure poisons it.
#[derive(Debug)]
pub struct Reassembler<S: Sink> {
    sink: S,
    limits: Limits,
    digest: ResourceDigest,
    next_entry: u32,
    current: Option<Current>,
    paths: HashSet<String>,
    dirs: HashSet<String>,
    total_declared: u64,
    bytes: u64,
    eof: Option<[u8; 32]>,
    file_sha256: Option<[u8; 32]>,
    poisoned: bool,
    finished: bool,
}

impl<S: Sink> Reassembler<S> {
    /// A reassembler with default [`Limits`].
    pub fn new(sink: S) -> Self {
        Self::with_limits(sink, Limits::default())
    }

    /// A reassembler with the given limits.
    pub fn with_limits(sink: S, limits: Limits) -> Self {
        Reassembler {
            sink,
            limits,
            digest: ResourceDigest::new(),
            next_entry: 0,
            current: None,
            paths: HashSet::new(),
            dirs: HashSet::new(),
            total_declared: 0,
            bytes: 0,
            eof: None,
            file_sha256: None,
            poisoned: false,
            finished: false,
        }
    }

    /// Also computes the plain content SHA-256 of a single-file resource, reported in
    /// [`Outcome::file_sha256`] (default: off; it costs a second hash pass over every byte; the
    /// resource digest is BLAKE3 either way). Call before pushing the file's header.
    pub fn plain_sha256(mut self, on: bool) -> Self {
        self.digest.set_plain_sha256(on);
        self
    }

    /// The last verified position: resume the sender from here after a disconnect.
    pub fn resume_point(&self) -> ResumePoint {
        match &self.current {
            Some(c) => ResumePoint {
                entry: c.header.index,
                offset: c.received,
            },
            None => ResumePoint {
                entry: self.next_entry,
                offset: 0,
            },
        }
    }

    /// Whether the `Eof` frame has been received and verified.
    pub fn is_complete(&self) -> bool {
        self.eof.is_some()
    }

    /// The sink.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// Gives the sink back.
    pub fn into_sink(self) -> S {
        self.sink
    }

    /// Validates one frame and passes it on to the sink.
    pub fn push(&mut self, frame: Frame) -> Result<(), Error> {
        self.push_ref(&frame)
    }

    /// Like [`push`](Self::push), borrowing the frame.
    pub fn push_ref(&mut self, frame: &Frame) -> Result<(), Error> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        if self.eof.is_some() {
            return Err(Error::AfterEof);
        }
        match frame {
            Frame::Header(h) => self.header(h),
            Frame::Chunk(c) => self.chunk(c),
            Frame::Eof(e) => self.end(e),
        }
    }

    /// Ends the transfer: fails with [`Error::Truncated`] unless `Eof` was received, then lets the
    /// sink finish (for [`DirSink`](crate::DirSink): directory modes and times).
    pub fn finish(&mut self) -> Result<Outcome, Error> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        let Some(digest) = self.eof else {
            let detail = match &self.current {
                Some(c) => format!(
                    "entry {:?} has {} of {} bytes and no end of stream",
                    c.header.path, c.received, c.header.size
                ),
                None => format!("no end of stream after {} entries", self.next_entry),
            };
            return Err(Error::Truncated { detail });
        };
        if !self.finished {
            self.sink.finish().map_err(|source| {
                self.poisoned = true;
                Error::Sink {
                    path: String::new(),
                    source,
                }
            })?;
            self.finished = true;
        }
        Ok(Outcome {
            digest,
            file_sha256: self.file_sha256,
            entries: self.next_entry,
            bytes: self.bytes,
        })
    }

    /// Tells the sink to drop partial output (temporary files).
    pub fn abort(&mut self) {
        self.sink.abort();
    }

    fn sink_err(&mut self, path: &str, source: std::io::Error) -> Error {
        self.poisoned = true;
        Error::Sink {
            path: path.to_owned(),
            source,
        }
    }

    fn limit(path: &str, what: &'static str, value: u64, max: u64) -> Result<(), Error> {
        if value > max {
            return Err(Error::LimitExceeded {
                path: path.to_owned(),
                what,
                value,
                max,
            });
        }
        Ok(())
    }

    fn header(&mut self, h: &Header) -> Result<(), Error> {
        if let Some(c) = &self.current {
            if h.index == c.header.index {
                // A resumed stream repeats the header of the entry in progress.
                if *h == c.header {
                    return Ok(());
                }
                return Err(Error::HeaderChanged {
                    path: c.header.path.clone(),
                });
            }
            return Err(Error::IncompleteEntry {
                path: c.header.path.clone(),
                received: c.received,
                size: c.header.size,
            });
        }
        if h.index != self.next_entry {
            return Err(Error::UnexpectedEntry {
                expected: self.next_entry,
                got: h.index,
                path: h.path.clone(),
            });
        }
        let lim = self.limits;
        let p = h.path.as_str();
        Self::limit(
            p,
            "entries",
            u64::from(h.index) + 1,
            u64::from(lim.max_entries),
        )?;
        Self::limit(
            p,
            "path length",
            h.path.len() as u64,
            lim.max_path_len as u64,
        )?;
        let Some(depth) = path::check_relative(p) else {
            return Err(Error::UnsafePath {
                index: h.index,
                path: h.path.clone(),
            });
        };
        Self::limit(p, "path depth", depth as u64, lim.max_depth as u64)?;
        let invalid = |reason| Error::InvalidHeader {
            index: h.index,
            path: h.path.clone(),
            reason,
        };
        if (h.index == 0) != p.is_empty() {
            return Err(invalid("only the first entry has the empty root path"));
        }
        if h.mode > 0o7777 {
            return Err(invalid("mode has bits beyond 0o7777"));
        }
        if h.mtime_nanos >= 1_000_000_000 {
            return Err(invalid("mtime nanoseconds out of range"));
        }
        match h.kind {
            EntryKind::File => {
                if !h.link_target.is_empty() {
                    return Err(invalid("link target on a regular file"));
                }
                Self::limit(p, "file size", h.size, lim.max_file_size)?;
                Self::limit(
                    p,
                    "total size",
                    self.total_declared.saturating_add(h.size),
                    lim.max_total_size,
                )?;
            }
            EntryKind::Dir => {
                if h.size != 0 || !h.link_target.is_empty() {
                    return Err(invalid("directory with a size or link target"));
                }
            }
            EntryKind::Symlink => {
                if h.size != 0 {
                    return Err(invalid("symlink with a size"));
                }
                if h.link_target.is_empty() || h.link_target.contains('\0') {
                    return Err(invalid("symlink target empty or contains NUL"));
                }
                Self::limit(
                    p,
                    "link target length",
                    h.link_target.len() as u64,
                    lim.max_path_len as u64,
                )?;
            }
        }
        if let Some(parent) = path::parent(p)
            && !self.dirs.contains(parent)
        {
            return Err(Error::MissingParent {
                path: h.path.clone(),
            });
        }
        if self.paths.contains(p) {
            return Err(Error::DuplicatePath {
                path: h.path.clone(),
            });
        }
        // Accepted.
        self.sink.begin_entry(h).map_err(|e| self.sink_err(p, e))?;
        self.paths.insert(h.path.clone());
        if h.kind == EntryKind::Dir {
            self.dirs.insert(h.path.clone());
        }
        self.total_declared = self.total_declared.saturating_add(h.size);
        self.next_entry += 1;
        self.digest.header(h);
        if h.kind == EntryKind::File && h.size > 0 {
            self.current = Some(Current {
                header: h.clone(),
                received: 0,
                chunks: 0,
            });
            return Ok(());
        }
        if h.kind == EntryKind::File {
            let sum = self.digest.end_file();
            if h.index == 0 {
                self.file_sha256 = sum;
            }
        }
        self.sink.end_entry().map_err(|e| self.sink_err(p, e))
    }

    fn chunk(&mut self, c: &Chunk) -> Result<(), Error> {
        let Some(cur) = &mut self.current else {
            if c.entry < self.next_entry {
                return Err(Error::DuplicateChunk {
                    entry: c.entry,
                    path: String::new(),
                    chunk: 0,
                    offset: c.offset,
                    expected: 0,
                });
            }
            return Err(Error::ChunkBeforeHeader {
                entry: c.entry,
                offset: c.offset,
            });
        };
        let h = &cur.header;
        if c.entry < h.index {
            return Err(Error::DuplicateChunk {
                entry: c.entry,
                path: String::new(),
                chunk: 0,
                offset: c.offset,
                expected: 0,
            });
        }
        if c.entry > h.index {
            return Err(Error::ChunkBeforeHeader {
                entry: c.entry,
                offset: c.offset,
            });
        }
        let path = || h.path.clone();
        let len = c.data.len();
        if len == 0 {
            return Err(Error::EmptyChunk {
                path: path(),
                chunk: cur.chunks,
                offset: c.offset,
            });
        }
        if len > self.limits.max_chunk_size {
            return Err(Error::OversizeChunk {
                path: path(),
                chunk: cur.chunks,
                offset: c.offset,
                len,
                max: self.limits.max_chunk_size,
            });
        }
        let end = c.offset.saturating_add(len as u64);
        if c.offset < cur.received && end <= cur.received {
            return Err(Error::DuplicateChunk {
                entry: c.entry,
                path: path(),
                chunk: cur.chunks,
                offset: c.offset,
                expected: cur.received,
            });
        }
        if c.offset != cur.received {
            return Err(Error::OutOfOrder {
                path: path(),
                chunk: cur.chunks,
                offset: c.offset,
                expected: cur.received,
            });
        }
        if end > h.size {
            return Err(Error::PastDeclaredSize {
                path: path(),
                chunk: cur.chunks,
                offset: c.offset,
                size: h.size,
            });
        }
        let computed = crc32c::crc32c(&c.data);
        if computed != c.crc32c {
            return Err(Error::BadChecksum {
                path: path(),
                chunk: cur.chunks,
                offset: c.offset,
                expected: c.crc32c,
                computed,
            });
        }
        if let Err(e) = self.sink.write(&c.data) {
            let p = h.path.clone();
            return Err(self.sink_err(&p, e));
        }
        self.digest.content(&c.data);
        cur.received = end;
        cur.chunks += 1;
        self.bytes += len as u64;
        if end < cur.header.size {
            return Ok(());
        }
        let index = cur.header.index;
        let p = cur.header.path.clone();
        self.current = None;
        let sum = self.digest.end_file();
        if index == 0 {
            self.file_sha256 = sum;
        }
        self.sink.end_entry().map_err(|e| self.sink_err(&p, e))
    }

    fn end(&mut self, e: &Eof) -> Result<(), Error> {
        if let Some(c) = &self.current {
            return Err(Error::Truncated {
                detail: format!(
                    "end of stream with entry {:?} at {} of {} bytes",
                    c.header.path, c.received, c.header.size
                ),
            });
        }
        if self.next_entry == 0 {
            return Err(Error::Truncated {
                detail: "end of stream before any entry".into(),
            });
        }
        let computed = self.digest.clone().finish();
        if computed != e.digest {
            return Err(Error::DigestMismatch {
                expected: hex::encode(e.digest),
                computed: hex::encode(computed),
            });
        }
        self.eof = Some(computed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what reaches the sink.
    #[derive(Default, Debug)]
    struct Rec {
        events: Vec<String>,
        fail_write: bool,
    }

    impl Sink for Rec {
        fn begin_entry(&mut self, h: &Header) -> std::io::Result<()> {
            self.events.push(format!("begin {}", h.path));
            Ok(())
        }
        fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
            if self.fail_write {
                return Err(std::io::Error::other("disk full"));
            }
            self.events.push(format!("write {}", data.len()));
            Ok(())
        }
        fn end_entry(&mut self) -> std::io::Result<()> {
            self.events.push("end".into());
            Ok(())
        }
        fn finish(&mut self) -> std::io::Result<()> {
            self.events.push("finish".into());
            Ok(())
        }
    }

    fn hdr(index: u32, path: &str, kind: EntryKind, size: u64) -> Header {
        Header {
            index,
            path: path.into(),
            kind,
            mode: 0o755,
            uid: 1,
            gid: 2,
            size,
            mtime_secs: 1_700_000_000,
            mtime_nanos: 5,
            link_target: if kind == EntryKind::Symlink {
                "t".into()
            } else {
                String::new()
            },
        }
    }

    /// A valid stream for (header, content) pairs with the given chunk size.
    fn stream(entries: &[(Header, Vec<u8>)], chunk: usize) -> Vec<Frame> {
        let mut d = ResourceDigest::new();
        let mut out = Vec::new();
        for (h, data) in entries {
            d.header(h);
            out.push(Frame::Header(h.clone()));
            if h.kind == EntryKind::File {
                for (i, part) in data.chunks(chunk).enumerate() {
                    d.content(part);
                    out.push(Frame::Chunk(Chunk::new(
                        h.index,
                        (i * chunk) as u64,
                        part.to_vec(),
                    )));
                }
                d.end_file();
            }
        }
        out.push(Frame::Eof(Eof { digest: d.finish() }));
        out
    }

    fn tree() -> Vec<(Header, Vec<u8>)> {
        vec![
            (hdr(0, "", EntryKind::Dir, 0), vec![]),
            (hdr(1, "a", EntryKind::File, 10), b"0123456789".to_vec()),
            (hdr(2, "d", EntryKind::Dir, 0), vec![]),
            (hdr(3, "d/l", EntryKind::Symlink, 0), vec![]),
            (hdr(4, "e", EntryKind::File, 0), vec![]),
        ]
    }

    fn feed(frames: &[Frame], limits: Limits) -> (Reassembler<Rec>, Result<(), Error>) {
        let mut r = Reassembler::with_limits(Rec::default(), limits);
        for f in frames {
            if let Err(e) = r.push_ref(f) {
                return (r, Err(e));
            }
        }
        (r, Ok(()))
    }

    fn run(frames: &[Frame]) -> Result<(), Error> {
        feed(frames, Limits::default()).1
    }

    fn chunk_mut(frames: &mut [Frame], n: usize) -> &mut Chunk {
        frames
            .iter_mut()
            .filter_map(|f| match f {
                Frame::Chunk(c) => Some(c),
                _ => None,
            })
            .nth(n)
            .unwrap()
    }

    #[test]
    fn valid_stream_reaches_sink_in_order() {
        let frames = stream(&tree(), 4);
        let (mut r, res) = feed(&frames, Limits::default());
        res.unwrap();
        let out = r.finish().unwrap();
        assert_eq!(out.entries, 5);
        assert_eq!(out.bytes, 10);
        assert_eq!(out.file_sha256, None);
        assert_eq!(
            r.sink().events,
            [
                "begin ",
                "end",
                "begin a",
                "write 4",
                "write 4",
                "write 2",
                "end",
                "begin d",
                "end",
                "begin d/l",
                "end",
                "begin e",
                "end",
                "finish"
            ]
        );
    }

    #[test]
    fn single_file_exposes_plain_sha256() {
        let data = b"hello world".to_vec();
        let frames = stream(&[(hdr(0, "", EntryKind::File, 11), data.clone())], 3);
        let (mut r, res) = feed(&frames, Limits::default());
        res.unwrap();
        let out = r.finish().unwrap();
        assert_eq!(out.file_sha256, None, "off by default");

        let mut r = Reassembler::new(Rec::default()).plain_sha256(true);
        for f in &frames {
            r.push(f.clone()).unwrap();
        }
        let out = r.finish().unwrap();
        assert_eq!(out.file_sha256, Some(crate::digest::sha256(&data)));
    }

    #[test]
    fn chunk_before_header() {
        let mut frames = stream(&tree(), 4);
        frames.remove(1); // header of "a"
        frames.remove(1); // so the first chunk follows the root
        let err = run(&frames).unwrap_err();
        assert!(
            matches!(
                err,
                Error::ChunkBeforeHeader {
                    entry: 1,
                    offset: 4
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn oversize_chunk() {
        let frames = stream(&tree(), 10);
        let limits = Limits {
            max_chunk_size: 4,
            ..Limits::default()
        };
        let err = feed(&frames, limits).1.unwrap_err();
        assert!(
            matches!(&err, Error::OversizeChunk { path, chunk: 0, offset: 0, len: 10, max: 4 } if path == "a"),
            "{err}"
        );
        assert!(err.to_string().contains("\"a\""));
    }

    #[test]
    fn gap_is_out_of_order() {
        let mut frames = stream(&tree(), 4);
        frames.remove(2); // first chunk of "a"
        let err = run(&frames).unwrap_err();
        assert!(
            matches!(
                err,
                Error::OutOfOrder {
                    chunk: 0,
                    offset: 4,
                    expected: 0,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn repeated_chunk_is_duplicate() {
        let mut frames = stream(&tree(), 4);
        let dup = frames[2].clone();
        frames.insert(3, dup);
        let err = run(&frames).unwrap_err();
        assert!(
            matches!(
                err,
                Error::DuplicateChunk {
                    entry: 1,
                    chunk: 1,
                    offset: 0,
                    expected: 4,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn bad_checksum_is_rejected_and_stream_can_continue() {
        let frames = stream(&tree(), 4);
        let mut bad = frames.clone();
        let mut data = chunk_mut(&mut bad, 1).data.to_vec();
        data[0] ^= 1;
        chunk_mut(&mut bad, 1).data = data.into();
        let mut r = Reassembler::new(Rec::default());
        for f in &frames[..3] {
            r.push_ref(f).unwrap();
        }
        let err = r.push_ref(&bad[3]).unwrap_err();
        assert!(
            matches!(
                err,
                Error::BadChecksum {
                    chunk: 1,
                    offset: 4,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            r.resume_point(),
            ResumePoint {
                entry: 1,
                offset: 4
            }
        );
        // The rejected chunk left no trace: the good one is accepted.
        for f in &frames[3..] {
            r.push_ref(f).unwrap();
        }
        r.finish().unwrap();
    }

    #[test]
    fn finish_without_eof_is_truncated() {
        let frames = stream(&tree(), 4);
        let (mut r, res) = feed(&frames[..frames.len() - 1], Limits::default());
        res.unwrap();
        let err = r.finish().unwrap_err();
        assert!(matches!(err, Error::Truncated { .. }), "{err}");
        assert!(!r.sink().events.contains(&"finish".to_string()));
    }

    #[test]
    fn eof_with_short_file_is_truncated() {
        let mut frames = stream(&tree(), 4);
        frames.drain(3..frames.len() - 1);
        let err = run(&frames).unwrap_err();
        assert!(
            matches!(&err, Error::Truncated { detail } if detail.contains("4 of 10")),
            "{err}"
        );
    }

    #[test]
    fn header_before_file_is_complete_is_incomplete_entry() {
        let mut frames = stream(&tree(), 4);
        frames.remove(4); // last chunk of "a"
        let err = run(&frames).unwrap_err();
        assert!(
            matches!(
                err,
                Error::IncompleteEntry {
                    received: 8,
                    size: 10,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn digest_mismatch() {
        let mut frames = stream(&tree(), 4);
        if let Some(Frame::Eof(e)) = frames.last_mut() {
            e.digest[0] ^= 1;
        }
        let err = run(&frames).unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    }

    #[test]
    fn metadata_change_is_a_digest_mismatch() {
        // The sender's digest covers metadata: a header altered in flight is detected.
        let mut frames = stream(&tree(), 4);
        if let Frame::Header(h) = &mut frames[1] {
            h.mode = 0o777;
        }
        assert!(matches!(
            run(&frames).unwrap_err(),
            Error::DigestMismatch { .. }
        ));
    }

    #[test]
    fn limits() {
        let frames = stream(&tree(), 4);
        let cases: [(Limits, &str); 5] = [
            (
                Limits {
                    max_entries: 3,
                    ..Limits::default()
                },
                "entries",
            ),
            (
                Limits {
                    max_path_len: 2,
                    ..Limits::default()
                },
                "path length",
            ),
            (
                Limits {
                    max_depth: 1,
                    ..Limits::default()
                },
                "path depth",
            ),
            (
                Limits {
                    max_file_size: 9,
                    ..Limits::default()
                },
                "file size",
            ),
            (
                Limits {
                    max_total_size: 9,
                    ..Limits::default()
                },
                "total size",
            ),
        ];
        let mut deep = tree();
        deep[3].0.path = "d/lll".into();
        let deep = stream(&deep, 4);
        for (limits, what) in cases {
            let input = if what == "path length" {
                &deep
            } else {
                &frames
            };
            let err = feed(input, limits).1.unwrap_err();
            assert!(
                matches!(&err, Error::LimitExceeded { what: w, .. } if *w == what),
                "{what}: {err}"
            );
        }
    }

    #[test]
    fn unsafe_paths_are_rejected() {
        for bad in ["../x", "/etc/passwd", "a/../../x", "a//b", "."] {
            let mut t = tree();
            t[4].0.path = bad.into();
            let err = run(&stream(&t, 4)).unwrap_err();
            assert!(
                matches!(err, Error::UnsafePath { index: 4, .. }),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn entry_under_symlink_or_file_has_no_parent() {
        for parent in ["d/l", "a", "missing"] {
            let mut t = tree();
            t[4].0.path = format!("{parent}/x");
            let err = run(&stream(&t, 4)).unwrap_err();
            assert!(
                matches!(err, Error::MissingParent { .. }),
                "{parent}: {err}"
            );
        }
        // Nothing may follow a non-directory root.
        let t = vec![
            (hdr(0, "", EntryKind::File, 1), b"x".to_vec()),
            (hdr(1, "y", EntryKind::File, 1), b"y".to_vec()),
        ];
        assert!(matches!(
            run(&stream(&t, 4)).unwrap_err(),
            Error::MissingParent { .. }
        ));
    }

    #[test]
    fn duplicate_path_and_bad_headers() {
        let mut t = tree();
        t[4].0.path = "a".into();
        assert!(matches!(
            run(&stream(&t, 4)).unwrap_err(),
            Error::DuplicatePath { .. }
        ));

        let mut t = tree();
        t[2].0.size = 3;
        assert!(matches!(
            run(&stream(&t, 4)).unwrap_err(),
            Error::InvalidHeader { index: 2, .. }
        ));

        let mut t = tree();
        t[3].0.link_target.clear();
        assert!(matches!(
            run(&stream(&t, 4)).unwrap_err(),
            Error::InvalidHeader { index: 3, .. }
        ));

        let mut t = tree();
        t[1].0.mode = 0o10644;
        assert!(matches!(
            run(&stream(&t, 4)).unwrap_err(),
            Error::InvalidHeader { index: 1, .. }
        ));

        let mut t = tree();
        t[0].0.path = "root".into();
        assert!(matches!(
            run(&stream(&t, 4)).unwrap_err(),
            Error::InvalidHeader { index: 0, .. }
        ));
    }

    #[test]
    fn wrong_entry_index_and_frames_after_eof() {
        let mut frames = stream(&tree(), 4);
        if let Frame::Header(h) = &mut frames[5] {
            h.index = 7;
        }
        assert!(matches!(
            run(&frames).unwrap_err(),
            Error::UnexpectedEntry {
                expected: 2,
                got: 7,
                ..
            }
        ));

        let mut frames = stream(&tree(), 4);
        frames.push(frames[0].clone());
        assert!(matches!(run(&frames).unwrap_err(), Error::AfterEof));
    }

    #[test]
    fn empty_and_past_end_chunks() {
        let mut frames = stream(&tree(), 4);
        chunk_mut(&mut frames, 0).data = Default::default();
        chunk_mut(&mut frames, 0).crc32c = 0;
        assert!(matches!(
            run(&frames).unwrap_err(),
            Error::EmptyChunk { .. }
        ));

        let mut frames = stream(&tree(), 4);
        *chunk_mut(&mut frames, 2) = Chunk::new(1, 8, b"xyz".to_vec());
        assert!(matches!(
            run(&frames).unwrap_err(),
            Error::PastDeclaredSize {
                chunk: 2,
                offset: 8,
                size: 10,
                ..
            }
        ));
    }

    #[test]
    fn resume_repeats_header_of_entry_in_progress() {
        let frames = stream(&tree(), 4);
        let mut r = Reassembler::new(Rec::default());
        for f in &frames[..3] {
            r.push_ref(f).unwrap();
        }
        assert_eq!(
            r.resume_point(),
            ResumePoint {
                entry: 1,
                offset: 4
            }
        );
        // Resumed stream: header again, then the rest.
        r.push_ref(&frames[1]).unwrap();
        let mut changed = frames[1].clone();
        if let Frame::Header(h) = &mut changed {
            h.size = 11;
        }
        assert!(matches!(
            r.push_ref(&changed).unwrap_err(),
            Error::HeaderChanged { .. }
        ));
        for f in &frames[3..] {
            r.push_ref(f).unwrap();
        }
        r.finish().unwrap();
        assert_eq!(
            r.sink().events.iter().filter(|e| *e == "begin a").count(),
            1
        );
        // A completed entry's header is not accepted again.
        let mut r = Reassembler::new(Rec::default());
        for f in &frames[..5] {
            r.push_ref(f).unwrap();
        }
        assert_eq!(
            r.resume_point(),
            ResumePoint {
                entry: 2,
                offset: 0
            }
        );
        assert!(matches!(
            r.push_ref(&frames[1]).unwrap_err(),
            Error::UnexpectedEntry {
                expected: 2,
                got: 1,
                ..
            }
        ));
    }

    #[test]
    fn sink_failure_poisons() {
        let frames = stream(&tree(), 4);
        let mut r = Reassembler::new(Rec {
            fail_write: true,
            ..Rec::default()
        });
        r.push_ref(&frames[0]).unwrap();
        r.push_ref(&frames[1]).unwrap();
        let err = r.push_ref(&frames[2]).unwrap_err();
        assert!(
            matches!(&err, Error::Sink { path, .. } if path == "a"),
            "{err}"
        );
        assert!(matches!(
            r.push_ref(&frames[2]).unwrap_err(),
            Error::Poisoned
        ));
    }
}
