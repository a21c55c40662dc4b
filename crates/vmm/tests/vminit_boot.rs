//! End to end under QEMU/TCG with vminit in the initramfs ([`firebuild_vmm::kernel::agent_initramfs`])
//! and nothing of firebuild in the image, whose root has merged /usr (`/sbin -> usr/sbin`) and
//! no `/proc`, `/sys`, `/dev`:
//!
//! - build mode: vminit reads the bootstrap section from the embedded MMDS through the relay,
//!   connects over mTLS to the host's bootstrap server at 169.254.0.2, runs a one-step plan with
//!   BuildKit's `/etc/resolv.conf`, `/etc/hosts`, `/etc/hostname`, calls Success and powers off;
//!   the image holds what the step wrote and none of the build environment, stubs or agent;
//! - run mode: `firebuild.metadata=off` and the image config in the initramfs: the workload runs
//!   with its ENV and WORKDIR at once and its exit code reaches the host through the console.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use firebuild_bootstrap::Outcome;
use firebuild_vmm::kernel::Kernel;
use firebuild_vmm::{Driver, QemuDriver, RunOutcome};

const TOOLS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "the VM"),
    ("mkfs.ext4", "the root image"),
    ("debugfs", "reading the built image"),
];

/// busybox, vminit and the kernel, or `None` (skip).
fn prerequisites() -> Option<(PathBuf, PathBuf, firebuild_vmm::kernel::Kernel)> {
    let busybox = support::busybox_and(TOOLS)?;
    let vminit = support::vminit()?;
    let kernel = support::kernel()?;
    Some((busybox, vminit, kernel))
}

/// Boots `image` in run mode with `config` (an image config, JSON) in the agent's initramfs and
/// `firebuild.metadata=off`: the driver (for its console), how QEMU ended, and the console.
fn boot_run_mode(
    name: &str,
    dir: &Path,
    image: &Path,
    kernel: &Kernel,
    vminit: &Path,
    config: &str,
) -> (QemuDriver, RunOutcome, String) {
    boot_run_mode_with(name, dir, image, kernel, vminit, config, None)
}

/// [`boot_run_mode`], with metadata from the server at `mmds` when given (else none at all).
fn boot_run_mode_with(
    name: &str,
    dir: &Path,
    image: &Path,
    kernel: &Kernel,
    vminit: &Path,
    config: &str,
    mmds: Option<std::net::SocketAddr>,
) -> (QemuDriver, RunOutcome, String) {
    let initrd = dir.join(format!("{name}.cpio"));
    firebuild_vmm::kernel::agent_initramfs(
        kernel,
        vminit,
        &[(
            firebuild_vmm::kernel::IMAGE_CONFIG_PATH,
            config.as_bytes(),
            0o644,
        )],
        &initrd,
    )
    .unwrap();
    let mut driver = support::qemu_driver_with(
        name,
        dir,
        image,
        kernel,
        Some(&initrd),
        mmds,
        &[],
        &match mmds {
            Some(_) => firebuild_vmm::qemu::DEFAULT_CMDLINE.to_owned(),
            None => format!(
                "{} firebuild.metadata=off",
                firebuild_vmm::qemu::DEFAULT_CMDLINE
            ),
        },
        256,
    );
    let outcome = driver.run(Duration::from_secs(120)).unwrap();
    let log = std::fs::read_to_string(driver.console_log()).unwrap_or_default();
    (driver, outcome, log)
}

/// PID 1's shutdown went through: stubs removed, `/` remounted read-only (nothing mounted or
/// open for writing was left on it). And PID 1 had forked the agent (no second `exec`).
fn assert_clean_shutdown(log: &str) {
    assert!(!log.contains("starting the agent with exec"), "{log}");
    assert!(!log.contains("remounting / read-only:"), "{log}");
    assert!(!log.contains("removing the mount point"), "{log}");
    assert!(
        log.contains("mount point stubs (removed at shutdown)"),
        "{log}"
    );
}

fn assert_no_stubs_or_agent(image: &Path) {
    let top = support::ext4_ls(image, "/");
    for gone in ["proc", "sys", "dev"] {
        assert!(
            !top.iter().any(|n| n == gone),
            "/{gone} was created by vminit and must be removed: {top:?}"
        );
    }
    assert!(top.iter().any(|n| n == "sbin"), "{top:?}");
    let sbin = support::ext4_ls(image, "/usr/sbin");
    assert!(sbin.is_empty(), "nothing added to /usr/sbin: {sbin:?}");
}

