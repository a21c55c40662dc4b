//! PID 1 duties: the root switch from the initramfs, API file systems (on stubs created only
//! when missing), `lo`, the agent as a child, reaping, signal forwarding, the exit code on the
//! console, power off.

use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Parser as _;
use rustix::mount::{MountFlags, mount};
use rustix::process::{Pid, Signal, WaitOptions};

use firebuild_guest::fork::Forked;

use crate::stubs::Stubs;

/// Set in the agent's environment by PID 1.
const AGENT_ENV: &str = "VMINIT_AGENT";

/// The agent's environment variable naming the file that holds the image config (a
/// [`firebuild_plan::ImageConfig`] as JSON) PID 1 read from the initramfs: `/proc/1/fd/N`, a
/// memfd PID 1 keeps open (no file in the image, no size limit of the environment). Also
/// honoured outside PID 1 (tests).
pub const IMAGE_CONFIG_ENV: &str = "VMINIT_IMAGE_CONFIG";

/// Where the host puts the image config in the initramfs (`firebuild_vmm::kernel::IMAGE_CONFIG_PATH`).
const INITRAMFS_IMAGE_CONFIG: &str = "/firebuild/image.json";
/// Largest image config read.
pub const MAX_IMAGE_CONFIG: u64 = 1 << 20;

/// The line PID 1 writes before powering off, followed by the agent's exit code: a copy of
/// `firebuild_vmm::EXIT_MARKER` (vminit does not depend on the VMM crate; the VM test in
/// `crates/vmm/tests/vminit_boot.rs` parses the console with the original).
pub const EXIT_MARKER: &str = "firebuild: exit code ";

/// The API file systems' mount points created when the image lacks them (BuildKit's rule).
const STUBS: &[&str] = &["/proc", "/sys", "/dev"];

/// Set in the agent's environment by PID 1: when vminit started as PID 1, in microseconds of
/// the guest's boot clock (the end of the initramfs's share of the boot).
const STARTED_ENV: &str = "VMINIT_STARTED_US";

static STARTED: OnceLock<Duration> = OnceLock::new();

/// Notes when this process started on the boot clock; the first thing `main` does.
pub fn mark_started() {
    STARTED.get_or_init(firebuild_guest::boot::uptime);
}

/// When vminit started as PID 1 (passed down by it), or, outside PID 1, when this process did.
pub fn vminit_started() -> Option<Duration> {
    match std::env::var(STARTED_ENV) {
        Ok(us) => us.parse().ok().map(Duration::from_micros),
        Err(_) => STARTED.get().copied(),
    }
}

pub fn is_pid1() -> bool {
    rustix::process::getpid().is_init()
}

/// Set in the agent PID 1 forked (the one it starts with `exec` has [`AGENT_ENV`]).
static FORKED_AGENT: AtomicBool = AtomicBool::new(false);

/// The image config file PID 1 hands to the agent it forks (see [`IMAGE_CONFIG_ENV`]).
static HANDED_IMAGE_CONFIG: OnceLock<String> = OnceLock::new();

pub fn is_agent_child() -> bool {
    FORKED_AGENT.load(Ordering::Relaxed) || std::env::var_os(AGENT_ENV).is_some()
}

/// The image config file PID 1 handed to this agent, if any: its word to a forked agent, else
/// [`IMAGE_CONFIG_ENV`].
pub fn image_config_path() -> Option<PathBuf> {
    HANDED_IMAGE_CONFIG
        .get()
        .map(PathBuf::from)
        .or_else(|| std::env::var_os(IMAGE_CONFIG_ENV).map(PathBuf::from))
}

const NOSUID: MountFlags = MountFlags::NOSUID;
const NOSUID_NODEV: MountFlags = MountFlags::NOSUID.union(MountFlags::NODEV);
const NOSUID_NODEV_NOEXEC: MountFlags = NOSUID_NODEV.union(MountFlags::NOEXEC);

