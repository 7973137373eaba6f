//! What can go wrong while syncing, and whether trying again can help.

use crate::chunking::{ApplyError, DecodeError, ReconstructError};
use crate::drive::DriveError;
use crate::remote::RemoteError;

/// Why a sync step failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Talking to the server failed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// The local drive refused a change.
    #[error("local drive: {0}")]
    Drive(#[from] DriveError),
    /// The sync state database failed.
    #[error("sync state: {0}")]
    State(#[from] rusqlite::Error),
    /// A stored manifest does not decode.
    #[error("stored manifest: {0}")]
    Manifest(#[from] DecodeError),
    /// A write's edit does not apply to the version this device holds.
    #[error("edit does not apply to the stored base: {0}")]
    Edit(#[from] ApplyError),
    /// A file could not be chunked.
    #[error("chunking: {0}")]
    Chunk(#[from] crate::chunking::ChunkError),
    /// Content could not be rebuilt from chunks.
    #[error("rebuilding content: {0}")]
    Reconstruct(#[from] ReconstructError),
    /// Content from the server does not fit its manifest (a chunk of another length than
    /// the manifest says): that file cannot be rebuilt.
    #[error("content does not fit its manifest: {0}")]
    Misfit(String),
    /// The server sent something that contradicts what this device holds.
    #[error("inconsistent change from the server: {0}")]
    Inconsistent(String),
    /// Local I/O on the staging area failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// This state directory belongs to another server or volume.
    #[error("state directory is bound to volume {volume} on {server}")]
    WrongBinding {
        /// The server it is bound to.
        server: String,
        /// The volume it is bound to.
        volume: String,
    },
    /// The sync state was written by a newer deltadrive, whose schema this build cannot read.
    #[error(
        "{}: sync state schema version {found} is newer than this deltadrive knows ({known}); \
         use a newer deltadrive",
        path.display()
    )]
    NewerSchema {
        /// The database file.
        path: std::path::PathBuf,
        /// Its schema version.
        found: i64,
        /// The newest version this build knows.
        known: i64,
    },
}

impl SyncError {
    /// Whether the failure is about one file's content as the server sent it (a chunk the
    /// server does not serve, an answer that does not verify, a chunk that does not fit its
    /// manifest), so that the file can be set aside and the rest go on. Local I/O and a
    /// server that cannot be reached are not: those stop the whole attempt.
    pub fn is_content_fault(&self) -> bool {
        match self {
            SyncError::Reconstruct(e) => match e {
                ReconstructError::Missing { .. }
                | ReconstructError::WrongChunk { .. }
                | ReconstructError::BadChunkLength { .. } => true,
                ReconstructError::ReadBase { .. }
                | ReconstructError::Source { .. }
                | ReconstructError::Write(_) => false,
            },
            SyncError::Remote(RemoteError::NotFound { body, .. }) => !body.chunks.is_empty(),
            SyncError::Remote(e) => matches!(e, RemoteError::Protocol(_)),
            SyncError::Misfit(_) => true,
            SyncError::Drive(_)
            | SyncError::State(_)
            | SyncError::Manifest(_)
            | SyncError::Edit(_)
            | SyncError::Chunk(_)
            | SyncError::Inconsistent(_)
            | SyncError::Io(_)
            | SyncError::WrongBinding { .. }
            | SyncError::NewerSchema { .. } => false,
        }
    }

    /// Whether waiting and trying again may succeed (the network, a busy file).
    pub fn is_retryable(&self) -> bool {
        match self {
            SyncError::Remote(e) => e.is_retryable(),
            SyncError::Drive(DriveError::Busy) => true,
            SyncError::Drive(_)
            | SyncError::State(_)
            | SyncError::Manifest(_)
            | SyncError::Edit(_)
            | SyncError::Reconstruct(_)
            | SyncError::Misfit(_)
            | SyncError::Chunk(_)
            | SyncError::Inconsistent(_)
            | SyncError::Io(_)
            | SyncError::WrongBinding { .. }
            | SyncError::NewerSchema { .. } => false,
        }
    }
}
