//! Docker as the reference: every case under `tests/reference/` is built with `docker build`
//! (BuildKit, Debian's docker.io) and with firebuild (a real VM: QEMU microvm, TCG here) on the
//! same bases, and the results are compared: file trees (`docker export` against the ext4 image),
//! image configs (`docker image inspect` against the manifest) and, where a case says so, the RUN
//! steps' output. Any difference not listed as by design in [`compare::BY_DESIGN`] fails.
//!
//! The harness writes `target/reference/conformance.md` (the table of cases) and
//! `target/reference/timings.md` (side-by-side build times). docs/conformance.md must equal the
//! former: `FIREBUILD_BLESS=1` rewrites it. `FIREBUILD_REFERENCE_ONLY=a,b` runs only those cases
//! (and checks no document).
//!
//! Needs the static vminit, QEMU, e2fsprogs and a Docker engine (`bash scripts/test.sh` provides
//! them). Outside CI a missing one skips with the reason printed; under `CI` it fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cases;
mod compare;
mod docker;
mod tree;

#[path = "../support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use firebuild_build::{BuildOptions, BuildRequest, Builder, Event, GuestOptions, Phase};
use firebuild_rootfs::config::OciImageConfig;

use cases::Case;
use support::{base_layout, collector, repo};

/// Fails under CI, skips (reason printed) elsewhere.
fn unmet(why: &str) -> Option<Env> {
    assert!(std::env::var_os("CI").is_none(), "{why}");
    eprintln!("skipping: {why}");
    None
}

/// A base both sides build from: the OCI layout firebuild reads, the image Docker imported.
struct Base {
    layout: PathBuf,
    tag: String,
}

