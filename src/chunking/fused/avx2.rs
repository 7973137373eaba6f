//! 8-lane AVX2 BLAKE3 compression.
//!
//! Two implementations of the same transposed 8-lane compression:
//! * `compress8`: Rust intrinsics, used as the reference in tests;
//! * the generated assembly kernels (`compress8_asm`, `compress8_scan_asm`,
//!   see `scripts/gen_fused_kernel.py` and `kernel.s`), used by the driver.
//!   `compress8_scan_asm` additionally runs the FastCDC-2020 gear scan,
//!   interleaved instruction by instruction with the vector rounds.
//!
//! Every lane has its own message pointer, counter (low word; the high word
//! is a separate vector), block length and flags. Chaining values are kept
//! "transposed": `cv[w]` holds word `w` of all 8 lanes.
//!
//! Safety, once for the module: every function here runs AVX2 instructions and is only
//! reached after `is_x86_feature_detected!("avx2")` (the fused path's entry checks it); the
//! unsafe blocks inside are register operations under that contract, or the pointer reads
//! and writes each function's doc states for its arguments.
#![allow(clippy::undocumented_unsafe_blocks)]
// Lane and word indices are the natural way to write a transposed 8-lane hash.
#![allow(clippy::needless_range_loop)]

#[cfg(target_arch = "x86_64")]
use core::arch::x86_64::*;

pub const IV: [u32; 8] = [
    0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19,
];
pub const CHUNK_START: u32 = 1 << 0;
pub const CHUNK_END: u32 = 1 << 1;
pub const PARENT: u32 = 1 << 2;
pub const ROOT: u32 = 1 << 3;

const MSG_SCHEDULE: [[usize; 16]; 7] = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8],
    [3, 4, 10, 12, 13, 2, 7, 14, 6, 5, 9, 0, 11, 15, 8, 1],
    [10, 7, 12, 9, 14, 3, 13, 15, 4, 0, 11, 2, 5, 8, 1, 6],
    [12, 13, 9, 11, 15, 10, 14, 8, 7, 2, 5, 3, 0, 1, 6, 4],
    [9, 14, 11, 5, 8, 12, 15, 1, 13, 3, 0, 10, 2, 6, 4, 7],
    [11, 15, 5, 0, 1, 9, 8, 6, 14, 10, 2, 12, 3, 4, 7, 13],
];

#[inline(always)]
#[cfg(test)]
unsafe fn add(a: __m256i, b: __m256i) -> __m256i {
    unsafe { _mm256_add_epi32(a, b) }
}
#[inline(always)]
#[cfg(test)]
unsafe fn xor(a: __m256i, b: __m256i) -> __m256i {
    unsafe { _mm256_xor_si256(a, b) }
}
#[inline(always)]
pub unsafe fn set1(x: u32) -> __m256i {
    unsafe { _mm256_set1_epi32(x as i32) }
}
/// The BLAKE3 IV in all 8 lanes: the key every leaf and parent starts from.
#[inline(always)]
pub unsafe fn iv8() -> [__m256i; 8] {
    unsafe {
        [
            set1(IV[0]),
            set1(IV[1]),
            set1(IV[2]),
            set1(IV[3]),
            set1(IV[4]),
            set1(IV[5]),
            set1(IV[6]),
            set1(IV[7]),
        ]
    }
}
#[inline(always)]
#[cfg(test)]
unsafe fn rot16(x: __m256i) -> __m256i {
    unsafe {
        _mm256_shuffle_epi8(
            x,
            _mm256_setr_epi8(
                2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13, 2, 3, 0, 1, 6, 7, 4, 5, 10,
                11, 8, 9, 14, 15, 12, 13,
            ),
        )
    }
}
#[inline(always)]
#[cfg(test)]
unsafe fn rot8(x: __m256i) -> __m256i {
    unsafe {
        _mm256_shuffle_epi8(
            x,
            _mm256_setr_epi8(
                1, 2, 3, 0, 5, 6, 7, 4, 9, 10, 11, 8, 13, 14, 15, 12, 1, 2, 3, 0, 5, 6, 7, 4, 9,
                10, 11, 8, 13, 14, 15, 12,
            ),
        )
    }
}
#[inline(always)]
#[cfg(test)]
unsafe fn rot12(x: __m256i) -> __m256i {
    unsafe { _mm256_or_si256(_mm256_srli_epi32(x, 12), _mm256_slli_epi32(x, 20)) }
}
#[inline(always)]
#[cfg(test)]
unsafe fn rot7(x: __m256i) -> __m256i {
    unsafe { _mm256_or_si256(_mm256_srli_epi32(x, 7), _mm256_slli_epi32(x, 25)) }
}

