//! The metadata schema: what the host writes into MMDS and what the guest obeys.
//!
//! [`Metadata`] is the root object of the MMDS data store. Every section is optional; keys are
//! kebab-case; objects whose typos would silently change behaviour reject unknown keys. The
//! presence of [`Metadata::bootstrap`] is the flag that puts `vminit` in build mode; MMDS itself
//! knows nothing else about builds.
//!
//! # A full example
//!
//! ```json
//! {
//!   "version": 1,
//!   "instance-id": "i-0123456789abcdef",
//!   "hostname": "builder-1",
//!   "bootstrap": {
//!     "grpc-host-port": "169.254.0.2:50051",
//!     "tls-ca-cert": "-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n",
//!     "tls-cert": "-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n",
//!     "tls-key": "-----BEGIN PRIVATE KEY-----\n...\n-----END PRIVATE KEY-----\n",
//!     "server-name": "firebuild-bootstrap"
//!   },
//!   "network": {
//!     "interfaces": [
//!       {
//!         "mac": "52:54:00:12:34:56",
//!         "name": "eth0",
//!         "addresses": ["169.254.0.10/16", "fd00::10/64"],
//!         "gateway": "169.254.0.2",
//!         "routes": [{ "to": "10.0.0.0/8", "via": "169.254.0.1", "metric": 100 }],
//!         "mtu": 1500,
//!         "dns": { "servers": ["169.254.0.3"], "search": ["example.internal"] }
//!       }
//!     ]
//!   },
//!   "groups": [{ "name": "app", "gid": 1000, "members": [] }],
//!   "users": [
//!     {
//!       "name": "app",
//!       "uid": 1000,
//!       "gid": 1000,
//!       "home": "/home/app",
//!       "shell": "/bin/sh",
//!       "groups": ["wheel"],
//!       "ssh-authorized-keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI... app@example"],
//!       "password": "locked"
//!     },
//!     { "name": "ops", "password": { "hash": "$6$salt$hash" } }
//!   ],
//!   "files": {
//!     "motd": { "path": "/etc/motd", "mode": "0644", "owner": "root:root",
//!               "content": { "base64": "aGVsbG8K" } },
//!     "app-config": { "path": "/etc/app/config.toml", "mode": "0600", "owner": "app",
//!                     "content": { "digest": "blake3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262" } }
//!   },
//!   "swap": { "size-mib": 512, "path": "/swapfile" },
//!   "resize-rootfs": true,
//!   "firstboot": { "script": "#!/bin/sh\necho first boot > /var/log/firstboot\n" },
//!   "env": { "PATH": "/usr/local/bin:/usr/bin:/bin", "APP_MODE": "production" },
//!   "entrypoint": ["/usr/bin/app"],
//!   "cmd": ["--serve"],
//!   "workdir": "/srv/app",
//!   "user": "app",
//!   "user-data": {
//!     "10-network-extra": { "env": { "HTTP_PROXY": "http://169.254.0.2:3128" } },
//!     "50-app": {
//!       "files": { "app-env": { "path": "/etc/app/env", "content": { "base64": "QT0xCg==" } } }
//!     }
//!   }
//! }
//! ```
//!
//! # Named user-data parts and the merge order
//!
//! Several owners (the VM driver, the build host, the user) write their own part under
//! `user-data/<part-name>` (for example with `PATCH /mmds {"user-data": {"50-app": {...}}}`),
//! so no owner has to rewrite another's keys. [`Metadata::effective`] folds them into one
//! [`Metadata`]:
//!
//! 1. the top-level sections come first (part name [`ROOT_PART`]);
//! 2. then each `user-data` part in ascending byte order of its name (`"10-net"` before
//!    `"50-app"` before `"app"`); parts may not nest `user-data` themselves.
//!
//! Nothing is clobbered: a scalar section (`hostname`, `instance-id`, `bootstrap`, `swap`,
//! `resize-rootfs`, `firstboot`, `entrypoint`, `cmd`, `workdir`, `user`, `network.interfaces[*]`
//! as a whole) may be set by several parts only if they agree, otherwise
//! [`Error::Conflict`] names the path and both parts. Keyed collections are unioned entry by
//! entry: `env` by variable, `files` by name, `users` and `groups` by name, `network.interfaces`
//! by MAC, with the same agree-or-conflict rule per entry. Lists keep the merge order (root
//! first, then parts by name), which is the order the guest applies them in.
//!
//! ```
//! use firebuild_mmds::schema::Metadata;
//!
//! let md = Metadata::from_json_slice(br#"{
//!     "hostname": "vm1",
//!     "env": {"A": "1"},
//!     "user-data": {
//!         "50-app": {"env": {"B": "2"}, "users": [{"name": "app", "uid": 1000}]},
//!         "10-base": {"users": [{"name": "ops", "uid": 1001}]}
//!     }
//! }"#).unwrap();
//! let eff = md.effective().unwrap();
//! assert_eq!(eff.hostname.as_deref(), Some("vm1"));
//! assert_eq!(eff.env.len(), 2);
//! // "10-base" merges before "50-app".
//! let names: Vec<_> = eff.users.iter().map(|u| u.name.as_str()).collect();
//! assert_eq!(names, ["ops", "app"]);
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

/// The schema version this crate writes and the highest it reads.
pub const SCHEMA_VERSION: u32 = 1;

/// Default bound on an encoded metadata document accepted by [`Metadata::from_json_slice`].
///
/// Firecracker's data store defaults to 51200 bytes; this bound is larger so a host that raised
/// its limit still works, while still refusing to parse an unbounded body.
pub const DEFAULT_MAX_METADATA_BYTES: usize = 1 << 20;

/// Name under which the top-level sections take part in the merge (see the module docs).
pub const ROOT_PART: &str = "(top-level)";

/// Default swap file path when [`Swap::path`] is absent.
pub const DEFAULT_SWAP_PATH: &str = "/swapfile";

/// Errors decoding, validating or merging metadata.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The encoded document is larger than the bound.
    #[error("metadata is {len} bytes, more than the limit of {limit}")]
    TooLarge {
        /// Length of the input.
        len: usize,
        /// The bound it exceeded.
        limit: usize,
    },
    /// The document is not JSON of the schema's shape (unknown key, wrong type...).
    #[error("cannot decode metadata at `{path}`")]
    Decode {
        /// JSON path of the offending value (`.` for the root).
        path: String,
        /// The decoder's error (line, column, what was expected).
        #[source]
        source: serde_json::Error,
    },
    /// The document decoded but a value breaks a rule.
    #[error("invalid metadata at `{path}`: {reason}")]
    Invalid {
        /// JSON path of the offending value, e.g. `users[2].uid`.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Two user-data parts set the same value differently.
    #[error("`{path}` is set differently by user-data parts `{first}` and `{second}`")]
    Conflict {
        /// JSON path of the contested value in the merged document.
        path: String,
        /// The part that set it first (in merge order).
        first: String,
        /// The part that tried to set it again.
        second: String,
    },
}

