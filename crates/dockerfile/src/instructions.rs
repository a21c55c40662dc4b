//! Typed instructions built from the parse tree, as buildkit's `instructions` package does.
//!
//! Words are kept raw (not expanded): plan resolution expands them with the environment in
//! force at each instruction. Every [`Instruction`] keeps its [`Span`].

use std::collections::HashMap;
use std::time::Duration;

use firebuild_plan::{Command, Network, Span};

use crate::ast::{Ast, Heredoc, Node};
use crate::error::{Error, SyntaxError, suggest};
use crate::parser::parse_heredoc_word;

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
        /// `--interval` (absent or zero: the default).
        interval: Option<Duration>,
        /// `--timeout`.
        timeout: Option<Duration>,
        /// `--start-period`.
        start_period: Option<Duration>,
        /// `--start-interval`.
        start_interval: Option<Duration>,
        /// `--retries` (absent or zero: the default).
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

impl Ast {
    /// The typed instructions of this tree (see [`from_ast`]).
    pub fn instructions(&self) -> Result<Vec<Instruction>, Error> {
        from_ast(self)
    }
}

/// Builds the typed instructions of a parsed Dockerfile, checking flags and argument counts
/// as buildkit does. Errors carry the instruction's span (or the offending flag's).
///
/// ```
/// use firebuild_dockerfile::instructions::{InstructionKind, from_ast};
///
/// let ast = firebuild_dockerfile::parse("FROM alpine AS Build\nCOPY --link a b /dst/\n").unwrap();
/// let ins = from_ast(&ast).unwrap();
/// let InstructionKind::From(from) = &ins[0].kind else { unreachable!() };
/// assert_eq!(from.name.as_deref(), Some("build"));
/// let InstructionKind::Copy(copy) = &ins[1].kind else { unreachable!() };
/// assert!(copy.link);
/// assert_eq!(copy.dest, "/dst/");
/// ```
pub fn from_ast(ast: &Ast) -> Result<Vec<Instruction>, Error> {
    ast.nodes
        .iter()
        .map(|node| {
            Builder {
                src: &ast.source,
                node,
                heredocs: &node.heredocs,
                span: node.span,
            }
            .build()
        })
        .collect()
}

/// Alias of [`from_ast`].
pub fn parse_instructions(ast: &Ast) -> Result<Vec<Instruction>, Error> {
    from_ast(ast)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FlagType {
    Bool,
    String,
    Strings,
}

#[derive(Default)]
struct Flags {
    bools: HashMap<&'static str, bool>,
    strings: HashMap<&'static str, String>,
    lists: HashMap<&'static str, Vec<String>>,
}

impl Flags {
    fn bool(&self, name: &str) -> bool {
        self.bools.get(name).copied().unwrap_or(false)
    }

    fn string(&mut self, name: &str) -> Option<String> {
        self.strings.remove(name)
    }

    fn list(&mut self, name: &str) -> Vec<String> {
        self.lists.remove(name).unwrap_or_default()
    }
}

struct Builder<'a> {
    src: &'a str,
    node: &'a Node,
    heredocs: &'a [Heredoc],
    span: Span,
}

