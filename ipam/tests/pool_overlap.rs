#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Pool creates refuse overlaps race-free (the pool index,
//! `ipam::pool_index`): many allocators creating pairwise-overlapping
//! pools at once leave exactly one pool, every other create gets the
//! overlap error; deletes keep the index equal to the stored pools; a
//! store without the index (older felix, or pools written by `kubectl`)
//! is still checked. On sqlite (also from two OS processes), a real etcd
//! and the mock Kubernetes API server.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipam::pool::{parse_cidr, IpPoolSpec, PoolError};
use ipam::pool_index::{read_index, IpPoolIndexSpec, INDEX_NAME};
use ipam::store::{Datastore, Kind, StoreError};
use ipam::testing::{EtcdUnderTest, KubeUnderTest, SqliteUnderTest};
use ipam::{Allocator, AllocatorConfig, IpamError};
use ipnet::IpNet;

/// Creates racing at once.
const RACERS: usize = 16;

fn config() -> AllocatorConfig {
    AllocatorConfig {
        backoff_base: Duration::from_micros(200),
        backoff_max: Duration::from_millis(10),
        ..AllocatorConfig::default()
    }
}

/// The `i`-th of a family of CIDRs that all overlap each other: 10.0.0.0/8,
/// 10.0.0.0/9, … (each holds the next).
fn nested(i: usize) -> IpNet {
    parse_cidr(&format!("10.0.0.0/{}", 8 + i)).unwrap()
}

fn spec(cidr: IpNet) -> IpPoolSpec {
    IpPoolSpec::new(cidr)
}

/// Whether `result` is an overlap refusal; `strict`: only the plain one
/// (a reservation is only ever seen without transactions, while the other
/// create is between its index write and its pool write).
fn is_overlap(result: &Result<(), IpamError>, strict: bool) -> bool {
    match result {
        Err(IpamError::Pool(PoolError::Overlaps { .. })) => true,
        Err(IpamError::Pool(PoolError::OverlapsReserved { .. })) => !strict,
        _ => false,
    }
}

async fn stored_pools(store: &dyn Datastore) -> BTreeMap<String, IpNet> {
    store
        .list(Kind::IpPool, "")
        .await
        .unwrap()
        .objects
        .into_iter()
        .map(|o| {
            let spec: IpPoolSpec = serde_json::from_slice(&o.value).unwrap();
            (o.name, spec.cidr)
        })
        .collect()
}

async fn index(store: &dyn Datastore) -> BTreeMap<String, IpNet> {
    read_index(store).await.unwrap().unwrap_or_default().pools
}

