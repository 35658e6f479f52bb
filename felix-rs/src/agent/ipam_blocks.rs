//! The agent's [`BlockSource`] over the `ipam` allocator: the blocks whose
//! affinity to this node is confirmed, and the node's tunnel addresses
//! (Calico's `vxlan-tunnel-addr-NODE` / `ipip-tunnel-addr-NODE` handles).

use super::run::BlockSource;
use ipam::{Allocator, TunnelKind};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

/// Blocks and tunnel addresses from IPAM.
pub struct IpamBlocks {
    pub allocator: Arc<Allocator>,
}

#[async_trait::async_trait]
impl BlockSource for IpamBlocks {
    async fn affine_blocks(&self, node: &str) -> Result<BTreeSet<IpNet>, String> {
        self.allocator
            .blocks_affine_to(node)
            .await
            .map(|b| b.into_iter().collect())
            .map_err(|e| e.to_string())
    }

    async fn tunnel_address(
        &self,
        node: &str,
        kind: TunnelKind,
        labels: &BTreeMap<String, String>,
    ) -> Result<Option<Ipv4Addr>, String> {
        self.allocator
            .ensure_tunnel_address(node, kind, Some(labels.clone()))
            .await
            .map_err(|e| e.to_string())
    }

    async fn usage(&self, node: &str) -> Result<Vec<ipam::PoolUsage>, String> {
        self.allocator
            .usage_of(node)
            .await
            .map_err(|e| e.to_string())
    }
}
