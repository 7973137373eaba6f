//! The sync engine: deciding (the pure planner) and, later, pushing, pulling and applying.

pub mod plan;
