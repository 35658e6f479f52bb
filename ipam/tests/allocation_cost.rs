#![allow(clippy::unwrap_used, clippy::expect_used)]
//! What an allocation costs in datastore calls, counted by a wrapper
//! store: it must not grow with the number of full blocks the node holds
//! (issue 4: one node with 125 full blocks re-read every one of them on
//! every allocation), and allocations running together on one node share
//! block writes.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipam::pool::{parse_cidr, IpPoolSpec};
use ipam::store::{Kind, StoreError, Write};
use ipam::testing::{addresses_in_use, Call, CallHook, Interposed};
use ipam::{Allocator, AllocatorConfig, AutoAssignRequest};

tokio::task_local! {
    /// Set around a request's own future: calls made there (not in the
    /// tasks it hands work to) are the request's critical path.
    static REQUEST: ();
}

/// Counts calls per (operation, kind) as they pass (the hook of an
/// `Interposed` store); block updates (alone or in a transaction) can be
/// slowed down and made to fail. A transaction counts once, under the kind
/// of its first write. Watches are not counted.
struct CallCounter {
    calls: Mutex<BTreeMap<(&'static str, Kind), u64>>,
    /// The same, for calls made by a request itself (inside `REQUEST`).
    in_requests: Mutex<BTreeMap<(&'static str, Kind), u64>>,
    total: AtomicU64,
    /// Added to every block update.
    block_update_delay: Mutex<Duration>,
    /// This many next block updates fail with `Unavailable` (not applied).
    failing_block_updates: AtomicU64,
}

impl CallCounter {
    fn count(&self, op: &'static str, kind: Kind) {
        self.total.fetch_add(1, Ordering::SeqCst);
        *self.calls.lock().unwrap().entry((op, kind)).or_default() += 1;
        if REQUEST.try_with(|()| ()).is_ok() {
            *self
                .in_requests
                .lock()
                .unwrap()
                .entry((op, kind))
                .or_default() += 1;
        }
    }

    /// The delay and injected failure of a block update.
    async fn block_update_faults(&self) -> Result<(), StoreError> {
        let delay = *self.block_update_delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        let fail =
            self.failing_block_updates
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if fail.is_ok() {
            return Err(StoreError::Unavailable("injected".into()));
        }
        Ok(())
    }

    fn in_requests(&self, op: &'static str, kind: Kind) -> u64 {
        self.in_requests
            .lock()
            .unwrap()
            .get(&(op, kind))
            .copied()
            .unwrap_or(0)
    }

    fn total(&self) -> u64 {
        self.total.load(Ordering::SeqCst)
    }

    fn of(&self, op: &'static str, kind: Kind) -> u64 {
        self.calls
            .lock()
            .unwrap()
            .get(&(op, kind))
            .copied()
            .unwrap_or(0)
    }
}

#[async_trait::async_trait]
impl CallHook for CallCounter {
    async fn before(&self, call: Call<'_>) -> Result<(), StoreError> {
        if call.op == "watch" {
            return Ok(());
        }
        self.count(call.op, call.kind);
        let updates_a_block = match call.op {
            "update" => call.kind == Kind::IpamBlock,
            "write_all" => call.writes.iter().any(|w| {
                matches!(
                    w,
                    Write::Update {
                        kind: Kind::IpamBlock,
                        ..
                    }
                )
            }),
            _ => false,
        };
        if updates_a_block {
            self.block_update_faults().await?;
        }
        Ok(())
    }
}

async fn setup(pool: &str) -> (Arc<CallCounter>, Allocator, tempfile::TempDir) {
    // (The allocator is shared by tasks in some tests: callers wrap it.)
    let dir = tempfile::tempdir().unwrap();
    let sqlite = ipam::store::sqlite::SqliteStore::open(dir.path().join("ipam.db"))
        .await
        .unwrap();
    let store = Arc::new(CallCounter {
        calls: Mutex::new(BTreeMap::new()),
        in_requests: Mutex::new(BTreeMap::new()),
        total: AtomicU64::new(0),
        block_update_delay: Mutex::new(Duration::ZERO),
        failing_block_updates: AtomicU64::new(0),
    });
    let interposed = Interposed::new(Arc::new(sqlite), Arc::clone(&store));
    let alloc = Allocator::new(Arc::new(interposed), AllocatorConfig::default());
    alloc
        .create_pool("p", IpPoolSpec::new(parse_cidr(pool).unwrap()))
        .await
        .unwrap();
    (store, alloc, dir)
}

fn req(handle: String, node: &str) -> AutoAssignRequest {
    AutoAssignRequest {
        handle,
        node: node.into(),
        num_v4: 1,
        ..AutoAssignRequest::default()
    }
}

/// Lets the claims ahead finish and the watches deliver the claims'
/// affinity events, then refills the cached view with one more allocation
/// of node1 (handle `warm`), so the next requests find it current.
async fn settle(alloc: &Allocator) {
    alloc.wait_for_claims_ahead().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    alloc
        .auto_assign(&req("warm".into(), "node1"))
        .await
        .unwrap();
}

/// Fills 20 /26 blocks on one node, then makes 32 more allocations from
/// the 21st: each costs one transaction (the block write with the new
/// handle in it), and no read of the 20 full blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_affine_blocks_are_not_read_again() {
    let (store, alloc, _dir) = setup("10.20.0.0/16").await;
    let alloc = Arc::new(alloc);
    let mut seen = HashSet::new();
    for i in 0..(20 * 64 + 1) {
        let got = alloc
            .auto_assign(&req(format!("h{i}"), "node1"))
            .await
            .unwrap();
        assert!(seen.insert(got.v4[0]), "{} twice", got.v4[0]);
    }
    settle(&alloc).await;
    let before = store.total();
    let gets = store.of("get", Kind::IpamBlock);
    let writes = store.of("write_all", Kind::IpamBlock);
    for i in 0..32 {
        let got = alloc
            .auto_assign(&req(format!("x{i}"), "node1"))
            .await
            .unwrap();
        assert!(seen.insert(got.v4[0]), "{} twice", got.v4[0]);
    }
    let calls = store.total() - before;
    eprintln!("calls by kind: {:?}", store.calls.lock().unwrap());
    assert_eq!(
        store.of("get", Kind::IpamBlock) - gets,
        0,
        "full blocks were read again"
    );
    assert_eq!(
        store.of("write_all", Kind::IpamBlock) - writes,
        32,
        "one transaction per allocation"
    );
    assert_eq!(calls, 32, "{calls} datastore calls for 32 allocations");
    assert_eq!(
        store.of("create", Kind::IpamHandle),
        0,
        "handles go with the block"
    );
}

/// Runs `n` single-address requests of `node` at once; their results.
async fn at_once(
    alloc: &Arc<Allocator>,
    prefix: &str,
    n: usize,
) -> Vec<(String, Result<ipam::Assigned, ipam::IpamError>)> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let alloc = Arc::clone(alloc);
            let handle = format!("{prefix}{i}");
            tokio::spawn(async move {
                let got = alloc.auto_assign(&req(handle.clone(), "node1")).await;
                (handle, got)
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// 32 requests of one node at once while each block write takes 20 ms:
/// they queue on the block and share writes (group commit) instead of
/// writing it 32 times one after another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_requests_share_block_writes() {
    let (store, alloc, _dir) = setup("10.21.0.0/16").await;
    let alloc = Arc::new(alloc);
    // The node's first block exists and is remembered.
    alloc
        .auto_assign(&req("first".into(), "node1"))
        .await
        .unwrap();
    *store.block_update_delay.lock().unwrap() = Duration::from_millis(20);
    let updates = store.of("write_all", Kind::IpamBlock);
    let mut seen = HashSet::new();
    for (handle, got) in at_once(&alloc, "h", 32).await {
        let got = got.unwrap();
        assert!(seen.insert(got.v4[0]), "{} twice ({handle})", got.v4[0]);
    }
    let writes = store.of("write_all", Kind::IpamBlock) - updates;
    assert!(writes <= 16, "32 allocations took {writes} block writes");
    // Each handle counts its address (written with the block).
    assert_eq!(store.of("create", Kind::IpamHandle), 0);
}

/// A batch whose block write fails: every request in it gets the error,
/// none of their addresses is in the block, and the next requests get
/// addresses no one else holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_write_hands_out_nothing() {
    let (store, alloc, _dir) = setup("10.22.0.0/16").await;
    let alloc = Arc::new(alloc);
    alloc
        .auto_assign(&req("first".into(), "node1"))
        .await
        .unwrap();
    *store.block_update_delay.lock().unwrap() = Duration::from_millis(20);
    store.failing_block_updates.store(1, Ordering::SeqCst);
    let mut ok = HashSet::new();
    let mut failed = 0;
    for (handle, got) in at_once(&alloc, "h", 16).await {
        match got {
            Ok(got) => assert!(ok.insert(got.v4[0].addr()), "{} twice", got.v4[0]),
            Err(ipam::IpamError::Store(StoreError::Unavailable(_))) => {
                failed += 1;
                assert!(
                    alloc.holdings(&handle).await.unwrap().is_empty(),
                    "{handle} failed but holds an address"
                );
            }
            Err(e) => panic!("{handle}: {e}"),
        }
    }
    assert!(failed >= 1, "the injected failure was not seen");
    // The block holds "first" and the successful ones, nothing else.
    assert_eq!(addresses_in_use(&alloc).await, 1 + ok.len());
    *store.block_update_delay.lock().unwrap() = Duration::ZERO;
    for (handle, got) in at_once(&alloc, "again", 8).await {
        let got = got.unwrap();
        assert!(
            ok.insert(got.v4[0].addr()),
            "{} twice ({handle})",
            got.v4[0]
        );
    }
}

/// With the claim ahead given time to finish (as between pods starting),
/// no request claims a block itself: across five blocks' worth of
/// allocations on one node, the requests create no affinity and no block;
/// the claims happen in the background, one per block, once fewer than 16
/// addresses (a quarter of a /26) are free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_do_not_wait_for_claims() {
    let (store, alloc, _dir) = setup("10.23.0.0/16").await;
    // The node's first block: claimed by the first request (none exists).
    alloc
        .auto_assign(&req("first".into(), "node1"))
        .await
        .unwrap();
    // (On sqlite a claim is one transaction: affinity and block, counted
    // under the affinity.)
    let claims = |store: &CallCounter, of: fn(&CallCounter, &'static str, Kind) -> u64| {
        of(store, "create", Kind::IpamBlock) + of(store, "write_all", Kind::BlockAffinity)
    };
    let blocks_before = claims(&store, CallCounter::of);
    let mut seen = HashSet::new();
    for i in 0..(5 * 64 - 1) {
        let got = REQUEST
            .scope((), alloc.auto_assign(&req(format!("h{i}"), "node1")))
            .await
            .unwrap();
        assert!(seen.insert(got.v4[0]), "{} twice", got.v4[0]);
        alloc.wait_for_claims_ahead().await;
    }
    eprintln!("calls in requests: {:?}", store.in_requests.lock().unwrap());
    assert_eq!(store.in_requests("create", Kind::BlockAffinity), 0);
    assert_eq!(claims(&store, CallCounter::in_requests), 0);
    assert_eq!(store.in_requests("list_names", Kind::IpamBlock), 0);
    // A request's only own call, apart from refreshing its cached view
    // after a claim: none (the block write with its handle runs in the
    // block's writer task).
    assert_eq!(store.in_requests("create", Kind::IpamHandle), 0);
    // 5 blocks full and the sixth claimed ahead.
    assert_eq!(claims(&store, CallCounter::of) - blocks_before, 5);
    assert_eq!(alloc.blocks_affine_to("node1").await.unwrap().len(), 6);
}

