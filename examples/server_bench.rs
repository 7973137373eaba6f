//! Load driver for scripts/bench/server.sh: starts `deltadrive serve` on 127.0.0.1 (port
//! chosen by the OS) in a temporary data directory and measures commits/s with 1 and 8
//! clients, chunk upload MB/s with 1 and 8 clients, and long-poll notify latency.
//!
//! Usage: server_bench PATH_TO_DELTADRIVE [SECONDS_PER_COMMIT_RUN]

use std::process::Command;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use deltadrive::chunking::VerifiedChunk;
use deltadrive::protocol::framing;
use deltadrive::protocol::{
    ChangesResponse, CommitRequest, CommitResponse, CreateOp, Name, NodeId, NodeKind, Op, TxnId,
    UploadResponse, Xattrs,
};
use reqwest::blocking::Client as Http;

mod support;
use support::{Res, Server, admin};

#[derive(Clone)]
struct Client {
    http: Http,
    base: String,
    token: String,
}

impl Client {
    fn new(base: &str, token: &str) -> Res<Self> {
        deltadrive::tls::install_provider();
        Ok(Self {
            http: Http::builder().timeout(Duration::from_secs(120)).build()?,
            base: base.to_owned(),
            token: token.to_owned(),
        })
    }

    fn url(&self, rest: &str) -> String {
        format!("{}/v1/volumes/bench/{rest}", self.base)
    }

    fn mkdir(&self, name: &str) -> Res<u64> {
        let req = CommitRequest {
            format: 1,
            txn: TxnId::random(),
            ops: vec![Op::Create(CreateOp {
                node: NodeId::random(),
                parent: NodeId::ROOT,
                name: Name::new(name)?,
                kind: NodeKind::Dir,
                mode: 0o755,
                mtime: 0,
                xattrs: Xattrs::new(),
                manifest: None,
                manifest_id: None,
                target: None,
            })],
        };
        let resp = self
            .http
            .post(self.url("commit"))
            .bearer_auth(&self.token)
            .json(&req)
            .send()?;
        if !resp.status().is_success() {
            return Err(format!("commit: {} {}", resp.status(), resp.text()?).into());
        }
        Ok(resp.json::<CommitResponse>()?.seq.0)
    }

    fn upload(&self, batch: &[u8], expect: u32) -> Res<()> {
        let resp = self
            .http
            .post(self.url("chunks"))
            .bearer_auth(&self.token)
            .body(batch.to_vec())
            .send()?;
        if !resp.status().is_success() {
            return Err(format!("upload: {} {}", resp.status(), resp.text()?).into());
        }
        let stored = resp.json::<UploadResponse>()?.stored;
        if stored != expect {
            return Err(format!("stored {stored}, sent {expect}").into());
        }
        Ok(())
    }
}

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    deltadrive::chunking::seeded::seeded_bytes(len, seed)
}

/// Commits from `clients` threads for `secs`; returns commits per second.
fn commit_rate(clients: &[Client], secs: f64, tag: &str) -> Res<f64> {
    let barrier = Arc::new(Barrier::new(clients.len()));
    let handles: Vec<_> = clients
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, c)| {
            let barrier = barrier.clone();
            let tag = tag.to_owned();
            thread::spawn(move || -> Res<(u64, Duration)> {
                barrier.wait();
                let start = Instant::now();
                let mut n = 0u64;
                while start.elapsed().as_secs_f64() < secs {
                    c.mkdir(&format!("{tag}-{i}-{n}"))?;
                    n += 1;
                }
                Ok((n, start.elapsed()))
            })
        })
        .collect();
    let mut total = 0u64;
    let mut longest = Duration::ZERO;
    for h in handles {
        let (n, took) = h.join().map_err(|_| "committer panicked")??;
        total += n;
        longest = longest.max(took);
    }
    Ok(total as f64 / longest.as_secs_f64())
}

