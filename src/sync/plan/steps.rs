//! What a plan says to do: steps for the local tree, steps to push, and the conflicts met.

use crate::chunking::ManifestId;
use crate::protocol::{Name, NodeId, Xattrs};

use super::tree::{Content, Entry};

/// One change to make in the local tree (the mount), valid when applied in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalStep {
    /// Create `node` as `entry` (a file's content comes from its manifest: fetch the chunks).
    Create {
        /// The node (an id from the remote tree, or one this device keeps).
        node: NodeId,
        /// Where it goes and what it is.
        entry: Entry,
    },
    /// Keep the local version of `source` as a NEW node `node`: copy `source`'s current local
    /// bytes (or link target). `entry` is that version, placed under a conflicted-copy name.
    CopyAside {
        /// The node whose local version is kept.
        source: NodeId,
        /// The new node's id.
        node: NodeId,
        /// The new node: `source`'s local entry under its new parent and name.
        entry: Entry,
    },
    /// Replace a file's content (fetch it by manifest) or a symlink's target.
    UpdateContent {
        /// The node.
        node: NodeId,
        /// Its new content (same kind).
        content: Content,
    },
    /// Set the attributes given; `None` leaves one as it is.
    SetAttrs {
        /// The node.
        node: NodeId,
        /// New permission bits.
        mode: Option<u32>,
        /// New modification time.
        mtime: Option<i64>,
        /// New extended attributes, the whole map.
        xattrs: Option<Xattrs>,
    },
    /// Move and/or rename.
    Move {
        /// The node.
        node: NodeId,
        /// Its new directory.
        parent: NodeId,
        /// Its new name there.
        name: Name,
    },
    /// Remove the node (a directory is empty by then).
    Delete {
        /// The node.
        node: NodeId,
    },
}

/// One local change to push: a protocol op without its base version, valid against the
/// remote tree when applied in order in one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushStep {
    /// Create `node` as `entry` (a file's full manifest goes with it). Also revives a node
    /// the server deleted, under the same id (an edit that won against a delete).
    Create {
        /// The node.
        node: NodeId,
        /// Where it goes and what it is.
        entry: Entry,
    },
    /// New content for a file, as an edit of its current manifest.
    Write {
        /// The file.
        node: NodeId,
        /// Id of the new manifest.
        manifest_id: ManifestId,
        /// New size in bytes.
        size: u64,
    },
    /// Set the attributes given; `None` leaves one as it is.
    SetAttrs {
        /// The node.
        node: NodeId,
        /// New permission bits.
        mode: Option<u32>,
        /// New modification time.
        mtime: Option<i64>,
        /// New extended attributes, the whole map.
        xattrs: Option<Xattrs>,
    },
    /// Move and/or rename.
    Move {
        /// The node.
        node: NodeId,
        /// Its new directory.
        parent: NodeId,
        /// Its new name there.
        name: Name,
    },
    /// Delete the node (a directory is empty on the server by then).
    Delete {
        /// The node.
        node: NodeId,
    },
}

/// Which side of a conflict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// This device (the local tree).
    Local,
    /// The server (the remote tree).
    Remote,
}

/// Why a local move was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MoveDropReason {
    /// The remote side moved the node too, elsewhere: remote wins.
    ConcurrentMove,
    /// Given the remote tree, the local move would put a directory inside itself.
    Cycle,
}

/// A conflict the plan resolved, for logs and status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Conflict {
    /// Both sides changed the content: the remote version kept `node`; the local version
    /// lives on as the new node `copy` named `name`.
    ContentCopied {
        /// The node whose content conflicted.
        node: NodeId,
        /// The conflicted copy.
        copy: NodeId,
        /// The copy's name.
        name: Name,
    },
    /// Two nodes wanted one name; the remote one kept it and `node` was renamed to `name`.
    NameCollision {
        /// The renamed node.
        node: NodeId,
        /// The other node, which kept the name.
        holder: NodeId,
        /// The new name of `node`.
        name: Name,
    },
    /// A local move of `node` was dropped.
    LocalMoveDropped {
        /// The node.
        node: NodeId,
        /// Why.
        reason: MoveDropReason,
    },
    /// A file or symlink deleted on `deleted_on` comes back: the other side changed it.
    EditBeatDelete {
        /// The node.
        node: NodeId,
        /// The side that deleted it.
        deleted_on: Side,
    },
    /// A directory deleted on `deleted_on` stays, for what the other side put in it.
    DirectoryKept {
        /// The directory.
        node: NodeId,
        /// The side that deleted it.
        deleted_on: Side,
    },
}

/// The outcome of planning: apply `to_local` to the local tree and push `to_remote`; both
/// lead to the same tree.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Steps for the local tree, in order.
    pub to_local: Vec<LocalStep>,
    /// Steps to push, in order (one transaction).
    pub to_remote: Vec<PushStep>,
    /// The conflicts resolved on the way (empty when the sides did not overlap).
    pub conflicts: Vec<Conflict>,
}

impl Plan {
    /// True when there is nothing to do on either side.
    pub fn is_empty(&self) -> bool {
        self.to_local.is_empty() && self.to_remote.is_empty()
    }
}
