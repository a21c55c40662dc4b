//! Base sources and the one entry point that turns any of them into an ext4 work image.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use firebuild_plan::{ImageConfig, StepContext};
use tracing::info;

use crate::archive;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::ext4::{self, Ext4Image, Ext4Options};
use crate::image::{ResolvedConfig, ResolvedImage};
use crate::layer::{Applier, Ownership, SideTable};
use crate::manifest::BaseProvenance;
use crate::registry::{self, PullOptions};

/// Where a build's root filesystem starts from.
///
/// Parsed from a string ([`FromStr`]) with skopeo-like transport prefixes:
///
/// | string | source |
/// |---|---|
/// | `scratch` | empty filesystem |
/// | `debian:bookworm`, `127.0.0.1:5000/x@sha256:…`, `docker://REF` | OCI registry |
/// | `oci:PATH[:TAG]` | OCI image layout directory (or a tar of one) |
/// | `docker-archive:PATH[:TAG]` | `docker save` tar |
/// | `ext4:PATH` | existing ext4 image (copied) |
/// | `dir:PATH` | plain directory (used as is) |
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BaseSource {
    /// An image in a registry, by tag or digest.
    Registry(String),
    /// An OCI image layout directory, or a tar archive of one.
    OciLayout {
        /// Directory or archive.
        path: PathBuf,
        /// `org.opencontainers.image.ref.name` to pick.
        tag: Option<String>,
    },
    /// A `docker save` archive.
    DockerArchive {
        /// The tar file (or an unpacked directory).
        path: PathBuf,
        /// `RepoTags` entry to pick.
        tag: Option<String>,
    },
    /// An existing ext4 image, copied to become the work image.
    Ext4(PathBuf),
    /// A directory tree, packed as is.
    Dir(PathBuf),
    /// Nothing.
    Scratch,
}

fn split_tag(rest: &str) -> (PathBuf, Option<String>) {
    match rest.rsplit_once(':') {
        Some((p, t)) if !t.contains('/') && !t.is_empty() => (PathBuf::from(p), Some(t.to_owned())),
        _ => (PathBuf::from(rest), None),
    }
}

impl FromStr for BaseSource {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: &str| Error::Reference {
            reference: s.to_owned(),
            reason: reason.to_owned(),
        };
        if s.is_empty() {
            return Err(bad("empty"));
        }
        Ok(if s == "scratch" {
            BaseSource::Scratch
        } else if let Some(rest) = s.strip_prefix("oci:") {
            let (path, tag) = split_tag(rest);
            BaseSource::OciLayout { path, tag }
        } else if let Some(rest) = s.strip_prefix("docker-archive:") {
            let (path, tag) = split_tag(rest);
            BaseSource::DockerArchive { path, tag }
        } else if let Some(rest) = s.strip_prefix("ext4:") {
            BaseSource::Ext4(PathBuf::from(rest))
        } else if let Some(rest) = s.strip_prefix("dir:") {
            BaseSource::Dir(PathBuf::from(rest))
        } else {
            let r = s.strip_prefix("docker://").unwrap_or(s);
            r.parse::<oci_client::Reference>()
                .map_err(|e| bad(&e.to_string()))?;
            BaseSource::Registry(r.to_owned())
        })
    }
}

impl fmt::Display for BaseSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tagged = |f: &mut fmt::Formatter<'_>, pre: &str, p: &Path, t: &Option<String>| match t {
            Some(t) => write!(f, "{pre}:{}:{t}", p.display()),
            None => write!(f, "{pre}:{}", p.display()),
        };
        match self {
            BaseSource::Registry(r) => f.write_str(r),
            BaseSource::OciLayout { path, tag } => tagged(f, "oci", path, tag),
            BaseSource::DockerArchive { path, tag } => tagged(f, "docker-archive", path, tag),
            BaseSource::Ext4(p) => write!(f, "ext4:{}", p.display()),
            BaseSource::Dir(p) => write!(f, "dir:{}", p.display()),
            BaseSource::Scratch => f.write_str("scratch"),
        }
    }
}

