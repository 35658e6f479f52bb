//! Block affinities (Calico's `BlockAffinity`): which node a block belongs
//! to. A claim goes `pending` (affinity written, block not yet) ->
//! `confirmed` (block written); a release goes `pendingDeletion` (no new
//! allocations) -> deleted. The block's own `affinity` field is the truth;
//! these objects are the per-node index the agent watches to originate its
//! blocks over BGP.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Where an affinity is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AffinityState {
    Pending,
    Confirmed,
    PendingDeletion,
}

/// The stored spec, with Calico's field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockAffinitySpec {
    pub state: AffinityState,
    pub node: String,
    pub cidr: IpNet,
}

/// An affinity as read from the store (the name is
/// [`crate::names::affinity_name`] of node and block).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockAffinity {
    pub name: String,
    #[serde(flatten)]
    pub spec: BlockAffinitySpec,
}
