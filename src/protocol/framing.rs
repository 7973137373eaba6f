//! Binary framing of batched chunk uploads and downloads.
//!
//! ```text
//! batch  = magic "DDC1" (4 bytes) | count: u32 big-endian | entry * count
//! entry  = chunk id (32 bytes) | len: u32 big-endian | payload (len bytes)
//! ```
//! A payload is a chunk in `chunking::payload` format. Nothing may follow the last entry.

use super::limits::{MAX_BATCH_CHUNKS, MAX_CHUNK_PAYLOAD};
use crate::chunking::ChunkId;

/// Media type of a single chunk payload (upload body and download answer).
pub const CHUNK_MEDIA_TYPE: &str = "application/vnd.deltadrive.chunk";
/// Media type of a framed batch of chunk payloads.
pub const BATCH_MEDIA_TYPE: &str = "application/vnd.deltadrive.chunks";
/// The batch's leading magic bytes (the trailing "1" is the framing version).
pub const BATCH_MAGIC: [u8; 4] = *b"DDC1";

/// Why a batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The body does not start with [`BATCH_MAGIC`].
    #[error("not a chunk batch (bad magic)")]
    BadMagic,
    /// The body ends inside a header or a payload.
    #[error("chunk batch is truncated")]
    Truncated,
    /// Bytes follow the last announced entry.
    #[error("chunk batch has {0} trailing bytes")]
    TrailingBytes(usize),
    /// More entries than a batch may hold.
    #[error("chunk batch announces {count} entries, more than {max}")]
    TooManyChunks {
        /// The announced count.
        count: u32,
        /// The limit.
        max: usize,
    },
    /// One payload is larger than a chunk payload may be.
    #[error("chunk payload of {len} bytes is over the limit of {max}")]
    PayloadTooLarge {
        /// The announced length.
        len: u32,
        /// The limit.
        max: usize,
    },
}

/// Appends one entry to `out` (which must have been started by [`start_batch`]).
pub fn push_entry(out: &mut Vec<u8>, id: &ChunkId, payload: &[u8]) {
    out.extend_from_slice(id.as_bytes());
    // Payloads are bounded by MAX_CHUNK_PAYLOAD, far below u32::MAX.
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// Starts an entry whose payload the caller appends to `out` next; returns the mark to hand
/// to [`end_entry`] once it has.
pub fn begin_entry(out: &mut Vec<u8>, id: &ChunkId) -> usize {
    let mark = out.len();
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(&[0; 4]);
    mark
}

/// Ends the entry begun at `mark`: its length is what was appended since.
pub fn end_entry(out: &mut [u8], mark: usize) {
    let start = mark + ENTRY_HEADER;
    // Payloads are bounded by MAX_CHUNK_PAYLOAD, far below u32::MAX.
    let len = (out.len() - start) as u32;
    out[mark + 32..start].copy_from_slice(&len.to_be_bytes());
}

/// Bytes before each payload: the chunk id and the payload length.
pub const ENTRY_HEADER: usize = 36;
/// Bytes before the first entry: the magic and the entry count.
pub const BATCH_HEADER: usize = 8;

/// Starts a batch of `count` entries.
pub fn start_batch(count: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(8);
    write_batch_header(&mut out, count);
    out
}

/// Starts a batch of `count` entries in `out`, which must be empty.
pub fn write_batch_header(out: &mut Vec<u8>, count: u32) {
    debug_assert!(out.is_empty());
    out.extend_from_slice(&BATCH_MAGIC);
    out.extend_from_slice(&count.to_be_bytes());
}

/// Encodes a whole batch.
pub fn encode_batch<'a>(
    entries: impl ExactSizeIterator<Item = (&'a ChunkId, &'a [u8])>,
) -> Vec<u8> {
    let mut out = start_batch(entries.len() as u32);
    for (id, payload) in entries {
        push_entry(&mut out, id, payload);
    }
    out
}

