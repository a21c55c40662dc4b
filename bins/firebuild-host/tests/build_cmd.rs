//! `firebuild-host build`: the example Dockerfile built in a real VM (QEMU microvm, TCG here),
//! the image read back with debugfs; and a failing RUN reported with its Dockerfile line.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn host() -> Command {
    Command::new(env!("CARGO_BIN_EXE_firebuild-host"))
}

/// The tools and the static vminit a VM build needs; `None` (with the reason printed) outside CI.
fn prerequisites() -> Option<PathBuf> {
    let missing: Vec<&str> = ["qemu-system-x86_64", "debugfs", "mkfs.ext4", "apt-get"]
        .into_iter()
        .filter(|t| firebuild_vmm::which(t).is_none())
        .collect();
    let vminit = std::env::var_os("FIREBUILD_VMINIT").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/vminit/vminit"),
        PathBuf::from,
    );
    let busybox = Path::new("/usr/bin/busybox");
    let mut why = Vec::new();
    if !missing.is_empty() {
        why.push(format!("missing {}", missing.join(", ")));
    }
    if !vminit.is_file() {
        why.push(format!(
            "no static vminit at {} (bash scripts/build-vminit.sh)",
            vminit.display()
        ));
    }
    if !busybox.is_file() {
        why.push("no /usr/bin/busybox (busybox-static)".to_owned());
    }
    if why.is_empty() {
        return Some(vminit);
    }
    assert!(std::env::var_os("CI").is_none(), "{}", why.join("; "));
    eprintln!("skipping: {}", why.join("; "));
    None
}

/// A copy of examples/busybox with the static busybox the Dockerfile starts from.
fn busybox_context(dir: &Path) -> PathBuf {
    let ctx = dir.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/busybox");
    for name in [
        "Dockerfile",
        ".dockerignore",
        "hello.sh",
        "files/readme.txt",
        "files/secret.txt",
        "files/sub/nested.txt",
    ] {
        std::fs::create_dir_all(ctx.join(name).parent().unwrap()).unwrap();
        std::fs::copy(example.join(name), ctx.join(name)).unwrap();
    }
    std::fs::copy("/usr/bin/busybox", ctx.join("busybox")).unwrap();
    // A source tree's worth of small files in nested directories for the directory COPY: the
    // guest pulls them many at a time and must still place each directory before its files.
    for i in 0..MANY_FILES {
        let file = ctx.join(format!("files/many/d{}/f{i}", i % 10));
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, format!("{i}\n")).unwrap();
    }
    ctx
}

/// Small files under `files/many` in [`busybox_context`].
const MANY_FILES: usize = 300;

/// A temporary directory holding `ctx/` with the host's static busybox and `dockerfile` (a
/// `FROM scratch` build).
fn scratch_context(dockerfile: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::copy("/usr/bin/busybox", ctx.join("busybox")).unwrap();
    std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    (dir, ctx)
}

