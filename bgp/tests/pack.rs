//! UPDATE packing (`bgp::rib::pack`): messages filled to the session's size
//! limit and no further, attribute sets kept apart, coalescing, Adj-RIB-Out
//! suppression, route refresh, End-of-RIB, and a property test that the
//! peer's view after decoding everything sent equals what we meant.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bgp::rib::pack::{end_of_rib, AttrSet, EncodedFlush, Flushed, PackError, UpdatePacker};
use bgp::wire::*;
use bytes::{Bytes, BytesMut};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

fn params(extended_message: bool, add_path: &[Family]) -> SessionParams {
    let mut families = AddPathFamilies::EMPTY;
    for f in add_path {
        families.insert(*f);
    }
    SessionParams {
        four_octet_as: true,
        extended_message,
        add_path: families,
    }
}

/// ORIGIN, AS_PATH, MED and, if `padding` > 0, an unknown optional
/// transitive attribute of that many bytes.
fn attributes(asn: u32, padding: usize) -> Vec<PathAttribute> {
    let mut a = vec![
        PathAttribute::new(AttributeValue::Origin(Origin::Igp)),
        PathAttribute::new(AttributeValue::AsPath(AsPath::sequence([asn]))),
        PathAttribute::new(AttributeValue::MultiExitDisc(asn)),
    ];
    if padding > 0 {
        a.push(PathAttribute::new(AttributeValue::Unknown {
            type_code: 99,
            data: Bytes::from(vec![0xab; padding]),
        }));
    }
    a
}

fn set_v4(asn: u32, padding: usize) -> Arc<AttrSet> {
    Arc::new(AttrSet::ipv4(attributes(asn, padding), Ipv4Addr::new(192, 0, 2, 1)).unwrap())
}

fn set_v6(asn: u32, padding: usize, link_local: bool) -> Arc<AttrSet> {
    Arc::new(
        AttrSet::ipv6(
            attributes(asn, padding),
            "2001:db8::1".parse().unwrap(),
            link_local.then(|| "fe80::1".parse().unwrap()),
        )
        .unwrap(),
    )
}

/// The `i`th /`len` IPv4 prefix inside 10.0.0.0/8 (len ≥ 8).
fn v4(i: u32, len: u8) -> Nlri {
    let addr = (10u32 << 24).wrapping_add(i << (32 - u32::from(len)));
    Nlri::new(IpNet::V4(Ipv4Net::new(Ipv4Addr::from(addr), len).unwrap()))
}

/// The `i`th /`len` IPv6 prefix inside 2001:db8::/32 (len ≥ 48).
fn v6(i: u64, len: u8) -> Nlri {
    let addr = (0x2001_0db8u128 << 96) | (u128::from(i) << (128 - u32::from(len)));
    Nlri::new(IpNet::V6(Ipv6Net::new(Ipv6Addr::from(addr), len).unwrap()))
}

/// Encoded length of a list of attributes.
fn attributes_len(attrs: &[PathAttribute], params: &SessionParams) -> usize {
    let mut b = BytesMut::new();
    for a in attrs {
        a.encode(params, &mut b).unwrap();
    }
    b.len()
}

/// Encodes every message (which must succeed and respect the limit) and
/// decodes it back with the same parameters.
fn wire_round_trip(messages: &[Message], params: &SessionParams) -> Vec<(usize, Message)> {
    messages
        .iter()
        .map(|m| {
            let bytes = m.to_bytes(params).expect("every packed message encodes");
            assert!(bytes.len() <= params.max_message_len());
            let back = decode(&bytes, params).expect("every packed message decodes");
            if let Message::Update(u) = &back {
                assert!(u.faults.is_empty(), "faults: {:?}", u.faults);
            }
            (bytes.len(), back)
        })
        .collect()
}

/// What a route looks like to the peer: its attributes (without NEXT_HOP
/// and MP_*) and its next hop.
type PeerRoute = (Vec<AttributeValue>, NextHop);

fn intended(set: &AttrSet) -> PeerRoute {
    (
        set.attributes()
            .unwrap()
            .into_iter()
            .map(|a| a.value)
            .collect(),
        set.next_hop().clone(),
    )
}

/// The peer's Adj-RIB-In, built only from what it decoded.
#[derive(Default, Debug)]
struct Peer {
    routes: BTreeMap<Nlri, PeerRoute>,
}

impl Peer {
    fn apply(&mut self, msg: &Message) {
        let Message::Update(u) = msg else { return };
        for n in &u.withdrawn {
            self.routes.remove(n);
        }
        if let Some(un) = u.mp_unreach() {
            for n in &un.withdrawn {
                self.routes.remove(n);
            }
        }
        let common: Vec<AttributeValue> = u
            .attributes
            .iter()
            .filter(|a| {
                !matches!(
                    a.type_code(),
                    attr_type::NEXT_HOP | attr_type::MP_REACH_NLRI | attr_type::MP_UNREACH_NLRI
                )
            })
            .map(|a| a.value.clone())
            .collect();
        if !u.nlri.is_empty() {
            let nh = NextHop::Ipv4(u.next_hop().expect("NEXT_HOP with IPv4 NLRI"));
            for n in &u.nlri {
                self.routes.insert(*n, (common.clone(), nh.clone()));
            }
        }
        if let Some(r) = u.mp_reach() {
            assert_eq!(
                u.attributes[0].type_code(),
                attr_type::MP_REACH_NLRI,
                "RFC 7606 §5.1: MP_REACH_NLRI first"
            );
            assert!(u.next_hop().is_none(), "no NEXT_HOP in MP-only UPDATEs");
            for n in &r.nlri {
                self.routes.insert(*n, (common.clone(), r.next_hop.clone()));
            }
        }
    }
}

