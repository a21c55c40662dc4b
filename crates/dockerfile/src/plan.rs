//! Dockerfile → [`BuildPlan`] resolution, with buildkit's dispatch semantics.
//!
//! [`plan`] parses the Dockerfile, types its instructions and walks them the way buildkit's
//! `dockerfile2llb` dispatches them:
//!
//! - **ARG**: ARGs before the first `FROM` are global (usable in `FROM` lines); a stage sees a
//!   global value only if it re-declares `ARG NAME`. `--build-arg` values override defaults;
//!   build args no ARG consumed are reported in [`BuildPlan::warnings`]. The predefined proxy
//!   args (`HTTP_PROXY`...) reach RUN without a declaration; `TARGETPLATFORM`, `BUILDARCH`...
//!   have automatic values (the host's architecture, `linux`).
//! - **FROM an image**: when the caller gives the image's config
//!   ([`PlanRequest::base_configs`]), the stage starts from it as buildkit starts it: its ENV in
//!   order, WORKDIR (`/` if none), USER, SHELL, its whole image config, and its ONBUILD triggers
//!   run first. Without it the stage starts empty, as from `scratch`.
//! - **ENV** accumulates, is visible to later expansions (it wins over an ARG of the same name)
//!   and is inherited, with WORKDIR, USER, SHELL and the image config, by `FROM <stage>`.
//! - **CMD** alone keeps the base's ENTRYPOINT; **ENTRYPOINT** clears the base's CMD unless the
//!   stage sets a CMD too.
//! - **WORKDIR** is relative to the previous one (default `/`).
//! - **RUN** keeps its shell-form text unexpanded (the shell expands it at run time);
//!   `--network` goes into the plan; `--mount` and `--security=insecure` are rejected, never
//!   ignored.
//! - **COPY/ADD** words are expanded; context sources are resolved with [`crate::context`]
//!   (globs, `.dockerignore`, `--exclude`, confinement); `--from` names a stage (by name or
//!   index, earlier only) or an image; ADD of a URL (`--checksum=sha256:` validated) and ADD of
//!   a local archive (recognised by its magic bytes, marked `extract`) are supported.
//! - `--target` selects a stage (default: the last); stages it does not need (through
//!   `FROM <stage>` and `COPY --from`) are pruned, and errors in pruned stages do not matter,
//!   as with buildkit.
//!
//! Every error carries the file name, line:col and a caret snippet of the instruction. The
//! context directory is only read; nothing touches the network or spawns.
//!
//! ```
//! use std::path::Path;
//! use firebuild_dockerfile::{PlanRequest, plan};
//! use firebuild_plan::{Base, StepKind};
//!
//! let dockerfile = "ARG TAG=12\nFROM debian:${TAG} AS base\nENV APP=/srv\nWORKDIR $APP\n\
//!                   RUN make\nFROM base\nUSER app\nRUN ./serve\n";
//! let args = [("TAG".to_owned(), "13".to_owned())];
//! let req = PlanRequest {
//!     build_args: &args,
//!     ..PlanRequest::new("Dockerfile", dockerfile, Path::new("."))
//! };
//! let built = plan(&req).unwrap();
//! assert_eq!(built.stages[0].base, Base::Image { reference: "debian:13".into() });
//! let (_, last) = built.steps().last().unwrap();
//! assert!(matches!(last.kind, StepKind::Run(_)));
//! assert_eq!(last.context.workdir, "/srv");
//! assert_eq!(last.context.user.as_deref(), Some("app"));
//! assert_eq!(last.span.start_line, 8);
//!
//! // The base image's config, as the caller fetched it, seeds the stage.
//! let base = firebuild_plan::ImageConfig {
//!     env: vec![firebuild_plan::EnvVar::new("PATH", "/usr/bin:/bin")],
//!     workdir: Some("/srv".into()),
//!     ..Default::default()
//! };
//! let configs = std::collections::BTreeMap::from([("debian:12".to_owned(), base)]);
//! let text = "FROM debian:12\nENV PATH=/opt/bin:$PATH\nRUN x\n";
//! let req = PlanRequest {
//!     base_configs: &configs,
//!     ..PlanRequest::new("Dockerfile", text, Path::new("."))
//! };
//! let run = &plan(&req).unwrap().stages[0].steps[0];
//! assert_eq!(run.context.env[0].value, "/opt/bin:/usr/bin:/bin");
//! assert_eq!(run.context.workdir, "/srv");
//!
//! let err = plan(&PlanRequest::new("Dockerfile", "FROM a\nCOPY ../x /\n", Path::new(".")))
//!     .unwrap_err();
//! assert!(err.to_string().starts_with("Dockerfile:2:1: COPY failed: source path \"../x\""));
//! ```

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use firebuild_plan::{
    Base, BuildPlan, Command, DEFAULT_PATH, EnvVar, Healthcheck as PlanHealthcheck,
    Heredoc as PlanHeredoc, ImageConfig, Origin, Resource, ResourceKind, Run as PlanRun, RunMount,
    SCHEMA_VERSION, Sharing as PlanSharing, Source, Span, Stage, Step, StepContext, StepKind,
    Transfer as PlanTransfer, default_shell,
};

use crate::ast::Heredoc;
use crate::context::{self, BuildContext, ComponentMatcher, Entry, PathFilter};
use crate::dockerignore::{IgnoreFile, PatternMatcher, glob_match};
use crate::error::{Error, SyntaxError};
use crate::instructions::{
    ArgDef, Healthcheck, Instruction, InstructionKind, Mount, MountType, Security, Sharing,
    SourceArg, Transfer,
};
use crate::shell::{Env, Lexer};

/// Most bytes a plan's variable expansions, and the variable scopes it copies into its steps and
/// stages, may add up to. Each expanded word is bounded on its own ([`shell::MAX_WORD_BYTES`]);
/// this bounds their sum, so that a Dockerfile cannot make a large value once and then copy it
/// into a million steps. Real Dockerfiles use kilobytes.
///
/// [`shell::MAX_WORD_BYTES`]: crate::shell::MAX_WORD_BYTES
pub const MAX_EXPANDED_BYTES: u64 = 256 * 1024 * 1024;

/// Largest `.dockerignore` read, in bytes.
pub const MAX_DOCKERIGNORE_BYTES: u64 = 1024 * 1024;

/// Args buildkit passes to RUN without an `ARG` declaration, and never reports as unused.
pub const PREDEFINED_ARGS: [&str; 10] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// What to resolve: the Dockerfile, its context and the build options.
#[derive(Debug, Clone, Copy)]
pub struct PlanRequest<'a> {
    /// The Dockerfile path as the user gave it: used in messages and to find a
    /// `<Dockerfile>.dockerignore` beside it.
    pub dockerfile_path: &'a str,
    /// The Dockerfile text.
    pub dockerfile: &'a str,
    /// The build context directory (read only).
    pub context_dir: &'a Path,
    /// `--build-arg NAME=VALUE` pairs, in order (a later pair wins).
    pub build_args: &'a [(String, String)],
    /// `--target`: the stage to build (default: the last one).
    pub target: Option<&'a str>,
    /// The configs of the base images, keyed by the expanded `FROM` reference exactly as it
    /// lands in [`Base::Image`]. A stage whose base is in the map starts from that config, as
    /// buildkit starts it (env, workdir, user, shell, image config, ONBUILD triggers); a base
    /// missing from the map starts empty, like `scratch` (the caller decides whether that is
    /// allowed).
    pub base_configs: &'a BTreeMap<String, ImageConfig>,
}

/// The empty map [`PlanRequest::new`] points at.
static NO_BASE_CONFIGS: BTreeMap<String, ImageConfig> = BTreeMap::new();

