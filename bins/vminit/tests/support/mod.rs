//! Fixtures for running vminit as a process: a busybox-static guest tree, a bootstrap server
//! on loopback, metadata documents, cpio images.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use firebuild_bootstrap::{BootstrapServer, DirSource, Events, ServerHandle};
use firebuild_pki::{BuildId, BuildPki, Validity};
use firebuild_plan::BuildPlan;

/// Prints the reason and returns `None` outside CI; panics in CI.
pub fn skip(why: &str) -> Option<()> {
    if std::env::var_os("CI").is_some() {
        panic!("{why}");
    }
    eprintln!("skipped: {why}");
    None
}

pub fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        skip(&format!(
            "{name} is not installed (scripts/test.sh installs it)"
        ));
    }
    found
}

/// A temporary guest root with busybox (one symlink per applet in /bin), `/etc/passwd` with
/// root and `app` (1000), `/etc/group`, `/etc/shadow`, `/etc/skel`, `/tmp`.
pub fn busybox_root() -> Option<tempfile::TempDir> {
    let bb = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(bb) = bb else {
        skip("busybox-static is not installed (apt-get install busybox-static)")?;
        return None;
    };
    if rustix::process::geteuid().as_raw() != 0 {
        skip("vminit tests need root (chroot, chown)")?;
    }
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    for d in [
        "bin", "etc/skel", "etc/ssh", "tmp", "root", "home/app", "usr/bin", "run", "proc",
    ] {
        fs::create_dir_all(r.join(d)).unwrap();
    }
    fs::set_permissions(r.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::copy(bb, r.join("bin/busybox")).unwrap();
    let list = Command::new(bb).arg("--list").output().unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" {
            symlink("busybox", r.join("bin").join(applet)).unwrap();
        }
    }
    fs::write(
        r.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
    )
    .unwrap();
    fs::write(
        r.join("etc/group"),
        "root:x:0:\nwheel:x:10:app\napp:x:1000:\n",
    )
    .unwrap();
    fs::write(
        r.join("etc/shadow"),
        "root:*:19000:0:99999:7:::\napp:!:19000::::::\n",
    )
    .unwrap();
    fs::set_permissions(r.join("etc/shadow"), fs::Permissions::from_mode(0o640)).unwrap();
    rustix::fs::chown(
        r.join("home/app"),
        Some(rustix::fs::Uid::from_raw(1000)),
        Some(rustix::fs::Gid::from_raw(1000)),
    )
    .unwrap();
    Some(t)
}

/// Points the guest's kernel command line at a metadata file in the guest.
pub fn metadata_file(root: &Path, json: &serde_json::Value) {
    fs::write(
        root.join("run/meta.json"),
        serde_json::to_vec(json).unwrap(),
    )
    .unwrap();
    fs::write(
        root.join("proc/cmdline"),
        "console=ttyS0 firebuild.metadata=file:/run/meta.json\n",
    )
    .unwrap();
}

pub fn vminit(root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vminit"));
    c.arg("--root").arg(root).arg("--once").args(args);
    c.env("RUST_LOG", "info");
    c
}

/// Runs and returns (exit code, stdout, stderr).
pub fn run(mut cmd: Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    );
    eprintln!("--- vminit stderr ---\n{err}--- end ---");
    (status.code().unwrap_or(-1), out, err)
}

pub async fn run_async(cmd: Command) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || run(cmd)).await.unwrap()
}

pub fn pki() -> BuildPki {
    BuildPki::generate(
        BuildId::new("build-1").unwrap(),
        &["127.0.0.1"],
        &Validity::default(),
    )
    .unwrap()
}

/// The metadata `bootstrap` section for a server at `addr`.
pub fn bootstrap_json(addr: std::net::SocketAddr, pki: &BuildPki) -> serde_json::Value {
    serde_json::json!({
        "grpc-host-port": addr.to_string(),
        "tls-ca-cert": pki.client.ca_cert_pem(),
        "tls-cert": pki.client.cert_pem(),
        "tls-key": pki.client.key_pem().expose_secret(),
    })
}

pub async fn serve(plan: BuildPlan, context: &Path, pki: &BuildPki) -> (ServerHandle, Events) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    BootstrapServer::builder()
        .resources(DirSource::new(&plan, context))
        .plan(plan)
        .tls(pki.server.clone())
        .expected_client(pki.build_id.clone())
        .serve(listener)
        .await
        .unwrap()
}

pub fn plan(dockerfile: &str, context: &Path) -> BuildPlan {
    firebuild_dockerfile::plan(&firebuild_dockerfile::PlanRequest::new(
        "Dockerfile",
        dockerfile,
        context,
    ))
    .unwrap()
}

/// A cpio image of `files` made by GNU cpio in `format` (`newc`, `odc`).
pub fn cpio_image(dir: &Path, format: &str, files: &[(&str, &str)]) -> Option<PathBuf> {
    let cpio = tool("cpio")?;
    let src = dir.join(format!("cpio-src-{format}"));
    fs::create_dir_all(&src).unwrap();
    for (name, content) in files {
        fs::write(src.join(name), content).unwrap();
    }
    let list: String = files.iter().map(|(n, _)| format!("{n}\n")).collect();
    let mut child = Command::new(cpio)
        .args(["-o", "--quiet", "-H", format])
        .current_dir(&src)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(list.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let img = dir.join(format!("seed-{format}.img"));
    fs::write(&img, out.stdout).unwrap();
    Some(img)
}

pub fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

pub fn owner(p: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt as _;
    let m = fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid())
}
