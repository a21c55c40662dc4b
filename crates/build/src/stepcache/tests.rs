#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::FileExt as _;
use std::path::Path;

use super::store::CHUNK;
use super::*;

/// A sparse image of `size` bytes with `data` written at each offset.
fn image(path: &Path, size: u64, data: &[(u64, &[u8])]) {
    let f = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap();
    f.set_len(size).unwrap();
    for (offset, bytes) in data {
        f.write_all_at(bytes, *offset).unwrap();
    }
}

fn publish(store: &Store, key: &str, path: &Path) -> Published {
    let _lock = store.lock(false).unwrap();
    store
        .publish(
            key,
            path,
            format!("test {key}"),
            serde_json::json!({"base": {"kind": "scratch"}}),
        )
        .unwrap()
}

#[test]
fn an_image_round_trips_sparse_and_shares_its_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path().join("steps"));
    let a = dir.path().join("a.img");
    let size = 64 * CHUNK + 123;
    image(
        &a,
        size,
        &[
            (5, b"hello"),
            (10 * CHUNK, &[7u8; 4096]),
            (size - 3, b"end"),
        ],
    );
    let first = publish(&store, "k1", &a);
    assert_eq!(first.written, 3 * CHUNK - CHUNK + 123, "{first:?}");
    // One chunk changed: only it is written.
    image(&a, size, &[(10 * CHUNK + 8192, b"more")]);
    let second = publish(&store, "k2", &a);
    assert_eq!(second.written, CHUNK, "{second:?}");
    let back = dir.path().join("back.img");
    let entry = store.get("k2").unwrap();
    store.restore(&entry, &back).unwrap();
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&a).unwrap());
    let allocated = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&back).unwrap());
    assert!(
        allocated * 512 < 4 * CHUNK,
        "restored image not sparse: {allocated} blocks"
    );
    // Publishing a key again changes nothing.
    assert_eq!(publish(&store, "k2", &a).written, 0);
}

#[test]
fn a_corrupt_or_missing_chunk_is_a_miss_and_the_entry_goes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path().join("steps"));
    let a = dir.path().join("a.img");
    image(&a, 4 * CHUNK, &[(0, b"one"), (2 * CHUNK, b"two")]);
    publish(&store, "start", &a);
    image(&a, 4 * CHUNK, &[(3 * CHUNK, b"three")]);
    publish(&store, "step1", &a);
    // Corrupt the chunk only step1 has.
    let only = store.get("step1").unwrap().chunks[2].digest.clone();
    let chunk = dir.path().join("steps/chunks").join(&only[..2]).join(&only);
    std::fs::write(&chunk, b"garbage").unwrap();
    let keys = StageKeys {
        start: "start".into(),
        steps: vec!["step1".into()],
        stopped: None,
    };
    let out = dir.path().join("out.img");
    let restored = restore_longest(&store, &keys, &out).unwrap();
    assert_eq!(restored.done, 0, "fell back to the start");
    assert!(store.get("step1").is_none(), "the corrupt entry is dropped");
    assert_eq!(restored.meta.base.kind, "scratch");
    // Nothing stored at all: a miss, and no half-written image left behind.
    let empty = Store::new(dir.path().join("none"));
    assert!(restore_longest(&empty, &keys, &out).is_none());
    assert!(!out.exists());
}

#[test]
fn a_killed_publish_leaves_no_entry() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path().join("steps"));
    let a = dir.path().join("a.img");
    image(&a, 2 * CHUNK, &[(0, b"data")]);
    publish(&store, "done", &a);
    // A publish killed after writing its chunks and a temporary entry, before the rename.
    let entries = dir.path().join("steps/entries");
    std::fs::write(
        entries.join(".tmp-partial"),
        b"{\"format\":1,\"key\":\"half\"",
    )
    .unwrap();
    std::fs::write(dir.path().join("steps/chunks/.tmp-x"), b"").ok();
    assert!(store.get("half").is_none());
    let listed: Vec<String> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|(e, _)| e.key)
        .collect();
    assert_eq!(listed, ["done"]);
    // A truncated entry file under the final name (a disk that lost the rename's data) is
    // not an entry either.
    std::fs::write(entries.join("trunc.json"), b"{\"format\":1,").unwrap();
    assert!(store.get("trunc").is_none());
    store.prune(|_, _, _| false).unwrap();
    assert!(
        !entries.join(".tmp-partial").exists(),
        "prune removes leftovers"
    );
}

