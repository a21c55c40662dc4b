//! Kernel modules: finding `.ko` files, reading their dependencies, ordering them for `insmod`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

/// A module ready to go into the initramfs: its name and its (decompressed) object.
#[derive(Debug, Clone)]
pub struct Module {
    /// The module name (`virtio_mmio`).
    pub name: String,
    /// The `.ko` bytes, decompressed.
    pub object: Vec<u8>,
}

/// Module names use `_` and `-` interchangeably; the canonical form uses `_`.
pub(crate) fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// Maps module names to their files under a `lib/modules/<release>` tree.
pub(crate) fn index(modules_dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut found = BTreeMap::new();
    let mut stack = vec![modules_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(Error::io(&dir))? {
            let entry = entry.map_err(Error::io(&dir))?;
            let path = entry.path();
            let ty = entry.file_type().map_err(Error::io(&path))?;
            if ty.is_dir() {
                stack.push(path);
            } else if let Some(file) = path.file_name().and_then(|n| n.to_str()) {
                let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
                    .iter()
                    .find_map(|ext| file.strip_suffix(ext));
                if let Some(stem) = stem {
                    found.insert(canonical(stem), path);
                }
            }
        }
    }
    Ok(found)
}

/// Names listed as built into the kernel (`modules.builtin`); they need no loading.
pub(crate) fn builtin(modules_dir: &Path) -> HashSet<String> {
    let Ok(text) = std::fs::read_to_string(modules_dir.join("modules.builtin")) else {
        return HashSet::new();
    };
    text.lines()
        .filter_map(|line| Path::new(line).file_name()?.to_str()?.strip_suffix(".ko"))
        .map(canonical)
        .collect()
}

/// Reads a module file, decompressing `.ko.xz`/`.ko.zst`/`.ko.gz` (busybox `insmod` wants plain objects).
pub(crate) fn read_object(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool: Option<(&str, &[&str])> = if name.ends_with(".xz") {
        Some(("xz", &["-dc"]))
    } else if name.ends_with(".zst") {
        Some(("zstd", &["-dcq"]))
    } else if name.ends_with(".gz") {
        Some(("gzip", &["-dc"]))
    } else {
        None
    };
    match tool {
        None => std::fs::read(path).map_err(Error::io(path)),
        Some((program, args)) => {
            let program = crate::process::require("decompressing kernel modules", program)?;
            Ok(crate::process::run(Command::new(program).args(args).arg(path))?.stdout)
        }
    }
}

/// The `depends=` field of a module's `.modinfo` section.
pub(crate) fn depends(object: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = object.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let rest = &object[at + KEY.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(canonical)
        .collect()
}

/// Resolves `wanted` and their dependencies into load order (dependencies first).
///
/// Wanted modules that are built into the kernel are skipped; a wanted module that is neither
/// built in nor present is an error.
pub(crate) fn resolve(modules_dir: &Path, wanted: &[&str]) -> Result<Vec<Module>> {
    let files = index(&modules_dir.join("kernel"))?;
    let builtin = builtin(modules_dir);
    let mut order = Vec::new();
    let mut done = HashSet::new();
    for name in wanted {
        visit(&canonical(name), &files, &builtin, &mut done, &mut order, 0)?;
    }
    Ok(order)
}

fn visit(
    name: &str,
    files: &BTreeMap<String, PathBuf>,
    builtin: &HashSet<String>,
    done: &mut HashSet<String>,
    order: &mut Vec<Module>,
    depth: usize,
) -> Result<()> {
    if done.contains(name) || builtin.contains(name) {
        return Ok(());
    }
    if depth > 64 {
        return Err(Error::Module {
            name: name.to_owned(),
            reason: "dependency chain deeper than 64 (a cycle?)".to_owned(),
        });
    }
    let Some(path) = files.get(name) else {
        return Err(Error::Module {
            name: name.to_owned(),
            reason: "neither built in nor found in the package".to_owned(),
        });
    };
    let object = read_object(path)?;
    for dep in depends(&object) {
        visit(&dep, files, builtin, done, order, depth + 1)?;
    }
    done.insert(name.to_owned());
    order.push(Module {
        name: name.to_owned(),
        object,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ko(deps: &str) -> Vec<u8> {
        format!("\x7fELF....\0license=GPL\0depends={deps}\0name=x\0").into_bytes()
    }

    #[test]
    fn dependencies_load_first_once_and_builtins_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("kernel/drivers");
        std::fs::create_dir_all(&k).unwrap();
        std::fs::write(k.join("virtio.ko"), ko("")).unwrap();
        std::fs::write(k.join("virtio_ring.ko"), ko("virtio")).unwrap();
        std::fs::write(
            k.join("virtio_net.ko"),
            ko("virtio_ring,virtio,net_failover"),
        )
        .unwrap();
        std::fs::write(k.join("net_failover.ko"), ko("failover")).unwrap();
        std::fs::write(k.join("virtio-blk.ko"), ko("virtio,virtio_ring")).unwrap();
        std::fs::write(
            dir.path().join("modules.builtin"),
            "kernel/net/core/failover.ko\n",
        )
        .unwrap();
        let order = resolve(dir.path(), &["virtio_net", "virtio_blk"]).unwrap();
        let names: Vec<_> = order.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "virtio",
                "virtio_ring",
                "net_failover",
                "virtio_net",
                "virtio_blk"
            ]
        );
    }

    #[test]
    fn a_missing_module_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("kernel")).unwrap();
        let err = resolve(dir.path(), &["virtio_mmio"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("virtio_mmio"), "{err}");
    }
}
