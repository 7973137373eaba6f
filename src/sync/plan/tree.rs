//! One view of a volume: nodes by id with a name index, a valid tree by construction.
//!
//! Entries are shared ([`Arc`]): the engine's three trees are nearly identical, and a node
//! whose entry is equal in two of them is held once ([`Entry::share`], [`Tree::adopt`]).
//! A change to a shared entry copies it first, so sharing never shows in what a tree holds.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::chunking::ManifestId;
use crate::protocol::{Name, NodeId, NodeKind, Xattrs};

/// What a node holds; its variant is the node's kind, which never changes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Content {
    /// A directory (its children point at it).
    Dir,
    /// A regular file: its content manifest and size.
    File {
        /// Id of the content manifest.
        manifest_id: ManifestId,
        /// Content size in bytes.
        size: u64,
    },
    /// A symbolic link.
    Symlink {
        /// The link target.
        target: String,
    },
}

impl Content {
    /// The node kind this content belongs to.
    pub fn kind(&self) -> NodeKind {
        match self {
            Content::Dir => NodeKind::Dir,
            Content::File { .. } => NodeKind::File,
            Content::Symlink { .. } => NodeKind::Symlink,
        }
    }
}

/// One node as a view holds it (the kind is [`Entry::kind`], derived from the content).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The directory the node is in.
    pub parent: NodeId,
    /// Its name there.
    pub name: Name,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime: i64,
    /// Extended attributes.
    pub xattrs: Xattrs,
    /// Directory, file content or link target.
    pub content: Content,
}

impl Entry {
    /// File, directory or symlink.
    pub fn kind(&self) -> NodeKind {
        self.content.kind()
    }

    /// Same node, same place: (parent, name).
    pub(crate) fn same_place(&self, other: &Entry) -> bool {
        self.parent == other.parent && self.name == other.name
    }

    /// This entry as a shared one: the first of `likes` that is equal to it (no new
    /// allocation), else a new one that takes the name of a like that has the same name.
    pub fn share<'a>(self, likes: impl IntoIterator<Item = Option<&'a Arc<Entry>>>) -> Arc<Entry> {
        let mut entry = self;
        let mut named = false;
        for like in likes.into_iter().flatten() {
            if **like == entry {
                return Arc::clone(like);
            }
            if !named && like.name == entry.name {
                entry.name = like.name.clone();
                named = true;
            }
        }
        Arc::new(entry)
    }
}

/// Why a tree refused a change (or a set of entries).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    /// The root is implicit: it cannot be inserted, moved, changed or removed.
    #[error("the root cannot be inserted, moved, changed or removed")]
    Root,
    /// The node is in the tree already.
    #[error("node {0} exists already")]
    Exists(NodeId),
    /// The node is not in the tree.
    #[error("node {0} does not exist")]
    Missing(NodeId),
    /// The parent is not an existing directory.
    #[error("parent {0} is not an existing directory")]
    BadParent(NodeId),
    /// Another node holds the name in that directory.
    #[error("name {name:?} is taken in {parent} by {holder}")]
    NameTaken {
        /// The directory.
        parent: NodeId,
        /// The name.
        name: Name,
        /// The node holding it.
        holder: NodeId,
    },
    /// The move would put a directory inside itself.
    #[error("moving {node} under {parent} would make a cycle")]
    Cycle {
        /// The node moved.
        node: NodeId,
        /// The directory it would go in.
        parent: NodeId,
    },
    /// The directory still has children.
    #[error("directory {0} is not empty")]
    NotEmpty(NodeId),
    /// The new content is of another kind than the node.
    #[error("node {node} is a {is:?}, not a {want:?}")]
    KindChange {
        /// The node.
        node: NodeId,
        /// Its kind.
        is: NodeKind,
        /// The kind of the refused content.
        want: NodeKind,
    },
    /// The entry cannot be reached from the root (its parent is missing, or parents loop).
    #[error("node {0} is not reachable from the root (missing parent or a cycle)")]
    Unreachable(NodeId),
    /// The same id appears twice in a set of entries.
    #[error("node {0} appears twice")]
    Duplicate(NodeId),
}

