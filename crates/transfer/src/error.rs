//! The crate's error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while planning, encoding or reassembling a resource.
///
/// Variants carry the entry path (relative to the resource root, `""` for the root itself), the
/// entry index, the chunk index within the entry and the byte offset where they apply.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The message limit leaves no room for chunk data after the framing overhead.
    #[error("message limit of {max_message} bytes leaves no room for chunk data")]
    MessageLimitTooSmall {
        /// The negotiated maximum message size.
        max_message: usize,
    },
    /// Reading the source tree failed.
    #[error("cannot read source {path}")]
    Source {
        /// The path on the sending host.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// A source file name is not valid UTF-8 and cannot be carried in a header.
    #[error("source path {path} is not valid UTF-8")]
    NonUtf8Path {
        /// The offending path on the sending host.
        path: PathBuf,
    },
    /// A source file changed size while it was being sent.
    #[error(
        "source file {path} changed while being sent: expected {expected} bytes, found {found}"
    )]
    SourceChanged {
        /// The path on the sending host.
        path: PathBuf,
        /// Size recorded in the header.
        expected: u64,
        /// Bytes actually available.
        found: u64,
    },
    /// The resume point does not exist in this resource.
    #[error(
        "resume point entry {entry} offset {offset} is outside the resource ({entries} entries)"
    )]
    BadResumePoint {
        /// Requested entry index.
        entry: u32,
        /// Requested byte offset.
        offset: u64,
        /// Number of entries in the resource.
        entries: u32,
    },
    /// A header's path is absolute, contains `.`/`..`/empty components or NUL bytes.
    #[error("entry {index} has an unsafe path {path:?}")]
    UnsafePath {
        /// Entry index.
        index: u32,
        /// The path as received.
        path: String,
    },
    /// A header's parent is not a directory received earlier in the stream (this is also what
    /// rejects entries under a symlink).
    #[error("entry {path:?} has no parent directory earlier in the stream")]
    MissingParent {
        /// Entry path.
        path: String,
    },
    /// A header is malformed: wrong kind combination, size on a directory, bad mode...
    #[error("entry {index} ({path:?}) has an invalid header: {reason}")]
    InvalidHeader {
        /// Entry index.
        index: u32,
        /// Entry path.
        path: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A header arrived with an unexpected entry index.
    #[error("header for entry {got} ({path:?}) where entry {expected} was expected")]
    UnexpectedEntry {
        /// Index the reassembler expected next.
        expected: u32,
        /// Index in the header.
        got: u32,
        /// Path in the header.
        path: String,
    },
    /// The same path appears twice.
    #[error("duplicate entry {path:?}")]
    DuplicatePath {
        /// Entry path.
        path: String,
    },
    /// A header repeated for the entry in progress differs from the first one.
    #[error("entry {path:?} was re-sent with a different header")]
    HeaderChanged {
        /// Entry path.
        path: String,
    },
    /// A new header arrived before the current file had all its bytes.
    #[error("entry {path:?} is incomplete: {received} of {size} bytes before the next header")]
    IncompleteEntry {
        /// Entry path.
        path: String,
        /// Bytes received.
        received: u64,
        /// Declared size.
        size: u64,
    },
    /// A chunk arrived for an entry whose header was not received (or which is not a file).
    #[error("chunk for entry {entry} at offset {offset} before its header")]
    ChunkBeforeHeader {
        /// Entry index named by the chunk.
        entry: u32,
        /// Offset named by the chunk.
        offset: u64,
    },
    /// A chunk carries more data than the negotiated chunk size.
    #[error("chunk {chunk} of {path:?} at offset {offset} carries {len} bytes, limit is {max}")]
    OversizeChunk {
        /// Entry path.
        path: String,
        /// Chunk index within the entry.
        chunk: u64,
        /// Chunk offset.
        offset: u64,
        /// Data length.
        len: usize,
        /// Maximum chunk data size.
        max: usize,
    },
    /// A chunk carries no data.
    #[error("chunk {chunk} of {path:?} at offset {offset} is empty")]
    EmptyChunk {
        /// Entry path.
        path: String,
        /// Chunk index within the entry.
        chunk: u64,
        /// Chunk offset.
        offset: u64,
    },
    /// A chunk for data that was already received (same or earlier offset, or a finished entry).
    #[error(
        "duplicate chunk {chunk} of entry {entry} ({path:?}) at offset {offset}, expected offset {expected}"
    )]
    DuplicateChunk {
        /// Entry index.
        entry: u32,
        /// Entry path (empty when the entry is already finished and forgotten).
        path: String,
        /// Chunk index within the entry.
        chunk: u64,
        /// Chunk offset.
        offset: u64,
        /// The next offset the reassembler expected.
        expected: u64,
    },
    /// A chunk that skips ahead (gap) or overlaps partially.
    #[error(
        "chunk {chunk} of {path:?} at offset {offset} is out of order, expected offset {expected}"
    )]
    OutOfOrder {
        /// Entry path.
        path: String,
        /// Chunk index within the entry.
        chunk: u64,
        /// Chunk offset.
        offset: u64,
        /// The next offset the reassembler expected.
        expected: u64,
    },
    /// A chunk runs past the size declared in the header.
    #[error("chunk {chunk} of {path:?} at offset {offset} runs past the declared size {size}")]
    PastDeclaredSize {
        /// Entry path.
        path: String,
        /// Chunk index within the entry.
        chunk: u64,
        /// Chunk offset.
        offset: u64,
        /// Declared size.
        size: u64,
    },
    /// A chunk's crc32c does not match its data.
    #[error(
        "chunk {chunk} of {path:?} at offset {offset} has a bad checksum: expected {expected:08x}, computed {computed:08x}"
    )]
    BadChecksum {
        /// Entry path.
        path: String,
        /// Chunk index within the entry.
        chunk: u64,
        /// Chunk offset.
        offset: u64,
        /// The checksum in the frame.
        expected: u32,
        /// The checksum of the data.
        computed: u32,
    },
    /// The stream ended (or `finish` was called) before `Eof`, or mid-file.
    #[error("stream truncated: {detail}")]
    Truncated {
        /// What was missing.
        detail: String,
    },
    /// A frame arrived after `Eof`.
    #[error("frame after end of stream")]
    AfterEof,
    /// The resource digest computed over what was received differs from the sender's.
    #[error("resource digest mismatch: sender {expected}, received {computed}")]
    DigestMismatch {
        /// Hex digest from the `Eof` frame.
        expected: String,
        /// Hex digest computed by the reassembler.
        computed: String,
    },
    /// A configured limit was exceeded.
    #[error("limit exceeded at entry {path:?}: {what} {value} > {max}")]
    LimitExceeded {
        /// Entry path.
        path: String,
        /// Which limit.
        what: &'static str,
        /// The offending value.
        value: u64,
        /// The limit.
        max: u64,
    },
    /// The sink failed to place an entry.
    #[error("cannot place entry {path:?}")]
    Sink {
        /// Entry path.
        path: String,
        /// The sink's error.
        #[source]
        source: io::Error,
    },
    /// A previous sink failure left the reassembler in an unknown state.
    #[error("reassembler unusable after an earlier sink failure")]
    Poisoned,
}
