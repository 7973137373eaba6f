//! [`Remote`]: one volume on one server, reached with one device token.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use reqwest::blocking::{Client, Response};
use reqwest::header::{
    ACCEPT_ENCODING, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::batch::UploadBatch;
use super::error::RemoteError;
use super::wire::{
    DecodeError, LimitedSink, Outgoing, StreamError, WireCounters, decode_body, parse_streamed,
};
use crate::chunking::{ChunkId, VerifiedChunk, VerifiedSlice, payload};
use crate::protocol::framing::{self, BATCH_MEDIA_TYPE};
use crate::protocol::limits::{
    MAX_BATCH_BYTES, MAX_BATCH_CHUNKS, MAX_CHANGES_LIMIT, MAX_CHUNK_PAYLOAD, MAX_CHUNK_SIZE,
    MAX_IDS_PER_REQUEST, MAX_JSON_BODY, MAX_OPS_PER_COMMIT, MAX_WAIT_SECS,
};
use crate::protocol::{
    API_PREFIX, AccountName, ChangesResponse, ChunkIdsRequest, CommitRequest, CommitResponse,
    CursorRequest, DeviceInfo, DevicesResponse, ErrorBody, ErrorCode, FileHint, HintRequest,
    HintsResponse, MissingResponse, Seq, SnapshotResponse, UploadResponse, VolumeInfo,
    VolumesResponse,
};

/// Time to open a TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an idle connection is kept for the next request: under the server's 10 s
/// (`server::HEADER_TIMEOUT`, not imported: the client does not depend on the server).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Whole-request time limit of ordinary requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// A long-poll may take its wait plus this much before it counts as lost.
const LONG_POLL_GRACE: Duration = Duration::from_secs(10);
/// Slowest link a full chunk batch is given time for (bytes per second).
const MIN_TRANSFER_RATE: usize = 128 << 10;
/// Whole-request time limit of a snapshot (one answer with the whole tree).
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);
/// Largest JSON answer accepted (decompressed): a changes page is about 8 MiB of ops; a
/// `missing_chunks` refusal may list many ids.
const JSON_ANSWER_LIMIT: usize = 256 << 20;
/// Largest snapshot answer accepted (decompressed).
const SNAPSHOT_ANSWER_LIMIT: usize = 1 << 31;
/// Largest batched-download answer: the server stops before passing MAX_BATCH_BYTES, and one
/// entry always comes, so this can never be reached by a well-behaved server.
const FETCH_ANSWER_LIMIT: usize =
    MAX_BATCH_BYTES + MAX_CHUNK_PAYLOAD + framing::ENTRY_HEADER + framing::BATCH_HEADER;

/// A client of one volume on a `deltadrive serve`, authenticated as one device.
#[derive(Clone)]
pub struct Remote {
    http: Client,
    /// Base URL without a trailing slash, e.g. `http://127.0.0.1:8080`.
    server: String,
    volume: AccountName,
    /// `Bearer TOKEN`, marked sensitive so it never shows in logs.
    auth: HeaderValue,
    wire: Arc<WireCounters>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Remote")
            .field("server", &self.server)
            .field("volume", &self.volume.as_str())
            .finish_non_exhaustive()
    }
}

/// How to reach the server beyond its URL: whom to trust for TLS, and whether plain HTTP to
/// another machine is accepted.
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    /// Trust only the CA certificates in this PEM file (a private CA) instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// Accept a plain `http://` server off loopback, where the token travels in the clear.
    pub insecure_http: bool,
}

/// Checks and normalizes the server's base URL.
fn parse_server(server: &str) -> Result<reqwest::Url, RemoteError> {
    let url = reqwest::Url::parse(server.trim()).map_err(|e| {
        RemoteError::Config(format!(
            "server URL {server:?} is not valid ({e}): give it as https://HOST:PORT"
        ))
    })?;
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(RemoteError::Config(format!(
                "server URL {server:?} has scheme {other:?}: give it as https://HOST:PORT"
            )));
        }
    }
    if url.host_str().is_none()
        || url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(RemoteError::Config(format!(
            "server URL {server:?} must be https://HOST:PORT (or http://), optionally with a \
             path prefix, without user, query or fragment"
        )));
    }
    Ok(url)
}

