//! `firebuild-host build`: a Dockerfile and its context become an ext4 root filesystem, built in a
//! real VM (QEMU microvm), with a manifest and a Firecracker config beside it.
//!
//! This module only composes the crates: the plan (`firebuild-dockerfile`), the base image and
//! ext4 (`firebuild-rootfs`), the per-build PKI (`firebuild-pki`), the bootstrap server
//! (`firebuild-bootstrap`), the metadata server (`firebuild-mmds`) and the VM
//! (`firebuild-vmm`). Inside the VM `vminit` (PID 1) reads the metadata, connects back over
//! mutual TLS, runs the steps and reports.

use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use firebuild_bootstrap::{BootstrapServer, DirSource, Event, Outcome, OutputStream};
use firebuild_pki::{BuildId, BuildPki, Validity};
use firebuild_plan::{Base, BuildPlan, ImageConfig, Origin, StepKind};
use firebuild_rootfs::{BaseSource, Manifest, PrepareOptions, RootfsInfo};
use firebuild_vmm::{
    Driver, KernelFiles, Metadata, Network, QemuDriver, QemuOptions, RunOutcome, VmSpec,
};

/// The address the guest reaches the host at under QEMU user networking.
const HOST_IN_GUEST: &str = "169.254.0.2";

/// Arguments of `firebuild-host build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub input: crate::plan_cmd::DockerfileArgs,
    /// Where the image, its manifest and its Firecracker config are written.
    #[arg(short = 'o', long, default_value = "out")]
    pub out: PathBuf,
    /// Base name of the outputs (default: the context directory's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Size of the work image the build runs in, in MiB (sparse; shrunk afterwards).
    #[arg(long, value_name = "MIB", default_value_t = 2048)]
    pub work_size_mib: u64,
    /// Free space left in the finished image, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    pub headroom_mib: u64,
    /// The static vminit binary put at /sbin/vminit (default: $FIREBUILD_VMINIT, then `vminit`
    /// beside this executable, then target/vminit/vminit).
    #[arg(long)]
    pub vminit: Option<PathBuf>,
    /// Layer cache directory (default: the one `rootfs` uses, `$XDG_CACHE_HOME/firebuild` or
    /// `~/.cache/firebuild`).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Guest memory, MiB.
    #[arg(long, default_value_t = 1024)]
    pub memory_mib: u32,
    /// Guest vCPUs.
    #[arg(long, default_value_t = 2)]
    pub vcpus: u8,
    /// Give up after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 1800)]
    pub timeout: u64,
}

/// Runs the subcommand.
pub fn run(args: &BuildArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(build(args))
}

/// Checks that `build` can run the plan: one stage, based on an image or scratch.
fn check_plan(plan: &BuildPlan, file: &Path) -> anyhow::Result<()> {
    let shown = file.display();
    let stage = plan
        .target_stage()
        .context("the plan has no target stage")?;
    if plan.stages.len() != 1 {
        bail!(
            "{shown}: the target stage needs {} stages; `build` runs single-stage builds only (yet)",
            plan.stages.len()
        );
    }
    if let Base::Stage { index } = stage.base {
        bail!("{shown}: the target stage is based on stage {index}; not supported by `build` yet");
    }
    for step in &stage.steps {
        if let StepKind::Copy(t) | StepKind::Add(t) = &step.kind
            && let Origin::Image { reference } = &t.origin
        {
            bail!(
                "{shown}:{}: COPY --from={reference} (an image) is not supported by `build` yet",
                step.span.start_line
            );
        }
    }
    Ok(())
}

