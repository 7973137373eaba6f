//! The command line: `mount`, `umount`, `status` (clap), with anyhow at this edge only.

mod mount;
mod mounts;
mod status;
mod umount;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// deltadrive: a synced drive you mount on each of your machines.
#[derive(Debug, Parser)]
#[command(name = "deltadrive", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount a drive at MOUNTPOINT (in the background unless --foreground).
    Mount(mount::MountArgs),
    /// Flush and unmount the drive at MOUNTPOINT (also one whose daemon died).
    Umount(umount::UmountArgs),
    /// Show whether a drive is mounted and what its state holds.
    Status(status::StatusArgs),
}

/// Runs the parsed command line; the error is printed by `main` as one line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Mount(args) => mount::run(args),
        Command::Umount(args) => umount::run(args),
        Command::Status(args) => status::run(args),
    }
}

/// Makes `path` absolute without resolving its last component (which may be a dead mount
/// that cannot be stat'ed).
pub(crate) fn absolute(path: &std::path::Path) -> anyhow::Result<PathBuf> {
    let abs = std::path::absolute(path)?;
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => Ok(parent
            .canonicalize()
            .unwrap_or_else(|_| parent.to_path_buf())
            .join(name)),
        _ => Ok(abs),
    }
}
