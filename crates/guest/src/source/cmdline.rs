//! The kernel command line: `firebuild.metadata=` (the metadata override) and `ip=` (static
//! network configuration for the interface that reaches the metadata service).
//!
//! # `firebuild.metadata=` value format
//!
//! | value | meaning |
//! |---|---|
//! | `off` | no metadata: no source is asked, the guest boots unconfigured ([`Override::Off`]) |
//! | `base64:<data>` | the metadata document inline, standard or URL-safe base64 of the JSON, padding optional |
//! | `file:<path>` | a file or block device, resolved under the root: a cpio config archive (by its magic) or a JSON document |
//!
//! When present, the override is the only source tried (it is an override). The kernel command
//! line holds a few KiB at most, so `base64:` suits small documents; larger ones go in a file
//! or device.

/// Longest command line read (the kernel's own limit on x86 is 2 KiB; some configs raise it).
pub const MAX_CMDLINE: usize = 64 * 1024;

/// The parameter that overrides the metadata source.
pub const METADATA_PARAM: &str = "firebuild.metadata";

/// The kernel command line split into parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cmdline {
    params: Vec<(String, Option<String>)>,
}

impl Cmdline {
    /// Splits a command line the way the kernel does: whitespace separates parameters, double
    /// quotes group (and are removed), `key=value` or a bare `key`.
    pub fn parse(text: &str) -> Self {
        let mut params = Vec::new();
        let mut word = String::new();
        let mut in_quotes = false;
        let mut has_word = false;
        for c in text.chars() {
            match c {
                '"' => {
                    in_quotes = !in_quotes;
                    has_word = true;
                }
                c if c.is_whitespace() && !in_quotes => {
                    if has_word {
                        params.push(split_param(&word));
                        word.clear();
                        has_word = false;
                    }
                }
                c => {
                    word.push(c);
                    has_word = true;
                }
            }
        }
        if has_word {
            params.push(split_param(&word));
        }
        Self { params }
    }

    /// The value of the last `key=value` for `key` (the kernel's "last one wins").
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
    }

    /// The `firebuild.metadata=` override, if given.
    pub fn metadata_override(&self) -> Option<Result<Override, CmdlineError>> {
        self.get(METADATA_PARAM).map(Override::parse)
    }

    /// The `ip=` parameter, when it is a static configuration (not `dhcp`, `off`...).
    pub fn ip(&self) -> Option<Result<KernelIp, CmdlineError>> {
        let v = self.get("ip")?;
        if !v.contains(':') {
            // `ip=dhcp`, `ip=off`, `ip=on`...: autoconfiguration is the kernel's business.
            return None;
        }
        Some(KernelIp::parse(v))
    }
}

fn split_param(word: &str) -> (String, Option<String>) {
    match word.split_once('=') {
        Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
        None => (word.to_owned(), None),
    }
}

/// A `firebuild.metadata=` value.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Override {
    /// `off`: no metadata, on purpose.
    Off,
    /// `base64:...`: the decoded document bytes (JSON).
    Inline(Vec<u8>),
    /// `file:PATH`: a file or device under the root (absolute in the guest).
    File(String),
}

impl Override {
    /// Parses a value (see the module docs for the format).
    pub fn parse(value: &str) -> Result<Self, CmdlineError> {
        use base64::Engine as _;
        if value == "off" {
            return Ok(Self::Off);
        }
        if let Some(b64) = value.strip_prefix("base64:") {
            let b64 = b64.trim_end_matches('=');
            let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(b64)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(b64))
                .map_err(|_| CmdlineError::Value {
                    param: METADATA_PARAM,
                    what: "base64: value is not base64",
                })?;
            return Ok(Self::Inline(bytes));
        }
        if let Some(path) = value.strip_prefix("file:") {
            if !path.starts_with('/') {
                return Err(CmdlineError::Value {
                    param: METADATA_PARAM,
                    what: "file: path must be absolute",
                });
            }
            return Ok(Self::File(path.to_owned()));
        }
        Err(CmdlineError::Value {
            param: METADATA_PARAM,
            what: "expected off, base64:DATA or file:PATH",
        })
    }
}

/// The static part of the kernel's
/// `ip=<client>:<server>:<gw>:<netmask>:<host>:<dev>:<autoconf>:<dns0>:<dns1>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelIp {
    /// The guest's address.
    pub client: std::net::Ipv4Addr,
    /// The default gateway, if given.
    pub gateway: Option<std::net::Ipv4Addr>,
    /// The prefix length from the netmask (32 when no mask is given).
    pub prefix_len: u8,
    /// The hostname field, if given.
    pub hostname: Option<String>,
    /// The interface name (`eth0` when empty, as the kernel picks the first one).
    pub device: Option<String>,
    /// The name servers of the `dns0` and `dns1` fields, in order (empty when neither is given).
    pub dns: Vec<std::net::Ipv4Addr>,
}

