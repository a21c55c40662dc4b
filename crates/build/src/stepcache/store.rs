//! The step cache on disk: disk images stored as content-addressed chunks, one entry per key.
//!
//! ```text
//! DIR/lock                 flock: shared while a build reads or publishes, exclusive to prune
//! DIR/chunks/ab/abcd…      one chunk (1 MiB of the image, or less at its end), named by BLAKE3
//! DIR/entries/KEY.json     an entry: the image's size and which chunk lies at which offset;
//!                          its modification time is its last use
//! ```
//!
//! Crash safety: a chunk is written under a temporary name and renamed to its digest; an entry
//! is written only after its chunks are on disk (`syncfs`), under a temporary name, then renamed
//! (atomic) and the directory synced. A build killed at any point leaves at most temporary files
//! (removed by the next prune) and chunks no entry names; never an entry naming a missing or
//! partial chunk. Every chunk is verified against its digest when an image is restored: a
//! mismatch drops the entry and counts as a miss.
//!
//! Zero chunks are not stored: images are sparse, and a restored image is too.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use rustix::fs::{FlockOperation, SeekFrom, flock};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Bytes per chunk.
pub const CHUNK: u64 = 1 << 20;
/// Version of the entry format; entries of another version are ignored.
const FORMAT: u32 = 1;
/// Largest entry file read.
const MAX_ENTRY_BYTES: u64 = 64 << 20;

/// One chunk of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// Byte offset in the image.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// BLAKE3 of the bytes, hex.
    pub digest: String,
}

/// A stored image: the state of a stage's root disk after one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// [`FORMAT`].
    pub format: u32,
    /// The step key (hex).
    pub key: String,
    /// What the entry is, for `cache ls`: `stage 0 step 2/3: RUN make`.
    pub description: String,
    /// When it was published, seconds since the Unix epoch.
    pub created: u64,
    /// Image size in bytes (the file is sparse).
    pub image_size: u64,
    /// The non-zero chunks.
    pub chunks: Vec<ChunkRef>,
    /// Opaque data of the embedder (the stage's base provenance).
    #[serde(default)]
    pub extra: serde_json::Value,
}

impl Entry {
    /// Bytes of data the entry names (its chunks, shared or not).
    pub fn data_bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.len).sum()
    }
}

/// What a publish cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Published {
    /// Bytes read and hashed.
    pub scanned: u64,
    /// Bytes of new chunks written (the rest were already stored).
    pub written: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// A step cache directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// A held lock on the store; released on drop.
