//! Other clouds' layouts in MMDS (EC2, OpenStack), read by the MMDS source from the embedded
//! server on loopback, with V2 tokens, as vminit reads them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use firebuild_guest::source::{
    Found, MAX_USER_DATA, MmdsSource, Outcome, ResolveError, Sources, error_chain,
};
use firebuild_mmds::server::{Server, ServerHandle};
use serde_json::{Value, json};

const KEY_A: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA key-a@laptop";
const KEY_B: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ key-b@laptop";
const KEY_C: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC key-c@laptop";

async fn server(data: Value) -> ServerHandle {
    Server::builder()
        .initial_data(data)
        .data_limit(1 << 20)
        .start()
        .await
        .unwrap()
}

fn sources(srv: &ServerHandle) -> Sources {
    Sources::new().with(MmdsSource::new(url(srv)))
}

fn url(srv: &ServerHandle) -> String {
    format!("http://{}", srv.local_addr())
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

async fn found(srv: &ServerHandle) -> Found {
    match sources(srv).resolve(soon()).await.unwrap() {
        Outcome::Found(f) => *f,
        other => panic!("no metadata: {other:?}"),
    }
}

fn ec2(meta: Value, user_data: Option<&str>) -> Value {
    let mut latest = json!({ "meta-data": meta });
    if let Some(ud) = user_data {
        latest["user-data"] = ud.into();
    }
    json!({ "latest": latest })
}

#[tokio::test]
async fn ec2_layout_maps_hostname_keys_instance_id_and_firstboot() {
    let srv = server(ec2(
        json!({
            "ami-id": "ami-0123",
            "hostname": "ip-10-0-0-5.ec2.internal",
            "local-hostname": "ignored-when-hostname-is-there",
            "instance-id": "i-0123456789abcdef0",
            "public-keys": {
                // EC2 numbers keys; 10 comes after 2.
                "10": { "openssh-key": format!("{KEY_C}\n") },
                "2": { "openssh-key": KEY_B },
                "0": KEY_A,
            },
        }),
        Some("#!/bin/sh\necho hello from ec2 > /var/tmp/ec2\n"),
    ))
    .await;
    let f = found(&srv).await;
    assert_eq!(f.source, "mmds");
    assert_eq!(
        f.document.origin,
        format!("{}/latest (EC2 layout)", url(&srv))
    );
    // The revision is the whole tree's: a watch sees any change to the layout.
    assert_eq!(
        f.document.revision.as_deref(),
        Some(srv.get().etag.as_str())
    );
    let md = &f.metadata;
    assert_eq!(md.hostname.as_deref(), Some("ip-10-0-0-5.ec2.internal"));
    assert_eq!(md.instance_id.as_deref(), Some("i-0123456789abcdef0"));
    assert_eq!(md.users.len(), 1);
    assert_eq!(md.users[0].name, "root");
    assert_eq!(md.users[0].ssh_authorized_keys, [KEY_A, KEY_B, KEY_C]);
    let fb = md
        .firstboot
        .as_ref()
        .expect("a #! user-data is the firstboot script");
    assert_eq!(fb.script, "#!/bin/sh\necho hello from ec2 > /var/tmp/ec2\n");
    assert_eq!(fb.interpreter(), Some("/bin/sh"));
    assert!(f.notes.is_empty(), "{:?}", f.notes);
    srv.shutdown().await;
}

#[tokio::test]
async fn openstack_layout_maps_meta_data_user_data_and_static_ipv4() {
    let network_data = json!({
        "links": [
            {"id": "tap0", "type": "phy", "ethernet_mac_address": "fa:16:3e:9c:bf:3d", "mtu": 1450},
            {"id": "tap1", "type": "phy", "ethernet_mac_address": "fa:16:3e:9c:bf:3e"}
        ],
        "networks": [
            {"id": "network0", "type": "ipv4", "link": "tap0", "ip_address": "10.0.0.5",
             "netmask": "255.255.255.0",
             "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.0.0.1"}]},
            {"id": "network1", "type": "ipv4_dhcp", "link": "tap1"}
        ],
        "services": [{"type": "dns", "address": "10.0.0.2"}]
    });
    let srv = server(json!({"openstack": {"latest": {
        "meta_data.json": {
            "uuid": "83679162-1378-4288-a2d4-70e13ec132aa",
            "hostname": "os-vm-1.novalocal",
            "name": "os-vm-1",
            "availability_zone": "nova",
            "public_keys": {"mykey": KEY_A, "other": KEY_B}
        },
        "user_data": "#!/bin/bash -e\ntouch /var/tmp/openstack\n",
        // Stored as the file's text, as a host that copied the config drive does.
        "network_data.json": network_data.to_string(),
    }}}))
    .await;
    let f = found(&srv).await;
    assert_eq!(
        f.document.origin,
        format!("{}/openstack/latest (OpenStack layout)", url(&srv))
    );
    let md = &f.metadata;
    assert_eq!(md.hostname.as_deref(), Some("os-vm-1.novalocal"));
    assert_eq!(
        md.instance_id.as_deref(),
        Some("83679162-1378-4288-a2d4-70e13ec132aa")
    );
    assert_eq!(md.users[0].name, "root");
    assert_eq!(md.users[0].ssh_authorized_keys, [KEY_A, KEY_B]);
    assert_eq!(
        md.firstboot.as_ref().unwrap().interpreter(),
        Some("/bin/bash -e")
    );
    let net = md
        .network
        .as_ref()
        .expect("the static IPv4 network is mapped");
    assert_eq!(net.interfaces.len(), 1, "the DHCP link is not configured");
    let ifc = &net.interfaces[0];
    assert_eq!(ifc.mac.to_string(), "fa:16:3e:9c:bf:3d");
    assert_eq!(ifc.addresses[0].to_string(), "10.0.0.5/24");
    assert_eq!(ifc.gateway, Some("10.0.0.1".parse().unwrap()));
    assert_eq!(ifc.mtu, Some(1450));
    assert_eq!(
        ifc.dns.as_ref().unwrap().servers,
        ["10.0.0.2".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(f.notes.len(), 1, "{:?}", f.notes);
    assert!(
        f.notes[0].contains("network1") && f.notes[0].contains("DHCP"),
        "{}",
        f.notes[0]
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn cloud_config_and_unknown_user_data_are_reported_not_run() {
    let srv = server(ec2(
        json!({"local-hostname": "cc-host", "instance-id": "i-cc"}),
        Some("#cloud-config\npackages: [nginx]\nruncmd: [reboot]\n"),
    ))
    .await;
    let f = found(&srv).await;
    // local-hostname stands in when there is no hostname.
    assert_eq!(f.metadata.hostname.as_deref(), Some("cc-host"));
    assert_eq!(f.metadata.firstboot, None, "cloud-config is not run");
    assert_eq!(f.notes.len(), 1, "{:?}", f.notes);
    assert!(
        f.notes[0].starts_with(
            "user-data at `/latest/user-data` is #cloud-config, which vminit does not support"
        ),
        "{}",
        f.notes[0]
    );

    srv.put(ec2(
        json!({"instance-id": "i-cc"}),
        Some("Content-Type: multipart/mixed; boundary=x\n"),
    ))
    .unwrap();
    let f = found(&srv).await;
    assert_eq!(f.metadata.firstboot, None);
    assert!(
        f.notes[0].contains("ignored: unknown format") && f.notes[0].contains("not run"),
        "{:?}",
        f.notes
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn our_schema_wins_over_a_layout_next_to_it() {
    let srv = server(json!({
        "hostname": "ours",
        "instance-id": "i-ours",
        "latest": {"meta-data": {"hostname": "theirs", "instance-id": "i-theirs"}},
        "openstack": {"latest": {"meta_data.json": {"uuid": "u-theirs"}}},
    }))
    .await;
    let f = found(&srv).await;
    assert_eq!(f.document.origin, url(&srv));
    assert_eq!(f.metadata.hostname.as_deref(), Some("ours"));
    assert_eq!(f.metadata.instance_id.as_deref(), Some("i-ours"));
    assert!(f.document.json.get("latest").is_none());
    assert!(f.notes.is_empty());

    // EC2 comes before OpenStack when both are there.
    srv.put(json!({
        "latest": {"meta-data": {"instance-id": "i-ec2"}},
        "openstack": {"latest": {"meta_data.json": {"uuid": "u-os"}}},
    }))
    .unwrap();
    assert_eq!(
        found(&srv).await.metadata.instance_id.as_deref(),
        Some("i-ec2")
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn oversize_user_data_is_refused_with_a_clear_error() {
    let big = format!("#!/bin/sh\n{}", "#".repeat(MAX_USER_DATA));
    let srv = server(ec2(json!({"instance-id": "i-big"}), Some(&big))).await;
    let err = sources(&srv).resolve(soon()).await.unwrap_err();
    let ResolveError::Source(e) = &err else {
        panic!("{err}")
    };
    assert!(!e.is_outage(), "an oversize user-data is not an outage");
    assert_eq!(
        error_chain(&err),
        format!(
            "metadata source failed: mmds: invalid metadata from {}/latest/user-data: user-data is \
             {} bytes, more than the limit of {MAX_USER_DATA}",
            url(&srv),
            big.len()
        )
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn no_layout_is_no_metadata_and_an_outage_is_an_outage() {
    // Layout keys without anything the layouts read, and an empty store: no metadata.
    for data in [
        json!({"latest": {"dynamic": {}}, "openstack": {"2012-08-10": {}}}),
        json!({}),
    ] {
        let srv = server(data).await;
        let out = sources(&srv).resolve(soon()).await.unwrap();
        assert!(matches!(out, Outcome::NoMetadata), "{out:?}");
        srv.shutdown().await;
    }
    // A server that is gone: an outage, never "no metadata".
    let srv = server(ec2(json!({"instance-id": "i-1"}), None)).await;
    let gone = sources(&srv);
    srv.shutdown().await;
    let out = gone
        .resolve(Instant::now() + Duration::from_millis(300))
        .await
        .unwrap();
    assert!(matches!(out, Outcome::Unreachable { .. }), "{out:?}");
}

#[tokio::test]
async fn watch_sees_a_changed_layout_mapped() {
    let srv = server(ec2(json!({"hostname": "h1", "instance-id": "i-1"}), None)).await;
    let srcs = sources(&srv);
    let first = found(&srv).await;
    let rev = first.document.revision.clone().unwrap();
    let mmds = srcs.get("mmds").unwrap();
    let waiter = mmds.watch(Some(&rev), Instant::now() + Duration::from_secs(20));
    let change = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        srv.patch(&json!({"latest": {"meta-data": {"hostname": "h2"}}}))
            .unwrap()
    };
    let (doc, etag) = tokio::join!(waiter, change);
    let doc = doc.unwrap().expect("the change is seen");
    assert_eq!(doc.revision.as_deref(), Some(etag.as_str()));
    let f = Found::new("mmds", doc).unwrap();
    assert_eq!(f.metadata.hostname.as_deref(), Some("h2"));
    assert_eq!(f.metadata.instance_id.as_deref(), Some("i-1"));
    srv.shutdown().await;
}
