//! Hard links through a real mount: the same operations on the drive and on a plain
//! directory of the local disk give the same answers (ext4 semantics), survive a remount, serve
//! `cp -al` and `git clone --local`; and between two synced mounts each name is a file of its
//! own (README, Semantics: hard links).

mod common;
mod support;

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::time::Duration;

use common::sync::{Synced, assert_same_trees, synced_mount, wait_for, wait_quiet};
use common::{Mount, errno_of, sh};

const QUIET: Duration = Duration::from_secs(60);

/// The errno of a failed call, 0 for success.
fn errno<T>(r: std::io::Result<T>) -> i32 {
    r.err().map_or(0, |e| errno_of(&e))
}

fn nlink(p: &Path) -> u64 {
    fs::symlink_metadata(p).unwrap().nlink()
}

fn ino(p: &Path) -> u64 {
    fs::symlink_metadata(p).unwrap().ino()
}

/// Runs the link operations under `root` and writes down what each one answered, so that a
/// mount and a local directory can be compared line by line.
fn exercise(root: &Path) -> Vec<String> {
    let p = |rel: &str| root.join(rel);
    let mut seen = Vec::new();
    let mut note = |what: &str, value: String| seen.push(format!("{what}: {value}"));
    fs::create_dir(p("d")).unwrap();
    fs::create_dir(p("e")).unwrap();
    fs::write(p("a"), b"first").unwrap();

    // Links in the same and in another directory: one inode, counted.
    note("link a b", errno(fs::hard_link(p("a"), p("b"))).to_string());
    note(
        "link a d/c",
        errno(fs::hard_link(p("a"), p("d/c"))).to_string(),
    );
    note(
        "nlink a b d/c",
        format!("{} {} {}", nlink(&p("a")), nlink(&p("b")), nlink(&p("d/c"))),
    );
    note(
        "one inode",
        (ino(&p("a")) == ino(&p("b")) && ino(&p("a")) == ino(&p("d/c"))).to_string(),
    );

    // Data and attributes shared through every name.
    fs::write(p("b"), b"written through b").unwrap();
    note(
        "read a",
        String::from_utf8(fs::read(p("a")).unwrap()).unwrap(),
    );
    let mut f = OpenOptions::new().append(true).open(p("d/c")).unwrap();
    f.write_all(b", appended through c").unwrap();
    drop(f);
    note(
        "read b",
        String::from_utf8(fs::read(p("b")).unwrap()).unwrap(),
    );
    fs::set_permissions(p("a"), fs::Permissions::from_mode(0o600)).unwrap();
    note(
        "mode of d/c",
        format!("{:o}", fs::metadata(p("d/c")).unwrap().mode() & 0o7777),
    );

    // ctime moves with link and unlink, as ext4's does.
    let before = ctime(&p("a"));
    std::thread::sleep(Duration::from_millis(30));
    fs::hard_link(p("a"), p("e/tmp")).unwrap();
    let after_link = ctime(&p("a"));
    std::thread::sleep(Duration::from_millis(30));
    fs::remove_file(p("e/tmp")).unwrap();
    let after_unlink = ctime(&p("a"));
    note(
        "ctime moves on link, unlink",
        format!("{} {}", after_link > before, after_unlink > after_link),
    );

    // Errors.
    note(
        "link onto existing",
        errno(fs::hard_link(p("a"), p("b"))).to_string(),
    );
    note(
        "link of a missing source",
        errno(fs::hard_link(p("nope"), p("x"))).to_string(),
    );
    note(
        "link of a directory",
        errno(fs::hard_link(p("d"), p("d2"))).to_string(),
    );
    note(
        "link into a missing dir",
        errno(fs::hard_link(p("a"), p("nodir/x"))).to_string(),
    );

    // Unlink of one name keeps the others.
    fs::remove_file(p("a")).unwrap();
    note("a after unlink", errno(fs::metadata(p("a"))).to_string());
    note(
        "b, d/c after unlink of a",
        format!(
            "{} {} {}",
            nlink(&p("b")),
            nlink(&p("d/c")),
            String::from_utf8(fs::read(p("d/c")).unwrap()).unwrap()
        ),
    );

    // Rename over a link: that name goes to the other inode, the rest of its inode stays.
    fs::write(p("other"), b"other").unwrap();
    fs::rename(p("other"), p("b")).unwrap();
    note(
        "after rename over b",
        format!(
            "b={} d/c nlink={} b is c={}",
            String::from_utf8(fs::read(p("b")).unwrap()).unwrap(),
            nlink(&p("d/c")),
            ino(&p("b")) == ino(&p("d/c"))
        ),
    );
    // Rename of a name onto another name of the same inode: nothing happens, both stay.
    fs::hard_link(p("d/c"), p("e/c2")).unwrap();
    fs::rename(p("d/c"), p("e/c2")).unwrap();
    note(
        "rename onto a name of the same inode",
        format!(
            "{} {} nlink={}",
            p("d/c").exists(),
            p("e/c2").exists(),
            nlink(&p("e/c2"))
        ),
    );
    // Moving a linked name moves that name only.
    fs::rename(p("e/c2"), p("moved")).unwrap();
    note(
        "moved link",
        format!(
            "{} {} same inode={}",
            p("e/c2").exists(),
            nlink(&p("moved")),
            ino(&p("moved")) == ino(&p("d/c"))
        ),
    );

    // An open descriptor keeps working after every name is gone.
    let mut fd = OpenOptions::new()
        .read(true)
        .write(true)
        .open(p("moved"))
        .unwrap();
    fs::remove_file(p("moved")).unwrap();
    fd.write_all(b"|via fd of a still-named inode").unwrap();
    note(
        "d/c sees a write through an fd of an unlinked name",
        String::from_utf8(fs::read(p("d/c")).unwrap()).unwrap(),
    );
    fs::remove_file(p("d/c")).unwrap();
    fd.write_all(b"|no name left").unwrap();
    fd.seek(SeekFrom::Start(0)).unwrap();
    let mut back = String::new();
    fd.read_to_string(&mut back).unwrap();
    note("fd after every name is gone", back);
    note("fstat nlink", fd.metadata().unwrap().nlink().to_string());
    drop(fd);

    // Hard links of symlinks (link() does not follow them).
    symlink("target-somewhere", p("sl")).unwrap();
    note(
        "link a symlink",
        errno(fs::hard_link(p("sl"), p("sl2"))).to_string(),
    );
    note(
        "symlink names",
        format!(
            "{} {} {:?}",
            nlink(&p("sl")),
            ino(&p("sl")) == ino(&p("sl2")),
            fs::read_link(p("sl2")).unwrap()
        ),
    );
    seen
}

