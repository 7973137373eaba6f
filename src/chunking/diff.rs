//! Differences between two manifests: an edit script against the base plus the new chunks.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::encoding::MAX_MANIFEST_CHUNKS;
use super::{ApplyError, ChunkId, ChunkRef, EditOp, Manifest, ManifestEdit, ManifestId};

/// A file's new content as a difference against its base (previous-state) manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diff {
    /// Id of the manifest the edit applies to.
    pub base: ManifestId,
    /// Id of the manifest the edit produces; [`Diff::apply`] checks it.
    pub target: ManifestId,
    /// Runs of kept base chunks and inserted chunks, in the new file's order.
    pub edit: ManifestEdit,
    /// Chunks the new content uses that the base does not have, each once, in first-use order.
    pub new_chunks: Vec<ChunkRef>,
}

/// Why a diff could not be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DiffError {
    /// The diff was made against another base.
    #[error("diff is against base {expected}, not {actual}")]
    WrongBase {
        /// The base the diff names.
        expected: ManifestId,
        /// The base it was given.
        actual: ManifestId,
    },
    /// The edit does not fit the base.
    #[error(transparent)]
    Edit(#[from] ApplyError),
    /// The edit would make a manifest with more than [`MAX_MANIFEST_CHUNKS`] chunks.
    #[error("edit yields {count} chunks, more than {limit}", limit = MAX_MANIFEST_CHUNKS)]
    TooLarge {
        /// Chunks the edit would produce.
        count: u64,
    },
    /// The result is not the manifest the diff promised.
    #[error("applied diff gives manifest {actual}, expected {expected}")]
    WrongTarget {
        /// The id the diff names.
        expected: ManifestId,
        /// The id of what applying it gave.
        actual: ManifestId,
    },
}

/// The difference that turns `base` into `new`.
pub fn diff(base: &Manifest, new: &Manifest) -> Diff {
    // Where each chunk occurs in the base, in increasing order.
    let mut positions: HashMap<ChunkRef, Vec<u32>> = HashMap::with_capacity(base.chunks.len());
    for (i, c) in base.chunks.iter().enumerate() {
        // Manifests hold at most MAX_MANIFEST_CHUNKS (< u32::MAX) chunks when decoded; a
        // larger hand-built one simply gets no keep runs past u32::MAX.
        if let Ok(i) = u32::try_from(i) {
            positions.entry(*c).or_default().push(i);
        }
    }
    let mut ops = Vec::new();
    let mut new_chunks = Vec::new();
    let mut seen_new = HashSet::new();
    // The keep run being extended: base chunks start..end.
    let mut run: Option<(u32, u32)> = None;
    for c in &new.chunks {
        if let Some((_, end)) = &mut run
            && base.chunks.get(*end as usize) == Some(c)
        {
            *end += 1;
            continue;
        }
        let last_end = run.map_or(0, |(_, end)| end);
        if let Some((start, end)) = run.take() {
            ops.push(EditOp::Keep { start, end });
        }
        match positions.get(c) {
            Some(at) => {
                // A repeated chunk: prefer the first occurrence after the previous run, which
                // keeps runs long when content repeats (zero blocks, copies).
                let i = at[at.partition_point(|&p| p < last_end)..]
                    .first()
                    .unwrap_or(&at[0]);
                run = Some((*i, i + 1));
            }
            None => {
                ops.push(EditOp::Insert(*c));
                if seen_new.insert(c.id) {
                    new_chunks.push(*c);
                }
            }
        }
    }
    if let Some((start, end)) = run {
        ops.push(EditOp::Keep { start, end });
    }
    Diff {
        base: base.id(),
        target: new.id(),
        edit: ManifestEdit { ops },
        new_chunks,
    }
}

impl Diff {
    /// Applies the diff to `base`, checking the base's id and the result's id.
    pub fn apply(&self, base: &Manifest) -> Result<Manifest, DiffError> {
        let actual = base.id();
        if actual != self.base {
            return Err(DiffError::WrongBase {
                expected: self.base,
                actual,
            });
        }
        let count = self.edit.output_len();
        if count > u64::from(MAX_MANIFEST_CHUNKS) {
            return Err(DiffError::TooLarge { count });
        }
        let new = self.edit.apply(base)?;
        let actual = new.id();
        if actual != self.target {
            return Err(DiffError::WrongTarget {
                expected: self.target,
                actual,
            });
        }
        Ok(new)
    }

