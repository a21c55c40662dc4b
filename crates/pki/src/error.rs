//! The crate's error type.

use std::fmt;

use crate::BuildId;

/// Everything that can go wrong while issuing, loading or configuring.
///
/// `input` fields name which caller-supplied value was at fault (for example `"ca key pem"`), so a
/// message such as `ca key pem: no private key found` points at the right file. No variant ever
/// carries key material.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A PEM input was larger than [`MAX_PEM_LEN`](crate::MAX_PEM_LEN).
    #[error("{input}: {len} bytes is larger than the {max} byte limit")]
    PemTooLarge {
        /// Which input.
        input: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A PEM input held no section of the expected kind.
    #[error("{input}: no {expected} found")]
    PemMissing {
        /// Which input.
        input: &'static str,
        /// What was looked for (`"certificate"`, `"private key"`).
        expected: &'static str,
    },
    /// A PEM input was malformed.
    #[error("{input}: malformed pem")]
    Pem {
        /// Which input.
        input: &'static str,
        /// The PEM decoder's error.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// A key PEM held more than one private key, so which one to use is ambiguous.
    #[error("{input}: more than one private key found")]
    MultipleKeys {
        /// Which input.
        input: &'static str,
    },
    /// A certificate did not parse as X.509.
    #[error("{input}: invalid x.509 certificate")]
    Certificate {
        /// Which input.
        input: &'static str,
        /// The parser's error.
        #[source]
        source: x509_parser::nom::Err<x509_parser::error::X509Error>,
    },
    /// A certificate parsed as X.509 but rustls/webpki cannot use it.
    #[error("{input}: certificate not usable for tls")]
    CertificateRejected {
        /// Which input.
        input: &'static str,
        /// rustls' error.
        #[source]
        source: rustls::Error,
    },
    /// A private key was not usable (unsupported algorithm or malformed).
    #[error("{input}: unsupported or malformed private key")]
    Key {
        /// Which input.
        input: &'static str,
        /// rcgen's or rustls' error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A private key does not belong to the certificate it was given with.
    #[error("{input}: private key does not match the certificate")]
    KeyMismatch {
        /// Which input.
        input: &'static str,
    },
    /// A CA certificate could not be used as a trust anchor.
    #[error("{input}: certificate is not usable as a trust anchor")]
    TrustAnchor {
        /// Which input.
        input: &'static str,
        /// rustls' error.
        #[source]
        source: rustls::Error,
    },
    /// A certificate given as a CA is not marked as one (basicConstraints cA).
    #[error("{input}: certificate is not a ca (basicConstraints cA is not set)")]
    NotCa {
        /// Which input.
        input: &'static str,
    },
    /// The issuing CA expires before the requested certificate would start.
    #[error("the issuing ca expires before the requested validity window starts")]
    CaExpired,
    /// A build id was empty, too long or contained characters outside `[A-Za-z0-9._-]`.
    #[error("invalid build id {id:?}: {reason}")]
    InvalidBuildId {
        /// The rejected id.
        id: String,
        /// Why.
        reason: &'static str,
    },
    /// A server name was neither an IP address nor a valid DNS name.
    #[error("invalid server name {name:?}")]
    InvalidServerName {
        /// The rejected name.
        name: String,
    },
    /// No server names were given for a server certificate.
    #[error("a server certificate needs at least one ip address or dns name")]
    NoServerNames,
    /// A validity window was empty or out of range.
    #[error("invalid validity window: {reason}")]
    InvalidValidity {
        /// Why.
        reason: &'static str,
    },
    /// rcgen failed to generate a key or sign a certificate.
    #[error("issuing the {what} certificate")]
    Issue {
        /// `"ca"`, `"server"` or `"client"`.
        what: &'static str,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
    /// rustls rejected the material while building a config.
    #[error("building the {side} tls config")]
    Tls {
        /// `"server"` or `"client"`.
        side: &'static str,
        /// rustls' error.
        #[source]
        source: rustls::Error,
    },
    /// rustls could not build the client certificate verifier.
    #[error("building the client certificate verifier")]
    Verifier {
        /// rustls' error.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The verification error a server built with
/// [`ClientPolicy::Build`](crate::ClientPolicy::Build) reports when a client certificate chains to
/// the CA but belongs to another build.
///
/// rustls surfaces it as `rustls::Error::InvalidCertificate(CertificateError::Other(..))`; downcast
/// the inner error to this type to inspect it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildIdMismatch {
    /// The build this server serves.
    pub expected: BuildId,
    /// The build id in the client certificate, if it carried exactly one valid one.
    pub found: Option<BuildId>,
}

impl fmt::Display for BuildIdMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.found {
            Some(found) => write!(
                f,
                "client certificate is for build {found}, this server serves build {}",
                self.expected
            ),
            None => write!(
                f,
                "client certificate carries no firebuild build id, this server serves build {}",
                self.expected
            ),
        }
    }
}

impl std::error::Error for BuildIdMismatch {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_id_mismatch_reads_well_with_and_without_an_id() {
        let expected = BuildId::new("b-1").unwrap();
        let found = Some(BuildId::new("b-2").unwrap());
        let with = BuildIdMismatch {
            expected: expected.clone(),
            found,
        };
        assert_eq!(
            with.to_string(),
            "client certificate is for build b-2, this server serves build b-1"
        );
        let without = BuildIdMismatch {
            expected,
            found: None,
        };
        assert_eq!(
            without.to_string(),
            "client certificate carries no firebuild build id, this server serves build b-1"
        );
    }
}
