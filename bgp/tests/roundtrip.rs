//! Property tests: for generated messages under generated session
//! parameters, decode(encode(m)) == m and re-encoding is byte-stable.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bgp::wire::*;
use bytes::Bytes;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::collection::vec;
use proptest::prelude::*;
use std::net::{Ipv4Addr, Ipv6Addr};

fn params() -> impl Strategy<Value = SessionParams> {
    (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
        |(four, ext, ap4, ap6)| {
            let mut add_path = AddPathFamilies::EMPTY;
            if ap4 {
                add_path.insert(Family::IPV4_UNICAST);
            }
            if ap6 {
                add_path.insert(Family::IPV6_UNICAST);
            }
            SessionParams {
                four_octet_as: four,
                extended_message: ext,
                add_path,
            }
        },
    )
}

fn unicast_v4() -> impl Strategy<Value = Ipv4Addr> {
    (1u8..224, any::<[u8; 3]>()).prop_map(|(a, r)| Ipv4Addr::new(a, r[0], r[1], r[2]))
}

fn v4_prefix() -> impl Strategy<Value = IpNet> {
    (any::<u32>(), 0u8..=32).prop_map(|(a, l)| {
        IpNet::V4(
            Ipv4Net::new(Ipv4Addr::from(a), l)
                .map(|n| n.trunc())
                .unwrap_or_default(),
        )
    })
}

fn v6_prefix() -> impl Strategy<Value = IpNet> {
    (any::<u128>(), 0u8..=128).prop_map(|(a, l)| {
        IpNet::V6(
            Ipv6Net::new(Ipv6Addr::from(a), l)
                .map(|n| n.trunc())
                .unwrap_or_default(),
        )
    })
}

fn nlris(
    prefix: BoxedStrategy<IpNet>,
    add_path: bool,
    max: usize,
) -> impl Strategy<Value = Vec<Nlri>> {
    vec((prefix, any::<u32>()), 0..max).prop_map(move |v| {
        v.into_iter()
            .map(|(p, id)| {
                if add_path {
                    Nlri::with_path_id(p, id)
                } else {
                    Nlri::new(p)
                }
            })
            .collect()
    })
}

fn as_path(max_asn: u32, confed: bool) -> impl Strategy<Value = AsPath> {
    let kinds = if confed {
        vec![
            SegmentType::Set,
            SegmentType::Sequence,
            SegmentType::ConfedSequence,
            SegmentType::ConfedSet,
        ]
    } else {
        vec![SegmentType::Set, SegmentType::Sequence]
    };
    vec(
        (proptest::sample::select(kinds), vec(1..=max_asn, 1..12)),
        0..4,
    )
    .prop_map(|segs| AsPath {
        segments: segs
            .into_iter()
            .map(|(kind, asns)| AsSegment {
                kind,
                asns: asns.into(),
            })
            .collect(),
    })
}

fn next_hop(afi: Afi) -> BoxedStrategy<NextHop> {
    let v6 =
        (any::<u128>(), proptest::option::of(any::<u128>())).prop_map(|(g, ll)| NextHop::Ipv6 {
            global: Ipv6Addr::from(g),
            link_local: ll.map(Ipv6Addr::from),
        });
    if afi == Afi::IPV4 {
        prop_oneof![unicast_v4().prop_map(NextHop::Ipv4), v6].boxed()
    } else {
        v6.boxed()
    }
}

