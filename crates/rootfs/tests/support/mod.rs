//! Test fixtures: layers made from directories, a loopback `docker-registry`, debugfs probes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use firebuild_rootfs::Digest;

/// Whether `tool` is on the PATH. Missing: a clear failure under CI, a printed skip otherwise.
pub fn require_tool(tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(tool).is_file();
    if !found {
        if std::env::var_os("CI").is_some() {
            panic!(
                "{tool} is required (scripts/test.sh installs it: e2fsprogs fakeroot docker-registry)"
            );
        }
        eprintln!("SKIP: {tool} not found (install it, or run scripts/test.sh)");
    }
    found
}

/// Whether we run as root (these fixtures chown files and make device nodes).
pub fn require_root() -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        if std::env::var_os("CI").is_some() {
            panic!("these tests need root (CI runs as root)");
        }
        eprintln!("SKIP: not root; the fixtures need chown and mknod");
    }
    root
}

/// A layer tar made from a directory: owners, modes, symlinks, hardlinks (detected by inode),
/// device nodes, plus pax xattrs given by relative path.
pub fn tar_dir(dir: &Path, xattrs: &[(&str, &str, &[u8])]) -> Vec<u8> {
    let mut paths = Vec::new();
    walk(dir, dir, &mut paths);
    paths.sort();
    let mut b = tar::Builder::new(Vec::new());
    let mut seen: HashMap<(u64, u64), PathBuf> = HashMap::new();
    for rel in paths {
        let full = dir.join(&rel);
        let meta = fs::symlink_metadata(&full).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        h.set_mode(meta.mode() & 0o7777);
        let pax: Vec<(String, Vec<u8>)> = xattrs
            .iter()
            .filter(|(p, _, _)| Path::new(p) == rel)
            .map(|(_, k, v)| (format!("SCHILY.xattr.{k}"), v.to_vec()))
            .collect();
        if !pax.is_empty() {
            b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .unwrap();
        }
        let ft = meta.file_type();
        if ft.is_file() && meta.nlink() > 1 {
            if let Some(first) = seen.get(&(meta.dev(), meta.ino())) {
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                b.append_link(&mut h, &rel, first).unwrap();
                continue;
            }
            seen.insert((meta.dev(), meta.ino()), rel.clone());
        }
        if ft.is_symlink() {
            let target = fs::read_link(&full).unwrap();
            b.append_link(&mut h, &rel, target).unwrap();
        } else if ft.is_file() {
            b.append_data(&mut h, &rel, fs::File::open(&full).unwrap())
                .unwrap();
        } else {
            h.set_size(0);
            if ft.is_char_device() || ft.is_block_device() {
                let rdev = meta.rdev();
                h.set_device_major(rustix::fs::major(rdev)).unwrap();
                h.set_device_minor(rustix::fs::minor(rdev)).unwrap();
            }
            b.append_data(&mut h, &rel, std::io::empty()).unwrap();
        }
    }
    b.into_inner().unwrap()
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.strip_prefix(root).unwrap().to_path_buf());
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            walk(root, &p, out);
        }
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
}

fn put(dir: &Path, rel: &str, data: &[u8], uid: u32, gid: u32, mode: u32) {
    let p = dir.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, data).unwrap();
    std::os::unix::fs::chown(&p, Some(uid), Some(gid)).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

