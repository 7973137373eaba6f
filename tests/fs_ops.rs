//! Every filesystem operation through a real FUSE mount, with the errors ext4 would give.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt, symlink};
use std::time::Duration;

use common::{Mount, errno_of, getxattr, listxattr, lstat, removexattr, renameat2, setxattr};

#[test]
fn create_write_read_append_truncate() {
    let m = Mount::new();
    let p = m.path("f.txt");
    fs::write(&p, b"hello world").unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"hello world");

    // O_APPEND writes land at the end whatever the offset.
    let mut f = OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"!!").unwrap();
    drop(f);
    assert_eq!(fs::read(&p).unwrap(), b"hello world!!");

    // O_TRUNC empties the file.
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    f.write_all(b"abc").unwrap();
    drop(f);
    assert_eq!(fs::read(&p).unwrap(), b"abc");

    // pwrite past the end leaves a zero-filled gap; ftruncate shrinks and extends.
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    f.write_all_at(b"Z", 10).unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"abc\0\0\0\0\0\0\0Z");
    f.set_len(2).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().len(), 2);
    f.set_len(5).unwrap();
    drop(f);
    assert_eq!(fs::read(&p).unwrap(), b"ab\0\0\0");

    // truncate by path.
    common::truncate(&p, 1).unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"a");

    // Reading and seeking in a larger random file.
    let data = common::random_bytes(1, 3 << 20);
    fs::write(m.path("big"), &data).unwrap();
    let mut f = File::open(m.path("big")).unwrap();
    f.seek(SeekFrom::Start(1_000_001)).unwrap();
    let mut buf = vec![0; 70_000];
    f.read_exact(&mut buf).unwrap();
    assert_eq!(&buf[..], &data[1_000_001..1_070_001]);
    assert_eq!(fs::read(m.path("big")).unwrap(), data);
}

#[test]
fn create_errors() {
    let m = Mount::new();
    fs::write(m.path("f"), b"x").unwrap();
    let e = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(m.path("f"))
        .unwrap_err();
    assert_eq!(errno_of(&e), libc::EEXIST);
    let e = File::open(m.path("missing")).unwrap_err();
    assert_eq!(errno_of(&e), libc::ENOENT);
    let e = fs::write(m.path("f/child"), b"x").unwrap_err();
    assert_eq!(errno_of(&e), libc::ENOTDIR);
    let long = "n".repeat(256);
    let e = fs::write(m.path(&long), b"x").unwrap_err();
    assert_eq!(errno_of(&e), libc::ENAMETOOLONG);
    fs::write(m.path(&"n".repeat(255)), b"ok").unwrap();
    let e = fs::metadata(m.path(&long)).unwrap_err();
    assert_eq!(errno_of(&e), libc::ENAMETOOLONG);
    fs::create_dir(m.path("d")).unwrap();
    let e = OpenOptions::new()
        .write(true)
        .open(m.path("d"))
        .unwrap_err();
    assert_eq!(errno_of(&e), libc::EISDIR);
}

