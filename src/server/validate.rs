//! Checks of request bodies that need no store: JSON shape, format version, op tags, names,
//! kinds, limits, manifest ids. Everything here is refused with 400 or 413 before any I/O.

use std::cell::Cell;

use serde::Deserialize;
use serde::de::{
    DeserializeOwned, DeserializeSeed, Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess,
    Visitor,
};
use serde_json::error::Category;
use serde_json::value::RawValue;

use super::error::ApiError;
use crate::chunking::ChunkRef;
use crate::protocol::limits::{
    COMMIT_FORMAT, MAX_CHUNK_SIZE, MAX_MANIFEST_CHUNKS, MAX_OPS_PER_COMMIT, MAX_SYMLINK_TARGET,
    MODE_MASK,
};
use crate::protocol::{
    CommitRequest, CreateOp, ErrorCode, KNOWN_OPS, Name, NodeId, NodeKind, Op, TxnId, manifest_id,
    validate_xattrs,
};

/// Parses a JSON body, refusing malformed ones with `bad_request`.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("malformed JSON body: {e}")))
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, message)
}

fn bad_op(i: usize, message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BadOp, message).at_op(i)
}

/// A commit body split into its fields, each left as raw JSON (borrowed from the body, so the
/// body is never turned into a tree of values: millions of `{}` ops cost nothing).
#[derive(Default)]
struct RawCommit<'a> {
    format: Option<&'a RawValue>,
    txn: Option<&'a RawValue>,
    ops: Option<Vec<&'a RawValue>>,
}

/// Reads the top-level object; `ops` stops at the first op past the limit, setting
/// `too_many`.
struct CommitVisitor<'s> {
    too_many: &'s Cell<bool>,
}

impl<'de> Visitor<'de> for CommitVisitor<'_> {
    type Value = RawCommit<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a commit object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawCommit<'de>, A::Error> {
        let mut out = RawCommit::default();
        while let Some(key) = map.next_key::<String>()? {
            // A repeated field: the last one counts, as in any JSON object read into a map.
            match key.as_str() {
                "format" => out.format = Some(map.next_value()?),
                "txn" => out.txn = Some(map.next_value()?),
                "ops" => {
                    out.ops = Some(map.next_value_seed(OpsSeed {
                        too_many: self.too_many,
                    })?)
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }
}

/// The `ops` array as raw ops, at most [`MAX_OPS_PER_COMMIT`] of them.
struct OpsSeed<'s> {
    too_many: &'s Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for OpsSeed<'_> {
    type Value = Vec<&'de RawValue>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for OpsSeed<'_> {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of ops")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut ops = Vec::new();
        while let Some(op) = seq.next_element()? {
            if ops.len() == MAX_OPS_PER_COMMIT {
                self.too_many.set(true);
                return Err(A::Error::custom(format!(
                    "more than {MAX_OPS_PER_COMMIT} ops"
                )));
            }
            ops.push(op);
        }
        Ok(ops)
    }
}

/// The fields of an op looked at before the op is parsed as its kind.
#[derive(Deserialize)]
struct OpHead<'a> {
    #[serde(borrow, default)]
    op: Option<&'a RawValue>,
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    new_name: Option<&'a RawValue>,
}

/// A JSON string's text, or `None` for any other JSON value.
fn as_string(raw: &RawValue) -> Option<String> {
    serde_json::from_str(raw.get()).ok()
}

/// Parses a commit body in stages, so each fault gets its own code: malformed JSON
/// (`bad_request`), more than [`MAX_OPS_PER_COMMIT`] ops (`too_large`), unknown format
/// (`unsupported_version`), unknown op tag (`unknown_op`), bad name (`bad_name`), anything
/// else wrong in an op (`bad_op`).
///
/// Memory stays within a small multiple of the body: the body is read once into borrowed raw
/// ops (stopping at the first op past the limit), then each op is parsed straight into its
/// kind's struct, never into a tree of `serde_json::Value`s.
pub fn parse_commit(bytes: &[u8]) -> Result<CommitRequest, ApiError> {
    let too_many = Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = de
        .deserialize_map(CommitVisitor {
            too_many: &too_many,
        })
        .and_then(|raw| de.end().map(|()| raw));
    let raw = match parsed {
        Ok(raw) => raw,
        Err(_) if too_many.get() => {
            return Err(ApiError::new(
                ErrorCode::TooLarge,
                format!("more than {MAX_OPS_PER_COMMIT} ops in one commit"),
            ));
        }
        Err(e) if e.classify() == Category::Data => {
            return Err(bad_request(format!("malformed commit: {e}")));
        }
        Err(e) => return Err(bad_request(format!("malformed JSON body: {e}"))),
    };
    match raw.format.map(|f| serde_json::from_str::<u64>(f.get())) {
        Some(Ok(f)) if f == u64::from(COMMIT_FORMAT) => {}
        Some(Ok(other)) => {
            return Err(ApiError::new(
                ErrorCode::UnsupportedVersion,
                format!(
                    "commit format {other} is not supported; this server speaks {COMMIT_FORMAT}"
                ),
            ));
        }
        Some(Err(_)) | None => return Err(bad_request("commit needs a numeric \"format\"")),
    }
    let txn: TxnId = serde_json::from_str(raw.txn.map_or("null", RawValue::get))
        .map_err(|e| bad_request(format!("bad \"txn\": {e}")))?;
    let Some(raw_ops) = raw.ops else {
        return Err(bad_request("commit needs an \"ops\" array"));
    };
    if raw_ops.is_empty() {
        return Err(bad_request("a commit needs at least one op"));
    }
    let mut ops = Vec::with_capacity(raw_ops.len());
    for (i, raw) in raw_ops.into_iter().enumerate() {
        ops.push(parse_op(i, raw.get())?);
    }
    Ok(CommitRequest {
        format: COMMIT_FORMAT,
        txn,
        ops,
    })
}