impl Builder<'_> {
    fn err(&self, kind: SyntaxError) -> Error {
        Error::at(self.src, self.span, kind)
    }

    /// An error pointing at `token` on the instruction's first line when it can be found
    /// there, else at the whole instruction.
    fn err_at(&self, token: &str, kind: SyntaxError) -> Error {
        Error::at(self.src, self.token_span(token), kind)
    }

    fn token_span(&self, token: &str) -> Span {
        let line_no = self.span.start_line;
        let Some(line) = (line_no as usize)
            .checked_sub(1)
            .and_then(|i| self.src.split('\n').nth(i))
        else {
            return self.span;
        };
        let line = if line_no == 1 {
            line.strip_prefix('\u{feff}').unwrap_or(line)
        } else {
            line
        };
        let skip: usize = line
            .chars()
            .take(self.span.start_col.saturating_sub(1) as usize)
            .map(char::len_utf8)
            .sum();
        let Some(found) = line.get(skip..).and_then(|rest| rest.find(token)) else {
            return self.span;
        };
        let col = line[..skip + found].chars().count() + 1;
        let len = token.chars().count();
        let col = u32::try_from(col).unwrap_or(u32::MAX);
        Span {
            start_line: line_no,
            start_col: col,
            end_line: line_no,
            end_col: col.saturating_add(u32::try_from(len).unwrap_or(0)),
        }
    }

    fn name(&self) -> String {
        self.node.command.to_ascii_uppercase()
    }

    /// Buildkit's `BFlags.Parse`.
    fn flags(&self, defs: &[(&'static str, FlagType)]) -> Result<Flags, Error> {
        let mut out = Flags::default();
        let mut used: Vec<&'static str> = Vec::new();
        for raw in &self.node.flags {
            let Some(arg) = raw.strip_prefix("--") else {
                return Err(self.err_at(
                    raw,
                    SyntaxError::Other(format!("arg should start with -- : {raw}")),
                ));
            };
            let (name, value) = match arg.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (arg, None),
            };
            let Some(&(def_name, kind)) = defs.iter().find(|(n, _)| *n == name) else {
                let names: Vec<&str> = defs.iter().map(|(n, _)| *n).collect();
                return Err(self.err_at(
                    raw,
                    SyntaxError::UnknownFlag {
                        instruction: self.name(),
                        flag: name.to_owned(),
                        suggestion: suggest(name, &names, true).map(|s| format!("--{s}")),
                    },
                ));
            };
            if used.contains(&def_name) && kind != FlagType::Strings {
                return Err(self.err_at(raw, SyntaxError::DuplicateFlag(name.to_owned())));
            }
            used.push(def_name);
            match kind {
                FlagType::Bool => {
                    let v = match value {
                        None => true,
                        Some("") => {
                            return Err(
                                self.err_at(raw, SyntaxError::MissingFlagValue(name.to_owned()))
                            );
                        }
                        Some(v) if v.eq_ignore_ascii_case("true") => true,
                        Some(v) if v.eq_ignore_ascii_case("false") => false,
                        Some(v) => {
                            return Err(self.err_at(
                                raw,
                                SyntaxError::NotBool {
                                    flag: name.to_owned(),
                                    value: v.to_owned(),
                                },
                            ));
                        }
                    };
                    out.bools.insert(def_name, v);
                }
                FlagType::String | FlagType::Strings => {
                    let Some(v) = value else {
                        return Err(
                            self.err_at(raw, SyntaxError::MissingFlagValue(name.to_owned()))
                        );
                    };
                    if kind == FlagType::String {
                        out.strings.insert(def_name, v.to_owned());
                    } else {
                        out.lists.entry(def_name).or_default().push(v.to_owned());
                    }
                }
            }
        }
        Ok(out)
    }

    fn no_flags(&self) -> Result<(), Error> {
        self.flags(&[]).map(|_| ())
    }

    fn exactly_one(&self) -> Result<String, Error> {
        match self.node.args.as_slice() {
            [one] => Ok(one.clone()),
            _ => Err(self.err(SyntaxError::ExactlyOneArgument(self.name()))),
        }
    }

    fn command(&self, args: &[String]) -> Command {
        if self.node.json {
            Command::Exec(args.to_vec())
        } else {
            Command::Shell(args.join(" "))
        }
    }

    fn build(&self) -> Result<Instruction, Error> {
        let node = self.node;
        let args = &node.args;
        let kind = match node.command.as_str() {
            "env" => {
                self.no_flags()?;
                InstructionKind::Env(self.key_values("ENV")?)
            }
            "label" => {
                self.no_flags()?;
                InstructionKind::Label(self.key_values("LABEL")?)
            }
            "maintainer" => {
                let who = self.exactly_one()?;
                self.no_flags()?;
                InstructionKind::Maintainer(who)
            }
            "add" | "copy" => self.transfer()?,
            "from" => self.from()?,
            "onbuild" => self.onbuild()?,
            "workdir" => {
                let dir = self.exactly_one()?;
                self.no_flags()?;
                InstructionKind::Workdir(dir)
            }
            "run" => self.run()?,
            "cmd" => {
                self.no_flags()?;
                InstructionKind::Cmd(self.command(args))
            }
            "entrypoint" => {
                self.no_flags()?;
                InstructionKind::Entrypoint(self.command(args))
            }
            "healthcheck" => self.healthcheck()?,
            "expose" => {
                if args.is_empty() {
                    return Err(self.err(SyntaxError::AtLeastOneArgument("EXPOSE".into())));
                }
                self.no_flags()?;
                let mut ports = args.clone();
                ports.sort();
                InstructionKind::Expose(ports)
            }
            "user" => {
                let user = self.exactly_one()?;
                self.no_flags()?;
                InstructionKind::User(user)
            }
            "volume" => {
                if args.is_empty() {
                    return Err(self.err(SyntaxError::AtLeastOneArgument("VOLUME".into())));
                }
                self.no_flags()?;
                let mut vols = Vec::with_capacity(args.len());
                for v in args {
                    let v = v.trim();
                    if v.is_empty() {
                        return Err(self.err(SyntaxError::EmptyVolume));
                    }
                    vols.push(v.to_owned());
                }
                InstructionKind::Volume(vols)
            }
            // Buildkit parses no flags for STOPSIGNAL and ARG: any given are ignored.
            "stopsignal" => InstructionKind::StopSignal(self.exactly_one()?),
            "arg" => self.arg()?,
            "shell" => {
                self.no_flags()?;
                if args.is_empty() {
                    return Err(self.err(SyntaxError::AtLeastOneArgument("SHELL".into())));
                }
                if !node.json {
                    return Err(self.err(SyntaxError::NotJson("SHELL".into())));
                }
                InstructionKind::Shell(args.clone())
            }
            _ => {
                return Err(self.err_at(
                    &node.keyword,
                    SyntaxError::UnknownInstruction {
                        name: node.keyword.clone(),
                        suggestion: suggest(&node.keyword, INSTRUCTIONS, false).map(str::to_owned),
                    },
                ));
            }
        };
        Ok(Instruction {
            span: self.span,
            original: node.original.clone(),
            kind,
        })
    }

    fn key_values(&self, name: &str) -> Result<Vec<KeyValue>, Error> {
        let args = &self.node.args;
        if args.is_empty() {
            return Err(self.err(SyntaxError::AtLeastOneArgument(name.into())));
        }
        if !args.len().is_multiple_of(3) {
            return Err(self.err(SyntaxError::Other(format!(
                "bad input to {name}, too many arguments"
            ))));
        }
        let mut out = Vec::with_capacity(args.len() / 3);
        for triple in args.chunks(3) {
            if triple[0].is_empty() {
                return Err(self.err(SyntaxError::BlankName(name.into())));
            }
            out.push(KeyValue {
                key: triple[0].clone(),
                value: triple[1].clone(),
                legacy: triple[2].is_empty(),
            });
        }
        Ok(out)
    }

    fn arg(&self) -> Result<InstructionKind, Error> {
        let args = &self.node.args;
        if args.is_empty() {
            return Err(self.err(SyntaxError::AtLeastOneArgument("ARG".into())));
        }
        let mut defs = Vec::with_capacity(args.len());
        for arg in args {
            let def = match arg.split_once('=') {
                Some(("", _)) => {
                    return Err(self.err_at(arg, SyntaxError::BlankName("ARG".into())));
                }
                Some((name, value)) => ArgDef {
                    name: name.to_owned(),
                    default: Some(value.to_owned()),
                },
                None => ArgDef {
                    name: arg.clone(),
                    default: None,
                },
            };
            defs.push(def);
        }
        Ok(InstructionKind::Arg(defs))
    }

    fn from(&self) -> Result<InstructionKind, Error> {
        let args = &self.node.args;
        let name = match args.as_slice() {
            [_] => None,
            [_, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => {
                let lower = name.to_lowercase();
                if !valid_stage_name(&lower) {
                    return Err(self.err_at(name, SyntaxError::StageName(name.clone())));
                }
                Some(lower)
            }
            _ => return Err(self.err(SyntaxError::FromArguments)),
        };
        let mut flags = self.flags(&[("platform", FlagType::String)])?;
        Ok(InstructionKind::From(From {
            image: args[0].clone(),
            name,
            platform: flags.string("platform"),
        }))
    }

    fn transfer(&self) -> Result<InstructionKind, Error> {
        let is_add = self.node.command == "add";
        let name = self.name();
        let args = &self.node.args;
        if args.len() < 2 {
            return Err(self.err(SyntaxError::NoDestination(name)));
        }
        let mut flags = if is_add {
            self.flags(&[
                ("exclude", FlagType::Strings),
                ("chown", FlagType::String),
                ("chmod", FlagType::String),
                ("link", FlagType::Bool),
                ("keep-git-dir", FlagType::Bool),
                ("checksum", FlagType::String),
            ])?
        } else {
            self.flags(&[
                ("exclude", FlagType::Strings),
                ("parents", FlagType::Bool),
                ("chown", FlagType::String),
                ("from", FlagType::String),
                ("chmod", FlagType::String),
                ("link", FlagType::Bool),
            ])?
        };
        let (dest, srcs) = args
            .split_last()
            .ok_or_else(|| self.err(SyntaxError::NoDestination(self.name())))?;
        if parse_heredoc_word(dest).is_some() {
            return Err(self.err_at(dest, SyntaxError::HeredocDestination(name)));
        }
        let mut sources = Vec::with_capacity(srcs.len());
        for src in srcs {
            match parse_heredoc_word(src) {
                Some(mut doc) => {
                    if let Some(body) = self.heredocs.iter().find(|h| h.name == doc.name) {
                        doc.content = body.content.clone();
                    }
                    sources.push(SourceArg::Heredoc(doc));
                }
                None => sources.push(SourceArg::Path(src.clone())),
            }
        }
        let t = Transfer {
            sources,
            dest: dest.clone(),
            from: flags.string("from"),
            chown: flags.string("chown"),
            chmod: flags.string("chmod"),
            link: flags.bool("link"),
            parents: flags.bool("parents"),
            exclude: flags.list("exclude"),
            checksum: flags.string("checksum"),
            keep_git_dir: flags.bool("keep-git-dir"),
        };
        Ok(if is_add {
            InstructionKind::Add(t)
        } else {
            InstructionKind::Copy(t)
        })
    }

    fn onbuild(&self) -> Result<InstructionKind, Error> {
        let flat = self.node.flat_args();
        let Some(first) = flat.first() else {
            return Err(self.err(SyntaxError::AtLeastOneArgument("ONBUILD".into())));
        };
        self.no_flags()?;
        let trigger = first.trim().to_uppercase();
        match trigger.as_str() {
            "ONBUILD" => return Err(self.err(SyntaxError::OnbuildChain)),
            "MAINTAINER" | "FROM" => return Err(self.err(SyntaxError::OnbuildTrigger(trigger))),
            _ => {}
        }
        let Some(sub) = self.node.sub.as_deref() else {
            return Err(self.err(SyntaxError::AtLeastOneArgument("ONBUILD".into())));
        };
        let mut expression = strip_onbuild_keyword(&self.node.original).to_owned();
        for doc in self.heredocs {
            expression.push('\n');
            expression.push_str(&doc.content);
            expression.push_str(&doc.name);
        }
        let inner = Builder {
            src: self.src,
            node: sub,
            heredocs: self.heredocs,
            span: self.span,
        }
        .build()?;
        Ok(InstructionKind::Onbuild(Onbuild {
            expression,
            trigger: Box::new(inner),
        }))
    }

    fn run(&self) -> Result<InstructionKind, Error> {
        let mut flags = self.flags(&[
            ("mount", FlagType::Strings),
            ("network", FlagType::String),
            ("security", FlagType::String),
        ])?;
        let args = &self.node.args;
        if args.is_empty() && !self.node.json {
            return Err(self.err(SyntaxError::AtLeastOneArgument("RUN".into())));
        }
        let mut mounts = Vec::new();
        for spec in flags.list("mount") {
            let mount = parse_mount(&spec).map_err(|reason| {
                self.err_at(
                    &spec,
                    SyntaxError::BadFlagValue {
                        flag: "mount".into(),
                        value: spec.clone(),
                        reason,
                    },
                )
            })?;
            mounts.push(mount);
        }
        let network = match flags.string("network").as_deref() {
            None | Some("default") => Network::Default,
            Some("none") => Network::None,
            Some("host") => Network::Host,
            Some(other) => {
                return Err(self.err_at(
                    other,
                    SyntaxError::BadFlagValue {
                        flag: "network".into(),
                        value: other.to_owned(),
                        reason: "expected default, none or host".into(),
                    },
                ));
            }
        };
        let security = match flags.string("security").as_deref() {
            None | Some("sandbox") => Security::Sandbox,
            Some("insecure") => Security::Insecure,
            Some(other) => {
                return Err(self.err_at(
                    other,
                    SyntaxError::BadFlagValue {
                        flag: "security".into(),
                        value: other.to_owned(),
                        reason: "expected sandbox or insecure".into(),
                    },
                ));
            }
        };
        Ok(InstructionKind::Run(Run {
            command: self.command(args),
            heredocs: self.heredocs.to_vec(),
            mounts,
            network,
            security,
        }))
    }

    fn healthcheck(&self) -> Result<InstructionKind, Error> {
        let args = &self.node.args;
        let Some(first) = args.first() else {
            return Err(self.err(SyntaxError::AtLeastOneArgument("HEALTHCHECK".into())));
        };
        let typ = first.to_uppercase();
        let rest = &args[1..];
        if typ == "NONE" {
            if !rest.is_empty() {
                return Err(self.err(SyntaxError::HealthcheckNoneArgs));
            }
            return Ok(InstructionKind::Healthcheck(Healthcheck::None));
        }
        let mut flags = self.flags(&[
            ("interval", FlagType::String),
            ("timeout", FlagType::String),
            ("start-period", FlagType::String),
            ("start-interval", FlagType::String),
            ("retries", FlagType::String),
        ])?;
        if typ != "CMD" {
            return Err(self.err_at(first, SyntaxError::HealthcheckType(typ)));
        }
        let command = self.command(rest);
        let empty = match &command {
            Command::Exec(argv) => argv.is_empty(),
            Command::Shell(s) => s.trim().is_empty(),
        };
        if empty {
            return Err(self.err(SyntaxError::HealthcheckMissingCommand));
        }
        let mut interval_of = |name: &'static str| -> Result<Option<Duration>, Error> {
            let Some(value) = flags.string(name) else {
                return Ok(None);
            };
            let bad = |reason: String| {
                self.err_at(
                    &format!("--{name}"),
                    SyntaxError::BadFlagValue {
                        flag: name.into(),
                        value: value.clone(),
                        reason,
                    },
                )
            };
            let nanos = parse_go_duration(&value).map_err(bad)?;
            if nanos == 0 {
                return Ok(None);
            }
            if nanos < 1_000_000 {
                return Err(bad("cannot be less than 1ms".into()));
            }
            let nanos = u64::try_from(nanos).map_err(|_| bad("duration out of range".into()))?;
            Ok(Some(Duration::from_nanos(nanos)))
        };
        let interval = interval_of("interval")?;
        let timeout = interval_of("timeout")?;
        let start_period = interval_of("start-period")?;
        let start_interval = interval_of("start-interval")?;
        let retries = match flags.string("retries") {
            None => None,
            Some(v) => {
                let bad = |reason: &str| {
                    self.err_at(
                        "--retries",
                        SyntaxError::BadFlagValue {
                            flag: "retries".into(),
                            value: v.clone(),
                            reason: reason.into(),
                        },
                    )
                };
                let n: i32 = v.parse().map_err(|_| bad("not a 32-bit integer"))?;
                if n < 0 {
                    return Err(bad("cannot be negative"));
                }
                u32::try_from(n).ok().filter(|n| *n > 0)
            }
        };
        Ok(InstructionKind::Healthcheck(Healthcheck::Cmd {
            command,
            interval,
            timeout,
            start_period,
            start_interval,
            retries,
        }))
    }
}

