//! The in-memory node tree: every namespace rule (POSIX errors, rename semantics) lives here,
//! with no I/O. Changes are journaled so the drive can persist them.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;

use crate::protocol::NodeId;

use super::error::{DriveError, DriveResult};
use super::name;
use super::node::{Attr, Ino, IoMode, Kind, LinkName, Nanos, Node, ROOT_INO};

/// Most names one inode may have, as ext4 allows (EMLINK beyond).
pub const LINK_MAX: usize = 65_000;

/// What a rename should do when the target name exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenameMode {
    /// Replace a compatible target (POSIX rename).
    Replace,
    /// Fail with EEXIST if the target exists (RENAME_NOREPLACE).
    NoReplace,
    /// Swap the two entries atomically; both must exist (RENAME_EXCHANGE).
    Exchange,
}

/// A directory's entries: (hash of the name, inode) each. The name itself is kept once, by
/// the node that bears it; a lookup compares it there.
#[derive(Debug, Default)]
struct Dir {
    entries: HashTable<(u64, Ino)>,
    /// Number of child directories (for nlink).
    subdirs: u32,
}

/// The node tree and a journal of what changed since it was last drained.
#[derive(Debug, Default)]
pub struct Tree {
    /// Each node in a box of its own: the map's slots stay 16 bytes, so the slack of a
    /// hash table (up to half its slots free after it grows) costs 16 bytes a slot rather
    /// than a whole node's size, and growing it moves no nodes.
    nodes: HashMap<Ino, Box<Node>>,
    /// Entries of every directory node still in memory, by its inode.
    dirs: HashMap<Ino, Dir>,
    /// Hashes entry names for `dirs` and node ids for `by_id`.
    names: RandomState,
    /// Node id to inode, for every name of every node still in memory: (hash of the id,
    /// inode) each, the id itself compared on the node (16 bytes a slot, where a map keyed
    /// by ids takes 24, or 32 with the `u128` key's alignment).
    by_id: HashTable<(u64, Ino)>,
    /// Backing file key to inode, for the nodes still in memory whose key `by_id` does not
    /// give already: a node holding the key `id` that `by_id` maps to it needs no entry,
    /// which is every node but a few (a promoted link, a split name, an id taken over).
    /// A key stays taken while an unlinked node still holds its file.
    other_backing: HashMap<NodeId, Ino>,
    next_ino: Ino,
    changed: BTreeSet<Ino>,
    deleted: BTreeSet<Ino>,
    reaped: Vec<(Ino, Node)>,
    /// Inodes whose names, attributes, content or busyness may have changed since the sync
    /// engine last took them ([`Tree::take_watched`]); `None` until it first does, so a
    /// drive nobody syncs keeps no such list.
    watched: Option<HashSet<Ino>>,
}

/// Whether node `ino` (in `nodes`) has a name with id `id`.
fn has_id(nodes: &HashMap<Ino, Box<Node>>, ino: Ino, id: NodeId) -> bool {
    nodes
        .get(&ino)
        .is_some_and(|n| n.names().any(|(i, _, _)| i == id))
}

/// Changes to persist, drained from the tree's journal.
#[derive(Debug, Default)]
pub struct Journal {
    /// Nodes whose persistent fields changed (still in the tree).
    pub changed: Vec<Ino>,
    /// Nodes removed from the namespace (their rows go).
    pub deleted: Vec<Ino>,
    /// Nodes gone for good: no name, no open handle, no kernel reference. Their backing files go.
    pub reaped: Vec<(Ino, Node)>,
}

impl Tree {
    /// A tree holding the given nodes; the root must be among them.
    pub fn from_nodes(nodes: HashMap<Ino, Node>) -> Tree {
        let mut nodes: HashMap<Ino, Box<Node>> = nodes
            .into_iter()
            .map(|(ino, n)| (ino, Box::new(n)))
            .collect();
        let next_ino = nodes.keys().copied().max().unwrap_or(ROOT_INO) + 1;
        // A further name whose directory is gone (a damaged store) is dropped: the inode
        // keeps its content under its primary name, which the orphan rule places.
        let dirs: BTreeSet<Ino> = nodes
            .iter()
            .filter(|(_, n)| n.kind == Kind::Dir)
            .map(|(&ino, _)| ino)
            .collect();
        let mut changed = BTreeSet::new();
        for (&ino, n) in nodes.iter_mut() {
            let before = n.links().len();
            if before > 0 {
                n.links_mut().retain(|l| dirs.contains(&l.parent));
                n.tidy();
            }
            if n.links().len() != before {
                tracing::warn!(ino, "hard link in a missing directory: dropping that name");
                changed.insert(ino);
            }
        }
        let ids: Vec<(NodeId, Ino)> = nodes
            .iter()
            .flat_map(|(&ino, n)| n.names().map(move |(id, _, _)| (id, ino)))
            .collect();
        let mut tree = Tree {
            nodes,
            next_ino,
            changed,
            ..Tree::default()
        };
        for (id, ino) in ids {
            tree.id_set(id, ino);
        }
        let inos: Vec<Ino> = tree.nodes.keys().copied().collect();
        for ino in inos {
            tree.index_backing(ino);
        }
        tree.rebuild_children();
        tree
    }

