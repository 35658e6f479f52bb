//! Claiming a node's next block before its blocks fill (claim ahead).
//!
//! A claim is a datastore write (on sqlite and etcd the confirmed affinity
//! and the block in one transaction; on Kubernetes three in a row,
//! affinity `pending` -> block -> affinity `confirmed`, docs/ipam.md
//! "Write order") plus the reads that decide it. With /26 blocks one allocation in 64 used to make
//! one on its critical path, which put claims in the allocation latency's
//! 99th percentile; with many requests of one node at once, all of them
//! waited for it. So when a request leaves the node's affine blocks of a
//! family with fewer free addresses than [`AllocatorConfig::claim_ahead_below`]
//! of a block, the allocator claims the node's next block in a task of its
//! own, and the requests that follow find it ready.
//!
//! - The claim is the same claim as a request's own (same write order, same
//!   crash states, repaired by `gc` the same way); it only runs earlier.
//! - At most one runs per (node, family) in an allocator. It takes the node's
//!   lock, like a request that found the node's blocks full, so a request
//!   arriving meanwhile waits for it and then uses the block it claimed
//!   instead of claiming another; under the lock it counts the node's free
//!   addresses again from fresh affinities (another allocator may have
//!   claimed) and claims only if they are still short.
//! - It never borrows and never takes a pool's last blocks: it claims only
//!   while at least a quarter of the eligible pools' blocks (and at least
//!   two) are unclaimed, so in a pool running short the blocks stay for the
//!   nodes that have none, and exhaustion, borrowing and strict affinity
//!   behave as without it. After finding no block to spare it rests for
//!   [`REST_WHEN_SHORT`] before trying again for that node and family.
//! - An error is logged; the next request that finds the node short tries
//!   again. A request that finds the node's blocks full before the claim is
//!   done claims on its own path as before (waiting on the node lock first).
//! - A block claimed ahead and never used is not given back by
//!   `reclaim_empty_blocks` (only blocks emptied after use are); node
//!   removal and pool deletion give it back like any other block.
//!
//! [`AllocatorConfig::claim_ahead_below`]: crate::AllocatorConfig::claim_ahead_below

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tracing::{debug, warn};

use crate::affinity::AffinityState;
use crate::allocator::{eligible_pools, Allocator, AutoAssignRequest, Family, IpamError};
use crate::block::Lease;
use crate::names::{cidr_name, parse_cidr_name};
use crate::pool::IpPool;

/// How long a (node, family) whose pools had no block to spare is left
/// alone before a claim ahead is tried again.
pub const REST_WHEN_SHORT: Duration = Duration::from_secs(10);

type Key = (String, Family);

/// The claims ahead of one allocator.
#[derive(Default)]
pub(crate) struct ClaimsAhead {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Running: one claim per (node, family) at most; `true` when a
    /// request found the node short while it ran (it looks again when done,
    /// so no request's finding is lost).
    running: HashMap<Key, bool>,
    /// Found no block to spare: not tried again before then.
    resting: HashMap<Key, Instant>,
    /// The tasks, for [`Allocator::wait_for_claims_ahead`].
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What a claim ahead did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Claimed(IpNet),
    /// The node had enough free addresses after all.
    NotNeeded,
    /// The pools have no block to spare.
    Short,
}

impl ClaimsAhead {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks `key` running unless it is already (then it is asked to look
    /// again when done) or resting.
    fn try_start(&self, key: &Key) -> bool {
        let mut state = self.state();
        if let Some(again) = state.running.get_mut(key) {
            *again = true;
            return false;
        }
        if let Some(until) = state.resting.get(key) {
            if Instant::now() < *until {
                return false;
            }
            state.resting.remove(key);
        }
        state.running.insert(key.clone(), false);
        true
    }

    /// Ends a round of `key`'s claim: `true` when it must run again (a
    /// request found the node short meanwhile and it is not resting).
    fn finish(&self, key: &Key, rest: bool) -> bool {
        let mut state = self.state();
        if rest {
            state.running.remove(key);
            state
                .resting
                .insert(key.clone(), Instant::now() + REST_WHEN_SHORT);
            return false;
        }
        match state.running.get_mut(key) {
            Some(again) if *again => {
                *again = false;
                true
            }
            _ => {
                state.running.remove(key);
                false
            }
        }
    }
}

/// Addresses short of which a node gets its next block: `fraction` of the
/// smallest block of `pools`, at least one.
fn threshold(fraction: f64, pools: &[&IpPool]) -> usize {
    let block = pools.iter().map(|p| p.spec.block_len()).min().unwrap_or(0);
    ((f64::from(block) * fraction).ceil() as usize).max(1)
}

/// Whether `pools` have a block to spare for claiming ahead: at least a
/// quarter of their blocks, and at least two, not in `existing`.
fn pools_can_spare(pools: &[&IpPool], existing: &HashSet<String>) -> bool {
    let total: u128 = pools
        .iter()
        .map(|p| p.spec.block_count())
        .fold(0, u128::saturating_add);
    let claimed = existing
        .iter()
        .filter_map(|name| parse_cidr_name(name))
        .filter(|cidr| pools.iter().any(|p| p.spec.cidr.contains(cidr)))
        .count() as u128;
    let unclaimed = total.saturating_sub(claimed);
    unclaimed >= 2 && unclaimed >= total.div_ceil(4)
}

impl Allocator {
    fn claims_ahead_on(&self) -> bool {
        let c = self.config();
        c.cached_reads && c.claim_ahead_below > 0.0
    }