/// Half of a G application on 4 column/diagonal groups at once.
#[inline(always)]
#[cfg(test)]
unsafe fn g_half<const FIRST: bool>(
    v: &mut [__m256i; 16],
    a: [usize; 4],
    b: [usize; 4],
    c: [usize; 4],
    d: [usize; 4],
    m: &[__m256i; 16],
    mi: [usize; 4],
) {
    unsafe {
        for j in 0..4 {
            v[a[j]] = add(add(v[a[j]], m[mi[j]]), v[b[j]]);
        }
        for j in 0..4 {
            v[d[j]] = xor(v[d[j]], v[a[j]]);
            v[d[j]] = if FIRST { rot16(v[d[j]]) } else { rot8(v[d[j]]) };
        }
        for j in 0..4 {
            v[c[j]] = add(v[c[j]], v[d[j]]);
        }
        for j in 0..4 {
            v[b[j]] = xor(v[b[j]], v[c[j]]);
            v[b[j]] = if FIRST { rot12(v[b[j]]) } else { rot7(v[b[j]]) };
        }
    }
}

#[inline(always)]
#[cfg(test)]
unsafe fn round(v: &mut [__m256i; 16], m: &[__m256i; 16], r: usize) {
    let sc = &MSG_SCHEDULE[r];
    unsafe {
        g_half::<true>(
            v,
            [0, 1, 2, 3],
            [4, 5, 6, 7],
            [8, 9, 10, 11],
            [12, 13, 14, 15],
            m,
            [sc[0], sc[2], sc[4], sc[6]],
        );
        g_half::<false>(
            v,
            [0, 1, 2, 3],
            [4, 5, 6, 7],
            [8, 9, 10, 11],
            [12, 13, 14, 15],
            m,
            [sc[1], sc[3], sc[5], sc[7]],
        );
        g_half::<true>(
            v,
            [0, 1, 2, 3],
            [5, 6, 7, 4],
            [10, 11, 8, 9],
            [15, 12, 13, 14],
            m,
            [sc[8], sc[10], sc[12], sc[14]],
        );
        g_half::<false>(
            v,
            [0, 1, 2, 3],
            [5, 6, 7, 4],
            [10, 11, 8, 9],
            [15, 12, 13, 14],
            m,
            [sc[9], sc[11], sc[13], sc[15]],
        );
    }
}

#[inline(always)]
unsafe fn interleave128(a: __m256i, b: __m256i) -> (__m256i, __m256i) {
    unsafe {
        (
            _mm256_permute2x128_si256(a, b, 0x20),
            _mm256_permute2x128_si256(a, b, 0x31),
        )
    }
}

