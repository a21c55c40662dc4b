//! Pulling from an OCI distribution registry with [`oci_client`]: tag or digest, linux/amd64
//! from an index, anonymous or basic credentials (given, or per registry from Docker's
//! `config.json`: [`Credentials::DockerConfig`]) exchanged for a Bearer token when the registry
//! challenges (`WWW-Authenticate`), every manifest, config and layer verified against its
//! digest, layers cached by digest.
//!
//! Plain HTTP is used only for registries named in [`PullOptions::insecure_registries`] and, like
//! Docker, for loopback registries (`localhost`, `127.0.0.0/8`, `[::1]`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use futures::{StreamExt, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use tracing::{debug, info};

use crate::config::{MAX_JSON_BYTES, OciImageConfig, json_too_large};
use crate::digest::Digest;
use crate::docker_config::DockerConfig;
use crate::error::{Error, Result};
use crate::image::{
    Descriptor, LayerFile, MANIFEST_TYPES, ManifestDoc, ResolvedConfig, ResolvedImage,
};

/// Layers fetched at once.
const PARALLEL_LAYER_FETCHES: usize = 3;

/// Credentials for a registry.
#[derive(Clone, Default)]
pub enum Credentials {
    /// No credentials (an anonymous token is still fetched when the registry asks).
    #[default]
    Anonymous,
    /// User name and password (or identity token), exchanged for a Bearer token.
    Basic {
        /// User name.
        user: String,
        /// Password or token; never logged.
        password: String,
    },
    /// Per registry, from Docker's `config.json` (helpers included), looked up when the
    /// registry is first contacted; a registry it has nothing for is pulled anonymously.
    DockerConfig(DockerConfig),
}

impl Credentials {
    /// The credentials to present to `registry` (a host as written in a reference):
    /// [`Credentials::DockerConfig`] is resolved (which may run a credential helper), the
    /// others are returned as they are.
    pub async fn for_registry(&self, registry: &str) -> Result<Credentials> {
        match self {
            Credentials::DockerConfig(config) => config.credentials_for(registry).await,
            other => Ok(other.clone()),
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { user, .. } => write!(f, "Basic({user}, <redacted>)"),
            Credentials::DockerConfig(config) => {
                write!(f, "DockerConfig({})", config.path().display())
            }
        }
    }
}

/// How to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Layer cache: blobs live at `<cache_dir>/blobs/sha256/<hex>`.
    pub cache_dir: PathBuf,
    /// Registries (`host:port` as written in references) reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Credentials.
    pub credentials: Credentials,
}

impl PullOptions {
    /// Options with a cache directory, no insecure registries, anonymous access.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            cache_dir: cache_dir.into(),
            insecure_registries: Vec::new(),
            credentials: Credentials::Anonymous,
        }
    }

    /// Takes credentials from Docker's config unless explicit ones ([`Credentials::Basic`])
    /// are already set: explicit flags win over the config.
    pub fn with_docker_config(mut self, config: DockerConfig) -> Self {
        if !matches!(self.credentials, Credentials::Basic { .. }) {
            self.credentials = Credentials::DockerConfig(config);
        }
        self
    }
}

