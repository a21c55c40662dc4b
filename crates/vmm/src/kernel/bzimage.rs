//! Extracting the ELF `vmlinux` Firecracker boots from a bzImage (`vmlinuz`).

use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// The ELF magic every `vmlinux` starts with.
pub const ELF_MAGIC: &[u8; 4] = b"\x7fELF";

/// Largest kernel image we decompress.
const MAX_VMLINUX: usize = 1 << 30;

/// The compression of a bzImage payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compression {
    /// gzip (`1f 8b`).
    Gzip,
    /// xz (`fd 37 7a 58 5a 00`).
    Xz,
    /// zstd (`28 b5 2f fd`).
    Zstd,
    /// LZ4 legacy frames (`02 21 4c 18`), what Debian's cloud kernel uses.
    Lz4,
    /// LZMA (`5d 00 00`).
    Lzma,
    /// bzip2 (`BZh`).
    Bzip2,
}

impl Compression {
    /// Identifies a payload by its magic bytes.
    pub fn detect(payload: &[u8]) -> Option<Self> {
        let starts = |m: &[u8]| payload.starts_with(m);
        if starts(b"\x1f\x8b") {
            Some(Self::Gzip)
        } else if starts(b"\xfd7zXZ\x00") {
            Some(Self::Xz)
        } else if starts(b"\x28\xb5\x2f\xfd") {
            Some(Self::Zstd)
        } else if starts(b"\x02\x21\x4c\x18") {
            Some(Self::Lz4)
        } else if starts(b"\x5d\x00\x00") {
            Some(Self::Lzma)
        } else if starts(b"BZh") {
            Some(Self::Bzip2)
        } else {
            None
        }
    }

    /// The decompressing tool and its arguments, for formats not decoded in process.
    fn tool(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Self::Gzip => ("gzip", &["-dc"]),
            Self::Xz => ("xz", &["-dc", "--single-stream"]),
            Self::Zstd => ("zstd", &["-dcq"]),
            Self::Lzma => ("xz", &["-dc", "--format=lzma"]),
            Self::Bzip2 => ("bzip2", &["-dc"]),
            Self::Lz4 => ("lz4", &["-dc"]),
        }
    }
}

/// Locates the compressed payload inside a bzImage using the setup header
/// (`setup_sects` at 0x1f1, `payload_offset`/`payload_length` at 0x248/0x24c).
pub fn payload(bzimage: &[u8]) -> Result<&[u8], String> {
    let header = bzimage
        .get(0x202..0x206)
        .ok_or("file too short for a setup header")?;
    if header != b"HdrS" {
        return Err("no `HdrS` setup header signature at 0x202".to_owned());
    }
    let u32_at = |off: usize| -> Result<usize, String> {
        let b = bzimage.get(off..off + 4).ok_or("truncated setup header")?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let setup_sects = match bzimage[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let pm_start = (setup_sects + 1) * 512;
    let offset = u32_at(0x248)?;
    let length = u32_at(0x24c)?;
    let start = pm_start + offset;
    bzimage
        .get(start..start + length)
        .ok_or_else(|| format!("payload {start}+{length} lies past the end of the file"))
}

/// Decompresses the bzImage at `bzimage` into an ELF `vmlinux` image.
///
/// LZ4 is decoded in process; gzip/xz/zstd/lzma/bzip2 go through the usual tools.
pub fn extract_vmlinux(bzimage: &Path) -> Result<Vec<u8>> {
    let bad = |reason: String| Error::BzImage {
        path: bzimage.to_path_buf(),
        reason,
    };
    let data = std::fs::read(bzimage).map_err(Error::io(bzimage))?;
    let payload = payload(&data).map_err(bad)?;
    let format = Compression::detect(payload).ok_or_else(|| {
        bad(format!(
            "unknown payload magic {:02x?}",
            &payload[..payload.len().min(6)]
        ))
    })?;
    tracing::debug!(?format, len = payload.len(), "bzImage payload");
    let vmlinux = match format {
        Compression::Lz4 => super::lz4::decompress_legacy(payload, MAX_VMLINUX)
            .map_err(|e| bad(format!("lz4 payload: {e}")))?,
        other => decompress_with_tool(other, payload, bzimage)?,
    };
    if !vmlinux.starts_with(ELF_MAGIC) {
        return Err(bad(format!(
            "decompressed {format:?} payload is not an ELF image (starts {:02x?})",
            &vmlinux[..vmlinux.len().min(4)]
        )));
    }
    Ok(vmlinux)
}

fn decompress_with_tool(format: Compression, payload: &[u8], path: &Path) -> Result<Vec<u8>> {
    use std::io::Write;
    let (program, args) = format.tool();
    let program_path = crate::process::require("extracting vmlinux", program)?;
    let mut cmd = Command::new(program_path);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        program: program.to_owned(),
        source,
    })?;
    // Feed stdin from a thread so a full stdout pipe cannot deadlock us.
    let input = payload.to_vec();
    let stdin = child.stdin.take();
    let feeder = std::thread::spawn(move || {
        if let Some(mut stdin) = stdin {
            // The tool may stop reading at the end of the stream (trailing size word): ignore EPIPE.
            let _ = stdin.write_all(&input);
        }
    });
    let out = child.wait_with_output().map_err(Error::io(path))?;
    let _ = feeder.join();
    // Trailing bytes after the stream make some tools complain ("trailing garbage") while the
    // output is complete: accept any output that is an ELF image.
    if out.stdout.starts_with(ELF_MAGIC) {
        return Ok(out.stdout);
    }
    Err(crate::process::tool_error(&cmd, &out))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn fake_bzimage(payload: &[u8]) -> Vec<u8> {
        let mut img = vec![0u8; 0x1000];
        img[0x1f1] = 1; // setup_sects: protected-mode code at 2*512
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        img[1024 + 16..1024 + 16 + payload.len()].copy_from_slice(payload);
        img
    }

    #[test]
    fn payload_is_found_from_the_setup_header() {
        let img = fake_bzimage(b"\x02\x21\x4c\x18rest");
        let p = payload(&img).unwrap();
        assert_eq!(p, b"\x02\x21\x4c\x18rest");
        assert_eq!(Compression::detect(p), Some(Compression::Lz4));
    }

    #[test]
    fn lz4_payload_becomes_vmlinux() {
        let mut frame = super::super::lz4::LEGACY_MAGIC.to_le_bytes().to_vec();
        let block = b"\x80\x7fELFdata";
        frame.extend_from_slice(&(block.len() as u32).to_le_bytes());
        frame.extend_from_slice(block);
        frame.extend_from_slice(&8u32.to_le_bytes());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmlinuz");
        std::fs::write(&path, fake_bzimage(&frame)).unwrap();
        assert_eq!(extract_vmlinux(&path).unwrap(), b"\x7fELFdata");
    }

    #[test]
    fn not_a_bzimage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmlinuz");
        std::fs::write(&path, vec![0u8; 0x400]).unwrap();
        let err = extract_vmlinux(&path).unwrap_err().to_string();
        assert!(err.contains("HdrS"), "{err}");
    }
}