/// Flushes `packer` with `flush` and its `twin` (given the same changes)
/// with `flush_encoded`, checks that the latter wrote exactly the encoding
/// of the former's messages, and returns the former's result.
fn flush_twins(packer: &mut UpdatePacker, twin: &mut UpdatePacker) -> Flushed {
    let p = *packer.params();
    let flushed = packer.flush();
    let mut bytes = BytesMut::new();
    let encoded = twin.flush_encoded(&mut bytes);
    let mut want = BytesMut::new();
    for m in &flushed.messages {
        m.encode(&p, &mut want).unwrap();
    }
    assert_eq!(
        &bytes[..],
        &want[..],
        "flush_encoded wrote what flush's messages encode to"
    );
    let updates = flushed
        .messages
        .iter()
        .filter(|m| matches!(m, Message::Update(_)))
        .count();
    assert_eq!(
        encoded,
        EncodedFlush {
            messages: flushed.messages.len(),
            updates,
            rejected: flushed.rejected.clone(),
            errors: Vec::new(),
        }
    );
    assert_eq!(packer.rejected_len(), twin.rejected_len());
    flushed
}

fn updates(f: &Flushed) -> Vec<&Update> {
    f.messages
        .iter()
        .filter_map(|m| match m {
            Message::Update(u) => Some(u),
            _ => None,
        })
        .collect()
}

/// All announced NLRI of the decoded messages, checking none repeats.
fn announced(decoded: &[(usize, Message)]) -> BTreeSet<Nlri> {
    let mut all = BTreeSet::new();
    for (_, m) in decoded {
        if let Message::Update(u) = m {
            for n in u
                .nlri
                .iter()
                .chain(u.mp_reach().map_or(&[][..], |r| &r.nlri))
            {
                assert!(all.insert(*n), "{n:?} sent twice");
            }
        }
    }
    all
}

#[test]
fn ipv4_prefixes_fill_messages_to_the_limit() {
    for extended in [false, true] {
        let p = params(extended, &[]);
        let set = set_v4(64512, 0);
        let mut packer = UpdatePacker::new(p);
        let input: BTreeSet<Nlri> = (0..20_000).map(|i| v4(i, 24)).collect();
        for n in &input {
            packer.announce(*n, Arc::clone(&set)).unwrap();
        }
        let out = packer.flush();
        assert!(out.rejected.is_empty());

        let mut wire = set.attributes().unwrap();
        wire.push(PathAttribute::new(AttributeValue::NextHop(Ipv4Addr::new(
            192, 0, 2, 1,
        ))));
        let fixed = 19 + 2 + 2 + attributes_len(&wire, &p);
        let per_message = (p.max_message_len() - fixed) / 4; // a /24 is 4 bytes
        let expected = input.len().div_ceil(per_message);
        assert_eq!(out.messages.len(), expected, "extended={extended}");

        let decoded = wire_round_trip(&out.messages, &p);
        for (len, _) in &decoded[..decoded.len() - 1] {
            assert!(
                len + 4 > p.max_message_len(),
                "a message had room for one more"
            );
        }
        assert_eq!(announced(&decoded), input);
        let mut peer = Peer::default();
        decoded.iter().for_each(|(_, m)| peer.apply(m));
        assert!(peer.routes.values().all(|r| *r == intended(&set)));
    }
    // Extended messages need fewer UPDATEs.
    let count = |ext| {
        let mut packer = UpdatePacker::new(params(ext, &[]));
        let set = set_v4(1, 0);
        for i in 0..20_000 {
            packer.announce(v4(i, 24), Arc::clone(&set)).unwrap();
        }
        packer.flush().messages.len()
    };
    assert!(count(true) * 8 < count(false));
}

