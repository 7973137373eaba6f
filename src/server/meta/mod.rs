//! The metadata and change-log store: users, devices, volumes, node trees, commits.
//!
//! [`MetaStore`] is what the API layer sees; [`SqliteMeta`] is the embedded implementation.
//! A PostgreSQL one can sit beside it without the API layer changing.

mod commit;
mod schema;
mod sqlite;

use std::sync::Arc;

use crate::chunking::{ChunkId, ChunkRef};
use crate::protocol::{
    AccountName, CommitRequest, DeviceInfo, NodeId, NodeRecord, Seq, StaleNode, TxnId, VolumeInfo,
};

pub use sqlite::SqliteMeta;

/// A user's row id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UserId(pub i64);

/// A device's row id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeviceId(pub i64);

/// A volume's row id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VolumeId(pub i64);

/// BLAKE3 of a bearer token: what the store keeps instead of the token.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHash(..)")
    }
}

/// The device a valid token belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceAuth {
    /// The device's owner.
    pub user: UserId,
    /// The device.
    pub device: DeviceId,
    /// The device's name.
    pub device_name: AccountName,
}

/// What a user may do with a volume name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumeAccess {
    /// The volume is the user's.
    Granted(VolumeId),
    /// The volume exists and is another user's.
    Forbidden,
    /// No volume has that name.
    NotFound,
}

/// The outcome of a commit that was not refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Applied now, as this seq.
    Applied(Seq),
    /// The same (device, txn) was applied earlier as this seq; nothing changed now.
    Replayed(Seq),
}

/// Why a commit was refused; the store is left as it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// What is wrong.
    pub kind: RefusalKind,
    /// Index of the op it is about, when it is about one.
    pub op: Option<u32>,
    /// Human-readable detail.
    pub message: String,
}

/// The reasons a commit is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefusalKind {
    /// Bases that are not the nodes' current versions.
    Stale(Vec<StaleNode>),
    /// The target name is held by this node.
    NameTaken(NodeId),
    /// The move would put this node inside itself.
    Cycle(NodeId),
    /// This parent does not exist (any more).
    MissingParent(NodeId),
    /// This node does not exist.
    MissingNode(NodeId),
    /// A create names this live node.
    NodeExists(NodeId),
    /// This directory has these children still.
    NotEmpty(NodeId, Vec<NodeId>),
    /// The volume does not hold these chunks.
    MissingChunks(Vec<ChunkId>),
    /// The (device, txn) pair was used for a different transaction.
    TxnReused,
    /// This node is not a directory but is used as a parent.
    NotADirectory(NodeId),
    /// The op does not fit the node (write to a directory, ...).
    BadOp,
    /// The edit does not apply to the stored manifest, or the result differs from the claim.
    BadManifest,
}

/// Why a commit failed: refused, or the store failed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Refused: a conflict or a bad op; nothing was applied.
    #[error("commit refused: {}", .0.message)]
    Refused(Refusal),
    /// The store failed; nothing was applied.
    #[error(transparent)]
    Store(#[from] MetaError),
}

impl From<rusqlite::Error> for CommitError {
    fn from(e: rusqlite::Error) -> Self {
        CommitError::Store(MetaError::Sqlite(e))
    }
}

/// Failures of the metadata store itself.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The group commit that held this write failed.
    #[error("group commit failed: {0}")]
    GroupCommit(#[source] Arc<rusqlite::Error>),
    /// Creating the store's directory failed.
    #[error("creating {path}: {source}")]
    Io {
        /// The path.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The writer thread is gone (the store is shutting down or crashed).
    #[error("metadata writer is not running")]
    WriterGone,
    /// Stored data does not decode: a bug or corruption.
    #[error("corrupt metadata: {0}")]
    Corrupt(String),
    /// A named user, device or volume does not exist (admin commands).
    #[error("{0} not found")]
    NotFound(String),
    /// A named user, device or volume exists already (admin commands).
    #[error("{0} exists already")]
    AlreadyExists(String),
    /// The database was written by a newer schema.
    #[error("metadata schema version {0} is newer than this build knows")]
    UnknownSchema(i64),
}

impl MetaError {
    /// Whether the same call may succeed later (a busy database, a failed group commit).
    pub fn retryable(&self) -> bool {
        match self {
            MetaError::Sqlite(e) => is_busy(e),
            MetaError::GroupCommit(e) => is_busy(e),
            MetaError::WriterGone => true,
            MetaError::Io { .. }
            | MetaError::Corrupt(_)
            | MetaError::NotFound(_)
            | MetaError::AlreadyExists(_)
            | MetaError::UnknownSchema(_) => false,
        }
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// One user in an admin listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSummary {
    /// The user's name.
    pub name: AccountName,
    /// Devices, revoked ones included.
    pub devices: u64,
    /// Volumes.
    pub volumes: u64,
}

/// One device in an admin listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSummary {
    /// The owner.
    pub user: AccountName,
    /// The device.
    pub name: AccountName,
    /// True once revoked.
    pub revoked: bool,
    /// Last authenticated request (ms since the epoch).
    pub last_seen_ms: Option<i64>,
}

/// One volume in an admin listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeSummary {
    /// The owner.
    pub user: AccountName,
    /// The volume.
    pub name: AccountName,
    /// Its latest seq.
    pub head: Seq,
}

