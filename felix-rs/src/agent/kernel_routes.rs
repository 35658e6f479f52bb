//! The agent's [`RouteSink`] over the kernel: makes the tunnel devices the
//! agent's [`DesiredRoutes`](super::forwarding::DesiredRoutes) ask for
//! (`vxlan.felix` with a static neighbour and FDB entry per remote VTEP,
//! `tunl0`), then turns the routes into the route programmer's table and
//! reconciles it (ARCHITECTURE.md, principle 2): a blackhole per local
//! block; remote blocks directly (one next hop, or ECMP), over VXLAN
//! (`via VTEP dev vxlan.felix onlink`) or IPIP (`via NODE dev tunl0
//! onlink`), tunnel routes with the underlay MTU minus the encapsulation.
//!
//! Every call converges everything again (device parameters, address,
//! entries, routes), so a resync repairs what was changed behind felix's
//! back; nothing that is already right is rewritten, so an agent restart
//! keeps the overlay forwarding.

use super::forwarding::{DesiredRoutes, LocalVtep, Tunnels, Via};
use super::run::RouteSink;
use crate::local_pods::LocalPods;
use crate::routes::{self, DesiredRoute, NextHop, RouteError, RouteProgrammer};
use crate::tunnel::ipip::{ensure_tunl0, IPIP_DEVICE};
use crate::tunnel::vxlan::{VxlanConfig, VxlanDevice, VXLAN_DEVICE};
use crate::tunnel::{rtnetlink_handle, Encapsulation, TunnelError, Underlay};
use ipnet::IpNet;
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

/// Programs the agent's desired routes and tunnels into the kernel
/// (felix's protocol number and felix's devices only; nothing else is
/// touched).
pub struct KernelRoutes {
    programmer: RouteProgrammer,
    node_address: Ipv4Addr,
    netlink: Option<rtnetlink::Handle>,
    /// The node's pods: their `/32` and `/128` routes to their veths are
    /// desired too (the CNI plugin adds them with the same protocol), so a
    /// reconcile keeps a live pod's route and removes a stale one.
    pods: Option<LocalPods>,
}

impl KernelRoutes {
    /// Opens the netlink sockets (needs a tokio runtime). The tunnels run
    /// over the device holding `node_address`.
    pub fn open(node_address: Ipv4Addr) -> Result<Self, routes::SocketError> {
        Ok(KernelRoutes {
            programmer: RouteProgrammer::new()?,
            node_address,
            netlink: None,
            pods: None,
        })
    }

    /// Keeps the routes of `pods` (see the field).
    pub fn with_local_pods(mut self, pods: LocalPods) -> Self {
        self.pods = Some(pods);
        self
    }

    fn netlink(&mut self) -> Result<rtnetlink::Handle, TunnelError> {
        if let Some(h) = &self.netlink {
            return Ok(h.clone());
        }
        let h = rtnetlink_handle()?;
        self.netlink = Some(h.clone());
        Ok(h)
    }

