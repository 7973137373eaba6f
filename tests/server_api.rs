//! Every endpoint's normal use and its bad inputs, against a real `deltadrive serve`.

mod support;

use std::time::{Duration, Instant};

use deltadrive::chunking::{ChunkRef, EditOp, ManifestEdit, VerifiedChunk, payload};
use deltadrive::protocol::framing::{self, CHUNK_MEDIA_TYPE};
use deltadrive::protocol::limits::{
    MAX_BATCH_BYTES, MAX_BATCH_CHUNKS, MAX_CHUNK_PAYLOAD, MAX_CHUNK_SIZE,
};
use deltadrive::protocol::{
    ChangesResponse, CommitResponse, CreateOp, DeleteOp, DevicesResponse, ErrorCode, FileHint,
    HintRequest, HintsResponse, MoveOp, NodeId, NodeKind, Op, PlacedChunk, Seq, SetAttrsOp,
    SnapshotResponse, UploadResponse, WriteOp, XattrValue, Xattrs, manifest_id,
};
use reqwest::Method;
use support::{
    Client, bytes, cid, decode, expect_err, fixture, manifest, mkdir, mkfile, name, txn,
};

fn set_mode(node: NodeId, base: u64, mode: u32) -> Op {
    Op::SetAttrs(SetAttrsOp {
        node,
        base: Seq(base),
        mode: Some(mode),
        mtime: None,
        xattrs: None,
    })
}

fn mv(node: NodeId, base: u64, parent: NodeId, n: &str) -> Op {
    Op::Move(MoveOp {
        node,
        base: Seq(base),
        new_parent: parent,
        new_name: name(n),
    })
}

fn rm(node: NodeId, base: u64) -> Op {
    Op::Delete(DeleteOp {
        node,
        base: Seq(base),
    })
}

fn post_raw(c: &Client, rest: &str, body: Vec<u8>) -> reqwest::blocking::Response {
    c.req(Method::POST, &c.url(rest)).body(body).send().unwrap()
}

#[test]
fn chunks_upload_and_download_single_and_batched() {
    let f = fixture();
    let c = Client::new(&f.server, &f.laptop, "alice-docs");
    let compressible = VerifiedChunk::new(vec![7u8; 60_000]);
    let wire = compressible.encode(payload::DEFAULT_ZSTD_LEVEL);
    assert_eq!(wire[0], 1, "a compressible chunk travels as zstd");
    assert!(wire.len() < 1000);
    let batch: Vec<VerifiedChunk> = (0..20)
        .map(|i| VerifiedChunk::new(bytes(i, 30_000)))
        .collect();
    let mut all: Vec<_> = batch.iter().map(VerifiedChunk::id).collect();
    all.push(compressible.id());
    assert_eq!(c.missing(&all), all);
    // Duplicates in the question are answered once.
    assert_eq!(c.missing(&[all[0], all[0]]), vec![all[0]]);

    for _ in 0..2 {
        // Uploading twice is harmless (idempotent).
        let put = c
            .req(
                Method::PUT,
                &c.url(&format!("chunks/{}", compressible.id())),
            )
            .body(wire.clone())
            .send()
            .unwrap();
        assert_eq!(put.status(), 204);
    }
    let get = c
        .req(
            Method::GET,
            &c.url(&format!("chunks/{}", compressible.id())),
        )
        .send()
        .unwrap();
    assert_eq!(get.status(), 200);
    assert_eq!(get.headers()["content-type"], CHUNK_MEDIA_TYPE);
    let got = get.bytes().unwrap();
    assert_eq!(&got[..], &wire[..], "served as stored, still zstd");
    assert_eq!(
        payload::decode(&got, compressible.id(), MAX_CHUNK_SIZE)
            .unwrap()
            .bytes(),
        compressible.bytes()
    );

    let payloads: Vec<Vec<u8>> = batch.iter().map(|c| c.encode(3)).collect();
    let body = framing::encode_batch(
        batch
            .iter()
            .map(|c| c.id())
            .collect::<Vec<_>>()
            .iter()
            .zip(payloads.iter().map(Vec::as_slice))
            .collect::<Vec<_>>()
            .into_iter(),
    );
    let up: UploadResponse = c
        .req(Method::POST, &c.url("chunks"))
        .body(body)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(up.stored, 20);
    assert!(c.missing(&all).is_empty());

    let mut wanted: Vec<_> = all.clone();
    wanted.reverse();
    let fetched = c
        .req(Method::POST, &c.url("chunks/fetch"))
        .json(&serde_json::json!({ "ids": wanted }))
        .send()
        .unwrap();
    assert_eq!(fetched.status(), 200);
    let raw = fetched.bytes().unwrap();
    let entries = framing::decode_batch(&raw).unwrap();
    assert_eq!(entries.len(), wanted.len());
    for ((id, p), want) in entries.iter().zip(&wanted) {
        assert_eq!(id, want, "answered in the order asked");
        payload::decode(p, *id, MAX_CHUNK_SIZE).unwrap();
    }
}

