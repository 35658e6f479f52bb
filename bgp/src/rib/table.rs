//! The RIB proper: per-peer Adj-RIBs-In, the Loc-RIB and per-peer
//! Adj-RIBs-Out (RFC 4271 §3.2), kept consistent by one synchronous
//! [`Rib`] value.

use super::attrs::PathAttributes;
use super::decision::{self, AllReachable, DecisionSettings, NextHopResolver, SourceFacts};
use super::export::{self, ExportSettings};
use super::hash::{PrefixHashMap, PrefixHashSet};
use super::prefix_list::PrefixList;
use super::prefix_table::{Place, PrefixEntry, PrefixTable};
pub use super::prefix_table::{Route, RouteSource};
use crate::wire::error::{cease_subcode, code};
use crate::wire::{
    Afi, Community, Family, LargeCommunity, Nlri, Notification, Safi, SessionParams, Update,
};
use ipnet::IpNet;
use smallvec::SmallVec;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use thiserror::Error;

/// Handle of a peer registered with a [`Rib`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(pub(super) u32);

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
    /// Per peer, how many routes the operation added to its Adj-RIB-Out
    /// (announcements of prefixes it had nothing for) minus those it took
    /// away (withdrawals): [`Rib::advertised_count`] follows it.
    advertised_delta: BTreeMap<PeerId, isize>,
}

impl Changes {
    /// Records one export difference for `peer`.
    fn record(
        &mut self,
        peer: PeerId,
        prefix: IpNet,
        before: bool,
        after: Option<Arc<PathAttributes>>,
    ) {
        let nlri = Nlri::new(prefix);
        let delta = match (before, after.is_some()) {
            (false, true) => 1,
            (true, false) => -1,
            _ => 0,
        };
        if delta != 0 {
            *self.advertised_delta.entry(peer).or_default() += delta;
        }
        let out = self.out.entry(peer).or_default();
        match after {
            Some(attrs) => out.announce.push(OutRoute { nlri, attrs }),
            None => out.withdraw.push(nlri),
        }
    }

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
    /// The peer's paths in the table (its post-import-policy Adj-RIB-In)
    /// per family: [IPv4 unicast, IPv6 unicast]. The paths themselves live
    /// only in the table.
    counts: [usize; 2],
    /// Prefixes the peer announces that import policy or the loop checks
    /// refused: with `counts`, what it announces in all.
    filtered: PrefixHashSet<Nlri>,
    /// The size of its Adj-RIB-Out (what export gives it; 0 while down).
    advertised: usize,
    /// Per family slot, whether some of its paths may be marked stale:
    /// without, [`Rib::sweep_stale`] (every End-of-RIB) need not walk the
    /// whole table.
    may_be_stale: [bool; 2],
}

impl PeerState {
    fn exports(&self, family: Family) -> bool {
        self.up.as_ref().is_some_and(|f| f.contains(&family))
    }

    /// The `may_be_stale` flag of `family` (`None`: a family the table
    /// does not keep).
    fn may_be_stale_mut(&mut self, family: Family) -> Option<&mut bool> {
        family_index(family).and_then(|i| self.may_be_stale.get_mut(i))
    }
}

/// A prefix's best-path set before an operation changed its paths.
type BestSnapshot = SmallVec<[Route; 1]>;

fn best_snapshot(entry: &PrefixEntry) -> BestSnapshot {
    entry.best().iter().cloned().collect()
}

/// The unicast family of a prefix.
pub fn family_of(prefix: &IpNet) -> Family {
    match prefix {
        IpNet::V4(_) => Family::IPV4_UNICAST,
        IpNet::V6(_) => Family::IPV6_UNICAST,
    }
}

/// The family slot of a family the table keeps (IPv4 and IPv6 unicast).
fn family_index(family: Family) -> Option<usize> {
    [Family::IPV4_UNICAST, Family::IPV6_UNICAST]
        .iter()
        .position(|f| *f == family)
}

fn family_slot(prefix: &IpNet) -> usize {
    match prefix {
        IpNet::V4(_) => 0,
        IpNet::V6(_) => 1,
    }
}

