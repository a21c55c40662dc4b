//! The `metadata_decode` fuzz harness, shared by the cargo-fuzz target and the stable replay test
//! (`crates/mmds/tests/fuzz_corpus.rs`): bytes → bounded, validated `Metadata`. Errors are fine;
//! panics are not, and whatever decodes must re-encode to itself, merge into a valid document
//! (or a named conflict) and never show the private key in `Debug`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use firebuild_mmds::schema::{Error, Metadata};

/// Bound used by the harness (the client's default is larger; this keeps runs fast).
pub const LIMIT: usize = 64 * 1024;

/// Runs one input; returns whether it decoded.
pub fn run(data: &[u8]) -> bool {
    let md = match Metadata::from_json_slice_with_limit(data, LIMIT) {
        Ok(md) => md,
        Err(Error::TooLarge { len, .. }) => {
            assert!(len > LIMIT);
            return false;
        }
        Err(e) => {
            // Every refusal names where it happened.
            let shown = e.to_string();
            assert!(!shown.is_empty());
            return false;
        }
    };
    // The guest's own namespace (`guest`, where it writes its status) is accepted, ignored and
    // never serialised back, by design (`Metadata::guest`): the rest must survive unchanged.
    let mut md = md;
    forget_guest_namespace(&mut md);
    let again = Metadata::from_value(md.to_json_value()).expect("a valid document re-decodes");
    assert_eq!(again, md, "encode → decode changed the document");
    if let Some(b) = &md.bootstrap {
        assert_eq!(format!("{:?}", b.tls_key), "SecretPem(<redacted>)");
    }
    match md.effective() {
        Ok(eff) => {
            assert!(eff.user_data.is_empty());
            eff.validate().expect("the merged document is valid");
            if md.user_data.is_empty() {
                let mut plain = md.clone();
                plain.version = eff.version;
                assert_eq!(
                    eff, plain,
                    "merging a document without parts changes nothing"
                );
            }
        }
        Err(Error::Conflict { first, second, .. }) => assert_ne!(first, second),
        Err(Error::Invalid { .. }) => {}
        Err(e) => panic!("unexpected merge error {e:?}"),
    }
    true
}

/// Drops `guest` from a document and its user-data parts, as serialising does.
fn forget_guest_namespace(md: &mut Metadata) {
    md.guest = None;
    md.user_data.values_mut().for_each(forget_guest_namespace);
}
