//! The device-side client (`deltadrive::remote::Remote`) against a real `deltadrive serve`,
//! plus a few faults only a misbehaving server produces, from a scripted one-shot server.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;

use deltadrive::chunking::{ChunkId, ChunkRef, VerifiedChunk, payload};
use deltadrive::protocol::framing;
use deltadrive::protocol::limits::MAX_CHUNK_SIZE;
use deltadrive::protocol::{ErrorCode, NodeId, NodeKind, Op, Seq, SetAttrsOp};
use deltadrive::remote::{Remote, RemoteError};
use support::{admin, bytes, fixture, manifest, mkdir, mkfile, txn};

const VOL: &str = "alice-docs";

fn set_mode(node: NodeId, base: u64, mode: u32) -> Op {
    Op::SetAttrs(SetAttrsOp {
        node,
        base: Seq(base),
        mode: Some(mode),
        mtime: None,
        xattrs: None,
    })
}

/// Chunks of these byte strings with their payloads, as the engine would upload them.
fn payloads(chunks: &[Vec<u8>]) -> Vec<(ChunkId, Vec<u8>)> {
    chunks
        .iter()
        .map(|b| {
            (
                ChunkId::of(b),
                payload::encode(b, payload::DEFAULT_ZSTD_LEVEL),
            )
        })
        .collect()
}

/// The (id, payload) pairs of a slice, borrowed: how a caller holding payloads uploads them.
fn borrowed(chunks: &[(ChunkId, Vec<u8>)]) -> impl Iterator<Item = (ChunkId, &[u8])> {
    chunks.iter().map(|(id, p)| (*id, p.as_slice()))
}

fn chunk_ref(b: &[u8]) -> ChunkRef {
    ChunkRef {
        id: ChunkId::of(b),
        len: u32::try_from(b.len()).unwrap(),
    }
}

#[test]
fn volumes_snapshot_devices_and_cursor() {
    let f = fixture();
    let laptop = Remote::new(&f.server.base, VOL, &f.laptop).unwrap();
    let vols = laptop.volumes().unwrap();
    assert_eq!(vols.len(), 1);
    assert_eq!((vols[0].name.as_str(), vols[0].head), (VOL, Seq(0)));

    let snap = laptop.snapshot().unwrap();
    assert_eq!(snap.seq, Seq(0));
    assert_eq!(snap.nodes.len(), 1);
    assert_eq!(snap.nodes[0].node, NodeId::ROOT);

    let dir = NodeId::random();
    let seq = laptop
        .commit(&txn(vec![mkdir(dir, NodeId::ROOT, "d")]))
        .unwrap()
        .seq;
    assert_eq!(seq, Seq(1));
    assert_eq!(laptop.volumes().unwrap()[0].head, Seq(1));
    let snap = laptop.snapshot().unwrap();
    assert_eq!(snap.seq, Seq(1));
    let d = snap.nodes.iter().find(|n| n.node == dir).unwrap();
    assert_eq!(
        (d.kind, d.parent, d.version),
        (NodeKind::Dir, Some(NodeId::ROOT), Seq(1))
    );

    laptop.set_cursor(Seq(1)).unwrap();
    let devices = laptop.devices().unwrap();
    let me = devices
        .iter()
        .find(|d| d.name.as_str() == "laptop")
        .unwrap();
    assert!(me.current);
    assert_eq!(me.cursor, Some(Seq(1)));
    let phone = devices.iter().find(|d| d.name.as_str() == "phone").unwrap();
    assert!(!phone.current);
    assert_eq!(phone.cursor, None);
}

