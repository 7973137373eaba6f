//! The local side: each file's manifest kept up to date from the drive's recorded versions
//! (re-chunked only around what changed), and the local tree (L) built from the drive.
//!
//! L is kept from one scan to the next and updated from what changed: the inodes the drive
//! noted since the last scan ([`Drive::take_changes`]), the nodes whose synced or remote
//! entry changed (a directory shows the synced mtime; a file never taken the synced
//! content), and what the last scan could not settle (busy files, nodes left out, versions
//! not taken yet). The first scan of a run builds it whole, as does one that meets a
//! directory left out of the tree (its subtree goes with it).
//!
//! Which nodes went is read from the tree itself, with no map of inodes to node ids: a name
//! that leaves a directory makes the drive note the directory, so the nodes gone are among
//! the last tree's children of the directories noted (and below those gone with them).
//! Entries equal to the synced or remote tree's are shared with them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;

use crate::chunking::{ChunkId, ChunkRef, ChunkerParams, Manifest, rechunk_with};
use crate::drive::{Drive, Ino, Kind, NodeView, ROOT_INO, RecordedVersion};
use crate::protocol::{Name, NodeId};

use super::SyncError;
use super::plan::{Content, Entry, LocalOnly, Tree};
use super::state::{Loaded, LocalContent, LocalFile, SyncState};
use super::trees::{Skipped, entry_of, local_tree, special_name};

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

/// The local tree kept across scans, with what the next scan must look at again.
#[derive(Debug, Default)]
pub struct LocalTree {
    /// L as of the last scan.
    pub tree: Tree,
    /// Files busy as of the last scan.
    busy: HashSet<NodeId>,
    /// Nodes left out by the last scan.
    skipped: BTreeMap<NodeId, Skipped>,
    /// Directories left out by the last scan (with them, their subtrees).
    bad_dirs: HashSet<NodeId>,
    /// Inodes the next scan looks at whatever changes (busy, left out, a version not taken),
    /// with their node ids as of the last scan.
    again: HashMap<Ino, Vec<NodeId>>,
    /// Names taken by FIFOs, sockets and device nodes, which never sync, and where each is.
    local_only: LocalOnly,
    /// The place in [`LocalTree::local_only`] of each special file.
    special: HashMap<NodeId, (NodeId, Name)>,
    /// Built in full at least once in this run.
    built: bool,
}

/// What the last scan found besides the tree (kept in [`LocalTree`]).
#[derive(Debug)]
pub struct LocalScan {
    /// Files whose content cannot be replaced now (being written, or read through the kernel).
    pub busy: HashSet<NodeId>,
    /// Nodes left out of the tree.
    pub skipped: Vec<Skipped>,
    /// Names taken by FIFOs, sockets and device nodes, which never sync.
    pub local_only: LocalOnly,
    /// A recorded version could not be taken yet (a writer is still at it): look again soon.
    pub unsettled: bool,
    /// The nodes whose entry in the tree this scan may have changed (`None`: it was built
    /// whole).
    pub changed: Option<Vec<NodeId>>,
}

/// Nodes whose synced or remote entry changed since the last scan (L follows some of their
/// fields), or all of them.
#[derive(Debug)]
pub enum Touched<'a> {
    /// Every node (the remote tree was replaced).
    All,
    /// These nodes.
    Some(&'a HashSet<NodeId>),
}

/// Takes every recorded version (its manifest stored before the drive lets go of it, so a
/// crash in between loses nothing) and brings the local tree up to date. Each chunk cut
/// anew that its file did not have before goes to `cut` with its bytes.
pub fn scan(
    drive: &Drive,
    mem: &mut Loaded,
    state: &mut SyncState,
    params: ChunkerParams,
    cut: &mut NewChunks<'_>,
    local: &mut LocalTree,
    touched: Touched<'_>,
) -> Result<LocalScan, SyncError> {
    let scanned = scan_changes(drive, mem, state, params, cut, local, touched);
    if scanned.is_err() {
        // The drive's changes are taken but the tree may not show them: build it whole next.
        local.built = false;
    }
    scanned
}

