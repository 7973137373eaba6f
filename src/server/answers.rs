//! Buffers for batched chunk downloads, used again once an answer has been sent.
//!
//! A batch answer is tens of MiB. Allocated afresh for every request, each 4 KiB page of it
//! costs a page fault and a zeroing: about half a CPU second per GiB served, on top of the
//! copy itself. A buffer goes back to the pool when the response body is dropped.

use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Bytes;

/// Answer buffers kept for reuse; at most `keep` of them wait idle.
#[derive(Debug)]
pub struct AnswerPool {
    idle: Mutex<Vec<Vec<u8>>>,
    keep: usize,
}

impl AnswerPool {
    /// A pool that keeps at most `keep` idle buffers.
    pub fn new(keep: usize) -> Arc<AnswerPool> {
        Arc::new(AnswerPool {
            idle: Mutex::new(Vec::new()),
            keep,
        })
    }

    /// An empty buffer, with the capacity of one used before if there is one.
    pub fn take(&self) -> Vec<u8> {
        self.lock().pop().unwrap_or_default()
    }

    /// The finished answer as response bytes that return `buf` to the pool when dropped.
    pub fn into_bytes(self: &Arc<Self>, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Lent {
            buf,
            pool: Arc::clone(self),
        })
    }

    fn give_back(&self, mut buf: Vec<u8>) {
        let mut idle = self.lock();
        if idle.len() < self.keep {
            buf.clear();
            idle.push(buf);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A buffer lent to a response body.
struct Lent {
    buf: Vec<u8>,
    pool: Arc<AnswerPool>,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sent_answer_returns_its_buffer_and_the_pool_stays_bounded() {
        let pool = AnswerPool::new(1);
        let mut first = pool.take();
        first.extend_from_slice(&[1u8; 4096]);
        let ptr = first.as_ptr();
        let bytes = pool.into_bytes(first);
        let copy = bytes.clone();
        assert_eq!(&bytes[..], &[1u8; 4096][..]);
        drop(bytes);
        assert!(pool.lock().is_empty(), "still lent while a clone lives");
        drop(copy);
        let again = pool.take();
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), ptr, "the same memory comes back");
        assert!(again.capacity() >= 4096);

        // Two answers back at once: only `keep` (1) of them stays.
        let (a, b) = (pool.into_bytes(vec![0; 10]), pool.into_bytes(vec![0; 10]));
        drop((a, b));
        assert_eq!(pool.lock().len(), 1);
    }
}
