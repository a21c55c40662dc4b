//! Walking a source and producing frames lazily.

use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::digest::ResourceDigest;
use crate::error::Error;
use crate::frame::{Chunk, EntryKind, Eof, Frame, Header, ResumePoint};
use crate::planner::ChunkPlanner;

/// The filter callback: `(path relative to the resource root, is_dir) -> keep`. Returning `false`
/// for a directory skips its whole subtree.
pub type Filter<'a> = &'a dyn Fn(&Path, bool) -> bool;

#[derive(Debug)]
struct SourceEntry {
    header: Header,
    source: PathBuf,
}

#[derive(Debug)]
struct Reading {
    index: u32,
    file: File,
    offset: u64,
    size: u64,
}

/// Produces the frames of one resource (a file, a symlink or a directory tree), reading file
/// contents lazily, one chunk at a time.
///
/// Construction walks the tree (metadata only, sorted by file name bytes, symlinks never followed,
/// special files skipped with a warning). Iterating yields the header of each entry followed by its
/// chunks, then one [`Eof`]. After an error the iterator ends.
///
/// Resuming: [`EncoderBuilder::resume_from`] takes a [`ResumePoint`] from
/// [`Reassembler::resume_point`](crate::Reassembler::resume_point). The stream then starts with
/// the header of that entry and its chunks from the given offset. Earlier content is read again
/// from disk (not sent) because the final digest covers it.
#[derive(Debug)]
pub struct ResourceEncoder {
    entries: Vec<SourceEntry>,
    planner: ChunkPlanner,
    digest: Option<ResourceDigest>,
    next: usize,
    reading: Option<Reading>,
    pending_header: Option<usize>,
    final_digest: Option<[u8; 32]>,
    file_sha256: Option<[u8; 32]>,
    failed: bool,
}

/// Options for a [`ResourceEncoder`]; see [`ResourceEncoder::builder`].
pub struct EncoderBuilder<'a> {
    path: PathBuf,
    planner: ChunkPlanner,
    filter: Option<Filter<'a>>,
    resume: ResumePoint,
    follow_root_symlink: bool,
    plain_sha256: bool,
}

impl std::fmt::Debug for EncoderBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncoderBuilder")
            .field("path", &self.path)
            .field("planner", &self.planner)
            .field("filter", &self.filter.is_some())
            .field("resume", &self.resume)
            .field("follow_root_symlink", &self.follow_root_symlink)
            .field("plain_sha256", &self.plain_sha256)
            .finish()
    }
}

impl<'a> EncoderBuilder<'a> {
    /// Chunk sizing (default: [`ChunkPlanner::default`], 256 KiB chunks).
    pub fn planner(mut self, planner: ChunkPlanner) -> Self {
        self.planner = planner;
        self
    }

    /// Keeps only entries for which `filter(relative_path, is_dir)` is true (`.dockerignore`,
    /// `--exclude`). The root entry is always kept.
    pub fn filter(mut self, filter: Filter<'a>) -> Self {
        self.filter = Some(filter);
        self
    }

    /// Starts the stream at `point` instead of the beginning.
    pub fn resume_from(mut self, point: ResumePoint) -> Self {
        self.resume = point;
        self
    }

    /// If the resource path itself is a symlink, send what it points to instead of the link
    /// (default: send the link). Links inside a directory are never followed.
    pub fn follow_root_symlink(mut self, follow: bool) -> Self {
        self.follow_root_symlink = follow;
        self
    }

    /// Also computes the plain content SHA-256 of a single-file resource, exposed by
    /// [`ResourceEncoder::file_sha256`] (default: off; it costs a second hash pass over every
    /// byte; the resource digest is BLAKE3 either way).
    pub fn plain_sha256(mut self, on: bool) -> Self {
        self.plain_sha256 = on;
        self
    }

