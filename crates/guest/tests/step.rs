//! RUN steps in a busybox-static guest tree, as root and as created users.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use firebuild_guest::passwd::{NewUser, UserDb};
use firebuild_guest::step::{self, Exit, RunRequest, Stream};
use firebuild_plan::{Command, EnvVar, Heredoc, Run, Span, Step, StepContext, StepKind};

fn sh(cmd: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), cmd.into()]
}

async fn run(root: &Path, req: &RunRequest) -> (Exit, Vec<(Stream, String)>) {
    let mut lines = Vec::new();
    let exit = step::run(root, req, |s, l| {
        lines.push((s, String::from_utf8_lossy(l).into_owned()))
    })
    .await
    .unwrap();
    (exit, lines)
}

fn stdout(lines: &[(Stream, String)]) -> Vec<&str> {
    lines
        .iter()
        .filter(|(s, _)| *s == Stream::Stdout)
        .map(|(_, l)| l.as_str())
        .collect()
}

fn add_user(root: &Path, name: &str, groups: &[&str]) {
    let mut db = UserDb::load(root).unwrap();
    let mut nu = NewUser::new(name);
    nu.groups = groups.iter().map(|g| (*g).to_owned()).collect();
    db.add_user(&nu).unwrap();
    db.save().unwrap();
}

#[tokio::test]
async fn run_as_root_and_as_a_created_user() {
    let Some(t) = common::busybox_root() else {
        return;
    };
    let root = t.path();
    let (exit, lines) = run(root, &RunRequest::new(sh("id -u; echo made > /by-root"))).await;
    assert_eq!(exit, Exit::Code(0), "{lines:?}");
    assert_eq!(stdout(&lines), ["0"]);
    let m = fs::metadata(root.join("by-root")).unwrap();
    assert_eq!((m.uid(), m.gid()), (0, 0));

    add_user(root, "builder", &["wheel", "staff"]);
    let mut req = RunRequest::new(sh("id -u; id -g; id -G; echo $HOME; echo x > $HOME/f"));
    req.user = Some("builder".into());
    let (exit, lines) = run(root, &req).await;
    assert_eq!(exit, Exit::Code(0), "{lines:?}");
    assert_eq!(
        stdout(&lines),
        ["1000", "1000", "1000 10 50", "/home/builder"]
    );
    let m = fs::metadata(root.join("home/builder/f")).unwrap();
    assert_eq!((m.uid(), m.gid()), (1000, 1000));

    // The dropped user cannot write where root owns the directory.
    let mut req = RunRequest::new(sh("echo x > /etc/nope"));
    req.user = Some("builder:staff".into());
    let (exit, lines) = run(root, &req).await;
    assert!(!exit.success(), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|(s, l)| *s == Stream::Stderr && l.contains("Permission denied"))
    );
    assert!(!root.join("etc/nope").exists());

    // A numeric uid:gid without passwd entries is allowed, as in Docker.
    let mut req = RunRequest::new(sh("id -u; id -g; echo $HOME; touch /tmp/n"));
    req.user = Some("4242:4343".into());
    let (exit, lines) = run(root, &req).await;
    assert_eq!(exit, Exit::Code(0), "{lines:?}");
    assert_eq!(stdout(&lines), ["4242", "4343", "/"]);
    let m = fs::metadata(root.join("tmp/n")).unwrap();
    assert_eq!((m.uid(), m.gid()), (4242, 4343));
}

#[tokio::test]
async fn env_workdir_and_path_default() {
    let Some(t) = common::busybox_root() else {
        return;
    };
    let root = t.path();
    add_user(root, "app", &[]);
    let step = Step {
        index: 0,
        span: Span::lines(1, 1),
        context: StepContext {
            env: vec![EnvVar::new("GREETING", "hello world")],
            args: vec![EnvVar::new("VERSION", "1.2")],
            workdir: "/srv/app/sub".into(),
            user: Some("app".into()),
            ..StepContext::default()
        },
        kind: StepKind::Run(Run::new(Command::Shell(
            "pwd; echo \"$GREETING $VERSION\"; echo $PATH; echo $HOME; env | grep -c CARGO_ || true"
                .into(),
        ))),
    };
    let mut lines = Vec::new();
    let exit = step::run_step(root, &step, |s, l| {
        lines.push((s, String::from_utf8_lossy(l).into_owned()))
    })
    .await
    .unwrap();
    assert_eq!(exit, Exit::Code(0), "{lines:?}");
    assert_eq!(
        stdout(&lines),
        [
            "/srv/app/sub",
            "hello world 1.2",
            step::DEFAULT_PATH,
            "/home/app",
            "0", // nothing of the caller's environment leaks in
        ]
    );
    // Created workdir components belong to the step's user, as buildkit's WORKDIR does.
    for d in ["srv", "srv/app", "srv/app/sub"] {
        let m = fs::metadata(root.join(d)).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o7777), (1000, 0o755), "{d}");
    }

    // Exec form looks the program up in the step's PATH inside the root.
    let mut req = RunRequest::new(vec!["ls".into(), "/srv/app".into()]);
    req.env = vec![("PATH".into(), "/bin".into())];
    let (exit, lines) = run(root, &req).await;
    assert_eq!((exit, stdout(&lines)), (Exit::Code(0), vec!["sub"]));
}

