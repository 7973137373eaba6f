//! The merge: for each node the two sides disagree on, what the target holds, by the rules.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::protocol::{Name, NodeId, NodeKind, Xattrs};

use super::context::{Context, IdMinter};
use super::diff::{diverged, diverged_among};
use super::error::PlanError;
use super::name::conflicted_name;
use super::steps::{Conflict, MoveDropReason, Side};
use super::target::Target;
use super::tree::{Entry, Tree};

/// The decision on one node the local and remote trees disagree on.
struct Decision<'a> {
    local: Option<&'a Entry>,
    remote: Option<&'a Entry>,
    /// In the target (before and after the closure over ancestors).
    exists: bool,
    /// The target entry: merged fields, chosen place.
    entry: Entry,
    /// Both sides changed the content differently: keep the local version as a copy.
    copy_local: bool,
}

impl Decision<'_> {
    /// The target keeps the node where the remote tree has it.
    fn at_remote_place(&self) -> bool {
        self.remote.is_some_and(|r| r.same_place(&self.entry))
    }
}

/// The merged target of the three trees, and the conflicts met.
pub(super) struct Merged<'a> {
    /// What both sides must reach.
    pub target: Target<'a>,
    /// The conflicts resolved.
    pub conflicts: Vec<Conflict>,
}

/// Decides every node where `local` and `remote` differ, against `synced`; they are among
/// `candidates` when given (else every node is looked at).
pub(super) fn merge<'a>(
    local: &'a Tree,
    synced: &'a Tree,
    remote: &'a Tree,
    ctx: &Context,
    candidates: Option<&BTreeSet<NodeId>>,
) -> Result<Merged<'a>, PlanError> {
    let mut conflicts = Vec::new();
    let mut decisions: BTreeMap<NodeId, Decision<'a>> = BTreeMap::new();
    let ids = match candidates {
        None => diverged(local, remote),
        Some(c) => {
            let ids = diverged_among(local, remote, c);
            // The caller's bookkeeping, checked against the walk it saves.
            debug_assert_eq!(ids, diverged(local, remote), "candidates miss a node");
            ids
        }
    };
    for id in ids {
        let d = decide(
            id,
            local.get(id),
            synced.get(id),
            remote.get(id),
            &mut conflicts,
        )?;
        decisions.insert(id, d);
    }
    keep_moved_trees(local, synced, remote, &mut decisions);
    drop_cyclic_local_moves(local, &mut decisions, &mut conflicts);
    keep_local_only_dirs(ctx, &mut decisions, &mut conflicts);
    keep_ancestors(&mut decisions, &mut conflicts);
    let (over, copies, places) =
        name_and_copy(local, synced, remote, ctx, decisions, &mut conflicts)?;
    Ok(Merged {
        target: Target::new(local, remote, over, copies, places),
        conflicts,
    })
}

/// Rules 1-3 and 5-6 for one node, before looking at its neighbours.
fn decide<'a>(
    id: NodeId,
    l: Option<&'a Entry>,
    s: Option<&'a Entry>,
    r: Option<&'a Entry>,
    conflicts: &mut Vec<Conflict>,
) -> Result<Decision<'a>, PlanError> {
    let kinds: Vec<NodeKind> = [l, s, r].iter().flatten().map(|e| e.kind()).collect();
    if let Some(&k) = kinds.first()
        && let Some(&other) = kinds.iter().find(|&&x| x != k)
    {
        return Err(PlanError::KindMismatch {
            node: id,
            a: k,
            b: other,
        });
    }
    let d = match (l, r) {
        (Some(l), Some(r)) => merge_entries(id, l, s, r, conflicts),
        (Some(l), None) => one_sided(id, l, s, Side::Remote, conflicts),
        (None, Some(r)) => one_sided(id, r, s, Side::Local, conflicts),
        (None, None) => {
            // `diverged` never yields a node absent from both sides.
            return Err(PlanError::Unschedulable { node: id });
        }
    };
    Ok(d)
}

/// A node one side holds as `kept` and the other side (`deleted_on`) does not: new on the
/// holding side, or deleted on the other. A deleted node comes back if the holding side
/// changed it (rule 3); for a directory only a move or rename counts (its mtime follows its
/// entries). More may come back later: what a moved directory holds, and the ancestors of
/// whatever stays.
fn one_sided<'a>(
    id: NodeId,
    kept: &'a Entry,
    s: Option<&'a Entry>,
    deleted_on: Side,
    conflicts: &mut Vec<Conflict>,
) -> Decision<'a> {
    let exists = match s {
        None => true,
        Some(s) if kept.kind() == NodeKind::Dir => !kept.same_place(s),
        Some(s) => kept != s,
    };
    if exists && s.is_some() {
        conflicts.push(Conflict::EditBeatDelete {
            node: id,
            deleted_on,
        });
    }
    let (local, remote) = match deleted_on {
        Side::Remote => (Some(kept), None),
        Side::Local => (None, Some(kept)),
    };
    Decision {
        local,
        remote,
        exists,
        entry: kept.clone(),
        copy_local: false,
    }
}