struct Env {
    vminit: PathBuf,
    debian: Base,
    busybox: Base,
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Imports a one-layer OCI layout into Docker with its config's Env and Cmd, as
/// `firebuild-ref/NAME:<layer digest prefix>`.
fn import(name: &str, layout: PathBuf) -> Base {
    let blob = |digest: &str| {
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let index = read_json(&layout.join("index.json"));
    let manifest = read_json(&blob(index["manifests"][0]["digest"].as_str().unwrap()));
    let layer_digest = manifest["layers"][0]["digest"].as_str().unwrap();
    let config_bytes = std::fs::read(blob(manifest["config"]["digest"].as_str().unwrap())).unwrap();
    let config = OciImageConfig::from_slice(&config_bytes, "base config")
        .unwrap()
        .config;
    let mut changes: Vec<String> = config
        .env
        .iter()
        .flatten()
        .map(|e| format!("ENV {e}"))
        .collect();
    if let Some(cmd) = &config.cmd {
        changes.push(format!("CMD {}", serde_json::to_string(cmd).unwrap()));
    }
    let changes: Vec<&str> = changes.iter().map(String::as_str).collect();
    let tag = format!("firebuild-ref/{name}:{}", &layer_digest[7..19]);
    docker::import(&blob(layer_digest), &tag, &changes);
    Base { layout, tag }
}

fn prerequisites() -> Option<Env> {
    let vminit = std::env::var_os("FIREBUILD_VMINIT")
        .map_or_else(|| repo().join("target/vminit/vminit"), PathBuf::from);
    let missing: Vec<&str> = ["qemu-system-x86_64", "debugfs", "mkfs.ext4"]
        .into_iter()
        .filter(|t| firebuild_vmm::which(t).is_none())
        .collect();
    if !missing.is_empty() {
        return unmet(&format!("missing {}", missing.join(", ")));
    }
    if !vminit.is_file() {
        return unmet(&format!("no static vminit at {}", vminit.display()));
    }
    if let Some(why) = docker::unavailable() {
        return unmet(&why);
    }
    let (debian, busybox) = match (
        base_layout("debian-base.sh"),
        base_layout("busybox-base.sh"),
    ) {
        (Ok(d), Ok(b)) => (d, b),
        (Err(why), _) | (_, Err(why)) => return unmet(&why),
    };
    Some(Env {
        vminit,
        debian: import("debian", debian),
        busybox: import("busybox", busybox),
    })
}

/// What firebuild made of a case.
struct FirebuildBuilt {
    elapsed: Duration,
    steps: Duration,
    image: PathBuf,
    config: firebuild_plan::ImageConfig,
    run_output: Vec<Vec<String>>,
}

/// Each RUN step's output lines, in step order.
fn run_output(events: &[Event]) -> Vec<Vec<String>> {
    let mut steps: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for event in events {
        match event {
            Event::StepStarted {
                number,
                instruction,
                ..
            } if is_run(instruction) => {
                steps.insert(*number, Vec::new());
            }
            Event::Output { number, line, .. } => {
                if let Some(lines) = steps.get_mut(number) {
                    lines.push(line.clone());
                }
            }
            _ => {}
        }
    }
    steps.into_values().collect()
}

/// A RUN, or a RUN an ONBUILD trigger runs (its text is the ONBUILD line).
fn is_run(instruction: &str) -> bool {
    let upper = instruction.to_ascii_uppercase();
    upper.starts_with("RUN ") || upper.starts_with("ONBUILD RUN ")
}

fn firebuild_build(
    builder: &Builder,
    rt: &tokio::runtime::Runtime,
    case: &Case,
    args: &[(String, String)],
    out_dir: &Path,
) -> Result<FirebuildBuilt, String> {
    let mut req = BuildRequest::new(&case.dir, &case.name, out_dir);
    req.build_args = args.to_vec();
    let (sink, seen) = collector();
    let started = Instant::now();
    let built = rt.block_on(builder.build(&req, sink));
    let elapsed = started.elapsed();
    let events = seen.lock().unwrap().clone();
    let built = built.map_err(|e| {
        let output: Vec<String> = run_output(&events).concat();
        format!(
            "{}\noutput:\n{}",
            firebuild_dockerfile::error::chain(&e),
            output.join("\n")
        )
    })?;
    let steps = events
        .iter()
        .find_map(|e| match e {
            Event::PhaseFinished {
                phase: Phase::Steps,
                elapsed,
            } => Some(*elapsed),
            _ => None,
        })
        .unwrap_or_default();
    Ok(FirebuildBuilt {
        elapsed,
        steps,
        image: built.image,
        config: built.manifest.image,
        run_output: run_output(&events),
    })
}

/// One case's result.
struct Outcome {
    name: String,
    pins: String,
    base: &'static str,
    /// Differences that are not by design (empty: identical).
    diffs: Vec<String>,
    docker: Option<Duration>,
    firebuild: Option<(Duration, Duration)>,
    reference: Option<(String, String)>,
    /// Hardlink groups not compared, and why.
    by_design_hardlinks: Option<String>,
    /// Why firebuild does not build it yet, and the error it gave.
    pending: Option<String>,
}

fn args_for(case: &Case, env: &Env, docker: bool) -> Vec<(String, String)> {
    let mut args = case.build_args.clone();
    let name = |b: &Base| {
        if docker {
            b.tag.clone()
        } else {
            format!("oci:{}", b.layout.display())
        }
    };
    if case.uses_debian {
        args.push(("BASE".into(), name(&env.debian)));
    }
    if case.uses_busybox {
        args.push(("BUSYBOX".into(), name(&env.busybox)));
    }
    args
}

fn run_case(env: &Env, builder: &Builder, rt: &tokio::runtime::Runtime, case: &Case) -> Outcome {
    let base = match (case.uses_debian, case.uses_busybox) {
        (true, _) => "debian-12",
        (_, true) => "busybox",
        _ => "scratch",
    };
    let mut outcome = Outcome {
        name: case.name.clone(),
        pins: case.pins.clone(),
        base,
        diffs: Vec::new(),
        docker: None,
        firebuild: None,
        reference: case.reference.clone(),
        by_design_hardlinks: case.by_design_hardlinks.clone(),
        pending: None,
    };
    let tag = format!("firebuild-ref/case-{}", case.name);
    let docker_built = docker::build(
        &case.dir,
        case.docker_dockerfile(),
        &args_for(case, env, true),
        &tag,
    );
    let scratch = tempfile::tempdir().unwrap();
    let fb = firebuild_build(
        builder,
        rt,
        case,
        &args_for(case, env, false),
        scratch.path(),
    );
    match (&docker_built, &fb, &case.pending) {
        (Err(log), _, _) => outcome.diffs.push(format!("docker build failed:\n{log}")),
        (Ok(_), Err(e), Some(why)) => {
            eprintln!(
                "{}: pending; firebuild says: {}",
                case.name,
                e.lines().next().unwrap_or_default()
            );
            outcome.pending = Some(why.clone());
        }
        (Ok(_), Ok(_), Some(_)) => outcome
            .diffs
            .push("firebuild builds this case now: remove its `# pending:` line".to_owned()),
        (_, Err(e), None) => outcome.diffs.push(format!("firebuild build failed: {e}")),
        (Ok(d), Ok(f), None) => {
            let (mut d_tree, d_config) = docker::contents(&tag);
            let mut f_tree = tree::from_ext4(&f.image, scratch.path());
            if case.by_design_hardlinks.is_some() {
                for node in d_tree.values_mut().chain(f_tree.values_mut()) {
                    node.hardlink_group = None;
                }
            }
            outcome.diffs.extend(compare::trees(&d_tree, &f_tree));
            outcome.diffs.extend(compare::configs(&d_config, &f.config));
            if case.compare_output {
                outcome
                    .diffs
                    .extend(compare::outputs(&d.run_output, &f.run_output));
            }
        }
    }
    outcome.docker = docker_built.as_ref().ok().map(|d| d.elapsed);
    outcome.firebuild = fb.as_ref().ok().map(|f| (f.elapsed, f.steps));
    docker::remove(&tag);
    outcome
}

fn secs(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64())
}

/// docs/conformance.md: the by-design differences and the table of cases.
fn conformance_md(outcomes: &[Outcome]) -> String {
    let mut md = String::from(
        "# Conformance with `docker build`\n\n\
         Generated by the differential harness (`crates/build/tests/reference/main.rs`; \
         `FIREBUILD_BLESS=1 cargo test -p firebuild-build --test reference` rewrites it). Each \
         case under `tests/reference/` is built with Docker's engine (Debian's docker.io 20.10, \
         BuildKit) and with firebuild in a VM, on the same bases (the mmdebstrap Debian 12 \
         tarball imported with `docker import` and read by firebuild as an OCI layout; a static \
         busybox base made the same way). Compared: the file trees (`docker create` + `docker \
         export` against the ext4 image: paths, types, modes, owners, symlink targets, \
         hardlinks, content digests, xattrs), the image config (`docker image inspect` against \
         the manifest: Env, Cmd, Entrypoint, WorkingDir, User, ExposedPorts, Labels, Volumes, \
         StopSignal, Healthcheck, Shell, OnBuild) and, where the case says so, the RUN steps' \
         output. Any other difference fails the test.\n\n\
         ## Differences by design\n\n\
         - Timestamps are not compared: neither builder makes them reproducible by default.\n",
    );
    // One line per reason, naming every path it covers.
    let mut lines: Vec<(&str, &str, Vec<String>)> = Vec::new();
    for rule in compare::BY_DESIGN {
        let side = match rule.allowed {
            compare::Allowed::Container => "not compared",
            compare::Allowed::OnlyInDocker => "only in Docker's export",
            compare::Allowed::OnlyInFirebuild => "only in firebuild's image",
        };
        let path = format!("`{}`", rule.path);
        match lines
            .iter_mut()
            .find(|(s, w, _)| *s == side && *w == rule.why)
        {
            Some((_, _, paths)) => paths.push(path),
            None => lines.push((side, rule.why, vec![path])),
        }
    }
    for (side, why, paths) in lines {
        let _ = writeln!(md, "- {} {side}: {why}.", paths.join(", "));
    }
    md += "\n## Cases\n\n| case | base | pins | result |\n|---|---|---|---|\n";
    for o in outcomes {
        let mut result = match (&o.diffs.is_empty(), &o.reference, &o.pending) {
            (false, _, _) => format!("**differs** ({} differences)", o.diffs.len()),
            (true, _, Some(why)) => format!("not built by firebuild yet: {why}"),
            (true, None, None) => "identical".to_owned(),
            (true, Some((file, why)), None) => {
                format!("identical to Docker's build of `{file}`: {why}")
            }
        };
        if let (true, Some(why)) = (o.diffs.is_empty(), &o.by_design_hardlinks) {
            let _ = write!(result, "; hardlink groups differ by design: {why}");
        }
        let _ = writeln!(md, "| `{}` | {} | {} | {result} |", o.name, o.base, o.pins);
    }
    md
}

/// benches/README.md's table: each case's build time on both sides.
fn timings_md(outcomes: &[Outcome]) -> String {
    let mut md = String::from(
        "| case | docker build --no-cache (s) | firebuild (s) | of which steps (s) | \
         of which boot and image (s) | ratio |\n|---|---|---|---|---|---|\n",
    );
    let (mut d_total, mut f_total) = (Duration::ZERO, Duration::ZERO);
    for o in outcomes {
        let (Some(d), Some((f, steps))) = (o.docker, o.firebuild) else {
            continue;
        };
        d_total += d;
        f_total += f;
        let _ = writeln!(
            md,
            "| `{}` | {} | {} | {} | {} | {:.1}x |",
            o.name,
            secs(d),
            secs(f),
            secs(steps),
            secs(f.saturating_sub(steps)),
            f.as_secs_f64() / d.as_secs_f64()
        );
    }
    let _ = writeln!(
        md,
        "| **all** | {} | {} | | | {:.1}x |",
        secs(d_total),
        secs(f_total),
        f_total.as_secs_f64() / d_total.as_secs_f64().max(0.001)
    );
    md
}

/// Writes the reports; checks docs/conformance.md against the table unless only some cases ran.
fn report(outcomes: &[Outcome], all_cases: bool) {
    let dir = repo().join("target/reference");
    std::fs::create_dir_all(&dir).unwrap();
    let conformance = conformance_md(outcomes);
    std::fs::write(dir.join("conformance.md"), &conformance).unwrap();
    std::fs::write(dir.join("timings.md"), timings_md(outcomes)).unwrap();
    eprintln!("{}", timings_md(outcomes));
    if !all_cases {
        return;
    }
    let doc = repo().join("docs/conformance.md");
    if std::env::var_os("FIREBUILD_BLESS").is_some() {
        std::fs::write(&doc, &conformance).unwrap();
    }
    let current = std::fs::read_to_string(&doc).unwrap_or_default();
    assert!(
        current == conformance,
        "docs/conformance.md is not what the harness found (see target/reference/conformance.md); \
         `FIREBUILD_BLESS=1 cargo test -p firebuild-build --test reference` rewrites it"
    );
}

/// Cases run at once: `FIREBUILD_REFERENCE_JOBS`, default 2 (the VMs and Docker overlap on two
/// cores); `benches/reference.sh` runs them one at a time for its timings.
fn jobs() -> usize {
    std::env::var("FIREBUILD_REFERENCE_JOBS")
        .ok()
        .and_then(|j| j.parse().ok())
        .unwrap_or(2)
        .max(1)
}

/// Runs the cases on `jobs` workers, each with its own builder (and layer cache) and runtime.
fn run_all(env: &Env, guest: &GuestOptions, cases: &[&Case], jobs: usize) -> Vec<Outcome> {
    let next = AtomicUsize::new(0);
    let outcomes = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                let layers = tempfile::tempdir().unwrap();
                let builder = Builder::new(BuildOptions::new(guest.clone(), layers.path()));
                let rt = tokio::runtime::Runtime::new().unwrap();
                while let Some(case) = cases.get(next.fetch_add(1, Ordering::SeqCst)) {
                    let started = Instant::now();
                    let outcome = run_case(env, &builder, &rt, case);
                    let verdict = match (outcome.diffs.is_empty(), &outcome.pending) {
                        (false, _) => "DIFFERS",
                        (true, Some(_)) => "pending (firebuild refuses it, Docker builds it)",
                        (true, None) => "identical",
                    };
                    let mut line =
                        format!("{}: {verdict} in {} s", case.name, secs(started.elapsed()));
                    for diff in &outcome.diffs {
                        let _ = write!(line, "\n    {diff}");
                    }
                    eprintln!("{line}");
                    outcomes.lock().unwrap().push(outcome);
                }
            });
        }
    });
    outcomes.into_inner().unwrap()
}

