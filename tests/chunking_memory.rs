//! Memory bounds: decoders fed arbitrary bytes hold memory bounded by their input (and their
//! limit); streaming chunking holds memory bounded by the maximum chunk, not the file.
//!
//! This test binary counts every Rust allocation; its tests take a lock so that no other test
//! thread allocates while one is measuring. zstd allocates in C, unseen by the counter; its
//! window (the memory a frame header can ask for) is checked by refusal below.
//! Measured with glibc's mallinfo2 on such a frame (two 100-byte raw blocks): 134,846,480 bytes of C heap without
//! the window limit, 227,088 with it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{self, Read};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use deltadrive::chunking::{
    ChunkId, ChunkerParams, Manifest, ManifestEdit, chunk_bytes, chunk_reader, payload,
};
use proptest::collection::vec;
use proptest::prelude::any;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

struct CountingAlloc;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call forwards to the system allocator with the caller's arguments; the
// counters only observe sizes.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours, passed through.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with this layout (see `alloc`).
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Held by each test while it measures.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `f` and returns the most memory it held at once beyond what was held before.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

const LIMIT: usize = 65_536;
/// zstd's decoder context and stream buffers, whatever the input.
const ZSTD_OVERHEAD: usize = 1 << 20;

fn check(input: &[u8]) -> Result<(), TestCaseError> {
    let bound = 16 * input.len() + 1024;
    let (_, peak) = peak_during(|| Manifest::decode(input));
    proptest::prop_assert!(
        peak <= bound,
        "manifest decode held {peak} for {}",
        input.len()
    );
    let (_, peak) = peak_during(|| ManifestEdit::decode(input));
    proptest::prop_assert!(peak <= bound, "edit decode held {peak} for {}", input.len());
    let (_, peak) = peak_during(|| payload::decode(input, ChunkId::of(b""), LIMIT));
    proptest::prop_assert!(
        peak <= 2 * LIMIT + ZSTD_OVERHEAD,
        "payload decode held {peak}"
    );
    Ok(())
}

#[test]
fn decoders_hold_memory_bounded_by_their_input() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // A zstd frame of a few bytes that declares a 128 MiB window and no content size:
    // magic, frame header (no flags; window exponent 27 - 10), one last raw block of 100 bytes.
    let mut hostile = vec![1u8, 0x28, 0xb5, 0x2f, 0xfd, 0x00, 17 << 3];
    hostile.extend_from_slice(&((100u32 << 3) | 1).to_le_bytes()[..3]);
    hostile.extend_from_slice(&[1u8; 100]);
    let (result, peak) = peak_during(|| payload::decode(&hostile, ChunkId::of(&[1u8; 100]), LIMIT));
    assert!(
        result.is_err(),
        "a frame needing a 128 MiB window is refused"
    );
    assert!(peak <= 2 * LIMIT + ZSTD_OVERHEAD, "held {peak}");

    // Headers announcing the largest counts, with nothing behind them.
    let mut manifest = b"DDMF\x01".to_vec();
    manifest.extend_from_slice(&(1u32 << 26).to_le_bytes());
    manifest.extend_from_slice(&u64::MAX.to_le_bytes());
    check(&manifest).unwrap();
    check(b"DDME\x01\x80\x80\x80\x20\x00").unwrap();

    let mut runner = TestRunner::new(Config {
        cases: 1_000,
        failure_persistence: None,
        ..Config::default()
    });
    let inputs = (0u8..4, vec(any::<u8>(), 0..4096));
    runner
        .run(&inputs, |(kind, body)| {
            let prefix: &[u8] = match kind {
                0 => b"DDMF\x01",
                1 => b"DDME\x01",
                2 => b"\x01\x28\xb5\x2f\xfd",
                _ => b"",
            };
            let mut input = prefix.to_vec();
            input.extend(body);
            check(&input)
        })
        .unwrap();
}

/// Pseudo-random bytes made as they are read (byte i is a function of i alone, whatever the
/// read sizes): never all in memory.
struct Generated {
    pos: usize,
    left: usize,
}

fn word(index: usize) -> [u8; 8] {
    let mut z = (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)).to_le_bytes()
}

impl Read for Generated {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.left);
        let mut j = 0;
        while j < n {
            let i = self.pos + j;
            let w = word(i / 8);
            let take = (8 - i % 8).min(n - j);
            buf[j..j + take].copy_from_slice(&w[i % 8..i % 8 + take]);
            j += take;
        }
        self.pos += n;
        self.left -= n;
        Ok(n)
    }
}

#[test]
fn streaming_chunking_holds_a_few_max_chunks_not_the_file() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const LEN: usize = 64 << 20;
    let p = ChunkerParams::default();
    let (manifest, peak) =
        peak_during(|| chunk_reader(p, Generated { pos: 0, left: LEN }).unwrap());
    assert_eq!(manifest.size(), LEN as u64);
    // The 1 MiB read buffer, plus the manifest (36 bytes per ~20 KiB chunk, doubling growth).
    let manifest_bytes = manifest.chunks.len() * 36 * 2;
    assert!(
        peak <= (1 << 20) + manifest_bytes + 64 * 1024,
        "held {peak} bytes"
    );

    let mut all = Vec::with_capacity(LEN);
    Generated { pos: 0, left: LEN }
        .read_to_end(&mut all)
        .unwrap();
    assert!(
        manifest == chunk_bytes(p, &all),
        "streamed manifest differs"
    );
}
