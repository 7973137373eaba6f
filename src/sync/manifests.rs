//! A bounded cache of the manifests kept in `sync.db`, so that the engine holds only the
//! manifests a cycle works on, not one per file of the volume.
//!
//! Manifests are content-addressed, so a cached one never goes stale: the cache only decides
//! which to keep. It is bounded by bytes, not by count, because one manifest of a large file
//! weighs as much as tens of thousands of small ones. Eviction is the clock algorithm: an
//! entry used since the hand last passed gets a second chance.

use std::collections::HashMap;

use crate::chunking::{ChunkRef, Manifest, ManifestId};

/// Bytes of manifests [`ManifestCache::default`] keeps: about 1,500 small ones, or one of a
/// 10 GiB file. Reads come in batches (a push batch, a window of staged files), so the cache
/// need not hold a whole batch; it saves reading back what was just written (a version
/// taken, then pushed; a base written, then edited again). Measured: the cache is the
/// engine's only fixed cost here, so it stays well below a byte per file of a large volume.
pub const CACHE_BYTES: usize = 256 << 10;

/// What an entry costs besides its chunk list: its id, the `Vec`, the slot and the index.
const ENTRY_OVERHEAD: usize = 128;

/// One cached manifest.
#[derive(Debug)]
struct Slot {
    id: ManifestId,
    manifest: Manifest,
    /// Used since the hand last passed.
    referenced: bool,
}

/// A byte-bounded cache of manifests by id (clock eviction).
#[derive(Debug)]
pub struct ManifestCache {
    budget: usize,
    bytes: usize,
    slots: Vec<Option<Slot>>,
    /// Empty slots to reuse.
    free: Vec<usize>,
    index: HashMap<ManifestId, usize>,
    hand: usize,
}

impl Default for ManifestCache {
    fn default() -> Self {
        ManifestCache::new(CACHE_BYTES)
    }
}

/// The bytes a manifest is counted for.
fn cost(m: &Manifest) -> usize {
    ENTRY_OVERHEAD + m.chunks.len() * std::mem::size_of::<ChunkRef>()
}

impl ManifestCache {
    /// An empty cache that keeps at most `budget` bytes of manifests.
    pub fn new(budget: usize) -> ManifestCache {
        ManifestCache {
            budget,
            bytes: 0,
            slots: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            hand: 0,
        }
    }

    /// The manifest `id`, if cached (marked as used).
    pub fn get(&mut self, id: &ManifestId) -> Option<&Manifest> {
        let i = *self.index.get(id)?;
        let slot = self.slots[i].as_mut()?;
        slot.referenced = true;
        Some(&slot.manifest)
    }

    /// Keeps `m`, evicting others as the budget needs; one larger than the whole budget is
    /// not kept.
    pub fn insert(&mut self, m: Manifest) {
        let id = m.id();
        self.insert_with_id(id, m);
    }

    /// [`ManifestCache::insert`] of a manifest whose id the caller already knows.
    pub fn insert_with_id(&mut self, id: ManifestId, m: Manifest) {
        if let Some(&i) = self.index.get(&id) {
            if let Some(slot) = self.slots[i].as_mut() {
                slot.referenced = true;
            }
            return;
        }
        let c = cost(&m);
        if c > self.budget {
            return;
        }
        while self.bytes + c > self.budget && self.evict_one() {}
        let slot = Slot {
            id,
            manifest: m,
            referenced: false,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        };
        self.index.insert(id, i);
        self.bytes += c;
    }

    /// Evicts the first entry the hand finds unused since it last passed; false if empty.
    fn evict_one(&mut self) -> bool {
        if self.index.is_empty() {
            return false;
        }
        loop {
            if self.hand >= self.slots.len() {
                self.hand = 0;
            }
            let i = self.hand;
            self.hand += 1;
            let Some(slot) = self.slots[i].as_mut() else {
                continue;
            };
            if slot.referenced {
                slot.referenced = false;
                continue;
            }
            if let Some(gone) = self.slots[i].take() {
                self.index.remove(&gone.id);
                self.bytes -= cost(&gone.manifest);
                self.free.push(i);
            }
            return true;
        }
    }

    /// Bytes of manifests held, as counted against the budget.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Manifests held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether it holds nothing.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunking::ChunkId;

    /// A manifest of `chunks` distinct chunks, told apart by `seed`.
    fn manifest(seed: u32, chunks: u32) -> Manifest {
        Manifest {
            chunks: (0..chunks)
                .map(|i| ChunkRef {
                    id: ChunkId::of(&[seed.to_le_bytes(), i.to_le_bytes()].concat()),
                    len: 100 + i,
                })
                .collect(),
        }
    }

    #[test]
    fn the_bound_holds_and_the_oldest_unused_go_first() {
        let one = cost(&manifest(0, 1));
        let mut cache = ManifestCache::new(10 * one);
        let ms: Vec<Manifest> = (0..30).map(|s| manifest(s, 1)).collect();
        for (i, m) in ms.iter().enumerate() {
            cache.insert(m.clone());
            assert!(
                cache.bytes() <= 10 * one,
                "after {i}: {} bytes",
                cache.bytes()
            );
            // Kept in use all along: never the one evicted.
            assert!(cache.get(&ms[0].id()).is_some(), "after {i}: the used one");
        }
        assert_eq!(cache.len(), 10);
        // The latest ones are there, the earlier unused ones gone.
        assert!(cache.get(&ms[29].id()).is_some());
        assert!(cache.get(&ms[1].id()).is_none());
    }

    #[test]
    fn a_manifest_larger_than_the_budget_is_not_kept_and_evicts_nothing() {
        let small = manifest(1, 1);
        let mut cache = ManifestCache::new(4 * cost(&small));
        cache.insert(small.clone());
        cache.insert(manifest(2, 1000));
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get(&small.id()), Some(&small));
    }

    #[test]
    fn a_large_manifest_evicts_as_many_small_ones_as_it_needs() {
        let small: Vec<Manifest> = (0..8).map(|s| manifest(s, 1)).collect();
        let big = manifest(99, 10);
        let budget = 8 * cost(&small[0]);
        assert!(cost(&big) < budget);
        let mut cache = ManifestCache::new(budget);
        for m in &small {
            cache.insert(m.clone());
        }
        cache.insert(big.clone());
        assert!(cache.bytes() <= budget);
        assert_eq!(cache.get(&big.id()), Some(&big));
        assert!(cache.len() < 9);
    }
}