/// (source, target, fstype, flags, data)
const MOUNTS: &[(&str, &str, &str, MountFlags, &std::ffi::CStr)] = &[
    ("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, c""),
    ("sysfs", "/sys", "sysfs", NOSUID_NODEV_NOEXEC, c""),
    ("devtmpfs", "/dev", "devtmpfs", NOSUID, c"mode=0755"),
    (
        "devpts",
        "/dev/pts",
        "devpts",
        NOSUID.union(MountFlags::NOEXEC),
        c"gid=5,mode=0620,ptmxmode=0666",
    ),
    ("tmpfs", "/dev/shm", "tmpfs", NOSUID_NODEV, c"mode=1777"),
];

/// What the agent mounts in run mode only: during a build what a RUN writes to `/run` and `/tmp`
/// is kept in the image, as Docker keeps it. PID 1 unmounts them at shutdown.
pub const RUN_MODE_MOUNTS: &[(&str, &str, &str, MountFlags, &std::ffi::CStr)] = &[
    ("tmpfs", "/run", "tmpfs", NOSUID_NODEV, c"mode=0755"),
    ("tmpfs", "/tmp", "tmpfs", NOSUID_NODEV, c"mode=1777"),
];

/// Mounts the run-mode file systems (`/run`, `/tmp` as tmpfs); for the agent of PID 1.
pub fn mount_run_mode() {
    mount_all(RUN_MODE_MOUNTS);
}

fn mount_api_filesystems() {
    mount_all(MOUNTS);
    dev_links();
}

/// The links a container runtime makes in /dev (runc's `setupDevSymlinks`), which devtmpfs lacks:
/// `cat /dev/stdin`, bash's `<(...)` and `/dev/fd/N` need them in a RUN as they work under
/// `docker build` (the differential test `build-env` compares).
const DEV_LINKS: &[(&str, &str)] = &[
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
];

fn dev_links() {
    for &(target, link) in DEV_LINKS {
        match std::os::unix::fs::symlink(target, link) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => tracing::warn!("linking {link} to {target}: {e}"),
        }
    }
}

fn mount_all(list: &[(&str, &str, &str, MountFlags, &std::ffi::CStr)]) {
    for &(source, target, fstype, flags, data) in list {
        // The stubs of the root were made by `Stubs::ensure`; these are under /dev (devtmpfs)
        // or /run and /tmp, which an image has.
        let _ = std::fs::create_dir_all(target);
        let data = (!data.is_empty()).then_some(data);
        match mount(source, target, fstype, flags, data) {
            Ok(()) => tracing::debug!("mounted {target}"),
            // Already mounted (by an initramfs, or the kernel's devtmpfs.mount=1).
            Err(rustix::io::Errno::BUSY) => tracing::debug!("{target} already mounted"),
            Err(e) => tracing::warn!("mounting {fstype} on {target}: {e}"),
        }
    }
}

fn loopback_up() {
    let result = firebuild_guest::netlink::Netlink::open().and_then(|mut nl| {
        let lo = nl.index("lo")?;
        nl.link_up(lo)
    });
    match result {
        Ok(()) => tracing::info!("lo up"),
        Err(e) => tracing::warn!("bringing lo up: {e}"),
    }
}

/// Unmounts the initramfs's own `/dev`, `/sys` and `/proc` before the root moves: its `/init`
/// leaves them to vminit (three `umount` commands less, ~20 ms each under TCG). One that an
/// older `/init` unmounted already is not mounted: ignored.
fn unmount_initramfs_api() {
    for target in STUBS {
        let _ = rustix::mount::unmount(*target, rustix::mount::UnmountFlags::DETACH);
    }
}

/// Moves the root file system mounted at `dir` onto `/` and enters it, as busybox `switch_root`
/// does (minus deleting the initramfs, which stays in memory: vminit's own binary is there).
fn switch_root(dir: &Path) -> rustix::io::Result<()> {
    rustix::process::chdir(dir)?;
    rustix::mount::mount_move(".", "/")?;
    rustix::process::chroot(".")?;
    rustix::process::chdir("/")
}

/// Reads the image config the host put in the initramfs, before the root switch hides it.
fn read_initramfs_image_config() -> Option<Vec<u8>> {
    let path = Path::new(INITRAMFS_IMAGE_CONFIG);
    match firebuild_guest::paths::read_bounded(path, MAX_IMAGE_CONFIG) {
        Ok(Some(bytes)) => {
            tracing::info!("image config from the initramfs ({} bytes)", bytes.len());
            Some(bytes)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!("ignoring the initramfs image config: {e}");
            None
        }
    }
}

