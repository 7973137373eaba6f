//! Rebuilding a file's content from the chunks this device already has (the base version's
//! backing file) plus the chunks it fetches, into a staged file the drive then renames in.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use crate::chunking::{ChunkId, ChunkRef, Manifest, VerifiedChunk, reconstruct};
use crate::drive::Drive;
use crate::durability::start_writeback;
use crate::protocol::{NodeId, TxnId};
use crate::remote::Remote;

use super::SyncError;

/// A staged file that is removed unless it was handed over.
#[derive(Debug)]
pub struct Staged {
    path: Option<PathBuf>,
}

impl Staged {
    /// A fresh name in the drive's staging directory.
    pub(crate) fn new(drive: &Drive) -> Result<Staged, SyncError> {
        let dir = drive.staging_dir()?;
        Ok(Staged {
            path: Some(dir.join(format!("{}.part", TxnId::random()))),
        })
    }

    /// Where the content is.
    pub fn path(&self) -> &std::path::Path {
        self.path.as_deref().unwrap_or(std::path::Path::new(""))
    }

    /// The content was moved into place: nothing to clean up.
    pub fn handed_over(mut self) {
        self.path = None;
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Writes `target`'s content to a new staged file, reading what it can from `base` (a node
/// whose backing file holds that manifest's bytes) and fetching the rest. The bytes fetched
/// follow the size of the change, not of the file.
pub fn materialize(
    drive: &Drive,
    remote: &Remote,
    base: Option<(NodeId, &Manifest)>,
    target: &Manifest,
) -> Result<Staged, SyncError> {
    let staged = Staged::new(drive)?;
    let result = write_content(drive, remote, base, target, staged.path());
    match result {
        Ok(()) => Ok(staged),
        // The base file changed under us (a local edit raced the remote one): start over
        // from fetched chunks only.
        Err(SyncError::Reconstruct(_)) if base.is_some() => {
            write_content(drive, remote, None, target, staged.path())?;
            Ok(staged)
        }
        Err(e) => Err(e),
    }
}

/// Writes a new file's content to a staged file from chunks already fetched (`supplied`
/// must hold every chunk of `target`), without an fsync: for many small files at once,
/// made durable by one [`sync_staging`] before any of them is placed.
pub fn materialize_from_unsynced(
    drive: &Drive,
    supplied: &mut HashMap<ChunkId, VerifiedChunk>,
    target: &Manifest,
) -> Result<Staged, SyncError> {
    let staged = Staged::new(drive)?;
    write_from(drive, None, supplied, target, staged.path(), false)?;
    Ok(staged)
}

/// Makes every staged file durable with one syncfs of the staging directory's filesystem.
pub fn sync_staging(drive: &Drive) -> Result<(), SyncError> {
    use std::os::fd::AsRawFd;
    let dir = File::open(drive.staging_dir()?)?;
    // SAFETY: syncfs only reads the descriptor, which `dir` keeps open.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

/// Fetched chunks are held for at most this many bytes of content at once.
const WINDOW_BYTES: u64 = 64 << 20;

fn write_content(
    drive: &Drive,
    remote: &Remote,
    base: Option<(NodeId, &Manifest)>,
    target: &Manifest,
    path: &std::path::Path,
) -> Result<(), SyncError> {
    let empty = Manifest::default();
    let (base_manifest, base_file) = match base {
        Some((node, m)) => (m, Some(drive.open_content(node)?)),
        None => (&empty, None),
    };
    let have: HashSet<ChunkId> = base_manifest.chunks.iter().map(|c| c.id).collect();
    let file = File::create(path)?;
    let mut out = BufWriter::new(&file);
    // Window by window, so a large file never sits in memory whole; the next window is
    // fetched (one thread) while this one is written (this thread).
    let mut windows: Vec<&[ChunkRef]> = Vec::new();
    let mut rest = &target.chunks[..];
    while !rest.is_empty() {
        let mut bytes = 0u64;
        let n = rest
            .iter()
            .take_while(|c| {
                let fits = bytes == 0 || bytes + u64::from(c.len) <= WINDOW_BYTES;
                bytes += u64::from(c.len);
                fits
            })
            .count()
            .max(1);
        let (window, tail) = rest.split_at(n);
        windows.push(window);
        rest = tail;
    }
    std::thread::scope(|scope| -> Result<(), SyncError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<HashMap<ChunkId, VerifiedChunk>>(1);
        let have = &have;
        let windows_ref = &windows;
        let fetcher = scope.spawn(move || -> Result<(), SyncError> {
            for window in windows_ref {
                let mut seen = HashSet::new();
                let need: Vec<ChunkId> = window
                    .iter()
                    .map(|c| c.id)
                    .filter(|id| !have.contains(id) && seen.insert(*id))
                    .collect();
                // Two requests in flight: the server reads and checks one half while the
                // other travels.
                let (first, second) = need.split_at(need.len() / 2);
                let (a, b) = std::thread::scope(|s| {
                    let other = s.spawn(|| remote.fetch(second));
                    (remote.fetch(first), other.join())
                });
                let b = b.map_err(|_| SyncError::Inconsistent("a chunk fetch panicked".into()))?;
                let supplied: HashMap<ChunkId, VerifiedChunk> = a?.into_iter().chain(b?).collect();
                if tx.send(supplied).is_err() {
                    break;
                }
            }
            Ok(())
        });
        let mut written = Ok(());
        for window in &windows {
            let started = std::time::Instant::now();
            let received = rx.recv();
            let waited = started.elapsed();
            let Ok(mut supplied) = received else {
                break; // the fetcher failed: its error is reported below
            };
            let part = Manifest {
                chunks: window.to_vec(),
            };
            let r = match &base_file {
                Some(f) => reconstruct(base_manifest, f, &mut supplied, &part, &mut out),
                None => {
                    let no_base: &[u8] = &[];
                    reconstruct(&empty, no_base, &mut supplied, &part, &mut out)
                }
            };
            if let Err(e) = r {
                written = Err(e.into());
                break;
            }
            // Writeback of this window starts now, without waiting for it: the disk works
            // while the next window is written, and the one fsync at the end waits for the
            // rest.
            if let Err(e) = out
                .flush()
                .and_then(|()| start_writeback(out.get_ref(), 0, 0))
            {
                written = Err(e.into());
                break;
            }
            tracing::debug!(
                chunks = window.len(),
                waited_ms = waited.as_millis() as u64,
                written_ms = (started.elapsed() - waited).as_millis() as u64,
                "window written"
            );
        }
        drop(rx);
        fetcher
            .join()
            .map_err(|_| SyncError::Inconsistent("the chunk fetcher panicked".into()))??;
        written
    })?;
    out.flush()?;
    drop(out);
    file.sync_all()?;
    Ok(())
}

fn write_from(
    drive: &Drive,
    base: Option<(NodeId, &Manifest)>,
    supplied: &mut HashMap<ChunkId, VerifiedChunk>,
    target: &Manifest,
    path: &std::path::Path,
    fsync: bool,
) -> Result<(), SyncError> {
    let mut supplied = supplied;
    let file = File::create(path)?;
    let mut out = BufWriter::new(&file);
    match base {
        Some((node, manifest)) => {
            let base_file = drive.open_content(node)?;
            reconstruct(manifest, &base_file, &mut supplied, target, &mut out)?;
        }
        None => {
            let empty: &[u8] = &[];
            reconstruct(&Manifest::default(), empty, &mut supplied, target, &mut out)?;
        }
    }
    out.flush()?;
    drop(out);
    if fsync {
        file.sync_all()?;
    }
    Ok(())
}
