//! Property: whatever a layer holds (`..`, absolute and relative symlinks pointing out, writes
//! through them, hardlinks to outside paths, whiteouts), nothing outside the root changes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::Path;

use firebuild_rootfs::layer::{Applier, Ownership};
use proptest::prelude::*;
use tar::EntryType;

#[derive(Debug, Clone)]
enum Kind {
    File,
    Dir,
    Symlink(String),
    Hardlink(String),
}

fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just("a".to_string()),
        3 => Just("b".to_string()),
        1 => Just("..".to_string()),
        1 => Just(".".to_string()),
        1 => Just(".wh.a".to_string()),
        1 => Just(".wh..wh..opq".to_string()),
        1 => Just(".wh...".to_string()),
    ]
}

fn path() -> impl Strategy<Value = String> {
    (any::<bool>(), prop::collection::vec(component(), 1..3)).prop_map(|(abs, cs)| {
        let p = cs.join("/");
        if abs { format!("/{p}") } else { p }
    })
}

fn target() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => path(),
        3 => Just("{OUT}".to_string()),
        2 => Just("{OUT}/victim".to_string()),
        1 => Just("../../..".to_string()),
        2 => Just("../../../../outside".to_string()),
        1 => Just("../../../../outside/victim".to_string()),
        1 => Just("/".to_string()),
    ]
}

fn entry() -> impl Strategy<Value = (String, Kind)> {
    (
        path(),
        prop_oneof![
            Just(Kind::File),
            Just(Kind::Dir),
            target().prop_map(Kind::Symlink),
            target().prop_map(Kind::Hardlink),
        ],
    )
}

fn layer(entries: &[(String, Kind)], outside: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (p, kind) in entries {
        let mut h = tar::Header::new_gnu();
        let (t, link) = match kind {
            Kind::File => (EntryType::Regular, None),
            Kind::Dir => (EntryType::Directory, None),
            Kind::Symlink(t) => (EntryType::Symlink, Some(t)),
            Kind::Hardlink(t) => (EntryType::Link, Some(t)),
        };
        h.set_entry_type(t);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        let data: &[u8] = if t == EntryType::Regular {
            b"PWNED"
        } else {
            b""
        };
        h.set_size(data.len() as u64);
        if let Some(l) = link {
            let l = l.replace("{OUT}", outside.to_str().unwrap());
            h.set_link_name(&l).unwrap();
        }
        // Raw name: the builder would refuse `..`, the applier must too.
        h.as_gnu_mut().unwrap().name[..p.len()].copy_from_slice(p.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn nothing_outside_the_root_changes(
        layers in prop::collection::vec(prop::collection::vec(entry(), 1..16), 1..3)
    ) {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("victim"), b"safe").unwrap();
        let root = t.path().join("x/y/root");
        fs::create_dir_all(&root).unwrap();
        let mut a = Applier::new(&root, Ownership::SideTable).unwrap();
        for (i, l) in layers.iter().enumerate() {
            // Errors are fine (refused entries); escapes are not.
            let _ = a.apply_reader(&format!("l{i}"), &layer(l, &outside)[..]);
        }
        prop_assert_eq!(fs::read(outside.join("victim")).unwrap(), b"safe".to_vec());
        prop_assert_eq!(listing(&outside), vec!["victim".to_string()]);
        prop_assert_eq!(listing(t.path()), vec!["outside".to_string(), "x".to_string()]);
        prop_assert_eq!(listing(&t.path().join("x")), vec!["y".to_string()]);
        prop_assert_eq!(listing(&t.path().join("x/y")), vec!["root".to_string()]);
        // Hardlinks never share an inode with a file outside.
        let victim_ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(outside.join("victim")).unwrap());
        let nlink = std::os::unix::fs::MetadataExt::nlink(&fs::metadata(outside.join("victim")).unwrap());
        prop_assert_eq!(nlink, 1, "victim (inode {}) was hardlinked into the root", victim_ino);
    }
}
