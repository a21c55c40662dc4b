//! `COPY --from`: real trees in temporary directories, as root (chown, mknod, security xattrs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, lchown, symlink};
use std::path::Path;

use firebuild_guest::copy_from;
use firebuild_plan::{Chmod, Chown, Origin, Source, Transfer};
use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps, XattrFlags};

/// `security.capability` for `cap_net_bind_service+ep` (VFS_CAP_REVISION_2, as setcap writes).
const CAP: [u8; 20] = [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

fn is_root() -> bool {
    if rustix::process::geteuid().as_raw() == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("copy_from tests need root (chown, mknod, security xattrs)");
    }
    eprintln!("skipped: copy_from tests need root");
    false
}

fn transfer(patterns: &[&str], dest: &str) -> Transfer {
    Transfer {
        origin: Origin::Stage { index: 0 },
        sources: patterns
            .iter()
            .map(|p| Source::Path {
                pattern: (*p).into(),
                resources: Vec::new(),
            })
            .collect(),
        dest: dest.into(),
        chown: None,
        chmod: None,
        link: false,
        parents: false,
        exclude: Vec::new(),
        keep_git_dir: false,
    }
}

fn set_mtime(p: &Path, secs: i64) {
    let t = Timespec {
        tv_sec: secs,
        tv_nsec: 5_000,
    };
    let times = Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(CWD, p, &times, AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

fn file(p: &Path, content: &str, mode: u32, owner: (u32, u32), mtime: i64) {
    fs::write(p, content).unwrap();
    lchown(p, Some(owner.0), Some(owner.1)).unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    set_mtime(p, mtime);
}

fn dir(p: &Path, mode: u32, owner: (u32, u32)) {
    fs::create_dir_all(p).unwrap();
    lchown(p, Some(owner.0), Some(owner.1)).unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// A source stage: `/app` with every kind of entry and metadata, `/out` for globs,
/// `/lib -> usr/lib`, `/escape -> /`.
fn source_tree() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let s = t.path();
    let app = s.join("app");
    dir(&app, 0o750, (1000, 1000));
    dir(&app.join("bin"), 0o755, (1000, 1000));
    file(
        &app.join("bin/hello"),
        "hello",
        0o4755,
        (1000, 1000),
        1_100_000,
    );
    file(
        &app.join("data.txt"),
        "data",
        0o640,
        (1000, 1001),
        1_200_000,
    );
    rustix::fs::lsetxattr(
        app.join("data.txt"),
        "user.note",
        b"hi",
        XattrFlags::empty(),
    )
    .unwrap();
    file(&app.join("capped"), "cap", 0o755, (0, 0), 1_300_000);
    rustix::fs::lsetxattr(
        app.join("capped"),
        "security.capability",
        &CAP,
        XattrFlags::empty(),
    )
    .unwrap();
    symlink("bin/hello", app.join("link")).unwrap();
    lchown(app.join("link"), Some(1000), Some(1000)).unwrap();
    set_mtime(&app.join("link"), 1_400_000);
    file(&app.join("hard1"), "same", 0o644, (1000, 1000), 1_500_000);
    fs::hard_link(app.join("hard1"), app.join("bin/hard2")).unwrap();
    rustix::fs::mknodat(
        CWD,
        app.join("fifo"),
        FileType::Fifo,
        Mode::from_raw_mode(0o620),
        0,
    )
    .unwrap();
    lchown(app.join("fifo"), Some(1000), Some(1000)).unwrap();
    fs::set_permissions(app.join("fifo"), fs::Permissions::from_mode(0o620)).unwrap();
    rustix::fs::mknodat(
        CWD,
        app.join("null"),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    set_mtime(&app.join("bin"), 1_600_000);
    set_mtime(&app, 1_700_000);

    dir(&s.join("out"), 0o755, (0, 0));
    for n in ["a.so", "b.so", "c.txt"] {
        file(&s.join("out").join(n), n, 0o644, (7, 7), 1_000);
    }
    dir(&s.join("usr/lib"), 0o755, (0, 0));
    file(&s.join("usr/lib/libx.so"), "x", 0o644, (0, 0), 1_000);
    symlink("usr/lib", s.join("lib")).unwrap();
    symlink("/", s.join("escape")).unwrap();
    t
}

/// An image being built: `/etc` with a passwd naming `app` (2000:3000).
fn dest_tree() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    fs::create_dir(t.path().join("etc")).unwrap();
    fs::write(
        t.path().join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:2000:3000::/home/app:/bin/sh\n",
    )
    .unwrap();
    fs::write(t.path().join("etc/group"), "root:x:0:\napp:x:3000:\n").unwrap();
    t
}

fn meta(p: &Path) -> fs::Metadata {
    fs::symlink_metadata(p).unwrap()
}

fn owner_mode(p: &Path) -> (u32, u32, u32) {
    let m = meta(p);
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

#[test]
fn a_directory_is_copied_with_every_property_kept() {
    if !is_root() {
        return;
    }
    let src = source_tree();
    let dst = dest_tree();
    copy_from::copy(src.path(), dst.path(), &transfer(&["/app/"], "/srv/app")).unwrap();
    let d = dst.path().join("srv/app");

    // The created destination directory takes the source directory's metadata; its missing
    // parent is root's, 0755.
    assert_eq!(owner_mode(&d), (1000, 1000, 0o750));
    assert_eq!(owner_mode(&dst.path().join("srv")), (0, 0, 0o755));
    assert_eq!(meta(&d).mtime(), 1_700_000);
    assert_eq!(
        meta(&d.join("bin")).mtime(),
        1_600_000,
        "dir time after children"
    );

    // Owners kept (not 0:0 as a context COPY would), setuid kept, contents and times.
    assert_eq!(owner_mode(&d.join("bin/hello")), (1000, 1000, 0o4755));
    assert_eq!(fs::read_to_string(d.join("bin/hello")).unwrap(), "hello");
    let m = meta(&d.join("bin/hello"));
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_100_000, 5_000));
    assert_eq!(owner_mode(&d.join("data.txt")), (1000, 1001, 0o640));

    // xattrs, the capability surviving the lchown.
    let mut buf = [0u8; 64];
    let n = rustix::fs::lgetxattr(d.join("data.txt"), "user.note", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"hi");
    let n = rustix::fs::lgetxattr(d.join("capped"), "security.capability", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], &CAP);

    // A symlink stays a link, with its owner and time.
    let l = meta(&d.join("link"));
    assert!(l.file_type().is_symlink());
    assert_eq!(
        fs::read_link(d.join("link")).unwrap(),
        Path::new("bin/hello")
    );
    assert_eq!((l.uid(), l.gid(), l.mtime()), (1000, 1000, 1_400_000));

    // The hard link pair is still one inode.
    let (h1, h2) = (meta(&d.join("hard1")), meta(&d.join("bin/hard2")));
    assert_eq!((h1.ino(), h1.nlink()), (h2.ino(), 2));

    // Device nodes recreated; a fifo skipped, as BuildKit's copier skips it.
    assert!(fs::symlink_metadata(d.join("fifo")).is_err());
    let c = meta(&d.join("null"));
    assert!(c.file_type().is_char_device());
    assert_eq!(c.rdev(), rustix::fs::makedev(1, 3));

    // Copying again merges into the existing tree and replaces files.
    fs::write(d.join("data.txt"), "changed").unwrap();
    fs::write(d.join("extra"), "kept").unwrap();
    copy_from::copy(src.path(), dst.path(), &transfer(&["/app"], "/srv/app")).unwrap();
    assert_eq!(fs::read_to_string(d.join("data.txt")).unwrap(), "data");
    assert_eq!(fs::read_to_string(d.join("extra")).unwrap(), "kept");
}