#[test]
fn chunks_missing_upload_fetch_then_commit_and_pull() {
    let f = fixture();
    let laptop = Remote::new(&f.server.base, VOL, &f.laptop).unwrap();
    let phone = Remote::new(&f.server.base, VOL, &f.phone).unwrap();
    let data: Vec<Vec<u8>> = (0..5).map(|i| bytes(i, 20_000 + i as usize)).collect();
    let chunks = payloads(&data);
    let ids: Vec<ChunkId> = chunks.iter().map(|(id, _)| *id).collect();

    // Repeats are asked once and answered once, in order.
    let mut asked = ids.clone();
    asked.push(ids[0]);
    assert_eq!(laptop.missing(&asked).unwrap(), ids);
    assert_eq!(laptop.upload(borrowed(&chunks[..2])).unwrap(), 2);
    assert_eq!(laptop.missing(&ids).unwrap(), ids[2..].to_vec());
    // Repeated ids in an upload are sent once.
    let again = [chunks[2].clone(), chunks[3].clone(), chunks[2].clone()];
    assert_eq!(laptop.upload(again).unwrap(), 2);
    assert_eq!(laptop.upload(borrowed(&chunks)).unwrap(), 5);
    assert!(laptop.missing(&ids).unwrap().is_empty());
    assert!(laptop.missing(&[]).unwrap().is_empty());

    // More ids than one request may carry: answered across requests, in order.
    let unknown: Vec<ChunkId> = (0..10_050u32)
        .map(|i| ChunkId::of(&i.to_le_bytes()))
        .collect();
    let mut mixed = unknown.clone();
    mixed.insert(5_000, ids[1]);
    assert_eq!(laptop.missing(&mixed).unwrap(), unknown);

    // The phone reads them back, verified, in the order asked.
    let order = [ids[3], ids[0], ids[4]];
    let got = phone.fetch(&order).unwrap();
    assert_eq!(got.len(), 3);
    for ((id, chunk), want) in got.iter().zip(order) {
        assert_eq!((*id, chunk.id()), (want, want));
        let i = ids.iter().position(|x| *x == want).unwrap();
        assert_eq!(chunk.bytes(), &data[i][..]);
    }
    assert!(phone.fetch(&[]).unwrap().is_empty());
    // A chunk the volume lacks: NotFound naming it.
    let lacking = ChunkId::of(b"never uploaded");
    let e = phone.fetch(&[ids[0], lacking]).unwrap_err();
    let RemoteError::NotFound { body, .. } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(body.chunks, vec![lacking]);
    assert!(!e.is_retryable());

    // Commit a file of those chunks; a resend of the same transaction is a replay.
    let file = NodeId::random();
    let refs: Vec<ChunkRef> = data.iter().map(|b| chunk_ref(b)).collect();
    let req = txn(vec![mkfile(file, NodeId::ROOT, "f.bin", manifest(&refs))]);
    let first = laptop.commit(&req).unwrap();
    assert_eq!((first.seq, first.replayed), (Seq(1), false));
    let again = laptop.commit(&req).unwrap();
    assert_eq!((again.seq, again.replayed), (Seq(1), true));

    // The phone pulls it: the ops as sent.
    let page = phone.changes(Seq(0), 0, 100).unwrap();
    assert_eq!((page.head, page.more), (Seq(1), false));
    assert_eq!(page.changes.len(), 1);
    assert_eq!(page.changes[0].device.as_str(), "laptop");
    assert_eq!(page.changes[0].txn, req.txn);
    assert_eq!(page.changes[0].ops, req.ops);

    // A long-poll wakes up when the laptop commits.
    let poller = {
        let phone = phone.clone();
        thread::spawn(move || phone.changes(Seq(1), 20, 100))
    };
    thread::sleep(std::time::Duration::from_millis(300));
    let dir = NodeId::random();
    laptop
        .commit(&txn(vec![mkdir(dir, NodeId::ROOT, "d")]))
        .unwrap();
    let page = poller.join().unwrap().unwrap();
    assert_eq!(page.changes.len(), 1, "the poll returned the new commit");
    assert_eq!(page.changes[0].seq, Seq(2));

    // Pages: limit and `more`.
    for mode in [0o700, 0o711, 0o750] {
        let base = phone.snapshot().unwrap().nodes;
        let v = base.iter().find(|n| n.node == dir).unwrap().version;
        laptop.commit(&txn(vec![set_mode(dir, v.0, mode)])).unwrap();
    }
    let page = phone.changes(Seq(1), 0, 2).unwrap();
    assert_eq!(page.changes.len(), 2);
    assert!(page.more);
    assert_eq!(page.head, Seq(5));
    let page = phone.changes(Seq(3), 0, 2).unwrap();
    assert_eq!(page.changes.len(), 2);
    assert!(!page.more);
    // The phone's `after` is its cursor.
    let devices = laptop.devices().unwrap();
    let p = devices.iter().find(|d| d.name.as_str() == "phone").unwrap();
    assert_eq!(p.cursor, Some(Seq(3)));
}

