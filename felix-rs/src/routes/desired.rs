//! The desired routing table: what felix wants the kernel FIB to hold.
//!
//! A [`DesiredRoutes`] maps each destination prefix to one [`DesiredRoute`]
//! (felix owns at most one route per prefix in the main table). Devices are
//! named, not indexed: the programmer resolves names to interface indexes at
//! reconcile time, so a veth that comes and goes keeps the same desired entry.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

/// One next hop of a routed (non-device) route.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NextHop {
    /// The gateway address; same family as the destination.
    pub gateway: IpAddr,
    /// The egress device; `None` lets the kernel pick it from the connected
    /// subnet that holds `gateway`.
    pub device: Option<String>,
    /// `onlink`: use `gateway` even though no connected subnet holds it (the
    /// tunnel case: the remote VTEP or node address sits behind the tunnel
    /// device).
    pub onlink: bool,
}

impl NextHop {
    /// A gateway on a directly connected subnet.
    pub fn gateway(gateway: IpAddr) -> Self {
        NextHop {
            gateway,
            device: None,
            onlink: false,
        }
    }

    /// A gateway reached through `device` regardless of its subnets (tunnels).
    pub fn onlink(gateway: IpAddr, device: impl Into<String>) -> Self {
        NextHop {
            gateway,
            device: Some(device.into()),
            onlink: true,
        }
    }

    /// A gateway reached through a named device on its connected subnet.
    pub fn via_device(gateway: IpAddr, device: impl Into<String>) -> Self {
        NextHop {
            gateway,
            device: Some(device.into()),
            onlink: false,
        }
    }
}

/// What a route does with a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteKind {
    /// Deliver straight to a device (a pod's host-side veth): `dev X scope
    /// link`, no gateway.
    Device(String),
    /// Drop (the local block's catch-all: addresses of the block that no pod
    /// holds must not leak to the default route).
    Blackhole,
    /// Forward via one gateway, or several (ECMP multipath) when more than one
    /// next hop is given.
    Via(Vec<NextHop>),
}

/// One route felix wants in the kernel (main table, felix's protocol).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredRoute {
    /// Destination prefix (host bits must be zero).
    pub destination: IpNet,
    /// What the route does.
    pub kind: RouteKind,
    /// Route MTU (`mtu` metric), set on tunnel routes so that TCP picks a
    /// segment size that fits after encapsulation.
    pub mtu: Option<u32>,
}

/// Why a desired route was refused before it reached the kernel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRoute {
    /// The prefix has host bits set (`10.0.0.1/24`); the kernel would refuse it.
    #[error("route {0}: host bits are set (did you mean {1}?)")]
    HostBitsSet(IpNet, IpNet),
    /// A routed route with no next hop.
    #[error("route {0}: no next hop given")]
    NoNextHop(IpNet),
    /// A gateway of the other address family than the destination.
    #[error("route {destination}: gateway {gateway} is not of the destination's address family")]
    FamilyMismatch {
        /// The route.
        destination: IpNet,
        /// The offending gateway.
        gateway: IpAddr,
    },
    /// An on-link next hop needs a device to be on-link on.
    #[error("route {destination}: on-link gateway {gateway} needs a device")]
    OnlinkWithoutDevice {
        /// The route.
        destination: IpNet,
        /// The offending gateway.
        gateway: IpAddr,
    },
    /// The same next hop listed twice.
    #[error("route {0}: a next hop is listed twice")]
    DuplicateNextHop(IpNet),
    /// An MTU below the IPv4 minimum (RFC 791: 68) or IPv6 minimum (RFC 8200: 1280).
    #[error("route {0}: MTU {1} is below the protocol minimum")]
    MtuTooSmall(IpNet, u32),
    /// An empty device name.
    #[error("route {0}: empty device name")]
    EmptyDevice(IpNet),
}

impl DesiredRoute {
    /// A pod route: `/32` or `/128` straight to the pod's host-side veth.
    pub fn pod(address: IpAddr, veth: impl Into<String>) -> Self {
        DesiredRoute {
            destination: IpNet::from(address),
            kind: RouteKind::Device(veth.into()),
            mtu: None,
        }
    }

