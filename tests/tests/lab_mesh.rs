//! The default lab (3 nodes, full mesh, shared SQLite datastore) built by
//! `felix_rs::lab` with the real `felix node run` processes; and what the
//! agents do when the datastore changes under them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod lab_common;

use felix_rs::lab::plan::LabOptions;
use ipam::store::Kind;
use lab_common::{established, namespaces_with, wait_until, Lab};
use std::time::Duration;

#[test]
fn three_node_mesh_from_registrations_then_down_removes_everything() {
    if lab_common::skip() {
        return;
    }
    let prefix;
    {
        let lab = Lab::up("fxm", LabOptions::default());
        prefix = lab.prefix.clone();
        for (i, node) in ["node-1", "node-2", "node-3"].iter().enumerate() {
            let s = lab.status(node);
            assert!(s.ready, "{node} not ready: {s:?}");
            assert_eq!(s.nodes.len(), 3, "{node} sees {:?}", s.nodes);
            let want: Vec<String> = (1..=3)
                .filter(|j| *j != i + 1)
                .map(|j| format!("10.0.0.{j}"))
                .collect();
            assert_eq!(established(&s), want, "{node}");
            assert!(s.mesh && s.datastore_ok);
            // Its pods' block is originated and the two others' learned.
            assert_eq!(s.blocks.len(), 1, "{node}: {:?}", s.blocks);
            assert_eq!(s.routes.len(), 2, "{node}: {:?}", s.routes);
        }
        // Six pods through felix-cni, distinct addresses; every pod reaches
        // every other, on its node through the host and across nodes over
        // the routes the agents programmed from BGP.
        assert_eq!(lab.state.pods.len(), 6);
        let mut addrs: Vec<&str> = lab.state.pods.iter().map(|p| p.address.as_str()).collect();
        addrs.sort();
        addrs.dedup();
        assert_eq!(addrs.len(), 6);
        let m = felix_rs::lab::build::ping_matrix(&lab.state.pods);
        for (i, a) in lab.state.pods.iter().enumerate() {
            for (j, b) in lab.state.pods.iter().enumerate() {
                if i != j {
                    assert_eq!(m[i][j], Some(true), "{} -> {}", a.name, b.name);
                }
            }
        }
        for node in ["node-1", "node-2", "node-3"] {
            // A blackhole for its own block and a route to each other block.
            assert_eq!(lab.status(node).routes_programmed, Some(3), "{node}");
        }
        // The probes and metrics answer inside the node's namespace.
        if let Some(text) = lab.metrics("node-1", "10.0.0.1") {
            assert!(
                text.contains("felix_bgp_session_established{peer=\"10.0.0.2\"} 1"),
                "{text}"
            );
            assert!(text.contains("felix_ready 1"), "{text}");
            // node-1's two pods: one assign each through the pod API.
            assert!(
                text.contains("felix_cni_request_duration_seconds_count{op=\"assign\"} 2\n"),
                "{text}"
            );
            assert!(
                text.contains("# TYPE felix_ipam_addresses_in_use gauge"),
                "{text}"
            );
        }
        assert_eq!(namespaces_with(&prefix).len(), 4 + 6);
    }
    // Dropped: `lab down` ran.
    assert!(namespaces_with(&prefix).is_empty());
    assert!(!felix_rs::lab::state::state_dir(&prefix).exists());
}

/// Writes (or replaces) a JSON object in the lab's datastore.
fn put(lab: &Lab, kind: Kind, name: &str, json: &str) {
    lab.with_store(|store| async move {
        match store.get(kind, name).await {
            Ok(o) => {
                store
                    .update(kind, name, json.as_bytes().to_vec(), &o.revision)
                    .await
                    .unwrap();
            }
            Err(_) => {
                store
                    .create(kind, name, json.as_bytes().to_vec())
                    .await
                    .unwrap();
            }
        }
    });
}

fn delete(lab: &Lab, kind: Kind, name: &str) {
    lab.with_store(|store| async move {
        let o = store.get(kind, name).await.unwrap();
        store.delete(kind, name, &o.revision).await.unwrap();
    });
}

#[test]
fn mesh_off_and_a_peer_added_at_run_time_through_the_datastore() {
    if lab_common::skip() {
        return;
    }
    let lab = Lab::up("fxp", LabOptions::default());
    let peers_of = |node: &str| -> Vec<String> {
        let mut v: Vec<String> = lab
            .status(node)
            .peers
            .iter()
            .map(|p| p.address.to_string())
            .collect();
        v.sort();
        v
    };
    // Mesh off in the datastore: every agent drops its mesh neighbours.
    put(
        &lab,
        Kind::BgpConfiguration,
        "default",
        r#"{"nodeToNodeMeshEnabled": false}"#,
    );
    assert!(
        wait_until(Duration::from_secs(10), || ["node-1", "node-2", "node-3"]
            .iter()
            .all(|n| peers_of(n).is_empty())),
        "mesh not removed: {:?}\n{}",
        peers_of("node-1"),
        lab.logs()
    );
    // A BGPPeer for node-1 only, towards node-2 (by selector on the
    // subnet label the lab sets), and the reverse for node-2: the session
    // comes up without a restart.
    put(
        &lab,
        Kind::BgpPeer,
        "n1-to-n2",
        r#"{"node": "node-1", "peerIP": "10.0.0.2", "asNumber": 64512}"#,
    );
    put(
        &lab,
        Kind::BgpPeer,
        "n2-to-n1",
        r#"{"node": "node-2", "peerIP": "10.0.0.1", "asNumber": 64512}"#,
    );
    assert!(
        wait_until(Duration::from_secs(20), || established(
            &lab.status("node-1")
        ) == ["10.0.0.2"]
            && established(&lab.status("node-2")) == ["10.0.0.1"]),
        "runtime peer not Established: {:?}\n{}",
        lab.status("node-1").peers,
        lab.logs()
    );
    assert!(peers_of("node-3").is_empty());
    // A malformed BGPPeer is named in the warnings and changes nothing.
    put(&lab, Kind::BgpPeer, "broken", r#"{"peerIP": "10.0.0.9"}"#);
    assert!(wait_until(Duration::from_secs(10), || lab
        .status("node-3")
        .warnings
        .iter()
        .any(|w| w.contains("broken"))));
    // Removing the peer removes the session.
    delete(&lab, Kind::BgpPeer, "n1-to-n2");
    assert!(wait_until(Duration::from_secs(10), || peers_of("node-1").is_empty()));
    // Mesh back on: full mesh again, and node removal (its FelixNode
    // deleted) makes the others drop it.
    delete(&lab, Kind::BgpPeer, "n2-to-n1");
    delete(&lab, Kind::BgpPeer, "broken");
    put(
        &lab,
        Kind::BgpConfiguration,
        "default",
        r#"{"nodeToNodeMeshEnabled": true}"#,
    );
    assert!(wait_until(Duration::from_secs(20), || established(
        &lab.status("node-1")
    ) == [
        "10.0.0.2", "10.0.0.3"
    ]));
    delete(&lab, Kind::FelixNode, "node-3");
    assert!(
        wait_until(Duration::from_secs(10), || peers_of("node-1")
            == ["10.0.0.2"]
            && peers_of("node-2") == ["10.0.0.1"]),
        "{:?}",
        peers_of("node-1")
    );
}
