//! HTTP/2 and message-size settings shared by the server and the client, and the exact chunk
//! sizing under the message limit.

use std::time::Duration;

use firebuild_transfer::ChunkPlanner;
use prost::Message;

use crate::pb;

/// Default maximum gRPC message size, both directions, both ends: 4 MiB (tonic's default decode
/// limit, set explicitly so both ends agree).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 << 20;

/// HTTP/2 flow-control settings. Both ends use the same values.
///
/// The default is tuned for bulk transfer: the adaptive window (BDP estimation) plus large
/// initial windows, so a single resource stream is not throttled by the 64 KiB HTTP/2 default.
/// [`Http2Tuning::library_defaults`] keeps hyper's defaults (used to measure the difference).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Tuning {
    /// Let hyper grow the windows from its bandwidth-delay estimate.
    pub adaptive_window: bool,
    /// Initial per-stream receive window in bytes (`None`: library default).
    pub stream_window: Option<u32>,
    /// Initial per-connection receive window in bytes (`None`: library default).
    pub connection_window: Option<u32>,
    /// Largest HTTP/2 frame payload accepted (`None`: library default, 16 KiB).
    pub max_frame_size: Option<u32>,
    /// Disable Nagle's algorithm on the TCP socket.
    pub tcp_nodelay: bool,
}

impl Default for Http2Tuning {
    fn default() -> Self {
        Self {
            adaptive_window: true,
            stream_window: Some(8 << 20),
            connection_window: Some(16 << 20),
            max_frame_size: Some(1 << 20),
            tcp_nodelay: true,
        }
    }
}

impl Http2Tuning {
    /// hyper/tonic defaults (64 KiB windows, 16 KiB frames, no adaptive window).
    pub fn library_defaults() -> Self {
        Self {
            adaptive_window: false,
            stream_window: None,
            connection_window: None,
            max_frame_size: None,
            tcp_nodelay: true,
        }
    }
}

/// Encoded length of the largest `ResourceFrame` carrying a chunk of `n` data bytes (entry,
/// offset and checksum at their maximum, so varints are as long as they get).
pub fn chunk_frame_len(n: usize) -> usize {
    // `vec![0; n]` is a zeroed allocation (calloc): cheap, and the length is then exactly what
    // prost encodes, with no hand-written framing arithmetic to get wrong.
    pb::ResourceFrame {
        frame: Some(pb::resource_frame::Frame::Chunk(pb::Chunk {
            entry: u32::MAX,
            offset: u64::MAX,
            crc32c: u32::MAX,
            data: vec![0; n].into(),
        })),
    }
    .encoded_len()
}

/// The chunk planner for a negotiated message limit: the largest chunk whose frame fits.
pub fn chunk_planner(max_message_size: usize) -> Result<ChunkPlanner, firebuild_transfer::Error> {
    ChunkPlanner::with_encoded_len(
        max_message_size,
        ChunkPlanner::DEFAULT_TARGET,
        chunk_frame_len,
    )
}

/// Default interval of the guest's heartbeat.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);

/// Default time without any guest activity after which the server declares it lost.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    fn real_len(n: usize) -> usize {
        pb::ResourceFrame {
            frame: Some(pb::resource_frame::Frame::Chunk(pb::Chunk {
                entry: u32::MAX,
                offset: u64::MAX,
                crc32c: u32::MAX,
                data: vec![0xa5; n].into(),
            })),
        }
        .encoded_len()
    }

    #[test]
    fn chunk_at_exact_boundary_fits_and_one_more_byte_does_not() {
        for max in [
            64usize, 100, 143, 144, 145, 16_400, 16_401, 100_003, 262_150, 262_170,
        ] {
            let planner = chunk_planner(max).unwrap();
            let n = planner.chunk_size();
            assert!(
                real_len(n) <= max,
                "max {max}: chunk {n} encodes to {}",
                real_len(n)
            );
            if n < ChunkPlanner::DEFAULT_TARGET {
                assert!(
                    real_len(n + 1) > max,
                    "max {max}: chunk {n} is not the largest"
                );
            }
        }
        // The default 4 MiB limit takes the 256 KiB target.
        assert_eq!(
            chunk_planner(DEFAULT_MAX_MESSAGE_SIZE)
                .unwrap()
                .chunk_size(),
            256 * 1024
        );
        // A limit that leaves no room for data is an error, never a zero-byte chunk.
        assert!(chunk_planner(20).is_err());
    }
}
