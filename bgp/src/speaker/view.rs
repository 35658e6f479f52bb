//! Read-only snapshots of a running speaker, for operators: what
//! `felix bgp status` and `felix bgp routes` show, and what the control
//! socket carries as JSON.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The speaker and every configured peer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpeakerStatus {
    /// Local AS number.
    pub asn: u32,
    /// Local BGP identifier.
    pub router_id: Ipv4Addr,
    /// Address the speaker accepts connections on, if it listens.
    pub listen: Option<SocketAddr>,
    /// One entry per configured neighbour.
    pub peers: Vec<PeerStatus>,
}

/// One neighbour: session state and route counts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The neighbour's address.
    pub address: IpAddr,
    /// The neighbour's AS number.
    pub asn: u32,
    /// FSM state: "Idle", "Connect", "Active", "OpenSent", "OpenConfirm" or
    /// "Established".
    pub state: String,
    /// Seconds since the session became Established (None when it is not).
    pub uptime_secs: Option<u64>,
    /// The neighbour is a route-reflector client of this speaker.
    pub rr_client: bool,
    /// Prefixes received from the neighbour.
    pub received: u64,
    /// Prefixes received and accepted by the import policy.
    pub accepted: u64,
    /// Prefixes advertised to the neighbour.
    pub advertised: u64,
    /// Why the last session went down, if it did.
    pub last_error: Option<String>,
    /// A dynamic neighbour, created for a connection from a listen range
    /// (it goes away with its session).
    #[serde(default)]
    pub dynamic: bool,
    /// The neighbour has sent End-of-RIB (RFC 4724 §2) for every family of
    /// the current session: its initial table is complete.
    #[serde(default)]
    pub end_of_rib: bool,
}

/// One prefix in the RIB with all its paths.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouteView {
    /// The prefix.
    pub prefix: IpNet,
    /// Its paths, best first.
    pub paths: Vec<PathView>,
}

/// One path to a prefix.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PathView {
    /// Selected as best path.
    pub best: bool,
    /// NEXT_HOP (None for locally originated paths without one).
    pub next_hop: Option<IpAddr>,
    /// Neighbour the path was learned from (None when originated locally).
    pub from: Option<IpAddr>,
    /// AS_PATH as text, e.g. "65001 65002" (empty for a local path).
    pub as_path: String,
    /// ORIGIN: "IGP", "EGP" or "incomplete".
    pub origin: String,
    /// LOCAL_PREF, if present.
    pub local_pref: Option<u32>,
    /// MULTI_EXIT_DISC, if present.
    pub med: Option<u32>,
    /// Communities as text, e.g. "65000:100".
    pub communities: Vec<String>,
    /// Kept across a peer's graceful restart, not yet refreshed.
    pub stale: bool,
}