#[test]
fn ipv6_goes_in_mp_reach_with_link_local_next_hop() {
    for extended in [false, true] {
        let p = params(extended, &[]);
        let set = set_v6(64512, 0, true);
        let mut packer = UpdatePacker::new(p);
        let input: BTreeSet<Nlri> = (0..5_000).map(|i| v6(i, 64)).collect();
        for n in &input {
            packer.announce(*n, Arc::clone(&set)).unwrap();
        }
        let out = packer.flush();
        // Fixed part, attributes, MP_REACH header (extended length) with
        // AFI/SAFI, next-hop length, 32 bytes of next hop, reserved octet.
        let fixed = 23 + attributes_len(&set.attributes().unwrap(), &p) + 4 + 5 + 32;
        let per_message = (p.max_message_len() - fixed) / 9; // a /64 is 9 bytes
        assert_eq!(out.messages.len(), input.len().div_ceil(per_message));
        for u in updates(&out) {
            let r = u.mp_reach().unwrap();
            assert_eq!(r.family, Family::IPV6_UNICAST);
            assert_eq!(
                r.next_hop,
                NextHop::Ipv6 {
                    global: "2001:db8::1".parse().unwrap(),
                    link_local: Some("fe80::1".parse().unwrap()),
                }
            );
            assert!(u.nlri.is_empty() && u.next_hop().is_none());
        }
        let decoded = wire_round_trip(&out.messages, &p);
        for (len, _) in &decoded[..decoded.len() - 1] {
            assert!(len + 9 > p.max_message_len());
        }
        assert_eq!(announced(&decoded), input);
    }
}

#[test]
fn add_path_ids_count_in_the_size() {
    let p = params(false, &[Family::IPV4_UNICAST, Family::IPV6_UNICAST]);
    let set4 = set_v4(7, 0);
    let set6 = set_v6(7, 0, false);
    let mut packer = UpdatePacker::new(p);
    let mut input = BTreeSet::new();
    for i in 0..3_000 {
        for id in 1..=3 {
            let n4 = Nlri::with_path_id(v4(i, 24).prefix, id);
            let n6 = Nlri::with_path_id(v6(u64::from(i), 64).prefix, id);
            packer.announce(n4, Arc::clone(&set4)).unwrap();
            packer.announce(n6, Arc::clone(&set6)).unwrap();
            input.extend([n4, n6]);
        }
    }
    let out = packer.flush();
    let mut wire = set4.attributes().unwrap();
    wire.push(PathAttribute::new(AttributeValue::NextHop(Ipv4Addr::new(
        192, 0, 2, 1,
    ))));
    let per4 = (4096 - 23 - attributes_len(&wire, &p)) / 8;
    let per6 = (4096 - 23 - attributes_len(&set6.attributes().unwrap(), &p) - 4 - 5 - 16) / 13;
    assert_eq!(
        out.messages.len(),
        9_000usize.div_ceil(per4) + 9_000usize.div_ceil(per6)
    );
    let decoded = wire_round_trip(&out.messages, &p);
    assert_eq!(announced(&decoded), input);

    // No path id on an ADD-PATH session means path id 0.
    packer.announce(v4(1, 24), Arc::clone(&set4)).unwrap();
    let out = packer.flush();
    assert_eq!(
        updates(&out)[0].nlri,
        [Nlri::with_path_id(v4(1, 24).prefix, 0)]
    );

    // A path id without ADD-PATH is refused.
    let mut plain = UpdatePacker::new(params(false, &[]));
    assert_eq!(
        plain.announce(Nlri::with_path_id(v4(1, 24).prefix, 1), set4),
        Err(PackError::PathIdWithoutAddPath(Family::IPV4_UNICAST))
    );
}

#[test]
fn attribute_sets_never_share_an_update() {
    let p = params(false, &[]);
    let sets: Vec<Arc<AttrSet>> = (0..5).map(|i| set_v4(65000 + i, 0)).collect();
    let mut owner = HashMap::new();
    let mut packer = UpdatePacker::new(p);
    for i in 0..10_000u32 {
        let set = &sets[(i % 5) as usize];
        packer.announce(v4(i, 24), Arc::clone(set)).unwrap();
        owner.insert(v4(i, 24), intended(set));
    }
    // Equal sets in different Arcs pack together.
    let twin = Arc::new((*sets[0]).clone());
    for i in 10_000..10_005u32 {
        packer.announce(v4(i, 24), Arc::clone(&twin)).unwrap();
        owner.insert(v4(i, 24), intended(&twin));
    }
    let out = packer.flush();
    let decoded = wire_round_trip(&out.messages, &p);
    let mut per_set = HashMap::new();
    for (_, m) in &decoded {
        let mut peer = Peer::default();
        peer.apply(m);
        let kinds: BTreeSet<_> = peer.routes.values().map(|r| format!("{r:?}")).collect();
        assert_eq!(kinds.len(), 1, "one attribute set per UPDATE");
        for (n, r) in &peer.routes {
            assert_eq!(&owner[n], r);
        }
        *per_set
            .entry(kinds.into_iter().next().unwrap())
            .or_insert(0usize) += 1;
    }
    assert_eq!(per_set.len(), 5);
    // 2000 (+5) prefixes per set; as few messages as fit for each.
    let mut wire = sets[0].attributes().unwrap();
    wire.push(PathAttribute::new(AttributeValue::NextHop(Ipv4Addr::new(
        192, 0, 2, 1,
    ))));
    let per_message = (4096 - 23 - attributes_len(&wire, &p)) / 4;
    assert_eq!(
        out.messages.len(),
        2005usize.div_ceil(per_message) + 4 * 2000usize.div_ceil(per_message)
    );
    // Deterministic: the same input in another order gives the same output.
    let mut again = UpdatePacker::new(p);
    for i in (0..10_000u32).rev() {
        again
            .announce(v4(i, 24), Arc::clone(&sets[(i % 5) as usize]))
            .unwrap();
    }
    for i in 10_000..10_005u32 {
        again.announce(v4(i, 24), Arc::clone(&twin)).unwrap();
    }
    assert_eq!(again.flush(), out);
}

