//! `deltadrive status`: whether a drive is mounted and what its state holds.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use super::mounts;
use crate::drive::StateDir;

/// Arguments of `deltadrive status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The mountpoint (default: every mounted drive).
    pub mountpoint: Option<PathBuf>,
    /// State directory, for a drive that is not mounted and not in the default place.
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, conflicts_with = "watch")]
    pub json: bool,
    /// Keep showing live progress (bytes to move, rates, time left, files in flight) until
    /// interrupted: progress bars on a terminal, a line per change otherwise.
    #[arg(long)]
    pub watch: bool,
}

/// What `status` reports about one drive.
#[derive(Debug, Serialize)]
pub struct DriveStatus {
    /// The mountpoint.
    #[serde(serialize_with = "lossy")]
    pub mountpoint: PathBuf,
    /// Whether it is mounted now.
    pub mounted: bool,
    /// Whether its daemon is alive (a mount whose daemon died needs `umount`).
    pub daemon_running: bool,
    /// The daemon's pid.
    pub pid: Option<u32>,
    /// The state directory.
    #[serde(serialize_with = "lossy")]
    pub state_dir: PathBuf,
    /// Nodes of every kind.
    pub nodes: u64,
    /// FIFOs, sockets and device nodes: they never sync and stay on this device.
    pub local_only_special: u64,
    /// Bytes of file content stored.
    pub bytes_stored: u64,
    /// Files with changes not yet recorded as a version.
    pub unrecorded_files: u64,
    /// Recorded versions waiting for the sync engine.
    pub pending_versions: u64,
    /// Bytes those versions changed: what is left to send, before chunking and zstd.
    pub pending_upload_bytes: u64,
    /// The server this drive syncs with (none: local only).
    pub server: Option<String>,
    /// The volume it follows.
    pub volume: Option<String>,
    /// What the sync engine last reported (online, cursor, head, bytes up and down).
    #[serde(flatten)]
    pub sync: crate::sync::EngineStatus,
}

/// A path as JSON text: one that is not UTF-8 gets U+FFFD for its stray bytes rather than
/// failing the whole answer (serde refuses such a path).
fn lossy<S: serde::Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}

pub(super) fn status_of(
    mountpoint: PathBuf,
    state_override: Option<PathBuf>,
) -> anyhow::Result<DriveStatus> {
    let entry = mounts::mounted_at(&mountpoint)?;
    let mounted = entry.as_ref().is_some_and(mounts::is_deltadrive);
    let state_root = state_override
        .or_else(|| {
            mounted
                .then(|| mounts::registered_state(&mountpoint))
                .flatten()
        })
        .unwrap_or_else(|| StateDir::default_root(&mountpoint));
    let mut status = DriveStatus {
        mountpoint,
        mounted,
        daemon_running: false,
        pid: None,
        state_dir: state_root.clone(),
        nodes: 0,
        local_only_special: 0,
        bytes_stored: 0,
        unrecorded_files: 0,
        pending_versions: 0,
        pending_upload_bytes: 0,
        server: None,
        volume: None,
        sync: crate::sync::EngineStatus::default(),
    };
    if state_root.join("meta.db").exists() {
        let state = StateDir::new(&state_root)?;
        status.pid = state.holder_pid();
        status.daemon_running = status.pid.is_some();
        let summary = crate::drive::Store::summary(&state.db_path())
            .with_context(|| format!("cannot read {}", state.db_path().display()))?;
        status.nodes = summary.nodes;
        status.local_only_special = summary.special;
        status.bytes_stored = summary.bytes;
        status.unrecorded_files = summary.dirty_files;
        status.pending_versions = summary.pending_versions;
        status.pending_upload_bytes = summary.pending_bytes;
        let sync_db = state.root().join("sync.db");
        if sync_db.exists() {
            let sync = crate::sync::SyncState::open(&sync_db)?;
            if let Some(b) = sync.binding()? {
                status.server = Some(b.server);
                status.volume = Some(b.volume);
            }
            status.sync.cursor = sync.cursor()?.0;
            status.sync.conflicts = sync.conflicts()?;
            status.sync.pending_transactions = u64::from(sync.outbox()?.is_some());
        }
        // Live, from the daemon itself: nothing a dead or earlier daemon left behind.
        let reply = status
            .daemon_running
            .then(|| super::control::ask_status(state.root()))
            .flatten();
        if status.daemon_running && reply.is_none() {
            tracing::debug!("the daemon does not answer on its control socket");
        }
        if let Some(e) = reply.and_then(|r| r.sync) {
            let cursor = status.sync.cursor.max(e.cursor);
            status.sync = e;
            status.sync.cursor = cursor;
            status.pending_upload_bytes += status.sync.chunk_upload_bytes;
            // The engine's `idle` is as of its last published cycle; a change the drive
            // recorded since (read just now from its database) is not synced yet.
            status.sync.idle &= status.unrecorded_files == 0 && status.pending_versions == 0;
        }
    }
    Ok(status)
}

