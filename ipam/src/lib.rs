//! `ipam` — Calico-style block IPAM for felix-rs: pools, /26 blocks with node
//! affinity, handles, garbage collection, over a compare-and-swap
//! [`store::Datastore`] (SQLite embedded; etcd and Kubernetes CRDs).
//!
//! Entry point: [`allocator::Allocator`]. The model and the write order
//! that keeps it crash-safe are described in docs/ipam.md.

pub mod affinity;
pub mod allocator;
pub mod block;
pub(crate) mod block_writes;
pub(crate) mod claim_ahead;
pub(crate) mod codec;
pub mod crd;
pub mod gc;
pub mod handle;
pub mod names;
pub mod pool;
pub mod pool_index;
pub(crate) mod read_cache;
pub mod selector;
pub mod store;
pub mod tunnel;

pub use allocator::{
    Allocator, AllocatorConfig, AssignIpRequest, Assigned, AutoAssignRequest, IpamError, PoolUsage,
    ReleaseOutcome, ReleaseRequest,
};
pub use block::{AllocationAttrs, BlockRelease, Lease};
pub use gc::{CheckReport, GcReport, LiveSet};
pub use tunnel::TunnelKind;
#[cfg(feature = "testing")]
pub mod testing;
