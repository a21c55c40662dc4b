//! The kernel's `ip=<client>::<gw>:<mask>::<dev>:off[:dns0[:dns1]]` applied when the interface has no address
//! yet (the initramfs usually did it; a guest booted straight into vminit did not).

use std::net::IpAddr;
use std::path::Path;

use firebuild_guest::netlink::Netlink;
use firebuild_guest::source::cmdline::Cmdline;
use firebuild_guest::source::read_cmdline;
use firebuild_mmds::schema::Cidr;

/// The name servers of the kernel's `ip=` (its `dns0`/`dns1` fields); empty when none.
pub fn kernel_dns(root: &Path) -> Vec<std::net::Ipv4Addr> {
    match Cmdline::parse(&read_cmdline(root)).ip() {
        Some(Ok(ip)) => ip.dns,
        Some(Err(e)) => {
            tracing::warn!("{e}");
            Vec::new()
        }
        None => Vec::new(),
    }
}

pub fn kernel_ip(root: &Path) {
    let cmdline = Cmdline::parse(&read_cmdline(root));
    let Some(ip) = cmdline.ip() else {
        return;
    };
    let ip = match ip {
        Ok(ip) => ip,
        Err(e) => {
            tracing::warn!("{e}");
            return;
        }
    };
    let dev = ip.device.clone().unwrap_or_else(|| "eth0".into());
    let result = (|| -> std::io::Result<bool> {
        let mut nl = Netlink::open()?;
        let index = nl.index(&dev)?;
        nl.link_up(index)?;
        if nl.addresses(index)?.iter().any(|c| c.addr.is_ipv4()) {
            return Ok(false);
        }
        let addr = Cidr {
            addr: IpAddr::V4(ip.client),
            prefix: ip.prefix_len,
        };
        nl.add_address(index, &addr)?;
        if let Some(gw) = ip.gateway {
            nl.add_default_route(index, IpAddr::V4(gw))?;
        }
        Ok(true)
    })();
    match result {
        Ok(true) => tracing::info!(
            "network: {dev} {}/{} gateway {}",
            ip.client,
            ip.prefix_len,
            ip.gateway
                .map(|g| g.to_string())
                .unwrap_or_else(|| "-".into())
        ),
        Ok(false) => tracing::info!("network: {dev} already configured"),
        Err(e) => tracing::warn!("network: configuring {dev} from ip=: {e}"),
    }
}