/// The statuses `deltadrive status` shows: one drive, or every mounted one.
fn statuses(
    mountpoint: Option<&PathBuf>,
    state: Option<&PathBuf>,
) -> anyhow::Result<Vec<DriveStatus>> {
    match mountpoint {
        Some(m) => Ok(vec![status_of(super::absolute(m)?, state.cloned())?]),
        None => mounts::mount_table()?
            .into_iter()
            .filter(mounts::is_deltadrive)
            .map(|m| status_of(m.mountpoint, None))
            .collect(),
    }
}

/// Runs `deltadrive status`.
pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    if args.watch {
        return super::watch::run(|| statuses(args.mountpoint.as_ref(), args.state.as_ref()));
    }
    let statuses = statuses(args.mountpoint.as_ref(), args.state.as_ref())?;
    if args.json {
        let json = if statuses.len() == 1 {
            serde_json::to_string_pretty(&statuses[0])?
        } else {
            serde_json::to_string_pretty(&statuses)?
        };
        println!("{json}");
        return Ok(());
    }
    if statuses.is_empty() {
        println!("no deltadrive is mounted");
    }
    for s in statuses {
        let state = match (s.mounted, s.daemon_running) {
            (true, true) => "mounted".to_string(),
            (true, false) => "mounted, but its daemon is gone: run `deltadrive umount`".to_string(),
            (false, _) => "not mounted".to_string(),
        };
        println!("{}: {state}", s.mountpoint.display());
        if let Some(pid) = s.pid {
            println!("  daemon pid:        {pid}");
        }
        println!("  state directory:   {}", s.state_dir.display());
        println!("  nodes:             {}", s.nodes);
        println!("  bytes stored:      {}", s.bytes_stored);
        println!("  unrecorded files:  {}", s.unrecorded_files);
        let Some((server, volume)) = s.server.as_ref().zip(s.volume.as_ref()) else {
            println!(
                "  pending versions:  {} ({} bytes changed)",
                s.pending_versions, s.pending_upload_bytes
            );
            continue;
        };
        println!("  pending versions:  {}", s.pending_versions);
        let online = if s.sync.online { "online" } else { "offline" };
        println!("  syncs with:        volume {volume} on {server} ({online})");
        println!(
            "  cursor / head:     {} / {}",
            s.sync.cursor, s.sync.server_head
        );
        println!(
            "  bytes up / down:   {} / {} ({} fetched ahead while uploading elsewhere)",
            s.sync.bytes_uploaded, s.sync.bytes_downloaded, s.sync.bytes_prefetched
        );
        println!(
            "  pending:           {} transaction(s), {} bytes to upload; {} bytes to download",
            s.sync.pending_transactions, s.pending_upload_bytes, s.sync.bytes_to_download
        );
        println!("  conflicts:         {}", s.sync.conflicts);
        if s.local_only_special > 0 {
            let n = s.local_only_special;
            let (files, stay) = if n == 1 {
                ("special file", "stays")
            } else {
                ("special files", "stay")
            };
            println!(
                "  local only:        {n} {files} (FIFOs, sockets, device nodes) {stay} on this \
                 device"
            );
        }
        if let Some(ms) = s.sync.last_sync_ms {
            let now = crate::drive::to_nanos(std::time::SystemTime::now()) / 1_000_000;
            println!(
                "  last in sync:      {:.1} s ago",
                (now - ms).max(0) as f64 / 1000.0
            );
        }
        if !s.sync.set_aside.is_empty() {
            println!(
                "  set aside:         {} file(s) whose content could not be rebuilt, retried \
                 with backoff:",
                s.sync.set_aside.len()
            );
            for f in &s.sync.set_aside {
                println!(
                    "    {} ({}; {} attempt(s), next in {:.0} s)",
                    f.path,
                    f.reason,
                    f.attempts,
                    f.retry_in_ms as f64 / 1000.0
                );
            }
        }
        if let Some(e) = &s.sync.last_error {
            match s.sync.retry_in_ms {
                Some(ms) => println!(
                    "  last error:        {e} (next attempt in {:.0} s)",
                    ms as f64 / 1000.0
                ),
                None => println!("  last error:        {e}"),
            }
        }
    }
    Ok(())
}