/// A file's ctime in nanoseconds.
fn ctime(p: &Path) -> i128 {
    let m = fs::metadata(p).unwrap();
    m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128
}

#[test]
fn link_semantics_match_the_local_disk() {
    let m = Mount::new();
    let local = tempfile::tempdir().unwrap();
    let on_disk = exercise(local.path());
    fs::create_dir(m.path("t")).unwrap();
    let on_drive = exercise(&m.path("t"));
    assert_eq!(on_drive, on_disk);
    // The local disk did what ext4 does (so the comparison means something).
    for expected in [
        "nlink a b d/c: 3 3 3",
        "one inode: true",
        "link of a directory: 1",
        "fstat nlink: 0",
    ] {
        assert!(
            on_disk.iter().any(|l| l == expected),
            "{expected}: {on_disk:#?}"
        );
    }
    // Across filesystems the kernel answers alone.
    fs::write(m.path("x"), b"x").unwrap();
    assert_eq!(
        errno(fs::hard_link(m.path("x"), local.path().join("x"))),
        libc::EXDEV
    );
}

#[test]
fn links_survive_a_remount() {
    let mut m = Mount::new();
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("a"), b"shared").unwrap();
    fs::hard_link(m.path("a"), m.path("d/b")).unwrap();
    fs::hard_link(m.path("a"), m.path("c")).unwrap();
    symlink("t", m.path("s")).unwrap();
    fs::hard_link(m.path("s"), m.path("d/s2")).unwrap();
    // The first name goes: the content stays with the others (the backing file is kept).
    fs::remove_file(m.path("a")).unwrap();
    let inode = ino(&m.path("c"));
    m.umount();
    m.mount();
    assert_eq!(ino(&m.path("c")), inode);
    assert_eq!(ino(&m.path("d/b")), inode);
    assert_eq!(nlink(&m.path("c")), 2);
    assert_eq!(fs::read(m.path("d/b")).unwrap(), b"shared");
    fs::write(m.path("c"), b"changed after the remount").unwrap();
    assert_eq!(
        fs::read(m.path("d/b")).unwrap(),
        b"changed after the remount"
    );
    assert_eq!(nlink(&m.path("d/s2")), 2);
    assert_eq!(ino(&m.path("d/s2")), ino(&m.path("s")));
    // And again after the link count went back to one.
    fs::remove_file(m.path("c")).unwrap();
    m.umount();
    m.mount();
    assert_eq!(nlink(&m.path("d/b")), 1);
    assert_eq!(
        fs::read(m.path("d/b")).unwrap(),
        b"changed after the remount"
    );
    assert!(!m.path("c").exists());
}

