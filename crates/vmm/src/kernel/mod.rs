//! The guest kernel: Debian's `linux-image-cloud-amd64` fetched through apt, an initramfs that
//! loads the virtio modules and switches to the root filesystem, and the ELF `vmlinux`
//! Firecracker needs, cached per package version.
//!
//! [`KernelBuilder::prepare`] does the work once; [`Kernel::find`] and [`Kernel::find_default`]
//! find a prepared kernel (the drivers call the latter when a [`crate::VmSpec`] names no kernel).

pub mod bzimage;
pub mod cpio;
mod lz4;
pub mod modules;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::process;

/// The `/init` script of the initramfs (busybox `sh`).
///
/// It loads the modules listed in `/lib/modules/order`, configures the interface named by the
/// kernel's `ip=` parameter (`client::gw:netmask:host:dev:autoconf:dns0:dns1`; the name servers
/// are vminit's business), and mounts `root=` (default `/dev/vda`, `rootfstype=` default ext4)
/// on `/newroot`. Then:
///
/// - with `init=PATH`, `switch_root`s to that program of the image (images with their own init);
/// - else, when the initramfs holds [`AGENT_PATH`] (see [`agent_initramfs`]), it
///   `exec`s `/firebuild/vminit --switch-root /newroot`: vminit moves the root itself and stays
///   PID 1, and nothing of firebuild is in the image;
/// - else `switch_root`s to `/sbin/init`, as the kernel would.
///
/// `firebuild.probe` powers off as soon as the script runs (the KVM probe). Every failure prints
/// `firebuild-initramfs: error: ...` and powers the VM off.
pub const INIT_SCRIPT: &str = include_str!("init.sh");

/// Where [`agent_initramfs`] puts vminit in the initramfs (no leading `/`).
pub const AGENT_PATH: &str = "firebuild/vminit";

/// Where the run flow puts the image config (a `firebuild_plan::ImageConfig` as JSON) in the
/// initramfs, through `extra` of [`agent_initramfs`]; vminit reads it as PID 1 before it
/// switches root (the image's `etc/firebuild/image.json` is its fallback).
pub const IMAGE_CONFIG_PATH: &str = "firebuild/image.json";

/// Kernel parameters for a faster boot, in every default command line: `quiet` (only warnings
/// and errors on the console, whose every character is an exit to the VMM), no audit, no
/// self-tests of the kernel's crypto, no PCI probing (microvm and Firecracker have no PCI bus),
/// one serial port, no probing for a PS/2 controller (the last three as Firecracker
/// recommends). Together they cut ~1.1 s of a 3.7 s TCG boot to the
/// agent (`crates/vmm/tests/vminit_boot.rs`, 4 runs each, interleaved: 3.53-3.89 s without,
/// 2.18-2.90 s with).
pub const FAST_BOOT_ARGS: &str = fast_boot_args!();

/// The modules the initramfs loads, with their dependencies added from the modules' `.modinfo`.
pub const MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_blk",
    "virtio_net",
    "vmw_vsock_virtio_transport",
];

/// The Debian metapackage that tracks the current cloud kernel.
pub const DEFAULT_PACKAGE: &str = "linux-image-cloud-amd64";

/// A prepared kernel: the files in one cache directory and where they came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kernel {
    /// The cache directory holding the files below.
    #[serde(skip)]
    pub dir: PathBuf,
    /// The versioned package the kernel came from (`linux-image-6.1.0-56-cloud-amd64`).
    pub package: String,
    /// Its Debian version (`6.1.192-2`), which names the cache directory.
    pub version: String,
    /// The kernel release (`uname -r`: `6.1.0-56-cloud-amd64`).
    pub release: String,
    /// The modules in the initramfs, in load order.
    pub modules: Vec<String>,
}

impl Kernel {
    /// The compressed kernel (`bzImage`), as Debian ships it.
    pub fn bzimage(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }

    /// The uncompressed ELF kernel, what Firecracker and QEMU boot. QEMU's microvm enters it
    /// through its PVH note: no real-mode setup and no decompression, 0.45-0.65 s less of a
    /// TCG boot than the `bzImage` (3 runs each, `firebuild.probe` boots).
    pub fn vmlinux(&self) -> PathBuf {
        self.dir.join("vmlinux")
    }

