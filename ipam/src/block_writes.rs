//! Block writes of one allocator: each block as this allocator last read or
//! wrote it, a per-block lock, and allocations for one block written
//! together (group commit).
//!
//! Every allocation is a compare-and-swap write of its whole block, so the
//! allocations of one node (its pods starting together) could only go one
//! after another: the eighth of eight waited for seven block writes. Now a
//! request joins its block's queue and at most one writer task per block
//! runs: it takes everything queued, reads the block once (or uses the copy
//! it last wrote), gives each request its addresses in queue order and
//! writes the block once. A request that arrives while a write is in flight
//! joins the next batch, as in a database's group commit of its log. The
//! writer is its own task, so a caller that gives up (its future dropped)
//! cannot leave the others of its batch without an answer.
//!
//! What stays as before: the write is compare-and-swap on the revision the
//! batch was computed from; a conflict re-reads and recomputes the whole
//! batch, with bounded, jittered back-off (ARCHITECTURE.md principle 3).
//!
//! Handles: on a store with transactions over several objects (sqlite,
//! etcd: [`Datastore::transactional`]) the batch writes the block and the
//! count of every handle it gave addresses to in one transaction
//! ([`Datastore::write_all`]), so an allocation is one write, shared with
//! its batch, instead of a handle write of its own followed by the block
//! write; a crash leaves either both or neither. A handle is first assumed
//! new (created); when it exists it is read and updated on its revision.
//! Elsewhere (Kubernetes) each request's handle is counted before the block
//! is written (the caller does that, docs/ipam.md "Write order").

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::oneshot;
use tracing::debug;

use crate::allocator::{decode_handle, AllocatorConfig, IpamError};
use crate::block::{AllocationAttrs, IpamBlockSpec, Lease};
use crate::codec::encode;
use crate::handle::IpamHandleSpec;
use crate::names::handle_name;
use crate::store::{Datastore, Kind, Revision, StoreError, Write};

/// Most requests one batch takes (an etcd transaction holds at most 128
/// operations by default: the block and one handle per request). A store
/// that refuses a batch's transaction as too large
/// ([`StoreError::TooManyWrites`], an etcd run with a lower
/// `--max-txn-ops`) halves this allocator's limit, down to one request.
const MAX_BATCH: usize = 64;

/// What a batch knows of a handle it counts (transactional stores).
#[derive(Debug, Clone)]
enum HandleState {
    /// Not stored (assumed until a write says otherwise): created.
    New,
    /// Stored at this revision: updated on it.
    Stored(Revision, IpamHandleSpec),
    /// Cannot be counted (its name is another handle's, it is corrupt, it
    /// could not be read): its requests fail, nothing written for them.
    Failed(IpamError),
}

/// One allocation request for a block.
pub(crate) struct BlockRequest {
    /// Addresses wanted (the request gets up to this many).
    pub n: u32,
    pub handle: String,
    pub attrs: AllocationAttrs,
    /// Only while the block is still affine to this node (`None`: any
    /// block, borrowing).
    pub node: Option<String>,
}

/// What one request of a batch got.
#[derive(Debug, Clone)]
pub(crate) enum BatchReply {
    /// These addresses; none when the block is full, gone, or no longer
    /// the node's.
    Leases(Vec<Lease>),
    /// Failed, and certainly nothing was written for it.
    NotWritten(IpamError),
    /// Failed, and the block write may or may not have been applied.
    Unknown(IpamError),
}

struct Queued {
    request: BlockRequest,
    reply: oneshot::Sender<BatchReply>,
}

#[derive(Default)]
struct Pending {
    requests: Vec<Queued>,
    /// A writer task is running for the block (it will take what is queued).
    writer: bool,
}

/// One block's lock and queue.
#[derive(Default)]
struct BlockQueue {
    /// Held by whoever reads, changes and writes the block in this process.
    lock: Arc<tokio::sync::Mutex<()>>,
    pending: Mutex<Pending>,
}