/// Rule 3 for what a directory holds: a node deleted on one side stays when the other side
/// moved one of its ancestors out from under that delete (an ancestor the deleting side
/// deleted too, so the delete was of a whole tree). The deleting side removed the tree at
/// the place it saw; what the other side had moved elsewhere by then is not part of it.
fn keep_moved_trees(
    local: &Tree,
    synced: &Tree,
    remote: &Tree,
    decisions: &mut BTreeMap<NodeId, Decision<'_>>,
) {
    let mut kept = Vec::new();
    for (id, d) in decisions.iter() {
        if d.exists || synced.get(*id).is_none() {
            continue;
        }
        let (holder, deleter) = match (d.local, d.remote) {
            (Some(_), None) => (local, remote),
            (None, Some(_)) => (remote, local),
            _ => continue,
        };
        if moved_ancestor(*id, holder, deleter, synced) {
            kept.push(*id);
        }
    }
    for id in kept {
        if let Some(d) = decisions.get_mut(&id) {
            d.exists = true;
        }
    }
}

/// True if, walking up from `id` in `holder`, a directory the `deleter` side deleted as
/// well was moved or renamed in `holder` (before reaching one the deleter still has).
fn moved_ancestor(id: NodeId, holder: &Tree, deleter: &Tree, synced: &Tree) -> bool {
    let mut at = match holder.get(id) {
        Some(e) => e.parent,
        None => return false,
    };
    while at != NodeId::ROOT && !deleter.exists(at) {
        let (Some(now), Some(before)) = (holder.get(at), synced.get(at)) else {
            return false;
        };
        if !now.same_place(before) {
            return true;
        }
        at = now.parent;
    }
    false
}

/// Three-way merge of a node both sides hold: per field, a change on one side only is
/// taken; changes on both sides go to the remote side. No base (a node both created) counts
/// as a change on both sides.
fn merge_entries<'a>(
    id: NodeId,
    l: &'a Entry,
    s: Option<&'a Entry>,
    r: &'a Entry,
    conflicts: &mut Vec<Conflict>,
) -> Decision<'a> {
    let remote_moved = s.is_none_or(|s| !r.same_place(s));
    let local_moved = s.is_none_or(|s| !l.same_place(s));
    let (parent, name) = if remote_moved {
        if local_moved && !l.same_place(r) {
            conflicts.push(Conflict::LocalMoveDropped {
                node: id,
                reason: MoveDropReason::ConcurrentMove,
            });
        }
        (r.parent, r.name.clone())
    } else {
        (l.parent, l.name.clone())
    };
    let local_changed = s.is_none_or(|s| l.content != s.content);
    let remote_changed = s.is_none_or(|s| r.content != s.content);
    let content = if local_changed && !remote_changed {
        l.content.clone()
    } else {
        r.content.clone()
    };
    let copy_local = local_changed && remote_changed && l.content != r.content;
    let entry = Entry {
        parent,
        name,
        mode: pick(&l.mode, s.map(|s| &s.mode), &r.mode),
        mtime: pick(&l.mtime, s.map(|s| &s.mtime), &r.mtime),
        xattrs: merge_xattrs(&l.xattrs, s.map(|s| &s.xattrs), &r.xattrs),
        content,
    };
    Decision {
        local: Some(l),
        remote: Some(r),
        exists: true,
        entry,
        copy_local,
    }
}

/// One field, three ways: the local value if the remote side left it as it was, else remote.
fn pick<T: PartialEq + Clone>(l: &T, s: Option<&T>, r: &T) -> T {
    match s {
        Some(s) if r == s => l.clone(),
        _ => r.clone(),
    }
}

