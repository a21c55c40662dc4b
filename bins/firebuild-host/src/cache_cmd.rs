//! `firebuild-host cache`: lists, sizes and prunes what builds keep on the host: the step cache
//! ([`firebuild_build::stepcache`], each step's result) and the `RUN --mount=type=cache`
//! directories ([`firebuild_build::cache_mounts`]).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use firebuild_build::cache_mounts::{self, CacheEntry};
use firebuild_build::stepcache::Store;
use serde::Serialize;

use crate::progress::human_bytes;

/// Arguments of `firebuild-host cache`.
#[derive(Debug, Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    command: CacheCmd,
}

#[derive(Debug, Subcommand)]
enum CacheCmd {
    /// List the cache mounts (id, size on disk, last use, most recent first), then the step
    /// cache's entries (`--steps`: only those).
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Disk used by the step cache and the cache mounts.
    Du(DuArgs),
    /// Remove cache mounts not in use by a running build and step cache entries: all of them,
    /// or those the filters select (`--id` selects cache mounts only, `--keep-storage` step
    /// cache entries only; filters together: all must match).
    Prune(PruneArgs),
}

/// The step cache in the cache directory `dir`.
pub fn step_cache_dir(dir: &std::path::Path) -> PathBuf {
    dir.join("steps")
}

/// The cache directory: the one `build` uses.
#[derive(Debug, Args)]
struct CacheDirArg {
    /// Layer cache directory, as `build --cache` (default: the one `rootfs` and `build` use,
    /// `$XDG_CACHE_HOME/firebuild` or `~/.cache/firebuild`); cache mounts are kept in its
    /// `run-mounts` directory.
    #[arg(long, visible_alias = "cache-dir", value_name = "DIR")]
    cache: Option<PathBuf>,
}

impl CacheDirArg {
    fn dir(&self) -> PathBuf {
        self.cache
            .clone()
            .unwrap_or_else(crate::rootfs_cmd::default_cache)
    }
}

#[derive(Debug, Args)]
struct LsArgs {
    #[command(flatten)]
    cache: CacheDirArg,
    /// Print JSON: an array of `{id, file, disk_bytes, last_used}` (`last_used` in seconds
    /// since the Unix epoch); with `--steps`, of `{key, description, data_bytes, created,
    /// last_used}`.
    #[arg(long)]
    json: bool,
    /// List the step cache's entries only.
    #[arg(long)]
    steps: bool,
}

#[derive(Debug, Args)]
struct DuArgs {
    #[command(flatten)]
    cache: CacheDirArg,
    /// Print JSON: `{steps: {entries, chunks, disk_bytes}, mounts: {count, disk_bytes}}`.
    #[arg(long)]
    json: bool,
}

/// A step cache entry as `ls --steps --json` prints it.
#[derive(Debug, Serialize)]
struct StepRow {
    key: String,
    description: String,
    data_bytes: u64,
    created: u64,
    last_used: u64,
}

#[derive(Debug, Args)]
struct PruneArgs {
    #[command(flatten)]
    cache: CacheDirArg,
    /// Remove only the cache mount with this id (repeatable).
    #[arg(long = "id", value_name = "ID")]
    ids: Vec<String>,
    /// Remove only cache mounts last used longer ago than this: a number and a unit
    /// (`s`, `m`, `h`, `d`, `w`), e.g. `30m`, `24h`, `7d`, `1h30m`.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    older_than: Option<Duration>,
    /// `until=DURATION`: as `--older-than` (Docker's `builder prune --filter` syntax).
    #[arg(long, value_name = "until=DURATION", value_parser = parse_filter)]
    filter: Option<Duration>,
    /// Keep the step cache under this size, removing its least recently used entries
    /// (`500M`, `20G`; Docker's `builder prune --keep-storage`).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    keep_storage: Option<u64>,
    /// Print JSON: `{removed: [{id, file, disk_bytes, last_used}], freed_bytes, removed_steps:
    /// [{key, description, data_bytes, created, last_used}], step_bytes_before,
    /// step_bytes_after}`.
    #[arg(long)]
    json: bool,
}

