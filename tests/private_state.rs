//! Private state: another local user can read neither a drive's state directory (names,
//! xattrs, sizes and bytes of the files in the mount, whatever their mode there) nor a
//! server's data directory (metadata, chunk bytes). Every directory is 0700 and every file
//! 0600, also when the library is used with a umask that lets everything through, and a
//! tree an older build left readable is made private at start.
//!
//! The tests run as root; "another user" is `nobody`, through setpriv. Each temporary
//! directory is opened to others (0755) so that the only thing in nobody's way is the modes
//! deltadrive gives, and a control file there shows nobody can read what is not ours.

mod common;
mod support;

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Once};
use std::time::Duration;

use common::sync::{VOLUME, synced_mount, wait_for, wait_quiet};
use common::{chmod, random_bytes};
use deltadrive::chunking::payload::{self, VerifiedChunk};
use deltadrive::drive::{Caller, Drive, ROOT_INO, StateDir};
use deltadrive::server::{ChunkStore, VerifiedPayload};
use deltadrive::sync::{Binding, Engine, SyncState};
use support::{Server, add_device, admin};

const QUIET: Duration = Duration::from_secs(120);
const ME: Caller = Caller { uid: 0, gid: 0 };

/// umask 0 for this whole test binary (umask is per process): a file or directory made
/// without an explicit mode lets everyone in, so every mode checked below is one deltadrive
/// chose. (`mount` and `serve` set umask 077 themselves; `admin` and the library do not.)
fn open_umask() {
    static ONCE: Once = Once::new();
    // SAFETY: umask(2) only swaps the process's file creation mask.
    ONCE.call_once(|| unsafe {
        libc::umask(0);
    });
}

/// A temporary directory other users can enter, with a control file they can read.
fn open_tempdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("dd-private")
        .tempdir()
        .expect("tempdir");
    chmod(dir.path(), 0o755);
    place_control(dir.path());
    dir
}

/// A file anyone may read in `dir` (an open directory), to show nobody can read there.
fn place_control(dir: &Path) {
    let control = dir.join("control.txt");
    fs::write(&control, b"anyone may read this\n").expect("control file");
    chmod(&control, 0o644);
}

/// A server data directory made by `admin` inside `dir` (alice with devices laptop and
/// phone and the volume the sync helpers use); returns it and the two tokens.
fn server_data(dir: &Path) -> (PathBuf, String, String) {
    let data = dir.join("data");
    admin(&data, &["user", "add", "alice"]);
    let laptop = add_device(&data, "alice", "laptop");
    let phone = add_device(&data, "alice", "phone");
    admin(&data, &["volume", "create", "alice", VOLUME]);
    (data, laptop, phone)
}