fn mkdir(dir: &Path, rel: &str, uid: u32, gid: u32, mode: u32) {
    let p = dir.join(rel);
    fs::create_dir_all(&p).unwrap();
    std::os::unix::fs::chown(&p, Some(uid), Some(gid)).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

/// `security.capability` v2: effective, permitted `cap_net_bind_service` (bit 10).
pub const NET_BIND_CAP: [u8; 20] = [
    0x01, 0, 0, 0x02, 0x00, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// A two-layer test image: blobs, config and manifest bytes.
pub struct TestImage {
    /// (blob bytes, media type, diff id) per layer, bottom first.
    pub layers: Vec<(Vec<u8>, &'static str, Digest)>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
}

impl TestImage {
    pub fn config_digest(&self) -> Digest {
        Digest::of(&self.config)
    }
    pub fn manifest_digest(&self) -> Digest {
        Digest::of(&self.manifest)
    }
}

/// Layer 1 (gzip): app home owned 1000:1000, a setuid tool with a symlink and a hardlink to it,
/// a setgid file, a sticky /tmp, /dev/null, a file with a user xattr, files to be deleted.
/// Layer 2 (zstd): a whiteout deleting /etc/doomed, an opaque /opt/d with a new file.
pub fn make_image(work: &Path, arch: &str) -> TestImage {
    let l1 = work.join("l1");
    mkdir(&l1, "etc", 0, 0, 0o755);
    put(&l1, "etc/doomed", b"bye\n", 0, 0, 0o644);
    put(&l1, "etc/kept", b"kept\n", 0, 0, 0o644);
    mkdir(&l1, "home/app", 1000, 1000, 0o750);
    put(&l1, "home/app/file.txt", b"hello\n", 1000, 1000, 0o640);
    mkdir(&l1, "usr/bin", 0, 0, 0o755);
    put(&l1, "usr/bin/tool", b"#!/bin/sh\necho tool\n", 0, 0, 0o4755);
    put(&l1, "usr/bin/sg", b"sg\n", 0, 50, 0o2755);
    std::os::unix::fs::symlink("tool", l1.join("usr/bin/tool-link")).unwrap();
    fs::hard_link(l1.join("usr/bin/tool"), l1.join("usr/bin/tool-hard")).unwrap();
    put(&l1, "opt/d/old", b"old\n", 0, 0, 0o644);
    mkdir(&l1, "tmp", 0, 0, 0o1777);
    mkdir(&l1, "dev", 0, 0, 0o755);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        l1.join("dev/null"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    fs::set_permissions(l1.join("dev/null"), fs::Permissions::from_mode(0o666)).unwrap();
    for d in ["", "home", "usr", "opt", "opt/d"] {
        fs::set_permissions(l1.join(d), fs::Permissions::from_mode(0o755)).unwrap();
    }

    let l2 = work.join("l2");
    mkdir(&l2, "etc", 0, 0, 0o755);
    put(&l2, "etc/.wh.doomed", b"", 0, 0, 0o644);
    mkdir(&l2, "opt/d", 0, 0, 0o755);
    fs::set_permissions(l2.join("opt"), fs::Permissions::from_mode(0o755)).unwrap();
    put(&l2, "opt/d/.wh..wh..opq", b"", 0, 0, 0o644);
    put(&l2, "opt/d/new", b"new\n", 0, 0, 0o644);
    mkdir(&l2, "home/app", 1000, 1000, 0o750);
    fs::set_permissions(l2.join("home"), fs::Permissions::from_mode(0o755)).unwrap();
    put(&l2, "home/app/second", b"two\n", 1000, 1000, 0o600);

    let t1 = tar_dir(
        &l1,
        &[
            ("home/app/file.txt", "user.firebuild", b"yes"),
            ("usr/bin/sg", "security.capability", &NET_BIND_CAP),
        ],
    );
    let t2 = tar_dir(&l2, &[]);
    build(
        vec![gzip(&t1), zstd(&t2)],
        vec![Digest::of(&t1), Digest::of(&t2)],
        arch,
    )
}

/// An image (gzip layer then zstd layer) from compressed blobs and their diff ids.
pub fn image_from_tars(blobs: &[Vec<u8>; 2], diff_ids: &[Digest; 2]) -> TestImage {
    build(blobs.to_vec(), diff_ids.to_vec(), "amd64")
}

fn build(blobs: Vec<Vec<u8>>, diff_ids: Vec<Digest>, arch: &str) -> TestImage {
    let types = [
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
    ];
    let layers: Vec<(Vec<u8>, &'static str, Digest)> = blobs
        .into_iter()
        .zip(diff_ids)
        .enumerate()
        .map(|(i, (b, d))| (b, types[i % 2], d))
        .collect();
    let config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {
            "User": "app", "Env": ["PATH=/usr/bin:/bin", "GREETING=hi"],
            "WorkingDir": "/home/app", "Entrypoint": ["/usr/bin/tool"], "Cmd": ["--help"],
            "ExposedPorts": {"8080/tcp": {}}, "Labels": {"org.example.test": "yes"}
        },
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.2.to_string()).collect::<Vec<_>>()}
    });
    let config = serde_json::to_vec(&config).unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": Digest::of(&config).to_string(), "size": config.len()},
        "layers": layers.iter().map(|(b, mt, _)| serde_json::json!({
            "mediaType": mt, "digest": Digest::of(b).to_string(), "size": b.len()})).collect::<Vec<_>>()
    });
    TestImage {
        layers,
        manifest: serde_json::to_vec(&manifest).unwrap(),
        config,
    }
}

