//! Behaviour of the codec beyond byte layout: session-dependent decoding,
//! RFC 6793 AS4 reconstruction, End-of-RIB, re-advertisement of unknown
//! attributes, framing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bgp::wire::*;
use bytes::{Bytes, BytesMut};
use std::net::Ipv4Addr;

fn four() -> SessionParams {
    SessionParams {
        four_octet_as: true,
        ..SessionParams::default()
    }
}

fn update_with(attrs: Vec<AttributeValue>, nlri: &[&str]) -> Update {
    Update {
        withdrawn: vec![],
        attributes: attrs.into_iter().map(PathAttribute::new).collect(),
        nlri: nlri.iter().map(|p| Nlri::new(p.parse().unwrap())).collect(),
        faults: vec![],
    }
}

#[test]
fn same_bytes_mean_different_paths_on_different_sessions() {
    // AS_PATH value 02 02 00 00 fd e9: on a 4-octet session one AS (65001);
    // on a 2-octet session two ASes (0 is not allowed in practice, but the
    // layout is what matters: 0 and 65001).
    let attrs = [
        0x40, 1, 1, 0, 0x40, 2, 6, 2, 2, 0, 0, 0xfd, 0xe9, 0x40, 3, 4, 10, 0, 0, 1,
    ];
    let mut body = vec![0, 0, 0, attrs.len() as u8];
    body.extend_from_slice(&attrs);
    body.extend_from_slice(&[24, 10, 1, 2]);
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    m.push(2);
    m.extend_from_slice(&body);
    let m = Bytes::from(m);

    let Ok(Message::Update(two)) = decode(&m, &SessionParams::default()) else {
        panic!()
    };
    assert_eq!(two.as_path().unwrap().segments[0].asns[..], [0, 65001]);
    // On a 4-octet session the segment claims 2 ASes but holds one: malformed.
    let Ok(Message::Update(four_u)) = decode(&m, &four()) else {
        panic!()
    };
    assert!(four_u.treat_as_withdraw());
    assert_eq!(four_u.faults[0].subcode, 11);
}

#[test]
fn add_path_changes_how_nlri_parse() {
    let u = update_with(
        vec![
            AttributeValue::Origin(Origin::Igp),
            AttributeValue::AsPath(AsPath::sequence(vec![65001])),
            AttributeValue::NextHop(Ipv4Addr::new(10, 0, 0, 1)),
        ],
        &[],
    );
    let mut u = u;
    u.nlri = vec![Nlri::with_path_id("10.1.0.0/16".parse().unwrap(), 7)];
    let ap = SessionParams {
        add_path: AddPathFamilies::EMPTY.with(Family::IPV4_UNICAST),
        ..four()
    };
    let bytes = Message::Update(u.clone()).to_bytes(&ap).unwrap();
    assert_eq!(decode(&bytes, &ap).unwrap(), Message::Update(u));
    // Without ADD-PATH the path id bytes (00 00 00 07) read as prefixes:
    // /0, /0, /0 then /7 wanting one byte, then /16 wanting two more: the
    // field does not parse.
    assert!(matches!(decode(&bytes, &four()), Err(e) if e.subcode == 10));
}

#[test]
fn as4_path_is_merged_on_two_octet_sessions() {
    // A 2-octet peer saw path 65001 AS_TRANS AS_TRANS with AS4_PATH
    // 4200000001 4200000002 (RFC 6793 §4.2.3).
    let u = update_with(
        vec![
            AttributeValue::AsPath(AsPath::sequence(vec![65001, 23456, 23456])),
            AttributeValue::As4Path(AsPath::sequence(vec![4_200_000_001, 4_200_000_002])),
        ],
        &[],
    );
    let (path, _) = u.effective_as_path(&SessionParams::default());
    assert_eq!(
        path.unwrap(),
        AsPath::sequence(vec![65001, 4_200_000_001, 4_200_000_002])
    );
    // On a 4-octet session AS4_PATH is ignored.
    let (path, _) = u.effective_as_path(&four());
    assert_eq!(path.unwrap(), AsPath::sequence(vec![65001, 23456, 23456]));
}

#[test]
fn as4_path_longer_than_as_path_is_ignored() {
    let u = update_with(
        vec![
            AttributeValue::AsPath(AsPath::sequence(vec![23456])),
            AttributeValue::As4Path(AsPath::sequence(vec![4_200_000_001, 4_200_000_002])),
        ],
        &[],
    );
    let (path, _) = u.effective_as_path(&SessionParams::default());
    assert_eq!(path.unwrap(), AsPath::sequence(vec![23456]));
}

