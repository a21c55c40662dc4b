//! The build flow: [`Builder::build`] reads top to bottom as its steps.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use firebuild_bootstrap::Outcome;
use firebuild_plan::{Base, DiskRole, RunMount, Sharing, Stage, StepKind};
use firebuild_rootfs::{BaseProvenance, BaseSource, PrepareOptions, Prepared};
use firebuild_vmm::{Drive, RunOutcome};

use crate::boot::{self, Boot};
use crate::cache_mounts;
use crate::error::{Error, Result};
use crate::event::{Event, EventSink, Phase};
use crate::image::{self, Built, Outputs};
use crate::options::{BuildOptions, BuildRequest};
use crate::plan::{self, Planned};
use crate::session::Session;
use crate::vm::{self, VmRequest, VmResult};

/// Builds images from Dockerfiles in VMs. Cheap to create; one builder can run many builds.
#[derive(Debug, Clone)]
pub struct Builder {
    options: BuildOptions,
}

/// The work directory of one build, inside the output directory (same file system, so the
/// image is renamed into place); removed on drop, whatever happened.
struct WorkDir(tempfile::TempDir);

impl WorkDir {
    fn create(out_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(out_dir).map_err(Error::io("create", out_dir))?;
        tempfile::Builder::new()
            .prefix(".firebuild-work-")
            .tempdir_in(out_dir)
            .map(WorkDir)
            .map_err(Error::io("create a work directory in", out_dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

fn phase(events: &EventSink, phase: Phase, since: Instant) {
    events(Event::PhaseFinished {
        phase,
        elapsed: since.elapsed(),
    });
}

impl Builder {
    /// A builder with these options.
    pub fn new(options: BuildOptions) -> Self {
        Self { options }
    }

    /// The options.
    pub fn options(&self) -> &BuildOptions {
        &self.options
    }

    /// Resolves the Dockerfile into a plan, with the base images' configs (fetched, not their
    /// layers), without building anything.
    pub async fn plan(&self, req: &BuildRequest) -> Result<Planned> {
        plan::resolve(req, &self.options.pull, plan::Bases::Required).await
    }

    /// Builds `req`: plan, kernel and agent, then each stage the target needs in dependency
    /// order (its base, a VM running its steps with the disks it reads attached), then the
    /// target stage's image and its companions in `req.out_dir`.
    pub async fn build(&self, req: &BuildRequest, events: EventSink) -> Result<Built> {
        let started = Instant::now();
        req.validate()?;
        let planned = self.plan_phase(req, &events).await?;
        let target = planned.target()?.clone();
        let work = WorkDir::create(&req.out_dir)?;
        let t = Instant::now();
        let boot = boot::prepare(&self.options.guest, None, work.path()).await?;
        phase(&events, Phase::Kernel, t);
        // `ADD <url>`: fetched on the host (verified, cached by digest), served like a file.
        let urls = crate::fetch::fetch_urls(&planned.plan, &self.options.pull.cache_dir).await?;
        let mut stages = Stages::default();
        for stage in &planned.plan.stages {
            let ctx = StageCtx {
                req,
                planned: &planned,
                boot: &boot,
                work: work.path(),
                events: &events,
                urls: &urls,
            };
            let done = self.build_stage(&ctx, stage, &mut stages).await?;
            stages.done.insert(stage.index, done);
        }
        let result = stages
            .done
            .remove(&target.index)
            .ok_or_else(|| Error::Unsupported {
                file: planned.file.display().to_string(),
                reason: "the target stage was not built".to_owned(),
            })?;
        let t = Instant::now();
        let built = self.finish(req, &planned, &target, result, &boot)?;
        phase(&events, Phase::Image, t);
        events(Event::ImageWritten {
            image: built.image.clone(),
            size_bytes: built.size_bytes,
            elapsed: started.elapsed(),
        });
        Ok(built)
    }

    async fn plan_phase(&self, req: &BuildRequest, events: &EventSink) -> Result<Planned> {
        let t = Instant::now();
        // What the build cannot do is refused before anything is fetched.
        let first = plan::plan_without_bases(req)?;
        plan::check_supported(&first)?;
        let planned =
            plan::with_base_configs(req, first, &self.options.pull, plan::Bases::Required).await?;
        for w in &planned.plan.warnings {
            events(Event::Warning { message: w.clone() });
        }
        events(Event::Planned {
            stages: planned.plan.stages.len(),
            steps: planned.plan.steps().count(),
        });
        phase(events, Phase::Plan, t);
        Ok(planned)
    }

    /// One stage: its base (an image, scratch, or a copy of an earlier stage's result), then
    /// a VM running its steps, unless it has none.
    async fn build_stage(
        &self,
        ctx: &StageCtx<'_>,
        stage: &Stage,
        stages: &mut Stages,
    ) -> Result<StageImage> {
        let t = Instant::now();
        (ctx.events)(Event::StageStarted {
            index: stage.index,
            name: stage.name.clone(),
            steps: stage.steps.len(),
        });
        let image = ctx.work.join(format!("stage-{}.ext4", stage.index));
        let base = match &stage.base {
            Base::Stage { index } => {
                let from = stages.done.get(index).ok_or_else(|| Error::Unsupported {
                    file: ctx.planned.file.display().to_string(),
                    reason: format!("stage {} is based on stage {index}, not built", stage.index),
                })?;
                copy_sparse(&from.image, &image)?;
                from.base.clone()
            }
            base => {
                let name = format!("base-{}", stage.index);
                self.base_phase(base, ctx.planned, &ctx.work.join(name), &image, ctx.events)
                    .await?
                    .base
            }
        };
        if !stage.steps.is_empty() {
            let disks = self.disks(ctx, stage, stages).await?;
            self.run_steps(ctx, stage, &image, disks).await?;
        }
        (ctx.events)(Event::StageFinished {
            index: stage.index,
            name: stage.name.clone(),
            elapsed: t.elapsed(),
        });
        Ok(StageImage { image, base })
    }

    /// The disks a stage's VM needs besides its root: earlier stages and images read-only,
    /// cache mounts read-write (locked for this build).
    async fn disks(
        &self,
        ctx: &StageCtx<'_>,
        stage: &Stage,
        stages: &mut Stages,
    ) -> Result<Vec<Drive>> {
        let mut drives = Vec::new();
        for role in stage.disks() {
            let serial = role.serial();
            let drive = match &role {
                DiskRole::Stage(i) => {
                    let done = stages.done.get(i).ok_or_else(|| Error::Unsupported {
                        file: ctx.planned.file.display().to_string(),
                        reason: format!("stage {} reads stage {i}, not built", stage.index),
                    })?;
                    read_only(&serial, &done.image)
                }
                DiskRole::Image(reference) => {
                    if !stages.images.contains_key(reference) {
                        let path = ctx.work.join(format!("{serial}.ext4"));
                        let base = Base::Image {
                            reference: reference.clone(),
                        };
                        let dir = ctx.work.join(format!("{serial}-pull"));
                        self.base_phase(&base, ctx.planned, &dir, &path, ctx.events)
                            .await?;
                        stages.images.insert(reference.clone(), path);
                    }
                    read_only(&serial, &stages.images[reference])
                }
                DiskRole::Cache(id) => {
                    let sharing = cache_sharing(stage, id);
                    let (attached, why) = cache_mounts::attach(
                        &self.options.pull.cache_dir,
                        id,
                        sharing,
                        self.options.no_cache,
                        ctx.work,
                    )
                    .await?;
                    if let Some(message) = why {
                        (ctx.events)(Event::Warning { message });
                    }
                    let drive = Drive::new(serial.clone(), &attached.path);
                    stages.caches.push(attached);
                    drive
                }
            };
            drives.push(drive);
        }
        Ok(drives)
    }

    /// The base image → the ext4 work image `image` the steps run in.
    async fn base_phase(
        &self,
        base: &Base,
        planned: &Planned,
        scratch_dir: &Path,
        image: &Path,
        events: &EventSink,
    ) -> Result<Prepared> {
        let t = Instant::now();
        let source = match base {
            Base::Image { reference } => reference.parse().map_err(|source| Error::Base {
                reference: reference.clone(),
                source,
            })?,
            _ => BaseSource::Scratch,
        };
        events(Event::BaseStarted {
            reference: source.to_string(),
        });
        let mut opts = PrepareOptions::new(&self.options.pull.cache_dir, scratch_dir);
        opts.pull = self.options.pull.clone();
        opts.ext4.size = Some(self.options.work_size_mib * 1024 * 1024);
        let prepared = firebuild_rootfs::prepare(&source, image, &opts)
            .await
            .map_err(|e| Error::Base {
                reference: format!("{source} ({})", planned.file.display()),
                source: e,
            })?;
        let _ = std::fs::remove_dir_all(scratch_dir);
        phase(events, Phase::Base, t);
        Ok(prepared)
    }

    /// Starts the servers and the VM for one stage, and waits for the guest's outcome.
    async fn run_steps(
        &self,
        ctx: &StageCtx<'_>,
        stage: &Stage,
        image: &Path,
        disks: Vec<Drive>,
    ) -> Result<()> {
        let (req, planned) = (ctx.req, ctx.planned);
        let stage_plan = planned
            .plan
            .only_stage(stage.index)
            .ok_or_else(|| Error::Task(format!("stage {} vanished from the plan", stage.index)))?;
        let session =
            Session::start(planned, stage_plan, req, ctx.urls, ctx.events.clone()).await?;
        (ctx.events)(Event::VmStarting { driver: "qemu" });
        let vm_req = VmRequest {
            name: format!("build-{}-{}", req.name, stage.index),
            dir: &ctx.work.join(format!("vm-{}", stage.index)),
            rootfs: image,
            disks,
            boot: ctx.boot,
            metadata: Some(session.metadata_addr()),
            extra_cmdline: "",
        };
        let result = vm::run(&self.options.guest, &vm_req, self.options.timeout).await?;
        let (outcome, scrub) = session.finish().await;
        // The console log is kept beside the outputs only when the build failed.
        let kept = req.out_dir.join(format!("{}.console.log", req.name));
        let console = result.console.clone();
        let checked = check_outcome(outcome, result, kept.clone(), planned, self.options.timeout);
        if checked.is_err() {
            std::fs::copy(&console, &kept).map_err(Error::io("copy", &console))?;
        }
        checked?;
        match scrub {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(Error::Scrub(e)),
            None => Err(Error::Scrub("the guest never connected".to_owned())),
        }
    }

    /// Sizes the image and writes it with its companions.
    fn finish(
        &self,
        req: &BuildRequest,
        planned: &Planned,
        stage: &Stage,
        result: StageImage,
        boot: &Boot,
    ) -> Result<Built> {
        let work_image = result.image;
        let size = image::size(&work_image, &self.options)?;
        let build_args = if self.options.record_build_args {
            req.build_args.clone()
        } else {
            Vec::new()
        };
        let outputs = Outputs {
            out_dir: &req.out_dir,
            name: &req.name,
            config: stage.config.clone(),
            base: result.base,
            dockerfile: &planned.text,
            build_args,
            kernel: &boot.kernel,
        };
        image::write(&work_image, size, outputs, &self.options)
    }
}

/// What one stage's build needs from the whole build.
struct StageCtx<'a> {
    req: &'a BuildRequest,
    planned: &'a Planned,
    boot: &'a Boot,
    work: &'a Path,
    events: &'a EventSink,
    urls: &'a BTreeMap<String, PathBuf>,
}

/// A built stage: its image (in the work directory) and where its first base came from.
struct StageImage {
    image: PathBuf,
    base: BaseProvenance,
}

/// What the stages built so far left: their images, the images pulled for `--from`, and
/// the cache mounts held until the build ends.
#[derive(Default)]
struct Stages {
    done: BTreeMap<usize, StageImage>,
    images: BTreeMap<String, PathBuf>,
    caches: Vec<cache_mounts::Attached>,
}

fn read_only(serial: &str, path: &Path) -> Drive {
    let mut drive = Drive::new(serial, path);
    drive.read_only = true;
    drive
}

/// The sharing of cache `id` in `stage`: the strictest any of its mounts asks for.
fn cache_sharing(stage: &Stage, id: &str) -> Sharing {
    let mut sharing = Sharing::Shared;
    for step in &stage.steps {
        if let StepKind::Run(run) = &step.kind {
            for m in &run.mounts {
                if let RunMount::Cache {
                    id: i, sharing: s, ..
                } = m
                    && i == id
                    && *s == Sharing::Locked
                {
                    sharing = Sharing::Locked;
                }
            }
        }
    }
    sharing
}

/// Copies an image keeping it sparse (`cp --sparse=always`, an argv).
fn copy_sparse(from: &Path, to: &Path) -> Result<()> {
    let out = std::process::Command::new("cp")
        .arg("--sparse=always")
        .arg("--")
        .arg(from)
        .arg(to)
        .output()
        .map_err(Error::io("run cp for", from))?;
    if out.status.success() {
        return Ok(());
    }
    Err(Error::Io {
        op: "copy",
        path: from.to_path_buf(),
        source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
    })
}

/// `Dockerfile:LINE: ` of a step reference, empty when unknown.
fn location_of(planned: &Planned, at: Option<firebuild_bootstrap::StepRef>) -> String {
    at.and_then(|at| {
        planned
            .plan
            .stage(at.stage)
            .and_then(|stage| stage.steps.iter().find(|s| s.index == at.step))
    })
    .map(|step| format!("{}:{}: ", planned.file.display(), step.span.start_line))
    .unwrap_or_default()
}

/// The build's result from the guest's outcome and the VM's end.
fn check_outcome(
    outcome: Option<Outcome>,
    result: VmResult,
    console: std::path::PathBuf,
    planned: &Planned,
    timeout: std::time::Duration,
) -> Result<()> {
    match (outcome, result.outcome) {
        (Some(Outcome::Succeeded), Ok(RunOutcome::Exited(_))) => Ok(()),
        (
            Some(Outcome::Aborted {
                error,
                step,
                exit_code,
            }),
            _,
        ) => Err(Error::StepFailed {
            location: location_of(planned, step),
            exit_code,
            message: error,
            console,
        }),
        (_, Ok(RunOutcome::TimedOut)) => Err(Error::Timeout { timeout, console }),
        (_, Err(source)) => Err(Error::Vm { console, source }),
        (o, Ok(_)) => Err(Error::NoResult {
            what: o.map_or("no outcome".to_owned(), |o| o.to_string()),
            console,
        }),
    }
}
