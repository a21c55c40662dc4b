//! Replays the `transfer_decode` fuzz corpus (`fuzz/corpus/transfer_decode/`) through the same
//! harness as the cargo-fuzz target, on stable: in memory (what the fuzz target runs) and through
//! a real `DirSink` in a scratch directory; both must agree.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[path = "../../../fuzz/harness/transfer_decode.rs"]
mod harness;

const CORPUS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../fuzz/corpus/transfer_decode"
);

fn replay(name: &str) -> Option<u32> {
    let data = std::fs::read(format!("{CORPUS}/{name}")).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let on_disk = harness::run_dir(&data, scratch.path());
    let in_memory = harness::run(&data);
    assert_eq!(in_memory, on_disk, "{name}: memory and disk sinks disagree");
    in_memory
}

#[test]
fn corpus_replays_without_panic_or_escape() {
    let mut n = 0;
    for entry in std::fs::read_dir(CORPUS).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        replay(&name);
        n += 1;
    }
    assert!(n >= 10, "corpus has only {n} inputs");
}

#[test]
fn seeds_cover_the_happy_path_and_the_rejections() {
    // Complete, digest-verified streams: the fuzzer starts from valid input.
    assert_eq!(replay("valid_tree"), Some(5));
    assert_eq!(replay("valid_file"), Some(1));
    assert_eq!(replay("readonly_dir"), Some(3));
    assert_eq!(replay("symlink_root"), Some(1));
    assert_eq!(replay("bad_crc_then_good"), Some(1));
    assert_eq!(replay("resume_reheader"), Some(2));
    // Rejected frames leave no trace: only the root survives the traversal attempts, and only
    // root + link the entries under (and replacing) the symlink.
    assert_eq!(replay("traversal"), Some(1));
    assert_eq!(replay("under_symlink"), Some(2));
    // Broken streams never complete.
    for broken in ["truncated_file", "bad_digest", "gap_and_dup"] {
        assert_eq!(replay(broken), None, "{broken}");
    }
}