#[derive(Debug)]
pub struct Lock(#[allow(dead_code)] File);

impl Store {
    /// The store in `dir` (created when first written).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Store { dir: dir.into() }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entries_dir(&self) -> PathBuf {
        self.dir.join("entries")
    }

    fn entry_path(&self, key: &str) -> PathBuf {
        self.entries_dir().join(format!("{key}.json"))
    }

    fn chunk_path(&self, digest: &str) -> PathBuf {
        self.dir.join("chunks").join(&digest[..2]).join(digest)
    }

    /// Takes the store's lock: shared for builds, exclusive for prune (waits).
    pub fn lock(&self, exclusive: bool) -> Result<Lock> {
        std::fs::create_dir_all(self.entries_dir()).map_err(Error::io("create", &self.dir))?;
        std::fs::create_dir_all(self.dir.join("chunks")).map_err(Error::io("create", &self.dir))?;
        let path = self.dir.join("lock");
        let file = File::create(&path).map_err(Error::io("create", &path))?;
        let op = if exclusive {
            FlockOperation::LockExclusive
        } else {
            FlockOperation::LockShared
        };
        flock(&file, op).map_err(|e| Error::io("lock", &path)(e.into()))?;
        Ok(Lock(file))
    }

    /// The entry for `key`, if one was published (and is readable, of this format).
    pub fn get(&self, key: &str) -> Option<Entry> {
        let path = self.entry_path(key);
        let file = File::open(&path).ok()?;
        let mut text = Vec::new();
        file.take(MAX_ENTRY_BYTES).read_to_end(&mut text).ok()?;
        let entry: Entry = serde_json::from_slice(&text).ok()?;
        (entry.format == FORMAT && entry.key == key).then_some(entry)
    }

    /// Marks `key` used now (its entry's modification time, what LRU pruning reads).
    pub fn touch(&self, key: &str) {
        let path = self.entry_path(key);
        if let Ok(f) = File::options().write(true).open(&path) {
            let _ = f.set_modified(SystemTime::now());
        }
    }

    /// Writes the image at `entry.image_size` bytes into `to` (created sparse), verifying each
    /// chunk. A missing or corrupt chunk removes the entry and fails: the caller treats it as a
    /// miss.
    pub fn restore(&self, entry: &Entry, to: &Path) -> Result<()> {
        let out = File::create(to).map_err(Error::io("create", to))?;
        out.set_len(entry.image_size)
            .map_err(Error::io("size", to))?;
        for c in &entry.chunks {
            let path = self.chunk_path(&c.digest);
            let data = std::fs::read(&path).map_err(Error::io("read", &path))?;
            if data.len() as u64 != c.len || blake3::hash(&data).to_hex().as_str() != c.digest {
                let _ = std::fs::remove_file(self.entry_path(&entry.key));
                let _ = std::fs::remove_file(&path);
                return Err(Error::io("verify", &path)(std::io::Error::other(
                    "step cache chunk does not match its digest",
                )));
            }
            out.write_all_at(&data, c.offset)
                .map_err(Error::io("write", to))?;
        }
        self.touch(&entry.key);
        Ok(())
    }

    /// Stores the image at `image` under `key` (chunks first, then the entry, atomically). A
    /// key already present is kept as is.
    pub fn publish(
        &self,
        key: &str,
        image: &Path,
        description: String,
        extra: serde_json::Value,
    ) -> Result<Published> {
        let started = Instant::now();
        if self.get(key).is_some() {
            self.touch(key);
            return Ok(Published::default());
        }
        let mut cost = Published::default();
        let chunks = self.store_chunks(image, &mut cost)?;
        let image_size = std::fs::metadata(image)
            .map_err(Error::io("stat", image))?
            .len();
        let entry = Entry {
            format: FORMAT,
            key: key.to_owned(),
            description,
            created: now(),
            image_size,
            chunks,
            extra,
        };
        self.write_entry(&entry)?;
        cost.elapsed = started.elapsed();
        Ok(cost)
    }

    /// Stores every non-zero chunk of `image`'s data extents; their references.
    fn store_chunks(&self, image: &Path, cost: &mut Published) -> Result<Vec<ChunkRef>> {
        let file = File::open(image).map_err(Error::io("open", image))?;
        let size = file.metadata().map_err(Error::io("stat", image))?.len();
        let mut chunks = Vec::new();
        let mut buf = vec![0u8; CHUNK as usize];
        for offset in data_chunks(&file, size) {
            let len = CHUNK.min(size - offset) as usize;
            file.read_exact_at(&mut buf[..len], offset)
                .map_err(Error::io("read", image))?;
            let data = &buf[..len];
            cost.scanned += len as u64;
            if data.iter().all(|&b| b == 0) {
                continue;
            }
            let digest = blake3::hash(data).to_hex().to_string();
            cost.written += self.put_chunk(&digest, data)?;
            chunks.push(ChunkRef {
                offset,
                len: len as u64,
                digest,
            });
        }
        Ok(chunks)
    }

    /// Writes a chunk unless stored; the bytes written.
    fn put_chunk(&self, digest: &str, data: &[u8]) -> Result<u64> {
        let path = self.chunk_path(digest);
        if path.exists() {
            return Ok(0);
        }
        let dir = path.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
        let mut tmp = tempfile::NamedTempFile::with_prefix_in(".tmp-", dir)
            .map_err(Error::io("create a chunk in", dir))?;
        tmp.write_all(data)
            .map_err(Error::io("write", tmp.path()))?;
        tmp.persist(&path)
            .map_err(|e| Error::io("rename", &path)(e.error))?;
        Ok(data.len() as u64)
    }

    /// Publishes an entry: its chunks made durable first, then the entry renamed into place.
    fn write_entry(&self, entry: &Entry) -> Result<()> {
        let dir = self.entries_dir();
        let handle = File::open(&self.dir).map_err(Error::io("open", &self.dir))?;
        rustix::fs::syncfs(&handle).map_err(|e| Error::io("sync", &self.dir)(e.into()))?;
        let mut tmp = tempfile::NamedTempFile::with_prefix_in(".tmp-", &dir)
            .map_err(Error::io("create an entry in", &dir))?;
        let text = serde_json::to_vec(entry).map_err(|e| Error::Task(e.to_string()))?;
        tmp.write_all(&text)
            .map_err(Error::io("write", tmp.path()))?;
        tmp.as_file()
            .sync_all()
            .map_err(Error::io("sync", tmp.path()))?;
        let path = self.entry_path(&entry.key);
        tmp.persist(&path)
            .map_err(|e| Error::io("rename", &path)(e.error))?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(Error::io("sync", &dir))
    }

    /// Every entry, most recently used first, with its last use (seconds since the epoch).
    pub fn list(&self) -> Result<Vec<(Entry, u64)>> {
        let dir = self.entries_dir();
        let read = match std::fs::read_dir(&dir) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("list", &dir)(e)),
        };
        let mut out = Vec::new();
        for item in read.flatten() {
            let name = item.file_name().to_string_lossy().into_owned();
            let Some(key) = name.strip_suffix(".json") else {
                continue;
            };
            let used = item
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .map_or(0, secs);
            if let Some(entry) = self.get(key) {
                out.push((entry, used));
            }
        }
        out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.key.cmp(&b.0.key)));
        Ok(out)
    }

    /// Bytes the chunks take on disk (allocated blocks), and their count.
    pub fn disk_usage(&self) -> (u64, usize) {
        use std::os::unix::fs::MetadataExt as _;
        let mut total = (0, 0);
        for path in walk_chunks(&self.dir.join("chunks")) {
            if let Ok(m) = std::fs::metadata(&path) {
                total.0 += m.blocks() * 512;
                total.1 += 1;
            }
        }
        total
    }

    /// Removes the entries `remove` selects, then every chunk no remaining entry names and
    /// every leftover temporary file. Entries are offered most recently used first, each with
    /// its last use (seconds since the epoch) and the bytes the kept entries would hold if it
    /// were kept too (chunks shared between entries count once). Holds the exclusive lock:
    /// waits for running builds to finish publishing. The removed entries.
    pub fn prune(&self, remove: impl Fn(&Entry, u64, u64) -> bool) -> Result<Vec<Entry>> {
        let _lock = self.lock(true)?;
        let mut kept_bytes = 0;
        let mut removed = Vec::new();
        let mut referenced = std::collections::HashSet::new();
        for (entry, used) in self.list()? {
            let added: u64 = entry
                .chunks
                .iter()
                .filter(|c| !referenced.contains(&c.digest))
                .map(|c| c.len)
                .sum();
            if remove(&entry, used, kept_bytes + added) {
                let path = self.entry_path(&entry.key);
                std::fs::remove_file(&path).map_err(Error::io("remove", &path))?;
                removed.push(entry);
                continue;
            }
            kept_bytes += added;
            referenced.extend(entry.chunks.iter().map(|c| c.digest.clone()));
        }
        for path in walk_chunks(&self.dir.join("chunks")) {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            if name.is_some_and(|n| !referenced.contains(&n)) {
                let _ = std::fs::remove_file(&path);
            }
        }
        remove_temporaries(&self.entries_dir());
        Ok(removed)
    }
}

