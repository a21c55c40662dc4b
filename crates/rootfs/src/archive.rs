//! Local layered sources: an OCI image layout directory (or a tar of one) and a `docker save`
//! archive. Blobs are verified against their digests; legacy `docker save` layers (named by
//! layer id, not content) are verified through the config's `rootfs.diff_ids` when applied.

use std::fs;
use std::path::{Path, PathBuf};

use tracing::debug;

use crate::config::{MAX_JSON_BYTES, OciImageConfig, decode_json, json_too_large};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{Descriptor, LayerFile, ManifestDoc, ResolvedConfig, ResolvedImage};

const REF_NAME: &str = "org.opencontainers.image.ref.name";

fn read_bounded(path: &Path) -> Result<Vec<u8>> {
    let len = fs::metadata(path).map_err(Error::io("stat", path))?.len();
    if len > MAX_JSON_BYTES as u64 {
        return Err(json_too_large(path.display().to_string(), len));
    }
    fs::read(path).map_err(Error::io("read", path))
}

/// Unpacks a tar archive (`docker save` output, an OCI archive) into `dest`.
pub fn unpack_archive(archive: &Path, dest: &Path) -> Result<()> {
    fs::create_dir_all(dest).map_err(Error::io("create", dest))?;
    let f = fs::File::open(archive).map_err(Error::io("open", archive))?;
    let mut a = tar::Archive::new(crate::layer::decompress(f).map_err(Error::io("read", archive))?);
    a.set_preserve_permissions(false);
    // tar's unpack refuses `..` and writing through symlinks out of `dest`.
    a.unpack(dest).map_err(Error::io("unpack", archive))
}

fn blob_path(layout: &Path, digest: &Digest) -> PathBuf {
    layout.join("blobs").join("sha256").join(digest.hex())
}

/// The JSON documents of a layout or `docker save` archive, by their `/`-separated name inside
/// it: read from a directory, or streamed out of a tar without unpacking anything else.
pub(crate) trait JsonFiles {
    /// The file `name`, at most [`MAX_JSON_BYTES`].
    fn read(&mut self, name: &str) -> Result<Vec<u8>>;
}

/// An unpacked layout or archive: names resolve inside the directory, never out of it.
pub(crate) struct DirFiles<'a>(pub(crate) &'a Path);

impl JsonFiles for DirFiles<'_> {
    fn read(&mut self, name: &str) -> Result<Vec<u8>> {
        read_bounded(&confined(self.0, name)?)
    }
}

/// A tar (optionally compressed) of a layout or archive: each read streams it once and keeps
/// only the entry asked for; layer blobs are skipped, never unpacked.
pub(crate) struct TarFiles<'a>(pub(crate) &'a Path);

impl JsonFiles for TarFiles<'_> {
    fn read(&mut self, name: &str) -> Result<Vec<u8>> {
        let path = self.0;
        let f = fs::File::open(path).map_err(Error::io("open", path))?;
        let mut a =
            tar::Archive::new(crate::layer::decompress(f).map_err(Error::io("read", path))?);
        let entries = a.entries().map_err(Error::io("read", path))?;
        for entry in entries {
            let entry = entry.map_err(Error::io("read", path))?;
            let entry_path = entry.path().map_err(Error::io("read", path))?;
            if tar_name(&entry_path) == name {
                return read_tar_entry(path, name, entry);
            }
        }
        Err(Error::Image {
            what: path.display().to_string(),
            reason: format!("no {name} in the archive"),
        })
    }
}

/// A tar entry's name without `./` prefixes.
fn tar_name(path: &Path) -> String {
    let parts: Vec<_> = path
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n.to_string_lossy()),
            _ => None,
        })
        .collect();
    parts.join("/")
}

fn read_tar_entry<R: std::io::Read>(
    archive: &Path,
    name: &str,
    entry: tar::Entry<'_, R>,
) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let what = format!("{name} in {}", archive.display());
    if !entry.header().entry_type().is_file() {
        return Err(Error::Image {
            what,
            reason: "not a regular file (links are read only from an unpacked directory)".into(),
        });
    }
    let len = entry.header().size().map_err(Error::io("read", archive))?;
    if len > MAX_JSON_BYTES as u64 {
        return Err(json_too_large(what, len));
    }
    let mut bytes = Vec::new();
    entry
        .take(MAX_JSON_BYTES as u64)
        .read_to_end(&mut bytes)
        .map_err(Error::io("read", archive))?;
    Ok(bytes)
}

