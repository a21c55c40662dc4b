//! The reference side: Debian's Docker engine (20.10) building with BuildKit, driven through its
//! CLI (`/usr/bin/docker`; the newer client in /usr/local/bin wants a buildx plugin).

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use firebuild_rootfs::config::OciRunConfig;

use super::tree::{self, Tree};

const DOCKER: &str = "/usr/bin/docker";

fn docker(args: &[&str]) -> Output {
    Command::new(DOCKER)
        .args(args)
        .env("DOCKER_BUILDKIT", "1")
        .output()
        .unwrap_or_else(|e| panic!("running {DOCKER}: {e}"))
}

fn checked(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Why the engine cannot be used, if it cannot.
pub fn unavailable() -> Option<String> {
    if !Path::new(DOCKER).is_file() {
        return Some(format!("no {DOCKER} (Debian's docker.io)"));
    }
    let out = docker(&["info", "--format", "{{.ServerVersion}}"]);
    (!out.status.success()).then(|| {
        format!(
            "the Docker engine does not answer ({}); `bash scripts/docker-engine.sh start` starts one",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

/// Imports an uncompressed layer tar as image `tag` with `changes` (Dockerfile instructions for
/// its config), unless an image of that tag exists. The tag names the layer's digest, so a
/// changed base is a new tag.
pub fn import(layer: &Path, tag: &str, changes: &[&str]) {
    if docker(&["image", "inspect", tag]).status.success() {
        return;
    }
    let layer = layer.to_str().unwrap();
    let mut args = vec!["import"];
    for change in changes {
        args.extend(["--change", change]);
    }
    args.extend([layer, tag]);
    checked(&args);
}

/// What `docker build` made of a case.
pub struct Built {
    pub elapsed: Duration,
    /// Each RUN step's output lines, in step order.
    pub run_output: Vec<Vec<String>>,
}

/// `docker build --no-cache` of `dockerfile` in `context`, tagged `tag`; the build log on failure.
pub fn build(
    context: &Path,
    dockerfile: &str,
    args: &[(String, String)],
    tag: &str,
) -> Result<Built, String> {
    let dockerfile = context.join(dockerfile);
    let mut cmd = Command::new(DOCKER);
    cmd.env("DOCKER_BUILDKIT", "1")
        .args(["build", "--no-cache", "--progress=plain", "-t", tag, "-f"])
        .arg(&dockerfile);
    for (k, v) in args {
        cmd.arg("--build-arg").arg(format!("{k}={v}"));
    }
    cmd.arg(context).stdin(Stdio::null());
    let started = Instant::now();
    let out = cmd.output().unwrap();
    let elapsed = started.elapsed();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(log);
    }
    Ok(Built {
        elapsed,
        run_output: run_output(&log),
    })
}

/// The RUN steps' output in a `--progress=plain` log: `#7 [2/3] RUN ...` opens a step, `#7 0.312
/// text` is one line of its output.
pub fn run_output(log: &str) -> Vec<Vec<String>> {
    let mut steps: Vec<(String, Vec<String>)> = Vec::new();
    for line in log.lines() {
        let Some((id, rest)) = line.strip_prefix('#').and_then(|l| l.split_once(' ')) else {
            continue;
        };
        if rest.starts_with('[') && rest.contains("] RUN ") {
            if !steps.iter().any(|(s, _)| s == id) {
                steps.push((id.to_owned(), Vec::new()));
            }
            continue;
        }
        let (stamp, text) = rest.split_once(' ').unwrap_or((rest, ""));
        if stamp.parse::<f64>().is_err() {
            continue;
        }
        if let Some((_, lines)) = steps.iter_mut().find(|(s, _)| s == id) {
            lines.push(text.to_owned());
        }
    }
    steps.into_iter().map(|(_, lines)| lines).collect()
}

/// The image's file tree as a container made from it shows it (`docker create` + `docker
/// export`), and its config (`docker image inspect`). The export is tried three times: under
/// load the engine has been seen to fail one (its message is kept for the panic).
pub fn contents(tag: &str) -> (Tree, OciRunConfig) {
    let mut failures = Vec::new();
    let tree = loop {
        match export(tag) {
            Ok(tree) => break tree,
            Err(e) if failures.len() < 2 => failures.push(e),
            Err(e) => panic!("docker export of {tag}: {}; {e}", failures.join("; ")),
        }
    };
    let json = checked(&["image", "inspect", "--format", "{{json .Config}}", tag]);
    let config = serde_json::from_str(&json).unwrap();
    (tree, config)
}

fn export(tag: &str) -> Result<Tree, String> {
    // The command is never run; an image without CMD needs one to be created.
    let id = checked(&["create", tag, "/firebuild-reference-placeholder"]);
    // Read whole (a Debian image is ~120 MiB) so a failed export is seen before it is parsed.
    let out = docker(&["export", &id]);
    docker(&["rm", "-f", &id]);
    if out.status.success() {
        Ok(tree::from_tar(out.stdout.as_slice()))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// Removes a case's image.
pub fn remove(tag: &str) {
    docker(&["rmi", "-f", tag]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_progress_output_is_split_by_run_step() {
        let log = "#1 [internal] load build definition from Dockerfile\n\
                   #1 DONE 0.0s\n\
                   #5 [2/3] RUN echo a\n\
                   #5 0.301 a\n\
                   #5 0.302  indented\n\
                   #5 DONE 0.3s\n\
                   #6 [3/3] RUN true\n\
                   #6 DONE 0.1s\n";
        assert_eq!(
            run_output(log),
            vec![vec!["a".to_owned(), " indented".to_owned()], vec![]]
        );
    }
}