#[test]
fn withdrawals_ipv4_and_ipv6_come_first_and_packed() {
    let p = params(false, &[]);
    let s4 = set_v4(1, 0);
    let s6 = set_v6(1, 0, false);
    let mut packer = UpdatePacker::new(p);
    for i in 0..3_000 {
        packer.announce(v4(i, 24), Arc::clone(&s4)).unwrap();
        packer
            .announce(v6(u64::from(i), 64), Arc::clone(&s6))
            .unwrap();
    }
    let first = packer.flush();
    let mut peer = Peer::default();
    wire_round_trip(&first.messages, &p)
        .iter()
        .for_each(|(_, m)| peer.apply(m));
    assert_eq!(peer.routes.len(), 6_000);

    for i in 0..3_000 {
        packer.withdraw(v4(i, 24)).unwrap();
        packer.withdraw(v6(u64::from(i), 64)).unwrap();
    }
    // Also a new announcement: it comes after the withdrawals.
    packer.announce(v4(5_000, 24), Arc::clone(&s4)).unwrap();
    let out = packer.flush();
    let per4 = (4096 - 23) / 4;
    let per6 = (4096 - 23 - 4 - 3) / 9;
    let n_withdraw = 3_000usize.div_ceil(per4) + 3_000usize.div_ceil(per6);
    assert_eq!(out.messages.len(), n_withdraw + 1);
    let ups = updates(&out);
    for u in &ups[..n_withdraw] {
        assert_eq!(u.announced_count(), 0);
        assert!(u.withdrawn_count() > 0);
        if let Some(un) = u.mp_unreach() {
            assert_eq!(un.family, Family::IPV6_UNICAST);
            assert!(u.withdrawn.is_empty());
        }
    }
    assert_eq!(ups[n_withdraw].nlri, [v4(5_000, 24)]);
    wire_round_trip(&out.messages, &p)
        .iter()
        .for_each(|(_, m)| peer.apply(m));
    assert_eq!(
        peer.routes.keys().copied().collect::<Vec<_>>(),
        [v4(5_000, 24)]
    );
    assert!(packer.is_idle());
}

#[test]
fn coalescing_keeps_only_the_last_change() {
    let p = params(false, &[]);
    let a = set_v4(1, 0);
    let b = set_v4(2, 0);
    let mut packer = UpdatePacker::new(p);

    // Announce A then B: only B.
    packer.announce(v4(1, 24), Arc::clone(&a)).unwrap();
    packer.announce(v4(1, 24), Arc::clone(&b)).unwrap();
    let out = packer.flush();
    assert_eq!(out.messages.len(), 1);
    assert_eq!(updates(&out)[0].as_path(), Some(&AsPath::sequence([2])));
    assert!(packer.is_idle());

    // Announce A, then withdraw: only the withdrawal (the packer keeps no
    // Adj-RIB-Out; the peer may have had the prefix).
    packer.announce(v4(1, 24), Arc::clone(&a)).unwrap();
    packer.withdraw(v4(1, 24)).unwrap();
    let out = packer.flush();
    assert_eq!(out.messages.len(), 1);
    assert_eq!(updates(&out)[0].withdrawn, [v4(1, 24)]);
    assert!(updates(&out)[0].attributes.is_empty());

    // Withdraw twice: one withdrawal.
    packer.withdraw(v4(2, 24)).unwrap();
    packer.withdraw(v4(2, 24)).unwrap();
    let out = packer.flush();
    assert_eq!(out.messages.len(), 1);
    assert_eq!(updates(&out)[0].withdrawn, [v4(2, 24)]);

    // Withdraw then re-announce before the flush: only the announcement
    // (it replaces, RFC 4271 §3.1).
    packer.withdraw(v4(1, 24)).unwrap();
    packer.announce(v4(1, 24), Arc::clone(&b)).unwrap();
    let out = packer.flush();
    assert_eq!(out.messages.len(), 1);
    assert_eq!(updates(&out)[0].nlri, [v4(1, 24)]);
    assert!(updates(&out)[0].withdrawn.is_empty());

    // An announcement is sent even if it repeats the last one: the caller
    // (the RIB) sends differences only, and a route refresh repeats on
    // purpose.
    packer.announce(v4(1, 24), Arc::clone(&b)).unwrap();
    assert_eq!(updates(&packer.flush())[0].nlri, [v4(1, 24)]);
    assert_eq!(packer.flush(), Flushed::default());
}

