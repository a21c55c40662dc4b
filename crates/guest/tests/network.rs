//! Network configuration over rtnetlink, inside a network namespace made by the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::IpAddr;
use std::os::fd::AsFd;
use std::process::Command;

use firebuild_guest::config::netlink;
use firebuild_guest::netlink::Netlink;
use firebuild_mmds::schema::{Cidr, Network};

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) -> String {
    let o = Command::new("ip").args(args).output().unwrap();
    assert!(o.status.success(), "ip {args:?}: {o:?}");
    String::from_utf8(o.stdout).unwrap()
}

/// A fresh namespace `fbguest-<pid>-<tag>` (one tag per test: tests run in parallel).
fn netns(tag: &str) -> Option<Netns> {
    let ok = rustix::process::geteuid().as_raw() == 0
        && Command::new("ip")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        let why = "needs root and iproute2 (ip netns)";
        if std::env::var_os("CI").is_some() {
            panic!("{why}");
        }
        eprintln!("skipped: {why}");
        return None;
    }
    let ns = Netns(format!("fbguest-{}-{tag}", std::process::id()));
    ip(&["netns", "add", &ns.0]);
    ip(&[
        "-n", &ns.0, "link", "add", "v0", "type", "veth", "peer", "name", "v1",
    ]);
    ip(&[
        "-n",
        &ns.0,
        "link",
        "set",
        "v0",
        "address",
        "52:54:00:ab:cd:ef",
    ]);
    ip(&["-n", &ns.0, "link", "set", "v1", "up"]);
    Some(ns)
}

#[test]
fn addresses_routes_mtu_and_name_are_applied_in_a_netns() {
    let Some(ns) = netns("apply") else { return };
    let net: Network = serde_json::from_value(serde_json::json!({"interfaces": [{
        "mac": "52:54:00:AB:CD:EF",
        "name": "eth7",
        "addresses": ["10.200.0.2/24", "fd00:200::2/64"],
        "gateway": "10.200.0.1",
        "routes": [{"to": "10.50.0.0/16", "via": "10.200.0.254", "metric": 50}],
        "mtu": 1400
    }]}))
    .unwrap();
    in_netns(&ns, move || {
        // Twice: re-applying the same configuration is harmless.
        netlink::apply(&net).unwrap();
        netlink::apply(&net).unwrap();
    });

    let link = ip(&["-n", &ns.0, "-o", "link", "show", "eth7"]);
    assert!(link.contains("mtu 1400"), "{link}");
    assert!(link.contains("52:54:00:ab:cd:ef"), "{link}");
    assert!(link.contains(",UP"), "{link}");
    let addrs = ip(&["-n", &ns.0, "-o", "addr", "show", "dev", "eth7"]);
    assert!(addrs.contains("inet 10.200.0.2/24"), "{addrs}");
    assert!(addrs.contains("inet6 fd00:200::2/64"), "{addrs}");
    assert_eq!(
        addrs.matches("inet 10.200.0.2/24").count(),
        1,
        "no duplicate address"
    );
    let routes = ip(&["-n", &ns.0, "route", "show"]);
    assert!(
        routes.contains("default via 10.200.0.1 dev eth7"),
        "{routes}"
    );
    assert!(
        routes.contains("10.50.0.0/16 via 10.200.0.254 dev eth7"),
        "{routes}"
    );
    assert!(routes.contains("metric 50"), "{routes}");
    assert!(
        routes.contains("169.254.169.254 dev eth7"),
        "metadata route: {routes}"
    );

    // An unknown MAC is an error naming it.
    let bad: Network = serde_json::from_value(serde_json::json!({"interfaces": [{
        "mac": "02:00:00:00:00:01"
    }]}))
    .unwrap();
    let err = in_netns(&ns, move || netlink::apply(&bad).unwrap_err().to_string());
    assert!(err.contains("02:00:00:00:00:01"), "{err}");
}

/// Runs `f` on a thread moved into the network namespace `ns`.
fn in_netns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{}", ns.0);
    std::thread::spawn(move || {
        let f_ns = std::fs::File::open(&path).unwrap();
        rustix::thread::move_into_link_name_space(
            f_ns.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// The handle vminit uses for `lo` and the kernel's `ip=`: link up, addresses, default route.
#[test]
fn handle_brings_lo_up_and_adds_an_address_and_a_default_route_in_a_netns() {
    let Some(ns) = netns("lo") else { return };
    let addr: Cidr = "10.9.8.7/24".parse().unwrap();
    let gw: IpAddr = "10.9.8.1".parse().unwrap();
    let (before, up, after, missing) = in_netns(&ns, move || {
        let mut nl = Netlink::open().unwrap();
        let lo = nl.index("lo").unwrap();
        let v4 = |nl: &mut Netlink| -> Vec<Cidr> {
            let all = nl.addresses(lo).unwrap();
            all.into_iter().filter(|c| c.addr.is_ipv4()).collect()
        };
        let before = v4(&mut nl);
        nl.link_up(lo).unwrap();
        let up = v4(&mut nl);
        // Twice: adding the same address or default route again is harmless.
        nl.add_address(lo, &addr).unwrap();
        nl.add_address(lo, &addr).unwrap();
        nl.add_default_route(lo, gw).unwrap();
        nl.add_default_route(lo, gw).unwrap();
        let after = v4(&mut nl);
        let missing = nl.index("nope0").unwrap_err();
        (before, up, after, missing)
    });
    assert!(
        before.is_empty(),
        "lo starts down, without 127.0.0.1: {before:?}"
    );
    assert_eq!(up, ["127.0.0.1/8".parse::<Cidr>().unwrap()]);
    assert_eq!(after, [up[0], addr]);
    assert_eq!(missing.kind(), std::io::ErrorKind::NotFound, "{missing}");
    assert!(missing.to_string().contains("nope0"), "{missing}");
    let link = ip(&["-n", &ns.0, "-o", "link", "show", "lo"]);
    assert!(link.contains(",UP"), "{link}");
    let routes = ip(&["-n", &ns.0, "-4", "route", "show", "default"]);
    assert_eq!(
        routes.matches("default via 10.9.8.1 dev lo").count(),
        1,
        "{routes}"
    );
}
