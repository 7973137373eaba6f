//! The sync engine: follows a volume's change log and applies other devices' difference
//! transactions to the local drive (the read path of DESIGN.md).
//!
//! A new state directory starts from the server's snapshot; a known one resumes from its
//! cursor. Pushing local changes (the write path) and the conflict rules come with the
//! planner (`plan`), which decides from the three trees.

mod content;
mod engine;
mod error;
mod state;

pub use engine::{Engine, EngineStatus};
pub use error::SyncError;
pub use state::{Binding, SyncState};