#[test]
fn route_refresh_markers_bracket_the_resent_routes() {
    let p = params(false, &[]);
    let a = set_v4(1, 0);
    let mut packer = UpdatePacker::new(p);
    for i in 0..10 {
        packer.announce(v4(i, 24), Arc::clone(&a)).unwrap();
    }
    packer.flush();

    // Enhanced route refresh for IPv4: BoRR, the routes the caller
    // re-announces, EoRR.
    packer.bracket_refresh(Family::IPV4_UNICAST);
    packer.bracket_refresh(Family::IPV4_UNICAST);
    for i in 0..10 {
        packer.announce(v4(i, 24), Arc::clone(&a)).unwrap();
    }
    // A change after the refresh started still wins.
    packer.withdraw(v4(0, 24)).unwrap();
    let out = packer.flush();
    assert_eq!(out.messages.len(), 4);
    assert_eq!(
        out.messages[0],
        Message::RouteRefresh(RouteRefresh::new(
            Family::IPV4_UNICAST,
            RouteRefreshSubtype::BeginningOfRefresh
        ))
    );
    assert_eq!(updates(&out)[0].withdrawn, [v4(0, 24)]);
    assert_eq!(updates(&out)[1].nlri.len(), 9);
    assert_eq!(
        out.messages[3],
        Message::RouteRefresh(RouteRefresh::new(
            Family::IPV4_UNICAST,
            RouteRefreshSubtype::EndOfRefresh
        ))
    );
    wire_round_trip(&out.messages, &p);
    assert!(packer.is_idle());
}

/// The messages of a `flush_encoded` output, split at their header lengths.
fn frames(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let len = usize::from(u16::from_be_bytes([rest[16], rest[17]]));
        let (frame, tail) = rest.split_at(len);
        out.push(frame);
        rest = tail;
    }
    out
}

/// A ROUTE-REFRESH for IPv4 unicast with `subtype` as it is on the wire
/// (RFC 2918 §3, RFC 7313 §3.2: AFI 1, subtype, SAFI 1).
fn ipv4_route_refresh_bytes(subtype: u8) -> Vec<u8> {
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&[0x00, 0x17, 0x05, 0x00, 0x01, subtype, 0x01]);
    m
}

/// RFC 7313 §4: a speaker supporting graceful restart MUST NOT send a BoRR
/// for a family before the End-of-RIB of that family. A refresh asked for
/// while the initial table (and its End-of-RIB) still waits goes out as
/// that table, unbracketed; once End-of-RIB is out, BoRR and EoRR bracket.
#[test]
fn no_refresh_markers_before_the_end_of_rib() {
    let p = params(false, &[]);
    let a = set_v4(1, 0);
    let mut packer = UpdatePacker::new(p);
    packer.queue_end_of_rib(Family::IPV4_UNICAST);
    packer.announce(v4(1, 24), Arc::clone(&a)).unwrap();
    // The peer's ROUTE-REFRESH request before our first flush.
    packer.bracket_refresh(Family::IPV4_UNICAST);
    packer.announce(v4(1, 24), Arc::clone(&a)).unwrap();
    let mut bytes = BytesMut::new();
    let out = packer.flush_encoded(&mut bytes);
    let f = frames(&bytes);
    assert_eq!((out.messages, out.updates, f.len()), (2, 2, 2));
    assert!(f.iter().all(|m| m[18] == 2), "only UPDATEs: {f:02x?}");
    // The End-of-RIB (an empty UPDATE) last.
    let mut eor = vec![0xff; 16];
    eor.extend_from_slice(&[0x00, 0x17, 0x02, 0, 0, 0, 0]);
    assert_eq!(f[1], &eor[..]);
    assert!(packer.is_idle());

    // The next request, after End-of-RIB: BoRR, the table, EoRR.
    packer.bracket_refresh(Family::IPV4_UNICAST);
    packer.announce(v4(1, 24), Arc::clone(&a)).unwrap();
    let mut bytes = BytesMut::new();
    packer.flush_encoded(&mut bytes);
    let f = frames(&bytes);
    assert_eq!(f.len(), 3, "{f:02x?}");
    assert_eq!(f[0], &ipv4_route_refresh_bytes(1)[..]);
    assert_eq!(f[1][18], 2);
    assert_eq!(f[2], &ipv4_route_refresh_bytes(2)[..]);
}

#[test]
fn end_of_rib_follows_the_updates() {
    let p = params(false, &[]);
    let mut packer = UpdatePacker::new(p);
    packer.announce(v4(1, 24), set_v4(1, 0)).unwrap();
    packer.queue_end_of_rib(Family::IPV4_UNICAST);
    packer.queue_end_of_rib(Family::IPV6_UNICAST);
    packer.queue_end_of_rib(Family::IPV4_UNICAST);
    let out = packer.flush();
    assert_eq!(out.messages.len(), 3);
    let decoded = wire_round_trip(&out.messages, &p);
    let eor: Vec<_> = decoded
        .iter()
        .filter_map(|(_, m)| match m {
            Message::Update(u) => u.is_end_of_rib(),
            _ => None,
        })
        .collect();
    assert_eq!(eor, [Family::IPV4_UNICAST, Family::IPV6_UNICAST]);
    assert_eq!(end_of_rib(Family::IPV6_UNICAST), out.messages[2]);
    assert!(packer.flush().messages.is_empty());
}

