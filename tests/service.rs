//! `deltadrive service install | uninstall`: the unit it writes passes `systemd-analyze
//! verify`, and its ExecStart, run as systemd would run it, mounts the drive and unmounts it
//! cleanly on SIGTERM.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

/// The words of a unit's `ExecStart=` line, unquoted as systemd reads them.
fn exec_start(unit: &str) -> Vec<String> {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    let mut words = Vec::new();
    let mut word = String::new();
    let (mut quoted, mut escaped, mut started) = (false, false, false);
    for c in line.chars() {
        match c {
            _ if escaped => {
                word.push(c);
                escaped = false;
            }
            '\\' if quoted => escaped = true,
            '"' => {
                quoted = !quoted;
                started = true;
            }
            ' ' if !quoted => {
                if started || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                started = false;
            }
            c => word.push(c),
        }
    }
    if started || !word.is_empty() {
        words.push(word);
    }
    words
}

#[test]
fn the_unit_verifies_mounts_and_unmounts_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mp, state, units) = (
        dir.path().join("my drive"),
        dir.path().join("state"),
        dir.path().join("units"),
    );
    std::fs::create_dir(&mp).expect("mkdir");
    let path = |p: &std::path::Path| p.to_str().expect("utf-8").to_owned();
    let out = common::deltadrive(&[
        "service",
        "install",
        &path(&mp),
        "--state",
        &path(&state),
        "--unit-dir",
        &path(&units),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let name = "deltadrive-tmp-".to_string();
    let unit_path = std::fs::read_dir(&units)
        .expect("units")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|x| x == "service"))
        .expect("a unit written");
    let file = unit_path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("name");
    assert!(
        file.starts_with(&name) && file.contains("my\\x20drive"),
        "{file}"
    );
    assert!(
        stdout.contains(&format!("wrote {}", unit_path.display())),
        "{stdout}"
    );
    let unit = std::fs::read_to_string(&unit_path).expect("read unit");

    match Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit_path)
        .output()
    {
        Ok(v) => assert!(
            v.status.success(),
            "systemd-analyze verify: {}{}",
            String::from_utf8_lossy(&v.stdout),
            String::from_utf8_lossy(&v.stderr)
        ),
        Err(e) => println!("systemd-analyze is not here ({e}): the unit is not verified"),
    }

    // What systemd would start, started the same way: a foreground mount.
    let words = exec_start(&unit);
    assert_eq!(words[0], common::bin());
    assert_eq!(
        words[1..],
        [
            "mount",
            &path(&mp),
            "--foreground",
            "--state",
            &path(&state)
        ]
    );
    let _guard = common::UnmountGuard(mp.clone());
    let mut daemon = Command::new(&words[0])
        .args(&words[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the unit's command");
    common::wait_until(Duration::from_secs(20), || common::is_mounted(&mp));
    std::fs::write(mp.join("f.txt"), b"kept").expect("write");
    // SAFETY: SIGTERM to the child this test started, as systemd stops a unit.
    unsafe { libc::kill(i32::try_from(daemon.id()).expect("pid"), libc::SIGTERM) };
    let status = daemon.wait().expect("wait");
    assert!(status.success(), "stopped with {status}");
    assert!(!common::is_mounted(&mp));

    let out = common::deltadrive(&[
        "service",
        "uninstall",
        &path(&mp),
        "--unit-dir",
        &path(&units),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!unit_path.exists());
    let out = common::deltadrive(&[
        "service",
        "uninstall",
        &path(&mp),
        "--unit-dir",
        &path(&units),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no unit"));
}
