//! The push path on real parts: what a mount writes reaches the server and the other mounts,
//! sending only what changed, surviving a kill -9 mid-upload and an unmount right after the
//! writes, and real programs' trees (cp -a, tar, git) arrive whole on a new device.

mod common;
mod support;

use std::fs;
use std::io::Write;
use std::time::{Duration, Instant};

use common::sync::{
    Synced, assert_same_trees, hash_bytes, hash_file, listing, synced_mount, wait_for, wait_quiet,
};
use common::{deltadrive, random_bytes, sh};

const QUIET: Duration = Duration::from_secs(120);
const MIB: usize = 1 << 20;

#[test]
fn a_new_file_is_sent_once_and_a_one_byte_insert_sends_at_most_64_kib() {
    let fx = support::fixture();
    let laptop = synced_mount(&fx.server.base, "laptop", &fx.laptop);
    let phone = synced_mount(&fx.server.base, "phone", &fx.phone);
    let both = [&laptop, &phone];

    let mut content = random_bytes(64, 64 * MIB);
    let before = laptop.counter("bytes_uploaded");
    let down_before = phone.counter("bytes_downloaded");
    fs::write(laptop.path("big.bin"), &content).unwrap();
    wait_quiet(&both, QUIET);
    assert_eq!(hash_file(&phone.path("big.bin")), hash_bytes(&content));
    // Sent while the scan cut it, and not again by the push.
    let first = laptop.counter("bytes_uploaded") - before;
    assert!(
        (64 * MIB as u64..64 * MIB as u64 * 21 / 20).contains(&first),
        "a new 64 MiB file took {first} bytes to upload"
    );
    // Received once, whether fetched ahead from the upload hints or at the commit.
    let received = phone.counter("bytes_downloaded") - down_before;
    assert!(
        received < 64 * MIB as u64 * 21 / 20,
        "a new 64 MiB file took {received} bytes to download"
    );

    // A program rewrites the file with one byte inserted in the middle.
    let (up0, down0) = (
        laptop.counter("bytes_uploaded"),
        phone.counter("bytes_downloaded"),
    );
    content.insert(32 * MIB + 12345, b'!');
    let mut read_back = fs::read(laptop.path("big.bin")).unwrap();
    read_back.insert(32 * MIB + 12345, b'!');
    fs::write(laptop.path("big.bin"), &read_back).unwrap();
    wait_quiet(&both, QUIET);
    let up = laptop.counter("bytes_uploaded") - up0;
    let down = phone.counter("bytes_downloaded") - down0;
    eprintln!("1-byte insert into 64 MiB: uploaded {up} bytes, downloaded {down} bytes");
    assert_eq!(hash_file(&phone.path("big.bin")), hash_bytes(&content));
    // Two new chunks of ~16 KiB and the edit, not the re-cut tail's chunks again (nor even
    // questions about them).
    assert!(up <= 64 * 1024, "the laptop uploaded {up} bytes");
    assert!(down <= 64 * 1024, "the phone downloaded {down} bytes");
}