/// A view of a volume: every node but the implicit root ([`NodeId::ROOT`], a directory).
///
/// Always a valid tree: every parent is an existing directory, names are unique per directory,
/// no cycles. Each change is checked, so a tree that exists is one the planner can trust.
#[derive(Clone, Debug, Default)]
pub struct Tree {
    nodes: BTreeMap<NodeId, Arc<Entry>>,
    /// Children by name, per directory (an absent key is an empty directory); each name is
    /// the one its entry holds (shared text).
    children: HashMap<NodeId, BTreeMap<Name, NodeId>>,
}

impl PartialEq for Tree {
    fn eq(&self, other: &Self) -> bool {
        // The name index is derived from the nodes (and may hold empty maps): compare nodes only.
        self.nodes == other.nodes
    }
}

impl Eq for Tree {}

impl Tree {
    /// An empty tree: the root only.
    pub fn new() -> Self {
        Self::default()
    }

    /// A tree of `entries` given in any order; refused unless they form a valid tree.
    pub fn from_entries(
        entries: impl IntoIterator<Item = (NodeId, Entry)>,
    ) -> Result<Self, TreeError> {
        Self::from_shared(entries.into_iter().map(|(id, e)| (id, Arc::new(e))))
    }

    /// [`Tree::from_entries`] of shared entries.
    pub fn from_shared(
        entries: impl IntoIterator<Item = (NodeId, Arc<Entry>)>,
    ) -> Result<Self, TreeError> {
        let mut by_id: BTreeMap<NodeId, Arc<Entry>> = BTreeMap::new();
        for (id, entry) in entries {
            if id == NodeId::ROOT {
                return Err(TreeError::Root);
            }
            if by_id.insert(id, entry).is_some() {
                return Err(TreeError::Duplicate(id));
            }
        }
        let mut kids: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
        for (id, e) in &by_id {
            kids.entry(e.parent).or_default().push(*id);
        }
        // Insert top-down from the root, so each parent is in place before its children.
        let mut tree = Tree::new();
        let mut stack = vec![NodeId::ROOT];
        while let Some(dir) = stack.pop() {
            for id in kids.remove(&dir).unwrap_or_default() {
                if let Some(entry) = by_id.remove(&id) {
                    tree.insert_shared(id, entry)?;
                    stack.push(id);
                }
            }
        }
        match by_id.keys().next() {
            Some(id) => Err(TreeError::Unreachable(*id)),
            None => Ok(tree),
        }
    }

    /// Number of nodes, the root not counted.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when the tree holds the root only.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The entry of `id` (`None` for the root, which has no entry, and for absent nodes).
    pub fn get(&self, id: NodeId) -> Option<&Entry> {
        self.nodes.get(&id).map(|e| &**e)
    }

    /// The entry of `id` as shared, to hold it in another tree without a copy.
    pub fn get_shared(&self, id: NodeId) -> Option<&Arc<Entry>> {
        self.nodes.get(&id)
    }

    /// True for the root and every node in the tree.
    pub fn exists(&self, id: NodeId) -> bool {
        id == NodeId::ROOT || self.nodes.contains_key(&id)
    }

    /// True for the root and every directory in the tree.
    pub fn is_dir(&self, id: NodeId) -> bool {
        id == NodeId::ROOT
            || self
                .nodes
                .get(&id)
                .is_some_and(|e| e.kind() == NodeKind::Dir)
    }

