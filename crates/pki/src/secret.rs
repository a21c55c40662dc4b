//! Key material that zeroizes on drop and never prints.

use std::fmt;

use zeroize::Zeroizing;

/// A PEM-encoded private key.
///
/// The buffer is wiped when the value is dropped, and `Debug` prints `SecretPem([redacted])`.
/// There is deliberately no `Display`: read the text with [`SecretPem::expose_secret`] where it
/// must leave the process (MMDS, a 0600 file, tonic's `Identity::from_pem`).
#[derive(Clone)]
pub struct SecretPem(Zeroizing<String>);

impl SecretPem {
    /// Wraps PEM text (the `String` moves in; no copy is left behind).
    pub fn new(pem: String) -> Self {
        Self(Zeroizing::new(pem))
    }

    /// The PEM text.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl From<String> for SecretPem {
    fn from(pem: String) -> Self {
        Self::new(pem)
    }
}

impl fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretPem([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_and_expose_returns_text() {
        let s = SecretPem::new("-----BEGIN PRIVATE KEY-----\nsecretbits\n".to_owned());
        let dbg = format!("{s:?}");
        assert_eq!(dbg, "SecretPem([redacted])");
        assert!(!dbg.contains("secretbits"));
        assert!(s.expose_secret().contains("secretbits"));
    }
}
