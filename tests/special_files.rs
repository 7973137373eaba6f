//! FIFOs, unix sockets and device nodes in a real mount: made, changed and removed with the
//! errors ext4 gives (the same steps on a directory of the local disk, compared step by
//! step), working as such (the kernel does their I/O), kept across remounts, and never
//! synced: they stay on the device that made them, and a remote node that wants one's name
//! lands beside it as a conflicted copy.

mod common;
mod support;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use common::sync::{Synced, copies_of, listing, now_secs, synced_mount, wait_for, wait_quiet};
use common::{
    Mount, errno_of, getxattr, listxattr, mkfifo, mknod, removexattr, renameat2, setxattr,
    utimensat,
};

const QUIET: Duration = Duration::from_secs(60);

/// The name of a file type, as the listings below show it.
fn kind_name(t: fs::FileType) -> &'static str {
    if t.is_fifo() {
        "fifo"
    } else if t.is_socket() {
        "socket"
    } else if t.is_char_device() {
        "chardev"
    } else if t.is_block_device() {
        "blockdev"
    } else if t.is_dir() {
        "dir"
    } else if t.is_symlink() {
        "symlink"
    } else {
        "file"
    }
}

/// What a stat says about a node, times and inode numbers aside.
fn describe(path: &Path) -> String {
    match fs::symlink_metadata(path) {
        Err(e) => format!("errno {}", errno_of(&e)),
        Ok(m) => {
            let t = m.file_type();
            let kind = kind_name(t);
            // Directory sizes and link counts differ between filesystems; not the subject here.
            let (size, nlink) = if t.is_dir() {
                (0, 0)
            } else {
                (m.size(), m.nlink())
            };
            format!(
                "{kind} mode={:o} size={size} nlink={nlink} rdev={} blocks={} uid={} gid={}",
                m.mode() & 0o7777,
                m.rdev(),
                if t.is_dir() { 0 } else { m.blocks() },
                m.uid(),
                m.gid()
            )
        }
    }
}

fn result<T>(r: Result<T, i32>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("errno {e}"),
    }
}

fn io_result<T>(r: std::io::Result<T>) -> String {
    result(r.map_err(|e| errno_of(&e)))
}

