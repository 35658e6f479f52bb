//! Dual stack through the lab (`felix lab up --dual-stack`): three agents
//! with IPv4 and IPv6 node addresses, an IPv4 and an IPv6 pool, pods with
//! an address of each family through the real `felix-cni`. Each agent
//! peers over both families (IPv6 sessions between the IPv6 addresses),
//! originates its IPv6 block and programs the others' `via` their owners'
//! IPv6 addresses (protocol 102); an agent restart keeps them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod lab_common;

use felix_rs::lab::build::{self, PingFamily};
use felix_rs::lab::plan::LabOptions;
use ipnet::IpNet;
use lab_common::{established, status_ok, wait_until, Lab};
use nix::sys::signal::Signal;
use std::collections::BTreeMap;
use std::time::Duration;

const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];

/// Node `node-I`'s underlay addresses.
fn v4(i: usize) -> String {
    format!("10.0.0.{i}")
}
fn v6(i: usize) -> String {
    format!("fd00::{i}")
}

/// Every pod pings every other pod over `family`; panics naming failures.
fn assert_full_matrix(lab: &Lab, family: PingFamily) {
    let pods = build::pods_of_family(&lab.state.pods, family);
    assert_eq!(pods.len(), 6, "{family:?}: {:?}", lab.state.pods);
    let m = build::ping_matrix(&pods);
    let mut failed = Vec::new();
    for (i, a) in pods.iter().enumerate() {
        for (j, b) in pods.iter().enumerate() {
            if i != j && m[i][j] != Some(true) {
                failed.push(format!("{} -> {}", a.name, b.address));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{family:?}: {failed:?}\n{}\n{}",
        build::render_matrix(&pods, &m),
        lab.logs()
    );
}

/// Node `node`'s IPv6 routes of protocol 102, by destination: the rest of
/// each `ip -6 route` line.
fn felix_v6_routes(lab: &Lab, node: &str) -> BTreeMap<String, String> {
    lab.ip(node, &["-6", "route", "show", "proto", "102"])
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace().peekable();
            let blackhole = w.peek() == Some(&"blackhole");
            if blackhole {
                w.next();
            }
            let dst = w.next()?.to_string();
            let rest: Vec<&str> = w.collect();
            let rest = rest.join(" ");
            Some((
                dst,
                if blackhole {
                    format!("blackhole {rest}")
                } else {
                    rest
                },
            ))
        })
        .collect()
}

/// Each node's own IPv6 block, from its status.
fn v6_blocks(lab: &Lab) -> Vec<IpNet> {
    NODES
        .iter()
        .map(|n| {
            let s = lab.status(n);
            let b: Vec<IpNet> = s
                .blocks
                .iter()
                .filter(|b| b.addr().is_ipv6())
                .copied()
                .collect();
            assert_eq!(b.len(), 1, "{n}: {:?}", s.blocks);
            b[0]
        })
        .collect()
}

/// Checks node `i`'s kernel: a blackhole for its own IPv6 block, each other
/// block `via` its owner's IPv6 address, a /128 per local pod on its veth.
fn assert_kernel_v6_routes(lab: &Lab, i: usize, blocks: &[IpNet]) {
    let node = NODES[i - 1];
    let routes = felix_v6_routes(lab, node);
    for (j, block) in blocks.iter().enumerate() {
        let j = j + 1;
        let key = block.to_string();
        let route = routes
            .get(&key)
            .unwrap_or_else(|| panic!("{node}: no felix route for {key}: {routes:?}"));
        if j == i {
            assert!(route.starts_with("blackhole"), "{node} {key}: {route}");
        } else {
            assert!(
                route.starts_with(&format!("via {} dev eth0", v6(j))),
                "{node} {key}: {route}"
            );
        }
    }
    for pod in lab.state.pods.iter().filter(|p| p.node == node) {
        let a = pod.address_v6.as_ref().unwrap();
        let route = routes
            .get(a)
            .unwrap_or_else(|| panic!("{node}: no /128 for pod {a}: {routes:?}"));
        assert!(route.starts_with("dev fx"), "{node} {a}: {route}");
    }
    // Nothing else of felix's: 3 blocks and 2 pods.
    assert_eq!(routes.len(), 3 + 2, "{node}: {routes:?}");
}