    /// Converges the tunnel devices; returns the route MTUs they allow.
    async fn tunnels(&mut self, tunnels: &Tunnels, problems: &mut Vec<String>) -> TunnelMtus {
        let mut mtus = TunnelMtus::default();
        let handle = match self.netlink() {
            Ok(h) => h,
            Err(e) => {
                problems.push(format!("tunnels: {e}"));
                return mtus;
            }
        };
        if tunnels.vxlan.is_none() && tunnels.ipip.is_none() {
            // No pool wants VXLAN: a device felix made earlier goes.
            match VxlanDevice::remove(&handle, VXLAN_DEVICE).await {
                Ok(true) => tracing::info!(device = VXLAN_DEVICE, "no pool wants VXLAN: removed"),
                Ok(false) => {}
                Err(e) => problems.push(e.to_string()),
            }
            return mtus;
        }
        let underlay = match Underlay::holding(&handle, IpAddr::V4(self.node_address)).await {
            Ok(u) => u,
            Err(e) => {
                problems.push(format!("underlay of {}: {e}", self.node_address));
                return mtus;
            }
        };
        match tunnels.vxlan {
            Some(local) => match self.vxlan(&handle, &underlay, local, tunnels).await {
                Ok(()) => mtus.vxlan = Some(underlay.tunnel_mtu(Encapsulation::Vxlan)),
                Err(e) => problems.push(format!("{VXLAN_DEVICE}: {e}")),
            },
            None => match VxlanDevice::remove(&handle, VXLAN_DEVICE).await {
                Ok(true) => tracing::info!(device = VXLAN_DEVICE, "no pool wants VXLAN: removed"),
                Ok(false) => {}
                Err(e) => problems.push(e.to_string()),
            },
        }
        if let Some(address) = tunnels.ipip {
            match ensure_tunl0(&handle, &underlay, address).await {
                Ok(_) => mtus.ipip = Some(underlay.tunnel_mtu(Encapsulation::Ipip)),
                Err(e) => problems.push(format!("{IPIP_DEVICE}: {e}")),
            }
        }
        mtus
    }

    async fn vxlan(
        &self,
        handle: &rtnetlink::Handle,
        underlay: &Underlay,
        local: LocalVtep,
        tunnels: &Tunnels,
    ) -> Result<(), TunnelError> {
        let config = VxlanConfig::new(underlay, local.address, local.mac)?;
        let device = VxlanDevice::ensure(handle.clone(), config).await?;
        let report = device.reconcile_peers(&tunnels.vxlan_peers).await?;
        if report.written + report.removed > 0 {
            tracing::info!(
                written = report.written,
                removed = report.removed,
                peers = tunnels.vxlan_peers.len(),
                "VXLAN neighbour and FDB entries reconciled"
            );
        }
        Ok(())
    }
}

/// Adds a device route per pod address to `table`; returns the prefixes.
pub fn add_pod_routes(
    table: &mut routes::DesiredRoutes,
    pods: &LocalPods,
    skipped: &mut Vec<String>,
) -> HashSet<IpNet> {
    let mut prefixes = HashSet::new();
    for (address, veth) in pods.routes() {
        match table.pod(address, &veth) {
            Ok(_) => {
                prefixes.insert(IpNet::from(address));
            }
            Err(e) => skipped.push(format!("pod {address}: {e}")),
        }
    }
    prefixes
}

/// The MTU of routes through each tunnel; `None` when the tunnel is not up
/// (its routes are then not programmed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelMtus {
    pub vxlan: Option<u32>,
    pub ipip: Option<u32>,
}

/// The programmer's table for `desired`, and the prefixes left out, each
/// with the reason (a tunnel not up, a VTEP not known yet, a bad route).
pub fn kernel_table(
    desired: &DesiredRoutes,
    mtus: TunnelMtus,
) -> (routes::DesiredRoutes, Vec<String>) {
    let mut table = routes::DesiredRoutes::new();
    let mut skipped = Vec::new();
    for block in &desired.blackholes {
        if let Err(e) = table.blackhole(*block) {
            skipped.push(format!("{block}: {e}"));
        }
    }
    for (prefix, route) in &desired.remote {
        if let Some(why) = &route.pending {
            skipped.push(format!("{prefix}: {why}"));
            continue;
        }
        let tunnel = match route.via {
            Via::Direct => None,
            Via::Vxlan => Some((VXLAN_DEVICE, mtus.vxlan)),
            Via::Ipip => Some((IPIP_DEVICE, mtus.ipip)),
        };
        let built = match tunnel {
            None => Ok(DesiredRoute::multipath(
                *prefix,
                route
                    .gateways
                    .iter()
                    .map(|g| NextHop::gateway(*g))
                    .collect(),
            )),
            Some((device, Some(mtu))) => Ok(DesiredRoute::multipath(
                *prefix,
                route
                    .gateways
                    .iter()
                    .map(|g| NextHop::onlink(*g, device))
                    .collect(),
            )
            .with_mtu(mtu)),
            Some((device, None)) => Err(format!("{device} is not up")),
        };
        let added = built.and_then(|r| table.insert(r).map(|_| ()).map_err(|e| e.to_string()));
        if let Err(e) = added {
            skipped.push(format!("{prefix}: {e}"));
        }
    }
    (table, skipped)
}