    /// Fills the directories' entries and child directory counts from the parent links.
    fn rebuild_children(&mut self) {
        self.dirs = self
            .nodes
            .iter()
            .filter(|(_, n)| n.kind == Kind::Dir)
            .map(|(&ino, _)| (ino, Dir::default()))
            .collect();
        let links: Vec<(Ino, Ino, u64, Kind)> = self
            .nodes
            .iter()
            .filter(|&(&ino, _)| ino != ROOT_INO)
            .flat_map(|(&ino, n)| {
                n.names()
                    .map(move |(_, parent, name)| (ino, parent, name, n.kind))
            })
            .map(|(ino, parent, name, kind)| (ino, parent, self.names.hash_one(name), kind))
            .collect();
        for (ino, parent, hash, kind) in links {
            if let Some(d) = self.dirs.get_mut(&parent) {
                d.entries.insert_unique(hash, (hash, ino), |e| e.0);
                if kind == Kind::Dir {
                    d.subdirs += 1;
                }
            }
        }
    }

    /// Keeps `other_backing` right for `ino` after its id, names or key changed, or after
    /// `by_id` stopped leading to it.
    fn index_backing(&mut self, ino: Ino) {
        let Some(n) = self.nodes.get(&ino) else {
            return;
        };
        let key = n.backing_id();
        if key == n.id() && self.id_get(n.id()) == Some(ino) {
            if self.other_backing.get(&key) == Some(&ino) {
                self.other_backing.remove(&key);
            }
        } else {
            self.other_backing.insert(key, ino);
        }
    }

    /// Points `by_id` for `id` at `ino`; a node it led to before may need its key indexed.
    fn index_id(&mut self, id: NodeId, ino: Ino) {
        if let Some(old) = self.id_set(id, ino)
            && old != ino
        {
            self.index_backing(old);
        }
        self.index_backing(ino);
    }

    /// The inode `by_id` gives for `id` (unlinked ones too).
    fn id_get(&self, id: NodeId) -> Option<Ino> {
        let hash = self.names.hash_one(id.to_bytes());
        let nodes = &self.nodes;
        self.by_id
            .find(hash, |&(h, ino)| h == hash && has_id(nodes, ino, id))
            .map(|&(_, ino)| ino)
    }

    /// Points `by_id` for `id` at `ino`; returns the inode it gave before.
    fn id_set(&mut self, id: NodeId, ino: Ino) -> Option<Ino> {
        let hash = self.names.hash_one(id.to_bytes());
        let nodes = &self.nodes;
        let old = self
            .by_id
            .find_entry(hash, |&(h, i)| h == hash && has_id(nodes, i, id))
            .ok()
            .map(|entry| entry.remove().0.1);
        self.by_id.insert_unique(hash, (hash, ino), |e| e.0);
        old
    }

    /// Drops `by_id`'s entry of `id` if it leads to `ino` (also once `ino` no longer has
    /// that name, or is gone).
    fn id_remove(&mut self, id: NodeId, ino: Ino) {
        let hash = self.names.hash_one(id.to_bytes());
        if let Ok(entry) = self.by_id.find_entry(hash, |&e| e == (hash, ino)) {
            entry.remove();
        }
    }

    /// Whether a node in memory holds a backing file by key `key`.
    fn backing_in_use(&self, key: NodeId) -> bool {
        self.other_backing.contains_key(&key)
            || self
                .id_get(key)
                .and_then(|ino| self.nodes.get(&ino))
                .is_some_and(|n| n.id() == key && n.backing_id() == key)
    }

    /// The entry `name` of directory `dir` in `d`: its slot's (hash, inode).
    fn find_entry(
        nodes: &HashMap<Ino, Box<Node>>,
        d: &Dir,
        dir: Ino,
        hash: u64,
        name: &[u8],
    ) -> Option<Ino> {
        d.entries
            .find(hash, |&(h, ino)| {
                h == hash
                    && nodes
                        .get(&ino)
                        .is_some_and(|n| n.names().any(|(_, p, nm)| p == dir && nm == name))
            })
            .map(|&(_, ino)| ino)
    }

    /// The child called `name` in directory `dir` (no `.` or `..`).
    fn child(&self, dir: Ino, name: &[u8]) -> Option<Ino> {
        let d = self.dirs.get(&dir)?;
        Self::find_entry(&self.nodes, d, dir, self.names.hash_one(name), name)
    }

    /// Whether directory `ino` has no entries (true for what is not a directory).
    pub fn is_empty_dir(&self, ino: Ino) -> bool {
        self.dirs.get(&ino).is_none_or(|d| d.entries.is_empty())
    }

