//! Fused driver: a FastCDC-2020 gear scanner interleaved with 8-lane AVX2
//! BLAKE3 hashing on one core.
//!
//! Content chunks are tracked as records (`Rec`) in order. While a record is
//! still being scanned, every full 1 KiB BLAKE3 chunk ("leaf") that lies below
//! the scanner's position is already final (the content chunk is known to be
//! longer than 1024 bytes, so the leaf is a non-root chunk whose CV depends
//! only on its bytes and its index), so leaves are hashed while the scanner
//! runs ahead. Leaves are hashed 8 at a time in lock-step batches of 16
//! compressions; parent nodes are hashed 8 at a time across records.
//!
//! Every compression goes through the assembly kernels; when the scanner has
//! work, the kernel also advances the gear scan by up to 392 bytes
//! (7 rounds x 56 bytes), stopping at the scanner's phase limit (the `avg`
//! mask switch, the max size, or the end of the data).
//!
//! Memory-safety invariants of the raw pointers used here:
//! * message pointers: full leaves lie inside `data` (a leaf of an open
//!   record is only issued once the scanner has passed its end; a closed
//!   record lies inside `data`); partial leaves and idle lanes use the
//!   1024-byte pad buffers; parents read two adjacent CV slots;
//! * scan range: `pos + rounds * 56 <= lim <= data.len()`;
//! * output pointers: CV slots of records still in `recs` (a record leaves
//!   `recs` only when hashed) or the dummy slots.

// Lane indices are the natural way to fill 8-lane batches.
#![allow(clippy::needless_range_loop)]

use super::avx2::*;
use core::arch::x86_64::*;
use std::collections::VecDeque;

const LANES: usize = 8;
const LEAF: usize = 1024;
/// Maximum number of records in flight (bounds memory and scanner lead).
const REC_LIMIT: usize = 24;
/// Number of complete records whose trees are hashed together.
const TREE_GROUP: usize = 8;
/// Bytes scanned per scalar (un-fused) scan call when the hasher is starved.
const SCALAR_BUDGET: usize = 1024;

static ZERO_BLOCK: [u8; 64] = [0; 64];

/// Heap buffer accessed only through raw pointers. The kernels read and
/// write CVs and padded leaves through raw pointers that are kept across
/// `&mut self` calls; owning the memory as a raw allocation (instead of a
/// `Box` field that would be reborrowed) keeps those pointers valid.
struct RawBuf<T: Copy> {
    ptr: *mut T,
    len: usize,
}

impl<T: Copy> RawBuf<T> {
    fn new(init: T, len: usize) -> Self {
        let b: Box<[T]> = vec![init; len].into_boxed_slice();
        RawBuf {
            len,
            ptr: Box::into_raw(b) as *mut T,
        }
    }
    /// Pointer to element `i` (bounds-checked).
    fn at(&self, i: usize) -> *mut T {
        assert!(i < self.len);
        // SAFETY: i < len, inside the allocation.
        unsafe { self.ptr.add(i) }
    }
    fn get(&self, i: usize) -> T {
        // SAFETY: `at` is in bounds; the buffer is initialised.
        unsafe { *self.at(i) }
    }
    fn set(&self, i: usize, v: T) {
        // SAFETY: `at` is in bounds; no references into the buffer exist.
        unsafe { *self.at(i) = v }
    }
}

impl<T: Copy> Drop for RawBuf<T> {
    fn drop(&mut self) {
        // SAFETY: ptr/len come from Box::into_raw of a boxed slice of len.
        unsafe {
            drop(Box::from_raw(core::ptr::slice_from_raw_parts_mut(
                self.ptr, self.len,
            )))
        }
    }
}

struct Rec {
    start: usize,
    len: usize,
    closed: bool,
    hashed: bool,
    nleaves: usize,
    issued: usize,
    done: usize,
    /// `cap_leaves` leaf CV slots followed by one slot for the root hash.
    /// A raw heap buffer, so pointers into it stay valid while `recs` moves.
    cvs: RawBuf<[u32; 8]>,
}

