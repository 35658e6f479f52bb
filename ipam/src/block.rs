//! IPAM blocks (Calico's `IPAMBlock`): a fixed CIDR carved from a pool,
//! affine to one node, with one slot per address.
//!
//! `allocations[i]` is `Some(attribute index)` when address `i` of the
//! block is in use; `unallocated` lists the free ordinals, least recently
//! released first (a released address goes to the back, so it is reused as
//! late as possible). Every allocation takes the next block
//! `sequenceNumber`, remembered per ordinal, so a release that names the
//! sequence it was given can be refused when the address has since gone to
//! another owner.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::codec::corrupt;
use crate::store::{Object, StoreError};

/// Who holds an address: the handle, and free-form attributes (Calico keeps
/// `namespace`, `pod`, `node` under `secondary`; felix adds `interface`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AllocationAttribute {
    /// The owner's IPAM handle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle_id: Option<String>,
    /// `namespace`, `pod`, `node`, `interface` of the owner.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secondary: BTreeMap<String, String>,
}

/// The attributes a caller gives an allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllocationAttrs {
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub node: Option<String>,
    pub interface: Option<String>,
    /// Calico's `type` attribute: what the address is for when it is not a
    /// pod's (`vxlanTunnelAddress`, `ipipTunnelAddress`).
    pub kind: Option<String>,
}

impl AllocationAttrs {
    fn secondary(&self) -> BTreeMap<String, String> {
        [
            ("namespace", &self.namespace),
            ("pod", &self.pod),
            ("node", &self.node),
            ("interface", &self.interface),
            ("type", &self.kind),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_owned(), v.clone())))
        .collect()
    }
}

/// The stored spec of a block, with Calico's field names (`emptySince` is
/// felix's: when the block last became empty, unix seconds); also the
/// `IPAMBlock` custom resource ([`IpamBlockResource`]). Written by felix
/// only: operators read it (`felix ipam show`), never edit it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, CustomResource, JsonSchema)]
#[serde(rename_all = "camelCase")]
// Each printcolumn repeats `type_ = …`, which clippy takes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "crd.felix-rs.io",
    version = "v1",
    kind = "IPAMBlock",
    plural = "ipamblocks",
    root = "IpamBlockResource",
    category = "felix",
    doc = "A block of pod addresses, affine to one node, with one slot per address (Calico IPAMBlock). Written by felix.",
    derive = "PartialEq",
    printcolumn(name = "CIDR", type_ = "string", json_path = ".spec.cidr"),
    printcolumn(name = "Affinity", type_ = "string", json_path = ".spec.affinity"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[schemars(
    description = "The block's addresses and who holds them; felix's bookkeeping, not to be edited."
)]
pub struct IpamBlockSpec {
    /// The block's CIDR (a /26 of an IPv4 pool by default).
    #[schemars(schema_with = "crate::crd::cidr_schema")]
    pub cidr: IpNet,
    /// `host:NODE`, or none for a block whose node is gone.
    #[serde(default)]
    #[schemars(regex(pattern = "^host:"))]
    pub affinity: Option<String>,
    /// One slot per address of the block: index into `attributes`, or null
    /// when free.
    pub allocations: Vec<Option<usize>>,
    /// The free ordinals, least recently released first.
    pub unallocated: Vec<usize>,
    /// Who holds the addresses (referenced from `allocations`).
    #[serde(default)]
    pub attributes: Vec<AllocationAttribute>,
    /// Sequence number the next allocation takes.
    #[serde(default)]
    pub sequence_number: u64,
    /// Ordinal -> sequence number of its allocation (a release naming an
    /// older sequence is refused).
    #[serde(default)]
    pub sequence_number_for_allocation: BTreeMap<String, u64>,
    /// felix's: unix seconds since which the block has been empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_since: Option<u64>,
}

/// One address given out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    pub ip: IpAddr,
    pub block: IpNet,
    /// The allocation's sequence number; hand it back to `release_ips` to
    /// make a late release safe.
    pub sequence: u64,
}

/// An address in use, as `check` and `show` see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InUse {
    pub ip: IpAddr,
    pub handle_id: Option<String>,
    pub attributes: BTreeMap<String, String>,
    pub sequence: u64,
}

/// What a release asks for besides the address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReleaseCheck {
    /// Release only if the address is held by this handle.
    pub handle: Option<String>,
    /// Release only if the address still carries this sequence number.
    pub sequence: Option<u64>,
}

