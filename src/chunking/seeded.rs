//! Deterministic pseudo-random bytes (splitmix64) for tests, benchmarks and examples:
//! a chunking filesystem must never be measured on zeros, and the known-answer tests pin
//! cut points computed on exactly these bytes, so this function must never change.

/// Appends `len` splitmix64 bytes seeded with `seed` to `out`.
pub fn extend_seeded(out: &mut Vec<u8>, len: usize, seed: u64) {
    let target = out.len() + len;
    let mut state = seed;
    out.reserve(len + 8);
    while out.len() < target {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(target);
}

/// `len` splitmix64 bytes seeded with `seed`.
pub fn seeded_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::new();
    extend_seeded(&mut out, len, seed);
    out
}
