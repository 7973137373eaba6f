//! Backing files: each file node's content in one file named by its node id, never by path.

use std::collections::{HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::protocol::NodeId;

use super::lock;
use super::node::Nanos;

/// The directory of backing files (one flat directory: ext4 indexes large directories).
///
/// Removed backing files are truncated and kept in `free/` to be renamed into place for the
/// next new file: creating a file then costs a rename instead of an inode allocation, which
/// on ext4 without a journal scans past every recently freed inode of the block group and
/// made "delete many files, create many files" several times slower.
///
/// The files of nodes gone for good are removed behind, by a thread of their own: with cold
/// caches each removal waits for the disk (open, truncate and rename: about half a
/// millisecond), and in the FUSE request threads that wait held up the next `unlink` of an
/// `rm -r`.
#[derive(Debug)]
pub struct Backing {
    shared: Arc<Shared>,
    reaper: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    root: PathBuf,
    free: Mutex<FreeList>,
    reap: Mutex<ReapQueue>,
    /// Signalled when a removal is queued or done, and at close.
    reap_changed: Condvar,
}

#[derive(Debug, Default)]
struct FreeList {
    files: Vec<PathBuf>,
    next: u64,
}

/// Backing files waiting for the reaper thread.
#[derive(Debug, Default)]
struct ReapQueue {
    queue: VecDeque<NodeId>,
    /// The ids in `queue` still to be removed: a claim takes its id out, and the reaper then
    /// skips it.
    pending: HashSet<NodeId>,
    /// The id the reaper is removing right now.
    busy: Option<NodeId>,
    /// No more removals come: the reaper ends once the queue is empty.
    closed: bool,
}

/// Most empty backing files kept for reuse.
const FREE_MAX: usize = 16_384;

impl Backing {
    /// Opens (creating if needed) the content directory `root` and starts its reaper thread.
    pub fn open(root: &Path) -> io::Result<Backing> {
        crate::private::create_dir_all(root)?;
        let free_dir = root.join("free");
        // Files left in the free list by an earlier session are not worth keeping track of.
        match fs::remove_dir_all(&free_dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        crate::private::create_dir(&free_dir)?;
        let shared = Arc::new(Shared {
            root: root.to_path_buf(),
            free: Mutex::new(FreeList::default()),
            reap: Mutex::new(ReapQueue::default()),
            reap_changed: Condvar::new(),
        });
        let reaper = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("drive-reaper".into())
                .spawn(move || shared.reap_until_closed())?
        };
        Ok(Backing {
            shared,
            reaper: Some(reaper),
        })
    }

    /// Where the content of `id` lives.
    pub fn path(&self, id: NodeId) -> PathBuf {
        self.shared.path(id)
    }

    /// Creates an empty backing file (replacing a stale one left by a crash), reusing a
    /// removed one when there is one.
    pub fn create(&self, id: NodeId) -> io::Result<File> {
        self.claim(id);
        let reuse = self.shared.free_list().files.pop();
        if let Some(free) = reuse {
            if fs::rename(&free, self.path(id)).is_ok() {
                return self.open_file(id);
            }
            let _ = fs::remove_file(free);
        }
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(self.path(id))
    }

    /// Opens an existing backing file for reading and writing, creating it if it is missing
    /// (an empty file whose backing file was never written before a crash).
    pub fn open_file(&self, id: NodeId) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(self.path(id))
    }

    /// Removes a backing file now, keeping its inode for reuse if the free list has room; a
    /// missing file is not an error.
    pub fn remove(&self, id: NodeId) -> io::Result<()> {
        self.claim(id);
        self.shared.remove_now(id)
    }

    /// Queues the backing file of a node gone for good for the reaper thread.
    pub fn remove_later(&self, id: NodeId) {
        let mut q = lock(&self.shared.reap);
        if q.pending.insert(id) {
            q.queue.push_back(id);
        }
        self.shared.reap_changed.notify_all();
    }

    /// Renames `from` (on the same file system) into place as the backing file of `id`.
    pub fn place(&self, from: &Path, id: NodeId) -> io::Result<PathBuf> {
        self.claim(id);
        let path = self.path(id);
        fs::rename(from, &path)?;
        Ok(path)
    }

    /// Makes `id`'s backing file ours again before it is put in place (a node id that comes
    /// back, as a remote edit undoing a local delete, or a key handed out again once its
    /// node is gone): a removal still queued is called off, one under way is waited for.
    pub fn claim(&self, id: NodeId) {
        let mut q = lock(&self.shared.reap);
        q.pending.remove(&id);
        while q.busy == Some(id) {
            q = self.shared.wait(q);
        }
    }

    /// Waits until every queued removal is done.
    pub fn drain(&self) {
        let mut q = lock(&self.shared.reap);
        while !q.queue.is_empty() || q.busy.is_some() {
            q = self.shared.wait(q);
        }
    }

    /// Length, mtime and allocated blocks of a backing file, `None` if it does not exist.
    pub fn stat(&self, id: NodeId) -> io::Result<Option<(u64, Nanos, u64)>> {
        match fs::metadata(self.path(id)) {
            Ok(m) => Ok(Some(stamp_of(&m))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every backing file's node id (names that are not node ids are ignored).
    pub fn list(&self) -> io::Result<Vec<NodeId>> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.shared.root)? {
            let entry = entry?;
            if let Some(id) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
                ids.push(id);
            }
        }
        Ok(ids)
    }
}

