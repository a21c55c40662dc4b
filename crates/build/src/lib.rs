//! firebuild's build and run flows as a library.
//!
//! - [`Builder`] turns a Dockerfile and its context into an ext4 root filesystem, built in a
//!   VM: it plans the Dockerfile (feeding in the base images' configs as Docker does), prepares
//!   the base as an ext4 work image, mints a per-build mutual-TLS PKI, serves the plan over
//!   gRPC and the bootstrap instructions over an embedded MMDS, boots the VM with the agent in
//!   its initramfs, and writes the image, its manifest, kernel, initramfs and a Firecracker
//!   config ([`Built`]).
//! - [`Runner`] boots a built image and returns its workload's exit code, optionally serving
//!   a metadata document so the guest is configured (hostname, users, keys, files...) first.
//! - Both report progress as typed [`Event`]s through an [`EventSink`]; the library never
//!   prints. A failure is an [`Error`] whose variant names the step that broke.
//! - Both stop when the [`Cancel`] token in their [`GuestOptions`] is cancelled (or their
//!   future is dropped): the VM is stopped and the work files removed. A build's RUN step
//!   that outlives [`BuildOptions::step_timeout`] stops the build the same way.
//!
//! What firebuild adds to an image: nothing. The agent (`vminit`) and the image config reach
//! the guest in the initramfs; during a build the agent provides `/etc/resolv.conf`,
//! `/etc/hosts` and the hostname as BuildKit does and puts the base's back afterwards.
//!
//! ```no_run
//! use std::sync::Arc;
//! use firebuild_build::{BuildOptions, BuildRequest, Builder, Event, GuestOptions};
//!
//! # async fn build() -> Result<(), firebuild_build::Error> {
//! let guest = GuestOptions::new("target/vminit/vminit", "/var/cache/firebuild/kernel");
//! let builder = Builder::new(BuildOptions::new(guest, "/var/cache/firebuild"));
//! let request = BuildRequest::new("examples/busybox", "busybox", "out");
//! let built = builder
//!     .build(&request, Arc::new(|event| {
//!         if let Event::Output { line, .. } = event {
//!             println!("{line}");
//!         }
//!     }))
//!     .await?;
//! println!("{} ({} bytes)", built.image.display(), built.size_bytes);
//! # Ok(())
//! # }
//! ```

mod boot;
mod builder;
pub mod cache_mounts;
mod cancel;
mod error;
pub mod event;
mod fetch;
pub mod firecracker;
mod image;
mod options;
pub mod plan;
mod runner;
mod session;
pub mod stepcache;
mod vm;
mod watchdog;

pub use builder::Builder;
pub use cancel::Cancel;
pub use error::{Error, Result, TimedOutStep};
pub use event::{Event, EventSink, Phase, Stream};
pub use fetch::{FetchError, MAX_REDIRECTS, MAX_URL_BYTES, fetch_urls};
pub use image::Built;
pub use options::{
    BuildOptions, BuildRequest, DEFAULT_HEADROOM_MIB, GuestOptions, RunRequest, VmDriver,
    manifest_beside, read_bounded,
};
pub use plan::Planned;
pub use runner::{Ran, Runner, read_manifest, with_args};
