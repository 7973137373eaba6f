//! Fetching a large file while another device is still uploading it. That device hints where
//! each chunk it uploads goes (`POST .../hints`); here a poller follows the hints and
//! fetchers write each chunk at its offset in a staged file of the node's own. When the
//! commit lands, the engine claims the staged file and writes only what is not already in
//! place, so the download has overlapped the upload instead of following it.
//!
//! Nothing here is trusted further than this process wrote it: a chunk counts as placed only
//! once it was verified against its id (as every fetched chunk is) and written; a later write
//! over it forgets it; the staged files are removed when the engine starts. Hints are best
//! effort: a missed or wrong one costs a fetch at commit time, as without hints.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::chunking::{ChunkId, ChunkRef};
use crate::drive::lock;
use crate::durability::{fs_stats, start_writeback};
use crate::protocol::limits::{MAX_CHUNK_SIZE, MAX_MANIFEST_CHUNKS};
use crate::protocol::{FileHint, NodeId};
use crate::remote::Remote;

use super::content::RUN_BYTES;
use super::engine::{returned_early, sleep_unless_stopped};

/// How long the poller's long-poll waits for hints.
const POLL_WAIT_SECS: u64 = 25;
/// Longest pause between polls while the server is unreachable (or lacks hints).
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Fetchers at work at once.
const FETCHERS: usize = 2;
/// Hinted files waiting for a fetcher; past this, the poller waits.
const QUEUED: usize = 16;
/// Most bytes staged ahead of their commits at once.
const BUDGET: u64 = 4 << 30;
/// Free space left on the staging filesystem, at least, after a hint is staged.
const RESERVE: u64 = 1 << 30;
/// Most files staged ahead at once.
const MAX_STAGES: usize = 64;
/// Longest a claim waits for the fetches writing to the staged file.
const CLAIM_WAIT: Duration = Duration::from_secs(30);
/// A staged file not claimed for this long is dropped (its commit went elsewhere).
const STALE: Duration = Duration::from_secs(600);
/// The largest file a manifest describes (its most chunks, each of the largest size).
const MAX_FILE_BYTES: u64 = MAX_MANIFEST_CHUNKS as u64 * MAX_CHUNK_SIZE as u64;

/// Content fetched ahead from upload hints, shared by the poller, the fetchers and the
/// engine (which claims it).
#[derive(Clone, Debug)]
pub struct Prefetch {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    stages: Mutex<Stages>,
    /// Hinted files queued so far: each job's number.
    queued: AtomicU64,
    /// Bytes placed in unclaimed stages.
    staged: AtomicU64,
    /// Bytes placed since the start (for `status`).
    placed: AtomicU64,
}

/// The staged files by node, and for each node claimed lately the number of the last job
/// queued before its claim: those jobs are for content already placed, and are skipped.
#[derive(Debug, Default)]
struct Stages {
    by_node: HashMap<NodeId, Arc<Stage>>,
    claimed_upto: HashMap<NodeId, u64>,
}

/// Nodes remembered in `claimed_upto` (only jobs still queued need it; a few dozen at most).
const CLAIMS_KEPT: usize = 1024;

/// A hinted file to fetch, numbered in the order the hints came.
struct Job {
    no: u64,
    hint: FileHint,
}

/// One node's staged file and what is in place in it.
#[derive(Debug)]
struct Stage {
    path: PathBuf,
    file: File,
    state: Mutex<StageState>,
    idle: Condvar,
}

#[derive(Debug)]
struct StageState {
    /// Verified chunks in place, by offset; none overlap.
    chunks: BTreeMap<u64, ChunkRef>,
    bytes: u64,
    /// Taken over by the engine: nothing more is written.
    claimed: bool,
    /// Jobs writing to it now; a claim waits for them (their chunks are on the way).
    busy: usize,
    touched: Instant,
}

/// A staged file the engine has taken over, with the chunks in place in it.
#[derive(Debug)]
pub struct Claimed {
    /// The staged file, now the caller's.
    pub path: PathBuf,
    /// Verified chunks in place, by offset.
    pub chunks: BTreeMap<u64, ChunkRef>,
}

