//! Durable metadata in SQLite (WAL): node rows written behind by one writer thread in
//! group commits, with barriers that wait for durability (fsync, unmount).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::protocol::NodeId;

use super::node::{Ino, Kind, LinkName, Nanos, Node, PendingVersion, ROOT_INO};
use super::ranges::RangeSet;

/// How long the writer lets changes gather before committing them (no durability waits on it).
const GROUP_WINDOW: std::time::Duration = std::time::Duration::from_millis(5);

/// A batch this large is committed without waiting for the window.
const GROUP_ROWS: usize = 4096;

/// Version of the schema below. A store of an earlier version is upgraded in place at open
/// ([`migrate`]); one of a later version is refused, not guessed at.
const SCHEMA_VERSION: i64 = 3;

/// Further names of inodes (hard links, schema 3), each with its own node id; `backing` of
/// `nodes` is the key of the inode's backing file when it is not the primary name's id (NULL
/// then).
const LINKS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS links (
    link_id BLOB PRIMARY KEY,
    ino INTEGER NOT NULL,
    parent INTEGER NOT NULL,
    name BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS links_ino ON links(ino);
";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    ino INTEGER PRIMARY KEY,
    node_id BLOB NOT NULL,
    parent INTEGER NOT NULL,
    name BLOB NOT NULL,
    kind INTEGER NOT NULL,
    perm INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    size INTEGER NOT NULL,
    atime INTEGER NOT NULL,
    mtime INTEGER NOT NULL,
    ctime INTEGER NOT NULL,
    target BLOB NOT NULL,
    xattrs BLOB NOT NULL,
    dirty INTEGER NOT NULL,
    version INTEGER NOT NULL,
    rec_len INTEGER,
    rec_mtime INTEGER,
    rdev INTEGER NOT NULL DEFAULT 0,
    backing BLOB
);
CREATE INDEX IF NOT EXISTS nodes_parent ON nodes(parent);
CREATE TABLE IF NOT EXISTS pending_versions (
    ino INTEGER PRIMARY KEY,
    number INTEGER NOT NULL,
    ranges BLOB NOT NULL,
    size INTEGER NOT NULL,
    mtime INTEGER NOT NULL
);
";

/// Why the metadata store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused an operation.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The store was written by an incompatible version of deltadrive.
    #[error("state was written with schema version {found}, this build reads {expected}")]
    SchemaVersion {
        /// Version found on disk.
        found: i64,
        /// Version this build understands.
        expected: i64,
    },
    /// A stored row does not decode.
    #[error("corrupt metadata: {0}")]
    Corrupt(String),
    /// The writer thread failed to persist a batch; the changes are kept for a retry.
    #[error("metadata writer failed: {0}")]
    WriterFailed(String),
    /// The writer thread is gone.
    #[error("metadata writer stopped")]
    Stopped,
    /// The database file could not be created.
    #[error("creating the metadata database: {0}")]
    Io(#[from] std::io::Error),
}

/// Everything persistent about one node, as written to a row (no children, no runtime counts).
#[derive(Clone, Debug)]
pub struct NodeRow {
    id: NodeId,
    parent: Ino,
    name: Vec<u8>,
    kind: Kind,
    perm: u32,
    uid: u32,
    gid: u32,
    size: u64,
    atime: Nanos,
    mtime: Nanos,
    ctime: Nanos,
    target: Vec<u8>,
    rdev: u32,
    xattrs: Vec<u8>,
    dirty: bool,
    version: u64,
    recorded_stamp: Option<(u64, Nanos)>,
    pending: Option<PendingVersion>,
    /// The backing file's key when it is not `id`.
    backing_id: Option<NodeId>,
    links: Vec<LinkName>,
}

impl NodeRow {
    /// The persistent fields of `n`.
    pub fn of(n: &Node) -> NodeRow {
        NodeRow {
            id: n.id(),
            parent: n.parent,
            name: n.name.to_vec(),
            kind: n.kind,
            perm: n.perm(),
            uid: n.uid,
            gid: n.gid,
            size: n.size,
            atime: n.atime,
            mtime: n.mtime,
            ctime: n.ctime,
            target: n.target().to_vec(),
            rdev: n.rdev(),
            xattrs: encode_xattrs(n.xattrs()),
            dirty: !n.dirty().is_empty(),
            version: n.version(),
            recorded_stamp: n.recorded_stamp(),
            pending: n.pending.as_deref().cloned(),
            backing_id: (n.backing_id() != n.id()).then_some(n.backing_id()),
            links: n.links().to_vec(),
        }
    }
}

