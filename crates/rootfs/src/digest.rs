//! `sha256:<hex>` digests: parsing, hashing and verification (aws-lc-rs).

use std::fmt;
use std::io::{self, Read, Write};
use std::path::Path;

use aws_lc_rs::digest;

use crate::error::{Error, Result};

/// A validated `sha256:<64 lowercase hex>` content digest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(String);

impl Digest {
    /// Parses and validates a digest string. Only sha256 is accepted.
    pub fn parse(s: &str) -> Result<Self> {
        let Some(hex) = s.strip_prefix("sha256:") else {
            return Err(Error::BadDigest(s.to_owned()));
        };
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(Error::BadDigest(s.to_owned()));
        }
        Ok(Self(s.to_owned()))
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(format!(
            "sha256:{}",
            hex::encode(digest::digest(&digest::SHA256, bytes).as_ref())
        ))
    }

    /// The hex part (file name in a blob store).
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// The full `sha256:<hex>` string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Checks `bytes` against this digest; `what` names the content in the error.
    pub fn verify(&self, bytes: &[u8], what: &str) -> Result<()> {
        let actual = Self::of(bytes);
        self.check(&actual, what)
    }

    /// Compares a computed digest with this (expected) one.
    pub fn check(&self, actual: &Digest, what: &str) -> Result<()> {
        if actual == self {
            Ok(())
        } else {
            Err(Error::DigestMismatch {
                what: what.to_owned(),
                expected: self.0.clone(),
                actual: actual.0.clone(),
            })
        }
    }

    /// Hashes a whole file and checks it against this digest.
    pub fn verify_file(&self, path: &Path, what: &str) -> Result<()> {
        let mut f = std::fs::File::open(path).map_err(Error::io("open", path))?;
        let mut h = HashingWriter::new(io::sink());
        io::copy(&mut f, &mut h).map_err(Error::io("read", path))?;
        self.check(&h.finish().1, what)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A writer that hashes what passes through it.
pub struct HashingWriter<W> {
    inner: W,
    ctx: digest::Context,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            ctx: digest::Context::new(&digest::SHA256),
        }
    }

    /// Returns the inner writer and the digest of everything written.
    pub fn finish(self) -> (W, Digest) {
        let d = self.ctx.finish();
        (
            self.inner,
            Digest(format!("sha256:{}", hex::encode(d.as_ref()))),
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.ctx.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes what passes through it.
pub struct HashingReader<R> {
    inner: R,
    ctx: digest::Context,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            ctx: digest::Context::new(&digest::SHA256),
        }
    }

    /// Reads whatever is left (so the digest covers the whole stream) and returns it.
    pub fn finish(mut self) -> io::Result<Digest> {
        io::copy(&mut self, &mut io::sink())?;
        let d = self.ctx.finish();
        Ok(Digest(format!("sha256:{}", hex::encode(d.as_ref()))))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.ctx.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_rejects_bad_forms() {
        assert!(Digest::parse("sha512:00").is_err());
        assert!(Digest::parse("sha256:ABC").is_err());
        assert!(Digest::parse(&format!("sha256:{}", "0".repeat(63))).is_err());
        assert!(Digest::parse(&format!("sha256:{}", "a".repeat(64))).is_ok());
    }

    #[test]
    fn of_matches_known_vector() {
        assert_eq!(
            Digest::of(b"abc").as_str(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let err = Digest::of(b"abc").verify(b"abd", "blob").unwrap_err();
        assert!(
            err.to_string().contains("digest mismatch for blob"),
            "{err}"
        );
    }
}
