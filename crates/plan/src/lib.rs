//! The build-step model that firebuild's host and guest both speak.
//!
//! A [`BuildPlan`] is a Dockerfile resolved into [`Stage`]s, each an ordered list of [`Step`]s
//! (RUN, ADD or COPY). Every step carries everything needed to run it without the Dockerfile:
//! the environment, the build args in scope, the working directory, the user, the shell and the
//! [`Span`] it came from. Each stage also carries its [`ImageConfig`] (CMD, ENTRYPOINT, EXPOSE...).
//!
//! This crate holds data only (serde); producing a plan is `firebuild-dockerfile`'s job and
//! serving it is `firebuild-bootstrap`'s. The JSON form (`serde_json`) is the stable schema that
//! `firebuild-host plan --json` prints; [`SCHEMA_VERSION`] changes whenever it changes
//! incompatibly. The schema is documented in `docs/plan-json.md`.
//!
//! ```
//! use firebuild_plan::{Command, Run, Step, StepContext, StepKind, Span};
//!
//! let step = Step {
//!     index: 0,
//!     span: Span::lines(3, 3),
//!     context: StepContext::default(),
//!     kind: StepKind::Run(Run::new(Command::Shell("echo hi".into()))),
//! };
//! assert_eq!(step.kind.name(), "RUN");
//! assert_eq!(step.context.workdir, "/");
//! ```

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Version of the plan's JSON schema. Bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 3;

/// A region of a Dockerfile: 1-based lines and columns, end inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Span {
    /// First line (1-based).
    pub start_line: u32,
    /// First column (1-based, in characters).
    pub start_col: u32,
    /// Last line (1-based, inclusive).
    pub end_line: u32,
    /// Column just past the last character of the last line (1-based).
    pub end_col: u32,
}

impl Span {
    /// A span covering whole lines `start..=end`, columns unknown (set to 1).
    pub fn lines(start: u32, end: u32) -> Self {
        Self {
            start_line: start,
            start_col: 1,
            end_line: end,
            end_col: 1,
        }
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.start_line, self.start_col)
    }
}

/// A Dockerfile resolved into stages and steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildPlan {
    /// [`SCHEMA_VERSION`] of the producer.
    pub schema_version: u32,
    /// The Dockerfile path as the user gave it (for messages only).
    pub dockerfile: String,
    /// Index into `stages` of the stage whose result is the image.
    pub target: usize,
    /// The stages the target needs, in Dockerfile order (pruned stages are absent; their
    /// `index` keeps its original value).
    pub stages: Vec<Stage>,
    /// Build args given on the command line that no ARG consumed, and other non-fatal findings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl BuildPlan {
    /// The target stage, if `target` is in range.
    pub fn target_stage(&self) -> Option<&Stage> {
        self.stages.iter().find(|s| s.index == self.target)
    }

    /// Looks up a stage by its original index.
    pub fn stage(&self, index: usize) -> Option<&Stage> {
        self.stages.iter().find(|s| s.index == index)
    }

    /// All steps of all stages, in order.
    pub fn steps(&self) -> impl Iterator<Item = (&Stage, &Step)> {
        self.stages
            .iter()
            .flat_map(|stage| stage.steps.iter().map(move |step| (stage, step)))
    }

    /// A one-stage plan `FROM scratch` with these steps and an empty config (for tests and
    /// embedders that build plans by hand).
    pub fn scratch(steps: Vec<Step>) -> Self {
        BuildPlan {
            schema_version: SCHEMA_VERSION,
            dockerfile: "Dockerfile".to_owned(),
            target: 0,
            stages: vec![Stage {
                index: 0,
                name: None,
                base: Base::Scratch,
                platform: None,
                span: Span::lines(1, 1),
                steps,
                config: ImageConfig::default(),
            }],
            warnings: Vec::new(),
        }
    }

    /// The plan one build VM runs: stage `index` alone, as the target.
    pub fn only_stage(&self, index: usize) -> Option<BuildPlan> {
        let stage = self.stage(index)?.clone();
        Some(BuildPlan {
            schema_version: self.schema_version,
            dockerfile: self.dockerfile.clone(),
            target: index,
            stages: vec![stage],
            warnings: Vec::new(),
        })
    }
}