impl BlockQueue {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Ends a writer that stops before its queue is empty (dropped with its
/// runtime): whatever is still queued is answered by the dropped senders
/// (the callers see an error), and the next request starts a new writer.
struct WriterGuard {
    queue: Arc<BlockQueue>,
    /// The writer emptied the queue and cleared the flag itself.
    finished: bool,
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        if !self.finished {
            let mut pending = self.queue.pending();
            pending.writer = false;
            pending.requests.clear();
        }
    }
}

/// A block read for a write: its revision, its spec, and whether it came
/// from what this allocator last saw rather than from the store.
pub(crate) struct BlockRead {
    pub revision: Revision,
    pub spec: IpamBlockSpec,
    pub remembered: bool,
}

/// The blocks of one allocator: locks, last-seen copies, writers.
pub(crate) struct BlockWrites {
    store: Arc<dyn Datastore>,
    config: AllocatorConfig,
    queues: Mutex<HashMap<String, Arc<BlockQueue>>>,
    /// Each block as this allocator last read or wrote it, with its
    /// revision (only with `cached_reads`): the next write to it is tried
    /// compare-and-swap on that revision without reading it again (a
    /// conflict means someone else wrote it: read it and retry). Changed
    /// only under the block's lock.
    seen: Mutex<HashMap<String, (Revision, IpamBlockSpec)>>,
    /// Most requests one batch takes now: [`MAX_BATCH`], halved each time
    /// the store refuses a transaction as too large.
    max_batch: AtomicUsize,
}

/// Sleeps before retry `attempt` (0-based): `backoff_base` doubling up to
/// `backoff_max`, ±50 % jitter.
pub(crate) async fn backoff(config: &AllocatorConfig, attempt: u32) {
    let base = config.backoff_base.as_secs_f64() * f64::from(1u32 << attempt.min(8));
    let capped = base.min(config.backoff_max.as_secs_f64());
    let jittered = capped * (0.5 + fastrand::f64());
    tokio::time::sleep(Duration::from_secs_f64(jittered)).await;
}

impl BlockWrites {
    pub(crate) fn new(store: Arc<dyn Datastore>, config: AllocatorConfig) -> BlockWrites {
        BlockWrites {
            store,
            config,
            queues: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
            max_batch: AtomicUsize::new(MAX_BATCH),
        }
    }

    fn queue(&self, name: &str) -> Arc<BlockQueue> {
        let mut map = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry(name.to_owned()).or_default())
    }

    fn seen(&self) -> MutexGuard<'_, HashMap<String, (Revision, IpamBlockSpec)>> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes block `name`'s lock (for a read-change-write of it).
    pub(crate) async fn lock(&self, name: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = Arc::clone(&self.queue(name).lock);
        lock.lock_owned().await
    }

    /// The blocks last seen affine to `node` that had free addresses then,
    /// in name order.
    pub(crate) fn remembered_with_room(&self, node: &str) -> Vec<IpNet> {
        let mut out: Vec<(String, IpNet)> = self
            .seen()
            .iter()
            .filter(|(_, (_, spec))| spec.has_room_for(node))
            .map(|(name, (_, spec))| (name.clone(), spec.cidr))
            .collect();
        out.sort();
        out.into_iter().map(|(_, cidr)| cidr).collect()
    }

    /// Whether block `name` had room for `node` (affine to it, not full)
    /// when this allocator last saw it; `None` when it is not remembered.
    pub(crate) fn remembered_room(&self, name: &str, node: &str) -> Option<bool> {
        self.seen()
            .get(name)
            .map(|(_, spec)| spec.has_room_for(node))
    }

    /// The free addresses of block `name` for `node` when this allocator
    /// last saw it (0 when it was not `node`'s); `None` when it is not
    /// remembered.
    pub(crate) fn remembered_free(&self, name: &str, node: &str) -> Option<usize> {
        self.seen().get(name).map(|(_, spec)| {
            if spec.affine_node() == Some(node) {
                spec.free()
            } else {
                0
            }
        })
    }

    /// The free addresses of the blocks last seen affine to `node` whose
    /// CIDR passes `wanted`.
    pub(crate) fn remembered_free_of_node(
        &self,
        node: &str,
        wanted: impl Fn(&IpNet) -> bool,
    ) -> usize {
        self.seen()
            .values()
            .filter(|(_, spec)| spec.affine_node() == Some(node) && wanted(&spec.cidr))
            .map(|(_, spec)| spec.free())
            .sum()
    }

    /// Reads block `name` for a write (call with its lock held): as last
    /// seen when `cached_reads` is on and `remembered` is allowed, else from
    /// the store. `None` when it does not exist.
    pub(crate) async fn read(
        &self,
        name: &str,
        remembered: bool,
    ) -> Result<Option<BlockRead>, IpamError> {
        if remembered && self.config.cached_reads {
            if let Some((revision, spec)) = self.seen().get(name).cloned() {
                return Ok(Some(BlockRead {
                    revision,
                    spec,
                    remembered: true,
                }));
            }
        }
        match self.store.get(Kind::IpamBlock, name).await {
            Ok(obj) => {
                let spec = IpamBlockSpec::from_object(&obj)?;
                self.remember(name, &obj.revision, &spec);
                Ok(Some(BlockRead {
                    revision: obj.revision,
                    spec,
                    remembered: false,
                }))
            }
            Err(StoreError::NotFound { .. }) => {
                self.forget(name);
                Ok(None)
            }
            Err(e) => {
                self.forget(name);
                Err(e.into())
            }
        }
    }