    /// The initramfs (newc cpio).
    pub fn initramfs(&self) -> PathBuf {
        self.dir.join("initramfs.cpio")
    }

    /// Loads the kernel prepared in `dir` (a `<cache>/<version>` directory).
    pub fn load(dir: &Path) -> Result<Self> {
        let manifest = dir.join(MANIFEST);
        let text = std::fs::read(&manifest).map_err(Error::io(&manifest))?;
        let mut kernel: Kernel = serde_json::from_slice(&text).map_err(|source| Error::Json {
            what: manifest.display().to_string(),
            source,
        })?;
        kernel.dir = dir.to_path_buf();
        Ok(kernel)
    }

    /// The most recently prepared kernel under `cache` (what its `current` link names).
    pub fn find(cache: &Path) -> Result<Self> {
        let link = cache.join(CURRENT);
        let target = std::fs::read_link(&link).map_err(|_| Error::NoKernel {
            cache: cache.to_path_buf(),
        })?;
        Self::load(&cache.join(target))
    }

    /// [`Kernel::find`] in [`default_cache_dir`].
    pub fn find_default() -> Result<Self> {
        Self::find(&default_cache_dir()?)
    }
}

const MANIFEST: &str = "kernel.json";
const CURRENT: &str = "current";

/// `$XDG_CACHE_HOME/firebuild/kernel`, or `~/.cache/firebuild/kernel`.
///
/// This is the one place the crate reads the environment: the XDG lookup every caller would
/// otherwise repeat.
pub fn default_cache_dir() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(home) => PathBuf::from(home).join(".cache"),
            None => {
                return Err(Error::Spec(
                    "neither XDG_CACHE_HOME nor HOME is set: give a kernel cache directory"
                        .to_owned(),
                ));
            }
        },
    };
    Ok(base.join("firebuild").join("kernel"))
}

/// Prepares a kernel into a cache directory: `apt-get download`, `dpkg-deb -x`, initramfs,
/// `vmlinux`; atomically (a temporary directory renamed into place).
#[derive(Debug, Clone)]
pub struct KernelBuilder {
    cache: PathBuf,
    package: String,
    busybox: PathBuf,
    force: bool,
}

impl KernelBuilder {
    /// A builder caching under `cache` (e.g. [`default_cache_dir`]).
    pub fn new(cache: impl Into<PathBuf>) -> Self {
        Self {
            cache: cache.into(),
            package: DEFAULT_PACKAGE.to_owned(),
            busybox: PathBuf::from("/usr/bin/busybox"),
            force: false,
        }
    }

    /// The package to resolve (default [`DEFAULT_PACKAGE`]); a metapackage is followed to the
    /// versioned `linux-image-*` package it depends on.
    pub fn package(mut self, package: impl Into<String>) -> Self {
        self.package = package.into();
        self
    }

    /// The static busybox put in the initramfs (default `/usr/bin/busybox`, from `busybox-static`).
    pub fn busybox(mut self, busybox: impl Into<PathBuf>) -> Self {
        self.busybox = busybox.into();
        self
    }