/// Finds the static vminit to install in the image.
fn find_vminit(args: &BuildArgs) -> anyhow::Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(p) = &args.vminit {
        candidates.push(p.clone());
    } else {
        if let Some(p) = std::env::var_os("FIREBUILD_VMINIT") {
            candidates.push(PathBuf::from(p));
        }
        if let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
        {
            candidates.push(dir.join("vminit"));
            // target/release/firebuild-host → target/vminit/vminit
            if let Some(target) = dir.parent() {
                candidates.push(target.join("vminit").join("vminit"));
            }
        }
    }
    let found = candidates.iter().find(|p| p.is_file()).cloned();
    let Some(path) = found else {
        bail!(
            "no static vminit binary found (tried {}); build it with `bash scripts/build-vminit.sh` or pass --vminit",
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    if !firebuild_vmm::kernel::is_static_elf(&bytes) {
        bail!(
            "{} is not a static ELF executable: the guest image may have no libc",
            path.display()
        );
    }
    Ok(path)
}

/// Runs `debugfs -w` commands on an ext4 image (no mount, no root needed).
fn debugfs(image: &Path, commands: &str) -> anyhow::Result<()> {
    let out = Process::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg("-")
        .arg(image)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(commands.as_bytes())?;
            }
            child.wait_with_output()
        })
        .context("cannot run debugfs (e2fsprogs)")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // debugfs exits 0 even when a command fails; it reports on stderr after its banner.
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        // `mkdir` of an existing directory and `rm` of a missing file are expected.
        .filter(|l| !l.contains("directory already exists") && !l.starts_with("rm: File not found"))
        .collect();
    if !out.status.success() || !errors.is_empty() {
        bail!(
            "debugfs on {} failed: {}",
            image.display(),
            errors.join("; ")
        );
    }
    Ok(())
}

/// Installs vminit at /sbin/vminit in the image, root-owned 0755.
fn install_vminit(image: &Path, vminit: &Path) -> anyhow::Result<()> {
    let src = vminit.display().to_string();
    if src.contains(char::is_whitespace) || src.contains('"') {
        bail!("the vminit path {src:?} must not contain spaces or quotes (debugfs)");
    }
    debugfs(
        image,
        &format!(
            "mkdir /sbin\nrm /sbin/vminit\nwrite {src} /sbin/vminit\nsif /sbin/vminit mode 0100755\nsif /sbin/vminit uid 0\nsif /sbin/vminit gid 0\n"
        ),
    )
}

