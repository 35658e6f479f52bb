//! The allocator suite, run against any `Arc<dyn Datastore>`.
//!
//! A backend's test file does
//! `#[macro_use] mod allocator_suite; allocator_suite!(make_store().await);`
//! where the expression yields `(Arc<dyn Datastore>, guard)`: a fresh, empty
//! store and whatever must live as long as it (a temp dir, a server).

#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipam::affinity::AffinityState;
use ipam::block::BlockRelease;
use ipam::pool::{parse_cidr, AllowedUse, EncapMode, IpPoolSpec, PoolError};
use ipam::store::{Datastore, Kind, StoreError};
use ipam::testing::addresses_in_use;
use ipam::{
    Allocator, AllocatorConfig, AssignIpRequest, AutoAssignRequest, IpamError, PoolUsage,
    ReleaseRequest, TunnelKind,
};

/// Generates one `#[tokio::test]` per suite case for a store expression.
#[macro_export]
macro_rules! allocator_suite {
    ($make:expr) => {
        $crate::allocator_suite::cases! { $make;
            pool_exhaustion_is_all_or_nothing,
            borrowing_when_allowed,
            strict_affinity_refuses_to_borrow,
            ipv4_and_ipv6_together,
            specific_address,
            release_by_handle,
            empty_block_reclaimed_after_grace,
            stale_sequence_release_refused,
            releasing_a_free_address_is_a_noop,
            node_selector_limits_pools,
            corrupt_objects_name_the_key,
            bad_pools_refused,
            affinities_follow_claims,
            check_finds_dead_owners_and_gc_returns_them,
            gc_repairs_interrupted_claims_and_give_backs,
            removing_a_node_releases_its_blocks,
            tunnel_addresses_follow_the_pools,
            cached_reads_stay_correct_with_another_writer,
            concurrent_allocations_on_one_node_never_duplicate,
            a_batch_where_some_requests_cannot_be_met_loses_nothing,
            usage_counts_a_nodes_blocks_by_pool,
            claims_the_next_block_ahead,
            claim_ahead_leaves_a_short_pool_to_nodes_without_blocks,
            removing_a_node_releases_blocks_claimed_ahead,
            handles_are_counted_with_their_block,
        }
    };
}

#[macro_export]
macro_rules! cases {
    ($make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, _guard): (std::sync::Arc<dyn ipam::store::Datastore>, _) = $make;
                $crate::allocator_suite::$case(store).await;
            }
        )*
    };
}
pub(crate) use cases;

pub fn config() -> AllocatorConfig {
    AllocatorConfig {
        backoff_base: Duration::from_micros(200),
        backoff_max: Duration::from_millis(10),
        ..AllocatorConfig::default()
    }
}

pub async fn pool(alloc: &Allocator, name: &str, cidr: &str, block_size: u8) {
    let mut spec = IpPoolSpec::new(parse_cidr(cidr).unwrap());
    spec.block_size = block_size;
    alloc.create_pool(name, spec).await.unwrap();
}

pub fn req(handle: &str, node: &str, v4: u32, v6: u32) -> AutoAssignRequest {
    AutoAssignRequest {
        handle: handle.into(),
        node: node.into(),
        num_v4: v4,
        num_v6: v6,
        ..AutoAssignRequest::default()
    }
}

pub async fn pool_exhaustion_is_all_or_nothing(store: Arc<dyn Datastore>) {
    let alloc = Allocator::new(store.clone(), config());
    pool(&alloc, "small", "10.9.0.0/28", 28).await;
    let mut seen = HashSet::new();
    for i in 0..15 {
        let a = alloc
            .auto_assign(&req(&format!("h{i}"), "node1", 1, 0))
            .await
            .unwrap();
        assert_eq!(a.v4.len(), 1);
        assert_eq!(a.v4[0].prefix_len(), 32);
        assert!(seen.insert(a.v4[0].addr()));
    }
    // One left; two asked: refused, and the last one is not taken.
    let err = alloc.auto_assign(&req("two", "node1", 2, 0)).await;
    assert!(
        matches!(
            err,
            Err(IpamError::Exhausted {
                wanted: 2,
                found: 1,
                ..
            })
        ),
        "{err:?}"
    );
    assert_eq!(addresses_in_use(&alloc).await, 15);
    assert!(matches!(
        store.get(Kind::IpamHandle, "two").await,
        Err(StoreError::NotFound { .. })
    ));
    let last = alloc.auto_assign(&req("h15", "node1", 1, 0)).await.unwrap();
    assert!(seen.insert(last.v4[0].addr()));
    let err = alloc.auto_assign(&req("h16", "node1", 1, 0)).await;
    assert!(matches!(err, Err(IpamError::Exhausted { .. })), "{err:?}");
    assert_eq!(seen.len(), 16);
}

pub async fn borrowing_when_allowed(store: Arc<dyn Datastore>) {
    let alloc = Allocator::new(store, config());
    pool(&alloc, "two-blocks", "10.8.0.0/27", 28).await;
    let a = alloc.auto_assign(&req("a", "node1", 4, 0)).await.unwrap();
    let b = alloc.auto_assign(&req("b", "node2", 16, 0)).await.unwrap();
    let block_a = a.leases[0].block;
    let block_b = b.leases[0].block;
    assert_ne!(block_a, block_b);
    assert!(b.leases.iter().all(|l| l.block == block_b));
    // node2's block is full and no block is left: borrow from node1's.
    let c = alloc.auto_assign(&req("c", "node2", 2, 0)).await.unwrap();
    assert!(c.leases.iter().all(|l| l.block == block_a), "{c:?}");
    // The block stays node1's.
    assert_eq!(alloc.blocks_affine_to("node1").await.unwrap(), [block_a]);
    assert_eq!(alloc.blocks_affine_to("node2").await.unwrap(), [block_b]);
}

pub async fn strict_affinity_refuses_to_borrow(store: Arc<dyn Datastore>) {
    let alloc = Allocator::new(
        store,
        AllocatorConfig {
            strict_affinity: true,
            ..config()
        },
    );
    pool(&alloc, "two-blocks", "10.8.0.0/27", 28).await;
    alloc.auto_assign(&req("a", "node1", 4, 0)).await.unwrap();
    alloc.auto_assign(&req("b", "node2", 16, 0)).await.unwrap();
    let err = alloc.auto_assign(&req("c", "node2", 1, 0)).await;
    assert!(matches!(err, Err(IpamError::Exhausted { .. })), "{err:?}");
    assert_eq!(addresses_in_use(&alloc).await, 20);
}

