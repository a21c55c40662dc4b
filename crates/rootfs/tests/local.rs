//! Local sources: OCI layout (directory and tar), `docker save` archive, directory, ext4 image,
//! scratch; the unprivileged path (side table replayed under fakeroot); shrink and grow.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::fs;

use firebuild_rootfs::layer::Ownership;
use firebuild_rootfs::{BaseSource, Digest, Error, PrepareOptions, ext4, prepare};
use support::*;

fn tools_ok() -> bool {
    support::tools_ok(&["mkfs.ext4", "e2fsck", "debugfs", "resize2fs"])
}

#[tokio::test]
async fn oci_layout_dir_and_archive() {
    if !tools_ok() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let img = make_image(&work.path().join("img"), "amd64");
    let layout = work.path().join("layout");
    write_layout(&layout, &img);
    let opts = PrepareOptions::new(work.path().join("cache"), work.path().join("w"));

    let src: BaseSource = format!("oci:{}:v1", layout.display()).parse().unwrap();
    let out = work.path().join("layout.ext4");
    let p = prepare(&src, &out, &opts).await.unwrap();
    check_layers_image(&out);
    assert_eq!(p.base.kind, "oci-layout");
    assert_eq!(
        p.base.manifest_digest.as_deref(),
        Some(img.manifest_digest().as_str())
    );
    assert_eq!(p.config.user.as_deref(), Some("app"));

    let archive = work.path().join("layout.tar");
    tar_of(&layout, &archive);
    let src: BaseSource = format!("oci:{}", archive.display()).parse().unwrap();
    let out = work.path().join("archive.ext4");
    prepare(&src, &out, &opts).await.unwrap();
    check_layers_image(&out);

    // A blob that does not match its name is refused.
    let victim = layout
        .join("blobs/sha256")
        .join(Digest::of(&img.layers[0].0).hex());
    let mut bytes = fs::read(&victim).unwrap();
    bytes[10] ^= 1;
    fs::write(&victim, bytes).unwrap();
    let src: BaseSource = format!("oci:{}:v1", layout.display()).parse().unwrap();
    let err = prepare(&src, &work.path().join("bad.ext4"), &opts)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
}

#[tokio::test]
async fn docker_save_archive_with_diff_id_check() {
    if !tools_ok() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let img = make_image(&work.path().join("img"), "amd64");
    let save = work.path().join("save");
    write_docker_save(&save, &img, false);
    let archive = work.path().join("save.tar");
    tar_of(&save, &archive);
    let opts = PrepareOptions::new(work.path().join("cache"), work.path().join("w"));
    let src: BaseSource = format!("docker-archive:{}:v1", archive.display())
        .parse()
        .unwrap();
    let out = work.path().join("save.ext4");
    let p = prepare(&src, &out, &opts).await.unwrap();
    check_layers_image(&out);
    assert_eq!(
        p.base.config_digest.as_deref(),
        Some(img.config_digest().as_str())
    );
    assert_eq!(p.config.workdir.as_deref(), Some("/home/app"));

    // A layer whose content does not match the config's diff id is refused.
    let bad = work.path().join("bad");
    write_docker_save(&bad, &img, true);
    let src = BaseSource::DockerArchive {
        path: bad,
        tag: None,
    };
    let err = prepare(&src, &work.path().join("bad.ext4"), &opts)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("diff_id"), "{err}");
}

#[tokio::test]
async fn unprivileged_path_replays_side_table_under_fakeroot() {
    if !tools_ok() || !require_tool("fakeroot") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let img = make_image(&work.path().join("img"), "amd64");
    let layout = work.path().join("layout");
    write_layout(&layout, &img);
    // What a non-root user gets: no chown, no mknod on the tree; fakeroot replays them.
    let mut opts = PrepareOptions::new(work.path().join("cache"), work.path().join("w"));
    opts.ownership = Ownership::SideTable;
    let src: BaseSource = format!("oci:{}:v1", layout.display()).parse().unwrap();
    let out = work.path().join("fakeroot.ext4");
    prepare(&src, &out, &opts).await.unwrap();
    check_layers_image(&out);
    assert_eq!(owner_mode(&out, "/home/app"), (1000, 1000, "0750".into()));
}

#[tokio::test]
async fn dir_scratch_ext4_sources_shrink_and_grow() {
    if !tools_ok() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    fs::create_dir_all(tree.join("srv")).unwrap();
    fs::write(tree.join("srv/data"), vec![7u8; 3 << 20]).unwrap();
    std::os::unix::fs::chown(tree.join("srv"), Some(33), Some(33)).unwrap();
    let opts = PrepareOptions::new(work.path().join("cache"), work.path().join("w"));

    let dir_img = work.path().join("dir.ext4");
    let p = prepare(&BaseSource::Dir(tree.clone()), &dir_img, &opts)
        .await
        .unwrap();
    assert_eq!(owner_mode(&dir_img, "/srv").0, 33);
    assert_eq!(owner_mode(&dir_img, "/").0, 0);
    let default = p.image.size;
    assert_eq!(fs::metadata(&dir_img).unwrap().len(), default);
    // Default size = content + headroom (>= 64 MiB of headroom).
    assert!(default >= (3 << 20) + (64 << 20), "{default}");

    let shrunk = ext4::shrink(&dir_img).unwrap();
    assert!(shrunk < default, "{shrunk} !< {default}");
    assert_eq!(fs::metadata(&dir_img).unwrap().len(), shrunk);
    assert!(fsck_clean(&dir_img));
    assert_eq!(debugfs(&dir_img, "cat /srv/data").len(), 3 << 20);

    // ext4 source: copied, grown to the requested size, content kept.
    let mut grow = opts.clone();
    grow.ext4.size = Some(shrunk + (32 << 20));
    let copy = work.path().join("copy.ext4");
    let p = prepare(&BaseSource::Ext4(dir_img.clone()), &copy, &grow)
        .await
        .unwrap();
    assert_eq!(p.image.size, shrunk + (32 << 20));
    assert_eq!(fs::metadata(&copy).unwrap().len(), shrunk + (32 << 20));
    let stats = debugfs(&copy, "stats");
    let blocks: u64 = field(&stats, "Block count:").parse().unwrap();
    let bsize: u64 = field(&stats, "Block size:").parse().unwrap();
    let fs_bytes = blocks * bsize;
    assert!(
        fs_bytes > shrunk + (31 << 20) && fs_bytes <= shrunk + (32 << 20),
        "filesystem not grown: {fs_bytes}"
    );
    assert_eq!(owner_mode(&copy, "/srv").0, 33);
    assert_eq!(
        fs::metadata(&dir_img).unwrap().len(),
        shrunk,
        "the source image was modified"
    );

    // scratch: an empty, clean filesystem owned by root.
    let s = work.path().join("scratch.ext4");
    prepare(&BaseSource::Scratch, &s, &opts).await.unwrap();
    assert!(fsck_clean(&s));
    assert_eq!(owner_mode(&s, "/"), (0, 0, "0755".into()));
}