    /// Walks the source and prepares the encoder.
    pub fn build(self) -> Result<ResourceEncoder, Error> {
        let entries = walk(&self.path, self.follow_root_symlink, self.filter)?;
        let mut digest = ResourceDigest::new();
        digest.set_plain_sha256(self.plain_sha256);
        let mut enc = ResourceEncoder {
            entries,
            planner: self.planner,
            digest: Some(digest),
            next: 0,
            reading: None,
            pending_header: None,
            final_digest: None,
            file_sha256: None,
            failed: false,
        };
        enc.skip_to(self.resume)?;
        Ok(enc)
    }
}

impl ResourceEncoder {
    /// An encoder for the resource at `path` with default options.
    pub fn new(path: impl AsRef<Path>, planner: ChunkPlanner) -> Result<Self, Error> {
        Self::builder(path).planner(planner).build()
    }

    /// Options: planner, filter, resume point, root symlink handling, plain SHA-256.
    pub fn builder<'a>(path: impl AsRef<Path>) -> EncoderBuilder<'a> {
        EncoderBuilder {
            path: path.as_ref().to_path_buf(),
            planner: ChunkPlanner::default(),
            filter: None,
            resume: ResumePoint::default(),
            follow_root_symlink: false,
            plain_sha256: false,
        }
    }

    /// The headers of all entries, in stream order.
    pub fn headers(&self) -> impl Iterator<Item = &Header> {
        self.entries.iter().map(|e| &e.header)
    }

    /// Number of entries in the resource.
    pub fn entry_count(&self) -> u32 {
        u32::try_from(self.entries.len()).unwrap_or(u32::MAX)
    }

    /// Sum of all file sizes.
    pub fn total_size(&self) -> u64 {
        self.entries.iter().map(|e| e.header.size).sum()
    }

    /// The chunk data size in use.
    pub fn chunk_size(&self) -> usize {
        self.planner.chunk_size()
    }

    /// The resource digest, once `Eof` has been produced.
    pub fn digest(&self) -> Option<[u8; 32]> {
        self.final_digest
    }

    /// The plain content SHA-256 when the resource is a single regular file and
    /// [`EncoderBuilder::plain_sha256`] is on, once its last chunk has been produced.
    pub fn file_sha256(&self) -> Option<[u8; 32]> {
        self.file_sha256
    }

    /// The next frame, `Ok(None)` after `Eof`.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, Error> {
        if self.failed {
            return Ok(None);
        }
        let r = self.step();
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    fn step(&mut self) -> Result<Option<Frame>, Error> {
        if let Some(i) = self.pending_header.take() {
            return Ok(Some(Frame::Header(self.entries[i].header.clone())));
        }
        if let Some(reading) = &mut self.reading {
            let entry = &self.entries[reading.index as usize];
            let remaining = reading.size - reading.offset;
            let len = usize::try_from(remaining.min(self.planner.chunk_size() as u64))
                .unwrap_or(usize::MAX);
            // Read into spare capacity: `File` fills it without zeroing it first (`vec![0; len]`
            // cost a memset of every chunk, ~4% of the server's CPU in the channel bench).
            let mut buf = Vec::with_capacity(len);
            let got = (&mut reading.file)
                .take(len as u64)
                .read_to_end(&mut buf)
                .map_err(|source| Error::Source {
                    path: entry.source.clone(),
                    source,
                })?;
            if got < len {
                return Err(Error::SourceChanged {
                    path: entry.source.clone(),
                    expected: reading.size,
                    found: reading.offset + got as u64,
                });
            }
            let offset = reading.offset;
            let index = reading.index;
            reading.offset += len as u64;
            let done = reading.offset == reading.size;
            if let Some(d) = &mut self.digest {
                d.content(&buf);
                if done {
                    let sum = d.end_file();
                    if index == 0 {
                        self.file_sha256 = sum;
                    }
                }
            }
            if done {
                // A file rewritten or grown while being read would arrive torn: refuse it.
                let now = reading.file.metadata().map_err(|source| Error::Source {
                    path: entry.source.clone(),
                    source,
                })?;
                if now.len() != reading.size
                    || (now.mtime(), now.mtime_nsec())
                        != (entry.header.mtime_secs, i64::from(entry.header.mtime_nanos))
                {
                    return Err(Error::SourceChanged {
                        path: entry.source.clone(),
                        expected: reading.size,
                        found: now.len(),
                    });
                }
                self.reading = None;
            }
            return Ok(Some(Frame::Chunk(Chunk::new(index, offset, buf))));
        }
        if self.next < self.entries.len() {
            let i = self.next;
            self.next += 1;
            self.begin(i, 0)?;
            return Ok(Some(Frame::Header(self.entries[i].header.clone())));
        }
        match self.digest.take() {
            Some(d) => {
                let digest = d.finish();
                self.final_digest = Some(digest);
                Ok(Some(Frame::Eof(Eof { digest })))
            }
            None => Ok(None),
        }
    }

