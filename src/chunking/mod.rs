//! The difference engine: content-defined chunking, manifests and difference transactions.
//!
//! Pure library code: no FUSE, no network, no database (see DESIGN.md).

mod id;
mod manifest;
pub mod payload;

pub use id::{ChunkId, IdParseError, ManifestId};
pub use manifest::{ApplyError, ChunkRef, EditOp, Manifest, ManifestEdit};
pub use payload::{PayloadError, VerifiedChunk};
