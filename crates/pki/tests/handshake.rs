//! Real mTLS handshakes over TCP loopback with the crate's rustls configs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, SystemTime};

use common::{handshake, rustls_error};
use firebuild_pki::{
    ALPN_H2, BuildId, BuildIdMismatch, BuildPki, CertificateAuthority, ClientBundle, ClientPolicy,
    ServerBundle, Validity, client_build_id,
};
use rustls::{CertificateError, Error as TlsError};

fn pki(id: &str) -> BuildPki {
    BuildPki::generate(
        BuildId::new(id).unwrap(),
        &["127.0.0.1", "localhost", "bootstrap.firebuild.internal"],
        &Validity::default(),
    )
    .unwrap()
}

fn server_err(outcome: &common::Outcome) -> &TlsError {
    let err = outcome
        .server
        .as_ref()
        .expect_err("server accepted the connection");
    rustls_error(err).unwrap_or_else(|| panic!("not a rustls error: {err}"))
}

fn client_err(outcome: &common::Outcome) -> &TlsError {
    let err = outcome
        .client
        .as_ref()
        .expect_err("client accepted the connection");
    rustls_error(err).unwrap_or_else(|| panic!("not a rustls error: {err}"))
}

#[tokio::test]
async fn mutual_tls_succeeds_with_alpn_and_build_id_policy() {
    let pki = pki("b-ok");
    let mut server = pki
        .server
        .server_config(&ClientPolicy::Build(pki.build_id.clone()))
        .unwrap();
    server.alpn_protocols = vec![ALPN_H2.to_vec()];
    let mut client = pki.client.client_config().unwrap();
    client.alpn_protocols = vec![ALPN_H2.to_vec()];

    let out = handshake(server, client, "127.0.0.1").await;
    let alpn = out.client.expect("client failed");
    assert_eq!(alpn.as_deref(), Some(ALPN_H2));
    let server = out.server.expect("server failed");
    assert_eq!(server.alpn.as_deref(), Some(ALPN_H2));
    // What a tonic server would do with `peer_certs()` after the handshake.
    assert_eq!(
        client_build_id(&server.peer_certs[0]),
        Some(pki.build_id.clone())
    );
}

#[tokio::test]
async fn dns_name_in_sans_is_accepted() {
    let pki = pki("b-dns");
    let server = pki
        .server
        .server_config(&ClientPolicy::AnyClientOfCa)
        .unwrap();
    let client = pki.client.client_config().unwrap();
    let out = handshake(server, client, "bootstrap.firebuild.internal").await;
    out.client.expect("client failed");
    out.server.expect("server failed");
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_rejected() {
    let ours = pki("b-1");
    let theirs = pki("b-1"); // same build id, different CA
    let server = ours
        .server
        .server_config(&ClientPolicy::AnyClientOfCa)
        .unwrap();
    // The intruder trusts our CA (so it would accept our server) but holds a foreign cert.
    let intruder = ClientBundle::from_pem(
        ours.client.ca_cert_pem(),
        theirs.client.cert_pem(),
        theirs.client.key_pem().expose_secret(),
    )
    .unwrap();
    let out = handshake(server, intruder.client_config().unwrap(), "127.0.0.1").await;
    assert!(
        matches!(
            server_err(&out),
            TlsError::InvalidCertificate(CertificateError::UnknownIssuer)
        ),
        "{:?}",
        out.server
    );
    assert!(out.client.is_err(), "client thinks it is connected");
}

#[tokio::test]
async fn missing_client_certificate_is_rejected() {
    let pki = pki("b-2");
    let server = pki
        .server
        .server_config(&ClientPolicy::AnyClientOfCa)
        .unwrap();
    // A client that trusts the CA but presents no certificate.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.client.ca_certs_der()[0].clone()).unwrap();
    let anonymous = rustls::ClientConfig::builder_with_provider(firebuild_pki::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let out = handshake(server, anonymous, "127.0.0.1").await;
    assert!(
        matches!(server_err(&out), TlsError::NoCertificatesPresented),
        "{:?}",
        out.server
    );
    assert!(out.client.is_err(), "client thinks it is connected");
}

#[tokio::test]
async fn expired_client_certificate_is_rejected() {
    let pki = pki("b-3");
    let now = SystemTime::now();
    let past = Validity::between(
        now - Duration::from_secs(7200),
        now - Duration::from_secs(3600),
    )
    .unwrap();
    let expired = pki.ca.issue_client(&pki.build_id, &past).unwrap();
    let server = pki
        .server
        .server_config(&ClientPolicy::AnyClientOfCa)
        .unwrap();
    let out = handshake(server, expired.client_config().unwrap(), "127.0.0.1").await;
    assert!(
        matches!(
            server_err(&out),
            TlsError::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            )
        ),
        "{:?}",
        out.server
    );
    assert!(out.client.is_err(), "client thinks it is connected");
}

#[tokio::test]
async fn server_name_not_in_sans_is_rejected() {
    let pki = pki("b-4");
    let server = pki
        .server
        .server_config(&ClientPolicy::AnyClientOfCa)
        .unwrap();
    let client = pki.client.client_config().unwrap();
    let out = handshake(server, client, "10.0.0.1").await;
    assert!(
        matches!(
            client_err(&out),
            TlsError::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            )
        ),
        "{:?}",
        out.client
    );
    assert!(out.server.is_err(), "server thinks it is connected");
}

