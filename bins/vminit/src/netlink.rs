//! Just enough rtnetlink for PID 1: bring a link up, list and add IPv4 addresses, add a default
//! route. Raw messages over a `NETLINK_ROUTE` socket (rustix, no unsafe); every request asks for
//! an ACK and the kernel's error code is returned as an `io::Error`.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;

use rustix::net::netlink::SocketAddrNetlink;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};

const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;
const IFF_UP: u32 = 0x1;
const AF_INET: u8 = 2;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RTN_UNICAST: u8 = 1;

/// An open rtnetlink socket.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(align4(buf.len()), 0);
}

impl Netlink {
    /// Opens the socket.
    pub fn open() -> io::Result<Self> {
        let fd = rustix::net::socket(AddressFamily::NETLINK, SocketType::RAW, None)?;
        rustix::net::bind(&fd, &SocketAddrNetlink::new(0, 0))?;
        Ok(Self { fd, seq: 0 })
    }

    /// The index of interface `name`.
    pub fn index(&self, name: &str) -> io::Result<u32> {
        let fd = rustix::net::socket(AddressFamily::INET, SocketType::DGRAM, None)?;
        Ok(rustix::net::netdevice::name_to_index(&fd, name)?)
    }

    fn send(&mut self, kind: u16, flags: u16, payload: &[u8]) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut msg = Vec::with_capacity(16 + payload.len());
        msg.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(payload);
        rustix::net::sendto(
            &self.fd,
            &msg,
            SendFlags::empty(),
            &SocketAddrNetlink::new(0, 0),
        )?;
        Ok(self.seq)
    }

    /// Reads answers to `seq` until the ACK (or `NLMSG_DONE` of a dump), handing each other
    /// message's (type, payload) to `each`.
    fn answers(&mut self, seq: u32, mut each: impl FnMut(u16, &[u8])) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let (_, n) = rustix::net::recv(&self.fd, &mut buf[..], RecvFlags::empty())?;
            let mut at = 0;
            let data = &buf[..n.min(buf.len())];
            while at + 16 <= data.len() {
                let word =
                    |o: usize| u32::from_ne_bytes([data[o], data[o + 1], data[o + 2], data[o + 3]]);
                let len = word(at) as usize;
                let kind = u16::from_ne_bytes([data[at + 4], data[at + 5]]);
                let mseq = word(at + 8);
                if len < 16 || at + len > data.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "short netlink message",
                    ));
                }
                let payload = &data[at + 16..at + len];
                at += align4(len);
                if mseq != seq {
                    continue;
                }
                match kind {
                    NLMSG_ERROR => {
                        let code = payload
                            .get(..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .unwrap_or(-libc_eproto());
                        return if code == 0 {
                            Ok(())
                        } else {
                            Err(io::Error::from_raw_os_error(-code))
                        };
                    }
                    NLMSG_DONE => return Ok(()),
                    k => each(k, payload),
                }
            }
        }
    }

    fn request(&mut self, kind: u16, flags: u16, payload: &[u8]) -> io::Result<()> {
        let seq = self.send(kind, flags | NLM_F_ACK, payload)?;
        self.answers(seq, |_, _| {})
    }

    /// Sets the link up.
    pub fn link_up(&mut self, index: u32) -> io::Result<()> {
        // struct ifinfomsg { family u8, pad u8, type u16, index i32, flags u32, change u32 }
        let mut p = vec![0u8; 4];
        p.extend_from_slice(&index.to_ne_bytes());
        p.extend_from_slice(&IFF_UP.to_ne_bytes());
        p.extend_from_slice(&IFF_UP.to_ne_bytes());
        self.request(RTM_NEWLINK, 0, &p)
    }

    /// The IPv4 addresses of the link.
    pub fn ipv4_addresses(&mut self, index: u32) -> io::Result<Vec<Ipv4Addr>> {
        // struct ifaddrmsg { family u8, prefixlen u8, flags u8, scope u8, index u32 }
        let p = [AF_INET, 0, 0, 0, 0, 0, 0, 0];
        let seq = self.send(RTM_GETADDR, NLM_F_DUMP, &p)?;
        let mut out = Vec::new();
        self.answers(seq, |kind, payload| {
            if kind != RTM_NEWADDR || payload.len() < 8 {
                return;
            }
            let idx = u32::from_ne_bytes([payload[4], payload[5], payload[6], payload[7]]);
            if idx != index {
                return;
            }
            let mut at = 8;
            while at + 4 <= payload.len() {
                let len = u16::from_ne_bytes([payload[at], payload[at + 1]]) as usize;
                let kind = u16::from_ne_bytes([payload[at + 2], payload[at + 3]]);
                if len < 4 || at + len > payload.len() {
                    break;
                }
                if kind == IFA_LOCAL && len == 8 {
                    let a = &payload[at + 4..at + 8];
                    out.push(Ipv4Addr::new(a[0], a[1], a[2], a[3]));
                }
                at += align4(len);
            }
        })?;
        Ok(out)
    }

    /// Adds `addr/prefix` to the link (an existing identical address is fine).
    pub fn add_ipv4(&mut self, index: u32, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let mut p = vec![AF_INET, prefix, 0, 0];
        p.extend_from_slice(&index.to_ne_bytes());
        attr(&mut p, IFA_LOCAL, &addr.octets());
        attr(&mut p, IFA_ADDRESS, &addr.octets());
        match self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, &p) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            r => r,
        }
    }

    /// Adds a default route through `gateway` on the link (an existing one is fine).
    pub fn add_default_route(&mut self, index: u32, gateway: Ipv4Addr) -> io::Result<()> {
        // struct rtmsg { family, dst_len, src_len, tos, table, protocol, scope, type: u8; flags u32 }
        let mut p = vec![AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, 0, RTN_UNICAST];
        p.extend_from_slice(&0u32.to_ne_bytes());
        attr(&mut p, RTA_GATEWAY, &gateway.octets());
        attr(&mut p, RTA_OIF, &index.to_ne_bytes());
        match self.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, &p) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            r => r,
        }
    }
}

