//! Long-poll wake-ups: one watch channel per volume carrying its latest committed seq.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use tokio::sync::watch;

use super::meta::VolumeId;
use crate::protocol::Seq;

/// Wakes the long-polls of a volume when a commit lands in it.
#[derive(Debug, Default)]
pub struct Notifier {
    heads: Mutex<HashMap<VolumeId, watch::Sender<Seq>>>,
}

impl Notifier {
    /// A receiver that changes after every later commit to `vol`. Subscribe before reading
    /// the change log, so a commit between the read and the wait is not missed.
    pub fn subscribe(&self, vol: VolumeId) -> watch::Receiver<Seq> {
        let mut heads = self.heads.lock().unwrap_or_else(PoisonError::into_inner);
        heads
            .entry(vol)
            .or_insert_with(|| watch::channel(Seq(0)).0)
            .subscribe()
    }

    /// Tells the waiters of `vol` that `seq` is committed.
    pub fn committed(&self, vol: VolumeId, seq: Seq) {
        let mut heads = self.heads.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = heads.get(&vol) {
            if tx.receiver_count() == 0 {
                heads.remove(&vol);
                return;
            }
            tx.send_if_modified(|head| {
                if seq > *head {
                    *head = seq;
                    true
                } else {
                    false
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_commit_wakes_subscribers_of_its_volume_only() {
        let n = Notifier::default();
        let mut a = n.subscribe(VolumeId(1));
        let mut b = n.subscribe(VolumeId(2));
        n.committed(VolumeId(1), Seq(5));
        a.changed().await.unwrap();
        assert_eq!(*a.borrow(), Seq(5));
        assert!(!b.has_changed().unwrap());
        // An older seq arriving late does not move the head back.
        n.committed(VolumeId(1), Seq(4));
        assert!(!a.has_changed().unwrap());
        n.committed(VolumeId(2), Seq(1));
        b.changed().await.unwrap();
    }
}
