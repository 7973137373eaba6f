//! The sync state of one mount (`sync.db`): the remote and synced trees, the manifest of each
//! local file as last handed to the engine, the outbox, and the cursor.
//!
//! The trees are loaded into memory when the engine starts ([`SyncState::load`]); manifests
//! and the records of local files stay on disk, read when a cycle needs them
//! ([`SyncState::manifests`] through a bounded cache, [`SyncState::locals`]). Everything is written back change by change, each
//! in one SQLite transaction, so a crash leaves a state the next start can plan from: trees
//! that are each whole, and at most one transaction in the outbox.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use crate::chunking::{Manifest, ManifestId};
use crate::protocol::{CommitRequest, Name, NodeId, Seq, TxnId, Xattrs};

use super::SyncError;
use super::manifests::ManifestCache;
use super::plan::{Content, Entry, Tree};

/// The schema version this build writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

/// Version 1, frozen. Its tables were created before sync.db had a version, with `IF NOT
/// EXISTS`, so it also completes an unversioned file of that time (version 0 with tables).
const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS remote (
    node_id BLOB PRIMARY KEY, parent BLOB NOT NULL, name TEXT NOT NULL, mode INTEGER NOT NULL,
    mtime INTEGER NOT NULL, xattrs TEXT NOT NULL, kind INTEGER NOT NULL, manifest_id BLOB,
    size INTEGER NOT NULL, target TEXT, version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS synced (
    node_id BLOB PRIMARY KEY, parent BLOB NOT NULL, name TEXT NOT NULL, mode INTEGER NOT NULL,
    mtime INTEGER NOT NULL, xattrs TEXT NOT NULL, kind INTEGER NOT NULL, manifest_id BLOB,
    size INTEGER NOT NULL, target TEXT
);
CREATE TABLE IF NOT EXISTS local (
    node_id BLOB PRIMARY KEY, drive_version INTEGER NOT NULL, manifest_id BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS manifests (id BLOB PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (txn BLOB PRIMARY KEY, body TEXT NOT NULL);
";

/// Kind codes in the tree tables.
const DIR: i64 = 0;
const FILE: i64 = 1;
const SYMLINK: i64 = 2;

/// Which server and volume a state directory follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// Server URL.
    pub server: String,
    /// Volume name.
    pub volume: String,
}

/// The server's tree as far as this device has pulled: entries plus each node's version.
#[derive(Clone, Debug, Default)]
pub struct RemoteTree {
    /// The entries.
    pub tree: Tree,
    /// The seq of the last change to each node (the base of the next op on it).
    pub versions: HashMap<NodeId, Seq>,
}

/// A file's content as the engine last took it from the drive (or put it there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalContent {
    /// The drive's version number of the file when this manifest was taken.
    pub drive_version: u64,
    /// The manifest of the content.
    pub manifest: ManifestId,
}

/// A local file's content as last taken, as a scan reads it: the manifest (read from
/// sync.db when needed) and the size, which the local tree shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalFile {
    /// The manifest of the content.
    pub manifest: ManifestId,
    /// The content's size in bytes.
    pub size: u64,
}

impl LocalFile {
    /// The record of `m`.
    pub fn of(m: &Manifest) -> LocalFile {
        LocalFile {
            manifest: m.id(),
            size: m.size(),
        }
    }
}

/// Everything [`SyncState::load`] reads.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The remote tree (R).
    pub remote: RemoteTree,
    /// The synced tree (S).
    pub synced: Tree,
}

/// One change to a stored tree.
#[derive(Clone, Debug)]
pub enum Row {
    /// The node is (now) this entry, at this version (remote tree only).
    Put(NodeId, Entry, Option<Seq>),
    /// The node is gone.
    Gone(NodeId),
}

impl Row {
    /// A synced-tree row: the node's entry, or gone.
    pub fn synced(id: NodeId, entry: Option<&Entry>) -> Row {
        match entry {
            Some(e) => Row::Put(id, e.clone(), None),
            None => Row::Gone(id),
        }
    }
}

/// The stored trees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    /// The remote tree (R).
    Remote,
    /// The synced tree (S).
    Synced,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Remote => "remote",
            Table::Synced => "synced",
        }
    }
}

