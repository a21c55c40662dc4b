//! Shared fixtures: a busybox-static guest tree.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;

/// A temporary guest root with busybox (`/bin/busybox` + one symlink per applet in /bin),
/// `/etc/passwd`, `/etc/group`, `/etc/shadow`, `/etc/skel`, `/tmp`. `None` (with the reason
/// printed) when busybox or root is missing outside CI; a panic in CI.
pub fn busybox_root() -> Option<tempfile::TempDir> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let why = if busybox.is_none() {
        Some("busybox-static is not installed (apt-get install busybox-static)")
    } else if rustix::process::geteuid().as_raw() != 0 {
        Some("this test needs root (chroot, chown)")
    } else {
        None
    };
    if let Some(why) = why {
        if std::env::var_os("CI").is_some() {
            panic!("{why}");
        }
        eprintln!("skipped: {why}");
        return None;
    }
    let bb = busybox.unwrap();
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    for d in ["bin", "etc/skel", "tmp", "root", "home", "usr/bin"] {
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
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .unwrap();
    fs::write(
        r.join("etc/group"),
        "root:x:0:\nwheel:x:10:\nstaff:x:50:\nnogroup:x:65534:\n",
    )
    .unwrap();
    fs::write(r.join("etc/shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
    fs::set_permissions(r.join("etc/shadow"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::write(r.join("etc/skel/.profile"), "export PS1='$ '\n").unwrap();
    Some(t)
}