/// `RACERS` allocators (one each, as separate agents or CLI runs would
/// be) each create pool `{prefix}-{i}` over `cidr(i)` at the same moment.
async fn race(
    store: &Arc<dyn Datastore>,
    prefix: &str,
    cidr: impl Fn(usize) -> IpNet,
) -> Vec<Result<(), IpamError>> {
    let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
    let mut tasks = Vec::new();
    for i in 0..RACERS {
        let alloc = Allocator::new(Arc::clone(store), config());
        let barrier = Arc::clone(&barrier);
        let (name, spec) = (format!("{prefix}-{i}"), spec(cidr(i)));
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            alloc.create_pool(&name, spec).await
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    results
}

/// Overlapping racers: exactly one wins; the index is the stored pools.
/// Twice, the second time after deleting the winner (the delete frees
/// its range and the index follows). Then disjoint racers: all win (a
/// conflict on the index is retried, not returned).
async fn overlapping_creates_one_wins(store: Arc<dyn Datastore>) {
    let strict = store.transactional();
    for round in ["a", "b"] {
        let results = race(&store, round, nested).await;
        let won: Vec<usize> = (0..RACERS).filter(|i| results[*i].is_ok()).collect();
        assert_eq!(won.len(), 1, "round {round}: {results:?}");
        for (i, r) in results.iter().enumerate() {
            assert!(
                r.is_ok() || is_overlap(r, strict),
                "round {round} racer {i}: {r:?}"
            );
        }
        let winner = format!("{round}-{}", won[0]);
        let expected = BTreeMap::from([(winner.clone(), nested(won[0]))]);
        assert_eq!(stored_pools(store.as_ref()).await, expected);
        assert_eq!(index(store.as_ref()).await, expected);
        let alloc = Allocator::new(Arc::clone(&store), config());
        alloc.delete_pool(&winner).await.unwrap();
        assert!(stored_pools(store.as_ref()).await.is_empty());
        assert!(index(store.as_ref()).await.is_empty());
    }
    let disjoint = |i: usize| parse_cidr(&format!("10.{}.0.0/16", 100 + i)).unwrap();
    let results = race(&store, "c", disjoint).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let expected: BTreeMap<_, _> = (0..RACERS)
        .map(|i| (format!("c-{i}"), disjoint(i)))
        .collect();
    assert_eq!(stored_pools(store.as_ref()).await, expected);
    assert_eq!(index(store.as_ref()).await, expected);
}

/// Pools stored without the index (a store from before it, or pools
/// applied with `kubectl`) are checked, and the first create writes the
/// index with them; a pool written behind felix's back after that is
/// still checked, and joins the index at the next create.
async fn pools_without_the_index_are_checked(store: Arc<dyn Datastore>) {
    let alloc = Allocator::new(Arc::clone(&store), config());
    let old = parse_cidr("10.1.0.0/16").unwrap();
    store
        .create(Kind::IpPool, "old", serde_json::to_vec(&spec(old)).unwrap())
        .await
        .unwrap();
    assert_eq!(read_index(store.as_ref()).await.unwrap(), None);
    let refused = alloc
        .create_pool("new", spec(parse_cidr("10.1.4.0/24").unwrap()))
        .await;
    assert!(
        matches!(&refused, Err(IpamError::Pool(PoolError::Overlaps { other, .. })) if other == "old"),
        "{refused:?}"
    );
    let new = parse_cidr("10.2.0.0/16").unwrap();
    alloc.create_pool("new", spec(new)).await.unwrap();
    assert_eq!(
        index(store.as_ref()).await,
        BTreeMap::from([("new".to_owned(), new), ("old".to_owned(), old)])
    );
    let applied = parse_cidr("10.3.0.0/16").unwrap();
    store
        .create(
            Kind::IpPool,
            "applied",
            serde_json::to_vec(&spec(applied)).unwrap(),
        )
        .await
        .unwrap();
    let refused = alloc
        .create_pool("x", spec(parse_cidr("10.0.0.0/8").unwrap()))
        .await;
    assert!(is_overlap(&refused, true), "{refused:?}");
    // A taken name is refused whatever the CIDR, and nothing changes.
    let taken = alloc
        .create_pool("old", spec(parse_cidr("10.9.0.0/16").unwrap()))
        .await;
    assert!(
        matches!(
            &taken,
            Err(IpamError::Store(StoreError::AlreadyExists { kind: Kind::IpPool, name })) if name == "old"
        ),
        "{taken:?}"
    );
    let fourth = parse_cidr("10.4.0.0/16").unwrap();
    alloc.create_pool("fourth", spec(fourth)).await.unwrap();
    assert_eq!(
        index(store.as_ref()).await,
        stored_pools(store.as_ref()).await
    );
    assert_eq!(index(store.as_ref()).await.len(), 4);
    // Deleting a pool stored before the index existed keeps them equal.
    alloc.delete_pool("old").await.unwrap();
    assert_eq!(
        index(store.as_ref()).await,
        stored_pools(store.as_ref()).await
    );
    assert!(!index(store.as_ref()).await.contains_key("old"));
}

/// An entry without a pool (a create or delete interrupted between its two
/// writes on Kubernetes) blocks overlapping creates with an error that
/// says so; deleting the pool by name frees it.
async fn a_stale_reservation_is_reported_and_freed(store: Arc<dyn Datastore>) {
    let alloc = Allocator::new(Arc::clone(&store), config());
    let ghost = parse_cidr("10.7.0.0/16").unwrap();
    let spec_bytes = serde_json::to_vec(&IpPoolIndexSpec {
        pools: BTreeMap::from([("ghost".to_owned(), ghost)]),
    })
    .unwrap();
    store
        .create(Kind::IpPoolIndex, INDEX_NAME, spec_bytes)
        .await
        .unwrap();
    let refused = alloc
        .create_pool("p", spec(parse_cidr("10.7.1.0/24").unwrap()))
        .await;
    match &refused {
        Err(e @ IpamError::Pool(PoolError::OverlapsReserved { other, .. })) => {
            assert_eq!(other, "ghost");
            assert!(
                e.to_string()
                    .contains("`felix ipam pools delete ghost` frees it"),
                "{e}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        alloc.delete_pool("ghost").await.unwrap(),
        Vec::<IpNet>::new()
    );
    assert!(index(store.as_ref()).await.is_empty());
    alloc
        .create_pool("p", spec(parse_cidr("10.7.1.0/24").unwrap()))
        .await
        .unwrap();
    // A name neither stored nor reserved is still NotFound.
    assert!(matches!(
        alloc.delete_pool("ghost").await,
        Err(IpamError::Store(StoreError::NotFound { .. }))
    ));
}

macro_rules! on_every_backend {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let t = super::SqliteUnderTest::open().await;
                    super::$case(t.store.clone()).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let t = super::EtcdUnderTest::start().await;
                    super::$case(t.store.clone()).await;
                }
            )*
        }
        mod kubernetes {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let t = super::KubeUnderTest::start().await;
                    super::$case(t.store.clone()).await;
                }
            )*
        }
    };
}

