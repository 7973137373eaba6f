//! Whole-file chunking: in memory, or streaming from a reader in bounded memory.

use std::fs::File;
use std::io::{self, Read};

use super::params::{ChunkerParams, Cutter};
use super::{ChunkId, ChunkRef, Manifest};

/// Why chunking a file failed.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// Reading the content failed.
    #[error("reading file content at offset {offset}: {source}")]
    Read {
        /// Where the read started.
        offset: u64,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The file ended before the length the caller gave.
    #[error("file ended at offset {offset}, before its expected length {expected}")]
    Truncated {
        /// Where the data ended.
        offset: u64,
        /// The length the caller said the file has.
        expected: u64,
    },
    /// A dirty range ends before it starts.
    #[error("dirty range {start}..{end} is reversed")]
    ReversedRange {
        /// Start of the range.
        start: u64,
        /// End of the range.
        end: u64,
    },
    /// The previous manifest has a chunk no cut with these parameters can produce.
    #[error("previous manifest chunk {index} has length {len}, impossible with maximum {max}")]
    ForeignManifest {
        /// Index of the chunk.
        index: usize,
        /// Its length.
        len: u32,
        /// The parameters' maximum chunk size.
        max: u32,
    },
}

/// One chunk as it is cut: where it starts, its id and length, and its bytes.
#[derive(Clone, Copy, Debug)]
pub struct Chunk<'a> {
    /// Offset of the chunk's first byte in the file.
    pub offset: u64,
    /// The chunk's id and length.
    pub chunk: ChunkRef,
    /// The chunk's bytes (borrowed from the chunker's buffer until the next call).
    pub bytes: &'a [u8],
}

fn chunk_ref(bytes: &[u8]) -> ChunkRef {
    ChunkRef {
        id: ChunkId::of(bytes),
        // A cut is never longer than `max`, which is at most 16 MiB.
        len: bytes.len() as u32,
    }
}

/// Chunks bytes already in memory (cutting and hashing in one pass where the CPU allows).
pub fn chunk_bytes(params: ChunkerParams, data: &[u8]) -> Manifest {
    if let Some(chunks) = super::fused::chunk_refs(params, data) {
        return Manifest { chunks };
    }
    chunk_bytes_plain(params, data)
}

/// [`chunk_bytes`] the plain way: each cut, then its hash.
pub fn chunk_bytes_plain(params: ChunkerParams, data: &[u8]) -> Manifest {
    let cutter = params.cutter();
    let mut chunks = Vec::with_capacity(data.len() / params.avg() as usize + 1);
    let mut pos = 0;
    while pos < data.len() {
        let end = data.len().min(pos + cutter.max());
        let len = cutter.cut(&data[pos..end]);
        chunks.push(chunk_ref(&data[pos..pos + len]));
        pos += len;
    }
    Manifest { chunks }
}

/// Chunks everything `reader` yields, holding at most a couple of maximum chunks in memory.
pub fn chunk_reader<R: Read>(params: ChunkerParams, reader: R) -> Result<Manifest, ChunkError> {
    let mut chunker = StreamChunker::new(params, reader);
    let mut chunks = Vec::new();
    while let Some(c) = chunker.next_chunk()? {
        chunks.push(c.chunk);
    }
    Ok(Manifest { chunks })
}

/// Chunks a whole file, as long as it is now, from offset 0 (positional reads: the file's
/// cursor is not used). Cut and hashed in one pass, 8 MiB at a time, where the CPU allows.
pub fn chunk_file(params: ChunkerParams, file: &File) -> Result<Manifest, ChunkError> {
    let len = file
        .metadata()
        .map_err(|source| ChunkError::Read { offset: 0, source })?
        .len();
    // Against an empty previous manifest the whole file is one stretch to cut anew.
    super::rechunk(params, &Manifest::default(), file, len, &[])
}

/// Cuts a stream into chunks one at a time, in bounded memory, handing out each chunk's bytes.
pub struct StreamChunker<R> {
    reader: R,
    cutter: Cutter,
    buf: Vec<u8>,
    /// First byte of `buf` not yet handed out.
    start: usize,
    /// One past the last valid byte of `buf`.
    end: usize,
    /// Stream offset of `buf[start]`.
    offset: u64,
    eof: bool,
}

