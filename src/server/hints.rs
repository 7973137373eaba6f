//! Upload hints: where the chunks a device has just uploaded go in files it is about to
//! commit, kept in memory and long-polled by the volume's other devices so that they fetch
//! a large file while it is still uploading.
//!
//! Best effort by design: lost on restart, not shared between server replicas, trimmed to
//! the latest [`KEEP_CHUNKS`] chunks and [`KEEP_FOR`] per volume. A device that misses a
//! hint fetches the chunks when the commit lands, as it would without hints.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::meta::{DeviceId, VolumeId};
use crate::chunking::ChunkId;
use crate::protocol::limits::{MAX_BATCH_CHUNKS, MAX_CHUNK_SIZE};
use crate::protocol::{FileHint, HintsResponse, NodeId};

/// Chunks of hints kept per volume (about 1 GiB of content at 16 KiB a chunk).
pub const KEEP_CHUNKS: usize = 64 << 10;
/// How long a hint is kept: it only helps while its upload runs.
pub const KEEP_FOR: Duration = Duration::from_secs(600);
/// Most chunks in one answer (the device asks again at once for the rest).
const ANSWER_CHUNKS: usize = 8 << 10;

/// The hints of every volume.
#[derive(Debug, Default)]
pub struct Hints {
    vols: Mutex<HashMap<VolumeId, Log>>,
}

/// One volume's hints, oldest first, each with its position.
#[derive(Debug)]
struct Log {
    entries: VecDeque<Posted>,
    chunks: usize,
    /// Position of the latest hint (0: none yet); watched by the long-polls.
    head: watch::Sender<u64>,
}

#[derive(Debug)]
struct Posted {
    seq: u64,
    device: DeviceId,
    at: Instant,
    file: Arc<FileHint>,
}

impl Log {
    fn new() -> Log {
        Log {
            entries: VecDeque::new(),
            chunks: 0,
            head: watch::channel(0).0,
        }
    }

    fn trim(&mut self, now: Instant) {
        while let Some(first) = self.entries.front() {
            let stale = now.duration_since(first.at) > KEEP_FOR;
            if !(stale || self.chunks > KEEP_CHUNKS) {
                break;
            }
            self.chunks -= first.file.chunks.len();
            self.entries.pop_front();
        }
    }
}

/// Why a hint request is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HintError {
    /// More chunks than one upload request carries.
    #[error("{0} chunks in one hint request, more than {MAX_BATCH_CHUNKS}")]
    TooMany(usize),
    /// A chunk no chunker cuts, or one past the largest file offset.
    #[error("file {node}: chunk {id} at offset {offset} with length {len} is not a chunk")]
    BadChunk {
        /// The file.
        node: NodeId,
        /// The chunk.
        id: ChunkId,
        /// Its offset.
        offset: u64,
        /// Its length.
        len: u32,
    },
}

/// Checks a hint request's shape (the chunks themselves are checked when fetched).
pub fn check(files: &[FileHint]) -> Result<(), HintError> {
    let total: usize = files.iter().map(|f| f.chunks.len()).sum();
    if total > MAX_BATCH_CHUNKS {
        return Err(HintError::TooMany(total));
    }
    for f in files {
        for c in &f.chunks {
            let fits = c.offset.checked_add(u64::from(c.len)).is_some();
            if c.len == 0 || c.len as usize > MAX_CHUNK_SIZE || !fits {
                return Err(HintError::BadChunk {
                    node: f.node,
                    id: c.id,
                    offset: c.offset,
                    len: c.len,
                });
            }
        }
    }
    Ok(())
}

impl Hints {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<VolumeId, Log>> {
        self.vols.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `files` (already [`check`]ed) as `device`'s hints in `vol` and wakes the polls.
    pub fn post(&self, vol: VolumeId, device: DeviceId, files: Vec<FileHint>) {
        let now = Instant::now();
        let mut vols = self.lock();
        let log = vols.entry(vol).or_insert_with(Log::new);
        let mut head = *log.head.borrow();
        for file in files.into_iter().filter(|f| !f.chunks.is_empty()) {
            head += 1;
            log.chunks += file.chunks.len();
            log.entries.push_back(Posted {
                seq: head,
                device,
                at: now,
                file: Arc::new(file),
            });
        }
        log.trim(now);
        log.head.send_replace(head);
    }

    /// A receiver that changes whenever a hint is posted in `vol`. Subscribe before
    /// reading, so a hint posted in between still wakes the poll.
    pub fn subscribe(&self, vol: VolumeId) -> watch::Receiver<u64> {
        self.lock()
            .entry(vol)
            .or_insert_with(Log::new)
            .head
            .subscribe()
    }

