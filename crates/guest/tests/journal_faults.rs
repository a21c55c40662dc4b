//! Fault injection for guest configuration (issue 16 item 5) on a busybox tree:
//!
//! - a power cut after each journaled step of a first boot (the journal commit never
//!   happened), after the commit, and during the firstboot script; then a reboot with the same
//!   metadata ends exactly as one uninterrupted boot, and the boot after that changes nothing;
//! - a power cut between the files of the user database (any subset of passwd, group, shadow,
//!   gshadow renamed into place) is completed on reboot, never left half-applied;
//! - MMDS down, answering 5xx, restarting, or empty while the guest resolves its metadata: the
//!   guest retries within its deadline, and an outage never regenerates its identity
//!   (machine-id, SSH host key, journal).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use firebuild_guest::config::{Configurator, Journal, Outcome, Report};
use firebuild_guest::source::{MmdsSource, Outcome as Resolved, Sources};
use firebuild_mmds::schema::Metadata;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const SECRET: &[u8] = b"db-password=hunter2\n";

/// The journaled steps, in the order `Configurator::apply` runs them.
const STEPS: [&str; 8] = [
    "identity", "users", "hostname", "resolv", "ssh-keys", "files", "env", "swap",
];

/// The whole first-boot document: every journaled step has input, and a firstboot script
/// that leaves a trace of each run.
fn full() -> Value {
    json!({
        "instance-id": "i-1",
        "hostname": "web-1.example.internal",
        "network": {"interfaces": [{
            "mac": "52:54:00:12:34:56",
            "addresses": ["169.254.0.10/16"],
            "dns": {"servers": ["169.254.0.3"], "search": ["example.internal"]}
        }]},
        "groups": [{"name": "deploy", "gid": 3000}],
        "users": [
            {"name": "app", "uid": 1500, "groups": ["deploy"],
             "ssh-authorized-keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA app@laptop"]},
            {"name": "ops", "password": {"hash": "$6$salt$hash"}, "groups": ["wheel"]}
        ],
        "files": {
            "motd": {"path": "/etc/motd", "content": {"base64": "aGVsbG8K"}},
            "secret": {"path": "/etc/app/secret", "mode": "0640", "owner": "app:deploy",
                       "content": {"digest": format!("blake3:{}", blake3::hash(SECRET).to_hex())}}
        },
        "env": {"APP_MODE": "production"},
        "swap": {"size-mib": 1, "path": "/swapfile"},
        "firstboot": {"script": "#!/bin/sh\necho run >> /fb-ran\n"}
    })
}

/// What a boot cut after step `STEPS[k - 1]` had applied: the sections of steps `0..k` (the
/// instance id always: identity is step 0), no firstboot.
fn up_to(k: usize) -> Value {
    let all = full();
    let mut doc = json!({"instance-id": all["instance-id"]});
    let has = |step: &str| STEPS[..k].contains(&step);
    if has("users") {
        doc["groups"] = all["groups"].clone();
        doc["users"] = all["users"].clone();
        if !has("ssh-keys") {
            for u in doc["users"].as_array_mut().unwrap() {
                u.as_object_mut().unwrap().remove("ssh-authorized-keys");
            }
        }
    }
    for (step, key) in [
        ("hostname", "hostname"),
        ("resolv", "network"),
        ("files", "files"),
        ("env", "env"),
        ("swap", "swap"),
    ] {
        if has(step) {
            doc[key] = all[key].clone();
        }
    }
    doc
}

fn md(v: &Value) -> Metadata {
    Metadata::from_json_slice(v.to_string().as_bytes()).unwrap()
}

fn fetch(d: &str) -> Result<Vec<u8>, String> {
    match d.strip_prefix("blake3:") {
        Some(_) => Ok(SECRET.to_vec()),
        None => Err(format!("unknown {d}")),
    }
}

async fn apply(root: &Path, doc: Option<&Value>) -> Report {
    let fetcher = fetch;
    let cfg = Configurator::new(root).fetcher(&fetcher).live(false);
    let md = doc.map(md);
    cfg.apply(md.as_ref()).await.unwrap()
}

/// A busybox root with `/etc/ssh` (so host keys are part of the identity) and `/etc/gshadow`.
fn guest_root() -> Option<tempfile::TempDir> {
    let t = common::busybox_root()?;
    fs::create_dir_all(t.path().join("etc/ssh")).unwrap();
    fs::write(
        t.path().join("etc/gshadow"),
        "root:*::\nwheel:!::\nstaff:!::\nnogroup:!::\n",
    )
    .unwrap();
    Some(t)
}

const JOURNAL: &str = "var/lib/firebuild/journal.json";
const IDENTITY: [&str; 3] = [
    "etc/machine-id",
    "etc/ssh/ssh_host_ed25519_key",
    "etc/ssh/ssh_host_ed25519_key.pub",
];

