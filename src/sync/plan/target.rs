//! The merged tree both sides must reach, held as the differences from the shared part.

use std::collections::{BTreeMap, HashSet};

use crate::protocol::{Name, NodeId};

use super::tree::{Entry, Tree};

/// The target tree: nodes outside `over` are as the local (and equally the remote) tree
/// holds them; `over` holds every node the two trees disagree on, plus conflicted copies.
pub(super) struct Target<'a> {
    /// The local tree, which is the target wherever `over` says nothing.
    base: &'a Tree,
    /// The remote tree, for the name index of the shared part.
    remote: &'a Tree,
    /// Decided nodes: `None` where the node is not in the target.
    over: BTreeMap<NodeId, Option<Entry>>,
    /// Conflicted copies: copy id -> the node whose local version it keeps.
    copies: BTreeMap<NodeId, NodeId>,
    /// (parent, name) of every node of `over` that is in the target, and the names local-only
    /// nodes hold (taken on the local side, though in no tree).
    places: HashSet<(NodeId, Name)>,
}

impl<'a> Target<'a> {
    /// The target from the decided nodes, the copies and the places the decided nodes take
    /// (the (parent, name) of each of them in the target, copies included, and the names
    /// local-only nodes hold).
    pub(super) fn new(
        local: &'a Tree,
        remote: &'a Tree,
        over: BTreeMap<NodeId, Option<Entry>>,
        copies: BTreeMap<NodeId, NodeId>,
        places: HashSet<(NodeId, Name)>,
    ) -> Self {
        Self {
            base: local,
            remote,
            over,
            copies,
            places,
        }
    }

    /// The target entry of `id`.
    pub(super) fn get(&self, id: NodeId) -> Option<&Entry> {
        match self.over.get(&id) {
            Some(decided) => decided.as_ref(),
            None => self.base.get(id),
        }
    }

    /// True for the root and every node of the target.
    pub(super) fn exists(&self, id: NodeId) -> bool {
        id == NodeId::ROOT || self.get(id).is_some()
    }

    /// At least the number of nodes in the target.
    pub(super) fn size_bound(&self) -> usize {
        self.base.len() + self.over.len()
    }

    /// The decided nodes, in id order: the only ones where a side may differ from the target.
    pub(super) fn decided(&self) -> impl Iterator<Item = (NodeId, Option<&Entry>)> {
        self.over.iter().map(|(id, e)| (*id, e.as_ref()))
    }

    /// The node whose local version the conflicted copy `id` keeps.
    pub(super) fn copy_source(&self, id: NodeId) -> Option<NodeId> {
        self.copies.get(&id).copied()
    }

    /// True if some node of the target, or a local-only node, is named `name` in `parent`.
    pub(super) fn is_taken(&self, parent: NodeId, name: &Name) -> bool {
        // Outside `over` the remote tree equals the target, so its index answers there.
        self.places.contains(&(parent, name.clone()))
            || self
                .remote
                .child(parent, name)
                .is_some_and(|m| !self.over.contains_key(&m))
    }
}
