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

/// The kernel route protocol number on every route felix owns (the node's
/// route to each pod address, and everything the agent's route programmer
/// installs), so that felix finds its own routes and never touches others.
/// Calico's Felix uses 80 as well; iproute2 names none of the numbers from
/// 19 to 41 nor 44 to 98. `felix_rs` asserts its own constant agrees.
pub const ROUTE_PROTOCOL: u8 = 80;