#[test]
fn refused_commits_come_back_typed_with_their_details() {
    let f = fixture();
    let laptop = Remote::new(&f.server.base, VOL, &f.laptop).unwrap();
    let phone = Remote::new(&f.server.base, VOL, &f.phone).unwrap();
    let x = NodeId::random();
    laptop
        .commit(&txn(vec![mkdir(x, NodeId::ROOT, "x")]))
        .unwrap();
    phone.commit(&txn(vec![set_mode(x, 1, 0o700)])).unwrap();

    // Stale: the laptop still thinks x is at version 1.
    let e = laptop
        .commit(&txn(vec![set_mode(x, 1, 0o711)]))
        .unwrap_err();
    assert!(!e.is_retryable());
    let RemoteError::Conflict(body) = &e else {
        panic!("stale commit gave {e:?}")
    };
    assert_eq!(body.code, ErrorCode::Stale);
    assert_eq!(body.stale.len(), 1);
    let stale = &body.stale[0];
    assert_eq!(
        (stale.node, stale.base, stale.current, stale.deleted),
        (x, Seq(1), Seq(2), false)
    );
    assert!(e.to_string().contains("409 stale"), "{e}");

    // Name taken: names the holder.
    let e = laptop
        .commit(&txn(vec![mkdir(NodeId::random(), NodeId::ROOT, "x")]))
        .unwrap_err();
    let RemoteError::Conflict(body) = &e else {
        panic!("{e:?}")
    };
    assert_eq!((body.code, body.node), (ErrorCode::NameTaken, Some(x)));

    // Missing chunks: names every one, so the engine can upload and resend.
    let data = bytes(9, 5000);
    let req = txn(vec![mkfile(
        NodeId::random(),
        NodeId::ROOT,
        "f",
        manifest(&[chunk_ref(&data)]),
    )]);
    let e = laptop.commit(&req).unwrap_err();
    let RemoteError::Conflict(body) = &e else {
        panic!("{e:?}")
    };
    assert_eq!(body.code, ErrorCode::MissingChunks);
    assert_eq!(body.chunks, vec![ChunkId::of(&data)]);
    laptop.upload(payloads(&[data])).unwrap();
    assert_eq!(laptop.commit(&req).unwrap().seq, Seq(3));

    // A malformed op is a 400 with its code.
    let e = laptop
        .commit(&txn(vec![set_mode(x, 2, 0o17777)]))
        .unwrap_err();
    let RemoteError::BadRequest(body) = &e else {
        panic!("{e:?}")
    };
    assert_eq!(body.code, ErrorCode::BadOp);
    assert!(!e.is_retryable());
}

#[test]
fn wrong_or_revoked_token_is_unauthorized_and_not_retryable() {
    let f = fixture();
    let wrong = format!("ddt_{}", "0".repeat(64));
    let r = Remote::new(&f.server.base, VOL, &wrong).unwrap();
    let e = r.volumes().unwrap_err();
    assert!(matches!(e, RemoteError::Unauthorized { .. }), "{e:?}");
    assert!(!e.is_retryable());
    let msg = e.to_string();
    assert!(
        msg.contains(&f.server.base) && msg.contains("401") && msg.contains("--token-file"),
        "{msg}"
    );

    let phone = Remote::new(&f.server.base, VOL, &f.phone).unwrap();
    phone.snapshot().unwrap();
    admin(&f.server.data, &["token", "revoke", "alice", "phone"]);
    let e = phone.snapshot().unwrap_err();
    assert!(matches!(e, RemoteError::Unauthorized { .. }), "{e:?}");
}