impl StageState {
    /// Ends the stage's writes (claimed or dropped): its bytes no longer count as staged.
    fn close(&mut self, staged: &AtomicU64) {
        self.claimed = true;
        staged.fetch_sub(self.bytes, Ordering::Relaxed);
    }

    /// Forgets the chunks that overlap `[start, end)` (about to be written over).
    fn forget(&mut self, start: u64, end: u64) {
        let mut gone: Vec<u64> = self.chunks.range(start..end).map(|(o, _)| *o).collect();
        if let Some((o, c)) = self.chunks.range(..start).next_back()
            && o + u64::from(c.len) > start
        {
            gone.push(*o);
        }
        for o in gone {
            if let Some(c) = self.chunks.remove(&o) {
                self.bytes -= u64::from(c.len);
            }
        }
    }
}

impl Prefetch {
    /// Empties `dir` (staged files of an earlier run), then follows `remote`'s hints until
    /// `stop` is set, in threads of its own.
    pub fn start(remote: Remote, dir: PathBuf, stop: Arc<AtomicBool>) -> std::io::Result<Self> {
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        crate::private::create_dir_all(&dir)?;
        let prefetch = Prefetch {
            inner: Arc::new(Inner {
                dir,
                stages: Mutex::new(Stages::default()),
                queued: AtomicU64::new(0),
                staged: AtomicU64::new(0),
                placed: AtomicU64::new(0),
            }),
        };
        let (tx, rx) = sync_channel::<Job>(QUEUED);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..FETCHERS {
            let (p, remote, rx) = (prefetch.clone(), remote.clone(), rx.clone());
            std::thread::Builder::new()
                .name("sync-prefetch".into())
                .spawn(move || p.fetch_loop(&remote, &rx))?;
        }
        let p = prefetch.clone();
        std::thread::Builder::new()
            .name("sync-hints".into())
            .spawn(move || p.poll_loop(&remote, &stop, &tx))?;
        Ok(prefetch)
    }

    /// Bytes of content fetched ahead so far.
    pub fn placed_bytes(&self) -> u64 {
        self.inner.placed.load(Ordering::Relaxed)
    }

    /// Whether content of node `node` was fetched ahead (or is being fetched).
    pub fn has(&self, node: NodeId) -> bool {
        self.stages().by_node.contains_key(&node)
    }

    /// Hints of `node` queued until now are not needed: its content is being fetched
    /// another way.
    pub fn pass(&self, node: NodeId) {
        self.skip_queued(&mut self.stages(), node);
    }

    fn skip_queued(&self, stages: &mut Stages, node: NodeId) {
        if stages.claimed_upto.len() >= CLAIMS_KEPT {
            stages.claimed_upto.clear();
        }
        let upto = self.inner.queued.load(Ordering::Relaxed);
        stages.claimed_upto.insert(node, upto);
    }

    /// Takes over node `node`'s staged file, if there is one, once the fetches writing to it
    /// are done: nothing more is written to it, and hints queued before now are skipped.
    pub fn claim(&self, node: NodeId) -> Option<Claimed> {
        let stage = {
            let mut stages = self.stages();
            self.skip_queued(&mut stages, node);
            stages.by_node.remove(&node)?
        };
        let deadline = Instant::now() + CLAIM_WAIT;
        let mut st = lock(&stage.state);
        while st.busy > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            st = stage
                .idle
                .wait_timeout(st, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        st.close(&self.inner.staged);
        Some(Claimed {
            path: stage.path.clone(),
            chunks: std::mem::take(&mut st.chunks),
        })
    }

    fn stages(&self) -> std::sync::MutexGuard<'_, Stages> {
        lock(&self.inner.stages)
    }

