//! Stable replay of the seed corpora of the `metadata_decode` and `imds_text` fuzz targets,
//! through the same harnesses the cargo-fuzz targets run (`fuzz/harness/`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

#[path = "../../../fuzz/harness/metadata_decode.rs"]
mod metadata_decode;

#[path = "../../../fuzz/harness/imds_text.rs"]
mod imds_text;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "empty corpus {}", dir.display());
    files
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).unwrap();
            (p, data)
        })
        .collect()
}

#[test]
fn metadata_decode_corpus() {
    let mut decoded = Vec::new();
    for (path, data) in corpus("metadata_decode") {
        if metadata_decode::run(&data) {
            decoded.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    decoded.sort();
    // The valid seeds decode, the broken ones do not.
    assert_eq!(
        decoded,
        [
            "bootstrap_v6.json",
            "conflict.json",
            "empty.json",
            "file_digest.json",
            "full.json",
            "guest-namespace-in-part.json",
            "guest-namespace.json",
            "merged_dup_uid.json",
            "network.json",
            "small.json"
        ]
    );
}

#[test]
fn imds_text_corpus() {
    let mut parsed = Vec::new();
    for (path, data) in corpus("imds_text") {
        if imds_text::run(&data) {
            parsed.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    parsed.sort();
    assert_eq!(
        parsed,
        [
            "crlf.txt",
            "double_slash.txt",
            "empty.txt",
            "listing.txt",
            "object.json"
        ]
    );
}
