//! Incremental re-chunking: re-cut only around the bytes written since the previous version.
//!
//! FastCDC decides each cut from the bytes after the chunk's start (up to one byte past the
//! cut, at most `max` bytes) and from where the file ends. So an old chunk is still valid when
//! it starts where the new chunking starts a chunk, none of the bytes it looked at changed,
//! and the end of the file did not move into its view. We copy old chunks up to the one
//! holding the byte before the first dirty byte, cut anew from there, and go back to copying
//! as soon as a new cut lands on an old boundary past the last dirty byte. A change of length
//! counts as a dirty range at the end of the file. The result is exactly [`chunk_bytes`] of
//! the new content; the work is proportional to the edit plus a few chunks, and a copy of the
//! chunk list.
//!
//! [`chunk_bytes`]: super::chunk_bytes

use std::collections::VecDeque;
use std::io;
use std::ops::Range;

use super::chunker::ChunkError;
use super::params::ChunkerParams;
use super::source::ReadAt;
use super::{ChunkId, ChunkRef, Manifest};

/// Re-chunks `file` (now `file_len` bytes) after writes to `dirty` since `prev` was cut.
///
/// Contract: every byte of the file below `file_len` outside the dirty ranges is the byte
/// `prev` describes at the same offset (bytes past the old length need not be listed). Ranges
/// may overlap, be unsorted or reach past `file_len`. With no previous version pass an empty
/// manifest. `prev` must have been cut with the same `params`.
pub fn rechunk<S: ReadAt + ?Sized>(
    params: ChunkerParams,
    prev: &Manifest,
    file: &S,
    file_len: u64,
    dirty: &[Range<u64>],
) -> Result<Manifest, ChunkError> {
    rechunk_with(params, prev, file, file_len, dirty, |_, _, _| {})
}

/// [`rechunk`], handing each chunk it cuts anew to `cut` with its offset in the file and its
/// bytes (while they are in memory, e.g. to send them on). Chunks kept from `prev` are not handed out.
pub fn rechunk_with<S, F>(
    params: ChunkerParams,
    prev: &Manifest,
    file: &S,
    file_len: u64,
    dirty: &[Range<u64>],
    mut cut: F,
) -> Result<Manifest, ChunkError>
where
    S: ReadAt + ?Sized,
    F: FnMut(u64, ChunkRef, &[u8]),
{
    for (index, c) in prev.chunks.iter().enumerate() {
        if c.len == 0 || c.len > params.max() {
            return Err(ChunkError::ForeignManifest {
                index,
                len: c.len,
                max: params.max(),
            });
        }
    }
    if file_len == 0 {
        return Ok(Manifest::default());
    }
    let old_len = prev.size();
    let intervals = changed_intervals(dirty, old_len, file_len)?;
    let cutter = params.cutter();
    let max = cutter.max();
    let mut window = Window::new(file, file_len, 4 * max);
    let old = &prev.chunks;
    let mut out = Vec::with_capacity(old.len() + 8);
    // Old chunk `k` starts at `off`; between ranges the output covers exactly [0, off).
    let (mut k, mut off) = (0usize, 0u64);
    let mut next = 0;
    while next < intervals.len() {
        let (first_dirty, mut dirty_end) = intervals[next];
        next += 1;
        // Keep old chunks that end before the byte just before the dirty range: FastCDC read
        // one byte past each cut, which must be clean too.
        while k < old.len() && off + u64::from(old[k].len) < first_dirty {
            out.push(old[k]);
            off += u64::from(old[k].len);
            k += 1;
        }
        // The output covers [0, pos) while cutting anew.
        let mut pos = off;
        // Chunks already cut and hashed in one pass, the first starting at `pos`.
        let mut ahead: VecDeque<ChunkRef> = VecDeque::new();
        loop {
            if pos == file_len {
                return Ok(Manifest { chunks: out });
            }
            if ahead.is_empty() && dirty_end.saturating_sub(pos) >= FUSED_MIN_BYTES {
                cut_ahead(params, &mut window, pos, file_len, &mut ahead)?;
            }
            let chunk = match ahead.pop_front() {
                Some(chunk) => chunk,
                None => {
                    // `pos < file_len` here, so the window is 1..=max bytes.
                    let want = (file_len - pos).min(max as u64) as usize;
                    let bytes = window.get(pos, want)?;
                    let len = cutter.cut(bytes);
                    ChunkRef {
                        id: ChunkId::of(&bytes[..len]),
                        len: len as u32,
                    }
                }
            };
            cut(pos, chunk, window.get(pos, chunk.len as usize)?);
            out.push(chunk);
            pos += u64::from(chunk.len);
            // A later range whose first byte we already cut over joins this one.
            while next < intervals.len() && intervals[next].0 <= pos {
                dirty_end = dirty_end.max(intervals[next].1);
                next += 1;
            }
            while k < old.len() && off < pos {
                off += u64::from(old[k].len);
                k += 1;
            }
            // Back in step with the old cuts past the edit (and not at the end of the file,
            // where the old chunks that follow no longer exist).
            if pos >= dirty_end && pos < file_len && off == pos && k < old.len() {
                break;
            }
        }
    }
    out.extend_from_slice(&old[k..]);
    Ok(Manifest { chunks: out })
}