fn debugfs(image: &Path, request: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", request])
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `firebuild-host build --name NAME --cache OUT.cache [EXTRA...] --vminit V -o OUT CTX`:
/// (exit code, stdout, stderr). Each output directory gets its own cache (step cache
/// included), so one test's steps are never another's cache hits.
fn build(
    name: &str,
    extra: &[&str],
    vminit: &Path,
    out_dir: &Path,
    ctx: &Path,
) -> (Option<i32>, String, String) {
    let mut cache = out_dir.as_os_str().to_owned();
    cache.push(".cache");
    build_with_cache(name, extra, vminit, out_dir, ctx, Path::new(&cache))
}

/// [`build`] with the cache directory `cache`.
fn build_with_cache(
    name: &str,
    extra: &[&str],
    vminit: &Path,
    out_dir: &Path,
    ctx: &Path,
    cache: &Path,
) -> (Option<i32>, String, String) {
    let out = host()
        .args(["build", "--name", name, "--cache"])
        .arg(cache)
        .args(extra)
        .arg("--vminit")
        .arg(vminit)
        .arg("-o")
        .arg(out_dir)
        .arg(ctx)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn builds_the_busybox_example_in_a_vm() {
    let Some(vminit) = prerequisites() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ctx = busybox_context(dir.path());
    let out_dir = dir.path().join("out");
    let (code, stdout, stderr) = build(
        "demo",
        &["--build-arg", "GREETING=hi from the test"],
        &vminit,
        &out_dir,
        &ctx,
    );
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");

    // The steps' output was streamed back as they ran.
    assert!(stdout.contains("hi from the test (kernel "), "{stdout}");
    assert!(stdout.contains("built as app in /home/app"), "{stdout}");

    // The image: files the RUN steps made, with the owners and modes they gave.
    let image = out_dir.join("demo.ext4");
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let built = debugfs(&image, "cat /home/app/built.txt");
    assert!(
        built.starts_with("built as app in /home/app on "),
        "{built:?}"
    );
    let stat = debugfs(&image, "stat /home/app/built.txt");
    assert!(stat.contains("User:  1000   Group:  1000"), "{stat}");
    let hello = debugfs(&image, "stat /usr/local/bin/hello");
    assert!(hello.contains("Mode:  0755"), "{hello}");
    assert!(hello.contains("User:  1000   Group:  1000"), "{hello}");
    // Nothing of firebuild is in the image: the agent came in the initramfs, and the mount
    // points it needed (/proc, /sys, /dev: a scratch image has none) were removed again.
    let root = debugfs(&image, "ls /");
    for absent in ["sbin", "proc", "sys", "dev", "firebuild", "run"] {
        assert!(
            !root.split_whitespace().any(|w| w == absent),
            "/{absent} in the image: {root}"
        );
    }
    assert!(debugfs(&image, "stat /etc/machine-id").is_empty());
    // A directory COPY: its kept entries, not the .dockerignored one.
    assert_eq!(
        debugfs(&image, "cat /opt/files/readme.txt"),
        "shipped with the image\n"
    );
    assert_eq!(debugfs(&image, "cat /opt/files/sub/nested.txt"), "nested\n");
    let listing = debugfs(&image, "ls /opt/files");
    assert!(
        listing.contains("readme.txt") && !listing.contains("secret.txt"),
        "{listing}"
    );
    for d in 0..10 {
        let names = debugfs(&image, &format!("ls /opt/files/many/d{d}"));
        let files = names
            .split_whitespace()
            .filter(|w| w.starts_with('f'))
            .count();
        assert_eq!(files, MANY_FILES / 10, "/opt/files/many/d{d}: {names}");
    }
    for i in [0, 137, MANY_FILES - 1] {
        let path = format!("/opt/files/many/d{}/f{i}", i % 10);
        assert_eq!(debugfs(&image, &format!("cat {path}")), format!("{i}\n"));
    }
    let motd = debugfs(&image, "cat /etc/motd");
    assert!(motd.starts_with("hi from the test (kernel "), "{motd:?}");
    assert!(stdout.contains(motd.trim_end()), "{stdout}");

    // Manifest and Firecracker config beside it.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("demo.manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["rootfs"]["file"], "demo.ext4");
    // ~6 MiB of content + a 4 MiB journal + 32 MiB headroom (42 MiB when measured), not the
    // 4 GiB work image nor a journal sized for it.
    let size = manifest["rootfs"]["size_bytes"].as_u64().unwrap();
    assert!(size < 48 << 20, "{size} bytes");
    assert_eq!(
        manifest["rootfs"]["size_bytes"].as_u64().unwrap(),
        std::fs::metadata(&image).unwrap().len()
    );
    assert_eq!(manifest["image"]["user"], "app");
    assert_eq!(manifest["image"]["workdir"], "/home/app");
    // Build args stay out of the manifest unless asked for (they often carry tokens).
    assert!(manifest.get("build_args").is_none(), "{manifest}");
    assert_eq!(manifest["image"]["cmd"]["value"][0], "/usr/local/bin/hello");
    assert_eq!(manifest["base"]["kind"], "scratch");
    let fc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("demo.firecracker.json")).unwrap())
            .unwrap();
    assert_eq!(fc["drives"][0]["path_on_host"], "demo.ext4");
    // Every path in the Firecracker config is valid from the output directory.
    for path in [
        &fc["boot-source"]["kernel_image_path"],
        &fc["boot-source"]["initrd_path"],
    ] {
        assert!(out_dir.join(path.as_str().unwrap()).is_file(), "{path}");
    }
    assert!(
        fc["boot-source"]["boot_args"]
            .as_str()
            .unwrap()
            .contains("firebuild.metadata=off")
    );
    // Nothing but the outputs is left behind.
    let mut names: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "demo.ext4",
            "demo.firecracker.json",
            "demo.initramfs.cpio",
            "demo.manifest.json",
            "demo.vmlinux"
        ]
    );

    // The image runs its CMD as its USER, with its ENV, and its exit code is ours.
    let (code, stdout, stderr) = run(&image, &vminit, &[]);
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("hi from the test (kernel "), "{stdout}");
    assert!(stdout.contains("user app)"), "{stdout}");
    // With metadata: the password hash is applied, then consumed (deleted from the metadata
    // service by the guest), and the guest's status comes back to the host in order.
    let md = out_dir.join("md.json");
    std::fs::write(
        &md,
        r#"{"hostname": "vm7", "users": [{"name": "ops", "password": {"hash": "$6$salt$hash"}}]}"#,
    )
    .unwrap();
    let md_arg = md.to_string_lossy().into_owned();
    let (code, stdout, stderr) = run(
        &image,
        &vminit,
        &[
            "--metadata",
            &md_arg,
            "--",
            "/bin/sh",
            "-c",
            "pwd; hostname; exit 7",
        ],
    );
    assert_eq!(code, Some(7), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("/home/app\nvm7"), "{stdout}");
    let shadow = debugfs(&image, "cat /etc/shadow");
    assert!(shadow.contains("ops:$6$salt$hash:"), "{shadow}");
    let phases: Vec<&str> = [
        "guest configuring",
        "guest configured (",
        "guest running",
        "guest exited (",
    ]
    .into_iter()
    .filter(|p| stderr.contains(p))
    .collect();
    assert_eq!(
        phases.len(),
        4,
        "status phases seen by the host: {phases:?}\n{stderr}"
    );
    let at = |p: &str| stderr.find(p).unwrap();
    assert!(
        at("guest configuring") < at("guest configured (")
            && at("guest running") < at("guest exited ("),
        "{stderr}"
    );
    assert!(stderr.contains("exit code 7"), "{stderr}");
    assert!(stderr.contains("users applied"), "{stderr}");
    assert!(
        stderr.contains("the guest consumed /users/0/password"),
        "the host saw the deletion: {stderr}"
    );

    // EC2's metadata layout, as tools made for cloud-init fill MMDS: hostname and SSH key.
    std::fs::write(
        &md,
        r#"{"latest": {"meta-data": {"hostname": "ec2-host", "instance-id": "i-0abc",
             "public-keys": {"0": {"openssh-key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEc2 ec2-test"}}}}}"#,
    )
    .unwrap();
    let (code, stdout, stderr) = run(
        &image,
        &vminit,
        &["--metadata", &md_arg, "--", "/bin/sh", "-c", "hostname"],
    );
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("ec2-host"), "{stdout}");
    let keys = debugfs(&image, "cat /root/.ssh/authorized_keys");
    assert!(keys.contains("ec2-test"), "{keys}");
}

