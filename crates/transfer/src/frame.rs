//! The frames a resource travels as.

use bytes::Bytes;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A regular file; its bytes follow in [`Chunk`]s.
    File,
    /// A directory.
    Dir,
    /// A symbolic link, stored as a link (never followed).
    Symlink,
}

impl EntryKind {
    /// The byte used for this kind in the canonical digest encoding (and a handy wire value).
    pub fn code(self) -> u8 {
        match self {
            EntryKind::File => 1,
            EntryKind::Dir => 2,
            EntryKind::Symlink => 3,
        }
    }

    /// The inverse of [`EntryKind::code`].
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(EntryKind::File),
            2 => Some(EntryKind::Dir),
            3 => Some(EntryKind::Symlink),
            _ => None,
        }
    }
}

/// Metadata of one entry of a resource. Sent once per entry, before its chunks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Header {
    /// Position of the entry in the stream, from 0. Entry 0 is the resource root.
    pub index: u32,
    /// Path relative to the resource root, `/`-separated, no `.`/`..`/empty components; `""` for
    /// the root entry (the file, link or directory that was named as the resource).
    pub path: String,
    /// File, directory or symlink.
    pub kind: EntryKind,
    /// Permission bits (`mode & 0o7777`), including setuid/setgid/sticky.
    pub mode: u32,
    /// Owner user id on the sending side.
    pub uid: u32,
    /// Owner group id on the sending side.
    pub gid: u32,
    /// Content size in bytes: the file length for files, 0 for directories and symlinks.
    pub size: u64,
    /// Modification time, seconds since the Unix epoch (may be negative).
    pub mtime_secs: i64,
    /// Nanoseconds part of the modification time (`< 1_000_000_000`).
    pub mtime_nanos: u32,
    /// The link target for symlinks (stored verbatim, never resolved); empty otherwise.
    pub link_target: String,
}

/// A slice of a file's content.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Chunk {
    /// Index of the entry ([`Header::index`]) the data belongs to.
    pub entry: u32,
    /// Byte offset of `data` within the file.
    pub offset: u64,
    /// The bytes, at most the negotiated chunk size and never empty. [`Bytes`], so a receiver
    /// that decodes frames from a shared buffer (prost with tonic) hands them on without a copy.
    pub data: Bytes,
    /// CRC-32C (Castagnoli) of `data`.
    pub crc32c: u32,
}

impl Chunk {
    /// Builds a chunk and computes its checksum.
    pub fn new(entry: u32, offset: u64, data: impl Into<Bytes>) -> Self {
        let data = data.into();
        let crc32c = crc32c::crc32c(&data);
        Chunk {
            entry,
            offset,
            data,
            crc32c,
        }
    }
}

/// The last frame of a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Eof {
    /// BLAKE3 over the canonical encoding of all entries (see [`crate::digest`]).
    pub digest: [u8; 32],
}

/// One unit of a resource stream: headers, chunks, then a single `Eof`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Frame {
    /// Metadata of the next entry.
    Header(Header),
    /// File content.
    Chunk(Chunk),
    /// End of the resource with its digest.
    Eof(Eof),
}

/// Where a transfer stands: entries before `entry` are complete, and the first `offset` bytes of
/// entry `entry` have been verified and written.
///
/// A stream resumed from this point (see [`crate::ResourceEncoder`]) starts with the header of
/// entry `entry` (a header identical to the one of the entry in progress is accepted again by the
/// [`crate::Reassembler`]), followed by its chunks from `offset`. `entry` equal to the number of
/// entries means only `Eof` is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct ResumePoint {
    /// Index of the first entry not completely received.
    pub entry: u32,
    /// Bytes of that entry already received.
    pub offset: u64,
}