impl KernelIp {
    /// Parses the value of `ip=` (static form only).
    pub fn parse(value: &str) -> Result<Self, CmdlineError> {
        let bad = |what| CmdlineError::Value { param: "ip", what };
        let f: Vec<&str> = value.split(':').collect();
        let field = |i: usize| f.get(i).copied().filter(|s| !s.is_empty());
        let client = field(0)
            .ok_or(bad("client address missing"))?
            .parse()
            .map_err(|_| bad("client address is not IPv4"))?;
        let gateway = field(2)
            .map(|g| g.parse().map_err(|_| bad("gateway is not IPv4")))
            .transpose()?;
        let prefix_len = match field(3) {
            None => 32,
            Some(m) => {
                let mask: std::net::Ipv4Addr = m.parse().map_err(|_| bad("netmask is not IPv4"))?;
                let bits = u32::from(mask);
                if bits.leading_ones() + bits.trailing_zeros() != 32 {
                    return Err(bad("netmask is not contiguous"));
                }
                // At most 32: fits a u8.
                u8::try_from(bits.leading_ones()).map_err(|_| bad("netmask"))?
            }
        };
        let dns = [7, 8]
            .into_iter()
            .filter_map(field)
            .map(|d| d.parse().map_err(|_| bad("name server is not IPv4")))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            client,
            gateway,
            prefix_len,
            hostname: field(4).map(str::to_owned),
            device: field(5).map(str::to_owned),
            dns,
        })
    }
}

/// A bad kernel command line parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CmdlineError {
    /// The value of `param` is malformed.
    #[error("kernel command line parameter {param}=: {what}")]
    Value {
        /// The parameter name.
        param: &'static str,
        /// What is wrong.
        what: &'static str,
    },
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn quotes_group_and_last_value_wins() {
        let c = Cmdline::parse(
            "console=ttyS0 quiet foo=\"a b\" firebuild.metadata=off firebuild.metadata=file:/dev/vdb\n",
        );
        assert_eq!(c.get("foo"), Some("a b"));
        assert_eq!(c.get("quiet"), None);
        assert_eq!(
            c.metadata_override(),
            Some(Ok(Override::File("/dev/vdb".into())))
        );
    }

    #[test]
    fn override_values() {
        assert_eq!(Override::parse("off"), Ok(Override::Off));
        // {"hostname":"h"} in padded, unpadded and URL-safe base64.
        for v in [
            "base64:eyJob3N0bmFtZSI6ImgifQ==",
            "base64:eyJob3N0bmFtZSI6ImgifQ",
        ] {
            assert_eq!(
                Override::parse(v),
                Ok(Override::Inline(br#"{"hostname":"h"}"#.to_vec()))
            );
        }
        assert!(Override::parse("base64:***").is_err());
        assert!(Override::parse("file:relative").is_err());
        let err = Override::parse("mmds").unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel command line parameter firebuild.metadata=: expected off, base64:DATA or file:PATH"
        );
    }

    #[test]
    fn kernel_ip_static_form() {
        let c = Cmdline::parse("ip=169.254.0.21::169.254.0.22:255.255.255.252::eth0:off");
        let ip = c.ip().unwrap().unwrap();
        assert_eq!(ip.client, std::net::Ipv4Addr::new(169, 254, 0, 21));
        assert_eq!(ip.gateway, Some(std::net::Ipv4Addr::new(169, 254, 0, 22)));
        assert_eq!(ip.prefix_len, 30);
        assert_eq!(ip.device.as_deref(), Some("eth0"));
        assert_eq!(ip.hostname, None);
        assert_eq!(Cmdline::parse("ip=dhcp").ip(), None);
        assert!(KernelIp::parse("10.0.0.2::10.0.0.1:255.0.255.0::eth0:off").is_err());
        assert_eq!(KernelIp::parse("10.0.0.2").unwrap().prefix_len, 32);
        assert!(ip.dns.is_empty(), "no dns fields: no name servers");
    }

    #[test]
    fn kernel_ip_dns_fields() {
        let ip =
            KernelIp::parse("169.254.0.15::169.254.0.2:255.255.0.0::eth0:off:169.254.0.3").unwrap();
        assert_eq!(ip.dns, [std::net::Ipv4Addr::new(169, 254, 0, 3)]);
        assert_eq!(ip.device.as_deref(), Some("eth0"));
        let ip =
            KernelIp::parse("10.0.0.2::10.0.0.1:255.255.255.0::eth0:off:1.1.1.1:8.8.8.8").unwrap();
        assert_eq!(
            ip.dns,
            [
                std::net::Ipv4Addr::new(1, 1, 1, 1),
                std::net::Ipv4Addr::new(8, 8, 8, 8)
            ]
        );
        // dns1 alone (dns0 empty) still counts.
        let ip = KernelIp::parse("10.0.0.2:::::eth0:off::9.9.9.9").unwrap();
        assert_eq!(ip.dns, [std::net::Ipv4Addr::new(9, 9, 9, 9)]);
        assert!(KernelIp::parse("10.0.0.2:::::eth0:off:resolver").is_err());
    }
}