pub async fn ipv4_and_ipv6_together(store: Arc<dyn Datastore>) {
    let alloc = Allocator::new(store.clone(), config());
    pool(&alloc, "v4", "10.244.0.0/16", 26).await;
    // No IPv6 pool yet: refused as a whole, the IPv4 address is given back.
    let err = alloc.auto_assign(&req("early", "node1", 1, 1)).await;
    assert!(matches!(err, Err(IpamError::NoPool { .. })), "{err:?}");
    assert_eq!(addresses_in_use(&alloc).await, 0);
    pool(&alloc, "v6", "fd00:10:244::/56", 122).await;
    let a = alloc
        .auto_assign(&req("pod-a", "node1", 1, 1))
        .await
        .unwrap();
    assert_eq!(a.v4.len(), 1);
    assert_eq!(a.v6.len(), 1);
    assert!(parse_cidr("10.244.0.0/16")
        .unwrap()
        .contains(&a.v4[0].addr()));
    assert!(parse_cidr("fd00:10:244::/56")
        .unwrap()
        .contains(&a.v6[0].addr()));
    assert_eq!(a.v6[0].prefix_len(), 128);
    let mut affine = alloc.blocks_affine_to("node1").await.unwrap();
    affine.sort();
    assert_eq!(affine.len(), 2);
    // The handle counts one address in each block.
    let h = store.get(Kind::IpamHandle, "pod-a").await.unwrap();
    let spec: serde_json::Value = serde_json::from_slice(&h.value).unwrap();
    assert_eq!(spec["handleID"], "pod-a");
    assert_eq!(spec["block"].as_object().unwrap().len(), 2);
    let both = alloc
        .auto_assign(&req("pod-b", "node2", 2, 3))
        .await
        .unwrap();
    assert_eq!((both.v4.len(), both.v6.len()), (2, 3));
}

pub async fn specific_address(store: Arc<dyn Datastore>) {
    let alloc = Allocator::new(store, config());
    pool(&alloc, "p", "10.7.0.0/24", 26).await;
    let ip: IpAddr = "10.7.0.70".parse().unwrap();
    let assign = |handle: &str, ip: IpAddr| AssignIpRequest {
        ip: Some(ip),
        handle: handle.into(),
        node: "node1".into(),
        ..AssignIpRequest::default()
    };
    let lease = alloc.assign_ip(&assign("static", ip)).await.unwrap();
    assert_eq!(lease.ip, ip);
    assert_eq!(lease.block, parse_cidr("10.7.0.64/26").unwrap());
    assert_eq!(
        alloc.blocks_affine_to("node1").await.unwrap(),
        [lease.block]
    );
    let again = alloc.assign_ip(&assign("other", ip)).await;
    assert!(
        matches!(again, Err(IpamError::InUse { holder: Some(ref h), .. }) if h == "static"),
        "{again:?}"
    );
    let outside = alloc
        .assign_ip(&assign("x", "10.99.0.1".parse().unwrap()))
        .await;
    assert!(
        matches!(outside, Err(IpamError::NotInPool(_))),
        "{outside:?}"
    );
    // Auto-assignment on the same node never hands it out again.
    for i in 0..63 {
        let a = alloc
            .auto_assign(&req(&format!("p{i}"), "node1", 1, 0))
            .await
            .unwrap();
        assert_ne!(a.v4[0].addr(), ip);
    }
}

pub async fn release_by_handle(store: Arc<dyn Datastore>) {
    let alloc = Allocator::new(store.clone(), config());
    pool(&alloc, "v4", "10.6.0.0/24", 26).await;
    pool(&alloc, "v6", "fd00:6::/64", 122).await;
    let a = alloc
        .auto_assign(&req("k8s-pod-network.ABC/eth0", "node1", 2, 1))
        .await
        .unwrap();
    alloc
        .auto_assign(&req("keep", "node1", 1, 0))
        .await
        .unwrap();
    let mut released = alloc
        .release_by_handle("k8s-pod-network.ABC/eth0")
        .await
        .unwrap();
    released.sort();
    let mut expected: Vec<IpAddr> = a.leases.iter().map(|l| l.ip).collect();
    expected.sort();
    assert_eq!(released, expected);
    assert_eq!(addresses_in_use(&alloc).await, 1);
    assert_eq!(
        store
            .list(Kind::IpamHandle, "")
            .await
            .unwrap()
            .objects
            .len(),
        1
    );
    // Again: nothing to do, not an error.
    assert!(alloc
        .release_by_handle("k8s-pod-network.ABC/eth0")
        .await
        .unwrap()
        .is_empty());
}

pub async fn empty_block_reclaimed_after_grace(store: Arc<dyn Datastore>) {
    let patient = Allocator::new(
        store.clone(),
        AllocatorConfig {
            empty_block_grace: Duration::from_secs(3600),
            ..config()
        },
    );
    pool(&patient, "p", "10.5.0.0/24", 26).await;
    let a = patient.auto_assign(&req("a", "node1", 1, 0)).await.unwrap();
    patient.release_by_handle("a").await.unwrap();
    assert!(patient.reclaim_empty_blocks().await.unwrap().is_empty());
    assert_eq!(
        patient.blocks_affine_to("node1").await.unwrap(),
        [a.leases[0].block]
    );
    let eager = Allocator::new(
        store.clone(),
        AllocatorConfig {
            empty_block_grace: Duration::ZERO,
            ..config()
        },
    );
    // A block in use is never reclaimed.
    eager.auto_assign(&req("b", "node2", 1, 0)).await.unwrap();
    let reclaimed = eager.reclaim_empty_blocks().await.unwrap();
    assert_eq!(reclaimed, [a.leases[0].block]);
    assert!(eager.blocks_affine_to("node1").await.unwrap().is_empty());
    assert!(store
        .list(Kind::BlockAffinity, "node1-")
        .await
        .unwrap()
        .objects
        .is_empty());
    assert_eq!(eager.blocks().await.unwrap().len(), 1);
    // The block is free again for another node.
    let c = eager.auto_assign(&req("c", "node3", 1, 0)).await.unwrap();
    assert_eq!(c.leases[0].block, a.leases[0].block);
}

pub async fn stale_sequence_release_refused(store: Arc<dyn Datastore>) {
    let alloc = Allocator::new(store, config());
    pool(&alloc, "tiny", "10.4.0.0/30", 30).await;
    let mut leases = Vec::new();
    for i in 0..4 {
        leases.push(
            alloc
                .auto_assign(&req(&format!("h{i}"), "node1", 1, 0))
                .await
                .unwrap()
                .leases[0]
                .clone(),
        );
    }
    let old = leases[0].clone();
    let out = alloc
        .release_ips(&[ReleaseRequest {
            ip: old.ip,
            handle: Some("h0".into()),
            sequence: Some(old.sequence),
        }])
        .await
        .unwrap();
    assert!(matches!(out[0].outcome, BlockRelease::Released { .. }));
    // The only free address goes to a new pod…
    let new = alloc.auto_assign(&req("h4", "node1", 1, 0)).await.unwrap();
    assert_eq!(new.leases[0].ip, old.ip);
    assert_ne!(new.leases[0].sequence, old.sequence);
    // …and a late release carrying the old sequence is refused.
    let late = alloc
        .release_ips(&[ReleaseRequest {
            ip: old.ip,
            handle: None,
            sequence: Some(old.sequence),
        }])
        .await
        .unwrap();
    assert!(
        matches!(late[0].outcome, BlockRelease::Refused { .. }),
        "{late:?}"
    );
    let late_by_handle = alloc
        .release_ips(&[ReleaseRequest {
            ip: old.ip,
            handle: Some("h0".into()),
            sequence: None,
        }])
        .await
        .unwrap();
    assert!(matches!(
        late_by_handle[0].outcome,
        BlockRelease::Refused { .. }
    ));
    assert_eq!(alloc.release_by_handle("h4").await.unwrap(), [old.ip]);
}

