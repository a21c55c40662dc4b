//! Replays the `cpio_source` fuzz corpus (`fuzz/corpus/cpio_source/`) through the same harness as
//! the cargo-fuzz target, on stable.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[path = "../../../fuzz/harness/cpio_source.rs"]
mod harness;

use harness::Verdict;

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/cpio_source");

fn replay(name: &str) -> Verdict {
    harness::run(&std::fs::read(format!("{CORPUS}/{name}")).unwrap())
}

#[test]
fn corpus_replays_without_panic() {
    let mut n = 0;
    for entry in std::fs::read_dir(CORPUS).unwrap() {
        replay(&entry.unwrap().file_name().into_string().unwrap());
        n += 1;
    }
    assert!(n >= 10, "corpus has only {n} inputs");
}

#[test]
fn seeds_reach_every_verdict() {
    for f in ["newc", "odc", "binle", "binbe"] {
        assert_eq!(replay(&format!("full-{f}")), Verdict::Valid, "full-{f}");
    }
    assert_eq!(replay("bad-json-odc"), Verdict::Invalid);
    assert_eq!(replay("bad-toml-newc"), Verdict::Unmapped);
    assert_eq!(replay("truncated-newc"), Verdict::Refused);
    assert_eq!(replay("huge-size-newc"), Verdict::Refused);
    assert_eq!(replay("not-cpio"), Verdict::Refused);
}
