//! Helper of `scripts/bench/delta.sh`: makes test files and counts the bytes a diff carries.
//!
//! ```text
//! delta_bytes gen LEN SEED OUT          LEN pseudo-random bytes (splitmix64) into OUT
//! delta_bytes edit KIND IN OUT          KIND: overwrite1 | insert1 | delete4k | append1m
//! delta_bytes diff OLD NEW              bytes deltadrive sends to turn OLD into NEW
//! ```
//!
//! `diff` counts what a device would upload: each new chunk's payload (zstd level 3, or raw
//! where that is smaller) plus the encoded edit script and the base and target manifest ids.

use std::fs::File;
use std::io::{BufWriter, Write};

use anyhow::{Context, Result, bail};
use deltadrive::chunking::seeded::extend_seeded as splitmix;
use deltadrive::chunking::{ChunkerParams, chunk_file, diff, payload, read_verified};

fn gen_file(len: usize, seed: u64, out: &str) -> Result<()> {
    let mut w = BufWriter::new(File::create(out).with_context(|| format!("create {out}"))?);
    let mut buf = Vec::with_capacity(1 << 20);
    let mut left = len;
    let mut block = 0u64;
    while left > 0 {
        buf.clear();
        splitmix(&mut buf, left.min(1 << 20), seed ^ (block << 32));
        w.write_all(&buf)?;
        left -= buf.len();
        block += 1;
    }
    w.flush()?;
    Ok(())
}

fn edit_file(kind: &str, input: &str, out: &str) -> Result<()> {
    let mut data = std::fs::read(input).with_context(|| format!("read {input}"))?;
    let mid = data.len() / 2;
    match kind {
        "overwrite1" => data[mid] = !data[mid],
        "insert1" => data.insert(mid, 0x5a),
        "delete4k" => {
            data.drain(mid..(mid + 4096).min(data.len()));
        }
        "append1m" => splitmix(&mut data, 1 << 20, 0x00A9_9E4D),
        other => bail!("unknown edit {other}"),
    }
    std::fs::write(out, &data).with_context(|| format!("write {out}"))?;
    Ok(())
}

fn diff_bytes(old: &str, new: &str) -> Result<()> {
    let p = ChunkerParams::default();
    let old_file = File::open(old).with_context(|| format!("open {old}"))?;
    let new_file = File::open(new).with_context(|| format!("open {new}"))?;
    let (base, target) = (chunk_file(p, &old_file)?, chunk_file(p, &new_file)?);
    let d = diff(&base, &target);
    let offsets: std::collections::HashMap<_, _> =
        target.offsets().map(|(offset, c)| (c.id, offset)).collect();
    let mut payload_bytes = 0usize;
    for c in &d.new_chunks {
        let offset = offsets[&c.id];
        let chunk =
            read_verified(&new_file, offset, c)?.context("new file changed while measuring")?;
        payload_bytes += chunk.encode(payload::DEFAULT_ZSTD_LEVEL).len();
    }
    let edit_bytes = d.edit.encode().len();
    let ids = 2 * 32;
    println!(
        "bytes={} payload_bytes={payload_bytes} edit_bytes={edit_bytes} id_bytes={ids} \
         new_chunks={} new_chunk_bytes={} chunks={}",
        payload_bytes + edit_bytes + ids,
        d.new_chunks.len(),
        d.new_bytes(),
        target.chunks.len()
    );
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["gen", len, seed, out] => gen_file(len.parse()?, seed.parse()?, out),
        ["edit", kind, input, out] => edit_file(kind, input, out),
        ["diff", old, new] => diff_bytes(old, new),
        _ => bail!("usage: delta_bytes gen LEN SEED OUT | edit KIND IN OUT | diff OLD NEW"),
    }
}
