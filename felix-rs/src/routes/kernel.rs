//! Translation between felix's routes and rtnetlink route messages
//! (`RTM_NEWROUTE` / `RTM_DELROUTE`, rtnetlink(7)), and the comparison that
//! decides whether a kernel route already is what felix wants.
//!
//! Pure functions: no socket, so every message felix sends is unit-tested.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use rtnetlink::packet_core::{
    NetlinkMessage, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteMetric, RouteNextHop,
    RouteNextHopFlags, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};

use super::desired::{DesiredRoute, RouteKind};
use super::{RouteError, FELIX_ROUTE_PROTOCOL};

/// The kernel's default metric for IPv6 routes added without one
/// (`IP6_RT_PRIO_USER`); IPv4 routes default to 0.
const IPV6_DEFAULT_PRIORITY: u32 = 1024;

/// One next hop with its device resolved to an interface index.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct KernelHop {
    pub gateway: IpAddr,
    /// `None`: any device (the kernel picks the one of the connected subnet).
    pub ifindex: Option<u32>,
    pub onlink: bool,
}

/// What a route does, with devices resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KernelTarget {
    Device(u32),
    Blackhole,
    /// Sorted by gateway, so that two routes with the same set of next hops
    /// compare equal whatever order they were given or dumped in.
    Via(Vec<KernelHop>),
}

/// A route as felix writes it or reads it back from a dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KernelRoute {
    pub destination: IpNet,
    pub target: KernelTarget,
    pub mtu: Option<u32>,
    pub priority: u32,
}

fn default_priority(dst: &IpNet) -> u32 {
    if dst.addr().is_ipv4() {
        0
    } else {
        IPV6_DEFAULT_PRIORITY
    }
}

impl KernelRoute {
    /// Resolves a desired route's device names against `links` (name ->
    /// ifindex). A missing device is an error for this route only.
    pub fn resolve(
        route: &DesiredRoute,
        links: &HashMap<String, u32>,
    ) -> Result<KernelRoute, RouteError> {
        let lookup = |name: &str| {
            links
                .get(name)
                .copied()
                .ok_or_else(|| RouteError::DeviceNotFound {
                    route: route.destination,
                    device: name.to_string(),
                })
        };
        let target = match &route.kind {
            RouteKind::Device(name) => KernelTarget::Device(lookup(name)?),
            RouteKind::Blackhole => KernelTarget::Blackhole,
            RouteKind::Via(hops) => {
                let mut resolved = Vec::with_capacity(hops.len());
                for hop in hops {
                    resolved.push(KernelHop {
                        gateway: hop.gateway,
                        ifindex: hop.device.as_deref().map(lookup).transpose()?,
                        onlink: hop.onlink,
                    });
                }
                resolved.sort();
                KernelTarget::Via(resolved)
            }
        };
        Ok(KernelRoute {
            destination: route.destination,
            target,
            mtu: route.mtu,
            priority: default_priority(&route.destination),
        })
    }

    /// Whether this kernel route already does what `desired` asks: same
    /// target, MTU and metric. A desired next hop without a device matches
    /// whatever device the kernel chose for it.
    pub fn satisfies(&self, desired: &KernelRoute) -> bool {
        if self.destination != desired.destination
            || self.mtu != desired.mtu
            || self.priority != desired.priority
        {
            return false;
        }
        match (&self.target, &desired.target) {
            (KernelTarget::Device(a), KernelTarget::Device(b)) => a == b,
            (KernelTarget::Blackhole, KernelTarget::Blackhole) => true,
            (KernelTarget::Via(have), KernelTarget::Via(want)) => {
                have.len() == want.len()
                    && have.iter().zip(want).all(|(h, w)| {
                        h.gateway == w.gateway
                            && h.onlink == w.onlink
                            && (w.ifindex.is_none() || h.ifindex == w.ifindex)
                    })
            }
            _ => false,
        }
    }

