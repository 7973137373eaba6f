//! The error body every non-2xx answer carries, and its codes.

use serde::{Deserialize, Serialize};

use super::{NodeId, Seq};
use crate::chunking::ChunkId;

/// What went wrong, as a stable machine-readable code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the body or query is not what the endpoint takes (malformed JSON, bad id, ...).
    BadRequest,
    /// 400: the commit `format` is not one this server speaks.
    UnsupportedVersion,
    /// 400: an op's `op` tag is unknown.
    UnknownOp,
    /// 400: an op is malformed or not allowed (wrong fields for its kind, root moved, ...).
    BadOp,
    /// 400: a name is not valid.
    BadName,
    /// 400: a chunk payload is corrupt or does not hash to its id.
    BadChunk,
    /// 400: a manifest edit does not apply, or its result's id or size differs from the claim.
    BadManifest,
    /// 400: an op's parent or new parent is not a directory.
    NotADirectory,
    /// 401: no token, or a wrong or revoked one.
    Unauthorized,
    /// 403: the volume belongs to another user.
    Forbidden,
    /// 404: no such volume, route or chunk (in this volume).
    NotFound,
    /// 409: some ops' bases are not the nodes' current versions (see `stale`).
    Stale,
    /// 409: the target name is taken in that directory (`node` holds it).
    NameTaken,
    /// 409: the move would put a directory inside itself.
    Cycle,
    /// 409: the parent (`node`) does not exist (any more).
    MissingParent,
    /// 409: the op's node (`node`) does not exist.
    MissingNode,
    /// 409: a create names an id that is already a live node (`node`).
    NodeExists,
    /// 409: a directory still has children on the server (`nodes`).
    NotEmpty,
    /// 409: the transaction references chunks this volume does not hold (`chunks`).
    MissingChunks,
    /// 409: the (device, txn) pair was already used for a different transaction.
    TxnReused,
    /// 413: the body, a chunk, or a batch is over its limit.
    TooLarge,
    /// 415: a Content-Encoding the server does not decode.
    UnsupportedEncoding,
    /// 405: the route exists but not with this method.
    MethodNotAllowed,
    /// 408: the request body did not arrive in time (it fell behind the minimum pace).
    Timeout,
    /// 500: the server failed; the request may be retried.
    Internal,
    /// 503: the server is shutting down or overloaded; retry later.
    Unavailable,
}

impl ErrorCode {
    /// The HTTP status this code is sent with.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest
            | ErrorCode::UnsupportedVersion
            | ErrorCode::UnknownOp
            | ErrorCode::BadOp
            | ErrorCode::BadName
            | ErrorCode::BadChunk
            | ErrorCode::BadManifest
            | ErrorCode::NotADirectory => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Timeout => 408,
            ErrorCode::Stale
            | ErrorCode::NameTaken
            | ErrorCode::Cycle
            | ErrorCode::MissingParent
            | ErrorCode::MissingNode
            | ErrorCode::NodeExists
            | ErrorCode::NotEmpty
            | ErrorCode::MissingChunks
            | ErrorCode::TxnReused => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::UnsupportedEncoding => 415,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
        }
    }

    /// Whether sending the same request again later may succeed without changing it.
    ///
    /// 409s are not: the device must pull, rebase or upload first (MissingChunks: upload, then retry).
    pub fn retryable(self) -> bool {
        match self {
            ErrorCode::Internal | ErrorCode::Unavailable | ErrorCode::Timeout => true,
            ErrorCode::BadRequest
            | ErrorCode::UnsupportedVersion
            | ErrorCode::UnknownOp
            | ErrorCode::BadOp
            | ErrorCode::BadName
            | ErrorCode::BadChunk
            | ErrorCode::BadManifest
            | ErrorCode::NotADirectory
            | ErrorCode::Unauthorized
            | ErrorCode::Forbidden
            | ErrorCode::NotFound
            | ErrorCode::MethodNotAllowed
            | ErrorCode::Stale
            | ErrorCode::NameTaken
            | ErrorCode::Cycle
            | ErrorCode::MissingParent
            | ErrorCode::MissingNode
            | ErrorCode::NodeExists
            | ErrorCode::NotEmpty
            | ErrorCode::MissingChunks
            | ErrorCode::TxnReused
            | ErrorCode::TooLarge
            | ErrorCode::UnsupportedEncoding => false,
        }
    }
}

/// A node whose base in a commit is not its current version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaleNode {
    /// The node.
    pub node: NodeId,
    /// The base the op carried.
    pub base: Seq,
    /// The node's current version (for a deleted node: the seq that deleted it).
    pub current: Seq,
    /// True when the node has been deleted on the server.
    #[serde(default)]
    pub deleted: bool,
}

/// The JSON body of every error answer: `{"code": ..., "message": ...}` plus details by code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
    /// Index of the op the error is about, for commit errors tied to one op.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<u32>,
    /// The node the error is about (name_taken: the holder; missing_parent: the parent; ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
    /// Every node whose base is stale (code `stale`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stale: Vec<StaleNode>,
    /// Nodes in the way (code `not_empty`: the directory's children).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeId>,
    /// Chunks the request needs and the volume lacks (codes `missing_chunks`, `not_found`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<ChunkId>,
}

impl ErrorBody {
    /// A body with only a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            op: None,
            node: None,
            stale: Vec::new(),
            nodes: Vec::new(),
            chunks: Vec::new(),
        }
    }
}
