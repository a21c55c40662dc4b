//! Dockerfile → plan, with the base images' configs fed in the way Docker feeds them.
//!
//! The `FROM` references are only known once the Dockerfile is expanded (`FROM ${BASE}`), and
//! the base configs change what the stages see (ENV, WORKDIR, USER): so the Dockerfile is
//! planned once to learn the references, their configs are fetched (manifests and configs
//! only, no layers; cached by digest), and it is planned again with them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use firebuild_dockerfile::{PlanRequest, plan};
use firebuild_plan::{Base, BuildPlan, ImageConfig, Stage};
use firebuild_rootfs::BaseSource;
use firebuild_rootfs::registry::PullOptions;

use crate::error::{Error, Result};
use crate::options::{BuildRequest, read_bounded};

/// Largest Dockerfile read (buildkit refuses far smaller ones in practice).
pub const MAX_DOCKERFILE: u64 = 4 << 20;

/// A Dockerfile resolved into a plan, with what the build needs beside it.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The Dockerfile's path.
    pub file: PathBuf,
    /// Its text.
    pub text: String,
    /// The plan, base configs applied.
    pub plan: BuildPlan,
    /// The base configs that were fed in, by `FROM` reference.
    pub base_configs: BTreeMap<String, ImageConfig>,
    /// Where each of those bases came from (digests, layer diff ids), by reference: what the
    /// step cache keys a stage's start on.
    pub base_provenance: BTreeMap<String, firebuild_rootfs::BaseProvenance>,
}

impl Planned {
    /// The stage whose result is the image.
    pub fn target(&self) -> Result<&Stage> {
        self.plan.target_stage().ok_or_else(|| Error::Unsupported {
            file: self.file.display().to_string(),
            reason: "the plan has no target stage".to_owned(),
        })
    }

    /// The Dockerfile's text of `line` (1-based), trimmed; empty when out of range.
    pub fn line(&self, line: u32) -> &str {
        let index = usize::try_from(line).unwrap_or(0).saturating_sub(1);
        self.text.lines().nth(index).map_or("", str::trim)
    }