/// Decodes a batch into (id, payload) pairs borrowing from `body`. Payloads are not verified here.
pub fn decode_batch(body: &[u8]) -> Result<Vec<(ChunkId, &[u8])>, FrameError> {
    let rest = body
        .strip_prefix(&BATCH_MAGIC)
        .ok_or(FrameError::BadMagic)?;
    let (count, mut rest) = take_u32(rest)?;
    if count as usize > MAX_BATCH_CHUNKS {
        return Err(FrameError::TooManyChunks {
            count,
            max: MAX_BATCH_CHUNKS,
        });
    }
    let mut entries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let (id_bytes, after_id) = rest.split_at_checked(32).ok_or(FrameError::Truncated)?;
        let mut id = [0u8; 32];
        id.copy_from_slice(id_bytes);
        let (len, after_len) = take_u32(after_id)?;
        if len as usize > MAX_CHUNK_PAYLOAD {
            return Err(FrameError::PayloadTooLarge {
                len,
                max: MAX_CHUNK_PAYLOAD,
            });
        }
        let (payload, after_payload) = after_len
            .split_at_checked(len as usize)
            .ok_or(FrameError::Truncated)?;
        entries.push((ChunkId::from_bytes(id), payload));
        rest = after_payload;
    }
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes(rest.len()));
    }
    Ok(entries)
}

fn take_u32(bytes: &[u8]) -> Result<(u32, &[u8]), FrameError> {
    let (head, rest) = bytes.split_at_checked(4).ok_or(FrameError::Truncated)?;
    let mut b = [0u8; 4];
    b.copy_from_slice(head);
    Ok((u32::from_be_bytes(b), rest))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::{any, proptest};

    use super::*;

    #[test]
    fn entries_begun_and_ended_in_place_decode_like_pushed_ones() {
        let (a, b) = (ChunkId::of(b"a"), ChunkId::of(b"b"));
        let mut out = start_batch(2);
        let mark = begin_entry(&mut out, &a);
        out.extend_from_slice(b"payload a");
        end_entry(&mut out, mark);
        let mark = begin_entry(&mut out, &b);
        end_entry(&mut out, mark);
        let pushed = encode_batch([(&a, &b"payload a"[..]), (&b, &b""[..])].into_iter());
        assert_eq!(out, pushed);
    }

    #[test]
    fn batches_round_trip() {
        let a = ChunkId::of(b"a");
        let b = ChunkId::of(b"b");
        let body = encode_batch([(&a, &b"pa"[..]), (&b, &b""[..])].into_iter());
        let back = decode_batch(&body).unwrap();
        assert_eq!(back, vec![(a, &b"pa"[..]), (b, &b""[..])]);
    }

    #[test]
    fn malformed_batches_are_refused() {
        let a = ChunkId::of(b"a");
        let body = encode_batch([(&a, &b"payload"[..])].into_iter());
        assert_eq!(decode_batch(b"XXXX\0\0\0\0"), Err(FrameError::BadMagic));
        assert_eq!(
            decode_batch(&body[..body.len() - 1]),
            Err(FrameError::Truncated)
        );
        let mut extra = body.clone();
        extra.push(0);
        assert_eq!(decode_batch(&extra), Err(FrameError::TrailingBytes(1)));
        let mut many = start_batch(u32::MAX);
        many.extend_from_slice(&[0; 40]);
        assert!(matches!(
            decode_batch(&many),
            Err(FrameError::TooManyChunks { .. })
        ));
        let mut huge = start_batch(1);
        huge.extend_from_slice(a.as_bytes());
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            decode_batch(&huge),
            Err(FrameError::PayloadTooLarge { .. })
        ));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut body = BATCH_MAGIC.to_vec();
            body.extend_from_slice(&bytes);
            let _ = decode_batch(&body);
            let _ = decode_batch(&bytes);
        }
    }
}
