//! Changes from other devices applied to a mounted drive: visible at once through the
//! kernel's caches, and never pulled from under a program that has the file open.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, mpsc};

use deltadrive::drive::{Caller, Drive, DriveError, RemoteAttrs, RemoteContent, StateDir};
use deltadrive::protocol::NodeId;

struct InProcessMount {
    drive: Arc<Drive>,
    mountpoint: std::path::PathBuf,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _guard: common::UnmountGuard,
    _dir: tempfile::TempDir,
}

impl InProcessMount {
    fn new() -> InProcessMount {
        deltadrive::cli::init_logging();
        let dir = tempfile::tempdir().unwrap();
        let mountpoint = dir.path().join("mnt");
        fs::create_dir(&mountpoint).unwrap();
        let state = StateDir::new(&dir.path().join("state")).unwrap();
        let drive = Arc::new(Drive::open(state, Caller { uid: 0, gid: 0 }).unwrap());
        let (stop_tx, stop_rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (d, mp) = (Arc::clone(&drive), mountpoint.clone());
        let thread = std::thread::spawn(move || {
            deltadrive::fs::serve(d, &mp, stop_rx, move || {
                ready_tx.send(()).unwrap();
                Ok(())
            })
            .unwrap();
        });
        ready_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        InProcessMount {
            drive,
            _guard: common::UnmountGuard(mountpoint.clone()),
            mountpoint,
            stop: Some(stop_tx),
            thread: Some(thread),
            _dir: dir,
        }
    }

    fn stage(&self, bytes: &[u8]) -> std::path::PathBuf {
        let path = self
            .drive
            .staging_dir()
            .unwrap()
            .join(NodeId::random().to_string());
        fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for InProcessMount {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn attrs(perm: u32) -> RemoteAttrs {
    RemoteAttrs {
        perm,
        mtime: 1_700_000_000_000_000_000,
        xattrs: BTreeMap::new(),
    }
}

#[test]
fn remote_changes_are_visible_at_once() {
    let m = InProcessMount::new();
    let path = m.mountpoint.join("news.txt");
    // The kernel caches the absence of the name (a negative entry with a long TTL).
    assert!(fs::metadata(&path).is_err());
    assert!(fs::read_dir(&m.mountpoint).unwrap().next().is_none());

    let id = NodeId::random();
    let staged = m.stage(b"from another device");
    m.drive
        .apply_create(
            id,
            NodeId::ROOT,
            b"news.txt",
            &attrs(0o640),
            RemoteContent::File(&staged),
        )
        .unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"from another device");
    let md = fs::metadata(&path).unwrap();
    assert_eq!((md.mode() & 0o777, md.mtime()), (0o640, 1_700_000_000));
    assert!(!staged.exists(), "the staged file was moved in");

    // New content waits while a reader has the file open (the kernel reads it straight
    // from the backing file), then lands; the reader kept the old bytes all along.
    let mut reader = fs::File::open(&path).unwrap();
    let staged = m.stage(b"second version, longer");
    let busy = m
        .drive
        .apply_content(id, &staged, Some(1_800_000_000_000_000_000));
    assert!(matches!(busy, Err(DriveError::Busy)), "{busy:?}");
    let mut old = String::new();
    reader.read_to_string(&mut old).unwrap();
    assert_eq!(old, "from another device");
    drop(reader);
    common::wait_until(std::time::Duration::from_secs(5), || {
        m.drive.view().iter().any(|v| v.id == id && !v.busy)
    });
    m.drive
        .apply_content(id, &staged, Some(1_800_000_000_000_000_000))
        .unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"second version, longer");
    assert_eq!(fs::metadata(&path).unwrap().len(), 22);

    // Attributes, a move into a new directory, a symlink, then deletes.
    m.drive.apply_attrs(id, &attrs(0o600)).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    let dir = NodeId::random();
    m.drive
        .apply_create(
            dir,
            NodeId::ROOT,
            b"docs",
            &attrs(0o755),
            RemoteContent::Dir,
        )
        .unwrap();
    m.drive.apply_move(id, dir, b"moved.txt").unwrap();
    assert!(fs::metadata(&path).is_err());
    assert_eq!(
        fs::read(m.mountpoint.join("docs/moved.txt")).unwrap(),
        b"second version, longer"
    );
    let link = NodeId::random();
    m.drive
        .apply_create(
            link,
            dir,
            b"link",
            &attrs(0o777),
            RemoteContent::Symlink(b"moved.txt"),
        )
        .unwrap();
    assert_eq!(
        fs::read(m.mountpoint.join("docs/link")).unwrap(),
        b"second version, longer"
    );
    assert!(matches!(
        m.drive.apply_delete(dir),
        Err(DriveError::NotEmpty)
    ));
    m.drive.apply_delete(link).unwrap();
    m.drive.apply_delete(id).unwrap();
    m.drive.apply_delete(dir).unwrap();
    assert!(fs::read_dir(&m.mountpoint).unwrap().next().is_none());
    assert!(fs::metadata(m.mountpoint.join("docs")).is_err());
}

#[test]
fn content_is_not_replaced_under_a_writer() {
    let m = InProcessMount::new();
    let path = m.mountpoint.join("draft");
    fs::write(&path, b"local").unwrap();
    let id = m
        .drive
        .view()
        .iter()
        .find(|v| v.name == b"draft")
        .unwrap()
        .id;
    let staged = m.stage(b"remote");
    // A local version the server has not taken is never replaced.
    common::wait_until(std::time::Duration::from_secs(5), || {
        !m.drive.pending_versions().is_empty()
    });
    assert!(matches!(
        m.drive.apply_content(id, &staged, None),
        Err(DriveError::LocalChanges)
    ));
    // Once the sync engine has taken it, only an open writer holds the new content back.
    let ino = m.drive.ino_of(id).unwrap();
    assert!(m.drive.take_pending(ino).unwrap().is_some());
    let writer = fs::OpenOptions::new().write(true).open(&path).unwrap();
    assert!(matches!(
        m.drive.apply_content(id, &staged, None),
        Err(DriveError::Busy)
    ));
    assert_eq!(fs::read(&path).unwrap(), b"local");
    drop(writer);
    common::wait_until(std::time::Duration::from_secs(5), || {
        !m.drive.view().iter().any(|v| v.busy)
    });
    m.drive.apply_content(id, &staged, None).unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"remote");
}

/// The node id of the name `name` in the root, from the drive's view.
fn id_of(m: &InProcessMount, name: &[u8]) -> NodeId {
    m.drive
        .view()
        .into_iter()
        .find(|v| v.parent == NodeId::ROOT && v.name == name)
        .map(|v| v.id)
        .expect("name in the view")
}

#[test]
fn a_remote_change_to_one_name_of_a_linked_file_splits_it_off() {
    let m = InProcessMount::new();
    let p = |n: &str| m.mountpoint.join(n);
    fs::write(p("f"), b"shared").unwrap();
    fs::hard_link(p("f"), p("g")).unwrap();
    fs::hard_link(p("f"), p("h")).unwrap();
    let views = m.drive.view();
    assert_eq!(views.len(), 3, "one view per name: {views:?}");
    assert!(views.iter().all(|v| v.ino == views[0].ino));
    // As the sync engine would: the local version is taken.
    assert!(m.drive.take_pending(views[0].ino).unwrap().is_some());

    // Content for g: g gets an inode of its own, f and h keep theirs, also for a reader
    // that has f open.
    let mut reader = fs::File::open(p("f")).unwrap();
    let staged = m.stage(b"g from elsewhere");
    let busy = m.drive.apply_content(id_of(&m, b"g"), &staged, None);
    assert!(matches!(busy, Err(DriveError::Busy)), "{busy:?}");
    let mut old = String::new();
    reader.read_to_string(&mut old).unwrap();
    drop(reader);
    assert_eq!(old, "shared");
    common::wait_until(std::time::Duration::from_secs(5), || {
        m.drive.view().iter().all(|v| !v.busy)
    });
    m.drive
        .apply_content(id_of(&m, b"g"), &staged, None)
        .unwrap();
    assert_eq!(fs::read(p("g")).unwrap(), b"g from elsewhere");
    assert_eq!(fs::read(p("f")).unwrap(), b"shared");
    assert_eq!(fs::metadata(p("g")).unwrap().nlink(), 1);
    assert_eq!(fs::metadata(p("f")).unwrap().nlink(), 2);
    assert_ne!(
        fs::metadata(p("g")).unwrap().ino(),
        fs::metadata(p("f")).unwrap().ino()
    );

    // Attributes for h: h gets an inode of its own with a copy of the content.
    m.drive.apply_attrs(id_of(&m, b"h"), &attrs(0o600)).unwrap();
    assert_eq!(fs::metadata(p("h")).unwrap().mode() & 0o777, 0o600);
    assert_eq!(fs::metadata(p("f")).unwrap().mode() & 0o777, 0o644);
    assert_eq!(fs::metadata(p("f")).unwrap().nlink(), 1);
    fs::write(p("h"), b"h alone").unwrap();
    assert_eq!(fs::read(p("f")).unwrap(), b"shared");
}

#[test]
fn a_remote_create_of_an_unlinked_first_name_keeps_the_other_names_content() {
    let m = InProcessMount::new();
    let p = |n: &str| m.mountpoint.join(n);
    fs::write(p("f"), b"kept under g").unwrap();
    let f = id_of(&m, b"f");
    fs::hard_link(p("f"), p("g")).unwrap();
    // f goes here; g now holds the backing file created for f.
    fs::remove_file(p("f")).unwrap();
    // Another device edited f meanwhile: the edit wins and f comes back under its id.
    let staged = m.stage(b"f from elsewhere");
    m.drive
        .apply_create(
            f,
            NodeId::ROOT,
            b"f",
            &attrs(0o644),
            RemoteContent::File(&staged),
        )
        .unwrap();
    assert_eq!(fs::read(p("f")).unwrap(), b"f from elsewhere");
    assert_eq!(fs::read(p("g")).unwrap(), b"kept under g");
    // Deleting the new f leaves g's content alone too.
    m.drive.apply_delete(f).unwrap();
    assert_eq!(fs::read(p("g")).unwrap(), b"kept under g");
}
