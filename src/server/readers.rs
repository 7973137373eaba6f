//! A small pool of idle read-only SQLite connections, shared by the embedded stores so that
//! reads run beside the single writer without opening a connection each time.

use std::sync::{Mutex, PoisonError};

use rusqlite::Connection;

/// Idle connections kept for reuse; more may be open while busy (and are closed after). Each
/// keeps its page cache ([`READER_CACHE_KIB`]), so this bounds what idle readers hold.
const MAX_IDLE: usize = 4;

/// Page cache of a reader connection, in KiB. Readers look up single rows and scan ranges
/// once: the interior pages of the B-trees fit, and the OS page cache holds the rest of the
/// file for every connection at once. SQLite's default (2 MiB a connection) filled every
/// pooled reader with a copy of the same pages as the database grew.
pub const READER_CACHE_KIB: i64 = 512;

/// Sets a reader connection's page cache to [`READER_CACHE_KIB`].
pub fn bound_cache(conn: &Connection) -> rusqlite::Result<()> {
    // A negative cache_size is in KiB, a positive one in pages.
    conn.pragma_update(None, "cache_size", -READER_CACHE_KIB)
}

/// Reader connections of one database.
#[derive(Debug, Default)]
pub struct ReaderPool {
    idle: Mutex<Vec<Connection>>,
}

impl ReaderPool {
    /// Runs `f` on an idle connection, or on a new one from `open`, and keeps it for later.
    pub fn with<T, E>(
        &self,
        open: impl FnOnce() -> Result<Connection, E>,
        f: impl FnOnce(&Connection) -> Result<T, E>,
    ) -> Result<T, E> {
        let pooled = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match pooled {
            Some(c) => c,
            None => open()?,
        };
        let result = f(&conn);
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
        result
    }
}
