//! OpenStack's config-drive / metadata-service layout, read through the MMDS endpoint
//! (`{"openstack": {"latest": {"meta_data.json": ..., "user_data": "...", "network_data.json":
//! ...}}}`; each JSON file may be stored as an object or as a string holding its text).
//!
//! | path | key | becomes |
//! |---|---|---|
//! | `openstack/latest/meta_data.json` | `hostname` | `hostname` |
//! | | `uuid` | `instance-id` |
//! | | `public_keys` (name → key), `keys` (`type: ssh`) | SSH keys of `root` |
//! | `openstack/latest/user_data` | | `firstboot` when it is a `#!` script |
//! | `openstack/latest/network_data.json` | static `ipv4` networks | `network.interfaces` |
//!
//! # network_data.json
//!
//! Each `ipv4` network on an ethernet link becomes an address (`ip_address` + `netmask`) of the
//! interface with the link's `ethernet_mac_address` (and its `mtu`); its first default route
//! (`0.0.0.0/0`) becomes the interface's gateway, other routes its routes; DNS services (the
//! network's, then the global ones on the interface with the gateway) its name servers. What
//! does not fit is skipped with a note (logged as a warning): DHCP and IPv6 networks (vminit
//! configures static addresses only and leaves the rest to the guest), bond and VLAN links, a
//! second default route, a malformed address.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use firebuild_mmds::schema::MacAddr;
use serde_json::{Map, Value};

use super::SourceError;
use super::layout::{MAX_KEYS, Mapped, Reader};

/// The top-level key of the layout in the MMDS tree.
pub(super) const TOP: &str = "openstack";

const META: &str = "/openstack/latest/meta_data.json";
const USER_DATA: &str = "/openstack/latest/user_data";
const NETWORK: &str = "/openstack/latest/network_data.json";

/// Where a mapped document came from (after the base URL).
pub(super) const ORIGIN: &str = "/openstack/latest (OpenStack layout)";

/// The OpenStack layout mapped onto the schema; `None` when none of its files exists.
pub(super) async fn read(r: &Reader<'_>) -> Result<Option<Mapped>, SourceError> {
    let meta = r.json(META).await?;
    let user_data = r.user_data(USER_DATA).await?;
    let network = r.json(NETWORK).await?;
    if meta.is_none() && user_data.is_none() && network.is_none() {
        return Ok(None);
    }
    let mut m = Mapped::default();
    if let Some(meta) = meta {
        map_meta(&meta, &mut m).map_err(|e| r.invalid(META, e))?;
    }
    if let Some(ud) = user_data {
        m.user_data(USER_DATA, ud);
    }
    if let Some(net) = network {
        let mut notes = Vec::new();
        let mapped = map_network(&net, &mut notes).map_err(|e| r.invalid(NETWORK, e))?;
        for n in notes {
            m.note(format!("network_data.json: {n}"));
        }
        if let Some(n) = mapped {
            m.doc.insert("network".into(), n);
        }
    }
    Ok(Some(m))
}

fn string<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("`{key}` is not a string")),
    }
}

fn map_meta(meta: &Map<String, Value>, m: &mut Mapped) -> Result<(), String> {
    m.set_text("hostname", string(meta, "hostname")?);
    m.set_text("instance-id", string(meta, "uuid")?);
    let mut count = 0usize;
    match meta.get("public_keys") {
        None | Some(Value::Null) => {}
        Some(Value::Object(keys)) => {
            // By name: the map's order is not meaningful.
            let keys: BTreeMap<_, _> = keys.iter().collect();
            for (name, key) in keys {
                let key = key
                    .as_str()
                    .ok_or_else(|| format!("`public_keys.{name}` is not a string"))?;
                m.add_keys(key);
                count += 1;
            }
        }
        Some(_) => return Err("`public_keys` is not an object".into()),
    }
    match meta.get("keys") {
        None | Some(Value::Null) => {}
        Some(Value::Array(keys)) => {
            for (i, k) in keys.iter().enumerate() {
                let k = k
                    .as_object()
                    .ok_or_else(|| format!("`keys[{i}]` is not an object"))?;
                if string(k, "type")?.is_some_and(|t| t != "ssh") {
                    continue;
                }
                if let Some(data) = string(k, "data")? {
                    m.add_keys(data);
                    count += 1;
                }
            }
        }
        Some(_) => return Err("`keys` is not an array".into()),
    }
    if count > MAX_KEYS {
        return Err(format!("{count} public keys, more than {MAX_KEYS}"));
    }
    Ok(())
}