/// Every instruction buildkit knows, for suggestions.
const INSTRUCTIONS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// `(?i)^\s*ONBUILD\s*` removed.
fn strip_onbuild_keyword(original: &str) -> &str {
    let t = original.trim_start_matches([' ', '\t', '\n', '\r', '\u{0c}']);
    match t.get(..7) {
        Some(kw) if kw.eq_ignore_ascii_case("onbuild") => {
            t[7..].trim_start_matches([' ', '\t', '\n', '\r', '\u{0c}'])
        }
        _ => original,
    }
}

/// `^[a-z][a-z0-9-_.]*$`.
fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

/// Go's `time.ParseDuration`, in nanoseconds.
pub fn parse_go_duration(s: &str) -> Result<i128, String> {
    let orig = s;
    let (neg, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(format!("invalid duration {orig:?}"));
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let int_part = &rest[..int_len];
        rest = &rest[int_len..];
        let mut frac_part = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            frac_part = &after_dot[..frac_len];
            rest = &after_dot[frac_len..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(format!("invalid duration {orig:?}"));
        }
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map_or(rest.len(), |(i, _)| i);
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale: i128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(format!("missing unit in duration {orig:?}")),
            other => return Err(format!("unknown unit {other:?} in duration {orig:?}")),
        };
        let int: i128 = if int_part.is_empty() {
            0
        } else {
            int_part
                .parse::<i128>()
                .map_err(|_| format!("invalid duration {orig:?}"))?
        };
        let mut value = int
            .checked_mul(scale)
            .ok_or_else(|| format!("invalid duration {orig:?}"))?;
        let mut frac_scale = scale;
        for d in frac_part.bytes().take(30) {
            frac_scale /= 10;
            value += i128::from(d - b'0') * frac_scale;
        }
        total = total
            .checked_add(value)
            .filter(|t| *t <= i128::from(i64::MAX))
            .ok_or_else(|| format!("invalid duration {orig:?}"))?;
    }
    Ok(if neg { -total } else { total })
}

