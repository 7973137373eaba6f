//! Building the planner's local tree (what the mount shows) from the drive's nodes.
//!
//! The wire format names things in UTF-8; a node whose name, symlink target or xattr name is
//! not UTF-8 cannot be synced, and neither can a file whose current content has no manifest
//! yet (its version is still being written): those are left out of this round, with their
//! subtrees, and reported so the engine can say why.
//!
//! FIFOs, sockets and device nodes never sync (they mean nothing on another machine): they
//! are not in the tree, but their names are handed to the planner as taken on this side.

use std::collections::{HashMap, HashSet};

use crate::chunking::ManifestId;
use crate::drive::{Kind, NodeView};
use crate::protocol::{Name, NodeId, XattrValue, Xattrs};

use super::plan::{Content, Entry, LocalOnly, Tree, TreeError};

/// Why a local node is not in the local tree this round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skipped {
    /// Its name, target or an xattr name is not valid on the wire.
    Unsyncable(NodeId),
    /// A file whose current content has no manifest yet.
    NoManifest(NodeId),
    /// Below a skipped directory.
    Beneath(NodeId),
}

/// The local tree of `views`, with `file_content` giving each file's manifest id and size as
/// last taken, and `dir_mtime` the mtime to show for a directory (directory mtimes follow
/// the synced tree: they change with every entry and are not synced, as with Dropbox).
/// Each entry equal to one of `likes` is shared with it ([`Entry::share`]).
/// Also the names special files take (those a remote node could clash with).
pub fn local_tree(
    views: &[NodeView],
    file_content: impl Fn(&NodeView) -> Option<(ManifestId, u64)>,
    dir_mtime: impl Fn(NodeId) -> Option<i64>,
    likes: &[&Tree],
) -> Result<(Tree, Vec<Skipped>, LocalOnly), TreeError> {
    let mut skipped = Vec::new();
    let mut bad: HashSet<NodeId> = HashSet::new();
    let mut entries = Vec::with_capacity(views.len());
    let mut special = Vec::new();
    for v in views {
        if v.kind.is_special() {
            if let Some(name) = special_name(v) {
                special.push((v.id, v.parent, name));
            }
            continue;
        }
        match entry_of(v, &file_content, &dir_mtime) {
            Ok(entry) => {
                entries.push((v.id, entry.share(likes.iter().map(|t| t.get_shared(v.id)))))
            }
            Err(why) => {
                bad.insert(v.id);
                skipped.push(why);
            }
        }
    }
    // Leave out everything beneath a node that is left out.
    let parent_of: HashMap<NodeId, NodeId> = views.iter().map(|v| (v.id, v.parent)).collect();
    let beneath_bad = |mut id: NodeId| {
        while let Some(&p) = parent_of.get(&id) {
            if bad.contains(&p) {
                return true;
            }
            id = p;
        }
        false
    };
    let (kept, dropped): (Vec<_>, Vec<_>) =
        entries.into_iter().partition(|(id, _)| !beneath_bad(*id));
    skipped.extend(dropped.into_iter().map(|(id, _)| Skipped::Beneath(id)));
    let tree = Tree::from_shared(kept)?;
    // Beneath a directory left out, nothing remote can reach the name.
    let local_only: LocalOnly = special
        .into_iter()
        .filter(|(_, parent, _)| tree.exists(*parent))
        .map(|(id, parent, name)| ((parent, name), id))
        .collect();
    Ok((tree, skipped, local_only))
}

/// The name a special file takes from the planner, if any: a name that is not valid on the
/// wire cannot clash with a remote one.
pub(crate) fn special_name(v: &NodeView) -> Option<Name> {
    String::from_utf8(v.name.clone())
        .ok()
        .and_then(|n| Name::new(n).ok())
}

