//! Kernel backing-file ids for FUSE passthrough: one per inode while any handle uses it.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, Weak};

use fuser::BackingId;

use crate::drive::Ino;

/// The kernel requires every passthrough open of an inode to reuse one backing id while
/// any of them is open; the id is closed when its last handle is released.
#[derive(Debug, Default)]
pub struct BackingIds {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_handle: HashMap<u64, Arc<BackingId>>,
    by_inode: HashMap<Ino, Weak<BackingId>>,
}

impl BackingIds {
    /// The backing id of `ino`, registering it with `open` if no handle holds one, now also
    /// held by handle `fh`.
    pub fn get_or_open(
        &self,
        ino: Ino,
        fh: u64,
        open: impl FnOnce() -> io::Result<BackingId>,
    ) -> io::Result<Arc<BackingId>> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let id = match inner.by_inode.get(&ino).and_then(Weak::upgrade) {
            Some(id) => id,
            None => {
                let id = Arc::new(open()?);
                inner.by_inode.insert(ino, Arc::downgrade(&id));
                id
            }
        };
        inner.by_handle.insert(fh, Arc::clone(&id));
        Ok(id)
    }

    /// Drops handle `fh`'s hold; the last one closes the id in the kernel.
    pub fn release(&self, fh: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.by_handle.remove(&fh);
        inner.by_inode.retain(|_, weak| weak.strong_count() > 0);
    }
}
