//! The lab's ToR router (`--tor bird|gobgp|frr`): the real daemon in its
//! own namespace, eBGP (AS [`TOR_AS`]) to every node (AS [`CLUSTER_AS`]).
//!
//! This module writes each daemon's configuration, says how to start it
//! and how to read its RIB with the daemon's own CLI (`birdc`, `gobgp`,
//! `vtysh`), and parses that answer into prefix → next hops, so that the
//! lab's tests and `felix lab status` see what the ToR itself learned.

use super::plan::{NodePlan, Tor, UnderlayHost, CLUSTER_AS, TOR_AS};
use ipnet::Ipv4Net;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use thiserror::Error;

/// gobgpd's gRPC API port inside the ToR namespace (each namespace has
/// its own loopback, so a fixed port does not collide between labs).
pub const GOBGP_API_PORT: u16 = 50051;

/// FRR's bgpd binary (Debian's package puts the daemons here).
pub const FRR_BGPD: &str = "/usr/lib/frr/bgpd";

/// The ToR's RIB could not be read.
#[derive(Debug, Error)]
pub enum RibError {
    #[error("{command}: {message}")]
    Query { command: String, message: String },
    #[error("{command} answered something unreadable: {message}")]
    Parse { command: String, message: String },
}

/// The ToR's RIB: each IPv4 prefix and the next hops of its paths.
pub type TorRib = BTreeMap<Ipv4Net, Vec<Ipv4Addr>>;

/// BIRD 2: one eBGP protocol per node, everything imported and exported,
/// and the learned routes exported into the ToR namespace's kernel table
/// (so the ToR forwards to the pods). Short connect/error timers: a node
/// agent that starts after BIRD is connected to within a second
/// (RECIPES.md: BIRD's default error wait is 60 s).
pub fn bird_conf(tor: &UnderlayHost, nodes: &[NodePlan]) -> String {
    let mut c = format!(
        "router id {};\nprotocol device {{}}\nprotocol kernel {{ ipv4 {{ export all; }}; }}\n",
        tor.address
    );
    if tor.address_v6.is_some() {
        c.push_str("protocol kernel { ipv6 { export all; }; }\n");
    }
    for (i, n) in nodes.iter().enumerate() {
        // `node{i}`: protocol names must not be BIRD keywords.
        let _ = writeln!(
            c,
            "protocol bgp node{i} {{ local {} as {TOR_AS}; neighbor {} as {CLUSTER_AS}; \
             connect delay time 1; connect retry time 1; error wait time 1, 5; \
             ipv4 {{ import all; export all; }}; }}",
            tor.address, n.address
        );
        // Dual stack: a session of its own between the IPv6 addresses,
        // as the nodes peer with each other (docs/agent.md, "Dual stack").
        if let (Some(local), Some(node)) = (tor.address_v6, n.address_v6) {
            let _ = writeln!(
                c,
                "protocol bgp node{i}v6 {{ local {local} as {TOR_AS}; neighbor {node} as {CLUSTER_AS}; \
                 connect delay time 1; connect retry time 1; error wait time 1, 5; \
                 ipv6 {{ import all; export all; }}; }}"
            );
        }
    }
    c
}

/// GoBGP: one neighbour per node with a 1 s connect retry. GoBGP's
/// default policy accepts every route in both directions. It does not
/// program the kernel (no zebra): the routes are in its RIB only.
pub fn gobgp_conf(tor: &UnderlayHost, nodes: &[NodePlan]) -> String {
    let mut c = format!(
        "[global.config]\n  as = {TOR_AS}\n  router-id = \"{}\"\n  local-address-list = [\"{}\"]\n",
        tor.address, tor.address
    );
    for n in nodes {
        let _ = write!(
            c,
            "\n[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{}\"\n    \
             peer-as = {CLUSTER_AS}\n  [neighbors.timers.config]\n    connect-retry = 1\n  \
             [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      \
             afi-safi-name = \"ipv4-unicast\"\n",
            n.address
        );
    }
    c
}