    /// Starts entry `i`: feeds its header to the digest and opens it at `offset` (hashing the
    /// skipped bytes).
    fn begin(&mut self, i: usize, offset: u64) -> Result<(), Error> {
        let entry = &self.entries[i];
        let Some(d) = &mut self.digest else {
            return Ok(());
        };
        d.header(&entry.header);
        if entry.header.kind != EntryKind::File {
            return Ok(());
        }
        let size = entry.header.size;
        let index = entry.header.index;
        if size == 0 {
            let sum = d.end_file();
            if index == 0 {
                self.file_sha256 = sum;
            }
            return Ok(());
        }
        let src = |source| Error::Source {
            path: entry.source.clone(),
            source,
        };
        let mut file = File::open(&entry.source).map_err(src)?;
        if offset > 0 {
            let mut buf = vec![0u8; self.planner.chunk_size().clamp(64 * 1024, 1 << 20)];
            let mut done = 0u64;
            while done < offset {
                let want = usize::try_from((offset - done).min(buf.len() as u64)).unwrap_or(0);
                let got = read_full(&mut file, &mut buf[..want]).map_err(src)?;
                if got < want {
                    return Err(Error::SourceChanged {
                        path: entry.source.clone(),
                        expected: size,
                        found: done + got as u64,
                    });
                }
                d.content(&buf[..want]);
                done += want as u64;
            }
        }
        if offset == size {
            let sum = d.end_file();
            if index == 0 {
                self.file_sha256 = sum;
            }
            return Ok(());
        }
        self.reading = Some(Reading {
            index,
            file,
            offset,
            size,
        });
        Ok(())
    }

    /// Positions the encoder at `point`, hashing everything before it.
    fn skip_to(&mut self, point: ResumePoint) -> Result<(), Error> {
        let entries = self.entry_count();
        let bad = Error::BadResumePoint {
            entry: point.entry,
            offset: point.offset,
            entries,
        };
        let e = point.entry as usize;
        if e > self.entries.len() {
            return Err(bad);
        }
        if e == self.entries.len() || point.offset > 0 {
            let ok = match self.entries.get(e) {
                None => point.offset == 0,
                Some(en) => en.header.kind == EntryKind::File && point.offset <= en.header.size,
            };
            if !ok {
                return Err(bad);
            }
        }
        for i in 0..e {
            let size = self.entries[i].header.size;
            self.begin(i, size)?;
        }
        if point.offset > 0 {
            // Hash the first `offset` bytes now; the header is emitted again by `step` without
            // touching the digest a second time.
            self.begin(e, point.offset)?;
            self.next = e + 1;
            self.pending_header = Some(e);
        } else {
            self.next = e;
        }
        Ok(())
    }
}

impl Iterator for ResourceEncoder {
    type Item = Result<Frame, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_frame().transpose()
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn walk(
    root: &Path,
    follow_root: bool,
    filter: Option<Filter<'_>>,
) -> Result<Vec<SourceEntry>, Error> {
    let src = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Source { path, source }
    };
    let meta = if follow_root {
        fs::metadata(root)
    } else {
        fs::symlink_metadata(root)
    }
    .map_err(src(root))?;
    let mut out = Vec::new();
    let Some(root_entry) = entry(root, String::new(), 0, &meta)? else {
        return Err(Error::Source {
            path: root.to_path_buf(),
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file, directory or symlink",
            ),
        });
    };
    let is_dir = root_entry.header.kind == EntryKind::Dir;
    out.push(root_entry);
    if is_dir {
        walk_dir(root, "", filter, &mut out)?;
    }
    Ok(out)
}

