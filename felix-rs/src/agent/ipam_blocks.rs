//! The agent's [`BlockSource`] over the `ipam` allocator: the blocks whose
//! affinity to this node is confirmed, and the encapsulation of the pool a
//! learned prefix comes from (Calico's `vxlanMode` / `ipipMode`).

use super::forwarding::Encapsulation;
use super::run::BlockSource;
use ipam::pool::EncapMode;
use ipam::Allocator;
use ipnet::IpNet;
use std::collections::BTreeSet;
use std::sync::Arc;

/// Blocks and pools from IPAM.
pub struct IpamBlocks {
    pub allocator: Arc<Allocator>,
}

/// A pool's modes as one [`Encapsulation`]; VXLAN wins when both are set
/// (Calico refuses such pools; felix does not hand out both).
pub fn encapsulation_of(vxlan: EncapMode, ipip: EncapMode) -> Encapsulation {
    match (vxlan, ipip) {
        (EncapMode::Always, _) => Encapsulation::VxlanAlways,
        (EncapMode::CrossSubnet, _) => Encapsulation::VxlanCrossSubnet,
        (EncapMode::Never, EncapMode::Always) => Encapsulation::IpipAlways,
        (EncapMode::Never, EncapMode::CrossSubnet) => Encapsulation::IpipCrossSubnet,
        (EncapMode::Never, EncapMode::Never) => Encapsulation::None,
    }
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

    async fn encapsulation(&self, prefix: IpNet) -> Encapsulation {
        match self.allocator.pools().await {
            Ok(pools) => pools
                .iter()
                .find(|p| p.spec.cidr.contains(&prefix))
                .map(|p| encapsulation_of(p.spec.vxlan_mode, p.spec.ipip_mode))
                .unwrap_or_default(),
            Err(e) => {
                tracing::warn!(%prefix, "reading pools: {e}; no encapsulation assumed");
                Encapsulation::None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_modes_map_to_one_encapsulation() {
        use EncapMode::*;
        assert_eq!(encapsulation_of(Never, Never), Encapsulation::None);
        assert_eq!(
            encapsulation_of(CrossSubnet, Never),
            Encapsulation::VxlanCrossSubnet
        );
        assert_eq!(encapsulation_of(Always, Never), Encapsulation::VxlanAlways);
        assert_eq!(
            encapsulation_of(Never, CrossSubnet),
            Encapsulation::IpipCrossSubnet
        );
        assert_eq!(encapsulation_of(Never, Always), Encapsulation::IpipAlways);
    }
}
