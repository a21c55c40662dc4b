//! End to end under QEMU/TCG: vminit (PID 1 of a busybox ext4 root) reads the bootstrap section
//! from the embedded MMDS through the relay, connects over mTLS to the host's bootstrap server at
//! 169.254.0.2, runs a one-step plan (`RUN echo hi > /built`), calls Success and powers off; the
//! host sees `Outcome::Succeeded`, QEMU exits and `/built` is in the image.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use firebuild_bootstrap::{BootstrapServer, DirSource, Event, Outcome};
use firebuild_pki::{BuildId, BuildPki, Validity};
use firebuild_plan::BuildPlan;
use firebuild_vmm::{
    Driver, KernelFiles, Metadata, Network, QemuDriver, QemuOptions, RunOutcome, VmSpec,
};

const PLAN: &str = r#"{"schema_version":1,"dockerfile":"Dockerfile","target":0,"stages":[{
  "index":0,"base":{"kind":"scratch"},"span":{"start_line":1,"start_col":1,"end_line":1,"end_col":1},
  "config":{},"steps":[
  {"index":0,"span":{"start_line":2,"start_col":1,"end_line":2,"end_col":1},
   "context":{"env":[],"args":[],"workdir":"/","shell":["/bin/sh","-c"]},
   "kind":{"kind":"run","command":{"form":"shell","value":"echo hi > /built && echo step ran"}}}]}]}"#;

#[test]
fn vminit_builds_a_one_step_plan_in_qemu() {
    let Some(busybox) = support::static_busybox() else {
        return;
    };
    if support::need("qemu-system-x86_64", "the VM").is_none()
        || support::need("mkfs.ext4", "the root image").is_none()
        || support::need("debugfs", "reading the built image").is_none()
    {
        return;
    }
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
    let plan: BuildPlan = serde_json::from_str(PLAN).unwrap();
    let context = tempfile::tempdir().unwrap();
    let build = BuildId::new("vmm-e2e").unwrap();
    let pki = BuildPki::generate(build.clone(), &["169.254.0.2"], &Validity::default()).unwrap();
    let (mut server, mut events) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        BootstrapServer::builder()
            .resources(DirSource::new(&plan, context.path()))
            .plan(plan.clone())
            .tls(pki.server.clone())
            .expected_client(build)
            .serve(listener)
            .await
            .unwrap()
    });
    let port = server.local_addr().port();
    let metadata = serde_json::json!({
        "bootstrap": {
            "grpc-host-port": format!("169.254.0.2:{port}"),
            "tls-ca-cert": pki.client.ca_cert_pem(),
            "tls-cert": pki.client.cert_pem(),
            "tls-key": pki.client.key_pem().expose_secret(),
        }
    });
    let mmds = rt
        .block_on(
            firebuild_mmds::server::Server::builder()
                .initial_data(metadata)
                .start(),
        )
        .unwrap();
    let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = std::sync::Arc::clone(&output);
    rt.spawn(async move {
        while let Some(event) = events.recv().await {
            seen.lock().unwrap().push(format!("{event:?}"));
            if let Event::Succeeded = event {
                break;
            }
        }
    });

    let mut spec = VmSpec::new("vminit-e2e", dir.path(), &image);
    spec.kernel = Some(KernelFiles {
        kernel: kernel.bzimage(),
        initrd: Some(kernel.initramfs()),
    });
    spec.network = Network::User;
    spec.metadata = Metadata::Server(mmds.local_addr());
    spec.memory_mib = 512;
    let opts = QemuOptions {
        probe_cache: Some(kernel.dir.join("kvm-probe")),
        ..QemuOptions::default()
    };
    let mut driver = QemuDriver::new(spec, opts);
    let started = Instant::now();
    let outcome = driver.run(Duration::from_secs(150)).unwrap();
    let elapsed = started.elapsed();
    let host_outcome = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), server.wait())
            .await
            .ok()
            .flatten()
    });
    let log = std::fs::read_to_string(driver.console_log()).unwrap_or_default();
    let built = support::ext4_cat(&image, "/built");
    let ok = matches!(outcome, RunOutcome::Exited(e) if !e.stopped)
        && matches!(host_outcome, Some(Outcome::Succeeded))
        && built == "hi\n";
    if !ok {
        support::console(driver.console_log());
        support::keep_console(driver.console_log(), "vminit");
        eprintln!("host events: {:#?}", output.lock().unwrap());
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
    rt.block_on(async {
        let _ = server.shutdown().await;
    });
}
