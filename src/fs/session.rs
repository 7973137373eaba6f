//! Mounting a drive and serving it until it is unmounted or told to stop.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;

use fuser::{Config, INodeNo, MountOption, Session, SessionACL};

use super::DeltaFs;
use super::unmount::{Detach, UnmountError, unmount, unmount_within};
use crate::drive::{Drive, Ino, KernelCache};

/// Tells the kernel through fuser's notifier that its cached entries or inodes went stale.
#[derive(Debug)]
struct Invalidator(fuser::Notifier);

impl KernelCache for Invalidator {
    fn invalidate_entry(&self, parent: Ino, name: &[u8]) {
        use std::os::unix::ffi::OsStrExt;
        // ENOENT means the kernel had nothing cached: nothing to invalidate.
        if let Err(e) = self
            .0
            .inval_entry(INodeNo(parent), std::ffi::OsStr::from_bytes(name))
            && e.raw_os_error() != Some(libc::ENOENT)
        {
            tracing::debug!(parent, "entry invalidation failed: {e}");
        }
    }

    fn invalidate_inode(&self, ino: Ino) {
        if let Err(e) = self.0.inval_inode(INodeNo(ino), 0, 0)
            && e.raw_os_error() != Some(libc::ENOENT)
        {
            tracing::debug!(ino, "inode invalidation failed: {e}");
        }
    }
}

/// Request-serving threads: each reads /dev/fuse through its own cloned descriptor.
pub const THREADS: usize = 4;

/// Why serving stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// The mount went away (umount from outside).
    Unmounted,
    /// We were asked to stop and unmounted ourselves.
    Requested,
}

/// Mounts `drive` at `mountpoint`, calls `ready` once the mount answers requests, then serves
/// until it is unmounted from outside or a message arrives on `stop`. The drive is flushed
/// and marked clean when the session ends.
pub fn serve(
    drive: Arc<Drive>,
    mountpoint: &Path,
    stop: mpsc::Receiver<()>,
    ready: impl FnOnce() -> io::Result<()>,
) -> io::Result<Stop> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("deltadrive".into()),
        MountOption::Subtype("deltadrive".into()),
        MountOption::DefaultPermissions,
        // Device nodes made in the drive open as devices when root mounts it, as on a local
        // disk (only root may make them); fusermount forces nodev on anyone else's mount.
        if root {
            MountOption::Dev
        } else {
            MountOption::NoDev
        },
        MountOption::NoSuid,
    ];
    // Other users may use the drive when we are allowed to offer that; the kernel still
    // checks mode bits for them (default_permissions).
    config.acl = if root {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(THREADS);
    config.clone_fd = true;

    let mut session = Session::new(DeltaFs::new(Arc::clone(&drive)), mountpoint, &config)?;
    drive.set_kernel_cache(Arc::new(Invalidator(session.notifier())));
    let mut unmounter = session.unmount_callable();
    let (ended_tx, ended_rx) = mpsc::channel();
    let runner = std::thread::Builder::new()
        .name("fuse-session".into())
        .spawn(move || {
            let result = session.run();
            let _ = ended_tx.send(());
            result
        })?;
    // A stat of the root goes through the kernel to our threads: when it answers, so will
    // every program.
    std::fs::metadata(mountpoint)?;
    if let Err(e) = ready() {
        // A part the user asked for did not start: the mount goes again, and the caller
        // says why.
        let _ = unmount_when_idle(mountpoint);
        let _ = unmounter.unmount();
        let _ = ended_rx.recv_timeout(std::time::Duration::from_secs(5));
        return Err(e);
    }

    let how = loop {
        if ended_rx.try_recv().is_ok() {
            break Stop::Unmounted;
        }
        match stop.recv_timeout(std::time::Duration::from_millis(200)) {
            Ok(()) => {
                unmount_when_idle(mountpoint)?;
                // fuser unmounts the path again when the session ends unless its mount was
                // taken; by then (a lazy detach waits for open files) another drive may be
                // mounted there. Take it now, while nothing is: its umount finds nothing.
                let _ = unmounter.unmount();
                break Stop::Requested;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = ended_rx.recv();
                break Stop::Unmounted;
            }
        }
    };
    match runner.join() {
        // After a lazy detach the kernel may end the connection as aborted once the last
        // file closes: the session ended all the same (the drive was flushed by `destroy`).
        Ok(Err(e)) if e.raw_os_error() == Some(libc::ECONNABORTED) => {
            tracing::debug!("the kernel ended the FUSE connection: {e}");
        }
        Ok(result) => result?,
        Err(_) => return Err(io::Error::other("FUSE session thread panicked")),
    }
    Ok(how)
}

/// How long a requested stop retries an unmount refused as busy before detaching lazily.
const BUSY_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Unmounts on a requested stop. A mount still busy after a moment is detached lazily: it
/// leaves the namespace at once, programs holding files keep using them, and the session
/// ends when the last one closes, so no write is cut off.
fn unmount_when_idle(mountpoint: &Path) -> io::Result<()> {
    match unmount_within(mountpoint, BUSY_GRACE) {
        Err(UnmountError::Busy(_)) => {
            tracing::warn!(
                mountpoint = %mountpoint.display(),
                "the drive is busy; detached it, serving open files until they close"
            );
            unmount(mountpoint, Detach::Lazily).map_err(io::Error::other)
        }
        other => other.map_err(io::Error::other),
    }
}
