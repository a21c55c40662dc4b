//! Finding the CPIO config device: block devices whose first bytes are a cpio magic.
//!
//! Devices are listed from `<root>/sys/class/block` and opened as `<root>/dev/<name>`. The disk
//! holding the root file system and its partitions are skipped (they start with a file system or
//! a partition table, and reading them is wasted I/O), and so are devices that cannot be opened or
//! read (an empty CD drive, a zero-sized loop device). Each candidate costs one 6-byte read.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::cpio;

/// A block device starting with a cpio magic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The kernel name (`vdb`, `sr0`).
    pub name: String,
    /// Its device node under the root.
    pub path: PathBuf,
    /// The archive format found.
    pub format: cpio::Format,
}

/// Why the scan failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScanError {
    /// Listing `/sys/class/block` failed (other than it being absent).
    #[error("listing block devices in {path}")]
    List {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Whether the file or device at `path` starts with a cpio magic, and in which format.
pub fn probe(path: &Path) -> std::io::Result<Option<cpio::Format>> {
    let mut f = std::fs::File::open(path)?;
    let mut head = [0u8; 6];
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(cpio::Format::detect(&head[..n]))
}

/// `major:minor` of a sysfs `dev` file.
fn sys_dev(dir: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(dir.join("dev")).ok()?;
    let (maj, min) = text.trim().split_once(':')?;
    Some((maj.parse().ok()?, min.parse().ok()?))
}

/// The kernel name of the disk holding `root`'s file system and of that disk's partitions.
fn root_disk_names(root: &Path, entries: &[(String, PathBuf)]) -> Vec<String> {
    let Ok(meta) = std::fs::metadata(root) else {
        return Vec::new();
    };
    let dev = meta.dev();
    let (maj, min) = (rustix::fs::major(dev).into(), rustix::fs::minor(dev).into());
    let Some((root_name, root_dir)) = entries
        .iter()
        .find(|(_, dir)| sys_dev(dir) == Some((maj, min)))
    else {
        return Vec::new();
    };
    // A partition's sysfs directory lives inside its disk's: /sys/block/vda/vda1.
    let disk = if root_dir.join("partition").exists() {
        std::fs::canonicalize(root_dir)
            .ok()
            .and_then(|p| {
                p.parent()
                    .and_then(|d| d.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| root_name.clone())
    } else {
        root_name.clone()
    };
    let mut names = vec![disk.clone(), root_name.clone()];
    for (name, dir) in entries {
        let in_disk = std::fs::canonicalize(dir)
            .ok()
            .and_then(|p| {
                p.parent()
                    .and_then(|d| d.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .is_some_and(|parent| parent == disk);
        if in_disk {
            names.push(name.clone());
        }
    }
    names
}

/// Scans the block devices under `root` for cpio archives at offset 0.
///
/// Returns every candidate; the caller decides that more than one is an error.
pub fn scan(root: &Path) -> Result<Vec<Candidate>, ScanError> {
    let sys_block = root.join("sys/class/block");
    let dir = match std::fs::read_dir(&sys_block) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ScanError::List {
                path: sys_block,
                source,
            });
        }
    };
    let mut entries: Vec<(String, PathBuf)> = dir
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        .collect();
    entries.sort();
    let skip = root_disk_names(root, &entries);
    let mut found = Vec::new();
    for (name, _) in &entries {
        if skip.contains(name) || name.starts_with("ram") || name.starts_with("zram") {
            continue;
        }
        let path = root.join("dev").join(name);
        match probe(&path) {
            Ok(Some(format)) => {
                tracing::debug!(device = %path.display(), ?format, "cpio config device candidate");
                found.push(Candidate {
                    name: name.clone(),
                    path,
                    format,
                });
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(device = %path.display(), error = %e, "block device not readable, skipped")
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn fake_dev(root: &Path, name: &str, dev: &str, content: &[u8]) {
        let sys = root.join("sys/class/block").join(name);
        std::fs::create_dir_all(&sys).unwrap();
        std::fs::write(sys.join("dev"), format!("{dev}\n")).unwrap();
        std::fs::create_dir_all(root.join("dev")).unwrap();
        std::fs::write(root.join("dev").join(name), content).unwrap();
    }

    #[test]
    fn finds_each_magic_and_skips_others() {
        let root = tempfile::tempdir().unwrap();
        fake_dev(root.path(), "vda", "254:0", b"\x53\xef ext4-ish");
        fake_dev(root.path(), "vdb", "254:16", b"070701000000");
        fake_dev(root.path(), "vdc", "254:32", b"070707000000");
        fake_dev(root.path(), "vdd", "254:48", &[0xC7, 0x71, 0, 0]);
        fake_dev(root.path(), "vde", "254:64", &[0x71, 0xC7, 0, 0]);
        fake_dev(root.path(), "loop0", "7:0", b"");
        fake_dev(root.path(), "ram0", "1:0", b"070701");
        // Listed in sysfs but no node: skipped, not an error.
        std::fs::create_dir_all(root.path().join("sys/class/block/sr0")).unwrap();
        let found = scan(root.path()).unwrap();
        let got: Vec<_> = found.iter().map(|c| (c.name.as_str(), c.format)).collect();
        assert_eq!(
            got,
            [
                ("vdb", cpio::Format::Newc),
                ("vdc", cpio::Format::Odc),
                ("vdd", cpio::Format::BinaryLe),
                ("vde", cpio::Format::BinaryBe),
            ]
        );
        assert_eq!(found[0].path, root.path().join("dev/vdb"));
    }

    #[test]
    fn no_sysfs_means_no_candidates() {
        let root = tempfile::tempdir().unwrap();
        assert!(scan(root.path()).unwrap().is_empty());
    }
}