#[test]
fn as4_aggregator_replaces_as_trans_aggregator_only() {
    let addr = Ipv4Addr::new(192, 0, 2, 9);
    let trans = update_with(
        vec![
            AttributeValue::AsPath(AsPath::sequence(vec![65001, 23456])),
            AttributeValue::Aggregator(Aggregator {
                asn: 23456,
                address: addr,
            }),
            AttributeValue::As4Aggregator(Aggregator {
                asn: 4_200_000_009,
                address: addr,
            }),
            AttributeValue::As4Path(AsPath::sequence(vec![4_200_000_009])),
        ],
        &[],
    );
    let (path, agg) = trans.effective_as_path(&SessionParams::default());
    assert_eq!(agg.unwrap().asn, 4_200_000_009);
    assert_eq!(path.unwrap(), AsPath::sequence(vec![65001, 4_200_000_009]));

    // AGGREGATOR not AS_TRANS: both AS4_* are ignored (RFC 6793 §4.2.3).
    let plain = update_with(
        vec![
            AttributeValue::AsPath(AsPath::sequence(vec![65001, 23456])),
            AttributeValue::Aggregator(Aggregator {
                asn: 65010,
                address: addr,
            }),
            AttributeValue::As4Aggregator(Aggregator {
                asn: 4_200_000_009,
                address: addr,
            }),
            AttributeValue::As4Path(AsPath::sequence(vec![4_200_000_009])),
        ],
        &[],
    );
    let (path, agg) = plain.effective_as_path(&SessionParams::default());
    assert_eq!(agg.unwrap().asn, 65010);
    assert_eq!(path.unwrap(), AsPath::sequence(vec![65001, 23456]));
}

#[test]
fn merge_keeps_sets_and_confed_segments_of_the_leading_part() {
    let path = AsPath {
        segments: [
            AsSegment {
                kind: SegmentType::ConfedSequence,
                asns: Asns::from_slice(&[64512]),
            },
            AsSegment {
                kind: SegmentType::Sequence,
                asns: Asns::from_slice(&[65001, 65002]),
            },
            AsSegment {
                kind: SegmentType::Set,
                asns: Asns::from_slice(&[65003, 65004]),
            },
            AsSegment {
                kind: SegmentType::Sequence,
                asns: Asns::from_slice(&[23456]),
            },
        ]
        .into_iter()
        .collect(),
    };
    let as4 = AsPath::sequence(vec![4_200_000_001]);
    let merged = path.merge_as4(&as4);
    assert_eq!(merged.len(), path.len());
    assert_eq!(merged.segments.len(), 4);
    assert_eq!(merged.segments[0].kind, SegmentType::ConfedSequence);
    assert_eq!(merged.segments[2].kind, SegmentType::Set);
    assert_eq!(merged.segments[3].asns[..], [4_200_000_001]);
}

#[test]
fn two_octet_encoding_puts_as_trans_and_split_gives_as4_path() {
    let path = AsPath::sequence(vec![65001, 4_200_000_001]);
    let (as_path, as4) = path.split_for_two_octet();
    let u = update_with(
        vec![
            AttributeValue::Origin(Origin::Igp),
            AttributeValue::AsPath(as_path),
            AttributeValue::NextHop(Ipv4Addr::new(10, 0, 0, 1)),
            AttributeValue::As4Path(as4.clone().unwrap()),
        ],
        &["10.0.0.0/8"],
    );
    let two = SessionParams::default();
    let bytes = Message::Update(u).to_bytes(&two).unwrap();
    let Ok(Message::Update(back)) = decode(&bytes, &two) else {
        panic!()
    };
    assert_eq!(
        back.as_path().unwrap(),
        &AsPath::sequence(vec![65001, 23456])
    );
    assert_eq!(back.effective_as_path(&two).0.unwrap(), path);
    assert_eq!(AsPath::sequence(vec![65001]).split_for_two_octet().1, None);
}