    /// All nodes in id order.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, &Entry)> {
        self.nodes.iter().map(|(id, e)| (*id, &**e))
    }

    /// The node named `name` in directory `parent`.
    pub fn child(&self, parent: NodeId, name: &Name) -> Option<NodeId> {
        self.children.get(&parent)?.get(name).copied()
    }

    /// The children of `parent`, by name.
    pub fn children_of(&self, parent: NodeId) -> impl Iterator<Item = (&Name, NodeId)> {
        self.children
            .get(&parent)
            .into_iter()
            .flat_map(|m| m.iter().map(|(n, id)| (n, *id)))
    }

    /// How many children `parent` has.
    pub fn child_count(&self, parent: NodeId) -> usize {
        self.children.get(&parent).map_or(0, BTreeMap::len)
    }

    /// The path of `id` from the root, as "/a/b" ("/" for the root); `None` if absent.
    pub fn path_of(&self, id: NodeId) -> Option<String> {
        let mut parts: Vec<&str> = Vec::new();
        let mut at = id;
        while at != NodeId::ROOT {
            let e = self.nodes.get(&at)?;
            parts.push(e.name.as_str());
            at = e.parent;
        }
        if parts.is_empty() {
            return Some("/".to_string());
        }
        parts.reverse();
        Some(parts.iter().fold(String::new(), |acc, p| acc + "/" + p))
    }

    /// True if `ancestor` is `node` or one of its ancestors.
    pub fn is_ancestor_or_self(&self, ancestor: NodeId, node: NodeId) -> bool {
        let mut at = node;
        loop {
            if at == ancestor {
                return true;
            }
            match self.nodes.get(&at) {
                Some(e) => at = e.parent,
                None => return false,
            }
        }
    }

    /// Adds node `id` with `entry`.
    pub fn insert(&mut self, id: NodeId, entry: Entry) -> Result<(), TreeError> {
        self.insert_shared(id, Arc::new(entry))
    }

    /// [`Tree::insert`] of a shared entry.
    pub fn insert_shared(&mut self, id: NodeId, entry: Arc<Entry>) -> Result<(), TreeError> {
        if id == NodeId::ROOT {
            return Err(TreeError::Root);
        }
        if self.nodes.contains_key(&id) {
            return Err(TreeError::Exists(id));
        }
        self.check_place(id, entry.parent, &entry.name)?;
        self.children
            .entry(entry.parent)
            .or_default()
            .insert(entry.name.clone(), id);
        self.nodes.insert(id, entry);
        Ok(())
    }

    /// Removes node `id` (a directory only once empty) and returns its entry.
    pub fn remove(&mut self, id: NodeId) -> Result<Arc<Entry>, TreeError> {
        if id == NodeId::ROOT {
            return Err(TreeError::Root);
        }
        if self.child_count(id) > 0 {
            return Err(TreeError::NotEmpty(id));
        }
        let entry = self.nodes.remove(&id).ok_or(TreeError::Missing(id))?;
        self.unlink(entry.parent, &entry.name);
        self.children.remove(&id);
        Ok(entry)
    }

    /// Moves and/or renames node `id` to `name` in `parent`.
    pub fn move_node(&mut self, id: NodeId, parent: NodeId, name: Name) -> Result<(), TreeError> {
        if id == NodeId::ROOT {
            return Err(TreeError::Root);
        }
        let (old_parent, old_name) = match self.nodes.get(&id) {
            Some(e) => (e.parent, e.name.clone()),
            None => return Err(TreeError::Missing(id)),
        };
        self.check_place(id, parent, &name)?;
        if self.is_ancestor_or_self(id, parent) {
            return Err(TreeError::Cycle { node: id, parent });
        }
        self.unlink(old_parent, &old_name);
        self.children
            .entry(parent)
            .or_default()
            .insert(name.clone(), id);
        if let Some(e) = self.nodes.get_mut(&id) {
            let e = Arc::make_mut(e);
            e.parent = parent;
            e.name = name;
        }
        Ok(())
    }

    /// Replaces the content of node `id` (same kind only).
    pub fn set_content(&mut self, id: NodeId, content: Content) -> Result<(), TreeError> {
        let e = self.entry_mut(id)?;
        if e.kind() != content.kind() {
            return Err(TreeError::KindChange {
                node: id,
                is: e.kind(),
                want: content.kind(),
            });
        }
        if e.content != content {
            Arc::make_mut(e).content = content;
        }
        Ok(())
    }

    /// Sets the attributes given (`None` leaves one as it is).
    pub fn set_attrs(
        &mut self,
        id: NodeId,
        mode: Option<u32>,
        mtime: Option<i64>,
        xattrs: Option<Xattrs>,
    ) -> Result<(), TreeError> {
        let e = self.entry_mut(id)?;
        // A shared entry is copied only for a real change.
        if let Some(m) = mode.filter(|m| *m != e.mode) {
            Arc::make_mut(e).mode = m;
        }
        if let Some(t) = mtime.filter(|t| *t != e.mtime) {
            Arc::make_mut(e).mtime = t;
        }
        if let Some(x) = xattrs.filter(|x| *x != e.xattrs) {
            Arc::make_mut(e).xattrs = x;
        }
        Ok(())
    }

    /// Holds `like` as the entry of `id` if it is equal to the entry there, so the two trees
    /// share it (a name equal but held apart is shared too). True if `id` now holds `like`.
    pub fn adopt(&mut self, id: NodeId, like: &Arc<Entry>) -> bool {
        let Some(e) = self.nodes.get_mut(&id) else {
            return false;
        };
        if Arc::ptr_eq(e, like) {
            return true;
        }
        if **e != **like {
            return false;
        }
        *e = Arc::clone(like);
        // The index's key is the old entry's name: take the shared one, so the old text goes.
        if let Some(m) = self.children.get_mut(&like.parent)
            && let Some((key, _)) = m.get_key_value(&like.name)
            && !key.same_text(&like.name)
        {
            m.remove(&like.name);
            m.insert(like.name.clone(), id);
        }
        true
    }

    /// Sets every node of `changes` to its entry (`None`: not in the tree), all at once: the
    /// tree is checked only as it is after all of them, so swapped names, a directory and
    /// its new child, or moves that only make sense together apply in any order. The cost is
    /// that of the changes, not of the tree. On error the tree is left as it was.
    pub fn update(
        &mut self,
        changes: impl IntoIterator<Item = (NodeId, Option<Entry>)>,
    ) -> Result<(), TreeError> {
        self.update_shared(changes.into_iter().map(|(id, e)| (id, e.map(Arc::new))))
    }

    /// [`Tree::update`] with shared entries.
    pub fn update_shared(
        &mut self,
        changes: impl IntoIterator<Item = (NodeId, Option<Arc<Entry>>)>,
    ) -> Result<(), TreeError> {
        // The last change of a node wins.
        let changes: BTreeMap<NodeId, Option<Arc<Entry>>> = changes.into_iter().collect();
        if changes.contains_key(&NodeId::ROOT) {
            return Err(TreeError::Root);
        }
        let old: Vec<(NodeId, Option<Arc<Entry>>)> = changes
            .keys()
            .map(|&id| (id, self.detach_raw(id)))
            .collect();
        let mut placed = Vec::new();
        let mut result = Ok(());
        for (&id, entry) in &changes {
            let Some(entry) = entry else { continue };
            if let Some(holder) = self.child(entry.parent, &entry.name) {
                result = Err(TreeError::NameTaken {
                    parent: entry.parent,
                    name: entry.name.clone(),
                    holder,
                });
                break;
            }
            self.attach_raw(id, Arc::clone(entry));
            placed.push(id);
        }
        if result.is_ok() {
            result = self.check_updated(&changes, &old);
        }
        if result.is_err() {
            for id in placed {
                self.detach_raw(id);
            }
            for (id, entry) in old {
                if let Some(entry) = entry {
                    self.attach_raw(id, entry);
                }
            }
        } else {
            // Empty maps of directories that are gone.
            for (id, entry) in &changes {
                if entry.is_none() {
                    self.children.remove(id);
                }
            }
        }
        result
    }

    /// After [`Tree::update`] placed `changes` (the nodes held `old` before): each placed
    /// node's parent is a directory of the tree with no cycle above it, no kind changed, and
    /// no removed directory keeps a child.
    fn check_updated(
        &self,
        changes: &BTreeMap<NodeId, Option<Arc<Entry>>>,
        old: &[(NodeId, Option<Arc<Entry>>)],
    ) -> Result<(), TreeError> {
        for (id, before) in old {
            match (before, changes.get(id).and_then(Option::as_ref)) {
                (Some(b), Some(a)) if b.kind() != a.kind() => {
                    return Err(TreeError::KindChange {
                        node: *id,
                        is: b.kind(),
                        want: a.kind(),
                    });
                }
                (_, None) if self.child_count(*id) > 0 => return Err(TreeError::NotEmpty(*id)),
                _ => {}
            }
        }
        for (&id, entry) in changes {
            let Some(entry) = entry else { continue };
            if !self.is_dir(entry.parent) {
                return Err(TreeError::BadParent(entry.parent));
            }
            // Up to the root within as many steps as there are nodes, never through `id`.
            let mut at = entry.parent;
            let mut steps = 0usize;
            while at != NodeId::ROOT {
                if at == id {
                    return Err(TreeError::Cycle {
                        node: id,
                        parent: entry.parent,
                    });
                }
                steps += 1;
                match self.nodes.get(&at) {
                    Some(e) if steps <= self.nodes.len() => at = e.parent,
                    _ => return Err(TreeError::Unreachable(id)),
                }
            }
        }
        Ok(())
    }

    /// Takes `id` out of the nodes and of its directory's index, leaving its own children
    /// indexed under it.
    fn detach_raw(&mut self, id: NodeId) -> Option<Arc<Entry>> {
        let entry = self.nodes.remove(&id)?;
        if self.child(entry.parent, &entry.name) == Some(id) {
            self.unlink(entry.parent, &entry.name);
        }
        Some(entry)
    }

    /// Puts `id` in the nodes and its directory's index, unchecked.
    fn attach_raw(&mut self, id: NodeId, entry: Arc<Entry>) {
        self.children
            .entry(entry.parent)
            .or_default()
            .insert(entry.name.clone(), id);
        self.nodes.insert(id, entry);
    }

    fn entry_mut(&mut self, id: NodeId) -> Result<&mut Arc<Entry>, TreeError> {
        if id == NodeId::ROOT {
            return Err(TreeError::Root);
        }
        self.nodes.get_mut(&id).ok_or(TreeError::Missing(id))
    }

    /// `parent` is a directory and `name` is free there (or held by `id` itself).
    fn check_place(&self, id: NodeId, parent: NodeId, name: &Name) -> Result<(), TreeError> {
        if !self.is_dir(parent) {
            return Err(TreeError::BadParent(parent));
        }
        match self.child(parent, name) {
            Some(holder) if holder != id => Err(TreeError::NameTaken {
                parent,
                name: name.clone(),
                holder,
            }),
            _ => Ok(()),
        }
    }

    fn unlink(&mut self, parent: NodeId, name: &Name) {
        if let Some(m) = self.children.get_mut(&parent) {
            m.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> NodeId {
        NodeId::from_u128(n)
    }

    fn entry(parent: u128, name: &str, content: Content) -> Entry {
        Entry {
            parent: id(parent),
            name: Name::new(name).unwrap(),
            mode: 0o644,
            mtime: 0,
            xattrs: Xattrs::new(),
            content,
        }
    }

    fn file() -> Content {
        Content::File {
            manifest_id: ManifestId::from_bytes([1; 32]),
            size: 1,
        }
    }

    #[test]
    fn entries_in_any_order_make_a_tree() {
        let t = Tree::from_entries([
            (id(3), entry(2, "f", file())),
            (id(2), entry(1, "b", Content::Dir)),
            (id(1), entry(0, "a", Content::Dir)),
        ])
        .unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t.path_of(id(3)).as_deref(), Some("/a/b/f"));
        assert_eq!(t.path_of(NodeId::ROOT).as_deref(), Some("/"));
        assert_eq!(t.child(id(2), &Name::new("f").unwrap()), Some(id(3)));
        assert!(t.is_ancestor_or_self(id(1), id(3)));
        assert!(!t.is_ancestor_or_self(id(3), id(1)));
        assert_eq!(
            t.children_of(id(1)).map(|(_, c)| c).collect::<Vec<_>>(),
            [id(2)]
        );
    }

    #[test]
    fn invalid_entry_sets_are_refused() {
        // Orphan, cycle, duplicate name, file as parent, the root, the same id twice.
        let orphan = Tree::from_entries([(id(1), entry(9, "a", Content::Dir))]);
        assert_eq!(orphan, Err(TreeError::Unreachable(id(1))));
        let cycle = Tree::from_entries([
            (id(1), entry(2, "a", Content::Dir)),
            (id(2), entry(1, "b", Content::Dir)),
        ]);
        assert!(matches!(cycle, Err(TreeError::Unreachable(_))));
        let dup = Tree::from_entries([
            (id(1), entry(0, "a", Content::Dir)),
            (id(2), entry(0, "a", file())),
        ]);
        assert!(matches!(dup, Err(TreeError::NameTaken { .. })));
        let under_file = Tree::from_entries([
            (id(1), entry(0, "f", file())),
            (id(2), entry(1, "x", file())),
        ]);
        assert_eq!(under_file, Err(TreeError::BadParent(id(1))));
        let root = Tree::from_entries([(NodeId::ROOT, entry(0, "r", Content::Dir))]);
        assert_eq!(root, Err(TreeError::Root));
        let twice = Tree::from_entries([
            (id(1), entry(0, "a", Content::Dir)),
            (id(1), entry(0, "b", Content::Dir)),
        ]);
        assert_eq!(twice, Err(TreeError::Duplicate(id(1))));
    }

    #[test]
    fn changes_are_checked() {
        let mut t = Tree::new();
        t.insert(id(1), entry(0, "a", Content::Dir)).unwrap();
        t.insert(id(2), entry(1, "b", Content::Dir)).unwrap();
        t.insert(id(3), entry(0, "f", file())).unwrap();
        assert_eq!(
            t.insert(id(1), entry(0, "z", Content::Dir)),
            Err(TreeError::Exists(id(1)))
        );
        assert!(matches!(
            t.insert(id(4), entry(0, "a", file())),
            Err(TreeError::NameTaken { .. })
        ));
        assert_eq!(
            t.insert(id(4), entry(3, "x", file())),
            Err(TreeError::BadParent(id(3)))
        );
        assert_eq!(
            t.move_node(id(1), id(2), Name::new("a").unwrap()),
            Err(TreeError::Cycle {
                node: id(1),
                parent: id(2)
            })
        );
        assert_eq!(t.remove(id(1)), Err(TreeError::NotEmpty(id(1))));
        assert!(matches!(
            t.set_content(id(3), Content::Dir),
            Err(TreeError::KindChange { .. })
        ));
        assert_eq!(t.remove(NodeId::ROOT), Err(TreeError::Root));
        // Valid changes keep the name index right.
        t.move_node(id(2), NodeId::ROOT, Name::new("b2").unwrap())
            .unwrap();
        assert_eq!(t.child_count(id(1)), 0);
        t.remove(id(1)).unwrap();
        assert_eq!(t.child(NodeId::ROOT, &Name::new("a").unwrap()), None);
        assert_eq!(t.path_of(id(2)).as_deref(), Some("/b2"));
        t.set_attrs(id(3), Some(0o600), None, None).unwrap();
        assert_eq!(t.get(id(3)).map(|e| e.mode), Some(0o600));
        // Equality ignores the index's leftovers.
        let fresh = Tree::from_entries(t.iter().map(|(i, e)| (i, e.clone()))).unwrap();
        assert_eq!(t, fresh);
    }
    #[test]
    fn updates_apply_together_and_are_checked_as_a_whole() {
        let mut t = Tree::from_entries([
            (id(1), entry(0, "a", Content::Dir)),
            (id(2), entry(0, "b", Content::Dir)),
            (id(3), entry(1, "f", file())),
        ])
        .unwrap();
        // Swap two names, add a directory with a child, in an order no single step allows.
        t.update([
            (id(5), Some(entry(4, "g", file()))),
            (id(1), Some(entry(0, "b", Content::Dir))),
            (id(2), Some(entry(0, "a", Content::Dir))),
            (id(4), Some(entry(2, "new", Content::Dir))),
        ])
        .unwrap();
        let fresh = Tree::from_entries(t.iter().map(|(i, e)| (i, e.clone()))).unwrap();
        assert_eq!(t, fresh);
        assert_eq!(t.path_of(id(5)).as_deref(), Some("/a/new/g"));
        assert_eq!(t.path_of(id(3)).as_deref(), Some("/b/f"));
        let before = t.clone();
        let refused = [
            // A directory that keeps a child.
            vec![(id(1), None)],
            // A cycle.
            vec![
                (id(1), Some(entry(4, "b", Content::Dir))),
                (id(4), Some(entry(1, "new", Content::Dir))),
            ],
            // A taken name, a file as parent, a kind change, a missing parent.
            vec![(id(6), Some(entry(0, "a", file())))],
            vec![(id(6), Some(entry(3, "x", file())))],
            vec![(id(3), Some(entry(1, "f", Content::Dir)))],
            vec![(id(6), Some(entry(9, "x", file())))],
        ];
        for changes in refused {
            assert!(t.update(changes.clone()).is_err(), "{changes:?}");
            assert_eq!(t, before, "left as it was");
            for (i, e) in before.iter() {
                assert_eq!(t.child(e.parent, &e.name), Some(i), "index of {i}");
            }
        }
        // Removing a subtree together, leaves and directory in one update.
        t.update([(id(1), None), (id(3), None)]).unwrap();
        assert_eq!(t.get(id(1)), None);
        assert_eq!(t.child(NodeId::ROOT, &Name::new("b").unwrap()), None);
    }

    #[test]
    fn equal_entries_are_held_once_and_changes_copy_them_first() {
        let mut a = Tree::new();
        a.insert(id(1), entry(0, "d", Content::Dir)).unwrap();
        a.insert(id(2), entry(1, "f", file())).unwrap();
        let shared = |t: &Tree, u: &Tree, n: u128| {
            Arc::ptr_eq(t.get_shared(id(n)).unwrap(), u.get_shared(id(n)).unwrap())
        };
        // Built from equal entries: the like's own; a different one keeps the like's name.
        let mut touched = entry(1, "f", file());
        touched.mtime = 5;
        let b = Tree::from_shared([
            (
                id(1),
                entry(0, "d", Content::Dir).share([a.get_shared(id(1))]),
            ),
            (id(2), touched.share([None, a.get_shared(id(2))])),
        ])
        .unwrap();
        assert!(shared(&a, &b, 1));
        assert!(!shared(&a, &b, 2));
        assert!(
            b.get(id(2))
                .unwrap()
                .name
                .same_text(&a.get(id(2)).unwrap().name)
        );
        // A change copies the shared entry: the other tree keeps what it had.
        let mut c = b.clone();
        c.set_attrs(id(1), Some(0o700), None, None).unwrap();
        assert_eq!(b.get(id(1)).unwrap().mode, 0o644);
        assert_eq!(c.get(id(1)).unwrap().mode, 0o700);
        assert!(!shared(&b, &c, 1));
        // Setting what it holds already is no change: still shared.
        let mut d = b.clone();
        d.set_attrs(id(1), Some(0o644), Some(0), None).unwrap();
        d.set_content(id(2), file()).unwrap();
        assert!(shared(&b, &d, 1) && shared(&b, &d, 2));
        // Adopting: only an equal entry, which then is held once, names and index included.
        let mut e = Tree::from_entries(a.iter().map(|(i, e)| (i, e.clone()))).unwrap();
        assert!(!shared(&a, &e, 2));
        assert!(!e.adopt(id(2), b.get_shared(id(2)).unwrap()), "not equal");
        assert!(e.adopt(id(2), a.get_shared(id(2)).unwrap()));
        assert!(shared(&a, &e, 2));
        let f = Name::new("f").unwrap();
        let (key, _) = e.children[&id(1)].get_key_value(&f).unwrap();
        assert!(key.same_text(&a.get(id(2)).unwrap().name));
        assert_eq!(e, a);
        assert_eq!(e.child(id(1), &f), Some(id(2)));
        assert!(!e.adopt(id(9), a.get_shared(id(2)).unwrap()), "absent");
    }
}