/// FRR bgpd (run without zebra, RECIPES.md): `no bgp ebgp-requires-policy`
/// because FRR otherwise neither sends nor accepts eBGP routes (RFC 8212),
/// a 1 s connect timer per neighbour.
pub fn frr_conf(tor: &UnderlayHost, nodes: &[NodePlan], log: &Path) -> String {
    let mut c = format!(
        "frr defaults traditional\nhostname tor\nlog file {}\n!\nrouter bgp {TOR_AS}\n \
         bgp router-id {}\n no bgp ebgp-requires-policy\n no bgp network import-check\n",
        log.display(),
        tor.address
    );
    for n in nodes {
        let _ = writeln!(c, " neighbor {} remote-as {CLUSTER_AS}", n.address);
        let _ = writeln!(c, " neighbor {} timers connect 1", n.address);
    }
    c.push_str(" address-family ipv4 unicast\n");
    for n in nodes {
        let _ = writeln!(c, "  neighbor {} activate", n.address);
    }
    c.push_str(" exit-address-family\n!\n");
    c
}

/// The command (run inside the ToR namespace) that prints the ToR's RIB
/// in the form [`parse_rib`] reads. `dir` is the lab's state directory
/// (BIRD's control socket, FRR's vty sockets).
pub fn rib_command(tor: Tor, dir: &Path) -> Vec<String> {
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_string()).collect::<Vec<_>>();
    match tor {
        Tor::Bird => s(&[
            "birdc",
            "-s",
            &dir.join("bird.ctl").display().to_string(),
            "show",
            "route",
        ]),
        Tor::Gobgp => s(&[
            "gobgp",
            "-p",
            &GOBGP_API_PORT.to_string(),
            "global",
            "rib",
            "-a",
            "ipv4",
            "-j",
        ]),
        Tor::Frr => s(&[
            "vtysh",
            "--vty_socket",
            &dir.join("frr").display().to_string(),
            "-c",
            "show bgp ipv4 unicast json",
        ]),
    }
}

/// The command that prints the ToR's sessions, for people (`felix lab status`).
pub fn sessions_command(tor: Tor, dir: &Path) -> Vec<String> {
    let mut c = rib_command(tor, dir);
    match tor {
        Tor::Bird => {
            c.truncate(3);
            c.extend(["show".into(), "protocols".into()]);
        }
        Tor::Gobgp => {
            c.truncate(3);
            c.push("neighbor".into());
        }
        Tor::Frr => {
            c.truncate(4);
            c.push("show bgp summary".into());
        }
    }
    c
}

/// Reads the output of [`rib_command`] for `tor`.
pub fn parse_rib(tor: Tor, text: &str) -> Result<TorRib, RibError> {
    match tor {
        Tor::Bird => Ok(parse_bird(text)),
        Tor::Gobgp => parse_gobgp(text),
        Tor::Frr => parse_frr(text),
    }
}

/// `birdc show route`: a line starting with a prefix opens a route, each
/// `via ADDR on IF` line below it (up to the next prefix) is a next hop.
fn parse_bird(text: &str) -> TorRib {
    let mut rib = TorRib::new();
    let mut current: Option<Ipv4Net> = None;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if !line.starts_with(char::is_whitespace) {
            current = first.parse().ok();
            if let Some(p) = current {
                rib.entry(p).or_default();
            }
        } else if first == "via" {
            if let (Some(p), Some(hop)) = (current, words.next().and_then(|w| w.parse().ok())) {
                rib.entry(p).or_default().push(hop);
            }
        }
    }
    rib
}

