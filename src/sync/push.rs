//! Turning the planner's push steps into difference transactions: ops against the versions
//! of the remote tree, with the chunks the server lacks uploaded first (read back from the
//! local files and checked against their ids).

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::chunking::{ChunkId, ChunkRef, Manifest, ManifestId, diff};
use crate::drive::Drive;
use crate::protocol::limits::{MAX_BATCH_BYTES, MAX_BATCH_CHUNKS, MAX_IDS_PER_REQUEST};
use crate::protocol::{CreateOp, DeleteOp, MoveOp, NodeId, NodeKind, Op, Seq, SetAttrsOp, WriteOp};
use crate::remote::{Remote, UploadBatch};

use super::SyncError;
use super::plan::{Content, PushStep};
use super::state::RemoteTree;

/// zstd level for uploaded chunks.
pub(super) const ZSTD_LEVEL: i32 = 3;
/// Upload requests in flight: while some travel or get checked, the server makes others
/// durable (each request waits ~100 ms on the server's fsyncs; eight hide that latency).
pub(super) const SENDERS: usize = 8;
/// Full batches waiting for a sender: enough to keep them busy, few enough that a large
/// upload holds at most (SENDERS + QUEUED + 1) batches (~20 MiB each) in memory.
pub(super) const QUEUED: usize = 2;
/// Compressed bytes per upload request (the server takes up to MAX_BATCH_BYTES).
pub(super) const UPLOAD_BATCH_BYTES: usize = MAX_BATCH_BYTES - (2 << 20);

/// Where the bytes of a chunk to upload are: a local file and an offset in it.
#[derive(Clone, Copy, Debug)]
pub struct ChunkAt {
    /// The chunk.
    pub chunk: ChunkRef,
    /// The local file holding it.
    pub node: NodeId,
    /// Its offset there.
    pub offset: u64,
}

/// The manifests [`build_ops`] reads for `steps`: each file's new content and, for a write,
/// the remote tree's content it is a diff from.
pub fn manifests_needed(steps: &[PushStep], remote: &RemoteTree) -> Vec<ManifestId> {
    let mut ids = Vec::new();
    for step in steps {
        match step {
            PushStep::Create { entry, .. } => {
                if let Content::File { manifest_id, .. } = &entry.content {
                    ids.push(*manifest_id);
                }
            }
            PushStep::Write {
                node, manifest_id, ..
            } => {
                ids.push(*manifest_id);
                if let Some(Content::File { manifest_id, .. }) =
                    remote.tree.get(*node).map(|e| &e.content)
                {
                    ids.push(*manifest_id);
                }
            }
            _ => {}
        }
    }
    ids
}

