//! The sync planner: a pure function of three trees (local, synced, remote) to a plan.
//!
//! No I/O, no clock, no threads, no randomness: the caller's [`Context`] carries the device
//! name, the conflict time and the seed of new ids, so the same input gives the same plan.
//!
//! How it works: only nodes whose local and remote entries differ need a decision (one
//! ordered pass finds them). Each is merged three ways against the synced tree into one
//! *target* tree; then, for each side, the steps that take that side to the target are
//! ordered so that every step is valid where it runs (order.rs). Both sides reach the same
//! target, so applying `to_local` locally and `to_remote` on the server converges.
//!
//! For the engine: every content a push step names is local content (the bytes are here to
//! upload) and every file content a local step names is remote content (fetch it by
//! manifest), except [`LocalStep::CopyAside`], which copies local bytes. Each list is valid
//! step by step, so any prefix of `to_remote` is a valid commit on its own (a plan over the
//! server's op limit can go in several commits, in order). Logging the conflicts is the
//! caller's: the planner does not even log.
//!
//! The rules (docs/ARCHITECTURE.md, "Conflicts"; the remote side is the one
//! committed first):
//! 1. A change on one side only is taken; the same change on both sides is nothing to do.
//! 2. Content changed on both sides, differently: the remote version keeps the node and its
//!    name; the local version becomes a NEW node `NAME (conflicted copy DEVICE YYYY-MM-DD
//!    HHMMSS).EXT` in the node's target directory ([`conflicted_name`]; ` 2`, ` 3`, ... inside
//!    the parentheses when taken), made locally by [`LocalStep::CopyAside`] and pushed as a
//!    create. Symlink targets are content too.
//! 3. Edit against delete: the edit wins. A file or symlink deleted on one side and changed in
//!    any way on the other (content, attributes, place) stays, under the SAME id: pushed as a
//!    [`PushStep::Create`] of that id (the server revives the deleted id), or created locally
//!    from the remote entry. Its deleted ancestors come back too.
//! 4. A directory deleted on one side stays if the other side put anything in it that stays
//!    (added, moved in, or kept by rule 3); its untouched contents are deleted.
//! 5. Both sides moved a node: the remote place wins. A local move that, with the remote
//!    moves, would put a directory inside itself is dropped.
//! 6. Attributes merge per field (mode, mtime, each xattr): one side's change is taken; on
//!    both sides, remote wins.
//! 7. Two nodes want one (directory, name): the one the remote tree has there keeps it; the
//!    other gets a conflicted-copy name (no extension split for directories).
//! 8. A node both sides created with the same id (only after a crash between a commit and
//!    the synced tree's update) is merged like rule 2 and 6 with no base: remote wins,
//!    different local content is kept as a conflicted copy.
//! 9. Never lose content: every local file content the synced tree lacks ends up in the
//!    target, in its node or a conflicted copy.
//! 10. Local-only nodes (FIFOs, sockets, device nodes: [`Context::local_only`]) are in no
//!     tree and never move by a plan, but their names are taken: a node that wants one is
//!     renamed as rule 7 renames a loser (the local-only node keeps the name), and a
//!     directory holding one stays as rule 4 keeps a directory the local side added to.
//!
//! Choices where the rules leave room (for what a Dropbox or Syncthing user expects, and
//! never losing a byte first):
//! - For a directory, "edited" (rule 3) means moved or renamed: its attributes (mode, mtime,
//!   xattrs) do not bring it back from a delete, since its mtime changes whenever its
//!   entries do and would undo every folder delete that raced with any change inside.
//! - A directory moved or renamed on one side while the other side deleted the tree it was
//!   in stays WITH what it holds (`mv Photos "Photos 2020"` against `rm -rf Photos` keeps
//!   "Photos 2020" whole): the delete removed what was at the old place, as it would under
//!   Dropbox (paths) or Syncthing (a move is new files there). Rule 3 for the directory
//!   alone would keep it empty, deleting the files the other side had just moved away.
//! - Conflicted copies and renamed losers are named after THIS device (the local version is
//!   the one that lost); the copy's name derives from the name the node wanted.
//! - A symlink's new target is pushed as delete + create of the same id: the protocol's
//!   write op is for files only. (A mount cannot retarget a symlink in place, so this only
//!   arises from other clients.)
//! - Temporary names for swaps and cycles are `.deltadrive-tmp-<node id>`, free in the
//!   directory now and in the target.

mod apply;
mod conflicts;
mod context;
mod diff;
mod error;
mod name;
mod order;
mod steps;
mod target;
mod tree;

pub use context::{ConflictStamp, Context, LocalOnly, StampError};
pub use diff::diverged;
pub use error::PlanError;
pub use name::conflicted_name;
pub use steps::{Conflict, LocalStep, MoveDropReason, Plan, PushStep, Side};
pub use tree::{Content, Entry, Tree, TreeError};