#[test]
fn an_attribute_set_with_room_for_one_prefix_sends_one_per_update() {
    let p = params(false, &[]);
    // 23 fixed + ORIGIN 4 + AS_PATH 9 + NEXT_HOP 7 + MED 7 + unknown
    // (4 + padding) + one /24 (4) = 4096.
    let padding = 4096 - 23 - 4 - 9 - 7 - 7 - 4 - 4;
    let big = set_v4(1, padding);
    let mut packer = UpdatePacker::new(p);
    for i in 0..3 {
        packer.announce(v4(i, 24), Arc::clone(&big)).unwrap();
    }
    let out = packer.flush();
    assert!(out.rejected.is_empty());
    let decoded = wire_round_trip(&out.messages, &p);
    assert_eq!(decoded.len(), 3);
    assert!(decoded.iter().all(|(len, _)| *len == 4096));
    assert_eq!(announced(&decoded).len(), 3);
}

#[test]
fn an_attribute_set_too_large_for_any_prefix_is_rejected() {
    let p = params(false, &[]);
    let padding = 4096 - 23 - 4 - 9 - 7 - 7 - 4 - 4 + 1;
    let too_big = set_v4(1, padding);
    let small = set_v4(1, 0);
    let mut packer = UpdatePacker::new(p);
    packer.announce(v4(1, 24), Arc::clone(&small)).unwrap();
    packer.flush();

    // The /24s no longer fit (and are withdrawn: the peer may have an old
    // route and must not keep it); a /8 (2 bytes) still does.
    packer.announce(v4(1, 24), Arc::clone(&too_big)).unwrap();
    packer.announce(v4(2, 24), Arc::clone(&too_big)).unwrap();
    packer
        .announce(
            Nlri::new("11.0.0.0/8".parse().unwrap()),
            Arc::clone(&too_big),
        )
        .unwrap();
    let out = packer.flush();
    assert_eq!(out.rejected.len(), 1);
    assert_eq!(out.rejected[0].prefixes, [v4(1, 24), v4(2, 24)]);
    assert!(matches!(
        out.rejected[0].error,
        PackError::RouteTooLarge { max: 4096, .. }
    ));
    let decoded = wire_round_trip(&out.messages, &p);
    assert_eq!(decoded.len(), 2);
    assert_eq!(updates(&out)[0].withdrawn, [v4(1, 24), v4(2, 24)]);
    assert_eq!(
        updates(&out)[1].nlri,
        [Nlri::new("11.0.0.0/8".parse().unwrap())]
    );
    assert_eq!(packer.rejected_len(), 2);
    // A later change of a rejected prefix is no longer counted as rejected.
    packer.announce(v4(2, 24), Arc::clone(&small)).unwrap();
    packer.withdraw(v4(1, 24)).unwrap();
    assert_eq!(packer.rejected_len(), 0);

    // With extended messages the same set fits.
    let mut ext = UpdatePacker::new(params(true, &[]));
    ext.announce(v4(1, 24), Arc::clone(&too_big)).unwrap();
    assert!(ext.flush().rejected.is_empty());

    // An attribute over 65535 bytes cannot be encoded at all: the set is
    // refused when it is made (it is stored encoded).
    let huge = AttrSet::ipv6(
        attributes(1, 70_000),
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
        None,
    );
    assert!(matches!(
        huge,
        Err(PackError::Encode(EncodeError::AttributeTooLong {
            type_code: 99,
            ..
        }))
    ));
}

#[test]
fn attribute_sets_are_checked() {
    let nh = Ipv4Addr::new(192, 0, 2, 1);
    let mut with_next_hop = attributes(1, 0);
    with_next_hop.push(PathAttribute::new(AttributeValue::NextHop(nh)));
    assert_eq!(
        AttrSet::ipv4(with_next_hop, nh),
        Err(PackError::ReservedAttribute(attr_type::NEXT_HOP))
    );
    let mut twice = attributes(1, 0);
    twice.push(PathAttribute::new(AttributeValue::MultiExitDisc(5)));
    assert_eq!(
        AttrSet::ipv4(twice, nh),
        Err(PackError::DuplicateAttribute(attr_type::MULTI_EXIT_DISC))
    );
    assert_eq!(
        AttrSet::ipv4(attributes(1, 0)[..1].to_vec(), nh),
        Err(PackError::MissingMandatory(attr_type::AS_PATH))
    );
    assert!(matches!(
        AttrSet::ipv4(attributes(1, 0), Ipv4Addr::UNSPECIFIED),
        Err(PackError::InvalidNextHop(_))
    ));
    // Attributes are kept in type order whatever order they came in.
    let mut reversed = attributes(1, 4);
    reversed.reverse();
    let set = AttrSet::ipv4(reversed, nh).unwrap();
    let types: Vec<u8> = set
        .attributes()
        .unwrap()
        .iter()
        .map(|a| a.type_code())
        .collect();
    assert_eq!(types, [1, 2, 4, 99]);
    // RFC 8950 (IPv4 NLRI, IPv6 next hop) is not supported.
    let mut packer = UpdatePacker::new(params(false, &[]));
    assert_eq!(
        packer.announce(v4(1, 24), set_v6(1, 0, false)),
        Err(PackError::FamilyMismatch {
            prefix: Family::IPV4_UNICAST,
            next_hop: Family::IPV6_UNICAST
        })
    );
}

