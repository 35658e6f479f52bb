//! Pod routes are part of the agent's desired state (issue 6: one route
//! protocol for every felix route): the CNI plugin's host route to a pod and
//! the route programmer's routes carry the same protocol, and the agent's
//! reconcile keeps a live pod's route while removing a stale one. Real
//! kernel, in namespaces the tests make (root).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod netns_support;

use std::net::IpAddr;
use std::sync::Arc;

use felix_cni::api::Attachment;
use felix_cni::pod_iface::{self, host_veth_name};
use felix_rs::agent::forwarding::DesiredRoutes;
use felix_rs::agent::kernel_routes::KernelRoutes;
use felix_rs::agent::run::RouteSink;
use felix_rs::local_pods::LocalPods;
use felix_rs::routes::FELIX_ROUTE_PROTOCOL;
use ipam::pool::{parse_cidr, IpPoolSpec};
use ipam::{AllocationAttrs, Allocator, AllocatorConfig, AutoAssignRequest};
use netns_support::{felix_routes, NetNs};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn attachment(container: &str) -> Attachment {
    Attachment {
        network: "k8s-pod-network".into(),
        container_id: container.into(),
        ifname: "eth0".into(),
    }
}

#[test]
fn the_cni_route_protocol_is_the_route_programmers() {
    assert_eq!(felix_cni::ROUTE_PROTOCOL, FELIX_ROUTE_PROTOCOL);
}

/// Adds the host route exactly as felix-cni's ADD does (its own code).
fn plugin_host_route(address: IpAddr, veth: &str) {
    let mut socket = felix_cni::netlink::RouteSocket::open().unwrap();
    let link = pod_iface::find_link(&mut socket, veth).unwrap().unwrap();
    pod_iface::add_route(&mut socket, pod_iface::host_route(address, &link)).unwrap();
}

#[test]
fn reconcile_keeps_a_live_pods_route_and_removes_a_stale_one() {
    let ns = NetNs::new("podroutes");
    let live = host_veth_name("live-ctr", "eth0");
    let gone = host_veth_name("gone-ctr", "eth0");
    for veth in [&live, &gone] {
        ns.ip(&format!("link add {veth} type veth peer name {veth}p"));
        ns.ip(&format!("link set {veth} up"));
        ns.ip(&format!("link set {veth}p up"));
    }
    let pods = LocalPods::new();
    pods.insert(
        &attachment("live-ctr"),
        vec![ip("10.70.0.5"), ip("fd00:70::5")],
    );
    let (first, second, repaired) = ns.run({
        let pods = pods.clone();
        let (live, gone) = (live.clone(), gone.clone());
        let ns_name = ns.name.clone();
        move || async move {
            // The plugin made both; the second pod is no longer the
            // agent's (its address was released, its veth lingers).
            plugin_host_route(ip("10.70.0.5"), &live);
            plugin_host_route(ip("fd00:70::5"), &live);
            plugin_host_route(ip("10.70.0.6"), &gone);
            let mut sink = KernelRoutes::open("192.0.2.1".parse().unwrap())
                .unwrap()
                .with_local_pods(pods);
            let mut desired = DesiredRoutes::default();
            desired.blackholes.insert("10.70.0.0/26".parse().unwrap());
            let first = sink.program(&desired).await;
            let second = sink.program(&desired).await;
            // A live pod's route deleted behind the agent's back comes back.
            let mut socket = felix_cni::netlink::RouteSocket::open().unwrap();
            let link = pod_iface::find_link(&mut socket, &live).unwrap().unwrap();
            assert!(pod_iface::routed_to(&mut socket, ip("10.70.0.5"), &link).unwrap());
            std::process::Command::new("ip")
                .args(["-n", &ns_name, "route", "del", "10.70.0.5/32"])
                .status()
                .unwrap();
            assert!(!pod_iface::routed_to(&mut socket, ip("10.70.0.5"), &link).unwrap());
            let repaired = sink.program(&desired).await;
            (first, second, repaired)
        }
    });
    // The agent's own routes (the blackhole) are counted; pod routes come
    // on top, and no error is reported.
    assert_eq!(first, Ok(1));
    assert_eq!(second, Ok(1));
    assert_eq!(repaired, Ok(1));
    let routes = felix_routes(&ns);
    assert!(
        routes.contains(&format!("10.70.0.5 dev {live} scope link")),
        "{routes:#?}"
    );
    assert!(
        routes
            .iter()
            .any(|r| r.starts_with(&format!("fd00:70::5 dev {live}"))),
        "{routes:#?}"
    );
    assert!(
        !routes.iter().any(|r| r.starts_with("10.70.0.6")),
        "the stale pod route survived: {routes:#?}"
    );
    assert!(routes.contains(&"blackhole 10.70.0.0/26".to_owned()));
    assert_eq!(routes.len(), 3, "{routes:#?}");
}

#[tokio::test]
async fn local_pods_are_loaded_from_ipam_for_this_node_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = ipam::store::sqlite::SqliteStore::open(dir.path().join("ipam.db"))
        .await
        .unwrap();
    let alloc = Allocator::new(Arc::new(store), AllocatorConfig::default());
    alloc
        .create_pool("p", IpPoolSpec::new(parse_cidr("10.71.0.0/24").unwrap()))
        .await
        .unwrap();
    let assign = |handle: String, node: &str| AutoAssignRequest {
        handle,
        node: node.into(),
        num_v4: 1,
        attrs: AllocationAttrs {
            node: Some(node.into()),
            ..AllocationAttrs::default()
        },
        ..AutoAssignRequest::default()
    };
    let mine = alloc
        .auto_assign(&assign(attachment("a").handle_id(), "node1"))
        .await
        .unwrap();
    alloc
        .auto_assign(&assign(attachment("b").handle_id(), "node2"))
        .await
        .unwrap();
    // Not a CNI attachment: no veth to route to.
    alloc
        .auto_assign(&assign("some-other-owner".into(), "node1"))
        .await
        .unwrap();
    let pods = LocalPods::load(&alloc, "node1").await.unwrap();
    assert_eq!(
        pods.routes(),
        [(mine.leases[0].ip, host_veth_name("a", "eth0"))]
    );
}
