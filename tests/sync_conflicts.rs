//! The conflict rules (docs/ARCHITECTURE.md, "Conflicts") on real parts: two mounts of
//! alice-docs (laptop, phone) on a real server. Concurrent changes are made deterministic by
//! making them while the server is down (neither side can push), then starting it again on
//! the same address.

mod common;
mod support;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::sync::{
    Synced, assert_same_trees, copies_of, now_secs, synced_mount, wait_for, wait_quiet,
};

const QUIET: Duration = Duration::from_secs(60);

/// alice's laptop and phone following alice-docs on the fixture's server.
fn laptop_and_phone(fx: &support::Fixture) -> (Synced, Synced) {
    (
        synced_mount(&fx.server.base, "laptop", &fx.laptop),
        synced_mount(&fx.server.base, "phone", &fx.phone),
    )
}

/// Writes `files` (relative path -> content; a path ending in '/' is a directory) on `m`,
/// then waits until both mounts agree on them.
fn seed(m: &Synced, both: &[&Synced], files: &[(&str, &[u8])]) {
    for (path, content) in files {
        if let Some(dir) = path.strip_suffix('/') {
            fs::create_dir_all(m.path(dir)).unwrap();
        } else {
            fs::write(m.path(path), content).unwrap();
        }
    }
    wait_quiet(both, QUIET);
    assert_same_trees(both, "after seeding");
}

/// Stops the server, runs `edits` (neither device can push them), starts the server again
/// on the same address and waits until both devices went quiet.
fn while_server_down(fx: &mut support::Fixture, both: &[&Synced], edits: impl FnOnce()) {
    fx.server.kill9();
    edits();
    fx.server.restart();
    wait_quiet(both, QUIET);
}

