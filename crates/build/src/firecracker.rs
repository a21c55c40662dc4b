//! The Firecracker `--config-file` written beside a built image: it boots the image as is when
//! run from the output directory (`firecracker --no-api --config-file NAME.firecracker.json`).
//!
//! Field names and types follow Firecracker's API schema (`src/firecracker/swagger/
//! firecracker.yaml`: `BootSource`, `Drive`, `MachineConfiguration`, `NetworkInterface`,
//! `MmdsConfig`, `Vsock`); the config file uses the API's resource names as keys (`boot-source`,
//! `drives`, `machine-config`, `network-interfaces`, `mmds-config`, `vsock`).
//!
//! The guest cannot write Firecracker's MMDS, so its status comes back over vsock when wanted
//! ([`add_vsock`]): Firecracker's vsock is "hybrid", a guest connection to the host (CID 2) port
//! P arrives on the host Unix socket `{uds_path}_{P}`, where `firebuild_mmds::vsock::
//! StatusListener` listens; the metadata names P (`"status-channel": {"vsock-port": P}`).
//!
//! Kernel requirements: Firecracker boots an uncompressed ELF `vmlinux` (x86_64) with the
//! virtio-mmio block and net drivers and a serial console; Debian's cloud kernel has them as
//! modules, which the initramfs beside the image loads before it starts the agent.

use serde_json::{Value, json};

/// The guest MAC address of `eth0` when a network is configured.
pub const GUEST_MAC: &str = "06:00:a9:fe:00:0f";

/// What goes into the config.
#[derive(Debug, Clone)]
pub struct FirecrackerConfig<'a> {
    /// The kernel file, relative to the output directory.
    pub kernel: &'a str,
    /// The initramfs file, relative to the output directory.
    pub initramfs: &'a str,
    /// The image file, relative to the output directory.
    pub rootfs: &'a str,
    /// vCPUs.
    pub vcpus: u8,
    /// Memory, MiB.
    pub memory_mib: u32,
    /// A host tap device for `eth0`, with Firecracker's MMDS (V2) on it; `None`: no network,
    /// and the guest is told there is no metadata to wait for.
    pub tap: Option<&'a str>,
}

/// The guest CID firebuild gives a VM's vsock device: the first one not reserved (0 to 2 are
/// the hypervisor, the local loopback and the host).
pub const GUEST_CID: u32 = 3;

/// A vsock device (Firecracker's `Vsock`).
#[derive(Debug, Clone)]
pub struct Vsock<'a> {
    /// The guest's context id (at least 3; [`GUEST_CID`]).
    pub guest_cid: u32,
    /// The host socket Firecracker creates for host-initiated connections; guest-initiated ones
    /// to port P go to `{uds_path}_P` (`firebuild_mmds::vsock::socket_path`).
    pub uds_path: &'a str,
}

/// Adds a `vsock` device to a config made by [`config`] (for the guest's status over vsock).
pub fn add_vsock(config: &mut Value, vsock: &Vsock<'_>) {
    if let Some(obj) = config.as_object_mut() {
        obj.insert(
            "vsock".into(),
            json!({ "guest_cid": vsock.guest_cid, "uds_path": vsock.uds_path }),
        );
    }
}

/// The kernel command line: the image's root, the console, and either the network the MMDS is
/// reached through or `firebuild.metadata=off` (start the workload at once).
pub fn boot_args(tap: bool) -> String {
    let base = format!(
        "console=ttyS0 {} reboot=k panic=1 root=/dev/vda rw",
        firebuild_vmm::kernel::FAST_BOOT_ARGS
    );
    if tap {
        format!("{base} ip=169.254.0.15::169.254.0.1:255.255.0.0::eth0:off")
    } else {
        format!("{base} firebuild.metadata=off")
    }
}

