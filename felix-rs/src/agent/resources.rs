//! The objects the agent keeps in the datastore, as JSON specs with
//! Calico's field names (projectcalico.org/v3 `Node`, `BGPPeer`,
//! `BGPConfiguration`), so that users can carry their YAML's `spec:` over.
//!
//! - [`FelixNode`] (kind `FelixNode`, named after the node): what the
//!   agent registers about itself: address, AS, route-reflector cluster
//!   id, tunnel addresses, labels. Other agents build their mesh from it.
//! - [`BgpPeerSpec`] (kind `BGPPeer`): an explicit peering, for every node
//!   or for the nodes `node` / `nodeSelector` picks, towards `peerIP` or
//!   towards the nodes `peerSelector` picks.
//! - [`BgpConfigurationSpec`] (kind `BGPConfiguration`, the object named
//!   `default`): cluster-wide BGP settings.
//!
//! Each is also a Kubernetes custom resource (`kube`'s `CustomResource`
//! derive, group `crd.felix-rs.io`, version `v1`): `felix crds` prints the
//! CustomResourceDefinitions generated from these types.

use crate::tunnel::vxlan::VxlanPeer;
use ipnet::IpNet;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

/// The name of the cluster-wide [`BgpConfigurationSpec`] (Calico's).
pub const DEFAULT_BGP_CONFIGURATION: &str = "default";

/// The default AS number of a Calico cluster.
pub const DEFAULT_AS_NUMBER: u32 = 64512;

/// A registered node (Calico `Node` spec, labels folded in); also the
/// `FelixNode` custom resource ([`FelixNodeResource`]), written by the
/// node's agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, CustomResource, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
// Each printcolumn repeats `type_ = …`, which clippy takes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "crd.felix-rs.io",
    version = "v1",
    kind = "FelixNode",
    plural = "felixnodes",
    root = "FelixNodeResource",
    category = "felix",
    doc = "A node as its felix agent registered it: address, AS, labels, tunnel addresses (Calico Node). Written by the agent.",
    derive = "PartialEq",
    printcolumn(
        name = "Address",
        type_ = "string",
        json_path = ".spec.bgp.ipv4Address"
    ),
    printcolumn(
        name = "IPv6 Address",
        type_ = "string",
        json_path = ".spec.bgp.ipv6Address"
    ),
    printcolumn(name = "AS", type_ = "integer", json_path = ".spec.bgp.asNumber"),
    printcolumn(
        name = "RR Cluster",
        type_ = "string",
        json_path = ".spec.bgp.routeReflectorClusterID"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[schemars(
    description = "What the node's agent registered: its BGP address and AS, labels, tunnel addresses."
)]
pub struct FelixNode {
    /// The node's BGP identity.
    pub bgp: NodeBgp,
    /// The node's labels (Calico keeps them in metadata).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// This node's VXLAN tunnel device address (Calico's field name).
    #[serde(
        default,
        rename = "ipv4VXLANTunnelAddr",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "ipam::crd::optional_ipv4_schema")]
    pub ipv4_vxlan_tunnel_addr: Option<Ipv4Addr>,
    /// MAC address of the node's VXLAN device (Calico's field name).
    #[serde(
        default,
        rename = "vxlanTunnelMACAddr",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(regex(pattern = "^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$"))]
    pub vxlan_tunnel_mac_addr: Option<String>,
    /// The node's IPIP tunnel address (`tunl0`).
    #[serde(
        default,
        rename = "ipv4IPIPTunnelAddr",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "ipam::crd::optional_ipv4_schema")]
    pub ipv4_ipip_tunnel_addr: Option<Ipv4Addr>,
}

/// The BGP part of a node (Calico `NodeBGPSpec`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeBgp {
    /// The node's address with its prefix length (the subnet tells other
    /// nodes whether it is directly reachable).
    #[serde(rename = "ipv4Address")]
    #[schemars(schema_with = "ipam::crd::ipv4_interface_schema")]
    pub ipv4_address: ipnet::Ipv4Net,
    /// The node's IPv6 address with its prefix length (dual stack): the
    /// other nodes peer with it for IPv6 unicast and route this node's
    /// IPv6 blocks via it (Calico's `ipv6Address`).
    #[serde(
        default,
        rename = "ipv6Address",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "ipam::crd::optional_ipv6_interface_schema")]
    pub ipv6_address: Option<ipnet::Ipv6Net>,
    /// The node's AS; the cluster's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub as_number: Option<u32>,
    /// Set on route reflectors (Calico `routeReflectorClusterID`).
    #[serde(
        default,
        rename = "routeReflectorClusterID",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "ipam::crd::optional_ipv4_schema")]
    pub route_reflector_cluster_id: Option<Ipv4Addr>,
}

impl FelixNode {
    /// The node's address.
    pub fn address(&self) -> IpAddr {
        IpAddr::V4(self.bgp.ipv4_address.addr())
    }

    /// The node's IPv6 address, when it is dual stack.
    pub fn address_v6(&self) -> Option<IpAddr> {
        self.bgp.ipv6_address.map(|a| IpAddr::V6(a.addr()))
    }