impl BaseSource {
    /// The provenance `kind` string.
    pub fn kind(&self) -> &'static str {
        match self {
            BaseSource::Registry(_) => "registry",
            BaseSource::OciLayout { .. } => "oci-layout",
            BaseSource::DockerArchive { .. } => "docker-archive",
            BaseSource::Ext4(_) => "ext4",
            BaseSource::Dir(_) => "dir",
            BaseSource::Scratch => "scratch",
        }
    }
}

/// Options for [`prepare`].
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// Registry options (cache directory, insecure registries, credentials).
    pub pull: PullOptions,
    /// Scratch space: archives are unpacked and layers applied under it.
    pub work_dir: PathBuf,
    /// Image size and label.
    pub ext4: Ext4Options,
    /// Native owners (root) or a side table replayed under fakeroot.
    pub ownership: Ownership,
}

impl PrepareOptions {
    /// Defaults: the cache at `cache_dir`, scratch space at `work_dir`, computed size,
    /// ownership detected from the effective uid.
    pub fn new(cache_dir: impl Into<PathBuf>, work_dir: impl Into<PathBuf>) -> Self {
        Self {
            pull: PullOptions::new(cache_dir),
            work_dir: work_dir.into(),
            ext4: Ext4Options::default(),
            ownership: Ownership::detect(),
        }
    }
}

/// What [`prepare`] produced.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The ext4 work image.
    pub image: Ext4Image,
    /// The base's image config: the build plan's starting state.
    pub config: ImageConfig,
    /// The step context the first step starts in (the base's env, workdir, user, shell).
    pub context: StepContext,
    /// Where the base came from.
    pub base: BaseProvenance,
}

/// A base image's config, resolved without its layers ([`resolve_config`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseConfig {
    /// The image config, as [`Prepared::config`] reports it.
    pub config: ImageConfig,
    /// The step context the first step starts in, as [`Prepared::context`] reports it.
    pub context: StepContext,
    /// Where it came from: kind, reference, manifest/index/config digests, layer diff ids.
    pub base: BaseProvenance,
}

impl BaseConfig {
    fn new(source: &BaseSource, resolved: ResolvedConfig) -> Self {
        let base = BaseProvenance {
            kind: source.kind().to_owned(),
            reference: Some(source.to_string()),
            manifest_digest: resolved.manifest_digest.as_ref().map(Digest::to_string),
            index_digest: resolved.index_digest.as_ref().map(Digest::to_string),
            config_digest: Some(resolved.config_digest.to_string()),
            layers: resolved.config.rootfs.diff_ids.clone(),
        };
        Self {
            config: resolved.config.to_image_config(),
            context: resolved.config.starting_context(),
            base,
        }
    }
}

/// Resolves a base's image config without touching its layers, for planning: a registry's
/// manifest (linux/amd64 from an index) and config blob, verified and cached by digest under
/// [`PullOptions::cache_dir`] (a digest reference already cached needs no network); a layout
/// or `docker save` directory's JSON documents; a layout or `docker save` tar streamed for its
/// JSON entries only. `None` for `scratch`, `dir:` and `ext4:`, which have no config.
pub async fn resolve_config(source: &BaseSource, opts: &PullOptions) -> Result<Option<BaseConfig>> {
    let resolved = match source {
        BaseSource::Registry(r) => registry::fetch_config(r, opts).await?,
        BaseSource::OciLayout { path, tag } => {
            let tag = tag.clone();
            local_config(path, move |path, label| {
                let mut files = json_files(path)?;
                Ok(archive::oci_layout_config(&mut *files, label, tag.as_deref())?.0)
            })
            .await?
        }
        BaseSource::DockerArchive { path, tag } => {
            let tag = tag.clone();
            local_config(path, move |path, label| {
                let mut files = json_files(path)?;
                Ok(archive::docker_save_config(&mut *files, label, tag.as_deref())?.0)
            })
            .await?
        }
        BaseSource::Ext4(_) | BaseSource::Dir(_) | BaseSource::Scratch => return Ok(None),
    };
    Ok(Some(BaseConfig::new(source, resolved)))
}

/// The JSON documents of a local layout or archive: a directory as is, a tar streamed.
fn json_files(path: &Path) -> Result<Box<dyn archive::JsonFiles + '_>> {
    let meta = std::fs::metadata(path).map_err(Error::io("stat", path))?;
    Ok(if meta.is_dir() {
        Box::new(archive::DirFiles(path))
    } else {
        Box::new(archive::TarFiles(path))
    })
}

