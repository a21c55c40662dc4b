//! Running one `RUN` step: user, env, workdir, shell or argv, output line by line.
//!
//! [`RunRequest::from_step`] turns a plan [`Step`] into what to execute (argv through the step's
//! shell for the shell form, the argv as is for the exec form, heredocs as buildkit runs them);
//! [`run`] executes it under a guest root and reports each stdout/stderr line to a callback as it
//! comes, then the [`Exit`].
//!
//! Docker semantics kept: the environment is exactly the step's (args, then env; nothing inherited
//! from vminit), `PATH` defaults to `/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`
//! and `HOME` to the user's home from the guest's `/etc/passwd`; the user spec is resolved in the
//! guest's own `/etc/passwd` and `/etc/group` (see [`UserDb::resolve`]); a missing workdir is
//! created (mode 0755, owned by the step's user, as buildkit's WORKDIR does); stdin is
//! `/dev/null`.
//!
//! In the child, before `exec`: `chroot(root)` when the root is not `/`, `chdir(workdir)`,
//! `setgroups`, `setgid`, `setuid` (in that order, so privileges are dropped last and nothing of
//! vminit's credentials leaks). The program is looked up in the step's `PATH` inside the root.
//! When none of that needs code in the child (the root is `/`, the network is shared, and
//! vminit already holds the step's uid, gid and groups: a root step as root) the child is
//! started without a `pre_exec` hook, so std can use `posix_spawn` (see [`ChildSetup::in_place`]).
//! With `RUN --network=none` ([`run_with_network`], [`run_step`]) the child first enters a new
//! network namespace (`unshare(CLONE_NEWNET)`) and brings its loopback up, so the step sees only
//! `lo`, as Docker's `--network=none` gives.
//!
//! When the step's process exits while a background process it started still holds the output
//! pipes open, output is drained for [`DRAIN_AFTER_EXIT`] more and the step is reported finished.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use firebuild_plan::{Command, Network, Step, StepContext, StepKind};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::{Error, Result};
use crate::passwd::{Identity, UserDb};
use crate::paths;

/// Docker's default `PATH` for a step that sets none.
pub const DEFAULT_PATH: &str = firebuild_plan::DEFAULT_PATH;
/// Longest line delivered at once; longer lines arrive in pieces of this size.
pub const MAX_LINE: usize = 64 * 1024;
/// How long output is still read after the step's process exited.
pub const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// How a step's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
}

impl Exit {
    /// Exit code 0.
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }

    /// The code a shell would report (`128 + signal` for a signal).
    pub fn code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }
}

/// A script file the step runs (a heredoc starting with `#!`), written under `/tmp` in the guest
/// for the step's duration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// The file name (the heredoc's delimiter).
    pub name: String,
    /// The content.
    pub content: String,
}

/// What to execute for one RUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRequest {
    /// The argv. When `script` is set, an empty argv means "run the script".
    pub argv: Vec<String>,
    /// The environment, in order (later entries win).
    pub env: Vec<(String, String)>,
    /// Guest working directory (absolute).
    pub workdir: String,
    /// The `USER` spec; root when `None`.
    pub user: Option<String>,
    /// A heredoc script to run instead of `argv`.
    pub script: Option<Script>,
}

impl RunRequest {
    /// A request running `argv` as root in `/` with no environment.
    pub fn new(argv: Vec<String>) -> Self {
        RunRequest {
            argv,
            env: Vec::new(),
            workdir: "/".into(),
            user: None,
            script: None,
        }
    }

    /// What a plan step runs: buildkit's rules for the shell form, the exec form and heredocs.
    pub fn from_step(step: &Step) -> Result<Self> {
        let StepKind::Run(run) = &step.kind else {
            return Err(Error::Invalid {
                what: "step",
                value: step.kind.name().to_owned(),
                reason: "only RUN steps execute",
            });
        };
        let ctx = &step.context;
        let mut script = None;
        let argv = match (&run.command, run.heredocs.as_slice()) {
            (Command::Shell(cmd), [doc]) if is_lone_heredoc(cmd) => {
                if doc.content.starts_with("#!") {
                    script = Some(Script {
                        name: doc.name.clone(),
                        content: doc.content.clone(),
                    });
                    Vec::new()
                } else {
                    Command::Shell(doc.content.clone()).argv(&ctx.shell)
                }
            }
            (Command::Shell(cmd), docs) if !docs.is_empty() => {
                let mut full = cmd.clone();
                for d in docs {
                    full.push('\n');
                    full.push_str(&d.content);
                    full.push_str(&d.name);
                }
                Command::Shell(full).argv(&ctx.shell)
            }
            (c, _) => c.argv(&ctx.shell),
        };
        if argv.is_empty() && script.is_none() {
            return Err(Error::Invalid {
                what: "command",
                value: String::new(),
                reason: "RUN has nothing to execute",
            });
        }
        Ok(RunRequest {
            argv,
            env: ctx
                .process_env()
                .into_iter()
                .map(|v| (v.name, v.value))
                .collect(),
            workdir: ctx.workdir.clone(),
            user: ctx.user.clone(),
            script,
        })
    }
}