    /// Rebuild even when the version is already cached.
    pub fn force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }

    /// Resolves the package through apt and returns the cached kernel, preparing it first when
    /// that version is not cached yet.
    pub fn prepare(&self) -> Result<Kernel> {
        let (package, version) = resolve_package(&self.package)?;
        let dir = self.cache.join(&version);
        if !self.force
            && let Ok(kernel) = Kernel::load(&dir)
        {
            tracing::debug!(dir = %dir.display(), "kernel already cached");
            set_current(&self.cache, &version)?;
            return Ok(kernel);
        }
        std::fs::create_dir_all(&self.cache).map_err(Error::io(&self.cache))?;
        let work = tempfile::Builder::new()
            .prefix(".prepare-")
            .tempdir_in(&self.cache)
            .map_err(Error::io(&self.cache))?;
        tracing::info!(%package, %version, "preparing guest kernel");
        let out = work.path().join("out");
        std::fs::create_dir(&out).map_err(Error::io(&out))?;
        let mut kernel = self.build(&package, &version, work.path(), &out)?;
        let manifest = serde_json::to_vec_pretty(&kernel).map_err(|source| Error::Json {
            what: MANIFEST.to_owned(),
            source,
        })?;
        write(&out.join(MANIFEST), &manifest)?;
        if dir.exists() {
            let old = work.path().join("old");
            std::fs::rename(&dir, &old).map_err(Error::io(&dir))?;
        }
        std::fs::rename(&out, &dir).map_err(Error::io(&dir))?;
        set_current(&self.cache, &version)?;
        kernel.dir = dir;
        Ok(kernel)
    }

    fn build(&self, package: &str, version: &str, work: &Path, out: &Path) -> Result<Kernel> {
        let apt = process::require("fetching the kernel package", "apt-get")?;
        process::run(
            Command::new(apt)
                .args(["download", "-q", &format!("{package}={version}")])
                .current_dir(work),
        )?;
        let deb = find_file(work, |name| {
            name.starts_with(package) && name.ends_with(".deb")
        })?
        .ok_or_else(|| pkg_err(package, "apt-get download produced no .deb"))?;
        let root = work.join("pkg");
        let dpkg = process::require("unpacking the kernel package", "dpkg-deb")?;
        process::run(Command::new(dpkg).arg("-x").arg(&deb).arg(&root))?;
        let boot = root.join("boot");
        let vmlinuz = find_file(&boot, |name| name.starts_with("vmlinuz-"))?
            .ok_or_else(|| pkg_err(package, "no boot/vmlinuz-* in the package"))?;
        let release = vmlinuz
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("vmlinuz-"))
            .unwrap_or_default()
            .to_owned();
        let modules_dir = ["lib", "usr/lib"]
            .iter()
            .map(|lib| root.join(lib).join("modules").join(&release))
            .find(|d| d.is_dir())
            .ok_or_else(|| pkg_err(package, &format!("no lib/modules/{release} in the package")))?;
        let modules = modules::resolve(&modules_dir, MODULES)?;
        let initramfs = build_initramfs(&self.busybox, &modules)?;
        write(&out.join("initramfs.cpio"), &initramfs)?;
        std::fs::copy(&vmlinuz, out.join("vmlinuz")).map_err(Error::io(&vmlinuz))?;
        let vmlinux = bzimage::extract_vmlinux(&vmlinuz)?;
        write(&out.join("vmlinux"), &vmlinux)?;
        Ok(Kernel {
            dir: out.to_path_buf(),
            package: package.to_owned(),
            version: version.to_owned(),
            release,
            modules: modules.into_iter().map(|m| m.name).collect(),
        })
    }
}

fn pkg_err(package: &str, reason: &str) -> Error {
    Error::Package {
        package: package.to_owned(),
        reason: reason.to_owned(),
    }
}

fn write(path: &Path, data: &[u8]) -> Result<()> {
    std::fs::write(path, data).map_err(Error::io(path))
}

fn find_file(dir: &Path, pred: impl Fn(&str) -> bool) -> Result<Option<PathBuf>> {
    for entry in std::fs::read_dir(dir).map_err(Error::io(dir))? {
        let entry = entry.map_err(Error::io(dir))?;
        if entry.file_name().to_str().is_some_and(&pred) {
            return Ok(Some(entry.path()));
        }
    }
    Ok(None)
}

