//! Routing information bases (see docs/bgp-rib.md).
//!
//! [`Rib`] keeps per-peer Adj-RIBs-In, the Loc-RIB and per-peer
//! Adj-RIBs-Out (RFC 4271 §3.2) consistent: every operation (an UPDATE, a
//! peer going up or down, a local route) returns the [`Changes`] it causes,
//! best-path changes for the route programmer and per-peer routes to
//! announce or withdraw. Pure and synchronous: no I/O, no clock.
//!
//! - [`decision`]: the RFC 4271 §9.1.2 decision process and ECMP.
//! - [`prefix_list`]: import/export prefix filters.
//! - `export` (private): split horizon, route reflection (RFC 4456) and
//!   the attribute rewrites on export.

mod attrs;
pub mod decision;
mod export;
pub mod hash;
pub mod pack;
pub mod prefix_list;
mod prefix_table;
mod table;

pub use attrs::PathAttributes;
pub use decision::{AllReachable, NextHopResolver};
pub use prefix_list::{Action, PrefixList, PrefixListError, PrefixRule};
pub use table::{
    family_of, AdjRibOutChanges, BestPathChange, Changes, MaxPrefixesExceeded, OutRoute, PeerId,
    PeerInfo, PeerPolicy, Rib, RibConfig, RibError, Route, RouteSource,
};