fn libc_eproto() -> i32 {
    71
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const INNER: &str = "VMINIT_NETNS_INNER";

    /// Runs itself again inside `unshare --net` (a fresh network namespace: only `lo`, down).
    #[test]
    fn link_address_and_route_in_a_fresh_network_namespace() {
        if std::env::var_os(INNER).is_some() {
            return inner();
        }
        let unshare = ["/usr/bin/unshare", "/bin/unshare"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let why = if unshare.is_none() {
            Some("unshare (util-linux) is missing")
        } else if !rustix::process::geteuid().is_root() {
            Some("needs root for a network namespace")
        } else {
            None
        };
        if let Some(why) = why {
            if std::env::var_os("CI").is_some() {
                panic!("{why}");
            }
            eprintln!("skipped: {why}");
            return;
        }
        let out = std::process::Command::new(unshare.unwrap())
            .args(["--net", "--"])
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "netlink::tests::link_address_and_route_in_a_fresh_network_namespace",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(INNER, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("netns checks passed"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn inner() {
        let mut nl = Netlink::open().unwrap();
        let lo = nl.index("lo").unwrap();
        assert!(nl.ipv4_addresses(lo).unwrap().is_empty(), "lo starts down");
        nl.link_up(lo).unwrap();
        assert_eq!(nl.ipv4_addresses(lo).unwrap(), [Ipv4Addr::LOCALHOST]);
        let addr = Ipv4Addr::new(10, 9, 8, 7);
        nl.add_ipv4(lo, addr, 24).unwrap();
        nl.add_ipv4(lo, addr, 24).unwrap();
        assert_eq!(nl.ipv4_addresses(lo).unwrap(), [Ipv4Addr::LOCALHOST, addr]);
        nl.add_default_route(lo, Ipv4Addr::new(10, 9, 8, 1))
            .unwrap();
        nl.add_default_route(lo, Ipv4Addr::new(10, 9, 8, 1))
            .unwrap();
        // /proc/net/route: Iface Destination Gateway ... in little-endian hex.
        let routes = std::fs::read_to_string("/proc/net/route").unwrap();
        assert!(
            routes
                .lines()
                .any(|l| l.split_whitespace().take(3).collect::<Vec<_>>()
                    == ["lo", "00000000", "0108090A"]),
            "{routes}"
        );
        assert!(nl.index("nope0").is_err());
        println!("netns checks passed");
    }
}