#[test]
fn firebuild_builds_what_docker_builds() {
    let Some(env) = prerequisites() else { return };
    let all = cases::load(&repo().join("tests/reference"));
    assert!(all.len() >= 25, "the corpus has only {} cases", all.len());
    let only = std::env::var("FIREBUILD_REFERENCE_ONLY")
        .ok()
        .filter(|o| !o.is_empty());
    let selected: Vec<&Case> = all
        .iter()
        .filter(|c| {
            only.as_ref()
                .is_none_or(|o| o.split(',').any(|n| n == c.name))
        })
        .collect();
    let guest = GuestOptions::new(
        &env.vminit,
        firebuild_vmm::kernel::default_cache_dir().unwrap(),
    );
    // The networked, CPU-heavy case (apt) runs alone first: beside another VM on two cores it
    // is slow enough under TCG to make the run's timing noisy for both.
    let (alone, rest): (Vec<&Case>, Vec<&Case>) = selected.iter().partition(|c| {
        std::fs::read_to_string(c.dir.join("Dockerfile")).is_ok_and(|d| d.contains("apt-get"))
    });
    let mut outcomes = run_all(&env, &guest, &alone, 1);
    outcomes.extend(run_all(&env, &guest, &rest, jobs()));
    outcomes.sort_by(|a, b| a.name.cmp(&b.name));
    report(&outcomes, only.is_none());
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.diffs.is_empty())
        .map(|o| format!("{}:\n    {}", o.name, o.diffs.join("\n    ")))
        .collect();
    assert!(
        failed.is_empty(),
        "differences from docker build:\n{}",
        failed.join("\n")
    );
}
