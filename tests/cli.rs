//! The command line: help, and a clear one-line error with a non-zero exit for bad input.

mod common;

use std::process::Command;

use common::{Mount, bin, deltadrive};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn help_for_every_command() {
    for args in [
        &["--help"][..],
        &["mount", "--help"],
        &["umount", "--help"],
        &["status", "--help"],
    ] {
        let out = deltadrive(args);
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage:"), "{args:?}: {text}");
    }
    let out = deltadrive(&["mount", "--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("--foreground") && text.contains("--state"));
    assert!(!text.contains("report-ready"), "internal flag stays hidden");
}

#[test]
fn mount_refuses_bad_mountpoints_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let out = deltadrive(&["mount", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim(),
        format!(
            "deltadrive: mountpoint {} does not exist",
            missing.display()
        )
    );

    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let out = deltadrive(&["mount", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is not a directory"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stderr(&out).trim().lines().count(), 1);

    let m = Mount::new();
    let other_state = dir.path().join("other-state");
    let out = deltadrive(&[
        "mount",
        m.mountpoint.to_str().unwrap(),
        "--state",
        other_state.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is already mounted"),
        "{}",
        stderr(&out)
    );

    // A second daemon on the same state directory is refused too.
    let mp2 = dir.path().join("mp2");
    std::fs::create_dir(&mp2).unwrap();
    let out = deltadrive(&[
        "mount",
        mp2.to_str().unwrap(),
        "--state",
        m.state.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("in use by another deltadrive daemon"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn mount_without_dev_fuse_says_so() {
    // A private mount namespace with an empty /dev: /dev/fuse is missing there only.
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().join("mp");
    std::fs::create_dir(&mp).unwrap();
    let script = format!(
        "mount -t tmpfs none /dev && exec {} mount {}",
        bin(),
        mp.display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("/dev/fuse is unavailable"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn umount_and_status_of_what_is_not_mounted() {
    let dir = tempfile::tempdir().unwrap();
    let out = deltadrive(&["umount", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is not mounted"), "{}", stderr(&out));
    let out = deltadrive(&["umount", "/proc"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a deltadrive mount"),
        "{}",
        stderr(&out)
    );
    let out = deltadrive(&["status", dir.path().to_str().unwrap(), "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["mounted"], false);
    let out = deltadrive(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
}

#[test]
fn foreground_mount_stops_cleanly_on_sigterm() {
    foreground_mount_stops_cleanly_on(libc::SIGTERM);
}

#[test]
fn foreground_mount_stops_cleanly_on_ctrl_c() {
    foreground_mount_stops_cleanly_on(libc::SIGINT);
}

/// Sends `sig` to a daemon this test started.
fn signal(child: &std::process::Child, sig: libc::c_int) {
    // SAFETY: kill has no memory preconditions; the pid is our own child's.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

/// Starts `deltadrive mount --foreground` and waits until the mount answers.
fn foreground_mount(mp: &std::path::Path, state: &std::path::Path) -> std::process::Child {
    let child = Command::new(bin())
        .args([
            "mount",
            mp.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
            "--foreground",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_until(std::time::Duration::from_secs(10), || {
        common::is_mounted(mp) && std::fs::metadata(mp).is_ok()
    });
    child
}

fn foreground_mount_stops_cleanly_on(sig: libc::c_int) {
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().join("mp");
    let state = dir.path().join("state");
    std::fs::create_dir(&mp).unwrap();
    // Unmounts even if an assertion below fails.
    let _guard = common::UnmountGuard(mp.clone());
    let child = foreground_mount(&mp, &state);
    std::fs::write(mp.join("f"), b"kept").unwrap();
    signal(&child, sig);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "foreground daemon exits 0 after signal {sig}; it said: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!common::is_mounted(&mp), "unmounted");
    // The state was closed cleanly and keeps the file.
    let mut m2 = Command::new(bin())
        .args([
            "mount",
            mp.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(m2.status.success());
    assert_eq!(std::fs::read(mp.join("f")).unwrap(), b"kept");
    let log = std::fs::read_to_string(state.join("daemon.log")).unwrap();
    assert!(!log.contains("did not end cleanly"));
    m2 = deltadrive(&["umount", mp.to_str().unwrap()]);
    assert!(m2.status.success());
}

#[test]
fn a_stop_while_a_file_is_open_detaches_and_ends_when_it_closes() {
    use std::io::{Read, Seek, Write};
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().join("mp");
    let state = dir.path().join("state");
    std::fs::create_dir(&mp).unwrap();
    let _guard = common::UnmountGuard(mp.clone());
    let mut child = foreground_mount(&mp, &state);
    std::fs::write(mp.join("f"), b"before").unwrap();
    let mut held = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(mp.join("f"))
        .unwrap();
    signal(&child, libc::SIGTERM);
    // The busy mount leaves the namespace after a short grace...
    common::wait_until(std::time::Duration::from_secs(15), || {
        !common::is_mounted(&mp)
    });
    // ...while the daemon keeps serving the open file.
    assert!(child.try_wait().unwrap().is_none(), "daemon still serving");
    let mut got = String::new();
    held.read_to_string(&mut got).unwrap();
    assert_eq!(got, "before");
    held.seek(std::io::SeekFrom::End(0)).unwrap();
    held.write_all(b" and after").unwrap();
    drop(held);
    let out = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("the drive is busy"), "{said}");
    // Nothing written through the held file was lost.
    let child = foreground_mount(&mp, &state);
    assert_eq!(std::fs::read(mp.join("f")).unwrap(), b"before and after");
    signal(&child, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn umount_of_a_busy_drive_says_so_and_keeps_it_mounted() {
    let mut m = Mount::new();
    std::fs::write(m.path("f"), b"kept").unwrap();
    let held = std::fs::File::open(m.path("f")).unwrap();
    let out = m.umount_with(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is busy: close the programs using it"),
        "{}",
        stderr(&out)
    );
    assert!(common::is_mounted(&m.mountpoint));
    assert_eq!(std::fs::read(m.path("f")).unwrap(), b"kept");
    drop(held);
    m.umount();
    assert!(!common::is_mounted(&m.mountpoint));
}

#[test]
fn default_state_directory_is_under_xdg_data_home() {
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().join("mp");
    let data_home = dir.path().join("data");
    std::fs::create_dir(&mp).unwrap();
    let _guard = common::UnmountGuard(mp.clone());
    let run = |args: &[&str]| {
        Command::new(bin())
            .args(args)
            .env("XDG_DATA_HOME", &data_home)
            .output()
            .unwrap()
    };
    let out = run(&["mount", mp.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::write(mp.join("f"), b"x").unwrap();
    let out = run(&["status", mp.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let state = std::path::PathBuf::from(v["state_dir"].as_str().unwrap());
    assert!(
        state.starts_with(data_home.join("deltadrive/mounts")),
        "{}",
        state.display()
    );
    assert!(state.join("meta.db").exists());
    let out = run(&["umount", mp.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Mounting again without --state finds the same tree.
    let out = run(&["mount", mp.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(mp.join("f")).unwrap(), b"x");
    assert!(run(&["umount", mp.to_str().unwrap()]).status.success());
}

#[test]
fn status_refuses_a_sync_state_from_a_newer_build_with_one_line() {
    let mut m = Mount::new();
    m.umount();
    let sync_db = m.state.join("sync.db");
    let conn = rusqlite::Connection::open(&sync_db).unwrap();
    conn.pragma_update(None, "user_version", 9).unwrap();
    drop(conn);
    let out = deltadrive(&[
        "status",
        m.mountpoint.to_str().unwrap(),
        "--state",
        m.state.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stderr(&out).trim(),
        format!(
            "deltadrive: {}: sync state schema version 9 is newer than this deltadrive knows \
             (1); use a newer deltadrive",
            sync_db.display()
        )
    );
}