#[test]
fn chown_and_chmod_override_the_source() {
    if !is_root() {
        return;
    }
    let src = source_tree();
    let dst = dest_tree();
    let mut t = transfer(&["/app"], "/opt/app/");
    t.chown = Some(Chown {
        user: "app".into(),
        group: None,
    });
    t.chmod = Some(Chmod::Octal(0o700));
    copy_from::copy(src.path(), dst.path(), &t).unwrap();
    let d = dst.path().join("opt/app");
    assert_eq!(owner_mode(&dst.path().join("opt")), (2000, 3000, 0o755));
    for f in ["bin", "bin/hello", "data.txt", "hard1", "capped"] {
        assert_eq!(owner_mode(&d.join(f)), (2000, 3000, 0o700), "{f}");
    }
    let l = meta(&d.join("link"));
    assert_eq!((l.uid(), l.gid()), (2000, 3000));
    // The capability is set after the chown that would have cleared it.
    let mut buf = [0u8; 64];
    let n = rustix::fs::lgetxattr(d.join("capped"), "security.capability", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], &CAP);

    let mut t = transfer(&["/out/a.so"], "/a.so");
    t.chown = Some(Chown {
        user: "55".into(),
        group: Some("66".into()),
    });
    t.chmod = Some(Chmod::Symbolic("u+x,g-r".into()));
    copy_from::copy(src.path(), dst.path(), &t).unwrap();
    assert_eq!(owner_mode(&dst.path().join("a.so")), (55, 66, 0o704));

    let mut t = transfer(&["/out/a.so"], "/b.so");
    t.chown = Some(Chown {
        user: "nobody-here".into(),
        group: None,
    });
    let err = copy_from::copy(src.path(), dst.path(), &t).unwrap_err();
    assert!(err.to_string().contains("nobody-here"), "{err}");
}

