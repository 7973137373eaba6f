//! The pack store's write path: a writer thread appends each group of waiting puts to packs,
//! starting writeback as it goes so the disk works while the group is still being written,
//! then makes the group durable (one fdatasync per pack it touched, one fsync per new pack's
//! directory), and only then commits its index rows and answers its callers.
//!
//! [`WRITERS`] writers take groups in turn, each with a pack of its own, so one writes while
//! another waits for the disk. One indexer commits the rows of every group waiting for it in
//! one transaction (one fsync), so the writers neither queue on SQLite's write lock (whose
//! waiters poll with growing sleeps) nor pay an fsync each.
//!
//! Every payload handed in is written, and gets an index row of its own, even for a chunk
//! the store holds already: whether another user stores a chunk must not change how long an
//! upload takes (the API layer skips what the uploading volume holds). Extra copies are dead
//! weight that repacking can reclaim.

use std::collections::HashSet;
use std::fs::File;
use std::io::{IoSlice, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use rusqlite::{Connection, params};

use super::packdir::{
    ENTRY_HEADER, PACK_MAGIC, PACK_TARGET_SIZE, RecentRows, fsync_dir, io_err, pack_path,
};
use super::{ChunkStoreError, VerifiedPayload};
use crate::chunking::ChunkId;
use crate::durability::start_writeback;

/// Writer threads.
pub(super) const WRITERS: usize = 4;
/// Most put requests folded into one group (one fsync per pack touched).
const MAX_GROUP: usize = 64;
/// Writeback of a pack starts every this many bytes.
const WRITEBACK_STEP: u64 = 4 << 20;

/// The answer a put waits for.
pub(super) type Reply = SyncSender<Result<(), ChunkStoreError>>;

/// Chunks to store, and where to say when they are durable.
pub(super) struct PutJob {
    pub(super) chunks: Vec<VerifiedPayload>,
    pub(super) reply: Reply,
}

/// Starts the writer threads; puts go to `rx`'s sender, and the threads end when it is
/// dropped. `index_conn` is the indexer's connection to the index; `next_no` is the
/// number of the next pack to create; `recent` learns each group's rows once committed.
pub(super) fn start(
    root: PathBuf,
    next_no: u64,
    index_conn: Connection,
    recent: Arc<RecentRows>,
    rx: Receiver<PutJob>,
) -> Result<Vec<JoinHandle<()>>, ChunkStoreError> {
    let rx = Arc::new(Mutex::new(rx));
    let next_no = Arc::new(AtomicU64::new(next_no));
    let (index, index_rx) = channel::<IndexJob>();
    let learns = recent.clone();
    // The indexer ends once every writer (holding a sender) has.
    let mut threads = vec![
        std::thread::Builder::new()
            .name("pack-indexer".into())
            .spawn(move || index_loop(&index_conn, &index_rx, &learns))
            .map_err(|e| io_err(&root, e))?,
    ];
    for _ in 0..WRITERS {
        let mut writer = Writer {
            root: root.clone(),
            current: None,
            next_no: next_no.clone(),
            index: index.clone(),
        };
        let rx = rx.clone();
        threads.push(
            std::thread::Builder::new()
                .name("pack-writer".into())
                .spawn(move || writer.run(&rx))
                .map_err(|e| io_err(&root, e))?,
        );
    }
    Ok(threads)
}

/// A group's index rows, and where to say once they are committed.
struct IndexJob {
    rows: Vec<Row>,
    reply: SyncSender<Result<(), ChunkStoreError>>,
}

/// Commits the rows of every group waiting in one transaction, then tells `recent` and the
/// groups.
fn index_loop(conn: &Connection, rx: &Receiver<IndexJob>, recent: &RecentRows) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        jobs.extend(rx.try_iter());
        let result = insert_rows(conn, jobs.iter().flat_map(|j| &j.rows));
        if result.is_ok() {
            recent.insert_all(
                jobs.iter()
                    .flat_map(|j| &j.rows)
                    .map(|&(id, pack, offset, len)| (id, (pack, offset, len))),
            );
        }
        for job in jobs {
            let answer = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(e.clone_shared()),
            };
            // A writer that went away needs no answer.
            let _ = job.reply.send(answer);
        }
    }
}

