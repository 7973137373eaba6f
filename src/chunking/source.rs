//! Positional reads (pread), so a file can be read at manifest offsets without a shared cursor.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Something that can be read at an offset without moving a cursor: a file, or bytes in memory.
pub trait ReadAt {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many (0 at end of data).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// Fills `buf` from `offset`, failing with `UnexpectedEof` if the data ends first.
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl ReadAt for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let Ok(start) = usize::try_from(offset) else {
            return Ok(0);
        };
        let Some(rest) = self.get(start..) else {
            return Ok(0);
        };
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        Ok(n)
    }
}

impl ReadAt for Vec<u8> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.as_slice().read_at(buf, offset)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        (**self).read_at(buf, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_reads_at_offsets_and_reports_eof() {
        let data = b"hello world".to_vec();
        let mut buf = [0u8; 5];
        data.read_exact_at(&mut buf, 6).unwrap();
        assert_eq!(&buf, b"world");
        assert_eq!(data.read_at(&mut buf, 11).unwrap(), 0);
        assert_eq!(data.read_at(&mut buf, u64::MAX).unwrap(), 0);
        let err = data.read_exact_at(&mut buf, 8).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn file_reads_at_offsets() {
        let mut f = tempfile::tempfile().unwrap();
        io::Write::write_all(&mut f, b"0123456789").unwrap();
        let mut buf = [0u8; 3];
        ReadAt::read_exact_at(&f, &mut buf, 4).unwrap();
        assert_eq!(&buf, b"456");
    }
}
