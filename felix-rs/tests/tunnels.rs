//! VXLAN and IPIP tunnels against a real kernel, in namespaces the test
//! makes (root needed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod netns_support;

use std::net::Ipv4Addr;

use felix_rs::routes::DesiredRoute;
use felix_rs::routes::DesiredRoutes;
use felix_rs::routes::RouteProgrammer;
use felix_rs::tunnel::ipip::{ensure_tunl0, ipip_route};
use felix_rs::tunnel::vxlan::VXLAN_DEVICE;
use felix_rs::tunnel::vxlan::{vtep_mac, VxlanConfig, VxlanDevice, VxlanPeer};
use felix_rs::tunnel::{rtnetlink_handle, Encapsulation, TunnelError, Underlay};
use ipnet::IpNet;
use netns_support::NetNs;

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// A pod: its own namespace, `eth0` with `addr`/32 and a device default
/// route; proxy ARP on the host side `veth` in `node` answers for every
/// address the node routes elsewhere.
fn pod(node: &NetNs, tag: &str, veth: &str, addr: &str) -> NetNs {
    let p = NetNs::new(tag);
    node.ip(&format!(
        "link add {veth} type veth peer name eth0 netns {}",
        p.name
    ));
    node.ip(&format!("link set {veth} up"));
    assert!(node.exec_ok(&format!("sysctl -qw net.ipv4.conf.{veth}.proxy_arp=1")));
    p.ip("link set eth0 up");
    p.ip(&format!("addr add {addr}/32 dev eth0"));
    p.ip("route add default dev eth0");
    p
}

struct Node {
    name: &'static str,
    underlay_ip: &'static str,
    block: &'static str,
    vtep: &'static str,
    pod_ip: &'static str,
    veth: &'static str,
}

/// Felix's part on one node: the VXLAN device, the peer entries, the routes.
fn program(ns: &NetNs, me: &'static Node, peer: &'static Node) -> (u32, u64) {
    ns.run(move || async move {
        let handle = rtnetlink_handle().unwrap();
        let underlay = Underlay::lookup(&handle, "under0", Some(me.underlay_ip.parse().unwrap()))
            .await
            .unwrap();
        let cfg = VxlanConfig::new(&underlay, v4(me.vtep), vtep_mac(me.name)).unwrap();
        let dev = VxlanDevice::ensure(handle.clone(), cfg.clone())
            .await
            .unwrap();
        let again = VxlanDevice::ensure(handle.clone(), cfg).await.unwrap();
        assert_eq!(dev.ifindex(), again.ifindex(), "ensure is idempotent");
        let peers = [VxlanPeer {
            vtep_address: v4(peer.vtep),
            vtep_mac: vtep_mac(peer.name),
            node_address: v4(peer.underlay_ip),
        }];
        let first = dev.reconcile_peers(&peers).await.unwrap();
        assert_eq!(first.written, 2);
        let second = dev.reconcile_peers(&peers).await.unwrap();
        assert_eq!((second.written, second.removed), (0, 0));
        let mut table = DesiredRoutes::new();
        table.pod(me.pod_ip.parse().unwrap(), me.veth).unwrap();
        table.blackhole(me.block.parse().unwrap()).unwrap();
        table
            .insert(DesiredRoute::tunnel(
                peer.block.parse::<IpNet>().unwrap(),
                peer.vtep.parse().unwrap(),
                VXLAN_DEVICE,
                underlay.tunnel_mtu(Encapsulation::Vxlan),
            ))
            .unwrap();
        let mut p = RouteProgrammer::new().unwrap();
        p.set_desired(table);
        let report = p.reconcile().await.unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.added, 3);
        (dev.ifindex(), u64::from(underlay.mtu))
    })
}

static A: Node = Node {
    name: "node-a",
    underlay_ip: "192.168.77.1",
    block: "10.244.0.0/26",
    vtep: "10.244.0.0",
    pod_ip: "10.244.0.5",
    veth: "fxpoda",
};
static B: Node = Node {
    name: "node-b",
    underlay_ip: "192.168.77.2",
    block: "10.244.1.0/26",
    vtep: "10.244.1.0",
    pod_ip: "10.244.1.5",
    veth: "fxpodb",
};