impl Stage {
    /// The disks a VM building this stage needs besides its root, each once, in first-use
    /// order: earlier stages and images its steps copy or bind from, and its cache mounts.
    pub fn disks(&self) -> Vec<DiskRole> {
        let mut out: Vec<DiskRole> = Vec::new();
        let mut add = |role: DiskRole| {
            if !out.contains(&role) {
                out.push(role);
            }
        };
        let origin = |o: &Origin, add: &mut dyn FnMut(DiskRole)| match o {
            Origin::Stage { index } => add(DiskRole::Stage(*index)),
            Origin::Image { reference } => add(DiskRole::Image(reference.clone())),
            Origin::Context => {}
        };
        for step in &self.steps {
            match &step.kind {
                StepKind::Copy(t) | StepKind::Add(t) => origin(&t.origin, &mut add),
                StepKind::Run(run) => {
                    for m in &run.mounts {
                        match m {
                            RunMount::Bind { from, .. } => origin(from, &mut add),
                            RunMount::Cache { id, .. } => add(DiskRole::Cache(id.clone())),
                            RunMount::Tmpfs { .. } | RunMount::Secret { .. } => {}
                        }
                    }
                }
                StepKind::Workdir => {}
            }
        }
        out
    }
}

/// One `FROM` section of a Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    /// Position of this stage among all stages of the Dockerfile (0-based).
    pub index: usize,
    /// The `AS name`, lower-cased as buildkit does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What the stage starts from.
    pub base: Base,
    /// `FROM --platform=...`, expanded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Span of the `FROM` instruction.
    pub span: Span,
    /// The RUN/ADD/COPY steps in order.
    pub steps: Vec<Step>,
    /// Image metadata accumulated by the stage.
    pub config: ImageConfig,
}

/// The starting point of a stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Base {
    /// `FROM scratch`: an empty filesystem.
    Scratch,
    /// An image reference (`debian:12`, `registry:5000/x@sha256:...`), expanded.
    Image {
        /// The reference as written after expansion.
        reference: String,
    },
    /// An earlier stage of the same Dockerfile.
    Stage {
        /// Index of that stage.
        index: usize,
    },
}

/// One build step: what runs or gets placed, with everything needed to do it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Position of the step within its stage (0-based).
    pub index: usize,
    /// Where the instruction is in the Dockerfile.
    pub span: Span,
    /// Env, args, workdir, user and shell in force for this step.
    pub context: StepContext,
    /// What the step does.
    pub kind: StepKind,
}

/// What is in force when a step runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepContext {
    /// `ENV` variables accumulated so far (including those inherited from a stage base), in
    /// declaration order with later values replacing earlier ones.
    pub env: Vec<EnvVar>,
    /// `ARG`s in scope with their resolved values (build args are visible to RUN as env vars
    /// but are not persisted in the image).
    pub args: Vec<EnvVar>,
    /// Absolute working directory.
    pub workdir: String,
    /// `USER` (`name`, `uid`, `name:group`, `uid:gid`), if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The shell for shell-form commands (`SHELL`), default `["/bin/sh", "-c"]`.
    pub shell: Vec<String>,
}

impl Default for StepContext {
    fn default() -> Self {
        Self {
            env: Vec::new(),
            args: Vec::new(),
            workdir: "/".to_owned(),
            user: None,
            shell: default_shell(),
        }
    }
}

impl StepContext {
    /// The environment a RUN step's process gets: args first, then env (env wins), as buildkit
    /// does.
    pub fn process_env(&self) -> Vec<EnvVar> {
        let mut out: Vec<EnvVar> = Vec::with_capacity(self.args.len() + self.env.len());
        for var in self.args.iter().chain(self.env.iter()) {
            if let Some(existing) = out.iter_mut().find(|v| v.name == var.name) {
                existing.value = var.value.clone();
            } else {
                out.push(var.clone());
            }
        }
        out
    }
}