/// One op: its tag, its names, then the op as the kind its tag names.
fn parse_op(i: usize, raw: &str) -> Result<Op, ApiError> {
    let no_tag = || bad_op(i, format!("op {i} has no \"op\" tag"));
    let head: OpHead = serde_json::from_str(raw).map_err(|_| no_tag())?;
    let tag = head.op.and_then(as_string).ok_or_else(no_tag)?;
    if !KNOWN_OPS.contains(&tag.as_str()) {
        return Err(
            ApiError::new(ErrorCode::UnknownOp, format!("op {i}: unknown op {tag:?}")).at_op(i),
        );
    }
    for (field, value) in [("name", head.name), ("new_name", head.new_name)] {
        if let Some(s) = value.and_then(as_string) {
            Name::new(s.as_str()).map_err(|e| {
                ApiError::new(ErrorCode::BadName, format!("op {i}: {field}: {e}")).at_op(i)
            })?;
        }
    }
    // Each kind's struct ignores the tag field. Not `Op` itself: an internally tagged enum
    // buffers the whole op as generic content first.
    let op = match tag.as_str() {
        "create" => serde_json::from_str(raw).map(Op::Create),
        "write" => serde_json::from_str(raw).map(Op::Write),
        "set_attrs" => serde_json::from_str(raw).map(Op::SetAttrs),
        "move" => serde_json::from_str(raw).map(Op::Move),
        "delete" => serde_json::from_str(raw).map(Op::Delete),
        other => {
            return Err(ApiError::new(
                ErrorCode::Internal,
                format!("op {i}: known op {other:?} has no parser"),
            ));
        }
    };
    op.map_err(|e| bad_op(i, format!("op {i}: {e}")))
}

fn check_chunk_lens<'a>(
    i: usize,
    chunks: impl Iterator<Item = &'a ChunkRef>,
) -> Result<(), ApiError> {
    for c in chunks {
        if c.len == 0 || c.len as usize > MAX_CHUNK_SIZE {
            return Err(ApiError::new(
                ErrorCode::BadManifest,
                format!("op {i}: chunk {} has length {}", c.id, c.len),
            )
            .at_op(i));
        }
    }
    Ok(())
}

fn check_mode(i: usize, mode: u32) -> Result<(), ApiError> {
    if mode & !MODE_MASK != 0 {
        return Err(bad_op(
            i,
            format!("op {i}: mode {mode:o} has bits outside {MODE_MASK:o}"),
        ));
    }
    Ok(())
}

fn check_not_root(i: usize, node: NodeId, what: &str) -> Result<(), ApiError> {
    if node == NodeId::ROOT {
        return Err(bad_op(i, format!("op {i}: the root cannot be {what}")));
    }
    Ok(())
}