    /// The blackhole route of a block this node holds the affinity for.
    pub fn blackhole(block: IpNet) -> Self {
        DesiredRoute {
            destination: block,
            kind: RouteKind::Blackhole,
            mtu: None,
        }
    }

    /// A remote block via a gateway on a directly connected subnet.
    pub fn via_gateway(block: IpNet, gateway: IpAddr) -> Self {
        DesiredRoute {
            destination: block,
            kind: RouteKind::Via(vec![NextHop::gateway(gateway)]),
            mtu: None,
        }
    }

    /// A remote block via several next hops (ECMP). One next hop gives a
    /// plain gateway route.
    pub fn multipath(block: IpNet, next_hops: Vec<NextHop>) -> Self {
        DesiredRoute {
            destination: block,
            kind: RouteKind::Via(next_hops),
            mtu: None,
        }
    }

    /// A remote block through a tunnel device, on-link via the remote tunnel
    /// end (VXLAN: the remote VTEP address; IPIP: the remote node address).
    pub fn tunnel(block: IpNet, remote: IpAddr, device: impl Into<String>, mtu: u32) -> Self {
        DesiredRoute {
            destination: block,
            kind: RouteKind::Via(vec![NextHop::onlink(remote, device)]),
            mtu: Some(mtu),
        }
    }

    /// Sets the route MTU.
    pub fn with_mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }

    /// Checks what the kernel would refuse or what felix cannot represent.
    pub fn validate(&self) -> Result<(), InvalidRoute> {
        let dst = self.destination;
        if dst.trunc() != dst {
            return Err(InvalidRoute::HostBitsSet(dst, dst.trunc()));
        }
        if let Some(mtu) = self.mtu {
            let min = if dst.addr().is_ipv4() { 68 } else { 1280 };
            if mtu < min {
                return Err(InvalidRoute::MtuTooSmall(dst, mtu));
            }
        }
        match &self.kind {
            RouteKind::Device(dev) if dev.is_empty() => Err(InvalidRoute::EmptyDevice(dst)),
            RouteKind::Device(_) | RouteKind::Blackhole => Ok(()),
            RouteKind::Via(hops) => {
                if hops.is_empty() {
                    return Err(InvalidRoute::NoNextHop(dst));
                }
                for hop in hops {
                    if hop.gateway.is_ipv4() != dst.addr().is_ipv4() {
                        return Err(InvalidRoute::FamilyMismatch {
                            destination: dst,
                            gateway: hop.gateway,
                        });
                    }
                    match &hop.device {
                        None if hop.onlink => {
                            return Err(InvalidRoute::OnlinkWithoutDevice {
                                destination: dst,
                                gateway: hop.gateway,
                            })
                        }
                        Some(d) if d.is_empty() => return Err(InvalidRoute::EmptyDevice(dst)),
                        _ => {}
                    }
                }
                let mut sorted: Vec<&NextHop> = hops.iter().collect();
                sorted.sort();
                if sorted.windows(2).any(|w| w[0] == w[1]) {
                    return Err(InvalidRoute::DuplicateNextHop(dst));
                }
                Ok(())
            }
        }
    }
}

/// The whole desired table, keyed by destination prefix.
///
/// Built by the node agent from its state (pods, local blocks, BGP best
/// paths) and handed to [`crate::routes::RouteProgrammer::set_desired`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredRoutes {
    routes: BTreeMap<IpNet, DesiredRoute>,
}

impl DesiredRoutes {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the route for its prefix, after validating it.
    pub fn insert(&mut self, route: DesiredRoute) -> Result<&mut Self, InvalidRoute> {
        route.validate()?;
        self.routes.insert(route.destination, route);
        Ok(self)
    }

    /// Builder form of [`insert`](Self::insert).
    pub fn with(mut self, route: DesiredRoute) -> Result<Self, InvalidRoute> {
        self.insert(route)?;
        Ok(self)
    }

    /// Adds a pod route (`/32` or `/128` to its veth).
    pub fn pod(&mut self, address: IpAddr, veth: &str) -> Result<&mut Self, InvalidRoute> {
        self.insert(DesiredRoute::pod(address, veth))
    }

    /// Adds a blackhole for a local block.
    pub fn blackhole(&mut self, block: IpNet) -> Result<&mut Self, InvalidRoute> {
        self.insert(DesiredRoute::blackhole(block))
    }

