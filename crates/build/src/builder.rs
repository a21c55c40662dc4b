//! The build flow: [`Builder::build`] reads top to bottom as its steps.

use std::path::Path;
use std::time::Instant;

use firebuild_bootstrap::Outcome;
use firebuild_plan::{Base, Stage};
use firebuild_rootfs::{BaseSource, PrepareOptions, Prepared};
use firebuild_vmm::RunOutcome;

use crate::boot::{self, Boot};
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

    /// Builds `req`: plan, base image, kernel and agent, PKI and servers, the VM running the
    /// steps, then the image and its companions in `req.out_dir`.
    pub async fn build(&self, req: &BuildRequest, events: EventSink) -> Result<Built> {
        let started = Instant::now();
        req.validate()?;
        let planned = self.plan_phase(req, &events).await?;
        let stage = planned.target()?.clone();
        let work = WorkDir::create(&req.out_dir)?;
        let prepared = self
            .base_phase(&stage, &planned, work.path(), &events)
            .await?;
        let t = Instant::now();
        let boot = boot::prepare(&self.options.guest, None, work.path()).await?;
        phase(&events, Phase::Kernel, t);
        self.run_steps(req, &planned, &boot, work.path(), &events)
            .await?;
        let t = Instant::now();
        let built = self.finish(req, &planned, &stage, prepared, &boot, work.path())?;
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

    /// The base image → the ext4 work image the steps run in.
    async fn base_phase(
        &self,
        stage: &Stage,
        planned: &Planned,
        work: &Path,
        events: &EventSink,
    ) -> Result<Prepared> {
        let t = Instant::now();
        let source = match &stage.base {
            Base::Image { reference } => reference.parse().map_err(|source| Error::Base {
                reference: reference.clone(),
                source,
            })?,
            _ => BaseSource::Scratch,
        };
        events(Event::BaseStarted {
            reference: source.to_string(),
        });
        let mut opts = PrepareOptions::new(&self.options.pull.cache_dir, work.join("base"));
        opts.pull = self.options.pull.clone();
        opts.ext4.size = Some(self.options.work_size_mib * 1024 * 1024);
        let image = work.join("rootfs.ext4");
        let prepared = firebuild_rootfs::prepare(&source, &image, &opts)
            .await
            .map_err(|e| Error::Base {
                reference: format!("{source} ({})", planned.file.display()),
                source: e,
            })?;
        let _ = std::fs::remove_dir_all(work.join("base"));
        phase(events, Phase::Base, t);
        Ok(prepared)
    }

    /// Starts the servers and the VM, and waits for the guest's outcome.
    async fn run_steps(
        &self,
        req: &BuildRequest,
        planned: &Planned,
        boot: &Boot,
        work: &Path,
        events: &EventSink,
    ) -> Result<()> {
        let session = Session::start(planned, &req.context, &req.name, events.clone()).await?;
        events(Event::VmStarting { driver: "qemu" });
        let vm_req = VmRequest {
            name: format!("build-{}", req.name),
            dir: &work.join("vm"),
            rootfs: &work.join("rootfs.ext4"),
            boot,
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
        prepared: Prepared,
        boot: &Boot,
        work: &Path,
    ) -> Result<Built> {
        let work_image = work.join("rootfs.ext4");
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
            base: prepared.base,
            dockerfile: &planned.text,
            build_args,
            kernel: &boot.kernel,
        };
        image::write(&work_image, size, outputs, &self.options)
    }
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