#[test]
fn cp_al_and_git_clone_local_use_links() {
    let m = Mount::new();
    let src = m.path("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("one"), b"1").unwrap();
    fs::write(src.join("sub/two"), common::random_bytes(3, 200_000)).unwrap();
    sh("cp -al src copy", &m.mountpoint);
    assert_eq!(ino(&src.join("sub/two")), ino(&m.path("copy/sub/two")));
    assert_eq!(nlink(&m.path("copy/one")), 2);
    assert_eq!(
        fs::read(m.path("copy/sub/two")).unwrap(),
        common::random_bytes(3, 200_000)
    );

    let repo = m.path("repo");
    fs::create_dir(&repo).unwrap();
    sh(
        "git init -q -b main . && git config user.email t@example.com && git config user.name Test",
        &repo,
    );
    for i in 0..5 {
        fs::write(repo.join(format!("f{i}")), format!("content {i}\n")).unwrap();
        sh(&format!("git add -A && git commit -q -m c{i}"), &repo);
    }
    sh("git clone -q --local repo clone", &m.mountpoint);
    let clone = m.path("clone");
    sh("git fsck --full --strict", &clone);
    assert_eq!(sh("git log --oneline | wc -l", &clone).trim(), "5");
    // git linked the objects instead of copying them.
    let objects = sh("find .git/objects -type f -links +1 | wc -l", &clone);
    assert!(
        objects.trim().parse::<u32>().unwrap() > 0,
        "no object of the clone is hard-linked: {objects}"
    );
    // Committing in the clone leaves the origin whole.
    fs::write(clone.join("f0"), b"changed in the clone\n").unwrap();
    sh("git commit -q -am clone-change && git gc -q", &clone);
    sh("git fsck --full --strict", &repo);
    assert_eq!(fs::read(repo.join("f0")).unwrap(), b"content 0\n");
}

/// alice's laptop and phone following alice-docs on the fixture's server.
fn laptop_and_phone(fx: &support::Fixture) -> (Synced, Synced) {
    (
        synced_mount(&fx.server.base, "laptop", &fx.laptop),
        synced_mount(&fx.server.base, "phone", &fx.phone),
    )
}

#[test]
fn each_name_of_a_linked_file_syncs_as_a_file_of_its_own() {
    let fx = support::fixture();
    let (a, b) = laptop_and_phone(&fx);
    let both = [&a, &b];
    fs::create_dir(a.path("d")).unwrap();
    fs::write(a.path("f"), b"version 1").unwrap();
    fs::hard_link(a.path("f"), a.path("d/g")).unwrap();
    fs::hard_link(a.path("f"), a.path("h")).unwrap();
    wait_quiet(&both, QUIET);
    assert_same_trees(&both, "after linking on the laptop");
    // The phone has independent files.
    assert_eq!(nlink(&b.path("f")), 1);
    assert_ne!(ino(&b.path("f")), ino(&b.path("d/g")));

    // An edit through one name on the laptop reaches the phone under every name.
    fs::write(a.path("d/g"), b"version 2, written through d/g").unwrap();
    wait_for(
        &both,
        QUIET,
        "the edit under every name on the phone",
        || {
            ["f", "d/g", "h"].iter().all(|n| {
                fs::read(b.path(n)).ok().as_deref() == Some(&b"version 2, written through d/g"[..])
            })
        },
    );
    wait_quiet(&both, QUIET);
    assert_same_trees(&both, "after the edit through one name");
    assert_eq!(nlink(&a.path("f")), 3);

    // An edit of one name on the phone splits that name off on the laptop.
    fs::write(b.path("h"), b"phone's h").unwrap();
    wait_for(&both, QUIET, "the phone's h on the laptop", || {
        fs::read(a.path("h")).ok().as_deref() == Some(&b"phone's h"[..])
    });
    wait_quiet(&both, QUIET);
    assert_same_trees(&both, "after the edit of h on the phone");
    assert_eq!(
        fs::read(a.path("f")).unwrap(),
        b"version 2, written through d/g"
    );
    assert_eq!(
        fs::read(a.path("d/g")).unwrap(),
        b"version 2, written through d/g"
    );
    assert_eq!(nlink(&a.path("h")), 1);
    assert_eq!(nlink(&a.path("f")), 2, "f and d/g are still one inode");
    assert_ne!(ino(&a.path("h")), ino(&a.path("f")));
    assert_eq!(nlink(&b.path("h")), 1);

    // A chmod of one name on the phone splits it off too, with its content.
    fs::set_permissions(b.path("d/g"), fs::Permissions::from_mode(0o600)).unwrap();
    wait_for(
        &both,
        QUIET,
        "the phone's chmod of d/g on the laptop",
        || fs::metadata(a.path("d/g")).is_ok_and(|m| m.mode() & 0o7777 == 0o600),
    );
    wait_quiet(&both, QUIET);
    assert_same_trees(&both, "after the chmod of d/g on the phone");
    assert_eq!(fs::metadata(a.path("f")).unwrap().mode() & 0o7777, 0o644);
    assert_eq!(nlink(&a.path("f")), 1);
    assert_eq!(
        fs::read(a.path("d/g")).unwrap(),
        b"version 2, written through d/g"
    );
}

#[test]
fn move_and_delete_of_one_name_on_another_device_leave_the_others() {
    let fx = support::fixture();
    let (a, b) = laptop_and_phone(&fx);
    let both = [&a, &b];
    fs::create_dir(a.path("d")).unwrap();
    fs::write(a.path("x"), b"kept").unwrap();
    fs::hard_link(a.path("x"), a.path("y")).unwrap();
    fs::hard_link(a.path("x"), a.path("z")).unwrap();
    wait_quiet(&both, QUIET);
    assert_same_trees(&both, "after linking");

    // A move of one name on the phone moves that name on the laptop, still linked.
    fs::rename(b.path("y"), b.path("d/y2")).unwrap();
    wait_for(&both, QUIET, "the move on the laptop", || {
        a.path("d/y2").exists() && !a.path("y").exists()
    });
    assert_eq!(ino(&a.path("d/y2")), ino(&a.path("x")));
    assert_eq!(nlink(&a.path("x")), 3);

    // A delete of one name on the phone removes that name only.
    fs::remove_file(b.path("x")).unwrap();
    wait_for(&both, QUIET, "the delete on the laptop", || {
        !a.path("x").exists()
    });
    wait_quiet(&both, QUIET);
    assert_same_trees(&both, "after the move and the delete");
    assert_eq!(fs::read(a.path("z")).unwrap(), b"kept");
    assert_eq!(fs::read(a.path("d/y2")).unwrap(), b"kept");
    assert_eq!(nlink(&a.path("z")), 2);

    // The laptop edits what is left: both names reach the phone.
    fs::write(a.path("z"), b"edited after").unwrap();
    wait_for(&both, QUIET, "the edit under both names", || {
        fs::read(b.path("d/y2")).ok().as_deref() == Some(&b"edited after"[..])
            && fs::read(b.path("z")).ok().as_deref() == Some(&b"edited after"[..])
    });
    // A local unlink of the first name pushes a delete of that name only.
    fs::remove_file(a.path("z")).unwrap();
    wait_for(&both, QUIET, "the unlink on the phone", || {
        !b.path("z").exists()
    });
    wait_quiet(&both, QUIET);
    assert_same_trees(&both, "after the unlink of one name");
    assert_eq!(fs::read(b.path("d/y2")).unwrap(), b"edited after");
}

#[test]
fn links_survive_kill_9_after_fsync_of_their_directory() {
    let mut m = Mount::new();
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("a"), b"durable").unwrap();
    fs::hard_link(m.path("a"), m.path("d/b")).unwrap();
    fs::remove_file(m.path("a")).unwrap();
    fs::hard_link(m.path("d/b"), m.path("c")).unwrap();
    // fsync of a directory makes every metadata change so far durable.
    fs::File::open(m.path("d")).unwrap().sync_all().unwrap();
    m.kill_daemon();
    // umount detaches a mount whose daemon died.
    m.umount();
    m.mount();
    assert!(
        m.log().contains("did not end cleanly"),
        "the restart noticed the crash"
    );
    assert_eq!(nlink(&m.path("c")), 2);
    assert_eq!(ino(&m.path("c")), ino(&m.path("d/b")));
    assert_eq!(fs::read(m.path("c")).unwrap(), b"durable");
    assert!(!m.path("a").exists());
}