/// Runs PID 1: never returns normally in a real guest (powers off).
pub fn pid1(args: &crate::Args) -> ExitCode {
    tracing::info!("vminit {} as PID 1", env!("CARGO_PKG_VERSION"));
    let mut image_config = None;
    if let Some(dir) = &args.switch_root {
        image_config = read_initramfs_image_config();
        unmount_initramfs_api();
        if let Err(e) = switch_root(dir) {
            tracing::error!("switching the root to {}: {e}", dir.display());
            power_off(1);
            return ExitCode::from(1);
        }
        tracing::info!("root switched to {}", dir.display());
    }
    let stubs = Stubs::ensure(Path::new("/"), STUBS);
    if !stubs.created().is_empty() {
        tracing::info!(created = ?stubs.created(), "mount point stubs (removed at shutdown)");
    }
    mount_api_filesystems();
    loopback_up();
    let code = match supervise(args, image_config.as_deref()) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("supervising the agent: {e:#}");
            1
        }
    };
    tracing::info!("agent exited with {code}; powering off");
    if args.once {
        return ExitCode::from(code);
    }
    shutdown(&stubs);
    power_off(code);
    ExitCode::from(code)
}

/// The arguments passed on to the agent: only when they parse (see `main`: init gets stray
/// kernel words), and without `--switch-root` (PID 1's business).
fn agent_args() -> Vec<OsString> {
    if crate::Args::try_parse().is_err() {
        return Vec::new();
    }
    filter_switch_root(std::env::args_os().skip(1))
}

fn filter_switch_root(args: impl Iterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "--switch-root" {
            args.next();
        } else if !arg
            .to_str()
            .is_some_and(|a| a.starts_with("--switch-root="))
        {
            out.push(arg);
        }
    }
    out
}

/// Puts the image config in a memfd the agent opens as `/proc/1/fd/N` (close-on-exec: the
/// workload never inherits it).
fn image_config_memfd(bytes: &[u8]) -> anyhow::Result<(std::fs::File, String)> {
    use std::os::fd::AsRawFd as _;
    let fd = rustix::fs::memfd_create("firebuild-image-config", rustix::fs::MemfdFlags::CLOEXEC)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    let path = format!(
        "/proc/{}/fd/{}",
        rustix::process::getpid().as_raw_nonzero(),
        file.as_raw_fd()
    );
    Ok((file, path))
}