    /// The `RTM_NEWROUTE` body for this route, owned by felix's protocol, in
    /// the main table.
    pub fn to_message(&self) -> RouteMessage {
        let dst = self.destination;
        let mut msg = RouteMessage::default();
        msg.header.address_family = family(&dst);
        msg.header.destination_prefix_length = dst.prefix_len();
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::from(FELIX_ROUTE_PROTOCOL);
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::Unicast;
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst.addr())));
        match &self.target {
            KernelTarget::Device(ifindex) => {
                // `dev X scope link`: the destination is on the wire of X.
                msg.header.scope = RouteScope::Link;
                msg.attributes.push(RouteAttribute::Oif(*ifindex));
            }
            KernelTarget::Blackhole => msg.header.kind = RouteType::BlackHole,
            KernelTarget::Via(hops) if hops.len() == 1 => {
                let hop = &hops[0];
                msg.attributes
                    .push(RouteAttribute::Gateway(RouteAddress::from(hop.gateway)));
                if let Some(ifindex) = hop.ifindex {
                    msg.attributes.push(RouteAttribute::Oif(ifindex));
                }
                if hop.onlink {
                    msg.header.flags |= RouteFlags::Onlink;
                }
            }
            KernelTarget::Via(hops) => {
                let nexthops = hops
                    .iter()
                    .map(|hop| {
                        let mut nh = RouteNextHop::default();
                        nh.interface_index = hop.ifindex.unwrap_or(0);
                        if hop.onlink {
                            nh.flags |= RouteNextHopFlags::Onlink;
                        }
                        nh.attributes
                            .push(RouteAttribute::Gateway(RouteAddress::from(hop.gateway)));
                        nh
                    })
                    .collect();
                msg.attributes.push(RouteAttribute::MultiPath(nexthops));
            }
        }
        if self.priority != 0 {
            msg.attributes.push(RouteAttribute::Priority(self.priority));
        }
        if let Some(mtu) = self.mtu {
            msg.attributes
                .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
        }
        msg
    }

    /// Reads a dumped route; `None` unless it is a felix-protocol unicast or
    /// blackhole route of the main table (everything else is not felix's and
    /// is never touched).
    pub fn from_message(msg: &RouteMessage) -> Option<KernelRoute> {
        let h = &msg.header;
        if u8::from(h.protocol) != FELIX_ROUTE_PROTOCOL || h.source_prefix_length != 0 || h.tos != 0
        {
            return None;
        }
        let mut table = u32::from(h.table);
        let mut dst_addr = None;
        let mut gateway = None;
        let mut oif = None;
        let mut multipath = None;
        let mut mtu = None;
        let mut priority = 0;
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Destination(a) => dst_addr = ip_of(a),
                RouteAttribute::Gateway(a) => gateway = ip_of(a),
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::MultiPath(hops) => multipath = Some(hops),
                RouteAttribute::Priority(p) => priority = *p,
                RouteAttribute::Metrics(metrics) => {
                    for m in metrics {
                        if let RouteMetric::Mtu(v) = m {
                            mtu = Some(*v);
                        }
                    }
                }
                _ => {}
            }
        }
        if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
            return None;
        }
        let dst_addr = match (dst_addr, h.address_family) {
            (Some(a), _) => a,
            (None, AddressFamily::Inet) => IpAddr::from([0u8; 4]),
            (None, AddressFamily::Inet6) => IpAddr::from([0u8; 16]),
            _ => return None,
        };
        let destination = IpNet::new(dst_addr, h.destination_prefix_length).ok()?;
        let target = match h.kind {
            // IPv6 blackholes are dumped with `dev lo`: the device is no part
            // of what a blackhole is.
            RouteType::BlackHole => KernelTarget::Blackhole,
            RouteType::Unicast => {
                if let Some(hops) = multipath {
                    let mut out = Vec::with_capacity(hops.len());
                    for nh in hops {
                        let gw = nh.attributes.iter().find_map(|a| match a {
                            RouteAttribute::Gateway(g) => ip_of(g),
                            _ => None,
                        })?;
                        out.push(KernelHop {
                            gateway: gw,
                            ifindex: Some(nh.interface_index).filter(|i| *i != 0),
                            onlink: nh.flags.contains(RouteNextHopFlags::Onlink),
                        });
                    }
                    out.sort();
                    KernelTarget::Via(out)
                } else if let Some(gw) = gateway {
                    KernelTarget::Via(vec![KernelHop {
                        gateway: gw,
                        ifindex: oif,
                        onlink: h.flags.contains(RouteFlags::Onlink),
                    }])
                } else {
                    KernelTarget::Device(oif?)
                }
            }
            _ => return None,
        };
        Some(KernelRoute {
            destination,
            target,
            mtu,
            priority,
        })
    }

    /// The `RTM_DELROUTE` body: destination, metric and felix's protocol, so
    /// that the kernel deletes only a felix route (fib_table_delete and
    /// ip6_route_del both skip routes of another protocol when one is given).
    pub fn to_delete_message(&self) -> RouteMessage {
        let dst = self.destination;
        let mut msg = RouteMessage::default();
        msg.header.address_family = family(&dst);
        msg.header.destination_prefix_length = dst.prefix_len();
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::from(FELIX_ROUTE_PROTOCOL);
        msg.header.scope = RouteScope::NoWhere;
        msg.header.kind = RouteType::Unspec;
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst.addr())));
        if self.priority != 0 {
            msg.attributes.push(RouteAttribute::Priority(self.priority));
        }
        msg
    }
}

