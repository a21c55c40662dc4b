//! Property tests: build ids survive the trip through a certificate, and the id grammar holds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use firebuild_pki::{BuildId, CertificateAuthority, ClientBundle, Validity, client_build_id};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// id → client certificate → PEM → load → id.
    #[test]
    fn build_id_round_trips_through_a_certificate(id in "[A-Za-z0-9._-]{1,64}") {
        let id = BuildId::new(id).unwrap();
        let ca = CertificateAuthority::generate(&Validity::default()).unwrap();
        let issued = ca.issue_client(&id, &Validity::default()).unwrap();
        let loaded = ClientBundle::from_pem(
            issued.ca_cert_pem(),
            issued.cert_pem(),
            issued.key_pem().expose_secret(),
        )
        .unwrap();
        prop_assert_eq!(client_build_id(&loaded.cert_chain_der()[0]), Some(id));
    }

    /// Accepted exactly when 1..=64 bytes of [A-Za-z0-9._-].
    #[test]
    fn build_id_grammar(s in "\\PC{0,70}") {
        let valid = !s.is_empty()
            && s.len() <= 64
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        prop_assert_eq!(BuildId::new(s.clone()).is_ok(), valid, "{:?}", s);
    }
}