/// Runs the same steps in `root` and returns what each gave, one line per step.
fn exercise(root: &Path) -> Vec<String> {
    let p = |rel: &str| root.join(rel);
    let mut out = Vec::new();
    let mut log = |step: &str, what: String| out.push(format!("{step}: {what}"));
    let dev_null = libc::makedev(1, 3);
    let loop_dev = libc::makedev(7, 200);

    log("mkfifo p", result(mkfifo(&p("p"), 0o640)));
    log(
        "mknod c",
        result(mknod(&p("c"), libc::S_IFCHR | 0o600, dev_null)),
    );
    log(
        "mknod b",
        result(mknod(&p("b"), libc::S_IFBLK | 0o660, loop_dev)),
    );
    log("mknod k", result(mknod(&p("k"), libc::S_IFSOCK | 0o644, 0)));
    log("bind s", io_result(UnixListener::bind(p("s"))));
    for n in ["p", "c", "b", "k", "s"] {
        log(&format!("stat {n}"), describe(&p(n)));
    }
    log("readdir", {
        let mut names: Vec<String> = fs::read_dir(root)
            .expect("read_dir")
            .map(|e| {
                let e = e.expect("entry");
                let kind = kind_name(e.file_type().expect("d_type"));
                format!("{}:{kind}", e.file_name().to_string_lossy())
            })
            .collect();
        names.sort();
        names.join(" ")
    });

    log("mkfifo p again", result(mkfifo(&p("p"), 0o600)));
    log(
        "mknod c again",
        result(mknod(&p("c"), libc::S_IFCHR | 0o600, dev_null)),
    );
    log(
        "mknod of a directory type",
        result(mknod(&p("x"), libc::S_IFDIR | 0o755, 0)),
    );
    log("mkdir p", io_result(fs::create_dir(p("p"))));
    log("create p", {
        io_result(
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(p("p")),
        )
    });

    // Attributes.
    log(
        "chmod p",
        io_result(fs::set_permissions(
            p("p"),
            fs::Permissions::from_mode(0o604),
        )),
    );
    log(
        "chown c",
        io_result(std::os::unix::fs::lchown(p("c"), Some(1234), Some(5678))),
    );
    log(
        "chmod s",
        io_result(fs::set_permissions(
            p("s"),
            fs::Permissions::from_mode(0o4755),
        )),
    );
    log("stat s setuid", describe(&p("s")));
    // chown of a non-directory drops setuid, as on ext4.
    log(
        "chown s",
        io_result(std::os::unix::fs::lchown(p("s"), Some(0), Some(0))),
    );
    let ts = |sec, nsec| libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    log(
        "utimens b",
        result(utimensat(
            &p("b"),
            [ts(1_600_000_000, 7), ts(1_500_000_000, 123_456_789)],
        )),
    );
    log("times b", {
        let m = fs::symlink_metadata(p("b")).expect("stat b");
        format!(
            "atime={}.{} mtime={}.{}",
            m.atime(),
            m.atime_nsec(),
            m.mtime(),
            m.mtime_nsec()
        )
    });
    for n in ["p", "c", "s"] {
        log(&format!("stat {n} after"), describe(&p(n)));
    }
    log("truncate p", result(common::truncate(&p("p"), 0)));
    log("truncate c", result(common::truncate(&p("c"), 10)));
    log("readlink p", io_result(fs::read_link(p("p"))));
    log("rmdir p", io_result(fs::remove_dir(p("p"))));
    log("stat p/x", describe(&p("p/x")));
    log("mkfifo p/x", result(mkfifo(&p("p/x"), 0o600)));

    // Extended attributes: user.* only on files and directories, as the VFS says.
    log(
        "setxattr user p",
        result(setxattr(&p("p"), "user.a", b"1", 0)),
    );
    log("getxattr user p", result(getxattr(&p("p"), "user.a", 64)));
    log(
        "setxattr trusted c",
        result(setxattr(&p("c"), "trusted.a", b"v", 0)),
    );
    log(
        "getxattr trusted c",
        match getxattr(&p("c"), "trusted.a", 64) {
            Ok(v) => String::from_utf8_lossy(&v).into_owned(),
            Err(e) => format!("errno {e}"),
        },
    );
    log("listxattr c", {
        let mut names: Vec<String> = listxattr(&p("c"))
            .into_iter()
            .filter(|n| n.starts_with("trusted.") || n.starts_with("user."))
            .collect();
        names.sort();
        names.join(",")
    });
    log(
        "setxattr trusted c create",
        result(setxattr(&p("c"), "trusted.a", b"w", libc::XATTR_CREATE)),
    );
    log(
        "removexattr trusted c",
        result(removexattr(&p("c"), "trusted.a")),
    );
    log(
        "removexattr trusted c again",
        result(removexattr(&p("c"), "trusted.a")),
    );

    // Renames: special files move like files; over files and other special files.
    log("rename p q", io_result(fs::rename(p("p"), p("q"))));
    log("stat p after rename", describe(&p("p")));
    log("stat q", describe(&p("q")));
    fs::write(p("f"), b"regular").expect("write f");
    log(
        "rename q over file f",
        io_result(fs::rename(p("q"), p("f"))),
    );
    log("stat f", describe(&p("f")));
    fs::create_dir(p("d")).expect("mkdir d");
    log(
        "rename fifo over dir",
        io_result(fs::rename(p("f"), p("d"))),
    );
    log(
        "rename dir over chardev",
        io_result(fs::rename(p("d"), p("c"))),
    );
    log(
        "rename noreplace",
        result(renameat2(&p("k"), &p("s"), libc::RENAME_NOREPLACE)),
    );
    log(
        "rename exchange c s",
        result(renameat2(&p("c"), &p("s"), libc::RENAME_EXCHANGE)),
    );
    log("stat c exchanged", describe(&p("c")));
    log("stat s exchanged", describe(&p("s")));
    log("rename into d", io_result(fs::rename(p("f"), p("d/f"))));
    log("stat d/f", describe(&p("d/f")));
    log("rmdir d holding a fifo", io_result(fs::remove_dir(p("d"))));
    log("rename d e", io_result(fs::rename(p("d"), p("e"))));
    log("stat e/f", describe(&p("e/f")));
    fs::write(p("g"), b"regular").expect("write g");
    log("rename file over k", io_result(fs::rename(p("g"), p("k"))));
    log("stat k", describe(&p("k")));

    // Removal.
    for n in ["e/f", "b", "c", "s", "k"] {
        log(&format!("unlink {n}"), io_result(fs::remove_file(p(n))));
    }
    log("unlink b again", io_result(fs::remove_file(p("b"))));
    log("rmdir e", io_result(fs::remove_dir(p("e"))));
    log(
        "left",
        fs::read_dir(root)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(","),
    );
    out
}