impl<'a> PlanRequest<'a> {
    /// A request with no build args, the default target and no base configs.
    pub fn new(dockerfile_path: &'a str, dockerfile: &'a str, context_dir: &'a Path) -> Self {
        Self {
            dockerfile_path,
            dockerfile,
            context_dir,
            build_args: &[],
            target: None,
            base_configs: &NO_BASE_CONFIGS,
        }
    }
}

/// Parses `req.dockerfile` and resolves it into a [`BuildPlan`].
pub fn plan(req: &PlanRequest<'_>) -> Result<BuildPlan, Error> {
    let file = req.dockerfile_path;
    let ast = crate::parser::parse(req.dockerfile).map_err(|e| e.with_file(file))?;
    let instructions = crate::instructions::from_ast(&ast).map_err(|e| e.with_file(file))?;
    let mut warnings: Vec<String> = ast
        .warnings
        .iter()
        .map(|w| format!("{file}:{}: {}", w.span, w.message))
        .collect();
    let mut resolver = Resolver::new(req, ast.escape);
    let mut plan = resolver.run(&instructions)?;
    warnings.append(&mut plan.warnings);
    plan.warnings = warnings;
    Ok(plan)
}

/// Variables in scope: a vector in declaration order with an index, later values replacing
/// earlier ones in place.
#[derive(Debug, Clone, Default)]
struct Vars {
    list: Vec<EnvVar>,
    index: HashMap<String, usize>,
}

impl Vars {
    /// The bytes of every name and value.
    fn bytes(&self) -> usize {
        self.list.iter().map(|v| v.name.len() + v.value.len()).sum()
    }

    fn set(&mut self, name: &str, value: String) {
        match self.index.get(name) {
            Some(&i) => self.list[i].value = value,
            None => {
                self.index.insert(name.to_owned(), self.list.len());
                self.list.push(EnvVar {
                    name: name.to_owned(),
                    value,
                });
            }
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.index.get(name).map(|&i| self.list[i].value.as_str())
    }
}

/// Expansion scope: ENV wins over ARG.
struct Scope<'a> {
    env: &'a Vars,
    args: &'a Vars,
}

impl Env for Scope<'_> {
    fn lookup(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        self.env
            .get(name)
            .or_else(|| self.args.get(name))
            .map(std::borrow::Cow::Borrowed)
    }
}

/// The Go `path.Match` of [`glob_match`] for [`BuildContext`].
struct GoGlob;

impl ComponentMatcher for GoGlob {
    fn matches(&self, pattern: &str, name: &str) -> Result<bool, ()> {
        glob_match(pattern, name).map_err(|_| ())
    }
}

/// Adapts a [`PatternMatcher`] to [`PathFilter`].
struct Ignore<'a>(&'a PatternMatcher);

impl PathFilter for Ignore<'_> {
    fn excluded(&self, rel: &str) -> bool {
        self.0.matches(rel)
    }

    fn has_exceptions(&self) -> bool {
        self.0.exclusions()
    }
}

/// A COPY/ADD whose context sources still need resolving.
#[derive(Debug)]
struct PendingTransfer {
    /// Index of the step in its stage.
    step: usize,
    is_add: bool,
    /// The destination is a directory (ends with `/`).
    dest_dir: bool,
    exclude: Option<PatternMatcher>,
}

/// The state a stage leaves behind, inherited by `FROM <stage>`.
#[derive(Debug, Clone)]
struct Inherit {
    env: Vars,
    workdir: String,
    user: Option<String>,
    shell: Vec<String>,
    shell_changed: bool,
    config: ImageConfig,
    /// `ONBUILD` triggers, typed: run at the start of a stage built `FROM` this one.
    triggers: Vec<Instruction>,
}

impl Inherit {
    /// What a stage built `FROM` an image with `config` starts from, as buildkit's
    /// `dockerfile2llb` seeds it: the image's ENV in order, its WORKDIR (`/` when it has none),
    /// USER, SHELL (`/bin/sh -c` when it has none), its whole config as the stage's starting
    /// image config (labels, ports, volumes, stop signal, healthcheck, entrypoint, cmd...), and
    /// its ONBUILD triggers to run first.
    fn from_image(config: &ImageConfig, triggers: Vec<Instruction>) -> Self {
        let mut env = Vars::default();
        for var in &config.env {
            env.set(&var.name, var.value.clone());
        }
        Self {
            env,
            workdir: config.workdir.clone().unwrap_or_else(|| "/".to_owned()),
            user: config.user.clone(),
            shell: config.shell.clone().unwrap_or_else(default_shell),
            shell_changed: config.shell.is_some(),
            config: config.clone(),
            triggers,
        }
    }
}

impl Inherit {
    /// What a stage built `FROM scratch` starts from: buildkit's `emptyImage` has one variable
    /// in its config, `PATH` (the default one), and `WorkingDir` `/`, which the image keeps.
    fn scratch() -> Self {
        let mut state = Self::default();
        state.env.set("PATH", DEFAULT_PATH.to_owned());
        state.config.env = vec![EnvVar::new("PATH", DEFAULT_PATH)];
        state.config.workdir = Some("/".to_owned());
        state
    }
}

impl Default for Inherit {
    fn default() -> Self {
        Self {
            env: Vars::default(),
            workdir: "/".to_owned(),
            user: None,
            shell: default_shell(),
            shell_changed: false,
            config: ImageConfig::default(),
            triggers: Vec::new(),
        }
    }
}

/// A stage dispatched without touching the context.
#[derive(Debug)]
struct Draft {
    stage: Stage,
    pending: Vec<PendingTransfer>,
    state: Inherit,
    /// Non-fatal findings, reported only if the stage is kept.
    warnings: Vec<String>,
}

enum Outcome {
    Ok(Box<Draft>),
    Failed(Error),
    /// The stage's base stage failed.
    BaseFailed(usize),
}

/// One `FROM` section, split out of the instruction list.
struct StageSrc<'i> {
    from: &'i Instruction,
    image: &'i str,
    name: Option<&'i str>,
    platform: Option<&'i str>,
    body: &'i [Instruction],
}

struct LoadedContext {
    ignore: PatternMatcher,
    /// The canonical context root.
    root: PathBuf,
    /// Resolved sources by (pattern, `--exclude` patterns): the context is read-only input, so
    /// a source named by several steps is walked once.
    sources: HashMap<(String, Vec<String>), Vec<Entry>>,
    /// Whether a context file is an archive (ADD), by path.
    archives: HashMap<String, bool>,
}

struct Resolver<'r> {
    req: &'r PlanRequest<'r>,
    lexer: Lexer,
    build_args: BTreeMap<String, String>,
    builtins: Vars,
    meta: Vars,
    consumed_global: BTreeSet<String>,
    context: Option<LoadedContext>,
    next_id: usize,
    /// Bytes counted against [`MAX_EXPANDED_BYTES`] so far.
    expanded: Cell<u64>,
    /// Pattern-matching steps the plan's expansions have left, all words together
    /// ([`shell::MAX_MATCH_STEPS`]).
    ///
    /// [`shell::MAX_MATCH_STEPS`]: crate::shell::MAX_MATCH_STEPS
    match_steps: Cell<u64>,
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

impl<'r> Resolver<'r> {
    fn new(req: &'r PlanRequest<'r>, escape: char) -> Self {
        let mut builtins = Vars::default();
        let arch = go_arch();
        let platform = format!("linux/{arch}");
        for prefix in ["BUILD", "TARGET"] {
            builtins.set(&format!("{prefix}PLATFORM"), platform.clone());
            builtins.set(&format!("{prefix}OS"), "linux".to_owned());
            builtins.set(&format!("{prefix}ARCH"), arch.to_owned());
            builtins.set(&format!("{prefix}VARIANT"), String::new());
        }
        Self {
            req,
            lexer: Lexer::new(escape),
            build_args: req.build_args.iter().cloned().collect(),
            builtins,
            meta: Vars::default(),
            consumed_global: BTreeSet::new(),
            context: None,
            next_id: 0,
            expanded: Cell::new(0),
            match_steps: Cell::new(crate::shell::MAX_MATCH_STEPS),
        }
    }