    /// Reads block `name` from the store under its lock, so that what is
    /// remembered of it is current; its spec, `None` when it is gone.
    pub(crate) async fn refresh(&self, name: &str) -> Result<Option<IpamBlockSpec>, IpamError> {
        let _guard = self.lock(name).await;
        Ok(self.read(name, false).await?.map(|r| r.spec))
    }

    pub(crate) fn remember(&self, name: &str, revision: &Revision, spec: &IpamBlockSpec) {
        if self.config.cached_reads {
            self.seen()
                .insert(name.to_owned(), (revision.clone(), spec.clone()));
        }
    }

    pub(crate) fn forget(&self, name: &str) {
        self.seen().remove(name);
    }

    /// Writes a block read by [`BlockWrites::read`] back, compare-and-swap;
    /// remembers what was written, forgets the block on any failure.
    pub(crate) async fn write(
        &self,
        name: &str,
        read: &BlockRead,
        spec: &IpamBlockSpec,
    ) -> Result<(), StoreError> {
        let value = encode(Kind::IpamBlock, name, spec)?;
        match self
            .store
            .update(Kind::IpamBlock, name, value, &read.revision)
            .await
        {
            Ok(revision) => {
                self.remember(name, &revision, spec);
                Ok(())
            }
            Err(e) => {
                self.forget(name);
                Err(e)
            }
        }
    }

    /// Writes a block read by [`BlockWrites::read`] back together with
    /// `handle` (the handle a release uncounts), in one transaction
    /// ([`Datastore::write_all`]); remembers the block written, forgets it
    /// unless the handle alone was the reason of a failure. Without a
    /// handle write, the block alone ([`BlockWrites::write`]).
    pub(crate) async fn write_with_handle(
        &self,
        name: &str,
        read: &BlockRead,
        spec: &IpamBlockSpec,
        handle: Option<Write>,
    ) -> Result<(), StoreError> {
        let Some(handle) = handle else {
            return self.write(name, read, spec).await;
        };
        let writes = vec![
            Write::Update {
                kind: Kind::IpamBlock,
                name: name.to_owned(),
                value: encode(Kind::IpamBlock, name, spec)?,
                expected: read.revision.clone(),
            },
            handle,
        ];
        self.write_all_block_first(name, spec, writes).await
    }

    /// Writes `writes` in one transaction, the block `name` (now `spec`)
    /// first; remembers the block written, forgets it when the block was
    /// the reason of a failure (or the outcome is unknown).
    async fn write_all_block_first(
        &self,
        name: &str,
        spec: &IpamBlockSpec,
        writes: Vec<Write>,
    ) -> Result<(), StoreError> {
        match self.store.write_all(writes).await {
            Ok(revisions) => {
                match revisions.first() {
                    Some(revision) => self.remember(name, revision, spec),
                    None => self.forget(name),
                }
                Ok(())
            }
            Err(e) => {
                if !about_a_handle(&e) {
                    self.forget(name);
                }
                Err(e)
            }
        }
    }

    /// Allocates up to `request.n` addresses in block `cidr`, in one batch
    /// with whatever other requests for the block are queued meanwhile.
    pub(crate) async fn allocate(
        self: &Arc<Self>,
        cidr: IpNet,
        request: BlockRequest,
    ) -> BatchReply {
        let name = crate::names::cidr_name(&cidr);
        let queue = self.queue(&name);
        let (tx, rx) = oneshot::channel();
        let start_writer = {
            let mut pending = queue.pending();
            pending.requests.push(Queued { request, reply: tx });
            !std::mem::replace(&mut pending.writer, true)
        };
        if start_writer {
            let writes = Arc::clone(self);
            let queue = Arc::clone(&queue);
            tokio::spawn(async move { writes.run_writer(cidr, name, queue).await });
        }
        match rx.await {
            Ok(reply) => reply,
            Err(_) => BatchReply::Unknown(IpamError::Store(StoreError::Unavailable(format!(
                "the writer of block {cidr} stopped before answering"
            )))),
        }
    }