pub async fn releasing_a_free_address_is_a_noop(store: Arc<dyn Datastore>) {
    let alloc = Allocator::new(store, config());
    pool(&alloc, "p", "10.3.0.0/24", 26).await;
    let a = alloc.auto_assign(&req("a", "node1", 1, 0)).await.unwrap();
    let out = alloc
        .release_ips(&[
            ReleaseRequest::ip("10.3.0.200".parse().unwrap()),
            ReleaseRequest::ip("192.0.2.1".parse().unwrap()),
            ReleaseRequest::ip(a.leases[0].ip),
        ])
        .await
        .unwrap();
    assert_eq!(out[0].outcome, BlockRelease::NotAllocated);
    assert_eq!(out[1].outcome, BlockRelease::NotAllocated);
    assert_eq!(
        out[2].outcome,
        BlockRelease::Released {
            handle_id: Some("a".into())
        }
    );
    assert_eq!(addresses_in_use(&alloc).await, 0);
    let again = alloc
        .release_ips(&[ReleaseRequest::ip(a.leases[0].ip)])
        .await
        .unwrap();
    assert_eq!(again[0].outcome, BlockRelease::NotAllocated);
}

pub async fn node_selector_limits_pools(store: Arc<dyn Datastore>) {
    let alloc = Allocator::new(store.clone(), config());
    let mut a = IpPoolSpec::new(parse_cidr("10.20.0.0/24").unwrap());
    a.node_selector = "zone == 'a'".into();
    alloc.create_pool("zone-a", a).await.unwrap();
    let mut labels = BTreeMap::new();
    labels.insert("zone".to_owned(), "b".to_owned());
    let mut r = req("x", "node-b", 1, 0);
    r.node_labels = Some(labels.clone());
    let err = alloc.auto_assign(&r).await;
    assert!(matches!(err, Err(IpamError::NoPool { .. })), "{err:?}");
    // Labels from the node's FelixNode object.
    store
        .create(
            Kind::FelixNode,
            "node-a",
            br#"{"labels":{"zone":"a"}}"#.to_vec(),
        )
        .await
        .unwrap();
    let ok = alloc.auto_assign(&req("y", "node-a", 1, 0)).await.unwrap();
    assert!(parse_cidr("10.20.0.0/24")
        .unwrap()
        .contains(&ok.v4[0].addr()));
    labels.insert("zone".to_owned(), "a".to_owned());
    r.node_labels = Some(labels);
    alloc.auto_assign(&r).await.unwrap();
}

pub async fn corrupt_objects_name_the_key(store: Arc<dyn Datastore>) {
    let alloc = Allocator::new(store.clone(), config());
    pool(&alloc, "p", "10.2.0.0/24", 26).await;
    let a = alloc.auto_assign(&req("a", "node1", 1, 0)).await.unwrap();
    let name = ipam::names::cidr_name(&a.leases[0].block);
    let obj = store.get(Kind::IpamBlock, &name).await.unwrap();
    store
        .update(Kind::IpamBlock, &name, b"{not json".to_vec(), &obj.revision)
        .await
        .unwrap();
    let err = alloc.auto_assign(&req("b", "node1", 1, 0)).await;
    match err {
        Err(IpamError::Store(StoreError::Corrupt { kind, name: n, .. })) => {
            assert_eq!(kind, Kind::IpamBlock);
            assert_eq!(n, name);
        }
        other => panic!("expected a corrupt-block error, got {other:?}"),
    }
    let msg = alloc.blocks().await.unwrap_err().to_string();
    assert!(msg.contains(&name), "{msg}");
    // Well-formed JSON that breaks the block's invariants is corrupt too.
    let obj = store.get(Kind::IpamBlock, &name).await.unwrap();
    let bad = serde_json::json!({
        "cidr": a.leases[0].block.to_string(), "allocations": [null], "unallocated": []
    });
    store
        .update(
            Kind::IpamBlock,
            &name,
            serde_json::to_vec(&bad).unwrap(),
            &obj.revision,
        )
        .await
        .unwrap();
    let err = alloc.blocks().await.unwrap_err().to_string();
    assert!(err.contains(&name) && err.contains("corrupt"), "{err}");
    // A garbage pool.
    store
        .create(Kind::IpPool, "junk", b"[1,2".to_vec())
        .await
        .unwrap();
    let err = alloc.pools().await.unwrap_err().to_string();
    assert!(err.contains("junk"), "{err}");
}

pub async fn bad_pools_refused(store: Arc<dyn Datastore>) {
    let alloc = Allocator::new(store.clone(), config());
    assert!(matches!(
        parse_cidr("10.1.0.0/40"),
        Err(PoolError::MalformedCidr(_))
    ));
    assert!(matches!(
        parse_cidr("banana"),
        Err(PoolError::MalformedCidr(_))
    ));
    pool(&alloc, "p", "10.1.0.0/16", 26).await;
    let overlap = alloc
        .create_pool("q", IpPoolSpec::new(parse_cidr("10.1.128.0/17").unwrap()))
        .await;
    assert!(
        matches!(overlap, Err(IpamError::Pool(PoolError::Overlaps { .. }))),
        "{overlap:?}"
    );
    let mut big_block = IpPoolSpec::new(parse_cidr("10.2.0.0/16").unwrap());
    big_block.block_size = 16;
    assert!(matches!(
        alloc.create_pool("r", big_block).await,
        Err(IpamError::Pool(PoolError::BlockSizeOutOfRange { .. }))
    ));
    let mut small = IpPoolSpec::new(parse_cidr("10.3.0.0/27").unwrap());
    small.block_size = 26;
    assert!(matches!(
        alloc.create_pool("s", small).await,
        Err(IpamError::Pool(PoolError::SmallerThanBlock { .. }))
    ));
    assert!(matches!(
        alloc
            .create_pool(
                "Bad_Name",
                IpPoolSpec::new(parse_cidr("10.4.0.0/16").unwrap())
            )
            .await,
        Err(IpamError::Pool(PoolError::BadName(_)))
    ));
    // Nothing was stored by the refused creates.
    assert_eq!(store.list(Kind::IpPool, "").await.unwrap().objects.len(), 1);
    // A pool in use cannot be deleted; an empty one can, with its blocks.
    alloc.auto_assign(&req("a", "node1", 1, 0)).await.unwrap();
    assert!(alloc.delete_pool("p").await.is_err());
    alloc.release_by_handle("a").await.unwrap();
    assert_eq!(alloc.delete_pool("p").await.unwrap().len(), 1);
    assert!(store
        .list(Kind::IpamBlock, "")
        .await
        .unwrap()
        .objects
        .is_empty());
    assert!(store
        .list(Kind::BlockAffinity, "")
        .await
        .unwrap()
        .objects
        .is_empty());
}

