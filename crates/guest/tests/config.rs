//! Guest configuration from metadata on a busybox tree: files, modes, owners, idempotence,
//! outage, new instance, firstboot policy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use firebuild_guest::config::{Configurator, Journal, Outcome};
use firebuild_mmds::schema::Metadata;

const SECRET: &[u8] = b"db-password=hunter2\n";

fn metadata(instance: &str) -> Metadata {
    let digest = format!("blake3:{}", blake3::hash(SECRET).to_hex());
    let json = serde_json::json!({
        "instance-id": instance,
        "hostname": "web-1.example.internal",
        "network": {"interfaces": [{
            "mac": "52:54:00:12:34:56",
            "addresses": ["169.254.0.10/16"],
            "dns": {"servers": ["169.254.0.3", "169.254.0.4"], "search": ["example.internal"]}
        }]},
        "groups": [{"name": "deploy", "gid": 3000}],
        "users": [
            {"name": "app", "uid": 1500, "groups": ["deploy"],
             "ssh-authorized-keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA app@laptop"]},
            {"name": "ops", "password": {"hash": "$6$salt$hash"}}
        ],
        "files": {
            "motd": {"path": "/etc/motd", "content": {"base64": "aGVsbG8K"}},
            "secret": {"path": "/etc/app/secret", "mode": "0640", "owner": "app:deploy",
                       "content": {"digest": digest}}
        },
        "env": {"APP_MODE": "production", "QUOTE": "it's"},
        "swap": {"size-mib": 1, "path": "/swapfile"},
        "firstboot": {"script": "#!/bin/sh\necho hello from firstboot\necho oops >&2\necho run >> /fb-ran\n"}
    });
    Metadata::from_json_slice(json.to_string().as_bytes()).unwrap()
}

fn fb(script: &str) -> firebuild_mmds::schema::Firstboot {
    firebuild_mmds::schema::Firstboot {
        script: script.into(),
    }
}

fn fetch(d: &str) -> Result<Vec<u8>, String> {
    if d.starts_with("blake3:") {
        Ok(SECRET.to_vec())
    } else {
        Err("unknown".into())
    }
}

fn omo(root: &Path, p: &str) -> (u32, u32, u32) {
    let m = fs::symlink_metadata(root.join(p.trim_start_matches('/'))).unwrap();
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

fn read(root: &Path, p: &str) -> String {
    fs::read_to_string(root.join(p.trim_start_matches('/'))).unwrap()
}

/// Every file under `root`: (mtime, mode, uid, content digest).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (SystemTime, u32, u32, String)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                todo.push(p.clone());
            }
            let content = if m.is_file() {
                blake3::hash(&fs::read(&p).unwrap()).to_hex().to_string()
            } else {
                String::new()
            };
            out.insert(p, (m.modified().unwrap(), m.mode(), m.uid(), content));
        }
    }
    out
}

fn outcome<'a>(r: &'a firebuild_guest::config::Report, step: &str) -> &'a Outcome {
    r.outcome(step).unwrap_or_else(|| panic!("no step {step}"))
}