/// Points `<cache>/current` at `version`, atomically (a new link renamed over the old).
fn set_current(cache: &Path, version: &str) -> Result<()> {
    let link = cache.join(CURRENT);
    if std::fs::read_link(&link).is_ok_and(|t| t == Path::new(version)) {
        return Ok(());
    }
    let tmp = cache.join(format!(".current-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(version, &tmp).map_err(Error::io(&tmp))?;
    std::fs::rename(&tmp, &link).map_err(Error::io(&link))
}

/// Follows a metapackage to the versioned image package it depends on and asks apt for its
/// candidate version: `(package, version)`.
pub fn resolve_package(package: &str) -> Result<(String, String)> {
    let apt_cache = process::require("resolving the kernel package", "apt-cache")?;
    let show = |pkg: &str| -> Result<String> {
        let out = process::run(Command::new(&apt_cache).args(["show", "--no-all-versions", pkg]))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let field = |text: &str, name: &str| -> Option<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.trim().to_owned())
    };
    let meta = show(package)?;
    let image = field(&meta, "Depends")
        .and_then(|deps| {
            deps.split(',')
                .map(|d| d.split_whitespace().next().unwrap_or_default().to_owned())
                .find(|d| d.starts_with("linux-image-") && d != package)
        })
        .unwrap_or_else(|| package.to_owned());
    let text = if image == package {
        meta
    } else {
        show(&image)?
    };
    let version =
        field(&text, "Version").ok_or_else(|| pkg_err(&image, "apt-cache show gave no Version"))?;
    if version.contains('/') || version.starts_with('.') {
        return Err(pkg_err(&image, &format!("unexpected version {version:?}")));
    }
    Ok((image, version))
}

/// The busybox applets [`INIT_SCRIPT`] runs, linked in the initramfs's `/bin`: linking them
/// at boot (`busybox --install -s`, ~400 links) cost 30-90 ms of every boot under TCG.
/// [`agent_initramfs`] adds them again beside the current script (a cached base may predate
/// them); the script still installs them all when `/bin/mount` is missing.
pub const INIT_APPLETS: &[&str] = &[
    "sh",
    "cat",
    "mount",
    "umount",
    "insmod",
    "ip",
    "hostname",
    "findfs",
    "sleep",
    "switch_root",
    "poweroff",
];

/// Writes `bin/<applet>` → `busybox` for each of [`INIT_APPLETS`].
fn link_init_applets<W: std::io::Write>(w: &mut cpio::CpioWriter<W>) -> std::io::Result<()> {
    INIT_APPLETS
        .iter()
        .try_for_each(|applet| w.symlink(&format!("bin/{applet}"), "busybox"))
}

/// Builds the initramfs: busybox (static), `/init` ([`INIT_SCRIPT`]), the modules in load order,
/// `/dev/console`, and the mount points.
pub fn build_initramfs(busybox: &Path, modules: &[modules::Module]) -> Result<Vec<u8>> {
    let bb = std::fs::read(busybox).map_err(Error::io(busybox))?;
    if !is_static_elf(&bb) {
        return Err(Error::Spec(format!(
            "{} is not a static ELF executable: install busybox-static",
            busybox.display()
        )));
    }
    let mut w = cpio::CpioWriter::new(Vec::with_capacity(bb.len() + (4 << 20)));
    let io = |e| Error::io("initramfs")(e);
    for dir in [
        "bin",
        "dev",
        "proc",
        "sys",
        "newroot",
        "lib",
        "lib/modules",
        "tmp",
    ] {
        w.dir(dir, 0o755).map_err(io)?;
    }
    w.char_dev("dev/console", 0o600, 5, 1).map_err(io)?;
    w.char_dev("dev/null", 0o666, 1, 3).map_err(io)?;
    w.file("bin/busybox", 0o755, &bb).map_err(io)?;
    link_init_applets(&mut w).map_err(io)?;
    w.file("init", 0o755, INIT_SCRIPT.as_bytes()).map_err(io)?;
    let mut order = String::new();
    for m in modules {
        w.file(&format!("lib/modules/{}.ko", m.name), 0o644, &m.object)
            .map_err(io)?;
        order.push_str(&m.name);
        order.push('\n');
    }
    w.file("lib/modules/order", 0o644, order.as_bytes())
        .map_err(io)?;
    w.finish().map_err(io)
}

/// Writes the initramfs that boots the agent from memory: `kernel`'s prepared `initramfs.cpio`
/// followed by a second newc archive holding [`AGENT_PATH`] (`vminit`, mode 0755, owner root),
/// the current [`INIT_SCRIPT`] as `init` (it replaces the cached one, so a kernel prepared by an
/// older firebuild still boots the agent this way) and each `extra` file: (path in the archive,
/// bytes, permission bits), e.g. ([`IMAGE_CONFIG_PATH`], the JSON, `0o644`); missing parent
/// directories are added (0755). The kernel unpacks concatenated archives in order.
///
/// `vminit` must be a static ELF executable (the initramfs has no libraries). `out` is written
/// through a temporary file in its directory and renamed into place. Boot it with no `init=` on
/// the kernel command line.
pub fn agent_initramfs(
    kernel: &Kernel,
    vminit: &Path,
    extra: &[(&str, &[u8], u32)],
    out: &Path,
) -> Result<()> {
    use std::io::Write as _;
    let agent = std::fs::read(vminit).map_err(Error::io(vminit))?;
    if !is_static_elf(&agent) {
        return Err(Error::Spec(format!(
            "{} is not a static ELF executable: build it with scripts/build-vminit.sh",
            vminit.display()
        )));
    }
    let base_path = kernel.initramfs();
    let base = std::fs::read(&base_path).map_err(Error::io(&base_path))?;
    for (path, _, _) in extra {
        let ok = !path.is_empty()
            && !path.starts_with('/')
            && path
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..");
        if !ok || *path == AGENT_PATH || *path == "init" {
            return Err(Error::Spec(format!(
                "initramfs file {path:?}: expected a relative path without . or .. (not init or {AGENT_PATH})"
            )));
        }
    }
    let io = |e| Error::io(out)(e);
    let mut w = cpio::CpioWriter::new(Vec::with_capacity(agent.len() + 4096));
    let mut dirs = std::collections::BTreeSet::new();
    let names = std::iter::once(AGENT_PATH).chain(extra.iter().map(|(p, _, _)| *p));
    for name in names {
        let Some((parents, _)) = name.rsplit_once('/') else {
            continue;
        };
        let mut parent = String::new();
        for component in parents.split('/') {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(component);
            if dirs.insert(parent.clone()) {
                w.dir(&parent, 0o755).map_err(io)?;
            }
        }
    }
    w.file(AGENT_PATH, 0o755, &agent).map_err(io)?;
    w.file("init", 0o755, INIT_SCRIPT.as_bytes()).map_err(io)?;
    // With the script they serve: a cached base may predate them (the kernel's unpacker
    // replaces an existing link).
    link_init_applets(&mut w).map_err(io)?;
    for (path, data, mode) in extra {
        w.file(path, *mode, data).map_err(io)?;
    }
    let second = w.finish().map_err(io)?;
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".initramfs-")
        .tempfile_in(dir)
        .map_err(Error::io(dir))?;
    tmp.write_all(&base).map_err(io)?;
    // Each archive starts on a 4-byte boundary (the prepared one already ends on one).
    tmp.write_all(&[0u8; 3][..(4 - base.len() % 4) % 4])
        .map_err(io)?;
    tmp.write_all(&second).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(out).map_err(|e| Error::io(out)(e.error))?;
    Ok(())
}