/// Changes waiting for the writer thread.
#[derive(Default)]
struct Batch {
    rows: HashMap<Ino, Option<NodeRow>>,
    meta: BTreeMap<String, i64>,
    /// A barrier waits for this batch: commit it with synchronous=FULL.
    full: bool,
}

#[derive(Default)]
struct State {
    batch: Batch,
    /// Number of the batch now accumulating; batches before it are committed or failed.
    open_gen: u64,
    committed_gen: u64,
    last_error: Option<String>,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes an idle writer when changes arrive.
    wake_writer: Condvar,
    /// Cuts the group-commit window short: a barrier or shutdown is waiting.
    urgent: Condvar,
    committed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves the batch usable; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The metadata store: loads the tree at mount, then persists changes in the background.
pub struct Store {
    path: PathBuf,
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// What the store holds, for `status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Nodes of every kind (the root included).
    pub nodes: u64,
    /// FIFOs, sockets and device nodes: they stay on this device.
    pub special: u64,
    /// Sum of file sizes.
    pub bytes: u64,
    /// Files with changes not yet recorded as a version.
    pub dirty_files: u64,
    /// Files with a recorded version the sync engine has not taken yet.
    pub pending_versions: u64,
    /// Bytes those versions changed (written or truncated ranges, within the file).
    pub pending_bytes: u64,
    /// Whether the last session ended with a clean unmount.
    pub clean: bool,
}

/// Upgrades a store of schema version `from` to [`SCHEMA_VERSION`], one version at a time,
/// each step in its own transaction with the version it reaches.
fn migrate(conn: &mut Connection, from: i64) -> Result<(), StoreError> {
    let mut version = from;
    while version < SCHEMA_VERSION {
        let tx = conn.transaction()?;
        match version {
            1 => migrate_1_to_2(&tx)?,
            2 => migrate_2_to_3(&tx)?,
            other => {
                return Err(StoreError::SchemaVersion {
                    found: other,
                    expected: SCHEMA_VERSION,
                });
            }
        }
        version += 1;
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'schema_version'",
            params![version],
        )?;
        tx.commit()?;
        tracing::info!(version, "metadata store upgraded");
    }
    Ok(())
}

/// Version 2: device numbers of device nodes (FIFOs, sockets and device nodes are new kind
/// codes; every version 1 row keeps its kind and gets rdev 0).
fn migrate_1_to_2(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute_batch("ALTER TABLE nodes ADD COLUMN rdev INTEGER NOT NULL DEFAULT 0;")?;
    Ok(())
}

