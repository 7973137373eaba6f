//! The command line: clap definitions and dispatch. `main` parses and calls [`run`].

pub mod admin;
pub mod serve;

use std::io::IsTerminal;

use clap::{Parser, Subcommand};

/// deltadrive: a synced drive.
#[derive(Debug, Parser)]
#[command(name = "deltadrive", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the storage and management server.
    Serve(serve::ServeArgs),
    /// Manage users, devices, tokens and volumes of a server's data directory.
    Admin(admin::AdminArgs),
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

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    init_logging();
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Admin(args) => admin::run(args),
    }
}
