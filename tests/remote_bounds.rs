//! The client against a hostile server: small zstd answers that decompress to gigabytes.
//! Alone in its test binary, so the process's peak memory is this test's.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use deltadrive::protocol::Seq;
use deltadrive::remote::{Remote, RemoteError};

/// The limit of `Remote` for a JSON answer other than a snapshot (256 MiB decompressed).
const CHANGES_LIMIT: usize = 256 << 20;

/// This process's peak resident memory (VmHWM), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM in /proc/self/status");
    kib << 10
}

/// `prefix`, then `len` bytes of `fill`, as one zstd frame.
fn bomb(prefix: &[u8], fill: u8, len: usize) -> Vec<u8> {
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    encoder.write_all(prefix).unwrap();
    let block = vec![fill; 1 << 20];
    for _ in 0..len / block.len() {
        encoder.write_all(&block).unwrap();
    }
    encoder.finish().unwrap()
}

/// A server on 127.0.0.1 that answers each of `bodies` (zstd, status 200) to one request on
/// its own connection, checking the request's path.
fn hostile_server(bodies: Vec<(&'static str, Vec<u8>)>) -> (String, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let handle = thread::spawn(move || {
        for (path, body) in bodies {
            let (mut conn, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                assert_eq!(conn.read(&mut byte).unwrap(), 1, "request head ended early");
                head.push(byte[0]);
            }
            let head = String::from_utf8(head).unwrap();
            assert!(head.starts_with(&format!("GET {path}")), "{head}");
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: zstd\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            conn.write_all(answer.as_bytes()).unwrap();
            // The client hangs up once it has seen enough.
            let _ = conn.write_all(&body);
        }
    });
    (base, handle)
}

#[test]
fn answers_that_decompress_to_gigabytes_are_refused_typed_in_little_memory() {
    // A snapshot of 3 GiB (past the 2 GiB limit) of zeros after its opening, in a frame of a
    // few hundred KiB; and a changes page of 320 MiB (past its 256 MiB limit) of JSON
    // whitespace, which is valid JSON until the limit. (The parser runs unoptimized in tests,
    // at ~40 MB/s: a 2 GiB answer of whitespace would take a minute to reach its limit.)
    let snapshot = bomb(br#"{"seq": 1, "nodes": ["#, 0, 3 << 30);
    let changes = bomb(
        br#"{"head": 1, "more": false, "changes": ["#,
        b' ',
        320 << 20,
    );
    assert!(snapshot.len() < 1 << 20, "bomb of {} bytes", snapshot.len());
    assert!(changes.len() < 1 << 20, "bomb of {} bytes", changes.len());
    let (base, server) = hostile_server(vec![
        ("/v1/volumes/docs/snapshot ", snapshot),
        ("/v1/volumes/docs/changes?", changes),
    ]);
    let remote = Remote::new(&base, "docs", "ddt_test").unwrap();
    let before = peak_rss();
    let started = Instant::now();
    let e = remote.snapshot().unwrap_err();
    let snapshot_grew = peak_rss().saturating_sub(before);
    let snapshot_took = started.elapsed();
    assert!(
        matches!(&e, RemoteError::Protocol(m) if m.contains("malformed answer to /v1/volumes/docs/snapshot")),
        "{e:?}"
    );
    let started = Instant::now();
    let e = remote.changes(Seq(0), 0, 100).unwrap_err();
    let grew = peak_rss().saturating_sub(before);
    let changes_took = started.elapsed();
    println!(
        "hostile answers: snapshot refused after {snapshot_took:?} (peak memory +{} KiB), \
         changes after {changes_took:?} (+{} KiB in all), {} KiB on the wire",
        snapshot_grew >> 10,
        grew >> 10,
        remote.wire_stats().1 >> 10
    );
    assert!(
        matches!(&e, RemoteError::AnswerTooLarge { limit, path, .. }
            if *limit == CHANGES_LIMIT && path.contains("/changes?")),
        "{e:?}"
    );
    assert!(!e.is_retryable());
    // Decompressed whole, the answers would have taken their limits (2 GiB, 256 MiB).
    assert!(grew < 32 << 20, "peak memory grew by {grew} bytes");
    assert!(snapshot_took < Duration::from_secs(5), "{snapshot_took:?}");
    server.join().unwrap();
}