#[test]
fn bad_chunks_and_bad_chunk_requests_are_refused_without_storing_anything() {
    let f = fixture();
    let c = Client::new(&f.server, &f.laptop, "alice-docs");
    let good = VerifiedChunk::new(bytes(5, 10_000));
    let put = |id: &str, body: Vec<u8>| {
        c.req(Method::PUT, &c.url(&format!("chunks/{id}")))
            .body(body)
            .send()
            .unwrap()
    };
    let id = good.id().to_string();
    // Wrong hash: bytes of another chunk.
    let e = expect_err(put(&id, payload::encode(b"other bytes", 3)), 400);
    assert_eq!(e.code, ErrorCode::BadChunk);
    assert_eq!(e.chunks, vec![good.id()]);
    // Corrupt zstd frame, empty body, unknown tag.
    assert_eq!(
        expect_err(put(&id, vec![1, 0xde, 0xad, 0xbe, 0xef]), 400).code,
        ErrorCode::BadChunk
    );
    assert_eq!(expect_err(put(&id, vec![]), 400).code, ErrorCode::BadChunk);
    assert_eq!(
        expect_err(put(&id, vec![9, 1, 2]), 400).code,
        ErrorCode::BadChunk
    );
    // Oversize body, and a small payload that decodes past the chunk limit.
    assert_eq!(
        expect_err(
            c.fresh()
                .req(Method::PUT, &c.url(&format!("chunks/{id}")))
                .body(vec![0; MAX_CHUNK_PAYLOAD + 1])
                .send()
                .unwrap(),
            413
        )
        .code,
        ErrorCode::TooLarge
    );
    let huge = vec![0u8; MAX_CHUNK_SIZE + 1];
    let bomb = payload::encode(&huge, 3);
    assert!(bomb.len() < 10_000);
    assert_eq!(
        expect_err(put(&cid(&huge).to_string(), bomb), 413).code,
        ErrorCode::TooLarge
    );
    // Not a chunk id.
    assert_eq!(
        expect_err(put("xyz", good.encode(3)), 400).code,
        ErrorCode::BadRequest
    );
    assert_eq!(c.missing(&[good.id()]), vec![good.id()]);

    // A batch with one bad entry is refused whole: the good ones are not held either.
    let others: Vec<VerifiedChunk> = (10..13)
        .map(|i| VerifiedChunk::new(bytes(i, 5000)))
        .collect();
    let mut body = framing::start_batch(4);
    for o in &others {
        framing::push_entry(&mut body, &o.id(), &o.encode(3));
    }
    framing::push_entry(&mut body, &good.id(), &payload::encode(b"wrong", 3));
    let e = expect_err(post_raw(&c, "chunks", body), 400);
    assert_eq!(e.code, ErrorCode::BadChunk);
    assert_eq!(e.chunks, vec![good.id()]);
    let ids: Vec<_> = others.iter().map(VerifiedChunk::id).collect();
    assert_eq!(c.missing(&ids), ids);
    // Malformed framing.
    let mut truncated = framing::start_batch(1);
    truncated.extend_from_slice(good.id().as_bytes());
    assert_eq!(
        expect_err(post_raw(&c, "chunks", truncated), 400).code,
        ErrorCode::BadRequest
    );
    assert_eq!(
        expect_err(post_raw(&c, "chunks", b"NOPE\0\0\0\0".to_vec()), 400).code,
        ErrorCode::BadRequest
    );
    let mut too_many = framing::start_batch(u32::try_from(MAX_BATCH_CHUNKS).unwrap() + 1);
    too_many.extend_from_slice(&[0; 64]);
    assert_eq!(
        expect_err(post_raw(&c, "chunks", too_many), 413).code,
        ErrorCode::TooLarge
    );
    // Malformed or oversize id lists.
    assert_eq!(
        expect_err(post_raw(&c, "chunks/missing", b"{\"ids\":".to_vec()), 400).code,
        ErrorCode::BadRequest
    );
    assert_eq!(
        expect_err(
            post_raw(&c, "chunks/missing", b"{\"ids\":[\"zz\"]}".to_vec()),
            400
        )
        .code,
        ErrorCode::BadRequest
    );
    let many: Vec<_> = (0..10_001u32).map(|i| cid(&i.to_le_bytes())).collect();
    let resp = c
        .req(Method::POST, &c.url("chunks/missing"))
        .json(&serde_json::json!({ "ids": many }))
        .send()
        .unwrap();
    assert_eq!(expect_err(resp, 413).code, ErrorCode::TooLarge);
    let resp = c
        .req(Method::POST, &c.url("chunks/fetch"))
        .json(&serde_json::json!({ "ids": &many[..MAX_BATCH_CHUNKS + 1] }))
        .send()
        .unwrap();
    assert_eq!(expect_err(resp, 413).code, ErrorCode::TooLarge);
}

