//! A small rtnetlink client: raw `NETLINK_ROUTE` messages over a rustix socket (no `ip` binary,
//! no unsafe). [`Netlink`] is the handle: list links, look up an index by name, set a link
//! up/down, rename it, set its MTU, list and add addresses, add routes. Every request asks for
//! an ACK; the kernel's refusal comes back as an [`std::io::Error`] carrying its error code
//! (so [`std::io::ErrorKind`] is usable). Acts on the network namespace of the calling thread.
//!
//! Adding an address or a route uses `NLM_F_CREATE | NLM_F_REPLACE`: doing it again is harmless.
//! [`crate::config::netlink::apply`] (metadata → interfaces) is built on this handle.
//!
//! ```no_run
//! use firebuild_guest::netlink::Netlink;
//!
//! let mut nl = Netlink::open()?;
//! let lo = nl.index("lo")?;
//! nl.link_up(lo)?;
//! let v4 = nl.addresses(lo)?.into_iter().filter(|c| c.addr.is_ipv4()).count();
//! println!("lo has {v4} IPv4 address(es)");
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};

use firebuild_mmds::schema::{Cidr, MacAddr};
use rustix::net::netlink::SocketAddrNetlink;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
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
const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;

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

/// `RTM_NEWLINK` for interface `index`: `flags` under the mask `change`, plus `attrs`.
fn set_link(seq: u32, index: u32, flags: u32, change: u32, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut m = Message::new(RTM_NEWLINK, 0, seq).bytes(&ifinfo(index as i32, flags, change));
    for (k, v) in attrs {
        m = m.attr(*k, v);
    }
    m.finish()
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

/// The network address of `c` (host bits cleared): (address family, address bytes).
pub(crate) fn network_of(c: &Cidr) -> (u8, Vec<u8>) {
    let (family, mut bytes) = ip_bytes(&c.addr);
    let prefix = usize::from(c.prefix);
    for (i, b) in bytes.iter_mut().enumerate() {
        let keep = prefix.saturating_sub(i * 8).min(8);
        *b &= if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
    }
    (family, bytes)
}

/// The `rtattr`s of `payload` from offset `at`: (type, data) pairs; stops at a malformed one.
fn attrs(payload: &[u8], mut at: usize) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let head = payload.get(at..at + 4)?;
        let len = usize::from(u16::from_ne_bytes([head[0], head[1]]));
        let kind = u16::from_ne_bytes([head[2], head[3]]) & 0x3fff;
        if len < 4 {
            return None;
        }
        let data = payload.get(at + 4..at + len)?;
        at += (len + 3) & !3;
        Some((kind, data))
    })
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
    for (kind, data) in attrs(payload, 16) {
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
    }
    Some(Link { index, name, mac })
}

/// Parses one `RTM_NEWADDR` payload (after the netlink header): (interface index, address).
/// An IPv4 address is its `IFA_LOCAL` (`IFA_ADDRESS` is the peer on point-to-point links).
pub fn parse_addr(payload: &[u8]) -> Option<(u32, Cidr)> {
    let family = *payload.first()?;
    let prefix = *payload.get(1)?;
    let index = u32::from_ne_bytes(payload.get(4..8)?.try_into().ok()?);
    let mut local = None;
    let mut address = None;
    for (kind, data) in attrs(payload, 8) {
        let ip = match (family, data.len()) {
            (AF_INET, 4) => IpAddr::from(<[u8; 4]>::try_from(data).ok()?),
            (AF_INET6, 16) => IpAddr::from(<[u8; 16]>::try_from(data).ok()?),
            _ => continue,
        };
        match kind {
            IFA_LOCAL => local = Some(ip),
            IFA_ADDRESS => address = Some(ip),
            _ => {}
        }
    }
    let addr = local.or(address)?;
    Some((index, Cidr { addr, prefix }))
}

fn context(what: &str) -> impl FnOnce(rustix::io::Errno) -> io::Error + '_ {
    move |e| {
        let e = io::Error::from(e);
        io::Error::new(e.kind(), format!("{what}: {e}"))
    }
}

