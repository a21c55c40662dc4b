//! rustls configurations. Every config built here verifies its peer; there is no way to turn
//! verification off.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    SignatureScheme,
};

use crate::error::{BuildIdMismatch, Error, Result};
use crate::{BuildId, client_build_id};

/// The ALPN id of HTTP/2, what gRPC speaks: `config.alpn_protocols = vec![ALPN_H2.to_vec()]`.
pub const ALPN_H2: &[u8] = b"h2";

/// Which client certificates a server accepts.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientPolicy {
    /// Any client certificate that chains to the CA (EKU clientAuth, within its validity).
    AnyClientOfCa,
    /// As `AnyClientOfCa`, and the certificate must carry exactly this build id as its
    /// `urn:firebuild:build:<id>` URI SAN. A mismatch fails the handshake with
    /// [`BuildIdMismatch`].
    Build(BuildId),
}

/// The one crypto provider this crate uses: aws-lc-rs. Passed explicitly to every builder;
/// the process-wide default provider is never consulted or installed.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Validates a host name or IP address for `TlsConnector::connect`.
pub fn server_name(name: &str) -> Result<ServerName<'static>> {
    ServerName::try_from(name.to_owned()).map_err(|_| Error::InvalidServerName {
        name: name.to_owned(),
    })
}

fn roots(ca_certs: &[CertificateDer<'static>], input: &'static str) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in ca_certs {
        roots
            .add(cert.clone())
            .map_err(|source| Error::TrustAnchor { input, source })?;
    }
    Ok(Arc::new(roots))
}

pub(crate) fn server_config(
    ca_certs: &[CertificateDer<'static>],
    certified_key: Arc<CertifiedKey>,
    policy: &ClientPolicy,
) -> Result<rustls::ServerConfig> {
    let provider = provider();
    let webpki = WebPkiClientVerifier::builder_with_provider(
        roots(ca_certs, "ca cert pem")?,
        Arc::clone(&provider),
    )
    .build()
    .map_err(|source| Error::Verifier { source })?;
    let verifier: Arc<dyn ClientCertVerifier> = match policy {
        ClientPolicy::AnyClientOfCa => webpki,
        ClientPolicy::Build(expected) => Arc::new(BuildIdVerifier {
            inner: webpki,
            expected: expected.clone(),
        }),
    };
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| Error::Tls {
            side: "server",
            source,
        })?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified_key)));
    Ok(config)
}

pub(crate) fn client_config(
    ca_certs: &[CertificateDer<'static>],
    certified_key: Arc<CertifiedKey>,
) -> Result<rustls::ClientConfig> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| Error::Tls {
            side: "client",
            source,
        })?
        .with_root_certificates(roots(ca_certs, "ca cert pem")?)
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(certified_key)));
    Ok(config)
}

/// webpki client verification plus the build id check.
#[derive(Debug)]
struct BuildIdVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    expected: BuildId,
}

impl ClientCertVerifier for BuildIdVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let found = client_build_id(end_entity);
        if found.as_ref() == Some(&self.expected) {
            return Ok(verified);
        }
        tracing::warn!(expected = %self.expected, found = ?found.as_ref().map(BuildId::as_str), "rejected client certificate of another build");
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(BuildIdMismatch {
                expected: self.expected.clone(),
                found,
            })),
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