impl<R: Read> StreamChunker<R> {
    /// A chunker over `reader`; its buffer is twice the maximum chunk, at least 1 MiB.
    pub fn new(params: ChunkerParams, reader: R) -> Self {
        let cutter = params.cutter();
        let capacity = (2 * cutter.max()).max(1 << 20);
        Self {
            reader,
            cutter,
            buf: vec![0; capacity],
            start: 0,
            end: 0,
            offset: 0,
            eof: false,
        }
    }

    /// Reads until a whole maximum chunk is buffered or the stream ends.
    fn fill(&mut self) -> Result<(), ChunkError> {
        if self.eof || self.end - self.start >= self.cutter.max() {
            return Ok(());
        }
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        while self.end < self.buf.len() {
            match self.reader.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(ChunkError::Read {
                        offset: self.offset + (self.end - self.start) as u64,
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// The next chunk, or `None` at the end of the stream.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk<'_>>, ChunkError> {
        self.fill()?;
        if self.start == self.end {
            return Ok(None);
        }
        let window_end = self.end.min(self.start + self.cutter.max());
        let len = self.cutter.cut(&self.buf[self.start..window_end]);
        let bytes = &self.buf[self.start..self.start + len];
        let chunk = Chunk {
            offset: self.offset,
            chunk: chunk_ref(bytes),
            bytes,
        };
        self.start += len;
        self.offset += len as u64;
        Ok(Some(chunk))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out at most 7 bytes per call, to exercise refills.
    struct Dribble<'a>(&'a [u8]);

    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.0.len()).min(7);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn data(len: usize) -> Vec<u8> {
        let mut x = 0x1234_5678_9abc_def0u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn streaming_equals_in_memory_and_fastcdc() {
        let d = data(3 << 20);
        let p = ChunkerParams::default();
        let mem = chunk_bytes(p, &d);
        let streamed = chunk_reader(p, Dribble(&d[..200_000])).unwrap();
        assert_eq!(streamed, chunk_bytes(p, &d[..200_000]));
        assert_eq!(chunk_reader(p, &d[..]).unwrap(), mem);
        let reference: Vec<usize> = fastcdc::v2020::FastCDC::new(&d, 4096, 16384, 65536)
            .map(|c| c.length)
            .collect();
        let ours: Vec<usize> = mem.chunks.iter().map(|c| c.len as usize).collect();
        assert_eq!(ours, reference);
        assert_eq!(mem.size(), d.len() as u64);
    }

    #[test]
    fn stream_chunks_carry_offsets_and_bytes() {
        let d = data(500_000);
        let mut chunker = StreamChunker::new(ChunkerParams::default(), &d[..]);
        let mut expected_offset = 0u64;
        while let Some(c) = chunker.next_chunk().unwrap() {
            assert_eq!(c.offset, expected_offset);
            let at = c.offset as usize;
            assert_eq!(c.bytes, &d[at..at + c.chunk.len as usize]);
            assert_eq!(c.chunk.id, ChunkId::of(c.bytes));
            expected_offset += u64::from(c.chunk.len);
        }
        assert_eq!(expected_offset, d.len() as u64);
    }

    #[test]
    fn file_is_chunked_from_offset_zero_whatever_its_cursor() {
        let d = data(300_000);
        let mut f = tempfile::tempfile().unwrap();
        io::Write::write_all(&mut f, &d).unwrap();
        // The cursor is now at the end; chunk_file must not care.
        assert_eq!(
            chunk_file(ChunkerParams::default(), &f).unwrap(),
            chunk_bytes(ChunkerParams::default(), &d)
        );
    }

    #[test]
    fn empty_input_has_no_chunks() {
        assert!(chunk_bytes(ChunkerParams::default(), &[]).chunks.is_empty());
        assert!(
            chunk_reader(ChunkerParams::default(), io::empty())
                .unwrap()
                .chunks
                .is_empty()
        );
    }

    #[test]
    fn read_errors_are_reported_with_their_offset() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
        }
        let err = chunk_reader(ChunkerParams::default(), Failing).unwrap_err();
        assert!(matches!(err, ChunkError::Read { offset: 0, .. }));
    }
}
