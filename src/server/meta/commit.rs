//! Applying one difference transaction inside the writer's savepoint: check every base,
//! every chunk, then apply op by op; any refusal rolls the whole transaction back.

use std::collections::HashSet;

use rusqlite::{Connection, OptionalExtension, params};

use super::schema::{self, KIND_DIR, KIND_FILE, KIND_SYMLINK};
use super::sqlite::{
    HeldLately, held_lens, missing_of, node_from_blob, to_i64, to_u64, volume_head,
};
use super::{CommitError, CommitOutcome, DeviceId, MetaError, Refusal, RefusalKind, VolumeId};
use crate::chunking::{ChunkId, ChunkRef};
use crate::protocol::limits::MAX_MANIFEST_CHUNKS;
use crate::protocol::{
    CommitRequest, CreateOp, DeleteOp, MoveOp, Name, NodeId, NodeKind, Op, Seq, SetAttrsOp,
    StaleNode, WriteOp, manifest_id,
};

/// Most ancestors walked when looking for a cycle; deeper trees are refused as corrupt.
const MAX_DEPTH: usize = 100_000;
/// Most children named in a `not_empty` answer.
const MAX_CHILDREN_NAMED: i64 = 64;

fn refuse(kind: RefusalKind, op: Option<usize>, message: impl Into<String>) -> CommitError {
    CommitError::Refused(Refusal {
        kind,
        op: op.and_then(|i| u32::try_from(i).ok()),
        message: message.into(),
    })
}

/// The parts of a stored node the checks need.
struct NodeState {
    parent: Option<NodeId>,
    kind: i64,
    version: i64,
    deleted_seq: Option<i64>,
}

/// A node row as read: parent blob, kind, version, deleted seq.
type NodeRow = (Option<Vec<u8>>, i64, i64, Option<i64>);