/// Stretches to cut anew at least this long (a new or rewritten file, not a small edit) go
/// through the one-pass cut + hash, a window at a time.
const FUSED_MIN_BYTES: u64 = 1 << 20;
/// Bytes cut and hashed in one pass at a time.
const FUSED_WINDOW: u64 = 8 << 20;

/// Cuts and hashes the window at `pos` in one pass into `ahead`, keeping only the chunks
/// whose cut is final: those with `max` bytes after their start inside the window, or all
/// of them when it reaches the end of the file. Leaves `ahead` empty where the one-pass
/// path does not apply (the caller then cuts chunk by chunk).
fn cut_ahead<S: ReadAt + ?Sized>(
    params: ChunkerParams,
    window: &mut Window<'_, S>,
    pos: u64,
    file_len: u64,
    ahead: &mut VecDeque<ChunkRef>,
) -> Result<(), ChunkError> {
    let n = (file_len - pos).min(FUSED_WINDOW) as usize;
    let bytes = window.get(pos, n)?;
    let Some(chunks) = super::fused::chunk_refs(params, bytes) else {
        return Ok(());
    };
    let (at_eof, max) = (pos + n as u64 == file_len, params.max() as usize);
    let mut start = 0usize;
    for c in chunks {
        if !at_eof && start + max > n {
            break;
        }
        ahead.push_back(c);
        start += c.len as usize;
    }
    Ok(())
}

/// The dirty ranges clipped to the file, with a length change added, sorted and merged.
fn changed_intervals(
    dirty: &[Range<u64>],
    old_len: u64,
    file_len: u64,
) -> Result<Vec<(u64, u64)>, ChunkError> {
    let mut intervals = Vec::with_capacity(dirty.len() + 1);
    for r in dirty {
        if r.end < r.start {
            return Err(ChunkError::ReversedRange {
                start: r.start,
                end: r.end,
            });
        }
        let (a, b) = (r.start.min(file_len), r.end.min(file_len));
        if a < b {
            intervals.push((a, b));
        }
    }
    if file_len > old_len {
        // Growth: the old last chunk was cut by the end of the file, and everything past
        // the old end is new.
        intervals.push((old_len, file_len));
    } else if file_len < old_len {
        // Shrink: the new end changes the cut of the chunks that now reach it.
        intervals.push((file_len.saturating_sub(1), file_len));
    }
    intervals.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(intervals.len());
    for (a, b) in intervals {
        match merged.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    Ok(merged)
}

/// A read-ahead buffer over positional reads.
struct Window<'a, S: ?Sized> {
    source: &'a S,
    file_len: u64,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    start: u64,
    /// Valid bytes in `buf`.
    filled: usize,
    read_ahead: usize,
}

