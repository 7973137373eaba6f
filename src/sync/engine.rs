//! The engine thread: join from a snapshot, then long-poll the change log and apply each
//! transaction to the drive, with backoff while the server is unreachable.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::chunking::Manifest;
use crate::drive::{Drive, DriveError, RemoteAttrs, RemoteContent};
use crate::protocol::{Change, NodeId, NodeKind, NodeRecord, Op, Seq, Xattrs};
use crate::remote::Remote;

use super::SyncError;
use super::content::{materialize, materialize_from};
use super::state::{SyncState, SyncedUpdate};

/// How long one long-poll waits for news.
const POLL_WAIT_SECS: u64 = 20;
/// Changes asked for per request.
const PAGE: u32 = 500;
/// Longest pause between attempts while the server is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A join fetches chunks for at most this many bytes of files at once...
const JOIN_BATCH_BYTES: u64 = 64 << 20;
/// ...or this many files.
const JOIN_BATCH_FILES: usize = 2000;
/// How often a change blocked by a busy file is retried.
const BUSY_RETRY: Duration = Duration::from_millis(200);

/// What the engine reports (written to `sync-status.json` in the state directory).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineStatus {
    /// The server answered the last request.
    pub online: bool,
    /// Seq of the last change applied here.
    pub cursor: u64,
    /// The server's head as of the last answer.
    pub server_head: u64,
    /// When the device last caught up with the server (ms since the epoch).
    pub last_sync_ms: Option<i64>,
    /// Bytes sent to the server.
    pub bytes_uploaded: u64,
    /// Bytes received from the server.
    pub bytes_downloaded: u64,
    /// The last error, if the last attempt failed.
    pub last_error: Option<String>,
}

/// A running sync engine.
#[derive(Debug)]
pub struct Engine {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct Ctx {
    drive: Arc<Drive>,
    remote: Remote,
    state: SyncState,
    stop: Arc<AtomicBool>,
    status: EngineStatus,
    status_path: PathBuf,
}

fn now_ms() -> i64 {
    crate::drive::to_nanos(std::time::SystemTime::now()) / 1_000_000
}

impl Engine {
    /// Starts following the volume in a thread of its own.
    pub fn start(drive: Arc<Drive>, remote: Remote, state: SyncState) -> std::io::Result<Engine> {
        let stop = Arc::new(AtomicBool::new(false));
        let status_path = drive.state_root().join("sync-status.json");
        let mut ctx = Ctx {
            drive,
            remote,
            state,
            stop: Arc::clone(&stop),
            status: EngineStatus::default(),
            status_path,
        };
        let thread = std::thread::Builder::new()
            .name("sync".into())
            .spawn(move || ctx.run())?;
        Ok(Engine {
            stop,
            thread: Some(thread),
        })
    }

    /// Asks the engine to stop; it does at its next step (a long-poll may take its time,
    /// so this does not wait).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take()
            && t.is_finished()
        {
            let _ = t.join();
        }
    }

    /// The last status the engine wrote for `state_root`.
    pub fn read_status(state_root: &std::path::Path) -> Option<EngineStatus> {
        let text = std::fs::read_to_string(state_root.join("sync-status.json")).ok()?;
        serde_json::from_str(&text).ok()
    }
}

