//! Backing files: each file node's content in one file named by its node id, never by path.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::protocol::NodeId;

use super::node::Nanos;

/// The directory of backing files.
///
/// One flat directory: ext4 indexes large directories (htree), and fanning out into many
/// subdirectories spreads new inodes over many block groups, which made file creation
/// several times slower in the small-files benchmark.
#[derive(Debug, Clone)]
pub struct Backing {
    root: PathBuf,
}

impl Backing {
    /// Opens (creating if needed) the content directory `root`.
    pub fn open(root: &Path) -> io::Result<Backing> {
        fs::create_dir_all(root)?;
        Ok(Backing {
            root: root.to_path_buf(),
        })
    }

    /// Where the content of `id` lives.
    pub fn path(&self, id: NodeId) -> PathBuf {
        self.root.join(id.to_string())
    }

    /// Creates an empty backing file (replacing a stale one left by a crash).
    pub fn create(&self, id: NodeId) -> io::Result<File> {
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

    /// Removes a backing file; a missing one is not an error.
    pub fn remove(&self, id: NodeId) -> io::Result<()> {
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
