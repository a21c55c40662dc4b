//! The build flow: [`Builder::build`] reads top to bottom as its steps.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use firebuild_bootstrap::Outcome;
use firebuild_plan::{Base, DiskRole, RunMount, Sharing, Stage, StepKind};
use firebuild_rootfs::{BaseProvenance, BaseSource, PrepareOptions, Prepared};
use firebuild_vmm::{Drive, RunOutcome};

use crate::boot::{self, Boot};
use crate::cache_mounts;
use crate::cancel::Cancel;
use crate::error::{Error, Result, TimedOutStep};
use crate::event::{Event, EventSink, Phase};
use crate::image::{self, Built, Outputs};
use crate::options::{BuildOptions, BuildRequest, GuestOptions};
use crate::plan::{self, Planned};
use crate::session::{self, Session};
use crate::stepcache::{self, Inputs, StageKeys, StageMeta, StartFrom, Store};
use crate::vm::{self, TakeAtSuccess, VmRequest, VmResult};
use crate::watchdog::StepWatchdog;

/// How long a cancelled build waits for its VM's thread to stop the VM before it removes the
/// work directory anyway (the driver polls the token every few hundred milliseconds).
const VM_STOP_GRACE: Duration = Duration::from_secs(10);

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

    /// Removes the directory now; its path if that worked.
    fn remove(self) -> Option<PathBuf> {
        let path = self.path().to_path_buf();
        match self.0.close() {
            Ok(()) => Some(path),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove the work directory");
                None
            }
        }
    }
}

/// The files [`image::write`] writes for `name` in `out_dir`, and the temporary names it
/// writes them under.
fn output_files(out_dir: &Path, name: &str) -> Vec<PathBuf> {
    [
        "ext4",
        "manifest.json",
        "manifest.json.tmp",
        "vmlinux",
        "initramfs.cpio",
        "firecracker.json",
        "firecracker.tmp",
        "tmp",
    ]
    .iter()
    .map(|ext| out_dir.join(format!("{name}.{ext}")))
    .collect()
}