#[test]
fn many_prefixes_pack_quickly() {
    // 200,000 prefixes in one set: O(n log n), no per-prefix re-encoding.
    let p = params(true, &[]);
    let set = set_v4(1, 0);
    let mut packer = UpdatePacker::new(p);
    for i in 0..200_000 {
        packer.announce(v4(i, 28), Arc::clone(&set)).unwrap();
    }
    let out = packer.flush();
    let total: usize = updates(&out).iter().map(|u| u.nlri.len()).sum();
    assert_eq!(total, 200_000);
    assert!(out.messages.len() <= 200_000 * 5 / (65535 - 60) + 1);
}

// ---- property test ----

#[derive(Clone, Debug)]
enum Op {
    Announce { prefix: usize, set: usize },
    Withdraw { prefix: usize },
    Flush,
    Resend { enhanced: bool },
    EndOfRib,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..48usize, 0..3usize).prop_map(|(prefix, set)| Op::Announce { prefix, set }),
        3 => (0..48usize).prop_map(|prefix| Op::Withdraw { prefix }),
        2 => Just(Op::Flush),
        1 => any::<bool>().prop_map(|enhanced| Op::Resend { enhanced }),
        1 => Just(Op::EndOfRib),
    ]
}

/// 24 IPv4 and 24 IPv6 prefixes of assorted lengths (ADD-PATH sessions
/// get two paths of some).
fn pool(add_path: bool) -> Vec<Nlri> {
    let mut v = Vec::new();
    for i in 0..24u32 {
        let mut n = v4(i / 2, [8, 16, 24, 32][(i % 4) as usize]);
        if add_path {
            n.path_id = Some(i % 2);
        }
        v.push(n);
    }
    for i in 0..24u64 {
        let mut n = v6(i / 2, [48, 64, 96, 128][(i % 4) as usize]);
        if add_path {
            n.path_id = Some((i % 2) as u32);
        }
        v.push(n);
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_peer_ends_up_with_what_we_intended(
        ops in proptest::collection::vec(op(), 1..120),
        extended in any::<bool>(),
        add_path in any::<bool>(),
        four_octet_as in any::<bool>(),
    ) {
        let families: &[Family] = if add_path {
            &[Family::IPV4_UNICAST, Family::IPV6_UNICAST]
        } else {
            &[]
        };
        let p = SessionParams { four_octet_as, ..params(extended, families) };
        // Set 2 is large: only a few prefixes fit one UPDATE, so splitting
        // happens with few prefixes.
        let padding = if extended { 65_300 } else { 3_950 };
        let sets4 = [set_v4(1, 0), set_v4(2, 0), set_v4(3, padding)];
        let sets6 = [set_v6(1, 0, true), set_v6(2, 0, false), set_v6(3, padding, true)];
        let prefixes = pool(add_path);
        let mut packer = UpdatePacker::new(p);
        // Given the same changes, flushed with `flush_encoded`.
        let mut twin = UpdatePacker::new(p);
        let mut want: BTreeMap<Nlri, PeerRoute> = BTreeMap::new();
        // The set each prefix was last announced with.
        let mut announced_set: BTreeMap<Nlri, usize> = BTreeMap::new();
        let mut peer = Peer::default();
        let apply = |f: Flushed, peer: &mut Peer| -> Result<(), TestCaseError> {
            prop_assert!(f.rejected.is_empty());
            for (_, m) in wire_round_trip(&f.messages, &p) {
                peer.apply(&m);
            }
            Ok(())
        };
        for op in ops {
            match op {
                Op::Announce { prefix, set } => {
                    let n = prefixes[prefix];
                    let s = if n.prefix.addr().is_ipv4() { &sets4[set] } else { &sets6[set] };
                    packer.announce(n, Arc::clone(s)).unwrap();
                    twin.announce(n, Arc::clone(s)).unwrap();
                    want.insert(n, intended(s));
                    announced_set.insert(n, set);
                }
                Op::Withdraw { prefix } => {
                    packer.withdraw(prefixes[prefix]).unwrap();
                    twin.withdraw(prefixes[prefix]).unwrap();
                    want.remove(&prefixes[prefix]);
                }
                Op::Flush => apply(flush_twins(&mut packer, &mut twin), &mut peer)?,
                Op::Resend { enhanced } => {
                    // What the speaker does on a ROUTE-REFRESH: every
                    // route of the family the peer should have, again.
                    if enhanced {
                        packer.bracket_refresh(Family::IPV6_UNICAST);
                        twin.bracket_refresh(Family::IPV6_UNICAST);
                    }
                    for n in want.keys().filter(|n| !n.prefix.addr().is_ipv4()) {
                        let set = &sets6[announced_set[n]];
                        packer.announce(*n, Arc::clone(set)).unwrap();
                        twin.announce(*n, Arc::clone(set)).unwrap();
                    }
                }
                Op::EndOfRib => {
                    packer.queue_end_of_rib(Family::IPV4_UNICAST);
                    twin.queue_end_of_rib(Family::IPV4_UNICAST);
                }
            }
        }
        apply(flush_twins(&mut packer, &mut twin), &mut peer)?;
        prop_assert_eq!(&peer.routes, &want);
        // Nothing left to send.
        prop_assert_eq!(packer.flush(), Flushed::default());
    }
}

/// Sets are stored encoded as for a 4-octet-AS session; on a 2-octet one
/// the packer re-encodes them (AS_TRANS in AS_PATH plus AS4_PATH, RFC 6793
/// §4.2.2), and still groups equal sets held in different `Arc`s.
#[test]
fn two_octet_session_reencodes_stored_sets() {
    let p = SessionParams {
        four_octet_as: false,
        ..params(false, &[])
    };
    let wide = 4_200_000_001;
    let a = set_v4(wide, 0);
    let b = set_v4(wide, 0);
    let mut packer = UpdatePacker::new(p);
    packer.announce(v4(1, 24), a).unwrap();
    packer.announce(v4(2, 24), b).unwrap();
    let out = packer.flush();
    assert!(out.rejected.is_empty());
    let decoded = wire_round_trip(&out.messages, &p);
    assert_eq!(decoded.len(), 1, "equal sets share one UPDATE");
    let Message::Update(u) = &decoded[0].1 else {
        panic!("not an UPDATE");
    };
    assert_eq!(u.nlri, [v4(1, 24), v4(2, 24)]);
    assert_eq!(
        u.as_path(),
        Some(&AsPath::sequence([u32::from(AS_TRANS)])),
        "2-octet AS_PATH carries AS_TRANS"
    );
    assert_eq!(u.effective_as_path(&p).0, Some(AsPath::sequence([wide])));
}

/// `flush_encoded` puts NEXT_HOP in its place among stored attributes with
/// one- and two-octet length fields (an AS_PATH over 255 bytes before it,
/// communities after it), on 4- and 2-octet sessions, with and without
/// ADD-PATH; rejected routes come out the same as with `flush`.
#[test]
fn encoded_flush_is_the_encoding_of_flush() {
    let long_path = AsPath::sequence((0..100).map(|i| 4_200_000_000 + i));
    let attributes = |path: AsPath| {
        vec![
            PathAttribute::new(AttributeValue::Origin(Origin::Egp)),
            PathAttribute::new(AttributeValue::AsPath(path)),
            PathAttribute::new(AttributeValue::LocalPref(200)),
            PathAttribute::new(AttributeValue::Communities(vec![Community(0xfde8_0001)])),
            PathAttribute::new(AttributeValue::OriginatorId(Ipv4Addr::new(10, 0, 0, 9))),
            PathAttribute::new(AttributeValue::ClusterList(vec![Ipv4Addr::new(
                10, 0, 0, 1,
            )])),
        ]
    };
    let nh = Ipv4Addr::new(192, 0, 2, 7);
    let sets = [
        Arc::new(AttrSet::ipv4(attributes(long_path.clone()), nh).unwrap()),
        Arc::new(AttrSet::ipv4(attributes(AsPath::sequence([65001])), nh).unwrap()),
        // Equal to the previous one in another `Arc`: same group.
        Arc::new(AttrSet::ipv4(attributes(AsPath::sequence([65001])), nh).unwrap()),
        Arc::new(
            AttrSet::ipv6(attributes(long_path), "2001:db8::7".parse().unwrap(), None).unwrap(),
        ),
        // No room for a prefix in a 4096-byte UPDATE: rejected.
        set_v4(9, 4_080),
    ];
    assert!(
        sets[0].encoded().len() > 400,
        "the long AS_PATH needs the extended length field"
    );
    for four_octet_as in [true, false] {
        for add_path in [&[][..], &[Family::IPV4_UNICAST, Family::IPV6_UNICAST][..]] {
            let p = SessionParams {
                four_octet_as,
                ..params(false, add_path)
            };
            let mut packer = UpdatePacker::new(p);
            let mut twin = UpdatePacker::new(p);
            for i in 0..3_000u32 {
                let set = &sets[(i % 5) as usize];
                let n = if set.family() == Family::IPV4_UNICAST {
                    v4(i, 24)
                } else {
                    v6(u64::from(i), 64)
                };
                packer.announce(n, Arc::clone(set)).unwrap();
                twin.announce(n, Arc::clone(set)).unwrap();
            }
            for i in 0..50u32 {
                packer.withdraw(v4(10_000 + i, 24)).unwrap();
                twin.withdraw(v4(10_000 + i, 24)).unwrap();
            }
            packer.queue_end_of_rib(Family::IPV4_UNICAST);
            twin.queue_end_of_rib(Family::IPV4_UNICAST);
            let out = flush_twins(&mut packer, &mut twin);
            assert_eq!(out.rejected.len(), 1, "the oversized set is rejected");
            assert!(updates(&out).len() > 4);
        }
    }
}