#[test]
fn special_files_behave_as_on_the_local_disk() {
    let m = Mount::new();
    let local = m.dir.path().join("local");
    fs::create_dir(&local).unwrap();
    let on_disk = exercise(&local);
    let in_drive = exercise(&m.mountpoint);
    let mut diff = String::new();
    for (d, f) in on_disk.iter().zip(&in_drive) {
        if d != f {
            diff.push_str(&format!("\n  disk:  {d}\n  drive: {f}"));
        }
    }
    assert_eq!(on_disk.len(), in_drive.len());
    assert!(diff.is_empty(), "the drive differs from ext4:{diff}");
    // The transcript did make each kind (a broken helper would compare equal failures).
    for made in [
        "mkfifo p: ok",
        "mknod c: ok",
        "mknod b: ok",
        "bind s: ok",
        "rename exchange c s: ok",
    ] {
        assert!(in_drive.iter().any(|l| l == made), "{made}: {in_drive:#?}");
    }
    assert!(
        in_drive
            .iter()
            .any(|l| l.starts_with("stat c: chardev mode=600 size=0 nlink=1 rdev=259 ")),
        "{in_drive:#?}"
    );
}

#[test]
fn a_fifo_passes_data_between_a_writer_and_a_reader() {
    let m = Mount::new();
    let path = m.path("pipe");
    mkfifo(&path, 0o600).unwrap();
    let data = common::random_bytes(3, 1 << 20);
    let writer = {
        let (path, data) = (path.clone(), data.clone());
        std::thread::spawn(move || {
            let mut f = fs::OpenOptions::new().write(true).open(path).unwrap();
            f.write_all(&data).unwrap();
        })
    };
    let mut got = Vec::new();
    fs::File::open(&path)
        .unwrap()
        .read_to_end(&mut got)
        .unwrap();
    writer.join().unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "the FIFO passed other bytes");
}

#[test]
fn a_socket_bound_in_the_drive_accepts_connections() {
    let m = Mount::new();
    fs::create_dir(m.path("run")).unwrap();
    let path = m.path("run/app.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).unwrap();
        conn.write_all(&buf.map(|b| b.to_ascii_uppercase()))
            .unwrap();
    });
    let mut client = UnixStream::connect(&path).unwrap();
    client.write_all(b"ping").unwrap();
    let mut answer = [0u8; 4];
    client.read_exact(&mut answer).unwrap();
    server.join().unwrap();
    assert_eq!(&answer, b"PING");
    assert!(fs::symlink_metadata(&path).unwrap().file_type().is_socket());
}

#[test]
fn a_char_device_node_works_as_the_device_and_needs_cap_mknod() {
    let m = Mount::new();
    let null = m.path("null");
    mknod(&null, libc::S_IFCHR | 0o666, libc::makedev(1, 3)).unwrap();
    fs::write(&null, b"swallowed").unwrap();
    assert_eq!(fs::read(&null).unwrap(), b"", "reads like /dev/null");
    let zero = m.path("zero");
    mknod(&zero, libc::S_IFCHR | 0o644, libc::makedev(1, 5)).unwrap();
    let mut buf = [7u8; 16];
    fs::File::open(&zero).unwrap().read_exact(&mut buf).unwrap();
    assert_eq!(buf, [0u8; 16], "reads like /dev/zero");

    // Without CAP_MKNOD a device node is refused with EPERM, as on ext4; a FIFO is not.
    let local = m.dir.path().join("local");
    for dir in [local.as_path(), &m.path("shared")] {
        fs::create_dir(dir).unwrap();
        fs::set_permissions(dir, fs::Permissions::from_mode(0o777)).unwrap();
        let as_nobody = |cmd: &str| common::sh_as_nobody(dir, cmd);
        let out = as_nobody("mknod dev c 1 3");
        assert!(!out.status.success(), "{}: mknod as nobody", dir.display());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
            "{}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let out = as_nobody("mkfifo pipe && stat -c %F pipe");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "fifo",
            "{}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(fs::symlink_metadata(dir.join("pipe")).unwrap().uid(), 65534);
    }
}