fn walk_dir(
    dir: &Path,
    rel: &str,
    filter: Option<Filter<'_>>,
    out: &mut Vec<SourceEntry>,
) -> Result<(), Error> {
    let src = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Source { path, source }
    };
    let mut names = Vec::new();
    for ent in fs::read_dir(dir).map_err(src(dir))? {
        names.push(ent.map_err(src(dir))?.file_name());
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names {
        let path = dir.join(&name);
        let Some(name) = name.to_str() else {
            return Err(Error::NonUtf8Path { path });
        };
        let child_rel = if rel.is_empty() {
            name.to_owned()
        } else {
            format!("{rel}/{name}")
        };
        let meta = fs::symlink_metadata(&path).map_err(src(&path))?;
        if let Some(f) = filter
            && !f(Path::new(&child_rel), meta.is_dir())
        {
            continue;
        }
        let index = u32::try_from(out.len()).map_err(|_| Error::Source {
            path: path.clone(),
            source: io::Error::other("more than 2^32 entries"),
        })?;
        let Some(e) = entry(&path, child_rel, index, &meta)? else {
            continue;
        };
        let is_dir = e.header.kind == EntryKind::Dir;
        let child_rel = e.header.path.clone();
        out.push(e);
        if is_dir {
            walk_dir(&path, &child_rel, filter, out)?;
        }
    }
    Ok(())
}