pub async fn affinities_follow_claims(store: Arc<dyn Datastore>) {
    let alloc = Allocator::new(store, config());
    pool(&alloc, "p", "10.10.0.0/24", 26).await;
    let (before, rev) = alloc.affinities_of("node1").await.unwrap();
    assert!(before.is_empty());
    let a = alloc.auto_assign(&req("a", "node1", 65, 0)).await.unwrap();
    let (after, _) = alloc.affinities_of("node1").await.unwrap();
    assert_eq!(after.len(), 2);
    assert!(after
        .iter()
        .all(|a| a.spec.state == AffinityState::Confirmed));
    assert!(after.iter().any(|x| x.name == "node1-10-10-0-0-26"));
    let mut watch = alloc.watch_affinities(Some(&rev)).await.unwrap();
    let mut confirmed = HashSet::new();
    while confirmed.len() < 2 {
        let ev = tokio::time::timeout(Duration::from_secs(10), next(&mut watch))
            .await
            .expect("affinity event")
            .unwrap()
            .unwrap();
        if let ipam::allocator::AffinityEvent::Put(aff) = ev {
            if aff.spec.state == AffinityState::Confirmed {
                confirmed.insert(aff.spec.cidr);
            }
        }
    }
    let leases: HashSet<_> = a.leases.iter().map(|l| l.block).collect();
    assert_eq!(confirmed, leases);
}

pub async fn next<S: futures_core::Stream + Unpin>(s: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *s).poll_next(cx)).await
}

fn owners(list: &[&str]) -> Option<HashSet<String>> {
    Some(list.iter().map(|s| (*s).to_owned()).collect())
}

pub async fn check_finds_dead_owners_and_gc_returns_them(store: Arc<dyn Datastore>) {
    let alloc = Allocator::new(store.clone(), config());
    pool(&alloc, "p", "10.11.0.0/24", 26).await;
    pool(&alloc, "p6", "fd00:11::/64", 122).await;
    let a = alloc.auto_assign(&req("a", "node1", 1, 1)).await.unwrap();
    let b = alloc.auto_assign(&req("b", "node1", 2, 0)).await.unwrap();
    let c = alloc.auto_assign(&req("c", "node2", 1, 1)).await.unwrap();
    let live = ipam::LiveSet {
        nodes: None,
        owners: owners(&["a"]),
    };
    let report = alloc.check(&live).await.unwrap();
    let mut leaked: Vec<IpAddr> = report.leaked.iter().map(|l| l.ip).collect();
    leaked.sort();
    let mut expected: Vec<IpAddr> = b.leases.iter().chain(&c.leases).map(|l| l.ip).collect();
    expected.sort();
    assert_eq!(leaked, expected);
    let mut stale = report.stale_handles.clone();
    stale.sort();
    assert_eq!(stale, ["b", "c"]);
    assert!(report.handle_mismatches.is_empty(), "{report:?}");
    assert!(!report.is_clean());
    // Without a live set nothing is judged.
    assert!(alloc
        .check(&ipam::LiveSet::default())
        .await
        .unwrap()
        .is_clean());

    let done = alloc.gc(&live).await.unwrap();
    let mut released = done.released.clone();
    released.sort();
    assert_eq!(released, expected);
    let after = alloc.check(&live).await.unwrap();
    assert!(after.is_clean(), "{after:?}");
    assert_eq!(addresses_in_use(&alloc).await, 2);
    let a_ips: HashSet<IpAddr> = a.leases.iter().map(|l| l.ip).collect();
    for (_, block) in alloc.blocks().await.unwrap() {
        for used in block.in_use() {
            assert!(a_ips.contains(&used.ip));
        }
    }
}

pub async fn gc_repairs_interrupted_claims_and_give_backs(store: Arc<dyn Datastore>) {
    use ipam::affinity::BlockAffinitySpec;
    use ipam::block::IpamBlockSpec;
    let alloc = Allocator::new(store.clone(), config());
    pool(&alloc, "p", "10.12.0.0/24", 26).await;
    let a = alloc.auto_assign(&req("a", "node1", 1, 0)).await.unwrap();
    let put_affinity = |node: &str, cidr: &str, state: AffinityState| {
        let cidr = parse_cidr(cidr).unwrap();
        let spec = BlockAffinitySpec {
            state,
            node: node.into(),
            cidr,
        };
        (
            ipam::names::affinity_name(node, &cidr),
            serde_json::to_vec(&spec).unwrap(),
        )
    };
    // 1. Crash after the pending affinity, before the block.
    let (n1, v1) = put_affinity("node1", "10.12.0.64/26", AffinityState::Pending);
    store.create(Kind::BlockAffinity, &n1, v1).await.unwrap();
    // 2. Crash after the block, before confirming.
    let cidr2 = parse_cidr("10.12.0.128/26").unwrap();
    let (n2, v2) = put_affinity("node2", "10.12.0.128/26", AffinityState::Pending);
    store.create(Kind::BlockAffinity, &n2, v2).await.unwrap();
    let b2 = IpamBlockSpec::new(cidr2, Some("node2"), 0);
    store
        .create(
            Kind::IpamBlock,
            &ipam::names::cidr_name(&cidr2),
            serde_json::to_vec(&b2).unwrap(),
        )
        .await
        .unwrap();
    // 3. Crash mid-give-back of an empty block.
    let cidr3 = parse_cidr("10.12.0.192/26").unwrap();
    let (n3, v3) = put_affinity("node3", "10.12.0.192/26", AffinityState::PendingDeletion);
    store.create(Kind::BlockAffinity, &n3, v3).await.unwrap();
    let b3 = IpamBlockSpec::new(cidr3, Some("node3"), 0);
    store
        .create(
            Kind::IpamBlock,
            &ipam::names::cidr_name(&cidr3),
            serde_json::to_vec(&b3).unwrap(),
        )
        .await
        .unwrap();
    // 4. A block whose affinity object was lost.
    let block1 = a.leases[0].block;
    let aff1 = ipam::names::affinity_name("node1", &block1);
    let obj = store.get(Kind::BlockAffinity, &aff1).await.unwrap();
    store
        .delete(Kind::BlockAffinity, &aff1, &obj.revision)
        .await
        .unwrap();
    // 5. A handle that over-counts (crash between handle and block write).
    let h = store.get(Kind::IpamHandle, "a").await.unwrap();
    let mut hv: serde_json::Value = serde_json::from_slice(&h.value).unwrap();
    hv["block"][block1.to_string()] = serde_json::json!(2);
    store
        .update(
            Kind::IpamHandle,
            "a",
            serde_json::to_vec(&hv).unwrap(),
            &h.revision,
        )
        .await
        .unwrap();

    let live = ipam::LiveSet::default();
    let report = alloc.check(&live).await.unwrap();
    let mut unfinished: Vec<&str> = report
        .unfinished_affinities
        .iter()
        .map(|a| a.name.as_str())
        .collect();
    unfinished.sort();
    let mut want = vec![n1.as_str(), n2.as_str(), n3.as_str()];
    want.sort();
    assert_eq!(unfinished, want);
    assert_eq!(report.blocks_without_affinity, [block1]);
    assert_eq!(report.handle_mismatches.len(), 1);
    assert_eq!(report.handle_mismatches[0].counted, 2);
    assert_eq!(report.handle_mismatches[0].held, 1);

    let done = alloc.gc(&live).await.unwrap();
    assert!(done.affinities_deleted.contains(&n1), "{done:?}");
    assert!(done.affinities_confirmed.contains(&n2), "{done:?}");
    assert!(done.blocks_released.contains(&cidr3), "{done:?}");
    assert!(done.affinities_confirmed.contains(&aff1), "{done:?}");
    let after = alloc.check(&live).await.unwrap();
    assert!(after.is_clean(), "{after:?}");
    assert_eq!(alloc.blocks_affine_to("node1").await.unwrap(), [block1]);
    assert_eq!(alloc.blocks_affine_to("node2").await.unwrap(), [cidr2]);
    assert!(alloc.blocks_affine_to("node3").await.unwrap().is_empty());
    // The over-counting handle still releases exactly its one address.
    assert_eq!(
        alloc.release_by_handle("a").await.unwrap(),
        [a.leases[0].ip]
    );
}

