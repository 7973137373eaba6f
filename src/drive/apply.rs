//! Changes that arrive from other devices: applied to the tree without counting as local
//! changes, with the kernel's caches invalidated so `ls`, `stat` and `cat` see them at once.
//!
//! Content arrives as a staged file (written and fsynced by the sync engine in the staging
//! directory) that is renamed over the backing file: a program that has the file open keeps
//! reading the old content until it reopens it.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::protocol::NodeId;

use super::backing;
use super::error::{DriveError, DriveResult};
use super::node::{Ino, Kind, Nanos, Node, now};
use super::{Drive, lock};

/// A node as the sync engine sees it: identity, place, attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    /// Mount-local inode.
    pub ino: Ino,
    /// Stable id.
    pub id: NodeId,
    /// Parent's id.
    pub parent: NodeId,
    /// Entry name.
    pub name: Vec<u8>,
    /// Kind.
    pub kind: Kind,
    /// Permission bits.
    pub perm: u32,
    /// Modification time.
    pub mtime: Nanos,
    /// Extended attributes.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Size (files).
    pub size: u64,
    /// Symlink target.
    pub target: Vec<u8>,
    /// Last recorded local version number (files).
    pub version: u64,
    /// Whether new content cannot replace the file now: writes not yet recorded, a writer
    /// open, or readers the kernel serves from the current backing file.
    pub busy: bool,
}

/// Attributes set by another device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteAttrs {
    /// Permission bits.
    pub perm: u32,
    /// Modification time.
    pub mtime: Nanos,
    /// Extended attributes (the whole set).
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// What a node created by another device holds.
#[derive(Debug)]
pub enum RemoteContent<'a> {
    /// A directory.
    Dir,
    /// A file whose content is staged at this path.
    File(&'a Path),
    /// A symlink.
    Symlink(&'a [u8]),
}

/// The views of every name of `n` (inode `ino`): none for the root or a node out of the
/// namespace.
fn views_of<'a>(
    t: &'a super::tree::Tree,
    ino: Ino,
    n: &'a Node,
) -> impl Iterator<Item = NodeView> + 'a {
    n.names()
        .filter_map(move |(id, parent, name)| view_of(t, ino, n, id, parent, name))
}

/// The view of the name `id` (in `parent`, called `name`) of `n` (inode `ino`), unless it is
/// the root or out of the namespace.
fn view_of(
    t: &super::tree::Tree,
    ino: Ino,
    n: &Node,
    id: NodeId,
    parent: Ino,
    name: &[u8],
) -> Option<NodeView> {
    if ino == super::ROOT_INO || n.unlinked {
        return None;
    }
    Some(NodeView {
        ino,
        id,
        parent: t.get(parent).ok()?.id(),
        name: name.to_vec(),
        kind: n.kind,
        perm: n.perm(),
        mtime: n.mtime,
        xattrs: n.xattrs().clone(),
        size: n.size,
        target: n.target().to_vec(),
        version: n.version(),
        busy: !n.dirty().is_empty()
            || n.open_by_mode().writers > 0
            || n.open_by_mode().passthrough > 0,
    })
}

impl Drive {
    /// Every name in the namespace but the root's, for the sync engine's local tree: each
    /// name of a hard-linked inode is a node of its own, with the inode's content.
    pub fn view(&self) -> Vec<NodeView> {
        let t = lock(&self.tree);
        let mut out: Vec<NodeView> = t
            .iter()
            .flat_map(|(&ino, n)| views_of(&t, ino, n))
            .collect();
        out.sort_by_key(|v| (v.ino, v.id));
        out
    }

    /// The views of every name of `inos` (those still in the namespace), by inode and id.
    pub fn views_of(&self, inos: &[Ino]) -> Vec<NodeView> {
        let t = lock(&self.tree);
        let mut out: Vec<NodeView> = inos
            .iter()
            .filter_map(|&ino| Some((ino, t.get(ino).ok()?)))
            .flat_map(|(ino, n)| views_of(&t, ino, n))
            .collect();
        out.sort_by_key(|v| (v.ino, v.id));
        out.dedup_by_key(|v| (v.ino, v.id));
        out
    }

