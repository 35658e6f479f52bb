//! The NAT outgoing table (`felix_rs::agent::nat_outgoing`) against a real
//! kernel, in namespaces the test makes (root needed): the table `nft`
//! writes, and what it does to pod traffic, IPv4 and IPv6.
//!
//! ```text
//!  pod-a 10.244.0.5, fd00:10:244::5 (pool with natOutgoing)
//!  pod-b 10.245.0.5                 (pool without)
//!     └── veths ── node (forwarding) eth0 192.168.77.1, fd00:77::1
//!                                     └── outside eth0 192.168.77.2, fd00:77::2
//!                                         (no route to any pod)
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod netns_support;

use felix_rs::agent::nat_outgoing::{NatOutgoing, NatOutgoingReconciler, NftTable};
use ipam::pool::IpPoolSpec;
use netns_support::{sh, NetNs};
use std::process::Command;
use std::time::{Duration, Instant};

fn skip() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the effective user.
    if std::fs::metadata("/proc/self").ok().map(|m| m.uid()) != Some(0) {
        println!("SKIPPED: needs root (network namespaces)");
        return true;
    }
    if Command::new("nft").arg("--version").output().is_err() {
        println!("SKIPPED: no nft program (Debian package nftables)");
        return true;
    }
    false
}

fn pool(cidr: &str, nat: bool) -> IpPoolSpec {
    let mut p = IpPoolSpec::new(cidr.parse().unwrap());
    p.nat_outgoing = nat;
    p
}

/// `nft ARGS` inside `ns`; stdout.
fn nft(ns: &NetNs, args: &str) -> String {
    nft_in(&ns.name, args)
}

