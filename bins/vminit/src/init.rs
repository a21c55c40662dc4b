//! PID 1 duties: API file systems, `lo`, the agent as a child, reaping, signal forwarding, power
//! off.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser as _;
use rustix::mount::{MountFlags, mount};
use rustix::process::{Pid, Signal, WaitOptions};

/// Set in the agent's environment by PID 1.
const AGENT_ENV: &str = "VMINIT_AGENT";

pub fn is_pid1() -> bool {
    rustix::process::getpid().is_init()
}

pub fn is_agent_child() -> bool {
    std::env::var_os(AGENT_ENV).is_some()
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
    ("tmpfs", "/run", "tmpfs", NOSUID_NODEV, c"mode=0755"),
    ("tmpfs", "/tmp", "tmpfs", NOSUID_NODEV, c"mode=1777"),
];

fn mount_api_filesystems() {
    for &(source, target, fstype, flags, data) in MOUNTS {
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

/// Runs PID 1: never returns normally in a real guest (powers off).
pub fn pid1(args: &crate::Args) -> ExitCode {
    tracing::info!("vminit {} as PID 1", env!("CARGO_PKG_VERSION"));
    mount_api_filesystems();
    loopback_up();
    let code = match supervise() {
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
    shutdown();
    ExitCode::from(code)
}

/// Starts the agent (this binary again, marked by [`AGENT_ENV`]), reaps every child, forwards
/// SIGTERM/SIGINT to the agent; returns the agent's exit code.
fn supervise() -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut chld = signal(SignalKind::child())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let exe = std::env::current_exe()?;
        // Only arguments that parse are passed on (see `main`: init gets stray kernel words).
        let args: Vec<_> = if crate::Args::try_parse().is_ok() {
            std::env::args_os().skip(1).collect()
        } else {
            Vec::new()
        };
        let child = std::process::Command::new(exe)
            .args(args)
            .env(AGENT_ENV, "1")
            .spawn()?;
        let agent = Pid::from_raw(i32::try_from(child.id())?)
            .ok_or_else(|| anyhow::anyhow!("agent has pid 0"))?;
        // `child` is never waited through std: the loop below reaps it with the orphans.
        std::mem::forget(child);
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

fn forward(pid: Pid, sig: Signal) {
    tracing::info!("forwarding {sig:?} to the agent");
    let _ = rustix::process::kill_process(pid, sig);
}

/// Syncs, stops what is left, remounts the root read-only and powers off.
fn shutdown() {
    rustix::fs::sync();
    // Every remaining process gets SIGTERM, then SIGKILL.
    for sig in [Signal::TERM, Signal::KILL] {
        let _ = rustix::process::kill_process_group(Pid::INIT, sig);
        std::thread::sleep(Duration::from_millis(200));
        while let Ok(Some(_)) = rustix::process::waitpid(None, WaitOptions::NOHANG) {}
    }
    rustix::fs::sync();
    for &(_, target, _, _, _) in MOUNTS.iter().rev() {
        let _ = rustix::mount::unmount(target, rustix::mount::UnmountFlags::DETACH);
    }
    if let Err(e) = rustix::mount::mount_remount("/", MountFlags::RDONLY, "") {
        tracing::warn!("remounting / read-only: {e}");
    }
    rustix::fs::sync();
    if let Err(e) = rustix::system::reboot(rustix::system::RebootCommand::PowerOff) {
        tracing::error!("power off: {e}");
    }
}