use std::collections::BTreeSet;

use crate::protocol::{NodeId, Xattrs};
use order::StructOp;
use target::Target;

/// Attribute changes: new mode, mtime and xattrs, each only where it changes.
type AttrChanges = (Option<u32>, Option<i64>, Option<Xattrs>);

/// Plans how `local` and `remote` both reach one merged tree, given the tree they last
/// agreed on (`synced`). Fails only on inconsistent input (a node whose kind differs between
/// trees) or a planner bug; never panics.
pub fn plan(local: &Tree, synced: &Tree, remote: &Tree, ctx: &Context) -> Result<Plan, PlanError> {
    plan_among(local, synced, remote, ctx, None)
}

/// [`plan`], looking only at `candidates` for nodes where `local` and `remote` differ: the
/// same plan at the cost of the candidates rather than of the trees, provided they hold every
/// such node (`None`: every node is looked at, as [`plan`] does).
pub fn plan_among(
    local: &Tree,
    synced: &Tree,
    remote: &Tree,
    ctx: &Context,
    candidates: Option<&BTreeSet<NodeId>>,
) -> Result<Plan, PlanError> {
    let merged = conflicts::merge(local, synced, remote, ctx, candidates)?;
    let target = &merged.target;
    let to_local = local_steps(local, target, order::schedule(local, target)?)?;
    let to_remote = push_steps(remote, target, order::schedule(remote, target)?)?;
    Ok(Plan {
        to_local,
        to_remote,
        conflicts: merged.conflicts,
    })
}

/// The target entry of a node a structural step names.
fn target_entry<'t>(target: &'t Target<'_>, id: NodeId) -> Result<&'t Entry, PlanError> {
    target.get(id).ok_or(PlanError::Unschedulable { node: id })
}

fn local_steps(
    local: &Tree,
    target: &Target<'_>,
    ops: Vec<StructOp>,
) -> Result<Vec<LocalStep>, PlanError> {
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        out.push(match op {
            StructOp::Create(node) => {
                let entry = target_entry(target, node)?.clone();
                match target.copy_source(node) {
                    Some(source) => LocalStep::CopyAside {
                        source,
                        node,
                        entry,
                    },
                    None => LocalStep::Create { node, entry },
                }
            }
            StructOp::Move { node, parent, name } => LocalStep::Move { node, parent, name },
            StructOp::Delete(node) => LocalStep::Delete { node },
        });
    }
    // Content and attributes last: copies above were taken from the old content.
    for (node, t) in target.decided() {
        let (Some(a), Some(t)) = (local.get(node), t) else {
            continue;
        };
        if a.content != t.content {
            out.push(LocalStep::UpdateContent {
                node,
                content: t.content.clone(),
            });
        }
        if let Some((mode, mtime, xattrs)) = attr_changes(a, t) {
            out.push(LocalStep::SetAttrs {
                node,
                mode,
                mtime,
                xattrs,
            });
        }
    }
    Ok(out)
}

fn push_steps(
    remote: &Tree,
    target: &Target<'_>,
    ops: Vec<StructOp>,
) -> Result<Vec<PushStep>, PlanError> {
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        out.push(match op {
            StructOp::Create(node) => PushStep::Create {
                node,
                entry: target_entry(target, node)?.clone(),
            },
            StructOp::Move { node, parent, name } => PushStep::Move { node, parent, name },
            StructOp::Delete(node) => PushStep::Delete { node },
        });
    }
    for (node, t) in target.decided() {
        let (Some(a), Some(t)) = (remote.get(node), t) else {
            continue;
        };
        if a.content != t.content {
            match &t.content {
                Content::File { manifest_id, size } => out.push(PushStep::Write {
                    node,
                    manifest_id: *manifest_id,
                    size: *size,
                }),
                Content::Symlink { .. } | Content::Dir => {
                    // No op edits a symlink target: delete and create the same id, with
                    // the target attributes too (the node holds its final place already).
                    out.push(PushStep::Delete { node });
                    out.push(PushStep::Create {
                        node,
                        entry: t.clone(),
                    });
                    continue;
                }
            }
        }
        if let Some((mode, mtime, xattrs)) = attr_changes(a, t) {
            out.push(PushStep::SetAttrs {
                node,
                mode,
                mtime,
                xattrs,
            });
        }
    }
    Ok(out)
}

/// The attributes that differ between `from` and `to`, or `None` when none does.
fn attr_changes(from: &Entry, to: &Entry) -> Option<AttrChanges> {
    let mode = (from.mode != to.mode).then_some(to.mode);
    let mtime = (from.mtime != to.mtime).then_some(to.mtime);
    let xattrs = (from.xattrs != to.xattrs).then(|| to.xattrs.clone());
    if mode.is_none() && mtime.is_none() && xattrs.is_none() {
        None
    } else {
        Some((mode, mtime, xattrs))
    }
}
