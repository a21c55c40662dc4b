//! Rendering a build's [`Event`]s: plain lines, a live terminal view, JSON lines, or nothing
//! but the result (`--progress=auto|tty|plain|json`, `--quiet`).
//!
//! BuildKit's progress UI is the model: one renderer per mode over the same event stream, the
//! library never printing. Every renderer keeps a [`Timeline`] (step start times, phase and
//! stage durations) for the prefixes, rates and the closing summary.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, ValueEnum};
use firebuild_build::{Built, Event, EventSink, Phase, Stream};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Mode {
    /// `tty` when stderr is a terminal, `plain` otherwise.
    #[default]
    Auto,
    /// A live view on stderr: a spinner per running step with its last output lines.
    Tty,
    /// Lines on stderr as BuildKit's plain mode prints them; the steps' stdout on stdout.
    Plain,
    /// One JSON object per event on stdout (docs/progress-json.md).
    Json,
}

/// The progress flags of `build`.
#[derive(Debug, Args)]
pub struct ProgressArgs {
    /// How progress is shown: `auto` (tty when stderr is a terminal, else plain), `tty`,
    /// `plain`, or `json` (one object per line on stdout, see docs/progress-json.md).
    #[arg(long, value_enum, default_value_t = Mode::Auto, value_name = "MODE")]
    pub progress: Mode,
    /// Print nothing but errors and, at the end, the image path (on stdout).
    #[arg(short, long, conflicts_with = "progress")]
    pub quiet: bool,
}

/// One way of showing events.
trait Render: Send {
    /// Shows one event as it happens.
    fn event(&mut self, event: Event);
    /// Closes the view: the summary on success; on failure only what the error needs around
    /// it (the caller prints the error itself).
    fn finish(&mut self, result: Result<&Built, &anyhow::Error>);
}

/// A renderer shared between the build's tasks (through [`Progress::sink`]) and the caller
/// (through [`Progress::finish`]).
#[derive(Clone)]
pub struct Progress {
    inner: Arc<Mutex<Box<dyn Render>>>,
}

impl Progress {
    /// The renderer the flags ask for.
    pub fn new(args: &ProgressArgs) -> Self {
        if args.quiet {
            return Self::with(Quiet);
        }
        match args.progress.resolve() {
            Mode::Json => Self::with(Json::new(std::io::stdout())),
            Mode::Tty => Self::with(Tty::new(ProgressDrawTarget::stderr())),
            Mode::Plain | Mode::Auto => Self::plain(),
        }
    }

    /// Plain lines: stderr, and the guest's stdout on stdout.
    pub fn plain() -> Self {
        Self::with(Plain::new(std::io::stdout(), std::io::stderr()))
    }