    /// Writes batches of block `name` until its queue is empty.
    async fn run_writer(&self, cidr: IpNet, name: String, queue: Arc<BlockQueue>) {
        let mut writer = WriterGuard {
            queue: Arc::clone(&queue),
            finished: false,
        };
        loop {
            let _guard = Arc::clone(&queue.lock).lock_owned().await;
            let batch = {
                let mut pending = queue.pending();
                if pending.requests.is_empty() {
                    pending.writer = false;
                    writer.finished = true;
                    return;
                }
                let take = pending
                    .requests
                    .len()
                    .min(self.max_batch.load(Ordering::Relaxed));
                pending.requests.drain(..take).collect::<Vec<_>>()
            };
            let replies = self.write_batch(cidr, &name, &batch).await;
            for (queued, reply) in batch.into_iter().zip(replies) {
                // A caller that gave up no longer listens; its handle
                // counts what it was given (with transactions) or more
                // (harmless, docs/ipam.md), so a release by handle frees it.
                let _ = queued.reply.send(reply);
            }
        }
    }

    /// Whether the batch writes count the requests' handles themselves
    /// (the store has transactions over several objects).
    pub(crate) fn counts_handles(&self) -> bool {
        self.store.transactional()
    }

    /// One read-change-write of the block for every request of `batch`
    /// (call with the block's lock held); one reply per request, in order.
    async fn write_batch(&self, cidr: IpNet, name: &str, batch: &[Queued]) -> Vec<BatchReply> {
        let all = |reply: BatchReply| vec![reply; batch.len()];
        let counting = self.counts_handles();
        let mut handles: HashMap<String, HandleState> = HashMap::new();
        let mut remembered = true;
        let mut attempt = 0;
        while attempt < self.config.max_attempts {
            let read = match self.read(name, remembered).await {
                Ok(Some(read)) => read,
                Ok(None) => return replies(batch, &handles, None),
                Err(e) => return all(BatchReply::NotWritten(e)),
            };
            let mut spec = read.spec.clone();
            let given: Vec<Vec<Lease>> = batch
                .iter()
                .map(|q| {
                    let r = &q.request;
                    let affine = r.node.is_none() || spec.affine_node() == r.node.as_deref();
                    let failed = matches!(handles.get(&r.handle), Some(HandleState::Failed(_)));
                    let k = if affine && !failed {
                        (r.n as usize).min(spec.free())
                    } else {
                        0
                    };
                    if k == 0 {
                        Vec::new()
                    } else {
                        spec.allocate(k, &r.handle, &r.attrs)
                    }
                })
                .collect();
            if given.iter().all(Vec::is_empty) {
                if read.remembered {
                    // Decide on what the store says, not on what we saw.
                    remembered = false;
                    continue;
                }
                return replies(batch, &handles, None);
            }
            let written = if counting {
                self.write_counted(name, &read, &spec, batch, &given, &handles)
                    .await
            } else {
                self.write(name, &read, &spec).await
            };
            match written {
                // A write on the remembered revision proves the remembered
                // copy was current, so a request given nothing from it was
                // rightly given nothing.
                Ok(()) => return replies(batch, &handles, Some(given)),
                Err(
                    StoreError::Conflict {
                        kind: Kind::IpamHandle,
                        name: handle,
                        ..
                    }
                    | StoreError::NotFound {
                        kind: Kind::IpamHandle,
                        name: handle,
                    }
                    | StoreError::AlreadyExists {
                        kind: Kind::IpamHandle,
                        name: handle,
                    },
                ) => {
                    // A handle is not as assumed: read it and try again
                    // (nothing was written; the block read still holds).
                    if let Some(id) = batch
                        .iter()
                        .map(|q| &q.request.handle)
                        .find(|id| handle_name(id) == handle)
                    {
                        let state = self.read_handle(id).await;
                        handles.insert(id.clone(), state);
                    }
                    attempt += 1;
                    continue;
                }
                Err(StoreError::Conflict { .. }) if read.remembered => {
                    // Someone else wrote the block since we last saw it:
                    // read it (no back-off, this is not contention).
                    remembered = false;
                    continue;
                }
                Err(StoreError::Conflict { .. }) => {}
                Err(StoreError::NotFound { .. }) => return replies(batch, &handles, None),
                // Nothing written: halve the batch (and the batches to come)
                // and write each half on its own.
                Err(StoreError::TooManyWrites { writes }) if batch.len() > 1 => {
                    let half = batch.len() / 2;
                    self.max_batch.fetch_min(half, Ordering::Relaxed);
                    debug!(block = %cidr, writes, requests = batch.len(), "transaction too large; halving the batch");
                    let (first, second) = batch.split_at(half);
                    let mut out = Box::pin(self.write_batch(cidr, name, first)).await;
                    out.extend(Box::pin(self.write_batch(cidr, name, second)).await);
                    return out;
                }
                Err(e @ StoreError::TooManyWrites { .. }) => {
                    return all(BatchReply::NotWritten(e.into()))
                }
                // Unknown outcome: without transactions the callers keep
                // their handle counts (over-counting is harmless,
                // under-counting would leak); with them, the handles were
                // written if and only if the block was.
                Err(e) => return all(BatchReply::Unknown(e.into())),
            }
            debug!(block = %cidr, attempt, requests = batch.len(), "block write conflicted; retrying");
            remembered = false;
            backoff(&self.config, attempt).await;
            attempt += 1;
        }
        all(BatchReply::NotWritten(IpamError::TooManyConflicts {
            what: format!("block {cidr}"),
            attempts: self.config.max_attempts,
        }))
    }

