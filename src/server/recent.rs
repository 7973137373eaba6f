//! A bounded memory of what was stored lately, so that the reads that follow a write (the
//! other devices fetching a chunk just uploaded, the commit naming it) skip the database.
//!
//! Only for facts that never stop being true once durable (a chunk's place in a pack, a
//! volume holding a chunk): an entry is added after its write committed and is never wrong,
//! only forgotten. Two generations of at most `cap` entries each: when the young one fills,
//! it becomes the old one and the old one is emptied to be the young one, so memory stays
//! bounded without a per-entry recency list. Each generation's table is allocated once, at
//! its full size: it never grows by doubling (which would hold both tables at once) and is
//! reused, not freed, when it ages.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};

/// A `cap` that fills a table of 16 Ki buckets (hashbrown's load factor is 7/8): the
/// largest under 16 Ki before the table doubles.
pub const FULL_AT_16K: usize = (16 << 10) / 8 * 7;

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
                young: HashMap::with_capacity(cap),
                old: HashMap::with_capacity(cap),
            }),
        }
    }

    /// Remembers each entry (call only once it is durable).
    pub fn insert_all(&self, entries: impl IntoIterator<Item = (K, V)>) {
        let mut g = self.gens.lock().unwrap_or_else(PoisonError::into_inner);
        for (k, v) in entries {
            if g.young.len() >= self.cap {
                let g = &mut *g;
                std::mem::swap(&mut g.young, &mut g.old);
                g.young.clear();
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

    #[test]
    fn the_tables_are_sized_once_and_reused_as_generations_age() {
        let r: Recent<u64, u64> = Recent::new(FULL_AT_16K);
        let capacities = |r: &Recent<u64, u64>| {
            let g = r.gens.lock().unwrap();
            (g.young.capacity(), g.old.capacity())
        };
        let at_start = capacities(&r);
        assert!(at_start.0 >= FULL_AT_16K && at_start.1 >= FULL_AT_16K);
        // Ten generations' worth: neither table grows, so memory is what it was at start.
        r.insert_all((0..10 * FULL_AT_16K as u64).map(|k| (k, k)));
        assert_eq!(capacities(&r), at_start);
        let last = 10 * FULL_AT_16K as u64 - 1;
        assert_eq!(r.get(&last), Some(last));
        assert_eq!(r.get(&0), None);
    }
}