/// Runs a blocking read of the local layout or archive at `path` off the async executor;
/// `read` gets the path and its label for messages.
async fn local_config(
    path: &Path,
    read: impl FnOnce(&Path, &str) -> Result<ResolvedConfig> + Send + 'static,
) -> Result<ResolvedConfig> {
    let owned = path.to_path_buf();
    tokio::task::spawn_blocking(move || read(&owned, &owned.display().to_string()))
        .await
        .map_err(|e| Error::Io {
            op: "join config task",
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?
}

/// Resolves a layered source (registry, OCI layout, docker archive) to a verified image.
pub async fn resolve_image(
    source: &BaseSource,
    opts: &PrepareOptions,
) -> Result<Option<ResolvedImage>> {
    Ok(Some(match source {
        BaseSource::Registry(r) => registry::pull(r, &opts.pull).await?,
        BaseSource::OciLayout { path, tag } => {
            let dir = if path.is_file() {
                let d = opts.work_dir.join("oci-layout");
                archive::unpack_archive(path, &d)?;
                d
            } else {
                path.clone()
            };
            let mut img = archive::from_oci_layout(&dir, tag.as_deref())?;
            img.reference = source.to_string();
            img
        }
        BaseSource::DockerArchive { path, tag } => {
            let dir = if path.is_file() {
                let d = opts.work_dir.join("docker-archive");
                archive::unpack_archive(path, &d)?;
                d
            } else {
                path.clone()
            };
            let mut img = archive::from_docker_save(&dir, tag.as_deref())?;
            img.reference = source.to_string();
            img
        }
        BaseSource::Ext4(_) | BaseSource::Dir(_) | BaseSource::Scratch => return Ok(None),
    }))
}

/// Space kept free on the disk holding the extracted tree.
const DISK_RESERVE: u64 = 512 << 20;

/// Extraction bounded by the disk it writes to: a layer that decompresses past the free space
/// (less [`DISK_RESERVE`]) is stopped while it is read, not after it filled the disk.
fn disk_limits(root: &Path) -> crate::layer::Limits {
    let mut limits = crate::layer::Limits::default();
    if let Ok(vfs) = rustix::fs::statvfs(root) {
        let free = vfs.f_bavail.saturating_mul(vfs.f_frsize);
        limits.max_bytes = limits.max_bytes.min(free.saturating_sub(DISK_RESERVE));
    }
    limits
}

/// Applies an image's layers to `root`, checking each layer's uncompressed digest against the
/// config's `rootfs.diff_ids`. Returns the side table (empty under [`Ownership::Native`]).
/// Extraction stops at the free space of `root`'s disk ([`disk_limits`]).
pub fn apply_image(img: &ResolvedImage, root: &Path, ownership: Ownership) -> Result<SideTable> {
    let diff_ids = img.config.diff_ids()?;
    if diff_ids.len() != img.layers.len() {
        return Err(Error::Image {
            what: format!("config {}", img.config_digest),
            reason: format!(
                "{} diff_ids for {} layers",
                diff_ids.len(),
                img.layers.len()
            ),
        });
    }
    let mut applier = Applier::new(root, ownership)?.limits(disk_limits(root));
    for (i, (layer, want)) in img.layers.iter().zip(&diff_ids).enumerate() {
        let name = match &layer.digest {
            Some(d) => format!("{i} ({d})"),
            None => format!("{i} ({})", layer.path.display()),
        };
        let got = applier.apply_file(&name, &layer.path)?;
        want.check(
            &got,
            &format!("layer {name} uncompressed content (diff_id)"),
        )?;
    }
    Ok(applier.finish())
}

/// Turns any base source into an ext4 work image at `out`, with the base's image config.
///
/// Layered sources are resolved (pulled into the cache and verified), applied to a fresh tree
/// under `work_dir`, and packed with `mkfs.ext4 -d`; `dir:` is packed as is; `scratch` packs an
/// empty tree; `ext4:` is copied, checked with `e2fsck -fn` and grown to the requested size.
pub async fn prepare(source: &BaseSource, out: &Path, opts: &PrepareOptions) -> Result<Prepared> {
    std::fs::create_dir_all(&opts.work_dir).map_err(Error::io("create", &opts.work_dir))?;
    let mut base = BaseProvenance {
        kind: source.kind().to_owned(),
        reference: match source {
            BaseSource::Scratch => None,
            s => Some(s.to_string()),
        },
        ..Default::default()
    };
    let resolved = resolve_image(source, opts).await?;
    let (image, config, context) = match (resolved, source) {
        (Some(img), _) => {
            base.manifest_digest = img.manifest_digest.as_ref().map(Digest::to_string);
            base.index_digest = img.index_digest.as_ref().map(Digest::to_string);
            base.config_digest = Some(img.config_digest.to_string());
            base.layers = img.config.rootfs.diff_ids.clone();
            let root = opts.work_dir.join("rootfs");
            if root.exists() {
                std::fs::remove_dir_all(&root).map_err(Error::io("remove", &root))?;
            }
            let (img, root2, ownership, out2, ext4_opts) = (
                img,
                root.clone(),
                opts.ownership,
                out.to_path_buf(),
                opts.ext4.clone(),
            );
            let (image, config, context) = tokio::task::spawn_blocking(move || -> Result<_> {
                let side = apply_image(&img, &root2, ownership)?;
                let image = ext4::make_ext4(&root2, &out2, &side, &ext4_opts)?;
                Ok((
                    image,
                    img.config.to_image_config(),
                    img.config.starting_context(),
                ))
            })
            .await
            .map_err(|e| Error::Io {
                op: "join layer task",
                path: root.clone(),
                source: std::io::Error::other(e.to_string()),
            })??;
            let _ = std::fs::remove_dir_all(&root);
            (image, config, context)
        }
        (None, BaseSource::Dir(dir)) => (
            ext4::make_ext4(dir, out, &SideTable::default(), &opts.ext4)?,
            ImageConfig::default(),
            StepContext::default(),
        ),
        (None, BaseSource::Scratch) => {
            let root = opts.work_dir.join("scratch");
            std::fs::create_dir_all(&root).map_err(Error::io("create", &root))?;
            (
                ext4::make_ext4(&root, out, &SideTable::default(), &opts.ext4)?,
                ImageConfig::default(),
                StepContext::default(),
            )
        }
        (None, BaseSource::Ext4(src)) => {
            ext4::fsck(src)?;
            std::fs::copy(src, out).map_err(Error::io("copy", src))?;
            let mut size = std::fs::metadata(out)
                .map_err(Error::io("stat", out))?
                .len();
            if let Some(want) = opts.ext4.size {
                if want < size {
                    return Err(Error::TooSmall {
                        requested: want,
                        needed: size,
                    });
                }
                ext4::grow(out, want)?;
                size = want;
            }
            (
                Ext4Image {
                    path: out.to_path_buf(),
                    size,
                },
                ImageConfig::default(),
                StepContext::default(),
            )
        }
        (None, _) => {
            return Err(Error::Reference {
                reference: source.to_string(),
                reason: "source kind not handled".into(),
            });
        }
    };
    info!(base = %source, image = %image.path.display(), size = image.size, "base ready");
    Ok(Prepared {
        image,
        config,
        context,
        base,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_transports() {
        assert_eq!(
            "scratch".parse::<BaseSource>().unwrap(),
            BaseSource::Scratch
        );
        assert_eq!(
            "oci:/tmp/lay:v1".parse::<BaseSource>().unwrap(),
            BaseSource::OciLayout {
                path: "/tmp/lay".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            "docker-archive:/a/b.tar".parse::<BaseSource>().unwrap(),
            BaseSource::DockerArchive {
                path: "/a/b.tar".into(),
                tag: None
            }
        );
        assert_eq!(
            "127.0.0.1:5000/test/img:tag".parse::<BaseSource>().unwrap(),
            BaseSource::Registry("127.0.0.1:5000/test/img:tag".into())
        );
        assert_eq!(
            "docker://debian:bookworm".parse::<BaseSource>().unwrap(),
            BaseSource::Registry("debian:bookworm".into())
        );
        assert!("Bad Ref!".parse::<BaseSource>().is_err());
    }
}
