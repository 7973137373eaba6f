//! Chunk payloads as stored and sent: zstd-compressed, or raw where compression does not help.
//!
//! Format (version 1): one tag byte, then the body. Tag 0: the chunk's bytes as they are.
//! Tag 1: one zstd frame of them. Decoding checks that the BLAKE3 of the output is the
//! chunk id, so a [`VerifiedChunk`] can only exist for bytes that match their id.

use std::io::Read;

use super::ChunkId;

const TAG_RAW: u8 = 0;
const TAG_ZSTD: u8 = 1;

/// Default zstd level for chunk payloads.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// Why a payload was refused.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// The payload is empty: it has no tag byte.
    #[error("chunk payload is empty")]
    Empty,
    /// The tag byte names no known encoding.
    #[error("unknown chunk payload tag {0}")]
    UnknownTag(u8),
    /// The decoded chunk would exceed the caller's limit.
    #[error("chunk payload decodes to more than {limit} bytes")]
    TooLarge {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// The zstd frame is corrupt.
    #[error("corrupt zstd frame: {0}")]
    Zstd(#[source] std::io::Error),
    /// The decoded bytes do not hash to the expected id.
    #[error("chunk hash mismatch: expected {expected}, got {actual}")]
    HashMismatch {
        /// The id the caller asked for.
        expected: ChunkId,
        /// The BLAKE3 of the decoded bytes.
        actual: ChunkId,
    },
}

/// Chunk bytes whose BLAKE3 has been checked against their id.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifiedChunk {
    id: ChunkId,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for VerifiedChunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedChunk")
            .field("id", &self.id)
            .field("len", &self.bytes.len())
            .finish()
    }
}

impl VerifiedChunk {
    /// Hashes `bytes`; the result is verified by construction.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self {
            id: ChunkId::of(&bytes),
            bytes,
        }
    }

    /// The chunk id.
    pub fn id(&self) -> ChunkId {
        self.id
    }

    /// The chunk's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The chunk's bytes, by value.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The payload to store or send: zstd at `level` if that is smaller, else raw.
    pub fn encode(&self, level: i32) -> Vec<u8> {
        encode(&self.bytes, level)
    }
}

/// Bytes sampled to judge whether a chunk is worth compressing.
const SAMPLE: usize = 4096;
/// A sample whose byte histogram is this close to uniform (chi-square against 256 equal
/// bins; random bytes give about 255, text and code thousands) is left raw.
const UNIFORM_CHI2: u64 = 350;

/// True when the bytes look random (already compressed or encrypted): zstd would spend about
/// a second per GiB to find nothing.
fn looks_incompressible(bytes: &[u8]) -> bool {
    let sample = &bytes[..bytes.len().min(SAMPLE)];
    if sample.len() < SAMPLE {
        return false;
    }
    let mut counts = [0u64; 256];
    for &b in sample {
        counts[usize::from(b)] += 1;
    }
    // chi2 = sum((c - n/256)^2) / (n/256), in integers: sum((256c - n)^2) / (256 n).
    let n = sample.len() as u64;
    let sum: u64 = counts.iter().map(|&c| (256 * c).abs_diff(n).pow(2)).sum();
    sum / (256 * n) < UNIFORM_CHI2
}

/// Encodes chunk bytes as a payload: zstd at `level` if that is smaller, else raw.
pub fn encode(bytes: &[u8], level: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 1);
    encode_into(bytes, level, &mut out);
    out
}

/// Appends the payload [`encode`] gives to `out`: a raw chunk is copied once, straight to
/// where it is sent from.
pub fn encode_into(bytes: &[u8], level: i32, out: &mut Vec<u8>) {
    let start = out.len();
    if !looks_incompressible(bytes) {
        let bound = zstd::zstd_safe::compress_bound(bytes.len());
        out.resize(start + 1 + bound, 0);
        out[start] = TAG_ZSTD;
        match zstd::bulk::compress_to_buffer(bytes, &mut out[start + 1..], level) {
            Ok(n) if n < bytes.len() => {
                out.truncate(start + 1 + n);
                return;
            }
            _ => out.truncate(start),
        }
    }
    out.reserve(bytes.len() + 1);
    out.push(TAG_RAW);
    out.extend_from_slice(bytes);
}

