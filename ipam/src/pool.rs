//! IP pools (Calico's `IPPool`): where blocks are carved from, and which
//! nodes may carve them.

use std::collections::BTreeMap;
use std::fmt;

use ipnet::IpNet;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::selector::Selector;

/// Default block prefix length for IPv4 pools (Calico's).
pub const DEFAULT_BLOCK_SIZE_V4: u8 = 26;
/// Default block prefix length for IPv6 pools (Calico's).
pub const DEFAULT_BLOCK_SIZE_V6: u8 = 122;

/// Encapsulation mode for IP-in-IP and VXLAN (Calico's values).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum EncapMode {
    Always,
    CrossSubnet,
    #[default]
    Never,
}

impl std::str::FromStr for EncapMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "always" => Ok(EncapMode::Always),
            "crosssubnet" => Ok(EncapMode::CrossSubnet),
            "never" => Ok(EncapMode::Never),
            _ => Err(format!("{s:?}: expected Always, CrossSubnet or Never")),
        }
    }
}

impl fmt::Display for EncapMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EncapMode::Always => "Always",
            EncapMode::CrossSubnet => "CrossSubnet",
            EncapMode::Never => "Never",
        })
    }
}

/// What addresses from a pool may be used for (Calico's `allowedUses`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AllowedUse {
    #[default]
    Workload,
    Tunnel,
}

fn default_selector() -> String {
    "all()".to_owned()
}

fn default_uses() -> Vec<AllowedUse> {
    vec![AllowedUse::Workload, AllowedUse::Tunnel]
}

/// The stored spec of a pool, with Calico's field names; also the
/// `IPPool` custom resource ([`IpPoolResource`]). The CEL rules repeat
/// [`IpPoolSpec::validate`]'s family checks so that `kubectl apply` refuses
/// what felix would refuse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, CustomResource, KubeSchema)]
#[serde(rename_all = "camelCase")]
// Each printcolumn repeats `type_ = …`, which clippy takes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "crd.felix-rs.io",
    version = "v1",
    kind = "IPPool",
    plural = "ippools",
    root = "IpPoolResource",
    category = "felix",
    doc = "A range of pod addresses that felix carves into blocks (Calico IPPool).",
    derive = "PartialEq",
    printcolumn(name = "CIDR", type_ = "string", json_path = ".spec.cidr"),
    printcolumn(name = "Block", type_ = "integer", json_path = ".spec.blockSize"),
    printcolumn(name = "IPIP", type_ = "string", json_path = ".spec.ipipMode"),
    printcolumn(name = "VXLAN", type_ = "string", json_path = ".spec.vxlanMode"),
    printcolumn(name = "NAT", type_ = "boolean", json_path = ".spec.natOutgoing"),
    printcolumn(name = "Disabled", type_ = "boolean", json_path = ".spec.disabled"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[schemars(
    description = "The pool: its CIDR, block size, encapsulation and which nodes may use it. blockSize is required (Calico defaults it)."
)]
#[x_kube(
    validation = Rule::new("self.cidr.contains(':') ? (self.blockSize >= 116 && self.blockSize <= 128) : (self.blockSize >= 20 && self.blockSize <= 32)").message("blockSize must be 20-32 for an IPv4 pool, 116-128 for an IPv6 pool"),
    validation = Rule::new("!self.cidr.contains(':') || !has(self.ipipMode) || self.ipipMode == 'Never'").message("ipipMode must be Never for an IPv6 pool"),
    validation = Rule::new("!has(self.ipipMode) || !has(self.vxlanMode) || self.ipipMode == 'Never' || self.vxlanMode == 'Never'").message("ipipMode and vxlanMode cannot both be enabled"),
    validation = Rule::new("!has(self.allowedUses) || size(self.allowedUses) > 0").message("a pool needs at least one allowed use")
)]
pub struct IpPoolSpec {
    #[schemars(schema_with = "crate::crd::cidr_schema")]
    pub cidr: IpNet,
    /// Prefix length of the blocks carved from the pool.
    #[schemars(range(min = 20, max = 128))]
    pub block_size: u8,
    /// IP-in-IP towards other nodes: Always, CrossSubnet (only to nodes on
    /// another subnet) or Never. IPv4 pools only.
    #[serde(default)]
    pub ipip_mode: EncapMode,
    /// VXLAN towards other nodes: Always, CrossSubnet or Never.
    #[serde(default)]
    pub vxlan_mode: EncapMode,
    /// Masquerade traffic from the pool's pods to destinations outside every
    /// pool, as the node leaves (the agent's `inet felix` nftables table).
    #[serde(default)]
    pub nat_outgoing: bool,
    /// No new blocks or addresses from this pool; existing ones stay.
    #[serde(default)]
    pub disabled: bool,
    /// Which nodes may take blocks from the pool: `all()`, `has(k)`,
    /// `!has(k)`, `k == 'v'`, `k != 'v'`, `k in {'a'}`, `k not in {'a'}`,
    /// joined by `&&`.
    #[serde(default = "default_selector")]
    pub node_selector: String,
    /// What the addresses may be used for: Workload (pods), Tunnel.
    #[serde(default = "default_uses")]
    pub allowed_uses: Vec<AllowedUse>,
}