    /// Whether `address` is one of this node's (IPv4 or IPv6): a BGP next
    /// hop naming this node.
    pub fn has_address(&self, address: IpAddr) -> bool {
        self.address() == address || self.address_v6() == Some(address)
    }

    /// Whether `other` is on one of this node's directly connected subnets
    /// (the IPv4 one, or the IPv6 one for an IPv6 address).
    pub fn same_subnet(&self, other: IpAddr) -> bool {
        IpNet::V4(self.bgp.ipv4_address.trunc()).contains(&other)
            || self
                .bgp
                .ipv6_address
                .is_some_and(|a| IpNet::V6(a.trunc()).contains(&other))
    }

    /// The node's VXLAN end as registered: tunnel address, MAC and underlay
    /// address; `None` unless both tunnel fields are there (and the MAC
    /// reads as one).
    pub fn vtep(&self) -> Option<VxlanPeer> {
        Some(VxlanPeer {
            vtep_address: self.ipv4_vxlan_tunnel_addr?,
            vtep_mac: parse_mac(self.vxlan_tunnel_mac_addr.as_deref()?)?,
            node_address: self.bgp.ipv4_address.addr(),
        })
    }
}

/// `66:0a:…` (six hex octets, `:`-separated) as bytes.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// A MAC as Calico writes it: lower-case hex octets joined by `:`.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Cluster-wide BGP settings (Calico `BGPConfigurationSpec`, the fields
/// felix uses); also the `BGPConfiguration` custom resource
/// ([`BgpConfigurationResource`]); the agents read the one named `default`.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, CustomResource, JsonSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
// Each printcolumn repeats `type_ = …`, which clippy takes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "crd.felix-rs.io",
    version = "v1",
    kind = "BGPConfiguration",
    plural = "bgpconfigurations",
    root = "BgpConfigurationResource",
    category = "felix",
    doc = "Cluster-wide BGP settings; felix reads the object named default (Calico BGPConfiguration).",
    derive = "PartialEq",
    derive = "Default",
    printcolumn(
        name = "Mesh",
        type_ = "boolean",
        json_path = ".spec.nodeToNodeMeshEnabled"
    ),
    printcolumn(name = "AS", type_ = "integer", json_path = ".spec.asNumber"),
    printcolumn(name = "Port", type_ = "integer", json_path = ".spec.listenPort"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[schemars(
    description = "Cluster-wide BGP settings; unset fields take the agent file's [bgp] values, then the defaults."
)]
pub struct BgpConfigurationSpec {
    /// Full mesh between all nodes (Calico's default: on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_to_node_mesh_enabled: Option<bool>,
    /// The cluster's AS for nodes that set none (64512).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub as_number: Option<u32>,
    /// The BGP port every node listens on (179).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub listen_port: Option<u16>,
}

impl BgpConfigurationSpec {
    /// `other`'s fields where set, else ours (the datastore object
    /// overrides the local file).
    pub fn overridden_by(&self, other: &BgpConfigurationSpec) -> BgpConfigurationSpec {
        BgpConfigurationSpec {
            node_to_node_mesh_enabled: other
                .node_to_node_mesh_enabled
                .or(self.node_to_node_mesh_enabled),
            as_number: other.as_number.or(self.as_number),
            listen_port: other.listen_port.or(self.listen_port),
        }
    }

    pub fn mesh(&self) -> bool {
        self.node_to_node_mesh_enabled.unwrap_or(true)
    }

    pub fn asn(&self) -> u32 {
        self.as_number.unwrap_or(DEFAULT_AS_NUMBER)
    }

    pub fn port(&self) -> u16 {
        self.listen_port.unwrap_or(179)
    }
}

/// Calico `BGPPeer` spec; also the `BGPPeer` custom resource
/// ([`BgpPeerResource`]). The CEL rules refuse at `kubectl apply` the peers
/// the agent would skip with a warning (`agent::peering`).
#[derive(
    Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, CustomResource, KubeSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
// Each printcolumn repeats `type_ = …`, which clippy takes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "crd.felix-rs.io",
    version = "v1",
    kind = "BGPPeer",
    plural = "bgppeers",
    root = "BgpPeerResource",
    category = "felix",
    doc = "An explicit BGP peering for some or all nodes, towards an address or towards the nodes a selector picks (Calico BGPPeer).",
    derive = "PartialEq",
    derive = "Default",
    printcolumn(name = "Peer IP", type_ = "string", json_path = ".spec.peerIP"),
    printcolumn(name = "AS", type_ = "integer", json_path = ".spec.asNumber"),
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.node"),
    printcolumn(
        name = "Node Selector",
        type_ = "string",
        json_path = ".spec.nodeSelector"
    ),
    printcolumn(
        name = "Peer Selector",
        type_ = "string",
        json_path = ".spec.peerSelector"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[schemars(
    description = "Which nodes peer (node, nodeSelector, or every node when neither is set) with whom (peerIP and asNumber, or peerSelector)."
)]
#[x_kube(
    validation = Rule::new("has(self.peerIP) != has(self.peerSelector)").message("exactly one of peerIP and peerSelector must be set"),
    validation = Rule::new("!has(self.peerIP) || has(self.asNumber)").message("peerIP needs asNumber"),
    validation = Rule::new("!(has(self.node) && has(self.nodeSelector))").message("node and nodeSelector cannot both be set")
)]
pub struct BgpPeerSpec {
    /// Only this node has the peering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The nodes that have the peering (a selector, see `selector`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<String>,
    /// The peer's address (with `asNumber`).
    #[serde(default, rename = "peerIP", skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "ipam::crd::optional_ip_schema")]
    pub peer_ip: Option<IpAddr>,
    /// The peer's AS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub as_number: Option<u32>,
    /// Peer with every node this selects instead of `peerIP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_selector: Option<String>,
    /// TCP MD5 password (Calico takes a secretKeyRef; felix the value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// `UseNodeIP` (default: connect from the node address) or `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_address: Option<SourceAddress>,
    /// Graceful-restart time asked of this peer, e.g. `"120s"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$"))]
    pub max_restart_time: Option<String>,
    /// GTSM hop count (RFC 5082).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_security: Option<u8>,
}