/// Chunk bytes checked against their id, borrowed from a payload or a decode buffer: what a
/// batch reader hands out without copying each chunk.
#[derive(Clone, Copy, Debug)]
pub struct VerifiedSlice<'a> {
    id: ChunkId,
    bytes: &'a [u8],
}

impl<'a> VerifiedSlice<'a> {
    /// The chunk id.
    pub fn id(&self) -> ChunkId {
        self.id
    }

    /// The chunk's bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// An owned copy.
    pub fn to_owned(&self) -> VerifiedChunk {
        VerifiedChunk {
            id: self.id,
            bytes: self.bytes.to_vec(),
        }
    }
}

/// A payload split at its tag, a raw body already checked against the limit.
enum Body<'a> {
    Raw(&'a [u8]),
    Zstd(&'a [u8]),
}

fn body(payload: &[u8], limit: usize) -> Result<Body<'_>, PayloadError> {
    match payload.split_first().ok_or(PayloadError::Empty)? {
        (&TAG_RAW, body) if body.len() > limit => Err(PayloadError::TooLarge { limit }),
        (&TAG_RAW, body) => Ok(Body::Raw(body)),
        (&TAG_ZSTD, body) => Ok(Body::Zstd(body)),
        (&other, _) => Err(PayloadError::UnknownTag(other)),
    }
}

/// Inflates one zstd frame into `out` (cleared first), refusing more than `limit` bytes.
fn inflate(body: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), PayloadError> {
    out.clear();
    // A first frame that says it holds more than `limit` is refused before any work.
    if let Ok(Some(declared)) = zstd::zstd_safe::get_frame_content_size(body)
        && declared > limit as u64
    {
        return Err(PayloadError::TooLarge { limit });
    }
    // Stream through a bounded reader: the frame header's claimed size is not trusted.
    let mut decoder = zstd::stream::read::Decoder::new(body).map_err(PayloadError::Zstd)?;
    // Nor its window size: a frame of a few bytes could otherwise make the decoder allocate a
    // 128 MiB window. A frame for at most `limit` bytes never needs more than the next power
    // of two (one more bit as margin).
    let window_log = (usize::BITS - limit.saturating_sub(1).leading_zeros()).clamp(10, 30);
    decoder
        .window_log_max(window_log + 1)
        .map_err(PayloadError::Zstd)?;
    decoder
        .take(limit as u64 + 1)
        .read_to_end(out)
        .map_err(PayloadError::Zstd)?;
    if out.len() > limit {
        return Err(PayloadError::TooLarge { limit });
    }
    Ok(())
}

fn verify(bytes: &[u8], expected: ChunkId) -> Result<(), PayloadError> {
    let actual = ChunkId::of(bytes);
    if actual != expected {
        return Err(PayloadError::HashMismatch { expected, actual });
    }
    Ok(())
}

/// Decodes a payload as [`decode`] does, but hands out its bytes in place: a raw payload's
/// body, or a compressed one inflated into `scratch` (reused from call to call).
pub fn decode_into<'a>(
    payload: &'a [u8],
    expected: ChunkId,
    limit: usize,
    scratch: &'a mut Vec<u8>,
) -> Result<VerifiedSlice<'a>, PayloadError> {
    let bytes: &'a [u8] = match body(payload, limit)? {
        Body::Raw(bytes) => bytes,
        Body::Zstd(frame) => {
            inflate(frame, limit, scratch)?;
            scratch
        }
    };
    verify(bytes, expected)?;
    Ok(VerifiedSlice {
        id: expected,
        bytes,
    })
}

/// Checks a payload's shape only: a known tag, and a raw body within `limit` bytes. Neither
/// inflates nor hashes: for a store handing out bytes its receiver verifies.
pub fn check_shape(payload: &[u8], limit: usize) -> Result<(), PayloadError> {
    body(payload, limit).map(|_| ())
}