/// Export results within one operation, so that prefixes sharing source
/// attributes share exported ones too, and peers that get equal exported
/// attributes share one `Arc` (the speaker then builds one wire attribute
/// set for all of them). Holding the source `Arc` keeps its address (the
/// key) from being reused while the cache lives.
#[derive(Default)]
struct ExportCache {
    map: PrefixHashMap<ExportKey, (Arc<PathAttributes>, Option<Arc<PathAttributes>>)>,
    /// Exported attributes by source address and family slot, for sharing
    /// between peers.
    shared: PrefixHashMap<(usize, usize), SmallVec<[Arc<PathAttributes>; 2]>>,
    /// Per target peer (by index), its last result: the prefixes of one
    /// UPDATE come one after the other with the same key, and this spares
    /// them the hash look-up. Every key here is in `map` too (which keeps
    /// its address from being reused).
    recent: Vec<Option<(ExportKey, Option<Arc<PathAttributes>>)>>,
}

impl ExportCache {
    /// Makes `out` the recent result of the key's target peer.
    fn remember(&mut self, key: ExportKey, out: &Option<Arc<PathAttributes>>) {
        let i = key.1.index();
        if self.recent.len() <= i {
            self.recent.resize(i + 1, None);
        }
        if let Some(slot) = self.recent.get_mut(i) {
            *slot = Some((key, out.clone()));
        }
    }
}

/// Source attributes' address, target peer, family slot, and whether the
/// export used a peer's former facts (see [`FormerSource`]).
type ExportKey = (usize, PeerId, usize, bool);

/// A source peer's facts before the operation changed them (its router id
/// on [`Rib::peer_up`]): what its paths were exported with until now.
#[derive(Clone, Copy)]
struct FormerSource<'a> {
    peer: PeerId,
    info: &'a PeerInfo,
}

/// What the decision process and export read, borrowed apart from the
/// table so that a table entry can be changed in place meanwhile.
struct Context<'a> {
    config: &'a RibConfig,
    peers: &'a [Option<PeerState>],
    resolver: &'a (dyn NextHopResolver + Send + Sync),
    /// Fill in [`Changes::best`].
    report_best: bool,
}

