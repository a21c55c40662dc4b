//! Actions on the live root that need no tool in the image: grow the mounted ext4 to its
//! device (ext4's online resize ioctl, what `resize2fs` does for a mounted file system), and
//! swap files on and off (`swapon(2)`, `swapoff(2)`).

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `EXT4_IOC_RESIZE_FS`: `_IOW('f', 16, __u64)`, the new block count.
const EXT4_IOC_RESIZE_FS: libc::c_ulong = 0x4008_6610;

/// How a grow went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grown {
    /// The file system already fills its device.
    Unchanged,
    /// Grown from `from` to `to` blocks.
    Grew {
        /// Blocks before.
        from: u64,
        /// Blocks after.
        to: u64,
    },
}

/// Grows the ext4 mounted at `mount` to the size of its block device (`/sys/dev/block/M:m/size`).
pub fn grow_ext4(mount: &Path) -> Result<Grown, String> {
    let st = rustix::fs::stat(mount).map_err(|e| format!("stat {}: {e}", mount.display()))?;
    let (maj, min) = (rustix::fs::major(st.st_dev), rustix::fs::minor(st.st_dev));
    let sys = format!("/sys/dev/block/{maj}:{min}/size");
    let sectors: u64 = std::fs::read_to_string(&sys)
        .map_err(|e| format!("{sys}: {e}"))?
        .trim()
        .parse()
        .map_err(|e| format!("{sys}: {e}"))?;
    let vfs = rustix::fs::statvfs(mount).map_err(|e| format!("statvfs: {e}"))?;
    let block = vfs.f_frsize.max(1);
    let (from, to) = (vfs.f_blocks, sectors.saturating_mul(512) / block);
    if to <= from {
        return Ok(Grown::Unchanged);
    }
    let dir = std::fs::File::open(mount).map_err(|e| format!("open {}: {e}", mount.display()))?;
    resize_ioctl(&dir, to).map_err(|e| format!("EXT4_IOC_RESIZE_FS to {to} blocks: {e}"))?;
    Ok(Grown::Grew { from, to })
}

#[allow(unsafe_code)]
fn resize_ioctl(dir: &std::fs::File, blocks: u64) -> std::io::Result<()> {
    // SAFETY: the fd is open for the call and the argument is a valid pointer to a u64, which
    // the kernel only reads.
    let rc = unsafe { libc::ioctl(dir.as_raw_fd(), EXT4_IOC_RESIZE_FS, &blocks as *const u64) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `swapon(2)` on `path` (default priority). An area already on answers `EBUSY`, reported as
/// `Ok(false)`.
#[allow(unsafe_code)]
pub fn swapon(path: &Path) -> std::io::Result<bool> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: `c` is a NUL-terminated string alive across the call.
    if unsafe { libc::swapon(c.as_ptr(), 0) } == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EBUSY) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// `swapoff(2)` on every active area in `/proc/swaps`; the errors, one per area that stayed on.
#[allow(unsafe_code)]
pub fn swapoff_all() -> Vec<String> {
    let Ok(list) = std::fs::read_to_string("/proc/swaps") else {
        return Vec::new();
    };
    let mut errors = Vec::new();
    for path in active_swaps(&list) {
        let Ok(c) = CString::new(path.as_bytes()) else {
            continue;
        };
        // SAFETY: `c` is a NUL-terminated string alive across the call.
        if unsafe { libc::swapoff(c.as_ptr()) } != 0 {
            errors.push(format!("{path}: {}", std::io::Error::last_os_error()));
        }
    }
    errors
}

/// The areas of a `/proc/swaps` listing (octal escapes such as `\040` decoded).
fn active_swaps(list: &str) -> Vec<String> {
    list.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(unescape_octal)
        .collect()
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match oct.and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_swaps_lists_areas_with_escapes() {
        let list = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n\
                    /swapfile                               file\t\t8188\t\t0\t\t-2\n\
                    /my\\040swap                             file\t\t4092\t\t0\t\t-3\n";
        assert_eq!(active_swaps(list), ["/swapfile", "/my swap"]);
        assert_eq!(
            active_swaps("Filename Type Size Used Priority\n"),
            Vec::<String>::new()
        );
        assert_eq!(unescape_octal("a\\1b\\0401"), "a\\1b 1");
    }
}

/// `FIFREEZE`: `_IOWR('X', 119, int)`.
const FIFREEZE: libc::c_ulong = 0xC004_5877;
/// `FITHAW`: `_IOWR('X', 120, int)`.
const FITHAW: libc::c_ulong = 0xC004_5878;

/// The file system at a path frozen (`FIFREEZE`): writes to it wait, and its disk holds a clean,
/// consistent image (ext4 flushes its journal and clears `needs_recovery`) until
/// [`Frozen::thaw`] or drop.
#[derive(Debug)]
pub struct Frozen {
    dir: Option<std::fs::File>,
}

impl Frozen {
    /// Freezes the file system mounted at (or containing) `mount`.
    pub fn freeze(mount: &Path) -> std::io::Result<Frozen> {
        let dir = std::fs::File::open(mount)?;
        fs_ioctl(&dir, FIFREEZE)?;
        Ok(Frozen { dir: Some(dir) })
    }

    /// Thaws it now, reporting failure.
    pub fn thaw(mut self) -> std::io::Result<()> {
        match self.dir.take() {
            Some(dir) => fs_ioctl(&dir, FITHAW),
            None => Ok(()),
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take()
            && let Err(e) = fs_ioctl(&dir, FITHAW)
        {
            tracing::warn!("thawing the root file system: {e}");
        }
    }
}

#[allow(unsafe_code)]
fn fs_ioctl(dir: &std::fs::File, request: libc::c_ulong) -> std::io::Result<()> {
    let mut unused: libc::c_int = 0;
    // SAFETY: the fd is open for the call; FIFREEZE and FITHAW ignore their int argument, which
    // points to a live local.
    let rc = unsafe { libc::ioctl(dir.as_raw_fd(), request, &mut unused as *mut libc::c_int) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
