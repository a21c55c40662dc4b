//! Network configuration through rtnetlink (raw `NETLINK_ROUTE` messages over a rustix socket;
//! no `ip` binary needed in the guest).
//!
//! For each interface of the metadata, found by MAC address: rename (link down first), set
//! the MTU, bring it up, add its addresses (`NLM_F_REPLACE`: re-applying is harmless), then its
//! routes, the default route through its gateway, and — when none of the guest's IPv4
//! addresses is on the metadata service's link-local network — a link-scope route to
//! `169.254.169.254/32` through the first interface with an IPv4 address, so MMDS stays
//! reachable after the addresses change. Acts on the network namespace of the calling thread.

use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};

use firebuild_mmds::schema::{Cidr, Interface, MacAddr, Network};
use rustix::net::netlink::SocketAddrNetlink;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};

use crate::error::{Error, Result};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;

const IFF_UP: u32 = 1;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;

/// The metadata service address that must stay reachable.
pub const METADATA_ADDR: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 169, 254);

fn err(reason: String) -> Error {
    Error::Config {
        step: "network",
        reason,
    }
}

/// A netlink message under construction.
#[derive(Debug, Clone)]
pub struct Message {
    buf: Vec<u8>,
}

impl Message {
    /// A request of `kind` with `flags` (`NLM_F_REQUEST | NLM_F_ACK` added) and sequence `seq`.
    pub fn new(kind: u16, flags: u16, seq: u32) -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        Message { buf }
    }

    fn bytes(mut self, b: &[u8]) -> Self {
        self.buf.extend_from_slice(b);
        self
    }

    fn attr(mut self, kind: u16, data: &[u8]) -> Self {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
        self
    }

    /// The finished message (length filled in).
    pub fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

fn ifinfo(index: i32, flags: u32, change: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    b
}

fn ip_bytes(ip: &IpAddr) -> (u8, Vec<u8>) {
    match ip {
        IpAddr::V4(a) => (AF_INET, a.octets().to_vec()),
        IpAddr::V6(a) => (AF_INET6, a.octets().to_vec()),
    }
}

/// `RTM_NEWADDR` for `cidr` on interface `index`.
pub fn new_addr(seq: u32, index: u32, cidr: &Cidr) -> Vec<u8> {
    let (family, addr) = ip_bytes(&cidr.addr);
    let mut hdr = [0u8; 8];
    hdr[0] = family;
    hdr[1] = cidr.prefix;
    hdr[3] = RT_SCOPE_UNIVERSE;
    hdr[4..8].copy_from_slice(&index.to_ne_bytes());
    let m = Message::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, seq).bytes(&hdr);
    let m = if family == AF_INET {
        m.attr(IFA_LOCAL, &addr).attr(IFA_ADDRESS, &addr)
    } else {
        m.attr(IFA_ADDRESS, &addr)
    };
    m.finish()
}

/// `RTM_NEWROUTE` to `dst` (`None`: default route) via `gateway` (`None`: on-link) out of
/// interface `index`.
pub fn new_route(
    seq: u32,
    index: u32,
    dst: Option<&Cidr>,
    gateway: Option<&IpAddr>,
    metric: Option<u32>,
) -> Vec<u8> {
    let family = match (dst, gateway) {
        (Some(d), _) => ip_bytes(&d.addr).0,
        (None, Some(g)) => ip_bytes(g).0,
        (None, None) => AF_INET,
    };
    let mut hdr = [0u8; 12];
    hdr[0] = family;
    hdr[1] = dst.map_or(0, |d| d.prefix);
    hdr[4] = RT_TABLE_MAIN;
    hdr[5] = RTPROT_STATIC;
    hdr[6] = if gateway.is_some() {
        RT_SCOPE_UNIVERSE
    } else {
        RT_SCOPE_LINK
    };
    hdr[7] = RTN_UNICAST;
    let mut m = Message::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, seq).bytes(&hdr);
    if let Some(d) = dst {
        m = m.attr(RTA_DST, &network_of(d).1);
    }
    if let Some(g) = gateway {
        m = m.attr(RTA_GATEWAY, &ip_bytes(g).1);
    }
    m = m.attr(RTA_OIF, &index.to_ne_bytes());
    if let Some(p) = metric {
        m = m.attr(RTA_PRIORITY, &p.to_ne_bytes());
    }
    m.finish()
}

/// The network address of `c` (host bits cleared).
fn network_of(c: &Cidr) -> (u8, Vec<u8>) {
    let (family, mut bytes) = ip_bytes(&c.addr);
    let prefix = usize::from(c.prefix);
    for (i, b) in bytes.iter_mut().enumerate() {
        let keep = prefix.saturating_sub(i * 8).min(8);
        *b &= if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
    }
    (family, bytes)
}

