//! The sandbox driver runs a busybox init in namespaces; the guest reaches a host server at
//! 169.254.0.2:PORT and the metadata server at 169.254.169.254, then powers off.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use firebuild_vmm::{Driver, Metadata, Network, SandboxDriver, SandboxOptions, VmSpec};

/// What the sandbox driver runs besides busybox.
const SANDBOX_TOOLS: &[(&str, &str)] =
    &[("unshare", "namespaces"), ("nsenter", "sandbox networking")];

#[test]
fn busybox_init_reaches_host_and_metadata_then_powers_off() {
    let Some(busybox) = support::busybox_and(SANDBOX_TOOLS) else {
        return;
    };
    let host = support::http_server(|_, path, _| (200, format!("host saw {path}\n")));
    let mmds = support::http_server(|_, path, _| (200, format!("metadata for {path}\n")));
    let port = host.addr.port();
    let dir = tempfile::tempdir().unwrap();
    let init = format!(
        "#!/bin/busybox sh\n/bin/busybox --install -s /bin\n\
         echo \"guest: pid $$ hostname $(hostname)\"\n\
         wget -q -O - http://169.254.0.2:{port}/hello\n\
         wget -q -O - http://169.254.169.254/latest/meta-data/\n\
         ls /proc/1 >/dev/null && echo guest: proc mounted\n\
         poweroff -f\n"
    );
    let root = support::busybox_root(dir.path(), &busybox, "/sbin/init", &init);
    let mut spec = VmSpec::new("fbsandbox", dir.path(), &root);
    spec.network = Network::User;
    spec.metadata = Metadata::Server(mmds.addr);
    let opts = SandboxOptions {
        init: "/sbin/init".into(),
        forward_ports: vec![port],
        ..SandboxOptions::default()
    };
    let mut driver = SandboxDriver::new(spec, opts);
    let outcome = driver.run(Duration::from_secs(30)).unwrap();
    let log = support::console(driver.console_log());
    let firebuild_vmm::RunOutcome::Exited(exit) = outcome else {
        panic!(
            "sandbox did not exit in time; console log {}",
            driver.console_log().display()
        );
    };
    assert!(!exit.stopped);
    assert!(
        log.contains("guest: pid 1 hostname fbsandbox"),
        "init is PID 1 with its own hostname"
    );
    assert!(
        log.contains("host saw /hello"),
        "guest reached the host through 169.254.0.2"
    );
    assert!(
        log.contains("metadata for /latest/meta-data/"),
        "guest reached the metadata server"
    );
    assert!(log.contains("guest: proc mounted"));
    assert_eq!(host.seen.lock().unwrap().as_slice(), ["GET /hello"]);
}

#[test]
fn a_file_instead_of_a_root_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("rootfs.ext4");
    std::fs::write(&image, b"").unwrap();
    let mut driver = SandboxDriver::new(
        VmSpec::new("x", dir.path(), &image),
        SandboxOptions::default(),
    );
    let err = driver.prepare().unwrap_err().to_string();
    assert!(err.contains("is not one"), "{err}");
}

#[test]
fn vminit_builds_a_one_step_plan_in_the_sandbox() {
    let Some(busybox) = support::busybox_and(SANDBOX_TOOLS) else {
        return;
    };
    let Some(vminit) = support::vminit() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = support::busybox_root(dir.path(), &busybox, "/sbin/placeholder", "");
    support::install_binary(&root, &vminit, "/sbin/vminit");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e2e = support::BootstrapFixture::start(&rt);
    let mut spec = VmSpec::new("fbsandbox2", dir.path(), &root);
    spec.network = Network::User;
    spec.metadata = Metadata::Server(e2e.mmds_addr);
    let opts = SandboxOptions {
        forward_ports: vec![e2e.port],
        ..SandboxOptions::default()
    };
    let mut driver = SandboxDriver::new(spec, opts);
    let outcome = driver.run(Duration::from_secs(60)).unwrap();
    let host_outcome = e2e.outcome(&rt);
    let built = std::fs::read_to_string(root.join("built")).unwrap_or_default();
    if built != "hi\n" {
        support::console(driver.console_log());
    }
    assert!(
        matches!(outcome, firebuild_vmm::RunOutcome::Exited(e) if !e.stopped),
        "{outcome:?}"
    );
    assert!(
        matches!(host_outcome, Some(firebuild_bootstrap::Outcome::Succeeded)),
        "{host_outcome:?}"
    );
    assert_eq!(built, "hi\n", "/built in the root directory");
}