#[test]
fn directories_mkdir_rmdir_readdir() {
    let m = Mount::new();
    fs::create_dir(m.path("d")).unwrap();
    assert_eq!(
        errno_of(&fs::create_dir(m.path("d")).unwrap_err()),
        libc::EEXIST
    );
    for i in 0..300 {
        fs::write(m.path(&format!("d/file-{i:03}")), i.to_string()).unwrap();
    }
    fs::create_dir(m.path("d/sub")).unwrap();
    let mut names: Vec<String> = fs::read_dir(m.path("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 301);
    assert_eq!(names[0], "file-000");
    assert_eq!(names[300], "sub");
    // nlink of a directory counts its subdirectories.
    assert_eq!(fs::metadata(m.path("d")).unwrap().nlink(), 3);
    assert_eq!(
        errno_of(&fs::remove_dir(m.path("d")).unwrap_err()),
        libc::ENOTEMPTY
    );
    assert_eq!(
        errno_of(&fs::remove_dir(m.path("d/file-000")).unwrap_err()),
        libc::ENOTDIR
    );
    assert_eq!(
        errno_of(&fs::remove_file(m.path("d/sub")).unwrap_err()),
        libc::EISDIR
    );
    assert_eq!(
        errno_of(&fs::remove_dir(m.path("nope")).unwrap_err()),
        libc::ENOENT
    );
    fs::remove_dir_all(m.path("d")).unwrap();
    assert!(!m.path("d").exists());
    assert_eq!(fs::read_dir(&m.mountpoint).unwrap().count(), 0);
}

#[test]
fn symlinks() {
    let m = Mount::new();
    fs::write(m.path("target"), b"T").unwrap();
    symlink("target", m.path("link")).unwrap();
    symlink("/nonexistent/dangling", m.path("dangling")).unwrap();
    assert_eq!(
        fs::read_link(m.path("link")).unwrap().to_str(),
        Some("target")
    );
    assert_eq!(fs::read(m.path("link")).unwrap(), b"T");
    let st = lstat(&m.path("dangling"));
    assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(st.st_size as usize, "/nonexistent/dangling".len());
    assert_eq!(
        errno_of(&symlink("x", m.path("link")).unwrap_err()),
        libc::EEXIST
    );
    assert_eq!(
        errno_of(&fs::read_link(m.path("target")).unwrap_err()),
        libc::EINVAL
    );
    fs::remove_file(m.path("link")).unwrap();
    assert!(m.path("target").exists());
}

#[test]
fn rename_semantics() {
    let m = Mount::new();
    fs::write(m.path("a"), b"A").unwrap();
    fs::write(m.path("b"), b"B").unwrap();
    fs::create_dir_all(m.path("d/sub")).unwrap();
    fs::create_dir(m.path("empty")).unwrap();
    fs::write(m.path("d/sub/x"), b"X").unwrap();

    // Over an existing file: the target is replaced.
    fs::rename(m.path("a"), m.path("b")).unwrap();
    assert_eq!(fs::read(m.path("b")).unwrap(), b"A");
    assert!(!m.path("a").exists());
    // A directory over an empty directory.
    fs::create_dir(m.path("d2")).unwrap();
    fs::rename(m.path("empty"), m.path("d2")).unwrap();
    assert!(!m.path("empty").exists());
    // Errors.
    assert_eq!(
        errno_of(&fs::rename(m.path("d2"), m.path("d")).unwrap_err()),
        libc::ENOTEMPTY
    );
    assert_eq!(
        errno_of(&fs::rename(m.path("b"), m.path("d")).unwrap_err()),
        libc::EISDIR
    );
    assert_eq!(
        errno_of(&fs::rename(m.path("d2"), m.path("b")).unwrap_err()),
        libc::ENOTDIR
    );
    assert_eq!(
        errno_of(&fs::rename(m.path("d"), m.path("d/sub/inside")).unwrap_err()),
        libc::EINVAL
    );
    assert_eq!(
        errno_of(&fs::rename(m.path("missing"), m.path("z")).unwrap_err()),
        libc::ENOENT
    );
    // RENAME_NOREPLACE and RENAME_EXCHANGE.
    fs::write(m.path("c"), b"C").unwrap();
    assert_eq!(
        renameat2(&m.path("c"), &m.path("b"), libc::RENAME_NOREPLACE),
        Err(libc::EEXIST)
    );
    renameat2(&m.path("c"), &m.path("c2"), libc::RENAME_NOREPLACE).unwrap();
    renameat2(&m.path("c2"), &m.path("d"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(fs::read(m.path("d")).unwrap(), b"C");
    assert_eq!(fs::read(m.path("c2/sub/x")).unwrap(), b"X");
    assert_eq!(
        renameat2(&m.path("b"), &m.path("nothing"), libc::RENAME_EXCHANGE),
        Err(libc::ENOENT)
    );
    // A moved directory takes its subtree along.
    fs::rename(m.path("c2"), m.path("d2/moved")).unwrap();
    assert_eq!(fs::read(m.path("d2/moved/sub/x")).unwrap(), b"X");
}

#[test]
fn unlinked_open_file_stays_readable() {
    let m = Mount::new();
    fs::write(m.path("f"), b"still here").unwrap();
    let mut f = File::open(m.path("f")).unwrap();
    fs::remove_file(m.path("f")).unwrap();
    assert!(!m.path("f").exists());
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "still here");
    assert_eq!(f.metadata().unwrap().nlink(), 0);
}

#[test]
fn chmod_chown_utimens() {
    let m = Mount::new();
    let p = m.path("f");
    fs::write(&p, b"x").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o4751)).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o4751);
    std::os::unix::fs::chown(&p, Some(1234), Some(5678)).unwrap();
    let md = fs::metadata(&p).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 5678));

    // utimensat with a given time, UTIME_OMIT and UTIME_NOW.
    let times = [
        libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 123_456_789,
        },
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
    ];
    let before_mtime = fs::metadata(&p).unwrap().mtime_nsec();
    common::utimensat(&p, times).unwrap();
    let md = fs::metadata(&p).unwrap();
    assert_eq!((md.atime(), md.atime_nsec()), (1_000_000_000, 123_456_789));
    assert_eq!(
        md.mtime_nsec(),
        before_mtime,
        "UTIME_OMIT leaves mtime alone"
    );
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: 1_500_000_000,
            tv_nsec: 0,
        },
    ];
    common::utimensat(&p, times).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().mtime(), 1_500_000_000);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
    ];
    common::utimensat(&p, times).unwrap();
    assert!((fs::metadata(&p).unwrap().mtime() - now).abs() <= 2);
}

