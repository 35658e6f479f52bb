//! Cached reads for the allocation fast path: the pools, a node's labels
//! and a node's block affinities.
//!
//! An allocation used to read all three before touching a block; they
//! change rarely (an operator edits a pool, a node is relabelled, a block is
//! claimed or given back), so reading them every time cost three of an
//! allocation's seven round trips. Each kind is followed by one store watch
//! started from the revision of the listing that filled the cache; any event
//! of that kind bumps the kind's epoch, and an entry filled at an older epoch
//! is stale. A watch that ends (compaction, connection lost, runtime shut
//! down) turns caching off for its kind until the next fill lists again and
//! starts a new watch.
//!
//! Why this stays correct with other writers: the epoch is read *before* the
//! listing, so a change the listing missed has a later revision and is
//! delivered by the watch afterwards, bumping the epoch. What a cached entry
//! can be is *late* by the watch's delivery time (SQLite: its poll interval;
//! etcd: a round trip), the same kind of staleness as reading the pools just
//! before another client changed them. The block itself is never trusted
//! from here: every allocation re-checks the block's affinity and writes it
//! compare-and-swap on its revision (ARCHITECTURE.md principle 3), and the
//! allocator falls back to fresh reads whenever the cached view cannot
//! satisfy a request (before claiming a block or reporting exhaustion).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::StreamExt;
use tracing::debug;

use crate::affinity::BlockAffinity;
use crate::pool::IpPool;
use crate::store::{Datastore, Kind, Revision};

/// The state of the watch that follows one kind.
#[derive(Debug, Default)]
struct KindWatch {
    /// Bumped by every event of the kind and when the watch stops.
    epoch: AtomicU64,
    /// A watch task is running and delivering events.
    live: AtomicBool,
}

