//! The RIB proper: per-peer Adj-RIBs-In, the Loc-RIB and per-peer
//! Adj-RIBs-Out (RFC 4271 §3.2), kept consistent by one synchronous
//! [`Rib`] value.

use super::attrs::PathAttributes;
use super::decision::{self, AllReachable, DecisionSettings, NextHopResolver, SourceFacts};
use super::export::{self, ExportSettings};
use super::prefix_list::PrefixList;
use crate::wire::error::{cease_subcode, code};
use crate::wire::{
    Afi, Community, Family, LargeCommunity, Nlri, Notification, Safi, SessionParams, Update,
};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use thiserror::Error;

/// Handle of a peer registered with a [`Rib`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(u32);

impl PeerId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Local settings of the RIB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RibConfig {
    pub local_asn: u32,
    /// Our BGP Identifier.
    pub router_id: Ipv4Addr,
    /// Our cluster id as a route reflector (RFC 4456 §7); the router id
    /// when `None`.
    pub cluster_id: Option<Ipv4Addr>,
    /// The LOCAL_PREF of paths that carry none (eBGP-learned ones always:
    /// RFC 4271 §5.1.5 has it ignored when received from an external peer).
    pub default_local_pref: u32,
    /// Compare MED between paths from different neighbour ASes too.
    pub always_compare_med: bool,
    /// ECMP: how many equal best paths to hand to the route programmer (1:
    /// no multipath).
    pub max_paths: usize,
}

impl RibConfig {
    /// Defaults: cluster id = router id, LOCAL_PREF 100, MED compared only
    /// within a neighbour AS, no multipath.
    pub fn new(local_asn: u32, router_id: Ipv4Addr) -> Self {
        RibConfig {
            local_asn,
            router_id,
            cluster_id: None,
            default_local_pref: 100,
            always_compare_med: false,
            max_paths: 1,
        }
    }

    pub fn cluster_id(&self) -> Ipv4Addr {
        self.cluster_id.unwrap_or(self.router_id)
    }
}

/// Per-peer import and export policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerPolicy {
    /// Prefixes accepted from the peer; the rest are dropped (as withdrawn).
    pub import: PrefixList,
    /// Prefixes advertised to the peer.
    pub export: PrefixList,
    /// Maximum prefixes accepted per address family; exceeding it is a
    /// [`RibError::MaxPrefixes`] (Cease, RFC 4486 §4).
    pub max_prefixes: Option<u32>,
    /// Set NEXT_HOP to our address on routes sent to this iBGP peer (eBGP
    /// peers always get it).
    pub next_hop_self: bool,
    /// Send the MED of our own routes to this eBGP peer (a MED learned from
    /// another AS is never passed on, RFC 4271 §5.1.4).
    pub send_med: bool,
    /// Communities added to every route sent to the peer (RFC 1997).
    pub export_communities: Vec<Community>,
    /// Large communities added to every route sent to the peer (RFC 8092).
    pub export_large_communities: Vec<LargeCommunity>,
}

/// A peer as the RIB knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's address: the last decision tie-break (RFC 4271 §9.1.2.2 g).
    pub address: IpAddr,
    pub asn: u32,
    /// The peer's BGP Identifier; [`Rib::peer_up`] sets it from the OPEN.
    pub router_id: Ipv4Addr,
    /// iBGP (same AS) rather than eBGP.
    pub internal: bool,
    /// A route-reflector client of ours (RFC 4456 §6); iBGP only.
    pub rr_client: bool,
    /// Our IPv4 address on this session: the NEXT_HOP when we set it to self.
    pub local_ipv4: Option<Ipv4Addr>,
    /// Our IPv6 address on this session, for IPv6 routes' next hop.
    pub local_ipv6: Option<Ipv6Addr>,
    pub policy: PeerPolicy,
}