#[test]
fn special_files_survive_umount_and_mount() {
    let mut m = Mount::new();
    fs::create_dir(m.path("d")).unwrap();
    mkfifo(&m.path("d/pipe"), 0o600).unwrap();
    fs::set_permissions(m.path("d/pipe"), fs::Permissions::from_mode(0o620)).unwrap();
    mknod(&m.path("null"), libc::S_IFCHR | 0o666, libc::makedev(1, 3)).unwrap();
    mknod(&m.path("disk"), libc::S_IFBLK | 0o600, libc::makedev(7, 9)).unwrap();
    drop(UnixListener::bind(m.path("sock")).unwrap());
    std::os::unix::fs::lchown(m.path("d/pipe"), Some(42), Some(43)).unwrap();
    setxattr(&m.path("null"), "trusted.note", b"kept", 0).unwrap();
    let before: Vec<String> = ["d/pipe", "null", "disk", "sock"]
        .iter()
        .map(|n| describe(&m.path(n)))
        .collect();
    m.umount();
    m.mount();
    let after: Vec<String> = ["d/pipe", "null", "disk", "sock"]
        .iter()
        .map(|n| describe(&m.path(n)))
        .collect();
    assert_eq!(before, after);
    assert!(after[0].starts_with("fifo mode=620 ") && after[0].ends_with("uid=42 gid=43"));
    assert!(after[2].starts_with("blockdev mode=600 size=0 nlink=1 rdev=1801 "));
    assert_eq!(
        getxattr(&m.path("null"), "trusted.note", 64).unwrap(),
        b"kept"
    );
    // Still the things they were.
    fs::write(m.path("null"), b"gone").unwrap();
    assert_eq!(fs::read(m.path("null")).unwrap(), b"");
    let pipe = m.path("d/pipe");
    let writer = std::thread::spawn(move || fs::write(pipe, b"through").unwrap());
    assert_eq!(fs::read(m.path("d/pipe")).unwrap(), b"through");
    writer.join().unwrap();
}

/// Whether `dir` holds a conflicted copy of `name` (read while the engine may be renaming
/// in it: an entry gone between readdir and stat is not an error here).
fn has_copy_of(dir: &Path, name: &str) -> bool {
    fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            common::sync::parse_conflicted(&e.file_name().to_string_lossy())
                .is_some_and(|c| c.original == name)
        })
    })
}

/// The special files this test makes on the laptop, by path.
const SPECIAL: [&str; 4] = ["pipe", "dev-null", "app.sock", "d/inner-pipe"];