/// Whether `url` may be used: https always; plain http only to this machine (loopback) unless
/// `insecure_http` accepts the token crossing the network in the clear.
fn check_transport(url: &reqwest::Url, insecure_http: bool) -> Result<(), RemoteError> {
    if url.scheme() == "https" || insecure_http || is_loopback(url) {
        return Ok(());
    }
    Err(RemoteError::PlainHttp {
        server: url.as_str().trim_end_matches('/').to_owned(),
    })
}

/// Whether the URL's host is this machine: 127.0.0.0/8, ::1 or `localhost`.
fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    // An IPv6 host comes in brackets.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => bare.trim_end_matches('.').eq_ignore_ascii_case("localhost"),
    }
}

/// `ids` without repeats, first occurrence kept.
fn unique(ids: &[ChunkId]) -> Vec<ChunkId> {
    let mut seen = HashSet::with_capacity(ids.len());
    ids.iter().copied().filter(|id| seen.insert(*id)).collect()
}

/// Time for a request carrying `bytes` on a slow link.
fn transfer_timeout(bytes: usize) -> Duration {
    REQUEST_TIMEOUT + Duration::from_secs((bytes / MIN_TRANSFER_RATE) as u64)
}

/// An error for a request refused before sending because it is over a protocol limit.
fn too_large(message: String) -> RemoteError {
    RemoteError::TooLarge(Box::new(ErrorBody::new(ErrorCode::TooLarge, message)))
}

impl Remote {
    /// A client of `volume` on the server at `server` (`https://HOST:PORT`, or `http://` on
    /// loopback), with this device token, trusting the system's CAs. Nothing is sent yet; a bad
    /// URL, volume name or token is refused here.
    pub fn new(server: &str, volume: &str, token: &str) -> Result<Remote, RemoteError> {
        Remote::with_options(server, volume, token, &ConnectOptions::default())
    }

