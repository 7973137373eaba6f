//! The /v1 endpoints: each authenticates, resolves the volume, then calls the stores.

use std::collections::HashSet;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::AppState;
use super::auth::Caller;
use super::chunks::VerifiedPayload;
use super::error::{ApiError, blocking};
use super::hints::HintError;
use super::meta::{ChangesPage, CommitOutcome, SnapshotItem, VolumeAccess, VolumeId};
use super::validate::{check_ops, parse_commit, parse_json};
use crate::chunking::{ChunkId, ChunkRef};
use crate::protocol::framing::{self, BATCH_MEDIA_TYPE, CHUNK_MEDIA_TYPE};
use crate::protocol::limits::{
    DEFAULT_CHANGES_LIMIT, MAX_BATCH_BYTES, MAX_BATCH_CHUNKS, MAX_CHANGES_LIMIT, MAX_CHUNK_PAYLOAD,
    MAX_IDS_PER_REQUEST, MAX_WAIT_SECS,
};
use crate::protocol::{
    AccountName, ChangesQuery, ChunkIdsRequest, CommitResponse, CursorRequest, DevicesResponse,
    ErrorCode, HintRequest, HintsQuery, HintsResponse, MissingResponse, Seq, UploadResponse,
    VolumesResponse,
};

/// Snapshot bodies are sent in pieces of about this size.
const SNAPSHOT_PIECE: usize = 64 << 10;

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorCode::TooLarge,
                "request body is over this endpoint's limit",
            )
        } else {
            ApiError::new(ErrorCode::BadRequest, r.body_text())
        }
    })
}

fn path_param<T>(p: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    p.map(|Path(v)| v)
        .map_err(|r| ApiError::new(ErrorCode::BadRequest, r.body_text()))
}

fn parse_chunk_id(s: &str) -> Result<ChunkId, ApiError> {
    s.parse()
        .map_err(|_| ApiError::new(ErrorCode::BadRequest, format!("{s:?} is not a chunk id")))
}

/// The caller's volume called `name`: 404 if none has that name, 403 if another user's.
async fn volume(state: &AppState, caller: &Caller, name: &str) -> Result<VolumeId, ApiError> {
    let not_found = || ApiError::new(ErrorCode::NotFound, format!("no volume {name:?}"));
    let Ok(name) = AccountName::new(name) else {
        return Err(not_found());
    };
    let meta = state.meta.clone();
    let user = caller.0.user;
    let access = blocking(move || Ok(meta.resolve_volume(user, &name)?)).await?;
    match access {
        VolumeAccess::Granted(vol) => Ok(vol),
        VolumeAccess::Forbidden => Err(ApiError::new(
            ErrorCode::Forbidden,
            "this volume belongs to another user",
        )),
        VolumeAccess::NotFound => Err(not_found()),
    }
}

/// `GET /healthz`.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Any unknown path.
pub async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint")
}

/// A known path with the wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this endpoint",
    )
}

