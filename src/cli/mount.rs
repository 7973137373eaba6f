//! `deltadrive mount`: checks, then a background daemon that reports back once the mount works.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, mpsc};

use anyhow::{Context, bail};
use clap::Args;

use super::mounts;
use crate::drive::{Caller, Drive, StateDir};

/// Arguments of `deltadrive mount`.
#[derive(Debug, Args)]
pub struct MountArgs {
    /// Directory to mount the drive on.
    pub mountpoint: PathBuf,
    /// State directory (default: under $XDG_DATA_HOME/deltadrive/mounts/).
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// Stay attached; unmount cleanly on Ctrl-C or SIGTERM.
    #[arg(long)]
    pub foreground: bool,
    /// Internal: the daemon started by a background mount reports readiness on stdout.
    #[arg(long, hide = true)]
    pub report_ready: bool,
    /// Server to sync with (e.g. https://host:7420; http:// only on this machine), to join
    /// a volume; a state directory that joined one remembers it (with the token and the
    /// transport options below), so later mounts need none of these. Without it, a new state
    /// directory is a local-only drive.
    #[arg(long, value_name = "URL", requires = "volume")]
    pub server: Option<String>,
    /// Volume on the server.
    #[arg(long, value_name = "NAME", requires = "server")]
    pub volume: Option<String>,
    /// File holding this device's token (from `deltadrive admin device add`); needed to join,
    /// and replaces the remembered token when given again.
    #[arg(long, value_name = "FILE", requires = "server")]
    pub token_file: Option<PathBuf>,
    /// Trust only this CA (PEM) for the server's certificate: a private CA.
    #[arg(long, value_name = "PEM", requires = "server")]
    pub ca_file: Option<PathBuf>,
    /// Accept a plain http:// server off this machine: the device token and files travel in
    /// the clear.
    #[arg(long, requires = "server")]
    pub insecure_http: bool,
}

/// Refuses a mountpoint that cannot take a mount, with the reason in one line.
fn check_mountpoint(mountpoint: &Path) -> anyhow::Result<PathBuf> {
    let abs = super::absolute(mountpoint)?;
    if let Some(entry) = mounts::mounted_at(&abs)? {
        bail!("{} is already mounted ({})", abs.display(), entry.fstype);
    }
    let meta = std::fs::metadata(&abs).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            anyhow::anyhow!("mountpoint {} does not exist", abs.display())
        }
        _ => anyhow::anyhow!("mountpoint {}: {e}", abs.display()),
    })?;
    if !meta.is_dir() {
        bail!("mountpoint {} is not a directory", abs.display());
    }
    let abs = abs.canonicalize()?;
    if let Some(entry) = mounts::mounted_at(&abs)? {
        bail!("{} is already mounted ({})", abs.display(), entry.fstype);
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(|e| {
            anyhow::anyhow!(
                "/dev/fuse is unavailable ({e}): install fuse3 and load the fuse module"
            )
        })?;
    Ok(abs)
}

/// Runs `deltadrive mount`.
pub fn run(args: MountArgs) -> anyhow::Result<()> {
    let mountpoint = check_mountpoint(&args.mountpoint)?;
    let state_root = match &args.state {
        Some(s) => s.clone(),
        None => StateDir::default_root(&mountpoint),
    };
    let state = StateDir::new(&state_root)
        .with_context(|| format!("cannot create state directory {}", state_root.display()))?;
    if args.foreground || args.report_ready {
        return daemon(&mountpoint, state, &args);
    }
    spawn_daemon(&mountpoint, &state, &args)
}

/// Starts this program again as a detached daemon and waits until it says the mount works.
fn spawn_daemon(mountpoint: &Path, state: &StateDir, args: &MountArgs) -> anyhow::Result<()> {
    let log = crate::private::file_options()
        .create(true)
        .append(true)
        .open(state.log_path())
        .with_context(|| format!("cannot open log {}", state.log_path().display()))?;
    let exe = std::env::current_exe().context("cannot find the deltadrive executable")?;
    let mut command = Command::new(exe);
    command
        .arg("mount")
        .arg(mountpoint)
        .arg("--state")
        .arg(state.root())
        .arg("--report-ready");
    if let Some(server) = &args.server {
        command.arg("--server").arg(server);
    }
    if let Some(volume) = &args.volume {
        command.arg("--volume").arg(volume);
    }
    if let Some(token_file) = &args.token_file {
        command
            .arg("--token-file")
            .arg(std::path::absolute(token_file)?);
        if let Some(ca_file) = &args.ca_file {
            command.arg("--ca-file").arg(std::path::absolute(ca_file)?);
        }
        if args.insecure_http {
            command.arg("--insecure-http");
        }
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .context("cannot start the daemon")?;
    let stdout = child.stdout.take().context("daemon has no stdout")?;
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first)?;
    match first.trim_end().strip_prefix("error: ") {
        _ if first.trim_end() == "ready" => {
            println!(
                "mounted {} (state {}, pid {})",
                mountpoint.display(),
                state.root().display(),
                child.id()
            );
            Ok(())
        }
        Some(msg) => {
            let _ = child.wait();
            bail!("{msg}")
        }
        None => {
            let status = child.wait()?;
            bail!(
                "daemon exited before the mount was ready ({status}); see {}",
                state.log_path().display()
            )
        }
    }
}