    /// After a request of `req.node` got `leases`: for each family it asked
    /// for, starts a claim ahead when the node's affine blocks in the
    /// request's pools (as this allocator remembers them) are short of
    /// free addresses. Cheap when the block just used has room: one look
    /// at it.
    pub(crate) fn claim_ahead_after(
        &self,
        req: &AutoAssignRequest,
        pools: &[IpPool],
        labels: &BTreeMap<String, String>,
        leases: &[Lease],
    ) {
        if !self.claims_ahead_on() {
            return;
        }
        for (family, n) in [(Family::V4, req.num_v4), (Family::V6, req.num_v6)] {
            if n == 0 {
                continue;
            }
            let eligible = eligible_pools(pools, family, labels, req);
            if eligible.is_empty() {
                continue;
            }
            let short_of = threshold(self.config().claim_ahead_below, &eligible);
            let last = leases.iter().rev().find(|l| Family::of(&l.block) == family);
            let room_in_last = last
                .and_then(|l| {
                    self.blocks_written()
                        .remembered_free(&cidr_name(&l.block), &req.node)
                })
                .unwrap_or(0);
            if room_in_last >= short_of {
                continue;
            }
            let in_pools = |cidr: &IpNet| {
                Family::of(cidr) == family && eligible.iter().any(|p| p.spec.cidr.contains(cidr))
            };
            let free = self
                .blocks_written()
                .remembered_free_of_node(&req.node, in_pools);
            if free >= short_of {
                continue;
            }
            let owned: Vec<IpPool> = eligible.into_iter().cloned().collect();
            self.start_claim_ahead(&req.node, family, owned);
        }
    }

    /// Starts the claim ahead for (`node`, `family`) unless one runs or
    /// rests; needs a tokio runtime (none: nothing happens).
    fn start_claim_ahead(&self, node: &str, family: Family, pools: Vec<IpPool>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let key = (node.to_owned(), family);
        if !self.ahead.try_start(&key) {
            return;
        }
        let me = self.shared();
        let task = runtime.spawn(async move {
            while me
                .ahead
                .finish(&key, me.claim_ahead_round(&key.0, family, &pools).await)
            {}
        });
        let mut state = self.ahead.state();
        state.tasks.retain(|t| !t.is_finished());
        state.tasks.push(task);
    }

    /// One claim ahead, logged; `true` when the pools were short (rest).
    async fn claim_ahead_round(&self, node: &str, family: Family, pools: &[IpPool]) -> bool {
        match self.claim_ahead(node, family, pools).await {
            Ok(Outcome::Claimed(cidr)) => {
                debug!(node, block = %cidr, "claimed ahead");
                false
            }
            Ok(Outcome::NotNeeded) => false,
            Ok(Outcome::Short) => {
                debug!(
                    node,
                    family = family.name(),
                    "no block to spare for a claim ahead"
                );
                true
            }
            Err(e) => {
                warn!(node, family = family.name(), error = %e, "claiming a block ahead failed; the next request tries again");
                false
            }
        }
    }

