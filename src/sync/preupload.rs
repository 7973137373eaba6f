//! Sending new chunks while the scan cuts them: their bytes are read and hashed once, and the
//! network and the server work while the rest of a large file is still being cut.
//!
//! Only whole batches go early; what is left when the scan ends (a small edit, the tail of a
//! large file) goes with the push, which asks the server what it lacks of the rest. A failed
//! or refused early upload costs nothing but the attempt. What it does learn (chunks the
//! server said it holds, or stored and answered for) is handed to that same cycle's push, so
//! a large file's chunks are not asked about twice; the commit still checks every one.
//!
//! Each batch sent is followed by a hint (where its chunks go in their files), so the
//! volume's other devices can fetch a large file while it is still uploading.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::Scope;

use crate::chunking::{ChunkId, ChunkRef};
use crate::protocol::limits::MAX_BATCH_CHUNKS;
use crate::protocol::{FileHint, NodeId, PlacedChunk};
use crate::remote::{Remote, UploadBatch};

use super::push::{QUEUED, SENDERS, UPLOAD_BATCH_BYTES, ZSTD_LEVEL};

/// Only files reaching this far are hinted: a smaller one arrives with its commit about as
/// fast (small files are fetched many to a request), and is not worth a staged file.
const HINT_FROM: u64 = 8 << 20;

/// Raw chunks waiting to be sent, at most one upload request's worth, their bytes end to end
/// in one buffer.
#[derive(Default)]
struct Batch {
    chunks: Vec<Cut>,
    data: Vec<u8>,
}

/// One chunk of a batch: where its bytes are in the batch, and where it goes in its file.
struct Cut {
    chunk: ChunkRef,
    bytes: Range<usize>,
    node: NodeId,
    offset: u64,
}

/// What the sender threads share with the scan.
struct Shared<'e> {
    remote: &'e Remote,
    rx: Mutex<Receiver<Batch>>,
    failed: AtomicBool,
    /// Hints stop at the first failure (a server without them answers 404).
    unhinted: AtomicBool,
    held: Mutex<HashSet<ChunkId>>,
}

/// The scan's side: collects new chunks and hands full batches to the senders, started
/// with the first full batch (most scans cut too little for one and start none).
pub struct Early<'s, 'e> {
    scope: &'s Scope<'s, 'e>,
    shared: &'e Shared<'e>,
    senders_started: bool,
    tx: Option<SyncSender<Batch>>,
    batch: Batch,
    seen: HashSet<ChunkId>,
}

impl Early<'_, '_> {
    /// A chunk just cut, with its file, its offset there and its bytes.
    pub fn offer(&mut self, node: NodeId, offset: u64, chunk: ChunkRef, bytes: &[u8]) {
        if self.shared.failed.load(Ordering::Relaxed) || !self.seen.insert(chunk.id) {
            return;
        }
        let batch = &mut self.batch;
        if batch.data.capacity() == 0 {
            batch.data.reserve(UPLOAD_BATCH_BYTES);
        }
        let at = batch.data.len();
        batch.data.extend_from_slice(bytes);
        batch.chunks.push(Cut {
            chunk,
            bytes: at..batch.data.len(),
            node,
            offset,
        });
        if batch.chunks.len() == MAX_BATCH_CHUNKS || batch.data.len() >= UPLOAD_BATCH_BYTES {
            if !self.senders_started {
                self.senders_started = true;
                for _ in 0..SENDERS {
                    let shared = self.shared;
                    self.scope.spawn(move || send_batches(shared));
                }
            }
            let full = std::mem::take(&mut self.batch);
            if let Some(tx) = &self.tx
                && tx.send(full).is_err()
            {
                self.tx = None;
            }
        }
    }
}

/// Runs `scan` with an [`Early`] whose full batches are sent as it goes (the chunks the
/// server lacks, compressed, [`SENDERS`] requests in flight), and waits for them to be sent.
/// Also returns the chunks the server holds by its own answers.
pub fn with_early_upload<R>(
    remote: &Remote,
    scan: impl FnOnce(&mut Early<'_, '_>) -> R,
) -> (R, HashSet<ChunkId>) {
    let (tx, rx) = sync_channel::<Batch>(QUEUED);
    let shared = Shared {
        remote,
        rx: Mutex::new(rx),
        failed: AtomicBool::new(false),
        unhinted: AtomicBool::new(false),
        held: Mutex::new(HashSet::new()),
    };
    let out = std::thread::scope(|scope| {
        let mut early = Early {
            scope,
            shared: &shared,
            senders_started: false,
            tx: Some(tx),
            batch: Batch::default(),
            seen: HashSet::new(),
        };
        // The senders end once the channel closes, when `early` (and its sender) is dropped.
        scan(&mut early)
    });
    let held = shared.held.into_inner();
    (out, held.unwrap_or_else(PoisonError::into_inner))
}

fn send_batches(shared: &Shared<'_>) {
    let Shared {
        remote,
        rx,
        failed,
        unhinted,
        held,
    } = shared;
    loop {
        let batch = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(batch) = batch else { return };
        if failed.load(Ordering::Relaxed) {
            continue; // drain, so the scan never blocks on a full channel
        }
        match send(remote, batch, unhinted) {
            Ok(ids) => held
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(ids),
            Err(e) => {
                tracing::debug!("early upload stopped: {e}");
                failed.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// Sends the chunks of `batch` the server lacks; those it holds are not even compressed.
/// Then hints where the sent ones go (unless `unhinted`; a failed hint sets it). Returns
/// the batch's ids: all held by the server once it answered.
fn send(
    remote: &Remote,
    batch: Batch,
    unhinted: &AtomicBool,
) -> Result<Vec<ChunkId>, crate::remote::RemoteError> {
    let started = std::time::Instant::now();
    let ids: Vec<ChunkId> = batch.chunks.iter().map(|c| c.chunk.id).collect();
    let lacking: HashSet<ChunkId> = remote.missing(&ids)?.into_iter().collect();
    // Per entry: its 36-byte header, the tag byte, and slack for the compressor's output
    // bound while it works; a raw payload is one byte longer than its chunk.
    let mut upload = UploadBatch::with_capacity(batch.data.len() + batch.chunks.len() * 64);
    let mut files: Vec<FileHint> = Vec::new();
    for c in batch
        .chunks
        .iter()
        .filter(|c| lacking.contains(&c.chunk.id))
    {
        upload.push_chunk(&c.chunk.id, &batch.data[c.bytes.clone()], ZSTD_LEVEL);
        let placed = PlacedChunk {
            offset: c.offset,
            id: c.chunk.id,
            len: c.chunk.len,
        };
        match files.last_mut() {
            Some(f) if f.node == c.node => f.chunks.push(placed),
            _ => files.push(FileHint {
                node: c.node,
                chunks: vec![placed],
            }),
        }
    }
    files.retain(|f| {
        f.chunks
            .iter()
            .any(|c| c.offset + u64::from(c.len) >= HINT_FROM)
    });
    let sent = upload.count();
    // The raw copy is not needed while the request travels.
    drop(batch);
    if !upload.is_empty() {
        remote.upload_batch(upload)?;
        if !files.is_empty()
            && !unhinted.load(Ordering::Relaxed)
            && let Err(e) = remote.post_hints(files)
        {
            tracing::debug!("upload hints stopped: {e}");
            unhinted.store(true, Ordering::Relaxed);
        }
    }
    tracing::debug!(
        offered = ids.len(),
        sent,
        ms = started.elapsed().as_millis() as u64,
        "early upload batch"
    );
    Ok(ids)
}