pub async fn removing_a_node_releases_its_blocks(store: Arc<dyn Datastore>) {
    let alloc = Allocator::new(store.clone(), config());
    pool(&alloc, "p", "10.13.0.0/27", 28).await;
    alloc
        .auto_assign(&req("n1-pod", "node1", 3, 0))
        .await
        .unwrap();
    alloc
        .auto_assign(&req("n2-fill", "node2", 16, 0))
        .await
        .unwrap();
    // node2 borrows from node1's block.
    let borrowed = alloc
        .auto_assign(&req("n2-borrow", "node2", 1, 0))
        .await
        .unwrap();
    let block1 = alloc.blocks_affine_to("node1").await.unwrap()[0];
    assert_eq!(borrowed.leases[0].block, block1);

    let live = ipam::LiveSet {
        nodes: Some(["node2".to_owned()].into_iter().collect()),
        owners: None,
    };
    let report = alloc.check(&live).await.unwrap();
    assert_eq!(report.affinities_of_unknown_nodes.len(), 1);
    assert_eq!(report.blocks_of_unknown_nodes, [block1]);

    let removal = alloc.remove_node("node1").await.unwrap();
    assert_eq!(removal.released.len(), 3);
    // The block stays for node2's borrowed address, with no affinity.
    assert_eq!(removal.blocks_unaffined, [block1]);
    assert!(alloc.blocks_affine_to("node1").await.unwrap().is_empty());
    assert_eq!(addresses_in_use(&alloc).await, 17);
    alloc.release_by_handle("n2-borrow").await.unwrap();
    // Now gc gives the unowned empty block back.
    let done = alloc.gc(&live).await.unwrap();
    assert_eq!(done.blocks_released, [block1]);
    assert!(alloc.check(&live).await.unwrap().is_clean());
}

/// Rewrites a stored pool's spec (what `kubectl edit ippool` does).
async fn edit_pool(store: &Arc<dyn Datastore>, name: &str, f: impl FnOnce(&mut IpPoolSpec)) {
    let obj = store.get(Kind::IpPool, name).await.unwrap();
    let mut spec: IpPoolSpec = serde_json::from_slice(&obj.value).unwrap();
    f(&mut spec);
    store
        .update(
            Kind::IpPool,
            name,
            serde_json::to_vec(&spec).unwrap(),
            &obj.revision,
        )
        .await
        .unwrap();
}

