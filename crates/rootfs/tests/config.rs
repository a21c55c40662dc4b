//! `resolve_config`: a base's config without its layers, for planning. It must equal what
//! `prepare` reports, never read or fetch a layer blob, and serve a digest reference from the
//! cache.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::fs;
use std::path::Path;

use firebuild_plan::{Command, EnvVar};
use firebuild_rootfs::registry::{BlobCache, PullOptions};
use firebuild_rootfs::{BaseConfig, BaseSource, Digest, Error, PrepareOptions, prepare};
use support::*;

/// A small two-layer image (gzip then zstd) that needs no root to build.
fn small_image() -> TestImage {
    let tar = |name: &str, body: &[u8]| {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, name, body).unwrap();
        b.into_inner().unwrap()
    };
    let (t1, t2) = (tar("etc/one", b"1\n"), tar("etc/two", b"2\n"));
    image_from_tars(&[gzip(&t1), zstd(&t2)], &[Digest::of(&t1), Digest::of(&t2)])
}

fn layer_digests(img: &TestImage) -> Vec<Digest> {
    img.layers.iter().map(|(b, _, _)| Digest::of(b)).collect()
}

/// What the fixture's config promises, read through `resolve_config`.
fn check_config(found: &BaseConfig, img: &TestImage) {
    let c = &found.config;
    assert_eq!(c.user.as_deref(), Some("app"));
    assert_eq!(c.workdir.as_deref(), Some("/home/app"));
    assert_eq!(c.env[0], EnvVar::new("PATH", "/usr/bin:/bin"));
    assert_eq!(
        c.entrypoint,
        Some(Command::Exec(vec!["/usr/bin/tool".into()]))
    );
    assert_eq!(c.cmd, Some(Command::Exec(vec!["--help".into()])));
    assert_eq!(c.exposed_ports, ["8080/tcp"]);
    assert_eq!(c.labels["org.example.test"], "yes");
    assert_eq!(found.context.workdir, "/home/app");
    assert_eq!(
        found.base.config_digest.as_deref(),
        Some(img.config_digest().as_str())
    );
    let diff_ids: Vec<String> = img.layers.iter().map(|l| l.2.to_string()).collect();
    assert_eq!(found.base.layers, diff_ids);
}

async fn resolve(src: &BaseSource, cache: &Path) -> Result<BaseConfig, Error> {
    let found = firebuild_rootfs::resolve_config(src, &PullOptions::new(cache)).await?;
    Ok(found.expect("a layered source has a config"))
}

#[tokio::test]
async fn sources_without_a_config_give_none() {
    let opts = PullOptions::new("/nonexistent-cache");
    for src in [
        BaseSource::Scratch,
        BaseSource::Dir("/nonexistent".into()),
        BaseSource::Ext4("/nonexistent.ext4".into()),
    ] {
        let found = firebuild_rootfs::resolve_config(&src, &opts).await.unwrap();
        assert_eq!(found, None, "{src}");
    }
}

#[tokio::test]
async fn oci_layout_dir_and_tar_are_read_without_their_layers() {
    let work = tempfile::tempdir().unwrap();
    let img = small_image();
    let layout = work.path().join("layout");
    write_layout(&layout, &img);
    // Layer 0 gone, layer 1 corrupt: neither is read.
    let blobs = layout.join("blobs/sha256");
    let layers = layer_digests(&img);
    fs::remove_file(blobs.join(layers[0].hex())).unwrap();
    fs::write(blobs.join(layers[1].hex()), b"not the layer").unwrap();
    let cache = work.path().join("cache");

    let src: BaseSource = format!("oci:{}:v1", layout.display()).parse().unwrap();
    let found = resolve(&src, &cache).await.unwrap();
    check_config(&found, &img);
    assert_eq!(found.base.kind, "oci-layout");
    assert_eq!(
        found.base.manifest_digest.as_deref(),
        Some(img.manifest_digest().as_str())
    );

    // The same layout as a tar, and gzip-compressed: streamed for its JSON entries.
    let archive = work.path().join("layout.tar");
    tar_of(&layout, &archive);
    let gz = work.path().join("layout.tar.gz");
    fs::write(&gz, gzip(&fs::read(&archive).unwrap())).unwrap();
    for path in [&archive, &gz] {
        let src: BaseSource = format!("oci:{}", path.display()).parse().unwrap();
        let from_tar = resolve(&src, &cache).await.unwrap();
        assert_eq!(from_tar.config, found.config, "{}", path.display());
        assert_eq!(from_tar.base.config_digest, found.base.config_digest);
        assert_eq!(from_tar.base.manifest_digest, found.base.manifest_digest);
    }
    assert!(
        !work.path().join("cache").exists(),
        "a local source wrote to the registry cache"
    );

    // A config that does not match its digest is refused, from the directory and the tar.
    fs::write(blobs.join(img.config_digest().hex()), b"{}").unwrap();
    let err = resolve(&src_of(&layout), &cache).await.unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    tar_of(&layout, &archive);
    let err = resolve(&src_of(&archive), &cache).await.unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
}

fn src_of(path: &Path) -> BaseSource {
    format!("oci:{}", path.display()).parse().unwrap()
}