#[tokio::test]
async fn server_certificate_from_another_ca_is_rejected() {
    let ours = pki("b-5");
    let theirs = pki("b-5");
    // An impostor server that would accept our client but holds a foreign server cert.
    let impostor = ServerBundle::from_pem(
        ours.server.ca_cert_pem(),
        theirs.server.cert_pem(),
        theirs.server.key_pem().expose_secret(),
    )
    .unwrap();
    let server = impostor
        .server_config(&ClientPolicy::AnyClientOfCa)
        .unwrap();
    let out = handshake(server, ours.client.client_config().unwrap(), "127.0.0.1").await;
    assert!(
        matches!(
            client_err(&out),
            TlsError::InvalidCertificate(CertificateError::UnknownIssuer)
        ),
        "{:?}",
        out.client
    );
    assert!(out.server.is_err(), "server thinks it is connected");
}

#[tokio::test]
async fn client_certificate_cannot_serve_as_server_certificate() {
    let pki = pki("b-6");
    // Same CA, but the leaf has EKU clientAuth only (and no IP SAN).
    let misuse = ServerBundle::from_pem(
        pki.client.ca_cert_pem(),
        pki.client.cert_pem(),
        pki.client.key_pem().expose_secret(),
    )
    .unwrap();
    let server = misuse.server_config(&ClientPolicy::AnyClientOfCa).unwrap();
    let out = handshake(server, pki.client.client_config().unwrap(), "127.0.0.1").await;
    assert!(
        matches!(client_err(&out), TlsError::InvalidCertificate(_)),
        "{:?}",
        out.client
    );
    assert!(out.server.is_err(), "server thinks it is connected");
}

#[tokio::test]
async fn client_of_another_build_is_rejected_by_build_policy() {
    let pki = pki("b-7");
    let other = pki
        .ca
        .issue_client(&BuildId::new("b-8").unwrap(), &Validity::default())
        .unwrap();

    // Same CA, so without the build policy the other build's client gets in ...
    let lenient = pki
        .server
        .server_config(&ClientPolicy::AnyClientOfCa)
        .unwrap();
    let out = handshake(lenient, other.client_config().unwrap(), "127.0.0.1").await;
    out.server
        .expect("chain-only policy should admit a client of the same CA");

    // ... and with it, it does not.
    let strict = pki
        .server
        .server_config(&ClientPolicy::Build(pki.build_id.clone()))
        .unwrap();
    let out = handshake(strict, other.client_config().unwrap(), "127.0.0.1").await;
    let TlsError::InvalidCertificate(CertificateError::Other(other_err)) = server_err(&out) else {
        panic!("unexpected server result {:?}", out.server);
    };
    let mismatch = other_err
        .0
        .downcast_ref::<BuildIdMismatch>()
        .expect("not a BuildIdMismatch");
    assert_eq!(mismatch.expected, "b-7");
    assert_eq!(mismatch.found.as_ref().map(BuildId::as_str), Some("b-8"));
    assert_eq!(
        mismatch.to_string(),
        "client certificate is for build b-8, this server serves build b-7"
    );
    assert!(out.client.is_err(), "client thinks it is connected");
}

