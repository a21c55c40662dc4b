//! The agent: network from the kernel command line, metadata, then build or run mode.

use std::time::Instant;

use anyhow::Context as _;
use firebuild_guest::source::{Outcome, Sources, StandardOptions};

use firebuild_mmds::schema::GuestPhase;

use crate::Args;
use crate::configure::{self, Why};
use crate::status::StatusWriter;

pub async fn run(args: Args) -> anyhow::Result<u8> {
    let root = args.root.as_path();
    let real_root = firebuild_guest::paths::is_real_root(root);
    tracing::info!(root = %root.display(), "vminit agent {}", env!("CARGO_PKG_VERSION"));
    if real_root {
        crate::net::kernel_ip(root);
    }
    let options = StandardOptions {
        mmds_url: (!args.no_mmds).then(|| args.metadata_url.clone()),
        cpio_device: args.cpio_device.clone(),
    };
    let sources = Sources::standard(root, &options).context("choosing metadata sources")?;
    tracing::info!(sources = ?sources.names(), "reading metadata");
    let started = Instant::now();
    let outcome = sources.resolve(started + args.metadata_deadline()).await?;
    let mut notes = Vec::new();
    let (metadata, revision, why, from) = match outcome {
        Outcome::Found(found) => {
            tracing::info!(
                source = %found.source,
                origin = %found.document.origin,
                revision = %found.document.revision.as_deref().unwrap_or("-"),
                instance_id = found.metadata.instance_id.as_deref().unwrap_or("-"),
                mode = if found.metadata.is_build_mode() { "build" } else { "run" },
                "metadata read in {:?}", started.elapsed()
            );
            let found = *found;
            notes = found.notes;
            (
                Some(found.metadata),
                found.document.revision,
                Why::Found,
                Some(found.source),
            )
        }
        Outcome::NoMetadata => {
            tracing::info!("no metadata from any source");
            (None, None, Why::NoMetadata, None)
        }
        Outcome::Unreachable { errors } => {
            tracing::warn!("metadata unreachable from {} source(s)", errors.len());
            (None, None, Why::Outage, None)
        }
        _ => (None, None, Why::Outage, None),
    };
    // Build mode leaves no build state in the image: no guest configuration (machine-id,
    // journal...), only the build environment, restored after the steps (see `buildenv`).
    if let Some(bootstrap) = metadata.as_ref().and_then(|m| m.bootstrap.as_ref()) {
        let ok = crate::build::run(root, bootstrap).await?;
        return Ok(if ok { 0 } else { 1 });
    }
    if crate::init::is_agent_child() {
        crate::init::mount_run_mode();
    }
    // Status goes back to the MMDS the metadata came from, and to the vsock port it names.
    let mut status = StatusWriter::new(
        (from.as_deref() == Some("mmds"))
            .then_some(args.metadata_url.as_str())
            .filter(|_| !args.no_mmds),
        metadata.as_ref().and_then(|m| m.status_channel.as_ref()),
    );
    // What another cloud's layout held that was not applied (`#cloud-config`...): in the status
    // for the host, not only in the log.
    status.note(&notes);
    if !args.no_configure {
        status.phase(GuestPhase::Configuring).await;
        let report = match configure::apply(root, metadata.as_ref(), why).await {
            Ok(r) => r,
            Err(e) => {
                status.failed(&format!("{e:#}")).await;
                return Err(e.context("configuring the guest"));
            }
        };
        if let Some(md) = &metadata {
            status.consume(md, &report).await;
        }
        status.configured(&report, revision.as_deref()).await;
    }
    let watch = args
        .watch
        .then(|| from.as_deref().and_then(|name| sources.get(name)))
        .flatten();
    let image_config = crate::init::image_config_path();
    let Some(workload) = crate::run::workload(root, metadata.as_ref(), image_config.as_deref())?
    else {
        tracing::info!(
            "nothing to run (no entrypoint/cmd in metadata or {})",
            crate::run::MANIFEST
        );
        if let Some(source) = watch
            && !args.once
        {
            crate::watch::run(root, source, revision).await;
        }
        return Ok(0);
    };
    status.phase(GuestPhase::Running).await;
    let Some(source) = watch else {
        let code = crate::run::exec(root, &workload).await?;
        status.exited(code).await;
        return Ok(code);
    };
    let exec = crate::run::exec(root, &workload);
    let watcher = crate::watch::run(root, source, revision);
    tokio::pin!(exec, watcher);
    let mut watching = true;
    loop {
        tokio::select! {
            code = &mut exec => return code,
            () = &mut watcher, if watching => watching = false,
        }
    }
}