fn nft_in(ns: &str, args: &str) -> String {
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!("ip netns exec {ns} nft {args}"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "nft {args}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn tables(ns: &NetNs) -> Vec<String> {
    nft(ns, "list tables")
        .lines()
        .map(|l| l.trim().to_string())
        .collect()
}

/// Writes the table for `pools` the way the agent does, inside `ns`.
fn write(ns: &NetNs, pools: Vec<IpPoolSpec>) {
    ns.run(move || async move {
        NftTable::default()
            .write_blocking(&NatOutgoing::from_pools(&pools))
            .unwrap()
    });
}

/// Packets counted by the named counter `name` of `table inet probe`.
fn packets(ns: &NetNs, name: &str) -> u64 {
    let text = nft(ns, &format!("list counter inet probe {name}"));
    let words: Vec<&str> = text.split_whitespace().collect();
    let i = words.iter().position(|w| *w == "packets").unwrap();
    words[i + 1].parse().unwrap()
}

/// A table in `ns` counting echo requests by source: one named counter per
/// (name, source prefix).
fn probe(ns: &NetNs, counters: &[(&str, &str)]) {
    let mut batch = String::from("table inet probe {\n");
    for (name, _) in counters {
        batch.push_str(&format!("\tcounter {name} {{ }}\n"));
    }
    batch.push_str("\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n");
    for (name, source) in counters {
        let rule = if source.contains(':') {
            format!("ip6 saddr {source} icmpv6 type echo-request counter name {name}")
        } else {
            format!("ip saddr {source} icmp type echo-request counter name {name}")
        };
        batch.push_str(&format!("\t\t{rule}\n"));
    }
    batch.push_str("\t}\n}\n");
    let path = std::env::temp_dir().join(format!("{}-probe.nft", ns.name));
    std::fs::write(&path, batch).unwrap();
    nft(ns, &format!("-f {}", path.display()));
    let _ = std::fs::remove_file(path);
}

/// `ping -c COUNT` from `ns`; true when every echo was answered.
fn ping(ns: &NetNs, to: &str, count: u32) -> bool {
    ns.exec_ok(&format!(
        "ping -q -n -c {count} -i 0.2 -W 1 {to} >/dev/null"
    ))
}

/// A pod: its own namespace, `eth0` with `/32` (and `/128`) addresses,
/// default routes through the host side `veth` (proxy ARP; IPv6 via the
/// host side's link-local fe80::1).
fn pod(node: &NetNs, tag: &str, veth: &str, v4: &str, v6: Option<&str>) -> NetNs {
    let p = NetNs::new(tag);
    node.ip(&format!(
        "link add {veth} type veth peer name eth0 netns {}",
        p.name
    ));
    node.ip(&format!("addr add fe80::1/64 dev {veth} nodad"));
    node.ip(&format!("link set {veth} up"));
    assert!(node.exec_ok(&format!("sysctl -qw net.ipv4.conf.{veth}.proxy_arp=1")));
    p.ip("link set eth0 up");
    p.ip(&format!("addr add {v4}/32 dev eth0"));
    p.ip("route add default dev eth0");
    node.ip(&format!("route add {v4}/32 dev {veth}"));
    if let Some(v6) = v6 {
        p.ip(&format!("-6 addr add {v6}/128 dev eth0 nodad"));
        p.ip("-6 route add default via fe80::1 dev eth0");
        node.ip(&format!("-6 route add {v6}/128 dev {veth}"));
    }
    p
}

#[test]
fn the_table_is_replaced_whole_and_removed_leaving_other_tables() {
    if skip() {
        return;
    }
    let ns = NetNs::new("nat-tbl");
    // Someone else's table: never touched.
    nft(&ns, "add table ip other");
    nft(&ns, "add chain ip other c");
    write(
        &ns,
        vec![
            pool("10.244.0.0/16", true),
            pool("10.245.0.0/16", false),
            pool("fd00:10:244::/48", true),
        ],
    );
    assert_eq!(tables(&ns), ["table ip other", "table inet felix"]);
    let listed = nft(&ns, "list table inet felix");
    assert!(listed.contains("elements = { 10.244.0.0/16 }"), "{listed}");
    assert!(listed.contains("elements = { 10.244.0.0/15 }"), "{listed}");
    assert!(
        listed.contains("elements = { fd00:10:244::/48 }"),
        "{listed}"
    );
    assert!(
        listed
            .contains("ip saddr @masq_pools_v4 ip daddr != @all_pools_v4 masquerade fully-random"),
        "{listed}"
    );
    // A changed pool replaces the table (one chain, one rule per family:
    // nothing accumulates).
    write(
        &ns,
        vec![pool("10.244.0.0/16", false), pool("10.246.0.0/16", true)],
    );
    let listed = nft(&ns, "list table inet felix");
    assert!(!listed.contains("10.245.0.0"), "{listed}");
    assert!(!listed.contains("fd00:10:244::"), "{listed}");
    assert!(listed.contains("elements = { 10.246.0.0/16 }"), "{listed}");
    assert_eq!(listed.matches("masquerade").count(), 2, "{listed}");
    assert_eq!(listed.matches("chain ").count(), 1, "{listed}");
    // No pool wants NAT: the table goes, the other stays (twice: removing
    // a missing table is no error).
    write(&ns, vec![pool("10.244.0.0/16", false)]);
    assert_eq!(tables(&ns), ["table ip other"]);
    write(&ns, vec![]);
    assert_eq!(tables(&ns), ["table ip other"]);
    assert!(nft(&ns, "list table ip other").contains("chain c"));
}

#[test]
fn pods_in_a_nat_pool_leave_as_the_node_and_pod_to_pod_keeps_its_source() {
    if skip() {
        return;
    }
    let node = NetNs::new("nat-node");
    let outside = NetNs::new("nat-out");
    sh(&format!(
        "ip -n {} link add eth0 type veth peer name eth0 netns {}",
        node.name, outside.name
    ));
    for (ns, last) in [(&node, 1), (&outside, 2)] {
        ns.ip(&format!("addr add 192.168.77.{last}/24 dev eth0"));
        ns.ip(&format!("-6 addr add fd00:77::{last}/64 dev eth0 nodad"));
        ns.ip("link set eth0 up");
    }
    assert!(node.exec_ok("sysctl -qw net.ipv4.ip_forward=1"));
    assert!(node.exec_ok("sysctl -qw net.ipv6.conf.all.forwarding=1"));
    let a = pod(&node, "nat-pa", "vpa", "10.244.0.5", Some("fd00:10:244::5"));
    let b = pod(&node, "nat-pb", "vpb", "10.245.0.5", None);
    // Neighbour discovery before anything is counted: the pods resolve
    // their gateway (IPv6: fe80::1 once the pod's own link-local address
    // has left DAD) and the node the outside host, so no counted echo
    // waits in, or is dropped from, an unresolved neighbour's queue.
    assert!(node.exec_ok("ping -q -n -c 1 -W 5 192.168.77.2 >/dev/null"));
    assert!(node.exec_ok("ping -q -n -c 1 -W 5 fd00:77::2 >/dev/null"));
    assert!(a.exec_ok("ping -q -n -c 1 -W 5 192.168.77.1 >/dev/null"));
    assert!(b.exec_ok("ping -q -n -c 1 -W 5 192.168.77.1 >/dev/null"));
    // Pod to pod too (the node resolves pod b, pod b resolves pod a through
    // proxy ARP, which answers after a random delay of up to 0.8 s): before
    // pod b's counters exist, so these echoes are not counted.
    assert!(b.exec_ok("ping -q -n -c 1 -W 5 10.244.0.5 >/dev/null"));
    let mut warm = false;
    for _ in 0..50 {
        if a.exec_ok("ping -q -n -c 1 -W 1 fd00:77::1 >/dev/null") {
            warm = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(warm, "pod a never reached the node over IPv6");
    probe(
        &outside,
        &[
            ("from_node", "192.168.77.1"),
            ("from_pods", "10.244.0.0/15"),
            ("from_node6", "fd00:77::1"),
            ("from_pods6", "fd00:10:244::/48"),
        ],
    );
    probe(
        &b,
        &[("from_pod_a", "10.244.0.5"), ("from_node", "192.168.77.1")],
    );
    let pools = vec![
        pool("10.244.0.0/16", true),
        pool("10.245.0.0/16", false),
        pool("fd00:10:244::/48", true),
    ];

    // No table: the outside host sees the pod's address and cannot answer.
    assert!(!ping(&a, "192.168.77.2", 2));
    assert!(packets(&outside, "from_pods") >= 2);
    assert_eq!(packets(&outside, "from_node"), 0);

    write(&node, pools.clone());
    // Pod a (natOutgoing) reaches the outside host as the node, IPv4 and
    // IPv6.
    let before = packets(&outside, "from_pods");
    assert!(ping(&a, "192.168.77.2", 3), "pod a -> outside with NAT");
    assert_eq!(packets(&outside, "from_node"), 3);
    assert_eq!(packets(&outside, "from_pods"), before);
    assert!(
        ping(&a, "fd00:77::2", 3),
        "pod a -> outside over IPv6 with NAT"
    );
    assert_eq!(packets(&outside, "from_node6"), 3);
    assert_eq!(packets(&outside, "from_pods6"), 0);
    // Pod b (pool without natOutgoing) keeps its address: no answer.
    assert!(!ping(&b, "192.168.77.2", 2), "pod b must not be NATed");
    assert_eq!(packets(&outside, "from_node"), 3);
    assert!(packets(&outside, "from_pods") >= before + 2);
    // Pod to pod (another pool, destination in a pool): source kept.
    assert!(ping(&a, "10.245.0.5", 3), "pod a -> pod b");
    assert_eq!(packets(&b, "from_pod_a"), 3);
    assert_eq!(packets(&b, "from_node"), 0);

    // natOutgoing switched off (the table removed): pod a keeps its
    // address again.
    write(&node, vec![pool("10.244.0.0/16", false)]);
    let before = packets(&outside, "from_pods");
    assert!(!ping(&a, "192.168.77.2", 2), "pod a after NAT removed");
    assert_eq!(packets(&outside, "from_node"), 3);
    assert!(packets(&outside, "from_pods") >= before + 2);
}

/// The kernel's handle of `table inet felix` (a new one each time the
/// table is made).
fn table_handle(ns: &str) -> String {
    let text = nft_in(ns, "-a list table inet felix");
    let first = text.lines().next().unwrap();
    first.rsplit("# handle ").next().unwrap().trim().to_string()
}

#[test]
fn an_unchanged_table_is_left_alone_and_a_changed_one_written_again() {
    if skip() {
        return;
    }
    let ns = NetNs::new("nat-rec");
    let name = ns.name.clone();
    ns.run(move || async move {
        let resync = Duration::from_secs(60);
        let mut r = NatOutgoingReconciler::new(Box::new(NftTable::default()), resync);
        let pools = [pool("10.244.0.0/16", true), pool("10.245.0.0/16", false)];
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        assert!(r.reconcile(&pools, t0).await.unwrap().is_ok());
        let handle = table_handle(&name);
        // At the resync the table reads as written: not replaced.
        assert!(r.reconcile(&pools, at(60)).await.is_none());
        assert_eq!(table_handle(&name), handle);
        // An element deleted behind the agent's back: put back at the next
        // resync.
        nft_in(
            &name,
            "delete element inet felix masq_pools_v4 { 10.244.0.0/16 }",
        );
        assert!(r.reconcile(&pools, at(61)).await.is_none());
        assert!(r.reconcile(&pools, at(120)).await.unwrap().is_ok());
        let listed = nft_in(&name, "list set inet felix masq_pools_v4");
        assert!(listed.contains("elements = { 10.244.0.0/16 }"), "{listed}");
        // The table deleted: made again.
        nft_in(&name, "delete table inet felix");
        assert!(r.reconcile(&pools, at(180)).await.unwrap().is_ok());
        let handle = table_handle(&name);
        assert!(r.reconcile(&pools, at(240)).await.is_none());
        assert_eq!(table_handle(&name), handle);
        // No pool wants NAT: removed, and found absent at the resync.
        let off = [pool("10.244.0.0/16", false)];
        assert!(r.reconcile(&off, at(241)).await.unwrap().is_ok());
        assert!(!nft_in(&name, "list tables").contains("felix"));
        assert!(r.reconcile(&off, at(301)).await.is_none());
    });
}
