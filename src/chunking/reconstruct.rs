//! Rebuilding a file's content from its base file plus supplied chunks, verifying every chunk.

use std::collections::HashMap;
use std::io::{self, Write};

use super::params::MAX_CHUNK_LEN;
use super::source::ReadAt;
use super::{ChunkId, ChunkRef, Manifest, VerifiedChunk};

/// Where reconstruction finds chunks the base file cannot give (fetched, cached, ...).
pub trait ChunkSource {
    /// The chunk, or `None` if this source does not have it.
    fn chunk(&mut self, chunk: &ChunkRef) -> io::Result<Option<VerifiedChunk>>;
}

impl ChunkSource for HashMap<ChunkId, VerifiedChunk> {
    fn chunk(&mut self, chunk: &ChunkRef) -> io::Result<Option<VerifiedChunk>> {
        Ok(self.get(&chunk.id).cloned())
    }
}

impl<T: ChunkSource + ?Sized> ChunkSource for &mut T {
    fn chunk(&mut self, chunk: &ChunkRef) -> io::Result<Option<VerifiedChunk>> {
        (**self).chunk(chunk)
    }
}

/// Why a file could not be rebuilt.
#[derive(Debug, thiserror::Error)]
pub enum ReconstructError {
    /// Reading the base file failed (other than it being too short).
    #[error("reading base file at offset {offset}: {source}")]
    ReadBase {
        /// Where the read started.
        offset: u64,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The supplied-chunk source failed.
    #[error("fetching chunk {id}: {source}")]
    Source {
        /// The chunk asked for.
        id: ChunkId,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Neither the base file nor the supplied chunks have a chunk the target needs.
    #[error("chunk {index} ({id}) is neither in the base file nor supplied")]
    Missing {
        /// Position of the chunk in the target manifest.
        index: usize,
        /// Its id.
        id: ChunkId,
    },
    /// The source handed back a different chunk from the one asked for, or one of another
    /// length than the manifest says.
    #[error(
        "chunk {index}: asked for {expected} of {expected_len} bytes, got {actual} ({len} bytes)"
    )]
    WrongChunk {
        /// Position of the chunk in the target manifest.
        index: usize,
        /// The id asked for.
        expected: ChunkId,
        /// The length the manifest gives it.
        expected_len: u32,
        /// The id received.
        actual: ChunkId,
        /// The length received.
        len: usize,
    },
    /// The target names a chunk no chunker can cut (empty, or over [`MAX_CHUNK_LEN`]).
    #[error("chunk {index} has impossible length {len}")]
    BadChunkLength {
        /// Position of the chunk in the target manifest.
        index: usize,
        /// The length it claims.
        len: u32,
    },
    /// Writing the output failed.
    #[error("writing reconstructed content: {0}")]
    Write(#[source] io::Error),
}

/// Reads `chunk` from `source` at `offset`; `None` if the bytes there are not that chunk.
///
/// A length over [`MAX_CHUNK_LEN`] is `None` without reading: a manifest from elsewhere
/// cannot make this allocate more than one maximum chunk.
pub fn read_verified<S: ReadAt + ?Sized>(
    source: &S,
    offset: u64,
    chunk: &ChunkRef,
) -> io::Result<Option<VerifiedChunk>> {
    if chunk.len > MAX_CHUNK_LEN {
        return Ok(None);
    }
    let mut buf = vec![0u8; chunk.len as usize];
    match source.read_exact_at(&mut buf, offset) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let verified = VerifiedChunk::new(buf);
    Ok((verified.id() == chunk.id).then_some(verified))
}

/// Writes `target`'s content to `out`, chunk by chunk, and returns the bytes written.
///
/// Chunks present in `base` are read from `base_file` at the offsets `base` gives; the rest,
/// and any base chunk whose bytes no longer match (the file changed under us), come from
/// `supplied`. Every chunk is verified against its id before it is written, so `out` never
/// receives a wrong byte; on error it may hold a prefix of the content.
pub fn reconstruct<B, C, W>(
    base: &Manifest,
    base_file: &B,
    mut supplied: C,
    target: &Manifest,
    mut out: W,
) -> Result<u64, ReconstructError>
where
    B: ReadAt + ?Sized,
    C: ChunkSource,
    W: Write,
{
    let mut in_base: HashMap<ChunkRef, u64> = HashMap::with_capacity(base.chunks.len());
    for (offset, c) in base.offsets() {
        in_base.entry(c).or_insert(offset);
    }
    let mut written = 0u64;
    for (index, c) in target.chunks.iter().enumerate() {
        if c.len == 0 || c.len > MAX_CHUNK_LEN {
            return Err(ReconstructError::BadChunkLength { index, len: c.len });
        }
        let mut chunk = None;
        if let Some(&offset) = in_base.get(c) {
            chunk = read_verified(base_file, offset, c)
                .map_err(|source| ReconstructError::ReadBase { offset, source })?;
            if chunk.is_none() {
                tracing::warn!(%c.id, offset, "base file no longer holds chunk; using supplied");
            }
        }
        let chunk = match chunk {
            Some(chunk) => chunk,
            None => supplied
                .chunk(c)
                .map_err(|source| ReconstructError::Source { id: c.id, source })?
                .ok_or(ReconstructError::Missing { index, id: c.id })?,
        };
        if chunk.id() != c.id || chunk.bytes().len() != c.len as usize {
            return Err(ReconstructError::WrongChunk {
                index,
                expected: c.id,
                expected_len: c.len,
                actual: chunk.id(),
                len: chunk.bytes().len(),
            });
        }
        out.write_all(chunk.bytes())
            .map_err(ReconstructError::Write)?;
        written += u64::from(c.len);
    }
    out.flush().map_err(ReconstructError::Write)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunking::seeded::seeded_bytes as data;
    use crate::chunking::{ChunkerParams, chunk_bytes};

    fn supplied_for(new: &[u8], m: &Manifest, base: &Manifest) -> HashMap<ChunkId, VerifiedChunk> {
        let mut map = HashMap::new();
        for (offset, c) in m.offsets() {
            if !base.chunks.contains(&c) {
                let at = offset as usize;
                let v = VerifiedChunk::new(new[at..at + c.len as usize].to_vec());
                map.insert(v.id(), v);
            }
        }
        map
    }

    #[test]
    fn rebuilds_new_content_from_base_and_supplied_chunks() {
        let p = ChunkerParams::new(64, 256, 1024).unwrap();
        let old = data(50_000, 9);
        let mut new = old[..20_000].to_vec();
        new.extend_from_slice(&data(3_000, 10));
        new.extend_from_slice(&old[20_000..]);
        let (base, target) = (chunk_bytes(p, &old), chunk_bytes(p, &new));
        let mut supplied = supplied_for(&new, &target, &base);
        assert!(supplied.len() < target.chunks.len() / 4);
        let mut out = Vec::new();
        let n = reconstruct(&base, &old, &mut supplied, &target, &mut out).unwrap();
        assert_eq!(n, new.len() as u64);
        assert_eq!(out, new);
    }

    #[test]
    fn impossible_chunk_length_is_refused_before_reading() {
        let target = Manifest {
            chunks: vec![ChunkRef {
                id: ChunkId::of(b"x"),
                len: u32::MAX,
            }],
        };
        let err =
            reconstruct(&target, &[0u8; 4][..], HashMap::new(), &target, Vec::new()).unwrap_err();
        assert!(matches!(
            err,
            ReconstructError::BadChunkLength { index: 0, .. }
        ));
        assert!(
            read_verified(&[0u8; 4][..], 0, &target.chunks[0])
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn missing_chunk_is_an_error() {
        let p = ChunkerParams::new(64, 256, 1024).unwrap();
        let old = data(10_000, 1);
        let new = data(10_000, 2);
        let (base, target) = (chunk_bytes(p, &old), chunk_bytes(p, &new));
        let err = reconstruct(&base, &old, HashMap::new(), &target, Vec::new()).unwrap_err();
        assert!(matches!(err, ReconstructError::Missing { index: 0, .. }));
    }

    #[test]
    fn changed_base_file_falls_back_to_supplied_or_fails() {
        let p = ChunkerParams::new(64, 256, 1024).unwrap();
        let old = data(10_000, 4);
        let base = chunk_bytes(p, &old);
        let mut corrupted = old.clone();
        corrupted[5_000] ^= 1;
        // Without the chunk supplied, the corrupted base byte is never written.
        let err = reconstruct(&base, &corrupted, HashMap::new(), &base, Vec::new()).unwrap_err();
        assert!(matches!(err, ReconstructError::Missing { .. }));
        // With it supplied, the content comes out right.
        let mut supplied = HashMap::new();
        for (offset, c) in base.offsets() {
            let at = offset as usize;
            let v = VerifiedChunk::new(old[at..at + c.len as usize].to_vec());
            supplied.insert(v.id(), v);
        }
        let mut out = Vec::new();
        reconstruct(&base, &corrupted, &mut supplied, &base, &mut out).unwrap();
        assert_eq!(out, old);
    }

    #[test]
    fn a_source_answering_with_the_wrong_chunk_is_refused() {
        struct Liar;
        impl ChunkSource for Liar {
            fn chunk(&mut self, _: &ChunkRef) -> io::Result<Option<VerifiedChunk>> {
                Ok(Some(VerifiedChunk::new(b"not it".to_vec())))
            }
        }
        let target = chunk_bytes(ChunkerParams::default(), b"hello");
        let err = reconstruct(
            &Manifest::default(),
            &[0u8; 0][..],
            Liar,
            &target,
            Vec::new(),
        )
        .unwrap_err();
        assert!(matches!(err, ReconstructError::WrongChunk { index: 0, .. }));
    }
}
