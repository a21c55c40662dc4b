//! Ephemeral per-build mTLS PKI for firebuild.
//!
//! Each build gets its own CA; the host's bootstrap server and the guest's client authenticate
//! each other with certificates from it, and nothing here can produce a configuration that skips
//! verification. The core types:
//!
//! - [`CertificateAuthority`]: mint a CA ([`CertificateAuthority::generate`]) or load the user's
//!   own ([`CertificateAuthority::from_pem`]), then issue a server certificate for the host's IPs
//!   and DNS names and a client certificate bound to a [`BuildId`] (CN = id, URI SAN
//!   `urn:firebuild:build:<id>`). [`BuildPki::generate`] does all three at once.
//! - [`ServerBundle`] / [`ClientBundle`]: CA certificate + certificate + key as PEM (what tonic's
//!   `Identity::from_pem` / `Certificate::from_pem` take, and what MMDS carries as `tls-ca-cert`,
//!   `tls-cert`, `tls-key`), loadable with `from_pem`, and turned into rustls configs by
//!   [`ServerBundle::server_config`] and [`ClientBundle::client_config`].
//! - [`Validity`]: short-lived by default (2 h build + 10 min margin, not-before one minute back
//!   for clock skew).
//!
//! Keys are held as [`SecretPem`] (zeroized on drop, redacted in `Debug`). The crate writes no
//! files and logs no key material. One crypto provider, aws-lc-rs, is passed explicitly to rcgen
//! and rustls ([`provider`]); no process-wide default is installed.
//!
//! # Checking the build id
//!
//! A server built with [`ClientPolicy::Build`] rejects, inside the handshake, a client certificate
//! that chains to the CA but names another build. Servers whose TLS is configured elsewhere (tonic's
//! `ServerTlsConfig`, which only takes a client CA) should call [`client_build_id`] on the verified
//! peer certificate after the handshake.
//!
//! # Example
//!
//! ```
//! use firebuild_pki::{BuildId, BuildPki, ClientBundle, ClientPolicy, Validity, ALPN_H2};
//!
//! # fn main() -> Result<(), firebuild_pki::Error> {
//! let build = BuildId::new("b-0001")?;
//! let pki = BuildPki::generate(build.clone(), &["127.0.0.1", "bootstrap.local"], &Validity::default())?;
//!
//! // Host side: a rustls server config that only admits this build's client.
//! let mut server = pki.server.server_config(&ClientPolicy::Build(build.clone()))?;
//! server.alpn_protocols = vec![ALPN_H2.to_vec()];
//!
//! // What goes into MMDS for the guest ...
//! let (ca, cert, key) = (
//!     pki.client.ca_cert_pem().to_owned(),
//!     pki.client.cert_pem().to_owned(),
//!     pki.client.key_pem().clone(),
//! );
//! assert!(!format!("{key:?}").contains("PRIVATE KEY"));
//!
//! // ... and what the guest builds from it.
//! let guest = ClientBundle::from_pem(&ca, &cert, key.expose_secret())?;
//! let mut client = guest.client_config()?;
//! client.alpn_protocols = vec![ALPN_H2.to_vec()];
//! assert_eq!(firebuild_pki::client_build_id(&guest.cert_chain_der()[0]), Some(build));
//! # Ok(())
//! # }
//! ```

mod authority;
mod build_id;
mod bundle;
mod error;
mod pem;
mod secret;
mod tls;
mod validity;

pub use authority::{BuildPki, CertificateAuthority, DEFAULT_CA_NAME, KeyAlgorithm};
pub use build_id::{BUILD_ID_URI_PREFIX, BuildId, MAX_BUILD_ID_LEN, client_build_id};
pub use bundle::{ClientBundle, ServerBundle};
pub use error::{BuildIdMismatch, Error, Result};
pub use pem::MAX_PEM_LEN;
pub use secret::SecretPem;
pub use tls::{ALPN_H2, ClientPolicy, provider, server_name};
pub use validity::{BUILD_MARGIN, CLOCK_SKEW, DEFAULT_BUILD_TIMEOUT, Validity};
