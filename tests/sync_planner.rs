//! The sync planner against a small reference model: random trees edited on both sides
//! must converge, lose no content and replan to nothing; plus one named test per conflict.

use std::collections::{BTreeMap, BTreeSet};

use deltadrive::chunking::ManifestId;
use deltadrive::protocol::{AccountName, Name, NodeId, NodeKind, XattrValue, Xattrs};
use deltadrive::sync::plan::{
    Conflict, ConflictStamp, Content, Context, Entry, LocalStep, MoveDropReason, Plan, PlanError,
    PushStep, Side, Tree, conflicted_name, diverged, plan, plan_among,
};
use proptest::collection::vec;
use proptest::prelude::{ProptestConfig, Strategy, any, proptest};
use proptest::{prop_assert, prop_assert_eq};

// ---------------------------------------------------------------------------------------
// Reference model: a plain map with its own checks (independent of the planner's Tree).
// ---------------------------------------------------------------------------------------

/// A side's nodes, as the server or the mount holds them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Model {
    nodes: BTreeMap<NodeId, Entry>,
}

impl Model {
    fn live(&self, id: NodeId) -> bool {
        id == NodeId::ROOT || self.nodes.contains_key(&id)
    }

    fn is_dir(&self, id: NodeId) -> bool {
        id == NodeId::ROOT
            || self
                .nodes
                .get(&id)
                .is_some_and(|e| e.content == Content::Dir)
    }

    fn holder(&self, parent: NodeId, name: &Name) -> Option<NodeId> {
        self.nodes
            .iter()
            .find(|(_, e)| e.parent == parent && &e.name == name)
            .map(|(id, _)| *id)
    }

    fn has_children(&self, id: NodeId) -> bool {
        self.nodes.values().any(|e| e.parent == id)
    }

    /// `dir` is `node` or below it.
    fn within(&self, dir: NodeId, node: NodeId) -> bool {
        let mut at = dir;
        for _ in 0..=self.nodes.len() {
            if at == node {
                return true;
            }
            match self.nodes.get(&at) {
                Some(e) => at = e.parent,
                None => return false,
            }
        }
        true
    }

    fn place_ok(&self, node: NodeId, parent: NodeId, name: &Name) -> Result<(), String> {
        if !self.is_dir(parent) {
            return Err(format!("parent {parent:?} is not a live directory"));
        }
        match self.holder(parent, name) {
            Some(h) if h != node => Err(format!("name {name:?} in {parent:?} is taken by {h:?}")),
            _ => Ok(()),
        }
    }

    fn create(&mut self, node: NodeId, entry: &Entry) -> Result<(), String> {
        if node == NodeId::ROOT || self.live(node) {
            return Err(format!("create of live node {node:?}"));
        }
        self.place_ok(node, entry.parent, &entry.name)?;
        self.nodes.insert(node, entry.clone());
        Ok(())
    }

    fn live_entry(&mut self, node: NodeId) -> Result<&mut Entry, String> {
        self.nodes
            .get_mut(&node)
            .ok_or_else(|| format!("missing node {node:?}"))
    }

    fn set_attrs(
        &mut self,
        node: NodeId,
        mode: Option<u32>,
        mtime: Option<i64>,
        xattrs: &Option<Xattrs>,
    ) -> Result<(), String> {
        let e = self.live_entry(node)?;
        let before = e.clone();
        if let Some(m) = mode {
            e.mode = m;
        }
        if let Some(t) = mtime {
            e.mtime = t;
        }
        if let Some(x) = xattrs {
            e.xattrs = x.clone();
        }
        if *e == before {
            return Err(format!("set_attrs on {node:?} changes nothing"));
        }
        Ok(())
    }

    fn move_node(&mut self, node: NodeId, parent: NodeId, name: &Name) -> Result<(), String> {
        let cur = self.live_entry(node)?.clone();
        if cur.parent == parent && &cur.name == name {
            return Err(format!("move of {node:?} to where it is"));
        }
        self.place_ok(node, parent, name)?;
        if self.within(parent, node) {
            return Err(format!("move of {node:?} under {parent:?} makes a cycle"));
        }
        let e = self.live_entry(node)?;
        e.parent = parent;
        e.name = name.clone();
        Ok(())
    }

    fn delete(&mut self, node: NodeId) -> Result<(), String> {
        if !self.nodes.contains_key(&node) {
            return Err(format!("delete of missing node {node:?}"));
        }
        if self.has_children(node) {
            return Err(format!("delete of non-empty directory {node:?}"));
        }
        self.nodes.remove(&node);
        Ok(())
    }

    /// The mount applying one local step.
    fn apply_local(&mut self, step: &LocalStep) -> Result<(), String> {
        match step {
            LocalStep::Create { node, entry } => self.create(*node, entry),
            LocalStep::CopyAside {
                source,
                node,
                entry,
            } => {
                let src = self
                    .nodes
                    .get(source)
                    .ok_or_else(|| format!("copy from missing {source:?}"))?;
                // The bytes copied are the source's at this point: they must be the copy's.
                if src.content != entry.content || entry.content == Content::Dir {
                    return Err(format!("copy of {source:?} does not hold its content"));
                }
                self.create(*node, entry)
            }
            LocalStep::UpdateContent { node, content } => {
                let e = self.live_entry(*node)?;
                if e.content.kind() != content.kind() || *content == Content::Dir {
                    return Err(format!("content of another kind for {node:?}"));
                }
                if e.content == *content {
                    return Err(format!("content update of {node:?} changes nothing"));
                }
                e.content = content.clone();
                Ok(())
            }
            LocalStep::SetAttrs {
                node,
                mode,
                mtime,
                xattrs,
            } => self.set_attrs(*node, *mode, *mtime, xattrs),
            LocalStep::Move { node, parent, name } => self.move_node(*node, *parent, name),
            LocalStep::Delete { node } => self.delete(*node),
        }
    }

    /// The server applying one pushed op (it refuses what a real server refuses).
    fn apply_push(&mut self, step: &PushStep) -> Result<(), String> {
        match step {
            PushStep::Create { node, entry } => self.create(*node, entry),
            PushStep::Write {
                node,
                manifest_id,
                size,
            } => {
                let e = self.live_entry(*node)?;
                let new = Content::File {
                    manifest_id: *manifest_id,
                    size: *size,
                };
                if e.content.kind() != NodeKind::File {
                    return Err(format!("write to non-file {node:?}"));
                }
                if e.content == new {
                    return Err(format!("write of {node:?} changes nothing"));
                }
                e.content = new;
                Ok(())
            }
            PushStep::SetAttrs {
                node,
                mode,
                mtime,
                xattrs,
            } => self.set_attrs(*node, *mode, *mtime, xattrs),
            PushStep::Move { node, parent, name } => self.move_node(*node, *parent, name),
            PushStep::Delete { node } => self.delete(*node),
        }
    }

    /// Parents are live directories, names unique per directory, every node reaches the root.
    fn check_valid(&self) -> Result<(), String> {
        let mut names = BTreeSet::new();
        for (id, e) in &self.nodes {
            if !self.is_dir(e.parent) {
                return Err(format!("{id:?} has no directory parent"));
            }
            if !names.insert((e.parent, e.name.clone())) {
                return Err(format!("duplicate name {:?} in {:?}", e.name, e.parent));
            }
            let mut at = e.parent;
            let mut steps = 0;
            while at != NodeId::ROOT {
                at = self.nodes[&at].parent;
                steps += 1;
                if steps > self.nodes.len() {
                    return Err(format!("{id:?} is in a cycle"));
                }
            }
        }
        Ok(())
    }

    fn tree(&self) -> Tree {
        Tree::from_entries(self.nodes.iter().map(|(id, e)| (*id, e.clone()))).unwrap()
    }

