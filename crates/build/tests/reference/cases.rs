//! The corpus: `tests/reference/<case>/`, each a Dockerfile and its context, the Dockerfile's
//! header saying what the case pins and how to build it (see tests/reference/README.md).

use std::path::{Path, PathBuf};

/// One case.
pub struct Case {
    pub name: String,
    pub dir: PathBuf,
    /// `# pins:` — the Dockerfile feature the case pins.
    pub pins: String,
    /// `# output: compare` — the RUN steps' output is deterministic and compared.
    pub compare_output: bool,
    /// `# build-arg: NAME=VALUE` lines.
    pub build_args: Vec<(String, String)>,
    /// `# reference: FILE (why)` — what Docker builds instead, and why.
    pub reference: Option<(String, String)>,
    /// `# pending: why` — firebuild does not build this yet (it must refuse it with an error);
    /// Docker's build is still checked.
    pub pending: Option<String>,
    /// `# by-design: hardlinks (why)` — hardlink groups are not compared in this case, and why.
    pub by_design_hardlinks: Option<String>,
    /// Which bases the Dockerfile declares (`ARG BASE`, `ARG BUSYBOX`).
    pub uses_debian: bool,
    pub uses_busybox: bool,
}

impl Case {
    fn load(dir: &Path) -> Self {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(dir.join("Dockerfile"))
            .unwrap_or_else(|e| panic!("{}/Dockerfile: {e}", dir.display()));
        let mut case = Self {
            name,
            dir: dir.to_owned(),
            pins: String::new(),
            compare_output: false,
            build_args: Vec::new(),
            reference: None,
            pending: None,
            by_design_hardlinks: None,
            uses_debian: text.lines().any(|l| l.trim() == "ARG BASE"),
            uses_busybox: text.lines().any(|l| l.trim() == "ARG BUSYBOX"),
        };
        for line in text.lines().map_while(|l| l.strip_prefix('#')) {
            let Some((key, value)) = line.trim().split_once(':') else {
                continue;
            };
            let value = value.trim().to_owned();
            match key {
                "pins" => case.pins = value,
                "output" => case.compare_output = value == "compare",
                "build-arg" => {
                    let (k, v) = value.split_once('=').unwrap_or((&value, ""));
                    case.build_args.push((k.to_owned(), v.to_owned()));
                }
                "pending" => case.pending = Some(value),
                "by-design" => {
                    let why = value.strip_prefix("hardlinks").unwrap_or_else(|| {
                        panic!("{}: unknown `# by-design:` {value}", dir.display())
                    });
                    let why = why.trim().trim_start_matches('(').trim_end_matches(')');
                    case.by_design_hardlinks = Some(why.to_owned());
                }
                "reference" => {
                    let (file, why) = value.split_once(' ').unwrap_or((&value, ""));
                    let why = why.trim().trim_start_matches('(').trim_end_matches(')');
                    case.reference = Some((file.to_owned(), why.to_owned()));
                }
                _ => {}
            }
        }
        assert!(
            !case.pins.is_empty(),
            "{}/Dockerfile: no `# pins:` header",
            dir.display()
        );
        case
    }

    /// The Dockerfile Docker builds.
    pub fn docker_dockerfile(&self) -> &str {
        self.reference.as_ref().map_or("Dockerfile", |(f, _)| f)
    }
}

/// Every case under `root`, by name.
pub fn load(root: &Path) -> Vec<Case> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Dockerfile").is_file())
        .collect();
    dirs.sort();
    dirs.iter().map(|d| Case::load(d)).collect()
}