/// 8x8 transpose of 32-bit words (as in blake3's rust_avx2.rs).
#[inline(always)]
pub unsafe fn transpose_vecs(vecs: &mut [__m256i; 8]) {
    unsafe {
        let ab_0145 = _mm256_unpacklo_epi32(vecs[0], vecs[1]);
        let ab_2367 = _mm256_unpackhi_epi32(vecs[0], vecs[1]);
        let cd_0145 = _mm256_unpacklo_epi32(vecs[2], vecs[3]);
        let cd_2367 = _mm256_unpackhi_epi32(vecs[2], vecs[3]);
        let ef_0145 = _mm256_unpacklo_epi32(vecs[4], vecs[5]);
        let ef_2367 = _mm256_unpackhi_epi32(vecs[4], vecs[5]);
        let gh_0145 = _mm256_unpacklo_epi32(vecs[6], vecs[7]);
        let gh_2367 = _mm256_unpackhi_epi32(vecs[6], vecs[7]);
        let abcd_04 = _mm256_unpacklo_epi64(ab_0145, cd_0145);
        let abcd_15 = _mm256_unpackhi_epi64(ab_0145, cd_0145);
        let abcd_26 = _mm256_unpacklo_epi64(ab_2367, cd_2367);
        let abcd_37 = _mm256_unpackhi_epi64(ab_2367, cd_2367);
        let efgh_04 = _mm256_unpacklo_epi64(ef_0145, gh_0145);
        let efgh_15 = _mm256_unpackhi_epi64(ef_0145, gh_0145);
        let efgh_26 = _mm256_unpacklo_epi64(ef_2367, gh_2367);
        let efgh_37 = _mm256_unpackhi_epi64(ef_2367, gh_2367);
        let (x0, x4) = interleave128(abcd_04, efgh_04);
        let (x1, x5) = interleave128(abcd_15, efgh_15);
        let (x2, x6) = interleave128(abcd_26, efgh_26);
        let (x3, x7) = interleave128(abcd_37, efgh_37);
        *vecs = [x0, x1, x2, x3, x4, x5, x6, x7];
    }
}

/// Load one 64-byte block per lane and transpose into 16 message vectors.
///
/// # Safety
/// Each `ptrs[l]` must be valid for reading 64 bytes.
#[inline(always)]
unsafe fn load_msg(ptrs: &[*const u8; 8]) -> [__m256i; 16] {
    unsafe {
        let mut lo = [_mm256_setzero_si256(); 8];
        let mut hi = [_mm256_setzero_si256(); 8];
        for l in 0..8 {
            lo[l] = _mm256_loadu_si256(ptrs[l] as *const __m256i);
            hi[l] = _mm256_loadu_si256(ptrs[l].add(32) as *const __m256i);
        }
        transpose_vecs(&mut lo);
        transpose_vecs(&mut hi);
        [
            lo[0], lo[1], lo[2], lo[3], lo[4], lo[5], lo[6], lo[7], hi[0], hi[1], hi[2], hi[3],
            hi[4], hi[5], hi[6], hi[7],
        ]
    }
}

/// One BLAKE3 compression on 8 lanes (Rust intrinsics reference version),
/// updating the transposed chaining values in place.
///
/// # Safety
/// AVX2 must be available; each `ptrs[l]` must be readable for 64 bytes.
#[target_feature(enable = "avx2")]
#[inline(never)]
#[cfg(test)]
pub unsafe fn compress8(
    cv: &mut [__m256i; 8],
    ptrs: &[*const u8; 8],
    counter_lo: __m256i,
    counter_hi: __m256i,
    block_len: __m256i,
    flags: __m256i,
) {
    unsafe {
        let m = load_msg(ptrs);
        let mut v = [
            cv[0],
            cv[1],
            cv[2],
            cv[3],
            cv[4],
            cv[5],
            cv[6],
            cv[7],
            set1(IV[0]),
            set1(IV[1]),
            set1(IV[2]),
            set1(IV[3]),
            counter_lo,
            counter_hi,
            block_len,
            flags,
        ];
        for r in 0..7 {
            round(&mut v, &m, r);
        }
        for i in 0..8 {
            cv[i] = xor(v[i], v[i + 8]);
        }
    }
}

// ---------------------------------------------------------------------------
// Hand-scheduled fused kernel (generated assembly, see scripts/gen_fused_kernel.py)
// ---------------------------------------------------------------------------

core::arch::global_asm!(include_str!("kernel.s"));