/// Runs `firebuild-host run IMAGE --vminit V [-- ARGS...]`: (exit code, stdout, stderr).
fn run(image: &Path, vminit: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = host();
    cmd.arg("run").arg(image).arg("--vminit").arg(vminit);
    match args.first() {
        None => {}
        Some(flag) if flag.starts_with("--") => {
            cmd.args(args);
        }
        Some(_) => {
            cmd.arg("--").args(args);
        }
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_failing_run_names_its_dockerfile_line_and_exit_code() {
    let Some(vminit) = prerequisites() else {
        return;
    };
    let (dir, ctx) = scratch_context(
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nRUN echo about to fail && exit 3\nRUN echo never\n",
    );
    let out_dir = dir.path().join("out");
    let (code, stdout, stderr) = build("broken", &[], &vminit, &out_dir, &ctx);
    assert_eq!(code, Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("about to fail"), "{stdout}");
    assert!(!stdout.contains("never"), "{stdout}");
    assert!(
        stderr.contains("Dockerfile:4: build failed with exit code 3"),
        "{stderr}"
    );
    // No image is written for a failed build; the console log is kept for diagnosis.
    assert!(!out_dir.join("broken.ext4").exists());
    assert!(out_dir.join("broken.console.log").is_file());
}

#[test]
fn plain_progress_labels_the_stages_of_a_multi_stage_build() {
    let Some(vminit) = prerequisites() else {
        return;
    };
    let (dir, ctx) = scratch_context(
        "FROM scratch AS tools\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"echo\", \"in tools\"]\n\
     FROM scratch\nCOPY --from=tools /bin/busybox /bin/busybox\n",
    );
    let out_dir = dir.path().join("out");
    let (code, stdout, stderr) = build("staged", &["--progress=plain"], &vminit, &out_dir, &ctx);
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    // BuildKit's plain form: `#N [stage n/total] INSTRUCTION`, `#N DONE`, then the summary.
    assert!(
        stderr.contains("#1 [tools 1/3] COPY busybox /bin/busybox"),
        "{stderr}"
    );
    assert!(stderr.contains("#2 [tools 2/3] RUN"), "{stderr}");
    assert!(stderr.contains("#3 DONE "), "{stderr}");
    assert!(stdout.contains(" in tools"), "{stdout}");
    let image = out_dir.join("staged.ext4");
    assert!(
        stderr.contains(&format!("=> built {} (", image.display())),
        "{stderr}"
    );
    assert!(stderr.contains("   stages: tools "), "{stderr}");
    // The guest's own account of its boot (kernel, initramfs, agent) as it happens and in the
    // summary, and the phase from its first request to its first step.
    assert!(stderr.contains("=> guest boot: kernel "), "{stderr}");
    assert!(stderr.contains("   guest boot: kernel "), "{stderr}");
    assert!(stderr.contains("=> setup DONE "), "{stderr}");
}

#[test]
fn json_progress_is_one_event_per_line_on_stdout() {
    let Some(vminit) = prerequisites() else {
        return;
    };
    let (dir, ctx) = scratch_context(
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"echo\", \"hello from json\"]\n",
    );
    let out_dir = dir.path().join("out");
    let (code, stdout, stderr) = build("events", &["--progress=json"], &vminit, &out_dir, &ctx);
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    for e in &events {
        assert!(e["event"].is_string() && e["time"].is_u64(), "{e}");
    }
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    let first = |kind: &str| {
        kinds
            .iter()
            .position(|k| *k == kind)
            .unwrap_or_else(|| panic!("no {kind} in {kinds:?}"))
    };
    // A step's output travels beside its status: it follows the step's start, and may come
    // after its finish.
    let order = [
        first("planned"),
        first("step-started"),
        first("step-finished"),
        first("image-written"),
    ];
    assert!(first("step-started") < first("output"), "{kinds:?}");
    assert!(order.is_sorted(), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"built"), "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "step-started").count(), 2);
    let run = events
        .iter()
        .find(|e| e["event"] == "step-started" && e["number"] == 2)
        .unwrap();
    assert_eq!(run["total"], 2);
    assert_eq!(run["line"], 3);
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "output" && e["number"] == 2 && e["line"] == "hello from json"),
        "{stdout}"
    );
    let written = &events[first("image-written")];
    let image = out_dir.join("events.ext4");
    assert_eq!(written["image"], image.to_str().unwrap());
    assert_eq!(
        written["size_bytes"].as_u64(),
        Some(std::fs::metadata(&image).unwrap().len())
    );
}

