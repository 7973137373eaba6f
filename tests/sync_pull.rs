//! The read path on real parts: another device commits through the wire protocol, and a
//! mounted drive (`mount --server`) shows the change moments later.

mod common;
mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use deltadrive::chunking::{ChunkerParams, Manifest, chunk_bytes, diff, payload};
use deltadrive::protocol::{DeleteOp, MoveOp, NodeId, NodeKind, Op, SetAttrsOp, WriteOp};

use support::{Device, create};

/// Mounts a drive that follows alice-docs as alice's phone.
fn join_as_phone(fx: &support::Fixture) -> common::sync::Synced {
    common::sync::synced_mount(&fx.server.base, "phone", &fx.phone)
}

/// The mount pulled up to `seq` and applied everything: its engine is quiet.
fn applied(m: &common::Mount, seq: u64) -> bool {
    let s = m.status();
    s["cursor"].as_u64() >= Some(seq) && s["idle"] == true
}

#[test]
fn a_mounted_drive_follows_another_devices_commits() {
    let fx = support::fixture();
    let laptop = Device::new(&fx.server, &fx.laptop);
    let (docs, file, link, empty) = (
        NodeId::random(),
        NodeId::random(),
        NodeId::random(),
        NodeId::random(),
    );
    let content = common::random_bytes(1, 2 << 20);
    let manifest = laptop.upload(&content);
    let first = laptop.commit(vec![
        create(docs, NodeId::ROOT, "docs", NodeKind::Dir, None, None),
        create(
            file,
            docs,
            "a.bin",
            NodeKind::File,
            Some(manifest.clone()),
            None,
        ),
        create(
            link,
            NodeId::ROOT,
            "link",
            NodeKind::Symlink,
            None,
            Some("docs/a.bin"),
        ),
        create(
            empty,
            NodeId::ROOT,
            "empty",
            NodeKind::File,
            Some(Manifest::default()),
            None,
        ),
    ]);

    // A new device joins: the snapshot gives it the whole tree, content included.
    let m = join_as_phone(&fx);
    common::wait_until(Duration::from_secs(20), || applied(&m, first));
    assert_eq!(fs::read(m.path("docs/a.bin")).unwrap(), content);
    assert_eq!(
        fs::read(m.path("link")).unwrap(),
        content,
        "the symlink resolves in the mount"
    );
    assert_eq!(fs::metadata(m.path("empty")).unwrap().len(), 0);
    assert_eq!(
        fs::metadata(m.path("docs/a.bin")).unwrap().mtime(),
        1_600_000_000
    );
    let joined = m.status();
    assert_eq!(joined["server"], fx.server.base.as_str());
    assert_eq!(joined["volume"], "alice-docs");

    // The laptop inserts one byte in the middle: the phone fetches about one chunk.
    let before = m.status()["bytes_downloaded"].as_u64().unwrap();
    let mut edited = content.clone();
    edited.insert(1 << 20, b'!');
    let new_manifest = laptop.upload(&edited);
    let d = diff(&manifest, &new_manifest);
    let seq = laptop.commit(vec![Op::Write(WriteOp {
        node: file,
        base: deltadrive::protocol::Seq(1),
        edit: d.edit,
        size: edited.len() as u64,
        manifest_id: new_manifest.id(),
    })]);
    common::wait_until(Duration::from_secs(20), || applied(&m, seq));
    assert_eq!(fs::read(m.path("docs/a.bin")).unwrap(), edited);
    let fetched = m.status()["bytes_downloaded"].as_u64().unwrap() - before;
    assert!(
        fetched < 256 * 1024,
        "a 1-byte insert into 2 MiB fetched {fetched} bytes"
    );

    // Attributes, a move, a new directory and a delete in one transaction.
    let new_dir = NodeId::random();
    let seq = laptop.commit(vec![
        Op::SetAttrs(SetAttrsOp {
            node: file,
            base: deltadrive::protocol::Seq(seq),
            mode: Some(0o600),
            mtime: None,
            xattrs: None,
        }),
        Op::Move(MoveOp {
            node: file,
            base: deltadrive::protocol::Seq(seq),
            new_parent: NodeId::ROOT,
            new_name: support::name("moved.bin"),
        }),
        create(new_dir, NodeId::ROOT, "new", NodeKind::Dir, None, None),
        Op::Delete(DeleteOp {
            node: empty,
            base: deltadrive::protocol::Seq(1),
        }),
    ]);
    common::wait_until(Duration::from_secs(20), || applied(&m, seq));
    assert!(!m.path("docs/a.bin").exists());
    assert_eq!(fs::read(m.path("moved.bin")).unwrap(), edited);
    assert_eq!(
        fs::metadata(m.path("moved.bin"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert!(m.path("new").is_dir());
    assert!(!m.path("empty").exists());
    let status = m.status();
    assert_eq!(status["online"], true);
    assert_eq!(status["server_head"].as_u64(), Some(seq));
}

#[test]
fn a_wrong_token_or_an_unknown_volume_fails_the_mount_clearly() {
    let fx = support::fixture();
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().join("mp");
    fs::create_dir(&mp).unwrap();
    let _guard = common::UnmountGuard(mp.clone());
    let bad = common::sync::token_file(dir.path(), "not-a-real-token");
    let out = common::deltadrive(&[
        "mount",
        mp.to_str().unwrap(),
        "--state",
        dir.path().join("s1").to_str().unwrap(),
        "--server",
        &fx.server.base,
        "--volume",
        "alice-docs",
        "--token-file",
        &bad,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("401") || err.to_lowercase().contains("token"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let good = common::sync::token_file(dir.path(), &fx.phone);
    let out = common::deltadrive(&[
        "mount",
        mp.to_str().unwrap(),
        "--state",
        dir.path().join("s2").to_str().unwrap(),
        "--server",
        &fx.server.base,
        "--volume",
        "nope",
        "--token-file",
        &good,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope"), "{err}");

    let out = common::deltadrive(&["mount", mp.to_str().unwrap(), "--server", &fx.server.base]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "--server needs --volume and --token-file"
    );
}

#[test]
fn a_new_device_joining_a_volume_of_ten_thousand_files_sees_the_whole_tree() {
    let fx = support::fixture();
    let laptop = Device::new(&fx.server, &fx.laptop);
    let dirs: Vec<NodeId> = (0..100).map(|_| NodeId::random()).collect();
    let mut ops: Vec<Op> = dirs
        .iter()
        .enumerate()
        .map(|(i, &d)| {
            create(
                d,
                NodeId::ROOT,
                &format!("dir{i:03}"),
                NodeKind::Dir,
                None,
                None,
            )
        })
        .collect();
    let mut expected = std::collections::BTreeMap::new();
    let mut uploads = Vec::new();
    for i in 0..10_000usize {
        let content = format!("file {i} of ten thousand, {}\n", "x".repeat(i % 97)).into_bytes();
        let manifest = chunk_bytes(ChunkerParams::default(), &content);
        uploads.push((manifest.chunks[0].id, payload::encode(&content, 3)));
        let (dir, name) = (i / 100, format!("f{:03}.txt", i % 100));
        ops.push(create(
            NodeId::random(),
            dirs[dir],
            &name,
            NodeKind::File,
            Some(manifest),
            None,
        ));
        expected.insert(format!("dir{dir:03}/{name}"), content);
    }
    laptop.remote.upload(uploads).unwrap();
    let rest = ops.split_off(5_100);
    laptop.commit(ops);
    let last = laptop.commit(rest);

    let m = join_as_phone(&fx);
    common::wait_until(Duration::from_secs(120), || applied(&m, last));
    let mut seen = 0;
    for entry in fs::read_dir(&m.mountpoint).unwrap() {
        let dir = entry.unwrap().path();
        for file in fs::read_dir(&dir).unwrap() {
            let path = file.unwrap().path();
            let rel = path
                .strip_prefix(&m.mountpoint)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            assert_eq!(fs::read(&path).unwrap(), expected[&rel], "{rel}");
            seen += 1;
        }
    }
    assert_eq!(seen, 10_000);
    assert_eq!(
        m.status()["nodes"],
        10_101,
        "10,000 files, 100 directories and the root"
    );
}

#[test]
fn the_drive_works_offline_and_catches_up_when_the_server_returns() {
    let mut fx = support::fixture();
    let laptop_token = fx.laptop.clone();
    let m = join_as_phone(&fx);
    common::wait_until(Duration::from_secs(20), || m.status()["online"] == true);

    // The server goes away: the drive keeps working and says it is offline.
    let addr = fx.server.base.trim_start_matches("http://").to_string();
    fx.server.kill9();
    fs::write(m.path("written-offline.txt"), b"still works").unwrap();
    assert_eq!(
        fs::read(m.path("written-offline.txt")).unwrap(),
        b"still works"
    );
    common::wait_until(Duration::from_secs(30), || m.status()["online"] == false);
    assert!(
        m.status()["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("reach"),
        "{}",
        m.status()
    );

    // It comes back on the same address; another device commits; the drive catches up.
    fx.server = support::Server::start_at(&fx.server.data, &addr);
    let laptop = Device::new(&fx.server, &laptop_token);
    let manifest = laptop.upload(b"made while the phone was cut off");
    let seq = laptop.commit(vec![create(
        NodeId::random(),
        NodeId::ROOT,
        "news.txt",
        NodeKind::File,
        Some(manifest),
        None,
    )]);
    common::wait_until(Duration::from_secs(60), || applied(&m, seq));
    assert_eq!(
        fs::read(m.path("news.txt")).unwrap(),
        b"made while the phone was cut off"
    );
    assert_eq!(m.status()["online"], true);
    assert_eq!(
        fs::read(m.path("written-offline.txt")).unwrap(),
        b"still works"
    );
}