/// Runs a command as nobody (uid and gid 65534, no supplementary groups).
fn as_nobody(args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(args)
        .output()
        .expect("run setpriv")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// nobody can read the control file next to the trees checked (so a denial below is ours).
fn assert_nobody_reads_control(dir: &Path) {
    let control = dir.join("control.txt");
    let out = as_nobody(&["cat", control.to_str().expect("utf-8")]);
    assert!(
        out.status.success() && text(&out.stdout) == "anyone may read this\n",
        "nobody cannot read the control file {}: {}",
        control.display(),
        text(&out.stderr)
    );
}

/// `cat PATH` as nobody fails with "Permission denied".
fn assert_nobody_cannot_read(path: &Path) {
    assert!(path.exists(), "{} is missing", path.display());
    let out = as_nobody(&["cat", path.to_str().expect("utf-8")]);
    assert!(
        !out.status.success() && text(&out.stderr).contains("Permission denied"),
        "nobody read {}: exit {:?}, {} bytes, stderr {}",
        path.display(),
        out.status.code(),
        out.stdout.len(),
        text(&out.stderr)
    );
}

/// `ls DIR` as nobody fails with "Permission denied".
fn assert_nobody_cannot_list(dir: &Path) {
    let out = as_nobody(&["ls", dir.to_str().expect("utf-8")]);
    assert!(
        !out.status.success() && text(&out.stderr).contains("Permission denied"),
        "nobody listed {}: {}{}",
        dir.display(),
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// `sqlite3 -readonly DB QUERY` as nobody; Ok(stdout) or Err(stderr).
fn nobody_sqlite(db: &Path, query: &str) -> Result<String, String> {
    let out = as_nobody(&["sqlite3", "-readonly", db.to_str().expect("utf-8"), query]);
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(text(&out.stderr))
    }
}

/// Every directory under (and including) `root` is 0700 and every file 0600; entries for
/// which `skip` holds are not ours. Lists every offender. Returns how many were checked.
fn assert_private_tree(root: &Path, skip: &dyn Fn(&Path) -> bool) -> usize {
    let mut wrong = Vec::new();
    let mut checked = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta =
            fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
        let mode = meta.permissions().mode() & 0o7777;
        checked += 1;
        if meta.is_dir() {
            if mode != 0o700 {
                wrong.push(format!("dir  {mode:04o} {}", path.display()));
            }
            for entry in fs::read_dir(&path).expect("read_dir") {
                let child = entry.expect("dir entry").path();
                if !skip(&child) {
                    stack.push(child);
                }
            }
        } else if meta.is_file() || meta.file_type().is_socket() {
            if mode != 0o600 {
                wrong.push(format!("file {mode:04o} {}", path.display()));
            }
        } else {
            wrong.push(format!("not a file or directory: {}", path.display()));
        }
    }
    assert!(
        wrong.is_empty(),
        "not private under {}:\n{}",
        root.display(),
        wrong.join("\n")
    );
    checked
}

/// The harness's own server logs (tests/support writes them into the data directory).
fn harness_log(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("serve-") && n.ends_with(".log"))
}

fn nothing_skipped(_: &Path) -> bool {
    false
}

/// The backing file under `state/content` holding exactly `bytes`.
fn backing_file_with(state: &Path, bytes: &[u8]) -> Option<PathBuf> {
    fs::read_dir(state.join("content"))
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.is_file() && fs::read(p).is_ok_and(|b| b == bytes))
}

/// Every pack file of a server data directory.
fn pack_files(data: &Path) -> Vec<PathBuf> {
    let mut packs = Vec::new();
    for dir in fs::read_dir(data.join("chunks/packs")).expect("packs dir") {
        let dir = dir.expect("entry").path();
        for f in fs::read_dir(&dir).expect("pack subdir") {
            let f = f.expect("entry").path();
            if f.extension().is_some_and(|e| e == "pack") {
                packs.push(f);
            }
        }
    }
    packs
}

/// Every directory to 0755 and file to 0644, as an older build left them.
fn loosen(root: &Path) {
    let meta = fs::symlink_metadata(root).expect("lstat");
    if meta.is_dir() {
        chmod(root, 0o755);
        for entry in fs::read_dir(root).expect("read_dir") {
            loosen(&entry.expect("entry").path());
        }
    } else if meta.is_file() {
        chmod(root, 0o644);
    }
}

