//! [`SecretBytes`]: the value of a build secret (`RUN --mount=type=secret`), on the host and in
//! the guest.

use std::fmt;

use zeroize::Zeroizing;

/// The largest secret the server serves and the guest accepts (1 MiB, as buildkit).
pub const MAX_SECRET_BYTES: u64 = 1 << 20;

/// The bytes of a secret: zeroised on drop, never printed.
///
/// `Debug` shows only the length; there is no `Display` and no `Serialize`, so a secret cannot
/// end up in a log line, an event or an error message by accident. Read it with
/// [`SecretBytes::expose_secret`].
///
/// ```
/// use firebuild_bootstrap::SecretBytes;
///
/// let s = SecretBytes::new(b"hunter2".to_vec());
/// assert_eq!(format!("{s:?}"), "<redacted 7 bytes>");
/// assert_eq!(s.expose_secret(), b"hunter2");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Wraps `bytes` (moved, not copied).
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The secret's bytes.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes (not secret).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(bytes: Vec<u8>) -> Self {
        Self::new(bytes)
    }
}

impl From<Zeroizing<Vec<u8>>> for SecretBytes {
    fn from(bytes: Zeroizing<Vec<u8>>) -> Self {
        Self(bytes)
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted {} bytes>", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = SecretBytes::new(b"s3cr3t-value".to_vec());
        let dbg = format!("{s:?} {:?}", Some(&s));
        assert!(!dbg.contains("s3cr3t"), "{dbg}");
        assert_eq!(format!("{s:?}"), "<redacted 12 bytes>");
        assert_eq!(s.len(), 12);
    }
}
