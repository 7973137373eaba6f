//! Carrying out the planner's local steps on the drive: other devices' changes land in the
//! mount, and conflicted copies keep this device's versions.
//!
//! The drive checks each change under its own lock, so a program racing the engine (writing
//! a file about to be replaced, taking a name about to be used) makes the step fail instead
//! of losing its bytes; the run then stops and the engine plans again from what is there.
//! A file whose new content cannot be rebuilt from what the server sends is skipped and
//! reported in [`LocalRun::unbuilt`]; the run goes on with the rest.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::chunking::{ChunkId, ChunkerParams, Manifest, ManifestId, VerifiedChunk, chunk_file};
use crate::drive::{Drive, DriveError, RemoteAttrs, RemoteContent};
use crate::protocol::{NodeId, Xattrs};
use crate::remote::Remote;

use super::SyncError;
use super::content::{Staged, materialize, materialize_from_unsynced, sync_staging};
use super::plan::{Content, Entry, LocalStep, Tree};
use super::prefetch::Prefetch;
use super::state::{LocalContent, SyncState};

/// File creates fetch their chunks together, up to this many bytes...
const PREFETCH_BYTES: u64 = 64 << 20;
/// ...or this many files at once.
const PREFETCH_FILES: usize = 2000;
/// Contents of files placed are recorded once this many wait (with their manifests, held
/// until then), and at the end of the run.
const PLACED_FLUSH: usize = 2000;

/// How a run of local steps ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// Every step was applied.
    Done,
    /// A local change raced a step (named here); the rest was not applied.
    Interrupted(String),
}

/// What carrying out local steps needs.
pub struct LocalRun<'a> {
    /// The drive.
    pub drive: &'a Drive,
    /// The server, for chunks.
    pub remote: &'a Remote,
    /// Content fetched ahead from upload hints, if the engine follows them.
    pub prefetch: Option<&'a Prefetch>,
    /// Where local contents are recorded, and manifests read.
    pub state: &'a mut SyncState,
    /// Chunking parameters (for conflicted copies).
    pub params: ChunkerParams,
    /// Bytes of content still to bring in (for `status`).
    pub to_download: &'a AtomicU64,
    /// Contents of files placed (`None`: a file deleted), recorded together, in order: one
    /// transaction, not one per file (losing them in a crash only costs chunking those
    /// files again; a deleted file's record goes at the next scan).
    pub placed: Vec<(NodeId, Option<(LocalContent, Manifest)>)>,
    /// Files whose new content could not be rebuilt; their steps were skipped.
    pub unbuilt: Vec<Unbuilt>,
}

/// A file whose remote content could not be rebuilt from what the server sent.
#[derive(Debug)]
pub struct Unbuilt {
    /// The file.
    pub node: NodeId,
    /// The content it should have had.
    pub content: ManifestId,
    /// Why not.
    pub reason: String,
}

/// How a small file of a batch was staged.
enum Batched {
    /// Staged from the batch's chunks, with its manifest.
    Ready(Staged, Manifest),
    /// Its content does not fit its manifest (the batch supplied every chunk).
    Failed(SyncError),
    /// The batch's fetch failed on content: staged alone, so the fault is this file's.
    Alone,
}