/// An OCI index listing `(manifest, arch)` pairs.
pub fn index_of(entries: &[(&TestImage, &str)]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries.iter().map(|(img, arch)| serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": img.manifest_digest().to_string(), "size": img.manifest.len(),
            "platform": {"architecture": arch, "os": "linux"}})).collect::<Vec<_>>()
    }))
    .unwrap()
}

/// Debian's `docker-registry` on 127.0.0.1:<free port> with a temporary storage directory.
pub struct Registry {
    child: Child,
    pub addr: String,
    pub storage: PathBuf,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let storage = dir.path().join("storage");
        let cfg = dir.path().join("config.yml");
        fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                storage.display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn docker-registry");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry {
            child,
            addr,
            storage,
            _dir: dir,
        }
    }

    /// Where the registry keeps a blob's bytes (filesystem driver layout).
    pub fn blob_file(&self, d: &Digest) -> PathBuf {
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&d.hex()[..2])
            .join(d.hex())
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pushes an image with oci-client: monolithic blob uploads (POST + PUT), then the manifest.
pub async fn push(addr: &str, repo: &str, tag: &str, img: &TestImage) {
    use oci_client::client::{ClientConfig, ClientProtocol};
    let client = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        use_monolithic_push: true,
        ..Default::default()
    });
    let r: oci_client::Reference = format!("{addr}/{repo}:{tag}").parse().unwrap();
    client
        .auth(
            &r,
            &oci_client::secrets::RegistryAuth::Anonymous,
            oci_client::RegistryOperation::Push,
        )
        .await
        .unwrap();
    for (blob, _, _) in &img.layers {
        client
            .push_blob(&r, blob.clone(), Digest::of(blob).as_str())
            .await
            .unwrap();
    }
    client
        .push_blob(&r, img.config.clone(), img.config_digest().as_str())
        .await
        .unwrap();
    push_manifest(
        &client,
        &r,
        img.manifest.clone(),
        "application/vnd.oci.image.manifest.v1+json",
    )
    .await;
}

pub async fn push_manifest(
    client: &oci_client::Client,
    r: &oci_client::Reference,
    body: Vec<u8>,
    mt: &str,
) {
    client
        .push_manifest_raw(r, body, http::HeaderValue::from_str(mt).unwrap())
        .await
        .unwrap();
}

/// `debugfs -R "stat PATH"` output.
pub fn debugfs(image: &Path, request: &str) -> String {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(request)
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "debugfs {request}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The token after `key` in debugfs stat output (`Mode:` → `0640`).
pub fn field<'a>(stat: &'a str, key: &str) -> &'a str {
    let i = stat
        .find(key)
        .unwrap_or_else(|| panic!("no {key} in:\n{stat}"));
    stat[i + key.len()..].split_whitespace().next().unwrap()
}

/// (uid, gid, mode) of a path in an ext4 image.
pub fn owner_mode(image: &Path, path: &str) -> (u32, u32, String) {
    let s = debugfs(image, &format!("stat {path}"));
    (
        field(&s, "User:").parse().unwrap(),
        field(&s, "Group:").parse().unwrap(),
        field(&s, "Mode:").to_owned(),
    )
}

/// Whether a path exists in an ext4 image.
pub fn exists(image: &Path, path: &str) -> bool {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("stat {path}"))
        .arg(image)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    !text.contains("File not found")
}

/// `e2fsck -fn` exit status is zero.
pub fn fsck_clean(image: &Path) -> bool {
    Command::new("e2fsck")
        .arg("-fn")
        .arg(image)
        .output()
        .unwrap()
        .status
        .success()
}