pub async fn tunnel_addresses_follow_the_pools(store: Arc<dyn Datastore>) {
    let alloc = Allocator::new(store.clone(), config());
    let vxlan = TunnelKind::Vxlan;
    // No pool has VXLAN on: no tunnel address.
    pool(&alloc, "plain", "10.20.0.0/24", 26).await;
    assert_eq!(
        alloc
            .ensure_tunnel_address("node1", vxlan, None)
            .await
            .unwrap(),
        None
    );
    // VXLAN on, but the pool is for workloads only: still none.
    let mut spec = IpPoolSpec::new(parse_cidr("10.21.0.0/24").unwrap());
    spec.block_size = 26;
    spec.vxlan_mode = EncapMode::CrossSubnet;
    spec.allowed_uses = vec![AllowedUse::Workload];
    alloc.create_pool("vx-pods", spec).await.unwrap();
    assert_eq!(
        alloc
            .ensure_tunnel_address("node1", vxlan, None)
            .await
            .unwrap(),
        None
    );
    // A VXLAN pool for tunnels only.
    let mut spec = IpPoolSpec::new(parse_cidr("10.22.0.0/24").unwrap());
    spec.block_size = 26;
    spec.vxlan_mode = EncapMode::CrossSubnet;
    spec.allowed_uses = vec![AllowedUse::Tunnel];
    alloc.create_pool("vx-tunnels", spec).await.unwrap();
    let a = alloc
        .ensure_tunnel_address("node1", vxlan, None)
        .await
        .unwrap()
        .unwrap();
    assert!(parse_cidr("10.22.0.0/24").unwrap().contains(&IpAddr::V4(a)));
    // Asked again (an agent restart): the same address, nothing new taken.
    assert_eq!(
        alloc
            .ensure_tunnel_address("node1", vxlan, None)
            .await
            .unwrap(),
        Some(a)
    );
    assert_eq!(addresses_in_use(&alloc).await, 1);
    // From a block affine to the node, under Calico's handle and attributes.
    let holding = alloc.holdings("vxlan-tunnel-addr-node1").await.unwrap();
    assert_eq!(holding.len(), 1);
    let (block, used) = &holding[0];
    assert_eq!(used.ip, IpAddr::V4(a));
    assert_eq!(alloc.blocks_affine_to("node1").await.unwrap(), [*block]);
    assert_eq!(used.attributes["node"], "node1");
    assert_eq!(used.attributes["type"], "vxlanTunnelAddress");
    // No IPIP pool: no IPIP address.
    assert_eq!(
        alloc
            .ensure_tunnel_address("node1", TunnelKind::Ipip, None)
            .await
            .unwrap(),
        None
    );
    // A pod never gets an address from the tunnel-only pool.
    let mut pod = req("pod", "node1", 1, 0);
    pod.pools = vec!["vx-tunnels".into()];
    let err = alloc.auto_assign(&pod).await;
    assert!(matches!(err, Err(IpamError::NoPool { .. })), "{err:?}");
    // Another node gets its own.
    let b = alloc
        .ensure_tunnel_address("node2", vxlan, None)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(a, b);
    // GC: a tunnel address belongs to its node, not to a pod.
    let live = ipam::LiveSet {
        nodes: Some(["node1".to_owned(), "node2".to_owned()].into()),
        owners: owners(&[]),
    };
    let report = alloc.check(&live).await.unwrap();
    assert!(report.leaked.is_empty(), "{:?}", report.leaked);
    assert!(
        report.stale_handles.is_empty(),
        "{:?}",
        report.stale_handles
    );
    let live = ipam::LiveSet {
        nodes: Some(["node2".to_owned()].into()),
        owners: owners(&[]),
    };
    let report = alloc.check(&live).await.unwrap();
    let leaked: Vec<IpAddr> = report.leaked.iter().map(|l| l.ip).collect();
    assert_eq!(leaked, [IpAddr::V4(a)]);
    // The pool stops asking for VXLAN: the address is given back.
    edit_pool(&store, "vx-tunnels", |s| s.vxlan_mode = EncapMode::Never).await;
    assert_eq!(
        alloc
            .ensure_tunnel_address("node1", vxlan, None)
            .await
            .unwrap(),
        None
    );
    assert!(alloc
        .holdings("vxlan-tunnel-addr-node1")
        .await
        .unwrap()
        .is_empty());
    // Moved to another pool: the old address is released, a new one taken.
    let mut spec = IpPoolSpec::new(parse_cidr("10.23.0.0/24").unwrap());
    spec.block_size = 26;
    spec.vxlan_mode = EncapMode::Always;
    alloc.create_pool("vx-new", spec).await.unwrap();
    let c = alloc
        .ensure_tunnel_address("node2", vxlan, None)
        .await
        .unwrap()
        .unwrap();
    assert!(parse_cidr("10.23.0.0/24").unwrap().contains(&IpAddr::V4(c)));
    let node2: Vec<IpAddr> = alloc
        .holdings("vxlan-tunnel-addr-node2")
        .await
        .unwrap()
        .iter()
        .map(|(_, u)| u.ip)
        .collect();
    assert_eq!(node2, [IpAddr::V4(c)], "{b} was not released");
    // Released by handle (tunnel switched off for good).
    assert_eq!(
        alloc.release_tunnel_address("node2", vxlan).await.unwrap(),
        [IpAddr::V4(c)]
    );
    assert_eq!(addresses_in_use(&alloc).await, 0);
}

/// Two allocators on one store, as two agents or processes: each serves
/// its allocations from its read cache and its last-seen blocks, and still
/// never hands out an address the other holds; a pool change by the other
/// reaches the cache through its watch.
pub async fn cached_reads_stay_correct_with_another_writer(store: Arc<dyn Datastore>) {
    let a = Allocator::new(store.clone(), config());
    let b = Allocator::new(store.clone(), config());
    pool(&a, "p", "10.14.0.0/24", 26).await;
    let mut seen = HashSet::new();
    let mut take = |got: ipam::Assigned| {
        assert!(
            seen.insert(got.v4[0].addr()),
            "{:?} handed out twice",
            got.v4[0]
        );
        got.v4[0].addr()
    };
    // a fills its cache and remembers the block; b writes the same block.
    let first = take(a.auto_assign(&req("h1", "node1", 1, 0)).await.unwrap());
    take(a.auto_assign(&req("h2", "node1", 1, 0)).await.unwrap());
    take(b.auto_assign(&req("h3", "node1", 1, 0)).await.unwrap());
    // a's remembered block is stale: its write conflicts, it re-reads.
    take(a.auto_assign(&req("h4", "node1", 1, 0)).await.unwrap());
    // b frees a's first address behind a's back; a must see that too (the
    // free list puts it last, so a gets another one, not a duplicate).
    assert_eq!(b.release_by_handle("h1").await.unwrap(), [first]);
    take(a.auto_assign(&req("h5", "node1", 1, 0)).await.unwrap());
    assert_eq!(addresses_in_use(&a).await, 4);
    // b disables the pool: a stops using it once its watch has delivered
    // the change (SQLite: its poll interval; etcd: at once).
    let obj = store.get(Kind::IpPool, "p").await.unwrap();
    let mut spec: serde_json::Value = serde_json::from_slice(&obj.value).unwrap();
    spec["disabled"] = serde_json::json!(true);
    store
        .update(
            Kind::IpPool,
            "p",
            serde_json::to_vec(&spec).unwrap(),
            &obj.revision,
        )
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut stale = 0;
    loop {
        match a
            .auto_assign(&req(&format!("late{stale}"), "node1", 1, 0))
            .await
        {
            Err(IpamError::NoPool { .. }) => break,
            Ok(got) => {
                take(got);
                stale += 1;
            }
            Err(e) => panic!("{e}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the disabled pool was still used after 5 s ({stale} allocations)"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(addresses_in_use(&a).await, 4 + stale);
}

/// Many requests of one node at once (its pods starting together): their
/// block writes are batched, and still no address is handed out twice,
/// every handle holds exactly what it was given, and blocks are claimed
/// only when the node's blocks are full (one at a time, not one per
/// waiting request).
pub async fn concurrent_allocations_on_one_node_never_duplicate(store: Arc<dyn Datastore>) {
    let alloc = Arc::new(Allocator::new(store, config()));
    // /28 blocks: 16 addresses each.
    pool(&alloc, "p", "10.15.0.0/24", 28).await;
    let mut tasks = Vec::new();
    for t in 0..24 {
        let alloc = Arc::clone(&alloc);
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for (i, n) in [1, 2, 1].into_iter().enumerate() {
                let handle = format!("t{t}-{i}");
                let a = alloc
                    .auto_assign(&req(&handle, "node1", n, 0))
                    .await
                    .unwrap();
                assert_eq!(a.v4.len(), n as usize);
                got.push((handle, a));
            }
            got
        }));
    }
    let mut seen = HashSet::new();
    let mut owners = HashSet::new();
    for task in tasks {
        for (handle, a) in task.await.unwrap() {
            let held: HashSet<IpAddr> = alloc
                .holdings(&handle)
                .await
                .unwrap()
                .into_iter()
                .map(|(_, u)| u.ip)
                .collect();
            let given: HashSet<IpAddr> = a.v4.iter().map(|n| n.addr()).collect();
            assert_eq!(held, given, "handle {handle} holds other addresses");
            for ip in given {
                assert!(seen.insert(ip), "{ip} handed out twice");
            }
            owners.insert(handle);
        }
    }
    // 24 x 4 = 96 addresses: 6 blocks of 16, and one claimed ahead when
    // fewer than 4 (a quarter of a block) were left free. No claim twice
    // for one need: a seventh block would leave 16 + 4 or more free.
    assert_eq!(seen.len(), 96);
    alloc.wait_for_claims_ahead().await;
    let mut blocks = alloc.blocks_affine_to("node1").await.unwrap();
    blocks.sort();
    assert_eq!(blocks.len(), 7, "blocks claimed: {blocks:?}");
    assert_eq!(addresses_in_use(&alloc).await, 96);
    let report = alloc
        .check(&ipam::LiveSet {
            nodes: Some(["node1".to_owned()].into()),
            owners: Some(owners),
        })
        .await
        .unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert!(report.handle_mismatches.is_empty(), "{report:?}");
}