#[test]
fn a_large_file_is_fetched_while_it_uploads_and_lands_whole_through_rewrites() {
    let fx = support::fixture();
    let laptop = synced_mount(&fx.server.base, "laptop", &fx.laptop);
    let phone = synced_mount(&fx.server.base, "phone", &fx.phone);
    let both = [&laptop, &phone];

    // Large enough for several upload batches: the phone fetches the first ones (from the
    // laptop's hints) while the laptop still uploads the rest.
    let size = 192 * MIB;
    let mut content = random_bytes(77, size);
    let down0 = phone.counter("bytes_downloaded");
    fs::write(laptop.path("big.bin"), &content).unwrap();
    wait_quiet(&both, QUIET);
    assert_eq!(hash_file(&phone.path("big.bin")), hash_bytes(&content));
    let down = phone.counter("bytes_downloaded") - down0;
    let ahead = phone.counter("bytes_prefetched");
    eprintln!("192 MiB new file: phone downloaded {down} bytes, {ahead} of them ahead");
    assert!(
        ahead >= 16 * MIB as u64,
        "only {ahead} bytes were fetched ahead"
    );
    // What was fetched ahead was not fetched again when the commit landed.
    assert!(
        down < size as u64 * 21 / 20,
        "the phone downloaded {down} bytes for a {size} byte file"
    );

    // Two overlapping rewrites in place, one right after the other: the phone's staged
    // file gets chunks of both versions at overlapping places, and must still end up with
    // the last one.
    for (seed, at) in [(78u64, 40 * MIB), (79, 56 * MIB)] {
        let piece = random_bytes(seed, 64 * MIB);
        content[at..at + piece.len()].copy_from_slice(&piece);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(laptop.path("big.bin"))
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &piece, at as u64).unwrap();
        f.flush().unwrap();
    }
    wait_quiet(&both, QUIET);
    assert_eq!(hash_file(&laptop.path("big.bin")), hash_bytes(&content));
    assert_eq!(hash_file(&phone.path("big.bin")), hash_bytes(&content));
}

/// Writes `pieces` MiB of seeded random bytes to `path`; returns their BLAKE3.
fn write_big(path: &std::path::Path, pieces: usize) -> String {
    let mut file = fs::File::create(path).unwrap();
    let mut hasher = blake3::Hasher::new();
    for i in 0..pieces {
        let piece = random_bytes(1000 + i as u64, MIB);
        hasher.update(&piece);
        file.write_all(&piece).unwrap();
    }
    file.sync_all().unwrap();
    hasher.finalize().to_hex().to_string()
}

#[test]
fn kill_9_in_the_middle_of_an_upload_then_remount_loses_nothing() {
    let fx = support::fixture();
    let mut laptop = synced_mount(&fx.server.base, "laptop", &fx.laptop);
    let phone = synced_mount(&fx.server.base, "phone", &fx.phone);

    let big = write_big(&laptop.path("big.bin"), 200);
    // Small files behind it in the outbox.
    let small: Vec<(String, Vec<u8>)> = (0..10)
        .map(|i| (format!("small-{i}.txt"), random_bytes(i, 1000 + i as usize)))
        .collect();
    for (name, bytes) in &small {
        fs::write(laptop.path(name), bytes).unwrap();
    }
    wait_for(
        &[&laptop, &phone],
        QUIET,
        "the upload started (or ended)",
        // The engine publishes its plan's transactions before it uploads their chunks.
        || {
            let s = laptop.status();
            s["pending_transactions"].as_u64() > Some(0)
                || s["bytes_uploaded"].as_u64() > Some(8 * MIB as u64)
        },
    );
    let at_kill = laptop.status();
    eprintln!(
        "killing the laptop's daemon at bytes_uploaded={} pending_upload_bytes={} idle={}",
        at_kill["bytes_uploaded"], at_kill["pending_upload_bytes"], at_kill["idle"]
    );
    laptop.kill_daemon();
    laptop.umount();
    laptop.mount();

    let both = [&laptop, &phone];
    wait_quiet(&both, QUIET);
    assert!(
        laptop.path("big.bin").exists() && phone.path("big.bin").exists(),
        "big.bin is on both mounts after the remount{}",
        common::sync::dump(&both)
    );
    for m in both {
        assert_eq!(
            hash_file(&m.path("big.bin")),
            big,
            "the big file on {}, byte for byte",
            m.device
        );
    }
    for (name, bytes) in &small {
        assert_eq!(&fs::read(phone.path(name)).unwrap(), bytes, "{name}");
    }
    assert_same_trees(&both, "after the crash and the remount");
}

