//! The decision process (RFC 4271 §9.1.2) over the candidate paths of one
//! prefix, with the customary tie-breaks and ECMP multipath selection.
//!
//! Selection is by elimination, as RFC 4271 §9.1.2.2 describes it: each
//! step keeps only the candidates best at that step. This is what makes the
//! MED step correct even though "lower MED within the same neighbour AS"
//! is not a total order.

use super::{PeerId, Route, RouteSource};
use crate::wire::Origin;
use std::cmp::Reverse;
use std::net::{IpAddr, Ipv4Addr};

/// Resolves next hops: whether one is reachable and at what IGP cost (RFC
/// 4271 §9.1.2.1 and §9.1.2.2 e). Plug in the routing table here.
pub trait NextHopResolver {
    /// `None`: unreachable, the path is not a candidate. `Some(cost)`:
    /// reachable at that interior cost (lower is better).
    fn resolve(&self, next_hop: IpAddr) -> Option<u32>;
}

/// Every next hop is reachable at cost 0: right for directly connected
/// peers, which is what felix's peers are.
#[derive(Clone, Copy, Debug, Default)]
pub struct AllReachable;

impl NextHopResolver for AllReachable {
    fn resolve(&self, _next_hop: IpAddr) -> Option<u32> {
        Some(0)
    }
}

/// What the decision process needs to know about the peer a path came from.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SourceFacts {
    pub internal: bool,
    pub router_id: Ipv4Addr,
    pub address: IpAddr,
}

/// Settings of the decision process.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DecisionSettings {
    pub local_asn: u32,
    pub router_id: Ipv4Addr,
    pub default_local_pref: u32,
    pub always_compare_med: bool,
    pub max_paths: usize,
}

/// A path with every value the steps compare, computed once.
struct Candidate {
    index: usize,
    local: bool,
    local_pref: u32,
    as_path_len: usize,
    origin: u8,
    neighbour_as: u32,
    med: u32,
    external: bool,
    igp_cost: u32,
    router_id: Ipv4Addr,
    cluster_list_len: usize,
    /// `None` for local routes: sorts first.
    peer_address: Option<IpAddr>,
    path_id: Option<u32>,
    peer: Option<PeerId>,
    next_hop: Option<IpAddr>,
}

impl Candidate {
    /// Order of the final tie-breaks (steps g–j and a last one for
    /// determinism): smaller is better.
    fn tie_break_key(&self) -> impl Ord {
        (
            self.router_id,
            self.cluster_list_len,
            self.peer_address,
            self.path_id,
            self.peer,
        )
    }
}

fn origin_rank(o: Origin) -> u8 {
    match o {
        Origin::Igp => 0,
        Origin::Egp => 1,
        Origin::Incomplete => 2,
    }
}

/// Keeps the candidates whose `key` is the smallest.
fn keep_min<K: Ord>(cands: &mut Vec<Candidate>, key: impl Fn(&Candidate) -> K) {
    if let Some(best) = cands.iter().map(&key).min() {
        cands.retain(|c| key(c) == best);
    }
}

/// Runs the decision process over `routes` (one prefix's candidates).
/// Returns indices into `routes`: the best path first, then the other
/// multipath members (at most `max_paths` in all); empty if no path is
/// usable.
pub(crate) fn select(
    routes: &[Route],
    settings: &DecisionSettings,
    resolver: &dyn NextHopResolver,
    source: impl Fn(PeerId) -> Option<SourceFacts>,
) -> Vec<usize> {
    let mut cands: Vec<Candidate> = routes
        .iter()
        .enumerate()
        .filter_map(|(index, route)| {
            let attrs = &route.attrs;
            let (local, facts) = match route.source() {
                RouteSource::Local => (true, None),
                RouteSource::Peer(p) => (false, Some(source(p)?)),
            };
            // §9.1.2.1: an unresolvable next hop excludes the path. Local
            // routes without a next hop are "this router".
            let igp_cost = match attrs.next_hop {
                Some(nh) if !local => resolver.resolve(nh)?,
                _ => 0,
            };
            Some(Candidate {
                index,
                local,
                local_pref: attrs.effective_local_pref(settings.default_local_pref),
                as_path_len: attrs.as_path.len(),
                origin: origin_rank(attrs.origin),
                // §9.1.2.2 c: a path without a first AS (originated in our
                // AS, or starting with an AS_SET) has the local AS.
                neighbour_as: attrs.as_path.first_as().unwrap_or(settings.local_asn),
                med: attrs.effective_med(),
                external: facts.is_some_and(|f| !f.internal),
                igp_cost,
                // RFC 4456 §9: ORIGINATOR_ID stands in for the BGP Identifier.
                router_id: attrs
                    .originator_id
                    .or(facts.map(|f| f.router_id))
                    .unwrap_or(settings.router_id),
                cluster_list_len: attrs.cluster_list.len(),
                peer_address: facts.map(|f| f.address),
                path_id: route.path_id(),
                peer: match route.source() {
                    RouteSource::Peer(p) => Some(p),
                    RouteSource::Local => None,
                },
                next_hop: attrs.next_hop,
            })
        })
        .collect();
    if cands.is_empty() {
        return Vec::new();
    }

    // Weight: a locally originated path beats every learned one.
    keep_min(&mut cands, |c| !c.local);
    // §9.1.2.1 / §9.1.1: highest degree of preference (LOCAL_PREF).
    keep_min(&mut cands, |c| Reverse(c.local_pref));
    // §9.1.2.2 a: shortest AS_PATH.
    keep_min(&mut cands, |c| c.as_path_len);
    // §9.1.2.2 b: lowest ORIGIN.
    keep_min(&mut cands, |c| c.origin);
    // §9.1.2.2 c: drop a path if another from the same neighbour AS (or
    // any, with always-compare-med) has a lower MED.
    if settings.always_compare_med {
        keep_min(&mut cands, |c| c.med);
    } else {
        let beaten: Vec<bool> = cands
            .iter()
            .map(|c| {
                cands
                    .iter()
                    .any(|o| o.neighbour_as == c.neighbour_as && o.med < c.med)
            })
            .collect();
        let mut beaten = beaten.into_iter();
        cands.retain(|_| !beaten.next().unwrap_or(false));
    }
    // §9.1.2.2 d: eBGP-learned over iBGP-learned.
    keep_min(&mut cands, |c| !c.external);
    // §9.1.2.2 e: lowest interior cost to the next hop.
    keep_min(&mut cands, |c| c.igp_cost);

    // What remains is the multipath pool; steps f onward only order it.
    // §9.1.2.2 f (RFC 4456 §9: ORIGINATOR_ID as router id), shortest
    // CLUSTER_LIST (RFC 4456 §9), §9.1.2.2 g lowest peer address.
    cands.sort_by_key(Candidate::tie_break_key);
    let Some(best) = cands.first() else {
        return Vec::new();
    };
    let best_med = best.med;
    let mut chosen: Vec<usize> = Vec::new();
    let mut next_hops: Vec<Option<IpAddr>> = Vec::new();
    for c in &cands {
        if chosen.len() >= settings.max_paths.max(1) {
            break;
        }
        // Multipath members also share the MED (the pool may hold paths of
        // different neighbour ASes with different MEDs) and add a distinct
        // next hop.
        if !chosen.is_empty() && (c.med != best_med || next_hops.contains(&c.next_hop)) {
            continue;
        }
        chosen.push(c.index);
        next_hops.push(c.next_hop);
    }
    chosen
}