/// Manifest ids per query when reading manifests by id (SQLite's default bound on a
/// statement's parameters is 32,766; this keeps each statement small).
const IDS_PER_QUERY: usize = 500;

/// The sync state of one mount.
#[derive(Debug)]
pub struct SyncState {
    conn: Connection,
    /// Manifests read or written lately.
    cache: ManifestCache,
}

impl SyncState {
    /// Opens (creating) the state at `path`, upgrading an older schema; one written by a
    /// newer build is refused ([`SyncError::NewerSchema`]), not guessed at.
    pub fn open(path: &Path) -> Result<SyncState, SyncError> {
        crate::private::create_db_file(path)?;
        let conn = Connection::open(path)?;
        // `status` opens it beside a running daemon: wait for the writer rather than fail.
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        prepare_schema(&conn, path)?;
        Ok(SyncState {
            conn,
            cache: ManifestCache::default(),
        })
    }

    fn meta(&self, key: &str) -> Result<Option<String>, SyncError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    fn set_meta(&self, key: &str, value: &str) -> Result<(), SyncError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)",
            params![key, value],
        )?;
        Ok(())
    }

    /// Binds the state to `binding`, or checks that it already is.
    pub fn bind(&self, binding: &Binding) -> Result<(), SyncError> {
        match (self.meta("server")?, self.meta("volume")?) {
            (Some(server), Some(volume))
                if server == binding.server && volume == binding.volume =>
            {
                Ok(())
            }
            (Some(server), Some(volume)) => Err(SyncError::WrongBinding { server, volume }),
            _ => {
                self.set_meta("server", &binding.server)?;
                self.set_meta("volume", &binding.volume)
            }
        }
    }

    /// Whether the state accepts a plain `http://` server off loopback (`--insecure-http` at
    /// the join).
    pub fn insecure_http(&self) -> Result<bool, SyncError> {
        Ok(self.meta("insecure_http")?.as_deref() == Some("1"))
    }

    /// Remembers that the state accepts a plain `http://` server off loopback.
    pub fn set_insecure_http(&self) -> Result<(), SyncError> {
        self.set_meta("insecure_http", "1")
    }

    /// The binding, if any.
    pub fn binding(&self) -> Result<Option<Binding>, SyncError> {
        Ok(self
            .meta("server")?
            .zip(self.meta("volume")?)
            .map(|(server, volume)| Binding { server, volume }))
    }

    /// The seq of the last change pulled into the remote tree (0: start from a snapshot).
    pub fn cursor(&self) -> Result<Seq, SyncError> {
        Ok(Seq(self
            .meta("cursor")?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)))
    }

    /// This device's name on the server, once known.
    pub fn device(&self) -> Result<Option<String>, SyncError> {
        self.meta("device")
    }

    /// Remembers this device's name.
    pub fn set_device(&self, name: &str) -> Result<(), SyncError> {
        self.set_meta("device", name)
    }

    /// How many conflicts this state has resolved.
    pub fn conflicts(&self) -> Result<u64, SyncError> {
        Ok(self
            .meta("conflicts")?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// Adds `n` to the conflict counter.
    pub fn add_conflicts(&self, n: u64) -> Result<u64, SyncError> {
        let total = self.conflicts()? + n;
        self.set_meta("conflicts", &total.to_string())?;
        Ok(total)
    }

    /// Reads everything the engine keeps in memory (not the manifests nor the local
    /// records: see [`SyncState::manifests`] and [`SyncState::locals`]).
    pub fn load(&self) -> Result<Loaded, SyncError> {
        let (remote, versions) = self.load_tree(Table::Remote, None)?;
        // Mostly equal to the remote tree: its nodes share the remote tree's entries.
        let (synced, _) = self.load_tree(Table::Synced, Some(&remote))?;
        Ok(Loaded {
            remote: RemoteTree {
                tree: remote,
                versions,
            },
            synced,
        })
    }

    /// The records of the local files among `nodes` (a node without one is absent), in a
    /// few queries. The manifests read for their sizes go to the cache: the scan that asks
    /// re-chunks from them next.
    pub fn locals(
        &mut self,
        nodes: impl IntoIterator<Item = NodeId>,
    ) -> Result<HashMap<NodeId, LocalFile>, SyncError> {
        let mut nodes: Vec<NodeId> = nodes.into_iter().collect();
        nodes.sort_unstable();
        nodes.dedup();
        let mut found = HashMap::with_capacity(nodes.len());
        for part in nodes.chunks(IDS_PER_QUERY) {
            let marks = vec!["?"; part.len()].join(",");
            let mut st = self.conn.prepare_cached(&format!(
                "SELECT local.node_id, local.manifest_id, manifests.body FROM local
                 JOIN manifests ON manifests.id = local.manifest_id
                 WHERE local.node_id IN ({marks})"
            ))?;
            let mut rows = st.query(rusqlite::params_from_iter(
                part.iter().map(|id| id.to_bytes().to_vec()),
            ))?;
            while let Some(r) = rows.next()? {
                let id = manifest_id(&r.get::<_, Vec<u8>>(1)?)?;
                let size = match self.cache.get(&id) {
                    Some(m) => m.size(),
                    None => {
                        let m = Manifest::decode(&r.get::<_, Vec<u8>>(2)?)?;
                        let size = m.size();
                        self.cache.insert_with_id(id, m);
                        size
                    }
                };
                found.insert(
                    node_id(&r.get::<_, Vec<u8>>(0)?)?,
                    LocalFile { manifest: id, size },
                );
            }
        }
        Ok(found)
    }

    /// Every local file's record (a whole scan). A record whose manifest is missing is left
    /// out, as a file never taken (chunked again whole).
    pub fn all_locals(&self) -> Result<HashMap<NodeId, LocalFile>, SyncError> {
        let mut local = HashMap::new();
        let mut st = self.conn.prepare(
            "SELECT local.node_id, manifests.body FROM local
             JOIN manifests ON manifests.id = local.manifest_id",
        )?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let m = Manifest::decode(&r.get::<_, Vec<u8>>(1)?)?;
            local.insert(node_id(&r.get::<_, Vec<u8>>(0)?)?, LocalFile::of(&m));
        }
        Ok(local)
    }

    /// The manifests among `ids` that are stored (a missing one is absent from the answer),
    /// from the cache or read in a few queries, and kept in the cache.
    pub fn manifests(
        &mut self,
        ids: impl IntoIterator<Item = ManifestId>,
    ) -> Result<HashMap<ManifestId, Manifest>, SyncError> {
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        for id in ids {
            if found.contains_key(&id) {
                continue;
            }
            match self.cache.get(&id) {
                Some(m) => {
                    found.insert(id, m.clone());
                }
                None => missing.push(id),
            }
        }
        missing.sort_unstable();
        missing.dedup();
        for part in missing.chunks(IDS_PER_QUERY) {
            let marks = vec!["?"; part.len()].join(",");
            let mut st = self.conn.prepare_cached(&format!(
                "SELECT id, body FROM manifests WHERE id IN ({marks})"
            ))?;
            let mut rows = st.query(rusqlite::params_from_iter(
                part.iter().map(|id| id.as_bytes().to_vec()),
            ))?;
            while let Some(r) = rows.next()? {
                let id = manifest_id(&r.get::<_, Vec<u8>>(0)?)?;
                let m = Manifest::decode(&r.get::<_, Vec<u8>>(1)?)?;
                if m.id() != id {
                    return Err(SyncError::Inconsistent(format!(
                        "stored manifest {id} does not have that id"
                    )));
                }
                self.cache.insert_with_id(id, m.clone());
                found.insert(id, m);
            }
        }
        Ok(found)
    }

    /// The manifest `id`, if stored (see [`SyncState::manifests`]).
    pub fn manifest(&mut self, id: ManifestId) -> Result<Option<Manifest>, SyncError> {
        Ok(self.manifests([id])?.remove(&id))
    }

    /// Stores manifests in one transaction (INSERT OR IGNORE: one already stored stays).
    pub fn save_manifests(&mut self, manifests: &[&Manifest]) -> Result<(), SyncError> {
        if manifests.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        put_manifests(&tx, manifests)?;
        tx.commit()?;
        self.cache_all(manifests);
        Ok(())
    }

    /// Keeps manifests just stored in the cache: the cycle that wrote them reads them next.
    fn cache_all(&mut self, manifests: &[&Manifest]) {
        for m in manifests {
            self.cache.insert((*m).clone());
        }
    }

    /// The stored tree `table`, each entry shared with `like`'s where they are equal.
    fn load_tree(
        &self,
        table: Table,
        like: Option<&Tree>,
    ) -> Result<(Tree, HashMap<NodeId, Seq>), SyncError> {
        let version = match table {
            Table::Remote => "version",
            Table::Synced => "0",
        };
        let sql = format!(
            "SELECT node_id, parent, name, mode, mtime, xattrs, kind, manifest_id, size, target,
                    {version} FROM {}",
            table.name()
        );
        let mut st = self.conn.prepare(&sql)?;
        let mut rows = st.query([])?;
        let mut entries = Vec::new();
        let mut versions = HashMap::new();
        while let Some(r) = rows.next()? {
            let id = node_id(&r.get::<_, Vec<u8>>(0)?)?;
            let bad = |what: &str| SyncError::Inconsistent(format!("stored node {id}: {what}"));
            let name = Name::new(r.get::<_, String>(2)?).map_err(|_| bad("bad name"))?;
            let xattrs: Xattrs =
                serde_json::from_str(&r.get::<_, String>(5)?).map_err(|_| bad("bad xattrs"))?;
            let content = match r.get::<_, i64>(6)? {
                DIR => Content::Dir,
                FILE => Content::File {
                    manifest_id: manifest_id(
                        &r.get::<_, Option<Vec<u8>>>(7)?
                            .ok_or_else(|| bad("file without manifest"))?,
                    )?,
                    size: r.get::<_, i64>(8)? as u64,
                },
                SYMLINK => Content::Symlink {
                    target: r.get::<_, Option<String>>(9)?.unwrap_or_default(),
                },
                _ => return Err(bad("unknown kind")),
            };
            let entry = Entry {
                parent: node_id(&r.get::<_, Vec<u8>>(1)?)?,
                name,
                mode: r.get::<_, i64>(3)? as u32,
                mtime: r.get(4)?,
                xattrs,
                content,
            };
            entries.push((id, entry.share([like.and_then(|t| t.get_shared(id))])));
            if table == Table::Remote {
                versions.insert(id, Seq(r.get::<_, i64>(10)? as u64));
            }
        }
        let tree = Tree::from_shared(entries)
            .map_err(|e| SyncError::Inconsistent(format!("stored {} tree: {e}", table.name())))?;
        Ok((tree, versions))
    }

    /// Writes changes to the remote tree and the new cursor in one transaction, with the
    /// manifests the new entries name.
    pub fn save_remote(
        &mut self,
        rows: &[Row],
        manifests: &[&Manifest],
        cursor: Seq,
    ) -> Result<(), SyncError> {
        let tx = self.conn.transaction()?;
        put_manifests(&tx, manifests)?;
        write_rows(&tx, Table::Remote, rows)?;
        set_cursor(&tx, cursor)?;
        tx.commit()?;
        self.cache_all(manifests);
        Ok(())
    }

    /// Replaces the whole remote tree (a join from a snapshot) and sets the cursor.
    pub fn replace_remote(
        &mut self,
        remote: &RemoteTree,
        manifests: &[&Manifest],
        cursor: Seq,
    ) -> Result<(), SyncError> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM remote", [])?;
        put_manifests(&tx, manifests)?;
        let rows: Vec<Row> = remote
            .tree
            .iter()
            .map(|(id, e)| Row::Put(id, e.clone(), remote.versions.get(&id).copied()))
            .collect();
        write_rows(&tx, Table::Remote, &rows)?;
        set_cursor(&tx, cursor)?;
        tx.commit()?;
        Ok(())
    }

    /// Writes changes to the synced tree in one transaction.
    pub fn save_synced(&mut self, rows: &[Row]) -> Result<(), SyncError> {
        let tx = self.conn.transaction()?;
        write_rows(&tx, Table::Synced, rows)?;
        tx.commit()?;
        Ok(())
    }

    /// Records the manifest of a local file's content (`None`: forget the file).
    pub fn save_local(
        &mut self,
        node: NodeId,
        content: Option<(LocalContent, &Manifest)>,
    ) -> Result<(), SyncError> {
        self.save_locals(&[(node, content)])
    }

    /// Records several local contents in one transaction.
    pub fn save_locals(
        &mut self,
        contents: &[(NodeId, Option<(LocalContent, &Manifest)>)],
    ) -> Result<(), SyncError> {
        if contents.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        {
            let mut put = tx.prepare_cached(
                "INSERT OR REPLACE INTO local(node_id, drive_version, manifest_id)
                 VALUES (?1, ?2, ?3)",
            )?;
            let mut gone = tx.prepare_cached("DELETE FROM local WHERE node_id = ?1")?;
            for (node, content) in contents {
                match content {
                    Some((c, m)) => {
                        put_manifests(&tx, &[m])?;
                        put.execute(params![
                            &node.to_bytes()[..],
                            c.drive_version as i64,
                            &c.manifest.as_bytes()[..]
                        ])?;
                    }
                    None => {
                        gone.execute([&node.to_bytes()[..]])?;
                    }
                }
            }
        }
        tx.commit()?;
        for (_, content) in contents {
            if let Some((_, m)) = content {
                self.cache.insert((*m).clone());
            }
        }
        Ok(())
    }

    /// Removes manifests nothing names any more.
    pub fn collect_manifests(&self) -> Result<usize, SyncError> {
        Ok(self.conn.execute(
            "DELETE FROM manifests WHERE id NOT IN (
                SELECT manifest_id FROM remote WHERE manifest_id IS NOT NULL
                UNION SELECT manifest_id FROM synced WHERE manifest_id IS NOT NULL
                UNION SELECT manifest_id FROM local)",
            [],
        )?)
    }

    /// The transaction waiting in the outbox, if any.
    pub fn outbox(&self) -> Result<Option<CommitRequest>, SyncError> {
        let body: Option<String> = self
            .conn
            .query_row("SELECT body FROM outbox LIMIT 1", [], |r| r.get(0))
            .optional()?;
        body.map(|b| {
            serde_json::from_str(&b)
                .map_err(|e| SyncError::Inconsistent(format!("stored outbox transaction: {e}")))
        })
        .transpose()
    }

    /// Puts a transaction in the outbox (durably, before it is sent).
    pub fn put_outbox(&mut self, req: &CommitRequest) -> Result<(), SyncError> {
        let body = serde_json::to_string(req)
            .map_err(|e| SyncError::Inconsistent(format!("cannot encode a transaction: {e}")))?;
        self.conn.execute(
            "INSERT OR REPLACE INTO outbox(txn, body) VALUES (?1, ?2)",
            params![&req.txn.to_bytes()[..], body],
        )?;
        Ok(())
    }

    /// Removes a transaction from the outbox (answered, or refused and replanned).
    pub fn remove_outbox(&mut self, txn: TxnId) -> Result<(), SyncError> {
        self.conn
            .execute("DELETE FROM outbox WHERE txn = ?1", [&txn.to_bytes()[..]])?;
        Ok(())
    }
}

