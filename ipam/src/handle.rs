//! IPAM handles (Calico's `IPAMHandle`): an owner (container id +
//! interface) -> the blocks it holds addresses in, and how many. Release by
//! owner reads the handle to find the blocks, so it works after a crash.
//!
//! A handle is written *before* the block on allocation and *after* it on
//! release, so it may over-count (harmless: a release visits a block that
//! holds nothing for it) but never under-count (which would leak an
//! address on release). See docs/ipam.md, "Write order".

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The stored spec, with Calico's field names; also the `IPAMHandle`
/// custom resource ([`IpamHandleResource`]). Written by felix.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, CustomResource, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
// Each printcolumn repeats `type_ = …`, which clippy takes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "crd.felix-rs.io",
    version = "v1",
    kind = "IPAMHandle",
    plural = "ipamhandles",
    root = "IpamHandleResource",
    category = "felix",
    doc = "An address owner (a pod's attachment) and how many addresses it holds in which blocks (Calico IPAMHandle). Written by felix.",
    derive = "PartialEq",
    derive = "Default",
    printcolumn(name = "Handle", type_ = "string", json_path = ".spec.handleID"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[schemars(description = "An address owner and its address count per block.")]
pub struct IpamHandleSpec {
    /// The owner's exact id (`felix-cni:NETWORK:CONTAINER:IFNAME`); the
    /// object's name is derived from it.
    #[serde(rename = "handleID")]
    pub handle_id: String,
    /// Block CIDR -> addresses the handle holds there.
    #[serde(default)]
    pub block: BTreeMap<String, u64>,
}

impl IpamHandleSpec {
    /// Total addresses counted.
    pub fn total(&self) -> u64 {
        self.block.values().sum()
    }

    /// Adds `n` to the count for `block`.
    pub fn add(&mut self, block: &str, n: u64) {
        *self.block.entry(block.to_owned()).or_insert(0) += n;
    }

    /// Removes up to `n` from the count for `block`, dropping it at zero.
    pub fn remove(&mut self, block: &str, n: u64) {
        if let Some(c) = self.block.get_mut(block) {
            *c = c.saturating_sub(n);
            if *c == 0 {
                self.block.remove(block);
            }
        }
    }
}
