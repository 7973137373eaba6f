//! Nodes of the local tree and the attributes the filesystem reports for them.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::protocol::NodeId;

use super::name::Name;
use super::ranges::RangeSet;

/// A mount-local inode number (stable across remounts of the same state).
pub type Ino = u64;

/// The root directory's inode number.
pub const ROOT_INO: Ino = 1;

/// Size reported for directories, as ext4 does.
pub const DIR_SIZE: u64 = 4096;

/// What a node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A regular file with content in a backing file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link with its target.
    Symlink,
    /// A named pipe (FIFO): the kernel passes its data; it stays on this device.
    Fifo,
    /// A unix domain socket's name: the kernel binds it; it stays on this device.
    Socket,
    /// A character device node (`rdev` names the device); it stays on this device.
    CharDevice,
    /// A block device node (`rdev` names the device); it stays on this device.
    BlockDevice,
}

impl Kind {
    /// The code stored in the database.
    pub fn code(self) -> i64 {
        match self {
            Kind::File => 1,
            Kind::Dir => 2,
            Kind::Symlink => 3,
            Kind::Fifo => 4,
            Kind::Socket => 5,
            Kind::CharDevice => 6,
            Kind::BlockDevice => 7,
        }
    }

    /// The kind for a stored code.
    pub fn from_code(code: i64) -> Option<Kind> {
        match code {
            1 => Some(Kind::File),
            2 => Some(Kind::Dir),
            3 => Some(Kind::Symlink),
            4 => Some(Kind::Fifo),
            5 => Some(Kind::Socket),
            6 => Some(Kind::CharDevice),
            7 => Some(Kind::BlockDevice),
            _ => None,
        }
    }

    /// The kind a mknod(2) mode makes (`S_IFREG` or no type bits: a regular file).
    pub fn of_mode(mode: u32) -> Option<Kind> {
        match mode & libc::S_IFMT {
            0 | libc::S_IFREG => Some(Kind::File),
            libc::S_IFIFO => Some(Kind::Fifo),
            libc::S_IFSOCK => Some(Kind::Socket),
            libc::S_IFCHR => Some(Kind::CharDevice),
            libc::S_IFBLK => Some(Kind::BlockDevice),
            _ => None,
        }
    }

    /// FIFOs, sockets and device nodes: the kernel does their I/O, and they never sync
    /// (they mean nothing on another machine).
    pub fn is_special(self) -> bool {
        matches!(
            self,
            Kind::Fifo | Kind::Socket | Kind::CharDevice | Kind::BlockDevice
        )
    }
}

/// Nanoseconds since the Unix epoch (negative before it).
pub type Nanos = i64;

/// The current time in nanoseconds since the epoch.
pub fn now() -> Nanos {
    to_nanos(SystemTime::now())
}

/// A `SystemTime` as nanoseconds since the epoch, saturating far outside the representable range.
pub fn to_nanos(t: SystemTime) -> Nanos {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

/// Nanoseconds since the epoch as a `SystemTime`.
pub fn from_nanos(n: Nanos) -> SystemTime {
    let d = std::time::Duration::from_nanos(n.unsigned_abs());
    if n >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

/// A local version of a file recorded on close or fsync and not yet taken by the sync engine.
/// Its number is the node's `version`: only the last recorded version can be pending (a
/// newer one merges into it), so the number is not kept twice.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PendingVersion {
    /// Bytes changed since the previous version the sync engine took.
    pub ranges: RangeSet,
    /// File size at the time of recording.
    pub size: u64,
    /// File mtime at the time of recording.
    pub mtime: Nanos,
}

/// A further name of an inode (a hard link). Each name syncs as its own file, so each has
/// its own node id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkName {
    /// The name's sync identity.
    pub id: NodeId,
    /// Directory holding the name.
    pub parent: Ino,
    /// Entry name in that directory.
    pub name: Name,
}