#[test]
fn every_op_applies_and_shows_in_snapshot_and_changes() {
    let f = fixture();
    let c = Client::new(&f.server, &f.laptop, "alice-docs");
    let a = c.put_chunk(&bytes(1, 20_000));
    let b = c.put_chunk(&bytes(2, 30_000));
    let (dir, file, link) = (NodeId::random(), NodeId::random(), NodeId::random());
    let mut x = Xattrs::new();
    x.insert("user.origin".into(), XattrValue(vec![0, 1, 2, 255]));
    let symlink = Op::Create(CreateOp {
        node: link,
        parent: NodeId::ROOT,
        name: name("link"),
        kind: NodeKind::Symlink,
        mode: 0o777,
        mtime: 3,
        xattrs: x.clone(),
        manifest: None,
        manifest_id: None,
        target: Some("docs/a.txt".into()),
    });
    let s1 = c.commit_ok(vec![
        mkdir(dir, NodeId::ROOT, "docs"),
        mkfile(file, dir, "a.txt", manifest(&[a, b])),
        symlink,
    ]);
    assert_eq!(s1, 1);
    let snap = c.snapshot();
    assert_eq!(snap.seq, Seq(1));
    assert_eq!(snap.nodes.len(), 4);
    let fr = snap.nodes.iter().find(|n| n.node == file).unwrap();
    assert_eq!(fr.manifest.as_ref().unwrap().chunks, vec![a, b]);
    assert_eq!(fr.size, 50_000);
    assert_eq!(fr.parent, Some(dir));
    assert_eq!(fr.version, Seq(1));
    let lr = snap.nodes.iter().find(|n| n.node == link).unwrap();
    assert_eq!(lr.target.as_deref(), Some("docs/a.txt"));
    assert_eq!(lr.xattrs, x);

    // write: keep chunk 0, replace chunk 1 with a new one.
    let c3 = c.put_chunk(&bytes(3, 1234));
    let new = manifest(&[a, c3]);
    let s2 = c.commit_ok(vec![Op::Write(WriteOp {
        node: file,
        base: Seq(1),
        edit: ManifestEdit {
            ops: vec![EditOp::Keep { start: 0, end: 1 }, EditOp::Insert(c3)],
        },
        size: new.size(),
        manifest_id: manifest_id(&new),
    })]);
    let fr = c.node(file).unwrap();
    assert_eq!(fr.manifest.unwrap(), new);
    assert_eq!(fr.manifest_id, Some(manifest_id(&new)));
    assert_eq!(fr.version, Seq(s2));
    assert_eq!(
        c.node(dir).unwrap().version,
        Seq(1),
        "a child's write leaves the parent alone"
    );

    let mut y = Xattrs::new();
    y.insert("user.tag".into(), XattrValue(b"blue".to_vec()));
    let s3 = c.commit_ok(vec![Op::SetAttrs(SetAttrsOp {
        node: file,
        base: Seq(s2),
        mode: Some(0o600),
        mtime: Some(99),
        xattrs: Some(y.clone()),
    })]);
    let fr = c.node(file).unwrap();
    assert_eq!((fr.mode, fr.mtime, fr.xattrs.clone()), (0o600, 99, y));
    let s4 = c.commit_ok(vec![mv(file, s3, NodeId::ROOT, "b.txt")]);
    let fr = c.node(file).unwrap();
    assert_eq!(
        (fr.parent, fr.name.unwrap().as_str().to_owned()),
        (Some(NodeId::ROOT), "b.txt".to_owned())
    );
    // The directory is empty now; delete it and the link in one transaction.
    let s5 = c.commit_ok(vec![rm(dir, 1), rm(link, 1)]);
    let snap = c.snapshot();
    assert_eq!(snap.seq, Seq(s5));
    let mut ids: Vec<_> = snap.nodes.iter().map(|n| n.node).collect();
    ids.sort();
    let mut want = vec![NodeId::ROOT, file];
    want.sort();
    assert_eq!(ids, want);

    // The change log: gapless, by device, ops as applied.
    let all = c.changes(0, 0);
    assert_eq!(all.head, Seq(5));
    assert!(!all.more);
    let seqs: Vec<_> = all.changes.iter().map(|ch| ch.seq.0).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert!(all.changes.iter().all(|ch| ch.device.as_str() == "laptop"));
    match &all.changes[1].ops[0] {
        Op::Write(w) => {
            assert_eq!(w.manifest_id, manifest_id(&new));
            assert_eq!(w.size, new.size());
            assert_eq!(w.edit.ops.len(), 2);
        }
        other => panic!("expected the write, got {other:?}"),
    }
    let page: ChangesResponse = c.get_json("changes?after=0&limit=2");
    assert_eq!((page.changes.len(), page.more), (2, true));
    let page: ChangesResponse = c.get_json("changes?after=3&limit=2");
    assert_eq!(
        page.changes.iter().map(|c| c.seq.0).collect::<Vec<_>>(),
        [4, 5]
    );
    assert!(!page.more);
    let _ = s4;

    // A retry of an applied transaction answers the same seq and applies nothing.
    let req = txn(vec![set_mode(file, s4, 0o640)]);
    let first = c.commit(&req).unwrap();
    let again = c.commit(&req).unwrap();
    assert_eq!(first.seq, again.seq);
    assert!(again.replayed && !first.replayed);
    assert_eq!(c.changes(0, 0).head, first.seq);
    // The same txn id with other ops is refused.
    let mut reused = req.clone();
    reused.ops = vec![set_mode(file, first.seq.0, 0o600)];
    let (status, e) = c.commit(&reused).unwrap_err();
    assert_eq!((status.as_u16(), e.code), (409, ErrorCode::TxnReused));
}

