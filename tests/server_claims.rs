//! A device's claims the server cannot take on trust, against a real `deltadrive serve`: the
//! chunk lengths a manifest states, and what an upload's cost tells about other users' data.

mod support;

use deltadrive::chunking::{ChunkRef, EditOp, Manifest, ManifestEdit};
use deltadrive::protocol::{ErrorCode, NodeId, Op, Seq, WriteOp, manifest_id};
use support::{Client, bytes, fixture, manifest, mkfile};

/// A file whose manifest claims `claimed` bytes for a chunk of 16 is refused as a bad
/// manifest (its manifest id computed over the claim), whether the chunk comes in a create or
/// in a write's edit; the volume is left as it was, and the truthful commit then applies.
#[test]
fn a_manifest_misstating_a_chunk_length_is_400_bad_manifest() {
    let f = fixture();
    let c = Client::new(&f.server, &f.laptop, "alice-docs");
    let small = c.put_chunk(&bytes(1, 16));
    let big = c.put_chunk(&bytes(2, 20_000));
    assert_eq!(small.len, 16);

    for claimed in [999, 15, 17] {
        let lie = ChunkRef {
            id: small.id,
            len: claimed,
        };
        let e = c.commit_err(
            vec![mkfile(
                NodeId::random(),
                NodeId::ROOT,
                "a",
                manifest(&[big, lie]),
            )],
            400,
        );
        assert_eq!(e.code, ErrorCode::BadManifest, "{claimed}: {e:?}");
        assert_eq!(e.op, Some(0));
        assert!(
            e.message
                .contains(&format!("is 16 bytes, the manifest says {claimed}")),
            "{e:?}"
        );
    }
    assert_eq!(c.snapshot().seq, Seq(0), "nothing was committed");

    let file = NodeId::random();
    let seq = c.commit_ok(vec![mkfile(file, NodeId::ROOT, "a", manifest(&[big]))]);
    let write = |inserted: ChunkRef| {
        let new = Manifest {
            chunks: vec![big, inserted],
        };
        Op::Write(WriteOp {
            node: file,
            base: Seq(seq),
            edit: ManifestEdit {
                ops: vec![EditOp::Keep { start: 0, end: 1 }, EditOp::Insert(inserted)],
            },
            size: new.size(),
            manifest_id: manifest_id(&new),
        })
    };
    let e = c.commit_err(
        vec![write(ChunkRef {
            id: small.id,
            len: 999,
        })],
        400,
    );
    assert_eq!(e.code, ErrorCode::BadManifest, "{e:?}");
    assert_eq!(c.node(file).unwrap().version, Seq(seq));
    let applied = c.commit_ok(vec![write(small)]);
    assert_eq!(c.node(file).unwrap().version, Seq(applied));
    assert_eq!(c.node(file).unwrap().size, 20_016);
}

/// Bytes of all pack files under the server's data directory.
fn pack_bytes(data: &std::path::Path) -> u64 {
    fn walk(dir: &std::path::Path, total: &mut u64) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                walk(&e.path(), total);
            } else if e.path().extension().is_some_and(|x| x == "pack") {
                *total += meta.len();
            }
        }
    }
    let mut total = 0;
    walk(&data.join("chunks").join("packs"), &mut total);
    total
}

/// Rows of the chunk index: one per stored copy.
fn index_rows(data: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open(data.join("chunks").join("index.sqlite")).unwrap();
    conn.query_row("SELECT count(*) FROM copies", [], |r| r.get(0))
        .unwrap()
}

/// No cross-user chunk oracle, by construction: uploading a chunk another user stores does
/// the same work as uploading a chunk nobody stores (the payload is written to a pack and
/// made durable again, and indexed again), so its timing cannot tell the uploader that the
/// other user has it.
/// Only the uploader's own volume's holdings are skipped.
#[test]
fn an_upload_does_the_same_work_whether_or_not_another_user_stores_the_chunk() {
    let f = fixture();
    let data = f.dir.path();
    let alice = Client::new(&f.server, &f.laptop, "alice-docs");
    let bob = Client::new(&f.server, &f.bob, "bob-docs");

    let work = || (pack_bytes(data), index_rows(data));
    let before = work();
    alice.put_chunk(&bytes(10, 30_000));
    let after = work();
    let fresh = (after.0 - before.0, after.1 - before.1);
    assert!(fresh.0 > 0);
    assert_eq!(fresh.1, 1);

    // The same chunk alice stores: bob's upload writes and indexes as much as a fresh one.
    let before = work();
    bob.put_chunk(&bytes(10, 30_000));
    let after = work();
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        fresh,
        "stored again for bob"
    );

    // A chunk nobody stores, of the same size: the same again.
    let before = work();
    bob.put_chunk(&bytes(11, 30_000));
    let after = work();
    assert_eq!((after.0 - before.0, after.1 - before.1), fresh);

    // Re-uploading what one's own volume holds is skipped: that is one's own business.
    let before = work();
    bob.put_chunk(&bytes(10, 30_000));
    alice.put_chunk(&bytes(10, 30_000));
    assert_eq!(work(), before);

    // And both volumes read it back.
    for c in [&alice, &bob] {
        let id = deltadrive::chunking::ChunkId::of(&bytes(10, 30_000));
        let resp = c
            .req(reqwest::Method::GET, &c.url(&format!("chunks/{id}")))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
}
