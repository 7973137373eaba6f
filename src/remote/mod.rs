//! The wire protocol seen from a device: a blocking HTTP client of `deltadrive serve`.
//!
//! [`Remote`] speaks the /v1 API of docs/PROTOCOL.md for one volume with one device token. It
//! is blocking (reqwest::blocking) so the sync engine can call it from its own threads; it is
//! `Clone` (clones share the connection pool and the wire counters) and `Send + Sync`. Like
//! every reqwest blocking client it must not be created, used or dropped on a thread that runs
//! an async runtime.
//!
//! What it guarantees the engine:
//! - Requests stay under the protocol's limits: chunk-id lists, upload batches and fetches are
//!   split as needed; a commit over a limit is refused locally as [`RemoteError::TooLarge`].
//! - Chunks come back only as [`crate::chunking::VerifiedChunk`]s: every fetched payload is
//!   decoded and its BLAKE3 checked against the id asked for; a mismatch is an error, never
//!   bytes.
//! - Every failure is one [`RemoteError`] variant with [`RemoteError::is_retryable`] saying
//!   whether backing off and sending the same request again can help.
//! - [`Remote::wire_stats`] counts request and answer *body* bytes as they crossed the wire:
//!   JSON request bodies zstd-compressed (over 1 KiB) as sent, chunk payloads as sent, answers
//!   before decompression (this client asks for zstd and decompresses itself, so it sees the
//!   raw bytes). HTTP headers (a few hundred bytes per request) and TCP/IP overhead are not
//!   counted.
//!
//! Transport: `https://` with rustls (see [`crate::tls`]), trusting the system's CA store or,
//! with [`ConnectOptions::ca_file`], only a private CA; a failed handshake is one
//! [`RemoteError::Tls`] line saying what to do. Plain `http://` is accepted on loopback only,
//! unless [`ConnectOptions::insecure_http`] accepts the token crossing the network in the
//! clear ([`RemoteError::PlainHttp`] otherwise).

mod batch;
mod client;
mod error;
mod wire;

pub use batch::UploadBatch;
pub use client::{ConnectOptions, Remote};
pub use error::RemoteError;
