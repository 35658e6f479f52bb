//! The RIB's table: every prefix with all its paths, laid out for memory
//! (docs/bgp-rib.md, "Data layout").
//!
//! A [`Route`] is 24 bytes: the attributes' `Arc`, the ADD-PATH path id,
//! the source as a `u32` and a flag byte. The prefix is not repeated in the
//! route: it is the table's key. One path per prefix (the usual case) is
//! stored inline, several in a boxed slice. IPv4 prefixes are keyed by a
//! packed `u64`; the table is a dense vector of (key, paths) with a hash
//! index of `u32` positions into it (4 bytes and a control byte a bucket),
//! about 32 bytes an IPv4 prefix plus the index.

use super::hash::BuildPrefixHasher;
use super::{PathAttributes, PeerId};
use crate::wire::Nlri;
use hashbrown::hash_table::{Entry, HashTable};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::hash::{BuildHasher, Hash};
use std::net::Ipv4Addr;
use std::sync::Arc;

/// Where a path came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteSource {
    /// Originated by this router ([`super::Rib::originate`]).
    Local,
    Peer(PeerId),
}

/// `Route::source` of a local route (peer ids are small indices).
const LOCAL_SOURCE: u32 = u32::MAX;
const HAS_PATH_ID: u8 = 1;
const STALE: u8 = 2;
/// A member of the prefix's best-path set (they come first).
const BEST: u8 = 4;

/// One path to a prefix (the prefix is the table's key, or the
/// [`super::BestPathChange`]'s).
#[derive(Clone)]
pub struct Route {
    /// Shared with the other prefixes of the same UPDATE.
    pub attrs: Arc<PathAttributes>,
    path_id: u32,
    source: u32,
    flags: u8,
}

impl Route {
    /// A path from `source`, with the sender's ADD-PATH path id (RFC 7911)
    /// if it sent one.
    pub fn new(source: RouteSource, path_id: Option<u32>, attrs: Arc<PathAttributes>) -> Self {
        Route {
            attrs,
            path_id: path_id.unwrap_or(0),
            source: match source {
                RouteSource::Local => LOCAL_SOURCE,
                RouteSource::Peer(p) => p.0,
            },
            flags: if path_id.is_some() { HAS_PATH_ID } else { 0 },
        }
    }

    pub fn source(&self) -> RouteSource {
        if self.source == LOCAL_SOURCE {
            RouteSource::Local
        } else {
            RouteSource::Peer(PeerId(self.source))
        }
    }

    /// The sender's ADD-PATH path id (RFC 7911), if any.
    pub fn path_id(&self) -> Option<u32> {
        (self.flags & HAS_PATH_ID != 0).then_some(self.path_id)
    }

    /// The NLRI of this path to `prefix`.
    pub fn nlri(&self, prefix: IpNet) -> Nlri {
        Nlri {
            prefix,
            path_id: self.path_id(),
        }
    }

    /// Kept across a graceful restart of the source, awaiting refresh (RFC
    /// 4724 §4.2).
    pub fn stale(&self) -> bool {
        self.flags & STALE != 0
    }

    pub(super) fn set_stale(&mut self, stale: bool) {
        self.set_flag(STALE, stale);
    }

    fn best(&self) -> bool {
        self.flags & BEST != 0
    }

    fn set_flag(&mut self, flag: u8, on: bool) {
        if on {
            self.flags |= flag;
        } else {
            self.flags &= !flag;
        }
    }

    /// Whether this is the path `source` sent with `path_id`.
    pub(super) fn is(&self, source: RouteSource, path_id: Option<u32>) -> bool {
        self.source() == source && self.path_id() == path_id
    }

    /// Same source, path id and attributes (the stale flag aside).
    pub fn same_path(&self, other: &Route) -> bool {
        self.source == other.source
            && self.path_id() == other.path_id()
            && self.attrs == other.attrs
    }
}

impl PartialEq for Route {
    /// Same path and the same stale flag.
    fn eq(&self, other: &Route) -> bool {
        self.same_path(other) && self.stale() == other.stale()
    }
}

