//! Checks of request bodies that need no store: JSON shape, format version, op tags, names,
//! kinds, limits, manifest ids. Everything here is refused with 400 or 413 before any I/O.

use serde::de::DeserializeOwned;
use serde_json::Value;

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

/// Parses a commit body in stages, so each fault gets its own code: malformed JSON
/// (`bad_request`), unknown format (`unsupported_version`), unknown op tag (`unknown_op`),
/// bad name (`bad_name`), anything else wrong in an op (`bad_op`).
pub fn parse_commit(bytes: &[u8]) -> Result<CommitRequest, ApiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| bad_request(format!("malformed JSON body: {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err(bad_request("a commit must be a JSON object"));
    };
    match obj.get("format").map(Value::as_u64) {
        Some(Some(f)) if f == u64::from(COMMIT_FORMAT) => {}
        Some(Some(other)) => {
            return Err(ApiError::new(
                ErrorCode::UnsupportedVersion,
                format!(
                    "commit format {other} is not supported; this server speaks {COMMIT_FORMAT}"
                ),
            ));
        }
        Some(None) | None => return Err(bad_request("commit needs a numeric \"format\"")),
    }
    let txn: TxnId = serde_json::from_value(obj.remove("txn").unwrap_or(Value::Null))
        .map_err(|e| bad_request(format!("bad \"txn\": {e}")))?;
    let Some(Value::Array(raw_ops)) = obj.remove("ops") else {
        return Err(bad_request("commit needs an \"ops\" array"));
    };
    if raw_ops.is_empty() {
        return Err(bad_request("a commit needs at least one op"));
    }
    if raw_ops.len() > MAX_OPS_PER_COMMIT {
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!("{} ops, more than {MAX_OPS_PER_COMMIT}", raw_ops.len()),
        ));
    }
    let mut ops = Vec::with_capacity(raw_ops.len());
    for (i, raw) in raw_ops.into_iter().enumerate() {
        let tag = raw
            .get("op")
            .and_then(Value::as_str)
            .ok_or_else(|| bad_op(i, format!("op {i} has no \"op\" tag")))?;
        if !KNOWN_OPS.contains(&tag) {
            return Err(
                ApiError::new(ErrorCode::UnknownOp, format!("op {i}: unknown op {tag:?}")).at_op(i),
            );
        }
        for field in ["name", "new_name"] {
            if let Some(Value::String(s)) = raw.get(field) {
                Name::new(s.as_str()).map_err(|e| {
                    ApiError::new(ErrorCode::BadName, format!("op {i}: {field}: {e}")).at_op(i)
                })?;
            }
        }
        let op: Op = serde_json::from_value(raw).map_err(|e| bad_op(i, format!("op {i}: {e}")))?;
        ops.push(op);
    }
    Ok(CommitRequest {
        format: COMMIT_FORMAT,
        txn,
        ops,
    })
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
}