#[test]
fn dual_stack_mesh_routes_ipv6_blocks_and_keeps_them_across_an_agent_restart() {
    if lab_common::skip() {
        return;
    }
    let lab = Lab::up(
        "fxd",
        LabOptions {
            dual_stack: true,
            ..Default::default()
        },
    );
    let pool_v6: IpNet = felix_rs::lab::plan::POD_POOL_V6.parse().unwrap();
    for (i, node) in NODES.iter().enumerate() {
        let i = i + 1;
        let s = lab.status(node);
        assert!(s.ready, "{node}: {s:?}");
        assert_eq!(
            s.address_v6.as_deref(),
            Some(format!("{}/64", v6(i)).as_str())
        );
        // Both families' sessions to both other nodes.
        let mut want: Vec<String> = (1..=3)
            .filter(|j| *j != i)
            .flat_map(|j| [v4(j), v6(j)])
            .collect();
        want.sort();
        assert_eq!(established(&s), want, "{node}");
        // One block per family originated, two per family learned, all
        // programmed; the IPv6 ones via the owners' IPv6 addresses.
        assert_eq!(s.blocks_by_family(), (1, 1), "{node}: {:?}", s.blocks);
        assert_eq!(s.routes_by_family(), (2, 2), "{node}: {:?}", s.routes);
        assert_eq!(s.routes_programmed, Some(6), "{node}: {:?}", s.last_errors);
        for (prefix, r) in &s.routes {
            assert!(r.pending.is_none(), "{node} {prefix}: {r:?}");
            if prefix.addr().is_ipv6() {
                assert!(pool_v6.contains(prefix), "{prefix}");
                assert_eq!(r.next_hops.len(), 1);
                assert!(r.next_hops[0].is_ipv6(), "{node} {prefix}: {r:?}");
            } else {
                assert!(r.next_hops[0].is_ipv4(), "{node} {prefix}: {r:?}");
            }
        }
    }
    // Every pod has one address per family, the IPv6 one from the pool.
    for p in &lab.state.pods {
        let a: std::net::IpAddr = p.address_v6.as_ref().unwrap().parse().unwrap();
        assert!(pool_v6.contains(&a), "{p:?}");
    }
    let blocks = v6_blocks(&lab);
    for i in 1..=3 {
        assert_kernel_v6_routes(&lab, i, &blocks);
    }
    assert_full_matrix(&lab, PingFamily::V6);
    assert_full_matrix(&lab, PingFamily::V4);

    // Metrics count the families.
    if let Some(text) = lab.metrics("node-1", "10.0.0.1") {
        assert!(
            text.contains("felix_routes_learned_by_family{family=\"ipv6\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("felix_ipam_blocks_by_family{family=\"ipv6\"} 1"),
            "{text}"
        );
    }

    // node-2's agent stops (SIGTERM) and starts again: its kernel keeps its
    // IPv6 routes while it is away, and after the restart they are the
    // same routes (nothing flushed, nothing stale).
    let before = felix_v6_routes(&lab, "node-2");
    build::stop_agent(&lab.prefix, "node-2", Signal::SIGTERM).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(felix_v6_routes(&lab, "node-2"), before, "while stopped");
    // The others keep node-2's IPv6 block (graceful restart).
    assert_kernel_v6_routes(&lab, 1, &blocks);
    build::start_agent(&lab.prefix, "node-2", &lab.bins.felix).unwrap();
    let want = vec![v4(1), v4(3), v6(1), v6(3)];
    assert!(
        wait_until(Duration::from_secs(20), || {
            status_ok(&lab.socket("node-2")).is_some_and(|s| {
                s.ready && established(&s) == want && s.routes_programmed == Some(6)
            })
        }),
        "node-2 did not come back: {:?}\n{}",
        status_ok(&lab.socket("node-2")),
        lab.logs()
    );
    assert_eq!(lab.status("node-2").routes_by_family(), (2, 2));
    for i in 1..=3 {
        assert_kernel_v6_routes(&lab, i, &blocks);
    }
    assert_eq!(felix_v6_routes(&lab, "node-2"), before, "after the restart");
    assert_full_matrix(&lab, PingFamily::V6);
}

/// True (after printing SKIPPED) when BIRD is not installed.
fn bird_missing() -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing = ["bird", "birdc"]
        .iter()
        .find(|p| !std::env::split_paths(&path).any(|d| d.join(p).exists()));
    if let Some(p) = missing {
        println!("SKIPPED: {p} is not installed (scripts/test.sh installs it)");
    }
    missing.is_some()
}

