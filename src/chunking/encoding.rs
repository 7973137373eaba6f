//! Canonical binary encodings of manifests and manifest edits, and their strict decoders.
//!
//! Manifest, version 1 (fixed width, so each manifest has exactly one encoding):
//! `"DDMF"`, version byte `1`, chunk count (u32 LE), total size (u64 LE), then per chunk
//! its 32-byte id and its length (u32 LE). The [`ManifestId`] is the BLAKE3 of these bytes.
//!
//! Manifest edit, version 1 (compact, for the wire and for storage): `"DDME"`, version byte
//! `1`, op count (LEB128), then per op a tag byte: `0` = keep, start and end (LEB128 each);
//! `1` = insert, 32-byte id and length (LEB128).
//!
//! Decoders refuse anything else with a [`DecodeError`]: they never panic, never read past
//! the input, and never allocate more than a small multiple of the input's length.

use super::params::MAX_CHUNK_LEN;
use super::{ChunkId, ChunkRef, EditOp, Manifest, ManifestEdit, ManifestId};

const MANIFEST_MAGIC: &[u8; 4] = b"DDMF";
const EDIT_MAGIC: &[u8; 4] = b"DDME";
const VERSION: u8 = 1;
const MANIFEST_HEADER: usize = 4 + 1 + 4 + 8;
const MANIFEST_ENTRY: usize = 32 + 4;
const TAG_KEEP: u8 = 0;
const TAG_INSERT: u8 = 1;
/// Smallest encoded op: a tag and two one-byte varints.
const MIN_OP_LEN: usize = 3;

/// Most chunks a manifest may have: 64 Mi, a 1 TiB file at the default 16 KiB average.
pub const MAX_MANIFEST_CHUNKS: u32 = 1 << 26;

/// Why encoded bytes were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The input ends before the structure it announces.
    #[error("input truncated")]
    Truncated,
    /// The input does not start with the expected magic bytes.
    #[error("not a deltadrive {what} encoding")]
    BadMagic {
        /// What was being decoded.
        what: &'static str,
    },
    /// The version byte names no version this build reads.
    #[error("unsupported encoding version {0}")]
    UnsupportedVersion(u8),
    /// More chunks or ops than [`MAX_MANIFEST_CHUNKS`].
    #[error("{count} entries exceed the limit of {limit}")]
    TooMany {
        /// The count announced.
        count: u64,
        /// The limit.
        limit: u32,
    },
    /// Bytes remain after the structure.
    #[error("{0} trailing bytes")]
    TrailingBytes(usize),
    /// A chunk of length zero, or longer than any chunker can cut.
    #[error("chunk length {len} is not in 1..={max}", max = MAX_CHUNK_LEN)]
    BadChunkLength {
        /// The length found.
        len: u64,
    },
    /// The declared total size is not the sum of the chunk lengths.
    #[error("declared size {declared} but chunks add up to {actual}")]
    SizeMismatch {
        /// The size in the header.
        declared: u64,
        /// The sum of the chunk lengths.
        actual: u64,
    },
    /// A variable-length integer is too long, too large, or not in its shortest form.
    #[error("malformed variable-length integer")]
    BadVarint,
    /// An op tag names no known op.
    #[error("unknown edit op tag {0}")]
    UnknownOp(u8),
    /// A keep run ends before it starts.
    #[error("keep run {start}..{end} is reversed")]
    ReversedKeep {
        /// Start of the run.
        start: u32,
        /// End of the run.
        end: u32,
    },
}

