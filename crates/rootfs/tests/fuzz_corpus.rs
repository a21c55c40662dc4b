//! Replays the `oci_layer` fuzz corpus (`fuzz/corpus/oci_layer/`) through the same harness as
//! the cargo-fuzz target (`fuzz/harness/oci_layer.rs`), on stable: no input may panic, reach
//! outside the root, or extract more than the limit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::Path;

use firebuild_rootfs::Error;

#[path = "../../../fuzz/harness/oci_layer.rs"]
mod harness;

use harness::{LIMITS, Node};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/oci_layer");

fn replay(name: &str) -> harness::Outcome {
    let data = std::fs::read(format!("{CORPUS}/{name}")).unwrap();
    eprintln!("replaying {name}");
    harness::run(&data)
}

fn node(o: &harness::Outcome, p: &str) -> Option<Node> {
    o.tree.nodes.get(Path::new(p)).cloned()
}

#[test]
fn corpus_replays_within_the_invariants() {
    let mut n = 0;
    for entry in std::fs::read_dir(CORPUS).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        replay(&name);
        n += 1;
    }
    assert!(n >= 20, "corpus has only {n} inputs");
}

#[test]
fn valid_layers_apply_whatever_the_compression() {
    let plain = replay("valid.tar");
    let digest = plain.result.as_ref().unwrap().clone();
    assert_eq!(node(&plain, "usr/local/bin/tool"), Some(Node::File(18)));
    assert_eq!(node(&plain, "usr/local/bin/tool2"), Some(Node::File(18)));
    assert_eq!(node(&plain, "sbin"), Some(Node::Symlink("usr/sbin".into())));
    for compressed in ["valid.tar.gz", "valid.tar.zst"] {
        let o = replay(compressed);
        assert_eq!(o.result.as_ref().unwrap(), &digest, "{compressed}");
        // Same paths (device nodes are placeholders or nodes depending on the ownership the
        // input's length picks).
        let keys = |o: &harness::Outcome| o.tree.nodes.keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&o), keys(&plain), "{compressed}");
    }
    let o = replay("pax_xattr_long.tar");
    assert!(o.result.is_ok(), "{:?}", o.result);
    assert_eq!(
        node(&o, "usr/bin/ping"),
        Some(Node::File(4)),
        "bin -> usr/bin"
    );
}

#[test]
fn bombs_stop_at_the_limit_while_extracting() {
    for bomb in ["gzip_bomb.tar.gz", "zstd_bomb.tar.zst", "sparse_bomb.tar"] {
        let o = replay(bomb);
        assert!(
            matches!(o.result, Err(Error::LayerLimit { limit, .. }) if limit == LIMITS.max_bytes),
            "{bomb}: {:?}",
            o.result
        );
        assert!(o.usage.stream_bytes <= LIMITS.max_bytes, "{bomb}");
        assert!(o.tree.written <= LIMITS.max_bytes, "{bomb}");
    }
    let o = replay("many_entries.tar.gz");
    assert!(
        matches!(
            o.result,
            Err(Error::LayerLimit {
                what: "entry count",
                ..
            })
        ),
        "{:?}",
        o.result
    );
}

#[test]
fn hostile_layers_stay_inside_the_root() {
    let o = replay("traversal.tar");
    assert!(o.result.is_err(), "`..` is refused");
    let o = replay("symlink_escape.tar");
    // Writes through symlinks out of the root land inside it (chroot semantics).
    assert_eq!(node(&o, "tmp/outside/pwned"), Some(Node::File(1)));
    assert_eq!(node(&o, "pwned"), Some(Node::File(1)));
    assert_eq!(node(&o, "usr/lib/x"), Some(Node::File(29)));
    let o = replay("whiteout_dotdot.tar");
    assert!(o.result.is_err(), "a whiteout of `..` is refused");
    assert_eq!(node(&o, ""), Some(Node::Dir));
    let o = replay("hardlink_outside.tar");
    assert!(o.result.is_err(), "a hardlink with `..` is refused");
}

#[test]
fn whiteouts_and_opaque_directories_apply() {
    let o = replay("opaque.tar");
    assert!(o.result.is_ok(), "{:?}", o.result);
    assert_eq!(node(&o, "d/new"), Some(Node::File(1)));
    assert_eq!(node(&o, "d/old"), None, "opaque d/ hides the lower d/old");
    assert_eq!(node(&o, "etc"), None, "whiteout .wh.etc");
    // The root made opaque keeps only what this layer added.
    let names: Vec<_> = o.tree.nodes.keys().collect();
    assert_eq!(names.len(), 3, "{names:?}");
}