/// The ops of `steps`, each against the version the remote tree holds (0 for nodes created
/// earlier in the same steps), and where each new chunk's bytes are: (local file, offset).
/// `manifests` holds those [`manifests_needed`] names.
pub fn build_ops(
    steps: &[PushStep],
    remote: &RemoteTree,
    manifests: &HashMap<ManifestId, Manifest>,
) -> Result<(Vec<Op>, Vec<ChunkAt>), SyncError> {
    let mut ops = Vec::with_capacity(steps.len());
    let mut chunks: Vec<ChunkAt> = Vec::new();
    let mut created: HashSet<NodeId> = HashSet::new();
    let base = |node: NodeId, created: &HashSet<NodeId>| {
        if created.contains(&node) {
            Seq(0)
        } else {
            remote.versions.get(&node).copied().unwrap_or(Seq(0))
        }
    };
    let manifest = |id: &ManifestId| {
        manifests
            .get(id)
            .ok_or_else(|| SyncError::Inconsistent(format!("manifest {id} to push is not stored")))
    };
    for step in steps {
        match step {
            PushStep::Create { node, entry } => {
                created.insert(*node);
                let (kind, m, target) = match &entry.content {
                    Content::Dir => (NodeKind::Dir, None, None),
                    Content::Symlink { target } => (NodeKind::Symlink, None, Some(target.clone())),
                    Content::File { manifest_id, .. } => {
                        let m = manifest(manifest_id)?;
                        chunks.extend(m.offsets().map(|(offset, chunk)| ChunkAt {
                            chunk,
                            node: *node,
                            offset,
                        }));
                        (NodeKind::File, Some(m.clone()), None)
                    }
                };
                ops.push(Op::Create(CreateOp {
                    node: *node,
                    parent: entry.parent,
                    name: entry.name.clone(),
                    kind,
                    mode: entry.mode,
                    mtime: entry.mtime,
                    xattrs: entry.xattrs.clone(),
                    manifest_id: m.as_ref().map(Manifest::id),
                    manifest: m,
                    target,
                }));
            }
            PushStep::Write {
                node,
                manifest_id,
                size,
            } => {
                let empty = Manifest::default();
                let old = match remote.tree.get(*node).map(|e| &e.content) {
                    Some(Content::File { manifest_id, .. }) => manifest(manifest_id)?,
                    _ => &empty,
                };
                let new = manifest(manifest_id)?;
                let d = diff(old, new);
                let fresh: HashSet<ChunkRef> = d.new_chunks.iter().copied().collect();
                let mut seen = HashSet::new();
                chunks.extend(
                    new.offsets()
                        .filter(|(_, c)| fresh.contains(c) && seen.insert(*c))
                        .map(|(offset, chunk)| ChunkAt {
                            chunk,
                            node: *node,
                            offset,
                        }),
                );
                ops.push(Op::Write(WriteOp {
                    node: *node,
                    base: base(*node, &created),
                    edit: d.edit,
                    size: *size,
                    manifest_id: *manifest_id,
                }));
            }
            PushStep::SetAttrs {
                node,
                mode,
                mtime,
                xattrs,
            } => ops.push(Op::SetAttrs(SetAttrsOp {
                node: *node,
                base: base(*node, &created),
                mode: *mode,
                mtime: *mtime,
                xattrs: xattrs.clone(),
            })),
            PushStep::Move { node, parent, name } => ops.push(Op::Move(MoveOp {
                node: *node,
                base: base(*node, &created),
                new_parent: *parent,
                new_name: name.clone(),
            })),
            PushStep::Delete { node } => {
                ops.push(Op::Delete(DeleteOp {
                    node: *node,
                    base: base(*node, &created),
                }));
                created.remove(node);
            }
        }
    }
    Ok((ops, chunks))
}

/// Why an upload stopped short.
#[derive(Debug, PartialEq, Eq)]
pub enum Upload {
    /// Every chunk the server lacked is there now.
    Done,
    /// A local file no longer holds the bytes planned (it changed meanwhile): plan again.
    Changed(NodeId),
}

/// Each chunk of `wanted` once, but for those the server is known to hold.
fn unheld<'a>(wanted: &'a [ChunkAt], held: &HashSet<ChunkId>) -> Vec<&'a ChunkAt> {
    let mut seen = HashSet::new();
    wanted
        .iter()
        .filter(|w| !held.contains(&w.chunk.id) && seen.insert(w.chunk.id))
        .collect()
}

/// What pushing `wanted` would send at most, without asking the server (it may hold some
/// chunks already): the estimate `status` shows while the server is away.
pub fn bytes_to_send(wanted: &[ChunkAt], held: &HashSet<ChunkId>) -> u64 {
    unheld(wanted, held)
        .iter()
        .map(|w| u64::from(w.chunk.len))
        .sum()
}

