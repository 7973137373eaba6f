//! Mount paths that are not UTF-8: the CLI reads the kernel's mount table as bytes, so such
//! a mount anywhere on the machine, or the drive's own mountpoint, breaks nothing.
//!
//! The test works in a private mount namespace of its own, so that its odd mounts are seen
//! by no other test (or other program) running on the machine meanwhile.

mod common;

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{bin, wait_until};

/// A private mount namespace, held open by a child process; commands run in it via nsenter.
/// Dropping it detaches what the test mounted there (even after a failed assertion) and
/// ends the holder, which ends the namespace.
struct Namespace {
    holder: Child,
    data_home: PathBuf,
    /// Mountpoints to detach on drop, last mounted first.
    mounted: Vec<PathBuf>,
}

impl Namespace {
    fn new(data_home: &Path) -> Namespace {
        // Copies of other tests' FUSE mounts would keep their daemons alive after those
        // tests unmount them: the namespace drops its copies before anything else.
        let holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg("umount -a -l -t fuse,fuse.deltadrive 2>/dev/null; exec cat")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("run unshare");
        let ns = Namespace {
            holder,
            data_home: data_home.to_path_buf(),
            mounted: Vec::new(),
        };
        let ours = std::fs::read_link("/proc/self/ns/mnt").expect("our namespace");
        let theirs = format!("/proc/{}/ns/mnt", ns.holder.id());
        let cat = format!("/proc/{}/comm", ns.holder.id());
        // Ready once the holder is in a namespace of its own and has done its unmounting.
        wait_until(Duration::from_secs(10), || {
            std::fs::read_link(&theirs).is_ok_and(|ns| ns != ours)
                && std::fs::read_to_string(&cat).is_ok_and(|c| c.trim() == "cat")
        });
        ns
    }

    /// Runs `program ARGS...` in the namespace.
    fn run(&self, program: &str, args: &[&OsStr]) -> Output {
        Command::new("nsenter")
            .arg("-t")
            .arg(self.holder.id().to_string())
            .arg("-m")
            .arg("--")
            .arg(program)
            .args(args)
            .env("XDG_DATA_HOME", &self.data_home)
            .output()
            .expect("run nsenter")
    }

    /// Runs `deltadrive ARGS...` in the namespace.
    fn deltadrive(&self, args: &[&OsStr]) -> Output {
        self.run(bin(), args)
    }

    /// The namespace's mount table, as the kernel writes it.
    fn mountinfo(&self) -> Vec<u8> {
        let out = self.run("cat", &["/proc/self/mountinfo".as_ref()]);
        assert!(out.status.success());
        out.stdout
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        for mp in self.mounted.iter().rev() {
            let _ = self.run("umount", &["-l".as_ref(), mp.as_os_str()]);
        }
        drop(self.holder.stdin.take());
        let _ = self.holder.wait();
    }
}

fn os(bytes: &[u8]) -> OsString {
    OsString::from_vec(bytes.to_vec())
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn status_and_umount_work_beside_and_on_mount_paths_that_are_not_utf8() {
    let dir = tempfile::Builder::new()
        .prefix("dd-test")
        .tempdir()
        .unwrap();
    let mut ns = Namespace::new(&dir.path().join("data"));

    // Someone else's mount whose name has the byte 0xff.
    let other = dir.path().join(os(b"other\xff"));
    std::fs::create_dir(&other).unwrap();
    let out = ns.run(
        "mount",
        &[
            "-t".as_ref(),
            "tmpfs".as_ref(),
            "none".as_ref(),
            other.as_os_str(),
        ],
    );
    assert!(out.status.success(), "mount tmpfs: {}", said(&out));
    ns.mounted.push(other.clone());
    assert!(
        contains(&ns.mountinfo(), other.as_os_str().as_bytes()),
        "the kernel lists the raw 0xff byte"
    );

    // Our drive, itself at a mountpoint that is not UTF-8.
    let mp = dir.path().join(os(b"drive\xfe\xff"));
    let state = dir.path().join("state");
    std::fs::create_dir(&mp).unwrap();
    let out = ns.deltadrive(&[
        "mount".as_ref(),
        mp.as_os_str(),
        "--state".as_ref(),
        state.as_os_str(),
    ]);
    assert!(out.status.success(), "mount: {}", said(&out));
    ns.mounted.push(mp.clone());

    let file = mp.join("f");
    let out = ns.run(
        "sh",
        &[
            "-c".as_ref(),
            "printf hello > \"$1\"".as_ref(),
            "sh".as_ref(),
            file.as_os_str(),
        ],
    );
    assert!(out.status.success(), "write: {}", said(&out));

    // Status of the drive by its path, as JSON (the path comes back with U+FFFD for its
    // stray bytes) and as text.
    let status = |ns: &Namespace, args: &[&OsStr]| {
        let out = ns.deltadrive(args);
        assert!(out.status.success(), "status: {}", said(&out));
        out.stdout
    };
    let mut v = serde_json::Value::Null;
    wait_until(Duration::from_secs(10), || {
        v = serde_json::from_slice(&status(
            &ns,
            &["status".as_ref(), mp.as_os_str(), "--json".as_ref()],
        ))
        .unwrap();
        v["bytes_stored"] == 5
    });
    assert_eq!(v["mounted"], true);
    assert_eq!(v["daemon_running"], true);
    assert_eq!(v["state_dir"], state.to_str().unwrap());
    let shown = mp.to_string_lossy().into_owned();
    assert_eq!(v["mountpoint"], shown.as_str());

    // Status of every mounted drive reads the whole table, the tmpfs's line included.
    let text = String::from_utf8(status(&ns, &["status".as_ref()])).unwrap();
    assert!(text.contains(&format!("{shown}: mounted")), "{text}");
    assert!(!text.contains("other"), "{text}");

    // And umount finds the drive in that table, flushes and unmounts it.
    let out = ns.deltadrive(&["umount".as_ref(), mp.as_os_str()]);
    assert!(out.status.success(), "umount: {}", said(&out));
    assert!(said(&out).contains("unmounted"), "{}", said(&out));
    ns.mounted.pop();
    let table = ns.mountinfo();
    assert!(!contains(&table, mp.as_os_str().as_bytes()));
    assert!(contains(&table, other.as_os_str().as_bytes()));
    let text = String::from_utf8(status(&ns, &["status".as_ref()])).unwrap();
    assert_eq!(text.trim(), "no deltadrive is mounted");

    // The content was kept: mounted again at the same odd path, the file is there.
    let out = ns.deltadrive(&[
        "mount".as_ref(),
        mp.as_os_str(),
        "--state".as_ref(),
        state.as_os_str(),
    ]);
    assert!(out.status.success(), "mount again: {}", said(&out));
    ns.mounted.push(mp.clone());
    let out = ns.run("cat", &[file.as_os_str()]);
    assert_eq!(out.stdout, b"hello", "{}", said(&out));
    let out = ns.deltadrive(&["umount".as_ref(), mp.as_os_str()]);
    assert!(out.status.success(), "umount again: {}", said(&out));
    ns.mounted.pop();
}