impl PeerInfo {
    /// A peer with no router id yet, not a client, default policy, and our
    /// session address unknown.
    pub fn new(address: IpAddr, asn: u32, internal: bool) -> Self {
        PeerInfo {
            address,
            asn,
            router_id: Ipv4Addr::UNSPECIFIED,
            internal,
            rr_client: false,
            local_ipv4: None,
            local_ipv6: None,
            policy: PeerPolicy::default(),
        }
    }
}

/// Where a path came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteSource {
    /// Originated by this router ([`Rib::originate`]).
    Local,
    Peer(PeerId),
}

/// One path to a prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The prefix and, with ADD-PATH, the sender's path id (RFC 7911).
    pub nlri: Nlri,
    pub source: RouteSource,
    /// Shared with the other prefixes of the same UPDATE.
    pub attrs: Arc<PathAttributes>,
    /// Kept across a graceful restart of `source`, awaiting refresh (RFC
    /// 4724 §4.2).
    pub stale: bool,
}

impl Route {
    /// Same source, path id and attributes (the stale flag aside).
    pub fn same_path(&self, other: &Route) -> bool {
        self.source == other.source && self.nlri == other.nlri && self.attrs == other.attrs
    }
}

/// The new best-path set of one prefix, for the route programmer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BestPathChange {
    pub prefix: IpNet,
    /// The best path first, then the other ECMP members; empty when the
    /// prefix is no longer reachable.
    pub paths: Vec<Route>,
}

/// One route to advertise to a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutRoute {
    pub nlri: Nlri,
    /// After export rewrites; shared between prefixes with the same source
    /// attributes within one [`Changes`].
    pub attrs: Arc<PathAttributes>,
}

/// What to send one peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdjRibOutChanges {
    /// Prefixes to announce (new or with new attributes).
    pub announce: Vec<OutRoute>,
    /// Prefixes to withdraw.
    pub withdraw: Vec<Nlri>,
}

impl AdjRibOutChanges {
    pub fn is_empty(&self) -> bool {
        self.announce.is_empty() && self.withdraw.is_empty()
    }
}

/// The result of one RIB operation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Prefixes whose best-path set changed, in prefix order.
    pub best: Vec<BestPathChange>,
    /// Adj-RIB-Out changes per established peer.
    pub out: BTreeMap<PeerId, AdjRibOutChanges>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.best.is_empty() && self.out.values().all(AdjRibOutChanges::is_empty)
    }

    /// What to send `peer` (empty if nothing).
    pub fn for_peer(&self, peer: PeerId) -> AdjRibOutChanges {
        self.out.get(&peer).cloned().unwrap_or_default()
    }
}

/// A peer went over its prefix limit: the caller must close the session
/// with this NOTIFICATION (RFC 4486 §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPrefixesExceeded {
    pub peer: PeerId,
    pub family: Family,
    pub limit: u32,
}

