//! Conversions from the drive's attributes to fuser's.

use fuser::{FileAttr, FileType, INodeNo};

use crate::drive::{Attr, Kind, from_nanos};

/// The fuser file type of a node kind.
pub fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDevice => FileType::CharDevice,
        Kind::BlockDevice => FileType::BlockDevice,
    }
}

/// The attributes fuser sends to the kernel.
pub fn to_file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: from_nanos(a.atime),
        mtime: from_nanos(a.mtime),
        ctime: from_nanos(a.ctime),
        crtime: from_nanos(a.ctime),
        kind: file_type(a.kind),
        // Permission bits only; fuser adds the type bits from `kind`.
        perm: (a.perm & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: 4096,
        flags: 0,
    }
}

/// The attributes of a negative entry: inode 0 tells the kernel to cache the absence.
pub fn negative() -> FileAttr {
    let zero = std::time::UNIX_EPOCH;
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: zero,
        mtime: zero,
        ctime: zero,
        crtime: zero,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}