/// A cursor over input bytes that can only fail, never panic.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    /// LEB128, at most 32 bits, shortest form only (so the encoding stays canonical).
    fn varint_u32(&mut self) -> Result<u32, DecodeError> {
        let mut value: u64 = 0;
        for i in 0..5 {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                if i > 0 && b == 0 {
                    return Err(DecodeError::BadVarint);
                }
                return u32::try_from(value).map_err(|_| DecodeError::BadVarint);
            }
        }
        Err(DecodeError::BadVarint)
    }

    fn header(&mut self, magic: &[u8; 4], what: &'static str) -> Result<(), DecodeError> {
        if self.array::<4>()? != *magic {
            return Err(DecodeError::BadMagic { what });
        }
        match self.byte()? {
            VERSION => Ok(()),
            other => Err(DecodeError::UnsupportedVersion(other)),
        }
    }

    fn finish(self) -> Result<(), DecodeError> {
        match self.0.len() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn check_chunk_len(len: u32) -> Result<u32, DecodeError> {
    if len == 0 || len > MAX_CHUNK_LEN {
        return Err(DecodeError::BadChunkLength { len: len.into() });
    }
    Ok(len)
}

impl Manifest {
    /// The canonical encoding (version 1); its BLAKE3 is the manifest id.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MANIFEST_HEADER + self.chunks.len() * MANIFEST_ENTRY);
        out.extend_from_slice(MANIFEST_MAGIC);
        out.push(VERSION);
        // Manifests come from chunking (far below u32::MAX chunks) or from `decode`, which
        // enforces MAX_MANIFEST_CHUNKS; saturating keeps a hand-built giant one undecodable.
        let count = u32::try_from(self.chunks.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&self.size().to_le_bytes());
        for c in &self.chunks {
            out.extend_from_slice(c.id.as_bytes());
            out.extend_from_slice(&c.len.to_le_bytes());
        }
        out
    }

    /// Decodes the canonical encoding, refusing anything malformed, truncated or oversized.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut input = Input(bytes);
        input.header(MANIFEST_MAGIC, "manifest")?;
        let count = u32::from_le_bytes(input.array()?);
        let declared = u64::from_le_bytes(input.array()?);
        if count > MAX_MANIFEST_CHUNKS {
            return Err(DecodeError::TooMany {
                count: count.into(),
                limit: MAX_MANIFEST_CHUNKS,
            });
        }
        // Checked against the real input length before allocating anything.
        let body = count as usize * MANIFEST_ENTRY;
        match input.0.len() {
            n if n < body => return Err(DecodeError::Truncated),
            n if n > body => return Err(DecodeError::TrailingBytes(n - body)),
            _ => {}
        }
        let mut chunks = Vec::with_capacity(count as usize);
        let mut actual: u64 = 0;
        for _ in 0..count {
            let id = ChunkId::from_bytes(input.array()?);
            let len = check_chunk_len(u32::from_le_bytes(input.array()?))?;
            actual += u64::from(len);
            chunks.push(ChunkRef { id, len });
        }
        input.finish()?;
        if actual != declared {
            return Err(DecodeError::SizeMismatch { declared, actual });
        }
        Ok(Self { chunks })
    }

    /// The manifest id: BLAKE3 of the canonical encoding.
    pub fn id(&self) -> ManifestId {
        ManifestId::from_bytes(*blake3::hash(&self.encode()).as_bytes())
    }
}