#[test]
fn an_unreadable_secret_is_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), "FROM scratch\n").unwrap();
    let missing = dir.path().join("no-such-token");
    let flag = format!("id=token,src={}", missing.display());
    let (code, stdout, stderr) = build(
        "secret",
        &["--secret", &flag],
        Path::new("/nonexistent/vminit"),
        &dir.path().join("out"),
        &ctx,
    );
    assert_eq!(code, Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains(&format!("--secret {flag}")), "{stderr}");
    let (code, _, stderr) = build(
        "secret",
        &["--secret", "id=a,mode=0400"],
        Path::new("/nonexistent/vminit"),
        &dir.path().join("out"),
        &ctx,
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("id=a,mode=0400") && stderr.contains("unknown key \"mode\""),
        "{stderr}"
    );
}

/// The processes whose command line mentions `qemu` and `dir` (their pid and command line).
fn qemus_under(dir: &Path) -> Vec<(String, String)> {
    let dir = dir.to_string_lossy();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("qemu") && cmdline.contains(dir.as_ref()) {
            found.push((pid, cmdline));
        }
    }
    found
}

/// Asserts no QEMU of this test is left (a killed one may take a moment to go) and `out_dir`
/// holds nothing but `allowed`: no work directory, no image, manifest or config.
fn assert_nothing_left(dir: &Path, out_dir: &Path, allowed: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !qemus_under(dir).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(qemus_under(dir), [], "a VM outlived its build");
    let names: Vec<String> = match std::fs::read_dir(out_dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    let left: Vec<&String> = names
        .iter()
        .filter(|n| !allowed.contains(&n.as_str()))
        .collect();
    assert!(
        left.is_empty(),
        "left behind in {}: {left:?}",
        out_dir.display()
    );
}

#[test]
fn a_step_timeout_or_an_interrupt_stops_the_vm_and_leaves_nothing_behind() {
    let Some(vminit) = prerequisites() else {
        return;
    };
    let (dir, ctx) = scratch_context(
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sleep\", \"600\"]\n",
    );
    // Far below the step's 600 s: the VM was stopped, not waited for.
    let bound = Duration::from_secs(300);

    // (a) The step timeout fails the build naming the step, and stops the VM at once.
    let out_dir = dir.path().join("timed-out");
    let started = Instant::now();
    // 20 s, not less: the COPY before it (a 2 MiB transfer and its step-cache snapshot) took
    // over 3 s on a loaded 2-core machine and timed out instead.
    let (code, stdout, stderr) = build(
        "sleepy",
        &["--step-timeout", "20s"],
        &vminit,
        &out_dir,
        &ctx,
    );
    assert_eq!(code, Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(started.elapsed() < bound, "{:?}", started.elapsed());
    assert!(
        stderr.contains(
            "Dockerfile:3: step 2/2 of stage 0, `RUN [\"/bin/busybox\", \"sleep\", \"600\"]`, \
             ran longer than the step timeout (20s): the VM was stopped"
        ),
        "{stderr}"
    );
    // The console log is kept for diagnosis, as for any failed build; nothing else.
    assert!(out_dir.join("sleepy.console.log").is_file());
    assert_nothing_left(dir.path(), &out_dir, &["sleepy.console.log"]);

    // (b) SIGINT once the step runs: exit code 130, the VM stopped, nothing left.
    let out_dir = dir.path().join("interrupted");
    let mut child = host()
        .args(["build", "--name", "sleepy", "--progress=json", "--no-cache"])
        .arg("--cache")
        .arg(dir.path().join("interrupted.cache"))
        .arg("--vminit")
        .arg(&vminit)
        .arg("-o")
        .arg(&out_dir)
        .arg(&ctx)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    let mut seen = Vec::new();
    loop {
        let Ok(line) = lines.recv_timeout(bound.saturating_sub(started.elapsed())) else {
            let _ = child.kill();
            panic!("no step-started event for the RUN step: {seen:#?}");
        };
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        seen.push(line);
        if event["event"] == "step-started" && event["number"] == 2 {
            break;
        }
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > bound {
            let _ = child.kill();
            panic!("the build did not end after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    reader.join().unwrap();
    seen.extend(lines.try_iter());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}\n{seen:#?}");
    // One line on stderr says what was cleaned up: the work directory in the output directory.
    let said = stderr
        .lines()
        .find(|l| l.starts_with("interrupted by SIGINT: cleaned up "))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        said.contains(&format!("{}/.firebuild-work-", out_dir.display())),
        "{said}"
    );
    // The JSON stream still ends with its closing event.
    let last: serde_json::Value = serde_json::from_str(seen.last().unwrap()).unwrap();
    assert_eq!(last["event"], "failed", "{seen:#?}");
    assert_nothing_left(dir.path(), &out_dir, &[]);
}

/// The `event` names of `--progress=json` lines, with the step number where there is one.
fn events(stdout: &str) -> Vec<(String, u64)> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let name = v["event"].as_str()?.to_owned();
            Some((name, v["number"].as_u64().unwrap_or(0)))
        })
        .collect()
}

/// The step numbers of the events named `name`.
fn numbered(events: &[(String, u64)], name: &str) -> Vec<u64> {
    events
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, k)| *k)
        .collect()
}