/// How many agent initramfs files [`cached_agent_initramfs`] keeps in a kernel's directory
/// (one per vminit build seen; the newest are kept).
const CACHED_AGENT_INITRAMFS: usize = 4;

/// The agent's initramfs without extra files (what every build boots), written once into
/// the kernel's directory and found there again: a build writes, and syncs, 15 MiB less
/// (0.07-0.14 s of a busybox build). The file name is a hash of what the content comes from:
/// the identity of `vminit` and of the kernel's initramfs (device, inode, size and
/// modification time, as `make` trusts them), the `/init` script and this crate's version.
/// Writing a new one removes all but the newest [`CACHED_AGENT_INITRAMFS`]; link the returned
/// file where it is used (a link outlives the removal).
pub fn cached_agent_initramfs(kernel: &Kernel, vminit: &Path) -> Result<PathBuf> {
    let path = kernel
        .dir
        .join(format!("agent-{:016x}.cpio", agent_key(kernel, vminit)?));
    if path.is_file() {
        return Ok(path);
    }
    agent_initramfs(kernel, vminit, &[], &path)?;
    prune_agent_initramfs(&kernel.dir);
    Ok(path)
}

fn agent_key(kernel: &Kernel, vminit: &Path) -> Result<u64> {
    use std::hash::{Hash as _, Hasher as _};
    use std::os::unix::fs::MetadataExt as _;
    let mut h = std::hash::DefaultHasher::new();
    for file in [vminit.to_path_buf(), kernel.initramfs()] {
        let m = std::fs::metadata(&file).map_err(Error::io(&file))?;
        (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()).hash(&mut h);
    }
    (INIT_SCRIPT, env!("CARGO_PKG_VERSION")).hash(&mut h);
    Ok(h.finish())
}

