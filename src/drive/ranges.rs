//! Sets of byte ranges: what a file had written to it since its last recorded version.

use serde::{Deserialize, Serialize};

/// Disjoint, sorted, coalesced half-open byte ranges.
///
/// A range may reach past the end of the file: a truncation is recorded as the range
/// between the old and the new size, meaning "the content changed from here on".
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(from = "RangeList", into = "RangeList")]
pub struct RangeSet {
    ranges: Ranges,
}

/// How a [`RangeSet`] holds its ranges: one range (most sets: the content of a file written
/// once) inside the set itself, none or several in a vector.
#[derive(Clone, Debug)]
enum Ranges {
    One([(u64, u64); 1]),
    Many(Vec<(u64, u64)>),
}

impl Default for Ranges {
    fn default() -> Ranges {
        Ranges::Many(Vec::new())
    }
}

/// The serialized form of a [`RangeSet`] (the same as before sets held one range inline).
#[derive(Clone, Serialize, Deserialize)]
struct RangeList {
    ranges: Vec<(u64, u64)>,
}

impl From<RangeList> for RangeSet {
    fn from(list: RangeList) -> RangeSet {
        let mut set = RangeSet::new();
        for (s, e) in list.ranges {
            set.insert(s, e);
        }
        set
    }
}

impl From<RangeSet> for RangeList {
    fn from(set: RangeSet) -> RangeList {
        RangeList {
            ranges: set.ranges().to_vec(),
        }
    }
}

impl PartialEq for RangeSet {
    fn eq(&self, other: &RangeSet) -> bool {
        self.ranges() == other.ranges()
    }
}

impl Eq for RangeSet {}

impl RangeSet {
    /// An empty set.
    pub const fn new() -> Self {
        RangeSet {
            ranges: Ranges::Many(Vec::new()),
        }
    }

    /// Whether nothing is dirty.
    pub fn is_empty(&self) -> bool {
        self.ranges().is_empty()
    }

    /// The ranges, sorted and disjoint.
    pub fn ranges(&self) -> &[(u64, u64)] {
        match &self.ranges {
            Ranges::One(one) => one,
            Ranges::Many(many) => many,
        }
    }

    /// Total bytes covered.
    pub fn covered(&self) -> u64 {
        self.ranges().iter().map(|(s, e)| e - s).sum()
    }

    /// Adds `start..end`, merging with ranges it touches. An empty range still marks
    /// its position (a truncation to the current size is still a change there).
    pub fn insert(&mut self, start: u64, end: u64) {
        let (mut start, mut end) = (start.min(end), start.max(end));
        if let Ranges::One([(s, e)]) = self.ranges {
            if e >= start && s <= end {
                self.ranges = Ranges::One([(s.min(start), e.max(end))]);
                return;
            }
            self.ranges = Ranges::Many(vec![(s, e)]);
        }
        let Ranges::Many(ranges) = &mut self.ranges else {
            return;
        };
        if ranges.is_empty() {
            self.ranges = Ranges::One([(start, end)]);
            return;
        }
        // First range whose end reaches `start`: everything before it stays.
        let first = ranges.partition_point(|&(_, e)| e < start);
        let mut last = first;
        while last < ranges.len() && ranges[last].0 <= end {
            start = start.min(ranges[last].0);
            end = end.max(ranges[last].1);
            last += 1;
        }
        ranges.splice(first..last, [(start, end)]);
    }

    /// Adds every range of `other`.
    pub fn union(&mut self, other: &RangeSet) {
        for &(s, e) in other.ranges() {
            self.insert(s, e);
        }
    }

    /// Takes the ranges out, leaving the set empty.
    pub fn take(&mut self) -> RangeSet {
        std::mem::take(self)
    }

    /// Encodes as little-endian (start, end) pairs for storage.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.ranges().len() * 16);
        for &(s, e) in self.ranges() {
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
    fn one_range_is_held_inline_and_several_compare_alike() {
        assert!(std::mem::size_of::<RangeSet>() <= 24);
        let mut r = RangeSet::new();
        r.insert(0, 900);
        assert!(matches!(r.ranges, Ranges::One(_)));
        r.insert(900, 1000);
        r.insert(10, 20);
        assert!(
            matches!(r.ranges, Ranges::One(_)),
            "touching ranges merge in place"
        );
        assert_eq!(r.ranges(), &[(0, 1000)]);
        r.insert(2000, 2001);
        assert_eq!(r.ranges(), &[(0, 1000), (2000, 2001)]);
        r.insert(500, 2000);
        assert_eq!(r.ranges(), &[(0, 2001)]);
        let mut one = RangeSet::new();
        one.insert(0, 2001);
        assert_eq!(
            r, one,
            "a set that grew and shrank equals one that never grew"
        );
        let json = serde_json::to_string(&one).unwrap();
        assert_eq!(json, r#"{"ranges":[[0,2001]]}"#);
        assert_eq!(serde_json::from_str::<RangeSet>(&json).unwrap(), one);
        assert!(one.take().ranges() == [(0, 2001)] && one.is_empty());
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
