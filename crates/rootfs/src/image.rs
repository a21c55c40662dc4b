//! Manifests, indexes and descriptors (OCI and Docker v2 schema 2), and the resolved form of an
//! image every source produces: a verified config plus layer files, bottom first.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::{OciImageConfig, decode_json};
use crate::digest::Digest;
use crate::error::{Error, Result};

/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker manifest list media type.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Accepted manifest media types, in preference order.
pub const MANIFEST_TYPES: [&str; 4] = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    #[serde(default)]
    pub media_type: String,
    /// Its digest.
    pub digest: String,
    /// Its size in bytes.
    #[serde(default)]
    pub size: i64,
    /// Platform (index entries only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Annotations (`org.opencontainers.image.ref.name` in layouts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// Platform of an index entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// `amd64`.
    #[serde(default)]
    pub architecture: String,
    /// `linux`.
    #[serde(default)]
    pub os: String,
}

/// A manifest or an index (told apart by which list is present).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestDoc {
    /// Always 2.
    pub schema_version: u32,
    /// Media type, when the document states it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Image config (manifests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Descriptor>,
    /// Layers, bottom first (manifests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<Descriptor>>,
    /// Platform manifests (indexes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifests: Option<Vec<Descriptor>>,
}

impl ManifestDoc {
    /// Decodes a manifest or index (bounded by [`MAX_JSON_BYTES`](crate::config::MAX_JSON_BYTES)).
    pub fn from_slice(bytes: &[u8], what: &str) -> Result<Self> {
        let doc: Self = decode_json(bytes, what)?;
        if doc.schema_version != 2 {
            return Err(Error::Image {
                what: what.to_owned(),
                reason: format!("unsupported schemaVersion {}", doc.schema_version),
            });
        }
        Ok(doc)
    }

    /// Whether this is an index / manifest list.
    pub fn is_index(&self) -> bool {
        self.manifests.is_some() && self.config.is_none()
    }

    /// The linux/amd64 entry of an index (entries without a platform are accepted only when
    /// they are the sole entry).
    pub fn pick_linux_amd64(&self, what: &str) -> Result<Digest> {
        let entries = self.manifests.as_deref().unwrap_or_default();
        let hit = entries
            .iter()
            .find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
            })
            .or_else(|| match entries {
                [only] if only.platform.is_none() => Some(only),
                _ => None,
            });
        match hit {
            Some(d) => Digest::parse(&d.digest),
            None => Err(Error::NoPlatform {
                what: what.to_owned(),
            }),
        }
    }

    /// Config and layer descriptors of an image manifest, digests validated.
    pub fn image_parts(&self, what: &str) -> Result<(Descriptor, Vec<Descriptor>)> {
        let (Some(config), Some(layers)) = (&self.config, &self.layers) else {
            return Err(Error::Image {
                what: what.to_owned(),
                reason: "not an image manifest (no config or layers)".into(),
            });
        };
        Digest::parse(&config.digest)?;
        for l in layers {
            Digest::parse(&l.digest)?;
        }
        Ok((config.clone(), layers.clone()))
    }
}

/// One layer ready to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerFile {
    /// Digest of the blob as stored (compressed), verified; `None` for legacy `docker save`
    /// layers, which are checked through the config's diff ids instead.
    pub digest: Option<Digest>,
    /// Media type as declared.
    pub media_type: String,
    /// Where the blob is.
    pub path: PathBuf,
}

/// An image resolved from any layered source: verified config and layers, with provenance.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The reference it was resolved from, as given.
    pub reference: String,
    /// Digest of the image manifest (platform-specific), when the source has one.
    pub manifest_digest: Option<Digest>,
    /// Digest of the index the manifest was picked from, if any.
    pub index_digest: Option<Digest>,
    /// Digest of the config blob.
    pub config_digest: Digest,
    /// The decoded config.
    pub config: OciImageConfig,
    /// Layers, bottom first.
    pub layers: Vec<LayerFile>,
}

/// An image's manifest and config, resolved and verified without touching its layers: what
/// planning needs ([`crate::resolve_config`]).
#[derive(Debug, Clone)]
pub struct ResolvedConfig {
    /// The reference it was resolved from, as given.
    pub reference: String,
    /// Digest of the image manifest (platform-specific), when the source has one.
    pub manifest_digest: Option<Digest>,
    /// Digest of the index the manifest was picked from, if any.
    pub index_digest: Option<Digest>,
    /// Digest of the config blob.
    pub config_digest: Digest,
    /// The decoded config.
    pub config: OciImageConfig,
}

impl ResolvedConfig {
    /// The resolved image: this config with its `layers`.
    pub fn with_layers(self, layers: Vec<LayerFile>) -> ResolvedImage {
        ResolvedImage {
            reference: self.reference,
            manifest_digest: self.manifest_digest,
            index_digest: self.index_digest,
            config_digest: self.config_digest,
            config: self.config,
            layers,
        }
    }
}