/// A pool as read from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpPool {
    pub name: String,
    pub spec: IpPoolSpec,
}

/// Why a pool is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("{0:?} is not a CIDR (expected e.g. 10.244.0.0/16 or fd00:10:244::/56)")]
    MalformedCidr(String),
    #[error("{cidr} has host bits set; did you mean {network}?")]
    HostBitsSet { cidr: IpNet, network: IpNet },
    #[error("block size /{size} is out of range for {family} (allowed /{min}../{max})")]
    BlockSizeOutOfRange {
        size: u8,
        family: &'static str,
        min: u8,
        max: u8,
    },
    #[error("pool {cidr} is smaller than one block (/{block_size})")]
    SmallerThanBlock { cidr: IpNet, block_size: u8 },
    #[error("pool {cidr} overlaps pool {other:?} ({other_cidr})")]
    Overlaps {
        cidr: IpNet,
        other: String,
        other_cidr: IpNet,
    },
    /// The index holds an entry for a pool that is not stored: its create
    /// is in progress, or a create or delete was interrupted between its
    /// two writes (Kubernetes, docs/ipam.md "Pool overlap").
    #[error(
        "pool {cidr} overlaps {other_cidr}, reserved in the pool index by pool {other:?}, which is not stored \
         (being created, or an interrupted create or delete); if no create of {other:?} is running, \
         `felix ipam pools delete {other}` frees it"
    )]
    OverlapsReserved {
        cidr: IpNet,
        other: String,
        other_cidr: IpNet,
    },
    #[error("ipipMode must be Never for IPv6 pool {0}")]
    IpipOnIpv6(IpNet),
    #[error("ipipMode and vxlanMode cannot both be enabled")]
    BothEncaps,
    #[error("pool needs at least one allowed use")]
    NoAllowedUses,
    #[error("pool name {0:?} is not a valid Kubernetes object name")]
    BadName(String),
    #[error(transparent)]
    Selector(#[from] crate::selector::SelectorError),
}

/// Parses a CIDR, refusing host bits.
pub fn parse_cidr(text: &str) -> Result<IpNet, PoolError> {
    let cidr: IpNet = text
        .trim()
        .parse()
        .map_err(|_| PoolError::MalformedCidr(text.to_owned()))?;
    if cidr.trunc() != cidr {
        return Err(PoolError::HostBitsSet {
            cidr,
            network: cidr.trunc(),
        });
    }
    Ok(cidr)
}

impl IpPoolSpec {
    /// A pool over `cidr` with Calico's defaults.
    pub fn new(cidr: IpNet) -> IpPoolSpec {
        let block_size = match cidr {
            IpNet::V4(_) => DEFAULT_BLOCK_SIZE_V4,
            IpNet::V6(_) => DEFAULT_BLOCK_SIZE_V6,
        };
        IpPoolSpec {
            cidr,
            block_size,
            ipip_mode: EncapMode::Never,
            vxlan_mode: EncapMode::Never,
            nat_outgoing: false,
            disabled: false,
            node_selector: default_selector(),
            allowed_uses: default_uses(),
        }
    }