impl KindWatch {
    fn stop(&self) {
        self.live.store(false, Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }
}

/// Marks the watch stopped when the task ends in any way (stream ended,
/// aborted, or dropped with its runtime).
struct StopOnDrop(Arc<KindWatch>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// A value and the epoch of its kind when it was read.
struct Entry<T> {
    epoch: u64,
    value: T,
}

/// The cached reads of one [`crate::Allocator`].
pub(crate) struct ReadCache {
    watches: HashMap<Kind, Arc<KindWatch>>,
    /// Serialises (re)starting watches.
    starting: Mutex<Vec<tokio::task::AbortHandle>>,
    pools: Mutex<Option<Entry<Arc<Vec<IpPool>>>>>,
    labels: Mutex<HashMap<String, Entry<BTreeMap<String, String>>>>,
    affinities: Mutex<HashMap<String, Entry<Vec<BlockAffinity>>>>,
}

/// The kinds this cache follows.
const KINDS: [Kind; 3] = [Kind::IpPool, Kind::FelixNode, Kind::BlockAffinity];

impl ReadCache {
    pub(crate) fn new() -> ReadCache {
        ReadCache {
            watches: KINDS
                .iter()
                .map(|k| (*k, Arc::new(KindWatch::default())))
                .collect(),
            starting: Mutex::new(Vec::new()),
            pools: Mutex::new(None),
            labels: Mutex::new(HashMap::new()),
            affinities: Mutex::new(HashMap::new()),
        }
    }

    fn watch_of(&self, kind: Kind) -> Option<&Arc<KindWatch>> {
        self.watches.get(&kind)
    }

    /// The epoch to fill an entry of `kind` at: read before the store is.
    pub(crate) fn epoch(&self, kind: Kind) -> u64 {
        self.watch_of(kind)
            .map_or(0, |w| w.epoch.load(Ordering::SeqCst))
    }

    fn fresh(&self, kind: Kind, epoch: u64) -> bool {
        self.watch_of(kind).is_some_and(|w| {
            w.live.load(Ordering::SeqCst) && w.epoch.load(Ordering::SeqCst) == epoch
        })
    }

    /// Makes sure a watch follows `kind` from `revision` (the revision of a
    /// listing just read). Needs a tokio runtime; a no-op when one runs.
    pub(crate) async fn follow(&self, store: &Arc<dyn Datastore>, kind: Kind, revision: Revision) {
        let Some(watch) = self.watch_of(kind).cloned() else {
            return;
        };
        if watch.live.load(Ordering::SeqCst) {
            return;
        }
        // Open the stream before marking the kind live, so a failure to
        // watch leaves caching off.
        let stream = match store.watch(kind, Some(&revision)).await {
            Ok(stream) => stream,
            Err(e) => {
                debug!(%kind, error = %e, "cannot watch; reads of this kind stay uncached");
                return;
            }
        };
        let mut tasks = self.starting.lock().unwrap_or_else(PoisonError::into_inner);
        if watch.live.load(Ordering::SeqCst) {
            return; // another fill started one meanwhile
        }
        // Entries filled before this watch started are not covered by it.
        watch.epoch.fetch_add(1, Ordering::SeqCst);
        watch.live.store(true, Ordering::SeqCst);
        let guard = StopOnDrop(Arc::clone(&watch));
        let task = tokio::spawn(async move {
            let guard = guard;
            let mut stream = stream;
            while let Some(event) = stream.next().await {
                guard.0.epoch.fetch_add(1, Ordering::SeqCst);
                if let Err(e) = event {
                    debug!(%kind, error = %e, "cache watch ended");
                    break;
                }
            }
        });
        tasks.retain(|t| !t.is_finished());
        tasks.push(task.abort_handle());
    }

    pub(crate) fn pools(&self) -> Option<Arc<Vec<IpPool>>> {
        let slot = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        slot.as_ref()
            .filter(|e| self.fresh(Kind::IpPool, e.epoch))
            .map(|e| Arc::clone(&e.value))
    }

    pub(crate) fn put_pools(&self, epoch: u64, pools: Arc<Vec<IpPool>>) {
        *self.pools.lock().unwrap_or_else(PoisonError::into_inner) = Some(Entry {
            epoch,
            value: pools,
        });
    }

    pub(crate) fn labels(&self, node: &str) -> Option<BTreeMap<String, String>> {
        let map = self.labels.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(node)
            .filter(|e| self.fresh(Kind::FelixNode, e.epoch))
            .map(|e| e.value.clone())
    }

    pub(crate) fn put_labels(&self, node: &str, epoch: u64, labels: BTreeMap<String, String>) {
        let mut map = self.labels.lock().unwrap_or_else(PoisonError::into_inner);
        map.insert(
            node.to_owned(),
            Entry {
                epoch,
                value: labels,
            },
        );
    }

    pub(crate) fn affinities(&self, node: &str) -> Option<Vec<BlockAffinity>> {
        let map = self
            .affinities
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.get(node)
            .filter(|e| self.fresh(Kind::BlockAffinity, e.epoch))
            .map(|e| e.value.clone())
    }

    pub(crate) fn put_affinities(&self, node: &str, epoch: u64, affinities: Vec<BlockAffinity>) {
        let mut map = self
            .affinities
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.insert(
            node.to_owned(),
            Entry {
                epoch,
                value: affinities,
            },
        );
    }

    /// Forgets everything of `kind` (after this allocator wrote it itself,
    /// so that its next read sees its own write at once).
    pub(crate) fn invalidate(&self, kind: Kind) {
        if let Some(w) = self.watch_of(kind) {
            w.epoch.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Drop for ReadCache {
    fn drop(&mut self) {
        let tasks = self
            .starting
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        for task in tasks.drain(..) {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn an_entry_is_stale_without_a_live_watch_and_after_any_event() {
        let cache = ReadCache::new();
        let e = cache.epoch(Kind::IpPool);
        cache.put_pools(e, Arc::new(Vec::new()));
        // No watch follows the kind yet: nothing is served from the cache.
        assert!(cache.pools().is_none());
        let w = cache.watch_of(Kind::IpPool).unwrap();
        w.live.store(true, Ordering::SeqCst);
        assert!(cache.pools().is_some());
        // An event (or our own write) makes it stale.
        cache.invalidate(Kind::IpPool);
        assert!(cache.pools().is_none());
        // Refilled at the new epoch: served again; the watch stopping ends it.
        cache.put_pools(cache.epoch(Kind::IpPool), Arc::new(Vec::new()));
        assert!(cache.pools().is_some());
        w.stop();
        assert!(cache.pools().is_none());
    }
}
