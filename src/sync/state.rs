//! The device's sync state (sync.db beside the drive's metadata): which server and volume
//! the drive follows, the cursor in its change log, and per node the version and manifest
//! this device last agreed with the server (the previous state of the founding design).

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use crate::chunking::Manifest;
use crate::protocol::{NodeId, Seq};

use super::SyncError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS synced (
    node_id BLOB PRIMARY KEY,
    version INTEGER NOT NULL,
    manifest BLOB
);
";

/// Which server and volume a state directory follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// Server URL.
    pub server: String,
    /// Volume name.
    pub volume: String,
}

/// The sync state of one mount.
#[derive(Debug)]
pub struct SyncState {
    conn: Connection,
}

impl SyncState {
    /// Opens (creating) the state at `path`.
    pub fn open(path: &Path) -> Result<SyncState, SyncError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(SyncState { conn })
    }

    fn meta(&self, key: &str) -> Result<Option<String>, SyncError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    fn set_meta(&self, key: &str, value: &str) -> Result<(), SyncError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)",
            params![key, value],
        )?;
        Ok(())
    }

    /// Binds the state to `binding`, or checks that it already is.
    pub fn bind(&self, binding: &Binding) -> Result<(), SyncError> {
        match (self.meta("server")?, self.meta("volume")?) {
            (Some(server), Some(volume))
                if server == binding.server && volume == binding.volume =>
            {
                Ok(())
            }
            (Some(server), Some(volume)) => Err(SyncError::WrongBinding { server, volume }),
            _ => {
                self.set_meta("server", &binding.server)?;
                self.set_meta("volume", &binding.volume)
            }
        }
    }

    /// The binding, if any.
    pub fn binding(&self) -> Result<Option<Binding>, SyncError> {
        Ok(self
            .meta("server")?
            .zip(self.meta("volume")?)
            .map(|(server, volume)| Binding { server, volume }))
    }

    /// The seq of the last change applied (0: nothing yet, start from a snapshot).
    pub fn cursor(&self) -> Result<Seq, SyncError> {
        Ok(Seq(self
            .meta("cursor")?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)))
    }

    /// The version and manifest of `node` this device last agreed with the server.
    pub fn synced(&self, node: NodeId) -> Result<Option<(Seq, Option<Manifest>)>, SyncError> {
        let row: Option<(i64, Option<Vec<u8>>)> = self
            .conn
            .query_row(
                "SELECT version, manifest FROM synced WHERE node_id = ?1",
                [&node.to_bytes()[..]],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match row {
            None => Ok(None),
            Some((version, manifest)) => {
                let manifest = manifest.map(|m| Manifest::decode(&m)).transpose()?;
                Ok(Some((Seq(version as u64), manifest)))
            }
        }
    }

    /// Records what one applied change (or snapshot) left: node versions and manifests set
    /// or forgotten, and the new cursor, in one transaction.
    pub fn commit(&mut self, updates: &[SyncedUpdate], cursor: Seq) -> Result<(), SyncError> {
        let tx = self.conn.transaction()?;
        for u in updates {
            match u {
                SyncedUpdate::Set {
                    node,
                    version,
                    manifest,
                } => {
                    tx.execute(
                        "INSERT OR REPLACE INTO synced(node_id, version, manifest) VALUES (?1, ?2, ?3)",
                        params![&node.to_bytes()[..], version.0 as i64, manifest.as_ref().map(Manifest::encode)],
                    )?;
                }
                SyncedUpdate::Version { node, version } => {
                    tx.execute(
                        "UPDATE synced SET version = ?2 WHERE node_id = ?1",
                        params![&node.to_bytes()[..], version.0 as i64],
                    )?;
                }
                SyncedUpdate::Forget { node } => {
                    tx.execute(
                        "DELETE FROM synced WHERE node_id = ?1",
                        [&node.to_bytes()[..]],
                    )?;
                }
            }
        }
        tx.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('cursor', ?1)",
            [cursor.0.to_string()],
        )?;
        tx.commit()?;
        Ok(())
    }
}

/// One change to the synced state.
#[derive(Clone, Debug)]
pub enum SyncedUpdate {
    /// The node is at `version`, with this manifest (files).
    Set {
        /// The node.
        node: NodeId,
        /// Its version (seq of the last change to it).
        version: Seq,
        /// Its content manifest (files).
        manifest: Option<Manifest>,
    },
    /// Only the version moved (attributes or place changed).
    Version {
        /// The node.
        node: NodeId,
        /// Its new version.
        version: Seq,
    },
    /// The node is gone.
    Forget {
        /// The node.
        node: NodeId,
    },
}