    /// Adds a remote block via a directly connected gateway.
    pub fn via_gateway(
        &mut self,
        block: IpNet,
        gateway: IpAddr,
    ) -> Result<&mut Self, InvalidRoute> {
        self.insert(DesiredRoute::via_gateway(block, gateway))
    }

    /// Adds a remote block over ECMP next hops.
    pub fn multipath(
        &mut self,
        block: IpNet,
        hops: Vec<NextHop>,
    ) -> Result<&mut Self, InvalidRoute> {
        self.insert(DesiredRoute::multipath(block, hops))
    }

    /// Removes the route for `destination`; returns it if there was one.
    pub fn remove(&mut self, destination: &IpNet) -> Option<DesiredRoute> {
        self.routes.remove(destination)
    }

    /// The route for `destination`.
    pub fn get(&self, destination: &IpNet) -> Option<&DesiredRoute> {
        self.routes.get(destination)
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// True when no route is desired.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The routes, in prefix order.
    pub fn iter(&self) -> impl Iterator<Item = &DesiredRoute> {
        self.routes.values()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn pod_routes_are_host_prefixes() {
        assert_eq!(
            DesiredRoute::pod(ip("10.0.0.5"), "fx1").destination,
            net("10.0.0.5/32")
        );
        assert_eq!(
            DesiredRoute::pod(ip("fd00::5"), "fx1").destination,
            net("fd00::5/128")
        );
    }

    #[test]
    fn validation_refuses_bad_routes() {
        let r = DesiredRoute::blackhole(net("10.0.0.1/26"));
        assert_eq!(
            r.validate(),
            Err(InvalidRoute::HostBitsSet(
                net("10.0.0.1/26"),
                net("10.0.0.0/26")
            ))
        );
        let r = DesiredRoute::multipath(net("10.0.0.0/26"), vec![]);
        assert_eq!(
            r.validate(),
            Err(InvalidRoute::NoNextHop(net("10.0.0.0/26")))
        );
        let r = DesiredRoute::via_gateway(net("10.0.0.0/26"), ip("fd00::1"));
        assert!(matches!(
            r.validate(),
            Err(InvalidRoute::FamilyMismatch { .. })
        ));
        let mut r = DesiredRoute::via_gateway(net("10.0.0.0/26"), ip("192.0.2.1"));
        r.kind = RouteKind::Via(vec![NextHop {
            gateway: ip("192.0.2.1"),
            device: None,
            onlink: true,
        }]);
        assert!(matches!(
            r.validate(),
            Err(InvalidRoute::OnlinkWithoutDevice { .. })
        ));
        let r = DesiredRoute::multipath(
            net("10.0.0.0/26"),
            vec![
                NextHop::gateway(ip("192.0.2.1")),
                NextHop::gateway(ip("192.0.2.1")),
            ],
        );
        assert_eq!(
            r.validate(),
            Err(InvalidRoute::DuplicateNextHop(net("10.0.0.0/26")))
        );
        let r = DesiredRoute::tunnel(net("fd00::/122"), ip("fd01::1"), "vx", 1000);
        assert_eq!(
            r.validate(),
            Err(InvalidRoute::MtuTooSmall(net("fd00::/122"), 1000))
        );
        let r = DesiredRoute::pod(ip("10.0.0.1"), "");
        assert_eq!(
            r.validate(),
            Err(InvalidRoute::EmptyDevice(net("10.0.0.1/32")))
        );
    }

    #[test]
    fn table_keeps_one_route_per_prefix_and_rejects_invalid() {
        let mut t = DesiredRoutes::new();
        t.pod(ip("10.0.0.5"), "fxa").unwrap();
        t.pod(ip("10.0.0.5"), "fxb").unwrap();
        t.blackhole(net("10.0.0.0/26")).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(
            t.get(&net("10.0.0.5/32")).unwrap().kind,
            RouteKind::Device("fxb".into())
        );
        assert!(t.blackhole(net("10.0.0.1/26")).is_err());
        assert_eq!(t.len(), 2, "a refused route leaves the table as it was");
        assert!(t.remove(&net("10.0.0.0/26")).is_some());
        assert_eq!(t.len(), 1);
    }
}