#[async_trait::async_trait]
impl RouteSink for KernelRoutes {
    async fn program(&mut self, desired: &DesiredRoutes) -> Result<usize, String> {
        let mut problems = Vec::new();
        let mtus = match &desired.tunnels {
            Some(t) => self.tunnels(t, &mut problems).await,
            // Not known yet: the devices are left alone; their routes wait.
            None => TunnelMtus::default(),
        };
        let mut skipped = Vec::new();
        let mut wanted = 0;
        let mut pod_prefixes = HashSet::new();
        let pods = self.pods.clone();
        // The pods are read after the kernel dump: a pod route in the dump
        // belongs to an attachment recorded before it (the plugin adds the
        // route only after the pod API answered), so it is never taken for
        // a stale one (`RouteProgrammer::reconcile_with`).
        let report = self
            .programmer
            .reconcile_with(|| {
                let (mut table, s) = kernel_table(desired, mtus);
                skipped = s;
                // The count reported is the agent's own routes (blocks and
                // learned routes, what `felix status` compares with what it
                // learned); pod routes come on top.
                wanted = table.len();
                if let Some(pods) = &pods {
                    pod_prefixes = add_pod_routes(&mut table, pods, &mut skipped);
                }
                table
            })
            .await
            .map_err(|e| format!("route reconcile: {e}"))?;
        problems.extend(skipped);
        problems.extend(
            report
                .errors
                .iter()
                // A pod whose veth is not there: being created (its route
                // comes with the plugin) or being deleted (its route went
                // with the veth). Not a routing problem.
                .filter(|e| {
                    !(matches!(e, RouteError::DeviceNotFound { .. })
                        && pod_prefixes.contains(&e.route()))
                })
                .map(|e| e.to_string()),
        );
        if problems.is_empty() {
            Ok(wanted)
        } else {
            Err(problems.join("; "))
        }
    }

    async fn previous_routes(&mut self) -> Result<usize, String> {
        self.programmer
            .kernel_route_count()
            .await
            .map_err(|e| format!("listing felix's kernel routes: {e}"))
    }