fn load(c: &Connection, vol: VolumeId, node: NodeId) -> Result<Option<NodeState>, MetaError> {
    let row: Option<NodeRow> = c
        .prepare_cached(
            "SELECT parent, kind, version, deleted_seq FROM nodes WHERE vol = ?1 AND id = ?2",
        )?
        .query_row(params![vol.0, &node.to_bytes()[..]], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    row.map(|(parent, kind, version, deleted_seq)| {
        Ok(NodeState {
            parent: parent.as_deref().map(node_from_blob).transpose()?,
            kind,
            version,
            deleted_seq,
        })
    })
    .transpose()
}

/// A node that must exist now (not deleted).
fn live(c: &Connection, vol: VolumeId, node: NodeId, op: usize) -> Result<NodeState, CommitError> {
    match load(c, vol, node)? {
        Some(n) if n.deleted_seq.is_none() => Ok(n),
        Some(_) | None => Err(refuse(
            RefusalKind::MissingNode(node),
            Some(op),
            format!("node {node} does not exist"),
        )),
    }
}

/// A parent that must be a live directory.
fn live_dir(c: &Connection, vol: VolumeId, dir: NodeId, op: usize) -> Result<(), CommitError> {
    match load(c, vol, dir)? {
        Some(n) if n.deleted_seq.is_none() => {
            if n.kind == KIND_DIR {
                Ok(())
            } else {
                Err(refuse(
                    RefusalKind::NotADirectory(dir),
                    Some(op),
                    format!("parent {dir} is not a directory"),
                ))
            }
        }
        Some(_) | None => Err(refuse(
            RefusalKind::MissingParent(dir),
            Some(op),
            format!("parent {dir} does not exist"),
        )),
    }
}

fn name_holder(
    c: &Connection,
    vol: VolumeId,
    dir: NodeId,
    name: &Name,
) -> Result<Option<NodeId>, MetaError> {
    let id: Option<Vec<u8>> = c
        .prepare_cached(
            "SELECT id FROM nodes WHERE vol = ?1 AND parent = ?2 AND name = ?3
             AND deleted_seq IS NULL",
        )?
        .query_row(params![vol.0, &dir.to_bytes()[..], name.as_str()], |r| {
            r.get(0)
        })
        .optional()?;
    id.as_deref().map(node_from_blob).transpose()
}

fn kind_code(kind: NodeKind) -> i64 {
    match kind {
        NodeKind::File => KIND_FILE,
        NodeKind::Dir => KIND_DIR,
        NodeKind::Symlink => KIND_SYMLINK,
    }
}

fn xattrs_text(x: &crate::protocol::Xattrs) -> Result<Option<String>, MetaError> {
    if x.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(x)
        .map(Some)
        .map_err(|e| MetaError::Corrupt(format!("cannot encode xattrs: {e}")))
}

/// Applies `req` to volume `vol` as `device`, or refuses it. Runs inside a savepoint that
/// the caller rolls back on any error. `held` answers for chunks recorded lately.
pub(super) fn apply(
    c: &Connection,
    held: &HeldLately,
    vol: VolumeId,
    device: DeviceId,
    req: &CommitRequest,
    req_hash: &[u8; 32],
    now_ms: i64,
) -> Result<CommitOutcome, CommitError> {
    let txn = req.txn.to_bytes();
    let earlier: Option<(i64, Vec<u8>)> = c
        .prepare_cached(
            "SELECT seq, req_hash FROM commits WHERE vol = ?1 AND device = ?2 AND txn = ?3",
        )?
        .query_row(params![vol.0, device.0, &txn[..]], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    if let Some((seq, hash)) = earlier {
        if hash.as_slice() == req_hash {
            return Ok(CommitOutcome::Replayed(Seq(to_u64(seq)?)));
        }
        return Err(refuse(
            RefusalKind::TxnReused,
            None,
            format!(
                "transaction {} of this device was already committed with other ops",
                req.txn
            ),
        ));
    }

    check_bases_and_chunks(c, held, vol, req)?;

    let seq = volume_head(c, vol)?.0 + 1;
    let seq_i = to_i64(seq);
    for (i, op) in req.ops.iter().enumerate() {
        match op {
            Op::Create(o) => create(c, vol, seq_i, i, o)?,
            Op::Write(o) => write(c, vol, seq_i, i, o)?,
            Op::SetAttrs(o) => set_attrs(c, vol, seq_i, i, o)?,
            Op::Move(o) => move_node(c, vol, seq_i, i, o)?,
            Op::Delete(o) => delete(c, vol, seq_i, i, o)?,
        }
    }
    let ops = serde_json::to_string(&req.ops)
        .map_err(|e| MetaError::Corrupt(format!("cannot encode ops: {e}")))?;
    c.prepare_cached(
        "INSERT INTO commits (vol, seq, device, txn, req_hash, time_ms, ops)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        vol.0,
        seq_i,
        device.0,
        &txn[..],
        &req_hash[..],
        now_ms,
        ops
    ])?;
    c.prepare_cached("UPDATE volumes SET head = ?2 WHERE id = ?1")?
        .execute(params![vol.0, seq_i])?;
    Ok(CommitOutcome::Applied(Seq(seq)))
}

/// Every base against the versions before this transaction (a node created earlier in the
/// same transaction has version 0), and every chunk the ops bring in against the volume's
/// holdings. Reports all stale nodes at once, so the device can pull once and rebase.
fn check_bases_and_chunks(
    c: &Connection,
    held: &HeldLately,
    vol: VolumeId,
    req: &CommitRequest,
) -> Result<(), CommitError> {
    let mut created: HashSet<NodeId> = HashSet::new();
    let mut stale: Vec<StaleNode> = Vec::new();
    let mut stale_seen: HashSet<NodeId> = HashSet::new();
    // Each chunk an op brings in, with the op: its length is checked against the holding.
    let mut chunks: Vec<(usize, ChunkRef)> = Vec::new();
    for (i, op) in req.ops.iter().enumerate() {
        match op {
            Op::Create(o) => {
                created.insert(o.node);
                if let Some(m) = &o.manifest {
                    chunks.extend(m.chunks.iter().map(|r| (i, *r)));
                }
                continue;
            }
            Op::Write(o) => chunks.extend(o.edit.inserted().map(|r| (i, *r))),
            Op::SetAttrs(_) | Op::Move(_) | Op::Delete(_) => {}
        }
        let node = op.node();
        let base = op.base().unwrap_or_default();
        if created.contains(&node) {
            if base != Seq(0) {
                return Err(refuse(
                    RefusalKind::BadOp,
                    Some(i),
                    format!("node {node} is created in this transaction: its base must be 0"),
                ));
            }
            continue;
        }
        let Some(state) = load(c, vol, node)? else {
            return Err(refuse(
                RefusalKind::MissingNode(node),
                Some(i),
                format!("node {node} does not exist"),
            ));
        };
        let (current, deleted) = match state.deleted_seq {
            Some(d) => (d, true),
            None => (state.version, false),
        };
        let current = Seq(to_u64(current)?);
        if (deleted || current != base) && stale_seen.insert(node) {
            stale.push(StaleNode {
                node,
                base,
                current,
                deleted,
            });
        }
    }
    if !stale.is_empty() {
        let n = stale.len();
        return Err(refuse(
            RefusalKind::Stale(stale),
            None,
            format!("{n} node(s) changed since the transaction's base"),
        ));
    }
    let ids: Vec<ChunkId> = chunks.iter().map(|(_, r)| r.id).collect();
    let lens = held_lens(c, held, vol, &ids)?;
    let missing: Vec<ChunkId> = missing_of(&ids, &lens);
    if !missing.is_empty() {
        let n = missing.len();
        return Err(refuse(
            RefusalKind::MissingChunks(missing),
            None,
            format!("{n} chunk(s) are not held by this volume: upload them first"),
        ));
    }
    // A length that differs from the chunk's would make every device that rebuilds the file
    // fail: the claim is checked against what was measured at upload.
    if let Some((i, r, actual)) = chunks
        .iter()
        .find_map(|(i, r)| lens.get(&r.id).filter(|&&l| l != r.len).map(|&l| (i, r, l)))
    {
        return Err(refuse(
            RefusalKind::BadManifest,
            Some(*i),
            format!(
                "chunk {} is {actual} bytes, the manifest says {}",
                r.id, r.len
            ),
        ));
    }
    Ok(())
}

fn create(
    c: &Connection,
    vol: VolumeId,
    seq: i64,
    i: usize,
    o: &CreateOp,
) -> Result<(), CommitError> {
    if let Some(n) = load(c, vol, o.node)?
        && n.deleted_seq.is_none()
    {
        return Err(refuse(
            RefusalKind::NodeExists(o.node),
            Some(i),
            format!("node {} exists already", o.node),
        ));
    }
    live_dir(c, vol, o.parent, i)?;
    if let Some(holder) = name_holder(c, vol, o.parent, &o.name)? {
        return Err(refuse(
            RefusalKind::NameTaken(holder),
            Some(i),
            format!("name {:?} is taken in {}", o.name.as_str(), o.parent),
        ));
    }
    let (size, manifest, mid) = match &o.manifest {
        Some(m) => (
            to_i64(m.size()),
            Some(schema::encode_manifest(m)),
            Some(manifest_id(m).as_bytes().to_vec()),
        ),
        None => (0, None, None),
    };
    // REPLACE revives a tombstone of the same id (an edit that won against a delete).
    c.prepare_cached(
        "INSERT OR REPLACE INTO nodes
         (vol, id, parent, name, kind, mode, mtime, size, manifest, manifest_id, target, xattrs,
          version, deleted_seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, NULL)",
    )?
    .execute(params![
        vol.0,
        &o.node.to_bytes()[..],
        &o.parent.to_bytes()[..],
        o.name.as_str(),
        kind_code(o.kind),
        i64::from(o.mode),
        o.mtime,
        size,
        manifest,
        mid,
        o.target,
        xattrs_text(&o.xattrs)?,
        seq
    ])?;
    Ok(())
}

fn write(
    c: &Connection,
    vol: VolumeId,
    seq: i64,
    i: usize,
    o: &WriteOp,
) -> Result<(), CommitError> {
    let state = live(c, vol, o.node, i)?;
    if state.kind != KIND_FILE {
        return Err(refuse(
            RefusalKind::BadOp,
            Some(i),
            format!("node {} is not a file", o.node),
        ));
    }
    let blob: Option<Vec<u8>> = c
        .prepare_cached("SELECT manifest FROM nodes WHERE vol = ?1 AND id = ?2")?
        .query_row(params![vol.0, &o.node.to_bytes()[..]], |r| r.get(0))?;
    let base = match blob {
        Some(b) => schema::decode_manifest(&b)?,
        None => crate::chunking::Manifest::default(),
    };
    let new = o.edit.apply(&base).map_err(|e| {
        refuse(
            RefusalKind::BadManifest,
            Some(i),
            format!("edit does not apply to the stored manifest: {e}"),
        )
    })?;
    if new.chunks.len() > MAX_MANIFEST_CHUNKS {
        return Err(refuse(
            RefusalKind::BadManifest,
            Some(i),
            format!("manifest of {} chunks is over the limit", new.chunks.len()),
        ));
    }
    if new.size() != o.size {
        return Err(refuse(
            RefusalKind::BadManifest,
            Some(i),
            format!("edit gives {} bytes, the op claims {}", new.size(), o.size),
        ));
    }
    let id = manifest_id(&new);
    if id != o.manifest_id {
        return Err(refuse(
            RefusalKind::BadManifest,
            Some(i),
            format!("edit gives manifest {id}, the op claims {}", o.manifest_id),
        ));
    }
    c.prepare_cached(
        "UPDATE nodes SET size = ?3, manifest = ?4, manifest_id = ?5, version = ?6
         WHERE vol = ?1 AND id = ?2",
    )?
    .execute(params![
        vol.0,
        &o.node.to_bytes()[..],
        to_i64(o.size),
        schema::encode_manifest(&new),
        &id.as_bytes()[..],
        seq
    ])?;
    Ok(())
}

fn set_attrs(
    c: &Connection,
    vol: VolumeId,
    seq: i64,
    i: usize,
    o: &SetAttrsOp,
) -> Result<(), CommitError> {
    live(c, vol, o.node, i)?;
    let xattrs = match &o.xattrs {
        Some(x) => Some(xattrs_text(x)?),
        None => None,
    };
    c.prepare_cached(
        "UPDATE nodes SET mode = coalesce(?3, mode), mtime = coalesce(?4, mtime),
           xattrs = CASE WHEN ?5 THEN ?6 ELSE xattrs END, version = ?7
         WHERE vol = ?1 AND id = ?2",
    )?
    .execute(params![
        vol.0,
        &o.node.to_bytes()[..],
        o.mode.map(i64::from),
        o.mtime,
        xattrs.is_some(),
        xattrs.flatten(),
        seq
    ])?;
    Ok(())
}

fn move_node(
    c: &Connection,
    vol: VolumeId,
    seq: i64,
    i: usize,
    o: &MoveOp,
) -> Result<(), CommitError> {
    live(c, vol, o.node, i)?;
    live_dir(c, vol, o.new_parent, i)?;
    // Walk up from the new parent: meeting the node means it would contain itself.
    let mut at = Some(o.new_parent);
    let mut steps = 0usize;
    while let Some(p) = at {
        if p == o.node {
            return Err(refuse(
                RefusalKind::Cycle(o.node),
                Some(i),
                format!(
                    "moving {} under {} would make a cycle",
                    o.node, o.new_parent
                ),
            ));
        }
        steps += 1;
        if steps > MAX_DEPTH {
            return Err(MetaError::Corrupt("directory chain too deep".into()).into());
        }
        at = load(c, vol, p)?.and_then(|n| n.parent);
    }
    if let Some(holder) = name_holder(c, vol, o.new_parent, &o.new_name)?
        && holder != o.node
    {
        return Err(refuse(
            RefusalKind::NameTaken(holder),
            Some(i),
            format!(
                "name {:?} is taken in {}",
                o.new_name.as_str(),
                o.new_parent
            ),
        ));
    }
    c.prepare_cached(
        "UPDATE nodes SET parent = ?3, name = ?4, version = ?5 WHERE vol = ?1 AND id = ?2",
    )?
    .execute(params![
        vol.0,
        &o.node.to_bytes()[..],
        &o.new_parent.to_bytes()[..],
        o.new_name.as_str(),
        seq
    ])?;
    Ok(())
}

fn delete(
    c: &Connection,
    vol: VolumeId,
    seq: i64,
    i: usize,
    o: &DeleteOp,
) -> Result<(), CommitError> {
    let state = live(c, vol, o.node, i)?;
    if state.kind == KIND_DIR {
        let mut st = c.prepare_cached(
            "SELECT id FROM nodes WHERE vol = ?1 AND parent = ?2 AND deleted_seq IS NULL LIMIT ?3",
        )?;
        let rows = st.query_map(
            params![vol.0, &o.node.to_bytes()[..], MAX_CHILDREN_NAMED],
            |r| r.get::<_, Vec<u8>>(0),
        )?;
        let mut children = Vec::new();
        for row in rows {
            children.push(node_from_blob(&row?)?);
        }
        if !children.is_empty() {
            return Err(refuse(
                RefusalKind::NotEmpty(o.node, children),
                Some(i),
                format!("directory {} still has children on the server", o.node),
            ));
        }
    }
    c.prepare_cached(
        "UPDATE nodes SET deleted_seq = ?3, version = ?3, manifest = NULL, xattrs = NULL
         WHERE vol = ?1 AND id = ?2",
    )?
    .execute(params![vol.0, &o.node.to_bytes()[..], seq])?;
    Ok(())
}
