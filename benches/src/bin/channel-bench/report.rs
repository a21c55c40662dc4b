//! What each bench process reports: bytes moved, wall time and its own peak RSS.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;

/// Peak resident set size of this process in KiB (`VmHWM` of `/proc/self/status`), if readable.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix("VmHWM:")?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// Appends one JSON line `{"role", "bytes", "secs", "peak_rss_kib", ...extra}` to `path`.
pub fn append(
    path: Option<&Path>,
    role: &str,
    bytes: u64,
    elapsed: Duration,
    extra: &[(&str, serde_json::Value)],
) -> anyhow::Result<()> {
    let mut obj = serde_json::Map::new();
    obj.insert("role".into(), role.into());
    obj.insert("bytes".into(), bytes.into());
    obj.insert("secs".into(), elapsed.as_secs_f64().into());
    obj.insert("peak_rss_kib".into(), peak_rss_kib().into());
    for (k, v) in extra {
        obj.insert((*k).into(), v.clone());
    }
    let line = serde_json::Value::Object(obj).to_string();
    match path {
        Some(path) => {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening report {}", path.display()))?;
            writeln!(file, "{line}").with_context(|| format!("writing {}", path.display()))?;
        }
        None => eprintln!("{line}"),
    }
    Ok(())
}

/// Writes the bound port to `path` atomically (write to a temp name, then rename), so a script
/// polling for the file never reads a half-written number.
pub fn publish_port(path: &Path, port: u16) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{port}\n"))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_peak_rss() {
        let kib = peak_rss_kib().unwrap();
        assert!(kib > 0);
    }

    #[test]
    fn report_line_is_json_with_role_and_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        append(
            Some(&path),
            "x",
            42,
            Duration::from_millis(5),
            &[("k", 1.into())],
        )
        .unwrap();
        append(Some(&path), "y", 1, Duration::ZERO, &[]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["role"], "x");
        assert_eq!(lines[0]["bytes"], 42);
        assert_eq!(lines[0]["k"], 1);
        assert_eq!(lines[1]["role"], "y");
    }
}
