//! `firebuild-host cache ls|prune` over cache mounts created through the library in a
//! temporary cache directory; `build --no-cache` documented in `--help`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

use firebuild_build::cache_mounts::{self, Attached};
use firebuild_plan::Sharing;

fn host(args: &[&str], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_firebuild-host"))
        .args(args)
        .arg("--cache")
        .arg(cache)
        .output()
        .expect("run firebuild-host")
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Creates the cache mount `id` as a build would, held until the result is dropped.
fn attach(cache: &Path, id: &str) -> Attached {
    let work = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (attached, why) = rt
        .block_on(cache_mounts::attach(
            cache,
            id,
            Sharing::Shared,
            false,
            work.path(),
        ))
        .unwrap();
    assert!(why.is_none(), "{why:?}");
    attached
}

/// The ids `cache ls --json` lists.
fn listed(cache: &Path) -> Vec<String> {
    let json: serde_json::Value =
        serde_json::from_str(&ok(&host(&["cache", "ls", "--json"], cache))).unwrap();
    json.as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The ids `cache prune ... --json` removed, checking the bytes freed add up.
fn pruned(args: &[&str], cache: &Path) -> Vec<String> {
    let mut all = vec!["cache", "prune", "--json"];
    all.extend_from_slice(args);
    let json: serde_json::Value = serde_json::from_str(&ok(&host(&all, cache))).unwrap();
    let removed = json["removed"].as_array().unwrap();
    let sum: u64 = removed
        .iter()
        .map(|e| e["disk_bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(json["freed_bytes"].as_u64(), Some(sum), "{json}");
    let mut ids: Vec<String> = removed
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

fn mkfs_present() -> bool {
    if firebuild_vmm::which("mkfs.ext4").is_some() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "missing mkfs.ext4");
    eprintln!("skipping: missing mkfs.ext4");
    false
}

/// Moves the last use of cache mount `id` back by `secs`.
fn age_entry(cache: &Path, id: &str, secs: u64) {
    let entry = cache_mounts::list(cache)
        .unwrap()
        .into_iter()
        .find(|e| e.id == id)
        .unwrap();
    let record = cache_mounts::dir(cache)
        .join(&entry.file)
        .with_extension("json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    json["last_used"] = (entry.last_used - secs).into();
    std::fs::write(&record, json.to_string()).unwrap();
}

#[test]
fn ls_and_prune_by_id_age_and_all() {
    if !mkfs_present() {
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let cache = cache.path();
    // An empty cache directory: a header and nothing else; prune frees nothing.
    let table = ok(&host(&["cache", "ls"], cache));
    assert_eq!(table.lines().count(), 1, "{table}");
    assert!(table.starts_with("ID"), "{table}");
    assert!(pruned(&[], cache).is_empty());

    for id in ["apt", "npm", "x", "go-build"] {
        drop(attach(cache, id));
    }
    let mut ids = listed(cache);
    ids.sort();
    assert_eq!(ids, ["apt", "go-build", "npm", "x"]);
    let table = ok(&host(&["cache", "list"], cache));
    let apt = table.lines().find(|l| l.starts_with("apt ")).unwrap();
    assert!(apt.contains("MiB"), "{table}");
    assert!(apt.ends_with("ago") || apt.ends_with("just now"), "{table}");

    // --id: only that one.
    assert_eq!(pruned(&["--id", "x"], cache), ["x"]);
    let mut ids = listed(cache);
    ids.sort();
    assert_eq!(ids, ["apt", "go-build", "npm"]);

    // --older-than: nothing fresh; then only the one last used two days ago.
    assert!(pruned(&["--older-than", "1d"], cache).is_empty());
    assert_eq!(listed(cache).len(), 3);
    age_entry(cache, "npm", 2 * 86_400);
    assert_eq!(listed(cache).last().map(String::as_str), Some("npm"));
    let table = ok(&host(&["cache", "ls"], cache));
    assert!(table.contains("2 days ago"), "{table}");
    assert_eq!(pruned(&["--older-than", "24h"], cache), ["npm"]);

    // No filter: all the rest, except one a running build holds (kept, with a warning).
    let held = attach(cache, "go-build");
    let out = host(&["cache", "prune"], cache);
    let stdout = ok(&out);
    assert!(stdout.contains("removed apt ("), "{stdout}");
    assert!(!stdout.contains("go-build"), "{stdout}");
    assert!(stdout.contains("total freed: "), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("\"go-build\" is in use"), "{stderr}");
    assert_eq!(listed(cache), ["go-build"]);
    drop(held);
    assert_eq!(pruned(&[], cache), ["go-build"]);
    assert!(listed(cache).is_empty());
    // Images and records gone from the disk, not only from the listing.
    let left: Vec<_> = std::fs::read_dir(cache_mounts::dir(cache))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| !n.to_string_lossy().ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn bad_duration_is_refused_naming_it() {
    let cache = tempfile::tempdir().unwrap();
    let out = host(&["cache", "prune", "--older-than", "7x"], cache.path());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("'7x'"), "{stderr}");
    assert!(stderr.contains("--older-than"), "{stderr}");
    assert!(stderr.contains("unit"), "{stderr}");
}

#[test]
fn build_help_documents_no_cache() {
    let out = Command::new(env!("CARGO_BIN_EXE_firebuild-host"))
        .args(["build", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.contains("--no-cache Reuse no step from the step cache (the results are still stored for later builds), and start cache mounts (RUN --mount=type=cache) empty, as BuildKit's --no-cache does"),
        "{help}"
    );
}
