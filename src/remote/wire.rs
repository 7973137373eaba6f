//! Bytes on the wire: request bodies as sent (JSON zstd-compressed past a threshold), answer
//! bodies read raw and decompressed here, and the counters of both.

use std::io::{self, BufReader, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// JSON request bodies larger than this are sent zstd-compressed.
pub const COMPRESS_ABOVE: usize = 1024;
/// zstd level for JSON request bodies: fast, and JSON of hex ids compresses well already.
const JSON_ZSTD_LEVEL: i32 = 3;
/// Largest zstd window an answer may use (2^23 = 8 MiB): the server compresses at a default
/// level (a 2 MiB window at most); a frame asking for more is refused rather than given the
/// memory.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;
/// Buffer between the decompressor and the JSON parser.
const PARSE_BUFFER: usize = 64 << 10;
/// Answers shorter than this (decompressed) are read whole and parsed from memory, which is
/// about twice as fast; longer ones are parsed as they stream in.
const WHOLE_BELOW: usize = 8 << 20;

/// Body bytes sent and received, as they crossed the wire (compressed where they were).
#[derive(Debug, Default)]
pub struct WireCounters {
    up: AtomicU64,
    down: AtomicU64,
}

impl WireCounters {
    /// Counts bytes handed to the connection in a request body.
    pub fn sent(&self, n: usize) {
        self.up.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts bytes read from the connection in an answer body.
    pub fn received(&self, n: usize) {
        self.down.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// (bytes up, bytes down) so far.
    pub fn get(&self) -> (u64, u64) {
        (
            self.up.load(Ordering::Relaxed),
            self.down.load(Ordering::Relaxed),
        )
    }
}

/// A request body ready to send.
pub struct Outgoing {
    /// The bytes exactly as they go on the wire.
    pub bytes: Vec<u8>,
    /// Its media type.
    pub content_type: &'static str,
    /// True when `bytes` is a zstd frame (sent with `Content-Encoding: zstd`).
    pub zstd: bool,
}

impl Outgoing {
    /// A JSON body, zstd-compressed when over [`COMPRESS_ABOVE`] bytes and smaller that way.
    /// Returns the body and its size before compression (what the server's limits apply to).
    pub fn json<T: Serialize>(value: &T) -> Result<(Outgoing, usize), serde_json::Error> {
        let json = serde_json::to_vec(value)?;
        let plain_len = json.len();
        if plain_len > COMPRESS_ABOVE
            && let Ok(packed) = zstd::bulk::compress(&json, JSON_ZSTD_LEVEL)
            && packed.len() < plain_len
        {
            return Ok((
                Outgoing {
                    bytes: packed,
                    content_type: "application/json",
                    zstd: true,
                },
                plain_len,
            ));
        }
        Ok((
            Outgoing {
                bytes: json,
                content_type: "application/json",
                zstd: false,
            },
            plain_len,
        ))
    }

    /// A binary body sent as it is (chunk batches: payloads are compressed per chunk already).
    pub fn raw(bytes: Vec<u8>, content_type: &'static str) -> Outgoing {
        Outgoing {
            bytes,
            content_type,
            zstd: false,
        }
    }
}

/// A writer that collects an answer body into a caller's buffer and refuses to grow past a
/// limit.
pub struct LimitedSink<'a> {
    /// What was written so far.
    pub buf: &'a mut Vec<u8>,
    limit: usize,
    /// True once a write would have passed the limit.
    pub overflowed: bool,
    /// Bytes offered to the sink, kept or not: what was read off the connection.
    pub seen: usize,
}

impl<'a> LimitedSink<'a> {
    /// A sink that empties `buf` and accepts at most `limit` bytes into it. `expected` (a
    /// Content-Length, not trusted beyond the limit) is reserved up front, so a large answer
    /// is not copied again each time the buffer doubles.
    pub fn new(buf: &'a mut Vec<u8>, limit: usize, expected: Option<u64>) -> Self {
        buf.clear();
        if let Some(n) = expected {
            buf.reserve(usize::try_from(n).unwrap_or(usize::MAX).min(limit));
        }
        Self {
            buf,
            limit,
            overflowed: false,
            seen: 0,
        }
    }
}

impl Write for LimitedSink<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.seen += data.len();
        if self.buf.len() + data.len() > self.limit {
            self.overflowed = true;
            return Err(std::io::Error::other("answer is over its size limit"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Why an answer body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// A `Content-Encoding` this client never asks for.
    #[error("unexpected Content-Encoding {0:?}")]
    Encoding(String),
    /// The zstd frame is corrupt.
    #[error("corrupt zstd answer: {0}")]
    Zstd(#[source] std::io::Error),
    /// The body decompresses to more than the limit.
    #[error("answer decompresses to more than {0} bytes")]
    TooLarge(usize),
}

/// A zstd decoder of `raw` with the window capped at [`ZSTD_WINDOW_LOG_MAX`].
fn zstd_reader<R: Read>(raw: R) -> io::Result<impl Read> {
    let mut decoder = zstd::stream::read::Decoder::new(raw)?;
    decoder.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
    Ok(decoder)
}

/// Decodes an answer body by its `Content-Encoding`, refusing more than `limit` bytes of output
/// (the frame's claimed size is not trusted).
pub fn decode_body(
    raw: Vec<u8>,
    encoding: Option<&str>,
    limit: usize,
) -> Result<Vec<u8>, DecodeError> {
    match encoding.map(str::trim) {
        None | Some("") | Some("identity") => Ok(raw),
        Some(e) if e.eq_ignore_ascii_case("zstd") => {
            let decoder = zstd_reader(&raw[..]).map_err(DecodeError::Zstd)?;
            let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(limit));
            decoder
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(DecodeError::Zstd)?;
            if out.len() > limit {
                return Err(DecodeError::TooLarge(limit));
            }
            Ok(out)
        }
        Some(other) => Err(DecodeError::Encoding(other.to_owned())),
    }
}

/// A reader that passes at most `limit` bytes on, then fails rather than ends if more would
/// come: an answer cut at its limit is never taken for a whole one.
pub struct Capped<R> {
    inner: R,
    limit: usize,
    passed: usize,
    /// Bytes read from `inner`, passed on or not.
    pub seen: usize,
    /// True once more than `limit` bytes came.
    pub over: bool,
}

impl<R> Capped<R> {
    /// `inner`, cut off past `limit` bytes.
    pub fn new(inner: R, limit: usize) -> Self {
        Capped {
            inner,
            limit,
            passed: 0,
            seen: 0,
            over: false,
        }
    }
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let left = self.limit - self.passed;
        if left == 0 {
            // At the limit: only a clean end is fine.
            let mut probe = [0u8; 1];
            let n = self.inner.read(&mut probe)?;
            self.seen += n;
            if n == 0 {
                return Ok(0);
            }
            self.over = true;
            return Err(io::Error::other(format!(
                "answer is over its limit of {} bytes",
                self.limit
            )));
        }
        let room = buf.len().min(left);
        let n = self.inner.read(&mut buf[..room])?;
        self.passed += n;
        self.seen += n;
        Ok(n)
    }
}

/// Why a JSON answer could not be read as it came in.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// More than the limit came, raw or decompressed.
    #[error("answer is over its limit of {0} bytes")]
    TooLarge(usize),
    /// A `Content-Encoding` this client never asks for.
    #[error("unexpected Content-Encoding {0:?}")]
    Encoding(String),
    /// The text is not the JSON expected.
    #[error("malformed answer: {0}")]
    Json(#[source] serde_json::Error),
    /// Reading (the connection) or decompressing failed.
    #[error("{0}")]
    Io(#[source] io::Error),
}

impl From<serde_json::Error> for StreamError {
    fn from(e: serde_json::Error) -> Self {
        if e.is_io() {
            // The reader's own error, given back as it was.
            StreamError::Io(io::Error::from(e))
        } else {
            StreamError::Json(e)
        }
    }
}

/// Parses JSON text: from memory if it ends within [`WHOLE_BELOW`] bytes, else as it comes.
fn parse_text<T: DeserializeOwned>(mut text: impl Read) -> Result<T, StreamError> {
    let mut head = Vec::new();
    (&mut text)
        .take(WHOLE_BELOW as u64)
        .read_to_end(&mut head)
        .map_err(StreamError::Io)?;
    if head.len() < WHOLE_BELOW {
        return serde_json::from_slice(&head).map_err(StreamError::from);
    }
    let rest = io::Cursor::new(head).chain(text);
    serde_json::from_reader(BufReader::with_capacity(PARSE_BUFFER, rest)).map_err(StreamError::from)
}

/// Parses a JSON answer from `raw` as it arrives, decompressing on the fly for zstd. The text
/// is never held whole: memory is the parsed value plus fixed buffers (the first
/// [`WHOLE_BELOW`] bytes, the parser's [`PARSE_BUFFER`] and a zstd window of at most
/// 2^[`ZSTD_WINDOW_LOG_MAX`] bytes), and it
/// stops with [`StreamError::TooLarge`] once more than `limit` bytes came (raw or
/// decompressed). Returns also the raw bytes read (for the wire counters).
pub fn parse_streamed<T: DeserializeOwned>(
    raw: impl Read,
    encoding: Option<&str>,
    limit: usize,
) -> (Result<T, StreamError>, usize) {
    let mut raw = Capped::new(raw, limit);
    let parsed = match encoding.map(str::trim) {
        None | Some("") | Some("identity") => parse_text(&mut raw),
        Some(e) if e.eq_ignore_ascii_case("zstd") => match zstd_reader(&mut raw) {
            Ok(decoder) => {
                let mut text = Capped::new(decoder, limit);
                let parsed = parse_text(&mut text);
                match parsed {
                    Err(_) if text.over => Err(StreamError::TooLarge(limit)),
                    other => other,
                }
            }
            Err(e) => Err(StreamError::Io(e)),
        },
        Some(other) => Err(StreamError::Encoding(other.to_owned())),
    };
    let parsed = match parsed {
        Err(_) if raw.over => Err(StreamError::TooLarge(limit)),
        other => other,
    };
    (parsed, raw.seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_json_goes_plain_and_large_json_goes_zstd() {
        let (small, len) = Outgoing::json(&serde_json::json!({"cursor": 5})).unwrap();
        assert!(!small.zstd);
        assert_eq!(small.bytes.len(), len);
        let ids: Vec<String> = (0..200).map(|i| format!("{i:064x}")).collect();
        let (large, len) = Outgoing::json(&serde_json::json!({ "ids": ids })).unwrap();
        assert!(large.zstd);
        assert!(
            large.bytes.len() < len / 4,
            "{} of {len}",
            large.bytes.len()
        );
        let back = decode_body(large.bytes, Some("zstd"), len).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&back).unwrap();
        assert_eq!(value["ids"][199], format!("{:064x}", 199));
    }

    #[test]
    fn decoding_refuses_bombs_corruption_and_unknown_encodings() {
        let bomb = zstd::bulk::compress(&vec![0u8; 1 << 20], 3).unwrap();
        assert!(matches!(
            decode_body(bomb.clone(), Some("zstd"), 1000),
            Err(DecodeError::TooLarge(1000))
        ));
        assert_eq!(
            decode_body(bomb, Some("ZSTD"), 1 << 20).unwrap().len(),
            1 << 20
        );
        assert!(matches!(
            decode_body(vec![1, 2, 3, 4, 5], Some("zstd"), 100),
            Err(DecodeError::Zstd(_))
        ));
        assert!(matches!(
            decode_body(vec![1], Some("gzip"), 100),
            Err(DecodeError::Encoding(_))
        ));
        assert_eq!(decode_body(vec![1, 2], None, 1).unwrap(), vec![1, 2]);
    }

    /// A reader of `len` bytes of `fill` that records the largest read asked of it.
    struct Source {
        left: usize,
        fill: u8,
    }

    impl Read for Source {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.left);
            buf[..n].fill(self.fill);
            self.left -= n;
            Ok(n)
        }
    }

    #[test]
    fn a_capped_reader_passes_its_limit_and_fails_past_it() {
        let mut whole = Capped::new(Source { left: 10, fill: 1 }, 10);
        let mut out = Vec::new();
        whole.read_to_end(&mut out).unwrap();
        assert_eq!((out.len(), whole.over), (10, false));
        let mut over = Capped::new(Source { left: 11, fill: 1 }, 10);
        let mut out = Vec::new();
        assert!(over.read_to_end(&mut out).is_err());
        assert_eq!((out.len(), over.over, over.seen), (10, true, 11));
    }

    #[test]
    fn streamed_answers_parse_and_bombs_stop_at_the_limit() {
        #[derive(Debug, serde::Deserialize)]
        struct Answer {
            seq: u64,
        }
        let text = br#"{"seq": 7, "other": [1, 2, {"x": null}]}"#;
        let (plain, seen) = parse_streamed::<Answer>(&text[..], None, text.len());
        assert_eq!((plain.unwrap().seq, seen), (7, text.len()));
        let packed = zstd::bulk::compress(text, 3).unwrap();
        let (zipped, seen) = parse_streamed::<Answer>(&packed[..], Some("zstd"), 100);
        assert_eq!((zipped.unwrap().seq, seen), (7, packed.len()));
        // Past WHOLE_BELOW, the rest streams in after the part read whole.
        let long = format!(r#"{{"pad": "{}", "seq": 8}}"#, "a".repeat(WHOLE_BELOW));
        let (streamed, _) = parse_streamed::<Answer>(long.as_bytes(), None, long.len());
        assert_eq!(streamed.unwrap().seq, 8);
        let packed_long = zstd::bulk::compress(long.as_bytes(), 3).unwrap();
        let (streamed, _) = parse_streamed::<Answer>(&packed_long[..], Some("zstd"), long.len());
        assert_eq!(streamed.unwrap().seq, 8);
        // One byte short of the text: refused as too large, not as truncated JSON.
        let (short, _) = parse_streamed::<Answer>(&text[..], None, text.len() - 1);
        assert!(matches!(short, Err(StreamError::TooLarge(_))));
        // 64 MiB of JSON whitespace in a small frame, with a 1 MiB limit: refused after
        // reading just past the limit, which a whole-text decode would have held 64 times.
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
        encoder.write_all(br#"{"seq": 1, "pad": "#).unwrap();
        let spaces = vec![b' '; 1 << 20];
        for _ in 0..64 {
            encoder.write_all(&spaces).unwrap();
        }
        encoder.write_all(b"0}").unwrap();
        let bomb = encoder.finish().unwrap();
        assert!(bomb.len() < 64 << 10, "{}", bomb.len());
        let (refused, seen) = parse_streamed::<Answer>(&bomb[..], Some("zstd"), 1 << 20);
        assert!(matches!(refused, Err(StreamError::TooLarge(l)) if l == 1 << 20));
        assert!(seen <= bomb.len());
        // The same with the raw body over the limit (no decompression to blame).
        let (raw_over, seen) = parse_streamed::<Answer>(
            Source {
                left: 3 << 20,
                fill: b' ',
            },
            None,
            1 << 20,
        );
        assert!(matches!(raw_over, Err(StreamError::TooLarge(_))));
        assert_eq!(seen, (1 << 20) + 1);
        // Corrupt frames and unknown encodings are their own errors.
        let (corrupt, _) =
            parse_streamed::<Answer>(&[0x28, 0xb5, 0x2f, 0xfd, 1, 2][..], Some("zstd"), 100);
        assert!(matches!(corrupt, Err(StreamError::Io(_))), "{corrupt:?}");
        let (gzip, _) = parse_streamed::<Answer>(&text[..], Some("gzip"), 100);
        assert!(matches!(gzip, Err(StreamError::Encoding(_))));
        let (bad, _) = parse_streamed::<Answer>(&b"{\"seq\": \"x\"}"[..], None, 100);
        assert!(matches!(bad, Err(StreamError::Json(_))));
    }

    #[test]
    fn frames_asking_for_a_huge_window_are_refused() {
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        encoder.long_distance_matching(true).unwrap();
        encoder.window_log(ZSTD_WINDOW_LOG_MAX + 4).unwrap();
        encoder.write_all(&vec![b' '; 64 << 20]).unwrap();
        encoder.write_all(b"{}").unwrap();
        let frame = encoder.finish().unwrap();
        assert!(matches!(
            decode_body(frame.clone(), Some("zstd"), 128 << 20),
            Err(DecodeError::Zstd(_))
        ));
        let (refused, _) = parse_streamed::<serde_json::Value>(&frame[..], Some("zstd"), 128 << 20);
        assert!(matches!(refused, Err(StreamError::Io(_))), "{refused:?}");
    }

    #[test]
    fn sink_stops_at_its_limit() {
        let mut buf = b"left over".to_vec();
        // A Content-Length over the limit reserves no more than the limit.
        let mut sink = LimitedSink::new(&mut buf, 4, Some(1 << 40));
        sink.write_all(b"abc").unwrap();
        assert!(sink.write_all(b"de").is_err());
        assert!(sink.overflowed);
        assert_eq!(sink.seen, 5);
        assert_eq!(buf, b"abc");
        assert!(buf.capacity() < 1 << 20);
    }
}