/// Checks that a payload decodes to at most `limit` bytes hashing to `expected`, without
/// copying a raw payload's bytes; returns the decoded length.
pub fn check(payload: &[u8], expected: ChunkId, limit: usize) -> Result<usize, PayloadError> {
    decode_into(payload, expected, limit, &mut Vec::new()).map(|v| v.bytes().len())
}

/// Decodes a payload, refusing output over `limit` bytes or not hashing to `expected`.
pub fn decode(
    payload: &[u8],
    expected: ChunkId,
    limit: usize,
) -> Result<VerifiedChunk, PayloadError> {
    let bytes = match body(payload, limit)? {
        Body::Raw(bytes) => bytes.to_vec(),
        Body::Zstd(frame) => {
            let mut out = Vec::new();
            inflate(frame, limit, &mut out)?;
            out
        }
    };
    verify(&bytes, expected)?;
    Ok(VerifiedChunk {
        id: expected,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_random_looking_chunks_skip_compression() {
        let random = crate::chunking::seeded::seeded_bytes(16 << 10, 9);
        assert!(looks_incompressible(&random));
        let text = include_str!("payload.rs").as_bytes();
        assert!(!looks_incompressible(text));
        // Binary but structured (little-endian counters): zstd helps, so it is tried.
        let counters: Vec<u8> = (0..4096u32).flat_map(u32::to_le_bytes).collect();
        assert!(!looks_incompressible(&counters));
        assert_eq!(encode(&counters, 3)[0], TAG_ZSTD);
        assert_eq!(encode(&random, 3)[0], TAG_RAW);
        // Too short to judge: compression is tried (and kept only if it helps).
        assert!(!looks_incompressible(&random[..100]));
    }

    #[test]
    fn compressible_chunk_round_trips_through_zstd() {
        let bytes = vec![7u8; 10_000];
        let chunk = VerifiedChunk::new(bytes.clone());
        let payload = chunk.encode(DEFAULT_ZSTD_LEVEL);
        assert_eq!(payload[0], TAG_ZSTD);
        assert!(payload.len() < 100);
        let back = decode(&payload, chunk.id(), 65536).expect("decodes");
        assert_eq!(back.bytes(), &bytes[..]);
    }

    #[test]
    fn check_agrees_with_decode_on_both_encodings() {
        let random: Vec<u8> = (0..8192u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for bytes in [random, vec![7u8; 10_000]] {
            let id = ChunkId::of(&bytes);
            let payload = encode(&bytes, DEFAULT_ZSTD_LEVEL);
            check(&payload, id, 65536).expect("checks");
            assert!(matches!(
                check(&payload, ChunkId::of(b"other"), 65536),
                Err(PayloadError::HashMismatch { .. })
            ));
            assert!(matches!(
                check(&payload, id, 100),
                Err(PayloadError::TooLarge { limit: 100 })
            ));
        }
        assert!(matches!(
            check(&[], ChunkId::of(b""), 10),
            Err(PayloadError::Empty)
        ));
        assert!(matches!(
            check(&[9, 1, 2], ChunkId::of(b""), 10),
            Err(PayloadError::UnknownTag(9))
        ));
    }

    #[test]
    fn check_shape_looks_at_tag_and_raw_length_only() {
        let bytes = vec![3u8; 100];
        let raw = [&[TAG_RAW][..], &bytes].concat();
        check_shape(&raw, 100).expect("a raw body within the limit");
        assert!(matches!(
            check_shape(&raw, 99),
            Err(PayloadError::TooLarge { limit: 99 })
        ));
        // No hashing: a body that matches no id passes; the receiver's decode refuses it.
        check_shape(&[TAG_RAW, 1, 2, 3], 10).expect("shape only");
        assert!(matches!(check_shape(&[], 10), Err(PayloadError::Empty)));
        assert!(matches!(
            check_shape(&[9], 10),
            Err(PayloadError::UnknownTag(9))
        ));
    }

    #[test]
    fn decode_into_borrows_raw_bodies_and_inflates_into_the_scratch() {
        let random = crate::chunking::seeded::seeded_bytes(16 << 10, 3);
        let raw = encode(&random, DEFAULT_ZSTD_LEVEL);
        let mut scratch = b"stale".to_vec();
        let got = decode_into(&raw, ChunkId::of(&random), 65536, &mut scratch).expect("raw");
        assert_eq!(got.bytes(), &random[..]);
        assert!(std::ptr::eq(got.bytes().as_ptr(), raw[1..].as_ptr()));
        assert_eq!(got.to_owned(), VerifiedChunk::new(random.clone()));

        let same = vec![7u8; 10_000];
        let packed = encode(&same, DEFAULT_ZSTD_LEVEL);
        let got = decode_into(&packed, ChunkId::of(&same), 65536, &mut scratch).expect("zstd");
        assert_eq!(got.bytes(), &same[..]);
        assert_eq!(
            scratch, same,
            "inflated into the scratch, which was emptied first"
        );
        assert!(matches!(
            decode_into(&packed, ChunkId::of(&random), 65536, &mut scratch),
            Err(PayloadError::HashMismatch { .. })
        ));
    }

    #[test]
    fn encode_into_appends_what_encode_gives() {
        let random: Vec<u8> = (0..8192u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for bytes in [random, vec![7u8; 10_000], b"short".to_vec()] {
            let mut out = b"before".to_vec();
            encode_into(&bytes, DEFAULT_ZSTD_LEVEL, &mut out);
            assert_eq!(&out[..6], b"before");
            assert_eq!(out[6..], encode(&bytes, DEFAULT_ZSTD_LEVEL)[..]);
            check(&out[6..], ChunkId::of(&bytes), 65536).expect("decodes to the chunk");
        }
    }

    #[test]
    fn incompressible_chunk_is_stored_raw() {
        let bytes: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let payload = encode(&bytes, DEFAULT_ZSTD_LEVEL);
        assert!(payload.len() <= bytes.len() + 1);
        assert_eq!(
            decode(&payload, ChunkId::of(&bytes), 65536)
                .expect("decodes")
                .bytes(),
            &bytes[..]
        );
    }

    #[test]
    fn largest_chunk_decodes_at_every_level_within_the_window_limit() {
        // Half repetitive, half noise: zstd uses its window and still compresses.
        let bytes: Vec<u8> = (0..65_536u32)
            .map(|i| {
                if i % 2048 < 1024 {
                    (i % 7) as u8
                } else {
                    (i.wrapping_mul(2_654_435_761) >> 13) as u8
                }
            })
            .collect();
        for level in [1, 3, 9, 19, 22] {
            let payload = encode(&bytes, level);
            assert_eq!(payload[0], TAG_ZSTD);
            let back = decode(&payload, ChunkId::of(&bytes), 65_536).expect("decodes");
            assert_eq!(back.bytes(), &bytes[..]);
        }
    }

    #[test]
    fn wrong_id_is_refused() {
        let payload = encode(b"hello", 3);
        let err = decode(&payload, ChunkId::of(b"other"), 100).unwrap_err();
        assert!(matches!(err, PayloadError::HashMismatch { .. }));
    }

    #[test]
    fn oversized_output_is_refused_before_hashing() {
        let bytes = vec![0u8; 1 << 20];
        let payload = encode(&bytes, 3);
        let err = decode(&payload, ChunkId::of(&bytes), 65536).unwrap_err();
        assert!(matches!(err, PayloadError::TooLarge { limit: 65536 }));
    }

    #[test]
    fn empty_and_unknown_tags_are_refused() {
        assert!(matches!(
            decode(&[], ChunkId::of(b""), 10),
            Err(PayloadError::Empty)
        ));
        assert!(matches!(
            decode(&[9, 1], ChunkId::of(b""), 10),
            Err(PayloadError::UnknownTag(9))
        ));
        assert!(matches!(
            decode(&[1, 1, 2, 3], ChunkId::of(b""), 10),
            Err(PayloadError::Zstd(_))
        ));
    }
}