/// Version 3: hard links. The `backing` column (NULL: the backing file is keyed by the node
/// id, as every file of an older store is) and the `links` table (empty: an older store has
/// one name per inode).
fn migrate_2_to_3(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute_batch("ALTER TABLE nodes ADD COLUMN backing BLOB;")?;
    tx.execute_batch(LINKS_SCHEMA)?;
    Ok(())
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    crate::private::create_db_file(path)?;
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

impl Store {
    /// Opens (creating if needed) the store at `path` and loads every node.
    ///
    /// Returns the store, the nodes, and whether the previous session shut down cleanly.
    /// The store is marked unclean until [`Store::close`] is called with `clean`.
    pub fn open(
        path: &Path,
        root_owner: (u32, u32),
    ) -> Result<(Store, HashMap<Ino, Node>, bool), StoreError> {
        let mut conn = open_connection(path)?;
        conn.execute_batch(SCHEMA)?;
        let version: Option<i64> = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        match version {
            None => {
                conn.execute_batch(LINKS_SCHEMA)?;
                conn.execute(
                    "INSERT INTO meta(key, value) VALUES ('schema_version', ?1)",
                    params![SCHEMA_VERSION],
                )?;
            }
            Some(v) if v == SCHEMA_VERSION => {}
            Some(found) if (1..SCHEMA_VERSION).contains(&found) => migrate(&mut conn, found)?,
            Some(found) => {
                return Err(StoreError::SchemaVersion {
                    found,
                    expected: SCHEMA_VERSION,
                });
            }
        }
        let clean: bool = conn
            .query_row("SELECT value FROM meta WHERE key = 'clean'", [], |r| {
                r.get::<_, i64>(0)
            })
            .optional()?
            .is_none_or(|v| v == 1);
        let mut nodes = load_nodes(&conn)?;
        if let std::collections::hash_map::Entry::Vacant(slot) = nodes.entry(ROOT_INO) {
            let now = super::node::now();
            let root = Node::new(
                NodeId::ROOT,
                ROOT_INO,
                Vec::new(),
                Kind::Dir,
                0o755,
                root_owner.0,
                root_owner.1,
                now,
            );
            let tx = conn.transaction()?;
            write_row(&tx, ROOT_INO, Some(&NodeRow::of(&root)))?;
            tx.commit()?;
            slot.insert(root);
        }
        // Until a clean unmount says otherwise, a restart must assume a crash.
        conn.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('clean', 0)",
            [],
        )?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake_writer: Condvar::new(),
            urgent: Condvar::new(),
            committed: Condvar::new(),
        });
        let writer_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("meta-writer".into())
            .spawn(move || writer_loop(conn, &writer_shared))
            .map_err(|e| StoreError::WriterFailed(e.to_string()))?;
        Ok((
            Store {
                path: path.to_path_buf(),
                shared,
                writer: Some(writer),
            },
            nodes,
            clean,
        ))
    }

    /// Queues rows to write (`None` deletes). Later calls for the same inode win.
    pub fn enqueue(&self, rows: impl IntoIterator<Item = (Ino, Option<NodeRow>)>) {
        let mut st = self.shared.lock();
        // The writer sleeps on `wake_writer` only while the batch is empty.
        let was_empty = st.batch.rows.is_empty() && st.batch.meta.is_empty();
        for (ino, row) in rows {
            st.batch.rows.insert(ino, row);
        }
        if was_empty && !st.batch.rows.is_empty() {
            self.shared.wake_writer.notify_one();
        }
    }

    /// Waits until everything queued so far is committed; with `durable`, fsynced too.
    pub fn barrier(&self, durable: bool) -> Result<(), StoreError> {
        let mut st = self.shared.lock();
        if st.shutdown {
            return Err(StoreError::Stopped);
        }
        let target = st.open_gen;
        st.batch.full |= durable;
        // A barrier always commits something: the writer wakes for it, and for a durable one
        // SQLite fsyncs the WAL, which holds every earlier commit too.
        st.batch
            .meta
            .insert("last_barrier".into(), super::node::now());
        self.shared.wake_writer.notify_one();
        if durable {
            self.shared.urgent.notify_one();
        }
        while st.committed_gen <= target {
            if let Some(err) = st.last_error.clone() {
                return Err(StoreError::WriterFailed(err));
            }
            st = self
                .shared
                .committed
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
        Ok(())
    }

    /// Records a clean shutdown after a final durable barrier, and stops the writer.
    pub fn close(mut self, clean: bool) -> Result<(), StoreError> {
        if clean {
            self.shared.lock().batch.meta.insert("clean".into(), 1);
        }
        let result = self.barrier(true);
        self.stop();
        result
    }

    fn stop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake_writer.notify_one();
        self.shared.urgent.notify_one();
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!("metadata writer thread panicked");
        }
    }

    /// Reads a summary straight from the database (works while a daemon has it open).
    pub fn summary(path: &Path) -> Result<Summary, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let special_codes = [
            Kind::Fifo,
            Kind::Socket,
            Kind::CharDevice,
            Kind::BlockDevice,
        ]
        .map(Kind::code);
        let (nodes, bytes, dirty_files, special): (u64, u64, u64, u64) = conn.query_row(
            "SELECT count(*), coalesce(sum(CASE WHEN kind = 1 THEN size ELSE 0 END), 0),
                    coalesce(sum(dirty), 0),
                    coalesce(sum(CASE WHEN kind IN (?1, ?2, ?3, ?4) THEN 1 ELSE 0 END), 0)
             FROM nodes",
            params![
                special_codes[0],
                special_codes[1],
                special_codes[2],
                special_codes[3]
            ],
            |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                    r.get::<_, i64>(3)? as u64,
                ))
            },
        )?;
        let mut pending_versions = 0u64;
        let mut pending_bytes = 0u64;
        let mut stmt = conn.prepare("SELECT ranges, size FROM pending_versions")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let blob: Vec<u8> = r.get(0)?;
            let size = r.get::<_, i64>(1)? as u64;
            let ranges = RangeSet::from_bytes(&blob)
                .ok_or_else(|| StoreError::Corrupt("pending version with bad ranges".into()))?;
            pending_versions += 1;
            pending_bytes += ranges
                .ranges()
                .iter()
                .map(|&(s, e)| e.min(size).saturating_sub(s))
                .sum::<u64>();
        }
        let clean = conn
            .query_row("SELECT value FROM meta WHERE key = 'clean'", [], |r| {
                r.get::<_, i64>(0)
            })
            .optional()?
            .is_some_and(|v| v == 1);
        Ok(Summary {
            nodes,
            special,
            bytes,
            dirty_files,
            pending_versions,
            pending_bytes,
            clean,
        })
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.stop();
    }
}

