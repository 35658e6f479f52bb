#![allow(clippy::unwrap_used, clippy::expect_used)]
//! IPAM allocation throughput and latency: felix's allocator on SQLite and
//! on etcd, and in the same run Debian's reference `host-local` IPAM plugin
//! allocating from a range of the same size (/16).
//!
//! `cargo bench -p felix-rs --bench ipam` prints a table; docs/benchmarks.md
//! has the figures. Env: `IPAM_BENCH_SCALE` multiplies the operation counts.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipam::pool::{parse_cidr, IpPoolSpec};
use ipam::store::Datastore;
use ipam::testing::{addresses_in_use, Interposed};
use ipam::{Allocator, AllocatorConfig, AutoAssignRequest};

const HOST_LOCAL: &str = "/usr/lib/cni/host-local";
const POOL: &str = "10.0.0.0/16";
/// Nodes the allocators are spread over (allocator i runs as node i % NODES),
/// except in the "one node" rows, where every allocator is the same node (the
/// pods of one node starting together: they share that node's blocks).
const NODES: usize = 8;

struct Row {
    what: String,
    allocators: usize,
    ops: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Row {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> Duration {
        let mut l = self.latencies.clone();
        l.sort();
        let i = ((l.len() as f64 - 1.0) * p).round() as usize;
        l.get(i).copied().unwrap_or_default()
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

/// One felix row's set-up.
#[derive(Clone, Copy)]
struct Shape {
    allocators: usize,
    cached_reads: bool,
    claim_ahead: bool,
    /// Hide the store's transactions, so each allocation writes its handle
    /// on its own before the block (the Kubernetes backend's way, and how
    /// every backend did it before handles went into the block write).
    handles_apart: bool,
    nodes: usize,
    suffix: &'static str,
}

async fn felix_run(store: Arc<dyn Datastore>, what: &str, shape: Shape, ops: usize) -> Row {
    let Shape {
        allocators,
        cached_reads,
        claim_ahead,
        handles_apart,
        nodes,
        ..
    } = shape;
    let store: Arc<dyn Datastore> = if handles_apart {
        Arc::new(Interposed::without_transactions(store))
    } else {
        store
    };
    let config = AllocatorConfig {
        cached_reads,
        claim_ahead_below: if claim_ahead {
            AllocatorConfig::default().claim_ahead_below
        } else {
            0.0
        },
        ..AllocatorConfig::default()
    };
    let alloc = Arc::new(Allocator::new(store, config));
    alloc
        .create_pool("bench", IpPoolSpec::new(parse_cidr(POOL).unwrap()))
        .await
        .unwrap();
    let per_task = ops / allocators;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for a in 0..allocators {
        let alloc = Arc::clone(&alloc);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_task);
            for i in 0..per_task {
                let t = Instant::now();
                let got = alloc
                    .auto_assign(&AutoAssignRequest {
                        handle: format!("a{a}-{i}"),
                        node: format!("node{}", a % nodes),
                        num_v4: 1,
                        ..AutoAssignRequest::default()
                    })
                    .await
                    .unwrap();
                lat.push(t.elapsed());
                assert_eq!(got.v4.len(), 1);
            }
            lat
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed();
    // (A claim ahead still running would outlive its store.)
    alloc.wait_for_claims_ahead().await;
    // Every address handed out once.
    assert_eq!(addresses_in_use(&alloc).await, per_task * allocators);
    Row {
        what: what.to_owned(),
        allocators,
        ops: per_task * allocators,
        elapsed,
        latencies,
    }
}

/// `host-local` ADD, one process per allocation (that is how a runtime
/// calls it), `allocators` at a time, from a /16 range.
fn host_local_run(allocators: usize, ops: usize) -> Row {
    let dir = tempfile::tempdir().unwrap();
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"bench","ipam":{{"type":"host-local","ranges":[[{{"subnet":"{POOL}"}}]],"dataDir":"{}"}}}}"#,
        dir.path().display()
    );
    let conf = Arc::new(conf);
    let per_thread = ops / allocators;
    let start = Instant::now();
    let threads: Vec<_> = (0..allocators)
        .map(|a| {
            let conf = Arc::clone(&conf);
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(per_thread);
                for i in 0..per_thread {
                    let t = Instant::now();
                    let mut child = Command::new(HOST_LOCAL)
                        .env("CNI_COMMAND", "ADD")
                        .env("CNI_CONTAINERID", format!("c{a}-{i}"))
                        .env("CNI_NETNS", "/var/run/netns/bench")
                        .env("CNI_IFNAME", "eth0")
                        .env("CNI_PATH", "/usr/lib/cni")
                        .stdin(Stdio::piped())
                        .stdout(Stdio::piped())
                        .spawn()
                        .unwrap();
                    child
                        .stdin
                        .take()
                        .unwrap()
                        .write_all(conf.as_bytes())
                        .unwrap();
                    let out = child.wait_with_output().unwrap();
                    assert!(
                        out.status.success(),
                        "{}",
                        String::from_utf8_lossy(&out.stdout)
                    );
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in threads {
        latencies.extend(t.join().unwrap());
    }
    let elapsed = start.elapsed();
    let files = std::fs::read_dir(dir.path().join("bench"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("10."))
        })
        .count();
    assert_eq!(
        files,
        per_thread * allocators,
        "host-local lost an allocation"
    );
    Row {
        what: "host-local (process per ADD)".into(),
        allocators,
        ops: per_thread * allocators,
        elapsed,
        latencies,
    }
}

/// `felix ipam allocate` on SQLite, one process per allocation: the same
/// shape as host-local (a plugin execed per ADD).
fn felix_cli_run(allocators: usize, ops: usize) -> Row {
    let dir = tempfile::tempdir().unwrap();
    let url = Arc::new(format!("sqlite:{}", dir.path().join("ipam.db").display()));
    let felix = env!("CARGO_BIN_EXE_felix");
    let st = Command::new(felix)
        .args([
            "ipam",
            "--datastore",
            &url,
            "pools",
            "create",
            "--cidr",
            POOL,
        ])
        .output()
        .unwrap();
    assert!(st.status.success());
    let per_thread = ops / allocators;
    let start = Instant::now();
    let threads: Vec<_> = (0..allocators)
        .map(|a| {
            let url = Arc::clone(&url);
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(per_thread);
                for i in 0..per_thread {
                    let t = Instant::now();
                    let out = Command::new(felix)
                        .args(["ipam", "--datastore", &url, "allocate"])
                        .args(["--node", &format!("node{}", a % NODES)])
                        .args(["--handle", &format!("c{a}-{i}")])
                        .output()
                        .unwrap();
                    assert!(
                        out.status.success(),
                        "{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in threads {
        latencies.extend(t.join().unwrap());
    }
    Row {
        what: "felix ipam allocate, sqlite (process per allocation)".into(),
        allocators,
        ops: per_thread * allocators,
        elapsed: start.elapsed(),
        latencies,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing
    // else useful: run a tiny version there so the harness stays honest.
    let quick = !std::env::args().any(|a| a == "--bench");
    let scale: f64 = std::env::var("IPAM_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 0.02 } else { 1.0 });
    let n = |base: usize| ((base as f64 * scale) as usize).max(32);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    // Per backend: 1, 8 and 32 allocators over 8 nodes; the same allocator
    // with its read cache off (every allocation reads pools, node,
    // affinities and block from the store), the way it was before the
    // cache; 8 allocators all on one node; and the 8-allocator rows again
    // without claiming blocks ahead (every 64th allocation claims its
    // block itself), with each handle written apart from its block, and
    // with neither (the way it was before both).
    let shape = |allocators, cached_reads, claim_ahead, handles_apart, nodes, suffix| Shape {
        allocators,
        cached_reads,
        claim_ahead,
        handles_apart,
        nodes,
        suffix,
    };
    let shapes = [
        shape(1, true, true, false, NODES, ""),
        shape(8, true, true, false, NODES, ""),
        shape(32, true, true, false, NODES, ""),
        shape(8, false, true, false, NODES, ", cache off"),
        shape(8, true, true, false, 1, ", one node"),
        shape(8, true, false, false, NODES, ", no claim ahead"),
        shape(8, true, true, true, NODES, ", handles apart"),
        shape(
            8,
            true,
            false,
            true,
            NODES,
            ", no claim ahead, handles apart",
        ),
        shape(
            8,
            true,
            false,
            true,
            1,
            ", one node, no claim ahead, handles apart",
        ),
    ];
    for shape in shapes {
        let dir = tempfile::tempdir().unwrap();
        let what = format!("felix, sqlite{}", shape.suffix);
        let row = rt.block_on(async {
            let store = ipam::store::sqlite::SqliteStore::open(dir.path().join("ipam.db"))
                .await
                .unwrap();
            felix_run(Arc::new(store), &what, shape, n(8_000)).await
        });
        rows.push(row);
    }
    if std::path::Path::new("/usr/bin/etcd").exists() {
        for shape in shapes {
            let what = format!("felix, etcd{}", shape.suffix);
            let row = rt.block_on(async {
                let server = ipam::testing::EtcdServer::start().await.unwrap();
                let store = server.store().await.unwrap();
                let row = felix_run(Arc::new(store), &what, shape, n(4_000)).await;
                drop(server);
                row
            });
            rows.push(row);
        }
    } else {
        eprintln!("SKIPPED etcd rows: /usr/bin/etcd not installed (etcd-server)");
    }
    if std::path::Path::new(HOST_LOCAL).exists() {
        for allocators in [1, 8, 32] {
            rows.push(host_local_run(allocators, n(2_000)));
        }
    } else {
        eprintln!(
            "SKIPPED host-local rows: {HOST_LOCAL} not installed (containernetworking-plugins)"
        );
    }
    for allocators in [1, 8] {
        rows.push(felix_cli_run(allocators, n(1_000)));
    }

    println!(
        "| what | allocators | allocations | allocations/s | p50 ms | p99 ms |\n| --- | ---: | ---: | ---: | ---: | ---: |"
    );
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.0} | {} | {} |",
            r.what,
            r.allocators,
            r.ops,
            r.rate(),
            ms(r.percentile(0.5)),
            ms(r.percentile(0.99))
        );
    }
    let find = |what: &str, a: usize| rows.iter().find(|r| r.what == what && r.allocators == a);
    for backend in ["sqlite", "etcd"] {
        let on = find(&format!("felix, {backend}"), 8);
        let off = find(&format!("felix, {backend}, cache off"), 8);
        if let (Some(on), Some(off)) = (on, off) {
            println!(
                "{backend} at 8, read cache on vs off: {:.2}x the rate, p99 {} vs {} ms",
                on.rate() / off.rate(),
                ms(on.percentile(0.99)),
                ms(off.percentile(0.99))
            );
        }
    }
    for backend in ["sqlite", "etcd"] {
        for (now, then, what) in [
            ("", ", no claim ahead", "claim ahead on vs off"),
            ("", ", handles apart", "handles with the block vs apart"),
            ("", ", no claim ahead, handles apart", "both vs neither"),
            (
                ", one node",
                ", one node, no claim ahead, handles apart",
                "one node, both vs neither",
            ),
        ] {
            let now = find(&format!("felix, {backend}{now}"), 8);
            let then = find(&format!("felix, {backend}{then}"), 8);
            if let (Some(now), Some(then)) = (now, then) {
                println!(
                    "{backend} at 8, {what}: {:.2}x the rate, p50 {} vs {} ms, p99 {} vs {} ms",
                    now.rate() / then.rate(),
                    ms(now.percentile(0.5)),
                    ms(then.percentile(0.5)),
                    ms(now.percentile(0.99)),
                    ms(then.percentile(0.99))
                );
            }
        }
    }
    for backend in ["sqlite", "etcd"] {
        let spread = find(&format!("felix, {backend}"), 8);
        let one = find(&format!("felix, {backend}, one node"), 8);
        if let (Some(spread), Some(one)) = (spread, one) {
            println!(
                "{backend} at 8, one node vs 8 nodes: {:.2}x the rate, p99 {} vs {} ms",
                one.rate() / spread.rate(),
                ms(one.percentile(0.99)),
                ms(spread.percentile(0.99))
            );
        }
    }
    if let (Some(s), Some(h)) = (
        find("felix, sqlite", 8),
        find("host-local (process per ADD)", 8),
    ) {
        println!(
            "\nsqlite at 8: {:.0}/s (target >= 2000: {}), p99 {} ms (target < 5: {}); {:.1}x host-local",
            s.rate(),
            if s.rate() >= 2000.0 { "met" } else { "NOT met" },
            ms(s.percentile(0.99)),
            if s.percentile(0.99) < Duration::from_millis(5) { "met" } else { "NOT met" },
            s.rate() / h.rate()
        );
    }
    if let (Some(e), Some(h)) = (
        find("felix, etcd", 8),
        find("host-local (process per ADD)", 8),
    ) {
        println!(
            "etcd at 8: {:.0}/s (target >= 1000: {}); {:.1}x host-local",
            e.rate(),
            if e.rate() >= 1000.0 { "met" } else { "NOT met" },
            e.rate() / h.rate()
        );
    }
}
