//! deltadrive: a synced drive. See docs/ARCHITECTURE.md for the parts and how data flows
//! through them.

pub mod allocator;
pub mod chunking;
pub mod cli;
pub mod drive;
pub mod durability;
pub mod fs;
pub mod private;
pub mod protocol;
pub mod remote;
pub mod server;
pub mod sync;
pub mod tls;
