//! Firecracker MMDS for firebuild: the metadata schema, a guest client, a writer for
//! Firecracker's API socket, and an embedded MMDS-compatible server.
//!
//! - [`schema::Metadata`]: what the host writes and the guest obeys (versioned, validated,
//!   named user-data parts merged in a documented order). Its `bootstrap` section is the only
//!   thing this crate carries about builds.
//! - [`client::Client`]: the guest side (V2 tokens, JSON and IMDS text, one deadline with
//!   backoff, long-poll).
//! - [`server::Server`]: an MMDS-compatible server for VMMs without one (QEMU, sandbox) and for
//!   tests, driven over a host Unix socket or in process through [`server::ServerHandle`].
//! - [`firecracker::FirecrackerApi`]: writes the same metadata into Firecracker's own MMDS over
//!   its API socket.
//! - [`vsock::StatusListener`]: the guest's status over vsock where the guest cannot write MMDS
//!   (Firecracker), with consumed values deleted by the host.
//!
//! Each module has its own error type; [`Error`] wraps them all for callers that treat them
//! alike.
//!
//! ```
//! use firebuild_mmds::schema::Metadata;
//!
//! let md = Metadata::from_json_slice(br#"{"hostname": "vm1", "resize-rootfs": true}"#)?;
//! assert_eq!(md.hostname.as_deref(), Some("vm1"));
//! assert!(!md.is_build_mode());
//! # Ok::<(), firebuild_mmds::schema::Error>(())
//! ```
//!
//! A server and a client on loopback:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use firebuild_mmds::client::{Client, ClientConfig};
//! use firebuild_mmds::server::Server;
//!
//! let server = Server::builder()
//!     .initial_data(serde_json::json!({"hostname": "vm1"}))
//!     .start()
//!     .await?;
//! let client = Client::new(ClientConfig::with_addr(server.local_addr()));
//! let (md, _etag) = client.fetch_metadata().await?;
//! assert_eq!(md.hostname.as_deref(), Some("vm1"));
//! server.delete("/hostname")?;
//! assert!(matches!(
//!     client.get_json("/hostname").await,
//!     Err(firebuild_mmds::client::Error::NotFound { .. })
//! ));
//! server.shutdown().await;
//! # Ok(()) }
//! ```

pub mod client;
pub mod firecracker;
mod head;
mod http;
pub mod imds;
pub mod schema;
pub mod server;
pub mod store;
mod token;
pub mod vsock;

pub use http::TransportError;
pub use schema::Metadata;
pub use token::{MAX_TOKEN_LEN, MAX_TTL_SECS, MIN_TTL_SECS};

/// Any error of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Decoding, validating or merging metadata.
    #[error("metadata")]
    Schema(#[from] schema::Error),
    /// The guest client.
    #[error("mmds client")]
    Client(#[from] client::Error),
    /// Starting the server.
    #[error("mmds server")]
    Server(#[from] server::Error),
    /// A refused data store change.
    #[error("mmds data store")]
    Store(#[from] store::StoreError),
    /// Firecracker's API.
    #[error("firecracker mmds api")]
    Firecracker(#[from] firecracker::Error),
    /// The vsock status channel.
    #[error("vsock status channel")]
    Vsock(#[from] vsock::Error),
}

/// MMDS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum MmdsVersion {
    /// No session tokens.
    V1 = 1,
    /// Session tokens required for GET (the default).
    #[default]
    V2 = 2,
}
