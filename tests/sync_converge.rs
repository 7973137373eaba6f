//! Three mounts of one volume (laptop, phone, tablet) converge under a seeded random mix of
//! operations made on all three at once, and nothing written and closed is lost.
//!
//! Replay a failure with `DELTADRIVE_SEED=N cargo test --test sync_converge` (the seed fixes
//! the choices of every thread; the timing of the engines is not fixed).

mod common;
mod support;

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::sync::{
    Rng, Synced, assert_same_trees, copies_of, dump, hash_bytes, synced_mount, wait_quiet,
};

/// The seed used unless DELTADRIVE_SEED says otherwise.
const DEFAULT_SEED: u64 = 0x5EED_0005;
/// Operations each mount makes.
const OPS_PER_MOUNT: usize = 80;
/// The directory the random operations never touch: the markers' place.
const KEEP: &str = "keep";

fn seed() -> u64 {
    match std::env::var("DELTADRIVE_SEED") {
        Ok(s) => {
            let s = s.trim();
            match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            }
            .unwrap_or_else(|e| panic!("DELTADRIVE_SEED={s:?}: {e}"))
        }
        Err(_) => DEFAULT_SEED,
    }
}

/// Prints the seed when the test fails, whichever assertion failed, with the
/// DELTADRIVE_SEED that replays it (each test offsets the base seed by its own amount).
struct SeedOnFailure {
    seed: u64,
    replay: u64,
}

impl Drop for SeedOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "sync_converge failed with seed {} (replay: DELTADRIVE_SEED={})",
                self.seed, self.replay
            );
        }
    }
}

/// What one mount's thread did.
#[derive(Default)]
struct Outcome {
    device: String,
    /// Every operation and its result.
    log: Vec<String>,
    /// Failures that no race with a remote change explains.
    unexpected: Vec<String>,
    /// keep/own-* files: only this mount writes them; (path, final bytes).
    own: Vec<(String, Vec<u8>)>,
    /// keep/shared-K.txt files this mount created exclusively (no one else's was there).
    shared: Vec<(String, Vec<u8>)>,
}

/// Errors a race with a remote change (or an impossible random choice) explains.
fn expected_errno(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ENOENT
                | libc::EEXIST
                | libc::ENOTEMPTY
                | libc::EINVAL
                | libc::ENOTDIR
                | libc::EISDIR
                | libc::ENODATA
                | libc::ELOOP
        )
    )
}

/// The mount's tree as the random operations see it (keep/ left out).
#[derive(Default)]
struct View {
    /// Directories, "" for the root.
    dirs: Vec<String>,
    files: Vec<String>,
    links: Vec<String>,
}

