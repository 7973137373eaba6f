//! Load driver for scripts/bench/server_memory.sh: starts `deltadrive serve` on 127.0.0.1 in
//! a temporary data directory and reads its resident memory (VmRSS, VmHWM) while a volume
//! of N small files grows through the real client (`deltadrive::remote::Remote`):
//!
//! - device A commits the files in transactions of 4,000 creates (as the engine pushes),
//!   each file one chunk of its own, uploaded in batches first;
//! - device B, on its own thread, long-polls the change log as A commits and fetches the
//!   chunks of each file it learns of (as a second device pulling);
//! - device C joins at the end: a snapshot, then every chunk.
//!
//! Prints the figures after each phase; last line:
//! `bench server_memory: files=N rss_growth_kb=K hwm_growth_kb=K`, both measured from the
//! server started with the empty volume (warmed up by one small commit and pull) to the end,
//! once the server has settled (past its periodic trim of freed memory).
//!
//! Usage: server_memory PATH_TO_DELTADRIVE [FILES] [DATA_DIR]
//! `SERVER_WRAP="heaptrack -o FILE"` runs the server under that command (figures are then
//! the wrapper's process's).

use std::collections::HashSet;
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use deltadrive::chunking::{ChunkId, ChunkRef, Manifest, VerifiedChunk};
use deltadrive::protocol::{
    CommitRequest, CreateOp, Name, NodeId, NodeKind, Op, Seq, TxnId, Xattrs, manifest_id,
};
use deltadrive::remote::{Remote, UploadBatch};

mod support;
use support::{Res, Server, admin};

/// Files per transaction, as the engine pushes.
const PER_COMMIT: usize = 4000;
/// Directories the files are spread over.
const DIRS: usize = 1000;
/// Bytes per file, as scripts/bench/scale.sh writes.
const SIZE: usize = 900;

/// VmRSS and VmHWM of `pid`, in KiB.
fn memory(pid: u32) -> Res<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Res<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| format!("no {name} in /proc/{pid}/status").into())
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// RssAnon, RssFile and RssShmem of `pid` (heap, mapped files, SQLite's WAL index), for
/// the log.
fn breakdown(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .filter(|l| l.starts_with("Rss") || l.starts_with("Threads"))
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(", ")
}

fn name(s: &str) -> Res<Name> {
    Ok(Name::new(s)?)
}

fn create(node: NodeId, parent: NodeId, n: &str, kind: NodeKind, m: Option<Manifest>) -> Res<Op> {
    Ok(Op::Create(CreateOp {
        node,
        parent,
        name: name(n)?,
        kind,
        mode: if kind == NodeKind::Dir { 0o755 } else { 0o644 },
        mtime: 1_700_000_000_000_000_000,
        xattrs: Xattrs::new(),
        manifest_id: m.as_ref().map(manifest_id),
        manifest: m,
        target: None,
    }))
}

fn commit(remote: &Remote, ops: Vec<Op>) -> Res<Seq> {
    let req = CommitRequest {
        format: 1,
        txn: TxnId::random(),
        ops,
    };
    Ok(remote.commit(&req)?.seq)
}

/// The content of file `i`: unique, so every file is a chunk of its own.
fn content(i: usize) -> Vec<u8> {
    deltadrive::chunking::seeded::seeded_bytes(SIZE, i as u64 + 1)
}

/// Device A: files number `files` under `dirs`, committed `PER_COMMIT` at a time; sends
/// each seq.
fn write_files(
    a: &Remote,
    dirs: &[NodeId],
    files: std::ops::Range<usize>,
    seqs: &mpsc::Sender<Seq>,
) -> Res<()> {
    let mut i = files.start;
    while i < files.end {
        let end = (i + PER_COMMIT).min(files.end);
        let chunks: Vec<VerifiedChunk> = (i..end).map(|k| VerifiedChunk::new(content(k))).collect();
        let ids: Vec<ChunkId> = chunks.iter().map(VerifiedChunk::id).collect();
        let lacking: HashSet<ChunkId> = a.missing(&ids)?.into_iter().collect();
        let mut batch = UploadBatch::default();
        for c in chunks.iter().filter(|c| lacking.contains(&c.id())) {
            batch.push_chunk(&c.id(), c.bytes(), 3);
            if batch.count() == deltadrive::protocol::limits::MAX_BATCH_CHUNKS {
                a.upload_batch(std::mem::take(&mut batch))?;
            }
        }
        if !batch.is_empty() {
            a.upload_batch(batch)?;
        }
        let mut ops = Vec::with_capacity(end - i);
        for (k, c) in (i..end).zip(&chunks) {
            let m = Manifest {
                chunks: vec![ChunkRef {
                    id: c.id(),
                    len: SIZE as u32,
                }],
            };
            let dir = dirs[k % dirs.len()];
            let file = format!("file-{k:07}.txt");
            ops.push(create(
                NodeId::random(),
                dir,
                &file,
                NodeKind::File,
                Some(m),
            )?);
        }
        seqs.send(commit(a, ops)?)?;
        i = end;
    }
    Ok(())
}