/// A batch in which some requests cannot be met: 12 requests of 2
/// addresses at once for a pool of one block of 16. Those that cannot get
/// both get nothing (all or nothing, rolled back), those that can hold
/// exactly theirs, and no address is lost: afterwards the rest of the
/// block can still be allocated, to the last address.
pub async fn a_batch_where_some_requests_cannot_be_met_loses_nothing(store: Arc<dyn Datastore>) {
    let alloc = Arc::new(Allocator::new(store, config()));
    pool(&alloc, "p", "10.16.0.0/28", 28).await;
    let mut tasks = Vec::new();
    for t in 0..12 {
        let alloc = Arc::clone(&alloc);
        tasks.push(tokio::spawn(async move {
            let handle = format!("t{t}");
            let got = alloc.auto_assign(&req(&handle, "node1", 2, 0)).await;
            (handle, got)
        }));
    }
    let mut seen = HashSet::new();
    let mut succeeded = 0;
    for task in tasks {
        let (handle, got) = task.await.unwrap();
        let held: HashSet<IpAddr> = alloc
            .holdings(&handle)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, u)| u.ip)
            .collect();
        match got {
            Ok(a) => {
                succeeded += 1;
                let given: HashSet<IpAddr> = a.v4.iter().map(|n| n.addr()).collect();
                assert_eq!(given.len(), 2);
                assert_eq!(held, given, "handle {handle} holds other addresses");
                for ip in given {
                    assert!(seen.insert(ip), "{ip} handed out twice");
                }
            }
            Err(IpamError::Exhausted { wanted: 2, .. }) => {
                assert!(held.is_empty(), "failed {handle} still holds {held:?}");
            }
            Err(e) => panic!("{handle}: {e}"),
        }
    }
    assert!((1..=8).contains(&succeeded), "{succeeded} of 12 succeeded");
    assert_eq!(addresses_in_use(&alloc).await, 2 * succeeded);
    // Nothing lost: the free rest of the block goes, one by one.
    let mut more = 0;
    loop {
        match alloc
            .auto_assign(&req(&format!("rest{more}"), "node1", 1, 0))
            .await
        {
            Ok(a) => {
                assert!(seen.insert(a.v4[0].addr()), "{} handed out twice", a.v4[0]);
                more += 1;
            }
            Err(IpamError::Exhausted { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(
        seen.len(),
        16,
        "addresses lost: only {} of 16 handed out",
        seen.len()
    );
}

pub async fn usage_counts_a_nodes_blocks_by_pool(store: Arc<dyn Datastore>) {
    let alloc = Allocator::new(store.clone(), config());
    pool(&alloc, "a", "10.30.0.0/24", 28).await;
    assert_eq!(alloc.usage_of("node1").await.unwrap(), []);
    // 20 addresses for node1: one full /28 (16) and 4 from a second;
    // 3 for node2 from a third block.
    for i in 0..20 {
        alloc
            .auto_assign(&req(&format!("n1-{i}"), "node1", 1, 0))
            .await
            .unwrap();
    }
    for i in 0..3 {
        alloc
            .auto_assign(&req(&format!("n2-{i}"), "node2", 1, 0))
            .await
            .unwrap();
    }
    let cidr = parse_cidr("10.30.0.0/24").unwrap();
    assert_eq!(
        alloc.usage_of("node1").await.unwrap(),
        [PoolUsage {
            pool: cidr,
            blocks: 2,
            in_use: 20,
            capacity: 32,
        }]
    );
    assert_eq!(
        alloc.usage_of("node2").await.unwrap(),
        [PoolUsage {
            pool: cidr,
            blocks: 1,
            in_use: 3,
            capacity: 16,
        }]
    );
    // A release shows at the next read.
    alloc.release_by_handle("n2-0").await.unwrap();
    assert_eq!(alloc.usage_of("node2").await.unwrap()[0].in_use, 2);
}

/// The node's confirmed blocks, and whether any affinity of it is left
/// pending or pending deletion.
async fn node_blocks(alloc: &Allocator, node: &str) -> Vec<ipnet::IpNet> {
    let (affinities, _) = alloc.affinities_of(node).await.unwrap();
    assert!(
        affinities
            .iter()
            .all(|a| a.spec.state == AffinityState::Confirmed),
        "{affinities:?}"
    );
    let mut blocks: Vec<_> = affinities.into_iter().map(|a| a.spec.cidr).collect();
    blocks.sort();
    blocks
}

/// A node's next block is claimed in the background once fewer than a
/// quarter of a block's addresses are left free in its blocks, and the
/// requests after that use it without claiming. The block claimed ahead
/// is an ordinary affine block: `check` finds nothing wrong with it, and
/// while it has never been used `reclaim_empty_blocks` leaves it alone
/// (a block emptied after use still goes).
pub async fn claims_the_next_block_ahead(store: Arc<dyn Datastore>) {
    let alloc = Allocator::new(
        store.clone(),
        AllocatorConfig {
            empty_block_grace: Duration::ZERO,
            ..config()
        },
    );
    // /28 blocks of 16: claimed ahead below 4 free.
    pool(&alloc, "p", "10.40.0.0/24", 28).await;
    let take = |i: usize| {
        let alloc = &alloc;
        async move {
            alloc
                .auto_assign(&req(&format!("h{i}"), "node1", 1, 0))
                .await
                .unwrap()
        }
    };
    for i in 0..12 {
        take(i).await;
    }
    alloc.wait_for_claims_ahead().await;
    let first = node_blocks(&alloc, "node1").await;
    assert_eq!(first.len(), 1, "4 free left: no claim yet");
    take(12).await;
    alloc.wait_for_claims_ahead().await;
    let both = node_blocks(&alloc, "node1").await;
    assert_eq!(both.len(), 2, "3 free left: the next block is claimed");
    let ahead = *both.iter().find(|b| **b != first[0]).unwrap();
    let spare = store
        .get(Kind::IpamBlock, &ipam::names::cidr_name(&ahead))
        .await
        .unwrap();
    let spare = ipam::block::IpamBlockSpec::from_object(&spare).unwrap();
    assert!(spare.is_empty());
    assert_eq!(spare.affine_node(), Some("node1"));

    let live = ipam::LiveSet {
        nodes: Some(["node1".to_owned()].into()),
        owners: Some((0..13).map(|i| format!("h{i}")).collect()),
    };
    let report = alloc.check(&live).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert!(alloc.reclaim_empty_blocks().await.unwrap().is_empty());

    // The first block fills, then the next request is served from the
    // block claimed ahead; nothing more is claimed (15 free).
    for i in 13..17 {
        let got = take(i).await;
        let want = if i < 16 { first[0] } else { ahead };
        assert_eq!(got.leases[0].block, want, "request {i}");
    }
    alloc.wait_for_claims_ahead().await;
    assert_eq!(node_blocks(&alloc, "node1").await, both);

    // Emptied after use, the first block goes back; the other is in use.
    for i in 0..16 {
        alloc.release_by_handle(&format!("h{i}")).await.unwrap();
    }
    assert_eq!(alloc.reclaim_empty_blocks().await.unwrap(), first);
    assert_eq!(node_blocks(&alloc, "node1").await, [ahead]);
}

/// Claims ahead never take the blocks a short pool has left for nodes
/// that have none: with strict affinity and a pool of 4 blocks, node1
/// gets one block ahead while 3 are unclaimed, node2 none when only 2 are
/// (a quarter and at least two must stay), node3 still claims the last
/// block, and node4 is refused (strict: no borrowing). Without strict
/// affinity node4 borrows, from any other node's block.
pub async fn claim_ahead_leaves_a_short_pool_to_nodes_without_blocks(store: Arc<dyn Datastore>) {
    let strict = Allocator::new(
        store.clone(),
        AllocatorConfig {
            strict_affinity: true,
            ..config()
        },
    );
    // 4 blocks of 16.
    pool(&strict, "p", "10.41.0.0/26", 28).await;
    for node in ["node1", "node2"] {
        for i in 0..13 {
            strict
                .auto_assign(&req(&format!("{node}-{i}"), node, 1, 0))
                .await
                .unwrap();
        }
        strict.wait_for_claims_ahead().await;
    }
    assert_eq!(node_blocks(&strict, "node1").await.len(), 2);
    assert_eq!(node_blocks(&strict, "node2").await.len(), 1);
    let last = strict
        .auto_assign(&req("node3-0", "node3", 16, 0))
        .await
        .unwrap();
    assert_eq!(last.v4.len(), 16);
    strict.wait_for_claims_ahead().await;
    let err = strict.auto_assign(&req("node4-0", "node4", 1, 0)).await;
    assert!(matches!(err, Err(IpamError::Exhausted { .. })), "{err:?}");
    // node1 still has its own 3 + 16 free addresses.
    let more = strict
        .auto_assign(&req("node1-more", "node1", 19, 0))
        .await
        .unwrap();
    assert_eq!(more.v4.len(), 19);
    let lenient = Allocator::new(store.clone(), config());
    let borrowed = lenient
        .auto_assign(&req("node4-0", "node4", 1, 0))
        .await
        .unwrap();
    assert_eq!(borrowed.v4.len(), 1);
    assert!(node_blocks(&lenient, "node4").await.is_empty());
    assert_eq!(addresses_in_use(&lenient).await, 13 + 13 + 16 + 19 + 1);
}

/// Removing a node gives back the block claimed ahead for it too.
pub async fn removing_a_node_releases_blocks_claimed_ahead(store: Arc<dyn Datastore>) {
    let alloc = Allocator::new(store.clone(), config());
    pool(&alloc, "p", "10.42.0.0/24", 28).await;
    for i in 0..13 {
        alloc
            .auto_assign(&req(&format!("h{i}"), "node1", 1, 0))
            .await
            .unwrap();
    }
    alloc.wait_for_claims_ahead().await;
    let blocks = node_blocks(&alloc, "node1").await;
    assert_eq!(blocks.len(), 2);
    let removal = alloc.remove_node("node1").await.unwrap();
    assert_eq!(removal.released.len(), 13);
    let mut released = removal.blocks_released.clone();
    released.sort();
    assert_eq!(released, blocks);
    assert!(alloc.blocks().await.unwrap().is_empty());
    assert!(store
        .list(Kind::BlockAffinity, "")
        .await
        .unwrap()
        .objects
        .is_empty());
    let report = alloc.check(&ipam::LiveSet::default()).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
}

/// The handle of an allocation is counted with its block (in the block's
/// transaction where the store has them): a new handle is created, an
/// existing one counted up, and a request whose handle name is stored for
/// another handle id fails alone, with nothing allocated for it, while
/// requests batched with it get their addresses.
pub async fn handles_are_counted_with_their_block(store: Arc<dyn Datastore>) {
    let alloc = Arc::new(Allocator::new(store.clone(), config()));
    pool(&alloc, "p", "10.43.0.0/24", 26).await;
    alloc
        .auto_assign(&req("pod-a", "node1", 1, 0))
        .await
        .unwrap();
    alloc
        .auto_assign(&req("pod-a", "node1", 2, 0))
        .await
        .unwrap();
    assert_eq!(alloc.holdings("pod-a").await.unwrap().len(), 3);
    let handle = store.get(Kind::IpamHandle, "pod-a").await.unwrap();
    let spec: ipam::handle::IpamHandleSpec = serde_json::from_slice(&handle.value).unwrap();
    assert_eq!(spec.block.values().copied().collect::<Vec<_>>(), [3]);

    // "taken" is stored as the name of another handle id.
    let other = serde_json::json!({ "handleID": "someone-else", "block": {} });
    store
        .create(Kind::IpamHandle, "taken", other.to_string().into_bytes())
        .await
        .unwrap();
    let tasks: Vec<_> = ["taken", "b1", "b2", "b3"]
        .into_iter()
        .map(|h| {
            let alloc = Arc::clone(&alloc);
            tokio::spawn(async move { (h, alloc.auto_assign(&req(h, "node1", 1, 0)).await) })
        })
        .collect();
    for task in tasks {
        let (h, got) = task.await.unwrap();
        if h == "taken" {
            assert!(
                matches!(got, Err(IpamError::HandleCollision { .. })),
                "{got:?}"
            );
        } else {
            assert_eq!(got.unwrap().v4.len(), 1, "{h}");
        }
    }
    assert_eq!(addresses_in_use(&alloc).await, 3 + 3);
    let untouched = store.get(Kind::IpamHandle, "taken").await.unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&untouched.value).unwrap(),
        other
    );
    let live = ipam::LiveSet {
        nodes: None,
        owners: Some(
            ["pod-a", "b1", "b2", "b3", "someone-else"]
                .into_iter()
                .map(String::from)
                .collect(),
        ),
    };
    let report = alloc.check(&live).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert!(report.handle_mismatches.is_empty(), "{report:?}");
}
