//! One build's host side while its VM runs: the per-build PKI, the bootstrap server (gRPC, mutual
//! TLS), the metadata server holding the bootstrap instructions, and the task that turns the
//! server's events into [`Event`]s and scrubs the credentials once the guest is in.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use firebuild_bootstrap::{
    BootstrapServer, DirSource, Event as ServerEvent, Events, Outcome, OutputStream, ServerHandle,
    StepRef,
};
use firebuild_pki::{BuildId, BuildPki, Validity};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::event::{Event, EventSink, Phase, Stream};
use crate::options::BuildRequest;
use crate::plan::Planned;

/// How long the guest may stay silent (no heartbeat, no output) before the build declares it
/// lost. The bootstrap default (30 s) is tight for a software-emulated VM sharing two host cores
/// with another build: a CPU-heavy step (`apt-get` reading its package lists) starved the
/// guest's heartbeat for 30 s in the differential harness.
const GUEST_SILENCE: std::time::Duration = std::time::Duration::from_secs(120);

/// The address the guest reaches the host at under QEMU user networking.
pub const HOST_IN_GUEST: &str = firebuild_vmm::qemu::HOST_IP;

/// A step as the events show it.
#[derive(Debug, Clone)]
struct StepInfo {
    number: usize,
    line: u32,
    instruction: String,
    stage: String,
}

/// Longest instruction text shown in a [`Event::StepStarted`].
const MAX_INSTRUCTION: usize = 120;

fn step_table(planned: &Planned) -> HashMap<StepRef, StepInfo> {
    let many = planned.plan.stages.len() > 1;
    planned
        .plan
        .steps()
        .enumerate()
        .map(|(i, (stage, step))| {
            let mut instruction = planned.instruction(step.span.start_line, step.span.end_line);
            if instruction.len() > MAX_INSTRUCTION {
                let cut = (0..=MAX_INSTRUCTION)
                    .rev()
                    .find(|&i| instruction.is_char_boundary(i))
                    .unwrap_or(0);
                instruction.truncate(cut);
                instruction.push_str("...");
            }
            let at = StepRef {
                stage: stage.index,
                step: step.index,
            };
            let info = StepInfo {
                number: i + 1,
                line: step.span.start_line,
                instruction,
                stage: match &stage.name {
                    _ if !many => String::new(),
                    Some(name) => name.clone(),
                    None => format!("stage-{}", stage.index),
                },
            };
            (at, info)
        })
        .collect()
}

/// The event of a step the step cache reused (it does not run).
pub(crate) fn cached_event(planned: &Planned, stage: usize, step: usize) -> Event {
    let steps = step_table(planned);
    let info = steps.get(&StepRef { stage, step });
    Event::StepCached {
        number: info.map_or(0, |s| s.number),
        total: steps.len(),
        stage: info.map(|s| s.stage.clone()).unwrap_or_default(),
        line: info.map_or(0, |s| s.line),
        instruction: info.map(|s| s.instruction.clone()).unwrap_or_default(),
    }
}

/// The number of a step among all the build's steps (1-based), as the events give it.
pub(crate) fn step_number(planned: &Planned, stage: usize, step: usize) -> usize {
    step_table(planned)
        .get(&StepRef { stage, step })
        .map_or(0, |s| s.number)
}

/// The running servers of one build.
pub struct Session {
    server: ServerHandle,
    mmds: Arc<firebuild_mmds::server::ServerHandle>,
    forwarder: JoinHandle<()>,
    shared: Shared,
    events: EventSink,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("bootstrap", &self.server.local_addr())
            .field("metadata", &self.mmds.local_addr())
            .finish()
    }
}