    /// The entries of directory `ino` as (name, inode), sorted by name (a snapshot for
    /// readdir: the same order every time).
    pub fn entries(&self, ino: Ino) -> Vec<(Vec<u8>, Ino)> {
        let Some(d) = self.dirs.get(&ino) else {
            return Vec::new();
        };
        let mut children: Vec<Ino> = d.entries.iter().map(|&(_, child)| child).collect();
        children.sort_unstable();
        children.dedup();
        let mut out: Vec<(Vec<u8>, Ino)> = children
            .into_iter()
            .filter_map(|child| self.nodes.get(&child).map(|n| (child, n)))
            .flat_map(|(child, n)| {
                n.names()
                    .filter(|&(_, p, _)| p == ino)
                    .map(move |(_, _, name)| (name.to_vec(), child))
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// The attributes `stat` reports for `ino`.
    pub fn attr(&self, ino: Ino) -> DriveResult<Attr> {
        let subdirs = self.dirs.get(&ino).map_or(0, |d| d.subdirs);
        Ok(self.get(ino)?.attr(ino, subdirs))
    }

    /// Number of child directories of `ino` (0 for what is not a directory).
    #[cfg(test)]
    pub fn subdirs(&self, ino: Ino) -> u32 {
        self.dirs.get(&ino).map_or(0, |d| d.subdirs)
    }

    /// Inodes whose parent link leads nowhere (a damaged store); the caller decides what to do.
    pub fn orphans(&self) -> Vec<Ino> {
        self.nodes
            .iter()
            .filter(|&(&ino, n)| ino != ROOT_INO && !self.nodes.contains_key(&n.parent))
            .map(|(&ino, _)| ino)
            .collect()
    }

    /// Number of nodes in the namespace.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.nodes.values().filter(|n| !n.unlinked).count()
    }

    /// Iterates over all nodes.
    pub fn iter(&self) -> impl Iterator<Item = (&Ino, &Node)> {
        self.nodes.iter().map(|(ino, n)| (ino, &**n))
    }

    /// Takes the journal.
    pub fn drain(&mut self) -> Journal {
        let deleted: Vec<Ino> = std::mem::take(&mut self.deleted).into_iter().collect();
        let changed = std::mem::take(&mut self.changed)
            .into_iter()
            .filter(|ino| self.nodes.get(ino).is_some_and(|n| !n.unlinked))
            .collect();
        Journal {
            changed,
            deleted,
            reaped: std::mem::take(&mut self.reaped),
        }
    }

    /// Marks a node's persistent fields as changed.
    pub fn touch(&mut self, ino: Ino) {
        self.journal_changed(ino);
    }

    fn journal_changed(&mut self, ino: Ino) {
        self.changed.insert(ino);
        self.watch(ino);
    }

    fn journal_deleted(&mut self, ino: Ino) {
        self.deleted.insert(ino);
        self.watch(ino);
    }

    /// Notes for the sync engine that `ino`'s view may have changed (also for what is not
    /// persisted: handles opening and closing make a file busy or not).
    pub fn watch(&mut self, ino: Ino) {
        if let Some(w) = self.watched.as_mut() {
            w.insert(ino);
        }
    }

    /// The inodes noted since the last call, and from now on noted; `None` on the first
    /// call (nothing was noted before: the caller looks at every node).
    pub fn take_watched(&mut self) -> Option<HashSet<Ino>> {
        match self.watched.as_mut() {
            Some(w) => Some(std::mem::take(w)),
            None => {
                self.watched = Some(HashSet::new());
                None
            }
        }
    }

    /// The node for `ino`.
    pub fn get(&self, ino: Ino) -> DriveResult<&Node> {
        self.nodes
            .get(&ino)
            .map(|n| &**n)
            .ok_or(DriveError::NotFound)
    }

    /// The node for `ino`, mutably; the caller must [`Tree::touch`] it if it persists a change.
    pub fn get_mut(&mut self, ino: Ino) -> DriveResult<&mut Node> {
        self.nodes
            .get_mut(&ino)
            .map(|n| &mut **n)
            .ok_or(DriveError::NotFound)
    }

    fn dir(&self, ino: Ino) -> DriveResult<&Node> {
        let node = self.get(ino)?;
        if node.kind != Kind::Dir {
            return Err(DriveError::NotDir);
        }
        Ok(node)
    }

    /// The child called `name` in directory `parent`.
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> DriveResult<Ino> {
        if name.len() > name::NAME_MAX {
            return Err(DriveError::NameTooLong);
        }
        let dir = self.dir(parent)?;
        match name {
            b"." => Ok(parent),
            b".." => Ok(dir.parent),
            _ => self.child(parent, name).ok_or(DriveError::NotFound),
        }
    }

    /// Adds a new node called `name` under `parent`, updating the parent's times.
    pub fn insert(
        &mut self,
        parent: Ino,
        name: &[u8],
        mut node: Node,
        now: Nanos,
    ) -> DriveResult<Ino> {
        name::validate(name)?;
        let dir = self.dir(parent)?;
        if dir.unlinked {
            return Err(DriveError::NotFound);
        }
        if self.child(parent, name).is_some() {
            return Err(DriveError::Exists);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        node.parent = parent;
        node.name = name.into();
        let is_dir = node.kind == Kind::Dir;
        let id = node.id();
        self.nodes.insert(ino, Box::new(node));
        if is_dir {
            self.dirs.insert(ino, Dir::default());
        }
        self.index_id(id, ino);
        self.link(parent, name, ino, is_dir, now);
        self.journal_changed(ino);
        Ok(ino)
    }

    /// Adds the entry `name` -> `ino` to directory `parent` and updates its times.
    fn link(&mut self, parent: Ino, name: &[u8], ino: Ino, is_dir: bool, now: Nanos) {
        let hash = self.names.hash_one(name);
        if let Some(d) = self.dirs.get_mut(&parent) {
            d.entries.insert_unique(hash, (hash, ino), |e| e.0);
            if is_dir {
                d.subdirs += 1;
            }
        }
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.mtime = now;
            p.ctime = now;
        }
        self.journal_changed(parent);
    }

    /// Removes the entry `name` of `ino` from directory `parent` and updates its times.
    /// Entries are found by (hash, inode), so this works before or after the node itself
    /// lets go of the name.
    fn unlink_entry(&mut self, parent: Ino, name: &[u8], ino: Ino, is_dir: bool, now: Nanos) {
        let hash = self.names.hash_one(name);
        if let Some(d) = self.dirs.get_mut(&parent) {
            if let Ok(entry) = d.entries.find_entry(hash, |&e| e == (hash, ino)) {
                entry.remove();
            }
            if is_dir {
                d.subdirs = d.subdirs.saturating_sub(1);
            }
        }
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.mtime = now;
            p.ctime = now;
        }
        self.journal_changed(parent);
    }

    /// Removes the non-directory `name` from `parent` (unlink).
    pub fn remove_file(&mut self, parent: Ino, name: &[u8], now: Nanos) -> DriveResult<Ino> {
        let ino = self.lookup(parent, name)?;
        if self.get(ino)?.kind == Kind::Dir {
            return Err(DriveError::IsDir);
        }
        self.detach_name(ino, parent, name, now);
        Ok(ino)
    }

    /// Removes the empty directory `name` from `parent` (rmdir).
    pub fn remove_dir(&mut self, parent: Ino, name: &[u8], now: Nanos) -> DriveResult<Ino> {
        if name == b"." {
            return Err(DriveError::Invalid("rmdir of '.'"));
        }
        if name == b".." {
            return Err(DriveError::NotEmpty);
        }
        let ino = self.lookup(parent, name)?;
        let node = self.get(ino)?;
        if node.kind != Kind::Dir {
            return Err(DriveError::NotDir);
        }
        if !self.is_empty_dir(ino) {
            return Err(DriveError::NotEmpty);
        }
        self.detach(ino, now);
        Ok(ino)
    }

    /// Removes the name `parent`/`name` of `ino`: only that name when the inode has others
    /// (the first further name becomes primary if it was the primary), else the whole node.
    fn detach_name(&mut self, ino: Ino, parent: Ino, name: &[u8], now: Nanos) {
        let gone = match self.nodes.get_mut(&ino) {
            Some(node) => match node.name_index(parent, name) {
                Some(index) => node.take_name(index),
                None => return,
            },
            None => return,
        };
        let Some(gone) = gone else {
            self.detach(ino, now);
            return;
        };
        if let Some(node) = self.nodes.get_mut(&ino) {
            // ext4 changes ctime with the link count.
            node.ctime = now;
        }
        self.id_remove(gone.id, ino);
        // The primary name may have gone, and the key with it from what `by_id` says.
        self.index_backing(ino);
        self.unlink_entry(parent, name, ino, false, now);
        self.journal_changed(ino);
    }

    /// Takes `ino` (with its only name) out of the namespace; it lives on while open or
    /// referenced by the kernel.
    fn detach(&mut self, ino: Ino, now: Nanos) {
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        node.unlinked = true;
        node.ctime = now;
        let (parent, name, is_dir) = (node.parent, node.name.clone(), node.kind == Kind::Dir);
        self.unlink_entry(parent, &name, ino, is_dir, now);
        self.changed.remove(&ino);
        self.journal_deleted(ino);
        self.reap_if_unused(ino);
    }

    fn reap_if_unused(&mut self, ino: Ino) {
        let unused = self
            .nodes
            .get(&ino)
            .is_some_and(|n| n.unlinked && n.open() == 0 && n.lookups() == 0);
        if unused && let Some(node) = self.nodes.remove(&ino) {
            // Another node may have taken the id meanwhile (a remote create of a name this
            // device deleted while it was open): only this node's own entries go.
            self.id_remove(node.id(), ino);
            if self.other_backing.get(&node.backing_id()) == Some(&ino) {
                self.other_backing.remove(&node.backing_id());
            }
            self.dirs.remove(&ino);
            self.reaped.push((ino, *node));
        }
    }

    /// Whether `ancestor` is `ino` or one of its ancestors.
    fn is_ancestor(&self, ancestor: Ino, mut ino: Ino) -> bool {
        loop {
            if ino == ancestor {
                return true;
            }
            match self.nodes.get(&ino) {
                Some(n) if ino != ROOT_INO => ino = n.parent,
                _ => return false,
            }
        }
    }

    /// Renames `parent/name` to `new_parent/new_name` with POSIX and renameat2 semantics.
    pub fn rename(
        &mut self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        mode: RenameMode,
        now: Nanos,
    ) -> DriveResult<()> {
        name::validate(new_name)?;
        if name == b"." || name == b".." {
            return Err(DriveError::Invalid("rename of '.' or '..'"));
        }
        let src = self.lookup(parent, name)?;
        if self.dir(new_parent)?.unlinked {
            return Err(DriveError::NotFound);
        }
        let src_is_dir = self.get(src)?.kind == Kind::Dir;
        let dst = self.child(new_parent, new_name);

        if src_is_dir && self.is_ancestor(src, new_parent) {
            return Err(DriveError::Invalid("a directory cannot move into itself"));
        }
        if dst == Some(src) {
            let same_name = parent == new_parent && name == new_name;
            // Two names of one inode: POSIX makes the rename a no-op that keeps both.
            return match mode {
                RenameMode::NoReplace if !same_name => Err(DriveError::Exists),
                _ => Ok(()),
            };
        }
        match (mode, dst) {
            (RenameMode::Exchange, None) => Err(DriveError::NotFound),
            (RenameMode::Exchange, Some(dst)) => {
                let dst_is_dir = self.get(dst)?.kind == Kind::Dir;
                if dst_is_dir && self.is_ancestor(dst, parent) {
                    return Err(DriveError::Invalid("a directory cannot move into itself"));
                }
                self.unlink_entry(parent, name, src, src_is_dir, now);
                self.unlink_entry(new_parent, new_name, dst, dst_is_dir, now);
                self.link(new_parent, new_name, src, src_is_dir, now);
                self.link(parent, name, dst, dst_is_dir, now);
                self.relocate(src, (parent, name), (new_parent, new_name), now);
                self.relocate(dst, (new_parent, new_name), (parent, name), now);
                Ok(())
            }
            (RenameMode::NoReplace, Some(_)) => Err(DriveError::Exists),
            (_, dst) => {
                if let Some(dst) = dst {
                    let target = self.get(dst)?;
                    match (src_is_dir, target.kind == Kind::Dir) {
                        (true, false) => return Err(DriveError::NotDir),
                        (false, true) => return Err(DriveError::IsDir),
                        (true, true) if !self.is_empty_dir(dst) => {
                            return Err(DriveError::NotEmpty);
                        }
                        _ => {}
                    }
                    self.detach_name(dst, new_parent, new_name, now);
                }
                self.unlink_entry(parent, name, src, src_is_dir, now);
                self.link(new_parent, new_name, src, src_is_dir, now);
                self.relocate(src, (parent, name), (new_parent, new_name), now);
                Ok(())
            }
        }
    }

    /// Points the name `from` of `ino` at `to`.
    fn relocate(&mut self, ino: Ino, from: (Ino, &[u8]), to: (Ino, &[u8]), now: Nanos) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            if let Some(index) = node.name_index(from.0, from.1) {
                node.set_name(index, to.0, to.1);
            }
            node.ctime = now;
        }
        self.journal_changed(ino);
    }

    /// Gives `ino` the further name `name` in `parent`, with sync identity `id` (link).
    pub fn add_link(
        &mut self,
        ino: Ino,
        parent: Ino,
        name: &[u8],
        id: NodeId,
        now: Nanos,
    ) -> DriveResult<()> {
        name::validate(name)?;
        let dir = self.dir(parent)?;
        if dir.unlinked {
            return Err(DriveError::NotFound);
        }
        if self.child(parent, name).is_some() {
            return Err(DriveError::Exists);
        }
        let node = self.get_mut(ino)?;
        if node.kind == Kind::Dir {
            return Err(DriveError::NotPermitted("hard links to directories"));
        }
        if node.unlinked {
            return Err(DriveError::NotFound);
        }
        if node.links().len() + 1 >= LINK_MAX {
            return Err(DriveError::TooManyLinks);
        }
        node.links_mut().push(LinkName {
            id,
            parent,
            name: name.into(),
        });
        node.ctime = now;
        self.index_id(id, ino);
        self.link(parent, name, ino, false, now);
        self.journal_changed(ino);
        Ok(())
    }

    /// Whether the name `id` shares its inode with other names.
    pub fn is_linked(&self, id: NodeId) -> bool {
        self.ino_of(id)
            .and_then(|ino| self.nodes.get(&ino))
            .is_some_and(|n| !n.links().is_empty())
    }

    /// Gives the name `id` an inode of its own, with the attributes, content state and
    /// version of the one it shared, and backing key `backing_id`; the other names keep
    /// the old inode. Returns the new inode.
    pub fn split(&mut self, id: NodeId, backing_id: NodeId, now: Nanos) -> DriveResult<Ino> {
        if self.backing_in_use(backing_id) {
            return Err(DriveError::Invalid("backing key in use"));
        }
        let ino = self.ino_of(id).ok_or(DriveError::NotFound)?;
        let node = self.get_mut(ino)?;
        let index = node
            .names()
            .position(|(i, _, _)| i == id)
            .ok_or(DriveError::NotFound)?;
        let gone = node
            .take_name(index)
            .ok_or(DriveError::Invalid("a node with one name is not split"))?;
        node.ctime = now;
        let mut split = Node::new(
            id,
            gone.parent,
            gone.name.clone(),
            node.kind,
            node.perm(),
            node.uid,
            node.gid,
            now,
        );
        split.set_backing_id(backing_id);
        split.size = node.size;
        split.atime = node.atime;
        split.mtime = node.mtime;
        split.set_target(node.target());
        split.set_rdev(node.rdev());
        split.set_xattrs(node.xattrs().clone());
        for &(start, end) in node.dirty().ranges() {
            split.mark_dirty(start, end);
        }
        split.pending = node.pending.clone();
        split.set_version(node.version());
        split.set_recorded_stamp(node.recorded_stamp());
        split.set_blocks(None);
        let new_ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(new_ino, Box::new(split));
        // The old inode no longer bears the name (its entry is dropped), and may have
        // promoted another to primary away from its key.
        self.id_remove(id, ino);
        self.index_id(id, new_ino);
        self.index_backing(ino);
        // The name's entry now leads to the new inode.
        let hash = self.names.hash_one(&gone.name[..]);
        if let Some(d) = self.dirs.get_mut(&gone.parent)
            && let Some(entry) = d.entries.find_mut(hash, |&e| e == (hash, ino))
        {
            entry.1 = new_ino;
        }
        self.journal_changed(ino);
        self.journal_changed(new_ino);
        Ok(new_ino)
    }

    /// A key for a new backing file: `id` unless a node still holds a file by that key.
    pub fn backing_key_for(&self, id: NodeId) -> NodeId {
        if self.backing_in_use(id) {
            NodeId::random()
        } else {
            id
        }
    }

    /// Adds `n` kernel references to `ino` (every entry reply adds one).
    pub fn add_lookup(&mut self, ino: Ino, n: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.set_lookups(node.lookups().saturating_add(n));
        }
    }

    /// Drops `n` kernel references; an unlinked node with none left is reaped.
    pub fn forget(&mut self, ino: Ino, n: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.set_lookups(node.lookups().saturating_sub(n));
            self.reap_if_unused(ino);
        }
    }

    /// Counts an open handle.
    pub fn open(&mut self, ino: Ino) -> DriveResult<&mut Node> {
        self.watch(ino);
        let node = self.get_mut(ino)?;
        node.add_open();
        Ok(node)
    }

    /// Drops an open handle; an unlinked node with none left is reaped.
    pub fn close(&mut self, ino: Ino, mode: IoMode, writable: bool) {
        self.watch(ino);
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.release_open(mode, writable);
            self.reap_if_unused(ino);
        }
    }

    /// The inode of node `id`, if it is in the namespace.
    pub fn ino_of(&self, id: NodeId) -> Option<Ino> {
        let ino = self.id_get(id)?;
        self.nodes.get(&ino).filter(|n| !n.unlinked).map(|_| ino)
    }

    /// Removes the name `parent`/`name` of `ino` (whatever its kind; a directory must be
    /// empty); the inode's other names stay.
    pub fn remove_name(
        &mut self,
        ino: Ino,
        parent: Ino,
        name: &[u8],
        now: Nanos,
    ) -> DriveResult<()> {
        self.get(ino)?;
        if ino == ROOT_INO {
            return Err(DriveError::Invalid("the root cannot be removed"));
        }
        if !self.is_empty_dir(ino) {
            return Err(DriveError::NotEmpty);
        }
        self.detach_name(ino, parent, name, now);
        Ok(())
    }

    /// Allocates a node id not used by any node.
    pub fn fresh_id(&self) -> NodeId {
        NodeId::random()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> Tree {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT_INO,
            Node::new(
                NodeId::ROOT,
                ROOT_INO,
                Vec::new(),
                Kind::Dir,
                0o755,
                0,
                0,
                0,
            ),
        );
        Tree::from_nodes(nodes)
    }

    fn add(t: &mut Tree, parent: Ino, name: &str, kind: Kind) -> Ino {
        let node = Node::new(NodeId::random(), 0, Vec::new(), kind, 0o644, 0, 0, 0);
        t.insert(parent, name.as_bytes(), node, 1).unwrap()
    }

    #[test]
    fn insert_refuses_taken_and_bad_names() {
        let mut t = tree();
        add(&mut t, ROOT_INO, "a", Kind::File);
        let n = Node::new(NodeId::random(), 0, Vec::new(), Kind::File, 0o644, 0, 0, 0);
        assert!(matches!(
            t.insert(ROOT_INO, b"a", n.clone(), 1),
            Err(DriveError::Exists)
        ));
        assert!(matches!(
            t.insert(ROOT_INO, &[b'x'; 256], n.clone(), 1),
            Err(DriveError::NameTooLong)
        ));
        let file = t.lookup(ROOT_INO, b"a").unwrap();
        assert!(matches!(
            t.insert(file, b"b", n, 1),
            Err(DriveError::NotDir)
        ));
    }

    #[test]
    fn rmdir_and_unlink_check_kinds_and_emptiness() {
        let mut t = tree();
        let d = add(&mut t, ROOT_INO, "d", Kind::Dir);
        add(&mut t, d, "f", Kind::File);
        assert!(matches!(
            t.remove_dir(ROOT_INO, b"d", 2),
            Err(DriveError::NotEmpty)
        ));
        assert!(matches!(
            t.remove_file(ROOT_INO, b"d", 2),
            Err(DriveError::IsDir)
        ));
        assert!(matches!(t.remove_dir(d, b"f", 2), Err(DriveError::NotDir)));
        t.remove_file(d, b"f", 2).unwrap();
        t.remove_dir(ROOT_INO, b"d", 2).unwrap();
        assert!(matches!(
            t.lookup(ROOT_INO, b"d"),
            Err(DriveError::NotFound)
        ));
        assert_eq!(t.subdirs(ROOT_INO), 0);
    }

    #[test]
    fn rename_follows_posix() {
        let mut t = tree();
        let d = add(&mut t, ROOT_INO, "d", Kind::Dir);
        let sub = add(&mut t, d, "sub", Kind::Dir);
        let f = add(&mut t, ROOT_INO, "f", Kind::File);
        let g = add(&mut t, ROOT_INO, "g", Kind::File);
        add(&mut t, sub, "x", Kind::File);
        // Into itself.
        assert!(matches!(
            t.rename(ROOT_INO, b"d", sub, b"d2", RenameMode::Replace, 2),
            Err(DriveError::Invalid(_))
        ));
        // File over directory and directory over file.
        assert!(matches!(
            t.rename(ROOT_INO, b"f", ROOT_INO, b"d", RenameMode::Replace, 2),
            Err(DriveError::IsDir)
        ));
        assert!(matches!(
            t.rename(ROOT_INO, b"d", ROOT_INO, b"f", RenameMode::Replace, 2),
            Err(DriveError::NotDir)
        ));
        // Over a non-empty directory.
        let e = add(&mut t, ROOT_INO, "e", Kind::Dir);
        assert!(matches!(
            t.rename(ROOT_INO, b"e", d, b"sub", RenameMode::Replace, 2),
            Err(DriveError::NotEmpty)
        ));
        // NOREPLACE.
        assert!(matches!(
            t.rename(ROOT_INO, b"f", ROOT_INO, b"g", RenameMode::NoReplace, 2),
            Err(DriveError::Exists)
        ));
        // Replace a file: the old target leaves the namespace.
        t.rename(ROOT_INO, b"f", ROOT_INO, b"g", RenameMode::Replace, 3)
            .unwrap();
        assert_eq!(t.lookup(ROOT_INO, b"g").unwrap(), f);
        assert!(t.get(g).is_err(), "unreferenced replaced file is reaped");
        // Exchange.
        t.rename(ROOT_INO, b"g", ROOT_INO, b"e", RenameMode::Exchange, 4)
            .unwrap();
        assert_eq!(t.lookup(ROOT_INO, b"e").unwrap(), f);
        assert_eq!(t.lookup(ROOT_INO, b"g").unwrap(), e);
        assert!(matches!(
            t.rename(ROOT_INO, b"g", ROOT_INO, b"zz", RenameMode::Exchange, 5),
            Err(DriveError::NotFound)
        ));
        // Directory move keeps subdir counts right.
        t.rename(ROOT_INO, b"g", d, b"e", RenameMode::Replace, 6)
            .unwrap();
        assert_eq!(t.subdirs(d), 2);
        assert_eq!(t.subdirs(ROOT_INO), 1);
    }

    #[test]
    fn hard_links_share_one_inode_and_unlink_removes_one_name() {
        let mut t = tree();
        let d = add(&mut t, ROOT_INO, "d", Kind::Dir);
        let f = add(&mut t, ROOT_INO, "f", Kind::File);
        let first = t.get(f).unwrap().id();
        let second = NodeId::random();
        t.add_link(f, d, b"g", second, 2).unwrap();
        assert_eq!(t.lookup(d, b"g").unwrap(), f);
        assert_eq!(t.get(f).unwrap().nlink(), 2);
        assert_eq!(t.get(f).unwrap().ctime, 2, "link changes ctime");
        assert_eq!(t.ino_of(second), Some(f));
        assert!(matches!(
            t.add_link(f, d, b"g", NodeId::random(), 3),
            Err(DriveError::Exists)
        ));
        assert!(matches!(
            t.add_link(d, ROOT_INO, b"d2", NodeId::random(), 3),
            Err(DriveError::NotPermitted(_))
        ));
        t.remove_file(ROOT_INO, b"f", 4).unwrap();
        let n = t.get(f).unwrap();
        assert_eq!(
            (n.id(), n.parent, n.name.as_bytes()),
            (second, d, &b"g"[..])
        );
        assert_eq!(
            n.backing_id(),
            first,
            "the backing key outlives the first name"
        );
        assert_eq!((n.nlink(), n.ctime), (1, 4));
        assert_eq!(t.ino_of(first), None);
        assert!(matches!(
            t.lookup(ROOT_INO, b"f"),
            Err(DriveError::NotFound)
        ));
        let j = t.drain();
        assert!(j.changed.contains(&f) && j.deleted.is_empty() && j.reaped.is_empty());
    }

    #[test]
    fn rename_over_a_link_and_between_names_of_one_inode() {
        let mut t = tree();
        let f = add(&mut t, ROOT_INO, "f", Kind::File);
        let h = add(&mut t, ROOT_INO, "h", Kind::File);
        let g_id = NodeId::random();
        t.add_link(f, ROOT_INO, b"g", g_id, 2).unwrap();
        // Onto another name of the same inode: nothing happens, unless NOREPLACE.
        t.rename(ROOT_INO, b"g", ROOT_INO, b"f", RenameMode::Replace, 3)
            .unwrap();
        assert_eq!(t.lookup(ROOT_INO, b"g").unwrap(), f);
        assert_eq!(t.lookup(ROOT_INO, b"f").unwrap(), f);
        assert!(matches!(
            t.rename(ROOT_INO, b"g", ROOT_INO, b"f", RenameMode::NoReplace, 3),
            Err(DriveError::Exists)
        ));
        // Over one name of a linked inode: that name goes, the other stays.
        t.rename(ROOT_INO, b"h", ROOT_INO, b"g", RenameMode::Replace, 4)
            .unwrap();
        assert_eq!(t.lookup(ROOT_INO, b"g").unwrap(), h);
        assert_eq!(t.get(f).unwrap().nlink(), 1);
        assert_eq!(t.ino_of(g_id), None);
        // Moving a link moves that name only.
        let k_id = NodeId::random();
        t.add_link(f, ROOT_INO, b"k", k_id, 5).unwrap();
        t.rename(ROOT_INO, b"k", ROOT_INO, b"k2", RenameMode::Replace, 6)
            .unwrap();
        let n = t.get(f).unwrap();
        assert_eq!(n.name.as_bytes(), b"f");
        assert_eq!(n.name_of(k_id), Some((ROOT_INO, &b"k2"[..])));
    }

    #[test]
    fn split_gives_one_name_its_own_inode() {
        let mut t = tree();
        let f = add(&mut t, ROOT_INO, "f", Kind::File);
        let g_id = NodeId::random();
        t.add_link(f, ROOT_INO, b"g", g_id, 2).unwrap();
        t.get_mut(f).unwrap().set_perm(0o600);
        let key = t.backing_key_for(g_id);
        assert_eq!(key, g_id);
        let first = t.get(f).unwrap().id();
        assert_ne!(
            t.backing_key_for(first),
            first,
            "a key in use is not handed out again"
        );
        let g = t.split(g_id, key, 3).unwrap();
        assert_ne!(g, f);
        assert_eq!(t.lookup(ROOT_INO, b"g").unwrap(), g);
        assert_eq!(t.lookup(ROOT_INO, b"f").unwrap(), f);
        assert_eq!(
            (t.get(g).unwrap().perm(), t.get(g).unwrap().nlink()),
            (0o600, 1)
        );
        assert_eq!(t.get(f).unwrap().nlink(), 1);
        assert_eq!(t.ino_of(g_id), Some(g));
        assert!(matches!(
            t.split(g_id, NodeId::random(), 4),
            Err(DriveError::Invalid(_))
        ));
    }

    #[test]
    fn unlinked_open_file_lives_until_closed_and_forgotten() {
        let mut t = tree();
        let f = add(&mut t, ROOT_INO, "f", Kind::File);
        t.add_lookup(f, 1);
        t.open(f).unwrap();
        t.remove_file(ROOT_INO, b"f", 2).unwrap();
        assert!(t.get(f).is_ok());
        t.close(f, IoMode::Cached, false);
        assert!(t.get(f).is_ok(), "kernel still holds a reference");
        t.forget(f, 1);
        assert!(t.get(f).is_err());
        let j = t.drain();
        assert_eq!(j.deleted, vec![f]);
        assert_eq!(j.reaped.len(), 1);
    }

    #[test]
    fn entries_list_every_name_once_in_name_order() {
        let mut t = tree();
        let d = add(&mut t, ROOT_INO, "d", Kind::Dir);
        let b = add(&mut t, d, "b", Kind::File);
        let a = add(&mut t, d, "a", Kind::File);
        t.add_link(b, d, b"c", NodeId::random(), 2).unwrap();
        assert_eq!(
            t.entries(d),
            vec![(b"a".to_vec(), a), (b"b".to_vec(), b), (b"c".to_vec(), b)]
        );
        t.rename(d, b"c", ROOT_INO, b"c2", RenameMode::Replace, 3)
            .unwrap();
        assert_eq!(t.lookup(ROOT_INO, b"c2").unwrap(), b);
        assert_eq!(t.entries(d), vec![(b"a".to_vec(), a), (b"b".to_vec(), b)]);
        t.remove_file(d, b"b", 4).unwrap();
        t.remove_file(d, b"a", 4).unwrap();
        assert!(t.is_empty_dir(d));
        assert_eq!(t.lookup(ROOT_INO, b"c2").unwrap(), b);
        assert_eq!(t.get(b).unwrap().name.as_bytes(), b"c2");
    }

    #[test]
    fn backing_keys_stay_taken_while_a_node_holds_them() {
        let mut t = tree();
        let f = add(&mut t, ROOT_INO, "f", Kind::File);
        let first = t.get(f).unwrap().id();
        let g_id = NodeId::random();
        t.add_link(f, ROOT_INO, b"g", g_id, 2).unwrap();
        // The primary name goes: the link is promoted and the inode keeps its key.
        t.remove_file(ROOT_INO, b"f", 3).unwrap();
        assert_eq!(t.get(f).unwrap().backing_id(), first);
        assert_ne!(t.backing_key_for(first), first);
        assert_eq!(t.backing_key_for(g_id), g_id, "a name's id is not a key");

        // An open file is unlinked and its id comes back as a new node (a remote create):
        // the old node holds the key until it is reaped.
        let h = add(&mut t, ROOT_INO, "h", Kind::File);
        let h_id = t.get(h).unwrap().id();
        t.open(h).unwrap();
        t.remove_file(ROOT_INO, b"h", 4).unwrap();
        let key = t.backing_key_for(h_id);
        assert_ne!(key, h_id);
        let mut again = Node::new(h_id, 0, Vec::new(), Kind::File, 0o644, 0, 0, 0);
        again.set_backing_id(key);
        let h2 = t.insert(ROOT_INO, b"h", again, 5).unwrap();
        assert_eq!(t.ino_of(h_id), Some(h2));
        assert_ne!(t.backing_key_for(h_id), h_id);
        assert_ne!(t.backing_key_for(key), key);
        t.close(h, IoMode::Cached, false);
        assert!(t.get(h).is_err(), "reaped");
        assert_eq!(t.backing_key_for(h_id), h_id);
        assert_ne!(t.backing_key_for(key), key);

        // A tree loaded from nodes indexes the same keys.
        let nodes: HashMap<Ino, Node> = t.iter().map(|(&i, n)| (i, n.clone())).collect();
        let loaded = Tree::from_nodes(nodes);
        assert_ne!(loaded.backing_key_for(first), first);
        assert_ne!(loaded.backing_key_for(key), key);
        assert_eq!(loaded.backing_key_for(g_id), g_id);
        assert_eq!(loaded.lookup(ROOT_INO, b"g").unwrap(), f);
    }
}
