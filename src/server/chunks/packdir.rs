//! [`ChunkStore`] as pack files in a directory plus a SQLite index (chunk id -> pack,
//! offset, length), as restic does: millions of chunks are thousands of files, and reading
//! one chunk reads only its bytes (pread).
//!
//! Layout under the store's root:
//! ```text
//! index.sqlite                      chunk id -> (pack, offset, len), WAL, synchronous=FULL
//! packs/NNNNN/NNNNNNNNNN.pack       "DDPACK01" | (chunk id 32 | len u32 LE | payload) *
//! ```
//! One writer thread appends every waiting put to the open pack, fsyncs it (and the
//! directory, for a new pack), and only then commits the index rows pointing into it, so a
//! crash never leaves an index row pointing at missing bytes. Bytes past the last indexed
//! entry (a crash mid-append) are never referenced. Packs are rotated at
//! [`PACK_TARGET_SIZE`] and never appended to after a restart.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use crate::server::readers::ReaderPool;
use rusqlite::{Connection, OptionalExtension, params};

use super::{ChunkStore, ChunkStoreError, VerifiedPayload};
use crate::chunking::ChunkId;
use crate::chunking::payload;
use crate::protocol::limits::MAX_CHUNK_SIZE;

/// A pack is closed and a new one started once it reaches this size.
pub const PACK_TARGET_SIZE: u64 = 4 << 20;
const PACK_MAGIC: &[u8; 8] = b"DDPACK01";
const ENTRY_HEADER: u64 = 36;
/// Packs per subdirectory, so no directory grows past about a thousand entries.
const PACKS_PER_DIR_SHIFT: u32 = 10;
const MAX_OPEN_PACKS: usize = 256;
/// Most put requests folded into one fsync.
const MAX_GROUP: usize = 64;

struct PutJob {
    chunks: Vec<VerifiedPayload>,
    reply: SyncSender<Result<(), ChunkStoreError>>,
}

/// The embedded chunk store.
pub struct PackDirStore {
    root: PathBuf,
    readers: ReaderPool,
    files: Mutex<HashMap<u64, Arc<File>>>,
    writer: Option<Sender<PutJob>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for PackDirStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackDirStore")
            .field("root", &self.root)
            .finish()
    }
}

fn io_err(path: &Path, source: std::io::Error) -> ChunkStoreError {
    ChunkStoreError::Io {
        path: path.to_path_buf(),
        source: Arc::new(source),
    }
}

fn open_index(path: &Path) -> Result<Connection, ChunkStoreError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(conn)
}

fn pack_path(root: &Path, no: u64) -> PathBuf {
    root.join("packs")
        .join(format!("{:05}", no >> PACKS_PER_DIR_SHIFT))
        .join(format!("{no:010}.pack"))
}

