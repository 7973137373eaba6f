//! `deltadrive status --watch` on a real synced mount: what waits while the server is away,
//! then the upload's progress and rate once it is back, as plain lines (stdout is a pipe)
//! and as progress bars on a terminal (the terminal comes from `script`).

mod common;
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::sync::{synced_mount, wait_for};

/// A child killed when dropped, also when the test fails.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines of the watcher until one satisfies `until` (or `timeout` passes: panics).
fn lines_until(
    rx: &mpsc::Receiver<String>,
    timeout: Duration,
    seen: &mut Vec<String>,
    until: impl Fn(&str) -> bool,
) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = until(&line);
                seen.push(line);
                if done {
                    return;
                }
            }
            Err(_) => panic!("not within {timeout:?}; lines:\n{}", seen.join("\n")),
        }
    }
}

#[test]
fn watch_shows_what_waits_then_the_upload_moving_then_in_sync() {
    let mut fx = support::fixture();
    let laptop = synced_mount(&fx.server.base, "laptop", &fx.laptop);
    wait_for(&[&laptop], Duration::from_secs(30), "idle", || {
        laptop.status()["idle"] == true
    });
    let addr = fx.server.addr();
    fx.server.kill9();
    let data = common::random_bytes(5, 48 << 20);
    std::fs::write(laptop.path("big.bin"), &data).expect("write");

    let mountpoint = laptop.mountpoint.to_str().expect("utf-8").to_owned();
    let mut child = Command::new(common::bin())
        .args(["status", &mountpoint, "--watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start status --watch");
    let stdout = child.stdout.take().expect("stdout");
    let _watcher = Killed(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    lines_until(&rx, Duration::from_secs(60), &mut seen, |l| {
        l.contains(": offline") && l.contains("; up 1 file(s), 0 B of 50.3 MB;")
    });

    fx.server = support::Server::start_at(&fx.server.data, &addr);
    lines_until(&rx, Duration::from_secs(120), &mut seen, |l| {
        l.contains(": in sync; up 0 file(s), 50.")
    });
    assert!(
        seen.iter().any(|l| l.contains("MB/s")),
        "a rate was shown:\n{}",
        seen.join("\n")
    );
    assert!(
        seen.iter().any(|l| l.contains("; in flight: /big.bin")),
        "the file was shown in flight:\n{}",
        seen.join("\n")
    );
    assert!(
        seen.iter()
            .all(|l| l.starts_with(&format!("{mountpoint}: "))),
        "{}",
        seen.join("\n")
    );

    // On a terminal: progress bars, drawn in place.
    let out = Command::new("timeout")
        .args([
            "3",
            "script",
            "-qec",
            &format!("{} status {mountpoint} --watch", common::bin()),
            "/dev/null",
        ])
        .output()
        .expect("run script");
    let drawn = String::from_utf8_lossy(&out.stdout);
    assert!(
        drawn.contains("upload [") && drawn.contains("download [") && drawn.contains("in sync"),
        "{drawn:?}"
    );
}