impl Context<'_> {
    fn peer(&self, peer: PeerId) -> Option<&PeerState> {
        self.peers.get(peer.index()).and_then(Option::as_ref)
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

    /// Runs the decision process over `entry` and puts the chosen paths
    /// first, in order.
    fn decide(&self, entry: &mut PrefixEntry) {
        let settings = self.decision_settings();
        let chosen = decision::select(entry.routes(), &settings, self.resolver, |p| {
            self.peer(p).map(|s| SourceFacts {
                internal: s.info.internal,
                router_id: s.info.router_id,
                address: s.info.address,
            })
        });
        entry.set_best(&chosen);
    }

    /// The attributes `best` goes to `target` with, or `None`. `former`
    /// stands in for a source peer's current facts.
    fn export(
        &self,
        prefix: &IpNet,
        best: Option<&Route>,
        target: PeerId,
        target_info: &PeerInfo,
        former: Option<FormerSource<'_>>,
        cache: &mut ExportCache,
    ) -> Option<Arc<PathAttributes>> {
        let best = best?;
        let (source, used_former) = match best.source() {
            RouteSource::Peer(p) if p == target => return None,
            RouteSource::Peer(p) => match former.filter(|f| f.peer == p) {
                Some(f) => (Some(f.info), true),
                None => (Some(&self.peer(p)?.info), false),
            },
            RouteSource::Local => (None, false),
        };
        // Per-prefix policy (export list) is checked outside the cache.
        if !target_info.policy.export.permits(prefix) {
            return None;
        }
        let address = Arc::as_ptr(&best.attrs) as usize;
        let slot = family_slot(prefix);
        let key = (address, target, slot, used_former);
        if let Some(Some((recent, out))) = cache.recent.get(target.index()) {
            if *recent == key {
                return out.clone();
            }
        }
        if let Some((_, out)) = cache.map.get(&key) {
            let out = out.clone();
            cache.remember(key, &out);
            return out;
        }
        let settings = ExportSettings {
            local_asn: self.config.local_asn,
            cluster_id: self.config.cluster_id(),
            default_local_pref: self.config.default_local_pref,
        };
        let out =
            export::export_attributes(prefix, best, source, target_info, &settings).map(|attrs| {
                let shared = cache.shared.entry((address, slot)).or_default();
                match shared.iter().find(|a| ***a == attrs) {
                    Some(same) => same.clone(),
                    None => {
                        let attrs = Arc::new(attrs);
                        shared.push(attrs.clone());
                        attrs
                    }
                }
            });
        cache.map.insert(key, (best.attrs.clone(), out.clone()));
        cache.remember(key, &out);
        out
    }

    /// Records the Adj-RIB-Out changes for `prefix` whose best path went
    /// from `old` to `new`: per established peer, the difference between
    /// what the old best exported to it and what the new one does.
    fn export_change(
        &self,
        prefix: IpNet,
        old: Option<&Route>,
        new: Option<&Route>,
        former: Option<FormerSource<'_>>,
        changes: &mut Changes,
        cache: &mut ExportCache,
    ) {
        let family = family_of(&prefix);
        for (i, state) in self.peers.iter().enumerate() {
            let Some(state) = state.as_ref().filter(|s| s.exports(family)) else {
                continue;
            };
            let target = PeerId(i as u32);
            let before = self.export(&prefix, old, target, &state.info, former, cache);
            let after = self.export(&prefix, new, target, &state.info, None, cache);
            if before == after {
                continue;
            }
            changes.record(target, prefix, before.is_some(), after);
        }
    }

    /// Re-runs the decision process for `entry` (whose best-path set was
    /// `old_best` before the operation changed its paths), records a
    /// best-path change and the peers' Adj-RIB-Out changes.
    fn settle(
        &self,
        prefix: IpNet,
        entry: &mut PrefixEntry,
        old_best: &[Route],
        former: Option<FormerSource<'_>>,
        changes: &mut Changes,
        cache: &mut ExportCache,
    ) {
        self.decide(entry);
        let new_best = entry.best();
        let same = old_best.len() == new_best.len()
            && old_best.iter().zip(new_best).all(|(a, b)| a.same_path(b));
        if same && former.is_none() {
            // Same paths, same sources: the same exports.
            return;
        }
        if !same && self.report_best {
            changes.best.push(BestPathChange {
                prefix,
                paths: new_best.to_vec(),
            });
        }
        self.export_change(
            prefix,
            old_best.first(),
            new_best.first(),
            former,
            changes,
            cache,
        );
    }
}

/// Adj-RIBs-In, Loc-RIB and Adj-RIBs-Out, with the decision process.
///
/// Data layout (docs/bgp-rib.md): one hash table from prefix to its paths
/// (the Adj-RIBs-In and, as the leading paths, the Loc-RIB). Adj-RIBs-Out
/// are not stored: what a peer has is what the export policy makes of the
/// current best path, so every change is exported as the difference
/// between the export of the best path before and after it.
pub struct Rib {
    config: RibConfig,
    peers: Vec<Option<PeerState>>,
    table: PrefixTable,
    resolver: Box<dyn NextHopResolver + Send + Sync>,
    /// Whether [`Changes::best`] is filled in ([`Rib::report_best_paths`]).
    report_best: bool,
}

impl Rib {
    /// An empty RIB where every next hop is reachable at cost 0.
    pub fn new(config: RibConfig) -> Self {
        Rib {
            config,
            peers: Vec::new(),
            table: PrefixTable::default(),
            resolver: Box::new(AllReachable),
            report_best: true,
        }
    }

    /// Whether operations report best-path changes in [`Changes::best`]
    /// (on by default). Off, they leave it empty: a route reflector that
    /// programs no routes needs only the Adj-RIB-Out changes, and saves a
    /// vector per changed prefix. Switching it on later reports changes
    /// from then on (read [`Rib::loc_rib`] for the state so far).
    pub fn report_best_paths(&mut self, on: bool) {
        self.report_best = on;
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
        let snapshots: Vec<(IpNet, BestSnapshot)> = self
            .sorted_prefixes(|_| true)
            .into_iter()
            .filter_map(|p| Some((p, best_snapshot(self.table.get(&p)?))))
            .collect();
        self.settle_all(snapshots, None)
    }

