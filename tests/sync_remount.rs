//! A state directory that joined a volume remembers it: it mounts again without flags, also
//! while the server is away, and refuses to follow another volume; a drive asked to sync
//! that cannot start its engine is not mounted at all. Real mounts, a real `serve`.

mod common;
mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::sync::{synced_mount, wait_for};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_owned()
}

/// Joined once, the laptop's state mounts again with no flags while the server is down:
/// the drive works at once and says it is offline; what is written there reaches the phone
/// when the server is back. The token is kept in the state directory, 0600.
#[test]
fn a_joined_state_mounts_again_without_flags_and_without_the_server() {
    let mut fx = support::fixture();
    let mut laptop = synced_mount(&fx.server.base, "laptop", &fx.laptop);
    std::fs::write(laptop.path("before.txt"), b"written online").expect("write");
    wait_for(
        &[&laptop],
        Duration::from_secs(30),
        "the first push",
        || laptop.status()["idle"] == true && laptop.status()["pending_transactions"] == 0,
    );
    laptop.umount();
    let token = laptop.state.join("token");
    let kept = std::fs::read_to_string(&token).expect("token kept");
    assert_eq!(kept.trim(), fx.laptop);
    let mode = std::fs::metadata(&token)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(
        !laptop.log().contains(&fx.laptop),
        "the token is never logged"
    );

    let addr = fx.server.addr();
    fx.server.kill9();
    laptop.set_args(&[]);
    let started = std::time::Instant::now();
    laptop.mount();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "mounted without waiting for the server"
    );
    assert_eq!(
        std::fs::read(laptop.path("before.txt")).expect("read"),
        b"written online"
    );
    std::fs::write(laptop.path("offline.txt"), b"written offline").expect("write");
    wait_for(
        &[&laptop],
        Duration::from_secs(30),
        "offline in status",
        || {
            let s = laptop.status();
            s["online"] == false
                && s["server"].as_str() == Some(fx.server.base.as_str())
                && s["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("cannot reach the server"))
        },
    );

    fx.server = support::Server::start_at(&fx.server.data, &addr);
    let phone = synced_mount(&fx.server.base, "phone", &fx.phone);
    wait_for(
        &[&laptop, &phone],
        Duration::from_secs(60),
        "the offline write on the phone",
        || std::fs::read(phone.path("offline.txt")).is_ok_and(|b| b == b"written offline"),
    );
    assert_eq!(laptop.status()["online"], true);
}

/// A bound state refuses another volume (or server) with one line and stays unmounted; a
/// local-only drive refuses to start syncing in place; the same volume again is fine.
#[test]
fn a_bound_state_refuses_another_volume_and_a_local_drive_refuses_to_join() {
    let fx = support::fixture();
    let mut laptop = synced_mount(&fx.server.base, "laptop", &fx.laptop);
    laptop.umount();
    let token_file = laptop.state.join("token").display().to_string();
    for (server, volume) in [
        (fx.server.base.as_str(), "bob-docs"),
        ("http://127.0.0.1:9", "alice-docs"),
    ] {
        laptop.set_args(&[
            "--server",
            server,
            "--volume",
            volume,
            "--token-file",
            &token_file,
        ]);
        let out = laptop.try_mount();
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            err.contains("is bound to volume alice-docs on")
                && err.contains("mount it without --server/--volume"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(!common::is_mounted(&laptop.mountpoint));
    }
    // The same volume with its flags again mounts.
    let join = [
        "--server",
        &fx.server.base,
        "--volume",
        "alice-docs",
        "--token-file",
        &token_file,
    ];
    laptop.set_args(&join);
    laptop.mount();
    laptop.umount();

    let mut local = common::Mount::new();
    std::fs::write(local.path("mine.txt"), b"local only").expect("write");
    local.umount();
    local.set_args(&join);
    let out = local.try_mount();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("holds a local-only drive, which cannot start syncing in place"),
        "{}",
        stderr(&out)
    );
    // Without flags it is the local drive it was.
    local.set_args(&[]);
    local.mount();
    assert_eq!(
        std::fs::read(local.path("mine.txt")).expect("read"),
        b"local only"
    );
    assert!(local.status()["server"].is_null());
}

/// The sync engine of a joined state cannot start (its staging directory is a file): the
/// mount fails with the reason in one line and leaves nothing mounted.
#[test]
fn a_drive_whose_sync_engine_cannot_start_is_not_mounted() {
    let fx = support::fixture();
    let mut laptop = synced_mount(&fx.server.base, "laptop", &fx.laptop);
    laptop.umount();
    let staging = laptop.state.join("staging");
    std::fs::remove_dir_all(&staging).expect("remove staging");
    std::fs::write(&staging, b"in the way").expect("a file in the way");
    laptop.set_args(&[]);
    let out = laptop.try_mount();
    assert!(!out.status.success(), "mount succeeded");
    let err = stderr(&out);
    assert!(err.contains("cannot start the sync engine"), "{err}");
    assert!(!common::is_mounted(&laptop.mountpoint));
}