#[test]
fn umount_waits_for_the_outbox_and_force_keeps_it_for_the_next_mount() {
    let mut fx = support::fixture();
    let mut laptop = synced_mount(&fx.server.base, "laptop", &fx.laptop);
    let mut expected: Vec<(String, Vec<u8>)> = (0..30)
        .map(|i| (format!("f{i:02}.txt"), random_bytes(100 + i, 3000)))
        .collect();
    expected.push(("medium.bin".to_string(), random_bytes(7, 4 * MIB)));
    for (name, bytes) in &expected {
        fs::write(laptop.path(name), bytes).unwrap();
    }
    laptop.umount();

    // Everything reached the server before umount returned: a fresh device sees it all.
    let phone = synced_mount(&fx.server.base, "phone", &fx.phone);
    wait_quiet(&[&phone], QUIET);
    for (name, bytes) in &expected {
        assert_eq!(
            fs::read(phone.path(name)).ok().as_ref(),
            Some(bytes),
            "{name} on the phone"
        );
    }

    // --force with the server down returns at once and keeps the outbox.
    laptop.mount();
    wait_quiet(&[&laptop, &phone], QUIET);
    fx.server.kill9();
    let forced: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| (format!("forced-{i}.txt"), random_bytes(200 + i, 5000)))
        .collect();
    for (name, bytes) in &forced {
        fs::write(laptop.path(name), bytes).unwrap();
    }
    let started = Instant::now();
    let out = laptop.umount_with(&["--force"]);
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "umount --force: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        took < Duration::from_secs(20),
        "umount --force did not wait for the unreachable server (took {took:?})"
    );

    fx.server.restart();
    laptop.mount();
    wait_quiet(&[&laptop, &phone], QUIET);
    for (name, bytes) in &forced {
        assert_eq!(
            fs::read(phone.path(name)).ok().as_ref(),
            Some(bytes),
            "{name}, pushed by the next mount"
        );
    }
    assert_same_trees(&[&laptop, &phone], "after the forced unmount");
}

#[test]
fn status_umount_progress_and_timeout_then_a_remount_resumes_from_its_cursor() {
    let mut fx = support::fixture();
    let mut laptop = synced_mount(&fx.server.base, "laptop", &fx.laptop);
    fs::write(laptop.path("first.txt"), b"first").unwrap();
    wait_quiet(&[&laptop], QUIET);
    // The status fields docs/ARCHITECTURE.md names ("State on disk"), with what a quiet,
    // online drive says.
    let s = laptop.status();
    for field in [
        "cursor",
        "server_head",
        "pending_transactions",
        "pending_upload_bytes",
        "bytes_to_download",
        "last_sync_ms",
        "conflicts",
        "bytes_uploaded",
        "bytes_downloaded",
    ] {
        assert!(s[field].is_u64(), "{field} missing from status: {s:#}");
    }
    assert_eq!(s["online"], true);
    assert_eq!(s["cursor"], s["server_head"]);
    assert!(s["cursor"].as_u64() >= Some(1));
    assert!(s["last_sync_ms"].as_u64() > Some(1_700_000_000_000));
    assert_eq!(s["bytes_to_download"], 0);
    assert!(s["bytes_uploaded"].as_u64() >= Some(5));
    let synced_at = s["last_sync_ms"].as_u64();

    // The server goes away: changes wait, and umount shows them, then gives up at its timeout.
    fx.server.kill9();
    fs::write(laptop.path("offline.txt"), random_bytes(9, 300_000)).unwrap();
    // All 300,000 bytes are new chunks: that is what waits to be uploaded.
    wait_for(&[&laptop], QUIET, "the drive to say it is offline", || {
        let s = laptop.status();
        s["online"] == false && s["pending_upload_bytes"] == 300_000
    });
    let s = laptop.status();
    assert_eq!(s["pending_transactions"], 1, "{s}");
    assert_eq!(s["pending_versions"], 0, "the engine took the version: {s}");
    let human = deltadrive(&["status", laptop.mountpoint.to_str().unwrap()]);
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(human.contains("(offline)"), "{human}");
    assert!(
        human.contains("1 transaction(s), 300000 bytes to upload; 0 bytes to download"),
        "{human}"
    );
    assert_eq!(laptop.status()["last_sync_ms"].as_u64(), synced_at);
    let started = Instant::now();
    let out = laptop.umount_with(&["--timeout", "3"]);
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "umount: {err}");
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(30),
        "umount --timeout 3 took {took:?}"
    );
    assert!(
        err.contains("waiting for sync: 1 transaction(s), 300000 bytes to upload"),
        "no progress shown: {err}"
    );
    assert!(
        err.contains("gave up waiting after 3s") && err.contains("next mount"),
        "{err}"
    );

    // The same state directory again: no new snapshot, it goes on from its cursor.
    fx.server.restart();
    laptop.mount();
    wait_quiet(&[&laptop], QUIET);
    let phone = synced_mount(&fx.server.base, "phone", &fx.phone);
    wait_quiet(&[&laptop, &phone], QUIET);
    assert_eq!(
        fs::read(phone.path("offline.txt")).unwrap(),
        random_bytes(9, 300_000)
    );
    assert_eq!(
        laptop.log().matches("remote tree from a snapshot").count(),
        1,
        "the remount took a new snapshot:\n{}",
        laptop.log()
    );
}