    /// Registers a peer; it exchanges no routes until [`Rib::peer_up`].
    pub fn add_peer(&mut self, info: PeerInfo) -> PeerId {
        let state = PeerState {
            info,
            up: None,
            counts: [0; 2],
            filtered: PrefixHashSet::default(),
            advertised: 0,
            may_be_stale: [false; 2],
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

    /// Sets our addresses on the session with `peer` (the NEXT_HOP of
    /// routes we send it with next-hop-self or originate), e.g. once the
    /// session's local socket address is known. Applies to what is exported
    /// from now on.
    pub fn set_peer_local_addresses(
        &mut self,
        peer: PeerId,
        ipv4: Option<Ipv4Addr>,
        ipv6: Option<Ipv6Addr>,
    ) -> Result<(), RibError> {
        let state = self.peer_mut(peer)?;
        state.info.local_ipv4 = ipv4;
        state.info.local_ipv6 = ipv6;
        Ok(())
    }

    /// Sets the AS of a peer configured to accept any AS (a dynamic
    /// neighbour), once its OPEN named it; `internal`: the AS is ours.
    /// Call before [`Rib::peer_up`]: export and import decisions made
    /// earlier used the old values.
    pub fn set_peer_asn(&mut self, peer: PeerId, asn: u32, internal: bool) -> Result<(), RibError> {
        let state = self.peer_mut(peer)?;
        state.info.asn = asn;
        state.info.internal = internal;
        Ok(())
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
        let state = self.peer_mut(peer)?;
        let old_info = state.info.clone();
        state.info.policy = policy;
        let mut changes = Changes::default();
        let Some(state) = self.peer(peer) else {
            return Ok(changes);
        };
        let (mut old_cache, mut new_cache) = (ExportCache::default(), ExportCache::default());
        let ctx = self.context();
        for prefix in self.sorted_prefixes(PrefixEntry::has_best) {
            if !state.exports(family_of(&prefix)) {
                continue;
            }
            let best = self.table.get(&prefix).and_then(|e| e.best().first());
            let before = ctx.export(&prefix, best, peer, &old_info, None, &mut old_cache);
            let after = ctx.export(&prefix, best, peer, &state.info, None, &mut new_cache);
            if before == after {
                continue;
            }
            changes.record(peer, prefix, before.is_some(), after);
        }
        self.count_advertised(&changes);
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
        state.up = None;
        state.advertised = 0;
        state.filtered.clear();
        let old_info = state.info.clone();
        state.info.router_id = router_id;
        // Stale paths kept from before a graceful restart now compare, and
        // are reflected, with the new router id.
        let source = RouteSource::Peer(peer);
        let snapshots: Vec<(IpNet, BestSnapshot)> = self
            .sorted_prefixes(|e| e.has_path_from(source))
            .into_iter()
            .filter_map(|p| Some((p, best_snapshot(self.table.get(&p)?))))
            .collect();
        let former = FormerSource {
            peer,
            info: &old_info,
        };
        let mut changes = self.settle_all(snapshots, Some(former));
        self.peer_mut(peer)?.up = Some(families.to_vec());
        let dump = self.adj_rib_out(peer);
        self.peer_mut(peer)?.advertised = dump.len();
        if !dump.is_empty() {
            changes.out.entry(peer).or_default().announce = dump;
        }
        Ok(changes)
    }

    /// The session went down without graceful restart: every path from the
    /// peer is removed.
    pub fn peer_down(&mut self, peer: PeerId) -> Result<Changes, RibError> {
        let state = self.peer_mut(peer)?;
        state.up = None;
        state.advertised = 0;
        state.counts = [0; 2];
        state.filtered.clear();
        let source = RouteSource::Peer(peer);
        let (snapshots, _) = self.remove_paths(|_, r| r.source() == source);
        Ok(self.settle_all(snapshots, None))
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
        state.advertised = 0;
        state.filtered.clear();
        for family in preserved {
            if let Some(s) = state.may_be_stale_mut(*family) {
                *s = true;
            }
        }
        let source = RouteSource::Peer(peer);
        for (prefix, entry) in self.table.iter_mut() {
            if !preserved.contains(&family_of(&prefix)) {
                continue;
            }
            for r in entry.routes_mut() {
                if r.source() == source {
                    r.set_stale(true);
                }
            }
        }
        let (snapshots, removed) = self.remove_paths(|prefix, r| {
            r.source() == source && !preserved.contains(&family_of(prefix))
        });
        self.forget_counted(peer, removed)?;
        Ok(self.settle_all(snapshots, None))
    }

    /// Marks the peer's paths of `family` stale without changing any best
    /// path: a Beginning-of-RIB-Refresh (RFC 7313 §4). A path the peer
    /// announces again loses the mark (the new path replaces it); the
    /// End-of-RIB-Refresh [`Rib::sweep_stale`]s the rest. Returns how many
    /// paths were marked.
    pub fn mark_stale(&mut self, peer: PeerId, family: Family) -> Result<usize, RibError> {
        let state = self.peer_mut(peer)?;
        if let Some(s) = state.may_be_stale_mut(family) {
            *s = true;
        }
        let source = RouteSource::Peer(peer);
        let mut marked = 0;
        for (prefix, entry) in self.table.iter_mut() {
            if family_of(&prefix) != family {
                continue;
            }
            for r in entry.routes_mut() {
                if r.source() == source {
                    r.set_stale(true);
                    marked += 1;
                }
            }
        }
        Ok(marked)
    }

    /// Removes the peer's paths of `family` still marked stale: on
    /// End-of-RIB or End-of-RIB-Refresh, or when the restart (or
    /// stale-path) timer expires (RFC 4724 §4.2, RFC 7313 §4).
    pub fn sweep_stale(&mut self, peer: PeerId, family: Family) -> Result<Changes, RibError> {
        let source = RouteSource::Peer(peer);
        let state = self.peer_mut(peer)?;
        match state.may_be_stale_mut(family) {
            Some(s) if *s => *s = false,
            // Nothing marked: nothing to sweep (only unicast is kept).
            _ => return Ok(Changes::default()),
        }
        let (snapshots, removed) = self.remove_paths(|prefix, r| {
            r.source() == source && r.stale() && family_of(prefix) == family
        });
        self.forget_counted(peer, removed)?;
        Ok(self.settle_all(snapshots, None))
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

        // Withdrawals first, then announcements (`None`: withdraw). Refused
        // announcements are withdrawals too, remembered as filtered.
        let mut ops: Vec<(Nlri, Option<Arc<PathAttributes>>)> =
            update.withdrawn.iter().map(|n| (*n, None)).collect();
        if let Some(u) = update.mp_unreach().filter(|u| unicast(u.family)) {
            ops.extend(u.withdrawn.iter().map(|n| (*n, None)));
        }
        let mut refused: Vec<Nlri> = Vec::new();
        let mp_reach = update.mp_reach().filter(|r| unicast(r.family));
        let announced = update
            .nlri
            .iter()
            .chain(mp_reach.iter().flat_map(|r| r.nlri.iter()));
        if update.treat_as_withdraw() {
            ops.extend(announced.map(|n| (*n, None)));
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
                    ops.push((*nlri, Some(a.clone())))
                }
                _ => {
                    refused.push(*nlri);
                    ops.push((*nlri, None));
                }
            };
            for n in &update.nlri {
                consider(n, &v4_attrs);
            }
            for n in mp_reach.iter().flat_map(|r| r.nlri.iter()) {
                consider(n, &mp_attrs);
            }
        }

        self.check_max_prefixes(peer, &ops)?;

        // What the peer announces, for its "received" count: refused
        // prefixes are remembered, withdrawn or accepted ones forgotten.
        if let Ok(state) = self.peer_mut(peer) {
            if !state.filtered.is_empty() {
                for (n, _) in &ops {
                    state.filtered.remove(n);
                }
            }
            state.filtered.extend(refused);
        }

        // Grouped by prefix (stable: a prefix's withdrawal stays before its
        // announcement), so each prefix is looked up once and settled once,
        // in prefix order.
        if !ops.is_sorted_by(|a, b| a.0.prefix <= b.0.prefix) {
            ops.sort_by_key(|(n, _)| n.prefix);
        }
        let source = RouteSource::Peer(peer);
        let mut counts = [0isize; 2];
        let mut changes = Changes::default();
        let mut cache = ExportCache::default();
        let ctx = Context {
            config: &self.config,
            peers: &self.peers,
            resolver: &*self.resolver,
            report_best: self.report_best,
        };
        let table = &mut self.table;
        // Only announcements (a table transfer): every prefix's entry is
        // found or made first, in one tight pass whose cache misses the
        // CPU overlaps. No entry is removed before the last use of these
        // places (announcements leave none empty).
        let mut places: Vec<Place> = Vec::new();
        if ops.len() > 1 && ops.iter().all(|(_, a)| a.is_some()) {
            places.reserve(ops.len());
            let mut last = None;
            for (nlri, _) in &ops {
                if last != Some(nlri.prefix) {
                    places.push(table.place(&nlri.prefix));
                    last = Some(nlri.prefix);
                }
            }
        }
        let mut places = places.into_iter();
        let mut rest = ops.as_slice();
        while let Some(((first, _), _)) = rest.split_first() {
            let prefix = first.prefix;
            let len = rest.iter().take_while(|(n, _)| n.prefix == prefix).count();
            let (group, tail) = rest.split_at(len);
            rest = tail;
            let entry = if let Some(place) = places.next() {
                table.at_mut(place)
            } else if group.iter().any(|(_, a)| a.is_some()) {
                Some(table.entry(&prefix))
            } else {
                table.get_mut(&prefix)
            };
            let Some(entry) = entry else {
                continue;
            };
            let old_best = best_snapshot(entry);
            let mut changed = false;
            for (nlri, attrs) in group {
                let slot = family_slot(&nlri.prefix);
                match (entry.position(source, nlri.path_id), attrs) {
                    (Some(i), None) => {
                        entry.remove(i);
                        changed = true;
                        if let Some(c) = counts.get_mut(slot) {
                            *c -= 1;
                        }
                    }
                    (None, None) => {}
                    (at, Some(attrs)) => {
                        let route = Route::new(source, nlri.path_id, attrs.clone());
                        changed = true;
                        match at {
                            Some(i) => entry.replace(i, route),
                            None => {
                                entry.push(route);
                                if let Some(c) = counts.get_mut(slot) {
                                    *c += 1;
                                }
                            }
                        }
                    }
                }
            }
            if changed {
                ctx.settle(prefix, entry, &old_best, None, &mut changes, &mut cache);
            }
            if entry.is_empty() {
                table.remove(&prefix);
                // Places after a removal may have moved.
                places = Vec::new().into_iter();
            }
        }
        if let Ok(state) = self.peer_mut(peer) {
            for (c, d) in state.counts.iter_mut().zip(counts) {
                *c = c.saturating_add_signed(d);
            }
        }
        self.count_advertised(&changes);
        Ok(changes)
    }