/// [`scan`], which see; on error the local tree may be behind the drive.
fn scan_changes(
    drive: &Drive,
    mem: &mut Loaded,
    state: &mut SyncState,
    params: ChunkerParams,
    cut: &mut NewChunks<'_>,
    local: &mut LocalTree,
    touched: Touched<'_>,
) -> Result<LocalScan, SyncError> {
    // Taken first: a change after this is in the views below and noted for the next scan.
    let changes = drive.take_changes();
    let (Some(changed), Touched::Some(touched), true) = (changes, touched, local.built) else {
        return full_scan(drive, mem, state, params, cut, local);
    };
    let mut inos: BTreeSet<Ino> = changed.into_iter().collect();
    inos.extend(local.again.keys().copied());
    inos.extend(touched.iter().filter_map(|id| drive.ino_of(*id)));
    let inos: Vec<Ino> = inos.into_iter().collect();
    let views = drive.views_of(&inos);
    let pending = drive.pending_versions_of(&inos);
    let present: HashSet<NodeId> = views.iter().map(|v| v.id).collect();
    let before = held_before(drive, local, &inos, &views, &present);
    // The records of these files and of the names gone only, from sync.db.
    let files = views.iter().filter(|v| v.kind == Kind::File).map(|v| v.id);
    let gone = before.iter().filter(|id| !present.contains(id)).copied();
    let mut recs = state.locals(files.chain(gone))?;
    let taken = take_versions(drive, &mut recs, state, params, cut, &views, pending)?;
    let gone: Vec<NodeId> = before
        .iter()
        .filter(|id| !present.contains(id) && recs.contains_key(id))
        .copied()
        .collect();
    forget_locals(state, gone)?;
    // The new entries; a directory entering or leaving the left-out set takes its subtree
    // along, which only a whole build sees.
    let mut changes: BTreeMap<NodeId, Option<Arc<Entry>>> =
        before.iter().map(|id| (*id, None)).collect();
    let mut skipped = Vec::new();
    for v in views.iter().filter(|v| !v.kind.is_special()) {
        match entry_of(v, &|v| file_content(&recs, mem, v), &|id| {
            dir_mtime(mem, id)
        }) {
            Ok(e) => {
                let likes = [
                    mem.synced.get_shared(v.id),
                    mem.remote.tree.get_shared(v.id),
                ];
                changes.insert(v.id, Some(e.share(likes)));
            }
            Err(_) if v.kind == Kind::Dir && !local.bad_dirs.contains(&v.id) => {
                return full_scan(drive, mem, state, params, cut, local);
            }
            Err(why) => {
                changes.insert(v.id, None);
                skipped.push(why);
            }
        }
    }
    // Beneath a node left out, down to the last level.
    let parent_ok =
        |p: NodeId, changes: &BTreeMap<NodeId, Option<Arc<Entry>>>| match changes.get(&p) {
            Some(e) => e.is_some(),
            None => local.tree.exists(p),
        };
    loop {
        let beneath: Vec<(NodeId, bool)> = changes
            .iter()
            .filter_map(|(id, e)| e.as_ref().map(|e| (*id, e)))
            .filter(|(_, e)| !parent_ok(e.parent, &changes))
            .map(|(id, e)| (id, e.kind() == crate::protocol::NodeKind::Dir))
            .collect();
        if beneath.is_empty() {
            break;
        }
        for (id, is_dir) in beneath {
            if is_dir && !local.bad_dirs.contains(&id) {
                return full_scan(drive, mem, state, params, cut, local);
            }
            changes.insert(id, None);
            skipped.push(Skipped::Beneath(id));
        }
    }
    // A directory back in the tree brings its subtree back.
    if local
        .bad_dirs
        .iter()
        .any(|id| changes.get(id).is_some_and(Option::is_some))
    {
        return full_scan(drive, mem, state, params, cut, local);
    }
    let changed: Vec<NodeId> = changes.keys().copied().collect();
    if let Err(e) = local.tree.update_shared(changes) {
        // The drive's tree is valid, so this is the engine's own bookkeeping gone wrong:
        // start over from the whole drive.
        tracing::warn!("local tree update: {e}; building it whole");
        return full_scan(drive, mem, state, params, cut, local);
    }
    // Special files never enter the tree; their names, in a directory of the tree, are taken.
    for id in before.iter().chain(present.iter()) {
        if let Some(place) = local.special.remove(id) {
            local.local_only.remove(&place);
        }
    }
    for v in views.iter().filter(|v| v.kind.is_special()) {
        if let Some(name) = special_name(v)
            && local.tree.exists(v.parent)
        {
            local.local_only.insert((v.parent, name.clone()), v.id);
            local.special.insert(v.id, (v.parent, name));
        }
    }
    for id in before.iter().chain(present.iter()) {
        local.skipped.remove(id);
        local.busy.remove(id);
    }
    local.busy.extend(taken.busy.iter().copied());
    let skipped_ids: HashSet<NodeId> = skipped.iter().map(skipped_id).collect();
    local
        .skipped
        .extend(skipped.into_iter().map(|s| (skipped_id(&s), s)));
    local.again = again(&views, &skipped_ids, taken.again);
    Ok(LocalScan {
        busy: local.busy.clone(),
        skipped: local.skipped.values().cloned().collect(),
        local_only: local.local_only.clone(),
        unsettled: taken.unsettled,
        changed: Some(changed),
    })
}