fn read_blob(files: &mut dyn JsonFiles, digest: &Digest, what: &str) -> Result<Vec<u8>> {
    let bytes = files.read(&format!("blobs/sha256/{}", digest.hex()))?;
    digest.verify(&bytes, what)?;
    Ok(bytes)
}

/// The index entry of a layout tagged `tag` (or its only one).
fn layout_entry(files: &mut dyn JsonFiles, label: &str, tag: Option<&str>) -> Result<Digest> {
    let index = ManifestDoc::from_slice(&files.read("index.json")?, "index.json")?;
    let entries = index.manifests.unwrap_or_default();
    let entry = match tag {
        Some(t) => entries.iter().find(|d| {
            d.annotations
                .as_ref()
                .and_then(|a| a.get(REF_NAME))
                .is_some_and(|n| n == t || n.rsplit(':').next() == Some(t))
        }),
        None if entries.len() == 1 => entries.first(),
        None => None,
    };
    let Some(entry) = entry else {
        return Err(Error::Image {
            what: format!("{label}/index.json"),
            reason: match tag {
                Some(t) => format!("no manifest tagged {t:?}"),
                None => format!("{} manifests and no tag to choose one", entries.len()),
            },
        });
    };
    Digest::parse(&entry.digest)
}

/// Reads an OCI image layout's index, manifest and config (never a layer). `label` names the
/// layout in messages; `tag` selects the index entry whose `org.opencontainers.image.ref.name`
/// matches; without it the layout must hold one image.
pub(crate) fn oci_layout_config(
    files: &mut dyn JsonFiles,
    label: &str,
    tag: Option<&str>,
) -> Result<(ResolvedConfig, Vec<Descriptor>)> {
    let mut digest = layout_entry(files, label, tag)?;
    let mut index_digest = None;
    let mut doc = ManifestDoc::from_slice(
        &read_blob(files, &digest, "manifest")?,
        &format!("manifest {digest}"),
    )?;
    // Nested indexes (docker's OCI export nests one) down to the platform manifest.
    for _ in 0..4 {
        if !doc.is_index() {
            break;
        }
        let picked = doc.pick_linux_amd64(label)?;
        index_digest = Some(digest);
        digest = picked;
        doc = ManifestDoc::from_slice(
            &read_blob(files, &digest, "manifest")?,
            &format!("manifest {digest}"),
        )?;
    }
    let (config_desc, layer_descs) = doc.image_parts(&format!("manifest {digest}"))?;
    let config_digest = Digest::parse(&config_desc.digest)?;
    let config = OciImageConfig::from_slice(
        &read_blob(files, &config_digest, "config blob")?,
        &format!("config {config_digest}"),
    )?;
    let resolved = ResolvedConfig {
        reference: format!("oci-layout:{label}"),
        manifest_digest: Some(digest),
        index_digest,
        config_digest,
        config,
    };
    Ok((resolved, layer_descs))
}

