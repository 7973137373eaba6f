//! The difference engine: content-defined chunking, manifests and difference transactions.
//!
//! Pure library code: no FUSE, no network, no database (docs/ARCHITECTURE.md, "The parts").
//!
//! - Cut a file: [`chunk_file`], [`chunk_reader`] (streaming, bounded memory), [`chunk_bytes`],
//!   or [`StreamChunker`] to see each chunk's bytes as it is cut. [`chunk_bytes`] and
//!   [`rechunk`] cut and hash long stretches in one pass (module `fused`, AVX2);
//!   [`chunk_bytes_plain`] is the cut-then-hash reference they are tested against.
//! - Re-cut after writes: [`rechunk`] (same result as cutting the whole file), or
//!   [`rechunk_with`] to see each new chunk's bytes as it is cut.
//! - Compare and apply: [`diff`] gives a [`Diff`]; [`Diff::apply`] checks both manifest ids.
//! - Rebuild content: [`reconstruct`] from a base file plus supplied chunks, verifying each.
//! - Persist: [`Manifest::encode`]/[`Manifest::decode`] (canonical; [`Manifest::id`] hashes
//!   it) and [`ManifestEdit::encode`]/[`ManifestEdit::decode`]; chunk payloads in [`payload`].

mod chunker;
mod diff;
mod encoding;
mod fused;
mod id;
mod manifest;
mod params;
pub mod payload;
mod rechunk;
mod reconstruct;
pub mod seeded;
mod source;

pub use chunker::{
    Chunk, ChunkError, StreamChunker, chunk_bytes, chunk_bytes_plain, chunk_file, chunk_reader,
};
pub use diff::{Diff, DiffError, diff};
pub use encoding::{DecodeError, MAX_MANIFEST_CHUNKS};
pub use id::{ChunkId, IdParseError, ManifestId};
pub use manifest::{ApplyError, ChunkRef, EditOp, Manifest, ManifestEdit};
pub use params::{ChunkerParams, MAX_CHUNK_LEN, ParamsError};
pub use payload::{PayloadError, VerifiedChunk, VerifiedSlice};
pub use rechunk::{rechunk, rechunk_with};
pub use reconstruct::{ChunkSource, ReconstructError, read_verified, reconstruct};
pub use source::ReadAt;