impl Session {
    /// Mints the PKI and starts both servers for one VM running `plan` (one stage of
    /// `planned`); the metadata holds the bootstrap section.
    pub async fn start(
        planned: &Planned,
        plan: firebuild_plan::BuildPlan,
        req: &BuildRequest,
        urls: &std::collections::BTreeMap<String, std::path::PathBuf>,
        events: EventSink,
        step_hook: Option<firebuild_bootstrap::StepHook>,
        success_hook: Option<firebuild_bootstrap::SuccessHook>,
    ) -> Result<Self> {
        let (context, name) = (req.context.as_path(), req.name.as_str());
        let build_id = BuildId::new(name).map_err(Error::Pki)?;
        let pki = BuildPki::generate(build_id.clone(), &[HOST_IN_GUEST], &Validity::default())
            .map_err(Error::Pki)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(Error::io("listen on", "127.0.0.1:0"))?;
        let mut builder = BootstrapServer::builder();
        if let Some(hook) = step_hook {
            builder = builder.step_hook(hook);
        }
        if let Some(hook) = success_hook {
            builder = builder.success_hook(hook);
        }
        let (server, server_events) = builder
            .resources(
                DirSource::new(&plan, context)
                    .with_secrets(req.secrets.iter().cloned().collect())
                    .with_urls(urls.clone()),
            )
            .plan(plan)
            .tls(pki.server.clone())
            .expected_client(build_id)
            .heartbeat_timeout(GUEST_SILENCE)
            .serve(listener)
            .await
            .map_err(Error::Bootstrap)?;
        let port = server.local_addr().port();
        let metadata = serde_json::json!({
            "instance-id": format!("build-{name}"),
            "bootstrap": {
                "grpc-host-port": format!("{HOST_IN_GUEST}:{port}"),
                "tls-ca-cert": pki.client.ca_cert_pem(),
                "tls-cert": pki.client.cert_pem(),
                "tls-key": pki.client.key_pem().expose_secret(),
            }
        });
        let mmds = Arc::new(
            firebuild_mmds::server::Server::builder()
                .initial_data(metadata)
                .require_relay_key(true)
                .start()
                .await
                .map_err(Error::Metadata)?,
        );
        let steps = step_table(planned);
        let shared = Shared::default();
        let forwarder = tokio::spawn(forward(
            server_events,
            Arc::clone(&mmds),
            steps,
            shared.clone(),
            Arc::clone(&events),
        ));
        Ok(Self {
            server,
            mmds,
            forwarder,
            shared,
            events,
        })
    }

    /// The metadata server's address (loopback), for the VM driver's relay.
    pub fn metadata_addr(&self) -> SocketAddr {
        self.mmds.local_addr()
    }

    /// The line the VM's metadata relay must send first: without it, a local process that
    /// finds the metadata port reads nothing (the bootstrap credentials live there).
    pub fn metadata_key(&self) -> Option<Vec<u8>> {
        self.mmds.relay_key().map(<[u8]>::to_vec)
    }

    /// The bootstrap server's address (loopback): the one host port the guest must reach.
    pub fn bootstrap_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Waits briefly for the outcome after the VM ended, then stops both servers. Returns the
    /// outcome and whether the credentials were scrubbed (`None`: the guest never connected).
    pub async fn finish(mut self) -> (Option<Outcome>, Option<std::result::Result<(), String>>) {
        let outcome_at = self.shared.outcome_at.lock().ok().and_then(|t| *t);
        if let Some(t) = outcome_at {
            (self.events)(Event::PhaseFinished {
                phase: Phase::Shutdown,
                elapsed: t.elapsed(),
            });
        }
        let outcome = tokio::time::timeout(Duration::from_secs(5), self.server.wait())
            .await
            .ok()
            .flatten();
        let _ = self.server.shutdown().await;
        // The forwarder ends when the server's event stream closes.
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.forwarder).await;
        self.forwarder.abort();
        let scrub = self.shared.scrub.lock().ok().and_then(|s| s.clone());
        (outcome, scrub)
    }
}

fn stream(s: OutputStream) -> Stream {
    match s {
        OutputStream::Stderr => Stream::Stderr,
        _ => Stream::Stdout,
    }
}

