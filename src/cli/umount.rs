//! `deltadrive umount`: unmount, then wait for the daemon to flush its state and exit.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;

use super::mounts;
use crate::drive::StateDir;
use crate::fs::{Detach, UnmountError, unmount, unmount_within};

/// Arguments of `deltadrive umount`.
#[derive(Debug, Args)]
pub struct UmountArgs {
    /// Where the drive is mounted.
    pub mountpoint: PathBuf,
    /// Seconds to wait for local changes to reach the server, and then for the daemon to
    /// finish flushing.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Unmount without waiting for local changes to reach the server (they stay in the
    /// outbox and go with the next mount).
    #[arg(long)]
    pub force: bool,
}

/// How long a busy drive is given to let go before `umount` says it is busy.
const BUSY_GRACE: Duration = Duration::from_secs(1);

fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Waits until the drive's sync engine has pushed every local change (a local-only drive
/// returns at once), showing progress on stderr; gives up after `timeout`, keeping the rest
/// for the next mount.
fn wait_for_sync(mountpoint: &Path, pid: u32, timeout: Duration) -> anyhow::Result<()> {
    let status = super::status::status_of(mountpoint.to_path_buf(), None)?;
    if status.server.is_none() {
        return Ok(());
    }
    let asked = crate::drive::to_nanos(std::time::SystemTime::now()) / 1_000_000;
    // The engine looks at both sides now (a daemon that does not answer: by signal).
    if !super::control::nudge(&status.state_dir)
        && let Ok(p) = i32::try_from(pid)
    {
        // SAFETY: SIGUSR1 asks the daemon's engine to look at both sides now.
        unsafe { libc::kill(p, libc::SIGUSR1) };
    }
    let start = Instant::now();
    let mut progress = Progress::new();
    loop {
        let s = super::status::status_of(mountpoint.to_path_buf(), None)?;
        if !s.daemon_running {
            progress.end();
            return Ok(());
        }
        // A drive that cannot sync now (the server is away, or its answers make no sense)
        // and has nothing of its own to send leaves nothing to wait for.
        let stuck_with_nothing_to_send = s.sync.retry_in_ms.is_some()
            && s.sync.pending_transactions == 0
            && s.pending_upload_bytes == 0
            && s.unrecorded_files == 0;
        if s.sync.updated_ms >= asked
            && (s.sync.idle || stuck_with_nothing_to_send)
            && s.pending_versions == 0
        {
            progress.end();
            if let (false, Some(e)) = (s.sync.idle, &s.sync.last_error) {
                eprintln!("not in sync, but nothing to upload: {e}");
            }
            return Ok(());
        }
        if start.elapsed() > timeout {
            progress.end();
            eprintln!(
                "gave up waiting after {}s: {} transaction(s) stay in the outbox and go with the \
                 next mount{}",
                timeout.as_secs(),
                s.sync.pending_transactions.max(1),
                if s.sync.online {
                    ""
                } else {
                    " (the server is unreachable)"
                }
            );
            return Ok(());
        }
        // A version the engine has not taken yet (it is backing off) is a transaction too.
        let waiting = u64::from(s.pending_versions > 0 || s.unrecorded_files > 0);
        progress.show(&format!(
            "waiting for sync: {} transaction(s), {} bytes to upload{}",
            s.sync.pending_transactions.max(waiting),
            s.pending_upload_bytes,
            if s.sync.online {
                ""
            } else {
                " (server unreachable)"
            }
        ));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The waiting line: on a terminal one line redrawn in place; otherwise a line when what it
/// says changes (at most one a second). Nothing for a wait shorter than [`QUIET_WAIT`].
struct Progress {
    terminal: bool,
    last: String,
    shown: Option<Instant>,
    began: Instant,
}

/// A wait this short shows no progress line at all.
const QUIET_WAIT: Duration = Duration::from_millis(500);

impl Progress {
    fn new() -> Self {
        Progress {
            terminal: std::io::stderr().is_terminal(),
            last: String::new(),
            shown: None,
            began: Instant::now(),
        }
    }

    fn show(&mut self, line: &str) {
        let due = self.shown.is_none_or(|t| {
            t.elapsed() >= Duration::from_millis(if self.terminal { 200 } else { 1000 })
        });
        if !due || self.began.elapsed() < QUIET_WAIT || (!self.terminal && line == self.last) {
            return;
        }
        if self.terminal {
            // Back to the start of the line, and clear it.
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
        self.last = line.to_owned();
        self.shown = Some(Instant::now());
    }

    /// Ends the redrawn line, if one is on the terminal.
    fn end(&mut self) {
        if self.terminal && self.shown.is_some() {
            eprintln!();
        }
        self.shown = None;
    }
}

/// Runs `deltadrive umount`.
pub fn run(args: UmountArgs) -> anyhow::Result<()> {
    let mountpoint = super::absolute(&args.mountpoint)?;
    let Some(entry) = mounts::mounted_at(&mountpoint)? else {
        bail!("{} is not mounted", mountpoint.display());
    };
    if !mounts::is_deltadrive(&entry) {
        bail!(
            "{} is not a deltadrive mount ({})",
            mountpoint.display(),
            entry.fstype
        );
    }
    let pid = mounts::registered_state(&mountpoint)
        .and_then(|root| StateDir::new(&root).ok())
        .and_then(|state| state.holder_pid());
    if let Some(pid) = pid
        && !args.force
    {
        wait_for_sync(&mountpoint, pid, Duration::from_secs(args.timeout))?;
    }

    match unmount_within(&mountpoint, BUSY_GRACE) {
        Ok(()) => {}
        Err(UnmountError::Busy(_)) if pid.is_some_and(pid_alive) => bail!(
            "{} is busy: close the programs using it and try again",
            mountpoint.display()
        ),
        // A mount whose daemon died: detach it lazily.
        Err(first) => {
            if unmount(&mountpoint, Detach::Lazily).is_err() {
                return Err(first.into());
            }
        }
    }
    if let Some(pid) = pid {
        let deadline = Instant::now() + Duration::from_secs(args.timeout);
        while pid_alive(pid) {
            if Instant::now() > deadline {
                bail!(
                    "unmounted {}, but its daemon (pid {pid}) is still flushing",
                    mountpoint.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    mounts::unregister(&mountpoint);
    println!("unmounted {}", mountpoint.display());
    Ok(())
}
