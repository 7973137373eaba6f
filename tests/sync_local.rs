//! A file's manifest follows its local versions, re-chunked only around what changed.

use deltadrive::chunking::seeded::seeded_bytes;
use deltadrive::chunking::{ChunkerParams, Manifest, chunk_bytes};
use deltadrive::drive::{Caller, Drive, OpenMode, ROOT_INO, StateDir};
use deltadrive::sync::local::take_version;

const ME: Caller = Caller { uid: 0, gid: 0 };
const WRITE: OpenMode = OpenMode {
    writable: true,
    passthrough_available: false,
};

#[test]
fn manifests_follow_local_versions_taken_at_each_fsync_or_close() {
    let dir = tempfile::tempdir().unwrap();
    let drive = Drive::open(StateDir::new(dir.path()).unwrap(), ME).unwrap();
    let params = ChunkerParams::default();
    let mut data = seeded_bytes(3 << 20, 5);
    let (attr, fh) = drive.create(ROOT_INO, b"big.bin", 0o644, ME).unwrap();
    for (i, block) in data.chunks(1 << 20).enumerate() {
        drive.write(fh, (i as u64) << 20, block, false).unwrap();
    }
    drive.release(fh).unwrap();
    let node = drive.view().iter().find(|v| v.ino == attr.ino).unwrap().id;

    // First version: the whole file, against an empty manifest.
    let v1 = drive.pending_versions().pop().unwrap();
    let m1 = take_version(&drive, node, &v1, &Manifest::default(), params)
        .unwrap()
        .unwrap();
    assert_eq!(m1, chunk_bytes(params, &data));
    assert!(
        drive.pending_versions().is_empty(),
        "the version was handed over"
    );

    // A 1-byte overwrite in the middle: the new manifest equals whole-file chunking.
    let fh = drive.open_file(attr.ino, WRITE).unwrap().fh;
    drive.write(fh, 1_500_000, b"!", false).unwrap();
    data[1_500_000] = b'!';
    // A version written over before it is taken is not taken (its bytes changed since).
    drive.fsync(fh, false).unwrap();
    let stale = drive.pending_versions().pop().unwrap();
    drive.write(fh, 1_500_001, b"?", false).unwrap();
    data[1_500_001] = b'?';
    assert_eq!(
        take_version(&drive, node, &stale, &m1, params).unwrap(),
        None
    );
    // Fsynced with the writer still open (a database between transactions): taken, since
    // nothing was written after the fsync.
    drive.fsync(fh, false).unwrap();
    let v2 = drive.pending_versions().pop().unwrap();
    let m2 = take_version(&drive, node, &v2, &m1, params)
        .unwrap()
        .unwrap();
    drive.release(fh).unwrap();
    assert_eq!(m2, chunk_bytes(params, &data));
    let changed = m2.chunks.iter().filter(|c| !m1.chunks.contains(c)).count();
    assert!(changed <= 2, "a 1-byte edit changed {changed} chunks");
    drive.shutdown().unwrap();
}