/// Device B: pulls the change log after `after` up to `until` and fetches every chunk the
/// creates name; returns how many chunks it fetched.
fn pull(b: &Remote, mut after: Seq, until: Seq) -> Res<usize> {
    let mut fetched = 0;
    let mut answer = Vec::new();
    while after < until {
        let page = b.changes(after, 25, 1000)?;
        let mut ids = Vec::new();
        for change in &page.changes {
            for op in &change.ops {
                if let Op::Create(c) = op
                    && let Some(m) = &c.manifest
                {
                    ids.extend(m.chunks.iter().map(|r| r.id));
                }
            }
            after = change.seq;
        }
        fetched += b.fetch_each_buffered(&ids, &mut answer, |_| {})?;
        b.set_cursor(after)?;
    }
    Ok(fetched)
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let bin = args
        .get(1)
        .ok_or("usage: server_memory PATH_TO_DELTADRIVE [FILES] [DATA_DIR]")?
        .clone();
    let files: usize = args.get(2).map_or(Ok(100_000), |s| s.parse())?;
    let tmp = match args.get(3) {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::tempdir()?,
    };
    let data = tmp.path();
    admin(&bin, data, &["user", "add", "alice"])?;
    let tokens: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|d| admin(&bin, data, &["device", "add", "alice", d]))
        .collect::<Res<_>>()?;
    admin(&bin, data, &["volume", "create", "alice", "bench"])?;

    let cmd = match std::env::var("SERVER_WRAP") {
        Ok(wrap) if !wrap.trim().is_empty() => {
            let mut words = wrap.split_whitespace();
            let mut c = Command::new(words.next().ok_or("empty SERVER_WRAP")?);
            c.args(words).arg(&bin);
            c
        }
        _ => Command::new(&bin),
    };
    let server = Server::start(cmd, data)?;
    let pid = server.pid();
    let base = server.base.clone();
    let remotes: Vec<Remote> = tokens
        .iter()
        .map(|t| Remote::new(&base, "bench", t))
        .collect::<Result<_, _>>()?;
    let (a, b, c) = (&remotes[0], &remotes[1], &remotes[2]);

    // Warm-up: the directories, one file, pulled by B and seen by C, so that what is
    // measured is what the volume's size adds, not the first request of each kind.
    let dirs: Vec<NodeId> = (0..DIRS).map(|_| NodeId::random()).collect();
    let mut ops = Vec::with_capacity(DIRS);
    for (d, id) in dirs.iter().enumerate() {
        ops.push(create(
            *id,
            NodeId::ROOT,
            &format!("dir-{d:04}"),
            NodeKind::Dir,
            None,
        )?);
    }
    commit(a, ops)?;
    let (tx, rx) = mpsc::channel();
    // Numbered past the measured ones.
    write_files(a, &dirs, files..files + 1, &tx)?;
    let warm = rx.recv()?;
    pull(b, Seq(0), warm)?;
    c.snapshot()?;
    thread::sleep(Duration::from_secs(3));
    let (rss0, hwm0) = memory(pid)?;
    println!("start: rss_kb={rss0} hwm_kb={hwm0} ({})", breakdown(pid));

    let started = Instant::now();
    let puller = {
        let b = b.clone();
        thread::spawn(move || -> Res<usize> {
            let mut after = warm;
            let mut fetched = 0;
            // Pull up to each seq A announces, so B follows as A commits.
            for until in rx {
                fetched += pull(&b, after, until)?;
                after = until;
            }
            Ok(fetched)
        })
    };
    write_files(a, &dirs, 0..files, &tx)?;
    drop(tx);
    let pulled = puller.join().map_err(|_| "puller panicked")??;
    let (rss1, hwm1) = memory(pid)?;
    println!(
        "A wrote and B pulled {files} files ({pulled} chunks) in {:.1} s: rss_kb={rss1} \
         hwm_kb={hwm1}",
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let snap = c.snapshot()?;
    let ids: Vec<ChunkId> = snap
        .nodes
        .iter()
        .filter_map(|n| n.manifest.as_ref())
        .flat_map(|m| m.chunks.iter().map(|r| r.id))
        .collect();
    drop(snap);
    let joined = c.fetch_each_buffered(&ids, &mut Vec::new(), |_| {})?;
    let (rss2, hwm2) = memory(pid)?;
    println!(
        "C joined ({joined} chunks) in {:.1} s: rss_kb={rss2} hwm_kb={hwm2}",
        started.elapsed().as_secs_f64()
    );
    // Settled: past the server's periodic trim (`allocator::TRIM_EVERY`).
    let settle = deltadrive::allocator::TRIM_EVERY + Duration::from_secs(2);
    thread::sleep(settle);
    let (rss3, hwm3) = memory(pid)?;
    println!(
        "{} s later: rss_kb={rss3} hwm_kb={hwm3} ({})",
        settle.as_secs(),
        breakdown(pid)
    );
    if let Some(secs) = std::env::var("PAUSE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        // Time to look at the server (gdb, /proc) before it stops.
        println!("server pid {pid}: pausing {secs} s");
        thread::sleep(Duration::from_secs(secs));
    }
    drop(server);
    println!(
        "bench server_memory: files={files} rss_growth_kb={} hwm_growth_kb={}",
        rss3.saturating_sub(rss0),
        hwm3.saturating_sub(hwm0)
    );
    Ok(())
}
