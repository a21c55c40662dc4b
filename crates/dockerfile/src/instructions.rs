//! Typed instructions built from the parse tree, as buildkit's `instructions` package does.
//!
//! Words are kept raw (not expanded): plan resolution expands them with the environment in
//! force at each instruction. Every [`Instruction`] keeps its [`Span`].

use std::time::Duration;

use firebuild_plan::{Command, Network, Span};

use crate::ast::Heredoc;

/// One typed instruction with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// Where the instruction is (here-document bodies included).
    pub span: Span,
    /// The logical line as written (continuations joined).
    pub original: String,
    /// What the instruction is.
    pub kind: InstructionKind,
}

/// The instructions buildkit knows.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InstructionKind {
    /// `FROM [--platform=p] image [AS name]`.
    From(From),
    /// `RUN`.
    Run(Run),
    /// `COPY`.
    Copy(Transfer),
    /// `ADD`.
    Add(Transfer),
    /// `ENV k=v ...` (or legacy `ENV k v`).
    Env(Vec<KeyValue>),
    /// `ARG name[=default] ...`.
    Arg(Vec<ArgDef>),
    /// `LABEL k=v ...`.
    Label(Vec<KeyValue>),
    /// `WORKDIR path`.
    Workdir(String),
    /// `USER user[:group]`.
    User(String),
    /// `SHELL ["exe", "arg"...]` (JSON form only).
    Shell(Vec<String>),
    /// `CMD`.
    Cmd(Command),
    /// `ENTRYPOINT`.
    Entrypoint(Command),
    /// `EXPOSE port[/proto] ...` (sorted, as buildkit does).
    Expose(Vec<String>),
    /// `VOLUME path ...`.
    Volume(Vec<String>),
    /// `STOPSIGNAL signal`.
    StopSignal(String),
    /// `HEALTHCHECK`.
    Healthcheck(Healthcheck),
    /// `ONBUILD <instruction>`.
    Onbuild(Onbuild),
    /// `MAINTAINER name` (deprecated).
    Maintainer(String),
}

impl InstructionKind {
    /// The instruction keyword, upper case.
    pub fn name(&self) -> &'static str {
        match self {
            InstructionKind::From(_) => "FROM",
            InstructionKind::Run(_) => "RUN",
            InstructionKind::Copy(_) => "COPY",
            InstructionKind::Add(_) => "ADD",
            InstructionKind::Env(_) => "ENV",
            InstructionKind::Arg(_) => "ARG",
            InstructionKind::Label(_) => "LABEL",
            InstructionKind::Workdir(_) => "WORKDIR",
            InstructionKind::User(_) => "USER",
            InstructionKind::Shell(_) => "SHELL",
            InstructionKind::Cmd(_) => "CMD",
            InstructionKind::Entrypoint(_) => "ENTRYPOINT",
            InstructionKind::Expose(_) => "EXPOSE",
            InstructionKind::Volume(_) => "VOLUME",
            InstructionKind::StopSignal(_) => "STOPSIGNAL",
            InstructionKind::Healthcheck(_) => "HEALTHCHECK",
            InstructionKind::Onbuild(_) => "ONBUILD",
            InstructionKind::Maintainer(_) => "MAINTAINER",
        }
    }
}

/// `FROM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct From {
    /// The image reference or stage name as written (unexpanded).
    pub image: String,
    /// `AS name`, lower-cased.
    pub name: Option<String>,
    /// `--platform`.
    pub platform: Option<String>,
}

/// `RUN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// Shell form (the rest of the line, unexpanded) or exec form.
    pub command: Command,
    /// Here-documents of the instruction, in order.
    pub heredocs: Vec<Heredoc>,
    /// `--mount` (repeatable).
    pub mounts: Vec<Mount>,
    /// `--network`.
    pub network: Network,
    /// `--security`.
    pub security: Security,
}

/// `RUN --security=...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Security {
    /// The default sandbox.
    #[default]
    Sandbox,
    /// `insecure`.
    Insecure,
}

/// Kind of a `RUN --mount`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MountType {
    /// `type=bind` (the default).
    #[default]
    Bind,
    /// `type=cache`.
    Cache,
    /// `type=tmpfs`.
    Tmpfs,
    /// `type=secret`.
    Secret,
    /// `type=ssh`.
    Ssh,
}

/// Sharing mode of a cache mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sharing {
    /// `sharing=shared` (the default).
    #[default]
    Shared,
    /// `sharing=private`.
    Private,
    /// `sharing=locked`.
    Locked,
}

/// One `RUN --mount=...`, fields as written (values unexpanded).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mount {
    /// `type=`.
    pub kind: MountType,
    /// `target=` / `dst=` / `destination=`.
    pub target: Option<String>,
    /// `source=` / `src=`.
    pub source: Option<String>,
    /// `from=`.
    pub from: Option<String>,
    /// `ro` / `readonly` (bind mounts default to read-only, as in buildkit).
    pub readonly: bool,
    /// `id=`.
    pub id: Option<String>,
    /// `sharing=`.
    pub sharing: Sharing,
    /// `mode=` (octal).
    pub mode: Option<u32>,
    /// `uid=`.
    pub uid: Option<u32>,
    /// `gid=`.
    pub gid: Option<u32>,
    /// `required` (secret and ssh mounts).
    pub required: bool,
    /// `size=` (tmpfs), as written.
    pub size: Option<String>,
    /// `env=` (secret mounts).
    pub env: Option<String>,
}

/// A COPY/ADD source as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceArg {
    /// A path, glob or (ADD) URL, unexpanded.
    Path(String),
    /// A here-document source (`COPY <<EOF /dest`).
    Heredoc(Heredoc),
}

/// `COPY` / `ADD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// Sources in order.
    pub sources: Vec<SourceArg>,
    /// Destination as written.
    pub dest: String,
    /// `--from` (COPY only).
    pub from: Option<String>,
    /// `--chown`.
    pub chown: Option<String>,
    /// `--chmod`.
    pub chmod: Option<String>,
    /// `--link`.
    pub link: bool,
    /// `--parents` (COPY only).
    pub parents: bool,
    /// `--exclude` (repeatable).
    pub exclude: Vec<String>,
    /// `--checksum` (ADD only).
    pub checksum: Option<String>,
    /// `--keep-git-dir` (ADD only).
    pub keep_git_dir: bool,
}

/// A key/value pair of ENV or LABEL, unexpanded (quotes kept as written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
    /// Legacy `KEY value` form (no `=`).
    pub legacy: bool,
}

/// One name of an ARG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgDef {
    /// Name.
    pub name: String,
    /// `=default`, unexpanded.
    pub default: Option<String>,
}

/// `HEALTHCHECK`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Healthcheck {
    /// `HEALTHCHECK NONE`.
    None,
    /// `HEALTHCHECK [options] CMD ...`.
    Cmd {
        /// The test command.
        command: Command,
        /// `--interval`.
        interval: Option<Duration>,
        /// `--timeout`.
        timeout: Option<Duration>,
        /// `--start-period`.
        start_period: Option<Duration>,
        /// `--start-interval`.
        start_interval: Option<Duration>,
        /// `--retries`.
        retries: Option<u32>,
    },
}

/// `ONBUILD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Onbuild {
    /// The trigger as buildkit stores it in the image: the text after `ONBUILD`, with any
    /// here-document bodies appended.
    pub expression: String,
    /// The trigger, typed.
    pub trigger: Box<Instruction>,
}
