//! Where the local and remote trees differ: the only nodes the planner has to decide on.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use crate::protocol::NodeId;

use super::tree::Tree;

/// Ids whose entry differs between `local` and `remote` (present in one only, or different),
/// in id order. One ordered pass over both trees: everything else is equal on both sides
/// and needs nothing.
pub fn diverged(local: &Tree, remote: &Tree) -> Vec<NodeId> {
    let mut out = Vec::new();
    let mut l = local.iter().peekable();
    let mut r = remote.iter().peekable();
    loop {
        match (l.peek(), r.peek()) {
            (None, None) => return out,
            (Some((lid, _)), None) => {
                out.push(*lid);
                l.next();
            }
            (None, Some((rid, _))) => {
                out.push(*rid);
                r.next();
            }
            (Some((lid, le)), Some((rid, re))) => match lid.cmp(rid) {
                Ordering::Less => {
                    out.push(*lid);
                    l.next();
                }
                Ordering::Greater => {
                    out.push(*rid);
                    r.next();
                }
                Ordering::Equal => {
                    if le != re {
                        out.push(*lid);
                    }
                    l.next();
                    r.next();
                }
            },
        }
    }
}

/// The ids among `candidates` whose entry differs between `local` and `remote`, in id order:
/// [`diverged`] at the cost of the candidates, for a caller that knows every node where the
/// two trees may differ.
pub(super) fn diverged_among(
    local: &Tree,
    remote: &Tree,
    candidates: &BTreeSet<NodeId>,
) -> Vec<NodeId> {
    candidates
        .iter()
        .filter(|id| **id != NodeId::ROOT && local.get(**id) != remote.get(**id))
        .copied()
        .collect()
}