/// `<<EOF`, `<<-EOF`, `<<"EOF"`: a command that is only a heredoc.
fn is_lone_heredoc(cmd: &str) -> bool {
    let c = cmd.trim();
    c.starts_with("<<") && !c[2..].trim().contains(char::is_whitespace)
}

/// Runs a plan RUN step under `root`; see [`run`].
pub async fn run_step(
    root: &Path,
    step: &Step,
    on_line: impl FnMut(Stream, &[u8]),
) -> Result<Exit> {
    let network = match &step.kind {
        StepKind::Run(r) => r.network,
        _ => Network::Default,
    };
    run_with_network(root, &RunRequest::from_step(step)?, network, on_line).await
}

/// Resolves `user` in the guest and creates `workdir` (normalised) and its missing parents owned
/// by them, mode 0755; existing directories are left as they are.
fn workdir_as(root: &Path, workdir: &str, user: Option<&str>) -> Result<(Identity, String)> {
    let db = UserDb::load(root)?;
    let identity = db.resolve(user.unwrap_or(""))?;
    let workdir = paths::normalize(workdir);
    paths::create_dirs(root, &workdir, 0o755, identity.uid, identity.gid)?;
    Ok((identity, workdir))
}

/// A `WORKDIR` step: creates the context's workdir owned by the context's user.
pub fn make_workdir(root: &Path, ctx: &StepContext) -> Result<()> {
    workdir_as(root, &ctx.workdir, ctx.user.as_deref()).map(|_| ())
}

/// Everything the child needs, prepared before `fork` (no allocation happens in the child).
#[derive(Debug)]
struct ChildSetup {
    chroot: Option<CString>,
    workdir: CString,
    /// The credentials to switch to; `None` when vminit is not root (then it runs the step as
    /// itself, its uid checked to be the step's).
    identity: Option<Identity>,
    /// `RUN --network=none`: a new network namespace with only `lo`, up.
    isolate_network: bool,
}

impl ChildSetup {
    /// Whether the child needs nothing between fork and exec but the working directory (and the
    /// process group, stdio and environment, which std sets itself): no chroot, no network
    /// namespace, and credentials this process already has, so `setgroups`/`setgid`/`setuid`
    /// would change nothing. `current` is this process's.
    ///
    /// Why it matters: a `pre_exec` hook makes std `fork` vminit (copying its page tables and
    /// marking its memory copy-on-write, then faulting pages back in); without one, std uses
    /// `posix_spawn` (glibc and musl: `clone(CLONE_VM|CLONE_VFORK)`, nothing copied), applying
    /// the working directory with `posix_spawn_file_actions_addchdir_np` and the group with
    /// `POSIX_SPAWN_SETPGROUP`. std still forks when the program has no `/` (it then searches
    /// the step's `PATH` itself), which only costs time. std's own `uid`/`gid` force the fork
    /// path too, so switching users keeps the hook.
    fn in_place(&self, current: &Credentials) -> bool {
        self.chroot.is_none()
            && !self.isolate_network
            && self.identity.as_ref().is_none_or(|id| current.are(id))
    }
}

/// A process's real and effective ids and supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Credentials {
    uid: u32,
    euid: u32,
    gid: u32,
    egid: u32,
    /// Sorted, deduplicated.
    groups: Vec<u32>,
}

impl Credentials {
    /// This process's (the supplementary groups are the process's, shared by its threads).
    fn current() -> std::io::Result<Self> {
        use rustix::process::{getegid, geteuid, getgid, getgroups, getuid};
        Ok(Credentials {
            uid: getuid().as_raw(),
            euid: geteuid().as_raw(),
            gid: getgid().as_raw(),
            egid: getegid().as_raw(),
            groups: group_set(getgroups()?.into_iter().map(|g| g.as_raw()).collect()),
        })
    }

