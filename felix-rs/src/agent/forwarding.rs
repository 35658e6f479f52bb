//! What the kernel should hold for the routes BGP hands the agent, and for
//! the node's own blocks: the desired state the route programmer
//! converges the kernel to (ARCHITECTURE.md, principle 2).
//!
//! [`remote_route`] decides, purely from the pools, the registered nodes and
//! this node's subnet, how each learned block is forwarded (Calico's
//! `vxlanMode` / `ipipMode`): a next hop on this node's subnet is routed to
//! directly unless the pool says `Always`; one elsewhere goes through the
//! pool's tunnel when it has one (`CrossSubnet` or `Always`): over VXLAN
//! on-link via the remote node's VTEP address, over IPIP on-link via the
//! remote node's address; without a tunnel it is routed via the next hop
//! (the underlay must route it).

use super::resources::FelixNode;
use crate::tunnel::vxlan::VxlanPeer;
use ipam::pool::{EncapMode, IpPoolSpec};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

/// How a remote prefix is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// Straight to the next hop (same subnet, or routed underlay).
    Direct,
    /// Over the VXLAN device to the next hop's VTEP.
    Vxlan,
    /// Over `tunl0`, on-link via the next hop.
    Ipip,
}

/// One remote route: ECMP when several next hops.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteRoute {
    /// The BGP next hops (the nodes that originate the block).
    pub next_hops: Vec<IpAddr>,
    pub via: Via,
    /// What the kernel route goes via: the next hops (direct, IPIP) or the
    /// nodes' VTEP addresses (VXLAN). Empty when `pending`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<IpAddr>,
    /// Why the route cannot be programmed yet (a VTEP not registered yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
}

/// This node's VXLAN end, when a pool wants VXLAN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalVtep {
    /// The tunnel address (from IPAM) put on the device.
    pub address: Ipv4Addr,
    /// The device's MAC (registered for the other nodes).
    pub mac: [u8; 6],
}

/// The tunnel devices the node needs and their entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tunnels {
    /// The VXLAN device; `None`: no pool wants VXLAN (a device felix made
    /// earlier is removed).
    pub vxlan: Option<LocalVtep>,
    /// Every other node's VTEP: a static neighbour and FDB entry each.
    pub vxlan_peers: Vec<VxlanPeer>,
    /// `tunl0` with this tunnel address, when a pool wants IPIP.
    pub ipip: Option<Ipv4Addr>,
}

/// Everything the agent wants in the kernel besides pod routes (those are
/// the CNI plugin's).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredRoutes {
    /// Local blocks: a blackhole route each, so that an unallocated address
    /// of ours is not routed back out.
    pub blackholes: BTreeSet<IpNet>,
    pub remote: BTreeMap<IpNet, RemoteRoute>,
    /// The tunnels; `None` until the nodes and pools have been read (the
    /// devices and their entries are then left as they are, so a restart
    /// does not cut the overlay).
    #[serde(skip)]
    pub tunnels: Option<Tunnels>,
}

/// The encapsulation a pool asks for (Calico's `vxlanMode`/`ipipMode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Encapsulation {
    #[default]
    None,
    VxlanCrossSubnet,
    VxlanAlways,
    IpipCrossSubnet,
    IpipAlways,
}

/// A pool's modes as one [`Encapsulation`]; VXLAN wins when both are set
/// (the pool validation refuses such pools).
pub fn encapsulation_of(vxlan: EncapMode, ipip: EncapMode) -> Encapsulation {
    match (vxlan, ipip) {
        (EncapMode::Always, _) => Encapsulation::VxlanAlways,
        (EncapMode::CrossSubnet, _) => Encapsulation::VxlanCrossSubnet,
        (EncapMode::Never, EncapMode::Always) => Encapsulation::IpipAlways,
        (EncapMode::Never, EncapMode::CrossSubnet) => Encapsulation::IpipCrossSubnet,
        (EncapMode::Never, EncapMode::Never) => Encapsulation::None,
    }
}

/// The encapsulation of the pool holding `prefix` (none when no pool does).
pub fn encapsulation_for<'a>(
    prefix: IpNet,
    pools: impl IntoIterator<Item = &'a IpPoolSpec>,
) -> Encapsulation {
    pools
        .into_iter()
        .find(|p| p.cidr.contains(&prefix))
        .map(|p| encapsulation_of(p.vxlan_mode, p.ipip_mode))
        .unwrap_or_default()
}

