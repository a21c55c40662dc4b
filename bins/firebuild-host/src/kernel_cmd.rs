//! `firebuild-host kernel ...`: guest kernel preparation.

use std::path::PathBuf;

use anyhow::Context;
use firebuild_vmm::kernel::{self, KernelBuilder};

/// Arguments of `firebuild-host kernel`.
#[derive(Debug, clap::Args)]
pub struct KernelArgs {
    #[command(subcommand)]
    command: KernelCmd,
}

#[derive(Debug, clap::Subcommand)]
enum KernelCmd {
    /// Fetch Debian's cloud kernel through apt, build the initramfs and the ELF vmlinux, and
    /// cache them (`$XDG_CACHE_HOME/firebuild/kernel/<version>/`).
    Prepare {
        /// Cache directory (default `$XDG_CACHE_HOME/firebuild/kernel`, or `~/.cache/...`).
        #[arg(long)]
        cache: Option<PathBuf>,
        /// The kernel package (a metapackage is followed to its versioned image package).
        #[arg(long, default_value = kernel::DEFAULT_PACKAGE)]
        package: String,
        /// The static busybox to put in the initramfs.
        #[arg(long, default_value = "/usr/bin/busybox")]
        busybox: PathBuf,
        /// Rebuild even if this version is cached.
        #[arg(long)]
        force: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the cached kernel the drivers use by default.
    Show {
        /// Cache directory (default as for `prepare`).
        #[arg(long)]
        cache: Option<PathBuf>,
    },
}

/// Runs `firebuild-host kernel`.
pub fn run(args: &KernelArgs) -> anyhow::Result<()> {
    match &args.command {
        KernelCmd::Prepare {
            cache,
            package,
            busybox,
            force,
            json,
        } => {
            let cache = match cache {
                Some(c) => c.clone(),
                None => kernel::default_cache_dir()?,
            };
            let k = KernelBuilder::new(&cache)
                .package(package)
                .busybox(busybox)
                .force(*force)
                .prepare()
                .with_context(|| format!("preparing the guest kernel in {}", cache.display()))?;
            print(&k, *json)
        }
        KernelCmd::Show { cache } => {
            let cache = match cache {
                Some(c) => c.clone(),
                None => kernel::default_cache_dir()?,
            };
            let k = kernel::Kernel::find(&cache).with_context(|| {
                format!(
                    "no prepared kernel in {} (run `firebuild-host kernel prepare`)",
                    cache.display()
                )
            })?;
            print(&k, false)
        }
    }
}

fn print(k: &kernel::Kernel, json: bool) -> anyhow::Result<()> {
    if json {
        let v = serde_json::json!({
            "package": k.package,
            "version": k.version,
            "release": k.release,
            "dir": k.dir,
            "vmlinuz": k.bzimage(),
            "vmlinux": k.vmlinux(),
            "initramfs": k.initramfs(),
            "modules": k.modules,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("package   {} {}", k.package, k.version);
        println!("release   {}", k.release);
        println!("vmlinuz   {}", k.bzimage().display());
        println!("vmlinux   {}", k.vmlinux().display());
        println!("initramfs {}", k.initramfs().display());
        println!("modules   {}", k.modules.join(" "));
    }
    Ok(())
}