#[tokio::test]
async fn oci_tar_errors_name_what_is_missing() {
    let work = tempfile::tempdir().unwrap();
    let img = small_image();
    let layout = work.path().join("layout");
    write_layout(&layout, &img);
    fs::remove_file(
        layout
            .join("blobs/sha256")
            .join(img.manifest_digest().hex()),
    )
    .unwrap();
    let archive = work.path().join("layout.tar");
    tar_of(&layout, &archive);
    let err = resolve(&src_of(&archive), work.path()).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("no blobs/sha256/{}", img.manifest_digest().hex()))
            && msg.contains("layout.tar"),
        "{msg}"
    );
}

#[tokio::test]
async fn docker_save_dir_and_tar_are_read_without_their_layers() {
    let work = tempfile::tempdir().unwrap();
    let img = small_image();
    let save = work.path().join("save");
    write_docker_save(&save, &img, false);
    let archive = work.path().join("save.tar");
    tar_of(&save, &archive);
    // Remove the layers from the directory: the config is still there.
    for i in 0..img.layers.len() {
        fs::remove_file(save.join(format!("layer{i}/layer.tar"))).unwrap();
    }
    for path in [&save, &archive] {
        let src: BaseSource = format!("docker-archive:{}:v1", path.display())
            .parse()
            .unwrap();
        let found = resolve(&src, work.path()).await.unwrap();
        check_config(&found, &img);
        assert_eq!(found.base.kind, "docker-archive");
        assert_eq!(found.base.manifest_digest, None);
    }
}

/// Local sources: `resolve_config` reports exactly what `prepare` reports.
#[tokio::test]
async fn equals_what_prepare_reports_for_a_layout() {
    if !tools_ok(&["mkfs.ext4", "e2fsck"]) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let img = small_image();
    let layout = work.path().join("layout");
    write_layout(&layout, &img);
    let src = src_of(&layout);
    let opts = PrepareOptions::new(work.path().join("cache"), work.path().join("w"));
    let prepared = prepare(&src, &work.path().join("out.ext4"), &opts)
        .await
        .unwrap();
    let found = resolve(&src, &work.path().join("cache")).await.unwrap();
    assert_eq!(found.config, prepared.config);
    assert_eq!(found.context, prepared.context);
    assert_eq!(found.base, prepared.base);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_config_without_layers_then_from_the_cache() {
    if !tools_ok(&["docker-registry", "mkfs.ext4", "e2fsck"]) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    let img = small_image();
    push(&reg.addr, "test/cfg", "v1", &img).await;
    let client = oci_client::Client::new(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::Http,
        ..Default::default()
    });
    let index = index_of(&[(&img, "amd64")]);
    let multi: oci_client::Reference = format!("{}/test/cfg:multi", reg.addr).parse().unwrap();
    push_manifest(
        &client,
        &multi,
        index.clone(),
        "application/vnd.oci.image.index.v1+json",
    )
    .await;
    let cache = work.path().join("cache");
    let blobs = BlobCache::new(&cache);

    // By tag, with the layers deleted from the registry: they are never asked for.
    let layers = layer_digests(&img);
    for d in &layers {
        fs::remove_file(reg.blob_file(d)).unwrap();
    }
    let src: BaseSource = format!("{}/test/cfg:v1", reg.addr).parse().unwrap();
    let found = resolve(&src, &cache).await.unwrap();
    check_config(&found, &img);
    assert_eq!(found.base.kind, "registry");
    assert_eq!(
        found.base.manifest_digest.as_deref(),
        Some(img.manifest_digest().as_str())
    );
    assert!(
        blobs.get(&img.config_digest()).is_some(),
        "config not cached"
    );
    assert!(
        layers.iter().all(|d| blobs.get(d).is_none()),
        "a layer was cached"
    );

    // Through the index, by the index's digest.
    let by_index: BaseSource = format!("{}/test/cfg@{}", reg.addr, Digest::of(&index))
        .parse()
        .unwrap();
    let through = resolve(&by_index, &cache).await.unwrap();
    assert_eq!(through.config, found.config);
    assert_eq!(
        through.base.index_digest.as_deref(),
        Some(Digest::of(&index).as_str())
    );

    // With the registry gone, digest references are answered from the cache.
    let by_digest: BaseSource = format!("{}/test/cfg@{}", reg.addr, img.manifest_digest())
        .parse()
        .unwrap();
    drop(reg);
    let cached = resolve(&by_digest, &cache).await.unwrap();
    assert_eq!(cached.config, found.config);
    assert_eq!(cached.base.manifest_digest, found.base.manifest_digest);
    let cached = resolve(&by_index, &cache).await.unwrap();
    assert_eq!(cached.base, through.base);
    // A tag must be asked for: it fails without the registry.
    assert!(resolve(&src, &cache).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_config_equals_what_prepare_reports() {
    if !tools_ok(&["docker-registry", "mkfs.ext4", "e2fsck"]) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    let img = small_image();
    push(&reg.addr, "test/cfg", "v1", &img).await;
    let src: BaseSource = format!("{}/test/cfg:v1", reg.addr).parse().unwrap();
    let cache = work.path().join("cache");
    let found = resolve(&src, &cache).await.unwrap();
    let opts = PrepareOptions::new(&cache, work.path().join("w"));
    let prepared = prepare(&src, &work.path().join("out.ext4"), &opts)
        .await
        .unwrap();
    assert_eq!(found.config, prepared.config);
    assert_eq!(found.context, prepared.context);
    assert_eq!(found.base, prepared.base);
}