    fn err(&self, span: Span, msg: impl Into<String>) -> Error {
        Error::at(self.req.dockerfile, span, SyntaxError::Other(msg.into()))
            .with_file(self.req.dockerfile_path)
    }

    fn expand(&self, scope: &dyn Env, word: &str, ins: &Instruction) -> Result<String, Error> {
        let value = self
            .within_match_steps(|steps| self.lexer.expand_word_within(word, scope, steps))
            .map_err(|e| self.err(ins.span, format!("{}: {e}", ins.kind.name())))?;
        self.charge(ins, value.len())?;
        Ok(value)
    }

    /// Runs one expansion on the plan's shared budget of pattern-matching steps.
    fn within_match_steps<T>(&self, expand: impl FnOnce(&mut u64) -> T) -> T {
        let mut steps = self.match_steps.get();
        let out = expand(&mut steps);
        self.match_steps.set(steps);
        out
    }

    /// Counts `bytes` of expanded or copied variables against [`MAX_EXPANDED_BYTES`].
    fn charge(&self, ins: &Instruction, bytes: usize) -> Result<(), Error> {
        let total = self.expanded.get().saturating_add(bytes as u64);
        self.expanded.set(total);
        if total > MAX_EXPANDED_BYTES {
            return Err(self.err(
                ins.span,
                format!(
                    "{}: variable expansion produces more than {MAX_EXPANDED_BYTES} bytes in all",
                    ins.kind.name()
                ),
            ));
        }
        Ok(())
    }

    /// What a step runs with: a copy of the stage's variables, counted against
    /// [`MAX_EXPANDED_BYTES`].
    fn step_context(
        &self,
        ins: &Instruction,
        state: &Inherit,
        args: &Vars,
    ) -> Result<StepContext, Error> {
        self.charge(ins, state.env.bytes() + args.bytes())?;
        Ok(StepContext {
            env: state.env.list.clone(),
            args: args.list.clone(),
            workdir: state.workdir.clone(),
            user: state.user.clone(),
            shell: state.shell.clone(),
        })
    }

    fn run(&mut self, instructions: &[Instruction]) -> Result<BuildPlan, Error> {
        // Split global ARGs and stages.
        let mut stages: Vec<StageSrc<'_>> = Vec::new();
        for (i, ins) in instructions.iter().enumerate() {
            match &ins.kind {
                InstructionKind::From(from) => {
                    let end = instructions[i + 1..]
                        .iter()
                        .position(|n| matches!(n.kind, InstructionKind::From(_)))
                        .map_or(instructions.len(), |p| i + 1 + p);
                    stages.push(StageSrc {
                        from: ins,
                        image: &from.image,
                        name: from.name.as_deref(),
                        platform: from.platform.as_deref(),
                        body: &instructions[i + 1..end],
                    });
                }
                InstructionKind::Arg(defs) if stages.is_empty() => self.global_args(defs, ins)?,
                _ if stages.is_empty() => {
                    return Err(self.err(
                        ins.span,
                        format!(
                            "{} before the first FROM: no build stage in current context",
                            ins.kind.name()
                        ),
                    ));
                }
                _ => {}
            }
        }
        if stages.is_empty() {
            return Err(self.err(
                instructions.first().map_or(Span::default(), |i| i.span),
                "dockerfile contains no stages to build (no FROM)",
            ));
        }
        let names: Vec<Option<String>> = stages
            .iter()
            .map(|s| s.name.map(str::to_ascii_lowercase))
            .collect();
        for (i, name) in names.iter().enumerate() {
            if let Some(name) = name
                && names[..i].iter().any(|n| n.as_deref() == Some(name))
            {
                return Err(self.err(
                    stages[i].from.span,
                    format!("duplicate stage name {name:?}"),
                ));
            }
        }
        let target = match self.req.target {
            None => stages.len() - 1,
            Some(t) => {
                let t = t.to_ascii_lowercase();
                names
                    .iter()
                    .position(|n| n.as_deref() == Some(t.as_str()))
                    .ok_or_else(|| {
                        let known: Vec<&str> = names.iter().flatten().map(String::as_str).collect();
                        self.err(
                            stages[0].from.span,
                            format!(
                                "target stage {t:?} could not be found (stages: {})",
                                if known.is_empty() {
                                    "none named".to_owned()
                                } else {
                                    known.join(", ")
                                }
                            ),
                        )
                    })?
            }
        };

        // Dispatch every stage (without touching the context), recording dependencies.
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(stages.len());
        let mut deps: Vec<Vec<usize>> = Vec::with_capacity(stages.len());
        let mut consumed: Vec<BTreeSet<String>> = Vec::with_capacity(stages.len());
        for (index, src) in stages.iter().enumerate() {
            let mut d = Vec::new();
            let mut c = BTreeSet::new();
            let outcome = self.dispatch_stage(index, src, &names, &outcomes, &mut d, &mut c);
            outcomes.push(outcome);
            deps.push(d);
            consumed.push(c);
        }

        // Keep what the target needs.
        let mut needed = vec![false; stages.len()];
        let mut todo = vec![target];
        while let Some(i) = todo.pop() {
            if std::mem::replace(&mut needed[i], true) {
                continue;
            }
            todo.extend(deps[i].iter().copied());
        }

        let mut out_stages = Vec::new();
        let mut stage_warnings: Vec<String> = Vec::new();
        let mut all_consumed = self.consumed_global.clone();
        for (index, outcome) in outcomes.into_iter().enumerate() {
            if !needed[index] {
                continue;
            }
            let draft = match outcome {
                Outcome::Ok(d) => d,
                Outcome::Failed(e) => return Err(e),
                Outcome::BaseFailed(base) => {
                    return Err(self.err(
                        stages[index].from.span,
                        format!("base stage {base} could not be resolved"),
                    ));
                }
            };
            all_consumed.extend(consumed[index].iter().cloned());
            stage_warnings.extend(draft.warnings.iter().cloned());
            let stage = self.finish_stage(*draft)?;
            out_stages.push(stage);
        }

        let mut warnings = stage_warnings;
        let unused: Vec<&str> = self
            .build_args
            .keys()
            .filter(|k| !all_consumed.contains(*k) && !PREDEFINED_ARGS.contains(&k.as_str()))
            .filter(|k| !k.starts_with("BUILDKIT_"))
            .map(String::as_str)
            .collect();
        if !unused.is_empty() {
            warnings.push(format!(
                "one or more build args were not consumed by any ARG: {}",
                unused.join(", ")
            ));
        }
        Ok(BuildPlan {
            schema_version: SCHEMA_VERSION,
            dockerfile: self.req.dockerfile_path.to_owned(),
            target,
            stages: out_stages,
            warnings,
        })
    }

    fn global_args(&mut self, defs: &[ArgDef], ins: &Instruction) -> Result<(), Error> {
        for def in defs {
            self.consumed_global.insert(def.name.clone());
            let value = if let Some(v) = self.build_args.get(&def.name) {
                Some(v.clone())
            } else if let Some(default) = &def.default {
                let scope = Scope {
                    env: &self.meta,
                    args: &self.builtins,
                };
                Some(self.expand(&scope, default, ins)?)
            } else {
                self.builtins.get(&def.name).map(str::to_owned)
            };
            if let Some(value) = value {
                self.meta.set(&def.name, value);
            }
        }
        Ok(())
    }