/// Brings the schema to [`SCHEMA_VERSION`]. Read and upgraded under one write lock, so two
/// processes opening an old or new file at once cannot both upgrade it; the lock is only
/// taken when there is something to do.
fn prepare_schema(conn: &Connection, path: &Path) -> Result<(), SyncError> {
    let version = |c: &Connection| c.pragma_query_value(None, "user_version", |r| r.get(0));
    if version(conn)? == SCHEMA_VERSION {
        return Ok(());
    }
    let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let steps = match version(&tx)? {
        0 => {
            let tables: i64 =
                tx.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
            if tables > 0 {
                tracing::info!(path = %path.display(), "unversioned sync state taken as schema 1");
            }
            SCHEMA_V1
        }
        SCHEMA_VERSION => return Ok(()),
        found => {
            return Err(SyncError::NewerSchema {
                path: path.to_path_buf(),
                found,
                known: SCHEMA_VERSION,
            });
        }
    };
    tx.execute_batch(&format!("{steps} PRAGMA user_version = {SCHEMA_VERSION};"))?;
    tx.commit()?;
    Ok(())
}

fn set_cursor(tx: &Transaction<'_>, cursor: Seq) -> Result<(), SyncError> {
    tx.execute(
        "INSERT OR REPLACE INTO meta(key, value) VALUES ('cursor', ?1)",
        [cursor.0.to_string()],
    )?;
    Ok(())
}