/// The entry of one node, or why it is left out (not counting what is above it).
pub(crate) fn entry_of(
    v: &NodeView,
    file_content: &impl Fn(&NodeView) -> Option<(ManifestId, u64)>,
    dir_mtime: &impl Fn(NodeId) -> Option<i64>,
) -> Result<Entry, Skipped> {
    let unsyncable = || Skipped::Unsyncable(v.id);
    let name = String::from_utf8(v.name.clone())
        .ok()
        .and_then(|n| Name::new(n).ok())
        .ok_or_else(unsyncable)?;
    let mut xattrs = Xattrs::new();
    for (k, value) in &v.xattrs {
        let k = String::from_utf8(k.clone()).map_err(|_| unsyncable())?;
        xattrs.insert(k, XattrValue(value.clone()));
    }
    let content = match v.kind {
        Kind::Dir => Content::Dir,
        Kind::Symlink => Content::Symlink {
            target: String::from_utf8(v.target.clone()).map_err(|_| unsyncable())?,
        },
        Kind::File => {
            let (manifest_id, size) = file_content(v).ok_or(Skipped::NoManifest(v.id))?;
            Content::File { manifest_id, size }
        }
        // Sorted out by the caller; never an entry.
        Kind::Fifo | Kind::Socket | Kind::CharDevice | Kind::BlockDevice => {
            return Err(unsyncable());
        }
    };
    let mtime = match v.kind {
        Kind::Dir => dir_mtime(v.id).unwrap_or(v.mtime),
        _ => v.mtime,
    };
    Ok(Entry {
        parent: v.parent,
        name,
        mode: v.perm,
        mtime,
        xattrs,
        content,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::chunking::{ChunkerParams, chunk_bytes};

    fn view(id: NodeId, parent: NodeId, name: &[u8], kind: Kind, size: u64) -> NodeView {
        NodeView {
            ino: 0,
            id,
            parent,
            name: name.to_vec(),
            kind,
            perm: 0o644,
            mtime: 7,
            xattrs: BTreeMap::new(),
            size,
            target: b"t".to_vec(),
            version: 1,
            busy: false,
        }
    }

    #[test]
    fn files_dirs_and_symlinks_become_entries_and_bad_names_are_left_out_with_their_subtrees() {
        let data = b"hello, world";
        let m = chunk_bytes(ChunkerParams::default(), data);
        let (fifo, sock, dev) = (NodeId::random(), NodeId::random(), NodeId::random());
        let (d, f, l, bad, under, nomf) = (
            NodeId::random(),
            NodeId::random(),
            NodeId::random(),
            NodeId::random(),
            NodeId::random(),
            NodeId::random(),
        );
        let views = vec![
            view(d, NodeId::ROOT, b"docs", Kind::Dir, 4096),
            view(f, d, b"a.txt", Kind::File, data.len() as u64),
            view(l, NodeId::ROOT, b"link", Kind::Symlink, 1),
            view(bad, NodeId::ROOT, b"caf\xe9", Kind::Dir, 4096),
            view(under, bad, b"x", Kind::File, data.len() as u64),
            view(nomf, d, b"new.txt", Kind::File, 3),
            view(fifo, d, b"pipe", Kind::Fifo, 0),
            view(sock, NodeId::ROOT, b"sock", Kind::Socket, 0),
            view(dev, bad, b"null", Kind::CharDevice, 0),
        ];
        let (tree, skipped, local_only) = local_tree(
            &views,
            |v| (v.id == f || v.id == under).then(|| (m.id(), m.size())),
            |_| Some(99),
            &[],
        )
        .unwrap();
        assert_eq!(
            tree.get(d).unwrap().mtime,
            99,
            "directory mtimes come from the caller"
        );
        assert_eq!(tree.get(f).unwrap().mtime, 7);
        assert_eq!(tree.len(), 3);
        assert_eq!(
            tree.get(f).unwrap().content,
            Content::File {
                manifest_id: m.id(),
                size: data.len() as u64
            }
        );
        assert_eq!(
            tree.get(l).unwrap().content,
            Content::Symlink { target: "t".into() }
        );
        assert_eq!(tree.path_of(f).as_deref(), Some("/docs/a.txt"));
        assert!(skipped.contains(&Skipped::Unsyncable(bad)));
        assert!(skipped.contains(&Skipped::Beneath(under)));
        assert!(skipped.contains(&Skipped::NoManifest(nomf)));
        assert!(
            tree.get(fifo).is_none() && tree.get(sock).is_none(),
            "special files never sync"
        );
        let names: Vec<(NodeId, &str, NodeId)> = local_only
            .iter()
            .map(|((p, n), id)| (*p, n.as_str(), *id))
            .collect();
        assert_eq!(
            names.len(),
            2,
            "the one beneath a left-out directory cannot clash"
        );
        assert!(names.contains(&(d, "pipe", fifo)));
        assert!(names.contains(&(NodeId::ROOT, "sock", sock)));
    }
}