/// How a route write is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteOp {
    /// `NLM_F_CREATE | NLM_F_EXCL`: fails with EEXIST rather than overwrite
    /// a route of another owner at the same prefix and metric.
    Add,
    /// `NLM_F_CREATE | NLM_F_REPLACE`: atomically swaps a felix route that
    /// the dump showed at this prefix (no window without a route).
    Replace,
    /// `RTM_DELROUTE` restricted to felix's protocol.
    Delete,
}

impl std::fmt::Display for RouteOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RouteOp::Add => "add",
            RouteOp::Replace => "replace",
            RouteOp::Delete => "delete",
        })
    }
}

/// The full netlink request for `op` on `route`, asking for an ACK so that
/// every write has its own success or error.
pub(crate) fn request(op: RouteOp, route: &KernelRoute) -> NetlinkMessage<RouteNetlinkMessage> {
    let (payload, flags) = match op {
        RouteOp::Add => (
            RouteNetlinkMessage::NewRoute(route.to_message()),
            NLM_F_CREATE | NLM_F_EXCL,
        ),
        RouteOp::Replace => (
            RouteNetlinkMessage::NewRoute(route.to_message()),
            NLM_F_CREATE | NLM_F_REPLACE,
        ),
        RouteOp::Delete => (RouteNetlinkMessage::DelRoute(route.to_delete_message()), 0),
    };
    let mut msg = NetlinkMessage::from(payload);
    msg.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    msg.finalize();
    msg
}

