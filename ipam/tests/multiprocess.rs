#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Allocators in two OS processes on one datastore: no address is ever
//! held twice, none is lost; a process killed mid-allocation leaves only
//! what `check` reports and `gc` returns.
//!
//! The second process is this test binary again, running the ignored
//! `worker_process` test with its orders in the environment.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipam::pool::{parse_cidr, IpPoolSpec};
use ipam::store::Datastore;
use ipam::{Allocator, AllocatorConfig, AutoAssignRequest, BlockRelease, LiveSet, ReleaseRequest};

const TASKS_PER_PROCESS: usize = 4;
const NODES: usize = 4;
/// Allocate + release operations per task: 8 tasks x 2,500 = 20,000.
const OPS_PER_TASK: usize = 2_500;

fn config() -> AllocatorConfig {
    AllocatorConfig {
        backoff_base: Duration::from_micros(200),
        backoff_max: Duration::from_millis(20),
        max_attempts: 1_000,
        ..AllocatorConfig::default()
    }
}

fn nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// One line of a worker's log.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Event {
    /// "alloc" or "release".
    op: String,
    handle: String,
    ip: IpAddr,
    block: String,
    sequence: u64,
    /// alloc: when the call returned; release: when it started.
    at: u128,
}

async fn open(url: &str) -> Arc<dyn Datastore> {
    ipam::store::open(url).await.unwrap()
}

/// Runs `TASKS_PER_PROCESS` allocator tasks doing `OPS_PER_TASK` operations
/// each; every event goes to `log`.
async fn stress(url: &str, process: usize, log: &Path) {
    let alloc = Arc::new(Allocator::new(open(url).await, config()));
    let mut tasks = Vec::new();
    for t in 0..TASKS_PER_PROCESS {
        let alloc = Arc::clone(&alloc);
        tasks.push(tokio::spawn(async move {
            let node = format!("node{}", (t + process) % NODES);
            let mut rng = fastrand::Rng::with_seed((process * 100 + t) as u64);
            let mut held: Vec<(String, Vec<ipam::Lease>)> = Vec::new();
            let mut events = Vec::new();
            let mut n = 0;
            for op in 0..OPS_PER_TASK {
                let must_release = held.len() >= 8 || (op + held.len() >= OPS_PER_TASK);
                if !must_release && (held.is_empty() || rng.bool()) {
                    let handle = format!("p{process}-t{t}-{n}");
                    n += 1;
                    let got = alloc
                        .auto_assign(&AutoAssignRequest {
                            handle: handle.clone(),
                            node: node.clone(),
                            num_v4: 1,
                            num_v6: u32::from(rng.u8(..4) == 0),
                            ..AutoAssignRequest::default()
                        })
                        .await
                        .unwrap();
                    let at = nanos();
                    for l in &got.leases {
                        events.push(Event {
                            op: "alloc".into(),
                            handle: handle.clone(),
                            ip: l.ip,
                            block: l.block.to_string(),
                            sequence: l.sequence,
                            at,
                        });
                    }
                    held.push((handle, got.leases));
                } else {
                    let (handle, leases) = held.swap_remove(rng.usize(..held.len()));
                    let at = nanos();
                    for l in &leases {
                        events.push(Event {
                            op: "release".into(),
                            handle: handle.clone(),
                            ip: l.ip,
                            block: l.block.to_string(),
                            sequence: l.sequence,
                            at,
                        });
                    }
                    if rng.bool() {
                        let released = alloc.release_by_handle(&handle).await.unwrap();
                        assert_eq!(released.len(), leases.len(), "{handle}");
                    } else {
                        let reqs: Vec<ReleaseRequest> = leases
                            .iter()
                            .map(|l| ReleaseRequest {
                                ip: l.ip,
                                handle: Some(handle.clone()),
                                sequence: Some(l.sequence),
                            })
                            .collect();
                        for out in alloc.release_ips(&reqs).await.unwrap() {
                            assert!(
                                matches!(out.outcome, BlockRelease::Released { .. }),
                                "{handle}: {out:?}"
                            );
                        }
                    }
                }
            }
            assert!(held.is_empty());
            events
        }));
    }
    let mut file = std::io::BufWriter::new(std::fs::File::create(log).unwrap());
    for task in tasks {
        for e in task.await.unwrap() {
            serde_json::to_writer(&mut file, &e).unwrap();
            file.write_all(b"\n").unwrap();
        }
    }
    file.flush().unwrap();
}

