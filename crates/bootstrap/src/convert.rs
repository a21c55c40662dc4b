//! Conversions between the generated protobuf types ([`crate::pb`]) and the domain types of
//! `firebuild-plan` and `firebuild-transfer`.
//!
//! Domain → protobuf is total (`From`, hence also `TryFrom` with `Infallible`); protobuf →
//! domain is `TryFrom` with a [`ConversionError`] naming the missing or invalid field, because a
//! message from the network may lack a required field or carry an unknown enum value.

use firebuild_plan as plan;
use firebuild_transfer as transfer;

use crate::pb;

/// A protobuf message that does not map to a domain value.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConversionError {
    /// A required field (a message or a oneof) is absent.
    #[error("missing field {field}")]
    Missing {
        /// `Message.field`.
        field: &'static str,
    },
    /// A field holds a value the domain type cannot represent.
    #[error("invalid field {field}: {reason}")]
    Invalid {
        /// `Message.field`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

fn missing(field: &'static str) -> ConversionError {
    ConversionError::Missing { field }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConversionError {
    ConversionError::Invalid {
        field,
        reason: reason.into(),
    }
}

fn index(field: &'static str, value: u64) -> Result<usize, ConversionError> {
    usize::try_from(value).map_err(|_| invalid(field, format!("{value} does not fit in usize")))
}

fn wide(value: usize) -> u64 {
    // usize is at most 64 bits on every supported target.
    u64::try_from(value).unwrap_or(u64::MAX)
}

fn list<A, B>(
    items: Vec<A>,
    f: impl Fn(A) -> Result<B, ConversionError>,
) -> Result<Vec<B>, ConversionError> {
    items.into_iter().map(f).collect()
}

// ---------------------------------------------------------------------------------------------
// Plan: domain → pb

impl From<&plan::Span> for pb::Span {
    fn from(s: &plan::Span) -> Self {
        pb::Span {
            start_line: s.start_line,
            start_col: s.start_col,
            end_line: s.end_line,
            end_col: s.end_col,
        }
    }
}

impl From<&plan::EnvVar> for pb::EnvVar {
    fn from(v: &plan::EnvVar) -> Self {
        pb::EnvVar {
            name: v.name.clone(),
            value: v.value.clone(),
        }
    }
}

impl From<&plan::BuildPlan> for pb::BuildPlan {
    fn from(p: &plan::BuildPlan) -> Self {
        pb::BuildPlan {
            schema_version: p.schema_version,
            dockerfile: p.dockerfile.clone(),
            target: wide(p.target),
            stages: p.stages.iter().map(Into::into).collect(),
            warnings: p.warnings.clone(),
        }
    }
}

impl From<&plan::Stage> for pb::Stage {
    fn from(s: &plan::Stage) -> Self {
        pb::Stage {
            index: wide(s.index),
            name: s.name.clone(),
            base: Some((&s.base).into()),
            platform: s.platform.clone(),
            span: Some((&s.span).into()),
            steps: s.steps.iter().map(Into::into).collect(),
            config: Some((&s.config).into()),
        }
    }
}

impl From<&plan::Base> for pb::Base {
    fn from(b: &plan::Base) -> Self {
        use pb::base::Kind;
        let kind = match b {
            plan::Base::Scratch => Kind::Scratch(pb::base::Scratch {}),
            plan::Base::Image { reference } => Kind::Image(reference.clone()),
            plan::Base::Stage { index } => Kind::Stage(wide(*index)),
        };
        pb::Base { kind: Some(kind) }
    }
}

impl From<&plan::StepContext> for pb::StepContext {
    fn from(c: &plan::StepContext) -> Self {
        pb::StepContext {
            env: c.env.iter().map(Into::into).collect(),
            args: c.args.iter().map(Into::into).collect(),
            workdir: c.workdir.clone(),
            user: c.user.clone(),
            shell: c.shell.clone(),
        }
    }
}

impl From<&plan::Step> for pb::Step {
    fn from(s: &plan::Step) -> Self {
        use pb::step::Kind;
        let kind = match &s.kind {
            plan::StepKind::Run(run) => Kind::Run(run.into()),
            plan::StepKind::Copy(t) => Kind::Copy(t.into()),
            plan::StepKind::Add(t) => Kind::Add(t.into()),
            plan::StepKind::Workdir => Kind::Workdir(pb::step::Workdir {}),
        };
        pb::Step {
            index: wide(s.index),
            span: Some((&s.span).into()),
            context: Some((&s.context).into()),
            kind: Some(kind),
        }
    }
}

impl From<&plan::Command> for pb::Command {
    fn from(c: &plan::Command) -> Self {
        use pb::command::Form;
        let form = match c {
            plan::Command::Shell(s) => Form::Shell(s.clone()),
            plan::Command::Exec(argv) => Form::Exec(pb::ExecForm { argv: argv.clone() }),
        };
        pb::Command { form: Some(form) }
    }
}

impl From<plan::Network> for pb::Network {
    fn from(n: plan::Network) -> Self {
        match n {
            plan::Network::Default => pb::Network::Default,
            plan::Network::None => pb::Network::None,
            plan::Network::Host => pb::Network::Host,
        }
    }
}

impl From<&plan::Heredoc> for pb::Heredoc {
    fn from(h: &plan::Heredoc) -> Self {
        pb::Heredoc {
            name: h.name.clone(),
            content: h.content.clone(),
            expand: h.expand,
        }
    }
}

impl From<&plan::Run> for pb::Run {
    fn from(r: &plan::Run) -> Self {
        pb::Run {
            command: Some((&r.command).into()),
            network: pb::Network::from(r.network).into(),
            heredocs: r.heredocs.iter().map(Into::into).collect(),
            mounts: r.mounts.iter().map(Into::into).collect(),
        }
    }
}

impl From<plan::Sharing> for pb::Sharing {
    fn from(s: plan::Sharing) -> Self {
        match s {
            plan::Sharing::Shared => pb::Sharing::Shared,
            plan::Sharing::Private => pb::Sharing::Private,
            plan::Sharing::Locked => pb::Sharing::Locked,
        }
    }
}

impl From<&plan::RunMount> for pb::RunMount {
    fn from(m: &plan::RunMount) -> Self {
        use pb::run_mount::Kind;
        let kind = match m {
            plan::RunMount::Bind {
                target,
                from,
                source,
                rw,
                resources,
            } => Kind::Bind(pb::run_mount::Bind {
                target: target.clone(),
                from: Some(from.into()),
                source: source.clone(),
                rw: *rw,
                resources: resources.iter().map(Into::into).collect(),
            }),
            plan::RunMount::Cache {
                target,
                id,
                sharing,
                readonly,
                uid,
                gid,
                mode,
            } => Kind::Cache(pb::run_mount::Cache {
                target: target.clone(),
                id: id.clone(),
                sharing: pb::Sharing::from(*sharing).into(),
                readonly: *readonly,
                uid: *uid,
                gid: *gid,
                mode: *mode,
            }),
            plan::RunMount::Tmpfs { target, size } => Kind::Tmpfs(pb::run_mount::Tmpfs {
                target: target.clone(),
                size: *size,
            }),
            plan::RunMount::Secret {
                id,
                target,
                env,
                required,
                mode,
                uid,
                gid,
            } => Kind::Secret(pb::run_mount::Secret {
                id: id.clone(),
                target: target.clone(),
                env: env.clone(),
                required: *required,
                mode: *mode,
                uid: *uid,
                gid: *gid,
            }),
        };
        pb::RunMount { kind: Some(kind) }
    }
}

impl From<&plan::Origin> for pb::Origin {
    fn from(o: &plan::Origin) -> Self {
        use pb::origin::Kind;
        let kind = match o {
            plan::Origin::Context => Kind::Context(pb::origin::Context {}),
            plan::Origin::Stage { index } => Kind::Stage(wide(*index)),
            plan::Origin::Image { reference } => Kind::Image(reference.clone()),
        };
        pb::Origin { kind: Some(kind) }
    }
}

impl From<plan::ResourceKind> for pb::ResourceKind {
    fn from(k: plan::ResourceKind) -> Self {
        match k {
            plan::ResourceKind::File => pb::ResourceKind::File,
            plan::ResourceKind::Dir => pb::ResourceKind::Dir,
            plan::ResourceKind::Symlink => pb::ResourceKind::Symlink,
        }
    }
}

impl From<&plan::Resource> for pb::Resource {
    fn from(r: &plan::Resource) -> Self {
        pb::Resource {
            id: r.id.clone(),
            path: r.path.clone(),
            kind: pb::ResourceKind::from(r.kind).into(),
            target: r.target.clone(),
            extract: r.extract,
        }
    }
}

impl From<&plan::Source> for pb::Source {
    fn from(s: &plan::Source) -> Self {
        use pb::source::Kind;
        let kind = match s {
            plan::Source::Path { pattern, resources } => Kind::Path(pb::source::Path {
                pattern: pattern.clone(),
                resources: resources.iter().map(Into::into).collect(),
            }),
            plan::Source::Url {
                url,
                checksum,
                id,
                target,
            } => Kind::Url(pb::source::Url {
                url: url.clone(),
                checksum: checksum.clone(),
                id: id.clone(),
                target: target.clone(),
            }),
            plan::Source::Heredoc { heredoc } => Kind::Heredoc(heredoc.into()),
        };
        pb::Source { kind: Some(kind) }
    }
}

impl From<&plan::Chmod> for pb::Chmod {
    fn from(c: &plan::Chmod) -> Self {
        use pb::chmod::Kind;
        let kind = match c {
            plan::Chmod::Octal(m) => Kind::Octal(*m),
            plan::Chmod::Symbolic(s) => Kind::Symbolic(s.clone()),
        };
        pb::Chmod { kind: Some(kind) }
    }
}

impl From<&plan::Transfer> for pb::Transfer {
    fn from(t: &plan::Transfer) -> Self {
        pb::Transfer {
            origin: Some((&t.origin).into()),
            sources: t.sources.iter().map(Into::into).collect(),
            dest: t.dest.clone(),
            chown: t.chown.as_ref().map(|c| pb::Chown {
                user: c.user.clone(),
                group: c.group.clone(),
            }),
            chmod: t.chmod.as_ref().map(Into::into),
            link: t.link,
            parents: t.parents,
            exclude: t.exclude.clone(),
            keep_git_dir: t.keep_git_dir,
        }
    }
}

impl From<&plan::Healthcheck> for pb::Healthcheck {
    fn from(h: &plan::Healthcheck) -> Self {
        use pb::healthcheck::Kind;
        let kind = match h {
            plan::Healthcheck::None => Kind::None(pb::healthcheck::None {}),
            plan::Healthcheck::Cmd {
                command,
                interval_ms,
                timeout_ms,
                start_period_ms,
                start_interval_ms,
                retries,
            } => Kind::Cmd(pb::healthcheck::Cmd {
                command: Some(command.into()),
                interval_ms: *interval_ms,
                timeout_ms: *timeout_ms,
                start_period_ms: *start_period_ms,
                start_interval_ms: *start_interval_ms,
                retries: *retries,
            }),
        };
        pb::Healthcheck { kind: Some(kind) }
    }
}

impl From<&plan::ImageConfig> for pb::ImageConfig {
    fn from(c: &plan::ImageConfig) -> Self {
        pb::ImageConfig {
            env: c.env.iter().map(Into::into).collect(),
            cmd: c.cmd.as_ref().map(Into::into),
            entrypoint: c.entrypoint.as_ref().map(Into::into),
            workdir: c.workdir.clone(),
            user: c.user.clone(),
            shell: c.shell.as_ref().map(|values| pb::StringList {
                values: values.clone(),
            }),
            exposed_ports: c.exposed_ports.clone(),
            labels: c.labels.clone(),
            volumes: c.volumes.clone(),
            stop_signal: c.stop_signal.clone(),
            healthcheck: c.healthcheck.as_ref().map(Into::into),
            onbuild: c.onbuild.clone(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Plan: pb → domain

impl From<pb::Span> for plan::Span {
    fn from(s: pb::Span) -> Self {
        plan::Span {
            start_line: s.start_line,
            start_col: s.start_col,
            end_line: s.end_line,
            end_col: s.end_col,
        }
    }
}

impl From<pb::EnvVar> for plan::EnvVar {
    fn from(v: pb::EnvVar) -> Self {
        plan::EnvVar {
            name: v.name,
            value: v.value,
        }
    }
}

impl TryFrom<pb::BuildPlan> for plan::BuildPlan {
    type Error = ConversionError;

    fn try_from(p: pb::BuildPlan) -> Result<Self, Self::Error> {
        Ok(plan::BuildPlan {
            schema_version: p.schema_version,
            dockerfile: p.dockerfile,
            target: index("BuildPlan.target", p.target)?,
            stages: list(p.stages, TryInto::try_into)?,
            warnings: p.warnings,
        })
    }
}

impl TryFrom<pb::Stage> for plan::Stage {
    type Error = ConversionError;

    fn try_from(s: pb::Stage) -> Result<Self, Self::Error> {
        Ok(plan::Stage {
            index: index("Stage.index", s.index)?,
            name: s.name,
            base: s.base.ok_or(missing("Stage.base"))?.try_into()?,
            platform: s.platform,
            span: s.span.ok_or(missing("Stage.span"))?.into(),
            steps: list(s.steps, TryInto::try_into)?,
            config: s.config.ok_or(missing("Stage.config"))?.try_into()?,
        })
    }
}

impl TryFrom<pb::Base> for plan::Base {
    type Error = ConversionError;

    fn try_from(b: pb::Base) -> Result<Self, Self::Error> {
        use pb::base::Kind;
        Ok(match b.kind.ok_or(missing("Base.kind"))? {
            Kind::Scratch(_) => plan::Base::Scratch,
            Kind::Image(reference) => plan::Base::Image { reference },
            Kind::Stage(i) => plan::Base::Stage {
                index: index("Base.stage", i)?,
            },
        })
    }
}

impl From<pb::StepContext> for plan::StepContext {
    fn from(c: pb::StepContext) -> Self {
        plan::StepContext {
            env: c.env.into_iter().map(Into::into).collect(),
            args: c.args.into_iter().map(Into::into).collect(),
            workdir: c.workdir,
            user: c.user,
            shell: c.shell,
        }
    }
}

impl TryFrom<pb::Step> for plan::Step {
    type Error = ConversionError;

    fn try_from(s: pb::Step) -> Result<Self, Self::Error> {
        use pb::step::Kind;
        let kind = match s.kind.ok_or(missing("Step.kind"))? {
            Kind::Run(run) => plan::StepKind::Run(run.try_into()?),
            Kind::Copy(t) => plan::StepKind::Copy(t.try_into()?),
            Kind::Add(t) => plan::StepKind::Add(t.try_into()?),
            Kind::Workdir(pb::step::Workdir {}) => plan::StepKind::Workdir,
        };
        Ok(plan::Step {
            index: index("Step.index", s.index)?,
            span: s.span.ok_or(missing("Step.span"))?.into(),
            context: s.context.ok_or(missing("Step.context"))?.into(),
            kind,
        })
    }
}

impl TryFrom<pb::Command> for plan::Command {
    type Error = ConversionError;

    fn try_from(c: pb::Command) -> Result<Self, Self::Error> {
        use pb::command::Form;
        Ok(match c.form.ok_or(missing("Command.form"))? {
            Form::Shell(s) => plan::Command::Shell(s),
            Form::Exec(e) => plan::Command::Exec(e.argv),
        })
    }
}

impl From<pb::Heredoc> for plan::Heredoc {
    fn from(h: pb::Heredoc) -> Self {
        plan::Heredoc {
            name: h.name,
            content: h.content,
            expand: h.expand,
        }
    }
}

impl TryFrom<pb::Run> for plan::Run {
    type Error = ConversionError;

    fn try_from(r: pb::Run) -> Result<Self, Self::Error> {
        let network = match pb::Network::try_from(r.network) {
            Ok(pb::Network::Default) => plan::Network::Default,
            Ok(pb::Network::None) => plan::Network::None,
            Ok(pb::Network::Host) => plan::Network::Host,
            Ok(pb::Network::Unspecified) | Err(_) => {
                return Err(invalid(
                    "Run.network",
                    format!("unknown network mode {}", r.network),
                ));
            }
        };
        Ok(plan::Run {
            command: r.command.ok_or(missing("Run.command"))?.try_into()?,
            network,
            heredocs: r.heredocs.into_iter().map(Into::into).collect(),
            mounts: list(r.mounts, TryInto::try_into)?,
        })
    }
}

/// Permission bits: at most `0o7777`.
fn mode(field: &'static str, value: u32) -> Result<u32, ConversionError> {
    if value > 0o7777 {
        return Err(invalid(
            field,
            format!("mode {value:#o} has bits above 0o7777"),
        ));
    }
    Ok(value)
}

impl TryFrom<pb::RunMount> for plan::RunMount {
    type Error = ConversionError;

    fn try_from(m: pb::RunMount) -> Result<Self, Self::Error> {
        use pb::run_mount::Kind;
        Ok(match m.kind.ok_or(missing("RunMount.kind"))? {
            Kind::Bind(b) => plan::RunMount::Bind {
                target: b.target,
                from: b.from.ok_or(missing("RunMount.Bind.from"))?.try_into()?,
                source: b.source,
                rw: b.rw,
                resources: list(b.resources, TryInto::try_into)?,
            },
            Kind::Cache(c) => {
                let sharing = match pb::Sharing::try_from(c.sharing) {
                    Ok(pb::Sharing::Shared) => plan::Sharing::Shared,
                    Ok(pb::Sharing::Private) => plan::Sharing::Private,
                    Ok(pb::Sharing::Locked) => plan::Sharing::Locked,
                    Ok(pb::Sharing::Unspecified) | Err(_) => {
                        return Err(invalid(
                            "RunMount.Cache.sharing",
                            format!("unknown sharing mode {}", c.sharing),
                        ));
                    }
                };
                plan::RunMount::Cache {
                    target: c.target,
                    id: c.id,
                    sharing,
                    readonly: c.readonly,
                    uid: c.uid,
                    gid: c.gid,
                    mode: mode("RunMount.Cache.mode", c.mode)?,
                }
            }
            Kind::Tmpfs(t) => plan::RunMount::Tmpfs {
                target: t.target,
                size: t.size,
            },
            Kind::Secret(s) => {
                if s.id.is_empty() {
                    return Err(invalid("RunMount.Secret.id", "empty secret id"));
                }
                plan::RunMount::Secret {
                    id: s.id,
                    target: s.target,
                    env: s.env,
                    required: s.required,
                    mode: mode("RunMount.Secret.mode", s.mode)?,
                    uid: s.uid,
                    gid: s.gid,
                }
            }
        })
    }
}

impl TryFrom<pb::Origin> for plan::Origin {
    type Error = ConversionError;

    fn try_from(o: pb::Origin) -> Result<Self, Self::Error> {
        use pb::origin::Kind;
        Ok(match o.kind.ok_or(missing("Origin.kind"))? {
            Kind::Context(_) => plan::Origin::Context,
            Kind::Stage(i) => plan::Origin::Stage {
                index: index("Origin.stage", i)?,
            },
            Kind::Image(reference) => plan::Origin::Image { reference },
        })
    }
}

impl TryFrom<pb::Resource> for plan::Resource {
    type Error = ConversionError;

    fn try_from(r: pb::Resource) -> Result<Self, Self::Error> {
        let kind = match pb::ResourceKind::try_from(r.kind) {
            Ok(pb::ResourceKind::File) => plan::ResourceKind::File,
            Ok(pb::ResourceKind::Dir) => plan::ResourceKind::Dir,
            Ok(pb::ResourceKind::Symlink) => plan::ResourceKind::Symlink,
            Ok(pb::ResourceKind::Unspecified) | Err(_) => {
                return Err(invalid(
                    "Resource.kind",
                    format!("unknown resource kind {}", r.kind),
                ));
            }
        };
        Ok(plan::Resource {
            id: r.id,
            path: r.path,
            kind,
            target: r.target,
            extract: r.extract,
        })
    }
}

impl TryFrom<pb::Source> for plan::Source {
    type Error = ConversionError;

    fn try_from(s: pb::Source) -> Result<Self, Self::Error> {
        use pb::source::Kind;
        Ok(match s.kind.ok_or(missing("Source.kind"))? {
            Kind::Path(p) => plan::Source::Path {
                pattern: p.pattern,
                resources: list(p.resources, TryInto::try_into)?,
            },
            Kind::Url(u) => plan::Source::Url {
                url: u.url,
                checksum: u.checksum,
                id: u.id,
                target: u.target,
            },
            Kind::Heredoc(h) => plan::Source::Heredoc { heredoc: h.into() },
        })
    }
}

impl TryFrom<pb::Chmod> for plan::Chmod {
    type Error = ConversionError;

    fn try_from(c: pb::Chmod) -> Result<Self, Self::Error> {
        use pb::chmod::Kind;
        Ok(match c.kind.ok_or(missing("Chmod.kind"))? {
            Kind::Octal(m) => plan::Chmod::Octal(m),
            Kind::Symbolic(s) => plan::Chmod::Symbolic(s),
        })
    }
}

impl TryFrom<pb::Transfer> for plan::Transfer {
    type Error = ConversionError;

    fn try_from(t: pb::Transfer) -> Result<Self, Self::Error> {
        Ok(plan::Transfer {
            origin: t.origin.ok_or(missing("Transfer.origin"))?.try_into()?,
            sources: list(t.sources, TryInto::try_into)?,
            dest: t.dest,
            chown: t.chown.map(|c| plan::Chown {
                user: c.user,
                group: c.group,
            }),
            chmod: t.chmod.map(TryInto::try_into).transpose()?,
            link: t.link,
            parents: t.parents,
            exclude: t.exclude,
            keep_git_dir: t.keep_git_dir,
        })
    }
}

impl TryFrom<pb::Healthcheck> for plan::Healthcheck {
    type Error = ConversionError;

    fn try_from(h: pb::Healthcheck) -> Result<Self, Self::Error> {
        use pb::healthcheck::Kind;
        Ok(match h.kind.ok_or(missing("Healthcheck.kind"))? {
            Kind::None(_) => plan::Healthcheck::None,
            Kind::Cmd(c) => plan::Healthcheck::Cmd {
                command: c
                    .command
                    .ok_or(missing("Healthcheck.Cmd.command"))?
                    .try_into()?,
                interval_ms: c.interval_ms,
                timeout_ms: c.timeout_ms,
                start_period_ms: c.start_period_ms,
                start_interval_ms: c.start_interval_ms,
                retries: c.retries,
            },
        })
    }
}

impl TryFrom<pb::ImageConfig> for plan::ImageConfig {
    type Error = ConversionError;

    fn try_from(c: pb::ImageConfig) -> Result<Self, Self::Error> {
        Ok(plan::ImageConfig {
            env: c.env.into_iter().map(Into::into).collect(),
            cmd: c.cmd.map(TryInto::try_into).transpose()?,
            entrypoint: c.entrypoint.map(TryInto::try_into).transpose()?,
            workdir: c.workdir,
            user: c.user,
            shell: c.shell.map(|l| l.values),
            exposed_ports: c.exposed_ports,
            labels: c.labels,
            volumes: c.volumes,
            stop_signal: c.stop_signal,
            healthcheck: c.healthcheck.map(TryInto::try_into).transpose()?,
            onbuild: c.onbuild,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Transfer frames

impl From<transfer::EntryKind> for pb::EntryKind {
    fn from(k: transfer::EntryKind) -> Self {
        match k {
            transfer::EntryKind::File => pb::EntryKind::File,
            transfer::EntryKind::Dir => pb::EntryKind::Dir,
            transfer::EntryKind::Symlink => pb::EntryKind::Symlink,
        }
    }
}

impl From<transfer::Header> for pb::Header {
    fn from(h: transfer::Header) -> Self {
        pb::Header {
            entry: h.index,
            path: h.path,
            kind: pb::EntryKind::from(h.kind).into(),
            mode: h.mode,
            uid: h.uid,
            gid: h.gid,
            size: h.size,
            mtime_secs: h.mtime_secs,
            mtime_nanos: h.mtime_nanos,
            link_target: h.link_target,
        }
    }
}

impl From<transfer::Chunk> for pb::Chunk {
    fn from(c: transfer::Chunk) -> Self {
        pb::Chunk {
            entry: c.entry,
            offset: c.offset,
            crc32c: c.crc32c,
            data: c.data,
        }
    }
}

impl From<transfer::Frame> for pb::ResourceFrame {
    fn from(f: transfer::Frame) -> Self {
        use pb::resource_frame::Frame;
        let frame = match f {
            transfer::Frame::Header(h) => Frame::Header(h.into()),
            transfer::Frame::Chunk(c) => Frame::Chunk(c.into()),
            transfer::Frame::Eof(e) => Frame::Eof(pb::Eof {
                digest: e.digest.to_vec(),
            }),
        };
        pb::ResourceFrame { frame: Some(frame) }
    }
}

impl From<transfer::ResumePoint> for pb::ResumePosition {
    fn from(p: transfer::ResumePoint) -> Self {
        pb::ResumePosition {
            entry: p.entry,
            offset: p.offset,
        }
    }
}

impl From<pb::ResumePosition> for transfer::ResumePoint {
    fn from(p: pb::ResumePosition) -> Self {
        transfer::ResumePoint {
            entry: p.entry,
            offset: p.offset,
        }
    }
}

impl TryFrom<pb::Header> for transfer::Header {
    type Error = ConversionError;

    fn try_from(h: pb::Header) -> Result<Self, Self::Error> {
        let kind = match pb::EntryKind::try_from(h.kind) {
            Ok(pb::EntryKind::File) => transfer::EntryKind::File,
            Ok(pb::EntryKind::Dir) => transfer::EntryKind::Dir,
            Ok(pb::EntryKind::Symlink) => transfer::EntryKind::Symlink,
            Ok(pb::EntryKind::Unspecified) | Err(_) => {
                return Err(invalid(
                    "Header.kind",
                    format!("unknown entry kind {}", h.kind),
                ));
            }
        };
        Ok(transfer::Header {
            index: h.entry,
            path: h.path,
            kind,
            mode: h.mode,
            uid: h.uid,
            gid: h.gid,
            size: h.size,
            mtime_secs: h.mtime_secs,
            mtime_nanos: h.mtime_nanos,
            link_target: h.link_target,
        })
    }
}

impl From<pb::Chunk> for transfer::Chunk {
    /// Keeps the checksum as sent; the [`transfer::Reassembler`] verifies it.
    fn from(c: pb::Chunk) -> Self {
        transfer::Chunk {
            entry: c.entry,
            offset: c.offset,
            data: c.data,
            crc32c: c.crc32c,
        }
    }
}

impl TryFrom<pb::ResourceFrame> for transfer::Frame {
    type Error = ConversionError;

    fn try_from(f: pb::ResourceFrame) -> Result<Self, Self::Error> {
        use pb::resource_frame::Frame;
        Ok(match f.frame.ok_or(missing("ResourceFrame.frame"))? {
            Frame::Header(h) => transfer::Frame::Header(h.try_into()?),
            Frame::Chunk(c) => transfer::Frame::Chunk(c.into()),
            Frame::Eof(e) => {
                let len = e.digest.len();
                let digest: [u8; 32] = e
                    .digest
                    .try_into()
                    .map_err(|_| invalid("Eof.digest", format!("{len} bytes, expected 32")))?;
                transfer::Frame::Eof(transfer::Eof { digest })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9 /._:$=-]{0,12}"
    }

    fn opt_text() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(text())
    }

    fn span() -> impl Strategy<Value = plan::Span> {
        (any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(a, b, c, d)| {
            plan::Span {
                start_line: a,
                start_col: b,
                end_line: c,
                end_col: d,
            }
        })
    }

    fn env() -> impl Strategy<Value = Vec<plan::EnvVar>> {
        proptest::collection::vec(
            (text(), text()).prop_map(|(n, v)| plan::EnvVar::new(n, v)),
            0..3,
        )
    }

    fn command() -> impl Strategy<Value = plan::Command> {
        prop_oneof![
            text().prop_map(plan::Command::Shell),
            proptest::collection::vec(text(), 0..3).prop_map(plan::Command::Exec),
        ]
    }

    fn heredoc() -> impl Strategy<Value = plan::Heredoc> {
        (text(), text(), any::<bool>()).prop_map(|(name, content, expand)| plan::Heredoc {
            name,
            content,
            expand,
        })
    }

    fn resource() -> impl Strategy<Value = plan::Resource> {
        (
            text(),
            text(),
            prop_oneof![
                Just(plan::ResourceKind::File),
                Just(plan::ResourceKind::Dir),
                Just(plan::ResourceKind::Symlink)
            ],
            text(),
            any::<bool>(),
        )
            .prop_map(|(id, path, kind, target, extract)| plan::Resource {
                id,
                path,
                kind,
                target,
                extract,
            })
    }

    fn source() -> impl Strategy<Value = plan::Source> {
        prop_oneof![
            (text(), proptest::collection::vec(resource(), 0..3))
                .prop_map(|(pattern, resources)| plan::Source::Path { pattern, resources }),
            (text(), opt_text(), text(), text()).prop_map(|(url, checksum, id, target)| {
                plan::Source::Url {
                    url,
                    checksum,
                    id,
                    target,
                }
            }),
            heredoc().prop_map(|heredoc| plan::Source::Heredoc { heredoc }),
        ]
    }

    fn origin() -> impl Strategy<Value = plan::Origin> {
        prop_oneof![
            Just(plan::Origin::Context),
            any::<u32>().prop_map(|i| plan::Origin::Stage { index: i as usize }),
            text().prop_map(|reference| plan::Origin::Image { reference }),
        ]
    }

    fn run_mount() -> impl Strategy<Value = plan::RunMount> {
        let ids = (any::<u32>(), any::<u32>(), 0u32..=0o7777);
        prop_oneof![
            (
                text(),
                origin(),
                text(),
                any::<bool>(),
                proptest::collection::vec(resource(), 0..3)
            )
                .prop_map(|(target, from, source, rw, resources)| {
                    plan::RunMount::Bind {
                        target,
                        from,
                        source,
                        rw,
                        resources,
                    }
                }),
            (
                text(),
                text(),
                prop_oneof![
                    Just(plan::Sharing::Shared),
                    Just(plan::Sharing::Private),
                    Just(plan::Sharing::Locked)
                ],
                any::<bool>(),
                ids.clone(),
            )
                .prop_map(|(target, id, sharing, readonly, (uid, gid, mode))| {
                    plan::RunMount::Cache {
                        target,
                        id,
                        sharing,
                        readonly,
                        uid,
                        gid,
                        mode,
                    }
                }),
            (text(), proptest::option::of(any::<u64>()))
                .prop_map(|(target, size)| plan::RunMount::Tmpfs { target, size }),
            (
                "[a-z0-9_.-]{1,12}",
                opt_text(),
                opt_text(),
                any::<bool>(),
                ids
            )
                .prop_map(|(id, target, env, required, (uid, gid, mode))| {
                    plan::RunMount::Secret {
                        id,
                        target,
                        env,
                        required,
                        mode,
                        uid,
                        gid,
                    }
                }),
        ]
    }

    fn transfer_step() -> impl Strategy<Value = plan::Transfer> {
        (
            origin(),
            proptest::collection::vec(source(), 0..3),
            text(),
            proptest::option::of(
                (text(), opt_text()).prop_map(|(user, group)| plan::Chown { user, group }),
            ),
            proptest::option::of(prop_oneof![
                any::<u32>().prop_map(plan::Chmod::Octal),
                text().prop_map(plan::Chmod::Symbolic)
            ]),
            any::<[bool; 3]>(),
            proptest::collection::vec(text(), 0..2),
        )
            .prop_map(
                |(origin, sources, dest, chown, chmod, [link, parents, keep_git_dir], exclude)| {
                    plan::Transfer {
                        origin,
                        sources,
                        dest,
                        chown,
                        chmod,
                        link,
                        parents,
                        exclude,
                        keep_git_dir,
                    }
                },
            )
    }

    fn step() -> impl Strategy<Value = plan::Step> {
        let run = (
            command(),
            prop_oneof![
                Just(plan::Network::Default),
                Just(plan::Network::None),
                Just(plan::Network::Host)
            ],
            proptest::collection::vec(heredoc(), 0..2),
            proptest::collection::vec(run_mount(), 0..3),
        )
            .prop_map(|(command, network, heredocs, mounts)| plan::Run {
                command,
                network,
                heredocs,
                mounts,
            });
        let kind = prop_oneof![
            run.prop_map(plan::StepKind::Run),
            transfer_step().prop_map(plan::StepKind::Copy),
            transfer_step().prop_map(plan::StepKind::Add),
            Just(plan::StepKind::Workdir),
        ];
        let context = (
            env(),
            env(),
            text(),
            opt_text(),
            proptest::collection::vec(text(), 0..3),
        )
            .prop_map(|(env, args, workdir, user, shell)| plan::StepContext {
                env,
                args,
                workdir,
                user,
                shell,
            });
        (any::<u16>(), span(), context, kind).prop_map(|(index, span, context, kind)| plan::Step {
            index: index as usize,
            span,
            context,
            kind,
        })
    }

    fn image_config() -> impl Strategy<Value = plan::ImageConfig> {
        let healthcheck = prop_oneof![
            Just(plan::Healthcheck::None),
            (
                command(),
                proptest::option::of(any::<u64>()),
                proptest::option::of(any::<u64>()),
                proptest::option::of(any::<u32>())
            )
                .prop_map(|(command, interval_ms, timeout_ms, retries)| {
                    plan::Healthcheck::Cmd {
                        command,
                        interval_ms,
                        timeout_ms,
                        start_period_ms: None,
                        start_interval_ms: interval_ms,
                        retries,
                    }
                }),
        ];
        (
            env(),
            proptest::option::of(command()),
            proptest::option::of(command()),
            (opt_text(), opt_text(), opt_text()),
            proptest::option::of(proptest::collection::vec(text(), 0..3)),
            proptest::collection::vec(text(), 0..3),
            proptest::collection::btree_map(text(), text(), 0..3),
            proptest::option::of(healthcheck),
        )
            .prop_map(
                |(
                    env,
                    cmd,
                    entrypoint,
                    (workdir, user, stop_signal),
                    shell,
                    ports,
                    labels,
                    healthcheck,
                )| {
                    plan::ImageConfig {
                        env,
                        cmd,
                        entrypoint,
                        workdir,
                        user,
                        shell,
                        exposed_ports: ports.clone(),
                        labels,
                        volumes: ports.clone(),
                        stop_signal,
                        healthcheck,
                        onbuild: ports,
                    }
                },
            )
    }

    fn stage() -> impl Strategy<Value = plan::Stage> {
        (
            any::<u16>(),
            opt_text(),
            prop_oneof![
                Just(plan::Base::Scratch),
                text().prop_map(|reference| plan::Base::Image { reference }),
                any::<u16>().prop_map(|i| plan::Base::Stage { index: i as usize }),
            ],
            opt_text(),
            span(),
            proptest::collection::vec(step(), 0..4),
            image_config(),
        )
            .prop_map(
                |(index, name, base, platform, span, steps, config)| plan::Stage {
                    index: index as usize,
                    name,
                    base,
                    platform,
                    span,
                    steps,
                    config,
                },
            )
    }

    fn build_plan() -> impl Strategy<Value = plan::BuildPlan> {
        (
            any::<u32>(),
            text(),
            any::<u16>(),
            proptest::collection::vec(stage(), 0..3),
            proptest::collection::vec(text(), 0..2),
        )
            .prop_map(|(schema_version, dockerfile, target, stages, warnings)| {
                plan::BuildPlan {
                    schema_version,
                    dockerfile,
                    target: target as usize,
                    stages,
                    warnings,
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn plan_round_trips_through_pb_and_the_wire(plan in build_plan()) {
            use prost::Message;
            let msg = pb::BuildPlan::from(&plan);
            let bytes = msg.encode_to_vec();
            let decoded = pb::BuildPlan::decode(bytes.as_slice()).unwrap();
            let back = plan::BuildPlan::try_from(decoded).unwrap();
            prop_assert_eq!(plan, back);
        }

        #[test]
        fn frames_round_trip(
            index in any::<u32>(),
            offset in any::<u64>(),
            data in proptest::collection::vec(any::<u8>(), 1..64),
            digest in any::<[u8; 32]>(),
            path in text(),
        ) {
            let frames = [
                transfer::Frame::Header(transfer::Header {
                    index,
                    path: path.clone(),
                    kind: transfer::EntryKind::Symlink,
                    mode: 0o755,
                    uid: 1,
                    gid: 2,
                    size: 0,
                    mtime_secs: -5,
                    mtime_nanos: 7,
                    link_target: path,
                }),
                transfer::Frame::Chunk(transfer::Chunk::new(index, offset, data)),
                transfer::Frame::Eof(transfer::Eof { digest }),
            ];
            for frame in frames {
                let back = transfer::Frame::try_from(pb::ResourceFrame::from(frame.clone())).unwrap();
                prop_assert_eq!(frame, back);
            }
        }
    }

    #[test]
    fn missing_fields_are_named() {
        let step = pb::Step {
            index: 0,
            span: Some(pb::Span::default()),
            context: Some(pb::StepContext::default()),
            kind: None,
        };
        let err = plan::Step::try_from(step).unwrap_err();
        assert_eq!(err.to_string(), "missing field Step.kind");

        let stage = pb::Stage {
            base: None,
            ..pb::Stage::default()
        };
        assert_eq!(
            plan::Stage::try_from(stage).unwrap_err(),
            ConversionError::Missing {
                field: "Stage.base"
            }
        );
    }

    fn run_with(mount: pb::run_mount::Kind) -> pb::Run {
        pb::Run {
            command: Some(pb::Command {
                form: Some(pb::command::Form::Shell("true".into())),
            }),
            network: pb::Network::Default.into(),
            heredocs: vec![],
            mounts: vec![pb::RunMount { kind: Some(mount) }],
        }
    }

    #[test]
    fn bad_mounts_are_refused_naming_the_field() {
        use pb::run_mount::{Bind, Cache, Kind, Secret};
        let err = |k| plan::Run::try_from(run_with(k)).unwrap_err().to_string();
        assert_eq!(
            err(Kind::Cache(Cache {
                sharing: 9,
                mode: 0o755,
                ..Cache::default()
            })),
            "invalid field RunMount.Cache.sharing: unknown sharing mode 9"
        );
        assert_eq!(
            err(Kind::Cache(Cache {
                sharing: pb::Sharing::Locked.into(),
                mode: 0o17777,
                ..Cache::default()
            })),
            "invalid field RunMount.Cache.mode: mode 0o17777 has bits above 0o7777"
        );
        assert_eq!(
            err(Kind::Bind(Bind::default())),
            "missing field RunMount.Bind.from"
        );
        assert_eq!(
            err(Kind::Secret(Secret {
                id: String::new(),
                mode: 0o400,
                ..Secret::default()
            })),
            "invalid field RunMount.Secret.id: empty secret id"
        );
        let no_kind = pb::Run {
            mounts: vec![pb::RunMount { kind: None }],
            ..run_with(Kind::Tmpfs(pb::run_mount::Tmpfs::default()))
        };
        assert_eq!(
            plan::Run::try_from(no_kind).unwrap_err().to_string(),
            "missing field RunMount.kind"
        );
        // A secret mount with only `env` keeps its absent target.
        let run = plan::Run::try_from(run_with(Kind::Secret(Secret {
            id: "tok".into(),
            env: Some("TOKEN".into()),
            mode: 0o400,
            ..Secret::default()
        })))
        .unwrap();
        assert!(matches!(
            &run.mounts[..],
            [plan::RunMount::Secret { target: None, env: Some(e), .. }] if e == "TOKEN"
        ));
    }

    #[test]
    fn unknown_enum_values_and_bad_digests_are_invalid() {
        let run = pb::Run {
            command: Some(pb::Command {
                form: Some(pb::command::Form::Shell("true".into())),
            }),
            network: 42,
            heredocs: vec![],
            mounts: vec![],
        };
        let err = plan::Run::try_from(run).unwrap_err().to_string();
        assert_eq!(err, "invalid field Run.network: unknown network mode 42");

        let eof = pb::ResourceFrame {
            frame: Some(pb::resource_frame::Frame::Eof(pb::Eof {
                digest: vec![0; 31],
            })),
        };
        let err = transfer::Frame::try_from(eof).unwrap_err().to_string();
        assert_eq!(err, "invalid field Eof.digest: 31 bytes, expected 32");

        let header = pb::Header {
            kind: 0,
            ..pb::Header::default()
        };
        assert!(matches!(
            transfer::Header::try_from(header),
            Err(ConversionError::Invalid {
                field: "Header.kind",
                ..
            })
        ));
    }
}