/// The outcome of releasing one address in a block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "camelCase")]
pub enum BlockRelease {
    Released {
        handle_id: Option<String>,
    },
    /// Nothing to do: the address was free.
    NotAllocated,
    /// Refused: the address is held by another allocation than the caller's.
    Refused {
        reason: String,
    },
}

/// The `host:` prefix of Calico's affinity strings.
pub fn host_affinity(node: &str) -> String {
    format!("host:{node}")
}

impl IpamBlockSpec {
    /// An empty block.
    pub fn new(cidr: IpNet, node: Option<&str>, now: u64) -> IpamBlockSpec {
        let len = block_len(&cidr);
        IpamBlockSpec {
            cidr,
            affinity: node.map(host_affinity),
            allocations: vec![None; len],
            unallocated: (0..len).collect(),
            attributes: Vec::new(),
            sequence_number: 0,
            sequence_number_for_allocation: BTreeMap::new(),
            empty_since: Some(now),
        }
    }

    /// Decodes and checks a stored block.
    pub fn from_object(obj: &Object) -> Result<IpamBlockSpec, StoreError> {
        let spec: IpamBlockSpec = crate::codec::decode(obj)?;
        spec.check_invariants().map_err(|r| corrupt(obj, r))?;
        Ok(spec)
    }

    fn check_invariants(&self) -> Result<(), String> {
        if self.cidr.trunc() != self.cidr {
            return Err(format!("cidr {} has host bits set", self.cidr));
        }
        let len = block_len(&self.cidr);
        if self.allocations.len() != len {
            return Err(format!(
                "{} allocation slots for a block of {len}",
                self.allocations.len()
            ));
        }
        let mut free = vec![false; len];
        for &o in &self.unallocated {
            match free.get_mut(o) {
                Some(seen) if !*seen => *seen = true,
                Some(_) => return Err(format!("ordinal {o} listed twice as free")),
                None => return Err(format!("free ordinal {o} out of range")),
            }
        }
        for (o, slot) in self.allocations.iter().enumerate() {
            match slot {
                Some(a) if *a >= self.attributes.len() => {
                    return Err(format!("ordinal {o} names missing attribute {a}"))
                }
                Some(_) if free[o] => return Err(format!("ordinal {o} is both used and free")),
                None if !free[o] => return Err(format!("ordinal {o} is neither used nor free")),
                _ => {}
            }
        }
        Ok(())
    }

    /// The node this block is affine to.
    pub fn affine_node(&self) -> Option<&str> {
        self.affinity
            .as_deref()
            .and_then(|a| a.strip_prefix("host:"))
    }

    pub fn size(&self) -> usize {
        self.allocations.len()
    }

    pub fn free(&self) -> usize {
        self.unallocated.len()
    }

    pub fn in_use_count(&self) -> usize {
        self.size() - self.free()
    }

    /// Affine to `node` and not full: `node` may allocate here without
    /// borrowing.
    pub fn has_room_for(&self, node: &str) -> bool {
        self.affine_node() == Some(node) && self.free() > 0
    }

    pub fn is_empty(&self) -> bool {
        self.in_use_count() == 0
    }

    /// The ordinal of `ip` in this block.
    pub fn ordinal(&self, ip: IpAddr) -> Option<usize> {
        if !self.cidr.contains(&ip) {
            return None;
        }
        let off = match (ip, self.cidr.network()) {
            (IpAddr::V4(a), IpAddr::V4(n)) => u128::from(u32::from(a) - u32::from(n)),
            (IpAddr::V6(a), IpAddr::V6(n)) => u128::from(a) - u128::from(n),
            _ => return None,
        };
        usize::try_from(off).ok()
    }

    /// The address at `ordinal`.
    pub fn ip_at(&self, ordinal: usize) -> IpAddr {
        match self.cidr.network() {
            IpAddr::V4(n) => IpAddr::V4((u32::from(n) + ordinal as u32).into()),
            IpAddr::V6(n) => IpAddr::V6((u128::from(n) + ordinal as u128).into()),
        }
    }

    fn attribute_index(&mut self, handle: &str, attrs: &AllocationAttrs) -> usize {
        let wanted = AllocationAttribute {
            handle_id: Some(handle.to_owned()),
            secondary: attrs.secondary(),
        };
        if let Some(i) = self.attributes.iter().position(|a| *a == wanted) {
            return i;
        }
        self.attributes.push(wanted);
        self.attributes.len() - 1
    }

