//! `deltadrive service install | uninstall`: a systemd unit that mounts a drive at login (a
//! user unit) or at boot (a system unit, for root), and unmounts it cleanly at stop.
//!
//! The unit runs `deltadrive mount MOUNTPOINT --foreground`: systemd's SIGTERM is the clean
//! stop the foreground daemon already handles. A state directory that joined its volume
//! remembers it, so the unit needs no server flags.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

/// Arguments of `deltadrive service`.
#[derive(Debug, Args)]
pub struct ServiceArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ServiceCommand,
}

/// The service subcommands.
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Write and enable a systemd unit that mounts MOUNTPOINT at login (or boot, for root).
    Install {
        /// The drive's mountpoint.
        mountpoint: PathBuf,
        /// State directory (default: the mountpoint's default one).
        #[arg(long, value_name = "DIR")]
        state: Option<PathBuf>,
        /// Where to write the unit (default: ~/.config/systemd/user, or
        /// /etc/systemd/system for root).
        #[arg(long, value_name = "DIR")]
        unit_dir: Option<PathBuf>,
    },
    /// Stop, disable and remove the unit of MOUNTPOINT.
    Uninstall {
        /// The drive's mountpoint.
        mountpoint: PathBuf,
        /// Where the unit was written (as given to install).
        #[arg(long, value_name = "DIR")]
        unit_dir: Option<PathBuf>,
    },
}

/// Whether this process manages system units (root) or the user's.
fn system_wide() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The default unit directory: the system's for root, else the user's.
fn default_unit_dir() -> anyhow::Result<PathBuf> {
    if system_wide() {
        return Ok(PathBuf::from("/etc/systemd/system"));
    }
    let config = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".config"),
    };
    Ok(config.join("systemd").join("user"))
}

/// The unit's name for a mountpoint: `deltadrive-` plus the path escaped as
/// `systemd-escape --path` does, so one mountpoint has one unit.
pub fn unit_name(mountpoint: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let bytes = mountpoint.as_os_str().as_bytes();
    let trimmed: Vec<&[u8]> = bytes
        .split(|b| *b == b'/')
        .filter(|part| !part.is_empty())
        .collect();
    let mut escaped = String::new();
    for (i, part) in trimmed.iter().enumerate() {
        if i > 0 {
            escaped.push('-');
        }
        for (j, &b) in part.iter().enumerate() {
            // A dot is escaped only at the very start, as systemd-escape does.
            let plain = b.is_ascii_alphanumeric() || b == b'_' || (b == b'.' && (i, j) != (0, 0));
            if plain {
                escaped.push(char::from(b));
            } else {
                escaped.push_str(&format!("\\x{b:02x}"));
            }
        }
    }
    if escaped.is_empty() {
        escaped.push('-');
    }
    format!("deltadrive-{escaped}.service")
}

/// A value in a unit file: quoted, with `\`, `"`, `%` and `$` escaped as systemd reads them.
fn quoted(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The unit file's text.
pub fn unit_text(
    exe: &Path,
    mountpoint: &Path,
    state: &Path,
    system: bool,
) -> anyhow::Result<String> {
    let text = |p: &Path, what: &str| -> anyhow::Result<String> {
        p.to_str().map(str::to_owned).with_context(|| {
            format!(
                "the {what} {} is not UTF-8, which a unit file cannot name",
                p.display()
            )
        })
    };
    let (exe, mp, state) = (
        text(exe, "program")?,
        text(mountpoint, "mountpoint")?,
        text(state, "state directory")?,
    );
    let wanted_by = if system {
        "multi-user.target"
    } else {
        "default.target"
    };
    Ok(format!(
        "# Written by `deltadrive service install`; removed by `deltadrive service uninstall`.
[Unit]
Description=deltadrive drive at {mp}
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={} mount {} --foreground --state {}
# SIGTERM makes the foreground daemon unmount cleanly (a busy drive: after 2 s, lazily).
KillSignal=SIGTERM
TimeoutStopSec=30
Restart=on-failure
RestartSec=10

[Install]
WantedBy={wanted_by}
",
        quoted(&exe),
        quoted(&mp),
        quoted(&state)
    ))
}

/// Whether systemd runs this machine (the check `sd_booted` makes).
fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// Runs `systemctl [--user] ARGS`, failing with its message.
fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    let mut cmd = Command::new("systemctl");
    if !system_wide() {
        cmd.arg("--user");
    }
    let out = cmd.args(args).output().context("cannot run systemctl")?;
    if !out.status.success() {
        bail!(
            "systemctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `deltadrive service`.
pub fn run(args: ServiceArgs) -> anyhow::Result<()> {
    match args.command {
        ServiceCommand::Install {
            mountpoint,
            state,
            unit_dir,
        } => {
            let mountpoint = super::absolute(&mountpoint)?;
            if !mountpoint.is_dir() {
                bail!("mountpoint {} is not a directory", mountpoint.display());
            }
            let state = match state {
                Some(s) => super::absolute(&s)?,
                None => crate::drive::StateDir::default_root(&mountpoint),
            };
            let exe = std::env::current_exe().context("cannot find the deltadrive program")?;
            let dir = match unit_dir {
                Some(d) => d,
                None => default_unit_dir()?,
            };
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let path = dir.join(unit_name(&mountpoint));
            let text = unit_text(&exe, &mountpoint, &state, system_wide())?;
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!("wrote {}", path.display());
            if !systemd_running() {
                println!("systemd is not running here: the unit is written, not enabled");
                return Ok(());
            }
            systemctl(&["daemon-reload"])?;
            let name = unit_name(&mountpoint);
            systemctl(&["enable", "--now", &name])?;
            println!("enabled and started {name}");
            Ok(())
        }
        ServiceCommand::Uninstall {
            mountpoint,
            unit_dir,
        } => {
            let mountpoint = super::absolute(&mountpoint)?;
            let name = unit_name(&mountpoint);
            let dir = match unit_dir {
                Some(d) => d,
                None => default_unit_dir()?,
            };
            let path = dir.join(&name);
            if !path.exists() {
                bail!("no unit {} for {}", path.display(), mountpoint.display());
            }
            if systemd_running() {
                systemctl(&["disable", "--now", &name])?;
            }
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
            if systemd_running() {
                systemctl(&["daemon-reload"])?;
            }
            println!("removed {}", path.display());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_escape_the_path_as_systemd_escape_does() {
        assert_eq!(
            unit_name(Path::new("/home/ann/Drive")),
            "deltadrive-home-ann-Drive.service"
        );
        assert_eq!(
            unit_name(Path::new("/mnt/my drive/.x-y")),
            "deltadrive-mnt-my\\x20drive-.x\\x2dy.service"
        );
        assert_eq!(
            unit_name(Path::new("/.hidden")),
            "deltadrive-\\x2ehidden.service"
        );
        assert_eq!(unit_name(Path::new("/")), "deltadrive--.service");
    }

    #[test]
    fn values_are_quoted_for_systemd() {
        assert_eq!(quoted("/a b/c"), "\"/a b/c\"");
        assert_eq!(quoted("50%$x\"\\"), "\"50%%$$x\\\"\\\\\"");
    }
}