    /// Originates `prefix` from this router (replacing an earlier local
    /// path). Local paths win over every learned one (see the decision
    /// process). `attrs.next_hop` `None` means "us": exported with our
    /// session address.
    pub fn originate(&mut self, prefix: IpNet, attrs: PathAttributes) -> Changes {
        let prefix = prefix.trunc();
        let route = Route::new(RouteSource::Local, None, Arc::new(attrs));
        let entry = self.table.entry(&prefix);
        let old_best = best_snapshot(entry);
        entry.retain(|r| r.source() != RouteSource::Local);
        entry.push(route);
        self.settle_all(vec![(prefix, old_best)], None)
    }

    /// Stops originating `prefix`.
    pub fn withdraw_local(&mut self, prefix: IpNet) -> Changes {
        let prefix = prefix.trunc();
        let Some(entry) = self.table.get_mut(&prefix) else {
            return Changes::default();
        };
        let old_best = best_snapshot(entry);
        entry.retain(|r| r.source() != RouteSource::Local);
        self.settle_all(vec![(prefix, old_best)], None)
    }

    /// The best-path set of `prefix` (best first; empty if unreachable).
    pub fn best(&self, prefix: &IpNet) -> &[Route] {
        self.table.get(prefix).map_or(&[], PrefixEntry::best)
    }