/// Every entry under `root` except `/bin` (busybox): type, mode, owner and content. The
/// identity files (random by design) only as present or not; the swap file as its size and
/// signature (its header has a random UUID); the journal as its instance, step digests and
/// firstboot state (not the times).
fn state(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel == "bin" {
                continue;
            }
            let m = fs::symlink_metadata(&p).unwrap();
            let what = if m.is_dir() {
                todo.push(p.clone());
                "dir".to_owned()
            } else if m.file_type().is_symlink() {
                format!("link {}", fs::read_link(&p).unwrap().display())
            } else if IDENTITY.contains(&rel.as_str()) {
                "identity".to_owned()
            } else if rel == "swapfile" {
                let b = fs::read(&p).unwrap();
                format!(
                    "swap {} {}",
                    b.len(),
                    b.windows(10).any(|w| w == b"SWAPSPACE2")
                )
            } else if rel == JOURNAL {
                let j = Journal::load(root).unwrap();
                let steps: BTreeMap<_, _> = j.steps.iter().map(|(k, v)| (k, &v.digest)).collect();
                format!(
                    "journal {:?} {steps:?} {:?}",
                    j.instance_id,
                    j.firstboot.map(|f| (f.state, f.exit_code))
                )
            } else {
                String::from_utf8_lossy(&fs::read(&p).unwrap()).into_owned()
            };
            let mode = m.mode() & 0o7777;
            out.insert(rel, format!("{mode:o} {}:{} {what}", m.uid(), m.gid()));
        }
    }
    out
}

/// Differences between two states, for a readable failure.
fn diff(want: &BTreeMap<String, String>, got: &BTreeMap<String, String>) -> String {
    let mut s = String::new();
    for k in want
        .keys()
        .chain(got.keys().filter(|k| !want.contains_key(*k)))
    {
        if want.get(k) != got.get(k) {
            s.push_str(&format!(
                "{k}:\n  want {:?}\n  got  {:?}\n",
                want.get(k),
                got.get(k)
            ));
        }
    }
    s
}

fn identity_of(root: &Path) -> Vec<Vec<u8>> {
    IDENTITY
        .iter()
        .map(|p| fs::read(root.join(p)).unwrap())
        .collect()
}

/// The result of one uninterrupted first boot with [`full`].
async fn reference() -> Option<(tempfile::TempDir, BTreeMap<String, String>)> {
    let t = guest_root()?;
    let report = apply(t.path(), Some(&full())).await;
    assert_eq!(report.failures().count(), 0, "{report:#?}");
    let s = state(t.path());
    Some((t, s))
}

/// Reboots `root` with [`full`]: the result must equal the reference, and one more boot must
/// change nothing, identity included.
async fn reboot_and_check(root: &Path, want: &BTreeMap<String, String>, case: &str) -> Report {
    let report = apply(root, Some(&full())).await;
    assert_eq!(report.failures().count(), 0, "{case}: {report:#?}");
    let got = state(root);
    assert!(
        got == *want,
        "{case}: reboot differs from one clean boot:\n{}",
        diff(want, &got)
    );
    assert_eq!(fs::read_to_string(root.join("fb-ran")).unwrap(), "run\n");
    let id = identity_of(root);
    let again = apply(root, Some(&full())).await;
    assert!(!again.new_instance, "{case}");
    for s in &again.steps {
        assert!(
            matches!(s.outcome, Outcome::Unchanged | Outcome::Skipped(_)),
            "{case}: third boot: {}: {:?}",
            s.name,
            s.outcome
        );
    }
    assert_eq!(state(root), got, "{case}: third boot changed files");
    assert_eq!(
        identity_of(root),
        id,
        "{case}: third boot changed the identity"
    );
    report
}