fn writer_loop(mut conn: Connection, shared: &Shared) {
    loop {
        let (batch, batch_gen) = {
            let mut st = shared.lock();
            while st.batch.rows.is_empty() && st.batch.meta.is_empty() && !st.shutdown {
                st = shared
                    .wake_writer
                    .wait(st)
                    .unwrap_or_else(|p| p.into_inner());
            }
            if st.batch.rows.is_empty() && st.batch.meta.is_empty() && st.shutdown {
                return;
            }
            // Group commit: give a burst of changes a moment to gather into one transaction,
            // unless someone waits for durability or the batch is already large.
            if !st.batch.full && !st.shutdown && st.batch.rows.len() < GROUP_ROWS {
                st = shared
                    .urgent
                    .wait_timeout(st, GROUP_WINDOW)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            let batch_gen = st.open_gen;
            st.open_gen += 1;
            (std::mem::take(&mut st.batch), batch_gen)
        };
        let result = commit(&mut conn, &batch);
        let mut st = shared.lock();
        match result {
            Ok(()) => {
                st.last_error = None;
                st.committed_gen = batch_gen + 1;
            }
            Err(e) => {
                tracing::error!("metadata commit failed, will retry: {e}");
                st.last_error = Some(e.to_string());
                // Put the batch back under anything newer, for the next round.
                for (ino, row) in batch.rows {
                    st.batch.rows.entry(ino).or_insert(row);
                }
                for (k, v) in batch.meta {
                    st.batch.meta.entry(k).or_insert(v);
                }
                st.batch.full |= batch.full;
                shared.committed.notify_all();
                drop(st);
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        }
        shared.committed.notify_all();
    }
}

fn commit(conn: &mut Connection, batch: &Batch) -> Result<(), StoreError> {
    if batch.full {
        conn.pragma_update(None, "synchronous", "FULL")?;
    }
    let tx = conn.transaction()?;
    for (&ino, row) in &batch.rows {
        write_row(&tx, ino, row.as_ref())?;
    }
    for (key, value) in &batch.meta {
        tx.prepare_cached("INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)")?
            .execute(params![key, value])?;
    }
    tx.commit()?;
    if batch.full {
        conn.pragma_update(None, "synchronous", "NORMAL")?;
    }
    Ok(())
}

fn write_row(
    tx: &rusqlite::Transaction<'_>,
    ino: Ino,
    node: Option<&NodeRow>,
) -> Result<(), StoreError> {
    let ino_sql = ino as i64;
    let Some(n) = node else {
        tx.prepare_cached("DELETE FROM nodes WHERE ino = ?1")?
            .execute(params![ino_sql])?;
        tx.prepare_cached("DELETE FROM pending_versions WHERE ino = ?1")?
            .execute(params![ino_sql])?;
        tx.prepare_cached("DELETE FROM links WHERE ino = ?1")?
            .execute(params![ino_sql])?;
        return Ok(());
    };
    tx.prepare_cached(
        "INSERT OR REPLACE INTO nodes(ino, node_id, parent, name, kind, perm, uid, gid, size,
             atime, mtime, ctime, target, xattrs, dirty, version, rec_len, rec_mtime, rdev,
             backing)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
                 ?19, ?20)",
    )?
    .execute(params![
        ino_sql,
        &n.id.to_bytes()[..],
        n.parent as i64,
        n.name,
        n.kind.code(),
        n.perm,
        n.uid,
        n.gid,
        n.size as i64,
        n.atime,
        n.mtime,
        n.ctime,
        n.target,
        n.xattrs,
        i64::from(n.dirty),
        n.version as i64,
        n.recorded_stamp.map(|(len, _)| len as i64),
        n.recorded_stamp.map(|(_, mtime)| mtime),
        n.rdev,
        n.backing_id.map(|b| b.to_bytes().to_vec()),
    ])?;
    // A name that moved to another inode (a split) is rewritten there in the same batch.
    tx.prepare_cached("DELETE FROM links WHERE ino = ?1")?
        .execute(params![ino_sql])?;
    for l in &n.links {
        tx.prepare_cached(
            "INSERT OR REPLACE INTO links(link_id, ino, parent, name) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            &l.id.to_bytes()[..],
            ino_sql,
            l.parent as i64,
            l.name.as_bytes()
        ])?;
    }
    match &n.pending {
        Some(p) => {
            tx.prepare_cached("INSERT OR REPLACE INTO pending_versions(ino, number, ranges, size, mtime) VALUES (?1, ?2, ?3, ?4, ?5)")?.execute(params![ino_sql, n.version as i64, p.ranges.to_bytes(), p.size as i64, p.mtime])?;
        }
        None => {
            tx.prepare_cached("DELETE FROM pending_versions WHERE ino = ?1")?
                .execute(params![ino_sql])?;
        }
    }
    Ok(())
}