fn invalid(path: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Invalid {
        path: path.into(),
        reason: reason.into(),
    }
}

/// The root of the MMDS data store as firebuild writes and reads it.
///
/// Every field is optional so the same type also describes a single user-data part. Decode
/// with [`Metadata::from_json_slice`] (bounded, validated), then call [`Metadata::effective`]
/// to merge the `user-data` parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Metadata {
    /// Schema version ([`SCHEMA_VERSION`] when absent); newer versions are rejected.
    #[serde(default = "default_version")]
    pub version: u32,
    /// Build-mode credentials; their presence makes `vminit` connect to the bootstrap server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<Bootstrap>,
    /// Identity of this VM instance; a changed id means a new instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Host name (RFC 1123; at most 253 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Network configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    /// Users to create, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<User>,
    /// Groups to create, in order (before the users).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<Group>,
    /// Named injected files.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, File>,
    /// A swap file to create and enable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap: Option<Swap>,
    /// Grow the root filesystem to its block device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize_rootfs: Option<bool>,
    /// A script run once, on the first boot of this instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firstboot: Option<Firstboot>,
    /// Environment of the workload (and of the firstboot script).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Run mode: the image's ENTRYPOINT (exec form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Run mode: the image's CMD (exec form), appended to the entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// Run mode: working directory of the workload (absolute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Run mode: `user[:group]` (names or ids) the workload runs as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Where the guest reports its status besides the metadata service (vsock to the host):
    /// needed on Firecracker, whose MMDS the guest cannot write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_channel: Option<StatusChannel>,
    /// Named user-data parts, merged by [`Metadata::effective`] in name order.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub user_data: BTreeMap<String, Metadata>,
    /// The guest's own namespace (its status, [`GUEST_STATUS_POINTER`]): written by the guest,
    /// never configuration, so it is accepted and ignored, and not serialised back.
    #[serde(default, skip_serializing)]
    pub guest: Option<serde::de::IgnoredAny>,
}

fn default_version() -> u32 {
    SCHEMA_VERSION
}

impl Default for Metadata {
    fn default() -> Self {
        Metadata {
            version: SCHEMA_VERSION,
            bootstrap: None,
            instance_id: None,
            hostname: None,
            network: None,
            users: Vec::new(),
            groups: Vec::new(),
            files: BTreeMap::new(),
            swap: None,
            resize_rootfs: None,
            firstboot: None,
            env: BTreeMap::new(),
            entrypoint: None,
            cmd: None,
            workdir: None,
            user: None,
            status_channel: None,
            user_data: BTreeMap::new(),
            guest: None,
        }
    }
}

/// Where the guest sends its status ([`GuestStatus`]) over vsock: one JSON line per status to
/// the host (CID 2) on `vsock-port`. On Firecracker the host listens on the Unix socket
/// `{uds_path}_{vsock-port}` (its hybrid vsock); see `crate::vsock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct StatusChannel {
    /// The host's vsock port (1..=4294967294; `u32::MAX` is the kernel's "any port").
    pub vsock_port: u32,
}

/// Credentials and address of the bootstrap server (build mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Bootstrap {
    /// `host:port` of the bootstrap gRPC server (IPv6 hosts in brackets).
    pub grpc_host_port: String,
    /// PEM of the CA that signed the server certificate.
    pub tls_ca_cert: String,
    /// PEM of the guest's client certificate.
    pub tls_cert: String,
    /// PEM of the guest's client private key (redacted in `Debug`, zeroised on drop).
    pub tls_key: SecretPem,
    /// Name to verify in the server certificate; defaults to the host of `grpc-host-port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

impl Bootstrap {
    /// The name to check in the server's certificate: `server-name`, else the host part of
    /// `grpc-host-port` without IPv6 brackets.
    pub fn effective_server_name(&self) -> &str {
        if let Some(name) = &self.server_name {
            return name;
        }
        let host = split_host_port(&self.grpc_host_port)
            .map(|(h, _)| h)
            .unwrap_or(&self.grpc_host_port);
        host.trim_start_matches('[').trim_end_matches(']')
    }
}

/// A PEM-encoded secret (a private key). `Debug` prints `<redacted>`; the memory is zeroised
/// when dropped. Serialises as the plain PEM string (it has to reach MMDS).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretPem(Zeroizing<String>);

impl SecretPem {
    /// Wraps a PEM string.
    pub fn new(pem: impl Into<String>) -> Self {
        SecretPem(Zeroizing::new(pem.into()))
    }

    /// The PEM text. Do not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretPem(<redacted>)")
    }
}

impl Serialize for SecretPem {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SecretPem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Zeroizing::new(String::deserialize(d)?);
        Ok(SecretPem(s))
    }
}

/// Network configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Network {
    /// Interfaces, each identified by its MAC address (unique).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
}

/// One network interface, found by MAC address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Interface {
    /// MAC address identifying the interface (`52:54:00:12:34:56`; any case).
    pub mac: MacAddr,
    /// Name to give the interface (at most 15 bytes); the kernel's name is kept if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Static addresses with prefix length.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<Cidr>,
    /// Default gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Extra routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// MTU (68..=65535).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Resolver configuration learnt through this interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
}

/// A static route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Route {
    /// Destination network.
    pub to: Cidr,
    /// Next hop.
    pub via: IpAddr,
    /// Route metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
}

/// Resolver configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Dns {
    /// Name servers, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<IpAddr>,
    /// Search domains, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
}

/// A user account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct User {
    /// Login name (`[a-z_][a-z0-9_-]*`, optionally ending in `$`, at most 32 bytes).
    pub name: String,
    /// User id; allocated by the guest if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Primary group id; a group named like the user is created if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// GECOS / comment field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gecos: Option<String>,
    /// Home directory (absolute); `/home/<name>` if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<String>,
    /// Login shell (absolute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// Supplementary groups, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Lines for `~/.ssh/authorized_keys`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_authorized_keys: Vec<String>,
    /// Password: locked (the default) or a crypt(3) hash.
    #[serde(default)]
    pub password: Password,
    /// A system account (no aging, id from the system range when allocated).
    #[serde(default, skip_serializing_if = "is_false")]
    pub system: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A user's password.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Password {
    /// No password login (`"locked"`).
    #[default]
    Locked,
    /// A crypt(3) hash (`{"hash": "$6$..."}`), redacted in `Debug`.
    Hash(String),
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Password::Locked => f.write_str("Locked"),
            Password::Hash(_) => f.write_str("Hash(<redacted>)"),
        }
    }
}

