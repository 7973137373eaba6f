//! `deltadrive status --watch`: live progress of every drive asked about, until interrupted:
//! bytes to upload and download with progress bars, rates and time left, and the files in
//! flight, drawn in place on a terminal (indicatif) and as plain lines otherwise (a line per
//! drive when what it says changes).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::status::DriveStatus;

/// How often the drives are asked.
const TICK: Duration = Duration::from_millis(500);
/// Weight of the newest sample in the rates (a moving average over a few seconds).
const RATE_WEIGHT: f64 = 0.3;

/// One direction's progress since watching began.
#[derive(Default)]
struct Flow {
    /// Wire bytes moved when watching began.
    start: u64,
    /// Wire bytes moved at the last sample.
    last: u64,
    /// Bytes per second, smoothed.
    rate: f64,
}

impl Flow {
    fn new(now: u64) -> Self {
        Flow {
            start: now,
            last: now,
            rate: 0.0,
        }
    }

    /// Takes a sample `dt` after the last one; returns the bytes moved since watching began.
    fn sample(&mut self, now: u64, dt: f64) -> u64 {
        let moved = now.saturating_sub(self.last) as f64;
        if dt > 0.0 {
            self.rate = RATE_WEIGHT * (moved / dt) + (1.0 - RATE_WEIGHT) * self.rate;
        }
        self.last = now;
        now.saturating_sub(self.start)
    }

    /// Time left for `pending` bytes at the current rate.
    fn left(&self, pending: u64) -> Option<Duration> {
        (pending > 0 && self.rate >= 1.0)
            .then(|| Duration::from_secs_f64(pending as f64 / self.rate))
    }
}

/// What is shown of one drive.
struct Watched {
    up: Flow,
    down: Flow,
    bars: Option<(ProgressBar, ProgressBar, ProgressBar)>,
    last_line: String,
}