fn insert_rows<'r>(
    conn: &Connection,
    rows: impl Iterator<Item = &'r Row>,
) -> Result<(), ChunkStoreError> {
    let tx = conn.unchecked_transaction()?;
    {
        // A new row for every copy, also of a chunk stored already: the same statement and the
        // same work either way (see the module doc).
        let mut ins = tx
            .prepare_cached("INSERT INTO copies (id, pack, offset, len) VALUES (?1, ?2, ?3, ?4)")?;
        for (id, pack, offset, len) in rows {
            ins.execute(params![
                &id.as_bytes()[..],
                i64::try_from(*pack).unwrap_or(i64::MAX),
                i64::try_from(*offset).unwrap_or(i64::MAX),
                i64::from(*len)
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// One index row: chunk id, pack, offset of the payload, payload length.
type Row = (ChunkId, u64, u64, u32);

/// What a group wrote and must make durable before its rows are committed.
#[derive(Default)]
struct Unsynced {
    packs: Vec<(PathBuf, Arc<File>)>,
    dirs: Vec<PathBuf>,
}

struct OpenPack {
    no: u64,
    path: PathBuf,
    file: Arc<File>,
    size: u64,
    /// Writeback was started for the bytes below this offset.
    kicked: u64,
}

struct Writer {
    root: PathBuf,
    current: Option<OpenPack>,
    /// Shared by the writers: the number of the next pack any of them creates.
    next_no: Arc<AtomicU64>,
    /// To the indexer: rows to commit once their bytes are durable.
    index: Sender<IndexJob>,
}

impl Writer {
    fn run(&mut self, rx: &Mutex<Receiver<PutJob>>) {
        loop {
            let jobs = {
                let rx = rx.lock().unwrap_or_else(PoisonError::into_inner);
                let Ok(first) = rx.recv() else { return };
                let mut jobs = vec![first];
                while jobs.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(job) => jobs.push(job),
                        Err(_) => break,
                    }
                }
                jobs
            };
            let result = self.store_group(&jobs);
            if result.is_err() {
                // The pack's tail may hold a partial entry: never append to it again.
                self.current = None;
            }
            for job in jobs {
                let answer = match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(e.clone_shared()),
                };
                // The caller may have gone away; then nobody needs the answer.
                let _ = job.reply.send(answer);
            }
        }
    }

    /// Writes the group, makes it durable, then commits its index rows.
    fn store_group(&mut self, jobs: &[PutJob]) -> Result<(), ChunkStoreError> {
        let started = std::time::Instant::now();
        let mut unsynced = Unsynced::default();
        let rows = self.write_group(jobs, &mut unsynced)?;
        let written = started.elapsed();
        for (path, file) in &unsynced.packs {
            file.sync_data().map_err(|e| io_err(path, e))?;
        }
        for dir in &unsynced.dirs {
            fsync_dir(dir)?;
        }
        let synced = started.elapsed();
        // Only now, with the bytes durable, may index rows point at them.
        let rows_count = rows.len();
        let (reply, answer) = sync_channel(1);
        self.index
            .send(IndexJob { rows, reply })
            .map_err(|_| ChunkStoreError::WriterGone)?;
        answer.recv().map_err(|_| ChunkStoreError::WriterGone)??;
        tracing::debug!(
            puts = jobs.len(),
            rows = rows_count,
            write_ms = written.as_millis() as u64,
            sync_ms = (synced - written).as_millis() as u64,
            index_ms = (started.elapsed() - synced).as_millis() as u64,
            "pack group stored"
        );
        Ok(())
    }

    /// Appends every chunk of the group to packs (each job's own duplicates once) and returns
    /// their index rows; `unsynced` receives what must be made durable before the rows are
    /// committed.
    fn write_group(
        &mut self,
        jobs: &[PutJob],
        unsynced: &mut Unsynced,
    ) -> Result<Vec<Row>, ChunkStoreError> {
        let mut todo: Vec<&VerifiedPayload> = Vec::new();
        for job in jobs {
            let mut ids = HashSet::with_capacity(job.chunks.len());
            todo.extend(job.chunks.iter().filter(|c| ids.insert(c.id())));
        }
        let mut rows = Vec::with_capacity(todo.len());
        for chunk in todo {
            let payload = chunk.payload();
            let entry = ENTRY_HEADER + payload.len() as u64;
            let pack = self.pack_for(entry, unsynced)?;
            // A payload is at most MAX_CHUNK_PAYLOAD bytes (checked on the way in).
            let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
            let mut header = [0u8; ENTRY_HEADER as usize];
            header[..32].copy_from_slice(chunk.id().as_bytes());
            header[32..].copy_from_slice(&len.to_le_bytes());
            write_entry(&pack.file, &header, payload).map_err(|e| io_err(&pack.path, e))?;
            rows.push((chunk.id(), pack.no, pack.size + ENTRY_HEADER, len));
            pack.size += entry;
            if pack.size - pack.kicked >= WRITEBACK_STEP {
                // Only a head start for the fdatasync, which reports any failure.
                let _ = start_writeback(&pack.file, pack.kicked, pack.size - pack.kicked);
                pack.kicked = pack.size;
            }
        }
        if let Some(p) = &self.current
            && !unsynced.packs.iter().any(|(path, _)| *path == p.path)
        {
            unsynced.packs.push((p.path.clone(), p.file.clone()));
        }
        Ok(rows)
    }

    /// The open pack, rotated first if `entry` bytes would take it past the target size.
    fn pack_for(
        &mut self,
        entry: u64,
        unsynced: &mut Unsynced,
    ) -> Result<&mut OpenPack, ChunkStoreError> {
        let rotate = match &self.current {
            Some(p) => p.size > PACK_MAGIC.len() as u64 && p.size + entry > PACK_TARGET_SIZE,
            None => true,
        };
        if rotate {
            if let Some(old) = self.current.take()
                && !unsynced.packs.iter().any(|(path, _)| *path == old.path)
            {
                unsynced.packs.push((old.path, old.file));
            }
            let no = self.next_no.fetch_add(1, Ordering::Relaxed);
            let path = pack_path(&self.root, no);
            let dir = path.parent().unwrap_or(&self.root).to_path_buf();
            let new_dir = !dir.exists();
            crate::private::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
            let mut file = crate::private::file_options()
                .create_new(true)
                .append(true)
                .open(&path)
                .map_err(|e| io_err(&path, e))?;
            file.write_all(PACK_MAGIC).map_err(|e| io_err(&path, e))?;
            // The new file's directory entry must be durable before the index names it.
            if !unsynced.dirs.contains(&dir) {
                unsynced.dirs.push(dir);
            }
            if new_dir {
                unsynced.dirs.push(self.root.join("packs"));
            }
            self.current = Some(OpenPack {
                no,
                path,
                file: Arc::new(file),
                size: PACK_MAGIC.len() as u64,
                kicked: 0,
            });
        }
        self.current.as_mut().ok_or(ChunkStoreError::WriterGone)
    }
}

/// Appends header and payload with one system call where the kernel takes both at once.
fn write_entry(mut file: &File, header: &[u8], payload: &[u8]) -> std::io::Result<()> {
    let n = file.write_vectored(&[IoSlice::new(header), IoSlice::new(payload)])?;
    if n < header.len() {
        file.write_all(&header[n..])?;
        file.write_all(payload)
    } else {
        file.write_all(&payload[n - header.len()..])
    }
}
