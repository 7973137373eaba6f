//! The SQLite schema of the metadata store, versioned through `PRAGMA user_version`.

use rusqlite::{Connection, Transaction, TransactionBehavior};

use super::MetaError;
use crate::chunking::{ChunkId, ChunkRef, Manifest};

/// The schema version this build writes.
pub(super) const SCHEMA_VERSION: i64 = 2;

pub(super) const SCHEMA_V1: &str = "
CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL
);
CREATE TABLE devices (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id),
    name TEXT NOT NULL,
    token_hash BLOB UNIQUE,
    created_ms INTEGER NOT NULL,
    revoked_ms INTEGER,
    last_seen_ms INTEGER,
    UNIQUE (user_id, name)
);
CREATE TABLE volumes (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id),
    name TEXT NOT NULL UNIQUE,
    head INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL
);
-- One row per node ever created; a deleted node keeps a tombstone (deleted_seq) so a
-- stale op against it can be answered with the seq that deleted it.
CREATE TABLE nodes (
    vol INTEGER NOT NULL,
    id BLOB NOT NULL,
    parent BLOB,
    name TEXT,
    kind INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    mtime INTEGER NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    manifest BLOB,
    manifest_id BLOB,
    target TEXT,
    xattrs TEXT,
    version INTEGER NOT NULL,
    deleted_seq INTEGER,
    PRIMARY KEY (vol, id)
) WITHOUT ROWID;
-- Names are unique among a directory's live children; this index also finds children.
CREATE UNIQUE INDEX nodes_by_name ON nodes (vol, parent, name) WHERE deleted_seq IS NULL;
CREATE TABLE commits (
    vol INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    device INTEGER NOT NULL,
    txn BLOB NOT NULL,
    req_hash BLOB NOT NULL,
    time_ms INTEGER NOT NULL,
    ops TEXT NOT NULL,
    PRIMARY KEY (vol, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX commits_by_txn ON commits (vol, device, txn);
-- Which chunks each volume holds: uploaded to it after verification. The only source of
-- answers about chunks, so one user learns nothing about another's.
CREATE TABLE volume_chunks (
    vol INTEGER NOT NULL,
    chunk BLOB NOT NULL,
    PRIMARY KEY (vol, chunk)
) WITHOUT ROWID;
CREATE TABLE cursors (
    device INTEGER NOT NULL,
    vol INTEGER NOT NULL,
    cursor INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (device, vol)
) WITHOUT ROWID;
";

/// Version 2: each holding records the chunk's decoded length (measured at upload), so a
/// commit whose manifest misstates a length is refused. Rows of version 1 have none until
/// [`super::SqliteMeta::fill_chunk_lens`] reads them from the chunk store; a holding without
/// a length counts as not held.
const MIGRATE_V2: &str = "ALTER TABLE volume_chunks ADD COLUMN len INTEGER;";

/// Opens-time setup: pragmas, then the schema if the file is new.
pub(super) fn prepare(conn: &Connection, create: bool) -> Result<(), MetaError> {
    // WAL lets readers run beside the one writer; FULL makes every commit durable once answered.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    if !create {
        return Ok(());
    }
    // Read and upgraded under one write lock, so two processes opening a new file at once
    // cannot both create it. Old versions stay frozen; each step up is its own statement.
    let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let steps = match version {
        0 => format!("{SCHEMA_V1} {MIGRATE_V2}"),
        1 => {
            tracing::info!("metadata schema 1 -> 2: chunk lengths in the volume holdings");
            MIGRATE_V2.to_owned()
        }
        SCHEMA_VERSION => return Ok(()),
        newer => return Err(MetaError::UnknownSchema(newer)),
    };
    tx.execute_batch(&format!("{steps} PRAGMA user_version = {SCHEMA_VERSION};"))?;
    tx.commit()?;
    Ok(())
}

/// Node kinds as stored.
pub(super) const KIND_FILE: i64 = 0;
/// Directory.
pub(super) const KIND_DIR: i64 = 1;
/// Symlink.
pub(super) const KIND_SYMLINK: i64 = 2;

/// Stored manifest encoding: `(chunk id 32 bytes | len u32 LE) * n`.
pub(super) fn encode_manifest(m: &Manifest) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.chunks.len() * 36);
    for c in &m.chunks {
        out.extend_from_slice(c.id.as_bytes());
        out.extend_from_slice(&c.len.to_le_bytes());
    }
    out
}

/// Decodes [`encode_manifest`]'s output.
pub(super) fn decode_manifest(bytes: &[u8]) -> Result<Manifest, MetaError> {
    if !bytes.len().is_multiple_of(36) {
        return Err(MetaError::Corrupt(format!(
            "stored manifest of {} bytes",
            bytes.len()
        )));
    }
    let chunks = bytes
        .chunks_exact(36)
        .map(|rec| {
            let mut id = [0u8; 32];
            id.copy_from_slice(&rec[..32]);
            let mut len = [0u8; 4];
            len.copy_from_slice(&rec[32..]);
            ChunkRef {
                id: ChunkId::from_bytes(id),
                len: u32::from_le_bytes(len),
            }
        })
        .collect();
    Ok(Manifest { chunks })
}