    /// [`Credentials::current`], read once: nothing in vminit changes its own credentials, and
    /// every step's spawn asks. `None` when reading them failed.
    fn of_this_process() -> Option<&'static Self> {
        static CURRENT: std::sync::OnceLock<Option<Credentials>> = std::sync::OnceLock::new();
        CURRENT.get_or_init(|| Credentials::current().ok()).as_ref()
    }

    /// Whether the child would have exactly these after `setgroups(id.groups)`, `setgid(id.gid)`,
    /// `setuid(id.uid)` (as root those set the real, effective and saved ids; the saved ids are
    /// not compared: a root vminit never sets them apart).
    fn are(&self, id: &Identity) -> bool {
        self.uid == id.uid
            && self.euid == id.uid
            && self.gid == id.gid
            && self.egid == id.gid
            && self.groups == group_set(id.groups.clone())
    }
}

/// Group ids as a set: sorted, deduplicated.
fn group_set(mut groups: Vec<u32>) -> Vec<u32> {
    groups.sort_unstable();
    groups.dedup();
    groups
}

/// Runs `req` under `root`, calling `on_line` with every output line (without its `\n`; a final
/// line without one is delivered at the end) in the order each stream produced them.
pub async fn run(
    root: &Path,
    req: &RunRequest,
    on_line: impl FnMut(Stream, &[u8]),
) -> Result<Exit> {
    run_with_network(root, req, Network::Default, on_line).await
}

/// [`run`] with the step's `RUN --network`: [`Network::None`] runs it in a new network namespace
/// where only the loopback exists (brought up); `Default` and `Host` use the guest's network.
pub async fn run_with_network(
    root: &Path,
    req: &RunRequest,
    network: Network,
    mut on_line: impl FnMut(Stream, &[u8]),
) -> Result<Exit> {
    let (identity, workdir) = workdir_as(root, &req.workdir, req.user.as_deref())?;

    let mut script_host = None;
    let mut argv = req.argv.clone();
    if let Some(s) = &req.script {
        let name = format!(
            "/tmp/.firebuild-heredoc-{}-{}",
            std::process::id(),
            s.name.replace('/', "_")
        );
        paths::create_dirs(root, "/tmp", 0o1777, 0, 0)?;
        let host = paths::resolve_nofollow(root, &name)?;
        let meta = paths::FileMeta {
            mode: 0o755,
            uid: 0,
            gid: 0,
        };
        paths::write_atomic(&host, s.content.as_bytes(), Some(meta), meta)?;
        script_host = Some(host);
        argv.insert(0, name);
    }
    let result = spawn_and_wait(root, &argv, req, &workdir, network, identity, &mut on_line).await;
    if let Some(h) = script_host {
        let _ = std::fs::remove_file(h);
    }
    result
}

