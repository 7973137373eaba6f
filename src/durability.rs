//! Disk writes started early: the kernel writes dirty pages while the program goes on, so
//! the fsync that makes them durable later has little left to wait for. Also the disk's
//! free space, for those who must not fill it.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// The statistics of the filesystem holding `path` (statvfs).
pub fn fs_stats(path: &Path) -> io::Result<libc::statvfs> {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a valid C string and `st` points to writable memory of the right type.
    if unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    Ok(unsafe { st.assume_init() })
}

/// Asks the kernel to start writing `file`'s dirty pages in `offset..offset + len` (to the
/// end of the file if `len` is 0) to disk, without waiting. Durability still needs an fsync.
pub fn start_writeback(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // SAFETY: sync_file_range only reads the descriptor, which `file` keeps open.
    let r = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
