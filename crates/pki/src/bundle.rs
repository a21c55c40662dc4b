//! PEM bundles for each side of the connection.

use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;

use crate::error::{Error, Result};
use crate::{SecretPem, pem, tls};
use rustls::InconsistentKeys;

/// Parsed, checked material shared by both bundle kinds.
#[derive(Clone)]
struct Material {
    ca_cert_pem: String,
    cert_pem: String,
    key_pem: SecretPem,
    ca_certs: Vec<CertificateDer<'static>>,
    certified_key: Arc<CertifiedKey>,
}

impl Material {
    fn from_pem(
        names: [&'static str; 3],
        ca_cert_pem: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Self> {
        let [ca_input, cert_input, key_input] = names;
        let ca_certs = pem::certificates(ca_input, ca_cert_pem)?;
        let chain = pem::certificates(cert_input, cert_pem)?;
        let key = pem::private_key(key_input, key_pem)?;
        // Borrow the DER (no unwiped copy handed to rustls); aws-lc-rs holds the loaded key.
        let signing_key =
            rustls::crypto::aws_lc_rs::sign::any_supported_type(&key).map_err(|source| {
                Error::Key {
                    input: key_input,
                    source: Box::new(source),
                }
            })?;
        let certified_key = CertifiedKey::new(chain, signing_key);
        match certified_key.keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
            Err(rustls::Error::InconsistentKeys(_)) => {
                return Err(Error::KeyMismatch { input: key_input });
            }
            Err(source) => {
                return Err(Error::CertificateRejected {
                    input: cert_input,
                    source,
                });
            }
        }
        Ok(Self {
            ca_cert_pem: ca_cert_pem.to_owned(),
            cert_pem: cert_pem.to_owned(),
            key_pem: SecretPem::new(key_pem.to_owned()),
            ca_certs,
            certified_key: Arc::new(certified_key),
        })
    }
}

impl Material {
    fn debug(&self, name: &str, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(name)
            .field("ca_cert_pem", &self.ca_cert_pem)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &self.key_pem)
            .finish()
    }
}

macro_rules! accessors {
    () => {
        /// The CA certificate(s) the peer is verified against, PEM.
        pub fn ca_cert_pem(&self) -> &str {
            &self.0.ca_cert_pem
        }

        /// This side's certificate (chain), PEM.
        pub fn cert_pem(&self) -> &str {
            &self.0.cert_pem
        }

        /// This side's private key, PEM (zeroized on drop, redacted in `Debug`).
        pub fn key_pem(&self) -> &SecretPem {
            &self.0.key_pem
        }

        /// The CA certificate(s), DER.
        pub fn ca_certs_der(&self) -> &[CertificateDer<'static>] {
            &self.0.ca_certs
        }

        /// This side's certificate chain, DER (end entity first).
        pub fn cert_chain_der(&self) -> &[CertificateDer<'static>] {
            &self.0.certified_key.cert
        }
    };
}

/// The host side: the bootstrap server's certificate and key, and the CA its clients must chain to.
///
/// For tonic: `Identity::from_pem(b.cert_pem(), b.key_pem().expose_secret())` and
/// `Certificate::from_pem(b.ca_cert_pem())` as `client_ca_root`. For rustls directly:
/// [`ServerBundle::server_config`].
#[derive(Clone)]
pub struct ServerBundle(Material);

impl std::fmt::Debug for ServerBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.debug("ServerBundle", f)
    }
}

impl ServerBundle {
    /// Loads a ready server certificate (chain) and key plus the CA that client certificates must
    /// chain to. Checks that everything parses and that the key matches the certificate.
    pub fn from_pem(ca_cert_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self> {
        Material::from_pem(
            ["ca cert pem", "server cert pem", "server key pem"],
            ca_cert_pem,
            cert_pem,
            key_pem,
        )
        .map(Self)
    }

    accessors!();

    /// A rustls server config that requires a client certificate chaining to the CA and, with
    /// [`ClientPolicy::Build`](crate::ClientPolicy::Build), carrying that build id. Set
    /// `alpn_protocols` on the result if needed (e.g. `vec![ALPN_H2.to_vec()]`).
    pub fn server_config(&self, policy: &tls::ClientPolicy) -> Result<rustls::ServerConfig> {
        tls::server_config(&self.0.ca_certs, Arc::clone(&self.0.certified_key), policy)
    }
}

/// The guest side: the client certificate bound to one build, its key, and the CA the server must
/// chain to. Maps one to one onto the MMDS fields `tls-ca-cert`, `tls-cert`, `tls-key`.
///
/// For tonic: `ClientTlsConfig::new().ca_certificate(Certificate::from_pem(b.ca_cert_pem()))
/// .identity(Identity::from_pem(b.cert_pem(), b.key_pem().expose_secret())).domain_name(..)`.
/// For rustls directly: [`ClientBundle::client_config`].
#[derive(Clone)]
pub struct ClientBundle(Material);

impl std::fmt::Debug for ClientBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.debug("ClientBundle", f)
    }
}

impl ClientBundle {
    /// Loads a client certificate (chain) and key plus the CA the server must chain to (the three
    /// MMDS values). Checks that everything parses and that the key matches the certificate.
    pub fn from_pem(ca_cert_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self> {
        Material::from_pem(
            ["ca cert pem", "client cert pem", "client key pem"],
            ca_cert_pem,
            cert_pem,
            key_pem,
        )
        .map(Self)
    }

    accessors!();

    /// A rustls client config that presents this client certificate and trusts only the CA
    /// (no system or webpki roots). The server name is checked per connection against the
    /// server certificate's SANs: pass it to `TlsConnector::connect` (see
    /// [`server_name`](crate::server_name)). Set `alpn_protocols` on the result if needed.
    pub fn client_config(&self) -> Result<rustls::ClientConfig> {
        tls::client_config(&self.0.ca_certs, Arc::clone(&self.0.certified_key))
    }
}