/// The agent's usage metric every 10 s: with the read cache current, it
/// reads the node's blocks and lists neither the pools nor the affinities.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_reads_only_the_blocks() {
    let (store, alloc, _dir) = setup("10.24.0.0/16").await;
    for i in 0..70 {
        alloc
            .auto_assign(&req(format!("h{i}"), "node1"))
            .await
            .unwrap();
    }
    settle(&alloc).await;
    let before = store.total();
    let gets = store.of("get", Kind::IpamBlock);
    let usage = alloc.usage_of("node1").await.unwrap();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].in_use, 71);
    let blocks = usage[0].blocks as u64;
    assert_eq!(store.of("get", Kind::IpamBlock) - gets, blocks);
    assert_eq!(store.total() - before, blocks, "only the blocks are read");
}

/// On sqlite a release is one transaction: the block and the handle it
/// uncounts (deleted at zero) are written together, by address and by
/// handle, with no handle write of its own. So a release whose write
/// fails leaves both as they were, and one that succeeds leaves no handle
/// behind: there is no moment between two writes where a crash leaves a
/// handle counting an address its block no longer holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_writes_its_block_and_handle_together() {
    let (store, alloc, _dir) = setup("10.23.0.0/16").await;
    let a = alloc.auto_assign(&req("h1".into(), "node1")).await.unwrap();
    alloc.auto_assign(&req("h2".into(), "node1")).await.unwrap();
    settle(&alloc).await;
    let handle_writes = || {
        store.of("update", Kind::IpamHandle)
            + store.of("delete", Kind::IpamHandle)
            + store.of("create", Kind::IpamHandle)
    };
    let by_address = ipam::ReleaseRequest {
        ip: a.v4[0].addr(),
        handle: Some("h1".into()),
        sequence: None,
    };

    // The write fails (not applied): the address and its count stay.
    store.failing_block_updates.store(1, Ordering::SeqCst);
    assert!(alloc
        .release_ips(std::slice::from_ref(&by_address))
        .await
        .is_err());
    assert_eq!(alloc.holdings("h1").await.unwrap().len(), 1);
    alloc.store().get(Kind::IpamHandle, "h1").await.unwrap();

    // By address: one transaction, the emptied handle deleted in it.
    let (transactions, handles) = (store.of("write_all", Kind::IpamBlock), handle_writes());
    let out = alloc.release_ips(&[by_address]).await.unwrap();
    assert_eq!(
        out[0].outcome,
        ipam::BlockRelease::Released {
            handle_id: Some("h1".into())
        }
    );
    assert_eq!(store.of("write_all", Kind::IpamBlock) - transactions, 1);
    assert_eq!(handle_writes(), handles, "a handle write of its own");
    assert!(matches!(
        alloc.store().get(Kind::IpamHandle, "h1").await,
        Err(StoreError::NotFound { .. })
    ));

    // By handle: the same.
    let (transactions, handles) = (store.of("write_all", Kind::IpamBlock), handle_writes());
    let released = alloc.release_by_handle("h2").await.unwrap();
    assert_eq!(released.len(), 1);
    assert_eq!(store.of("write_all", Kind::IpamBlock) - transactions, 1);
    assert_eq!(handle_writes(), handles, "a handle write of its own");
    assert!(matches!(
        alloc.store().get(Kind::IpamHandle, "h2").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(alloc.holdings("h2").await.unwrap().is_empty());
}

/// On sqlite a claim is one transaction (the confirmed affinity and the
/// block together: no affinity or block write of its own), and a claim a
/// crash cut short on the old path (a `pending` affinity without its
/// block) is continued in steps: the block is created and the affinity
/// confirmed, nothing left pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_is_one_write_and_continues_a_cut_claim() {
    use ipam::affinity::{AffinityState, BlockAffinitySpec};
    let (store, alloc, _dir) = setup("10.24.0.0/16").await;
    // A crash on the three-write path left this (affinity, no block).
    let first = parse_cidr("10.24.0.0/26").unwrap();
    let pending = BlockAffinitySpec {
        state: AffinityState::Pending,
        node: "node1".into(),
        cidr: first,
    };
    alloc
        .store()
        .create(
            Kind::BlockAffinity,
            &ipam::names::affinity_name("node1", &first),
            serde_json::to_vec(&pending).unwrap(),
        )
        .await
        .unwrap();
    let got = alloc.auto_assign(&req("h0".into(), "node1")).await.unwrap();
    assert_eq!(got.leases[0].block, first, "the cut claim was continued");
    alloc.wait_for_claims_ahead().await;

    // Fill the node's blocks: every further claim is one transaction.
    let single = |store: &CallCounter| {
        store.of("create", Kind::BlockAffinity)
            + store.of("update", Kind::BlockAffinity)
            + store.of("create", Kind::IpamBlock)
    };
    let (single_before, claims_before) =
        (single(&store), store.of("write_all", Kind::BlockAffinity));
    let mut seen = HashSet::new();
    for i in 0..(3 * 64) {
        let got = alloc
            .auto_assign(&req(format!("h{}", i + 1), "node1"))
            .await
            .unwrap();
        assert!(seen.insert(got.v4[0]), "{} twice", got.v4[0]);
    }
    alloc.wait_for_claims_ahead().await;
    assert_eq!(single(&store), single_before, "a claim wrote apart");
    assert!(store.of("write_all", Kind::BlockAffinity) - claims_before >= 3);
    let (affinities, _) = alloc.affinities_of("node1").await.unwrap();
    assert!(affinities.len() >= 4, "{affinities:?}");
    for a in &affinities {
        assert_eq!(a.spec.state, AffinityState::Confirmed, "{a:?}");
    }
}
