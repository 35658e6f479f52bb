//! The node agent, `felix node run` (issue 6): registers the node, builds
//! its BGP peerings from the datastore (Calico's mesh / BGPPeer rules),
//! originates its IPAM blocks, turns learned routes into the desired
//! kernel state for the route programmer, and answers `felix status`,
//! `/metrics`, `/livez`, `/readyz`. See docs/agent.md.

pub mod cli;
pub mod config;
pub mod follow;
pub mod forwarding;
pub mod http;
pub mod ipam_blocks;
pub mod kernel_routes;
pub mod nat_outgoing;
pub mod peering;
pub mod resources;
pub mod run;
pub mod status;
