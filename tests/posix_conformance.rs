//! POSIX conformance against the local disk: each syscall of pjdfstest's list (chmod, chown,
//! link, mkdir, mkfifo, mknod, open, rename, rmdir, symlink, truncate, unlink, utimensat,
//! ftruncate, posix_fallocate) on every file type (regular, directory, FIFO, block and
//! character device, socket, symlink), as root and as an unprivileged user (setuid in a forked
//! child), on a real mount and on a plain directory of the local disk in the same run. Every
//! result (errno) and the state it leaves (type, mode, links, owner, size, device, target,
//! times where set) must be the same on both.

mod common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The unprivileged user the child becomes (nobody on Debian).
const NOBODY: u32 = 65534;

/// The (atime, mtime) the `*_times` operations set: seconds and nanoseconds.
const TIMES: [(i64, i64); 2] = [(1_000_000_000, 5), (1_100_000_000, 7)];

/// The file types under test.
const TYPES: [&str; 7] = [
    "regular", "dir", "fifo", "block", "char", "socket", "symlink",
];

/// A path as a C string (made before any fork: the child must not allocate).
fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL in a test path")
}

/// The errno of the last failed call, or 0 when `ret` says it worked.
fn err(ret: libc::c_int) -> i32 {
    if ret == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }
}

/// The paths one case uses, all made before the fork.
struct Paths {
    /// The object under test.
    obj: CString,
    /// A regular file beside it.
    t: CString,
    /// An empty directory beside it.
    d: CString,
    /// A new name beside it.
    n: CString,
    /// A name inside the object (for directories, a new entry).
    inside: CString,
    /// A second inside name.
    inside2: CString,
}

/// The operations: each runs in the (maybe unprivileged) child and returns an errno (0 for
/// success; for two-step operations 1000 + the errno of a failed first step).
const OPS: [&str; 33] = [
    "chmod_0600",
    "chmod_04755",
    "chown_nobody",
    "chown_group_root",
    "lchown_nobody",
    "link_obj_to_new",
    "link_file_onto_obj",
    "mkdir_obj",
    "mkdir_inside",
    "mkfifo_obj",
    "mkfifo_inside",
    "mknod_chr_inside",
    "mknod_fifo_inside",
    "open_rdonly",
    "open_wronly",
    "open_rdwr",
    "open_directory",
    "open_creat_excl",
    "open_trunc",
    "open_nofollow",
    "rename_obj_to_new",
    "rename_obj_over_file",
    "rename_file_over_obj",
    "rename_obj_over_dir",
    "rmdir_obj",
    "symlink_onto_obj",
    "truncate_10",
    "unlink_obj",
    "utimensat_times",
    "utimensat_now",
    "utimensat_nofollow_times",
    "ftruncate_10",
    "posix_fallocate_100",
];