    /// Every candidate path of `prefix` (the best-path set first).
    pub fn candidates(&self, prefix: &IpNet) -> &[Route] {
        self.table.get(prefix).map_or(&[], PrefixEntry::routes)
    }

    /// The Loc-RIB: every reachable prefix with its best-path set, in
    /// prefix order (sorted on each call: the table is a hash table).
    pub fn loc_rib(&self) -> impl Iterator<Item = (IpNet, &[Route])> {
        let mut all: Vec<(IpNet, &[Route])> = self
            .table
            .iter()
            .filter(|(_, e)| e.has_best())
            .map(|(p, e)| (p, e.best()))
            .collect();
        all.sort_unstable_by_key(|(p, _)| *p);
        all.into_iter()
    }

    /// The peer's paths as accepted by import policy, with their NLRI, in
    /// prefix order.
    pub fn adj_rib_in(&self, peer: PeerId) -> Vec<(Nlri, Route)> {
        let source = RouteSource::Peer(peer);
        let mut routes: Vec<(Nlri, Route)> = self
            .table
            .iter()
            .flat_map(|(p, e)| {
                e.routes()
                    .iter()
                    .filter(|r| r.source() == source)
                    .map(move |r| (r.nlri(p), r.clone()))
            })
            .collect();
        routes.sort_unstable_by_key(|(n, _)| *n);
        routes
    }