/// MP_REACH_NLRI for IPv4/IPv6 unicast or an opaque other family.
fn mp_reach(p: SessionParams) -> BoxedStrategy<AttributeValue> {
    let fam = |f: Family| {
        let prefix = if f.afi == Afi::IPV4 {
            v4_prefix().boxed()
        } else {
            v6_prefix().boxed()
        };
        (next_hop(f.afi), nlris(prefix, p.add_path.contains(f), 20)).prop_map(
            move |(next_hop, nlri)| {
                AttributeValue::MpReach(Box::new(MpReach {
                    family: f,
                    next_hop,
                    nlri,
                    unparsed: Bytes::new(),
                }))
            },
        )
    };
    let other = (vec(any::<u8>(), 0..20), vec(any::<u8>(), 0..40)).prop_map(|(nh, rest)| {
        AttributeValue::MpReach(Box::new(MpReach {
            family: Family::new(Afi(25), Safi(70)),
            next_hop: NextHop::Other(Bytes::from(nh)),
            nlri: Vec::new(),
            unparsed: Bytes::from(rest),
        }))
    });
    prop_oneof![fam(Family::IPV4_UNICAST), fam(Family::IPV6_UNICAST), other].boxed()
}

fn mp_unreach(p: SessionParams) -> BoxedStrategy<AttributeValue> {
    let fam = |f: Family| {
        let prefix = if f.afi == Afi::IPV4 {
            v4_prefix().boxed()
        } else {
            v6_prefix().boxed()
        };
        nlris(prefix, p.add_path.contains(f), 20).prop_map(move |withdrawn| {
            AttributeValue::MpUnreach(Box::new(MpUnreach {
                family: f,
                withdrawn,
                unparsed: Bytes::new(),
            }))
        })
    };
    prop_oneof![fam(Family::IPV4_UNICAST), fam(Family::IPV6_UNICAST)].boxed()
}

/// Optional attributes other than the mandatory three and MP_*; each
/// type at most once.
fn optional_attributes(p: SessionParams) -> impl Strategy<Value = Vec<AttributeValue>> {
    let max_asn = if p.four_octet_as {
        u32::MAX
    } else {
        u32::from(u16::MAX)
    };
    let agg = (1..=max_asn, unicast_v4()).prop_map(|(asn, address)| Aggregator { asn, address });
    let agg4 = (any::<u32>(), unicast_v4()).prop_map(|(asn, address)| Aggregator { asn, address });
    (
        proptest::option::of(any::<u32>().prop_map(AttributeValue::MultiExitDisc)),
        proptest::option::of(any::<u32>().prop_map(AttributeValue::LocalPref)),
        proptest::option::of(Just(AttributeValue::AtomicAggregate)),
        proptest::option::of(agg.prop_map(AttributeValue::Aggregator)),
        proptest::option::of(
            vec(any::<u32>().prop_map(Community), 1..80).prop_map(AttributeValue::Communities),
        ),
        proptest::option::of(unicast_v4().prop_map(AttributeValue::OriginatorId)),
        proptest::option::of(
            vec(any::<[u8; 4]>().prop_map(Ipv4Addr::from), 1..6)
                .prop_map(AttributeValue::ClusterList),
        ),
        proptest::option::of(
            vec(any::<[u8; 8]>().prop_map(ExtendedCommunity), 1..10)
                .prop_map(AttributeValue::ExtendedCommunities),
        ),
        proptest::option::of(as_path(u32::MAX, false).prop_map(AttributeValue::As4Path)),
        proptest::option::of(agg4.prop_map(AttributeValue::As4Aggregator)),
        proptest::option::of(
            vec(
                any::<[u32; 3]>().prop_map(|[global, local1, local2]| LargeCommunity {
                    global,
                    local1,
                    local2,
                }),
                1..8,
            )
            .prop_map(AttributeValue::LargeCommunities),
        ),
        // Unknown optional attributes (types no RFC above defines).
        vec(
            ((19u8..=31), vec(any::<u8>(), 0..300)).prop_map(|(type_code, data)| {
                AttributeValue::Unknown {
                    type_code,
                    data: Bytes::from(data),
                }
            }),
            0..2,
        ),
    )
        .prop_map(|(a, b, c, d, e, f, g, h, i, j, k, mut unknown)| {
            unknown.dedup_by_key(|u| u.type_code());
            let mut v: Vec<AttributeValue> = [a, b, c, d, e, f, g, h, i, j, k]
                .into_iter()
                .flatten()
                .collect();
            v.extend(unknown);
            v
        })
}

