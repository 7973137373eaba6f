//! A bounded memory of what was stored lately, so that the reads that follow a write (the
//! other devices fetching a chunk just uploaded, the commit naming it) skip the database.
//!
//! Only for facts that never stop being true once durable (a chunk's place in a pack, a
//! volume holding a chunk): an entry is added after its write committed and is never wrong,
//! only forgotten. Two generations of at most `cap` entries each: when the young one fills,
//! it becomes the old one and the old one is dropped, so memory stays bounded without a
//! per-entry recency list.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};

/// Recently stored keys with their values; see the module doc.
#[derive(Debug)]
pub struct Recent<K, V> {
    cap: usize,
    gens: Mutex<Generations<K, V>>,
}

#[derive(Debug)]
struct Generations<K, V> {
    young: HashMap<K, V>,
    old: HashMap<K, V>,
}

impl<K: Eq + Hash, V: Copy> Recent<K, V> {
    /// Remembers at most `2 * cap` entries.
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            gens: Mutex::new(Generations {
                young: HashMap::new(),
                old: HashMap::new(),
            }),
        }
    }

    /// Remembers each entry (call only once it is durable).
    pub fn insert_all(&self, entries: impl IntoIterator<Item = (K, V)>) {
        let mut g = self.gens.lock().unwrap_or_else(PoisonError::into_inner);
        for (k, v) in entries {
            if g.young.len() >= self.cap {
                g.old = std::mem::take(&mut g.young);
            }
            g.young.insert(k, v);
        }
    }

    /// The value remembered for `key`, if it was stored lately.
    pub fn get(&self, key: &K) -> Option<V> {
        let g = self.gens.lock().unwrap_or_else(PoisonError::into_inner);
        g.young.get(key).or_else(|| g.old.get(key)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_last_generations_and_forgets_older_ones() {
        let r: Recent<u32, u64> = Recent::new(3);
        r.insert_all((0..3).map(|k| (k, u64::from(k) * 10)));
        assert_eq!(r.get(&2), Some(20));
        // A fourth entry starts a new generation; the first three stay (old).
        r.insert_all([(3, 30)]);
        assert_eq!(r.get(&0), Some(0));
        assert_eq!(r.get(&3), Some(30));
        // Three more: the young generation (3, 4, 5) fills and ages; 0..3 are forgotten.
        r.insert_all([(4, 40), (5, 50), (6, 60)]);
        assert_eq!(r.get(&0), None);
        assert_eq!(r.get(&5), Some(50));
        assert_eq!(r.get(&6), Some(60));
        assert_eq!(r.get(&9), None);
    }
}