    fn take(&mut self, ordinal: usize, attr: usize) -> Lease {
        self.sequence_number += 1;
        self.allocations[ordinal] = Some(attr);
        self.sequence_number_for_allocation
            .insert(ordinal.to_string(), self.sequence_number);
        self.empty_since = None;
        Lease {
            ip: self.ip_at(ordinal),
            block: self.cidr,
            sequence: self.sequence_number,
        }
    }

    /// Allocates up to `n` free addresses, least recently released first.
    pub fn allocate(&mut self, n: usize, handle: &str, attrs: &AllocationAttrs) -> Vec<Lease> {
        let n = n.min(self.unallocated.len());
        if n == 0 {
            return Vec::new();
        }
        let attr = self.attribute_index(handle, attrs);
        let ordinals: Vec<usize> = self.unallocated.drain(..n).collect();
        ordinals.into_iter().map(|o| self.take(o, attr)).collect()
    }

    /// Allocates `ip`; `Err` names the holder when it is in use.
    pub fn assign(
        &mut self,
        ip: IpAddr,
        handle: &str,
        attrs: &AllocationAttrs,
    ) -> Result<Lease, Option<String>> {
        let Some(ordinal) = self.ordinal(ip) else {
            return Err(None);
        };
        let Some(pos) = self.unallocated.iter().position(|&o| o == ordinal) else {
            return Err(self.holder(ordinal));
        };
        self.unallocated.remove(pos);
        let attr = self.attribute_index(handle, attrs);
        Ok(self.take(ordinal, attr))
    }

    fn holder(&self, ordinal: usize) -> Option<String> {
        self.allocations
            .get(ordinal)
            .copied()
            .flatten()
            .and_then(|a| self.attributes.get(a))
            .and_then(|a| a.handle_id.clone())
    }

    /// The allocation at `ip`, if any.
    pub fn in_use_at(&self, ip: IpAddr) -> Option<InUse> {
        let ordinal = self.ordinal(ip)?;
        let attr = self.allocations.get(ordinal).copied().flatten()?;
        let a = self.attributes.get(attr).cloned().unwrap_or_default();
        Some(InUse {
            ip,
            handle_id: a.handle_id,
            attributes: a.secondary,
            sequence: self
                .sequence_number_for_allocation
                .get(&ordinal.to_string())
                .copied()
                .unwrap_or(0),
        })
    }

    /// Every address in use.
    pub fn in_use(&self) -> Vec<InUse> {
        (0..self.size())
            .filter_map(|o| self.in_use_at(self.ip_at(o)))
            .collect()
    }

    fn free_ordinal(&mut self, ordinal: usize, now: u64) {
        self.allocations[ordinal] = None;
        self.sequence_number_for_allocation
            .remove(&ordinal.to_string());
        self.unallocated.push(ordinal);
        self.compact_attributes();
        if self.is_empty() {
            self.empty_since = Some(now);
        }
    }

    /// Drops attributes no allocation refers to, renumbering the rest.
    fn compact_attributes(&mut self) {
        let mut used = vec![false; self.attributes.len()];
        for a in self.allocations.iter().flatten() {
            if let Some(u) = used.get_mut(*a) {
                *u = true;
            }
        }
        if used.iter().all(|u| *u) {
            return;
        }
        let mut new_index = vec![0; used.len()];
        let mut next = 0;
        for (i, u) in used.iter().enumerate() {
            new_index[i] = next;
            if *u {
                next += 1;
            }
        }
        let mut i = 0;
        self.attributes.retain(|_| {
            let keep = used[i];
            i += 1;
            keep
        });
        for a in self.allocations.iter_mut().flatten() {
            *a = new_index[*a];
        }
    }

    /// Releases `ip` if `check` allows it.
    pub fn release(&mut self, ip: IpAddr, check: &ReleaseCheck, now: u64) -> BlockRelease {
        let Some(ordinal) = self.ordinal(ip) else {
            return BlockRelease::NotAllocated;
        };
        let Some(current) = self.in_use_at(ip) else {
            return BlockRelease::NotAllocated;
        };
        if let Some(h) = &check.handle {
            if current.handle_id.as_deref() != Some(h) {
                return BlockRelease::Refused {
                    reason: format!(
                        "{ip} is held by handle {:?}, not {h:?}",
                        current.handle_id.unwrap_or_default()
                    ),
                };
            }
        }
        if let Some(seq) = check.sequence {
            if current.sequence != seq {
                return BlockRelease::Refused {
                    reason: format!(
                        "{ip} was reallocated (sequence {} now, release names {seq})",
                        current.sequence
                    ),
                };
            }
        }
        self.free_ordinal(ordinal, now);
        BlockRelease::Released {
            handle_id: current.handle_id,
        }
    }

