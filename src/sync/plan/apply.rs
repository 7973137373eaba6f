//! Applying plan steps to an in-memory tree (the engine's copy of a side, and tests).

use super::steps::{LocalStep, PushStep};
use super::tree::{Content, Tree, TreeError};

impl Tree {
    /// Applies one step of [`super::Plan::to_local`], checked as the tree checks any change.
    pub fn apply_local(&mut self, step: &LocalStep) -> Result<(), TreeError> {
        match step {
            LocalStep::Create { node, entry } => self.insert(*node, entry.clone()),
            LocalStep::CopyAside {
                source,
                node,
                entry,
            } => {
                if self.get(*source).is_none() {
                    return Err(TreeError::Missing(*source));
                }
                self.insert(*node, entry.clone())
            }
            LocalStep::UpdateContent { node, content } => self.set_content(*node, content.clone()),
            LocalStep::SetAttrs {
                node,
                mode,
                mtime,
                xattrs,
            } => self.set_attrs(*node, *mode, *mtime, xattrs.clone()),
            LocalStep::Move { node, parent, name } => self.move_node(*node, *parent, name.clone()),
            LocalStep::Delete { node } => self.remove(*node).map(|_| ()),
        }
    }

    /// Applies one step of [`super::Plan::to_remote`] as the server would.
    pub fn apply_push(&mut self, step: &PushStep) -> Result<(), TreeError> {
        match step {
            PushStep::Create { node, entry } => self.insert(*node, entry.clone()),
            PushStep::Write {
                node,
                manifest_id,
                size,
            } => self.set_content(
                *node,
                Content::File {
                    manifest_id: *manifest_id,
                    size: *size,
                },
            ),
            PushStep::SetAttrs {
                node,
                mode,
                mtime,
                xattrs,
            } => self.set_attrs(*node, *mode, *mtime, xattrs.clone()),
            PushStep::Move { node, parent, name } => self.move_node(*node, *parent, name.clone()),
            PushStep::Delete { node } => self.remove(*node).map(|_| ()),
        }
    }
}
