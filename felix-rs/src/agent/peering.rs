//! Which BGP neighbours this node should have, from what the datastore
//! says (Calico's rules, as confd renders them for BIRD):
//!
//! - with `nodeToNodeMeshEnabled`, every other registered node, at its
//!   address, in its AS (the cluster's when it sets none);
//! - every `BGPPeer` that applies to this node (`node` is this node,
//!   `nodeSelector` selects it, or neither is set: a global peer), towards
//!   `peerIP`/`asNumber` or towards every node `peerSelector` selects;
//! - a route reflector (a node with `routeReflectorClusterID`) treats the
//!   nodes it peers with that are not in its cluster as RR clients.
//!
//! Dual stack (Calico's way, as its `bird6` does): IPv6 unicast has
//! sessions of its own between the nodes' IPv6 addresses, next to the IPv4
//! ones; a session's next hop is our address on it, so IPv6 routes go out
//! with our IPv6 address as next hop without any per-family next-hop
//! setting. An IPv6 session carries IPv6 prefixes only (import and export
//! filters), so an IPv4 block is never learned twice from one node.
//!
//! Pure: the agent diffs the result against the speaker's neighbours.

use super::resources::{BgpConfigurationSpec, BgpPeerSpec, FelixNode, SourceAddress};
use bgp::rib::PrefixList;
use bgp::speaker::NeighborConfig;
use ipam::selector::Selector;
use ipnet::{IpNet, Ipv6Net};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Import and export filter of an IPv6 session: IPv6 prefixes only (the
/// IPv4 ones travel on the IPv4 session to the same node).
pub fn ipv6_only() -> PrefixList {
    PrefixList::only_within([IpNet::V6(Ipv6Net::default())])
}

/// The neighbours to have, and what could not be honoured (bad selectors,
/// peers without an AS, settings the speaker cannot apply per peer).
#[derive(Debug, Default)]
pub struct PeeringPlan {
    pub neighbors: BTreeMap<IpAddr, NeighborConfig>,
    /// Human-readable, each naming the object it comes from.
    pub warnings: Vec<String>,
}

/// What the plan is computed from.
pub struct PeeringInputs<'a> {
    pub node_name: &'a str,
    pub node: &'a FelixNode,
    /// Every registered node, this one included.
    pub nodes: &'a BTreeMap<String, FelixNode>,
    pub bgp: &'a BgpConfigurationSpec,
    /// `BGPPeer`s by name.
    pub peers: &'a BTreeMap<String, BgpPeerSpec>,
}

