//! Shared fixtures for the simulated-vminit tests: PKI, a plan with RUN/ADD/COPY, a context
//! directory, a server on 127.0.0.1 and a client configured as MMDS would configure it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use firebuild_bootstrap::{
    BootstrapClient, BootstrapConfig, BootstrapServer, ClientError, ClientKey, ClientOptions,
    DirSource, Event, Events, ServerHandle, ServerTls,
};
use firebuild_pki::{BuildId, BuildPki, ClientBundle, Validity};
use firebuild_plan::{
    BuildPlan, Command, Origin, Resource, ResourceKind, Run, Source, Span, Step, StepContext,
    StepKind, Transfer,
};
use sha2::{Digest, Sha256};

pub const BIG: u64 = 100 << 20;

pub fn build_id(id: &str) -> BuildId {
    BuildId::new(id).unwrap()
}

pub fn pki(build: &str) -> BuildPki {
    BuildPki::generate(build_id(build), &["127.0.0.1"], &Validity::default()).unwrap()
}

pub fn config(addr: impl ToString, client: &ClientBundle) -> BootstrapConfig {
    BootstrapConfig {
        grpc_host_port: addr.to_string(),
        tls_ca_cert: client.ca_cert_pem().to_owned(),
        tls_cert: client.cert_pem().to_owned(),
        tls_key: ClientKey::new(client.key_pem().expose_secret().to_owned()),
    }
}

pub fn fast_options() -> ClientOptions {
    ClientOptions {
        connect_attempts: 3,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        ..ClientOptions::default()
    }
}

fn resource(id: &str, path: &str, kind: ResourceKind, target: &str) -> Resource {
    Resource {
        id: id.into(),
        path: path.into(),
        kind,
        target: target.into(),
        extract: false,
    }
}

fn transfer(resources: Vec<Resource>, dest: &str) -> Transfer {
    Transfer {
        origin: Origin::Context,
        sources: vec![Source::Path {
            pattern: resources
                .first()
                .map(|r| r.path.clone())
                .unwrap_or_default(),
            resources,
        }],
        dest: dest.into(),
        chown: None,
        chmod: None,
        link: false,
        parents: false,
        exclude: vec![],
        keep_git_dir: false,
    }
}

/// RUN echo; COPY tree/ /app; ADD big.bin /big.bin; plus extra COPY steps for the given
/// `(id, context path, kind)` resources.
pub fn plan(extra: &[(&str, &str, ResourceKind)]) -> BuildPlan {
    let mut steps = vec![
        Step {
            index: 0,
            span: Span::lines(2, 2),
            context: StepContext::default(),
            kind: StepKind::Run(Run::new(Command::Shell("echo hello".into()))),
        },
        Step {
            index: 1,
            span: Span::lines(3, 3),
            context: StepContext::default(),
            kind: StepKind::Copy(transfer(
                vec![resource("ctx:tree", "tree", ResourceKind::Dir, "/app")],
                "/app",
            )),
        },
        Step {
            index: 2,
            span: Span::lines(4, 4),
            context: StepContext::default(),
            kind: StepKind::Add(transfer(
                vec![resource(
                    "ctx:big",
                    "big.bin",
                    ResourceKind::File,
                    "/big.bin",
                )],
                "/big.bin",
            )),
        },
    ];
    for (i, (id, path, kind)) in extra.iter().enumerate() {
        steps.push(Step {
            index: 3 + i,
            span: Span::lines(5 + i as u32, 5 + i as u32),
            context: StepContext::default(),
            kind: StepKind::Copy(transfer(vec![resource(id, path, *kind, "/x")], "/x")),
        });
    }
    let mut plan = BuildPlan::scratch(steps);
    plan.stages[0].config.cmd = Some(Command::Exec(vec!["/app/run".into()]));
    plan
}

/// Deterministic pseudo-random bytes.
pub fn write_pseudo_random(path: &Path, len: u64, seed: u64) {
    use std::io::Write;
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut x = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for word in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}

pub fn sha256_file(path: &Path) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(path).unwrap();
    std::io::copy(&mut f, &mut h).unwrap();
    h.finalize().into()
}

/// A context with `tree/` (nested dirs, modes, a relative symlink) and `big.bin` of `big` bytes.
pub fn context(big: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("tree/bin")).unwrap();
    std::fs::create_dir_all(root.join("tree/etc/conf.d")).unwrap();
    std::fs::write(root.join("tree/bin/run"), b"#!/bin/sh\necho run\n").unwrap();
    std::fs::set_permissions(
        root.join("tree/bin/run"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(root.join("tree/etc/conf.d/app.conf"), b"key=value\n").unwrap();
    std::fs::set_permissions(
        root.join("tree/etc/conf.d/app.conf"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    std::fs::set_permissions(
        root.join("tree/etc"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    std::fs::write(root.join("tree/empty"), b"").unwrap();
    std::os::unix::fs::symlink("bin/run", root.join("tree/run")).unwrap();
    write_pseudo_random(&root.join("big.bin"), big, 42);
    dir
}

pub struct Harness {
    pub server: ServerHandle,
    pub events: Events,
    pub pki: BuildPki,
}

pub async fn start(
    plan: BuildPlan,
    context: &Path,
    configure: impl FnOnce(firebuild_bootstrap::ServerBuilder) -> firebuild_bootstrap::ServerBuilder,
) -> Harness {
    let pki = pki("build-1");
    start_with(plan, context, pki.server.clone().into(), pki, configure).await
}

pub async fn start_with(
    plan: BuildPlan,
    context: &Path,
    tls: ServerTls,
    pki: BuildPki,
    configure: impl FnOnce(firebuild_bootstrap::ServerBuilder) -> firebuild_bootstrap::ServerBuilder,
) -> Harness {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let builder = BootstrapServer::builder()
        .resources(DirSource::new(&plan, context).walk_directories())
        .plan(plan)
        .tls(tls)
        .expected_client(pki.build_id.clone());
    let (server, events) = configure(builder).serve(listener).await.unwrap();
    Harness {
        server,
        events,
        pki,
    }
}

impl Harness {
    pub async fn client(&self) -> BootstrapClient {
        BootstrapClient::connect_with(
            &config(self.server.local_addr(), &self.pki.client),
            fast_options(),
        )
        .await
        .unwrap()
    }

    /// Collects events until `stop` matches one (included) or 60 s pass.
    pub async fn events_until(&mut self, stop: impl Fn(&Event) -> bool) -> Vec<Event> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            let done = stop(&ev);
            out.push(ev);
            if done {
                return out;
            }
        }
        panic!("no matching event; got {out:#?}");
    }
}

/// The whole error chain on one line.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        s.push_str(": ");
        s.push_str(&e.to_string());
        cur = e.source();
    }
    s
}

pub fn status_of(err: &ClientError) -> &tonic::Status {
    match err {
        ClientError::Rpc { status, .. } => status,
        other => panic!("expected an RPC error, got {}", chain(other)),
    }
}