#[tokio::test]
async fn exit_codes_signals_and_stderr() {
    let Some(t) = common::busybox_root() else {
        return;
    };
    let root = t.path();
    let (exit, lines) = run(root, &RunRequest::new(sh("echo out; echo err >&2; exit 3"))).await;
    assert_eq!(exit, Exit::Code(3));
    assert!(lines.contains(&(Stream::Stdout, "out".into())));
    assert!(lines.contains(&(Stream::Stderr, "err".into())));
    let (exit, _) = run(root, &RunRequest::new(sh("kill -9 $$"))).await;
    assert_eq!(exit, Exit::Signal(9));
    assert_eq!(exit.code(), 137);
    let err = step::run(root, &RunRequest::new(vec!["/no/such".into()]), |_, _| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/no/such"), "{err}");
    let mut req = RunRequest::new(sh("true"));
    req.user = Some("ghost".into());
    let err = step::run(root, &req, |_, _| {}).await.unwrap_err();
    assert!(
        err.to_string().contains("unable to find user ghost"),
        "{err}"
    );
}

#[tokio::test]
async fn long_output_arrives_in_order_with_the_partial_tail() {
    let Some(t) = common::busybox_root() else {
        return;
    };
    let root = t.path();
    let (exit, lines) = run(
        root,
        &RunRequest::new(sh("seq 1 20000; seq 1 500 >&2; printf tail")),
    )
    .await;
    assert_eq!(exit, Exit::Code(0));
    let out = stdout(&lines);
    assert_eq!(out.len(), 20001);
    for (i, l) in out[..20000].iter().enumerate() {
        assert_eq!(*l, (i + 1).to_string());
    }
    assert_eq!(out[20000], "tail");
    let err: Vec<_> = lines.iter().filter(|(s, _)| *s == Stream::Stderr).collect();
    assert_eq!(err.len(), 500);
    assert_eq!(err[499].1, "500");
}

#[tokio::test]
async fn heredoc_with_shebang_runs_as_a_script() {
    let Some(t) = common::busybox_root() else {
        return;
    };
    let root = t.path();
    let step = Step {
        index: 0,
        span: Span::lines(1, 3),
        context: StepContext::default(),
        kind: StepKind::Run(Run {
            heredocs: vec![Heredoc {
                name: "EOF".into(),
                content: "#!/bin/busybox sh\necho \"script $0\"\n".into(),
                expand: false,
            }],
            ..Run::new(Command::Shell("<<EOF".into()))
        }),
    };
    let mut out = Vec::new();
    let exit = step::run_step(root, &step, |_, l| {
        out.push(String::from_utf8_lossy(l).into_owned())
    })
    .await
    .unwrap();
    assert_eq!(exit, Exit::Code(0));
    assert_eq!(out.len(), 1);
    assert!(
        out[0].starts_with("script /tmp/.firebuild-heredoc-"),
        "{out:?}"
    );
    assert_eq!(
        fs::read_dir(root.join("tmp")).unwrap().count(),
        0,
        "script removed"
    );
}

/// Interface names in `/proc/net/dev` as the step saw it, then `ip link show lo`.
fn interfaces(lines: &[&str]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| l.split_once(':'))
        .filter(|(name, _)| !name.contains('|'))
        .map(|(name, _)| name.trim().to_owned())
        .filter(|n| !n.is_empty() && !n.chars().all(|c| c.is_ascii_digit()))
        .collect()
}

#[tokio::test]
async fn network_none_sees_only_loopback_and_it_is_up() {
    // Runs under the real `/` (no chroot) so the step has the host's /proc and busybox.
    let Some(_t) = common::busybox_root() else {
        return;
    };
    let script = "cat /proc/net/dev; busybox ip -o link show lo";
    let mut run = Run::new(Command::Shell(script.into()));
    run.network = firebuild_plan::Network::None;
    let step = Step {
        index: 0,
        span: Span::lines(1, 1),
        context: StepContext::default(),
        kind: StepKind::Run(run),
    };
    let mut lines = Vec::new();
    let exit = step::run_step(Path::new("/"), &step, |s, l| {
        lines.push((s, String::from_utf8_lossy(l).into_owned()))
    })
    .await
    .unwrap();
    assert_eq!(exit, Exit::Code(0), "{lines:?}");
    let out = stdout(&lines);
    let (dev, link): (Vec<&str>, Vec<&str>) = out.iter().partition(|l| !l.starts_with("1: lo"));
    assert_eq!(interfaces(&dev), ["lo"], "{out:?}");
    assert_eq!(link.len(), 1, "{out:?}");
    let flags = link[0].split(['<', '>']).nth(1).unwrap_or_default();
    assert!(flags.split(',').any(|f| f == "UP"), "lo is down: {out:?}");

    // A default step is in the guest's own namespace: the same interfaces as this process.
    let host = fs::read_to_string("/proc/net/dev").unwrap();
    let host = interfaces(&host.lines().collect::<Vec<_>>());
    let mut lines = Vec::new();
    let req = RunRequest::new(sh("cat /proc/net/dev"));
    let exit = step::run(Path::new("/"), &req, |s, l| {
        lines.push((s, String::from_utf8_lossy(l).into_owned()))
    })
    .await
    .unwrap();
    assert_eq!(exit, Exit::Code(0), "{lines:?}");
    assert_eq!(interfaces(&stdout(&lines)), host);
    if host.len() == 1 {
        eprintln!("note: this host has only lo; the default-network half proves little here");
    }
}