/// Asserts a both-edited conflict on `dir/name` in `listing` (the same on every mount):
/// the file holds one version, the other is in exactly one conflicted copy in the same
/// directory named after the device that wrote it and stamped between `since` and now (UTC),
/// with the same bytes on every mount; the device that made the copy counts a conflict.
/// Returns the device whose version kept the name.
fn assert_conflict(
    mounts: &[&Synced],
    listing: &BTreeMap<String, String>,
    dir: &str,
    name: &str,
    versions: &[(&Synced, &[u8])],
    since: i64,
) -> String {
    let rel = if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    };
    let kept = fs::read(mounts[0].path(&rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let winner = versions
        .iter()
        .find(|(_, bytes)| *bytes == kept.as_slice())
        .unwrap_or_else(|| {
            panic!(
                "{rel} holds neither version: {:?}",
                String::from_utf8_lossy(&kept)
            )
        });
    let loser = versions
        .iter()
        .find(|(m, _)| m.device != winner.0.device)
        .expect("two devices");
    let copies = copies_of(listing, dir, name);
    assert_eq!(
        copies.len(),
        1,
        "one conflicted copy of {rel} expected, listing: {listing:#?}"
    );
    let (copy_path, parsed) = &copies[0];
    assert_eq!(
        parsed.device, loser.0.device,
        "{copy_path} is named after the device whose version lost"
    );
    assert!(
        parsed.secs >= since - 1 && parsed.secs <= now_secs() + 1,
        "{copy_path}: the stamp is the conflict's time in UTC (since {since})"
    );
    for m in mounts {
        assert_eq!(
            fs::read(m.path(&rel)).unwrap(),
            kept,
            "{rel} on {}",
            m.device
        );
        assert_eq!(
            fs::read(m.path(copy_path)).unwrap(),
            loser.1,
            "{copy_path} on {} holds the losing version",
            m.device
        );
    }
    assert!(
        loser.0.counter("conflicts") > 0,
        "{} made the copy and counts it: {}",
        loser.0.device,
        loser.0.status()
    );
    winner.0.device.clone()
}

/// No conflicted copy anywhere in a listing.
fn assert_no_copies(listing: &BTreeMap<String, String>) {
    let copies: Vec<&String> = listing
        .keys()
        .filter(|p| p.contains("(conflicted copy"))
        .collect();
    assert!(
        copies.is_empty(),
        "unexpected conflicted copies: {copies:?}"
    );
}

#[test]
fn both_edited_one_keeps_the_name_the_other_becomes_a_conflicted_copy() {
    let mut fx = support::fixture();
    let (laptop, phone) = laptop_and_phone(&fx);
    let both = [&laptop, &phone];
    seed(&laptop, &both, &[("doc.txt", b"the first version\n")]);

    let since = now_secs();
    let (l, p): (&[u8], &[u8]) = (
        b"the first version\nedited on the laptop\n",
        b"edited on the phone, longer than the laptop's edit\n",
    );
    while_server_down(&mut fx, &both, || {
        fs::write(laptop.path("doc.txt"), l).unwrap();
        fs::write(phone.path("doc.txt"), p).unwrap();
    });
    let listing = assert_same_trees(&both, "after the conflict");
    assert_conflict(
        &both,
        &listing,
        "",
        "doc.txt",
        &[(&laptop, l), (&phone, p)],
        since,
    );
    assert_eq!(listing.len(), 2, "{listing:#?}");
}

#[test]
fn edit_against_delete_the_edit_wins_both_ways() {
    let mut fx = support::fixture();
    let (laptop, phone) = laptop_and_phone(&fx);
    let both = [&laptop, &phone];
    seed(
        &laptop,
        &both,
        &[
            ("dir/", b""),
            ("dir/edited-on-laptop.txt", b"base one"),
            ("edited-on-phone.bin", b"base two"),
        ],
    );

    while_server_down(&mut fx, &both, || {
        fs::write(
            laptop.path("dir/edited-on-laptop.txt"),
            b"the laptop's edit",
        )
        .unwrap();
        fs::remove_file(phone.path("dir/edited-on-laptop.txt")).unwrap();
        fs::remove_file(laptop.path("edited-on-phone.bin")).unwrap();
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(phone.path("edited-on-phone.bin"))
            .unwrap();
        f.write_all(b" + the phone's append").unwrap();
    });
    let listing = assert_same_trees(&both, "after edit against delete");
    assert_no_copies(&listing);
    for m in both {
        assert_eq!(
            fs::read(m.path("dir/edited-on-laptop.txt")).unwrap(),
            b"the laptop's edit",
            "on {}",
            m.device
        );
        assert_eq!(
            fs::read(m.path("edited-on-phone.bin")).unwrap(),
            b"base two + the phone's append",
            "on {}",
            m.device
        );
    }
}

#[test]
fn a_deleted_directory_stays_with_the_children_added_on_the_other_side() {
    let mut fx = support::fixture();
    let (laptop, phone) = laptop_and_phone(&fx);
    let both = [&laptop, &phone];
    seed(
        &laptop,
        &both,
        &[
            ("proj/", b""),
            ("proj/sub/", b""),
            ("proj/gone/", b""),
            ("proj/old1.txt", b"old one"),
            ("proj/old2.txt", b"old two"),
            ("proj/sub/old3.txt", b"old three"),
            ("proj/gone/old4.txt", b"old four"),
            ("other.txt", b"not involved"),
        ],
    );

    while_server_down(&mut fx, &both, || {
        fs::remove_dir_all(laptop.path("proj")).unwrap();
        fs::write(phone.path("proj/new.txt"), b"added on the phone").unwrap();
        fs::write(phone.path("proj/sub/deep.txt"), b"added deeper").unwrap();
    });
    let listing = assert_same_trees(&both, "after delete against add");
    let paths: Vec<&str> = listing.keys().map(String::as_str).collect();
    assert_eq!(
        paths,
        [
            "other.txt",
            "proj",
            "proj/new.txt",
            "proj/sub",
            "proj/sub/deep.txt"
        ],
        "the directory and the new children stay, the untouched rest is deleted"
    );
    for m in both {
        assert_eq!(
            fs::read(m.path("proj/new.txt")).unwrap(),
            b"added on the phone"
        );
        assert_eq!(
            fs::read(m.path("proj/sub/deep.txt")).unwrap(),
            b"added deeper"
        );
    }
}

#[test]
fn concurrent_moves_end_in_one_place_on_both_devices() {
    let mut fx = support::fixture();
    let (laptop, phone) = laptop_and_phone(&fx);
    let both = [&laptop, &phone];
    let content = common::random_bytes(5, 100_000);
    seed(
        &laptop,
        &both,
        &[
            ("x/", b""),
            ("y/", b""),
            ("m.bin", &content),
            ("d/", b""),
            ("d/inner.txt", b"inside d"),
            ("p/", b""),
            ("q/", b""),
        ],
    );

    while_server_down(&mut fx, &both, || {
        fs::rename(laptop.path("m.bin"), laptop.path("x/m.bin")).unwrap();
        fs::rename(phone.path("m.bin"), phone.path("y/moved.bin")).unwrap();
        fs::rename(laptop.path("d"), laptop.path("x/d")).unwrap();
        fs::rename(phone.path("d"), phone.path("y/d2")).unwrap();
        // Together these would make a cycle: the second one committed must be dropped.
        fs::rename(laptop.path("p"), laptop.path("q/p")).unwrap();
        fs::rename(phone.path("q"), phone.path("p/q")).unwrap();
    });
    let listing = assert_same_trees(&both, "after concurrent moves");
    assert_no_copies(&listing);
    let hash = common::sync::hash_bytes(&content);
    let holders: Vec<&String> = listing
        .iter()
        .filter(|(_, line)| line.contains(&format!("blake3={}", &hash[..16])))
        .map(|(p, _)| p)
        .collect();
    assert!(
        holders == ["x/m.bin"] || holders == ["y/moved.bin"],
        "the file is at one of the two places, once: {holders:?}"
    );
    let inner: Vec<&String> = listing
        .keys()
        .filter(|p| p.ends_with("/inner.txt"))
        .collect();
    assert!(
        inner == ["x/d/inner.txt"] || inner == ["y/d2/inner.txt"],
        "the directory moved whole to one place: {inner:?}"
    );
    assert_eq!(fs::read(laptop.path(inner[0])).unwrap(), b"inside d");
    let cycle: Vec<&str> = ["p", "q", "p/q", "q/p"]
        .into_iter()
        .filter(|p| listing.contains_key(*p))
        .collect();
    assert!(
        cycle == ["q", "q/p"] || cycle == ["p", "p/q"],
        "one of the two moves that make a cycle won: {cycle:?}"
    );
}

#[test]
fn a_file_open_for_writing_is_not_replaced_until_closed_then_becomes_the_copy() {
    let fx = support::fixture();
    let (laptop, phone) = laptop_and_phone(&fx);
    let both = [&laptop, &phone];
    seed(&laptop, &both, &[("notes.md", b"base\n")]);
    let since = now_secs();
    let head_before = laptop.counter("server_head");

    // The phone opens the file and writes, and keeps it open.
    let phone_bytes: &[u8] = b"the phone is writing this while the laptop edits\n";
    let mut held = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(phone.path("notes.md"))
        .unwrap();
    held.write_all(phone_bytes).unwrap();

    // The laptop's edit commits first and reaches the phone's engine.
    let laptop_bytes: &[u8] = b"base\nthe laptop's edit\n";
    fs::write(laptop.path("notes.md"), laptop_bytes).unwrap();
    wait_for(&both, QUIET, "the laptop committed its edit", || {
        let s = laptop.status();
        s["idle"] == true && s["server_head"].as_u64() > Some(head_before)
    });
    let head = laptop.counter("server_head");
    wait_for(&both, QUIET, "the phone heard of the laptop's edit", || {
        phone.counter("server_head") >= head
    });

    // Not replaced under its writer: the handle and the path still show the phone's bytes.
    held.seek(SeekFrom::Start(0)).unwrap();
    let mut through_handle = Vec::new();
    held.read_to_end(&mut through_handle).unwrap();
    assert_eq!(through_handle, phone_bytes, "read through the open handle");
    assert_eq!(
        fs::read(phone.path("notes.md")).unwrap(),
        phone_bytes,
        "read by path while the writer holds it open"
    );
    assert_eq!(fs::read(laptop.path("notes.md")).unwrap(), laptop_bytes);

    // Closed: the laptop's version keeps the name, the phone's is the conflicted copy.
    drop(held);
    wait_quiet(&both, QUIET);
    let listing = assert_same_trees(&both, "after the writer closed");
    let winner = assert_conflict(
        &both,
        &listing,
        "",
        "notes.md",
        &[(&laptop, laptop_bytes), (&phone, phone_bytes)],
        since,
    );
    assert_eq!(
        winner, "laptop",
        "the version committed first keeps the name"
    );
}

#[test]
fn offline_edits_on_both_sides_converge_with_the_conflicts_as_specified() {
    let mut fx = support::fixture();
    let (laptop, phone) = laptop_and_phone(&fx);
    let both = [&laptop, &phone];
    seed(
        &laptop,
        &both,
        &[
            ("docs/", b""),
            ("docs/shared.txt", b"shared base"),
            ("README", b"readme base"),
            ("docs/a.txt", b"a base"),
            ("docs/b.txt", b"b base"),
            ("c.txt", b"c base"),
            ("e.txt", b"e base"),
        ],
    );
    let since = now_secs();
    let (ls, ps): (&[u8], &[u8]) = (b"shared: laptop offline", b"shared: phone offline");
    let (lr, pr): (&[u8], &[u8]) = (b"readme: laptop offline", b"readme: phone offline");
    while_server_down(&mut fx, &both, || {
        // The same files on both sides.
        fs::write(laptop.path("docs/shared.txt"), ls).unwrap();
        fs::write(phone.path("docs/shared.txt"), ps).unwrap();
        fs::write(laptop.path("README"), lr).unwrap();
        fs::write(phone.path("README"), pr).unwrap();
        // Different files, and changes that merge.
        fs::write(laptop.path("docs/a.txt"), b"a: laptop offline").unwrap();
        fs::write(phone.path("docs/b.txt"), b"b: phone offline").unwrap();
        fs::write(laptop.path("new-on-laptop.txt"), b"new laptop").unwrap();
        fs::create_dir(phone.path("new-dir")).unwrap();
        fs::write(phone.path("new-dir/new-on-phone.txt"), b"new phone").unwrap();
        fs::rename(phone.path("c.txt"), phone.path("docs/c-moved.txt")).unwrap();
        common::chmod(&laptop.path("c.txt"), 0o600);
        fs::remove_file(laptop.path("e.txt")).unwrap();
        wait_for(&both, QUIET, "both devices say they are offline", || {
            laptop.status()["online"] == false && phone.status()["online"] == false
        });
    });
    let listing = assert_same_trees(&both, "after the offline edits");
    assert_conflict(
        &both,
        &listing,
        "docs",
        "shared.txt",
        &[(&laptop, ls), (&phone, ps)],
        since,
    );
    assert_conflict(
        &both,
        &listing,
        "",
        "README",
        &[(&laptop, lr), (&phone, pr)],
        since,
    );
    for m in both {
        let read = |p: &str| fs::read(m.path(p)).unwrap();
        assert_eq!(read("docs/a.txt"), b"a: laptop offline");
        assert_eq!(read("docs/b.txt"), b"b: phone offline");
        assert_eq!(read("new-on-laptop.txt"), b"new laptop");
        assert_eq!(read("new-dir/new-on-phone.txt"), b"new phone");
        assert_eq!(read("docs/c-moved.txt"), b"c base");
        let mode = fs::metadata(m.path("docs/c-moved.txt"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o600, "the chmod and the move merge");
        assert!(!m.path("c.txt").exists());
        assert!(!m.path("e.txt").exists());
    }
    assert_eq!(listing.len(), 11, "{listing:#?}");
}
