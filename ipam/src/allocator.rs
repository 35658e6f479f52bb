//! The allocator: hands out addresses from blocks affine to a node, claims
//! new blocks, borrows, releases, and gives empty blocks back.
//!
//! Every write is compare-and-swap on the revision read; a conflict re-reads
//! and retries with bounded, jittered back-off (ARCHITECTURE.md principle
//! 3). Within one process, writers of one block also queue on a local lock
//! so they do not waste round trips conflicting with each other; the CAS is
//! still what keeps processes and machines apart.
//!
//! Write order (crash safety, docs/ipam.md):
//! - allocate: on sqlite and etcd, block allocation and handle count in one
//!   transaction (`block_writes`): nothing in between to crash in. On
//!   Kubernetes, handle count `+n` -> block allocation; a crash between the
//!   two leaves a handle that over-counts (harmless; `gc` trims it).
//! - release: block -> handle count `-n`. Same shape.
//! - claim: affinity `pending` -> block (affinity `host:NODE`) -> affinity
//!   `confirmed`. A crash leaves a pending affinity, with or without its
//!   block; `gc` confirms or deletes it.
//! - give back: affinity `pendingDeletion` -> delete block (CAS proves it
//!   is still empty) -> delete affinity. A crash leaves a
//!   `pendingDeletion` affinity; `gc` finishes or undoes it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use serde::Serialize;
use tracing::{debug, warn};

use crate::affinity::{AffinityState, BlockAffinity, BlockAffinitySpec};
use crate::block::{AllocationAttrs, BlockRelease, InUse, IpamBlockSpec, Lease, ReleaseCheck};
use crate::block_writes::{about_a_handle, backoff, BatchReply, BlockRequest, BlockWrites};
use crate::claim_ahead::ClaimsAhead;
use crate::codec::{decode, encode};
use crate::handle::IpamHandleSpec;
use crate::names::{affinity_name, cidr_name, handle_name, is_valid_object_name};
use crate::pool::{IpPool, IpPoolSpec, PoolError};
use crate::read_cache::ReadCache;
use crate::store::{
    write_one, Datastore, Kind, Object, Revision, StoreError, WatchEvent, WatchStream, Write,
};

/// How the allocator behaves.
#[derive(Debug, Clone)]
pub struct AllocatorConfig {
    /// Never hand out an address from another node's block.
    pub strict_affinity: bool,
    /// How long an emptied block stays affine to its node before
    /// [`Allocator::reclaim_empty_blocks`] gives it back to the pool.
    pub empty_block_grace: Duration,
    /// Attempts per compare-and-swap write before giving up.
    pub max_attempts: u32,
    /// First back-off after a conflict; doubles up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Serve the pools, node labels and node affinities of the allocation
    /// fast path from a watch-invalidated cache, and write blocks against
    /// the revision this allocator last saw (`read_cache`). Worth it in a
    /// long-lived allocator (the agent); a one-shot command turns it off
    /// to save opening the watches.
    pub cached_reads: bool,
    /// Claim a node's next block in the background when the free addresses
    /// of its affine blocks of one family fall below this fraction of a
    /// block (`claim_ahead`), so that no request waits for a claim. `0`
    /// turns it off; it needs `cached_reads` (what the allocator remembers
    /// of its blocks is what it counts).
    pub claim_ahead_below: f64,
}

impl Default for AllocatorConfig {
    fn default() -> Self {
        AllocatorConfig {
            strict_affinity: false,
            empty_block_grace: Duration::from_secs(300),
            max_attempts: 100,
            backoff_base: Duration::from_micros(500),
            backoff_max: Duration::from_millis(50),
            cached_reads: true,
            claim_ahead_below: 0.25,
        }
    }
}

/// The address families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// What can go wrong allocating or releasing.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IpamError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error("no enabled {family} pool selects node {node:?}")]
    NoPool { family: &'static str, node: String },
    #[error(
        "{family} pools are exhausted for node {node:?}: wanted {wanted}, found {found} free{hint}"
    )]
    Exhausted {
        family: &'static str,
        node: String,
        wanted: u32,
        found: u32,
        hint: &'static str,
    },
    #[error("{0} is not in any pool")]
    NotInPool(IpAddr),
    #[error("{ip} is already in use (handle {holder:?})")]
    InUse { ip: IpAddr, holder: Option<String> },
    #[error("{what}: still conflicting after {attempts} attempts")]
    TooManyConflicts { what: String, attempts: u32 },
    #[error("handle name {name:?} of {handle:?} is taken by handle {other:?}")]
    HandleCollision {
        handle: String,
        name: String,
        other: String,
    },
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// A request for addresses for one owner on one node.
#[derive(Debug, Clone, Default)]
pub struct AutoAssignRequest {
    /// The owner (e.g. `k8s-pod-network.<container id>.eth0`).
    pub handle: String,
    pub node: String,
    pub num_v4: u32,
    pub num_v6: u32,
    pub attrs: AllocationAttrs,
    /// Only these pools (by name); all when empty.
    pub pools: Vec<String>,
    /// The node's labels for pool `nodeSelector`s; when `None`, read from
    /// the node's `FelixNode` object (`labels`), empty if there is none.
    pub node_labels: Option<BTreeMap<String, String>>,
    /// What the addresses are for: only pools whose `allowedUses` lists it
    /// qualify (Calico's `IntendedUse`; pods are `Workload`, the default).
    pub intended_use: crate::pool::AllowedUse,
}

/// One pool's addresses on one node ([`Allocator::usage_of`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PoolUsage {
    /// The pool's CIDR (or the block's, for a block in no current pool).
    pub pool: IpNet,
    /// The node's affine blocks in the pool.
    pub blocks: usize,
    /// Addresses handed out from those blocks.
    pub in_use: usize,
    /// Addresses those blocks hold.
    pub capacity: usize,
}

/// Addresses given to one request. Addresses carry the host prefix length
/// (/32, /128), which is what a pod gets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Assigned {
    pub v4: Vec<IpNet>,
    pub v6: Vec<IpNet>,
    /// Every address with its block and sequence number.
    pub leases: Vec<Lease>,
}

/// A request for one specific address.
#[derive(Debug, Clone, Default)]
pub struct AssignIpRequest {
    pub ip: Option<IpAddr>,
    pub handle: String,
    pub node: String,
    pub attrs: AllocationAttrs,
}

/// A release of one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseRequest {
    pub ip: IpAddr,
    /// Release only if this handle holds it.
    pub handle: Option<String>,
    /// Release only if it still carries this sequence number.
    pub sequence: Option<u64>,
}

impl ReleaseRequest {
    pub fn ip(ip: IpAddr) -> ReleaseRequest {
        ReleaseRequest {
            ip,
            handle: None,
            sequence: None,
        }
    }
}

/// What happened to one released address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseOutcome {
    pub ip: IpAddr,
    #[serde(flatten)]
    pub outcome: BlockRelease,
}

/// A change to block affinities, for the node agent (BGP origination).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AffinityEvent {
    Put(BlockAffinity),
    Deleted { name: String, revision: Revision },
}

/// A stream of [`AffinityEvent`]s; ends with `Compacted` like the store's.
pub struct AffinityStream(WatchStream);