    /// Everything the peer should currently have, in prefix order: what
    /// the export policy makes of each best path. Re-send it in full on a
    /// ROUTE-REFRESH (RFC 2918 §4).
    pub fn adj_rib_out(&self, peer: PeerId) -> Vec<OutRoute> {
        let Some(state) = self.peer(peer) else {
            return Vec::new();
        };
        let ctx = self.context();
        let mut cache = ExportCache::default();
        self.sorted_prefixes(PrefixEntry::has_best)
            .into_iter()
            .filter(|p| state.exports(family_of(p)))
            .filter_map(|prefix| {
                let best = self.table.get(&prefix)?.best().first();
                let attrs = ctx.export(&prefix, best, peer, &state.info, None, &mut cache)?;
                Some(OutRoute {
                    nlri: Nlri::new(prefix),
                    attrs,
                })
            })
            .collect()
    }

    /// How many routes the peer's Adj-RIB-Out holds: `adj_rib_out(peer).len()`,
    /// kept up to date by every operation instead of computed.
    pub fn advertised_count(&self, peer: PeerId) -> usize {
        self.peer(peer).map_or(0, |s| s.advertised)
    }

    /// How many paths of `family` the peer has in its Adj-RIB-In.
    pub fn prefix_count(&self, peer: PeerId, family: Family) -> usize {
        let Some(slot) = family_index(family) else {
            return 0;
        };
        self.peer(peer)
            .and_then(|s| s.counts.get(slot).copied())
            .unwrap_or(0)
    }

    /// How many unicast paths the peer currently announces, before import
    /// policy and loop checks (paths kept stale over a graceful restart
    /// included).
    pub fn received_count(&self, peer: PeerId) -> usize {
        self.peer(peer)
            .map_or(0, |s| s.counts.iter().sum::<usize>() + s.filtered.len())
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

    fn context(&self) -> Context<'_> {
        Context {
            config: &self.config,
            peers: &self.peers,
            resolver: &*self.resolver,
            report_best: self.report_best,
        }
    }

    /// The prefixes whose entry passes `keep`, sorted.
    fn sorted_prefixes(&self, keep: impl Fn(&PrefixEntry) -> bool) -> Vec<IpNet> {
        let mut prefixes: Vec<IpNet> = self
            .table
            .iter()
            .filter(|(_, e)| keep(e))
            .map(|(p, _)| p)
            .collect();
        prefixes.sort_unstable();
        prefixes
    }

