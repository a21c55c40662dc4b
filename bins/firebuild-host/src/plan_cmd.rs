//! `firebuild-host plan`: resolve a Dockerfile and its context into a build plan and print it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Args;
use firebuild_build::BuildRequest;
use firebuild_build::plan::Bases;
use firebuild_plan::{BuildPlan, Command, Source, StepKind};

/// The Dockerfile, its context, build args and target: what `plan` and `build` share.
#[derive(Debug, Args)]
pub struct DockerfileArgs {
    /// The Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file", value_name = "DOCKERFILE")]
    pub file: Option<PathBuf>,
    /// A build arg, `NAME=VALUE` (repeatable; `NAME` alone takes the value from the
    /// environment, as docker does).
    #[arg(long = "build-arg", value_name = "NAME=VALUE")]
    pub build_args: Vec<String>,
    /// The stage to build (default: the last).
    #[arg(long)]
    pub target: Option<String>,
    /// The build context directory.
    #[arg(value_name = "CONTEXT")]
    pub context: PathBuf,
}

impl DockerfileArgs {
    /// The library's request: this Dockerfile and context, outputs `name` in `out`.
    pub fn request(&self, name: &str, out: &Path) -> anyhow::Result<BuildRequest> {
        let mut req = BuildRequest::new(&self.context, name, out);
        req.dockerfile = self.file.clone();
        req.build_args = build_args(&self.build_args)?;
        req.target = self.target.clone();
        Ok(req)
    }
}

/// Arguments of `firebuild-host plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Print the plan as JSON (pretty) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Layer cache directory, where base configs are cached by digest.
    #[arg(long)]
    pub cache: Option<PathBuf>,
    #[command(flatten)]
    pub registry: crate::registry_args::RegistryArgs,
    #[command(flatten)]
    pub input: DockerfileArgs,
}

/// Parses `--build-arg` values.
fn build_args(raw: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::with_capacity(raw.len());
    for arg in raw {
        match arg.split_once('=') {
            Some(("", _)) => bail!("invalid --build-arg {arg:?}: empty name"),
            Some((k, v)) => out.push((k.to_owned(), v.to_owned())),
            None => {
                // Docker takes a bare name's value from the environment, and skips it if unset.
                if let Ok(v) = std::env::var(arg) {
                    out.push((arg.clone(), v));
                }
            }
        }
    }
    Ok(out)
}

/// Runs the subcommand: prints the plan to stdout and warnings to stderr. The base images'
/// configs (manifests and configs, not layers) are fetched first, so the plan shows the
/// effective ENV, WORKDIR and USER; a base that cannot be fetched is a warning (offline use).
pub fn run(args: &PlanArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let req = args.input.request("plan", Path::new("."))?;
    let pull = args.registry.pull_options(
        args.cache
            .clone()
            .unwrap_or_else(crate::rootfs_cmd::default_cache),
    )?;
    let plan = rt
        .block_on(firebuild_build::plan::resolve(
            &req,
            &pull,
            Bases::BestEffort,
        ))?
        .plan;
    for w in &plan.warnings {
        eprintln!("warning: {w}");
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        print!("{}", table(&plan));
    }
    Ok(())
}

/// One-line summary of what a step does.
fn summary(step: &firebuild_plan::Step) -> String {
    match &step.kind {
        StepKind::Workdir => step.context.workdir.clone(),
        StepKind::Run(run) => match &run.command {
            Command::Shell(s) => s.clone(),
            Command::Exec(argv) => format!("{argv:?}"),
        },
        StepKind::Copy(t) | StepKind::Add(t) => {
            let mut files = 0usize;
            let sources: Vec<String> = t
                .sources
                .iter()
                .map(|s| match s {
                    Source::Path { pattern, resources } => {
                        files += resources.len();
                        pattern.clone()
                    }
                    Source::Url { url, .. } => url.clone(),
                    Source::Heredoc { heredoc } => format!("<<{}", heredoc.name),
                })
                .collect();
            let from = match &t.origin {
                firebuild_plan::Origin::Context => String::new(),
                firebuild_plan::Origin::Stage { index } => format!("--from=stage {index} "),
                firebuild_plan::Origin::Image { reference } => format!("--from={reference} "),
            };
            let count = if files > 0 {
                format!(
                    " ({files} {})",
                    if files == 1 { "entry" } else { "entries" }
                )
            } else {
                String::new()
            };
            format!("{from}{} -> {}{count}", sources.join(" "), t.dest)
        }
    }
}

/// Truncates to `n` characters with an ellipsis, on one line.
fn clip(s: &str, n: usize) -> String {
    let one: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one.chars().count() <= n {
        one
    } else {
        let mut out: String = one.chars().take(n.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// The readable table: one row per step.
pub fn table(plan: &BuildPlan) -> String {
    let mut rows: Vec<[String; 7]> = vec![[
        "STAGE".into(),
        "STEP".into(),
        "INSTR".into(),
        "SPAN".into(),
        "WORKDIR".into(),
        "USER".into(),
        "SUMMARY".into(),
    ]];
    for stage in &plan.stages {
        let name = match &stage.name {
            Some(n) => format!("{} {n}", stage.index),
            None => stage.index.to_string(),
        };
        for step in &stage.steps {
            rows.push([
                name.clone(),
                step.index.to_string(),
                step.kind.name().to_owned(),
                format!(
                    "{}:{}-{}:{}",
                    step.span.start_line,
                    step.span.start_col,
                    step.span.end_line,
                    step.span.end_col
                ),
                clip(&step.context.workdir, 30),
                step.context.user.clone().unwrap_or_else(|| "-".into()),
                clip(&summary(step), 70),
            ]);
        }
    }
    let mut widths = [0usize; 7];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    for stage in &plan.stages {
        if stage.index == plan.target {
            let base = match &stage.base {
                firebuild_plan::Base::Scratch => "scratch".to_owned(),
                firebuild_plan::Base::Image { reference } => reference.clone(),
                firebuild_plan::Base::Stage { index } => format!("stage {index}"),
            };
            let _ = writeln!(
                out,
                "target: stage {}{} from {base}",
                stage.index,
                stage
                    .name
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            );
            let c = &stage.config;
            if let Some(cmd) = &c.entrypoint {
                let _ = writeln!(out, "entrypoint: {}", command_text(cmd));
            }
            if let Some(cmd) = &c.cmd {
                let _ = writeln!(out, "cmd: {}", command_text(cmd));
            }
            if !c.exposed_ports.is_empty() {
                let _ = writeln!(out, "expose: {}", c.exposed_ports.join(" "));
            }
        }
    }
    out
}

fn command_text(cmd: &Command) -> String {
    match cmd {
        Command::Shell(s) => s.clone(),
        Command::Exec(argv) => format!("{argv:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_args_split_on_first_equals() {
        let got = build_args(&["A=b=c".into(), "E=".into()]).unwrap();
        assert_eq!(
            got,
            [("A".into(), "b=c".into()), ("E".into(), String::new())]
        );
        assert!(build_args(&["=x".into()]).is_err());
    }

    #[test]
    fn clip_keeps_one_line() {
        assert_eq!(clip("a\nb", 10), "a b");
        assert_eq!(clip("abcdef", 4), "abc…");
    }
}
