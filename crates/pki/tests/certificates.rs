//! Issued certificates, read back with x509-parser: names, validity, CA flags, key usages.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use firebuild_pki::{
    BuildId, BuildPki, CertificateAuthority, ClientBundle, KeyAlgorithm, ServerBundle, Validity,
    client_build_id,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, UnixTime};
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry;
use x509_parser::prelude::{FromDer, X509Certificate};

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = X509Certificate::from_der(der).unwrap();
    assert!(rest.is_empty());
    cert
}

fn roots(ca: &CertificateDer<'_>) -> Arc<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone().into_owned()).unwrap();
    Arc::new(roots)
}

/// Chain + signature + EKU serverAuth + name check, as a client would do it.
fn verify_server(ca: &CertificateDer<'_>, ee: &CertificateDer<'_>, name: &str) {
    rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots(ca),
        firebuild_pki::provider(),
    )
    .build()
    .unwrap()
    .verify_server_cert(
        ee,
        &[],
        &firebuild_pki::server_name(name).unwrap(),
        &[],
        UnixTime::now(),
    )
    .unwrap();
}

/// Chain + signature + EKU clientAuth, as a server would do it.
fn verify_client(ca: &CertificateDer<'_>, ee: &CertificateDer<'_>) {
    rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots(ca),
        firebuild_pki::provider(),
    )
    .build()
    .unwrap()
    .verify_client_cert(ee, &[], UnixTime::now())
    .unwrap();
}

fn generate() -> BuildPki {
    BuildPki::generate(
        BuildId::new("b-42").unwrap(),
        &["10.0.0.1", "::1", "host.example"],
        &Validity::for_build(Duration::from_secs(1800)).unwrap(),
    )
    .unwrap()
}

#[test]
fn ca_is_a_constrained_ca_with_signing_usages() {
    let pki = generate();
    let ca = parse(pki.ca.cert_der());
    let cn = ca.subject().to_string();
    let suffix = cn.strip_prefix("CN=firebuild build CA ").expect(&cn);
    assert!(
        suffix.len() == 16 && suffix.bytes().all(|b| b.is_ascii_hexdigit()),
        "{cn}"
    );
    // Every CA gets its own subject, so a foreign chain reads as "unknown issuer".
    assert_ne!(generate().ca.cert_der(), pki.ca.cert_der());
    assert_ne!(parse(generate().ca.cert_der()).subject(), ca.subject());
    assert_eq!(ca.subject(), ca.issuer());
    let bc = ca.basic_constraints().unwrap().expect("basicConstraints");
    assert!(bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, Some(0));
    let ku = ca.key_usage().unwrap().expect("keyUsage").value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
    assert_eq!(
        ca.public_key().algorithm.algorithm,
        oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
    );
}

#[test]
fn server_certificate_has_the_requested_sans_and_server_auth_only() {
    let pki = generate();
    let ca = parse(pki.ca.cert_der());
    let cert = parse(&pki.server.cert_chain_der()[0]);
    assert_eq!(cert.issuer(), ca.subject());
    verify_server(
        pki.ca.cert_der(),
        &pki.server.cert_chain_der()[0],
        "host.example",
    );
    assert_eq!(cert.subject().to_string(), "CN=10.0.0.1");

    let san = cert.subject_alternative_name().unwrap().expect("SAN").value;
    let mut ips = Vec::new();
    let mut dns = Vec::new();
    for name in &san.general_names {
        match name {
            GeneralName::IPAddress(b) if b.len() == 4 => {
                ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()))
            }
            GeneralName::IPAddress(b) => ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap())),
            GeneralName::DNSName(d) => dns.push(d.to_string()),
            other => panic!("unexpected SAN {other:?}"),
        }
    }
    assert_eq!(
        ips,
        [
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        ]
    );
    assert_eq!(dns, ["host.example"]);

    let eku = cert.extended_key_usage().unwrap().expect("EKU").value;
    assert!(eku.server_auth && !eku.client_auth && !eku.any);
    let ku = cert.key_usage().unwrap().expect("keyUsage").value;
    assert!(ku.digital_signature() && !ku.key_cert_sign());
    assert!(!cert.is_ca());
    // AKI points at the CA's SKI, so chains build unambiguously.
    let aki = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.clone()
            }
            _ => None,
        })
        .expect("AKI");
    let ski = ca
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => Some(k.clone()),
            _ => None,
        })
        .expect("SKI");
    assert_eq!(aki.0, ski.0);
}

