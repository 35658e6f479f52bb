//! `felix lab up --subnets 2`: four nodes alternating between 10.0.0.0/24
//! and 10.0.1.0/24 behind the lab's router, one pool with `vxlanMode`
//! (or `ipipMode`) `CrossSubnet`. Every agent takes a tunnel address from
//! IPAM, registers its VTEP, and programs the other nodes' VTEPs (static
//! neighbour + FDB entries) and a tunnel route for every block on the other
//! subnet; the pods reach each other across the router.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod lab_common;

use felix_rs::agent::forwarding::Via;
use felix_rs::agent::resources::{format_mac, FelixNode};
use felix_rs::lab::plan::{LabEncapsulation, LabOptions};
use ipam::store::Kind;
use ipnet::IpNet;
use lab_common::{ping_result, start_ping, wait_until, Lab};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::Duration;

/// `ip -n NS ARGS…` (stdout; the command must succeed).
fn ip_n(ns: &str, args: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", ns])
        .args(args.split_whitespace())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip -n {ns} {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip netns exec NS ARGS…` (stdout; the command must succeed).
fn in_ns(ns: &str, args: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args.split_whitespace())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every registered node, as the agents see them.
fn registrations(lab: &Lab) -> BTreeMap<String, FelixNode> {
    lab.with_store(|store| async move {
        store
            .list(Kind::FelixNode, "")
            .await
            .unwrap()
            .objects
            .into_iter()
            .map(|o| (o.name, serde_json::from_slice(&o.value).unwrap()))
            .collect()
    })
}

fn delete_node(lab: &Lab, name: &str) {
    lab.with_store(|store| async move {
        let o = store.get(Kind::FelixNode, name).await.unwrap();
        store
            .delete(Kind::FelixNode, name, &o.revision)
            .await
            .unwrap();
    });
}

/// Node `i` (1-based): namespace, underlay address, subnet.
fn node(lab: &Lab, i: usize) -> (String, Ipv4Addr, usize) {
    let n = &lab.plan.nodes[i - 1];
    (n.netns.clone(), n.address, usize::from(n.subnet))
}

fn full_matrix(lab: &Lab) {
    let m = felix_rs::lab::build::ping_matrix(&lab.state.pods);
    let pods = &lab.state.pods;
    let mut failed = Vec::new();
    for (i, a) in pods.iter().enumerate() {
        for (j, b) in pods.iter().enumerate() {
            if i != j && m[i][j] != Some(true) {
                failed.push(format!("{} -> {}", a.name, b.name));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "unanswered: {failed:?}\n{}\n{}",
        felix_rs::lab::build::render_matrix(&lab.state.pods, &m),
        lab.logs()
    );
}

fn tx_packets(ns: &str, dev: &str) -> u64 {
    in_ns(
        ns,
        &format!("cat /sys/class/net/{dev}/statistics/tx_packets"),
    )
    .trim()
    .parse()
    .unwrap()
}

/// The interface index of `dev` in `ns` (`N: dev: …`).
fn ifindex(ns: &str, dev: &str) -> String {
    ip_n(ns, &format!("link show {dev}"))
        .split(':')
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn cross_subnet_over_vxlan() {
    if lab_common::skip() {
        return;
    }
    let lab = Lab::up(
        "fxv",
        LabOptions {
            nodes: 4,
            subnets: 2,
            ..Default::default()
        },
    );
    let nodes = registrations(&lab);
    let statuses: Vec<_> = (1..=4).map(|i| lab.status(&format!("node-{i}"))).collect();
    let block = |i: usize| -> IpNet {
        assert_eq!(statuses[i - 1].blocks.len(), 1, "{:?}", statuses[i - 1]);
        statuses[i - 1].blocks[0]
    };
    let vtep = |i: usize| nodes[&format!("node-{i}")].vtep().unwrap();
    for i in 1..=4 {
        let (ns, _, subnet) = node(&lab, i);
        let me = vtep(i);
        // The VTEP address comes from the node's own block (IPAM, handle
        // vxlan-tunnel-addr-node-i) and is on the device with the MAC the
        // node registered.
        assert!(
            block(i).contains(&IpAddr::V4(me.vtep_address)),
            "{} not in {}",
            me.vtep_address,
            block(i)
        );
        let link = ip_n(&ns, "-d link show vxlan.felix");
        for want in [
            "vxlan id 4096",
            "dstport 4789",
            "nolearning",
            "mtu 1450",
            &format_mac(me.vtep_mac),
        ] {
            assert!(link.contains(want), "{want} missing on node-{i}:\n{link}");
        }
        assert!(ip_n(&ns, "addr show dev vxlan.felix")
            .contains(&format!("inet {}/32", me.vtep_address)));
        let routes = ip_n(&ns, "route show proto 102");
        let fdb = in_ns(&ns, "bridge fdb show dev vxlan.felix");
        let neigh = ip_n(&ns, "neigh show dev vxlan.felix");
        let status = &statuses[i - 1];
        assert_eq!(status.routes_programmed, Some(4), "node-{i}: {status:?}");
        for j in (1..=4).filter(|j| *j != i) {
            let (_, addr_j, subnet_j) = node(&lab, j);
            let peer = vtep(j);
            // Same subnet: straight to the node; the other: over VXLAN,
            // on-link via its VTEP, with the tunnel MTU.
            let (want, via) = if subnet_j == subnet {
                (format!("{} via {addr_j} dev eth0", block(j)), Via::Direct)
            } else {
                (
                    format!(
                        "{} via {} dev vxlan.felix onlink mtu 1450",
                        block(j),
                        peer.vtep_address
                    ),
                    Via::Vxlan,
                )
            };
            assert!(routes.contains(&want), "node-{i} lacks {want:?}:\n{routes}");
            assert_eq!(status.routes[&block(j)].via, via, "node-{i} -> node-{j}");
            // Every other node's VTEP: FDB (MAC -> underlay address) and
            // neighbour (VTEP address -> MAC), also on the same subnet.
            let mac = format_mac(peer.vtep_mac);
            assert!(
                fdb.contains(&format!("{mac} dst {addr_j} self permanent")),
                "node-{i} FDB lacks node-{j}:\n{fdb}"
            );
            assert!(
                neigh.contains(&format!("{} lladdr {mac} PERMANENT", peer.vtep_address)),
                "node-{i} neighbours lack node-{j}:\n{neigh}"
            );
        }
        assert_eq!(fdb.lines().count(), 3, "node-{i}:\n{fdb}");
        assert_eq!(routes.matches("dev vxlan.felix").count(), 2, "{routes}");
    }

    // Every pod reaches every pod; node-1's pods reach node-2's and
    // node-4's through its VXLAN device.
    let (n1, _, _) = node(&lab, 1);
    let tx_before = tx_packets(&n1, "vxlan.felix");
    full_matrix(&lab);
    let tx_after = tx_packets(&n1, "vxlan.felix");
    assert!(
        tx_after >= tx_before + 8,
        "node-1 sent {} packets over vxlan.felix for 8 cross-subnet pairs",
        tx_after - tx_before
    );

    // The agent stops: its device, entries and routes stay in the kernel,
    // and pods keep reaching each other across the subnets, into node-2
    // and out of it, through the stop and the restart (100/s, no loss).
    let (n2, _, _) = node(&lab, 2);
    let index = ifindex(&n2, "vxlan.felix");
    let fdb_before = in_ns(&n2, "bridge fdb show dev vxlan.felix");
    let pod = |node: &str| lab.state.pods.iter().find(|p| p.node == node).unwrap();
    let into = start_ping(&pod("node-1").netns, &pod("node-2").address, 1000);
    let out_of = start_ping(&pod("node-2").netns, &pod("node-3").address, 1000);
    std::thread::sleep(Duration::from_secs(1));
    felix_rs::lab::build::stop_agent(&lab.prefix, "node-2", nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    assert_eq!(ifindex(&n2, "vxlan.felix"), index);
    assert_eq!(in_ns(&n2, "bridge fdb show dev vxlan.felix"), fdb_before);
    assert_eq!(
        ip_n(&n2, "route show proto 102")
            .matches("dev vxlan.felix")
            .count(),
        2
    );
    // Started again: the same device (not recreated), the same entries,
    // the same VTEP registered; the full matrix again.
    felix_rs::lab::build::start_agent(&lab.prefix, "node-2", &lab.bins.felix).unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || {
            let s = felix_rs::agent::status::query(&lab.socket("node-2"));
            s.is_ok_and(|s| s.ready && s.routes_programmed == Some(4))
        }),
        "node-2 not back:\n{}",
        lab.logs()
    );
    for (name, ping) in [("node-1 -> node-2", into), ("node-2 -> node-3", out_of)] {
        let (sent, received, text) = ping_result(ping);
        assert!(sent >= 900, "{name}: {text}");
        assert_eq!(
            sent,
            received,
            "{name}: lost across node-2's agent restart\n{text}\n{}",
            lab.logs()
        );
    }
    assert_eq!(ifindex(&n2, "vxlan.felix"), index, "device recreated");
    assert_eq!(in_ns(&n2, "bridge fdb show dev vxlan.felix"), fdb_before);
    assert_eq!(registrations(&lab)["node-2"].vtep(), Some(vtep(2)));
    assert!(
        wait_until(Duration::from_secs(20), || (1..=4)
            .all(
                |i| lab.status(&format!("node-{i}")).routes_programmed == Some(4)
            )),
        "routes not back everywhere:\n{}",
        lab.logs()
    );
    full_matrix(&lab);

    // node-4 leaves (its registration deleted): the others drop its FDB
    // and neighbour entries and its block's route.
    delete_node(&lab, "node-4");
    let gone = vtep(4);
    let (_, addr4, _) = node(&lab, 4);
    assert!(
        wait_until(Duration::from_secs(15), || {
            let fdb = in_ns(&n1, "bridge fdb show dev vxlan.felix");
            let neigh = ip_n(&n1, "neigh show dev vxlan.felix");
            let routes = ip_n(&n1, "route show proto 102");
            !fdb.contains(&format!("dst {addr4} "))
                && !neigh.contains(&format!("{} ", gone.vtep_address))
                && !routes.contains(&block(4).to_string())
                && fdb.lines().count() == 2
        }),
        "node-4 still programmed on node-1:\n{}\n{}",
        in_ns(&n1, "bridge fdb show dev vxlan.felix"),
        ip_n(&n1, "route show proto 102")
    );
}

/// Whether this kernel can make an IPIP device (a namespace of our own,
/// removed again).
fn ipip_available() -> bool {
    let ns = format!("fxipchk{}", std::process::id());
    let made = Command::new("ip").args(["netns", "add", &ns]).status();
    if !made.is_ok_and(|s| s.success()) {
        return false;
    }
    let ok = Command::new("ip")
        .args(["-n", &ns, "link", "add", "fxip0", "type", "ipip"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    ok
}

#[test]
fn cross_subnet_over_ipip() {
    if lab_common::skip() {
        return;
    }
    if !ipip_available() {
        println!("SKIPPED: no ipip kernel module (ip link add type ipip fails)");
        return;
    }
    let lab = Lab::up(
        "fxi",
        LabOptions {
            nodes: 4,
            subnets: 2,
            encapsulation: LabEncapsulation::Ipip,
            ..Default::default()
        },
    );
    let nodes = registrations(&lab);
    for i in 1..=4 {
        let (ns, _, subnet) = node(&lab, i);
        let me = &nodes[&format!("node-{i}")];
        let tunnel = me.ipv4_ipip_tunnel_addr.unwrap();
        assert!(me.vtep().is_none(), "no VXLAN with an IPIP pool");
        let link = ip_n(&ns, "link show tunl0");
        assert!(link.contains("mtu 1480") && link.contains("UP"), "{link}");
        assert!(ip_n(&ns, "addr show dev tunl0").contains(&format!("inet {tunnel}/32")));
        let routes = ip_n(&ns, "route show proto 102");
        let s = lab.status(&format!("node-{i}"));
        for j in (1..=4).filter(|j| *j != i) {
            let (_, addr_j, subnet_j) = node(&lab, j);
            let b = lab.status(&format!("node-{j}")).blocks[0];
            let want = if subnet_j == subnet {
                format!("{b} via {addr_j} dev eth0")
            } else {
                format!("{b} via {addr_j} dev tunl0 onlink mtu 1480")
            };
            assert!(routes.contains(&want), "node-{i} lacks {want:?}:\n{routes}");
            let via = if subnet_j == subnet {
                Via::Direct
            } else {
                Via::Ipip
            };
            assert_eq!(s.routes[&b].via, via);
        }
    }
    full_matrix(&lab);
}