#[test]
fn end_of_rib_markers() {
    let p = four();
    for family in [Family::IPV4_UNICAST, Family::IPV6_UNICAST] {
        let eor = Update::end_of_rib(family);
        let bytes = Message::Update(eor).to_bytes(&p).unwrap();
        let Ok(Message::Update(back)) = decode(&bytes, &p) else {
            panic!()
        };
        assert_eq!(back.is_end_of_rib(), Some(family));
    }
    assert_eq!(
        Message::Update(Update::end_of_rib(Family::IPV4_UNICAST))
            .to_bytes(&p)
            .unwrap()
            .len(),
        23
    );
    let not_eor = update_with(vec![AttributeValue::Origin(Origin::Igp)], &[]);
    assert_eq!(not_eor.is_end_of_rib(), None);
}

#[test]
fn unknown_transitive_attribute_is_readvertised_partial() {
    let t = PathAttribute {
        flags: 0xc0,
        value: AttributeValue::Unknown {
            type_code: 99,
            data: Bytes::from_static(b"x"),
        },
    };
    let r = t.readvertised().unwrap();
    assert!(r.is_partial());
    assert_eq!(r.value, t.value);
    // The Partial bit survives the wire.
    let mut u = update_with(vec![], &[]);
    u.attributes.push(r);
    let bytes = Message::Update(u.clone()).to_bytes(&four()).unwrap();
    assert_eq!(decode(&bytes, &four()).unwrap(), Message::Update(u));

    let nt = PathAttribute {
        flags: 0x80,
        value: AttributeValue::Unknown {
            type_code: 98,
            data: Bytes::new(),
        },
    };
    assert_eq!(
        nt.readvertised(),
        None,
        "unknown non-transitive attributes are not passed on"
    );
    let known = PathAttribute::new(AttributeValue::MultiExitDisc(5));
    assert_eq!(known.readvertised(), Some(known));
}

#[test]
fn extended_length_flag_is_honoured_both_ways() {
    // ORIGIN sent with a 2-octet length field decodes, and re-encodes with it.
    let attrs = [0x50, 1, 0, 1, 0];
    let mut body = vec![0, 0, 0, attrs.len() as u8];
    body.extend_from_slice(&attrs);
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    m.push(2);
    m.extend_from_slice(&body);
    let m = Bytes::from(m);
    let msg = decode(&m, &four()).unwrap();
    assert_eq!(msg.to_bytes(&four()).unwrap(), m);
    // A long value gets the flag whether or not it was asked for.
    let long = PathAttribute::new(AttributeValue::Communities(vec![Community(1); 100]));
    let mut out = BytesMut::new();
    long.encode(&four(), &mut out).unwrap();
    assert_eq!(out[0] & 0x10, 0x10);
    assert_eq!(u16::from_be_bytes([out[2], out[3]]), 400);
}

#[test]
fn extended_message_raises_the_length_limit() {
    let many: Vec<&str> = vec!["10.0.0.0/8"; 2500];
    let u = update_with(
        vec![
            AttributeValue::Origin(Origin::Igp),
            AttributeValue::AsPath(AsPath::sequence(vec![65001])),
            AttributeValue::NextHop(Ipv4Addr::new(10, 0, 0, 1)),
        ],
        &many,
    );
    let msg = Message::Update(u);
    assert!(matches!(
        msg.to_bytes(&four()),
        Err(EncodeError::MessageTooLong { max: 4096, .. })
    ));
    let ext = SessionParams {
        extended_message: true,
        ..four()
    };
    let bytes = msg.to_bytes(&ext).unwrap();
    assert!(bytes.len() > 4096);
    assert_eq!(decode(&bytes, &ext).unwrap(), msg);
    assert!(
        decode(&bytes, &four()).is_err(),
        "too long without the capability"
    );
    // OPEN stays capped at 4096 even with extended messages (RFC 8654 §4).
    let mut frame = bytes.to_vec();
    frame[18] = 1;
    assert!(frame_len(&frame, &ext).is_err());
}

#[test]
fn negotiation_follows_both_opens() {
    let id = Ipv4Addr::new(192, 0, 2, 1);
    let local = Open::new(
        4_200_000_001,
        90,
        id,
        vec![
            Capability::ExtendedMessage,
            Capability::AddPath {
                entries: vec![
                    (Family::IPV4_UNICAST, AddPathDirection::Both),
                    (Family::IPV6_UNICAST, AddPathDirection::Send),
                ],
            },
        ],
    );
    assert_eq!(local.my_as, AS_TRANS);
    assert_eq!(local.asn(), 4_200_000_001);
    let remote = Open::new(
        65002,
        90,
        Ipv4Addr::new(192, 0, 2, 2),
        vec![Capability::AddPath {
            entries: vec![
                (Family::IPV4_UNICAST, AddPathDirection::Send),
                (Family::IPV6_UNICAST, AddPathDirection::Receive),
            ],
        }],
    );
    let rx = SessionParams::negotiate_receive(&local, &remote);
    assert!(rx.four_octet_as);
    assert!(!rx.extended_message, "only one side offered it");
    assert!(rx.add_path.contains(Family::IPV4_UNICAST));
    assert!(!rx.add_path.contains(Family::IPV6_UNICAST));
    let tx = SessionParams::negotiate_send(&local, &remote);
    assert!(
        !tx.add_path.contains(Family::IPV4_UNICAST),
        "remote only sends for IPv4"
    );
    assert!(tx.add_path.contains(Family::IPV6_UNICAST));
}

