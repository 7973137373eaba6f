//! Request and response bodies of the /v1 endpoints (JSON).

use serde::{Deserialize, Serialize};

use super::{AccountName, NodeId, NodeRecord, Op, Seq, TxnId};
use crate::chunking::ChunkId;

/// `GET /v1/volumes`: the caller's volumes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumesResponse {
    /// The volumes, by name.
    pub volumes: Vec<VolumeInfo>,
}

/// One volume in a listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    /// The volume's name (unique on the server).
    pub name: AccountName,
    /// Seq of its latest commit (0: none yet).
    pub head: Seq,
}

/// `POST .../chunks/missing` and `POST .../chunks/fetch`: a list of chunk ids.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkIdsRequest {
    /// The ids asked about.
    pub ids: Vec<ChunkId>,
}

/// `POST .../chunks/missing`: which of the asked ids this volume does not hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingResponse {
    /// The ids the volume lacks, in request order, without duplicates.
    pub missing: Vec<ChunkId>,
}

/// `POST .../chunks` (batched upload): how many chunks the request carried.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadResponse {
    /// Chunks verified and held by the volume after the request.
    pub stored: u32,
}

/// `POST .../commit`: one difference transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRequest {
    /// The commit format; this build speaks [`super::limits::COMMIT_FORMAT`].
    pub format: u32,
    /// The device's id for this transaction; a retry must reuse it.
    pub txn: TxnId,
    /// The ops, applied in order, all or none.
    pub ops: Vec<Op>,
}

/// `POST .../commit`: the seq the transaction was given.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitResponse {
    /// The transaction's seq in the volume's change log.
    pub seq: Seq,
    /// True when this answer repeats an earlier application of the same (device, txn).
    #[serde(default)]
    pub replayed: bool,
}

/// `GET .../changes` query string.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangesQuery {
    /// Return commits with seq greater than this (the device's cursor).
    #[serde(default)]
    pub after: u64,
    /// Long-poll: when there is nothing after `after`, wait up to this many seconds (max 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<u64>,
    /// Most commits in the page (default 100, max 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// `GET .../changes`: a page of the change log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangesResponse {
    /// The volume's head when the page was read.
    pub head: Seq,
    /// Commits after the cursor, in seq order, gapless.
    pub changes: Vec<Change>,
    /// True when more commits follow the last one in this page.
    pub more: bool,
}

/// One committed transaction as the change log returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Its seq.
    pub seq: Seq,
    /// The device that committed it.
    pub device: AccountName,
    /// The device's transaction id.
    pub txn: TxnId,
    /// When the server applied it, milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// The ops as applied (writes carry the edit, the resulting manifest id and size).
    pub ops: Vec<Op>,
}

/// `GET .../snapshot`: the whole tree at one seq.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotResponse {
    /// The seq the tree is at.
    pub seq: Seq,
    /// Every live node, the root included, in no particular order.
    pub nodes: Vec<NodeRecord>,
}

/// `GET .../devices`: the user's devices as seen from one volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicesResponse {
    /// The devices, by name.
    pub devices: Vec<DeviceInfo>,
}

/// One device in the management view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// The device's name.
    pub name: AccountName,
    /// Last authenticated request, milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_ms: Option<i64>,
    /// The device's cursor in this volume (last `after` asked or posted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<Seq>,
    /// True once its token was revoked.
    pub revoked: bool,
    /// True for the device making the request.
    pub current: bool,
}

/// `POST .../cursor`: the device reports how far it has applied the change log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorRequest {
    /// The seq up to which the device has applied changes.
    pub cursor: Seq,
}

/// `POST .../hints`: where chunks a device has just uploaded go in files it is about to
/// commit, so that the other devices can fetch them while the rest is still uploading.
/// Best effort: a hint promises nothing; the commit alone says what a file holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HintRequest {
    /// One entry per file (at most [`super::limits::MAX_BATCH_CHUNKS`] chunks in all).
    pub files: Vec<FileHint>,
}

/// Chunks of one file's coming content, at their offsets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHint {
    /// The file's node.
    pub node: NodeId,
    /// The chunks, each at its byte offset in the file.
    pub chunks: Vec<PlacedChunk>,
}

/// A chunk at a byte offset of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacedChunk {
    /// Where the chunk starts in the file.
    pub offset: u64,
    /// The chunk.
    pub id: ChunkId,
    /// Its length in bytes.
    pub len: u32,
}

/// `GET .../hints` query string.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HintsQuery {
    /// Return hints posted after this position (`next` of the previous answer; 0 at first).
    #[serde(default)]
    pub after: u64,
    /// Long-poll: when there is nothing newer, wait up to this many seconds (max 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<u64>,
}

/// `GET .../hints`: the other devices' hints after the asked position, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HintsResponse {
    /// The position to ask after next time.
    pub next: u64,
    /// The hints (the server keeps only the latest few minutes' worth).
    pub files: Vec<FileHint>,
}