#[tokio::test]
async fn apply_writes_everything_with_modes_and_owners_then_changes_nothing() {
    let Some(t) = common::busybox_root() else {
        return;
    };
    let root = t.path();
    fs::create_dir_all(root.join("etc/ssh")).unwrap();
    let cfg = Configurator::new(root).fetcher(&fetch);
    let md = metadata("i-1");
    let report = cfg.apply(Some(&md)).await.unwrap();
    assert_eq!(report.failures().count(), 0, "{report:#?}");
    assert!(report.new_instance);
    for step in [
        "identity",
        "users",
        "hostname",
        "resolv",
        "ssh-keys",
        "files",
        "env",
        "swap",
        "firstboot",
    ] {
        assert_eq!(
            outcome(&report, step),
            &Outcome::Applied,
            "{step}: {report:#?}"
        );
    }
    assert!(matches!(outcome(&report, "network"), Outcome::Skipped(_)));

    // Hostname and resolver.
    assert_eq!(read(root, "/etc/hostname"), "web-1.example.internal\n");
    assert!(read(root, "/etc/hosts").contains("127.0.1.1\tweb-1.example.internal web-1\t"));
    assert!(read(root, "/etc/hosts").starts_with("127.0.0.1\tlocalhost\n"));
    assert_eq!(omo(root, "/etc/hostname"), (0, 0, 0o644));
    let resolv = read(root, "/etc/resolv.conf");
    assert!(
        resolv
            .contains("nameserver 169.254.0.3\nnameserver 169.254.0.4\nsearch example.internal\n")
    );

    // Users, groups, homes, keys.
    let passwd = read(root, "/etc/passwd");
    assert!(
        passwd.contains("app:x:1500:1500::/home/app:/bin/sh\n"),
        "{passwd}"
    );
    assert!(read(root, "/etc/group").contains("deploy:x:3000:app\n"));
    assert!(read(root, "/etc/shadow").contains("ops:$6$salt$hash:"));
    assert_eq!(omo(root, "/home/app"), (1500, 1500, 0o755));
    assert_eq!(
        omo(root, "/home/app/.profile").0,
        1500,
        "skel copied and owned"
    );
    assert_eq!(omo(root, "/home/app/.ssh"), (1500, 1500, 0o700));
    assert_eq!(
        omo(root, "/home/app/.ssh/authorized_keys"),
        (1500, 1500, 0o600)
    );
    assert_eq!(
        read(root, "/home/app/.ssh/authorized_keys"),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA app@laptop\n"
    );

    // Injected files.
    assert_eq!(read(root, "/etc/motd"), "hello\n");
    assert_eq!(omo(root, "/etc/motd"), (0, 0, 0o644));
    assert_eq!(fs::read(root.join("etc/app/secret")).unwrap(), SECRET);
    assert_eq!(omo(root, "/etc/app/secret"), (1500, 3000, 0o640));

    // Env file.
    assert_eq!(
        read(root, "/etc/firebuild/env"),
        "# written by firebuild from instance metadata\nAPP_MODE='production'\nQUOTE='it'\\''s'\n"
    );
    assert_eq!(omo(root, "/etc/firebuild/env"), (0, 0, 0o600));

    // Swap file.
    let swap = fs::read(root.join("swapfile")).unwrap();
    assert_eq!(swap.len(), 1 << 20);
    assert_eq!(&swap[4096 - 10..4096], b"SWAPSPACE2");
    assert_eq!(omo(root, "/swapfile"), (0, 0, 0o600));
    // util-linux's probe recognises the header (when blkid is installed).
    if let Ok(o) = std::process::Command::new("blkid")
        .arg("-p")
        .arg(root.join("swapfile"))
        .output()
        && !o.stdout.is_empty()
    {
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("TYPE=\"swap\""),
            "{o:?}"
        );
    }

    // Identity.
    let mid = read(root, "/etc/machine-id");
    assert_eq!(mid.len(), 33);
    assert_eq!(omo(root, "/etc/machine-id"), (0, 0, 0o444));
    assert_eq!(omo(root, "/etc/ssh/ssh_host_ed25519_key"), (0, 0, 0o600));
    assert_eq!(
        omo(root, "/etc/ssh/ssh_host_ed25519_key.pub"),
        (0, 0, 0o644)
    );
    let key = root.join("etc/ssh/ssh_host_ed25519_key");
    match std::process::Command::new("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(&key)
        .output()
    {
        Ok(o) => {
            assert!(o.status.success(), "ssh-keygen rejects the key: {o:?}");
            let derived = String::from_utf8_lossy(&o.stdout);
            let public = read(root, "/etc/ssh/ssh_host_ed25519_key.pub");
            assert_eq!(
                derived.split_whitespace().nth(1),
                public.split_whitespace().nth(1),
                "public key derived by ssh-keygen matches"
            );
        }
        Err(_) => eprintln!("ssh-keygen not installed: OpenSSH format checked structurally only"),
    }

    // Firstboot.
    let log = read(root, "/var/log/firebuild/firstboot.log");
    assert!(log.contains("out: hello from firstboot\n"), "{log}");
    assert!(log.contains("err: oops\n"), "{log}");
    assert_eq!(omo(root, "/var/log/firebuild/firstboot.log"), (0, 0, 0o600));
    let j = Journal::load(root).unwrap();
    let fb = j.firstboot.unwrap();
    assert_eq!((fb.exit_code, fb.signal), (Some(0), None));
    assert_eq!(omo(root, "/var/lib/firebuild/journal.json"), (0, 0, 0o600));

    // Same instance again: nothing changes on disk.
    let before = snapshot(root);
    let again = cfg.apply(Some(&md)).await.unwrap();
    assert!(!again.new_instance);
    for s in &again.steps {
        assert!(
            matches!(s.outcome, Outcome::Unchanged | Outcome::Skipped(_)),
            "{}: {:?}",
            s.name,
            s.outcome
        );
    }
    assert_eq!(
        before,
        snapshot(root),
        "second apply with the same instance changed files"
    );

    // Metadata outage on a reboot: identity and everything else untouched.
    let outage = cfg.apply(None).await.unwrap();
    assert!(
        matches!(outcome(&outage, "identity"), Outcome::Skipped(r) if r.contains("unavailable"))
    );
    assert_eq!(before, snapshot(root), "outage changed files");

    // A new instance id: new machine-id and host keys, firstboot runs again.
    assert_eq!(read(root, "/fb-ran"), "run\n", "firstboot ran once for i-1");
    let key_before = read(root, "/etc/ssh/ssh_host_ed25519_key.pub");
    let next = cfg.apply(Some(&metadata("i-2"))).await.unwrap();
    assert!(next.new_instance);
    assert_eq!(next.failures().count(), 0, "{next:#?}");
    assert_ne!(read(root, "/etc/machine-id"), mid);
    assert_ne!(read(root, "/etc/ssh/ssh_host_ed25519_key.pub"), key_before);
    assert_eq!(
        read(root, "/fb-ran"),
        "run\nrun\n",
        "firstboot ran again for i-2"
    );
    assert_eq!(
        Journal::load(root).unwrap().instance_id.as_deref(),
        Some("i-2")
    );
}

