//! Manifests (a file's ordered chunk list) and edits of one manifest into another.

use serde::{Deserialize, Serialize};

use super::ChunkId;

/// One chunk of a file: its id and its length in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkRef {
    /// BLAKE3 of the chunk's bytes.
    pub id: ChunkId,
    /// Uncompressed length.
    pub len: u32,
}

/// The ordered chunks that make a file's content.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Chunks in file order.
    pub chunks: Vec<ChunkRef>,
}

impl Manifest {
    /// Total content size in bytes.
    pub fn size(&self) -> u64 {
        self.chunks.iter().map(|c| u64::from(c.len)).sum()
    }

    /// Each chunk with the offset of its first byte in the file, in file order.
    pub fn offsets(&self) -> impl Iterator<Item = (u64, ChunkRef)> + '_ {
        self.chunks.iter().scan(0u64, |offset, &c| {
            let at = *offset;
            *offset += u64::from(c.len);
            Some((at, c))
        })
    }
}

/// One step of an edit script.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum EditOp {
    /// Keep base chunks `start..end` (half-open).
    Keep {
        /// First base chunk index kept.
        start: u32,
        /// One past the last base chunk index kept.
        end: u32,
    },
    /// A chunk that is not taken from the base at this position.
    Insert(ChunkRef),
}

/// A manifest expressed as an edit of a base manifest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEdit {
    /// The steps, in order of the new manifest.
    pub ops: Vec<EditOp>,
}

/// Why an edit could not be applied to a base.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApplyError {
    /// A keep run points outside the base manifest or is reversed.
    #[error("keep run {start}..{end} is outside a base of {base_len} chunks")]
    KeepOutOfRange {
        /// Start of the run.
        start: u32,
        /// End of the run.
        end: u32,
        /// Number of chunks in the base.
        base_len: usize,
    },
}

impl ManifestEdit {
    /// Applies the edit to `base`, giving the new manifest.
    pub fn apply(&self, base: &Manifest) -> Result<Manifest, ApplyError> {
        let mut chunks = Vec::new();
        for op in &self.ops {
            match *op {
                EditOp::Keep { start, end } => {
                    let run = base.chunks.get(start as usize..end as usize).ok_or(
                        ApplyError::KeepOutOfRange {
                            start,
                            end,
                            base_len: base.chunks.len(),
                        },
                    )?;
                    chunks.extend_from_slice(run);
                }
                EditOp::Insert(chunk) => chunks.push(chunk),
            }
        }
        Ok(Manifest { chunks })
    }

    /// The chunks this edit inserts (those a receiver may lack).
    pub fn inserted(&self) -> impl Iterator<Item = &ChunkRef> {
        self.ops.iter().filter_map(|op| match op {
            EditOp::Insert(c) => Some(c),
            EditOp::Keep { .. } => None,
        })
    }
}
