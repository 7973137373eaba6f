//! The remote tree follows the server: built from a snapshot, then moved forward change by
//! change, exactly as the server applied each transaction.

use std::collections::{BTreeSet, HashMap};

use crate::chunking::{Manifest, ManifestId};
use crate::protocol::{NodeKind, NodeRecord, Op, Seq};

use super::SyncError;
use super::plan::{Content, Entry, Tree};
use super::state::{RemoteTree, Row};

impl RemoteTree {
    /// The tree of a snapshot (the caller stores the manifests it names).
    pub fn from_snapshot(nodes: &[NodeRecord]) -> Result<RemoteTree, SyncError> {
        let mut entries = Vec::with_capacity(nodes.len());
        let mut versions = HashMap::with_capacity(nodes.len());
        for n in nodes {
            let (Some(parent), Some(name)) = (n.parent, n.name.clone()) else {
                continue; // the root
            };
            let content = content_of(n.kind, n.manifest.as_ref(), n.target.as_deref())
                .ok_or_else(|| bad(format!("snapshot node {} lacks its content", n.node)))?;
            entries.push((
                n.node,
                Entry {
                    parent,
                    name,
                    mode: n.mode,
                    mtime: n.mtime,
                    xattrs: n.xattrs.clone(),
                    content,
                },
            ));
            versions.insert(n.node, n.version);
        }
        let tree =
            Tree::from_entries(entries).map_err(|e| bad(format!("snapshot is not a tree: {e}")))?;
        Ok(RemoteTree { tree, versions })
    }

    /// The manifests [`RemoteTree::apply`] needs in `manifests` to apply `ops`: the current
    /// content of each file they write (read in one batch before applying).
    pub fn write_bases(&self, ops: &[Op]) -> Vec<ManifestId> {
        ops.iter()
            .filter_map(|op| match op {
                Op::Write(w) => match self.tree.get(w.node).map(|e| &e.content) {
                    Some(Content::File { manifest_id, .. }) => Some(*manifest_id),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    /// Applies one committed transaction; returns the rows it changed, for the state.
    /// `manifests` holds the bases of its writes ([`RemoteTree::write_bases`]); the manifests
    /// it creates and writes are added to it, to be stored with the rows.
    pub fn apply(
        &mut self,
        seq: Seq,
        ops: &[Op],
        manifests: &mut HashMap<ManifestId, Manifest>,
    ) -> Result<Vec<Row>, SyncError> {
        let mut touched = BTreeSet::new();
        for op in ops {
            let node = op.node();
            touched.insert(node);
            let wrong = |e: super::plan::TreeError| bad(format!("change {}: {e}", seq.0));
            match op {
                Op::Create(c) => {
                    let content = content_of(c.kind, c.manifest.as_ref(), c.target.as_deref())
                        .ok_or_else(|| bad(format!("create of {node} lacks its content")))?;
                    if let (Some(m), Content::File { manifest_id, .. }) = (&c.manifest, &content) {
                        manifests.entry(*manifest_id).or_insert_with(|| m.clone());
                    }
                    let entry = Entry {
                        parent: c.parent,
                        name: c.name.clone(),
                        mode: c.mode,
                        mtime: c.mtime,
                        xattrs: c.xattrs.clone(),
                        content,
                    };
                    self.tree.insert(node, entry).map_err(wrong)?;
                }
                Op::Write(w) => {
                    let base = match self.tree.get(node).map(|e| &e.content) {
                        Some(Content::File { manifest_id, .. }) => manifests
                            .get(manifest_id)
                            .cloned()
                            .ok_or_else(|| bad(format!("manifest of {node} is not stored")))?,
                        _ => return Err(bad(format!("write to {node}, not a file here"))),
                    };
                    let new = w.edit.apply(&base)?;
                    if new.id() != w.manifest_id {
                        return Err(bad(format!("write to {node} does not give its manifest")));
                    }
                    let content = Content::File {
                        manifest_id: w.manifest_id,
                        size: new.size(),
                    };
                    manifests.insert(w.manifest_id, new);
                    self.tree.set_content(node, content).map_err(wrong)?;
                }
                Op::SetAttrs(a) => self
                    .tree
                    .set_attrs(node, a.mode, a.mtime, a.xattrs.clone())
                    .map_err(wrong)?,
                Op::Move(m) => self
                    .tree
                    .move_node(node, m.new_parent, m.new_name.clone())
                    .map_err(wrong)?,
                Op::Delete(_) => {
                    self.tree.remove(node).map_err(wrong)?;
                }
            }
            self.versions.insert(node, seq);
        }
        Ok(touched
            .into_iter()
            .map(|id| match self.tree.get(id) {
                Some(e) => Row::Put(id, e.clone(), Some(seq)),
                None => {
                    self.versions.remove(&id);
                    Row::Gone(id)
                }
            })
            .collect())
    }
}

/// The content of a node of `kind`.
fn content_of(
    kind: NodeKind,
    manifest: Option<&Manifest>,
    target: Option<&str>,
) -> Option<Content> {
    Some(match kind {
        NodeKind::Dir => Content::Dir,
        NodeKind::Symlink => Content::Symlink {
            target: target?.to_string(),
        },
        NodeKind::File => {
            let m = manifest?;
            Content::File {
                manifest_id: m.id(),
                size: m.size(),
            }
        }
    })
}

fn bad(msg: String) -> SyncError {
    SyncError::Inconsistent(msg)
}

/// The rows that take stored tree `old` to `new`.
pub fn tree_rows(old: &Tree, new: &Tree) -> Vec<Row> {
    let mut rows: Vec<Row> = new
        .iter()
        .filter(|(id, e)| old.get(*id) != Some(*e))
        .map(|(id, e)| Row::Put(id, e.clone(), None))
        .collect();
    rows.extend(
        old.iter()
            .filter(|(id, _)| new.get(*id).is_none())
            .map(|(id, _)| Row::Gone(id)),
    );
    rows
}