/// Reads a JSON RIB: `routes` finds the map of prefix → paths in the
/// answer, `hops` the next hops of one path.
fn parse_json_rib(
    command: &str,
    text: &str,
    routes: impl Fn(&serde_json::Value) -> Option<&serde_json::Map<String, serde_json::Value>>,
    hops: impl Fn(&serde_json::Value) -> Vec<Ipv4Addr>,
) -> Result<TorRib, RibError> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| RibError::Parse {
        command: command.into(),
        message: e.to_string(),
    })?;
    let mut rib = TorRib::new();
    for (prefix, paths) in routes(&v).into_iter().flatten() {
        let Ok(p) = prefix.parse::<Ipv4Net>() else {
            continue;
        };
        let entry = rib.entry(p).or_default();
        for path in paths.as_array().into_iter().flatten() {
            entry.extend(hops(path));
        }
    }
    Ok(rib)
}

/// The addresses at `key` of the objects in `path[list]` that `keep`.
fn addresses(
    path: &serde_json::Value,
    list: &str,
    key: &str,
    keep: impl Fn(&serde_json::Value) -> bool,
) -> Vec<Ipv4Addr> {
    path[list]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| keep(o))
        .filter_map(|o| o[key].as_str()?.parse().ok())
        .collect()
}

/// `gobgp global rib -j`: `{"PREFIX": [{"attrs": [{"type": 3, "nexthop": "A"}, …]}, …]}`
/// (path attribute type 3 is NEXT_HOP, RFC 4271 §5.1.3).
fn parse_gobgp(text: &str) -> Result<TorRib, RibError> {
    parse_json_rib("gobgp", text, serde_json::Value::as_object, |path| {
        addresses(path, "attrs", "nexthop", |a| a["type"] == 3)
    })
}