/// What few nodes need, kept out of [`Node`] so that a plain file at rest does not pay for
/// it: further names, a symlink's target, a device number, xattrs, unrecorded writes, open
/// handles, a backing key other than the id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Extra {
    /// The backing file's key when it is not the node's id (see [`Node::backing_id`]).
    backing_id: Option<NodeId>,
    links: Vec<LinkName>,
    target: Box<[u8]>,
    rdev: u32,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    dirty: RangeSet,
    open: u32,
    open_by_mode: OpenCounts,
    /// The high halves of [`Node::version`] and [`Node::lookups`], which the node keeps in
    /// 32 bits: a file recorded four billion times, an inode the kernel looked up as often.
    version_high: u32,
    lookups_high: u32,
}

/// No xattrs, for nodes without an [`Extra`].
static NO_XATTRS: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
/// No unrecorded writes, for nodes without an [`Extra`].
static NOT_DIRTY: RangeSet = RangeSet::new();

/// No open handles, for nodes without an [`Extra`].
static NO_HANDLES: OpenCounts = OpenCounts {
    cached: 0,
    passthrough: 0,
    writers: 0,
};

/// "None" of the block count (see [`Node::blocks`]).
const NO_BLOCKS: u32 = u32::MAX;

/// "None" of the integer fields that stand for an `Option` (a backing file's length and
/// block count never reach it).
const UNSET: u64 = u64::MAX;

/// One node of the tree: persistent fields plus runtime bookkeeping. Directory entries live
/// in the tree (`Tree`), not here. What a plain file at rest does not use sits behind one
/// optional box, reached through accessors.
#[derive(Clone, Debug)]
pub struct Node {
    /// Stable identity of the primary name ([`Node::id`]), as bytes: a `NodeId` is a
    /// `u128`, whose 16-byte alignment would pad every node.
    id: [u8; 16],
    /// Parent directory of the primary name (the root is its own parent).
    pub parent: Ino,
    /// Primary entry name in the parent.
    pub name: Name,
    /// Content size (files), target length (symlinks).
    pub size: u64,
    /// Access time.
    pub atime: Nanos,
    /// Modification time.
    pub mtime: Nanos,
    /// Status change time.
    pub ctime: Nanos,
    /// Low half of [`Node::version`].
    version: u32,
    /// Last recorded version not yet taken by the sync engine.
    pub pending: Option<Box<PendingVersion>>,
    /// Backing file length when the last version was recorded ([`UNSET`]: none).
    recorded_len: u64,
    /// Backing file mtime when the last version was recorded.
    recorded_mtime: Nanos,
    /// Allocated 512-byte blocks of the backing file ([`NO_BLOCKS`]: must be re-read;
    /// so are counts that do not fit, of files of 2 TiB and more).
    blocks: u32,
    /// Low half of [`Node::lookups`].
    lookups: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Permission bits including setuid, setgid and sticky (0o7777).
    perm: u16,
    /// File, directory or symlink.
    pub kind: Kind,
    /// Removed from its directory but still referenced (runtime only).
    pub unlinked: bool,
    extra: Option<Box<Extra>>,
}

