//! Block affinities (Calico's `BlockAffinity`): which node a block belongs
//! to. A claim goes `pending` (affinity written, block not yet) ->
//! `confirmed` (block written), or straight to `confirmed` on a store with
//! transactions (affinity and block in one write); a release goes `pendingDeletion` (no new
//! allocations) -> deleted. The block's own `affinity` field is the truth;
//! these objects are the per-node index the agent watches to originate its
//! blocks over BGP.

use ipnet::IpNet;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where an affinity is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AffinityState {
    Pending,
    Confirmed,
    PendingDeletion,
}

/// The stored spec, with Calico's field names; also the `BlockAffinity`
/// custom resource ([`BlockAffinityResource`]). Written by felix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, CustomResource, JsonSchema)]
#[serde(rename_all = "camelCase")]
// Each printcolumn repeats `type_ = …`, which clippy takes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "crd.felix-rs.io",
    version = "v1",
    kind = "BlockAffinity",
    plural = "blockaffinities",
    root = "BlockAffinityResource",
    category = "felix",
    doc = "Which node a block belongs to: the per-node index the agents watch (Calico BlockAffinity). Written by felix.",
    derive = "PartialEq",
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.node"),
    printcolumn(name = "CIDR", type_ = "string", json_path = ".spec.cidr"),
    printcolumn(name = "State", type_ = "string", json_path = ".spec.state"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[schemars(description = "Which node owns which block, and where the claim is in its life.")]
pub struct BlockAffinitySpec {
    /// pending -> confirmed on a claim; pendingDeletion while given back.
    pub state: AffinityState,
    /// The node's name (its `FelixNode`).
    #[schemars(length(min = 1, max = 253))]
    pub node: String,
    /// The block's CIDR.
    #[schemars(schema_with = "crate::crd::cidr_schema")]
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
