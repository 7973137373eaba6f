//! One upload request's body, framed as its chunks are encoded: each payload is written once,
//! straight to where it is sent from.

use crate::chunking::{ChunkId, payload};
use crate::protocol::framing::{self, BATCH_HEADER, ENTRY_HEADER};

/// Chunks for one upload request (see [`crate::remote::Remote::upload_batch`]).
#[derive(Debug)]
pub struct UploadBatch {
    body: Vec<u8>,
    count: u32,
    raw: u64,
}

impl Default for UploadBatch {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl UploadBatch {
    /// An empty batch with room for `bytes` of entries (pages are only touched as it fills).
    pub fn with_capacity(bytes: usize) -> Self {
        let mut body = Vec::with_capacity(BATCH_HEADER + bytes);
        framing::write_batch_header(&mut body, 0);
        Self {
            body,
            count: 0,
            raw: 0,
        }
    }

    /// Adds a chunk's bytes, encoded as [`payload::encode`] does (zstd at `level` if that is
    /// smaller, else raw).
    pub fn push_chunk(&mut self, id: &ChunkId, bytes: &[u8], level: i32) {
        let mark = framing::begin_entry(&mut self.body, id);
        payload::encode_into(bytes, level, &mut self.body);
        framing::end_entry(&mut self.body, mark);
        self.count += 1;
        self.raw += bytes.len() as u64;
    }

    /// Adds a payload already encoded.
    pub fn push_payload(&mut self, id: &ChunkId, payload: &[u8]) {
        framing::push_entry(&mut self.body, id, payload);
        self.count += 1;
    }

    /// Entries so far.
    pub fn count(&self) -> usize {
        self.count as usize
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes the request body would have now.
    pub fn body_len(&self) -> usize {
        self.body.len()
    }

    /// Chunk bytes added with [`UploadBatch::push_chunk`], before encoding.
    pub fn raw_len(&self) -> u64 {
        self.raw
    }

    /// Whether one more entry with a payload of `payload_len` bytes would take the body past
    /// `max_bytes`.
    pub fn would_pass(&self, payload_len: usize, max_bytes: usize) -> bool {
        self.body.len() + ENTRY_HEADER + payload_len > max_bytes
    }

    /// The finished body and its entry count.
    pub(super) fn into_body(mut self) -> (Vec<u8>, u32) {
        self.body[4..BATCH_HEADER].copy_from_slice(&self.count.to_be_bytes());
        (self.body, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_decode_to_the_payloads_encode_gives() {
        let random: Vec<u8> = (0..20_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let chunks = [random, vec![1u8; 30_000]];
        let ids: Vec<ChunkId> = chunks.iter().map(|c| ChunkId::of(c)).collect();
        let mut batch = UploadBatch::with_capacity(64 << 10);
        for (id, c) in ids.iter().zip(&chunks) {
            batch.push_chunk(id, c, 3);
        }
        let ready = payload::encode(b"ready", 3);
        batch.push_payload(&ChunkId::of(b"ready"), &ready);
        assert_eq!(batch.count(), 3);
        assert_eq!(batch.raw_len(), 50_000);
        let (body, count) = batch.into_body();
        assert_eq!(count, 3);
        let entries = framing::decode_batch(&body).expect("a well-formed batch");
        assert_eq!(entries.len(), 3);
        for ((id, p), c) in entries.iter().zip(&chunks) {
            assert_eq!(*p, &payload::encode(c, 3)[..]);
            payload::check(p, *id, 1 << 20).expect("each payload decodes to its chunk");
        }
        assert_eq!(entries[2], (ChunkId::of(b"ready"), &ready[..]));
    }
}
