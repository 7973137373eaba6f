//! [`MetaStore`] on SQLite: a pool of reader connections and one writer thread that
//! group-commits: every write waiting when the thread wakes runs in its own savepoint of
//! one transaction, so one fsync serves many commits, and a refused commit rolls back alone.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::server::readers::ReaderPool;
use crate::server::recent::Recent;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::value::RawValue;

use super::commit;
use super::schema::{self, KIND_DIR, KIND_FILE, KIND_SYMLINK};
use super::{
    ChangesPage, CommitError, CommitOutcome, DeviceAuth, DeviceId, DeviceSummary, MetaError,
    MetaStore, SnapshotItem, StoredChange, TokenHash, UserId, UserSummary, VolumeAccess, VolumeId,
    VolumeSummary,
};
use crate::chunking::{ChunkId, ChunkRef, ManifestId};
use crate::protocol::{
    AccountName, CommitRequest, DeviceInfo, Name, NodeId, NodeKind, NodeRecord, Seq, TxnId,
    VolumeInfo, Xattrs,
};

/// Most writes folded into one group commit.
const MAX_GROUP: usize = 256;
/// How long device activity may wait in memory before it is written.
const ACTIVITY_FLUSH: Duration = Duration::from_secs(2);
/// A changes page stops growing past this many bytes of ops (at least one commit is sent).
const CHANGES_PAGE_BYTES: usize = 8 << 20;

type Reply = Box<dyn FnOnce(Result<(), Arc<rusqlite::Error>>) + Send>;

/// What a write job hands back: whether to keep its changes, and how to answer once the
/// group commit is done.
struct Finish {
    keep: bool,
    reply: Reply,
}

/// A write waiting for the writer thread, and how soon it must be on disk.
struct Job {
    run: Box<dyn FnOnce(&Connection) -> Finish + Send>,
    durability: Durability,
}

/// How soon a write is on disk once its caller hears back.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Durability {
    /// Synced before the answer.
    Now,
    /// Visible at once and synced with the next durable commit: the WAL is written in order,
    /// so a crash can lose it only together with every later commit.
    WithNext,
}

#[derive(Default)]
struct Activity {
    last_seen_ms: i64,
    cursors: HashMap<VolumeId, Seq>,
}

type ActivityMap = Arc<Mutex<HashMap<DeviceId, Activity>>>;

/// Holdings recorded lately, with each chunk's decoded length: the fetches and the commit
/// that follow an upload ask about exactly these.
pub(super) type HeldLately = Recent<(VolumeId, ChunkId), u32>;
/// Holdings remembered per generation: more than the chunks of two full commits of small
/// files, or 224 MiB of 16 KiB chunks; at most ~1.6 MiB for both generations (see
/// [`Recent`]), whatever the volume's size.
const HELD_LATELY: usize = crate::server::recent::FULL_AT_16K;

/// The embedded metadata store: one SQLite file in WAL mode, `synchronous=FULL` for every
/// write but the volume holdings (see [`Durability`]).
pub struct SqliteMeta {
    path: PathBuf,
    readers: ReaderPool,
    writer: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    activity: ActivityMap,
    held: Arc<HeldLately>,
}

