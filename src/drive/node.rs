//! Nodes of the local tree and the attributes the filesystem reports for them.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::protocol::NodeId;

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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PendingVersion {
    /// Monotonic per-file version number.
    pub number: u64,
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
    pub name: Vec<u8>,
}

/// One node of the tree: persistent fields plus runtime bookkeeping.
#[derive(Clone, Debug)]
pub struct Node {
    /// Stable identity of the primary name, shared by every device.
    pub id: NodeId,
    /// Parent directory of the primary name (the root is its own parent).
    pub parent: Ino,
    /// Primary entry name in the parent.
    pub name: Vec<u8>,
    /// Names beyond the primary one (hard links; never for directories).
    pub links: Vec<LinkName>,
    /// Key of the backing file `content/<key>`: the id the inode was created with, kept for
    /// its whole life even when that name goes and another is promoted to primary.
    pub backing_id: NodeId,
    /// File, directory or symlink.
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky (0o7777).
    pub perm: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Content size (files), target length (symlinks).
    pub size: u64,
    /// Access time.
    pub atime: Nanos,
    /// Modification time.
    pub mtime: Nanos,
    /// Status change time.
    pub ctime: Nanos,
    /// Symlink target.
    pub target: Vec<u8>,
    /// Device number of a device node (0 for every other kind).
    pub rdev: u32,
    /// Extended attributes.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Directory entries (directories only).
    pub children: BTreeMap<Vec<u8>, Ino>,
    /// Number of child directories (for nlink).
    pub subdirs: u32,
    /// Bytes written since the last recorded version.
    pub dirty: RangeSet,
    /// Last recorded version not yet taken by the sync engine.
    pub pending: Option<PendingVersion>,
    /// Number of the last recorded version (0: none yet).
    pub version: u64,
    /// Backing file (length, mtime) when the last version was recorded: a crash
    /// recovery that finds a different stamp knows the file changed unrecorded.
    pub recorded_stamp: Option<(u64, Nanos)>,
    /// Allocated 512-byte blocks of the backing file, `None` when it must be re-read.
    pub blocks: Option<u64>,
    /// Kernel lookup references (runtime only).
    pub lookups: u64,
    /// Open file handles (runtime only).
    pub open: u32,
    /// Open handles by how the kernel does their I/O (runtime only).
    pub open_by_mode: OpenCounts,
    /// Removed from its directory but still referenced (runtime only).
    pub unlinked: bool,
}

impl Node {
    /// A new node with fresh runtime state.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: NodeId,
        parent: Ino,
        name: Vec<u8>,
        kind: Kind,
        perm: u32,
        uid: u32,
        gid: u32,
        time: Nanos,
    ) -> Node {
        Node {
            id,
            parent,
            name,
            links: Vec::new(),
            backing_id: id,
            kind,
            perm: perm & 0o7777,
            uid,
            gid,
            size: 0,
            atime: time,
            mtime: time,
            ctime: time,
            target: Vec::new(),
            rdev: 0,
            xattrs: BTreeMap::new(),
            children: BTreeMap::new(),
            subdirs: 0,
            dirty: RangeSet::new(),
            pending: None,
            version: 0,
            recorded_stamp: None,
            blocks: Some(0),
            lookups: 0,
            open: 0,
            open_by_mode: OpenCounts::default(),
            unlinked: false,
        }
    }

    /// Link count of a file or symlink: one per name, none once out of the namespace.
    pub fn nlink(&self) -> u32 {
        if self.unlinked {
            0
        } else {
            u32::try_from(1 + self.links.len()).unwrap_or(u32::MAX)
        }
    }

    /// Every name of the node, primary first: (id, parent, name).
    pub fn names(&self) -> impl Iterator<Item = (NodeId, Ino, &[u8])> {
        std::iter::once((self.id, self.parent, self.name.as_slice())).chain(
            self.links
                .iter()
                .map(|l| (l.id, l.parent, l.name.as_slice())),
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
    /// when it is the primary; returns the name. The node must have another name.
    pub fn take_name(&mut self, index: usize) -> Option<LinkName> {
        if index == 0 {
            if self.links.is_empty() {
                return None;
            }
            let next = self.links.remove(0);
            let old = LinkName {
                id: std::mem::replace(&mut self.id, next.id),
                parent: std::mem::replace(&mut self.parent, next.parent),
                name: std::mem::replace(&mut self.name, next.name),
            };
            Some(old)
        } else if index <= self.links.len() {
            Some(self.links.remove(index - 1))
        } else {
            None
        }
    }

    /// Points name number `index` (of [`Node::names`]) at `parent`/`name`.
    pub fn set_name(&mut self, index: usize, parent: Ino, name: &[u8]) {
        if index == 0 {
            self.parent = parent;
            self.name = name.to_vec();
        } else if let Some(l) = self.links.get_mut(index - 1) {
            l.parent = parent;
            l.name = name.to_vec();
        }
    }

    /// The attributes `stat` reports.
    pub fn attr(&self, ino: Ino) -> Attr {
        let (size, nlink) = match self.kind {
            Kind::Dir => (DIR_SIZE, 2 + self.subdirs),
            Kind::File => (self.size, self.nlink()),
            Kind::Symlink => (self.target.len() as u64, self.nlink()),
            Kind::Fifo | Kind::Socket | Kind::CharDevice | Kind::BlockDevice => (0, self.nlink()),
        };
        let blocks = match self.kind {
            Kind::Dir => DIR_SIZE / 512,
            Kind::Symlink | Kind::Fifo | Kind::Socket | Kind::CharDevice | Kind::BlockDevice => 0,
            // Until the backing file is stat'ed again, the size is the best estimate.
            Kind::File => self.blocks.unwrap_or(self.size.div_ceil(512)),
        };
        Attr {
            ino,
            kind: self.kind,
            size,
            blocks,
            atime: self.atime,
            mtime: self.mtime,
            ctime: self.ctime,
            perm: self.perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: self.rdev,
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