/// Runs operation `op` on `p`. Only async-signal-safe calls: it runs in a forked child of a
/// multithreaded process.
fn run_op(op: &str, p: &Paths) -> i32 {
    // SAFETY: every call gets valid NUL-terminated paths and valid pointers; fds opened here
    // are closed here.
    unsafe {
        let nb = libc::O_NONBLOCK;
        let open = |flags: libc::c_int| {
            let fd = libc::open(p.obj.as_ptr(), flags, 0o644);
            if fd < 0 {
                return err(-1);
            }
            libc::close(fd);
            0
        };
        let times = TIMES.map(|(tv_sec, tv_nsec)| libc::timespec { tv_sec, tv_nsec });
        let with_fd = |f: &dyn Fn(libc::c_int) -> i32| {
            let mut fd = libc::open(p.obj.as_ptr(), libc::O_RDWR | nb);
            if fd < 0 && *libc::__errno_location() == libc::EISDIR {
                fd = libc::open(p.obj.as_ptr(), libc::O_RDONLY | nb);
            }
            if fd < 0 {
                return 1000 + err(-1);
            }
            let r = f(fd);
            libc::close(fd);
            r
        };
        match op {
            "chmod_0600" => err(libc::chmod(p.obj.as_ptr(), 0o600)),
            "chmod_04755" => err(libc::chmod(p.obj.as_ptr(), 0o4755)),
            "chown_nobody" => err(libc::chown(p.obj.as_ptr(), NOBODY, NOBODY)),
            "chown_group_root" => err(libc::chown(p.obj.as_ptr(), u32::MAX, 0)),
            "lchown_nobody" => err(libc::lchown(p.obj.as_ptr(), NOBODY, NOBODY)),
            "link_obj_to_new" => err(libc::link(p.obj.as_ptr(), p.n.as_ptr())),
            "link_file_onto_obj" => err(libc::link(p.t.as_ptr(), p.obj.as_ptr())),
            "mkdir_obj" => err(libc::mkdir(p.obj.as_ptr(), 0o755)),
            "mkdir_inside" => err(libc::mkdir(p.inside.as_ptr(), 0o755)),
            "mkfifo_obj" => err(libc::mkfifo(p.obj.as_ptr(), 0o644)),
            "mkfifo_inside" => err(libc::mkfifo(p.inside.as_ptr(), 0o644)),
            "mknod_chr_inside" => err(libc::mknod(
                p.inside.as_ptr(),
                libc::S_IFCHR | 0o644,
                libc::makedev(1, 3),
            )),
            "mknod_fifo_inside" => err(libc::mknod(p.inside2.as_ptr(), libc::S_IFIFO | 0o600, 0)),
            "open_rdonly" => open(libc::O_RDONLY | nb),
            "open_wronly" => open(libc::O_WRONLY | nb),
            "open_rdwr" => open(libc::O_RDWR | nb),
            "open_directory" => open(libc::O_RDONLY | libc::O_DIRECTORY | nb),
            "open_creat_excl" => open(libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | nb),
            "open_trunc" => open(libc::O_WRONLY | libc::O_TRUNC | nb),
            "open_nofollow" => open(libc::O_RDONLY | libc::O_NOFOLLOW | nb),
            "rename_obj_to_new" => err(libc::rename(p.obj.as_ptr(), p.n.as_ptr())),
            "rename_obj_over_file" => err(libc::rename(p.obj.as_ptr(), p.t.as_ptr())),
            "rename_file_over_obj" => err(libc::rename(p.t.as_ptr(), p.obj.as_ptr())),
            "rename_obj_over_dir" => err(libc::rename(p.obj.as_ptr(), p.d.as_ptr())),
            "rmdir_obj" => err(libc::rmdir(p.obj.as_ptr())),
            "symlink_onto_obj" => err(libc::symlink(p.t.as_ptr(), p.obj.as_ptr())),
            "truncate_10" => err(libc::truncate(p.obj.as_ptr(), 10)),
            "unlink_obj" => err(libc::unlink(p.obj.as_ptr())),
            "utimensat_times" => err(libc::utimensat(
                libc::AT_FDCWD,
                p.obj.as_ptr(),
                times.as_ptr(),
                0,
            )),
            "utimensat_now" => err(libc::utimensat(
                libc::AT_FDCWD,
                p.obj.as_ptr(),
                std::ptr::null(),
                0,
            )),
            "utimensat_nofollow_times" => err(libc::utimensat(
                libc::AT_FDCWD,
                p.obj.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )),
            "ftruncate_10" => with_fd(&|fd| err(libc::ftruncate(fd, 10))),
            "posix_fallocate_100" => with_fd(&|fd| libc::posix_fallocate(fd, 0, 100)),
            _ => -1,
        }
    }
}

/// Makes the object of type `kind` at `obj` (as root); a symlink points at the regular file
/// `t` beside it.
fn make_object(kind: &str, obj: &Path) {
    let co = c(obj);
    // SAFETY: valid NUL-terminated paths.
    let ret = unsafe {
        match kind {
            "regular" => {
                std::fs::write(obj, b"0123456789abcdef").expect("write obj");
                0
            }
            "dir" => libc::mkdir(co.as_ptr(), 0o755),
            "fifo" => libc::mkfifo(co.as_ptr(), 0o644),
            "block" => libc::mknod(co.as_ptr(), libc::S_IFBLK | 0o644, libc::makedev(7, 0)),
            "char" => libc::mknod(co.as_ptr(), libc::S_IFCHR | 0o644, libc::makedev(1, 3)),
            "socket" => {
                let l = std::os::unix::net::UnixListener::bind(obj).expect("bind obj");
                drop(l);
                0
            }
            // Relative, so the target reads the same on both filesystems.
            "symlink" => libc::symlink(c"t".as_ptr(), co.as_ptr()),
            _ => -1,
        }
    };
    assert_eq!(
        ret,
        0,
        "making a {kind} at {}: {}",
        obj.display(),
        std::io::Error::last_os_error()
    );
    if kind != "symlink" {
        let mode = if kind == "dir" { 0o755 } else { 0o644 };
        common::chmod(obj, mode);
    }
}

/// What a case left behind: every entry of its directory (and of the object, if a
/// directory), with the fields both filesystems must agree on. The top level is stat'ed
/// before the object's directory is read, which would touch its atime.
fn summary(dir: &Path, op: &str) -> Vec<String> {
    let list = |d: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(d)
            .expect("read dir")
            .map(|e| e.expect("entry").path())
            .collect();
        v.sort();
        v
    };
    let mut out: Vec<String> = list(dir).iter().map(|p| describe(dir, p, op)).collect();
    let obj = dir.join("obj");
    if !obj.is_symlink() && obj.is_dir() {
        out.extend(list(&obj).iter().map(|p| describe(dir, p, op)));
    }
    out
}

