//! Private state on disk: directories 0700 and files 0600, so no other local user can read a
//! drive's state (names, xattrs, sizes and content of files it keeps in the mount, whatever
//! their mode there) or a server's data (metadata, chunk bytes).
//!
//! Every directory and file deltadrive keeps is created through these helpers rather than
//! relying on the umask: library code (and tests) open stores directly, with any umask.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The mode of every directory deltadrive creates.
pub const DIR_MODE: u32 = 0o700;
/// The mode of every file deltadrive creates.
pub const FILE_MODE: u32 = 0o600;

/// Bits that let anyone but the owner in.
const OTHERS: u32 = 0o077;

/// Creates `path` and each missing parent, 0700 (existing ones are left as they are).
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

/// Creates the directory `path`, 0700; an error if it exists, as [`fs::create_dir`].
pub fn create_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new().mode(DIR_MODE).create(path)
}

/// Open options that create a missing file 0600; chain the access flags as usual.
pub fn file_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

/// Creates (or truncates) a file for writing, 0600 if new: [`File::create`], private.
pub fn create_file(path: &Path) -> io::Result<File> {
    file_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

/// Writes `bytes` as the whole content of a file, 0600 if new: [`fs::write`], private.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    io::Write::write_all(&mut create_file(path)?, bytes)
}

/// Makes sure the SQLite database file `path` exists, 0600 if new, before SQLite opens it;
/// the error names the file.
///
/// SQLite creates a database 0644 (less the umask) itself, and gives its -wal, -shm and
/// -journal files the database file's mode: a private database file makes them private too.
pub fn create_db_file(path: &Path) -> io::Result<()> {
    file_options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map(drop)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// Sets this process's umask to 077, so that whatever a dependency creates is private as
/// well (defense in depth: our own files are private by the helpers above).
pub fn restrict_umask() {
    // SAFETY: umask(2) only swaps the process's file creation mask; it cannot fail.
    unsafe { libc::umask(OTHERS) };
}

/// Whether a mode lets anyone but the owner in.
pub fn is_loose(mode: u32) -> bool {
    mode & OTHERS != 0
}

/// Makes an existing tree at `root` private: a directory that lets others in becomes 0700,
/// such a file 0600 (symlinks are left alone: chmod would follow them). Warns once how many
/// it changed and where, and once about those it could not change. Returns how many it
/// changed; a missing `root` is nothing to do.
///
/// The tree is walked only when `root` itself lets others in (an older build made it):
/// below a 0700 root no other user can reach anything, and a start of a drive with a
/// million backing files stays one stat.
pub fn tighten(root: &Path) -> io::Result<usize> {
    let meta = match fs::metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() || !is_loose(meta.permissions().mode()) {
        return Ok(0);
    }
    let mut changed = 0usize;
    let mut failed: Vec<(PathBuf, io::Error)> = Vec::new();
    let mut note = |path: &Path, result: io::Result<bool>| match result {
        Ok(true) => changed += 1,
        Ok(false) => {}
        Err(e) => failed.push((path.to_path_buf(), e)),
    };
    // Each directory is made private before its entries are read.
    note(root, restrict(root, DIR_MODE, meta.permissions().mode()));
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                note(&dir, Err(e));
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    note(&dir, Err(e));
                    continue;
                }
            };
            let path = entry.path();
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) => {
                    note(&path, Err(e));
                    continue;
                }
            };
            let mode = meta.permissions().mode();
            if meta.is_dir() {
                note(&path, restrict(&path, DIR_MODE, mode));
                dirs.push(path);
            } else if meta.is_file() {
                note(&path, restrict(&path, FILE_MODE, mode));
            }
        }
    }
    if changed > 0 {
        // A warning: until now other users could read it.
        tracing::warn!(
            root = %root.display(),
            changed,
            "other users could read this state: made it private (directories 0700, files 0600)"
        );
    }
    if let Some((path, e)) = failed.first() {
        tracing::warn!(
            root = %root.display(),
            failed = failed.len(),
            first = %path.display(),
            error = %e,
            "could not make some of the state private"
        );
    }
    Ok(changed)
}

/// chmod `path` to `private` if `mode` lets others in; whether it did.
fn restrict(path: &Path, private: u32, mode: u32) -> io::Result<bool> {
    if !is_loose(mode) {
        return Ok(false);
    }
    fs::set_permissions(path, fs::Permissions::from_mode(private))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn creates_private_directories_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        create_dir_all(&deep).unwrap();
        for d in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode(&dir.path().join(d)), DIR_MODE, "{d}");
        }
        create_dir(&deep.join("d")).unwrap();
        assert_eq!(mode(&deep.join("d")), DIR_MODE);
        write(&deep.join("f"), b"x").unwrap();
        assert_eq!(mode(&deep.join("f")), FILE_MODE);
        create_db_file(&deep.join("db")).unwrap();
        assert_eq!(mode(&deep.join("db")), FILE_MODE);
        let conn = rusqlite::Connection::open(deep.join("db")).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        for f in ["db", "db-wal", "db-shm"] {
            assert_eq!(mode(&deep.join(f)), FILE_MODE, "{f}");
        }
    }

    #[test]
    fn tightens_a_loose_tree_and_leaves_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("state");
        fs::create_dir_all(root.join("content/free")).unwrap();
        fs::write(root.join("meta.db"), b"").unwrap();
        fs::write(root.join("content/1"), b"").unwrap();
        let outside = dir.path().join("outside");
        fs::write(&outside, b"").unwrap();
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        for (p, m) in [
            ("", 0o755),
            ("content", 0o755),
            ("content/free", 0o775),
            ("meta.db", 0o644),
            ("content/1", 0o640),
        ] {
            fs::set_permissions(root.join(p), fs::Permissions::from_mode(m)).unwrap();
        }
        assert_eq!(tighten(&root).unwrap(), 5);
        for d in ["", "content", "content/free"] {
            assert_eq!(mode(&root.join(d)), DIR_MODE, "{d}");
        }
        for f in ["meta.db", "content/1"] {
            assert_eq!(mode(&root.join(f)), FILE_MODE, "{f}");
        }
        assert_eq!(mode(&outside), 0o644, "a symlink's target is not ours");
        // Private now: nothing more to do, and no walk.
        assert_eq!(tighten(&root).unwrap(), 0);
        assert_eq!(tighten(&dir.path().join("missing")).unwrap(), 0);
    }

    #[test]
    fn a_private_root_is_not_walked() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("state");
        create_dir(&root).unwrap();
        fs::write(root.join("f"), b"").unwrap();
        fs::set_permissions(root.join("f"), fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(tighten(&root).unwrap(), 0);
        assert_eq!(mode(&root.join("f")), 0o644);
    }
}
