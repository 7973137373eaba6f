//! `deltadrive admin`: users, devices, tokens and volumes, straight on the data directory
//! (safe while the server runs: SQLite serializes the writers).

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use crate::protocol::AccountName;
use crate::server::auth::{hash_token, new_token};
use crate::server::{MetaStore, SqliteMeta, meta_path};

/// Arguments of `deltadrive admin`.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// Data directory of the server.
    #[arg(long, default_value = "deltadrive-data")]
    pub data: PathBuf,
    /// What to manage.
    #[command(subcommand)]
    pub what: AdminCommand,
}

/// The things admin manages.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Users.
    #[command(subcommand)]
    User(UserCommand),
    /// Devices (each has its own token).
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Volumes.
    #[command(subcommand)]
    Volume(VolumeCommand),
}

/// `admin user ...`
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user.
    Add {
        /// The user's name.
        name: AccountName,
    },
    /// List users.
    List,
}

/// `admin device ...`
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Add a device (or re-enable a revoked one) and print its new token once on stdout.
    Add {
        /// The owner.
        user: AccountName,
        /// The device's name.
        device: AccountName,
    },
    /// List devices, of one user or all.
    List {
        /// Only this user's.
        user: Option<AccountName>,
    },
}

/// `admin token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Revoke a device's token: its next request gets 401.
    Revoke {
        /// The owner.
        user: AccountName,
        /// The device.
        device: AccountName,
    },
}

/// `admin volume ...`
#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create an empty volume owned by a user (volume names are unique on the server).
    Create {
        /// The owner.
        user: AccountName,
        /// The volume's name.
        volume: AccountName,
    },
    /// List volumes, of one user or all.
    List {
        /// Only this user's.
        user: Option<AccountName>,
    },
}

/// Runs one admin command; results go to stdout, one item per line, tab-separated.
pub fn run(args: AdminArgs) -> anyhow::Result<()> {
    super::serve::make_private(&args.data);
    let store = SqliteMeta::open(&meta_path(&args.data))
        .with_context(|| format!("opening {}", args.data.display()))?;
    match args.what {
        AdminCommand::User(UserCommand::Add { name }) => {
            store.add_user(&name)?;
            eprintln!("added user {name}");
        }
        AdminCommand::User(UserCommand::List) => {
            for u in store.list_users()? {
                println!("{}\tdevices={}\tvolumes={}", u.name, u.devices, u.volumes);
            }
        }
        AdminCommand::Device(DeviceCommand::Add { user, device }) => {
            let token = new_token();
            store.add_device(&user, &device, &hash_token(&token))?;
            eprintln!("device {device} of user {user}: its token follows; it is not shown again");
            println!("{token}");
        }
        AdminCommand::Device(DeviceCommand::List { user }) => {
            for d in store.list_devices(user.as_ref())? {
                let seen = d
                    .last_seen_ms
                    .map_or_else(|| "never".to_owned(), |ms| ms.to_string());
                let state = if d.revoked { "revoked" } else { "active" };
                println!("{}\t{}\t{state}\tlast_seen_ms={seen}", d.user, d.name);
            }
        }
        AdminCommand::Token(TokenCommand::Revoke { user, device }) => {
            store.revoke_device(&user, &device)?;
            eprintln!("revoked the token of device {device} of user {user}");
        }
        AdminCommand::Volume(VolumeCommand::Create { user, volume }) => {
            store.create_volume(&user, &volume)?;
            eprintln!("created volume {volume} for user {user}");
        }
        AdminCommand::Volume(VolumeCommand::List { user }) => {
            for v in store.list_volumes(user.as_ref())? {
                println!("{}\t{}\thead={}", v.user, v.name, v.head.0);
            }
        }
    }
    Ok(())
}
