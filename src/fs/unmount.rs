//! Unmounting a drive: umount2 when we may, else through the setuid fusermount helper.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Why an unmount did not happen.
#[derive(Debug, thiserror::Error)]
pub enum UnmountError {
    /// A program holds a file or a directory in the mount.
    #[error("{} is busy", .0.display())]
    Busy(PathBuf),
    /// Anything else: not mounted, not allowed, no fusermount.
    #[error("cannot unmount {}: {reason}", path.display())]
    Failed {
        /// The mountpoint.
        path: PathBuf,
        /// What the kernel or fusermount said.
        reason: String,
    },
}

/// Whether to wait for the mount to be idle or to detach it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detach {
    /// Refuse (busy) while programs use the mount.
    WhenIdle,
    /// Leave the namespace now; open files keep working until closed (umount -l).
    Lazily,
}

/// Unmounts `mountpoint`.
pub fn unmount(mountpoint: &Path, detach: Detach) -> Result<(), UnmountError> {
    let failed = |reason: String| UnmountError::Failed {
        path: mountpoint.to_path_buf(),
        reason,
    };
    let path = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| failed("the path holds a NUL byte".into()))?;
    let flags = match detach {
        Detach::WhenIdle => 0,
        Detach::Lazily => libc::MNT_DETACH,
    };
    // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
    if unsafe { libc::umount2(path.as_ptr(), flags) } == 0 {
        return Ok(());
    }
    let direct = io::Error::last_os_error();
    match direct.raw_os_error() {
        Some(libc::EBUSY) => return Err(UnmountError::Busy(mountpoint.to_path_buf())),
        // Not root: the setuid helper may unmount what this user mounted.
        Some(libc::EPERM) => {}
        _ => return Err(failed(direct.to_string())),
    }
    let args: &[&str] = match detach {
        Detach::WhenIdle => &["-u"],
        Detach::Lazily => &["-u", "-z"],
    };
    let out = Command::new("fusermount3")
        .args(args)
        .arg(mountpoint)
        .output()
        .or_else(|_| {
            Command::new("fusermount")
                .args(args)
                .arg(mountpoint)
                .output()
        })
        .map_err(|e| failed(format!("cannot run fusermount3 (install fuse3): {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if said.contains("busy") {
        Err(UnmountError::Busy(mountpoint.to_path_buf()))
    } else {
        Err(failed(said))
    }
}

/// Unmounts `mountpoint` when idle, retrying while it is busy for up to `grace`: a program
/// that just closed a file, or a forked child between fork and exec holding a copy of a
/// descriptor, lets go within moments.
pub fn unmount_within(mountpoint: &Path, grace: Duration) -> Result<(), UnmountError> {
    let start = Instant::now();
    loop {
        match unmount(mountpoint, Detach::WhenIdle) {
            Err(UnmountError::Busy(_)) if start.elapsed() < grace => {
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}
