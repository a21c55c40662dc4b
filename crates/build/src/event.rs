//! Typed progress events: what a build or a run is doing, for the caller to render.
//!
//! The library never prints. A caller passes an [`EventSink`] and renders each [`Event`] as it
//! likes (buildkit's plain/tty/rawjson renderers, cargo's `Shell`): `firebuild-host` prints them
//! as lines on stderr.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

/// Where the guest's output line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Coarse phases of a build, each reported with its duration when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Dockerfile → plan, including fetching base configs.
    Plan,
    /// Base image → ext4 work image.
    Base,
    /// Guest kernel and the agent's initramfs.
    Kernel,
    /// VM start until the agent connected over mutual TLS.
    Boot,
    /// The agent's first request (the plan) until the first step started.
    Setup,
    /// The steps, from the first start to the last finish.
    Steps,
    /// The agent's outcome until the VM exited: the guest restores what the build changed,
    /// unmounts and syncs the root and powers off.
    Shutdown,
    /// Check, shrink and write the image, manifest and VM config.
    Image,
}

/// One thing that happened during a build or a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Event {
    /// The plan is resolved.
    Planned {
        /// Stages to build.
        stages: usize,
        /// Steps in all of them.
        steps: usize,
    },
    /// A non-fatal finding (plan warnings, an unused build arg...).
    Warning {
        /// The message, naming its file and line where it has one.
        message: String,
    },
    /// A phase ended.
    PhaseFinished {
        /// Which.
        phase: Phase,
        /// How long it took.
        elapsed: Duration,
    },
    /// How the guest's boot went, by its own clock, reported with its first request: the
    /// host's [`Phase::Boot`] also holds the VMM's start and the connection.
    GuestBoot {
        /// The kernel's start until PID 1 (the initramfs).
        kernel: Duration,
        /// PID 1 until the agent (modules, root mount, switch).
        initramfs: Duration,
        /// The agent's start until its first request (metadata, configuration, connection).
        agent: Duration,
    },
    /// A stage's build started (its base, then its steps).
    StageStarted {
        /// The stage's index in the Dockerfile (0-based).
        index: usize,
        /// Its `AS` name.
        name: Option<String>,
        /// Its steps.
        steps: usize,
    },
    /// A stage is built.
    StageFinished {
        /// The stage's index in the Dockerfile.
        index: usize,
        /// Its `AS` name.
        name: Option<String>,
        /// How long it took, base included.
        elapsed: Duration,
    },
    /// The base image is being prepared.
    BaseStarted {
        /// The reference (`scratch`, `oci:/path`, `registry/name:tag`).
        reference: String,
    },
    /// The VM is starting.
    VmStarting {
        /// The driver (`qemu`, `firecracker`).
        driver: &'static str,
    },
    /// The agent in the guest connected (mutual TLS done): the VM booted.
    AgentConnected,
    /// The bootstrap credentials were removed from the metadata after the guest connected.
    CredentialsScrubbed,
    /// A step started.
    StepStarted {
        /// 1-based position among all steps of the build.
        number: usize,
        /// Steps in the build.
        total: usize,
        /// The stage as buildkit labels it (`build`, `stage-0`); empty for a one-stage build.
        stage: String,
        /// The Dockerfile line of the instruction.
        line: u32,
        /// The instruction, shortened (`RUN apt-get install -y hello`).
        instruction: String,
    },
    /// A step the step cache had: its result was reused, it did not run (BuildKit's
    /// `CACHED`).
    StepCached {
        /// Its number among all steps (1-based).
        number: usize,
        /// All steps of the build.
        total: usize,
        /// The stage's name when the build has several stages.
        stage: String,
        /// Its Dockerfile line.
        line: u32,
        /// Its instruction text.
        instruction: String,
    },
    /// The step cache stored the disk as it was after a step.
    StepSnapshot {
        /// The step's number (1-based; 0: the stage's base, before any step).
        number: usize,
        /// Bytes of the image read and hashed.
        scanned_bytes: u64,
        /// Bytes of new chunks written (the rest were stored already).
        written_bytes: u64,
        /// How long the snapshot held the guest.
        elapsed: Duration,
    },
    /// One line the step printed.
    Output {
        /// 1-based step number.
        number: usize,
        /// stdout or stderr.
        stream: Stream,
        /// The line, without its terminator.
        line: String,
    },
    /// A step ended.
    StepFinished {
        /// 1-based step number.
        number: usize,
        /// Its exit code.
        exit_code: i32,
        /// How long it ran.
        elapsed: Duration,
    },
    /// A COPY/ADD resource was sent to the guest.
    Transferred {
        /// The resource id.
        id: String,
        /// Bytes sent.
        bytes: u64,
    },
    /// The image and its companions are written.
    ImageWritten {
        /// The ext4 image.
        image: PathBuf,
        /// Its size in bytes (the file is sparse).
        size_bytes: u64,
        /// The whole build.
        elapsed: Duration,
    },
    /// A line the guest printed on its console (run mode: the workload's output).
    Console {
        /// The line.
        line: String,
    },
    /// The guest wrote back its status (run mode with metadata: `/guest/status`).
    GuestStatus {
        /// The status document as the guest wrote it (schema-checked by the server).
        status: firebuild_mmds::schema::GuestStatus,
    },
    /// The guest consumed a credential and deleted it from the metadata (run mode).
    MetadataConsumed {
        /// The JSON pointer deleted.
        pointer: String,
    },
    /// The workload exited (run mode).
    Exited {
        /// Its exit code, as the guest reported it.
        code: i32,
    },
}

/// Receives [`Event`]s; called from the build's tasks, so it must be cheap and thread-safe.
pub type EventSink = Arc<dyn Fn(Event) + Send + Sync>;

/// A sink that drops every event.
pub fn ignore() -> EventSink {
    Arc::new(|_| {})
}
