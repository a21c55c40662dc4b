//! The manifest written beside a built image: its image config and where it came from.
//!
//! JSON shape (schema version [`MANIFEST_SCHEMA_VERSION`]; documented in the crate README):
//!
//! ```json
//! {
//!   "schema_version": 1,
//!   "firebuild_version": "0.1.0",
//!   "created": "2026-11-22T05:00:00Z",
//!   "image": { "env": [{"name": "PATH", "value": "/usr/bin"}], "cmd": {"exec": ["sh"]} },
//!   "base": { "kind": "registry", "reference": "127.0.0.1:5000/x:1",
//!             "manifest_digest": "sha256:...", "config_digest": "sha256:...",
//!             "layers": ["sha256:..."] },
//!   "dockerfile_digest": "sha256:...",
//!   "build_args": { "VERSION": "1" },
//!   "rootfs": { "filesystem": "ext4", "file": "rootfs.ext4", "size_bytes": 134217728 }
//! }
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use firebuild_plan::ImageConfig;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Version of the manifest's JSON schema; bumped on incompatible changes.
pub const MANIFEST_SCHEMA_VERSION: u32 = 1;

/// Where the base of an image came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseProvenance {
    /// `registry`, `oci-layout`, `docker-archive`, `ext4`, `dir` or `scratch`.
    pub kind: String,
    /// The reference or path as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Digest of the platform image manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<String>,
    /// Digest of the index the manifest was picked from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<String>,
    /// Digest of the image config blob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_digest: Option<String>,
    /// Layer diff ids (uncompressed digests), bottom first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<String>,
}

/// The rootfs file a manifest describes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsInfo {
    /// Always `ext4`.
    pub filesystem: String,
    /// File name of the image, relative to the manifest.
    pub file: String,
    /// Its size in bytes.
    pub size_bytes: u64,
}

/// The manifest: image config plus provenance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Version of firebuild that wrote it.
    pub firebuild_version: String,
    /// When it was written (RFC 3339, UTC).
    pub created: String,
    /// The image config (env, user, workdir, cmd, entrypoint, ports, labels...).
    pub image: ImageConfig,
    /// The base it was built from.
    pub base: BaseProvenance,
    /// SHA-256 of the Dockerfile, when built from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile_digest: Option<String>,
    /// Build arguments in force.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub build_args: BTreeMap<String, String>,
    /// The ext4 file.
    pub rootfs: RootfsInfo,
}

impl Manifest {
    /// A manifest stamped with this crate's version and the current time.
    pub fn new(image: ImageConfig, base: BaseProvenance, rootfs: RootfsInfo) -> Self {
        let created = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        Self {
            schema_version: MANIFEST_SCHEMA_VERSION,
            firebuild_version: env!("CARGO_PKG_VERSION").to_owned(),
            created,
            image,
            base,
            dockerfile_digest: None,
            build_args: BTreeMap::new(),
            rootfs,
        }
    }

    /// Records the Dockerfile's digest (SHA-256 of its bytes).
    pub fn with_dockerfile(mut self, dockerfile: &[u8]) -> Self {
        self.dockerfile_digest = Some(crate::digest::Digest::of(dockerfile).to_string());
        self
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|source| Error::Json {
            what: "manifest".into(),
            source,
        })
    }

    /// Decodes a manifest.
    pub fn from_json(s: &str) -> Result<Self> {
        serde_json::from_str(s).map_err(|source| Error::Json {
            what: "manifest".into(),
            source,
        })
    }

    /// Writes the manifest atomically (temporary file in the same directory, then rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        let json = self.to_json()?;
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp).map_err(Error::io("create", &tmp))?;
        f.write_all(json.as_bytes())
            .map_err(Error::io("write", &tmp))?;
        f.sync_all().map_err(Error::io("sync", &tmp))?;
        std::fs::rename(&tmp, path).map_err(Error::io("rename", path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_provenance() {
        let mut m = Manifest::new(
            ImageConfig {
                user: Some("app".into()),
                ..Default::default()
            },
            BaseProvenance {
                kind: "registry".into(),
                reference: Some("127.0.0.1:5000/x:1".into()),
                ..Default::default()
            },
            RootfsInfo {
                filesystem: "ext4".into(),
                file: "rootfs.ext4".into(),
                size_bytes: 1 << 20,
            },
        )
        .with_dockerfile(b"FROM scratch\n");
        m.build_args.insert("V".into(), "1".into());
        let json = m.to_json().unwrap();
        assert!(json.contains("\"dockerfile_digest\": \"sha256:"), "{json}");
        assert_eq!(Manifest::from_json(&json).unwrap(), m);
    }
}