fn contains(c: &Cidr, ip: &IpAddr) -> bool {
    let probe = Cidr {
        addr: *ip,
        prefix: c.prefix,
    };
    c.addr.is_ipv4() == ip.is_ipv4() && network_of(c) == network_of(&probe)
}

/// A link found in the kernel's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// Hardware address, when it has a 6-byte one.
    pub mac: Option<MacAddr>,
}

/// Parses one `RTM_NEWLINK` payload (after the netlink header).
pub fn parse_link(payload: &[u8]) -> Option<Link> {
    let index = u32::from_ne_bytes(payload.get(4..8)?.try_into().ok()?);
    let mut name = String::new();
    let mut mac = None;
    let mut at = 16;
    while at + 4 <= payload.len() {
        let len = usize::from(u16::from_ne_bytes(payload[at..at + 2].try_into().ok()?));
        let kind = u16::from_ne_bytes(payload[at + 2..at + 4].try_into().ok()?) & 0x3fff;
        if len < 4 || at + len > payload.len() {
            break;
        }
        let data = &payload[at + 4..at + len];
        match kind {
            IFLA_IFNAME => {
                name = String::from_utf8_lossy(data.split(|&b| b == 0).next().unwrap_or(data))
                    .into_owned();
            }
            IFLA_ADDRESS if data.len() == 6 => {
                let mut m = [0u8; 6];
                m.copy_from_slice(data);
                mac = Some(MacAddr(m));
            }
            _ => {}
        }
        at += (len + 3) & !3;
    }
    Some(Link { index, name, mac })
}

struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    fn open() -> Result<Self> {
        let fd = rustix::net::socket(AddressFamily::NETLINK, SocketType::RAW, None)
            .map_err(|e| err(format!("netlink socket: {e}")))?;
        Ok(Socket { fd, seq: 1 })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq += 1;
        self.seq
    }

    fn send(&self, msg: &[u8]) -> Result<()> {
        rustix::net::sendto(
            self.fd.as_fd(),
            msg,
            SendFlags::empty(),
            &SocketAddrNetlink::new(0, 0),
        )
        .map_err(|e| err(format!("netlink send: {e}")))?;
        Ok(())
    }

    /// Reads replies for `seq` until the ACK (or `NLMSG_DONE` for a dump), handing every other
    /// message (type, payload) to `each`.
    fn replies(&self, seq: u32, mut each: impl FnMut(u16, &[u8])) -> Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let (_, n) = rustix::net::recv(self.fd.as_fd(), &mut buf[..], RecvFlags::empty())
                .map_err(|e| err(format!("netlink receive: {e}")))?;
            let mut at = 0;
            while at + 16 <= n {
                let len =
                    u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap_or_default()) as usize;
                let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().unwrap_or_default());
                let mseq = u32::from_ne_bytes(buf[at + 8..at + 12].try_into().unwrap_or_default());
                if len < 16 || at + len > n {
                    return Err(err("truncated netlink reply".into()));
                }
                let payload = &buf[at + 16..at + len];
                if mseq == seq {
                    match kind {
                        NLMSG_ERROR => {
                            let code = i32::from_ne_bytes(
                                payload
                                    .get(..4)
                                    .and_then(|b| b.try_into().ok())
                                    .unwrap_or_default(),
                            );
                            return if code == 0 {
                                Ok(())
                            } else {
                                Err(Error::Io {
                                    op: "netlink request",
                                    path: "rtnetlink".into(),
                                    source: std::io::Error::from_raw_os_error(-code),
                                })
                            };
                        }
                        NLMSG_DONE => return Ok(()),
                        _ => each(kind, payload),
                    }
                }
                at += (len + 3) & !3;
            }
        }
    }

    fn request(&mut self, build: impl FnOnce(u32) -> Vec<u8>, what: &str) -> Result<()> {
        let seq = self.next_seq();
        self.send(&build(seq))?;
        self.replies(seq, |_, _| {}).map_err(|e| match e {
            Error::Io { source, .. } => err(format!("{what}: {source}")),
            other => other,
        })
    }

    fn links(&mut self) -> Result<Vec<Link>> {
        let seq = self.next_seq();
        let msg = Message::new(RTM_GETLINK, NLM_F_DUMP, seq)
            .bytes(&ifinfo(0, 0, 0))
            .finish();
        self.send(&msg)?;
        let mut out = Vec::new();
        self.replies(seq, |kind, payload| {
            if kind == RTM_NEWLINK
                && let Some(l) = parse_link(payload)
            {
                out.push(l);
            }
        })?;
        Ok(out)
    }
}

fn set_link(seq: u32, index: u32, flags: u32, change: u32, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut m = Message::new(RTM_NEWLINK, 0, seq).bytes(&ifinfo(index as i32, flags, change));
    for (k, v) in attrs {
        m = m.attr(*k, v);
    }
    m.finish()
}