/// Whether a registry host is loopback (`localhost`, `127.x.y.z`, `[::1]`, with any port).
pub fn is_loopback_registry(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        registry.rsplit_once(':').map_or(registry, |(h, _)| h)
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The blob cache.
#[derive(Debug, Clone)]
pub struct BlobCache {
    dir: PathBuf,
}

impl BlobCache {
    /// A cache rooted at `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Where a blob lives.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs").join("sha256").join(digest.hex())
    }

    /// A cached JSON blob (manifest, index, config), re-verified and bounded by
    /// [`MAX_JSON_BYTES`]; `None` when absent or corrupt.
    pub fn get_json(&self, digest: &Digest) -> Result<Option<Vec<u8>>> {
        let Some(path) = self.get(digest) else {
            return Ok(None);
        };
        let len = std::fs::metadata(&path)
            .map_err(Error::io("stat", &path))?
            .len();
        if len > MAX_JSON_BYTES as u64 {
            return Err(json_too_large(path.display().to_string(), len));
        }
        std::fs::read(&path)
            .map(Some)
            .map_err(Error::io("read", &path))
    }

    /// Stores a small blob whose digest the caller has checked (written aside, then renamed
    /// into place, so readers never see half a blob).
    pub fn put(&self, digest: &Digest, bytes: &[u8]) -> Result<()> {
        let dest = self.path(digest);
        let parent = dest.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(Error::io("create", parent))?;
        let tmp = parent.join(format!(".{}.{}.partial", digest.hex(), std::process::id()));
        std::fs::write(&tmp, bytes).map_err(Error::io("write", &tmp))?;
        std::fs::rename(&tmp, &dest).map_err(Error::io("rename", &dest))
    }

    /// A cached blob, re-verified; a corrupt entry is deleted and reported as missing.
    pub fn get(&self, digest: &Digest) -> Option<PathBuf> {
        let p = self.path(digest);
        if !p.is_file() {
            return None;
        }
        match digest.verify_file(&p, "cached blob") {
            Ok(()) => Some(p),
            Err(e) => {
                tracing::warn!(error = %e, path = %p.display(), "dropping corrupt cache entry");
                let _ = std::fs::remove_file(&p);
                None
            }
        }
    }
}

fn reg_err(
    registry: &str,
    op: String,
) -> impl FnOnce(oci_client::errors::OciDistributionError) -> Error {
    let registry = registry.to_owned();
    move |e| match e {
        oci_client::errors::OciDistributionError::DigestError(
            oci_client::errors::DigestError::VerificationError { expected, actual },
        ) => Error::DigestMismatch {
            // `op` names the digest too; say it once.
            what: op
                .strip_suffix(&format!(" {expected}"))
                .map_or_else(|| op.clone(), str::to_owned),
            expected,
            actual,
        },
        e => Error::Registry {
            registry,
            op,
            source: Box::new(e),
        },
    }
}

/// A connection to the registry of one reference (no request made yet).
struct Session {
    reference: String,
    r: Reference,
    registry: String,
    client: Client,
    credentials: Credentials,
    /// Resolved from `credentials` by the first request that needs the network.
    auth: tokio::sync::OnceCell<RegistryAuth>,
}

