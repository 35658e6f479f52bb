//! Flow control between a session and the consumer of its UPDATEs.
//!
//! A peer can send a full table (a million prefixes, 25 MB) faster than the
//! RIB processes it. Decoded and queued, that table would cost several
//! times its wire size. With an [`UpdateBacklog`] the session counts the
//! UPDATEs it has handed over and the consumer counts those it has
//! processed; while `limit` are outstanding the session stops reading the
//! socket, so the rest waits in the kernel's buffers and TCP flow control
//! slows the peer (what a single-threaded BGP daemon gets by reading only as
//! fast as it works). Timers keep running meanwhile: KEEPALIVEs still go
//! out, and the pause lasts only as long as the consumer needs for `limit`
//! UPDATEs.

use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Notify;

/// Received UPDATEs not yet processed (see the module doc).
#[derive(Debug)]
pub struct UpdateBacklog {
    outstanding: AtomicUsize,
    limit: usize,
    below_limit: Notify,
}

impl UpdateBacklog {
    /// At most `limit` (at least 1) UPDATEs outstanding.
    pub fn new(limit: usize) -> Self {
        UpdateBacklog {
            outstanding: AtomicUsize::new(0),
            limit: limit.max(1),
            below_limit: Notify::new(),
        }
    }

    /// The consumer has processed (or dropped) one UPDATE the session
    /// handed over.
    pub fn processed(&self) {
        let before = self
            .outstanding
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(1))
            })
            .unwrap_or(0);
        if before == self.limit {
            // Stores a permit if the session is not waiting yet.
            self.below_limit.notify_one();
        }
    }

    /// UPDATEs handed over and not processed yet.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Acquire)
    }

    pub(crate) fn handed_over(&self) {
        self.outstanding.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn is_full(&self) -> bool {
        self.outstanding() >= self.limit
    }

    /// Returns once fewer than `limit` UPDATEs are outstanding.
    pub(crate) async fn wait_below_limit(&self) {
        while self.is_full() {
            self.below_limit.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn waits_until_the_consumer_catches_up() {
        let backlog = Arc::new(UpdateBacklog::new(2));
        backlog.handed_over();
        assert!(!backlog.is_full());
        backlog.handed_over();
        assert!(backlog.is_full());
        let waiter = {
            let b = backlog.clone();
            tokio::spawn(async move { b.wait_below_limit().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "returned while full");
        backlog.processed();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken once below the limit")
            .unwrap();
        assert_eq!(backlog.outstanding(), 1);
        // More acknowledgements than UPDATEs do not wrap around.
        backlog.processed();
        backlog.processed();
        assert_eq!(backlog.outstanding(), 0);
    }
}