fn array<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<&'a [Value], String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(format!("`{key}` is not an array")),
    }
}

fn field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// `255.255.255.0` → 24; `None` for a mask that is not contiguous ones.
fn prefix_of(mask: &str) -> Option<u8> {
    if let Ok(n) = mask.parse::<u8>() {
        return (n <= 32).then_some(n);
    }
    let bits = u32::from(mask.parse::<Ipv4Addr>().ok()?);
    let prefix = bits.leading_ones();
    (bits.checked_shl(prefix).unwrap_or(0) == 0).then_some(prefix as u8)
}

/// `10.0.0.5` + `255.255.255.0` (or `10.0.0.5/24` alone) → `10.0.0.5/24`, IPv4 only.
fn cidr(addr: &str, mask: &str) -> Option<String> {
    let (addr, mask) = match addr.split_once('/') {
        Some((a, p)) => (a, p),
        None => (addr, mask),
    };
    let addr: Ipv4Addr = addr.parse().ok()?;
    Some(format!("{addr}/{}", prefix_of(mask)?))
}

fn dns_of(services: &[Value]) -> Vec<String> {
    services
        .iter()
        .filter(|s| field(s, "type") == "dns")
        .filter_map(|s| field(s, "address").parse::<IpAddr>().ok())
        .map(|a| a.to_string())
        .collect()
}

#[derive(Default)]
struct Interface {
    mac: String,
    mtu: Option<u64>,
    addresses: Vec<String>,
    gateway: Option<String>,
    routes: Vec<Value>,
    dns: Vec<String>,
}

impl Interface {
    fn to_json(&self) -> Value {
        let mut o = Map::new();
        o.insert("mac".into(), self.mac.clone().into());
        o.insert("addresses".into(), self.addresses.clone().into());
        if let Some(g) = &self.gateway {
            o.insert("gateway".into(), g.clone().into());
        }
        if !self.routes.is_empty() {
            o.insert("routes".into(), self.routes.clone().into());
        }
        if let Some(mtu) = self.mtu {
            o.insert("mtu".into(), mtu.into());
        }
        if !self.dns.is_empty() {
            o.insert("dns".into(), serde_json::json!({ "servers": self.dns }));
        }
        Value::Object(o)
    }
}