/// Bytes scanned per scanning round of `cdc_fused_compress8_scan`
/// (generator PAIRS=7: 4 half rounds x 7 pairs x 2 bytes).
pub const ASM_SCAN_ROUND_BYTES: usize = 56;

/// In/out block for the assembly kernel. Field offsets are hard-coded in the
/// generator (checked by `layout_ok`).
#[repr(C, align(64))]
pub struct FusedState {
    pub msg: [__m256i; 16],
    pub cv: [__m256i; 8],
    pub ctr_lo: __m256i,
    pub ctr_hi: __m256i,
    pub blen: __m256i,
    pub flags: __m256i,
    pub v8: __m256i,
    pub rot16: __m256i,
    pub rot8: __m256i,
    pub iv: [__m256i; 4],
    pub p: *const u8,
    pub h: u64,
    pub mask_ls: u64,
    pub mask: u64,
    pub gear: *const u64,
    pub gear_ls: *const u64,
    pub sched_end: *const u32,
    /// Set by the fused kernel to the first position whose test hit.
    pub hit: *const u8,
    /// Byte offsets (32 * MSG_SCHEDULE[r][j]) of the message vectors.
    pub sched: [[u32; 16]; 7],
    /// Number of leading rounds (0..=7) that scan ASM_SCAN_ROUND_BYTES each.
    pub scan_rounds: u64,
}

unsafe extern "sysv64" {
    /// `st` points to a `FusedState`. Compresses (cv updated) and scans
    /// `scan_rounds * ASM_SCAN_ROUND_BYTES` bytes from `p`. If a position
    /// hits, `hit` (null on entry) is set to the first such position and `h`
    /// is garbage; otherwise `p` and `h` are advanced.
    fn cdc_fused_compress8_scan(st: *mut core::ffi::c_void) -> u32;
    /// Same compression without scanning (p is advanced but never read
    /// through).
    fn cdc_compress8_asm(st: *mut core::ffi::c_void) -> u32;
}

impl FusedState {
    #[target_feature(enable = "avx2")]
    pub fn new() -> Box<FusedState> {
        let z = _mm256_setzero_si256();
        let mut b = Box::new(FusedState {
            msg: [z; 16],
            cv: [z; 8],
            ctr_lo: z,
            ctr_hi: z,
            blen: z,
            flags: z,
            v8: z,
            rot16: _mm256_setr_epi8(
                2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13, 2, 3, 0, 1, 6, 7, 4, 5, 10,
                11, 8, 9, 14, 15, 12, 13,
            ),
            rot8: _mm256_setr_epi8(
                1, 2, 3, 0, 5, 6, 7, 4, 9, 10, 11, 8, 13, 14, 15, 12, 1, 2, 3, 0, 5, 6, 7, 4, 9,
                10, 11, 8, 13, 14, 15, 12,
            ),
            iv: [z; 4],
            p: core::ptr::null(),
            h: 0,
            mask_ls: 0,
            mask: 0,
            gear: core::ptr::null(),
            gear_ls: core::ptr::null(),
            sched_end: core::ptr::null(),
            hit: core::ptr::null(),
            sched: [[0; 16]; 7],
            scan_rounds: 0,
        });
        for r in 0..7 {
            for j in 0..16 {
                b.sched[r][j] = 32 * MSG_SCHEDULE[r][j] as u32;
            }
        }
        for i in 0..4 {
            b.iv[i] = _mm256_set1_epi32(IV[i] as i32);
        }
        b
    }

    pub fn layout_ok() -> bool {
        use core::mem::offset_of;
        offset_of!(FusedState, cv) == 512
            && offset_of!(FusedState, ctr_lo) == 768
            && offset_of!(FusedState, v8) == 896
            && offset_of!(FusedState, rot16) == 928
            && offset_of!(FusedState, iv) == 992
            && offset_of!(FusedState, p) == 1120
            && offset_of!(FusedState, h) == 1128
            && offset_of!(FusedState, mask_ls) == 1136
            && offset_of!(FusedState, mask) == 1144
            && offset_of!(FusedState, gear) == 1152
            && offset_of!(FusedState, gear_ls) == 1160
            && offset_of!(FusedState, sched_end) == 1168
            && offset_of!(FusedState, hit) == 1176
            && offset_of!(FusedState, sched) == 1184
            && offset_of!(FusedState, scan_rounds) == 1632
    }
}

