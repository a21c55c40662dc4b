//! `firebuild-host cache`: lists and prunes the `RUN --mount=type=cache` directories kept on
//! the host ([`firebuild_build::cache_mounts`]).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use firebuild_build::cache_mounts::{self, CacheEntry};
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
    /// List the cache mounts: id, size on disk, last use (most recent first).
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Remove cache mounts not in use by a running build: all of them, or those the filters
    /// select (`--id` and `--older-than` together: both must match).
    Prune(PruneArgs),
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
    /// since the Unix epoch).
    #[arg(long)]
    json: bool,
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
    /// Print JSON: `{removed: [{id, file, disk_bytes, last_used}], freed_bytes}`.
    #[arg(long)]
    json: bool,
}

/// What `prune --json` prints.
#[derive(Debug, Serialize)]
struct Pruned {
    removed: Vec<CacheEntry>,
    freed_bytes: u64,
}

/// Runs the subcommand.
pub fn run(args: &CacheArgs) -> anyhow::Result<()> {
    match &args.command {
        CacheCmd::Ls(a) => ls(a),
        CacheCmd::Prune(a) => prune(a),
    }
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
    Ok(())
}

fn prune(args: &PruneArgs) -> anyhow::Result<()> {
    let dir = args.cache.dir();
    let ids: BTreeSet<&str> = args.ids.iter().map(String::as_str).collect();
    let cutoff = args.older_than.map(|d| now().saturating_sub(d.as_secs()));
    let selected = |e: &CacheEntry| {
        (ids.is_empty() || ids.contains(e.id.as_str())) && cutoff.is_none_or(|c| e.last_used < c)
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
    let freed_bytes = removed.iter().map(|e| e.disk_bytes).sum();
    if args.json {
        let out = Pruned {
            removed,
            freed_bytes,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    for e in &removed {
        println!("removed {} ({})", e.id, human_bytes(e.disk_bytes));
    }
    println!("total freed: {}", human_bytes(freed_bytes));
    Ok(())
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