#[test]
fn a_new_device_gets_real_programs_trees_and_git_fsck_passes() {
    let fx = support::fixture();
    let laptop = synced_mount(&fx.server.base, "laptop", &fx.laptop);

    // A small tree outside the drive, copied in with cp -a and extracted with tar.
    let outside = tempfile::tempdir().unwrap();
    let src = outside.path().join("src");
    for (i, dir) in ["", "a", "a/b", "c"].iter().enumerate() {
        fs::create_dir_all(src.join(dir)).unwrap();
        for j in 0..5 {
            let len = (i * 5 + j) * 997;
            fs::write(
                src.join(dir).join(format!("f{j}.dat")),
                random_bytes((i * 5 + j) as u64, len),
            )
            .unwrap();
        }
    }
    common::chmod(&src.join("a/f1.dat"), 0o600);
    common::chmod(&src.join("c/f2.dat"), 0o755);
    std::os::unix::fs::symlink("../a/b/f3.dat", src.join("c/link")).unwrap();
    sh(
        &format!("cp -a {} copied", src.display()),
        &laptop.mountpoint,
    );
    sh(
        &format!(
            "tar --format=posix -cf {0}/t.tar -C {0} src",
            outside.path().display()
        ),
        outside.path(),
    );
    fs::create_dir(laptop.path("extracted")).unwrap();
    sh(
        &format!("tar xf {}/t.tar", outside.path().display()),
        &laptop.path("extracted"),
    );

    // A git repository made in the drive.
    let repo = laptop.path("repo");
    fs::create_dir(&repo).unwrap();
    sh(
        "git init -q -b main . && git config user.email t@example.com && git config user.name Test",
        &repo,
    );
    for round in 0..2 {
        for i in 0..10 {
            fs::write(
                repo.join(format!("file{i}.txt")),
                format!("round {round} file {i}\n").repeat(i + 1),
            )
            .unwrap();
        }
        sh(
            &format!("git add -A && git commit -q -m 'round {round}'"),
            &repo,
        );
    }
    wait_quiet(&[&laptop], QUIET);

    // A device that never saw the volume joins and gets the same tree.
    let phone = synced_mount(&fx.server.base, "phone", &fx.phone);
    let both: [&Synced; 2] = [&laptop, &phone];
    wait_quiet(&both, QUIET);
    let tree = assert_same_trees(&both, "the new device's tree");
    assert_eq!(
        listing(&phone.path("copied")),
        listing(&src),
        "cp -a: the same entries, modes, mtimes and bytes as the source"
    );
    assert_eq!(
        listing(&phone.path("extracted/src")),
        listing(&src),
        "tar x: the same entries, modes, mtimes and bytes as the source"
    );
    assert!(tree.contains_key("repo/.git/HEAD"));
    let phone_repo = phone.path("repo");
    sh("git fsck --full --strict", &phone_repo);
    assert_eq!(sh("git log --oneline | wc -l", &phone_repo).trim(), "2");
    let status = sh("git status --porcelain", &phone_repo);
    assert!(
        status.is_empty(),
        "a clean work tree on the new device: {status}"
    );
}

