//! `RUN --mount=type=cache` directories, kept on the host between builds.
//!
//! Each cache id is a sparse ext4 image `<dir>/<serial>.ext4` (serial: [`DiskRole::serial`])
//! with a `<serial>.json` record (id, size, last use), attached read-write to the build VM
//! that mounts it; the guest keeps the cache's files in the image's `data` directory. An
//! image is bounded by its size ([`DEFAULT_CACHE_MIB`], sparse: only what is written takes
//! disk space).
//!
//! A VM needs the image to itself (ext4 is not a cluster file system), so a build holds an
//! exclusive lock on it while it runs. `sharing=locked` waits for the lock, as buildkit
//! waits; `shared` and `private`, when another build holds it, get an empty throwaway cache
//! for this build (buildkit's `private` rule; for `shared` a weaker guarantee than buildkit's
//! concurrent use, said in a warning). `--no-cache` starts every cache mount empty, as
//! BuildKit does.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use firebuild_plan::{DiskRole, Sharing};
use firebuild_rootfs::ext4::{Ext4Options, make_ext4};
use rustix::fs::{FlockOperation, flock};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Size of a cache mount's image, MiB (sparse).
pub const DEFAULT_CACHE_MIB: u64 = 8192;

/// What is recorded beside a cache image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheEntry {
    /// The cache id (`id=`, or the target).
    pub id: String,
    /// The image's file name in the cache directory.
    pub file: String,
    /// Bytes the image takes on disk.
    #[serde(default)]
    pub disk_bytes: u64,
    /// Last use, seconds since the epoch.
    pub last_used: u64,
}

/// A cache image attached to one build; the lock is released on drop (a throwaway image is
/// removed with the build's work directory).
#[derive(Debug)]
pub struct Attached {
    /// The image to attach.
    pub path: PathBuf,
    /// Held for the build.
    _lock: Option<File>,
}

/// The cache mounts' directory under `cache_dir`.
pub fn dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("run-mounts")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An empty cache image at `path`.
fn create(path: &Path, mib: u64) -> Result<()> {
    let empty =
        tempfile::tempdir().map_err(Error::io("create a temporary directory in", "/tmp"))?;
    let opts = Ext4Options {
        size: Some(mib * 1024 * 1024),
        ..Default::default()
    };
    make_ext4(empty.path(), path, &Default::default(), &opts).map_err(Error::image(path))?;
    Ok(())
}

/// The image for cache `id`: the persistent one (created on first use), or an empty one in
/// `work` when `fresh` (`--no-cache`) or when another build holds it and `sharing` allows
/// that. Returns the image and, for a throwaway, why.
pub async fn attach(
    cache_dir: &Path,
    id: &str,
    sharing: Sharing,
    fresh: bool,
    work: &Path,
) -> Result<(Attached, Option<String>)> {
    let serial = DiskRole::Cache(id.to_owned()).serial();
    let throwaway = |why: Option<String>| -> Result<(Attached, Option<String>)> {
        let path = work.join(format!("{serial}.ext4"));
        create(&path, DEFAULT_CACHE_MIB)?;
        Ok((Attached { path, _lock: None }, why))
    };
    if fresh {
        return throwaway(None);
    }
    let dir = dir(cache_dir);
    std::fs::create_dir_all(&dir).map_err(Error::io("create", &dir))?;
    let path = dir.join(format!("{serial}.ext4"));
    let lock_path = dir.join(format!("{serial}.lock"));
    let lock = File::create(&lock_path).map_err(Error::io("create", &lock_path))?;
    match flock(&lock, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) if sharing == Sharing::Locked => {
            let lock_path2 = lock_path.clone();
            let lock = tokio::task::spawn_blocking(move || {
                flock(&lock, FlockOperation::LockExclusive).map(|()| lock)
            })
            .await?
            .map_err(|e| Error::io("lock", &lock_path2)(e.into()))?;
            return finish_attach(path, lock, id);
        }
        Err(rustix::io::Errno::WOULDBLOCK) => {
            return throwaway(Some(format!(
                "cache mount {id:?} is in use by another build: this build gets an empty one"
            )));
        }
        Err(e) => return Err(Error::io("lock", &lock_path)(e.into())),
    }
    finish_attach(path, lock, id)
}

