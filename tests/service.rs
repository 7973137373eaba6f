//! `deltadrive service install | uninstall`: the unit it writes passes `systemd-analyze
//! verify` and is enabled by the real systemctl (a system unit for root, a user unit for a
//! user); its ExecStart, run as systemd would run it, mounts the drive and unmounts it
//! cleanly on SIGTERM. No systemd runs PID 1 here, so systemctl works on the unit files
//! (offline), as it does when a unit is installed into a machine image.

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

/// `systemctl OPTS is-enabled UNIT`'s answer, run offline with `env` added.
fn is_enabled(opts: &[&str], unit: &str, env: &[(&str, &str)]) -> String {
    let out = Command::new("systemctl")
        .args(opts)
        .args(["is-enabled", unit])
        .env("SYSTEMD_OFFLINE", "1")
        .envs(env.iter().copied())
        .output()
        .expect("run systemctl");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn the_unit_verifies_mounts_and_unmounts_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mp, state, image) = (
        dir.path().join("my drive"),
        dir.path().join("state"),
        dir.path().join("image"),
    );
    let units = image.join("etc/systemd/system");
    std::fs::create_dir(&mp).expect("mkdir");
    let path = |p: &std::path::Path| p.to_str().expect("utf-8").to_owned();
    let out = common::deltadrive(&[
        "service",
        "install",
        &path(&mp),
        "--state",
        &path(&state),
        "--root",
        &path(&image),
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
    assert!(stdout.contains("starts at the next boot"), "{stdout}");
    assert_eq!(
        is_enabled(&[&format!("--root={}", path(&image))], file, &[]),
        "enabled"
    );
    let wants = units.join("multi-user.target.wants").join(file);
    assert!(wants.is_symlink(), "{} is not linked", wants.display());

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

    let out = common::deltadrive(&["service", "uninstall", &path(&mp), "--root", &path(&image)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!unit_path.exists());
    assert!(!wants.is_symlink(), "still linked");
    assert_ne!(
        is_enabled(&[&format!("--root={}", path(&image))], file, &[]),
        "enabled"
    );
    let out = common::deltadrive(&["service", "uninstall", &path(&mp), "--root", &path(&image)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no unit"));
}

/// A user (here nobody, with a home of its own) gets a user unit in
/// ~/.config/systemd/user, enabled for default.target, and loses it at uninstall.
#[test]
fn a_user_gets_a_user_unit_enabled_at_login() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (home, mp, bin) = (
        dir.path().join("home"),
        dir.path().join("Drive"),
        dir.path().join("bin"),
    );
    for d in [&home, &mp, &bin] {
        std::fs::create_dir(d).expect("mkdir");
    }
    // nobody runs its own copy of the program: the build tree may be closed to it.
    let exe = bin.join("deltadrive");
    std::fs::copy(common::bin(), &exe).expect("copy the program");
    let path = |p: &std::path::Path| p.to_str().expect("utf-8").to_owned();
    for (p, mode) in [
        (dir.path(), 0o755),
        (bin.as_path(), 0o755),
        (mp.as_path(), 0o755),
    ] {
        common::chmod(p, mode);
    }
    let nobody = 65534;
    std::os::unix::fs::chown(&home, Some(nobody), Some(nobody)).expect("chown home");
    let env = [("HOME", path(&home))];
    let as_nobody = |args: &[&str]| {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&exe)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run setpriv");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };

    let (ok, out) = as_nobody(&["service", "install", &path(&mp)]);
    assert!(ok, "{out}");
    assert!(out.contains("starts at the next login"), "{out}");
    let units = home.join(".config/systemd/user");
    let file = std::fs::read_dir(&units)
        .expect("the user unit directory")
        .filter_map(|e| e.expect("entry").file_name().into_string().ok())
        .find(|n| n.starts_with("deltadrive-") && n.ends_with("-Drive.service"))
        .expect("a unit for the drive");
    let unit = std::fs::read_to_string(units.join(&file)).expect("the user unit");
    assert!(unit.contains("WantedBy=default.target"), "{unit}");
    assert!(
        unit.contains(&format!("ExecStart=\"{}\" mount", path(&exe))),
        "{unit}"
    );
    let wants = units.join("default.target.wants").join(&file);
    assert!(wants.is_symlink(), "{} is not linked", wants.display());
    let home_dir = path(&home);
    assert_eq!(
        is_enabled(&["--user"], &file, &[("HOME", &home_dir)]),
        "enabled"
    );

    let (ok, out) = as_nobody(&["service", "install", &path(&mp), "--root", "/"]);
    assert!(!ok && out.contains("needs root"), "{out}");

    let (ok, out) = as_nobody(&["service", "uninstall", &path(&mp)]);
    assert!(ok, "{out}");
    assert!(!units.join(&file).exists() && !wants.is_symlink());
}
