//! `firebuild-host build`: argument parsing and rendering over [`firebuild_build::Builder`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use firebuild_build::{BuildOptions, Builder, DEFAULT_HEADROOM_MIB, GuestOptions};

use crate::interrupt::{Ended, Signals};

use crate::progress::{Progress, ProgressArgs};
use crate::registry_args::RegistryArgs;
use crate::secret_args::SecretSpec;

/// Arguments of `firebuild-host build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub input: crate::plan_cmd::DockerfileArgs,
    /// Where the image, its manifest, kernel, initramfs and Firecracker config are written.
    #[arg(short = 'o', long, default_value = "out")]
    pub out: PathBuf,
    /// Base name of the outputs (default: the context directory's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Size of the sparse work image the build runs in, in MiB (shrunk afterwards).
    #[arg(long, value_name = "MIB", default_value_t = 4096)]
    pub work_size_mib: u64,
    /// Free space left in the finished image, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = DEFAULT_HEADROOM_MIB)]
    pub headroom_mib: u64,
    /// Exact size of the finished image, in MiB (instead of content + headroom).
    #[arg(long, value_name = "MIB")]
    pub size: Option<u64>,
    /// Record the build args in the manifest (off by default: they often carry tokens).
    #[arg(long)]
    pub record_build_args: bool,
    /// Give the Firecracker config beside the image a network interface on this host tap
    /// device, with Firecracker's MMDS on it.
    #[arg(long, value_name = "TAP")]
    pub firecracker_tap: Option<String>,
    #[command(flatten)]
    pub guest: GuestArgs,
    /// Give up after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 1800)]
    pub timeout: u64,
    /// Stop the build when one RUN step runs longer than this (`90s`, `10m`, `1h`, `500ms`; a
    /// bare number is seconds): the VM is stopped and the error names the step.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub step_timeout: Option<Duration>,
    /// A secret for `RUN --mount=type=secret,id=ID`: `id=ID,src=FILE` or `id=ID,env=VAR`
    /// (repeatable; Docker's syntax, `type=file|env` accepted; `id` defaults to the file name
    /// of `src`). At most 1 MiB each. Secrets never enter the image, the plan, the manifest,
    /// the metadata or the logs.
    #[arg(long = "secret", value_name = "id=ID,src=FILE|env=VAR", value_parser = crate::secret_args::parse_spec)]
    pub secrets: Vec<SecretSpec>,
    /// Reuse no step from the step cache (the results are still stored for later builds), and
    /// start cache mounts (RUN --mount=type=cache) empty, as BuildKit's --no-cache does.
    #[arg(long)]
    pub no_cache: bool,
    /// Reuse no step of this stage (a name or an index; repeatable), as BuildKit's
    /// --no-cache-filter.
    #[arg(long, value_name = "STAGE")]
    pub no_cache_filter: Vec<String>,
    /// Where the step cache is kept (default: `steps` in the cache directory); `none` keeps no
    /// step cache at all (no step is reused or stored).
    #[arg(long, value_name = "DIR|none")]
    pub step_cache: Option<PathBuf>,
    /// Keep the step cache under this size: after the build, the least recently used entries
    /// go (`500M`, `20G`; 0: no limit).
    #[arg(long, value_name = "SIZE", default_value = "20G", value_parser = crate::cache_cmd::parse_size)]
    pub cache_max_size: u64,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub progress: ProgressArgs,
}

/// The agent and the VM's size: what `build` and `run` share.
#[derive(Debug, Args)]
pub struct GuestArgs {
    /// The static vminit binary put in the initramfs (default: $FIREBUILD_VMINIT, then `vminit`
    /// beside this executable, then target/vminit/vminit).
    #[arg(long)]
    pub vminit: Option<PathBuf>,
    /// Layer cache directory (default: the one `rootfs` uses, `$XDG_CACHE_HOME/firebuild` or
    /// `~/.cache/firebuild`).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Guest memory, MiB.
    #[arg(
        long = "memory",
        visible_alias = "memory-mib",
        value_name = "MIB",
        default_value_t = 1024
    )]
    pub memory_mib: u32,
    /// Guest vCPUs.
    #[arg(long, default_value_t = 2)]
    pub vcpus: u8,
}

impl GuestArgs {
    /// The guest options: vminit found, kernel cache from the XDG lookup.
    pub fn options(&self) -> anyhow::Result<GuestOptions> {
        let kernel_cache = firebuild_vmm::kernel::default_cache_dir()?;
        let mut guest = GuestOptions::new(find_vminit(self.vminit.as_deref())?, kernel_cache);
        guest.memory_mib = self.memory_mib;
        guest.vcpus = self.vcpus;
        Ok(guest)
    }

    /// The layer cache.
    pub fn cache(&self) -> PathBuf {
        self.cache
            .clone()
            .unwrap_or_else(crate::rootfs_cmd::default_cache)
    }
}

