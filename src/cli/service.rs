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
        /// Install a system unit into the machine image under DIR instead of this machine
        /// (as `systemctl --root`): enabled there, started at its next boot. Root only.
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
    },
    /// Stop, disable and remove the unit of MOUNTPOINT.
    Uninstall {
        /// The drive's mountpoint.
        mountpoint: PathBuf,
        /// The machine image the unit was installed into (as given to install).
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
    },
}

/// Whether this process manages system units (root) or the user's.
fn system_wide() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The systemd instance a unit is installed for: the system's (root, or an image under
/// `--root`) or the user's, and where its units live.
struct Manager {
    /// Where the unit file goes.
    dir: PathBuf,
    /// A user unit (`systemctl --user`).
    user: bool,
    /// The image a system unit goes into, if not this machine.
    root: Option<PathBuf>,
}

impl Manager {
    /// The manager units are installed for, as this user asked.
    fn new(root: Option<PathBuf>) -> anyhow::Result<Manager> {
        if let Some(root) = root {
            if !system_wide() {
                bail!("--root installs a system unit into a machine image, which needs root");
            }
            let root = super::absolute(&root)?;
            return Ok(Manager {
                dir: root.join("etc/systemd/system"),
                user: false,
                root: Some(root),
            });
        }
        if system_wide() {
            return Ok(Manager {
                dir: PathBuf::from("/etc/systemd/system"),
                user: false,
                root: None,
            });
        }
        let config = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => {
                PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".config")
            }
        };
        Ok(Manager {
            dir: config.join("systemd").join("user"),
            user: true,
            root: None,
        })
    }

    /// Whether that manager runs now (else systemctl edits its unit files offline, and the
    /// unit starts at the next boot or login). The checks are `sd_booted`'s, and for a user,
    /// whether the user's manager has its socket.
    fn running(&self) -> bool {
        if self.root.is_some() || !Path::new("/run/systemd/system").is_dir() {
            return false;
        }
        !self.user
            || std::env::var_os("XDG_RUNTIME_DIR")
                .is_some_and(|dir| Path::new(&dir).join("systemd/private").exists())
    }

    /// When an offline install takes effect.
    fn next_start(&self) -> &'static str {
        if self.user { "login" } else { "boot" }
    }

    /// Runs `systemctl [--user] [--root=DIR] ARGS`, failing with its message.
    fn systemctl(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut cmd = Command::new("systemctl");
        if self.user {
            cmd.arg("--user");
        }
        if let Some(root) = &self.root {
            let mut flag = std::ffi::OsString::from("--root=");
            flag.push(root);
            cmd.arg(flag);
        }
        if !self.running() {
            cmd.env("SYSTEMD_OFFLINE", "1");
        }
        let out = cmd
            .args(args)
            .output()
            .context("cannot run systemctl (deltadrive service needs systemd)")?;
        if !out.status.success() {
            bail!(
                "systemctl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
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

/// Runs `deltadrive service`.
pub fn run(args: ServiceArgs) -> anyhow::Result<()> {
    match args.command {
        ServiceCommand::Install {
            mountpoint,
            state,
            root,
        } => install(&mountpoint, state.as_deref(), &Manager::new(root)?),
        ServiceCommand::Uninstall { mountpoint, root } => {
            uninstall(&mountpoint, &Manager::new(root)?)
        }
    }
}

/// Writes the unit and enables it (and starts it, when its manager runs); a unit that
/// cannot be enabled is removed again.
fn install(mountpoint: &Path, state: Option<&Path>, manager: &Manager) -> anyhow::Result<()> {
    let mountpoint = super::absolute(mountpoint)?;
    if !mountpoint.is_dir() {
        bail!("mountpoint {} is not a directory", mountpoint.display());
    }
    let state = match state {
        Some(s) => super::absolute(s)?,
        None => crate::drive::StateDir::default_root(&mountpoint),
    };
    let exe = std::env::current_exe().context("cannot find the deltadrive program")?;
    let name = unit_name(&mountpoint);
    let path = manager.dir.join(&name);
    let text = unit_text(&exe, &mountpoint, &state, !manager.user)?;
    std::fs::create_dir_all(&manager.dir)
        .with_context(|| format!("cannot create {}", manager.dir.display()))?;
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    println!("wrote {}", path.display());
    let running = manager.running();
    let enabled = if running {
        manager
            .systemctl(&["daemon-reload"])
            .and_then(|()| manager.systemctl(&["enable", "--now", &name]))
    } else {
        manager.systemctl(&["enable", &name])
    };
    if let Err(e) = enabled {
        // Nothing half-installed: a unit that is not enabled would only confuse the next try.
        let _ = std::fs::remove_file(&path);
        return Err(e.context(format!("{name} is not installed")));
    }
    if running {
        println!("enabled and started {name}");
    } else {
        println!(
            "enabled {name}; systemd does not run it here now, it starts at the next {}",
            manager.next_start()
        );
    }
    Ok(())
}

/// Stops and disables the unit, then removes its file.
fn uninstall(mountpoint: &Path, manager: &Manager) -> anyhow::Result<()> {
    let mountpoint = super::absolute(mountpoint)?;
    let name = unit_name(&mountpoint);
    let path = manager.dir.join(&name);
    if !path.exists() {
        bail!("no unit {} for {}", path.display(), mountpoint.display());
    }
    let running = manager.running();
    if running {
        manager.systemctl(&["disable", "--now", &name])?;
    } else {
        manager.systemctl(&["disable", &name])?;
    }
    std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    if running {
        manager.systemctl(&["daemon-reload"])?;
    }
    println!("disabled and removed {}", path.display());
    Ok(())
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
