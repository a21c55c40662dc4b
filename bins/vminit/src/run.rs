//! Run mode: the image's workload as a child of vminit, with its user, env and workdir.
//!
//! The workload comes from the metadata (`entrypoint`, `cmd`, `env`, `workdir`, `user`) over the
//! image config (a [`firebuild_plan::ImageConfig`] as JSON: the image's ENTRYPOINT, CMD, ENV,
//! WORKDIR, USER and SHELL): the file named by `VMINIT_IMAGE_CONFIG` (PID 1's copy of the
//! initramfs's `/firebuild/image.json`), else the manifest in the image at
//! `/etc/firebuild/image.json`. Docker's rules: a metadata `entrypoint` resets the image's `cmd`; a shell-form
//! ENTRYPOINT ignores CMD; metadata `env` overrides the image's variables one by one.

use std::path::Path;

use anyhow::Context as _;
use firebuild_guest::passwd::UserDb;
use firebuild_guest::step::{self, RunRequest, Stream};
use firebuild_mmds::schema::Metadata;
use firebuild_plan::{Command, ImageConfig};

/// Where the image manifest is baked in the image.
pub const MANIFEST: &str = "etc/firebuild/image.json";
const MAX_MANIFEST: u64 = 1 << 20;

/// What run mode executes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: String,
    pub user: Option<String>,
}

/// The image config: `given` (a path outside the root) when it can be read, else the manifest
/// under `root`.
fn image_config(root: &Path, given: Option<&Path>) -> anyhow::Result<Option<ImageConfig>> {
    if let Some(path) = given {
        match read_config(path) {
            Ok(Some(config)) => return Ok(Some(config)),
            Ok(None) => tracing::warn!("image config {} is gone", path.display()),
            Err(e) => tracing::warn!("ignoring the image config: {e:#}"),
        }
    }
    read_config(&root.join(MANIFEST))
}

fn read_config(path: &Path) -> anyhow::Result<Option<ImageConfig>> {
    let Some(bytes) = firebuild_guest::paths::read_bounded(path, MAX_MANIFEST)
        .with_context(|| format!("reading {}", path.display()))?
    else {
        return Ok(None);
    };
    Ok(Some(
        serde_json::from_slice(&bytes).with_context(|| format!("decoding {}", path.display()))?,
    ))
}

/// The workload for this guest, `None` when neither metadata nor image config names one;
/// `image_config` is the file PID 1 handed over (see [`image_config`]).
pub fn workload(
    root: &Path,
    md: Option<&Metadata>,
    image_config: Option<&Path>,
) -> anyhow::Result<Option<Workload>> {
    let image = self::image_config(root, image_config)?.unwrap_or_default();
    let shell = image
        .shell
        .clone()
        .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()]);
    let md_entry = md.and_then(|m| m.entrypoint.clone());
    let md_cmd = md.and_then(|m| m.cmd.clone());
    let mut argv = match (&md_entry, &image.entrypoint) {
        (Some(e), _) => e.clone(),
        (None, Some(e)) => e.argv(&shell),
        (None, None) => Vec::new(),
    };
    let shell_entry = md_entry.is_none() && matches!(image.entrypoint, Some(Command::Shell(_)));
    if !shell_entry {
        match (&md_cmd, &image.cmd, &md_entry) {
            (Some(c), _, _) => argv.extend(c.iter().cloned()),
            (None, Some(c), None) => argv.extend(c.argv(&shell)),
            _ => {}
        }
    }
    if argv.is_empty() {
        return Ok(None);
    }
    let mut env: Vec<(String, String)> = image
        .env
        .iter()
        .map(|v| (v.name.clone(), v.value.clone()))
        .collect();
    if let Some(m) = md {
        for (k, v) in &m.env {
            env.retain(|(name, _)| name != k);
            env.push((k.clone(), v.clone()));
        }
    }
    Ok(Some(Workload {
        argv,
        env,
        workdir: md
            .and_then(|m| m.workdir.clone())
            .or(image.workdir)
            .unwrap_or_else(|| "/".into()),
        user: md.and_then(|m| m.user.clone()).or(image.user),
    }))
}

/// Runs the workload and returns its exit status (128 + signal when killed). Under `/` it
/// inherits the console and receives SIGTERM/SIGINT forwarded; under another root it runs
/// chrooted through the step runner, its lines copied to vminit's stdout/stderr.
pub async fn exec(root: &Path, w: &Workload) -> anyhow::Result<u8> {
    tracing::info!(argv = ?w.argv, user = w.user.as_deref().unwrap_or("root"), workdir = %w.workdir, "run mode: starting the workload");
    if firebuild_guest::paths::is_real_root(root) {
        return exec_direct(root, w).await;
    }
    let req = RunRequest {
        argv: w.argv.clone(),
        env: w.env.clone(),
        workdir: w.workdir.clone(),
        user: w.user.clone(),
        script: None,
    };
    let exit = step::run(root, &req, |stream, line| {
        use std::io::Write as _;
        let _ = match stream {
            Stream::Stdout => std::io::stdout().write_all(&[line, b"\n"].concat()),
            Stream::Stderr => std::io::stderr().write_all(&[line, b"\n"].concat()),
        };
    })
    .await
    .context("running the workload")?;
    tracing::info!("workload exited with {}", exit.code());
    Ok(u8::try_from(exit.code()).unwrap_or(1))
}

