//! What the server asks of the C allocator so that memory freed after a burst of requests
//! goes back to the system instead of staying resident.
//!
//! glibc gives threads up to eight malloc arenas per core and keeps what is freed in each
//! for reuse; only the top of an arena is ever given back on its own. A server whose
//! requests run on whichever blocking thread is free spreads its short-lived buffers (parsed
//! commits, change pages, snapshot pieces) over many arenas and keeps the high-water mark of
//! each: measured with `scripts/bench/server_memory.sh`, that was about half of the growth
//! of a server syncing 50,000 small files. Fewer arenas and a periodic trim bound it. Other
//! allocators (musl) have neither knob; there both are no-ops.

use std::time::Duration;

/// How often freed memory is handed back while the server runs.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Caps the allocator's arenas at the number of cores (at least 2), before the threads that
/// would create more start: call it first thing in the server process.
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
