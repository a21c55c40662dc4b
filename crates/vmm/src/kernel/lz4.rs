//! LZ4 "legacy" frames, the format Linux uses for LZ4-compressed kernels.
//!
//! A legacy frame is the magic `0x184C2102` followed by blocks, each a little-endian `u32`
//! compressed size and an LZ4 block that decompresses to at most 8 MiB. The kernel build
//! appends the uncompressed size as a final `u32`, which ends the block list.

/// The legacy frame magic, little-endian on disk.
pub(crate) const LEGACY_MAGIC: u32 = 0x184C_2102;

/// Decompresses a legacy LZ4 stream (magic included) of at most `limit` output bytes.
pub(crate) fn decompress_legacy(input: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    let mut pos = 0usize;
    let mut out = Vec::new();
    let mut seen_magic = false;
    while let Some(word) = read_u32(input, pos) {
        if word == LEGACY_MAGIC {
            seen_magic = true;
            pos += 4;
            continue;
        }
        if !seen_magic {
            return Err("missing lz4 legacy magic".to_owned());
        }
        let size = word as usize;
        let start = pos + 4;
        let Some(block) = start
            .checked_add(size)
            .and_then(|end| input.get(start..end))
        else {
            // Not a block: the appended uncompressed size (or trailing padding).
            break;
        };
        decompress_block(block, &mut out, limit)
            .map_err(|e| format!("block at offset {pos}: {e}"))?;
        pos = start + size;
    }
    if out.is_empty() {
        return Err("no lz4 blocks".to_owned());
    }
    Ok(out)
}

fn read_u32(input: &[u8], pos: usize) -> Option<u32> {
    let bytes = input.get(pos..pos.checked_add(4)?)?;
    Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// Decompresses one raw LZ4 block, appending to `out` (whose earlier bytes matches may
/// reference, as legacy frames use linked blocks only within a block).
pub(crate) fn decompress_block(
    block: &[u8],
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<(), String> {
    let block_start = out.len();
    let mut i = 0usize;
    let byte = |i: usize| block.get(i).copied().ok_or("truncated block");
    loop {
        let token = byte(i)?;
        i += 1;
        let mut literals = usize::from(token >> 4);
        if literals == 15 {
            loop {
                let b = byte(i)?;
                i += 1;
                literals += usize::from(b);
                if b != 255 {
                    break;
                }
            }
        }
        let lit = block
            .get(i..i.saturating_add(literals))
            .ok_or("literal run past the end of the block")?;
        if out.len() + literals > limit {
            return Err(format!("output exceeds {limit} bytes"));
        }
        out.extend_from_slice(lit);
        i += literals;
        if i == block.len() {
            return Ok(());
        }
        let offset = usize::from(u16::from_le_bytes([byte(i)?, byte(i + 1)?]));
        i += 2;
        if offset == 0 || offset > out.len() - block_start {
            return Err(format!("match offset {offset} out of range"));
        }
        let mut len = usize::from(token & 15);
        if len == 15 {
            loop {
                let b = byte(i)?;
                i += 1;
                len += usize::from(b);
                if b != 255 {
                    break;
                }
            }
        }
        len += 4;
        if out.len() + len > limit {
            return Err(format!("output exceeds {limit} bytes"));
        }
        let from = out.len() - offset;
        if offset >= len {
            out.extend_from_within(from..from + len);
        } else {
            for k in 0..len {
                let b = out[from + k];
                out.push(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn literal_only_block() {
        let mut out = Vec::new();
        // token: 5 literals, no match (last sequence).
        decompress_block(b"\x50hello", &mut out, 100).unwrap();
        assert_eq!(out, b"hello");
    }

    #[test]
    fn overlapping_match_repeats() {
        let mut out = Vec::new();
        // "ab" then match offset 2 length 4+4=8 -> "ab" + "abababab", then 0 literals end.
        decompress_block(b"\x24ab\x02\x00\x00", &mut out, 100).unwrap();
        assert_eq!(out, b"ababababab");
    }

    #[test]
    fn legacy_frame_stops_at_appended_size() {
        let mut frame = LEGACY_MAGIC.to_le_bytes().to_vec();
        frame.extend_from_slice(&6u32.to_le_bytes());
        frame.extend_from_slice(b"\x50hello");
        frame.extend_from_slice(&5u32.to_le_bytes()); // appended size
        assert_eq!(decompress_legacy(&frame, 100).unwrap(), b"hello");
    }

    #[test]
    fn bad_offset_is_an_error() {
        let mut out = Vec::new();
        let err = decompress_block(b"\x10a\x05\x00", &mut out, 100).unwrap_err();
        assert!(err.contains("offset 5"), "{err}");
    }

    #[test]
    fn output_limit_is_enforced() {
        let mut out = Vec::new();
        let err = decompress_block(b"\x1fa\x01\x00\xff\xff\x00", &mut out, 64).unwrap_err();
        assert!(err.contains("exceeds 64"), "{err}");
    }
}
