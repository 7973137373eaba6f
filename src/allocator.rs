//! What the server and the drive's daemon ask of the C allocator so that memory freed after
//! a burst of work goes back to the system instead of staying resident.
//!
//! glibc gives threads up to eight malloc arenas per core and keeps what is freed in each
//! for reuse; only the top of an arena is ever given back on its own. A server whose
//! requests run on whichever blocking thread is free spreads its short-lived buffers (parsed
//! commits, change pages, snapshot pieces) over many arenas and keeps the high-water mark of
//! each: measured with `scripts/bench/server_memory.sh`, that was about half of the growth
//! of a server syncing 50,000 small files. A daemon whose sync engine plans and applies a
//! burst of 100,000 files keeps the burst's buffers the same way. Fewer arenas and a
//! periodic trim bound it. Other allocators (musl) have neither knob; there both are no-ops.

use std::time::Duration;

/// Largest allocation glibc serves from its heap instead of a fresh mapping (its maximum).
const MMAP_THRESHOLD: libc::c_int = 32 << 20;
/// Free memory a heap keeps at its top before giving it back to the system (between trims).
const TRIM_THRESHOLD: libc::c_int = 128 << 20;

/// Keeps request bodies, upload batches and fetch answers (tens of MiB each) in the heap.
///
/// By default glibc maps each allocation over 128 KiB to itself and unmaps it on free, so
/// every 20 MiB batch costs ~5,000 page faults and as many zeroed pages (~0.4 CPU s per GiB
/// moved, measured on the server). What this keeps is given back by [`trim`].
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

/// How often freed memory is handed back while the process runs.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Caps the allocator's arenas at the number of cores (at least 2), before the threads that
/// would create more start: call it first thing in the process.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        let arenas = libc::c_int::try_from(cores.max(2)).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets a tunable of glibc's allocator; any value is accepted.
        if unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) } != 1 {
            tracing::debug!("the allocator refused M_ARENA_MAX");
        }
    }
}

/// Hands the free pages of every arena back to the system.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Trims every [`TRIM_EVERY`] until `shutdown` turns true. Runs on the blocking pool: a
/// trim walks every arena under its lock.
pub async fn trim_periodically(mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(TRIM_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            changed = shutdown.changed() => if changed.is_err() { return },
        }
        if *shutdown.borrow() {
            return;
        }
        // A trim that fails to run costs nothing but the memory it would have freed.
        let _ = tokio::task::spawn_blocking(trim).await;
    }
}

/// Trims every [`TRIM_EVERY`] on a thread of its own for the rest of the process (the
/// drive's daemon, which has no async runtime of its own).
pub fn trim_in_background() -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("malloc-trim".into())
        .spawn(|| {
            loop {
                std::thread::sleep(TRIM_EVERY);
                trim();
            }
        })
        .map(drop)
}