/// A page of the change log as stored: [`crate::protocol::ChangesResponse`] on the wire, with
/// each commit's ops passed through as the JSON the commit stored, not parsed and encoded
/// again for every device that pulls them.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ChangesPage {
    /// The volume's head when the page was read.
    pub head: Seq,
    /// Commits after the cursor, in seq order, gapless.
    pub changes: Vec<StoredChange>,
    /// True when more commits follow the last one in this page.
    pub more: bool,
}

/// One commit of a [`ChangesPage`]: [`crate::protocol::Change`] with its ops as stored.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StoredChange {
    /// Its seq.
    pub seq: Seq,
    /// The device that committed it.
    pub device: AccountName,
    /// The device's transaction id.
    pub txn: TxnId,
    /// When the server applied it, milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// The ops as applied: the JSON array the commit stored.
    pub ops: Box<serde_json::value::RawValue>,
}

/// What a snapshot reader is handed, in order: the seq first, then every live node.
#[derive(Clone, Debug)]
pub enum SnapshotItem {
    /// The seq the snapshot is at.
    Seq(Seq),
    /// One live node.
    Node(NodeRecord),
}

/// The metadata and change-log store. Calls block: the API layer runs them off the async threads.
pub trait MetaStore: Send + Sync {
    /// Adds a user (admin).
    fn add_user(&self, name: &AccountName) -> Result<(), MetaError>;
    /// Adds a device to a user with its token's hash, or gives a revoked device a new token.
    fn add_device(
        &self,
        user: &AccountName,
        device: &AccountName,
        token: &TokenHash,
    ) -> Result<(), MetaError>;
    /// Revokes a device's token.
    fn revoke_device(&self, user: &AccountName, device: &AccountName) -> Result<(), MetaError>;
    /// Creates an empty volume (a root directory at seq 0) owned by a user.
    fn create_volume(&self, user: &AccountName, volume: &AccountName) -> Result<(), MetaError>;
    /// Every user.
    fn list_users(&self) -> Result<Vec<UserSummary>, MetaError>;
    /// Every device, or one user's.
    fn list_devices(&self, user: Option<&AccountName>) -> Result<Vec<DeviceSummary>, MetaError>;
    /// Every volume, or one user's.
    fn list_volumes(&self, user: Option<&AccountName>) -> Result<Vec<VolumeSummary>, MetaError>;

    /// The live device a token hash belongs to, if any.
    fn authenticate(&self, token: &TokenHash) -> Result<Option<DeviceAuth>, MetaError>;
    /// Records that a device was seen now, and optionally its cursor in a volume.
    /// May be kept in memory for a few seconds before it is written.
    fn note_activity(
        &self,
        device: DeviceId,
        now_ms: i64,
        cursor: Option<(VolumeId, Seq)>,
    ) -> Result<(), MetaError>;
    /// The user's volumes.
    fn user_volumes(&self, user: UserId) -> Result<Vec<VolumeInfo>, MetaError>;
    /// Whether `user` may use the volume called `name`.
    fn resolve_volume(&self, user: UserId, name: &AccountName) -> Result<VolumeAccess, MetaError>;
    /// Which of `ids` the volume does not hold, in order, without duplicates.
    fn missing_chunks(&self, vol: VolumeId, ids: &[ChunkId]) -> Result<Vec<ChunkId>, MetaError>;
    /// Records that the volume holds these chunks, with their decoded lengths as measured
    /// at upload (they are durable in the chunk store). May
    /// be synced only with the next commit: a crash can lose holdings no commit names yet,
    /// which the devices are then asked for and upload again.
    fn record_chunks(&self, vol: VolumeId, chunks: &[ChunkRef]) -> Result<(), MetaError>;
    /// Applies a transaction atomically and durably, or refuses it; idempotent on (device, txn).
    /// Takes the request whole: it may be handed to a writer thread without a copy.
    fn commit(
        &self,
        vol: VolumeId,
        device: DeviceId,
        req: CommitRequest,
    ) -> Result<CommitOutcome, CommitError>;
    /// Up to `limit` commits after `after`, and the head.
    fn changes(&self, vol: VolumeId, after: Seq, limit: u32) -> Result<ChangesPage, MetaError>;
    /// The volume's head.
    fn head(&self, vol: VolumeId) -> Result<Seq, MetaError>;
    /// The whole tree at one seq, handed to `sink` item by item; `sink` returns false to stop.
    fn snapshot(
        &self,
        vol: VolumeId,
        sink: &mut dyn FnMut(SnapshotItem) -> bool,
    ) -> Result<(), MetaError>;
    /// The user's devices with their cursors in `vol`; `current` is marked.
    fn devices(
        &self,
        user: UserId,
        vol: VolumeId,
        current: DeviceId,
    ) -> Result<Vec<DeviceInfo>, MetaError>;
}