    /// Removes every path `gone` selects. Returns the snapshots of the
    /// best-path sets of the prefixes that lost one, sorted by prefix, and
    /// how many paths went per family slot.
    fn remove_paths(
        &mut self,
        gone: impl Fn(&IpNet, &Route) -> bool,
    ) -> (Vec<(IpNet, BestSnapshot)>, [usize; 2]) {
        let mut snapshots = Vec::new();
        let mut removed = [0usize; 2];
        for (prefix, entry) in self.table.iter_mut() {
            if entry.routes().iter().any(|r| gone(&prefix, r)) {
                let old_best = best_snapshot(entry);
                let before = entry.routes().len();
                entry.retain(|r| !gone(&prefix, r));
                if let Some(c) = removed.get_mut(family_slot(&prefix)) {
                    *c += before - entry.routes().len();
                }
                snapshots.push((prefix, old_best));
            }
        }
        snapshots.sort_unstable_by_key(|(p, _)| *p);
        (snapshots, removed)
    }

    /// Takes removed paths (per family slot) off the peer's counts.
    fn forget_counted(&mut self, peer: PeerId, removed: [usize; 2]) -> Result<(), RibError> {
        let state = self.peer_mut(peer)?;
        for (c, r) in state.counts.iter_mut().zip(removed) {
            *c = c.saturating_sub(r);
        }
        Ok(())
    }

    /// Loop checks on import: our AS in an eBGP path (RFC 4271 §9.1.2),
    /// our router id as ORIGINATOR_ID or our cluster in CLUSTER_LIST (RFC
    /// 4456 §8).
    fn is_looped(&self, from: &PeerInfo, attrs: &PathAttributes) -> bool {
        (!from.internal && attrs.as_path.contains(self.config.local_asn))
            || attrs.originator_id == Some(self.config.router_id)
            || attrs.cluster_list.contains(&self.config.cluster_id())
    }

    /// Whether applying `ops` (withdrawals as `None`) would take the peer
    /// over its prefix limit.
    fn check_max_prefixes(
        &self,
        peer: PeerId,
        ops: &[(Nlri, Option<Arc<PathAttributes>>)],
    ) -> Result<(), RibError> {
        let state = self.peer(peer).ok_or(RibError::UnknownPeer(peer))?;
        let Some(limit) = state.info.policy.max_prefixes else {
            return Ok(());
        };
        let source = RouteSource::Peer(peer);
        let has = |n: &Nlri| {
            self.table
                .get(&n.prefix)
                .is_some_and(|e| e.position(source, n.path_id).is_some())
        };
        // The last operation on each NLRI decides whether the peer has it.
        let mut last: PrefixHashMap<Nlri, bool> = PrefixHashMap::default();
        for (n, attrs) in ops {
            last.insert(*n, attrs.is_some());
        }
        let mut counts = state.counts;
        for (n, present) in last {
            let Some(c) = counts.get_mut(family_slot(&n.prefix)) else {
                continue;
            };
            match (has(&n), present) {
                (true, false) => *c = c.saturating_sub(1),
                (false, true) => *c += 1,
                _ => {}
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

    /// Settles the prefixes of `snapshots` (prefix, best-path set before
    /// the operation), sorted by prefix.
    fn settle_all(
        &mut self,
        snapshots: Vec<(IpNet, BestSnapshot)>,
        former: Option<FormerSource<'_>>,
    ) -> Changes {
        let mut changes = Changes::default();
        let mut cache = ExportCache::default();
        let ctx = Context {
            config: &self.config,
            peers: &self.peers,
            resolver: &*self.resolver,
            report_best: self.report_best,
        };
        for (prefix, old_best) in snapshots {
            let Some(entry) = self.table.get_mut(&prefix) else {
                continue;
            };
            ctx.settle(prefix, entry, &old_best, former, &mut changes, &mut cache);
            if entry.is_empty() {
                self.table.remove(&prefix);
            }
        }
        self.count_advertised(&changes);
        changes
    }

    /// Applies the operation's Adj-RIB-Out size changes to the peers.
    fn count_advertised(&mut self, changes: &Changes) {
        for (peer, delta) in &changes.advertised_delta {
            if let Ok(state) = self.peer_mut(*peer) {
                state.advertised = state.advertised.saturating_add_signed(*delta);
            }
        }
    }
}