/// Uploads `mib_each` MiB of incompressible 64 KiB chunks from each client in batches of
/// 64 chunks (4 MiB); returns MB/s (10^6 bytes of chunk data per second) over all clients.
fn upload_rate(clients: &[Client], mib_each: usize, seed: u64) -> Res<f64> {
    let chunk_len = 64 << 10;
    let per_batch = 64;
    let batches_each = mib_each * (1 << 20) / (chunk_len * per_batch);
    // Chunks are made and hashed before the clock starts: the server's work is measured.
    let prepared: Vec<Vec<Vec<u8>>> = (0..clients.len())
        .map(|c| {
            (0..batches_each)
                .map(|b| {
                    let chunks: Vec<(deltadrive::chunking::ChunkId, Vec<u8>)> = (0..per_batch)
                        .map(|k| {
                            let s = seed + ((c * batches_each + b) * per_batch + k) as u64;
                            let chunk = VerifiedChunk::new(random_bytes(s, chunk_len));
                            (chunk.id(), chunk.encode(3))
                        })
                        .collect();
                    framing::encode_batch(
                        chunks
                            .iter()
                            .map(|(id, p)| (id, p.as_slice()))
                            .collect::<Vec<_>>()
                            .into_iter(),
                    )
                })
                .collect()
        })
        .collect();
    let barrier = Arc::new(Barrier::new(clients.len()));
    let start = Instant::now();
    let handles: Vec<_> = clients
        .iter()
        .cloned()
        .zip(prepared)
        .map(|(c, batches)| {
            let barrier = barrier.clone();
            thread::spawn(move || -> Res<()> {
                barrier.wait();
                for b in &batches {
                    c.upload(b, per_batch as u32)?;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| "uploader panicked")??;
    }
    let bytes = (clients.len() * batches_each * per_batch * chunk_len) as f64;
    Ok(bytes / 1e6 / start.elapsed().as_secs_f64())
}

/// Long-poll latency: one device waits, another commits every ~20 ms; the time from the
/// commit request's start to the waiter's answer, per round.
fn notify_latency(waiter: Client, committer: &Client, rounds: usize) -> Res<Vec<f64>> {
    let start_head = {
        let r: ChangesResponse = waiter
            .http
            .get(waiter.url("changes?after=0&limit=1"))
            .bearer_auth(&waiter.token)
            .send()?
            .json()?;
        r.head.0
    };
    let poller = thread::spawn(move || -> Res<Vec<Instant>> {
        let mut after = start_head;
        let mut got = Vec::new();
        while got.len() < rounds {
            let r: ChangesResponse = waiter
                .http
                .get(waiter.url(&format!("changes?after={after}&wait=30")))
                .bearer_auth(&waiter.token)
                .send()?
                .json()?;
            let now = Instant::now();
            for c in &r.changes {
                after = c.seq.0;
                got.push(now);
            }
        }
        Ok(got)
    });
    let mut sent = Vec::new();
    for i in 0..rounds {
        thread::sleep(Duration::from_millis(20));
        let t = Instant::now();
        committer.mkdir(&format!("notify-{i}"))?;
        sent.push(t);
    }
    let got = poller.join().map_err(|_| "poller panicked")??;
    let mut ms: Vec<f64> = got
        .iter()
        .zip(&sent)
        .map(|(g, s)| g.saturating_duration_since(*s).as_secs_f64() * 1e3)
        .collect();
    ms.sort_by(f64::total_cmp);
    Ok(ms)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn main() -> Res<()> {
    let mut args = std::env::args().skip(1);
    let bin = args
        .next()
        .ok_or("usage: server_bench PATH_TO_DELTADRIVE [SECONDS]")?;
    let secs: f64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5.0);
    let dir = tempfile::tempdir()?;
    let data = dir.path();
    admin(&bin, data, &["user", "add", "bench"])?;
    admin(&bin, data, &["volume", "create", "bench", "bench"])?;
    let tokens: Vec<String> = (0..9)
        .map(|i| admin(&bin, data, &["device", "add", "bench", &format!("d{i}")]))
        .collect::<Res<_>>()?;
    let server = Server::start(Command::new(&bin), data)?;
    let base = server.base.clone();
    let clients: Vec<Client> = tokens
        .iter()
        .map(|t| Client::new(&base, t))
        .collect::<Res<_>>()?;

    let commits1 = commit_rate(&clients[..1], secs, "one")?;
    println!("commits, 1 client:   {commits1:.0}/s ({secs} s)");
    let commits8 = commit_rate(&clients[..8], secs, "eight")?;
    println!("commits, 8 clients:  {commits8:.0}/s ({secs} s)");
    let upload1 = upload_rate(&clients[..1], 128, 0)?;
    println!(
        "upload, 1 client:    {upload1:.0} MB/s (128 MiB of 64 KiB incompressible chunks, batches of 64)"
    );
    let upload8 = upload_rate(&clients[..8], 16, 1 << 32)?;
    println!("upload, 8 clients:   {upload8:.0} MB/s (8 x 16 MiB)");
    let lat = notify_latency(clients[8].clone(), &clients[0], 200)?;
    let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
    println!(
        "long-poll notify:    p50 {p50:.2} ms, p99 {p99:.2} ms, max {:.2} ms over {} commits",
        lat[lat.len() - 1],
        lat.len()
    );
    drop(server);
    println!(
        "bench server: commits1={commits1:.0} commits8={commits8:.0} upload_mbs={upload1:.0} notify_p50_ms={p50:.2} notify_p99_ms={p99:.2}"
    );
    Ok(())
}
