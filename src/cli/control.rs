//! The running daemon's control socket, `control.sock` in the state directory (0600, in a
//! 0700 directory): `status` and `umount` ask the daemon itself, so they never show what a
//! dead daemon, or an earlier one, left behind.
//!
//! One request a connection, one line each way: `status` is answered with a [`Reply`] as
//! JSON, `nudge` (look at both sides now, also in the middle of a backoff) with `ok`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::drive::ChangeHook;
use crate::sync::{EngineStatus, LiveStatus};

/// How long `status` waits for a daemon's answer: it answers from memory at once.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest request line taken.
const MAX_REQUEST: u64 = 64;

/// The daemon's answer to `status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Reply {
    /// The daemon's pid.
    pub pid: u32,
    /// The sync engine's status; `None` for a local-only drive (or before the engine runs).
    pub sync: Option<EngineStatus>,
}

/// What the daemon answers from: filled in once the engine runs.
#[derive(Clone, Default)]
pub struct Sources {
    /// The engine's live status.
    pub status: Arc<OnceLock<LiveStatus>>,
    /// Makes the engine look now.
    pub nudge: Arc<OnceLock<ChangeHook>>,
}

/// The socket's path in a state directory.
pub fn socket_path(state_root: &Path) -> PathBuf {
    state_root.join("control.sock")
}

/// Starts answering on the state directory's socket (the caller holds the state lock, so a
/// socket already there is a dead daemon's and is replaced).
pub(super) fn serve(state_root: &Path, sources: Sources) -> std::io::Result<()> {
    let path = socket_path(state_root);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(
        &path,
        std::fs::Permissions::from_mode(crate::private::FILE_MODE),
    )?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(conn) => {
                        if let Err(e) = answer(conn, &sources) {
                            tracing::debug!("control request: {e}");
                        }
                    }
                    Err(e) => tracing::debug!("control socket: {e}"),
                }
            }
        })?;
    Ok(())
}

fn answer(conn: UnixStream, sources: &Sources) -> std::io::Result<()> {
    conn.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    conn.set_write_timeout(Some(ANSWER_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(std::io::Read::take(&conn, MAX_REQUEST)).read_line(&mut line)?;
    let mut out = &conn;
    match line.trim() {
        "status" => {
            let reply = Reply {
                pid: std::process::id(),
                sync: sources.status.get().map(LiveStatus::get),
            };
            serde_json::to_writer(&mut out, &reply)?;
            out.write_all(b"\n")
        }
        "nudge" => {
            if let Some(nudge) = sources.nudge.get() {
                nudge();
            }
            out.write_all(b"ok\n")
        }
        other => out.write_all(format!("error: unknown request {other:?}\n").as_bytes()),
    }
}

/// Asks the daemon of `state_root` for its status; `None` when no daemon answers.
pub fn ask_status(state_root: &Path) -> Option<Reply> {
    let line = request(state_root, "status")?;
    serde_json::from_str(&line).ok()
}

/// Asks the daemon of `state_root` to look at both sides now; false when none answers.
pub fn nudge(state_root: &Path) -> bool {
    request(state_root, "nudge").is_some_and(|l| l.trim() == "ok")
}

fn request(state_root: &Path, what: &str) -> Option<String> {
    let conn = UnixStream::connect(socket_path(state_root)).ok()?;
    conn.set_read_timeout(Some(ANSWER_TIMEOUT)).ok()?;
    conn.set_write_timeout(Some(ANSWER_TIMEOUT)).ok()?;
    (&conn).write_all(format!("{what}\n").as_bytes()).ok()?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line).ok()?;
    (!line.is_empty()).then_some(line)
}