/// The config as JSON.
pub fn config(c: &FirecrackerConfig<'_>) -> Value {
    let mut v = json!({
        "boot-source": {
            "kernel_image_path": c.kernel,
            "initrd_path": c.initramfs,
            "boot_args": boot_args(c.tap.is_some()),
        },
        "drives": [{
            "drive_id": "rootfs",
            "path_on_host": c.rootfs,
            "is_root_device": true,
            "is_read_only": false,
        }],
        "machine-config": {
            "vcpu_count": c.vcpus,
            "mem_size_mib": c.memory_mib,
            "smt": false,
        },
    });
    if let (Some(tap), Some(obj)) = (c.tap, v.as_object_mut()) {
        obj.insert(
            "network-interfaces".into(),
            json!([{ "iface_id": "eth0", "host_dev_name": tap, "guest_mac": GUEST_MAC }]),
        );
        obj.insert(
            "mmds-config".into(),
            json!({ "version": "V2", "network_interfaces": ["eth0"], "ipv4_address": "169.254.169.254" }),
        );
    }
    v
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// The properties and JSON types of the schema objects we write, transcribed from
    /// Firecracker v1.10's `firecracker.yaml` (required ones marked `!`).
    const SCHEMA: &[(&str, &[(&str, &str)])] = &[
        (
            "boot-source",
            &[
                ("!kernel_image_path", "string"),
                ("initrd_path", "string"),
                ("boot_args", "string"),
            ],
        ),
        (
            "drives",
            &[
                ("!drive_id", "string"),
                ("path_on_host", "string"),
                ("!is_root_device", "boolean"),
                ("is_read_only", "boolean"),
                ("partuuid", "string"),
                ("cache_type", "string"),
                ("io_engine", "string"),
                ("rate_limiter", "object"),
                ("socket", "string"),
            ],
        ),
        (
            "machine-config",
            &[
                ("!vcpu_count", "integer"),
                ("!mem_size_mib", "integer"),
                ("smt", "boolean"),
                ("track_dirty_pages", "boolean"),
                ("huge_pages", "string"),
                ("cpu_template", "string"),
            ],
        ),
        (
            "network-interfaces",
            &[
                ("!iface_id", "string"),
                ("!host_dev_name", "string"),
                ("guest_mac", "string"),
                ("rx_rate_limiter", "object"),
                ("tx_rate_limiter", "object"),
            ],
        ),
        (
            "mmds-config",
            &[
                ("version", "string"),
                ("!network_interfaces", "array"),
                ("ipv4_address", "string"),
            ],
        ),
        (
            "vsock",
            &[
                ("!guest_cid", "integer"),
                ("!uds_path", "string"),
                ("vsock_id", "string"),
            ],
        ),
    ];

    fn type_of(v: &Value) -> &'static str {
        match v {
            Value::String(_) => "string",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_u64() || n.is_i64() => "integer",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
            _ => "other",
        }
    }

    fn check(config: &Value) {
        let top = config.as_object().unwrap();
        for (key, value) in top {
            let (_, props) = SCHEMA
                .iter()
                .find(|(k, _)| k == key)
                .unwrap_or_else(|| panic!("{key} is not a Firecracker config section"));
            let objects: Vec<&Value> = match value {
                Value::Array(items) if *key != "mmds-config" => items.iter().collect(),
                v => vec![v],
            };
            for obj in objects {
                let obj = obj.as_object().unwrap();
                for (field, v) in obj {
                    let (_, ty) = props
                        .iter()
                        .find(|(p, _)| p.trim_start_matches('!') == field)
                        .unwrap_or_else(|| panic!("{key}.{field} is not in the schema"));
                    assert_eq!(type_of(v), *ty, "{key}.{field}");
                }
                for (p, _) in props.iter().filter(|(p, _)| p.starts_with('!')) {
                    assert!(obj.contains_key(&p[1..]), "{key}.{} is required", &p[1..]);
                }
            }
        }
    }

    fn sample(tap: Option<&str>) -> Value {
        config(&FirecrackerConfig {
            kernel: "img.vmlinux",
            initramfs: "img.initramfs.cpio",
            rootfs: "img.ext4",
            vcpus: 2,
            memory_mib: 512,
            tap,
        })
    }

    #[test]
    fn fields_match_firecrackers_schema() {
        check(&sample(None));
        check(&sample(Some("fc-tap0")));
        let mut v = sample(Some("fc-tap0"));
        add_vsock(
            &mut v,
            &Vsock {
                guest_cid: GUEST_CID,
                uds_path: "img.vsock",
            },
        );
        check(&v);
    }

    #[test]
    fn the_vsock_device_is_added_only_when_asked() {
        assert!(sample(Some("fc-tap0")).get("vsock").is_none());
        let mut v = sample(None);
        add_vsock(
            &mut v,
            &Vsock {
                guest_cid: 3,
                uds_path: "/run/vm1/v.sock",
            },
        );
        assert_eq!(
            v["vsock"],
            json!({"guest_cid": 3, "uds_path": "/run/vm1/v.sock"})
        );
    }

    #[test]
    fn without_a_network_the_guest_is_told_there_is_no_metadata() {
        let v = sample(None);
        let args = v["boot-source"]["boot_args"].as_str().unwrap();
        assert!(args.contains("firebuild.metadata=off"), "{args}");
        assert!(
            !args.contains("init="),
            "the agent comes from the initramfs: {args}"
        );
        assert!(v.get("mmds-config").is_none());
        assert_eq!(v["drives"][0]["path_on_host"], "img.ext4");
    }

    #[test]
    fn with_a_tap_the_mmds_is_on_eth0() {
        let v = sample(Some("fc-tap0"));
        let args = v["boot-source"]["boot_args"].as_str().unwrap();
        assert!(!args.contains("firebuild.metadata=off"), "{args}");
        assert!(args.contains("ip=169.254.0.15::"), "{args}");
        assert_eq!(v["mmds-config"]["network_interfaces"][0], "eth0");
        assert_eq!(v["network-interfaces"][0]["host_dev_name"], "fc-tap0");
    }

    #[test]
    fn the_schema_check_catches_a_wrong_field() {
        let mut v = sample(None);
        v["machine-config"]["vcpus"] = json!(2);
        let caught = std::panic::catch_unwind(|| check(&v));
        assert!(caught.is_err());
    }
}