impl Eq for Route {}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("source", &self.source())
            .field("path_id", &self.path_id())
            .field("stale", &self.stale())
            .field("attrs", &self.attrs)
            .finish()
    }
}

/// All paths of one prefix, the best-path set first.
///
/// The members of the best-path set (the best path, then the other ECMP
/// members) are the leading routes, flagged; the decision process reorders
/// the routes to keep them there ([`PrefixEntry::set_best`]).
pub(super) enum PrefixEntry {
    /// The usual case, without a heap allocation.
    One(Route),
    /// None (briefly, while an operation changes the entry) or several.
    Many(Box<[Route]>),
}

impl Default for PrefixEntry {
    fn default() -> Self {
        PrefixEntry::Many(Box::default())
    }
}

impl PrefixEntry {
    pub(super) fn routes(&self) -> &[Route] {
        match self {
            PrefixEntry::One(r) => std::slice::from_ref(r),
            PrefixEntry::Many(rs) => rs,
        }
    }

    pub(super) fn routes_mut(&mut self) -> &mut [Route] {
        match self {
            PrefixEntry::One(r) => std::slice::from_mut(r),
            PrefixEntry::Many(rs) => rs,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.routes().is_empty()
    }

    /// The best-path set, best first (empty: unreachable).
    pub(super) fn best(&self) -> &[Route] {
        let routes = self.routes();
        let n = routes.iter().take_while(|r| r.best()).count();
        routes.get(..n).unwrap_or(&[])
    }

    pub(super) fn has_best(&self) -> bool {
        self.routes().first().is_some_and(Route::best)
    }

    pub(super) fn position(&self, source: RouteSource, path_id: Option<u32>) -> Option<usize> {
        self.routes().iter().position(|r| r.is(source, path_id))
    }

    pub(super) fn has_path_from(&self, source: RouteSource) -> bool {
        self.routes().iter().any(|r| r.source() == source)
    }

    /// Adds a path (not in the best-path set until [`PrefixEntry::set_best`]).
    pub(super) fn push(&mut self, mut route: Route) {
        route.set_flag(BEST, false);
        *self = match std::mem::take(self) {
            PrefixEntry::Many(rs) if rs.is_empty() => PrefixEntry::One(route),
            PrefixEntry::One(first) => PrefixEntry::Many(Box::new([first, route])),
            PrefixEntry::Many(rs) => {
                let mut rs = rs.into_vec();
                rs.push(route);
                PrefixEntry::Many(rs.into_boxed_slice())
            }
        };
    }

    /// Replaces the path at `i` (keeping its place; its best-path flag is
    /// cleared until the next [`PrefixEntry::set_best`]).
    pub(super) fn replace(&mut self, i: usize, mut route: Route) {
        route.set_flag(BEST, false);
        if let Some(slot) = self.routes_mut().get_mut(i) {
            *slot = route;
        }
    }

    pub(super) fn remove(&mut self, i: usize) {
        self.retain_indexed(|j, _| j != i);
    }

    pub(super) fn retain(&mut self, keep: impl Fn(&Route) -> bool) {
        self.retain_indexed(|_, r| keep(r));
    }

    fn retain_indexed(&mut self, keep: impl Fn(usize, &Route) -> bool) {
        let routes = self.routes();
        if routes.iter().enumerate().all(|(i, r)| keep(i, r)) {
            return;
        }
        let kept: Vec<Route> = match std::mem::take(self) {
            PrefixEntry::One(r) => [r].into_iter().filter(|r| keep(0, r)).collect(),
            PrefixEntry::Many(rs) => rs
                .into_vec()
                .into_iter()
                .enumerate()
                .filter(|(i, r)| keep(*i, r))
                .map(|(_, r)| r)
                .collect(),
        };
        *self = Self::from_vec(kept);
    }

    fn from_vec(mut routes: Vec<Route>) -> Self {
        match routes.len() {
            1 => match routes.pop() {
                Some(r) => PrefixEntry::One(r),
                None => PrefixEntry::default(),
            },
            _ => PrefixEntry::Many(routes.into_boxed_slice()),
        }
    }

    /// Puts the routes at `chosen` (indices, best first) in front, in that
    /// order, and makes them the best-path set.
    pub(super) fn set_best(&mut self, chosen: &[usize]) {
        let in_place = chosen.iter().enumerate().all(|(i, &c)| i == c);
        if !in_place {
            if let PrefixEntry::Many(rs) = std::mem::take(self) {
                let mut slots: Vec<Option<Route>> = rs.into_vec().into_iter().map(Some).collect();
                let mut ordered: Vec<Route> = Vec::with_capacity(slots.len());
                for &i in chosen {
                    if let Some(route) = slots.get_mut(i).and_then(Option::take) {
                        ordered.push(route);
                    }
                }
                ordered.extend(slots.into_iter().flatten());
                *self = Self::from_vec(ordered);
            }
        }
        let n = chosen.len();
        for (i, r) in self.routes_mut().iter_mut().enumerate() {
            r.set_flag(BEST, i < n);
        }
    }
}

/// The packed key of an IPv4 prefix: address, then length.
fn v4_key(net: &Ipv4Net) -> u64 {
    (u64::from(u32::from(net.addr())) << 8) | u64::from(net.prefix_len())
}

fn v4_net(key: u64) -> Option<IpNet> {
    Ipv4Net::new(Ipv4Addr::from((key >> 8) as u32), (key & 0xff) as u8)
        .ok()
        .map(IpNet::V4)
}

/// Every prefix with its paths, IPv4 and IPv6 apart.
#[derive(Default)]
pub(super) struct PrefixTable {
    v4: DenseMap<u64>,
    v6: DenseMap<Ipv6Net>,
}

impl PrefixTable {
    #[cfg(test)]
    fn len(&self) -> usize {
        self.v4.entries.len() + self.v6.entries.len()
    }

