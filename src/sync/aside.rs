//! Files whose content this device could not rebuild from what the server sent (a chunk
//! the server does not serve, or one that does not match its manifest): each is set aside,
//! so the rest of the volume keeps syncing, and tried again with backoff.
//!
//! While a file waits, its new content stays out of the plan on both sides, as a file being
//! written does: the local tree keeps what it has, a new file does not appear yet, and the
//! synced tree never claims content this device does not hold. A newer version of the file
//! from the server ends the wait at once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::engine::doubling;
use super::plan::{Content, Tree};
use crate::chunking::ManifestId;
use crate::protocol::NodeId;

/// First pause before a set-aside file is tried again; it doubles with each failure...
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// ...up to this. Content does not mend itself: a new version of the file ends the wait.
const LAST_RETRY: Duration = Duration::from_secs(300);

/// One file set aside, as `status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AsideFile {
    /// Its path in the volume, as the server's tree has it.
    pub path: String,
    /// Why its content could not be rebuilt (the last attempt's error).
    pub reason: String,
    /// Attempts that failed so far.
    pub attempts: u32,
    /// Time until the next attempt, in milliseconds.
    pub retry_in_ms: u64,
}

#[derive(Debug)]
struct Waiting {
    /// The remote content that could not be rebuilt.
    content: ManifestId,
    reason: String,
    attempts: u32,
    retry_at: Instant,
}

/// The files set aside, by node.
#[derive(Debug, Default)]
pub struct Aside {
    files: HashMap<NodeId, Waiting>,
}

impl Aside {
    /// Sets `node` aside: its remote content `content` failed to rebuild for `reason`. A
    /// file that failed before with the same content waits twice as long as last time.
    pub fn set(&mut self, node: NodeId, content: ManifestId, reason: String, now: Instant) {
        let attempts = match self.files.get(&node) {
            Some(w) if w.content == content => w.attempts.saturating_add(1),
            _ => 1,
        };
        let pause = doubling(FIRST_RETRY, attempts - 1, LAST_RETRY);
        tracing::warn!(
            %node,
            attempts,
            retry_in_s = pause.as_secs(),
            "content cannot be rebuilt, set aside: {reason}"
        );
        self.files.insert(
            node,
            Waiting {
                content,
                reason,
                attempts,
                retry_at: now + pause,
            },
        );
    }

    /// Forgets the files whose wait is over for good: the server's tree has other content for
    /// them (or none), or this device holds the content now.
    pub fn settle(&mut self, remote: &Tree, holds: impl Fn(NodeId, &ManifestId) -> bool) {
        self.files.retain(|node, w| {
            let still = matches!(
                remote.get(*node).map(|e| &e.content),
                Some(Content::File { manifest_id, .. }) if *manifest_id == w.content
            ) && !holds(*node, &w.content);
            if !still {
                tracing::info!(%node, "a set-aside file is no longer waiting");
            }
            still
        });
    }

    /// Every file set aside.
    pub fn nodes(&self) -> Vec<NodeId> {
        self.files.keys().copied().collect()
    }

    /// The files still waiting at `now` (their next attempt not due yet).
    pub fn waiting(&self, now: Instant) -> impl Iterator<Item = NodeId> + '_ {
        self.files
            .iter()
            .filter(move |(_, w)| w.retry_at > now)
            .map(|(node, _)| *node)
    }

    /// Time until the next attempt falls due, if any file waits.
    pub fn next_retry(&self, now: Instant) -> Option<Duration> {
        self.files
            .values()
            .map(|w| w.retry_at.saturating_duration_since(now))
            .min()
    }

    /// What `status` shows, paths from `remote`, sorted by path.
    pub fn report(&self, remote: &Tree, now: Instant) -> Vec<AsideFile> {
        let mut out: Vec<AsideFile> = self
            .files
            .iter()
            .map(|(node, w)| AsideFile {
                path: remote.path_of(*node).unwrap_or_else(|| node.to_string()),
                reason: w.reason.clone(),
                attempts: w.attempts,
                retry_in_ms: u64::try_from(w.retry_at.saturating_duration_since(now).as_millis())
                    .unwrap_or(u64::MAX),
            })
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }
}

/// Keeps `node`'s remote content out of a plan: `remote` and `local` get the synced
/// content back, and a node the synced tree lacks (a new file) leaves `remote`.
pub fn keep_out(node: NodeId, synced: &Tree, remote: &mut Tree, local: &mut Tree) {
    match synced.get(node).map(|e| e.content.clone()) {
        Some(content) => {
            // Absent on either side, there is no content to keep out there.
            let _ = remote.set_content(node, content.clone());
            let _ = local.set_content(node, content);
        }
        None => {
            if remote.child_count(node) == 0 {
                let _ = remote.remove(node);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_of_the_same_content_doubles_the_wait_and_new_content_ends_it() {
        let mut aside = Aside::default();
        let node = NodeId::random();
        let (bad, good) = (
            ManifestId::from_bytes([1; 32]),
            ManifestId::from_bytes([2; 32]),
        );
        let t0 = Instant::now();
        let mut waits = Vec::new();
        for _ in 0..12 {
            aside.set(node, bad, "chunk 0 is 16 bytes".into(), t0);
            waits.push(aside.next_retry(t0).unwrap().as_secs());
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(aside.waiting(t0).collect::<Vec<_>>(), [node]);
        assert!(aside.waiting(t0 + LAST_RETRY).next().is_none(), "due");
        // Other content for the node starts over.
        aside.set(node, good, "again".into(), t0);
        assert_eq!(aside.next_retry(t0), Some(FIRST_RETRY));
        assert_eq!(aside.report(&Tree::new(), t0)[0].attempts, 1);
        // The server's tree no longer has that content: nothing waits.
        aside.settle(&Tree::new(), |_, _| false);
        assert_eq!(aside.next_retry(t0), None);
    }
}
