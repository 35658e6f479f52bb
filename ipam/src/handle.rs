//! IPAM handles (Calico's `IPAMHandle`): an owner (container id +
//! interface) -> the blocks it holds addresses in, and how many. Release by
//! owner reads the handle to find the blocks, so it works after a crash.
//!
//! A handle is written *before* the block on allocation and *after* it on
//! release, so it may over-count (harmless: a release visits a block that
//! holds nothing for it) but never under-count (which would leak an
//! address on release). See docs/ipam.md, "Write order".

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The stored spec, with Calico's field names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamHandleSpec {
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