/// Finds the static vminit to put in the initramfs.
fn find_vminit(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    // A path given explicitly is used as is: the library checks it when it builds the
    // initramfs, after the Dockerfile was planned (so a bad Dockerfile is reported first).
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let mut candidates = Vec::new();
    {
        if let Some(p) = std::env::var_os("FIREBUILD_VMINIT") {
            candidates.push(PathBuf::from(p));
        }
        if let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
        {
            candidates.push(dir.join("vminit"));
            // target/debug/firebuild-host → target/vminit/vminit
            if let Some(target) = dir.parent() {
                candidates.push(target.join("vminit").join("vminit"));
            }
        }
    }
    // A workspace build leaves a dynamically linked `vminit` beside this executable
    // (target/debug/vminit): only a static one can run in the guest, so skip the others.
    let usable =
        |p: &&PathBuf| std::fs::read(p).is_ok_and(|elf| firebuild_vmm::kernel::is_static_elf(&elf));
    match candidates.iter().find(usable) {
        Some(path) => Ok(path.clone()),
        None => bail!(
            "no static vminit binary found (tried {}); build it with `bash scripts/build-vminit.sh` or pass --vminit",
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Parses `90s`, `10m`, `1h`, `500ms` or a bare number of seconds; zero is refused.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and a unit (90s, 10m, 1h, 500ms)"))?;
    let duration = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use ms, s, m or h)"
            ));
        }
    };
    if duration.is_zero() {
        return Err(format!("{text:?}: must be more than zero"));
    }
    Ok(duration)
}

/// Runs the subcommand: 0 when the image is built, 130/143 when interrupted by
/// `SIGINT`/`SIGTERM` (after the VM is stopped and the work files removed).
pub fn run(args: &BuildArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let result = rt.block_on(build(args));
    // A VM thread that missed the cancellation must not hold the exit: the VMM gets SIGKILL
    // when its thread ends with the process.
    rt.shutdown_timeout(crate::interrupt::SHUTDOWN);
    result
}

fn options(args: &BuildArgs) -> anyhow::Result<BuildOptions> {
    let mut opts = BuildOptions::new(args.guest.options()?, args.guest.cache());
    opts.pull = args.registry.apply(opts.pull)?;
    opts.work_size_mib = args.work_size_mib;
    opts.headroom_mib = args.headroom_mib;
    opts.size_mib = args.size;
    opts.timeout = Duration::from_secs(args.timeout);
    opts.step_timeout = args.step_timeout;
    opts.record_build_args = args.record_build_args;
    opts.firecracker_tap = args.firecracker_tap.clone();
    opts.no_cache = args.no_cache;
    opts.no_cache_filter = args.no_cache_filter.clone();
    opts.step_cache = match &args.step_cache {
        Some(dir) if dir.as_os_str() == "none" => None,
        Some(dir) => Some(dir.clone()),
        None => Some(crate::cache_cmd::step_cache_dir(&args.guest.cache())),
    };
    opts.step_cache_max_bytes = (args.cache_max_size > 0).then_some(args.cache_max_size);
    Ok(opts)
}

async fn build(args: &BuildArgs) -> anyhow::Result<ExitCode> {
    let name = match &args.name {
        Some(n) => n.clone(),
        None => std::fs::canonicalize(&args.input.context)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "rootfs".to_owned()),
    };
    let mut request = args.input.request(&name, &args.out)?;
    request.secrets = crate::secret_args::read_all(&args.secrets)?;
    let options = options(args)?;
    let cancel = options.guest.cancel.clone();
    let mut signals = Signals::catch()?;
    let builder = Builder::new(options);
    let progress = Progress::new(&args.progress);
    let build = builder.build(&request, progress.sink());
    let result = match crate::interrupt::until_signal(build, &cancel, &mut signals).await {
        Ended::Done(result) | Ended::Interrupted(_, Some(result @ Ok(_))) => result,
        Ended::Interrupted(signal, result) => {
            let what = match result {
                Some(Err(firebuild_build::Error::Cancelled { removed })) if removed.is_empty() => {
                    "nothing to clean up".to_owned()
                }
                Some(Err(firebuild_build::Error::Cancelled { removed })) => {
                    let paths: Vec<String> =
                        removed.iter().map(|p| p.display().to_string()).collect();
                    format!("cleaned up {}", paths.join(", "))
                }
                Some(Err(e)) => format!("stopped the VM; {e}"),
                // Dropped: the build's guards stopped the VM and removed its work directory.
                Some(Ok(_)) | None => "stopped the build and removed its work files".to_owned(),
            };
            let message = format!("interrupted by {signal}: {what}");
            progress.finish(Err(&anyhow::anyhow!(message.clone())));
            eprintln!("{message}");
            return Ok(ExitCode::from(signal.exit_code()));
        }
    }
    .map_err(anyhow::Error::from);
    progress.finish(result.as_ref());
    result.map(|_| ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn durations_take_a_unit_or_mean_seconds() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        for bad in ["", "s", "0s", "1.5s", "10 m", "3d", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }
}
