//! `felix lab up --route-reflector --nodes 5`: the node-to-node mesh off,
//! every node peering only with a `felix bgp run` route reflector in its
//! own namespace, which reflects each node's block to the four others.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod lab_common;

use bgp::speaker::{RouteView, SpeakerStatus};
use felix_rs::lab::plan::LabOptions;
use lab_common::{established, Lab};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::Command;

/// `felix bgp status|routes -o json` against the reflector's control socket.
fn felix_json(lab: &Lab, what: &str) -> String {
    let sock = felix_rs::lab::state::state_dir(&lab.prefix).join("rr.sock");
    let out = Command::new(&lab_common::binaries().felix)
        .args(["bgp", what, "-o", "json", "--control-socket"])
        .arg(&sock)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "felix bgp {what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn five_nodes_behind_a_route_reflector_full_ping_matrix() {
    if lab_common::skip() {
        return;
    }
    let lab = Lab::up(
        "fxq",
        LabOptions {
            nodes: 5,
            route_reflector: true,
            ..Default::default()
        },
    );
    let rr: IpAddr = "10.0.0.250".parse().unwrap();
    // Node → its block, from the agents themselves.
    let mut block_of = BTreeMap::new();
    for i in 1..=5 {
        let node = format!("node-{i}");
        let s = lab.status(&node);
        assert!(!s.mesh, "{node}: mesh on");
        assert_eq!(established(&s), [rr.to_string()], "{node}: {:?}", s.peers);
        assert_eq!(s.peers.len(), 1, "{node}: {:?}", s.peers);
        assert_eq!(s.blocks.len(), 1, "{node}: {:?}", s.blocks);
        block_of.insert(
            format!("10.0.0.{i}").parse::<IpAddr>().unwrap(),
            s.blocks[0],
        );
        // The four other blocks, learned from the reflector but with the
        // owning node as next hop (a reflector does not change NEXT_HOP,
        // RFC 4456 §10), and programmed with the own blackhole.
        assert_eq!(s.routes.len(), 4, "{node}: {:?}", s.routes);
        for r in s.routes.values() {
            assert_eq!(r.next_hops.len(), 1, "{node}: {r:?}");
            assert_ne!(r.next_hops[0], rr, "{node}: next hop is the reflector");
        }
        assert_eq!(s.routes_programmed, Some(5), "{node}");
    }
    for i in 1..=5 {
        let s = lab.status(&format!("node-{i}"));
        for (prefix, r) in &s.routes {
            let owner = r.next_hops[0];
            assert_eq!(
                block_of.get(&owner),
                Some(prefix),
                "node-{i}: {prefix} via {owner}"
            );
        }
    }

    // The reflector's own view: five clients, each sending its block and
    // receiving the four others.
    let status: SpeakerStatus = serde_json::from_str(&felix_json(&lab, "status")).unwrap();
    assert_eq!(status.peers.len(), 5, "{status:?}");
    for p in &status.peers {
        assert_eq!(p.state, "Established", "{p:?}");
        assert!(p.rr_client, "{p:?}");
        assert_eq!(p.accepted, 1, "{p:?}");
        assert_eq!(p.advertised, 4, "{p:?}");
    }
    let routes: Vec<RouteView> = serde_json::from_str(&felix_json(&lab, "routes")).unwrap();
    assert_eq!(routes.len(), 5, "{routes:?}");
    for r in &routes {
        let best = &r.paths[0];
        let from = best.from.unwrap();
        assert_eq!(block_of.get(&from), Some(&r.prefix), "{r:?}");
        assert_eq!(best.next_hop, Some(from), "{r:?}");
    }

    // Ten pods, every pair answers.
    assert_eq!(lab.state.pods.len(), 10);
    lab.assert_full_ping_matrix();
}
