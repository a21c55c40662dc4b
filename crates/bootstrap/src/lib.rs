//! The firebuild bootstrap protocol: a guest pulls its build from the host over gRPC with
//! mutual TLS.
//!
//! - Host side: [`BootstrapServer::builder`] takes a [`BuildPlan`](firebuild_plan::BuildPlan),
//!   a [`ResourceSource`] (the ready [`DirSource`] serves exactly the plan's context files, stage
//!   outputs and checksum-verified URL downloads) and TLS from `firebuild-pki`, and yields a
//!   [`ServerHandle`] plus a stream of [`Event`]s (connected, steps, output lines, resources
//!   sent, aborted, succeeded, heartbeat lost).
//! - Guest side: [`BootstrapClient::connect`] reads the MMDS `bootstrap` section
//!   ([`BootstrapConfig`]), retries with backoff, fetches the plan ([`BootstrapClient::commands`]),
//!   pulls resources into any [`Sink`](firebuild_transfer::Sink) with resume after a disconnect
//!   ([`BootstrapClient::pull`]), streams output in batches ([`OutputReporter`]) and reports the
//!   outcome.
//! - Secrets (`RUN --mount=type=secret`): the host gives [`DirSource::with_secrets`] the values
//!   as [`SecretBytes`]; the server hands `secret:<id>` from memory only to the running RUN step
//!   that mounts it, once per step start; the guest reads it with
//!   [`BootstrapClient::fetch_secret`]. Values never appear in events, logs or errors.
//! - The wire types are generated from `proto/firebuild/bootstrap/v1/bootstrap.proto` into
//!   [`pb`] and converted to domain types with `TryFrom` ([`ConversionError`] names the field).
//!
//! Guards: only the client certificate of this build is accepted (CA chain and the
//! `urn:firebuild:build:<id>` SAN, checked in the handshake and again after it); `Commands` must
//! come first (`FAILED_PRECONDITION` otherwise); an id outside the plan is `NOT_FOUND`; a guest
//! silent for the heartbeat timeout ends the build with [`Outcome::HeartbeatLost`]. There is no
//! way to turn certificate verification off.
//!
//! ```
//! use firebuild_bootstrap::{BootstrapClient, BootstrapConfig, BootstrapServer, DirSource, Event, Outcome};
//! use firebuild_pki::{BuildId, BuildPki, Validity};
//! use firebuild_plan::BuildPlan;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let build = BuildId::new("doc-1")?;
//! let pki = BuildPki::generate(build.clone(), &["127.0.0.1"], &Validity::default())?;
//! let plan: BuildPlan = serde_json::from_str(
//!     r#"{"schema_version":1,"dockerfile":"Dockerfile","target":0,"stages":[]}"#,
//! )?;
//! let context = tempfile::tempdir()?;
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let (mut server, mut events) = BootstrapServer::builder()
//!     .resources(DirSource::new(&plan, context.path()))
//!     .plan(plan)
//!     .tls(pki.server.clone())
//!     .expected_client(build)
//!     .serve(listener)
//!     .await?;
//!
//! // The guest: what MMDS would hand it.
//! let config = BootstrapConfig {
//!     grpc_host_port: server.local_addr().to_string(),
//!     tls_ca_cert: pki.client.ca_cert_pem().to_owned(),
//!     tls_cert: pki.client.cert_pem().to_owned(),
//!     tls_key: firebuild_bootstrap::ClientKey::new(pki.client.key_pem().expose_secret().to_owned()),
//! };
//! let client = BootstrapClient::connect(&config).await?;
//! let commands = client.commands().await?;
//! assert!(commands.plan.stages.is_empty());
//! client.success().await?;
//!
//! assert_eq!(server.wait().await, Some(Outcome::Succeeded));
//! assert!(matches!(events.recv().await, Some(Event::Connected { .. })));
//! server.shutdown().await?;
//! # Ok(())
//! # }
//! ```

/// Generated protobuf and gRPC types of `firebuild.bootstrap.v1`.
#[rustfmt::skip]
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub mod pb {
    tonic::include_proto!("firebuild.bootstrap.v1");
}

mod boot;
mod client;
mod convert;
mod secret;
mod server;
mod source;
mod tuning;

pub use boot::GuestBoot;
pub use client::{
    BootstrapClient, BootstrapConfig, ClientError, ClientKey, ClientOptions, Commands,
    HeartbeatTask, HostLost, OutputOptions, OutputReporter,
};
pub use convert::ConversionError;
pub use secret::{MAX_SECRET_BYTES, SecretBytes};
pub use server::{
    BootstrapServer, Event, Events, Outcome, OutputStream, SHUTDOWN_GRACE, ServerBuilder,
    ServerError, ServerHandle, ServerTls, StepHook, StepRef, SuccessHook,
};
pub use source::{DirSource, EntryFilter, ResolvedResource, ResourceSource, SourceError};
pub use tuning::{
    DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_HEARTBEAT_TIMEOUT, DEFAULT_MAX_MESSAGE_SIZE, Http2Tuning,
    chunk_frame_len, chunk_planner,
};
