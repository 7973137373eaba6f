//! The state directory of one mount: where its database, backing files, lock and log live.

use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// One mount's state directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateDir {
    root: PathBuf,
}

/// Why the state directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another daemon holds it.
    #[error("state directory {dir} is in use by another deltadrive daemon (pid {pid})")]
    InUse {
        /// The directory.
        dir: PathBuf,
        /// The holder's pid as it wrote it, or "unknown".
        pid: String,
    },
    /// The lock file could not be opened or written.
    #[error("cannot lock state directory {dir}: {source}")]
    Io {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// The held lock of a state directory; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl StateDir {
    /// The state directory at `root` (created 0700 if missing, with its missing parents).
    pub fn new(root: &Path) -> io::Result<StateDir> {
        crate::private::create_dir_all(root)?;
        Ok(StateDir {
            root: root.canonicalize()?,
        })
    }

    /// The default state directory for a mountpoint: under `$XDG_DATA_HOME/deltadrive/mounts/`,
    /// named after the mountpoint's absolute path.
    pub fn default_root(mountpoint: &Path) -> PathBuf {
        let key: String = mountpoint
            .to_string_lossy()
            .trim_matches('/')
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let hash = blake3::hash(mountpoint.as_os_str().as_encoded_bytes()).to_hex();
        Self::data_home().join("mounts").join(format!(
            "{}-{}",
            if key.is_empty() { "root" } else { &key },
            &hash[..8]
        ))
    }

    /// deltadrive's directory under `$XDG_DATA_HOME` (or `~/.local/share`).
    pub fn data_home() -> PathBuf {
        std::env::var_os("XDG_DATA_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
            .unwrap_or_else(|| PathBuf::from("/var/lib"))
            .join("deltadrive")
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The SQLite metadata database.
    pub fn db_path(&self) -> PathBuf {
        self.root.join("meta.db")
    }

    /// The backing files' directory.
    pub fn content_dir(&self) -> PathBuf {
        self.root.join("content")
    }

    /// The device token of the volume this state is bound to (0600, never logged).
    pub fn token_path(&self) -> PathBuf {
        self.root.join("token")
    }

    /// The private CA (PEM) trusted for the bound server's certificate, if one was given.
    pub fn ca_path(&self) -> PathBuf {
        self.root.join("ca.pem")
    }

    /// The sync engine's database (only for a drive that syncs).
    pub fn sync_db_path(&self) -> PathBuf {
        self.root.join("sync.db")
    }

    /// The daemon's log file.
    pub fn log_path(&self) -> PathBuf {
        self.root.join("daemon.log")
    }

    /// The lock file (holds the daemon's pid).
    pub fn lock_path(&self) -> PathBuf {
        self.root.join("daemon.lock")
    }

    /// Takes the exclusive lock that one daemon holds for the directory's lifetime in use.
    pub fn lock(&self) -> Result<StateLock, LockError> {
        let io_err = |source| LockError::Io {
            dir: self.root.clone(),
            source,
        };
        let mut file = crate::private::file_options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.lock_path())
            .map_err(io_err)?;
        // SAFETY: flock on a descriptor we own; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(LockError::InUse {
                    dir: self.root.clone(),
                    pid: if pid.is_empty() {
                        "unknown".into()
                    } else {
                        pid.to_string()
                    },
                });
            }
            return Err(io_err(err));
        }
        file.set_len(0).map_err(io_err)?;
        file.rewind().map_err(io_err)?;
        writeln!(file, "{}", std::process::id()).map_err(io_err)?;
        Ok(StateLock { _file: file })
    }

    /// The pid of the daemon holding the lock, if one does.
    pub fn holder_pid(&self) -> Option<u32> {
        let file = File::open(self.lock_path()).ok()?;
        // SAFETY: flock on a descriptor we own; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
        if rc == 0 {
            // We could lock it: nobody holds it.
            return None;
        }
        fs::read_to_string(self.lock_path())
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}
