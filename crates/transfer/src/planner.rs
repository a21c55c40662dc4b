//! Choosing the chunk size under a message-size limit.

use crate::error::Error;

/// Picks the data size of each chunk so that no chunk message exceeds the negotiated limit.
///
/// The transport (for example a protobuf message carried by gRPC) adds framing around the data;
/// the caller describes it either as a fixed upper bound ([`ChunkPlanner::with_overhead`]) or as an
/// exact "encoded length of a chunk message whose data is `n` bytes" function
/// ([`ChunkPlanner::with_encoded_len`]). The chunk size is the target (default
/// [`ChunkPlanner::DEFAULT_TARGET`], 256 KiB) capped by what fits.
///
/// ```
/// use firebuild_transfer::ChunkPlanner;
///
/// // 4 MiB gRPC limit, at most 64 bytes of framing per chunk message.
/// let p = ChunkPlanner::with_overhead(4 << 20, 64).unwrap();
/// assert_eq!(p.chunk_size(), 256 * 1024);
///
/// // A tiny limit caps the chunk: 1000 bytes minus 64 bytes of framing.
/// let p = ChunkPlanner::with_overhead(1000, 64).unwrap();
/// assert_eq!(p.chunk_size(), 936);
/// assert_eq!(p.chunks(2000).collect::<Vec<_>>(), [(0, 936), (936, 936), (1872, 128)]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPlanner {
    chunk_size: usize,
}

impl ChunkPlanner {
    /// Default chunk data size: 256 KiB (64–256 KiB chunks are fastest over gRPC/mTLS).
    pub const DEFAULT_TARGET: usize = 256 * 1024;

    /// A planner with a fixed chunk size (no message limit). Use in tests and for local copies.
    pub fn fixed(chunk_size: usize) -> Result<Self, Error> {
        if chunk_size == 0 {
            return Err(Error::MessageLimitTooSmall { max_message: 0 });
        }
        Ok(ChunkPlanner { chunk_size })
    }

    /// Chunk size = min(`DEFAULT_TARGET`, `max_message - overhead`), where `overhead` is an upper
    /// bound of the framing bytes around the data of any chunk message.
    pub fn with_overhead(max_message: usize, overhead: usize) -> Result<Self, Error> {
        Self::with_overhead_and_target(max_message, overhead, Self::DEFAULT_TARGET)
    }

    /// Like [`with_overhead`](Self::with_overhead) with a chosen target chunk size.
    pub fn with_overhead_and_target(
        max_message: usize,
        overhead: usize,
        target: usize,
    ) -> Result<Self, Error> {
        let room = max_message.saturating_sub(overhead);
        let chunk_size = room.min(target);
        if chunk_size == 0 {
            return Err(Error::MessageLimitTooSmall { max_message });
        }
        Ok(ChunkPlanner { chunk_size })
    }

    /// The largest chunk size `n <= target` with `encoded_len(n) <= max_message`.
    ///
    /// `encoded_len(n)` must return the encoded length of the largest chunk message whose data is
    /// `n` bytes — i.e. with worst-case values in the other fields (entry index and offset at
    /// their maximum, since varints grow) — and must be non-decreasing in `n`. The result is
    /// checked against `encoded_len` again, so a non-monotonic function yields an error, never an
    /// oversize message.
    pub fn with_encoded_len(
        max_message: usize,
        target: usize,
        encoded_len: impl Fn(usize) -> usize,
    ) -> Result<Self, Error> {
        let fits = |n: usize| encoded_len(n) <= max_message;
        if target == 0 || !fits(1) {
            return Err(Error::MessageLimitTooSmall { max_message });
        }
        if fits(target) {
            return Ok(ChunkPlanner { chunk_size: target });
        }
        // Invariant: fits(lo), !fits(hi).
        let (mut lo, mut hi) = (1usize, target);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        if !fits(lo) {
            return Err(Error::MessageLimitTooSmall { max_message });
        }
        Ok(ChunkPlanner { chunk_size: lo })
    }

    /// The data size of every chunk but possibly the last one of each file.
    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// `(offset, len)` of each chunk of a file of `size` bytes (none for an empty file).
    pub fn chunks(&self, size: u64) -> impl Iterator<Item = (u64, usize)> + use<> {
        let step = self.chunk_size as u64;
        (0..size.div_ceil(step)).map(move |i| {
            let offset = i * step;
            // min() bounds the value by chunk_size, which is a usize.
            let len = usize::try_from((size - offset).min(step)).unwrap_or(usize::MAX);
            (offset, len)
        })
    }
}

impl Default for ChunkPlanner {
    fn default() -> Self {
        ChunkPlanner {
            chunk_size: Self::DEFAULT_TARGET,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint_len(v: u64) -> usize {
        (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
    }

    /// A protobuf-like message: tag+len+data, two varint fields, a fixed32.
    fn proto_len(n: usize) -> usize {
        1 + varint_len(n as u64)
            + n
            + 1
            + varint_len(u32::MAX as u64)
            + 1
            + varint_len(u64::MAX)
            + 5
    }

    #[test]
    fn exact_encoded_len_never_exceeds_limit() {
        for max in [30usize, 100, 128, 129, 130, 1000, 16_384, 16_400, 4 << 20] {
            let Ok(p) =
                ChunkPlanner::with_encoded_len(max, ChunkPlanner::DEFAULT_TARGET, proto_len)
            else {
                assert!(proto_len(1) > max);
                continue;
            };
            let n = p.chunk_size();
            assert!(proto_len(n) <= max, "max {max} n {n}");
            assert!(
                n == ChunkPlanner::DEFAULT_TARGET || proto_len(n + 1) > max,
                "max {max} n {n} not maximal"
            );
        }
    }

    #[test]
    fn too_small_limits_are_errors() {
        assert!(matches!(
            ChunkPlanner::with_overhead(64, 64),
            Err(Error::MessageLimitTooSmall { max_message: 64 })
        ));
        assert!(ChunkPlanner::with_encoded_len(10, 100, proto_len).is_err());
        assert!(ChunkPlanner::fixed(0).is_err());
    }

    #[test]
    fn default_target_is_capped_by_limit() {
        let p = ChunkPlanner::with_overhead(4 << 20, 100).unwrap();
        assert_eq!(p.chunk_size(), 256 * 1024);
        let p = ChunkPlanner::with_overhead(100_000, 100).unwrap();
        assert_eq!(p.chunk_size(), 99_900);
    }

    #[test]
    fn chunks_cover_the_file_exactly() {
        let p = ChunkPlanner::fixed(10).unwrap();
        assert_eq!(p.chunks(0).count(), 0);
        assert_eq!(p.chunks(10).collect::<Vec<_>>(), [(0, 10)]);
        assert_eq!(
            p.chunks(25).collect::<Vec<_>>(),
            [(0, 10), (10, 10), (20, 5)]
        );
    }
}
