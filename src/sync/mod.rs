//! The sync engine: follows a volume's change log and applies other devices' difference
//! transactions to the local drive (docs/ARCHITECTURE.md, "Read path"), and decides with the
//! pure three-tree planner ([`plan`]).
//!
//! A new state directory starts from the server's snapshot; a known one resumes from its
//! cursor. Local changes are pushed as difference transactions; both directions are planned
//! together from the local, synced and remote trees.

mod aside;
mod content;
mod engine;
mod error;
mod execute;
pub mod local;
mod manifests;
pub mod plan;
mod prefetch;
mod preupload;
mod pulled;
mod push;
mod state;
pub mod trees;

pub use aside::AsideFile;
pub use engine::{Engine, EngineStatus, LiveStatus};
pub use error::SyncError;
pub use state::{Binding, SyncState};
