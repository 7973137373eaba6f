//! Why a plan could not be made.

use crate::protocol::{NameError, NodeId, NodeKind};

/// Why [`super::plan`] refused its input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// One node id has different kinds in two of the trees (a node's kind never changes).
    #[error("node {node} is a {a:?} in one tree and a {b:?} in another")]
    KindMismatch {
        /// The node.
        node: NodeId,
        /// Its kind in one tree.
        a: NodeKind,
        /// Its kind in another.
        b: NodeKind,
    },
    /// A conflicted-copy or temporary name could not be made.
    #[error("cannot make a name: {0}")]
    Name(#[from] NameError),
    /// The steps for one side could not be ordered: a planner bug, never expected.
    #[error("cannot order the steps around node {node} (planner bug)")]
    Unschedulable {
        /// A node whose step could not be placed.
        node: NodeId,
    },
}
