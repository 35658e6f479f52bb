#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The felix-node ClusterRole (deploy/overlays/kubernetes/clusterrole.yaml)
//! against what the node agent really asks of the API server: the agent
//! (`agent::run::run` with the IPAM block source, as `felix node run`
//! builds it) runs on the Kubernetes datastore over the mock API server,
//! registers, follows its kinds, restarts with a new address (its
//! registration is then an update), and serves pods through its pod API
//! (`pod_api::PodApi`: assign, release, GC). Every request it makes is
//! mapped to an RBAC verb on a resource; the role must grant each of them
//! and nothing it never uses.
//!
//! One path is driven directly, because the agent does not call it yet
//! (docs/ipam.md, "Not done yet"): giving back an empty block
//! (`Allocator::reclaim_empty_blocks`, delete of blocks and affinities).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use felix_cni::api::{Attachment, Request, Response};
use felix_rs::agent::config::{AgentConfig, LogFormat};
use felix_rs::agent::ipam_blocks::IpamBlocks;
use felix_rs::agent::resources::BgpConfigurationSpec;
use felix_rs::agent::run::{self, Plugins};
use felix_rs::pod_api::PodApi;
use ipam::pool::IpPoolSpec;
use ipam::store::{Datastore, Kind};
use ipam::testing::KubeUnderTest;
use ipam::{Allocator, AllocatorConfig};
use serde::Deserialize;
use serde_json::Value;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(dir: &std::path::Path, address: &str, bgp_port: u16) -> AgentConfig {
    let node_address: ipnet::Ipv4Net = address.parse().unwrap();
    AgentConfig {
        node_name: "node-1".into(),
        node_address,
        node_address_v6: None,
        router_id: node_address.addr(),
        as_number: None,
        route_reflector_cluster_id: None,
        datastore: "kubernetes".into(),
        labels: BTreeMap::new(),
        control_socket: dir.join("agent.sock"),
        pod_api_socket: dir.join("pod-api.sock"),
        http_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        log_format: LogFormat::Human,
        log_level: "info".into(),
        resync_seconds: 60,
        graceful_restart_recovery: None,
        bgp: BgpConfigurationSpec {
            listen_port: Some(bgp_port),
            ..Default::default()
        },
        bgp_peers: BTreeMap::new(),
    }
}

/// `METHOD /apis/crd.felix-rs.io/v1/PLURAL[/NAME]?QUERY` as (plural, verb).
fn rbac_verb(request: &str) -> (String, &'static str) {
    let (method, target) = request.split_once(' ').unwrap();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let rest = path
        .strip_prefix("/apis/crd.felix-rs.io/v1/")
        .unwrap_or_else(|| panic!("request outside felix's group: {request}"));
    let (plural, named) = match rest.split_once('/') {
        Some((plural, name)) => (plural, !name.is_empty()),
        None => (rest, false),
    };
    let watch = query.split('&').any(|kv| kv == "watch=true");
    let verb = match (method, named, watch) {
        ("GET", true, _) => "get",
        ("GET", false, true) => "watch",
        ("GET", false, false) => "list",
        ("POST", false, _) => "create",
        ("PUT", true, _) => "update",
        ("DELETE", true, _) => "delete",
        _ => panic!("unexpected request {request}"),
    };
    (plural.to_owned(), verb)
}