/// Allocates until killed; logs each handle after its allocation returned.
async fn allocate_until_killed(url: &str, log: &Path) {
    let alloc = Arc::new(Allocator::new(open(url).await, config()));
    let file = Arc::new(std::sync::Mutex::new(std::fs::File::create(log).unwrap()));
    let mut tasks = Vec::new();
    for t in 0..TASKS_PER_PROCESS {
        let alloc = Arc::clone(&alloc);
        let file = Arc::clone(&file);
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let handle = format!("crash-t{t}-{i}");
                let got = alloc
                    .auto_assign(&AutoAssignRequest {
                        handle: handle.clone(),
                        node: format!("node{}", t % 2),
                        num_v4: 1,
                        num_v6: 1,
                        ..AutoAssignRequest::default()
                    })
                    .await
                    .unwrap();
                let ips: Vec<String> = got.leases.iter().map(|l| l.ip.to_string()).collect();
                let mut f = file.lock().unwrap();
                writeln!(f, "{handle} {}", ips.join(" ")).unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// The second process: does what `IPAM_WORKER` says, then exits.
#[test]
#[ignore = "run by the multi-process tests in a child process"]
fn worker_process() {
    let Ok(mode) = std::env::var("IPAM_WORKER") else {
        panic!("worker_process is started by the multi-process tests, with IPAM_WORKER set");
    };
    let url = std::env::var("IPAM_URL").unwrap();
    let log = PathBuf::from(std::env::var("IPAM_LOG").unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        match mode.as_str() {
            "stress" => stress(&url, 1, &log).await,
            "crash" => allocate_until_killed(&url, &log).await,
            other => panic!("unknown worker mode {other}"),
        }
    });
}

fn spawn_worker(mode: &str, url: &str, log: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "worker_process", "--nocapture"])
        .env("IPAM_WORKER", mode)
        .env("IPAM_URL", url)
        .env("IPAM_LOG", log)
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// Kills the child if the test fails before it is reaped.
struct Reap(Option<Child>);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn read_events(path: &Path) -> Vec<Event> {
    std::io::BufReader::new(std::fs::File::open(path).unwrap())
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect()
}

async fn setup_pools(store: &Arc<dyn Datastore>) {
    let alloc = Allocator::new(Arc::clone(store), config());
    let v4 = IpPoolSpec::new(parse_cidr("10.30.0.0/20").unwrap());
    alloc.create_pool("v4", v4).await.unwrap();
    let v6 = IpPoolSpec::new(parse_cidr("fd00:30::/112").unwrap());
    alloc.create_pool("v6", v6).await.unwrap();
}

/// Checks the merged event logs: every (block, sequence) once, and no
/// address given to a new holder before the previous one began releasing.
fn assert_no_duplicates(events: &[Event]) {
    let mut seqs = HashSet::new();
    for e in events.iter().filter(|e| e.op == "alloc") {
        assert!(
            seqs.insert((e.block.clone(), e.sequence)),
            "two allocations with one sequence number: {e:?}"
        );
    }
    let release_start: HashMap<(String, IpAddr), u128> = events
        .iter()
        .filter(|e| e.op == "release")
        .map(|e| ((e.handle.clone(), e.ip), e.at))
        .collect();
    let mut by_ip: BTreeMap<IpAddr, Vec<&Event>> = BTreeMap::new();
    for e in events.iter().filter(|e| e.op == "alloc") {
        by_ip.entry(e.ip).or_default().push(e);
    }
    let mut reused = 0;
    for allocs in by_ip.values_mut() {
        allocs.sort_by_key(|e| e.sequence);
        for pair in allocs.windows(2) {
            let (prev, next) = (pair[0], pair[1]);
            let released = release_start
                .get(&(prev.handle.clone(), prev.ip))
                .unwrap_or_else(|| panic!("{} never released {}", prev.handle, prev.ip));
            assert!(
                *released < next.at,
                "{} got {} before {} began releasing it",
                next.handle,
                next.ip,
                prev.handle
            );
            reused += 1;
        }
    }
    assert!(reused > 0, "the test never reused an address");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_8_allocators_20k_ops_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("ipam.db").display());
    two_processes_stress(&url, dir.path()).await;
}