#[test]
fn timestamps_follow_ext4() {
    let m = Mount::new();
    fs::create_dir(m.path("d")).unwrap();
    let p = m.path("d/f");
    fs::write(&p, b"x").unwrap();
    let pause = || std::thread::sleep(Duration::from_millis(20));
    let t = |p: &std::path::Path| {
        let s = lstat(p);
        ((s.st_mtime, s.st_mtime_nsec), (s.st_ctime, s.st_ctime_nsec))
    };

    // Write: mtime and ctime of the file.
    let (m0, c0) = t(&p);
    pause();
    OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .write_all_at(b"y", 0)
        .unwrap();
    let (m1, c1) = t(&p);
    assert!(m1 > m0 && c1 > c0, "write moves mtime and ctime");
    // chmod: ctime only.
    pause();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    let (m2, c2) = t(&p);
    assert_eq!(m2, m1);
    assert!(c2 > c1, "chmod moves ctime");
    // truncate: both.
    pause();
    OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(0)
        .unwrap();
    let (m3, c3) = t(&p);
    assert!(m3 > m2 && c3 > c2, "truncate moves mtime and ctime");
    // Adding and removing entries moves the directory's mtime.
    let (dm0, _) = t(&m.path("d"));
    pause();
    fs::write(m.path("d/g"), b"").unwrap();
    let (dm1, _) = t(&m.path("d"));
    assert!(dm1 > dm0, "create moves the directory's mtime");
    pause();
    fs::remove_file(m.path("d/g")).unwrap();
    let (dm2, _) = t(&m.path("d"));
    assert!(dm2 > dm1, "unlink moves the directory's mtime");
    // rename: ctime of the node, mtime of both directories.
    fs::create_dir(m.path("e")).unwrap();
    let (em0, _) = t(&m.path("e"));
    pause();
    fs::rename(&p, m.path("e/f")).unwrap();
    let (m4, c4) = t(&m.path("e/f"));
    assert_eq!(m4, m3, "rename leaves the file's mtime");
    assert!(c4 > c3, "rename moves the file's ctime");
    assert!(
        t(&m.path("d")).0 > dm2 && t(&m.path("e")).0 > em0,
        "rename moves both directories' mtime"
    );
}

#[test]
fn sparse_files_report_size_and_blocks() {
    let m = Mount::new();
    let p = m.path("sparse");
    let f = File::create(&p).unwrap();
    f.set_len(1 << 30).unwrap();
    f.write_all_at(&[1u8; 4096], 512 << 20).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let md = fs::metadata(&p).unwrap();
    assert_eq!(md.len(), 1 << 30);
    assert!(
        md.blocks() >= 8 && md.blocks() <= 64,
        "sparse file allocates only what was written: {} blocks",
        md.blocks()
    );
    let mut f = File::open(&p).unwrap();
    f.seek(SeekFrom::Start(512 << 20)).unwrap();
    let mut buf = [0u8; 4];
    f.read_exact(&mut buf).unwrap();
    assert_eq!(buf, [1; 4]);
}