impl Drop for Backing {
    /// Lets the reaper finish what is queued, so no thread outlives the drive.
    fn drop(&mut self) {
        lock(&self.shared.reap).closed = true;
        self.shared.reap_changed.notify_all();
        if let Some(reaper) = self.reaper.take()
            && reaper.join().is_err()
        {
            tracing::error!("the backing-file reaper thread panicked");
        }
    }
}

impl Shared {
    fn path(&self, id: NodeId) -> PathBuf {
        self.root.join(id.to_string())
    }

    fn free_list(&self) -> std::sync::MutexGuard<'_, FreeList> {
        lock(&self.free)
    }

    fn wait<'a>(
        &self,
        guard: std::sync::MutexGuard<'a, ReapQueue>,
    ) -> std::sync::MutexGuard<'a, ReapQueue> {
        self.reap_changed
            .wait(guard)
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The reaper thread: removes queued backing files, in order, until closed and empty.
    fn reap_until_closed(&self) {
        loop {
            let id = {
                let mut q = lock(&self.reap);
                loop {
                    if let Some(id) = q.queue.pop_front() {
                        if q.pending.remove(&id) {
                            q.busy = Some(id);
                            break id;
                        }
                        // Claimed meanwhile: skipped. A drain may be waiting for the last one.
                        self.reap_changed.notify_all();
                        continue;
                    }
                    if q.closed {
                        return;
                    }
                    q = self.wait(q);
                }
            };
            if let Err(e) = self.remove_now(id) {
                tracing::warn!(%id, "could not remove backing file: {e}");
            }
            lock(&self.reap).busy = None;
            self.reap_changed.notify_all();
        }
    }

    /// Removes a backing file, keeping its inode for reuse if the free list has room.
    fn remove_now(&self, id: NodeId) -> io::Result<()> {
        // The free list's lock is not held across the disk work: creators take from it.
        let slot = {
            let mut free = self.free_list();
            (free.files.len() < FREE_MAX).then(|| {
                free.next += 1;
                self.root.join("free").join((free.next - 1).to_string())
            })
        };
        let path = self.path(id);
        if let Some(slot) = slot {
            let recycled = OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(0))
                .and_then(|()| fs::rename(&path, &slot));
            match recycled {
                Ok(()) => {
                    self.free_list().files.push(slot);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                // Fall through to a plain removal.
                Err(_) => {}
            }
        }
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// (length, mtime in ns, allocated 512-byte blocks) of a backing file.
pub fn stamp_of(m: &fs::Metadata) -> (u64, Nanos, u64) {
    (
        m.len(),
        m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        m.blocks(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removals_behind_are_done_at_drain_and_recycled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backing = Backing::open(&dir.path().join("content")).expect("open");
        let ids: Vec<NodeId> = (0..50).map(|_| NodeId::random()).collect();
        for &id in &ids {
            fs::write(backing.path(id), b"bytes").expect("write");
            backing.remove_later(id);
        }
        backing.drain();
        for &id in &ids {
            assert!(!backing.path(id).exists(), "{id} removed");
        }
        assert_eq!(backing.shared.free_list().files.len(), ids.len());
        // A new file takes a recycled one, empty.
        let id = NodeId::random();
        let f = backing.create(id).expect("create");
        assert_eq!(f.metadata().expect("stat").len(), 0);
        assert_eq!(backing.shared.free_list().files.len(), ids.len() - 1);
    }

    #[test]
    fn a_claimed_id_keeps_its_new_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backing = Backing::open(&dir.path().join("content")).expect("open");
        for _ in 0..50 {
            let id = NodeId::random();
            fs::write(backing.path(id), b"old").expect("write");
            backing.remove_later(id);
            // Whether the reaper got to it or not, once claimed it is left alone.
            backing.claim(id);
            fs::write(backing.path(id), b"new").expect("write");
            backing.drain();
            assert_eq!(fs::read(backing.path(id)).expect("read"), b"new");
        }
    }

    #[test]
    fn dropping_finishes_the_queue() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("content");
        let backing = Backing::open(&root).expect("open");
        let id = NodeId::random();
        fs::write(backing.path(id), b"bytes").expect("write");
        backing.remove_later(id);
        let path = backing.path(id);
        drop(backing);
        assert!(!path.exists());
    }
}