#[tokio::test]
async fn firstboot_interrupted_is_not_rerun_and_needs_an_interpreter() {
    let Some(t) = common::busybox_root() else {
        return;
    };
    let root = t.path();
    let cfg = Configurator::new(root);
    let mut md = Metadata {
        instance_id: Some("i-9".into()),
        firstboot: Some(fb("echo no shebang\n")),
        ..Metadata::default()
    };
    // The schema refuses it before any step runs.
    let err = cfg.apply(Some(&md)).await.unwrap_err();
    assert!(err.to_string().contains("interpreter"), "{err}");
    assert!(
        Journal::load(root).unwrap().firstboot.is_none(),
        "not journaled"
    );

    // The instance is known (identity applied), then a crash during the script leaves the
    // journal saying "started".
    md.firstboot = None;
    cfg.apply(Some(&md)).await.unwrap();
    md.firstboot = Some(fb("#!/bin/sh\ntouch /ran\n"));
    let mut j = Journal::load(root).unwrap();
    j.firstboot = Some(
        serde_json::from_value(serde_json::json!({"state": "started", "digest": "x"})).unwrap(),
    );
    j.save(root).unwrap();
    let r = cfg.apply(Some(&md)).await.unwrap();
    assert!(matches!(outcome(&r, "firstboot"), Outcome::Skipped(e) if e.contains("not re-run")));
    assert!(!root.join("ran").exists());

    // A failing script is recorded with its status and not retried.
    let t2 = common::busybox_root().unwrap();
    let cfg2 = Configurator::new(t2.path());
    md.firstboot = Some(fb("#!/bin/sh\necho x >> /count\nexit 7\n"));
    let r = cfg2.apply(Some(&md)).await.unwrap();
    assert!(matches!(outcome(&r, "firstboot"), Outcome::Failed(e) if e.contains("exit code 7")));
    let r = cfg2.apply(Some(&md)).await.unwrap();
    assert_eq!(outcome(&r, "firstboot"), &Outcome::Unchanged);
    assert_eq!(read(t2.path(), "/count"), "x\n");
    assert_eq!(
        Journal::load(t2.path())
            .unwrap()
            .firstboot
            .unwrap()
            .exit_code,
        Some(7)
    );
}

#[tokio::test]
async fn a_failed_step_is_not_journaled_and_others_still_apply() {
    let Some(t) = common::busybox_root() else {
        return;
    };
    let root = t.path();
    let mut md = metadata("i-3");
    md.firstboot = None;
    // No fetcher: the digest file cannot be fetched.
    let cfg = Configurator::new(root);
    let r = cfg.apply(Some(&md)).await.unwrap();
    assert!(matches!(outcome(&r, "files"), Outcome::Failed(e) if e.contains("no content source")));
    assert_eq!(outcome(&r, "hostname"), &Outcome::Applied);
    assert!(!Journal::load(root).unwrap().steps.contains_key("files"));
    // With the content available the step is retried and applied.
    let r = Configurator::new(root)
        .fetcher(&fetch)
        .apply(Some(&md))
        .await
        .unwrap();
    assert_eq!(outcome(&r, "files"), &Outcome::Applied);
    assert_eq!(outcome(&r, "hostname"), &Outcome::Unchanged);

    // A corrupt journal is an error, never a reason to regenerate the identity.
    let mid = read(root, "/etc/machine-id");
    fs::write(root.join("var/lib/firebuild/journal.json"), "garbage").unwrap();
    assert!(cfg.apply(Some(&metadata("i-4"))).await.is_err());
    assert_eq!(read(root, "/etc/machine-id"), mid);
}
