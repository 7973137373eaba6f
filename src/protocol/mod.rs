//! Types both sides of the wire share: the universal, versioned format (docs/PROTOCOL.md).

mod error;
pub mod framing;
mod ids;
pub mod limits;
mod manifest_id;
mod messages;
mod name;
mod node;
mod ops;

pub use error::{ErrorBody, ErrorCode, StaleNode};
pub use ids::{NodeId, NodeIdParseError, Seq, TxnId, TxnIdParseError};
pub use manifest_id::manifest_id;
pub use messages::{
    Change, ChangesQuery, ChangesResponse, ChunkIdsRequest, CommitRequest, CommitResponse,
    CursorRequest, DeviceInfo, DevicesResponse, FileHint, HintRequest, HintsQuery, HintsResponse,
    MissingResponse, PlacedChunk, SnapshotResponse, UploadResponse, VolumeInfo, VolumesResponse,
};
pub use name::{AccountName, Name, NameError};
pub use node::{NodeKind, NodeRecord, XattrError, XattrValue, Xattrs, validate_xattrs};
pub use ops::{CreateOp, DeleteOp, KNOWN_OPS, MoveOp, Op, SetAttrsOp, WriteOp};

/// Path prefix of this protocol version's endpoints.
pub const API_PREFIX: &str = "/v1";