/// Uploads the chunks of `wanted` the server lacks, reading them from the local files; those
/// in `held` (the server said so moments ago) are not asked about. `pending` counts down the
/// bytes still to send (for `status`).
pub fn upload_missing(
    drive: &Drive,
    remote: &Remote,
    wanted: &[ChunkAt],
    held: &HashSet<ChunkId>,
    pending: &AtomicU64,
) -> Result<Upload, SyncError> {
    let unique = unheld(wanted, held);
    let mut missing: HashSet<ChunkId> = HashSet::new();
    for part in unique.chunks(MAX_IDS_PER_REQUEST) {
        let ids: Vec<ChunkId> = part.iter().map(|w| w.chunk.id).collect();
        missing.extend(remote.missing(&ids)?);
    }
    let todo: Vec<&ChunkAt> = unique
        .into_iter()
        .filter(|w| missing.contains(&w.chunk.id))
        .collect();
    pending.store(
        todo.iter().map(|w| u64::from(w.chunk.len)).sum(),
        Ordering::Relaxed,
    );
    // Reading, checking and compressing (one thread) overlap with sending (SENDERS requests
    // in flight).
    let (tx, rx) = std::sync::mpsc::sync_channel::<UploadBatch>(QUEUED);
    let rx = std::sync::Mutex::new(Some(rx));
    let failed = std::sync::atomic::AtomicBool::new(false);
    let send = || -> Result<(), crate::remote::RemoteError> {
        while !failed.load(Ordering::Relaxed) {
            let next = match rx.lock() {
                Ok(guard) => guard.as_ref().map(std::sync::mpsc::Receiver::recv),
                Err(_) => None,
            };
            let Some(Ok(batch)) = next else {
                return Ok(());
            };
            let started = std::time::Instant::now();
            let (chunks, raw) = (batch.count(), batch.raw_len());
            if let Err(e) = remote.upload_batch(batch) {
                failed.store(true, Ordering::Relaxed);
                return Err(e);
            }
            tracing::debug!(
                chunks,
                raw,
                ms = started.elapsed().as_millis() as u64,
                "upload batch sent"
            );
            pending.fetch_sub(raw, Ordering::Relaxed);
        }
        Ok(())
    };
    std::thread::scope(|scope| {
        let producer = scope.spawn(move || produce(drive, &todo, &tx));
        let others: Vec<_> = (1..SENDERS).map(|_| scope.spawn(send)).collect();
        let mine = send();
        let theirs: Result<Result<(), crate::remote::RemoteError>, _> = others
            .into_iter()
            .map(|o| o.join())
            .try_fold(Ok(()), |acc, r| r.map(|r| acc.and(r)));
        // No one receives any more: a producer blocked on a full channel stops.
        if let Ok(mut guard) = rx.lock() {
            guard.take();
        }
        let produced = producer.join();
        let (Ok(theirs), Ok(produced)) = (theirs, produced) else {
            return Err(SyncError::Inconsistent("an upload thread panicked".into()));
        };
        mine?;
        theirs?;
        let outcome = produced?;
        if outcome == Upload::Done {
            pending.store(0, Ordering::Relaxed);
        }
        Ok(outcome)
    })
}

/// Reads each chunk back from its local file, checks it against its id, and encodes it
/// into the batch it goes with; hands full batches to `tx`.
fn produce(
    drive: &Drive,
    todo: &[&ChunkAt],
    tx: &std::sync::mpsc::SyncSender<UploadBatch>,
) -> Result<Upload, SyncError> {
    let mut files: HashMap<NodeId, std::fs::File> = HashMap::new();
    let new_batch = || UploadBatch::with_capacity(UPLOAD_BATCH_BYTES);
    let mut batch = new_batch();
    let mut bytes = Vec::new();
    for w in todo {
        let ChunkAt {
            chunk: c,
            node,
            offset: off,
        } = **w;
        let file = match files.entry(node) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => match drive.open_content(node) {
                Ok(f) => e.insert(f),
                Err(crate::drive::DriveError::NotFound) => return Ok(Upload::Changed(node)),
                Err(err) => return Err(err.into()),
            },
        };
        bytes.resize(c.len as usize, 0);
        if file.read_exact_at(&mut bytes, off).is_err() || ChunkId::of(&bytes) != c.id {
            return Ok(Upload::Changed(node));
        }
        // One batch, one request: full at the server's byte or chunk limit (a payload is at
        // most one byte longer than its chunk).
        let full = batch.count() == MAX_BATCH_CHUNKS
            || batch.would_pass(bytes.len() + 1, UPLOAD_BATCH_BYTES);
        if full && !batch.is_empty() && tx.send(std::mem::replace(&mut batch, new_batch())).is_err()
        {
            // The sender gave up (its error is the one reported).
            return Ok(Upload::Done);
        }
        batch.push_chunk(&c.id, &bytes, ZSTD_LEVEL);
    }
    if !batch.is_empty() {
        let _ = tx.send(batch);
    }
    Ok(Upload::Done)
}