/// The image's tree as debugfs lists it (`ls -p`: inode, mode, owner, group, name, size) for
/// the directories the test's Dockerfile fills, and its files' bytes.
/// What the image holds under the test's directories: `ls -p` lines without their inode
/// numbers (which ext4's directory placement, keyed on each file system's random hash seed,
/// decides: not part of what a build produces), then the files' content.
fn tree(image: &Path) -> String {
    let mut out = String::new();
    for dir in ["/", "/bin", "/etc", "/data"] {
        // `/inode/mode/uid/gid/name/size/`, sorted (a hashed directory lists in hash order).
        let listing = debugfs(image, &format!("ls -p {dir}"));
        let mut entries: Vec<String> = listing
            .lines()
            .map(|l| l.split('/').skip(2).collect::<Vec<_>>().join("/"))
            .filter(|e| !e.is_empty())
            .collect();
        entries.sort();
        out.push_str(&format!("{dir}: {}\n", entries.join(" ")));
    }
    for file in ["/data/a.txt", "/data/copy.txt", "/data/built"] {
        out.push_str(&debugfs(image, &format!("cat {file}")));
    }
    out
}

#[test]
fn the_step_cache_reuses_unchanged_steps_and_stages_and_reruns_from_a_changed_copy() {
    let Some(vminit) = prerequisites() else {
        return;
    };
    // Two stages: `tools` (steps 1-3), and the final one based on it (steps 4-6), which reads
    // a context file and copies from `tools` too.
    let (dir, ctx) = scratch_context(
        "ARG UNUSED=1\nFROM scratch AS tools\nCOPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         RUN mkdir -p /etc /data && echo built > /etc/built\n\
         FROM tools\nCOPY a.txt /data/a.txt\nCOPY --from=tools /etc/built /data/built\n\
         RUN cp /data/a.txt /data/copy.txt && echo copied\n",
    );
    std::fs::write(ctx.join("a.txt"), "first\n").unwrap();
    let cache = dir.path().join("cache");
    let run = |out: &str, extra: &[&str]| {
        let out_dir = dir.path().join(out);
        let mut args = vec!["--progress=json"];
        args.extend_from_slice(extra);
        let (code, stdout, stderr) = build_with_cache("c", &args, &vminit, &out_dir, &ctx, &cache);
        assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
        (events(&stdout), out_dir.join("c.ext4"))
    };
    let entries = || {
        let out = host()
            .args(["cache", "ls", "--steps", "--json", "--cache"])
            .arg(&cache)
            .output()
            .unwrap();
        let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        listed.as_array().unwrap().len()
    };

    // Cold: every step runs, in one VM per stage, and each stage's start and each step's
    // result is stored.
    let (cold, cold_image) = run("cold", &[]);
    assert_eq!(numbered(&cold, "step-started"), [1, 2, 3, 4, 5, 6]);
    assert_eq!(numbered(&cold, "vm-starting").len(), 2, "{cold:?}");
    assert!(numbered(&cold, "step-cached").is_empty(), "{cold:?}");
    assert_eq!(numbered(&cold, "step-snapshot"), [0, 1, 2, 3, 0, 4, 5, 6]);
    let cold_tree = tree(&cold_image);
    assert!(cold_tree.contains("first\nfirst\nbuilt\n"), "{cold_tree}");
    assert_eq!(entries(), 8);

    // Unchanged: no VM, every step reused, the same image.
    let (warm, warm_image) = run("warm", &[]);
    assert!(
        numbered(&warm, "vm-starting").is_empty(),
        "a VM booted: {warm:?}"
    );
    assert!(numbered(&warm, "step-started").is_empty(), "{warm:?}");
    assert_eq!(numbered(&warm, "step-cached"), [1, 2, 3, 4, 5, 6]);
    assert_eq!(tree(&warm_image), cold_tree);

    // An ARG the steps do not see (declared before FROM, not in the stages): all reused.
    let (arg, _) = run("arg", &["--build-arg", "UNUSED=2"]);
    assert!(numbered(&arg, "vm-starting").is_empty(), "{arg:?}");
    assert_eq!(numbered(&arg, "step-cached"), [1, 2, 3, 4, 5, 6]);

    // The file the 4th step copies changed: the `tools` stage and nothing before step 4 runs;
    // steps 4-6 run again, in one VM.
    std::fs::write(ctx.join("a.txt"), "second\n").unwrap();
    let (changed, changed_image) = run("changed", &[]);
    assert_eq!(numbered(&changed, "step-cached"), [1, 2, 3]);
    assert_eq!(numbered(&changed, "step-started"), [4, 5, 6]);
    assert_eq!(numbered(&changed, "vm-starting").len(), 1);
    let changed_tree = tree(&changed_image);
    assert!(
        changed_tree.contains("second\nsecond\nbuilt\n"),
        "{changed_tree}"
    );
    assert!(fsck_clean(&changed_image));
    assert_eq!(
        entries(),
        11,
        "three more results: steps 4-6 with the new file"
    );

    // --no-cache-filter tools: that stage runs again (and gives the same keys), the final
    // stage is reused.
    let (filtered, filtered_image) = run("filtered", &["--no-cache-filter", "tools"]);
    assert_eq!(numbered(&filtered, "step-started"), [1, 2, 3]);
    assert_eq!(numbered(&filtered, "step-cached"), [4, 5, 6]);
    assert_eq!(tree(&filtered_image), changed_tree);

    // `cache du` and `prune`: everything goes, and the next build runs every step again.
    let du = host()
        .args(["cache", "du", "--cache"])
        .arg(&cache)
        .output()
        .unwrap();
    let du = String::from_utf8_lossy(&du.stdout).into_owned();
    assert!(du.contains("11 entries"), "{du}");
    let pruned = host()
        .args(["cache", "prune", "--json", "--cache"])
        .arg(&cache)
        .output()
        .unwrap();
    let pruned: serde_json::Value = serde_json::from_slice(&pruned.stdout).unwrap();
    assert_eq!(
        pruned["removed_steps"].as_array().unwrap().len(),
        11,
        "{pruned}"
    );
    assert_eq!(pruned["step_bytes_after"], 0, "{pruned}");
    assert_eq!(entries(), 0);
    let (again, again_image) = run("again", &[]);
    assert_eq!(numbered(&again, "step-started"), [1, 2, 3, 4, 5, 6]);
    assert!(numbered(&again, "step-cached").is_empty());
    assert_eq!(tree(&again_image), changed_tree);
}

fn fsck_clean(image: &Path) -> bool {
    Command::new("e2fsck")
        .arg("-fn")
        .arg(image)
        .output()
        .unwrap()
        .status
        .success()
}