/// Extended attributes, three ways per attribute (presence included); no base is an empty map.
fn merge_xattrs(l: &Xattrs, s: Option<&Xattrs>, r: &Xattrs) -> Xattrs {
    let keys: BTreeSet<&String> = l.keys().chain(r.keys()).collect();
    let mut out = Xattrs::new();
    for k in keys {
        let (lv, rv) = (l.get(k), r.get(k));
        let sv = s.and_then(|s| s.get(k));
        let v = if rv == sv { lv } else { rv };
        if let Some(v) = v {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

/// Rule 5, second half: a local move that makes a cycle with the remote side's moves is
/// dropped (the node goes where the remote tree has it). Every cycle holds such a move,
/// since each tree alone is acyclic; repeat until none is left.
fn drop_cyclic_local_moves(
    local: &Tree,
    decisions: &mut BTreeMap<NodeId, Decision<'_>>,
    conflicts: &mut Vec<Conflict>,
) {
    loop {
        let movable: Vec<NodeId> = decisions
            .iter()
            .filter(|(_, d)| d.remote.is_some() && !d.at_remote_place())
            .map(|(id, _)| *id)
            .collect();
        let mut dropped = false;
        for id in movable {
            if !in_cycle(local, decisions, id) {
                continue;
            }
            if let Some(d) = decisions.get_mut(&id)
                && let Some(r) = d.remote
            {
                d.entry.parent = r.parent;
                d.entry.name = r.name.clone();
                conflicts.push(Conflict::LocalMoveDropped {
                    node: id,
                    reason: MoveDropReason::Cycle,
                });
                dropped = true;
            }
        }
        if !dropped {
            return;
        }
    }
}

/// The target parent of `id` as decided so far (undecided nodes are as both trees hold them).
fn parent_of(
    local: &Tree,
    decisions: &BTreeMap<NodeId, Decision<'_>>,
    id: NodeId,
) -> Option<NodeId> {
    match decisions.get(&id) {
        Some(d) => Some(d.entry.parent),
        None => local.get(id).map(|e| e.parent),
    }
}

/// True if walking up from `id`'s chosen parent leads back to `id`.
fn in_cycle(local: &Tree, decisions: &BTreeMap<NodeId, Decision<'_>>, id: NodeId) -> bool {
    let mut seen = HashSet::new();
    let mut at = match parent_of(local, decisions, id) {
        Some(p) => p,
        None => return false,
    };
    loop {
        if at == id {
            return true;
        }
        // A loop not through `id` is found from one of its own nodes.
        if at == NodeId::ROOT || !seen.insert(at) {
            return false;
        }
        at = match parent_of(local, decisions, at) {
            Some(p) => p,
            None => return false,
        };
    }
}

/// Rule 10, second half: a directory holding a local-only node stays, as one the local side
/// added to (rule 4): deleting it would delete the local-only node, which the other side
/// never saw. Its ancestors follow in [`keep_ancestors`].
fn keep_local_only_dirs(
    ctx: &Context,
    decisions: &mut BTreeMap<NodeId, Decision<'_>>,
    conflicts: &mut Vec<Conflict>,
) {
    let dirs: BTreeSet<NodeId> = ctx.local_only.keys().map(|(dir, _)| *dir).collect();
    for dir in dirs {
        if let Some(d) = decisions.get_mut(&dir)
            && !d.exists
            && d.local.is_some()
        {
            d.exists = true;
            conflicts.push(Conflict::DirectoryKept {
                node: dir,
                deleted_on: Side::Remote,
            });
        }
    }
}

/// Rule 4 (and the ancestors of rule 3): every directory above a node of the target is in
/// the target too, even if one side deleted it. Only decided nodes can be missing: a node
/// both sides hold alike has its parent on both sides.
fn keep_ancestors(decisions: &mut BTreeMap<NodeId, Decision<'_>>, conflicts: &mut Vec<Conflict>) {
    let mut work: Vec<NodeId> = decisions
        .iter()
        .filter(|(_, d)| d.exists)
        .map(|(id, _)| *id)
        .collect();
    while let Some(id) = work.pop() {
        let parent = match decisions.get(&id) {
            Some(d) => d.entry.parent,
            None => continue,
        };
        if let Some(p) = decisions.get_mut(&parent)
            && !p.exists
        {
            p.exists = true;
            let deleted_on = if p.local.is_none() {
                Side::Local
            } else {
                Side::Remote
            };
            conflicts.push(Conflict::DirectoryKept {
                node: parent,
                deleted_on,
            });
            work.push(parent);
        }
    }
}

/// The decided part of the target (`None`: not in it), the copies (copy -> source) and the
/// places the decided nodes take.
type Decided = (
    BTreeMap<NodeId, Option<Entry>>,
    BTreeMap<NodeId, NodeId>,
    HashSet<(NodeId, Name)>,
);

/// Rules 7 and 2: rename the nodes that lost a name to the remote side, and add conflicted
/// copies of local versions; then the decided part of the target.
fn name_and_copy(
    local: &Tree,
    synced: &Tree,
    remote: &Tree,
    ctx: &Context,
    mut decisions: BTreeMap<NodeId, Decision<'_>>,
    conflicts: &mut Vec<Conflict>,
) -> Result<Decided, PlanError> {
    // A node away from its remote place loses when the remote holder of that name stays;
    // any node loses a name a local-only node holds (rule 10).
    let mut losers: BTreeMap<NodeId, NodeId> = BTreeMap::new();
    for (id, d) in &decisions {
        if !d.exists {
            continue;
        }
        if let Some(&holder) = ctx.local_only.get(&(d.entry.parent, d.entry.name.clone())) {
            losers.insert(*id, holder);
            continue;
        }
        if d.at_remote_place() {
            continue;
        }
        let Some(holder) = remote.child(d.entry.parent, &d.entry.name) else {
            continue;
        };
        let holder_stays = match decisions.get(&holder) {
            None => true,
            Some(h) => h.exists && h.at_remote_place(),
        };
        if holder != *id && holder_stays {
            losers.insert(*id, holder);
        }
    }
    // Local-only names count as taken here and in the target (temporary names avoid them).
    let mut places: HashSet<(NodeId, Name)> = decisions
        .iter()
        .filter(|(id, d)| d.exists && !losers.contains_key(id))
        .map(|(_, d)| (d.entry.parent, d.entry.name.clone()))
        .chain(ctx.local_only.keys().cloned())
        .collect();
    let taken = |places: &HashSet<(NodeId, Name)>,
                 decisions: &BTreeMap<NodeId, Decision<'_>>,
                 parent: NodeId,
                 name: &Name| {
        places.contains(&(parent, name.clone()))
            || remote
                .child(parent, name)
                .is_some_and(|m| !decisions.contains_key(&m))
    };
    let mut minter = IdMinter::new(ctx.id_seed, [local, synced, remote]);
    let mut copies: BTreeMap<NodeId, NodeId> = BTreeMap::new();
    let mut copy_entries: Vec<(NodeId, Entry)> = Vec::new();
    let ids: Vec<NodeId> = decisions.keys().copied().collect();
    for id in ids {
        let Some(d) = decisions.get(&id) else {
            continue;
        };
        if !d.exists || (!d.copy_local && !losers.contains_key(&id)) {
            continue;
        }
        let (parent, wanted, kind) = (d.entry.parent, d.entry.name.clone(), d.entry.kind());
        if let Some(&holder) = losers.get(&id) {
            let name = free_name(ctx, &wanted, kind, |n| {
                taken(&places, &decisions, parent, n)
            })?;
            places.insert((parent, name.clone()));
            conflicts.push(Conflict::NameCollision {
                node: id,
                holder,
                name: name.clone(),
            });
            if let Some(d) = decisions.get_mut(&id) {
                d.entry.name = name;
            }
        }
        let Some(d) = decisions.get(&id) else {
            continue;
        };
        if let (true, Some(l)) = (d.copy_local, d.local) {
            let name = free_name(ctx, &wanted, kind, |n| {
                taken(&places, &decisions, parent, n)
            })?;
            places.insert((parent, name.clone()));
            let copy = minter.mint();
            let mut entry = l.clone();
            entry.parent = parent;
            entry.name = name.clone();
            conflicts.push(Conflict::ContentCopied {
                node: id,
                copy,
                name,
            });
            copies.insert(copy, id);
            copy_entries.push((copy, entry));
        }
    }
    let mut over: BTreeMap<NodeId, Option<Entry>> = decisions
        .into_iter()
        .map(|(id, d)| (id, d.exists.then_some(d.entry)))
        .collect();
    over.extend(copy_entries.into_iter().map(|(id, e)| (id, Some(e))));
    Ok((over, copies, places))
}

/// The first conflicted-copy name of `wanted` that `taken` says is free.
fn free_name(
    ctx: &Context,
    wanted: &Name,
    kind: NodeKind,
    taken: impl Fn(&Name) -> bool,
) -> Result<Name, PlanError> {
    let mut attempt = 1u32;
    loop {
        let name = conflicted_name(wanted, kind, &ctx.device, &ctx.stamp, attempt)?;
        if !taken(&name) {
            return Ok(name);
        }
        attempt = attempt.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::AccountName;
    use crate::sync::plan::ConflictStamp;

    #[test]
    fn taken_conflict_names_get_the_next_number() {
        let ctx = Context::new(
            AccountName::new("pc").unwrap(),
            ConflictStamp::parse("2025-01-02 030405").unwrap(),
            0,
        );
        let taken: HashSet<String> = [
            "a (conflicted copy pc 2025-01-02 030405).txt",
            "a (conflicted copy pc 2025-01-02 030405 2).txt",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let wanted = Name::new("a.txt").unwrap();
        let got = free_name(&ctx, &wanted, NodeKind::File, |n| {
            taken.contains(n.as_str())
        })
        .unwrap();
        assert_eq!(
            got.as_str(),
            "a (conflicted copy pc 2025-01-02 030405 3).txt"
        );
        let first = free_name(&ctx, &wanted, NodeKind::File, |_| false).unwrap();
        assert_eq!(
            first.as_str(),
            "a (conflicted copy pc 2025-01-02 030405).txt"
        );
    }
}