#[test]
fn stale_bases_are_409_naming_every_stale_node() {
    let f = fixture();
    let laptop = Client::new(&f.server, &f.laptop, "alice-docs");
    let phone = Client::new(&f.server, &f.phone, "alice-docs");
    let (x, y, z) = (NodeId::random(), NodeId::random(), NodeId::random());
    laptop.commit_ok(vec![
        mkdir(x, NodeId::ROOT, "x"),
        mkdir(y, NodeId::ROOT, "y"),
        mkdir(z, NodeId::ROOT, "z"),
    ]);
    assert_eq!(phone.commit_ok(vec![set_mode(x, 1, 0o700)]), 2);
    assert_eq!(phone.commit_ok(vec![mv(y, 1, NodeId::ROOT, "y2")]), 3);
    let e = laptop.commit_err(
        vec![
            set_mode(x, 1, 0o711),
            set_mode(y, 1, 0o711),
            set_mode(z, 1, 0o711),
        ],
        409,
    );
    assert_eq!(e.code, ErrorCode::Stale);
    assert_eq!(e.stale.len(), 2);
    assert_eq!(
        (e.stale[0].node, e.stale[0].base, e.stale[0].current),
        (x, Seq(1), Seq(2))
    );
    assert_eq!(
        (e.stale[1].node, e.stale[1].current, e.stale[1].deleted),
        (y, Seq(3), false)
    );
    assert_eq!(
        laptop.node(z).unwrap().mode,
        0o755,
        "nothing of the refused commit applied"
    );
    // A node deleted meanwhile is stale with the deleting seq.
    let d = phone.commit_ok(vec![rm(z, 1)]);
    let e = laptop.commit_err(vec![set_mode(z, 1, 0o700)], 409);
    assert_eq!((e.stale[0].current, e.stale[0].deleted), (Seq(d), true));
}