fn put_manifests(tx: &Transaction<'_>, manifests: &[&Manifest]) -> Result<(), SyncError> {
    let mut st = tx.prepare_cached("INSERT OR IGNORE INTO manifests(id, body) VALUES (?1, ?2)")?;
    for m in manifests {
        st.execute(params![&m.id().as_bytes()[..], m.encode()])?;
    }
    Ok(())
}

fn write_rows(tx: &Transaction<'_>, table: Table, rows: &[Row]) -> Result<(), SyncError> {
    let t = table.name();
    let mut put = tx.prepare_cached(&format!(
        "INSERT OR REPLACE INTO {t}
         (node_id, parent, name, mode, mtime, xattrs, kind, manifest_id, size, target{})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10{})",
        if table == Table::Remote {
            ", version"
        } else {
            ""
        },
        if table == Table::Remote { ", ?11" } else { "" },
    ))?;
    let mut gone = tx.prepare_cached(&format!("DELETE FROM {t} WHERE node_id = ?1"))?;
    for row in rows {
        match row {
            Row::Put(id, e, version) => {
                let xattrs = serde_json::to_string(&e.xattrs)
                    .map_err(|err| SyncError::Inconsistent(format!("xattrs of {id}: {err}")))?;
                let (kind, mid, size, target) = match &e.content {
                    Content::Dir => (DIR, None, 0, None),
                    Content::File { manifest_id, size } => {
                        (FILE, Some(manifest_id.as_bytes().to_vec()), *size, None)
                    }
                    Content::Symlink { target } => (SYMLINK, None, 0, Some(target.clone())),
                };
                let id_b = id.to_bytes().to_vec();
                let parent_b = e.parent.to_bytes().to_vec();
                let mut args: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(11);
                let (mode, size) = (i64::from(e.mode), size as i64);
                let name = e.name.as_str();
                args.extend([
                    &id_b as &dyn rusqlite::ToSql,
                    &parent_b,
                    &name,
                    &mode,
                    &e.mtime,
                    &xattrs,
                    &kind,
                    &mid,
                    &size,
                    &target,
                ]);
                let v = version.map_or(0, |s| s.0 as i64);
                if table == Table::Remote {
                    args.push(&v);
                }
                put.execute(args.as_slice())?;
            }
            Row::Gone(id) => {
                gone.execute([&id.to_bytes()[..]])?;
            }
        }
    }
    Ok(())
}

