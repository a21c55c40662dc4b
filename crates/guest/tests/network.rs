//! Network configuration over rtnetlink, inside a network namespace made by the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::fd::AsFd;
use std::process::Command;

use firebuild_guest::config::netlink;
use firebuild_mmds::schema::Network;

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

fn netns() -> Option<Netns> {
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
    let ns = Netns(format!("fbguest-{}", std::process::id()));
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
    let Some(ns) = netns() else { return };
    let net: Network = serde_json::from_value(serde_json::json!({"interfaces": [{
        "mac": "52:54:00:AB:CD:EF",
        "name": "eth7",
        "addresses": ["10.200.0.2/24", "fd00:200::2/64"],
        "gateway": "10.200.0.1",
        "routes": [{"to": "10.50.0.0/16", "via": "10.200.0.254", "metric": 50}],
        "mtu": 1400
    }]}))
    .unwrap();
    let path = format!("/run/netns/{}", ns.0);
    let apply_in_ns = move || {
        let f = std::fs::File::open(&path).unwrap();
        rustix::thread::move_into_link_name_space(
            f.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap();
        // Twice: re-applying the same configuration is harmless.
        netlink::apply(&net).unwrap();
        netlink::apply(&net).unwrap();
    };
    std::thread::spawn(apply_in_ns).join().unwrap();

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
    let path = format!("/run/netns/{}", ns.0);
    let err = std::thread::spawn(move || {
        let f = std::fs::File::open(&path).unwrap();
        rustix::thread::move_into_link_name_space(
            f.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap();
        netlink::apply(&bad).unwrap_err().to_string()
    })
    .join()
    .unwrap();
    assert!(err.contains("02:00:00:00:00:01"), "{err}");
}