fn fsync_dir(dir: &Path) -> Result<(), ChunkStoreError> {
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
        std::fs::create_dir_all(root.join("packs")).map_err(|e| io_err(root, e))?;
        let index_path = root.join("index.sqlite");
        let conn = open_index(&index_path)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS chunks (
                 id BLOB PRIMARY KEY,
                 pack INTEGER NOT NULL,
                 offset INTEGER NOT NULL,
                 len INTEGER NOT NULL
             ) WITHOUT ROWID;
             PRAGMA user_version = 1;",
        )?;
        let indexed: i64 =
            conn.query_row("SELECT coalesce(max(pack), 0) FROM chunks", [], |r| {
                r.get(0)
            })?;
        let next_no = highest_pack_on_disk(root)?.max(u64::try_from(indexed).unwrap_or(0)) + 1;
        let (tx, rx) = mpsc::channel::<PutJob>();
        let mut writer = PackWriter {
            root: root.to_path_buf(),
            conn,
            current: None,
            next_no,
        };
        let thread = std::thread::Builder::new()
            .name("pack-writer".into())
            .spawn(move || writer.run(&rx))
            .map_err(|e| io_err(root, e))?;
        Ok(Self {
            root: root.to_path_buf(),
            readers: ReaderPool::default(),
            files: Mutex::new(HashMap::new()),
            writer: Some(tx),
            thread: Some(thread),
        })
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, ChunkStoreError>,
    ) -> Result<T, ChunkStoreError> {
        self.readers
            .with(|| open_index(&self.root.join("index.sqlite")), f)
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
        self.read(|c| {
            let row: Option<(i64, i64, i64)> = c
                .prepare_cached("SELECT pack, offset, len FROM chunks WHERE id = ?1")?
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
        self.writer.take();
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("pack writer thread panicked");
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
        let Some((pack, offset, len)) = self.locate(id)? else {
            return Ok(None);
        };
        let file = self.pack_file(pack)?;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset)
            .map_err(|e| io_err(&pack_path(&self.root, pack), e))?;
        // Served bytes must still match their id: a flipped bit on disk is an error, not data.
        payload::decode(&buf, *id, MAX_CHUNK_SIZE)
            .map_err(|source| ChunkStoreError::Corrupt { id: *id, source })?;
        Ok(Some(buf))
    }

    fn contains(&self, id: &ChunkId) -> Result<bool, ChunkStoreError> {
        Ok(self.locate(id)?.is_some())
    }
}

struct OpenPack {
    no: u64,
    path: PathBuf,
    file: File,
    size: u64,
}

struct PackWriter {
    root: PathBuf,
    conn: Connection,
    current: Option<OpenPack>,
    next_no: u64,
}

