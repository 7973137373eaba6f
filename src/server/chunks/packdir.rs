//! [`ChunkStore`] as pack files in a directory plus a SQLite index (chunk id -> pack,
//! offset, length), as restic does: millions of chunks are thousands of files, and reading
//! one chunk reads only its bytes (pread).
//!
//! Layout under the store's root:
//! ```text
//! index.sqlite                      (chunk id, pack, offset) -> len, a row per stored copy;
//!                                   WAL, synchronous=FULL
//! packs/NNNNN/NNNNNNNNNN.pack       "DDPACK01" | (chunk id 32 | len u32 LE | payload) *
//! ```
//! Writer threads append every waiting put to their open packs (rotating as they fill),
//! fsync each pack they wrote once (and the directory of each new pack), and only then commit
//! the index rows pointing into them, so a
//! crash never leaves an index row pointing at missing bytes. Bytes past the last indexed
//! entry (a crash mid-append) are never referenced. Packs are rotated at
//! [`PACK_TARGET_SIZE`] and never appended to after a restart.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use crate::server::readers::ReaderPool;
use crate::server::recent::Recent;
use rusqlite::{Connection, OptionalExtension};

use super::packwriter::{self, PutJob};
use super::{ChunkStore, ChunkStoreError, VerifiedPayload};
use crate::chunking::ChunkId;
use crate::chunking::payload;
use crate::protocol::limits::MAX_CHUNK_SIZE;

/// A pack is closed and a new one started once it reaches this size. Large enough that a
/// big upload makes few files (each new file costs fsyncs of it and of its directory).
pub const PACK_TARGET_SIZE: u64 = 32 << 20;
pub(super) const PACK_MAGIC: &[u8; 8] = b"DDPACK01";
/// Bytes before each payload in a pack: the chunk id and the payload length.
pub(super) const ENTRY_HEADER: u64 = 36;
/// Packs per subdirectory, so no directory grows past about a thousand entries.
const PACKS_PER_DIR_SHIFT: u32 = 10;
const MAX_OPEN_PACKS: usize = 256;
/// Index rows remembered in memory per generation: chunks just uploaded are the ones the
/// other devices fetch next, within seconds (224 MiB of 16 KiB chunks, the chunks of
/// 14,000 small files); at most ~1.8 MiB for both generations, whatever the store's size.
const RECENT_ROWS: usize = crate::server::recent::FULL_AT_16K;

/// Where a chunk's payload is: pack number, offset, length.
pub(super) type Location = (u64, u64, u32);
/// Index rows written lately, shared by the writers and the readers.
pub(super) type RecentRows = Recent<ChunkId, Location>;

/// The embedded chunk store.
pub struct PackDirStore {
    root: PathBuf,
    readers: ReaderPool,
    files: Mutex<HashMap<u64, Arc<File>>>,
    recent: Arc<RecentRows>,
    writer: Option<Sender<PutJob>>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for PackDirStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackDirStore")
            .field("root", &self.root)
            .finish()
    }
}

pub(super) fn io_err(path: &Path, source: std::io::Error) -> ChunkStoreError {
    ChunkStoreError::Io {
        path: path.to_path_buf(),
        source: Arc::new(source),
    }
}

fn open_index(path: &Path) -> Result<Connection, ChunkStoreError> {
    crate::private::create_db_file(path).map_err(|e| io_err(path, e))?;
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(conn)
}

/// Index schema 1: one row per chunk. Frozen: upgraded to 2 at open.
const INDEX_V1: &str = "CREATE TABLE chunks (
    id BLOB PRIMARY KEY,
    pack INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    len INTEGER NOT NULL
) WITHOUT ROWID;";

/// Index schema 2: one row per stored copy of a chunk. Every put adds its rows whether or not
/// the chunk is stored already, so that storing a chunk another user stores runs the same
/// statements as storing a new one; a read takes any copy.
const INDEX_V2: &str = "CREATE TABLE copies (
    id BLOB NOT NULL,
    pack INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    len INTEGER NOT NULL,
    PRIMARY KEY (id, pack, offset)
) WITHOUT ROWID;
INSERT INTO copies (id, pack, offset, len) SELECT id, pack, offset, len FROM chunks;
DROP TABLE chunks;";