/// `vtysh -c 'show bgp ipv4 unicast json'`:
/// `{"routes": {"PREFIX": [{"nexthops": [{"ip": "A"}]}, …]}}`.
fn parse_frr(text: &str) -> Result<TorRib, RibError> {
    parse_json_rib(
        "vtysh",
        text,
        |v| v["routes"].as_object(),
        |path| addresses(path, "nexthops", "ip", |_| true),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::lab::plan::{LabOptions, LabPlan};

    fn plan(tor: Tor) -> LabPlan {
        LabPlan::new(LabOptions {
            tor: Some(tor),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn bird_conf_has_one_ebgp_protocol_per_node() {
        let p = plan(Tor::Bird);
        let c = bird_conf(p.tor.as_ref().unwrap(), &p.nodes);
        assert!(c.starts_with("router id 10.0.0.253;"));
        for i in 1..=3 {
            assert!(c.contains(&format!("neighbor 10.0.0.{i} as 64512;")), "{c}");
        }
        assert_eq!(c.matches("local 10.0.0.253 as 65000;").count(), 3);
        assert!(!c.contains("ipv6"), "{c}");
        // Dual stack: an IPv6 session per node and IPv6 routes to the kernel.
        let p = LabPlan::new(LabOptions {
            tor: Some(Tor::Bird),
            dual_stack: true,
            ..Default::default()
        })
        .unwrap();
        let c = bird_conf(p.tor.as_ref().unwrap(), &p.nodes);
        for i in 1..=3 {
            assert!(
                c.contains(&format!(
                    "protocol bgp node{}v6 {{ local fd00::fd as 65000; neighbor fd00::{i} as 64512;",
                    i - 1
                )),
                "{c}"
            );
        }
        assert!(
            c.contains("protocol kernel { ipv6 { export all; }; }"),
            "{c}"
        );
        assert_eq!(c.matches("ipv6 { import all; export all; }").count(), 3);
    }

    #[test]
    fn gobgp_conf_is_toml_with_every_node() {
        let p = plan(Tor::Gobgp);
        let c = gobgp_conf(p.tor.as_ref().unwrap(), &p.nodes);
        let v: toml::Value = toml::from_str(&c).unwrap();
        assert_eq!(v["global"]["config"]["as"].as_integer(), Some(65000));
        let n = v["neighbors"].as_array().unwrap();
        assert_eq!(n.len(), 3);
        assert_eq!(
            n[1]["config"]["neighbor-address"].as_str(),
            Some("10.0.0.2")
        );
        assert_eq!(n[1]["config"]["peer-as"].as_integer(), Some(64512));
    }

    #[test]
    fn frr_conf_activates_every_node_without_ebgp_policy() {
        let p = plan(Tor::Frr);
        let c = frr_conf(p.tor.as_ref().unwrap(), &p.nodes, Path::new("/x/bgpd.log"));
        assert!(c.contains("router bgp 65000\n"));
        assert!(c.contains("no bgp ebgp-requires-policy"));
        for i in 1..=3 {
            assert!(c.contains(&format!(" neighbor 10.0.0.{i} remote-as 64512\n")));
            assert!(c.contains(&format!("  neighbor 10.0.0.{i} activate\n")));
        }
    }

    #[test]
    fn parses_birdc_show_route() {
        let text = [
            "BIRD 2.0.12 ready.",
            "Table master4:",
            "10.244.0.0/26        unicast [node0 19:50:01.123] * (100) [AS64512i]",
            "\tvia 10.0.0.1 on eth0",
            "10.244.0.64/26       unicast [node1 19:50:01.456] * (100) [AS64512i]",
            "\tvia 10.0.0.2 on eth0",
            "                     unicast [node2 19:50:02.000] (100) [AS64512i]",
            "\tvia 10.0.0.3 on eth0",
        ]
        .join("\n");
        let text = text.as_str();
        let rib = parse_rib(Tor::Bird, text).unwrap();
        assert_eq!(rib.len(), 2);
        assert_eq!(
            rib[&"10.244.0.0/26".parse().unwrap()],
            vec![Ipv4Addr::new(10, 0, 0, 1)]
        );
        assert_eq!(
            rib[&"10.244.0.64/26".parse().unwrap()],
            vec![Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3)]
        );
    }

    #[test]
    fn parses_gobgp_rib_json() {
        let text = r#"{"10.244.0.0/26":[{"nlri":{"prefix":"10.244.0.0/26"},"age":1,"best":true,
            "attrs":[{"type":1,"value":0},{"type":2,"as_paths":[{"segment_type":2,"num":1,"asns":[64512]}]},
            {"type":3,"nexthop":"10.0.0.1"}],"stale":false,"source-id":"10.0.0.1","neighbor-ip":"10.0.0.1"}]}"#;
        let rib = parse_rib(Tor::Gobgp, text).unwrap();
        assert_eq!(
            rib[&"10.244.0.0/26".parse().unwrap()],
            vec![Ipv4Addr::new(10, 0, 0, 1)]
        );
        assert!(parse_rib(Tor::Gobgp, "rpc error").is_err());
    }

    #[test]
    fn parses_frr_show_bgp_json() {
        let text = r#"{"vrfId": 0, "routerId": "10.0.0.253", "routes": {
            "10.244.0.64/26": [{"valid": true, "bestpath": true, "nexthops": [{"ip": "10.0.0.2", "afi": "ipv4", "used": true}]}]}}"#;
        let rib = parse_rib(Tor::Frr, text).unwrap();
        assert_eq!(
            rib[&"10.244.0.64/26".parse().unwrap()],
            vec![Ipv4Addr::new(10, 0, 0, 2)]
        );
    }

    #[test]
    fn session_commands_ask_the_same_daemon() {
        let dir = Path::new("/run/felix-lab/x");
        assert_eq!(
            sessions_command(Tor::Bird, dir),
            [
                "birdc",
                "-s",
                "/run/felix-lab/x/bird.ctl",
                "show",
                "protocols"
            ]
        );
        assert_eq!(
            sessions_command(Tor::Gobgp, dir),
            ["gobgp", "-p", "50051", "neighbor"]
        );
        assert_eq!(
            sessions_command(Tor::Frr, dir),
            [
                "vtysh",
                "--vty_socket",
                "/run/felix-lab/x/frr",
                "-c",
                "show bgp summary"
            ]
        );
    }
}
