//! The fused path against the plain one (fastcdc's iterator, then blake3 per chunk), and its
//! kernels against blake3's own chaining values.
// Each kernel test checks for AVX2 first; its unsafe blocks are those calls.
#![allow(clippy::undocumented_unsafe_blocks, clippy::needless_range_loop)]

use super::chunk_and_hash as fused;
use fastcdc::v2020::FastCDC;

fn chunk_and_hash_plain(data: &[u8], min: usize, avg: usize, max: usize) -> Vec<(u32, [u8; 32])> {
    FastCDC::new(data, min, avg, max)
        .map(|c| {
            (
                c.length as u32,
                *blake3::hash(&data[c.offset..c.offset + c.length]).as_bytes(),
            )
        })
        .collect()
}

/// The fused result, or the plain one where the fused path does not apply (as chunk_bytes).
fn chunk_and_hash(data: &[u8], min: usize, avg: usize, max: usize) -> Vec<(u32, [u8; 32])> {
    fused(data, min, avg, max).unwrap_or_else(|| chunk_and_hash_plain(data, min, avg, max))
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

fn random(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng(seed).fill(&mut v);
    v
}

fn check(data: &[u8], min: usize, avg: usize, max: usize) {
    let want = chunk_and_hash_plain(data, min, avg, max);
    let got = chunk_and_hash(data, min, avg, max);
    // Plain path must itself match the iterator's lengths.
    let lens: Vec<u32> = fastcdc::v2020::FastCDC::new(data, min, avg, max)
        .map(|c| c.length as u32)
        .collect();
    assert_eq!(want.iter().map(|x| x.0).collect::<Vec<_>>(), lens);
    if got != want {
        let first = got.iter().zip(want.iter()).position(|(a, b)| a != b);
        panic!(
            "mismatch len={} params={}/{}/{} got {} chunks want {} first diff at {:?}: got {:?} want {:?}",
            data.len(),
            min,
            avg,
            max,
            got.len(),
            want.len(),
            first,
            first.map(|i| got.get(i).map(|x| x.0)),
            first.map(|i| want.get(i).map(|x| x.0)),
        );
    }
}

const PARAMS: &[(usize, usize, usize)] = &[
    (4096, 16384, 65536),
    (256, 1024, 4096),
    (8192, 32768, 131072),
    (64, 256, 1024),
    (1024, 2048, 4096),
    (2048, 8192, 16384),
    (4096, 16384, 16384),
    (65536, 65536, 65536),
    (16384, 16384, 65536),
];

#[test]
fn fixed_lengths_random() {
    let data = random(1, 300_000);
    for &len in &[
        0usize, 1, 2, 63, 64, 65, 1023, 1024, 1025, 2047, 2048, 4095, 4096, 4097, 4098, 16383,
        16384, 16385, 65535, 65536, 65537, 65538, 131072, 200_001, 300_000,
    ] {
        for &(a, b, c) in PARAMS {
            check(&data[..len], a, b, c);
        }
    }
}

#[test]
fn random_lengths() {
    let mut r = Rng(42);
    let big = random(7, 5 << 20);
    for i in 0..60 {
        let len = (r.next() % (5 << 20) as u64) as usize;
        let off = (r.next() % 1000) as usize;
        let len = len.min(big.len() - off);
        let (a, b, c) = PARAMS[i % PARAMS.len()];
        check(&big[off..off + len], a, b, c);
        check(&big[off..off + len], 4096, 16384, 65536);
    }
    // Many small lengths.
    for len in (0..20_000).step_by(37) {
        check(&big[..len], 4096, 16384, 65536);
        check(&big[..len], 256, 1024, 4096);
    }
}

#[test]
fn patterns() {
    let zeros = vec![0u8; 3 << 20];
    for &(a, b, c) in PARAMS {
        for &len in &[
            0usize,
            1,
            1024,
            65536,
            65537,
            1 << 20,
            (3 << 20) - 1,
            3 << 20,
        ] {
            check(&zeros[..len], a, b, c);
        }
    }
    // Repeated short pattern.
    let pat: Vec<u8> = (0..(3usize << 20)).map(|i| (i % 251) as u8).collect();
    // Repeated random 100-byte pattern.
    let r100 = random(9, 100);
    let rep: Vec<u8> = (0..(3usize << 20)).map(|i| r100[i % 100]).collect();
    // Mixed: random blocks and zero blocks.
    let mut mixed = random(11, 4 << 20);
    for i in 0..mixed.len() / 100_000 {
        if i % 3 == 0 {
            let s = i * 100_000;
            mixed[s..s + 100_000].fill(0);
        }
    }
    for &(a, b, c) in PARAMS {
        check(&pat, a, b, c);
        check(&rep, a, b, c);
        check(&mixed, a, b, c);
        check(&mixed[12345..], a, b, c);
    }
}

#[test]
fn fallback_params() {
    // Not covered by the fast path (odd sizes, huge max): must still match.
    let data = random(3, 1 << 20);
    check(&data, 4096, 16384, 4 << 20);
    // Odd sizes trip fastcdc's own debug_asserts; only meaningful in release.
    if !cfg!(debug_assertions) {
        for &(a, b, c) in &[
            (4095usize, 16384usize, 65536usize),
            (4096, 16383, 65536),
            (65, 257, 1025),
        ] {
            check(&data, a, b, c);
        }
    }
}

#[test]
fn gear_tables_are_default() {
    let (g, gls) = fastcdc::v2020::get_gear_with_seed(0);
    assert_eq!(g.len(), 256);
    assert!(matches!(g, std::borrow::Cow::Borrowed(_)));
    for i in 0..256 {
        assert_eq!(gls[i], g[i].wrapping_shl(1));
    }
    let (ms, ml) = fastcdc::v2020::select_masks(16384, fastcdc::v2020::Normalization::Level1);
    assert_eq!(ms, 0x0000d90f03530000);
    assert_eq!(ml, 0x0000d90303530000);
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod kernel {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    use super::super::avx2::*;
    use blake3::hazmat::HasherExt;
    use core::arch::x86_64::*;

    fn rand_bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 33) as u8
            })
            .collect()
    }

    /// Hash 8 independent leaves (1..=1024 bytes each, arbitrary counters) with
    /// compress8 and compare to blake3 hazmat chunk CVs.
    #[test]
    fn compress8_leaf_cvs_match_hazmat() {
        if !is_x86_feature_detected!("avx2") {
            return;
        }
        let data = rand_bytes(8 * 1024 * 4, 5);
        let lens_sets: [[usize; 8]; 4] = [
            [1024; 8],
            [1, 63, 64, 65, 500, 1000, 1023, 1024],
            [1024, 960, 1, 128, 129, 1024, 7, 1024],
            [2, 3, 4, 5, 6, 7, 8, 9],
        ];
        for (si, lens) in lens_sets.iter().enumerate() {
            let counters: [u32; 8] = [0, 1, 2, 7, 15, 63, 1000, 16383];
            let mut bufs = vec![[0u8; 1024]; 8];
            for l in 0..8 {
                let off = (si * 8 + l) * 1024;
                bufs[l][..lens[l]].copy_from_slice(&data[off..off + lens[l]]);
            }
            let mut out = [[0u32; 8]; 8];
            unsafe { hash_leaves(&bufs, lens, &counters, &mut out) };
            for l in 0..8 {
                let off = (si * 8 + l) * 1024;
                let want = blake3::Hasher::new()
                    .set_input_offset(counters[l] as u64 * 1024)
                    .update(&data[off..off + lens[l]])
                    .finalize_non_root();
                let mut got = [0u8; 32];
                for i in 0..8 {
                    got[4 * i..4 * i + 4].copy_from_slice(&out[l][i].to_le_bytes());
                }
                assert_eq!(got, want, "set {si} lane {l} len {}", lens[l]);
            }
        }
    }

    #[target_feature(enable = "avx2")]
    unsafe fn hash_leaves(
        bufs: &[[u8; 1024]],
        lens: &[usize; 8],
        ctr: &[u32; 8],
        out: &mut [[u32; 8]; 8],
    ) {
        unsafe {
            let mut cv = [_mm256_setzero_si256(); 8];
            for i in 0..8 {
                cv[i] = set1(IV[i]);
            }
            let nblocks: Vec<usize> = lens.iter().map(|&l| l.div_ceil(64)).collect();
            let maxb = *nblocks.iter().max().unwrap();
            let mut done = [[0u32; 8]; 8];
            for step in 0..maxb {
                let mut ptrs = [core::ptr::null::<u8>(); 8];
                let mut fl = [0u32; 8];
                let mut bl = [64u32; 8];
                let mut ct = [0u32; 8];
                for l in 0..8 {
                    let s = step.min(nblocks[l] - 1);
                    ptrs[l] = bufs[l].as_ptr().add(64 * s);
                    if s == 0 {
                        fl[l] |= CHUNK_START;
                    }
                    if s == nblocks[l] - 1 {
                        fl[l] |= CHUNK_END;
                        bl[l] = (lens[l] - 64 * s) as u32;
                    }
                    ct[l] = ctr[l];
                }
                compress8(
                    &mut cv,
                    &ptrs,
                    _mm256_loadu_si256(ct.as_ptr() as *const __m256i),
                    _mm256_setzero_si256(),
                    _mm256_loadu_si256(bl.as_ptr() as *const __m256i),
                    _mm256_loadu_si256(fl.as_ptr() as *const __m256i),
                );
                let mut t = cv;
                transpose_vecs(&mut t);
                for l in 0..8 {
                    if step == nblocks[l] - 1 {
                        _mm256_storeu_si256(done[l].as_mut_ptr() as *mut __m256i, t[l]);
                    }
                }
            }
            *out = done;
        }
    }

    /// Parent nodes: compress8 with PARENT flag vs hazmat::merge_subtrees_non_root.
    #[test]
    fn compress8_parents_match_hazmat() {
        if !is_x86_feature_detected!("avx2") {
            return;
        }
        let d = rand_bytes(8 * 64, 9);
        let mut out = [[0u32; 8]; 8];
        unsafe {
            let mut cv = [_mm256_setzero_si256(); 8];
            for i in 0..8 {
                cv[i] = set1(IV[i]);
            }
            let mut ptrs = [core::ptr::null::<u8>(); 8];
            for l in 0..8 {
                ptrs[l] = d.as_ptr().add(64 * l);
            }
            let mut fl = [PARENT; 8];
            fl[7] |= ROOT;
            compress8(
                &mut cv,
                &ptrs,
                _mm256_setzero_si256(),
                _mm256_setzero_si256(),
                set1(64),
                _mm256_loadu_si256(fl.as_ptr() as *const __m256i),
            );
            transpose_vecs(&mut cv);
            for l in 0..8 {
                _mm256_storeu_si256(out[l].as_mut_ptr() as *mut __m256i, cv[l]);
            }
        }
        for l in 0..8 {
            let left: [u8; 32] = d[64 * l..64 * l + 32].try_into().unwrap();
            let right: [u8; 32] = d[64 * l + 32..64 * l + 64].try_into().unwrap();
            let want: [u8; 32] = if l == 7 {
                *blake3::hazmat::merge_subtrees_root(&left, &right, blake3::hazmat::Mode::Hash)
                    .as_bytes()
            } else {
                blake3::hazmat::merge_subtrees_non_root(&left, &right, blake3::hazmat::Mode::Hash)
            };
            let mut got = [0u8; 32];
            for i in 0..8 {
                got[4 * i..4 * i + 4].copy_from_slice(&out[l][i].to_le_bytes());
            }
            assert_eq!(got, want, "lane {l}");
        }
    }

    /// The assembly kernels (production path): leaf CVs vs hazmat, and the
    /// interleaved scan vs a scalar reimplementation of fastcdc's loop.
    #[test]
    fn asm_kernels_match_reference() {
        if !is_x86_feature_detected!("avx2") {
            return;
        }
        assert!(FusedState::layout_ok());
        let data = rand_bytes(1 << 20, 77);
        let (g, gls) = fastcdc::v2020::get_gear_with_seed(0);
        // Leaf CVs: 8 full leaves at arbitrary offsets/counters, with and without
        // the scan running.
        for (variant, rounds) in [(0, 0u64), (1, 7), (2, 3)] {
            let offs: [usize; 8] = [0, 1024, 5000, 77777, 123, 400_000, 999_000, 2048];
            let ctrs: [u32; 8] = [0, 1, 2, 3, 9, 15, 31, 63];
            let mut st = unsafe { FusedState::new() };
            st.gear = g.as_ptr();
            st.gear_ls = gls.as_ptr();
            let mut cv = [unsafe { set1(0) }; 8];
            for i in 0..8 {
                cv[i] = unsafe { set1(IV[i]) };
            }
            let ctr = unsafe { _mm256_loadu_si256(ctrs.as_ptr() as *const __m256i) };
            for step in 0..16 {
                let mut ptrs = [core::ptr::null::<u8>(); 8];
                for l in 0..8 {
                    ptrs[l] = data[offs[l] + 64 * step..].as_ptr();
                }
                let flags = unsafe {
                    set1(match step {
                        0 => CHUNK_START,
                        15 => CHUNK_END,
                        _ => 0,
                    })
                };
                unsafe {
                    if variant == 0 {
                        compress8_asm::<false>(
                            &mut st,
                            &mut cv,
                            &ptrs,
                            ctr,
                            set1(0),
                            set1(64),
                            flags,
                        );
                    } else {
                        // Scan with a mask that (practically) never hits.
                        st.p = data[500_000 + step * 448..].as_ptr();
                        st.h = 0;
                        st.mask = u64::MAX;
                        st.mask_ls = u64::MAX << 1;
                        st.scan_rounds = rounds;
                        let hit = compress8_scan_asm::<false>(
                            &mut st,
                            &mut cv,
                            &ptrs,
                            ctr,
                            set1(0),
                            set1(64),
                            flags,
                        );
                        assert!(hit.is_null());
                    }
                }
            }
            let mut out = cv;
            unsafe { transpose_vecs(&mut out) };
            for l in 0..8 {
                let mut got = [0u8; 32];
                unsafe { _mm256_storeu_si256(got.as_mut_ptr() as *mut __m256i, out[l]) };
                let want = blake3::Hasher::new()
                    .set_input_offset(ctrs[l] as u64 * 1024)
                    .update(&data[offs[l]..offs[l] + 1024])
                    .finalize_non_root();
                assert_eq!(got, want, "variant {variant} lane {l}");
            }
        }

        // Scan: compare the first hit / final hash with a scalar loop over many
        // start offsets, masks and round counts.
        let masks = [
            0x0000d90f03530000u64,
            0x0000d90303530000,
            0x0000000001803110,
            0x3,
            0x1,
        ];
        let mut seed = 5u64;
        for iter in 0..3000 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let start = (seed >> 20) as usize % (data.len() - 1024);
            let mask = masks[iter % masks.len()];
            let rounds = (iter % 8) as u64;
            let h0 = seed.rotate_left(17);
            let nbytes = rounds as usize * ASM_SCAN_ROUND_BYTES;
            // Scalar reference, fastcdc's form.
            let mut h = h0;
            let mut want_hit = None;
            let mut i = 0;
            while i < nbytes {
                h = (h << 2).wrapping_add(gls[data[start + i] as usize]);
                if h & (mask << 1) == 0 {
                    want_hit = Some(start + i);
                    break;
                }
                h = h.wrapping_add(g[data[start + i + 1] as usize]);
                if h & mask == 0 {
                    want_hit = Some(start + i + 1);
                    break;
                }
                i += 2;
            }
            let mut st = unsafe { FusedState::new() };
            st.gear = g.as_ptr();
            st.gear_ls = gls.as_ptr();
            st.p = data[start..].as_ptr();
            st.h = h0;
            st.mask = mask;
            st.mask_ls = mask << 1;
            st.scan_rounds = rounds;
            let mut cv = [unsafe { set1(0) }; 8];
            let ptrs = [data.as_ptr(); 8];
            let hit = unsafe {
                compress8_scan_asm::<false>(
                    &mut st,
                    &mut cv,
                    &ptrs,
                    set1(0),
                    set1(0),
                    set1(64),
                    set1(0),
                )
            };
            match want_hit {
                Some(p) => assert_eq!(hit as usize - data.as_ptr() as usize, p, "iter {iter}"),
                None => {
                    assert!(hit.is_null(), "iter {iter}");
                    assert_eq!(st.h, h, "iter {iter}");
                    assert_eq!(st.p as usize - data.as_ptr() as usize, start + nbytes);
                }
            }
        }
    }
}