impl MaxPrefixesExceeded {
    /// Cease / Maximum Number of Prefixes Reached with AFI (2), SAFI (1) and
    /// the limit (4) as data (RFC 4486 §4).
    pub fn notification(&self) -> Notification {
        let mut data = Vec::with_capacity(7);
        data.extend_from_slice(&self.family.afi.0.to_be_bytes());
        data.push(self.family.safi.0);
        data.extend_from_slice(&self.limit.to_be_bytes());
        Notification::new(code::CEASE, cease_subcode::MAX_PREFIXES_REACHED, data)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum RibError {
    #[error("no peer {0:?} in the RIB")]
    UnknownPeer(PeerId),
    /// The UPDATE was not applied; close the session with
    /// [`MaxPrefixesExceeded::notification`], then call [`Rib::peer_down`].
    #[error("peer {:?} exceeded its limit of {} {} prefixes", .0.peer, .0.limit, .0.family)]
    MaxPrefixes(MaxPrefixesExceeded),
}

struct PeerState {
    info: PeerInfo,
    /// Families of the established session; `None` while down.
    up: Option<Vec<Family>>,
    /// Keys of this peer's paths in the Loc-RIB table (post-import-policy
    /// Adj-RIB-In).
    adj_in: BTreeSet<Nlri>,
    /// Paths per family: [IPv4 unicast, IPv6 unicast].
    counts: [usize; 2],
    /// What the peer has been told (RFC 4271 §3.2).
    adj_out: BTreeMap<Nlri, Arc<PathAttributes>>,
}

impl PeerState {
    fn exports(&self, family: Family) -> bool {
        self.up.as_ref().is_some_and(|f| f.contains(&family))
    }
}

/// All paths of one prefix and the current best set.
#[derive(Default)]
struct PrefixEntry {
    routes: Vec<Route>,
    best: Vec<Route>,
}

/// The unicast family of a prefix.
pub fn family_of(prefix: &IpNet) -> Family {
    match prefix {
        IpNet::V4(_) => Family::IPV4_UNICAST,
        IpNet::V6(_) => Family::IPV6_UNICAST,
    }
}

fn family_slot(prefix: &IpNet) -> usize {
    match prefix {
        IpNet::V4(_) => 0,
        IpNet::V6(_) => 1,
    }
}

/// Export results within one operation, so that prefixes sharing source
/// attributes share exported ones too. Holding the source `Arc` keeps its
/// address (the key) from being reused while the cache lives.
#[derive(Default)]
struct ExportCache {
    map: HashMap<ExportKey, (Arc<PathAttributes>, Arc<PathAttributes>)>,
}

/// Source attributes' address, target peer, family slot.
type ExportKey = (usize, PeerId, usize);

/// Adj-RIBs-In, Loc-RIB and Adj-RIBs-Out, with the decision process.
pub struct Rib {
    config: RibConfig,
    peers: Vec<Option<PeerState>>,
    table: BTreeMap<IpNet, PrefixEntry>,
    resolver: Box<dyn NextHopResolver + Send + Sync>,
}

impl Rib {
    /// An empty RIB where every next hop is reachable at cost 0.
    pub fn new(config: RibConfig) -> Self {
        Rib {
            config,
            peers: Vec::new(),
            table: BTreeMap::new(),
            resolver: Box::new(AllReachable),
        }
    }

    pub fn config(&self) -> &RibConfig {
        &self.config
    }

    /// Replaces the next-hop resolver and re-runs the decision process for
    /// every prefix.
    pub fn set_resolver(&mut self, resolver: Box<dyn NextHopResolver + Send + Sync>) -> Changes {
        self.resolver = resolver;
        self.reevaluate_all()
    }

    /// Re-runs the decision process for every prefix (e.g. after the
    /// resolver's answers changed).
    pub fn reevaluate_all(&mut self) -> Changes {
        let prefixes: Vec<IpNet> = self.table.keys().copied().collect();
        self.recompute_all(prefixes)
    }

    /// Registers a peer; it exchanges no routes until [`Rib::peer_up`].
    pub fn add_peer(&mut self, info: PeerInfo) -> PeerId {
        let state = PeerState {
            info,
            up: None,
            adj_in: BTreeSet::new(),
            counts: [0; 2],
            adj_out: BTreeMap::new(),
        };
        match self.peers.iter().position(Option::is_none) {
            Some(i) => {
                self.peers[i] = Some(state);
                PeerId(i as u32)
            }
            None => {
                self.peers.push(Some(state));
                PeerId((self.peers.len() - 1) as u32)
            }
        }
    }

    /// Removes a peer and all its paths; its id may be reused.
    pub fn remove_peer(&mut self, peer: PeerId) -> Result<Changes, RibError> {
        let changes = self.peer_down(peer)?;
        if let Some(slot) = self.peers.get_mut(peer.index()) {
            *slot = None;
        }
        Ok(changes)
    }

    pub fn peer_info(&self, peer: PeerId) -> Option<&PeerInfo> {
        self.peer(peer).map(|p| &p.info)
    }

    /// Replaces a peer's policy. The new export policy is applied at once
    /// (the returned changes); the new import policy applies to UPDATEs
    /// received from now on (ask the peer for a ROUTE-REFRESH to re-filter
    /// what it already sent).
    pub fn set_peer_policy(
        &mut self,
        peer: PeerId,
        policy: PeerPolicy,
    ) -> Result<Changes, RibError> {
        self.peer_mut(peer)?.info.policy = policy;
        let mut changes = Changes::default();
        let mut cache = ExportCache::default();
        let prefixes: Vec<IpNet> = self.table.keys().copied().collect();
        for prefix in prefixes {
            self.export_prefix_to(prefix, peer, &mut changes, &mut cache);
        }
        Ok(changes)
    }

    /// The session with `peer` is established: records its BGP Identifier
    /// and families and returns its full initial Adj-RIB-Out as
    /// announcements (follow them with End-of-RIB, RFC 4724 §4.1).
    pub fn peer_up(
        &mut self,
        peer: PeerId,
        router_id: Ipv4Addr,
        families: &[Family],
    ) -> Result<Changes, RibError> {
        let state = self.peer_mut(peer)?;
        state.info.router_id = router_id;
        state.up = Some(families.to_vec());
        state.adj_out.clear();
        // Stale paths kept from before a graceful restart now compare with
        // the new router id.
        let mut prefixes: Vec<IpNet> = state.adj_in.iter().map(|n| n.prefix).collect();
        prefixes.dedup();
        let mut changes = self.recompute_all(prefixes);
        let mut cache = ExportCache::default();
        let all: Vec<IpNet> = self.table.keys().copied().collect();
        for prefix in all {
            self.export_prefix_to(prefix, peer, &mut changes, &mut cache);
        }
        Ok(changes)
    }

    /// The session went down without graceful restart: every path from the
    /// peer is removed.
    pub fn peer_down(&mut self, peer: PeerId) -> Result<Changes, RibError> {
        let state = self.peer_mut(peer)?;
        state.up = None;
        state.adj_out.clear();
        let keys = std::mem::take(&mut state.adj_in);
        state.counts = [0; 2];
        let mut touched = BTreeSet::new();
        for nlri in keys {
            self.remove_path(RouteSource::Peer(peer), nlri);
            touched.insert(nlri.prefix);
        }
        Ok(self.recompute_all(touched))
    }

    /// The session went down and the peer can restart gracefully (RFC 4724
    /// §4.2): its paths of `preserved` families stay in use, marked stale,
    /// until End-of-RIB or [`Rib::sweep_stale`]; paths of other families
    /// are removed.
    pub fn peer_down_graceful(
        &mut self,
        peer: PeerId,
        preserved: &[Family],
    ) -> Result<Changes, RibError> {
        let state = self.peer_mut(peer)?;
        state.up = None;
        state.adj_out.clear();
        let (keep, drop): (Vec<Nlri>, Vec<Nlri>) = state
            .adj_in
            .iter()
            .partition(|n| preserved.contains(&family_of(&n.prefix)));
        for n in &drop {
            state.adj_in.remove(n);
            if let Some(c) = state.counts.get_mut(family_slot(&n.prefix)) {
                *c = c.saturating_sub(1);
            }
        }
        let source = RouteSource::Peer(peer);
        let mut touched = BTreeSet::new();
        for n in drop {
            self.remove_path(source, n);
            touched.insert(n.prefix);
        }
        for n in keep {
            if let Some(entry) = self.table.get_mut(&n.prefix) {
                for r in entry.routes.iter_mut().chain(entry.best.iter_mut()) {
                    if r.source == source && r.nlri == n {
                        r.stale = true;
                    }
                }
            }
        }
        Ok(self.recompute_all(touched))
    }

    /// Removes the peer's paths of `family` still marked stale: on
    /// End-of-RIB or when the restart (or stale-path) timer expires (RFC
    /// 4724 §4.2).
    pub fn sweep_stale(&mut self, peer: PeerId, family: Family) -> Result<Changes, RibError> {
        let source = RouteSource::Peer(peer);
        let stale: Vec<Nlri> = {
            let state = self.peer(peer).ok_or(RibError::UnknownPeer(peer))?;
            state
                .adj_in
                .iter()
                .filter(|n| family_of(&n.prefix) == family)
                .filter(|n| {
                    self.table.get(&n.prefix).is_some_and(|e| {
                        e.routes
                            .iter()
                            .any(|r| r.source == source && r.nlri == **n && r.stale)
                    })
                })
                .copied()
                .collect()
        };
        let state = self.peer_mut(peer)?;
        for n in &stale {
            state.adj_in.remove(n);
            if let Some(c) = state.counts.get_mut(family_slot(&n.prefix)) {
                *c = c.saturating_sub(1);
            }
        }
        let mut touched = BTreeSet::new();
        for n in stale {
            self.remove_path(source, n);
            touched.insert(n.prefix);
        }
        Ok(self.recompute_all(touched))
    }

    /// Applies one UPDATE from `peer`, decoded under `params` (needed for
    /// the RFC 6793 effective AS path).
    ///
    /// Withdrawals (Withdrawn Routes, MP_UNREACH_NLRI) are applied, then
    /// announcements (NLRI, MP_REACH_NLRI). An UPDATE that RFC 7606 says to
    /// treat as withdraw withdraws everything it announces; an End-of-RIB
    /// sweeps the peer's stale paths of its family. Announcements that fail
    /// the loop checks (RFC 4271 §9.1.2 own AS for eBGP; RFC 4456 §8
    /// ORIGINATOR_ID and CLUSTER_LIST) or the import prefix list replace any
    /// earlier path as a withdrawal would. Only unicast IPv4/IPv6 are kept.
    ///
    /// If the update would take the peer over its prefix limit nothing is
    /// applied and [`RibError::MaxPrefixes`] is returned.
    pub fn apply_update(
        &mut self,
        peer: PeerId,
        update: &Update,
        params: &SessionParams,
    ) -> Result<Changes, RibError> {
        if let Some(family) = update.is_end_of_rib() {
            return self.sweep_stale(peer, family);
        }
        let info = &self.peer(peer).ok_or(RibError::UnknownPeer(peer))?.info;
        let unicast = |f: Family| f.safi == Safi::UNICAST && matches!(f.afi, Afi::IPV4 | Afi::IPV6);

        let mut withdrawals: Vec<Nlri> = update.withdrawn.clone();
        if let Some(u) = update.mp_unreach().filter(|u| unicast(u.family)) {
            withdrawals.extend_from_slice(&u.withdrawn);
        }
        let mut announces: Vec<(Nlri, Arc<PathAttributes>)> = Vec::new();
        let mp_reach = update.mp_reach().filter(|r| unicast(r.family));
        let announced = update
            .nlri
            .iter()
            .chain(mp_reach.iter().flat_map(|r| r.nlri.iter()));
        if update.treat_as_withdraw() {
            withdrawals.extend(announced);
        } else if update.announced_count() > 0 {
            let mut base = PathAttributes::from_update(update, params);
            if !info.internal {
                // RFC 4271 §5.1.5 / RFC 4456 §8: these do not cross AS borders.
                base.local_pref = None;
                base.originator_id = None;
                base.cluster_list.clear();
            }
            let looped = self.is_looped(info, &base);
            let v4_attrs = update.next_hop().map(|nh| {
                let mut a = base.clone();
                a.next_hop = Some(IpAddr::V4(nh));
                Arc::new(a)
            });
            let mp_attrs = mp_reach.and_then(|r| {
                let mut a = base.clone();
                a.set_mp_next_hop(&r.next_hop).then(|| Arc::new(a))
            });
            let mut consider = |nlri: &Nlri, attrs: &Option<Arc<PathAttributes>>| match attrs {
                Some(a) if !looped && info.policy.import.permits(&nlri.prefix) => {
                    announces.push((*nlri, a.clone()))
                }
                _ => withdrawals.push(*nlri),
            };
            for n in &update.nlri {
                consider(n, &v4_attrs);
            }
            for n in mp_reach.iter().flat_map(|r| r.nlri.iter()) {
                consider(n, &mp_attrs);
            }
        }

        self.check_max_prefixes(peer, &withdrawals, &announces)?;

        let source = RouteSource::Peer(peer);
        let mut touched = BTreeSet::new();
        for n in withdrawals {
            if self.forget_adj_in(peer, &n) {
                self.remove_path(source, n);
                touched.insert(n.prefix);
            }
        }
        for (n, attrs) in announces {
            self.remember_adj_in(peer, n);
            let route = Route {
                nlri: n,
                source,
                attrs,
                stale: false,
            };
            let entry = self.table.entry(n.prefix).or_default();
            match entry
                .routes
                .iter_mut()
                .find(|r| r.source == source && r.nlri == n)
            {
                Some(existing) => *existing = route,
                None => entry.routes.push(route),
            }
            touched.insert(n.prefix);
        }
        Ok(self.recompute_all(touched))
    }

    /// Originates `prefix` from this router (replacing an earlier local
    /// path). Local paths win over every learned one (see the decision
    /// process). `attrs.next_hop` `None` means "us": exported with our
    /// session address.
    pub fn originate(&mut self, prefix: IpNet, attrs: PathAttributes) -> Changes {
        let prefix = prefix.trunc();
        let route = Route {
            nlri: Nlri::new(prefix),
            source: RouteSource::Local,
            attrs: Arc::new(attrs),
            stale: false,
        };
        let entry = self.table.entry(prefix).or_default();
        entry.routes.retain(|r| r.source != RouteSource::Local);
        entry.routes.push(route);
        self.recompute_all([prefix])
    }

    /// Stops originating `prefix`.
    pub fn withdraw_local(&mut self, prefix: IpNet) -> Changes {
        let prefix = prefix.trunc();
        self.remove_path(RouteSource::Local, Nlri::new(prefix));
        self.recompute_all([prefix])
    }

    /// The best-path set of `prefix` (best first; empty if unreachable).
    pub fn best(&self, prefix: &IpNet) -> &[Route] {
        self.table.get(prefix).map_or(&[], |e| e.best.as_slice())
    }

    /// Every candidate path of `prefix`.
    pub fn candidates(&self, prefix: &IpNet) -> &[Route] {
        self.table.get(prefix).map_or(&[], |e| e.routes.as_slice())
    }

    /// The Loc-RIB: every reachable prefix with its best-path set.
    pub fn loc_rib(&self) -> impl Iterator<Item = (&IpNet, &[Route])> {
        self.table
            .iter()
            .filter(|(_, e)| !e.best.is_empty())
            .map(|(p, e)| (p, e.best.as_slice()))
    }

    /// The peer's paths as accepted by import policy.
    pub fn adj_rib_in(&self, peer: PeerId) -> Vec<Route> {
        let source = RouteSource::Peer(peer);
        let Some(state) = self.peer(peer) else {
            return Vec::new();
        };
        state
            .adj_in
            .iter()
            .filter_map(|n| {
                self.table
                    .get(&n.prefix)?
                    .routes
                    .iter()
                    .find(|r| r.source == source && r.nlri == *n)
                    .cloned()
            })
            .collect()
    }

    /// Everything the peer should currently have: re-send it in full on a
    /// ROUTE-REFRESH (RFC 2918 §4).
    pub fn adj_rib_out(&self, peer: PeerId) -> Vec<OutRoute> {
        self.peer(peer).map_or_else(Vec::new, |s| {
            s.adj_out
                .iter()
                .map(|(nlri, attrs)| OutRoute {
                    nlri: *nlri,
                    attrs: attrs.clone(),
                })
                .collect()
        })
    }

    /// How many paths of `family` the peer has in its Adj-RIB-In.
    pub fn prefix_count(&self, peer: PeerId, family: Family) -> usize {
        let slot = if family == Family::IPV4_UNICAST {
            0
        } else if family == Family::IPV6_UNICAST {
            1
        } else {
            return 0;
        };
        self.peer(peer)
            .and_then(|s| s.counts.get(slot).copied())
            .unwrap_or(0)
    }

    // ---- internals ----

    fn peer(&self, peer: PeerId) -> Option<&PeerState> {
        self.peers.get(peer.index()).and_then(Option::as_ref)
    }

    fn peer_mut(&mut self, peer: PeerId) -> Result<&mut PeerState, RibError> {
        self.peers
            .get_mut(peer.index())
            .and_then(Option::as_mut)
            .ok_or(RibError::UnknownPeer(peer))
    }

    /// Loop checks on import: our AS in an eBGP path (RFC 4271 §9.1.2),
    /// our router id as ORIGINATOR_ID or our cluster in CLUSTER_LIST (RFC
    /// 4456 §8).
    fn is_looped(&self, from: &PeerInfo, attrs: &PathAttributes) -> bool {
        (!from.internal && attrs.as_path.contains(self.config.local_asn))
            || attrs.originator_id == Some(self.config.router_id)
            || attrs.cluster_list.contains(&self.config.cluster_id())
    }

    fn check_max_prefixes(
        &self,
        peer: PeerId,
        withdrawals: &[Nlri],
        announces: &[(Nlri, Arc<PathAttributes>)],
    ) -> Result<(), RibError> {
        let state = self.peer(peer).ok_or(RibError::UnknownPeer(peer))?;
        let Some(limit) = state.info.policy.max_prefixes else {
            return Ok(());
        };
        let announced: BTreeSet<Nlri> = announces.iter().map(|(n, _)| *n).collect();
        let mut counts = state.counts;
        let removed: BTreeSet<&Nlri> = withdrawals
            .iter()
            .filter(|n| state.adj_in.contains(n) && !announced.contains(n))
            .collect();
        for n in removed {
            if let Some(c) = counts.get_mut(family_slot(&n.prefix)) {
                *c = c.saturating_sub(1);
            }
        }
        for n in announced.iter().filter(|n| !state.adj_in.contains(n)) {
            if let Some(c) = counts.get_mut(family_slot(&n.prefix)) {
                *c += 1;
            }
        }
        for (slot, family) in [Family::IPV4_UNICAST, Family::IPV6_UNICAST]
            .into_iter()
            .enumerate()
        {
            if counts.get(slot).is_some_and(|&c| c > limit as usize) {
                return Err(RibError::MaxPrefixes(MaxPrefixesExceeded {
                    peer,
                    family,
                    limit,
                }));
            }
        }
        Ok(())
    }

    /// Adds `nlri` to the peer's Adj-RIB-In keys.
    fn remember_adj_in(&mut self, peer: PeerId, nlri: Nlri) {
        if let Ok(state) = self.peer_mut(peer) {
            if state.adj_in.insert(nlri) {
                if let Some(c) = state.counts.get_mut(family_slot(&nlri.prefix)) {
                    *c += 1;
                }
            }
        }
    }

    /// Removes `nlri` from the peer's Adj-RIB-In keys; whether it was there.
    fn forget_adj_in(&mut self, peer: PeerId, nlri: &Nlri) -> bool {
        let Ok(state) = self.peer_mut(peer) else {
            return false;
        };
        let had = state.adj_in.remove(nlri);
        if had {
            if let Some(c) = state.counts.get_mut(family_slot(&nlri.prefix)) {
                *c = c.saturating_sub(1);
            }
        }
        had
    }

    fn remove_path(&mut self, source: RouteSource, nlri: Nlri) {
        if let Some(entry) = self.table.get_mut(&nlri.prefix) {
            entry
                .routes
                .retain(|r| !(r.source == source && r.nlri == nlri));
        }
    }

    fn decision_settings(&self) -> DecisionSettings {
        DecisionSettings {
            local_asn: self.config.local_asn,
            router_id: self.config.router_id,
            default_local_pref: self.config.default_local_pref,
            always_compare_med: self.config.always_compare_med,
            max_paths: self.config.max_paths,
        }
    }

    fn recompute_all(&mut self, prefixes: impl IntoIterator<Item = IpNet>) -> Changes {
        let mut changes = Changes::default();
        let mut cache = ExportCache::default();
        let unique: BTreeSet<IpNet> = prefixes.into_iter().collect();
        for prefix in unique {
            self.recompute(prefix, &mut changes, &mut cache);
        }
        changes
    }

    /// Re-runs the decision process for `prefix`, records a best-path
    /// change and brings every established peer's Adj-RIB-Out in line.
    fn recompute(&mut self, prefix: IpNet, changes: &mut Changes, cache: &mut ExportCache) {
        let settings = self.decision_settings();
        let new_best: Vec<Route> = match self.table.get(&prefix) {
            Some(entry) => {
                let chosen = decision::select(&entry.routes, &settings, &*self.resolver, |p| {
                    self.peer(p).map(|s| SourceFacts {
                        internal: s.info.internal,
                        router_id: s.info.router_id,
                        address: s.info.address,
                    })
                });
                chosen
                    .into_iter()
                    .filter_map(|i| entry.routes.get(i).cloned())
                    .collect()
            }
            None => Vec::new(),
        };
        let old_best = match self.table.get_mut(&prefix) {
            Some(entry) => {
                let old = std::mem::replace(&mut entry.best, new_best.clone());
                if entry.routes.is_empty() {
                    self.table.remove(&prefix);
                }
                old
            }
            None => Vec::new(),
        };
        let same = old_best.len() == new_best.len()
            && old_best.iter().zip(&new_best).all(|(a, b)| a.same_path(b));
        if !same {
            changes.best.push(BestPathChange {
                prefix,
                paths: new_best,
            });
        }
        for i in 0..self.peers.len() {
            self.export_prefix_to(prefix, PeerId(i as u32), changes, cache);
        }
    }

    /// What `target` should have for `prefix` now, or `None`.
    fn desired_export(
        &self,
        prefix: IpNet,
        target: PeerId,
        cache: &mut ExportCache,
    ) -> Option<Arc<PathAttributes>> {
        let state = self.peer(target)?;
        let best = self.table.get(&prefix)?.best.first()?;
        let source = match best.source {
            RouteSource::Peer(p) if p == target => return None,
            RouteSource::Peer(p) => Some(&self.peer(p)?.info),
            RouteSource::Local => None,
        };
        let key = (
            Arc::as_ptr(&best.attrs) as usize,
            target,
            family_slot(&prefix),
        );
        // Per-prefix policy (export list) is checked outside the cache.
        if !state.info.policy.export.permits(&prefix) {
            return None;
        }
        if let Some((_, out)) = cache.map.get(&key) {
            return Some(out.clone());
        }
        let settings = ExportSettings {
            local_asn: self.config.local_asn,
            cluster_id: self.config.cluster_id(),
            default_local_pref: self.config.default_local_pref,
        };
        let out = Arc::new(export::export_attributes(
            best,
            source,
            &state.info,
            &settings,
        )?);
        cache.map.insert(key, (best.attrs.clone(), out.clone()));
        Some(out)
    }

    /// Diffs `target`'s Adj-RIB-Out entry for `prefix` against what it
    /// should have and records the difference.
    fn export_prefix_to(
        &mut self,
        prefix: IpNet,
        target: PeerId,
        changes: &mut Changes,
        cache: &mut ExportCache,
    ) {
        let exports = self
            .peer(target)
            .is_some_and(|s| s.exports(family_of(&prefix)));
        if !exports {
            return;
        }
        let desired = self.desired_export(prefix, target, cache);
        let nlri = Nlri::new(prefix);
        let Ok(state) = self.peer_mut(target) else {
            return;
        };
        match desired {
            Some(attrs) => {
                if state.adj_out.get(&nlri) == Some(&attrs) {
                    return;
                }
                state.adj_out.insert(nlri, attrs.clone());
                changes
                    .out
                    .entry(target)
                    .or_default()
                    .announce
                    .push(OutRoute { nlri, attrs });
            }
            None => {
                if state.adj_out.remove(&nlri).is_some() {
                    changes.out.entry(target).or_default().withdraw.push(nlri);
                }
            }
        }
    }
}