async fn spawn_and_wait(
    root: &Path,
    argv: &[String],
    req: &RunRequest,
    workdir: &str,
    network: Network,
    identity: Identity,
    on_line: &mut impl FnMut(Stream, &[u8]),
) -> Result<Exit> {
    let Some(program) = argv.first() else {
        return Err(Error::Invalid {
            what: "command",
            value: String::new(),
            reason: "empty argv",
        });
    };
    let nul = |what: &'static str, v: &[u8]| Error::Invalid {
        what,
        value: String::from_utf8_lossy(v).into_owned(),
        reason: "contains a NUL byte",
    };
    let setup = ChildSetup {
        chroot: if paths::is_real_root(root) {
            None
        } else {
            let r = root.as_os_str().as_bytes();
            Some(CString::new(r).map_err(|_| nul("root", r))?)
        },
        workdir: CString::new(workdir).map_err(|_| nul("workdir", workdir.as_bytes()))?,
        identity: (rustix::process::geteuid().as_raw() == 0).then_some(identity.clone()),
        isolate_network: network == Network::None,
    };
    if setup.identity.is_none() && identity.uid != rustix::process::geteuid().as_raw() {
        return Err(Error::Invalid {
            what: "user",
            value: identity.uid.to_string(),
            reason: "switching users needs root",
        });
    }

    let mut env: Vec<(String, String)> = Vec::with_capacity(req.env.len() + 2);
    for (k, v) in &req.env {
        match env.iter_mut().find(|(n, _)| n == k) {
            Some(e) => e.1.clone_from(v),
            None => env.push((k.clone(), v.clone())),
        }
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    if !env.iter().any(|(k, _)| k == "HOME") {
        env.push(("HOME".into(), identity.home.clone()));
    }

    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    // When reading this process's credentials fails, the hook does the switch as before.
    let in_place = Credentials::of_this_process().is_some_and(|c| setup.in_place(c));
    if in_place {
        cmd.current_dir(workdir);
    } else {
        install_child_setup(&mut cmd, setup);
    }
    tracing::debug!(program = %program, uid = identity.uid, gid = identity.gid, workdir, in_place, "run");
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        program: program.clone(),
        source,
    })?;
    // Every process the step started dies with it, as when BuildKit tears down a RUN's
    // container: on return, and when the step is dropped (cancelled, host lost).
    let _group = child.id().map(GroupKill);
    let (Some(mut out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(Error::Spawn {
            program: program.clone(),
            source: std::io::Error::other("no output pipes"),
        });
    };
    let mut lo = LineBuf::default();
    let mut le = LineBuf::default();
    let mut out_open = true;
    let mut err_open = true;
    let mut status = None;
    let deadline = tokio::time::sleep(Duration::from_secs(u64::from(u32::MAX)));
    tokio::pin!(deadline);
    let mut bo = vec![0u8; 16 * 1024];
    let mut be = vec![0u8; 16 * 1024];
    while out_open || err_open {
        tokio::select! {
            r = read_some(&mut out, &mut bo), if out_open => {
                let n = r.map_err(Error::io("read stdout of", program))?;
                if n == 0 {
                    out_open = false;
                    lo.finish(|l| on_line(Stream::Stdout, l));
                } else {
                    lo.push(&bo[..n], |l| on_line(Stream::Stdout, l));
                }
            }
            r = read_some(&mut err, &mut be), if err_open => {
                let n = r.map_err(Error::io("read stderr of", program))?;
                if n == 0 {
                    err_open = false;
                    le.finish(|l| on_line(Stream::Stderr, l));
                } else {
                    le.push(&be[..n], |l| on_line(Stream::Stderr, l));
                }
            }
            s = child.wait(), if status.is_none() => {
                status = Some(s.map_err(Error::io("wait for", program))?);
                deadline.as_mut().reset(tokio::time::Instant::now() + DRAIN_AFTER_EXIT);
            }
            () = &mut deadline, if status.is_some() => {
                tracing::warn!(program = %program, "step exited but its output is still open (background process?); not waiting for it");
                lo.finish(|l| on_line(Stream::Stdout, l));
                le.finish(|l| on_line(Stream::Stderr, l));
                break;
            }
        }
    }
    let status = match status {
        Some(s) => s,
        None => child.wait().await.map_err(Error::io("wait for", program))?,
    };
    Ok(match (status.code(), status.signal()) {
        (Some(c), _) => Exit::Code(c),
        (None, Some(s)) => Exit::Signal(s),
        (None, None) => Exit::Code(-1),
    })
}

/// Kills a step's process group when dropped.
struct GroupKill(u32);

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pgid) = i32::try_from(self.0)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        }
    }
}

async fn read_some(r: &mut (impl AsyncRead + Unpin), buf: &mut [u8]) -> std::io::Result<usize> {
    r.read(buf).await
}

#[allow(unsafe_code)]
fn install_child_setup(cmd: &mut tokio::process::Command, setup: ChildSetup) {
    use rustix::process::{Gid, Uid};
    let groups: Vec<Gid> = setup
        .identity
        .as_ref()
        .map(|i| i.groups.iter().map(|&g| Gid::from_raw(g)).collect())
        .unwrap_or_default();
    // SAFETY: the closure runs in the forked child before exec. It only makes raw system calls
    // through rustix (chroot, chdir, setgroups, setgid, setuid) on data prepared before the fork
    // (C strings, a Vec of gids): no allocation, no lock, nothing that is not async-signal-safe.
    // rustix's set_thread_* are the raw per-thread syscalls, correct here because the child has
    // exactly one thread.
    //
    // `unshare(CLONE_NEWNET)` is a raw syscall too, safe in the single-threaded child (the flag is
    // not `CLONE_FILES`, which is what makes rustix's `unshare_unsafe` unsafe); bringing `lo` up
    // is `socket` + two `ioctl`s on a stack `ifreq` and `close`.
    unsafe {
        cmd.pre_exec(move || {
            if setup.isolate_network {
                rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET)?;
                loopback_up()?;
            }
            if let Some(root) = &setup.chroot {
                rustix::process::chroot(root.as_c_str())?;
            }
            rustix::process::chdir(setup.workdir.as_c_str())?;
            if let Some(id) = &setup.identity {
                rustix::thread::set_thread_groups(&groups)?;
                rustix::thread::set_thread_gid(Gid::from_raw(id.gid))?;
                rustix::thread::set_thread_uid(Uid::from_raw(id.uid))?;
            }
            Ok(())
        });
    }
}

