//! The plugin's netlink shortcuts against the real kernel, in namespaces
//! the test makes: a batch of requests in one `sendmsg` (every request
//! tried, the first refusal reported), and the veth create's echo, whose
//! `IFLA_LINK` the plugin takes as the pod end's index instead of looking
//! the pod end up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::IpAddr;

use common::*;
use felix_cni::netns::NetNs;
use felix_cni::pod_iface::{self, Link, RouteSpec};
use ipnet::IpNet;

#[test]
fn a_batch_tries_every_request_and_reports_the_first_refusal() {
    if skip_unless_root("netlink_batch") {
        return;
    }
    let ns = Netns::new("batch");
    // (A veth pair: this kernel has no dummy module.)
    ns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"]);
    let mut socket = NetNs::open(&ns.path()).unwrap().route_socket().unwrap();
    let link = pod_iface::find_link(&mut socket, "d0").unwrap().unwrap();
    assert!(!link.up);
    let a: IpAddr = "10.9.9.1".parse().unwrap();
    let b: IpAddr = "10.9.9.2".parse().unwrap();
    let route = RouteSpec {
        dst: "10.8.0.0/16".parse::<IpNet>().unwrap(),
        gateway: None,
        oif: link.index,
        onlink: false,
        protocol: 102,
    };

    // All well: addresses, up, route, one send.
    pod_iface::configure_pod_end(&mut socket, &link, &[a], &[route]).unwrap();
    let shown = ns.ip(&["-o", "addr", "show", "dev", "d0"]);
    assert!(shown.contains("10.9.9.1/32"), "{shown}");
    assert!(ns.ip(&["link", "show", "d0"]).contains(",UP"));
    assert!(ns
        .ip(&["route", "show", "10.8.0.0/16"])
        .contains("dev d0 proto 102"));

    // The second request is refused (the address is there already): the
    // error names it, and the requests after it were still carried out.
    let other = RouteSpec {
        dst: "10.7.0.0/16".parse::<IpNet>().unwrap(),
        ..route
    };
    let e = pod_iface::configure_pod_end(&mut socket, &link, &[b, a], &[other]).unwrap_err();
    assert_eq!(e.errno(), Some(nix::libc::EEXIST), "{e}");
    assert!(e.to_string().contains("adding 10.9.9.1 to d0"), "{e}");
    let shown = ns.ip(&["-o", "addr", "show", "dev", "d0"]);
    assert!(shown.contains("10.9.9.2/32"), "{shown}");
    assert!(ns.ip(&["route", "show", "10.7.0.0/16"]).contains("dev d0"));

    // The socket is still in step: a plain request after the batch.
    assert!(pod_iface::find_link(&mut socket, "d0").unwrap().is_some());
}

#[test]
fn veth_create_echo_names_the_host_end_and_the_pod_ends_index() {
    if skip_unless_root("veth_echo") {
        return;
    }
    let node = Netns::new("echo-node");
    let pod = Netns::new("echo-pod");
    // Move the pod end's index away from the first free one, so that a
    // match below is not a coincidence.
    pod.ip(&["link", "add", "x0", "type", "veth", "peer", "name", "x1"]);
    let pod_ns = NetNs::open(&pod.path()).unwrap();
    let mut host = NetNs::open(&node.path()).unwrap().route_socket().unwrap();
    let mac = pod_iface::pod_veth_mac("c-echo", "eth0");
    let echoed =
        pod_iface::create_veth(&mut host, "fxecho0", "eth0", mac, 1400, &pod_ns, true).unwrap();
    let Some(echoed) = echoed else {
        // Linux < 6.3 sends no echo for a new link; the plugin then looks
        // the host end up instead (same fields).
        println!("SKIPPED: this kernel does not echo a new link (NLM_F_ECHO, Linux >= 6.3)");
        return;
    };
    let looked_up: Link = pod_iface::find_link(&mut host, "fxecho0").unwrap().unwrap();
    assert_eq!(echoed.name, "fxecho0");
    assert_eq!(echoed.index, looked_up.index);
    assert_eq!(echoed.mac, pod_iface::HOST_VETH_MAC.to_vec());
    assert_eq!(echoed.mtu, 1400);
    assert!(echoed.up && echoed.is_veth);
    assert_eq!(echoed.peer_index, looked_up.peer_index);

    // IFLA_LINK is the pod end's index in the pod's namespace, and the
    // pod end has the MAC and MTU asked for.
    let mut in_pod = pod_ns.route_socket().unwrap();
    let pod_end = pod_iface::find_link(&mut in_pod, "eth0").unwrap().unwrap();
    assert_eq!(echoed.peer_index, Some(pod_end.index));
    assert_eq!(pod_end.mac, mac.to_vec());
    assert_eq!(pod_end.mtu, 1400);
    assert!(pod_end.is_veth);
}
