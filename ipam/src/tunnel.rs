//! Tunnel addresses: the address a node puts on its VXLAN device or
//! `tunl0`, allocated from IPAM the way Calico's `calico-node` does
//! (`allocateip`): handle `vxlan-tunnel-addr-NODE` / `ipip-tunnel-addr-NODE`,
//! attributes `node` and `type` (`vxlanTunnelAddress` /
//! `ipipTunnelAddress`), from an enabled IPv4 pool that selects the node,
//! has the matching encapsulation on (`vxlanMode` / `ipipMode` not `Never`)
//! and lists `Tunnel` in its `allowedUses`. Like a pod's address it comes
//! from a block affine to the node, so the node's originated block covers
//! it and remote nodes reach it through their route to that block.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use crate::allocator::{Allocator, AutoAssignRequest, IpamError, ReleaseRequest};
use crate::block::AllocationAttrs;
use crate::pool::{AllowedUse, EncapMode, IpPool};

/// The two tunnels a node can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TunnelKind {
    /// The VXLAN device (RFC 7348).
    Vxlan,
    /// IP in IP on `tunl0` (RFC 2003).
    Ipip,
}

impl TunnelKind {
    /// Both kinds.
    pub const ALL: [TunnelKind; 2] = [TunnelKind::Vxlan, TunnelKind::Ipip];

    /// The handle id holding `node`'s tunnel address (Calico's).
    pub fn handle(self, node: &str) -> String {
        format!("{}{node}", self.handle_prefix())
    }

    fn handle_prefix(self) -> &'static str {
        match self {
            TunnelKind::Vxlan => "vxlan-tunnel-addr-",
            TunnelKind::Ipip => "ipip-tunnel-addr-",
        }
    }

    /// The `type` attribute stored with the address (Calico's).
    pub fn attribute(self) -> &'static str {
        match self {
            TunnelKind::Vxlan => "vxlanTunnelAddress",
            TunnelKind::Ipip => "ipipTunnelAddress",
        }
    }

    /// The pool's mode for this kind of tunnel.
    pub fn mode(self, pool: &IpPool) -> EncapMode {
        match self {
            TunnelKind::Vxlan => pool.spec.vxlan_mode,
            TunnelKind::Ipip => pool.spec.ipip_mode,
        }
    }
}

/// The node a tunnel handle belongs to (`None` for other handles): its
/// address lives as long as the node, whatever pods there are.
pub fn tunnel_owner(handle: &str) -> Option<&str> {
    TunnelKind::ALL
        .iter()
        .find_map(|k| handle.strip_prefix(k.handle_prefix()))
        .filter(|node| !node.is_empty())
}

/// The pools that may give a node with `labels` a tunnel address of
/// `kind`: enabled, IPv4, selecting the node, with the encapsulation on and
/// `Tunnel` among their allowed uses. None: the node needs no such tunnel.
pub fn tunnel_pools<'a>(
    pools: &'a [IpPool],
    kind: TunnelKind,
    labels: &BTreeMap<String, String>,
) -> Vec<&'a IpPool> {
    pools
        .iter()
        .filter(|p| {
            !p.spec.disabled
                && p.spec.cidr.addr().is_ipv4()
                && kind.mode(p) != EncapMode::Never
                && p.spec.allowed_uses.contains(&AllowedUse::Tunnel)
                && p.spec.selects(labels)
        })
        .collect()
}

