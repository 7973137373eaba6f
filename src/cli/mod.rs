//! The command line: clap definitions and dispatch, with anyhow at this edge only.
//! `main` parses and calls [`run`].

pub mod admin;
mod control;
mod join;
mod mount;
mod mounts;
pub mod serve;
mod service;
mod status;
mod umount;
mod watch;

use std::io::IsTerminal;
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
    /// Run the storage and management server.
    Serve(serve::ServeArgs),
    /// Manage users, devices, tokens and volumes of a server's data directory.
    Admin(admin::AdminArgs),
    /// Mount a drive at login or boot with a systemd unit, or remove that unit.
    Service(service::ServiceArgs),
}

/// Logs go to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A second init (tests calling run twice) is harmless: keep the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Runs the parsed command; the error is printed by `main` as one line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    init_logging();
    // Before any thread starts: arenas are taken by the threads that allocate first.
    crate::allocator::keep_big_buffers();
    crate::allocator::limit_arenas();
    match cli.command {
        // umask 077 for the two that keep state: what a dependency might create is private
        // too (ours is, whatever the umask: crate::private).
        Command::Mount(args) => {
            crate::private::restrict_umask();
            mount::run(args)
        }
        Command::Umount(args) => umount::run(args),
        Command::Status(args) => status::run(args),
        Command::Serve(args) => {
            crate::private::restrict_umask();
            serve::run(args)
        }
        Command::Admin(args) => admin::run(args),
        Command::Service(args) => service::run(args),
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
