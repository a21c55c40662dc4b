//! `firebuild-host kernel prepare|show`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn host() -> Command {
    Command::new(env!("CARGO_BIN_EXE_firebuild-host"))
}

#[test]
fn prepare_caches_vmlinux_and_initramfs_and_reports_the_version() {
    if firebuild_vmm::which("apt-get").is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "apt-get is required to fetch the kernel"
        );
        eprintln!("skipping: no apt-get");
        return;
    }
    // The default cache: the first run of the suite downloads, later runs reuse it.
    let run = || {
        let out = host()
            .args(["kernel", "prepare", "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let first = run();
    let version = first["version"].as_str().unwrap();
    assert!(
        first["package"]
            .as_str()
            .unwrap()
            .starts_with("linux-image-")
    );
    assert!(
        first["dir"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/kernel/{version}"))
    );
    let vmlinux = std::fs::read(first["vmlinux"].as_str().unwrap()).unwrap();
    assert_eq!(&vmlinux[..4], b"\x7fELF", "vmlinux is an ELF image");
    let initramfs = std::fs::read(first["initramfs"].as_str().unwrap()).unwrap();
    assert!(initramfs.starts_with(b"070701"), "initramfs is a newc cpio");
    let modules: Vec<_> = first["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    for m in [
        "virtio_mmio",
        "virtio_blk",
        "virtio_net",
        "vmw_vsock_virtio_transport",
    ] {
        assert!(modules.contains(&m), "{m} in {modules:?}");
    }
    assert_eq!(run(), first, "second prepare reuses the cache");
    let show = host().args(["kernel", "show"]).output().unwrap();
    assert!(String::from_utf8_lossy(&show.stdout).contains(version));
}

#[test]
fn show_without_a_prepared_kernel_says_what_to_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = host()
        .args(["kernel", "show", "--cache"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("firebuild-host kernel prepare"), "{err}");
}