/// [`ext4::Checked`]: one full check, then journal, shrink and grow without a check between
/// them, on an image mounted after its last check (as a guest leaves a build's work image),
/// where a plain `resize2fs` refuses to run.
#[tokio::test]
async fn checked_edits_run_on_an_image_mounted_since_its_check() {
    if !tools_ok() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    fs::create_dir_all(tree.join("srv")).unwrap();
    fs::write(tree.join("srv/data"), vec![9u8; 2 << 20]).unwrap();
    let opts = PrepareOptions::new(work.path().join("cache"), work.path().join("w"));
    let img = work.path().join("img.ext4");
    prepare(&BaseSource::Dir(tree), &img, &opts).await.unwrap();
    // Checked in 2020, mounted the day after (in the past, so e2fsck sees no clock problem).
    debugfs_w(&img, "ssv lastcheck 20200101000000");
    debugfs_w(&img, "ssv mtime 20200102000000");
    let plain = std::process::Command::new("resize2fs")
        .arg("-M")
        .arg(&img)
        .output()
        .unwrap();
    assert!(!plain.status.success(), "resize2fs ran without a check");

    let fs = ext4::Checked::new(&img).unwrap();
    assert!(ext4::Superblock::read(&img).unwrap().has_journal);
    fs.drop_journal().unwrap();
    assert!(!ext4::Superblock::read(&img).unwrap().has_journal);
    let mut min = fs.shrink().unwrap();
    min = min.min(fs.shrink().unwrap());
    assert_eq!(fs::metadata(&img).unwrap().len(), min);
    let want = min + (16 << 20);
    let grown = fs.grow(want).unwrap();
    assert!(
        grown > min && grown <= want,
        "{min} -> {grown}, asked {want}"
    );
    assert_eq!(fs::metadata(&img).unwrap().len(), want);
    assert_eq!(fs.add_journal(grown).unwrap(), 4 << 20);
    fs.verify().unwrap();
    assert!(fsck_clean(&img));
    assert!(debugfs(&img, "features").contains("has_journal"));
    assert_eq!(
        debugfs(&img, "cat /srv/data").as_bytes(),
        &[9u8; 2 << 20][..]
    );
}

/// A work image made without a journal: the superblock the image phase reads says so and gives
/// the size `dumpe2fs` gives; `drop_journal` has nothing to do, and the output gets one.
#[tokio::test]
async fn a_work_image_without_a_journal_is_read_from_its_superblock() {
    if !tools_ok() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    fs::create_dir_all(tree.join("srv")).unwrap();
    fs::write(tree.join("srv/data"), vec![7u8; 1 << 20]).unwrap();
    let mut opts = PrepareOptions::new(work.path().join("cache"), work.path().join("w"));
    opts.ext4.size = Some(256 << 20);
    opts.ext4.without_journal = true;
    let img = work.path().join("img.ext4");
    prepare(&BaseSource::Dir(tree), &img, &opts).await.unwrap();
    let sb = ext4::Superblock::read(&img).unwrap();
    assert!(!sb.has_journal);
    assert!(!debugfs(&img, "features").contains("has_journal"));
    assert_eq!((sb.block_size, sb.bytes()), (4096, 256 << 20));
    let dumpe2fs = std::process::Command::new("dumpe2fs")
        .arg("-h")
        .arg(&img)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&dumpe2fs.stdout);
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["Block", "count:", &sb.blocks.to_string()]),
        "{text}"
    );

    let fs = ext4::Checked::new(&img).unwrap();
    fs.drop_journal().unwrap();
    let min = fs.shrink().unwrap();
    assert_eq!(ext4::Superblock::read(&img).unwrap().bytes(), min);
    let grown = fs.grow(min + (8 << 20)).unwrap();
    fs.add_journal(grown).unwrap();
    fs.verify().unwrap();
    assert!(ext4::Superblock::read(&img).unwrap().has_journal);
    assert_eq!(
        debugfs(&img, "cat /srv/data").as_bytes(),
        &[7u8; 1 << 20][..]
    );

    let not_ext4 = work.path().join("zeros");
    fs::write(&not_ext4, vec![0u8; 4096]).unwrap();
    let err = ext4::Superblock::read(&not_ext4).unwrap_err().to_string();
    assert!(err.contains("zeros") && err.contains("superblock"), "{err}");
}

fn debugfs_w(image: &std::path::Path, request: &str) {
    let out = std::process::Command::new("debugfs")
        .args(["-w", "-R", request])
        .arg(image)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}
