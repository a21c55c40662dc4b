//! A bounded reader for the raw cpio archives of the illumos metadata agent's config device.
//!
//! The archive starts at offset 0 of a block device (or an image file). All four classic header
//! formats are accepted: `newc` (`070701`) and its `crc` variant (`070702`), portable ASCII `odc`
//! (`070707`), and the old binary format in both byte orders (magic `0o070707` as a 16-bit word:
//! bytes `C7 71` little-endian, `71 C7` big-endian). Reading stops at the `TRAILER!!!` entry.
//!
//! Every quantity that comes from the archive is bounded by [`Limits`] before it is used: the
//! number of entries, the length of a name, the size of one file, and the total bytes read. Only
//! regular files keep their data; directories, symlinks and device nodes are listed without
//! content (a symlink's target is never followed).

use std::io::Read;

/// The first bytes of a cpio archive in each supported format.
pub const MAGICS: [&[u8]; 5] = [
    b"070701",
    b"070702",
    b"070707",
    &[0xC7, 0x71],
    &[0x71, 0xC7],
];

/// The name of the entry that ends an archive.
pub const TRAILER: &str = "TRAILER!!!";

/// Header formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// SVR4 "new ASCII" (`070701`), also its CRC variant (`070702`): hex fields, 4-byte alignment.
    Newc,
    /// POSIX portable ASCII (`070707`): octal fields, no alignment.
    Odc,
    /// Old binary, little-endian words (first bytes `C7 71`): 2-byte alignment.
    BinaryLe,
    /// Old binary, big-endian words (first bytes `71 C7`): 2-byte alignment.
    BinaryBe,
}

impl Format {
    /// The format of an archive starting with `head` (at least 6 bytes for the ASCII formats).
    pub fn detect(head: &[u8]) -> Option<Self> {
        if head.starts_with(b"070701") || head.starts_with(b"070702") {
            Some(Self::Newc)
        } else if head.starts_with(b"070707") {
            Some(Self::Odc)
        } else if head.starts_with(&[0xC7, 0x71]) {
            Some(Self::BinaryLe)
        } else if head.starts_with(&[0x71, 0xC7]) {
            Some(Self::BinaryBe)
        } else {
            None
        }
    }
}

/// Bounds applied while reading an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most entries (the trailer included).
    pub max_entries: usize,
    /// Longest entry name in bytes (the trailing NUL included).
    pub max_name: usize,
    /// Largest regular file.
    pub max_file_size: u64,
    /// Most bytes read from the archive in total (headers, names, data and padding).
    pub max_total: u64,
}

impl Default for Limits {
    /// 256 entries, 1 KiB names, 1 MiB per file, 8 MiB in total: a config device carries a few
    /// small files.
    fn default() -> Self {
        Self {
            max_entries: 256,
            max_name: 1024,
            max_file_size: 1 << 20,
            max_total: 8 << 20,
        }
    }
}

/// What a cpio entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Kind {
    /// A regular file; its data is in [`Entry::data`].
    File,
    /// A directory.
    Dir,
    /// A symbolic link (its target is not kept).
    Symlink,
    /// Anything else (device, fifo, socket).
    Other,
}

/// One member of an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The name as stored, with a leading `./` or `/` removed.
    pub name: String,
    /// What it is.
    pub kind: Kind,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    /// Owner id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Content of a regular file; empty for the other kinds.
    pub data: Vec<u8>,
}

/// A parsed archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    /// The header format of the first entry.
    pub format: Format,
    /// The entries in archive order, without the trailer.
    pub entries: Vec<Entry>,
}

impl Archive {
    /// The regular file named `name` (exact match after `./` stripping), if any. With several
    /// entries of that name the last one wins, as when extracting.
    pub fn file(&self, name: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.kind == Kind::File && e.name == name)
    }
}

