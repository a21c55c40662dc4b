//! Builds an image through the `firebuild-build` library, then boots it: what a VMM tool that
//! wants Dockerfile-built root filesystems writes, in a few dozen lines.
//!
//! ```sh
//! bash scripts/build-vminit.sh && cargo run -p firebuild-host -- kernel prepare
//! cargo run -p firebuild-examples --example build_image -- \
//!     examples/debian --build-arg BASE=oci:$(bash scripts/debian-base.sh)
//! ```

use std::sync::Arc;

use firebuild_build::{
    BuildOptions, BuildRequest, Builder, Event, GuestOptions, RunRequest, Runner,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let context = args.next().unwrap_or_else(|| "examples/debian".into());
    let mut request = BuildRequest::new(&context, "example", "out");
    while let Some(arg) = args.next() {
        if arg == "--build-arg"
            && let Some((k, v)) = args.next().as_deref().and_then(|a| a.split_once('='))
        {
            request.build_args.push((k.into(), v.into()));
        }
    }

    // The agent goes into the initramfs; the kernel is Debian's cloud kernel, cached.
    let cache = firebuild_vmm::kernel::default_cache_dir()?;
    let guest = GuestOptions::new("target/vminit/vminit", &cache);
    let layers = cache
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or(cache.clone());
    let builder = Builder::new(BuildOptions::new(guest.clone(), layers));

    // Render the events we care about; the library never prints.
    let show = Arc::new(|event: Event| match event {
        Event::StepStarted {
            number,
            total,
            instruction,
            ..
        } => {
            eprintln!("[{number}/{total}] {instruction}");
        }
        Event::Output { line, .. } | Event::Console { line } => println!("  {line}"),
        Event::ImageWritten {
            image,
            size_bytes,
            elapsed,
        } => eprintln!(
            "wrote {} ({} MiB) in {:.1?}",
            image.display(),
            size_bytes >> 20,
            elapsed
        ),
        _ => {}
    });
    let built = builder.build(&request, show.clone()).await?;

    // Boot it: the image's CMD runs, its exit code comes back.
    let ran = Runner::new(guest)
        .run(&RunRequest::new(&built.image), show)
        .await?;
    eprintln!("workload exited with {}", ran.exit_code);
    Ok(())
}
