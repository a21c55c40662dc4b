//! Metadata read → guest configured: vminit's boot path without the VM. The embedded MMDS
//! server on loopback serves a realistic document (instance id, hostname, two users with SSH
//! keys, a group, three injected files, env); each iteration resolves the metadata sources
//! (V2 token + GET, schema validation, user-data merge) and applies the guest configuration to a
//! temporary root (passwd/group/shadow, homes, authorized_keys, files, env, journal).
//!
//! - `first-boot`: a fresh root each iteration (new instance: machine-id and an ed25519 host key
//!   are generated, every step applied).
//! - `reboot-unchanged`: the same root again (same instance id: the journal says unchanged).
//! - `metadata-only`: just the MMDS read (token + GET + validation).
//!
//! Run: `cargo bench -p firebuild-benches --bench configure -- --warm-up-time 1 --measurement-time 3`
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use firebuild_guest::config::Configurator;
use firebuild_guest::source::{MmdsSource, Outcome, Sources};
use serde_json::json;

fn document() -> serde_json::Value {
    json!({
        "instance-id": "i-bench",
        "hostname": "bench-1",
        "groups": [{"name": "ops", "gid": 2000}],
        "users": [
            {"name": "app", "uid": 1000, "groups": ["ops"],
             "ssh-authorized-keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA app@bench"]},
            {"name": "ops", "uid": 1001, "gid": 2000,
             "ssh-authorized-keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB ops@bench",
                                     "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC ops2@bench"]}
        ],
        "files": {
            "motd": {"path": "/etc/motd", "mode": "0644", "content": {"base64": "aGVsbG8K"}},
            "app": {"path": "/etc/app/config.toml", "mode": "0600", "owner": "app",
                    "content": {"base64": "a2V5ID0gMQo="}},
            "ops": {"path": "/srv/ops/notes", "owner": "ops:ops", "content": {"base64": "bm90ZXMK"}}
        },
        "env": {"APP_MODE": "bench", "LOG": "info"}
    })
}

fn guest_root(dir: &Path) {
    for d in ["etc/skel", "etc/ssh", "root", "home", "tmp"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(dir.join("etc/group"), "root:x:0:\n").unwrap();
    std::fs::write(dir.join("etc/shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(async {
        firebuild_mmds::server::Server::builder()
            .initial_data(document())
            .start()
            .await
            .unwrap()
    });
    let url = format!("http://{}", server.local_addr());
    let sources = Sources::new().with(MmdsSource::new(url));
    let configure = |root: &Path| {
        rt.block_on(async {
            let Outcome::Found(found) = sources
                .resolve(Instant::now() + Duration::from_secs(10))
                .await
                .unwrap()
            else {
                panic!("no metadata")
            };
            let report = Configurator::new(root)
                .apply(Some(&found.metadata))
                .await
                .unwrap();
            assert_eq!(report.failures().count(), 0, "{report:?}");
            report
        })
    };

    let mut g = c.benchmark_group("configure");
    g.bench_function("metadata-only", |b| {
        b.iter(|| {
            rt.block_on(sources.resolve(Instant::now() + Duration::from_secs(10)))
                .unwrap()
        })
    });
    g.bench_function("first-boot", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap();
                guest_root(dir.path());
                dir
            },
            |dir| {
                let report = configure(dir.path());
                assert!(report.new_instance);
                dir
            },
            BatchSize::PerIteration,
        )
    });
    let dir = tempfile::tempdir().unwrap();
    guest_root(dir.path());
    configure(dir.path());
    g.bench_function("reboot-unchanged", |b| {
        b.iter(|| {
            let report = configure(dir.path());
            assert!(!report.new_instance);
        })
    });
    g.finish();
    rt.block_on(server.shutdown());
}

criterion_group!(benches, bench);
criterion_main!(benches);