#[test]
fn vxlan_carries_pod_to_pod_ping_between_two_nodes() {
    let na = NetNs::new("vxa");
    let nb = NetNs::new("vxb");
    na.ip(&format!(
        "link add under0 type veth peer name under0 netns {}",
        nb.name
    ));
    na.ip("addr add 192.168.77.1/24 dev under0");
    nb.ip("addr add 192.168.77.2/24 dev under0");
    na.ip("link set under0 up");
    nb.ip("link set under0 up");
    for n in [&na, &nb] {
        assert!(n.exec_ok("sysctl -qw net.ipv4.ip_forward=1"));
    }
    let pa = pod(&na, "vxpa", "fxpoda", A.pod_ip);
    let pb = pod(&nb, "vxpb", "fxpodb", B.pod_ip);
    program(&na, &A, &B);
    program(&nb, &B, &A);

    let route = na.out("route show 10.244.1.0/26");
    assert!(
        route.contains("10.244.1.0/26 via 10.244.1.0 dev vxlan.felix proto 102 onlink mtu 1450"),
        "{route}"
    );
    let neigh = na.out("neigh show dev vxlan.felix");
    assert!(
        neigh.contains("10.244.1.0 lladdr") && neigh.contains("PERMANENT"),
        "{neigh}"
    );
    let details = na.out("-d link show vxlan.felix");
    assert!(details.contains("vxlan id 4096"), "{details}");
    assert!(details.contains("dstport 4789"), "{details}");
    assert!(details.contains("nolearning"), "{details}");
    assert!(details.contains("mtu 1450"), "{details}");
    assert!(na
        .out("addr show dev vxlan.felix")
        .contains("inet 10.244.0.0/32"));
    let fdb = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ip netns exec {} bridge fdb show dev vxlan.felix",
            na.name
        ))
        .output()
        .unwrap();
    let fdb = String::from_utf8_lossy(&fdb.stdout);
    assert!(fdb.contains("dst 192.168.77.2 self permanent"), "{fdb}");

    let tx_before = tx_packets(&na);
    assert!(
        pa.exec_ok(&format!("ping -c 3 -i 0.2 -W 2 -q {} >/dev/null", B.pod_ip)),
        "pod A cannot ping pod B over VXLAN"
    );
    assert!(pb.exec_ok(&format!("ping -c 1 -W 2 -q {} >/dev/null", A.pod_ip)));
    assert!(
        tx_packets(&na) >= tx_before + 3,
        "the pings went through vxlan.felix"
    );

    // An agent restart (ensure again) keeps the entries and the path.
    na.run(|| async {
        let handle = rtnetlink_handle().unwrap();
        let underlay = Underlay::lookup(&handle, "under0", None).await.unwrap();
        let cfg = VxlanConfig::new(&underlay, v4("10.244.0.0"), vtep_mac("node-a")).unwrap();
        VxlanDevice::ensure(handle, cfg).await.unwrap();
    });
    assert!(na
        .out("neigh show dev vxlan.felix")
        .contains("10.244.1.0 lladdr"));
    assert!(pa.exec_ok(&format!("ping -c 1 -W 2 -q {} >/dev/null", B.pod_ip)));

    // Node B leaves: its entries go, and so does the path.
    let removed = na.run(|| async {
        let handle = rtnetlink_handle().unwrap();
        let underlay = Underlay::lookup(&handle, "under0", None).await.unwrap();
        let cfg = VxlanConfig::new(&underlay, v4("10.244.0.0"), vtep_mac("node-a")).unwrap();
        let dev = VxlanDevice::ensure(handle, cfg).await.unwrap();
        dev.reconcile_peers(&[]).await.unwrap()
    });
    let neigh = na.out("neigh show dev vxlan.felix");
    let fdb = fdb_show(&na);
    assert_eq!(removed.removed, 2, "neighbours: {neigh} fdb: {fdb}");
    assert!(!neigh.contains("10.244.1.0 lladdr"), "{neigh}");
    assert!(!fdb.contains("dst 192.168.77.2"), "{fdb}");
    assert!(!pa.exec_ok(&format!("ping -c 1 -W 1 -q {} >/dev/null", B.pod_ip)));
}

