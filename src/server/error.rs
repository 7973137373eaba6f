//! The API's one error type: every failure below maps to an [`ErrorCode`], exhaustively.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::chunks::ChunkStoreError;
use super::meta::{CommitError, MetaError, Refusal, RefusalKind};
use crate::chunking::{ChunkId, PayloadError};
use crate::protocol::framing::FrameError;
use crate::protocol::{ErrorBody, ErrorCode};

/// An error answer: status from its code, JSON body.
#[derive(Debug)]
pub struct ApiError(pub Box<ErrorBody>);

impl ApiError {
    /// An error with a code and a message only.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self(Box::new(ErrorBody::new(code, message)))
    }

    /// The same error, about op number `op` of a commit.
    pub fn at_op(mut self, op: usize) -> Self {
        self.0.op = u32::try_from(op).ok();
        self
    }

    /// A chunk payload that failed verification.
    pub fn bad_chunk(id: ChunkId, e: &PayloadError) -> Self {
        let code = match e {
            PayloadError::TooLarge { .. } => ErrorCode::TooLarge,
            PayloadError::Empty
            | PayloadError::UnknownTag(_)
            | PayloadError::Zstd(_)
            | PayloadError::HashMismatch { .. } => ErrorCode::BadChunk,
        };
        let mut err = Self::new(code, format!("chunk {id}: {e}"));
        err.0.chunks.push(id);
        err
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(*self.0)).into_response()
    }
}

impl From<MetaError> for ApiError {
    fn from(e: MetaError) -> Self {
        let code = if e.retryable() {
            ErrorCode::Unavailable
        } else {
            ErrorCode::Internal
        };
        tracing::error!(error = %e, "metadata store failed");
        ApiError::new(code, format!("metadata store: {e}"))
    }
}

impl From<ChunkStoreError> for ApiError {
    fn from(e: ChunkStoreError) -> Self {
        tracing::error!(error = %e, "chunk store failed");
        let code = if e.retryable() {
            ErrorCode::Unavailable
        } else {
            ErrorCode::Internal
        };
        ApiError::new(code, format!("chunk store: {e}"))
    }
}

impl From<FrameError> for ApiError {
    fn from(e: FrameError) -> Self {
        let code = match e {
            FrameError::TooManyChunks { .. } | FrameError::PayloadTooLarge { .. } => {
                ErrorCode::TooLarge
            }
            FrameError::BadMagic | FrameError::Truncated | FrameError::TrailingBytes(_) => {
                ErrorCode::BadRequest
            }
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<CommitError> for ApiError {
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::Store(e) => e.into(),
            CommitError::Refused(r) => r.into(),
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        let mut body = ErrorBody::new(ErrorCode::Internal, r.message);
        body.op = r.op;
        body.code = match r.kind {
            RefusalKind::Stale(stale) => {
                body.stale = stale;
                ErrorCode::Stale
            }
            RefusalKind::NameTaken(holder) => {
                body.node = Some(holder);
                ErrorCode::NameTaken
            }
            RefusalKind::Cycle(node) => {
                body.node = Some(node);
                ErrorCode::Cycle
            }
            RefusalKind::MissingParent(node) => {
                body.node = Some(node);
                ErrorCode::MissingParent
            }
            RefusalKind::MissingNode(node) => {
                body.node = Some(node);
                ErrorCode::MissingNode
            }
            RefusalKind::NodeExists(node) => {
                body.node = Some(node);
                ErrorCode::NodeExists
            }
            RefusalKind::NotEmpty(dir, children) => {
                body.node = Some(dir);
                body.nodes = children;
                ErrorCode::NotEmpty
            }
            RefusalKind::MissingChunks(chunks) => {
                body.chunks = chunks;
                ErrorCode::MissingChunks
            }
            RefusalKind::TxnReused => ErrorCode::TxnReused,
            RefusalKind::NotADirectory(node) => {
                body.node = Some(node);
                ErrorCode::NotADirectory
            }
            RefusalKind::BadOp => ErrorCode::BadOp,
            RefusalKind::BadManifest => ErrorCode::BadManifest,
        };
        ApiError(Box::new(body))
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        tracing::error!(error = %e, "blocking task failed");
        ApiError::new(ErrorCode::Internal, "internal task failed")
    }
}

/// Runs blocking store work off the async threads.
pub async fn blocking<T, F>(f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await?
}
