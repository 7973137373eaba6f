//! The local side: each file's manifest kept up to date from the drive's recorded versions
//! (re-chunked only around what changed), and the local tree (L) built from the drive.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;

use crate::chunking::{ChunkId, ChunkRef, ChunkerParams, Manifest, rechunk_with};
use crate::drive::{Drive, Ino, Kind, NodeView, RecordedVersion};
use crate::protocol::NodeId;

use super::SyncError;
use super::plan::{Content, LocalOnly, Tree};
use super::state::{Loaded, LocalContent, SyncState};
use super::trees::{Skipped, local_tree};

/// The manifest of file `node` at its recorded version `version`, given `prev`, the manifest
/// of the content before the version's changed ranges. `None` if the file changed again
/// meanwhile (or a writer is open): try again once it settles. On `Some`, the drive has
/// handed the version over.
pub fn take_version(
    drive: &Drive,
    node: NodeId,
    version: &RecordedVersion,
    prev: &Manifest,
    params: ChunkerParams,
) -> Result<Option<Manifest>, SyncError> {
    let manifest = manifest_of_version(drive, node, version, prev, params, &mut |_, _, _| {})?;
    // Only if nothing was written while we read does the manifest describe this version.
    if drive.take_pending_if(version.ino, version.number)? {
        Ok(Some(manifest))
    } else {
        Ok(None)
    }
}

/// A sink for the chunks a scan cuts anew: the file, the chunk's offset in it, the chunk and
/// its bytes.
pub type NewChunks<'a> = dyn FnMut(NodeId, u64, ChunkRef, &[u8]) + 'a;

/// A sink for the chunks cut anew in one file: offset, chunk, bytes.
type FileChunks<'a> = dyn FnMut(u64, ChunkRef, &[u8]) + 'a;

fn manifest_of_version(
    drive: &Drive,
    node: NodeId,
    version: &RecordedVersion,
    prev: &Manifest,
    params: ChunkerParams,
    cut: &mut FileChunks<'_>,
) -> Result<Manifest, SyncError> {
    let file = drive.open_content(node)?;
    let len = file.metadata()?.len();
    let dirty: Vec<Range<u64>> = version.ranges.ranges().iter().map(|&(s, e)| s..e).collect();
    Ok(rechunk_with(params, prev, &file, len, &dirty, cut)?)
}

/// A whole file's manifest, cut from its first byte.
fn manifest_of_file(
    drive: &Drive,
    node: NodeId,
    params: ChunkerParams,
    cut: &mut FileChunks<'_>,
) -> Result<Manifest, SyncError> {
    let file = drive.open_content(node)?;
    let len = file.metadata()?.len();
    Ok(rechunk_with(
        params,
        &Manifest::default(),
        &file,
        len,
        std::slice::from_ref(&(0..len)),
        cut,
    )?)
}

/// A manifest taken for the names `ids` of inode `ino` (at its recorded version `number`).
struct Taken {
    ino: Ino,
    number: Option<u64>,
    ids: Vec<NodeId>,
    content: LocalContent,
    manifest: Manifest,
}

/// The local tree as of now.
#[derive(Debug)]
pub struct LocalScan {
    /// The local tree (L).
    pub tree: Tree,
    /// Files whose content cannot be replaced now (being written, or read through the kernel).
    pub busy: HashSet<NodeId>,
    /// Nodes left out of the tree.
    pub skipped: Vec<Skipped>,
    /// Names taken by FIFOs, sockets and device nodes, which never sync.
    pub local_only: LocalOnly,
    /// A recorded version could not be taken yet (a writer is still at it): look again soon.
    pub unsettled: bool,
}

