//! A device's claims the server cannot take on trust, against a real `deltadrive serve`.

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