/// The newest harness log of the server on `data`.
fn newest_server_log(data: &Path) -> String {
    let mut logs: Vec<PathBuf> = fs::read_dir(data)
        .expect("data dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| harness_log(p))
        .collect();
    logs.sort();
    fs::read_to_string(logs.last().expect("a server log")).expect("read server log")
}

#[test]
fn other_users_can_read_neither_a_drives_state_nor_the_servers_data() {
    open_umask();
    let dir = open_tempdir();
    let (data, laptop_token, phone_token) = server_data(dir.path());
    let server = Server::start(&data);
    let laptop = synced_mount(&server.base, "laptop", &laptop_token);
    let phone = synced_mount(&server.base, "phone", &phone_token);

    // A file anyone may read in the mount; the phone gets it from the server.
    let secret = random_bytes(7, 300_000);
    fs::write(laptop.path("report.bin"), &secret).expect("write");
    chmod(&laptop.path("report.bin"), 0o644);
    let local = b"a private note\n";
    fs::write(phone.path("note.txt"), local).expect("write");
    chmod(&phone.path("note.txt"), 0o777);
    wait_quiet(&[&laptop, &phone], QUIET);
    for m in [&laptop, &phone] {
        // The harness opens a mount's temporary directory to others (0755).
        place_control(m.dir.path());
        assert_nobody_reads_control(m.dir.path());
    }
    assert_nobody_reads_control(dir.path());

    // Through the mount, nobody reads what the stored mode lets them read.
    for m in [&laptop, &phone] {
        let out = as_nobody(&["cat", m.path("report.bin").to_str().expect("utf-8")]);
        assert!(
            out.status.success() && out.stdout == secret,
            "nobody cannot read report.bin (0644) through the mount of {}: {}",
            m.device,
            text(&out.stderr)
        );
    }

    // Not around it, on disk.
    let control_db = dir.path().join("control.db");
    let made = Command::new("sqlite3")
        .arg(&control_db)
        .arg("CREATE TABLE t(x); INSERT INTO t VALUES ('readable');")
        .status()
        .expect("sqlite3");
    assert!(made.success());
    chmod(&control_db, 0o644);
    assert_eq!(
        nobody_sqlite(&control_db, "SELECT x FROM t").as_deref(),
        Ok("readable\n"),
        "sqlite3 as nobody works on a readable database"
    );
    for (m, content) in [(&laptop, &secret[..]), (&phone, &secret[..])] {
        let state = &m.state;
        let backing = backing_file_with(state, content)
            .unwrap_or_else(|| panic!("no backing file of report.bin in {}", state.display()));
        for file in [
            state.join("meta.db"),
            state.join("sync.db"),
            state.join("daemon.log"),
            state.join("daemon.lock"),
            state.join("control.sock"),
            backing,
        ] {
            assert_nobody_cannot_read(&file);
        }
        for db in ["meta.db", "sync.db"] {
            let read = nobody_sqlite(&state.join(db), "SELECT count(*) FROM sqlite_master");
            assert!(read.is_err(), "nobody read {db} of {}: {read:?}", m.device);
        }
        assert_nobody_cannot_list(state);
        assert_nobody_cannot_list(&state.join("content"));
    }
    let phone_note = backing_file_with(&phone.state, local).expect("backing file of note.txt");
    assert_nobody_cannot_read(&phone_note);

    let packs = pack_files(&data);
    assert!(!packs.is_empty(), "no pack file in {}", data.display());
    for file in [data.join("meta.sqlite"), data.join("chunks/index.sqlite")]
        .into_iter()
        .chain(packs)
    {
        assert_nobody_cannot_read(&file);
    }
    for db in ["meta.sqlite", "chunks/index.sqlite"] {
        let read = nobody_sqlite(&data.join(db), "SELECT count(*) FROM sqlite_master");
        assert!(read.is_err(), "nobody read the server's {db}: {read:?}");
    }
    assert_nobody_cannot_list(&data);

    // And every mode, file by file, whatever the program gave the file in the mount.
    for m in [&laptop, &phone] {
        let n = assert_private_tree(&m.state, &nothing_skipped);
        assert!(n >= 10, "only {n} entries in {}", m.state.display());
    }
    let n = assert_private_tree(&data, &harness_log);
    assert!(n >= 8, "only {n} entries in {}", data.display());
}

#[test]
fn a_state_and_data_directory_left_readable_are_made_private_at_start() {
    open_umask();
    let dir = open_tempdir();
    let (data, laptop_token, _) = server_data(dir.path());
    let mut server = Server::start(&data);
    let mut laptop = synced_mount(&server.base, "laptop", &laptop_token);
    let content = random_bytes(11, 200_000);
    fs::write(laptop.path("notes.txt"), &content).expect("write");
    wait_quiet(&[&laptop], QUIET);
    laptop.umount();
    assert_eq!(server.terminate(Duration::from_secs(30)), Some(true));

    // As an older build left them: everyone may read everything.
    loosen(&laptop.state);
    loosen(&data);
    assert_nobody_reads_control(dir.path());
    let backing = backing_file_with(&laptop.state, &content).expect("backing file");
    let leaked = as_nobody(&["cat", backing.to_str().expect("utf-8")]);
    assert!(
        leaked.status.success() && leaked.stdout == content,
        "the loosened tree should be readable by nobody before the restart: {}",
        text(&leaked.stderr)
    );
    let packs = pack_files(&data);
    let leaked = as_nobody(&["cat", packs[0].to_str().expect("utf-8")]);
    assert!(leaked.status.success(), "{}", text(&leaked.stderr));

    server.restart();
    laptop.mount();

    let log = laptop.log();
    assert!(
        log.contains("other users could read this state: made it private"),
        "no line about the state made private in the daemon log:\n{log}"
    );
    let server_log = newest_server_log(&data);
    assert!(
        server_log.contains("other users could read this state: made it private"),
        "no line about the data made private in the server log:\n{server_log}"
    );
    assert_private_tree(&laptop.state, &nothing_skipped);
    assert_private_tree(&data, &harness_log);
    assert_nobody_cannot_read(&backing);
    assert_nobody_cannot_read(&packs[0]);
    assert_nobody_cannot_read(&data.join("meta.sqlite"));

    // The drive and its sync work as before.
    assert_eq!(fs::read(laptop.path("notes.txt")).expect("read"), content);
    fs::write(laptop.path("more.txt"), b"after\n").expect("write");
    wait_quiet(&[&laptop], QUIET);
    assert_private_tree(&laptop.state, &nothing_skipped);
    assert_private_tree(&data, &harness_log);
}

#[test]
fn the_library_keeps_its_state_private_whatever_the_umask() {
    open_umask();
    let dir = open_tempdir();
    let (data, laptop_token, phone_token) = server_data(dir.path());
    let server = Server::start(&data);
    let laptop = synced_mount(&server.base, "laptop", &laptop_token);
    let from_laptop = random_bytes(13, 3 << 20);
    fs::write(laptop.path("from-laptop.bin"), &from_laptop).expect("write");

    // The phone: a drive and its sync engine in this process, with umask 0.
    let root = dir.path().join("lib/deep/state");
    let state = StateDir::new(&root).expect("state dir");
    let drive = Arc::new(Drive::open(state.clone(), ME).expect("open drive"));
    let (_, fh) = drive
        .create(ROOT_INO, b"from-phone.txt", 0o666, ME)
        .expect("create");
    drive
        .write(fh, 0, b"written by the library\n", false)
        .expect("write");
    drive.release(fh).expect("release");
    let sync = SyncState::open(&root.join("sync.db")).expect("sync state");
    sync.bind(&Binding {
        server: server.base.clone(),
        volume: VOLUME.to_string(),
    })
    .expect("bind");
    let remote =
        deltadrive::remote::Remote::new(&server.base, VOLUME, &phone_token).expect("remote");
    let mut engine = Engine::start(Arc::clone(&drive), remote, sync).expect("engine");
    wait_for(
        &[&laptop],
        QUIET,
        "the library's drive and the laptop exchanged files",
        || {
            backing_file_with(&root, &from_laptop).is_some()
                && fs::read(laptop.path("from-phone.txt"))
                    .is_ok_and(|b| b == b"written by the library\n")
        },
    );
    engine.stop();
    drive.shutdown().expect("shutdown");
    drop(drive);
    // The parents StateDir created, the state, the staged and placed content.
    for parent in [dir.path().join("lib"), dir.path().join("lib/deep")] {
        let mode = fs::metadata(&parent).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700, "{}", parent.display());
    }
    assert_private_tree(&root, &nothing_skipped);

    // The server's stores opened by the library.
    let lib_data = dir.path().join("lib/data");
    let (meta, chunks) = deltadrive::server::open_embedded(&lib_data).expect("open stores");
    let chunk = VerifiedChunk::new(random_bytes(17, 100_000));
    let encoded = chunk.encode(payload::DEFAULT_ZSTD_LEVEL);
    let verified = VerifiedPayload::verify(chunk.id(), encoded.into()).expect("a valid payload");
    chunks.put(vec![verified]).expect("put");
    assert!(!pack_files(&lib_data).is_empty());
    assert_private_tree(&lib_data, &nothing_skipped);
    drop((meta, chunks));
    assert_private_tree(&lib_data, &nothing_skipped);
}