    pub(super) fn get(&self, prefix: &IpNet) -> Option<&PrefixEntry> {
        match prefix {
            IpNet::V4(n) => self.v4.get(&v4_key(n)),
            IpNet::V6(n) => self.v6.get(n),
        }
    }

    pub(super) fn get_mut(&mut self, prefix: &IpNet) -> Option<&mut PrefixEntry> {
        match prefix {
            IpNet::V4(n) => self.v4.get_mut(&v4_key(n)),
            IpNet::V6(n) => self.v6.get_mut(n),
        }
    }

    /// The entry of `prefix`, made (empty) if there is none: remove it
    /// again if it stays empty.
    pub(super) fn entry(&mut self, prefix: &IpNet) -> &mut PrefixEntry {
        match prefix {
            IpNet::V4(n) => self.v4.entry(v4_key(n)),
            IpNet::V6(n) => self.v6.entry(*n),
        }
    }

    /// Where the entry of `prefix` is, made (empty) if there is none, for
    /// [`PrefixTable::at_mut`]: valid until an entry is removed. Finding
    /// the places of several prefixes in one pass lets the CPU overlap
    /// their cache misses (the index of a full table is megabytes).
    pub(super) fn place(&mut self, prefix: &IpNet) -> Place {
        match prefix {
            IpNet::V4(n) => Place::V4(self.v4.insert_position(v4_key(n))),
            IpNet::V6(n) => Place::V6(self.v6.insert_position(*n)),
        }
    }

    /// The entry at `place` ([`PrefixTable::place`]).
    pub(super) fn at_mut(&mut self, place: Place) -> Option<&mut PrefixEntry> {
        match place {
            Place::V4(i) => self.v4.entries.get_mut(i).map(|(_, e)| e),
            Place::V6(i) => self.v6.entries.get_mut(i).map(|(_, e)| e),
        }
    }

    pub(super) fn remove(&mut self, prefix: &IpNet) {
        match prefix {
            IpNet::V4(n) => self.v4.remove(&v4_key(n)),
            IpNet::V6(n) => self.v6.remove(n),
        }
    }