/// Maps `network_data.json` onto the schema's `network` section (see the module docs): `None`
/// when no static IPv4 network maps; what is skipped goes to `notes`. A document whose shape is
/// wrong (not an object, `links` not a list) is an error.
fn map_network(net: &Map<String, Value>, notes: &mut Vec<String>) -> Result<Option<Value>, String> {
    let links = array(net, "links")?;
    let networks = array(net, "networks")?;
    let services = array(net, "services")?;

    // Link id → index into `ifaces` (an interface per ethernet link with a MAC).
    let mut by_link: BTreeMap<&str, usize> = BTreeMap::new();
    let mut ifaces: Vec<Interface> = Vec::new();
    for link in links {
        let id = field(link, "id");
        let kind = field(link, "type");
        if matches!(kind, "bond" | "vlan") {
            notes.push(format!(
                "link `{id}` ({kind}) skipped: bonds and VLANs are not mapped"
            ));
            continue;
        }
        let Ok(mac) = field(link, "ethernet_mac_address").parse::<MacAddr>() else {
            notes.push(format!(
                "link `{id}` skipped: no valid ethernet_mac_address"
            ));
            continue;
        };
        by_link.insert(id, ifaces.len());
        ifaces.push(Interface {
            mac: mac.to_string(),
            mtu: link.get("mtu").and_then(Value::as_u64),
            ..Interface::default()
        });
    }

    let mut gateway_on = None;
    for n in networks {
        let id = field(n, "id");
        match field(n, "type") {
            "ipv4" => {}
            kind @ ("ipv4_dhcp" | "dhcp4") => {
                notes.push(format!(
                    "network `{id}` ({kind}) skipped: vminit configures static addresses only; \
                     DHCP is left to the guest"
                ));
                continue;
            }
            kind => {
                notes.push(format!(
                    "network `{id}` ({kind}) skipped: only static IPv4 networks are mapped"
                ));
                continue;
            }
        }
        let link = field(n, "link");
        let Some(&i) = by_link.get(link) else {
            notes.push(format!(
                "network `{id}` skipped: its link `{link}` is not a mapped ethernet link"
            ));
            continue;
        };
        let (addr, mask) = (field(n, "ip_address"), field(n, "netmask"));
        let Some(address) = cidr(addr, mask) else {
            notes.push(format!(
                "network `{id}` skipped: `{addr}` / `{mask}` is not an IPv4 address and netmask"
            ));
            continue;
        };
        let iface = &mut ifaces[i];
        iface.addresses.push(address);
        for route in n
            .get("routes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let (to, mask, via) = (
                field(route, "network"),
                field(route, "netmask"),
                field(route, "gateway"),
            );
            let (Some(to), Ok(via)) = (cidr(to, mask), via.parse::<Ipv4Addr>()) else {
                notes.push(format!(
                    "network `{id}`: route to `{to}` / `{mask}` via `{via}` skipped: not IPv4"
                ));
                continue;
            };
            if to == "0.0.0.0/0" {
                match gateway_on {
                    None => {
                        iface.gateway = Some(via.to_string());
                        gateway_on = Some(i);
                    }
                    Some(_) => notes.push(format!(
                        "network `{id}`: second default route (via {via}) skipped: the guest \
                         has one default gateway"
                    )),
                }
            } else {
                iface
                    .routes
                    .push(serde_json::json!({ "to": to, "via": via.to_string() }));
            }
        }
        let dns = dns_of(
            n.get("services")
                .and_then(Value::as_array)
                .map_or(&[], |v| v),
        );
        for s in dns {
            if !iface.dns.contains(&s) {
                iface.dns.push(s);
            }
        }
    }

    let mapped: Vec<usize> = (0..ifaces.len())
        .filter(|&i| !ifaces[i].addresses.is_empty())
        .collect();
    let Some(&first) = mapped.first() else {
        return Ok(None);
    };
    let global = dns_of(services);
    if !global.is_empty() {
        let iface = &mut ifaces[gateway_on.unwrap_or(first)];
        for s in global {
            if !iface.dns.contains(&s) {
                iface.dns.push(s);
            }
        }
    }
    let interfaces: Vec<Value> = mapped.iter().map(|&i| ifaces[i].to_json()).collect();
    Ok(Some(serde_json::json!({ "interfaces": interfaces })))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        let Value::Object(m) = v else { panic!() };
        m
    }

    #[test]
    fn netmasks() {
        assert_eq!(prefix_of("255.255.255.0"), Some(24));
        assert_eq!(prefix_of("255.255.255.255"), Some(32));
        assert_eq!(prefix_of("0.0.0.0"), Some(0));
        assert_eq!(prefix_of("255.0.255.0"), None);
        assert_eq!(prefix_of("16"), Some(16));
        assert_eq!(prefix_of("33"), None);
        assert_eq!(
            cidr("10.0.0.5", "255.255.240.0").as_deref(),
            Some("10.0.0.5/20")
        );
        assert_eq!(cidr("10.0.0.5/24", "").as_deref(), Some("10.0.0.5/24"));
        assert_eq!(cidr("fd00::1", "64"), None);
    }

    #[test]
    fn network_data_maps_static_ipv4_and_notes_the_rest() {
        let net = obj(json!({
            "links": [
                {"id": "tap1", "type": "phy", "ethernet_mac_address": "FA:16:3E:00:00:01", "mtu": 1450},
                {"id": "tap2", "type": "ovs", "ethernet_mac_address": "fa:16:3e:00:00:02"},
                {"id": "bond0", "type": "bond", "bond_links": ["tap1", "tap2"]}
            ],
            "networks": [
                {"id": "net0", "type": "ipv4", "link": "tap1", "ip_address": "10.0.0.5",
                 "netmask": "255.255.255.0",
                 "routes": [
                    {"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.0.0.1"},
                    {"network": "192.168.0.0", "netmask": "255.255.0.0", "gateway": "10.0.0.254"}
                 ],
                 "services": [{"type": "dns", "address": "10.0.0.2"}]},
                {"id": "net1", "type": "ipv4_dhcp", "link": "tap2"},
                {"id": "net2", "type": "ipv6", "link": "tap1", "ip_address": "fd00::5"},
                {"id": "net3", "type": "ipv4", "link": "tap2", "ip_address": "172.16.0.9",
                 "netmask": "255.255.0.0",
                 "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "172.16.0.1"}]}
            ],
            "services": [{"type": "dns", "address": "8.8.8.8"}, {"type": "ntp", "address": "x"}]
        }));
        let mut notes = Vec::new();
        let got = map_network(&net, &mut notes).unwrap().unwrap();
        assert_eq!(
            got,
            json!({"interfaces": [
                {"mac": "fa:16:3e:00:00:01", "addresses": ["10.0.0.5/24"], "gateway": "10.0.0.1",
                 "routes": [{"to": "192.168.0.0/16", "via": "10.0.0.254"}], "mtu": 1450,
                 "dns": {"servers": ["10.0.0.2", "8.8.8.8"]}},
                {"mac": "fa:16:3e:00:00:02", "addresses": ["172.16.0.9/16"]}
            ]})
        );
        let joined = notes.join("\n");
        for want in [
            "link `bond0` (bond) skipped",
            "network `net1` (ipv4_dhcp) skipped",
            "network `net2` (ipv6) skipped",
            "network `net3`: second default route (via 172.16.0.1) skipped",
        ] {
            assert!(joined.contains(want), "{want} not in:\n{joined}");
        }
        assert_eq!(notes.len(), 4, "{joined}");
        // The mapped section is valid schema.
        firebuild_mmds::schema::Metadata::from_value(json!({"network": got})).unwrap();
    }

    #[test]
    fn network_data_without_static_ipv4_maps_nothing() {
        let net = obj(json!({
            "links": [{"id": "l", "type": "phy", "ethernet_mac_address": "fa:16:3e:00:00:01"}],
            "networks": [{"id": "n", "type": "ipv4_dhcp", "link": "l"}]
        }));
        let mut notes = Vec::new();
        assert_eq!(map_network(&net, &mut notes).unwrap(), None);
        assert_eq!(notes.len(), 1);
        assert_eq!(
            map_network(&obj(json!({"links": {}})), &mut notes).unwrap_err(),
            "`links` is not an array"
        );
    }

    #[test]
    fn meta_data_fields() {
        let mut m = Mapped::default();
        map_meta(
            &obj(
                json!({"uuid": "83679162-1378-4288-a2d4-70e13ec132aa", "hostname": "os-1",
                "name": "os-1", "public_keys": {"b": "ssh-rsa BBBB b", "a": "ssh-ed25519 AAAA a"},
                "keys": [{"name": "a", "type": "ssh", "data": "ssh-ed25519 AAAA a"},
                         {"name": "x", "type": "x509", "data": "-----BEGIN"}]}),
            ),
            &mut m,
        )
        .unwrap();
        let (doc, notes) = m.finish();
        assert_eq!(
            doc,
            json!({"hostname": "os-1", "instance-id": "83679162-1378-4288-a2d4-70e13ec132aa",
                "users": [{"name": "root", "ssh-authorized-keys": ["ssh-ed25519 AAAA a", "ssh-rsa BBBB b"]}]})
        );
        assert!(notes.is_empty());
        let mut m = Mapped::default();
        assert_eq!(
            map_meta(&obj(json!({"uuid": 7})), &mut m).unwrap_err(),
            "`uuid` is not a string"
        );
    }
}