#[test]
fn client_certificate_is_bound_to_the_build() {
    let pki = generate();
    let cert = parse(&pki.client.cert_chain_der()[0]);
    assert_eq!(cert.subject().to_string(), "CN=b-42");
    let san = cert.subject_alternative_name().unwrap().expect("SAN").value;
    assert_eq!(
        san.general_names,
        [GeneralName::URI("urn:firebuild:build:b-42")]
    );
    let eku = cert.extended_key_usage().unwrap().expect("EKU").value;
    assert!(eku.client_auth && !eku.server_auth && !eku.any);
    assert!(!cert.is_ca());
    assert_eq!(
        client_build_id(&pki.client.cert_chain_der()[0]),
        Some(pki.build_id.clone())
    );
    verify_client(pki.ca.cert_der(), &pki.client.cert_chain_der()[0]);
    // A server certificate carries no build id.
    assert_eq!(client_build_id(&pki.server.cert_chain_der()[0]), None);
}

#[test]
fn validity_window_is_short_and_starts_in_the_past() {
    let before = SystemTime::now();
    let pki = generate();
    for der in [
        pki.ca.cert_der().as_ref(),
        pki.server.cert_chain_der()[0].as_ref(),
        pki.client.cert_chain_der()[0].as_ref(),
    ] {
        let v = parse(der).validity().clone();
        let nb = v.not_before.timestamp();
        let na = v.not_after.timestamp();
        // not-before one minute back (second precision in X.509).
        assert!(
            (unix(before) - 62..=unix(before) - 58).contains(&nb),
            "{nb}"
        );
        // 30 min build + 10 min margin.
        assert!(
            (unix(before) + 2398..=unix(before) + 2402).contains(&na),
            "{na}"
        );
    }
}

#[test]
fn leaves_never_outlive_the_ca() {
    let short = Validity::from_now(Duration::from_secs(600)).unwrap();
    let ca = CertificateAuthority::generate(&short).unwrap();
    let client = ca
        .issue_client(
            &BuildId::new("x").unwrap(),
            &Validity::from_now(Duration::from_secs(86_400)).unwrap(),
        )
        .unwrap();
    let ca_end = parse(ca.cert_der()).validity().not_after.timestamp();
    let leaf_end = parse(&client.cert_chain_der()[0])
        .validity()
        .not_after
        .timestamp();
    assert_eq!(leaf_end, ca_end);

    let now = SystemTime::now();
    let later = Validity::between(
        now + Duration::from_secs(3600),
        now + Duration::from_secs(7200),
    )
    .unwrap();
    let err = ca
        .issue_client(&BuildId::new("x").unwrap(), &later)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the issuing ca expires before the requested validity window starts"
    );
}

#[test]
fn other_key_algorithms_issue_valid_chains() {
    for alg in [KeyAlgorithm::EcdsaP384, KeyAlgorithm::Ed25519] {
        let ca = CertificateAuthority::generate_with("alt CA", alg, &Validity::default()).unwrap();
        let server = ca
            .issue_server(&["127.0.0.1"], &Validity::default())
            .unwrap();
        verify_server(ca.cert_der(), &server.cert_chain_der()[0], "127.0.0.1");
    }
}

#[test]
fn invalid_server_names_are_rejected() {
    let ca = CertificateAuthority::generate(&Validity::default()).unwrap();
    let none: [&str; 0] = [];
    assert_eq!(
        ca.issue_server(&none, &Validity::default())
            .unwrap_err()
            .to_string(),
        "a server certificate needs at least one ip address or dns name"
    );
    for bad in ["", "bad name", "a..b", "ünïcode.example", "x_y:80"] {
        let err = ca.issue_server(&[bad], &Validity::default()).unwrap_err();
        assert_eq!(err.to_string(), format!("invalid server name {bad:?}"));
    }
}