/// A BIRD ToR over both families (`--dual-stack --tor bird`): each node has
/// an IPv6 eBGP session to the ToR's IPv6 address next to the IPv4 one; BIRD
/// learns every IPv6 block with its owner's IPv6 address as next hop (the
/// node's address on the session: no per-family next-hop setting needed),
/// installs them in its kernel, and reaches every pod over IPv6.
#[test]
fn a_bird_tor_peers_over_ipv6_and_routes_to_every_pod() {
    if lab_common::skip() || bird_missing() {
        return;
    }
    let lab = Lab::up(
        "fxw",
        LabOptions {
            dual_stack: true,
            tor: Some(felix_rs::lab::plan::Tor::Bird),
            ..Default::default()
        },
    );
    for (i, node) in NODES.iter().enumerate() {
        let i = i + 1;
        let s = lab.status(node);
        let mut want: Vec<String> = (1..=3)
            .filter(|j| *j != i)
            .flat_map(|j| [v4(j), v6(j)])
            .chain(["10.0.0.253".to_string(), "fd00::fd".to_string()])
            .collect();
        want.sort();
        assert_eq!(established(&s), want, "{node}");
        // Nothing learned via the ToR: its paths carry our own AS.
        assert_eq!(s.routes_by_family(), (2, 2), "{node}: {:?}", s.routes);
        for r in s.routes.values() {
            assert!(
                r.next_hops.iter().all(|h| h.to_string() != "fd00::fd"),
                "{node}: {r:?}"
            );
        }
    }
    // BIRD's RIB (its own CLI): each node's IPv6 block with that node's
    // IPv6 address among the next hops (each node also passes on the
    // blocks it learned over the mesh with itself as next hop, eBGP
    // next-hop-self, as for IPv4: docs/lab.md, "ToR router"); and every
    // block in the ToR's kernel via one of the nodes' IPv6 addresses.
    let blocks = v6_blocks(&lab);
    let tor_ns = format!("{}-tor", lab.prefix);
    let run_in_tor = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &tor_ns])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ctl = lab.dir().join("bird.ctl").display().to_string();
    let bird_rib = || {
        let text = run_in_tor(&["birdc", "-s", &ctl, "show", "route", "table", "master6"]);
        let mut rib: BTreeMap<IpNet, Vec<String>> = BTreeMap::new();
        let mut current: Option<IpNet> = None;
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let Some(first) = words.next() else { continue };
            if !line.starts_with(char::is_whitespace) {
                current = first.parse().ok();
            } else if let (Some(p), "via", Some(hop)) = (current, first, words.next()) {
                rib.entry(p).or_default().push(hop.to_string());
            }
        }
        rib
    };
    assert!(
        wait_until(Duration::from_secs(10), || {
            let rib = bird_rib();
            let kernel = run_in_tor(&["ip", "-6", "route", "show", "proto", "bird"]);
            blocks.iter().enumerate().all(|(j, b)| {
                rib.get(b).is_some_and(|hops| hops.contains(&v6(j + 1)))
                    && kernel.lines().any(|l| {
                        l.starts_with(&format!("{b} via fd00::")) && l.contains("dev eth0")
                    })
            })
        }),
        "BIRD's IPv6 RIB / kernel:\n{:?}\n{}\n{}",
        bird_rib(),
        run_in_tor(&["ip", "-6", "route", "show"]),
        lab.logs()
    );
    // The ToR reaches every pod over IPv6.
    for p in &lab.state.pods {
        let a = p.address_v6.as_ref().unwrap();
        let ok = std::process::Command::new("ip")
            .args(["netns", "exec", &tor_ns, "ping", "-c", "3", "-i", "0.3"])
            .args(["-W", "1", "-q", a])
            .status()
            .unwrap()
            .success();
        assert!(ok, "ToR -> {} ({a})", p.name);
    }
    assert_full_matrix(&lab, PingFamily::V6);
}
