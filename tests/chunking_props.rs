//! Property tests of the difference engine on random contents and random edits.

use deltadrive::chunking::seeded::seeded_bytes;
use std::collections::{HashMap, HashSet};
use std::ops::Range;

use deltadrive::chunking::{
    ChunkId, ChunkerParams, Manifest, ManifestEdit, VerifiedChunk, chunk_bytes, chunk_bytes_plain,
    diff, payload, rechunk, reconstruct,
};
use proptest::collection::vec;
use proptest::prelude::any;
use proptest::strategy::{Just, Strategy};
use proptest::test_runner::{Config, RngSeed};
use proptest::{prop_assert, prop_assert_eq, prop_oneof, proptest};

/// One change a program makes to a file. Positions are taken modulo the current length.
#[derive(Clone, Debug)]
enum Edit {
    Insert { at: u64, len: usize, seed: u64 },
    Delete { at: u64, len: usize },
    Overwrite { at: u64, len: usize, seed: u64 },
    Append { len: usize, seed: u64 },
    Truncate { to: u64 },
    MoveBlock { from: u64, len: usize, to: u64 },
}

/// What an edit did, as the drive would see it.
struct Applied {
    /// Byte range written (POSIX has no insert: inserting rewrites the tail).
    dirty: Option<Range<u64>>,
    /// Bytes of new content the edit brought in.
    new_bytes: u64,
    /// Places in the file the edit touched.
    sites: u64,
}

fn edit_strategy(max_len: usize) -> impl Strategy<Value = Edit> {
    let len = 1..=max_len;
    prop_oneof![
        (any::<u64>(), len.clone(), any::<u64>()).prop_map(|(at, len, seed)| Edit::Insert {
            at,
            len,
            seed
        }),
        (any::<u64>(), len.clone()).prop_map(|(at, len)| Edit::Delete { at, len }),
        (any::<u64>(), len.clone(), any::<u64>()).prop_map(|(at, len, seed)| Edit::Overwrite {
            at,
            len,
            seed
        }),
        (len.clone(), any::<u64>()).prop_map(|(len, seed)| Edit::Append { len, seed }),
        any::<u64>().prop_map(|to| Edit::Truncate { to }),
        (any::<u64>(), len, any::<u64>()).prop_map(|(from, len, to)| Edit::MoveBlock {
            from,
            len,
            to
        }),
    ]
}

fn pick(x: u64, n: usize) -> usize {
    (x % (n as u64 + 1)) as usize
}

fn apply_edit(data: &mut Vec<u8>, edit: &Edit) -> Applied {
    let n = data.len();
    let tail = |at: usize, data: &[u8]| Some(at as u64..data.len() as u64);
    match *edit {
        Edit::Insert { at, len, seed } => {
            let at = pick(at, n);
            data.splice(at..at, seeded_bytes(len, seed));
            Applied {
                dirty: tail(at, data),
                new_bytes: len as u64,
                sites: 1,
            }
        }
        Edit::Delete { at, len } => {
            let at = pick(at, n);
            let end = (at + len).min(n);
            data.drain(at..end);
            Applied {
                dirty: tail(at, data),
                new_bytes: 0,
                sites: 1,
            }
        }
        Edit::Overwrite { at, len, seed } => {
            let at = pick(at, n);
            let end = at + len;
            data.resize(data.len().max(end), 0);
            data[at..end].copy_from_slice(&seeded_bytes(len, seed));
            Applied {
                dirty: Some(at as u64..end as u64),
                new_bytes: len as u64,
                sites: 1,
            }
        }
        Edit::Append { len, seed } => {
            data.extend_from_slice(&seeded_bytes(len, seed));
            Applied {
                dirty: Some(n as u64..data.len() as u64),
                new_bytes: len as u64,
                sites: 1,
            }
        }
        Edit::Truncate { to } => {
            data.truncate(pick(to, n));
            Applied {
                dirty: None,
                new_bytes: 0,
                sites: 1,
            }
        }
        Edit::MoveBlock { from, len, to } => {
            let from = pick(from, n);
            let end = (from + len).min(n);
            let block: Vec<u8> = data.drain(from..end).collect();
            let to = pick(to, data.len());
            data.splice(to..to, block.iter().copied());
            let lo = from.min(to) as u64;
            let hi = (end.max(to + block.len())) as u64;
            Applied {
                dirty: Some(lo..hi),
                new_bytes: block.len() as u64,
                sites: 2,
            }
        }
    }
}

/// Chunks of `m` absent from `base`, as verified chunks cut from `data`.
fn supplied(data: &[u8], m: &Manifest, base: &Manifest) -> HashMap<ChunkId, VerifiedChunk> {
    let known: HashSet<ChunkId> = base.chunks.iter().map(|c| c.id).collect();
    m.offsets()
        .filter(|(_, c)| !known.contains(&c.id))
        .map(|(offset, c)| {
            let at = offset as usize;
            let v = VerifiedChunk::new(data[at..at + c.len as usize].to_vec());
            (v.id(), v)
        })
        .collect()
}