fn view(root: &Path) -> View {
    let mut v = View {
        dirs: vec![String::new()],
        ..View::default()
    };
    let mut i = 0;
    while i < v.dirs.len() {
        let dir = v.dirs[i].clone();
        i += 1;
        // Entries may vanish under us: remote changes land while we look.
        let Ok(entries) = fs::read_dir(root.join(&dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if dir.is_empty() {
                name.clone()
            } else {
                format!("{dir}/{name}")
            };
            if rel == KEEP {
                continue;
            }
            match entry.file_type() {
                Ok(t) if t.is_dir() => v.dirs.push(rel),
                Ok(t) if t.is_symlink() => v.links.push(rel),
                Ok(_) => v.files.push(rel),
                Err(_) => {}
            }
        }
    }
    v
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn new_name(rng: &mut Rng) -> String {
    const NAMES: [&str; 9] = [
        "a", "b", "c.txt", "notes.md", "data.bin", "img.png", "x", "y", "z.log",
    ];
    let base = *rng.pick(&NAMES);
    if rng.below(2) == 0 {
        base.to_string()
    } else {
        match base.rsplit_once('.') {
            Some((stem, ext)) => format!("{stem}-{}.{ext}", rng.below(20)),
            None => format!("{base}-{}", rng.below(20)),
        }
    }
}

fn content(rng: &mut Rng) -> Vec<u8> {
    let len = match rng.below(4) {
        0 => 0,
        1 => rng.below(64),
        2 => rng.below(4096),
        _ => rng.below(40_000),
    };
    rng.bytes(len)
}

fn depth(rel: &str) -> usize {
    if rel.is_empty() {
        0
    } else {
        rel.matches('/').count() + 1
    }
}

/// One random operation on the mount at `root`; Ok(description) or the failure.
fn random_op(root: &Path, rng: &mut Rng, held: &mut Option<Held>) -> (String, std::io::Result<()>) {
    let v = view(root);
    let p = |rel: &str| root.join(rel);
    let nonroot: Vec<String> = v.dirs[1..].to_vec();
    let attr_targets: Vec<String> = v.files.iter().chain(nonroot.iter()).cloned().collect();
    const WEIGHTS: [usize; 18] = [14, 8, 6, 4, 5, 4, 5, 6, 5, 8, 5, 1, 5, 5, 3, 4, 4, 4];
    let mut roll = rng.below(WEIGHTS.iter().sum());
    let mut op = 0;
    while roll >= WEIGHTS[op] {
        roll -= WEIGHTS[op];
        op += 1;
    }
    // Without anything to act on, create a file.
    let needs_file = matches!(op, 1..=3 | 5..=7 | 15..=17);
    if (needs_file && v.files.is_empty())
        || (matches!(op, 8 | 11) && nonroot.is_empty())
        || (op == 10 && v.files.is_empty() && v.links.is_empty())
        || (matches!(op, 4 | 13 | 14) && attr_targets.is_empty())
    {
        op = 0;
    }
    match op {
        0 => {
            let path = join(&rng.pick(&v.dirs).clone(), &new_name(rng));
            let bytes = content(rng);
            (
                format!("create {path} ({} bytes)", bytes.len()),
                fs::write(p(&path), bytes),
            )
        }
        1 => {
            let path = rng.pick(&v.files).clone();
            let bytes = content(rng);
            (
                format!("overwrite {path} ({} bytes)", bytes.len()),
                fs::write(p(&path), bytes),
            )
        }
        2 => {
            let path = rng.pick(&v.files).clone();
            let bytes = content(rng);
            let r = fs::OpenOptions::new()
                .append(true)
                .open(p(&path))
                .and_then(|mut f| f.write_all(&bytes));
            (format!("append {} bytes to {path}", bytes.len()), r)
        }
        3 => {
            let path = rng.pick(&v.files).clone();
            let len = rng.below(20_000) as u64;
            let r = fs::OpenOptions::new()
                .write(true)
                .open(p(&path))
                .and_then(|f| f.set_len(len));
            (format!("truncate {path} to {len}"), r)
        }
        4 => {
            let path = rng.pick(&attr_targets).clone();
            let mode = if v.files.contains(&path) {
                *rng.pick(&[0o600, 0o644, 0o640, 0o755, 0o700, 0o444])
            } else {
                *rng.pick(&[0o755, 0o700, 0o750, 0o775])
            };
            (
                format!("chmod {mode:o} {path}"),
                fs::set_permissions(p(&path), fs::Permissions::from_mode(mode)),
            )
        }
        5 => {
            let path = rng.pick(&v.files).clone();
            let sec = 1_000_000_000 + rng.below(700_000_000) as i64;
            let nsec = rng.below(1_000_000_000) as i64;
            let times = [
                libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::UTIME_OMIT,
                },
                libc::timespec {
                    tv_sec: sec,
                    tv_nsec: nsec,
                },
            ];
            let r = common::utimensat(&p(&path), times).map_err(std::io::Error::from_raw_os_error);
            (format!("set mtime {sec}.{nsec:09} on {path}"), r)
        }
        6 => {
            let path = rng.pick(&v.files).clone();
            let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
            let to = join(dir, &new_name(rng));
            (
                format!("rename {path} -> {to}"),
                fs::rename(p(&path), p(&to)),
            )
        }
        7 => {
            let path = rng.pick(&v.files).clone();
            let name = if rng.below(2) == 0 {
                path.rsplit('/').next().unwrap_or(&path).to_string()
            } else {
                new_name(rng)
            };
            let to = join(&rng.pick(&v.dirs).clone(), &name);
            (format!("move {path} -> {to}"), fs::rename(p(&path), p(&to)))
        }
        8 => {
            let path = rng.pick(&nonroot).clone();
            let name = if rng.below(2) == 0 {
                path.rsplit('/').next().unwrap_or(&path).to_string()
            } else {
                new_name(rng)
            };
            let to = join(&rng.pick(&v.dirs).clone(), &name);
            (
                format!("move dir {path} -> {to}"),
                fs::rename(p(&path), p(&to)),
            )
        }
        9 => {
            let mut path = rng.pick(&v.dirs).clone();
            if depth(&path) >= 4 {
                path = String::new();
            }
            for _ in 0..=rng.below(3) {
                path = join(&path, &new_name(rng));
            }
            (format!("mkdir -p {path}"), fs::create_dir_all(p(&path)))
        }
        10 => {
            let all: Vec<String> = v.files.iter().chain(v.links.iter()).cloned().collect();
            let path = rng.pick(&all).clone();
            (format!("rm {path}"), fs::remove_file(p(&path)))
        }
        11 => {
            let path = rng.pick(&nonroot).clone();
            (format!("rm -r {path}"), fs::remove_dir_all(p(&path)))
        }
        12 => {
            let path = join(&rng.pick(&v.dirs).clone(), &new_name(rng));
            let target = *rng.pick(&["a", "notes.md", "x/data.bin", "nowhere", "y"]);
            (
                format!("symlink {path} -> {target}"),
                std::os::unix::fs::symlink(target, p(&path)),
            )
        }
        13 => {
            let path = rng.pick(&attr_targets).clone();
            let name = format!("user.k{}", rng.below(3));
            let len = rng.below(40);
            let value = rng.bytes(len);
            let r = common::setxattr(&p(&path), &name, &value, 0)
                .map_err(std::io::Error::from_raw_os_error);
            (format!("setxattr {name} ({len} bytes) on {path}"), r)
        }
        14 => {
            let path = rng.pick(&attr_targets).clone();
            let name = format!("user.k{}", rng.below(3));
            let r =
                common::removexattr(&p(&path), &name).map_err(std::io::Error::from_raw_os_error);
            (format!("removexattr {name} on {path}"), r)
        }
        15 => {
            // An editor's save: a new file beside the old one, renamed over it.
            let path = rng.pick(&v.files).clone();
            let (dir, name) = path.rsplit_once('/').unwrap_or(("", &path));
            let tmp = join(dir, &format!(".{name}.tmp"));
            let bytes = content(rng);
            let r = fs::write(p(&tmp), &bytes).and_then(|()| fs::rename(p(&tmp), p(&path)));
            (
                format!("save {path} through {tmp} ({} bytes)", bytes.len()),
                r,
            )
        }
        17 => {
            // A hard link: each name then syncs as a file of its own.
            let path = rng.pick(&v.files).clone();
            let to = join(&rng.pick(&v.dirs).clone(), &new_name(rng));
            (
                format!("link {path} -> {to}"),
                fs::hard_link(p(&path), p(&to)),
            )
        }
        _ => {
            // Write through a handle that stays open for the next few operations.
            if held.is_some() {
                return ("(a file is already held open)".to_string(), Ok(()));
            }
            let path = rng.pick(&v.files).clone();
            let bytes = content(rng);
            let offset = rng.below(5000) as u64;
            let r = fs::OpenOptions::new()
                .write(true)
                .open(p(&path))
                .and_then(|mut f| {
                    f.seek(SeekFrom::Start(offset))?;
                    f.write_all(&bytes)?;
                    *held = Some(Held {
                        path: path.clone(),
                        file: f,
                        ops_left: 1 + rng.below(6),
                    });
                    Ok(())
                });
            (
                format!(
                    "open {path}, write {} bytes at {offset}, keep it open",
                    bytes.len()
                ),
                r,
            )
        }
    }
}

/// A file a thread keeps open for writing across operations.
struct Held {
    path: String,
    file: fs::File,
    ops_left: usize,
}

/// One mount's thread: random operations, with marker files written at fixed steps.
fn run(root: &Path, device: &str, seed: u64, progress: &AtomicUsize) -> Outcome {
    let mut rng = Rng::new(seed);
    let mut out = Outcome {
        device: device.to_string(),
        ..Outcome::default()
    };
    let keep = root.join(KEEP);
    let mut held: Option<Held> = None;
    for i in 0..OPS_PER_MOUNT {
        if let Some(h) = &mut held {
            if h.ops_left == 0 || i + 1 == OPS_PER_MOUNT {
                let r = h
                    .file
                    .write_all(b"last words before close")
                    .and_then(|()| h.file.sync_all());
                let path = h.path.clone();
                held = None;
                match r {
                    Ok(()) => out
                        .log
                        .push(format!("{device} #{i}: wrote to and closed {path}")),
                    Err(e) => out
                        .unexpected
                        .push(format!("{device} #{i}: write to held {path}: {e}")),
                }
            } else {
                h.ops_left -= 1;
            }
        }
        let k = i / 10;
        let (what, result) = match i % 10 {
            // A file only this mount writes: it must reach every mount intact.
            3 => {
                let name = format!("{KEEP}/own-{device}-{k}.bin");
                let mut bytes = format!("own {device} {k}\n").into_bytes();
                let len = rng.below(3000);
                bytes.extend(rng.bytes(len));
                let r = fs::write(root.join(&name), &bytes);
                if r.is_ok() {
                    out.own.push((name.clone(), bytes));
                }
                (format!("write {name}"), r)
            }
            // ... then appended to, still only here.
            8 => {
                let name = format!("{KEEP}/own-{device}-{k}.bin");
                let extra = format!("appended by {device}\n").into_bytes();
                let r = fs::OpenOptions::new()
                    .append(true)
                    .open(root.join(&name))
                    .and_then(|mut f| f.write_all(&extra));
                if r.is_ok()
                    && let Some((_, bytes)) = out.own.iter_mut().find(|(n, _)| *n == name)
                {
                    bytes.extend(&extra);
                }
                (format!("append to {name}"), r)
            }
            // A file every mount tries to create at about the same time, exclusively: every
            // version that was created must survive, under the name or in a conflicted copy.
            6 => {
                let name = format!("shared-{k}.txt");
                let mut bytes = format!("shared {k} by {device}\n").into_bytes();
                bytes.extend(rng.bytes(100));
                let r = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(keep.join(&name))
                    .and_then(|mut f| f.write_all(&bytes));
                if r.is_ok() {
                    out.shared.push((name.clone(), bytes));
                }
                (format!("create exclusively {KEEP}/{name}"), r)
            }
            _ => random_op(root, &mut rng, &mut held),
        };
        match result {
            Ok(()) => out.log.push(format!("{device} #{i}: {what}")),
            Err(e) if expected_errno(&e) => out
                .log
                .push(format!("{device} #{i}: {what}: skipped ({e})")),
            Err(e) => {
                out.log.push(format!("{device} #{i}: {what}: FAILED ({e})"));
                out.unexpected.push(format!("{device} #{i}: {what}: {e}"));
            }
        }
        // Let remote changes land between some of the operations.
        std::thread::sleep(Duration::from_millis(rng.below(15) as u64));
        progress.store(i + 1, Ordering::Relaxed);
    }
    out
}

#[test]
fn three_mounts_converge_under_a_random_mix_of_operations() {
    converge(0, false);
}

#[test]
fn three_mounts_converge_when_the_server_goes_away_in_the_middle_of_the_mix() {
    converge(1, true);
}

/// Three mounts, the random mix on all three at once, seeded with the base seed plus
/// `offset` (with the server stopped from about a third to about two thirds of the way
/// through when `outage`), then: identical trees, and nothing written and closed lost.
fn converge(offset: u64, outage: bool) {
    let replay = seed();
    let seed = replay.wrapping_add(offset);
    let _report = SeedOnFailure { seed, replay };
    eprintln!("seed {seed}");
    let mut fx = support::fixture();
    let tablet_token = support::add_device(fx.dir.path(), "alice", "tablet");
    let laptop = synced_mount(&fx.server.base, "laptop", &fx.laptop);
    let phone = synced_mount(&fx.server.base, "phone", &fx.phone);
    let tablet = synced_mount(&fx.server.base, "tablet", &tablet_token);
    let all: [&Synced; 3] = [&laptop, &phone, &tablet];

    // A starting tree, made on the laptop and seen everywhere.
    for dir in ["docs/deep", "photos", "music", KEEP] {
        fs::create_dir_all(laptop.path(dir)).unwrap();
    }
    let mut rng = Rng::new(seed ^ 0xABCD);
    for (i, path) in ["docs/a", "docs/deep/notes.md", "photos/img.png", "c.txt"]
        .iter()
        .enumerate()
    {
        fs::write(laptop.path(path), rng.bytes(100 + 3000 * i)).unwrap();
    }
    wait_quiet(&all, Duration::from_secs(60));
    assert_same_trees(&all, "the starting tree");

    // All three at once.
    let progress: [AtomicUsize; 3] = Default::default();
    let outcomes: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = all
            .iter()
            .zip(&progress)
            .enumerate()
            .map(|(i, (m, progress))| {
                let root = m.mountpoint.clone();
                let device = m.device.clone();
                let thread_seed = seed.wrapping_add(i as u64 + 1).wrapping_mul(0x9E37_79B9);
                s.spawn(move || run(&root, &device, thread_seed, progress))
            })
            .collect();
        if outage {
            let slowest = || progress.iter().map(|p| p.load(Ordering::Relaxed)).min();
            let fastest = || progress.iter().map(|p| p.load(Ordering::Relaxed)).max();
            common::wait_until(Duration::from_secs(60), || {
                fastest() >= Some(OPS_PER_MOUNT / 3)
            });
            fx.server.kill9();
            common::wait_until(Duration::from_secs(60), || {
                slowest() >= Some(OPS_PER_MOUNT * 2 / 3)
            });
            fx.server.restart();
        }
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for o in &outcomes {
        eprintln!("--- operations on {}:\n{}", o.device, o.log.join("\n"));
    }
    let unexpected: Vec<&String> = outcomes.iter().flat_map(|o| &o.unexpected).collect();
    assert!(
        unexpected.is_empty(),
        "seed {seed}: operations failed with errors no race explains: {unexpected:#?}"
    );

    wait_quiet(&all, Duration::from_secs(90));
    let listing = assert_same_trees(&all, &format!("seed {seed}: after the random mix"));

    // Nothing written and closed was lost.
    for o in &outcomes {
        for (path, bytes) in &o.own {
            for m in all {
                let got = fs::read(m.path(path)).ok();
                let name = path.rsplit('/').next().unwrap_or(path);
                let copies: Vec<String> = copies_of(&listing, KEEP, name)
                    .into_iter()
                    .map(|(p, _)| format!("{p}: {}", listing[&p]))
                    .collect();
                assert!(
                    got.as_deref() == Some(bytes.as_slice()),
                    "seed {seed}: {path}, written only by {}, is not intact on {}: {} bytes \
                     expected (blake3={}), found {:?}; its conflicted copies: {copies:#?}{}",
                    o.device,
                    m.device,
                    bytes.len(),
                    &hash_bytes(bytes)[..16],
                    got.as_ref().map(|g| format!(
                        "{} bytes (blake3={})",
                        g.len(),
                        &hash_bytes(g)[..16]
                    )),
                    dump(&all)
                );
            }
        }
        for (name, bytes) in &o.shared {
            let mut places = vec![format!("{KEEP}/{name}")];
            places.extend(
                copies_of(&listing, KEEP, name)
                    .into_iter()
                    .filter(|(_, c)| c.device == o.device)
                    .map(|(path, _)| path),
            );
            for m in all {
                assert!(
                    places
                        .iter()
                        .any(|p| fs::read(m.path(p)).ok().as_deref() == Some(bytes.as_slice())),
                    "seed {seed}: the {name} that {} created is lost on {} (looked in {places:?})",
                    o.device,
                    m.device
                );
            }
        }
    }
    let created: usize = outcomes.iter().map(|o| o.shared.len()).sum();
    assert!(
        created >= OPS_PER_MOUNT / 10,
        "every shared-K.txt was created at least once ({created})"
    );
}