#[test]
fn unknown_volume_is_not_found_and_another_users_is_forbidden() {
    let f = fixture();
    let r = Remote::new(&f.server.base, "no-such-volume", &f.laptop).unwrap();
    let e = r.snapshot().unwrap_err();
    assert!(matches!(e, RemoteError::NotFound { .. }), "{e:?}");
    assert!(!e.is_retryable());
    assert!(e.to_string().contains("no-such-volume"), "{e}");
    assert!(
        r.changes(Seq(0), 0, 10)
            .is_err_and(|e| matches!(e, RemoteError::NotFound { .. }))
    );

    let r = Remote::new(&f.server.base, "bob-docs", &f.laptop).unwrap();
    let e = r.missing(&[ChunkId::of(b"x")]).unwrap_err();
    assert!(matches!(e, RemoteError::Forbidden { .. }), "{e:?}");
    assert!(!e.is_retryable());
    assert!(e.to_string().contains("bob-docs"), "{e}");
}

#[test]
fn stopped_server_is_a_retryable_network_error() {
    let mut f = fixture();
    let r = Remote::new(&f.server.base, VOL, &f.laptop).unwrap();
    r.volumes().unwrap();
    f.server.kill9();
    for e in [
        r.volumes().unwrap_err(),
        r.changes(Seq(0), 5, 10).unwrap_err(),
        r.upload(payloads(&[b"abc".to_vec()])).unwrap_err(),
    ] {
        assert!(matches!(e, RemoteError::Network { .. }), "{e:?}");
        assert!(e.is_retryable());
        let msg = e.to_string();
        assert!(
            msg.contains("cannot reach the server") && msg.contains(&f.server.base),
            "{msg}"
        );
    }
}

#[test]
fn fetch_across_the_batch_limits_returns_every_chunk_verified() {
    let f = fixture();
    let laptop = Remote::new(&f.server.base, VOL, &f.laptop).unwrap();
    let phone = Remote::new(&f.server.base, VOL, &f.phone).unwrap();
    // 40 incompressible chunks of the largest size: 40 MiB, past the 32 MiB a batch may hold
    // (upload splits it; the server's fetch answer stops early and the client asks again).
    let big: Vec<Vec<u8>> = (0..40).map(|i| bytes(1000 + i, MAX_CHUNK_SIZE)).collect();
    // 1100 small chunks: past the 1024 entries a batch may hold.
    let small: Vec<Vec<u8>> = (0..1100u32)
        .map(|i| format!("small chunk {i}").into_bytes())
        .collect();
    let all: Vec<Vec<u8>> = big.iter().chain(&small).cloned().collect();
    let chunks = payloads(&all);
    assert_eq!(laptop.upload(borrowed(&chunks)).unwrap(), all.len());
    let ids: Vec<ChunkId> = chunks.iter().map(|(id, _)| *id).collect();
    assert!(laptop.missing(&ids).unwrap().is_empty());

    let (_, down0) = phone.wire_stats();
    let got = phone.fetch(&ids).unwrap();
    assert_eq!(got.len(), all.len());
    for (((id, chunk), want_id), want) in got.iter().zip(&ids).zip(&all) {
        assert_eq!((id, chunk.id()), (want_id, *want_id));
        assert_eq!(chunk.bytes(), &want[..]);
    }
    let (_, down1) = phone.wire_stats();
    let payload_bytes: u64 = chunks.iter().map(|(_, p)| p.len() as u64).sum();
    assert!(
        down1 - down0 >= payload_bytes,
        "{} < {payload_bytes}",
        down1 - down0
    );

    // fetch_each hands chunks over one by one, in order.
    let mut seen = Vec::new();
    let n = phone
        .fetch_each(&ids[35..45], |c| seen.push(c.id()))
        .unwrap();
    assert_eq!((n, seen), (10, ids[35..45].to_vec()));
}

