//! The engine thread: pull the server's changes into the remote tree, take the drive's
//! recorded versions into the local tree, plan against the synced tree, apply the local
//! steps, push the rest as difference transactions; again whenever either side changes.
//!
//! A second thread long-polls the change log only to wake the engine, so a local change is
//! never stuck behind a long-poll. The synced tree moves only to what both sides hold: to
//! the remote tree once the local steps are applied, then by each pushed transaction as soon
//! as the server has answered it.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::chunking::{ChunkId, ChunkerParams, Manifest};
use crate::drive::Drive;
use crate::protocol::limits::COMMIT_FORMAT;
use crate::protocol::{AccountName, ChangesResponse, CommitRequest, NodeId, Seq, TxnId};
use crate::remote::{Remote, RemoteError};

use super::SyncError;
use super::aside::{Aside, AsideFile, keep_out};
use super::execute::{Applied, LocalRun, remote_content};
use super::local::{LocalTree, Touched, scan};
use super::plan::{ConflictStamp, Context, Entry, Plan, diverged, plan_among};
use super::prefetch::Prefetch;
use super::preupload::with_early_upload;
use super::pulled::tree_rows;
use super::push::{Upload, build_ops, bytes_to_send, manifests_needed, upload_missing};
use super::state::{Loaded, RemoteTree, Row, SyncState};

/// How long the waker's long-poll waits for news.
const POLL_WAIT_SECS: u64 = 25;
/// Changes asked for per request.
const PAGE: u32 = 500;
/// Longest pause between attempts while the server is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How soon to look again at a file that is being written.
const BUSY_RETRY: Duration = Duration::from_millis(300);
/// Even with no news, look at both sides this often.
const RESCAN: Duration = Duration::from_secs(30);
/// A burst of local changes is taken together: wait this long after the first.
const SETTLE: Duration = Duration::from_millis(15);
/// Files named in `status` as in flight, at most.
const IN_FLIGHT_SHOWN: usize = 8;
/// Push steps per transaction (each makes at most two ops; the server takes 10,000).
const PUSH_BATCH: usize = 4000;

/// What the engine reports, read live by `status` through the daemon's control socket.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineStatus {
    /// The server answered the last request.
    pub online: bool,
    /// This device's name on the server.
    #[serde(default)]
    pub device: Option<String>,
    /// Seq of the last change pulled.
    pub cursor: u64,
    /// The server's head as of the last answer.
    pub server_head: u64,
    /// When the device last caught up with the server both ways (ms since the epoch).
    pub last_sync_ms: Option<i64>,
    /// Bytes sent to the server by this daemon.
    pub bytes_uploaded: u64,
    /// Bytes received from the server by this daemon.
    pub bytes_downloaded: u64,
    /// Bytes of content fetched ahead of its commit, while another device uploaded it
    /// (counted in `bytes_downloaded` too).
    #[serde(default)]
    pub bytes_prefetched: u64,
    /// Transactions not yet committed (local changes waiting included).
    #[serde(default)]
    pub pending_transactions: u64,
    /// Bytes of chunks still to upload in the transaction being pushed.
    #[serde(default)]
    pub chunk_upload_bytes: u64,
    /// Bytes of content still to bring in, at most.
    #[serde(default)]
    pub bytes_to_download: u64,
    /// Conflicts this state directory has resolved.
    #[serde(default)]
    pub conflicts: u64,
    /// Nothing to push or apply, nothing pending, caught up with the server.
    #[serde(default)]
    pub idle: bool,
    /// The last error, if the last attempt failed.
    pub last_error: Option<String>,
    /// After a failed attempt: time until the next one, in milliseconds.
    #[serde(default)]
    pub retry_in_ms: Option<u64>,
    /// Files whose content could not be rebuilt, set aside and tried again with backoff.
    #[serde(default)]
    pub set_aside: Vec<AsideFile>,
    /// Paths of files being uploaded or brought in now (the first few).
    #[serde(default)]
    pub in_flight: Vec<String>,
    /// Files whose content the current plan pushes (not counting versions not taken yet).
    #[serde(default)]
    pub files_to_upload: u64,
    /// Files whose content the current plan brings in.
    #[serde(default)]
    pub files_to_download: u64,
    /// When this status was written (ms since the epoch).
    #[serde(default)]
    pub updated_ms: i64,
}

/// A running sync engine.
#[derive(Debug)]
pub struct Engine {
    stop: Arc<AtomicBool>,
    wake: Arc<Wake>,
    thread: Option<JoinHandle<()>>,
    live: LiveStatus,
}

/// The engine's status, shared with whoever asks (the control socket): as last published,
/// with the byte counters read at the moment of asking, so progress shows while a long
/// upload or download runs.
#[derive(Clone)]
pub struct LiveStatus {
    published: Arc<Mutex<EngineStatus>>,
    /// Files whose chunks a scan is uploading early (before the plan names them in flight).
    scanning: Arc<Mutex<Vec<NodeId>>>,
    drive: Arc<Drive>,
    remote: Remote,
    to_upload: Arc<AtomicU64>,
    to_download: Arc<AtomicU64>,
}

impl std::fmt::Debug for LiveStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveStatus").finish_non_exhaustive()
    }
}

impl LiveStatus {
    /// The status now.
    pub fn get(&self) -> EngineStatus {
        let mut status = self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        (status.bytes_uploaded, status.bytes_downloaded) = self.remote.wire_stats();
        status.chunk_upload_bytes = self.to_upload.load(Ordering::Relaxed);
        status.bytes_to_download = self.to_download.load(Ordering::Relaxed);
        if status.in_flight.is_empty() {
            let scanning = self
                .scanning
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            status.in_flight = scanning.iter().filter_map(|n| self.path_of(*n)).collect();
        }
        status
    }

    /// The node's path in the mount, from the drive's tree.
    fn path_of(&self, node: NodeId) -> Option<String> {
        let mut parts = Vec::new();
        let mut at = node;
        while at != NodeId::ROOT {
            let view = self.drive.node_view(at)?;
            parts.push(String::from_utf8_lossy(&view.name).into_owned());
            at = view.parent;
            if parts.len() > 4096 {
                return None;
            }
        }
        parts.reverse();
        Some(format!("/{}", parts.join("/")))
    }