impl LocalRun<'_> {
    /// Applies `steps` in order; `local` is the local tree they were planned from.
    pub fn run(&mut self, steps: &[LocalStep], local: &Tree) -> Result<Applied, SyncError> {
        let result = self.run_steps(steps, local);
        self.flush_placed()?;
        result
    }

    /// Records the contents of the files placed so far.
    fn flush_placed(&mut self) -> Result<(), SyncError> {
        let placed = std::mem::take(&mut self.placed);
        let rows: Vec<(NodeId, Option<(LocalContent, &Manifest)>)> = placed
            .iter()
            .map(|(id, c)| (*id, c.as_ref().map(|(c, m)| (*c, m))))
            .collect();
        self.state.save_locals(&rows)
    }

    fn run_steps(&mut self, steps: &[LocalStep], local: &Tree) -> Result<Applied, SyncError> {
        let total: u64 = steps.iter().map(download_size).sum();
        self.to_download.store(total, Ordering::Relaxed);
        let mut staged: HashMap<NodeId, Batched> = HashMap::new();
        for (i, step) in steps.iter().enumerate() {
            let outcome = self.step(step, &steps[i..], local, &mut staged);
            self.to_download
                .fetch_sub(download_size(step), Ordering::Relaxed);
            match outcome {
                Ok(()) => {}
                Err(SyncError::Drive(
                    e @ (DriveError::Busy
                    | DriveError::LocalChanges
                    | DriveError::Exists
                    | DriveError::NotEmpty
                    | DriveError::NotFound),
                )) => {
                    self.to_download.store(0, Ordering::Relaxed);
                    return Ok(Applied::Interrupted(format!("{step:?}: {e}")));
                }
                Err(e) => match (remote_content(step), e.is_content_fault()) {
                    (Some((node, content)), true) => {
                        self.unbuilt.push(Unbuilt {
                            node,
                            content,
                            reason: e.to_string(),
                        });
                    }
                    _ => {
                        self.to_download.store(0, Ordering::Relaxed);
                        return Err(e);
                    }
                },
            }
        }
        Ok(Applied::Done)
    }

    fn step(
        &mut self,
        step: &LocalStep,
        rest: &[LocalStep],
        local: &Tree,
        staged: &mut HashMap<NodeId, Batched>,
    ) -> Result<(), SyncError> {
        match step {
            LocalStep::Create { node, entry } => self.create(*node, entry, rest, staged),
            LocalStep::CopyAside {
                source,
                node,
                entry,
            } => self.copy_aside(*source, *node, entry, local),
            LocalStep::UpdateContent { node, content } => self.update_content(*node, content),
            LocalStep::SetAttrs {
                node,
                mode,
                mtime,
                xattrs,
            } => {
                let Some(current) = self.drive.node_view(*node) else {
                    return Err(DriveError::NotFound.into());
                };
                let attrs = RemoteAttrs {
                    perm: mode.unwrap_or(current.perm),
                    mtime: mtime.unwrap_or(current.mtime),
                    xattrs: xattrs.as_ref().map(local_xattrs).unwrap_or(current.xattrs),
                };
                Ok(self.drive.apply_attrs(*node, &attrs)?)
            }
            LocalStep::Move { node, parent, name } => {
                Ok(self
                    .drive
                    .apply_move(*node, *parent, name.as_str().as_bytes())?)
            }
            LocalStep::Delete { node } => {
                let file = self
                    .drive
                    .node_view(*node)
                    .is_some_and(|v| v.kind == crate::drive::Kind::File);
                self.drive.apply_delete(*node)?;
                if file {
                    self.record(*node, None)?;
                }
                Ok(())
            }
        }
    }

    fn manifest(&mut self, id: &ManifestId) -> Result<Manifest, SyncError> {
        self.state.manifest(*id)?.ok_or_else(|| not_stored(id))
    }

    fn create(
        &mut self,
        node: NodeId,
        entry: &Entry,
        rest: &[LocalStep],
        staged: &mut HashMap<NodeId, Batched>,
    ) -> Result<(), SyncError> {
        let attrs = remote_attrs(entry);
        let name = entry.name.as_str().as_bytes();
        match &entry.content {
            Content::Dir => {
                self.drive
                    .apply_create(node, entry.parent, name, &attrs, RemoteContent::Dir)?;
            }
            Content::Symlink { target } => {
                self.place_link(node, entry.parent, name, &attrs, target)?;
            }
            Content::File { manifest_id, size } => {
                let alone = *size > PREFETCH_BYTES || self.fetched_ahead(node);
                if !alone && !staged.contains_key(&node) {
                    *staged = self.stage_batch(rest)?;
                }
                let (file, manifest) = match staged.remove(&node) {
                    Some(Batched::Ready(file, manifest)) => (file, manifest),
                    Some(Batched::Failed(e)) => return Err(e),
                    // A large file streams through its own windows (and takes over what was
                    // fetched of it ahead); a small one whose batch failed on content is
                    // fetched alone, so that the fault is its own.
                    Some(Batched::Alone) | None => {
                        let manifest = self.manifest(manifest_id)?;
                        let file = materialize(
                            self.drive,
                            self.remote,
                            self.prefetch,
                            node,
                            None,
                            &manifest,
                        )?;
                        (file, manifest)
                    }
                };
                self.place_file(node, entry, &attrs, file, &manifest)?;
            }
        }
        Ok(())
    }

    /// Whether chunks of node `node` were fetched ahead from upload hints.
    fn fetched_ahead(&self, node: NodeId) -> bool {
        self.prefetch.is_some_and(|p| p.has(node))
    }

    /// Stages the small file creates at the head of `rest` together: their manifests read in
    /// one batch, their chunks fetched in one request and the files made durable with one
    /// syncfs, so that many small files cost a few round trips and one flush instead of one
    /// each.
    fn stage_batch(&mut self, rest: &[LocalStep]) -> Result<HashMap<NodeId, Batched>, SyncError> {
        let mut files: Vec<(NodeId, ManifestId)> = Vec::new();
        let mut bytes = 0u64;
        for step in rest {
            let LocalStep::Create {
                node,
                entry:
                    Entry {
                        content: Content::File { manifest_id, size },
                        ..
                    },
            } = step
            else {
                continue;
            };
            if *size > PREFETCH_BYTES || self.fetched_ahead(*node) {
                continue;
            }
            if !files.is_empty() && (bytes + size > PREFETCH_BYTES || files.len() >= PREFETCH_FILES)
            {
                break;
            }
            bytes += size;
            files.push((*node, *manifest_id));
        }
        let manifests = self.state.manifests(files.iter().map(|(_, m)| *m))?;
        let mut batch: Vec<(NodeId, Manifest)> = Vec::with_capacity(files.len());
        let mut ids = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (node, manifest_id) in files {
            let m = manifests
                .get(&manifest_id)
                .cloned()
                .ok_or_else(|| not_stored(&manifest_id))?;
            if let Some(p) = self.prefetch {
                // Fetched here with the others: hints of it still queued are not needed.
                p.pass(node);
            }
            ids.extend(m.chunks.iter().map(|c| c.id).filter(|id| seen.insert(*id)));
            batch.push((node, m));
        }
        let mut supplied: HashMap<ChunkId, VerifiedChunk> = match self.remote.fetch(&ids) {
            Ok(chunks) => chunks.into_iter().collect(),
            Err(e) => {
                let e = SyncError::from(e);
                if !e.is_content_fault() {
                    return Err(e);
                }
                tracing::info!(
                    "batched fetch of {} files failed ({e}); each alone",
                    batch.len()
                );
                return Ok(batch
                    .iter()
                    .map(|(node, _)| (*node, Batched::Alone))
                    .collect());
            }
        };
        let mut staged = HashMap::with_capacity(batch.len());
        for (node, m) in batch {
            let file = match materialize_from_unsynced(self.drive, &mut supplied, &m) {
                Ok(file) => Batched::Ready(file, m),
                Err(e) if e.is_content_fault() => Batched::Failed(e),
                Err(e) => return Err(e),
            };
            staged.insert(node, file);
        }
        sync_staging(self.drive)?;
        Ok(staged)
    }

    fn place_file(
        &mut self,
        node: NodeId,
        entry: &Entry,
        attrs: &RemoteAttrs,
        staged: Staged,
        manifest: &Manifest,
    ) -> Result<(), SyncError> {
        self.drive.apply_create(
            node,
            entry.parent,
            entry.name.as_str().as_bytes(),
            attrs,
            RemoteContent::File(staged.path()),
        )?;
        staged.handed_over();
        self.remember(node, manifest)
    }

    fn place_link(
        &self,
        node: NodeId,
        parent: NodeId,
        name: &[u8],
        attrs: &RemoteAttrs,
        target: &str,
    ) -> Result<(), SyncError> {
        self.drive.apply_create(
            node,
            parent,
            name,
            attrs,
            RemoteContent::Symlink(target.as_bytes()),
        )?;
        Ok(())
    }

    /// Records that the drive's file `node` now holds `manifest`.
    fn remember(&mut self, node: NodeId, manifest: &Manifest) -> Result<(), SyncError> {
        let drive_version = self.drive.node_view(node).map_or(0, |v| v.version);
        let content = LocalContent {
            drive_version,
            manifest: manifest.id(),
        };
        self.record(node, Some((content, manifest.clone())))
    }

    /// Queues a local record (`None`: forget the file), recorded with the others.
    fn record(
        &mut self,
        node: NodeId,
        content: Option<(LocalContent, Manifest)>,
    ) -> Result<(), SyncError> {
        self.placed.push((node, content));
        if self.placed.len() >= PLACED_FLUSH {
            self.flush_placed()?;
        }
        Ok(())
    }

    /// Keeps this device's version of `source` as the new node `node`.
    fn copy_aside(
        &mut self,
        source: NodeId,
        node: NodeId,
        entry: &Entry,
        local: &Tree,
    ) -> Result<(), SyncError> {
        let attrs = remote_attrs(entry);
        let name = entry.name.as_str().as_bytes();
        match local.get(source).map(|e| &e.content) {
            Some(Content::File { .. }) => {
                let staged = Staged::new(self.drive)?;
                {
                    let mut from = self.drive.open_content(source)?;
                    let mut to = crate::private::create_file(staged.path())?;
                    std::io::copy(&mut from, &mut to)?;
                    to.sync_all()?;
                }
                // The copy's manifest from its bytes: if the source changed since it was
                // planned, the copy holds the newer bytes and is pushed as such.
                let manifest = chunk_file(self.params, &std::fs::File::open(staged.path())?)?;
                self.place_file(node, entry, &attrs, staged, &manifest)?;
                self.flush_placed()?;
            }
            Some(Content::Symlink { target }) => {
                self.place_link(node, entry.parent, name, &attrs, target)?;
            }
            Some(Content::Dir) | None => {
                return Err(SyncError::Inconsistent(format!(
                    "conflicted copy of {source}, which is no file or symlink here"
                )));
            }
        }
        tracing::warn!(%source, copy = %node, name = entry.name.as_str(), "conflicted copy made");
        Ok(())
    }

    fn update_content(&mut self, node: NodeId, content: &Content) -> Result<(), SyncError> {
        match content {
            Content::File { manifest_id, .. } => {
                // Checked before fetching, so a file held open does not cost a download per
                // retry (the drive checks again, under its lock, when it replaces).
                if self.drive.node_view(node).is_some_and(|v| v.busy) {
                    return Err(DriveError::Busy.into());
                }
                // The content the file holds now (as recorded: what is queued first), and the
                // target with it.
                self.flush_placed()?;
                let base_id = self.state.locals([node])?.get(&node).map(|c| c.manifest);
                let mut read = self
                    .state
                    .manifests([*manifest_id].into_iter().chain(base_id))?;
                let target = read
                    .get(manifest_id)
                    .cloned()
                    .ok_or_else(|| not_stored(manifest_id))?;
                let base = base_id.and_then(|id| read.remove(&id));
                let staged = materialize(
                    self.drive,
                    self.remote,
                    self.prefetch,
                    node,
                    base.as_ref().map(|m| (node, m)),
                    &target,
                )?;
                self.drive.apply_content(node, staged.path(), None)?;
                staged.handed_over();
                // Recorded at once: a replaced file's old manifest must not outlive it.
                self.remember(node, &target)?;
                self.flush_placed()
            }
            Content::Symlink { target } => {
                // A link cannot be retargeted in place: the same id is removed and made again.
                let Some(v) = self.drive.node_view(node) else {
                    return Err(DriveError::NotFound.into());
                };
                let attrs = RemoteAttrs {
                    perm: v.perm,
                    mtime: v.mtime,
                    xattrs: v.xattrs,
                };
                self.drive.apply_delete(node)?;
                self.place_link(node, v.parent, &v.name, &attrs, target)?;
                Ok(())
            }
            Content::Dir => Ok(()),
        }
    }
}