/// An open rtnetlink socket (see the [module docs](self)).
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    /// Opens a `NETLINK_ROUTE` socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        let fd = rustix::net::socket(AddressFamily::NETLINK, SocketType::RAW, None)
            .map_err(context("netlink socket"))?;
        Ok(Netlink { fd, seq: 1 })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        rustix::net::sendto(
            self.fd.as_fd(),
            msg,
            SendFlags::empty(),
            &SocketAddrNetlink::new(0, 0),
        )
        .map_err(context("netlink send"))?;
        Ok(())
    }

    /// Reads replies for `seq` until the ACK (or `NLMSG_DONE` for a dump), handing every other
    /// message (type, payload) to `each`.
    fn replies(&self, seq: u32, mut each: impl FnMut(u16, &[u8])) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let (_, n) = rustix::net::recv(self.fd.as_fd(), &mut buf[..], RecvFlags::empty())
                .map_err(context("netlink receive"))?;
            let data = &buf[..n.min(buf.len())];
            let mut at = 0;
            while at + 16 <= data.len() {
                let word =
                    |o: usize| u32::from_ne_bytes([data[o], data[o + 1], data[o + 2], data[o + 3]]);
                let len = word(at) as usize;
                let kind = u16::from_ne_bytes([data[at + 4], data[at + 5]]);
                let mseq = word(at + 8);
                if len < 16 || at + len > data.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "truncated netlink reply",
                    ));
                }
                let payload = &data[at + 16..at + len];
                at += (len + 3) & !3;
                if mseq != seq {
                    continue;
                }
                match kind {
                    NLMSG_ERROR => {
                        let code = payload
                            .get(..4)
                            .map_or(-rustix::io::Errno::PROTO.raw_os_error(), |b| {
                                i32::from_ne_bytes([b[0], b[1], b[2], b[3]])
                            });
                        return if code == 0 {
                            Ok(())
                        } else {
                            Err(io::Error::from_raw_os_error(-code))
                        };
                    }
                    NLMSG_DONE => return Ok(()),
                    _ => each(kind, payload),
                }
            }
        }
    }

    /// Sends the message `build` makes for a fresh sequence number and waits for its ACK.
    pub fn request(&mut self, build: impl FnOnce(u32) -> Vec<u8>) -> io::Result<()> {
        let seq = self.next_seq();
        self.send(&build(seq))?;
        self.replies(seq, |_, _| {})
    }

    fn dump(&mut self, seq: u32, msg: Message, each: impl FnMut(u16, &[u8])) -> io::Result<()> {
        self.send(&msg.finish())?;
        self.replies(seq, each)
    }

    /// Every link of the namespace.
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let seq = self.next_seq();
        let msg = Message::new(RTM_GETLINK, NLM_F_DUMP, seq).bytes(&ifinfo(0, 0, 0));
        let mut out = Vec::new();
        self.dump(seq, msg, |kind, payload| {
            if kind == RTM_NEWLINK
                && let Some(l) = parse_link(payload)
            {
                out.push(l);
            }
        })?;
        Ok(out)
    }

    /// The index of the interface called `name` (`NotFound` when there is none).
    pub fn index(&mut self, name: &str) -> io::Result<u32> {
        self.links()?
            .into_iter()
            .find(|l| l.name == name)
            .map(|l| l.index)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no interface named {name}"),
                )
            })
    }

    /// Sets link `index` up.
    pub fn link_up(&mut self, index: u32) -> io::Result<()> {
        self.request(|s| set_link(s, index, IFF_UP, IFF_UP, &[]))
    }

    /// Sets link `index` down.
    pub fn link_down(&mut self, index: u32) -> io::Result<()> {
        self.request(|s| set_link(s, index, 0, IFF_UP, &[]))
    }

    /// Renames link `index` to `name` (the kernel wants the link down: this sets it down first;
    /// bring it up again with [`Netlink::link_up`]). `InvalidInput` for a name the kernel
    /// would refuse (empty, over 15 bytes, with `/`, a space or NUL).
    pub fn rename(&mut self, index: u32, name: &str) -> io::Result<()> {
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid interface name {name:?}"),
            ));
        }
        let mut z = name.as_bytes().to_vec();
        z.push(0);
        self.link_down(index)?;
        self.request(|s| set_link(s, index, 0, 0, &[(IFLA_IFNAME, &z)]))
    }

    /// Sets the MTU of link `index`.
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> io::Result<()> {
        self.request(|s| set_link(s, index, 0, 0, &[(IFLA_MTU, &mtu.to_ne_bytes())]))
    }

    /// The addresses (IPv4 and IPv6) of link `index`, in the kernel's order.
    pub fn addresses(&mut self, index: u32) -> io::Result<Vec<Cidr>> {
        let seq = self.next_seq();
        let msg =
            Message::new(RTM_GETADDR, NLM_F_DUMP, seq).bytes(&[AF_UNSPEC, 0, 0, 0, 0, 0, 0, 0]);
        let mut out = Vec::new();
        self.dump(seq, msg, |kind, payload| {
            if kind == RTM_NEWADDR
                && let Some((i, c)) = parse_addr(payload)
                && i == index
            {
                out.push(c);
            }
        })?;
        Ok(out)
    }

    /// Adds `cidr` to link `index` (already there: harmless).
    pub fn add_address(&mut self, index: u32, cidr: &Cidr) -> io::Result<()> {
        self.request(|s| new_addr(s, index, cidr))
    }

    /// Adds (or replaces) the route to `dst` (`None`: the default route) via `gateway`
    /// (`None`: on-link) out of link `index`, with an optional metric.
    pub fn add_route(
        &mut self,
        index: u32,
        dst: Option<&Cidr>,
        gateway: Option<&IpAddr>,
        metric: Option<u32>,
    ) -> io::Result<()> {
        self.request(|s| new_route(s, index, dst, gateway, metric))
    }

    /// Sets the default route: via `gateway` out of link `index`.
    pub fn add_default_route(&mut self, index: u32, gateway: IpAddr) -> io::Result<()> {
        self.add_route(index, None, Some(&gateway), None)
    }
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
        let p = Message {
            buf: ifinfo(5, 0, 0).to_vec(),
        }
        .attr(IFLA_IFNAME, b"eth0\0")
        .attr(IFLA_ADDRESS, &[0x52, 0x54, 0, 0x12, 0x34, 0x56])
        .buf;
        let l = parse_link(&p).unwrap();
        assert_eq!(l.index, 5);
        assert_eq!(l.name, "eth0");
        assert_eq!(l.mac.unwrap().to_string(), "52:54:00:12:34:56");
        assert_eq!(parse_link(&p[..4]), None, "too short for an ifinfomsg");
    }

    #[test]
    fn addr_parsing_prefers_the_local_address() {
        // A point-to-point IPv4 address: IFA_ADDRESS is the peer, IFA_LOCAL ours.
        let mut hdr = vec![AF_INET, 30, 0, 0];
        hdr.extend_from_slice(&9u32.to_ne_bytes());
        let p = Message { buf: hdr }
            .attr(IFA_ADDRESS, &[10, 0, 0, 2])
            .attr(IFA_LOCAL, &[10, 0, 0, 1])
            .buf;
        assert_eq!(parse_addr(&p), Some((9, cidr("10.0.0.1/30"))));
        let mut hdr = vec![AF_INET6, 64, 0, 0];
        hdr.extend_from_slice(&2u32.to_ne_bytes());
        let v6: std::net::Ipv6Addr = "fd00::7".parse().unwrap();
        let p = Message { buf: hdr }.attr(IFA_ADDRESS, &v6.octets()).buf;
        assert_eq!(parse_addr(&p), Some((2, cidr("fd00::7/64"))));
        // A truncated attribute is ignored, not read past.
        let mut hdr = vec![AF_INET, 24, 0, 0];
        hdr.extend_from_slice(&1u32.to_ne_bytes());
        hdr.extend_from_slice(&[8, 0, IFA_LOCAL as u8, 0, 10]);
        assert_eq!(parse_addr(&hdr), None);
    }
}