/// Why an archive was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CpioError {
    /// The first bytes are no known cpio magic.
    #[error("not a cpio archive (no known magic at offset 0)")]
    NotCpio,
    /// A header carries a different magic than the first one, or a bad number.
    #[error("bad cpio header at offset {offset}: {what}")]
    BadHeader {
        /// Byte offset of the header.
        offset: u64,
        /// What is wrong.
        what: &'static str,
    },
    /// The archive ends before the trailer.
    #[error("cpio archive truncated at offset {offset}")]
    Truncated {
        /// Bytes read when the data ran out.
        offset: u64,
    },
    /// A bound of [`Limits`] was exceeded.
    #[error("cpio archive exceeds the {what} limit of {limit} at offset {offset}")]
    Limit {
        /// Which limit.
        what: &'static str,
        /// Its value.
        limit: u64,
        /// Byte offset of the entry.
        offset: u64,
    },
    /// An entry name is not UTF-8 or is empty.
    #[error("bad cpio entry name at offset {offset}")]
    BadName {
        /// Byte offset of the entry header.
        offset: u64,
    },
    /// Reading failed.
    #[error("reading the cpio archive at offset {offset}")]
    Io {
        /// Bytes read before the failure.
        offset: u64,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

struct Reader<R> {
    inner: R,
    offset: u64,
    limits: Limits,
}

impl<R: Read> Reader<R> {
    fn exact(&mut self, buf: &mut [u8]) -> Result<(), CpioError> {
        let len = buf.len() as u64;
        if self.offset.saturating_add(len) > self.limits.max_total {
            return Err(CpioError::Limit {
                what: "total size",
                limit: self.limits.max_total,
                offset: self.offset,
            });
        }
        match self.inner.read_exact(buf) {
            Ok(()) => {
                self.offset += len;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(CpioError::Truncated {
                offset: self.offset,
            }),
            Err(source) => Err(CpioError::Io {
                offset: self.offset,
                source,
            }),
        }
    }

    fn vec(&mut self, len: u64) -> Result<Vec<u8>, CpioError> {
        // `len` was checked against max_file_size / max_name and max_total by the callers'
        // limits, so the allocation is bounded.
        if self.offset.saturating_add(len) > self.limits.max_total {
            return Err(CpioError::Limit {
                what: "total size",
                limit: self.limits.max_total,
                offset: self.offset,
            });
        }
        let mut buf = vec![0; usize::try_from(len).unwrap_or(usize::MAX)];
        self.exact(&mut buf)?;
        Ok(buf)
    }

    fn skip(&mut self, len: u64) -> Result<(), CpioError> {
        let mut left = len;
        let mut buf = [0u8; 4096];
        while left > 0 {
            let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
            self.exact(&mut buf[..n])?;
            left -= n as u64;
        }
        Ok(())
    }

    /// Skips to the next multiple of `align` (a power of two).
    fn align(&mut self, align: u64) -> Result<(), CpioError> {
        let pad = self.offset.wrapping_neg() & (align - 1);
        self.skip(pad)
    }
}

struct Header {
    mode: u32,
    uid: u32,
    gid: u32,
    namesize: u64,
    filesize: u64,
}

fn ascii_field(bytes: &[u8], radix: u32, offset: u64) -> Result<u64, CpioError> {
    let bad = CpioError::BadHeader {
        offset,
        what: "field is not a number",
    };
    let s = std::str::from_utf8(bytes).map_err(|_| CpioError::BadHeader {
        offset,
        what: "field is not ASCII",
    })?;
    if s.is_empty() || !s.bytes().all(|b| (b as char).is_digit(radix)) {
        return Err(bad);
    }
    u64::from_str_radix(s, radix).map_err(|_| bad)
}

fn to_u32(v: u64, offset: u64) -> Result<u32, CpioError> {
    u32::try_from(v).map_err(|_| CpioError::BadHeader {
        offset,
        what: "field out of range",
    })
}

fn read_header<R: Read>(
    r: &mut Reader<R>,
    format: Format,
    offset: u64,
) -> Result<Header, CpioError> {
    let wrong_magic = CpioError::BadHeader {
        offset,
        what: "magic differs from the archive's first entry",
    };
    match format {
        Format::Newc => {
            let mut h = [0u8; 110];
            r.exact(&mut h)?;
            if !(h.starts_with(b"070701") || h.starts_with(b"070702")) {
                return Err(wrong_magic);
            }
            // magic(6) ino mode uid gid nlink mtime filesize devmaj devmin rdevmaj rdevmin
            // namesize check: 13 fields of 8 hex digits.
            let f = |i: usize| ascii_field(&h[6 + 8 * i..14 + 8 * i], 16, offset);
            Ok(Header {
                mode: to_u32(f(1)?, offset)?,
                uid: to_u32(f(2)?, offset)?,
                gid: to_u32(f(3)?, offset)?,
                filesize: f(6)?,
                namesize: f(11)?,
            })
        }
        Format::Odc => {
            let mut h = [0u8; 76];
            r.exact(&mut h)?;
            if !h.starts_with(b"070707") {
                return Err(wrong_magic);
            }
            // magic(6) dev(6) ino(6) mode(6) uid(6) gid(6) nlink(6) rdev(6) mtime(11)
            // namesize(6) filesize(11), octal.
            let f = |a: usize, b: usize| ascii_field(&h[a..b], 8, offset);
            Ok(Header {
                mode: to_u32(f(18, 24)?, offset)?,
                uid: to_u32(f(24, 30)?, offset)?,
                gid: to_u32(f(30, 36)?, offset)?,
                namesize: f(59, 65)?,
                filesize: f(65, 76)?,
            })
        }
        Format::BinaryLe | Format::BinaryBe => {
            let mut h = [0u8; 26];
            r.exact(&mut h)?;
            let w = |i: usize| {
                let b = [h[2 * i], h[2 * i + 1]];
                u64::from(if format == Format::BinaryLe {
                    u16::from_le_bytes(b)
                } else {
                    u16::from_be_bytes(b)
                })
            };
            if w(0) != 0o070707 {
                return Err(wrong_magic);
            }
            // magic dev ino mode uid gid nlink rdev mtime[2] namesize filesize[2]; 32-bit
            // values are stored most significant word first.
            Ok(Header {
                mode: to_u32(w(3), offset)?,
                uid: to_u32(w(4), offset)?,
                gid: to_u32(w(5), offset)?,
                namesize: w(10),
                filesize: (w(11) << 16) | w(12),
            })
        }
    }
}

/// Reads an archive from `input` (positioned at its first byte) within `limits`.
///
/// ```
/// use firebuild_guest::source::cpio::{self, Limits};
/// // `printf hello > nodename; echo nodename | cpio -o -H newc`
/// let mut a = Vec::new();
/// for (name, data) in [("nodename", &b"hello"[..]), ("TRAILER!!!", &b""[..])] {
///     let namesize = name.len() + 1;
///     a.extend(format!("070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
///         1, 0o100644, 0, 0, 1, 0, data.len(), 0, 0, 0, 0, namesize, 0).bytes());
///     a.extend(name.bytes());
///     a.push(0);
///     while a.len() % 4 != 0 { a.push(0) }
///     a.extend(data);
///     while a.len() % 4 != 0 { a.push(0) }
/// }
/// let archive = cpio::read(&a[..], Limits::default())?;
/// assert_eq!(archive.file("nodename").unwrap().data, b"hello");
/// # Ok::<(), cpio::CpioError>(())
/// ```
pub fn read<R: Read>(input: R, limits: Limits) -> Result<Archive, CpioError> {
    let mut r = Reader {
        inner: input,
        offset: 0,
        limits,
    };
    let mut head = [0u8; 2];
    r.exact(&mut head)?;
    let format = match head {
        [0xC7, 0x71] => Format::BinaryLe,
        [0x71, 0xC7] => Format::BinaryBe,
        _ => {
            let mut rest = [0u8; 4];
            r.exact(&mut rest).map_err(|e| match e {
                CpioError::Truncated { .. } => CpioError::NotCpio,
                e => e,
            })?;
            let magic = [head[0], head[1], rest[0], rest[1], rest[2], rest[3]];
            Format::detect(&magic).ok_or(CpioError::NotCpio)?
        }
    };
    read_rest(r, format)
}

fn read_rest<R: Read>(r: Reader<R>, format: Format) -> Result<Archive, CpioError> {
    // The first header's magic was consumed by detection: give it back in front of the input.
    let magic_len: u64 = match format {
        Format::BinaryLe | Format::BinaryBe => 2,
        Format::Newc | Format::Odc => 6,
    };
    let magic: Vec<u8> = match format {
        Format::BinaryLe => vec![0xC7, 0x71],
        Format::BinaryBe => vec![0x71, 0xC7],
        Format::Odc => b"070707".to_vec(),
        // 070701 and 070702 parse the same way.
        Format::Newc => b"070701".to_vec(),
    };
    let limits = r.limits;
    let mut r = Reader {
        inner: std::io::Cursor::new(magic).chain(r.inner),
        offset: r.offset - magic_len,
        limits,
    };
    let (align_name, align_data) = match format {
        Format::Newc => (4, 4),
        Format::Odc => (1, 1),
        Format::BinaryLe | Format::BinaryBe => (2, 2),
    };
    let mut entries = Vec::new();
    loop {
        let offset = r.offset;
        if entries.len() >= limits.max_entries {
            return Err(CpioError::Limit {
                what: "entry count",
                limit: limits.max_entries as u64,
                offset,
            });
        }
        let h = read_header(&mut r, format, offset)?;
        if h.namesize == 0 || h.namesize > limits.max_name as u64 {
            return Err(if h.namesize == 0 {
                CpioError::BadName { offset }
            } else {
                CpioError::Limit {
                    what: "name length",
                    limit: limits.max_name as u64,
                    offset,
                }
            });
        }
        let mut name = r.vec(h.namesize)?;
        if name.pop() != Some(0) || name.contains(&0) {
            return Err(CpioError::BadName { offset });
        }
        let name = String::from_utf8(name).map_err(|_| CpioError::BadName { offset })?;
        r.align(align_name)?;
        if name == TRAILER {
            return Ok(Archive { format, entries });
        }
        let kind = match h.mode & 0o170000 {
            0o100000 => Kind::File,
            0o040000 => Kind::Dir,
            0o120000 => Kind::Symlink,
            _ => Kind::Other,
        };
        let data = if kind == Kind::File {
            if h.filesize > limits.max_file_size {
                return Err(CpioError::Limit {
                    what: "file size",
                    limit: limits.max_file_size,
                    offset,
                });
            }
            r.vec(h.filesize)?
        } else {
            r.skip(h.filesize)?;
            Vec::new()
        };
        r.align(align_data)?;
        let name = name
            .trim_start_matches("./")
            .trim_start_matches('/')
            .to_owned();
        entries.push(Entry {
            name,
            kind,
            mode: h.mode & 0o7777,
            uid: h.uid,
            gid: h.gid,
            data,
        });
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// A test-side encoder: (name, mode, data) entries in `format`, with the trailer.
    pub(crate) fn encode(format: Format, entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
        let mut a = Vec::new();
        let trailer = [(TRAILER, 0, &b""[..])];
        for (i, (name, mode, data)) in entries.iter().chain(&trailer).enumerate() {
            let namesize = name.len() + 1;
            match format {
                Format::Newc => {
                    a.extend(
                        format!(
                            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
                            i, mode, 0, 0, 1, 0, data.len(), 0, 0, 0, 0, namesize, 0
                        )
                        .bytes(),
                    );
                    a.extend(name.bytes());
                    a.push(0);
                    while a.len() % 4 != 0 {
                        a.push(0);
                    }
                    a.extend(*data);
                    while a.len() % 4 != 0 {
                        a.push(0);
                    }
                }
                Format::Odc => {
                    a.extend(
                        format!(
                            "070707{:06o}{:06o}{:06o}{:06o}{:06o}{:06o}{:06o}{:011o}{:06o}{:011o}",
                            0,
                            i,
                            mode,
                            0,
                            0,
                            1,
                            0,
                            0,
                            namesize,
                            data.len()
                        )
                        .bytes(),
                    );
                    a.extend(name.bytes());
                    a.push(0);
                    a.extend(*data);
                }
                Format::BinaryLe | Format::BinaryBe => {
                    let size = data.len() as u32;
                    let words: [u16; 13] = [
                        0o070707,
                        0,
                        i as u16,
                        *mode as u16,
                        0,
                        0,
                        1,
                        0,
                        0,
                        0,
                        namesize as u16,
                        (size >> 16) as u16,
                        size as u16,
                    ];
                    for w in words {
                        a.extend(if format == Format::BinaryLe {
                            w.to_le_bytes()
                        } else {
                            w.to_be_bytes()
                        });
                    }
                    a.extend(name.bytes());
                    a.push(0);
                    if a.len() % 2 != 0 {
                        a.push(0);
                    }
                    a.extend(*data);
                    if a.len() % 2 != 0 {
                        a.push(0);
                    }
                }
            }
        }
        a
    }

    const ALL: [Format; 4] = [
        Format::Newc,
        Format::Odc,
        Format::BinaryLe,
        Format::BinaryBe,
    ];

    #[test]
    fn every_format_round_trips_files_dirs_and_symlinks() {
        let big = vec![b'x'; 70_001];
        for format in ALL {
            let a = encode(
                format,
                &[
                    ("./etc", 0o040755, b""),
                    ("./nodename", 0o100644, b"web-1\n"),
                    ("link", 0o120777, b"/etc/shadow"),
                    ("odd", 0o100600, b"abc"),
                    ("big", 0o100644, &big),
                ],
            );
            let archive = read(&a[..], Limits::default()).unwrap();
            assert_eq!(archive.format, format);
            let names: Vec<_> = archive.entries.iter().map(|e| e.name.as_str()).collect();
            assert_eq!(
                names,
                ["etc", "nodename", "link", "odd", "big"],
                "{format:?}"
            );
            assert_eq!(archive.file("nodename").unwrap().data, b"web-1\n");
            assert_eq!(archive.file("odd").unwrap().mode, 0o600);
            assert_eq!(archive.file("big").unwrap().data.len(), 70_001);
            // A symlink keeps no data and is not a file.
            assert_eq!(archive.entries[2].kind, Kind::Symlink);
            assert!(archive.entries[2].data.is_empty());
            assert!(archive.file("link").is_none());
            assert_eq!(archive.entries[0].kind, Kind::Dir);
        }
    }

    #[test]
    fn gnu_cpio_archives_parse() {
        let Some(cpio) = crate::source::tests_support::tool("cpio") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nodename"), "gnu\n").unwrap();
        std::fs::write(dir.path().join("authorized_keys"), "ssh-ed25519 AAAA k\n").unwrap();
        for (h, want) in [
            ("newc", Format::Newc),
            ("odc", Format::Odc),
            ("crc", Format::Newc),
            ("bin", Format::BinaryLe),
        ] {
            let out = std::process::Command::new(&cpio)
                .args(["-o", "--quiet", "-H", h])
                .current_dir(dir.path())
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .and_then(|mut c| {
                    use std::io::Write as _;
                    c.stdin
                        .take()
                        .unwrap()
                        .write_all(b"nodename\nauthorized_keys\n")?;
                    c.wait_with_output()
                })
                .unwrap();
            assert!(out.status.success(), "cpio -H {h}");
            let archive = read(&out.stdout[..], Limits::default()).unwrap();
            assert_eq!(archive.format, want, "-H {h}");
            assert_eq!(archive.file("nodename").unwrap().data, b"gnu\n", "-H {h}");
            assert_eq!(
                archive.file("authorized_keys").unwrap().data,
                b"ssh-ed25519 AAAA k\n"
            );
        }
    }

    #[test]
    fn limits_are_enforced_before_allocating() {
        let a = encode(
            Format::Newc,
            &[("a", 0o100644, &[1; 100]), ("b", 0o100644, b"")],
        );
        let lim = |f: fn(&mut Limits)| {
            let mut l = Limits::default();
            f(&mut l);
            read(&a[..], l).unwrap_err().to_string()
        };
        assert!(lim(|l| l.max_file_size = 99).contains("file size limit of 99"));
        assert!(lim(|l| l.max_entries = 2).contains("entry count limit of 2"));
        assert!(lim(|l| l.max_name = 1).contains("name length limit of 1"));
        assert!(lim(|l| l.max_total = 200).contains("total size limit of 200"));
        // A header claiming a 4 GiB file is refused without reading or allocating it.
        let mut huge = encode(Format::Newc, &[("a", 0o100644, b"")]);
        huge[54..62].copy_from_slice(b"ffffffff");
        let err = read(&huge[..], Limits::default()).unwrap_err();
        assert!(
            matches!(
                err,
                CpioError::Limit {
                    what: "file size",
                    offset: 0,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn broken_archives_are_errors() {
        assert!(matches!(
            read(&b"hello world"[..], Limits::default()),
            Err(CpioError::NotCpio)
        ));
        assert!(matches!(
            read(&b"0707"[..], Limits::default()),
            Err(CpioError::NotCpio)
        ));
        let a = encode(Format::Odc, &[("nodename", 0o100644, b"x")]);
        // No trailer.
        let err = read(&a[..a.len() - 90], Limits::default()).unwrap_err();
        assert!(matches!(err, CpioError::Truncated { .. }), "{err}");
        // A second header in another format.
        let mut mixed = encode(Format::Newc, &[("a", 0o100644, b"")]);
        let second = mixed.len() - 124;
        mixed[second..second + 6].copy_from_slice(b"070707");
        let err = read(&mixed[..], Limits::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "bad cpio header at offset {second}: magic differs from the archive's first entry"
            )
        );
        // Not a number.
        let mut bad = encode(Format::Newc, &[("a", 0o100644, b"")]);
        bad[16] = b'z'; // inside the mode field
        assert!(matches!(
            read(&bad[..], Limits::default()),
            Err(CpioError::BadHeader { offset: 0, .. })
        ));
        // A name without its NUL.
        let mut nonul = encode(Format::Odc, &[("ab", 0o100644, b"")]);
        nonul[78] = b'c';
        assert!(matches!(
            read(&nonul[..], Limits::default()),
            Err(CpioError::BadName { offset: 0 })
        ));
    }
}