/// The nodes of the last scan that may have left the drive or be among the inodes `inos`
/// (sorted), besides `present` (the nodes of their views now): those of the inodes looked
/// at again, and each of the last tree's children of a directory noted (a name that leaves
/// a directory notes it) that the drive no longer has or has in one of `inos`, down
/// through the directories gone. Special files count as children.
fn held_before(
    drive: &Drive,
    local: &LocalTree,
    inos: &[Ino],
    views: &[NodeView],
    present: &HashSet<NodeId>,
) -> HashSet<NodeId> {
    let mut before: HashSet<NodeId> = inos
        .iter()
        .filter_map(|ino| local.again.get(ino))
        .flatten()
        .copied()
        .collect();
    let mut dirs: Vec<NodeId> = views
        .iter()
        .filter(|v| v.kind == Kind::Dir)
        .map(|v| v.id)
        .collect();
    if inos.contains(&ROOT_INO) {
        dirs.push(NodeId::ROOT);
    }
    // Not present, and not somewhere the views do not cover: gone (or unlinked, still open).
    let gone = |id: NodeId| {
        !present.contains(&id)
            && drive
                .ino_of(id)
                .is_none_or(|ino| inos.binary_search(&ino).is_ok())
    };
    let mut seen: HashSet<NodeId> = HashSet::new();
    while let Some(dir) = dirs.pop() {
        if !seen.insert(dir) {
            continue;
        }
        for (_, id) in local.tree.children_of(dir) {
            if gone(id) {
                before.insert(id);
                // A directory went empty before it went, each name noted where it went:
                // the rest of its last children are gone too.
                if local.tree.is_dir(id) {
                    dirs.push(id);
                }
            }
        }
    }
    before.extend(
        local
            .special
            .iter()
            .filter(|(id, (parent, _))| seen.contains(parent) && gone(**id))
            .map(|(id, _)| *id),
    );
    before
}

/// The inodes among `views` the next scan looks at again whatever changes (busy, left out
/// as `skipped`, or a version not taken: `not_taken`), with their node ids.
fn again(
    views: &[NodeView],
    skipped: &HashSet<NodeId>,
    not_taken: Vec<Ino>,
) -> HashMap<Ino, Vec<NodeId>> {
    let inos: HashSet<Ino> = views
        .iter()
        .filter(|v| v.busy || skipped.contains(&v.id))
        .map(|v| v.ino)
        .chain(not_taken)
        .collect();
    let mut again: HashMap<Ino, Vec<NodeId>> = HashMap::new();
    for v in views.iter().filter(|v| inos.contains(&v.ino)) {
        again.entry(v.ino).or_default().push(v.id);
    }
    again
}