    fn manifests(&self) -> BTreeSet<ManifestId> {
        self.nodes
            .values()
            .filter_map(|e| match e.content {
                Content::File { manifest_id, .. } => Some(manifest_id),
                _ => None,
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// Random edits, as a filesystem allows them.
// ---------------------------------------------------------------------------------------

/// Few names, so that independent edits collide often.
const NAMES: [&str; 6] = ["a", "b", "c.txt", "d.txt", ".rc", "e"];
const MODES: [u32; 3] = [0o644, 0o600, 0o755];
const XATTR_KEYS: [&str; 2] = ["user.a", "user.b"];

/// One raw edit: what, and numbers to pick its nodes, names and values with.
type RawOp = (u8, u16, u16, u8);

fn raw_ops(max: usize) -> impl Strategy<Value = Vec<RawOp>> {
    vec((0u8..16, any::<u16>(), any::<u16>(), 0u8..6), 0..max)
}

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn manifest(tag: u8, n: u64, extra: u64) -> ManifestId {
    let mut b = [0u8; 32];
    b[0] = tag;
    b[1..9].copy_from_slice(&n.to_le_bytes());
    b[9..17].copy_from_slice(&extra.to_le_bytes());
    ManifestId::from_bytes(b)
}

/// Applies random edits of one side; `side` keeps the ids and contents it mints apart.
struct Editor {
    side: u8,
    counter: u64,
}

impl Editor {
    fn fresh_id(&mut self) -> NodeId {
        self.counter += 1;
        NodeId::from_u128((u128::from(self.side) << 64) | u128::from(self.counter))
    }

    fn fresh_manifest(&mut self) -> ManifestId {
        self.counter += 1;
        manifest(self.side, self.counter, 0)
    }

    fn apply(&mut self, m: &mut Model, op: RawOp, creates_only: bool) {
        let (what, a, b, n) = op;
        let what = if creates_only { what % 3 } else { what };
        let dirs: Vec<NodeId> = std::iter::once(NodeId::ROOT)
            .chain(
                m.nodes
                    .iter()
                    .filter(|(_, e)| e.content == Content::Dir)
                    .map(|(id, _)| *id),
            )
            .collect();
        let all: Vec<NodeId> = m.nodes.keys().copied().collect();
        let pick = |v: &[NodeId], i: u16| -> Option<NodeId> {
            (!v.is_empty()).then(|| v[usize::from(i) % v.len()])
        };
        let nm = name(NAMES[usize::from(n) % NAMES.len()]);
        match what {
            0..=2 => {
                let parent = dirs[usize::from(a) % dirs.len()];
                if m.holder(parent, &nm).is_some() {
                    return;
                }
                let content = match what {
                    0 => Content::File {
                        manifest_id: self.fresh_manifest(),
                        size: u64::from(b % 100),
                    },
                    1 => Content::Dir,
                    _ => Content::Symlink {
                        target: format!("t{}", b % 4),
                    },
                };
                let id = self.fresh_id();
                m.nodes.insert(
                    id,
                    Entry {
                        parent,
                        name: nm,
                        mode: MODES[usize::from(b) % 3],
                        mtime: 0,
                        xattrs: Xattrs::new(),
                        content,
                    },
                );
            }
            3 => {
                // Write: sometimes a content both sides could reach (same for the node).
                let files: Vec<NodeId> = m
                    .nodes
                    .iter()
                    .filter(|(_, e)| e.content.kind() == NodeKind::File)
                    .map(|(id, _)| *id)
                    .collect();
                let Some(id) = pick(&files, a) else { return };
                let manifest_id = if b % 3 == 0 {
                    manifest(200, id.as_u128() as u64, u64::from(b % 2))
                } else {
                    self.fresh_manifest()
                };
                let size = u64::from(b % 7);
                if let Some(e) = m.nodes.get_mut(&id) {
                    e.content = Content::File { manifest_id, size };
                }
            }
            4 => {
                if let Some(id) = pick(&all, a)
                    && let Some(e) = m.nodes.get_mut(&id)
                {
                    e.mode = MODES[usize::from(b) % 3];
                }
            }
            5 => {
                if let Some(id) = pick(&all, a)
                    && let Some(e) = m.nodes.get_mut(&id)
                {
                    let key = XATTR_KEYS[usize::from(b) % 2].to_string();
                    match b % 4 {
                        3 => {
                            e.xattrs.remove(&key);
                        }
                        v => {
                            e.xattrs.insert(key, XattrValue(vec![v as u8]));
                        }
                    }
                }
            }
            6 => {
                if let Some(id) = pick(&all, a)
                    && let Some(e) = m.nodes.get_mut(&id)
                {
                    e.mtime = i64::from(b % 3);
                }
            }
            11 | 12 => {
                // Swap the places of two nodes (mv x t; mv y x; mv t y), neither inside the other.
                let (Some(x), Some(y)) = (pick(&all, a), pick(&all, b)) else {
                    return;
                };
                if m.within(x, y) || m.within(y, x) {
                    return;
                }
                let (xe, ye) = (m.nodes[&x].clone(), m.nodes[&y].clone());
                if let Some(e) = m.nodes.get_mut(&x) {
                    (e.parent, e.name) = (ye.parent, ye.name);
                }
                if let Some(e) = m.nodes.get_mut(&y) {
                    (e.parent, e.name) = (xe.parent, xe.name);
                }
            }
            13 | 14 => {
                // Invert a directory and its child directory: /P/C becomes /C'/P' where C
                // takes P's place and P takes C's name inside it.
                let pairs: Vec<NodeId> = m
                    .nodes
                    .iter()
                    .filter(|(_, e)| {
                        e.content == Content::Dir && m.is_dir(e.parent) && e.parent != NodeId::ROOT
                    })
                    .map(|(id, _)| *id)
                    .collect();
                let Some(c) = pick(&pairs, a) else { return };
                let p = m.nodes[&c].parent;
                let (pe, ce) = (m.nodes[&p].clone(), m.nodes[&c].clone());
                if m.holder(c, &ce.name).is_some() {
                    return;
                }
                if let Some(e) = m.nodes.get_mut(&c) {
                    (e.parent, e.name) = (pe.parent, pe.name);
                }
                if let Some(e) = m.nodes.get_mut(&p) {
                    (e.parent, e.name) = (c, ce.name);
                }
            }
            7 | 8 | 15 => {
                let Some(id) = pick(&all, a) else { return };
                let parent = if what == 7 {
                    m.nodes[&id].parent
                } else {
                    dirs[usize::from(b) % dirs.len()]
                };
                // As rename(2): no moving a directory into itself, no replacing.
                if m.within(parent, id) || m.holder(parent, &nm).is_some() {
                    return;
                }
                if let Some(e) = m.nodes.get_mut(&id) {
                    e.parent = parent;
                    e.name = nm;
                }
            }
            9 => {
                let leaves: Vec<NodeId> = m
                    .nodes
                    .iter()
                    .filter(|(_, e)| e.content != Content::Dir)
                    .map(|(id, _)| *id)
                    .collect();
                if let Some(id) = pick(&leaves, a) {
                    m.nodes.remove(&id);
                }
            }
            _ => {
                // 10: rm -rf of a directory.
                let Some(top) = pick(&dirs[1..], a) else {
                    return;
                };
                let doomed: Vec<NodeId> = m
                    .nodes
                    .keys()
                    .copied()
                    .filter(|id| m.within(*id, top))
                    .collect();
                for id in doomed {
                    m.nodes.remove(&id);
                }
            }
        }
    }
}

fn ctx() -> Context {
    Context::new(
        AccountName::new("laptop").unwrap(),
        ConflictStamp::parse("2025-11-24 093005").unwrap(),
        42,
    )
}

/// Applies a plan to both sides with the reference checks: (local after, remote after).
fn apply_plan(l: &Model, r: &Model, p: &Plan) -> Result<(Model, Model), String> {
    let mut lm = l.clone();
    for (i, step) in p.to_local.iter().enumerate() {
        lm.apply_local(step)
            .map_err(|e| format!("local step {i} {step:?}: {e}"))?;
    }
    let mut rm = r.clone();
    for (i, step) in p.to_remote.iter().enumerate() {
        rm.apply_push(step)
            .map_err(|e| format!("push step {i} {step:?}: {e}"))?;
    }
    Ok((lm, rm))
}

/// Content of `side` that `synced` lacks at the same node: must survive the plan.
fn new_content(side: &Model, synced: &Model) -> BTreeSet<ManifestId> {
    side.nodes
        .iter()
        .filter(|(id, e)| synced.nodes.get(id).map(|s| &s.content) != Some(&e.content))
        .filter_map(|(_, e)| match e.content {
            Content::File { manifest_id, .. } => Some(manifest_id),
            _ => None,
        })
        .collect()
}

/// Everything the properties check for one (L, S, R).
fn check_case(l: &Model, s: &Model, r: &Model) -> Result<(), String> {
    let (lt, st, rt) = (l.tree(), s.tree(), r.tree());
    let p = plan(&lt, &st, &rt, &ctx()).map_err(|e| format!("plan failed: {e}"))?;
    // Deterministic: the same input gives the same plan.
    if plan(&lt, &st, &rt, &ctx()).map_err(|e| e.to_string())? != p {
        return Err("plan is not deterministic".into());
    }
    // Told where to look (every node that differs, plus some that do not, and an id no tree
    // has), the planner makes the same plan as its full walk.
    let mut candidates: BTreeSet<NodeId> = diverged(&lt, &rt).into_iter().collect();
    candidates.extend(st.iter().map(|(id, _)| id).step_by(3));
    candidates.insert(NodeId::from_u128(u128::MAX));
    let among = plan_among(&lt, &st, &rt, &ctx(), Some(&candidates))
        .map_err(|e| format!("plan among candidates failed: {e}"))?;
    if among != p {
        return Err(format!(
            "plan among candidates differs\n{among:#?}\nfull: {p:#?}"
        ));
    }
    let (lf, rf) = apply_plan(l, r, &p)?;
    // Convergence.
    if lf != rf {
        return Err(format!(
            "sides diverge\nlocal: {:?}\nremote: {:?}\nplan: {p:#?}",
            lf.nodes, rf.nodes
        ));
    }
    lf.check_valid()?;
    // The library's own apply agrees with the model.
    let (mut tl, mut tr) = (lt.clone(), rt.clone());
    for step in &p.to_local {
        tl.apply_local(step)
            .map_err(|e| format!("Tree::apply_local: {e}"))?;
    }
    for step in &p.to_remote {
        tr.apply_push(step)
            .map_err(|e| format!("Tree::apply_push: {e}"))?;
    }
    let final_tree = lf.tree();
    if tl != final_tree || tr != final_tree {
        return Err("Tree::apply_* disagree with the model".into());
    }
    // Pushed content is local content; content applied locally is remote content (so the
    // engine always has the bytes: to upload, or to fetch).
    let (l_content, r_content) = (l.manifests(), r.manifests());
    for step in &p.to_remote {
        let m = match step {
            PushStep::Create { entry, .. } => match entry.content {
                Content::File { manifest_id, .. } => Some(manifest_id),
                _ => None,
            },
            PushStep::Write { manifest_id, .. } => Some(*manifest_id),
            _ => None,
        };
        if let Some(m) = m
            && !l_content.contains(&m)
        {
            return Err(format!("push names content {m:?} the local side lacks"));
        }
    }
    for step in &p.to_local {
        let c = match step {
            LocalStep::Create { entry, .. } => Some(&entry.content),
            LocalStep::UpdateContent { content, .. } => Some(content),
            _ => None,
        };
        if let Some(Content::File { manifest_id, .. }) = c
            && !r_content.contains(manifest_id)
        {
            return Err(format!(
                "local step names content {manifest_id:?} the remote side lacks"
            ));
        }
    }
    // Rule 9, both ways: no new content of either side is lost.
    let kept = lf.manifests();
    for (side, m) in [("local", l), ("remote", r)] {
        if let Some(lost) = new_content(m, s).difference(&kept).next() {
            return Err(format!("{side} content {lost:?} lost"));
        }
    }
    check_rules(l, s, r, &lf)?;
    // Idempotence.
    let again = plan(&final_tree, &final_tree, &final_tree, &ctx()).map_err(|e| e.to_string())?;
    if !again.is_empty() || !again.conflicts.is_empty() {
        return Err(format!("replanning the result is not empty: {again:?}"));
    }
    Ok(())
}

/// Per-node rules 1-8 against the merged result `f`.
fn check_rules(l: &Model, s: &Model, r: &Model, f: &Model) -> Result<(), String> {
    let ids: BTreeSet<NodeId> = l.nodes.keys().chain(r.nodes.keys()).copied().collect();
    for id in ids {
        let (le, se, re, fe) = (
            l.nodes.get(&id),
            s.nodes.get(&id),
            r.nodes.get(&id),
            f.nodes.get(&id),
        );
        match (le, se, re) {
            // Rule 1: alike on both sides, nothing happens to it.
            (Some(x), _, Some(y)) if x == y => ensure(fe == Some(x), || {
                format!("{id:?} alike on both sides but changed")
            })?,
            // New remote node: arrives exactly as the remote side has it.
            (None, None, Some(y)) => ensure(fe == Some(y), || {
                format!("remote-new {id:?} not taken as is")
            })?,
            // Created on both sides under one id (rule 8): remote content and place win.
            (Some(_), None, Some(y)) => match fe {
                Some(f) if f.content == y.content && f.parent == y.parent && f.name == y.name => {}
                _ => return Err(format!("{id:?} created on both sides: remote lost")),
            },
            // New local node: kept with its content and directory (the name may lose).
            (Some(x), None, None) => match fe {
                Some(f) if f.content == x.content && f.parent == x.parent => {}
                _ => return Err(format!("local-new {id:?} not kept")),
            },
            (Some(x), Some(b), Some(y)) => {
                let f = fe.ok_or_else(|| format!("{id:?} on both sides vanished"))?;
                // Rule 2: remote content wins when both changed.
                if x.content != b.content && y.content != b.content && f.content != y.content {
                    return Err(format!("{id:?}: both changed content, remote lost"));
                }
                if x.content != b.content && y.content == b.content && f.content != x.content {
                    return Err(format!("{id:?}: local-only content change lost"));
                }
                // Rule 5: a remote move always wins (alone, or against a local one).
                let moved = |e: &Entry| e.parent != b.parent || e.name != b.name;
                if moved(y) && (f.parent != y.parent || f.name != y.name) {
                    return Err(format!("{id:?}: remote moved it, remote place lost"));
                }
                // A local move alone is taken (the name may lose a collision; a cycle with
                // the remote moves drops it).
                if moved(x) && !moved(y) && f.parent != x.parent && f.parent != y.parent {
                    return Err(format!("{id:?}: local move went elsewhere"));
                }
                // Rule 6: per field.
                if !field_merged(&x.mode, &b.mode, &y.mode, &f.mode) {
                    return Err(format!("{id:?}: mode merged wrong"));
                }
                if !field_merged(&x.mtime, &b.mtime, &y.mtime, &f.mtime) {
                    return Err(format!("{id:?}: mtime merged wrong"));
                }
                for k in XATTR_KEYS {
                    let want = if y.xattrs.get(k) != b.xattrs.get(k) {
                        y.xattrs.get(k)
                    } else {
                        x.xattrs.get(k)
                    };
                    if f.xattrs.get(k) != want {
                        return Err(format!("{id:?}: xattr {k} merged wrong"));
                    }
                }
            }
            // Rule 3 / 4: deleted on one side. It stays if the other side changed it (a
            // directory: moved or renamed it), moved a deleted ancestor out from under the
            // delete, or (a directory) if anything stays inside it.
            (one, Some(b), other) if one.is_none() != other.is_none() => {
                let (kept, holder, deleter) = match (one, other) {
                    (Some(x), _) => (x, l, r),
                    (None, Some(y)) => (y, r, l),
                    (None, None) => return Err("unreachable".into()),
                };
                let is_dir = b.content == Content::Dir;
                let changed = if is_dir {
                    kept.parent != b.parent || kept.name != b.name
                } else {
                    kept != b
                };
                let moved_out = moved_out_from_delete(kept, holder, deleter, s);
                let has_children = f.nodes.values().any(|e| e.parent == id);
                let should_stay = changed || moved_out || (is_dir && has_children);
                if should_stay != fe.is_some() {
                    return Err(format!(
                        "{id:?} deleted on one side: stays={} want {should_stay}",
                        fe.is_some()
                    ));
                }
                if let Some(f) = fe
                    && f.content != kept.content
                {
                    return Err(format!("{id:?}: kept with other content"));
                }
            }
            _ => {}
        }
    }
    // Deleted on both sides: gone.
    for id in s.nodes.keys() {
        if !l.nodes.contains_key(id) && !r.nodes.contains_key(id) && f.nodes.contains_key(id) {
            return Err(format!("{id:?} deleted on both sides came back"));
        }
    }
    Ok(())
}

/// Walking up from `kept` in `holder`: meets a directory `deleter` deleted and `holder`
/// moved or renamed, before one `deleter` still has.
fn moved_out_from_delete(kept: &Entry, holder: &Model, deleter: &Model, s: &Model) -> bool {
    let mut at = kept.parent;
    while at != NodeId::ROOT && !deleter.nodes.contains_key(&at) {
        match (holder.nodes.get(&at), s.nodes.get(&at)) {
            (Some(now), Some(before)) => {
                if now.parent != before.parent || now.name != before.name {
                    return true;
                }
                at = now.parent;
            }
            _ => return false,
        }
    }
    false
}

fn ensure(ok: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(msg()) }
}

/// Rule 6 for one field: remote's value if remote changed it, else local's.
fn field_merged<T: PartialEq>(local: &T, base: &T, remote: &T, merged: &T) -> bool {
    if remote != base {
        merged == remote
    } else {
        merged == local
    }
}

/// Rule 8's only real source: a crash after a push committed but before the synced tree was
/// updated, so the remote side holds local creates under the same ids. Copies some local
/// creates into `r` (an odd pick with other content), where their parent and name allow.
fn mirror_local_creates(l: &Model, s: &Model, r: &mut Model, picks: &[u8]) {
    let created: Vec<NodeId> = l
        .nodes
        .keys()
        .filter(|id| !s.nodes.contains_key(id))
        .copied()
        .collect();
    for &v in picks {
        if created.is_empty() {
            return;
        }
        let id = created[usize::from(v) % created.len()];
        let mut e = l.nodes[&id].clone();
        if r.nodes.contains_key(&id) || !r.is_dir(e.parent) || r.holder(e.parent, &e.name).is_some()
        {
            continue;
        }
        if v % 2 == 1
            && let Content::File { size, .. } = e.content
        {
            e.content = Content::File {
                manifest_id: manifest(250, u64::from(v), 0),
                size,
            };
        }
        r.nodes.insert(id, e);
    }
}

fn build(editor: &mut Editor, base: &Model, ops: &[RawOp], creates_only: bool) -> Model {
    let mut m = base.clone();
    for op in ops {
        editor.apply(&mut m, *op, creates_only);
    }
    m
}

/// Cases of the main property: 3000 by default (a few seconds in a debug build); set
/// PLANNER_CASES for a longer run.
fn cases() -> u32 {
    std::env::var("PLANNER_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn random_edits_on_both_sides_converge(
        s_ops in raw_ops(30),
        s_edits in raw_ops(8),
        l_ops in raw_ops(14),
        r_ops in raw_ops(14),
        mirrors in vec(any::<u8>(), 0..3),
    ) {
        let s = build(&mut Editor { side: 1, counter: 0 }, &Model::default(), &s_ops, true);
        // A few edits after the creates make the synced tree less regular.
        let s = build(&mut Editor { side: 4, counter: 0 }, &s, &s_edits, false);
        let l = build(&mut Editor { side: 2, counter: 0 }, &s, &l_ops, false);
        let mut r = build(&mut Editor { side: 3, counter: 0 }, &s, &r_ops, false);
        mirror_local_creates(&l, &s, &mut r, &mirrors);
        let checked = check_case(&l, &s, &r);
        prop_assert!(checked.is_ok(), "{}", checked.unwrap_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn one_sided_changes_are_pushed_or_applied_as_they_are(
        s_ops in raw_ops(30),
        ops in raw_ops(14),
    ) {
        let s = build(&mut Editor { side: 1, counter: 0 }, &Model::default(), &s_ops, true);
        let changed = build(&mut Editor { side: 2, counter: 0 }, &s, &ops, false);
        let (st, ct) = (s.tree(), changed.tree());
        // Local changes only: push them all, change nothing locally, no conflicts.
        let p = plan(&ct, &st, &st, &ctx()).unwrap();
        prop_assert!(p.to_local.is_empty() && p.conflicts.is_empty(), "{p:?}");
        let (_, pushed) = apply_plan(&changed, &s, &p).unwrap();
        prop_assert_eq!(&pushed, &changed);
        // Remote changes only: apply them all, push nothing.
        let p = plan(&st, &st, &ct, &ctx()).unwrap();
        prop_assert!(p.to_remote.is_empty() && p.conflicts.is_empty(), "{p:?}");
        let (applied, _) = apply_plan(&s, &changed, &p).unwrap();
        prop_assert_eq!(&applied, &changed);
    }
}

// ---------------------------------------------------------------------------------------
// Named regression tests: one per conflict case.
// ---------------------------------------------------------------------------------------

fn id(n: u128) -> NodeId {
    NodeId::from_u128(n)
}

fn dir(parent: u128, n: &str) -> Entry {
    Entry {
        parent: id(parent),
        name: name(n),
        mode: 0o755,
        mtime: 0,
        xattrs: Xattrs::new(),
        content: Content::Dir,
    }
}

fn file(parent: u128, n: &str, m: u8) -> Entry {
    Entry {
        parent: id(parent),
        name: name(n),
        mode: 0o644,
        mtime: 0,
        xattrs: Xattrs::new(),
        content: Content::File {
            manifest_id: manifest(m, 0, 0),
            size: u64::from(m),
        },
    }
}

fn model(entries: &[(u128, Entry)]) -> Model {
    Model {
        nodes: entries.iter().map(|(n, e)| (id(*n), e.clone())).collect(),
    }
}

/// Plans, checks every property, and returns the plan and the converged tree.
fn run(l: &Model, s: &Model, r: &Model) -> (Plan, Model) {
    if let Err(e) = check_case(l, s, r) {
        panic!("{e}");
    }
    let p = plan(&l.tree(), &s.tree(), &r.tree(), &ctx()).unwrap();
    let (lf, _) = apply_plan(l, r, &p).unwrap();
    (p, lf)
}

fn at(m: &Model, parent: u128, n: &str) -> Option<(NodeId, Entry)> {
    m.nodes
        .iter()
        .find(|(_, e)| e.parent == id(parent) && e.name.as_str() == n)
        .map(|(i, e)| (*i, e.clone()))
}

const CONFLICT_SUFFIX: &str = " (conflicted copy laptop 2025-11-24 093005)";

#[test]
fn both_edited_remote_keeps_name_local_becomes_conflicted_copy() {
    let s = model(&[(1, file(0, "notes.txt", 1))]);
    let l = model(&[(1, file(0, "notes.txt", 2))]);
    let r = model(&[(1, file(0, "notes.txt", 3))]);
    let (p, f) = run(&l, &s, &r);
    assert_eq!(f.nodes[&id(1)].content, file(0, "x", 3).content);
    let copy_name = format!("notes{CONFLICT_SUFFIX}.txt");
    let (copy, entry) = at(&f, 0, &copy_name).expect("conflicted copy");
    assert_ne!(copy, id(1));
    assert_eq!(entry.content, file(0, "x", 2).content);
    assert!(matches!(
        p.to_local[0],
        LocalStep::CopyAside { source, node, .. } if source == id(1) && node == copy
    ));
    assert!(p.to_local.contains(&LocalStep::UpdateContent {
        node: id(1),
        content: file(0, "x", 3).content
    }));
    assert_eq!(
        p.to_remote,
        vec![PushStep::Create {
            node: copy,
            entry: entry.clone()
        }]
    );
    assert_eq!(
        p.conflicts,
        vec![Conflict::ContentCopied {
            node: id(1),
            copy,
            name: name(&copy_name)
        }]
    );
}

#[test]
fn both_edited_when_the_copy_name_is_taken_numbers_it() {
    let taken = format!("notes{CONFLICT_SUFFIX}.txt");
    let s = model(&[(1, file(0, "notes.txt", 1)), (2, file(0, &taken, 9))]);
    let l = model(&[(1, file(0, "notes.txt", 2)), (2, file(0, &taken, 9))]);
    let r = model(&[(1, file(0, "notes.txt", 3)), (2, file(0, &taken, 9))]);
    let (_, f) = run(&l, &s, &r);
    let numbered = "notes (conflicted copy laptop 2025-11-24 093005 2).txt";
    assert_eq!(
        at(&f, 0, numbered).unwrap().1.content,
        file(0, "x", 2).content
    );
    assert_eq!(f.nodes[&id(2)].content, file(0, "x", 9).content);
}

#[test]
fn both_edited_identically_needs_nothing() {
    let s = model(&[(1, file(0, "a", 1))]);
    let both = model(&[(1, file(0, "a", 2))]);
    let (p, _) = run(&both, &s, &both);
    assert!(p.is_empty() && p.conflicts.is_empty());
}

#[test]
fn local_edit_against_remote_delete_recreates_node_and_ancestors_on_server() {
    // Remote: rm -rf /A. Local: edited /A/B/f. f, B and A come back (same ids); g does not.
    let s = model(&[
        (1, dir(0, "A")),
        (2, dir(1, "B")),
        (3, file(2, "f", 1)),
        (4, file(2, "g", 1)),
    ]);
    let l = model(&[
        (1, dir(0, "A")),
        (2, dir(1, "B")),
        (3, file(2, "f", 2)),
        (4, file(2, "g", 1)),
    ]);
    let r = Model::default();
    let (p, f) = run(&l, &s, &r);
    assert_eq!(f.nodes[&id(3)], l.nodes[&id(3)]);
    assert!(!f.nodes.contains_key(&id(4)));
    let creates: Vec<NodeId> = p
        .to_remote
        .iter()
        .map(|st| match st {
            PushStep::Create { node, .. } => *node,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(creates, vec![id(1), id(2), id(3)]);
    assert_eq!(p.to_local, vec![LocalStep::Delete { node: id(4) }]);
    assert!(p.conflicts.contains(&Conflict::EditBeatDelete {
        node: id(3),
        deleted_on: Side::Remote
    }));
    assert!(p.conflicts.contains(&Conflict::DirectoryKept {
        node: id(1),
        deleted_on: Side::Remote
    }));
}

#[test]
fn local_delete_against_remote_edit_restores_locally() {
    let s = model(&[(1, dir(0, "A")), (2, file(1, "f", 1)), (3, file(1, "g", 1))]);
    let l = Model::default();
    let r = model(&[(1, dir(0, "A")), (2, file(1, "f", 5)), (3, file(1, "g", 1))]);
    let (p, f) = run(&l, &s, &r);
    assert_eq!(f.nodes[&id(2)], r.nodes[&id(2)]);
    assert!(!f.nodes.contains_key(&id(3)));
    assert_eq!(
        p.to_local,
        vec![
            LocalStep::Create {
                node: id(1),
                entry: dir(0, "A")
            },
            LocalStep::Create {
                node: id(2),
                entry: file(1, "f", 5)
            },
        ]
    );
    assert_eq!(p.to_remote, vec![PushStep::Delete { node: id(3) }]);
}

#[test]
fn remote_deleted_dir_stays_for_locally_added_child() {
    let s = model(&[(1, dir(0, "D")), (2, file(1, "old", 1))]);
    let l = model(&[
        (1, dir(0, "D")),
        (2, file(1, "old", 1)),
        (9, file(1, "new", 4)),
    ]);
    let r = Model::default();
    let (p, f) = run(&l, &s, &r);
    assert!(f.nodes.contains_key(&id(1)) && f.nodes.contains_key(&id(9)));
    // The untouched sibling's deletion still happens.
    assert!(!f.nodes.contains_key(&id(2)));
    assert!(p.conflicts.contains(&Conflict::DirectoryKept {
        node: id(1),
        deleted_on: Side::Remote
    }));
}

#[test]
fn local_deleted_dir_stays_for_remotely_added_child() {
    let s = model(&[(1, dir(0, "D")), (2, file(1, "old", 1))]);
    let l = Model::default();
    let r = model(&[
        (1, dir(0, "D")),
        (2, file(1, "old", 1)),
        (9, file(1, "new", 4)),
    ]);
    let (p, f) = run(&l, &s, &r);
    assert!(f.nodes.contains_key(&id(1)) && f.nodes.contains_key(&id(9)));
    assert!(!f.nodes.contains_key(&id(2)));
    assert_eq!(p.to_remote, vec![PushStep::Delete { node: id(2) }]);
}

#[test]
fn dir_deleted_while_other_side_moved_a_file_in() {
    // Remote: rm -rf /D. Local: mv /x /D/x. D stays with x only.
    let s = model(&[(1, dir(0, "D")), (2, file(1, "y", 1)), (3, file(0, "x", 1))]);
    let l = model(&[(1, dir(0, "D")), (2, file(1, "y", 1)), (3, file(1, "x", 1))]);
    let r = model(&[(3, file(0, "x", 1))]);
    let (_, f) = run(&l, &s, &r);
    assert_eq!(f.nodes[&id(3)].parent, id(1));
    assert!(f.nodes.contains_key(&id(1)));
    assert!(!f.nodes.contains_key(&id(2)));
}

#[test]
fn dir_deleted_against_an_attribute_change_only_goes_with_its_contents() {
    // A directory's mtime changes with its entries: that alone does not undo an rm -rf.
    let s = model(&[(1, dir(0, "D")), (2, file(1, "y", 1))]);
    let l = Model::default();
    let mut r = s.clone();
    r.nodes.get_mut(&id(1)).unwrap().mtime = 99;
    let (p, f) = run(&l, &s, &r);
    assert!(f.nodes.is_empty());
    assert_eq!(
        p.to_remote,
        vec![
            PushStep::Delete { node: id(2) },
            PushStep::Delete { node: id(1) }
        ]
    );
    assert!(p.conflicts.is_empty());
}

#[test]
fn dir_renamed_on_one_side_survives_a_delete_on_the_other_with_its_contents() {
    // Remote: mv /Photos "/Photos 2020". Local: rm -rf /Photos. The renamed tree stays,
    // as it would under Dropbox or Syncthing (the delete was of what sat at /Photos).
    let s = model(&[
        (1, dir(0, "Photos")),
        (2, dir(1, "trip")),
        (3, file(2, "a.jpg", 1)),
    ]);
    let l = Model::default();
    let mut r = s.clone();
    r.nodes.get_mut(&id(1)).unwrap().name = name("Photos 2020");
    let (p, f) = run(&l, &s, &r);
    assert_eq!(f, r);
    assert!(p.to_remote.is_empty());
    assert!(p.conflicts.contains(&Conflict::EditBeatDelete {
        node: id(1),
        deleted_on: Side::Local
    }));
    // The other way round: a local rename survives a remote rm -rf, and is pushed back.
    let (p, f) = run(&r, &s, &l);
    assert_eq!(f, r);
    assert_eq!(p.to_remote.len(), 3);
    assert!(p.to_local.is_empty());
}

#[test]
fn subdir_moved_out_of_a_tree_deleted_on_the_other_side_survives() {
    // Remote: mv /A/D /D. Local: rm -rf /A. D and its file stay; A and its file go.
    let s = model(&[
        (1, dir(0, "A")),
        (2, dir(1, "D")),
        (3, file(2, "f", 1)),
        (4, file(1, "g", 1)),
    ]);
    let l = Model::default();
    let r = model(&[
        (1, dir(0, "A")),
        (2, dir(0, "D")),
        (3, file(2, "f", 1)),
        (4, file(1, "g", 1)),
    ]);
    let (p, f) = run(&l, &s, &r);
    assert_eq!(f, model(&[(2, dir(0, "D")), (3, file(2, "f", 1))]));
    assert_eq!(
        p.to_remote,
        vec![
            PushStep::Delete { node: id(4) },
            PushStep::Delete { node: id(1) }
        ]
    );
}

#[test]
fn concurrent_moves_remote_wins_and_local_follows() {
    let s = model(&[(1, dir(0, "A")), (2, dir(0, "B")), (3, file(0, "f", 1))]);
    let l = model(&[(1, dir(0, "A")), (2, dir(0, "B")), (3, file(1, "f", 1))]);
    let r = model(&[(1, dir(0, "A")), (2, dir(0, "B")), (3, file(2, "g", 1))]);
    let (p, f) = run(&l, &s, &r);
    assert_eq!(f.nodes[&id(3)], file(2, "g", 1));
    assert!(p.to_remote.is_empty());
    assert_eq!(
        p.to_local,
        vec![LocalStep::Move {
            node: id(3),
            parent: id(2),
            name: name("g")
        }]
    );
    assert_eq!(
        p.conflicts,
        vec![Conflict::LocalMoveDropped {
            node: id(3),
            reason: MoveDropReason::ConcurrentMove
        }]
    );
}

#[test]
fn local_move_making_a_cycle_with_a_remote_move_is_dropped() {
    // Local: mv /A /B/A. Remote: mv /B /A/B. Remote committed first: A stays at the root.
    let s = model(&[(1, dir(0, "A")), (2, dir(0, "B"))]);
    let l = model(&[(1, dir(2, "A")), (2, dir(0, "B"))]);
    let r = model(&[(1, dir(0, "A")), (2, dir(1, "B"))]);
    let (p, f) = run(&l, &s, &r);
    assert_eq!(f, r);
    assert!(p.to_remote.is_empty());
    assert!(p.conflicts.contains(&Conflict::LocalMoveDropped {
        node: id(1),
        reason: MoveDropReason::Cycle
    }));
}

#[test]
fn name_collision_of_two_new_files_renames_the_local_one() {
    let s = Model::default();
    let l = model(&[(10, file(0, "plan.md", 1))]);
    let r = model(&[(20, file(0, "plan.md", 2))]);
    let (p, f) = run(&l, &s, &r);
    assert_eq!(f.nodes[&id(20)], r.nodes[&id(20)]);
    let renamed = format!("plan{CONFLICT_SUFFIX}.md");
    assert_eq!(f.nodes[&id(10)].name.as_str(), renamed);
    assert_eq!(
        p.to_local,
        vec![
            LocalStep::Move {
                node: id(10),
                parent: id(0),
                name: name(&renamed)
            },
            LocalStep::Create {
                node: id(20),
                entry: file(0, "plan.md", 2)
            },
        ]
    );
    assert!(matches!(
        &p.to_remote[..],
        [PushStep::Create { node, entry }] if *node == id(10) && entry.name.as_str() == renamed
    ));
    assert_eq!(
        p.conflicts,
        vec![Conflict::NameCollision {
            node: id(10),
            holder: id(20),
            name: name(&renamed)
        }]
    );
}

#[test]
fn local_rename_onto_a_remote_new_name_renames_the_local_node() {
    let s = model(&[(1, dir(0, "old"))]);
    let l = model(&[(1, dir(0, "photos.2020"))]);
    let r = model(&[(1, dir(0, "old")), (2, dir(0, "photos.2020"))]);
    let (_, f) = run(&l, &s, &r);
    // Directories get no extension split.
    assert_eq!(
        f.nodes[&id(1)].name.as_str(),
        format!("photos.2020{CONFLICT_SUFFIX}")
    );
    assert_eq!(f.nodes[&id(2)].name.as_str(), "photos.2020");
}

#[test]
fn edit_kept_against_delete_loses_its_name_to_a_remote_newcomer() {
    // Remote replaced f by a new node of the same name (editor save); local edited f.
    let s = model(&[(1, file(0, "f.txt", 1))]);
    let l = model(&[(1, file(0, "f.txt", 2))]);
    let r = model(&[(2, file(0, "f.txt", 3))]);
    let (_, f) = run(&l, &s, &r);
    assert_eq!(f.nodes[&id(2)], r.nodes[&id(2)]);
    assert_eq!(
        f.nodes[&id(1)].name.as_str(),
        format!("f{CONFLICT_SUFFIX}.txt")
    );
}

#[test]
fn swap_of_two_names_pushes_through_a_temporary_name() {
    let s = model(&[(1, file(0, "a", 1)), (2, file(0, "b", 2))]);
    let l = model(&[(1, file(0, "b", 1)), (2, file(0, "a", 2))]);
    let (p, f) = run(&l, &s, &s);
    assert_eq!(f, l);
    assert_eq!(p.to_remote.len(), 3);
    assert!(matches!(
        &p.to_remote[0],
        PushStep::Move { name, .. } if name.as_str().starts_with(".deltadrive-tmp-")
    ));
}

#[test]
fn swap_of_two_names_applies_locally_through_a_temporary_name() {
    let s = model(&[(1, dir(0, "a")), (2, file(0, "b", 2))]);
    let r = model(&[(1, dir(0, "b")), (2, file(0, "a", 2))]);
    let (p, f) = run(&s, &s, &r);
    assert_eq!(f, r);
    assert_eq!(p.to_local.len(), 3);
    assert!(p.to_remote.is_empty());
}

#[test]
fn rotation_of_three_names_and_parent_child_inversion_are_ordered() {
    // Local: a->b, b->c, c->a, and /P/Q becomes /Q/P with the names swapped too.
    let s = model(&[
        (1, file(0, "a", 1)),
        (2, file(0, "b", 2)),
        (3, file(0, "c", 3)),
        (4, dir(0, "P")),
        (5, dir(4, "Q")),
    ]);
    let l = model(&[
        (1, file(0, "b", 1)),
        (2, file(0, "c", 2)),
        (3, file(0, "a", 3)),
        (5, dir(0, "P")),
        (4, dir(5, "Q")),
    ]);
    let (_, f) = run(&l, &s, &s);
    assert_eq!(f, l);
}

#[test]
fn attributes_merge_per_field_and_remote_wins_on_both() {
    let mut base = file(0, "f", 1);
    base.xattrs
        .insert("user.k".into(), XattrValue(b"base".to_vec()));
    let s = model(&[(1, base.clone())]);
    let mut le = base.clone();
    le.mode = 0o600; // both change mode: remote wins
    le.mtime = 7; // local only
    le.xattrs.insert("user.l".into(), XattrValue(vec![1]));
    let mut re = base.clone();
    re.mode = 0o700;
    re.xattrs
        .insert("user.k".into(), XattrValue(b"remote".to_vec()));
    let (l, r) = (model(&[(1, le)]), model(&[(1, re)]));
    let (p, f) = run(&l, &s, &r);
    let got = &f.nodes[&id(1)];
    assert_eq!(got.mode, 0o700);
    assert_eq!(got.mtime, 7);
    assert_eq!(got.xattrs["user.k"].0, b"remote");
    assert_eq!(got.xattrs["user.l"].0, vec![1]);
    assert!(p.conflicts.is_empty());
}

#[test]
fn node_on_both_sides_without_base_merges_remote_first() {
    // A crash after a commit but before the synced tree was updated.
    let s = Model::default();
    let l = model(&[(1, file(0, "f", 2))]);
    let r = model(&[(1, file(0, "f", 3))]);
    let (p, f) = run(&l, &s, &r);
    assert_eq!(f.nodes[&id(1)], r.nodes[&id(1)]);
    assert!(matches!(p.conflicts[..], [Conflict::ContentCopied { .. }]));
}

#[test]
fn symlink_retarget_is_pushed_as_delete_and_create_of_the_same_id() {
    let link = |t: &str| Entry {
        parent: id(0),
        name: name("l"),
        mode: 0o777,
        mtime: 0,
        xattrs: Xattrs::new(),
        content: Content::Symlink { target: t.into() },
    };
    let s = model(&[(1, link("x"))]);
    let l = model(&[(1, link("y"))]);
    let (p, _) = run(&l, &s, &s);
    assert_eq!(
        p.to_remote,
        vec![
            PushStep::Delete { node: id(1) },
            PushStep::Create {
                node: id(1),
                entry: link("y")
            }
        ]
    );
}

#[test]
fn kinds_that_differ_between_trees_are_refused() {
    let s = model(&[(1, file(0, "f", 1))]);
    let l = model(&[(1, dir(0, "f"))]);
    let err = plan(&l.tree(), &s.tree(), &s.tree(), &ctx()).unwrap_err();
    assert!(matches!(err, PlanError::KindMismatch { .. }));
}

#[test]
fn new_ids_follow_the_seed() {
    let s = model(&[(1, file(0, "f", 1))]);
    let l = model(&[(1, file(0, "f", 2))]);
    let r = model(&[(1, file(0, "f", 3))]);
    let (lt, st, rt) = (l.tree(), s.tree(), r.tree());
    let copy_of = |seed| {
        let mut c = ctx();
        c.id_seed = seed;
        match plan(&lt, &st, &rt, &c).unwrap().conflicts[..] {
            [Conflict::ContentCopied { copy, .. }] => copy,
            ref other => panic!("{other:?}"),
        }
    };
    assert_eq!(copy_of(1), copy_of(1));
    assert_ne!(copy_of(1), copy_of(2));
}

#[test]
fn conflicted_name_is_public_and_matches_the_plan() {
    let n = conflicted_name(
        &name("x.txt"),
        NodeKind::File,
        &AccountName::new("laptop").unwrap(),
        &ConflictStamp::parse("2025-11-24 093005").unwrap(),
        1,
    )
    .unwrap();
    assert_eq!(n.as_str(), format!("x{CONFLICT_SUFFIX}.txt"));
}

/// The random edits reach every conflict kind and the orderings that need temporary names,
/// so the properties above are not vacuous (a fixed seed: the same cases on every run).
#[test]
fn random_edits_reach_every_conflict_kind_and_temporary_names() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let cases = (raw_ops(30), raw_ops(8), raw_ops(14), raw_ops(14));
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..1500 {
        let (s_ops, s_edits, l_ops, r_ops) = cases.new_tree(&mut runner).unwrap().current();
        let s = build(
            &mut Editor {
                side: 1,
                counter: 0,
            },
            &Model::default(),
            &s_ops,
            true,
        );
        let s = build(
            &mut Editor {
                side: 4,
                counter: 0,
            },
            &s,
            &s_edits,
            false,
        );
        let l = build(
            &mut Editor {
                side: 2,
                counter: 0,
            },
            &s,
            &l_ops,
            false,
        );
        let r = build(
            &mut Editor {
                side: 3,
                counter: 0,
            },
            &s,
            &r_ops,
            false,
        );
        let p = plan(&l.tree(), &s.tree(), &r.tree(), &ctx()).unwrap();
        for c in &p.conflicts {
            let kind = match c {
                Conflict::ContentCopied { .. } => "content copied",
                Conflict::NameCollision { .. } => "name collision",
                Conflict::LocalMoveDropped {
                    reason: MoveDropReason::ConcurrentMove,
                    ..
                } => "concurrent move",
                Conflict::LocalMoveDropped {
                    reason: MoveDropReason::Cycle,
                    ..
                } => "cyclic move",
                Conflict::EditBeatDelete {
                    deleted_on: Side::Local,
                    ..
                } => "edit beat local delete",
                Conflict::EditBeatDelete {
                    deleted_on: Side::Remote,
                    ..
                } => "edit beat remote delete",
                Conflict::DirectoryKept {
                    deleted_on: Side::Local,
                    ..
                } => "dir kept against local delete",
                Conflict::DirectoryKept {
                    deleted_on: Side::Remote,
                    ..
                } => "dir kept against remote delete",
            };
            *seen.entry(kind.into()).or_default() += 1;
        }
        let tmp = |n: &Name| n.as_str().starts_with(".deltadrive-tmp-");
        if p.to_local
            .iter()
            .any(|s| matches!(s, LocalStep::Move { name, .. } if tmp(name)))
        {
            *seen.entry("temporary name locally".into()).or_default() += 1;
        }
        if p.to_remote
            .iter()
            .any(|s| matches!(s, PushStep::Move { name, .. } if tmp(name)))
        {
            *seen.entry("temporary name pushed".into()).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), 10, "cases seen: {seen:#?}");
}

// ---------------------------------------------------------------------------------------
// Local-only names (FIFOs, sockets, device nodes): in no tree, but taken on the local side.
// ---------------------------------------------------------------------------------------

/// Plans with `local_only` names (parent, name, holder), applies the plan to both sides,
/// checks that they converge, that no node ends at a local-only place, and that planning
/// again gives nothing; returns the plan and the converged tree.
fn run_local_only(
    l: &Model,
    s: &Model,
    r: &Model,
    local_only: &[(u128, &str, u128)],
) -> (Plan, Model) {
    let names: BTreeMap<(NodeId, Name), NodeId> = local_only
        .iter()
        .map(|(p, n, h)| ((id(*p), name(n)), id(*h)))
        .collect();
    let c = ctx().with_local_only(names.clone());
    let p = plan(&l.tree(), &s.tree(), &r.tree(), &c).unwrap();
    let (lf, rf) = apply_plan(l, r, &p).unwrap();
    assert_eq!(lf.nodes, rf.nodes, "both sides converge");
    for place in names.keys() {
        assert!(
            !lf.nodes
                .values()
                .any(|e| (e.parent, e.name.clone()) == *place),
            "a node took the local-only name {place:?}: {p:?}"
        );
    }
    let again = plan(&lf.tree(), &rf.tree(), &rf.tree(), &c).unwrap();
    assert!(again.is_empty(), "replans to nothing: {again:?}");
    (p, lf)
}

#[test]
fn remote_create_onto_a_local_only_name_lands_as_a_conflicted_copy() {
    let s = Model::default();
    let l = Model::default();
    let r = model(&[(20, file(0, "pipe", 2))]);
    let (p, f) = run_local_only(&l, &s, &r, &[(0, "pipe", 99)]);
    let renamed = format!("pipe{CONFLICT_SUFFIX}");
    assert_eq!(f.nodes[&id(20)].name.as_str(), renamed);
    assert_eq!(f.nodes[&id(20)].content, r.nodes[&id(20)].content);
    assert_eq!(
        p.to_local,
        vec![LocalStep::Create {
            node: id(20),
            entry: Entry {
                name: name(&renamed),
                ..file(0, "pipe", 2)
            }
        }]
    );
    assert_eq!(
        p.to_remote,
        vec![PushStep::Move {
            node: id(20),
            parent: id(0),
            name: name(&renamed)
        }]
    );
    assert_eq!(
        p.conflicts,
        vec![Conflict::NameCollision {
            node: id(20),
            holder: id(99),
            name: name(&renamed)
        }]
    );
}

#[test]
fn remote_move_onto_a_local_only_name_is_renamed_like_a_loser() {
    let s = model(&[(1, dir(0, "D")), (5, file(0, "a.txt", 1))]);
    let l = s.clone();
    let r = model(&[(1, dir(0, "D")), (5, file(1, "sock.txt", 1))]);
    let (p, f) = run_local_only(&l, &s, &r, &[(1, "sock.txt", 99)]);
    let renamed = format!("sock{CONFLICT_SUFFIX}.txt");
    assert_eq!(f.nodes[&id(5)].parent, id(1));
    assert_eq!(f.nodes[&id(5)].name.as_str(), renamed);
    assert!(p.to_local.contains(&LocalStep::Move {
        node: id(5),
        parent: id(1),
        name: name(&renamed)
    }));
}

#[test]
fn a_local_only_name_counts_as_taken_for_conflicted_copies() {
    let taken = format!("notes{CONFLICT_SUFFIX}.txt");
    let s = model(&[(1, file(0, "notes.txt", 1))]);
    let l = model(&[(1, file(0, "notes.txt", 2))]);
    let r = model(&[(1, file(0, "notes.txt", 3))]);
    let (_, f) = run_local_only(&l, &s, &r, &[(0, &taken, 99)]);
    let numbered = "notes (conflicted copy laptop 2025-11-24 093005 2).txt";
    assert_eq!(
        at(&f, 0, numbered).unwrap().1.content,
        file(0, "x", 2).content
    );
}

#[test]
fn remote_delete_of_directories_holding_a_local_only_node_keeps_them() {
    // Remote: rm -rf /D. Local: a FIFO in /D/E. D and E stay (and come back on the server,
    // same ids), the synced files in them go.
    let s = model(&[
        (1, dir(0, "D")),
        (2, dir(1, "E")),
        (3, file(2, "f", 1)),
        (4, file(1, "g", 1)),
    ]);
    let l = s.clone();
    let r = Model::default();
    let (p, f) = run_local_only(&l, &s, &r, &[(2, "fifo", 99)]);
    assert_eq!(
        f.nodes.keys().copied().collect::<Vec<_>>(),
        vec![id(1), id(2)]
    );
    let creates: Vec<NodeId> = p
        .to_remote
        .iter()
        .map(|st| match st {
            PushStep::Create { node, .. } => *node,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(creates, vec![id(1), id(2)]);
    let deletes: BTreeSet<NodeId> = p
        .to_local
        .iter()
        .map(|st| match st {
            LocalStep::Delete { node } => *node,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(deletes, BTreeSet::from([id(3), id(4)]));
    for node in [1, 2] {
        assert!(p.conflicts.contains(&Conflict::DirectoryKept {
            node: id(node),
            deleted_on: Side::Remote
        }));
    }
}

#[test]
fn a_local_only_name_elsewhere_changes_nothing() {
    let s = model(&[(1, dir(0, "D")), (2, file(1, "f", 1))]);
    let l = model(&[(1, dir(0, "D")), (2, file(1, "f", 2))]);
    let r = s.clone();
    let (p, _) = run_local_only(&l, &s, &r, &[(1, "pipe", 99), (0, "sock", 98)]);
    let plain = plan(&l.tree(), &s.tree(), &r.tree(), &ctx()).unwrap();
    assert_eq!(p, plain);
    assert!(p.conflicts.is_empty());
}

/// The properties that hold with local-only names: both sides converge on a valid tree, no
/// node ends at a local-only place, every directory holding one stays, no new content is
/// lost, and planning again gives nothing.
fn check_local_only_case(
    l: &Model,
    s: &Model,
    r: &Model,
    names: &BTreeMap<(NodeId, Name), NodeId>,
) -> Result<(), String> {
    let c = ctx().with_local_only(names.clone());
    let p = plan(&l.tree(), &s.tree(), &r.tree(), &c).map_err(|e| format!("plan failed: {e}"))?;
    let (lf, rf) = apply_plan(l, r, &p)?;
    if lf != rf {
        return Err(format!(
            "sides diverge\nlocal: {:?}\nremote: {:?}\nplan: {p:#?}",
            lf.nodes, rf.nodes
        ));
    }
    lf.check_valid()?;
    for (dir, n) in names.keys() {
        if *dir != NodeId::ROOT && !lf.nodes.contains_key(dir) {
            return Err(format!("directory {dir} holding {n:?} was deleted: {p:#?}"));
        }
        if let Some((id, _)) = lf
            .nodes
            .iter()
            .find(|(_, e)| e.parent == *dir && e.name == *n)
        {
            return Err(format!("node {id} took the local-only name {n:?}: {p:#?}"));
        }
    }
    let kept = lf.manifests();
    for (side, m) in [("local", l), ("remote", r)] {
        if let Some(lost) = new_content(m, s).difference(&kept).next() {
            return Err(format!("{side} content {lost:?} lost"));
        }
    }
    let t = lf.tree();
    let again = plan(&t, &t, &t, &c).map_err(|e| e.to_string())?;
    if !again.is_empty() || !again.conflicts.is_empty() {
        return Err(format!("replanning the result is not empty: {again:?}"));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn local_only_names_are_never_taken_and_their_directories_stay(
        s_ops in raw_ops(30),
        l_ops in raw_ops(10),
        r_ops in raw_ops(14),
        picks in vec((any::<u8>(), any::<u8>()), 1..4),
    ) {
        let s = build(&mut Editor { side: 1, counter: 0 }, &Model::default(), &s_ops, true);
        let l = build(&mut Editor { side: 2, counter: 0 }, &s, &l_ops, false);
        let r = build(&mut Editor { side: 3, counter: 0 }, &s, &r_ops, false);
        // Local-only nodes at places free on the local side (a name there is unique).
        let dirs: Vec<NodeId> = std::iter::once(NodeId::ROOT)
            .chain(
                l.nodes
                    .iter()
                    .filter(|(_, e)| e.content == Content::Dir)
                    .map(|(id, _)| *id),
            )
            .collect();
        let mut names = BTreeMap::new();
        for (i, (d, n)) in picks.iter().enumerate() {
            let dir = dirs[usize::from(*d) % dirs.len()];
            let n = name(NAMES[usize::from(*n) % NAMES.len()]);
            let free = !l.nodes.values().any(|e| e.parent == dir && e.name == n);
            if free {
                names.insert((dir, n), id(1_000_000 + i as u128));
            }
        }
        let checked = check_local_only_case(&l, &s, &r, &names);
        prop_assert!(checked.is_ok(), "{}", checked.unwrap_err());
    }
}