/// The `PATH` a build step gets when its env has none, and the one buildkit puts in the config
/// of an image built `FROM scratch` (`system.DefaultPathEnv`).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The default shell, `["/bin/sh", "-c"]`.
pub fn default_shell() -> Vec<String> {
    vec!["/bin/sh".to_owned(), "-c".to_owned()]
}

/// A name/value pair (ENV, ARG, LABEL).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EnvVar {
    /// Variable name.
    pub name: String,
    /// Value after expansion.
    pub value: String,
}

impl EnvVar {
    /// Builds a pair.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// The kinds of step that change the filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StepKind {
    /// `RUN`.
    Run(Run),
    /// `COPY`.
    Copy(Transfer),
    /// `ADD`.
    Add(Transfer),
    /// `WORKDIR`: creates the step context's workdir (and missing parents) owned by the
    /// context's user, when the instruction is read (buildkit's `dispatchWorkdir` adds an
    /// `llb.Mkdir` with the USER in force), so a later USER or the lack of any RUN after it
    /// does not change who owns it or whether it exists.
    Workdir,
}

impl StepKind {
    /// The instruction name, upper case.
    pub fn name(&self) -> &'static str {
        match self {
            StepKind::Run(_) => "RUN",
            StepKind::Copy(_) => "COPY",
            StepKind::Add(_) => "ADD",
            StepKind::Workdir => "WORKDIR",
        }
    }
}

/// A command in shell form or exec form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "form", content = "value", rename_all = "snake_case")]
pub enum Command {
    /// Shell form: run through the step's shell (`shell[..] + [command]`).
    Shell(String),
    /// Exec form (JSON array): run directly, no shell.
    Exec(Vec<String>),
}

impl Command {
    /// The argv to execute given the shell in force.
    pub fn argv(&self, shell: &[String]) -> Vec<String> {
        match self {
            Command::Shell(cmd) => {
                let mut argv = shell.to_vec();
                argv.push(cmd.clone());
                argv
            }
            Command::Exec(argv) => argv.clone(),
        }
    }
}

/// `RUN --network=...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// The build's default network.
    #[default]
    Default,
    /// No network for this step.
    None,
    /// The host's network (in a VM build: the VM's own, same as default).
    Host,
}

/// A here-document attached to an instruction (`<<EOF ... EOF`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heredoc {
    /// The delimiter word (`EOF`).
    pub name: String,
    /// The body, after `<<-` tab stripping. For a COPY/ADD source it is also expanded when
    /// `expand` is set; for RUN it is kept as written (the shell expands it at run time).
    pub content: String,
    /// Whether the body is subject to variable expansion (delimiter unquoted).
    pub expand: bool,
}

/// A `RUN` step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// What to run. Shell-form text is kept unexpanded: the shell expands it at run time with
    /// the step's env, as Docker does.
    pub command: Command,
    /// `--network`.
    #[serde(default)]
    pub network: Network,
    /// Here-documents of the instruction. A RUN whose command is a lone heredoc runs the body as
    /// a script (through its shebang if any, else the shell).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub heredocs: Vec<Heredoc>,
    /// `--mount`s, in order, values expanded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<RunMount>,
}

impl Run {
    /// A RUN with default flags, no heredocs and no mounts.
    pub fn new(command: Command) -> Self {
        Self {
            command,
            network: Network::Default,
            heredocs: Vec::new(),
            mounts: Vec::new(),
        }
    }
}

/// `sharing=` of a cache mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sharing {
    /// Concurrent writers allowed (buildkit's default).
    #[default]
    Shared,
    /// Each concurrent writer gets its own instance.
    Private,
    /// One writer at a time.
    Locked,
}