/// Resolves an image from an OCI image layout directory. `tag` selects the index entry whose
/// `org.opencontainers.image.ref.name` matches; without it the layout must hold one image.
pub fn from_oci_layout(layout: &Path, tag: Option<&str>) -> Result<ResolvedImage> {
    let label = layout.display().to_string();
    let (resolved, layer_descs) = oci_layout_config(&mut DirFiles(layout), &label, tag)?;
    let mut layers = Vec::new();
    for (i, l) in layer_descs.iter().enumerate() {
        let d = Digest::parse(&l.digest)?;
        let path = blob_path(layout, &d);
        d.verify_file(&path, &format!("layer {i} blob"))?;
        layers.push(LayerFile {
            digest: Some(d),
            media_type: l.media_type.clone(),
            path,
        });
    }
    Ok(resolved.with_layers(layers))
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// A digest named by a path inside a save archive: `blobs/sha256/<hex>` or `<hex>.json`.
fn digest_from_name(name: &str) -> Option<Digest> {
    let base = name.rsplit('/').next()?;
    let hex = base.strip_suffix(".json").unwrap_or(base);
    Digest::parse(&format!("sha256:{hex}")).ok()
}

fn confined(root: &Path, name: &str) -> Result<PathBuf> {
    if name.split('/').any(|c| c == "..") || name.starts_with('/') {
        return Err(Error::Image {
            what: root.display().to_string(),
            reason: format!("path {name:?} escapes the archive"),
        });
    }
    // Symlinks inside the archive (docker save links duplicate layers) must stay inside it.
    let full = root.join(name);
    let real = fs::canonicalize(&full).map_err(Error::io("resolve", &full))?;
    let real_root = fs::canonicalize(root).map_err(Error::io("resolve", root))?;
    if !real.starts_with(&real_root) {
        return Err(Error::Image {
            what: root.display().to_string(),
            reason: format!("path {name:?} resolves outside the archive"),
        });
    }
    Ok(real)
}

/// Reads a `docker save` archive's `manifest.json` and the config it names (never a layer).
/// `label` names the archive in messages; `tag` selects by `RepoTags`; without it the archive
/// must hold one image. Returns the config and the layer paths inside the archive.
pub(crate) fn docker_save_config(
    files: &mut dyn JsonFiles,
    label: &str,
    tag: Option<&str>,
) -> Result<(ResolvedConfig, Vec<String>)> {
    let entries: Vec<SaveEntry> = decode_json(&files.read("manifest.json")?, "manifest.json")?;
    let entry = match tag {
        Some(t) => entries.iter().find(|e| {
            e.repo_tags
                .iter()
                .flatten()
                .any(|rt| rt == t || rt.rsplit_once(':').map(|(_, x)| x) == Some(t))
        }),
        None if entries.len() == 1 => entries.first(),
        None => None,
    };
    let Some(entry) = entry else {
        return Err(Error::Image {
            what: format!("{label}/manifest.json"),
            reason: match tag {
                Some(t) => format!("no image tagged {t:?}"),
                None => format!("{} images and no tag to choose one", entries.len()),
            },
        });
    };
    let cbytes = files.read(&entry.config)?;
    let config_digest = Digest::of(&cbytes);
    if let Some(named) = digest_from_name(&entry.config) {
        named.check(&config_digest, "config")?;
    }
    let config = OciImageConfig::from_slice(&cbytes, &format!("config {}", entry.config))?;
    let resolved = ResolvedConfig {
        reference: format!("docker-archive:{label}"),
        manifest_digest: None,
        index_digest: None,
        config_digest,
        config,
    };
    Ok((resolved, entry.layers.clone()))
}

/// Resolves an image from an unpacked `docker save` archive (`manifest.json` at its top).
/// `tag` selects by `RepoTags`; without it the archive must hold one image.
pub fn from_docker_save(dir: &Path, tag: Option<&str>) -> Result<ResolvedImage> {
    let label = dir.display().to_string();
    let (resolved, names) = docker_save_config(&mut DirFiles(dir), &label, tag)?;
    let mut layers = Vec::new();
    for (i, l) in names.iter().enumerate() {
        let path = confined(dir, l)?;
        let digest = if l.starts_with("blobs/") {
            let d = digest_from_name(l).ok_or_else(|| Error::Image {
                what: "manifest.json".into(),
                reason: format!("layer path {l:?} is not named by a digest"),
            })?;
            d.verify_file(&path, &format!("layer {i} blob"))?;
            Some(d)
        } else {
            None
        };
        debug!(layer = i, path = %path.display(), "docker save layer");
        layers.push(LayerFile {
            digest,
            media_type: "application/vnd.docker.image.rootfs.diff.tar".into(),
            path,
        });
    }
    Ok(resolved.with_layers(layers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_names() {
        let hex = "a".repeat(64);
        assert_eq!(
            digest_from_name(&format!("blobs/sha256/{hex}"))
                .unwrap()
                .hex(),
            hex
        );
        assert!(digest_from_name(&format!("{hex}.json")).is_some());
        assert!(digest_from_name("abc/layer.tar").is_none());
        assert!(confined(Path::new("/x"), "../etc/passwd").is_err());
    }
}