    /// Notes that the scan uploads chunks of `node` now (the latest few files).
    fn scanning(&self, node: NodeId) {
        let mut s = self.scanning.lock().unwrap_or_else(PoisonError::into_inner);
        s.retain(|n| *n != node);
        s.push(node);
        if s.len() > IN_FLIGHT_SHOWN {
            s.remove(0);
        }
    }

    fn scanned(&self) {
        self.scanning
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn set(&self, status: &EngineStatus) {
        *self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = status.clone();
    }
}

/// A doorbell: rung by the drive (local change) and the waker (remote news).
#[derive(Debug, Default)]
struct Wake {
    rung: Mutex<bool>,
    /// Mirrors `rung` (both change under its lock), so ringing a rung bell, as every write
    /// request of a burst does, costs one atomic load and no lock.
    hint: AtomicBool,
    cv: Condvar,
    /// Set by an explicit request to look now (`umount`, `status`): it also cuts a backoff
    /// short, which the drive's own rings (every write) must not.
    nudged: AtomicBool,
}

impl Wake {
    fn ring(&self) {
        if self.hint.load(Ordering::Acquire) {
            return;
        }
        if let Ok(mut r) = self.rung.lock() {
            *r = true;
            self.hint.store(true, Ordering::Release);
            self.cv.notify_all();
        }
    }

    fn is_rung(&self) -> bool {
        self.hint.load(Ordering::Acquire)
    }

    fn clear(&self) {
        if let Ok(mut r) = self.rung.lock() {
            *r = false;
            self.hint.store(false, Ordering::Release);
        }
    }