/// A group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Group {
    /// Group name (same rules as user names).
    pub name: String,
    /// Group id; allocated by the guest if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// Member user names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
    /// A system group.
    #[serde(default, skip_serializing_if = "is_false")]
    pub system: bool,
}

/// A named file injected into the guest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct File {
    /// Absolute destination path (no `..`, no NUL).
    pub path: String,
    /// Permission bits; `0644` if absent. JSON: an octal string (`"0640"`) or a number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// `user[:group]` (names or numeric ids); `root:root` if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The bytes.
    pub content: FileContent,
    /// A one-time value (a join token, a credential): the guest writes the file once, then
    /// deletes the entry from the metadata (`DELETE /files/NAME` on a server that allows guest
    /// writes, or listed as consumed for the host to delete), so no later reader of the
    /// metadata sees it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub consume: bool,
}

impl File {
    /// Splits [`File::owner`] into user and optional group.
    pub fn owner_parts(&self) -> Option<(&str, Option<&str>)> {
        let owner = self.owner.as_deref()?;
        Some(match owner.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (owner, None),
        })
    }
}

/// Where a file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum FileContent {
    /// Inline, standard base64 with padding (`{"base64": "aGVsbG8K"}`).
    Base64(String),
    /// Fetched from the bootstrap server by digest (`{"digest": "blake3:<64 hex>"}`;
    /// `sha256:` is accepted too).
    Digest(String),
}

impl FileContent {
    /// Decodes inline content; `None` for [`FileContent::Digest`].
    pub fn inline_bytes(&self) -> Option<Result<Vec<u8>, base64::DecodeError>> {
        match self {
            FileContent::Base64(b) => Some(base64::engine::general_purpose::STANDARD.decode(b)),
            FileContent::Digest(_) => None,
        }
    }

    /// Splits a digest into algorithm and hex; `None` for inline content.
    pub fn digest_parts(&self) -> Option<(&str, &str)> {
        match self {
            FileContent::Digest(d) => d.split_once(':'),
            FileContent::Base64(_) => None,
        }
    }
}

/// File permission bits (at most `0o7777`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl Serialize for Mode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:04o}", self.0))
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Mode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an octal mode string such as \"0644\" or a number")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Mode, E> {
                if v > 0o7777 {
                    return Err(E::custom(format!("mode {v:o} is above 7777")));
                }
                Ok(Mode(v as u32))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Mode, E> {
                let v = u64::try_from(v).map_err(|_| E::custom("negative mode"))?;
                self.visit_u64(v)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Mode, E> {
                let digits = v.strip_prefix("0o").unwrap_or(v);
                if digits.is_empty() || digits.len() > 5 {
                    return Err(E::custom(format!("mode `{v}` is not 1 to 4 octal digits")));
                }
                let n = u32::from_str_radix(digits, 8)
                    .map_err(|_| E::custom(format!("mode `{v}` is not octal")))?;
                self.visit_u64(u64::from(n))
            }
        }
        d.deserialize_any(V)
    }
}

/// A swap file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Swap {
    /// Size in MiB (at least 1).
    pub size_mib: u64,
    /// Path of the swap file ([`DEFAULT_SWAP_PATH`] if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// The firstboot script.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Firstboot {
    /// The script, starting with an interpreter line (`#!/bin/sh`).
    pub script: String,
}

impl Firstboot {
    /// The interpreter line without `#!`, trimmed (`/bin/sh -e`); `None` if missing.
    pub fn interpreter(&self) -> Option<&str> {
        let rest = self.script.strip_prefix("#!")?;
        let line = rest.split('\n').next().unwrap_or_default().trim();
        (!line.is_empty()).then_some(line)
    }
}

