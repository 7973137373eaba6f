//! Test harness: real `deltadrive mount` processes in temporary directories, always unmounted.

#![allow(dead_code)]

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub mod sync;

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_deltadrive")
}

/// Runs `deltadrive ARGS...` and returns its output.
pub fn deltadrive(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run deltadrive")
}

/// A mounted drive: a mountpoint and a state directory in a temporary directory.
/// Dropping it unmounts (lazily if the daemon is dead), also when the test panicked.
pub struct Mount {
    pub dir: tempfile::TempDir,
    pub mountpoint: PathBuf,
    pub state: PathBuf,
    mounted: bool,
    extra: Vec<String>,
}

impl Mount {
    /// Mounts a new, empty drive.
    pub fn new() -> Mount {
        Mount::with_args(&[])
    }

    /// Mounts a new drive with extra `mount` arguments (e.g. `--server`).
    pub fn with_args(extra: &[&str]) -> Mount {
        let dir = tempfile::Builder::new()
            .prefix("dd-test")
            .tempdir()
            .expect("tempdir");
        // Other users (the EACCES tests run as nobody) must be able to reach the mountpoint.
        chmod(dir.path(), 0o755);
        let mountpoint = dir.path().join("mnt");
        let state = dir.path().join("state");
        std::fs::create_dir(&mountpoint).expect("mkdir mountpoint");
        let mut m = Mount {
            dir,
            mountpoint,
            state,
            mounted: false,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        m.mount();
        m
    }

    /// Mounts again (after `umount` or a crash).
    pub fn mount(&mut self) {
        let out = self.try_mount();
        assert!(
            out.status.success(),
            "mount failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The `mount` arguments used from now on (after the mountpoint and `--state`).
    pub fn set_args(&mut self, extra: &[&str]) {
        self.extra = extra.iter().map(|s| s.to_string()).collect();
    }

    /// Runs `deltadrive mount` with this mount's arguments and returns its output; the
    /// drive counts as mounted when it succeeded.
    pub fn try_mount(&mut self) -> Output {
        let out = Command::new(bin())
            .arg("mount")
            .arg(&self.mountpoint)
            .arg("--state")
            .arg(&self.state)
            .args(&self.extra)
            .output()
            .expect("run deltadrive mount");
        if out.status.success() {
            self.mounted = true;
        }
        out
    }

    /// Unmounts with `deltadrive umount` and asserts it worked.
    pub fn umount(&mut self) {
        let out = deltadrive(&["umount", self.mountpoint.to_str().expect("utf8 path")]);
        assert!(
            out.status.success(),
            "umount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.mounted = false;
    }

    /// Runs `deltadrive umount ARGS... MOUNTPOINT` (e.g. `--force`) and returns its output;
    /// the mount counts as unmounted when it succeeded.
    pub fn umount_with(&mut self, args: &[&str]) -> Output {
        let out = Command::new(bin())
            .arg("umount")
            .args(args)
            .arg(&self.mountpoint)
            .output()
            .expect("run deltadrive umount");
        if out.status.success() {
            self.mounted = false;
        }
        out
    }

    /// A path inside the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mountpoint.join(rel)
    }

    /// The daemon's pid, from its lock file.
    pub fn daemon_pid(&self) -> i32 {
        let text = std::fs::read_to_string(self.state.join("daemon.lock")).expect("lock file");
        text.trim().parse().expect("pid")
    }

    /// kill -9 the daemon and wait until it is gone; the mount stays, dead.
    pub fn kill_daemon(&self) {
        let pid = self.daemon_pid();
        // SAFETY: sending SIGKILL to the daemon this test started.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        wait_until(
            Duration::from_secs(10),
            // SAFETY: signal 0 only probes whether the process exists.
            || unsafe { libc::kill(pid, 0) } != 0,
        );
    }

    /// `deltadrive status --json` of this mount.
    pub fn status(&self) -> serde_json::Value {
        let out = deltadrive(&[
            "status",
            self.mountpoint.to_str().expect("utf8"),
            "--state",
            self.state.to_str().expect("utf8"),
            "--json",
        ]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status json")
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.join("daemon.log")).unwrap_or_default()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        let mp = self.mountpoint.to_string_lossy().into_owned();
        let ok = deltadrive(&["umount", &mp]).status.success();
        if !ok {
            let _ = Command::new("fusermount3").args(["-u", "-z", &mp]).status();
        }
    }
}

/// Whether something is mounted at `path` now (field 5 of /proc/self/mountinfo, whose
/// octal escapes such as `\040` for a space are undone).
pub fn is_mounted(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let table = std::fs::read("/proc/self/mountinfo").unwrap_or_default();
    let want = path.as_os_str().as_bytes();
    table.split(|b| *b == b'\n').any(|line| {
        line.split(|b| *b == b' ')
            .nth(4)
            .is_some_and(|field| unescape_octal(field) == want)
    })
}

fn unescape_octal(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let digits = field.get(i + 1..i + 4);
        match digits {
            Some(d) if field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)) => {
                out.push(
                    d.iter()
                        .fold(0u8, |acc, c| acc.wrapping_mul(8) + (c - b'0')),
                );
                i += 4;
            }
            _ => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

/// Unmounts a mountpoint on drop if it is still mounted (for tests that mount by hand).
pub struct UnmountGuard(pub PathBuf);

impl Drop for UnmountGuard {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = Command::new("fusermount3").arg("-uz").arg(&self.0).status();
        }
    }
}