#[test]
fn wire_counters_follow_the_bytes_on_the_wire() {
    let f = fixture();
    let r = Remote::new(&f.server.base, VOL, &f.laptop).unwrap();
    assert_eq!(r.wire_stats(), (0, 0));
    const N: usize = 16;
    const SIZE: usize = 64 << 10;

    // Incompressible: the upload body is exactly the payloads plus the batch framing.
    let noise: Vec<Vec<u8>> = (0..N as u64).map(|i| bytes(500 + i, SIZE)).collect();
    let chunks = payloads(&noise);
    let payload_len: usize = chunks.iter().map(|(_, p)| p.len()).sum();
    assert!(payload_len > N * SIZE, "random data is sent raw");
    let (up0, down0) = r.wire_stats();
    r.upload(borrowed(&chunks)).unwrap();
    let (up1, down1) = r.wire_stats();
    assert_eq!(up1 - up0, (8 + N * 36 + payload_len) as u64);
    assert!(down1 - down0 < 100, "the answer is a small JSON");
    let ids: Vec<ChunkId> = chunks.iter().map(|(id, _)| *id).collect();
    r.fetch(&ids).unwrap();
    let (up2, down2) = r.wire_stats();
    assert_eq!(down2 - down1, (8 + N * 36 + payload_len) as u64);
    assert!(
        up2 - up1 < 2048,
        "the request is the id list: {}",
        up2 - up1
    );

    // Compressible: far less than the chunk bytes go either way.
    let text: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            format!("line {i} of a very repetitive text file\n")
                .repeat(SIZE / 40)
                .into_bytes()
        })
        .collect();
    let raw_len: usize = text.iter().map(Vec::len).sum();
    let chunks = payloads(&text);
    r.upload(borrowed(&chunks)).unwrap();
    let (up3, _) = r.wire_stats();
    assert!(
        ((up3 - up2) as usize) < raw_len / 20,
        "{} bytes up for {raw_len} bytes of text",
        up3 - up2
    );
    let ids: Vec<ChunkId> = chunks.iter().map(|(id, _)| *id).collect();
    let got = r.fetch(&ids).unwrap();
    assert_eq!(got[3].1.bytes(), &text[3][..]);
    let (up4, down4) = r.wire_stats();
    assert!(
        ((down4 - down2) as usize) < raw_len / 20,
        "{} bytes down for {raw_len} bytes of text",
        down4 - down2
    );

    // JSON both ways is zstd on the wire: a commit of 300 ops and the snapshot after it.
    let ops: Vec<Op> = (0..300)
        .map(|i| {
            mkdir(
                NodeId::random(),
                NodeId::ROOT,
                &format!("directory number {i}"),
            )
        })
        .collect();
    let req = txn(ops);
    let json_len = serde_json::to_vec(&req).unwrap().len();
    r.commit(&req).unwrap();
    let (up5, down5) = r.wire_stats();
    assert!(
        ((up5 - up4) as usize) < json_len / 2,
        "{} bytes up for {json_len} bytes of JSON",
        up5 - up4
    );
    let snap = r.snapshot().unwrap();
    assert_eq!(snap.nodes.len(), 301);
    let snap_len = serde_json::to_vec(&snap).unwrap().len();
    let (_, down6) = r.wire_stats();
    assert!(
        ((down6 - down5) as usize) < snap_len / 2,
        "{} bytes down for {snap_len} bytes of JSON",
        down6 - down5
    );
}

#[test]
fn token_files_are_trimmed_and_bad_ones_explained() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, "  ddt_abc123\n\n").unwrap();
    assert_eq!(Remote::token_from_file(&path).unwrap(), "ddt_abc123");

    let missing = dir.path().join("nope");
    let e = Remote::token_from_file(&missing).unwrap_err();
    assert!(matches!(e, RemoteError::TokenFile { .. }), "{e:?}");
    assert!(
        e.to_string().contains(&missing.display().to_string())
            && e.to_string().contains("--token-file"),
        "{e}"
    );

    std::fs::write(&path, " \n\t").unwrap();
    let e = Remote::token_from_file(&path).unwrap_err();
    assert!(e.to_string().contains("is empty"), "{e}");
    std::fs::write(&path, "ddt_a\nddt_b\n").unwrap();
    assert!(matches!(
        Remote::token_from_file(&path),
        Err(RemoteError::Config(_))
    ));
}