impl Allocator {
    /// Makes sure `node` holds exactly one tunnel address of `kind` when a
    /// pool asks for that tunnel, and none otherwise (Calico's
    /// `reconcileTunnelAddrs`). An address it already holds in a pool that
    /// still qualifies is kept (a restart keeps its VTEP); one in a pool
    /// that no longer does is released and a new one taken. Labels as in
    /// [`AutoAssignRequest::node_labels`].
    pub async fn ensure_tunnel_address(
        &self,
        node: &str,
        kind: TunnelKind,
        labels: Option<BTreeMap<String, String>>,
    ) -> Result<Option<Ipv4Addr>, IpamError> {
        let handle = kind.handle(node);
        let labels = self.node_labels(node, &labels).await?;
        let pools = self.pools().await?;
        let eligible = tunnel_pools(&pools, kind, &labels);
        let held = self.holdings(&handle).await?;
        let keep = held.iter().find_map(|(_, used)| match used.ip {
            IpAddr::V4(ip) if eligible.iter().any(|p| p.spec.cidr.contains(&used.ip)) => Some(ip),
            _ => None,
        });
        let stale: Vec<ReleaseRequest> = held
            .iter()
            .filter(|(_, used)| Some(used.ip) != keep.map(IpAddr::V4))
            .map(|(_, used)| ReleaseRequest {
                ip: used.ip,
                handle: Some(handle.clone()),
                sequence: Some(used.sequence),
            })
            .collect();
        if !stale.is_empty() {
            tracing::info!(
                node,
                handle,
                released = stale.len(),
                "releasing tunnel addresses no pool wants"
            );
            self.release_ips(&stale).await?;
        }
        if keep.is_some() || eligible.is_empty() {
            return Ok(keep);
        }
        let assigned = self
            .auto_assign(&AutoAssignRequest {
                handle: handle.clone(),
                node: node.to_owned(),
                num_v4: 1,
                num_v6: 0,
                attrs: AllocationAttrs {
                    node: Some(node.to_owned()),
                    kind: Some(kind.attribute().to_owned()),
                    ..AllocationAttrs::default()
                },
                pools: eligible.iter().map(|p| p.name.clone()).collect(),
                node_labels: Some(labels),
                intended_use: AllowedUse::Tunnel,
            })
            .await?;
        Ok(assigned.v4.first().and_then(|net| match net.addr() {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        }))
    }

    /// Releases `node`'s tunnel address of `kind` (node removal, or the
    /// tunnel switched off); returns what was released.
    pub async fn release_tunnel_address(
        &self,
        node: &str,
        kind: TunnelKind,
    ) -> Result<Vec<IpAddr>, IpamError> {
        self.release_by_handle(&kind.handle(node)).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::pool::{parse_cidr, IpPoolSpec};

    fn pool(name: &str, cidr: &str, f: impl FnOnce(&mut IpPoolSpec)) -> IpPool {
        let mut spec = IpPoolSpec::new(parse_cidr(cidr).unwrap());
        f(&mut spec);
        IpPool {
            name: name.into(),
            spec,
        }
    }

    #[test]
    fn handles_and_attributes_are_calicos() {
        assert_eq!(
            TunnelKind::Vxlan.handle("node-1"),
            "vxlan-tunnel-addr-node-1"
        );
        assert_eq!(TunnelKind::Ipip.handle("node-1"), "ipip-tunnel-addr-node-1");
        assert_eq!(TunnelKind::Vxlan.attribute(), "vxlanTunnelAddress");
        assert_eq!(TunnelKind::Ipip.attribute(), "ipipTunnelAddress");
        assert_eq!(tunnel_owner("vxlan-tunnel-addr-node-1"), Some("node-1"));
        assert_eq!(tunnel_owner("ipip-tunnel-addr-n"), Some("n"));
        assert_eq!(tunnel_owner("vxlan-tunnel-addr-"), None);
        assert_eq!(tunnel_owner("k8s-pod-network.abc.eth0"), None);
    }

    #[test]
    fn only_pools_with_the_tunnel_on_and_tunnel_use_qualify() {
        let labels: BTreeMap<String, String> = [("zone".to_string(), "a".to_string())].into();
        let pools = vec![
            pool("plain", "10.1.0.0/16", |_| {}),
            pool("vxlan", "10.2.0.0/16", |s| {
                s.vxlan_mode = EncapMode::CrossSubnet
            }),
            pool("ipip", "10.3.0.0/16", |s| s.ipip_mode = EncapMode::Always),
            pool("workload-only", "10.4.0.0/16", |s| {
                s.vxlan_mode = EncapMode::Always;
                s.allowed_uses = vec![AllowedUse::Workload];
            }),
            pool("disabled", "10.5.0.0/16", |s| {
                s.vxlan_mode = EncapMode::Always;
                s.disabled = true;
            }),
            pool("zone-b", "10.6.0.0/16", |s| {
                s.vxlan_mode = EncapMode::Always;
                s.node_selector = "zone == 'b'".into();
            }),
            pool("v6", "fd00::/48", |s| s.vxlan_mode = EncapMode::Always),
            pool("tunnel-only", "10.7.0.0/16", |s| {
                s.vxlan_mode = EncapMode::Always;
                s.allowed_uses = vec![AllowedUse::Tunnel];
            }),
        ];
        let names = |kind| -> Vec<&str> {
            tunnel_pools(&pools, kind, &labels)
                .iter()
                .map(|p| p.name.as_str())
                .collect()
        };
        assert_eq!(names(TunnelKind::Vxlan), ["vxlan", "tunnel-only"]);
        assert_eq!(names(TunnelKind::Ipip), ["ipip"]);
    }
}
