//! The storage and management server behind `deltadrive serve`: axum app, authorization,
//! handlers, and the two store traits with their embedded implementations.
//!
//! Layering: this module uses `protocol` and `chunking` only, never `fs`, `drive`, `sync` or
//! `remote`. Handlers see the stores as `dyn MetaStore` and `dyn ChunkStore`.

mod answers;
pub mod auth;
mod bodies;
pub mod chunks;
mod error;
mod handlers;
pub mod hints;
mod listen;
pub mod meta;
mod notify;
mod readers;
mod recent;
pub mod tls;
mod validate;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{MethodRouter, get, post, put};
use tokio::sync::watch;
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::{DefaultPredicate, NotForContentType, Predicate};
use tower_http::decompression::RequestDecompressionLayer;

use crate::protocol::limits::{
    MAX_BATCH_BYTES, MAX_BATCH_CHUNKS, MAX_CHUNK_PAYLOAD, MAX_CHUNK_SIZE, MAX_JSON_BODY,
};
pub use answers::AnswerPool;
pub use bodies::{BODY_GRACE, BODY_MIN_RATE, BodyBudget, DEFAULT_BODY_MEMORY};
pub use chunks::{ChunkStore, ChunkStoreError, PackDirStore, VerifiedPayload};
pub use error::ApiError;
pub use listen::{DEFAULT_MAX_CONNECTIONS, HEADER_TIMEOUT};
pub use meta::{MetaError, MetaStore, SqliteMeta};
pub use notify::Notifier;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// Users, devices, volumes, trees, change logs.
    pub meta: Arc<dyn MetaStore>,
    /// Chunk payloads.
    pub chunks: Arc<dyn ChunkStore>,
    /// Long-poll wake-ups.
    pub notifier: Arc<Notifier>,
    /// Upload hints, in memory.
    pub hints: Arc<hints::Hints>,
    /// Buffers for batched chunk downloads.
    pub answers: Arc<AnswerPool>,
    /// Turns true when the server is shutting down, ending long-polls early.
    pub shutdown: watch::Receiver<bool>,
}

/// The metadata database file inside a data directory.
pub fn meta_path(data: &Path) -> std::path::PathBuf {
    data.join("meta.sqlite")
}

/// The chunk store's root inside a data directory.
pub fn chunks_path(data: &Path) -> std::path::PathBuf {
    data.join("chunks")
}

/// Why the embedded stores could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The metadata store.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// The chunk store.
    #[error(transparent)]
    Chunks(#[from] ChunkStoreError),
}

/// Opens the embedded stores (SQLite + pack directory) in `data`, creating them if new.
pub fn open_embedded(data: &Path) -> Result<(Arc<SqliteMeta>, Arc<PackDirStore>), OpenError> {
    let meta = Arc::new(SqliteMeta::open(&meta_path(data))?);
    let chunks = Arc::new(PackDirStore::open(&chunks_path(data))?);
    fill_chunk_lens(&meta, &chunks)?;
    Ok((meta, chunks))
}

/// Measures the chunks of holdings recorded before lengths were (schema 1), once.
fn fill_chunk_lens(meta: &SqliteMeta, chunks: &PackDirStore) -> Result<(), OpenError> {
    let filled = meta.fill_chunk_lens(|id| -> Result<Option<u32>, OpenError> {
        let payload = match chunks.get(id) {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(None),
            // A corrupt chunk is not served; its holding waits for a device to upload it.
            Err(e @ ChunkStoreError::Corrupt { .. }) => {
                tracing::warn!("{e}");
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        // `get` verified the payload already; this only measures it.
        Ok(
            crate::chunking::payload::check(&payload, *id, MAX_CHUNK_SIZE)
                .ok()
                .and_then(|len| u32::try_from(len).ok()),
        )
    })?;
    if filled > 0 {
        tracing::info!(
            holdings = filled,
            "recorded the lengths of chunks stored before schema 2"
        );
    }
    Ok(())
}

/// How much the server takes on at once.
#[derive(Clone, Copy, Debug)]
pub struct ServeLimits {
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Bytes of request bodies being received or handled at once; more wait.
    pub body_memory: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            body_memory: DEFAULT_BODY_MEMORY,
        }
    }
}