#[test]
fn xattrs_with_flags_and_errors() {
    let m = Mount::new();
    let p = m.path("f");
    fs::write(&p, b"x").unwrap();
    setxattr(&p, "user.color", b"blue", 0).unwrap();
    assert_eq!(getxattr(&p, "user.color", 100).unwrap(), b"blue");
    assert_eq!(
        getxattr(&p, "user.color", 0).unwrap().len(),
        4,
        "size query"
    );
    assert_eq!(getxattr(&p, "user.color", 2), Err(libc::ERANGE));
    assert_eq!(getxattr(&p, "user.none", 100), Err(libc::ENODATA));
    // What the drive never stores is "not supported", which `ls -l` remembers per device,
    // rather than "no such attribute", which it asks again about for every file.
    for name in [
        "system.posix_acl_access",
        "system.posix_acl_default",
        "security.selinux",
    ] {
        assert_eq!(getxattr(&p, name, 100), Err(libc::EOPNOTSUPP), "{name}");
    }
    assert_eq!(
        setxattr(&p, "security.selinux", b"x", 0),
        Err(libc::EOPNOTSUPP)
    );
    assert_eq!(
        setxattr(&p, "user.color", b"red", libc::XATTR_CREATE),
        Err(libc::EEXIST)
    );
    assert_eq!(
        setxattr(&p, "user.size", b"1", libc::XATTR_REPLACE),
        Err(libc::ENODATA)
    );
    setxattr(&p, "user.color", b"red", libc::XATTR_REPLACE).unwrap();
    setxattr(&p, "user.empty", b"", libc::XATTR_CREATE).unwrap();
    assert_eq!(getxattr(&p, "user.empty", 10).unwrap(), b"");
    let mut names = listxattr(&p);
    names.sort();
    assert_eq!(names, vec!["user.color", "user.empty"]);
    removexattr(&p, "user.color").unwrap();
    assert_eq!(removexattr(&p, "user.color"), Err(libc::ENODATA));
    assert_eq!(
        setxattr(&p, "user.big", &vec![0; 65537], 0),
        Err(libc::E2BIG)
    );
    fs::create_dir(m.path("d")).unwrap();
    setxattr(&m.path("d"), "user.on-dir", b"1", 0).unwrap();
    assert_eq!(getxattr(&m.path("d"), "user.on-dir", 10).unwrap(), b"1");
}

#[test]
fn fallocate_modes() {
    let m = Mount::new();
    let p = m.path("f");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    common::fallocate(&f, 0, 0, 1 << 20).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 1 << 20);
    common::fallocate(&f, libc::FALLOC_FL_KEEP_SIZE, 1 << 20, 1 << 20).unwrap();
    assert_eq!(
        f.metadata().unwrap().len(),
        1 << 20,
        "KEEP_SIZE keeps the size"
    );
    f.write_all_at(&[7u8; 8192], 0).unwrap();
    f.sync_all().unwrap();
    common::fallocate(
        &f,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        0,
        4096,
    )
    .unwrap();
    drop(f);
    let data = fs::read(&p).unwrap();
    assert_eq!(
        &data[..4096],
        &[0u8; 4096][..],
        "punched range reads as zeros"
    );
    assert_eq!(&data[4096..8192], &[7u8; 4096][..]);
}

#[test]
fn mknod_of_a_regular_file_works_like_create() {
    let m = Mount::new();
    // FIFOs and devices: tests/special_files.rs; hard links: tests/hard_links.rs.
    common::mknod(&m.path("reg"), libc::S_IFREG | 0o640, 0).unwrap();
    assert_eq!(fs::metadata(m.path("reg")).unwrap().mode() & 0o777, 0o640);
}

