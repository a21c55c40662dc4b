//! Encode a generated tree, reassemble it into a `DirSink`, compare bytes and metadata.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::{self, File, FileTimes, Permissions};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use firebuild_transfer::{
    ChunkPlanner, DirSink, Error, Frame, Ownership, Reassembler, ResourceEncoder,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Kind {
    File(Vec<u8>),
    Dir,
    Link(String),
}

#[derive(Debug, Clone)]
struct Spec {
    path: Vec<u8>,
    kind: Kind,
    mode: u32,
    mtime: (u64, u32),
}

const NAMES: [&str; 5] = ["a", "b", "dir", "x.txt", "Z z"];

fn spec() -> impl Strategy<Value = Spec> {
    let kind = prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..3000).prop_map(Kind::File),
        2 => Just(Kind::Dir),
        1 => "[a-z./]{1,12}".prop_map(Kind::Link),
    ];
    (
        proptest::collection::vec(0u8..5, 1..4),
        kind,
        0u32..0o10000,
        (0u64..2_000_000_000, 0u32..1_000_000_000),
    )
        .prop_map(|(path, kind, mode, mtime)| Spec {
            path,
            kind,
            mode,
            mtime,
        })
}

fn set_mtime(path: &Path, (secs, nanos): (u64, u32)) {
    let t = UNIX_EPOCH + Duration::new(secs, nanos);
    File::open(path)
        .unwrap()
        .set_times(FileTimes::new().set_modified(t))
        .unwrap();
}

/// Builds the tree under `root`; specs that collide with existing entries are dropped.
fn build(root: &Path, specs: &[Spec]) {
    let mut dirs: Vec<(PathBuf, u32, (u64, u32))> = Vec::new();
    for s in specs {
        let rel: PathBuf = s.path.iter().map(|&i| NAMES[i as usize]).collect();
        let path = root.join(&rel);
        let parent = path.parent().unwrap();
        if fs::create_dir_all(parent).is_err() || fs::symlink_metadata(&path).is_ok() {
            continue;
        }
        match &s.kind {
            Kind::File(data) => {
                fs::write(&path, data).unwrap();
                set_mtime(&path, s.mtime);
                // Owner must keep read access for the sender; setuid/setgid/sticky bits allowed.
                fs::set_permissions(&path, Permissions::from_mode(s.mode | 0o400)).unwrap();
            }
            Kind::Dir => {
                fs::create_dir(&path).unwrap();
                dirs.push((path, s.mode & 0o777 | 0o700, s.mtime));
            }
            Kind::Link(target) => std::os::unix::fs::symlink(target, &path).unwrap(),
        }
    }
    for (path, mode, mtime) in dirs.into_iter().rev() {
        set_mtime(&path, mtime);
        fs::set_permissions(&path, Permissions::from_mode(mode)).unwrap();
    }
}