#[test]
fn conflicts_and_bad_ops_are_refused_and_leave_no_partial_state() {
    let f = fixture();
    let c = Client::new(&f.server, &f.laptop, "alice-docs");
    let (a, b, file) = (NodeId::random(), NodeId::random(), NodeId::random());
    let ch = c.put_chunk(&bytes(9, 100));
    c.commit_ok(vec![
        mkdir(a, NodeId::ROOT, "a"),
        mkdir(b, a, "b"),
        mkfile(file, NodeId::ROOT, "f", manifest(&[ch])),
    ]);
    let head = || c.changes(0, 0).head;
    assert_eq!(head(), Seq(1));

    let e = c.commit_err(vec![mkdir(NodeId::random(), NodeId::ROOT, "a")], 409);
    assert_eq!((e.code, e.node), (ErrorCode::NameTaken, Some(a)));
    let ghost = NodeId::random();
    let e = c.commit_err(vec![mkdir(NodeId::random(), ghost, "x")], 409);
    assert_eq!((e.code, e.node), (ErrorCode::MissingParent, Some(ghost)));
    let e = c.commit_err(vec![mkdir(NodeId::random(), file, "x")], 400);
    assert_eq!((e.code, e.node), (ErrorCode::NotADirectory, Some(file)));
    let e = c.commit_err(vec![mv(a, 1, b, "a")], 409);
    assert_eq!((e.code, e.node), (ErrorCode::Cycle, Some(a)));
    let e = c.commit_err(vec![mv(a, 1, a, "self")], 409);
    assert_eq!(e.code, ErrorCode::Cycle);
    let e = c.commit_err(vec![rm(a, 1)], 409);
    assert_eq!(
        (e.code, e.node, e.nodes.clone()),
        (ErrorCode::NotEmpty, Some(a), vec![b])
    );
    let e = c.commit_err(vec![mkdir(a, NodeId::ROOT, "again")], 409);
    assert_eq!(e.code, ErrorCode::NodeExists);
    let e = c.commit_err(vec![set_mode(ghost, 1, 0o700)], 409);
    assert_eq!((e.code, e.node), (ErrorCode::MissingNode, Some(ghost)));
    let e = c.commit_err(vec![mv(NodeId::ROOT, 0, a, "r")], 400);
    assert_eq!(e.code, ErrorCode::BadOp);
    // Manifests: claimed id wrong, edit out of range, size wrong, write to a directory.
    let mut bad = mkfile(NodeId::random(), NodeId::ROOT, "g", manifest(&[ch]));
    if let Op::Create(o) = &mut bad {
        o.manifest_id = Some(manifest_id(&manifest(&[])));
    }
    assert_eq!(c.commit_err(vec![bad], 400).code, ErrorCode::BadManifest);
    let m1 = manifest(&[ch]);
    let write = |edit: Vec<EditOp>, size: u64, node: NodeId| {
        Op::Write(WriteOp {
            node,
            base: Seq(1),
            edit: ManifestEdit { ops: edit },
            size,
            manifest_id: manifest_id(&m1),
        })
    };
    let e = c.commit_err(
        vec![write(vec![EditOp::Keep { start: 0, end: 5 }], 100, file)],
        400,
    );
    assert_eq!(e.code, ErrorCode::BadManifest);
    let e = c.commit_err(
        vec![write(vec![EditOp::Keep { start: 0, end: 1 }], 101, file)],
        400,
    );
    assert_eq!(e.code, ErrorCode::BadManifest);
    let e = c.commit_err(
        vec![write(vec![EditOp::Keep { start: 0, end: 0 }], 0, a)],
        400,
    );
    assert_eq!(e.code, ErrorCode::BadOp);
    // A refusal at the last op undoes the earlier ones of the same transaction.
    let p1 = NodeId::random();
    let e = c.commit_err(
        vec![
            mkdir(p1, NodeId::ROOT, "p1"),
            set_mode(a, 1, 0o700),
            mkdir(NodeId::random(), NodeId::ROOT, "f"),
        ],
        409,
    );
    assert_eq!((e.code, e.op), (ErrorCode::NameTaken, Some(2)));
    assert!(c.node(p1).is_none());
    assert_eq!(c.node(a).unwrap().mode, 0o755);
    assert_eq!(head(), Seq(1), "no refused commit took a seq");
    // A move onto its own name, and ops on a node created in the same transaction (base 0).
    let n = NodeId::random();
    let s = c.commit_ok(vec![
        mv(a, 1, NodeId::ROOT, "a"),
        mkdir(n, NodeId::ROOT, "n"),
        mv(n, 0, a, "n2"),
    ]);
    assert_eq!(s, 2);
    assert_eq!(c.node(n).unwrap().parent, Some(a));
}

fn raw_commit(c: &Client, body: &str) -> reqwest::blocking::Response {
    post_raw(c, "commit", body.as_bytes().to_vec())
}