/// Starts the agent ([`start_agent`]), reaps every child, forwards SIGTERM/SIGINT to the agent;
/// returns the agent's exit code.
fn supervise(args: &crate::Args, image_config: Option<&[u8]>) -> anyhow::Result<u8> {
    // Kept open until the agent is gone.
    let memfd = match image_config.map(image_config_memfd).transpose() {
        Ok(memfd) => memfd,
        Err(e) => {
            tracing::warn!("passing the image config to the agent: {e:#}");
            None
        }
    };
    let agent = start_agent(args, memfd.as_ref().map(|(_, path)| path.as_str()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut chld = signal(SignalKind::child())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        loop {
            // Reap everything that has exited (orphans reparented to PID 1, and the agent).
            while let Ok(Some((pid, status))) = rustix::process::waitpid(None, WaitOptions::NOHANG)
            {
                if pid == agent {
                    let code = status
                        .exit_status()
                        .or_else(|| status.terminating_signal().map(|s| 128 + s))
                        .unwrap_or(1);
                    return Ok(u8::try_from(code).unwrap_or(1));
                }
            }
            tokio::select! {
                _ = chld.recv() => {}
                _ = term.recv() => forward(agent, Signal::TERM),
                _ = int.recv() => forward(agent, Signal::INT),
                // SIGCHLD can coalesce; look again now and then.
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    })
}

/// Starts the agent: a fork of PID 1 while it has one thread (no `exec`: under TCG the agent's
/// first log line came ~0.13 s after PID 1's last), else this binary again through
/// `/proc/self/exe` (which works after the root switch), marked by [`AGENT_ENV`]. Either way
/// it gets the image config file and PID 1's start time. An agent that exits before PID 1
/// watches for SIGCHLD is reaped by the loop's first look.
fn start_agent(args: &crate::Args, image_config: Option<&str>) -> anyhow::Result<Pid> {
    if let Some(path) = image_config {
        let _ = HANDED_IMAGE_CONFIG.set(path.to_owned());
    }
    match firebuild_guest::fork::fork_single_threaded()? {
        Forked::Parent(agent) => return Ok(agent),
        Forked::Child => {
            FORKED_AGENT.store(true, Ordering::Relaxed);
            let mut args = args.clone();
            args.switch_root = None;
            std::process::exit(i32::from(crate::run_agent(args)));
        }
        Forked::MultiThreaded => {}
    }
    tracing::info!("PID 1 has several threads: starting the agent with exec");
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.args(agent_args()).env(AGENT_ENV, "1");
    if let Some(started) = STARTED.get() {
        cmd.env(STARTED_ENV, started.as_micros().to_string());
    }
    if let Some(path) = image_config {
        cmd.env(IMAGE_CONFIG_ENV, path);
    }
    let child = cmd.spawn()?;
    let agent = Pid::from_raw(i32::try_from(child.id())?)
        .ok_or_else(|| anyhow::anyhow!("agent has pid 0"))?;
    // `child` is never waited through std: the supervisor reaps it with the orphans.
    std::mem::forget(child);
    Ok(agent)
}

fn forward(pid: Pid, sig: Signal) {
    tracing::info!("forwarding {sig:?} to the agent");
    let _ = rustix::process::kill_process(pid, sig);
}

/// Syncs, stops what is left, turns swap off, unmounts (the agent's run-mode mounts, then the API
/// file systems innermost first), removes the stubs it created and remounts the root read-only.
fn shutdown(stubs: &Stubs) {
    rustix::fs::sync();
    // Every remaining process gets SIGTERM, then SIGKILL.
    for sig in [Signal::TERM, Signal::KILL] {
        stop_all(sig, Duration::from_millis(200));
    }
    rustix::fs::sync();
    // A swap file on / keeps it busy: off before the read-only remount.
    for e in firebuild_guest::live::swapoff_all() {
        tracing::warn!("swapoff {e}");
    }
    // /tmp and /run are mount points only in run mode: EINVAL otherwise, ignored.
    for &(_, target, _, _, _) in RUN_MODE_MOUNTS.iter().rev().chain(MOUNTS.iter().rev()) {
        let _ = rustix::mount::unmount(target, rustix::mount::UnmountFlags::DETACH);
    }
    stubs.remove();
    if let Err(e) = rustix::mount::mount_remount("/", MountFlags::RDONLY, "") {
        tracing::warn!("remounting / read-only: {e}");
    }
    rustix::fs::sync();
}

/// Sends `sig` to every process but PID 1 and reaps them for at most `grace`, returning as soon
/// as none is left (a build's guest usually has none once its agent exited: no wait at all).
fn stop_all(sig: Signal, grace: Duration) {
    // `kill(-1, sig)`; ESRCH: nothing to signal.
    if rustix::process::kill_process_group(Pid::INIT, sig).is_err() {
        return;
    }
    let deadline = std::time::Instant::now() + grace;
    loop {
        match rustix::process::waitpid(None, WaitOptions::NOHANG) {
            Ok(Some(_)) | Err(rustix::io::Errno::INTR) => {}
            // ECHILD: every process left was a child of PID 1 (orphans are re-parented to it).
            Err(_) => return,
            Ok(None) if std::time::Instant::now() >= deadline => return,
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Writes [`EXIT_MARKER`] with `code` on the console (stderr, bypassing the log formatter) and
/// powers off.
fn power_off(code: u8) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{EXIT_MARKER}{code}");
    let _ = err.flush();
    drop(err);
    if let Err(e) = rustix::system::reboot(rustix::system::RebootCommand::PowerOff) {
        tracing::error!("power off: {e}");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_agent_never_gets_switch_root() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            filter_switch_root(args(&["--switch-root", "/newroot", "--watch"]).into_iter()),
            args(&["--watch"])
        );
        assert_eq!(
            filter_switch_root(args(&["--once", "--switch-root=/newroot"]).into_iter()),
            args(&["--once"])
        );
    }

    #[test]
    fn the_image_config_memfd_reads_back_through_proc() {
        let (_file, path) = image_config_memfd(br#"{"user":"app"}"#).unwrap();
        assert!(path.starts_with(&format!("/proc/{}/fd/", std::process::id())));
        assert_eq!(std::fs::read(&path).unwrap(), br#"{"user":"app"}"#);
    }
}
