//! Finishing a build: the work image checked and sized, then the outputs written beside each
//! other in the output directory, each atomically (written under a temporary name, renamed).
//!
//! | file | what |
//! |---|---|
//! | `NAME.ext4` | the root filesystem: content + ext4 metadata + a journal sized for it + headroom, sparse |
//! | `NAME.manifest.json` | the image config (ENV, CMD, USER...) and where the base came from |
//! | `NAME.vmlinux` | the guest kernel (a hard link into the kernel cache, or a copy) |
//! | `NAME.initramfs.cpio` | the kernel's modules, the agent and the image config |
//! | `NAME.firecracker.json` | a Firecracker config that boots the above from this directory |

use std::path::{Path, PathBuf};

use firebuild_plan::ImageConfig;
use firebuild_rootfs::{BaseProvenance, Manifest, RootfsInfo, ext4};
use firebuild_vmm::kernel::Kernel;

use crate::error::{Error, Result};
use crate::firecracker::{FirecrackerConfig, config};
use crate::options::{BuildOptions, manifest_beside};

const MIB: u64 = 1024 * 1024;

/// What a build wrote.
#[derive(Debug, Clone)]
pub struct Built {
    /// The ext4 image.
    pub image: PathBuf,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// The manifest's path.
    pub manifest_path: PathBuf,
    /// The manifest.
    pub manifest: Manifest,
    /// The Firecracker config's path.
    pub firecracker_config: PathBuf,
    /// The kernel beside the image.
    pub kernel: PathBuf,
    /// The initramfs beside the image.
    pub initramfs: PathBuf,
}

/// Checks the work image and sizes it: the journal (sized for the work image) dropped, the
/// file system shrunk to its content, grown by a journal sized for the result plus the headroom
/// (or to the requested size), and a journal added back. One full check before the edits and
/// one after ([`ext4::Checked`]): a check between two offline edits finds what the first found.
/// Returns the size.
pub fn size(work_image: &Path, opts: &BuildOptions) -> Result<u64> {
    let err = || Error::image(work_image);
    let fs = ext4::Checked::new(work_image).map_err(err())?;
    fs.drop_journal().map_err(err())?;
    let min = shrink_fully(&fs).map_err(err())?;
    let journal = ext4::journal_size(min + opts.headroom_mib * MIB);
    let want = match opts.size_mib {
        Some(mib) if mib * MIB < min + ext4::journal_size(mib * MIB) => {
            return Err(Error::Invalid {
                what: "size",
                reason: format!(
                    "{mib} MiB is smaller than the image's content and journal ({} MiB)",
                    (min + ext4::journal_size(mib * MIB)).div_ceil(MIB)
                ),
            });
        }
        Some(mib) => mib * MIB,
        None => min + journal + opts.headroom_mib * MIB,
    };
    let size = fs.grow(want).map_err(err())?;
    fs.add_journal(size).map_err(err())?;
    fs.verify().map_err(err())?;
    Ok(size)
}

/// `resize2fs -M` until it stops gaining: from a large work image one pass keeps a
/// conservative estimate (the busybox example: 47 MiB after one pass from 4 GiB, 6 MiB after
/// the second).
fn shrink_fully(fs: &ext4::Checked<'_>) -> firebuild_rootfs::Result<u64> {
    let mut size = fs.shrink()?;
    for _ in 0..3 {
        let next = fs.shrink()?;
        let gained = size.saturating_sub(next);
        size = next;
        if gained < size / 20 {
            break;
        }
    }
    Ok(size)
}

/// Moves `from` to `to`, replacing it.
fn publish(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(Error::io("move into place", to))
}

/// Writes `bytes` to `path` atomically.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(Error::io("write", &tmp))?;
    publish(&tmp, path)
}