    fn keep_unlisted(&mut self, keep: bool) {
        self.programmer.keep_unlisted(keep);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::agent::forwarding::RemoteRoute;
    use crate::routes::RouteKind;
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn route(via: Via, gateways: &[&str]) -> RemoteRoute {
        RemoteRoute {
            next_hops: vec![ip("10.0.1.5")],
            via,
            gateways: gateways.iter().map(|g| ip(g)).collect(),
            pending: None,
        }
    }

    fn desired() -> DesiredRoutes {
        let mut desired = DesiredRoutes::default();
        desired.blackholes.insert("10.244.0.0/26".parse().unwrap());
        desired.remote.insert(
            "10.244.0.64/26".parse().unwrap(),
            route(Via::Direct, &["10.0.0.2"]),
        );
        desired.remote.insert(
            "10.244.0.128/26".parse().unwrap(),
            route(Via::Direct, &["10.0.0.3", "10.0.0.4"]),
        );
        desired.remote.insert(
            "10.244.0.192/26".parse().unwrap(),
            route(Via::Vxlan, &["10.244.0.192"]),
        );
        desired.remote.insert(
            "10.244.1.0/26".parse().unwrap(),
            route(Via::Ipip, &["10.0.1.7"]),
        );
        let mut pending = route(Via::Vxlan, &[]);
        pending.pending = Some("node node-9 has no VTEP registered yet".into());
        desired
            .remote
            .insert("10.244.1.64/26".parse().unwrap(), pending);
        desired
    }

    #[test]
    fn every_route_kind_becomes_its_kernel_route() {
        let (table, skipped) = kernel_table(
            &desired(),
            TunnelMtus {
                vxlan: Some(1450),
                ipip: Some(1480),
            },
        );
        assert_eq!(table.len(), 5);
        assert!(matches!(
            table.get(&"10.244.0.0/26".parse().unwrap()).unwrap().kind,
            RouteKind::Blackhole
        ));
        let direct = table.get(&"10.244.0.64/26".parse().unwrap()).unwrap();
        assert_eq!(
            direct.kind,
            RouteKind::Via(vec![NextHop::gateway(ip("10.0.0.2"))])
        );
        assert_eq!(direct.mtu, None);
        let ecmp = table.get(&"10.244.0.128/26".parse().unwrap()).unwrap();
        assert!(matches!(&ecmp.kind, RouteKind::Via(h) if h.len() == 2));
        let vxlan = table.get(&"10.244.0.192/26".parse().unwrap()).unwrap();
        assert_eq!(
            vxlan.kind,
            RouteKind::Via(vec![NextHop::onlink(ip("10.244.0.192"), "vxlan.felix")])
        );
        assert_eq!(vxlan.mtu, Some(1450));
        let ipip = table.get(&"10.244.1.0/26".parse().unwrap()).unwrap();
        assert_eq!(
            ipip.kind,
            RouteKind::Via(vec![NextHop::onlink(ip("10.0.1.7"), "tunl0")])
        );
        assert_eq!(ipip.mtu, Some(1480));
        // The route waiting for a VTEP is named, the others still go in.
        assert_eq!(skipped.len(), 1);
        assert!(
            skipped[0].starts_with("10.244.1.64/26: node node-9"),
            "{skipped:?}"
        );
    }

    #[test]
    fn routes_through_a_tunnel_that_is_not_up_are_reported() {
        // No ipip module here: tunl0 failed, its routes are named.
        let (table, skipped) = kernel_table(
            &desired(),
            TunnelMtus {
                vxlan: Some(1450),
                ipip: None,
            },
        );
        assert_eq!(table.len(), 4);
        assert!(table.get(&"10.244.1.0/26".parse().unwrap()).is_none());
        assert!(
            skipped
                .iter()
                .any(|s| s == "10.244.1.0/26: tunl0 is not up"),
            "{skipped:?}"
        );
    }

    #[test]
    fn ipv6_blocks_become_blackholes_and_gateway_routes_pending_ones_are_named() {
        let mut desired = DesiredRoutes::default();
        desired
            .blackholes
            .insert("fd00:10:244::/122".parse().unwrap());
        desired.remote.insert(
            "fd00:10:244::40/122".parse().unwrap(),
            RemoteRoute {
                next_hops: vec![ip("fd00::2"), ip("fd00::3")],
                via: Via::Direct,
                gateways: vec![ip("fd00::2"), ip("fd00::3")],
                pending: None,
            },
        );
        desired.remote.insert(
            "fd00:10:244::80/122".parse().unwrap(),
            RemoteRoute {
                next_hops: vec![ip("fd00:0:0:1::4")],
                via: Via::Vxlan,
                gateways: vec![],
                pending: Some("VXLAN for IPv6 pools is not built".into()),
            },
        );
        let (table, skipped) = kernel_table(&desired, TunnelMtus::default());
        assert_eq!(table.len(), 2);
        assert!(matches!(
            table
                .get(&"fd00:10:244::/122".parse().unwrap())
                .unwrap()
                .kind,
            RouteKind::Blackhole
        ));
        let ecmp = table.get(&"fd00:10:244::40/122".parse().unwrap()).unwrap();
        assert_eq!(
            ecmp.kind,
            RouteKind::Via(vec![
                NextHop::gateway(ip("fd00::2")),
                NextHop::gateway(ip("fd00::3"))
            ])
        );
        assert_eq!(ecmp.mtu, None);
        assert_eq!(
            skipped,
            ["fd00:10:244::80/122: VXLAN for IPv6 pools is not built"]
        );
    }
}