/// A byte count as people read it.
pub(super) fn human_bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n;
    let mut unit = 0;
    // Up a unit while the figure as printed (whole bytes, else one decimal) reaches 1000.
    loop {
        let shown = if unit == 0 {
            v.round()
        } else {
            (v * 10.0).round() / 10.0
        };
        if shown < 1000.0 || unit + 1 == UNITS.len() {
            break;
        }
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn human_left(left: Option<Duration>) -> String {
    match left {
        Some(d) if d.as_secs() >= 3600 => {
            format!("{}h{:02}m left", d.as_secs() / 3600, d.as_secs() / 60 % 60)
        }
        Some(d) => format!("{}m{:02}s left", d.as_secs() / 60, d.as_secs() % 60),
        None => String::new(),
    }
}

/// One direction as words: "3 file(s), 12.3 MB of 40.0 MB, 1.2 MB/s, 0m23s left".
fn words(files: u64, done: u64, pending: u64, flow: &Flow) -> String {
    let mut out = format!(
        "{files} file(s), {} of {}",
        human_bytes(done as f64),
        human_bytes((done + pending) as f64)
    );
    if flow.rate >= 1.0 {
        out.push_str(&format!(", {}/s", human_bytes(flow.rate)));
    }
    let left = human_left(flow.left(pending));
    if !left.is_empty() {
        out.push_str(", ");
        out.push_str(&left);
    }
    out
}

/// Shows the drives `ask` returns every [`TICK`], until the process is interrupted.
pub(super) fn run(mut ask: impl FnMut() -> anyhow::Result<Vec<DriveStatus>>) -> anyhow::Result<()> {
    let terminal = std::io::stdout().is_terminal();
    let multi = MultiProgress::new();
    let style =
        ProgressStyle::with_template("{prefix:>10} [{bar:30}] {msg}")?.progress_chars("=> ");
    let mut watched: HashMap<PathBuf, Watched> = HashMap::new();
    let mut last = Instant::now();
    loop {
        let dt = last.elapsed().as_secs_f64();
        last = Instant::now();
        for s in ask()? {
            let w = watched
                .entry(s.mountpoint.clone())
                .or_insert_with(|| Watched {
                    up: Flow::new(s.sync.bytes_uploaded),
                    down: Flow::new(s.sync.bytes_downloaded),
                    bars: None,
                    last_line: String::new(),
                });
            let up_done = w.up.sample(s.sync.bytes_uploaded, dt);
            let down_done = w.down.sample(s.sync.bytes_downloaded, dt);
            let (up_pending, down_pending) = (s.pending_upload_bytes, s.sync.bytes_to_download);
            // Versions the engine has not taken yet are files to upload too.
            let up_files = s.sync.files_to_upload + s.pending_versions + s.unrecorded_files;
            let down_files = s.sync.files_to_download;
            let state = if !s.mounted {
                "not mounted".to_owned()
            } else if s.server.is_none() {
                "local only".to_owned()
            } else if !s.sync.online {
                format!(
                    "offline{}",
                    s.sync
                        .last_error
                        .as_ref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                )
            } else if s.sync.idle {
                "in sync".to_owned()
            } else {
                format!(
                    "syncing, {} transaction(s) pending",
                    s.sync.pending_transactions
                )
            };
            let flight = if s.sync.in_flight.is_empty() {
                String::new()
            } else {
                format!("; in flight: {}", s.sync.in_flight.join(", "))
            };
            if terminal {
                let (head, up, down) = w.bars.get_or_insert_with(|| {
                    let head = multi.add(ProgressBar::new_spinner());
                    let up = multi.add(ProgressBar::new(0).with_style(style.clone()));
                    let down = multi.add(ProgressBar::new(0).with_style(style.clone()));
                    up.set_prefix("upload");
                    down.set_prefix("download");
                    (head, up, down)
                });
                head.set_message(format!("{}: {state}{flight}", s.mountpoint.display()));
                head.tick();
                for (bar, files, done, pending, flow) in [
                    (&*up, up_files, up_done, up_pending, &w.up),
                    (&*down, down_files, down_done, down_pending, &w.down),
                ] {
                    bar.set_length((done + pending).max(1));
                    bar.set_position(if done + pending == 0 { 1 } else { done });
                    bar.set_message(words(files, done, pending, flow));
                }
            } else {
                let line = format!(
                    "{}: {state}; up {}; down {}{flight}",
                    s.mountpoint.display(),
                    words(up_files, up_done, up_pending, &w.up),
                    words(down_files, down_done, down_pending, &w.down)
                );
                // Rates move every sample: a line when anything else changes.
                let key = format!(
                    "{state}|{up_files}|{up_done}|{up_pending}|{down_files}|{down_done}|\
                     {down_pending}|{flight}"
                );
                if key != w.last_line {
                    println!("{line}");
                    w.last_line = key;
                }
            }
        }
        std::thread::sleep(TICK);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_time_left_follow_the_samples() {
        let mut flow = Flow::new(1000);
        assert_eq!(flow.sample(1000, 0.5), 0);
        assert_eq!(flow.left(10), None, "no rate yet");
        for i in 1..=40 {
            flow.sample(1000 + i * 500_000, 0.5);
        }
        assert!((flow.rate - 1_000_000.0).abs() < 1000.0, "{}", flow.rate);
        let left = flow.left(30_000_000).expect("a time left");
        assert!((left.as_secs_f64() - 30.0).abs() < 0.1, "{left:?}");
        assert_eq!(human_bytes(999.0), "999 B");
        assert_eq!(human_bytes(999_999.0), "1.0 MB");
        assert_eq!(human_bytes(1_234_567.0), "1.2 MB");
        assert_eq!(human_left(Some(Duration::from_secs(83))), "1m23s left");
        assert_eq!(
            words(2, 5_000_000, 5_000_000, &flow),
            "2 file(s), 5.0 MB of 10.0 MB, 1.0 MB/s, 0m05s left"
        );
    }
}