impl Ctx {
    fn run(&mut self) {
        let mut backoff = Duration::from_secs(1);
        while !self.stop.load(Ordering::Relaxed) {
            match self.cycle() {
                Ok(()) => backoff = Duration::from_secs(1),
                Err(e) => {
                    if e.is_retryable() {
                        tracing::info!("sync: {e}; retrying in {backoff:?}");
                    } else {
                        tracing::error!("sync: {e}; retrying in {backoff:?}");
                    }
                    self.status.online = !matches!(&e, SyncError::Remote(r) if r.is_retryable());
                    self.status.last_error = Some(e.to_string());
                    self.publish();
                    self.sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn sleep(&self, total: Duration) {
        let deadline = Instant::now() + total;
        while Instant::now() < deadline && !self.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn publish(&mut self) {
        let (up, down) = self.remote.wire_stats();
        self.status.bytes_uploaded = up;
        self.status.bytes_downloaded = down;
        let Ok(json) = serde_json::to_vec_pretty(&self.status) else {
            return;
        };
        let tmp = self.status_path.with_extension("json.tmp");
        if std::fs::write(&tmp, json)
            .and_then(|()| std::fs::rename(&tmp, &self.status_path))
            .is_err()
        {
            tracing::debug!("could not write sync status");
        }
    }

    fn cycle(&mut self) -> Result<(), SyncError> {
        let mut cursor = self.state.cursor()?;
        if cursor == Seq(0) {
            cursor = self.join()?;
            self.status.cursor = cursor.0;
            self.status.server_head = self.status.server_head.max(cursor.0);
            self.status.last_sync_ms = Some(now_ms());
            self.status.online = true;
        }
        // Before a long-poll that may last a while, say where we are.
        self.publish();
        // The first request after (re)connecting answers at once, so `status` shows the
        // drive online without waiting out a long-poll.
        let wait = if self.status.online {
            POLL_WAIT_SECS
        } else {
            0
        };
        let page = self.remote.changes(cursor, wait, PAGE)?;
        self.status.online = true;
        self.status.last_error = None;
        self.status.server_head = page.head.0;
        for change in &page.changes {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            self.apply_change(change)?;
            self.status.cursor = change.seq.0;
        }
        self.status.cursor = self.state.cursor()?.0;
        if self.status.cursor >= page.head.0 {
            self.status.last_sync_ms = Some(now_ms());
        }
        self.publish();
        Ok(())
    }

    /// A new device: build the whole tree from the server's snapshot.
    fn join(&mut self) -> Result<Seq, SyncError> {
        let snap = self.remote.snapshot()?;
        tracing::info!(
            seq = snap.seq.0,
            nodes = snap.nodes.len(),
            "joining the volume from a snapshot"
        );
        let mut children: HashMap<NodeId, Vec<&NodeRecord>> = HashMap::new();
        for n in &snap.nodes {
            if let Some(parent) = n.parent {
                children.entry(parent).or_default().push(n);
            }
        }
        let mut updates = Vec::new();
        // Files wait in a batch so their chunks come in a few large requests, not one each;
        // their directories exist by then (parents are created level by level).
        let mut files: Vec<&NodeRecord> = Vec::new();
        let mut batch_bytes = 0u64;
        let mut queue: VecDeque<NodeId> = VecDeque::from([NodeId::ROOT]);
        while let Some(dir) = queue.pop_front() {
            for &n in children.get(&dir).map(Vec::as_slice).unwrap_or_default() {
                if self.stop.load(Ordering::Relaxed) {
                    return Err(SyncError::Inconsistent("stopped while joining".into()));
                }
                if n.kind == NodeKind::Dir {
                    queue.push_back(n.node);
                }
                updates.push(SyncedUpdate::Set {
                    node: n.node,
                    version: n.version,
                    manifest: n.manifest.clone(),
                });
                if self.drive.ino_of(n.node).is_some() {
                    continue;
                }
                if n.kind == NodeKind::File {
                    batch_bytes += n.size;
                    files.push(n);
                    if batch_bytes >= JOIN_BATCH_BYTES || files.len() >= JOIN_BATCH_FILES {
                        self.join_files(&std::mem::take(&mut files))?;
                        batch_bytes = 0;
                    }
                } else {
                    self.create_local(
                        n.node,
                        dir,
                        n.name.as_ref().map(|x| x.as_str()),
                        n.kind,
                        n.mode,
                        n.mtime,
                        &n.xattrs,
                        n.manifest.as_ref(),
                        n.target.as_deref(),
                    )?;
                }
            }
        }
        self.join_files(&files)?;
        self.state.commit(&updates, snap.seq)?;
        Ok(snap.seq)
    }

    /// Creates a batch of files from the snapshot with one fetch of all their chunks.
    fn join_files(&self, files: &[&NodeRecord]) -> Result<(), SyncError> {
        let mut seen = std::collections::HashSet::new();
        let ids: Vec<_> = files
            .iter()
            .filter_map(|n| n.manifest.as_ref())
            .flat_map(|m| m.chunks.iter().map(|c| c.id))
            .filter(|id| seen.insert(*id))
            .collect();
        let mut supplied: HashMap<_, _> = self.remote.fetch(&ids)?.into_iter().collect();
        let empty = Manifest::default();
        for n in files {
            let (Some(parent), Some(name)) = (n.parent, n.name.as_ref()) else {
                return Err(SyncError::Inconsistent(format!(
                    "node {} has no place",
                    n.node
                )));
            };
            let staged = materialize_from(
                &self.drive,
                &mut supplied,
                n.manifest.as_ref().unwrap_or(&empty),
            )?;
            let attrs = remote_attrs(n.mode, n.mtime, &n.xattrs);
            if self.place(
                n.node,
                parent,
                name.as_str(),
                &attrs,
                RemoteContent::File(staged.path()),
            )? {
                staged.handed_over();
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn create_local(
        &self,
        node: NodeId,
        parent: NodeId,
        name: Option<&str>,
        kind: NodeKind,
        mode: u32,
        mtime: i64,
        xattrs: &Xattrs,
        manifest: Option<&Manifest>,
        target: Option<&str>,
    ) -> Result<(), SyncError> {
        let name =
            name.ok_or_else(|| SyncError::Inconsistent(format!("node {node} has no name")))?;
        let attrs = remote_attrs(mode, mtime, xattrs);
        match kind {
            NodeKind::Dir => self
                .place(node, parent, name, &attrs, RemoteContent::Dir)
                .map(|_| ()),
            NodeKind::Symlink => {
                let target = target.unwrap_or_default();
                self.place(
                    node,
                    parent,
                    name,
                    &attrs,
                    RemoteContent::Symlink(target.as_bytes()),
                )
                .map(|_| ())
            }
            NodeKind::File => {
                let empty = Manifest::default();
                let staged =
                    materialize(&self.drive, &self.remote, None, manifest.unwrap_or(&empty))?;
                if self.place(
                    node,
                    parent,
                    name,
                    &attrs,
                    RemoteContent::File(staged.path()),
                )? {
                    staged.handed_over();
                }
                Ok(())
            }
        }
    }

    /// Creates another device's node here; `false` if a local node already has the name
    /// (both are kept; resolving that is the planner's).
    fn place(
        &self,
        node: NodeId,
        parent: NodeId,
        name: &str,
        attrs: &RemoteAttrs,
        content: RemoteContent<'_>,
    ) -> Result<bool, SyncError> {
        match self
            .drive
            .apply_create(node, parent, name.as_bytes(), attrs, content)
        {
            Ok(_) => Ok(true),
            Err(DriveError::Exists) => {
                tracing::warn!(%node, name, "name taken locally; remote node not created here");
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Applies one transaction of another device, retrying ops blocked by busy files.
    fn apply_change(&mut self, change: &Change) -> Result<(), SyncError> {
        let mut updates = Vec::new();
        for op in &change.ops {
            loop {
                match self.apply_op(op, change.seq, &mut updates) {
                    Err(SyncError::Drive(DriveError::Busy))
                        if !self.stop.load(Ordering::Relaxed) =>
                    {
                        std::thread::sleep(BUSY_RETRY);
                    }
                    other => {
                        other?;
                        break;
                    }
                }
            }
        }
        self.state.commit(&updates, change.seq)
    }

    fn apply_op(
        &mut self,
        op: &Op,
        seq: Seq,
        updates: &mut Vec<SyncedUpdate>,
    ) -> Result<(), SyncError> {
        match op {
            Op::Create(c) => {
                if self.drive.ino_of(c.node).is_none() {
                    self.create_local(
                        c.node,
                        c.parent,
                        Some(c.name.as_str()),
                        c.kind,
                        c.mode,
                        c.mtime,
                        &c.xattrs,
                        c.manifest.as_ref(),
                        c.target.as_deref(),
                    )?;
                }
                updates.push(SyncedUpdate::Set {
                    node: c.node,
                    version: seq,
                    manifest: c.manifest.clone(),
                });
            }
            Op::Write(w) => {
                let base = match self.state.synced(w.node)? {
                    Some((_, Some(m))) => m,
                    _ => Manifest::default(),
                };
                let target = w.edit.apply(&base)?;
                if target.id() != w.manifest_id {
                    return Err(SyncError::Inconsistent(format!(
                        "write to {} does not give its manifest id",
                        w.node
                    )));
                }
                if self.drive.ino_of(w.node).is_some() {
                    let staged =
                        materialize(&self.drive, &self.remote, Some((w.node, &base)), &target)?;
                    match self.drive.apply_content(w.node, staged.path(), None) {
                        Ok(()) => staged.handed_over(),
                        // Both sides changed the file. Until this device pushes (and the
                        // planner's conflicted copies exist), its local bytes stay and the
                        // other version waits on the server: nothing is lost.
                        Err(DriveError::LocalChanges) => {
                            tracing::warn!(node = %w.node, "local changes kept over another device's write");
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                updates.push(SyncedUpdate::Set {
                    node: w.node,
                    version: seq,
                    manifest: Some(target),
                });
            }
            Op::SetAttrs(a) => {
                if let Some(current) = self.drive.node_view(a.node) {
                    let attrs = RemoteAttrs {
                        perm: a.mode.unwrap_or(current.perm),
                        mtime: a.mtime.unwrap_or(current.mtime),
                        xattrs: a
                            .xattrs
                            .as_ref()
                            .map(local_xattrs)
                            .unwrap_or(current.xattrs),
                    };
                    self.drive.apply_attrs(a.node, &attrs)?;
                }
                updates.push(SyncedUpdate::Version {
                    node: a.node,
                    version: seq,
                });
            }
            Op::Move(m) => {
                match self
                    .drive
                    .apply_move(m.node, m.new_parent, m.new_name.as_str().as_bytes())
                {
                    Ok(()) | Err(DriveError::NotFound) => {}
                    Err(DriveError::Exists) => {
                        tracing::warn!(node = %m.node, "move target name taken locally; left in place");
                    }
                    Err(e) => return Err(e.into()),
                }
                updates.push(SyncedUpdate::Version {
                    node: m.node,
                    version: seq,
                });
            }
            Op::Delete(d) => {
                match self.drive.apply_delete(d.node) {
                    Ok(()) | Err(DriveError::NotFound) => {}
                    // Edit against delete: the edit wins and the file stays.
                    Err(DriveError::LocalChanges) => {
                        tracing::warn!(node = %d.node, "locally edited file kept against a delete");
                    }
                    // Local children the server never saw keep the directory alive.
                    Err(DriveError::NotEmpty) => {
                        tracing::warn!(node = %d.node, "directory has local children; kept");
                    }
                    Err(e) => return Err(e.into()),
                }
                updates.push(SyncedUpdate::Forget { node: d.node });
            }
        }
        Ok(())
    }
}

fn remote_attrs(mode: u32, mtime: i64, xattrs: &Xattrs) -> RemoteAttrs {
    RemoteAttrs {
        perm: mode,
        mtime,
        xattrs: local_xattrs(xattrs),
    }
}

fn local_xattrs(x: &Xattrs) -> BTreeMap<Vec<u8>, Vec<u8>> {
    x.iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.0.clone()))
        .collect()
}