#[test]
fn malformed_bodies_unknown_versions_ops_and_bad_names_are_400() {
    let f = fixture();
    let c = Client::new(&f.server, &f.laptop, "alice-docs");
    let t = "00000000000000000000000000000001";
    assert_eq!(
        expect_err(raw_commit(&c, "{\"format\":1,"), 400).code,
        ErrorCode::BadRequest
    );
    assert_eq!(
        expect_err(raw_commit(&c, "not json"), 400).code,
        ErrorCode::BadRequest
    );
    let v2 = format!(r#"{{"format":2,"txn":"{t}","ops":[]}}"#);
    assert_eq!(
        expect_err(raw_commit(&c, &v2), 400).code,
        ErrorCode::UnsupportedVersion
    );
    let unknown = format!(
        r#"{{"format":1,"txn":"{t}","ops":[{{"op":"truncate","node":"{:032x}"}}]}}"#,
        5
    );
    let e = expect_err(raw_commit(&c, &unknown), 400);
    assert_eq!((e.code, e.op), (ErrorCode::UnknownOp, Some(0)));
    let long = "x".repeat(256);
    for bad in ["", ".", "..", "a/b", "a\\u0000b", long.as_str()] {
        let body = format!(
            r#"{{"format":1,"txn":"{t}","ops":[{{"op":"create","node":"{:032x}","parent":"{:032x}","name":"{bad}","kind":"dir","mode":493,"mtime":0}}]}}"#,
            7, 0
        );
        let e = expect_err(raw_commit(&c, &body), 400);
        assert_eq!(e.code, ErrorCode::BadName, "{bad:?}: {e:?}");
    }
    let bad_mode = format!(
        r#"{{"format":1,"txn":"{t}","ops":[{{"op":"create","node":"{:032x}","parent":"{:032x}","name":"m","kind":"dir","mode":65535,"mtime":0}}]}}"#,
        7, 0
    );
    assert_eq!(
        expect_err(raw_commit(&c, &bad_mode), 400).code,
        ErrorCode::BadOp
    );
    let missing_field = format!(
        r#"{{"format":1,"txn":"{t}","ops":[{{"op":"delete","node":"{:032x}"}}]}}"#,
        7
    );
    assert_eq!(
        expect_err(raw_commit(&c, &missing_field), 400).code,
        ErrorCode::BadOp
    );
    let mut big = Xattrs::new();
    big.insert("user.big".into(), XattrValue(vec![0; 70_000]));
    let e = c.commit_err(
        vec![Op::SetAttrs(SetAttrsOp {
            node: NodeId::ROOT,
            base: Seq(0),
            mode: None,
            mtime: None,
            xattrs: Some(big),
        })],
        400,
    );
    assert_eq!(e.code, ErrorCode::BadOp);
    // Oversize body: refused before parsing.
    let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(17 << 20));
    assert_eq!(
        expect_err(raw_commit(&c.fresh(), &huge), 413).code,
        ErrorCode::TooLarge
    );
    // Bad query strings, unknown routes, wrong methods: JSON errors too.
    let resp = c
        .req(Method::GET, &c.url("changes?after=abc"))
        .send()
        .unwrap();
    assert_eq!(expect_err(resp, 400).code, ErrorCode::BadRequest);
    let resp = c
        .req(Method::GET, &format!("{}/v2/volumes", c.base))
        .send()
        .unwrap();
    assert_eq!(expect_err(resp, 404).code, ErrorCode::NotFound);
    let resp = c.req(Method::DELETE, &c.url("snapshot")).send().unwrap();
    assert_eq!(expect_err(resp, 405).code, ErrorCode::MethodNotAllowed);
    let resp = post_raw(&c, "cursor", b"{}".to_vec());
    assert_eq!(expect_err(resp, 400).code, ErrorCode::BadRequest);
    assert_eq!(c.changes(0, 0).head, Seq(0), "nothing was applied");
}

