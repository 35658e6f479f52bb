//! deploy/containerlab/: the lab's topologies as containerlab files. They
//! cannot be deployed here (containerlab needs a Docker daemon), so this
//! checks what can be checked without one: every file parses; every link
//! joins nodes that exist, each interface used once; every bind mount's
//! source exists; the nodes, addresses and peerings are the ones
//! `felix lab up` builds for the same options (its `LabPlan`); every felix
//! configuration is accepted by felix's own parsers; BIRD's configuration
//! is the one the lab writes; the scripts are valid shell.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use felix_rs::lab::plan::{LabOptions, LabPlan, Tor, CLUSTER_AS, TOR_AS};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClabFile {
    name: String,
    topology: Topology,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Topology {
    nodes: BTreeMap<String, ClabNode>,
    links: Vec<ClabLink>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClabNode {
    kind: String,
    image: Option<String>,
    entrypoint: Option<String>,
    cmd: Option<String>,
    #[serde(default)]
    binds: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClabLink {
    endpoints: [String; 2],
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/containerlab")
}

fn load(file: &str) -> ClabFile {
    let path = dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `SRC:DST[:ro]` → (SRC, DST).
fn bind(b: &str) -> (&str, &str) {
    let mut parts = b.split(':');
    let src = parts.next().unwrap();
    let dst = parts
        .next()
        .unwrap_or_else(|| panic!("bind {b:?} has no destination"));
    assert!(
        matches!(parts.next(), None | Some("ro" | "rw")),
        "bind {b:?}"
    );
    (src, dst)
}

/// The host file bound to `dst` in `node`, read.
fn bound_file(node: &ClabNode, dst: &str) -> Option<String> {
    node.binds
        .iter()
        .map(|b| bind(b))
        .find(|(_, d)| *d == dst)
        .map(|(src, _)| std::fs::read_to_string(dir().join(src)).unwrap())
}

/// The underlay address a node's `start.sh ADDRESS/LEN COMMAND…` gives eth1,
/// and the command it runs then.
fn started(name: &str, node: &ClabNode) -> (Ipv4Addr, String) {
    let cmd = node
        .cmd
        .as_deref()
        .unwrap_or_else(|| panic!("{name}: no cmd"));
    let at = cmd
        .find("/etc/felix/start.sh ")
        .unwrap_or_else(|| panic!("{name}: cmd does not run start.sh: {cmd}"));
    let rest = &cmd[at + "/etc/felix/start.sh ".len()..];
    let (addr, command) = rest.split_once(' ').unwrap();
    let (ip, len) = addr.split_once('/').unwrap();
    assert_eq!(len, "24", "{name}: {addr}");
    assert!(
        node.binds
            .iter()
            .any(|b| bind(b) == ("configs/start.sh", "/etc/felix/start.sh")),
        "{name}: start.sh not mounted"
    );
    (
        ip.parse().unwrap(),
        command.trim_end_matches('"').to_string(),
    )
}

/// The checks every topology gets; returns node name → address.
fn check_common(file: &str, clab: &ClabFile, plan: &LabPlan) -> BTreeMap<String, Ipv4Addr> {
    let t = &clab.topology;
    // Links: both ends exist, every (node, interface) once, every
    // non-bridge node attached by eth1 to the bridge.
    let bridges: BTreeSet<&str> = t
        .nodes
        .iter()
        .filter(|(_, n)| n.kind == "bridge")
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(bridges.len(), 1, "{file}: one underlay bridge");
    let mut used = BTreeSet::new();
    let mut attached = BTreeSet::new();
    for l in &t.links {
        for e in &l.endpoints {
            let (node, iface) = e.split_once(':').unwrap();
            assert!(
                t.nodes.contains_key(node),
                "{file}: link to unknown node {e}"
            );
            assert!(used.insert(e.clone()), "{file}: {e} used twice");
            assert!(iface.len() <= 15, "{file}: {e}");
        }
        let (a, ia) = l.endpoints[0].split_once(':').unwrap();
        let (b, _) = l.endpoints[1].split_once(':').unwrap();
        assert!(
            bridges.contains(b),
            "{file}: {a} is not linked to the bridge"
        );
        assert_eq!(ia, "eth1", "{file}: {a}");
        attached.insert(a.to_string());
    }
    // Binds: every source exists, except the shared datastore directory
    // (made by Docker at deploy time), which is the same for every node.
    let mut state_dirs = BTreeSet::new();
    for (name, n) in &t.nodes {
        if n.kind == "bridge" {
            continue;
        }
        assert_eq!(n.kind, "linux", "{file}: {name}");
        assert!(n.image.is_some(), "{file}: {name} has no image");
        assert_eq!(n.entrypoint.as_deref(), Some("/bin/sh"), "{file}: {name}");
        assert!(attached.contains(name), "{file}: {name} has no link");
        for b in &n.binds {
            let (src, dst) = bind(b);
            if dst == "/var/lib/felix" {
                state_dirs.insert(src.to_string());
                assert!(src.starts_with("state/"), "{file}: {b}");
            } else {
                assert!(dir().join(src).is_file(), "{file}: {name}: {src} missing");
            }
        }
    }
    assert!(
        state_dirs.len() <= 1,
        "{file}: nodes on different datastores"
    );
    // The nodes: the lab plan's names and addresses.
    let mut addresses = BTreeMap::new();
    for n in &plan.nodes {
        let node = t
            .nodes
            .get(&n.name)
            .unwrap_or_else(|| panic!("{file}: no {}", n.name));
        let (addr, command) = started(&n.name, node);
        assert_eq!(addr, n.address, "{file}: {}", n.name);
        assert_eq!(
            command, "felix node run --config /etc/felix/agent.toml",
            "{file}: {}",
            n.name
        );
        addresses.insert(n.name.clone(), addr);
        // The agent configuration, through felix's own parser.
        let text = bound_file(node, "/etc/felix/agent.toml")
            .unwrap_or_else(|| panic!("{file}: {}: no agent.toml", n.name));
        let agent = felix_rs::agent::config::parse_file(&text)
            .unwrap_or_else(|e| panic!("{file}: {}: {e}", n.name));
        assert_eq!(agent.node_name.as_deref(), Some(n.name.as_str()));
        assert_eq!(
            agent.node_address.map(|a| (a.addr(), a.prefix_len())),
            Some((n.address, n.prefix_len))
        );
        assert_eq!(
            agent.datastore.as_deref(),
            Some("sqlite:/var/lib/felix/felix.db")
        );
        assert_eq!(agent.bgp.as_number, Some(CLUSTER_AS));
        assert_eq!(
            agent.bgp.node_to_node_mesh_enabled,
            Some(plan.route_reflector.is_none()),
            "{file}: {}",
            n.name
        );
        let peers: BTreeSet<(IpAddr, u32)> = agent
            .bgp_peers
            .iter()
            .map(|p| (p.spec.peer_ip.unwrap(), p.spec.as_number.unwrap()))
            .collect();
        let mut want = BTreeSet::new();
        if let Some(rr) = &plan.route_reflector {
            want.insert((IpAddr::V4(rr.address), CLUSTER_AS));
        }
        if let Some(tor) = &plan.tor {
            want.insert((IpAddr::V4(tor.address), TOR_AS));
        }
        assert_eq!(peers, want, "{file}: {}", n.name);
    }
    let extra: BTreeSet<&str> = t
        .nodes
        .keys()
        .map(String::as_str)
        .filter(|k| !bridges.contains(k) && !addresses.contains_key(*k))
        .collect();
    let want_extra: BTreeSet<&str> = plan
        .route_reflector
        .iter()
        .map(|_| "rr")
        .chain(plan.tor.iter().map(|_| "tor"))
        .collect();
    assert_eq!(extra, want_extra, "{file}: nodes besides the felix nodes");
    // Every address on the underlay once.
    let mut all: Vec<Ipv4Addr> = addresses.values().copied().collect();
    for (name, n) in &t.nodes {
        if extra.contains(name.as_str()) {
            all.push(started(name, n).0);
        }
    }
    let count = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), count, "{file}: an address is used twice");
    addresses
}

#[test]
fn mesh_is_the_default_lab() {
    let clab = load("mesh.clab.yml");
    assert_eq!(clab.name, "felix-mesh");
    let plan = LabPlan::new(LabOptions::default()).unwrap();
    let nodes = check_common("mesh.clab.yml", &clab, &plan);
    assert_eq!(nodes.len(), 3);
}

#[test]
fn route_reflector_lab_has_five_clients_accepted_by_felix_bgp_run() {
    let clab = load("rr.clab.yml");
    let plan = LabPlan::new(LabOptions {
        nodes: 5,
        route_reflector: true,
        ..Default::default()
    })
    .unwrap();
    let nodes = check_common("rr.clab.yml", &clab, &plan);
    let rr = &clab.topology.nodes["rr"];
    let (addr, command) = started("rr", rr);
    assert_eq!(addr, plan.route_reflector.as_ref().unwrap().address);
    assert_eq!(command, "felix bgp run --config /etc/felix/rr.toml");
    // The reflector's file through `felix bgp run`'s own parser and checks.
    let text = bound_file(rr, "/etc/felix/rr.toml").unwrap();
    let file = felix_rs::bgp_run::parse_file_config(&text).unwrap();
    assert_eq!(file.asn, Some(CLUSTER_AS));
    assert_eq!(file.router_id, Some(addr));
    // Every node is accepted as a client (dynamic, from a listen range),
    // nothing else is configured.
    assert!(file.neighbors.is_empty(), "{:?}", file.neighbors);
    for (name, addr) in &nodes {
        let range = file
            .listen_ranges
            .iter()
            .find(|r| r.prefix.contains(&IpAddr::V4(*addr)))
            .unwrap_or_else(|| panic!("{name} ({addr}) is in no listen range"));
        let asn = felix_rs::bgp_run::FileRangeAsn::Number(CLUSTER_AS);
        assert!(range.rr_client && range.asn == asn, "{range:?}");
    }
    // And the whole configuration passes `felix bgp run`'s checks.
    let again = felix_rs::bgp_run::parse_file_config(&text).unwrap();
    felix_rs::bgp_run::RunPlan::merge(again, &Default::default()).unwrap();
}

#[test]
fn bird_tor_lab_uses_the_labs_bird_configuration() {
    let clab = load("tor-bird.clab.yml");
    let plan = LabPlan::new(LabOptions {
        tor: Some(Tor::Bird),
        ..Default::default()
    })
    .unwrap();
    check_common("tor-bird.clab.yml", &clab, &plan);
    let tor_node = &clab.topology.nodes["tor"];
    let tor = plan.tor.as_ref().unwrap();
    let (addr, command) = started("tor", tor_node);
    assert_eq!(addr, tor.address);
    assert!(
        command.starts_with("bird -f -c /etc/bird/bird.conf"),
        "{command}"
    );
    let text = bound_file(tor_node, "/etc/bird/bird.conf").unwrap();
    let without_comments: String = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        without_comments,
        felix_rs::lab::tor::bird_conf(tor, &plan.nodes)
    );
    // BIRD itself accepts it, where installed.
    match Command::new("bird")
        .args(["-p", "-c"])
        .arg(dir().join("configs/tor-bird/bird.conf"))
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "bird -p: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => println!("bird not installed: its parse check skipped"),
    }
}

#[test]
fn scripts_are_valid_shell_and_yaml_passes_yamllint() {
    for script in ["configs/start.sh", "configs/pods.sh"] {
        let out = Command::new("sh")
            .arg("-n")
            .arg(dir().join(script))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let files: Vec<PathBuf> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".clab.yml"))
        .collect();
    assert_eq!(files.len(), 3, "{files:?}");
    match Command::new("yamllint")
        .args([
            "--strict",
            "-d",
            "{extends: default, rules: {line-length: {max: 120}}}",
        ])
        .args(&files)
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "yamllint:\n{}",
            String::from_utf8_lossy(&out.stdout)
        ),
        Err(_) => println!("SKIPPED yamllint: not installed"),
    }
    // Every config file under configs/ is used by some topology.
    let mut bound = BTreeSet::new();
    for f in &files {
        let clab = load(f.file_name().unwrap().to_str().unwrap());
        for n in clab.topology.nodes.values() {
            for b in &n.binds {
                bound.insert(dir().join(bind(b).0));
            }
        }
    }
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut configs = Vec::new();
    walk(&dir().join("configs"), &mut configs);
    for c in configs {
        assert!(bound.contains(&c), "{} is mounted nowhere", c.display());
    }
}
