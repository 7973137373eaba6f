//! The manifest id both sides compute and compare.
//!
//! STOPGAP until issue 3 lands `chunking`'s canonical, versioned manifest encoding: this is
//! the only place that computes a manifest id, so the merge replaces this one body with a call
//! to chunking's function (server and clients both call [`manifest_id`]).

use crate::chunking::{Manifest, ManifestId};

/// Encoding version byte of the provisional canonical form.
const ENCODING_VERSION: u8 = 1;

/// BLAKE3 of the manifest's canonical encoding:
/// `"DDMF" | version u8 | count u64 LE | (chunk id 32 bytes | len u32 LE) * count`.
pub fn manifest_id(manifest: &Manifest) -> ManifestId {
    let mut h = blake3::Hasher::new();
    h.update(b"DDMF");
    h.update(&[ENCODING_VERSION]);
    h.update(&(manifest.chunks.len() as u64).to_le_bytes());
    for c in &manifest.chunks {
        h.update(c.id.as_bytes());
        h.update(&c.len.to_le_bytes());
    }
    ManifestId::from_bytes(*h.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunking::{ChunkId, ChunkRef};

    #[test]
    fn id_depends_on_order_and_lengths() {
        let a = ChunkRef {
            id: ChunkId::of(b"a"),
            len: 1,
        };
        let b = ChunkRef {
            id: ChunkId::of(b"b"),
            len: 1,
        };
        let ab = Manifest { chunks: vec![a, b] };
        let ba = Manifest { chunks: vec![b, a] };
        assert_ne!(manifest_id(&ab), manifest_id(&ba));
        let mut a2 = a;
        a2.len = 2;
        assert_ne!(
            manifest_id(&ab),
            manifest_id(&Manifest {
                chunks: vec![a2, b]
            })
        );
        assert_eq!(manifest_id(&ab), manifest_id(&ab.clone()));
        assert_ne!(manifest_id(&Manifest::default()), manifest_id(&ab));
    }
}