impl Session {
    fn new(reference: &str, opts: &PullOptions) -> Result<Self> {
        let r: Reference =
            reference
                .parse()
                .map_err(|e: oci_client::ParseError| Error::Reference {
                    reference: reference.to_owned(),
                    reason: e.to_string(),
                })?;
        let registry = r.resolve_registry().to_owned();
        let mut insecure = opts.insecure_registries.clone();
        if is_loopback_registry(r.registry()) {
            insecure.push(r.registry().to_owned());
            insecure.push(registry.clone());
        }
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(insecure),
            platform_resolver: None,
            ..Default::default()
        });
        Ok(Self {
            reference: reference.to_owned(),
            r,
            registry,
            client,
            credentials: opts.credentials.clone(),
            auth: tokio::sync::OnceCell::new(),
        })
    }

    /// The registry's credentials, resolved once, on the first request that needs the
    /// network (so no credential helper runs when everything is cached), and handed to the
    /// client, which uses them for blob requests too (a cached manifest means none was made).
    async fn auth(&self) -> Result<&RegistryAuth> {
        self.auth
            .get_or_try_init(|| async {
                let auth = match self.credentials.for_registry(self.r.registry()).await? {
                    Credentials::Basic { user, password } => RegistryAuth::Basic(user, password),
                    Credentials::Anonymous | Credentials::DockerConfig(_) => {
                        RegistryAuth::Anonymous
                    }
                };
                self.client
                    .store_auth_if_needed(&self.registry, &auth)
                    .await;
                Ok(auth)
            })
            .await
    }

    /// A manifest (or index), verified: from the cache when asked for by digest and cached,
    /// else fetched (and cached by its digest).
    async fn manifest(
        &self,
        digest: Option<&Digest>,
        cache: &BlobCache,
    ) -> Result<(Digest, ManifestDoc)> {
        if let Some(d) = digest
            && let Some(bytes) = cache.get_json(d)?
        {
            debug!(manifest = %d, "manifest cache hit");
            let doc = ManifestDoc::from_slice(&bytes, &format!("manifest {d}"))?;
            return Ok((d.clone(), doc));
        }
        let r = match digest {
            Some(d) => self.r.clone_with_digest(d.to_string()),
            None => self.r.clone(),
        };
        let what = digest.map_or_else(|| self.reference.clone(), Digest::to_string);
        let (bytes, got) = self
            .client
            .pull_manifest_raw(&r, self.auth().await?, &MANIFEST_TYPES)
            .await
            .map_err(reg_err(&self.registry, format!("fetch manifest {what}")))?;
        let wanted = digest.map(Digest::as_str).or(self.r.digest());
        let actual = verify_manifest(&bytes, &got, wanted, &self.reference)?;
        let doc = ManifestDoc::from_slice(&bytes, &format!("manifest {actual}"))?;
        cache.put(&actual, &bytes)?;
        Ok((actual, doc))
    }

    /// The platform manifest (linux/amd64 when the reference names an index) and the
    /// config, verified, layers untouched.
    async fn config(&self, cache: &BlobCache) -> Result<(ResolvedConfig, Vec<Descriptor>)> {
        let named = self.r.digest().map(Digest::parse).transpose()?;
        let (first, doc) = self.manifest(named.as_ref(), cache).await?;
        let (index_digest, manifest_digest, doc) = if doc.is_index() {
            let d = doc.pick_linux_amd64(&self.reference)?;
            debug!(index = %first, manifest = %d, "picked linux/amd64");
            let (d, inner) = self.manifest(Some(&d), cache).await?;
            (Some(first), d, inner)
        } else {
            (None, first, doc)
        };
        let (config_desc, layers) = doc.image_parts(&format!("manifest {manifest_digest}"))?;
        let (config_digest, config) = self.config_blob(&config_desc, cache).await?;
        let resolved = ResolvedConfig {
            reference: self.reference.clone(),
            manifest_digest: Some(manifest_digest),
            index_digest,
            config_digest,
            config,
        };
        Ok((resolved, layers))
    }

    /// The config blob named by `desc`, verified, from the cache or fetched into it.
    async fn config_blob(
        &self,
        desc: &Descriptor,
        cache: &BlobCache,
    ) -> Result<(Digest, OciImageConfig)> {
        if desc.size > MAX_JSON_BYTES as i64 {
            return Err(json_too_large(format!("config {}", desc.digest), desc.size));
        }
        let digest = Digest::parse(&desc.digest)?;
        let what = format!("config {digest}");
        if let Some(bytes) = cache.get_json(&digest)? {
            debug!(config = %digest, "config cache hit");
            return Ok((digest, OciImageConfig::from_slice(&bytes, &what)?));
        }
        let mut bytes = Vec::new();
        self.auth().await?;
        self.client
            .pull_blob(&self.r, &oci_desc(desc), &mut bytes)
            .await
            .map_err(reg_err(&self.registry, format!("config blob {digest}")))?;
        digest.verify(&bytes, "config blob")?;
        let config = OciImageConfig::from_slice(&bytes, &what)?;
        cache.put(&digest, &bytes)?;
        Ok((digest, config))
    }
}

/// Resolves `reference` (linux/amd64) to its manifest and config only, verified and cached by
/// digest: a digest reference whose manifest and config are cached needs no network.
pub async fn fetch_config(reference: &str, opts: &PullOptions) -> Result<ResolvedConfig> {
    let session = Session::new(reference, opts)?;
    info!(reference, registry = %session.registry, "resolving base image config");
    let cache = BlobCache::new(&opts.cache_dir);
    Ok(session.config(&cache).await?.0)
}

