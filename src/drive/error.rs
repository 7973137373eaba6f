//! The drive's error type: every failure a filesystem call can meet, each with its POSIX errno.

use std::io;

/// Why a drive operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    /// No node by that inode number or name.
    #[error("no such file or directory")]
    NotFound,
    /// The name is taken.
    #[error("file exists")]
    Exists,
    /// A directory that must be empty is not.
    #[error("directory not empty")]
    NotEmpty,
    /// A directory was needed.
    #[error("not a directory")]
    NotDir,
    /// A non-directory was needed.
    #[error("is a directory")]
    IsDir,
    /// A name longer than 255 bytes.
    #[error("file name too long")]
    NameTooLong,
    /// An argument the operation cannot accept (bad name, rename into itself, bad flags).
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    /// An operation the drive deliberately does not offer (hard links to directories,
    /// device nodes, FIFOs).
    #[error("operation not permitted: {0}")]
    NotPermitted(&'static str),
    /// A variant of an operation the drive does not implement (some fallocate modes, system xattrs).
    #[error("operation not supported: {0}")]
    NotSupported(&'static str),
    /// The inode has as many names as it may have.
    #[error("too many links")]
    TooManyLinks,
    /// The extended attribute does not exist.
    #[error("no such extended attribute")]
    NoXattr,
    /// The caller's buffer is too small for the answer.
    #[error("result does not fit the caller's buffer")]
    Range,
    /// An extended attribute value over the size limit.
    #[error("extended attribute value too large")]
    TooBig,
    /// A program is writing the file; the change must wait until it is closed.
    #[error("file is busy")]
    Busy,
    /// The file has local changes the server has not taken yet: another device's change
    /// must not replace or delete it.
    #[error("file has local changes")]
    LocalChanges,
    /// The file handle is not open.
    #[error("bad file handle")]
    BadHandle,
    /// An I/O error on the backing store.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The metadata database failed.
    #[error("metadata store: {0}")]
    Store(#[from] crate::drive::store::StoreError),
}

/// Shorthand for drive results.
pub type DriveResult<T> = Result<T, DriveError>;

impl DriveError {
    /// The errno a local filesystem would give for this failure.
    pub fn errno(&self) -> i32 {
        match self {
            DriveError::NotFound => libc::ENOENT,
            DriveError::Exists => libc::EEXIST,
            DriveError::NotEmpty => libc::ENOTEMPTY,
            DriveError::NotDir => libc::ENOTDIR,
            DriveError::IsDir => libc::EISDIR,
            DriveError::NameTooLong => libc::ENAMETOOLONG,
            DriveError::Invalid(_) => libc::EINVAL,
            DriveError::NotPermitted(_) => libc::EPERM,
            DriveError::NotSupported(_) => libc::EOPNOTSUPP,
            DriveError::TooManyLinks => libc::EMLINK,
            DriveError::NoXattr => libc::ENODATA,
            DriveError::Range => libc::ERANGE,
            DriveError::TooBig => libc::E2BIG,
            DriveError::BadHandle => libc::EBADF,
            DriveError::Busy | DriveError::LocalChanges => libc::EBUSY,
            DriveError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
            DriveError::Store(_) => libc::EIO,
        }
    }
}