proptest! {
    #![proptest_config(Config { cases: 128, ..Config::default() })]

    /// The one-pass cut + hash gives what cutting then hashing gives, for any valid sizes
    /// (those it does not cover fall back to the plain path) and any content, random or
    /// repetitive (all-equal runs force maximum-size cuts).
    #[test]
    fn fused_chunking_equals_cut_then_hash(
        min_log in 6u32..14,
        avg_extra in 0u32..4,
        max_extra in 0u32..4,
        len in 0usize..(3 << 20),
        seed in any::<u64>(),
        runs in 0usize..4,
    ) {
        let min = 1u32 << min_log;
        let avg = (min << avg_extra).max(256);
        let max = (avg << max_extra).max(1024);
        let p = ChunkerParams::new(min, avg, max).unwrap();
        let mut data = seeded_bytes(len, seed);
        for r in 0..runs {
            // A stretch of one byte value somewhere: no cut point inside it.
            let at = (seed as usize).wrapping_mul(r + 1) % (len + 1);
            let end = (at + (200 << 10)).min(len);
            data[at..end].fill(r as u8);
        }
        prop_assert_eq!(chunk_bytes(p, &data), chunk_bytes_plain(p, &data));
    }
}

fn small() -> ChunkerParams {
    ChunkerParams::new(64, 256, 1024).unwrap()
}

/// Cases of a statistical bound: fixed seed, so CI sees the same cases every run.
fn fixed(cases: u32, seed: u64) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(Config { cases: 256, ..Config::default() })]

    /// Small parameters (many chunks per KiB) and several edits per case, so every code path
    /// around boundaries, file ends and merged dirty ranges is hit often.
    #[test]
    fn engine_round_trips_with_small_chunks(
        len in 0usize..40_000,
        seed in any::<u64>(),
        edits in vec(edit_strategy(3_000), 1..4),
    ) {
        let p = small();
        let old = seeded_bytes(len, seed);
        let old_m = chunk_bytes(p, &old);
        let mut new = old.clone();
        let mut dirty = Vec::new();
        for e in &edits {
            dirty.extend(apply_edit(&mut new, e).dirty);
        }
        let new_m = chunk_bytes(p, &new);

        // Incremental re-chunking == whole-file chunking.
        let re = rechunk(p, &old_m, &new, new.len() as u64, &dirty).unwrap();
        prop_assert_eq!(&re, &new_m);

        // apply(diff(old, new)) == new, through the binary edit encoding.
        let d = diff(&old_m, &new_m);
        let mut wire = d.clone();
        wire.edit = ManifestEdit::decode(&d.edit.encode()).unwrap();
        prop_assert_eq!(&wire.apply(&old_m).unwrap(), &new_m);
        prop_assert_eq!(Manifest::decode(&new_m.encode()).unwrap(), new_m.clone());

        // Reconstruction from the old file plus the diff's new chunks gives the new bytes.
        let mut chunks = supplied(&new, &new_m, &old_m);
        prop_assert_eq!(chunks.len(), d.new_chunks.len());
        let mut out = Vec::new();
        reconstruct(&old_m, &old, &mut chunks, &new_m, &mut out).unwrap();
        prop_assert!(out == new, "reconstructed content differs");
    }
}

proptest! {
    #![proptest_config(Config { cases: 16, ..Config::default() })]

    /// Default parameters on files of up to 3 MiB: rechunk == whole file, apply(diff) == new.
    #[test]
    fn engine_round_trips_with_default_chunks(
        len in 200_000usize..3_000_000,
        seed in any::<u64>(),
        edits in vec(edit_strategy(200_000), 1..3),
    ) {
        let p = ChunkerParams::default();
        let old = seeded_bytes(len, seed);
        let old_m = chunk_bytes(p, &old);
        let mut new = old.clone();
        let mut dirty = Vec::new();
        for e in &edits {
            dirty.extend(apply_edit(&mut new, e).dirty);
        }
        let new_m = chunk_bytes(p, &new);
        prop_assert_eq!(&rechunk(p, &old_m, &new, new.len() as u64, &dirty).unwrap(), &new_m);
        prop_assert_eq!(diff(&old_m, &new_m).apply(&old_m).unwrap(), new_m);
    }
}