impl Node {
    /// A new node with fresh runtime state.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: NodeId,
        parent: Ino,
        name: impl Into<Name>,
        kind: Kind,
        perm: u32,
        uid: u32,
        gid: u32,
        time: Nanos,
    ) -> Node {
        Node {
            id: id.to_bytes(),
            parent,
            name: name.into(),
            size: 0,
            atime: time,
            mtime: time,
            ctime: time,
            version: 0,
            pending: None,
            recorded_len: UNSET,
            recorded_mtime: 0,
            blocks: 0,
            lookups: 0,
            uid,
            gid,
            perm: (perm & 0o7777) as u16,
            kind,
            unlinked: false,
            extra: None,
        }
    }

    /// Stable identity of the primary name, shared by every device. The backing key is
    /// this id unless [`Node::set_backing_id`] says otherwise.
    pub fn id(&self) -> NodeId {
        NodeId::from_bytes(self.id)
    }

    /// Changes the primary name's identity; the backing key stays what it was.
    pub fn set_id(&mut self, id: NodeId) {
        let key = self.backing_id();
        self.id = id.to_bytes();
        self.set_backing_id(key);
    }

    fn extra_mut(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// Drops the rare fields' box once they are all back to nothing (after a close, a
    /// recorded version, a removed xattr).
    pub fn tidy(&mut self) {
        if self
            .extra
            .as_deref()
            .is_some_and(|e| *e == Extra::default())
        {
            self.extra = None;
        }
    }

    /// Permission bits including setuid, setgid and sticky (0o7777).
    pub fn perm(&self) -> u32 {
        u32::from(self.perm)
    }

    /// Sets the permission bits (only 0o7777 are kept).
    pub fn set_perm(&mut self, perm: u32) {
        self.perm = (perm & 0o7777) as u16;
    }

    /// Key of the backing file `content/<key>`: the id the inode was created with, kept for
    /// its whole life even when that name goes and another is promoted to primary.
    pub fn backing_id(&self) -> NodeId {
        self.extra
            .as_ref()
            .and_then(|e| e.backing_id)
            .unwrap_or(self.id())
    }

    /// Sets the backing file's key (stored only when it is not the id).
    pub fn set_backing_id(&mut self, key: NodeId) {
        if key == self.id() {
            if let Some(e) = self.extra.as_mut() {
                e.backing_id = None;
            }
            self.tidy();
        } else {
            self.extra_mut().backing_id = Some(key);
        }
    }

    /// Names beyond the primary one (hard links; never for directories).
    pub fn links(&self) -> &[LinkName] {
        self.extra.as_ref().map_or(&[], |e| &e.links)
    }

    /// The further names, to change.
    pub fn links_mut(&mut self) -> &mut Vec<LinkName> {
        &mut self.extra_mut().links
    }

    /// Symlink target.
    pub fn target(&self) -> &[u8] {
        self.extra.as_ref().map_or(&[], |e| &e.target)
    }

    /// Sets the symlink target.
    pub fn set_target(&mut self, target: &[u8]) {
        if target.is_empty() && self.extra.is_none() {
            return;
        }
        self.extra_mut().target = target.into();
        self.tidy();
    }

    /// Device number of a device node (0 for every other kind).
    pub fn rdev(&self) -> u32 {
        self.extra.as_ref().map_or(0, |e| e.rdev)
    }

    /// Sets the device number.
    pub fn set_rdev(&mut self, rdev: u32) {
        if rdev == 0 && self.extra.is_none() {
            return;
        }
        self.extra_mut().rdev = rdev;
        self.tidy();
    }

    /// Extended attributes.
    pub fn xattrs(&self) -> &BTreeMap<Vec<u8>, Vec<u8>> {
        self.extra.as_ref().map_or(&NO_XATTRS, |e| &e.xattrs)
    }

    /// Extended attributes, to change (call [`Node::tidy`] after removing some).
    pub fn xattrs_mut(&mut self) -> &mut BTreeMap<Vec<u8>, Vec<u8>> {
        &mut self.extra_mut().xattrs
    }

    /// Replaces the extended attributes.
    pub fn set_xattrs(&mut self, xattrs: BTreeMap<Vec<u8>, Vec<u8>>) {
        if xattrs.is_empty() && self.extra.is_none() {
            return;
        }
        self.extra_mut().xattrs = xattrs;
        self.tidy();
    }

    /// Bytes written since the last recorded version.
    pub fn dirty(&self) -> &RangeSet {
        self.extra.as_ref().map_or(&NOT_DIRTY, |e| &e.dirty)
    }

    /// Marks `start..end` written since the last recorded version.
    pub fn mark_dirty(&mut self, start: u64, end: u64) {
        self.extra_mut().dirty.insert(start, end);
    }

    /// Takes the unrecorded writes, leaving none.
    pub fn take_dirty(&mut self) -> RangeSet {
        let taken = self.extra.as_mut().map(|e| e.dirty.take());
        self.tidy();
        taken.unwrap_or_default()
    }

    /// Backing file (length, mtime) when the last version was recorded: a crash recovery
    /// that finds a different stamp knows the file changed unrecorded.
    pub fn recorded_stamp(&self) -> Option<(u64, Nanos)> {
        (self.recorded_len != UNSET).then_some((self.recorded_len, self.recorded_mtime))
    }

    /// Sets the recorded stamp.
    pub fn set_recorded_stamp(&mut self, stamp: Option<(u64, Nanos)>) {
        (self.recorded_len, self.recorded_mtime) = match stamp {
            // A length of u64::MAX cannot be a file's (they stop at i64::MAX).
            Some((len, mtime)) => (len.min(UNSET - 1), mtime),
            None => (UNSET, 0),
        };
    }

    /// Allocated 512-byte blocks of the backing file, `None` when it must be re-read.
    pub fn blocks(&self) -> Option<u64> {
        (self.blocks != NO_BLOCKS).then_some(u64::from(self.blocks))
    }

    /// Sets the block count (`None`: re-read it when asked).
    pub fn set_blocks(&mut self, blocks: Option<u64>) {
        self.blocks = blocks
            .and_then(|b| u32::try_from(b).ok())
            .unwrap_or(NO_BLOCKS);
    }

    /// Number of the last recorded version (0: none yet).
    pub fn version(&self) -> u64 {
        let high = self.extra.as_ref().map_or(0, |e| e.version_high);
        (u64::from(high) << 32) | u64::from(self.version)
    }

    /// Sets the number of the last recorded version.
    pub fn set_version(&mut self, version: u64) {
        let (high, low) = ((version >> 32) as u32, version as u32);
        self.version = low;
        if high != 0 || self.extra.is_some() {
            self.extra_mut().version_high = high;
            self.tidy();
        }
    }

    /// Kernel lookup references (runtime only).
    pub fn lookups(&self) -> u64 {
        let high = self.extra.as_ref().map_or(0, |e| e.lookups_high);
        (u64::from(high) << 32) | u64::from(self.lookups)
    }

    /// Sets the kernel lookup references.
    pub fn set_lookups(&mut self, lookups: u64) {
        let (high, low) = ((lookups >> 32) as u32, lookups as u32);
        self.lookups = low;
        if high != 0 || self.extra.is_some() {
            self.extra_mut().lookups_high = high;
            self.tidy();
        }
    }

    /// Open file handles (runtime only).
    pub fn open(&self) -> u32 {
        self.extra.as_ref().map_or(0, |e| e.open)
    }

    /// Open handles by how the kernel does their I/O (runtime only).
    pub fn open_by_mode(&self) -> &OpenCounts {
        self.extra.as_ref().map_or(&NO_HANDLES, |e| &e.open_by_mode)
    }

    /// Counts an open handle (its mode is counted by [`Node::open_by_mode_mut`]).
    pub fn add_open(&mut self) {
        self.extra_mut().open += 1;
    }

    /// The counts by I/O mode, to admit or release a handle.
    pub fn open_by_mode_mut(&mut self) -> &mut OpenCounts {
        &mut self.extra_mut().open_by_mode
    }

    /// Uncounts a handle.
    pub fn release_open(&mut self, mode: IoMode, writable: bool) {
        if let Some(e) = self.extra.as_mut() {
            e.open = e.open.saturating_sub(1);
            e.open_by_mode.release(mode, writable);
        }
        self.tidy();
    }

    /// Link count of a file or symlink: one per name, none once out of the namespace.
    pub fn nlink(&self) -> u32 {
        if self.unlinked {
            0
        } else {
            u32::try_from(1 + self.links().len()).unwrap_or(u32::MAX)
        }
    }

    /// Every name of the node, primary first: (id, parent, name).
    pub fn names(&self) -> impl Iterator<Item = (NodeId, Ino, &[u8])> {
        std::iter::once((self.id(), self.parent, self.name.as_bytes())).chain(
            self.links()
                .iter()
                .map(|l| (l.id, l.parent, l.name.as_bytes())),
        )
    }

    /// The name with sync identity `id`: (parent, name).
    pub fn name_of(&self, id: NodeId) -> Option<(Ino, &[u8])> {
        self.names()
            .find(|&(i, _, _)| i == id)
            .map(|(_, p, n)| (p, n))
    }

    /// Position of the name `name` in `parent` among [`Node::names`] (0: primary).
    pub fn name_index(&self, parent: Ino, name: &[u8]) -> Option<usize> {
        self.names().position(|(_, p, n)| p == parent && n == name)
    }

    /// Takes name number `index` (of [`Node::names`]) off the node, promoting the first link
    /// when it is the primary; returns the name. The node must have another name. The
    /// backing key stays.
    pub fn take_name(&mut self, index: usize) -> Option<LinkName> {
        let len = self.links().len();
        if index == 0 {
            if len == 0 {
                return None;
            }
            let next = self.links_mut().remove(0);
            let old = LinkName {
                id: self.id(),
                parent: std::mem::replace(&mut self.parent, next.parent),
                name: std::mem::replace(&mut self.name, next.name),
            };
            self.set_id(next.id);
            self.tidy();
            Some(old)
        } else if index <= len {
            let gone = self.links_mut().remove(index - 1);
            self.tidy();
            Some(gone)
        } else {
            None
        }
    }

    /// Points name number `index` (of [`Node::names`]) at `parent`/`name`.
    pub fn set_name(&mut self, index: usize, parent: Ino, name: &[u8]) {
        if index == 0 {
            self.parent = parent;
            self.name = Name::from(name);
        } else if let Some(l) = self.extra.as_mut().and_then(|e| e.links.get_mut(index - 1)) {
            l.parent = parent;
            l.name = Name::from(name);
        }
    }

    /// The attributes `stat` reports; `subdirs` counts a directory's child directories.
    pub fn attr(&self, ino: Ino, subdirs: u32) -> Attr {
        let (size, nlink) = match self.kind {
            Kind::Dir => (DIR_SIZE, 2 + subdirs),
            Kind::File => (self.size, self.nlink()),
            Kind::Symlink => (self.target().len() as u64, self.nlink()),
            Kind::Fifo | Kind::Socket | Kind::CharDevice | Kind::BlockDevice => (0, self.nlink()),
        };
        let blocks = match self.kind {
            Kind::Dir => DIR_SIZE / 512,
            Kind::Symlink | Kind::Fifo | Kind::Socket | Kind::CharDevice | Kind::BlockDevice => 0,
            // Until the backing file is stat'ed again, the size is the best estimate.
            Kind::File => self.blocks().unwrap_or(self.size.div_ceil(512)),
        };
        Attr {
            ino,
            kind: self.kind,
            size,
            blocks,
            atime: self.atime,
            mtime: self.mtime,
            ctime: self.ctime,
            perm: self.perm(),
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: self.rdev(),
        }
    }
}