/// One `RUN --mount`, resolved (values expanded, defaults applied as buildkit applies them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RunMount {
    /// `type=bind`: files of the context, a stage or an image, at `target`; read-only unless
    /// `rw` (writes are then discarded after the step).
    Bind {
        /// Absolute path in the step.
        target: String,
        /// Where the files come from.
        from: Origin,
        /// Path inside the origin (`/`-separated, relative, normalised; empty for its root).
        source: String,
        /// `rw`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        rw: bool,
        /// For a context bind: the files, as resources whose `target` is relative to the
        /// mount's root (`/` is the mount itself).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        resources: Vec<Resource>,
    },
    /// `type=cache`: a directory kept on the host between builds, never in the image.
    Cache {
        /// Absolute path in the step.
        target: String,
        /// `id=` (default: the target).
        id: String,
        /// `sharing=`.
        #[serde(default)]
        sharing: Sharing,
        /// `ro`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        readonly: bool,
        /// Owner of the cache directory when created (`uid=`, default 0).
        #[serde(default)]
        uid: u32,
        /// Group of the cache directory when created (`gid=`, default 0).
        #[serde(default)]
        gid: u32,
        /// Mode of the cache directory when created (`mode=`, default 0o755).
        mode: u32,
    },
    /// `type=tmpfs`: an empty memory file system for the step.
    Tmpfs {
        /// Absolute path in the step.
        target: String,
        /// `size=` in bytes, if limited.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
    },
    /// `type=secret`: a secret from the build's invocation, in memory during the step only.
    Secret {
        /// `id=` (default: the target's file name).
        id: String,
        /// File path in the step (default `/run/secrets/<id>`; none when only `env` is given).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<String>,
        /// Environment variable that gets the value (`env=`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        env: Option<String>,
        /// `required`: fail when the build was not given the secret (else the step runs
        /// without it).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        required: bool,
        /// File mode (default 0o400).
        mode: u32,
        /// File owner (default 0).
        #[serde(default)]
        uid: u32,
        /// File group (default 0).
        #[serde(default)]
        gid: u32,
    },
}

impl RunMount {
    /// The mount's path in the step, if it has one.
    pub fn target(&self) -> Option<&str> {
        match self {
            RunMount::Bind { target, .. }
            | RunMount::Cache { target, .. }
            | RunMount::Tmpfs { target, .. } => Some(target),
            RunMount::Secret { target, .. } => target.as_deref(),
        }
    }
}

/// The resource id under which the host serves secret `id` to the step that mounts it.
pub fn secret_resource_id(id: &str) -> String {
    format!("secret:{id}")
}

/// The secret id of a resource id made by [`secret_resource_id`].
pub fn secret_of_resource(resource: &str) -> Option<&str> {
    resource.strip_prefix("secret:")
}

/// What an extra disk attached to a build VM holds; the guest finds it by its serial
/// ([`DiskRole::serial`], at most 20 bytes, virtio-blk's limit).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DiskRole {
    /// The result of an earlier stage, read-only.
    Stage(usize),
    /// An image's file system (`COPY --from=<image>`, `--mount=from=<image>`), read-only.
    Image(String),
    /// A cache mount's directory, read-write.
    Cache(String),
}

impl DiskRole {
    /// The disk's serial and drive id: `stage_N`, or a prefix and 12 hex digits of a hash of the name.
    pub fn serial(&self) -> String {
        match self {
            DiskRole::Stage(i) => format!("stage_{i}"),
            DiskRole::Image(r) => format!("image_{:012x}", fnv1a(r.as_bytes()) >> 16),
            DiskRole::Cache(id) => format!("cache_{:012x}", fnv1a(id.as_bytes()) >> 16),
        }
    }
}

/// FNV-1a, 64 bits: stable across releases (the std hasher is not).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Where the sources of a COPY/ADD come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    /// The build context.
    Context,
    /// The filesystem of an earlier stage (`--from=<name|index>`).
    Stage {
        /// Index of that stage.
        index: usize,
    },
    /// The filesystem of an image (`--from=<image>`).
    Image {
        /// The image reference.
        reference: String,
    },
}

/// What a resolved source is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    /// A regular file.
    File,
    /// A directory: created at `target`. What it contains (after `.dockerignore` and
    /// `--exclude`) follows as resources of its own, each with its own `target`, so a consumer
    /// never walks a directory itself.
    Dir,
    /// A symbolic link (copied as a link).
    Symlink,
}