fn update(p: SessionParams) -> impl Strategy<Value = Update> {
    let max_asn = if p.four_octet_as {
        u32::MAX
    } else {
        u32::from(u16::MAX)
    };
    let ap4 = p.add_path.contains(Family::IPV4_UNICAST);
    (
        nlris(v4_prefix().boxed(), ap4, 30),
        nlris(v4_prefix().boxed(), ap4, 30),
        proptest::sample::select(vec![Origin::Igp, Origin::Egp, Origin::Incomplete]),
        as_path(max_asn, true),
        unicast_v4(),
        optional_attributes(p),
        proptest::option::of(mp_reach(p)),
        proptest::option::of(mp_unreach(p)),
        vec((any::<bool>(), any::<bool>()), 20),
        any::<u64>(),
    )
        .prop_map(
            move |(withdrawn, nlri, origin, path, nh, opt, reach, unreach, flag_bits, order)| {
                let mut values = opt;
                let announces = !nlri.is_empty() || reach.is_some();
                values.extend(reach);
                values.extend(unreach);
                if announces {
                    values.push(AttributeValue::Origin(origin));
                    values.push(AttributeValue::AsPath(path));
                }
                if !nlri.is_empty() {
                    values.push(AttributeValue::NextHop(nh));
                }
                // Any attribute order is legal on the wire; rotate a little.
                let n = values.len().max(1);
                values.rotate_left((order as usize) % n);
                let attributes = values
                    .into_iter()
                    .zip(flag_bits.iter().cycle())
                    .map(|(value, &(partial, ext))| {
                        let unknown = matches!(value, AttributeValue::Unknown { .. });
                        let mut a = PathAttribute::new(value);
                        if unknown && partial {
                            a.flags &= !0x40; // optional non-transitive
                        }
                        // Partial is legal on optional transitive attributes.
                        if a.is_optional() && a.is_transitive() && partial {
                            a.flags |= 0x20;
                        }
                        if ext || a.value_len(&p) > 255 {
                            a.flags |= 0x10;
                        }
                        a
                    })
                    .collect();
                Update {
                    withdrawn,
                    attributes,
                    nlri,
                    faults: Vec::new(),
                }
            },
        )
}

fn capability() -> impl Strategy<Value = Capability> {
    let family = (any::<u16>(), any::<u8>()).prop_map(|(a, s)| Family::new(Afi(a), Safi(s)));
    let dir = proptest::sample::select(vec![
        AddPathDirection::Receive,
        AddPathDirection::Send,
        AddPathDirection::Both,
    ]);
    prop_oneof![
        family
            .clone()
            .prop_map(|family| Capability::Multiprotocol { family }),
        Just(Capability::RouteRefresh),
        Just(Capability::EnhancedRouteRefresh),
        Just(Capability::ExtendedMessage),
        any::<u32>().prop_map(|asn| Capability::FourOctetAs { asn }),
        vec((family.clone(), any::<u16>().prop_map(Afi)), 0..5)
            .prop_map(|entries| Capability::ExtendedNextHop { entries }),
        vec((family.clone(), dir), 0..5).prop_map(|entries| Capability::AddPath { entries }),
        (
            any::<bool>(),
            any::<bool>(),
            0u16..4096,
            vec((family, any::<bool>()), 0..5)
        )
            .prop_map(|(r, n, t, f)| {
                Capability::GracefulRestart(GracefulRestart {
                    restarting: r,
                    notification: n,
                    restart_time: t,
                    families: f
                        .into_iter()
                        .map(|(family, forwarding_preserved)| GracefulRestartFamily {
                            family,
                            forwarding_preserved,
                        })
                        .collect(),
                })
            }),
        ("[a-z0-9-]{0,20}", "[a-z0-9.]{0,20}")
            .prop_map(|(hostname, domain)| Capability::Fqdn { hostname, domain }),
        (
            proptest::sample::select(vec![3u8, 4, 71, 72, 128, 131, 200]),
            vec(any::<u8>(), 0..16)
        )
            .prop_map(|(code, d)| Capability::Unknown {
                code,
                data: Bytes::from(d)
            }),
    ]
}