/// Root and every one of `tools`; else `false` after printing why (a panic under CI).
pub fn tools_ok(tools: &[&str]) -> bool {
    require_root() && tools.iter().all(|t| require_tool(t))
}

/// What every ext4 made from [`make_image`] holds, wherever it came from: a clean fsck, owners
/// and modes, the hardlink, the device node, the xattr, the file capability, the whiteout and
/// the opaque directory.
pub fn check_layers_image(img: &Path) {
    assert!(fsck_clean(img), "e2fsck -fn reports problems");
    assert_eq!(
        owner_mode(img, "/home/app/file.txt"),
        (1000, 1000, "0640".into())
    );
    assert_eq!(owner_mode(img, "/usr/bin/tool"), (0, 0, "04755".into()));
    assert_eq!(owner_mode(img, "/usr/bin/sg"), (0, 50, "02755".into()));
    assert_eq!(owner_mode(img, "/tmp"), (0, 0, "01777".into()));
    // Layer 2's file in the directory both layers touch.
    assert_eq!(
        owner_mode(img, "/home/app/second"),
        (1000, 1000, "0600".into())
    );
    let a = debugfs(img, "stat /usr/bin/tool");
    let b = debugfs(img, "stat /usr/bin/tool-hard");
    assert_eq!(field(&a, "Inode:"), field(&b, "Inode:"), "hardlink lost");
    let null = debugfs(img, "stat /dev/null");
    assert!(null.contains("Device major/minor number: 01:03"), "{null}");
    let f = debugfs(img, "stat /home/app/file.txt");
    assert!(
        f.contains("user.firebuild (3) = \"yes\""),
        "xattr lost:\n{f}"
    );
    let sg = debugfs(img, "stat /usr/bin/sg");
    assert!(
        sg.contains("security.capability (20) = 01 00 00 02 00 04 00 00"),
        "file capability lost:\n{sg}"
    );
    // Whiteout and opaque directory.
    assert!(
        !exists(img, "/etc/doomed"),
        "whiteout did not delete /etc/doomed"
    );
    assert!(
        !exists(img, "/opt/d/old"),
        "opaque dir kept a lower-layer file"
    );
    assert_eq!(debugfs(img, "cat /opt/d/new"), "new\n");
}

/// Writes an OCI image layout holding `img` tagged `v1`.
pub fn write_layout(dir: &Path, img: &TestImage) {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |b: &[u8]| fs::write(blobs.join(Digest::of(b).hex()), b).unwrap();
    for (blob, _, _) in &img.layers {
        put(blob);
    }
    put(&img.config);
    put(&img.manifest);
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": img.manifest_digest().to_string(), "size": img.manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": "v1"}}]});
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

pub fn tar_of(dir: &Path, out: &Path) {
    let mut b = tar::Builder::new(fs::File::create(out).unwrap());
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}

/// A legacy `docker save` archive: `<hex>.json` config, `<id>/layer.tar` uncompressed layers.
pub fn write_docker_save(dir: &Path, img: &TestImage, tamper: bool) {
    fs::create_dir_all(dir).unwrap();
    let cfg = format!("{}.json", img.config_digest().hex());
    fs::write(dir.join(&cfg), &img.config).unwrap();
    let mut layers = Vec::new();
    for (i, (blob, _, _)) in img.layers.iter().enumerate() {
        let mut plain = Vec::new();
        std::io::copy(
            &mut firebuild_rootfs::layer::decompress(&blob[..]).unwrap(),
            &mut plain,
        )
        .unwrap();
        if tamper && i == 1 {
            // Same tar, one more zero block: still a valid archive, different diff id.
            plain.extend_from_slice(&[0u8; 512]);
        }
        let name = format!("layer{i}/layer.tar");
        fs::create_dir_all(dir.join(format!("layer{i}"))).unwrap();
        fs::write(dir.join(&name), plain).unwrap();
        layers.push(name);
    }
    let manifest =
        serde_json::json!([{"Config": cfg, "RepoTags": ["test/img:v1"], "Layers": layers}]);
    fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
}
