//! The prepared guest kernel: the extracted vmlinux matches the reference decompressor and the
//! initramfs holds what `/init` needs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use firebuild_vmm::kernel::bzimage;

#[test]
fn vmlinux_is_the_x86_64_elf_inside_the_bzimage() {
    let Some(kernel) = support::kernel() else {
        return;
    };
    let vmlinux = std::fs::read(kernel.vmlinux()).unwrap();
    assert_eq!(&vmlinux[..4], bzimage::ELF_MAGIC);
    assert_eq!(vmlinux[4], 2, "64-bit ELF");
    assert_eq!(
        u16::from_le_bytes([vmlinux[0x12], vmlinux[0x13]]),
        0x3e,
        "e_machine x86-64"
    );
    let bz = std::fs::read(kernel.bzimage()).unwrap();
    let payload = bzimage::payload(&bz).unwrap();
    // The build appends the decompressed size as the payload's last 4 bytes.
    let tail = &payload[payload.len() - 4..];
    assert_eq!(
        u32::from_le_bytes(tail.try_into().unwrap()) as usize,
        vmlinux.len()
    );
    let tool = match bzimage::Compression::detect(payload) {
        Some(bzimage::Compression::Lz4) => "lz4",
        Some(bzimage::Compression::Xz) => "xz",
        Some(bzimage::Compression::Zstd) => "zstd",
        other => {
            eprintln!("no reference check for {other:?}");
            return;
        }
    };
    let Some(tool) = firebuild_vmm::which(tool) else {
        eprintln!("skipping the reference comparison: {tool} not installed");
        return;
    };
    let mut child = Command::new(&tool)
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = payload.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    assert!(
        out.stdout.len() >= vmlinux.len(),
        "reference output shorter"
    );
    assert!(
        out.stdout[..vmlinux.len()] == vmlinux[..],
        "vmlinux differs from {} -dc",
        tool.display()
    );
}

#[test]
fn initramfs_lists_init_busybox_console_and_modules() {
    let Some(kernel) = support::kernel() else {
        return;
    };
    let Some(cpio) = support::need("cpio", "listing the initramfs") else {
        return;
    };
    let archive = std::fs::read(kernel.initramfs()).unwrap();
    let mut child = Command::new(cpio)
        .args(["-t", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || stdin.write_all(&archive).unwrap());
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    assert!(out.status.success());
    let listing = String::from_utf8(out.stdout).unwrap();
    let names: Vec<&str> = listing.lines().collect();
    for name in [
        "init",
        "bin/busybox",
        "dev/console",
        "lib/modules/order",
        "newroot",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    for m in &kernel.modules {
        assert!(
            names.contains(&format!("lib/modules/{m}.ko").as_str()),
            "{m}.ko missing"
        );
    }
    let order: Vec<_> = kernel.modules.iter().map(String::as_str).collect();
    let pos = |m: &str| order.iter().position(|x| *x == m).unwrap();
    assert!(
        pos("virtio") < pos("virtio_mmio"),
        "dependencies load first: {order:?}"
    );
    assert!(pos("net_failover") < pos("virtio_net"), "{order:?}");
    assert!(
        pos("vsock") < pos("vmw_vsock_virtio_transport"),
        "{order:?}"
    );
}
