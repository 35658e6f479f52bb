//! `felix_cni` — the CNI plugin kubelet's runtime calls for every pod
//! (CNI spec 1.1), as a library shared by two binaries:
//!
//! - `felix-cni` builds the pod's interface the Calico way ([`pod_iface`])
//!   with addresses from the node agent;
//! - `felix-ipam` only hands out addresses, for other plugins' standard
//!   `ipam` delegation.
//!
//! [`spec`] is the CNI layer (verbs, environment, versions, result and
//! error objects), [`config`] the network configuration, [`api`] the wire
//! protocol to the agent (`felix_rs::pod_api` serves it), [`netlink`] and
//! [`netns`] the kernel access, [`plugin`] the verbs themselves.

pub mod api;
pub mod config;
pub mod netlink;
pub mod netns;
pub mod plugin;
pub mod pod_iface;
pub mod spec;
pub mod timings;

/// The kernel route protocol number on every route felix owns (the node's
/// route to each pod address, and everything the agent's route programmer
/// installs), so that felix finds its own routes and never touches others.
/// 102 (0x66, ASCII `f`): not the kernel's (0–4), not named in iproute2's
/// `rt_protos`, not FRR's (186–198), BIRD's (12) or Calico's Felix's (80),
/// so felix-rs and Calico can share a node. `felix_rs::routes` has the same
/// number as `FELIX_ROUTE_PROTOCOL`; a test there asserts they agree.
pub const ROUTE_PROTOCOL: u8 = 102;