impl std::fmt::Debug for SqliteMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteMeta")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteMeta {
    /// Opens (creating if needed) the store at `path`, and starts its writer thread.
    pub fn open(path: &Path) -> Result<Self, MetaError> {
        if let Some(dir) = path.parent() {
            crate::private::create_dir_all(dir).map_err(|source| MetaError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        crate::private::create_db_file(path).map_err(|source| MetaError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let conn = Connection::open(path)?;
        schema::prepare(&conn, true)?;
        let (tx, rx) = mpsc::channel::<Job>();
        let activity = ActivityMap::default();
        let thread_activity = activity.clone();
        let thread = std::thread::Builder::new()
            .name("meta-writer".into())
            .spawn(move || writer_loop(&conn, &rx, &thread_activity))
            .map_err(|source| MetaError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            readers: ReaderPool::default(),
            writer: Some(tx),
            thread: Some(thread),
            activity,
            held: Arc::new(HeldLately::new(HELD_LATELY)),
        })
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T, MetaError>) -> Result<T, MetaError> {
        let open = || -> Result<Connection, MetaError> {
            let c = Connection::open(&self.path)?;
            schema::prepare(&c, false)?;
            crate::server::readers::bound_cache(&c)?;
            Ok(c)
        };
        self.readers.with(open, f)
    }

    /// Runs `f` on the writer thread inside a savepoint of the next group commit; returns
    /// once that commit is durable. An `Err` from `f` rolls back `f`'s changes only.
    fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<MetaError> + Send + 'static,
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    {
        self.write_with(Durability::Now, f)
    }

    /// [`Self::write`], returning once the group commit is done with the durability asked.
    fn write_with<T, E, F>(&self, durability: Durability, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<MetaError> + Send + 'static,
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel::<Result<T, E>>(1);
        let run = Box::new(move |conn: &Connection| {
            let result = f(conn);
            let keep = result.is_ok();
            Finish {
                keep,
                reply: Box::new(move |committed| {
                    let out = match (committed, result) {
                        (_, Err(e)) => Err(e),
                        (Ok(()), Ok(v)) => Ok(v),
                        (Err(e), Ok(_)) => Err(E::from(MetaError::GroupCommit(e))),
                    };
                    // The caller may have gone away; then nobody needs the answer.
                    let _ = tx.send(out);
                }),
            }
        });
        let job = Job { run, durability };
        let sender = self.writer.as_ref().ok_or(MetaError::WriterGone)?;
        sender
            .send(job)
            .map_err(|_| E::from(MetaError::WriterGone))?;
        rx.recv().map_err(|_| E::from(MetaError::WriterGone))?
    }

    /// Gives every holding recorded without a length (schema 1) the length `len_of` finds
    /// for its chunk; `len_of` answers `None` for a chunk the chunk store lacks, whose
    /// holding then stays unusable until a device uploads it again. Returns how many
    /// holdings it filled.
    pub fn fill_chunk_lens<E>(
        &self,
        mut len_of: impl FnMut(&ChunkId) -> Result<Option<u32>, E>,
    ) -> Result<u64, E>
    where
        E: From<MetaError> + Send + 'static,
    {
        let unknown: Vec<ChunkId> = self.read(|c| {
            let mut st = c.prepare("SELECT DISTINCT chunk FROM volume_chunks WHERE len IS NULL")?;
            let rows = st.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
            let mut ids = Vec::new();
            for row in rows {
                ids.push(ChunkId::from_bytes(blob32(&row?, "chunk id")?));
            }
            Ok(ids)
        })?;
        let mut found = Vec::with_capacity(unknown.len());
        for id in &unknown {
            if let Some(len) = len_of(id)? {
                found.push((*id, len));
            }
        }
        if found.is_empty() {
            return Ok(0);
        }
        self.write(move |c| {
            let mut st = c
                .prepare_cached(
                    "UPDATE volume_chunks SET len = ?2 WHERE chunk = ?1 AND len IS NULL",
                )
                .map_err(MetaError::from)?;
            let mut filled = 0u64;
            for (id, len) in &found {
                filled += st
                    .execute(params![&id.as_bytes()[..], len])
                    .map_err(MetaError::from)? as u64;
            }
            Ok(filled)
        })
    }

    /// Waits until device activity noted so far is written.
    fn flush_activity(&self) -> Result<(), MetaError> {
        self.write(|_| Ok::<(), MetaError>(()))
    }
}

impl Drop for SqliteMeta {
    fn drop(&mut self) {
        // Closing the channel makes the writer flush activity and stop.
        self.writer.take();
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("metadata writer thread panicked");
        }
    }
}

fn writer_loop(conn: &Connection, rx: &Receiver<Job>, activity: &ActivityMap) {
    // As schema::prepare leaves the connection.
    let mut synced = Durability::Now;
    loop {
        let (first, closing) = match rx.recv_timeout(ACTIVITY_FLUSH) {
            Ok(job) => (Some(job), false),
            Err(RecvTimeoutError::Timeout) => (None, false),
            Err(RecvTimeoutError::Disconnected) => (None, true),
        };
        let mut jobs: Vec<Job> = first.into_iter().collect();
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let pending = std::mem::take(&mut *activity.lock().unwrap_or_else(PoisonError::into_inner));
        if !jobs.is_empty() || !pending.is_empty() {
            // Device activity may be lost in a crash anyway (it waits in memory).
            let wanted = if jobs.iter().any(|j| j.durability == Durability::Now) {
                Durability::Now
            } else {
                Durability::WithNext
            };
            if wanted != synced {
                let level = match wanted {
                    Durability::Now => "FULL",
                    Durability::WithNext => "NORMAL",
                };
                match conn.pragma_update(None, "synchronous", level) {
                    Ok(()) => synced = wanted,
                    // A lazy group synced anyway is only slower.
                    Err(e) if wanted == Durability::WithNext => {
                        tracing::warn!(error = %e, "cannot relax synchronous");
                    }
                    Err(e) => {
                        // Unanswered, the callers see WriterGone: retryable.
                        tracing::error!(error = %e, "cannot set synchronous=FULL");
                        continue;
                    }
                }
            }
            run_group(conn, jobs, &pending);
        }
        if closing {
            return;
        }
    }
}