/// Creates or upgrades the index schema, under one write lock.
fn prepare_index(conn: &Connection) -> Result<(), ChunkStoreError> {
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let steps = match version {
        0 => format!("{INDEX_V1} {INDEX_V2}"),
        1 => {
            tracing::info!("chunk index schema 1 -> 2: one row per stored copy");
            INDEX_V2.to_owned()
        }
        2 => return Ok(()),
        newer => return Err(ChunkStoreError::UnknownSchema(newer)),
    };
    tx.execute_batch(&format!("{steps} PRAGMA user_version = 2;"))?;
    tx.commit()?;
    Ok(())
}

pub(super) fn pack_path(root: &Path, no: u64) -> PathBuf {
    root.join("packs")
        .join(format!("{:05}", no >> PACKS_PER_DIR_SHIFT))
        .join(format!("{no:010}.pack"))
}

pub(super) fn fsync_dir(dir: &Path) -> Result<(), ChunkStoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

/// Highest pack number present on disk (0 if none).
fn highest_pack_on_disk(root: &Path) -> Result<u64, ChunkStoreError> {
    let packs = root.join("packs");
    let mut best = 0u64;
    let dirs = match std::fs::read_dir(&packs) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err(&packs, e)),
    };
    for dir in dirs {
        let dir = dir.map_err(|e| io_err(&packs, e))?.path();
        if !dir.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&dir).map_err(|e| io_err(&dir, e))? {
            let name = f.map_err(|e| io_err(&dir, e))?.file_name();
            let no = name
                .to_str()
                .and_then(|n| n.strip_suffix(".pack"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(no) = no {
                best = best.max(no);
            }
        }
    }
    Ok(best)
}

impl PackDirStore {
    /// Opens (creating if needed) the store rooted at `root`, and starts its writer thread.
    pub fn open(root: &Path) -> Result<Self, ChunkStoreError> {
        crate::private::create_dir_all(&root.join("packs")).map_err(|e| io_err(root, e))?;
        let index_path = root.join("index.sqlite");
        let conn = open_index(&index_path)?;
        prepare_index(&conn)?;
        let indexed: i64 =
            conn.query_row("SELECT coalesce(max(pack), 0) FROM copies", [], |r| {
                r.get(0)
            })?;
        let next_no = highest_pack_on_disk(root)?.max(u64::try_from(indexed).unwrap_or(0)) + 1;
        drop(conn);
        let (tx, rx) = mpsc::channel::<PutJob>();
        let recent = Arc::new(RecentRows::new(RECENT_ROWS));
        let threads = packwriter::start(
            root.to_path_buf(),
            next_no,
            open_index(&index_path)?,
            recent.clone(),
            rx,
        )?;
        Ok(Self {
            root: root.to_path_buf(),
            readers: ReaderPool::default(),
            files: Mutex::new(HashMap::new()),
            recent,
            writer: Some(tx),
            threads,
        })
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, ChunkStoreError>,
    ) -> Result<T, ChunkStoreError> {
        let open = || {
            let c = open_index(&self.root.join("index.sqlite"))?;
            crate::server::readers::bound_cache(&c)?;
            Ok(c)
        };
        self.readers.with(open, f)
    }

    fn pack_file(&self, no: u64) -> Result<Arc<File>, ChunkStoreError> {
        if let Some(f) = self
            .files
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&no)
        {
            return Ok(f.clone());
        }
        let path = pack_path(&self.root, no);
        let file = Arc::new(File::open(&path).map_err(|e| io_err(&path, e))?);
        let mut files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        if files.len() >= MAX_OPEN_PACKS {
            // Crude but bounded: drop every cached handle; hot packs reopen at once.
            files.clear();
        }
        files.insert(no, file.clone());
        Ok(file)
    }

    fn locate(&self, id: &ChunkId) -> Result<Option<(u64, u64, usize)>, ChunkStoreError> {
        if let Some((pack, offset, len)) = self.recent.get(id) {
            return Ok(Some((pack, offset, len as usize)));
        }
        self.read(|c| {
            let row: Option<(i64, i64, i64)> = c
                .prepare_cached("SELECT pack, offset, len FROM copies WHERE id = ?1 LIMIT 1")?
                .query_row([&id.as_bytes()[..]], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()?;
            Ok(row.map(|(p, o, l)| {
                (
                    u64::try_from(p).unwrap_or(0),
                    u64::try_from(o).unwrap_or(0),
                    usize::try_from(l).unwrap_or(0),
                )
            }))
        })
    }
}