fn check_create(i: usize, o: &CreateOp) -> Result<(), ApiError> {
    check_not_root(i, o.node, "created")?;
    check_mode(i, o.mode)?;
    validate_xattrs(&o.xattrs).map_err(|e| bad_op(i, format!("op {i}: {e}")))?;
    match o.kind {
        NodeKind::File => {
            let (Some(m), Some(claimed), None) = (&o.manifest, &o.manifest_id, &o.target) else {
                return Err(bad_op(
                    i,
                    format!(
                        "op {i}: a file needs \"manifest\" and \"manifest_id\" and no \"target\""
                    ),
                ));
            };
            if m.chunks.len() > MAX_MANIFEST_CHUNKS {
                return Err(ApiError::new(
                    ErrorCode::TooLarge,
                    format!("op {i}: manifest of {} chunks", m.chunks.len()),
                )
                .at_op(i));
            }
            check_chunk_lens(i, m.chunks.iter())?;
            let actual = manifest_id(m);
            if actual != *claimed {
                return Err(ApiError::new(
                    ErrorCode::BadManifest,
                    format!("op {i}: manifest id is {actual}, the op claims {claimed}"),
                )
                .at_op(i));
            }
        }
        NodeKind::Dir => {
            if o.manifest.is_some() || o.manifest_id.is_some() || o.target.is_some() {
                return Err(bad_op(
                    i,
                    format!("op {i}: a directory has no manifest or target"),
                ));
            }
        }
        NodeKind::Symlink => {
            let Some(target) = &o.target else {
                return Err(bad_op(i, format!("op {i}: a symlink needs a \"target\"")));
            };
            if o.manifest.is_some() || o.manifest_id.is_some() {
                return Err(bad_op(i, format!("op {i}: a symlink has no manifest")));
            }
            if target.is_empty() || target.len() > MAX_SYMLINK_TARGET || target.contains('\0') {
                return Err(bad_op(
                    i,
                    format!(
                        "op {i}: symlink target must be 1..={MAX_SYMLINK_TARGET} bytes without NUL"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Checks every op on its own: root untouchable, fields that fit the kind, modes, xattrs,
/// chunk lengths, and that a created file's manifest id is what it claims.
pub fn check_ops(req: &CommitRequest) -> Result<(), ApiError> {
    for (i, op) in req.ops.iter().enumerate() {
        match op {
            Op::Create(o) => check_create(i, o)?,
            Op::Write(o) => {
                check_not_root(i, o.node, "written")?;
                if o.edit.ops.len() > MAX_MANIFEST_CHUNKS {
                    return Err(ApiError::new(
                        ErrorCode::TooLarge,
                        format!("op {i}: edit of {} steps", o.edit.ops.len()),
                    )
                    .at_op(i));
                }
                check_chunk_lens(i, o.edit.inserted())?;
            }
            Op::SetAttrs(o) => {
                if let Some(mode) = o.mode {
                    check_mode(i, mode)?;
                }
                if let Some(x) = &o.xattrs {
                    validate_xattrs(x).map_err(|e| bad_op(i, format!("op {i}: {e}")))?;
                }
            }
            Op::Move(o) => check_not_root(i, o.node, "moved")?,
            Op::Delete(o) => check_not_root(i, o.node, "deleted")?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::{any, proptest};

    use super::*;

    proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(req) = parse_commit(&body) {
                let _ = check_ops(&req);
            }
        }

        #[test]
        fn arbitrary_op_objects_never_panic(tag in 0usize..6, name in ".{0,8}", base in any::<u64>(), mode in any::<u32>()) {
            let tag = KNOWN_OPS.get(tag).copied().unwrap_or("bogus");
            let body = serde_json::json!({
                "format": 1,
                "txn": "0000000000000000000000000000000a",
                "ops": [{"op": tag, "node": "00000000000000000000000000000001",
                         "parent": "00000000000000000000000000000000", "name": name,
                         "new_parent": "00000000000000000000000000000000", "new_name": name,
                         "kind": "dir", "mode": mode, "mtime": 0, "base": base,
                         "edit": {"ops": []}, "size": 0,
                         "manifest_id": "0000000000000000000000000000000000000000000000000000000000000000"}]
            });
            if let Ok(req) = parse_commit(body.to_string().as_bytes()) {
                let _ = check_ops(&req);
            }
        }
    }

    fn code(body: &str) -> ErrorCode {
        parse_commit(body.as_bytes())
            .and_then(|r| check_ops(&r).map(|()| r))
            .unwrap_err()
            .0
            .code
    }

    const TXN: &str = "\"0000000000000000000000000000000a\"";

    #[test]
    fn each_fault_gets_its_code() {
        assert_eq!(code("{"), ErrorCode::BadRequest);
        assert_eq!(code("[]"), ErrorCode::BadRequest);
        assert_eq!(
            code(&format!(r#"{{"format":2,"txn":{TXN},"ops":[]}}"#)),
            ErrorCode::UnsupportedVersion
        );
        assert_eq!(
            code(&format!(r#"{{"format":1,"txn":{TXN},"ops":[]}}"#)),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(&format!(
                r#"{{"format":1,"txn":{TXN},"ops":[{{"op":"chmod"}}]}}"#
            )),
            ErrorCode::UnknownOp
        );
        let mv = |name: &str| {
            format!(
                r#"{{"format":1,"txn":{TXN},"ops":[{{"op":"move","node":"{:032x}","base":1,"new_parent":"{:032x}","new_name":{name}}}]}}"#,
                1, 0
            )
        };
        assert_eq!(code(&mv("\"..\"")), ErrorCode::BadName);
        assert_eq!(code(&mv("\"a/b\"")), ErrorCode::BadName);
        assert_eq!(code(&mv("7")), ErrorCode::BadOp);
        let dir = format!(
            r#"{{"format":1,"txn":{TXN},"ops":[{{"op":"create","node":"{:032x}","parent":"{:032x}","name":"d","kind":"dir","mode":4294967295,"mtime":0}}]}}"#,
            1, 0
        );
        assert_eq!(code(&dir), ErrorCode::BadOp);
        let root_delete = format!(
            r#"{{"format":1,"txn":{TXN},"ops":[{{"op":"delete","node":"{:032x}","base":0}}]}}"#,
            0
        );
        assert_eq!(code(&root_delete), ErrorCode::BadOp);
    }

    #[test]
    fn ops_past_the_limit_are_refused_without_reading_on() {
        let empty_ops = |n: usize| {
            let mut body = format!(r#"{{"format":1,"txn":{TXN},"ops":["#);
            body.push_str(&vec!["{}"; n].join(","));
            body.push_str("]}");
            body
        };
        // At the limit, the op count is fine and the first op is what is wrong.
        let e = parse_commit(empty_ops(MAX_OPS_PER_COMMIT).as_bytes()).unwrap_err();
        assert_eq!((e.0.code, e.0.op), (ErrorCode::BadOp, Some(0)));
        assert_eq!(
            code(&empty_ops(MAX_OPS_PER_COMMIT + 1)),
            ErrorCode::TooLarge
        );
        // Past the limit, what follows is never looked at (not even whether it is JSON).
        let mut cut = empty_ops(MAX_OPS_PER_COMMIT + 1);
        cut.truncate(cut.len() - 2);
        cut.push_str(",{]]]");
        assert_eq!(code(&cut), ErrorCode::TooLarge);
        // Fields in any order; the format is checked before the ops.
        let late = format!(r#"{{"ops":[{{"op":"chmod"}}],"txn":{TXN},"format":2}}"#);
        assert_eq!(code(&late), ErrorCode::UnsupportedVersion);
        assert_eq!(
            code(&format!(r#"{{"format":1,"txn":{TXN},"ops":{{}}}}"#)),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(&format!(r#"{{"format":1,"txn":{TXN}}}"#)),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"format":1,"ops":[{"op":"delete"}]}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(&format!(r#"{{"format":"1","txn":{TXN},"ops":[]}}"#)),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(&format!(r#"{{"format":1,"txn":{TXN},"ops":[{{"op":5}}]}}"#)),
            ErrorCode::BadOp
        );
        assert_eq!(
            code(&format!(r#"{{"format":1,"txn":{TXN},"ops":[7]}}"#)),
            ErrorCode::BadOp
        );
    }

    #[test]
    fn every_kind_of_op_parses_as_the_enum_would() {
        use crate::chunking::{ChunkId, EditOp, Manifest, ManifestEdit};
        use crate::protocol::{DeleteOp, MoveOp, Seq, SetAttrsOp, WriteOp, XattrValue, Xattrs};
        let node = NodeId::random();
        let chunk = ChunkRef {
            id: ChunkId::of(b"x"),
            len: 1,
        };
        let manifest = Manifest {
            chunks: vec![chunk],
        };
        let mut xattrs = Xattrs::new();
        xattrs.insert("user.a".into(), XattrValue(vec![1, 2]));
        let ops = vec![
            Op::Create(CreateOp {
                node,
                parent: NodeId::ROOT,
                name: Name::new("f").unwrap(),
                kind: NodeKind::File,
                mode: 0o644,
                mtime: 5,
                xattrs: xattrs.clone(),
                manifest_id: Some(manifest_id(&manifest)),
                manifest: Some(manifest.clone()),
                target: None,
            }),
            Op::Write(WriteOp {
                node,
                base: Seq(0),
                edit: ManifestEdit {
                    ops: vec![EditOp::Keep { start: 0, end: 1 }, EditOp::Insert(chunk)],
                },
                size: 2,
                manifest_id: manifest_id(&manifest),
            }),
            Op::SetAttrs(SetAttrsOp {
                node,
                base: Seq(0),
                mode: Some(0o600),
                mtime: None,
                xattrs: Some(xattrs),
            }),
            Op::Move(MoveOp {
                node,
                base: Seq(0),
                new_parent: NodeId::ROOT,
                new_name: Name::new("g").unwrap(),
            }),
            Op::Delete(DeleteOp { node, base: Seq(0) }),
        ];
        let req = CommitRequest {
            format: COMMIT_FORMAT,
            txn: TxnId::random(),
            ops,
        };
        let body = serde_json::to_vec(&req).unwrap();
        assert_eq!(parse_commit(&body).unwrap(), req);
        for tag in KNOWN_OPS {
            assert!(
                body.windows(tag.len() + 7)
                    .any(|w| w == format!(r#""op":"{tag}""#).as_bytes())
            );
        }
    }
}
