//! The `imds_text` fuzz harness, shared by the cargo-fuzz target and the stable replay test
//! (`crates/mmds/tests/fuzz_corpus.rs`): the client's bounded IMDS listing parser never panics,
//! stays within its bounds, and agrees with the server's renderer both ways.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use firebuild_mmds::imds::{self, MAX_LISTING_ENTRIES};
use serde_json::{Map, Value};

/// Runs one input; returns whether it parsed as a listing.
pub fn run(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    // Input as a JSON object: render it, the listing parses back to its keys.
    if let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(text) {
        let ok_keys = obj.keys().all(|k| {
            !k.is_empty() && k != "/" && !k.chars().any(char::is_control) && k.len() < 1000
        });
        if ok_keys && !obj.keys().any(|k| k.ends_with('/')) {
            let rendered = imds::render(&Value::Object(obj.clone())).expect("objects render");
            let entries = imds::parse_listing(&rendered).expect("a rendered object parses");
            assert_eq!(entries.len(), obj.len());
            for (e, (k, v)) in entries.iter().zip(obj.iter()) {
                assert_eq!(&e.name, k);
                assert_eq!(e.is_dir, v.is_object());
            }
        }
    }
    // Input as a listing: within bounds, and rendering the entries parses back to them.
    let Ok(entries) = imds::parse_listing(text) else {
        return false;
    };
    assert!(entries.len() <= MAX_LISTING_ENTRIES);
    let mut obj = Map::new();
    for e in &entries {
        assert!(!e.name.is_empty());
        let v = if e.is_dir {
            Value::Object(Map::new())
        } else {
            Value::String(String::new())
        };
        assert!(
            obj.insert(e.name.clone(), v).is_none(),
            "duplicate key {}",
            e.name
        );
    }
    let again = imds::parse_listing(&imds::render(&Value::Object(obj)).expect("objects render"))
        .expect("a rendered listing parses");
    let mut a: Vec<_> = entries.iter().map(|e| (e.name.clone(), e.is_dir)).collect();
    let mut b: Vec<_> = again.iter().map(|e| (e.name.clone(), e.is_dir)).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    true
}
