//! The lab through a node's life: pods coming and going, the agent
//! restarting under traffic, the node taken out of the cluster. Real
//! namespaces, the real `felix node run` and `felix-cni` binaries; each lab
//! is removed by its guard, also when an assertion fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod lab_common;

use felix_rs::lab::build::{self, felix_cni, CniCall};
use felix_rs::lab::plan::LabOptions;
use ipam::store::Kind;
use lab_common::{established, ping_result, start_ping, wait_until, Lab};
use nix::sys::signal::Signal;
use std::process::Command;
use std::time::Duration;

/// Addresses in use in any block, and the IPAM handles, of the lab's
/// datastore.
fn ipam_usage(lab: &Lab) -> (usize, Vec<String>) {
    lab.with_store(|store| async move {
        let allocator = ipam::Allocator::new(store.clone(), ipam::AllocatorConfig::default());
        let in_use = allocator
            .blocks()
            .await
            .unwrap()
            .iter()
            .map(|(_, b)| b.in_use_count())
            .sum();
        let handles = store
            .list(Kind::IpamHandle, "")
            .await
            .unwrap()
            .objects
            .into_iter()
            .map(|o| o.name)
            .collect();
        (in_use, handles)
    })
}

/// Host-side pod interfaces (`fx…`) in a node's namespace.
fn pod_veths(lab: &Lab, node: &str) -> Vec<String> {
    lab.ip(node, &["-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
        .filter(|n| n.starts_with("fx"))
        .collect()
}

fn netns_add(name: &str) {
    for args in [
        vec!["netns", "add", name],
        vec!["-n", name, "link", "set", "lo", "up"],
    ] {
        assert!(Command::new("ip").args(&args).status().unwrap().success());
    }
}

#[test]
fn pod_churn_of_100_pods_leaves_no_route_address_or_veth() {
    if lab_common::skip() {
        return;
    }
    let lab = Lab::up(
        "fxc",
        LabOptions {
            nodes: 2,
            pods_per_node: 0,
            ..Default::default()
        },
    );
    let node = "node-1";
    let node_ns = lab.netns(node);
    let socket = lab.dir().join(format!("{node}-pod-api.sock"));
    let routes_before = lab.route_destinations(node);
    // Pod namespaces carry the lab's prefix: `lab down` sweeps them too.
    let pods: Vec<(String, String)> = (0..100)
        .map(|i| (format!("{}-c{i}", lab.prefix), format!("churn{i:03}")))
        .collect();
    let call = |command, ns: &str, id: &str| {
        felix_cni(
            &lab.bins.cni,
            &CniCall {
                command,
                node_netns: &node_ns,
                agent_socket: &socket,
                container_id: id,
                pod_netns: ns,
                pod_name: id,
            },
        )
    };
    let mut addresses = Vec::new();
    for (ns, id) in &pods {
        netns_add(ns);
        addresses.push(call("ADD", ns, id).unwrap().unwrap());
    }
    let mut distinct = addresses.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 100);
    // While they exist: a /32 and a veth per pod, 100 addresses held, and
    // the blocks they needed (two /26) originated and learned by node-2.
    let dsts = lab.route_destinations(node);
    for a in &addresses {
        assert!(dsts.contains(a), "no route to pod {a}: {dsts:?}");
    }
    assert_eq!(pod_veths(&lab, node).len(), 100);
    assert_eq!(ipam_usage(&lab).0, 100);
    assert!(
        wait_until(Duration::from_secs(20), || lab
            .status("node-2")
            .routes
            .len()
            == 2),
        "node-2 learned {:?}",
        lab.status("node-2").routes
    );
    // Half deleted in reverse, half in creation order.
    let (first, second) = pods.split_at(50);
    for (ns, id) in first.iter().rev().chain(second.iter()) {
        call("DEL", ns, id).unwrap();
    }
    let dsts = lab.route_destinations(node);
    let stale: Vec<&String> = addresses.iter().filter(|a| dsts.contains(a)).collect();
    assert!(stale.is_empty(), "stale pod routes on {node}: {stale:?}");
    assert!(
        pod_veths(&lab, node).is_empty(),
        "{:?}",
        pod_veths(&lab, node)
    );
    let (in_use, handles) = ipam_usage(&lab);
    assert_eq!(in_use, 0, "addresses still allocated after every DEL");
    assert!(handles.is_empty(), "IPAM handles left: {handles:?}");
    // The node keeps its (empty) affine blocks: their blackholes stay, and
    // nothing else was added to its table.
    let s = lab.status(node);
    assert_eq!(s.blocks.len(), 2, "{:?}", s.blocks);
    let mut after = lab.route_destinations(node);
    let mut expected = routes_before.clone();
    expected.extend(s.blocks.iter().map(|b| b.to_string()));
    after.sort();
    expected.sort();
    assert_eq!(after, expected);
    // A second DEL of a deleted pod is fine (CNI spec: DEL is idempotent).
    call("DEL", &first[0].0, &first[0].1).unwrap();
}

#[test]
fn agent_restart_under_continuous_ping_loses_no_packet() {
    if lab_common::skip() {
        return;
    }
    let lab = Lab::up("fxr", LabOptions::default());
    let pod = |node: &str| {
        lab.state
            .pods
            .iter()
            .find(|p| p.node == node)
            .unwrap()
            .clone()
    };
    let (p1, p2, p3) = (pod("node-1"), pod("node-2"), pod("node-3"));
    for (signal, round) in [(Signal::SIGKILL, "crash"), (Signal::SIGTERM, "stop")] {
        // Into the restarting node and out of it, 10 ms apart, about 12 s.
        let into = start_ping(&p2.netns, &p1.address, 1200);
        let out_of = start_ping(&p1.netns, &p3.address, 1200);
        std::thread::sleep(Duration::from_secs(2));
        build::stop_agent(&lab.prefix, "node-1", signal).unwrap();
        // The peers keep node-1's routes (stale) while it is away.
        std::thread::sleep(Duration::from_secs(1));
        let s2 = lab.status("node-2");
        assert_eq!(s2.routes.len(), 2, "{round}: node-2 dropped routes: {s2:?}");
        build::start_agent(&lab.prefix, "node-1", &lab.bins.felix).unwrap();
        assert!(
            wait_until(Duration::from_secs(8), || {
                lab_common::status_ok(&lab.socket("node-1"))
                    .is_some_and(|s| s.ready && established(&s) == ["10.0.0.2", "10.0.0.3"])
            }),
            "{round}: node-1 not back\n{}",
            lab.logs()
        );
        for (name, ping) in [("node-2 -> node-1", into), ("node-1 -> node-3", out_of)] {
            let (sent, received, text) = ping_result(ping);
            assert!(sent >= 1000, "{round} {name}: {text}");
            assert_eq!(
                sent,
                received,
                "{round} {name}: packets lost across the agent restart\n{text}\n{}",
                lab.logs()
            );
        }
        let log = std::fs::read_to_string(lab.dir().join("node-1.log")).unwrap();
        assert!(
            log.contains("graceful restart"),
            "{round}: restart not detected"
        );
        // After the re-sync the kernel holds what it should, nothing stale.
        assert!(
            wait_until(Duration::from_secs(10), || lab
                .status("node-1")
                .routes_programmed
                == Some(3)),
            "{:?}",
            lab.status("node-1")
        );
    }
}

#[test]
fn node_removal_withdraws_its_blocks_on_every_other_node() {
    if lab_common::skip() {
        return;
    }
    let lab = Lab::up("fxn", LabOptions::default());
    let gone = lab.status("node-3").blocks.clone();
    assert_eq!(gone.len(), 1);
    let block = gone[0].to_string();
    for node in ["node-1", "node-2"] {
        assert!(lab.route_destinations(node).contains(&block), "{node}");
    }
    build::stop_agent(&lab.prefix, "node-3", Signal::SIGTERM).unwrap();
    // Stopped but not removed: the others keep forwarding to it (graceful
    // restart), as they should for a restart.
    std::thread::sleep(Duration::from_secs(1));
    for node in ["node-1", "node-2"] {
        assert!(lab.route_destinations(node).contains(&block), "{node}");
    }
    let out = Command::new(&lab.bins.felix)
        .args([
            "node",
            "remove",
            "node-3",
            "--datastore",
            &lab.datastore_url(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("FelixNode deleted"), "{text}");
    assert!(text.contains("2 addresses released"), "{text}");
    for node in ["node-1", "node-2"] {
        assert!(
            wait_until(Duration::from_secs(10), || {
                let s = lab.status(node);
                !lab.route_destinations(node).contains(&block)
                    && !s.routes.contains_key(&gone[0])
                    && s.peers.len() == 1
                    && !s.nodes.contains_key("node-3")
            }),
            "{node} still has {block}: {:?}\n{:?}",
            lab.route_destinations(node),
            lab.status(node)
        );
    }
    // IPAM: nothing of node-3's is left.
    lab.with_store(|store| async move {
        let allocator = ipam::Allocator::new(store, ipam::AllocatorConfig::default());
        assert!(allocator
            .blocks_affine_to("node-3")
            .await
            .unwrap()
            .is_empty());
        for (_, b) in allocator.blocks().await.unwrap() {
            for used in b.in_use() {
                assert_ne!(
                    used.attributes.get("node").map(String::as_str),
                    Some("node-3")
                );
            }
        }
    });
    // The two remaining nodes still reach each other's pods.
    let pods: Vec<_> = lab
        .state
        .pods
        .iter()
        .filter(|p| p.node != "node-3")
        .cloned()
        .collect();
    let m = build::ping_matrix(&pods);
    for (i, row) in m.iter().enumerate() {
        for (j, cell) in row.iter().enumerate() {
            if i != j {
                assert_eq!(*cell, Some(true), "{} -> {}", pods[i].name, pods[j].name);
            }
        }
    }
}
