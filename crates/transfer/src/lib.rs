//! Chunked, resumable, digest-verified transfer of files and directory trees.
//!
//! A resource (one file, one symlink or a directory tree) travels as a stream of [`Frame`]s: a
//! [`Header`] per entry, [`Chunk`]s of file content each with a CRC-32C, and a final [`Eof`] with
//! a BLAKE3 digest over all metadata and content (see [`digest`] for the exact encoding). The
//! crate knows nothing about the transport: a gRPC layer maps frames to its own messages.
//!
//! - [`ChunkPlanner`] sizes chunks so that no message exceeds the negotiated limit.
//! - [`ResourceEncoder`] walks the source and yields frames lazily (one chunk in memory),
//!   optionally from a [`ResumePoint`].
//! - [`Reassembler`] validates frames strictly and writes them through a [`Sink`]; [`DirSink`]
//!   places them under a directory.
//!
//! ```
//! use firebuild_transfer::{ChunkPlanner, DirSink, Reassembler, ResourceEncoder};
//!
//! let src = tempfile::tempdir()?;
//! std::fs::create_dir(src.path().join("etc"))?;
//! std::fs::write(src.path().join("etc/motd"), b"hello\n")?;
//! std::os::unix::fs::symlink("etc/motd", src.path().join("motd"))?;
//!
//! let dst = tempfile::tempdir()?;
//! let planner = ChunkPlanner::with_overhead(4 << 20, 64)?;
//! let mut rx = Reassembler::new(DirSink::new(dst.path().join("out")));
//! for frame in ResourceEncoder::new(src.path(), planner)? {
//!     rx.push(frame?)?;
//! }
//! let outcome = rx.finish()?;
//! assert_eq!(outcome.entries, 4);
//! assert_eq!(std::fs::read(dst.path().join("out/etc/motd"))?, b"hello\n");
//! assert_eq!(std::fs::read_link(dst.path().join("out/motd"))?.to_str(), Some("etc/motd"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod digest;
mod encoder;
mod error;
mod frame;
mod path;
mod planner;
mod reassembler;
mod sink;

pub use encoder::{EncoderBuilder, Filter, ResourceEncoder};
pub use error::Error;
pub use frame::{Chunk, EntryKind, Eof, Frame, Header, ResumePoint};
pub use planner::ChunkPlanner;
pub use reassembler::{Limits, Outcome, Reassembler};
pub use sink::{DirSink, Ownership, Sink};