/// What the event forwarder records for [`Session`].
#[derive(Clone, Default)]
struct Shared {
    /// The scrub's result, from the first connection.
    scrub: Arc<Mutex<Option<std::result::Result<(), String>>>>,
    /// When the agent reported its outcome (success or abort), for [`Phase::Shutdown`].
    outcome_at: Arc<Mutex<Option<Instant>>>,
}

/// Translates the server's events; scrubs `/bootstrap` from the metadata on the first
/// connection and checks it is gone.
async fn forward(
    mut rx: Events,
    mmds: Arc<firebuild_mmds::server::ServerHandle>,
    steps: HashMap<StepRef, StepInfo>,
    shared: Shared,
    events: EventSink,
) {
    let total = steps.len();
    let mut started: HashMap<StepRef, Instant> = HashMap::new();
    let mut first_step: Option<Instant> = None;
    let mut served: Option<Instant> = None;
    let connected_at = Instant::now();
    let number = |at: &StepRef| steps.get(at).map_or(0, |s| s.number);
    while let Some(event) = rx.recv().await {
        match event {
            ServerEvent::Connected { .. } => {
                events(Event::PhaseFinished {
                    phase: Phase::Boot,
                    elapsed: connected_at.elapsed(),
                });
                events(Event::AgentConnected);
                let result = scrub_bootstrap(&mmds);
                if result.is_ok() {
                    events(Event::CredentialsScrubbed);
                }
                if let Ok(mut s) = shared.scrub.lock() {
                    s.get_or_insert(result);
                }
            }
            ServerEvent::Rejected { peer, reason } => events(Event::Warning {
                message: format!("refused a request from the guest ({peer}): {reason}"),
            }),
            ServerEvent::GuestBooted(boot) => events(Event::GuestBoot {
                kernel: boot.kernel(),
                initramfs: boot.initramfs(),
                agent: boot.agent_share(),
            }),
            ServerEvent::CommandsServed => {
                served.get_or_insert_with(Instant::now);
            }
            ServerEvent::StepStarted { step } => {
                if first_step.is_none()
                    && let Some(t) = served
                {
                    events(Event::PhaseFinished {
                        phase: Phase::Setup,
                        elapsed: t.elapsed(),
                    });
                }
                first_step.get_or_insert_with(Instant::now);
                started.insert(step, Instant::now());
                let info = steps.get(&step);
                events(Event::StepStarted {
                    number: number(&step),
                    total,
                    line: info.map_or(0, |s| s.line),
                    instruction: info.map(|s| s.instruction.clone()).unwrap_or_default(),
                    stage: info.map(|s| s.stage.clone()).unwrap_or_default(),
                });
            }
            ServerEvent::Output {
                step,
                stream: s,
                line,
            } => events(Event::Output {
                number: number(&step),
                stream: stream(s),
                line,
            }),
            ServerEvent::StepFinished { step, exit_code } => events(Event::StepFinished {
                number: number(&step),
                exit_code,
                elapsed: started.get(&step).map(Instant::elapsed).unwrap_or_default(),
            }),
            ServerEvent::ResourceSent { id, bytes, .. } => {
                events(Event::Transferred { id, bytes });
            }
            ServerEvent::Succeeded | ServerEvent::Aborted { .. } => {
                if let Ok(mut at) = shared.outcome_at.lock() {
                    at.get_or_insert_with(Instant::now);
                }
                if let Some(t) = first_step {
                    events(Event::PhaseFinished {
                        phase: Phase::Steps,
                        elapsed: t.elapsed(),
                    });
                }
            }
            _ => {}
        }
    }
}

/// Deletes the bootstrap section and checks it is gone.
fn scrub_bootstrap(mmds: &firebuild_mmds::server::ServerHandle) -> std::result::Result<(), String> {
    mmds.delete("/bootstrap").map_err(|e| e.to_string())?;
    match mmds.get_at("/bootstrap") {
        None => Ok(()),
        Some(_) => Err("/bootstrap is still in the metadata after the delete".to_owned()),
    }
}