    /// Every prefix and its entry, in no order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (IpNet, &PrefixEntry)> {
        let v4 = self
            .v4
            .entries
            .iter()
            .filter_map(|(k, e)| Some((v4_net(*k)?, e)));
        v4.chain(self.v6.entries.iter().map(|(n, e)| (IpNet::V6(*n), e)))
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (IpNet, &mut PrefixEntry)> {
        let v4 = self
            .v4
            .entries
            .iter_mut()
            .filter_map(|(k, e)| Some((v4_net(*k)?, e)));
        v4.chain(self.v6.entries.iter_mut().map(|(n, e)| (IpNet::V6(*n), e)))
    }
}

/// The position of an entry in its family's vector ([`PrefixTable::place`]).
#[derive(Clone, Copy, Debug)]
pub(super) enum Place {
    V4(usize),
    V6(usize),
}

/// A hash map kept as a dense vector of (key, entry) and a hash index of
/// positions into it: 4 bytes and a control byte per index bucket instead
/// of a whole (key, entry) per bucket, and no stored hashes (keys are
/// re-hashed when the index grows; they are a few bytes). Removal swaps the
/// last entry into the hole. At most `u32::MAX` entries.
struct DenseMap<K> {
    entries: Vec<(K, PrefixEntry)>,
    index: HashTable<u32>,
    hasher: BuildPrefixHasher,
}

impl<K> Default for DenseMap<K> {
    fn default() -> Self {
        DenseMap {
            entries: Vec::new(),
            index: HashTable::new(),
            hasher: BuildPrefixHasher::default(),
        }
    }
}

impl<K: Copy + Eq + Hash> DenseMap<K> {
    fn position(&self, key: &K) -> Option<usize> {
        let entries = &self.entries;
        self.index
            .find(self.hasher.hash_one(key), |&i| {
                entries.get(i as usize).is_some_and(|(k, _)| k == key)
            })
            .map(|&i| i as usize)
    }

    fn get(&self, key: &K) -> Option<&PrefixEntry> {
        let i = self.position(key)?;
        self.entries.get(i).map(|(_, e)| e)
    }

    fn get_mut(&mut self, key: &K) -> Option<&mut PrefixEntry> {
        let i = self.position(key)?;
        self.entries.get_mut(i).map(|(_, e)| e)
    }

    fn entry(&mut self, key: K) -> &mut PrefixEntry {
        let i = self.insert_position(key);
        let last = self.entries.len() - 1;
        &mut self.entries[i.min(last)].1
    }

    /// The position of `key`'s entry, made (empty) if there is none.
    fn insert_position(&mut self, key: K) -> usize {
        let DenseMap {
            entries,
            index,
            hasher,
        } = self;
        let eq = |&i: &u32| entries.get(i as usize).is_some_and(|(k, _)| *k == key);
        let rehash = |&i: &u32| {
            entries
                .get(i as usize)
                .map_or(0, |(k, _)| hasher.hash_one(k))
        };
        match index.entry(hasher.hash_one(key), eq, rehash) {
            Entry::Occupied(e) => *e.get() as usize,
            Entry::Vacant(e) => {
                let i = entries.len();
                e.insert(i as u32);
                entries.push((key, PrefixEntry::default()));
                i
            }
        }
    }