    /// Releases every address held by `handle`; returns them.
    pub fn release_handle(&mut self, handle: &str, now: u64) -> Vec<IpAddr> {
        let held: Vec<usize> = (0..self.size())
            .filter(|&o| self.holder(o).as_deref() == Some(handle))
            .collect();
        held.into_iter()
            .map(|o| {
                self.free_ordinal(o, now);
                self.ip_at(o)
            })
            .collect()
    }

    /// Number of addresses `handle` holds here.
    pub fn count_for(&self, handle: &str) -> usize {
        (0..self.size())
            .filter(|&o| self.holder(o).as_deref() == Some(handle))
            .count()
    }
}

/// Addresses in a block of `cidr` (blocks are at most 2^12 addresses wide).
pub fn block_len(cidr: &IpNet) -> usize {
    1usize << (cidr.max_prefix_len() - cidr.prefix_len()).min(16)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn block() -> IpamBlockSpec {
        IpamBlockSpec::new("10.0.0.0/30".parse().unwrap(), Some("n1"), 0)
    }

    #[test]
    fn allocate_release_lru_and_sequence() {
        let mut b = block();
        let attrs = AllocationAttrs::default();
        let l = b.allocate(2, "h1", &attrs);
        assert_eq!(
            l.iter().map(|l| l.ip.to_string()).collect::<Vec<_>>(),
            ["10.0.0.0", "10.0.0.1"]
        );
        assert_eq!(b.free(), 2);
        // Released first -> reused last.
        let r = b.release(
            l[0].ip,
            &ReleaseCheck {
                handle: Some("h1".into()),
                sequence: Some(l[0].sequence),
            },
            5,
        );
        assert_eq!(
            r,
            BlockRelease::Released {
                handle_id: Some("h1".into())
            }
        );
        let next = b.allocate(3, "h2", &attrs);
        assert_eq!(
            next.iter().map(|l| l.ip.to_string()).collect::<Vec<_>>(),
            ["10.0.0.2", "10.0.0.3", "10.0.0.0"]
        );
        // The late release of h1's old lease on 10.0.0.0 is refused.
        let late = b.release(
            l[0].ip,
            &ReleaseCheck {
                handle: None,
                sequence: Some(l[0].sequence),
            },
            6,
        );
        assert!(matches!(late, BlockRelease::Refused { .. }));
        let wrong = b.release(
            l[0].ip,
            &ReleaseCheck {
                handle: Some("h1".into()),
                sequence: None,
            },
            6,
        );
        assert!(matches!(wrong, BlockRelease::Refused { .. }));
        assert_eq!(b.count_for("h2"), 3);
        assert_eq!(b.release_handle("h2", 7).len(), 3);
        assert_eq!(b.count_for("h1"), 1);
        assert_eq!(b.attributes.len(), 1);
        b.check_invariants().unwrap();
        assert_eq!(
            b.release("10.0.0.2".parse().unwrap(), &ReleaseCheck::default(), 8),
            BlockRelease::NotAllocated
        );
        b.release_handle("h1", 9);
        assert!(b.is_empty());
        assert_eq!(b.empty_since, Some(9));
    }

    #[test]
    fn assign_specific() {
        let mut b = block();
        let ip = "10.0.0.2".parse().unwrap();
        b.assign(ip, "h", &AllocationAttrs::default()).unwrap();
        assert_eq!(
            b.assign(ip, "x", &AllocationAttrs::default()),
            Err(Some("h".into()))
        );
        assert_eq!(
            b.assign(
                "10.0.1.0".parse().unwrap(),
                "x",
                &AllocationAttrs::default()
            ),
            Err(None)
        );
        b.check_invariants().unwrap();
    }

    #[test]
    fn invariants_catch_corruption() {
        let mut b = block();
        b.unallocated.push(0);
        assert!(b.check_invariants().is_err());
        let mut b = block();
        b.unallocated.pop();
        assert!(b.check_invariants().is_err());
        let mut b = block();
        b.allocations.pop();
        assert!(b.check_invariants().is_err());
    }
}