/// How the kernel does a handle's I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoMode {
    /// Through the kernel's page cache and our read/write handlers.
    Cached,
    /// Straight on the backing file (FUSE passthrough).
    Passthrough,
}

/// Open handles of a node by I/O mode. The kernel refuses to mix the two on one inode:
/// while passthrough handles are open, every open must be passthrough (with the same
/// backing file), and while cached handles are open, none may be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenCounts {
    /// Cached handles.
    pub cached: u32,
    /// Passthrough handles.
    pub passthrough: u32,
    /// Handles that may write (either mode).
    pub writers: u32,
}

impl OpenCounts {
    /// Chooses the I/O mode of a new handle and counts it: readers get passthrough unless
    /// cached handles are open; writers are cached unless passthrough handles are open.
    pub fn admit(&mut self, writable: bool, passthrough_available: bool) -> IoMode {
        let passthrough = passthrough_available
            && if writable {
                self.passthrough > 0
            } else {
                self.cached == 0
            };
        let mode = if passthrough {
            IoMode::Passthrough
        } else {
            IoMode::Cached
        };
        match mode {
            IoMode::Cached => self.cached += 1,
            IoMode::Passthrough => self.passthrough += 1,
        }
        if writable {
            self.writers += 1;
        }
        mode
    }

    /// Uncounts a handle.
    pub fn release(&mut self, mode: IoMode, writable: bool) {
        match mode {
            IoMode::Cached => self.cached = self.cached.saturating_sub(1),
            IoMode::Passthrough => self.passthrough = self.passthrough.saturating_sub(1),
        }
        if writable {
            self.writers = self.writers.saturating_sub(1);
        }
    }
}

