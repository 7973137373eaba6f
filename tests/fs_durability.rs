//! What survives: a remount gives back the same tree; an fsync survives kill -9 of the daemon.

mod common;

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use common::{Mount, getxattr, listxattr, setxattr};

/// Everything observable about a tree: kind, mode, size, mtime, owner, target, xattrs, content hash.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let md = fs::symlink_metadata(&path).unwrap();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let mut xattrs: Vec<String> = listxattr(&path)
                .into_iter()
                .map(|n| {
                    let v = getxattr(&path, &n, 65536).unwrap();
                    format!("{n}={}", String::from_utf8_lossy(&v))
                })
                .collect();
            xattrs.sort();
            let detail = if md.file_type().is_symlink() {
                format!("link:{}", fs::read_link(&path).unwrap().display())
            } else if md.is_dir() {
                stack.push(path.clone());
                "dir".to_string()
            } else {
                format!("file:{}", blake3::hash(&fs::read(&path).unwrap()).to_hex())
            };
            out.insert(
                rel,
                format!(
                    "{detail} mode={:o} size={} mtime={}.{} uid={} gid={} xattrs={xattrs:?}",
                    md.mode(),
                    if md.is_dir() { 0 } else { md.len() },
                    md.mtime(),
                    md.mtime_nsec(),
                    md.uid(),
                    md.gid()
                ),
            );
        }
    }
    out
}

fn build_tree(m: &Mount) {
    fs::create_dir_all(m.path("docs/deep/er")).unwrap();
    fs::create_dir(m.path("empty")).unwrap();
    fs::write(m.path("docs/a.txt"), b"alpha").unwrap();
    fs::write(
        m.path("docs/deep/er/big.bin"),
        common::random_bytes(7, 5 << 20),
    )
    .unwrap();
    fs::write(m.path("empty-file"), b"").unwrap();
    fs::write(m.path("script.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(m.path("script.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(m.path("docs/deep"), fs::Permissions::from_mode(0o711)).unwrap();
    symlink("docs/a.txt", m.path("link")).unwrap();
    symlink("../../nowhere", m.path("docs/dangling")).unwrap();
    setxattr(&m.path("docs/a.txt"), "user.tag", b"important", 0).unwrap();
    setxattr(&m.path("empty"), "user.dir-tag", b"d", 0).unwrap();
    std::os::unix::fs::chown(m.path("docs/a.txt"), Some(1000), Some(1000)).unwrap();
    let f = fs::File::open(m.path("docs/a.txt")).unwrap();
    f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::new(1_234_567_890, 987_654_321))
        .unwrap();
}

#[test]
fn remount_gives_back_the_same_tree() {
    let mut m = Mount::new();
    build_tree(&m);
    let before = snapshot(&m.mountpoint);
    assert_eq!(before.len(), 10);
    m.umount();
    assert_eq!(
        fs::read_dir(&m.mountpoint).unwrap().count(),
        0,
        "unmounted: the mountpoint is empty"
    );
    let status = m.status();
    assert_eq!(status["mounted"], false);
    assert_eq!(status["nodes"], 11, "10 entries and the root");
    m.mount();
    let after = snapshot(&m.mountpoint);
    assert_eq!(before, after);
    assert!(
        !m.log().contains("did not end cleanly"),
        "a umount is a clean shutdown"
    );
}

#[test]
fn fsynced_data_survives_kill_9() {
    let mut m = Mount::new();
    let data = common::random_bytes(42, 3 << 20);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.path("precious"))
        .unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    fs::create_dir(m.path("dir")).unwrap();
    let mut g = fs::File::create(m.path("dir/second")).unwrap();
    g.write_all(b"second file").unwrap();
    g.sync_all().unwrap();
    // Keep `f` open and unsynced-after-write: the crash must not lose what was fsynced.
    f.write_all(b"tail written after fsync").unwrap();

    m.kill_daemon();
    let status = m.status();
    assert_eq!(status["mounted"], true);
    assert_eq!(status["daemon_running"], false);
    drop(f);
    drop(g);
    m.umount();
    assert_eq!(m.status()["mounted"], false);

    m.mount();
    assert!(
        m.log().contains("did not end cleanly"),
        "the restart noticed the crash"
    );
    let back = fs::read(m.path("precious")).unwrap();
    assert!(back.len() >= data.len());
    assert_eq!(&back[..data.len()], &data[..], "fsynced bytes are intact");
    assert_eq!(fs::read(m.path("dir/second")).unwrap(), b"second file");
    // Whatever changed unrecorded was recorded as a whole-file version at restart.
    let status = m.status();
    assert_eq!(status["unrecorded_files"], 0);
    assert!(status["pending_versions"].as_u64().unwrap() >= 2);
}

#[test]
fn status_counts_nodes_bytes_and_unrecorded_files() {
    let m = Mount::new();
    fs::write(m.path("a"), vec![1u8; 1000]).unwrap();
    fs::write(m.path("b"), vec![2u8; 24]).unwrap();
    fs::create_dir(m.path("d")).unwrap();
    let mut open = fs::File::create(m.path("d/open")).unwrap();
    open.write_all(b"12345").unwrap();
    open.flush().unwrap();
    common::wait_until(std::time::Duration::from_secs(5), || {
        let s = m.status();
        s["nodes"] == 5 && s["bytes_stored"] == 1029 && s["unrecorded_files"] == 1
    });
    let s = m.status();
    assert_eq!(s["mounted"], true);
    assert_eq!(s["daemon_running"], true);
    assert_eq!(s["pending_versions"], 2, "a and b were recorded on close");
    assert_eq!(
        s["pending_upload_bytes"], 1024,
        "the bytes written to a and b"
    );
    drop(open);
    common::wait_until(std::time::Duration::from_secs(5), || {
        m.status()["unrecorded_files"] == 0
    });
    assert_eq!(m.status()["pending_versions"], 3);
}

#[test]
fn large_writes_arrive_as_1_mib_requests() {
    let mut m = Mount::new();
    let data = common::random_bytes(9, 16 << 20);
    fs::write(m.path("big"), &data).unwrap();
    m.umount();
    let log = m.log();
    assert!(log.contains("largest write request 1048576 bytes"), "{log}");
    m.mount();
    assert_eq!(fs::read(m.path("big")).unwrap(), data);
}