/// What a step leaves running dies with it (BuildKit tears down the RUN's container): a
/// background process started with its output closed is gone once the step returns, and a
/// step dropped mid-run (the build cancelled, the host lost) takes its children with it.
#[tokio::test]
async fn processes_a_step_started_die_with_it() {
    let Some(t) = common::busybox_root() else {
        return;
    };
    let root = t.path();
    // sh gives a background job /dev/null as its stdin.
    fs::create_dir_all(root.join("dev")).unwrap();
    let made = std::process::Command::new("mknod")
        .arg(root.join("dev/null"))
        .args(["c", "1", "3"])
        .status()
        .unwrap();
    assert!(made.success());
    // Running, not a zombie waiting for its reaper.
    let alive = |pid: &str| {
        fs::read_to_string(Path::new("/proc").join(pid.trim()).join("stat")).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|r| !r.trim_start().starts_with('Z'))
        })
    };
    let (exit, lines) = run(
        root,
        &RunRequest::new(sh("sleep 300 >/dev/null 2>&1 & echo $!")),
    )
    .await;
    assert_eq!(exit, Exit::Code(0), "{lines:?}");
    let pid = stdout(&lines)[0].to_owned();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(!alive(&pid), "background process {pid} outlived its step");

    let pidfile = root.join("child.pid");
    let req = RunRequest::new(sh("sleep 300 & echo $! > /child.pid; wait"));
    let step = step::run(root, &req, |_, _| {});
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), step).await;
    let pid = fs::read_to_string(&pidfile).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        !alive(&pid),
        "child {pid} of a dropped step is still running"
    );
}

/// Under the real `/` a step with vminit's own credentials needs no code in the child, so it is
/// spawned without a `pre_exec` hook (std's posix_spawn); it must still get exactly its
/// environment, its workdir (created), its own process group, `/dev/null` as stdin and both
/// output pipes. Runs as whoever runs the tests.
#[tokio::test]
async fn under_the_real_root_a_step_as_vminit_gets_workdir_env_group_and_stdin() {
    let t = tempfile::tempdir().unwrap();
    let workdir = t.path().join("a/b");
    let mut req = RunRequest::new(sh(concat!(
        "pwd; echo \"A=$A\"; echo \"CARGO=${CARGO-unset}\"; ",
        "echo \"$$ $(cut -d' ' -f5 /proc/$$/stat)\"; readlink /proc/$$/fd/0; echo err >&2",
    )));
    req.workdir = workdir.to_str().unwrap().to_owned();
    req.env = vec![("A".into(), "1".into())];
    req.user = Some(rustix::process::geteuid().as_raw().to_string());
    let (exit, lines) = run(Path::new("/"), &req).await;
    assert_eq!(exit, Exit::Code(0), "{lines:?}");
    let out = stdout(&lines);
    assert_eq!(out.len(), 5, "{lines:?}");
    assert_eq!(out[0], req.workdir);
    assert_eq!(out[1], "A=1");
    // Nothing of the test process's environment leaks (cargo sets CARGO for tests).
    assert_eq!(out[2], "CARGO=unset");
    let (pid, pgid) = out[3].split_once(' ').unwrap();
    assert_eq!(pid, pgid, "the step leads its own process group");
    assert_eq!(out[4], "/dev/null");
    assert!(
        lines.contains(&(Stream::Stderr, "err".to_owned())),
        "{lines:?}"
    );
    assert!(workdir.is_dir());
}

/// Under the real `/`, a step as another user (the credentials switched in the child) runs
/// with exactly that uid, gid and no other group, in its workdir created owned by the user.
#[tokio::test]
async fn under_the_real_root_a_step_as_another_user_runs_as_that_user() {
    if rustix::process::geteuid().as_raw() != 0 {
        assert!(std::env::var_os("CI").is_none(), "this test needs root");
        eprintln!("skipped: switching users needs root");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let workdir = t.path().join("w");
    let mut req = RunRequest::new(sh("id -u; id -g; id -G; pwd; touch f"));
    req.workdir = workdir.to_str().unwrap().to_owned();
    req.user = Some("65534:65534".into());
    let (exit, lines) = run(Path::new("/"), &req).await;
    assert_eq!(exit, Exit::Code(0), "{lines:?}");
    assert_eq!(
        stdout(&lines),
        ["65534", "65534", "65534", req.workdir.as_str()]
    );
    let m = fs::metadata(workdir.join("f")).unwrap();
    assert_eq!((m.uid(), m.gid()), (65534, 65534));
    assert_eq!(fs::metadata(&workdir).unwrap().uid(), 65534);
}