    /// Bytes of content the receiver may have to fetch: the sum of the new chunks' lengths.
    pub fn new_bytes(&self) -> u64 {
        self.new_chunks.iter().map(|c| u64::from(c.len)).sum()
    }

    /// Ids of the new chunks.
    pub fn new_chunk_ids(&self) -> impl Iterator<Item = ChunkId> + '_ {
        self.new_chunks.iter().map(|c| c.id)
    }
}

impl ManifestEdit {
    /// How many chunks applying the edit yields (reversed runs count as zero).
    pub fn output_len(&self) -> u64 {
        self.ops
            .iter()
            .map(|op| match *op {
                EditOp::Keep { start, end } => u64::from(end.saturating_sub(start)),
                EditOp::Insert(_) => 1,
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(n: u32) -> ChunkRef {
        ChunkRef {
            id: ChunkId::of(&n.to_le_bytes()),
            len: 1000 + n,
        }
    }

    fn m(ns: &[u32]) -> Manifest {
        Manifest {
            chunks: ns.iter().map(|&n| c(n)).collect(),
        }
    }

    #[test]
    fn diff_keeps_runs_and_lists_new_chunks_once() {
        let base = m(&[1, 2, 3, 4, 5]);
        let new = m(&[1, 2, 9, 4, 5, 9, 8]);
        let d = diff(&base, &new);
        assert_eq!(
            d.edit.ops,
            vec![
                EditOp::Keep { start: 0, end: 2 },
                EditOp::Insert(c(9)),
                EditOp::Keep { start: 3, end: 5 },
                EditOp::Insert(c(9)),
                EditOp::Insert(c(8)),
            ]
        );
        assert_eq!(d.new_chunks, vec![c(9), c(8)]);
        assert_eq!(d.new_bytes(), 1009 + 1008);
        assert_eq!(d.apply(&base), Ok(new));
    }

    #[test]
    fn repeated_chunks_prefer_continuing_forward() {
        let base = m(&[7, 7, 7, 1, 7, 7]);
        let new = m(&[7, 7, 7, 1, 7, 7, 7]);
        let d = diff(&base, &new);
        assert_eq!(
            d.edit.ops,
            vec![
                EditOp::Keep { start: 0, end: 6 },
                EditOp::Keep { start: 0, end: 1 }
            ]
        );
        assert!(d.new_chunks.is_empty());
        assert_eq!(d.apply(&base), Ok(new));
    }

    #[test]
    fn apply_refuses_wrong_base_and_wrong_target() {
        let base = m(&[1, 2, 3]);
        let new = m(&[1, 3]);
        let d = diff(&base, &new);
        assert!(matches!(
            d.apply(&m(&[1, 2])),
            Err(DiffError::WrongBase { .. })
        ));
        let mut tampered = d.clone();
        tampered.edit.ops.push(EditOp::Insert(c(4)));
        assert!(matches!(
            tampered.apply(&base),
            Err(DiffError::WrongTarget { .. })
        ));
        let mut out_of_range = d.clone();
        out_of_range.edit.ops = vec![EditOp::Keep { start: 2, end: 9 }];
        assert!(matches!(
            out_of_range.apply(&base),
            Err(DiffError::Edit(ApplyError::KeepOutOfRange { .. }))
        ));
        let mut huge = d;
        huge.edit.ops = vec![EditOp::Keep {
            start: 0,
            end: u32::MAX,
        }];
        assert!(matches!(huge.apply(&base), Err(DiffError::TooLarge { .. })));
    }

    #[test]
    fn empty_cases() {
        let empty = Manifest::default();
        let some = m(&[1, 2]);
        assert_eq!(diff(&empty, &some).apply(&empty), Ok(some.clone()));
        let d = diff(&some, &empty);
        assert!(d.edit.ops.is_empty() && d.new_chunks.is_empty());
        assert_eq!(d.apply(&some), Ok(empty));
    }
}
