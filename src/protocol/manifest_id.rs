//! The manifest id both sides compute and compare: BLAKE3 of the difference engine's
//! canonical, versioned manifest encoding ([`Manifest::id`]).

use crate::chunking::{Manifest, ManifestId};

/// The id of `manifest`, as the server checks it on every create and write.
pub fn manifest_id(manifest: &Manifest) -> ManifestId {
    manifest.id()
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