    /// Writes the block and the counts of the handles `given` names, in
    /// one transaction; remembers the block written, forgets it when the
    /// block was the reason of a failure (or the outcome is unknown).
    async fn write_counted(
        &self,
        name: &str,
        read: &BlockRead,
        spec: &IpamBlockSpec,
        batch: &[Queued],
        given: &[Vec<Lease>],
        handles: &HashMap<String, HandleState>,
    ) -> Result<(), StoreError> {
        let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
        for (q, leases) in batch.iter().zip(given) {
            if !leases.is_empty() {
                *counts.entry(q.request.handle.as_str()).or_default() += leases.len() as u64;
            }
        }
        let block = spec.cidr.to_string();
        let mut writes = vec![Write::Update {
            kind: Kind::IpamBlock,
            name: name.to_owned(),
            value: encode(Kind::IpamBlock, name, spec)?,
            expected: read.revision.clone(),
        }];
        for (id, n) in counts {
            let handle = handle_name(id);
            let write = match handles.get(id) {
                Some(HandleState::Stored(revision, stored)) => {
                    let mut counted = stored.clone();
                    counted.add(&block, n);
                    Write::Update {
                        kind: Kind::IpamHandle,
                        value: encode(Kind::IpamHandle, &handle, &counted)?,
                        name: handle,
                        expected: revision.clone(),
                    }
                }
                _ => {
                    let mut counted = IpamHandleSpec {
                        handle_id: id.to_owned(),
                        ..Default::default()
                    };
                    counted.add(&block, n);
                    Write::Create {
                        kind: Kind::IpamHandle,
                        value: encode(Kind::IpamHandle, &handle, &counted)?,
                        name: handle,
                    }
                }
            };
            writes.push(write);
        }
        self.write_all_block_first(name, spec, writes).await
    }

    /// Reads handle `id` for counting: stored (at its revision), new when
    /// it is gone, failed when it cannot be counted.
    async fn read_handle(&self, id: &str) -> HandleState {
        let name = handle_name(id);
        match self.store.get(Kind::IpamHandle, &name).await {
            Ok(obj) => match decode_handle(&obj, id) {
                Ok(spec) => HandleState::Stored(obj.revision, spec),
                Err(e) => HandleState::Failed(e),
            },
            Err(StoreError::NotFound { .. }) => HandleState::New,
            Err(e) => HandleState::Failed(e.into()),
        }
    }
}

/// Whether a failed transaction failed on a handle's condition (nothing
/// written; the block read still holds).
pub(crate) fn about_a_handle(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Conflict {
            kind: Kind::IpamHandle,
            ..
        } | StoreError::NotFound {
            kind: Kind::IpamHandle,
            ..
        } | StoreError::AlreadyExists {
            kind: Kind::IpamHandle,
            ..
        }
    )
}

/// The replies to `batch`: each request's leases (none when `given` is
/// `None`), or its handle's failure.
fn replies(
    batch: &[Queued],
    handles: &HashMap<String, HandleState>,
    given: Option<Vec<Vec<Lease>>>,
) -> Vec<BatchReply> {
    let mut given = given.map(Vec::into_iter);
    batch
        .iter()
        .map(|q| {
            let leases = given.as_mut().and_then(Iterator::next).unwrap_or_default();
            match handles.get(&q.request.handle) {
                Some(HandleState::Failed(e)) => BatchReply::NotWritten(e.clone()),
                _ => BatchReply::Leases(leases),
            }
        })
        .collect()
}