/// Takes every recorded version (its manifest stored before the drive lets go of it, so a
/// crash in between loses nothing) and builds the local tree. Each chunk cut anew that its
/// file did not have before goes to `cut` with its bytes.
pub fn scan(
    drive: &Drive,
    mem: &mut Loaded,
    state: &mut SyncState,
    params: ChunkerParams,
    cut: &mut NewChunks<'_>,
) -> Result<LocalScan, SyncError> {
    let views = drive.view();
    let pending: HashMap<Ino, RecordedVersion> = drive
        .pending_versions()
        .into_iter()
        .map(|v| (v.ino, v))
        .collect();
    let mut busy = HashSet::new();
    let mut unsettled = false;
    // The names of each file inode: every name of a hard-linked inode syncs as a file of
    // its own with the inode's content, so a version taken moves every name's manifest.
    let mut inodes: BTreeMap<Ino, Vec<&NodeView>> = BTreeMap::new();
    for v in views.iter().filter(|v| v.kind == Kind::File) {
        if v.busy {
            busy.insert(v.id);
        }
        inodes.entry(v.ino).or_default().push(v);
    }
    // Manifests of recorded versions and of files never taken, stored in one transaction
    // before the drive lets go of any version.
    let mut taken: Vec<Taken> = Vec::new();
    for (ino, names) in inodes {
        let Some(first) = names.first() else {
            continue;
        };
        let known = names.iter().find_map(|v| {
            let c = mem.local.get(&v.id)?;
            Some((*c, mem.manifests.get(&c.manifest)?))
        });
        let pending_version = pending.get(&ino);
        let (ids, m) = if let Some(p) = pending_version {
            let ids: Vec<NodeId> = names.iter().map(|v| v.id).collect();
            let m = match known {
                Some((_, prev)) => {
                    // Chunks the file had before are not new, even where they were cut again
                    // (the tail after an insert): only the others go to `cut`.
                    let had: HashSet<ChunkId> = prev.chunks.iter().map(|c| c.id).collect();
                    manifest_of_version(drive, first.id, p, prev, params, &mut |at, c, bytes| {
                        if !had.contains(&c.id) {
                            cut(first.id, at, c, bytes);
                        }
                    })
                }
                // No name's earlier content is known (a new file): its ranges are relative
                // to nothing, so the whole file is cut.
                None => manifest_of_file(drive, first.id, params, &mut |at, c, bytes| {
                    cut(first.id, at, c, bytes)
                }),
            };
            (ids, m)
        } else {
            let unknown: Vec<NodeId> = names
                .iter()
                .filter(|v| !mem.local.contains_key(&v.id))
                .map(|v| v.id)
                .collect();
            if unknown.is_empty() {
                continue;
            }
            match known {
                // A new name of a file taken before (a hard link): the same content.
                Some((_, m)) => (unknown, Ok(m.clone())),
                // A file the engine never saw a version of (created empty, or from before the
                // drive was synced, or placed just before a crash): chunk it whole.
                None if !first.busy => (
                    unknown,
                    manifest_of_file(drive, first.id, params, &mut |at, c, bytes| {
                        cut(first.id, at, c, bytes)
                    }),
                ),
                None => continue,
            }
        };
        let m = match m {
            Ok(m) => m,
            // Deleted meanwhile: the next scan does not see it.
            Err(SyncError::Drive(crate::drive::DriveError::NotFound)) => continue,
            Err(e) => return Err(e),
        };
        let content = LocalContent {
            drive_version: pending_version.map_or(first.version, |p| p.number),
            manifest: m.id(),
        };
        taken.push(Taken {
            ino,
            number: pending_version.map(|p| p.number),
            ids,
            content,
            manifest: m,
        });
    }
    let rows: Vec<(NodeId, Option<(LocalContent, &Manifest)>)> = taken
        .iter()
        .flat_map(|t| t.ids.iter().map(|id| (*id, Some((t.content, &t.manifest)))))
        .collect();
    // Stored first: the ranges of a later version are relative to this content.
    state.save_locals(&rows)?;
    for t in taken {
        if let Some(number) = t.number
            && !drive.take_pending_if(t.ino, number)?
        {
            unsettled = true;
            continue;
        }
        for id in t.ids {
            mem.local.insert(id, t.content);
        }
        mem.manifests.insert(t.manifest.id(), t.manifest);
    }
    // Forget the manifests of files that are gone.
    let present: HashSet<NodeId> = views.iter().map(|v| v.id).collect();
    let gone: Vec<NodeId> = mem
        .local
        .keys()
        .filter(|id| !present.contains(id))
        .copied()
        .collect();
    let rows: Vec<(NodeId, Option<(LocalContent, &Manifest)>)> =
        gone.iter().map(|id| (*id, None)).collect();
    state.save_locals(&rows)?;
    for id in gone {
        mem.local.remove(&id);
    }
    let (tree, skipped, local_only) = local_tree(
        &views,
        |v| {
            if let Some(c) = mem.local.get(&v.id)
                && let Some(m) = mem.manifests.get(&c.manifest)
            {
                return Some((c.manifest, m.size()));
            }
            // Never taken yet but synced before: unchanged as far as the engine knows.
            match mem.synced.get(v.id).map(|e| &e.content) {
                Some(Content::File { manifest_id, size }) => Some((*manifest_id, *size)),
                _ => None,
            }
        },
        |id| {
            mem.synced
                .get(id)
                .or_else(|| mem.remote.tree.get(id))
                .map(|e| e.mtime)
        },
    )
    .map_err(|e| SyncError::Inconsistent(format!("local tree: {e}")))?;
    Ok(LocalScan {
        tree,
        busy,
        skipped,
        local_only,
        unsettled,
    })
}
