//! What the kernel should hold for the routes BGP hands the agent, and for
//! the node's own blocks: the desired state the route programmer
//! converges the kernel to (ARCHITECTURE.md, principle 2).
//!
//! A remote block's next hop on one of this node's connected subnets is
//! forwarded to directly; a next hop elsewhere needs the pool's
//! encapsulation (VXLAN or IPIP, CrossSubnet or Always), and without one
//! it is still installed via the next hop (the underlay must route it).

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

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
    pub next_hops: Vec<IpAddr>,
    pub via: Via,
}

/// Everything the agent wants in the kernel besides pod routes (those are
/// the CNI plugin's).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredRoutes {
    /// Local blocks: a blackhole route each, so that an unallocated address
    /// of ours is not routed back out.
    pub blackholes: BTreeSet<IpNet>,
    pub remote: BTreeMap<IpNet, RemoteRoute>,
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

/// Chooses how to reach `next_hops` given whether they are on our subnet.
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