#[tokio::test]
async fn a_power_cut_at_each_step_then_a_reboot_ends_as_one_clean_boot() {
    let Some((_r, want)) = reference().await else {
        return;
    };
    // Cut after step k-1 (k = 0: before anything), before the journal commit.
    for k in 0..=STEPS.len() {
        let case = match k {
            0 => "cut before the first step".to_owned(),
            _ => format!("cut after {}", STEPS[k - 1]),
        };
        let t = guest_root().unwrap();
        let root = t.path();
        if k > 0 {
            let partial = apply(root, Some(&up_to(k))).await;
            assert_eq!(partial.failures().count(), 0, "{case}: {partial:#?}");
            // The commit is the journal write at the end of the boot: it never happened.
            fs::remove_file(root.join(JOURNAL)).unwrap();
        }
        let report = reboot_and_check(root, &want, &case).await;
        // The identity is regenerated on that reboot: the instance was never committed.
        assert!(report.new_instance, "{case}");
        assert_eq!(
            report.outcome("firstboot"),
            Some(&Outcome::Applied),
            "{case}"
        );
    }

    // Cut after the commit, before the firstboot script was recorded as started: the steps
    // are not redone, the script runs once.
    let t = guest_root().unwrap();
    let root = t.path();
    let mut no_script = full();
    no_script.as_object_mut().unwrap().remove("firstboot");
    apply(root, Some(&no_script)).await;
    let id = identity_of(root);
    let report = reboot_and_check(root, &want, "cut after the commit").await;
    assert!(!report.new_instance);
    for step in STEPS {
        assert_eq!(report.outcome(step), Some(&Outcome::Unchanged), "{step}");
    }
    assert_eq!(report.outcome("firstboot"), Some(&Outcome::Applied));
    assert_eq!(identity_of(root), id, "a committed identity is kept");

    // Cut while the script ran (the journal says started): it is not run again, and nothing
    // else changes.
    let t = guest_root().unwrap();
    let root = t.path();
    apply(root, Some(&full())).await;
    let mut j = Journal::load(root).unwrap();
    let fb = j.firstboot.as_mut().unwrap();
    fb.state = firebuild_guest::config::FirstbootState::Started;
    fb.exit_code = None;
    j.save(root).unwrap();
    let before = state(root);
    let id = identity_of(root);
    let report = apply(root, Some(&full())).await;
    assert!(
        matches!(report.outcome("firstboot"), Some(Outcome::Skipped(r)) if r.contains("interrupted")),
        "{report:#?}"
    );
    assert_eq!(fs::read_to_string(root.join("fb-ran")).unwrap(), "run\n");
    assert_eq!(state(root), before);
    assert_eq!(identity_of(root), id);
}

#[tokio::test]
async fn a_power_cut_between_the_user_database_files_is_completed_on_reboot() {
    let Some((_r, want)) = reference().await else {
        return;
    };
    let files = ["etc/passwd", "etc/group", "etc/shadow", "etc/gshadow"];
    let users = up_to(2); // identity and users
    // Every subset of the four files renamed into place when the power went: the homes are
    // created before the files are written, the journal commit never happened.
    for mask in 0u32..16 {
        let t = guest_root().unwrap();
        let root = t.path();
        let old: Vec<Vec<u8>> = files
            .iter()
            .map(|f| fs::read(root.join(f)).unwrap())
            .collect();
        let r = apply(root, Some(&users)).await;
        assert_eq!(r.outcome("users"), Some(&Outcome::Applied));
        fs::remove_file(root.join(JOURNAL)).unwrap();
        let mut kept = Vec::new();
        for (i, f) in files.iter().enumerate() {
            if mask & (1 << i) == 0 {
                fs::write(root.join(f), &old[i]).unwrap();
            } else {
                kept.push(*f);
            }
        }
        let case = format!("cut with {kept:?} written");
        reboot_and_check(root, &want, &case).await;
    }
}

/// What a proxy in front of MMDS does with one connection.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mmds {
    /// Forward to the server (a reset when the server is down).
    Pass,
    /// Close without an answer.
    Reset,
    /// Answer this status.
    Status(u16),
}

/// A proxy in front of MMDS: scripted answers first, then `mode` for every connection.
struct MmdsProxy {
    addr: SocketAddr,
    script: Arc<Mutex<VecDeque<Mmds>>>,
    mode: Arc<Mutex<Mmds>>,
}

impl MmdsProxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let script: Arc<Mutex<VecDeque<Mmds>>> = Arc::default();
        let mode = Arc::new(Mutex::new(Mmds::Pass));
        let (s, m) = (Arc::clone(&script), Arc::clone(&mode));
        tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let action = s.lock().unwrap().pop_front().unwrap_or(*m.lock().unwrap());
                tokio::spawn(async move {
                    if action == Mmds::Pass {
                        if let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                        }
                        return;
                    }
                    let mut buf = [0u8; 4096];
                    let _ = down.read(&mut buf).await;
                    if let Mmds::Status(code) = action {
                        let reply = format!(
                            "HTTP/1.1 {code} Injected\r\nContent-Length: 8\r\n\
                             Connection: close\r\n\r\ninjected"
                        );
                        let _ = down.write_all(reply.as_bytes()).await;
                    }
                });
            }
        });
        MmdsProxy { addr, script, mode }
    }

    fn set(&self, mode: Mmds, script: &[Mmds]) {
        *self.mode.lock().unwrap() = mode;
        let mut s = self.script.lock().unwrap();
        s.clear();
        s.extend(script.iter().copied());
    }
}

async fn mmds_at(addr: SocketAddr, data: Value) -> firebuild_mmds::server::ServerHandle {
    firebuild_mmds::server::Server::builder()
        .listen(addr)
        .initial_data(data)
        .start()
        .await
        .unwrap()
}