    /// [`Remote::new`] with `options`: a private CA, or plain HTTP to another machine.
    pub fn with_options(
        server: &str,
        volume: &str,
        token: &str,
        options: &ConnectOptions,
    ) -> Result<Remote, RemoteError> {
        let url = parse_server(server)?;
        check_transport(&url, options.insecure_http)?;
        let server = url.as_str().trim_end_matches('/').to_owned();
        let volume = AccountName::new(volume).map_err(|e| {
            RemoteError::Config(format!("volume name {volume:?} is not valid: {e}"))
        })?;
        if token.is_empty() {
            return Err(RemoteError::Config(
                "the device token is empty: give the token printed by `deltadrive admin device \
                 add`"
                    .to_owned(),
            ));
        }
        let mut auth = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            RemoteError::Config(
                "the device token holds characters a token never has: check --token-file"
                    .to_owned(),
            )
        })?;
        auth.set_sensitive(true);
        crate::tls::install_provider();
        let mut builder = Client::builder();
        if let Some(path) = &options.ca_file {
            let certs = crate::tls::read_certificates(path)
                .map_err(RemoteError::CaFile)?
                .iter()
                .map(|der| reqwest::Certificate::from_der(der.as_ref()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(RemoteError::Setup)?;
            // Like curl's --cacert: only this CA, so a private server cannot be impersonated
            // by any certificate a public CA would sign.
            builder = builder.tls_certs_only(certs);
        }
        let http = builder
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            // We ask for zstd and decompress ourselves, so the counters see the raw bytes.
            .no_zstd()
            // The server closes connections idle for HEADER_TIMEOUT (10 s): let go of them
            // first, so a request never goes out on one the server is closing.
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            // The protocol never redirects; following one could carry the token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("deltadrive/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(RemoteError::Setup)?;
        Ok(Remote {
            http,
            server,
            volume,
            auth,
            wire: Arc::new(WireCounters::default()),
        })
    }

    /// Reads a device token from a file, trimming surrounding whitespace.
    pub fn token_from_file(path: impl AsRef<Path>) -> Result<String, RemoteError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| RemoteError::TokenFile {
            path: path.to_path_buf(),
            source,
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(RemoteError::Config(format!(
                "token file {} is empty: put this device's token (printed by `deltadrive admin \
                 device add`) in it",
                path.display()
            )));
        }
        if token.split_whitespace().nth(1).is_some() {
            return Err(RemoteError::Config(format!(
                "token file {} holds more than one word: it must hold only this device's token",
                path.display()
            )));
        }
        Ok(token.to_owned())
    }

    /// The server's base URL as used (no trailing slash).
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The volume this client works on.
    pub fn volume(&self) -> &AccountName {
        &self.volume
    }

    /// Body bytes (sent, received) on the wire so far, by this client and its clones.
    pub fn wire_stats(&self) -> (u64, u64) {
        self.wire.get()
    }

    /// The caller's user's volumes, with their heads.
    pub fn volumes(&self) -> Result<Vec<VolumeInfo>, RemoteError> {
        let path = format!("{API_PREFIX}/volumes");
        let answer: VolumesResponse = self.get_json(&path, REQUEST_TIMEOUT, JSON_ANSWER_LIMIT)?;
        Ok(answer.volumes)
    }

    /// Which of `ids` the volume does not hold, in the order asked, without repeats.
    /// Long lists are asked in several requests.
    pub fn missing(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>, RemoteError> {
        let path = self.vol_path("chunks/missing");
        let mut out = Vec::new();
        for batch in unique(ids).chunks(MAX_IDS_PER_REQUEST) {
            let req = ChunkIdsRequest {
                ids: batch.to_vec(),
            };
            let answer: MissingResponse = self.post_json(&path, &req, REQUEST_TIMEOUT)?;
            // Each answered id must be one asked, once.
            let mut asked: HashSet<&ChunkId> = batch.iter().collect();
            if let Some(bad) = answer.missing.iter().find(|id| !asked.remove(id)) {
                return Err(RemoteError::Protocol(format!(
                    "server at {} answered chunks/missing with chunk {bad}, which was not asked \
                     (or named twice)",
                    self.server
                )));
            }
            out.extend(answer.missing);
        }
        Ok(out)
    }

    /// Uploads chunk payloads (in `chunking::payload` format, e.g. from
    /// [`VerifiedChunk::encode`]) in as few batched requests as the limits allow.
    /// Repeated ids are sent once. Returns how many chunks were sent. The payloads may be
    /// owned or borrowed: from a slice of pairs, `pairs.iter().map(|(id, p)| (*id, p))`.
    /// Batches are built as the iterator goes, so at most one batch (32 MiB) is held at once.
    ///
    /// Payloads are not verified here (the server verifies each against its id and refuses the
    /// whole batch, as [`RemoteError::BadRequest`] with code `bad_chunk`, if one is wrong).
    pub fn upload<I, P>(&self, chunks: I) -> Result<usize, RemoteError>
    where
        I: IntoIterator<Item = (ChunkId, P)>,
        P: AsRef<[u8]>,
    {
        let mut seen = HashSet::new();
        let mut batch = UploadBatch::default();
        let mut sent = 0;
        for (id, payload) in chunks {
            let payload = payload.as_ref();
            if !seen.insert(id) {
                continue;
            }
            if payload.len() > MAX_CHUNK_PAYLOAD {
                let mut body = ErrorBody::new(
                    ErrorCode::TooLarge,
                    format!(
                        "chunk {id}: payload of {} bytes is over the limit of {MAX_CHUNK_PAYLOAD}",
                        payload.len()
                    ),
                );
                body.chunks.push(id);
                return Err(RemoteError::TooLarge(Box::new(body)));
            }
            let full = batch.count() == MAX_BATCH_CHUNKS
                || (!batch.is_empty() && batch.would_pass(payload.len(), MAX_BATCH_BYTES));
            if full {
                sent += self.upload_batch(std::mem::take(&mut batch))?;
            }
            batch.push_payload(&id, payload);
        }
        if !batch.is_empty() {
            sent += self.upload_batch(batch)?;
        }
        Ok(sent)
    }

    /// Sends one batch built by the caller, as one request; returns how many chunks went.
    ///
    /// The caller keeps it within the limits ([`MAX_BATCH_CHUNKS`] entries,
    /// [`MAX_BATCH_BYTES`] of body) and sends each chunk once; the server refuses a batch
    /// over them as a whole.
    pub fn upload_batch(&self, batch: UploadBatch) -> Result<usize, RemoteError> {
        let (body, count) = batch.into_body();
        let timeout = transfer_timeout(body.len());
        let path = self.vol_path("chunks");
        let body = Outgoing::raw(body, BATCH_MEDIA_TYPE);
        let answer: UploadResponse =
            self.call_json(Method::POST, &path, Some(body), timeout, JSON_ANSWER_LIMIT)?;
        if answer.stored != count {
            return Err(RemoteError::Protocol(format!(
                "server at {} acknowledged {} of {} uploaded chunks",
                self.server, answer.stored, count
            )));
        }
        Ok(count as usize)
    }

    /// Downloads these chunks, verified, in the order asked (repeated ids once).
    ///
    /// Everything is held in memory: ask for bounded lists, or use [`Remote::fetch_each`].
    /// If the volume lacks some of them: [`RemoteError::NotFound`] naming them in
    /// `body.chunks`.
    pub fn fetch(&self, ids: &[ChunkId]) -> Result<Vec<(ChunkId, VerifiedChunk)>, RemoteError> {
        let mut out = Vec::with_capacity(ids.len());
        self.fetch_each(ids, |chunk| out.push((chunk.id(), chunk.to_owned())))?;
        Ok(out)
    }

    /// Downloads these chunks in the order asked (repeated ids once), handing each to `each`
    /// as soon as it is verified; returns how many were handed over. On an error, the chunks
    /// handed over before it are good and the rest did not come.
    pub fn fetch_each<F>(&self, ids: &[ChunkId], each: F) -> Result<usize, RemoteError>
    where
        F: FnMut(VerifiedSlice<'_>),
    {
        self.fetch_each_buffered(ids, &mut Vec::new(), each)
    }

    /// [`Remote::fetch_each`] reading each batch into `answer`, a buffer the caller keeps from
    /// call to call (a batch is tens of MiB: fresh memory costs a page fault per 4 KiB).
    pub fn fetch_each_buffered<F>(
        &self,
        ids: &[ChunkId],
        answer: &mut Vec<u8>,
        mut each: F,
    ) -> Result<usize, RemoteError>
    where
        F: FnMut(VerifiedSlice<'_>),
    {
        let ids = unique(ids);
        let mut scratch = Vec::new();
        let path = self.vol_path("chunks/fetch");
        let mut rest: &[ChunkId] = &ids;
        let mut done = 0;
        while !rest.is_empty() {
            let ask = &rest[..rest.len().min(MAX_BATCH_CHUNKS)];
            let req = ChunkIdsRequest { ids: ask.to_vec() };
            let (body, _) = self.json_body(&req)?;
            self.call_into(
                Method::POST,
                &path,
                Some(body),
                transfer_timeout(MAX_BATCH_BYTES),
                FETCH_ANSWER_LIMIT,
                answer,
            )?;
            let entries = framing::decode_batch(answer).map_err(|e| {
                RemoteError::Protocol(format!(
                    "server at {} sent a malformed chunk batch: {e}",
                    self.server
                ))
            })?;
            // The answer is a non-empty prefix of what was asked (it stops early when large).
            if entries.is_empty() || entries.len() > ask.len() {
                return Err(RemoteError::Protocol(format!(
                    "server at {} answered a fetch of {} chunks with {}",
                    self.server,
                    ask.len(),
                    entries.len()
                )));
            }
            for ((id, payload), wanted) in entries.iter().zip(ask) {
                if id != wanted {
                    return Err(RemoteError::Protocol(format!(
                        "server at {} sent chunk {id} where {wanted} was asked",
                        self.server
                    )));
                }
                let chunk = payload::decode_into(payload, *wanted, MAX_CHUNK_SIZE, &mut scratch)
                    .map_err(|e| {
                        RemoteError::Protocol(format!(
                            "server at {} sent chunk {wanted} that fails verification: {e}",
                            self.server
                        ))
                    })?;
                each(chunk);
                done += 1;
            }
            rest = &rest[entries.len()..];
        }
        Ok(done)
    }

    /// Sends a difference transaction. A refusal as it stands (stale bases, name taken,
    /// missing chunks, ...) is [`RemoteError::Conflict`] with the server's error body.
    pub fn commit(&self, req: &CommitRequest) -> Result<CommitResponse, RemoteError> {
        if req.ops.len() > MAX_OPS_PER_COMMIT {
            return Err(too_large(format!(
                "commit of {} ops, more than {MAX_OPS_PER_COMMIT}: split it",
                req.ops.len()
            )));
        }
        let path = self.vol_path("commit");
        self.post_json(&path, req, REQUEST_TIMEOUT)
    }

    /// The commits after `after`, oldest first, at most `limit` (clamped to 1..=1000). When
    /// there are none and `wait_secs` > 0, the server holds the request up to `wait_secs`
    /// (at most 60) for one to land. Also records `after` as this device's cursor.
    pub fn changes(
        &self,
        after: Seq,
        wait_secs: u64,
        limit: u32,
    ) -> Result<ChangesResponse, RemoteError> {
        let wait = wait_secs.min(MAX_WAIT_SECS);
        let limit = limit.clamp(1, MAX_CHANGES_LIMIT);
        let path = self.vol_path(&format!(
            "changes?after={}&wait={wait}&limit={limit}",
            after.0
        ));
        // Long-polls get their wait plus a grace; never less than an ordinary request.
        let timeout = REQUEST_TIMEOUT.max(Duration::from_secs(wait) + LONG_POLL_GRACE);
        let page: ChangesResponse = self.get_json(&path, timeout, JSON_ANSWER_LIMIT)?;
        // The engine applies pages in order: a gap or a repeat would corrupt its tree.
        for (i, change) in page.changes.iter().enumerate() {
            if change.seq.0 != after.0 + 1 + i as u64 {
                return Err(RemoteError::Protocol(format!(
                    "server at {} sent change {} at position {i} of a page after {}: the log \
                     must be gapless",
                    self.server, change.seq.0, after.0
                )));
            }
        }
        Ok(page)
    }

    /// The whole tree as of one seq (for a new device); then pull changes after it.
    pub fn snapshot(&self) -> Result<SnapshotResponse, RemoteError> {
        let path = self.vol_path("snapshot");
        self.get_json(&path, SNAPSHOT_TIMEOUT, SNAPSHOT_ANSWER_LIMIT)
    }

    /// The user's devices, with their cursors in this volume (`current` marks this one).
    pub fn devices(&self) -> Result<Vec<DeviceInfo>, RemoteError> {
        let path = self.vol_path("devices");
        let answer: DevicesResponse = self.get_json(&path, REQUEST_TIMEOUT, JSON_ANSWER_LIMIT)?;
        Ok(answer.devices)
    }

    /// Reports how far this device has applied the change log.
    pub fn set_cursor(&self, cursor: Seq) -> Result<(), RemoteError> {
        self.post_json_unanswered(&self.vol_path("cursor"), &CursorRequest { cursor })
    }

    /// Tells the volume's other devices where chunks this device has just uploaded go in
    /// files it is about to commit (at most [`MAX_BATCH_CHUNKS`] chunks in all).
    pub fn post_hints(&self, files: Vec<FileHint>) -> Result<(), RemoteError> {
        self.post_json_unanswered(&self.vol_path("hints"), &HintRequest { files })
    }

    /// The other devices' hints after position `after` (0 at first, then the last answer's
    /// `next`); when there are none, the server holds the request up to `wait_secs`.
    pub fn hints(&self, after: u64, wait_secs: u64) -> Result<HintsResponse, RemoteError> {
        let wait = wait_secs.min(MAX_WAIT_SECS);
        let path = self.vol_path(&format!("hints?after={after}&wait={wait}"));
        let timeout = REQUEST_TIMEOUT.max(Duration::from_secs(wait) + LONG_POLL_GRACE);
        self.get_json(&path, timeout, JSON_ANSWER_LIMIT)
    }

    /// `/v1/volumes/{vol}/{rest}`
    fn vol_path(&self, rest: &str) -> String {
        // Account names are A-Z a-z 0-9 . _ - only: nothing to escape.
        format!("{API_PREFIX}/volumes/{}/{rest}", self.volume.as_str())
    }

    /// A JSON request body, refused locally when over the server's limit.
    fn json_body<T: Serialize>(&self, value: &T) -> Result<(Outgoing, usize), RemoteError> {
        let (body, plain_len) = Outgoing::json(value)
            .map_err(|e| RemoteError::Protocol(format!("cannot encode the request: {e}")))?;
        if plain_len > MAX_JSON_BODY {
            return Err(too_large(format!(
                "request body of {plain_len} bytes is over the protocol's limit of \
                 {MAX_JSON_BODY}: split it"
            )));
        }
        Ok((body, plain_len))
    }

    fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
        timeout: Duration,
        limit: usize,
    ) -> Result<T, RemoteError> {
        self.call_json(Method::GET, path, None, timeout, limit)
    }

    fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<T, RemoteError> {
        let (body, _) = self.json_body(body)?;
        self.call_json(Method::POST, path, Some(body), timeout, JSON_ANSWER_LIMIT)
    }

    /// Posts a JSON body to an endpoint that answers with no body (204).
    fn post_json_unanswered<B: Serialize>(&self, path: &str, body: &B) -> Result<(), RemoteError> {
        let (body, _) = self.json_body(body)?;
        self.call(
            Method::POST,
            path,
            Some(body),
            REQUEST_TIMEOUT,
            JSON_ANSWER_LIMIT,
        )?;
        Ok(())
    }

    /// The error for an answer to `path` over `limit` bytes.
    fn too_large_answer(&self, path: &str, limit: usize) -> RemoteError {
        RemoteError::AnswerTooLarge {
            server: self.server.clone(),
            path: path.to_owned(),
            limit,
        }
    }

    /// One request whose 2xx answer is JSON: parsed as it streams in (decompressed on the
    /// fly), so an answer's text is never held whole and one past `limit` bytes is refused
    /// once the limit is reached. Other answers are read as [`Remote::call`] reads them.
    fn call_json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Outgoing>,
        timeout: Duration,
        limit: usize,
    ) -> Result<T, RemoteError> {
        let (resp, encoding, sent) = self.send(&method, path, body, timeout)?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            // An error body is read whole: never to a snapshot's limit.
            let limit = limit.min(JSON_ANSWER_LIMIT);
            let mut answer = Vec::new();
            self.read_answer(resp, &method, path, encoding, sent, limit, &mut answer)?;
            return Err(self.answer_error(status, &answer));
        }
        let (parsed, seen) = parse_streamed::<T>(resp, encoding.as_deref(), limit);
        self.wire.received(seen);
        tracing::debug!(%method, path, status, sent, received = seen, "remote call");
        parsed.map_err(|e| match e {
            StreamError::TooLarge(limit) => self.too_large_answer(path, limit),
            StreamError::Io(io) => match io.into_inner().map(|e| e.downcast::<reqwest::Error>()) {
                Some(Ok(source)) => RemoteError::network(&self.server, *source),
                Some(Err(other)) => RemoteError::Protocol(format!(
                    "server at {} sent an unreadable answer to {path}: {other}",
                    self.server
                )),
                None => RemoteError::Protocol(format!(
                    "server at {} sent an unreadable answer to {path}",
                    self.server
                )),
            },
            StreamError::Json(_) | StreamError::Encoding(_) => RemoteError::Protocol(format!(
                "server at {} sent a malformed answer to {path}: {e}",
                self.server
            )),
        })
    }

    /// The error for a non-2xx answer with this (decompressed) body.
    fn answer_error(&self, status: u16, answer: &[u8]) -> RemoteError {
        RemoteError::from_answer(&self.server, self.volume.as_str(), status, answer)
    }

    /// One request: sends `body` as it is, reads the raw answer (at most `limit` bytes),
    /// counts both, decompresses, and turns a non-2xx answer into its error.
    fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Outgoing>,
        timeout: Duration,
        limit: usize,
    ) -> Result<Vec<u8>, RemoteError> {
        let mut answer = Vec::new();
        self.call_into(method, path, body, timeout, limit, &mut answer)?;
        Ok(answer)
    }

    /// [`Remote::call`] into a caller's buffer, which keeps its capacity from call to call: a
    /// batch of chunks is tens of MiB, and fresh memory costs a page fault per 4 KiB.
    fn call_into(
        &self,
        method: Method,
        path: &str,
        body: Option<Outgoing>,
        timeout: Duration,
        limit: usize,
        answer: &mut Vec<u8>,
    ) -> Result<(), RemoteError> {
        let (resp, encoding, sent) = self.send(&method, path, body, timeout)?;
        let status = resp.status().as_u16();
        self.read_answer(resp, &method, path, encoding, sent, limit, answer)?;
        if !(200..300).contains(&status) {
            return Err(self.answer_error(status, answer));
        }
        Ok(())
    }

    /// Sends a request; returns the answer (its body unread), its `Content-Encoding`, and the
    /// body bytes sent (counted already).
    fn send(
        &self,
        method: &Method,
        path: &str,
        body: Option<Outgoing>,
        timeout: Duration,
    ) -> Result<(Response, Option<String>, usize), RemoteError> {
        let url = format!("{}{path}", self.server);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .header(AUTHORIZATION, self.auth.clone())
            .header(ACCEPT_ENCODING, "zstd")
            .timeout(timeout);
        let mut sent = 0;
        if let Some(body) = body {
            req = req.header(CONTENT_TYPE, body.content_type);
            if body.zstd {
                req = req.header(CONTENT_ENCODING, "zstd");
            }
            sent = body.bytes.len();
            req = req.body(body.bytes);
        }
        // Counted when handed over: a request that fails midway may still have used the link.
        self.wire.sent(sent);
        let resp = req
            .send()
            .map_err(|source| RemoteError::network(&self.server, source))?;
        let encoding = match resp.headers().get(CONTENT_ENCODING) {
            None => None,
            Some(v) => Some(v.to_str().map(str::to_owned).map_err(|_| {
                RemoteError::Protocol(format!(
                    "server at {} sent an unreadable Content-Encoding",
                    self.server
                ))
            })?),
        };
        Ok((resp, encoding, sent))
    }

    /// Reads a whole answer into `answer` (at most `limit` bytes, raw and decompressed) and
    /// counts it.
    #[allow(clippy::too_many_arguments)]
    fn read_answer(
        &self,
        mut resp: Response,
        method: &Method,
        path: &str,
        encoding: Option<String>,
        sent: usize,
        limit: usize,
        answer: &mut Vec<u8>,
    ) -> Result<(), RemoteError> {
        let status = resp.status().as_u16();
        let expected = resp.content_length();
        let mut sink = LimitedSink::new(answer, limit, expected);
        let copied = resp.copy_to(&mut sink);
        let (seen, overflowed) = (sink.seen, sink.overflowed);
        self.wire.received(seen);
        tracing::debug!(%method, path, status, sent, received = seen, "remote call");
        if overflowed {
            return Err(self.too_large_answer(path, limit));
        }
        copied.map_err(|source| RemoteError::network(&self.server, source))?;
        *answer =
            decode_body(std::mem::take(answer), encoding.as_deref(), limit).map_err(
                |e| match e {
                    DecodeError::TooLarge(limit) => self.too_large_answer(path, limit),
                    DecodeError::Encoding(_) | DecodeError::Zstd(_) => {
                        RemoteError::Protocol(format!(
                            "server at {} sent an unreadable answer to {path}: {e}",
                            self.server
                        ))
                    }
                },
            )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_are_checked_and_normalized() {
        let base = |url: &str| {
            Remote::with_options(
                url,
                "docs",
                "t",
                &ConnectOptions {
                    insecure_http: true,
                    ..ConnectOptions::default()
                },
            )
            .map(|r| r.server().to_owned())
        };
        assert_eq!(
            base("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            base("http://host:1/prefix/").unwrap(),
            "http://host:1/prefix"
        );
        assert_eq!(base("https://host:1/").unwrap(), "https://host:1");
        for bad in [
            "127.0.0.1:8080",
            "ftp://host",
            "http://u:p@host",
            "http://host/?q=1",
            "",
        ] {
            assert!(
                matches!(parse_server(bad), Err(RemoteError::Config(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn plain_http_is_for_loopback_only_unless_accepted() {
        let allowed = |url: &str, insecure: bool| {
            check_transport(&parse_server(url).unwrap(), insecure).is_ok()
        };
        for here in [
            "http://127.0.0.1:1",
            "http://127.8.9.10:1",
            "http://[::1]:1",
            "http://localhost:1",
            "http://LOCALHOST.:1",
        ] {
            assert!(allowed(here, false), "{here}");
        }
        for away in [
            "http://192.0.2.1:1",
            "http://10.0.0.1:1",
            "http://[2001:db8::1]:1",
            "http://example.com:1",
            "http://localhost.example.com:1",
            "http://0.0.0.0:1",
        ] {
            assert!(!allowed(away, false), "{away}");
            assert!(allowed(away, true), "{away} with --insecure-http");
        }
        assert!(allowed("https://example.com", false));
        let refused = Remote::new("http://192.0.2.1:1", "docs", "t").unwrap_err();
        assert!(matches!(refused, RemoteError::PlainHttp { .. }));
        let line = refused.to_string();
        assert!(
            line.contains("in the clear")
                && line.contains("--insecure-http")
                && !line.contains('\n'),
            "{line}"
        );
    }

    #[test]
    fn construction_refuses_bad_volume_and_token() {
        let ok = Remote::new("http://127.0.0.1:1", "docs", "ddt_abc").unwrap();
        assert_eq!(ok.volume().as_str(), "docs");
        assert!(
            !format!("{ok:?}").contains("ddt_abc"),
            "the token never shows"
        );
        assert!(matches!(
            Remote::new("http://127.0.0.1:1", "a/b", "t"),
            Err(RemoteError::Config(_))
        ));
        assert!(matches!(
            Remote::new("http://127.0.0.1:1", "docs", ""),
            Err(RemoteError::Config(_))
        ));
        assert!(matches!(
            Remote::new("http://127.0.0.1:1", "docs", "a\nb"),
            Err(RemoteError::Config(_))
        ));
    }

    #[test]
    fn unique_keeps_first_occurrences_in_order() {
        let (a, b) = (ChunkId::of(b"a"), ChunkId::of(b"b"));
        assert_eq!(unique(&[a, b, a, b, a]), vec![a, b]);
    }
}