/// What `prune --json` prints.
#[derive(Debug, Serialize)]
struct Pruned {
    removed: Vec<CacheEntry>,
    freed_bytes: u64,
    removed_steps: Vec<StepRow>,
    step_bytes_before: u64,
    step_bytes_after: u64,
}

/// Runs the subcommand.
pub fn run(args: &CacheArgs) -> anyhow::Result<()> {
    match &args.command {
        CacheCmd::Ls(a) if a.steps => ls_steps(a),
        CacheCmd::Ls(a) => ls(a),
        CacheCmd::Du(a) => du(a),
        CacheCmd::Prune(a) => prune(a),
    }
}

fn step_rows(store: &Store) -> anyhow::Result<Vec<StepRow>> {
    let entries = store
        .list()
        .with_context(|| format!("cannot list the step cache in {}", store.dir().display()))?;
    Ok(entries
        .into_iter()
        .map(|(e, last_used)| StepRow {
            data_bytes: e.data_bytes(),
            key: e.key,
            description: e.description,
            created: e.created,
            last_used,
        })
        .collect())
}

fn ls_steps(args: &LsArgs) -> anyhow::Result<()> {
    let rows = step_rows(&Store::new(step_cache_dir(&args.cache.dir())))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    print_steps(&rows);
    Ok(())
}

fn print_steps(rows: &[StepRow]) {
    let now = now();
    println!("{:<12}  {:>10}  {:<16}  STEP", "KEY", "DATA", "LAST USED");
    for r in rows {
        println!(
            "{:<12}  {:>10}  {:<16}  {}",
            &r.key[..12.min(r.key.len())],
            human_bytes(r.data_bytes),
            age(now.saturating_sub(r.last_used)),
            r.description.lines().next().unwrap_or_default()
        );
    }
}