#[test]
fn vminit_from_the_initramfs_builds_on_a_merged_usr_root_and_leaves_nothing() {
    let Some((busybox, vminit, kernel)) = prerequisites() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = support::merged_usr_root(dir.path(), &busybox, &["echo", "cat", "hostname"]);
    let image = dir.path().join("rootfs.ext4");
    support::make_ext4(&root, &image, 96);
    let initrd = dir.path().join("agent.cpio");
    firebuild_vmm::kernel::agent_initramfs(&kernel, &vminit, &[], &initrd).unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let e2e = support::BootstrapFixture::start_with(
        &rt,
        "echo hi > /built && cat /etc/resolv.conf /etc/hosts > /seen-etc && hostname >> /seen-etc \
         && echo kept > /tmp/kept && echo step ran",
    );
    let mut driver = support::qemu_driver_with(
        "vminit-e2e",
        dir.path(),
        &image,
        &kernel,
        Some(&initrd),
        Some(e2e.mmds_addr),
        &[e2e.port],
        firebuild_vmm::qemu::DEFAULT_CMDLINE,
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
    assert!(
        log.contains("--switch-root") || log.contains("root switched to /newroot"),
        "vminit started from the initramfs"
    );
    assert_eq!(firebuild_vmm::parse_exit_code(&log), Some(0), "exit marker");
    assert_clean_shutdown(&log);

    // The step saw BuildKit's environment, with QEMU's DNS forwarder from ip='s dns0...
    let seen = support::ext4_cat(&image, "/seen-etc");
    assert!(seen.contains("nameserver 169.254.0.3\n"), "{seen}");
    assert!(
        seen.contains("127.0.0.1\tlocalhost buildkitsandbox\n"),
        "{seen}"
    );
    assert!(
        seen.ends_with("buildkitsandbox\n"),
        "kernel hostname: {seen}"
    );
    // ... which is not in the image; /tmp was not a tmpfs during the build.
    let etc = support::ext4_ls(&image, "/etc");
    let mut etc_sorted = etc.clone();
    etc_sorted.sort();
    assert_eq!(etc_sorted, ["group", "passwd"], "/etc as the image had it");
    assert_eq!(support::ext4_cat(&image, "/tmp/kept"), "kept\n");
    let top = support::ext4_ls(&image, "/");
    assert!(!top.iter().any(|n| n == "run" || n == "var"), "{top:?}");
    assert_no_stubs_or_agent(&image);

    let (switch, run_init) = support::boot_times(&log);
    eprintln!(
        "vminit e2e (TCG): kernel ran the initramfs /init at {run_init:?} s, started vminit at {switch:?} s guest uptime; whole run {elapsed:.1?}"
    );
}

#[test]
fn run_mode_without_metadata_runs_the_initramfs_image_config_and_reports_its_exit_code() {
    let Some((busybox, vminit, kernel)) = prerequisites() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = support::merged_usr_root(dir.path(), &busybox, &["echo", "pwd", "id", "sleep"]);
    let image = dir.path().join("rootfs.ext4");
    support::make_ext4(&root, &image, 32);
    // A daemon left behind that ignores SIGTERM and holds a file on / open for writing: PID 1
    // must SIGKILL it before the read-only remount, or the remount fails (EBUSY).
    let config = serde_json::json!({
        "cmd": {"form": "shell", "value": "(trap '' TERM; exec sleep 600 >> /held) & echo run-$MODE-$(pwd)-$(id -u) && echo x > /tmp/run-tmp; exit 7"},
        "env": [{"name": "MODE", "value": "m"}],
        "workdir": "/srv",
    })
    .to_string();
    let (driver, outcome, log) =
        boot_run_mode("vminit-run", dir.path(), &image, &kernel, &vminit, &config);
    let code = firebuild_vmm::parse_exit_code(&log);
    if code != Some(7) || !log.contains("run-m-/srv-0") {
        support::console(driver.console_log());
        support::keep_console(driver.console_log(), "vminit-run");
    }
    assert!(
        matches!(outcome, RunOutcome::Exited(e) if !e.stopped),
        "qemu did not exit by itself: {outcome:?}"
    );
    assert!(
        log.contains("run-m-/srv-0"),
        "the workload ran with the image's ENV and WORKDIR"
    );
    assert_eq!(code, Some(7), "the workload's exit code on the console");
    assert!(
        log.contains("no metadata from any source"),
        "firebuild.metadata=off: no source asked"
    );
    assert!(
        !log.contains("metadata unreachable"),
        "no source waited for"
    );
    assert_clean_shutdown(&log);
    // /tmp was a tmpfs in run mode; the image gained no stubs.
    assert_eq!(support::ext4_cat(&image, "/tmp/run-tmp"), "");
    assert_no_stubs_or_agent(&image);
}

/// Run mode with metadata asking for a swap file and a grown root, on an image with neither
/// `swapon` nor `resize2fs`: vminit does both with syscalls, the workload sees the swap, and
/// shutdown turns it off before the read-only remount, so the image is clean (`e2fsck -fn`).
#[test]
fn run_mode_metadata_grows_the_root_and_swaps_without_tools_then_shuts_down_clean() {
    let Some((busybox, vminit, kernel)) = prerequisites() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = support::merged_usr_root(dir.path(), &busybox, &["cat", "df"]);
    let image = dir.path().join("rootfs.ext4");
    support::make_ext4(&root, &image, 32);
    // The disk is 96 MiB; the file system on it 32 MiB.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap()
        .set_len(96 << 20)
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mmds = rt
        .block_on(
            firebuild_mmds::server::Server::builder()
                .initial_data(serde_json::json!({
                    "resize-rootfs": true,
                    "swap": {"size-mib": 8},
                }))
                .start(),
        )
        .unwrap();
    let config = serde_json::json!({
        "cmd": {"form": "shell", "value": "cat /proc/swaps; df -k /"},
    })
    .to_string();
    let (driver, outcome, log) = boot_run_mode_with(
        "vminit-live",
        dir.path(),
        &image,
        &kernel,
        &vminit,
        &config,
        Some(mmds.local_addr()),
    );
    let fsck = std::process::Command::new("e2fsck")
        .args(["-fn"])
        .arg(&image)
        .output()
        .unwrap();
    let fs_bytes = support::ext4_fs_bytes(&image);
    if !fsck.status.success() || !log.contains("/swapfile") {
        support::console(driver.console_log());
        support::keep_console(driver.console_log(), "vminit-live");
    }
    assert!(
        matches!(outcome, RunOutcome::Exited(e) if !e.stopped),
        "qemu did not exit by itself: {outcome:?}"
    );
    assert_eq!(firebuild_vmm::parse_exit_code(&log), Some(0), "exit marker");
    assert!(
        log.contains("/swapfile"),
        "the workload saw the swap file on"
    );
    assert!(!log.contains("resize2fs"), "no tool was looked for");
    assert!(!log.contains("guest configuration step failed"), "{log}");
    assert_eq!(fs_bytes, 96 << 20, "the root grew to its disk");
    assert_clean_shutdown(&log);
    assert!(
        fsck.status.success(),
        "e2fsck -fn after the boot: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
}

/// After the root switch PID 1 still forwards SIGTERM to the agent, which forwards it to the
/// workload: a workload that sends SIGTERM to PID 1 gets it back through its trap.
#[test]
fn sigterm_to_pid1_reaches_the_workload_after_the_root_switch() {
    let Some((busybox, vminit, kernel)) = prerequisites() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = support::merged_usr_root(dir.path(), &busybox, &["echo", "sleep"]);
    let image = dir.path().join("rootfs.ext4");
    support::make_ext4(&root, &image, 32);
    let config = serde_json::json!({
        "entrypoint": {"form": "exec", "value": ["/bin/sh", "-c",
            "trap 'echo got-term; exit 3' TERM; kill -TERM 1; sleep 20 & wait $!; echo not-forwarded; exit 9"]},
    })
    .to_string();
    let (driver, outcome, log) =
        boot_run_mode("vminit-term", dir.path(), &image, &kernel, &vminit, &config);
    let code = firebuild_vmm::parse_exit_code(&log);
    if code != Some(3) {
        support::console(driver.console_log());
        support::keep_console(driver.console_log(), "vminit-term");
    }
    assert!(
        matches!(outcome, RunOutcome::Exited(e) if !e.stopped),
        "qemu did not exit by itself: {outcome:?}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("forwarding") && l.contains("TERM") && l.contains("to the agent")),
        "PID 1 forwarded"
    );
    assert!(log.contains("got-term"), "the workload's trap ran");
    assert_eq!(code, Some(3), "the trap's exit code on the console");
    assert_clean_shutdown(&log);
}
