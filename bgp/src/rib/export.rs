//! Export policy: whether a best path goes to a peer, and the attributes it
//! goes with (RFC 4271 §9.1.3 and §5.1, RFC 4456 §6 and §8, RFC 1997).

use super::{PathAttributes, PeerInfo, Route, RouteSource};
use crate::wire::{AsPath, AsSegment, Community, SegmentType};
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr};

/// The local settings export needs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ExportSettings {
    pub local_asn: u32,
    pub cluster_id: Ipv4Addr,
    pub default_local_pref: u32,
}

/// Whether `route` may be advertised to `target` at all, before rewrites.
/// `source` is the peer the route came from (`None`: originated here).
fn may_advertise(route: &Route, source: Option<&PeerInfo>, target: &PeerInfo) -> bool {
    let attrs = &route.attrs;
    // RFC 1997: NO_ADVERTISE goes to no peer, NO_EXPORT(_SUBCONFED) stays
    // inside the AS (no confederations here).
    if attrs.has_community(Community::NO_ADVERTISE) {
        return false;
    }
    if !target.internal
        && (attrs.has_community(Community::NO_EXPORT)
            || attrs.has_community(Community::NO_EXPORT_SUBCONFED))
    {
        return false;
    }
    match source {
        None => true,
        // Learned over eBGP: to everyone (RFC 4456 §6 "from an EBGP peer").
        Some(s) if !s.internal => true,
        // iBGP to eBGP: always.
        Some(_) if !target.internal => true,
        // iBGP to iBGP: only by reflection (RFC 4271 §9.1.3 split horizon;
        // RFC 4456 §6): from a client to clients and non-clients, from a
        // non-client to clients only.
        Some(s) => s.rr_client || target.rr_client,
    }
}

/// The attributes `route` is advertised to `target` with, or `None` if it
/// must not be. The caller has already excluded sending a route back to the
/// peer it came from.
pub(crate) fn export_attributes(
    prefix: &IpNet,
    route: &Route,
    source: Option<&PeerInfo>,
    target: &PeerInfo,
    settings: &ExportSettings,
) -> Option<PathAttributes> {
    if !may_advertise(route, source, target) || !target.policy.export.permits(prefix) {
        return None;
    }
    let mut attrs = PathAttributes::clone(&route.attrs);
    // RFC 4271 §5: unknown optional transitive attributes go on marked
    // Partial; unknown non-transitive ones stop here.
    attrs.unknown = attrs
        .unknown
        .iter()
        .filter_map(|a| a.readvertised())
        .collect();
    let self_next_hop = self_address(prefix, target);
    if target.internal {
        // RFC 4271 §5.1.5: LOCAL_PREF goes to internal peers.
        attrs.local_pref = Some(attrs.effective_local_pref(settings.default_local_pref));
        if let Some(s) = source.filter(|s| s.internal) {
            // Reflection (RFC 4456 §8): ORIGINATOR_ID names the router the
            // route came into the AS from, and our cluster goes first in
            // CLUSTER_LIST.
            attrs.originator_id.get_or_insert(s.router_id);
            attrs.cluster_list.insert(0, settings.cluster_id);
        }
        if target.policy.next_hop_self || attrs.next_hop.is_none() {
            set_next_hop(&mut attrs, self_next_hop)?;
        }
    } else {
        // RFC 4271 §5.1.2: prepend our AS.
        prepend_as(&mut attrs.as_path, settings.local_asn);
        // RFC 4271 §5.1.3: our own address on the session (we do not do
        // third-party next hops).
        set_next_hop(&mut attrs, self_next_hop)?;
        // RFC 4271 §5.1.5, RFC 4456 §8: iBGP-only attributes stay inside.
        attrs.local_pref = None;
        attrs.originator_id = None;
        attrs.cluster_list.clear();
        // RFC 4271 §5.1.4: a MED learned from a neighbouring AS is not
        // passed to other ASes; ours goes only where configured.
        let ours = matches!(route.source(), RouteSource::Local);
        if !(ours && target.policy.send_med) {
            attrs.med = None;
        }
    }
    for c in &target.policy.export_communities {
        if !attrs.communities.contains(c) {
            attrs.communities.push(*c);
        }
    }
    attrs.communities.sort_unstable();
    for c in &target.policy.export_large_communities {
        if !attrs.large_communities.contains(c) {
            attrs.large_communities.push(*c);
        }
    }
    Some(attrs)
}

/// Our address on `target`'s session for `prefix`'s family.
fn self_address(prefix: &IpNet, target: &PeerInfo) -> Option<IpAddr> {
    match prefix {
        IpNet::V4(_) => target.local_ipv4.map(IpAddr::V4),
        IpNet::V6(_) => target.local_ipv6.map(IpAddr::V6),
    }
}

/// Sets the next hop to ours; `None` (the route is not exported) if we have
/// no address of the family on the session.
fn set_next_hop(attrs: &mut PathAttributes, ours: Option<IpAddr>) -> Option<()> {
    attrs.next_hop = Some(ours?);
    attrs.next_hop_link_local = None;
    Some(())
}

/// Puts `asn` in front of the path (RFC 4271 §5.1.2 b).
pub(crate) fn prepend_as(path: &mut AsPath, asn: u32) {
    match path.segments.first_mut() {
        // A sequence has room for 255 ASes per segment on the wire.
        Some(seg) if seg.kind == SegmentType::Sequence && seg.asns.len() < 255 => {
            seg.asns.insert(0, asn);
        }
        _ => path.segments.insert(
            0,
            AsSegment {
                kind: SegmentType::Sequence,
                asns: std::iter::once(asn).collect(),
            },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepend_extends_a_leading_sequence_or_adds_one() {
        let mut p = AsPath::sequence([65002, 65003]);
        prepend_as(&mut p, 65001);
        assert_eq!(p, AsPath::sequence([65001, 65002, 65003]));
        let mut empty = AsPath::default();
        prepend_as(&mut empty, 65001);
        assert_eq!(empty, AsPath::sequence([65001]));
        let mut set = AsPath {
            segments: smallvec::smallvec![AsSegment {
                kind: SegmentType::Set,
                asns: [1, 2].into_iter().collect(),
            }],
        };
        prepend_as(&mut set, 65001);
        assert_eq!(set.segments.len(), 2);
        assert_eq!(set.first_as(), Some(65001));
        let mut full = AsPath::sequence(1..=255);
        prepend_as(&mut full, 65001);
        assert_eq!(full.segments.len(), 2);
        assert_eq!(full.len(), 256);
    }
}