/// The offsets of the chunks holding data (`SEEK_DATA`/`SEEK_HOLE`), each aligned to [`CHUNK`].
fn data_chunks(file: &File, size: u64) -> Vec<u64> {
    let mut out: Vec<u64> = Vec::new();
    let mut at = 0;
    while at < size {
        let Ok(start) = rustix::fs::seek(file, SeekFrom::Data(at)) else {
            break; // ENXIO: no data after `at`
        };
        let end = rustix::fs::seek(file, SeekFrom::Hole(start)).unwrap_or(size);
        let mut chunk = start / CHUNK * CHUNK;
        while chunk < end.min(size) {
            if out.last() != Some(&chunk) {
                out.push(chunk);
            }
            chunk += CHUNK;
        }
        at = end.max(start + 1);
    }
    out
}

/// Every file under the chunk directory's two-character subdirectories.
fn walk_chunks(dir: &Path) -> Vec<PathBuf> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    read.flatten()
        .filter_map(|d| std::fs::read_dir(d.path()).ok())
        .flat_map(|r| r.flatten().map(|e| e.path()))
        .collect()
}

fn remove_temporaries(dir: &Path) {
    for item in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if item.file_name().to_string_lossy().starts_with(".tmp-") {
            let _ = std::fs::remove_file(item.path());
        }
    }
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn now() -> u64 {
    secs(SystemTime::now())
}