#[test]
fn prune_keeps_the_most_recent_within_the_limit_and_collects_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path().join("steps"));
    let a = dir.path().join("a.img");
    for (i, key) in ["old", "mid", "new"].iter().enumerate() {
        let _ = std::fs::remove_file(&a);
        image(&a, 8 * CHUNK, &[(i as u64 * CHUNK, &[i as u8 + 1; 100])]);
        publish(&store, key, &a);
        let when = std::time::SystemTime::now() - std::time::Duration::from_secs(100 - i as u64);
        let entry = dir.path().join(format!("steps/entries/{key}.json"));
        std::fs::File::options()
            .write(true)
            .open(entry)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }
    let order: Vec<String> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|(e, _)| e.key)
        .collect();
    assert_eq!(order, ["new", "mid", "old"]);
    // One chunk each: the most recent fits the limit, the others would exceed it.
    let removed = store.prune(|_, _, kept| kept > CHUNK).unwrap();
    let removed: Vec<String> = removed.into_iter().map(|e| e.key).collect();
    assert_eq!(removed, ["mid", "old"]);
    let (_, chunks) = store.disk_usage();
    assert_eq!(chunks, store.get("new").unwrap().chunks.len());
    store
        .restore(&store.get("new").unwrap(), &dir.path().join("ok.img"))
        .unwrap();
}

#[test]
fn concurrent_publishers_share_one_store() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let root = root.clone();
            std::thread::spawn(move || {
                let store = Store::new(root.join("steps"));
                let img = root.join(format!("{t}.img"));
                for i in 0..5u8 {
                    // Half the chunks are the same in every thread.
                    image(
                        &img,
                        4 * CHUNK,
                        &[(0, &[9u8; 64]), (CHUNK, &[t as u8 * 10 + i; 64])],
                    );
                    publish(&store, &format!("t{t}-{i}"), &img);
                }
            })
        })
        .collect();
    let pruner = {
        let root = root.clone();
        std::thread::spawn(move || {
            let store = Store::new(root.join("steps"));
            for _ in 0..5 {
                store.prune(|e, _, _| e.key.ends_with("-0")).unwrap();
            }
        })
    };
    for t in threads {
        t.join().unwrap();
    }
    pruner.join().unwrap();
    let store = Store::new(root.join("steps"));
    for (entry, _) in store.list().unwrap() {
        store.restore(&entry, &root.join("check.img")).unwrap();
    }
    assert!(store.list().unwrap().len() >= 16);
}

#[test]
fn stubs_are_found_and_removed_in_one_debugfs_run_and_a_used_one_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sys")).unwrap();
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    let img = dir.path().join("root.ext4");
    let opts = firebuild_rootfs::ext4::Ext4Options {
        size: Some(16 << 20),
        ..Default::default()
    };
    firebuild_rootfs::ext4::make_ext4(&tree, &img, &Default::default(), &opts).unwrap();
    assert_eq!(missing_stubs(&img).unwrap(), ["/proc", "/dev"]);
    // What the guest's PID 1 leaves: the stubs it made, empty.
    std::fs::create_dir(tree.join("proc")).unwrap();
    std::fs::create_dir(tree.join("dev")).unwrap();
    firebuild_rootfs::ext4::make_ext4(&tree, &img, &Default::default(), &opts).unwrap();
    assert!(missing_stubs(&img).unwrap().is_empty());
    // A name outside the three is never passed to debugfs.
    let stubs = ["/proc".to_owned(), "/dev".to_owned(), "/etc".to_owned()];
    remove_stubs(&img, &stubs).unwrap();
    assert_eq!(missing_stubs(&img).unwrap(), ["/proc", "/dev"]);
    // A stub something was written into stays, and says so.
    std::fs::write(tree.join("dev/kept"), "").unwrap();
    firebuild_rootfs::ext4::make_ext4(&tree, &img, &Default::default(), &opts).unwrap();
    let err = remove_stubs(&img, &["/dev".to_owned()])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("rmdir /dev") && err.contains("root.ext4"),
        "{err}"
    );
}