/// One entry as [`summary`] shows it. Times only where an operation set them, and then only
/// whether they hold the values set (other times are the moment the case ran).
fn describe(dir: &Path, path: &Path, op: &str) -> String {
    let st = common::lstat(path);
    let fmt = st.st_mode & libc::S_IFMT;
    let rel = path.strip_prefix(dir).expect("inside").display();
    let mut line = format!(
        "{rel}: type={:o} mode={:o} nlink={} uid={} gid={}",
        fmt >> 12,
        st.st_mode & 0o7777,
        st.st_nlink,
        st.st_uid,
        st.st_gid
    );
    if fmt == libc::S_IFREG || fmt == libc::S_IFLNK {
        line += &format!(" size={}", st.st_size);
    }
    if fmt == libc::S_IFCHR || fmt == libc::S_IFBLK {
        line += &format!(" rdev={:x}", st.st_rdev);
    }
    if fmt == libc::S_IFLNK {
        let target = std::fs::read_link(path).expect("readlink");
        line += &format!(" target={}", target.display());
    }
    if op.ends_with("_times") {
        let set = |s: i64, ns: i64, want: (i64, i64)| (s, ns) == want;
        line += &format!(
            " atime_set={} mtime_set={}",
            set(st.st_atime, st.st_atime_nsec, TIMES[0]),
            set(st.st_mtime, st.st_mtime_nsec, TIMES[1])
        );
    }
    line
}

/// Runs every case under `root`: for each type and operation a fresh directory with the
/// object, a regular file `t` and an empty directory `d`; the operation runs in a forked
/// child as `uid` (root or nobody). Returns one line per case: its errno and what it left.
fn run_all(root: &Path, uid: u32) -> Vec<String> {
    let mut lines = Vec::new();
    for kind in TYPES {
        for op in OPS {
            let dir = root.join(format!("{kind}-{op}-{uid}"));
            std::fs::create_dir(&dir).expect("case dir");
            // Open to the unprivileged user, as a shared directory would be.
            common::chmod(&dir, 0o777);
            let t = dir.join("t");
            std::fs::write(&t, b"target file").expect("t");
            common::chmod(&t, 0o644);
            std::fs::create_dir(dir.join("d")).expect("d");
            common::chmod(&dir.join("d"), 0o755);
            let obj = dir.join("obj");
            make_object(kind, &obj);
            let paths = Paths {
                obj: c(&obj),
                t: c(&t),
                d: c(&dir.join("d")),
                n: c(&dir.join("n")),
                inside: c(&obj.join("x")),
                inside2: c(&obj.join("y")),
            };
            let errno = in_child(uid, || run_op(op, &paths));
            let state = summary(&dir, op).join("; ");
            lines.push(format!("{kind} {op} uid={uid}: errno={errno}; {state}"));
        }
    }
    lines
}

/// Runs `f` in a forked child as `uid` (groups cleared, gid the same) and returns its result.
/// `f` must only make async-signal-safe calls: the test process has other threads.
fn in_child(uid: u32, f: impl Fn() -> i32) -> i32 {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    // SAFETY: the child only makes async-signal-safe calls (setgroups, setgid, setuid, the
    // operation's syscalls, write, _exit) and never returns into Rust's runtime.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        // SAFETY: async-signal-safe calls on values made before the fork.
        unsafe {
            let ok = uid == 0
                || (libc::setgroups(0, std::ptr::null()) == 0
                    && libc::setgid(uid) == 0
                    && libc::setuid(uid) == 0);
            let r: i32 = if ok { f() } else { -2 };
            let bytes = r.to_ne_bytes();
            libc::write(fds[1], bytes.as_ptr().cast(), bytes.len());
            libc::_exit(0);
        }
    }
    let mut buf = [0u8; 4];
    // SAFETY: valid fds from pipe(); buf is 4 bytes.
    unsafe {
        libc::close(fds[1]);
        let n = libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len());
        libc::close(fds[0]);
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
        assert_eq!(n, 4, "the child reported nothing (status {status})");
    }
    let r = i32::from_ne_bytes(buf);
    assert_ne!(r, -2, "the child could not become uid {uid}");
    r
}

#[test]
fn every_call_on_every_file_type_matches_the_local_disk() {
    let drive = common::Mount::new();
    let local = tempfile::Builder::new()
        .prefix("dd-conformance")
        .tempdir_in("/var/tmp")
        .expect("a directory on the local disk");
    common::chmod(local.path(), 0o755);
    let mut differences = Vec::new();
    let mut outcomes = std::collections::BTreeSet::new();
    for uid in [0, NOBODY] {
        let on_drive = run_all(&drive.mountpoint, uid);
        let on_disk = run_all(local.path(), uid);
        assert_eq!(on_drive.len(), on_disk.len());
        for (d, l) in on_drive.iter().zip(&on_disk) {
            if d != l {
                differences.push(format!("drive: {d}\n local: {l}"));
            }
            let errno = l.split("errno=").nth(1).and_then(|s| s.split(';').next());
            outcomes.insert(errno.unwrap_or("?").to_owned());
        }
    }
    // The cases exercise more than one outcome (success and a range of errors).
    assert!(outcomes.len() >= 8, "too few outcomes: {outcomes:?}");
    assert!(
        differences.is_empty(),
        "{} of {} cases differ from the local disk:\n{}",
        differences.len(),
        2 * TYPES.len() * OPS.len(),
        differences.join("\n")
    );
}