fn run_group(conn: &Connection, jobs: Vec<Job>, pending: &HashMap<DeviceId, Activity>) {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        tracing::error!(error = %e, "cannot begin group commit");
        // Dropping the jobs unanswered makes their callers see WriterGone: retryable.
        return;
    }
    if let Err(e) = write_activity(conn, pending) {
        tracing::warn!(error = %e, "device activity not recorded");
    }
    let mut finishes = Vec::with_capacity(jobs.len());
    for job in jobs {
        if let Err(e) = conn.execute_batch("SAVEPOINT job") {
            abort_group(conn, finishes, e);
            return;
        }
        let finish = (job.run)(conn);
        let end = if finish.keep {
            conn.execute_batch("RELEASE job")
        } else {
            conn.execute_batch("ROLLBACK TO job; RELEASE job")
        };
        finishes.push(finish);
        if let Err(e) = end {
            abort_group(conn, finishes, e);
            return;
        }
    }
    let committed = match conn.execute_batch("COMMIT") {
        Ok(()) => Ok(()),
        Err(e) => {
            tracing::error!(error = %e, "group commit failed");
            if let Err(e2) = conn.execute_batch("ROLLBACK") {
                tracing::error!(error = %e2, "rollback after failed commit failed");
            }
            Err(Arc::new(e))
        }
    };
    for f in finishes {
        (f.reply)(committed.clone());
    }
}

fn abort_group(conn: &Connection, finishes: Vec<Finish>, e: rusqlite::Error) {
    tracing::error!(error = %e, "group commit aborted");
    if let Err(e2) = conn.execute_batch("ROLLBACK") {
        tracing::error!(error = %e2, "rollback failed");
    }
    let e = Arc::new(e);
    for f in finishes {
        (f.reply)(Err(e.clone()));
    }
}

fn write_activity(
    conn: &Connection,
    pending: &HashMap<DeviceId, Activity>,
) -> Result<(), rusqlite::Error> {
    for (device, act) in pending {
        conn.execute(
            "UPDATE devices SET last_seen_ms = max(coalesce(last_seen_ms, 0), ?2) WHERE id = ?1",
            params![device.0, act.last_seen_ms],
        )?;
        for (vol, cursor) in &act.cursors {
            conn.execute(
                "INSERT INTO cursors (device, vol, cursor, updated_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (device, vol) DO UPDATE SET cursor = excluded.cursor,
                 updated_ms = excluded.updated_ms",
                params![device.0, vol.0, to_i64(cursor.0), act.last_seen_ms],
            )?;
        }
    }
    Ok(())
}

/// Seqs and sizes are u64 on the wire and i64 in SQLite; both stay far below 2^63.
pub(super) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The reverse of [`to_i64`]; a negative stored value is corruption.
pub(super) fn to_u64(v: i64) -> Result<u64, MetaError> {
    u64::try_from(v).map_err(|_| MetaError::Corrupt(format!("negative counter {v}")))
}

pub(super) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::ConstraintViolation)
    )
}

fn user_id(conn: &Connection, user: &AccountName) -> Result<i64, MetaError> {
    conn.query_row(
        "SELECT id FROM users WHERE name = ?1",
        [user.as_str()],
        |r| r.get(0),
    )
    .optional()?
    .ok_or_else(|| MetaError::NotFound(format!("user {user}")))
}

fn account_name(s: String) -> Result<AccountName, MetaError> {
    AccountName::new(s).map_err(|e| MetaError::Corrupt(format!("stored name: {e}")))
}

pub(super) fn node_from_blob(b: &[u8]) -> Result<NodeId, MetaError> {
    let arr: [u8; 16] = b
        .try_into()
        .map_err(|_| MetaError::Corrupt(format!("node id of {} bytes", b.len())))?;
    Ok(NodeId::from_bytes(arr))
}

fn blob32(b: &[u8], what: &str) -> Result<[u8; 32], MetaError> {
    b.try_into()
        .map_err(|_| MetaError::Corrupt(format!("{what} of {} bytes", b.len())))
}