#[test]
fn keys_are_redacted_in_debug_output() {
    let pki = generate();
    let dbg = format!("{pki:?}");
    assert!(!dbg.contains("PRIVATE KEY"), "{dbg}");
    assert!(dbg.contains("SecretPem([redacted])"));
    assert!(
        pki.client
            .key_pem()
            .expose_secret()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    assert!(!format!("{:?}", pki.ca).contains("PRIVATE KEY"));
}

#[test]
fn loading_errors_name_the_input() {
    let pki = generate();
    let ca_pem = pki.ca.cert_pem();
    let ca_key = pki.ca.key_pem();
    let other = generate();

    let cases: Vec<(firebuild_pki::Error, &str)> = vec![
        (
            CertificateAuthority::from_pem(ca_pem, "").unwrap_err(),
            "ca key pem: no private key found",
        ),
        (
            CertificateAuthority::from_pem("", ca_key.expose_secret()).unwrap_err(),
            "ca cert pem: no certificate found",
        ),
        (
            CertificateAuthority::from_pem(ca_pem, other.ca.key_pem().expose_secret()).unwrap_err(),
            "ca key pem: private key does not match the certificate",
        ),
        (
            CertificateAuthority::from_pem(
                pki.server.cert_pem(),
                pki.server.key_pem().expose_secret(),
            )
            .unwrap_err(),
            "ca cert pem: certificate is not a ca (basicConstraints cA is not set)",
        ),
        (
            ServerBundle::from_pem(
                ca_pem,
                pki.server.cert_pem(),
                pki.client.key_pem().expose_secret(),
            )
            .unwrap_err(),
            "server key pem: private key does not match the certificate",
        ),
        (
            ServerBundle::from_pem(ca_pem, "", pki.server.key_pem().expose_secret()).unwrap_err(),
            "server cert pem: no certificate found",
        ),
        (
            ClientBundle::from_pem(
                "nothing here",
                pki.client.cert_pem(),
                pki.client.key_pem().expose_secret(),
            )
            .unwrap_err(),
            "ca cert pem: no certificate found",
        ),
        (
            ClientBundle::from_pem(ca_pem, pki.client.cert_pem(), pki.client.cert_pem())
                .unwrap_err(),
            "client key pem: no private key found",
        ),
        (
            ClientBundle::from_pem(
                ca_pem,
                pki.client.cert_pem(),
                &format!(
                    "{}{}",
                    pki.client.key_pem().expose_secret(),
                    pki.server.key_pem().expose_secret()
                ),
            )
            .unwrap_err(),
            "client key pem: more than one private key found",
        ),
    ];
    for (err, want) in cases {
        assert_eq!(err.to_string(), want);
        let dbg = format!("{err:?}");
        assert!(!dbg.contains("PRIVATE KEY"), "{dbg}");
    }
}

#[test]
fn ca_key_pem_reloads_to_an_equivalent_ca() {
    let ca = CertificateAuthority::generate(&Validity::default()).unwrap();
    let reloaded =
        CertificateAuthority::from_pem(ca.cert_pem(), ca.key_pem().expose_secret()).unwrap();
    assert_eq!(reloaded.cert_der(), ca.cert_der());
    let client = reloaded
        .issue_client(&BuildId::new("r").unwrap(), &Validity::default())
        .unwrap();
    verify_client(ca.cert_der(), &client.cert_chain_der()[0]);
}

#[test]
fn an_expired_user_ca_refuses_to_issue() {
    let now = SystemTime::now();
    let past = Validity::between(
        now - Duration::from_secs(7200),
        now - Duration::from_secs(3600),
    )
    .unwrap();
    let old = CertificateAuthority::generate(&past).unwrap();
    let loaded =
        CertificateAuthority::from_pem(old.cert_pem(), old.key_pem().expose_secret()).unwrap();
    let err = loaded
        .issue_server(&["127.0.0.1"], &Validity::default())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the issuing ca expires before the requested validity window starts"
    );
}