fn open() -> impl Strategy<Value = Open> {
    (
        1u16..,
        prop_oneof![Just(0u16), 3u16..],
        any::<u32>().prop_filter("id", |&i| i != 0),
        vec(capability(), 0..12),
        any::<bool>(),
    )
        .prop_map(|(my_as, hold_time, id, capabilities, split)| Open {
            version: 4,
            my_as,
            hold_time,
            bgp_id: Ipv4Addr::from(id),
            // One per parameter only reads back as such with two or more.
            capability_layout: if split && capabilities.len() > 1 {
                CapabilityLayout::OnePerParameter
            } else {
                CapabilityLayout::Grouped
            },
            capabilities,
        })
}

fn message(p: SessionParams) -> impl Strategy<Value = Message> {
    let family = (any::<u16>(), any::<u8>()).prop_map(|(a, s)| Family::new(Afi(a), Safi(s)));
    prop_oneof![
        open().prop_map(Message::Open),
        update(p).prop_map(Message::Update),
        (any::<u8>(), any::<u8>(), vec(any::<u8>(), 0..40))
            .prop_map(|(c, s, d)| Message::Notification(Notification::new(c, s, d))),
        Just(Message::Keepalive),
        (family, 0u8..6, vec(any::<u8>(), 0..12)).prop_map(|(family, st, orf)| {
            let subtype = match st {
                0 => RouteRefreshSubtype::Request,
                1 => RouteRefreshSubtype::BeginningOfRefresh,
                2 => RouteRefreshSubtype::EndOfRefresh,
                n => RouteRefreshSubtype::Other(n),
            };
            let orf = if matches!(st, 1 | 2) {
                Bytes::new()
            } else {
                Bytes::from(orf)
            };
            Message::RouteRefresh(RouteRefresh {
                family,
                subtype,
                orf,
            })
        }),
    ]
}

fn session_and_message() -> impl Strategy<Value = (SessionParams, Message)> {
    params().prop_flat_map(|p| (Just(p), message(p)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn decode_inverts_encode((p, m) in session_and_message()) {
        let bytes = match m.to_bytes(&p) {
            Ok(b) => b,
            // Only size limits may refuse a generated message.
            Err(EncodeError::MessageTooLong { .. }) => return Ok(()),
            Err(e) => return Err(TestCaseError::fail(format!("encode failed: {e}"))),
        };
        prop_assert_eq!(frame_len(&bytes, &p).ok().flatten(), Some(bytes.len()));
        let back = decode(&bytes, &p).map_err(|e| TestCaseError::fail(format!("decode failed: {e}")))?;
        prop_assert_eq!(&back, &m);
        prop_assert_eq!(back.to_bytes(&p).ok(), Some(bytes));
    }

    /// Any byte string: decoding never panics, and a message that decodes
    /// cleanly re-encodes to something that decodes to the same value.
    #[test]
    fn decode_never_panics_on_noise(p in params(), ty in 1u8..=5, body in vec(any::<u8>(), 0..200)) {
        let mut m = vec![0xff; 16];
        m.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
        m.push(ty);
        m.extend_from_slice(&body);
        if let Ok(msg) = decode(&Bytes::from(m), &p) {
            let clean = !matches!(&msg, Message::Update(u) if !u.faults.is_empty());
            if clean {
                if let Ok(again) = msg.to_bytes(&p) {
                    prop_assert_eq!(decode(&again, &p).ok(), Some(msg));
                }
            }
        }
    }
}