impl MetaStore for SqliteMeta {
    fn add_user(&self, name: &AccountName) -> Result<(), MetaError> {
        let name = name.clone();
        self.write(move |c| {
            c.execute(
                "INSERT INTO users (name, created_ms) VALUES (?1, ?2)",
                params![name.as_str(), now_ms()],
            )
            .map_err(|e| {
                if is_constraint(&e) {
                    MetaError::AlreadyExists(format!("user {name}"))
                } else {
                    MetaError::Sqlite(e)
                }
            })?;
            Ok(())
        })
    }

    fn add_device(
        &self,
        user: &AccountName,
        device: &AccountName,
        token: &TokenHash,
    ) -> Result<(), MetaError> {
        let (user, device, token) = (user.clone(), device.clone(), *token);
        self.write(move |c| {
            let uid = user_id(c, &user)?;
            let existing: Option<(i64, Option<i64>)> = c
                .query_row(
                    "SELECT id, revoked_ms FROM devices WHERE user_id = ?1 AND name = ?2",
                    params![uid, device.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            match existing {
                Some((_, None)) => Err(MetaError::AlreadyExists(format!(
                    "device {device} of user {user} (revoke its token first)"
                ))),
                Some((id, Some(_))) => {
                    c.execute(
                        "UPDATE devices SET token_hash = ?2, revoked_ms = NULL WHERE id = ?1",
                        params![id, &token.0[..]],
                    )?;
                    Ok(())
                }
                None => {
                    c.execute(
                        "INSERT INTO devices (user_id, name, token_hash, created_ms)
                         VALUES (?1, ?2, ?3, ?4)",
                        params![uid, device.as_str(), &token.0[..], now_ms()],
                    )?;
                    Ok(())
                }
            }
        })
    }

    fn revoke_device(&self, user: &AccountName, device: &AccountName) -> Result<(), MetaError> {
        let (user, device) = (user.clone(), device.clone());
        self.write(move |c| {
            let uid = user_id(c, &user)?;
            let n = c.execute(
                "UPDATE devices SET token_hash = NULL, revoked_ms = ?3
                 WHERE user_id = ?1 AND name = ?2 AND revoked_ms IS NULL",
                params![uid, device.as_str(), now_ms()],
            )?;
            if n == 0 {
                return Err(MetaError::NotFound(format!(
                    "live device {device} of user {user}"
                )));
            }
            Ok(())
        })
    }

    fn create_volume(&self, user: &AccountName, volume: &AccountName) -> Result<(), MetaError> {
        let (user, volume) = (user.clone(), volume.clone());
        self.write(move |c| {
            let uid = user_id(c, &user)?;
            let now = now_ms();
            c.execute(
                "INSERT INTO volumes (user_id, name, created_ms) VALUES (?1, ?2, ?3)",
                params![uid, volume.as_str(), now],
            )
            .map_err(|e| {
                if is_constraint(&e) {
                    MetaError::AlreadyExists(format!("volume {volume}"))
                } else {
                    MetaError::Sqlite(e)
                }
            })?;
            let vol = c.last_insert_rowid();
            c.execute(
                "INSERT INTO nodes (vol, id, parent, name, kind, mode, mtime, version)
                 VALUES (?1, ?2, NULL, NULL, ?3, ?4, ?5, 0)",
                params![
                    vol,
                    &NodeId::ROOT.to_bytes()[..],
                    KIND_DIR,
                    0o755,
                    now.saturating_mul(1_000_000)
                ],
            )?;
            Ok(())
        })
    }

    fn list_users(&self) -> Result<Vec<UserSummary>, MetaError> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT u.name,
                   (SELECT count(*) FROM devices d WHERE d.user_id = u.id),
                   (SELECT count(*) FROM volumes v WHERE v.user_id = u.id)
                 FROM users u ORDER BY u.name",
            )?;
            let rows = st.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (name, devices, volumes) = row?;
                out.push(UserSummary {
                    name: account_name(name)?,
                    devices: to_u64(devices)?,
                    volumes: to_u64(volumes)?,
                });
            }
            Ok(out)
        })
    }

    fn list_devices(&self, user: Option<&AccountName>) -> Result<Vec<DeviceSummary>, MetaError> {
        self.flush_activity()?;
        let user = user.map(|u| u.as_str().to_owned());
        self.read(move |c| {
            let mut st = c.prepare(
                "SELECT u.name, d.name, d.revoked_ms IS NOT NULL, d.last_seen_ms
                 FROM devices d JOIN users u ON u.id = d.user_id
                 WHERE ?1 IS NULL OR u.name = ?1 ORDER BY u.name, d.name",
            )?;
            let rows = st.query_map([user], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, bool>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (user, name, revoked, last_seen_ms) = row?;
                out.push(DeviceSummary {
                    user: account_name(user)?,
                    name: account_name(name)?,
                    revoked,
                    last_seen_ms,
                });
            }
            Ok(out)
        })
    }

    fn list_volumes(&self, user: Option<&AccountName>) -> Result<Vec<VolumeSummary>, MetaError> {
        let user = user.map(|u| u.as_str().to_owned());
        self.read(move |c| {
            let mut st = c.prepare(
                "SELECT u.name, v.name, v.head FROM volumes v JOIN users u ON u.id = v.user_id
                 WHERE ?1 IS NULL OR u.name = ?1 ORDER BY u.name, v.name",
            )?;
            let rows = st.query_map([user], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (user, name, head) = row?;
                out.push(VolumeSummary {
                    user: account_name(user)?,
                    name: account_name(name)?,
                    head: Seq(to_u64(head)?),
                });
            }
            Ok(out)
        })
    }

    fn authenticate(&self, token: &TokenHash) -> Result<Option<DeviceAuth>, MetaError> {
        self.read(|c| {
            let row: Option<(i64, i64, String)> = c
                .query_row(
                    "SELECT id, user_id, name FROM devices
                     WHERE token_hash = ?1 AND revoked_ms IS NULL",
                    [&token.0[..]],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            row.map(|(device, user, name)| {
                Ok(DeviceAuth {
                    user: UserId(user),
                    device: DeviceId(device),
                    device_name: account_name(name)?,
                })
            })
            .transpose()
        })
    }

    fn note_activity(
        &self,
        device: DeviceId,
        now_ms: i64,
        cursor: Option<(VolumeId, Seq)>,
    ) -> Result<(), MetaError> {
        let mut map = self.activity.lock().unwrap_or_else(PoisonError::into_inner);
        let act = map.entry(device).or_default();
        act.last_seen_ms = act.last_seen_ms.max(now_ms);
        if let Some((vol, seq)) = cursor {
            act.cursors.insert(vol, seq);
        }
        Ok(())
    }

    fn user_volumes(&self, user: UserId) -> Result<Vec<VolumeInfo>, MetaError> {
        self.read(|c| {
            let mut st =
                c.prepare("SELECT name, head FROM volumes WHERE user_id = ?1 ORDER BY name")?;
            let rows = st.query_map([user.0], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (name, head) = row?;
                out.push(VolumeInfo {
                    name: account_name(name)?,
                    head: Seq(to_u64(head)?),
                });
            }
            Ok(out)
        })
    }

    fn resolve_volume(&self, user: UserId, name: &AccountName) -> Result<VolumeAccess, MetaError> {
        self.read(|c| {
            let row: Option<(i64, i64)> = c
                .query_row(
                    "SELECT id, user_id FROM volumes WHERE name = ?1",
                    [name.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            Ok(match row {
                None => VolumeAccess::NotFound,
                Some((vol, owner)) if owner == user.0 => VolumeAccess::Granted(VolumeId(vol)),
                Some(_) => VolumeAccess::Forbidden,
            })
        })
    }

    fn missing_chunks(&self, vol: VolumeId, ids: &[ChunkId]) -> Result<Vec<ChunkId>, MetaError> {
        self.read(|c| missing_in(c, &self.held, vol, ids))
    }

    fn record_chunks(&self, vol: VolumeId, chunks: &[ChunkRef]) -> Result<(), MetaError> {
        let held = self.held.clone();
        let fresh: Vec<ChunkRef> = chunks
            .iter()
            .filter(|r| held.get(&(vol, r.id)).is_none())
            .copied()
            .collect();
        if fresh.is_empty() {
            return Ok(());
        }
        // Not synced on its own: the commit naming these chunks syncs it (it comes later in the
        // WAL), and holdings lost in a crash before any commit names them are only asked for
        // and uploaded again.
        self.write_with(Durability::WithNext, move |c| {
            // A holding from before lengths were recorded gets its length now.
            let mut st = c.prepare_cached(
                "INSERT INTO volume_chunks (vol, chunk, len) VALUES (?1, ?2, ?3)
                 ON CONFLICT (vol, chunk) DO UPDATE SET len = excluded.len WHERE len IS NULL",
            )?;
            for r in &fresh {
                st.execute(params![vol.0, &r.id.as_bytes()[..], r.len])?;
            }
            Ok(fresh)
        })
        .map(|fresh: Vec<ChunkRef>| {
            held.insert_all(fresh.into_iter().map(|r| ((vol, r.id), r.len)))
        })
    }

    fn commit(
        &self,
        vol: VolumeId,
        device: DeviceId,
        req: CommitRequest,
    ) -> Result<CommitOutcome, CommitError> {
        // The hash tells a retry (same transaction) from a reused txn id (another one).
        let encoded = serde_json::to_vec(&req)
            .map_err(|e| MetaError::Corrupt(format!("cannot encode commit: {e}")))?;
        let hash = *blake3::hash(&encoded).as_bytes();
        drop(encoded);
        let held = self.held.clone();
        self.write(move |c| commit::apply(c, &held, vol, device, &req, &hash, now_ms()))
    }

    fn changes(&self, vol: VolumeId, after: Seq, limit: u32) -> Result<ChangesPage, MetaError> {
        self.read(|c| {
            let tx = c.unchecked_transaction()?;
            let head = volume_head(&tx, vol)?;
            let mut st = tx.prepare_cached(
                "SELECT c.seq, d.name, c.txn, c.time_ms, c.ops
                 FROM commits c JOIN devices d ON d.id = c.device
                 WHERE c.vol = ?1 AND c.seq > ?2 ORDER BY c.seq LIMIT ?3",
            )?;
            let mut rows = st.query(params![vol.0, to_i64(after.0), i64::from(limit) + 1])?;
            let mut changes = Vec::new();
            let mut bytes = 0usize;
            let mut more = false;
            while let Some(r) = rows.next()? {
                if changes.len() as u64 >= u64::from(limit) || bytes >= CHANGES_PAGE_BYTES {
                    more = true;
                    break;
                }
                let ops_text: String = r.get(4)?;
                bytes += ops_text.len();
                // Checked to be JSON, not parsed: the commit stored what it applied.
                let ops = RawValue::from_string(ops_text)
                    .map_err(|e| MetaError::Corrupt(format!("stored ops: {e}")))?;
                let txn_blob: Vec<u8> = r.get(2)?;
                let txn: [u8; 16] = txn_blob
                    .as_slice()
                    .try_into()
                    .map_err(|_| MetaError::Corrupt("txn id".into()))?;
                changes.push(StoredChange {
                    seq: Seq(to_u64(r.get(0)?)?),
                    device: account_name(r.get(1)?)?,
                    txn: TxnId::from_bytes(txn),
                    time_ms: r.get(3)?,
                    ops,
                });
            }
            Ok(ChangesPage {
                head,
                changes,
                more,
            })
        })
    }

    fn head(&self, vol: VolumeId) -> Result<Seq, MetaError> {
        self.read(|c| volume_head(c, vol))
    }

    fn snapshot(
        &self,
        vol: VolumeId,
        sink: &mut dyn FnMut(SnapshotItem) -> bool,
    ) -> Result<(), MetaError> {
        self.read(|c| {
            // One read transaction: WAL gives it a stable view while commits go on.
            let tx = c.unchecked_transaction()?;
            let head = volume_head(&tx, vol)?;
            if !sink(SnapshotItem::Seq(head)) {
                return Ok(());
            }
            let mut st = tx.prepare(
                "SELECT id, parent, name, kind, mode, mtime, size, manifest, manifest_id, target,
                        xattrs, version
                 FROM nodes WHERE vol = ?1 AND deleted_seq IS NULL ORDER BY id",
            )?;
            let mut rows = st.query([vol.0])?;
            while let Some(r) = rows.next()? {
                let record = node_record(r)?;
                if !sink(SnapshotItem::Node(record)) {
                    break;
                }
            }
            Ok(())
        })
    }

    fn devices(
        &self,
        user: UserId,
        vol: VolumeId,
        current: DeviceId,
    ) -> Result<Vec<DeviceInfo>, MetaError> {
        self.flush_activity()?;
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT d.id, d.name, d.last_seen_ms, d.revoked_ms IS NOT NULL, k.cursor
                 FROM devices d LEFT JOIN cursors k ON k.device = d.id AND k.vol = ?2
                 WHERE d.user_id = ?1 ORDER BY d.name",
            )?;
            let rows = st.query_map(params![user.0, vol.0], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                    r.get::<_, bool>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, name, last_seen_ms, revoked, cursor) = row?;
                out.push(DeviceInfo {
                    name: account_name(name)?,
                    last_seen_ms,
                    cursor: cursor.map(to_u64).transpose()?.map(Seq),
                    revoked,
                    current: id == current.0,
                });
            }
            Ok(out)
        })
    }
}

