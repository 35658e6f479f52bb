//! The attributes of a path as the RIB keeps them: the decision-relevant
//! fields pulled out of an UPDATE (RFC 4271 §5), shared by `Arc` between
//! all prefixes the UPDATE carried.

use crate::wire::{
    Aggregator, AsPath, AttributeValue, Community, ExtendedCommunity, LargeCommunity, NextHop,
    Origin, PathAttribute, SessionParams, Update,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A path's attributes, compact and typed.
///
/// `local_pref` is what was received (or set by us); the decision process
/// uses [`crate::rib::RibConfig::default_local_pref`] when it is `None`.
/// `next_hop` is `None` only for locally originated routes ("this router").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathAttributes {
    pub origin: Origin,
    pub as_path: AsPath,
    /// NEXT_HOP (IPv4 NLRI) or the global address of MP_REACH_NLRI.
    pub next_hop: Option<IpAddr>,
    /// The link-local IPv6 next hop of MP_REACH_NLRI (RFC 2545 §3), if any.
    pub next_hop_link_local: Option<Ipv6Addr>,
    /// MULTI_EXIT_DISC (RFC 4271 §5.1.4).
    pub med: Option<u32>,
    /// LOCAL_PREF (RFC 4271 §5.1.5); cleared when received over eBGP.
    pub local_pref: Option<u32>,
    pub atomic_aggregate: bool,
    pub aggregator: Option<Aggregator>,
    /// COMMUNITIES (RFC 1997), sorted, without duplicates.
    pub communities: Vec<Community>,
    pub extended_communities: Vec<ExtendedCommunity>,
    pub large_communities: Vec<LargeCommunity>,
    /// ORIGINATOR_ID (RFC 4456 §8).
    pub originator_id: Option<Ipv4Addr>,
    /// CLUSTER_LIST (RFC 4456 §8), most recent reflector first.
    pub cluster_list: Vec<Ipv4Addr>,
    /// Attributes this implementation does not interpret, as received;
    /// passed on through [`PathAttribute::readvertised`] on export.
    pub unknown: Vec<PathAttribute>,
}

impl Default for PathAttributes {
    /// ORIGIN IGP, empty AS path, no next hop (a local route), nothing else.
    fn default() -> Self {
        PathAttributes {
            origin: Origin::Igp,
            as_path: AsPath::default(),
            next_hop: None,
            next_hop_link_local: None,
            med: None,
            local_pref: None,
            atomic_aggregate: false,
            aggregator: None,
            communities: Vec::new(),
            extended_communities: Vec::new(),
            large_communities: Vec::new(),
            originator_id: None,
            cluster_list: Vec::new(),
            unknown: Vec::new(),
        }
    }
}

impl PathAttributes {
    /// The attributes of `update` without any next hop (the caller adds the
    /// NEXT_HOP or MP_REACH_NLRI one, per family). The AS path and
    /// aggregator are the RFC 6793 §4.2.3 effective ones under `params`.
    pub fn from_update(update: &Update, params: &SessionParams) -> Self {
        let (as_path, aggregator) = update.effective_as_path(params);
        let mut attrs = PathAttributes {
            as_path: as_path.unwrap_or_default(),
            aggregator,
            ..PathAttributes::default()
        };
        for attr in &update.attributes {
            match &attr.value {
                AttributeValue::Origin(o) => attrs.origin = *o,
                AttributeValue::MultiExitDisc(m) => attrs.med = Some(*m),
                AttributeValue::LocalPref(l) => attrs.local_pref = Some(*l),
                AttributeValue::AtomicAggregate => attrs.atomic_aggregate = true,
                AttributeValue::Communities(c) => attrs.communities = c.clone(),
                AttributeValue::ExtendedCommunities(c) => attrs.extended_communities = c.clone(),
                AttributeValue::LargeCommunities(c) => attrs.large_communities = c.clone(),
                AttributeValue::OriginatorId(o) => attrs.originator_id = Some(*o),
                AttributeValue::ClusterList(c) => attrs.cluster_list = c.clone(),
                AttributeValue::Unknown { .. } => attrs.unknown.push(attr.clone()),
                // Folded into `as_path`/`aggregator`, or per-family next hops
                // and NLRI the caller handles.
                AttributeValue::AsPath(_)
                | AttributeValue::As4Path(_)
                | AttributeValue::Aggregator(_)
                | AttributeValue::As4Aggregator(_)
                | AttributeValue::NextHop(_)
                | AttributeValue::MpReach(_)
                | AttributeValue::MpUnreach(_) => {}
            }
        }
        attrs.communities.sort_unstable();
        attrs.communities.dedup();
        attrs
    }