/// Blocks the stop signals in this thread (and every thread it starts) so one thread can
/// wait for them.
fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialize it; pthread_sigmask
    // only changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        // Not a stop: `umount` asks the sync engine to look at both sides now.
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// The daemon proper: lock the state, open the drive, serve until unmounted or signalled.
fn daemon(mountpoint: &Path, state: StateDir, args: &MountArgs) -> anyhow::Result<()> {
    let report_ready = args.report_ready;
    let report = |line: &str| {
        if report_ready {
            let mut out = std::io::stdout();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    };
    let result = serve_until_stopped(mountpoint, state, args, &report);
    if let Err(e) = &result {
        report(&format!("error: {e:#}"));
    }
    result
}

fn serve_until_stopped(
    mountpoint: &Path,
    state: StateDir,
    args: &MountArgs,
    report: &dyn Fn(&str),
) -> anyhow::Result<()> {
    let report_ready = args.report_ready;
    if report_ready {
        // Leave the caller's session so its Ctrl-C does not reach the daemon.
        // SAFETY: setsid has no memory preconditions; failure (already a leader) is harmless.
        unsafe { libc::setsid() };
    }
    let signals = block_stop_signals();
    let _lock = state.lock()?;
    make_private(&state);
    // SAFETY: getuid/getgid have no preconditions.
    let owner = unsafe {
        Caller {
            uid: libc::getuid(),
            gid: libc::getgid(),
        }
    };
    let sync = super::join::connect(args, &state)?;
    let drive = Arc::new(Drive::open(state.clone(), owner).context("cannot open the drive state")?);
    mounts::register(mountpoint, state.root())?;
    crate::allocator::trim_in_background()?;

    let sources = super::control::Sources::default();
    super::control::serve(state.root(), sources.clone()).with_context(|| {
        format!(
            "cannot open the control socket in {}",
            state.root().display()
        )
    })?;
    let (stop_tx, stop_rx) = mpsc::channel();
    let nudge_slot = Arc::clone(&sources.nudge);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut sig = 0;
            // SAFETY: `signals` is an initialized set blocked in every thread; sigwait writes `sig`.
            while unsafe { libc::sigwait(&signals, &mut sig) } == 0 {
                if sig == libc::SIGUSR1 {
                    if let Some(n) = nudge_slot.get() {
                        n();
                    }
                    continue;
                }
                tracing::info!(signal = sig, "stopping");
                if stop_tx.send(()).is_err() {
                    break;
                }
            }
        })?;

    let mut engine = None;
    let result = crate::fs::serve(Arc::clone(&drive), mountpoint, stop_rx, || {
        tracing::info!(mountpoint = %mountpoint.display(), state = %state.root().display(), "mounted");
        // The engine starts once the mount exists, so its changes can invalidate the
        // kernel's caches. A drive asked to sync that cannot is not reported ready.
        if let Some(sync) = sync {
            let e = crate::sync::Engine::start(Arc::clone(&drive), sync.remote, sync.state)
                .map_err(|e| std::io::Error::other(format!("cannot start the sync engine: {e}")))?;
            let _ = sources.nudge.set(e.nudger());
            let _ = sources.status.set(e.live_status());
            engine = Some(e);
        }
        report("ready");
        if report_ready {
            redirect_stdout_to_null();
        }
        Ok(())
    });
    if let Some(mut e) = engine {
        e.stop();
    }
    mounts::unregister(mountpoint);
    // Normally done when the session ends; again here for a mount that never started.
    drive.shutdown().context("cannot flush the drive state")?;
    let how = result.with_context(|| format!("cannot mount {}", mountpoint.display()))?;
    tracing::info!(?how, "unmounted");
    Ok(())
}

/// Makes the state directory (and deltadrive's directory under $XDG_DATA_HOME, which names
/// every mountpoint) private if an older build left them readable by other users; logged.
/// Under the lock, before the databases open. Not fatal: the drive works either way.
fn make_private(state: &StateDir) {
    for root in [StateDir::data_home(), state.root().to_path_buf()] {
        if let Err(e) = crate::private::tighten(&root) {
            tracing::warn!(root = %root.display(), error = %e, "cannot make the state private");
        }
    }
}

/// After readiness the parent stops reading our stdout; later writes must not fail or block.
fn redirect_stdout_to_null() {
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        // SAFETY: both descriptors are valid; dup2 replaces fd 1 atomically.
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }
}
