//! The FUSE adapter: translates kernel requests into drive calls and drive errors into errnos.
//!
//! Every callback has one shape: convert the arguments, call the drive, reply with the
//! value or with the error's errno. Policy lives in `drive`, not here.

mod attr;
mod backing_ids;
mod session;
mod unmount;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::drive::{
    Caller, Drive, DriveError, Ino, IoMode, OpenMode, RenameMode, SetAttr, TimeSet, XattrFlags,
};
use backing_ids::BackingIds;

pub use attr::to_file_attr;
pub use session::{Stop, THREADS, serve};
pub use unmount::{Detach, UnmountError, unmount, unmount_within};

/// How long the kernel may cache attributes and entries (negative ones too). Changes that
/// arrive from elsewhere invalidate them through the notifier, so this can be long.
pub const CACHE_TTL: Duration = Duration::from_secs(3600);

/// Largest write the kernel may send in one request.
pub const MAX_WRITE: u32 = 1 << 20;

/// The filesystem handed to fuser: a thin shell around the drive.
#[derive(Debug)]
pub struct DeltaFs {
    drive: Arc<Drive>,
    /// The kernel accepted FUSE passthrough and we may register backing files.
    passthrough: AtomicBool,
    backing_ids: BackingIds,
}

impl DeltaFs {
    /// Serves `drive`.
    pub fn new(drive: Arc<Drive>) -> DeltaFs {
        DeltaFs {
            drive,
            passthrough: AtomicBool::new(false),
            backing_ids: BackingIds::default(),
        }
    }
}

fn errno(e: &DriveError) -> Errno {
    if let DriveError::Io(_) | DriveError::Store(_) = e {
        tracing::error!("{e}");
    }
    Errno::from_i32(e.errno())
}

fn ino(i: INodeNo) -> Ino {
    i.0
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(crate::drive::to_nanos(t)),
    }
}

fn reply_entry(reply: ReplyEntry, result: Result<crate::drive::Attr, DriveError>) {
    match result {
        Ok(attr) => reply.entry(&CACHE_TTL, &to_file_attr(&attr), Generation(0)),
        Err(e) => reply.error(errno(&e)),
    }
}

fn reply_attr(reply: ReplyAttr, result: Result<crate::drive::Attr, DriveError>) {
    match result {
        Ok(attr) => reply.attr(&CACHE_TTL, &to_file_attr(&attr)),
        Err(e) => reply.error(errno(&e)),
    }
}

fn reply_data(reply: ReplyData, result: Result<Vec<u8>, DriveError>) {
    match result {
        Ok(data) => reply.data(&data),
        Err(e) => reply.error(errno(&e)),
    }
}

