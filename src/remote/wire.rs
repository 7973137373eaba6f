//! Bytes on the wire: request bodies as sent (JSON zstd-compressed past a threshold), answer
//! bodies read raw and decompressed here, and the counters of both.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// JSON request bodies larger than this are sent zstd-compressed.
pub const COMPRESS_ABOVE: usize = 1024;
/// zstd level for JSON request bodies: fast, and JSON of hex ids compresses well already.
const JSON_ZSTD_LEVEL: i32 = 3;

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
            let decoder = zstd::stream::read::Decoder::new(&raw[..]).map_err(DecodeError::Zstd)?;
            let mut out = Vec::with_capacity(raw.len() * 4);
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