/// Removes what a failed [`image::write`] may have left: a mix of this build's outputs and an
/// earlier build's is worse than none.
fn remove_outputs(out_dir: &Path, name: &str) {
    for path in output_files(out_dir, name) {
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::info!(path = %path.display(), "removed a partial output"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove"),
        }
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
    ///
    /// The build stops when the options' [`Cancel`] token is cancelled
    /// ([`Error::Cancelled`]), when a step outlives [`BuildOptions::step_timeout`]
    /// ([`Error::StepTimeout`]), or when this future is dropped: its VM is stopped and its work
    /// directory removed, whichever way it ends.
    pub async fn build(&self, req: &BuildRequest, events: EventSink) -> Result<Built> {
        req.validate()?;
        // This build's token: cancelled with the caller's, by the step timeout, or when this
        // future is dropped (the VM's thread polls it and stops the VM).
        let cancel = self.options.guest.cancel.child();
        let _stop_on_drop = cancel.drop_guard();
        let watchdog = StepWatchdog::start(self.options.step_timeout, cancel.clone());
        let guest = GuestOptions {
            cancel: cancel.clone(),
            ..self.options.guest.clone()
        };
        let run = Stop {
            guest: &guest,
            cancel: &cancel,
            watchdog: &watchdog,
        };
        let mut work = None;
        let result = self
            .build_in(req, watchdog.sink(events), &run, &mut work)
            .await;
        if result.is_ok() {
            self.keep_step_cache_bounded().await;
        }
        match result {
            Err(Error::Cancelled { .. }) => Err(Error::Cancelled {
                removed: work.and_then(WorkDir::remove).into_iter().collect(),
            }),
            // Anything else: the work directory goes when `work` drops.
            other => other,
        }
    }

    /// Removes the step cache's least recently used entries beyond its size limit.
    async fn keep_step_cache_bounded(&self) {
        let (Some(dir), Some(max)) = (&self.options.step_cache, self.options.step_cache_max_bytes)
        else {
            return;
        };
        let store = Store::new(dir);
        let pruned =
            tokio::task::spawn_blocking(move || store.prune(|_, _, kept| kept > max)).await;
        match pruned {
            Ok(Ok(removed)) if !removed.is_empty() => {
                tracing::info!(
                    entries = removed.len(),
                    "step cache: least recently used entries removed"
                );
            }
            Ok(Err(e)) => tracing::warn!("step cache: pruning to its limit: {e}"),
            _ => {}
        }
    }

    /// [`build`](Self::build)'s steps; `work` holds the work directory once there is one.
    async fn build_in(
        &self,
        req: &BuildRequest,
        events: EventSink,
        run: &Stop<'_>,
        work: &mut Option<WorkDir>,
    ) -> Result<Built> {
        let started = Instant::now();
        let planned = run.cancel.race(self.plan_phase(req, &events)).await?;
        let target = planned.target()?.clone();
        let work = work
            .insert(WorkDir::create(&req.out_dir)?)
            .path()
            .to_path_buf();
        let t = Instant::now();
        let boot = run
            .cancel
            .race(boot::prepare(run.guest, None, &work))
            .await?;
        phase(&events, Phase::Kernel, t);
        // `ADD <url>`: fetched on the host (verified, cached by digest), served like a file.
        let urls = run
            .cancel
            .race(crate::fetch::fetch_urls(
                &planned.plan,
                &self.options.pull.cache_dir,
            ))
            .await
            .map_err(|e| locate_fetch(&planned, e))?;
        let mut stages = Stages::default();
        for stage in &planned.plan.stages {
            let ctx = StageCtx {
                req,
                planned: &planned,
                boot: &boot,
                work: &work,
                events: &events,
                urls: &urls,
                run,
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

    /// One stage: its start (restored from the step cache with as many of its steps as it
    /// holds, or its base: an image, scratch, or a copy of an earlier stage's result), then a
    /// VM running the steps left, unless none is.
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
        let cache = self.stage_cache(ctx, stage, stages);
        let restored = match &cache {
            Some(c) if self.reuses(stage) => {
                let (store, keys, image) = (c.store.clone(), c.keys.clone(), image.clone());
                tokio::task::spawn_blocking(move || {
                    stepcache::restore_longest(&store, &keys, &image)
                })
                .await
                .ok()
                .flatten()
            }
            _ => None,
        };
        let (meta, done) = match restored {
            Some(r) => (r.meta, r.done),
            None => {
                let base = self.stage_start(ctx, stage, stages, &image).await?;
                // Known with or without the step cache: a disk the host takes at `Success`
                // still holds them (the guest skipped its shutdown).
                let stubs = stepcache::missing_stubs(&image).map_err(Error::image(&image))?;
                let meta = StageMeta { base, stubs };
                if let Some(c) = &cache {
                    let what = format!("stage {} start", stage.index);
                    publish(c, &image, (0, 0), &meta, ctx.events, what).await;
                }
                (meta, 0)
            }
        };
        for step in &stage.steps[..done] {
            (ctx.events)(session::cached_event(ctx.planned, stage.index, step.index));
        }
        if done < stage.steps.len() {
            let disks = ctx.run.cancel.race(self.disks(ctx, stage, stages)).await?;
            let hook = cache
                .as_ref()
                .map(|c| snapshot_hook(c, ctx, stage, &image, &meta));
            let taken = self
                .run_steps(ctx, stage, done, &image, disks, hook)
                .await?;
            if taken {
                // BuildKit's rule, which the guest's shutdown keeps when it runs: an image
                // that had no `/proc`, `/sys` or `/dev` is left without them.
                stepcache::remove_stubs(&image, &meta.stubs).map_err(Error::image(&image))?;
            }
        }
        if let Some(last) = cache.as_ref().and_then(|c| c.keys.last(stage)) {
            stages.keys.insert(stage.index, last.clone());
        }
        (ctx.events)(Event::StageFinished {
            index: stage.index,
            name: stage.name.clone(),
            elapsed: t.elapsed(),
        });
        Ok(StageImage {
            image,
            base: meta.base,
        })
    }

    /// The stage's base in `image`: an image or scratch imported, or a copy of an earlier
    /// stage's result.
    async fn stage_start(
        &self,
        ctx: &StageCtx<'_>,
        stage: &Stage,
        stages: &Stages,
        image: &Path,
    ) -> Result<BaseProvenance> {
        match &stage.base {
            Base::Stage { index } => {
                let from = stages.done.get(index).ok_or_else(|| Error::Unsupported {
                    file: ctx.planned.file.display().to_string(),
                    reason: format!("stage {} is based on stage {index}, not built", stage.index),
                })?;
                copy_sparse(&from.image, image)?;
                Ok(from.base.clone())
            }
            base => {
                let name = format!("base-{}", stage.index);
                let dir = ctx.work.join(name);
                let prepare = self.base_phase(base, ctx.planned, &dir, image, ctx.events);
                Ok(ctx.run.cancel.race(prepare).await?.base)
            }
        }
    }

    /// Whether this build reuses the step cache's results for `stage` (`--no-cache`,
    /// `--no-cache-filter NAME|INDEX`).
    fn reuses(&self, stage: &Stage) -> bool {
        let filtered = self.options.no_cache_filter.iter().any(|f| {
            stage.name.as_deref() == Some(f.to_ascii_lowercase().as_str())
                || *f == stage.index.to_string()
        });
        !self.options.no_cache && !filtered
    }

    /// The step cache and the stage's keys, when the build has a step cache and the stage can
    /// be keyed (a warning says why not otherwise).
    fn stage_cache(
        &self,
        ctx: &StageCtx<'_>,
        stage: &Stage,
        stages: &Stages,
    ) -> Option<StageCache> {
        let dir = self.options.step_cache.as_ref()?;
        let start = match &stage.base {
            Base::Scratch => StartFrom::Scratch,
            Base::Image { reference } => {
                StartFrom::Image(reference, ctx.planned.base_provenance.get(reference))
            }
            Base::Stage { index } => StartFrom::Stage(stages.keys.get(index)?.clone()),
        };
        let source = firebuild_bootstrap::DirSource::new(&ctx.planned.plan, &ctx.req.context);
        let inputs = Inputs {
            source: &source,
            urls: ctx.urls,
            stages: &stages.keys,
            images: &ctx.planned.base_provenance,
        };
        let keys = StageKeys::of(stage, &start, self.options.work_size_mib, &inputs);
        let keys = match keys {
            Ok(keys) => keys,
            Err(why) => {
                (ctx.events)(Event::Warning {
                    message: format!("stage {}: not cached: {why}", stage.index),
                });
                return None;
            }
        };
        if let Some(why) = &keys.stopped {
            (ctx.events)(Event::Warning {
                message: format!(
                    "stage {}: steps after step {} not cached: {why}",
                    stage.index,
                    keys.steps.len()
                ),
            });
        }
        Some(StageCache {
            store: Store::new(dir),
            keys,
        })
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
        // Thrown away when the build fails, journalled when it becomes the output.
        opts.ext4.without_journal = true;
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

    /// Starts the servers and the VM for one stage, and waits for the guest's outcome; `true` when
    /// the host took the disk at `Success` (the VM stopped, the guest's shutdown skipped).
    async fn run_steps(
        &self,
        ctx: &StageCtx<'_>,
        stage: &Stage,
        done: usize,
        image: &Path,
        disks: Vec<Drive>,
        hook: Option<firebuild_bootstrap::StepHook>,
    ) -> Result<bool> {
        let (req, planned) = (ctx.req, ctx.planned);
        let mut stage_plan = planned
            .plan
            .only_stage(stage.index)
            .ok_or_else(|| Error::Task(format!("stage {} vanished from the plan", stage.index)))?;
        // The steps the restored image already holds do not run again.
        for s in &mut stage_plan.stages {
            s.steps.retain(|step| step.index >= done);
        }
        let events = ctx.events.clone();
        // The VM is stopped as soon as the guest reports success, its root frozen.
        let take = TakeAtSuccess::default();
        let session = Session::start(
            planned,
            stage_plan,
            req,
            ctx.urls,
            events,
            hook,
            Some(take.hook()),
        );
        let session = ctx.run.cancel.race(session).await?;
        (ctx.events)(Event::VmStarting { driver: "qemu" });
        let vm_req = VmRequest {
            name: format!("build-{}-{}", req.name, stage.index),
            dir: &ctx.work.join(format!("vm-{}", stage.index)),
            rootfs: image,
            disks,
            boot: ctx.boot,
            metadata: Some(session.metadata_addr()),
            host_ports: vec![session.bootstrap_addr().port()],
            metadata_key: session.metadata_key(),
            extra_cmdline: "",
            take: Some(take),
        };
        let result = run_vm(ctx.run, &vm_req, self.options.timeout).await;
        // The console log is kept beside the outputs only when the build failed.
        let kept = req.out_dir.join(format!("{}.console.log", req.name));
        if ctx.run.cancel.is_cancelled() {
            // Stopped from outside or by the step timeout: the guest reports nothing more.
            drop(session);
            return Err(stopped(ctx, stage, &vm::console_path(&vm_req), kept));
        }
        let Some(result) = result else {
            return Err(Error::Task("the VM's thread did not end".to_owned()));
        };
        let result = result?;
        let (outcome, scrub) = session.finish().await;
        let (console, taken) = (result.console.clone(), result.taken);
        let checked = check_outcome(outcome, result, kept.clone(), planned, self.options.timeout);
        if checked.is_err() {
            std::fs::copy(&console, &kept).map_err(Error::io("copy", &console))?;
        }
        checked?;
        match scrub {
            Some(Ok(())) => Ok(taken),
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
        image::write(&work_image, outputs, &self.options)
            .inspect_err(|_| remove_outputs(&req.out_dir, &req.name))
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
    run: &'a Stop<'a>,
}

/// What stops a build: its token (in the guest options the VM driver polls) and the step
/// timeout that may cancel it.
struct Stop<'a> {
    guest: &'a GuestOptions,
    cancel: &'a Cancel,
    watchdog: &'a StepWatchdog,
}

/// Runs the VM; when the build is cancelled meanwhile, waits (a while) for the VM's thread to
/// stop it, so the work directory is not removed under a running VM. `None`: the thread did
/// not end in time.
async fn run_vm(
    stop: &Stop<'_>,
    req: &VmRequest<'_>,
    timeout: Duration,
) -> Option<Result<VmResult>> {
    let vm = vm::run(stop.guest, req, timeout);
    tokio::pin!(vm);
    tokio::select! {
        result = &mut vm => Some(result),
        () = stop.cancel.cancelled() => tokio::time::timeout(VM_STOP_GRACE, vm).await.ok(),
    }
}

/// The error of a stage whose VM was stopped by the token: the step that outlived the step
/// timeout (its console log kept at `kept`), or a plain cancellation.
fn stopped(ctx: &StageCtx<'_>, stage: &Stage, console: &Path, kept: PathBuf) -> Error {
    let Some((step, timeout)) = ctx.run.watchdog.expired() else {
        return Error::Cancelled {
            removed: Vec::new(),
        };
    };
    let console = match std::fs::copy(console, &kept) {
        Ok(_) => kept,
        Err(_) => console.to_path_buf(),
    };
    Error::StepTimeout(Box::new(TimedOutStep {
        location: match step.line {
            0 => String::new(),
            line => format!("{}:{line}: ", ctx.planned.file.display()),
        },
        stage: match &stage.name {
            Some(name) => format!("{} ({name})", stage.index),
            None => stage.index.to_string(),
        },
        number: step.number,
        total: step.total,
        instruction: step.instruction,
        timeout,
        console,
    }))
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
    /// The step cache key of each stage's result, for the stages that have one.
    keys: BTreeMap<usize, stepcache::Key>,
    images: BTreeMap<String, PathBuf>,
    caches: Vec<cache_mounts::Attached>,
}

/// A stage's step cache: where it is and the stage's keys.
struct StageCache {
    store: Store,
    keys: StageKeys,
}

/// Stores `image` as the stage's state after `done` steps (0: its start; `number` is the
/// step's number in the events). A failure is a warning: the build goes on without that
/// entry.
async fn publish(
    cache: &StageCache,
    image: &Path,
    (done, number): (usize, usize),
    meta: &StageMeta,
    events: &EventSink,
    description: String,
) {
    let Some(key) = cache.keys.after(done).cloned() else {
        return;
    };
    let (store, image) = (cache.store.clone(), image.to_path_buf());
    let extra = serde_json::to_value(meta).unwrap_or_default();
    let result = tokio::task::spawn_blocking(move || {
        let _lock = store.lock(false)?;
        store.publish(&key, &image, description, extra)
    })
    .await;
    match result {
        Ok(Ok(cost)) => events(Event::StepSnapshot {
            number,
            scanned_bytes: cost.scanned,
            written_bytes: cost.written,
            elapsed: cost.elapsed,
        }),
        Ok(Err(e)) => events(Event::Warning {
            message: format!("step cache: not stored: {e}"),
        }),
        Err(e) => events(Event::Warning {
            message: format!("step cache: not stored: {e}"),
        }),
    }
}

/// The bootstrap server's hook that stores the disk at each successful step's end, while the
/// guest holds its root frozen.
fn snapshot_hook(
    cache: &StageCache,
    ctx: &StageCtx<'_>,
    stage: &Stage,
    image: &Path,
    meta: &StageMeta,
) -> firebuild_bootstrap::StepHook {
    let cache = std::sync::Arc::new(StageCache {
        store: cache.store.clone(),
        keys: cache.keys.clone(),
    });
    let descriptions: BTreeMap<usize, (usize, String)> = stage
        .steps
        .iter()
        .map(|step| {
            let number = session::step_number(ctx.planned, stage.index, step.index);
            let text = ctx
                .planned
                .instruction(step.span.start_line, step.span.end_line);
            (
                step.index,
                (
                    number,
                    format!("stage {} step {}: {text}", stage.index, step.index + 1),
                ),
            )
        })
        .collect();
    let descriptions = std::sync::Arc::new(descriptions);
    let (image, meta, events) = (image.to_path_buf(), meta.clone(), ctx.events.clone());
    std::sync::Arc::new(move |at: firebuild_bootstrap::StepRef| {
        let (cache, descriptions) = (cache.clone(), descriptions.clone());
        let (image, meta, events) = (image.clone(), meta.clone(), events.clone());
        Box::pin(async move {
            let Some((number, description)) = descriptions.get(&at.step).cloned() else {
                return;
            };
            let done = (at.step + 1, number);
            publish(&cache, &image, done, &meta, &events, description).await;
        })
    })
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
/// A fetch error with the Dockerfile line of the first instruction naming its URL.
fn locate_fetch(planned: &Planned, e: Error) -> Error {
    let Error::Fetch { url, source, .. } = e else {
        return e;
    };
    let names_url = |step: &&firebuild_plan::Step| {
        let (StepKind::Add(t) | StepKind::Copy(t)) = &step.kind else {
            return false;
        };
        t.sources
            .iter()
            .any(|s| matches!(s, firebuild_plan::Source::Url { url: u, .. } if *u == url))
    };
    let location = planned
        .plan
        .steps()
        .map(|(_, step)| step)
        .find(names_url)
        .map(|step| format!("{}:{}: ", planned.file.display(), step.span.start_line))
        .unwrap_or_default();
    Error::Fetch {
        location,
        url,
        source,
    }
}

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
    let taken = result.taken;
    match (outcome, result.outcome) {
        (Some(Outcome::Succeeded), Ok(RunOutcome::Exited(_))) => Ok(()),
        (Some(Outcome::Succeeded), Ok(RunOutcome::Cancelled)) if taken => Ok(()),
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::sync::Arc;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_cancelled_build_removes_its_work_directory_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path().join("ctx");
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(ctx.join("Dockerfile"), "FROM scratch\nRUN true\n").unwrap();
        let out = dir.path().join("out");
        let guest = GuestOptions::new(dir.path().join("vminit"), dir.path().join("kernels"));
        let caller = guest.cancel.clone();
        let builder = Builder::new(BuildOptions::new(guest, dir.path().join("cache")));
        // Cancelled once the plan is made: after the work directory exists, before the VM.
        let events: EventSink = Arc::new(move |event| {
            if matches!(event, Event::Planned { .. }) {
                caller.cancel();
            }
        });
        let request = BuildRequest::new(&ctx, "cancelled", &out);
        let err = builder.build(&request, events).await.unwrap_err();
        let Error::Cancelled { removed } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(removed.len(), 1, "{removed:?}");
        assert!(removed[0].starts_with(&out), "{removed:?}");
        let work = removed[0].file_name().unwrap().to_string_lossy();
        assert!(work.starts_with(".firebuild-work-"), "{work}");
        assert!(!removed[0].exists());
        assert!(
            err.to_string().contains(&removed[0].display().to_string()),
            "{err}"
        );
        assert!(names(&out).is_empty(), "{:?}", names(&out));
    }

    #[test]
    fn a_failed_write_leaves_no_output_behind() {
        let dir = tempfile::tempdir().unwrap();
        for path in output_files(dir.path(), "demo") {
            std::fs::write(path, b"partial").unwrap();
        }
        // Not this build's outputs: kept.
        for other in ["demo.console.log", "other.ext4"] {
            std::fs::write(dir.path().join(other), b"kept").unwrap();
        }
        remove_outputs(dir.path(), "demo");
        assert_eq!(names(dir.path()), ["demo.console.log", "other.ext4"]);
    }
}