/// One boot as vminit does it: resolve under one deadline, then configure with the metadata
/// when found and with `None` otherwise (no metadata, or an outage).
async fn boot(root: &Path, proxy: &MmdsProxy, deadline: Duration) -> (String, Report) {
    let sources = Sources::new().with(MmdsSource::new(format!("http://{}", proxy.addr)));
    let started = Instant::now();
    let resolved = sources.resolve(started + deadline).await.unwrap();
    assert!(
        started.elapsed() < deadline + Duration::from_secs(2),
        "resolve overran its deadline: {:?}",
        started.elapsed()
    );
    let fetcher = fetch;
    let cfg = Configurator::new(root).fetcher(&fetcher).live(false);
    match resolved {
        Resolved::Found(found) => (
            "found".into(),
            cfg.apply(Some(&found.metadata)).await.unwrap(),
        ),
        Resolved::NoMetadata => ("none".into(), cfg.apply(None).await.unwrap()),
        Resolved::Unreachable { .. } => ("outage".into(), cfg.apply(None).await.unwrap()),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn mmds_outages_5xx_and_restarts_never_regenerate_the_identity() {
    let Some(t) = guest_root() else {
        return;
    };
    let root = t.path();
    let doc = json!({"instance-id": "i-1", "hostname": "vm1"});
    let server = mmds_at("127.0.0.1:0".parse().unwrap(), doc.clone()).await;
    let addr = server.local_addr();
    let proxy = MmdsProxy::start(addr).await;
    let deadline = Duration::from_secs(8);

    // First boot: a new instance.
    let (how, report) = boot(root, &proxy, deadline).await;
    assert_eq!(how, "found");
    assert!(report.new_instance);
    let id = identity_of(root);
    let journal = fs::read(root.join(JOURNAL)).unwrap();
    let files = state(root);

    let kept = |case: &str, report: &Report| {
        assert!(!report.new_instance, "{case}");
        assert_ne!(
            report.outcome("identity"),
            Some(&Outcome::Applied),
            "{case}"
        );
        assert_eq!(identity_of(root), id, "{case}: identity regenerated");
        assert_eq!(
            fs::read(root.join(JOURNAL)).unwrap(),
            journal,
            "{case}: journal"
        );
        assert_eq!(state(root), files, "{case}: files changed");
    };

    // MMDS down for the whole boot (resets), then answering 500 for the whole boot: outages.
    for (case, mode) in [("down", Mmds::Reset), ("lasting 500", Mmds::Status(500))] {
        proxy.set(mode, &[]);
        let (how, report) = boot(root, &proxy, Duration::from_millis(1500)).await;
        assert_eq!(how, "outage", "{case}");
        kept(case, &report);
    }

    // A burst of errors, then the service answers: found within the deadline, same instance.
    proxy.set(
        Mmds::Pass,
        &[
            Mmds::Status(500),
            Mmds::Reset,
            Mmds::Status(502),
            Mmds::Status(504),
            Mmds::Status(429),
            Mmds::Reset,
        ],
    );
    let (how, report) = boot(root, &proxy, deadline).await;
    assert_eq!(how, "found");
    assert_eq!(report.outcome("identity"), Some(&Outcome::Unchanged));
    kept("burst", &report);

    // MMDS restarts while the guest asks: down for 1 s, back with the same document.
    server.shutdown().await;
    let restart = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        mmds_at(addr, doc).await
    });
    let (how, report) = boot(root, &proxy, deadline).await;
    assert_eq!(how, "found", "found once the server is back");
    assert_eq!(report.outcome("identity"), Some(&Outcome::Unchanged));
    kept("restart", &report);
    let server = restart.await.unwrap();

    // The host has not written the document yet ({}), or switched the guest side off (503):
    // no metadata, which does not touch the identity either.
    server.put(json!({})).unwrap();
    let (how, report) = boot(root, &proxy, deadline).await;
    assert_eq!(how, "none");
    kept("empty document", &report);
    server
        .put(json!({"instance-id": "i-1", "hostname": "vm1"}))
        .unwrap();
    server.set_guest_enabled(false);
    let (how, report) = boot(root, &proxy, deadline).await;
    assert_eq!(how, "none");
    kept("guest side off", &report);
    server.set_guest_enabled(true);

    // Control: a genuinely new instance id does regenerate it.
    server
        .put(json!({"instance-id": "i-2", "hostname": "vm1"}))
        .unwrap();
    let (how, report) = boot(root, &proxy, deadline).await;
    assert_eq!(how, "found");
    assert!(report.new_instance);
    assert_eq!(report.outcome("identity"), Some(&Outcome::Applied));
    let new = identity_of(root);
    for (i, p) in IDENTITY.iter().enumerate() {
        assert_ne!(new[i], id[i], "{p} of the new instance");
    }
    server.shutdown().await;
}