pub(super) fn volume_head(c: &Connection, vol: VolumeId) -> Result<Seq, MetaError> {
    let head: Option<i64> = c
        .query_row("SELECT head FROM volumes WHERE id = ?1", [vol.0], |r| {
            r.get(0)
        })
        .optional()?;
    let head = head.ok_or_else(|| MetaError::NotFound(format!("volume #{}", vol.0)))?;
    Ok(Seq(to_u64(head)?))
}

/// Which of `ids` the volume does not hold, in order, without duplicates; those in `held`
/// are not looked up.
pub(super) fn missing_in(
    c: &Connection,
    held: &HeldLately,
    vol: VolumeId,
    ids: &[ChunkId],
) -> Result<Vec<ChunkId>, MetaError> {
    Ok(missing_of(ids, &held_lens(c, held, vol, ids)?))
}

/// The decoded length of each of `ids` the volume holds; a holding without a recorded
/// length (schema 1, not yet filled) counts as not held, so the device uploads it again.
pub(super) fn held_lens(
    c: &Connection,
    held: &HeldLately,
    vol: VolumeId,
    ids: &[ChunkId],
) -> Result<HashMap<ChunkId, u32>, MetaError> {
    let mut st = c.prepare_cached(
        "SELECT len FROM volume_chunks WHERE vol = ?1 AND chunk = ?2 AND len IS NOT NULL",
    )?;
    let mut lens = HashMap::with_capacity(ids.len());
    for id in ids {
        if lens.contains_key(id) {
            continue;
        }
        let len = match held.get(&(vol, *id)) {
            Some(len) => Some(len),
            None => st
                .query_row(params![vol.0, &id.as_bytes()[..]], |r| r.get::<_, u32>(0))
                .optional()?,
        };
        if let Some(len) = len {
            lens.insert(*id, len);
        }
    }
    Ok(lens)
}