/// One COPY/ADD source as written, and what it resolved to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Source {
    /// A path or glob in the origin's filesystem.
    Path {
        /// The pattern as written (after expansion).
        pattern: String,
        /// The matches, sorted. For the context these are checked to exist and to stay inside
        /// it; for stages and images they are resolved in the guest (left empty here).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        resources: Vec<Resource>,
    },
    /// `ADD <url>`: fetched by the host, verified against `checksum` when given.
    Url {
        /// The URL.
        url: String,
        /// `--checksum=sha256:<hex>`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        checksum: Option<String>,
        /// Resource id the guest pulls.
        id: String,
        /// Absolute path in the guest where the downloaded file lands (the URL's file name
        /// under a directory destination, else the destination itself).
        #[serde(default)]
        target: String,
    },
    /// An inline here-document source (`COPY <<EOF /dest`).
    Heredoc {
        /// The here-document.
        heredoc: Heredoc,
    },
}

/// A concrete thing to transfer: one file, link or directory tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    /// Identifier the guest passes to `ResourceChunk` (opaque; unique within a plan).
    pub id: String,
    /// Path relative to the origin root (`/`-separated, normalised, never `..`).
    pub path: String,
    /// File, directory or symlink.
    pub kind: ResourceKind,
    /// Absolute path in the guest where this resource lands (for a directory: the directory
    /// whose contents it fills).
    pub target: String,
    /// ADD of a local tar archive: extract it at `target` instead of copying.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub extract: bool,
}

/// `--chown=user:group`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chown {
    /// User name or numeric id.
    pub user: String,
    /// Group name or numeric id; when absent, the user's primary group (or same id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// `--chmod=...`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Chmod {
    /// Octal mode, applied as is (`0755`).
    Octal(u32),
    /// Symbolic mode (`u+x,go-w`), validated, applied relative to each file's mode.
    Symbolic(String),
}

/// A `COPY` or `ADD` step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// Where sources come from.
    pub origin: Origin,
    /// The sources in order.
    pub sources: Vec<Source>,
    /// Destination as written after expansion, made absolute against the workdir.
    pub dest: String,
    /// `--chown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chown: Option<Chown>,
    /// `--chmod`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chmod: Option<Chmod>,
    /// `--link`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub link: bool,
    /// `--parents`: keep the source's parent directories under `dest`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub parents: bool,
    /// `--exclude` patterns (`.dockerignore` syntax), applied when walking sources.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// ADD only: `--keep-git-dir`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_git_dir: bool,
}

impl Transfer {
    /// A COPY-like transfer of `sources` from `origin` to `dest`, with no flags.
    pub fn new(origin: Origin, sources: Vec<Source>, dest: impl Into<String>) -> Self {
        Transfer {
            origin,
            sources,
            dest: dest.into(),
            chown: None,
            chmod: None,
            link: false,
            parents: false,
            exclude: Vec::new(),
            keep_git_dir: false,
        }
    }
}

/// `HEALTHCHECK`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Healthcheck {
    /// `HEALTHCHECK NONE`: disable any inherited check.
    None,
    /// `HEALTHCHECK [opts] CMD ...`.
    Cmd {
        /// The test command.
        command: Command,
        /// `--interval`, in milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        interval_ms: Option<u64>,
        /// `--timeout`, in milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
        /// `--start-period`, in milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        start_period_ms: Option<u64>,
        /// `--start-interval`, in milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        start_interval_ms: Option<u64>,
        /// `--retries`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retries: Option<u32>,
    },
}