#[test]
fn globs_files_and_directory_destinations() {
    if !is_root() {
        return;
    }
    let src = source_tree();
    let dst = dest_tree();
    let d = dst.path();
    copy_from::copy(src.path(), d, &transfer(&["/out/*.so"], "/lib/")).unwrap();
    let mut names: Vec<_> = fs::read_dir(d.join("lib"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a.so", "b.so"]);
    assert_eq!(owner_mode(&d.join("lib/a.so")), (7, 7, 0o644));
    assert_eq!(meta(&d.join("lib/a.so")).mtime(), 1_000);

    // Several matches and a destination that is not a directory.
    let err = copy_from::copy(src.path(), d, &transfer(&["/out/[ab].so"], "/one")).unwrap_err();
    assert!(err.to_string().contains("must be a directory"), "{err}");
    assert!(!d.join("one").exists());

    // A file into an existing directory keeps its name; elsewhere it takes the destination's.
    copy_from::copy(src.path(), d, &transfer(&["out/c.txt"], "/etc")).unwrap();
    assert_eq!(fs::read_to_string(d.join("etc/c.txt")).unwrap(), "c.txt");
    copy_from::copy(src.path(), d, &transfer(&["/out/c.txt"], "/new/renamed")).unwrap();
    assert_eq!(fs::read_to_string(d.join("new/renamed")).unwrap(), "c.txt");

    // Symlinks in the source path are followed inside the source root, and only there.
    copy_from::copy(src.path(), d, &transfer(&["/lib/libx.so"], "/x/")).unwrap();
    assert!(meta(&d.join("x/libx.so")).is_file());
    copy_from::copy(src.path(), d, &transfer(&["/escape/out/c.txt"], "/y")).unwrap();
    assert_eq!(fs::read_to_string(d.join("y")).unwrap(), "c.txt");

    // --exclude against the path relative to the copied directory.
    let mut t = transfer(&["/app"], "/ex");
    t.exclude = vec!["bin".into(), "*.txt".into()];
    copy_from::copy(src.path(), d, &t).unwrap();
    assert!(!d.join("ex/bin").exists());
    assert!(!d.join("ex/data.txt").exists());
    assert!(d.join("ex/hard1").exists());
}

#[test]
fn missing_sources_and_type_clashes_are_errors_naming_the_path() {
    if !is_root() {
        return;
    }
    let src = source_tree();
    let dst = dest_tree();
    let d = dst.path();
    for pattern in ["/nope/file", "/out/*.dll", "/escape/../../etc/hostname"] {
        let err = copy_from::copy(src.path(), d, &transfer(&[pattern], "/x")).unwrap_err();
        assert!(err.to_string().contains(pattern), "{pattern}: {err}");
    }
    // A directory never replaces a file, nor a file a directory.
    fs::write(d.join("afile"), "").unwrap();
    let err = copy_from::copy(src.path(), d, &transfer(&["/app"], "/afile")).unwrap_err();
    assert!(err.to_string().contains("/afile"), "{err}");
    fs::create_dir_all(d.join("srv/app/data.txt")).unwrap();
    let err = copy_from::copy(src.path(), d, &transfer(&["/app"], "/srv/app")).unwrap_err();
    assert!(
        err.to_string()
            .contains("/srv/app/data.txt: cannot overwrite directory with non-directory"),
        "{err}"
    );
    let mut t = transfer(&["/app"], "/p/");
    t.parents = true;
    let err = copy_from::copy(src.path(), d, &t).unwrap_err();
    assert!(err.to_string().contains("--parents"), "{err}");
}

#[test]
fn symlinks_in_the_image_cannot_redirect_writes_outside_it() {
    if !is_root() {
        return;
    }
    let src = source_tree();
    let dst = dest_tree();
    let outside = tempfile::tempdir().unwrap();
    let d = dst.path();
    fs::write(outside.path().join("victim"), "untouched").unwrap();
    // An absolute link to the host directory and a relative one climbing out.
    symlink(outside.path(), d.join("abs")).unwrap();
    symlink("../../../../../../..", d.join("rel")).unwrap();
    symlink(outside.path().join("victim"), d.join("leaf")).unwrap();

    copy_from::copy(src.path(), d, &transfer(&["/out/a.so"], "/abs/pwned")).unwrap();
    copy_from::copy(src.path(), d, &transfer(&["/app"], "/rel/tree")).unwrap();
    // A leaf link is replaced, not written through.
    copy_from::copy(src.path(), d, &transfer(&["/out/c.txt"], "/leaf")).unwrap();

    let mut left: Vec<_> = fs::read_dir(outside.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    left.sort();
    assert_eq!(left, ["victim"]);
    assert_eq!(
        fs::read_to_string(outside.path().join("victim")).unwrap(),
        "untouched"
    );
    // Where the writes went instead: inside the root.
    let inside = d.join(outside.path().strip_prefix("/").unwrap());
    assert_eq!(fs::read_to_string(inside.join("pwned")).unwrap(), "a.so");
    assert!(d.join("tree/bin/hello").is_file());
    assert!(meta(&d.join("leaf")).is_file());
    assert_eq!(fs::read_to_string(d.join("leaf")).unwrap(), "c.txt");
}