/// Chooses how to reach `next_hops` given whether they are on our subnet:
/// `CrossSubnet` tunnels the whole route when any next hop is off-subnet
/// (one MTU per route).
pub fn via(encap: Encapsulation, next_hops: &[IpAddr], on_link: impl Fn(IpAddr) -> bool) -> Via {
    let all_local = next_hops.iter().all(|h| on_link(*h));
    match encap {
        Encapsulation::None => Via::Direct,
        Encapsulation::VxlanAlways => Via::Vxlan,
        Encapsulation::IpipAlways => Via::Ipip,
        Encapsulation::VxlanCrossSubnet if all_local => Via::Direct,
        Encapsulation::VxlanCrossSubnet => Via::Vxlan,
        Encapsulation::IpipCrossSubnet if all_local => Via::Direct,
        Encapsulation::IpipCrossSubnet => Via::Ipip,
    }
}

/// What [`remote_route`] decides from.
pub struct Topology<'a> {
    /// This node as registered (its subnet, its own tunnel addresses).
    pub me: &'a FelixNode,
    /// Every registered node, by name (ours included or not).
    pub nodes: &'a BTreeMap<String, FelixNode>,
    /// The IP pools (their encapsulation modes).
    pub pools: &'a [IpPoolSpec],
}

impl Topology<'_> {
    /// The registered node whose address is `next_hop`.
    fn node_at(&self, next_hop: IpAddr) -> Option<(&str, &FelixNode)> {
        self.nodes
            .iter()
            .find(|(_, n)| n.has_address(next_hop))
            .map(|(name, n)| (name.as_str(), n))
    }
}

/// How the learned block `prefix` with BGP `next_hops` is forwarded. A
/// tunnel route that cannot be built yet (this node or the next hop's node
/// has no tunnel address registered, the next hop is no node) or not at
/// all (an IPv6 block whose pool tunnels it: no VXLAN/IPIP for IPv6 yet)
/// comes back with `pending` saying why and no gateways. IPv6 blocks are
/// otherwise routed like IPv4 ones: `via` the next hops (the owners' IPv6
/// addresses), "on our subnet" meaning on this node's IPv6 subnet.
pub fn remote_route(prefix: IpNet, next_hops: &[IpAddr], topo: &Topology<'_>) -> RemoteRoute {
    let encap = encapsulation_for(prefix, topo.pools);
    let via = via(encap, next_hops, |h| topo.me.same_subnet(h));
    let gateways = match via {
        Via::Direct => Ok(next_hops.to_vec()),
        Via::Vxlan => vxlan_gateways(prefix, next_hops, topo),
        Via::Ipip => ipip_gateways(prefix, next_hops, topo),
    };
    let (gateways, pending) = match gateways {
        Ok(g) => (g, None),
        Err(why) => (Vec::new(), Some(why)),
    };
    RemoteRoute {
        next_hops: next_hops.to_vec(),
        via,
        gateways,
        pending,
    }
}

fn vxlan_gateways(
    prefix: IpNet,
    next_hops: &[IpAddr],
    topo: &Topology<'_>,
) -> Result<Vec<IpAddr>, String> {
    if prefix.addr().is_ipv6() {
        return Err("VXLAN for IPv6 pools is not built".into());
    }
    if topo.me.vtep().is_none() {
        return Err("this node has no VXLAN tunnel address yet".into());
    }
    next_hops
        .iter()
        .map(|hop| {
            let (name, node) = topo
                .node_at(*hop)
                .ok_or_else(|| format!("next hop {hop} is no registered node (no VTEP)"))?;
            node.vtep()
                .map(|v| IpAddr::V4(v.vtep_address))
                .ok_or_else(|| format!("node {name} has no VTEP registered yet"))
        })
        .collect()
}

fn ipip_gateways(
    prefix: IpNet,
    next_hops: &[IpAddr],
    topo: &Topology<'_>,
) -> Result<Vec<IpAddr>, String> {
    if prefix.addr().is_ipv6() || next_hops.iter().any(IpAddr::is_ipv6) {
        return Err("IPIP carries IPv4 only".into());
    }
    if topo.me.ipv4_ipip_tunnel_addr.is_none() {
        return Err("this node has no IPIP tunnel address yet".into());
    }
    Ok(next_hops.to_vec())
}