impl ManifestEdit {
    /// The compact binary encoding (version 1).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.ops.len() * 8);
        out.extend_from_slice(EDIT_MAGIC);
        out.push(VERSION);
        put_varint(&mut out, u32::try_from(self.ops.len()).unwrap_or(u32::MAX));
        for op in &self.ops {
            match *op {
                EditOp::Keep { start, end } => {
                    out.push(TAG_KEEP);
                    put_varint(&mut out, start);
                    put_varint(&mut out, end);
                }
                EditOp::Insert(c) => {
                    out.push(TAG_INSERT);
                    out.extend_from_slice(c.id.as_bytes());
                    put_varint(&mut out, c.len);
                }
            }
        }
        out
    }

    /// Decodes [`ManifestEdit::encode`]'s output, refusing anything malformed or truncated.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut input = Input(bytes);
        input.header(EDIT_MAGIC, "manifest edit")?;
        let count = input.varint_u32()?;
        if count > MAX_MANIFEST_CHUNKS {
            return Err(DecodeError::TooMany {
                count: count.into(),
                limit: MAX_MANIFEST_CHUNKS,
            });
        }
        // Every op takes at least MIN_OP_LEN bytes: a count the input cannot hold is refused
        // before it sizes an allocation.
        if count as usize > input.0.len() / MIN_OP_LEN {
            return Err(DecodeError::Truncated);
        }
        let mut ops = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let op = match input.byte()? {
                TAG_KEEP => {
                    let start = input.varint_u32()?;
                    let end = input.varint_u32()?;
                    if end < start {
                        return Err(DecodeError::ReversedKeep { start, end });
                    }
                    EditOp::Keep { start, end }
                }
                TAG_INSERT => {
                    let id = ChunkId::from_bytes(input.array()?);
                    let len = check_chunk_len(input.varint_u32()?)?;
                    EditOp::Insert(ChunkRef { id, len })
                }
                other => return Err(DecodeError::UnknownOp(other)),
            };
            ops.push(op);
        }
        input.finish()?;
        Ok(Self { ops })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(n: u8, len: u32) -> ChunkRef {
        ChunkRef {
            id: ChunkId::of(&[n]),
            len,
        }
    }

    fn sample() -> Manifest {
        Manifest {
            chunks: vec![chunk(1, 4096), chunk(2, 70_000), chunk(3, 1)],
        }
    }

    #[test]
    fn manifest_round_trips_and_layout_is_fixed() {
        let m = sample();
        let bytes = m.encode();
        assert_eq!(bytes.len(), MANIFEST_HEADER + 3 * MANIFEST_ENTRY);
        assert_eq!(&bytes[..5], b"DDMF\x01");
        assert_eq!(&bytes[5..9], &3u32.to_le_bytes());
        assert_eq!(&bytes[9..17], &74_097u64.to_le_bytes());
        assert_eq!(&bytes[17..49], chunk(1, 0).id.as_bytes());
        assert_eq!(Manifest::decode(&bytes), Ok(m.clone()));
        assert_eq!(
            m.id(),
            ManifestId::from_bytes(*blake3::hash(&bytes).as_bytes())
        );
        assert_ne!(m.id(), Manifest::default().id());
    }

    #[test]
    fn manifest_decoder_refuses_bad_input() {
        let good = sample().encode();
        assert_eq!(
            Manifest::decode(&good[..good.len() - 1]),
            Err(DecodeError::Truncated)
        );
        assert_eq!(Manifest::decode(&good[..3]), Err(DecodeError::Truncated));
        let mut extra = good.clone();
        extra.push(0);
        assert_eq!(Manifest::decode(&extra), Err(DecodeError::TrailingBytes(1)));
        let mut magic = good.clone();
        magic[0] = b'X';
        assert!(matches!(
            Manifest::decode(&magic),
            Err(DecodeError::BadMagic { .. })
        ));
        let mut version = good.clone();
        version[4] = 2;
        assert_eq!(
            Manifest::decode(&version),
            Err(DecodeError::UnsupportedVersion(2))
        );
        let mut size = good.clone();
        size[9] ^= 1;
        assert!(matches!(
            Manifest::decode(&size),
            Err(DecodeError::SizeMismatch { .. })
        ));
        let mut zero = Manifest {
            chunks: vec![chunk(1, 0)],
        }
        .encode();
        assert_eq!(
            Manifest::decode(&zero),
            Err(DecodeError::BadChunkLength { len: 0 })
        );
        zero.truncate(9);
        zero.extend_from_slice(&0u64.to_le_bytes());
        assert_eq!(Manifest::decode(&zero), Err(DecodeError::Truncated));
    }

    #[test]
    fn huge_announced_count_is_refused_without_allocating() {
        let mut bytes = b"DDMF\x01".to_vec();
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes());
        assert!(matches!(
            Manifest::decode(&bytes),
            Err(DecodeError::TooMany { .. })
        ));
        let mut bytes = b"DDMF\x01".to_vec();
        bytes.extend_from_slice(&MAX_MANIFEST_CHUNKS.to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes());
        assert_eq!(Manifest::decode(&bytes), Err(DecodeError::Truncated));
        let mut edit = b"DDME\x01".to_vec();
        put_varint(&mut edit, MAX_MANIFEST_CHUNKS);
        assert_eq!(ManifestEdit::decode(&edit), Err(DecodeError::Truncated));
    }

    #[test]
    fn edit_round_trips_compactly() {
        let edit = ManifestEdit {
            ops: vec![
                EditOp::Keep { start: 0, end: 300 },
                EditOp::Insert(chunk(9, 16_000)),
                EditOp::Keep {
                    start: 301,
                    end: 65_536,
                },
            ],
        };
        let bytes = edit.encode();
        // header 5 + count 1 + keep (1+1+2) + insert (1+32+2) + keep (1+2+3)
        assert_eq!(bytes.len(), 51);
        assert_eq!(ManifestEdit::decode(&bytes), Ok(edit));
    }

    #[test]
    fn edit_decoder_refuses_bad_input() {
        let good = ManifestEdit {
            ops: vec![EditOp::Keep { start: 1, end: 2 }],
        }
        .encode();
        assert_eq!(
            ManifestEdit::decode(&good[..good.len() - 1]),
            Err(DecodeError::Truncated)
        );
        let mut tag = good.clone();
        tag[6] = 7;
        assert_eq!(ManifestEdit::decode(&tag), Err(DecodeError::UnknownOp(7)));
        let mut reversed = good.clone();
        reversed[7] = 3;
        assert!(matches!(
            ManifestEdit::decode(&reversed),
            Err(DecodeError::ReversedKeep { start: 3, end: 2 })
        ));
        // 0x81 0x00 is a non-shortest encoding of 1.
        let long = b"DDME\x01\x01\x00\x81\x00\x02".to_vec();
        assert_eq!(ManifestEdit::decode(&long), Err(DecodeError::BadVarint));
        // More than 32 bits.
        let big = b"DDME\x01\xff\xff\xff\xff\x7f".to_vec();
        assert_eq!(ManifestEdit::decode(&big), Err(DecodeError::BadVarint));
        let mut zero_len = b"DDME\x01\x01\x01".to_vec();
        zero_len.extend_from_slice(&[0u8; 32]);
        zero_len.push(0);
        assert_eq!(
            ManifestEdit::decode(&zero_len),
            Err(DecodeError::BadChunkLength { len: 0 })
        );
    }
}
