//! The local drive: node tree and metadata in SQLite, content in backing files, dirty ranges.
//!
//! Every operation completes against local state. The tree lives in memory behind one
//! mutex; content I/O goes to backing files outside it; metadata is written behind by
//! the store's writer thread, and fsync waits for it.

mod apply;
mod backing;
mod error;
mod name;
mod node;
mod ranges;
pub mod state;
mod store;
mod tree;
mod xattr;

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

pub use apply::{NodeView, RemoteAttrs, RemoteContent};
pub use error::{DriveError, DriveResult};
pub use node::{Attr, Ino, IoMode, Kind, Nanos, ROOT_INO, from_nanos, to_nanos};
pub use ranges::RangeSet;
pub use state::StateDir;
pub use store::{Store, StoreError, Summary};
pub use tree::RenameMode;
pub use xattr::XattrFlags;

use backing::Backing;
use node::{Node, PendingVersion, now};
use store::NodeRow;
use tree::Tree;

/// Longest symlink target, as PATH_MAX.
const TARGET_MAX: usize = 4095;

/// Who is asking: the uid and gid of the calling process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// A timestamp to set: a given time or the current one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSet {
    /// The time of the call.
    Now,
    /// This time.
    At(Nanos),
}

/// Attribute changes requested by setattr; `None` leaves a field as it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// New permission bits.
    pub perm: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (truncate or extend).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<TimeSet>,
    /// New modification time.
    pub mtime: Option<TimeSet>,
    /// New change time (sent by the kernel with writeback caching).
    pub ctime: Option<Nanos>,
    /// Drop setuid/setgid (an unprivileged truncate).
    pub kill_suid: bool,
}

/// One directory entry as listed by readdir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// Inode of the entry.
    pub ino: Ino,
    /// Its kind.
    pub kind: Kind,
    /// Its name.
    pub name: Vec<u8>,
}

/// Filesystem-wide numbers for statfs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsStats {
    /// Total blocks of `bsize` bytes.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Free blocks for unprivileged users.
    pub bavail: u64,
    /// Inodes in use plus free.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Block size.
    pub bsize: u32,
}

/// A recorded local version, as handed to the sync engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedVersion {
    /// The file.
    pub ino: Ino,
    /// Its version number.
    pub number: u64,
    /// Bytes changed since the version the sync engine last took.
    pub ranges: RangeSet,
    /// Size when recorded.
    pub size: u64,
}

impl RecordedVersion {
    /// The version `p`, number `number`, of file `ino`.
    fn of(ino: Ino, number: u64, p: &PendingVersion) -> RecordedVersion {
        RecordedVersion {
            ino,
            number,
            ranges: p.ranges.clone(),
            size: p.size,
        }
    }
}

/// An open file: its backing file and whether this handle wrote.
#[derive(Debug)]
struct OpenFile {
    ino: Ino,
    file: File,
    wrote: AtomicBool,
    /// How the kernel does this handle's I/O.
    mode: IoMode,
    /// The handle may write.
    writable: bool,
}

impl OpenFile {
    /// Writes through a passthrough handle bypass the drive: not tracked by range.
    fn blind_writes(&self) -> bool {
        self.writable && self.mode == IoMode::Passthrough
    }
}

/// How a file is to be opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenMode {
    /// The handle may write.
    pub writable: bool,
    /// The caller can hand the backing file to the kernel (FUSE passthrough).
    pub passthrough_available: bool,
}

/// An opened file handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The handle.
    pub fh: u64,
    /// How the kernel should do this handle's I/O.
    pub mode: IoMode,
}

/// The local drive.
#[derive(Debug)]
pub struct Drive {
    state: StateDir,
    tree: Mutex<Tree>,
    store: Mutex<Option<Store>>,
    backing: Backing,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    dirs: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
    next_fh: AtomicU64,
    /// A backing file was created since the content directory was last fsynced.
    content_dir_unsynced: AtomicBool,
    /// Write requests served and the largest one, logged at unmount.
    writes: AtomicU64,
    largest_write: AtomicU64,
    /// Where to tell the kernel that cached entries or attributes went stale.
    kernel_cache: Mutex<Option<Arc<dyn KernelCache>>>,
    /// Called after every change to the tree (the sync engine's wake-up).
    on_change: OnceLock<Hook>,
    /// Content changes between their syscall and the dirty range that records them: while
    /// any is under way, a file open for writing may hold bytes no range names yet.
    content_ops: AtomicU64,
}

/// Counts one content change under way, from before its syscall until its range is recorded.
struct ContentOp<'a>(&'a AtomicU64);

impl<'a> ContentOp<'a> {
    fn start(count: &'a AtomicU64) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        ContentOp(count)
    }
}

impl Drop for ContentOp<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the drive calls after a change to its tree (cheap, non-blocking, any thread).
pub type ChangeHook = Arc<dyn Fn() + Send + Sync>;

struct Hook(ChangeHook);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChangeHook")
    }
}