/// `GET /v1/volumes`.
pub async fn volumes(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<VolumesResponse>, ApiError> {
    let meta = state.meta.clone();
    let user = caller.0.user;
    let volumes = blocking(move || Ok(meta.user_volumes(user)?)).await?;
    Ok(Json(VolumesResponse { volumes }))
}

/// The caller's volume named in the path, then the JSON body: how every JSON `POST` under a
/// volume starts.
async fn volume_and_json<T: DeserializeOwned>(
    state: &AppState,
    caller: &Caller,
    vol: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(VolumeId, T), ApiError> {
    let vol = volume(state, caller, &path_param(vol)?).await?;
    Ok((vol, parse_json(&body_bytes(body)?)?))
}

/// `POST /v1/volumes/{vol}/chunks/missing`.
pub async fn missing(
    State(state): State<AppState>,
    caller: Caller,
    vol: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<MissingResponse>, ApiError> {
    let (vol, req): (VolumeId, ChunkIdsRequest) =
        volume_and_json(&state, &caller, vol, body).await?;
    if req.ids.len() > MAX_IDS_PER_REQUEST {
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!("{} ids, more than {MAX_IDS_PER_REQUEST}", req.ids.len()),
        ));
    }
    let meta = state.meta.clone();
    let missing = blocking(move || Ok(meta.missing_chunks(vol, &req.ids)?)).await?;
    Ok(Json(MissingResponse { missing }))
}

/// Verifies every payload, then stores those the volume does not hold yet and records the
/// volume's holdings; a bad payload refuses the whole request before anything is stored.
///
/// Whether another volume (another user's) stores a chunk never changes the work done: the
/// chunk store writes every payload it is handed, so the time an upload takes tells nothing
/// about other users' data (docs/PROTOCOL.md, "Privacy").
async fn store_chunks(
    state: &AppState,
    vol: VolumeId,
    entries: Vec<(ChunkId, Bytes)>,
) -> Result<u32, ApiError> {
    let chunks = state.chunks.clone();
    let meta = state.meta.clone();
    blocking(move || {
        let started = std::time::Instant::now();
        let mut verified = Vec::with_capacity(entries.len());
        for (id, payload) in entries {
            let v =
                VerifiedPayload::verify(id, payload).map_err(|e| ApiError::bad_chunk(id, &e))?;
            verified.push(v);
        }
        let received = u32::try_from(verified.len()).unwrap_or(u32::MAX);
        let ids: Vec<ChunkId> = verified.iter().map(VerifiedPayload::id).collect();
        // What this volume holds is the uploader's own business; the rest is written.
        let missing: HashSet<ChunkId> = meta.missing_chunks(vol, &ids)?.into_iter().collect();
        let mut seen = HashSet::with_capacity(missing.len());
        verified.retain(|v| missing.contains(&v.id()) && seen.insert(v.id()));
        let refs: Vec<ChunkRef> = verified.iter().map(VerifiedPayload::chunk_ref).collect();
        let verified_at = started.elapsed();
        // Chunk bytes durable first, then the holding: a holding never names absent bytes.
        if !verified.is_empty() {
            chunks.put(verified)?;
        }
        let stored_at = started.elapsed();
        meta.record_chunks(vol, &refs)?;
        tracing::debug!(
            chunks = received,
            written = refs.len(),
            verify_ms = verified_at.as_millis() as u64,
            store_ms = (stored_at - verified_at).as_millis() as u64,
            record_ms = (started.elapsed() - stored_at).as_millis() as u64,
            "chunks stored"
        );
        Ok(received)
    })
    .await
}

/// `PUT /v1/volumes/{vol}/chunks/{id}`: body is one chunk payload.
pub async fn put_chunk(
    State(state): State<AppState>,
    caller: Caller,
    params: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let (vol, id) = path_param(params)?;
    let vol = volume(&state, &caller, &vol).await?;
    let id = parse_chunk_id(&id)?;
    let payload = body_bytes(body)?;
    store_chunks(&state, vol, vec![(id, payload)]).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/volumes/{vol}/chunks`: body is a framed batch of payloads.
pub async fn upload_batch(
    State(state): State<AppState>,
    caller: Caller,
    vol: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<UploadResponse>, ApiError> {
    let vol = volume(&state, &caller, &path_param(vol)?).await?;
    let body = body_bytes(body)?;
    let entries: Vec<(ChunkId, Bytes)> = framing::decode_batch(&body)?
        .into_iter()
        .map(|(id, payload)| (id, body.slice_ref(payload)))
        .collect();
    let stored = store_chunks(&state, vol, entries).await?;
    Ok(Json(UploadResponse { stored }))
}

fn not_held(ids: Vec<ChunkId>) -> ApiError {
    let mut err = ApiError::new(
        ErrorCode::NotFound,
        format!("{} chunk(s) are not held by this volume", ids.len()),
    );
    err.0.chunks = ids;
    err
}

/// `GET /v1/volumes/{vol}/chunks/{id}`: the payload as stored.
pub async fn get_chunk(
    State(state): State<AppState>,
    caller: Caller,
    params: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (vol, id) = path_param(params)?;
    let vol = volume(&state, &caller, &vol).await?;
    let id = parse_chunk_id(&id)?;
    let (meta, chunks) = (state.meta.clone(), state.chunks.clone());
    let payload = blocking(move || {
        // Only this volume's holdings answer: no word about chunks other users hold.
        if !meta.missing_chunks(vol, &[id])?.is_empty() {
            return Err(not_held(vec![id]));
        }
        chunks.get(&id)?.ok_or_else(|| {
            tracing::error!(%id, "volume holds a chunk the store lacks");
            ApiError::new(
                ErrorCode::Internal,
                format!("chunk {id} is missing from the store"),
            )
        })
    })
    .await?;
    Ok(([(CONTENT_TYPE, CHUNK_MEDIA_TYPE)], payload).into_response())
}

/// `POST /v1/volumes/{vol}/chunks/fetch`: a framed batch of the asked payloads, in order;
/// it stops early (at least one entry) once it reaches [`MAX_BATCH_BYTES`].
pub async fn fetch_chunks(
    State(state): State<AppState>,
    caller: Caller,
    vol: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (vol, req): (VolumeId, ChunkIdsRequest) =
        volume_and_json(&state, &caller, vol, body).await?;
    if req.ids.len() > MAX_BATCH_CHUNKS {
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!("{} ids, more than {MAX_BATCH_CHUNKS}", req.ids.len()),
        ));
    }
    let (meta, chunks, answers) = (
        state.meta.clone(),
        state.chunks.clone(),
        state.answers.clone(),
    );
    let body = blocking(move || {
        let missing = meta.missing_chunks(vol, &req.ids)?;
        if !missing.is_empty() {
            return Err(not_held(missing));
        }
        let mut out = answers.take();
        framing::write_batch_header(&mut out, 0);
        // Room for the whole answer up front (pages are only touched as it fills), so it is
        // never copied while it grows.
        out.reserve(
            (MAX_BATCH_BYTES + MAX_CHUNK_PAYLOAD)
                .min(req.ids.len() * (framing::ENTRY_HEADER + MAX_CHUNK_PAYLOAD)),
        );
        let mut count = 0u32;
        for id in &req.ids {
            // Read straight into the answer: no copy of each payload on the way.
            let mark = framing::begin_entry(&mut out, id);
            if !chunks.append(id, &mut out)? {
                tracing::error!(%id, "volume holds a chunk the store lacks");
                return Err(ApiError::new(
                    ErrorCode::Internal,
                    format!("chunk {id} is missing from the store"),
                ));
            }
            if count > 0 && out.len() > MAX_BATCH_BYTES {
                out.truncate(mark);
                break;
            }
            framing::end_entry(&mut out, mark);
            count += 1;
        }
        out[4..8].copy_from_slice(&count.to_be_bytes());
        Ok(answers.into_bytes(out))
    })
    .await?;
    Ok(([(CONTENT_TYPE, BATCH_MEDIA_TYPE)], body).into_response())
}

/// `POST /v1/volumes/{vol}/commit`.
pub async fn commit(
    State(state): State<AppState>,
    caller: Caller,
    vol: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<CommitResponse>, ApiError> {
    let vol = volume(&state, &caller, &path_param(vol)?).await?;
    let started = std::time::Instant::now();
    let body = body_bytes(body)?;
    let req = parse_commit(&body)?;
    // Parsed: the body's memory is not needed while the commit waits for the writer.
    drop(body);
    check_ops(&req)?;
    let parsed = started.elapsed();
    let meta = state.meta.clone();
    let device = caller.0.device;
    let txn = req.txn;
    let outcome = blocking(move || Ok(meta.commit(vol, device, req)?)).await?;
    Ok(Json(match outcome {
        CommitOutcome::Applied(seq) => {
            tracing::debug!(
                vol = vol.0,
                seq = seq.0,
                %txn,
                parse_ms = parsed.as_millis() as u64,
                ms = started.elapsed().as_millis() as u64,
                "commit applied"
            );
            state.notifier.committed(vol, seq);
            CommitResponse {
                seq,
                replayed: false,
            }
        }
        CommitOutcome::Replayed(seq) => CommitResponse {
            seq,
            replayed: true,
        },
    }))
}

async fn changes_page(
    state: &AppState,
    vol: VolumeId,
    after: Seq,
    limit: u32,
) -> Result<ChangesPage, ApiError> {
    let meta = state.meta.clone();
    blocking(move || Ok(meta.changes(vol, after, limit)?)).await
}

/// `GET /v1/volumes/{vol}/changes?after=N&wait=S&limit=L`, long-polling up to S seconds.
pub async fn changes(
    State(state): State<AppState>,
    caller: Caller,
    vol: Result<Path<String>, PathRejection>,
    query: Result<Query<ChangesQuery>, QueryRejection>,
) -> Result<Json<ChangesPage>, ApiError> {
    let vol = volume(&state, &caller, &path_param(vol)?).await?;
    let Query(q) = query.map_err(|r| ApiError::new(ErrorCode::BadRequest, r.body_text()))?;
    let after = Seq(q.after);
    let wait = Duration::from_secs(q.wait.unwrap_or(0).min(MAX_WAIT_SECS));
    let limit = q
        .limit
        .unwrap_or(DEFAULT_CHANGES_LIMIT)
        .clamp(1, MAX_CHANGES_LIMIT);
    state
        .meta
        .note_activity(caller.0.device, super::now_ms(), Some((vol, after)))?;
    // Subscribe before reading, so a commit landing in between still wakes us.
    let mut heads = state.notifier.subscribe(vol);
    let page = changes_page(&state, vol, after, limit).await?;
    if !page.changes.is_empty() || wait.is_zero() || after > page.head {
        return Ok(Json(page));
    }
    let mut shutdown = state.shutdown.clone();
    let deadline = tokio::time::Instant::now() + wait;
    while news(&mut heads, deadline, &mut shutdown).await {
        let page = changes_page(&state, vol, after, limit).await?;
        if !page.changes.is_empty() {
            return Ok(Json(page));
        }
    }
    Ok(Json(changes_page(&state, vol, after, limit).await?))
}

/// `POST /v1/volumes/{vol}/hints`: where chunks just uploaded go in files about to be
/// committed (kept in memory for the volume's other devices; see `server::hints`).
pub async fn post_hints(
    State(state): State<AppState>,
    caller: Caller,
    vol: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let (vol, req): (VolumeId, HintRequest) = volume_and_json(&state, &caller, vol, body).await?;
    super::hints::check(&req.files).map_err(|e| {
        let code = match e {
            HintError::TooMany(_) => ErrorCode::TooLarge,
            HintError::BadChunk { .. } => ErrorCode::BadRequest,
        };
        ApiError::new(code, e.to_string())
    })?;
    state.hints.post(vol, caller.0.device, req.files);
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/volumes/{vol}/hints?after=N&wait=S`: the other devices' hints after `N`,
/// long-polling up to S seconds for one.
pub async fn hints(
    State(state): State<AppState>,
    caller: Caller,
    vol: Result<Path<String>, PathRejection>,
    query: Result<Query<HintsQuery>, QueryRejection>,
) -> Result<Json<HintsResponse>, ApiError> {
    let vol = volume(&state, &caller, &path_param(vol)?).await?;
    let Query(q) = query.map_err(|r| ApiError::new(ErrorCode::BadRequest, r.body_text()))?;
    let wait = Duration::from_secs(q.wait.unwrap_or(0).min(MAX_WAIT_SECS));
    let device = caller.0.device;
    // Subscribe before reading, so a hint posted in between still wakes us.
    let mut heads = state.hints.subscribe(vol);
    let mut page = state.hints.after(vol, device, q.after);
    let mut shutdown = state.shutdown.clone();
    let deadline = tokio::time::Instant::now() + wait;
    while page.files.is_empty()
        && !wait.is_zero()
        && news(&mut heads, deadline, &mut shutdown).await
    {
        page = state.hints.after(vol, device, page.next);
    }
    Ok(Json(page))
}

/// A long-poll's wait: true once `heads` changed; false at `deadline`, when the server
/// shuts down, or when nothing can change `heads` any more.
async fn news<T>(
    heads: &mut tokio::sync::watch::Receiver<T>,
    deadline: tokio::time::Instant,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    if *shutdown.borrow() {
        return false;
    }
    tokio::select! {
        changed = heads.changed() => changed.is_ok(),
        () = tokio::time::sleep_until(deadline) => false,
        _ = shutdown.changed() => false,
    }
}

/// `GET /v1/volumes/{vol}/snapshot`: streamed `{"seq": N, "nodes": [...]}` from one read
/// transaction, so every node is as of `seq` however long the volume.
pub async fn snapshot(
    State(state): State<AppState>,
    caller: Caller,
    vol: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let vol = volume(&state, &caller, &path_param(vol)?).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let meta = state.meta.clone();
    tokio::task::spawn_blocking(move || {
        let mut buf: Vec<u8> = Vec::with_capacity(SNAPSHOT_PIECE * 2);
        let mut first = true;
        let result = meta.snapshot(vol, &mut |item| {
            match item {
                SnapshotItem::Seq(seq) => {
                    buf.extend_from_slice(format!("{{\"seq\":{},\"nodes\":[", seq.0).as_bytes());
                }
                SnapshotItem::Node(node) => {
                    if !first {
                        buf.push(b',');
                    }
                    first = false;
                    if let Err(e) = serde_json::to_writer(&mut buf, &node) {
                        tracing::error!(error = %e, "cannot encode snapshot node");
                        let _ = tx.blocking_send(Err(std::io::Error::other(e)));
                        return false;
                    }
                }
            }
            if buf.len() >= SNAPSHOT_PIECE {
                let piece = Bytes::from(std::mem::take(&mut buf));
                // A closed channel means the client went away: stop reading.
                return tx.blocking_send(Ok(piece)).is_ok();
            }
            true
        });
        match result {
            Ok(()) => {
                buf.extend_from_slice(b"]}");
                let _ = tx.blocking_send(Ok(Bytes::from(buf)));
            }
            Err(e) => {
                tracing::error!(error = %e, "snapshot failed");
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        }
    });
    let mut rx = rx;
    // poll_fn over the receiver stays Ready(None) once closed, however often it is polled.
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    Ok((
        [(CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// `GET /v1/volumes/{vol}/devices`.
pub async fn devices(
    State(state): State<AppState>,
    caller: Caller,
    vol: Result<Path<String>, PathRejection>,
) -> Result<Json<DevicesResponse>, ApiError> {
    let vol = volume(&state, &caller, &path_param(vol)?).await?;
    let meta = state.meta.clone();
    let (user, device) = (caller.0.user, caller.0.device);
    let devices = blocking(move || Ok(meta.devices(user, vol, device)?)).await?;
    Ok(Json(DevicesResponse { devices }))
}

/// `POST /v1/volumes/{vol}/cursor`.
pub async fn cursor(
    State(state): State<AppState>,
    caller: Caller,
    vol: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let (vol, req): (VolumeId, CursorRequest) = volume_and_json(&state, &caller, vol, body).await?;
    state
        .meta
        .note_activity(caller.0.device, super::now_ms(), Some((vol, req.cursor)))?;
    Ok(StatusCode::NO_CONTENT)
}