    /// Sets the next hop from an MP_REACH_NLRI next hop; false for a next
    /// hop of a kind the RIB cannot use.
    pub(crate) fn set_mp_next_hop(&mut self, next_hop: &NextHop) -> bool {
        match next_hop {
            NextHop::Ipv4(a) => {
                self.next_hop = Some(IpAddr::V4(*a));
                self.next_hop_link_local = None;
                true
            }
            NextHop::Ipv6 { global, link_local } => {
                self.next_hop = Some(IpAddr::V6(*global));
                self.next_hop_link_local = *link_local;
                true
            }
            NextHop::Other(_) => false,
        }
    }

    /// The LOCAL_PREF the decision process uses (RFC 4271 §9.1.1).
    pub fn effective_local_pref(&self, default: u32) -> u32 {
        self.local_pref.unwrap_or(default)
    }

    /// The MED the decision process uses: a missing MED is 0 (RFC 4271
    /// §9.1.2.2 c).
    pub fn effective_med(&self) -> u32 {
        self.med.unwrap_or(0)
    }

    /// The next hop as MP_REACH_NLRI carries it, if there is one.
    pub fn mp_next_hop(&self) -> Option<NextHop> {
        match self.next_hop? {
            IpAddr::V4(a) => Some(NextHop::Ipv4(a)),
            IpAddr::V6(global) => Some(NextHop::Ipv6 {
                global,
                link_local: self.next_hop_link_local,
            }),
        }
    }

    /// The path attributes to put in an UPDATE, in type-code order, without
    /// NEXT_HOP / MP_REACH_NLRI: those come from [`PathAttributes::mp_next_hop`]
    /// and the prefixes, which is how `rib::pack::AttrSet::new` takes them.
    /// Unknown attributes are included as stored (export already applied
    /// [`PathAttribute::readvertised`]). AS4_PATH for 2-octet sessions is the
    /// encoder's business ([`AsPath::split_for_two_octet`]).
    pub fn to_wire_attributes(&self) -> Vec<PathAttribute> {
        let mut out = Vec::with_capacity(8 + self.unknown.len());
        out.push(PathAttribute::new(AttributeValue::Origin(self.origin)));
        out.push(PathAttribute::new(AttributeValue::AsPath(
            self.as_path.clone(),
        )));
        if let Some(m) = self.med {
            out.push(PathAttribute::new(AttributeValue::MultiExitDisc(m)));
        }
        if let Some(l) = self.local_pref {
            out.push(PathAttribute::new(AttributeValue::LocalPref(l)));
        }
        if self.atomic_aggregate {
            out.push(PathAttribute::new(AttributeValue::AtomicAggregate));
        }
        if let Some(a) = self.aggregator {
            out.push(PathAttribute::new(AttributeValue::Aggregator(a)));
        }
        if !self.communities.is_empty() {
            out.push(PathAttribute::new(AttributeValue::Communities(
                self.communities.clone(),
            )));
        }
        if let Some(o) = self.originator_id {
            out.push(PathAttribute::new(AttributeValue::OriginatorId(o)));
        }
        if !self.cluster_list.is_empty() {
            out.push(PathAttribute::new(AttributeValue::ClusterList(
                self.cluster_list.clone(),
            )));
        }
        if !self.extended_communities.is_empty() {
            out.push(PathAttribute::new(AttributeValue::ExtendedCommunities(
                self.extended_communities.clone(),
            )));
        }
        if !self.large_communities.is_empty() {
            out.push(PathAttribute::new(AttributeValue::LargeCommunities(
                self.large_communities.clone(),
            )));
        }
        out.extend(self.unknown.iter().cloned());
        out.sort_by_key(|a| a.type_code());
        out
    }

    /// Whether COMMUNITIES holds `c`.
    pub fn has_community(&self, c: Community) -> bool {
        self.communities.contains(&c)
    }

    /// Whether an attribute of `type_code` is among the unknown ones.
    pub fn has_unknown(&self, type_code: u8) -> bool {
        self.unknown.iter().any(|a| a.type_code() == type_code)
    }
}