/// The stress run against any datastore URL (the etcd test uses it too).
async fn two_processes_stress(url: &str, dir: &Path) {
    let store = open(url).await;
    setup_pools(&store).await;
    let child_log = dir.join("child.log");
    let parent_log = dir.join("parent.log");
    let started = Instant::now();
    let mut child = Reap(Some(spawn_worker("stress", url, &child_log)));
    stress(url, 0, &parent_log).await;
    let mut c = child.0.take().unwrap();
    let status = tokio::task::spawn_blocking(move || c.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "worker process failed: {status}");
    eprintln!("20,000 operations in {:?}", started.elapsed());

    let mut events = read_events(&parent_log);
    events.extend(read_events(&child_log));
    let allocs = events.iter().filter(|e| e.op == "alloc").count();
    let releases = events.iter().filter(|e| e.op == "release").count();
    assert_eq!(allocs, releases);
    assert_no_duplicates(&events);

    let alloc = Allocator::new(Arc::clone(&store), config());
    assert_eq!(
        ipam::testing::addresses_in_use(&alloc).await,
        0,
        "addresses still held after every release"
    );
    assert!(store
        .list(ipam::store::Kind::IpamHandle, "")
        .await
        .unwrap()
        .objects
        .is_empty());
    let report = alloc
        .check(&LiveSet {
            nodes: Some((0..NODES).map(|n| format!("node{n}")).collect()),
            owners: Some(HashSet::new()),
        })
        .await
        .unwrap();
    assert!(report.is_clean(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_allocation_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("ipam.db").display());
    sigkill_mid_allocation(&url, dir.path()).await;
}

async fn sigkill_mid_allocation(url: &str, dir: &Path) {
    let store = open(url).await;
    setup_pools(&store).await;
    let log = dir.join("crash.log");
    let mut child = Reap(Some(spawn_worker("crash", url, &log)));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let lines = std::fs::read_to_string(&log)
            .map(|s| s.lines().count())
            .unwrap_or(0);
        if lines >= 300 {
            break;
        }
        assert!(Instant::now() < deadline, "worker made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // SIGKILL: no destructor, no unwinding, mid-write.
    let mut c = child.0.take().unwrap();
    c.kill().unwrap();
    c.wait().unwrap();

    // Whole lines only (the last may be torn).
    let text = std::fs::read_to_string(&log).unwrap();
    let mut logged: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    for line in text.lines() {
        let mut parts = line.split(' ');
        let handle = parts.next().unwrap().to_owned();
        let ips: Vec<IpAddr> = parts.filter_map(|p| p.parse().ok()).collect();
        if ips.len() == 2 {
            logged.insert(handle, ips);
        }
    }
    // The pods of even-numbered allocations still exist; the others are gone.
    let index = |h: &str| h.rsplit('-').next().unwrap().parse::<u64>().unwrap();
    let live: HashSet<String> = logged
        .keys()
        .filter(|h| index(h) % 2 == 0)
        .cloned()
        .collect();
    let live_ips: HashSet<IpAddr> = live.iter().flat_map(|h| logged[h].clone()).collect();
    let dead_logged: HashSet<IpAddr> = logged
        .iter()
        .filter(|(h, _)| !live.contains(*h))
        .flat_map(|(_, ips)| ips.clone())
        .collect();

    let alloc = Allocator::new(Arc::clone(&store), config());
    let liveset = LiveSet {
        nodes: Some(["node0".to_owned(), "node1".to_owned()].into()),
        owners: Some(live.clone()),
    };
    let report = alloc.check(&liveset).await.unwrap();
    let leaked: HashSet<IpAddr> = report.leaked.iter().map(|l| l.ip).collect();
    // Exactly: every dead owner's address, no live owner's, and besides
    // those only allocations in flight at the kill (handles never logged).
    assert!(dead_logged.is_subset(&leaked));
    assert!(leaked.is_disjoint(&live_ips));
    let in_flight: HashSet<&str> = report
        .leaked
        .iter()
        .filter(|l| !dead_logged.contains(&l.ip))
        .map(|l| l.handle_id.as_deref().unwrap())
        .collect();
    for h in &in_flight {
        assert!(!logged.contains_key(*h), "{h} was logged yet reported");
    }
    assert!(in_flight.len() <= TASKS_PER_PROCESS, "{in_flight:?}");
    eprintln!(
        "killed after {} allocations: {} leaked ({} in flight), {} unfinished affinities, {} handle mismatches",
        logged.len(),
        leaked.len(),
        in_flight.len(),
        report.unfinished_affinities.len(),
        report.handle_mismatches.len()
    );

    let done = alloc.gc(&liveset).await.unwrap();
    let released: HashSet<IpAddr> = done.released.iter().copied().collect();
    assert_eq!(released, leaked);
    let after = alloc.check(&liveset).await.unwrap();
    assert!(after.is_clean(), "{after:?}");
    // Every live pod keeps exactly its addresses.
    let mut held = HashSet::new();
    for (_, block) in alloc.blocks().await.unwrap() {
        for used in block.in_use() {
            assert!(live.contains(used.handle_id.as_deref().unwrap()));
            held.insert(used.ip);
        }
    }
    assert_eq!(held, live_ips);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_8_allocators_20k_ops_etcd() {
    let server = ipam::testing::EtcdServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    two_processes_stress(&server.url(), dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_allocation_etcd() {
    let server = ipam::testing::EtcdServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    sigkill_mid_allocation(&server.url(), dir.path()).await;
}