    fn with(render: impl Render + 'static) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Box::new(render))),
        }
    }

    /// The sink to hand to the library.
    pub fn sink(&self) -> EventSink {
        let this = self.clone();
        Arc::new(move |event| this.lock().event(event))
    }

    /// Closes the view with the build's result.
    pub fn finish(&self, result: Result<&Built, &anyhow::Error>) {
        self.lock().finish(result);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Box<dyn Render>> {
        // A renderer that panicked mid-event has nothing worth protecting: keep rendering.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Mode {
    /// `Auto` decided: `Tty` when stderr is a terminal, `Plain` otherwise.
    fn resolve(self) -> Mode {
        match self {
            Mode::Auto if std::io::stderr().is_terminal() => Mode::Tty,
            Mode::Auto => Mode::Plain,
            other => other,
        }
    }
}

/// What every renderer remembers: when things started, how long the phases and stages took.
#[derive(Debug, Default)]
struct Timeline {
    /// The first event.
    started: Option<Instant>,
    /// Running or finished steps: number → when it started.
    steps: HashMap<usize, Instant>,
    /// The step started last (transfers belong to it).
    current: Option<usize>,
    /// The last transfer, to measure the next one's rate from.
    last_transfer: Option<Instant>,
    /// Finished phases, in order.
    phases: Vec<(String, Duration)>,
    /// Finished stages, in order, by label.
    stages: Vec<(String, Duration)>,
    /// The guests' boot reports, one per VM, as printed.
    boots: Vec<String>,
    /// Warnings seen.
    warnings: usize,
    /// The whole build, as the library measured it.
    elapsed: Option<Duration>,
}

impl Timeline {
    /// Records what the summary and the prefixes need; called before rendering each event.
    fn note(&mut self, event: &Event) {
        let now = Instant::now();
        self.started.get_or_insert(now);
        match event {
            Event::StepStarted { number, .. } => {
                self.steps.insert(*number, now);
                self.current = Some(*number);
                self.last_transfer = None;
            }
            Event::PhaseFinished { phase, elapsed } => {
                self.phases.push((phase_name(*phase), *elapsed));
            }
            Event::StageFinished {
                index,
                name,
                elapsed,
            } => self
                .stages
                .push((stage_label(*index, name.as_deref()), *elapsed)),
            Event::Warning { .. } => self.warnings += 1,
            Event::GuestBoot {
                kernel,
                initramfs,
                agent,
            } => self.boots.push(boot_times(*kernel, *initramfs, *agent)),
            Event::ImageWritten { elapsed, .. } => self.elapsed = Some(*elapsed),
            _ => {}
        }
    }

    /// Time since step `number` started (zero for an unknown step).
    fn since_step(&self, number: usize) -> Duration {
        self.steps
            .get(&number)
            .map_or(Duration::ZERO, Instant::elapsed)
    }

    /// How long the transfer just reported took: since the previous transfer of the same
    /// step, or since the step started. The library reports a transfer once it is complete.
    fn transfer_window(&mut self) -> Duration {
        let now = Instant::now();
        let from = self
            .last_transfer
            .or_else(|| self.current.and_then(|n| self.steps.get(&n).copied()))
            .unwrap_or(now);
        self.last_transfer = Some(now);
        now.duration_since(from)
    }

    /// The closing lines after a successful build.
    fn summary(&self, built: &Built) -> String {
        let total = self
            .elapsed
            .or_else(|| self.started.map(|s| s.elapsed()))
            .unwrap_or_default();
        let mut out = format!(
            "=> built {} ({}) in {}\n   manifest {}\n   firecracker config {}\n",
            built.image.display(),
            human_bytes(built.size_bytes),
            long_secs(total),
            built.manifest_path.display(),
            built.firecracker_config.display(),
        );
        let times = |list: &[(String, Duration)]| {
            list.iter()
                .map(|(name, d)| format!("{name} {}", secs(*d)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !self.phases.is_empty() {
            let _ = writeln!(out, "   phases: {}", times(&self.phases));
        }
        if !self.stages.is_empty() {
            let _ = writeln!(out, "   stages: {}", times(&self.stages));
        }
        for boot in &self.boots {
            let _ = writeln!(out, "   guest boot: {boot}");
        }
        match self.warnings {
            0 => {}
            1 => out.push_str("   1 warning (above)\n"),
            n => {
                let _ = writeln!(out, "   {n} warnings (above)");
            }
        }
        out
    }
}

/// `guest configured (revision "abc"; hostname applied, users applied)`: a status written back.
fn guest_status_line(status: &firebuild_mmds::schema::GuestStatus) -> String {
    let phase = serde_json::to_value(status.phase)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut detail: Vec<String> = status
        .steps
        .iter()
        .filter(|(_, outcome)| *outcome != "skipped")
        .map(|(step, outcome)| format!("{step} {outcome}"))
        .collect();
    if let Some(code) = status.workload_exit {
        detail.push(format!("exit code {code}"));
    }
    if let Some(message) = &status.message {
        detail.push(message.clone());
    }
    let detail = if detail.is_empty() {
        String::new()
    } else {
        format!(" ({})", detail.join(", "))
    };
    shown(&format!("guest {phase}{detail}")).into_owned()
}

/// The title of a step: `[3/9] RUN ...`, or `[build 3/9] RUN ...` in a named stage.
fn step_title(stage: &str, number: usize, total: usize, instruction: &str) -> String {
    let stage = if stage.is_empty() {
        String::new()
    } else {
        format!("{} ", shown(stage))
    };
    format!("[{stage}{number}/{total}] {}", shown(instruction))
}

/// BuildKit's plain mode: every line of a step is prefixed `#N`, where N is the step's number;
/// a line the step printed is `#N SECONDS LINE`, SECONDS being the time since the step started
/// with three decimals (BuildKit's progressui rule: `#5 0.412 Hit:1 http://deb.debian.org`),
/// so interleaved steps and slow commands stay readable. The guest's stdout goes to `out`
/// (so a caller can capture it), everything else to `err`.
struct Plain<O, E> {
    out: O,
    err: E,
    t: Timeline,
}

impl<O: Write + Send, E: Write + Send> Plain<O, E> {
    fn new(out: O, err: E) -> Self {
        Self {
            out,
            err,
            t: Timeline::default(),
        }
    }
}

impl<O: Write + Send, E: Write + Send> Render for Plain<O, E> {
    // Write errors (a closed pipe) are not the build's failure: the lines are dropped.
    fn event(&mut self, event: Event) {
        self.t.note(&event);
        let err = &mut self.err;
        match event {
            Event::Planned { stages, steps } => {
                let _ = writeln!(
                    err,
                    "=> plan: {}, {}",
                    count(stages, "stage"),
                    count(steps, "step")
                );
            }
            Event::Warning { message } => {
                let _ = writeln!(err, "WARNING: {}", shown(&message));
            }
            Event::PhaseFinished { phase, elapsed } => {
                let _ = writeln!(err, "=> {} DONE {}", phase_name(phase), secs(elapsed));
            }
            Event::GuestBoot {
                kernel,
                initramfs,
                agent,
            } => {
                let _ = writeln!(
                    err,
                    "=> guest boot: {}",
                    boot_times(kernel, initramfs, agent)
                );
            }
            Event::StageStarted { index, name, steps } => {
                let label = stage_label(index, name.as_deref());
                let _ = writeln!(err, "=> stage {}: {}", shown(&label), count(steps, "step"));
            }
            Event::StageFinished {
                index,
                name,
                elapsed,
            } => {
                let label = stage_label(index, name.as_deref());
                let _ = writeln!(err, "=> stage {} DONE {}", shown(&label), secs(elapsed));
            }
            Event::BaseStarted { reference } => {
                let _ = writeln!(err, "=> base {}", shown(&reference));
            }
            Event::VmStarting { driver } => {
                let _ = writeln!(err, "=> vm starting ({driver})");
            }
            Event::AgentConnected => {
                let _ = writeln!(err, "=> agent connected (mutual TLS)");
            }
            Event::CredentialsScrubbed => {
                let _ = writeln!(err, "=> bootstrap credentials removed from the metadata");
            }
            Event::GuestStatus { status } => {
                let _ = writeln!(err, "=> {}", guest_status_line(&status));
            }
            Event::MetadataConsumed { pointer } => {
                let _ = writeln!(
                    err,
                    "=> the guest consumed {} (deleted from the metadata)",
                    shown(&pointer)
                );
            }
            Event::StepStarted {
                number,
                total,
                stage,
                instruction,
                ..
            } => {
                let title = step_title(&stage, number, total, &instruction);
                let _ = writeln!(err, "#{number} {title}");
            }
            Event::StepCached {
                number,
                total,
                stage,
                instruction,
                ..
            } => {
                // BuildKit's plain progress: the step's title, then `#N CACHED`.
                let title = step_title(&stage, number, total, &instruction);
                let _ = writeln!(err, "#{number} {title}");
                let _ = writeln!(err, "#{number} CACHED");
            }
            Event::StepSnapshot {
                number,
                scanned_bytes,
                written_bytes,
                elapsed,
            } => {
                let _ = writeln!(
                    err,
                    "#{number} stored in the step cache: {} new of {} read, {}",
                    human_bytes(written_bytes),
                    human_bytes(scanned_bytes),
                    secs(elapsed)
                );
            }
            Event::Output {
                number,
                stream,
                line,
            } => {
                let at = self.t.since_step(number).as_secs_f64();
                let line = format!("#{number} {at:.3} {}", shown(&line));
                let _ = match stream {
                    Stream::Stdout => writeln!(self.out, "{line}"),
                    Stream::Stderr => writeln!(err, "{line}"),
                };
            }
            Event::StepFinished {
                number,
                exit_code: 0,
                elapsed,
            } => {
                let _ = writeln!(err, "#{number} DONE {}", secs(elapsed));
            }
            Event::StepFinished {
                number,
                exit_code,
                elapsed,
            } => {
                let _ = writeln!(
                    err,
                    "#{number} ERROR: exit code {exit_code} after {}",
                    secs(elapsed)
                );
            }
            Event::Transferred { id, bytes } => {
                let window = self.t.transfer_window();
                let step = self.t.current.map(|n| format!("#{n} ")).unwrap_or_default();
                let _ = writeln!(
                    err,
                    "{step}sent resource {}: {}",
                    shown(&id),
                    transfer(bytes, window)
                );
            }
            Event::Console { line } => {
                let _ = writeln!(self.out, "{}", shown(&line));
            }
            // ImageWritten is in the summary; Exited is the run command's exit code.
            _ => {}
        }
    }

    fn finish(&mut self, result: Result<&Built, &anyhow::Error>) {
        if let Ok(built) = result {
            let _ = write!(self.err, "{}", self.t.summary(built));
        }
        let _ = self.out.flush();
        let _ = self.err.flush();
    }
}

/// `--quiet`: errors (printed by the caller) and the image path, on stdout.
struct Quiet;

impl Render for Quiet {
    fn event(&mut self, _: Event) {}

    fn finish(&mut self, result: Result<&Built, &anyhow::Error>) {
        if let Ok(built) = result {
            println!("{}", built.image.display());
        }
    }
}

/// `--progress=json`: each event as its serde form (docs/progress-json.md) plus `"time"`, the
/// wall-clock time it was rendered in milliseconds since the Unix epoch; one object per line.
/// The host adds `built` (the outputs) or `failed` (the error) as the last line.
struct Json<W> {
    out: W,
}

impl<W: Write + Send> Json<W> {
    fn new(out: W) -> Self {
        Self { out }
    }

    /// Writes one object with `"time"` appended: the event's own fields keep their order,
    /// `event` first.
    fn line(&mut self, object: Result<String, serde_json::Error>) {
        let mut text = match object {
            Ok(text) if text.ends_with('}') => text,
            // Only a path that is not UTF-8 fails to serialize: say so rather than drop it.
            Ok(_) | Err(_) => serde_json::json!({
                "event": "unrenderable",
                "message": "this event could not be written as JSON (a path that is not UTF-8?)",
            })
            .to_string(),
        };
        text.pop();
        let time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let _ = writeln!(self.out, "{text},\"time\":{time}}}");
        let _ = self.out.flush();
    }
}

impl<W: Write + Send> Render for Json<W> {
    fn event(&mut self, event: Event) {
        self.line(serde_json::to_string(&event));
    }

    fn finish(&mut self, result: Result<&Built, &anyhow::Error>) {
        let outcome = match result {
            Ok(built) => Outcome::Built {
                image: &built.image,
                size_bytes: built.size_bytes,
                manifest: &built.manifest_path,
                firecracker_config: &built.firecracker_config,
                kernel: &built.kernel,
                initramfs: &built.initramfs,
            },
            Err(err) => Outcome::Failed {
                message: format!("{err:#}"),
            },
        };
        self.line(serde_json::to_string(&outcome));
    }
}

/// The last JSON line, added by the host: the outputs, or the error.
#[derive(Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
enum Outcome<'a> {
    Built {
        image: &'a Path,
        size_bytes: u64,
        manifest: &'a Path,
        firecracker_config: &'a Path,
        kernel: &'a Path,
        initramfs: &'a Path,
    },
    Failed {
        message: String,
    },
}

/// Output lines kept per running step (the failed step's are printed).
const KEPT_LINES: usize = 20;
/// Output lines shown under a running step.
const TAIL_LINES: usize = 5;
/// Longest output line shown under a running step, in characters.
const TAIL_WIDTH: usize = 160;

/// A running step in the live view.
struct StepView {
    title: String,
    spinner: ProgressBar,
    tail: ProgressBar,
    lines: VecDeque<String>,
    transfers: Vec<ProgressBar>,
}

/// `--progress=tty`: a live view on stderr. A status spinner for the phases, a spinner per
/// running step with its elapsed time and its last output lines, a bar per transfer with its
/// size and rate; finished steps scroll up as one line (a failed one with its last lines).
struct Tty {
    multi: MultiProgress,
    status: Option<ProgressBar>,
    steps: HashMap<usize, StepView>,
    /// The guest's stdout is copied here when stdout is not the terminal (`> build.log`).
    copy: Option<Box<dyn Write + Send>>,
    t: Timeline,
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner())
}

impl Tty {
    fn new(target: ProgressDrawTarget) -> Self {
        let copy: Option<Box<dyn Write + Send>> = if std::io::stdout().is_terminal() {
            None
        } else {
            Some(Box::new(std::io::stdout()))
        };
        Self {
            multi: MultiProgress::with_draw_target(target),
            status: None,
            steps: HashMap::new(),
            copy,
            t: Timeline::default(),
        }
    }

    /// Shows what the build is doing between steps.
    fn status(&mut self, message: String) {
        let bar = self.status.get_or_insert_with(|| {
            let bar = self.multi.add(ProgressBar::new_spinner());
            bar.set_style(style("{spinner:.cyan} {wide_msg} {elapsed:.dim}"));
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        bar.set_message(message);
    }

    fn println(&self, line: impl AsRef<str>) {
        let _ = self.multi.println(line);
    }

    fn step_started(&mut self, number: usize, title: String) {
        let spinner = self.multi.add(ProgressBar::new_spinner());
        spinner.set_style(style("{spinner:.cyan} {wide_msg} {elapsed:.dim}"));
        spinner.set_message(title.clone());
        spinner.enable_steady_tick(Duration::from_millis(120));
        let tail = self
            .multi
            .insert_after(&spinner, ProgressBar::new_spinner());
        tail.set_style(style("{msg:.dim}"));
        self.steps.insert(
            number,
            StepView {
                title,
                spinner,
                tail,
                lines: VecDeque::new(),
                transfers: Vec::new(),
            },
        );
    }

    fn output(&mut self, number: usize, stream: Stream, line: &str) {
        let line = shown(line);
        if let (Stream::Stdout, Some(copy)) = (stream, self.copy.as_mut()) {
            let _ = writeln!(copy, "{line}");
        }
        let Some(view) = self.steps.get_mut(&number) else {
            // The guest's output travels beside the step's status: a last line may come after
            // the step finished. Printed above, it is not lost.
            self.println(format!("    #{number} {line}"));
            return;
        };
        if view.lines.len() == KEPT_LINES {
            view.lines.pop_front();
        }
        view.lines.push_back(line.into_owned());
        let skip = view.lines.len().saturating_sub(TAIL_LINES);
        let tail: Vec<String> = view
            .lines
            .iter()
            .skip(skip)
            .map(|l| format!("    {}", clip(l, TAIL_WIDTH)))
            .collect();
        view.tail.set_message(tail.join("\n"));
    }

    fn step_finished(&mut self, number: usize, exit_code: i32, elapsed: Duration) {
        let Some(view) = self.steps.remove(&number) else {
            return;
        };
        for bar in view.transfers.iter().chain([&view.tail, &view.spinner]) {
            bar.finish_and_clear();
            self.multi.remove(bar);
        }
        if exit_code == 0 {
            self.println(format!("=> {} DONE {}", view.title, secs(elapsed)));
        } else {
            self.println(format!(
                "=> {} ERROR: exit code {exit_code} after {}",
                view.title,
                secs(elapsed)
            ));
            for line in &view.lines {
                self.println(format!("    {line}"));
            }
        }
        for bar in &view.transfers {
            self.println(format!("    sent {}", bar.message()));
        }
    }

    fn transferred(&mut self, id: &str, bytes: u64) {
        let window = self.t.transfer_window();
        let text = format!("{}: {}", shown(id), transfer(bytes, window));
        let Some(view) = self.t.current.and_then(|n| self.steps.get_mut(&n)) else {
            self.println(format!("=> sent resource {text}"));
            return;
        };
        // Complete when reported: the bar shows the size and the rate, full.
        let bar = self
            .multi
            .insert_after(&view.spinner, ProgressBar::new(bytes.max(1)));
        bar.set_style(style("    [{bar:24}] {msg}"));
        bar.set_message(format!("resource {text}"));
        bar.finish();
        view.transfers.push(bar);
    }

    fn clear(&mut self) {
        for (_, view) in self.steps.drain() {
            for bar in view.transfers.iter().chain([&view.tail, &view.spinner]) {
                bar.finish_and_clear();
            }
        }
        if let Some(bar) = self.status.take() {
            bar.finish_and_clear();
        }
        let _ = self.multi.clear();
    }
}

impl Render for Tty {
    fn event(&mut self, event: Event) {
        self.t.note(&event);
        match event {
            Event::Planned { stages, steps } => {
                self.println(format!(
                    "=> plan: {}, {}",
                    count(stages, "stage"),
                    count(steps, "step")
                ));
            }
            Event::Warning { message } => self.println(format!("WARNING: {}", shown(&message))),
            Event::PhaseFinished { phase, elapsed } => {
                self.println(format!("=> {} DONE {}", phase_name(phase), secs(elapsed)));
                if phase == Phase::Steps {
                    self.status("writing the image".to_owned());
                }
            }
            Event::BaseStarted { reference } => {
                self.status(format!("preparing the base {}", shown(&reference)));
            }
            Event::VmStarting { driver } => self.status(format!("booting the VM ({driver})")),
            Event::AgentConnected => self.status("agent connected".to_owned()),
            Event::GuestBoot {
                kernel,
                initramfs,
                agent,
            } => self.println(format!(
                "=> guest boot: {}",
                boot_times(kernel, initramfs, agent)
            )),
            Event::StageStarted { index, name, steps } => {
                let label = stage_label(index, name.as_deref());
                self.status(format!("stage {}: {}", shown(&label), count(steps, "step")));
            }
            Event::StageFinished {
                index,
                name,
                elapsed,
            } => {
                let label = stage_label(index, name.as_deref());
                self.println(format!("=> stage {} DONE {}", shown(&label), secs(elapsed)));
            }
            Event::StepStarted {
                number,
                total,
                stage,
                instruction,
                ..
            } => {
                if let Some(bar) = self.status.take() {
                    bar.finish_and_clear();
                    self.multi.remove(&bar);
                }
                self.step_started(number, step_title(&stage, number, total, &instruction));
            }
            Event::Output {
                number,
                stream,
                line,
            } => self.output(number, stream, &line),
            Event::StepFinished {
                number,
                exit_code,
                elapsed,
            } => self.step_finished(number, exit_code, elapsed),
            Event::StepCached {
                number,
                total,
                stage,
                instruction,
                ..
            } => self.println(format!(
                "{} CACHED",
                step_title(&stage, number, total, &instruction)
            )),
            Event::Transferred { id, bytes } => self.transferred(&id, bytes),
            Event::Console { line } => self.println(shown(&line)),
            Event::GuestStatus { status } => self.println(guest_status_line(&status)),
            _ => {}
        }
    }

    fn finish(&mut self, result: Result<&Built, &anyhow::Error>) {
        self.clear();
        if let Some(copy) = self.copy.as_mut() {
            let _ = copy.flush();
        }
        if let Ok(built) = result {
            eprint!("{}", self.t.summary(built));
        }
    }
}

/// A stage as BuildKit labels it: its `AS` name, else `stage-INDEX`.
fn stage_label(index: usize, name: Option<&str>) -> String {
    name.map_or_else(|| format!("stage-{index}"), str::to_owned)
}

/// A phase's name as the JSON form spells it (`plan`, `kernel`...).
/// `kernel 2.10s, initramfs 0.60s, agent 0.25s`: a guest's boot by its own clock.
/// Hundredths of a second: the agent's share is a fraction of one.
fn boot_times(kernel: Duration, initramfs: Duration, agent: Duration) -> String {
    format!(
        "kernel {:.2}s, initramfs {:.2}s, agent {:.2}s",
        kernel.as_secs_f64(),
        initramfs.as_secs_f64(),
        agent.as_secs_f64()
    )
}

fn phase_name(phase: Phase) -> String {
    match serde_json::to_value(phase) {
        Ok(serde_json::Value::String(name)) => name,
        _ => format!("{phase:?}").to_lowercase(),
    }
}

/// `1 stage`, `9 steps`.
fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// `12.3s`.
fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// `12.3s`, or `2m 5.0s` past a minute.
fn long_secs(d: Duration) -> String {
    let minutes = d.as_secs() / 60;
    if minutes == 0 {
        return secs(d);
    }
    let rest = d.as_secs_f64() - (minutes * 60) as f64;
    format!("{minutes}m {rest:.1}s")
}

/// `512 B`, `1.5 KiB`, `42.0 MiB`, `1.2 GiB`.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `12.0 MiB in 0.4s (30.0 MiB/s)`; no rate for a transfer too quick to measure.
fn transfer(bytes: u64, window: Duration) -> String {
    let size = human_bytes(bytes);
    if window < Duration::from_millis(1) {
        return size;
    }
    let rate = (bytes as f64 / window.as_secs_f64()) as u64;
    format!("{size} in {} ({}/s)", secs(window), human_bytes(rate))
}

/// At most `n` characters.
fn clip(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A line from the guest or the Dockerfile as it may reach the user's terminal: control
/// characters (escape sequences that move the cursor, retitle the window, clear the screen...)
/// are shown as escapes instead of acting; tabs stay.
pub fn shown(line: &str) -> std::borrow::Cow<'_, str> {
    let acts = |c: char| c.is_control() && c != '\t';
    if !line.chars().any(acts) {
        return std::borrow::Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len() + 8);
    for c in line.chars() {
        if acts(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::path::PathBuf;

    use firebuild_rootfs::{BaseProvenance, Manifest, RootfsInfo};

    use super::*;

    fn built() -> Built {
        Built {
            image: PathBuf::from("out/demo.ext4"),
            size_bytes: 42 << 20,
            manifest_path: PathBuf::from("out/demo.manifest.json"),
            manifest: Manifest::new(
                firebuild_plan::ImageConfig::default(),
                BaseProvenance::default(),
                RootfsInfo::default(),
            ),
            firecracker_config: PathBuf::from("out/demo.firecracker.json"),
            kernel: PathBuf::from("out/demo.vmlinux"),
            initramfs: PathBuf::from("out/demo.initramfs.cpio"),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn step(number: usize, stage: &str, instruction: &str) -> Event {
        Event::StepStarted {
            number,
            total: 3,
            stage: stage.to_owned(),
            line: 2,
            instruction: instruction.to_owned(),
        }
    }

    fn output(number: usize, stream: Stream, line: &str) -> Event {
        Event::Output {
            number,
            stream,
            line: line.to_owned(),
        }
    }

    fn finished(number: usize, exit_code: i32) -> Event {
        Event::StepFinished {
            number,
            exit_code,
            elapsed: ms(1200),
        }
    }

    /// A two-stage build: a warning, a transfer, output on both streams, a step that prints
    /// an escape sequence.
    fn build_events() -> Vec<Event> {
        vec![
            Event::Planned {
                stages: 2,
                steps: 3,
            },
            Event::Warning {
                message: "Dockerfile:1: FROM --platform is ignored".to_owned(),
            },
            Event::PhaseFinished {
                phase: Phase::Plan,
                elapsed: ms(100),
            },
            Event::StageStarted {
                index: 0,
                name: Some("build".to_owned()),
                steps: 2,
            },
            Event::BaseStarted {
                reference: "scratch".to_owned(),
            },
            Event::VmStarting { driver: "qemu" },
            Event::AgentConnected,
            step(1, "build", "COPY busybox /bin/busybox"),
            Event::Transferred {
                id: "ctx/busybox".to_owned(),
                bytes: 3 << 20,
            },
            finished(1, 0),
            step(2, "build", "RUN echo hi"),
            output(2, Stream::Stdout, "hi"),
            output(2, Stream::Stderr, "a\u{1b}[2Jb"),
            finished(2, 0),
            Event::StageFinished {
                index: 0,
                name: Some("build".to_owned()),
                elapsed: ms(2500),
            },
            Event::StageStarted {
                index: 1,
                name: None,
                steps: 1,
            },
            step(3, "", "RUN echo hi"),
            finished(3, 0),
            Event::StageFinished {
                index: 1,
                name: None,
                elapsed: ms(1300),
            },
            Event::PhaseFinished {
                phase: Phase::Steps,
                elapsed: ms(3800),
            },
            Event::ImageWritten {
                image: PathBuf::from("out/demo.ext4"),
                size_bytes: 42 << 20,
                elapsed: ms(75_300),
            },
        ]
    }

    fn plain(events: Vec<Event>, result: Result<&Built, &anyhow::Error>) -> (String, String) {
        let mut p = Plain::new(Vec::new(), Vec::new());
        for e in events {
            p.event(e);
        }
        p.finish(result);
        (
            String::from_utf8(p.out).unwrap(),
            String::from_utf8(p.err).unwrap(),
        )
    }

    /// The lines without the `#N SECONDS` prefix's seconds (timings are not asserted).
    fn untimed(text: &str) -> Vec<String> {
        text.lines()
            .map(|l| {
                let mut parts = l.splitn(3, ' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(n), Some(t), Some(rest))
                        if n.starts_with('#') && t.parse::<f64>().is_ok() =>
                    {
                        format!("{n} {rest}")
                    }
                    _ => l.to_owned(),
                }
            })
            .collect()
    }

    #[test]
    fn plain_reads_like_buildkit_and_ends_with_a_summary() {
        let built = built();
        let (out, err) = plain(build_events(), Ok(&built));
        // The guest's stdout alone on stdout, under its step's number.
        assert_eq!(untimed(&out), ["#2 hi"]);
        let err = untimed(&err);
        let pos = |line: &str| {
            err.iter()
                .position(|l| l == line)
                .unwrap_or_else(|| panic!("no {line:?} in {err:#?}"))
        };
        let order = [
            pos("=> plan: 2 stages, 3 steps"),
            pos("WARNING: Dockerfile:1: FROM --platform is ignored"),
            pos("=> plan DONE 0.1s"),
            pos("=> stage build: 2 steps"),
            pos("=> base scratch"),
            pos("=> vm starting (qemu)"),
            pos("#1 [build 1/3] COPY busybox /bin/busybox"),
            pos("#1 DONE 1.2s"),
            pos("#2 [build 2/3] RUN echo hi"),
            // Escapes shown, not run.
            pos("#2 a\\u{1b}[2Jb"),
            pos("#2 DONE 1.2s"),
            pos("=> stage build DONE 2.5s"),
            pos("=> stage stage-1: 1 step"),
            pos("#3 [3/3] RUN echo hi"),
            pos("#3 DONE 1.2s"),
            pos("=> built out/demo.ext4 (42.0 MiB) in 1m 15.3s"),
            pos("   manifest out/demo.manifest.json"),
            pos("   firecracker config out/demo.firecracker.json"),
            pos("   phases: plan 0.1s, steps 3.8s"),
            pos("   stages: build 2.5s, stage-1 1.3s"),
            pos("   1 warning (above)"),
        ];
        assert!(order.is_sorted(), "{err:#?}");
        // The transfer is reported under its step with its size.
        assert!(
            err.iter()
                .any(|l| l.starts_with("#1 sent resource ctx/busybox: 3.0 MiB")),
            "{err:#?}"
        );
    }

    #[test]
    fn plain_failure_names_the_exit_code_and_prints_no_summary() {
        let err = anyhow::anyhow!("Dockerfile:2: build failed with exit code 3");
        let (_, text) = plain(
            vec![
                step(1, "", "RUN exit 3"),
                output(1, Stream::Stderr, "about to fail"),
                finished(1, 3),
            ],
            Err(&err),
        );
        let lines = untimed(&text);
        assert_eq!(
            lines,
            [
                "#1 [1/3] RUN exit 3",
                "#1 about to fail",
                "#1 ERROR: exit code 3 after 1.2s"
            ]
        );
    }

    #[test]
    fn json_lines_are_the_events_with_a_time() {
        let mut json = Json::new(Vec::new());
        let events = build_events();
        let n = events.len();
        for e in events {
            json.event(e);
        }
        json.finish(Ok(&built()));
        let text = String::from_utf8(json.out).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), n + 1);
        for l in &lines {
            assert!(l["event"].is_string(), "{l}");
            assert!(l["time"].as_u64().unwrap() > 1_600_000_000_000, "{l}");
        }
        // One object per line, `event` first.
        assert!(text.lines().all(|l| l.starts_with("{\"event\":\"")));
        let kinds: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
        assert_eq!(kinds[0], "planned");
        assert_eq!(kinds[n - 1], "image-written");
        assert_eq!(kinds[n], "built");
        let started = &lines[kinds.iter().position(|k| *k == "step-started").unwrap()];
        assert_eq!(started["number"], 1);
        assert_eq!(started["stage"], "build");
        assert_eq!(started["instruction"], "COPY busybox /bin/busybox");
        let out = &lines[kinds.iter().position(|k| *k == "output").unwrap()];
        assert_eq!(
            (&out["stream"], &out["line"]),
            (&"stdout".into(), &"hi".into())
        );
        let done = &lines[kinds.iter().position(|k| *k == "step-finished").unwrap()];
        assert_eq!(
            done["elapsed"],
            serde_json::json!({"secs": 1, "nanos": 200_000_000})
        );
        assert_eq!(lines[n]["image"], "out/demo.ext4");
        assert_eq!(lines[n]["manifest"], "out/demo.manifest.json");
        assert_eq!(lines[n]["size_bytes"], 42 << 20);
    }

    #[test]
    fn json_failure_is_the_last_line() {
        let mut json = Json::new(Vec::new());
        let err = anyhow::anyhow!("exit code 3").context("Dockerfile:4: build failed");
        json.finish(Err(&err));
        let line: serde_json::Value = serde_json::from_slice(&json.out).unwrap();
        assert_eq!(line["event"], "failed");
        assert_eq!(line["message"], "Dockerfile:4: build failed: exit code 3");
    }

    #[test]
    fn tty_keeps_a_failed_steps_lines_and_copies_stdout() {
        #[derive(Clone, Default)]
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let copy = Shared::default();
        let mut tty = Tty::new(ProgressDrawTarget::hidden());
        tty.copy = Some(Box::new(copy.clone()));
        tty.event(step(1, "", "RUN make"));
        for i in 0..30 {
            tty.event(output(1, Stream::Stdout, &format!("line {i}")));
        }
        tty.event(output(1, Stream::Stderr, "to stderr"));
        let view = &tty.steps[&1];
        assert_eq!(view.lines.len(), KEPT_LINES);
        assert_eq!(view.lines.back().unwrap(), "to stderr");
        assert_eq!(view.tail.message().lines().count(), TAIL_LINES);
        assert!(view.tail.message().ends_with("    to stderr"));
        tty.event(Event::Transferred {
            id: "big".to_owned(),
            bytes: 1 << 30,
        });
        assert_eq!(tty.steps[&1].transfers.len(), 1);
        tty.event(finished(1, 2));
        assert!(tty.steps.is_empty());
        tty.finish(Err(&anyhow::anyhow!("failed")));
        let copied = String::from_utf8(copy.0.lock().unwrap().clone()).unwrap();
        assert_eq!(copied.lines().count(), 30);
        assert!(copied.starts_with("line 0\nline 1\n"));
    }

    #[test]
    fn sizes_durations_and_rates_read_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(42 << 20), "42.0 MiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(long_secs(ms(12_340)), "12.3s");
        assert_eq!(long_secs(ms(125_000)), "2m 5.0s");
        assert_eq!(transfer(10 << 20, ms(500)), "10.0 MiB in 0.5s (20.0 MiB/s)");
        assert_eq!(transfer(10, Duration::ZERO), "10 B");
        assert_eq!(phase_name(Phase::Kernel), "kernel");
        assert_eq!(step_title("", 2, 3, "RUN echo hi"), "[2/3] RUN echo hi");
        assert_eq!(
            step_title("build", 2, 3, "RUN echo hi"),
            "[build 2/3] RUN echo hi"
        );
        assert_eq!(clip("äöü", 2), "äö");
    }

    #[test]
    fn guest_control_sequences_are_shown_not_run() {
        // A RUN printing a clear-screen, a window-title change and a carriage return.
        assert_eq!(
            shown("a\u{1b}[2J\u{1b}]0;pwned\u{7}b\rc"),
            "a\\u{1b}[2J\\u{1b}]0;pwned\\u{7}b\\rc"
        );
        assert_eq!(shown("tab\there, ünïcode"), "tab\there, ünïcode");
        assert!(matches!(shown("plain"), std::borrow::Cow::Borrowed(_)));
        // C1 controls (a one-byte CSI for some terminals) too.
        assert_eq!(shown("x\u{9b}2J"), "x\\u{9b}2J");
    }
}