/// Hard-links `src` to `dst` (same file system), or copies it.
pub(crate) fn link_or_copy(src: &Path, dst: &Path) -> Result<()> {
    if same_file(src, dst) {
        // A rebuild into the same directory: `rename` of one link onto another of the same
        // file does nothing and would leave the temporary name behind.
        return Ok(());
    }
    let tmp = dst.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(src, &tmp).is_err() {
        std::fs::copy(src, &tmp).map_err(Error::io("copy", src))?;
    }
    publish(&tmp, dst)
}

/// Whether `a` and `b` are links to one file.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Everything the outputs need besides the image.
#[derive(Debug)]
pub struct Outputs<'a> {
    /// Output directory.
    pub out_dir: &'a Path,
    /// Base name.
    pub name: &'a str,
    /// The final image config.
    pub config: ImageConfig,
    /// Where the base came from.
    pub base: BaseProvenance,
    /// The Dockerfile text.
    pub dockerfile: &'a str,
    /// Build args to record (empty unless asked for).
    pub build_args: Vec<(String, String)>,
    /// The kernel booted.
    pub kernel: &'a Kernel,
}

/// Sizes the work image ([`size`]) and, meanwhile, writes the kernel, initramfs and
/// Firecracker config beside where it goes; then moves it into place and writes the manifest.
pub fn write(work_image: &Path, out: Outputs<'_>, opts: &BuildOptions) -> Result<Built> {
    // e2fsprogs run one at a time on one core: the companions' writing (a 15 MiB initramfs)
    // takes the other instead of following them.
    let (sized, companions) = std::thread::scope(|s| {
        let sizing = s.spawn(|| size(work_image, opts));
        let companions = write_companions(&out, opts);
        (sizing.join(), companions)
    });
    let size_bytes = sized.map_err(|_| Error::Task("sizing the image panicked".to_owned()))??;
    let Companions {
        kernel,
        initramfs,
        firecracker_config,
    } = companions?;
    let file = |ext: &str| format!("{}.{ext}", out.name);
    let image = out.out_dir.join(file("ext4"));
    let manifest_path = manifest_beside(&image);
    let mut manifest = Manifest::new(
        out.config,
        out.base,
        RootfsInfo {
            filesystem: "ext4".to_owned(),
            file: file("ext4"),
            size_bytes,
        },
    )
    .with_dockerfile(out.dockerfile.as_bytes());
    manifest.build_args = out.build_args.into_iter().collect();
    publish(work_image, &image)?;
    manifest
        .write(&manifest_path)
        .map_err(Error::image(&manifest_path))?;
    Ok(Built {
        image,
        size_bytes,
        manifest_path,
        manifest,
        firecracker_config,
        kernel,
        initramfs,
    })
}

/// The files written beside the image.
struct Companions {
    kernel: PathBuf,
    initramfs: PathBuf,
    firecracker_config: PathBuf,
}

/// Writes the kernel (a link), the initramfs and the Firecracker config for `out`.
fn write_companions(out: &Outputs<'_>, opts: &BuildOptions) -> Result<Companions> {
    let file = |ext: &str| format!("{}.{ext}", out.name);
    let kernel = out.out_dir.join(file("vmlinux"));
    link_or_copy(&out.kernel.vmlinux(), &kernel)?;
    let initramfs = out.out_dir.join(file("initramfs.cpio"));
    crate::boot::initramfs(out.kernel, &opts.guest, Some(&out.config), &initramfs)?;
    let fc = config(&FirecrackerConfig {
        kernel: &file("vmlinux"),
        initramfs: &file("initramfs.cpio"),
        rootfs: &file("ext4"),
        vcpus: opts.guest.vcpus,
        memory_mib: opts.guest.memory_mib,
        tap: opts.firecracker_tap.as_deref(),
    });
    let firecracker_config = out.out_dir.join(file("firecracker.json"));
    let fc_bytes = serde_json::to_vec_pretty(&fc).map_err(|e| Error::Invalid {
        what: "firecracker config",
        reason: e.to_string(),
    })?;
    write_atomic(&firecracker_config, &fc_bytes)?;
    Ok(Companions {
        kernel,
        initramfs,
        firecracker_config,
    })
}