/// What `stat` reports for a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: Ino,
    /// Node kind.
    pub kind: Kind,
    /// Size in bytes.
    pub size: u64,
    /// Allocated 512-byte blocks.
    pub blocks: u64,
    /// Access time.
    pub atime: Nanos,
    /// Modification time.
    pub mtime: Nanos,
    /// Status change time.
    pub ctime: Nanos,
    /// Permission bits (0o7777).
    pub perm: u32,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number (device nodes).
    pub rdev: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_file_at_rest_keeps_no_extra() {
        // What a million files cost: keep the node within the size it was compacted to.
        assert!(
            std::mem::size_of::<Node>() <= 136 && std::mem::align_of::<Node>() == 8,
            "Node grew to {} bytes",
            std::mem::size_of::<Node>()
        );
        let key = NodeId::random();
        let mut n = Node::new(key, 1, b"f".to_vec(), Kind::File, 0o644, 0, 0, 0);
        assert!(n.extra.is_none());
        n.add_open();
        assert_eq!(n.open_by_mode_mut().admit(true, false), IoMode::Cached);
        n.mark_dirty(0, 10);
        assert_eq!((n.open(), n.open_by_mode().writers), (1, 1));
        assert_eq!(n.take_dirty().ranges(), &[(0, 10)]);
        n.release_open(IoMode::Cached, true);
        assert!(
            n.extra.is_none(),
            "closed and recorded: nothing left in the box"
        );

        let other = NodeId::random();
        n.set_backing_id(other);
        assert_eq!(n.backing_id(), other);
        n.set_backing_id(n.id());
        assert_eq!(n.backing_id(), n.id());
        let renamed = NodeId::random();
        n.set_id(renamed);
        assert_eq!((n.id(), n.backing_id()), (renamed, key));
        n.set_backing_id(renamed);
        assert!(n.extra.is_none());

        assert_eq!(n.recorded_stamp(), None);
        n.set_recorded_stamp(Some((5, -3)));
        assert_eq!(n.recorded_stamp(), Some((5, -3)));
        assert_eq!(n.blocks(), Some(0));
        n.set_blocks(None);
        assert_eq!(n.blocks(), None);
        n.set_blocks(Some(8));
        assert_eq!(n.blocks(), Some(8));
        n.set_blocks(Some(1 << 32));
        assert_eq!(n.blocks(), None, "too many to keep: read again when asked");
        for big in [u64::from(u32::MAX), 1 << 32, u64::MAX] {
            n.set_version(big);
            n.set_lookups(big.wrapping_add(1));
            assert_eq!((n.version(), n.lookups()), (big, big.wrapping_add(1)));
        }
        n.set_version(7);
        n.set_lookups(0);
        assert!(n.extra.is_none(), "small numbers need no box");
        n.set_perm(0o104_755);
        assert_eq!(n.perm(), 0o4755);
    }

    #[test]
    fn rare_fields_round_trip_through_the_box() {
        let mut n = Node::new(
            NodeId::random(),
            1,
            b"l".to_vec(),
            Kind::Symlink,
            0o777,
            0,
            0,
            0,
        );
        n.set_target(b"target");
        n.set_rdev(7);
        n.xattrs_mut().insert(b"user.a".to_vec(), b"1".to_vec());
        assert_eq!((n.target(), n.rdev()), (&b"target"[..], 7));
        assert_eq!(n.xattrs().get(&b"user.a"[..]), Some(&b"1".to_vec()));
        n.set_target(b"");
        n.set_rdev(0);
        n.xattrs_mut().clear();
        n.tidy();
        assert!(n.extra.is_none());
    }
}