    /// The claim ahead itself: under the node's lock, counts the node's
    /// free addresses again (fresh affinities; blocks this allocator does
    /// not remember are read) and claims a block when they are still short
    /// and the pools can spare one.
    async fn claim_ahead(
        &self,
        node: &str,
        family: Family,
        pools: &[IpPool],
    ) -> Result<Outcome, IpamError> {
        let _node = self.node_lock(node).await;
        let pools: Vec<&IpPool> = pools.iter().collect();
        let short_of = threshold(self.config().claim_ahead_below, &pools);
        let in_pools = |cidr: &IpNet| {
            Family::of(cidr) == family && pools.iter().any(|p| p.spec.cidr.contains(cidr))
        };
        let (affinities, _) = self.affinities_of(node).await?;
        let mut free = 0;
        for aff in &affinities {
            if aff.spec.state != AffinityState::Confirmed || !in_pools(&aff.spec.cidr) {
                continue;
            }
            let name = cidr_name(&aff.spec.cidr);
            free += match self.blocks_written().remembered_free(&name, node) {
                Some(free) => free,
                None => self
                    .blocks_written()
                    .refresh(&name)
                    .await?
                    .filter(|spec| spec.affine_node() == Some(node))
                    .map_or(0, |spec| spec.free()),
            };
            if free >= short_of {
                return Ok(Outcome::NotNeeded);
            }
        }
        let existing = self.block_names().await?;
        if !pools_can_spare(&pools, &existing) {
            return Ok(Outcome::Short);
        }
        Ok(
            match self.claim_first_free(node, &pools, &existing).await? {
                Some(cidr) => Outcome::Claimed(cidr),
                None => Outcome::Short,
            },
        )
    }

    /// Waits until the claims ahead started so far (and any they lead to)
    /// have finished: for tests, and for a caller about to shut down that
    /// wants no claim cut short (a cut claim is only a `pending` affinity
    /// for `gc`, as after a crash).
    pub async fn wait_for_claims_ahead(&self) {
        loop {
            let tasks = std::mem::take(&mut self.ahead.state().tasks);
            if tasks.is_empty() {
                return;
            }
            for task in tasks {
                let _ = task.await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::pool::{parse_cidr, IpPoolSpec};

    fn pool(cidr: &str, block_size: u8) -> IpPool {
        let mut spec = IpPoolSpec::new(parse_cidr(cidr).unwrap());
        spec.block_size = block_size;
        IpPool {
            name: "p".into(),
            spec,
        }
    }

    #[test]
    fn threshold_is_a_fraction_of_the_smallest_block() {
        let big = pool("10.0.0.0/16", 26);
        let small = pool("10.1.0.0/24", 28);
        assert_eq!(threshold(0.25, &[&big]), 16);
        assert_eq!(threshold(0.25, &[&big, &small]), 4);
        assert_eq!(threshold(0.01, &[&small]), 1);
        let one = pool("10.2.0.0/24", 32);
        assert_eq!(threshold(0.25, &[&one]), 1);
    }

    #[test]
    fn a_pool_spares_a_block_only_while_a_quarter_and_two_are_left() {
        // 16 blocks of /28.
        let p = pool("10.0.0.0/24", 28);
        let names = |n: u8| -> HashSet<String> {
            (0..n)
                .map(|i| cidr_name(&format!("10.0.0.{}/28", i * 16).parse().unwrap()))
                .collect()
        };
        assert!(pools_can_spare(&[&p], &names(0)));
        assert!(pools_can_spare(&[&p], &names(12)));
        assert!(!pools_can_spare(&[&p], &names(13)));
        // Blocks of other pools and names that are not blocks do not count.
        let mut other = names(12);
        other.insert(cidr_name(&"10.9.0.0/28".parse().unwrap()));
        other.insert("garbage".into());
        assert!(pools_can_spare(&[&p], &other));
        // A pool of two blocks with one claimed keeps the other; a pool of
        // one block never spares it.
        assert!(!pools_can_spare(&[&pool("10.0.0.0/27", 28)], &names(1)));
        assert!(!pools_can_spare(&[&pool("10.0.0.0/28", 28)], &names(0)));
    }

    #[test]
    fn one_claim_per_node_and_family_and_a_rest_after_a_short_pool() {
        let ahead = ClaimsAhead::default();
        let k = ("n1".to_owned(), Family::V4);
        assert!(ahead.try_start(&k));
        assert!(!ahead.try_start(&k));
        assert!(ahead.try_start(&("n1".to_owned(), Family::V6)));
        assert!(ahead.try_start(&("n2".to_owned(), Family::V4)));
        // Asked again while running: one more round, then done.
        assert!(ahead.finish(&k, false));
        assert!(!ahead.finish(&k, false));
        assert!(ahead.try_start(&k));
        assert!(!ahead.finish(&k, true));
        assert!(!ahead.try_start(&k), "resting after a short pool");
    }
}