    /// The hints of `vol` after position `after` that other devices than `device` posted.
    /// A position past the head (the server restarted since) reads from the start.
    pub fn after(&self, vol: VolumeId, device: DeviceId, after: u64) -> HintsResponse {
        let mut vols = self.lock();
        let Some(log) = vols.get_mut(&vol) else {
            return HintsResponse {
                next: 0,
                files: Vec::new(),
            };
        };
        log.trim(Instant::now());
        let head = *log.head.borrow();
        let after = if after > head { 0 } else { after };
        let mut next = after.max(log.entries.front().map_or(head, |e| e.seq - 1));
        let mut files = Vec::new();
        let mut chunks = 0;
        for e in log.entries.iter().filter(|e| e.seq > after) {
            if chunks > 0 && chunks + e.file.chunks.len() > ANSWER_CHUNKS {
                break;
            }
            next = e.seq;
            if e.device != device {
                chunks += e.file.chunks.len();
                files.push(FileHint::clone(&e.file));
            }
        }
        if files.is_empty() {
            next = head;
        }
        HintsResponse { next, files }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::PlacedChunk;

    fn hint(node: u8, chunks: usize) -> FileHint {
        FileHint {
            node: format!("{:032x}", u32::from(node) + 1)
                .parse::<NodeId>()
                .unwrap(),
            chunks: (0..chunks)
                .map(|i| PlacedChunk {
                    offset: i as u64 * 100,
                    id: ChunkId::of(&[node, i as u8]),
                    len: 100,
                })
                .collect(),
        }
    }

    #[test]
    fn a_device_reads_the_others_hints_in_order_and_never_its_own() {
        let h = Hints::default();
        let (vol, a, b) = (VolumeId(1), DeviceId(1), DeviceId(2));
        assert_eq!(h.after(vol, b, 0).files, vec![]);
        h.post(vol, a, vec![hint(1, 3), hint(2, 2)]);
        h.post(vol, b, vec![hint(3, 1)]);
        let seen = h.after(vol, b, 0);
        assert_eq!(seen.files, vec![hint(1, 3), hint(2, 2)]);
        assert_eq!(seen.next, 3, "b's own hint is passed over, not sent");
        assert_eq!(h.after(vol, b, seen.next).files, vec![]);
        assert_eq!(h.after(vol, a, 0).files, vec![hint(3, 1)]);
        // Another volume sees none of them.
        assert_eq!(h.after(VolumeId(2), b, 0).files, vec![]);
        // A position from before a restart (past the head) reads from the start.
        assert_eq!(h.after(vol, b, 99).files.len(), 2);
    }

    #[test]
    fn the_log_keeps_the_latest_chunks_only_and_answers_in_pieces() {
        let h = Hints::default();
        let (vol, a, b) = (VolumeId(1), DeviceId(1), DeviceId(2));
        let per = 1000;
        let posts = KEEP_CHUNKS / per + 10;
        for i in 0..posts {
            h.post(vol, a, vec![hint((i % 250) as u8, per)]);
        }
        let mut after = 0;
        let mut got = 0;
        loop {
            let page = h.after(vol, b, after);
            if page.files.is_empty() {
                break;
            }
            let chunks: usize = page.files.iter().map(|f| f.chunks.len()).sum();
            assert!(chunks <= ANSWER_CHUNKS, "{chunks} chunks in one answer");
            got += page.files.len();
            after = page.next;
        }
        assert!(got * per <= KEEP_CHUNKS + per, "{got} hints kept");
        assert!(got * per > KEEP_CHUNKS - per, "{got} hints kept");
        assert_eq!(after, posts as u64);
    }

    #[tokio::test]
    async fn a_post_wakes_the_volume_s_polls() {
        let h = Hints::default();
        let mut rx = h.subscribe(VolumeId(7));
        h.post(VolumeId(7), DeviceId(1), vec![hint(1, 1)]);
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow(), 1);
    }

    #[test]
    fn malformed_hints_are_refused() {
        let mut bad = hint(1, 1);
        bad.chunks[0].len = 0;
        assert!(matches!(check(&[bad]), Err(HintError::BadChunk { .. })));
        let mut past = hint(1, 1);
        past.chunks[0].offset = u64::MAX - 10;
        assert!(matches!(check(&[past]), Err(HintError::BadChunk { .. })));
        let mut huge = hint(1, 1);
        huge.chunks[0].len = MAX_CHUNK_SIZE as u32 + 1;
        assert!(matches!(check(&[huge]), Err(HintError::BadChunk { .. })));
        let many = vec![hint(1, MAX_BATCH_CHUNKS), hint(2, 1)];
        assert_eq!(check(&many), Err(HintError::TooMany(MAX_BATCH_CHUNKS + 1)));
        assert_eq!(check(&[hint(1, MAX_BATCH_CHUNKS)]), Ok(()));
    }
}