fn family(dst: &IpNet) -> AddressFamily {
    match dst {
        IpNet::V4(_) => AddressFamily::Inet,
        IpNet::V6(_) => AddressFamily::Inet6,
    }
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::routes::desired::NextHop;
    use rtnetlink::packet_core::NetlinkPayload;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn links() -> HashMap<String, u32> {
        [
            ("fx1".to_string(), 7),
            ("eth0".to_string(), 2),
            ("vxlan.felix".to_string(), 9),
        ]
        .into_iter()
        .collect()
    }

    /// Emits `route` as netlink bytes and parses them back, as the kernel
    /// would see them and as a dump would return them.
    fn wire_roundtrip(op: RouteOp, route: &KernelRoute) -> RouteMessage {
        let msg = request(op, route);
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut buf);
        let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf).unwrap();
        match parsed.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(m))
            | NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(m)) => m,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn pod_route_is_a_link_scope_device_route_of_felix_protocol() {
        let r = KernelRoute::resolve(&DesiredRoute::pod(ip("10.0.0.5"), "fx1"), &links()).unwrap();
        let m = r.to_message();
        assert_eq!(
            m.header.protocol,
            RouteProtocol::Other(FELIX_ROUTE_PROTOCOL)
        );
        assert_eq!(m.header.scope, RouteScope::Link);
        assert_eq!(m.header.kind, RouteType::Unicast);
        assert_eq!(m.header.table, 254);
        assert_eq!(m.header.destination_prefix_length, 32);
        assert!(m.attributes.contains(&RouteAttribute::Oif(7)));
        assert!(!m
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Gateway(_))));
        assert_eq!(
            KernelRoute::from_message(&wire_roundtrip(RouteOp::Add, &r)),
            Some(r)
        );
    }

    #[test]
    fn blackhole_and_v6_routes_roundtrip() {
        for d in [
            DesiredRoute::blackhole(net("10.0.0.0/26")),
            DesiredRoute::blackhole(net("fd00:1::/122")),
            DesiredRoute::pod(ip("fd00:1::5"), "fx1"),
        ] {
            let r = KernelRoute::resolve(&d, &links()).unwrap();
            let m = wire_roundtrip(RouteOp::Add, &r);
            if matches!(d.kind, RouteKind::Blackhole) {
                assert_eq!(m.header.kind, RouteType::BlackHole);
            }
            assert_eq!(KernelRoute::from_message(&m), Some(r));
        }
    }

    #[test]
    fn v6_routes_carry_the_kernel_default_metric() {
        let r =
            KernelRoute::resolve(&DesiredRoute::blackhole(net("fd00::/122")), &links()).unwrap();
        assert_eq!(r.priority, 1024);
        assert!(r
            .to_message()
            .attributes
            .contains(&RouteAttribute::Priority(1024)));
        let v4 =
            KernelRoute::resolve(&DesiredRoute::blackhole(net("10.0.0.0/26")), &links()).unwrap();
        assert!(!v4
            .to_message()
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Priority(_))));
    }

    #[test]
    fn tunnel_route_is_onlink_with_mtu() {
        let d = DesiredRoute::tunnel(net("10.1.0.0/26"), ip("10.9.0.1"), "vxlan.felix", 1450);
        let r = KernelRoute::resolve(&d, &links()).unwrap();
        let m = r.to_message();
        assert!(m.header.flags.contains(RouteFlags::Onlink));
        assert!(m.attributes.contains(&RouteAttribute::Oif(9)));
        assert!(m
            .attributes
            .contains(&RouteAttribute::Gateway(RouteAddress::Inet(
                "10.9.0.1".parse().unwrap()
            ))));
        assert!(m
            .attributes
            .contains(&RouteAttribute::Metrics(vec![RouteMetric::Mtu(1450)])));
        assert_eq!(
            KernelRoute::from_message(&wire_roundtrip(RouteOp::Replace, &r)),
            Some(r)
        );
    }

    #[test]
    fn multipath_uses_rta_multipath_and_is_order_insensitive() {
        let hops = vec![
            NextHop::via_device(ip("192.0.2.2"), "eth0"),
            NextHop::onlink(ip("10.9.0.1"), "vxlan.felix"),
        ];
        let mut reversed = hops.clone();
        reversed.reverse();
        let a = KernelRoute::resolve(&DesiredRoute::multipath(net("10.1.0.0/26"), hops), &links())
            .unwrap();
        let b = KernelRoute::resolve(
            &DesiredRoute::multipath(net("10.1.0.0/26"), reversed),
            &links(),
        )
        .unwrap();
        assert_eq!(a, b);
        let m = a.to_message();
        let mp = m
            .attributes
            .iter()
            .find_map(|x| match x {
                RouteAttribute::MultiPath(h) => Some(h),
                _ => None,
            })
            .unwrap();
        assert_eq!(mp.len(), 2);
        assert!(mp
            .iter()
            .any(|h| h.flags.contains(RouteNextHopFlags::Onlink) && h.interface_index == 9));
        assert!(!m
            .attributes
            .iter()
            .any(|x| matches!(x, RouteAttribute::Gateway(_))));
        assert_eq!(
            KernelRoute::from_message(&wire_roundtrip(RouteOp::Add, &a)),
            Some(a)
        );
    }

    #[test]
    fn a_hop_without_device_is_satisfied_by_whatever_device_the_kernel_chose() {
        let want = KernelRoute::resolve(
            &DesiredRoute::via_gateway(net("10.1.0.0/26"), ip("192.0.2.1")),
            &links(),
        )
        .unwrap();
        let mut have = want.clone();
        have.target = KernelTarget::Via(vec![KernelHop {
            gateway: ip("192.0.2.1"),
            ifindex: Some(2),
            onlink: false,
        }]);
        assert!(have.satisfies(&want));
        let mut other_gw = have.clone();
        other_gw.target = KernelTarget::Via(vec![KernelHop {
            gateway: ip("192.0.2.9"),
            ifindex: Some(2),
            onlink: false,
        }]);
        assert!(!other_gw.satisfies(&want));
        let mut mtu = have.clone();
        mtu.mtu = Some(1400);
        assert!(!mtu.satisfies(&want));
    }

    #[test]
    fn missing_device_names_the_route_and_device() {
        let err = KernelRoute::resolve(&DesiredRoute::pod(ip("10.0.0.9"), "fxgone"), &links())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "route 10.0.0.9/32: device fxgone not found"
        );
    }

    #[test]
    fn routes_of_other_protocols_or_tables_are_not_felix_routes() {
        let r =
            KernelRoute::resolve(&DesiredRoute::blackhole(net("10.0.0.0/26")), &links()).unwrap();
        let mut m = r.to_message();
        m.header.protocol = RouteProtocol::Static;
        assert_eq!(KernelRoute::from_message(&m), None);
        let mut m = r.to_message();
        m.header.table = 100;
        assert_eq!(KernelRoute::from_message(&m), None);
        let mut m = r.to_message();
        m.header.table = 252;
        m.attributes.push(RouteAttribute::Table(1000));
        assert_eq!(KernelRoute::from_message(&m), None);
    }

    #[test]
    fn delete_is_restricted_to_felix_protocol_and_acked() {
        let r =
            KernelRoute::resolve(&DesiredRoute::blackhole(net("10.0.0.0/26")), &links()).unwrap();
        let msg = request(RouteOp::Delete, &r);
        assert_eq!(msg.header.flags, NLM_F_REQUEST | NLM_F_ACK);
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(m)) = &msg.payload else {
            panic!("not a DelRoute");
        };
        assert_eq!(u8::from(m.header.protocol), FELIX_ROUTE_PROTOCOL);
        assert_eq!(m.header.scope, RouteScope::NoWhere);
        let add = request(RouteOp::Add, &r);
        assert_eq!(
            add.header.flags,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        );
        let rep = request(RouteOp::Replace, &r);
        assert_eq!(
            rep.header.flags,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
        );
    }
}