/// Runs `sh -c CMD` in `dir` as nobody (uid and gid 65534, no supplementary groups).
pub fn sh_as_nobody(dir: &Path, cmd: &str) -> Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
            cmd,
        ])
        .current_dir(dir)
        .output()
        .expect("run setpriv")
}

/// Polls `cond` until it holds or `timeout` passes (then panics).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// chmod without following the expectation that it succeeds silently.
pub fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn cstr(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("no NUL in path")
}

/// The errno of the last failed libc call.
pub fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// lstat(2).
pub fn lstat(path: &Path) -> libc::stat {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid C string and a pointer to writable stat memory.
    let rc = unsafe { libc::lstat(cstr(path).as_ptr(), st.as_mut_ptr()) };
    assert_eq!(rc, 0, "lstat {}: errno {}", path.display(), last_errno());
    // SAFETY: lstat succeeded and filled it.
    unsafe { st.assume_init() }
}

/// renameat2(2); Ok or the errno.
pub fn renameat2(from: &Path, to: &Path, flags: u32) -> Result<(), i32> {
    // SAFETY: valid C strings; AT_FDCWD for relative resolution.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cstr(from).as_ptr(),
            libc::AT_FDCWD,
            cstr(to).as_ptr(),
            flags,
        )
    };
    if rc == 0 { Ok(()) } else { Err(last_errno()) }
}

/// setxattr(2) without following symlinks (lsetxattr); Ok or the errno.
pub fn setxattr(path: &Path, name: &str, value: &[u8], flags: i32) -> Result<(), i32> {
    let n = CString::new(name).expect("name");
    // SAFETY: valid C strings and a value buffer of the given length.
    let rc = unsafe {
        libc::lsetxattr(
            cstr(path).as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    if rc == 0 { Ok(()) } else { Err(last_errno()) }
}

/// getxattr(2) (lgetxattr) with a buffer of `size`; the value or the errno.
pub fn getxattr(path: &Path, name: &str, size: usize) -> Result<Vec<u8>, i32> {
    let n = CString::new(name).expect("name");
    let mut buf = vec![0u8; size];
    // SAFETY: valid C strings and a writable buffer of `size` bytes.
    let rc = unsafe {
        libc::lgetxattr(
            cstr(path).as_ptr(),
            n.as_ptr(),
            buf.as_mut_ptr().cast(),
            size,
        )
    };
    if rc < 0 {
        return Err(last_errno());
    }
    buf.truncate(if size == 0 { 0 } else { rc as usize });
    if size == 0 {
        return Ok(vec![0; rc as usize]);
    }
    Ok(buf)
}

/// listxattr(2) (llistxattr): the names.
pub fn listxattr(path: &Path) -> Vec<String> {
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid C string and a writable buffer.
    let rc = unsafe { libc::llistxattr(cstr(path).as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(rc >= 0, "listxattr: errno {}", last_errno());
    buf.truncate(rc as usize);
    buf.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// removexattr(2) (lremovexattr); Ok or the errno.
pub fn removexattr(path: &Path, name: &str) -> Result<(), i32> {
    let n = CString::new(name).expect("name");
    // SAFETY: valid C strings.
    let rc = unsafe { libc::lremovexattr(cstr(path).as_ptr(), n.as_ptr()) };
    if rc == 0 { Ok(()) } else { Err(last_errno()) }
}

/// The errno of an io::Error.
pub fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

/// Runs a shell command, asserting success; returns stdout.
pub fn sh(cmd: &str, cwd: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(cwd)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A deterministic pseudo-random byte stream (splitmix64), so tests never measure zeros.
fn rc(r: libc::c_int) -> Result<(), i32> {
    if r == 0 { Ok(()) } else { Err(last_errno()) }
}

/// truncate(2) by path.
pub fn truncate(path: &Path, len: i64) -> Result<(), i32> {
    // SAFETY: valid C string.
    rc(unsafe { libc::truncate(cstr(path).as_ptr(), len) })
}

/// utimensat(2) with (atime, mtime); each may be UTIME_NOW or UTIME_OMIT in tv_nsec.
pub fn utimensat(path: &Path, times: [libc::timespec; 2]) -> Result<(), i32> {
    // SAFETY: valid C string and an array of two timespecs.
    rc(unsafe { libc::utimensat(libc::AT_FDCWD, cstr(path).as_ptr(), times.as_ptr(), 0) })
}

/// fallocate(2) on an open file.
pub fn fallocate(file: &std::fs::File, mode: i32, offset: i64, len: i64) -> Result<(), i32> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is valid for the borrow; plain integers otherwise.
    rc(unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) })
}

/// mknod(2).
pub fn mknod(path: &Path, mode: libc::mode_t, dev: libc::dev_t) -> Result<(), i32> {
    // SAFETY: valid C string.
    rc(unsafe { libc::mknod(cstr(path).as_ptr(), mode, dev) })
}

/// mkfifo(3).
pub fn mkfifo(path: &Path, mode: libc::mode_t) -> Result<(), i32> {
    // SAFETY: valid C string.
    rc(unsafe { libc::mkfifo(cstr(path).as_ptr(), mode) })
}

/// statvfs(3).
pub fn statvfs(path: &Path) -> libc::statvfs {
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: valid C string and writable statvfs memory.
    let r = unsafe { libc::statvfs(cstr(path).as_ptr(), st.as_mut_ptr()) };
    assert_eq!(r, 0, "statvfs: errno {}", last_errno());
    // SAFETY: statvfs succeeded and filled it.
    unsafe { st.assume_init() }
}

/// Deterministic pseudo-random bytes, so tests never measure zeros.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    deltadrive::chunking::seeded::seeded_bytes(len, seed)
}