/// `struct ifreq` with the `ifr_flags` member of its union (40 bytes, the 64-bit size; the kernel
/// reads no more than its own `sizeof(struct ifreq)`).
#[repr(C)]
struct IfReqFlags {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

/// Sets `IFF_UP` on `lo` (`SIOCGIFFLAGS` then `SIOCSIFFLAGS` on an `AF_INET` datagram socket),
/// as runc does for a container's own network namespace. Called in the child between fork and
/// exec: only raw system calls on stack data.
#[allow(unsafe_code)]
fn loopback_up() -> std::io::Result<()> {
    use rustix::ioctl::{Opcode, Updater, ioctl};
    use rustix::net::{AddressFamily, SocketFlags, SocketType, socket_with};
    const SIOCGIFFLAGS: Opcode = 0x8913;
    const SIOCSIFFLAGS: Opcode = 0x8914;
    const IFF_UP: i16 = 0x1;
    let sock = socket_with(
        AddressFamily::INET,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let mut req = IfReqFlags {
        name: [0; 16],
        flags: 0,
        _pad: [0; 22],
    };
    req.name[..2].copy_from_slice(b"lo");
    // SAFETY: both opcodes take a `struct ifreq` the kernel reads (and, for SIOCGIFFLAGS, writes
    // `ifr_flags` of); `IfReqFlags` has its layout and size for the flags member.
    unsafe {
        ioctl(&sock, Updater::<SIOCGIFFLAGS, _>::new(&mut req))?;
        req.flags |= IFF_UP;
        ioctl(&sock, Updater::<SIOCSIFFLAGS, _>::new(&mut req))?;
    }
    Ok(())
}

/// Splits a byte stream into lines of at most [`MAX_LINE`] bytes.
#[derive(Debug, Default)]
struct LineBuf {
    buf: Vec<u8>,
}

impl LineBuf {
    fn push(&mut self, mut data: &[u8], mut emit: impl FnMut(&[u8])) {
        while let Some(i) = data.iter().position(|&b| b == b'\n') {
            if self.buf.is_empty() {
                emit(&data[..i]);
            } else {
                self.buf.extend_from_slice(&data[..i]);
                emit(&self.buf);
                self.buf.clear();
            }
            data = &data[i + 1..];
        }
        self.buf.extend_from_slice(data);
        while self.buf.len() >= MAX_LINE {
            emit(&self.buf[..MAX_LINE]);
            self.buf.drain(..MAX_LINE);
        }
    }

    fn finish(&mut self, mut emit: impl FnMut(&[u8])) {
        if !self.buf.is_empty() {
            emit(&self.buf);
            self.buf.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use firebuild_plan::{EnvVar, Heredoc, Run, Span, StepContext};

    fn lines(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut lb = LineBuf::default();
        for c in chunks {
            lb.push(c, |l| out.push(l.to_vec()));
        }
        lb.finish(|l| out.push(l.to_vec()));
        out
    }

    #[test]
    fn line_splitting_joins_pieces_and_flushes_the_tail() {
        assert_eq!(
            lines(&[b"a\nb", b"c\n\nd"]),
            vec![b"a".to_vec(), b"bc".to_vec(), b"".to_vec(), b"d".to_vec()]
        );
        let long = vec![b'x'; MAX_LINE + 5];
        let got = lines(&[&long, b"\n"]);
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].len(), got[1].len()), (MAX_LINE, 5));
    }

    fn step(cmd: Command, heredocs: Vec<Heredoc>) -> Step {
        let mut run = Run::new(cmd);
        run.heredocs = heredocs;
        Step {
            index: 0,
            span: Span::lines(1, 1),
            context: StepContext {
                env: vec![EnvVar::new("A", "env")],
                args: vec![EnvVar::new("A", "arg"), EnvVar::new("B", "arg")],
                workdir: "/w".into(),
                user: Some("u".into()),
                ..StepContext::default()
            },
            kind: StepKind::Run(run),
        }
    }

    #[test]
    fn requests_follow_buildkit_rules() {
        let r = RunRequest::from_step(&step(Command::Shell("echo $A".into()), vec![])).unwrap();
        assert_eq!(r.argv, ["/bin/sh", "-c", "echo $A"]);
        assert_eq!(
            r.env,
            vec![("A".into(), "env".into()), ("B".into(), "arg".into())]
        );
        assert_eq!((r.workdir.as_str(), r.user.as_deref()), ("/w", Some("u")));
        let doc = |c: &str| Heredoc {
            name: "EOF".into(),
            content: c.into(),
            expand: true,
        };
        let r = RunRequest::from_step(&step(
            Command::Shell("<<EOF".into()),
            vec![doc("echo hi\n")],
        ))
        .unwrap();
        assert_eq!(r.argv, ["/bin/sh", "-c", "echo hi\n"]);
        let r = RunRequest::from_step(&step(
            Command::Shell("<<EOF".into()),
            vec![doc("#!/bin/busybox sh\necho hi\n")],
        ))
        .unwrap();
        assert!(r.argv.is_empty());
        assert_eq!(r.script.unwrap().name, "EOF");
        let r = RunRequest::from_step(&step(Command::Shell("cat <<EOF".into()), vec![doc("x\n")]))
            .unwrap();
        assert_eq!(r.argv[2], "cat <<EOF\nx\nEOF");
    }

    fn setup(chroot: bool, isolate_network: bool, identity: Option<Identity>) -> ChildSetup {
        ChildSetup {
            chroot: chroot.then(|| CString::new("/r").unwrap()),
            workdir: CString::new("/w").unwrap(),
            identity,
            isolate_network,
        }
    }

    fn identity(uid: u32, gid: u32, groups: &[u32]) -> Identity {
        Identity {
            uid,
            gid,
            groups: groups.to_vec(),
            name: None,
            home: "/".into(),
            shell: None,
        }
    }

    #[test]
    fn only_a_step_needing_no_child_code_skips_the_hook() {
        let root = Credentials {
            uid: 0,
            euid: 0,
            gid: 0,
            egid: 0,
            groups: vec![],
        };
        let user = Credentials {
            uid: 1000,
            euid: 1000,
            ..root.clone()
        };
        let in_groups = Credentials {
            groups: vec![4, 10],
            ..root.clone()
        };
        let setuid = Credentials {
            euid: 1000,
            ..root.clone()
        };
        let as_root = || Some(identity(0, 0, &[]));
        #[rustfmt::skip]
        let cases = [
            ("a root step as root under /", setup(false, false, as_root()), &root, true),
            ("vminit not root runs the step as itself", setup(false, false, None), &user, true),
            ("groups are a set", setup(false, false, Some(identity(0, 0, &[10, 4]))), &in_groups, true),
            ("chroot", setup(true, false, as_root()), &root, false),
            ("--network=none", setup(false, true, as_root()), &root, false),
            ("another uid", setup(false, false, Some(identity(1000, 0, &[]))), &root, false),
            ("another gid", setup(false, false, Some(identity(0, 100, &[]))), &root, false),
            // Alpine lists root in bin, daemon, ...: setgroups is needed.
            ("root's groups", setup(false, false, Some(identity(0, 0, &[1, 2]))), &root, false),
            ("groups vminit must not pass on", setup(false, false, as_root()), &in_groups, false),
            ("effective uid differs", setup(false, false, as_root()), &setuid, false),
        ];
        for (what, setup, current, in_place) in cases {
            assert_eq!(setup.in_place(current), in_place, "{what}");
        }
    }

    #[test]
    fn current_credentials_are_what_the_kernel_shows() {
        let c = Credentials::current().unwrap();
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let field = |name: &str| -> Vec<u32> {
            let line = status.lines().find(|l| l.starts_with(name)).unwrap();
            line[name.len()..]
                .split_whitespace()
                .map(|v| v.parse().unwrap())
                .collect()
        };
        let (uids, gids) = (field("Uid:"), field("Gid:"));
        let mut groups = field("Groups:");
        groups.sort_unstable();
        groups.dedup();
        assert_eq!(
            (c.uid, c.euid, c.gid, c.egid),
            (uids[0], uids[1], gids[0], gids[1])
        );
        assert_eq!(c.groups, groups);
    }

    #[test]
    fn exit_codes() {
        assert!(Exit::Code(0).success());
        assert_eq!(Exit::Signal(9).code(), 137);
    }
}
