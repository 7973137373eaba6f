//! Heap tuning for the daemons: big transfer buffers are reused, not mapped afresh each time.

/// Largest allocation glibc serves from its heap instead of a fresh mapping (its maximum).
const MMAP_THRESHOLD: libc::c_int = 32 << 20;
/// Free memory a heap keeps at its top before giving it back to the system.
const TRIM_THRESHOLD: libc::c_int = 128 << 20;

/// Keeps request bodies, upload batches and fetch answers (tens of MiB each) in the heap.
///
/// By default glibc maps each allocation over 128 KiB to itself and unmaps it on free, so
/// every 20 MiB batch costs ~5,000 page faults and as many zeroed pages (~0.4 CPU s per GiB
/// moved, measured on the server). A no-op where the C library is not glibc.
pub fn keep_big_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any other thread starts.
    unsafe {
        if libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1
            || libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1
        {
            tracing::debug!("mallopt refused the heap thresholds; keeping the defaults");
        }
    }
}
