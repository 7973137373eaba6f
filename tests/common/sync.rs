//! Helpers for tests of synced mounts: a mount that follows a volume as one device, full tree
//! listings compared mount by mount, waiting until the engines go quiet, conflicted-copy names.
//!
//! Independent of tests/support (not every test binary has it): callers pass the server's URL
//! and the device's token.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::ops::{Deref, DerefMut};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{Mount, getxattr, listxattr};

/// The volume every sync test uses (tests/support's fixture creates it for alice).
pub const VOLUME: &str = "alice-docs";

/// Writes `token` to `dir/token` and returns the file's path.
pub fn token_file(dir: &Path, token: &str) -> String {
    let path = dir.join("token");
    std::fs::write(&path, format!("{token}\n")).expect("write token file");
    path.to_str().expect("utf-8 path").to_string()
}

/// A mount that follows a volume as one device; its token file lives as long as it does, so
/// [`Mount::mount`] can mount the same state again.
pub struct Synced {
    /// The mount (dropped first: unmounts).
    pub mount: Mount,
    /// The device name the token belongs to (the name conflicted copies carry).
    pub device: String,
    tokens: tempfile::TempDir,
}

impl Deref for Synced {
    type Target = Mount;
    fn deref(&self) -> &Mount {
        &self.mount
    }
}

impl DerefMut for Synced {
    fn deref_mut(&mut self) -> &mut Mount {
        &mut self.mount
    }
}

/// Mounts a new state directory that follows [`VOLUME`] on `server` as `device`.
pub fn synced_mount(server: &str, device: &str, token: &str) -> Synced {
    let tokens = tempfile::tempdir().expect("tempdir");
    let file = token_file(tokens.path(), token);
    let mount = Mount::with_args(&[
        "--server",
        server,
        "--volume",
        VOLUME,
        "--token-file",
        &file,
    ]);
    Synced {
        mount,
        device: device.to_string(),
        tokens,
    }
}

impl Synced {
    /// A second, fresh state directory and mountpoint for the same device and server.
    pub fn fresh_like(&self, server: &str) -> Synced {
        let token = std::fs::read_to_string(self.tokens.path().join("token")).expect("token");
        synced_mount(server, &self.device, token.trim())
    }

    /// A counter of `status --json` (0 when absent).
    pub fn counter(&self, field: &str) -> u64 {
        self.status()[field].as_u64().unwrap_or(0)
    }
}

/// Every mount's status JSON and the tail of its daemon log, for failure messages.
pub fn dump(mounts: &[&Synced]) -> String {
    let mut out = String::new();
    // The whole logs, when asked (the temporary state directories go away with the test).
    let keep = std::env::var_os("DELTADRIVE_TEST_LOGS").map(std::path::PathBuf::from);
    for m in mounts {
        let status = m.status();
        let log = m.log();
        if let Some(dir) = &keep {
            let _ = std::fs::create_dir_all(dir);
            let _ = std::fs::write(dir.join(format!("{}.log", m.device)), &log);
        }
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(60)..].join("\n");
        out.push_str(&format!(
            "\n===== {} status:\n{}\n===== {} daemon log (last 60 lines):\n{tail}\n",
            m.device,
            serde_json::to_string_pretty(&status).unwrap_or_default(),
            m.device
        ));
    }
    out
}

