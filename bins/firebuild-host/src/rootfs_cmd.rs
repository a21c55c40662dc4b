//! `firebuild-host rootfs BASE --out IMG`: resolve a base (what follows `FROM`) into an ext4
//! image and a manifest, with `firebuild-rootfs`.

use std::path::PathBuf;

use anyhow::Context;
use firebuild_rootfs::{BaseSource, Manifest, PrepareOptions, RootfsInfo, ext4};

/// Arguments of `firebuild-host rootfs`.
#[derive(Debug, clap::Args)]
pub struct RootfsArgs {
    /// Base: `debian:bookworm`, `HOST:PORT/REPO@sha256:…`, `oci:DIR[:TAG]`,
    /// `docker-archive:FILE[:TAG]`, `ext4:FILE`, `dir:DIR` or `scratch`.
    pub base: String,
    /// Output ext4 image.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Manifest to write (default: the image path with `.json`).
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Image size (`512M`, `2G`, bytes); default: content plus headroom.
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Shrink the image to its minimum afterwards (`resize2fs -M`).
    #[arg(long)]
    pub shrink: bool,
    /// Layer cache directory (default: `$XDG_CACHE_HOME/firebuild` or `~/.cache/firebuild`).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    #[command(flatten)]
    pub registry: crate::registry_args::RegistryArgs,
    /// Print the manifest as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mul) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mul: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("unknown size suffix {c:?} (K, M, G, T)")),
            };
            (&s[..i], mul)
        }
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| format!("invalid size {s:?}"))
}

/// The layer cache shared by `rootfs` and `build`: the parent of the kernel cache
/// (`$XDG_CACHE_HOME/firebuild` or `~/.cache/firebuild`; blobs under `blobs/sha256/`).
pub(crate) fn default_cache() -> PathBuf {
    firebuild_vmm::kernel::default_cache_dir()
        .ok()
        .and_then(|kernel| kernel.parent().map(PathBuf::from))
        .unwrap_or_else(|| std::env::temp_dir().join("firebuild-cache"))
}

/// Runs `firebuild-host rootfs`.
pub fn run(args: &RootfsArgs) -> anyhow::Result<()> {
    let source: BaseSource = args.base.parse()?;
    let work = std::env::temp_dir().join(format!("firebuild-rootfs-{}", std::process::id()));
    let mut opts = PrepareOptions::new(args.cache.clone().unwrap_or_else(default_cache), &work);
    opts.ext4.size = args.size;
    opts.pull = args.registry.apply(opts.pull)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let result = rt.block_on(firebuild_rootfs::prepare(&source, &args.out, &opts));
    let _ = std::fs::remove_dir_all(&work);
    let prepared = result.with_context(|| format!("prepare {source}"))?;
    let mut size = prepared.image.size;
    if args.shrink {
        size = ext4::shrink(&args.out)?;
    }
    let file = args
        .out
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let manifest = Manifest::new(
        prepared.config,
        prepared.base,
        RootfsInfo {
            filesystem: "ext4".into(),
            file,
            size_bytes: size,
        },
    );
    let mpath = args
        .manifest
        .clone()
        .unwrap_or_else(|| args.out.with_extension("json"));
    manifest.write(&mpath)?;
    if args.json {
        println!("{}", manifest.to_json()?);
    } else {
        println!(
            "{}: {} bytes from {} ({})",
            args.out.display(),
            size,
            source,
            manifest
                .base
                .manifest_digest
                .as_deref()
                .or(manifest.base.config_digest.as_deref())
                .unwrap_or("no digest")
        );
        println!("manifest: {}", mpath.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("G").is_err());
    }
}