fn granted() -> BTreeSet<(String, String)> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/overlays/kubernetes/clusterrole.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let role = Value::deserialize(serde_norway::Deserializer::from_str(&text)).unwrap();
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        for r in rule["resources"].as_array().unwrap() {
            for v in rule["verbs"].as_array().unwrap() {
                out.insert((
                    r.as_str().unwrap().to_owned(),
                    v.as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    out
}

async fn wait_for(kube: &KubeUnderTest, from: usize, what: impl Fn(&[String]) -> bool) {
    for _ in 0..200 {
        if what(&kube.server.requests()[from..]) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "timed out; requests: {:#?}",
        &kube.server.requests()[from..]
    );
}

fn attachment(container: &str) -> Attachment {
    Attachment {
        network: "k8s-pod-network".into(),
        container_id: container.into(),
        ifname: "eth0".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_role_grants_exactly_what_the_agent_uses() {
    let kube = KubeUnderTest::start().await;
    let store: Arc<dyn Datastore> = kube.store.clone();
    let tmp = tempfile::tempdir().unwrap();

    // The operator's objects, written before the agent starts.
    let operator = Allocator::new(store.clone(), AllocatorConfig::default());
    // As deploy/overlays/kubernetes/default-ippool.yaml: VXLAN across
    // subnets, so the agent also takes a tunnel address for its VTEP.
    let mut v4 = IpPoolSpec::new("10.244.0.0/16".parse().unwrap());
    v4.vxlan_mode = ipam::pool::EncapMode::CrossSubnet;
    operator
        .create_pool("default-ipv4-ippool", v4)
        .await
        .unwrap();
    operator
        .create_pool(
            "default-ipv6-ippool",
            IpPoolSpec::new("fd00:10:244::/56".parse().unwrap()),
        )
        .await
        .unwrap();
    store
        .create(
            Kind::BgpConfiguration,
            "default",
            br#"{"asNumber":64512}"#.to_vec(),
        )
        .await
        .unwrap();
    let from = kube.server.requests().len();

    let follows_everything = |reqs: &[String]| {
        [
            "felixnodes",
            "bgppeers",
            "bgpconfigurations",
            "blockaffinities",
            "ippools",
        ]
        .iter()
        .all(|p| {
            reqs.iter()
                .any(|r| r.contains(&format!("/{p}?")) && r.contains("watch=true"))
        })
    };
    let start = |address: &str| {
        let allocator = Arc::new(Allocator::new(store.clone(), AllocatorConfig::default()));
        let plugins = Plugins {
            blocks: Some(Arc::new(IpamBlocks {
                allocator: allocator.clone(),
            })),
            routes: None,
            nat: None,
            pod_api_latency: None,
        };
        let agent = tokio::spawn(run::run(
            config(tmp.path(), address, free_port()),
            store.clone(),
            plugins,
        ));
        (agent, PodApi::new(allocator, "node-1"))
    };

    // First run: register, follow, serve three pods, release one by DEL
    // and one by GC.
    let (agent, pods) = start("127.0.0.1/8");
    wait_for(&kube, from, follows_everything).await;
    // ... and has taken its VTEP address (asynchronously).
    let mut vtep = false;
    for _ in 0..200 {
        let handles = store.list(Kind::IpamHandle, "").await.unwrap();
        if handles.objects.iter().any(|h| h.name.contains("vxlan")) {
            vtep = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(vtep, "the agent took no VXLAN tunnel address");
    // c2 is dual-stack (conflist `assign_ipv6`): one handle, two blocks.
    for (c, num_v6) in [("c1", 0), ("c2", 1), ("c3", 0)] {
        let answer = pods
            .answer(Request::Assign {
                attachment: attachment(c),
                pod_namespace: Some("default".into()),
                pod_name: Some(format!("pod-{c}")),
                num_v4: 1,
                num_v6,
            })
            .await;
        assert!(
            matches!(answer, Response::Addresses(ref a) if a.len() == 1 + num_v6 as usize),
            "{answer:?}"
        );
    }
    let released = pods
        .answer(Request::Release {
            attachment: attachment("c1"),
        })
        .await;
    assert!(!matches!(released, Response::Error(_)), "{released:?}");
    let collected = pods
        .answer(Request::Gc {
            network: "k8s-pod-network".into(),
            valid: vec![attachment("c3")],
        })
        .await;
    assert!(!matches!(collected, Response::Error(_)), "{collected:?}");
    agent.abort();
    let _ = agent.await;

    // Second run with another address: the registration is an update.
    let mark = kube.server.requests().len();
    let (agent, pods) = start("127.0.0.2/8");
    wait_for(&kube, mark, |reqs| {
        reqs.iter()
            .any(|r| r.starts_with("PUT /apis/crd.felix-rs.io/v1/felixnodes/node-1"))
    })
    .await;
    let released = pods
        .answer(Request::Release {
            attachment: attachment("c3"),
        })
        .await;
    assert!(!matches!(released, Response::Error(_)), "{released:?}");
    agent.abort();
    let _ = agent.await;

    // The empty block given back (not yet called by the agent itself).
    let reclaimer = Allocator::new(
        store.clone(),
        AllocatorConfig {
            empty_block_grace: Duration::ZERO,
            ..AllocatorConfig::default()
        },
    );
    let given_back = reclaimer.reclaim_empty_blocks().await.unwrap();
    assert_eq!(
        given_back.len(),
        1,
        "the IPv6 block; the IPv4 block keeps the VTEP address"
    );

    let used: BTreeSet<(String, String)> = kube.server.requests()[from..]
        .iter()
        .map(|r| {
            let (plural, verb) = rbac_verb(r);
            (plural, verb.to_owned())
        })
        .collect();
    let granted = granted();
    let missing: Vec<_> = used.difference(&granted).collect();
    assert!(missing.is_empty(), "used but not granted: {missing:?}");
    let unused: Vec<_> = granted.difference(&used).collect();
    assert!(unused.is_empty(), "granted but never used: {unused:?}");
}