/// A server that answers each of `answers` to one request on its own connection, then stops.
/// For faults `deltadrive serve` does not produce: 5xx, corrupt chunks, malformed answers.
fn scripted_server(answers: Vec<Vec<u8>>) -> (String, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let handle = thread::spawn(move || {
        for answer in answers {
            let (mut conn, _) = listener.accept().unwrap();
            read_request(&mut conn);
            conn.write_all(&answer).unwrap();
        }
    });
    (base, handle)
}

/// Reads one request's head and body (by Content-Length).
fn read_request(conn: &mut TcpStream) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(conn.read(&mut byte).unwrap(), 1, "request head ended early");
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap().to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).unwrap();
}

fn http_answer(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

#[test]
fn faults_of_a_misbehaving_server_are_typed_and_unverified_bytes_never_returned() {
    let good = b"the chunk the device asked for".to_vec();
    let id = ChunkId::of(&good);
    let forged = framing::encode_batch(
        [(&id, &payload::encode(b"other bytes entirely", 3)[..])].into_iter(),
    );
    let gap = serde_json::json!({"head": 9, "more": false, "changes": [
        {"seq": 7, "device": "laptop", "txn": "0000000000000000000000000000002a",
         "time_ms": 1, "ops": []}]});
    let answers = vec![
        http_answer(
            "503 Service Unavailable",
            &[("Content-Type", "application/json")],
            br#"{"code":"unavailable","message":"store is busy"}"#,
        ),
        http_answer("500 Internal Server Error", &[], b"oops"),
        http_answer(
            "200 OK",
            &[("Content-Type", "application/vnd.deltadrive.chunks")],
            &forged,
        ),
        http_answer(
            "200 OK",
            &[("Content-Type", "application/json")],
            b"{\"volumes\": [1",
        ),
        http_answer(
            "200 OK",
            &[("Content-Encoding", "zstd")],
            b"not a zstd frame",
        ),
        http_answer("200 OK", &[], gap.to_string().as_bytes()),
    ];
    let (base, server) = scripted_server(answers);
    let r = Remote::new(&base, VOL, "ddt_test").unwrap();

    let e = r.volumes().unwrap_err();
    assert!(
        matches!(e, RemoteError::Server { status: 503, .. }),
        "{e:?}"
    );
    assert!(e.is_retryable());
    assert!(e.to_string().contains("store is busy"), "{e}");
    let e = r.volumes().unwrap_err();
    assert!(
        matches!(e, RemoteError::Server { status: 500, .. }),
        "{e:?}"
    );
    assert!(e.is_retryable());

    let mut handed = 0;
    let e = r.fetch_each(&[id], |_| handed += 1).unwrap_err();
    assert!(matches!(e, RemoteError::Protocol(_)), "{e:?}");
    assert!(e.to_string().contains("fails verification"), "{e}");
    assert_eq!(handed, 0, "no unverified chunk is handed over");

    let e = r.volumes().unwrap_err();
    assert!(matches!(e, RemoteError::Protocol(_)), "{e:?}");
    assert!(!e.is_retryable());
    let e = r.volumes().unwrap_err();
    assert!(matches!(e, RemoteError::Protocol(_)), "{e:?}");
    let e = r.changes(Seq(5), 0, 10).unwrap_err();
    assert!(e.to_string().contains("gapless"), "{e}");
    server.join().unwrap();
}

#[test]
fn verified_chunks_round_trip_through_encode() {
    // The engine's path: VerifiedChunk -> encode -> upload -> fetch -> the same chunk.
    let f = fixture();
    let r = Remote::new(&f.server.base, VOL, &f.laptop).unwrap();
    let chunk = VerifiedChunk::new(bytes(77, 50_000));
    r.upload([(chunk.id(), chunk.encode(payload::DEFAULT_ZSTD_LEVEL))])
        .unwrap();
    let got = r.fetch(&[chunk.id()]).unwrap();
    assert_eq!(got, vec![(chunk.id(), chunk)]);
}
