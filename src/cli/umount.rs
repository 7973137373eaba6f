//! `deltadrive umount`: unmount, then wait for the daemon to flush its state and exit.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

use super::mounts;
use crate::drive::StateDir;

/// Arguments of `deltadrive umount`.
#[derive(Debug, Args)]
pub struct UmountArgs {
    /// Where the drive is mounted.
    pub mountpoint: PathBuf,
    /// Seconds to wait for the daemon to finish flushing.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
}

fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn fusermount(args: &[&str], mountpoint: &Path) -> anyhow::Result<std::process::Output> {
    Command::new("fusermount3")
        .args(args)
        .arg(mountpoint)
        .output()
        .or_else(|_| {
            Command::new("fusermount")
                .args(args)
                .arg(mountpoint)
                .output()
        })
        .context("cannot run fusermount3 (install fuse3)")
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

    let out = fusermount(&["-u"], &mountpoint)?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let daemon_dead = pid.is_none_or(|p| !pid_alive(p));
        if err.contains("busy") && !daemon_dead {
            bail!(
                "{} is busy: close the programs using it and try again",
                mountpoint.display()
            );
        }
        // A mount whose daemon died: detach it lazily.
        let lazy = fusermount(&["-u", "-z"], &mountpoint)?;
        if !lazy.status.success() {
            bail!("cannot unmount {}: {}", mountpoint.display(), err);
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