impl PackWriter {
    fn run(&mut self, rx: &Receiver<PutJob>) {
        while let Ok(first) = rx.recv() {
            let mut jobs = vec![first];
            while jobs.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            let result = self.write_group(&jobs);
            if result.is_err() {
                // The pack's tail may hold a partial entry: never append to it again.
                self.current = None;
            }
            for job in jobs {
                let answer = match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(clone_err(e)),
                };
                // The caller may have gone away; then nobody needs the answer.
                let _ = job.reply.send(answer);
            }
        }
    }

    fn write_group(&mut self, jobs: &[PutJob]) -> Result<(), ChunkStoreError> {
        let mut rows: Vec<(ChunkId, u64, u64, usize)> = Vec::new();
        let mut seen = HashSet::new();
        {
            let mut exists = self
                .conn
                .prepare_cached("SELECT 1 FROM chunks WHERE id = ?1")?;
            for chunk in jobs.iter().flat_map(|j| &j.chunks) {
                if !seen.insert(chunk.id()) || exists.exists([&chunk.id().as_bytes()[..]])? {
                    continue;
                }
                rows.push((chunk.id(), 0, 0, chunk.payload().len()));
            }
        }
        if rows.is_empty() {
            return Ok(());
        }
        let by_id: HashMap<ChunkId, &VerifiedPayload> = jobs
            .iter()
            .flat_map(|j| &j.chunks)
            .map(|c| (c.id(), c))
            .collect();
        for row in &mut rows {
            let Some(chunk) = by_id.get(&row.0) else {
                continue;
            };
            let pack = self.pack_for(ENTRY_HEADER + chunk.payload().len() as u64)?;
            let mut header = [0u8; ENTRY_HEADER as usize];
            header[..32].copy_from_slice(chunk.id().as_bytes());
            header[32..].copy_from_slice(&(chunk.payload().len() as u32).to_le_bytes());
            pack.file
                .write_all(&header)
                .and_then(|()| pack.file.write_all(chunk.payload()))
                .map_err(|e| io_err(&pack.path, e))?;
            row.1 = pack.no;
            row.2 = pack.size + ENTRY_HEADER;
            pack.size += ENTRY_HEADER + chunk.payload().len() as u64;
        }
        if let Some(pack) = &self.current {
            pack.file.sync_data().map_err(|e| io_err(&pack.path, e))?;
        }
        // Only now, with the bytes durable, may index rows point at them.
        let tx = self.conn.unchecked_transaction()?;
        {
            let mut ins = tx.prepare_cached(
                "INSERT OR IGNORE INTO chunks (id, pack, offset, len) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (id, pack, offset, len) in &rows {
                ins.execute(params![
                    &id.as_bytes()[..],
                    i64::try_from(*pack).unwrap_or(i64::MAX),
                    i64::try_from(*offset).unwrap_or(i64::MAX),
                    i64::try_from(*len).unwrap_or(i64::MAX)
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The open pack, rotated first if `entry` bytes would take it past the target size.
    fn pack_for(&mut self, entry: u64) -> Result<&mut OpenPack, ChunkStoreError> {
        let rotate = match &self.current {
            Some(p) => p.size > PACK_MAGIC.len() as u64 && p.size + entry > PACK_TARGET_SIZE,
            None => true,
        };
        if rotate {
            if let Some(old) = self.current.take() {
                old.file.sync_data().map_err(|e| io_err(&old.path, e))?;
            }
            let no = self.next_no;
            self.next_no += 1;
            let path = pack_path(&self.root, no);
            let dir = path.parent().unwrap_or(&self.root).to_path_buf();
            let new_dir = !dir.exists();
            std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
            let mut file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)
                .map_err(|e| io_err(&path, e))?;
            file.write_all(PACK_MAGIC).map_err(|e| io_err(&path, e))?;
            // The new file's directory entry must be durable before the index names it.
            fsync_dir(&dir)?;
            if new_dir {
                fsync_dir(&self.root.join("packs"))?;
            }
            self.current = Some(OpenPack {
                no,
                path,
                file,
                size: PACK_MAGIC.len() as u64,
            });
        }
        self.current.as_mut().ok_or(ChunkStoreError::WriterGone)
    }
}

fn clone_err(e: &ChunkStoreError) -> ChunkStoreError {
    match e {
        ChunkStoreError::Io { path, source } => ChunkStoreError::Io {
            path: path.clone(),
            source: source.clone(),
        },
        ChunkStoreError::Index(e) => ChunkStoreError::Index(e.clone()),
        ChunkStoreError::WriterGone => ChunkStoreError::WriterGone,
        ChunkStoreError::Corrupt { id, source } => ChunkStoreError::Corrupt {
            id: *id,
            source: match source {
                payload::PayloadError::Empty => payload::PayloadError::Empty,
                payload::PayloadError::UnknownTag(t) => payload::PayloadError::UnknownTag(*t),
                payload::PayloadError::TooLarge { limit } => {
                    payload::PayloadError::TooLarge { limit: *limit }
                }
                payload::PayloadError::Zstd(io) => {
                    payload::PayloadError::Zstd(std::io::Error::new(io.kind(), io.to_string()))
                }
                payload::PayloadError::HashMismatch { expected, actual } => {
                    payload::PayloadError::HashMismatch {
                        expected: *expected,
                        actual: *actual,
                    }
                }
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunking::VerifiedChunk;
    use axum::body::Bytes;

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
        let chunks: Vec<_> = (0..100).map(|i| chunk(i, 64 << 10)).collect();
        {
            let store = PackDirStore::open(dir.path()).unwrap();
            store.put(chunks[..60].to_vec()).unwrap();
            // Duplicates, in one put and against stored ones, are stored once.
            store.put(chunks[50..].to_vec()).unwrap();
            store.put(chunks[..10].to_vec()).unwrap();
            for c in &chunks {
                assert_eq!(store.get(&c.id()).unwrap().unwrap(), c.payload());
            }
        }
        // 100 chunks of ~64 KiB are several packs, not 100 files.
        let packs = highest_pack_on_disk(dir.path()).unwrap();
        assert!((2..=4).contains(&packs), "{packs} packs");
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
    fn a_corrupted_pack_is_not_served() {
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
        assert!(matches!(
            store.get(&c.id()),
            Err(ChunkStoreError::Corrupt { .. })
        ));
    }
}