#[test]
fn zstd_bodies_both_ways_and_a_zstd_bomb_is_413() {
    let f = fixture();
    let c = Client::new(&f.server, &f.laptop, "alice-docs");
    // A zstd-compressed commit request.
    let req = txn(vec![mkdir(NodeId::random(), NodeId::ROOT, "zipped")]);
    let body = zstd::encode_all(&serde_json::to_vec(&req).unwrap()[..], 3).unwrap();
    let resp = c
        .req(Method::POST, &c.url("commit"))
        .header("Content-Encoding", "zstd")
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .unwrap();
    let ok: CommitResponse = decode(resp).unwrap();
    assert_eq!(ok.seq, Seq(1));
    // A JSON answer compressed on request (seen raw, without the client's decoding).
    deltadrive::tls::install_provider();
    let raw = reqwest::blocking::Client::builder()
        .no_zstd()
        .build()
        .unwrap();
    let resp = raw
        .get(c.url("snapshot"))
        .bearer_auth(&c.token)
        .header("Accept-Encoding", "zstd")
        .send()
        .unwrap();
    assert_eq!(resp.headers()["content-encoding"], "zstd");
    let plain = zstd::decode_all(&resp.bytes().unwrap()[..]).unwrap();
    let snap: SnapshotResponse = serde_json::from_slice(&plain).unwrap();
    assert_eq!(snap.seq, Seq(1));
    // Chunk payloads are not compressed a second time.
    let r = c.put_chunk(&vec![1u8; 50_000]);
    let resp = raw
        .get(c.url(&format!("chunks/{}", r.id)))
        .bearer_auth(&c.token)
        .header("Accept-Encoding", "zstd")
        .send()
        .unwrap();
    assert!(resp.headers().get("content-encoding").is_none());
    // Other encodings are refused with a JSON error.
    let resp = c
        .req(Method::POST, &c.url("commit"))
        .header("Content-Encoding", "gzip")
        .body(vec![0x1f, 0x8b, 0])
        .send()
        .unwrap();
    assert_eq!(expect_err(resp, 415).code, ErrorCode::UnsupportedEncoding);
    // 20 MiB of JSON whitespace compresses to almost nothing: the limit still holds.
    let mut bomb_json = vec![b' '; 20 << 20];
    bomb_json.extend_from_slice(b"{}");
    let bomb = zstd::encode_all(&bomb_json[..], 19).unwrap();
    assert!(bomb.len() < 100_000);
    let resp = c
        .req(Method::POST, &c.url("commit"))
        .header("Content-Encoding", "zstd")
        .body(bomb)
        .send()
        .unwrap();
    assert_eq!(expect_err(resp, 413).code, ErrorCode::TooLarge);
    // The batch upload reads its own body: the same refusals, and the volume holds nothing.
    let batch_limit = MAX_BATCH_BYTES + 8 + MAX_BATCH_CHUNKS * 36;
    let mut over = framing::start_batch(1);
    over.resize(batch_limit + 1, 0);
    assert_eq!(
        expect_err(post_raw(&c, "chunks", over), 413).code,
        ErrorCode::TooLarge
    );
    let mut zeros = framing::start_batch(1);
    zeros.resize(batch_limit + 1, 0);
    let bomb = zstd::encode_all(&zeros[..], 19).unwrap();
    assert!(bomb.len() < 100_000);
    let send_zstd = |body: Vec<u8>| {
        c.req(Method::POST, &c.url("chunks"))
            .header("Content-Encoding", "zstd")
            .body(body)
            .send()
            .unwrap()
    };
    assert_eq!(expect_err(send_zstd(bomb), 413).code, ErrorCode::TooLarge);
    assert_eq!(
        expect_err(send_zstd(vec![0x28, 0xb5, 0x2f, 0xfd, 0xde, 0xad]), 400).code,
        ErrorCode::BadRequest
    );
    // And a good batch sent zstd-encoded as a whole still lands.
    let chunk = VerifiedChunk::new(bytes(77, 5000));
    let mut good = framing::start_batch(1);
    framing::push_entry(&mut good, &chunk.id(), &chunk.encode(3));
    let resp = send_zstd(zstd::encode_all(&good[..], 3).unwrap());
    assert_eq!(resp.status(), 200);
    assert!(c.missing(&[chunk.id()]).is_empty());
}

#[test]
fn devices_show_last_seen_and_cursors() {
    let f = fixture();
    let laptop = Client::new(&f.server, &f.laptop, "alice-docs");
    let phone = Client::new(&f.server, &f.phone, "alice-docs");
    laptop.commit_ok(vec![mkdir(NodeId::random(), NodeId::ROOT, "d")]);
    laptop.changes(1, 0);
    let resp = phone
        .req(Method::POST, &phone.url("cursor"))
        .json(&serde_json::json!({"cursor": 0}))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 204);
    let view: DevicesResponse = laptop.get_json("devices");
    let names: Vec<_> = view.devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["laptop", "phone"], "only alice's devices");
    let l = &view.devices[0];
    assert!(l.current && !l.revoked);
    assert_eq!(l.cursor, Some(Seq(1)));
    assert!(l.last_seen_ms.unwrap() > 1_700_000_000_000);
    let p = &view.devices[1];
    assert!(!p.current);
    assert_eq!(p.cursor, Some(Seq(0)));
}