/// Image metadata a stage accumulates (the OCI image config, in effect).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `ENV`, final values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// `CMD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Command>,
    /// `ENTRYPOINT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Command>,
    /// Final `WORKDIR`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Final `USER`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `SHELL`, if changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
    /// `EXPOSE` ports (`80/tcp`), sorted, unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exposed_ports: Vec<String>,
    /// `LABEL`s.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `VOLUME`s, sorted, unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// `STOPSIGNAL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// `HEALTHCHECK`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    /// `ONBUILD` triggers, as their original instruction text.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub onbuild: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BuildPlan {
        BuildPlan {
            schema_version: SCHEMA_VERSION,
            dockerfile: "Dockerfile".into(),
            target: 0,
            stages: vec![Stage {
                index: 0,
                name: Some("build".into()),
                base: Base::Image {
                    reference: "debian:12".into(),
                },
                platform: None,
                span: Span::lines(1, 1),
                steps: vec![
                    Step {
                        index: 0,
                        span: Span::lines(2, 2),
                        context: StepContext {
                            args: vec![EnvVar::new("V", "1")],
                            env: vec![EnvVar::new("V", "2")],
                            ..StepContext::default()
                        },
                        kind: StepKind::Run(Run::new(Command::Shell("make".into()))),
                    },
                    Step {
                        index: 1,
                        span: Span::lines(3, 3),
                        context: StepContext::default(),
                        kind: StepKind::Copy(Transfer {
                            origin: Origin::Context,
                            sources: vec![Source::Path {
                                pattern: "src".into(),
                                resources: vec![Resource {
                                    id: "ctx:src".into(),
                                    path: "src".into(),
                                    kind: ResourceKind::Dir,
                                    target: "/app".into(),
                                    extract: false,
                                }],
                            }],
                            dest: "/app".into(),
                            chown: None,
                            chmod: Some(Chmod::Octal(0o755)),
                            link: false,
                            parents: false,
                            exclude: vec![],
                            keep_git_dir: false,
                        }),
                    },
                ],
                config: ImageConfig::default(),
            }],
            warnings: vec![],
        }
    }

    #[test]
    fn json_round_trip_keeps_everything() {
        let plan = sample();
        let json = serde_json::to_string(&plan).unwrap();
        let back: BuildPlan = serde_json::from_str(&json).unwrap();
        assert_eq!(plan, back);
    }

    #[test]
    fn json_schema_shape_is_stable() {
        let json = serde_json::to_value(sample()).unwrap();
        let step = &json["stages"][0]["steps"][0];
        assert_eq!(step["kind"]["kind"], "run");
        assert_eq!(step["kind"]["command"]["form"], "shell");
        assert_eq!(step["context"]["workdir"], "/");
        assert_eq!(step["span"]["start_line"], 2);
        let copy = &json["stages"][0]["steps"][1]["kind"];
        assert_eq!(copy["kind"], "copy");
        assert_eq!(copy["origin"]["kind"], "context");
        assert_eq!(copy["sources"][0]["type"], "path");
        assert_eq!(copy["chmod"]["kind"], "octal");
    }

    #[test]
    fn url_sources_carry_their_target_and_read_without_it() {
        let src = Source::Url {
            url: "https://example.invalid/a.tgz".into(),
            checksum: None,
            id: "r1".into(),
            target: "/opt/a.tgz".into(),
        };
        let json = serde_json::to_value(&src).unwrap();
        assert_eq!(json["type"], "url");
        assert_eq!(json["target"], "/opt/a.tgz");
        // A producer of an older schema without `target` still reads.
        let old: Source =
            serde_json::from_str(r#"{"type":"url","url":"https://x/y","id":"r2"}"#).unwrap();
        assert!(matches!(old, Source::Url { target, .. } if target.is_empty()));
    }

    #[test]
    fn env_wins_over_args_in_process_env() {
        let plan = sample();
        let env = plan.stages[0].steps[0].context.process_env();
        assert_eq!(env, vec![EnvVar::new("V", "2")]);
    }

    #[test]
    fn shell_form_runs_through_the_shell() {
        let cmd = Command::Shell("echo $HOME".into());
        assert_eq!(cmd.argv(&default_shell()), ["/bin/sh", "-c", "echo $HOME"]);
        let exec = Command::Exec(vec!["ls".into(), "-l".into()]);
        assert_eq!(exec.argv(&default_shell()), ["ls", "-l"]);
    }
}