/// The kernel's caches of entries, attributes and pages, as the drive sees them: changes
/// that do not come through the kernel (from other devices) must invalidate them.
/// Call it outside FUSE request handlers: the kernel may hold locks an invalidation waits for.
pub trait KernelCache: Send + Sync + std::fmt::Debug {
    /// The entry `name` in directory `parent` changed (created, removed or renamed).
    fn invalidate_entry(&self, parent: Ino, name: &[u8]);
    /// The attributes and cached content of `ino` changed.
    fn invalidate_inode(&self, ino: Ino);
}

/// Locks `m`, also after a holder panicked.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // State behind these locks stays consistent between statements; a panicked holder
    // does not make it unusable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drive {
    /// Opens the drive kept in `state` (creating it if new), recovering from a crash if the
    /// last session did not end cleanly. The root belongs to `owner`.
    pub fn open(state: StateDir, owner: Caller) -> DriveResult<Drive> {
        let backing = Backing::open(&state.content_dir())?;
        let (store, nodes, clean) = Store::open(&state.db_path(), (owner.uid, owner.gid))?;
        let mut tree = Tree::from_nodes(nodes);
        for ino in tree.orphans() {
            tracing::warn!(ino, "node with a missing parent: moving it to the root");
            let name = format!(".orphan-{ino}").into_bytes();
            if let Ok(n) = tree.get_mut(ino) {
                n.parent = ROOT_INO;
                n.name = name.into();
            }
            tree.touch(ino);
        }
        let orphaned = !tree.orphans().is_empty();
        if orphaned {
            // Re-link with the corrected parents.
            let nodes: HashMap<Ino, Node> = tree.iter().map(|(&i, n)| (i, n.clone())).collect();
            tree = Tree::from_nodes(nodes);
        }
        let drive = Drive {
            state,
            tree: Mutex::new(tree),
            store: Mutex::new(Some(store)),
            backing,
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            content_dir_unsynced: AtomicBool::new(false),
            writes: AtomicU64::new(0),
            largest_write: AtomicU64::new(0),
            kernel_cache: Mutex::new(None),
            on_change: OnceLock::new(),
            content_ops: AtomicU64::new(0),
        };
        if !clean {
            tracing::warn!("previous session did not end cleanly: checking backing files");
            drive.recover()?;
        }
        drive.record_all_dirty()?;
        drive.with_store(|s| s.barrier(true))?;
        Ok(drive)
    }

    /// After a crash: drop backing files no node owns, and treat every file whose backing
    /// file differs from its last recorded version as wholly dirty.
    fn recover(&self) -> DriveResult<()> {
        let mut tree = lock(&self.tree);
        let mut owned = std::collections::HashSet::new();
        let files: Vec<(Ino, crate::protocol::NodeId)> = tree
            .iter()
            .filter(|(_, n)| n.kind == Kind::File)
            .map(|(&i, n)| (i, n.backing_id()))
            .collect();
        for (ino, id) in files {
            owned.insert(id);
            let stat = self.backing.stat(id)?;
            let node = tree.get_mut(ino)?;
            let (len, mtime, blocks) = stat.unwrap_or((0, 0, 0));
            let stamp_matches = stat.is_some() && node.recorded_stamp() == Some((len, mtime));
            if !stamp_matches && (len > 0 || node.recorded_stamp().is_some() || node.size > 0) {
                node.size = len;
                node.take_dirty();
                node.mark_dirty(0, len);
            } else {
                node.size = len;
            }
            node.set_blocks(Some(blocks));
            tree.touch(ino);
        }
        let mut removed = 0;
        for id in self.backing.list()? {
            if !owned.contains(&id) {
                self.backing.remove(id)?;
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(
                removed,
                "removed backing files of nodes that were never recorded"
            );
        }
        self.persist(&mut tree);
        Ok(())
    }

    fn with_store<T>(&self, f: impl FnOnce(&Store) -> Result<T, StoreError>) -> DriveResult<T> {
        match lock(&self.store).as_ref() {
            Some(store) => Ok(f(store)?),
            None => Err(DriveError::Store(StoreError::Stopped)),
        }
    }

    /// Queues the tree's journal for the store; returns nodes to reap.
    /// Writes what the journal holds; returns the reaped nodes and whether anything changed.
    fn persist(&self, tree: &mut Tree) -> (Vec<(Ino, Node)>, bool) {
        let journal = tree.drain();
        // Lookups and forgets change nothing persistent: skip the store's lock.
        if journal.changed.is_empty() && journal.deleted.is_empty() {
            return (journal.reaped, false);
        }
        let rows: Vec<(Ino, Option<NodeRow>)> = journal
            .changed
            .iter()
            .filter_map(|&ino| tree.get(ino).ok().map(|n| (ino, Some(NodeRow::of(n)))))
            .chain(journal.deleted.iter().map(|&ino| (ino, None)))
            .collect();
        if let Some(store) = lock(&self.store).as_ref() {
            store.enqueue(rows);
        }
        (journal.reaped, true)
    }

    /// Runs `f` on the tree, persists what it changed, and queues reaped backing files for
    /// removal.
    fn mutate<T>(&self, f: impl FnOnce(&mut Tree) -> DriveResult<T>) -> DriveResult<T> {
        let (result, (reaped, changed)) = {
            let mut tree = lock(&self.tree);
            let result = f(&mut tree);
            (result, self.persist(&mut tree))
        };
        // Lock-free: this runs after every write request.
        if changed && let Some(Hook(hook)) = self.on_change.get() {
            hook();
        }
        for (_, node) in reaped {
            if node.kind == Kind::File {
                self.backing.remove_later(node.backing_id());
            }
        }
        result
    }

    /// Connects the kernel's caches once the mount exists.
    pub fn set_kernel_cache(&self, cache: Arc<dyn KernelCache>) {
        *lock(&self.kernel_cache) = Some(cache);
    }

    /// Sets what to call after each change to the tree (once: later calls are ignored).
    pub fn set_change_hook(&self, hook: ChangeHook) {
        if self.on_change.set(Hook(hook)).is_err() {
            tracing::warn!("the drive's change hook is set already");
        }
    }

    /// The kernel's caches, if mounted.
    pub fn kernel_cache(&self) -> Option<Arc<dyn KernelCache>> {
        lock(&self.kernel_cache).clone()
    }

    /// The state directory.
    pub fn state(&self) -> &StateDir {
        &self.state
    }

    /// Looks up `name` in `parent`, adding a kernel reference to the result.
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> DriveResult<Attr> {
        self.mutate(|t| {
            let ino = t.lookup(parent, name)?;
            t.add_lookup(ino, 1);
            Self::attr_of(&self.backing, t, ino)
        })
    }

    /// Drops `n` kernel references to `ino`.
    pub fn forget(&self, ino: Ino, n: u64) {
        // Forgetting an unknown inode is harmless; nothing to report.
        let _ = self.mutate(|t| {
            t.forget(ino, n);
            Ok(())
        });
    }

    /// Adds one kernel reference to each of `inos` (entries returned by readdirplus).
    pub fn add_lookups(&self, inos: &[Ino]) {
        let mut t = lock(&self.tree);
        for &ino in inos {
            t.add_lookup(ino, 1);
        }
    }

    fn attr_of(backing: &Backing, t: &mut Tree, ino: Ino) -> DriveResult<Attr> {
        let node = t.get_mut(ino)?;
        if node.kind == Kind::File && node.blocks().is_none() {
            node.set_blocks(Some(
                backing
                    .stat(node.backing_id())?
                    .map_or(0, |(_, _, blocks)| blocks),
            ));
        }
        t.attr(ino)
    }

    /// The attributes of `ino`.
    pub fn getattr(&self, ino: Ino) -> DriveResult<Attr> {
        let mut t = lock(&self.tree);
        Self::attr_of(&self.backing, &mut t, ino)
    }

    /// Changes attributes (chmod, chown, truncate, utimens); `fh` is the handle for ftruncate.
    pub fn setattr(&self, ino: Ino, set: SetAttr, fh: Option<u64>) -> DriveResult<Attr> {
        let _op = set.size.map(|_| ContentOp::start(&self.content_ops));
        if let Some(size) = set.size {
            let (kind, id) = {
                let t = lock(&self.tree);
                let n = t.get(ino)?;
                (n.kind, n.backing_id())
            };
            match kind {
                Kind::Dir => return Err(DriveError::IsDir),
                Kind::Symlink => return Err(DriveError::Invalid("truncate of a symlink")),
                // As the VFS does before asking: only regular files have a size to set.
                Kind::Fifo | Kind::Socket | Kind::CharDevice | Kind::BlockDevice => {
                    return Err(DriveError::Invalid("truncate of a special file"));
                }
                Kind::File => {}
            }
            match fh.and_then(|fh| self.file(fh).ok()) {
                Some(h) => h.file.set_len(size)?,
                None => self.backing.open_file(id)?.set_len(size)?,
            }
        }
        let stamp = now();
        let record = self.mutate(|t| {
            let n = t.get_mut(ino)?;
            if let Some(size) = set.size {
                let old = n.size;
                n.size = size;
                n.mark_dirty(old.min(size), old.max(size));
                n.set_blocks(None);
                n.mtime = stamp;
                n.ctime = stamp;
            }
            if let Some(perm) = set.perm {
                n.set_perm(perm & 0o7777);
                n.ctime = stamp;
            }
            if let Some(uid) = set.uid {
                n.uid = uid;
                n.ctime = stamp;
            }
            if let Some(gid) = set.gid {
                n.gid = gid;
                n.ctime = stamp;
            }
            // As Linux does: chown of a non-directory and an unprivileged truncate drop
            // setuid, and setgid when group-executable; an explicit mode wins.
            let chown = set.uid.is_some() || set.gid.is_some();
            if (chown || set.kill_suid) && set.perm.is_none() && n.kind != Kind::Dir {
                kill_suid(n);
            }
            if let Some(a) = set.atime {
                n.atime = resolve(a, stamp);
                n.ctime = stamp;
            }
            if let Some(m) = set.mtime {
                n.mtime = resolve(m, stamp);
                n.ctime = stamp;
            }
            if let Some(c) = set.ctime {
                n.ctime = c;
            }
            t.touch(ino);
            Ok(set.size.is_some() && t.get(ino)?.open() == 0)
        })?;
        if record {
            // A truncate by path has no close to record it on.
            self.record_version(ino, None)?;
        }
        self.getattr(ino)
    }

    /// The target of symlink `ino`.
    pub fn readlink(&self, ino: Ino) -> DriveResult<Vec<u8>> {
        let t = lock(&self.tree);
        let n = t.get(ino)?;
        if n.kind != Kind::Symlink {
            return Err(DriveError::Invalid("not a symlink"));
        }
        Ok(n.target().to_vec())
    }

    fn new_node(
        t: &Tree,
        parent: Ino,
        kind: Kind,
        perm: u32,
        caller: Caller,
        stamp: Nanos,
    ) -> DriveResult<Node> {
        let p = t.get(parent)?;
        let mut perm = perm & 0o7777;
        let mut gid = caller.gid;
        // BSD group semantics for setgid directories, as ext4 does.
        if p.perm() & 0o2000 != 0 {
            gid = p.gid;
            if kind == Kind::Dir {
                perm |= 0o2000;
            }
        }
        Ok(Node::new(
            t.fresh_id(),
            parent,
            Vec::new(),
            kind,
            perm,
            caller.uid,
            gid,
            stamp,
        ))
    }

    /// Creates directory `name` in `parent`.
    pub fn mkdir(&self, parent: Ino, name: &[u8], perm: u32, caller: Caller) -> DriveResult<Attr> {
        let stamp = now();
        self.mutate(|t| {
            let node = Self::new_node(t, parent, Kind::Dir, perm, caller, stamp)?;
            let ino = t.insert(parent, name, node, stamp)?;
            t.add_lookup(ino, 1);
            t.attr(ino)
        })
    }

    /// Creates symlink `name` in `parent` pointing at `target`.
    pub fn symlink(
        &self,
        parent: Ino,
        name: &[u8],
        target: &[u8],
        caller: Caller,
    ) -> DriveResult<Attr> {
        if target.is_empty() {
            return Err(DriveError::NotFound);
        }
        if target.len() > TARGET_MAX {
            return Err(DriveError::NameTooLong);
        }
        let stamp = now();
        self.mutate(|t| {
            let mut node = Self::new_node(t, parent, Kind::Symlink, 0o777, caller, stamp)?;
            node.set_perm(0o777);
            node.set_target(target);
            node.size = target.len() as u64;
            let ino = t.insert(parent, name, node, stamp)?;
            t.add_lookup(ino, 1);
            t.attr(ino)
        })
    }

    /// Creates regular file `name` in `parent` and, with `open`, opens it.
    fn create_file(
        &self,
        parent: Ino,
        name: &[u8],
        perm: u32,
        caller: Caller,
        open: bool,
    ) -> DriveResult<(Attr, Option<u64>)> {
        let stamp = now();
        let (node, id) = {
            let t = lock(&self.tree);
            // Fail before touching the disk when the name cannot be created.
            name::validate(name)?;
            if t.lookup(parent, name).is_ok() {
                return Err(DriveError::Exists);
            }
            let node = Self::new_node(&t, parent, Kind::File, perm, caller, stamp)?;
            let id = node.id();
            (node, id)
        };
        // The backing file exists before the node does, so no node lacks one.
        let file = self.backing.create(id)?;
        self.note_created();
        let inserted = self.mutate(|t| {
            let ino = t.insert(parent, name, node, stamp)?;
            t.add_lookup(ino, 1);
            if open {
                t.open(ino)?.open_by_mode_mut().admit(true, false);
            }
            Ok((ino, t.attr(ino)?))
        });
        let (ino, attr) = match inserted {
            Ok(v) => v,
            Err(e) => {
                if let Err(re) = self.backing.remove(id) {
                    tracing::warn!(%id, "could not remove unused backing file: {re}");
                }
                return Err(e);
            }
        };
        let fh = open.then(|| self.register(ino, file, IoMode::Cached, true));
        Ok((attr, fh))
    }

    /// Creates and opens regular file `name` in `parent`.
    pub fn create(
        &self,
        parent: Ino,
        name: &[u8],
        perm: u32,
        caller: Caller,
    ) -> DriveResult<(Attr, u64)> {
        let (attr, fh) = self.create_file(parent, name, perm, caller, true)?;
        fh.map(|fh| (attr, fh)).ok_or(DriveError::BadHandle)
    }

    /// Creates a node by mknod: a regular file, or a FIFO, socket or device node (`rdev`
    /// names the device). Special files live in the tree like any node but never sync; the
    /// kernel does their I/O (and checks CAP_MKNOD for device nodes before asking).
    pub fn mknod(
        &self,
        parent: Ino,
        name: &[u8],
        mode: u32,
        rdev: u32,
        caller: Caller,
    ) -> DriveResult<Attr> {
        let kind = Kind::of_mode(mode).ok_or(DriveError::Invalid("unknown mknod file type"))?;
        if kind == Kind::File {
            return Ok(self.create_file(parent, name, mode, caller, false)?.0);
        }
        let stamp = now();
        self.mutate(|t| {
            let mut node = Self::new_node(t, parent, kind, mode, caller, stamp)?;
            if matches!(kind, Kind::CharDevice | Kind::BlockDevice) {
                node.set_rdev(rdev);
            }
            let ino = t.insert(parent, name, node, stamp)?;
            t.add_lookup(ino, 1);
            t.attr(ino)
        })
    }

    fn note_created(&self) {
        self.content_dir_unsynced.store(true, Ordering::Relaxed);
    }

    /// Fsyncs the content directory if backing files were created since it last was.
    fn sync_content_dir(&self) -> DriveResult<()> {
        if self.content_dir_unsynced.swap(false, Ordering::AcqRel) {
            let synced = File::open(self.state.content_dir()).and_then(|d| d.sync_all());
            if let Err(e) = synced {
                self.content_dir_unsynced.store(true, Ordering::Release);
                return Err(e.into());
            }
        }
        Ok(())
    }

    fn register(&self, ino: Ino, file: File, mode: IoMode, writable: bool) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let handle = Arc::new(OpenFile {
            ino,
            file,
            wrote: AtomicBool::new(false),
            mode,
            writable,
        });
        lock(&self.files).insert(fh, handle);
        fh
    }

    fn file(&self, fh: u64) -> DriveResult<Arc<OpenFile>> {
        lock(&self.files)
            .get(&fh)
            .cloned()
            .ok_or(DriveError::BadHandle)
    }

    /// Removes file `name` from `parent`.
    pub fn unlink(&self, parent: Ino, name: &[u8]) -> DriveResult<()> {
        let stamp = now();
        self.mutate(|t| t.remove_file(parent, name, stamp).map(|_| ()))
    }

    /// Removes empty directory `name` from `parent`.
    pub fn rmdir(&self, parent: Ino, name: &[u8]) -> DriveResult<()> {
        let stamp = now();
        self.mutate(|t| t.remove_dir(parent, name, stamp).map(|_| ()))
    }

    /// Renames an entry (see [`RenameMode`]).
    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        mode: RenameMode,
    ) -> DriveResult<()> {
        let stamp = now();
        self.mutate(|t| t.rename(parent, name, new_parent, new_name, mode, stamp))
    }

    /// Gives file or symlink `ino` the further name `new_name` in `new_parent` (a hard
    /// link, as ext4 makes one: one inode, its data and attributes shared). The new name
    /// syncs as a file of its own, under a fresh node id (see README, Semantics).
    pub fn link(&self, ino: Ino, new_parent: Ino, new_name: &[u8]) -> DriveResult<Attr> {
        let stamp = now();
        self.mutate(|t| {
            let id = t.fresh_id();
            t.add_link(ino, new_parent, new_name, id, stamp)?;
            t.add_lookup(ino, 1);
            Self::attr_of(&self.backing, t, ino)
        })
    }

    /// Opens file `ino`. Readers get FUSE passthrough (the kernel reads the backing file
    /// at native speed) unless a writer the drive sees is open; a kernel inode cannot mix
    /// the two, so a writer that arrives while passthrough readers are open is passed
    /// through too, and its changes are recorded as the whole file.
    pub fn open_file(&self, ino: Ino, mode: OpenMode) -> DriveResult<Opened> {
        let id = {
            let t = lock(&self.tree);
            let n = t.get(ino)?;
            match n.kind {
                Kind::File => n.backing_id(),
                Kind::Dir => return Err(DriveError::IsDir),
                Kind::Symlink => return Err(DriveError::Invalid("open of a symlink")),
                // The kernel opens these itself; a request here is not a file to open.
                Kind::Fifo | Kind::Socket | Kind::CharDevice | Kind::BlockDevice => {
                    return Err(DriveError::Invalid("open of a special file"));
                }
            }
        };
        let file = self.backing.open_file(id)?;
        let io = self.mutate(|t| {
            let n = t.open(ino)?;
            Ok(n.open_by_mode_mut()
                .admit(mode.writable, mode.passthrough_available))
        })?;
        let fh = self.register(ino, file, io, mode.writable);
        Ok(Opened { fh, mode: io })
    }

    /// Turns a passthrough handle back into one whose I/O the drive serves (when the
    /// kernel refused the backing file).
    pub fn demote_passthrough(&self, fh: u64) -> DriveResult<IoMode> {
        let mut files = lock(&self.files);
        let h = files.get(&fh).ok_or(DriveError::BadHandle)?;
        if h.mode != IoMode::Passthrough {
            return Ok(h.mode);
        }
        let (file, ino, writable, old) = (h.file.try_clone()?, h.ino, h.writable, h.mode);
        let mode = self.mutate(|t| {
            t.watch(ino);
            let n = t.get_mut(ino)?;
            n.open_by_mode_mut().release(old, writable);
            Ok(n.open_by_mode_mut().admit(writable, false))
        })?;
        files.insert(
            fh,
            Arc::new(OpenFile {
                ino,
                file,
                wrote: AtomicBool::new(false),
                mode,
                writable,
            }),
        );
        Ok(mode)
    }

    /// Runs `f` with the backing file of handle `fh` (to register it for passthrough).
    pub fn with_backing_file<T>(&self, fh: u64, f: impl FnOnce(&File) -> T) -> DriveResult<T> {
        let h = self.file(fh)?;
        Ok(f(&h.file))
    }

    /// Reads up to `size` bytes at `offset`.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> DriveResult<Vec<u8>> {
        let h = self.file(fh)?;
        let mut buf = vec![0u8; size as usize];
        let mut filled = 0;
        while filled < buf.len() {
            match h.file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
        buf.truncate(filled);
        Ok(buf)
    }

    /// Writes `data` at `offset`, recording the dirty range; `kill_suid` drops setuid/setgid
    /// (a write by an unprivileged process).
    pub fn write(
        &self,
        fh: u64,
        offset: u64,
        data: &[u8],
        kill_suid_bits: bool,
    ) -> DriveResult<u32> {
        let _op = ContentOp::start(&self.content_ops);
        let h = self.file(fh)?;
        h.file.write_all_at(data, offset)?;
        h.wrote.store(true, Ordering::Relaxed);
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.largest_write
            .fetch_max(data.len() as u64, Ordering::Relaxed);
        let end = offset + data.len() as u64;
        let stamp = now();
        self.mutate(|t| {
            let n = t.get_mut(h.ino)?;
            n.size = n.size.max(end);
            n.mtime = stamp;
            n.ctime = stamp;
            n.mark_dirty(offset, end);
            n.set_blocks(None);
            if kill_suid_bits {
                kill_suid(n);
            }
            t.touch(h.ino);
            Ok(())
        })?;
        u32::try_from(data.len()).map_err(|_| DriveError::Invalid("write larger than 4 GiB"))
    }

    /// Records a new local version of `ino` if it has unrecorded changes.
    fn record_version(&self, ino: Ino, file: Option<&File>) -> DriveResult<()> {
        let id = lock(&self.tree).get(ino)?.backing_id();
        let stat = match file {
            Some(f) => Some(backing::stamp_of(&f.metadata()?)),
            None => self.backing.stat(id)?,
        };
        let (len, mtime, blocks) = stat.unwrap_or((0, 0, 0));
        self.mutate(|t| {
            let n = t.get_mut(ino)?;
            if n.dirty().is_empty() {
                return Ok(());
            }
            let ranges = n.take_dirty();
            n.set_version(n.version() + 1);
            let pending = n.pending.get_or_insert_with(Box::default);
            pending.ranges.union(&ranges);
            pending.size = n.size;
            pending.mtime = n.mtime;
            n.set_recorded_stamp(Some((len, mtime)));
            n.set_blocks(Some(blocks));
            t.touch(ino);
            Ok(())
        })
    }

    fn record_all_dirty(&self) -> DriveResult<()> {
        let dirty: Vec<Ino> = lock(&self.tree)
            .iter()
            .filter(|(_, n)| n.kind == Kind::File && !n.dirty().is_empty() && !n.unlinked)
            .map(|(&i, _)| i)
            .collect();
        for ino in dirty {
            self.record_version(ino, None)?;
        }
        Ok(())
    }

    /// Closes a handle, recording a new version if the file changed.
    pub fn release(&self, fh: u64) -> DriveResult<()> {
        let h = lock(&self.files).remove(&fh).ok_or(DriveError::BadHandle)?;
        if h.blind_writes() {
            self.mark_wholly_dirty(h.ino, &h.file)?;
        }
        let recorded = self.record_version(h.ino, Some(&h.file));
        self.mutate(|t| {
            t.close(h.ino, h.mode, h.writable);
            Ok(())
        })?;
        recorded
    }

    /// After writes the drive could not see: the size from the backing file, all of it dirty.
    fn mark_wholly_dirty(&self, ino: Ino, file: &File) -> DriveResult<()> {
        let (len, mtime, blocks) = backing::stamp_of(&file.metadata()?);
        self.mutate(|t| {
            let n = t.get_mut(ino)?;
            if n.recorded_stamp() == Some((len, mtime)) {
                return Ok(());
            }
            n.mark_dirty(0, len.max(n.size));
            n.size = len;
            n.mtime = n.mtime.max(mtime);
            n.ctime = n.ctime.max(mtime);
            n.set_blocks(Some(blocks));
            t.touch(ino);
            Ok(())
        })
    }

    /// Makes the file's content and metadata durable and records a version.
    pub fn fsync(&self, fh: u64, datasync: bool) -> DriveResult<()> {
        let h = self.file(fh)?;
        if h.blind_writes() {
            self.mark_wholly_dirty(h.ino, &h.file)?;
        }
        if datasync {
            h.file.sync_data()?;
        } else {
            h.file.sync_all()?;
        }
        self.record_version(h.ino, Some(&h.file))?;
        self.sync_metadata()
    }

    /// Makes every metadata change so far durable (fsyncdir, unmount).
    pub fn sync_metadata(&self) -> DriveResult<()> {
        self.sync_content_dir()?;
        self.with_store(|s| s.barrier(true))
    }

    /// Preallocates, punches or zeroes a range (fallocate(2) modes the backing filesystem supports).
    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> DriveResult<()> {
        let _op = ContentOp::start(&self.content_ops);
        let h = self.file(fh)?;
        let (off, len) = match (i64::try_from(offset), i64::try_from(length)) {
            (Ok(o), Ok(l)) => (o, l),
            _ => return Err(DriveError::Invalid("fallocate range out of bounds")),
        };
        // SAFETY: the descriptor is owned by `h`, which outlives the call; no memory is passed.
        let rc = unsafe { libc::fallocate(h.file.as_raw_fd(), mode, off, len) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let (len_after, _, blocks) = backing::stamp_of(&h.file.metadata()?);
        let shifts = mode & (libc::FALLOC_FL_COLLAPSE_RANGE | libc::FALLOC_FL_INSERT_RANGE) != 0;
        let stamp = now();
        self.mutate(|t| {
            let n = t.get_mut(h.ino)?;
            let end = if shifts {
                n.size.max(len_after)
            } else {
                offset + length
            };
            if mode & libc::FALLOC_FL_KEEP_SIZE == 0
                || mode & libc::FALLOC_FL_PUNCH_HOLE != 0
                || shifts
            {
                n.mark_dirty(offset, end.max(offset));
            }
            n.size = len_after;
            n.set_blocks(Some(blocks));
            n.mtime = stamp;
            n.ctime = stamp;
            t.touch(h.ino);
            Ok(())
        })
    }

    /// Snapshots directory `ino` for a readdir stream (`.` and `..` first).
    pub fn opendir(&self, ino: Ino) -> DriveResult<u64> {
        let entries = {
            let t = lock(&self.tree);
            let dir = t.get(ino)?;
            if dir.kind != Kind::Dir {
                return Err(DriveError::NotDir);
            }
            let children = t.entries(ino);
            let mut entries = Vec::with_capacity(children.len() + 2);
            entries.push(DirEntry {
                ino,
                kind: Kind::Dir,
                name: b".".to_vec(),
            });
            entries.push(DirEntry {
                ino: dir.parent,
                kind: Kind::Dir,
                name: b"..".to_vec(),
            });
            for (name, child) in children {
                if let Ok(c) = t.get(child) {
                    entries.push(DirEntry {
                        ino: child,
                        kind: c.kind,
                        name,
                    });
                }
            }
            entries
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.dirs).insert(fh, Arc::new(entries));
        Ok(fh)
    }

    /// The entries of an open directory stream (a snapshot taken at opendir).
    pub fn readdir(&self, fh: u64) -> DriveResult<Arc<Vec<DirEntry>>> {
        lock(&self.dirs)
            .get(&fh)
            .cloned()
            .ok_or(DriveError::BadHandle)
    }

    /// Attributes of entries still present, for readdirplus (`None` for vanished ones).
    pub fn attrs(&self, inos: &[Ino]) -> Vec<Option<Attr>> {
        let mut t = lock(&self.tree);
        inos.iter()
            .map(|&ino| Self::attr_of(&self.backing, &mut t, ino).ok())
            .collect()
    }

    /// Closes a directory stream.
    pub fn releasedir(&self, fh: u64) {
        lock(&self.dirs).remove(&fh);
    }

    /// Filesystem statistics, from the disk holding the state directory.
    pub fn statfs(&self) -> DriveResult<FsStats> {
        let st = crate::durability::fs_stats(self.state.root())?;
        let used = lock(&self.tree).len() as u64;
        let ffree = st.f_favail;
        Ok(FsStats {
            blocks: st.f_blocks * st.f_frsize / 4096,
            bfree: st.f_bfree * st.f_frsize / 4096,
            bavail: st.f_bavail * st.f_frsize / 4096,
            files: used + ffree,
            ffree,
            bsize: 4096,
        })
    }

    /// Sets extended attribute `name`.
    pub fn setxattr(
        &self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        flags: XattrFlags,
    ) -> DriveResult<()> {
        let stamp = now();
        self.mutate(|t| {
            let n = t.get_mut(ino)?;
            xattr::set(n, name, value, flags)?;
            n.ctime = stamp;
            t.touch(ino);
            Ok(())
        })
    }

    /// The value of extended attribute `name`.
    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> DriveResult<Vec<u8>> {
        let t = lock(&self.tree);
        xattr::get(t.get(ino)?, name)
    }

    /// All extended attribute names, each followed by NUL.
    pub fn listxattr(&self, ino: Ino) -> DriveResult<Vec<u8>> {
        let t = lock(&self.tree);
        Ok(xattr::list(t.get(ino)?))
    }

    /// Removes extended attribute `name`.
    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> DriveResult<()> {
        let stamp = now();
        self.mutate(|t| {
            let n = t.get_mut(ino)?;
            xattr::remove(n, name)?;
            n.ctime = stamp;
            t.touch(ino);
            Ok(())
        })
    }

    /// The recorded versions not yet taken by the sync engine.
    pub fn pending_versions(&self) -> Vec<RecordedVersion> {
        let t = lock(&self.tree);
        let mut out: Vec<RecordedVersion> = t
            .iter()
            .filter_map(|(&ino, n)| {
                n.pending
                    .as_ref()
                    .map(|p| RecordedVersion::of(ino, n.version(), p))
            })
            .collect();
        out.sort_by_key(|v| v.ino);
        out
    }

    /// The pending versions of those of `inos` that have one, by inode.
    pub fn pending_versions_of(&self, inos: &[Ino]) -> Vec<RecordedVersion> {
        let t = lock(&self.tree);
        let mut out: Vec<RecordedVersion> = inos
            .iter()
            .filter_map(|&ino| {
                let n = t.get(ino).ok()?;
                Some(RecordedVersion::of(ino, n.version(), n.pending.as_ref()?))
            })
            .collect();
        out.sort_by_key(|v| v.ino);
        out
    }

    /// Takes the pending version of `ino` (the sync engine's hand-off): it is removed from
    /// the durable queue once the engine has what it needs.
    pub fn take_pending(&self, ino: Ino) -> DriveResult<Option<RecordedVersion>> {
        self.mutate(|t| {
            let n = t.get_mut(ino)?;
            let number = n.version();
            let taken = n.pending.take().map(|p| RecordedVersion {
                ino,
                number,
                ranges: p.ranges,
                size: p.size,
            });
            if taken.is_some() {
                t.touch(ino);
            }
            Ok(taken)
        })
    }

    /// Takes the pending version of `ino` only if it is still version `number` and the file
    /// has no newer writes: the sync engine computed its manifest from exactly those bytes.
    /// A file still open for writing (a database after its fsync) is taken too, when nothing
    /// was written since the version and no write anywhere is between its syscall and its
    /// dirty range (so none can have slipped into the bytes read).
    pub fn take_pending_if(&self, ino: Ino, number: u64) -> DriveResult<bool> {
        self.mutate(|t| {
            let n = t.get_mut(ino)?;
            let current = n.pending.is_some() && n.version() == number;
            let writing = n.open_by_mode().writers > 0
                && (self.content_ops.load(Ordering::SeqCst) > 0
                    || n.open_by_mode().passthrough > 0);
            if !current || !n.dirty().is_empty() || writing {
                return Ok(false);
            }
            n.pending = None;
            t.touch(ino);
            Ok(true)
        })
    }

    /// Files with writes not yet recorded as a version.
    pub fn dirty_files(&self) -> Vec<(Ino, RangeSet)> {
        let t = lock(&self.tree);
        let mut out: Vec<(Ino, RangeSet)> = t
            .iter()
            .filter(|(_, n)| n.kind == Kind::File && !n.dirty().is_empty() && !n.unlinked)
            .map(|(&ino, n)| (ino, n.dirty().clone()))
            .collect();
        out.sort_by_key(|(ino, _)| *ino);
        out
    }

    /// Records every pending change, makes it durable and marks a clean shutdown.
    pub fn shutdown(&self) -> DriveResult<()> {
        let handles: Vec<Arc<OpenFile>> = lock(&self.files).values().cloned().collect();
        for h in handles {
            if h.blind_writes() {
                self.mark_wholly_dirty(h.ino, &h.file)?;
            }
            self.record_version(h.ino, Some(&h.file))?;
        }
        self.record_all_dirty()?;
        self.sync_content_dir()?;
        self.backing.drain();
        let store = lock(&self.store).take();
        if store.is_some() {
            tracing::info!(
                "session stats: {} write requests, largest write request {} bytes",
                self.writes.load(Ordering::Relaxed),
                self.largest_write.load(Ordering::Relaxed)
            );
        }
        match store {
            Some(store) => Ok(store.close(true)?),
            None => Ok(()),
        }
    }

    /// Where the drive keeps its state.
    pub fn state_root(&self) -> &Path {
        self.state.root()
    }
}

/// Drops setuid, setgid when group-executable, and file capabilities, as a write or chown does.
fn kill_suid(n: &mut Node) {
    let mut perm = n.perm() & !0o4000;
    if perm & 0o010 != 0 {
        perm &= !0o2000;
    }
    n.set_perm(perm);
    if n.xattrs().contains_key(&b"security.capability"[..]) {
        n.xattrs_mut().remove(&b"security.capability"[..]);
        n.tidy();
    }
}

fn resolve(t: TimeSet, now: Nanos) -> Nanos {
    match t {
        TimeSet::Now => now,
        TimeSet::At(n) => n,
    }
}
