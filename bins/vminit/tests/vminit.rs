//! vminit as a process with `--root` on a busybox-static guest tree: build mode against the
//! bootstrap server on loopback, guest configuration, idempotence, metadata outage, the CPIO
//! config device, run mode. No VM.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::fs;
use std::time::SystemTime;

use firebuild_bootstrap::{Event, Outcome, OutputStream, StepRef};
use serde_json::json;
use support::*;

fn context() -> tempfile::TempDir {
    let ctx = tempfile::tempdir().unwrap();
    fs::write(ctx.path().join("conf.txt"), "key=1\n").unwrap();
    fs::create_dir_all(ctx.path().join("tree/sub")).unwrap();
    fs::write(ctx.path().join("tree/a.txt"), "a\n").unwrap();
    fs::write(ctx.path().join("tree/sub/b.txt"), "b\n").unwrap();
    ctx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_mode_runs_run_add_copy_as_the_right_users() {
    let Some(guest) = busybox_root() else { return };
    let root = guest.path();
    let ctx = context();
    let plan = plan(
        "FROM scratch\n\
         RUN id -u > /by-root && echo hello from run\n\
         COPY --chown=app:app conf.txt /etc/app/conf.txt\n\
         ADD --chmod=0640 tree/ /srv/tree/\n\
         USER app\n\
         WORKDIR /home/app/work\n\
         RUN id -u > whoami && touch made-by-app && echo to-stderr >&2\n",
        ctx.path(),
    );
    let pki = pki();
    let (mut server, mut events) = serve(plan, ctx.path(), &pki).await;
    metadata_file(
        root,
        &json!({"instance-id": "i-build", "bootstrap": bootstrap_json(server.local_addr(), &pki)}),
    );
    let mut cmd = vminit(root, &["--no-mmds"]);
    cmd.env("RUST_LOG", "debug");
    let (code, _, stderr) = run_async(cmd).await;
    assert_eq!(code, 0, "build failed");
    assert_eq!(server.wait().await, Some(Outcome::Succeeded));

    // RUN as root, COPY --chown, ADD --chmod, RUN as app in its workdir.
    assert_eq!(fs::read_to_string(root.join("by-root")).unwrap(), "0\n");
    assert_eq!(owner(&root.join("by-root")), (0, 0));
    let conf = root.join("etc/app/conf.txt");
    assert_eq!(fs::read_to_string(&conf).unwrap(), "key=1\n");
    assert_eq!(owner(&conf), (1000, 1000));
    // Missing parents take the --chown owner, as buildkit's CreateDestPath does.
    assert_eq!(owner(&root.join("etc/app")), (1000, 1000));
    assert_eq!(
        owner(&root.join("etc")),
        (0, 0),
        "existing parents are left alone"
    );
    assert_eq!(mode(&root.join("etc/app")), 0o755);
    assert_eq!(
        fs::read_to_string(root.join("srv/tree/sub/b.txt")).unwrap(),
        "b\n"
    );
    assert_eq!(mode(&root.join("srv/tree/a.txt")), 0o640);
    assert_eq!(owner(&root.join("srv/tree/a.txt")), (0, 0));
    let work = root.join("home/app/work");
    assert_eq!(fs::read_to_string(work.join("whoami")).unwrap(), "1000\n");
    assert_eq!(owner(&work.join("made-by-app")), (1000, 1000));
    assert_eq!(
        owner(&work),
        (1000, 1000),
        "WORKDIR created for the step's user"
    );

    // Output lines reached the host, tagged with their stream and step.
    let mut seen = Vec::new();
    while let Ok(Some(e)) =
        tokio::time::timeout(std::time::Duration::from_secs(5), events.recv()).await
    {
        let done = matches!(e, Event::Succeeded);
        seen.push(e);
        if done {
            break;
        }
    }
    assert!(
        seen.contains(&Event::Output {
            step: StepRef { stage: 0, step: 0 },
            stream: OutputStream::Stdout,
            line: "hello from run".into()
        }),
        "{seen:?}"
    );
    assert!(seen.iter().any(|e| matches!(e, Event::Output { stream: OutputStream::Stderr, line, .. } if line == "to-stderr")));
    // The host hears each step start before its output and its end (vminit sends `StepStarted`
    // while the step spawns; the step's lines wait for its answer).
    for (i, e) in seen.iter().enumerate() {
        let (Event::Output { step, .. } | Event::StepFinished { step, .. }) = e else {
            continue;
        };
        assert!(
            seen[..i].contains(&Event::StepStarted { step: *step }),
            "{e:?} before its StepStarted: {seen:?}"
        );
    }
    assert_eq!(
        seen.iter()
            .filter(|e| matches!(e, Event::StepFinished { exit_code: 0, .. }))
            .count(),
        5,
        "RUN, COPY, ADD, WORKDIR (a step of its own) and RUN"
    );

    // Secrets never reach the console, even at debug level.
    let key = pki.client.key_pem().expose_secret().to_owned();
    let key_body = key.lines().nth(1).unwrap();
    assert!(!stderr.contains("PRIVATE KEY"), "the TLS key was logged");
    assert!(!stderr.contains(key_body), "the TLS key was logged");
    assert!(stderr.contains("build succeeded"), "phases are logged");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_step_aborts_with_step_exit_code_and_last_lines() {
    let Some(guest) = busybox_root() else { return };
    let root = guest.path();
    let ctx = context();
    let plan = plan(
        "FROM scratch\nRUN echo ok\nRUN echo boom-line && exit 3\nRUN touch /never\n",
        ctx.path(),
    );
    let pki = pki();
    let (mut server, _events) = serve(plan, ctx.path(), &pki).await;
    metadata_file(
        root,
        &json!({"bootstrap": bootstrap_json(server.local_addr(), &pki)}),
    );
    let (code, _, stderr) = run_async(vminit(root, &["--no-mmds"])).await;
    assert_eq!(code, 1);
    let Some(Outcome::Aborted {
        error,
        step,
        exit_code,
    }) = server.wait().await
    else {
        panic!("not aborted")
    };
    assert_eq!(step, Some(StepRef { stage: 0, step: 1 }));
    assert_eq!(exit_code, Some(3));
    assert!(error.contains("boom-line"), "{error}");
    assert!(!root.join("never").exists(), "a step after the failure ran");
    assert!(stderr.contains("failed: exit code 3"), "{stderr}");
    server.shutdown().await.unwrap();
}

/// Build mode gives the steps BuildKit's /etc/resolv.conf (name servers from ip='s dns0/dns1),
/// /etc/hosts and hostname (no /etc/hostname, as BuildKit), and leaves the image's own (a symlink, a file, nothing) exactly
/// as they were; no guest configuration (machine-id, journal) happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_mode_provides_and_then_removes_the_build_environment() {
    use std::os::unix::fs::MetadataExt as _;
    let Some(guest) = busybox_root() else { return };
    let root = guest.path();
    let etc = root.join("etc");
    std::os::unix::fs::symlink("../run/resolv.conf.image", etc.join("resolv.conf")).unwrap();
    fs::write(etc.join("hosts"), "10.9.9.9 image-host\n").unwrap();
    fs::set_permissions(
        etc.join("hosts"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let state = |name: &str| {
        let p = etc.join(name);
        let md = fs::symlink_metadata(&p).ok()?;
        let data = if md.file_type().is_symlink() {
            fs::read_link(&p)
                .unwrap()
                .into_os_string()
                .into_encoded_bytes()
        } else {
            fs::read(&p).unwrap()
        };
        Some((data, md.mode(), md.mtime(), md.mtime_nsec()))
    };
    let names = ["resolv.conf", "hosts", "hostname"];
    let before: Vec<_> = names.iter().map(|n| state(n)).collect();
    let ctx = context();
    let plan = plan(
        "FROM scratch\nRUN cat /etc/resolv.conf /etc/hosts > /seen; ls /etc/hostname 2>> /seen\nRUN exit 4\n",
        ctx.path(),
    );
    let pki = pki();
    let (mut server, _events) = serve(plan, ctx.path(), &pki).await;
    metadata_file(
        root,
        &json!({"instance-id": "i-env", "hostname": "not-in-build-mode", "bootstrap": bootstrap_json(server.local_addr(), &pki)}),
    );
    let cmdline = fs::read_to_string(root.join("proc/cmdline")).unwrap();
    fs::write(
        root.join("proc/cmdline"),
        format!(
            "{} ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off:10.0.2.3:10.0.2.4\n",
            cmdline.trim()
        ),
    )
    .unwrap();
    let (code, _, _) = run_async(vminit(root, &["--no-mmds"])).await;
    assert_eq!(code, 1, "the second step fails");
    assert!(matches!(server.wait().await, Some(Outcome::Aborted { .. })));
    let seen = fs::read_to_string(root.join("seen")).unwrap();
    assert!(
        seen.contains("nameserver 10.0.2.3\nnameserver 10.0.2.4\n"),
        "{seen}"
    );
    assert!(
        seen.contains(
            "127.0.0.1\tlocalhost buildkitsandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        ),
        "{seen}"
    );
    assert!(seen.contains("ls: /etc/hostname: No such file"), "{seen}");
    let after: Vec<_> = names.iter().map(|n| state(n)).collect();
    assert_eq!(
        after, before,
        "the image's files are back, even after a failed step"
    );
    assert!(
        !root.join("run/resolv.conf.image").exists(),
        "the symlink was not followed"
    );
    assert!(
        !root.join("etc/machine-id").exists(),
        "no guest configuration in build mode"
    );
    assert!(
        !root.join("var/lib/firebuild").exists(),
        "no journal in build mode"
    );
    server.shutdown().await.unwrap();
}

/// Run mode takes the image config from the file PID 1 hands over (`VMINIT_IMAGE_CONFIG`, the
/// initramfs's /firebuild/image.json) before the image's own manifest; `firebuild.metadata=off`
/// asks no source.
#[test]
fn run_mode_takes_the_handed_over_image_config_first() {
    let Some(guest) = busybox_root() else { return };
    let root = guest.path();
    fs::write(
        root.join("proc/cmdline"),
        "console=ttyS0 firebuild.metadata=off\n",
    )
    .unwrap();
    fs::create_dir_all(root.join("etc/firebuild")).unwrap();
    fs::write(
        root.join("etc/firebuild/image.json"),
        r#"{"cmd": {"form": "shell", "value": "echo from-image"}}"#,
    )
    .unwrap();
    let handed = tempfile::NamedTempFile::new().unwrap();
    fs::write(
        handed.path(),
        r#"{"cmd": {"form": "shell", "value": "echo from-initramfs $MODE; exit 5"}, "env": [{"name": "MODE", "value": "m"}]}"#,
    )
    .unwrap();
    let mut cmd = vminit(root, &["--metadata-url", "http://127.0.0.1:9"]);
    cmd.env("VMINIT_IMAGE_CONFIG", handed.path());
    let (code, stdout, stderr) = run(cmd);
    assert_eq!(code, 5);
    assert_eq!(stdout.trim(), "from-initramfs m");
    // With the override broken the (refusing) MMDS would be asked: "metadata unreachable".
    assert!(stderr.contains("no metadata from any source"), "{stderr}");
    assert!(!stderr.contains("unreachable"), "{stderr}");
    let (code, stdout, _) = run(vminit(root, &["--no-mmds"]));
    assert_eq!(
        (code, stdout.trim()),
        (0, "from-image"),
        "the image's manifest as fallback"
    );
}

fn mtime(p: &std::path::Path) -> SystemTime {
    fs::symlink_metadata(p).unwrap().modified().unwrap()
}

#[test]
fn guest_config_is_idempotent_and_an_outage_keeps_the_identity() {
    let Some(guest) = busybox_root() else { return };
    let root = guest.path();
    let md = |id: &str| {
        json!({
            "instance-id": id,
            "hostname": "web-1",
            "users": [{"name": "app", "ssh-authorized-keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK app@x"]}],
            "files": {"motd": {"path": "/etc/motd", "mode": "0640", "owner": "app", "content": {"base64": "aGVsbG8K"}}},
        })
    };
    metadata_file(root, &md("i-1"));
    let (code, _, _) = run(vminit(root, &["--no-mmds"]));
    assert_eq!(code, 0);
    let hostname = root.join("etc/hostname");
    let keys = root.join("home/app/.ssh/authorized_keys");
    let motd = root.join("etc/motd");
    let machine_id = root.join("etc/machine-id");
    let host_key = root.join("etc/ssh/ssh_host_ed25519_key");
    assert_eq!(fs::read_to_string(&hostname).unwrap().trim(), "web-1");
    assert_eq!(
        fs::read_to_string(&keys).unwrap().trim(),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK app@x"
    );
    assert_eq!((mode(&keys), owner(&keys)), (0o600, (1000, 1000)));
    let ssh_dir = root.join("home/app/.ssh");
    assert_eq!((mode(&ssh_dir), owner(&ssh_dir)), (0o700, (1000, 1000)));
    assert_eq!(fs::read(&motd).unwrap(), b"hello\n");
    assert_eq!((mode(&motd), owner(&motd).0), (0o640, 1000));
    assert_eq!(mode(&host_key), 0o600);
    let id1 = fs::read_to_string(&machine_id).unwrap();
    let key1 = fs::read(&host_key).unwrap();
    let files = [&hostname, &keys, &motd, &machine_id, &host_key];
    let before: Vec<_> = files.iter().map(|p| mtime(p)).collect();

    // Same instance id: nothing changes.
    let (code, _, stderr) = run(vminit(root, &["--no-mmds"]));
    assert_eq!(code, 0);
    assert_eq!(files.iter().map(|p| mtime(p)).collect::<Vec<_>>(), before);
    assert!(stderr.contains(" 0 applied"), "{stderr}");

    // Metadata unreachable on reboot: identity kept.
    fs::remove_file(root.join("proc/cmdline")).unwrap();
    let (code, _, stderr) = run(vminit(
        root,
        &[
            "--metadata-url",
            "http://127.0.0.1:9",
            "--metadata-timeout",
            "2",
        ],
    ));
    assert_eq!(code, 0);
    assert!(stderr.contains("identity kept"), "{stderr}");
    assert_eq!(fs::read_to_string(&machine_id).unwrap(), id1);
    assert_eq!(fs::read(&host_key).unwrap(), key1);
    assert_eq!(mtime(&machine_id), before[3]);

    // A new instance id does regenerate it (the checks above can fail).
    metadata_file(root, &md("i-2"));
    let (code, _, _) = run(vminit(root, &["--no-mmds"]));
    assert_eq!(code, 0);
    assert_ne!(fs::read_to_string(&machine_id).unwrap(), id1);
    assert_ne!(fs::read(&host_key).unwrap(), key1);
}

#[test]
fn cpio_config_device_from_newc_and_odc_images() {
    for format in ["newc", "odc"] {
        let Some(guest) = busybox_root() else { return };
        let root = guest.path();
        let images = tempfile::tempdir().unwrap();
        let Some(img) = cpio_image(
            images.path(),
            format,
            &[
                ("nodename", "cpio-host\n"),
                (
                    "authorized_keys",
                    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC root@seed\n",
                ),
                ("config.toml", "[network]\nskip = true\n"),
                (
                    "metadata.json",
                    r#"{"instance-id": "i-cpio", "env": {"SEEDED": "yes"}}"#,
                ),
            ],
        ) else {
            return;
        };
        let img_arg = img.to_str().unwrap();
        let (code, _, stderr) = run(vminit(root, &["--no-mmds", "--cpio-device", img_arg]));
        assert_eq!(code, 0, "-H {format}");
        assert!(stderr.contains("source=cpio"), "{stderr}");
        assert_eq!(
            fs::read_to_string(root.join("etc/hostname"))
                .unwrap()
                .trim(),
            "cpio-host"
        );
        let keys = root.join("root/.ssh/authorized_keys");
        assert_eq!(
            fs::read_to_string(&keys).unwrap().trim(),
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC root@seed",
            "-H {format}"
        );
        assert_eq!((mode(&keys), owner(&keys)), (0o600, (0, 0)));
        let env = fs::read_to_string(root.join("etc/firebuild/env")).unwrap();
        assert!(env.contains("SEEDED"), "{env}");
    }
}

#[test]
fn run_mode_runs_the_workload_as_its_user_with_env_and_workdir() {
    let Some(guest) = busybox_root() else { return };
    let root = guest.path();
    metadata_file(
        root,
        &json!({
            "entrypoint": ["/bin/sh", "-c", "id -u; echo $GREETING; pwd; exit 7"],
            "env": {"GREETING": "hi"},
            "workdir": "/home/app",
            "user": "app",
        }),
    );
    let (code, stdout, _) = run(vminit(root, &["--no-mmds"]));
    assert_eq!(code, 7, "the workload's status is vminit's");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["1000", "hi", "/home/app"]
    );

    // Without metadata: the manifest baked in the image.
    fs::remove_file(root.join("proc/cmdline")).unwrap();
    fs::create_dir_all(root.join("etc/firebuild")).unwrap();
    fs::write(
        root.join("etc/firebuild/image.json"),
        r#"{"cmd": {"form": "shell", "value": "echo from-manifest $MODE"}, "env": [{"name": "MODE", "value": "m"}]}"#,
    )
    .unwrap();
    let (code, stdout, _) = run(vminit(root, &["--no-mmds"]));
    assert_eq!(code, 0);
    assert_eq!(stdout.trim(), "from-manifest m");
}

async fn mmds(data: serde_json::Value) -> firebuild_mmds::server::ServerHandle {
    firebuild_mmds::server::Server::builder()
        .initial_data(data)
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mmds_metadata_then_an_mmds_outage_on_reboot_keeps_the_identity() {
    let Some(guest) = busybox_root() else { return };
    let root = guest.path();
    let srv = mmds(json!({"instance-id": "i-mmds", "hostname": "mmds-host"})).await;
    let url = format!("http://{}", srv.local_addr());
    let (code, _, stderr) = run_async(vminit(root, &["--metadata-url", &url])).await;
    assert_eq!(code, 0);
    assert!(stderr.contains("source=mmds"), "{stderr}");
    assert!(stderr.contains(&srv.get().etag), "the revision is logged");
    assert_eq!(
        fs::read_to_string(root.join("etc/hostname"))
            .unwrap()
            .trim(),
        "mmds-host"
    );
    let machine_id = root.join("etc/machine-id");
    let host_key = root.join("etc/ssh/ssh_host_ed25519_key");
    let (id1, key1) = (fs::read(&machine_id).unwrap(), fs::read(&host_key).unwrap());

    // Reboot with the metadata service down.
    srv.shutdown().await;
    let (code, _, stderr) = run_async(vminit(
        root,
        &["--metadata-url", &url, "--metadata-timeout", "1"],
    ))
    .await;
    assert_eq!(code, 0);
    assert!(stderr.contains("mmds: unreachable"), "{stderr}");
    assert!(stderr.contains("identity kept"), "{stderr}");
    assert_eq!(fs::read(&machine_id).unwrap(), id1);
    assert_eq!(fs::read(&host_key).unwrap(), key1);
    assert_eq!(
        fs::read_to_string(root.join("etc/hostname"))
            .unwrap()
            .trim(),
        "mmds-host"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_mode_reapplies_a_changed_hostname_and_keys() {
    let Some(guest) = busybox_root() else { return };
    let root = guest.path().to_owned();
    let srv = mmds(json!({
        "instance-id": "i-watch",
        "hostname": "w1",
        "entrypoint": ["/bin/sh", "-c", "while [ ! -e /stop ]; do sleep 0.1; done; echo stopped"],
    }))
    .await;
    let url = format!("http://{}", srv.local_addr());
    let child = vminit(&root, &["--metadata-url", &url, "--watch"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let hostname = root.join("etc/hostname");
    let read = |p: &std::path::Path| fs::read_to_string(p).unwrap_or_default().trim().to_owned();
    let wait_for = |p: std::path::PathBuf, want: &'static str| async move {
        for _ in 0..200 {
            if fs::read_to_string(&p).unwrap_or_default().trim() == want {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        false
    };
    assert!(
        wait_for(hostname.clone(), "w1").await,
        "first apply: {}",
        read(&hostname)
    );
    let etag = srv
        .patch(&json!({
            "hostname": "w2",
            "users": [{"name": "root", "ssh-authorized-keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIW w@x"]}],
        }))
        .unwrap();
    assert!(
        wait_for(hostname.clone(), "w2").await,
        "not re-applied: {}",
        read(&hostname)
    );
    let keys = root.join("root/.ssh/authorized_keys");
    assert!(
        wait_for(keys.clone(), "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIW w@x").await,
        "keys not re-applied"
    );
    fs::write(root.join("stop"), "").unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "stopped");
    assert!(
        stderr.contains("metadata revision applied") && stderr.contains(&etag),
        "the applied revision is logged"
    );
    srv.shutdown().await;
}
