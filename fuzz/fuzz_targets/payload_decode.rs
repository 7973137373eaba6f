//! Chunk payload decoder on arbitrary bytes: no panic, output within the limit, and anything
//! accepted hashes to the id asked for.
#![no_main]

use deltadrive::chunking::{ChunkId, payload};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    // Ask for the id of the raw body, so raw payloads can succeed too.
    let expected = ChunkId::of(data.get(1..).unwrap_or_default());
    if let Ok(chunk) = payload::decode(data, expected, LIMIT) {
        assert!(chunk.bytes().len() <= LIMIT);
        assert_eq!(ChunkId::of(chunk.bytes()), expected);
    }
});
