//! Route programming: N remote /26 routes with a gateway installed, then
//! removed, by felix's `RouteProgrammer` and by `ip -batch`, in the same run,
//! in a fresh network namespace (root). See docs/benchmarks.md.
//!
//!   cargo bench -p felix-rs --bench route_programming -- [N] [ROUNDS]
//!
//! felix's figures are whole reconciles: link dump, route dump (v4 + v6),
//! diff, and the batched writes with every ACK read. The desired table is
//! built before the clock starts (the agent keeps it between reconciles).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use felix_rs::routes::{DesiredRoutes, RouteProgrammer};
use ipnet::IpNet;
use nix::sched::{setns, CloneFlags};

struct Ns(String);
impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn sh(cmd: &str) {
    let o = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        o.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn block(i: u32) -> IpNet {
    IpNet::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i * 64)), 26).unwrap()
}

fn route_count(ns: &str) -> usize {
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!("ip -n {ns} route show | wc -l"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
}

fn ip_batch(ns: &str, file: &str) -> Duration {
    let t = Instant::now();
    sh(&format!("ip -n {ns} -batch {file}"));
    t.elapsed()
}

fn felix_round(ns: &str, n: u32) -> (Duration, Duration) {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        setns(File::open(&path).unwrap(), CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut table = DesiredRoutes::new();
            for i in 0..n {
                table
                    .via_gateway(block(i), "192.0.2.2".parse().unwrap())
                    .unwrap();
            }
            let mut p = RouteProgrammer::new().unwrap();
            p.set_desired(table);
            let t = Instant::now();
            let add = p.reconcile().await.unwrap();
            let add_time = t.elapsed();
            assert!(
                add.errors.is_empty(),
                "{:?}",
                &add.errors[..add.errors.len().min(3)]
            );
            assert_eq!(add.added, n as usize);
            p.set_desired(DesiredRoutes::new());
            let t = Instant::now();
            let del = p.reconcile().await.unwrap();
            let del_time = t.elapsed();
            assert!(del.errors.is_empty());
            assert_eq!(del.deleted, n as usize);
            (add_time, del_time)
        })
    })
    .join()
    .unwrap()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let n: u32 = args.first().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let ns = Ns(format!("felixbench-{}", std::process::id()));
    sh(&format!("ip netns add {}", ns.0));
    sh(&format!("ip -n {} link set lo up", ns.0));
    sh(&format!(
        "ip -n {} link add under0 type veth peer name under0p",
        ns.0
    ));
    sh(&format!(
        "ip -n {0} link set under0 up && ip -n {0} link set under0p up",
        ns.0
    ));
    sh(&format!("ip -n {} addr add 192.0.2.1/24 dev under0", ns.0));
    let base = route_count(&ns.0);

    let dir = tempfile::tempdir().unwrap();
    let add_file = dir.path().join("add.batch");
    let del_file = dir.path().join("del.batch");
    {
        let mut a = std::io::BufWriter::new(File::create(&add_file).unwrap());
        let mut d = std::io::BufWriter::new(File::create(&del_file).unwrap());
        for i in 0..n {
            writeln!(a, "route add {} via 192.0.2.2 proto static", block(i)).unwrap();
            writeln!(d, "route del {} via 192.0.2.2 proto static", block(i)).unwrap();
        }
    }
    let (add_file, del_file) = (add_file.to_str().unwrap(), del_file.to_str().unwrap());

    let (mut ip_add, mut ip_del, mut fx_add, mut fx_del) = (vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        // Alternate who goes first so that neither always gets a warm cache.
        for who in if round % 2 == 0 {
            ["ip", "felix"]
        } else {
            ["felix", "ip"]
        } {
            if who == "ip" {
                ip_add.push(ip_batch(&ns.0, add_file));
                assert_eq!(route_count(&ns.0), base + n as usize);
                ip_del.push(ip_batch(&ns.0, del_file));
            } else {
                let (a, d) = felix_round(&ns.0, n);
                fx_add.push(a);
                fx_del.push(d);
            }
            assert_eq!(route_count(&ns.0), base);
        }
        eprintln!(
            "round {}: ip add {:?} del {:?} | felix add {:?} del {:?}",
            round + 1,
            ip_add[round],
            ip_del[round],
            fx_add[round],
            fx_del[round]
        );
    }
    let (ia, id, fa, fd) = (
        median(ip_add),
        median(ip_del),
        median(fx_add),
        median(fx_del),
    );
    println!("route programming, {n} /26 routes via a gateway, median of {rounds} rounds");
    println!("| step   | ip -batch | felix    | felix / ip |");
    println!("| ---    | ---:      | ---:     | ---:       |");
    for (step, i, f) in [
        ("add", ia, fa),
        ("delete", id, fd),
        ("total", ia + id, fa + fd),
    ] {
        println!(
            "| {step:<6} | {:>7.3} s | {:>6.3} s | {:>9.2}x |",
            i.as_secs_f64(),
            f.as_secs_f64(),
            f.as_secs_f64() / i.as_secs_f64()
        );
    }
    let ratio = (fa + fd).as_secs_f64() / (ia + id).as_secs_f64();
    println!(
        "target felix <= 1.3x ip -batch: {}",
        if ratio <= 1.3 { "met" } else { "NOT met" }
    );
}