proptest! {
    // How many chunks an insertion changes is a statistical property of content-defined
    // chunking, not a bound: normalized FastCDC sometimes needs a few chunks to fall back in
    // step. Measured over 40,000 random insertions of 1..=1024 bytes into 1 MiB files:
    // 99.7% change at most 3 chunks, 0.28% change 4 to 7. A random seed would fail CI about
    // one run in ten, so these cases are fixed.
    #![proptest_config(fixed(40, 0x001A_5E27))]

    /// An insertion of up to 1 KiB into a large random file changes at most 3 chunks.
    #[test]
    fn small_insertion_changes_at_most_three_chunks(
        seed in any::<u64>(),
        at in any::<u64>(),
        len in 1usize..=1024,
        ins_seed in any::<u64>(),
    ) {
        let p = ChunkerParams::default();
        let old = seeded_bytes(2 << 20, seed);
        let mut new = old.clone();
        apply_edit(&mut new, &Edit::Insert { at, len, seed: ins_seed });
        let (old_m, new_m) = (chunk_bytes(p, &old), chunk_bytes(p, &new));
        let d = diff(&old_m, &new_m);
        prop_assert!(d.new_chunks.len() <= 3, "{} chunks changed", d.new_chunks.len());
    }
}

proptest! {
    // Statistical too (0.01% of random insertions exceed it in the measurement above): fixed.
    #![proptest_config(fixed(48, 0x000B_17E5))]

    /// The new bytes a diff carries are at most the edit size plus two maximum chunks per
    /// place edited.
    #[test]
    fn diff_carries_little_more_than_the_edit(
        seed in any::<u64>(),
        edit in edit_strategy(100_000),
    ) {
        let p = ChunkerParams::default();
        let old = seeded_bytes(1 << 20, seed);
        let mut new = old.clone();
        let applied = apply_edit(&mut new, &edit);
        let d = diff(&chunk_bytes(p, &old), &chunk_bytes(p, &new));
        let allowance = applied.new_bytes + applied.sites * 2 * u64::from(p.max());
        prop_assert!(
            d.new_bytes() <= allowance,
            "{:?}: diff carries {} bytes, allowance {}", edit, d.new_bytes(), allowance
        );
    }
}

/// Valid encodings with a few bytes changed, cut or added: the decoders' hardest inputs.
fn mutated(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let n = valid.len();
    (
        vec((0..n.max(1), any::<u8>()), 0..4),
        prop_oneof![Just(None), (0..=n).prop_map(Some)],
        vec(any::<u8>(), 0..3),
    )
        .prop_map(move |(flips, cut, extra)| {
            let mut b = valid.clone();
            for (i, x) in flips {
                if let Some(byte) = b.get_mut(i) {
                    *byte = x;
                }
            }
            if let Some(c) = cut {
                b.truncate(c);
            }
            b.extend(extra);
            b
        })
}

fn sample_manifest() -> Manifest {
    chunk_bytes(small(), &seeded_bytes(3_000, 11))
}

fn sample_edit() -> Vec<u8> {
    let old = sample_manifest();
    let mut data = seeded_bytes(3_000, 11);
    data.splice(1000..1000, seeded_bytes(700, 12));
    diff(&old, &chunk_bytes(small(), &data)).edit.encode()
}

proptest! {
    #![proptest_config(Config { cases: 2_000, ..Config::default() })]

    /// Arbitrary bytes: no panic, and whatever decodes is canonical (re-encodes to itself).
    #[test]
    fn decoders_survive_arbitrary_bytes(bytes in vec(any::<u8>(), 0..600), tag in 0u8..3) {
        let mut input = bytes;
        // Give the decoders a fair chance to get past the magic bytes.
        let prefix: &[u8] = match tag {
            0 => b"DDMF\x01",
            1 => b"DDME\x01",
            _ => b"",
        };
        input.splice(0..0, prefix.iter().copied());
        if let Ok(m) = Manifest::decode(&input) {
            prop_assert_eq!(m.encode(), input.clone());
        }
        if let Ok(e) = ManifestEdit::decode(&input) {
            prop_assert_eq!(e.encode(), input.clone());
        }
        let _ = payload::decode(&input, ChunkId::of(&input), 65_536);
    }

    /// Mutations of valid encodings: refused with a typed error, or canonical.
    #[test]
    fn decoders_survive_mutated_encodings(
        m in mutated(sample_manifest().encode()),
        e in mutated(sample_edit()),
        z in mutated(payload::encode(&[7u8; 5_000], 3)),
    ) {
        match Manifest::decode(&m) {
            Ok(decoded) => prop_assert_eq!(decoded.encode(), m),
            Err(err) => prop_assert!(!err.to_string().is_empty()),
        }
        match ManifestEdit::decode(&e) {
            Ok(decoded) => prop_assert_eq!(decoded.encode(), e),
            Err(err) => prop_assert!(!err.to_string().is_empty()),
        }
        if let Ok(chunk) = payload::decode(&z, ChunkId::of(&[7u8; 5_000]), 65_536) {
            prop_assert_eq!(chunk.bytes(), &[7u8; 5_000][..]);
        }
    }
}