on_every_backend!(
    overlapping_creates_one_wins,
    pools_without_the_index_are_checked,
    a_stale_reservation_is_reported_and_freed,
);

// ----- two OS processes on one sqlite file ------------------------------

/// Racers per process.
const PROCESS_RACERS: usize = 8;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// One process's racers: each its own allocator over its own connection,
/// all starting at `start_ms`; prints `ok NAME` or `overlap NAME` per racer.
async fn process_racers(db: &Path, process: usize, start_ms: u64) {
    let mut tasks = Vec::new();
    for t in 0..PROCESS_RACERS {
        let i = process * PROCESS_RACERS + t;
        let store: Arc<dyn Datastore> =
            Arc::new(ipam::store::sqlite::SqliteStore::open(db).await.unwrap());
        tasks.push(tokio::spawn(async move {
            let wait = start_ms.saturating_sub(now_ms());
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let name = format!("proc{process}-{t}");
            let result = Allocator::new(store, config())
                .create_pool(&name, spec(nested(i)))
                .await;
            match result {
                Ok(()) => format!("ok {name}"),
                Err(IpamError::Pool(PoolError::Overlaps { .. })) => format!("overlap {name}"),
                Err(e) => format!("error {name}: {e}"),
            }
        }));
    }
    for t in tasks {
        println!("{}", t.await.unwrap());
    }
}

/// The child process: runs its racers as the environment says.
#[test]
#[ignore = "run by two_processes_on_sqlite in a child process"]
fn pool_racer_process() {
    let Ok(db) = std::env::var("POOL_RACE_DB") else {
        panic!("pool_racer_process is started by two_processes_on_sqlite");
    };
    let process: usize = std::env::var("POOL_RACE_PROCESS").unwrap().parse().unwrap();
    let start: u64 = std::env::var("POOL_RACE_START_MS")
        .unwrap()
        .parse()
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(process_racers(Path::new(&db), process, start));
}

#[test]
fn two_processes_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ipam.db");
    // Create the schema first, so that the racers only race on pools.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        ipam::store::sqlite::SqliteStore::open(&db).await.unwrap();
    });
    let start = now_ms() + 1_500;
    let children: Vec<_> = (0..2)
        .map(|process| {
            Command::new(std::env::current_exe().unwrap())
                .args(["--ignored", "--exact", "pool_racer_process", "--nocapture"])
                .env("POOL_RACE_DB", &db)
                .env("POOL_RACE_PROCESS", process.to_string())
                .env("POOL_RACE_START_MS", start.to_string())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut lines = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        lines.extend(
            text.lines()
                .filter(|l| {
                    l.starts_with("ok ") || l.starts_with("overlap ") || l.starts_with("error ")
                })
                .map(str::to_owned),
        );
    }
    assert_eq!(lines.len(), 2 * PROCESS_RACERS, "{lines:?}");
    let won: Vec<_> = lines.iter().filter(|l| l.starts_with("ok ")).collect();
    assert_eq!(won.len(), 1, "{lines:?}");
    assert!(lines.iter().all(|l| !l.starts_with("error ")), "{lines:?}");
    let winner = won[0].trim_start_matches("ok ").to_owned();
    rt.block_on(async {
        let store = ipam::store::sqlite::SqliteStore::open(&db).await.unwrap();
        let pools = stored_pools(&store).await;
        assert_eq!(pools.keys().collect::<Vec<_>>(), vec![&winner]);
        assert_eq!(index(&store).await, pools);
    });
}