/// The ids without a length in `lens`, in order, without duplicates.
pub(super) fn missing_of(ids: &[ChunkId], lens: &HashMap<ChunkId, u32>) -> Vec<ChunkId> {
    let mut seen = HashSet::with_capacity(ids.len());
    ids.iter()
        .filter(|id| !lens.contains_key(id) && seen.insert(**id))
        .copied()
        .collect()
}

fn node_record(r: &rusqlite::Row<'_>) -> Result<NodeRecord, MetaError> {
    let id: Vec<u8> = r.get(0)?;
    let parent: Option<Vec<u8>> = r.get(1)?;
    let name: Option<String> = r.get(2)?;
    let kind = match r.get::<_, i64>(3)? {
        KIND_FILE => NodeKind::File,
        KIND_DIR => NodeKind::Dir,
        KIND_SYMLINK => NodeKind::Symlink,
        other => return Err(MetaError::Corrupt(format!("node kind {other}"))),
    };
    let manifest: Option<Vec<u8>> = r.get(7)?;
    let manifest_id: Option<Vec<u8>> = r.get(8)?;
    let xattrs: Option<String> = r.get(10)?;
    let xattrs: Xattrs = match xattrs {
        Some(text) => serde_json::from_str(&text)
            .map_err(|e| MetaError::Corrupt(format!("stored xattrs: {e}")))?,
        None => Xattrs::new(),
    };
    Ok(NodeRecord {
        node: node_from_blob(&id)?,
        parent: parent.as_deref().map(node_from_blob).transpose()?,
        name: name
            .map(Name::new)
            .transpose()
            .map_err(|e| MetaError::Corrupt(format!("stored name: {e}")))?,
        kind,
        mode: u32::try_from(r.get::<_, i64>(4)?).map_err(|_| MetaError::Corrupt("mode".into()))?,
        mtime: r.get(5)?,
        xattrs,
        size: to_u64(r.get(6)?)?,
        manifest: manifest
            .as_deref()
            .map(schema::decode_manifest)
            .transpose()?,
        manifest_id: manifest_id
            .as_deref()
            .map(|b| blob32(b, "manifest id").map(ManifestId::from_bytes))
            .transpose()?,
        target: r.get(9)?,
        version: Seq(to_u64(r.get(11)?)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The writer connection's `synchronous` level (2 FULL, 1 NORMAL) while a job runs.
    fn synchronous(meta: &SqliteMeta, durability: Durability) -> i64 {
        meta.write_with(durability, |c| {
            Ok::<_, MetaError>(c.pragma_query_value(None, "synchronous", |r| r.get(0))?)
        })
        .expect("write")
    }

    #[test]
    fn only_the_writes_asked_to_wait_for_the_next_commit_skip_their_sync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = SqliteMeta::open(&dir.path().join("meta.sqlite")).expect("open");
        assert_eq!(synchronous(&meta, Durability::Now), 2);
        assert_eq!(synchronous(&meta, Durability::WithNext), 1);
        assert_eq!(synchronous(&meta, Durability::WithNext), 1);
        assert_eq!(synchronous(&meta, Durability::Now), 2);
    }

    /// A changes page passes the stored ops through: on the wire it is the protocol's
    /// `ChangesResponse`, with each commit's ops as the device committed them.
    #[test]
    fn a_changes_page_reads_as_the_protocol_s_response_with_the_committed_ops() {
        use crate::protocol::{ChangesResponse, CreateOp, Op};
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = SqliteMeta::open(&dir.path().join("meta.sqlite")).expect("open");
        let alice = AccountName::new("alice").expect("name");
        let docs = AccountName::new("docs").expect("name");
        meta.add_user(&alice).expect("user");
        meta.add_device(
            &alice,
            &AccountName::new("laptop").expect("name"),
            &TokenHash([7; 32]),
        )
        .expect("device");
        meta.create_volume(&alice, &docs).expect("volume");
        let device = meta
            .authenticate(&TokenHash([7; 32]))
            .expect("auth")
            .expect("device");
        let VolumeAccess::Granted(vol) = meta.resolve_volume(device.user, &docs).expect("vol")
        else {
            panic!("volume not granted");
        };
        let mkdir = |n: &str| {
            Op::Create(CreateOp {
                node: NodeId::random(),
                parent: NodeId::ROOT,
                name: Name::new(n).expect("name"),
                kind: NodeKind::Dir,
                mode: 0o755,
                mtime: 5,
                xattrs: Xattrs::new(),
                manifest: None,
                manifest_id: None,
                target: None,
            })
        };
        let reqs: Vec<CommitRequest> = (0..3)
            .map(|i| CommitRequest {
                format: 1,
                txn: TxnId::random(),
                ops: vec![mkdir(&format!("a{i}")), mkdir(&format!("b{i}"))],
            })
            .collect();
        for req in &reqs {
            meta.commit(vol, device.device, req.clone())
                .expect("commit");
        }
        let page = meta.changes(vol, Seq(1), 1).expect("changes");
        let wire: ChangesResponse =
            serde_json::from_slice(&serde_json::to_vec(&page).expect("encode")).expect("decode");
        assert_eq!(wire.head, Seq(3));
        assert!(wire.more);
        assert_eq!(wire.changes.len(), 1);
        let change = &wire.changes[0];
        assert_eq!(change.seq, Seq(2));
        assert_eq!(change.device.as_str(), "laptop");
        assert_eq!(change.txn, reqs[1].txn);
        assert_eq!(change.ops, reqs[1].ops);
    }

    /// A database of schema 1 (holdings without lengths) is upgraded in place: its holdings
    /// count as missing until their lengths are filled from the chunk store or a device
    /// uploads them again; a chunk the store lacks stays missing.
    #[test]
    fn schema_1_holdings_get_their_lengths_from_the_store_or_a_new_upload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("meta.sqlite");
        let (a, b) = (ChunkId::of(b"in the store"), ChunkId::of(b"lost"));
        {
            let c = Connection::open(&path).expect("create v1");
            c.execute_batch(&format!(
                "{} PRAGMA user_version = 1;
                 INSERT INTO users (id, name, created_ms) VALUES (1, 'alice', 0);
                 INSERT INTO volumes (id, user_id, name, created_ms) VALUES (1, 1, 'docs', 0);",
                schema::SCHEMA_V1
            ))
            .expect("v1 schema");
            for id in [a, b] {
                c.execute(
                    "INSERT INTO volume_chunks (vol, chunk) VALUES (1, ?1)",
                    [&id.as_bytes()[..]],
                )
                .expect("v1 holding");
            }
        }
        let meta = SqliteMeta::open(&path).expect("open upgrades");
        let vol = VolumeId(1);
        assert_eq!(meta.missing_chunks(vol, &[a, b]).expect("missing"), [a, b]);
        let filled = meta
            .fill_chunk_lens(|id| Ok::<_, MetaError>((*id == a).then_some(12)))
            .expect("fill");
        assert_eq!(filled, 1);
        assert_eq!(meta.missing_chunks(vol, &[a, b]).expect("missing"), [b]);
        meta.record_chunks(vol, &[ChunkRef { id: b, len: 4 }])
            .expect("record");
        assert!(
            meta.missing_chunks(vol, &[a, b])
                .expect("missing")
                .is_empty()
        );
        drop(meta);
        let version: i64 = Connection::open(&path)
            .and_then(|c| c.pragma_query_value(None, "user_version", |r| r.get(0)))
            .expect("version");
        assert_eq!(version, 2);
    }
}