#[test]
fn concurrent_edits_through_linked_names_conflict_per_name() {
    let mut fx = support::fixture();
    let (a, b) = laptop_and_phone(&fx);
    let both = [&a, &b];
    fs::write(a.path("f"), b"base").unwrap();
    fs::hard_link(a.path("f"), a.path("g")).unwrap();
    wait_quiet(&both, QUIET);
    assert_same_trees(&both, "after linking");

    // Neither can push: the laptop edits through f (so g changes too), the phone edits g.
    fx.server.kill9();
    fs::write(a.path("f"), b"laptop's edit through f").unwrap();
    fs::write(b.path("g"), b"phone's g").unwrap();
    fx.server.restart();
    wait_quiet(&both, QUIET);
    let listing = assert_same_trees(&both, "after the concurrent edits");

    // f changed on the laptop only; g changed on both: one version keeps the name, the
    // other is in a conflicted copy, and nothing is lost.
    assert_eq!(fs::read(b.path("f")).unwrap(), b"laptop's edit through f");
    let copies = common::sync::copies_of(&listing, "", "g");
    assert_eq!(copies.len(), 1, "one conflicted copy of g: {listing:#?}");
    let mut versions = vec![
        fs::read(a.path("g")).unwrap(),
        fs::read(a.path(&copies[0].0)).unwrap(),
    ];
    versions.sort();
    assert_eq!(
        versions,
        vec![b"laptop's edit through f".to_vec(), b"phone's g".to_vec()]
    );
    // Whatever g holds on the laptop now, f kept the laptop's edit.
    assert_eq!(fs::read(a.path("f")).unwrap(), b"laptop's edit through f");
}
