//! Network configuration through rtnetlink, on the crate's [`Netlink`] handle (no `ip`
//! binary needed in the guest).
//!
//! For each interface of the metadata, found by MAC address: rename (link down first), set
//! the MTU, bring it up, add its addresses (`NLM_F_REPLACE`: re-applying is harmless), then its
//! routes, the default route through its gateway, and — when none of the guest's IPv4
//! addresses is on the metadata service's link-local network — a link-scope route to
//! `169.254.169.254/32` through the first interface with an IPv4 address, so MMDS stays
//! reachable after the addresses change. Acts on the network namespace of the calling thread.

use std::net::IpAddr;

use firebuild_mmds::schema::{Cidr, Interface, Network};

use crate::error::{Error, Result};
pub use crate::netlink::{Link, Message, new_addr, new_route, parse_link};
use crate::netlink::{Netlink, network_of};

/// The metadata service address that must stay reachable.
pub const METADATA_ADDR: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 169, 254);

fn err(reason: String) -> Error {
    Error::Config {
        step: "network",
        reason,
    }
}

/// `what` failed: the network step's error.
fn failed(what: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| err(format!("{what}: {e}"))
}

fn contains(c: &Cidr, ip: &IpAddr) -> bool {
    let probe = Cidr {
        addr: *ip,
        prefix: c.prefix,
    };
    c.addr.is_ipv4() == ip.is_ipv4() && network_of(c) == network_of(&probe)
}

/// Applies `net` to the interfaces of the calling thread's network namespace.
pub fn apply(net: &Network) -> Result<()> {
    let mut nl = Netlink::open().map_err(|e| err(e.to_string()))?;
    let links = nl.links().map_err(failed("list links"))?;
    let mut metadata_route_via: Option<u32> = None;
    let mut metadata_covered = false;
    for iface in &net.interfaces {
        let Some(link) = links.iter().find(|l| l.mac == Some(iface.mac)) else {
            return Err(err(format!("no interface with MAC {}", iface.mac)));
        };
        configure(&mut nl, link, iface)?;
        for a in &iface.addresses {
            if contains(a, &IpAddr::V4(METADATA_ADDR)) {
                metadata_covered = true;
            }
            if a.addr.is_ipv4() && metadata_route_via.is_none() {
                metadata_route_via = Some(link.index);
            }
        }
    }
    if let (false, Some(index)) = (metadata_covered, metadata_route_via) {
        let dst = Cidr {
            addr: IpAddr::V4(METADATA_ADDR),
            prefix: 32,
        };
        nl.add_route(index, Some(&dst), None, None)
            .map_err(failed("route to the metadata service"))?;
    }
    Ok(())
}

fn configure(nl: &mut Netlink, link: &Link, iface: &Interface) -> Result<()> {
    let index = link.index;
    if let Some(name) = iface.name.as_deref().filter(|n| *n != link.name) {
        nl.rename(index, name)
            .map_err(failed(&format!("rename {} to {name}", link.name)))?;
    }
    if let Some(mtu) = iface.mtu {
        nl.set_mtu(index, mtu)
            .map_err(failed(&format!("MTU {mtu}")))?;
    }
    nl.link_up(index).map_err(failed("link up"))?;
    for a in &iface.addresses {
        nl.add_address(index, a)
            .map_err(failed(&format!("address {a}")))?;
    }
    for r in &iface.routes {
        nl.add_route(index, Some(&r.to), Some(&r.via), r.metric)
            .map_err(failed(&format!("route {} via {}", r.to, r.via)))?;
    }
    if let Some(gw) = &iface.gateway {
        nl.add_default_route(index, *gw)
            .map_err(failed(&format!("default route via {gw}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn metadata_address_coverage() {
        let md = IpAddr::V4(METADATA_ADDR);
        let covers = |c: &str| contains(&c.parse().unwrap(), &md);
        assert!(covers("169.254.0.10/16"));
        assert!(!covers("10.0.0.2/24"));
        assert!(!covers("fd00::1/64"));
    }
}
