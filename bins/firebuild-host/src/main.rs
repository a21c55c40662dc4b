//! `firebuild-host`: builds Firecracker root filesystems from Dockerfiles.
//!
//! This binary only parses arguments, sets up logging (`RUST_LOG`), prints and picks exit
//! codes; the work is done by the `firebuild-*` crates. Each subcommand lives in its own
//! module (`parse_cmd`, ...).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

mod build_cmd;
mod cache_cmd;
mod interrupt;
mod kernel_cmd;
mod mmds_cmd;
mod parse_cmd;
mod plan_cmd;
mod progress;
mod registry_args;
mod rootfs_cmd;
mod run_cmd;
mod secret_args;

/// Build Firecracker root filesystems from Dockerfiles.
#[derive(Debug, Parser)]
#[command(name = "firebuild-host", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build an ext4 root filesystem from a Dockerfile in a VM (QEMU microvm), with a manifest
    /// and a Firecracker config.
    Build(Box<build_cmd::BuildArgs>),
    /// Boot a built image (QEMU microvm): its workload's output on the terminal, its exit code
    /// as this command's. `--metadata FILE` configures the guest first.
    Run(run_cmd::RunArgs),
    /// Parse a Dockerfile and print its parse tree in buildkit's dump format.
    Parse(parse_cmd::ParseArgs),
    /// Resolve a Dockerfile and its context into a build plan (table, or JSON with --json).
    Plan(plan_cmd::PlanArgs),
    /// Serve or write VM metadata (MMDS).
    Mmds(mmds_cmd::MmdsArgs),
    /// Prepare the guest kernel and initramfs the VM drivers boot.
    Kernel(kernel_cmd::KernelArgs),
    /// Resolve a base image (registry, OCI layout, docker save, ext4, dir) into an ext4 image.
    Rootfs(rootfs_cmd::RootfsArgs),
    /// List or prune the `RUN --mount=type=cache` directories kept between builds.
    Cache(cache_cmd::CacheArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match &cli.command {
        Cmd::Run(args) => return finish(run_cmd::run(args)),
        Cmd::Build(args) => return finish(build_cmd::run(args)),
        Cmd::Parse(args) => parse_cmd::run(args),
        Cmd::Plan(args) => plan_cmd::run(args),
        Cmd::Mmds(args) => mmds_cmd::run(args),
        Cmd::Kernel(args) => kernel_cmd::run(args),
        Cmd::Rootfs(args) => rootfs_cmd::run(args),
        Cmd::Cache(args) => cache_cmd::run(args),
    };
    finish(result.map(|()| ExitCode::SUCCESS))
}

/// The exit code, printing the error chain once on failure.
fn finish(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
