//! Ordering the structural steps (create, move, delete) that take one side to the target.
//!
//! Each step is tried against the side's state as the earlier steps left it; a step that
//! cannot run yet waits for what blocks it (its parent to be created, its name to be freed,
//! a directory to empty). When everything left waits on something else (two names swapped,
//! a directory moved under its former child), one blocked node is moved out of the way under
//! a temporary name: in its own directory for a name wait, in the root for a cycle.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::protocol::{Name, NodeId};

use super::error::PlanError;
use super::target::Target;
use super::tree::Tree;

/// One structural step; the entries come from the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum StructOp {
    /// Create the node as the target has it.
    Create(NodeId),
    /// Move the node to `name` in `parent` (its target place, or a temporary one).
    Move {
        /// The node.
        node: NodeId,
        /// Its new directory.
        parent: NodeId,
        /// Its new name there.
        name: Name,
    },
    /// Delete the node.
    Delete(NodeId),
}

/// The structural steps that take `side` to `target`, in a valid order.
pub(super) fn schedule(side: &Tree, target: &Target<'_>) -> Result<Vec<StructOp>, PlanError> {
    Scheduler::new(side, target).run()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    Create,
    Move,
    Delete,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum WaitKey {
    /// The node to exist.
    Exists(NodeId),
    /// The name in the directory to be free.
    Name(NodeId, Name),
    /// A child to leave the directory.
    ChildLeft(NodeId),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Block {
    Wait(WaitKey),
    /// The target parent is inside the node now.
    Cycle,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Detached {
    /// Under a temporary name in its directory.
    InPlace,
    /// Under a temporary name in the root.
    Root,
}

struct Scheduler<'s, 't> {
    side: &'s Tree,
    target: &'t Target<'t>,
    /// Where steps put nodes so far (`None`: absent); others are where `side` has them.
    place: HashMap<NodeId, Option<(NodeId, Name)>>,
    /// Names steps took or freed so far, per directory; others are as in `side`.
    holder: HashMap<NodeId, HashMap<Name, Option<NodeId>>>,
    /// Children gained minus children lost, per directory.
    child_delta: HashMap<NodeId, isize>,
    pending: BTreeMap<NodeId, Want>,
    blocked: BTreeMap<NodeId, Block>,
    waiters: HashMap<WaitKey, Vec<NodeId>>,
    detached: HashMap<NodeId, Detached>,
    queue: VecDeque<NodeId>,
    out: Vec<StructOp>,
}

impl<'s, 't> Scheduler<'s, 't> {
    fn new(side: &'s Tree, target: &'t Target<'t>) -> Self {
        let mut deletes = Vec::new();
        let mut moves = Vec::new();
        let mut creates = Vec::new();
        let mut pending = BTreeMap::new();
        for (id, t) in target.decided() {
            match (side.get(id), t) {
                (None, Some(_)) => {
                    creates.push(id);
                    pending.insert(id, Want::Create);
                }
                (Some(_), None) => {
                    deletes.push(id);
                    pending.insert(id, Want::Delete);
                }
                (Some(a), Some(t)) if !a.same_place(t) => {
                    moves.push(id);
                    pending.insert(id, Want::Move);
                }
                _ => {}
            }
        }
        // Leaves first for deletes, parents first for creates: most steps then run at once.
        let mut side_depth: Vec<(usize, NodeId)> = deletes
            .into_iter()
            .map(|id| (depth(side, id), id))
            .collect();
        side_depth.sort_by(|a, b| b.cmp(a));
        let mut memo = HashMap::new();
        let mut target_depth: Vec<(usize, NodeId)> = creates
            .into_iter()
            .map(|id| (target_depth(target, id, &mut memo), id))
            .collect();
        target_depth.sort();
        let queue = side_depth
            .into_iter()
            .map(|(_, id)| id)
            .chain(moves)
            .chain(target_depth.into_iter().map(|(_, id)| id))
            .collect();
        Self {
            side,
            target,
            place: HashMap::new(),
            holder: HashMap::new(),
            child_delta: HashMap::new(),
            pending,
            blocked: BTreeMap::new(),
            waiters: HashMap::new(),
            detached: HashMap::new(),
            queue,
            out: Vec::new(),
        }
    }

    fn run(mut self) -> Result<Vec<StructOp>, PlanError> {
        // Cycle waits have no event to wake them: retry them whenever steps ran since.
        let mut cycle_retry_at = usize::MAX;
        loop {
            while let Some(id) = self.queue.pop_front() {
                self.try_step(id)?;
            }
            if self.pending.is_empty() {
                return Ok(self.out);
            }
            let cyclic: Vec<NodeId> = self
                .blocked
                .iter()
                .filter(|(_, b)| **b == Block::Cycle)
                .map(|(id, _)| *id)
                .collect();
            if !cyclic.is_empty() && cycle_retry_at != self.out.len() {
                cycle_retry_at = self.out.len();
                self.queue.extend(cyclic);
                continue;
            }
            self.unblock()?;
        }
    }

    /// Runs `id`'s step if it can run now; otherwise records what it waits for.
    fn try_step(&mut self, id: NodeId) -> Result<(), PlanError> {
        let Some(want) = self.pending.get(&id).copied() else {
            return Ok(());
        };
        self.blocked.remove(&id);
        let block = match want {
            Want::Create => {
                let (parent, name) = self.target_place(id)?;
                if !self.exists(parent) {
                    Some(Block::Wait(WaitKey::Exists(parent)))
                } else if self.holder_of(parent, &name).is_some() {
                    Some(Block::Wait(WaitKey::Name(parent, name)))
                } else {
                    self.set_place(id, Some((parent, name)));
                    self.out.push(StructOp::Create(id));
                    None
                }
            }
            Want::Move => {
                let (parent, name) = self.target_place(id)?;
                if !self.exists(parent) {
                    Some(Block::Wait(WaitKey::Exists(parent)))
                } else if self.holder_of(parent, &name).is_some_and(|h| h != id) {
                    Some(Block::Wait(WaitKey::Name(parent, name)))
                } else if self.is_within(parent, id)? {
                    Some(Block::Cycle)
                } else {
                    self.move_to(id, parent, name);
                    None
                }
            }
            Want::Delete => {
                if self.has_children(id) {
                    Some(Block::Wait(WaitKey::ChildLeft(id)))
                } else {
                    self.set_place(id, None);
                    self.out.push(StructOp::Delete(id));
                    None
                }
            }
        };
        match block {
            Some(Block::Wait(key)) => {
                self.waiters.entry(key.clone()).or_default().push(id);
                self.blocked.insert(id, Block::Wait(key));
            }
            Some(Block::Cycle) => {
                self.blocked.insert(id, Block::Cycle);
            }
            None => {
                self.pending.remove(&id);
            }
        }
        Ok(())
    }

    /// Everything left waits: move one node out of the way under a temporary name.
    fn unblock(&mut self) -> Result<(), PlanError> {
        // A name someone waits for, held by a node that must move anyway: move the holder
        // aside (a swap, or a name wanted before the holder's new directory exists).
        let mut holder_to_move = None;
        for block in self.blocked.values() {
            let Block::Wait(WaitKey::Name(dir, name)) = block else {
                continue;
            };
            if let Some(h) = self.holder_of(*dir, name)
                && self.pending.get(&h) == Some(&Want::Move)
                && !self.detached.contains_key(&h)
            {
                holder_to_move = Some(h);
                break;
            }
        }
        if let Some(h) = holder_to_move {
            let parent = self
                .parent_of(h)
                .ok_or(PlanError::Unschedulable { node: h })?;
            // Aside in its own directory if that stays; out of a doomed one to the root.
            if self.target.exists(parent) {
                self.detach(h, parent, Detached::InPlace)?;
            } else {
                self.detach(h, NodeId::ROOT, Detached::Root)?;
            }
            return Ok(());
        }
        // A doomed directory waits for a node that must leave it: take that node out to the
        // root now, so the directory can go and free its name.
        let leaving = self.pending.iter().find(|(id, want)| {
            **want == Want::Move
                && self.detached.get(id) != Some(&Detached::Root)
                && self.parent_of(**id).is_some_and(|p| !self.target.exists(p))
        });
        if let Some((&id, _)) = leaving {
            self.detach(id, NodeId::ROOT, Detached::Root)?;
            return Ok(());
        }
        // A move into its own subtree: the path from the target parent up to the node holds
        // a node whose target parent is another; moving it to the root breaks the loop.
        let cyclic = self.blocked.iter().find(|(_, b)| **b == Block::Cycle);
        if let Some((&id, _)) = cyclic {
            let (mut at, _) = self.target_place(id)?;
            let mut steps = 0usize;
            let culprit = loop {
                if at == id || at == NodeId::ROOT || steps > self.bound() {
                    return Err(PlanError::Unschedulable { node: id });
                }
                steps += 1;
                let here = self
                    .parent_of(at)
                    .ok_or(PlanError::Unschedulable { node: at })?;
                if self.target.get(at).is_some_and(|t| t.parent != here) {
                    break at;
                }
                at = here;
            };
            if self.pending.get(&culprit) != Some(&Want::Move) {
                return Err(PlanError::Unschedulable { node: culprit });
            }
            self.detach(culprit, NodeId::ROOT, Detached::Root)?;
            self.queue.push_back(id);
            return Ok(());
        }
        let node = self.pending.keys().next().copied().unwrap_or(NodeId::ROOT);
        Err(PlanError::Unschedulable { node })
    }

    /// Moves `id` to a fresh temporary name in `dir`; its move to the target stays pending.
    fn detach(&mut self, id: NodeId, dir: NodeId, how: Detached) -> Result<(), PlanError> {
        let name = self.temp_name(dir, id)?;
        self.detached.insert(id, how);
        self.move_to(id, dir, name);
        self.queue.push_back(id);
        Ok(())
    }

    /// A name free in `dir` now and in the target.
    fn temp_name(&self, dir: NodeId, id: NodeId) -> Result<Name, PlanError> {
        let base = format!(".deltadrive-tmp-{id}");
        let mut n = 1u32;
        loop {
            let text = if n == 1 {
                base.clone()
            } else {
                format!("{base}-{n}")
            };
            let name = Name::new(text)?;
            if self.holder_of(dir, &name).is_none() && !self.target.is_taken(dir, &name) {
                return Ok(name);
            }
            n = n.saturating_add(1);
        }
    }

    fn move_to(&mut self, id: NodeId, parent: NodeId, name: Name) {
        self.set_place(id, Some((parent, name.clone())));
        self.out.push(StructOp::Move {
            node: id,
            parent,
            name,
        });
    }

    /// Records `id` at `new` (or gone), freeing its old place, and wakes who waited on that.
    fn set_place(&mut self, id: NodeId, new: Option<(NodeId, Name)>) {
        let old = self.place_of(id).map(|(p, n)| (p, n.clone()));
        if let Some((p, n)) = old.clone() {
            self.holder.entry(p).or_default().insert(n.clone(), None);
            *self.child_delta.entry(p).or_default() -= 1;
            self.wake(&WaitKey::Name(p, n));
            self.wake(&WaitKey::ChildLeft(p));
        }
        if let Some((p, n)) = &new {
            self.holder
                .entry(*p)
                .or_default()
                .insert(n.clone(), Some(id));
            *self.child_delta.entry(*p).or_default() += 1;
        }
        let appeared = old.is_none() && new.is_some();
        self.place.insert(id, new);
        if appeared {
            self.wake(&WaitKey::Exists(id));
        }
    }

    fn wake(&mut self, key: &WaitKey) {
        if let Some(ids) = self.waiters.remove(key) {
            self.queue.extend(ids);
        }
    }

    fn target_place(&self, id: NodeId) -> Result<(NodeId, Name), PlanError> {
        self.target
            .get(id)
            .map(|e| (e.parent, e.name.clone()))
            .ok_or(PlanError::Unschedulable { node: id })
    }

    fn place_of(&self, id: NodeId) -> Option<(NodeId, &Name)> {
        match self.place.get(&id) {
            Some(p) => p.as_ref().map(|(p, n)| (*p, n)),
            None => self.side.get(id).map(|e| (e.parent, &e.name)),
        }
    }

    fn parent_of(&self, id: NodeId) -> Option<NodeId> {
        self.place_of(id).map(|(p, _)| p)
    }

    fn exists(&self, id: NodeId) -> bool {
        id == NodeId::ROOT || self.place_of(id).is_some()
    }

    fn holder_of(&self, dir: NodeId, name: &Name) -> Option<NodeId> {
        match self.holder.get(&dir).and_then(|m| m.get(name)) {
            Some(h) => *h,
            None => self.side.child(dir, name),
        }
    }

    fn has_children(&self, id: NodeId) -> bool {
        let count = self.side.child_count(id) as isize;
        count + self.child_delta.get(&id).copied().unwrap_or(0) > 0
    }

    /// Most nodes a path can pass: beyond it the state would be corrupt.
    fn bound(&self) -> usize {
        self.side.len() + self.place.len() + 2
    }

    /// True if `dir` is `id` or inside it now.
    fn is_within(&self, dir: NodeId, id: NodeId) -> Result<bool, PlanError> {
        let mut at = dir;
        for _ in 0..self.bound() {
            if at == id {
                return Ok(true);
            }
            if at == NodeId::ROOT {
                return Ok(false);
            }
            at = match self.parent_of(at) {
                Some(p) => p,
                None => return Ok(false),
            };
        }
        Err(PlanError::Unschedulable { node: id })
    }
}

/// Depth of `id` in `tree` (children of the root are at 1).
fn depth(tree: &Tree, id: NodeId) -> usize {
    let mut d = 0;
    let mut at = id;
    while let Some(e) = tree.get(at) {
        d += 1;
        at = e.parent;
        if d > tree.len() {
            break;
        }
    }
    d
}

/// Depth of `id` in the target, remembering the depths met on the way.
fn target_depth(target: &Target<'_>, id: NodeId, memo: &mut HashMap<NodeId, usize>) -> usize {
    let mut chain = Vec::new();
    let mut at = id;
    let mut base = 0;
    while at != NodeId::ROOT {
        if let Some(&d) = memo.get(&at) {
            base = d;
            break;
        }
        let Some(e) = target.get(at) else {
            break;
        };
        chain.push(at);
        at = e.parent;
        // The target is acyclic by construction; stop rather than spin if it were not.
        if chain.len() > target.size_bound() {
            break;
        }
    }
    for (i, node) in chain.iter().rev().enumerate() {
        memo.insert(*node, base + i + 1);
    }
    memo.get(&id).copied().unwrap_or(base)
}