struct Scanner {
    open: bool,
    done: bool,
    next_start: usize,
    cstart: usize,
    pos: usize,
    h: u64,
    e1: usize,
    e2: usize,
    full_end: usize,
    lim: usize,
    mask: u64,
}

pub struct Driver<'a> {
    data: &'a [u8],
    min: usize,
    avg: usize,
    max: usize,
    mask_s: u64,
    mask_l: u64,
    gear: &'static [u64; 256],
    gear_ls: &'static [u64; 256],
    recs: VecDeque<Rec>,
    front_id: usize,
    issue_id: usize,
    ready: Vec<usize>,
    sc: Scanner,
    out: Vec<(u32, [u8; 32])>,
    pool: Vec<RawBuf<[u32; 8]>>,
    cap_leaves: usize,
    /// Zero-padded copies of partial leaves, one per lane.
    pad: RawBuf<[u8; LEAF]>,
    /// Output slots for idle lanes.
    dummy: RawBuf<[u32; 8]>,
    /// Partial last leaves (rec_id, leaf index) waiting for a partial batch.
    pending: Vec<(usize, usize)>,
    st: Box<FusedState>,
    /// Event counters, printed to stderr when CDC_STATS is set.
    pub stats: [u64; 9],
}

#[derive(Clone, Copy)]
struct LeafLane {
    base: *const u8,
    counter: u32,
    end_step: u32,
    last_len: u32,
    dst: *mut [u32; 8],
    rec_id: usize,
}

