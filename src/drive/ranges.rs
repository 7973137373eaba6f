//! Sets of byte ranges: what a file had written to it since its last recorded version.

use serde::{Deserialize, Serialize};

/// Disjoint, sorted, coalesced half-open byte ranges.
///
/// A range may reach past the end of the file: a truncation is recorded as the range
/// between the old and the new size, meaning "the content changed from here on".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeSet {
    ranges: Vec<(u64, u64)>,
}

impl RangeSet {
    /// An empty set.
    pub const fn new() -> Self {
        RangeSet { ranges: Vec::new() }
    }

    /// Whether nothing is dirty.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The ranges, sorted and disjoint.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// Total bytes covered.
    pub fn covered(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s).sum()
    }

    /// Adds `start..end`, merging with ranges it touches. An empty range still marks
    /// its position (a truncation to the current size is still a change there).
    pub fn insert(&mut self, start: u64, end: u64) {
        let (mut start, mut end) = (start.min(end), start.max(end));
        // First range whose end reaches `start`: everything before it stays.
        let first = self.ranges.partition_point(|&(_, e)| e < start);
        let mut last = first;
        while last < self.ranges.len() && self.ranges[last].0 <= end {
            start = start.min(self.ranges[last].0);
            end = end.max(self.ranges[last].1);
            last += 1;
        }
        self.ranges.splice(first..last, [(start, end)]);
    }

    /// Adds every range of `other`.
    pub fn union(&mut self, other: &RangeSet) {
        for &(s, e) in &other.ranges {
            self.insert(s, e);
        }
    }

    /// Takes the ranges out, leaving the set empty.
    pub fn take(&mut self) -> RangeSet {
        std::mem::take(self)
    }

    /// Encodes as little-endian (start, end) pairs for storage.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.ranges.len() * 16);
        for &(s, e) in &self.ranges {
            out.extend_from_slice(&s.to_le_bytes());
            out.extend_from_slice(&e.to_le_bytes());
        }
        out
    }

    /// Decodes [`RangeSet::to_bytes`]; `None` when the bytes are not a whole number of pairs.
    pub fn from_bytes(bytes: &[u8]) -> Option<RangeSet> {
        if !bytes.len().is_multiple_of(16) {
            return None;
        }
        let mut set = RangeSet::new();
        for pair in bytes.chunks_exact(16) {
            let (s, e) = pair.split_at(8);
            set.insert(
                u64::from_le_bytes(s.try_into().ok()?),
                u64::from_le_bytes(e.try_into().ok()?),
            );
        }
        Some(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserts_merge_touching_and_overlapping_ranges() {
        let mut r = RangeSet::new();
        r.insert(10, 20);
        r.insert(30, 40);
        r.insert(0, 5);
        assert_eq!(r.ranges(), &[(0, 5), (10, 20), (30, 40)]);
        r.insert(20, 30);
        assert_eq!(r.ranges(), &[(0, 5), (10, 40)]);
        r.insert(3, 12);
        assert_eq!(r.ranges(), &[(0, 40)]);
        assert_eq!(r.covered(), 40);
    }

    #[test]
    fn empty_range_marks_a_position() {
        let mut r = RangeSet::new();
        r.insert(100, 100);
        assert!(!r.is_empty());
        assert_eq!(r.ranges(), &[(100, 100)]);
    }

    #[test]
    fn bytes_round_trip_and_reject_garbage() {
        let mut r = RangeSet::new();
        r.insert(1, 2);
        r.insert(1 << 40, (1 << 40) + 7);
        assert_eq!(RangeSet::from_bytes(&r.to_bytes()), Some(r));
        assert_eq!(RangeSet::from_bytes(&[1, 2, 3]), None);
    }
}