#[test]
fn framing_waits_for_whole_messages_and_rejects_bad_headers_early() {
    let ka = Message::Keepalive.to_bytes(&four()).unwrap();
    let mut stream = BytesMut::new();
    stream.extend_from_slice(&ka);
    stream.extend_from_slice(&ka[..10]);
    assert_eq!(frame_len(&stream, &four()).unwrap(), Some(19));
    assert_eq!(frame_len(&stream[19..], &four()).unwrap(), None);
    assert!(
        frame_len(&[0xff, 0xff, 0x00], &four()).is_err(),
        "bad marker seen before the header is complete"
    );
    let parts: Vec<_> = split_stream(stream.freeze(), four()).collect();
    assert_eq!(parts.len(), 2);
    assert!(parts[0].is_ok());
    assert!(matches!(&parts[1], Err(e) if matches!(e.kind, ErrorKind::Truncated { .. })));
}

#[test]
fn shutdown_communication_round_trips() {
    let n = Notification::shutdown(2, "maintenance: moving to rack 7");
    assert_eq!(n.shutdown_message(), Some("maintenance: moving to rack 7"));
    let bytes = Message::Notification(n.clone()).to_bytes(&four()).unwrap();
    assert_eq!(decode(&bytes, &four()).unwrap(), Message::Notification(n));
    // Cut at 255 bytes on a character boundary.
    let long = "é".repeat(200);
    let n = Notification::shutdown(2, &long);
    assert_eq!(n.data[0], 254);
    assert!(n.shutdown_message().is_some());
}

#[test]
fn json_shape_for_operators() {
    let u = update_with(
        vec![
            AttributeValue::Origin(Origin::Igp),
            AttributeValue::AsPath(AsPath::sequence(vec![65001])),
            AttributeValue::NextHop(Ipv4Addr::new(10, 0, 0, 1)),
            AttributeValue::Communities(vec![Community((65001 << 16) | 42)]),
            AttributeValue::LargeCommunities(vec![LargeCommunity {
                global: 65001,
                local1: 1,
                local2: 2,
            }]),
        ],
        &["10.1.0.0/16"],
    );
    let j = serde_json::to_value(Message::Update(u)).unwrap();
    assert_eq!(j["type"], "UPDATE");
    assert_eq!(j["nlri"][0]["prefix"], "10.1.0.0/16");
    assert_eq!(j["attributes"][0]["origin"], "igp");
    assert_eq!(j["attributes"][3]["communities"][0], "65001:42");
    assert_eq!(j["attributes"][4]["large-communities"][0], "65001:1:2");
}

#[test]
fn oversized_fields_are_encode_errors_not_corrupt_bytes() {
    let reach = AttributeValue::MpReach(Box::new(MpReach {
        family: Family::new(Afi(25), Safi(70)),
        next_hop: NextHop::Other(Bytes::from(vec![0u8; 300])),
        nlri: vec![],
        unparsed: Bytes::new(),
    }));
    let u = update_with(vec![reach], &[]);
    let mut out = BytesMut::from(&b"keep"[..]);
    let err = Message::Update(u).encode(&four(), &mut out);
    assert!(
        matches!(err, Err(EncodeError::FieldTooLong { len: 300, .. })),
        "{err:?}"
    );
    assert_eq!(&out[..], b"keep", "nothing is left behind on error");

    let cap = Capability::Unknown {
        code: 200,
        data: Bytes::from(vec![0u8; 256]),
    };
    let open = Open::new(65001, 90, Ipv4Addr::new(192, 0, 2, 1), vec![cap]);
    assert!(matches!(
        Message::Open(open).to_bytes(&four()),
        Err(EncodeError::FieldTooLong { .. })
    ));
}