    fn poll_loop(&self, remote: &Remote, stop: &AtomicBool, jobs: &SyncSender<Job>) {
        let mut after = 0;
        let mut backoff = Duration::from_secs(1);
        while !stop.load(Ordering::Relaxed) {
            self.drop_stale();
            let asked = std::time::Instant::now();
            match remote.hints(after, POLL_WAIT_SECS) {
                Ok(page) => {
                    if returned_early(asked, page.files.is_empty(), POLL_WAIT_SECS) {
                        sleep_unless_stopped(stop, backoff);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    } else {
                        backoff = Duration::from_secs(1);
                    }
                    after = page.next;
                    for hint in page.files {
                        let no = self.inner.queued.fetch_add(1, Ordering::Relaxed) + 1;
                        if jobs.send(Job { no, hint }).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!("upload hints: {e}");
                    sleep_unless_stopped(stop, backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn fetch_loop(&self, remote: &Remote, jobs: &Mutex<Receiver<Job>>) {
        let mut answer = Vec::new();
        loop {
            let mut job = match lock(jobs).recv() {
                Ok(job) => job,
                Err(_) => return,
            };
            // A hint is the server's word only: nothing is staged past the largest file a
            // manifest can describe.
            job.hint
                .chunks
                .retain(|c| c.offset.saturating_add(u64::from(c.len)) <= MAX_FILE_BYTES);
            if job.hint.chunks.is_empty() {
                continue;
            }
            let bytes: u64 = job.hint.chunks.iter().map(|c| u64::from(c.len)).sum();
            let stage = match self.stage_for(&job, bytes) {
                Ok(Some(stage)) => stage,
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(node = %job.hint.node, "cannot stage a prefetch: {e}");
                    continue;
                }
            };
            let result = self.fetch(remote, &stage, &job.hint, &mut answer);
            lock(&stage.state).busy -= 1;
            stage.idle.notify_all();
            if let Err(e) = result {
                tracing::debug!(node = %job.hint.node, "prefetch stopped: {e}");
            }
        }
    }

    /// Fetches the hinted chunks of one file into its stage.
    fn fetch(
        &self,
        remote: &Remote,
        stage: &Stage,
        hint: &FileHint,
        answer: &mut Vec<u8>,
    ) -> Result<(), crate::sync::SyncError> {
        let mut places: HashMap<ChunkId, Vec<u64>> = HashMap::new();
        for c in &hint.chunks {
            places.entry(c.id).or_default().push(c.offset);
        }
        let ids: Vec<ChunkId> = hint.chunks.iter().map(|c| c.id).collect();
        let mut run = Run::default();
        let mut failed = None;
        remote.fetch_each_buffered(&ids, answer, |chunk| {
            if failed.is_some() {
                return;
            }
            let c = ChunkRef {
                id: chunk.id(),
                // A verified chunk is at most MAX_CHUNK_SIZE (1 MiB) long.
                len: u32::try_from(chunk.bytes().len()).unwrap_or(u32::MAX),
            };
            for &offset in places.get(&c.id).map_or(&[][..], Vec::as_slice) {
                if let Err(e) = self.put(stage, &mut run, offset, c, chunk.bytes()) {
                    failed = Some(e);
                }
            }
        })?;
        if let Some(e) = failed {
            return Err(e.into());
        }
        self.flush(stage, &mut run)?;
        Ok(())
    }

    /// The stage `job` writes to, marked busy (made if there is room for `bytes` more);
    /// `None` if the job was queued before its node was claimed, or there is no room.
    fn stage_for(&self, job: &Job, bytes: u64) -> std::io::Result<Option<Arc<Stage>>> {
        let node = job.hint.node;
        // Under the stages' lock, as claims are: a claim either waits for this job or is
        // seen by it.
        let mut stages = self.stages();
        if stages
            .claimed_upto
            .get(&node)
            .is_some_and(|&upto| job.no <= upto)
        {
            return Ok(None);
        }
        if let Some(s) = stages.by_node.get(&node) {
            lock(&s.state).busy += 1;
            return Ok(Some(s.clone()));
        }
        let room = self.inner.staged.load(Ordering::Relaxed) + bytes <= BUDGET
            && stages.by_node.len() < MAX_STAGES
            && free_bytes(&self.inner.dir).is_some_and(|free| free >= bytes + RESERVE);
        if !room {
            return Ok(None);
        }
        let path = self.inner.dir.join(format!("{node}.part"));
        let file = crate::private::file_options()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)?;
        let stage = Arc::new(Stage {
            path,
            file,
            state: Mutex::new(StageState {
                chunks: BTreeMap::new(),
                bytes: 0,
                claimed: false,
                busy: 1,
                touched: Instant::now(),
            }),
            idle: Condvar::new(),
        });
        stages.by_node.insert(node, stage.clone());
        Ok(Some(stage))
    }

    /// Adds a verified chunk to `run`, writing the run first if the chunk does not follow it.
    fn put(
        &self,
        stage: &Stage,
        run: &mut Run,
        offset: u64,
        chunk: ChunkRef,
        bytes: &[u8],
    ) -> std::io::Result<()> {
        if run.end() != offset || run.bytes.len() + bytes.len() > RUN_BYTES {
            self.flush(stage, run)?;
            run.start = offset;
        }
        run.bytes.extend_from_slice(bytes);
        run.chunks.push((offset, chunk));
        Ok(())
    }

    /// Writes what `run` gathered into the stage (unless it was claimed meanwhile), then
    /// counts its chunks as in place.
    fn flush(&self, stage: &Stage, run: &mut Run) -> std::io::Result<()> {
        if run.bytes.is_empty() {
            return Ok(());
        }
        let mut st = lock(&stage.state);
        if !st.claimed {
            st.forget(run.start, run.end());
            stage.file.write_all_at(&run.bytes, run.start)?;
            let len = run.bytes.len() as u64;
            // Only a head start for the fsync when the file is placed, which reports failures.
            let _ = start_writeback(&stage.file, run.start, len);
            st.chunks.extend(run.chunks.iter().copied());
            st.bytes += len;
            st.touched = Instant::now();
            self.inner.staged.fetch_add(len, Ordering::Relaxed);
            self.inner.placed.fetch_add(len, Ordering::Relaxed);
        }
        run.bytes.clear();
        run.chunks.clear();
        Ok(())
    }

    /// Removes the stages nobody claimed for [`STALE`].
    fn drop_stale(&self) {
        let stale: Vec<Arc<Stage>> = {
            let mut stages = self.stages();
            let old: Vec<NodeId> = stages
                .by_node
                .iter()
                .filter(|(_, s)| {
                    let st = lock(&s.state);
                    st.busy == 0 && st.touched.elapsed() > STALE
                })
                .map(|(n, _)| *n)
                .collect();
            old.iter()
                .filter_map(|n| stages.by_node.remove(n))
                .collect()
        };
        for s in stale {
            let mut st = lock(&s.state);
            st.close(&self.inner.staged);
            let _ = std::fs::remove_file(&s.path);
        }
    }
}

/// Consecutive chunks waiting to be written together.
#[derive(Default)]
struct Run {
    start: u64,
    bytes: Vec<u8>,
    chunks: Vec<(u64, ChunkRef)>,
}

impl Run {
    fn end(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }
}

/// Bytes available to this user on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    let st = fs_stats(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(n: u8, len: u32) -> ChunkRef {
        ChunkRef {
            id: ChunkId::of(&[n]),
            len,
        }
    }

    #[test]
    fn a_write_forgets_every_chunk_it_overlaps() {
        let mut st = StageState {
            chunks: BTreeMap::new(),
            bytes: 0,
            claimed: false,
            busy: 0,
            touched: Instant::now(),
        };
        for (o, ch) in [
            (0, c(1, 100)),
            (100, c(2, 100)),
            (200, c(3, 100)),
            (300, c(4, 50)),
        ] {
            st.chunks.insert(o, ch);
            st.bytes += u64::from(ch.len);
        }
        // [150, 210) overlaps the chunks at 100 and 200, not those at 0 and 300.
        st.forget(150, 210);
        assert_eq!(st.chunks.keys().copied().collect::<Vec<_>>(), vec![0, 300]);
        assert_eq!(st.bytes, 150);
        // Touching ends are not overlaps.
        st.forget(100, 300);
        assert_eq!(st.chunks.len(), 2);
        st.forget(99, 100);
        assert_eq!(st.chunks.keys().copied().collect::<Vec<_>>(), vec![300]);
    }
}