/// The id a [`Skipped`] names.
fn skipped_id(s: &Skipped) -> NodeId {
    match s {
        Skipped::Unsyncable(id) | Skipped::NoManifest(id) | Skipped::Beneath(id) => *id,
    }
}

/// A file's manifest id and size as last taken (`recs`), or as synced if never taken.
fn file_content(
    recs: &HashMap<NodeId, LocalFile>,
    mem: &Loaded,
    v: &NodeView,
) -> Option<(crate::chunking::ManifestId, u64)> {
    if let Some(c) = recs.get(&v.id) {
        return Some((c.manifest, c.size));
    }
    // Never taken yet but synced before: unchanged as far as the engine knows.
    match mem.synced.get(v.id).map(|e| &e.content) {
        Some(Content::File { manifest_id, size }) => Some((*manifest_id, *size)),
        _ => None,
    }
}

/// A directory's mtime as the trees show it (directory mtimes are not synced).
fn dir_mtime(mem: &Loaded, id: NodeId) -> Option<i64> {
    mem.synced
        .get(id)
        .or_else(|| mem.remote.tree.get(id))
        .map(|e| e.mtime)
}

/// Forgets the manifests of files that are gone.
fn forget_locals(state: &mut SyncState, gone: Vec<NodeId>) -> Result<(), SyncError> {
    let rows: Vec<(NodeId, Option<(LocalContent, &Manifest)>)> =
        gone.iter().map(|id| (*id, None)).collect();
    state.save_locals(&rows)
}

/// The whole drive's scan: every node looked at, L built anew.
fn full_scan(
    drive: &Drive,
    mem: &mut Loaded,
    state: &mut SyncState,
    params: ChunkerParams,
    cut: &mut NewChunks<'_>,
    local: &mut LocalTree,
) -> Result<LocalScan, SyncError> {
    let views = drive.view();
    let pending = drive.pending_versions();
    // Every record, for this scan only.
    let mut recs = state.all_locals()?;
    let taken = take_versions(drive, &mut recs, state, params, cut, &views, pending)?;
    let present: HashSet<NodeId> = views.iter().map(|v| v.id).collect();
    let gone: Vec<NodeId> = recs
        .keys()
        .filter(|id| !present.contains(id))
        .copied()
        .collect();
    forget_locals(state, gone)?;
    let (tree, skipped, local_only) = local_tree(
        &views,
        |v| file_content(&recs, mem, v),
        |id| dir_mtime(mem, id),
        &[&mem.synced, &mem.remote.tree],
    )
    .map_err(|e| SyncError::Inconsistent(format!("local tree: {e}")))?;
    local.special = local_only
        .iter()
        .map(|(place, id)| (*id, place.clone()))
        .collect();
    local.local_only = local_only;
    let skipped_ids: HashSet<NodeId> = skipped.iter().map(skipped_id).collect();
    local.tree = tree;
    local.busy = taken.busy.clone();
    local.skipped = skipped.iter().map(|s| (skipped_id(s), s.clone())).collect();
    local.bad_dirs = views
        .iter()
        .filter(|v| v.kind == Kind::Dir && skipped_ids.contains(&v.id))
        .map(|v| v.id)
        .collect();
    local.again = again(&views, &skipped_ids, taken.again);
    local.built = true;
    Ok(LocalScan {
        busy: taken.busy,
        skipped,
        local_only: local.local_only.clone(),
        unsettled: taken.unsettled,
        changed: None,
    })
}

/// What taking the recorded versions of some files found.
struct Versions {
    /// Busy files among them.
    busy: HashSet<NodeId>,
    /// A version could not be taken yet.
    unsettled: bool,
    /// Inodes to look at again: a version not taken, or not looked at because busy.
    again: Vec<Ino>,
}

