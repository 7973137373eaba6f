//! Disk writes started early: the kernel writes dirty pages while the program goes on, so
//! the fsync that makes them durable later has little left to wait for.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

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