/// Splits a CSV record (`encoding/csv` rules: fields separated by `,`, a field starting
/// with `"` is quoted and `""` inside it is a quote).
fn split_csv(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("unterminated quoted field".into()),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            match chars.next() {
                None => {
                    out.push(field);
                    return Ok(out);
                }
                Some(',') => out.push(field),
                Some(c) => return Err(format!("unexpected {c:?} after quoted field")),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        out.push(field);
                        return Ok(out);
                    }
                    Some(',') => {
                        out.push(field);
                        break;
                    }
                    Some('"') => return Err("bare \" in non-quoted field".into()),
                    Some(c) => field.push(c),
                }
            }
        }
    }
}

fn parse_bool_value(key: &str, value: Option<&str>) -> Result<bool, String> {
    match value {
        None => Ok(true),
        Some(v) => match v.to_ascii_lowercase().as_str() {
            "1" | "t" | "true" => Ok(true),
            "0" | "f" | "false" => Ok(false),
            _ => Err(format!("invalid value for {key}: {v}")),
        },
    }
}

/// Parses one `--mount` value as buildkit's `runmount` does (fields unexpanded).
pub fn parse_mount(spec: &str) -> Result<Mount, String> {
    let fields = split_csv(spec)?;
    let mut m = Mount::default();
    let mut readonly: Option<bool> = None;
    // The type decides defaults, so find it first.
    for field in &fields {
        if let Some(("type", v)) = field.split_once('=').map(|(k, v)| (k.trim(), v)) {
            m.kind = match v.to_ascii_lowercase().as_str() {
                "bind" => MountType::Bind,
                "cache" => MountType::Cache,
                "tmpfs" => MountType::Tmpfs,
                "secret" => MountType::Secret,
                "ssh" => MountType::Ssh,
                other => return Err(format!("unsupported mount type {other:?}")),
            };
        }
    }
    for field in &fields {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v)),
            None => (field.trim().to_ascii_lowercase(), None),
        };
        let need = |value: Option<&str>| {
            value
                .map(str::to_owned)
                .ok_or_else(|| format!("invalid field '{field}' must be a key=value pair"))
        };
        let number = |value: Option<&str>, radix: u32| -> Result<u32, String> {
            let v =
                value.ok_or_else(|| format!("invalid field '{field}' must be a key=value pair"))?;
            u32::from_str_radix(v, radix).map_err(|_| format!("invalid value for {key}: {v}"))
        };
        match key.as_str() {
            "type" => {}
            "target" | "dst" | "destination" => m.target = Some(need(value)?),
            "source" | "src" => m.source = Some(need(value)?),
            "from" => m.from = Some(need(value)?),
            "ro" | "readonly" => readonly = Some(parse_bool_value(&key, value)?),
            "rw" | "readwrite" => readonly = Some(!parse_bool_value(&key, value)?),
            "id" => m.id = Some(need(value)?),
            "sharing" => {
                m.sharing = match need(value)?.to_ascii_lowercase().as_str() {
                    "shared" => Sharing::Shared,
                    "private" => Sharing::Private,
                    "locked" => Sharing::Locked,
                    other => return Err(format!("unsupported sharing value {other:?}")),
                }
            }
            "mode" => m.mode = Some(number(value, 8)?),
            "uid" => m.uid = Some(number(value, 10)?),
            "gid" => m.gid = Some(number(value, 10)?),
            "required" => m.required = parse_bool_value(&key, value)?,
            "size" => m.size = Some(need(value)?),
            "env" => m.env = Some(need(value)?),
            _ => return Err(format!("unexpected key '{key}' in '{field}'")),
        }
    }
    m.readonly = readonly.unwrap_or(m.kind == MountType::Bind);
    match m.kind {
        MountType::Bind | MountType::Cache | MountType::Tmpfs if m.target.is_none() => {
            Err("mount target is required".into())
        }
        MountType::Secret if m.target.is_none() && m.id.is_none() && m.env.is_none() => {
            Err("secret mount needs an id, a target or an env".into())
        }
        _ => Ok(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(src: &str) -> InstructionKind {
        let ast = crate::parse(src).unwrap();
        from_ast(&ast).unwrap().pop().unwrap().kind
    }

    fn fail(src: &str) -> Error {
        let ast = crate::parse(src).unwrap();
        from_ast(&ast).unwrap_err()
    }

    #[test]
    fn from_keeps_image_platform_and_lowercases_the_name() {
        let InstructionKind::From(f) = one("FROM --platform=$BUILDPLATFORM golang:1 AS Build\n")
        else {
            panic!()
        };
        assert_eq!(f.image, "golang:1");
        assert_eq!(f.name.as_deref(), Some("build"));
        assert_eq!(f.platform.as_deref(), Some("$BUILDPLATFORM"));
        assert!(matches!(
            fail("FROM a b\n").kind(),
            Some(SyntaxError::FromArguments)
        ));
        assert!(matches!(
            fail("FROM a AS 1x\n").kind(),
            Some(SyntaxError::StageName(n)) if n == "1x"
        ));
    }

    #[test]
    fn unknown_instruction_points_at_the_keyword() {
        let err = fail("FROM a\n  RUNN make\n");
        assert_eq!(
            err.kind(),
            Some(&SyntaxError::UnknownInstruction {
                name: "RUNN".into(),
                suggestion: Some("RUN".into())
            })
        );
        let span = err.span().unwrap();
        assert_eq!((span.start_line, span.start_col, span.end_col), (2, 3, 7));
        let text = err.with_file("Dockerfile").to_string();
        assert!(
            text.starts_with("Dockerfile:2:3: unknown instruction: RUNN (did you mean RUN?)\n"),
            "{text}"
        );
        assert!(text.ends_with("  ^^^^"), "{text}");
    }

    #[test]
    fn unknown_flag_points_at_the_flag() {
        let err = fail("FROM a\nCOPY --chown=1 --frm=b x y\n");
        assert_eq!(
            err.kind(),
            Some(&SyntaxError::UnknownFlag {
                instruction: "COPY".into(),
                flag: "frm".into(),
                suggestion: Some("--from".into()),
            })
        );
        assert_eq!(err.span().unwrap().start_col, 16);
        assert!(matches!(
            fail("FROM a\nADD --from=b x y\n").kind(),
            Some(SyntaxError::UnknownFlag { flag, .. }) if flag == "from"
        ));
        assert!(matches!(
            fail("FROM a\nCOPY --parents=maybe x y\n").kind(),
            Some(SyntaxError::NotBool { flag, value }) if flag == "parents" && value == "maybe"
        ));
    }

    #[test]
    fn flag_values_missing_or_duplicated_are_errors() {
        assert_eq!(
            fail("FROM a\nCOPY --from x y\n").kind(),
            Some(&SyntaxError::MissingFlagValue("from".into()))
        );
        assert_eq!(
            fail("FROM a\nCOPY --link= x y\n").kind(),
            Some(&SyntaxError::MissingFlagValue("link".into()))
        );
        assert_eq!(
            fail("FROM a\nCOPY --from=a --from=b x y\n").kind(),
            Some(&SyntaxError::DuplicateFlag("from".into()))
        );
    }

    #[test]
    fn copy_and_add_flags_are_typed() {
        let InstructionKind::Copy(c) = one(
            "COPY --from=build --chown=app:app --chmod=755 --link --parents --exclude=*.md --exclude=.git a b /dst\n",
        ) else {
            panic!()
        };
        assert_eq!(c.from.as_deref(), Some("build"));
        assert_eq!(c.chown.as_deref(), Some("app:app"));
        assert_eq!(c.chmod.as_deref(), Some("755"));
        assert!(c.link && c.parents);
        assert_eq!(c.exclude, ["*.md", ".git"]);
        assert_eq!(
            c.sources,
            [SourceArg::Path("a".into()), SourceArg::Path("b".into())]
        );
        assert_eq!(c.dest, "/dst");
        let InstructionKind::Add(a) =
            one("ADD --checksum=sha256:00 --keep-git-dir=true https://x/y.tgz /y\n")
        else {
            panic!()
        };
        assert_eq!(a.checksum.as_deref(), Some("sha256:00"));
        assert!(a.keep_git_dir);
    }

    #[test]
    fn copy_needs_a_destination() {
        assert_eq!(
            fail("FROM a\nCOPY onlyone\n").kind(),
            Some(&SyntaxError::NoDestination("COPY".into()))
        );
        assert_eq!(
            fail("FROM a\nCOPY x <<EOF\nhi\nEOF\n").kind(),
            Some(&SyntaxError::HeredocDestination("COPY".into()))
        );
    }

    #[test]
    fn heredoc_sources_get_their_bodies() {
        let InstructionKind::Copy(c) = one("COPY <<-A <<'B' /dst/\n\t\tone\n\tA\nt$wo\nB\n") else {
            panic!()
        };
        let [SourceArg::Heredoc(a), SourceArg::Heredoc(b)] = c.sources.as_slice() else {
            panic!("{:?}", c.sources)
        };
        assert_eq!(
            (a.name.as_str(), a.body().as_str(), a.expand),
            ("A", "one\n", true)
        );
        assert_eq!(
            (b.name.as_str(), b.body().as_str(), b.expand),
            ("B", "t$wo\n", false)
        );
    }

    #[test]
    fn run_flags_are_parsed() {
        let InstructionKind::Run(r) = one(
            "RUN --network=none --security=insecure --mount=type=cache,target=/root/.cache,sharing=locked,id=c --mount=type=bind,source=.,target=/src,rw make\n",
        ) else {
            panic!()
        };
        assert_eq!(r.network, Network::None);
        assert_eq!(r.security, Security::Insecure);
        assert_eq!(r.mounts.len(), 2);
        assert_eq!(r.mounts[0].kind, MountType::Cache);
        assert_eq!(r.mounts[0].sharing, Sharing::Locked);
        assert_eq!(r.mounts[0].target.as_deref(), Some("/root/.cache"));
        assert!(!r.mounts[1].readonly);
        assert_eq!(r.command, Command::Shell("make".into()));
        let InstructionKind::Run(r) = one("RUN [\"ls\", \"-l\"]\n") else {
            panic!()
        };
        assert_eq!(r.command, Command::Exec(vec!["ls".into(), "-l".into()]));
        assert!(matches!(
            fail("FROM a\nRUN --network=bridge x\n").kind(),
            Some(SyntaxError::BadFlagValue { flag, .. }) if flag == "network"
        ));
        assert!(matches!(
            fail("FROM a\nRUN --mount=type=bind,bogus=1,target=/x x\n").kind(),
            Some(SyntaxError::BadFlagValue { flag, reason, .. }) if flag == "mount" && reason.contains("bogus")
        ));
        assert!(matches!(
            fail("FROM a\nRUN --mount=type=cache x\n").kind(),
            Some(SyntaxError::BadFlagValue { reason, .. }) if reason.contains("target")
        ));
    }

    #[test]
    fn run_heredocs_are_attached() {
        let InstructionKind::Run(r) = one("RUN <<EOF\necho hi\nEOF\n") else {
            panic!()
        };
        assert_eq!(r.command, Command::Shell("<<EOF".into()));
        assert_eq!(r.heredocs.len(), 1);
        assert_eq!(r.heredocs[0].content, "echo hi\n");
    }

    #[test]
    fn env_label_arg_forms() {
        let InstructionKind::Env(e) = one("ENV a=1 b=\"x y\"\n") else {
            panic!()
        };
        assert_eq!(e.len(), 2);
        assert_eq!((e[1].key.as_str(), e[1].value.as_str()), ("b", "\"x y\""));
        assert!(!e[0].legacy);
        let InstructionKind::Env(e) = one("ENV k some value\n") else {
            panic!()
        };
        assert!(e[0].legacy);
        assert_eq!(e[0].value, "some value");
        let InstructionKind::Arg(a) = one("ARG A B=2 C=\n") else {
            panic!()
        };
        assert_eq!(a[0].default, None);
        assert_eq!(a[1].default.as_deref(), Some("2"));
        assert_eq!(a[2].default.as_deref(), Some(""));
        assert_eq!(
            fail("ARG =x\n").kind(),
            Some(&SyntaxError::BlankName("ARG".into()))
        );
        assert_eq!(
            fail("FROM a\nENV =x\n").kind(),
            Some(&SyntaxError::BlankName("ENV".into()))
        );
        let InstructionKind::Label(l) = one("LABEL a.b=c\n") else {
            panic!()
        };
        assert_eq!(l[0].key, "a.b");
    }

    #[test]
    fn argument_counts_are_checked() {
        assert_eq!(
            fail("FROM a\nWORKDIR\n").kind(),
            Some(&SyntaxError::ExactlyOneArgument("WORKDIR".into()))
        );
        assert_eq!(
            fail("FROM a\nEXPOSE\n").kind(),
            Some(&SyntaxError::AtLeastOneArgument("EXPOSE".into()))
        );
        assert_eq!(
            fail("FROM a\nRUN\n").kind(),
            Some(&SyntaxError::AtLeastOneArgument("RUN".into()))
        );
        assert_eq!(
            fail("FROM a\nVOLUME [\"\"]\n").kind(),
            Some(&SyntaxError::EmptyVolume)
        );
        let InstructionKind::Expose(p) = one("EXPOSE 80/tcp 443 22\n") else {
            panic!()
        };
        assert_eq!(p, ["22", "443", "80/tcp"]);
    }

    #[test]
    fn shell_must_be_json() {
        assert_eq!(
            fail("FROM a\nSHELL /bin/bash -c\n").kind(),
            Some(&SyntaxError::NotJson("SHELL".into()))
        );
        let InstructionKind::Shell(s) = one("SHELL [\"/bin/bash\", \"-c\"]\n") else {
            panic!()
        };
        assert_eq!(s, ["/bin/bash", "-c"]);
    }

    #[test]
    fn cmd_and_entrypoint_forms() {
        assert_eq!(
            one("CMD echo $HOME\n"),
            InstructionKind::Cmd(Command::Shell("echo $HOME".into()))
        );
        assert_eq!(
            one("ENTRYPOINT [\"/bin/app\"]\n"),
            InstructionKind::Entrypoint(Command::Exec(vec!["/bin/app".into()]))
        );
    }

    #[test]
    fn healthcheck_durations_and_errors() {
        let InstructionKind::Healthcheck(Healthcheck::Cmd {
            command,
            interval,
            timeout,
            start_period,
            start_interval,
            retries,
        }) = one(
            "HEALTHCHECK --interval=1m30s --timeout=1.5s --start-period=0s --start-interval=500ms --retries=3 CMD curl -f http://x/\n",
        )
        else {
            panic!()
        };
        assert_eq!(command, Command::Shell("curl -f http://x/".into()));
        assert_eq!(interval, Some(Duration::from_secs(90)));
        assert_eq!(timeout, Some(Duration::from_millis(1500)));
        assert_eq!(start_period, None);
        assert_eq!(start_interval, Some(Duration::from_millis(500)));
        assert_eq!(retries, Some(3));
        assert_eq!(
            one("HEALTHCHECK NONE\n"),
            InstructionKind::Healthcheck(Healthcheck::None)
        );
        assert_eq!(
            fail("HEALTHCHECK NONE x\n").kind(),
            Some(&SyntaxError::HealthcheckNoneArgs)
        );
        assert_eq!(
            fail("HEALTHCHECK CMD\n").kind(),
            Some(&SyntaxError::HealthcheckMissingCommand)
        );
        assert_eq!(
            fail("HEALTHCHECK CONNECT TCP 7000\n").kind(),
            Some(&SyntaxError::HealthcheckType("CONNECT".into()))
        );
        assert!(matches!(
            fail("HEALTHCHECK --interval=5x CMD true\n").kind(),
            Some(SyntaxError::BadFlagValue { flag, .. }) if flag == "interval"
        ));
        assert!(matches!(
            fail("HEALTHCHECK --timeout=10us CMD true\n").kind(),
            Some(SyntaxError::BadFlagValue { reason, .. }) if reason.contains("1ms")
        ));
        assert!(matches!(
            fail("HEALTHCHECK --retries=-1 CMD true\n").kind(),
            Some(SyntaxError::BadFlagValue { flag, .. }) if flag == "retries"
        ));
    }

    /// Ports of buildkit's `instructions/parse_test.go` error tests.
    #[test]
    fn buildkit_error_cases() {
        for cmd in ["MAINTAINER", "WORKDIR", "USER", "STOPSIGNAL"] {
            assert_eq!(
                fail(cmd).to_string().lines().next().unwrap(),
                format!("line 1:1: {cmd} requires exactly one argument")
            );
        }
        for cmd in ["ENV", "LABEL", "ONBUILD", "HEALTHCHECK", "EXPOSE", "VOLUME"] {
            assert_eq!(
                fail(cmd).kind(),
                Some(&SyntaxError::AtLeastOneArgument(cmd.into())),
                "{cmd}"
            );
        }
        for cmd in ["ADD", "COPY"] {
            assert_eq!(
                fail(&format!("{cmd} arg1")).kind(),
                Some(&SyntaxError::NoDestination(cmd.into()))
            );
        }
        let cases = [
            (
                "COPY\t\n\t\tquux \\\n      bar",
                "COPY requires at least two arguments",
            ),
            (
                "ONBUILD FROM scratch",
                "FROM isn't allowed as an ONBUILD trigger",
            ),
            ("MAINTAINER --boo joe@example.com", "unknown flag: boo"),
            (
                "ONBUILD ONBUILD RUN touch foobar",
                "chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
            ),
            ("FOO bar", "unknown instruction: FOO"),
            ("foo bar", "unknown instruction: foo"),
            (
                "HEALTHCHECK --interval=50ns CMD true",
                "cannot be less than 1ms",
            ),
        ];
        for (src, want) in cases {
            let text = fail(src).to_string();
            assert!(text.contains(want), "{src:?}: {text}");
        }
        assert!(matches!(
            one("HEALTHCHECK --interval=1ms CMD true"),
            InstructionKind::Healthcheck(Healthcheck::Cmd { interval: Some(d), .. }) if d == Duration::from_millis(1)
        ));
        let InstructionKind::Healthcheck(Healthcheck::Cmd { command, .. }) =
            one("HEALTHCHECK CMD hello world")
        else {
            panic!()
        };
        assert_eq!(command, Command::Shell("hello world".into()));
    }

    #[test]
    fn go_durations_parse_like_go() {
        assert_eq!(parse_go_duration("0"), Ok(0));
        assert_eq!(parse_go_duration("1h2m3s"), Ok(3_723_000_000_000));
        assert_eq!(parse_go_duration("1.5ms"), Ok(1_500_000));
        assert_eq!(parse_go_duration("-2us"), Ok(-2_000));
        assert_eq!(parse_go_duration(".5s"), Ok(500_000_000));
        assert!(parse_go_duration("5").is_err());
        assert!(parse_go_duration("").is_err());
        assert!(parse_go_duration("1d").is_err());
        assert!(parse_go_duration("s").is_err());
    }

    #[test]
    fn onbuild_nests_and_rejects_forbidden_triggers() {
        let InstructionKind::Onbuild(o) = one("ONBUILD RUN echo hi\n") else {
            panic!()
        };
        assert_eq!(o.expression, "RUN echo hi");
        assert!(matches!(o.trigger.kind, InstructionKind::Run(_)));
        assert_eq!(
            fail("ONBUILD ONBUILD RUN x\n").kind(),
            Some(&SyntaxError::OnbuildChain)
        );
        assert_eq!(
            fail("ONBUILD FROM x\n").kind(),
            Some(&SyntaxError::OnbuildTrigger("FROM".into()))
        );
        assert_eq!(
            fail("ONBUILD maintainer x\n").kind(),
            Some(&SyntaxError::OnbuildTrigger("MAINTAINER".into()))
        );
        assert_eq!(
            fail("ONBUILD\n").kind(),
            Some(&SyntaxError::AtLeastOneArgument("ONBUILD".into()))
        );
        let InstructionKind::Onbuild(o) = one("ONBUILD COPY <<EOF /x\nbody\nEOF\n") else {
            panic!()
        };
        assert_eq!(o.expression, "COPY <<EOF /x\nbody\nEOF");
        let InstructionKind::Copy(c) = &o.trigger.kind else {
            panic!()
        };
        assert!(matches!(&c.sources[0], SourceArg::Heredoc(h) if h.content == "body\n"));
    }

    #[test]
    fn every_instruction_keeps_its_span() {
        let ast = crate::parse("FROM a\n\nRUN x \\\n  y\nUSER u\n").unwrap();
        let ins = from_ast(&ast).unwrap();
        let lines: Vec<(u32, u32)> = ins
            .iter()
            .map(|i| (i.span.start_line, i.span.end_line))
            .collect();
        assert_eq!(lines, [(1, 1), (3, 4), (5, 5)]);
        assert_eq!(ins[1].original, "RUN x   y");
    }
}
