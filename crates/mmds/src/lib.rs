//! Firecracker MMDS for firebuild: the metadata schema, a guest client, a writer for
//! Firecracker's API socket, and an embedded MMDS-compatible server.
//!
//! - [`schema::Metadata`]: what the host writes and the guest obeys (versioned, validated,
//!   named user-data parts merged in a documented order). Its `bootstrap` section is the only
//!   thing this crate carries about builds.
//!
//! ```
//! use firebuild_mmds::schema::Metadata;
//!
//! let md = Metadata::from_json_slice(br#"{"hostname": "vm1", "resize-rootfs": true}"#)?;
//! assert_eq!(md.hostname.as_deref(), Some("vm1"));
//! assert!(!md.is_build_mode());
//! # Ok::<(), firebuild_mmds::schema::Error>(())
//! ```

pub mod schema;

pub use schema::Metadata;