impl<'a, S: ReadAt + ?Sized> Window<'a, S> {
    fn new(source: &'a S, file_len: u64, read_ahead: usize) -> Self {
        Self {
            source,
            file_len,
            buf: Vec::new(),
            start: 0,
            filled: 0,
            read_ahead,
        }
    }

    /// The `n` bytes at `pos`; the caller keeps `pos + n <= file_len`.
    fn get(&mut self, pos: u64, n: usize) -> Result<&[u8], ChunkError> {
        let buffered_end = self.start + self.filled as u64;
        if pos < self.start || pos + n as u64 > buffered_end {
            let want = (self.file_len - pos).min(self.read_ahead.max(n) as u64) as usize;
            // Keep what is already buffered from `pos` on; read only the rest.
            let kept = if (self.start..buffered_end).contains(&pos) {
                let at = (pos - self.start) as usize;
                self.buf.copy_within(at..self.filled, 0);
                self.filled - at
            } else {
                0
            };
            self.buf.resize(want, 0);
            let from = pos + kept as u64;
            self.source
                .read_exact_at(&mut self.buf[kept..], from)
                .map_err(|source| match source.kind() {
                    io::ErrorKind::UnexpectedEof => ChunkError::Truncated {
                        offset: from,
                        expected: self.file_len,
                    },
                    _ => ChunkError::Read {
                        offset: from,
                        source,
                    },
                })?;
            self.start = pos;
            self.filled = want;
        }
        let at = (pos - self.start) as usize;
        Ok(&self.buf[at..at + n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunking::chunk_bytes;
    use crate::chunking::seeded::seeded_bytes as data;

    fn small() -> ChunkerParams {
        ChunkerParams::new(64, 256, 1024).unwrap()
    }

    #[test]
    fn intervals_merge_and_include_length_changes() {
        assert_eq!(
            changed_intervals(&[5..9, 0..2, 8..12, 40..50], 30, 45).unwrap(),
            vec![(0, 2), (5, 12), (30, 45)]
        );
        assert_eq!(
            changed_intervals(&[3..3, 4..4], 30, 20).unwrap(),
            vec![(19, 20)]
        );
        assert!(matches!(
            changed_intervals(&[Range { start: 9, end: 3 }], 30, 30),
            Err(ChunkError::ReversedRange { start: 9, end: 3 })
        ));
    }

    #[test]
    fn long_stretches_cut_in_one_pass_match_cutting_chunk_by_chunk() {
        use crate::chunking::chunk_bytes_plain;
        let p = ChunkerParams::default();
        // Three windows and a tail, with a run of one byte value across a window's end.
        let mut old = data(20 << 20, 11);
        old[(8 << 20) - 100_000..(8 << 20) + 100_000].fill(9);
        let whole = chunk_bytes_plain(p, &old);
        let new_file = rechunk(p, &Manifest::default(), &old[..], old.len() as u64, &[]).unwrap();
        assert_eq!(new_file, whole);
        // A 3 MiB rewrite in the middle: cut in one pass, then back in step with the old cuts.
        let mut new = old.clone();
        new[(9 << 20)..(12 << 20)].copy_from_slice(&data(3 << 20, 12));
        let dirty = [Range {
            start: 9u64 << 20,
            end: 12u64 << 20,
        }];
        let mut handed = 0u64;
        let got = rechunk_with(p, &whole, &new[..], new.len() as u64, &dirty, |at, c, b| {
            assert_eq!(ChunkId::of(b), c.id);
            assert_eq!(b, &new[at as usize..at as usize + b.len()]);
            handed += u64::from(c.len);
        })
        .unwrap();
        assert_eq!(got, chunk_bytes_plain(p, &new));
        // Only about the rewritten stretch was cut anew, not the rest of the file.
        assert!(handed < 4 << 20, "{handed} bytes cut anew");
    }

    #[test]
    fn overwrite_in_the_middle_matches_whole_file() {
        let p = small();
        let old = data(100_000, 7);
        let prev = chunk_bytes(p, &old);
        let mut new = old.clone();
        new[50_000..50_010].copy_from_slice(&[0xAA; 10]);
        let edit = 50_000..50_010;
        let got = rechunk(
            p,
            &prev,
            &new,
            new.len() as u64,
            std::slice::from_ref(&edit),
        )
        .unwrap();
        assert_eq!(got, chunk_bytes(p, &new));
    }

    #[test]
    fn rechunk_with_hands_out_each_new_chunk_with_its_bytes() {
        let p = small();
        let old = data(100_000, 9);
        let prev = chunk_bytes(p, &old);
        let mut new = old.clone();
        new[60_000..60_003].copy_from_slice(&[1, 2, 3]);
        let mut handed = Vec::new();
        let got = rechunk_with(
            p,
            &prev,
            &new,
            new.len() as u64,
            std::slice::from_ref(&(60_000..60_003)),
            |at, c, b| {
                assert_eq!(ChunkId::of(b), c.id);
                assert_eq!(b.len(), c.len as usize);
                // The offset handed out is where the chunk is in the file.
                assert_eq!(b, &new[at as usize..at as usize + b.len()]);
                handed.push(c);
            },
        )
        .unwrap();
        assert_eq!(got, chunk_bytes(p, &new));
        // Exactly the chunks that are not the old ones at the same place, in file order.
        let kept_before = got
            .chunks
            .iter()
            .zip(&prev.chunks)
            .take_while(|(a, b)| a == b);
        let kept_after = got.chunks.iter().rev().zip(prev.chunks.iter().rev());
        let (before, after) = (
            kept_before.count(),
            kept_after.take_while(|(a, b)| a == b).count(),
        );
        assert!(!handed.is_empty() && handed.len() < got.chunks.len() / 4);
        assert_eq!(handed, got.chunks[before..got.chunks.len() - after]);
    }

    #[test]
    fn edges_at_odd_lengths_match_whole_file() {
        // Truncate and extend by one byte at every small length, where FastCDC's pairwise
        // scan treats the last byte of an odd-length tail specially.
        let p = small();
        let base = data(5_000, 3);
        for old_len in [1999usize, 2000, 2001, 2048, 2049] {
            let prev = chunk_bytes(p, &base[..old_len]);
            for new_len in old_len.saturating_sub(70)..old_len + 70 {
                let new = &base[..new_len];
                let got = rechunk(p, &prev, new, new_len as u64, &[]).unwrap();
                assert_eq!(got, chunk_bytes(p, new), "{old_len} -> {new_len}");
            }
        }
    }

    #[test]
    fn regression_truncation_onto_an_old_boundary_drops_the_tail() {
        // A new cut landing on the new end of file also lands on an old boundary; that is
        // not a resync, since the old chunks after it are gone.
        let p = small();
        let old = data(12_000, 21);
        let prev = chunk_bytes(p, &old);
        for (offset, _) in prev.offsets().skip(1).step_by(5) {
            let new = &old[..offset as usize];
            let got = rechunk(p, &prev, new, offset, &[]).unwrap();
            assert_eq!(got, chunk_bytes(p, new), "truncate to {offset}");
        }
    }

    #[test]
    fn no_change_copies_the_manifest() {
        let p = small();
        let old = data(20_000, 5);
        let prev = chunk_bytes(p, &old);
        assert_eq!(rechunk(p, &prev, &old, 20_000, &[]).unwrap(), prev);
        assert_eq!(
            rechunk(p, &prev, &old, 0, &[]).unwrap(),
            Manifest::default()
        );
    }

    #[test]
    fn foreign_manifest_and_short_file_are_typed_errors() {
        let p = small();
        let prev = Manifest {
            chunks: vec![ChunkRef {
                id: ChunkId::of(b"x"),
                len: 5000,
            }],
        };
        assert!(matches!(
            rechunk(p, &prev, &[0u8; 10][..], 10, &[]),
            Err(ChunkError::ForeignManifest { index: 0, .. })
        ));
        let err = rechunk(p, &Manifest::default(), &[0u8; 10][..], 20, &[]).unwrap_err();
        assert!(matches!(err, ChunkError::Truncated { expected: 20, .. }));
    }
}