#[test]
fn special_files_stay_on_their_device_and_keep_their_names() {
    let fx = support::fixture();
    let laptop = synced_mount(&fx.server.base, "laptop", &fx.laptop);
    let phone = synced_mount(&fx.server.base, "phone", &fx.phone);
    let both: [&Synced; 2] = [&laptop, &phone];

    fs::create_dir(laptop.path("d")).unwrap();
    mkfifo(&laptop.path("pipe"), 0o644).unwrap();
    mknod(
        &laptop.path("dev-null"),
        libc::S_IFCHR | 0o666,
        libc::makedev(1, 3),
    )
    .unwrap();
    drop(UnixListener::bind(laptop.path("app.sock")).unwrap());
    mkfifo(&laptop.path("d/inner-pipe"), 0o600).unwrap();
    fs::write(laptop.path("note.txt"), b"next to them").unwrap();
    fs::write(laptop.path("d/file.txt"), b"inside").unwrap();
    wait_quiet(&both, QUIET);

    // The regular file and the directory arrive; the special files do not.
    assert_eq!(fs::read(phone.path("note.txt")).unwrap(), b"next to them");
    assert_eq!(fs::read(phone.path("d/file.txt")).unwrap(), b"inside");
    for rel in SPECIAL {
        assert!(
            fs::symlink_metadata(phone.path(rel)).is_err(),
            "{rel} reached the phone"
        );
        assert!(
            !fs::symlink_metadata(laptop.path(rel))
                .unwrap()
                .file_type()
                .is_file(),
            "{rel} is still special on the laptop"
        );
    }
    let status = laptop.status();
    assert_eq!(status["local_only_special"], 4, "{status:#}");
    assert_eq!(phone.status()["local_only_special"], 0);
    let text = common::deltadrive(&[
        "status",
        laptop.mountpoint.to_str().unwrap(),
        "--state",
        laptop.state.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("4 special files (FIFOs, sockets, device nodes) stay on this device"),
        "{text}"
    );

    // A file the phone makes under the FIFO's name lands on the laptop as a conflicted
    // copy (renamed for the phone too: one tree); the FIFO keeps its name.
    let since = now_secs();
    fs::write(phone.path("pipe"), b"phone's file").unwrap();
    wait_for(&both, QUIET, "the phone's pipe renamed", || {
        has_copy_of(&laptop.mountpoint, "pipe")
    });
    wait_quiet(&both, QUIET);
    let on_laptop = listing(&laptop.mountpoint);
    let copies = copies_of(&on_laptop, "", "pipe");
    assert_eq!(copies.len(), 1, "{on_laptop:#?}");
    let (copy, parsed) = &copies[0];
    assert_eq!(
        parsed.device, "laptop",
        "named after the device that kept the name"
    );
    assert!(parsed.secs >= since - 1 && parsed.secs <= now_secs() + 1);
    assert_eq!(fs::read(laptop.path(copy)).unwrap(), b"phone's file");
    assert_eq!(fs::read(phone.path(copy)).unwrap(), b"phone's file");
    assert!(
        fs::symlink_metadata(phone.path("pipe")).is_err(),
        "the phone's file was renamed there too"
    );
    assert!(
        fs::symlink_metadata(laptop.path("pipe"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert!(laptop.counter("conflicts") >= 1);

    // A file the phone moves onto the socket's name is renamed the same way.
    fs::rename(phone.path("note.txt"), phone.path("app.sock")).unwrap();
    wait_for(&both, QUIET, "the phone's move renamed", || {
        has_copy_of(&laptop.mountpoint, "app.sock")
    });
    wait_quiet(&both, QUIET);
    let copies = copies_of(&listing(&phone.mountpoint), "", "app.sock");
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(
        fs::read(laptop.path(&copies[0].0)).unwrap(),
        b"next to them"
    );
    assert!(!laptop.path("note.txt").exists() && !phone.path("app.sock").exists());
    assert!(
        fs::symlink_metadata(laptop.path("app.sock"))
            .unwrap()
            .file_type()
            .is_socket()
    );

    // A directory the phone deletes while it holds a special file on the laptop stays on the
    // laptop with the special file (and comes back on the phone, empty), as a directory
    // the other side added to; the synced file in it goes.
    fs::remove_dir_all(phone.path("d")).unwrap();
    wait_for(&both, QUIET, "d/file.txt deleted on the laptop", || {
        fs::symlink_metadata(laptop.path("d/file.txt")).is_err()
    });
    wait_quiet(&both, QUIET);
    assert!(
        fs::symlink_metadata(laptop.path("d/inner-pipe"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    wait_for(&both, QUIET, "d back on the phone", || {
        phone.path("d").is_dir()
    });
    assert_eq!(fs::read_dir(phone.path("d")).unwrap().count(), 0);

    // Renaming the directory on the laptop moves the special file with it; the phone sees
    // the rename of the (empty, there) directory.
    fs::rename(laptop.path("d"), laptop.path("e")).unwrap();
    wait_for(&both, QUIET, "e on the phone", || phone.path("e").is_dir());
    wait_quiet(&both, QUIET);
    assert!(!phone.path("d").exists());
    assert!(
        fs::symlink_metadata(laptop.path("e/inner-pipe"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert_eq!(fs::read_dir(phone.path("e")).unwrap().count(), 0);
    assert_eq!(laptop.status()["local_only_special"], 4);
    // Everything but the special files is the same on both.
    let strip = |l: std::collections::BTreeMap<String, String>| {
        l.into_iter()
            .filter(|(_, line)| {
                !["fifo ", "socket ", "chardev ", "blockdev "]
                    .iter()
                    .any(|k| line.starts_with(k))
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    assert_eq!(
        strip(listing(&laptop.mountpoint)),
        strip(listing(&phone.mountpoint))
    );
}