/// The finished image's config: the base's, overridden by what the Dockerfile set.
fn merge_config(base: &ImageConfig, stage: &ImageConfig) -> ImageConfig {
    let mut out = stage.clone();
    let mut env = base.env.clone();
    for var in &stage.env {
        env.retain(|v| v.name != var.name);
        env.push(var.clone());
    }
    out.env = env;
    if out.cmd.is_none() && out.entrypoint.is_none() {
        out.cmd = base.cmd.clone();
        out.entrypoint = base.entrypoint.clone();
    }
    out.workdir = out.workdir.or_else(|| base.workdir.clone());
    out.user = out.user.or_else(|| base.user.clone());
    for p in &base.exposed_ports {
        if !out.exposed_ports.contains(p) {
            out.exposed_ports.push(p.clone());
        }
    }
    for (k, v) in &base.labels {
        out.labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    out
}

/// A Firecracker `--config-file` that boots the image as is.
fn firecracker_config(
    kernel: &firebuild_vmm::kernel::Kernel,
    image_file: &str,
    args: &BuildArgs,
) -> serde_json::Value {
    serde_json::json!({
        "boot-source": {
            "kernel_image_path": kernel.vmlinux(),
            "initrd_path": kernel.initramfs(),
            "boot_args": "console=ttyS0 reboot=k panic=1 pci=off init=/sbin/vminit"
        },
        "drives": [{
            "drive_id": "rootfs",
            "path_on_host": image_file,
            "is_root_device": true,
            "is_read_only": false
        }],
        "machine-config": {
            "vcpu_count": args.vcpus,
            "mem_size_mib": args.memory_mib,
            "smt": false
        }
    })
}

async fn build(args: &BuildArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let crate::plan_cmd::Resolved {
        file,
        text,
        build_args,
        plan,
    } = args.input.resolve()?;
    check_plan(&plan, &file)?;
    let context = &args.input.context;
    let stage = plan
        .target_stage()
        .context("the plan has no target stage")?
        .clone();
    let name = match &args.name {
        Some(n) => n.clone(),
        None => std::fs::canonicalize(context)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "rootfs".to_owned()),
    };
    let vminit = find_vminit(args)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let work = tempfile::Builder::new()
        .prefix(".firebuild-work-")
        .tempdir_in(&args.out)
        .with_context(|| format!("cannot create a work directory in {}", args.out.display()))?;

    // 1. The base image → ext4 work image, with vminit as /sbin/vminit.
    let base: BaseSource = match &stage.base {
        Base::Scratch => BaseSource::Scratch,
        Base::Image { reference } => reference
            .parse()
            .with_context(|| format!("{}: FROM {reference}", file.display()))?,
        Base::Stage { .. } => bail!("stage bases are not supported yet"),
    };
    let cache = args
        .cache
        .clone()
        .unwrap_or_else(crate::rootfs_cmd::default_cache);
    let mut opts = PrepareOptions::new(&cache, work.path().join("base"));
    opts.ext4.size = Some(args.work_size_mib * 1024 * 1024);
    let work_image = work.path().join("rootfs.ext4");
    eprintln!("==> base {base}");
    let prepared = firebuild_rootfs::prepare(&base, &work_image, &opts)
        .await
        .with_context(|| format!("cannot prepare the base {base}"))?;
    install_vminit(&work_image, &vminit)?;

    // 2. The guest kernel (cached after the first run).
    eprintln!("==> kernel");
    let kernel = tokio::task::spawn_blocking(|| -> anyhow::Result<_> {
        let cache = firebuild_vmm::kernel::default_cache_dir()?;
        Ok(firebuild_vmm::kernel::KernelBuilder::new(cache).prepare()?)
    })
    .await??;

    // 3. PKI, bootstrap server, metadata.
    let build_id =
        BuildId::new(&name).with_context(|| format!("{name:?} is not a valid build name"))?;
    let pki = BuildPki::generate(build_id.clone(), &[HOST_IN_GUEST], &Validity::default())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let (mut server, mut events) = BootstrapServer::builder()
        .resources(DirSource::new(&plan, context))
        .plan(plan.clone())
        .tls(pki.server.clone())
        .expected_client(build_id)
        .serve(listener)
        .await?;
    let port = server.local_addr().port();
    let metadata = serde_json::json!({
        "instance-id": format!("build-{name}"),
        "bootstrap": {
            "grpc-host-port": format!("{HOST_IN_GUEST}:{port}"),
            "tls-ca-cert": pki.client.ca_cert_pem(),
            "tls-cert": pki.client.cert_pem(),
            "tls-key": pki.client.key_pem().expose_secret(),
        }
    });
    let mmds = Arc::new(
        firebuild_mmds::server::Server::builder()
            .initial_data(metadata)
            .start()
            .await?,
    );

    // 4. Output as it comes; scrub the credentials once the guest is in.
    let scrubbed = Arc::new(AtomicBool::new(false));
    let printer = {
        let mmds = Arc::clone(&mmds);
        let scrubbed = Arc::clone(&scrubbed);
        let steps = stage.steps.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                match event {
                    Event::Connected { .. } if mmds.delete("/bootstrap").is_ok() => {
                        scrubbed.store(true, Ordering::SeqCst);
                    }
                    Event::Rejected { peer, reason } => {
                        eprintln!("warning: refused a connection from {peer}: {reason}");
                    }
                    Event::StepStarted { step } => {
                        let what = steps
                            .iter()
                            .find(|s| s.index == step.step)
                            .map(|s| format!("line {}", s.span.start_line))
                            .unwrap_or_default();
                        eprintln!("==> step {} ({what})", step.step);
                    }
                    Event::Output { stream, line, .. } => match stream {
                        OutputStream::Stderr => eprintln!("    {line}"),
                        _ => println!("    {line}"),
                    },
                    Event::StepFinished { step, exit_code } if exit_code != 0 => {
                        eprintln!("==> step {} exited with {exit_code}", step.step);
                    }
                    _ => {}
                }
            }
        })
    };

    // 5. The VM.
    let vm_dir = work.path().join("vm");
    std::fs::create_dir_all(&vm_dir)?;
    let mut spec = VmSpec::new(format!("build-{name}"), &vm_dir, &work_image);
    spec.kernel = Some(KernelFiles {
        kernel: kernel.bzimage(),
        initrd: Some(kernel.initramfs()),
    });
    spec.network = Network::User;
    spec.metadata = Metadata::Server(mmds.local_addr());
    spec.memory_mib = args.memory_mib;
    spec.vcpus = args.vcpus;
    let opts = QemuOptions {
        probe_cache: Some(kernel.dir.join("kvm-probe")),
        ..QemuOptions::default()
    };
    eprintln!("==> vm (qemu microvm)");
    let timeout = Duration::from_secs(args.timeout);
    let mut driver = QemuDriver::new(spec, opts);
    let (vm, driver) = tokio::task::spawn_blocking(move || {
        let r = driver.run(timeout);
        (r, driver)
    })
    .await?;
    let outcome = tokio::time::timeout(Duration::from_secs(5), server.wait())
        .await
        .ok()
        .flatten();
    let _ = server.shutdown().await;
    printer.abort();
    let console = driver.console_log().to_path_buf();
    let keep_console = || {
        let kept = args.out.join(format!("{name}.console.log"));
        let _ = std::fs::copy(&console, &kept);
        kept
    };
    match (&outcome, vm) {
        (Some(Outcome::Succeeded), Ok(RunOutcome::Exited(_))) => {}
        (
            Some(Outcome::Aborted {
                error,
                step,
                exit_code,
            }),
            _,
        ) => {
            let kept = keep_console();
            let line = step
                .and_then(|s| stage.steps.iter().find(|x| x.index == s.step))
                .map(|s| format!("{}:{}: ", file.display(), s.span.start_line))
                .unwrap_or_default();
            bail!(
                "{line}build failed{}: {error} (console: {})",
                exit_code
                    .map(|c| format!(" with exit code {c}"))
                    .unwrap_or_default(),
                kept.display()
            );
        }
        (_, Ok(RunOutcome::TimedOut)) => {
            let kept = keep_console();
            bail!(
                "the build VM did not finish within {timeout:?} (console: {})",
                kept.display()
            );
        }
        (o, Err(e)) => {
            let kept = keep_console();
            return Err(anyhow::Error::new(e).context(format!(
                "the build VM failed (outcome {o:?}; console: {})",
                kept.display()
            )));
        }
        (o, Ok(RunOutcome::Exited(_))) => {
            let kept = keep_console();
            bail!(
                "the VM exited without a result from the guest ({}; console: {})",
                o.as_ref()
                    .map_or("no outcome".to_owned(), ToString::to_string),
                kept.display()
            );
        }
        (_, Ok(_)) => bail!("unexpected VM outcome"),
    }
    if !scrubbed.load(Ordering::SeqCst) {
        eprintln!("warning: the bootstrap credentials were not scrubbed from the metadata");
    }

    // 6. Check, size and write the outputs atomically.
    eprintln!("==> image");
    firebuild_rootfs::ext4::fsck(&work_image)?;
    let min = firebuild_rootfs::ext4::shrink(&work_image)?;
    let size = firebuild_rootfs::ext4::grow(&work_image, min + args.headroom_mib * 1024 * 1024)?;
    firebuild_rootfs::ext4::fsck(&work_image)?;
    let image_file = format!("{name}.ext4");
    let image_path = args.out.join(&image_file);
    std::fs::rename(&work_image, &image_path)
        .with_context(|| format!("cannot move the image to {}", image_path.display()))?;
    let config = merge_config(&prepared.config, &stage.config);
    let mut manifest = Manifest::new(
        config,
        prepared.base.clone(),
        RootfsInfo {
            filesystem: "ext4".to_owned(),
            file: image_file.clone(),
            size_bytes: size,
        },
    )
    .with_dockerfile(text.as_bytes());
    manifest.build_args = build_args.into_iter().collect();
    let manifest_path = args.out.join(format!("{name}.manifest.json"));
    manifest.write(&manifest_path)?;
    let fc_path = args.out.join(format!("{name}.firecracker.json"));
    let fc_tmp = fc_path.with_extension("json.tmp");
    std::fs::write(
        &fc_tmp,
        serde_json::to_vec_pretty(&firecracker_config(&kernel, &image_file, args))?,
    )?;
    std::fs::rename(&fc_tmp, &fc_path)?;
    eprintln!(
        "==> built {} ({} MiB) in {:.1?}\n    manifest {}\n    firecracker config {}",
        image_path.display(),
        size / (1024 * 1024),
        started.elapsed(),
        manifest_path.display(),
        fc_path.display()
    );
    Ok(())
}