/// Polls `cond` every 50 ms until it holds; after `timeout`, panics naming `what`, with
/// every mount's status and log.
pub fn wait_for(mounts: &[&Synced], timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > deadline {
            panic!("not within {timeout:?}: {what}{}", dump(mounts));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Status fields that are 0 when nothing waits to be recorded, sent or fetched. `idle`
/// implies them (the contract), but they are read from the drive's database while `idle`
/// comes from the engine's last published status, which lags behind a change that just came
/// in (or, after a crash, is the dead daemon's): waiting on both is waiting for real quiet.
const NOTHING_PENDING: [&str; 5] = [
    "unrecorded_files",
    "pending_versions",
    "pending_upload_bytes",
    "pending_transactions",
    "bytes_to_download",
];

/// Waits until the engines went quiet: twice in a row (polled every 200 ms), every mount is
/// idle with nothing pending, its cursor at the server's head and all cursors equal.
/// Returns the statuses.
pub fn wait_quiet(mounts: &[&Synced], timeout: Duration) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    let mut streak = 0;
    loop {
        let statuses: Vec<serde_json::Value> = mounts.iter().map(|m| m.status()).collect();
        let quiet = statuses.iter().all(|s| {
            s["idle"] == true
                && s["cursor"].is_u64()
                && s["cursor"] == s["server_head"]
                && NOTHING_PENDING.iter().all(|f| s[f] == 0)
        }) && statuses
            .iter()
            .all(|s| s["cursor"] == statuses[0]["cursor"]);
        streak = if quiet { streak + 1 } else { 0 };
        if streak >= 2 {
            return statuses;
        }
        if Instant::now() > deadline {
            panic!(
                "the engines did not go quiet within {timeout:?}{}",
                dump(mounts)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// BLAKE3 of a file's content, in hex.
pub fn hash_file(path: &Path) -> String {
    let mut file =
        std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hasher.finalize().to_hex().to_string()
}

/// BLAKE3 of some bytes, in hex.
pub fn hash_bytes(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// The whole tree under `root`: relative path -> one line with the kind, mode & 0o7777, size,
/// file mtime (ns), symlink target, sorted user.* xattrs and the BLAKE3 of file content
/// (FIFOs, sockets and device nodes: kind, mode and rdev).
/// Directory mtimes are left out: they are not synced.
pub fn listing(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
            .path();
        let rel = path
            .strip_prefix(root)
            .expect("under root")
            .to_string_lossy()
            .into_owned();
        let meta = std::fs::symlink_metadata(&path)
            .unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
        let mode = meta.permissions().mode() & 0o7777;
        let xattrs = user_xattrs(&path);
        let kind = meta.file_type();
        let special = if kind.is_fifo() {
            Some("fifo")
        } else if kind.is_socket() {
            Some("socket")
        } else if kind.is_char_device() {
            Some("chardev")
        } else if kind.is_block_device() {
            Some("blockdev")
        } else {
            None
        };
        let line = if let Some(special) = special {
            // Never opened: a FIFO would block.
            format!("{special} mode={mode:o} rdev={}", meta.rdev())
        } else if kind.is_symlink() {
            let target = std::fs::read_link(&path).expect("readlink");
            format!("symlink -> {}", target.display())
        } else if meta.is_dir() {
            format!("dir mode={mode:o} xattrs={xattrs}")
        } else {
            format!(
                "file mode={mode:o} size={} mtime={}.{:09} xattrs={xattrs} blake3={}",
                meta.len(),
                meta.mtime(),
                meta.mtime_nsec(),
                &hash_file(&path)[..16]
            )
        };
        out.insert(rel, line);
        if meta.is_dir() {
            walk(root, &path, out);
        }
    }
}

/// `[name=hexvalue, ...]` of the user.* xattrs, sorted by name.
fn user_xattrs(path: &Path) -> String {
    let names: BTreeSet<String> = listxattr(path)
        .into_iter()
        .filter(|n| n.starts_with("user."))
        .collect();
    let pairs: Vec<String> = names
        .iter()
        .map(|n| {
            let value = getxattr(path, n, 65536).unwrap_or_else(|e| {
                panic!("getxattr {} {n}: errno {e}", path.display());
            });
            format!("{n}={}", hex(&value))
        })
        .collect();
    format!("[{}]", pairs.join(","))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Asserts that every mount shows the same tree as the first, with a readable diff.
/// Returns the common listing.
pub fn assert_same_trees(mounts: &[&Synced], context: &str) -> BTreeMap<String, String> {
    let listings: Vec<BTreeMap<String, String>> =
        mounts.iter().map(|m| listing(&m.mountpoint)).collect();
    let mut diff = String::new();
    let mut differences = 0;
    for (i, other) in listings.iter().enumerate().skip(1) {
        let first = &listings[0];
        let paths: BTreeSet<&String> = first.keys().chain(other.keys()).collect();
        for path in paths {
            let (a, b) = (first.get(path), other.get(path));
            if a == b {
                continue;
            }
            differences += 1;
            if differences <= 40 {
                let show = |x: Option<&String>| x.map_or("(absent)".to_string(), String::clone);
                diff.push_str(&format!(
                    "  {path}\n    {:>8}: {}\n    {:>8}: {}\n",
                    mounts[0].device,
                    show(a),
                    mounts[i].device,
                    show(b)
                ));
            }
        }
    }
    if differences > 0 {
        let full: String = listings[0]
            .iter()
            .map(|(p, l)| format!("  {p}: {l}\n"))
            .collect();
        panic!(
            "{context}: the trees differ in {differences} places:\n{diff}\n{} has:\n{full}{}",
            mounts[0].device,
            dump(mounts)
        );
    }
    listings.into_iter().next().unwrap_or_default()
}

/// A parsed conflicted-copy name `NAME (conflicted copy DEVICE YYYY-MM-DD HHMMSS[ N]).EXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictedName {
    /// The name the copy derives from (`NAME.EXT`).
    pub original: String,
    /// The device whose version the copy keeps.
    pub device: String,
    /// The stamp, in seconds since the epoch (UTC).
    pub secs: i64,
}

/// Parses a conflicted-copy file name; None if `name` is not one.
pub fn parse_conflicted(name: &str) -> Option<ConflictedName> {
    let (stem, rest) = name.split_once(" (conflicted copy ")?;
    let (inner, ext) = rest.rsplit_once(')')?;
    if !(ext.is_empty() || (ext.starts_with('.') && ext.len() > 1)) {
        return None;
    }
    let parts: Vec<&str> = inner.split(' ').collect();
    if !(parts.len() == 3 || (parts.len() == 4 && parts[3].parse::<u32>().is_ok_and(|n| n > 1))) {
        return None;
    }
    let (device, date, time) = (parts[0], parts[1], parts[2]);
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    if d.len() != 3 || date.len() != 10 || time.len() != 6 {
        return None;
    }
    let t: i64 = time.parse().ok()?;
    let (h, mi, s) = (t / 10000, t / 100 % 100, t % 100);
    if h > 23 || mi > 59 || s > 60 || !(1..=12).contains(&d[1]) || !(1..=31).contains(&d[2]) {
        return None;
    }
    let secs = days_from_civil(d[0], d[1], d[2]) * 86400 + h * 3600 + mi * 60 + s;
    Some(ConflictedName {
        original: format!("{stem}{ext}"),
        device: device.to_string(),
        secs,
    })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// Seconds since the epoch, now.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// The conflicted copies of `name` in directory `dir` (relative to `root`) of a listing.
pub fn copies_of(
    listing: &BTreeMap<String, String>,
    dir: &str,
    name: &str,
) -> Vec<(String, ConflictedName)> {
    listing
        .keys()
        .filter_map(|path| {
            let (parent, base) = match path.rsplit_once('/') {
                Some((p, b)) => (p, b),
                None => ("", path.as_str()),
            };
            let parsed = parse_conflicted(base)?;
            (parent == dir && parsed.original == name).then(|| (path.clone(), parsed))
        })
        .collect()
}

/// A small seeded generator (splitmix64): the same seed gives the same choices.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}
