//! Rebuilding a file's content from the chunks this device already has (the base version's
//! backing file) plus the chunks it fetches, into a staged file the drive then renames in.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use crate::chunking::{ChunkId, Manifest, VerifiedChunk, reconstruct};
use crate::drive::Drive;
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
/// must hold every chunk of `target`): for many small files fetched in a few batches.
pub fn materialize_from(
    drive: &Drive,
    supplied: &mut HashMap<ChunkId, VerifiedChunk>,
    target: &Manifest,
) -> Result<Staged, SyncError> {
    let staged = Staged::new(drive)?;
    write_from(drive, None, supplied, target, staged.path())?;
    Ok(staged)
}

fn write_content(
    drive: &Drive,
    remote: &Remote,
    base: Option<(NodeId, &Manifest)>,
    target: &Manifest,
    path: &std::path::Path,
) -> Result<(), SyncError> {
    let have: HashSet<ChunkId> = base
        .map(|(_, m)| m.chunks.iter().map(|c| c.id).collect())
        .unwrap_or_default();
    let mut seen = HashSet::new();
    let need: Vec<ChunkId> = target
        .chunks
        .iter()
        .map(|c| c.id)
        .filter(|id| !have.contains(id) && seen.insert(*id))
        .collect();
    let mut supplied: HashMap<ChunkId, VerifiedChunk> = remote.fetch(&need)?.into_iter().collect();
    write_from(drive, base, &mut supplied, target, path)
}

fn write_from(
    drive: &Drive,
    base: Option<(NodeId, &Manifest)>,
    supplied: &mut HashMap<ChunkId, VerifiedChunk>,
    target: &Manifest,
    path: &std::path::Path,
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
    file.sync_all()?;
    Ok(())
}