fn post_hints(c: &Client, files: Vec<FileHint>) -> reqwest::blocking::Response {
    c.req(Method::POST, &c.url("hints"))
        .json(&HintRequest { files })
        .send()
        .unwrap()
}

#[test]
fn upload_hints_reach_the_other_devices_long_polls_and_bad_ones_are_refused() {
    let f = fixture();
    let laptop = Client::new(&f.server, &f.laptop, "alice-docs");
    let phone = Client::new(&f.server, &f.phone, "alice-docs");
    let node = NodeId::random();
    let placed = |i: u64| PlacedChunk {
        offset: i * 1000,
        id: cid(&i.to_le_bytes()),
        len: 1000,
    };
    let hint = FileHint {
        node,
        chunks: (0..3).map(placed).collect(),
    };
    // The phone waits; the laptop's hint wakes it at once (not after the 30 s wait).
    let started = Instant::now();
    let waiting = {
        let phone = phone.clone();
        std::thread::spawn(move || phone.get_json::<HintsResponse>("hints?after=0&wait=30"))
    };
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(post_hints(&laptop, vec![hint.clone()]).status(), 204);
    let got = waiting.join().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(got.files, vec![hint.clone()]);
    // Nothing newer for the phone; the laptop never gets its own hints back.
    let again: HintsResponse = phone.get_json(&format!("hints?after={}&wait=0", got.next));
    assert!(again.files.is_empty());
    let own: HintsResponse = laptop.get_json("hints?after=0&wait=0");
    assert!(own.files.is_empty(), "{own:?}");

    // Bad hints: typed refusals, and nothing kept.
    let zero = FileHint {
        node,
        chunks: vec![PlacedChunk {
            len: 0,
            ..placed(9)
        }],
    };
    let e = expect_err(post_hints(&laptop, vec![zero]), 400);
    assert_eq!(e.code, ErrorCode::BadRequest);
    let past_the_end = FileHint {
        node,
        chunks: vec![PlacedChunk {
            offset: u64::MAX,
            ..placed(9)
        }],
    };
    expect_err(post_hints(&laptop, vec![past_the_end]), 400);
    let too_many = FileHint {
        node,
        chunks: (0..=MAX_BATCH_CHUNKS as u64).map(placed).collect(),
    };
    let e = expect_err(post_hints(&laptop, vec![too_many]), 413);
    assert_eq!(e.code, ErrorCode::TooLarge);
    let e = expect_err(post_raw(&laptop, "hints", b"{\"files\": 7}".to_vec()), 400);
    assert_eq!(e.code, ErrorCode::BadRequest);
    let after: HintsResponse = phone.get_json(&format!("hints?after={}&wait=0", got.next));
    assert!(after.files.is_empty(), "a refused hint was kept: {after:?}");
}

#[test]
fn a_snapshot_of_ten_thousand_files_is_complete_and_at_one_seq() {
    let f = fixture();
    let c = Client::new(&f.server, &f.laptop, "alice-docs");
    let r: ChunkRef = c.put_chunk(&bytes(77, 4096));
    let dir = NodeId::random();
    c.commit_ok(vec![mkdir(dir, NodeId::ROOT, "many")]);
    let mut ids = Vec::new();
    for batch in 0..2 {
        let ops: Vec<Op> = (0..5000)
            .map(|i| {
                let id = NodeId::random();
                ids.push(id);
                mkfile(id, dir, &format!("file-{batch}-{i}"), manifest(&[r]))
            })
            .collect();
        c.commit_ok(ops);
    }
    let snap = c.snapshot();
    assert_eq!(snap.seq, Seq(3));
    assert_eq!(snap.nodes.len(), 10_002);
    let files = snap
        .nodes
        .iter()
        .filter(|n| n.kind == NodeKind::File)
        .count();
    assert_eq!(files, 10_000);
    assert!(
        snap.nodes
            .iter()
            .filter(|n| n.kind == NodeKind::File)
            .all(|n| n.manifest.as_ref().unwrap().chunks == vec![r])
    );
}

#[test]
fn sigterm_ends_long_polls_and_stops_cleanly() {
    let mut f = fixture();
    let c = Client::new(&f.server, &f.laptop, "alice-docs");
    let poller = std::thread::spawn(move || {
        let t = Instant::now();
        let page = c.changes(0, 30);
        (page, t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        f.server.terminate(Duration::from_secs(10)),
        Some(true),
        "clean exit"
    );
    let (page, took) = poller.join().unwrap();
    assert!(page.changes.is_empty());
    assert!(
        took < Duration::from_secs(10),
        "long-poll ended by shutdown after {took:?}"
    );
}
