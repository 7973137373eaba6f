//! What the server load drivers share: `deltadrive admin` and a `deltadrive serve` on
//! 127.0.0.1 (port chosen by the OS) in a data directory of theirs, stopped when dropped.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Any error, shown by `main`.
pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A running `deltadrive serve`, stopped with SIGTERM when dropped (so that a wrapper such
/// as heaptrack writes its data).
pub struct Server {
    child: Child,
    /// Where it listens (`http://127.0.0.1:PORT`).
    pub base: String,
}

impl Server {
    /// Starts `cmd` (the binary, or a wrapper with the binary as its last argument) as
    /// `serve` on `data` and waits for its "listening on" line.
    pub fn start(mut cmd: Command, data: &Path) -> Res<Server> {
        let mut child = cmd
            .arg("serve")
            .arg("--data")
            .arg(data)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut server = Server {
            child,
            base: String::new(),
        };
        let mut lines = BufReader::new(stdout).lines();
        server.base = loop {
            // A wrapper may print lines of its own first.
            let line = lines.next().ok_or("server exited before listening")??;
            if let Some(addr) = line.trim().strip_prefix("listening on ") {
                break format!("http://{addr}");
            }
        };
        // Keep reading (and dropping) what the server prints, so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(server)
    }

    /// The server's (or its wrapper's) process id.
    #[allow(
        dead_code,
        reason = "each driver compiles this module; not all of them ask"
    )]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let _ = self.child.wait();
    }
}

/// `deltadrive admin --data DATA ARGS...`, its output trimmed.
pub fn admin(bin: &str, data: &Path, args: &[&str]) -> Res<String> {
    let out = Command::new(bin)
        .arg("admin")
        .arg("--data")
        .arg(data)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()?;
    if !out.status.success() {
        return Err(format!("admin {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}
