//! Rebuilding a file's content from the chunks this device already has (the base version's
//! backing file) plus the chunks it fetches, into a staged file the drive then renames in.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use crate::chunking::{ChunkId, ChunkRef, Manifest, VerifiedChunk, read_verified, reconstruct};
use crate::drive::Drive;
use crate::durability::start_writeback;
use crate::protocol::{NodeId, TxnId};
use crate::remote::Remote;

use super::SyncError;
use super::prefetch::Prefetch;

/// A staged file that is removed unless it was handed over.
#[derive(Debug)]
pub struct Staged {
    path: Option<PathBuf>,
}

impl Staged {
    /// A file already staged elsewhere (on the same filesystem), now this one's to clean up.
    fn adopt(path: PathBuf) -> Staged {
        Staged { path: Some(path) }
    }

    /// A fresh name in the drive's staging directory.
    pub(crate) fn new(drive: &Drive) -> Result<Staged, SyncError> {
        let dir = drive.staging_dir()?;
        Ok(Staged {
            path: Some(dir.join(format!("{}.part", TxnId::random()))),
        })
    }

    /// Where the content is.
    pub fn path(&self) -> &std::path::Path {
        self.path.as_deref().unwrap_or(std::path::Path::new(""))
    }

    /// The content was moved into place: nothing to clean up.
    pub fn handed_over(mut self) {
        self.path = None;
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Writes node `node`'s new content, `target`, to a staged file, reading what it can from
/// `base` (a node whose backing file holds that manifest's bytes) and fetching the rest. The
/// bytes fetched follow the size of the change, not of the file. If `prefetch` fetched
/// chunks of it ahead, its staged file is taken over and what is in place stays.
pub fn materialize(
    drive: &Drive,
    remote: &Remote,
    prefetch: Option<&Prefetch>,
    node: NodeId,
    base: Option<(NodeId, &Manifest)>,
    target: &Manifest,
) -> Result<Staged, SyncError> {
    let (staged, in_place) = match prefetch.and_then(|p| p.claim(node)) {
        Some(claimed) => (Staged::adopt(claimed.path), claimed.chunks),
        None => (Staged::new(drive)?, BTreeMap::new()),
    };
    write_content(drive, remote, base, target, staged.path(), &in_place)?;
    Ok(staged)
}

/// Writes a new file's content to a staged file from chunks already fetched (`supplied`
/// must hold every chunk of `target`), without an fsync: for many small files at once,
/// made durable by one [`sync_staging`] before any of them is placed.
pub fn materialize_from_unsynced(
    drive: &Drive,
    supplied: &mut HashMap<ChunkId, VerifiedChunk>,
    target: &Manifest,
) -> Result<Staged, SyncError> {
    let staged = Staged::new(drive)?;
    write_from(drive, None, supplied, target, staged.path(), false)?;
    Ok(staged)
}

/// Makes every staged file durable with one syncfs of the staging directory's filesystem.
pub fn sync_staging(drive: &Drive) -> Result<(), SyncError> {
    use std::os::fd::AsRawFd;
    let dir = File::open(drive.staging_dir()?)?;
    // SAFETY: syncfs only reads the descriptor, which `dir` keeps open.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

/// Chunks asked for in one go by one fetcher (about this many bytes of content).
const PART_BYTES: u64 = 32 << 20;
/// Fetchers working at once: each asks for a part, checks each chunk as it arrives and
/// writes it where it goes, so the network, the hashing and the writes overlap.
const FETCHERS: usize = 3;

/// Where each distinct chunk of a manifest goes that is not already `in_place` (the same
/// chunk at the same offset): its length and its offsets, in file order; and the bytes
/// already in place.
fn placements(
    target: &Manifest,
    in_place: &BTreeMap<u64, ChunkRef>,
) -> (Vec<ChunkRef>, HashMap<ChunkId, Vec<u64>>, u64) {
    let mut order = Vec::new();
    let mut places: HashMap<ChunkId, Vec<u64>> = HashMap::new();
    let mut kept = 0;
    for (offset, c) in target.offsets() {
        if in_place.get(&offset) == Some(&c) {
            kept += u64::from(c.len);
            continue;
        }
        let at = places.entry(c.id).or_default();
        if at.is_empty() {
            order.push(c);
        }
        at.push(offset);
    }
    (order, places, kept)
}

fn write_content(
    drive: &Drive,
    remote: &Remote,
    base: Option<(NodeId, &Manifest)>,
    target: &Manifest,
    path: &std::path::Path,
    in_place: &BTreeMap<u64, ChunkRef>,
) -> Result<(), SyncError> {
    let (order, places, kept) = placements(target, in_place);
    // Not truncated: a prefetched file keeps the chunks in place.
    let file = crate::private::file_options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    file.set_len(target.size())?;
    let out = Placer {
        file: &file,
        places: &places,
        writing: Mutex::new(()),
    };
    // What the base version's file holds is read from it (and checked); the rest is fetched.
    let (in_base, base_file): (HashMap<ChunkId, u64>, _) = match base {
        Some((node, m)) => (
            m.offsets().map(|(offset, c)| (c.id, offset)).collect(),
            Some(drive.open_content(node)?),
        ),
        None => (HashMap::new(), None),
    };
    let mut need: Vec<ChunkRef> = order
        .iter()
        .filter(|c| !in_base.contains_key(&c.id))
        .copied()
        .collect();
    let started = std::time::Instant::now();
    let mut written = kept + fetch_into(remote, &need, &out)?;
    let fetched = started.elapsed();
    need.clear();
    if let Some(base_file) = &base_file {
        let mut run = Run::default();
        for (c, offset) in order
            .iter()
            .filter_map(|c| in_base.get(&c.id).map(|&offset| (c, offset)))
        {
            match read_verified(base_file, offset, c)? {
                Some(chunk) => written += out.put(&mut run, chunk.bytes(), &c.id)?,
                // The base file changed under us (a local edit raced the remote one).
                None => need.push(*c),
            }
        }
        out.flush(&mut run)?;
    }
    written += fetch_into(remote, &need, &out)?;
    if written != target.size() {
        return Err(SyncError::Misfit(format!(
            "rebuilt {written} bytes of a {} byte file",
            target.size()
        )));
    }
    let rebuilt = started.elapsed();
    file.sync_all()?;
    tracing::debug!(
        bytes = written,
        in_place = kept,
        fetch_ms = fetched.as_millis(),
        rebuild_ms = rebuilt.as_millis(),
        fsync_ms = (started.elapsed() - rebuilt).as_millis(),
        "content rebuilt"
    );
    Ok(())
}

/// Chunks that follow one another in the file, gathered so that the kernel gets a few large
/// writes instead of one per chunk (each small unaligned write costs a page-cache walk and the
/// zeroing of the blocks it only partly covers).
#[derive(Default)]
struct Run {
    start: u64,
    bytes: Vec<u8>,
}

/// Largest run of consecutive chunks gathered before it is written.
pub(super) const RUN_BYTES: usize = 4 << 20;

/// Writes chunks where the target manifest places them, in the staged file.
struct Placer<'a> {
    file: &'a File,
    places: &'a HashMap<ChunkId, Vec<u64>>,
    /// Writes to one file go one at a time in the kernel anyway (the inode lock); taking
    /// turns here lets the other fetchers sleep instead of spinning on that lock.
    writing: Mutex<()>,
}

impl Placer<'_> {
    /// Places one chunk: appended to `run` if it goes right after it (and only there),
    /// else written now. Returns the bytes it accounts for (its length times its places).
    fn put(&self, run: &mut Run, chunk: &[u8], id: &ChunkId) -> std::io::Result<u64> {
        let at = self.places.get(id).map_or(&[][..], Vec::as_slice);
        if let [offset] = *at {
            let follows = run.start + run.bytes.len() as u64 == offset;
            if !(follows && run.bytes.len() + chunk.len() <= RUN_BYTES) {
                self.flush(run)?;
                run.start = offset;
            }
            if run.bytes.capacity() == 0 {
                run.bytes.reserve(RUN_BYTES);
            }
            run.bytes.extend_from_slice(chunk);
            return Ok(chunk.len() as u64);
        }
        let _turn = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        for &offset in at {
            self.file.write_all_at(chunk, offset)?;
        }
        Ok(chunk.len() as u64 * at.len() as u64)
    }

    /// Writes what `run` gathered, and empties it.
    fn flush(&self, run: &mut Run) -> std::io::Result<()> {
        if !run.bytes.is_empty() {
            let _turn = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
            self.file.write_all_at(&run.bytes, run.start)?;
            run.bytes.clear();
        }
        Ok(())
    }
}

/// Fetches `need` in parts, [`FETCHERS`] at once, handing each checked chunk to `out`;
/// returns the bytes it placed. After each part a flusher thread starts writeback of what
/// is written so far: the fetchers never wait for the disk, and the fsync at the end finds
/// little left to write.
fn fetch_into(remote: &Remote, need: &[ChunkRef], out: &Placer<'_>) -> Result<u64, SyncError> {
    let mut parts: Vec<&[ChunkRef]> = Vec::new();
    let mut rest = need;
    while !rest.is_empty() {
        let mut bytes = 0u64;
        let n = rest
            .iter()
            .take_while(|c| {
                bytes += u64::from(c.len);
                bytes <= PART_BYTES
            })
            .count()
            .max(1);
        let (part, tail) = rest.split_at(n);
        parts.push(part);
        rest = tail;
    }
    let lens: HashMap<ChunkId, u32> = need.iter().map(|c| (c.id, c.len)).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    // One pending kick is enough: a writeback started later covers everything before it.
    let (kick, kicked) = std::sync::mpsc::sync_channel::<()>(1);
    let work = |kick: std::sync::mpsc::SyncSender<()>| -> Result<u64, SyncError> {
        let mut written = 0u64;
        let mut answer = Vec::new();
        let mut run = Run::default();
        while let Some(part) = parts.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
            let ids: Vec<ChunkId> = part.iter().map(|c| c.id).collect();
            let mut failed = None;
            remote.fetch_each_buffered(&ids, &mut answer, |chunk| {
                if failed.is_some() {
                    return;
                }
                let expected = lens.get(&chunk.id()).copied().unwrap_or(0);
                if chunk.bytes().len() != expected as usize {
                    // A chunk is what its id says; the manifest's length for it is wrong.
                    failed = Some(SyncError::Misfit(format!(
                        "chunk {} is {} bytes, the manifest says {expected}",
                        chunk.id(),
                        chunk.bytes().len()
                    )));
                    return;
                }
                match out.put(&mut run, chunk.bytes(), &chunk.id()) {
                    Ok(n) => written += n,
                    Err(e) => failed = Some(e.into()),
                }
            })?;
            if let Some(e) = failed {
                return Err(e);
            }
            out.flush(&mut run)?;
            let _ = kick.try_send(());
        }
        Ok(written)
    };
    std::thread::scope(|scope| {
        scope.spawn(move || {
            while kicked.recv().is_ok() {
                // Only a head start for the fsync at the end, which reports any failure.
                let _ = start_writeback(out.file, 0, 0);
            }
        });
        // Each fetcher holds a sender: the flusher ends when the last fetcher does.
        let others: Vec<_> = (1..FETCHERS)
            .map(|_| {
                let kick = kick.clone();
                scope.spawn(move || work(kick))
            })
            .collect();
        let mut written = work(kick)?;
        for other in others {
            written += other
                .join()
                .map_err(|_| SyncError::Inconsistent("a chunk fetcher panicked".into()))??;
        }
        Ok(written)
    })
}