    /// Checks the pool on its own (overlap needs the other pools:
    /// [`check_overlap`]).
    pub fn validate(&self) -> Result<(), PoolError> {
        if self.cidr.trunc() != self.cidr {
            return Err(PoolError::HostBitsSet {
                cidr: self.cidr,
                network: self.cidr.trunc(),
            });
        }
        let (family, min, max) = match self.cidr {
            IpNet::V4(_) => ("IPv4", 20, 32),
            IpNet::V6(_) => ("IPv6", 116, 128),
        };
        if !(min..=max).contains(&self.block_size) {
            return Err(PoolError::BlockSizeOutOfRange {
                size: self.block_size,
                family,
                min,
                max,
            });
        }
        if self.cidr.prefix_len() > self.block_size {
            return Err(PoolError::SmallerThanBlock {
                cidr: self.cidr,
                block_size: self.block_size,
            });
        }
        if matches!(self.cidr, IpNet::V6(_)) && self.ipip_mode != EncapMode::Never {
            return Err(PoolError::IpipOnIpv6(self.cidr));
        }
        if self.ipip_mode != EncapMode::Never && self.vxlan_mode != EncapMode::Never {
            return Err(PoolError::BothEncaps);
        }
        if self.allowed_uses.is_empty() {
            return Err(PoolError::NoAllowedUses);
        }
        Selector::parse(&self.node_selector)?;
        Ok(())
    }

    /// True when this pool may give addresses to a node with `labels`.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        Selector::parse(&self.node_selector).is_ok_and(|s| s.matches(labels))
    }

    /// Number of blocks the pool holds (saturating).
    pub fn block_count(&self) -> u128 {
        let bits = u32::from(self.block_size - self.cidr.prefix_len());
        1u128.checked_shl(bits).unwrap_or(u128::MAX)
    }

    /// Number of addresses in one block.
    pub fn block_len(&self) -> u32 {
        1u32 << (u32::from(self.cidr.max_prefix_len() - self.block_size))
    }

    /// The block of this pool that holds `addr`.
    pub fn block_of(&self, addr: std::net::IpAddr) -> Option<IpNet> {
        if !self.cidr.contains(&addr) {
            return None;
        }
        IpNet::new(addr, self.block_size).ok().map(|n| n.trunc())
    }
}

/// Refuses `cidr` when it overlaps one of `existing` (name, cidr).
pub fn check_overlap<'a>(
    cidr: IpNet,
    existing: impl IntoIterator<Item = (&'a str, IpNet)>,
) -> Result<(), PoolError> {
    for (name, other) in existing {
        if other.contains(&cidr) || cidr.contains(&other) {
            return Err(PoolError::Overlaps {
                cidr,
                other: name.to_owned(),
                other_cidr: other,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(matches!(
            parse_cidr("10.244.0.0/33"),
            Err(PoolError::MalformedCidr(_))
        ));
        assert!(matches!(
            parse_cidr("10.244.1.0/16"),
            Err(PoolError::HostBitsSet { .. })
        ));
        let mut p = IpPoolSpec::new(parse_cidr("10.244.0.0/16").unwrap());
        assert_eq!(p.block_size, 26);
        p.validate().unwrap();
        assert_eq!(p.block_count(), 1024);
        assert_eq!(p.block_len(), 64);
        p.block_size = 19;
        assert!(matches!(
            p.validate(),
            Err(PoolError::BlockSizeOutOfRange { .. })
        ));
        let mut small = IpPoolSpec::new(parse_cidr("10.0.0.0/28").unwrap());
        assert!(matches!(
            small.validate(),
            Err(PoolError::SmallerThanBlock { .. })
        ));
        small.block_size = 28;
        small.validate().unwrap();
        let mut v6 = IpPoolSpec::new(parse_cidr("fd00::/48").unwrap());
        assert_eq!(v6.block_size, 122);
        v6.validate().unwrap();
        v6.ipip_mode = EncapMode::Always;
        assert!(matches!(v6.validate(), Err(PoolError::IpipOnIpv6(_))));
        let mut bad_sel = IpPoolSpec::new(parse_cidr("10.1.0.0/16").unwrap());
        bad_sel.node_selector = "zone == 'a' || zone == 'b'".into();
        assert!(matches!(bad_sel.validate(), Err(PoolError::Selector(_))));
    }

    #[test]
    fn overlap() {
        let a = parse_cidr("10.244.0.0/16").unwrap();
        assert!(check_overlap(parse_cidr("10.244.3.0/24").unwrap(), [("a", a)]).is_err());
        assert!(check_overlap(parse_cidr("10.0.0.0/8").unwrap(), [("a", a)]).is_err());
        assert!(check_overlap(parse_cidr("10.245.0.0/16").unwrap(), [("a", a)]).is_ok());
    }
}