async fn exec_direct(root: &Path, w: &Workload) -> anyhow::Result<u8> {
    use tokio::signal::unix::{SignalKind, signal};
    let db = UserDb::load(root).context("reading the guest's users")?;
    let id = db
        .resolve(w.user.as_deref().unwrap_or(""))
        .context("resolving the workload's user")?;
    let mut cmd = tokio::process::Command::new(&w.argv[0]);
    cmd.args(&w.argv[1..])
        .env_clear()
        .env("PATH", step::DEFAULT_PATH)
        .env("HOME", &id.home)
        .envs(w.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&w.workdir)
        // std drops the supplementary groups when it changes the uid as root.
        .uid(id.uid)
        .gid(id.gid);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", w.argv[0]))?;
    let pid = child
        .id()
        .and_then(|p| rustix::process::Pid::from_raw(i32::try_from(p).ok()?));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let status = loop {
        tokio::select! {
            s = child.wait() => break s?,
            _ = term.recv() => forward(pid, rustix::process::Signal::TERM),
            _ = int.recv() => forward(pid, rustix::process::Signal::INT),
        }
    };
    use std::os::unix::process::ExitStatusExt as _;
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    tracing::info!("workload exited with {code}");
    Ok(u8::try_from(code).unwrap_or(1))
}

fn forward(pid: Option<rustix::process::Pid>, sig: rustix::process::Signal) {
    if let Some(pid) = pid {
        tracing::info!("forwarding {sig:?} to the workload");
        let _ = rustix::process::kill_process(pid, sig);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn root_with(manifest: &str) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc/firebuild")).unwrap();
        std::fs::write(root.path().join(MANIFEST), manifest).unwrap();
        root
    }

    #[test]
    fn docker_rules_for_entrypoint_and_cmd() {
        let root = root_with(
            r#"{"entrypoint":{"form":"exec","value":["/app"]},"cmd":{"form":"exec","value":["--serve"]},"env":[{"name":"A","value":"1"},{"name":"B","value":"2"}],"workdir":"/srv","user":"app"}"#,
        );
        let w = workload(root.path(), None, None).unwrap().unwrap();
        assert_eq!(w.argv, ["/app", "--serve"]);
        assert_eq!(w.workdir, "/srv");
        assert_eq!(w.user.as_deref(), Some("app"));
        let md = Metadata::from_json_slice(br#"{"cmd":["--check"],"env":{"B":"3"},"user":"root"}"#)
            .unwrap();
        let w = workload(root.path(), Some(&md), None).unwrap().unwrap();
        assert_eq!(w.argv, ["/app", "--check"]);
        assert_eq!(w.env, [("A".into(), "1".into()), ("B".into(), "3".into())]);
        assert_eq!(w.user.as_deref(), Some("root"));
        // A metadata entrypoint resets the image's cmd.
        let md = Metadata::from_json_slice(br#"{"entrypoint":["/bin/true"]}"#).unwrap();
        assert_eq!(
            workload(root.path(), Some(&md), None)
                .unwrap()
                .unwrap()
                .argv,
            ["/bin/true"]
        );
    }

    #[test]
    fn shell_forms_and_nothing_to_run() {
        let root = root_with(
            r#"{"entrypoint":{"form":"shell","value":"exec app"},"cmd":{"form":"exec","value":["ignored"]}}"#,
        );
        assert_eq!(
            workload(root.path(), None, None).unwrap().unwrap().argv,
            ["/bin/sh", "-c", "exec app"]
        );
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(workload(empty.path(), None, None).unwrap(), None);
    }

    #[test]
    fn the_handed_over_image_config_wins_over_the_image_manifest() {
        let root = root_with(r#"{"cmd":{"form":"exec","value":["/from-image"]}}"#);
        let given = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            given.path(),
            r#"{"cmd":{"form":"exec","value":["/from-initramfs"]},"user":"app","workdir":"/w"}"#,
        )
        .unwrap();
        let w = workload(root.path(), None, Some(given.path()))
            .unwrap()
            .unwrap();
        assert_eq!(
            (w.argv[0].as_str(), w.user.as_deref()),
            ("/from-initramfs", Some("app"))
        );
        assert_eq!(w.workdir, "/w");
        // Unreadable or gone: the image's manifest.
        let gone = root.path().join("nope.json");
        let w = workload(root.path(), None, Some(&gone)).unwrap().unwrap();
        assert_eq!(w.argv, ["/from-image"]);
        std::fs::write(given.path(), "not json").unwrap();
        let w = workload(root.path(), None, Some(given.path()))
            .unwrap()
            .unwrap();
        assert_eq!(w.argv, ["/from-image"]);
    }
}
