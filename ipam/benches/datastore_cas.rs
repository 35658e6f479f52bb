//! Datastore read-modify-write speed: the unit every IPAM write is made of
//! (get an object, update it compare-and-swap on the revision read), with
//! 1, 8 and 32 concurrent writers, each on its own object (no conflicts:
//! this measures the store, not contention). Backends in the same run:
//! sqlite (a file in /tmp, WAL, synchronous=NORMAL), etcd on loopback with
//! `--unsafe-no-fsync` (the same durability class as that sqlite: survives
//! the process being killed, not a power loss) and etcd with fsync on every
//! commit (production etcd).
//!
//! `cargo bench -p ipam --bench datastore_cas` prints a table;
//! `DATASTORE_BENCH_CYCLES` sets the cycles per cell (default 3000).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use ipam::store::{Datastore, Kind};
use ipam::testing::etcd_server::EtcdOptions;
use ipam::testing::{EtcdServer, SqliteUnderTest};

async fn cell(
    store: Arc<dyn Datastore>,
    writers: usize,
    cycles: usize,
    tag: &str,
) -> (f64, Duration, Duration) {
    for w in 0..writers {
        store
            .create(
                Kind::IpamBlock,
                &format!("{tag}-{w}"),
                br#"{"n":0}"#.to_vec(),
            )
            .await
            .unwrap();
    }
    let per_writer = cycles / writers;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        let name = format!("{tag}-{w}");
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_writer);
            for i in 0..per_writer {
                let t = Instant::now();
                let o = store.get(Kind::IpamBlock, &name).await.unwrap();
                let value = format!(r#"{{"n":{}}}"#, i + 1).into_bytes();
                store
                    .update(Kind::IpamBlock, &name, value, &o.revision)
                    .await
                    .unwrap();
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    (
        all.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
    )
}

fn main() {
    let cycles: usize = std::env::var("DATASTORE_BENCH_CYCLES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(3000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!("get + compare-and-swap update cycles, {cycles} per cell, own object per writer");
        println!("| backend | writers | cycles/s | p50 | p99 |");
        println!("| --- | ---: | ---: | ---: | ---: |");
        let sqlite = SqliteUnderTest::open().await;
        let fast_etcd = EtcdServer::start().await.unwrap();
        let durable_etcd = EtcdServer::start_with(EtcdOptions {
            fsync: true,
            ..EtcdOptions::default()
        })
        .await
        .unwrap();
        let backends: Vec<(&str, Arc<dyn Datastore>)> = vec![
            ("sqlite (WAL, synchronous=NORMAL)", sqlite.store.clone()),
            (
                "etcd 3.4, --unsafe-no-fsync",
                Arc::new(fast_etcd.store().await.unwrap()),
            ),
            (
                "etcd 3.4, fsync",
                Arc::new(durable_etcd.store().await.unwrap()),
            ),
        ];
        for writers in [1usize, 8, 32] {
            for (name, store) in &backends {
                let (rate, p50, p99) =
                    cell(store.clone(), writers, cycles, &format!("w{writers}")).await;
                println!(
                    "| {name} | {writers} | {rate:.0} | {:.2} ms | {:.2} ms |",
                    p50.as_secs_f64() * 1e3,
                    p99.as_secs_f64() * 1e3
                );
            }
        }
    });
}
