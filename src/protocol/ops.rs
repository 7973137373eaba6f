//! The ops of a difference transaction, as sent in a commit and as returned by the change log.

use serde::{Deserialize, Serialize};

use super::node::{deserialize_xattrs, deserialize_xattrs_opt};
use super::{Name, NodeId, NodeKind, Seq, Xattrs};
use crate::chunking::{Manifest, ManifestEdit, ManifestId};

/// The `op` tags this format version knows; anything else is refused as `unknown_op`.
pub const KNOWN_OPS: [&str; 5] = ["create", "write", "set_attrs", "move", "delete"];

/// One op of a difference transaction. JSON: an object with `"op": "<tag>"` beside the fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// A new node.
    Create(CreateOp),
    /// New content for a file, as an edit of its current manifest.
    Write(WriteOp),
    /// New mode, mtime and/or extended attributes.
    SetAttrs(SetAttrsOp),
    /// A rename and/or move to another directory.
    Move(MoveOp),
    /// Removal of a node (a directory only once it has no children).
    Delete(DeleteOp),
}

impl Op {
    /// The node the op is about.
    pub fn node(&self) -> NodeId {
        match self {
            Op::Create(op) => op.node,
            Op::Write(op) => op.node,
            Op::SetAttrs(op) => op.node,
            Op::Move(op) => op.node,
            Op::Delete(op) => op.node,
        }
    }

    /// The version of the node the device based the op on; `None` for a create.
    pub fn base(&self) -> Option<Seq> {
        match self {
            Op::Create(_) => None,
            Op::Write(op) => Some(op.base),
            Op::SetAttrs(op) => Some(op.base),
            Op::Move(op) => Some(op.base),
            Op::Delete(op) => Some(op.base),
        }
    }
}

/// Creates a node. Files carry their full manifest and its id; symlinks their target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateOp {
    /// The new node's id, minted by the device.
    pub node: NodeId,
    /// The directory it goes in.
    pub parent: NodeId,
    /// Its name there.
    pub name: Name,
    /// File, directory or symlink.
    pub kind: NodeKind,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime: i64,
    /// Extended attributes.
    #[serde(
        default,
        skip_serializing_if = "Xattrs::is_empty",
        deserialize_with = "deserialize_xattrs"
    )]
    pub xattrs: Xattrs,
    /// Full content manifest (files only; every chunk must be held by the volume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<Manifest>,
    /// Id of `manifest` (files only); the server recomputes and compares it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_id: Option<ManifestId>,
    /// Link target (symlinks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// Replaces a file's content: `edit` applies to the manifest of version `base`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteOp {
    /// The file.
    pub node: NodeId,
    /// The version the edit is against.
    pub base: Seq,
    /// The new manifest as an edit of the base manifest.
    pub edit: ManifestEdit,
    /// Size of the resulting content, checked by the server.
    pub size: u64,
    /// Id of the resulting manifest, checked by the server.
    pub manifest_id: ManifestId,
}

/// Sets attributes; absent fields are left as they are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttrsOp {
    /// The node.
    pub node: NodeId,
    /// The version the change is against.
    pub base: Seq,
    /// New permission bits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// New modification time (ns since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<i64>,
    /// New extended attributes: the full map, replacing the old one.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "deserialize_xattrs_opt"
    )]
    pub xattrs: Option<Xattrs>,
}

/// Moves and/or renames a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveOp {
    /// The node.
    pub node: NodeId,
    /// The version the move is against.
    pub base: Seq,
    /// The directory it goes to (may be its current one).
    pub new_parent: NodeId,
    /// Its name there.
    pub new_name: Name,
}

/// Deletes a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteOp {
    /// The node.
    pub node: NodeId,
    /// The version the delete is against.
    pub base: Seq,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_use_an_op_tag() {
        let op = Op::Move(MoveOp {
            node: NodeId::from_u128(1),
            base: Seq(3),
            new_parent: NodeId::ROOT,
            new_name: Name::new("b").unwrap(),
        });
        let json = serde_json::to_value(&op).unwrap();
        assert_eq!(json["op"], "move");
        assert_eq!(json["base"], 3);
        assert_eq!(serde_json::from_value::<Op>(json).unwrap(), op);
        for tag in KNOWN_OPS {
            // Every known tag is a variant: a bare object with it fails on fields, not the tag.
            let err = serde_json::from_str::<Op>(&format!(r#"{{"op":"{tag}"}}"#)).unwrap_err();
            assert!(err.to_string().contains("missing field"), "{tag}: {err}");
        }
    }
}
