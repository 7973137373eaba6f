//! Types both sides of the wire share: the universal, versioned format (docs/PROTOCOL.md).

mod ids;

pub use ids::{NodeId, NodeIdParseError, Seq};