fn load_nodes(conn: &Connection) -> Result<HashMap<Ino, Node>, StoreError> {
    let mut nodes = HashMap::new();
    let mut stmt = conn.prepare(
        "SELECT ino, node_id, parent, name, kind, perm, uid, gid, size, atime, mtime, ctime,
                target, xattrs, dirty, version, rec_len, rec_mtime, rdev, backing FROM nodes",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let ino: i64 = r.get(0)?;
        let id_bytes: Vec<u8> = r.get(1)?;
        let id: [u8; 16] = id_bytes
            .try_into()
            .map_err(|_| StoreError::Corrupt(format!("node {ino}: node id is not 16 bytes")))?;
        let kind_code: i64 = r.get(4)?;
        let kind = Kind::from_code(kind_code)
            .ok_or_else(|| StoreError::Corrupt(format!("node {ino}: unknown kind {kind_code}")))?;
        let xattr_blob: Vec<u8> = r.get(13)?;
        let xattrs = decode_xattrs(&xattr_blob)
            .ok_or_else(|| StoreError::Corrupt(format!("node {ino}: bad xattr blob")))?;
        let time: Nanos = r.get(9)?;
        let mut node = Node::new(
            NodeId::from_bytes(id),
            r.get::<_, i64>(2)? as Ino,
            r.get::<_, Vec<u8>>(3)?,
            kind,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
            time,
        );
        node.size = r.get::<_, i64>(8)? as u64;
        node.mtime = r.get(10)?;
        node.ctime = r.get(11)?;
        node.set_target(&r.get::<_, Vec<u8>>(12)?);
        node.set_xattrs(xattrs);
        if r.get::<_, i64>(14)? != 0 {
            // Which bytes changed was lost with the daemon: the whole file is dirty.
            node.mark_dirty(0, node.size);
        }
        node.set_version(r.get::<_, i64>(15)? as u64);
        let rec_len: Option<i64> = r.get(16)?;
        let rec_mtime: Option<i64> = r.get(17)?;
        node.set_recorded_stamp(rec_len.zip(rec_mtime).map(|(l, m)| (l as u64, m)));
        node.set_rdev(r.get(18)?);
        let backing: Option<Vec<u8>> = r.get(19)?;
        if let Some(b) = backing {
            node.set_backing_id(node_id(&b, ino)?);
        }
        node.set_blocks(None);
        nodes.insert(ino as Ino, node);
    }
    let mut stmt = conn.prepare("SELECT link_id, ino, parent, name FROM links")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let ino: i64 = r.get(1)?;
        let id = node_id(&r.get::<_, Vec<u8>>(0)?, ino)?;
        match nodes.get_mut(&(ino as Ino)) {
            Some(node) => node.links_mut().push(LinkName {
                id,
                parent: r.get::<_, i64>(2)? as Ino,
                name: r.get::<_, Vec<u8>>(3)?.into(),
            }),
            None => tracing::warn!(ino, "hard link of a missing node: ignored"),
        }
    }
    // Stored by id; kept in a stable order so the promoted name after an unlink is the same
    // on every open.
    for node in nodes.values_mut().filter(|n| !n.links().is_empty()) {
        node.links_mut().sort_by_key(|l| l.id.to_bytes());
    }
    let mut stmt = conn.prepare("SELECT ino, number, ranges, size, mtime FROM pending_versions")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let ino = r.get::<_, i64>(0)? as Ino;
        let ranges_blob: Vec<u8> = r.get(2)?;
        let ranges = RangeSet::from_bytes(&ranges_blob)
            .ok_or_else(|| StoreError::Corrupt(format!("pending version of {ino}: bad ranges")))?;
        if let Some(node) = nodes.get_mut(&ino) {
            // The two are written together from one node; should they differ, a number is
            // never handed out twice.
            let number = r.get::<_, i64>(1)? as u64;
            node.set_version(node.version().max(number));
            node.pending = Some(Box::new(PendingVersion {
                ranges,
                size: r.get::<_, i64>(3)? as u64,
                mtime: r.get(4)?,
            }));
        }
    }
    Ok(nodes)
}

