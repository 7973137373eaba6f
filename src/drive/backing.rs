//! Backing files: each file node's content in one file named by its node id, never by path.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::protocol::NodeId;

use super::node::Nanos;

/// The directory of backing files (one flat directory: ext4 indexes large directories).
///
/// Removed backing files are truncated and kept in `free/` to be renamed into place for the
/// next new file: creating a file then costs a rename instead of an inode allocation, which
/// on ext4 without a journal scans past every recently freed inode of the block group and
/// made "delete many files, create many files" several times slower.
#[derive(Debug)]
pub struct Backing {
    root: PathBuf,
    free: Mutex<FreeList>,
}

#[derive(Debug, Default)]
struct FreeList {
    files: Vec<PathBuf>,
    next: u64,
}

/// Most empty backing files kept for reuse.
const FREE_MAX: usize = 16_384;

impl Backing {
    /// Opens (creating if needed) the content directory `root`.
    pub fn open(root: &Path) -> io::Result<Backing> {
        crate::private::create_dir_all(root)?;
        let free_dir = root.join("free");
        // Files left in the free list by an earlier session are not worth keeping track of.
        match fs::remove_dir_all(&free_dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        crate::private::create_dir(&free_dir)?;
        Ok(Backing {
            root: root.to_path_buf(),
            free: Mutex::new(FreeList::default()),
        })
    }

    fn free_list(&self) -> std::sync::MutexGuard<'_, FreeList> {
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where the content of `id` lives.
    pub fn path(&self, id: NodeId) -> PathBuf {
        self.root.join(id.to_string())
    }

    /// Creates an empty backing file (replacing a stale one left by a crash), reusing a
    /// removed one when there is one.
    pub fn create(&self, id: NodeId) -> io::Result<File> {
        let reuse = self.free_list().files.pop();
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

    /// Removes a backing file, keeping its inode for reuse if the free list has room; a
    /// missing file is not an error.
    pub fn remove(&self, id: NodeId) -> io::Result<()> {
        let mut free = self.free_list();
        if free.files.len() < FREE_MAX {
            let slot = self.root.join("free").join(free.next.to_string());
            free.next += 1;
            let path = self.path(id);
            let recycled = OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(0))
                .and_then(|()| fs::rename(&path, &slot));
            match recycled {
                Ok(()) => {
                    free.files.push(slot);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                // Fall through to a plain removal.
                Err(_) => {}
            }
        }
        drop(free);
        match fs::remove_file(self.path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
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
        for entry in fs::read_dir(&self.root)? {
            let entry = entry?;
            if let Some(id) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
                ids.push(id);
            }
        }
        Ok(ids)
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