fn entry(
    path: &Path,
    rel: String,
    index: u32,
    meta: &Metadata,
) -> Result<Option<SourceEntry>, Error> {
    let ft = meta.file_type();
    let (kind, size, link_target) = if ft.is_file() {
        (EntryKind::File, meta.len(), String::new())
    } else if ft.is_dir() {
        (EntryKind::Dir, 0, String::new())
    } else if ft.is_symlink() {
        let target = fs::read_link(path).map_err(|source| Error::Source {
            path: path.to_path_buf(),
            source,
        })?;
        let Ok(target) = target.into_os_string().into_string() else {
            return Err(Error::NonUtf8Path {
                path: path.to_path_buf(),
            });
        };
        (EntryKind::Symlink, 0, target)
    } else {
        let what = if ft.is_fifo() {
            "fifo"
        } else if ft.is_socket() {
            "socket"
        } else if ft.is_block_device() || ft.is_char_device() {
            "device"
        } else {
            "special file"
        };
        tracing::warn!(path = %path.display(), kind = what, "skipping special file");
        return Ok(None);
    };
    let header = Header {
        index,
        path: rel,
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        size,
        mtime_secs: meta.mtime(),
        mtime_nanos: u32::try_from(meta.mtime_nsec()).unwrap_or(0),
        link_target,
    };
    Ok(Some(SourceEntry {
        header,
        source: path.to_path_buf(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(enc: &ResourceEncoder) -> Vec<(String, EntryKind)> {
        enc.headers().map(|h| (h.path.clone(), h.kind)).collect()
    }

    #[test]
    fn walk_is_sorted_filtered_and_skips_special_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        fs::create_dir(p.join("b")).unwrap();
        fs::write(p.join("b/z"), b"z").unwrap();
        fs::write(p.join("a"), b"a").unwrap();
        fs::write(p.join("B"), b"B").unwrap();
        fs::create_dir(p.join("skip")).unwrap();
        fs::write(p.join("skip/x"), b"x").unwrap();
        std::os::unix::fs::symlink("/nonexistent", p.join("link")).unwrap();
        let fifo = std::process::Command::new("mkfifo")
            .arg(p.join("fifo"))
            .status();
        let filter = |path: &Path, is_dir: bool| !(is_dir && path == Path::new("skip"));
        let enc = ResourceEncoder::builder(p).filter(&filter).build().unwrap();
        assert_eq!(
            headers(&enc),
            [
                ("".into(), EntryKind::Dir),
                ("B".into(), EntryKind::File),
                ("a".into(), EntryKind::File),
                ("b".into(), EntryKind::Dir),
                ("b/z".into(), EntryKind::File),
                ("link".into(), EntryKind::Symlink),
            ]
        );
        if fifo.is_ok_and(|s| s.success()) {
            assert!(enc.headers().all(|h| h.path != "fifo"));
        }
        let link = enc.headers().find(|h| h.path == "link").unwrap();
        assert_eq!(link.link_target, "/nonexistent");
        assert_eq!(enc.total_size(), 3);
    }

    #[test]
    fn frames_are_header_chunks_eof() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        fs::write(&f, vec![7u8; 25]).unwrap();
        let enc = ResourceEncoder::new(&f, ChunkPlanner::fixed(10).unwrap()).unwrap();
        let frames: Vec<Frame> = enc.map(|f| f.unwrap()).collect();
        assert_eq!(frames.len(), 5);
        assert!(matches!(&frames[0], Frame::Header(h) if h.size == 25 && h.path.is_empty()));
        let offsets: Vec<(u64, usize)> = frames
            .iter()
            .filter_map(|f| match f {
                Frame::Chunk(c) => Some((c.offset, c.data.len())),
                _ => None,
            })
            .collect();
        assert_eq!(offsets, [(0, 10), (10, 10), (20, 5)]);
        assert!(matches!(frames[4], Frame::Eof(_)));
    }

    #[test]
    fn bad_resume_points() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f"), b"12345").unwrap();
        for (entry, offset) in [(3, 0), (2, 1), (0, 1), (1, 6)] {
            let err = ResourceEncoder::builder(dir.path())
                .resume_from(ResumePoint { entry, offset })
                .build()
                .unwrap_err();
            assert!(
                matches!(err, Error::BadResumePoint { entries: 2, .. }),
                "{entry}/{offset}"
            );
        }
        let enc = ResourceEncoder::builder(dir.path())
            .resume_from(ResumePoint {
                entry: 2,
                offset: 0,
            })
            .build()
            .unwrap();
        let frames: Vec<_> = enc.collect();
        assert_eq!(frames.len(), 1);
        assert!(matches!(frames[0], Ok(Frame::Eof(_))));
    }

    #[test]
    fn shrinking_source_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        fs::write(&f, vec![1u8; 100]).unwrap();
        let mut enc = ResourceEncoder::new(&f, ChunkPlanner::fixed(10).unwrap()).unwrap();
        assert!(matches!(enc.next_frame().unwrap(), Some(Frame::Header(_))));
        fs::write(&f, vec![1u8; 15]).unwrap();
        assert!(matches!(enc.next_frame().unwrap(), Some(Frame::Chunk(_))));
        let err = enc.next_frame().unwrap_err();
        assert!(
            matches!(
                err,
                Error::SourceChanged {
                    expected: 100,
                    found: 15,
                    ..
                }
            ),
            "{err}"
        );
        assert!(enc.next().is_none());
    }

    #[test]
    fn file_rewritten_during_send_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        fs::write(&f, vec![1u8; 20]).unwrap();
        let mut enc = ResourceEncoder::new(&f, ChunkPlanner::fixed(10).unwrap()).unwrap();
        assert!(matches!(enc.next_frame().unwrap(), Some(Frame::Header(_))));
        assert!(matches!(enc.next_frame().unwrap(), Some(Frame::Chunk(_))));
        // Same size, new content and mtime: the last chunk is refused.
        let t = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        let file = fs::OpenOptions::new().write(true).open(&f).unwrap();
        std::io::Write::write_all(&mut &file, &[2u8; 20]).unwrap();
        file.set_modified(t).unwrap();
        let err = enc.next_frame().unwrap_err();
        assert!(
            matches!(
                err,
                Error::SourceChanged {
                    expected: 20,
                    found: 20,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn missing_source_is_an_error_with_path() {
        let err = ResourceEncoder::new("/nonexistent/x", ChunkPlanner::default()).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x"));
    }
}