    /// The inodes whose views may have changed since the last call: the sync engine looks at
    /// these only. `None` on the first call of this drive's life (a new mount): nothing was
    /// noted before it, so the caller must look at every node ([`Drive::view`]).
    pub fn take_changes(&self) -> Option<Vec<Ino>> {
        let watched = lock(&self.tree).take_watched()?;
        let mut inos: Vec<Ino> = watched.into_iter().collect();
        inos.sort_unstable();
        Some(inos)
    }

    /// The view of node `id` (one name), if it is in the namespace.
    pub fn node_view(&self, id: NodeId) -> Option<NodeView> {
        let t = lock(&self.tree);
        let ino = t.ino_of(id)?;
        let n = t.get(ino).ok()?;
        let (parent, name) = n.name_of(id)?;
        view_of(&t, ino, n, id, parent, name)
    }

    /// The inode of node `id`, if it is in the namespace.
    pub fn ino_of(&self, id: NodeId) -> Option<Ino> {
        lock(&self.tree).ino_of(id)
    }

    /// Where the sync engine stages content before [`Drive::apply_content`] renames it in
    /// (on the same filesystem as the backing files, so the rename is atomic).
    pub fn staging_dir(&self) -> DriveResult<PathBuf> {
        let dir = self.state.root().join("staging");
        crate::private::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Opens the backing file of file `id` for reading (the base of a remote change).
    pub fn open_content(&self, id: NodeId) -> DriveResult<File> {
        let key = {
            let t = lock(&self.tree);
            let ino = t.ino_of(id).ok_or(DriveError::NotFound)?;
            t.get(ino)?.backing_id()
        };
        Ok(File::open(self.backing.path(key))?)
    }

    fn resolve(&self, id: NodeId) -> DriveResult<Ino> {
        lock(&self.tree).ino_of(id).ok_or(DriveError::NotFound)
    }

    /// Node `id`'s inode, directory and name (that name's, of a hard-linked inode), read
    /// under one lock.
    fn place_of(&self, id: NodeId) -> DriveResult<(Ino, Ino, Vec<u8>)> {
        let t = lock(&self.tree);
        let ino = t.ino_of(id).ok_or(DriveError::NotFound)?;
        let (parent, name) = t.get(ino)?.name_of(id).ok_or(DriveError::NotFound)?;
        Ok((ino, parent, name.to_vec()))
    }

    /// Creates node `id` as another device did.
    pub fn apply_create(
        &self,
        id: NodeId,
        parent: NodeId,
        name: &[u8],
        attrs: &RemoteAttrs,
        content: RemoteContent<'_>,
    ) -> DriveResult<Ino> {
        let parent_ino = self.resolve(parent)?;
        let (kind, owner) = {
            let t = lock(&self.tree);
            let p = t.get(parent_ino)?;
            let kind = match content {
                RemoteContent::Dir => Kind::Dir,
                RemoteContent::File(_) => Kind::File,
                RemoteContent::Symlink(_) => Kind::Symlink,
            };
            // Files from elsewhere belong to whoever owns the directory they land in.
            (kind, (p.uid, p.gid))
        };
        let stamp = now();
        let mut node = Node::new(
            id,
            parent_ino,
            Vec::new(),
            kind,
            attrs.perm,
            owner.0,
            owner.1,
            stamp,
        );
        node.mtime = attrs.mtime;
        node.set_xattrs(attrs.xattrs.clone());
        match content {
            RemoteContent::Dir => {}
            RemoteContent::Symlink(target) => {
                node.set_target(target);
                node.size = target.len() as u64;
            }
            RemoteContent::File(staged) => {
                // The id's own key, unless a node still holds a file by it (this device
                // unlinked that name while the inode lived on under another, or open).
                node.set_backing_id(lock(&self.tree).backing_key_for(id));
                let path = self.backing.place(staged, node.backing_id())?;
                self.note_created();
                let (len, mtime, blocks) = backing::stamp_of(&std::fs::metadata(&path)?);
                node.size = len;
                node.set_blocks(Some(blocks));
                node.set_recorded_stamp(Some((len, mtime)));
            }
        }
        let key = node.backing_id();
        let inserted = self.mutate(|t| t.insert(parent_ino, name, node, stamp));
        if inserted.is_err() && kind == Kind::File {
            // Keep nothing behind for a node that does not exist.
            let _ = self.backing.remove(key);
        }
        let ino = inserted?;
        if let Some(kc) = self.kernel_cache() {
            kc.invalidate_entry(parent_ino, name);
            kc.invalidate_inode(parent_ino);
        }
        Ok(ino)
    }

    /// Replaces the content of file `id` with the staged file (already fsynced by the caller).
    /// A name of a hard-linked inode gets an inode of its own with that content; the other
    /// names keep theirs.
    pub fn apply_content(
        &self,
        id: NodeId,
        staged: &Path,
        mtime: Option<Nanos>,
    ) -> DriveResult<()> {
        let ino = self.resolve(id)?;
        let key = {
            let t = lock(&self.tree);
            let n = t.get(ino)?;
            if n.kind != Kind::File {
                return Err(DriveError::Invalid("content for a node that is not a file"));
            }
            if n.pending.is_some() {
                // A recorded local version the server has not taken: replacing it loses bytes.
                return Err(DriveError::LocalChanges);
            }
            if !n.dirty().is_empty() || n.open_by_mode().writers > 0 {
                // A program is writing it: the local version keeps the name until closed.
                return Err(DriveError::Busy);
            }
            if n.open_by_mode().passthrough > 0 {
                // The kernel reads it through the old backing file and would give every new
                // open that file too: the new content waits until the readers close.
                return Err(DriveError::Busy);
            }
            n.backing_id()
        };
        if lock(&self.tree).is_linked(id) {
            return self.split_with_content(id, ino, staged, mtime);
        }
        let path = self.backing.place(staged, key)?;
        File::open(self.state.content_dir())?.sync_all()?;
        let (len, stamp_mtime, blocks) = backing::stamp_of(&std::fs::metadata(&path)?);
        let stamp = now();
        self.mutate(|t| {
            let n = t.get_mut(ino)?;
            n.size = len;
            n.set_blocks(Some(blocks));
            if let Some(mtime) = mtime {
                n.mtime = mtime;
            }
            n.ctime = stamp;
            n.set_recorded_stamp(Some((len, stamp_mtime)));
            t.touch(ino);
            Ok(())
        })?;
        if let Some(kc) = self.kernel_cache() {
            kc.invalidate_inode(ino);
        }
        Ok(())
    }

    /// Gives the name `id` of hard-linked inode `ino` an inode of its own holding the staged
    /// content; the other names keep the old inode and its content.
    fn split_with_content(
        &self,
        id: NodeId,
        ino: Ino,
        staged: &Path,
        mtime: Option<Nanos>,
    ) -> DriveResult<()> {
        let key = lock(&self.tree).backing_key_for(id);
        let path = self.backing.place(staged, key)?;
        File::open(self.state.content_dir())?.sync_all()?;
        let (len, stamp_mtime, blocks) = backing::stamp_of(&std::fs::metadata(&path)?);
        let stamp = now();
        let split = self.mutate(|t| {
            let new = t.split(id, key, stamp)?;
            let n = t.get_mut(new)?;
            n.size = len;
            n.set_blocks(Some(blocks));
            if let Some(mtime) = mtime {
                n.mtime = mtime;
            }
            n.take_dirty();
            n.pending = None;
            n.set_recorded_stamp(Some((len, stamp_mtime)));
            Ok((n.parent, n.name.to_vec()))
        });
        self.after_split(key, ino, split)
    }

    /// Gives the name `id` of hard-linked inode `ino` an inode of its own with a copy of the
    /// content (its attributes are about to change alone).
    fn split_with_copy(&self, id: NodeId, ino: Ino) -> DriveResult<()> {
        let (kind, old_key, key) = {
            let t = lock(&self.tree);
            let n = t.get(ino)?;
            if n.kind == Kind::File && (!n.dirty().is_empty() || n.open_by_mode().writers > 0) {
                // A copy taken now could be torn by the writer.
                return Err(DriveError::Busy);
            }
            (n.kind, n.backing_id(), t.backing_key_for(id))
        };
        let mut copied = None;
        if kind == Kind::File {
            let part = self.staging_dir()?.join(format!("split-{key}.part"));
            {
                let mut from = File::open(self.backing.path(old_key))?;
                let mut to = crate::private::create_file(&part)?;
                std::io::copy(&mut from, &mut to)?;
                to.sync_all()?;
            }
            let path = self.backing.place(&part, key)?;
            File::open(self.state.content_dir())?.sync_all()?;
            copied = Some(backing::stamp_of(&std::fs::metadata(&path)?));
        }
        let stamp = now();
        let split = self.mutate(|t| {
            let new = t.split(id, key, stamp)?;
            let n = t.get_mut(new)?;
            if let Some((len, stamp_mtime, blocks)) = copied {
                n.size = len;
                n.set_blocks(Some(blocks));
                n.set_recorded_stamp(Some((len, stamp_mtime)));
            }
            Ok((n.parent, n.name.to_vec()))
        });
        if kind == Kind::File {
            self.after_split(key, ino, split)
        } else {
            split.map(|_| ())
        }
    }

    /// After a split: drops the new backing file if it failed, else tells the kernel that
    /// the name leads to another inode and the old one lost a link.
    fn after_split(
        &self,
        key: NodeId,
        ino: Ino,
        split: DriveResult<(Ino, Vec<u8>)>,
    ) -> DriveResult<()> {
        let (parent, name) = match split {
            Ok(place) => place,
            Err(e) => {
                let _ = self.backing.remove(key);
                return Err(e);
            }
        };
        if let Some(kc) = self.kernel_cache() {
            kc.invalidate_entry(parent, &name);
            kc.invalidate_inode(ino);
        }
        Ok(())
    }

    /// Sets attributes of node `id` as another device did. A name of a hard-linked inode
    /// whose attributes change gets an inode of its own (with a copy of the content) first.
    pub fn apply_attrs(&self, id: NodeId, attrs: &RemoteAttrs) -> DriveResult<()> {
        let (linked, same) = {
            let t = lock(&self.tree);
            let ino = t.ino_of(id).ok_or(DriveError::NotFound)?;
            let n = t.get(ino)?;
            let same = n.perm() == attrs.perm & 0o7777
                && n.mtime == attrs.mtime
                && *n.xattrs() == attrs.xattrs;
            (!n.links().is_empty(), same)
        };
        if linked && !same {
            let ino = self.resolve(id)?;
            self.split_with_copy(id, ino)?;
        }
        let ino = self.resolve(id)?;
        let stamp = now();
        self.mutate(|t| {
            let n = t.get_mut(ino)?;
            n.set_perm(attrs.perm & 0o7777);
            n.mtime = attrs.mtime;
            n.set_xattrs(attrs.xattrs.clone());
            n.ctime = stamp;
            t.touch(ino);
            Ok(())
        })?;
        if let Some(kc) = self.kernel_cache() {
            kc.invalidate_inode(ino);
        }
        Ok(())
    }

    /// Moves or renames node `id` as another device did.
    pub fn apply_move(&self, id: NodeId, new_parent: NodeId, new_name: &[u8]) -> DriveResult<()> {
        let (_, old_parent, old_name) = self.place_of(id)?;
        let new_parent_ino = self.resolve(new_parent)?;
        let stamp = now();
        self.mutate(|t| {
            t.rename(
                old_parent,
                &old_name,
                new_parent_ino,
                new_name,
                super::RenameMode::NoReplace,
                stamp,
            )
        })?;
        if let Some(kc) = self.kernel_cache() {
            kc.invalidate_entry(old_parent, &old_name);
            kc.invalidate_entry(new_parent_ino, new_name);
            kc.invalidate_inode(old_parent);
            kc.invalidate_inode(new_parent_ino);
        }
        Ok(())
    }

    /// Removes node `id` (a directory must be empty) as another device did.
    pub fn apply_delete(&self, id: NodeId) -> DriveResult<()> {
        let (ino, parent, name) = self.place_of(id)?;
        let stamp = now();
        let linked = self.mutate(|t| {
            let n = t.get(ino)?;
            // Edit against delete: the edit wins, checked under the lock that removes.
            let edited = !n.dirty().is_empty() || n.open_by_mode().writers > 0;
            if n.kind == Kind::File && (n.pending.is_some() || edited) {
                return Err(DriveError::LocalChanges);
            }
            let linked = !n.links().is_empty();
            t.remove_name(ino, parent, &name, stamp)?;
            Ok(linked)
        })?;
        if let Some(kc) = self.kernel_cache() {
            kc.invalidate_entry(parent, &name);
            kc.invalidate_inode(parent);
            if linked {
                // The other names stay, one link fewer.
                kc.invalidate_inode(ino);
            }
        }
        Ok(())
    }
}
