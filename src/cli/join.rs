//! How a mount finds its volume. A first join checks the token and the volume with the
//! server, then binds the state directory to them: server and volume in sync.db, the device
//! token in the state directory (0600, never logged), and the transport options (a private
//! CA, copied in as ca.pem; plain http accepted off loopback). A bound state mounts again
//! from what it remembers, without the server: the engine connects when the server answers.

use anyhow::{Context, bail};

use super::mount::MountArgs;
use crate::drive::StateDir;
use crate::remote::{ConnectOptions, Remote};
use crate::sync::{Binding, SyncState};

/// The server side of a mount.
pub(super) struct Sync {
    /// The client of the bound volume.
    pub remote: Remote,
    /// The engine's state.
    pub state: SyncState,
}

/// The server side of this mount: `None` for a local-only drive. Refuses, in one line, a
/// bound state asked to follow another server or volume, and a local-only drive asked to
/// start syncing in place.
pub(super) fn connect(args: &MountArgs, state: &StateDir) -> anyhow::Result<Option<Sync>> {
    // Opened once (only if it exists: a local-only drive has none) and handed on.
    let existing = if state.sync_db_path().exists() {
        Some(SyncState::open(&state.sync_db_path())?)
    } else {
        None
    };
    let bound = match &existing {
        Some(sync_state) => sync_state.binding()?,
        None => None,
    };
    let asked = args.server.as_ref().zip(args.volume.as_ref());
    match (existing.zip(bound), asked) {
        (None, None) => Ok(None),
        (Some((sync_state, bound)), None) => remount(state, sync_state, bound).map(Some),
        (Some((sync_state, bound)), Some((server, volume))) => {
            if bound.server != *server || bound.volume != *volume {
                bail!(
                    "state directory {} is bound to volume {} on {}: mount it without \
                     --server/--volume, or give another --state to join {volume} on {server}",
                    state.root().display(),
                    bound.volume,
                    bound.server
                );
            }
            // The same volume again: a token file or CA given now replaces the one remembered.
            if let Some(file) = &args.token_file {
                save_token(state, &Remote::token_from_file(file)?)?;
            }
            remember_transport(state, &sync_state, args)?;
            remount(state, sync_state, bound).map(Some)
        }
        (None, Some((server, volume))) => {
            if state.db_path().exists() {
                bail!(
                    "state directory {} holds a local-only drive, which cannot start syncing \
                     in place: give another --state to join {volume} on {server}",
                    state.root().display()
                );
            }
            let file = args
                .token_file
                .as_ref()
                .context("--token-file is needed to join a volume")?;
            let token = Remote::token_from_file(file)?;
            join(state, server, volume, &token, args).map(Some)
        }
    }
}

/// A first join: the server must answer, know the token and hold the volume.
fn join(
    state: &StateDir,
    server: &str,
    volume: &str,
    token: &str,
    args: &MountArgs,
) -> anyhow::Result<Sync> {
    let options = ConnectOptions {
        ca_file: args.ca_file.clone(),
        insecure_http: args.insecure_http,
    };
    let remote = Remote::with_options(server, volume, token, &options)?;
    let volumes = remote.volumes()?;
    if !volumes.iter().any(|v| v.name.as_str() == volume) {
        bail!("volume {volume} not found on {server} (the token's user has no such volume)");
    }
    // The token and transport first: a bound state always has them.
    save_token(state, token)?;
    let sync_state = SyncState::open(&state.sync_db_path())?;
    remember_transport(state, &sync_state, args)?;
    sync_state.bind(&Binding {
        server: server.to_owned(),
        volume: volume.to_owned(),
    })?;
    Ok(Sync {
        remote,
        state: sync_state,
    })
}

/// A bound state: everything comes from the state directory; nothing needs the server.
fn remount(state: &StateDir, sync_state: SyncState, bound: Binding) -> anyhow::Result<Sync> {
    let token_path = state.token_path();
    if !token_path.exists() {
        bail!(
            "state directory {} is bound to volume {} on {} but keeps no device token (an \
             older version joined it): mount it once with --server {} --volume {} --token-file \
             FILE",
            state.root().display(),
            bound.volume,
            bound.server,
            bound.server,
            bound.volume
        );
    }
    let token = Remote::token_from_file(&token_path)?;
    let options = ConnectOptions {
        ca_file: Some(state.ca_path()).filter(|p| p.exists()),
        insecure_http: sync_state.insecure_http()?,
    };
    let remote = Remote::with_options(&bound.server, &bound.volume, &token, &options)?;
    Ok(Sync {
        remote,
        state: sync_state,
    })
}

/// Keeps the transport options given to this mount: a private CA copied into the state
/// directory (0600; the original may move), and the acceptance of plain http.
fn remember_transport(
    state: &StateDir,
    sync_state: &SyncState,
    args: &MountArgs,
) -> anyhow::Result<()> {
    if let Some(ca) = &args.ca_file {
        let pem =
            std::fs::read(ca).with_context(|| format!("cannot read --ca-file {}", ca.display()))?;
        let path = state.ca_path();
        let tmp = path.with_extension("tmp");
        crate::private::write(&tmp, &pem)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .with_context(|| format!("cannot keep the CA in {}", path.display()))?;
    }
    if args.insecure_http {
        sync_state.set_insecure_http()?;
    }
    Ok(())
}

/// Keeps `token` in the state directory, 0600, replacing any earlier one whole.
fn save_token(state: &StateDir, token: &str) -> anyhow::Result<()> {
    let path = state.token_path();
    let tmp = path.with_extension("tmp");
    crate::private::write(&tmp, format!("{token}\n").as_bytes())
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("cannot keep the device token in {}", path.display()))
}
