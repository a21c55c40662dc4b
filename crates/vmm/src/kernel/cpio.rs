//! A minimal writer (and reader) for the `newc` cpio format the kernel unpacks as an initramfs.
//!
//! The kernel unpacks archives concatenated one after the other (zero padding between them
//! allowed), a later entry replacing an earlier one of the same name: [`entries`] reads them
//! the same way.

use std::io::{self, Write};

/// Writes a `newc` archive entry by entry; [`CpioWriter::finish`] appends the trailer.
#[derive(Debug)]
pub struct CpioWriter<W: Write> {
    out: W,
    ino: u32,
    written: u64,
}

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

impl<W: Write> CpioWriter<W> {
    /// Starts an archive on `out`.
    pub fn new(out: W) -> Self {
        Self {
            out,
            ino: 1,
            written: 0,
        }
    }

    /// Adds a directory (owner root).
    pub fn dir(&mut self, name: &str, mode: u32) -> io::Result<()> {
        self.entry(name, S_IFDIR | (mode & 0o7777), 2, (0, 0), &[])
    }

    /// Adds a regular file (owner root).
    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, S_IFREG | (mode & 0o7777), 1, (0, 0), data)
    }

    /// Adds a symbolic link to `target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        self.entry(name, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// Adds a character device node.
    pub fn char_dev(&mut self, name: &str, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(name, S_IFCHR | (mode & 0o7777), 1, (major, minor), &[])
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cpio entry over 4 GiB"))?;
        let ino = self.ino;
        self.ino += 1;
        self.header(name, ino, mode, nlink, size, rdev)?;
        self.write(data)?;
        self.pad()
    }

    fn header(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        nlink: u32,
        size: u32,
        rdev: (u32, u32),
    ) -> io::Result<()> {
        let namesize = name.len() + 1;
        let header = format!(
            "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}{dmaj:08x}{dmin:08x}{rmaj:08x}{rmin:08x}{namesize:08x}{check:08x}",
            uid = 0,
            gid = 0,
            mtime = 0,
            dmaj = 0,
            dmin = 0,
            rmaj = rdev.0,
            rmin = rdev.1,
            check = 0,
        );
        self.write(header.as_bytes())?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad()
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.out.write_all(data)?;
        self.written += data.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.write(&[0u8; 3][..pad])
    }

    /// Writes the `TRAILER!!!` entry and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.header("TRAILER!!!", 0, 0, 1, 0, (0, 0))?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// One entry read back by [`entries`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpioEntry {
    /// The path inside the archive (no leading `/`).
    pub name: String,
    /// File type and permission bits (`st_mode`).
    pub mode: u32,
    /// Owner (uid, gid).
    pub owner: (u32, u32),
    /// The file's bytes (a symlink's target).
    pub data: Vec<u8>,
}

/// Reads every entry of one or more concatenated `newc` archives, in order (trailers dropped).
pub fn entries(mut data: &[u8]) -> io::Result<Vec<CpioEntry>> {
    fn bad(what: &str) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, format!("cpio: {what}"))
    }
    fn pad4(n: usize) -> usize {
        n.div_ceil(4) * 4
    }
    let mut out = Vec::new();
    loop {
        // Zero padding between archives (the kernel skips it four bytes at a time).
        while data.len() >= 4 && data[..4] == [0; 4] {
            data = &data[4..];
        }
        if data.iter().all(|&b| b == 0) {
            return Ok(out);
        }
        let header = data.get(..110).ok_or_else(|| bad("truncated header"))?;
        if !header.starts_with(b"070701") {
            return Err(bad("not a newc header"));
        }
        let field = |i: usize| -> io::Result<u32> {
            let hex = std::str::from_utf8(&header[6 + 8 * i..14 + 8 * i])
                .map_err(|_| bad("header field is not hex"))?;
            u32::from_str_radix(hex, 16).map_err(|_| bad("header field is not hex"))
        };
        let (mode, uid, gid) = (field(1)?, field(2)?, field(3)?);
        let size = usize::try_from(field(6)?).map_err(|_| bad("size"))?;
        let namesize = usize::try_from(field(11)?).map_err(|_| bad("name size"))?;
        let name_end = 110 + namesize;
        let name = data
            .get(110..name_end.saturating_sub(1))
            .ok_or_else(|| bad("truncated name"))?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| bad("name is not UTF-8"))?;
        let data_start = pad4(name_end);
        let body = data
            .get(data_start..data_start + size)
            .ok_or_else(|| bad("truncated data"))?;
        let next = pad4(data_start + size).min(data.len());
        if name != "TRAILER!!!" {
            out.push(CpioEntry {
                name,
                mode,
                owner: (uid, gid),
                data: body.to_vec(),
            });
        }
        data = &data[next..];
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn archive_lists_with_cpio() {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("bin", 0o755).unwrap();
        w.file("bin/hello", 0o755, b"#!/bin/sh\necho hi\n").unwrap();
        w.symlink("bin/sh", "busybox").unwrap();
        w.char_dev("console", 0o600, 5, 1).unwrap();
        let archive = w.finish().unwrap();
        assert_eq!(archive.len() % 4, 0);
        assert!(archive.starts_with(b"070701"));
        let Some(cpio) = crate::process::which("cpio") else {
            eprintln!("skipping the cpio round trip: cpio is not installed");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(cpio)
            .args(["-t", "-v", "--quiet"])
            .current_dir(dir.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&archive).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let listing = String::from_utf8(out.stdout).unwrap();
        assert!(listing.contains("bin/hello"), "{listing}");
        assert!(listing.contains("bin/sh -> busybox"), "{listing}");
        assert!(listing.starts_with("drwxr-xr-x"), "{listing}");
        assert!(listing.contains("crw-------"), "{listing}");
    }

    #[test]
    fn concatenated_archives_read_back_in_order() {
        let mut a = CpioWriter::new(Vec::new());
        a.dir("bin", 0o755).unwrap();
        a.file("init", 0o755, b"old").unwrap();
        let mut bytes = a.finish().unwrap();
        bytes.extend_from_slice(&[0; 8]);
        let mut b = CpioWriter::new(Vec::new());
        b.file("init", 0o700, b"new!!").unwrap();
        b.symlink("bin/sh", "busybox").unwrap();
        bytes.extend(b.finish().unwrap());
        let e = entries(&bytes).unwrap();
        let names: Vec<_> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["bin", "init", "init", "bin/sh"]);
        assert_eq!(e[1].data, b"old");
        assert_eq!(
            (e[2].mode, e[2].data.as_slice()),
            (0o100_700, &b"new!!"[..])
        );
        assert_eq!(e[3].data, b"busybox");
        assert!(entries(&bytes[..bytes.len() - 200]).is_err(), "truncated");
    }
}
