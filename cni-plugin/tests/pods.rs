//! 50 pods on one node through the real `felix-cni` binary and the real
//! agent side on SQLite: distinct addresses from the node's block, every
//! pod pings every other through the node, ADD is retry-safe, CHECK passes,
//! DEL removes every trace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::IpAddr;

use common::*;

const PODS: usize = 50;

#[test]
fn fifty_pods_get_distinct_addresses_ping_each_other_and_leave_nothing() {
    if skip_unless_root("fifty_pods") {
        return;
    }
    let node = Node::new("node");
    let agent = Agent::start("10.96.0.0/16");
    let conf = agent.conf("1.1.0", "");
    let pods: Vec<Netns> = (0..PODS).map(|i| Netns::new(&format!("p{i}"))).collect();
    let ids: Vec<String> = (0..PODS)
        .map(|i| format!("pod{i:02}-{}", std::process::id()))
        .collect();

    let mut addresses = Vec::new();
    let mut fresh = Vec::new();
    for (pod, id) in pods.iter().zip(&ids) {
        let path = pod.path();
        let mut call = Call::new("ADD", id, Some(&path));
        let args = format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={id}");
        call.args = &args;
        let run = felix(&node, &call, &conf);
        assert!(run.ok, "ADD {id}: {:?} {}", run.json, run.stderr);
        let got = run.addresses();
        assert_eq!(got.len(), 1, "{:?}", run.json);
        addresses.push(got[0]);
        fresh.push(run.json);
    }

    // Distinct, and all from the node's own block(s).
    distinct(&addresses);
    let blocks = agent.node_blocks();
    assert!(!blocks.is_empty());
    for a in &addresses {
        assert!(
            blocks.iter().any(|b| b.contains(a)),
            "{a} is not in the node's blocks {blocks:?}"
        );
    }
    // The agent recorded each under its attachment's handle.
    let in_use = agent.in_use();
    assert_eq!(in_use.len(), PODS);
    for (id, a) in ids.iter().zip(&addresses) {
        let handle = format!("felix-cni:felix-test:{id}:eth0");
        assert!(in_use.contains(&(*a, handle.clone())), "{a} {handle}");
    }

    // One host veth and one felix route per pod.
    assert_eq!(node.felix_links().len(), PODS);
    assert_eq!(node.felix_routes().len(), PODS, "{:?}", node.felix_routes());

    // Every pod pings every other pod (through the node: /32 addresses,
    // default route via 169.254.1.1).
    let targets: Vec<String> = addresses.iter().map(IpAddr::to_string).collect();
    for (i, pod) in pods.iter().enumerate() {
        let others: Vec<&str> = targets
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, t)| t.as_str())
            .collect();
        let script = format!(
            "fail=0; for a in {}; do ping -n -q -c1 -W2 $a >/dev/null 2>&1 || {{ echo unreachable $a; fail=1; }}; done; exit $fail",
            others.join(" ")
        );
        let out = pod.exec(&["sh", "-c", &script]);
        assert!(
            out.status.success(),
            "pod {i} ({}) cannot reach: {}",
            targets[i],
            String::from_utf8_lossy(&out.stdout)
        );
    }

    // ADD again (a runtime retry) answers the same result and makes nothing
    // new; CHECK agrees.
    let path = pods[0].path();
    let first = felix(&node, &Call::new("ADD", &ids[0], Some(&path)), &conf);
    assert!(first.ok);
    let again = felix(&node, &Call::new("ADD", &ids[0], Some(&path)), &conf);
    assert!(again.ok, "{:?}", again.json);
    assert_eq!(first.json, again.json);
    // A fresh ADD builds its result from the kernel's echo of the host end
    // and what it chose for the pod end (no look-ups); a retry reads both
    // ends back from the kernel. They agree: names, MACs, MTUs, sandbox.
    assert_eq!(fresh[0], first.json);
    assert_eq!(again.addresses(), vec![addresses[0]]);
    assert_eq!(agent.in_use().len(), PODS);
    let prev = again.json.clone().unwrap();
    let check_conf = agent.conf("1.1.0", &format!(r#","prevResult":{prev}"#));
    let check = felix(
        &node,
        &Call::new("CHECK", &ids[0], Some(&path)),
        &check_conf,
    );
    assert!(check.ok, "CHECK: {:?}", check.json);

    // DEL every pod: nothing of felix's remains and every address is free.
    for (pod, id) in pods.iter().zip(&ids) {
        let path = pod.path();
        let run = felix(&node, &Call::new("DEL", id, Some(&path)), &conf);
        assert!(run.ok, "DEL {id}: {:?}", run.json);
        let out = pod.exec(&["ip", "-o", "link", "show", "eth0"]);
        assert!(!out.status.success(), "eth0 still in {}", pod.name);
    }
    assert_eq!(node.felix_links(), Vec::<String>::new());
    assert_eq!(node.felix_routes(), Vec::<String>::new());
    assert_eq!(agent.in_use(), Vec::new());

    // DEL is idempotent.
    let path = pods[0].path();
    let run = felix(&node, &Call::new("DEL", &ids[0], Some(&path)), &conf);
    assert!(run.ok, "second DEL: {:?}", run.json);
}

#[test]
fn dual_stack_pod_gets_v4_and_v6_and_reaches_another_over_both() {
    if skip_unless_root("dual_stack") {
        return;
    }
    let node = Node::new("n6");
    let agent = Agent::start("10.97.0.0/16");
    agent
        .runtime
        .block_on(agent.allocator.create_pool(
            "test-pool-v6",
            ipam::pool::IpPoolSpec::new("fd00:97::/48".parse().unwrap()),
        ))
        .unwrap();
    let conf = agent.conf("1.0.0", r#","assign_ipv6":true"#);
    let a = Netns::new("a6");
    let b = Netns::new("b6");
    let (pa, pb) = (a.path(), b.path());
    let ra = felix(&node, &Call::new("ADD", "dual-a", Some(&pa)), &conf);
    let rb = felix(&node, &Call::new("ADD", "dual-b", Some(&pb)), &conf);
    assert!(ra.ok && rb.ok, "{:?} {:?}", ra.json, rb.json);
    let b_addrs = rb.addresses();
    assert_eq!(b_addrs.len(), 2);
    assert_eq!(ra.addresses().len(), 2);
    // The pod's IPv6 default route goes via the host end's link-local.
    let routes = a.ip(&["-6", "route", "show", "default"]);
    assert!(
        routes.contains("via fe80::ecee:eeff:feee:eeee dev eth0"),
        "{routes}"
    );
    for target in &b_addrs {
        let out = a.exec(&["ping", "-n", "-c1", "-W3", &target.to_string()]);
        assert!(
            out.status.success(),
            "ping {target}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    for (id, p) in [("dual-a", &pa), ("dual-b", &pb)] {
        assert!(felix(&node, &Call::new("DEL", id, Some(p)), &conf).ok);
    }
    assert!(node.felix_routes().is_empty());
    assert!(agent.in_use().is_empty());
}