/// Asserts that a status does not claim `idle` while the drive holds work for the engine
/// (the contract: idle means nothing pending and no local change since the last cycle).
fn assert_idle_means_nothing_pending(m: &Synced, when: &str) -> serde_json::Value {
    let s = m.status();
    let pending: Vec<&str> = [
        "unrecorded_files",
        "pending_versions",
        "pending_upload_bytes",
        "pending_transactions",
    ]
    .into_iter()
    .filter(|f| s[*f].as_u64() != Some(0))
    .collect();
    assert!(
        s["idle"] == false || pending.is_empty(),
        "{when}: status says idle while {pending:?} are not 0:\n{s:#}"
    );
    s
}

#[test]
fn status_never_says_idle_while_local_changes_wait() {
    let fx = support::fixture();
    let mut laptop = synced_mount(&fx.server.base, "laptop", &fx.laptop);
    wait_quiet(&[&laptop], QUIET);

    // Right after a write is closed, and on every look until the engine is done with it.
    write_big(&laptop.path("twenty.bin"), 20);
    loop {
        let s = assert_idle_means_nothing_pending(&laptop, "after a closed write");
        if s["idle"] == true {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    // After a crash, the new daemon does not show the dead one's status as its own.
    write_big(&laptop.path("thirty.bin"), 30);
    laptop.kill_daemon();
    laptop.umount();
    laptop.mount();
    loop {
        let s = assert_idle_means_nothing_pending(&laptop, "after kill -9 and a remount");
        if s["idle"] == true {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(laptop.counter("pending_versions"), 0);
}

#[test]
fn a_database_held_open_syncs_at_each_commit() {
    let fx = support::fixture();
    let laptop = synced_mount(&fx.server.base, "laptop", &fx.laptop);
    let phone = synced_mount(&fx.server.base, "phone", &fx.phone);
    let both = [&laptop, &phone];

    // A program keeps its database open, as a desktop application does; each COMMIT fsyncs.
    let db = rusqlite::Connection::open(laptop.path("app.db")).unwrap();
    db.execute_batch("PRAGMA journal_mode=DELETE; CREATE TABLE t(x INTEGER);")
        .unwrap();
    // Read-only, and only once the file is there: a plain sqlite3 would create an empty
    // app.db on the phone, a second file of that name (and a conflicted copy).
    let count_on_phone = || {
        if !phone.path("app.db").exists() {
            return String::new();
        }
        let out = std::process::Command::new("sqlite3")
            .arg("-readonly")
            .arg(phone.path("app.db"))
            .arg("SELECT count(*) FROM t")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    for round in 1..=3 {
        db.execute_batch("BEGIN").unwrap();
        for i in 0..100 {
            db.execute("INSERT INTO t VALUES (?1)", [i]).unwrap();
        }
        db.execute_batch("COMMIT").unwrap();
        let want = (round * 100).to_string();
        wait_for(&both, QUIET, &format!("{want} rows on the phone"), || {
            count_on_phone() == want
        });
    }
    drop(db);
    wait_quiet(&both, QUIET);
    for m in both {
        assert_eq!(
            m.status()["conflicts"],
            0,
            "one database, no conflicted copies"
        );
    }
    let out = std::process::Command::new("sqlite3")
        .arg("-readonly")
        .arg(phone.path("app.db"))
        .arg("PRAGMA integrity_check")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}