    /// The instruction on lines `start..=end`, continuations joined into one line
    /// (`RUN apt-get update && apt-get install -y hello`), as buildkit shows it.
    pub fn instruction(&self, start: u32, end: u32) -> String {
        (start..=end.max(start))
            .map(|l| self.line(l).trim_end_matches('\\').trim())
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Reads the Dockerfile, bounded.
fn read_dockerfile(path: &Path) -> Result<String> {
    let bytes = read_bounded(path, MAX_DOCKERFILE, "Dockerfile")?;
    String::from_utf8(bytes).map_err(|_| Error::Invalid {
        what: "Dockerfile",
        reason: format!("{} is not UTF-8", path.display()),
    })
}

fn plan_with(
    req: &BuildRequest,
    shown: &str,
    text: &str,
    configs: &BTreeMap<String, ImageConfig>,
) -> Result<BuildPlan> {
    let request = PlanRequest {
        dockerfile_path: shown,
        dockerfile: text,
        context_dir: &req.context,
        build_args: &req.build_args,
        target: req.target.as_deref(),
        base_configs: configs,
    };
    // The error's Display carries file:line:col and the caret snippet.
    plan(&request).map_err(|e| Error::Plan(e.to_string()))
}

/// The image references the plan uses: its stages start from them or its steps read them.
pub fn base_references(plan: &BuildPlan) -> Vec<String> {
    let mut refs: Vec<String> = plan
        .stages
        .iter()
        .filter_map(|s| match &s.base {
            Base::Image { reference } => Some(reference.clone()),
            _ => None,
        })
        .collect();
    // Images named by `COPY --from` and `RUN --mount=from=`: their digests key the steps that
    // read them in the step cache.
    for stage in &plan.stages {
        for role in stage.disks() {
            if let firebuild_plan::DiskRole::Image(reference) = role {
                refs.push(reference);
            }
        }
    }
    refs.sort();
    refs.dedup();
    refs
}

/// What to do when a base's config cannot be fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bases {
    /// Fail: a build needs the base anyway.
    Required,
    /// Plan without it and say so in the plan's warnings (`plan` works offline).
    BestEffort,
}

/// The configs and provenance of a build's bases, by reference.
#[derive(Debug, Default)]
pub struct BaseInfo {
    /// Image configs.
    pub configs: BTreeMap<String, ImageConfig>,
    /// Where each came from.
    pub provenance: BTreeMap<String, firebuild_rootfs::BaseProvenance>,
}

/// Fetches the configs of `references` (manifests and configs only); with
/// [`Bases::BestEffort`], a base that cannot be fetched becomes a warning.
pub async fn fetch_configs(
    references: &[String],
    pull: &PullOptions,
    mode: Bases,
    warnings: &mut Vec<String>,
) -> Result<BaseInfo> {
    let mut out = BaseInfo::default();
    for reference in references {
        let base_error = |source| Error::Base {
            reference: reference.clone(),
            source,
        };
        let found = match reference.parse::<BaseSource>() {
            Ok(source) => firebuild_rootfs::resolve_config(&source, pull).await,
            Err(e) => Err(e),
        };
        match (found, mode) {
            (Ok(Some(found)), _) => {
                out.configs.insert(reference.clone(), found.config);
                out.provenance.insert(reference.clone(), found.base);
            }
            (Ok(None), _) => {}
            (Err(e), Bases::Required) => return Err(base_error(e)),
            (Err(e), Bases::BestEffort) => warnings.push(format!(
                "base {reference}: config not fetched, planned without it: {}",
                firebuild_dockerfile::error::chain(&e)
            )),
        }
    }
    Ok(out)
}

/// Plans `req` without the bases' configs: enough to learn the stages and their references.
pub fn plan_without_bases(req: &BuildRequest) -> Result<Planned> {
    let file = req.dockerfile_path();
    let text = read_dockerfile(&file)?;
    let plan = plan_with(req, &file.display().to_string(), &text, &BTreeMap::new())?;
    Ok(Planned {
        file,
        text,
        plan,
        base_configs: BTreeMap::new(),
        base_provenance: BTreeMap::new(),
    })
}

/// Plans `first`'s Dockerfile again with its bases' configs fed in.
pub async fn with_base_configs(
    req: &BuildRequest,
    first: Planned,
    pull: &PullOptions,
    mode: Bases,
) -> Result<Planned> {
    let references = base_references(&first.plan);
    if references.is_empty() {
        return Ok(first);
    }
    let mut warnings = Vec::new();
    let bases = fetch_configs(&references, pull, mode, &mut warnings).await?;
    let shown = first.file.display().to_string();
    let mut plan = plan_with(req, &shown, &first.text, &bases.configs)?;
    plan.warnings.extend(warnings);
    Ok(Planned {
        plan,
        base_configs: bases.configs,
        base_provenance: bases.provenance,
        ..first
    })
}

/// Plans `req`: once to learn the bases, then again with their configs.
pub async fn resolve(req: &BuildRequest, pull: &PullOptions, mode: Bases) -> Result<Planned> {
    with_base_configs(req, plan_without_bases(req)?, pull, mode).await
}

/// Checks that the build can run the plan: every stage for linux/amd64 (the VM's platform).
pub fn check_supported(planned: &Planned) -> Result<()> {
    planned.target()?;
    for stage in &planned.plan.stages {
        let Some(platform) = &stage.platform else {
            continue;
        };
        let p = platform.to_ascii_lowercase();
        if !["linux/amd64", "linux/x86_64", "amd64", "linux/amd64/v1"].contains(&p.as_str()) {
            return Err(Error::Unsupported {
                file: format!("{}:{}", planned.file.display(), stage.span.start_line),
                reason: format!(
                    "FROM --platform={platform}: firebuild builds in a linux/amd64 VM and does not emulate other platforms"
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn planned(dockerfile: &str) -> Result<Planned> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
        for name in ["a", "x"] {
            std::fs::write(dir.path().join(name), name).unwrap();
        }
        let req = BuildRequest::new(dir.path(), "t", dir.path().join("out"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(resolve(
            &req,
            &PullOptions::new(dir.path().join("cache")),
            Bases::Required,
        ))
    }

    #[test]
    fn scratch_plans_without_fetching() {
        let p = planned("FROM scratch\nCOPY a /a\nCMD [\"/a\"]\n").unwrap();
        assert!(p.base_configs.is_empty());
        assert_eq!(p.line(2), "COPY a /a");
        let p = planned("FROM scratch\nRUN echo a \\\n  && echo b\n").unwrap();
        assert_eq!(p.instruction(2, 3), "RUN echo a && echo b");
        check_supported(&p).unwrap();
    }

    #[test]
    fn multi_stage_is_planned_and_other_platforms_are_refused_with_the_line() {
        let p =
            planned("FROM scratch AS a\nCOPY x /x\nFROM scratch\nCOPY --from=a /x /x\n").unwrap();
        check_supported(&p).unwrap();
        let p = planned("FROM --platform=linux/arm64 scratch\nCOPY x /x\n").unwrap();
        let e = check_supported(&p).unwrap_err().to_string();
        assert!(
            e.contains("Dockerfile:1: FROM --platform=linux/arm64"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_base_names_the_reference() {
        let e = planned("FROM oci:/nonexistent/layout\nRUN true\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("oci:/nonexistent/layout"), "{e}");
    }

    #[test]
    fn best_effort_plans_without_an_unreachable_base() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("Dockerfile"),
            "FROM oci:/nonexistent\nRUN true\n",
        )
        .unwrap();
        let req = BuildRequest::new(dir.path(), "t", dir.path().join("out"));
        let pull = PullOptions::new(dir.path().join("cache"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let p = rt
            .block_on(resolve(&req, &pull, Bases::BestEffort))
            .unwrap();
        assert!(p.base_configs.is_empty());
        assert!(
            p.plan
                .warnings
                .iter()
                .any(|w| w.starts_with("base oci:/nonexistent: config not fetched")),
            "{:?}",
            p.plan.warnings
        );
    }

    #[test]
    fn plan_errors_carry_the_line() {
        let e = planned("FROM scratch\nCOPY ../x /\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("Dockerfile:2"), "{e}");
    }
}