fn write_from(
    drive: &Drive,
    base: Option<(NodeId, &Manifest)>,
    supplied: &mut HashMap<ChunkId, VerifiedChunk>,
    target: &Manifest,
    path: &std::path::Path,
    fsync: bool,
) -> Result<(), SyncError> {
    let mut supplied = supplied;
    let file = crate::private::create_file(path)?;
    let mut out = BufWriter::new(&file);
    match base {
        Some((node, manifest)) => {
            let base_file = drive.open_content(node)?;
            reconstruct(manifest, &base_file, &mut supplied, target, &mut out)?;
        }
        None => {
            let empty: &[u8] = &[];
            reconstruct(&Manifest::default(), empty, &mut supplied, target, &mut out)?;
        }
    }
    out.flush()?;
    drop(out);
    if fsync {
        file.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunking::seeded::extend_seeded;
    use crate::chunking::{ChunkerParams, chunk_bytes};

    /// Places each chunk (its bytes and id) through runs as the fetchers do, into `file`
    /// at `places`; returns the bytes placed.
    fn place<'d>(
        file: &File,
        places: &HashMap<ChunkId, Vec<u64>>,
        chunks: impl IntoIterator<Item = (&'d [u8], ChunkId)>,
    ) -> u64 {
        let out = Placer {
            file,
            places,
            writing: Mutex::new(()),
        };
        let mut run = Run::default();
        let mut placed = 0;
        for (bytes, id) in chunks {
            placed += out.put(&mut run, bytes, &id).unwrap();
        }
        out.flush(&mut run).unwrap();
        placed
    }

    /// Places the chunks of `target` in the order given; returns the file's bytes.
    fn place_all(target: &Manifest, data: &[u8], order: &[usize]) -> Vec<u8> {
        let (_, places, _) = placements(target, &BTreeMap::new());
        let file = tempfile::tempfile().unwrap();
        file.set_len(target.size()).unwrap();
        let offsets: Vec<u64> = target.offsets().map(|(o, _)| o).collect();
        let mut done = std::collections::HashSet::new();
        // A repeated chunk is placed everywhere at once.
        let chunks = order
            .iter()
            .map(|&i| (offsets[i] as usize, target.chunks[i]))
            .filter(|(_, c)| done.insert(c.id))
            .map(|(at, c)| (&data[at..at + c.len as usize], c.id));
        assert_eq!(place(&file, &places, chunks), target.size());
        let mut back = vec![0; data.len()];
        file.read_exact_at(&mut back, 0).unwrap();
        back
    }

    #[test]
    fn chunks_fetched_ahead_stay_and_only_the_rest_is_placed() {
        let mut data = Vec::new();
        extend_seeded(&mut data, 2 << 20, 11);
        let target = chunk_bytes(ChunkerParams::default(), &data);
        let offsets: Vec<(u64, ChunkRef)> = target.offsets().collect();
        assert!(offsets.len() > 20);
        // A staged file holding every even chunk at its place, garbage elsewhere, and a
        // wrong chunk (the right length, another id) where chunk 1 goes.
        let file = tempfile::tempfile().unwrap();
        file.write_all_at(&vec![0xAA; data.len() + 4096], 0)
            .unwrap();
        let mut in_place = BTreeMap::new();
        for (i, (o, c)) in offsets.iter().enumerate() {
            if i % 2 == 0 {
                let at = *o as usize;
                file.write_all_at(&data[at..at + c.len as usize], *o)
                    .unwrap();
                in_place.insert(*o, *c);
            }
        }
        let (o1, c1) = offsets[1];
        in_place.insert(
            o1,
            ChunkRef {
                id: ChunkId::of(b"another"),
                ..c1
            },
        );
        let (order, places, kept) = placements(&target, &in_place);
        let even: u64 = offsets
            .iter()
            .step_by(2)
            .map(|(_, c)| u64::from(c.len))
            .sum();
        assert_eq!(kept, even);
        let odd: Vec<ChunkRef> = offsets.iter().skip(1).step_by(2).map(|(_, c)| *c).collect();
        assert_eq!(order, odd, "only what is not in place is fetched or read");
        // Placing the rest over the staged file, cut to size, gives the content.
        file.set_len(target.size()).unwrap();
        let rest = order.iter().map(|c| {
            let at = places[&c.id][0] as usize;
            (&data[at..at + c.len as usize], c.id)
        });
        assert_eq!(kept + place(&file, &places, rest), target.size());
        let mut back = vec![0; data.len()];
        file.read_exact_at(&mut back, 0).unwrap();
        assert!(back == data, "the rebuilt file differs");
        assert_eq!(file.metadata().unwrap().len(), target.size());
    }

    #[test]
    fn chunks_land_where_the_manifest_puts_them_in_any_order() {
        // 3 MiB of random data, then the same 1 MiB twice: repeated chunks, placed twice.
        let mut data = Vec::new();
        extend_seeded(&mut data, 3 << 20, 7);
        let tail = data[..1 << 20].to_vec();
        data.extend_from_slice(&tail);
        data.extend_from_slice(&tail);
        let target = chunk_bytes(ChunkerParams::default(), &data);
        let n = target.chunks.len();
        assert!(n > 100);
        let in_order: Vec<usize> = (0..n).collect();
        assert_eq!(place_all(&target, &data, &in_order), data);
        // Backwards, and interleaved halves: no run ever grows, or runs restart often.
        let backwards: Vec<usize> = (0..n).rev().collect();
        assert_eq!(place_all(&target, &data, &backwards), data);
        let interleaved: Vec<usize> = (0..n / 2).flat_map(|i| [i, i + n / 2]).collect();
        let mut all = interleaved;
        all.extend(if n % 2 == 1 { vec![n - 1] } else { vec![] });
        assert_eq!(place_all(&target, &data, &all), data);
    }
}