    fn remove(&mut self, key: &K) {
        let DenseMap {
            entries,
            index,
            hasher,
        } = self;
        let found = index.find_entry(hasher.hash_one(key), |&i| {
            entries.get(i as usize).is_some_and(|(k, _)| k == key)
        });
        let Ok(found) = found else {
            return;
        };
        let (i, _) = found.remove();
        let i = i as usize;
        let last = entries.len() - 1;
        if i != last {
            // The last entry moves into the hole: point its index slot there.
            if let Some((moved, _)) = entries.get(last) {
                if let Some(slot) = index.find_mut(hasher.hash_one(moved), |&j| j as usize == last)
                {
                    *slot = i as u32;
                }
            }
        }
        entries.swap_remove(i);
        if entries.capacity() > 4096 && entries.len() < entries.capacity() / 4 {
            entries.shrink_to(entries.len() * 2);
            index.shrink_to(entries.len() * 2, |&i| {
                entries
                    .get(i as usize)
                    .map_or(0, |(k, _)| hasher.hash_one(k))
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::collections::BTreeMap;

    fn route(peer: u32, path_id: Option<u32>) -> Route {
        Route::new(
            RouteSource::Peer(PeerId(peer)),
            path_id,
            Arc::new(PathAttributes::default()),
        )
    }

    #[test]
    fn routes_and_entries_are_compact() {
        assert_eq!(std::mem::size_of::<Route>(), 24);
        assert_eq!(std::mem::size_of::<PrefixEntry>(), 24);
        assert_eq!(std::mem::size_of::<(u64, PrefixEntry)>(), 32);
    }

    #[test]
    fn route_fields_round_trip() {
        let r = route(3, Some(7));
        assert_eq!(r.source(), RouteSource::Peer(PeerId(3)));
        assert_eq!(r.path_id(), Some(7));
        assert_eq!(route(3, None).path_id(), None);
        assert_eq!(route(3, Some(0)).path_id(), Some(0));
        let local = Route::new(RouteSource::Local, None, r.attrs.clone());
        assert_eq!(local.source(), RouteSource::Local);
        let mut s = r.clone();
        s.set_stale(true);
        assert!(s.stale() && !r.stale());
        assert!(s.same_path(&r) && s != r);
    }

    #[test]
    fn entries_grow_shrink_and_reorder() {
        let mut e = PrefixEntry::default();
        assert!(e.is_empty() && e.best().is_empty());
        e.push(route(1, None));
        assert!(matches!(e, PrefixEntry::One(_)));
        e.push(route(2, None));
        e.push(route(3, None));
        e.set_best(&[2, 0]);
        let order: Vec<RouteSource> = e.routes().iter().map(Route::source).collect();
        assert_eq!(
            order,
            [3, 1, 2].map(|p| RouteSource::Peer(PeerId(p))).to_vec()
        );
        assert_eq!(e.best().len(), 2);
        assert!(e.has_best());
        e.remove(0);
        assert_eq!(e.position(RouteSource::Peer(PeerId(2)), None), Some(1));
        e.retain(|r| r.source() == RouteSource::Peer(PeerId(2)));
        assert!(matches!(e, PrefixEntry::One(_)));
        e.set_best(&[]);
        assert!(e.best().is_empty() && !e.has_best());
        e.retain(|_| false);
        assert!(e.is_empty());
    }

    /// Inserts and removals at random agree with a `BTreeMap`, including
    /// the index fix-up when the last entry moves into a removed one's place.
    #[test]
    fn table_matches_a_btree_map() {
        let mut table = PrefixTable::default();
        let mut model: BTreeMap<IpNet, u32> = BTreeMap::new();
        let mut x: u64 = 0x1234_5678;
        for step in 0..20_000u32 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let i = (x >> 40) as u32 % 3000;
            let prefix: IpNet = if i.is_multiple_of(3) {
                format!("2001:db8:{:x}::/48", i).parse().unwrap()
            } else {
                IpNet::V4(Ipv4Net::new(Ipv4Addr::from(i << 8), 24).unwrap())
            };
            if (x >> 20).is_multiple_of(3) {
                table.remove(&prefix);
                model.remove(&prefix);
            } else {
                let e = table.entry(&prefix);
                *e = PrefixEntry::default();
                e.push(route(step, None));
                model.insert(prefix, step);
            }
        }
        assert_eq!(table.len(), model.len());
        let got: BTreeMap<IpNet, u32> = table
            .iter()
            .map(|(p, e)| match e.routes()[0].source() {
                RouteSource::Peer(p2) => (p, p2.0),
                RouteSource::Local => (p, u32::MAX),
            })
            .collect();
        assert_eq!(got, model);
        for (p, s) in &model {
            assert_eq!(
                table.get(p).unwrap().routes()[0].source(),
                RouteSource::Peer(PeerId(*s))
            );
        }
    }
}