    /// The state a stage built `FROM <image>` starts in: the image's config when the caller
    /// gave it ([`PlanRequest::base_configs`]), else nothing (as `scratch`).
    fn image_base(&self, from: &Instruction, reference: &str) -> Result<Inherit, Error> {
        let Some(config) = self.req.base_configs.get(reference) else {
            return Ok(Inherit::default());
        };
        let triggers = config
            .onbuild
            .iter()
            .map(|t| self.image_trigger(from, reference, t))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Inherit::from_image(config, triggers))
    }

    /// Parses one of a base image's `ONBUILD` triggers as the instruction it is, as buildkit's
    /// `dispatchOnBuildTriggers` does: one instruction, never `ONBUILD`, `FROM` or
    /// `MAINTAINER`. It reports at the `FROM` line.
    fn image_trigger(
        &self,
        from: &Instruction,
        reference: &str,
        trigger: &str,
    ) -> Result<Instruction, Error> {
        let bad = |why: String| {
            self.err(
                from.span,
                format!("FROM {reference}: the image's ONBUILD trigger {trigger:?} {why}"),
            )
        };
        let ast = crate::parser::parse(trigger).map_err(|e| bad(format!("does not parse: {e}")))?;
        let mut parsed =
            crate::instructions::from_ast(&ast).map_err(|e| bad(format!("is invalid: {e}")))?;
        let (Some(mut ins), true) = (parsed.pop(), parsed.is_empty()) else {
            return Err(bad("should be a single instruction".to_owned()));
        };
        if matches!(
            ins.kind,
            InstructionKind::From(_) | InstructionKind::Onbuild(_) | InstructionKind::Maintainer(_)
        ) {
            return Err(bad(format!("cannot be {}", ins.kind.name())));
        }
        // Steps from the trigger point at the FROM line that brought it in.
        ins.span = from.span;
        Ok(ins)
    }

    fn dispatch_stage(
        &self,
        index: usize,
        src: &StageSrc<'_>,
        names: &[Option<String>],
        done: &[Outcome],
        deps: &mut Vec<usize>,
        consumed: &mut BTreeSet<String>,
    ) -> Outcome {
        match self.dispatch_stage_inner(index, src, names, done, deps, consumed) {
            Ok(Ok(draft)) => Outcome::Ok(Box::new(draft)),
            Ok(Err(base)) => Outcome::BaseFailed(base),
            Err(e) => Outcome::Failed(e),
        }
    }

    /// Dispatches one stage. `Ok(Err(i))`: its base stage `i` failed.
    fn dispatch_stage_inner(
        &self,
        index: usize,
        src: &StageSrc<'_>,
        names: &[Option<String>],
        done: &[Outcome],
        deps: &mut Vec<usize>,
        consumed: &mut BTreeSet<String>,
    ) -> Result<Result<Draft, usize>, Error> {
        let from = src.from;
        // FROM sees the global args (with automatic platform args) only.
        let meta_scope = Scope {
            env: &self.meta,
            args: &self.builtins,
        };
        let mut warnings = Vec::new();
        let expansion = self
            .within_match_steps(|steps| {
                self.lexer
                    .process_word_within(src.image, &meta_scope, steps)
            })
            .map_err(|e| self.err(from.span, format!("FROM: {e}")))?;
        self.charge(from, expansion.value.len())?;
        for name in &expansion.unmatched {
            warnings.push(format!(
                "{}:{}: FROM uses {name:?}, which no global ARG declares (buildkit's UndefinedArgInFrom)",
                self.req.dockerfile_path, from.span
            ));
        }
        let image = expansion.value;
        if image.is_empty() {
            return Err(self.err(
                from.span,
                format!("base name ({}) should not be blank", src.image),
            ));
        }
        let platform = match src.platform {
            Some(p) => Some(self.expand(&meta_scope, p, from)?),
            None => None,
        };
        let lower = image.to_ascii_lowercase();
        let (base, mut state) = if lower == "scratch" {
            (Base::Scratch, Inherit::scratch())
        } else if let Some(i) = names
            .iter()
            .position(|n| n.as_deref() == Some(lower.as_str()))
        {
            if i >= index {
                return Err(self.err(
                    from.span,
                    if i == index {
                        format!("stage {lower:?} cannot use itself as its base (circular dependency)")
                    } else {
                        format!(
                            "stage {lower:?} is defined later in the Dockerfile: a stage can only build on an earlier one"
                        )
                    },
                ));
            }
            deps.push(i);
            match &done[i] {
                Outcome::Ok(d) => {
                    self.charge(from, d.state.env.bytes())?;
                    (Base::Stage { index: i }, d.state.clone())
                }
                Outcome::Failed(_) | Outcome::BaseFailed(_) => return Ok(Err(i)),
            }
        } else {
            let state = self.image_base(from, &image)?;
            (Base::Image { reference: image }, state)
        };

        // Proxy args reach RUN without a declaration.
        let mut args = Vars::default();
        for name in PREDEFINED_ARGS {
            if let Some(v) = self.build_args.get(name) {
                args.set(name, v.clone());
            }
        }
        // A stage built FROM another stage or an image runs the base's ONBUILD triggers
        // first, and does not pass them on (buildkit's `dispatchOnBuildTriggers`, then
        // `image.Config.OnBuild = nil`).
        let triggers = std::mem::take(&mut state.triggers);
        state.config.onbuild.clear();
        // At most one step per instruction: no reallocation (a `Step` is large) as steps land.
        let mut steps: Vec<Step> = Vec::with_capacity(triggers.len() + src.body.len());
        let mut pending: Vec<PendingTransfer> = Vec::new();
        let mut cmd_set = false;

        for ins in triggers.iter().chain(src.body) {
            match &ins.kind {
                InstructionKind::From(_) => {}
                InstructionKind::Arg(defs) => {
                    for def in defs {
                        consumed.insert(def.name.clone());
                        let value = if let Some(v) = self.build_args.get(&def.name) {
                            Some(v.clone())
                        } else if let Some(default) = &def.default {
                            let scope = Scope {
                                env: &state.env,
                                args: &args,
                            };
                            Some(self.expand(&scope, default, ins)?)
                        } else {
                            self.meta
                                .get(&def.name)
                                .or_else(|| self.builtins.get(&def.name))
                                .map(str::to_owned)
                        };
                        if let Some(value) = value {
                            args.set(&def.name, value);
                        }
                    }
                }
                InstructionKind::Env(kvs) => {
                    // All pairs of one ENV see the environment from before it, as Docker
                    // documents (`ENV abc=bye def=$abc` gives def the previous abc).
                    let mut pairs = Vec::with_capacity(kvs.len());
                    {
                        let scope = Scope {
                            env: &state.env,
                            args: &args,
                        };
                        for kv in kvs {
                            let key = self.expand(&scope, &kv.key, ins)?;
                            if key.is_empty() {
                                return Err(self.err(ins.span, "ENV names can not be blank"));
                            }
                            pairs.push((key, self.expand(&scope, &kv.value, ins)?));
                        }
                    }
                    for (key, value) in pairs {
                        state.env.set(&key, value);
                    }
                }
                InstructionKind::Label(kvs) => {
                    let scope = Scope {
                        env: &state.env,
                        args: &args,
                    };
                    for kv in kvs {
                        let key = self.expand(&scope, &kv.key, ins)?;
                        let value = self.expand(&scope, &kv.value, ins)?;
                        if key.is_empty() {
                            return Err(self.err(ins.span, "LABEL names can not be blank"));
                        }
                        state.config.labels.insert(key, value);
                    }
                }
                InstructionKind::Workdir(dir) => {
                    let scope = Scope {
                        env: &state.env,
                        args: &args,
                    };
                    let dir = self.expand(&scope, dir, ins)?;
                    if dir.is_empty() {
                        return Err(self.err(ins.span, "WORKDIR requires a non-empty path"));
                    }
                    state.workdir = context::normalize_workdir(&state.workdir, &dir);
                    state.config.workdir = Some(state.workdir.clone());
                    // buildkit's `dispatchWorkdir`: a workdir other than `/` is made now, as the
                    // USER in force now, not when a later RUN needs it.
                    if state.workdir != "/" {
                        steps.push(Step {
                            index: steps.len(),
                            span: ins.span,
                            context: self.step_context(ins, &state, &args)?,
                            kind: StepKind::Workdir,
                        });
                    }
                }
                InstructionKind::User(user) => {
                    let scope = Scope {
                        env: &state.env,
                        args: &args,
                    };
                    let user = self.expand(&scope, user, ins)?;
                    if user.trim().is_empty() {
                        return Err(self.err(ins.span, "USER requires a non-empty user"));
                    }
                    state.user = Some(user.clone());
                    state.config.user = Some(user);
                }
                InstructionKind::Shell(shell) => {
                    if shell.is_empty() {
                        return Err(self.err(ins.span, "SHELL requires at least one argument"));
                    }
                    state.shell = shell.clone();
                    state.shell_changed = true;
                    state.config.shell = Some(shell.clone());
                }
                InstructionKind::Cmd(cmd) => {
                    // buildkit's `dispatchCmd`: replaces CMD, keeps the (base's) ENTRYPOINT.
                    state.config.cmd = Some(stored_command(cmd, &state.shell));
                    cmd_set = true;
                }
                InstructionKind::Entrypoint(cmd) => {
                    state.config.entrypoint = Some(stored_command(cmd, &state.shell));
                    if !cmd_set {
                        // buildkit's `dispatchEntrypoint`: an ENTRYPOINT clears the CMD
                        // inherited from the base unless this stage has set a CMD itself.
                        state.config.cmd = None;
                    }
                }
                InstructionKind::Expose(ports) => {
                    let scope = Scope {
                        env: &state.env,
                        args: &args,
                    };
                    let mut all: Vec<(u32, String)> = state
                        .config
                        .exposed_ports
                        .iter()
                        .filter_map(|p| {
                            // A base image's port may lack its protocol: Docker's is tcp.
                            let (n, proto) = p.split_once('/').unwrap_or((p, "tcp"));
                            Some((n.parse().ok()?, proto.to_owned()))
                        })
                        .collect();
                    for port in ports {
                        let port = self.expand(&scope, port, ins)?;
                        for word in port.split_whitespace() {
                            all.extend(parse_expose(word).map_err(|m| self.err(ins.span, m))?);
                        }
                    }
                    all.sort();
                    all.dedup();
                    state.config.exposed_ports =
                        all.into_iter().map(|(n, p)| format!("{n}/{p}")).collect();
                }
                InstructionKind::Volume(vols) => {
                    let scope = Scope {
                        env: &state.env,
                        args: &args,
                    };
                    for vol in vols {
                        let vol = self.expand(&scope, vol, ins)?;
                        if vol.trim().is_empty() {
                            return Err(
                                self.err(ins.span, "VOLUME specified can not be an empty string")
                            );
                        }
                        state.config.volumes.push(vol);
                    }
                    state.config.volumes.sort();
                    state.config.volumes.dedup();
                }
                InstructionKind::StopSignal(sig) => {
                    let scope = Scope {
                        env: &state.env,
                        args: &args,
                    };
                    let sig = self.expand(&scope, sig, ins)?;
                    if sig.is_empty() || sig.contains(char::is_whitespace) {
                        return Err(self.err(ins.span, format!("invalid STOPSIGNAL {sig:?}")));
                    }
                    state.config.stop_signal = Some(sig);
                }
                InstructionKind::Healthcheck(hc) => {
                    state.config.healthcheck = Some(match hc {
                        Healthcheck::None => PlanHealthcheck::None,
                        Healthcheck::Cmd {
                            command,
                            interval,
                            timeout,
                            start_period,
                            start_interval,
                            retries,
                        } => PlanHealthcheck::Cmd {
                            command: command.clone(),
                            interval_ms: interval.map(|d| d.as_millis() as u64),
                            timeout_ms: timeout.map(|d| d.as_millis() as u64),
                            start_period_ms: start_period.map(|d| d.as_millis() as u64),
                            start_interval_ms: start_interval.map(|d| d.as_millis() as u64),
                            retries: *retries,
                        },
                    });
                }
                InstructionKind::Onbuild(ob) => {
                    state.config.onbuild.push(ob.expression.clone());
                    state.triggers.push((*ob.trigger).clone());
                }
                InstructionKind::Maintainer(_) => {}
                InstructionKind::Run(run) => {
                    if run.security != Security::Sandbox {
                        return Err(self.err(
                            ins.span,
                            "RUN --security=insecure is not supported by firebuild",
                        ));
                    }
                    let mut step_run = PlanRun::new(run.command.clone());
                    step_run.network = run.network;
                    step_run.heredocs = run.heredocs.iter().map(raw_heredoc).collect();
                    let scope = Scope {
                        env: &state.env,
                        args: &args,
                    };
                    step_run.mounts =
                        self.mounts(ins, &run.mounts, &scope, &state, index, names, deps)?;
                    steps.push(Step {
                        index: steps.len(),
                        span: ins.span,
                        context: self.step_context(ins, &state, &args)?,
                        kind: StepKind::Run(step_run),
                    });
                }
                InstructionKind::Copy(t) | InstructionKind::Add(t) => {
                    let is_add = matches!(ins.kind, InstructionKind::Add(_));
                    let scope = Scope {
                        env: &state.env,
                        args: &args,
                    };
                    let (transfer, pend) =
                        self.transfer(ins, t, is_add, &scope, &state, index, names, deps)?;
                    if let Some(mut p) = pend {
                        p.step = steps.len();
                        pending.push(p);
                    }
                    let kind = if is_add {
                        StepKind::Add(transfer)
                    } else {
                        StepKind::Copy(transfer)
                    };
                    steps.push(Step {
                        index: steps.len(),
                        span: ins.span,
                        context: self.step_context(ins, &state, &args)?,
                        kind,
                    });
                }
            }
        }

        state.config.env = state.env.list.clone();
        let stage = Stage {
            index,
            name: names[index].clone(),
            base,
            platform,
            span: from.span,
            steps,
            config: state.config.clone(),
        };
        Ok(Ok(Draft {
            stage,
            pending,
            state,
            warnings,
        }))
    }

    /// Expands a COPY/ADD and resolves its origin; context sources are resolved later.
    #[allow(clippy::too_many_arguments)]
    fn transfer(
        &self,
        ins: &Instruction,
        t: &Transfer,
        is_add: bool,
        scope: &Scope<'_>,
        state: &Inherit,
        index: usize,
        names: &[Option<String>],
        deps: &mut Vec<usize>,
    ) -> Result<(PlanTransfer, Option<PendingTransfer>), Error> {
        let what = if is_add { "ADD" } else { "COPY" };
        let origin = self.origin(ins, t.from.as_deref(), what, scope, index, names, deps)?;

        let dest_raw = self.expand(scope, &t.dest, ins)?;
        if dest_raw.is_empty() {
            return Err(self.err(ins.span, format!("{what} requires a destination")));
        }
        let dest_dir = dest_raw.ends_with('/')
            || dest_raw == "."
            || dest_raw.ends_with("/.")
            || dest_raw == "..";
        let mut dest = context::join_workdir(&state.workdir, &dest_raw);
        if dest_dir && !dest.ends_with('/') {
            dest.push('/');
        }
        if t.sources.len() > 1 && !dest_dir {
            return Err(self.err(
                ins.span,
                format!(
                    "when using {what} with more than one source file, the destination must be a directory and end with a /"
                ),
            ));
        }
        let chown = match &t.chown {
            Some(c) => {
                let c = self.expand(scope, c, ins)?;
                Some(context::parse_chown(&c).map_err(|e| self.err(ins.span, e.to_string()))?)
            }
            None => None,
        };
        let chmod = match &t.chmod {
            Some(c) => {
                let c = self.expand(scope, c, ins)?;
                Some(context::parse_chmod(&c).map_err(|e| self.err(ins.span, e.to_string()))?)
            }
            None => None,
        };
        let mut exclude = Vec::with_capacity(t.exclude.len());
        for e in &t.exclude {
            exclude.push(self.expand(scope, e, ins)?);
        }
        let exclude_matcher = if exclude.is_empty() {
            None
        } else {
            Some(
                PatternMatcher::new(&exclude)
                    .map_err(|e| self.err(ins.span, format!("{what} --exclude: {e}")))?,
            )
        };
        let checksum = match &t.checksum {
            Some(c) => Some(
                parse_checksum(&self.expand(scope, c, ins)?).map_err(|m| self.err(ins.span, m))?,
            ),
            None => None,
        };

        let mut sources = Vec::with_capacity(t.sources.len());
        let mut has_context_paths = false;
        for s in &t.sources {
            match s {
                SourceArg::Heredoc(doc) => {
                    let content = if doc.expand {
                        let lexer = self.lexer.with_skip_process_quotes(true);
                        let body = doc.body();
                        let content = self
                            .within_match_steps(|steps| {
                                lexer.expand_word_within(&body, scope, steps)
                            })
                            .map_err(|e| self.err(ins.span, format!("{what} heredoc: {e}")))?;
                        self.charge(ins, content.len())?;
                        content
                    } else {
                        doc.body()
                    };
                    sources.push(Source::Heredoc {
                        heredoc: PlanHeredoc {
                            name: doc.name.clone(),
                            content,
                            expand: doc.expand,
                        },
                    });
                }
                SourceArg::Path(p) => {
                    let p = self.expand(scope, p, ins)?;
                    if is_url(&p) {
                        if !is_add {
                            return Err(
                                self.err(ins.span, format!("source can't be a URL for COPY: {p}"))
                            );
                        }
                        if is_git(&p) {
                            return Err(self.err(
                                ins.span,
                                format!("ADD from a git repository is not supported: {p}"),
                            ));
                        }
                        let target = if dest_dir {
                            let name = url_file_name(&p);
                            if name.is_empty() {
                                return Err(self.err(
                                    ins.span,
                                    format!("cannot determine a file name from URL {p}; give a destination file name"),
                                ));
                            }
                            format!("{dest}{name}")
                        } else {
                            dest.clone()
                        };
                        sources.push(Source::Url {
                            url: p,
                            checksum: checksum.clone(),
                            id: String::new(),
                            target,
                        });
                    } else {
                        if p.is_empty() {
                            return Err(self.err(ins.span, format!("{what} source is empty")));
                        }
                        has_context_paths |= origin == Origin::Context;
                        sources.push(Source::Path {
                            pattern: p,
                            resources: Vec::new(),
                        });
                    }
                }
            }
        }
        if checksum.is_some() && sources.iter().any(|s| !matches!(s, Source::Url { .. })) {
            return Err(self.err(
                ins.span,
                "checksum can't be specified for non-HTTP(S) sources",
            ));
        }
        let transfer = PlanTransfer {
            origin,
            sources,
            dest,
            chown,
            chmod,
            link: t.link,
            parents: t.parents,
            exclude,
            keep_git_dir: t.keep_git_dir,
        };
        let pending = has_context_paths.then_some(PendingTransfer {
            step: 0,
            is_add,
            dest_dir,
            exclude: exclude_matcher,
        });
        Ok((transfer, pending))
    }

    /// Resolves a `--from=` value (expanded): an earlier stage by name or index, else an image.
    #[allow(clippy::too_many_arguments)]
    fn origin(
        &self,
        ins: &Instruction,
        from: Option<&str>,
        what: &str,
        scope: &Scope<'_>,
        index: usize,
        names: &[Option<String>],
        deps: &mut Vec<usize>,
    ) -> Result<Origin, Error> {
        let Some(from) = from else {
            return Ok(Origin::Context);
        };
        let from = self.expand(scope, from, ins)?;
        let lower = from.to_ascii_lowercase();
        let by_index = lower.parse::<usize>().ok();
        let found = by_index.or_else(|| {
            names
                .iter()
                .position(|n| n.as_deref() == Some(lower.as_str()))
        });
        let refuse = |m: String| Err(self.err(ins.span, m));
        match found {
            Some(i) if i >= names.len() => {
                refuse(format!("{what} --from={from}: no stage with index {i}"))
            }
            Some(i) if i < index => {
                deps.push(i);
                Ok(Origin::Stage { index: i })
            }
            Some(i) if i == index => refuse(format!(
                "{what} --from={from} refers to its own stage (circular dependency)"
            )),
            Some(_) => refuse(format!(
                "{what} --from={from} refers to a stage defined later: only earlier stages can be copied from"
            )),
            None if from.is_empty() => refuse(format!("{what} --from must not be empty")),
            None => Ok(Origin::Image { reference: from }),
        }
    }

    /// Resolves `RUN --mount`s with buildkit's defaults (`runmount.go`): values expanded,
    /// relative targets joined to the workdir, `id` defaulting to the target (cache) or its
    /// file name (secret), secret files at `/run/secrets/<id>` mode 0400, cache dirs 0755.
    /// Context bind mounts get their files in [`Self::finish_stage`].
    #[allow(clippy::too_many_arguments)]
    fn mounts(
        &self,
        ins: &Instruction,
        mounts: &[Mount],
        scope: &Scope<'_>,
        state: &Inherit,
        index: usize,
        names: &[Option<String>],
        deps: &mut Vec<usize>,
    ) -> Result<Vec<RunMount>, Error> {
        let mut out = Vec::with_capacity(mounts.len());
        for m in mounts {
            let ex = |v: &Option<String>| -> Result<Option<String>, Error> {
                v.as_ref().map(|v| self.expand(scope, v, ins)).transpose()
            };
            let target = ex(&m.target)?
                .filter(|t| !t.is_empty())
                .map(|t| context::join_workdir(&state.workdir, &t));
            let need_target = || {
                target
                    .clone()
                    .ok_or_else(|| self.err(ins.span, "RUN --mount: target is required".to_owned()))
            };
            let mount = match m.kind {
                MountType::Bind => RunMount::Bind {
                    target: need_target()?,
                    from: self.origin(
                        ins,
                        m.from.as_deref(),
                        "RUN --mount",
                        scope,
                        index,
                        names,
                        deps,
                    )?,
                    source: normalize_source(&ex(&m.source)?.unwrap_or_default()),
                    rw: !m.readonly,
                    resources: Vec::new(),
                },
                MountType::Cache => {
                    if m.from.is_some() || m.source.is_some() {
                        return Err(self.err(
                            ins.span,
                            "RUN --mount=type=cache with from= or source= is not supported by firebuild (the cache starts empty)",
                        ));
                    }
                    let target = need_target()?;
                    RunMount::Cache {
                        id: ex(&m.id)?
                            .filter(|i| !i.is_empty())
                            .unwrap_or_else(|| target.clone()),
                        target,
                        sharing: match m.sharing {
                            Sharing::Shared => PlanSharing::Shared,
                            Sharing::Private => PlanSharing::Private,
                            Sharing::Locked => PlanSharing::Locked,
                        },
                        readonly: m.readonly,
                        uid: m.uid.unwrap_or(0),
                        gid: m.gid.unwrap_or(0),
                        mode: m.mode.unwrap_or(0o755),
                    }
                }
                MountType::Tmpfs => RunMount::Tmpfs {
                    target: need_target()?,
                    size: match ex(&m.size)? {
                        Some(v) => Some(parse_size(&v).ok_or_else(|| {
                            self.err(ins.span, format!("RUN --mount=type=tmpfs: bad size {v:?}"))
                        })?),
                        None => None,
                    },
                },
                MountType::Secret => {
                    let env = ex(&m.env)?.filter(|e| !e.is_empty());
                    let id = match ex(&m.id)?.filter(|i| !i.is_empty()) {
                        Some(id) => id,
                        None => match &target {
                            Some(t) => t.rsplit('/').next().unwrap_or_default().to_owned(),
                            None => env.clone().unwrap_or_default(),
                        },
                    };
                    if id.is_empty() {
                        return Err(self.err(ins.span, "RUN --mount=type=secret needs an id"));
                    }
                    let target = match (target.clone(), &env) {
                        (Some(t), _) => Some(t),
                        (None, Some(_)) => None,
                        (None, None) => Some(format!("/run/secrets/{id}")),
                    };
                    RunMount::Secret {
                        id,
                        target,
                        env,
                        required: m.required,
                        mode: m.mode.unwrap_or(0o400),
                        uid: m.uid.unwrap_or(0),
                        gid: m.gid.unwrap_or(0),
                    }
                }
                MountType::Ssh => {
                    return Err(self.err(
                        ins.span,
                        "RUN --mount=type=ssh is not supported by firebuild (no SSH agent forwarding into the build VM); fetch with a secret mount instead",
                    ));
                }
            };
            out.push(mount);
        }
        Ok(out)
    }

    /// Loads `.dockerignore` (or `<Dockerfile>.dockerignore`) once.
    fn load_context(&mut self, span: Span) -> Result<(), Error> {
        if self.context.is_some() {
            return Ok(());
        }
        let beside = PathBuf::from(format!("{}.dockerignore", self.req.dockerfile_path));
        let in_context = self.req.context_dir.join(".dockerignore");
        let (path, shown) = if beside.is_file() {
            (beside, format!("{}.dockerignore", self.req.dockerfile_path))
        } else {
            (in_context, ".dockerignore".to_owned())
        };
        let ignore = match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => {
                if meta.len() > MAX_DOCKERIGNORE_BYTES {
                    return Err(self.err(
                        span,
                        format!(
                            "{shown} is {} bytes, larger than the limit of {MAX_DOCKERIGNORE_BYTES}",
                            meta.len()
                        ),
                    ));
                }
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| self.err(span, format!("cannot read {shown}: {e}")))?;
                IgnoreFile::parse(&text, &shown).map_err(|e| self.err(span, e.to_string()))?
            }
            _ => PatternMatcher::default(),
        };
        let dir = self.req.context_dir;
        let root = std::fs::canonicalize(dir)
            .ok()
            .filter(|r| r.is_dir())
            .ok_or_else(|| {
                self.err(
                    span,
                    format!(
                        "build context {} is not a readable directory",
                        dir.display()
                    ),
                )
            })?;
        self.context = Some(LoadedContext {
            ignore,
            root,
            sources: HashMap::new(),
            archives: HashMap::new(),
        });
        Ok(())
    }

    /// Resolves context sources of a dispatched stage and assigns resource ids.
    fn finish_stage(&mut self, draft: Draft) -> Result<Stage, Error> {
        let Draft {
            mut stage, pending, ..
        } = draft;
        let mut pending = pending.into_iter().peekable();
        for step in &mut stage.steps {
            let p = match pending.peek() {
                Some(p) if p.step == step.index => pending.next(),
                _ => None,
            };
            let span = step.span;
            let (is_add, transfer) = match &mut step.kind {
                StepKind::Copy(t) => (false, t),
                StepKind::Add(t) => (true, t),
                StepKind::Run(run) => {
                    self.resolve_binds(span, step.index, &mut run.mounts)?;
                    continue;
                }
                StepKind::Workdir => continue,
            };
            if let Some(p) = p {
                self.load_context(span)?;
                self.resolve_sources(span, transfer, &p)?;
                debug_assert_eq!(p.is_add, is_add);
            }
            for source in &mut transfer.sources {
                match source {
                    Source::Url { id, .. } => *id = self.new_id(),
                    Source::Path { resources, .. } => {
                        for r in resources {
                            r.id = self.new_id();
                        }
                    }
                    Source::Heredoc { .. } => {}
                }
            }
        }
        Ok(stage)
    }

    /// Gives each context bind mount its files: the source resolved as `COPY <source> /` would
    /// resolve it (`.dockerignore` applied), targets relative to the mount's root.
    fn resolve_binds(
        &mut self,
        span: Span,
        step: usize,
        mounts: &mut [RunMount],
    ) -> Result<(), Error> {
        for m in mounts {
            let RunMount::Bind {
                from: Origin::Context,
                source,
                resources,
                ..
            } = m
            else {
                continue;
            };
            let pattern = if source.is_empty() {
                ".".to_owned()
            } else {
                source.clone()
            };
            let sources = vec![Source::Path {
                pattern,
                resources: Vec::new(),
            }];
            let mut transfer = PlanTransfer::new(Origin::Context, sources, "/");
            let pending = PendingTransfer {
                step,
                is_add: false,
                dest_dir: true,
                exclude: None,
            };
            self.load_context(span)?;
            self.resolve_sources(span, &mut transfer, &pending)?;
            for s in transfer.sources {
                if let Source::Path {
                    resources: found, ..
                } = s
                {
                    resources.extend(found);
                }
            }
            for r in resources.iter_mut() {
                r.id = self.new_id();
            }
        }
        Ok(())
    }

    fn new_id(&mut self) -> String {
        let mut id = String::with_capacity(12);
        id.push('r');
        id.push_str(itoa(self.next_id, &mut [0u8; 20]));
        self.next_id += 1;
        id
    }

    fn resolve_sources(
        &mut self,
        span: Span,
        transfer: &mut PlanTransfer,
        p: &PendingTransfer,
    ) -> Result<(), Error> {
        let Some(mut loaded) = self.context.take() else {
            return Ok(());
        };
        let result = self.resolve_in(&mut loaded, span, transfer, p);
        self.context = Some(loaded);
        result
    }

    fn resolve_in(
        &self,
        loaded: &mut LoadedContext,
        span: Span,
        transfer: &mut PlanTransfer,
        p: &PendingTransfer,
    ) -> Result<(), Error> {
        let what = if p.is_add { "ADD" } else { "COPY" };
        let ignore = Ignore(&loaded.ignore);
        let ctx = BuildContext::with_canonical_root(loaded.root.clone(), &ignore, &GoGlob);
        let exclude_filter;
        let exclude: &dyn PathFilter = match &p.exclude {
            Some(m) => {
                exclude_filter = Ignore(m);
                &exclude_filter
            }
            None => &context::NoFilter,
        };
        // Resolve every pattern first: the number of top-level matches decides whether the
        // destination is a directory.
        let mut resolved: Vec<Vec<Entry>> = Vec::new();
        let mut top_level = 0usize;
        for source in &transfer.sources {
            if let Source::Path { pattern, .. } = source {
                let key = (pattern.clone(), transfer.exclude.clone());
                let entries = match loaded.sources.get(&key) {
                    Some(e) => e.clone(),
                    None => {
                        let e = ctx.resolve(pattern, exclude).map_err(|e| {
                            self.err(span, format!("{what} failed: {}", crate::error::chain(&e)))
                        })?;
                        loaded.sources.insert(key, e.clone());
                        e
                    }
                };
                top_level += entries.iter().filter(|e| e.within.is_none()).count();
                resolved.push(entries);
            }
        }
        let dest = transfer.dest.clone();
        let dest_is_dir = p.dest_dir || top_level > 1 || transfer.parents;
        let dest_base = dest.trim_end_matches('/');
        let under = |rel: &str| -> String {
            if dest_base.is_empty() {
                format!("/{rel}")
            } else {
                format!("{dest_base}/{rel}")
            }
        };
        let mut resolved = resolved.into_iter();
        for source in &mut transfer.sources {
            let Source::Path { resources, .. } = source else {
                continue;
            };
            let Some(entries) = resolved.next() else {
                continue;
            };
            let mut top_matched = String::new();
            for entry in entries {
                let (target, extract) = match &entry.within {
                    None => {
                        top_matched = entry.matched.clone();
                        let mut extract = false;
                        let target = if transfer.parents {
                            under(&entry.matched)
                        } else if entry.kind == ResourceKind::Dir {
                            if dest_base.is_empty() {
                                "/".to_owned()
                            } else {
                                dest_base.to_owned()
                            }
                        } else if p.is_add && entry.kind == ResourceKind::File && {
                            match loaded.archives.get(&entry.path) {
                                Some(&is) => is,
                                None => {
                                    let head = ctx.read_head(&entry.path, 512).map_err(|e| {
                                        self.err(
                                            span,
                                            format!("{what} failed: {}", crate::error::chain(&e)),
                                        )
                                    })?;
                                    let is = context::archive_kind(&head).is_some();
                                    loaded.archives.insert(entry.path.clone(), is);
                                    is
                                }
                            }
                        } {
                            extract = true;
                            if dest_base.is_empty() {
                                "/".to_owned()
                            } else {
                                dest_base.to_owned()
                            }
                        } else if dest_is_dir {
                            under(base_name(&entry.matched))
                        } else {
                            dest_base.to_owned()
                        };
                        (target, extract)
                    }
                    Some(within) => {
                        let target = if transfer.parents {
                            under(&format!("{top_matched}/{within}"))
                        } else {
                            under(within)
                        };
                        (target, false)
                    }
                };
                resources.push(Resource {
                    id: String::new(),
                    path: if entry.path.is_empty() {
                        ".".to_owned()
                    } else {
                        entry.path
                    },
                    kind: entry.kind,
                    target,
                    extract,
                });
            }
        }
        Ok(())
    }
}

