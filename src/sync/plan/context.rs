//! What the planner gets from its caller instead of a clock and a random source.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use crate::protocol::{AccountName, Name, NodeId};

use super::tree::Tree;

/// Why a conflict timestamp was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StampError {
    /// The text is not `YYYY-MM-DD HHMMSS` with a valid date and time.
    #[error("conflict timestamp {0:?} is not YYYY-MM-DD HHMMSS")]
    BadFormat(String),
    /// The time is outside the years 0000 to 9999.
    #[error("time {0} s is outside the years 0000 to 9999")]
    OutOfRange(i64),
}

/// The time in conflicted-copy names, as `YYYY-MM-DD HHMMSS`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ConflictStamp(String);

impl ConflictStamp {
    /// Validates `text` as `YYYY-MM-DD HHMMSS`.
    pub fn parse(text: &str) -> Result<Self, StampError> {
        let bad = || StampError::BadFormat(text.to_string());
        let b = text.as_bytes();
        let digits_at = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
        if b.len() != 17
            || b[4] != b'-'
            || b[7] != b'-'
            || b[10] != b' '
            || !digits_at(0..4)
            || !digits_at(5..7)
            || !digits_at(8..10)
            || !digits_at(11..17)
        {
            return Err(bad());
        }
        let num = |r: std::ops::Range<usize>| text[r].parse::<u32>().map_err(|_| bad());
        let (month, day) = (num(5..7)?, num(8..10)?);
        let (hour, min, sec) = (num(11..13)?, num(13..15)?, num(15..17)?);
        if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 {
            return Err(bad());
        }
        // 60 allows a leap second.
        if sec > 60 {
            return Err(bad());
        }
        Ok(Self(text.to_string()))
    }

    /// The stamp of `secs` seconds since the Unix epoch, read as UTC. For local time, pass
    /// the seconds shifted by the local UTC offset (the planner has no time zone database).
    pub fn from_unix_secs(secs: i64) -> Result<Self, StampError> {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        if !(0..=9999).contains(&y) {
            return Err(StampError::OutOfRange(secs));
        }
        Ok(Self(format!(
            "{y:04}-{m:02}-{d:02} {:02}{:02}{:02}",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )))
    }

    /// The stamp as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ConflictStamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConflictStamp({:?})", self.0)
    }
}

impl fmt::Display for ConflictStamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Names the local side holds with nodes that never sync (FIFOs, sockets, device nodes):
/// (directory, name) -> the local node there. They are in no tree, but no node may take
/// their place and the directories holding them stay.
pub type LocalOnly = BTreeMap<(NodeId, Name), NodeId>;

/// The caller's side of a plan: this device's name and the time for conflicted-copy names,
/// a seed from which the ids of new nodes (conflicted copies) are derived, and the names
/// taken locally by nodes that never sync.
#[derive(Clone, Debug)]
pub struct Context {
    /// This device's name, as in conflicted-copy names.
    pub device: AccountName,
    /// The time, as in conflicted-copy names.
    pub stamp: ConflictStamp,
    /// Seed of the ids of new nodes: the same seed and trees give the same ids (use a random
    /// one per plan in production, e.g. `NodeId::random().as_u128()`).
    pub id_seed: u128,
    /// Names taken locally by nodes that never sync: a remote node that wants one gets a
    /// conflicted-copy name (rule 7, the local node keeping the name), and a directory
    /// holding one is kept like a directory the local side added to (rule 4).
    pub local_only: LocalOnly,
}

impl Context {
    /// A context for `device` at `stamp`, minting ids from `id_seed`, with no local-only names.
    pub fn new(device: AccountName, stamp: ConflictStamp, id_seed: u128) -> Self {
        Self {
            device,
            stamp,
            id_seed,
            local_only: LocalOnly::new(),
        }
    }

    /// The same context with `names` taken locally by nodes that never sync.
    pub fn with_local_only(mut self, names: LocalOnly) -> Self {
        self.local_only = names;
        self
    }
}

/// Mints node ids from the context's seed: BLAKE3 of (seed, counter), skipping the root and
/// every id any of the three trees or an earlier mint holds.
pub(crate) struct IdMinter<'a> {
    seed: u128,
    counter: u64,
    trees: [&'a Tree; 3],
    minted: HashSet<NodeId>,
}

impl<'a> IdMinter<'a> {
    /// A minter for one plan over these trees.
    pub(crate) fn new(seed: u128, trees: [&'a Tree; 3]) -> Self {
        Self {
            seed,
            counter: 0,
            trees,
            minted: HashSet::new(),
        }
    }

    /// The next fresh id.
    pub(crate) fn mint(&mut self) -> NodeId {
        loop {
            let mut h = blake3::Hasher::new();
            h.update(b"deltadrive plan node id");
            h.update(&self.seed.to_le_bytes());
            h.update(&self.counter.to_le_bytes());
            self.counter = self.counter.wrapping_add(1);
            let mut first = [0u8; 16];
            first.copy_from_slice(&h.finalize().as_bytes()[..16]);
            let id = NodeId::from_bytes(first);
            let used = id == NodeId::ROOT
                || self.minted.contains(&id)
                || self.trees.iter().any(|t| t.exists(id));
            if !used {
                self.minted.insert(id);
                return id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_format_utc_dates() {
        assert_eq!(
            ConflictStamp::from_unix_secs(0).unwrap().as_str(),
            "1970-01-01 000000"
        );
        // 2024-02-29 13:45:07 UTC: a leap day.
        assert_eq!(
            ConflictStamp::from_unix_secs(1_709_214_307)
                .unwrap()
                .as_str(),
            "2024-02-29 134507"
        );
        assert_eq!(
            ConflictStamp::from_unix_secs(-1).unwrap().as_str(),
            "1969-12-31 235959"
        );
        assert!(matches!(
            ConflictStamp::from_unix_secs(i64::MAX),
            Err(StampError::OutOfRange(_))
        ));
    }

    #[test]
    fn stamps_are_validated() {
        assert!(ConflictStamp::parse("2025-11-24 093000").is_ok());
        for bad in [
            "",
            "2025-11-24 09300",
            "2025-13-24 093000",
            "2025-11-24T093000",
            "2025-11-24 243000",
            "2025-11-24 09300x",
            "2025/11/24 093000",
            "2025-11-24 0930000",
        ] {
            assert!(ConflictStamp::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn minted_ids_are_deterministic_and_fresh() {
        let t = Tree::new();
        let mut a = IdMinter::new(7, [&t, &t, &t]);
        let mut b = IdMinter::new(7, [&t, &t, &t]);
        let xs: Vec<NodeId> = (0..5).map(|_| a.mint()).collect();
        let ys: Vec<NodeId> = (0..5).map(|_| b.mint()).collect();
        assert_eq!(xs, ys);
        let distinct: HashSet<NodeId> = xs.iter().copied().collect();
        assert_eq!(distinct.len(), 5);
        assert!(!distinct.contains(&NodeId::ROOT));
        let mut c = IdMinter::new(8, [&t, &t, &t]);
        assert_ne!(c.mint(), xs[0]);
        // An id a tree holds is skipped.
        let mut held = Tree::new();
        let entry = super::super::tree::Entry {
            parent: NodeId::ROOT,
            name: crate::protocol::Name::new("x").unwrap(),
            mode: 0,
            mtime: 0,
            xattrs: crate::protocol::Xattrs::new(),
            content: super::super::tree::Content::Dir,
        };
        held.insert(xs[0], entry).unwrap();
        let mut d = IdMinter::new(7, [&t, &held, &t]);
        assert_eq!(d.mint(), xs[1]);
    }
}
