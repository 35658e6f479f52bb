//! `felix lab up --tor bird|gobgp|frr`: a ToR namespace running the real
//! daemon with eBGP (AS 65000) to every node (AS 64512). The ToR's own CLI
//! (`birdc`, `gobgp`, `vtysh`) shows every node's pod block with that node
//! as next hop, and the pods still reach each other. With BIRD the routes
//! are also in the ToR's kernel, so the ToR itself reaches every pod.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod lab_common;

use felix_rs::lab::build::{self, in_netns};
use felix_rs::lab::plan::{LabOptions, Tor};
use felix_rs::lab::state::state_dir;
use felix_rs::lab::tor;
use ipnet::{IpNet, Ipv4Net};
use lab_common::{established, wait_until, Lab};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

/// True (after printing SKIPPED) when `programs` are not all installed.
fn missing(programs: &[&str]) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for p in programs {
        let found = p.starts_with('/') && std::path::Path::new(p).exists()
            || std::env::split_paths(&path).any(|d| d.join(p).exists());
        if !found {
            println!("SKIPPED: {p} is not installed (scripts/test.sh installs it)");
            return true;
        }
    }
    false
}

/// Builds a 3-node lab with `kind` as ToR and checks what every ToR kind
/// must show; returns the lab for the daemon-specific checks.
fn tor_lab(tag: &str, kind: Tor) -> Lab {
    let lab = Lab::up(
        tag,
        LabOptions {
            tor: Some(kind),
            ..Default::default()
        },
    );
    // Each node: the mesh (two iBGP sessions) and the ToR (eBGP).
    let mut block_of: BTreeMap<Ipv4Net, Ipv4Addr> = BTreeMap::new();
    for i in 1..=3u8 {
        let node = format!("node-{i}");
        let s = lab.status(&node);
        let mut want: Vec<String> = (1..=3u8)
            .filter(|j| *j != i)
            .map(|j| format!("10.0.0.{j}"))
            .collect();
        want.push("10.0.0.253".into());
        want.sort();
        assert_eq!(established(&s), want, "{node}: {:?}", s.peers);
        let tor_peer = s
            .peers
            .iter()
            .find(|p| p.address.to_string() == "10.0.0.253");
        assert_eq!(tor_peer.unwrap().asn, 65000);
        assert_eq!(s.blocks.len(), 1, "{node}: {s:?}\n{}", lab.logs());
        let IpNet::V4(block) = s.blocks[0] else {
            panic!("{node}: IPv6 block {:?}", s.blocks)
        };
        block_of.insert(block, Ipv4Addr::new(10, 0, 0, i));
        // The ToR sends each node the other nodes' blocks back with AS
        // path 65000 64512: the node's own AS in it, so it is dropped
        // (RFC 4271 §9.1.2); the node keeps the direct mesh paths.
        for (prefix, r) in &s.routes {
            assert!(
                !r.next_hops.iter().any(|h| h.to_string() == "10.0.0.253"),
                "{node}: {prefix} via the ToR"
            );
        }
    }
    // The ToR's RIB, in the daemon's own words.
    let dir = state_dir(&lab.prefix);
    let command = tor::rib_command(kind, &dir);
    let ns = format!("{}-tor", lab.prefix);
    let text = || {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns])
            .args(&command)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let complete = wait_until(Duration::from_secs(15), || {
        let t = text();
        let Ok(rib) = tor::parse_rib(kind, &t) else {
            return false;
        };
        block_of.iter().all(|(block, node)| {
            t.contains(&block.to_string()) && rib.get(block).is_some_and(|h| h.contains(node))
        })
    });
    assert!(
        complete,
        "{kind:?} ToR RIB lacks a node block {block_of:?}:\n{}\n{}",
        text(),
        lab.logs()
    );
    // Only pod blocks: nothing else was announced to the ToR.
    let rib = build::tor_rib(&lab.prefix, kind).unwrap();
    assert_eq!(
        rib.keys().copied().collect::<Vec<_>>(),
        block_of.keys().copied().collect::<Vec<_>>()
    );
    lab.assert_full_ping_matrix();
    lab
}

#[test]
fn bird_tor_learns_every_block_and_reaches_every_pod() {
    if lab_common::skip() || missing(&["bird", "birdc"]) {
        return;
    }
    let lab = tor_lab("ftb", Tor::Bird);
    // BIRD exported the blocks into the ToR's kernel table...
    let ns = format!("{}-tor", lab.prefix);
    let out = Command::new("ip")
        .args(["-n", &ns, "route", "show", "proto", "bird"])
        .output()
        .unwrap();
    let kernel = String::from_utf8_lossy(&out.stdout);
    // (via the owning node, or via another node that re-advertised the
    // block with itself as next hop: BIRD picks either as best)
    for i in 1..=3 {
        let s = lab.status(&format!("node-{i}"));
        let block = s.blocks[0].to_string();
        let installed = kernel
            .lines()
            .any(|l| l.starts_with(&format!("{block} via 10.0.0.")) && l.contains(" dev eth0 "));
        assert!(installed, "no kernel route for {block} in\n{kernel}");
    }
    // ... so the ToR forwards to every pod (the reply comes back through
    // the node, which routes pod traffic to the underlay).
    for pod in &lab.state.pods {
        let addr = pod.address.clone();
        let answered = in_netns(&ns, move || {
            Command::new("ping")
                .args(["-c", "2", "-i", "0.3", "-W", "1", "-q", &addr])
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        })
        .unwrap();
        assert!(answered, "ToR cannot reach {} ({})", pod.name, pod.address);
    }
}

#[test]
fn gobgp_tor_learns_every_block() {
    if lab_common::skip() || missing(&["gobgpd", "gobgp"]) {
        return;
    }
    let lab = tor_lab("ftg", Tor::Gobgp);
    // GoBGP's neighbour table: three Established sessions.
    let out = Command::new("ip")
        .args(["netns", "exec", &format!("{}-tor", lab.prefix)])
        .args(["gobgp", "-p", &tor::GOBGP_API_PORT.to_string(), "neighbor"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("Establ").count(), 3, "{text}");
}

#[test]
fn frr_tor_learns_every_block() {
    if lab_common::skip() || missing(&[tor::FRR_BGPD, "vtysh"]) {
        return;
    }
    let lab = tor_lab("ftf", Tor::Frr);
    // FRR's summary: each neighbour has received one prefix (its block).
    let dir = state_dir(&lab.prefix);
    let out = Command::new("ip")
        .args(["netns", "exec", &format!("{}-tor", lab.prefix)])
        .args(["vtysh", "--vty_socket"])
        .arg(dir.join("frr"))
        .args(["-c", "show bgp ipv4 unicast summary json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let peers = v["peers"].as_object().unwrap();
    assert_eq!(peers.len(), 3, "{v}");
    // Each node sends at least its own block (also the blocks it learned
    // over the mesh, with itself as next hop: the speaker's eBGP export).
    for (addr, p) in peers {
        assert_eq!(p["state"], "Established", "{addr}: {p}");
        assert!(p["pfxRcd"].as_u64() >= Some(1), "{addr}: {p}");
    }
}