/// `route` taking bodies of at most `limit` bytes (decoded), held within `budget`.
fn with_body(
    route: MethodRouter<AppState>,
    limit: usize,
    budget: &BodyBudget,
) -> MethodRouter<AppState> {
    route
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            bodies::Bounds::new(limit, budget),
            bodies::bound,
        ))
}

/// The HTTP app: /healthz, the /v1 API, JSON errors everywhere, zstd both ways; request bodies
/// share `budget`.
pub fn router(state: AppState, budget: &BodyBudget) -> Router {
    // A batch body: its header, then per entry a 36-byte header and the payload bytes.
    let batch_limit = MAX_BATCH_BYTES + 8 + MAX_BATCH_CHUNKS * 36;
    let json = |route| with_body(route, MAX_JSON_BODY, budget);
    let v1 = Router::new()
        .route("/volumes", get(handlers::volumes))
        .route(
            "/volumes/{vol}/chunks/missing",
            json(post(handlers::missing)),
        )
        .route(
            "/volumes/{vol}/chunks/fetch",
            json(post(handlers::fetch_chunks)),
        )
        .route(
            "/volumes/{vol}/chunks",
            with_body(post(handlers::upload_batch), batch_limit, budget),
        )
        .route(
            "/volumes/{vol}/chunks/{id}",
            with_body(
                put(handlers::put_chunk).get(handlers::get_chunk),
                MAX_CHUNK_PAYLOAD,
                budget,
            ),
        )
        .route("/volumes/{vol}/commit", json(post(handlers::commit)))
        .route("/volumes/{vol}/changes", get(handlers::changes))
        .route(
            "/volumes/{vol}/hints",
            json(get(handlers::hints).post(handlers::post_hints)),
        )
        .route("/volumes/{vol}/snapshot", get(handlers::snapshot))
        .route("/volumes/{vol}/devices", get(handlers::devices))
        .route("/volumes/{vol}/cursor", json(post(handlers::cursor)))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed);
    // Chunk payloads are zstd already (or incompressible): never compress them again.
    let compress_when =
        DefaultPredicate::new().and(NotForContentType::const_new("application/vnd.deltadrive."));
    Router::new()
        .route("/healthz", get(handlers::healthz))
        .nest("/v1", v1)
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        // Limits apply to the decompressed body, so a small zstd bomb is still refused.
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .layer(
            CompressionLayer::new()
                .no_br()
                .no_deflate()
                .no_gzip()
                .compress_when(compress_when),
        )
        .layer(
            RequestDecompressionLayer::new()
                .no_br()
                .no_deflate()
                .no_gzip(),
        )
        .layer(axum::middleware::map_response(json_415))
        // Outermost: sees the body as it came, before decompression.
        .layer(axum::middleware::from_fn(bodies::watch_wire))
        .with_state(state)
}

/// The decompression layer refuses unknown encodings with a bare 415: give it the JSON body
/// every other error has.
async fn json_415(resp: axum::response::Response) -> axum::response::Response {
    use axum::response::IntoResponse;
    if resp.status() == axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE {
        return ApiError::new(
            crate::protocol::ErrorCode::UnsupportedEncoding,
            "only zstd is accepted as Content-Encoding",
        )
        .into_response();
    }
    resp
}

/// Serves `router(state)` on `listener` (HTTPS with `tls`, see [`tls::acceptor`]) within
/// `limits` until `shutdown` completes, then lets in-flight requests finish (long-polls end
/// early through `state.shutdown`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    limits: ServeLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tokio::spawn(crate::allocator::trim_periodically(state.shutdown.clone()));
    let app = router(state, &BodyBudget::new(limits.body_memory));
    listen::run(listener, app, limits.max_connections, tls, shutdown).await
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
