//! COPY/ADD placement: owners, modes, contents, Docker's destination rules, confinement.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use firebuild_guest::passwd::{NewUser, UserDb};
use firebuild_guest::place::Placer;
use firebuild_plan::{Chmod, Chown, Origin, Resource, ResourceKind, Source, Transfer};

fn owner_mode(p: &Path) -> (u32, u32, u32) {
    let m = fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

fn guest() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    fs::create_dir_all(r.join("etc")).unwrap();
    fs::write(r.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::write(r.join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
    let mut db = UserDb::load(r).unwrap();
    let mut nu = NewUser::new("app");
    nu.create_home = false;
    db.add_user(&nu).unwrap();
    db.save().unwrap();
    fs::create_dir(r.join(".staging")).unwrap();
    t
}

fn staged_file(root: &Path, name: &str, content: &str, mode: u32) -> std::path::PathBuf {
    let p = root.join(".staging").join(name);
    fs::write(&p, content).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    std::os::unix::fs::chown(&p, Some(777), Some(777)).unwrap();
    p
}

fn transfer(dest: &str, chown: Option<Chown>, chmod: Option<Chmod>, sources: usize) -> Transfer {
    Transfer {
        origin: Origin::Context,
        sources: (0..sources)
            .map(|i| Source::Path {
                pattern: format!("s{i}"),
                resources: vec![],
            })
            .collect(),
        dest: dest.into(),
        chown,
        chmod,
        link: false,
        parents: false,
        exclude: vec![],
        keep_git_dir: false,
    }
}

#[test]
fn file_to_file_creates_root_owned_parents_and_keeps_mode() {
    let t = guest();
    let r = t.path();
    let s = staged_file(r, "a", "hello", 0o640);
    let p = Placer::new(r, &transfer("/opt/app/conf.txt", None, None, 1)).unwrap();
    let host = p.place(&s, "/opt/app/conf.txt", "conf.txt").unwrap();
    assert_eq!(host, r.join("opt/app/conf.txt"));
    assert_eq!(fs::read_to_string(&host).unwrap(), "hello");
    assert_eq!(
        owner_mode(&host),
        (0, 0, 0o640),
        "COPY without --chown is 0:0"
    );
    assert_eq!(owner_mode(&r.join("opt")), (0, 0, 0o755));
    assert_eq!(owner_mode(&r.join("opt/app")), (0, 0, 0o755));
    assert!(!s.exists(), "staged file consumed");
}

#[test]
fn file_into_existing_directory_and_chown_by_name() {
    let t = guest();
    let r = t.path();
    fs::create_dir(r.join("srv")).unwrap();
    let s = staged_file(r, "x", "data", 0o755);
    let chown = Chown {
        user: "app".into(),
        group: None,
    };
    let p = Placer::new(r, &transfer("/srv", Some(chown), None, 1)).unwrap();
    let res = Resource {
        id: "r".into(),
        path: "bin/tool".into(),
        kind: ResourceKind::File,
        target: "/srv".into(),
        extract: false,
    };
    let host = p.place_resource(&res, &s).unwrap();
    assert_eq!(host, r.join("srv/tool"));
    assert_eq!(owner_mode(&host), (1000, 1000, 0o755));
    assert_eq!(fs::read_to_string(&host).unwrap(), "data");
}

#[test]
fn chown_ids_groups_and_chmod() {
    let t = guest();
    let r = t.path();
    let chown = |u: &str, g: Option<&str>| {
        Some(Chown {
            user: u.into(),
            group: g.map(Into::into),
        })
    };
    let s = staged_file(r, "a", "1", 0o644);
    let p = Placer::new(
        r,
        &transfer("/a", chown("1234", None), Some(Chmod::Octal(0o600)), 1),
    )
    .unwrap();
    p.place(&s, "/a", "a").unwrap();
    assert_eq!(owner_mode(&r.join("a")), (1234, 1234, 0o600));
    let s = staged_file(r, "b", "2", 0o644);
    let sym = Some(Chmod::Symbolic("u+x,o-r".into()));
    let p = Placer::new(r, &transfer("/b", chown("app", Some("staff")), sym, 1)).unwrap();
    p.place(&s, "/b", "b").unwrap();
    assert_eq!(owner_mode(&r.join("b")), (1000, 50, 0o740));
    let err = Placer::new(r, &transfer("/c", chown("ghost", None), None, 1)).unwrap_err();
    assert!(err.to_string().contains("ghost"), "{err}");
    let err = Placer::new(r, &transfer("/c", chown("app", Some("nogroup")), None, 1)).unwrap_err();
    assert!(err.to_string().contains("nogroup"), "{err}");
}

#[test]
fn several_sources_need_a_directory_destination() {
    let t = guest();
    let err = Placer::new(t.path(), &transfer("/dest", None, None, 2)).unwrap_err();
    assert!(
        err.to_string()
            .contains("must be a directory and end with a /"),
        "{err}"
    );
    assert!(Placer::new(t.path(), &transfer("/dest/", None, None, 2)).is_ok());
}

#[test]
fn directory_contents_merge_into_the_target() {
    let t = guest();
    let r = t.path();
    fs::create_dir_all(r.join("app/sub")).unwrap();
    fs::write(r.join("app/keep"), "old").unwrap();
    fs::write(r.join("app/sub/replace"), "old").unwrap();
    fs::set_permissions(r.join("app"), fs::Permissions::from_mode(0o700)).unwrap();
    let src = r.join(".staging/tree");
    fs::create_dir_all(src.join("sub/deeper")).unwrap();
    fs::write(src.join("sub/replace"), "new").unwrap();
    fs::write(src.join("sub/deeper/f"), "f").unwrap();
    fs::set_permissions(src.join("sub/deeper"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::write(src.join("run.sh"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(src.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    symlink("run.sh", src.join("link")).unwrap();
    let chown = Chown {
        user: "app".into(),
        group: None,
    };
    let p = Placer::new(r, &transfer("/app", Some(chown), None, 1)).unwrap();
    p.place(&src, "/app", "tree").unwrap();
    assert_eq!(fs::read_to_string(r.join("app/keep")).unwrap(), "old");
    assert_eq!(
        fs::read_to_string(r.join("app/sub/replace")).unwrap(),
        "new"
    );
    assert_eq!(fs::read_to_string(r.join("app/sub/deeper/f")).unwrap(), "f");
    assert_eq!(owner_mode(&r.join("app/sub/deeper")), (1000, 1000, 0o750));
    assert_eq!(owner_mode(&r.join("app/run.sh")), (1000, 1000, 0o755));
    assert_eq!(
        fs::read_link(r.join("app/link")).unwrap(),
        Path::new("run.sh")
    );
    assert_eq!(
        owner_mode(&r.join("app")).2,
        0o700,
        "existing target keeps its mode"
    );

    // A new target directory is created with the source's mode.
    let src2 = r.join(".staging/t2");
    fs::create_dir(&src2).unwrap();
    fs::set_permissions(&src2, fs::Permissions::from_mode(0o711)).unwrap();
    fs::write(src2.join("x"), "x").unwrap();
    let p = Placer::new(r, &transfer("/new/dir", None, None, 1)).unwrap();
    p.place(&src2, "/new/dir", "t2").unwrap();
    assert_eq!(owner_mode(&r.join("new/dir")), (0, 0, 0o711));
    assert_eq!(owner_mode(&r.join("new")), (0, 0, 0o755));

    // A directory never replaces a file.
    let src3 = r.join(".staging/t3");
    fs::create_dir(&src3).unwrap();
    let err = p.place(&src3, "/app/keep", "t3").unwrap_err();
    assert!(err.to_string().contains("non-directory"), "{err}");
}

#[test]
fn symlinks_in_the_guest_never_lead_outside_the_root() {
    let t = guest();
    let r = t.path();
    let outside = tempfile::tempdir().unwrap();
    symlink(outside.path(), r.join("out")).unwrap();
    symlink("../../../../../../..", r.join("up")).unwrap();
    let s = staged_file(r, "a", "x", 0o644);
    let p = Placer::new(r, &transfer("/out/f", None, None, 1)).unwrap();
    let host = p.place(&s, "/out/f", "a").unwrap();
    assert!(host.starts_with(r), "{}", host.display());
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    let s = staged_file(r, "b", "y", 0o644);
    let host = p.place(&s, "/up/../../g", "b").unwrap();
    assert_eq!(host, r.join("g"));
}

#[test]
fn heredoc_content_is_written_with_owner_and_mode() {
    let t = guest();
    let r = t.path();
    fs::create_dir(r.join("etc/conf.d")).unwrap();
    let p = Placer::with(r, Some((1000, 50)), None);
    let host = p.place_bytes(b"k=v\n", "/etc/conf.d/", "app.conf").unwrap();
    assert_eq!(host, r.join("etc/conf.d/app.conf"));
    // buildkit's inline documents are 0664.
    assert_eq!(owner_mode(&host), (1000, 50, 0o664));
    assert_eq!(fs::read_to_string(host).unwrap(), "k=v\n");
}

fn tar_bytes(escape: bool) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_path("pkg/").unwrap();
    h.set_mode(0o750);
    h.set_uid(1234);
    h.set_gid(4321);
    h.set_size(0);
    h.set_cksum();
    b.append(&h, std::io::empty()).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_path("pkg/bin/run").unwrap();
    h.set_mode(0o4755);
    h.set_uid(1234);
    h.set_gid(4321);
    h.set_size(5);
    h.set_mtime(1_600_000_000);
    h.set_cksum();
    b.append(&h, &b"hello"[..]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_path("pkg/link").unwrap();
    h.set_link_name("/etc/passwd").unwrap();
    h.set_size(0);
    h.set_cksum();
    b.append(&h, std::io::empty()).unwrap();
    if escape {
        let mut h = tar::Header::new_old();
        let name = b"../escaped";
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_mode(0o644);
        h.set_size(1);
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
    }
    b.into_inner().unwrap()
}

fn check_extracted(r: &Path, at: &str) {
    let d = r.join(at);
    assert_eq!(owner_mode(&d.join("pkg")), (1234, 4321, 0o750));
    assert_eq!(owner_mode(&d.join("pkg/bin/run")), (1234, 4321, 0o4755));
    assert_eq!(fs::read_to_string(d.join("pkg/bin/run")).unwrap(), "hello");
    assert_eq!(
        fs::metadata(d.join("pkg/bin/run")).unwrap().mtime(),
        1_600_000_000
    );
    assert_eq!(
        fs::read_link(d.join("pkg/link")).unwrap(),
        Path::new("/etc/passwd")
    );
}

#[test]
fn add_extracts_plain_and_gzip_archives() {
    let t = guest();
    let r = t.path();
    let plain = r.join(".staging/a.tar");
    fs::write(&plain, tar_bytes(false)).unwrap();
    let p = Placer::new(r, &transfer("/opt/", None, None, 1)).unwrap();
    let res = Resource {
        id: "r".into(),
        path: "a.tar".into(),
        kind: ResourceKind::File,
        target: "/opt".into(),
        extract: true,
    };
    p.place_resource(&res, &plain).unwrap();
    check_extracted(r, "opt");

    let gz = r.join(".staging/a.tar.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&tar_bytes(false)).unwrap();
    fs::write(&gz, enc.finish().unwrap()).unwrap();
    p.extract(&gz, "/gz").unwrap();
    check_extracted(r, "gz");
}

#[test]
fn add_extracts_xz_and_zstd_archives_made_by_the_tools() {
    let t = guest();
    let r = t.path();
    let plain = r.join(".staging/a.tar");
    fs::write(&plain, tar_bytes(false)).unwrap();
    let p = Placer::with(r, None, None);
    for (tool, ext) in [("xz", "xz"), ("zstd", "zst"), ("bzip2", "bz2")] {
        let status = std::process::Command::new(tool)
            .args(["-k", "-q", "-f"])
            .arg(&plain)
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            let why = format!("{tool} is not installed");
            if std::env::var_os("CI").is_some() && tool != "bzip2" {
                panic!("{why}");
            }
            eprintln!("skipped {ext}: {why}");
            continue;
        }
        let file = r.join(format!(".staging/a.tar.{ext}"));
        p.extract(&file, &format!("/{ext}")).unwrap();
        check_extracted(r, ext);
    }
}

#[test]
fn archive_entries_cannot_escape_and_chown_overrides_owners() {
    let t = guest();
    let r = t.path();
    let bad = r.join(".staging/bad.tar");
    fs::write(&bad, tar_bytes(true)).unwrap();
    let p = Placer::with(r, None, None);
    let err = p.extract(&bad, "/x").unwrap_err();
    assert!(err.to_string().contains("escapes"), "{err}");
    assert!(!r.join("escaped").exists());

    let good = r.join(".staging/good.tar");
    fs::write(&good, tar_bytes(false)).unwrap();
    let p = Placer::with(r, Some((1000, 50)), None);
    p.extract(&good, "/y").unwrap();
    assert_eq!(owner_mode(&r.join("y/pkg/bin/run")), (1000, 50, 0o4755));
}

#[test]
fn add_copies_what_is_not_a_tar_as_it_is() {
    let t = guest();
    let r = t.path();
    let staging = r.join(".staging");
    let gz_text = staging.join("notes.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(b"not a tar\n").unwrap();
    fs::write(&gz_text, enc.finish().unwrap()).unwrap();
    let empty = staging.join("empty.tar");
    fs::write(&empty, b"").unwrap();
    let text = staging.join("text.tar");
    fs::write(&text, b"hello\n").unwrap();
    for path in [&gz_text, &empty, &text] {
        assert!(
            !firebuild_guest::place::is_archive(path).unwrap(),
            "{}",
            path.display()
        );
    }
    let tar = staging.join("a.tar");
    fs::write(&tar, tar_bytes(false)).unwrap();
    assert!(firebuild_guest::place::is_archive(&tar).unwrap());
    let gz = staging.join("a.tar.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&tar_bytes(false)).unwrap();
    fs::write(&gz, enc.finish().unwrap()).unwrap();
    assert!(firebuild_guest::place::is_archive(&gz).unwrap());
}