fn finish_attach(path: PathBuf, lock: File, id: &str) -> Result<(Attached, Option<String>)> {
    if !path.is_file() {
        let tmp = path.with_extension("ext4.tmp");
        create(&tmp, DEFAULT_CACHE_MIB)?;
        std::fs::rename(&tmp, &path).map_err(Error::io("move into place", &path))?;
    }
    record(&path, id)?;
    Ok((
        Attached {
            path,
            _lock: Some(lock),
        },
        None,
    ))
}

/// Writes the `.json` record beside `image`.
fn record(image: &Path, id: &str) -> Result<()> {
    let entry = CacheEntry {
        id: id.to_owned(),
        file: image
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        disk_bytes: 0,
        last_used: now(),
    };
    let json = image.with_extension("json");
    let bytes = serde_json::to_vec_pretty(&entry).map_err(|e| Error::Invalid {
        what: "cache record",
        reason: e.to_string(),
    })?;
    std::fs::write(&json, bytes).map_err(Error::io("write", &json))
}

/// The cache mounts kept under `cache_dir`, most recently used first.
pub fn list(cache_dir: &Path) -> Result<Vec<CacheEntry>> {
    let dir = dir(cache_dir);
    let read = match std::fs::read_dir(&dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("read", &dir)(e)),
    };
    let mut out = Vec::new();
    for entry in read.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let bytes = crate::options::read_bounded(&path, 64 * 1024, "cache record")?;
        let Ok(mut e) = serde_json::from_slice::<CacheEntry>(&bytes) else {
            continue;
        };
        e.disk_bytes = disk_bytes(&dir.join(&e.file));
        out.push(e);
    }
    out.sort_by(|a, b| b.last_used.cmp(&a.last_used).then(a.id.cmp(&b.id)));
    Ok(out)
}

/// Bytes a sparse file takes on disk.
fn disk_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

/// Removes the cache mounts `keep` rejects (skipping those a running build holds); returns
/// the removed entries.
pub fn prune(cache_dir: &Path, keep: impl Fn(&CacheEntry) -> bool) -> Result<Vec<CacheEntry>> {
    let dir = dir(cache_dir);
    let mut removed = Vec::new();
    for e in list(cache_dir)? {
        if keep(&e) {
            continue;
        }
        let image = dir.join(&e.file);
        let lock_path = image.with_extension("lock");
        let Ok(lock) = File::create(&lock_path) else {
            continue;
        };
        if flock(&lock, FlockOperation::NonBlockingLockExclusive).is_err() {
            continue;
        }
        for p in [image.clone(), image.with_extension("json"), lock_path] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(Error::io("remove", &p)(err)),
            }
        }
        removed.push(e);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn attach_creates_locks_lists_and_prunes() {
        let cache = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let rt = rt();
        let (a, why) = rt
            .block_on(attach(
                cache.path(),
                "apt",
                Sharing::Shared,
                false,
                work.path(),
            ))
            .unwrap();
        assert!(why.is_none());
        assert!(a.path.starts_with(dir(cache.path())), "{:?}", a.path);
        // Held: a second build gets a throwaway and is told why; a prune skips it.
        let (b, why) = rt
            .block_on(attach(
                cache.path(),
                "apt",
                Sharing::Private,
                false,
                work.path(),
            ))
            .unwrap();
        assert!(b.path.starts_with(work.path()));
        assert!(why.unwrap().contains("\"apt\""));
        assert!(prune(cache.path(), |_| false).unwrap().is_empty());
        let listed = list(cache.path()).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, "apt");
        // Sparse: inode tables and the journal only (about 68 MiB for 8 GiB).
        assert!(listed[0].disk_bytes < 128 << 20, "{listed:?}");
        drop(a);
        let removed = prune(cache.path(), |_| false).unwrap();
        assert_eq!(removed.len(), 1);
        assert!(list(cache.path()).unwrap().is_empty());
        // --no-cache: a fresh one in the work directory.
        let (c, _) = rt
            .block_on(attach(
                cache.path(),
                "apt",
                Sharing::Shared,
                true,
                work.path(),
            ))
            .unwrap();
        assert!(c.path.starts_with(work.path()));
    }
}