/// Computes the neighbours (see the module doc).
pub fn plan(inputs: &PeeringInputs<'_>) -> PeeringPlan {
    let mut out = PeeringPlan::default();
    let me = inputs.node;
    let my_addr = me.address();
    let my_v6 = me.address_v6();
    let cluster_asn = inputs.bgp.asn();
    let port = inputs.bgp.port();
    let node_asn = |n: &FelixNode| n.bgp.as_number.unwrap_or(cluster_asn);
    // Our end of a session towards `address`: our address of its family
    // (`None` for an IPv6 peer when we have no IPv6 address: no session).
    let local_for = |address: IpAddr| match address {
        IpAddr::V4(_) => Some(my_addr),
        IpAddr::V6(_) => my_v6,
    };
    let add = |out: &mut PeeringPlan, address: IpAddr, asn: u32, target: Option<&FelixNode>| {
        let mut n = NeighborConfig::new(address, asn);
        n.port = port;
        n.local_address = local_for(address);
        if address.is_ipv6() {
            n.import = Some(ipv6_only());
            n.export = Some(ipv6_only());
        }
        let my_cluster = me.bgp.route_reflector_cluster_id;
        n.rr_client = my_cluster.is_some()
            && asn == node_asn(me)
            && target.is_some_and(|t| t.bgp.route_reflector_cluster_id != my_cluster);
        out.neighbors.insert(address, n);
    };
    // A node's session addresses: its IPv4 one, and its IPv6 one when both
    // ends are dual stack.
    let dual_stack = my_v6.is_some();
    let node_addresses = |n: &FelixNode| {
        let v6 = if dual_stack { n.address_v6() } else { None };
        std::iter::once(n.address()).chain(v6)
    };

    if inputs.bgp.mesh() {
        for (name, node) in inputs.nodes {
            if name == inputs.node_name || node.address() == my_addr {
                continue;
            }
            for address in node_addresses(node) {
                add(&mut out, address, node_asn(node), Some(node));
            }
        }
    }

    for (peer_name, peer) in inputs.peers {
        match applies_to_me(peer, inputs) {
            Ok(false) => continue,
            Ok(true) => {}
            Err(e) => {
                out.warnings.push(format!("BGPPeer {peer_name}: {e}"));
                continue;
            }
        }
        let mut targets: Vec<(IpAddr, u32, Option<&FelixNode>)> = Vec::new();
        match (&peer.peer_ip, &peer.peer_selector) {
            (Some(ip), None) => {
                let Some(asn) = peer.as_number else {
                    out.warnings.push(format!(
                        "BGPPeer {peer_name}: peerIP without asNumber; ignored"
                    ));
                    continue;
                };
                if local_for(*ip).is_none() {
                    out.warnings.push(format!(
                        "BGPPeer {peer_name}: peerIP {ip} is IPv6 and this node has no IPv6 address (node_address_v6); ignored"
                    ));
                    continue;
                }
                let node = inputs.nodes.values().find(|n| n.has_address(*ip));
                targets.push((*ip, asn, node));
            }
            (None, Some(selector)) => match peer_selector(selector) {
                Ok(sel) => {
                    for (name, node) in inputs.nodes {
                        if name != inputs.node_name && sel.matches(&node.labels) {
                            for address in node_addresses(node) {
                                targets.push((address, node_asn(node), Some(node)));
                            }
                        }
                    }
                }
                Err(e) => {
                    out.warnings.push(format!("BGPPeer {peer_name}: {e}"));
                    continue;
                }
            },
            _ => {
                out.warnings.push(format!(
                    "BGPPeer {peer_name}: exactly one of peerIP and peerSelector must be set; ignored"
                ));
                continue;
            }
        }
        if peer.max_restart_time.is_some() {
            out.warnings.push(format!(
                "BGPPeer {peer_name}: maxRestartTime is accepted but not applied \
                 (the speaker has no per-neighbour restart time yet)"
            ));
        }
        // Calico's ttlSecurity: GTSM with that many hops; 0 is off.
        let gtsm_hops = match peer.ttl_security {
            None | Some(0) => None,
            Some(255) => {
                out.warnings.push(format!(
                    "BGPPeer {peer_name}: ttlSecurity 255 leaves no TTL check (1..254 hops); not applied"
                ));
                None
            }
            Some(hops) => Some(hops),
        };
        for (address, asn, node) in targets {
            if me.has_address(address) {
                continue;
            }
            add(&mut out, address, asn, node);
            if let Some(n) = out.neighbors.get_mut(&address) {
                n.password = peer.password.clone();
                n.gtsm_hops = gtsm_hops;
                if peer.source_address == Some(SourceAddress::None) {
                    n.local_address = None;
                }
            }
        }
    }
    out
}

/// Parses a BGPPeer `nodeSelector`/`peerSelector`. An empty one is
/// refused rather than read as `all()`: on a BGPPeer, Calico treats an
/// empty selector as unset, and "unset" is already the `None` case.
fn peer_selector(text: &str) -> Result<Selector, String> {
    if text.trim().is_empty() {
        return Err(format!(
            "selector {text:?}: empty (leave the field out instead)"
        ));
    }
    Selector::parse(text).map_err(|e| e.to_string())
}

