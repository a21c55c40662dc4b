//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while importing a base or assembling an ext4 image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A filesystem operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done (`open`, `create`, `read`...).
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A base specification or image reference could not be parsed.
    #[error("invalid base reference {reference:?}: {reason}")]
    Reference {
        /// The reference as given.
        reference: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The registry client failed (network, auth, HTTP status, manifest parsing).
    #[error("registry {registry}: {op}")]
    Registry {
        /// Registry host (`127.0.0.1:5000`, `index.docker.io`).
        registry: String,
        /// What was being fetched.
        op: String,
        /// The client error.
        #[source]
        source: Box<oci_client::errors::OciDistributionError>,
    },
    /// Content did not hash to the digest that names it.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was checked (`layer 2 blob`, `manifest`, `config`...).
        what: String,
        /// The digest that names the content.
        expected: String,
        /// The digest of the bytes received.
        actual: String,
    },
    /// A digest string is malformed or uses an unsupported algorithm.
    #[error("unsupported or malformed digest {0:?} (only sha256:<64 hex> is accepted)")]
    BadDigest(String),
    /// An image manifest, index or config is malformed or unsupported.
    #[error("{what}: {reason}")]
    Image {
        /// Which document (`manifest sha256:...`, `index.json`, `manifest.json`...).
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No manifest for linux/amd64 in an image index.
    #[error("{what}: no linux/amd64 manifest in the image index")]
    NoPlatform {
        /// The reference being resolved.
        what: String,
    },
    /// A JSON document could not be decoded.
    #[error("decode {what}")]
    Json {
        /// Which document.
        what: String,
        /// The decoder error.
        #[source]
        source: serde_json::Error,
    },
    /// A layer entry is unsafe or cannot be applied.
    #[error("layer {layer} entry {entry:?}: {reason}")]
    Layer {
        /// Digest (or index) of the layer.
        layer: String,
        /// The entry's path as found in the tar stream.
        entry: String,
        /// What is wrong.
        reason: String,
    },
    /// A layer (or the layers applied so far) went over a [`crate::layer::Limits`] bound;
    /// extraction stopped there.
    #[error("layer {layer}: {what} over the limit of {limit}")]
    LayerLimit {
        /// Digest (or index) of the layer.
        layer: String,
        /// What went over (`decompressed size`, `file content`, `entry count`).
        what: &'static str,
        /// The limit.
        limit: u64,
    },
    /// Reading a layer's tar stream failed.
    #[error("read layer {layer}")]
    LayerRead {
        /// Digest (or index) of the layer.
        layer: String,
        /// The underlying error (decompression, truncated archive...).
        #[source]
        source: std::io::Error,
    },
    /// An external tool (mkfs.ext4, e2fsck, resize2fs, fakeroot) could not be run.
    #[error("run {tool}")]
    Spawn {
        /// The program.
        tool: String,
        /// The spawn error.
        #[source]
        source: std::io::Error,
    },
    /// An external tool ran and failed.
    #[error("{tool} failed ({status}): {stderr}")]
    Tool {
        /// The program and its main argument.
        tool: String,
        /// Exit status as printed by the OS.
        status: String,
        /// The last lines of its standard error.
        stderr: String,
    },
    /// An xattr cannot be written into the image safely (its file's path or its name has a
    /// byte outside the allow-list, or is too long); nothing was written.
    #[error("xattr {name} on {path} refused: {reason}")]
    Xattr {
        /// The file's path in the image, escaped as Rust's `{:?}` does and cut to 256 bytes.
        path: String,
        /// The xattr's name, escaped and cut the same way.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Docker's `config.json` is malformed (never quotes a value: it may be a password).
    #[error(
        "docker config {path}: {}{reason}",
        if field.is_empty() { String::new() } else { format!("{field}: ") }
    )]
    DockerConfig {
        /// The config file.
        path: PathBuf,
        /// The field (`auths["ghcr.io"].auth`, `credsStore`...); empty for the whole file.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A Docker credential helper could not be run or gave no usable answer.
    #[error("credential helper {helper} for {registry}: {reason}")]
    CredentialHelper {
        /// The program (`docker-credential-<name>`).
        helper: String,
        /// The registry asked about.
        registry: String,
        /// What went wrong (never the helper's secret).
        reason: String,
        /// The underlying error, when spawning or reading failed.
        #[source]
        source: Option<std::io::Error>,
    },
    /// The requested image size cannot hold the content.
    #[error(
        "requested image size {requested} bytes is too small: the content needs at least {needed} bytes"
    )]
    TooSmall {
        /// The size the user asked for.
        requested: u64,
        /// The minimum this content needs.
        needed: u64,
    },
}

impl Error {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
