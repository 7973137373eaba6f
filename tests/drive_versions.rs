//! Dirty ranges and recorded versions, through the drive's own API (no mount needed).

use deltadrive::drive::{Caller, Drive, OpenMode, ROOT_INO, RangeSet, SetAttr, StateDir};

const ME: Caller = Caller { uid: 0, gid: 0 };
const WRITE: OpenMode = OpenMode {
    writable: true,
    passthrough_available: false,
};

fn open(dir: &std::path::Path) -> Drive {
    Drive::open(StateDir::new(dir).unwrap(), ME).unwrap()
}

fn ranges(v: &[(u64, u64)]) -> RangeSet {
    let mut r = RangeSet::new();
    for &(s, e) in v {
        r.insert(s, e);
    }
    r
}

#[test]
fn writes_are_tracked_until_release_records_a_version() {
    let dir = tempfile::tempdir().unwrap();
    let drive = open(dir.path());
    let (attr, fh) = drive.create(ROOT_INO, b"f", 0o644, ME).unwrap();
    drive.write(fh, 0, &[1; 100], false).unwrap();
    drive.write(fh, 4096, &[2; 10], false).unwrap();
    drive.write(fh, 50, &[3; 100], false).unwrap();
    assert_eq!(
        drive.dirty_files(),
        vec![(attr.ino, ranges(&[(0, 150), (4096, 4106)]))]
    );
    assert!(drive.pending_versions().is_empty());

    drive.release(fh).unwrap();
    assert!(drive.dirty_files().is_empty());
    let v = drive.pending_versions();
    assert_eq!(v.len(), 1);
    assert_eq!((v[0].number, v[0].size), (1, 4106));
    assert_eq!(v[0].ranges, ranges(&[(0, 150), (4096, 4106)]));

    // A second session's writes merge into the version the sync engine has not taken yet.
    let fh = drive.open_file(attr.ino, WRITE).unwrap().fh;
    drive.write(fh, 10_000, &[4; 5], false).unwrap();
    drive.fsync(fh, false).unwrap();
    let v = drive.pending_versions();
    assert_eq!((v[0].number, v[0].size), (2, 10_005));
    assert_eq!(
        v[0].ranges,
        ranges(&[(0, 150), (4096, 4106), (10_000, 10_005)])
    );
    drive.release(fh).unwrap();

    // A truncate by path records at once (there is no close to wait for).
    drive
        .setattr(
            attr.ino,
            SetAttr {
                size: Some(20),
                ..SetAttr::default()
            },
            None,
        )
        .unwrap();
    let v = drive.pending_versions();
    assert_eq!((v[0].number, v[0].size), (3, 20));
    assert!(
        v[0].ranges.ranges().contains(&(0, 10_005)),
        "{:?}",
        v[0].ranges
    );
    drive.shutdown().unwrap();
}

#[test]
fn an_unrecorded_change_is_wholly_dirty_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let ino = {
        let drive = open(dir.path());
        let (attr, fh) = drive.create(ROOT_INO, b"f", 0o644, ME).unwrap();
        drive.write(fh, 0, &[9; 5000], false).unwrap();
        drive.release(fh).unwrap();
        // The sync engine takes version 1.
        let taken = drive.take_pending(attr.ino).unwrap().unwrap();
        assert_eq!(taken.number, 1);
        assert!(drive.pending_versions().is_empty());
        drive.shutdown().unwrap();
        attr.ino
    };
    {
        // Reopen, write, and drop without shutdown (the daemon died before release).
        let drive = open(dir.path());
        let fh = drive.open_file(ino, WRITE).unwrap().fh;
        drive.write(fh, 1000, &[7; 10], false).unwrap();
        std::mem::forget(drive);
    }
    let drive = open(dir.path());
    assert!(drive.dirty_files().is_empty(), "recorded at open");
    let v = drive.pending_versions();
    assert_eq!(v.len(), 1);
    assert_eq!(
        v[0].ranges,
        ranges(&[(0, 5000)]),
        "the whole file is dirty, not just the last write"
    );
    assert_eq!(v[0].number, 2);
    assert_eq!(v[0].size, 5000);
    drive.shutdown().unwrap();
}
