//! The build id bound into client certificates, and reading it back.

use std::fmt;

use x509_parser::extensions::GeneralName;

use crate::error::{Error, Result};

/// The URI SAN prefix that carries the build id in a client certificate:
/// `urn:firebuild:build:<id>`.
pub const BUILD_ID_URI_PREFIX: &str = "urn:firebuild:build:";

/// The longest accepted build id, in bytes.
pub const MAX_BUILD_ID_LEN: usize = 64;

/// A validated build (or VM) id: 1 to [`MAX_BUILD_ID_LEN`] bytes of `[A-Za-z0-9._-]`.
///
/// The restriction keeps the id safe inside a URN, a certificate CN, a file name and a log line.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BuildId(String);

impl BuildId {
    /// Validates `id`.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        let reason = if id.is_empty() {
            Some("empty")
        } else if id.len() > MAX_BUILD_ID_LEN {
            Some("longer than 64 bytes")
        } else if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            Some("only ASCII letters, digits, '.', '_' and '-' are allowed")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(Error::InvalidBuildId { id, reason }),
            None => Ok(Self(id)),
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URI SAN that binds a client certificate to this build.
    pub fn uri(&self) -> String {
        format!("{BUILD_ID_URI_PREFIX}{}", self.0)
    }
}

impl fmt::Display for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for BuildId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

impl AsRef<str> for BuildId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for BuildId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for BuildId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// Reads the build id out of a client certificate (DER).
///
/// Returns `Some` only when the certificate parses and its subjectAltName holds exactly one
/// `urn:firebuild:build:<id>` URI whose id is valid; anything else (no SAN, no such URI, two of
/// them, an invalid id, a certificate that does not parse) is `None`.
///
/// This does **not** verify the certificate: call it only on a certificate the TLS layer has
/// already verified, e.g. tonic's `Request::peer_certs()` on a server built with
/// `ServerTlsConfig::client_ca_root`. Servers built with
/// [`ServerBundle::server_config`](crate::ServerBundle::server_config) and
/// [`ClientPolicy::Build`](crate::ClientPolicy::Build) do this check inside the handshake.
pub fn client_build_id(cert_der: &[u8]) -> Option<BuildId> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut ids = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => uri.strip_prefix(BUILD_ID_URI_PREFIX),
            _ => None,
        });
    let first = ids.next()?;
    if ids.next().is_some() {
        return None;
    }
    BuildId::new(first).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_typical_ids() {
        for id in [
            "b1",
            "build-2026.11.22_0001",
            "0123456789abcdef",
            &"a".repeat(64),
        ] {
            let b = BuildId::new(id).unwrap();
            assert_eq!(b.as_str(), id);
            assert_eq!(b.uri(), format!("urn:firebuild:build:{id}"));
        }
    }

    #[test]
    fn rejects_bad_ids_with_reason() {
        for (id, needle) in [
            ("", "empty"),
            (&"a".repeat(65) as &str, "longer"),
            ("a b", "only ASCII"),
            ("a/b", "only ASCII"),
            ("ü", "only ASCII"),
            ("a:b", "only ASCII"),
        ] {
            let err = BuildId::new(id).unwrap_err().to_string();
            assert!(err.starts_with("invalid build id"), "{err}");
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn client_build_id_of_garbage_is_none() {
        assert_eq!(client_build_id(b"not a certificate"), None);
        assert_eq!(client_build_id(&[]), None);
    }
}