#[tokio::test]
async fn minted_pem_round_trips_through_loading() {
    let pki = pki("b-9");
    // Host writes these out / into MMDS; each side loads them back.
    let server = ServerBundle::from_pem(
        pki.server.ca_cert_pem(),
        pki.server.cert_pem(),
        pki.server.key_pem().expose_secret(),
    )
    .unwrap();
    let client = ClientBundle::from_pem(
        pki.client.ca_cert_pem(),
        pki.client.cert_pem(),
        pki.client.key_pem().expose_secret(),
    )
    .unwrap();
    drop(pki);
    let out = handshake(
        server
            .server_config(&ClientPolicy::Build(BuildId::new("b-9").unwrap()))
            .unwrap(),
        client.client_config().unwrap(),
        "localhost",
    )
    .await;
    out.client.expect("client failed");
    out.server.expect("server failed");
}

#[tokio::test]
async fn loaded_user_ca_issues_working_certificates() {
    // A long-lived CA the user keeps on disk, with a richer subject than ours.
    let key = rcgen_key();
    let mut params = rcgen_params();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = params.self_signed(&key).unwrap();
    let (ca_pem, key_pem) = (ca_cert.pem(), key.serialize_pem());

    let ca = CertificateAuthority::from_pem(&ca_pem, &key_pem).unwrap();
    assert_eq!(ca.cert_pem(), ca_pem);
    let id = BuildId::new("user-ca-build").unwrap();
    let pki = BuildPki::issue_from(ca, id.clone(), &["127.0.0.1"], &Validity::default()).unwrap();
    assert_eq!(pki.client.ca_cert_pem(), ca_pem);
    let out = handshake(
        pki.server.server_config(&ClientPolicy::Build(id)).unwrap(),
        pki.client.client_config().unwrap(),
        "127.0.0.1",
    )
    .await;
    out.client.expect("client failed");
    out.server.expect("server failed");
}

fn rcgen_key() -> rcgen::KeyPair {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap()
}

fn rcgen_params() -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(
        rcgen::DnType::CountryName,
        rcgen::DnValue::PrintableString("DE".try_into().unwrap()),
    );
    dn.push(rcgen::DnType::OrganizationName, "Example Builds GmbH");
    dn.push(rcgen::DnType::CommonName, "Example Root CA");
    params.distinguished_name = dn;
    params
}

#[tokio::test]
async fn server_trusting_two_cas_admits_clients_of_either() {
    let old = pki("rot-1");
    let new = pki("rot-2");
    let both = format!("{}{}", old.ca.cert_pem(), new.ca.cert_pem());
    let server = ServerBundle::from_pem(
        &both,
        new.server.cert_pem(),
        new.server.key_pem().expose_secret(),
    )
    .unwrap();
    assert_eq!(server.ca_certs_der().len(), 2);
    for client in [&old.client, &new.client] {
        // Each client trusts the new CA (the server's chain) and presents its own certificate.
        let client = ClientBundle::from_pem(
            new.ca.cert_pem(),
            client.cert_pem(),
            client.key_pem().expose_secret(),
        )
        .unwrap();
        let out = handshake(
            server.server_config(&ClientPolicy::AnyClientOfCa).unwrap(),
            client.client_config().unwrap(),
            "127.0.0.1",
        )
        .await;
        out.client.expect("client failed");
        out.server.expect("server failed");
    }
}