fn applies_to_me(peer: &BgpPeerSpec, inputs: &PeeringInputs<'_>) -> Result<bool, String> {
    match (&peer.node, &peer.node_selector) {
        (None, None) => Ok(true),
        (Some(node), None) => Ok(node == inputs.node_name),
        (None, Some(sel)) => Ok(peer_selector(sel)?.matches(&inputs.node.labels)),
        (Some(_), Some(_)) => Err("both node and nodeSelector set; ignored".to_string()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::agent::resources::NodeBgp;

    fn node(addr: &str, labels: &[(&str, &str)], cluster: Option<&str>) -> FelixNode {
        FelixNode {
            bgp: NodeBgp {
                ipv4_address: addr.parse().unwrap(),
                ipv6_address: None,
                as_number: None,
                route_reflector_cluster_id: cluster.map(|c| c.parse().unwrap()),
            },
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ipv4_vxlan_tunnel_addr: None,
            vxlan_tunnel_mac_addr: None,
            ipv4_ipip_tunnel_addr: None,
        }
    }

    fn nodes() -> BTreeMap<String, FelixNode> {
        [
            ("n1", node("10.0.0.1/24", &[("rack", "a")], None)),
            ("n2", node("10.0.0.2/24", &[("rack", "a")], None)),
            ("n3", node("10.0.0.3/24", &[("rack", "b")], None)),
            (
                "rr",
                node("10.0.0.9/24", &[("role", "rr")], Some("10.255.0.1")),
            ),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_string(), v))
        .collect()
    }

    fn run(
        me: &str,
        nodes: &BTreeMap<String, FelixNode>,
        bgp: &BgpConfigurationSpec,
        peers: &BTreeMap<String, BgpPeerSpec>,
    ) -> PeeringPlan {
        plan(&PeeringInputs {
            node_name: me,
            node: &nodes[me],
            nodes,
            bgp,
            peers,
        })
    }

    fn addrs(p: &PeeringPlan) -> Vec<String> {
        p.neighbors.keys().map(|a| a.to_string()).collect()
    }

    #[test]
    fn mesh_peers_with_every_other_node_from_the_node_address() {
        let p = run("n1", &nodes(), &Default::default(), &BTreeMap::new());
        assert_eq!(addrs(&p), ["10.0.0.2", "10.0.0.3", "10.0.0.9"]);
        let n = &p.neighbors[&"10.0.0.2".parse().unwrap()];
        assert_eq!(n.asn, 64512);
        assert_eq!(n.local_address, Some("10.0.0.1".parse().unwrap()));
        assert!(!n.rr_client);
        assert!(p.warnings.is_empty());
    }

    #[test]
    fn mesh_off_route_reflector_by_selector() {
        let bgp = BgpConfigurationSpec {
            node_to_node_mesh_enabled: Some(false),
            ..Default::default()
        };
        let peers: BTreeMap<_, _> = [
            (
                "to-rr".to_string(),
                BgpPeerSpec {
                    node_selector: Some("!has(role)".into()),
                    peer_selector: Some("role == 'rr'".into()),
                    ..Default::default()
                },
            ),
            (
                "rr-clients".to_string(),
                BgpPeerSpec {
                    node_selector: Some("role == 'rr'".into()),
                    peer_selector: Some("!has(role)".into()),
                    ..Default::default()
                },
            ),
        ]
        .into();
        let p = run("n2", &nodes(), &bgp, &peers);
        assert_eq!(addrs(&p), ["10.0.0.9"]);
        assert!(!p.neighbors[&"10.0.0.9".parse().unwrap()].rr_client);
        let rr = run("rr", &nodes(), &bgp, &peers);
        assert_eq!(addrs(&rr), ["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
        assert!(rr.neighbors.values().all(|n| n.rr_client));
    }

    #[test]
    fn explicit_peers_per_node_and_global_with_their_settings() {
        let bgp = BgpConfigurationSpec {
            node_to_node_mesh_enabled: Some(false),
            ..Default::default()
        };
        let peers: BTreeMap<_, _> = [
            (
                "tor-a".to_string(),
                BgpPeerSpec {
                    node_selector: Some("rack == 'a'".into()),
                    peer_ip: Some("10.0.0.254".parse().unwrap()),
                    as_number: Some(65000),
                    password: Some("k".into()),
                    source_address: Some(SourceAddress::None),
                    ..Default::default()
                },
            ),
            (
                "only-n3".to_string(),
                BgpPeerSpec {
                    node: Some("n3".into()),
                    peer_ip: Some("10.0.0.253".parse().unwrap()),
                    as_number: Some(65001),
                    ttl_security: Some(2),
                    ..Default::default()
                },
            ),
            (
                "global".to_string(),
                BgpPeerSpec {
                    peer_ip: Some("10.0.0.252".parse().unwrap()),
                    as_number: Some(65002),
                    max_restart_time: Some("60s".into()),
                    ..Default::default()
                },
            ),
        ]
        .into();
        let p1 = run("n1", &nodes(), &bgp, &peers);
        assert_eq!(addrs(&p1), ["10.0.0.252", "10.0.0.254"]);
        let tor = &p1.neighbors[&"10.0.0.254".parse().unwrap()];
        assert_eq!((tor.asn, tor.password.as_deref()), (65000, Some("k")));
        assert_eq!(tor.local_address, None);
        assert_eq!(p1.warnings.len(), 1, "{:?}", p1.warnings);
        assert!(p1.warnings[0].contains("global"));
        assert_eq!(tor.gtsm_hops, None);
        let p3 = run("n3", &nodes(), &bgp, &peers);
        assert_eq!(addrs(&p3), ["10.0.0.252", "10.0.0.253"]);
        // ttlSecurity: GTSM with that many hops.
        assert_eq!(
            p3.neighbors[&"10.0.0.253".parse().unwrap()].gtsm_hops,
            Some(2)
        );
    }

    #[test]
    fn malformed_peers_are_skipped_with_a_warning_naming_them() {
        let peers: BTreeMap<_, _> = [
            (
                "no-as".to_string(),
                BgpPeerSpec {
                    peer_ip: Some("10.9.9.9".parse().unwrap()),
                    ..Default::default()
                },
            ),
            (
                "bad-sel".to_string(),
                BgpPeerSpec {
                    peer_selector: Some("a == b".into()),
                    ..Default::default()
                },
            ),
            (
                "empty-sel".to_string(),
                BgpPeerSpec {
                    peer_selector: Some(" ".into()),
                    ..Default::default()
                },
            ),
            (
                "or-sel".to_string(),
                BgpPeerSpec {
                    node_selector: Some("rack == 'a' || rack == 'b'".into()),
                    peer_ip: Some("10.9.9.8".parse().unwrap()),
                    as_number: Some(65000),
                    ..Default::default()
                },
            ),
            ("neither".to_string(), BgpPeerSpec::default()),
        ]
        .into();
        let p = run("n1", &nodes(), &Default::default(), &peers);
        assert_eq!(
            p.neighbors.len(),
            3,
            "the mesh stays, no peer from a bad selector"
        );
        let w = p.warnings.join("\n");
        for name in ["no-as", "bad-sel", "empty-sel", "or-sel", "neither"] {
            assert!(w.contains(name), "{w}");
        }
    }

    fn dual(addr: &str, v6: &str) -> FelixNode {
        let mut n = node(addr, &[("rack", "a")], None);
        n.bgp.ipv6_address = Some(v6.parse().unwrap());
        n
    }

    #[test]
    fn dual_stack_nodes_mesh_over_both_families_ipv6_sessions_carry_ipv6_only() {
        let mut nodes = nodes();
        nodes.insert("n1".into(), dual("10.0.0.1/24", "fd00::1/64"));
        nodes.insert("n2".into(), dual("10.0.0.2/24", "fd00::2/64"));
        // n3 and rr are IPv4 only: one session each.
        let p = run("n1", &nodes, &Default::default(), &BTreeMap::new());
        assert_eq!(addrs(&p), ["10.0.0.2", "10.0.0.3", "10.0.0.9", "fd00::2"]);
        let v6 = &p.neighbors[&"fd00::2".parse().unwrap()];
        // Our IPv6 address is the session's source, hence the next hop of
        // the IPv6 routes we send on it.
        assert_eq!(v6.local_address, Some("fd00::1".parse().unwrap()));
        let filter = v6.export.as_ref().unwrap();
        assert!(filter.permits(&"fd00:10:244::/122".parse().unwrap()));
        assert!(!filter.permits(&"10.244.0.0/26".parse().unwrap()));
        assert_eq!(v6.import, v6.export);
        // The IPv4 session is as before: no filter.
        let v4 = &p.neighbors[&"10.0.0.2".parse().unwrap()];
        assert_eq!(v4.local_address, Some("10.0.0.1".parse().unwrap()));
        assert_eq!((&v4.import, &v4.export), (&None, &None));
        // An IPv4-only node does not peer with the others' IPv6 addresses.
        let p3 = run("n3", &nodes, &Default::default(), &BTreeMap::new());
        assert_eq!(addrs(&p3), ["10.0.0.1", "10.0.0.2", "10.0.0.9"]);
    }

    #[test]
    fn ipv6_bgp_peers_need_an_ipv6_node_address() {
        let mut nodes = nodes();
        nodes.insert("n1".into(), dual("10.0.0.1/24", "fd00::1/64"));
        let bgp = BgpConfigurationSpec {
            node_to_node_mesh_enabled: Some(false),
            ..Default::default()
        };
        let peers: BTreeMap<_, _> = [(
            "tor6".to_string(),
            BgpPeerSpec {
                peer_ip: Some("fd00::fe".parse().unwrap()),
                as_number: Some(65000),
                ..Default::default()
            },
        )]
        .into();
        let p1 = run("n1", &nodes, &bgp, &peers);
        assert_eq!(addrs(&p1), ["fd00::fe"]);
        let tor = &p1.neighbors[&"fd00::fe".parse().unwrap()];
        assert_eq!(tor.local_address, Some("fd00::1".parse().unwrap()));
        assert!(p1.warnings.is_empty(), "{:?}", p1.warnings);
        // n2 has no IPv6 address: the peer is named as not applied.
        let p2 = run("n2", &nodes, &bgp, &peers);
        assert!(p2.neighbors.is_empty());
        assert!(
            p2.warnings.len() == 1 && p2.warnings[0].contains("tor6"),
            "{:?}",
            p2.warnings
        );
    }
}