impl futures_core::Stream for AffinityStream {
    type Item = Result<AffinityEvent, StoreError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.as_mut().poll_next(cx).map(|item| {
            item.map(|r| {
                r.and_then(|event| match event {
                    WatchEvent::Put(obj) => Ok(AffinityEvent::Put(BlockAffinity {
                        spec: decode(&obj)?,
                        name: obj.name,
                    })),
                    WatchEvent::Deleted { name, revision, .. } => {
                        Ok(AffinityEvent::Deleted { name, revision })
                    }
                })
            })
        })
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn host_net(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

/// The block allocator over a [`Datastore`].
pub struct Allocator {
    store: Arc<dyn Datastore>,
    config: AllocatorConfig,
    /// Block locks, last-seen blocks and batched block writes.
    blocks: Arc<BlockWrites>,
    /// One lock per node for the slow path (fresh reads, claims): requests
    /// of one node that all find its blocks full claim one block between
    /// them, not one each.
    node_locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    cache: Arc<ReadCache>,
    /// The claims running in the background (`claim_ahead`).
    pub(crate) ahead: Arc<ClaimsAhead>,
}

/// Decodes handle object `obj` as `handle`'s: the id it stores must be
/// `handle` (a sanitized name could still be taken by another id), else
/// `HandleCollision`.
pub(crate) fn decode_handle(obj: &Object, handle: &str) -> Result<IpamHandleSpec, IpamError> {
    let spec: IpamHandleSpec = decode(obj)?;
    if spec.handle_id != handle {
        return Err(IpamError::HandleCollision {
            handle: handle.to_owned(),
            name: obj.name.clone(),
            other: spec.handle_id,
        });
    }
    Ok(spec)
}

/// The write that stores handle `name` as `spec` over revision `revision`:
/// its deletion once it counts nothing, else its update.
fn handle_write(
    name: String,
    revision: Revision,
    spec: &IpamHandleSpec,
) -> Result<Write, IpamError> {
    Ok(if spec.total() == 0 {
        Write::Delete {
            kind: Kind::IpamHandle,
            name,
            expected: revision,
        }
    } else {
        Write::Update {
            kind: Kind::IpamHandle,
            value: encode(Kind::IpamHandle, &name, spec)?,
            name,
            expected: revision,
        }
    })
}

/// What the allocation fast path reads from the cache: the pools, the
/// node's labels, the node's affinities.
type CachedView = (
    Arc<Vec<IpPool>>,
    BTreeMap<String, String>,
    Vec<BlockAffinity>,
);

impl Allocator {
    pub fn new(store: Arc<dyn Datastore>, config: AllocatorConfig) -> Allocator {
        Allocator {
            blocks: Arc::new(BlockWrites::new(Arc::clone(&store), config.clone())),
            store,
            config,
            node_locks: Arc::new(Mutex::new(HashMap::new())),
            cache: Arc::new(ReadCache::new()),
            ahead: Arc::new(ClaimsAhead::default()),
        }
    }

    /// Another handle on this allocator (the same store, caches, locks and
    /// claims), for a task of its own.
    pub(crate) fn shared(&self) -> Allocator {
        Allocator {
            store: Arc::clone(&self.store),
            config: self.config.clone(),
            blocks: Arc::clone(&self.blocks),
            node_locks: Arc::clone(&self.node_locks),
            cache: Arc::clone(&self.cache),
            ahead: Arc::clone(&self.ahead),
        }
    }

    pub(crate) fn forget_block(&self, name: &str) {
        self.blocks.forget(name);
    }

    /// Block locks, remembered blocks and batched writes.
    pub(crate) fn blocks_written(&self) -> &BlockWrites {
        &self.blocks
    }

    pub fn store(&self) -> &Arc<dyn Datastore> {
        &self.store
    }

    pub fn config(&self) -> &AllocatorConfig {
        &self.config
    }

    pub(crate) async fn backoff(&self, attempt: u32) {
        backoff(&self.config, attempt).await;
    }

    pub(crate) fn too_many(&self, what: impl Into<String>) -> IpamError {
        IpamError::TooManyConflicts {
            what: what.into(),
            attempts: self.config.max_attempts,
        }
    }

    async fn block_lock(&self, name: &str) -> tokio::sync::OwnedMutexGuard<()> {
        self.blocks.lock(name).await
    }

    pub(crate) async fn node_lock(&self, node: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = self
                .node_locks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(map.entry(node.to_owned()).or_default())
        };
        lock.lock_owned().await
    }

    // ----- pools --------------------------------------------------------

    /// Every pool, by name (read from the store).
    pub async fn pools(&self) -> Result<Vec<IpPool>, IpamError> {
        Ok(self.fresh_pools().await?.as_ref().clone())
    }

    /// The pools from the store, also kept for the fast path.
    async fn fresh_pools(&self) -> Result<Arc<Vec<IpPool>>, IpamError> {
        let epoch = self.cache.epoch(Kind::IpPool);
        let listing = self.store.list(Kind::IpPool, "").await?;
        let mut pools = Vec::with_capacity(listing.objects.len());
        for obj in &listing.objects {
            let spec: IpPoolSpec = decode(obj)?;
            spec.validate().map_err(|e| StoreError::Corrupt {
                kind: obj.kind,
                name: obj.name.clone(),
                reason: e.to_string(),
            })?;
            pools.push(IpPool {
                name: obj.name.clone(),
                spec,
            });
        }
        let pools = Arc::new(pools);
        if self.config.cached_reads {
            self.cache.put_pools(epoch, Arc::clone(&pools));
            self.cache
                .follow(&self.store, Kind::IpPool, listing.revision)
                .await;
        }
        Ok(pools)
    }

    /// The pools, from the cache when it is current.
    async fn current_pools(&self) -> Result<Arc<Vec<IpPool>>, IpamError> {
        match self.cache.pools() {
            Some(pools) => Ok(pools),
            None => self.fresh_pools().await,
        }
    }

    /// Creates a pool after checking it and that it overlaps no other,
    /// race-free against other creates through the pool index
    /// ([`crate::pool_index`]).
    pub async fn create_pool(&self, name: &str, spec: IpPoolSpec) -> Result<(), IpamError> {
        if !is_valid_object_name(name) {
            return Err(PoolError::BadName(name.to_owned()).into());
        }
        spec.validate()?;
        let created =
            crate::pool_index::create(self.store.as_ref(), &self.config, name, &spec).await;
        self.cache.invalidate(Kind::IpPool);
        created
    }

    /// Deletes a pool: refused while any of its blocks holds an address;
    /// its empty blocks and their affinities go with it, and its entry in
    /// the pool index. A name that only the index holds (a reservation
    /// left by an interrupted create or delete) has its entry removed.
    pub async fn delete_pool(&self, name: &str) -> Result<Vec<IpNet>, IpamError> {
        let obj = match self.store.get(Kind::IpPool, name).await {
            Ok(obj) => obj,
            Err(e @ StoreError::NotFound { .. }) => {
                return match crate::pool_index::forget_reservation(
                    self.store.as_ref(),
                    &self.config,
                    name,
                )
                .await?
                {
                    true => Ok(Vec::new()),
                    false => Err(e.into()),
                };
            }
            Err(e) => return Err(e.into()),
        };
        let spec: IpPoolSpec = decode(&obj)?;
        let blocks = self.blocks().await?;
        let mine: Vec<_> = blocks
            .into_iter()
            .filter(|(_, b)| spec.cidr.contains(&b.cidr))
            .collect();
        let used: usize = mine.iter().map(|(_, b)| b.in_use_count()).sum();
        if used > 0 {
            return Err(IpamError::Invalid(format!(
                "pool {name:?} ({}) still has {used} addresses in use; release them first",
                spec.cidr
            )));
        }
        let mut removed = Vec::new();
        for (_, block) in &mine {
            if self.give_back_block(block.cidr, true).await? {
                removed.push(block.cidr);
            }
        }
        let deleted =
            crate::pool_index::delete(self.store.as_ref(), &self.config, name, &obj.revision).await;
        self.cache.invalidate(Kind::IpPool);
        deleted.map(|()| removed)
    }

    pub(crate) async fn node_labels(
        &self,
        node: &str,
        given: &Option<BTreeMap<String, String>>,
    ) -> Result<BTreeMap<String, String>, IpamError> {
        if let Some(labels) = given {
            return Ok(labels.clone());
        }
        #[derive(serde::Deserialize)]
        struct NodeLabels {
            #[serde(default)]
            labels: BTreeMap<String, String>,
        }
        let epoch = self.cache.epoch(Kind::FelixNode);
        // A listing (not a get) for the revision the cache's watch starts at.
        let listing = self.store.list(Kind::FelixNode, node).await?;
        let labels = match listing.objects.iter().find(|o| o.name == node) {
            Some(obj) => decode::<NodeLabels>(obj)?.labels,
            None => BTreeMap::new(),
        };
        if self.config.cached_reads {
            self.cache.put_labels(node, epoch, labels.clone());
            self.cache
                .follow(&self.store, Kind::FelixNode, listing.revision)
                .await;
        }
        Ok(labels)
    }

    // ----- reading blocks and affinities --------------------------------

    /// Every block, decoded (a corrupt one is an error naming it).
    pub async fn blocks(&self) -> Result<Vec<(Object, IpamBlockSpec)>, IpamError> {
        let listing = self.store.list(Kind::IpamBlock, "").await?;
        listing
            .objects
            .into_iter()
            .map(|o| {
                let spec = IpamBlockSpec::from_object(&o)?;
                Ok((o, spec))
            })
            .collect()
    }

    fn affinity_prefix(node: &str) -> String {
        // Long node names are hashed into the affinity name; list all then.
        if node.len() + 48 > crate::names::MAX_NAME_LEN {
            String::new()
        } else {
            format!("{node}-")
        }
    }

    /// The affinities of `node` (any state) and the store revision they
    /// were read at, to watch from with [`Allocator::watch_affinities`].
    pub async fn affinities_of(
        &self,
        node: &str,
    ) -> Result<(Vec<BlockAffinity>, Revision), IpamError> {
        let epoch = self.cache.epoch(Kind::BlockAffinity);
        let listing = self
            .store
            .list(Kind::BlockAffinity, &Self::affinity_prefix(node))
            .await?;
        let mut out = Vec::new();
        for obj in &listing.objects {
            let spec: BlockAffinitySpec = decode(obj)?;
            if spec.node == node {
                out.push(BlockAffinity {
                    name: obj.name.clone(),
                    spec,
                });
            }
        }
        if self.config.cached_reads {
            self.cache.put_affinities(node, epoch, out.clone());
            self.cache
                .follow(&self.store, Kind::BlockAffinity, listing.revision.clone())
                .await;
        }
        Ok((out, listing.revision))
    }

    /// The blocks confirmed affine to `node`: what its agent originates.
    pub async fn blocks_affine_to(&self, node: &str) -> Result<Vec<IpNet>, IpamError> {
        Ok(self
            .affinities_of(node)
            .await?
            .0
            .into_iter()
            .filter(|a| a.spec.state == AffinityState::Confirmed)
            .map(|a| a.spec.cidr)
            .collect())
    }

    /// `node`'s address usage by pool: for each pool holding a block
    /// confirmed affine to `node`, the addresses in use and the size of
    /// those blocks (the agent's `felix_ipam_addresses_*` metrics). A block
    /// in no current pool is reported under its own CIDR; a block deleted
    /// since the affinities were read is skipped. The pools and the node's
    /// affinities come from the read cache when it is current (the agent
    /// asks every 10 s); the blocks are always read.
    pub async fn usage_of(&self, node: &str) -> Result<Vec<PoolUsage>, IpamError> {
        let affinities = match self.cache.affinities(node) {
            Some(affinities) => affinities,
            None => self.affinities_of(node).await?.0,
        };
        let blocks: Vec<IpNet> = affinities
            .into_iter()
            .filter(|a| a.spec.state == AffinityState::Confirmed)
            .map(|a| a.spec.cidr)
            .collect();
        let pools = self.current_pools().await?;
        let mut usage: BTreeMap<IpNet, PoolUsage> = BTreeMap::new();
        for cidr in blocks {
            let obj = match self.store.get(Kind::IpamBlock, &cidr_name(&cidr)).await {
                Ok(obj) => obj,
                Err(StoreError::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            let spec = IpamBlockSpec::from_object(&obj)?;
            let pool = pools
                .iter()
                .map(|p| p.spec.cidr.trunc())
                .find(|p| p.contains(&cidr))
                .unwrap_or(cidr);
            let entry = usage.entry(pool).or_insert(PoolUsage {
                pool,
                blocks: 0,
                in_use: 0,
                capacity: 0,
            });
            entry.blocks += 1;
            entry.in_use += spec.in_use_count();
            entry.capacity += spec.size();
        }
        Ok(usage.into_values().collect())
    }

    /// Affinity changes (all nodes) after `after` (from
    /// [`Allocator::affinities_of`]); filter by `spec.node`.
    pub async fn watch_affinities(
        &self,
        after: Option<&Revision>,
    ) -> Result<AffinityStream, IpamError> {
        Ok(AffinityStream(
            self.store.watch(Kind::BlockAffinity, after).await?,
        ))
    }

    // ----- handles ------------------------------------------------------

    /// The addresses `handle` holds, each with its block: read from its
    /// `IPAMHandle` (which names the blocks) and those blocks. Empty when
    /// the handle does not exist or its name belongs to another handle id.
    pub async fn holdings(&self, handle: &str) -> Result<Vec<(IpNet, InUse)>, IpamError> {
        let name = handle_name(handle);
        let obj = match self.store.get(Kind::IpamHandle, &name).await {
            Ok(obj) => obj,
            Err(StoreError::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let spec: IpamHandleSpec = decode(&obj)?;
        if spec.handle_id != handle {
            return Ok(Vec::new());
        }
        let mut held = Vec::new();
        for cidr in spec.block.keys() {
            let Ok(cidr) = cidr.parse::<IpNet>() else {
                continue;
            };
            let block = match self.store.get(Kind::IpamBlock, &cidr_name(&cidr)).await {
                Ok(obj) => IpamBlockSpec::from_object(&obj)?,
                Err(StoreError::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            held.extend(
                block
                    .in_use()
                    .into_iter()
                    .filter(|u| u.handle_id.as_deref() == Some(handle))
                    .map(|u| (cidr, u)),
            );
        }
        Ok(held)
    }

    /// Counts `n` more addresses of `handle` in `block` (written before the
    /// block itself).
    async fn handle_add(&self, handle: &str, block: &IpNet, n: u64) -> Result<(), IpamError> {
        let name = handle_name(handle);
        let cidr = block.to_string();
        // Most handles are new (a pod's first address): create it first
        // and read it only when it exists, which saves a round trip.
        for attempt in 0..self.config.max_attempts {
            let mut fresh = IpamHandleSpec {
                handle_id: handle.to_owned(),
                ..Default::default()
            };
            fresh.add(&cidr, n);
            let value = encode(Kind::IpamHandle, &name, &fresh)?;
            match self.store.create(Kind::IpamHandle, &name, value).await {
                Ok(_) => return Ok(()),
                Err(StoreError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            match self.store.get(Kind::IpamHandle, &name).await {
                // Deleted between the two calls: create it again.
                Err(StoreError::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
                Ok(obj) => {
                    let mut spec = decode_handle(&obj, handle)?;
                    spec.add(&cidr, n);
                    let value = encode(Kind::IpamHandle, &name, &spec)?;
                    match self
                        .store
                        .update(Kind::IpamHandle, &name, value, &obj.revision)
                        .await
                    {
                        Ok(_) => return Ok(()),
                        Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            self.backoff(attempt).await;
        }
        Err(self.too_many(format!("handle {handle:?}")))
    }

    /// The write that uncounts `handle`'s addresses in `block` (`n` of
    /// them; all with `None`), deleting the handle at zero, for a
    /// release's transaction with the block. `None` when there is nothing
    /// to write (the handle is gone or does not count the block); an error
    /// when the handle cannot be read or is another handle id's.
    async fn handle_uncount(
        &self,
        handle: &str,
        block: &IpNet,
        n: Option<u64>,
    ) -> Result<Option<Write>, IpamError> {
        let name = handle_name(handle);
        let obj = match self.store.get(Kind::IpamHandle, &name).await {
            Ok(obj) => obj,
            Err(StoreError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut spec = decode_handle(&obj, handle)?;
        let cidr = block.to_string();
        if !spec.block.contains_key(&cidr) {
            return Ok(None);
        }
        match n {
            Some(n) => spec.remove(&cidr, n),
            None => {
                spec.block.remove(&cidr);
            }
        }
        handle_write(name, obj.revision, &spec).map(Some)
    }

    /// Uncounts `n` addresses of `handle` in `block` (written after the
    /// block); deletes the handle at zero.
    async fn handle_remove(&self, handle: &str, block: &IpNet, n: u64) -> Result<(), IpamError> {
        let name = handle_name(handle);
        let cidr = block.to_string();
        for attempt in 0..self.config.max_attempts {
            let obj = match self.store.get(Kind::IpamHandle, &name).await {
                Ok(obj) => obj,
                Err(StoreError::NotFound { .. }) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            let mut spec = decode_handle(&obj, handle)?;
            spec.remove(&cidr, n);
            let write = handle_write(name.clone(), obj.revision, &spec)?;
            match write_one(self.store.as_ref(), write).await {
                Ok(()) | Err(StoreError::NotFound { .. }) => return Ok(()),
                Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            self.backoff(attempt).await;
        }
        Err(self.too_many(format!("handle {handle:?}")))
    }

    // ----- allocation ---------------------------------------------------

    /// Allocates up to `n` addresses in one block for `handle`; with
    /// `node`, only while the block is still affine to it. The block write
    /// is shared with the other requests for the block queued meanwhile
    /// (`block_writes`). On a store with transactions the handle is counted
    /// in that same write; elsewhere it is counted for `n` first (write
    /// order), outside the block's lock, and uncounted for what the block
    /// could not give.
    async fn allocate_in_block(
        &self,
        cidr: IpNet,
        n: u32,
        handle: &str,
        attrs: &AllocationAttrs,
        node: Option<&str>,
    ) -> Result<Vec<Lease>, IpamError> {
        let request = BlockRequest {
            n,
            handle: handle.to_owned(),
            attrs: attrs.clone(),
            node: node.map(str::to_owned),
        };
        if self.blocks.counts_handles() {
            return match self.blocks.allocate(cidr, request).await {
                BatchReply::Leases(leases) => Ok(leases),
                // Not written, or written with the handle's count: nothing
                // to undo either way.
                BatchReply::NotWritten(e) | BatchReply::Unknown(e) => Err(e),
            };
        }
        let counted = u64::from(n);
        self.handle_add(handle, &cidr, counted).await?;
        match self.blocks.allocate(cidr, request).await {
            BatchReply::Leases(leases) => {
                let extra = counted.saturating_sub(leases.len() as u64);
                if extra > 0 {
                    // Over-counting is harmless (docs/ipam.md): the leases
                    // are taken, so a failure here must not lose them.
                    if let Err(e) = self.handle_remove(handle, &cidr, extra).await {
                        warn!(handle, block = %cidr, error = %e, "handle keeps an over-count");
                    }
                }
                Ok(leases)
            }
            BatchReply::NotWritten(e) => {
                self.handle_remove(handle, &cidr, counted).await?;
                Err(e)
            }
            // Unknown outcome: keep the count (under-counting would leak).
            BatchReply::Unknown(e) => Err(e),
        }
    }

    /// Allocates `num_v4` IPv4 and `num_v6` IPv6 addresses for a handle on
    /// a node; all or nothing.
    ///
    /// First from the cached view (pools, node labels, node affinities;
    /// `read_cache`) and only the node's affine blocks that had room when
    /// last seen; whatever that cannot give is then looked for with fresh
    /// reads (full blocks read again), claiming and borrowing as needed.
    pub async fn auto_assign(&self, req: &AutoAssignRequest) -> Result<Assigned, IpamError> {
        let attrs = owner_attrs(&req.handle, &req.node, &req.attrs)?;
        let mut assigned = Assigned::default();
        let families = [(Family::V4, req.num_v4), (Family::V6, req.num_v6)];

        let mut from_cache: [Vec<Lease>; 2] = [Vec::new(), Vec::new()];
        let view = if self.config.cached_reads {
            Some(self.cached_view(req).await?)
        } else {
            None
        };
        if let Some((pools, labels, affinities)) = view {
            for (i, (family, n)) in families.into_iter().enumerate() {
                if n == 0 {
                    continue;
                }
                let eligible = eligible_pools(&pools, family, &labels, req);
                let got = self
                    .allocate_in_affine_blocks(
                        family,
                        n,
                        &req.handle,
                        &req.node,
                        &attrs,
                        &eligible,
                        &affinities,
                        false,
                    )
                    .await;
                match got {
                    Ok(leases) => from_cache[i] = leases,
                    Err(e) => {
                        let taken: Vec<Lease> = from_cache.concat();
                        self.roll_back(&req.handle, &taken).await;
                        return Err(e);
                    }
                }
            }
            let done = families
                .iter()
                .zip(&from_cache)
                .all(|((_, n), got)| got.len() == *n as usize);
            if done {
                for (family, leases) in [Family::V4, Family::V6].into_iter().zip(from_cache) {
                    push_leases(&mut assigned, family, leases);
                }
                self.claim_ahead_after(req, &pools, &labels, &assigned.leases);
                return Ok(assigned);
            }
        }

        // Both at once: independent reads, one round trip's wait.
        let (labels, pools) = futures_util::future::join(
            self.node_labels(&req.node, &req.node_labels),
            self.fresh_pools(),
        )
        .await;
        let pools = match (labels, pools) {
            (Ok(labels), Ok(pools)) => Ok((pools, labels)),
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        let (pools, labels) = match pools {
            Ok(x) => x,
            Err(e) => {
                let taken: Vec<Lease> = from_cache.concat();
                self.roll_back(&req.handle, &taken).await;
                return Err(e);
            }
        };
        for (i, (family, n)) in families.into_iter().enumerate() {
            let already = std::mem::take(&mut from_cache[i]);
            if n == 0 {
                continue;
            }
            let eligible = eligible_pools(&pools, family, &labels, req);
            let result = if eligible.is_empty() {
                self.roll_back(&req.handle, &already).await;
                Err(IpamError::NoPool {
                    family: family.name(),
                    node: req.node.clone(),
                })
            } else {
                self.assign_family(
                    family,
                    n,
                    &req.handle,
                    &req.node,
                    &attrs,
                    &eligible,
                    already,
                )
                .await
            };
            match result {
                Ok(leases) => push_leases(&mut assigned, family, leases),
                Err(e) => {
                    let mut taken = assigned.leases.clone();
                    taken.extend(from_cache.concat());
                    self.roll_back(&req.handle, &taken).await;
                    return Err(e);
                }
            }
        }
        self.claim_ahead_after(req, &pools, &labels, &assigned.leases);
        Ok(assigned)
    }

    /// Pools, labels and affinities of `req`'s node: from the cache, each
    /// part that is not cached read (and cached) on its own.
    async fn cached_view(&self, req: &AutoAssignRequest) -> Result<CachedView, IpamError> {
        let labels = match &req.node_labels {
            Some(given) => given.clone(),
            None => match self.cache.labels(&req.node) {
                Some(labels) => labels,
                None => self.node_labels(&req.node, &None).await?,
            },
        };
        let pools = self.current_pools().await?;
        let affinities = match self.cache.affinities(&req.node) {
            Some(affinities) => affinities,
            None => self.affinities_of(&req.node).await?.0,
        };
        Ok((pools, labels, affinities))
    }

    /// Whether block `cidr` may have room for `node` (affine to it, not
    /// full): as last seen (when `cached_reads` trusts that), else read now.
    async fn may_have_room(&self, cidr: &IpNet, node: &str) -> Result<bool, IpamError> {
        let name = cidr_name(cidr);
        if self.config.cached_reads {
            if let Some(room) = self.blocks.remembered_room(&name, node) {
                return Ok(room);
            }
        }
        Ok(self
            .blocks
            .refresh(&name)
            .await?
            .is_some_and(|spec| spec.has_room_for(node)))
    }

    /// Up to `n` addresses from the blocks `affinities` says are confirmed
    /// affine to `node` and lie in `pools` (each block re-checked when
    /// written). Blocks that were full (or another node's) when last seen
    /// are skipped unread; with `recheck_full`, they are read again when
    /// the others are not enough (before a caller claims a new block: an
    /// address may have been released by another process).
    #[allow(clippy::too_many_arguments)]
    async fn allocate_in_affine_blocks(
        &self,
        family: Family,
        n: u32,
        handle: &str,
        node: &str,
        attrs: &AllocationAttrs,
        pools: &[&IpPool],
        affinities: &[BlockAffinity],
        recheck_full: bool,
    ) -> Result<Vec<Lease>, IpamError> {
        let in_pools = |cidr: &IpNet| pools.iter().any(|p| p.spec.cidr.contains(cidr));
        let candidates: Vec<IpNet> = affinities
            .iter()
            .filter(|a| {
                a.spec.state == AffinityState::Confirmed
                    && Family::of(&a.spec.cidr) == family
                    && in_pools(&a.spec.cidr)
            })
            .map(|a| a.spec.cidr)
            .collect();
        let mut got: Vec<Lease> = Vec::new();
        let outcome = self
            .fill_from_affine_blocks(&candidates, n, handle, node, attrs, recheck_full, &mut got)
            .await;
        self.kept_or_rolled_back(handle, got, outcome).await
    }

    /// [`Self::allocate_in_affine_blocks`]'s two passes, adding to `got`
    /// until it holds `n`; on an error the caller gives back what `got`
    /// holds by then.
    #[allow(clippy::too_many_arguments)]
    async fn fill_from_affine_blocks(
        &self,
        candidates: &[IpNet],
        n: u32,
        handle: &str,
        node: &str,
        attrs: &AllocationAttrs,
        recheck_full: bool,
        got: &mut Vec<Lease>,
    ) -> Result<(), IpamError> {
        let remaining = |got: &Vec<Lease>| n - got.len() as u32;
        let mut full = Vec::new();
        for cidr in candidates {
            if remaining(got) == 0 {
                return Ok(());
            }
            if !self.may_have_room(cidr, node).await? {
                full.push(*cidr);
                continue;
            }
            got.extend(
                self.allocate_in_block(*cidr, remaining(got), handle, attrs, Some(node))
                    .await?,
            );
        }
        if remaining(got) == 0 || !recheck_full || !self.config.cached_reads {
            // Without `cached_reads` every block was just read.
            return Ok(());
        }
        // Read the full blocks again, all at once (the reads are
        // independent; one round trip's wait instead of one per block).
        let fresh = futures_util::future::join_all(
            full.iter()
                .map(|cidr| async move { (*cidr, self.blocks.refresh(&cidr_name(cidr)).await) }),
        )
        .await;
        for (cidr, spec) in fresh {
            if remaining(got) == 0 {
                break;
            }
            if !spec?.is_some_and(|s| s.has_room_for(node)) {
                continue;
            }
            got.extend(
                self.allocate_in_block(cidr, remaining(got), handle, attrs, Some(node))
                    .await?,
            );
        }
        Ok(())
    }

    /// `got` when `outcome` is a success; otherwise gives `got` back
    /// ([`Self::roll_back`]) and returns the error.
    async fn kept_or_rolled_back(
        &self,
        handle: &str,
        got: Vec<Lease>,
        outcome: Result<(), IpamError>,
    ) -> Result<Vec<Lease>, IpamError> {
        match outcome {
            Ok(()) => Ok(got),
            Err(e) => {
                self.roll_back(handle, &got).await;
                Err(e)
            }
        }
    }

    /// Gives back what a failed request took (best effort; what cannot be
    /// released here is found by `check` as an address of a dead owner).
    async fn roll_back(&self, handle: &str, leases: &[Lease]) {
        if leases.is_empty() {
            return;
        }
        let reqs: Vec<ReleaseRequest> = leases
            .iter()
            .map(|l| ReleaseRequest {
                ip: l.ip,
                handle: Some(handle.to_owned()),
                sequence: Some(l.sequence),
            })
            .collect();
        if let Err(e) = self.release_ips(&reqs).await {
            warn!(handle, error = %e, "rolling back a failed allocation failed");
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn assign_family(
        &self,
        family: Family,
        n: u32,
        handle: &str,
        node: &str,
        attrs: &AllocationAttrs,
        pools: &[&IpPool],
        already: Vec<Lease>,
    ) -> Result<Vec<Lease>, IpamError> {
        let mut got = already;
        let outcome = self
            .assign_family_into(&mut got, family, n, handle, node, attrs, pools)
            .await;
        self.kept_or_rolled_back(handle, got, outcome).await
    }

    /// [`Allocator::assign_family`] adding to `got`; the caller gives back
    /// `got` on failure.
    #[allow(clippy::too_many_arguments)]
    async fn assign_family_into(
        &self,
        got: &mut Vec<Lease>,
        family: Family,
        n: u32,
        handle: &str,
        node: &str,
        attrs: &AllocationAttrs,
        pools: &[&IpPool],
    ) -> Result<(), IpamError> {
        let in_pools = |cidr: &IpNet| pools.iter().any(|p| p.spec.cidr.contains(cidr));
        let remaining = |got: &Vec<Lease>| n - got.len() as u32;

        // The node's requests that get here together take turns, so that
        // the first claims a block and the others find it in step 0.
        let _node = self.node_lock(node).await;

        // 0. Blocks this allocator last saw affine to the node with room
        // (a block just claimed by a request of this node).
        if self.config.cached_reads {
            for cidr in self.blocks.remembered_with_room(node) {
                if remaining(got) == 0 || Family::of(&cidr) != family || !in_pools(&cidr) {
                    continue;
                }
                let leases = self
                    .allocate_in_block(cidr, remaining(got), handle, attrs, Some(node))
                    .await?;
                got.extend(leases);
            }
        }

        // 1. Blocks affine to the node (fresh list; full ones read again).
        if remaining(got) > 0 {
            let (affinities, _) = self.affinities_of(node).await?;
            let leases = self
                .allocate_in_affine_blocks(
                    family,
                    remaining(got),
                    handle,
                    node,
                    attrs,
                    pools,
                    &affinities,
                    true,
                )
                .await?;
            got.extend(leases);
        }

        // 2. Claim new blocks.
        let mut claims = 0u32;
        while remaining(got) > 0 && claims < self.config.max_attempts {
            claims += 1;
            let Some(cidr) = self.claim_free_block(node, pools).await? else {
                break;
            };
            let leases = self
                .allocate_in_block(cidr, remaining(got), handle, attrs, Some(node))
                .await?;
            got.extend(leases);
        }

        // 3. Borrow from other nodes' blocks.
        if remaining(got) > 0 && !self.config.strict_affinity {
            for (_, block) in self.blocks().await? {
                if remaining(got) == 0 {
                    break;
                }
                if Family::of(&block.cidr) != family
                    || !in_pools(&block.cidr)
                    || block.free() == 0
                    || block.affine_node() == Some(node)
                {
                    continue;
                }
                let leases = self
                    .allocate_in_block(block.cidr, remaining(got), handle, attrs, None)
                    .await?;
                if !leases.is_empty() {
                    debug!(block = %block.cidr, node, "borrowed from another node's block");
                }
                got.extend(leases);
            }
        }

        if remaining(got) > 0 {
            let found = got.len() as u32;
            return Err(IpamError::Exhausted {
                family: family.name(),
                node: node.to_owned(),
                wanted: n,
                found,
                hint: if self.config.strict_affinity {
                    " (strict affinity: no borrowing)"
                } else {
                    ""
                },
            });
        }
        Ok(())
    }

    /// Claims the first block of `pools` that does not exist yet for
    /// `node`; `None` when every block is taken.
    async fn claim_free_block(
        &self,
        node: &str,
        pools: &[&IpPool],
    ) -> Result<Option<IpNet>, IpamError> {
        let existing = self.block_names().await?;
        self.claim_first_free(node, pools, &existing).await
    }

    /// The names of every block in the store.
    pub(crate) async fn block_names(&self) -> Result<HashSet<String>, IpamError> {
        Ok(self
            .store
            .list_names(Kind::IpamBlock, "")
            .await?
            .into_iter()
            .collect())
    }

    /// Claims the first block of `pools` not named in `existing` for
    /// `node`; `None` when every block is taken.
    pub(crate) async fn claim_first_free(
        &self,
        node: &str,
        pools: &[&IpPool],
        existing: &HashSet<String>,
    ) -> Result<Option<IpNet>, IpamError> {
        for pool in pools {
            let Ok(subnets) = pool.spec.cidr.subnets(pool.spec.block_size) else {
                continue;
            };
            let mut tried = 0usize;
            for cidr in subnets {
                if existing.contains(&cidr_name(&cidr)) {
                    continue;
                }
                if self.claim_block(node, cidr).await? {
                    return Ok(Some(cidr));
                }
                // Lost a race for it: try the next one, a bounded number
                // of times per call.
                tried += 1;
                if tried > 16 {
                    break;
                }
            }
        }
        Ok(None)
    }

    /// Claims `cidr` for `node`; `false` when another node's block is
    /// already there. On a store with transactions the confirmed affinity
    /// and the block are one write ([`Self::claim_block_at_once`]);
    /// elsewhere, and to continue a claim cut short, three in a row:
    /// affinity pending -> block -> confirmed.
    async fn claim_block(&self, node: &str, cidr: IpNet) -> Result<bool, IpamError> {
        if self.store.transactional() {
            if let Some(claimed) = self.claim_block_at_once(node, cidr).await? {
                return Ok(claimed);
            }
        }
        self.claim_block_in_steps(node, cidr).await
    }

    /// Creates the confirmed affinity and the block in one transaction
    /// (`Datastore::write_all`): one write instead of three on the
    /// allocations' single writer (issue 4), and no `pending` affinity for
    /// `gc` after a crash. `Some(false)` when another node's block is
    /// there (nothing written); `None` when the affinity or a block of
    /// `node` is already there (a claim cut short, or a lost index entry):
    /// the caller continues in steps, which repairs either.
    async fn claim_block_at_once(
        &self,
        node: &str,
        cidr: IpNet,
    ) -> Result<Option<bool>, IpamError> {
        let aff_name = affinity_name(node, &cidr);
        let confirmed = BlockAffinitySpec {
            state: AffinityState::Confirmed,
            node: node.to_owned(),
            cidr,
        };
        let block_name = cidr_name(&cidr);
        let block = IpamBlockSpec::new(cidr, Some(node), now());
        let writes = vec![
            Write::Create {
                kind: Kind::BlockAffinity,
                value: encode(Kind::BlockAffinity, &aff_name, &confirmed)?,
                name: aff_name,
            },
            Write::Create {
                kind: Kind::IpamBlock,
                value: encode(Kind::IpamBlock, &block_name, &block)?,
                name: block_name.clone(),
            },
        ];
        let _guard = self.block_lock(&block_name).await;
        match self.store.write_all(writes).await {
            Ok(revisions) => {
                // Remembered: its first allocation writes it without a read.
                match revisions.get(1) {
                    Some(revision) => self.blocks.remember(&block_name, revision, &block),
                    None => self.blocks.forget(&block_name),
                }
                self.cache.invalidate(Kind::BlockAffinity);
                Ok(Some(true))
            }
            Err(StoreError::AlreadyExists {
                kind: Kind::IpamBlock,
                ..
            }) => {
                let theirs = match self.store.get(Kind::IpamBlock, &block_name).await {
                    Ok(obj) => IpamBlockSpec::from_object(&obj)?.affine_node() != Some(node),
                    // Given back meanwhile: try again in steps.
                    Err(StoreError::NotFound { .. }) => false,
                    Err(e) => return Err(e.into()),
                };
                Ok(if theirs { Some(false) } else { None })
            }
            Err(StoreError::AlreadyExists {
                kind: Kind::BlockAffinity,
                ..
            }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// [`Self::claim_block`] in three writes: affinity pending -> block ->
    /// confirmed (the order of docs/ipam.md "Write order").
    async fn claim_block_in_steps(&self, node: &str, cidr: IpNet) -> Result<bool, IpamError> {
        let aff_name = affinity_name(node, &cidr);
        let pending = BlockAffinitySpec {
            state: AffinityState::Pending,
            node: node.to_owned(),
            cidr,
        };
        let pending_revision = match self
            .store
            .create(
                Kind::BlockAffinity,
                &aff_name,
                encode(Kind::BlockAffinity, &aff_name, &pending)?,
            )
            .await
        {
            Ok(revision) => Some(revision),
            // Already there: left by a crashed claim of ours; go on.
            Err(StoreError::AlreadyExists { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let block_name = cidr_name(&cidr);
        let block = IpamBlockSpec::new(cidr, Some(node), now());
        let guard = self.block_lock(&block_name).await;
        match self
            .store
            .create(
                Kind::IpamBlock,
                &block_name,
                encode(Kind::IpamBlock, &block_name, &block)?,
            )
            .await
        {
            // Remembered: its first allocation writes it without a read.
            Ok(revision) => self.blocks.remember(&block_name, &revision, &block),
            Err(StoreError::AlreadyExists { .. }) => {
                let theirs = self.store.get(Kind::IpamBlock, &block_name).await;
                let ours = match &theirs {
                    Ok(obj) => IpamBlockSpec::from_object(obj)?.affine_node() == Some(node),
                    Err(_) => false,
                };
                if !ours {
                    self.delete_affinity_if(&aff_name, |s| s.state == AffinityState::Pending)
                        .await?;
                    self.cache.invalidate(Kind::BlockAffinity);
                    return Ok(false);
                }
            }
            Err(e) => return Err(e.into()),
        }
        drop(guard);
        // Confirm on the revision we created it at (no read); anything
        // else (ours from a crashed claim, changed since) reads first.
        let confirmed = BlockAffinitySpec {
            state: AffinityState::Confirmed,
            ..pending
        };
        let done = match &pending_revision {
            Some(revision) => self
                .store
                .update(
                    Kind::BlockAffinity,
                    &aff_name,
                    encode(Kind::BlockAffinity, &aff_name, &confirmed)?,
                    revision,
                )
                .await
                .is_ok(),
            None => false,
        };
        if !done {
            self.set_affinity_state(&aff_name, node, cidr, AffinityState::Confirmed)
                .await?;
        }
        self.cache.invalidate(Kind::BlockAffinity);
        Ok(true)
    }

    /// Writes an affinity's state, creating it if it is gone.
    pub(crate) async fn set_affinity_state(
        &self,
        name: &str,
        node: &str,
        cidr: IpNet,
        state: AffinityState,
    ) -> Result<(), IpamError> {
        let spec = BlockAffinitySpec {
            state,
            node: node.to_owned(),
            cidr,
        };
        let value = encode(Kind::BlockAffinity, name, &spec)?;
        for attempt in 0..self.config.max_attempts {
            let result = match self.store.get(Kind::BlockAffinity, name).await {
                Ok(obj) => self
                    .store
                    .update(Kind::BlockAffinity, name, value.clone(), &obj.revision)
                    .await
                    .map(|_| ()),
                Err(StoreError::NotFound { .. }) => self
                    .store
                    .create(Kind::BlockAffinity, name, value.clone())
                    .await
                    .map(|_| ()),
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    self.cache.invalidate(Kind::BlockAffinity);
                    return Ok(());
                }
                Err(
                    StoreError::Conflict { .. }
                    | StoreError::NotFound { .. }
                    | StoreError::AlreadyExists { .. },
                ) => {}
                Err(e) => return Err(e.into()),
            }
            self.backoff(attempt).await;
        }
        Err(self.too_many(format!("affinity {name:?}")))
    }

    /// Deletes an affinity if `pred` holds for its current spec.
    pub(crate) async fn delete_affinity_if(
        &self,
        name: &str,
        pred: impl Fn(&BlockAffinitySpec) -> bool,
    ) -> Result<bool, IpamError> {
        for attempt in 0..self.config.max_attempts {
            let obj = match self.store.get(Kind::BlockAffinity, name).await {
                Ok(obj) => obj,
                Err(StoreError::NotFound { .. }) => return Ok(false),
                Err(e) => return Err(e.into()),
            };
            // A corrupt affinity is deleted too: it is only an index.
            let keep = decode::<BlockAffinitySpec>(&obj).is_ok_and(|s| !pred(&s));
            if keep {
                return Ok(false);
            }
            match self
                .store
                .delete(Kind::BlockAffinity, name, &obj.revision)
                .await
            {
                Ok(()) => {
                    self.cache.invalidate(Kind::BlockAffinity);
                    return Ok(true);
                }
                Err(StoreError::NotFound { .. }) => return Ok(false),
                Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            self.backoff(attempt).await;
        }
        Err(self.too_many(format!("affinity {name:?}")))
    }

    /// Assigns one specific address (claiming its block for the node when
    /// no one has it yet).
    pub async fn assign_ip(&self, req: &AssignIpRequest) -> Result<Lease, IpamError> {
        let Some(ip) = req.ip else {
            return Err(IpamError::Invalid("no address given".into()));
        };
        let attrs = owner_attrs(&req.handle, &req.node, &req.attrs)?;
        let pools = self.pools().await?;
        let cidr = pools
            .iter()
            .find_map(|p| p.spec.block_of(ip))
            .ok_or(IpamError::NotInPool(ip))?;
        let name = cidr_name(&cidr);
        for attempt in 0..self.config.max_attempts {
            let guard = self.block_lock(&name).await;
            let obj = match self.store.get(Kind::IpamBlock, &name).await {
                Ok(obj) => obj,
                Err(StoreError::NotFound { .. }) => {
                    drop(guard);
                    self.claim_block(&req.node, cidr).await?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let mut spec = IpamBlockSpec::from_object(&obj)?;
            if let Some(holder) = spec.in_use_at(ip) {
                return Err(IpamError::InUse {
                    ip,
                    holder: holder.handle_id,
                });
            }
            self.handle_add(&req.handle, &cidr, 1).await?;
            let lease = spec
                .assign(ip, &req.handle, &attrs)
                .map_err(|holder| IpamError::InUse { ip, holder })?;
            let value = encode(Kind::IpamBlock, &name, &spec)?;
            match self
                .store
                .update(Kind::IpamBlock, &name, value, &obj.revision)
                .await
            {
                Ok(_) => return Ok(lease),
                Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {
                    self.handle_remove(&req.handle, &cidr, 1).await?;
                }
                Err(e) => return Err(e.into()),
            }
            drop(guard);
            self.backoff(attempt).await;
        }
        Err(self.too_many(format!("block {cidr}")))
    }

    // ----- release ------------------------------------------------------

    /// The block holding `ip`: from the pools, or by scanning the blocks
    /// when its pool is gone.
    async fn block_of(&self, ip: IpAddr, pools: &[IpPool]) -> Result<Option<IpNet>, IpamError> {
        if let Some(cidr) = pools.iter().find_map(|p| p.spec.block_of(ip)) {
            return Ok(Some(cidr));
        }
        let listing = self.store.list(Kind::IpamBlock, "").await?;
        for obj in &listing.objects {
            let spec = IpamBlockSpec::from_object(obj)?;
            if spec.cidr.contains(&ip) {
                return Ok(Some(spec.cidr));
            }
        }
        Ok(None)
    }

    /// Releases addresses. An address that is not allocated is a no-op
    /// (`NotAllocated`); one that is held by another allocation than the
    /// request names is `Refused` and left alone.
    pub async fn release_ips(
        &self,
        reqs: &[ReleaseRequest],
    ) -> Result<Vec<ReleaseOutcome>, IpamError> {
        let pools = self.current_pools().await?;
        let mut out = Vec::with_capacity(reqs.len());
        for req in reqs {
            let outcome = match self.block_of(req.ip, &pools).await? {
                None => BlockRelease::NotAllocated,
                Some(cidr) => self.release_in_block(cidr, req).await?,
            };
            out.push(ReleaseOutcome {
                ip: req.ip,
                outcome,
            });
        }
        Ok(out)
    }

    async fn release_in_block(
        &self,
        cidr: IpNet,
        req: &ReleaseRequest,
    ) -> Result<BlockRelease, IpamError> {
        let name = cidr_name(&cidr);
        let check = ReleaseCheck {
            handle: req.handle.clone(),
            sequence: req.sequence,
        };
        let _guard = self.block_lock(&name).await;
        let mut remembered = true;
        let mut attempt = 0;
        while attempt < self.config.max_attempts {
            let Some(read) = self.blocks.read(&name, remembered).await? else {
                return Ok(BlockRelease::NotAllocated);
            };
            let mut spec = read.spec.clone();
            let outcome = spec.release(req.ip, &check, now());
            let BlockRelease::Released { handle_id } = &outcome else {
                if read.remembered {
                    // Answer from what the store holds, not what we saw.
                    remembered = false;
                    continue;
                }
                return Ok(outcome);
            };
            // On sqlite and etcd the handle is uncounted in the block's
            // write; elsewhere (or when the handle cannot be read) after
            // it, in the order of docs/ipam.md.
            let (in_write, after) = match handle_id {
                None => (None, None),
                Some(h) if self.blocks.counts_handles() => {
                    match self.handle_uncount(h, &cidr, Some(1)).await {
                        Ok(write) => (write, None),
                        // Reported by the write after the block, as
                        // without transactions.
                        Err(_) => (None, Some(h)),
                    }
                }
                Some(h) => (None, Some(h)),
            };
            let written = self
                .blocks
                .write_with_handle(&name, &read, &spec, in_write)
                .await;
            match written {
                Ok(()) => {
                    if let Some(h) = after {
                        self.handle_remove(h, &cidr, 1).await?;
                    }
                    return Ok(outcome);
                }
                Err(e) if about_a_handle(&e) => {
                    // The handle changed since it was read: read it again
                    // (nothing was written; the block read still holds).
                    attempt += 1;
                    continue;
                }
                Err(StoreError::Conflict { .. }) if read.remembered => {
                    remembered = false;
                    continue;
                }
                Err(StoreError::Conflict { .. }) => {}
                Err(StoreError::NotFound { .. }) => return Ok(BlockRelease::NotAllocated),
                Err(e) => return Err(e.into()),
            }
            remembered = false;
            self.backoff(attempt).await;
            attempt += 1;
        }
        Err(self.too_many(format!("block {cidr}")))
    }

    /// Releases every address of `handle` and deletes the handle; returns
    /// the addresses released (empty when the handle held nothing).
    pub async fn release_by_handle(&self, handle: &str) -> Result<Vec<IpAddr>, IpamError> {
        let name = handle_name(handle);
        let mut released = Vec::new();
        for attempt in 0..self.config.max_attempts {
            let obj = match self.store.get(Kind::IpamHandle, &name).await {
                Ok(obj) => obj,
                Err(StoreError::NotFound { .. }) => return Ok(released),
                Err(e) => return Err(e.into()),
            };
            let spec = decode_handle(&obj, handle)?;
            for cidr_text in spec.block.keys() {
                let cidr: IpNet = cidr_text.parse().map_err(|_| StoreError::Corrupt {
                    kind: Kind::IpamHandle,
                    name: name.clone(),
                    reason: format!("block key {cidr_text:?} is not a CIDR"),
                })?;
                let (ips, handle_deleted) = self.release_handle_in_block(cidr, handle).await?;
                released.extend(ips);
                if handle_deleted {
                    // Its last block's transaction deleted it.
                    return Ok(released);
                }
            }
            match self
                .store
                .delete(Kind::IpamHandle, &name, &obj.revision)
                .await
            {
                Ok(()) | Err(StoreError::NotFound { .. }) => return Ok(released),
                Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            self.backoff(attempt).await;
        }
        Err(self.too_many(format!("handle {handle:?}")))
    }

    /// Releases `handle`'s addresses in block `cidr`: the addresses, and
    /// whether the handle was deleted in the same transaction (this was
    /// its last block).
    pub(crate) async fn release_handle_in_block(
        &self,
        cidr: IpNet,
        handle: &str,
    ) -> Result<(Vec<IpAddr>, bool), IpamError> {
        let name = cidr_name(&cidr);
        let _guard = self.block_lock(&name).await;
        let mut remembered = true;
        let mut attempt = 0;
        while attempt < self.config.max_attempts {
            let Some(read) = self.blocks.read(&name, remembered).await? else {
                return Ok((Vec::new(), false));
            };
            let mut spec = read.spec.clone();
            let ips = spec.release_handle(handle, now());
            if ips.is_empty() {
                if read.remembered {
                    remembered = false;
                    continue;
                }
                return Ok((ips, false));
            }
            // On sqlite and etcd the handle forgets the block in the
            // block's write (deleted when it was its last); elsewhere the
            // caller deletes the handle after its blocks.
            let uncount = if self.blocks.counts_handles() {
                self.handle_uncount(handle, &cidr, None)
                    .await
                    .ok()
                    .flatten()
            } else {
                None
            };
            let deletes_handle = matches!(uncount, Some(Write::Delete { .. }));
            let written = self
                .blocks
                .write_with_handle(&name, &read, &spec, uncount)
                .await;
            match written {
                Ok(()) => return Ok((ips, deletes_handle)),
                Err(e) if about_a_handle(&e) => {
                    attempt += 1;
                    continue;
                }
                Err(StoreError::Conflict { .. }) if read.remembered => {
                    remembered = false;
                    continue;
                }
                Err(StoreError::Conflict { .. }) => {}
                Err(StoreError::NotFound { .. }) => return Ok((Vec::new(), false)),
                Err(e) => return Err(e.into()),
            }
            remembered = false;
            self.backoff(attempt).await;
            attempt += 1;
        }
        Err(self.too_many(format!("block {cidr}")))
    }

    // ----- giving blocks back -------------------------------------------

    /// Gives back every block that has been empty for longer than the
    /// grace period after it was used; returns their CIDRs. A block never
    /// used since its claim (one claimed ahead, `claim_ahead`) stays: it is
    /// its node's next block.
    pub async fn reclaim_empty_blocks(&self) -> Result<Vec<IpNet>, IpamError> {
        let grace = self.config.empty_block_grace.as_secs();
        let now = now();
        let mut out = Vec::new();
        for (_, block) in self.blocks().await? {
            if !emptied_since(&block, now, grace) {
                continue;
            }
            if self.give_back_block(block.cidr, false).await? {
                out.push(block.cidr);
            }
        }
        Ok(out)
    }

    /// Gives an empty block back to its pool: affinity `pendingDeletion`
    /// -> delete the block (the CAS proves it is still empty) -> delete the
    /// affinity. `false` when it was in use after all. With `force`, the
    /// grace period is ignored.
    pub(crate) async fn give_back_block(
        &self,
        cidr: IpNet,
        force: bool,
    ) -> Result<bool, IpamError> {
        let name = cidr_name(&cidr);
        let _guard = self.block_lock(&name).await;
        let grace = self.config.empty_block_grace.as_secs();
        for attempt in 0..self.config.max_attempts {
            let obj = match self.store.get(Kind::IpamBlock, &name).await {
                Ok(obj) => obj,
                Err(StoreError::NotFound { .. }) => return Ok(false),
                Err(e) => return Err(e.into()),
            };
            let spec = IpamBlockSpec::from_object(&obj)?;
            if !spec.is_empty() || !(force || emptied_since(&spec, now(), grace)) {
                return Ok(false);
            }
            let node = spec.affine_node().map(str::to_owned);
            let aff_name = node.as_deref().map(|n| affinity_name(n, &cidr));
            if let (Some(aff), Some(n)) = (&aff_name, &node) {
                self.set_affinity_state(aff, n, cidr, AffinityState::PendingDeletion)
                    .await?;
            }
            match self
                .store
                .delete(Kind::IpamBlock, &name, &obj.revision)
                .await
            {
                Ok(()) | Err(StoreError::NotFound { .. }) => {
                    self.forget_block(&name);
                    if let Some(aff) = &aff_name {
                        self.delete_affinity_if(aff, |_| true).await?;
                    }
                    return Ok(true);
                }
                Err(StoreError::Conflict { .. }) => {
                    // Someone allocated meanwhile: the block stays theirs.
                    if let (Some(aff), Some(n)) = (&aff_name, &node) {
                        self.set_affinity_state(aff, n, cidr, AffinityState::Confirmed)
                            .await?;
                    }
                }
                Err(e) => return Err(e.into()),
            }
            self.backoff(attempt).await;
        }
        Err(self.too_many(format!("block {cidr}")))
    }
}
/// Whether `block` has been empty for `grace` seconds at `now` after it was
/// used (a block that never held an address has sequence number 0).
fn emptied_since(block: &IpamBlockSpec, now: u64, grace: u64) -> bool {
    block.is_empty()
        && block.sequence_number > 0
        && block
            .empty_since
            .is_some_and(|t| now.saturating_sub(t) >= grace)
}

/// Checks the owner of a request (a handle id, a valid node name) and gives
/// the attributes to store with its addresses, naming the node when the
/// caller did not.
fn owner_attrs(
    handle: &str,
    node: &str,
    attrs: &AllocationAttrs,
) -> Result<AllocationAttrs, IpamError> {
    if handle.is_empty() {
        return Err(IpamError::Invalid("empty handle id".into()));
    }
    if !is_valid_object_name(node) {
        return Err(IpamError::Invalid(format!(
            "node {node:?} is not a valid Kubernetes node name"
        )));
    }
    let mut attrs = attrs.clone();
    if attrs.node.is_none() {
        attrs.node = Some(node.to_string());
    }
    Ok(attrs)
}

fn push_leases(assigned: &mut Assigned, family: Family, leases: Vec<Lease>) {
    for lease in leases {
        match family {
            Family::V4 => assigned.v4.push(host_net(lease.ip)),
            Family::V6 => assigned.v6.push(host_net(lease.ip)),
        }
        assigned.leases.push(lease);
    }
}

/// The pools of `family` a request for a node with `labels` may use
/// (enabled, allowing the request's use, selecting the node, in the
/// request's pool filter).
pub(crate) fn eligible_pools<'a>(
    pools: &'a [IpPool],
    family: Family,
    labels: &BTreeMap<String, String>,
    req: &AutoAssignRequest,
) -> Vec<&'a IpPool> {
    pools
        .iter()
        .filter(|p| {
            (req.pools.is_empty() || req.pools.contains(&p.name))
                && Family::of(&p.spec.cidr) == family
                && !p.spec.disabled
                && p.spec.allowed_uses.contains(&req.intended_use)
                && p.spec.selects(labels)
        })
        .collect()
}