fn du(args: &DuArgs) -> anyhow::Result<()> {
    let dir = args.cache.dir();
    let store = Store::new(step_cache_dir(&dir));
    let entries = step_rows(&store)?.len();
    let (step_bytes, chunks) = store.disk_usage();
    let mounts = cache_mounts::list(&dir)
        .with_context(|| format!("cannot list the cache mounts in {}", dir.display()))?;
    let mount_bytes: u64 = mounts.iter().map(|m| m.disk_bytes).sum();
    if args.json {
        let out = serde_json::json!({
            "steps": {"entries": entries, "chunks": chunks, "disk_bytes": step_bytes},
            "mounts": {"count": mounts.len(), "disk_bytes": mount_bytes},
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "step cache    {:>10}  {entries} entries, {chunks} chunks",
        human_bytes(step_bytes)
    );
    println!(
        "cache mounts  {:>10}  {} mounts",
        human_bytes(mount_bytes),
        mounts.len()
    );
    println!(
        "total         {:>10}",
        human_bytes(step_bytes + mount_bytes)
    );
    Ok(())
}

fn ls(args: &LsArgs) -> anyhow::Result<()> {
    let dir = args.cache.dir();
    let entries = cache_mounts::list(&dir)
        .with_context(|| format!("cannot list the cache mounts in {}", dir.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    let now = now();
    let rows: Vec<[String; 3]> = entries
        .iter()
        .map(|e| {
            [
                e.id.clone(),
                human_bytes(e.disk_bytes),
                age(now.saturating_sub(e.last_used)),
            ]
        })
        .collect();
    let id_width = rows
        .iter()
        .map(|r| r[0].len())
        .chain([2])
        .max()
        .unwrap_or(2);
    let size_width = rows
        .iter()
        .map(|r| r[1].len())
        .chain([4])
        .max()
        .unwrap_or(4);
    println!("{:<id_width$}  {:>size_width$}  LAST USED", "ID", "SIZE");
    for [id, size, used] in rows {
        println!("{id:<id_width$}  {size:>size_width$}  {used}");
    }
    let steps = step_rows(&Store::new(step_cache_dir(&dir)))?;
    if !steps.is_empty() {
        println!();
        print_steps(&steps);
    }
    Ok(())
}

fn prune(args: &PruneArgs) -> anyhow::Result<()> {
    let dir = args.cache.dir();
    let ids: BTreeSet<&str> = args.ids.iter().map(String::as_str).collect();
    let older = args.older_than.or(args.filter);
    let cutoff = older.map(|d| now().saturating_sub(d.as_secs()));
    // `--keep-storage` alone prunes the step cache only; `--id` the cache mounts only.
    let mounts_too = args.keep_storage.is_none() || !ids.is_empty() || cutoff.is_some();
    let selected = |e: &CacheEntry| {
        mounts_too
            && (ids.is_empty() || ids.contains(e.id.as_str()))
            && cutoff.is_none_or(|c| e.last_used < c)
    };
    let before = cache_mounts::list(&dir)
        .with_context(|| format!("cannot list the cache mounts in {}", dir.display()))?;
    for id in &ids {
        if !before.iter().any(|e| e.id == *id) {
            eprintln!("warning: no cache mount with id {id:?}");
        }
    }
    let removed = cache_mounts::prune(&dir, |e| !selected(e))
        .with_context(|| format!("cannot prune the cache mounts in {}", dir.display()))?;
    for kept in before
        .iter()
        .filter(|e| selected(e) && !removed.iter().any(|r| r.file == e.file))
    {
        eprintln!(
            "warning: cache mount {:?} is in use by a running build: kept",
            kept.id
        );
    }
    let steps = prune_steps(args, &dir, ids.is_empty(), cutoff)?;
    let freed_bytes = removed.iter().map(|e| e.disk_bytes).sum();
    if args.json {
        let out = Pruned {
            removed,
            freed_bytes,
            removed_steps: steps.removed,
            step_bytes_before: steps.before,
            step_bytes_after: steps.after,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    for e in &removed {
        println!("removed {} ({})", e.id, human_bytes(e.disk_bytes));
    }
    for e in &steps.removed {
        let key = &e.key[..12.min(e.key.len())];
        println!("removed step {key} {}", e.description);
    }
    println!("total freed: {}", human_bytes(freed_bytes));
    println!(
        "step cache: {} before, {} after",
        human_bytes(steps.before),
        human_bytes(steps.after)
    );
    Ok(())
}

/// What pruning the step cache did.
struct StepsPruned {
    removed: Vec<StepRow>,
    before: u64,
    after: u64,
}

/// Prunes the step cache: entries last used before `cutoff`, then the least recently used
/// beyond `--keep-storage`; everything when no filter is given. `eligible`: no `--id`.
fn prune_steps(
    args: &PruneArgs,
    dir: &std::path::Path,
    eligible: bool,
    cutoff: Option<u64>,
) -> anyhow::Result<StepsPruned> {
    let store = Store::new(step_cache_dir(dir));
    let before = store.disk_usage().0;
    if !eligible {
        return Ok(StepsPruned {
            removed: Vec::new(),
            before,
            after: before,
        });
    }
    let keep = args.keep_storage;
    let removed = store
        .prune(|_, used, kept| match (cutoff.map(|c| used < c), keep) {
            (None, None) => true,
            (Some(old), None) => old,
            (None, Some(max)) => kept > max,
            (Some(old), Some(max)) => old || kept > max,
        })
        .with_context(|| format!("cannot prune the step cache in {}", store.dir().display()))?;
    let removed = removed
        .into_iter()
        .map(|e| StepRow {
            data_bytes: e.data_bytes(),
            key: e.key,
            description: e.description,
            created: e.created,
            last_used: 0,
        })
        .collect();
    Ok(StepsPruned {
        removed,
        before,
        after: store.disk_usage().0,
    })
}

/// Parses `until=DURATION` (Docker's prune filter).
fn parse_filter(text: &str) -> Result<Duration, String> {
    match text.split_once('=') {
        Some(("until", d)) => parse_duration(d),
        _ => Err(format!("unknown filter {text:?}: expected until=DURATION")),
    }
}

/// Parses a size: bytes, or a number with `K`, `M`, `G` or `T` (powers of 1024; a trailing
/// `B`, `iB` or lower case accepted): `500M`, `20G`, `1.5G`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    const EXPECTED: &str = "expected a size such as 500M, 20G or 1048576";
    let t = text.trim().to_ascii_uppercase();
    let t = t.trim_end_matches("IB").trim_end_matches('B');
    let (number, unit) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let shift = match unit {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("unknown unit in {text:?}: {EXPECTED}")),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("not a size: {text:?}: {EXPECTED}"))?;
    if !n.is_finite() || n < 0.0 {
        return Err(format!("not a size: {text:?}: {EXPECTED}"));
    }
    let bytes = n * (1u64 << shift) as f64;
    if bytes > u64::MAX as f64 {
        return Err(format!("size too large: {text:?}"));
    }
    Ok(bytes as u64)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `just now`, `1 minute ago`, `3 hours ago`, `12 days ago`.
fn age(secs: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (86_400, "day"),
        (3_600, "hour"),
        (60, "minute"),
        (1, "second"),
    ];
    if secs < 1 {
        return "just now".to_owned();
    }
    let (size, name) = UNITS
        .iter()
        .copied()
        .find(|(size, _)| secs >= *size)
        .unwrap_or((1, "second"));
    let n = secs / size;
    let plural = if n == 1 { "" } else { "s" };
    format!("{n} {name}{plural} ago")
}

/// Parses `30s`, `30m`, `24h`, `7d`, `2w` or a sum of them (`1h30m`).
fn parse_duration(text: &str) -> Result<Duration, String> {
    const EXPECTED: &str = "expected a number and a unit (s, m, h, d, w), e.g. 30m, 24h, 7d";
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(format!("empty duration: {EXPECTED}"));
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(EXPECTED.to_owned());
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("number too large: {EXPECTED}"))?;
        rest = &rest[digits..];
        let unit = rest.chars().next().ok_or_else(|| EXPECTED.to_owned())?;
        let secs = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(format!("unknown unit {unit:?}: {EXPECTED}")),
        };
        rest = &rest[unit.len_utf8()..];
        total = n
            .checked_mul(secs)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(|| "duration too large".to_owned())?;
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations() {
        let secs = |t: &str| parse_duration(t).unwrap().as_secs();
        assert_eq!(secs("30s"), 30);
        assert_eq!(secs("30m"), 1_800);
        assert_eq!(secs("24h"), 86_400);
        assert_eq!(secs("7d"), 604_800);
        assert_eq!(secs("2w"), 1_209_600);
        assert_eq!(secs("1h30m"), 5_400);
        assert_eq!(secs("0s"), 0);
    }

    #[test]
    fn bad_durations() {
        for bad in [
            "",
            "24",
            "h",
            "7x",
            "1.5h",
            "-1d",
            "1d2",
            "99999999999999999999s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert!(
            parse_duration("7x").unwrap_err().contains("unit 'x'"),
            "{:?}",
            parse_duration("7x")
        );
        assert_eq!(
            parse_duration("9999999999999999w").unwrap_err(),
            "duration too large"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0").unwrap(), 0);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("500M").unwrap(), 500 << 20);
        assert_eq!(parse_size("20GiB").unwrap(), 20 << 30);
        assert_eq!(parse_size("1.5g").unwrap(), 3 << 29);
        for bad in ["", "M", "5X", "-1G", "1e400"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_filter("until=24h").unwrap().as_secs(), 86_400);
        assert!(
            parse_filter("label=x")
                .unwrap_err()
                .contains("until=DURATION")
        );
    }

    #[test]
    fn ages() {
        assert_eq!(age(0), "just now");
        assert_eq!(age(1), "1 second ago");
        assert_eq!(age(59), "59 seconds ago");
        assert_eq!(age(60), "1 minute ago");
        assert_eq!(age(3 * 60 + 59), "3 minutes ago");
        assert_eq!(age(2 * 3_600), "2 hours ago");
        assert_eq!(age(12 * 86_400 + 5), "12 days ago");
    }
}