/// Removes the cached agent initramfs files beyond the newest [`CACHED_AGENT_INITRAMFS`].
fn prune_agent_initramfs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut cached: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with("agent-") && n.ends_with(".cpio"))
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    cached.sort_by_key(|c| std::cmp::Reverse(c.0));
    for (_, old) in cached.into_iter().skip(CACHED_AGENT_INITRAMFS) {
        if let Err(e) = std::fs::remove_file(&old) {
            tracing::debug!("removing the cached initramfs {}: {e}", old.display());
        }
    }
}

/// Whether `elf` is an x86-64 ELF executable without a `PT_INTERP` program header.
pub fn is_static_elf(elf: &[u8]) -> bool {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
    };
    if !elf.starts_with(bzimage::ELF_MAGIC) || elf.get(4) != Some(&2) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return false;
    };
    (0..usize::from(phnum))
        .all(|i| u32_at(phoff + i * usize::from(phentsize)).is_some_and(|t| t != 3))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn initramfs_holds_init_busybox_modules_and_order() {
        let Some(bb) =
            process::which("busybox").filter(|p| std::fs::read(p).is_ok_and(|b| is_static_elf(&b)))
        else {
            eprintln!("skipping: no static busybox (install busybox-static)");
            return;
        };
        let mods = vec![
            modules::Module {
                name: "virtio".into(),
                object: b"a".to_vec(),
            },
            modules::Module {
                name: "virtio_mmio".into(),
                object: b"b".to_vec(),
            },
        ];
        let img = build_initramfs(&bb, &mods).unwrap();
        let text = String::from_utf8_lossy(&img);
        assert!(text.contains("lib/modules/virtio_mmio.ko"));
        assert!(text.contains("virtio\nvirtio_mmio\n"), "load order file");
        assert!(text.contains("switch_root /newroot"));
        assert!(text.contains("TRAILER!!!"));
        // Every applet the script runs is a link to busybox, made when the archive is built.
        let links: Vec<_> = cpio::entries(&img)
            .unwrap()
            .into_iter()
            .filter(|e| e.mode & 0o170000 == 0o120000 && e.data == b"busybox")
            .map(|e| e.name)
            .collect();
        for applet in INIT_APPLETS {
            assert!(
                links.contains(&format!("bin/{applet}")),
                "bin/{applet} in {links:?}"
            );
        }
    }

    #[test]
    fn init_script_reads_netmasks_without_ipcalc() {
        let Some(bb) = process::which("busybox") else {
            eprintln!("skipping: no busybox (install busybox-static)");
            return;
        };
        let start = INIT_SCRIPT.find("mask_prefix() {").unwrap();
        let end = start + INIT_SCRIPT[start..].find("\n}\n").unwrap() + 3;
        let function = &INIT_SCRIPT[start..end];
        let cases = [
            ("255.255.0.0", "16"),
            ("255.255.255.255", "32"),
            ("255.255.254.0", "23"),
            ("255.255.255.128", "25"),
            ("0.0.0.0", "0"),
            ("24", "24"),
            ("255.0.255.0", "bad"),
            ("255.255.0", "bad"),
            ("33", "bad"),
            ("a*.b.c.d", "bad"),
            ("", "bad"),
        ];
        for (mask, want) in cases {
            let out = std::process::Command::new(&bb)
                .args(["sh", "-c"])
                .arg(format!(
                    "{function}\nmask_prefix \"$1\" && echo \"$prefix\" || echo bad"
                ))
                .args(["sh", mask])
                .output()
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                want,
                "{mask:?}"
            );
        }
    }

    /// A prepared kernel directory whose initramfs holds `init` (old script) and `bin/busybox`.
    fn fake_kernel(dir: &Path) -> Kernel {
        let mut w = cpio::CpioWriter::new(Vec::new());
        w.dir("bin", 0o755).unwrap();
        w.file("bin/busybox", 0o755, b"bb").unwrap();
        w.file("init", 0o755, b"#!/bin/sh\nold init\n").unwrap();
        std::fs::write(dir.join("initramfs.cpio"), w.finish().unwrap()).unwrap();
        Kernel {
            dir: dir.to_path_buf(),
            package: "p".into(),
            version: "1".into(),
            release: "r".into(),
            modules: Vec::new(),
        }
    }

    /// The smallest thing [`is_static_elf`] accepts: an ELF64 header with no program headers.
    fn static_elf() -> Vec<u8> {
        let mut elf = vec![0u8; 64];
        elf[..5].copy_from_slice(b"\x7fELF\x02");
        elf
    }

    #[test]
    fn agent_initramfs_appends_vminit_init_and_extra_files() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = fake_kernel(dir.path());
        let vminit = dir.path().join("vminit");
        std::fs::write(&vminit, static_elf()).unwrap();
        let out = dir.path().join("out/agent.cpio");
        std::fs::create_dir(dir.path().join("out")).unwrap();
        let config = br#"{"cmd":{"form":"exec","value":["/app"]}}"#;
        agent_initramfs(
            &kernel,
            &vminit,
            &[
                (IMAGE_CONFIG_PATH, config, 0o644),
                ("etc/extra/x", b"x", 0o600),
            ],
            &out,
        )
        .unwrap();
        let bytes = std::fs::read(&out).unwrap();
        let base = std::fs::read(kernel.initramfs()).unwrap();
        assert!(
            bytes.starts_with(&base),
            "the prepared initramfs comes first, untouched"
        );
        let entries = cpio::entries(&bytes).unwrap();
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        let links: Vec<_> = INIT_APPLETS.iter().map(|a| format!("bin/{a}")).collect();
        let mut expected = vec![
            "bin",
            "bin/busybox",
            "init",
            "firebuild",
            "etc",
            "etc/extra",
            AGENT_PATH,
            "init",
        ];
        expected.extend(links.iter().map(String::as_str));
        expected.extend([IMAGE_CONFIG_PATH, "etc/extra/x"]);
        assert_eq!(names, expected);
        assert!(
            entries
                .iter()
                .filter(|e| links.contains(&e.name))
                .all(|e| e.mode & 0o170000 == 0o120000 && e.data == b"busybox"),
            "the applets the script runs are links to busybox"
        );
        let find = |name: &str| entries.iter().rev().find(|e| e.name == name).unwrap();
        let agent = find(AGENT_PATH);
        assert_eq!((agent.mode, agent.owner), (0o100_755, (0, 0)));
        assert_eq!(agent.data, static_elf());
        assert_eq!(find("firebuild").mode, 0o040_755);
        // The last `init` wins when the kernel unpacks: the current script.
        assert_eq!(find("init").data, INIT_SCRIPT.as_bytes());
        assert_eq!(find(IMAGE_CONFIG_PATH).data, config);
        assert_eq!(find("etc/extra/x").mode, 0o100_600);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("out"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, ["agent.cpio"], "no temporary file left");
    }

    #[test]
    fn the_cached_agent_initramfs_is_written_once_per_vminit_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = fake_kernel(dir.path());
        let vminit = dir.path().join("vminit");
        std::fs::write(&vminit, static_elf()).unwrap();
        let first = cached_agent_initramfs(&kernel, &vminit).unwrap();
        let fresh = dir.path().join("fresh.cpio");
        agent_initramfs(&kernel, &vminit, &[], &fresh).unwrap();
        assert_eq!(
            std::fs::read(&first).unwrap(),
            std::fs::read(&fresh).unwrap()
        );
        // Found again, not rewritten: the same inode.
        let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        let again = cached_agent_initramfs(&kernel, &vminit).unwrap();
        assert_eq!((again.clone(), ino(&again)), (first.clone(), ino(&first)));
        // A rebuilt vminit (a new file) gets its own, with its content.
        let mut paths = vec![first];
        for n in 1..=CACHED_AGENT_INITRAMFS {
            let mut elf = static_elf();
            elf.push(u8::try_from(n).unwrap());
            let tmp = dir.path().join("vminit.new");
            std::fs::write(&tmp, &elf).unwrap();
            std::fs::rename(&tmp, &vminit).unwrap();
            let path = cached_agent_initramfs(&kernel, &vminit).unwrap();
            assert!(
                !paths.contains(&path),
                "a new vminit reused {}",
                path.display()
            );
            let entries = cpio::entries(&std::fs::read(&path).unwrap()).unwrap();
            let agent = entries.iter().rev().find(|e| e.name == AGENT_PATH).unwrap();
            assert_eq!(agent.data, elf);
            paths.push(path);
            // Distinct modification times order the pruning.
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(!paths[0].exists(), "the oldest beyond the limit is removed");
        assert!(paths[1..].iter().all(|p| p.exists()));
    }

    #[test]
    fn agent_initramfs_refuses_dynamic_agents_and_bad_paths() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = fake_kernel(dir.path());
        let out = dir.path().join("agent.cpio");
        let err = agent_initramfs(&kernel, Path::new("/bin/sh"), &[], &out).unwrap_err();
        assert!(err.to_string().contains("not a static ELF"), "{err}");
        let vminit = dir.path().join("vminit");
        std::fs::write(&vminit, static_elf()).unwrap();
        for bad in ["/etc/x", "../x", "a//b", "init", AGENT_PATH, ""] {
            assert!(
                agent_initramfs(&kernel, &vminit, &[(bad, b"", 0o644)], &out).is_err(),
                "{bad:?} accepted"
            );
        }
        assert!(!out.exists());
    }

    #[test]
    fn an_empty_cache_says_how_to_prepare() {
        let dir = tempfile::tempdir().unwrap();
        let err = Kernel::find(dir.path()).unwrap_err().to_string();
        assert!(err.contains("firebuild-host kernel prepare"), "{err}");
    }

    #[test]
    fn dynamic_executables_are_not_static() {
        let sh = std::fs::read("/bin/sh").unwrap();
        assert!(
            !is_static_elf(&sh),
            "/bin/sh is dynamically linked on Debian"
        );
        assert!(!is_static_elf(b"#!/bin/sh\n"));
    }

    #[test]
    fn init_script_parses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("init");
        std::fs::write(&path, INIT_SCRIPT).unwrap();
        let out = Command::new("sh").arg("-n").arg(&path).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn init_script_hands_over_to_the_agent_only_without_init() {
        let agent = INIT_SCRIPT
            .find(r#"if [ -z "$init" ] && [ -x "$agent" ]; then"#)
            .expect("the agent branch");
        let exec = INIT_SCRIPT
            .find(r#"exec "$agent" --switch-root /newroot"#)
            .expect("the agent is exec'd (stays PID 1)");
        let switch = INIT_SCRIPT
            .find(r#"exec switch_root /newroot "$init""#)
            .expect("explicit init= still switch_roots");
        assert!(agent < exec && exec < switch, "agent branch first");
        assert!(INIT_SCRIPT.contains("agent=/firebuild/vminit"));
        assert_eq!(format!("/{AGENT_PATH}"), "/firebuild/vminit");
        assert!(INIT_SCRIPT.contains(r#"init="${init:-/sbin/init}""#));
        assert!(!INIT_SCRIPT.contains("/sbin/vminit"));
    }

    /// The script's own `ip=` split, run by `sh` on values with and without the dns fields.
    #[test]
    fn init_script_splits_ip_with_dns_fields() {
        let read = INIT_SCRIPT
            .lines()
            .find(|l| l.trim_start().starts_with("IFS=: read -r client"))
            .expect("the ip= split")
            .trim();
        for (ip, expect) in [
            (
                "169.254.0.15::169.254.0.2:255.255.0.0::eth0:off:169.254.0.3",
                "169.254.0.15|169.254.0.2|255.255.0.0||eth0|off|169.254.0.3|",
            ),
            (
                "10.0.0.2::10.0.0.1:255.255.255.0:h:eth1:off",
                "10.0.0.2|10.0.0.1|255.255.255.0|h|eth1|off||",
            ),
        ] {
            let script = format!(
                "{read}\n{ip}\nIPEOF\nprintf '%s|%s|%s|%s|%s|%s|%s|%s' \"$client\" \"$gw\" \"$mask\" \"$host\" \"$dev\" \"$auto\" \"$dns0\" \"$dns1\""
            );
            let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), expect, "ip={ip}");
        }
    }
}