fn not_stored(id: &ManifestId) -> SyncError {
    SyncError::Inconsistent(format!("manifest {id} is not stored"))
}

/// The file and the remote content a step rebuilds, if it rebuilds one.
pub(super) fn remote_content(step: &LocalStep) -> Option<(NodeId, ManifestId)> {
    match step {
        LocalStep::Create {
            node,
            entry:
                Entry {
                    content: Content::File { manifest_id, .. },
                    ..
                },
        }
        | LocalStep::UpdateContent {
            node,
            content: Content::File { manifest_id, .. },
        } => Some((*node, *manifest_id)),
        _ => None,
    }
}

/// Bytes a step brings in from the server, at most.
fn download_size(step: &LocalStep) -> u64 {
    match step {
        LocalStep::Create {
            entry:
                Entry {
                    content: Content::File { size, .. },
                    ..
                },
            ..
        }
        | LocalStep::UpdateContent {
            content: Content::File { size, .. },
            ..
        } => *size,
        _ => 0,
    }
}

fn remote_attrs(entry: &Entry) -> RemoteAttrs {
    RemoteAttrs {
        perm: entry.mode,
        mtime: entry.mtime,
        xattrs: local_xattrs(&entry.xattrs),
    }
}

/// Wire xattrs as the drive keeps them.
pub fn local_xattrs(x: &Xattrs) -> BTreeMap<Vec<u8>, Vec<u8>> {
    x.iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.0.clone()))
        .collect()
}
