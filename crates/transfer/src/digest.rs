//! The resource digest and its canonical encoding.
//!
//! The digest in [`Eof`](crate::Eof) is BLAKE3 (32 bytes) over this byte string (integers
//! little-endian):
//!
//! ```text
//! "firebuild-transfer/2\n"
//! for each entry, in stream order:
//!     u8   kind            1 = file, 2 = dir, 3 = symlink
//!     u32  index
//!     u32  len(path)       followed by the path bytes (UTF-8, "/"-separated, "" for the root)
//!     u32  mode            permission bits (mode & 0o7777)
//!     u32  uid
//!     u32  gid
//!     u64  size
//!     i64  mtime seconds
//!     u32  mtime nanoseconds
//!     u32  len(link target) followed by the target bytes (empty unless symlink)
//!     [32] BLAKE3 of the file content (files only, also for empty files)
//! u64  number of entries
//! ```
//!
//! Each content byte is hashed once, with BLAKE3 (SIMD; several times faster than SHA-256 on CPUs
//! without SHA extensions). The plain content SHA-256 of each file is computed too only when asked
//! ([`ResourceDigest::set_plain_sha256`]): it costs a second pass over every byte.

use crate::frame::{EntryKind, Header};

/// SHA-256 behind one small interface: aws-lc when the `aws-lc` feature is on, `sha2` otherwise.
#[cfg(feature = "aws-lc")]
#[derive(Clone)]
struct Sha256(aws_lc_rs::digest::Context);

#[cfg(feature = "aws-lc")]
impl Sha256 {
    fn new() -> Self {
        Sha256(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256))
    }

    fn update(&mut self, data: impl AsRef<[u8]>) {
        self.0.update(data.as_ref());
    }

    fn finalize(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.finish().as_ref());
        out
    }
}

/// SHA-256 behind one small interface: aws-lc when the `aws-lc` feature is on, `sha2` otherwise.
#[cfg(not(feature = "aws-lc"))]
#[derive(Clone)]
struct Sha256(sha2::Sha256);

#[cfg(not(feature = "aws-lc"))]
impl Sha256 {
    fn new() -> Self {
        Sha256(<sha2::Sha256 as sha2::Digest>::new())
    }

    fn update(&mut self, data: impl AsRef<[u8]>) {
        sha2::Digest::update(&mut self.0, data.as_ref());
    }

    fn finalize(self) -> [u8; 32] {
        sha2::Digest::finalize(self.0).into()
    }
}

const DOMAIN: &[u8] = b"firebuild-transfer/2\n";

/// Incremental computation of the resource digest, shared by the encoder and the reassembler.
#[derive(Clone)]
pub struct ResourceDigest {
    outer: blake3::Hasher,
    content: blake3::Hasher,
    plain: Option<Sha256>,
    want_plain: bool,
    entries: u64,
    in_file: bool,
}

impl std::fmt::Debug for ResourceDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceDigest")
            .field("entries", &self.entries)
            .field("plain_sha256", &self.want_plain)
            .finish_non_exhaustive()
    }
}

impl Default for ResourceDigest {
    fn default() -> Self {
        Self::new()
    }
}

impl ResourceDigest {
    /// Starts a digest (BLAKE3 only; see [`set_plain_sha256`](Self::set_plain_sha256)).
    pub fn new() -> Self {
        let mut outer = blake3::Hasher::new();
        outer.update(DOMAIN);
        ResourceDigest {
            outer,
            content: blake3::Hasher::new(),
            plain: None,
            want_plain: false,
            entries: 0,
            in_file: false,
        }
    }

    /// Also computes the plain content SHA-256 of each file whose header comes after this call
    /// (returned by [`end_file`](Self::end_file)). Off by default. Does not change the digest.
    pub fn set_plain_sha256(&mut self, on: bool) {
        self.want_plain = on;
    }

    /// Adds an entry's metadata. For a file, follow with [`content`](Self::content) calls and
    /// [`end_file`](Self::end_file).
    pub fn header(&mut self, h: &Header) {
        let o = &mut self.outer;
        o.update(&[h.kind.code()]);
        o.update(&h.index.to_le_bytes());
        o.update(&len32(h.path.len()).to_le_bytes());
        o.update(h.path.as_bytes());
        o.update(&h.mode.to_le_bytes());
        o.update(&h.uid.to_le_bytes());
        o.update(&h.gid.to_le_bytes());
        o.update(&h.size.to_le_bytes());
        o.update(&h.mtime_secs.to_le_bytes());
        o.update(&h.mtime_nanos.to_le_bytes());
        o.update(&len32(h.link_target.len()).to_le_bytes());
        o.update(h.link_target.as_bytes());
        self.entries += 1;
        self.in_file = h.kind == EntryKind::File;
        self.content.reset();
        self.plain = (self.in_file && self.want_plain).then(Sha256::new);
    }

    /// Adds file content of the current file.
    pub fn content(&mut self, data: &[u8]) {
        self.content.update(data);
        if let Some(p) = &mut self.plain {
            p.update(data);
        }
    }

    /// Closes the current file; returns its plain content SHA-256 when
    /// [`set_plain_sha256`](Self::set_plain_sha256) was on at its header, else `None`.
    pub fn end_file(&mut self) -> Option<[u8; 32]> {
        let sum = self.content.finalize();
        self.outer.update(sum.as_bytes());
        self.content.reset();
        self.in_file = false;
        self.plain.take().map(Sha256::finalize)
    }

    /// Finishes the digest.
    pub fn finish(self) -> [u8; 32] {
        let mut o = self.outer;
        o.update(&self.entries.to_le_bytes());
        *o.finalize().as_bytes()
    }
}

fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// BLAKE3 of a byte slice (the hash the resource digest uses).
pub fn blake3(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

/// Plain SHA-256 of a byte slice, handy to compare with [`crate::Outcome::file_sha256`].
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(data);
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(index: u32, path: &str, size: u64) -> Header {
        Header {
            index,
            path: path.into(),
            kind: EntryKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size,
            mtime_secs: 1,
            mtime_nanos: 2,
            link_target: String::new(),
        }
    }

    #[test]
    fn sha256_known_answer() {
        assert_eq!(
            hex::encode(sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex::encode(sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn blake3_known_answer() {
        assert_eq!(
            hex::encode(blake3(b"")),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }

    #[test]
    fn content_split_does_not_matter_but_metadata_does() {
        let mut a = ResourceDigest::new();
        a.set_plain_sha256(true);
        a.header(&file(0, "", 6));
        a.content(b"abc");
        a.content(b"def");
        let sum_a = a.end_file();
        let mut b = ResourceDigest::new();
        b.header(&file(0, "", 6));
        b.content(b"abcdef");
        assert_eq!(b.end_file(), None, "plain SHA-256 is off by default");
        assert_eq!(sum_a, Some(sha256(b"abcdef")));
        assert_eq!(
            a.finish(),
            b.finish(),
            "plain SHA-256 does not change the digest"
        );

        let mut c = ResourceDigest::new();
        let mut h = file(0, "", 6);
        h.mode = 0o600;
        c.header(&h);
        c.content(b"abcdef");
        assert_eq!(c.end_file(), None);
        let mut d = ResourceDigest::new();
        d.header(&file(0, "", 6));
        d.content(b"abcdef");
        assert_eq!(d.end_file(), None);
        assert_ne!(c.finish(), d.finish());
    }
}
