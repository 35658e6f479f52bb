//! etcd killed (SIGKILL) and started again on the same data directory in
//! the middle of a burst of compare-and-swap writes: the writers see
//! `Unavailable`, carry on once etcd is back, and no update is lost or
//! applied twice; a watcher that resumes from its last revision after the
//! outage sees every write exactly once, in order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use ipam::store::{Datastore, Kind, Revision, StoreError, WatchEvent};
use ipam::testing::EtcdServer;
use serde_json::{json, Value};

const TASKS: u64 = 8;
const OPS_PER_TASK: u64 = 40;
const COUNTER: &str = "counter";

/// The counter's value: a count and the id of every operation applied, so
/// that a write whose answer was lost in the outage can be recognised on
/// the next read instead of being applied a second time.
fn value(n: u64, ops: &[String]) -> Vec<u8> {
    json!({ "n": n, "ops": ops }).to_string().into_bytes()
}

fn decode(bytes: &[u8]) -> (u64, Vec<String>) {
    let v: Value = serde_json::from_slice(bytes).unwrap();
    let ops = v["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap().to_owned())
        .collect();
    (v["n"].as_u64().unwrap(), ops)
}

/// Applies one increment tagged `op`, retrying through conflicts and
/// outages until it is known to be in the store exactly once.
async fn increment(store: &dyn Datastore, op: &str, unavailable: &AtomicU64, landed: &AtomicU64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "{op}: no progress for 60 s");
        let current = match store.get(Kind::IpamHandle, COUNTER).await {
            Ok(o) => o,
            Err(StoreError::Unavailable(_)) => {
                unavailable.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => panic!("{op}: read failed: {e}"),
        };
        let (n, mut ops) = decode(&current.value);
        if ops.iter().any(|o| o == op) {
            // An earlier attempt did land; its answer was lost.
            landed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        ops.push(op.to_owned());
        match store
            .update(
                Kind::IpamHandle,
                COUNTER,
                value(n + 1, &ops),
                &current.revision,
            )
            .await
        {
            Ok(_) => return,
            Err(StoreError::Conflict { .. }) => {}
            Err(StoreError::Unavailable(_)) => {
                unavailable.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{op}: write failed: {e}"),
        }
    }
}

/// Follows the counter through outages: on `Unavailable` it watches again
/// from the last revision it saw. Returns the counts seen, in order.
async fn follow(store: Arc<dyn Datastore>, from: Revision, until: u64) -> Vec<u64> {
    let mut seen = Vec::new();
    let mut last = from;
    let deadline = Instant::now() + Duration::from_secs(90);
    'rewatch: while Instant::now() < deadline {
        let mut watch = match store.watch(Kind::IpamHandle, Some(&last)).await {
            Ok(w) => w,
            Err(StoreError::Unavailable(_)) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => panic!("watch: {e}"),
        };
        while let Some(item) = watch.next().await {
            match item {
                Ok(WatchEvent::Put(o)) => {
                    last = o.revision.clone();
                    let (n, _) = decode(&o.value);
                    seen.push(n);
                    if n == until {
                        return seen;
                    }
                }
                Ok(other) => panic!("unexpected {other:?}"),
                Err(StoreError::Unavailable(_)) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue 'rewatch;
                }
                Err(e) => panic!("watch: {e}"),
            }
        }
        // The stream ended without an error item: watch again too.
    }
    panic!("the watcher saw only {} of {until} writes", seen.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_restart_during_cas_burst_loses_and_duplicates_nothing() {
    let mut server = EtcdServer::start().await.unwrap();
    let store: Arc<dyn Datastore> = Arc::new(server.store().await.unwrap());
    let start = store
        .create(Kind::IpamHandle, COUNTER, value(0, &[]))
        .await
        .unwrap();
    let total = TASKS * OPS_PER_TASK;
    let watcher = tokio::spawn(follow(store.clone(), start, total));

    let unavailable = Arc::new(AtomicU64::new(0));
    let landed = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        let unavailable = unavailable.clone();
        let landed = landed.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..OPS_PER_TASK {
                increment(store.as_ref(), &format!("t{t}-{i}"), &unavailable, &landed).await;
            }
        }));
    }

    // Let the burst get going, then kill etcd under it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (n, _) = decode(&store.get(Kind::IpamHandle, COUNTER).await.unwrap().value);
        if n >= total / 5 {
            break;
        }
        assert!(Instant::now() < deadline, "the burst did not start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.restart().await.unwrap();
    println!("etcd was down for {:?}", killed_at.elapsed());

    for w in writers {
        tokio::time::timeout(Duration::from_secs(90), w)
            .await
            .unwrap()
            .unwrap();
    }
    let seen = tokio::time::timeout(Duration::from_secs(90), watcher)
        .await
        .unwrap()
        .unwrap();

    let unavailable = unavailable.load(Ordering::Relaxed);
    println!(
        "writers saw {unavailable} Unavailable errors; {} writes had landed although their \
         answer was lost",
        landed.load(Ordering::Relaxed)
    );
    assert!(
        unavailable > 0,
        "the restart happened after the burst: the test proved nothing"
    );

    let (n, ops) = decode(&store.get(Kind::IpamHandle, COUNTER).await.unwrap().value);
    assert_eq!(n, total, "count");
    assert_eq!(ops.len() as u64, total, "one op id per increment");
    let unique: BTreeSet<_> = ops.iter().collect();
    assert_eq!(unique.len() as u64, total, "an op was applied twice");
    let expected: BTreeSet<String> = (0..TASKS)
        .flat_map(|t| (0..OPS_PER_TASK).map(move |i| format!("t{t}-{i}")))
        .collect();
    assert_eq!(
        unique.into_iter().cloned().collect::<BTreeSet<_>>(),
        expected,
        "an op was lost"
    );
    assert_eq!(
        seen,
        (1..=total).collect::<Vec<_>>(),
        "the watcher missed or repeated a write"
    );
}