    /// Waits until rung or `timeout`; true if rung.
    fn wait(&self, timeout: Duration) -> bool {
        let Ok(guard) = self.rung.lock() else {
            return false;
        };
        match self.cv.wait_timeout_while(guard, timeout, |r| !*r) {
            Ok((r, _)) => *r,
            Err(_) => false,
        }
    }
}

/// What to do after a cycle.
enum Next {
    /// Something was done: look again at once.
    Again,
    /// Nothing can be done now; look again after this long (or when rung).
    Soon(Duration),
    /// All quiet.
    Idle,
    /// All quiet but for set-aside files: the next is due after this long.
    Aside(Duration),
}

struct Ctx {
    drive: Arc<Drive>,
    remote: Remote,
    state: SyncState,
    mem: Loaded,
    params: ChunkerParams,
    stop: Arc<AtomicBool>,
    wake: Arc<Wake>,
    /// What the waker's long-poll saw.
    polled: Arc<Polled>,
    status: EngineStatus,
    /// Where published statuses go.
    live: LiveStatus,
    to_upload: Arc<AtomicU64>,
    to_download: Arc<AtomicU64>,
    /// Cycles in a row cut short by a race or a refusal: each waits longer than the last, so
    /// a situation that does not resolve itself costs little (it is logged every time).
    setbacks: u32,
    /// The local tree (the last plan was made from it), kept up to date from one scan to
    /// the next.
    local: LocalTree,
    /// Nodes where the synced tree may differ from the remote tree (the synced tree moves
    /// to the remote tree there only), unless `unsynced_all`.
    unsynced: HashSet<NodeId>,
    /// The synced tree may differ from the remote tree anywhere (at start, after a join).
    unsynced_all: bool,
    /// Nodes where the local and remote trees may differ (the only ones the planner looks
    /// at), unless `diverged_all`.
    diverged: HashSet<NodeId>,
    /// The local or remote tree was built anew: the planner looks at every node.
    diverged_all: bool,
    /// Nodes whose synced or remote entry changed since the last scan (the local tree
    /// shows some of their fields), unless `touched_all`.
    touched: HashSet<NodeId>,
    /// The remote tree was replaced since the last scan.
    touched_all: bool,
    /// The remote tree was loaded from a snapshot in this run.
    joined: bool,
    /// Chunks the server said it holds during this cycle's scan (the early upload's).
    held: HashSet<ChunkId>,
    /// Content fetched ahead from the other devices' upload hints.
    prefetch: Prefetch,
    /// Files whose content could not be rebuilt, waiting for their next attempt.
    aside: Aside,
    /// The change that did not apply to the remote tree and made it reload from a snapshot:
    /// if the reloaded tree meets it again, the change log itself is at fault.
    reloaded_at: Option<Seq>,
    /// Bumped by everything a cycle gets done (a change pulled, a transaction committed,
    /// local steps applied): a cycle that asks to go again without moving it is stalled.
    progress: u64,
    /// Stalled cycles in a row.
    stalls: u32,
}

/// What the waker's long-poll saw, shared with the engine.
#[derive(Default)]
struct Polled {
    /// The highest server head seen.
    head: AtomicU64,
    /// The page the last long-poll brought, with the seq it asked after: the engine's next
    /// pull starts from it rather than asking the server again (a large change is megabytes).
    page: Mutex<Option<(Seq, ChangesResponse)>>,
}

impl Polled {
    /// The polled page of the changes after `cursor`, if that is what it holds and it
    /// reaches the highest head seen since. A page older than a commit of our own (a resent
    /// outbox transaction) would stop the pull short of it while the synced tree holds it:
    /// the planner would take our own changes for another device's deletes and moves.
    fn take_page(&self, cursor: Seq) -> Option<ChangesResponse> {
        let mut page = self.page.lock().unwrap_or_else(PoisonError::into_inner);
        match page.take() {
            Some((after, p))
                if after == cursor && p.head.0 >= self.head.load(Ordering::Relaxed) =>
            {
                Some(p)
            }
            _ => None,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn now_ms() -> i64 {
    crate::drive::to_nanos(std::time::SystemTime::now()) / 1_000_000
}

impl Engine {
    /// Starts syncing the drive with the volume, in threads of its own.
    pub fn start(drive: Arc<Drive>, remote: Remote, state: SyncState) -> Result<Engine, SyncError> {
        let stop = Arc::new(AtomicBool::new(false));
        let wake = Arc::new(Wake::default());
        let mem = state.load()?;
        let removed = state.collect_manifests()?;
        tracing::debug!(removed, "unreferenced manifests removed");
        let (to_upload, to_download) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let live = LiveStatus {
            published: Arc::default(),
            scanning: Arc::default(),
            drive: Arc::clone(&drive),
            remote: remote.clone(),
            to_upload: Arc::clone(&to_upload),
            to_download: Arc::clone(&to_download),
        };
        let status = EngineStatus {
            cursor: state.cursor()?.0,
            conflicts: state.conflicts()?,
            device: state.device()?,
            ..EngineStatus::default()
        };
        {
            let wake = Arc::clone(&wake);
            drive.set_change_hook(Arc::new(move || wake.ring()));
        }
        let polled = Arc::new(Polled {
            head: AtomicU64::new(status.cursor),
            ..Polled::default()
        });
        let prefetch = Prefetch::start(
            remote.clone(),
            drive.staging_dir()?.join("prefetch"),
            Arc::clone(&stop),
        )?;
        let mut ctx = Ctx {
            drive,
            remote: remote.clone(),
            state,
            mem,
            params: ChunkerParams::default(),
            stop: Arc::clone(&stop),
            wake: Arc::clone(&wake),
            polled: Arc::clone(&polled),
            status,
            live: live.clone(),
            to_upload,
            to_download,
            setbacks: 0,
            local: LocalTree::default(),
            unsynced: HashSet::new(),
            unsynced_all: true,
            diverged: HashSet::new(),
            diverged_all: true,
            touched: HashSet::new(),
            touched_all: false,
            joined: false,
            held: HashSet::new(),
            prefetch,
            aside: Aside::default(),
            reloaded_at: None,
            progress: 0,
            stalls: 0,
        };
        // Not idle until its first cycle says so.
        ctx.publish();
        {
            let (stop, wake) = (Arc::clone(&stop), Arc::clone(&wake));
            std::thread::Builder::new()
                .name("sync-waker".into())
                .spawn(move || waker(remote, stop, wake, polled))?;
        }
        let thread = std::thread::Builder::new()
            .name("sync".into())
            .spawn(move || ctx.run())?;
        Ok(Engine {
            stop,
            wake,
            thread: Some(thread),
            live,
        })
    }

    /// A handle that makes the engine look at both sides now (and publish its status), also
    /// in the middle of a backoff.
    pub fn nudger(&self) -> crate::drive::ChangeHook {
        let wake = Arc::clone(&self.wake);
        Arc::new(move || {
            wake.nudged.store(true, Ordering::Relaxed);
            wake.ring();
        })
    }

    /// Asks the engine to stop and waits for its current step (the waker thread, which may
    /// be in a long-poll, ends on its own).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake.ring();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// The engine's status, live.
    pub fn live_status(&self) -> LiveStatus {
        self.live.clone()
    }
}

/// Sleeps `total`, or less once `stop` is set (looked at every 50 ms).
pub(super) fn sleep_unless_stopped(stop: &AtomicBool, total: Duration) {
    sleep_while(total, || !stop.load(Ordering::Relaxed));
}

/// Sleeps `total`, or less once `go_on` says no (asked every 50 ms).
fn sleep_while(total: Duration, mut go_on: impl FnMut() -> bool) {
    let deadline = Instant::now() + total;
    while Instant::now() < deadline && go_on() {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The pause after the `n`th setback in a row (from 0): `first`, doubling, at most `cap`.
pub(super) fn doubling(first: Duration, n: u32, cap: Duration) -> Duration {
    first.saturating_mul(1 << n.min(16)).min(cap)
}

/// Whether a long-poll answer with nothing in it came back long before its wait: a server
/// that does not hold long-polls (or is shutting down) must not turn a poll loop into a
/// tight one, so the caller backs off as after a failure.
pub(super) fn returned_early(asked: Instant, empty: bool, wait_secs: u64) -> bool {
    empty && asked.elapsed() < Duration::from_secs(wait_secs) / 2
}

/// Long-polls the change log and rings when the head moves past what was seen.
fn waker(remote: Remote, stop: Arc<AtomicBool>, wake: Arc<Wake>, polled: Arc<Polled>) {
    let mut backoff = Duration::from_secs(1);
    while !stop.load(Ordering::Relaxed) {
        let after = Seq(polled.head.load(Ordering::Relaxed));
        let asked = Instant::now();
        match remote.changes(after, POLL_WAIT_SECS, 1) {
            Ok(page) => {
                if returned_early(asked, page.changes.is_empty(), POLL_WAIT_SECS) {
                    sleep_unless_stopped(&stop, backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                } else {
                    backoff = Duration::from_secs(1);
                }
                if page.head > after {
                    let head = page.head.0;
                    if !page.changes.is_empty() {
                        *polled.page.lock().unwrap_or_else(PoisonError::into_inner) =
                            Some((after, page));
                    }
                    polled.head.fetch_max(head, Ordering::Relaxed);
                    wake.ring();
                }
            }
            Err(e) => {
                tracing::debug!("waker: {e}");
                // Let the engine find out too: an idle engine would otherwise say `online`
                // until its next rescan (30 s).
                wake.ring();
                sleep_unless_stopped(&stop, backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

impl Ctx {
    fn run(&mut self) {
        let mut backoff = Duration::from_secs(1);
        while !self.stop.load(Ordering::Relaxed) {
            self.wake.clear();
            self.wake.nudged.store(false, Ordering::Relaxed);
            if self.status.idle {
                // Woken: a change may be waiting. Readers must not see `idle` while this
                // cycle scans (chunking a large file takes seconds) and takes the drive's
                // recorded versions.
                self.status.idle = false;
                self.publish();
            }
            let before = self.progress;
            let next = self.cycle();
            match next {
                Ok(Next::Again) if self.progress == before => {
                    let pause = self.stalled();
                    self.sleep(pause);
                }
                Ok(next) => {
                    backoff = Duration::from_secs(1);
                    self.stalls = 0;
                    self.status.online = true;
                    self.status.last_error = None;
                    self.status.retry_in_ms = None;
                    let quiet = matches!(next, Next::Idle | Next::Aside(_)) && !self.wake.is_rung();
                    self.status.idle = quiet;
                    if quiet {
                        self.status.pending_transactions = 0;
                        self.status.last_sync_ms = Some(now_ms());
                    }
                    self.publish();
                    match next {
                        Next::Again => {}
                        Next::Soon(d) => {
                            self.wake.wait(d);
                        }
                        Next::Idle => self.wait_quietly(RESCAN),
                        Next::Aside(due) => self.wait_quietly(due.min(RESCAN)),
                    }
                }
                Err(e) => {
                    if e.is_retryable() {
                        tracing::info!("sync: {e}; retrying in {backoff:?}");
                    } else {
                        tracing::error!("sync: {e}; retrying in {backoff:?}");
                    }
                    self.status.online = !matches!(&e, SyncError::Remote(r) if r.is_retryable());
                    self.status.idle = false;
                    self.status.last_error = Some(e.to_string());
                    self.status.retry_in_ms = Some(millis(backoff));
                    self.estimate_pending();
                    self.publish();
                    self.sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        self.publish();
    }

    /// A cycle asked to go again without getting anything done (a server whose head runs
    /// ahead of its change log, a commit refused again and again): the first time it goes
    /// again at once, as a refusal needs; then it backs off like a failure (1 s, doubling).
    fn stalled(&mut self) -> Duration {
        self.stalls = self.stalls.saturating_add(1);
        if self.stalls == 1 {
            return Duration::ZERO;
        }
        let pause = doubling(Duration::from_secs(1), self.stalls - 2, MAX_BACKOFF);
        let why = format!(
            "sync makes no progress (cursor {}, server head {})",
            self.status.cursor, self.status.server_head
        );
        tracing::warn!("{why}; looking again in {pause:?}");
        self.status.idle = false;
        self.status.last_error = Some(why);
        self.status.retry_in_ms = Some(millis(pause));
        self.publish();
        pause
    }

    /// Waits, all quiet, for a ring or `total`; a ring lets a burst of changes land first.
    fn wait_quietly(&self, total: Duration) {
        if self.wake.wait(total) {
            std::thread::sleep(SETTLE);
        }
    }

    /// Backs off for `total`, or less once stopped or nudged; the drive's rings do not cut it
    /// short (a program writing all the time would turn the backoff into a tight loop).
    fn sleep(&self, total: Duration) {
        sleep_while(total, || {
            !self.stop.load(Ordering::Relaxed) && !self.wake.nudged.swap(false, Ordering::Relaxed)
        });
    }

    fn publish(&mut self) {
        let (up, down) = self.remote.wire_stats();
        self.status.bytes_uploaded = up;
        self.status.bytes_downloaded = down;
        self.status.bytes_prefetched = self.prefetch.placed_bytes();
        self.status.chunk_upload_bytes = self.to_upload.load(Ordering::Relaxed);
        self.status.bytes_to_download = self.to_download.load(Ordering::Relaxed);
        self.status.set_aside = self.aside.report(&self.mem.remote.tree, Instant::now());
        self.status.updated_ms = now_ms();
        self.live.set(&self.status);
    }

    /// While the server is away: how many transactions the local changes would make, and
    /// how many bytes of chunks they would send at most.
    fn estimate_pending(&mut self) {
        let outbox = u64::from(matches!(self.state.outbox(), Ok(Some(_))));
        let known = self
            .status
            .device
            .clone()
            .and_then(|d| AccountName::new(d).ok());
        let (planned, bytes) = match known.map(|device| self.plan_now(&device)) {
            Some(Ok((plan, _, _))) => {
                let bytes = self
                    .chunks_to_push(&plan.to_remote)
                    .map_or(0, |chunks| bytes_to_send(&chunks, &self.held));
                (plan.to_remote.len().div_ceil(PUSH_BATCH) as u64, bytes)
            }
            Some(Err(_)) | None => (0, 0),
        };
        self.status.pending_transactions = outbox + planned;
        self.to_upload.store(bytes, Ordering::Relaxed);
    }

    /// The chunks pushing `steps` would name, their manifests read batch by batch (only one
    /// batch's manifests in memory at once).
    fn chunks_to_push(
        &mut self,
        steps: &[super::plan::PushStep],
    ) -> Result<Vec<super::push::ChunkAt>, SyncError> {
        let mut chunks = Vec::new();
        for batch in steps.chunks(PUSH_BATCH) {
            let known = self
                .state
                .manifests(manifests_needed(batch, &self.mem.remote))?;
            chunks.extend(build_ops(batch, &self.mem.remote, &known)?.1);
        }
        Ok(chunks)
    }

    fn device(&mut self) -> Result<AccountName, SyncError> {
        if let Some(name) = &self.status.device
            && let Ok(name) = AccountName::new(name.clone())
        {
            return Ok(name);
        }
        let me = self
            .remote
            .devices()?
            .into_iter()
            .find(|d| d.current)
            .ok_or_else(|| {
                SyncError::Inconsistent("the server does not name this device".into())
            })?;
        self.state.set_device(me.name.as_str())?;
        self.status.device = Some(me.name.as_str().to_string());
        Ok(me.name)
    }

    fn cycle(&mut self) -> Result<Next, SyncError> {
        let device = self.device()?;
        self.resend_outbox()?;
        if self.state.cursor()? == Seq(0) && !self.joined {
            self.join()?;
        }
        self.pull(None)?;
        let local = self.state.locals(self.aside.nodes())?;
        self.aside.settle(&self.mem.remote.tree, |node, content| {
            local.get(&node).is_some_and(|c| c.manifest == *content)
        });
        let started = Instant::now();
        let (plan, adjusted, busy_wait) = self.plan_now(&device)?;
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            "scanned and planned"
        );
        let caught_up = self.status.cursor >= self.status.server_head;
        if plan.is_empty() {
            self.synced_to_remote(&adjusted)?;
            self.status.pending_transactions = 0;
            (self.status.files_to_upload, self.status.files_to_download) = (0, 0);
            self.setbacks = 0;
            return Ok(if busy_wait {
                Next::Soon(BUSY_RETRY)
            } else if !caught_up {
                Next::Again
            } else if let Some(due) = self.aside.next_retry(Instant::now()) {
                Next::Aside(due)
            } else {
                Next::Idle
            });
        }
        self.status.pending_transactions = plan.to_remote.len().div_ceil(PUSH_BATCH) as u64;
        self.status.files_to_upload = plan
            .to_remote
            .iter()
            .filter(|step| match step {
                super::plan::PushStep::Write { .. } => true,
                super::plan::PushStep::Create { entry, .. } => {
                    matches!(entry.content, super::plan::Content::File { .. })
                }
                _ => false,
            })
            .count() as u64;
        self.status.files_to_download =
            plan.to_local.iter().filter_map(remote_content).count() as u64;
        self.status.idle = false;
        self.publish();
        tracing::debug!(
            to_local = plan.to_local.len(),
            to_remote = plan.to_remote.len(),
            conflicts = plan.conflicts.len(),
            "plan"
        );
        if !plan.to_local.is_empty() {
            let started = Instant::now();
            self.status.in_flight = plan
                .to_local
                .iter()
                .filter_map(remote_content)
                .filter_map(|(node, _)| self.mem.remote.tree.path_of(node))
                .take(IN_FLIGHT_SHOWN)
                .collect();
            self.publish();
            let mut run = LocalRun {
                drive: &self.drive,
                remote: &self.remote,
                prefetch: Some(&self.prefetch),
                state: &mut self.state,
                params: self.params,
                to_download: &self.to_download,
                placed: Vec::new(),
                unbuilt: Vec::new(),
            };
            let applied = run.run(&plan.to_local, &self.local.tree);
            let unbuilt = std::mem::take(&mut run.unbuilt);
            self.status.in_flight.clear();
            self.status.files_to_download = 0;
            let applied = applied?;
            self.progress += 1;
            if !unbuilt.is_empty() {
                let now = Instant::now();
                for u in unbuilt {
                    self.aside.set(u.node, u.content, u.reason, now);
                }
                // The synced tree must not take the remote tree as held: plan again with
                // those files kept out.
                return Ok(Next::Again);
            }
            if let Applied::Interrupted(why) = applied {
                tracing::info!("local steps interrupted by a local change: {why}");
                return Ok(Next::Soon(self.setback()));
            }
            tracing::info!(
                steps = plan.to_local.len(),
                ms = started.elapsed().as_millis() as u64,
                "applied the other devices' changes"
            );
        }
        if !plan.conflicts.is_empty() {
            for c in &plan.conflicts {
                tracing::warn!(?c, "conflict resolved");
            }
            self.status.conflicts = self.state.add_conflicts(plan.conflicts.len() as u64)?;
        }
        // Both sides hold the remote tree now, but for what is still to push.
        self.synced_to_remote(&adjusted)?;
        if !plan.to_remote.is_empty() {
            // The synced tree as each batch commits: the remote tree plus the batches so far.
            for batch in plan.to_remote.chunks(PUSH_BATCH) {
                match self.push(batch)? {
                    Pushed::Committed => self.progress += 1,
                    Pushed::Again => return Ok(Next::Again),
                    Pushed::Later => return Ok(Next::Soon(self.setback().max(BUSY_RETRY))),
                }
                self.status.pending_transactions =
                    self.status.pending_transactions.saturating_sub(1);
            }
            self.status.files_to_upload = 0;
        }
        self.setbacks = 0;
        Ok(Next::Again)
    }
}

/// How one push went.
enum Pushed {
    /// Committed.
    Committed,
    /// Refused: pull and plan again at once.
    Again,
    /// A local file changed under the upload: plan again shortly.
    Later,
}

impl Ctx {
    /// The plan of the local and remote trees now, with the nodes where the remote tree it
    /// was made against differs from the engine's (files being written, and files set aside,
    /// keep their content out of the plan until they settle: `None` where such a node was
    /// left out), and whether something waits on a busy file.
    fn plan_now(&mut self, device: &AccountName) -> Result<(Plan, Adjusted, bool), SyncError> {
        let (drive, mem, state, params) =
            (&self.drive, &mut self.mem, &mut self.state, self.params);
        let live = &self.live;
        let (local_tree, touched) = (&mut self.local, &self.touched);
        let touched = if self.touched_all {
            Touched::All
        } else {
            Touched::Some(touched)
        };
        let (local, held) = with_early_upload(&self.remote, |early| {
            // Called for every chunk cut: the live status hears only when the file changes.
            let mut last = None;
            scan(
                drive,
                mem,
                state,
                params,
                &mut |node, at, c, bytes| {
                    if last != Some(node) {
                        last = Some(node);
                        live.scanning(node);
                    }
                    early.offer(node, at, c, bytes)
                },
                local_tree,
                touched,
            )
        });
        live.scanned();
        let local = local?;
        self.touched.clear();
        self.touched_all = false;
        match &local.changed {
            Some(ids) => self.diverged.extend(ids.iter().copied()),
            None => self.diverged_all = true,
        }
        self.held = held;
        // The adjustments below go into the trees themselves, undone after planning: a copy
        // of each would cost the whole volume every cycle.
        let (l, r) = (&mut self.local.tree, &mut self.mem.remote.tree);
        // The entries as held (shared), so undoing them keeps the trees' sharing.
        let mut undo_l: Adjusted = BTreeMap::new();
        let mut undo_r: Adjusted = BTreeMap::new();
        let mut held = false;
        for node in self.aside.waiting(Instant::now()) {
            undo_l
                .entry(node)
                .or_insert_with(|| l.get_shared(node).cloned());
            undo_r
                .entry(node)
                .or_insert_with(|| r.get_shared(node).cloned());
            keep_out(node, &self.mem.synced, r, l);
        }
        for id in &local.busy {
            // Remote content for a file being written waits until it is closed: both sides'
            // content stays out of this plan.
            let (true, Some(re), Some(se)) =
                (l.get(*id).is_some(), r.get(*id), self.mem.synced.get(*id))
            else {
                continue;
            };
            if re.content != se.content {
                held = true;
                let c = se.content.clone();
                undo_l
                    .entry(*id)
                    .or_insert_with(|| l.get_shared(*id).cloned());
                undo_r
                    .entry(*id)
                    .or_insert_with(|| r.get_shared(*id).cloned());
                let _ = l.set_content(*id, c.clone());
                let _ = r.set_content(*id, c);
            }
        }
        let secs = now_ms().div_euclid(1000);
        let stamp = ConflictStamp::from_unix_secs(secs)
            .map_err(|e| SyncError::Inconsistent(e.to_string()))?;
        let seed = u128::from_le_bytes(NodeId::random().to_bytes());
        let ctx = Context::new(device.clone(), stamp, seed).with_local_only(local.local_only);
        // The nodes adjusted differ from what both trees hold otherwise: candidates too.
        let candidates: Option<BTreeSet<NodeId>> = (!self.diverged_all).then(|| {
            self.diverged
                .iter()
                .chain(undo_l.keys())
                .chain(undo_r.keys())
                .copied()
                .collect()
        });
        let planned = plan_among(l, &self.mem.synced, r, &ctx, candidates.as_ref());
        let adjusted: Adjusted = undo_r
            .keys()
            .map(|id| (*id, r.get_shared(*id).cloned()))
            .collect();
        let undone = r
            .update_shared(undo_r)
            .and_then(|()| l.update_shared(undo_l));
        undone.map_err(|e| SyncError::Inconsistent(format!("undoing plan adjustments: {e}")))?;
        // What still differs waits for a later plan: it stays a candidate.
        self.diverged = match candidates {
            Some(c) => c
                .into_iter()
                .filter(|id| l.get(*id) != r.get(*id))
                .collect(),
            None => diverged(l, r).into_iter().collect(),
        };
        self.diverged_all = false;
        let planned = planned.map_err(|e| SyncError::Inconsistent(format!("planner: {e}")))?;
        Ok((planned, adjusted, held || local.unsettled))
    }

    /// One more cycle cut short: how long to wait before the next (50 ms, doubling, at most
    /// 5 s).
    fn setback(&mut self) -> Duration {
        self.setbacks = self.setbacks.saturating_add(1);
        doubling(
            Duration::from_millis(50),
            self.setbacks,
            Duration::from_secs(5),
        )
    }

    /// Makes `tree` the synced tree, writing only what changed (comparing every node: for
    /// the rare cases, see [`Ctx::synced_to_remote`]).
    fn set_synced(&mut self, tree: super::plan::Tree) -> Result<(), SyncError> {
        let rows = tree_rows(&self.mem.synced, &tree);
        if !rows.is_empty() {
            self.state.save_synced(&rows)?;
        }
        // Taken even when equal: its entries are the ones the caller shares.
        self.mem.synced = tree;
        self.note_rows(&rows);
        Ok(())
    }

    /// Makes the remote tree, with `adjusted` over it, the synced tree: both sides hold it.
    /// Only the nodes where the two may differ are looked at.
    fn synced_to_remote(&mut self, adjusted: &Adjusted) -> Result<(), SyncError> {
        if !self.unsynced_all {
            let ids: BTreeSet<NodeId> = self
                .unsynced
                .iter()
                .chain(adjusted.keys())
                .copied()
                .collect();
            // Where the synced entry is equal already, it is held apart at most: it takes
            // the remote tree's, so the two share it.
            let mut changes: Vec<(NodeId, Option<Arc<Entry>>)> = Vec::new();
            let mut equal: Vec<(NodeId, Arc<Entry>)> = Vec::new();
            for id in ids {
                let want = match adjusted.get(&id) {
                    Some(e) => e.as_ref(),
                    None => self.mem.remote.tree.get_shared(id),
                };
                match (self.mem.synced.get_shared(id), want) {
                    (None, None) => {}
                    (Some(s), Some(w)) if s == w => {
                        if !Arc::ptr_eq(s, w) {
                            equal.push((id, Arc::clone(w)));
                        }
                    }
                    _ => changes.push((id, want.cloned())),
                }
            }
            let rows: Vec<Row> = changes
                .iter()
                .map(|(id, e)| Row::synced(*id, e.as_deref()))
                .collect();
            // Stored first, as `set_synced` does: memory never runs ahead of sync.db.
            if !rows.is_empty() {
                self.state.save_synced(&rows)?;
            }
            self.touched.extend(rows.iter().map(row_id));
            match self.mem.synced.update_shared(changes) {
                Ok(()) => {
                    for (id, e) in &equal {
                        self.mem.synced.adopt(*id, e);
                    }
                    self.unsynced = adjusted.keys().copied().collect();
                    return Ok(());
                }
                // Cannot happen while `unsynced` holds every node where they differ.
                Err(e) => tracing::warn!("synced tree update: {e}; comparing every node"),
            }
        }
        let mut tree = self.mem.remote.tree.clone();
        tree.update_shared(adjusted.iter().map(|(id, e)| (*id, e.clone())))
            .map_err(|e| SyncError::Inconsistent(format!("adjusted remote tree: {e}")))?;
        self.set_synced(tree)?;
        self.unsynced = adjusted.keys().copied().collect();
        self.unsynced_all = false;
        Ok(())
    }

    /// After the remote tree took `rows`: each node whose synced entry is equal holds that
    /// one (this device's own pushes, already in the synced tree, come back this way).
    fn share_remote_rows(&mut self, rows: &[Row]) {
        let (synced, remote) = (&self.mem.synced, &mut self.mem.remote.tree);
        for row in rows {
            if let Row::Put(id, _, _) = row
                && let Some(s) = synced.get_shared(*id)
            {
                remote.adopt(*id, s);
            }
        }
    }

    /// Notes the nodes of `rows` (written to the synced or remote tree) for the next scan,
    /// and as nodes where the two trees may differ.
    fn note_rows(&mut self, rows: &[Row]) {
        self.touched.extend(rows.iter().map(row_id));
        self.unsynced.extend(rows.iter().map(row_id));
        self.diverged.extend(rows.iter().map(row_id));
    }

    /// A new device (or one whose remote tree went wrong): the remote tree from a snapshot.
    fn join(&mut self) -> Result<(), SyncError> {
        let snap = self.remote.snapshot()?;
        tracing::info!(
            seq = snap.seq.0,
            nodes = snap.nodes.len(),
            "remote tree from a snapshot"
        );
        let remote = RemoteTree::from_snapshot(&snap.nodes)?;
        let manifests: Vec<&Manifest> = snap
            .nodes
            .iter()
            .filter_map(|n| n.manifest.as_ref())
            .collect();
        self.state.replace_remote(&remote, &manifests, snap.seq)?;
        self.mem.remote = remote;
        self.touched_all = true;
        self.unsynced_all = true;
        self.diverged_all = true;
        self.joined = true;
        self.progress += 1;
        self.status.cursor = snap.seq.0;
        self.status.server_head = self.status.server_head.max(snap.seq.0);
        self.polled.head.fetch_max(snap.seq.0, Ordering::Relaxed);
        Ok(())
    }

    /// Pulls changes into the remote tree: all there are, or up to `until`.
    fn pull(&mut self, until: Option<Seq>) -> Result<(), SyncError> {
        loop {
            let cursor = self.state.cursor()?;
            if until.is_some_and(|u| cursor >= u) {
                return Ok(());
            }
            let page = match self.polled.take_page(cursor) {
                Some(page) => page,
                None => self.remote.changes(cursor, 0, PAGE)?,
            };
            // A polled page may be older than the head already seen.
            self.status.server_head = self.status.server_head.max(page.head.0);
            self.polled.head.fetch_max(page.head.0, Ordering::Relaxed);
            for change in &page.changes {
                let mut known = self
                    .state
                    .manifests(self.mem.remote.write_bases(&change.ops))?;
                let rows = match self.mem.remote.apply(change.seq, &change.ops, &mut known) {
                    Ok(rows) => rows,
                    Err(e) if self.reloaded_at == Some(change.seq) => {
                        // A tree reloaded for this very change meets it again: the
                        // server's change log does not make sense here. Reloading once
                        // more would not help; the failure backs off and shows in status.
                        return Err(SyncError::Inconsistent(format!(
                            "the server's change {} does not apply to its own tree: {e}",
                            change.seq.0
                        )));
                    }
                    Err(e) => {
                        // The remote tree no longer matches the server's: start it over.
                        tracing::error!("change {}: {e}; reloading the remote tree", change.seq.0);
                        self.reloaded_at = Some(change.seq);
                        return self.join();
                    }
                };
                self.state
                    .save_remote(&rows, &row_manifests(&rows, &known), change.seq)?;
                self.share_remote_rows(&rows);
                self.note_rows(&rows);
                self.status.cursor = change.seq.0;
                self.progress += 1;
                if self.reloaded_at.is_some_and(|at| at <= change.seq) {
                    self.reloaded_at = None;
                }
            }
            if !page.more && until.is_none() {
                return Ok(());
            }
            if page.changes.is_empty() {
                return Ok(());
            }
        }
    }

    /// Applies committed push steps to the synced tree and stores the nodes they touched.
    fn synced_pushed(&mut self, steps: &[super::plan::PushStep]) -> Result<(), SyncError> {
        let ids: BTreeSet<NodeId> = steps.iter().map(push_node).collect();
        let before: Vec<(NodeId, Option<Arc<Entry>>)> = ids
            .iter()
            .map(|id| (*id, self.mem.synced.get_shared(*id).cloned()))
            .collect();
        for step in steps {
            if let Err(e) = self.mem.synced.apply_push(step) {
                // Back to where it was: the synced tree moves by whole batches only.
                let _ = self.mem.synced.update_shared(before);
                return Err(SyncError::Inconsistent(format!("pushed step: {e}")));
            }
        }
        let rows: Vec<Row> = ids
            .iter()
            .map(|id| Row::synced(*id, self.mem.synced.get(*id)))
            .collect();
        if let Err(e) = self.state.save_synced(&rows) {
            let _ = self.mem.synced.update_shared(before);
            return Err(e);
        }
        self.note_rows(&rows);
        Ok(())
    }

    /// Sends the transaction left in the outbox by an earlier attempt, with its own id, so
    /// the server applies it once whatever happened to the earlier answer.
    fn resend_outbox(&mut self) -> Result<(), SyncError> {
        let Some(req) = self.state.outbox()? else {
            return Ok(());
        };
        match self.remote.commit(&req) {
            Ok(resp) => {
                tracing::info!(
                    seq = resp.seq.0,
                    replayed = resp.replayed,
                    "outbox transaction committed"
                );
                // The pull that follows must reach it (see Polled::take_page).
                self.polled.head.fetch_max(resp.seq.0, Ordering::Relaxed);
                self.status.server_head = self.status.server_head.max(resp.seq.0);
                // This device's own transaction, built against the synced tree: the synced
                // tree holds it now (as push() does), or the next plan takes it for another
                // device's change and a file edited again meanwhile becomes a conflicted copy
                // of itself.
                let mut synced = RemoteTree {
                    tree: self.mem.synced.clone(),
                    versions: std::collections::HashMap::new(),
                };
                let mut known = self.state.manifests(synced.write_bases(&req.ops))?;
                // (It does not apply when the synced tree took it before a crash: push().)
                match synced.apply(resp.seq, &req.ops, &mut known) {
                    Ok(rows) => {
                        // Stored before the synced tree names them.
                        self.state.save_manifests(&row_manifests(&rows, &known))?;
                        self.set_synced(synced.tree)?;
                    }
                    Err(e) => tracing::info!(
                        "outbox transaction does not apply to the synced tree ({e}); the \
                         planner merges what differs as a change of both sides"
                    ),
                }
                self.state.remove_outbox(req.txn)?;
                self.progress += 1;
            }
            Err(e) if is_refusal(&e) => {
                // Its changes are still in the local tree: the next plan pushes them anew.
                tracing::info!("outbox transaction refused ({e}); planning again");
                self.state.remove_outbox(req.txn)?;
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// Uploads and commits one batch of push steps against the remote tree; once committed,
    /// the steps are applied to the synced tree.
    fn push(&mut self, steps: &[super::plan::PushStep]) -> Result<Pushed, SyncError> {
        let mut known = self
            .state
            .manifests(manifests_needed(steps, &self.mem.remote))?;
        let (ops, chunks) = build_ops(steps, &self.mem.remote, &known)?;
        let local = Some(&self.local.tree);
        self.status.in_flight = steps
            .iter()
            .filter_map(|step| match step {
                super::plan::PushStep::Create { node, .. }
                | super::plan::PushStep::Write { node, .. } => local.and_then(|l| l.path_of(*node)),
                _ => None,
            })
            .take(IN_FLIGHT_SHOWN)
            .collect();
        self.publish();
        let uploaded = upload_missing(
            &self.drive,
            &self.remote,
            &chunks,
            &self.held,
            &self.to_upload,
        );
        self.status.in_flight.clear();
        match uploaded? {
            Upload::Done => {}
            Upload::Changed(node) => {
                tracing::debug!(%node, "file changed during upload; planning again");
                return Ok(Pushed::Later);
            }
        }
        let req = CommitRequest {
            format: COMMIT_FORMAT,
            txn: TxnId::random(),
            ops,
        };
        self.state.put_outbox(&req)?;
        let cursor = self.state.cursor()?;
        match self.remote.commit(&req) {
            Ok(resp) => {
                // The server holds these steps: record that before anything else can fail.
                // Otherwise a pull that fails below (server gone) leaves this device's own
                // commit looking like another device's change on the next cycle, and a file
                // edited again meanwhile becomes a conflicted copy of itself. Before the
                // outbox lets go of it: after a crash in between, the replay finds the
                // synced tree already holding it.
                self.synced_pushed(steps)?;
                self.state.remove_outbox(req.txn)?;
                self.polled.head.fetch_max(resp.seq.0, Ordering::Relaxed);
                if resp.seq.0 == cursor.0 + 1 {
                    // Nobody committed in between: the remote tree is ours plus these ops.
                    // `known` holds the bases of the writes: the remote tree has not moved.
                    let rows = self.mem.remote.apply(resp.seq, &req.ops, &mut known)?;
                    self.state
                        .save_remote(&rows, &row_manifests(&rows, &known), resp.seq)?;
                    self.share_remote_rows(&rows);
                    self.note_rows(&rows);
                    self.status.cursor = resp.seq.0;
                    self.status.server_head = self.status.server_head.max(resp.seq.0);
                } else {
                    self.pull(Some(resp.seq))?;
                }
                tracing::debug!(seq = resp.seq.0, ops = req.ops.len(), "committed");
                Ok(Pushed::Committed)
            }
            Err(e) if is_refusal(&e) => {
                self.state.remove_outbox(req.txn)?;
                tracing::info!("commit refused ({e}); pulling and planning again");
                // A refusal after a fresh pull should not happen twice: do not spin on it.
                if self.setbacks >= 3 {
                    Ok(Pushed::Later)
                } else {
                    self.setbacks += 1;
                    Ok(Pushed::Again)
                }
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// The server refused the transaction as such (stale base, name taken, missing chunks):
/// sending it again cannot help.
fn is_refusal(e: &RemoteError) -> bool {
    matches!(
        e,
        RemoteError::Conflict(_) | RemoteError::BadRequest(_) | RemoteError::NotFound { .. }
    )
}

/// Where the remote tree a plan was made against differs from the engine's: the entry there
/// (`None`: left out).
type Adjusted = BTreeMap<NodeId, Option<Arc<Entry>>>;

/// The node a stored row is of.
fn row_id(row: &Row) -> NodeId {
    match row {
        Row::Put(id, _, _) | Row::Gone(id) => *id,
    }
}

/// The node a push step is of.
fn push_node(step: &super::plan::PushStep) -> NodeId {
    use super::plan::PushStep;
    match step {
        PushStep::Create { node, .. }
        | PushStep::Write { node, .. }
        | PushStep::SetAttrs { node, .. }
        | PushStep::Move { node, .. }
        | PushStep::Delete { node } => *node,
    }
}

/// The manifests of the files among `rows`, to store beside them.
fn row_manifests<'m>(
    rows: &[super::state::Row],
    manifests: &'m std::collections::HashMap<crate::chunking::ManifestId, Manifest>,
) -> Vec<&'m Manifest> {
    rows.iter()
        .filter_map(|r| match r {
            super::state::Row::Put(_, e, _) => match &e.content {
                super::plan::Content::File { manifest_id, .. } => manifests.get(manifest_id),
                _ => None,
            },
            super::state::Row::Gone(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(head: u64) -> ChangesResponse {
        ChangesResponse {
            head: Seq(head),
            changes: Vec::new(),
            more: false,
        }
    }

    #[test]
    fn a_polled_page_is_taken_only_from_its_cursor_and_while_it_reaches_the_head() {
        let polled = Polled::default();
        *polled.page.lock().unwrap() = Some((Seq(5), page(6)));
        polled.head.store(6, Ordering::Relaxed);
        assert!(polled.take_page(Seq(4)).is_none(), "another cursor");

        *polled.page.lock().unwrap() = Some((Seq(5), page(6)));
        assert_eq!(polled.take_page(Seq(5)).map(|p| p.head), Some(Seq(6)));
        assert!(polled.take_page(Seq(5)).is_none(), "taken once");

        // Our own commit went in at 7 after the waker read its page: the page is stale.
        *polled.page.lock().unwrap() = Some((Seq(5), page(6)));
        polled.head.fetch_max(7, Ordering::Relaxed);
        assert!(polled.take_page(Seq(5)).is_none(), "stale page");
    }
}
