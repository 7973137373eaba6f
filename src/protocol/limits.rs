//! Limits both sides hold to; the server refuses anything past them (docs/PROTOCOL.md).

/// The commit format this build speaks (`format` in a commit request).
pub const COMMIT_FORMAT: u32 = 1;
/// Longest directory-entry name, in bytes (as POSIX NAME_MAX).
pub const MAX_NAME_LEN: usize = 255;
/// Longest volume, user or device name, in bytes.
pub const MAX_ACCOUNT_NAME_LEN: usize = 64;
/// Largest decoded chunk the server accepts (the chunker's default maximum is 64 KiB).
pub const MAX_CHUNK_SIZE: usize = 1 << 20;
/// Largest chunk payload (tag byte + body): a raw payload of the largest chunk, plus slack.
pub const MAX_CHUNK_PAYLOAD: usize = MAX_CHUNK_SIZE + 1024;
/// Most chunks in one batched upload or download.
pub const MAX_BATCH_CHUNKS: usize = 1024;
/// Largest batched upload body, and the size past which a batched download stops early.
pub const MAX_BATCH_BYTES: usize = 32 << 20;
/// Most ids in one `chunks/missing` or `chunks/fetch` request.
pub const MAX_IDS_PER_REQUEST: usize = 10_000;
/// Largest JSON request body after decompression.
pub const MAX_JSON_BODY: usize = 16 << 20;
/// Most ops in one commit.
pub const MAX_OPS_PER_COMMIT: usize = 10_000;
/// Most chunks in one file's manifest (64 GiB of 64 KiB chunks).
pub const MAX_MANIFEST_CHUNKS: usize = 1 << 20;
/// Longest symlink target, in bytes (as Linux PATH_MAX).
pub const MAX_SYMLINK_TARGET: usize = 4096;
/// Longest extended-attribute name, in bytes (as Linux XATTR_NAME_MAX).
pub const MAX_XATTR_NAME: usize = 255;
/// Largest extended-attribute value, in bytes (as Linux XATTR_SIZE_MAX).
pub const MAX_XATTR_VALUE: usize = 64 << 10;
/// Largest total of one node's extended attributes (names + values), in bytes.
pub const MAX_XATTRS_TOTAL: usize = 256 << 10;
/// Longest long-poll wait, in seconds.
pub const MAX_WAIT_SECS: u64 = 60;
/// Default page size of the changes endpoint, in commits.
pub const DEFAULT_CHANGES_LIMIT: u32 = 100;
/// Largest page size of the changes endpoint, in commits.
pub const MAX_CHANGES_LIMIT: u32 = 1000;
/// Mode bits a node may carry (permissions, setuid, setgid, sticky); the kind is separate.
pub const MODE_MASK: u32 = 0o7777;