fn node_id(b: &[u8]) -> Result<NodeId, SyncError> {
    let arr: [u8; 16] = b
        .try_into()
        .map_err(|_| SyncError::Inconsistent("stored node id is not 16 bytes".into()))?;
    Ok(NodeId::from_bytes(arr))
}

fn manifest_id(b: &[u8]) -> Result<ManifestId, SyncError> {
    let arr: [u8; 32] = b
        .try_into()
        .map_err(|_| SyncError::Inconsistent("stored manifest id is not 32 bytes".into()))?;
    Ok(ManifestId::from_bytes(arr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_version(path: &Path) -> i64 {
        Connection::open(path)
            .and_then(|c| c.pragma_query_value(None, "user_version", |r| r.get(0)))
            .expect("read user_version")
    }

    /// A one-chunk manifest told apart by `seed`.
    fn manifest(seed: u32) -> Manifest {
        Manifest {
            chunks: vec![crate::chunking::ChunkRef {
                id: crate::chunking::ChunkId::of(&seed.to_le_bytes()),
                len: 100 + seed,
            }],
        }
    }

    #[test]
    fn manifests_written_are_read_back_from_disk_once_the_cache_let_them_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sync.db");
        let mut state = SyncState::open(&path).expect("open");
        let budget = 3 * 200;
        state.cache = ManifestCache::new(budget);
        // More than one query's worth of ids.
        let ms: Vec<Manifest> = (0..1200).map(manifest).collect();
        let nodes: Vec<NodeId> = ms.iter().map(|_| NodeId::random()).collect();
        let rows: Vec<(NodeId, Option<(LocalContent, &Manifest)>)> = nodes
            .iter()
            .zip(&ms)
            .map(|(n, m)| {
                let c = LocalContent {
                    drive_version: 1,
                    manifest: m.id(),
                };
                (*n, Some((c, m)))
            })
            .collect();
        state.save_locals(&rows).expect("save");
        assert!(state.cache.len() <= 3, "{} cached", state.cache.len());
        assert!(state.cache.bytes() <= budget);
        assert!(
            state.cache.get(&ms[0].id()).is_none(),
            "the first was let go"
        );

        let got = state.manifests(ms.iter().map(Manifest::id)).expect("read");
        assert_eq!(got.len(), ms.len());
        for m in &ms {
            assert_eq!(got.get(&m.id()), Some(m));
        }
        assert!(state.cache.bytes() <= budget, "reads respect the bound too");
        assert_eq!(
            state.manifest(ms[0].id()).expect("one"),
            Some(ms[0].clone())
        );
        assert_eq!(
            state.manifest(manifest(5000).id()).expect("unknown"),
            None,
            "a manifest never stored is absent"
        );

        // A new start: the local files with their sizes, read from disk.
        drop(state);
        let mut state = SyncState::open(&path).expect("reopen");
        let all = state.all_locals().expect("all");
        assert_eq!(all.len(), ms.len());
        assert_eq!(all.get(&nodes[7]), Some(&LocalFile::of(&ms[7])));
        assert!(state.cache.is_empty());
        let some = state
            .locals([nodes[7], nodes[900], NodeId::random()])
            .expect("some");
        assert_eq!(some.len(), 2, "a node without a record is absent");
        assert_eq!(some.get(&nodes[900]), Some(&LocalFile::of(&ms[900])));
        assert_eq!(
            state.manifest(ms[7].id()).expect("read"),
            Some(ms[7].clone())
        );
    }

    #[test]
    fn a_new_state_gets_the_current_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sync.db");
        let state = SyncState::open(&path).expect("open");
        assert_eq!(state.cursor().expect("cursor"), Seq(0));
        drop(state);
        assert_eq!(user_version(&path), SCHEMA_VERSION);
        // Opening again is a no-op that keeps it.
        SyncState::open(&path).expect("reopen");
        assert_eq!(user_version(&path), 1);
    }

    #[test]
    fn an_unversioned_state_is_taken_as_version_1_and_keeps_its_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sync.db");
        {
            // What deltadrive wrote before sync.db had a version: the tables, user_version 0.
            let conn = Connection::open(&path).expect("create");
            conn.execute_batch(SCHEMA_V1).expect("old schema");
            conn.execute_batch(
                "INSERT INTO meta(key, value) VALUES
                    ('server', 'http://127.0.0.1:1'), ('volume', 'v'), ('cursor', '42');
                 INSERT INTO outbox(txn, body) VALUES (x'00', '{}');",
            )
            .expect("old rows");
        }
        assert_eq!(user_version(&path), 0);
        let state = SyncState::open(&path).expect("open");
        assert_eq!(user_version(&path), 1);
        assert_eq!(state.cursor().expect("cursor"), Seq(42));
        assert_eq!(
            state.binding().expect("binding"),
            Some(Binding {
                server: "http://127.0.0.1:1".into(),
                volume: "v".into()
            })
        );
        let outbox: i64 = state
            .conn
            .query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))
            .expect("outbox");
        assert_eq!(outbox, 1);
    }

    #[test]
    fn a_state_from_a_newer_build_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sync.db");
        drop(SyncState::open(&path).expect("create"));
        Connection::open(&path)
            .and_then(|c| c.pragma_update(None, "user_version", 7))
            .expect("stamp a newer version");
        let err = SyncState::open(&path).expect_err("a newer schema must be refused");
        assert!(
            matches!(
                err,
                SyncError::NewerSchema {
                    found: 7,
                    known: 1,
                    ..
                }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("schema version 7 is newer") && msg.contains("sync.db"),
            "{msg}"
        );
        assert_eq!(user_version(&path), 7);
    }
}