fn reply_empty(reply: ReplyEmpty, result: Result<(), DriveError>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

fn reply_xattr(reply: ReplyXattr, size: u32, result: Result<Vec<u8>, DriveError>) {
    match result {
        Ok(data) => match u32::try_from(data.len()) {
            Ok(len) if size == 0 => reply.size(len),
            Ok(len) if len <= size => reply.data(&data),
            _ => reply.error(Errno::from_i32(libc::ERANGE)),
        },
        Err(e) => reply.error(errno(&e)),
    }
}

/// How the kernel caches a handle the drive serves, by its open flags.
///
/// Readers keep the page cache across opens: only this daemon changes content, and remote
/// changes invalidate it explicitly. A write-only handle never reads, so copying its writes
/// into the page cache (write-through) only spends a copy and fresh pages per byte written:
/// its writes go straight to us (the kernel drops cached pages they overwrite).
fn cached_open_flags(flags: i32) -> FopenFlags {
    if flags & libc::O_ACCMODE == libc::O_WRONLY {
        FopenFlags::FOPEN_DIRECT_IO
    } else {
        FopenFlags::FOPEN_KEEP_CACHE
    }
}

impl Filesystem for DeltaFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Passthrough (the kernel reads backing files itself) needs CAP_SYS_ADMIN to register
        // them, and excludes the writeback cache; without it, the writeback cache it is.
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let passthrough = root
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok();
        self.passthrough.store(passthrough, Ordering::Relaxed);
        if !passthrough
            && config
                .add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE)
                .is_err()
        {
            tracing::info!("kernel offers neither passthrough nor writeback caching");
        }
        tracing::info!(passthrough, "FUSE session configured");
        // Each capability is optional: an old kernel without one still mounts.
        for cap in [
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_ASYNC_DIO,
            // Also makes a direct write flush pages another handle dirtied through mmap.
            InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP,
        ] {
            if config.add_capabilities(cap).is_err() {
                tracing::info!(?cap, "kernel lacks FUSE capability");
            }
        }
        if let Err(max) = config.set_max_write(MAX_WRITE) {
            let _ = config.set_max_write(max);
        }
        if let Err(max) = config.set_max_readahead(MAX_WRITE) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(e) = self.drive.shutdown() {
            tracing::error!("flushing the drive at unmount failed: {e}");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.drive.lookup(ino(parent), name.as_bytes()) {
            // A negative entry (inode 0) lets the kernel cache "no such file" too.
            Err(DriveError::NotFound) => reply.entry(&CACHE_TTL, &attr::negative(), Generation(0)),
            other => reply_entry(reply, other),
        }
    }

    fn forget(&self, _req: &Request, i: INodeNo, nlookup: u64) {
        self.drive.forget(ino(i), nlookup);
    }

    fn getattr(&self, _req: &Request, i: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        reply_attr(reply, self.drive.getattr(ino(i)));
    }

    fn setattr(
        &self,
        req: &Request,
        i: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            perm: mode,
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
            ctime: ctime.map(crate::drive::to_nanos),
            // The kernel leaves dropping setuid/setgid on truncate to us (KILLPRIV_V2); it
            // would do so for any caller without CAP_FSETID, which we approximate by non-root.
            kill_suid: size.is_some() && req.uid() != 0,
        };
        reply_attr(reply, self.drive.setattr(ino(i), set, fh.map(|f| f.0)));
    }

    fn readlink(&self, _req: &Request, i: INodeNo, reply: ReplyData) {
        reply_data(reply, self.drive.readlink(ino(i)));
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        reply_entry(
            reply,
            self.drive.mknod(
                ino(parent),
                name.as_bytes(),
                mode & !umask,
                rdev,
                caller(req),
            ),
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        reply_entry(
            reply,
            self.drive
                .mkdir(ino(parent), name.as_bytes(), mode & !umask, caller(req)),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.drive.unlink(ino(parent), name.as_bytes()));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.drive.rmdir(ino(parent), name.as_bytes()));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        reply_entry(
            reply,
            self.drive.symlink(
                ino(parent),
                link_name.as_bytes(),
                target.as_os_str().as_bytes(),
                caller(req),
            ),
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mode = if flags.is_empty() {
            RenameMode::Replace
        } else if flags == RenameFlags::RENAME_NOREPLACE {
            RenameMode::NoReplace
        } else if flags == RenameFlags::RENAME_EXCHANGE {
            RenameMode::Exchange
        } else {
            // RENAME_WHITEOUT and combinations belong to overlay filesystems.
            return reply.error(Errno::EINVAL);
        };
        reply_empty(
            reply,
            self.drive.rename(
                ino(parent),
                name.as_bytes(),
                ino(newparent),
                newname.as_bytes(),
                mode,
            ),
        );
    }

    fn link(
        &self,
        _req: &Request,
        i: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply_entry(
            reply,
            self.drive.link(ino(i), ino(newparent), newname.as_bytes()),
        );
    }

    fn open(&self, _req: &Request, i: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mode = OpenMode {
            writable: flags.0 & libc::O_ACCMODE != libc::O_RDONLY,
            passthrough_available: self.passthrough.load(Ordering::Relaxed),
        };
        let opened = match self.drive.open_file(ino(i), mode) {
            Ok(o) => o,
            Err(e) => return reply.error(errno(&e)),
        };
        let io = opened.mode;
        if io == IoMode::Passthrough {
            let id = self.drive.with_backing_file(opened.fh, |file| {
                self.backing_ids
                    .get_or_open(ino(i), opened.fh, || reply.open_backing(file))
            });
            match id {
                Ok(Ok(id)) => {
                    return reply.opened_passthrough(
                        FileHandle(opened.fh),
                        FopenFlags::empty(),
                        &id,
                    );
                }
                Ok(Err(e)) => {
                    tracing::warn!(
                        "kernel refused a backing file, serving reads ourselves from now on: {e}"
                    );
                    self.passthrough.store(false, Ordering::Relaxed);
                }
                Err(e) => return reply.error(errno(&e)),
            }
            if let Err(e) = self.drive.demote_passthrough(opened.fh) {
                return reply.error(errno(&e));
            }
        }
        reply.opened(FileHandle(opened.fh), cached_open_flags(flags.0))
    }

    fn read(
        &self,
        _req: &Request,
        _i: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        reply_data(reply, self.drive.read(fh.0, offset, size));
    }

    fn write(
        &self,
        _req: &Request,
        _i: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // With FUSE_HANDLE_KILLPRIV_V2 the kernel asks us to drop setuid/setgid on a write by
        // an unprivileged writer, instead of asking for security.capability before every write.
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        match self.drive.write(fh.0, offset, data, kill) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _i: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to do at close(2) that release does not do: ENOSYS tells the kernel to
        // stop sending FLUSH, saving a round trip on every close.
        let _ = fh;
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _i: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.backing_ids.release(fh.0);
        reply_empty(reply, self.drive.release(fh.0));
    }

    fn fsync(
        &self,
        _req: &Request,
        _i: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.drive.fsync(fh.0, datasync));
    }

    fn opendir(&self, _req: &Request, i: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.drive.opendir(ino(i)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _i: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.drive.readdir(fh.0) {
            Ok(e) => e,
            Err(e) => return reply.error(errno(&e)),
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (pos, entry) in entries.iter().enumerate().skip(start) {
            if reply.add(
                INodeNo(entry.ino),
                pos as u64 + 1,
                attr::file_type(entry.kind),
                OsStr::from_bytes(&entry.name),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _i: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let entries = match self.drive.readdir(fh.0) {
            Ok(e) => e,
            Err(e) => return reply.error(errno(&e)),
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        // Attributes in batches: one lock of the tree per batch, not per entry.
        let mut added = Vec::new();
        let listed: Vec<(usize, &crate::drive::DirEntry)> =
            entries.iter().enumerate().skip(start).collect();
        'outer: for batch in listed.chunks(128) {
            let inos: Vec<Ino> = batch.iter().map(|(_, e)| e.ino).collect();
            let attrs = self.drive.attrs(&inos);
            for ((pos, entry), attr) in batch.iter().zip(attrs) {
                let Some(attr) = attr else { continue };
                let full = reply.add(
                    INodeNo(entry.ino),
                    *pos as u64 + 1,
                    OsStr::from_bytes(&entry.name),
                    &CACHE_TTL,
                    &to_file_attr(&attr),
                    Generation(0),
                );
                if full {
                    break 'outer;
                }
                // The kernel takes a reference on every entry but "." and "..".
                if entry.name != b"." && entry.name != b".." {
                    added.push(entry.ino);
                }
            }
        }
        self.drive.add_lookups(&added);
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _i: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.drive.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _i: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.drive.sync_metadata());
    }

    fn statfs(&self, _req: &Request, _i: INodeNo, reply: ReplyStatfs) {
        match self.drive.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, 255, s.bsize,
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        i: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let result = XattrFlags::from_raw(flags)
            .and_then(|f| self.drive.setxattr(ino(i), name.as_bytes(), value, f));
        reply_empty(reply, result);
    }

    fn getxattr(&self, _req: &Request, i: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        reply_xattr(reply, size, self.drive.getxattr(ino(i), name.as_bytes()));
    }

    fn listxattr(&self, _req: &Request, i: INodeNo, size: u32, reply: ReplyXattr) {
        reply_xattr(reply, size, self.drive.listxattr(ino(i)));
    }

    fn removexattr(&self, _req: &Request, i: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.drive.removexattr(ino(i), name.as_bytes()));
    }

    fn access(&self, _req: &Request, i: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Mode bits are checked by the kernel (default_permissions); only existence is ours.
        reply_empty(reply, self.drive.getattr(ino(i)).map(|_| ()));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self
            .drive
            .create(ino(parent), name.as_bytes(), mode & !umask, caller(req))
        {
            Ok((attr, fh)) => reply.created(
                &CACHE_TTL,
                &to_file_attr(&attr),
                Generation(0),
                FileHandle(fh),
                cached_open_flags(flags),
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _i: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.drive.fallocate(fh.0, offset, length, mode));
    }
}
