//! Boots a busybox guest in a real Firecracker when one is on PATH (skips with the reason
//! otherwise). The request bodies and their order are pinned by the unit tests in
//! `src/firecracker.rs` against a recording listener.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use firebuild_vmm::{
    Driver, FirecrackerDriver, FirecrackerOptions, KernelFiles, RunOutcome, VmSpec,
};

#[test]
fn busybox_guest_boots_in_firecracker() {
    let Some(firecracker) = firebuild_vmm::which("firecracker") else {
        eprintln!("skipping: no `firecracker` on PATH (the API requests are pinned by unit tests)");
        return;
    };
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("skipping: firecracker needs /dev/kvm");
        return;
    }
    let Some(busybox) = support::static_busybox() else {
        return;
    };
    if support::need("mkfs.ext4", "the root image").is_none() {
        return;
    }
    let Some(kernel) = support::kernel() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Firecracker ends when the guest reboots (reboot=k), not on power-off.
    let init = "#!/bin/busybox sh\n/bin/busybox --install -s /bin\necho guest: hello from firecracker\nreboot -f\n";
    // No init= and no agent in the initramfs: the image's /sbin/init.
    let root = support::busybox_root(dir.path(), &busybox, "/sbin/init", init);
    let image = dir.path().join("rootfs.ext4");
    support::make_ext4(&root, &image, 16);
    let mut spec = VmSpec::new("fbfc", dir.path(), &image);
    spec.kernel = Some(KernelFiles {
        kernel: kernel.vmlinux(),
        initrd: Some(kernel.initramfs()),
    });
    let opts = FirecrackerOptions {
        firecracker,
        ..FirecrackerOptions::default()
    };
    let mut driver = FirecrackerDriver::new(spec, opts);
    let outcome = driver.run(Duration::from_secs(60)).unwrap();
    let log = support::console(driver.console_log());
    if !log.contains("guest: hello from firecracker") {
        support::keep_console(driver.console_log(), "firecracker");
    }
    assert!(
        matches!(outcome, RunOutcome::Exited(_)),
        "firecracker did not exit: {outcome:?}"
    );
    assert!(log.contains("guest: hello from firecracker"));
}