/// Assembly fused kernel: compression plus a scan of
/// `st.scan_rounds * ASM_SCAN_ROUND_BYTES` bytes. Returns the first hit
/// position, or null (then `st.p`/`st.h` advanced).
///
/// # Safety
/// AVX2 available; `ptrs[l]` readable for 64 bytes; `st.scan_rounds <= 7`
/// and `st.scan_rounds * ASM_SCAN_ROUND_BYTES` bytes from `st.p` readable;
/// `st.gear`/`st.gear_ls` point to 256-entry tables.
#[target_feature(enable = "avx2")]
#[inline]
pub unsafe fn compress8_scan_asm<const RESIDENT: bool>(
    st: &mut FusedState,
    cv: &mut [__m256i; 8],
    ptrs: &[*const u8; 8],
    counter_lo: __m256i,
    counter_hi: __m256i,
    block_len: __m256i,
    flags: __m256i,
) -> *const u8 {
    unsafe {
        fill_state::<RESIDENT>(st, cv, ptrs, counter_lo, counter_hi, block_len, flags);
        st.hit = core::ptr::null();
        cdc_fused_compress8_scan(st as *mut FusedState as *mut core::ffi::c_void);
        if !RESIDENT {
            read_cv(st, cv);
        }
        st.hit
    }
}

/// Assembly version of `compress8` (no scan).
///
/// # Safety
/// AVX2 available; `ptrs[l]` readable for 64 bytes.
#[target_feature(enable = "avx2")]
#[inline]
pub unsafe fn compress8_asm<const RESIDENT: bool>(
    st: &mut FusedState,
    cv: &mut [__m256i; 8],
    ptrs: &[*const u8; 8],
    counter_lo: __m256i,
    counter_hi: __m256i,
    block_len: __m256i,
    flags: __m256i,
) {
    unsafe {
        fill_state::<RESIDENT>(st, cv, ptrs, counter_lo, counter_hi, block_len, flags);
        let saved = (st.p, st.h);
        cdc_compress8_asm(st as *mut FusedState as *mut core::ffi::c_void);
        (st.p, st.h) = saved;
        if !RESIDENT {
            read_cv(st, cv);
        }
    }
}

/// Store the transposed message, CVs (unless RESIDENT: they are already in
/// `st.cv` from the previous compression) and per-lane parameters into `st`
/// with explicit vector stores (avoids memcpy calls).
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn fill_state<const RESIDENT: bool>(
    st: &mut FusedState,
    cv: &[__m256i; 8],
    ptrs: &[*const u8; 8],
    counter_lo: __m256i,
    counter_hi: __m256i,
    block_len: __m256i,
    flags: __m256i,
) {
    unsafe {
        let m = load_msg(ptrs);
        let mp = st.msg.as_mut_ptr();
        for i in 0..16 {
            _mm256_store_si256(mp.add(i), m[i]);
        }
        if !RESIDENT {
            let cp = st.cv.as_mut_ptr();
            for i in 0..8 {
                _mm256_store_si256(cp.add(i), cv[i]);
            }
        }
        _mm256_store_si256(&mut st.ctr_lo, counter_lo);
        _mm256_store_si256(&mut st.ctr_hi, counter_hi);
        _mm256_store_si256(&mut st.blen, block_len);
        _mm256_store_si256(&mut st.flags, flags);
    }
}

#[target_feature(enable = "avx2")]
#[inline]
pub unsafe fn read_cv(st: &FusedState, cv: &mut [__m256i; 8]) {
    unsafe {
        let cp = st.cv.as_ptr();
        for i in 0..8 {
            cv[i] = _mm256_load_si256(cp.add(i));
        }
    }
}