/// Applies `net` to the interfaces of the calling thread's network namespace.
pub fn apply(net: &Network) -> Result<()> {
    let mut sock = Socket::open()?;
    let links = sock.links()?;
    let mut metadata_route_via: Option<u32> = None;
    let mut metadata_covered = false;
    for iface in &net.interfaces {
        let Some(link) = links.iter().find(|l| l.mac == Some(iface.mac)) else {
            return Err(err(format!("no interface with MAC {}", iface.mac)));
        };
        configure(&mut sock, link, iface)?;
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
        sock.request(
            |seq| new_route(seq, index, Some(&dst), None, None),
            "route to the metadata service",
        )?;
    }
    Ok(())
}

fn configure(sock: &mut Socket, link: &Link, iface: &Interface) -> Result<()> {
    let index = link.index;
    if let Some(name) = iface.name.as_deref().filter(|n| *n != link.name) {
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
            return Err(err(format!("invalid interface name {name:?}")));
        }
        let mut z = name.as_bytes().to_vec();
        z.push(0);
        sock.request(|s| set_link(s, index, 0, IFF_UP, &[]), "link down")?;
        sock.request(
            |s| set_link(s, index, 0, 0, &[(IFLA_IFNAME, &z)]),
            &format!("rename {} to {name}", link.name),
        )?;
    }
    if let Some(mtu) = iface.mtu {
        sock.request(
            |s| set_link(s, index, 0, 0, &[(IFLA_MTU, &mtu.to_ne_bytes())]),
            &format!("MTU {mtu}"),
        )?;
    }
    sock.request(|s| set_link(s, index, IFF_UP, IFF_UP, &[]), "link up")?;
    for a in &iface.addresses {
        sock.request(|s| new_addr(s, index, a), &format!("address {a}"))?;
    }
    for r in &iface.routes {
        sock.request(
            |s| new_route(s, index, Some(&r.to), Some(&r.via), r.metric),
            &format!("route {} via {}", r.to, r.via),
        )?;
    }
    if let Some(gw) = &iface.gateway {
        sock.request(
            |s| new_route(s, index, None, Some(gw), None),
            &format!("default route via {gw}"),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn addr_message_layout() {
        let m = new_addr(7, 3, &cidr("10.1.2.3/24"));
        assert_eq!(m.len(), 16 + 8 + 8 + 8);
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), RTM_NEWADDR);
        let flags = u16::from_ne_bytes(m[6..8].try_into().unwrap());
        assert_eq!(
            flags,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
        );
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
        assert_eq!((m[16], m[17]), (AF_INET, 24));
        assert_eq!(u32::from_ne_bytes(m[20..24].try_into().unwrap()), 3);
        assert_eq!(&m[24..32], &[8, 0, IFA_LOCAL as u8, 0, 10, 1, 2, 3]);
        let v6 = new_addr(1, 1, &cidr("fd00::1/64"));
        assert_eq!(v6.len(), 16 + 8 + 20);
    }

    #[test]
    fn route_message_layout() {
        let gw: IpAddr = "10.0.0.1".parse().unwrap();
        let m = new_route(1, 2, None, Some(&gw), Some(100));
        assert_eq!(m[16], AF_INET);
        assert_eq!(m[17], 0, "default route has no destination prefix");
        assert_eq!(
            (m[20], m[21], m[22], m[23]),
            (RT_TABLE_MAIN, RTPROT_STATIC, 0, RTN_UNICAST)
        );
        // gateway, oif, priority attributes
        assert_eq!(m.len(), 16 + 12 + 8 + 8 + 8);
        let m = new_route(1, 2, Some(&cidr("192.168.7.9/16")), None, None);
        assert_eq!(m[22], RT_SCOPE_LINK);
        assert_eq!(
            &m[28..36],
            &[8, 0, RTA_DST as u8, 0, 192, 168, 0, 0],
            "host bits cleared"
        );
    }

    #[test]
    fn link_parsing() {
        let mut p = ifinfo(5, 0, 0).to_vec();
        let m = Message { buf: p.clone() }
            .attr(IFLA_IFNAME, b"eth0\0")
            .attr(IFLA_ADDRESS, &[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        p = m.buf;
        let l = parse_link(&p).unwrap();
        assert_eq!(l.index, 5);
        assert_eq!(l.name, "eth0");
        assert_eq!(l.mac.unwrap().to_string(), "52:54:00:12:34:56");
    }

    #[test]
    fn metadata_address_coverage() {
        let md = IpAddr::V4(METADATA_ADDR);
        assert!(contains(&cidr("169.254.0.10/16"), &md));
        assert!(!contains(&cidr("10.0.0.2/24"), &md));
        assert!(!contains(&cidr("fd00::1/64"), &md));
    }
}