/// `n` in decimal, written into `buf` (resource ids are minted per resource: no `format!`).
fn itoa(mut n: usize, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        // `n % 10` is below 10: the cast cannot truncate.
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

fn raw_heredoc(doc: &Heredoc) -> PlanHeredoc {
    PlanHeredoc {
        name: doc.name.clone(),
        content: doc.body(),
        expand: doc.expand,
    }
}

fn base_name(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

fn is_url(s: &str) -> bool {
    let lower = s.get(..8).unwrap_or(s).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

fn is_git(s: &str) -> bool {
    let no_frag = s.split('#').next().unwrap_or(s);
    no_frag.ends_with(".git") || s.starts_with("git@") || s.starts_with("git://")
}

/// The last path segment of a URL (query and fragment dropped).
fn url_file_name(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.split(['?', '#']).next().unwrap_or(rest);
    match path.split_once('/') {
        Some((_, p)) => p.rsplit('/').next().unwrap_or(""),
        None => "",
    }
}

/// Validates `--checksum=sha256:<64 hex>`, returning it lower-cased.
fn parse_checksum(c: &str) -> Result<String, String> {
    let bad = || format!("invalid --checksum {c:?}: expected sha256:<64 hex digits>");
    let (algo, hex) = c.split_once(':').ok_or_else(bad)?;
    if algo != "sha256" || hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    Ok(format!("sha256:{}", hex.to_ascii_lowercase()))
}

/// Most ports one EXPOSE range may expand to.
const MAX_EXPOSE_RANGE: u32 = 65_536;

/// Parses one EXPOSE word: `80`, `80/udp`, `8000-8010/tcp`.
fn parse_expose(word: &str) -> Result<Vec<(u32, String)>, String> {
    let bad = |why: &str| format!("invalid EXPOSE port {word:?}: {why}");
    let (ports, proto) = match word.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (word, "tcp".to_owned()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(bad("protocol must be tcp, udp or sctp"));
    }
    let num = |s: &str| -> Result<u32, String> {
        let n: u32 = s.parse().map_err(|_| bad("not a port number"))?;
        if n > 65_535 {
            return Err(bad("port out of range"));
        }
        Ok(n)
    };
    let (lo, hi) = match ports.split_once('-') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => {
            let n = num(ports)?;
            (n, n)
        }
    };
    if hi < lo || hi - lo >= MAX_EXPOSE_RANGE {
        return Err(bad("invalid range"));
    }
    Ok((lo..=hi).map(|n| (n, proto.clone())).collect())
}

/// A CMD or ENTRYPOINT as the image config stores it: buildkit's `dispatchCmd` and
/// `dispatchEntrypoint` turn the shell form into the argv `SHELL + [command]` with the SHELL in
/// force at that instruction, so a later SHELL does not change how the image starts.
fn stored_command(cmd: &Command, shell: &[String]) -> Command {
    match cmd {
        Command::Shell(line) => {
            Command::Exec(shell.iter().cloned().chain([line.clone()]).collect())
        }
        exec @ Command::Exec(_) => exec.clone(),
    }
}

/// A bind mount's `source=` as a relative, normalised path (`./a/../b/` → `b`; `/` → empty).
fn normalize_source(source: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in source.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

/// A tmpfs `size=` as buildkit's `units.RAMInBytes` reads it: a number with an optional
/// binary unit (`64m`, `1g`, `512k`, `100`).
fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim().to_ascii_lowercase();
    let v = v.strip_suffix('b').unwrap_or(&v);
    let (num, mult) = match v.chars().last()? {
        'k' => (&v[..v.len() - 1], 1u64 << 10),
        'm' => (&v[..v.len() - 1], 1 << 20),
        'g' => (&v[..v.len() - 1], 1 << 30),
        't' => (&v[..v.len() - 1], 1 << 40),
        _ => (v, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expose_forms() {
        assert_eq!(parse_expose("80").unwrap(), [(80, "tcp".to_owned())]);
        assert_eq!(parse_expose("53/UDP").unwrap(), [(53, "udp".to_owned())]);
        assert_eq!(parse_expose("8000-8002").unwrap().len(), 3);
        assert!(parse_expose("http").is_err());
        assert!(parse_expose("80/icmp").is_err());
        assert!(parse_expose("70000").is_err());
        assert!(parse_expose("9-1").is_err());
    }

    #[test]
    fn checksum_validation() {
        let hex = "A".repeat(64);
        assert_eq!(
            parse_checksum(&format!("sha256:{hex}")).unwrap(),
            format!("sha256:{}", "a".repeat(64))
        );
        assert!(parse_checksum("sha256:abc").is_err());
        assert!(parse_checksum(&format!("md5:{hex}")).is_err());
        assert!(parse_checksum(&format!("sha256:{}", "g".repeat(64))).is_err());
    }

    #[test]
    fn url_helpers() {
        assert_eq!(url_file_name("https://x.org/a/b.tar.gz?x=1"), "b.tar.gz");
        assert_eq!(url_file_name("https://x.org"), "");
        assert!(is_url("HTTPS://x.org/f"));
        assert!(!is_url("src/http"));
        assert!(is_git("https://github.com/a/b.git#main"));
    }

    #[test]
    fn resource_ids_are_decimal() {
        for n in [0usize, 7, 10, 12345, usize::MAX] {
            assert_eq!(itoa(n, &mut [0u8; 20]), n.to_string());
        }
    }

    #[test]
    fn vars_replace_in_place() {
        let mut v = Vars::default();
        v.set("A", "1".into());
        v.set("B", "2".into());
        v.set("A", "3".into());
        assert_eq!(v.list, [EnvVar::new("A", "3"), EnvVar::new("B", "2")]);
        assert_eq!(v.get("A"), Some("3"));
    }
}