#[test]
fn mode_bits_give_eacces_to_other_users() {
    let m = Mount::new();
    fs::write(m.path("private"), b"secret").unwrap();
    fs::set_permissions(m.path("private"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(m.path("public"), b"hello").unwrap();
    fs::set_permissions(m.path("public"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::create_dir(m.path("locked")).unwrap();
    fs::set_permissions(m.path("locked"), fs::Permissions::from_mode(0o700)).unwrap();
    let as_nobody = |cmd: &str| common::sh_as_nobody(&m.mountpoint, cmd);
    let ok = as_nobody("cat public");
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "hello");
    for cmd in [
        "cat private",
        "echo x >> public",
        "ls locked",
        "touch newfile",
    ] {
        let out = as_nobody(cmd);
        assert!(!out.status.success(), "{cmd} should fail");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A write by another user drops setuid, as on ext4.
    fs::write(m.path("suid"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(m.path("suid"), fs::Permissions::from_mode(0o4777)).unwrap();
    let out = as_nobody("echo more >> suid");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::metadata(m.path("suid")).unwrap().mode() & 0o7777, 0o777);
    // access(2) follows the same bits.
    let out = as_nobody("test -r private && echo yes || echo no");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no");
}

#[test]
fn statfs_and_concurrent_requests() {
    let m = Mount::new();
    let st = common::statvfs(&m.mountpoint);
    assert_eq!(st.f_namemax, 255);
    assert!(st.f_blocks > 0 && st.f_bavail > 0);

    // Several request threads read /dev/fuse. The session starts them one after another
    // while the first already answers the kernel (the mount is ready then): wait a little.
    let pid = m.daemon_pid();
    let count = || {
        fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter(|t| {
                let comm =
                    fs::read_to_string(t.as_ref().unwrap().path().join("comm")).unwrap_or_default();
                comm.starts_with("fuser-")
            })
            .count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut threads = count();
    while threads < 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        threads = count();
    }
    assert!(
        threads >= 4,
        "expected at least 4 FUSE request threads, found {threads}"
    );

    // Many writers at once, each checking its own content.
    std::thread::scope(|s| {
        for t in 0..8 {
            let m = &m;
            s.spawn(move || {
                for i in 0..50 {
                    let data = common::random_bytes(t * 1000 + i, 10_000 + i as usize);
                    let p = m.path(&format!("t{t}-{i}"));
                    fs::write(&p, &data).unwrap();
                    assert_eq!(fs::read(&p).unwrap(), data);
                }
            });
        }
    });
    assert_eq!(fs::read_dir(&m.mountpoint).unwrap().count(), 400);
}

#[test]
fn readers_and_writers_of_one_file_at_once() {
    // Readers are passed through to the backing file; a writer opened meanwhile must still
    // be seen by them, and its change recorded.
    let m = Mount::new();
    let p = m.path("shared");
    fs::write(&p, b"version one").unwrap();
    let reader = File::open(&p).unwrap();
    let writer = OpenOptions::new().write(true).open(&p).unwrap();
    writer.write_all_at(b"VERSION", 0).unwrap();
    let mut buf = [0u8; 11];
    reader.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"VERSION one");
    writer.set_len(7).unwrap();
    drop(writer);
    assert_eq!(fs::read(&p).unwrap(), b"VERSION");
    assert_eq!(fs::metadata(&p).unwrap().len(), 7);
    drop(reader);
    // A writer first, then a reader: the reader sees the writer's bytes too.
    let writer = OpenOptions::new().write(true).open(&p).unwrap();
    let reader = File::open(&p).unwrap();
    writer.write_all_at(b"v3", 0).unwrap();
    let mut buf = [0u8; 2];
    reader.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"v3");
    drop(writer);
    drop(reader);
    // A write-only handle's writes bypass the page cache: a read-write handle that read the
    // old bytes before (into the cache) reads the new ones after.
    let both = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    let mut buf = [0u8; 7];
    both.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"v3RSION");
    let writer = OpenOptions::new().write(true).open(&p).unwrap();
    writer.write_all_at(b"FOUR", 2).unwrap();
    both.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"v3FOURN");
    drop(writer);
    drop(both);
    let mut w = OpenOptions::new().append(true).open(&p).unwrap();
    w.write_all(b"+").unwrap();
    drop(w);
    assert_eq!(fs::read(&p).unwrap(), b"v3FOURN+");
    common::wait_until(Duration::from_secs(5), || {
        m.status()["unrecorded_files"] == 0
    });
}
