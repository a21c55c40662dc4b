//! Base images to ext4 root filesystems, with a manifest.
//!
//! A [`BaseSource`] (OCI registry, OCI image layout, `docker save` archive, ext4 image,
//! directory or `scratch`) becomes an ext4 work image through [`prepare`], which also returns
//! the base's image config (a [`firebuild_plan::ImageConfig`]: env, user, workdir, entrypoint,
//! cmd...) to seed the build plan; [`resolve_config`] gives the same config without touching
//! a layer (manifests and config only, cached by digest), for planning. The pieces are usable
//! alone: [`registry::pull`] (with
//! [`oci_client`], digests verified, layers cached), [`layer::Applier`] (tar/gzip/zstd layers,
//! whiteouts, confined paths), [`ext4::make_ext4`] (`mkfs.ext4 -d`, sizing, `e2fsck -fn`),
//! [`ext4::shrink`] / [`ext4::grow`], and the [`Manifest`] written beside the image.
//!
//! ```
//! use firebuild_rootfs::{BaseSource, layer::{Applier, Ownership}};
//!
//! // Parse what follows FROM.
//! let src: BaseSource = "127.0.0.1:5000/test/img:tag".parse()?;
//! assert_eq!(src.kind(), "registry");
//!
//! // Apply a layer (an uncompressed tar here) to a directory, unprivileged.
//! let mut tar = tar::Builder::new(Vec::new());
//! let mut h = tar::Header::new_gnu();
//! h.set_size(2);
//! h.set_mode(0o4755);
//! h.set_uid(1000);
//! h.set_gid(1000);
//! h.set_mtime(0);
//! h.set_cksum();
//! tar.append_data(&mut h, "bin/tool", &b"hi"[..])?;
//! let bytes = tar.into_inner()?;
//! let dir = tempfile::tempdir()?;
//! let mut applier = Applier::new(dir.path(), Ownership::SideTable)?;
//! applier.apply_reader("layer 0", &bytes[..])?;
//! let side = applier.finish();
//! assert_eq!(std::fs::read(dir.path().join("bin/tool"))?, b"hi");
//! assert_eq!(side.entries[std::path::Path::new("bin/tool")].mode, 0o4755);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod archive;
pub mod config;
pub mod digest;
pub mod docker_config;
mod error;
pub mod ext4;
pub mod image;
pub mod layer;
pub mod manifest;
pub mod registry;
mod source;

pub use digest::Digest;
pub use docker_config::DockerConfig;
pub use error::{Error, Result};
pub use manifest::{BaseProvenance, Manifest, RootfsInfo};
pub use source::{
    BaseConfig, BaseSource, PrepareOptions, Prepared, apply_image, prepare, resolve_config,
    resolve_image,
};