/// The VTEPs of every node but `me_name` that registered one: a static
/// neighbour and FDB entry each on the VXLAN device (Calico programs every
/// remote VTEP, also those on this subnet).
pub fn vxlan_peers(me_name: &str, nodes: &BTreeMap<String, FelixNode>) -> Vec<VxlanPeer> {
    nodes
        .iter()
        .filter(|(name, _)| name.as_str() != me_name)
        .filter_map(|(_, n)| n.vtep())
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::agent::resources::{format_mac, NodeBgp};

    #[test]
    fn cross_subnet_encapsulates_only_off_subnet_next_hops() {
        let local = |a: IpAddr| a.to_string().starts_with("10.0.0.");
        let here: Vec<IpAddr> = vec![[10, 0, 0, 2].into()];
        let there: Vec<IpAddr> = vec![[10, 0, 1, 2].into()];
        let mixed: Vec<IpAddr> = vec![[10, 0, 0, 2].into(), [10, 0, 1, 2].into()];
        use Encapsulation::*;
        assert_eq!(via(VxlanCrossSubnet, &here, local), Via::Direct);
        assert_eq!(via(VxlanCrossSubnet, &there, local), Via::Vxlan);
        assert_eq!(via(VxlanCrossSubnet, &mixed, local), Via::Vxlan);
        assert_eq!(via(IpipCrossSubnet, &there, local), Via::Ipip);
        assert_eq!(via(VxlanAlways, &here, local), Via::Vxlan);
        assert_eq!(via(IpipAlways, &here, local), Via::Ipip);
        assert_eq!(via(None, &there, local), Via::Direct);
    }

    #[test]
    fn pool_modes_map_to_one_encapsulation() {
        use EncapMode::*;
        assert_eq!(encapsulation_of(Never, Never), Encapsulation::None);
        assert_eq!(
            encapsulation_of(CrossSubnet, Never),
            Encapsulation::VxlanCrossSubnet
        );
        assert_eq!(encapsulation_of(Always, Never), Encapsulation::VxlanAlways);
        assert_eq!(
            encapsulation_of(Never, CrossSubnet),
            Encapsulation::IpipCrossSubnet
        );
        assert_eq!(encapsulation_of(Never, Always), Encapsulation::IpipAlways);
    }

    fn node(addr: &str, vtep: Option<(&str, [u8; 6])>, ipip: Option<&str>) -> FelixNode {
        FelixNode {
            bgp: NodeBgp {
                ipv4_address: addr.parse().unwrap(),
                ipv6_address: None,
                as_number: None,
                route_reflector_cluster_id: None,
            },
            labels: BTreeMap::new(),
            ipv4_vxlan_tunnel_addr: vtep.map(|v| v.0.parse().unwrap()),
            vxlan_tunnel_mac_addr: vtep.map(|v| format_mac(v.1)),
            ipv4_ipip_tunnel_addr: ipip.map(|a| a.parse().unwrap()),
        }
    }

    fn pool(cidr: &str, vxlan: EncapMode, ipip: EncapMode) -> IpPoolSpec {
        let mut p = IpPoolSpec::new(cidr.parse().unwrap());
        p.vxlan_mode = vxlan;
        p.ipip_mode = ipip;
        p
    }

    const MAC2: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
    const MAC3: [u8; 6] = [0x02, 0, 0, 0, 0, 3];

    /// node-1 10.0.0.1/24 (us), node-2 10.0.0.2 (same subnet), node-3
    /// 10.0.1.3 (other subnet); every node with a VTEP.
    fn cluster() -> (FelixNode, BTreeMap<String, FelixNode>) {
        let me = node(
            "10.0.0.1/24",
            Some(("10.244.0.0", [0x02, 0, 0, 0, 0, 1])),
            Some("10.244.0.1"),
        );
        let nodes: BTreeMap<String, FelixNode> = [
            ("node-1".to_string(), me.clone()),
            (
                "node-2".to_string(),
                node("10.0.0.2/24", Some(("10.244.0.64", MAC2)), None),
            ),
            (
                "node-3".to_string(),
                node("10.0.1.3/24", Some(("10.244.0.128", MAC3)), None),
            ),
        ]
        .into();
        (me, nodes)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn route_kind_per_learned_block_follows_pool_mode_and_subnet() {
        let (me, nodes) = cluster();
        let block2: IpNet = "10.244.0.64/26".parse().unwrap();
        let block3: IpNet = "10.244.0.128/26".parse().unwrap();
        let decide = |pools: &[IpPoolSpec], block, hop: &str| {
            remote_route(
                block,
                &[ip(hop)],
                &Topology {
                    me: &me,
                    nodes: &nodes,
                    pools,
                },
            )
        };
        use EncapMode::*;
        // CrossSubnet: the same-subnet node directly, the other over VXLAN
        // via its VTEP.
        let cross = [pool("10.244.0.0/16", CrossSubnet, Never)];
        let r = decide(&cross, block2, "10.0.0.2");
        assert_eq!(
            (r.via, r.gateways.clone()),
            (Via::Direct, vec![ip("10.0.0.2")])
        );
        let r = decide(&cross, block3, "10.0.1.3");
        assert_eq!(
            (r.via, r.gateways.clone()),
            (Via::Vxlan, vec![ip("10.244.0.128")])
        );
        assert_eq!(r.pending, None);
        // Always: both over VXLAN.
        let always = [pool("10.244.0.0/16", Always, Never)];
        let r = decide(&always, block2, "10.0.0.2");
        assert_eq!((r.via, r.gateways), (Via::Vxlan, vec![ip("10.244.0.64")]));
        // Never: both directly (the underlay must route the other subnet).
        let never = [pool("10.244.0.0/16", Never, Never)];
        let r = decide(&never, block3, "10.0.1.3");
        assert_eq!((r.via, r.gateways), (Via::Direct, vec![ip("10.0.1.3")]));
        // A block in no pool: directly.
        let r = decide(&cross, "10.99.0.0/26".parse().unwrap(), "10.0.1.3");
        assert_eq!(r.via, Via::Direct);
        // IPIP CrossSubnet: on-link via the node address.
        let ipip = [pool("10.244.0.0/16", Never, CrossSubnet)];
        let r = decide(&ipip, block3, "10.0.1.3");
        assert_eq!((r.via, r.gateways), (Via::Ipip, vec![ip("10.0.1.3")]));
        let r = decide(&ipip, block2, "10.0.0.2");
        assert_eq!(r.via, Via::Direct);
    }

    #[test]
    fn tunnel_routes_wait_for_the_vteps() {
        let (mut me, mut nodes) = cluster();
        let block3: IpNet = "10.244.0.128/26".parse().unwrap();
        let pools = [pool("10.244.0.0/16", EncapMode::Always, EncapMode::Never)];
        // node-3 not registered with a VTEP yet.
        nodes.get_mut("node-3").unwrap().ipv4_vxlan_tunnel_addr = None;
        let topo = Topology {
            me: &me,
            nodes: &nodes,
            pools: &pools,
        };
        let r = remote_route(block3, &[ip("10.0.1.3")], &topo);
        assert_eq!(r.via, Via::Vxlan);
        assert!(r.gateways.is_empty());
        assert!(r.pending.unwrap().contains("node-3"));
        // A next hop that is no node (a ToR) cannot be tunnelled to.
        let r = remote_route(block3, &[ip("10.0.1.200")], &topo);
        assert!(r.pending.unwrap().contains("10.0.1.200"));
        // We have no VTEP ourselves.
        me.ipv4_vxlan_tunnel_addr = None;
        let topo = Topology {
            me: &me,
            nodes: &nodes,
            pools: &pools,
        };
        let r = remote_route("10.244.0.64/26".parse().unwrap(), &[ip("10.0.0.2")], &topo);
        assert!(r.pending.unwrap().contains("this node"));
        // IPIP needs our IPIP tunnel address.
        let ipip = [pool("10.244.0.0/16", EncapMode::Never, EncapMode::Always)];
        me.ipv4_ipip_tunnel_addr = None;
        let topo = Topology {
            me: &me,
            nodes: &nodes,
            pools: &ipip,
        };
        let r = remote_route(block3, &[ip("10.0.1.3")], &topo);
        assert_eq!(r.via, Via::Ipip);
        assert!(r.pending.is_some());
    }

    #[test]
    fn ecmp_over_vxlan_goes_to_each_nodes_vtep() {
        let (me, nodes) = cluster();
        let pools = [pool(
            "10.244.0.0/16",
            EncapMode::CrossSubnet,
            EncapMode::Never,
        )];
        let topo = Topology {
            me: &me,
            nodes: &nodes,
            pools: &pools,
        };
        // One hop off-subnet: the whole route tunnels (one MTU per route).
        let r = remote_route(
            "10.244.9.0/26".parse().unwrap(),
            &[ip("10.0.0.2"), ip("10.0.1.3")],
            &topo,
        );
        assert_eq!(r.via, Via::Vxlan);
        assert_eq!(r.gateways, [ip("10.244.0.64"), ip("10.244.0.128")]);
    }

    #[test]
    fn peers_are_every_other_node_with_a_vtep() {
        let (_, mut nodes) = cluster();
        nodes.insert("node-4".into(), node("10.0.1.4/24", None, None));
        let peers = vxlan_peers("node-1", &nodes);
        assert_eq!(
            peers,
            [
                VxlanPeer {
                    vtep_address: "10.244.0.64".parse().unwrap(),
                    vtep_mac: MAC2,
                    node_address: "10.0.0.2".parse().unwrap(),
                },
                VxlanPeer {
                    vtep_address: "10.244.0.128".parse().unwrap(),
                    vtep_mac: MAC3,
                    node_address: "10.0.1.3".parse().unwrap(),
                }
            ]
        );
    }

    /// node-1 and node-2 dual stack on fd00::/64, node-3 on fd00:0:0:1::/64.
    fn dual_cluster() -> (FelixNode, BTreeMap<String, FelixNode>) {
        let (_, mut nodes) = cluster();
        for (name, v6) in [
            ("node-1", "fd00::1/64"),
            ("node-2", "fd00::2/64"),
            ("node-3", "fd00:0:0:1::3/64"),
        ] {
            nodes.get_mut(name).unwrap().bgp.ipv6_address = Some(v6.parse().unwrap());
        }
        (nodes["node-1"].clone(), nodes)
    }

    #[test]
    fn ipv6_blocks_route_via_the_owners_ipv6_address_and_never_tunnel() {
        let (me, nodes) = dual_cluster();
        let block2: IpNet = "fd00:10:244::40/122".parse().unwrap();
        let block3: IpNet = "fd00:10:244::80/122".parse().unwrap();
        let decide = |pools: &[IpPoolSpec], block, hops: &[&str]| {
            let hops: Vec<IpAddr> = hops.iter().map(|h| ip(h)).collect();
            remote_route(
                block,
                &hops,
                &Topology {
                    me: &me,
                    nodes: &nodes,
                    pools,
                },
            )
        };
        use EncapMode::*;
        let v6_pool = [pool("fd00:10:244::/48", Never, Never)];
        // On our IPv6 subnet: via the next hop.
        let r = decide(&v6_pool, block2, &["fd00::2"]);
        assert_eq!(
            (r.via, r.gateways, r.pending),
            (Via::Direct, vec![ip("fd00::2")], None)
        );
        // ECMP: both next hops.
        let r = decide(&v6_pool, block2, &["fd00::2", "fd00::3"]);
        assert_eq!(r.gateways, [ip("fd00::2"), ip("fd00::3")]);
        // Off-subnet without a tunnel: via the next hop (the underlay routes).
        let r = decide(&v6_pool, block3, &["fd00:0:0:1::3"]);
        assert_eq!(
            (r.via, r.gateways),
            (Via::Direct, vec![ip("fd00:0:0:1::3")])
        );
        // A CrossSubnet pool: on our IPv6 subnet directly (same_subnet is
        // per family), across subnets not programmed, saying why.
        let cross = [pool("fd00:10:244::/48", CrossSubnet, Never)];
        let r = decide(&cross, block2, &["fd00::2"]);
        assert_eq!((r.via, r.pending), (Via::Direct, None));
        let r = decide(&cross, block3, &["fd00:0:0:1::3"]);
        assert_eq!(r.via, Via::Vxlan);
        assert!(r.gateways.is_empty());
        assert!(r.pending.unwrap().contains("IPv6"));
        let ipip = [pool("fd00:10:244::/48", Never, Always)];
        let r = decide(&ipip, block2, &["fd00::2"]);
        assert!(r.pending.unwrap().contains("IPv4 only"));
        // An IPv4 block in the same cluster is unaffected.
        let v4 = [pool("10.244.0.0/16", CrossSubnet, Never)];
        let r = decide(&v4, "10.244.0.64/26".parse().unwrap(), &["10.0.0.2"]);
        assert_eq!((r.via, r.gateways), (Via::Direct, vec![ip("10.0.0.2")]));
    }

    #[test]
    fn same_subnet_is_per_family() {
        let (me, _) = dual_cluster();
        assert!(me.same_subnet(ip("fd00::99")));
        assert!(!me.same_subnet(ip("fd00:0:0:1::3")));
        assert!(me.same_subnet(ip("10.0.0.7")));
        assert!(!me.same_subnet(ip("10.0.1.7")));
        // An IPv4-only node has no IPv6 subnet.
        let (v4_only, _) = cluster();
        assert!(!v4_only.same_subnet(ip("fd00::99")));
        assert!(v4_only.has_address(ip("10.0.0.1")));
        assert!(me.has_address(ip("fd00::1")) && !v4_only.has_address(ip("fd00::1")));
    }
}
