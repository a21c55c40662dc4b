//! The certificate authority: generate or load one, issue server and client certificates.

use std::net::IpAddr;

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SignatureAlgorithm,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use tracing::debug;

use crate::bundle::{ClientBundle, ServerBundle};
use crate::error::{Error, Result};
use crate::{BuildId, SecretPem, Validity, pem};

/// The common name prefix of a generated per-build CA.
pub const DEFAULT_CA_NAME: &str = "firebuild build CA";

/// Key algorithm for generated keys.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// ECDSA on P-256 with SHA-256 (the default).
    #[default]
    EcdsaP256,
    /// ECDSA on P-384 with SHA-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
}

impl KeyAlgorithm {
    fn rcgen(self) -> &'static SignatureAlgorithm {
        match self {
            Self::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Self::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            Self::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }

    fn generate(self, what: &'static str) -> Result<KeyPair> {
        KeyPair::generate_for(self.rcgen()).map_err(|source| Error::Issue { what, source })
    }
}

/// A CA that issues the per-build server and client certificates.
///
/// Either minted fresh for one build ([`CertificateAuthority::generate`]) or loaded from the
/// user's own certificate and key ([`CertificateAuthority::from_pem`]). Its signing key never
/// leaves the value unless [`CertificateAuthority::key_pem`] is called.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    leaf_algorithm: KeyAlgorithm,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("issuer", &self.issuer)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("leaf_algorithm", &self.leaf_algorithm)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A fresh ECDSA P-256 CA named [`DEFAULT_CA_NAME`], valid for `validity`.
    pub fn generate(validity: &Validity) -> Result<Self> {
        Self::generate_with(DEFAULT_CA_NAME, KeyAlgorithm::default(), validity)
    }

    /// A fresh CA with the given common name (followed by 16 hex digits of its key id, so every
    /// CA has a distinct subject) and key algorithm. Leaf keys use the same algorithm
    /// unless changed with [`CertificateAuthority::with_leaf_algorithm`].
    ///
    /// The CA has `pathLenConstraint = 0`: it can sign leaves, not other CAs.
    pub fn generate_with(
        common_name: &str,
        algorithm: KeyAlgorithm,
        validity: &Validity,
    ) -> Result<Self> {
        let key = algorithm.generate("ca")?;
        let mut params = CertificateParams::default();
        // Distinct subjects per CA: verifiers pick issuers by name, so two per-build CAs with the
        // same name would turn "unknown issuer" into a confusing "bad signature".
        let key_id = params.key_identifier(&key);
        let suffix: String = key_id.iter().take(8).map(|b| format!("{b:02x}")).collect();
        params.distinguished_name = dn(&format!("{common_name} {suffix}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let cert = params
            .self_signed(&key)
            .map_err(|source| Error::Issue { what: "ca", source })?;
        debug!(common_name, "generated ca");
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
            not_before: validity.not_before,
            not_after: validity.not_after,
            leaf_algorithm: algorithm,
        })
    }

    /// Loads a CA from its certificate and private key (PEM).
    ///
    /// The certificate must be a CA (basicConstraints cA) and the key must match it. Only the
    /// first certificate in `cert_pem` is used. Leaf keys default to ECDSA P-256.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        const CERT: &str = "ca cert pem";
        const KEY: &str = "ca key pem";
        let certs = pem::certificates(CERT, cert_pem)?;
        let Some(cert_der) = certs.into_iter().next() else {
            return Err(Error::PemMissing {
                input: CERT,
                expected: "certificate",
            });
        };
        let (_, x509) = x509_parser::parse_x509_certificate(&cert_der).map_err(|source| {
            Error::Certificate {
                input: CERT,
                source,
            }
        })?;
        if !x509.is_ca() {
            return Err(Error::NotCa { input: CERT });
        }
        let not_before = x509.validity().not_before.to_datetime();
        let not_after = x509.validity().not_after.to_datetime();
        let spki = x509.public_key().subject_public_key.data.to_vec();
        drop(x509);

        let key_der = pem::private_key(KEY, key_pem)?;
        let key = KeyPair::try_from(&*key_der).map_err(|source| Error::Key {
            input: KEY,
            source: Box::new(source),
        })?;
        if key.public_key_raw() != spki.as_slice() {
            return Err(Error::KeyMismatch { input: KEY });
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|source| Error::Issue { what: "ca", source })?;
        let cert_der = cert_der.into_owned();
        Ok(Self {
            cert_pem: der_to_pem("CERTIFICATE", &cert_der),
            cert_der,
            issuer,
            not_before,
            not_after,
            leaf_algorithm: KeyAlgorithm::default(),
        })
    }

    /// Sets the key algorithm of the certificates this CA issues.
    pub fn with_leaf_algorithm(mut self, algorithm: KeyAlgorithm) -> Self {
        self.leaf_algorithm = algorithm;
        self
    }

    /// The CA certificate, PEM (`tls-ca-cert`).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA's private key as PKCS#8 PEM, for persisting a long-lived CA (write it 0600).
    /// The per-build flow never needs this.
    pub fn key_pem(&self) -> SecretPem {
        SecretPem::new(self.issuer.key().serialize_pem())
    }

    /// Issues a server certificate (EKU serverAuth) for `names`: each is an IP address or a DNS
    /// name and becomes a subjectAltName; the first is also the CN.
    pub fn issue_server<S: AsRef<str>>(
        &self,
        names: &[S],
        validity: &Validity,
    ) -> Result<ServerBundle> {
        let Some(first) = names.first() else {
            return Err(Error::NoServerNames);
        };
        let sans = names
            .iter()
            .map(|n| server_san(n.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        let mut params = self.leaf_params(first.as_ref(), validity)?;
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let (cert_pem, key_pem) = self.sign("server", &params)?;
        debug!(names = ?names.iter().map(AsRef::as_ref).collect::<Vec<_>>(), "issued server certificate");
        ServerBundle::from_pem(&self.cert_pem, &cert_pem, key_pem.expose_secret())
    }

    /// Issues a client certificate (EKU clientAuth) bound to `build_id`: CN is the id and the
    /// subjectAltName holds the URI `urn:firebuild:build:<id>`.
    pub fn issue_client(&self, build_id: &BuildId, validity: &Validity) -> Result<ClientBundle> {
        let mut params = self.leaf_params(build_id.as_str(), validity)?;
        let uri = Ia5String::try_from(build_id.uri()).map_err(|source| Error::Issue {
            what: "client",
            source,
        })?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let (cert_pem, key_pem) = self.sign("client", &params)?;
        debug!(%build_id, "issued client certificate");
        ClientBundle::from_pem(&self.cert_pem, &cert_pem, key_pem.expose_secret())
    }

    fn leaf_params(&self, common_name: &str, validity: &Validity) -> Result<CertificateParams> {
        // A leaf never outlives its issuer. (It may start before the issuer does: a window
        // entirely in the past is how callers test expiry handling.)
        let not_before = validity.not_before;
        let not_after = validity.not_after.min(self.not_after);
        if not_before >= not_after {
            return Err(Error::CaExpired);
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(common_name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        Ok(params)
    }

    fn sign(&self, what: &'static str, params: &CertificateParams) -> Result<(String, SecretPem)> {
        let key = self.leaf_algorithm.generate(what)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| Error::Issue { what, source })?;
        Ok((cert.pem(), SecretPem::new(key.serialize_pem())))
    }
}

/// Everything one build needs: a fresh CA, the host's server bundle and the guest's client bundle.
#[derive(Debug)]
pub struct BuildPki {
    /// The build this PKI belongs to.
    pub build_id: BuildId,
    /// The per-build CA (drop it once the certificates are issued to forget its key).
    pub ca: CertificateAuthority,
    /// Host side: serves the bootstrap gRPC endpoint.
    pub server: ServerBundle,
    /// Guest side: goes into MMDS as `tls-ca-cert`, `tls-cert`, `tls-key`.
    pub client: ClientBundle,
}

impl BuildPki {
    /// Mints a CA and issues a server certificate for `server_names` and a client certificate for
    /// `build_id`, all valid for `validity`.
    pub fn generate<S: AsRef<str>>(
        build_id: BuildId,
        server_names: &[S],
        validity: &Validity,
    ) -> Result<Self> {
        let ca = CertificateAuthority::generate(validity)?;
        Self::issue_from(ca, build_id, server_names, validity)
    }

    /// Like [`BuildPki::generate`] but issuing from an existing CA (for example the user's own,
    /// loaded with [`CertificateAuthority::from_pem`]).
    pub fn issue_from<S: AsRef<str>>(
        ca: CertificateAuthority,
        build_id: BuildId,
        server_names: &[S],
        validity: &Validity,
    ) -> Result<Self> {
        let server = ca.issue_server(server_names, validity)?;
        let client = ca.issue_client(&build_id, validity)?;
        Ok(Self {
            build_id,
            ca,
            server,
            client,
        })
    }
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn server_san(name: &str) -> Result<SanType> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let invalid = || Error::InvalidServerName {
        name: name.to_owned(),
    };
    rustls_pki_types::DnsName::try_from(name).map_err(|_| invalid())?;
    let ia5 = Ia5String::try_from(name).map_err(|_| invalid())?;
    Ok(SanType::DnsName(ia5))
}

/// PEM-encodes one DER object (used for public certificates only).
fn der_to_pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use rustls_pki_types::pem::PemObject;

    use super::*;

    #[test]
    fn pem_encoding_matches_known_vectors_and_round_trips() {
        assert_eq!(
            der_to_pem("CERTIFICATE", b"foob"),
            "-----BEGIN CERTIFICATE-----\nZm9vYg==\n-----END CERTIFICATE-----\n"
        );
        assert!(der_to_pem("X", b"fooba").contains("\nZm9vYmE=\n"));
        assert!(der_to_pem("X", b"foobar").contains("\nZm9vYmFy\n"));
        for len in [1usize, 47, 48, 49, 100, 1000] {
            let der: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let pem = der_to_pem("CERTIFICATE", &der);
            assert!(pem.lines().all(|l| l.len() <= 64), "{pem}");
            let back = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
            assert_eq!(back.as_ref(), der.as_slice());
        }
    }

    #[test]
    fn server_names_map_to_ip_or_dns_sans() {
        assert!(matches!(
            server_san("169.254.0.2"),
            Ok(SanType::IpAddress(_))
        ));
        assert!(matches!(server_san("fe80::1"), Ok(SanType::IpAddress(_))));
        assert!(matches!(
            server_san("host.example"),
            Ok(SanType::DnsName(_))
        ));
        assert!(server_san("no spaces.example").is_err());
    }
}
