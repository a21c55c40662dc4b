//! Boots the QEMU microvm driver under TCG with a busybox-static ext4 root made here: the guest
//! fetches a V2 token and metadata through the guestfwd relay, reaches the forwarded host server
//! at 169.254.0.2 and none of the host's other services (an unforwarded loopback port, a port
//! on the host's own global address), and powers off; QEMU exits. The image's own init is named by `init=`, which
//! wins over the agent in the initramfs. The console log is kept on failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use firebuild_vmm::{Accel, Driver, RunOutcome};

#[test]
fn busybox_guest_talks_to_mmds_and_host_then_powers_off() {
    let Some(busybox) = support::busybox_and(&[
        ("qemu-system-x86_64", "the VM"),
        ("mkfs.ext4", "the root image"),
    ]) else {
        return;
    };
    let Some(kernel) = support::kernel() else {
        return;
    };
    let host = support::http_server(|_, path, _| (200, format!("host saw {path}")));
    // Two host services the guest must not reach: one on loopback, one on every address.
    let private = support::http_server(|_, _, _| (200, "private leaked".to_owned()));
    let wide = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let wide_port = wide.local_addr().unwrap().port();
    let host_ip = support::host_global_ipv4().expect("the host has a global IPv4 address");
    let private_port = private.addr.port();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mmds = rt
        .block_on(
            firebuild_mmds::server::Server::builder()
                .initial_data(
                    serde_json::json!({"latest": {"meta-data": {"greeting": "hello from mmds"}}}),
                )
                .start(),
        )
        .unwrap();
    let port = host.addr.port();
    let dir = tempfile::tempdir().unwrap();
    let init = format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
read -r up _ < /proc/uptime
echo "guest: init at uptime ${{up}}s"
# nc must not half-close before the answer: keep its stdin open a moment (busybox wget cannot PUT).
token=$( (printf 'PUT /latest/api/token HTTP/1.0\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n'; sleep 1) | nc 169.254.169.254 80 | tail -n 1)
[ -n "$token" ] && echo "guest: got a token"
greeting=$(wget -q -O - --header "X-metadata-token: $token" http://169.254.169.254/latest/meta-data/greeting)
echo "guest: metadata $greeting"
wget -q -O - http://169.254.0.2:{port}/hello
echo
timeout 10 wget -q -O - http://169.254.0.2:{private_port}/leak && echo "guest: reached private" || echo "guest: private refused"
timeout 10 wget -q -O - http://{host_ip}:{wide_port}/leak && echo "guest: reached wide" || echo "guest: wide refused"
echo "guest: powering off"
poweroff -f
"#
    );
    let root = support::busybox_root(dir.path(), &busybox, "/sbin/custom-init", &init);
    let image = dir.path().join("rootfs.ext4");
    support::make_ext4(&root, &image, 16);
    // An initramfs that holds an agent (busybox stands in: it would fail on --switch-root) and
    // an explicit init=: the image's own init must win.
    let initrd = dir.path().join("agent.cpio");
    firebuild_vmm::kernel::agent_initramfs(&kernel, &busybox, &[], &initrd).unwrap();
    let mut driver = support::qemu_driver_with(
        "qemu-busybox",
        dir.path(),
        &image,
        &kernel,
        Some(&initrd),
        Some(mmds.local_addr()),
        &[port],
        &format!(
            "{} init=/sbin/custom-init",
            firebuild_vmm::qemu::DEFAULT_CMDLINE
        ),
        256,
    );
    let started = Instant::now();
    let outcome = driver.run(Duration::from_secs(120)).unwrap();
    let elapsed = started.elapsed();
    let log = std::fs::read_to_string(driver.console_log()).unwrap_or_default();
    for line in log
        .lines()
        .filter(|l| l.contains("guest:") || l.contains("wget"))
    {
        eprintln!("console: {line}");
    }
    let ok = matches!(outcome, RunOutcome::Exited(e) if !e.stopped)
        && log.contains("guest: metadata hello from mmds")
        && log.contains("host saw /hello")
        && log.contains("guest: powering off");
    if !ok {
        support::console(driver.console_log());
        support::keep_console(driver.console_log(), "busybox");
    }
    assert!(
        matches!(outcome, RunOutcome::Exited(e) if !e.stopped),
        "qemu did not exit by itself: {outcome:?}"
    );
    assert!(
        log.contains("guest: got a token"),
        "guest got a V2 token through the relay"
    );
    assert!(
        log.contains("guest: metadata hello from mmds"),
        "guest read metadata with the token"
    );
    assert!(
        log.contains("host saw /hello"),
        "guest reached the host at 169.254.0.2"
    );
    assert_eq!(host.seen.lock().unwrap().as_slice(), ["GET /hello"]);
    assert!(
        log.contains("guest: private refused") && private.seen.lock().unwrap().is_empty(),
        "an unforwarded host loopback port was reachable"
    );
    wide.set_nonblocking(true).unwrap();
    assert!(
        log.contains("guest: wide refused") && wide.accept().is_err(),
        "the host's own address {host_ip} was reachable"
    );
    let init_at = log
        .lines()
        .find_map(|l| l.strip_prefix("guest: init at uptime "))
        .unwrap_or("?");
    eprintln!(
        "qemu ({:?}): kernel start -> /sbin/custom-init {init_at} (guest uptime), whole run {elapsed:.1?}",
        driver.accel().unwrap_or(Accel::Tcg)
    );
}