/// The laptop's token is revoked while it is offline: mounted again, the drive works
/// locally, keeps its changes, and `status` names the refused token.
#[test]
fn a_token_revoked_while_offline_shows_in_status_and_the_drive_keeps_working() {
    let mut fx = support::fixture();
    let mut laptop = synced_mount(&fx.server.base, "laptop", &fx.laptop);
    laptop.umount();
    let addr = fx.server.addr();
    fx.server.kill9();
    support::admin(&fx.server.data, &["token", "revoke", "alice", "laptop"]);
    laptop.set_args(&[]);
    laptop.mount();
    std::fs::write(laptop.path("kept.txt"), b"kept").expect("write");
    fx.server = support::Server::start_at(&fx.server.data, &addr);
    wait_for(
        &[&laptop],
        Duration::from_secs(60),
        "the refusal in status",
        || {
            laptop.status()["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("refused the token (401"))
        },
    );
    assert_eq!(
        std::fs::read(laptop.path("kept.txt")).expect("read"),
        b"kept"
    );
    let out = laptop.umount_with(&["--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// `status` asks the running daemon through its control socket (0600): a status file left
/// in the state directory is never shown, a killed daemon's drive is not online, and a
/// local-only drive mounted where a synced one was shows no server.
#[test]
fn status_asks_the_running_daemon_not_what_was_left_behind() {
    let fx = support::fixture();
    let mut laptop = synced_mount(&fx.server.base, "laptop", &fx.laptop);
    wait_for(&[&laptop], Duration::from_secs(30), "idle", || {
        laptop.status()["idle"] == true
    });
    let socket = laptop.state.join("control.sock");
    let mode = std::fs::symlink_metadata(&socket)
        .expect("control socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    std::fs::write(
        laptop.state.join("sync-status.json"),
        br#"{"online":true,"cursor":999,"server_head":999,"bytes_uploaded":0,
            "bytes_downloaded":0,"last_error":"left behind"}"#,
    )
    .expect("a file left behind");
    let s = laptop.status();
    assert_ne!(s["cursor"], 999, "{s}");
    assert_ne!(s["last_error"], "left behind", "{s}");
    assert_eq!(s["online"], true, "{s}");

    laptop.kill_daemon();
    let s = laptop.status();
    assert_eq!(s["daemon_running"], false, "{s}");
    assert_eq!(s["online"], false, "{s}");
    laptop.umount();

    let mut local = common::Mount::new();
    local.umount();
    let mountpoint = laptop.mountpoint.to_str().expect("utf-8").to_owned();
    let state = local.state.to_str().expect("utf-8").to_owned();
    let out = common::deltadrive(&["mount", &mountpoint, "--state", &state]);
    assert!(out.status.success(), "{}", stderr(&out));
    let _guard = common::UnmountGuard(laptop.mountpoint.clone());
    let human = common::deltadrive(&["status", &mountpoint]);
    let human = String::from_utf8_lossy(&human.stdout).into_owned();
    assert!(human.contains(": mounted"), "{human}");
    assert!(!human.contains("syncs with"), "{human}");
    let out = common::deltadrive(&["umount", &mountpoint]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// `umount` waiting for the outbox on a terminal redraws one progress line in place rather
/// than printing a line a second (the terminal comes from `script`).
#[test]
fn umount_on_a_terminal_shows_one_updating_progress_line() {
    let mut fx = support::fixture();
    let laptop = synced_mount(&fx.server.base, "laptop", &fx.laptop);
    fx.server.kill9();
    std::fs::write(laptop.path("offline.bin"), common::random_bytes(3, 100_000)).expect("write");
    wait_for(
        &[&laptop],
        Duration::from_secs(30),
        "the pending upload",
        || laptop.status()["pending_upload_bytes"].as_u64() > Some(0),
    );
    let command = format!(
        "{} umount --timeout 3 {}",
        common::bin(),
        laptop.mountpoint.to_str().expect("utf-8")
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .output()
        .expect("run script");
    let shown = String::from_utf8_lossy(&out.stdout);
    let redraws = shown
        .matches("\r\u{1b}[2Kwaiting for sync: 1 transaction(s), 100000 bytes to upload")
        .count();
    assert!(redraws >= 3, "{redraws} redraws: {shown:?}");
    let (before, _) = shown.split_once("gave up waiting").expect("gave up");
    assert!(
        before.matches('\n').count() <= 1,
        "one line, redrawn: {before:?}"
    );
}

/// `deltadrive mount ~/Drive` alone: a drive joined with the default state directory (under
/// `$XDG_DATA_HOME`) mounts again synced with no flag at all, and `status` finds it there.
#[test]
fn the_default_state_directory_remembers_its_volume_too() {
    let fx = support::fixture();
    let home = tempfile::tempdir().expect("tempdir");
    let (mp, data_home) = (home.path().join("Drive"), home.path().join("data"));
    std::fs::create_dir(&mp).expect("mkdir");
    let _guard = common::UnmountGuard(mp.clone());
    let mp_arg = mp.to_str().expect("utf-8");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(common::bin())
            .args(args)
            .env("XDG_DATA_HOME", &data_home)
            .output()
            .expect("run deltadrive");
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        out
    };
    let token = common::sync::token_file(home.path(), &fx.laptop);
    let volume = common::sync::VOLUME;
    run(&[
        "mount",
        mp_arg,
        "--server",
        &fx.server.base,
        "--volume",
        volume,
        "--token-file",
        &token,
    ]);
    run(&["umount", mp_arg]);
    std::fs::remove_file(&token).expect("the join's token file is not needed again");

    run(&["mount", mp_arg]);
    std::fs::write(mp.join("hello.txt"), b"from the default state").expect("write");
    let phone = synced_mount(&fx.server.base, "phone", &fx.phone);
    wait_for(
        &[&phone],
        Duration::from_secs(30),
        "hello.txt on the phone",
        || std::fs::read(phone.path("hello.txt")).is_ok_and(|b| b == b"from the default state"),
    );
    let status: serde_json::Value =
        serde_json::from_slice(&run(&["status", mp_arg, "--json"]).stdout).expect("json");
    assert_eq!(status["online"], true, "{status}");
    assert_eq!(status["server"].as_str(), Some(fx.server.base.as_str()));
    let states: Vec<_> = std::fs::read_dir(data_home.join("deltadrive/mounts"))
        .expect("the default state root")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(states.len(), 1, "{states:?}");
    assert!(states[0].join("token").is_file());
    run(&["umount", mp_arg]);
}