fn words_to_bytes(w: &[u32; 8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for i in 0..8 {
        out[4 * i..4 * i + 4].copy_from_slice(&w[i].to_le_bytes());
    }
    out
}

impl<'a> Driver<'a> {
    /// Caller guarantees: min, avg, max even, 2 <= min <= max, avg <= max,
    /// max <= 1 MiB (checked by `lib.rs`).
    pub fn new(
        data: &'a [u8],
        min: usize,
        avg: usize,
        max: usize,
        gear: &'static [u64; 256],
        gear_ls: &'static [u64; 256],
    ) -> Self {
        let (mask_s, mask_l) =
            fastcdc::v2020::select_masks(avg, fastcdc::v2020::Normalization::Level1);
        let cap_leaves = max.max(min).div_ceil(LEAF) + 1;
        Driver {
            data,
            min,
            avg,
            max,
            mask_s,
            mask_l,
            gear,
            gear_ls,
            recs: VecDeque::with_capacity(REC_LIMIT + 2),
            front_id: 0,
            issue_id: 0,
            ready: Vec::with_capacity(REC_LIMIT + 2),
            sc: Scanner {
                open: false,
                done: data.is_empty(),
                next_start: 0,
                cstart: 0,
                pos: 0,
                h: 0,
                e1: 0,
                e2: 0,
                full_end: 0,
                lim: 0,
                mask: 0,
            },
            out: Vec::with_capacity(data.len() / avg.max(1) * 2 + 16),
            pool: Vec::new(),
            cap_leaves,
            pad: RawBuf::new([0u8; LEAF], LANES),
            dummy: RawBuf::new([0u32; 8], LANES),
            pending: Vec::with_capacity(REC_LIMIT + LANES),
            stats: [0; 9],
            st: {
                // SAFETY: only constructed on the AVX2 path (lib.rs).
                let mut st = unsafe { FusedState::new() };
                st.gear = gear.as_ptr();
                st.gear_ls = gear_ls.as_ptr();
                st
            },
        }
    }

    // ----------------------------------------------------------------------
    // Records
    // ----------------------------------------------------------------------

    fn rec(&mut self, id: usize) -> &mut Rec {
        let i = id - self.front_id;
        &mut self.recs[i]
    }

    fn check_complete(&mut self, id: usize) {
        let r = self.rec(id);
        if r.closed && !r.hashed && r.done == r.nleaves {
            // Pushed exactly once: `done` only reaches `nleaves` once, and
            // `close` pushes only if all leaves were already done.
            self.ready.push(id);
        }
    }

    /// Close the open record with chunk length `len`, then try to open the
    /// next one.
    fn close(&mut self, len: usize) {
        let id = self.front_id + self.recs.len() - 1;
        let data = self.data;
        let r = self.recs.back_mut().unwrap();
        r.len = len;
        r.closed = true;
        if len <= LEAF {
            let h = blake3::hash(&data[r.start..r.start + len]);
            let mut w = [0u32; 8];
            for i in 0..8 {
                w[i] = u32::from_le_bytes(h.as_bytes()[4 * i..4 * i + 4].try_into().unwrap());
            }
            r.cvs.set(r.cvs.len - 1, w);
            r.nleaves = 0;
            r.hashed = true;
        } else {
            r.nleaves = len.div_ceil(LEAF);
            if r.done == r.nleaves {
                self.ready.push(id);
            }
        }
        self.sc.open = false;
        self.sc.next_start = r.start + len;
        if self.sc.next_start == data.len() {
            self.sc.done = true;
        }
        // Deliberately does not open the next record (no recursion);
        // callers call `ensure_open`.
    }

    /// Open the next record if none is open, data remains and the record
    /// limit allows it.
    fn ensure_open(&mut self) {
        while !self.sc.open && !self.sc.done && self.recs.len() < REC_LIMIT {
            let start = self.sc.next_start;
            let n = self.data.len();
            let cvs = self
                .pool
                .pop()
                .unwrap_or_else(|| RawBuf::new([0u32; 8], self.cap_leaves + 1));
            self.recs.push_back(Rec {
                start,
                len: 0,
                closed: false,
                hashed: false,
                nleaves: 0,
                issued: 0,
                done: 0,
                cvs,
            });
            self.sc.open = true;
            let rem = n - start;
            if rem <= self.min {
                self.close(rem);
                continue;
            }
            // Mirrors fastcdc 5.0.0 v2020::cut_gear_arr.
            let mut center = self.avg;
            let mut remp = rem;
            if rem > self.max {
                remp = self.max;
            } else if rem < center {
                center = rem;
            }
            self.sc.cstart = start;
            self.sc.pos = start + (self.min / 2) * 2;
            self.sc.h = 0;
            self.sc.e1 = start + (center / 2) * 2;
            self.sc.e2 = start + (remp / 2) * 2;
            self.sc.full_end = start + remp;
            self.set_phase();
        }
    }

    /// Choose mask and limit for the scanner position; closes the record if
    /// the scan window is exhausted.
    fn set_phase(&mut self) {
        if self.sc.pos < self.sc.e1 {
            self.sc.lim = self.sc.e1;
            self.sc.mask = self.mask_s;
        } else if self.sc.pos < self.sc.e2 {
            self.sc.lim = self.sc.e2;
            self.sc.mask = self.mask_l;
        } else {
            let len = self.sc.full_end - self.sc.cstart;
            self.close(len);
        }
    }

    fn emit(&mut self) {
        while let Some(r) = self.recs.front() {
            if !(r.closed && r.hashed) {
                break;
            }
            let r = self.recs.pop_front().unwrap();
            self.out
                .push((r.len as u32, words_to_bytes(&r.cvs.get(r.cvs.len - 1))));
            self.pool.push(r.cvs);
            self.front_id += 1;
        }
        if self.issue_id < self.front_id {
            self.issue_id = self.front_id;
        }
    }

    // ----------------------------------------------------------------------
    // Scanner
    // ----------------------------------------------------------------------

    /// Number of leaves of record `idx` (index into recs) known to be final.
    fn issuable(&self, idx: usize) -> usize {
        let r = &self.recs[idx];
        if r.closed {
            r.nleaves
        } else {
            let lb = self.sc.pos - r.start;
            if lb > LEAF { lb / LEAF } else { 0 }
        }
    }

    /// Number of known-final, not yet issued *full* leaves (capped).
    fn count_avail_full(&self, cap: usize) -> usize {
        let mut n = 0;
        let mut idx = self.issue_id - self.front_id;
        while idx < self.recs.len() && n < cap {
            let r = &self.recs[idx];
            let full = if r.closed {
                r.len / LEAF
            } else {
                self.issuable(idx)
            };
            n += full.saturating_sub(r.issued);
            idx += 1;
        }
        n
    }

    /// Scalar scan of the open record, at most `budget` bytes (plus phase
    /// transitions), exactly as fastcdc's cut loop.
    fn scan_scalar(&mut self, budget: usize) {
        if !self.sc.open {
            return;
        }
        let data = self.data;
        let end = (self.sc.pos + budget).min(self.sc.lim);
        let mut pos = self.sc.pos;
        let mut h = self.sc.h;
        let mask = self.sc.mask;
        let mask_ls = mask << 1;
        let (g, gls) = (self.gear, self.gear_ls);
        // pos and lim have the same parity relative to cstart (even).
        let src = &data[..self.sc.lim];
        while pos + 1 < end {
            let x = gls[src[pos] as usize];
            let s2 = h << 2;
            let e = s2.wrapping_add(x);
            if e & mask_ls == 0 {
                self.sc.pos = pos;
                let len = pos - self.sc.cstart;
                self.close(len);
                return;
            }
            // h = (h << 2) + (x + g): same value as e + g, but the
            // loop-carried chain is shl -> add (the empty asm stops LLVM
            // from re-associating it back to e + g).
            let mut y = x.wrapping_add(g[src[pos + 1] as usize]);
            // SAFETY: empty asm, only pins a register value.
            unsafe {
                core::arch::asm!("/* {0} */", inout(reg) y, options(pure, nomem, nostack, preserves_flags))
            };
            h = s2.wrapping_add(y);
            if h & mask == 0 {
                self.sc.pos = pos + 1;
                let len = pos + 1 - self.sc.cstart;
                self.close(len);
                return;
            }
            pos += 2;
        }
        self.sc.pos = pos;
        self.sc.h = h;
        if pos >= self.sc.lim {
            self.set_phase();
        }
    }

    /// One 8-lane compression, with the scanner interleaved (assembly
    /// kernel) for as many whole rounds (56 bytes each, up to 7) as fit
    /// before the scanner's phase limit; a remainder below 56 bytes is
    /// finished by the scalar loop.
    #[target_feature(enable = "avx2")]
    unsafe fn step<const RESIDENT: bool>(
        &mut self,
        cv: &mut [__m256i; 8],
        ptrs: &[*const u8; 8],
        ctr_lo: __m256i,
        ctr_hi: __m256i,
        blen: __m256i,
        flags: __m256i,
    ) {
        // SAFETY: AVX2 is this fn's contract (target_feature); each pointer use inside
        // keeps the module's invariants, stated where it happens.
        unsafe {
            let rounds = if self.sc.open {
                ((self.sc.lim - self.sc.pos) / ASM_SCAN_ROUND_BYTES).min(7)
            } else {
                0
            };
            if rounds > 0 {
                let base = self.data.as_ptr();
                let st = &mut *self.st;
                // In bounds: pos + rounds * ASM_SCAN_ROUND_BYTES <= lim <= len.
                st.scan_rounds = rounds as u64;
                st.p = base.add(self.sc.pos);
                st.h = self.sc.h;
                st.mask_ls = self.sc.mask << 1;
                st.mask = self.sc.mask;
                // SAFETY: ptrs readable for 64 bytes (callers); scan range in
                // bounds (checked above); gear tables set in `new` (256
                // entries each).
                let hit = compress8_scan_asm::<RESIDENT>(st, cv, ptrs, ctr_lo, ctr_hi, blen, flags);
                if hit.is_null() {
                    self.sc.pos = st.p as usize - base as usize;
                    self.sc.h = st.h;
                    self.stats[0] += 1;
                    if self.sc.lim - self.sc.pos < ASM_SCAN_ROUND_BYTES {
                        // Finish the phase with the scalar loop (< 56 bytes).
                        self.scan_scalar(ASM_SCAN_ROUND_BYTES);
                        self.ensure_open();
                    }
                    return;
                }
                self.stats[1] += 1;
                let at = hit as usize - base as usize;
                self.sc.pos = at;
                let len = at - self.sc.cstart;
                self.close(len);
                self.ensure_open();
            } else {
                compress8_asm::<RESIDENT>(&mut self.st, cv, ptrs, ctr_lo, ctr_hi, blen, flags);
                self.stats[2] += 1;
                if self.sc.open {
                    // Fewer than ASM_SCAN_ROUND_BYTES before the phase limit.
                    self.stats[3] += 1;
                    self.scan_scalar(ASM_SCAN_ROUND_BYTES);
                    self.ensure_open();
                }
            }
        }
    }

    // ----------------------------------------------------------------------
    // Hashing
    // ----------------------------------------------------------------------

    /// Fill lanes with up to 8 full leaves, in order; partial last leaves
    /// met on the way are moved to `pending` (hashed later in batches of
    /// partial leaves, so that full batches are uniform).
    fn gather_leaves(&mut self, lanes: &mut [LeafLane; LANES]) -> usize {
        let mut cnt = 0;
        let mut idx = self.issue_id - self.front_id;
        let data = self.data;
        while cnt < LANES && idx < self.recs.len() {
            let iss = self.issuable(idx);
            let rec_id = self.front_id + idx;
            let r = &mut self.recs[idx];
            while r.issued < iss && cnt < LANES {
                let k = r.issued;
                let off = r.start + k * LEAF;
                let bytes = if r.closed {
                    (r.len - k * LEAF).min(LEAF)
                } else {
                    LEAF
                };
                if bytes < LEAF {
                    self.pending.push((rec_id, k));
                } else {
                    lanes[cnt] = LeafLane {
                        // In bounds: the leaf lies inside the record.
                        base: data[off..off + LEAF].as_ptr(),
                        counter: k as u32,
                        end_step: 15,
                        last_len: 64,
                        dst: r.cvs.at(k),
                        rec_id,
                    };
                    cnt += 1;
                }
                r.issued += 1;
            }
            idx += 1;
        }
        // Advance issue_id past fully issued closed records.
        while self.issue_id < self.front_id + self.recs.len() {
            let r = &self.recs[self.issue_id - self.front_id];
            if r.closed && r.issued == r.nleaves {
                self.issue_id += 1;
            } else {
                break;
            }
        }
        // Idle lanes.
        for l in cnt..LANES {
            lanes[l] = LeafLane {
                base: self.pad.at(l) as *const u8,
                counter: 0,
                end_step: 15,
                last_len: 64,
                dst: self.dummy.at(l),
                rec_id: usize::MAX,
            };
        }
        cnt
    }

    /// Take up to 8 pending partial leaves into lanes (copied into zero
    /// padded buffers). Returns the number of steps needed (max blocks).
    fn gather_partials(&mut self, lanes: &mut [LeafLane; LANES]) -> usize {
        let data = self.data;
        let n = self.pending.len().min(LANES);
        let mut steps = 1;
        for (cnt, (rec_id, k)) in self.pending.drain(..n).enumerate() {
            let r = &mut self.recs[rec_id - self.front_id];
            let off = r.start + k * LEAF;
            let bytes = r.len - k * LEAF;
            debug_assert!(bytes > 0 && bytes < LEAF);
            let mut buf = [0u8; LEAF];
            buf[..bytes].copy_from_slice(&data[off..off + bytes]);
            self.pad.set(cnt, buf);
            let nblocks = bytes.div_ceil(64);
            lanes[cnt] = LeafLane {
                base: self.pad.at(cnt) as *const u8,
                counter: k as u32,
                end_step: (nblocks - 1) as u32,
                last_len: (bytes - 64 * (nblocks - 1)) as u32,
                dst: r.cvs.at(k),
                rec_id,
            };
            steps = steps.max(nblocks);
        }
        for l in n..LANES {
            lanes[l] = LeafLane {
                base: self.pad.at(l) as *const u8,
                counter: 0,
                end_step: 15,
                last_len: 64,
                dst: self.dummy.at(l),
                rec_id: usize::MAX,
            };
        }
        steps
    }

    #[target_feature(enable = "avx2")]
    unsafe fn leaf_batch(&mut self, lanes: &[LeafLane; LANES], nsteps: usize) {
        // SAFETY: AVX2 is this fn's contract (target_feature); each pointer use inside
        // keeps the module's invariants, stated where it happens.
        unsafe {
            let mut cv = iv8();
            let l = lanes;
            let ctr_lo = _mm256_setr_epi32(
                l[0].counter as i32,
                l[1].counter as i32,
                l[2].counter as i32,
                l[3].counter as i32,
                l[4].counter as i32,
                l[5].counter as i32,
                l[6].counter as i32,
                l[7].counter as i32,
            );
            let ctr_hi = _mm256_setzero_si256();
            let endv = _mm256_setr_epi32(
                l[0].end_step as i32,
                l[1].end_step as i32,
                l[2].end_step as i32,
                l[3].end_step as i32,
                l[4].end_step as i32,
                l[5].end_step as i32,
                l[6].end_step as i32,
                l[7].end_step as i32,
            );
            let lastv = _mm256_setr_epi32(
                l[0].last_len as i32,
                l[1].last_len as i32,
                l[2].last_len as i32,
                l[3].last_len as i32,
                l[4].last_len as i32,
                l[5].last_len as i32,
                l[6].last_len as i32,
                l[7].last_len as i32,
            );
            let endflag = set1(CHUNK_END);
            let full = set1(64);
            let uniform = nsteps == 16 && l.iter().all(|x| x.end_step == 15 && x.last_len == 64);
            if uniform {
                // Common case: 8 full leaves. The CVs stay resident in
                // self.st between the 16 compressions; no freezing needed.
                let cp = self.st.cv.as_mut_ptr();
                for i in 0..8 {
                    _mm256_store_si256(cp.add(i), cv[i]);
                }
                for step in 0..16usize {
                    let mut ptrs = [core::ptr::null::<u8>(); LANES];
                    for i in 0..LANES {
                        // SAFETY: each lane base has 1024 readable bytes
                        // (a full leaf inside `data`, or a pad buffer).
                        ptrs[i] = l[i].base.add(64 * step);
                    }
                    let flags = set1(match step {
                        0 => CHUNK_START,
                        15 => CHUNK_END,
                        _ => 0,
                    });
                    self.step::<true>(&mut cv, &ptrs, ctr_lo, ctr_hi, full, flags);
                }
                read_cv(&self.st, &mut cv);
            } else {
                for step in 0..nsteps {
                    let mut ptrs = [core::ptr::null::<u8>(); LANES];
                    for i in 0..LANES {
                        // SAFETY: each lane base has 1024 readable bytes and
                        // nsteps <= 16.
                        ptrs[i] = l[i].base.add(64 * step);
                    }
                    let sv = set1(step as u32);
                    let is_end = _mm256_cmpeq_epi32(endv, sv);
                    let mut flags = _mm256_and_si256(is_end, endflag);
                    if step == 0 {
                        flags = _mm256_or_si256(flags, set1(CHUNK_START));
                    }
                    let blen = _mm256_blendv_epi8(full, lastv, is_end);
                    let old = cv;
                    self.step::<false>(&mut cv, &ptrs, ctr_lo, ctr_hi, blen, flags);
                    let frozen = _mm256_cmpgt_epi32(sv, endv);
                    for i in 0..8 {
                        cv[i] = _mm256_blendv_epi8(cv[i], old[i], frozen);
                    }
                }
            }
            transpose_vecs(&mut cv);
            for i in 0..LANES {
                // SAFETY: dst points into a live record's CV RawBuf or into
                // the dummy RawBuf (records are only dropped after `emit`,
                // i.e. after all their leaves and parents are done).
                _mm256_storeu_si256(l[i].dst as *mut __m256i, cv[i]);
            }
            for i in 0..LANES {
                if l[i].rec_id != usize::MAX {
                    self.rec(l[i].rec_id).done += 1;
                    self.check_complete(l[i].rec_id);
                }
            }
        }
    }

    /// Hash up to 8 parent nodes. `tasks[i] = (src, dst, flags)`: src points
    /// to 64 bytes (two adjacent CVs).
    #[target_feature(enable = "avx2")]
    unsafe fn parent_batch(&mut self, tasks: &[(*const u8, *mut [u32; 8], u32)]) {
        // SAFETY: AVX2 is this fn's contract (target_feature); each pointer use inside
        // keeps the module's invariants, stated where it happens.
        unsafe {
            let mut ptrs = [ZERO_BLOCK.as_ptr(); LANES];
            let mut dsts = [core::ptr::null_mut::<[u32; 8]>(); LANES];
            let mut fl = [PARENT; LANES];
            for i in 0..LANES {
                if i < tasks.len() {
                    ptrs[i] = tasks[i].0;
                    dsts[i] = tasks[i].1;
                    fl[i] = tasks[i].2;
                } else {
                    dsts[i] = self.dummy.at(i);
                }
            }
            let mut cv = iv8();
            let flags = _mm256_loadu_si256(fl.as_ptr() as *const __m256i);
            let zero = _mm256_setzero_si256();
            // SAFETY (step): every ptrs[i] is 64 readable bytes: two adjacent
            // CV slots of a RawBuf, or ZERO_BLOCK.
            self.step::<false>(&mut cv, &ptrs, zero, zero, set1(64), flags);
            transpose_vecs(&mut cv);
            for i in 0..LANES {
                // SAFETY: dsts are CV slots of live records' RawBufs (or the
                // dummy RawBuf), 32 writable bytes each; the inputs of this
                // batch were already read by the compression.
                _mm256_storeu_si256(dsts[i] as *mut __m256i, cv[i]);
            }
        }
    }

    #[target_feature(enable = "avx2")]
    unsafe fn tree_stage(&mut self) {
        // SAFETY: AVX2 is this fn's contract (target_feature); each pointer use inside
        // keeps the module's invariants, stated where it happens.
        unsafe {
            let ids: Vec<usize> = std::mem::take(&mut self.ready);
            let mut m: Vec<usize> = ids.iter().map(|&id| self.rec(id).nleaves).collect();
            let mut tasks: Vec<(*const u8, *mut [u32; 8], u32)> = Vec::with_capacity(64);
            loop {
                tasks.clear();
                for (j, &id) in ids.iter().enumerate() {
                    let mj = m[j];
                    if mj < 2 {
                        continue;
                    }
                    let r = self.rec(id);
                    let root = r.cvs.len - 1;
                    for i in 0..mj / 2 {
                        // [2i] and [2i+1] are adjacent: 64 contiguous bytes
                        // (2i + 1 < mj <= nleaves < root).
                        let src = r.cvs.at(2 * i) as *const u8;
                        if mj == 2 {
                            tasks.push((src, r.cvs.at(root), PARENT | ROOT));
                        } else {
                            tasks.push((src, r.cvs.at(i), PARENT));
                        }
                    }
                }
                if tasks.is_empty() {
                    break;
                }
                // In-place is safe: within a level, task i writes slot i and
                // reads slots 2i, 2i+1; later batches read slots > any slot
                // written earlier, and a batch reads its inputs before
                // writing its outputs.
                let mut t = 0;
                while t < tasks.len() {
                    let e = (t + LANES).min(tasks.len());
                    let chunk: [(*const u8, *mut [u32; 8], u32); LANES] = {
                        let mut a = [(ZERO_BLOCK.as_ptr(), core::ptr::null_mut(), 0u32); LANES];
                        a[..e - t].copy_from_slice(&tasks[t..e]);
                        a
                    };
                    self.stats[7] += 1;
                    self.stats[8] += (e - t) as u64;
                    self.parent_batch(&chunk[..e - t]);
                    t = e;
                }
                for (j, &id) in ids.iter().enumerate() {
                    let mj = m[j];
                    if mj < 2 {
                        continue;
                    }
                    let r = self.rec(id);
                    if mj == 2 {
                        r.hashed = true;
                        m[j] = 1;
                    } else {
                        if mj % 2 == 1 {
                            r.cvs.set(mj / 2, r.cvs.get(mj - 1));
                        }
                        m[j] = mj.div_ceil(2);
                    }
                }
            }
        }
    }

    #[target_feature(enable = "avx2")]
    /// Run to completion. Returns None only if the driver stops making
    /// progress, which cannot happen by construction (the caller then falls
    /// back to the plain path instead of panicking or looping).
    pub unsafe fn run(mut self) -> Option<Vec<(u32, [u8; 32])>> {
        // SAFETY: AVX2 is this fn's contract (target_feature); each pointer use inside
        // keeps the module's invariants, stated where it happens.
        unsafe {
            let mut lanes = [LeafLane {
                base: core::ptr::null(),
                counter: 0,
                end_step: 0,
                last_len: 0,
                dst: core::ptr::null_mut(),
                rec_id: usize::MAX,
            }; LANES];
            self.ensure_open();
            loop {
                self.ensure_open();
                self.emit();
                if self.sc.done && self.recs.is_empty() {
                    break;
                }
                let avail = self.count_avail_full(LANES);
                if avail >= LANES {
                    self.stats[5] += 1;
                    self.gather_leaves(&mut lanes);
                    self.leaf_batch(&lanes, 16);
                    continue;
                }
                if self.pending.len() >= LANES {
                    self.stats[6] += 1;
                    let steps = self.gather_partials(&mut lanes);
                    self.leaf_batch(&lanes, steps);
                    continue;
                }
                if self.ready.len() >= TREE_GROUP {
                    self.tree_stage();
                    continue;
                }
                if self.sc.open {
                    self.stats[4] += 1;
                    self.scan_scalar(SCALAR_BUDGET);
                    continue;
                }
                // Scanner blocked (record limit) or done: drain.
                if avail > 0 {
                    self.gather_leaves(&mut lanes);
                    self.leaf_batch(&lanes, 16);
                    continue;
                }
                // Move remaining partial leaves to `pending`.
                let before_pending = self.pending.len();
                self.gather_leaves(&mut lanes);
                debug_assert!(self.pending.len() >= before_pending);
                if !self.pending.is_empty() {
                    self.stats[6] += 1;
                    let steps = self.gather_partials(&mut lanes);
                    self.leaf_batch(&lanes, steps);
                    continue;
                }
                if !self.ready.is_empty() {
                    self.tree_stage();
                    continue;
                }
                // Records may have been opened/closed by ensure_open after
                // emit ran: retry if that changed anything.
                let before = (self.recs.len(), self.front_id, self.sc.open, self.sc.done);
                self.ensure_open();
                self.emit();
                if before != (self.recs.len(), self.front_id, self.sc.open, self.sc.done) {
                    continue;
                }
                // Unreachable by construction; never loop forever.
                debug_assert!(false, "fused driver made no progress");
                return None;
            }
            if std::env::var_os("CDC_STATS").is_some() {
                eprintln!(
                    "stats: fused_ok={} fused_hit={} plain_steps={} plain_with_scan={} starved_scalar={} leaf_batches={} partial_batches={} parent_batches={} parents={}",
                    self.stats[0],
                    self.stats[1],
                    self.stats[2],
                    self.stats[3],
                    self.stats[4],
                    self.stats[5],
                    self.stats[6],
                    self.stats[7],
                    self.stats[8]
                );
            }
            Some(self.out)
        }
    }
}