fn fdb_show(ns: &NetNs) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ip netns exec {} bridge fdb show dev vxlan.felix",
            ns.name
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tx_packets(ns: &NetNs) -> u64 {
    let s = ns.out("-s link show vxlan.felix");
    let mut lines = s.lines().skip_while(|l| !l.trim_start().starts_with("TX:"));
    lines.next();
    lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn a_vxlan_device_made_with_other_parameters_is_recreated() {
    let ns = NetNs::new("vxre");
    ns.ip("link add under0 type veth peer name under0p");
    ns.ip("link set under0 up");
    ns.ip("addr add 192.168.78.1/24 dev under0");
    ns.ip("link add vxlan.felix type vxlan id 99 dstport 4789 dev under0");
    ns.run(|| async {
        let handle = rtnetlink_handle().unwrap();
        let underlay = Underlay::lookup(&handle, "under0", None).await.unwrap();
        let cfg = VxlanConfig::new(&underlay, v4("10.244.5.0"), vtep_mac("x")).unwrap();
        VxlanDevice::ensure(handle, cfg).await.unwrap();
    });
    let details = ns.out("-d link show vxlan.felix");
    assert!(details.contains("vxlan id 4096"), "{details}");
}

#[test]
fn underlay_lookup_errors_are_clear() {
    let ns = NetNs::new("under");
    ns.ip("link add under0 type veth peer name under0p");
    ns.ip("addr add 192.168.79.1/24 dev under0");
    ns.run(|| async {
        let handle = rtnetlink_handle().unwrap();
        let u = Underlay::lookup(&handle, "under0", None).await.unwrap();
        assert_eq!(u.address, "192.168.79.1/24".parse::<IpNet>().unwrap());
        assert_eq!(u.mtu, 1500);
        let e = Underlay::lookup(&handle, "nosuchdev", None)
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "device nosuchdev not found");
        let e = Underlay::lookup(&handle, "under0", Some("192.168.80.1".parse().unwrap()))
            .await
            .unwrap_err();
        assert!(matches!(e, TunnelError::AddressNotOnDevice { .. }), "{e}");
    });
}

#[test]
fn underlay_found_by_address_and_device_removed_when_vxlan_goes() {
    let ns = NetNs::new("vxrm");
    ns.ip("link add under0 type veth peer name under0p");
    ns.ip("link set under0 mtu 9000 up");
    ns.ip("addr add 192.168.83.1/24 dev under0");
    ns.run(|| async {
        let handle = rtnetlink_handle().unwrap();
        // The agent knows its node address, not the device.
        let u = Underlay::holding(&handle, "192.168.83.1".parse().unwrap())
            .await
            .unwrap();
        assert_eq!(u.device, "under0");
        assert_eq!(u.address, "192.168.83.1/24".parse::<IpNet>().unwrap());
        assert_eq!(u.mtu, 9000);
        assert_eq!(u.tunnel_mtu(Encapsulation::Vxlan), 8950);
        let e = Underlay::holding(&handle, "192.168.84.1".parse().unwrap())
            .await
            .unwrap_err();
        assert!(matches!(e, TunnelError::AddressNotOnDevice { .. }), "{e}");
        let cfg = VxlanConfig::new(&u, v4("10.244.6.0"), vtep_mac("y")).unwrap();
        VxlanDevice::ensure(handle.clone(), cfg).await.unwrap();
        assert!(VxlanDevice::remove(&handle, VXLAN_DEVICE).await.unwrap());
        assert!(!VxlanDevice::remove(&handle, VXLAN_DEVICE).await.unwrap());
    });
    assert!(!ns.out("link show").contains("vxlan.felix"));
}

#[test]
fn ipip_tunl0_and_routes() {
    let ns = NetNs::new("ipip");
    ns.ip("link add under0 type veth peer name under0p");
    ns.ip("link set under0 up");
    ns.ip("addr add 192.168.81.1/24 dev under0");
    let outcome = ns.run(|| async {
        let handle = rtnetlink_handle().unwrap();
        let underlay = Underlay::lookup(&handle, "under0", None).await.unwrap();
        match ensure_tunl0(&handle, &underlay, v4("10.244.7.0")).await {
            Err(TunnelError::IpipUnavailable(why)) => Err(why),
            Err(e) => panic!("{e}"),
            Ok(_) => {
                let mut p = RouteProgrammer::new().unwrap();
                let mut t = DesiredRoutes::new();
                t.insert(ipip_route(
                    "10.244.8.0/26".parse().unwrap(),
                    v4("192.168.82.11"),
                    underlay.tunnel_mtu(Encapsulation::Ipip),
                ))
                .unwrap();
                p.set_desired(t);
                let r = p.reconcile().await.unwrap();
                assert!(r.errors.is_empty(), "{:?}", r.errors);
                Ok(())
            }
        }
    });
    if let Err(why) = outcome {
        println!("SKIPPED: ipip not available in this kernel ({why})");
        return;
    }
    let route = ns.out("route show 10.244.8.0/26");
    assert!(
        route.contains("via 192.168.82.11 dev tunl0 proto 102 onlink mtu 1480"),
        "{route}"
    );
    assert!(ns.out("link show tunl0").contains("mtu 1480"));
}