/// A node id read from a 16-byte blob of the row of inode `ino`.
fn node_id(bytes: &[u8], ino: i64) -> Result<NodeId, StoreError> {
    let id: [u8; 16] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("node {ino}: node id is not 16 bytes")))?;
    Ok(NodeId::from_bytes(id))
}

/// Encodes xattrs as (u16 name length, name, u32 value length, value) records.
pub fn encode_xattrs(xattrs: &BTreeMap<Vec<u8>, Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in xattrs {
        // Names are at most 255 bytes and values at most 64 KiB (checked on set).
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    }
    out
}

/// Decodes [`encode_xattrs`]; `None` on truncated or malformed input.
pub fn decode_xattrs(mut bytes: &[u8]) -> Option<BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut map = BTreeMap::new();
    while !bytes.is_empty() {
        let (len, rest) = bytes.split_first_chunk::<2>()?;
        let (name, rest) = rest.split_at_checked(u16::from_le_bytes(*len) as usize)?;
        let (len, rest) = rest.split_first_chunk::<4>()?;
        let (value, rest) = rest.split_at_checked(u32::from_le_bytes(*len) as usize)?;
        map.insert(name.to_vec(), value.to_vec());
        bytes = rest;
    }
    Some(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xattr_blob_round_trips_and_rejects_truncation() {
        let mut m = BTreeMap::new();
        m.insert(b"user.a".to_vec(), b"1".to_vec());
        m.insert(b"user.empty".to_vec(), Vec::new());
        let blob = encode_xattrs(&m);
        assert_eq!(decode_xattrs(&blob), Some(m));
        for cut in 1..blob.len() {
            if let Some(partial) = decode_xattrs(&blob[..cut]) {
                assert!(
                    partial.len() < 2,
                    "a cut blob never decodes to the whole map"
                );
            }
        }
        assert_eq!(decode_xattrs(&[5, 0, b'a']), None);
    }

    #[test]
    fn a_store_from_before_hard_links_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let id = NodeId::random();
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA_V1).unwrap();
            conn.execute_batch(
                "INSERT INTO meta(key, value) VALUES ('schema_version', 1), ('clean', 1);",
            )
            .unwrap();
            conn.execute(
                "INSERT INTO nodes VALUES (5, ?1, 1, X'66', 1, 420, 0, 0, 3, 0, 0, 0, X'', X'', 0, 1, 3, 9)",
                params![&id.to_bytes()[..]],
            )
            .unwrap();
        }
        let (store, nodes, clean) = Store::open(&path, (0, 0)).unwrap();
        assert!(clean);
        let f = &nodes[&5];
        assert_eq!((f.id(), f.backing_id(), f.size), (id, id, 3));
        assert!(f.links().is_empty());
        // The upgraded store holds links and a backing key that is not the id.
        let mut linked = f.clone();
        let link = LinkName {
            id: NodeId::random(),
            parent: ROOT_INO,
            name: b"g".to_vec().into(),
        };
        linked.links_mut().push(link.clone());
        linked.set_id(NodeId::random());
        store.enqueue([(5, Some(NodeRow::of(&linked)))]);
        store.close(true).unwrap();
        let version: i64 = Connection::open(&path)
            .unwrap()
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let (_store, nodes, _) = Store::open(&path, (0, 0)).unwrap();
        let back = &nodes[&5];
        assert_eq!((back.id(), back.backing_id()), (linked.id(), id));
        assert_eq!(back.links(), &[link][..]);
    }

    #[test]
    fn rows_survive_reopen_and_barrier_commits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let (store, nodes, clean) = Store::open(&path, (1, 2)).unwrap();
        assert!(clean, "a new store has nothing to recover");
        assert_eq!(nodes[&ROOT_INO].uid, 1);
        let mut n = Node::new(
            NodeId::random(),
            ROOT_INO,
            b"f".to_vec(),
            Kind::File,
            0o640,
            3,
            4,
            5,
        );
        n.size = 42;
        n.xattrs_mut().insert(b"user.k".to_vec(), b"v".to_vec());
        n.mark_dirty(0, 1);
        store.enqueue([(7, Some(NodeRow::of(&n)))]);
        store.barrier(true).unwrap();
        let s = Store::summary(&path).unwrap();
        assert_eq!(
            (s.nodes, s.bytes, s.dirty_files, s.clean),
            (2, 42, 1, false)
        );
        store.close(true).unwrap();
        let (store, nodes, clean) = Store::open(&path, (0, 0)).unwrap();
        assert!(clean);
        let back = &nodes[&7];
        assert_eq!(
            (back.size, back.perm(), back.uid, back.gid),
            (42, 0o640, 3, 4)
        );
        assert_eq!(back.xattrs(), n.xattrs());
        assert_eq!(
            back.dirty().ranges(),
            &[(0, 42)],
            "an unrecorded change is wholly dirty after reload"
        );
        drop(store);
        let (_store, _nodes, clean) = Store::open(&path, (0, 0)).unwrap();
        assert!(!clean, "dropping without close is not a clean shutdown");
    }

    /// The schema of version 1, as the first release wrote it.
    const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    ino INTEGER PRIMARY KEY,
    node_id BLOB NOT NULL,
    parent INTEGER NOT NULL,
    name BLOB NOT NULL,
    kind INTEGER NOT NULL,
    perm INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    size INTEGER NOT NULL,
    atime INTEGER NOT NULL,
    mtime INTEGER NOT NULL,
    ctime INTEGER NOT NULL,
    target BLOB NOT NULL,
    xattrs BLOB NOT NULL,
    dirty INTEGER NOT NULL,
    version INTEGER NOT NULL,
    rec_len INTEGER,
    rec_mtime INTEGER
);
CREATE INDEX IF NOT EXISTS nodes_parent ON nodes(parent);
CREATE TABLE IF NOT EXISTS pending_versions (
    ino INTEGER PRIMARY KEY,
    number INTEGER NOT NULL,
    ranges BLOB NOT NULL,
    size INTEGER NOT NULL,
    mtime INTEGER NOT NULL
);
";

    fn schema_version(path: &Path) -> i64 {
        Connection::open(path)
            .expect("open")
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .expect("schema version")
    }

    #[test]
    fn a_version_1_store_is_upgraded_in_place_and_keeps_every_node() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let (root_id, dir_id, file_id, link_id) = (
            NodeId::ROOT,
            NodeId::random(),
            NodeId::random(),
            NodeId::random(),
        );
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA_V1).unwrap();
            conn.execute_batch(
                "INSERT INTO meta(key, value) VALUES ('schema_version', 1), ('clean', 1);",
            )
            .unwrap();
            let row = |ino: i64, id: NodeId, parent: i64, name: &str, kind: i64, size: i64| {
                conn.execute(
                    "INSERT INTO nodes(ino, node_id, parent, name, kind, perm, uid, gid, size,
                         atime, mtime, ctime, target, xattrs, dirty, version, rec_len, rec_mtime)
                     VALUES (?1, ?2, ?3, ?4, ?5, 420, 7, 8, ?6, 1, 2, 3, ?7, x'', 0, 4, ?6, 2)",
                    params![
                        ino,
                        &id.to_bytes()[..],
                        parent,
                        name.as_bytes(),
                        kind,
                        size,
                        if kind == 3 { &b"f"[..] } else { &b""[..] },
                    ],
                )
                .unwrap();
            };
            row(1, root_id, 1, "", 2, 0);
            row(2, dir_id, 1, "d", 2, 0);
            row(3, file_id, 2, "f", 1, 5);
            row(4, link_id, 2, "l", 3, 1);
            conn.execute(
                "INSERT INTO pending_versions(ino, number, ranges, size, mtime)
                 VALUES (3, 4, ?1, 5, 2)",
                params![RangeSet::new().to_bytes()],
            )
            .unwrap();
        }
        let (store, nodes, clean) = Store::open(&path, (0, 0)).unwrap();
        assert!(clean, "the upgrade keeps the clean flag");
        assert_eq!(schema_version(&path), SCHEMA_VERSION);
        assert_eq!(nodes.len(), 4, "every node survives the upgrade");
        let kinds: Vec<(Ino, Kind, NodeId, &[u8], u32)> = {
            let mut v: Vec<_> = nodes
                .iter()
                .map(|(&i, n)| (i, n.kind, n.id(), &n.name[..], n.rdev()))
                .collect();
            v.sort_by_key(|x| x.0);
            v
        };
        assert_eq!(
            kinds,
            vec![
                (1, Kind::Dir, root_id, &b""[..], 0),
                (2, Kind::Dir, dir_id, &b"d"[..], 0),
                (3, Kind::File, file_id, &b"f"[..], 0),
                (4, Kind::Symlink, link_id, &b"l"[..], 0),
            ]
        );
        assert_eq!(nodes[&3].size, 5);
        assert_eq!(nodes[&3].recorded_stamp(), Some((5, 2)));
        assert_eq!(
            nodes[&3].pending.as_ref().map(|_| nodes[&3].version()),
            Some(4)
        );
        assert_eq!(nodes[&4].target(), b"f");

        // The upgraded store takes the new kinds, and they survive a reopen.
        let fifo = Node::new(
            NodeId::random(),
            2,
            b"p".to_vec(),
            Kind::Fifo,
            0o600,
            7,
            8,
            9,
        );
        let mut null = Node::new(
            NodeId::random(),
            2,
            b"null".to_vec(),
            Kind::CharDevice,
            0o666,
            0,
            0,
            9,
        );
        null.set_rdev((1 << 8) | 3);
        store.enqueue([(5, Some(NodeRow::of(&fifo))), (6, Some(NodeRow::of(&null)))]);
        store.close(true).unwrap();
        let (_store, nodes, _) = Store::open(&path, (0, 0)).unwrap();
        assert_eq!((nodes[&5].kind, nodes[&5].rdev()), (Kind::Fifo, 0));
        assert_eq!((nodes[&6].kind, nodes[&6].rdev()), (Kind::CharDevice, 259));
        assert_eq!(nodes.len(), 6);
        let s = Store::summary(&path).unwrap();
        assert_eq!((s.nodes, s.special), (6, 2));
    }

    #[test]
    fn a_store_from_a_later_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        let (store, _, _) = Store::open(&path, (0, 0)).unwrap();
        store.close(true).unwrap();
        Connection::open(&path)
            .unwrap()
            .execute(
                "UPDATE meta SET value = ?1 WHERE key = 'schema_version'",
                params![SCHEMA_VERSION + 1],
            )
            .unwrap();
        match Store::open(&path, (0, 0)) {
            Err(StoreError::SchemaVersion { found, expected }) => {
                assert_eq!((found, expected), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
            }
            other => panic!(
                "expected a schema version error, got {:?}",
                other.map(|_| ())
            ),
        }
    }
}
