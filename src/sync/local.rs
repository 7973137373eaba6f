//! This device's side of each file: the manifest of its current content, kept up to date by
//! re-chunking only around the byte ranges the drive recorded as changed, so the cost of a
//! new local version follows the size of the edit, not of the file.

use std::ops::Range;

use crate::chunking::{ChunkerParams, Manifest, rechunk};
use crate::drive::{Drive, RecordedVersion};
use crate::protocol::NodeId;

use super::SyncError;

/// The manifest of file `node` at its recorded version `version`, given `prev`, the manifest
/// of the content before the version's changed ranges. `None` if the file changed again
/// meanwhile (or a writer is open): try again once it settles. On `Some`, the drive has
/// handed the version over.
pub fn take_version(
    drive: &Drive,
    node: NodeId,
    version: &RecordedVersion,
    prev: &Manifest,
    params: ChunkerParams,
) -> Result<Option<Manifest>, SyncError> {
    let file = drive.open_content(node)?;
    let len = file.metadata()?.len();
    let dirty: Vec<Range<u64>> = version.ranges.ranges().iter().map(|&(s, e)| s..e).collect();
    let manifest = rechunk(params, prev, &file, len, &dirty)?;
    // Only if nothing was written while we read does the manifest describe this version.
    if drive.take_pending_if(version.ino, version.number)? {
        Ok(Some(manifest))
    } else {
        Ok(None)
    }
}