/// A MAC address, written `aa:bb:cc:dd:ee:ff` (lowercase on output; `-` accepted on input).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let p = parts
                .next()
                .ok_or_else(|| format!("MAC `{s}` has fewer than 6 octets"))?;
            if p.len() != 2 {
                return Err(format!("MAC `{s}` has an octet that is not 2 hex digits"));
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| format!("MAC `{s}` is not hex"))?;
        }
        if parts.next().is_some() {
            return Err(format!("MAC `{s}` has more than 6 octets"));
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An address with a prefix length (`10.0.0.2/24`, `fd00::1/64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The address.
    pub addr: IpAddr,
    /// Prefix length (at most 32 for IPv4, 128 for IPv6).
    pub prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` lacks a /prefix"))?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("`{a}` is not an IP address"))?;
        let prefix: u8 = p
            .parse()
            .map_err(|_| format!("`{p}` is not a prefix length"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("prefix /{prefix} is longer than {max}"));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Metadata {
    /// Decodes and validates a document of at most [`DEFAULT_MAX_METADATA_BYTES`].
    pub fn from_json_slice(bytes: &[u8]) -> Result<Metadata, Error> {
        Self::from_json_slice_with_limit(bytes, DEFAULT_MAX_METADATA_BYTES)
    }

    /// Decodes and validates a document of at most `limit` bytes (checked before parsing).
    pub fn from_json_slice_with_limit(bytes: &[u8], limit: usize) -> Result<Metadata, Error> {
        if bytes.len() > limit {
            return Err(Error::TooLarge {
                len: bytes.len(),
                limit,
            });
        }
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let md: Metadata =
            serde_path_to_error::deserialize(&mut de).map_err(|e| Error::Decode {
                path: e.path().to_string(),
                source: e.into_inner(),
            })?;
        de.end().map_err(|source| Error::Decode {
            path: ".".into(),
            source,
        })?;
        md.validate()?;
        Ok(md)
    }

    /// Decodes and validates an already parsed JSON value.
    pub fn from_value(value: serde_json::Value) -> Result<Metadata, Error> {
        let md: Metadata = serde_path_to_error::deserialize(value).map_err(|e| Error::Decode {
            path: e.path().to_string(),
            source: e.into_inner(),
        })?;
        md.validate()?;
        Ok(md)
    }

    /// Encodes as JSON (the form written to MMDS).
    pub fn to_json_value(&self) -> serde_json::Value {
        // Serialising these types cannot fail: every map key is a string.
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// Checks every rule the types cannot express; errors name the JSON path.
    pub fn validate(&self) -> Result<(), Error> {
        self.validate_at("")?;
        for (name, part) in &self.user_data {
            let at = format!("user-data.{name}");
            if !is_part_name(name) {
                return Err(invalid(
                    at,
                    "part names are 1 to 64 of [A-Za-z0-9._-], starting alphanumeric",
                ));
            }
            if !part.user_data.is_empty() {
                return Err(invalid(
                    format!("{at}.user-data"),
                    "user-data parts cannot nest",
                ));
            }
            part.validate_at(&format!("{at}."))?;
        }
        Ok(())
    }

    fn validate_at(&self, p: &str) -> Result<(), Error> {
        if self.version == 0 || self.version > SCHEMA_VERSION {
            return Err(invalid(
                format!("{p}version"),
                format!(
                    "version {} is not supported (1..={SCHEMA_VERSION})",
                    self.version
                ),
            ));
        }
        if let Some(b) = &self.bootstrap {
            b.validate(&format!("{p}bootstrap"))?;
        }
        if let Some(id) = &self.instance_id
            && (id.is_empty() || id.len() > 255 || id.chars().any(char::is_control))
        {
            return Err(invalid(
                format!("{p}instance-id"),
                "must be 1 to 255 bytes without control characters",
            ));
        }
        if let Some(h) = &self.hostname
            && !is_hostname(h)
        {
            return Err(invalid(
                format!("{p}hostname"),
                "not an RFC 1123 host name (labels of [A-Za-z0-9-], at most 253 bytes)",
            ));
        }
        if let Some(n) = &self.network {
            let mut macs = BTreeSet::new();
            for (i, ifc) in n.interfaces.iter().enumerate() {
                let at = format!("{p}network.interfaces[{i}]");
                if !macs.insert(ifc.mac) {
                    return Err(invalid(
                        format!("{at}.mac"),
                        format!("MAC {} appears twice", ifc.mac),
                    ));
                }
                ifc.validate(&at)?;
            }
        }
        let mut gids = BTreeSet::new();
        let mut gnames = BTreeSet::new();
        for (i, g) in self.groups.iter().enumerate() {
            let at = format!("{p}groups[{i}]");
            if !is_account_name(&g.name) {
                return Err(invalid(format!("{at}.name"), "not a valid group name"));
            }
            if !gnames.insert(g.name.as_str()) {
                return Err(invalid(
                    format!("{at}.name"),
                    format!("group `{}` appears twice", g.name),
                ));
            }
            if let Some(gid) = g.gid
                && !gids.insert(gid)
            {
                return Err(invalid(
                    format!("{at}.gid"),
                    format!("gid {gid} is used twice"),
                ));
            }
            for (j, m) in g.members.iter().enumerate() {
                if !is_account_name(m) {
                    return Err(invalid(
                        format!("{at}.members[{j}]"),
                        "not a valid user name",
                    ));
                }
            }
        }
        let mut uids = BTreeSet::new();
        let mut unames = BTreeSet::new();
        for (i, u) in self.users.iter().enumerate() {
            let at = format!("{p}users[{i}]");
            if !is_account_name(&u.name) {
                return Err(invalid(format!("{at}.name"), "not a valid user name"));
            }
            if !unames.insert(u.name.as_str()) {
                return Err(invalid(
                    format!("{at}.name"),
                    format!("user `{}` appears twice", u.name),
                ));
            }
            if let Some(uid) = u.uid
                && !uids.insert(uid)
            {
                return Err(invalid(
                    format!("{at}.uid"),
                    format!("uid {uid} is used twice"),
                ));
            }
            if let Some(home) = &u.home {
                check_abs_path(&format!("{at}.home"), home)?;
            }
            if let Some(shell) = &u.shell {
                check_abs_path(&format!("{at}.shell"), shell)?;
            }
            if let Some(g) = &u.gecos
                && (g.contains(':') || g.chars().any(char::is_control))
            {
                return Err(invalid(
                    format!("{at}.gecos"),
                    "must not contain `:` or control characters",
                ));
            }
            for (j, g) in u.groups.iter().enumerate() {
                if !is_account_name(g) {
                    return Err(invalid(
                        format!("{at}.groups[{j}]"),
                        "not a valid group name",
                    ));
                }
            }
            for (j, k) in u.ssh_authorized_keys.iter().enumerate() {
                if k.trim().is_empty() || k.contains('\n') || k.contains('\0') {
                    return Err(invalid(
                        format!("{at}.ssh-authorized-keys[{j}]"),
                        "must be one non-empty line",
                    ));
                }
            }
            if let Password::Hash(h) = &u.password
                && (!h.starts_with('$') || h.contains(':') || h.chars().any(char::is_control))
            {
                return Err(invalid(
                    format!("{at}.password.hash"),
                    "must be a crypt(3) hash starting with `$` (no `:`)",
                ));
            }
        }
        let mut paths = BTreeMap::new();
        for (name, f) in &self.files {
            let at = format!("{p}files.{name}");
            if !is_part_name(name) {
                return Err(invalid(
                    at,
                    "file names are 1 to 64 of [A-Za-z0-9._-], starting alphanumeric",
                ));
            }
            check_abs_path(&format!("{at}.path"), &f.path)?;
            if f.path == "/" {
                return Err(invalid(format!("{at}.path"), "must name a file, not `/`"));
            }
            if let Some(other) = paths.insert(f.path.as_str(), name.as_str()) {
                return Err(invalid(
                    format!("{at}.path"),
                    format!("`{}` is also the path of file `{other}`", f.path),
                ));
            }
            if let Some(o) = &f.owner
                && !is_owner(o)
            {
                return Err(invalid(
                    format!("{at}.owner"),
                    "must be `user[:group]` (names or numeric ids)",
                ));
            }
            match &f.content {
                FileContent::Base64(_) => {
                    if let Some(Err(e)) = f.content.inline_bytes() {
                        return Err(invalid(
                            format!("{at}.content.base64"),
                            format!("not standard base64: {e}"),
                        ));
                    }
                }
                FileContent::Digest(d) => {
                    if !is_digest(d) {
                        return Err(invalid(
                            format!("{at}.content.digest"),
                            "must be `blake3:<64 hex>` or `sha256:<64 hex>`",
                        ));
                    }
                }
            }
        }
        if let Some(s) = &self.swap {
            if s.size_mib == 0 {
                return Err(invalid(format!("{p}swap.size-mib"), "must be at least 1"));
            }
            if let Some(path) = &s.path {
                check_abs_path(&format!("{p}swap.path"), path)?;
            }
        }
        if let Some(fb) = &self.firstboot
            && fb.interpreter().is_none()
        {
            return Err(invalid(
                format!("{p}firstboot.script"),
                "must start with an interpreter line such as `#!/bin/sh`",
            ));
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(invalid(
                    format!("{p}env.{k}"),
                    "names are non-empty without `=` or NUL",
                ));
            }
            if v.contains('\0') {
                return Err(invalid(format!("{p}env.{k}"), "values cannot contain NUL"));
            }
        }
        for (key, list) in [("entrypoint", &self.entrypoint), ("cmd", &self.cmd)] {
            for (i, a) in list.iter().flatten().enumerate() {
                if a.contains('\0') {
                    return Err(invalid(format!("{p}{key}[{i}]"), "cannot contain NUL"));
                }
            }
        }
        if let Some(c) = &self.status_channel
            && (c.vsock_port == 0 || c.vsock_port == u32::MAX)
        {
            return Err(invalid(
                format!("{p}status-channel.vsock-port"),
                "must be in 1..=4294967294",
            ));
        }
        if let Some(w) = &self.workdir {
            check_abs_path(&format!("{p}workdir"), w)?;
        }
        if let Some(u) = &self.user
            && !is_owner(u)
        {
            return Err(invalid(
                format!("{p}user"),
                "must be `user[:group]` (names or numeric ids)",
            ));
        }
        Ok(())
    }

    /// Merges the top-level sections and the `user-data` parts into one document (see the
    /// module docs for the order and the conflict rule). The result has no `user-data`.
    pub fn effective(&self) -> Result<Metadata, Error> {
        let mut root = self.clone();
        let parts = std::mem::take(&mut root.user_data);
        let mut all: Vec<(&str, &Metadata)> = vec![(ROOT_PART, &root)];
        all.extend(parts.iter().map(|(n, m)| (n.as_str(), m)));
        let merged = Metadata::merge_parts(all)?;
        merged.validate()?;
        Ok(merged)
    }

    /// Merges parts in the order given (callers wanting the documented order sort by name, as
    /// [`Metadata::effective`] does). `user-data` of the inputs is ignored.
    pub fn merge_parts<'a>(
        parts: impl IntoIterator<Item = (&'a str, &'a Metadata)>,
    ) -> Result<Metadata, Error> {
        let mut out = Metadata::default();
        let mut m = Merger::default();
        for (part, md) in parts {
            out.version = out.version.max(md.version);
            m.scalar("bootstrap", &mut out.bootstrap, &md.bootstrap, part)?;
            m.scalar("instance-id", &mut out.instance_id, &md.instance_id, part)?;
            m.scalar("hostname", &mut out.hostname, &md.hostname, part)?;
            m.scalar("swap", &mut out.swap, &md.swap, part)?;
            m.scalar(
                "resize-rootfs",
                &mut out.resize_rootfs,
                &md.resize_rootfs,
                part,
            )?;
            m.scalar("firstboot", &mut out.firstboot, &md.firstboot, part)?;
            m.scalar("entrypoint", &mut out.entrypoint, &md.entrypoint, part)?;
            m.scalar("cmd", &mut out.cmd, &md.cmd, part)?;
            m.scalar("workdir", &mut out.workdir, &md.workdir, part)?;
            m.scalar("user", &mut out.user, &md.user, part)?;
            m.scalar(
                "status-channel",
                &mut out.status_channel,
                &md.status_channel,
                part,
            )?;
            for (k, v) in &md.env {
                let path = format!("env.{k}");
                let mut slot = out.env.remove(k);
                m.scalar(&path, &mut slot, &Some(v.clone()), part)?;
                if let Some(v) = slot {
                    out.env.insert(k.clone(), v);
                }
            }
            for (k, v) in &md.files {
                let path = format!("files.{k}");
                let mut slot = out.files.remove(k);
                m.scalar(&path, &mut slot, &Some(v.clone()), part)?;
                if let Some(v) = slot {
                    out.files.insert(k.clone(), v);
                }
            }
            m.keyed(
                "groups",
                &mut out.groups,
                &md.groups,
                |g| g.name.clone(),
                part,
            )?;
            m.keyed("users", &mut out.users, &md.users, |u| u.name.clone(), part)?;
            if let Some(n) = &md.network {
                let dst = out.network.get_or_insert_with(Network::default);
                m.keyed(
                    "network.interfaces",
                    &mut dst.interfaces,
                    &n.interfaces,
                    |i| i.mac.to_string(),
                    part,
                )?;
            }
        }
        Ok(out)
    }

    /// Whether this document puts the guest in build mode.
    pub fn is_build_mode(&self) -> bool {
        self.bootstrap.is_some()
    }
}

#[derive(Default)]
struct Merger {
    owners: BTreeMap<String, String>,
}

impl Merger {
    fn scalar<T: PartialEq + Clone>(
        &mut self,
        path: &str,
        dst: &mut Option<T>,
        src: &Option<T>,
        part: &str,
    ) -> Result<(), Error> {
        let Some(v) = src else { return Ok(()) };
        match dst {
            None => {
                *dst = Some(v.clone());
                self.owners.insert(path.to_owned(), part.to_owned());
                Ok(())
            }
            Some(existing) if existing == v => Ok(()),
            Some(_) => Err(Error::Conflict {
                path: path.to_owned(),
                first: self.owners.get(path).cloned().unwrap_or_default(),
                second: part.to_owned(),
            }),
        }
    }

    fn keyed<T: PartialEq + Clone>(
        &mut self,
        list: &str,
        dst: &mut Vec<T>,
        src: &[T],
        key: impl Fn(&T) -> String,
        part: &str,
    ) -> Result<(), Error> {
        for item in src {
            let k = key(item);
            let path = format!("{list}.{k}");
            match dst.iter().find(|d| key(d) == k) {
                None => {
                    dst.push(item.clone());
                    self.owners.insert(path, part.to_owned());
                }
                Some(existing) if existing == item => {}
                Some(_) => {
                    return Err(Error::Conflict {
                        first: self.owners.get(&path).cloned().unwrap_or_default(),
                        path,
                        second: part.to_owned(),
                    });
                }
            }
        }
        Ok(())
    }
}

impl Bootstrap {
    fn validate(&self, at: &str) -> Result<(), Error> {
        if split_host_port(&self.grpc_host_port).is_none() {
            return Err(invalid(
                format!("{at}.grpc-host-port"),
                "must be `host:port` with a port in 1..=65535 (IPv6 in brackets)",
            ));
        }
        for (key, pem, label) in [
            ("tls-ca-cert", self.tls_ca_cert.as_str(), "CERTIFICATE"),
            ("tls-cert", self.tls_cert.as_str(), "CERTIFICATE"),
            ("tls-key", self.tls_key.expose(), "PRIVATE KEY"),
        ] {
            if !(pem.contains("-----BEGIN ") && pem.contains(label)) {
                return Err(invalid(
                    format!("{at}.{key}"),
                    format!("must be a PEM {label} block"),
                ));
            }
        }
        if let Some(n) = &self.server_name
            && !(is_hostname(n) || n.parse::<IpAddr>().is_ok())
        {
            return Err(invalid(
                format!("{at}.server-name"),
                "must be a DNS name or an IP address",
            ));
        }
        Ok(())
    }
}

impl Interface {
    fn validate(&self, at: &str) -> Result<(), Error> {
        if let Some(n) = &self.name
            && (n.is_empty()
                || n.len() > 15
                || n.contains(['/', ':'])
                || n.chars().any(|c| c.is_whitespace() || c.is_control())
                || n == "."
                || n == "..")
        {
            return Err(invalid(
                format!("{at}.name"),
                "not a Linux interface name (1 to 15 bytes, no `/`, `:` or spaces)",
            ));
        }
        if let Some(mtu) = self.mtu
            && !(68..=65535).contains(&mtu)
        {
            return Err(invalid(format!("{at}.mtu"), "must be in 68..=65535"));
        }
        if let Some(d) = &self.dns {
            for (i, s) in d.search.iter().enumerate() {
                if !is_hostname(s) {
                    return Err(invalid(
                        format!("{at}.dns.search[{i}]"),
                        "not a domain name",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Splits `host:port` (`[v6]:port` for IPv6); the port must be non-zero.
fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    if port == 0 || host.is_empty() {
        return None;
    }
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']')?;
        inner.parse::<std::net::Ipv6Addr>().ok()?;
    } else if host.contains(':') || !(is_hostname(host) || host.parse::<IpAddr>().is_ok()) {
        return None;
    }
    Some((host, port))
}

fn is_hostname(h: &str) -> bool {
    let h = h.strip_suffix('.').unwrap_or(h);
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn is_account_name(n: &str) -> bool {
    let body = n.strip_suffix('$').unwrap_or(n);
    let mut bytes = body.bytes();
    let Some(first) = bytes.next() else {
        return false;
    };
    n.len() <= 32
        && (first.is_ascii_lowercase() || first == b'_')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn is_owner(o: &str) -> bool {
    let ok = |s: &str| {
        is_account_name(s)
            || (!s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit()))
    };
    match o.split_once(':') {
        Some((u, g)) => ok(u) && ok(g),
        None => ok(o),
    }
}

fn is_part_name(n: &str) -> bool {
    n.len() <= 64
        && n.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn is_digest(d: &str) -> bool {
    match d.split_once(':') {
        Some(("blake3" | "sha256", hex)) => {
            hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        }
        _ => false,
    }
}

fn check_abs_path(at: &str, p: &str) -> Result<(), Error> {
    if !p.starts_with('/') {
        return Err(invalid(at, "must be an absolute path"));
    }
    if p.len() > 4096 || p.contains('\0') {
        return Err(invalid(at, "must be at most 4096 bytes without NUL"));
    }
    if p.split('/').any(|c| c == "..") {
        return Err(invalid(at, "must not contain `..`"));
    }
    Ok(())
}

/// Where the guest writes its status (`ServerBuilder::guest_writes`); host-owned keys are
/// never writable by the guest.
pub const GUEST_STATUS_POINTER: &str = "/guest/status";

/// Largest guest status document, serialised.
pub const MAX_GUEST_STATUS_BYTES: usize = 4096;

/// Whether the value at `pointer` may be consumed by the guest, by its path alone: a user's
/// password hash (`/users/N/password`) or an injected file (`/files/NAME`). Which files is the
/// document's to say: see [`is_consumable_in`].
pub fn is_consumable(pointer: &str) -> bool {
    let mut parts = pointer.split('/');
    let index = |n: &str| !n.is_empty() && n.len() <= 6 && n.bytes().all(|b| b.is_ascii_digit());
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some(""), Some("users"), Some(n), Some("password"), None) => index(n),
        (Some(""), Some("files"), Some(name), None, None) => !name.is_empty() && name.len() <= 255,
        _ => false,
    }
}

/// Whether the guest consumes the value at `pointer` of `doc` once applied, then deletes it:
/// a user's password hash, or a file the document marks `"consume": true`. The guest keeps
/// what it applied; an existing user's password is never changed by later metadata.
pub fn is_consumable_in(doc: &serde_json::Value, pointer: &str) -> bool {
    if !is_consumable(pointer) {
        return false;
    }
    if pointer.starts_with("/files/") {
        let marked = doc.pointer(&format!("{pointer}/consume"));
        return marked == Some(&serde_json::Value::Bool(true));
    }
    true
}

/// Where a guest is in its boot, as written back to the metadata service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuestPhase {
    /// The agent started and is reading metadata.
    Booting,
    /// Applying the configuration.
    Configuring,
    /// Configuration applied (see `steps`).
    Configured,
    /// The first-boot script is running.
    Firstboot,
    /// The workload (ENTRYPOINT/CMD) runs.
    Running,
    /// The workload exited (see `workload-exit`).
    Exited,
    /// The agent failed (see `message`).
    Failed,
}

/// The guest status document at [`GUEST_STATUS_POINTER`]: small, bounded, schema-checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct GuestStatus {
    /// The boot phase.
    pub phase: GuestPhase,
    /// The metadata revision (ETag) the configuration was applied from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Outcome per configuration step (`hostname` → `applied`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub steps: BTreeMap<String, String>,
    /// Values consumed and deleted (JSON pointers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumed: Vec<String>,
    /// The first-boot script's exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firstboot_exit: Option<i32>,
    /// The workload's exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_exit: Option<i32>,
    /// A short message (why it failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl GuestStatus {
    /// A status in `phase` with nothing else.
    pub fn new(phase: GuestPhase) -> Self {
        GuestStatus {
            phase,
            revision: None,
            steps: BTreeMap::new(),
            consumed: Vec::new(),
            firstboot_exit: None,
            workload_exit: None,
            message: None,
        }
    }

    /// Parses and checks a status written by a guest: at most [`MAX_GUEST_STATUS_BYTES`], at most
    /// 64 steps, no control characters in any string.
    pub fn from_guest(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() > MAX_GUEST_STATUS_BYTES {
            return Err(format!(
                "guest status is {} bytes, more than {MAX_GUEST_STATUS_BYTES}",
                bytes.len()
            ));
        }
        let status: GuestStatus =
            serde_json::from_slice(bytes).map_err(|e| format!("guest status: {e}"))?;
        if status.steps.len() > 64 || status.consumed.len() > 64 {
            return Err("guest status: at most 64 steps and 64 consumed values".to_owned());
        }
        let strings = status
            .steps
            .iter()
            .flat_map(|(k, v)| [k, v])
            .chain(&status.consumed)
            .chain(status.revision.iter())
            .chain(status.message.iter());
        for s in strings {
            if s.chars().any(char::is_control) {
                return Err(format!("guest status: control character in {s:?}"));
            }
        }
        Ok(status)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const FULL: &str = include_str!("../testdata/full.json");

    fn err_path(json: &str) -> String {
        match Metadata::from_json_slice(json.as_bytes()) {
            Err(Error::Invalid { path, .. }) | Err(Error::Decode { path, .. }) => path,
            other => panic!("expected a path error, got {other:?}"),
        }
    }

    #[test]
    fn full_example_round_trips() {
        let md = Metadata::from_json_slice(FULL.as_bytes()).unwrap();
        assert!(md.is_build_mode());
        let b = md.bootstrap.as_ref().unwrap();
        assert_eq!(b.grpc_host_port, "169.254.0.2:50051");
        assert_eq!(b.effective_server_name(), "firebuild-bootstrap");
        let ifc = &md.network.as_ref().unwrap().interfaces[0];
        assert_eq!(ifc.mac.to_string(), "52:54:00:12:34:56");
        assert_eq!(ifc.addresses[0].prefix, 16);
        assert_eq!(md.files["motd"].mode, Some(Mode(0o644)));
        assert_eq!(
            md.files["motd"].content.inline_bytes().unwrap().unwrap(),
            b"hello\n"
        );
        assert_eq!(
            md.firstboot.as_ref().unwrap().interpreter(),
            Some("/bin/sh")
        );
        let again = Metadata::from_value(md.to_json_value()).unwrap();
        assert_eq!(again, md);
        let eff = md.effective().unwrap();
        assert!(eff.user_data.is_empty());
        assert_eq!(eff.env["HTTP_PROXY"], "http://169.254.0.2:3128");
        assert!(eff.files.contains_key("app-env"));
    }

    #[test]
    fn module_doc_example_is_the_testdata() {
        // The rustdoc example and testdata/full.json must stay the same document.
        let doc: String = include_str!("schema.rs")
            .lines()
            .skip_while(|l| *l != "//! ```json")
            .skip(1)
            .take_while(|l| *l != "//! ```")
            .map(|l| format!("{}\n", l.strip_prefix("//! ").unwrap_or("")))
            .collect();
        let a: serde_json::Value = serde_json::from_str(&doc).unwrap();
        let b: serde_json::Value = serde_json::from_str(FULL).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn key_is_redacted_in_debug() {
        let md = Metadata::from_json_slice(FULL.as_bytes()).unwrap();
        let dbg = format!("{md:?}");
        assert!(!dbg.contains("PRIVATE KEY"), "{dbg}");
        assert!(dbg.contains("redacted"));
        assert!(!dbg.contains("$6$"));
    }

    #[test]
    fn typos_are_rejected_with_their_path() {
        assert_eq!(err_path(r#"{"hostnme": "x"}"#), "hostnme");
        assert_eq!(
            err_path(r#"{"users": [{"name": "a"}, {"name": "b", "uid": 1, "shel": "/bin/sh"}]}"#),
            "users[1].shel"
        );
        assert_eq!(
            err_path(
                r#"{"bootstrap": {"grpc-host-port": "a:1", "tls-ca-cert": "", "tls-cert": "", "tls-key": "", "tls_key": ""}}"#
            ),
            "bootstrap.tls_key"
        );
        assert_eq!(
            err_path(r#"{"users": [{"name": "a", "uid": "x"}]}"#),
            "users[0].uid"
        );
    }

    #[test]
    fn validation_names_the_path() {
        assert_eq!(
            err_path(
                r#"{"users": [{"name": "a", "uid": 1}, {"name": "b"}, {"name": "c", "uid": 1}]}"#
            ),
            "users[2].uid"
        );
        assert_eq!(
            err_path(r#"{"users": [{"name": "Root"}]}"#),
            "users[0].name"
        );
        assert_eq!(err_path(r#"{"hostname": "-bad"}"#), "hostname");
        assert_eq!(
            err_path(r#"{"firstboot": {"script": "echo hi"}}"#),
            "firstboot.script"
        );
        assert_eq!(
            err_path(r##"{"firstboot": {"script": "#!\necho"}}"##),
            "firstboot.script"
        );
        assert_eq!(
            err_path(r#"{"files": {"x": {"path": "etc/x", "content": {"base64": ""}}}}"#),
            "files.x.path"
        );
        assert_eq!(
            err_path(r#"{"files": {"x": {"path": "/a/../b", "content": {"base64": ""}}}}"#),
            "files.x.path"
        );
        assert_eq!(
            err_path(r#"{"files": {"x": {"path": "/x", "content": {"base64": "!!"}}}}"#),
            "files.x.content.base64"
        );
        assert_eq!(
            err_path(r#"{"files": {"x": {"path": "/x", "content": {"digest": "md5:00"}}}}"#),
            "files.x.content.digest"
        );
        assert_eq!(
            err_path(
                r#"{"files": {"x": {"path": "/x", "mode": "0999", "content": {"base64": ""}}}}"#
            ),
            "files.x.mode"
        );
        assert_eq!(
            err_path(r#"{"network": {"interfaces": [{"mac": "52:54:00:00:00:01", "mtu": 20}]}}"#),
            "network.interfaces[0].mtu"
        );
        assert_eq!(
            err_path(
                r#"{"network": {"interfaces": [{"mac": "52:54:00:00:00:01"}, {"mac": "52-54-00-00-00-01"}]}}"#
            ),
            "network.interfaces[1].mac"
        );
        assert_eq!(
            err_path(
                r#"{"network": {"interfaces": [{"mac": "52:54:00:00:00:01", "addresses": ["10.0.0.1/33"]}]}}"#
            ),
            "network.interfaces[0].addresses[0]"
        );
        assert_eq!(err_path(r#"{"version": 2}"#), "version");
        assert_eq!(err_path(r#"{"swap": {"size-mib": 0}}"#), "swap.size-mib");
        assert_eq!(err_path(r#"{"env": {"A=B": "x"}}"#), "env.A=B");
        assert_eq!(
            err_path(r#"{"user-data": {"p": {"user-data": {"q": {}}}}}"#),
            "user-data.p.user-data"
        );
        assert_eq!(
            err_path(r#"{"user-data": {"p": {"users": [{"name": "a", "home": "x"}]}}}"#),
            "user-data.p.users[0].home"
        );
    }

    #[test]
    fn size_is_bounded_before_parsing() {
        let big = vec![b' '; 100];
        assert!(matches!(
            Metadata::from_json_slice_with_limit(&big, 99),
            Err(Error::TooLarge {
                len: 100,
                limit: 99
            })
        ));
    }

    #[test]
    fn parts_merge_in_name_order_and_conflicts_name_both_owners() {
        let md = Metadata::from_json_slice(
            br#"{"users": [{"name": "root-user"}],
                 "user-data": {"b": {"users": [{"name": "bee"}], "hostname": "h"},
                               "a": {"users": [{"name": "ay"}, {"name": "root-user"}], "hostname": "h"}}}"#,
        )
        .unwrap();
        let eff = md.effective().unwrap();
        let names: Vec<_> = eff.users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["root-user", "ay", "bee"]);
        assert_eq!(eff.hostname.as_deref(), Some("h"));

        let md = Metadata::from_json_slice(
            br#"{"env": {"X": "1"}, "user-data": {"app": {"env": {"X": "2"}}}}"#,
        )
        .unwrap();
        match md.effective() {
            Err(Error::Conflict {
                path,
                first,
                second,
            }) => {
                assert_eq!(path, "env.X");
                assert_eq!(first, ROOT_PART);
                assert_eq!(second, "app");
            }
            other => panic!("{other:?}"),
        }

        let md = Metadata::from_json_slice(
            br#"{"user-data": {"a": {"users": [{"name": "u", "uid": 1}]},
                               "b": {"users": [{"name": "u", "uid": 2}]}}}"#,
        )
        .unwrap();
        assert!(matches!(md.effective(), Err(Error::Conflict { path, .. }) if path == "users.u"));

        // Two parts each valid, but together they give two users the same uid.
        let md = Metadata::from_json_slice(
            br#"{"user-data": {"a": {"users": [{"name": "u", "uid": 1}]},
                               "b": {"users": [{"name": "v", "uid": 1}]}}}"#,
        )
        .unwrap();
        assert!(
            matches!(md.effective(), Err(Error::Invalid { path, .. }) if path == "users[1].uid")
        );
    }

    #[test]
    fn mode_accepts_string_and_number_and_writes_octal() {
        let f: File =
            serde_json::from_str(r#"{"path": "/x", "mode": 420, "content": {"base64": ""}}"#)
                .unwrap();
        assert_eq!(f.mode, Some(Mode(0o644)));
        assert_eq!(serde_json::to_value(f.mode).unwrap(), "0644");
    }

    #[test]
    fn host_port_forms() {
        assert!(split_host_port("10.0.0.1:50051").is_some());
        assert!(split_host_port("[fd00::1]:443").is_some());
        assert!(split_host_port("host.example:1").is_some());
        assert!(split_host_port("fd00::1:443").is_none());
        assert!(split_host_port("host:0").is_none());
        assert!(split_host_port("host").is_none());
    }

    #[test]
    fn consumable_files_are_those_the_document_marks() {
        let doc = serde_json::json!({"files": {
            "conf": {"path": "/etc/a", "content": {"base64": ""}},
            "token": {"path": "/run/token", "content": {"base64": ""}, "consume": true}
        }});
        assert!(is_consumable_in(&doc, "/files/token"));
        assert!(!is_consumable_in(&doc, "/files/conf"), "not marked");
        assert!(!is_consumable_in(&doc, "/files/other"), "absent");
        assert!(
            !is_consumable_in(&doc, "/files/token/content"),
            "the whole entry or nothing"
        );
        assert!(is_consumable_in(&doc, "/users/0/password"));
        let f: File = serde_json::from_value(doc["files"]["token"].clone()).unwrap();
        assert!(f.consume);
    }

    #[test]
    fn consumable_pointers_are_user_passwords_and_files_only() {
        assert!(is_consumable("/users/0/password"));
        assert!(is_consumable("/users/12/password"));
        assert!(is_consumable("/files/join-token"));
        for not in [
            "/users/0",
            "/users/x/password",
            "/users//password",
            "/users/0/password/hash",
            "/users/0/name",
            "/bootstrap/tls-key",
            "",
            "/",
            "/users/1234567/password",
            "/files",
            "/files/",
            "/files/x/content",
        ] {
            assert!(!is_consumable(not), "{not}");
        }
    }

    #[test]
    fn guest_status_is_bounded_and_checked() {
        let ok = br#"{"phase":"configured","revision":"\"abc\"","steps":{"hostname":"applied"},"consumed":["/users/0/password"]}"#;
        let s = GuestStatus::from_guest(ok).unwrap();
        assert_eq!(s.phase, GuestPhase::Configured);
        assert!(GuestStatus::from_guest(br#"{"phase":"nope"}"#).is_err());
        assert!(GuestStatus::from_guest(br#"{"phase":"running","extra":1}"#).is_err());
        assert!(GuestStatus::from_guest(br#"{"phase":"failed","message":"a\u001bb"}"#).is_err());
        let big = format!(r#"{{"phase":"failed","message":"{}"}}"#, "x".repeat(5000));
        assert!(
            GuestStatus::from_guest(big.as_bytes())
                .unwrap_err()
                .contains("more than")
        );
    }

    #[test]
    fn the_guest_status_namespace_is_not_configuration() {
        let doc = br#"{"hostname":"vm1","guest":{"status":{"phase":"running"}}}"#;
        let md = Metadata::from_json_slice(doc).unwrap();
        assert_eq!(md.hostname.as_deref(), Some("vm1"));
        assert!(!serde_json::to_string(&md).unwrap().contains("guest"));
    }

    #[test]
    fn the_status_channel_names_a_vsock_port() {
        let md = Metadata::from_json_slice(br#"{"status-channel":{"vsock-port":10240}}"#).unwrap();
        assert_eq!(md.status_channel, Some(StatusChannel { vsock_port: 10240 }));
        assert_eq!(
            err_path(r#"{"status-channel":{"vsock-port":0}}"#),
            "status-channel.vsock-port"
        );
        assert_eq!(
            err_path(r#"{"status-channel":{"vsock-port":4294967295}}"#),
            "status-channel.vsock-port"
        );
        assert_eq!(
            err_path(r#"{"status-channel":{"port":1}}"#),
            "status-channel.port"
        );
        // Set by a user-data part, it is merged like any scalar section.
        let md = Metadata::from_json_slice(
            br#"{"user-data":{"10-host":{"status-channel":{"vsock-port":7}}}}"#,
        )
        .unwrap();
        assert_eq!(
            md.effective().unwrap().status_channel.unwrap().vsock_port,
            7
        );
        let clash = Metadata::from_json_slice(
            br#"{"status-channel":{"vsock-port":8},"user-data":{"a":{"status-channel":{"vsock-port":7}}}}"#,
        )
        .unwrap();
        assert!(matches!(clash.effective(), Err(Error::Conflict { .. })));
    }
}