/// Calico `sourceAddress`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SourceAddress {
    UseNodeIP,
    None,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn calico_field_names_round_trip() {
        let peer: BgpPeerSpec = serde_json::from_str(
            r#"{"peerIP":"10.0.0.254","asNumber":65000,"nodeSelector":"rack == 'r1'",
                "password":"s3cret","sourceAddress":"None","maxRestartTime":"90s","ttlSecurity":1}"#,
        )
        .unwrap();
        assert_eq!(peer.peer_ip, Some("10.0.0.254".parse().unwrap()));
        assert_eq!(peer.as_number, Some(65000));
        assert_eq!(peer.source_address, Some(SourceAddress::None));
        assert_eq!(peer.ttl_security, Some(1));
        let back: BgpPeerSpec =
            serde_json::from_str(&serde_json::to_string(&peer).unwrap()).unwrap();
        assert_eq!(back, peer);

        let node: FelixNode = serde_json::from_str(
            r#"{"bgp":{"ipv4Address":"10.0.0.1/24","asNumber":64512,
                "routeReflectorClusterID":"10.255.0.1"},"labels":{"rack":"r1"},
                "ipv4VXLANTunnelAddr":"10.244.0.1","vxlanTunnelMACAddr":"66:00:00:00:00:01"}"#,
        )
        .unwrap();
        assert_eq!(node.address(), "10.0.0.1".parse::<IpAddr>().unwrap());
        assert!(node.same_subnet("10.0.0.200".parse().unwrap()));
        assert!(!node.same_subnet("10.0.1.2".parse().unwrap()));
        let json = serde_json::to_value(&node).unwrap();
        assert_eq!(json["bgp"]["routeReflectorClusterID"], "10.255.0.1");
        assert_eq!(json["ipv4VXLANTunnelAddr"], "10.244.0.1");
    }

    #[test]
    fn vtep_needs_address_and_a_well_formed_mac() {
        let mut node: FelixNode = serde_json::from_str(
            r#"{"bgp":{"ipv4Address":"10.0.1.3/24"},"ipv4VXLANTunnelAddr":"10.244.0.128",
                "vxlanTunnelMACAddr":"66:0a:ff:00:01:02"}"#,
        )
        .unwrap();
        let vtep = node.vtep().unwrap();
        assert_eq!(
            vtep.vtep_address,
            "10.244.0.128".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(vtep.vtep_mac, [0x66, 0x0a, 0xff, 0, 1, 2]);
        assert_eq!(vtep.node_address, "10.0.1.3".parse::<Ipv4Addr>().unwrap());
        assert_eq!(format_mac(vtep.vtep_mac), "66:0a:ff:00:01:02");
        for bad in [
            "66:0a:ff:00:01",
            "66:0a:ff:00:01:02:03",
            "66-0a-ff-00-01-02",
            "6:0a:ff:00:01:022",
            "zz:0a:ff:00:01:02",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
        node.vxlan_tunnel_mac_addr = Some("nonsense".into());
        assert_eq!(node.vtep(), None);
        node.vxlan_tunnel_mac_addr = None;
        assert_eq!(node.vtep(), None);
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<BgpPeerSpec>(r#"{"peerIp":"10.0.0.1"}"#).is_err());
        assert!(
            serde_json::from_str::<BgpConfigurationSpec>(r#"{"nodeToNodeMesh":true}"#).is_err()
        );
    }

    #[test]
    fn datastore_configuration_overrides_the_file() {
        let file = BgpConfigurationSpec {
            node_to_node_mesh_enabled: Some(true),
            as_number: Some(65001),
            listen_port: None,
        };
        let store = BgpConfigurationSpec {
            node_to_node_mesh_enabled: Some(false),
            ..Default::default()
        };
        let merged = file.overridden_by(&store);
        assert!(!merged.mesh());
        assert_eq!(merged.asn(), 65001);
        assert_eq!(merged.port(), 179);
        assert!(BgpConfigurationSpec::default().mesh());
    }
}