impl Drop for PackDirStore {
    fn drop(&mut self) {
        // Closing the channel ends the writers.
        self.writer.take();
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a pack writer thread panicked");
            }
        }
    }
}

impl ChunkStore for PackDirStore {
    fn put(&self, chunks: Vec<VerifiedPayload>) -> Result<(), ChunkStoreError> {
        if chunks.is_empty() {
            return Ok(());
        }
        let (reply, rx) = mpsc::sync_channel(1);
        self.writer
            .as_ref()
            .ok_or(ChunkStoreError::WriterGone)?
            .send(PutJob { chunks, reply })
            .map_err(|_| ChunkStoreError::WriterGone)?;
        rx.recv().map_err(|_| ChunkStoreError::WriterGone)?
    }

    fn get(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, ChunkStoreError> {
        let mut buf = Vec::new();
        Ok(self.append(id, &mut buf)?.then_some(buf))
    }

    fn append(&self, id: &ChunkId, out: &mut Vec<u8>) -> Result<bool, ChunkStoreError> {
        let Some((pack, offset, len)) = self.locate(id)? else {
            return Ok(false);
        };
        let file = self.pack_file(pack)?;
        let start = out.len();
        out.resize(start + len, 0);
        let read = file
            .read_exact_at(&mut out[start..], offset)
            .map_err(|e| io_err(&pack_path(&self.root, pack), e))
            // Only the shape is checked here: every client hashes each chunk it receives and
            // refuses one that does not match its id, so hashing it here too (a third of a
            // CPU second per GiB served) would catch nothing more.
            .and_then(|()| {
                payload::check_shape(&out[start..], MAX_CHUNK_SIZE)
                    .map_err(|source| ChunkStoreError::Corrupt { id: *id, source })
            });
        if let Err(e) = read {
            out.truncate(start);
            return Err(e);
        }
        Ok(true)
    }

    fn contains(&self, id: &ChunkId) -> Result<bool, ChunkStoreError> {
        Ok(self.locate(id)?.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunking::VerifiedChunk;
    use axum::body::Bytes;
    use std::fs::OpenOptions;

    fn chunk(seed: u32, len: usize) -> VerifiedPayload {
        // xorshift: incompressible, so pack sizes follow chunk sizes.
        let mut x = u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        let c = VerifiedChunk::new(bytes);
        VerifiedPayload::verify(c.id(), Bytes::from(c.encode(3))).unwrap()
    }

    #[test]
    fn chunks_round_trip_across_rotations_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let chunks: Vec<_> = (0..100).map(|i| chunk(i, 1 << 20)).collect();
        {
            let store = PackDirStore::open(dir.path()).unwrap();
            store.put(chunks[..60].to_vec()).unwrap();
            // Stored ones handed in again are written again (the same work as new ones).
            store.put(chunks[50..].to_vec()).unwrap();
            store.put(chunks[..10].to_vec()).unwrap();
            for c in &chunks {
                assert_eq!(store.get(&c.id()).unwrap().unwrap(), c.payload());
            }
        }
        // 100 chunks of 1 MiB are a few packs, not 100 files.
        let packs = highest_pack_on_disk(dir.path()).unwrap();
        assert!((4..=6).contains(&packs), "{packs} packs");
        let store = PackDirStore::open(dir.path()).unwrap();
        for c in &chunks {
            assert!(store.contains(&c.id()).unwrap());
            assert_eq!(store.get(&c.id()).unwrap().unwrap(), c.payload());
        }
        let extra = chunk(1000, 100);
        store.put(vec![extra.clone()]).unwrap();
        assert_eq!(highest_pack_on_disk(dir.path()).unwrap(), packs + 1);
        assert!(store.get(&ChunkId::of(b"absent")).unwrap().is_none());
    }

    #[test]
    fn concurrent_overlapping_puts_write_every_payload_they_are_handed() {
        let dir = tempfile::tempdir().unwrap();
        let chunks: Vec<_> = (0..64).map(|i| chunk(i, 256 << 10)).collect();
        let store = PackDirStore::open(dir.path()).unwrap();
        // Eight callers put overlapping halves at once: groups are written while earlier ones
        // are still being synced. Each put writes all it is handed, stored or not, so its
        // cost never depends on what another caller stored.
        let mut handed = 0u64;
        std::thread::scope(|s| {
            let mut threads = Vec::new();
            for t in 0..8 {
                let (store, chunks) = (&store, &chunks);
                threads.push(s.spawn(move || {
                    let mut bytes = 0u64;
                    for round in 0..4 {
                        let from = (t * 8 + round * 4) % 32;
                        let put = &chunks[from..from + 32];
                        bytes += put
                            .iter()
                            .map(|c| ENTRY_HEADER + c.payload().len() as u64)
                            .sum::<u64>();
                        store.put(put.to_vec()).unwrap();
                    }
                    bytes
                }));
            }
            handed = threads.into_iter().map(|t| t.join().unwrap()).sum();
        });
        for c in &chunks[..60] {
            assert_eq!(store.get(&c.id()).unwrap().unwrap(), c.payload());
        }
        let packs = walk_packs(dir.path());
        let on_disk: u64 = packs.iter().map(|p| p.metadata().unwrap().len()).sum();
        assert_eq!(
            on_disk,
            handed + packs.len() as u64 * PACK_MAGIC.len() as u64
        );
    }

    #[test]
    fn an_index_of_schema_1_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let chunks: Vec<_> = (0..5).map(|i| chunk(i, 4096)).collect();
        PackDirStore::open(dir.path())
            .unwrap()
            .put(chunks.clone())
            .unwrap();
        // As a build of schema 1 left it: one row per chunk in `chunks`.
        let conn = Connection::open(dir.path().join("index.sqlite")).unwrap();
        conn.execute_batch(&format!(
            "{INDEX_V1} INSERT INTO chunks SELECT id, pack, offset, len FROM copies;
             DROP TABLE copies; PRAGMA user_version = 1;"
        ))
        .unwrap();
        drop(conn);
        let store = PackDirStore::open(dir.path()).unwrap();
        for c in &chunks {
            assert_eq!(store.get(&c.id()).unwrap().unwrap(), c.payload());
        }
        let conn = Connection::open(dir.path().join("index.sqlite")).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, 2);
    }

    fn walk_packs(root: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for d in std::fs::read_dir(root.join("packs")).unwrap() {
            for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
                out.push(f.unwrap().path());
            }
        }
        out
    }

    #[test]
    fn a_corrupted_payload_is_refused_by_the_receiving_end() {
        let dir = tempfile::tempdir().unwrap();
        let c = chunk(7, 4096);
        let store = PackDirStore::open(dir.path()).unwrap();
        store.put(vec![c.clone()]).unwrap();
        let (pack, offset, _) = store.locate(&c.id()).unwrap().unwrap();
        let f = OpenOptions::new()
            .write(true)
            .open(pack_path(dir.path(), pack))
            .unwrap();
        f.write_all_at(&[0xff; 8], offset + 10).unwrap();
        let served = store.get(&c.id()).unwrap().unwrap();
        assert!(matches!(
            payload::check(&served, c.id(), MAX_CHUNK_SIZE),
            Err(payload::PayloadError::HashMismatch { .. })
        ));
        // A tag byte no encoding has is refused by the store itself.
        f.write_all_at(&[0xee], offset).unwrap();
        assert!(matches!(
            store.get(&c.id()),
            Err(ChunkStoreError::Corrupt { .. })
        ));
    }
}
