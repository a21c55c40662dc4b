//! PEM parsing with `rustls-pki-types` (`PemObject`), bounded and with named inputs.

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// The largest PEM input accepted, in bytes (1 MiB). Checked before parsing.
pub const MAX_PEM_LEN: usize = 1024 * 1024;

fn bounded<'a>(input: &'static str, text: &'a str) -> Result<&'a [u8]> {
    if text.len() > MAX_PEM_LEN {
        return Err(Error::PemTooLarge {
            input,
            len: text.len(),
            max: MAX_PEM_LEN,
        });
    }
    Ok(text.as_bytes())
}

/// All `CERTIFICATE` sections in order; at least one.
pub(crate) fn certificates(
    input: &'static str,
    text: &str,
) -> Result<Vec<CertificateDer<'static>>> {
    let bytes = bounded(input, text)?;
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|source| Error::Pem { input, source })?;
    if certs.is_empty() {
        return Err(Error::PemMissing {
            input,
            expected: "certificate",
        });
    }
    for cert in &certs {
        x509_parser::parse_x509_certificate(cert)
            .map_err(|source| Error::Certificate { input, source })?;
    }
    Ok(certs)
}

/// Exactly one private key (PKCS#8, SEC1 or PKCS#1), wiped on drop.
pub(crate) fn private_key(
    input: &'static str,
    text: &str,
) -> Result<Zeroizing<PrivateKeyDer<'static>>> {
    let bytes = bounded(input, text)?;
    let mut keys = PrivateKeyDer::pem_slice_iter(bytes);
    let key = match keys.next() {
        None => {
            return Err(Error::PemMissing {
                input,
                expected: "private key",
            });
        }
        Some(key) => Zeroizing::new(key.map_err(|source| Error::Pem { input, source })?),
    };
    if let Some(other) = keys.next() {
        // Wipe the surplus key before reporting.
        drop(other.map(Zeroizing::new));
        return Err(Error::MultipleKeys { input });
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_key_names_the_input() {
        let err = private_key("ca key pem", "").unwrap_err().to_string();
        assert_eq!(err, "ca key pem: no private key found");
        let err = certificates("ca cert pem", "hello")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "ca cert pem: no certificate found");
    }

    #[test]
    fn oversized_input_is_rejected_before_parsing() {
        let big = "A".repeat(MAX_PEM_LEN + 1);
        let err = certificates("server cert pem", &big)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("server cert pem: 1048577 bytes"), "{err}");
    }

    #[test]
    fn malformed_base64_is_reported_without_the_body() {
        let text = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0!!!\n-----END PRIVATE KEY-----\n";
        let err = private_key("client key pem", text).unwrap_err();
        assert_eq!(err.to_string(), "client key pem: malformed pem");
        assert!(!format!("{err:?}").contains("c2VjcmV0"));
    }

    #[test]
    fn garbage_certificate_body_is_not_x509() {
        let text = "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
        let err = certificates("ca cert pem", text).unwrap_err().to_string();
        assert_eq!(err, "ca cert pem: invalid x.509 certificate");
    }
}
