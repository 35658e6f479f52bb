#![allow(clippy::unwrap_used, clippy::expect_used)]
//! An etcd run with a `--max-txn-ops` below the allocator's batches (the
//! default is 128; a batch is the block and up to 64 handles): the store
//! says which error it is (`TooManyWrites`, nothing written), and the
//! allocator halves its batches and carries on, handing out every address
//! once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use ipam::pool::{parse_cidr, IpPoolSpec};
use ipam::store::{Datastore, Kind, StoreError, Write};
use ipam::testing::etcd_server::EtcdOptions;
use ipam::testing::{addresses_in_use, EtcdServer};
use ipam::{Allocator, AllocatorConfig, AutoAssignRequest};

/// The limit the test etcd runs with.
const MAX_TXN_OPS: u32 = 4;

async fn etcd() -> (EtcdServer, Arc<dyn Datastore>) {
    let server = EtcdServer::start_with(EtcdOptions {
        max_txn_ops: Some(MAX_TXN_OPS),
        ..EtcdOptions::default()
    })
    .await
    .unwrap();
    let store: Arc<dyn Datastore> = Arc::new(server.store().await.unwrap());
    (server, store)
}

fn handle(n: usize) -> Write {
    Write::Create {
        kind: Kind::IpamHandle,
        name: format!("h{n}"),
        value: br#"{"handleID":"x","block":{}}"#.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_over_the_limit_is_too_many_writes_and_writes_nothing() {
    let (_server, store) = etcd().await;
    let over: Vec<Write> = (0..=MAX_TXN_OPS as usize).map(handle).collect();
    let err = store.write_all(over).await.unwrap_err();
    assert!(
        matches!(err, StoreError::TooManyWrites { writes } if writes == MAX_TXN_OPS as usize + 1),
        "{err:?}"
    );
    assert!(err.to_string().contains("--max-txn-ops"), "{err}");
    assert!(store
        .list(Kind::IpamHandle, "")
        .await
        .unwrap()
        .objects
        .is_empty());
    let at: Vec<Write> = (0..MAX_TXN_OPS as usize).map(handle).collect();
    store.write_all(at).await.unwrap();
    assert_eq!(
        store
            .list(Kind::IpamHandle, "")
            .await
            .unwrap()
            .objects
            .len(),
        MAX_TXN_OPS as usize
    );
}

/// 48 requests of one node at once, each with its own handle: the batches
/// that form (the block and a handle per request) are larger than etcd
/// takes; each is halved until it fits, and every request gets one address
/// of its own, counted in its handle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_too_large_for_etcd_are_halved() {
    let (_server, store) = etcd().await;
    let config = AllocatorConfig {
        backoff_base: Duration::from_micros(200),
        backoff_max: Duration::from_millis(10),
        ..AllocatorConfig::default()
    };
    let alloc = Arc::new(Allocator::new(Arc::clone(&store), config));
    alloc
        .create_pool("p", IpPoolSpec::new(parse_cidr("10.60.0.0/24").unwrap()))
        .await
        .unwrap();
    // A first allocation claims the node's block, so that the 48 queue on it.
    alloc
        .auto_assign(&AutoAssignRequest {
            handle: "first".into(),
            node: "node1".into(),
            num_v4: 1,
            ..AutoAssignRequest::default()
        })
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..48 {
        let alloc = Arc::clone(&alloc);
        tasks.push(tokio::spawn(async move {
            let handle = format!("pod-{i}");
            let got = alloc
                .auto_assign(&AutoAssignRequest {
                    handle: handle.clone(),
                    node: "node1".into(),
                    num_v4: 1,
                    ..AutoAssignRequest::default()
                })
                .await
                .unwrap();
            (handle, got.v4[0].addr())
        }));
    }
    let mut seen = HashSet::new();
    for t in tasks {
        let (handle, ip) = t.await.unwrap();
        assert!(seen.insert(ip), "{ip} handed out twice");
        let held = alloc.holdings(&handle).await.unwrap();
        assert_eq!(held.len(), 1, "{handle}: {held:?}");
    }
    alloc.wait_for_claims_ahead().await;
    assert_eq!(addresses_in_use(&alloc).await, 49);
}
