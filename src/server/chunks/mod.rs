//! The chunk store: verified chunk payloads by id, global underneath (the metadata store
//! says which volume holds which). [`PackDirStore`] is the embedded implementation; an
//! S3-compatible one can sit beside it.

mod packdir;
mod packwriter;

use std::sync::Arc;

use axum::body::Bytes;

use crate::chunking::payload::{self, PayloadError};
use crate::chunking::{ChunkId, ChunkRef};
use crate::protocol::limits::MAX_CHUNK_SIZE;

pub use packdir::{PACK_TARGET_SIZE, PackDirStore};

/// A chunk payload whose decoded bytes hashed to its id. Only [`VerifiedPayload::verify`]
/// makes one, so a store can never be handed unchecked bytes.
#[derive(Clone)]
pub struct VerifiedPayload {
    id: ChunkId,
    /// The decoded chunk's length: what a manifest naming this chunk must say.
    len: u32,
    payload: Bytes,
}

impl std::fmt::Debug for VerifiedPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedPayload")
            .field("id", &self.id)
            .field("len", &self.len)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

impl VerifiedPayload {
    /// Decodes `payload` (bounded by [`MAX_CHUNK_SIZE`]) and checks its BLAKE3 against `id`.
    pub fn verify(id: ChunkId, payload: Bytes) -> Result<Self, PayloadError> {
        let len = payload::check(&payload, id, MAX_CHUNK_SIZE)?;
        // MAX_CHUNK_SIZE is far below u32::MAX.
        let len = u32::try_from(len).map_err(|_| PayloadError::TooLarge {
            limit: MAX_CHUNK_SIZE,
        })?;
        Ok(Self { id, len, payload })
    }

    /// The chunk id.
    pub fn id(&self) -> ChunkId {
        self.id
    }

    /// The chunk as a manifest names it: id and decoded length.
    pub fn chunk_ref(&self) -> ChunkRef {
        ChunkRef {
            id: self.id,
            len: self.len,
        }
    }

    /// The payload as received (tag byte + body).
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
}

/// Failures of a chunk store.
#[derive(Debug, thiserror::Error)]
pub enum ChunkStoreError {
    /// Reading or writing pack files failed.
    #[error("chunk store I/O on {path}: {source}")]
    Io {
        /// The file or directory.
        path: std::path::PathBuf,
        /// The cause (shared: one failed group write answers many callers).
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The index database failed.
    #[error("chunk index: {0}")]
    Index(#[source] Arc<rusqlite::Error>),
    /// The writer thread is gone.
    #[error("chunk writer is not running")]
    WriterGone,
    /// The index was written by a newer schema than this build knows.
    #[error("chunk index schema version {0} is newer than this build knows")]
    UnknownSchema(i64),
    /// A stored payload no longer matches its id (disk corruption); it is not served.
    #[error("stored chunk {id} is corrupt: {source}")]
    Corrupt {
        /// The chunk.
        id: ChunkId,
        /// What the check found.
        #[source]
        source: PayloadError,
    },
}

impl ChunkStoreError {
    /// The same error again, for another caller of a put that failed as a group.
    pub(crate) fn clone_shared(&self) -> Self {
        match self {
            Self::Io { path, source } => Self::Io {
                path: path.clone(),
                source: source.clone(),
            },
            Self::Index(e) => Self::Index(e.clone()),
            Self::WriterGone => Self::WriterGone,
            Self::UnknownSchema(v) => Self::UnknownSchema(*v),
            Self::Corrupt { id, source } => Self::Corrupt {
                id: *id,
                source: match source {
                    PayloadError::Empty => PayloadError::Empty,
                    PayloadError::UnknownTag(t) => PayloadError::UnknownTag(*t),
                    PayloadError::TooLarge { limit } => PayloadError::TooLarge { limit: *limit },
                    PayloadError::Zstd(io) => {
                        PayloadError::Zstd(std::io::Error::new(io.kind(), io.to_string()))
                    }
                    PayloadError::HashMismatch { expected, actual } => PayloadError::HashMismatch {
                        expected: *expected,
                        actual: *actual,
                    },
                },
            },
        }
    }
}

impl From<rusqlite::Error> for ChunkStoreError {
    fn from(e: rusqlite::Error) -> Self {
        ChunkStoreError::Index(Arc::new(e))
    }
}

impl ChunkStoreError {
    /// Whether the same call may succeed later.
    pub fn retryable(&self) -> bool {
        match self {
            ChunkStoreError::Io { .. }
            | ChunkStoreError::Index(_)
            | ChunkStoreError::WriterGone => true,
            ChunkStoreError::Corrupt { .. } | ChunkStoreError::UnknownSchema(_) => false,
        }
    }
}

/// Where chunk payloads live. Calls block: the API layer runs them off the async threads.
pub trait ChunkStore: Send + Sync {
    /// Stores the payloads; returns once they are durable. Every payload is written, also one
    /// stored already, so the time taken does not depend on what others stored.
    fn put(&self, chunks: Vec<VerifiedPayload>) -> Result<(), ChunkStoreError>;
    /// The payload stored for `id`, verified again on the way out; `None` if not stored.
    fn get(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, ChunkStoreError>;
    /// Whether `id` is stored.
    fn contains(&self, id: &ChunkId) -> Result<bool, ChunkStoreError>;
    /// Appends the payload stored for `id` to `out`, verified like [`ChunkStore::get`];
    /// false (and `out` unchanged) if not stored.
    fn append(&self, id: &ChunkId, out: &mut Vec<u8>) -> Result<bool, ChunkStoreError> {
        let Some(payload) = self.get(id)? else {
            return Ok(false);
        };
        out.extend_from_slice(&payload);
        Ok(true)
    }
}
