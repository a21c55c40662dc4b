//! Against a real registry: Debian's `docker-registry` on loopback, an image pushed by the test,
//! pulled by tag, by digest and through an index, assembled to ext4 and inspected with debugfs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;

use firebuild_plan::{Command, EnvVar};
use firebuild_rootfs::{BaseSource, Error, Manifest, PrepareOptions, RootfsInfo, prepare};
use support::*;

fn tools_ok() -> bool {
    support::tools_ok(&["docker-registry", "mkfs.ext4", "e2fsck", "debugfs"])
}

/// [`check_layers_image`] and what only the pushed layers promise besides.
fn check_image(img: &Path) {
    check_layers_image(img);
    // Owners and modes from layer 1.
    assert_eq!(owner_mode(img, "/home/app"), (1000, 1000, "0750".into()));
    assert_eq!(owner_mode(img, "/"), (0, 0, "0755".into()));
    assert_eq!(debugfs(img, "cat /home/app/file.txt"), "hello\n");
    assert_eq!(debugfs(img, "cat /usr/bin/tool"), "#!/bin/sh\necho tool\n");
    // Symlink, hardlink count, device type.
    let link = debugfs(img, "stat /usr/bin/tool-link");
    assert_eq!(field(&link, "Type:"), "symlink");
    assert!(link.contains("\"tool\""), "{link}");
    let a = debugfs(img, "stat /usr/bin/tool");
    assert_eq!(field(&a, "Links:"), "2");
    let null = debugfs(img, "stat /dev/null");
    assert!(null.contains("Type: character special"), "{null}");
    assert_eq!(debugfs(img, "cat /etc/kept"), "kept\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_loopback_registry_by_tag_digest_and_index() {
    if !tools_ok() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    let amd = make_image(&work.path().join("amd"), "amd64");
    let arm = make_image(&work.path().join("arm"), "arm64");
    push(&reg.addr, "test/img", "tag", &amd).await;
    push(&reg.addr, "test/img", "arm", &arm).await;
    // A multi-platform index listing arm64 first.
    let client = oci_client::Client::new(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::Http,
        ..Default::default()
    });
    let multi: oci_client::Reference = format!("{}/test/img:multi", reg.addr).parse().unwrap();
    push_manifest(
        &client,
        &multi,
        index_of(&[(&arm, "arm64"), (&amd, "amd64")]),
        "application/vnd.oci.image.index.v1+json",
    )
    .await;

    let cache = work.path().join("cache");
    // What `FROM 127.0.0.1:PORT/test/img:tag` resolves to, through the Dockerfile planner.
    let dockerfile = "ARG REG\nFROM ${REG}/test/img:tag\nRUN true\n";
    let build_args = [("REG".to_string(), reg.addr.clone())];
    let mut req = firebuild_dockerfile::PlanRequest::new("Dockerfile", dockerfile, work.path());
    req.build_args = &build_args;
    let plan = firebuild_dockerfile::plan(&req).unwrap();
    let firebuild_plan::Base::Image { reference } = &plan.stages[0].base else {
        panic!("stage 0 base is not an image: {:?}", plan.stages[0].base);
    };
    assert_eq!(reference, &format!("{}/test/img:tag", reg.addr));
    let src: BaseSource = reference.parse().unwrap();
    let opts = PrepareOptions::new(&cache, work.path().join("w1"));
    let out = work.path().join("tag.ext4");
    let p = prepare(&src, &out, &opts).await.unwrap();
    check_image(&out);
    assert_eq!(p.base.kind, "registry");
    assert_eq!(
        p.base.manifest_digest.as_deref(),
        Some(amd.manifest_digest().as_str())
    );
    assert_eq!(
        p.base.config_digest.as_deref(),
        Some(amd.config_digest().as_str())
    );
    assert_eq!(p.base.index_digest, None);
    assert_eq!(p.base.layers.len(), 2);
    // The image config seeds the plan.
    assert_eq!(p.config.user.as_deref(), Some("app"));
    assert_eq!(p.config.workdir.as_deref(), Some("/home/app"));
    assert_eq!(p.config.env[1], EnvVar::new("GREETING", "hi"));
    assert_eq!(
        p.config.entrypoint,
        Some(Command::Exec(vec!["/usr/bin/tool".into()]))
    );
    assert_eq!(p.config.exposed_ports, vec!["8080/tcp".to_string()]);
    assert_eq!(p.context.workdir, "/home/app");
    assert_eq!(p.context.user.as_deref(), Some("app"));
    assert_eq!(p.context.env[0], EnvVar::new("PATH", "/usr/bin:/bin"));
    // Layers are cached by digest.
    let cached = firebuild_rootfs::registry::BlobCache::new(&cache);
    for (blob, _, _) in &amd.layers {
        assert!(cached.get(&firebuild_rootfs::Digest::of(blob)).is_some());
    }
    // The manifest written beside the image.
    let m = Manifest::new(
        p.config.clone(),
        p.base.clone(),
        RootfsInfo {
            filesystem: "ext4".into(),
            file: "tag.ext4".into(),
            size_bytes: p.image.size,
        },
    );
    let mut m = m.with_dockerfile(dockerfile.as_bytes());
    m.build_args.insert("REG".into(), reg.addr.clone());
    m.write(&work.path().join("tag.json")).unwrap();
    let back = Manifest::from_json(&std::fs::read_to_string(work.path().join("tag.json")).unwrap())
        .unwrap();
    assert_eq!(back.base.config_digest, p.base.config_digest);
    assert_eq!(back.image.user.as_deref(), Some("app"));
    assert_eq!(
        back.dockerfile_digest,
        Some(firebuild_rootfs::Digest::of(dockerfile.as_bytes()).to_string())
    );

    // By digest.
    let src: BaseSource = format!("{}/test/img@{}", reg.addr, amd.manifest_digest())
        .parse()
        .unwrap();
    let out = work.path().join("digest.ext4");
    let p = prepare(
        &src,
        &out,
        &PrepareOptions::new(&cache, work.path().join("w2")),
    )
    .await
    .unwrap();
    assert_eq!(
        p.base.config_digest.as_deref(),
        Some(amd.config_digest().as_str())
    );
    check_image(&out);

    // Through the index: linux/amd64 is picked even though arm64 comes first.
    let src: BaseSource = format!("{}/test/img:multi", reg.addr).parse().unwrap();
    let out = work.path().join("multi.ext4");
    let p = prepare(
        &src,
        &out,
        &PrepareOptions::new(&cache, work.path().join("w3")),
    )
    .await
    .unwrap();
    assert_eq!(
        p.base.manifest_digest.as_deref(),
        Some(amd.manifest_digest().as_str())
    );
    assert!(p.base.index_digest.is_some());
    assert_eq!(owner_mode(&out, "/usr/bin/tool"), (0, 0, "04755".into()));

    // A size the user asked for that cannot hold the content is refused up front.
    let mut small = PrepareOptions::new(&cache, work.path().join("w4"));
    small.ext4.size = Some(1 << 20);
    let err = prepare(
        &"scratch".parse().unwrap(),
        &work.path().join("s.ext4"),
        &small,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::TooSmall { .. }), "{err}");
    assert!(err.to_string().contains("too small"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_blob_is_rejected_with_digest_error() {
    if !tools_ok() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    let img = make_image(&work.path().join("img"), "amd64");
    push(&reg.addr, "test/bad", "v1", &img).await;
    // Flip the registry's stored bytes of layer 2 (same length).
    let d = firebuild_rootfs::Digest::of(&img.layers[1].0);
    let path = reg.blob_file(&d);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();

    let src: BaseSource = format!("{}/test/bad:v1", reg.addr).parse().unwrap();
    let opts = PrepareOptions::new(work.path().join("cache"), work.path().join("w"));
    let out = work.path().join("bad.ext4");
    let err = prepare(&src, &out, &opts).await.unwrap_err();
    let msg = err.to_string();
    eprintln!("refused as expected: {msg}");
    assert!(matches!(err, Error::DigestMismatch { .. }), "{msg}");
    assert!(
        msg.contains("digest mismatch") && msg.contains(d.as_str()),
        "{msg}"
    );
    assert!(!out.exists(), "an image was written from a corrupt layer");
    // Nothing corrupt was cached.
    let cache = firebuild_rootfs::registry::BlobCache::new(work.path().join("cache"));
    assert!(cache.get(&d).is_none());
}