/// Takes the recorded versions `pending` of the files among `views`, and chunks whole the
/// files the engine never took (manifests stored in one transaction before the drive lets
/// go of any version). `recs` holds the records of the files among `views` and gets the
/// new ones. (A version stored but not handed over stays stored: the next scan re-chunks
/// from it, as it would after a crash; its ranges cover every write since.)
fn take_versions(
    drive: &Drive,
    recs: &mut HashMap<NodeId, LocalFile>,
    state: &mut SyncState,
    params: ChunkerParams,
    cut: &mut NewChunks<'_>,
    views: &[NodeView],
    pending: Vec<RecordedVersion>,
) -> Result<Versions, SyncError> {
    let pending: HashMap<Ino, RecordedVersion> = pending.into_iter().map(|v| (v.ino, v)).collect();
    let mut busy = HashSet::new();
    let mut unsettled = false;
    let mut again = Vec::new();
    // The names of each file inode: every name of a hard-linked inode syncs as a file of
    // its own with the inode's content, so a version taken moves every name's manifest.
    let mut inodes: BTreeMap<Ino, Vec<&NodeView>> = BTreeMap::new();
    for v in views.iter().filter(|v| v.kind == Kind::File) {
        if v.busy {
            busy.insert(v.id);
        }
        inodes.entry(v.ino).or_default().push(v);
    }
    // The manifests taken before of the files with something to take (a recorded version,
    // a name never taken), read in one batch.
    let before: Vec<_> = inodes
        .iter()
        .filter(|(ino, names)| {
            pending.contains_key(ino) || names.iter().any(|v| !recs.contains_key(&v.id))
        })
        .flat_map(|(_, names)| names.iter().filter_map(|v| recs.get(&v.id)))
        .map(|c| c.manifest)
        .collect();
    let before = state.manifests(before)?;
    // Manifests of recorded versions and of files never taken, stored in one transaction
    // before the drive lets go of any version.
    let mut taken: Vec<Taken> = Vec::new();
    for (ino, names) in inodes {
        let Some(first) = names.first() else {
            continue;
        };
        let known = names.iter().find_map(|v| {
            let c = recs.get(&v.id)?;
            Some((*c, before.get(&c.manifest)?))
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
                .filter(|v| !recs.contains_key(&v.id))
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
                None => {
                    again.push(ino);
                    continue;
                }
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
            again.push(t.ino);
            continue;
        }
        let file = LocalFile {
            manifest: t.content.manifest,
            size: t.manifest.size(),
        };
        for id in t.ids {
            recs.insert(id, file);
        }
    }
    Ok(Versions {
        busy,
        unsettled,
        again,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drive::{Caller, OpenMode, ROOT_INO, RenameMode, StateDir, XattrFlags};
    use crate::sync::SyncState;

    const ME: Caller = Caller { uid: 0, gid: 0 };
    const WRITE: OpenMode = OpenMode {
        writable: true,
        passthrough_available: false,
    };

    /// A small deterministic generator (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n.max(1)
        }
    }

    /// A name in the drive: its directory, the name, its inode and kind.
    type Named = (Ino, Vec<u8>, Ino, Kind);

    /// The directories and the names of the drive, from its views.
    fn dirs_and_names(drive: &Drive) -> (Vec<Ino>, Vec<Named>) {
        let views = drive.view();
        let ino_of: HashMap<NodeId, Ino> = views.iter().map(|v| (v.id, v.ino)).collect();
        let mut dirs = vec![ROOT_INO];
        let mut names = Vec::new();
        for v in &views {
            if v.kind == Kind::Dir {
                dirs.push(v.ino);
            }
            let parent = ino_of.get(&v.parent).copied().unwrap_or(ROOT_INO);
            names.push((parent, v.name.clone(), v.ino, v.kind));
        }
        (dirs, names)
    }

    /// One random change to the drive (failures, such as a rename into itself, are fine:
    /// the drive refuses them and nothing changes). Returns a handle left open, if any.
    fn random_change(drive: &Drive, rng: &mut Rng, open: &mut Vec<u64>) {
        let (dirs, names) = dirs_and_names(drive);
        let dir = dirs[rng.below(dirs.len())];
        let pick = if names.is_empty() {
            None
        } else {
            Some(names[rng.below(names.len())].clone())
        };
        let name: Vec<u8> = match rng.below(12) {
            // A name that cannot be synced.
            0 => b"caf\xe9".to_vec(),
            n => format!("n{n}-{}", rng.below(6)).into_bytes(),
        };
        match rng.below(12) {
            0 | 1 => {
                let _ = drive.mkdir(dir, &name, 0o755, ME);
            }
            11 => {
                // A FIFO: never in the tree, but its name is taken.
                let _ = drive.mknod(dir, &name, libc::S_IFIFO | 0o644, 0, ME);
            }
            2 | 3 => {
                if let Ok((_, fh)) = drive.create(dir, &name, 0o644, ME) {
                    let _ = drive.write(fh, 0, &name, false);
                    if rng.below(4) == 0 {
                        open.push(fh);
                    } else {
                        let _ = drive.release(fh);
                    }
                }
            }
            4 | 5 => {
                if let Some((parent, old, _, _)) = pick {
                    let _ = drive.rename(parent, &old, dir, &name, RenameMode::Replace);
                }
            }
            6 => {
                if let Some((parent, old, _, kind)) = pick {
                    let _ = match kind {
                        Kind::Dir => drive.rmdir(parent, &old),
                        _ => drive.unlink(parent, &old),
                    };
                }
            }
            7 => {
                if let Some((_, _, ino, Kind::File)) = pick {
                    let _ = drive.link(ino, dir, &name);
                }
            }
            8 => {
                if let Some((_, _, ino, _)) = pick {
                    let _ = drive.setxattr(ino, b"user.k", &name, XattrFlags::Any);
                }
            }
            9 => {
                if let Some((_, _, ino, Kind::File)) = pick
                    && let Ok(o) = drive.open_file(ino, WRITE)
                {
                    // Written and closed, or held open untouched (busy, with nothing to
                    // record when it closes).
                    if rng.below(2) == 0 {
                        let _ = drive.write(o.fh, 3, b"more", false);
                        let _ = drive.release(o.fh);
                    } else {
                        open.push(o.fh);
                    }
                }
            }
            _ => {
                if !open.is_empty() {
                    let fh = open.remove(rng.below(open.len()));
                    let _ = drive.release(fh);
                }
            }
        }
    }

    /// A fresh drive and sync state (the directory holding both comes first: keep it).
    fn fixture() -> (tempfile::TempDir, Drive, SyncState, Loaded) {
        let dir = tempfile::tempdir().expect("temp dir");
        let drive = Drive::open(StateDir::new(&dir.path().join("drive")).expect("state"), ME)
            .expect("drive");
        let state = SyncState::open(&dir.path().join("sync.db")).expect("sync.db");
        let mem = state.load().expect("load");
        (dir, drive, state, mem)
    }

    /// The local tree built whole, as the first scan of a run builds it.
    fn built_whole(
        drive: &Drive,
        mem: &mut Loaded,
        state: &mut SyncState,
    ) -> (LocalTree, LocalScan) {
        let mut whole = LocalTree::default();
        let scan = full_scan(
            drive,
            mem,
            state,
            ChunkerParams::default(),
            &mut |_, _, _, _| {},
            &mut whole,
        )
        .expect("whole scan");
        (whole, scan)
    }

    #[test]
    fn a_subtree_removed_between_scans_leaves_the_kept_tree_and_entries_are_shared() {
        let (_dir, drive, mut state, mut mem) = fixture();
        let params = ChunkerParams::default();
        let a = drive.mkdir(ROOT_INO, b"a", 0o755, ME).expect("mkdir a").ino;
        let b = drive.mkdir(a, b"b", 0o755, ME).expect("mkdir b").ino;
        for (parent, name) in [(a, &b"f1"[..]), (b, b"f2"), (ROOT_INO, b"g")] {
            let (_, fh) = drive.create(parent, name, 0o644, ME).expect("create");
            drive.write(fh, 0, b"data", false).expect("write");
            drive.release(fh).expect("release");
        }
        drive
            .mknod(b, b"p", libc::S_IFIFO | 0o644, 0, ME)
            .expect("fifo");
        let mut kept = LocalTree::default();
        let none = HashSet::new();
        let scan_kept = |mem: &mut Loaded, state: &mut SyncState, kept: &mut LocalTree| {
            scan(
                &drive,
                mem,
                state,
                params,
                &mut |_, _, _, _| {},
                kept,
                Touched::Some(&none),
            )
            .expect("scan")
        };
        scan_kept(&mut mem, &mut state, &mut kept);
        assert_eq!(kept.tree.len(), 5);
        assert_eq!(kept.local_only.len(), 1);
        // Synced as it is: the local tree's entries are the synced tree's from now on.
        mem.synced = kept.tree.clone();
        let g = drive
            .view()
            .into_iter()
            .find(|v| v.name == b"g")
            .expect("g");
        // `rm -r a`, and an xattr set and removed again on g: g ends as it was.
        drive.unlink(b, b"f2").expect("unlink f2");
        drive.unlink(b, b"p").expect("unlink fifo");
        drive.rmdir(a, b"b").expect("rmdir b");
        drive.unlink(a, b"f1").expect("unlink f1");
        drive.rmdir(ROOT_INO, b"a").expect("rmdir a");
        drive
            .setxattr(g.ino, b"user.k", b"v", XattrFlags::Any)
            .expect("setxattr");
        drive.removexattr(g.ino, b"user.k").expect("removexattr");
        let got = scan_kept(&mut mem, &mut state, &mut kept);
        assert!(got.changed.is_some(), "an incremental scan");
        assert_eq!(kept.tree.len(), 1);
        assert!(kept.local_only.is_empty() && kept.special.is_empty());
        assert_eq!(
            state.all_locals().expect("records").len(),
            1,
            "the removed files' records are forgotten"
        );
        let (whole, _) = built_whole(&drive, &mut mem, &mut state);
        assert_eq!(kept.tree, whole.tree);
        let synced_g = mem.synced.get_shared(g.id).expect("synced g");
        for t in [&kept.tree, &whole.tree] {
            assert!(
                Arc::ptr_eq(t.get_shared(g.id).expect("g"), synced_g),
                "an entry equal to the synced tree's is that one"
            );
        }
    }

    #[test]
    fn the_local_tree_kept_across_scans_equals_one_built_whole() {
        for seed in 1..=6u64 {
            let (_dir, drive, mut state, mut mem) = fixture();
            let params = ChunkerParams::default();
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let mut kept = LocalTree::default();
            let mut open = Vec::new();
            let mut incremental = 0;
            for round in 0..40 {
                for _ in 0..1 + rng.below(6) {
                    random_change(&drive, &mut rng, &mut open);
                }
                let none = HashSet::new();
                let got = scan(
                    &drive,
                    &mut mem,
                    &mut state,
                    params,
                    &mut |_, _, _, _| {},
                    &mut kept,
                    Touched::Some(&none),
                )
                .expect("scan");
                incremental += usize::from(got.changed.is_some());
                let (whole, want) = built_whole(&drive, &mut mem, &mut state);
                assert_eq!(kept.tree, whole.tree, "seed {seed} round {round}: tree");
                assert_eq!(got.busy, want.busy, "seed {seed} round {round}: busy");
                assert_eq!(
                    got.local_only, want.local_only,
                    "seed {seed} round {round}: local-only names"
                );
                let set = |s: &[Skipped]| s.iter().map(skipped_id).collect::<BTreeSet<_>>();
                assert_eq!(
                    set(&got.skipped),
                    set(&want.skipped),
                    "seed {seed} round {round}: left out"
                );
            }
            assert!(
                incremental > 10,
                "seed {seed}: {incremental} scans were incremental"
            );
        }
    }
}
