//! End to end under QEMU/TCG: vminit (PID 1 of a busybox ext4 root) reads the bootstrap section
//! from the embedded MMDS through the relay, connects over mTLS to the host's bootstrap server at
//! 169.254.0.2, runs a one-step plan (`RUN echo hi > /built`), calls Success and powers off; the
//! host sees `Outcome::Succeeded`, QEMU exits and `/built` is in the image.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use firebuild_bootstrap::Outcome;
use firebuild_vmm::{Driver, RunOutcome};

#[test]
fn vminit_builds_a_one_step_plan_in_qemu() {
    let Some(busybox) = support::busybox_and(&[
        ("qemu-system-x86_64", "the VM"),
        ("mkfs.ext4", "the root image"),
        ("debugfs", "reading the built image"),
    ]) else {
        return;
    };
    let Some(vminit) = support::vminit() else {
        return;
    };
    let Some(kernel) = support::kernel() else {
        return;
    };

    let dir = tempfile::tempdir().unwrap();
    let root = support::busybox_root(dir.path(), &busybox, "/sbin/vminit", "");
    support::install_binary(&root, &vminit, "/sbin/vminit");
    for applet in ["echo", "cat", "ls", "mount"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    let image = dir.path().join("rootfs.ext4");
    support::make_ext4(&root, &image, 96);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let e2e = support::BootstrapFixture::start(&rt);

    let mut driver = support::qemu_driver(
        "vminit-e2e",
        dir.path(),
        &image,
        &kernel,
        e2e.mmds_addr,
        512,
    );
    let started = Instant::now();
    let outcome = driver.run(Duration::from_secs(150)).unwrap();
    let elapsed = started.elapsed();
    let host_outcome = e2e.outcome(&rt);
    let log = std::fs::read_to_string(driver.console_log()).unwrap_or_default();
    let built = support::ext4_cat(&image, "/built");
    let ok = matches!(outcome, RunOutcome::Exited(e) if !e.stopped)
        && matches!(host_outcome, Some(Outcome::Succeeded))
        && built == "hi\n";
    if !ok {
        support::console(driver.console_log());
        support::keep_console(driver.console_log(), "vminit");
    }
    assert!(
        matches!(host_outcome, Some(Outcome::Succeeded)),
        "host outcome {host_outcome:?}"
    );
    assert!(
        matches!(outcome, RunOutcome::Exited(e) if !e.stopped),
        "qemu did not exit by itself: {outcome:?}"
    );
    assert_eq!(built, "hi\n", "/built in the image");
    let (switch, run_init) = support::boot_times(&log);
    eprintln!(
        "vminit e2e (TCG): kernel ran the initramfs /init at {run_init:?} s, switched to vminit at {switch:?} s guest uptime; whole run {elapsed:.1?}"
    );
}
