//! A small pool of idle read-only SQLite connections, shared by the embedded stores so that
//! reads run beside the single writer without opening a connection each time.

use std::sync::{Mutex, PoisonError};

use rusqlite::Connection;

/// Idle connections kept for reuse; more may be open while busy.
const MAX_IDLE: usize = 8;

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