/// Asserts that `b` is an identical copy of `a` (content, kind, mode, mtime, link targets).
fn assert_same(a: &Path, b: &Path) {
    let (ma, mb) = (
        fs::symlink_metadata(a).unwrap(),
        fs::symlink_metadata(b).unwrap(),
    );
    assert_eq!(ma.file_type(), mb.file_type(), "{}", b.display());
    if ma.file_type().is_symlink() {
        assert_eq!(fs::read_link(a).unwrap(), fs::read_link(b).unwrap());
        return;
    }
    assert_eq!(
        ma.mode() & 0o7777,
        mb.mode() & 0o7777,
        "mode of {}",
        b.display()
    );
    assert_eq!(
        (ma.mtime(), ma.mtime_nsec()),
        (mb.mtime(), mb.mtime_nsec()),
        "mtime of {}",
        b.display()
    );
    if ma.is_file() {
        assert_eq!(
            fs::read(a).unwrap(),
            fs::read(b).unwrap(),
            "{}",
            b.display()
        );
        return;
    }
    let names = |p: &Path| {
        let mut v: Vec<_> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    let (na, nb) = (names(a), names(b));
    assert_eq!(na, nb, "entries of {}", b.display());
    for n in na {
        assert_same(&a.join(&n), &b.join(&n));
    }
}

fn encode_all(src: &Path, chunk: usize) -> Vec<Frame> {
    ResourceEncoder::new(src, ChunkPlanner::fixed(chunk).unwrap())
        .unwrap()
        .map(|f| f.unwrap())
        .collect()
}

fn sink(dst: &Path) -> DirSink {
    DirSink::new(dst)
        .ownership(Ownership::Never)
        .root_dir_metadata(true)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn tree_round_trip(specs in proptest::collection::vec(spec(), 0..24), chunk in 1usize..5000) {
        let src = tempfile::tempdir().unwrap();
        let root = src.path().join("src");
        fs::create_dir(&root).unwrap();
        build(&root, &specs);
        let dst = tempfile::tempdir().unwrap();
        let out = dst.path().join("out");
        let mut rx = Reassembler::new(sink(&out));
        let enc = ResourceEncoder::new(&root, ChunkPlanner::fixed(chunk).unwrap()).unwrap();
        let count = enc.entry_count();
        for f in enc {
            let f = f.unwrap();
            if let Frame::Chunk(c) = &f {
                prop_assert!(c.data.len() <= chunk);
            }
            rx.push(f).unwrap();
        }
        let outcome = rx.finish().unwrap();
        prop_assert_eq!(outcome.entries, count);
        assert_same(&root, &out);
        // Deterministic: a second encoding of the same tree gives the same digest.
        let again = encode_all(&root, chunk.max(7));
        prop_assert!(matches!(again.last(), Some(Frame::Eof(e)) if e.digest == outcome.digest));
    }

    #[test]
    fn resume_after_cut(specs in proptest::collection::vec(spec(), 1..16),
                        chunk in 1usize..700, cut in 0.0f64..1.0) {
        let src = tempfile::tempdir().unwrap();
        let root = src.path().join("src");
        fs::create_dir(&root).unwrap();
        build(&root, &specs);
        let full = encode_all(&root, chunk);
        let Some(Frame::Eof(eof)) = full.last() else { panic!("no eof") };
        let at = ((full.len() as f64) * cut) as usize;

        let dst = tempfile::tempdir().unwrap();
        let out = dst.path().join("out");
        let mut rx = Reassembler::new(sink(&out));
        for f in &full[..at] {
            rx.push_ref(f).unwrap();
        }
        // Disconnect: the transfer is not complete.
        let truncated = matches!(rx.finish(), Err(Error::Truncated { .. }));
        prop_assert!(truncated || at == full.len());
        let point = rx.resume_point();
        let resumed = ResourceEncoder::builder(&root)
            .planner(ChunkPlanner::fixed(chunk).unwrap())
            .resume_from(point)
            .build()
            .unwrap();
        for f in resumed {
            rx.push(f.unwrap()).unwrap();
        }
        let outcome = rx.finish().unwrap();
        prop_assert_eq!(outcome.digest, eof.digest);
        assert_same(&root, &out);
    }
}

#[test]
fn single_file_outcome_has_plain_sha256_and_planner_limit_holds() {
    let src = tempfile::tempdir().unwrap();
    let f = src.path().join("blob");
    let data: Vec<u8> = (0..1_000_003u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(&f, &data).unwrap();
    // A message limit of 100 000 bytes with 40 bytes of framing.
    let planner = ChunkPlanner::with_overhead(100_000, 40).unwrap();
    let enc = ResourceEncoder::builder(&f)
        .planner(planner)
        .plain_sha256(true)
        .build()
        .unwrap();
    let dst = tempfile::tempdir().unwrap();
    let target = dst.path().join("copy");
    let mut rx = Reassembler::new(sink(&target)).plain_sha256(true);
    let mut chunks = 0;
    for fr in enc {
        let fr = fr.unwrap();
        if let Frame::Chunk(c) = &fr {
            assert!(c.data.len() + 40 <= 100_000);
            chunks += 1;
        }
        rx.push(fr).unwrap();
    }
    assert_eq!(chunks, 11);
    let outcome = rx.finish().unwrap();
    assert_eq!(
        outcome.file_sha256,
        Some(firebuild_transfer::digest::sha256(&data))
    );
    assert_eq!(fs::read(&target).unwrap(), data);
}

#[test]
fn corrupted_chunk_then_resume_completes() {
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("a"), vec![3u8; 10_000]).unwrap();
    fs::write(src.path().join("b"), vec![4u8; 10_000]).unwrap();
    let mut frames = encode_all(src.path(), 1000);
    let Some(Frame::Chunk(c)) = frames.get_mut(8) else {
        panic!()
    };
    let mut data = c.data.to_vec();
    data[10] ^= 0xff;
    c.data = data.into();
    let dst = tempfile::tempdir().unwrap();
    let mut rx = Reassembler::new(sink(dst.path()));
    let mut err = None;
    for f in frames {
        if let Err(e) = rx.push(f) {
            err = Some(e);
            break;
        }
    }
    let err = err.unwrap();
    assert!(
        matches!(
            err,
            Error::BadChecksum {
                chunk: 6,
                offset: 6000,
                ..
            }
        ),
        "{err}"
    );
    let point = rx.resume_point();
    assert_eq!((point.entry, point.offset), (1, 6000));
    for f in ResourceEncoder::builder(src.path())
        .planner(ChunkPlanner::fixed(1000).unwrap())
        .resume_from(point)
        .build()
        .unwrap()
    {
        rx.push(f.unwrap()).unwrap();
    }
    rx.finish().unwrap();
    assert_eq!(fs::read(dst.path().join("a")).unwrap(), vec![3u8; 10_000]);
}