/// Pulls `reference` (linux/amd64) into the cache and returns the verified image.
pub async fn pull(reference: &str, opts: &PullOptions) -> Result<ResolvedImage> {
    let session = Session::new(reference, opts)?;
    info!(reference, registry = %session.registry, "pulling base image");
    let cache = BlobCache::new(&opts.cache_dir);
    let (resolved, layer_descs) = session.config(&cache).await?;
    let fetches = layer_descs.iter().enumerate().map(|(i, l)| {
        let (session, cache) = (&session, &cache);
        async move {
            let d = Digest::parse(&l.digest)?;
            let path = match cache.get(&d) {
                Some(p) => {
                    debug!(layer = %d, "layer cache hit");
                    p
                }
                None => fetch_layer(session, l, &d, i, cache).await?,
            };
            Ok::<_, Error>(LayerFile {
                digest: Some(d),
                media_type: l.media_type.clone(),
                path,
            })
        }
    });
    // A few layers at a time, results kept in manifest order.
    let layers: Vec<LayerFile> = futures::stream::iter(fetches)
        .buffered(PARALLEL_LAYER_FETCHES)
        .try_collect()
        .await?;
    Ok(resolved.with_layers(layers))
}

fn verify_manifest(
    bytes: &[u8],
    got: &str,
    wanted: Option<&str>,
    reference: &str,
) -> Result<Digest> {
    let actual = Digest::of(bytes);
    if let Some(w) = wanted {
        Digest::parse(w)?.check(&actual, &format!("manifest of {reference}"))?;
    }
    // The registry's Docker-Content-Digest (oci-client checked it too).
    if let Ok(g) = Digest::parse(got) {
        g.check(&actual, &format!("manifest of {reference}"))?;
    }
    Ok(actual)
}

fn oci_desc(d: &Descriptor) -> OciDescriptor {
    OciDescriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
        ..Default::default()
    }
}

async fn fetch_layer(
    session: &Session,
    l: &Descriptor,
    d: &Digest,
    index: usize,
    cache: &BlobCache,
) -> Result<PathBuf> {
    session.auth().await?;
    let dest = cache.path(d);
    let parent = dest.parent().unwrap_or(Path::new("."));
    tokio::fs::create_dir_all(parent)
        .await
        .map_err(Error::io("create", parent))?;
    let tmp = parent.join(format!(".{}.partial", d.hex()));
    let file = tokio::fs::File::create(&tmp)
        .await
        .map_err(Error::io("create", &tmp))?;
    info!(layer = index, digest = %d, size = l.size, "fetching layer");
    let res = session
        .client
        .pull_blob(&session.r, &oci_desc(l), file)
        .await
        .map_err(reg_err(
            &session.registry,
            format!("layer {index} blob {d}"),
        ));
    if let Err(e) = res {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    // Our own check, independent of the client's.
    let check = {
        let tmp2 = tmp.clone();
        let d = d.clone();
        tokio::task::spawn_blocking(move || d.verify_file(&tmp2, &format!("layer {index} blob")))
            .await
            .map_err(|e| Error::Io {
                op: "join hashing task",
                path: tmp.clone(),
                source: std::io::Error::other(e.to_string()),
            })?
    };
    if let Err(e) = check {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    tokio::fs::rename(&tmp, &dest)
        .await
        .map_err(Error::io("rename", &dest))?;
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_rule() {
        assert!(is_loopback_registry("127.0.0.1:5000"));
        assert!(is_loopback_registry("localhost:5000"));
        assert!(is_loopback_registry("[::1]:5000"));
        assert!(is_loopback_registry("localhost"));
        assert!(!is_loopback_registry("docker.io"));
        assert!(!is_loopback_registry("10.0.0.1:5000"));
    }

    #[test]
    fn credentials_debug_hides_password() {
        let c = Credentials::Basic {
            user: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
