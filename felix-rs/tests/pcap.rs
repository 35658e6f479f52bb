//! `felix_rs::pcap`: captures written with `write_bgp_pcap` /
//! `TcpCaptureWriter` read back exactly, imperfect TCP (retransmission,
//! overlap, reordering, loss, sequence wrap) is reassembled or reported,
//! every capture format and link type the reader claims works, bad input is
//! an error and never a panic, and tshark agrees with our encoding.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use bgp::wire::*;
use bytes::Bytes;
use felix_rs::pcap::{
    decode_capture, read_bgp_messages, visit_capture, write_bgp_pcap, CapturedMessage, PcapError,
    TcpCaptureWriter,
};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::Command;

const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 50123);
const SERVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 179);
/// Frames 1-3 are the handshake.
const FIRST_DATA_FRAME: u64 = 4;

fn tmp_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("pcap-test-{name}"))
}

fn v4(s: &str) -> Prefix {
    s.parse().expect("test prefix")
}

/// The client's OPEN: 4-octet AS, ADD-PATH both ways for IPv4, send-only for IPv6.
fn client_open() -> Open {
    Open::new(
        4_200_000_001,
        90,
        Ipv4Addr::new(10, 0, 0, 1),
        vec![
            Capability::Multiprotocol {
                family: Family::IPV4_UNICAST,
            },
            Capability::Multiprotocol {
                family: Family::IPV6_UNICAST,
            },
            Capability::RouteRefresh,
            Capability::AddPath {
                entries: vec![
                    (Family::IPV4_UNICAST, AddPathDirection::Both),
                    (Family::IPV6_UNICAST, AddPathDirection::Send),
                ],
            },
        ],
    )
}

/// The server's OPEN: ADD-PATH both ways for IPv4, receive-only for IPv6.
fn server_open() -> Open {
    Open::new(
        65002,
        90,
        Ipv4Addr::new(10, 0, 0, 2),
        vec![
            Capability::Multiprotocol {
                family: Family::IPV4_UNICAST,
            },
            Capability::Multiprotocol {
                family: Family::IPV6_UNICAST,
            },
            Capability::RouteRefresh,
            Capability::AddPath {
                entries: vec![
                    (Family::IPV4_UNICAST, AddPathDirection::Both),
                    (Family::IPV6_UNICAST, AddPathDirection::Receive),
                ],
            },
        ],
    )
}

/// Client→server: IPv4 and IPv6 carry path ids; server→client: only IPv4.
fn client_to_server_params() -> SessionParams {
    SessionParams {
        four_octet_as: true,
        extended_message: false,
        add_path: AddPathFamilies::default()
            .with(Family::IPV4_UNICAST)
            .with(Family::IPV6_UNICAST),
    }
}

fn server_to_client_params() -> SessionParams {
    SessionParams {
        four_octet_as: true,
        extended_message: false,
        add_path: AddPathFamilies::default().with(Family::IPV4_UNICAST),
    }
}

fn announce_v4(asns: Vec<u32>, next_hop: Ipv4Addr, nlri: Vec<Nlri>) -> Update {
    Update {
        withdrawn: vec![],
        attributes: vec![
            PathAttribute::new(AttributeValue::Origin(Origin::Igp)),
            PathAttribute::new(AttributeValue::AsPath(AsPath::sequence(asns))),
            PathAttribute::new(AttributeValue::NextHop(next_hop)),
        ],
        nlri,
        faults: vec![],
    }
}

fn announce_v6(asns: Vec<u32>, nlri: Vec<Nlri>) -> Update {
    Update {
        withdrawn: vec![],
        attributes: vec![
            PathAttribute::new(AttributeValue::Origin(Origin::Igp)),
            PathAttribute::new(AttributeValue::AsPath(AsPath::sequence(asns))),
            PathAttribute::new(AttributeValue::MpReach(Box::new(MpReach {
                family: Family::IPV6_UNICAST,
                next_hop: NextHop::Ipv6 {
                    global: "2001:db8::1".parse().expect("addr"),
                    link_local: Some("fe80::1".parse().expect("addr")),
                },
                nlri,
                unparsed: Bytes::new(),
            }))),
        ],
        nlri: vec![],
        faults: vec![],
    }
}

/// One message of a test conversation, with the parameters it is encoded
/// and must be decoded with.
struct Sent {
    from_client: bool,
    message: Message,
    params: SessionParams,
}

impl Sent {
    fn bytes(&self) -> Bytes {
        self.message
            .to_bytes(&self.params)
            .expect("encodable test message")
    }
}

/// OPENs, KEEPALIVEs and ADD-PATH UPDATEs in both directions.
fn conversation() -> Vec<Sent> {
    let c2s = client_to_server_params();
    let s2c = server_to_client_params();
    let default = SessionParams::default();
    let sent = |from_client, message, params| Sent {
        from_client,
        message,
        params,
    };
    vec![
        // Before both OPENs are seen, the reader uses default parameters.
        sent(true, Message::Open(client_open()), default),
        sent(false, Message::Open(server_open()), default),
        sent(true, Message::Keepalive, c2s),
        sent(false, Message::Keepalive, s2c),
        sent(
            true,
            Message::Update(announce_v4(
                vec![4_200_000_001, 70000],
                Ipv4Addr::new(10, 0, 0, 1),
                vec![
                    Nlri::with_path_id(v4("192.0.2.0/24"), 1),
                    Nlri::with_path_id(v4("192.0.2.0/24"), 2),
                ],
            )),
            c2s,
        ),
        sent(
            true,
            Message::Update(announce_v6(
                vec![4_200_000_001],
                vec![Nlri::with_path_id(
                    "2001:db8:1::/48".parse().expect("prefix"),
                    7,
                )],
            )),
            c2s,
        ),
        sent(
            false,
            Message::Update(announce_v4(
                vec![65002],
                Ipv4Addr::new(10, 0, 0, 2),
                vec![Nlri::with_path_id(v4("198.51.100.0/24"), 9)],
            )),
            s2c,
        ),
        // No path ids for IPv6 from the server: it only receives them.
        sent(
            false,
            Message::Update(announce_v6(
                vec![65002],
                vec![Nlri::new("2001:db8:2::/48".parse().expect("prefix"))],
            )),
            s2c,
        ),
        sent(
            true,
            Message::Update(Update::end_of_rib(Family::IPV4_UNICAST)),
            c2s,
        ),
        sent(false, Message::Keepalive, s2c),
    ]
}

fn payloads(conversation: &[Sent]) -> Vec<(bool, Bytes)> {
    conversation
        .iter()
        .map(|s| (s.from_client, s.bytes()))
        .collect()
}

fn endpoints(from_client: bool) -> (SocketAddr, SocketAddr) {
    if from_client {
        (CLIENT.into(), SERVER.into())
    } else {
        (SERVER.into(), CLIENT.into())
    }
}

/// Timestamp `TcpCaptureWriter` gives frame `frame`.
fn frame_time(frame: u64) -> f64 {
    f64::from(TcpCaptureWriter::START_TIME) + (frame - 1) as f64 * 0.001
}

fn assert_same(found: &CapturedMessage, expected: &Sent, frame: u64) {
    let (src, dst) = endpoints(expected.from_client);
    assert_eq!(found.frame, frame, "frame of {:?}", expected.message);
    assert!(
        (found.timestamp - frame_time(frame)).abs() < 1e-6,
        "timestamp {} for frame {frame}",
        found.timestamp
    );
    assert_eq!((found.src, found.dst), (src, dst), "direction");
    assert_eq!(found.bytes, expected.bytes(), "bytes");
    assert_eq!(
        found.params, expected.params,
        "params of {:?}",
        expected.message
    );
    assert_eq!(found.message.as_ref(), Ok(&expected.message));
}

#[test]
fn written_pcap_reads_back_exactly() {
    let conversation = conversation();
    let path = tmp_path("roundtrip.pcap");
    write_bgp_pcap(&path, CLIENT, SERVER, &payloads(&conversation)).expect("write pcap");
    let found = read_bgp_messages(&path).expect("read pcap");
    assert_eq!(found.len(), conversation.len());
    for (i, (found, expected)) in found.iter().zip(&conversation).enumerate() {
        assert_same(found, expected, FIRST_DATA_FRAME + i as u64);
    }
}

#[test]
fn several_messages_in_one_segment_share_its_frame() {
    let conversation = conversation();
    let mut capture = TcpCaptureWriter::new(CLIENT, SERVER);
    capture.send(true, &conversation[0].bytes());
    capture.send(false, &conversation[1].bytes());
    // KEEPALIVE + two UPDATEs in one client segment.
    let mut batch = Vec::new();
    for s in [&conversation[2], &conversation[4], &conversation[5]] {
        batch.extend_from_slice(&s.bytes());
    }
    capture.send(true, &batch);
    let found = decode_capture(&capture.into_bytes(), SessionParams::default()).expect("decode");
    assert_eq!(found.len(), 5);
    assert_same(&found[0], &conversation[0], 4);
    assert_same(&found[1], &conversation[1], 5);
    for (found, expected) in
        found[2..]
            .iter()
            .zip([&conversation[2], &conversation[4], &conversation[5]])
    {
        assert_same(found, expected, 6);
    }
}

/// The OPENs, then one UPDATE sent in pieces by `send_pieces`; checks the
/// UPDATE comes back whole at `expected_frame`.
fn check_update_in_pieces(
    client_isn: u32,
    send_pieces: impl FnOnce(&mut TcpCaptureWriter, u32, &[u8]),
    expected_frame: u64,
) {
    let conversation = conversation();
    let mut capture =
        TcpCaptureWriter::with_initial_sequence(CLIENT, SERVER, client_isn, 0xffff_fff0);
    capture.send(true, &conversation[0].bytes());
    capture.send(false, &conversation[1].bytes());
    let update = &conversation[4];
    let bytes = update.bytes();
    let start = conversation[0].bytes().len() as u32;
    send_pieces(&mut capture, start, &bytes);
    // A KEEPALIVE after the UPDATE, in its own segment.
    capture.send(true, &conversation[2].bytes());
    let keepalive_frame = u64::from(capture.packets());
    let found = decode_capture(&capture.into_bytes(), SessionParams::default()).expect("decode");
    let from_client: Vec<&CapturedMessage> = found
        .iter()
        .filter(|m| m.src == SocketAddr::from(CLIENT))
        .collect();
    assert_eq!(from_client.len(), 3, "{found:#?}");
    assert_same(from_client[0], &conversation[0], 4);
    assert_same(from_client[1], update, expected_frame);
    assert_same(from_client[2], &conversation[2], keepalive_frame);
}

#[test]
fn message_split_over_three_segments_with_a_retransmission() {
    check_update_in_pieces(
        0x1234_5678,
        |capture, start, bytes| {
            let (a, rest) = bytes.split_at(10);
            let (b, c) = rest.split_at(25);
            capture.send(true, a); // frame 6
            capture.send(true, b); // frame 7
            capture.send_at(true, start, a); // frame 8: retransmission of the first piece
            capture.send(true, c); // frame 9: the last byte
        },
        9,
    );
}

#[test]
fn overlapping_and_duplicate_segments_are_trimmed() {
    check_update_in_pieces(
        7,
        |capture, start, bytes| {
            let n = bytes.len() as u32;
            capture.send_at(true, start, &bytes[..20]); // frame 6
            capture.send_at(true, start + 10, &bytes[10..30]); // frame 7: overlaps 10 bytes
            capture.send_at(true, start + 10, &bytes[10..30]); // frame 8: duplicate
            capture.send_at(true, start + 25, &bytes[25..]); // frame 9: overlaps, ends the message
            capture.send_at(true, start + n - 4, &bytes[bytes.len() - 4..]); // frame 10: late duplicate
        },
        9,
    );
}

#[test]
fn out_of_order_segments_are_reordered() {
    // The last piece arrives first (frame 6): that is where the last byte
    // arrived, so the message is reported at frame 6.
    check_update_in_pieces(
        100,
        |capture, start, bytes| {
            capture.send_at(true, start + 30, &bytes[30..]); // frame 6
            capture.send_at(true, start + 12, &bytes[12..30]); // frame 7
            capture.send_at(true, start, &bytes[..12]); // frame 8
        },
        6,
    );
}

#[test]
fn sequence_numbers_wrap_around() {
    // The client's sequence space wraps inside the UPDATE.
    let open_len = conversation()[0].bytes().len() as u32;
    check_update_in_pieces(
        u32::MAX - open_len - 5,
        |capture, _start, bytes| {
            let (a, b) = bytes.split_at(17);
            capture.send(true, a); // frame 6
            capture.send(true, b); // frame 7
        },
        7,
    );
}

#[test]
fn a_lost_segment_truncates_one_message_and_decoding_resumes() {
    let conversation = conversation();
    let mut capture = TcpCaptureWriter::new(CLIENT, SERVER);
    capture.send(true, &conversation[0].bytes()); // frame 4
    capture.send(false, &conversation[1].bytes()); // frame 5
    let update = conversation[4].bytes();
    let start = conversation[0].bytes().len() as u32;
    capture.send_at(true, start, &update[..30]); // frame 6
                                                 // update[30..40] is never captured.
    capture.send_at(true, start + 40, &update[40..]); // frame 7
    let after = start + update.len() as u32;
    capture.send_at(true, after, &conversation[2].bytes()); // frame 8: KEEPALIVE
    capture.send(false, &conversation[3].bytes()); // frame 9: server KEEPALIVE, unaffected
    let found = decode_capture(&capture.into_bytes(), SessionParams::default()).expect("decode");

    let frames: Vec<u64> = found.iter().map(|m| m.frame).collect();
    assert_eq!(frames, vec![4, 5, 6, 8, 9], "{found:#?}");
    let truncated = &found[2];
    assert_eq!(truncated.bytes, update.slice(..30));
    let error = truncated
        .message
        .as_ref()
        .expect_err("the cut UPDATE is an error");
    assert_eq!(
        error.kind,
        ErrorKind::Truncated {
            needed: update.len(),
            available: 30
        }
    );
    assert_same(&found[3], &conversation[2], 8);
    assert_same(&found[4], &conversation[3], 9);
}

#[test]
fn capture_ending_mid_message_reports_it_truncated() {
    let conversation = conversation();
    let mut capture = TcpCaptureWriter::new(CLIENT, SERVER);
    capture.send(true, &conversation[0].bytes()[..40]);
    let found = decode_capture(&capture.into_bytes(), SessionParams::default()).expect("decode");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].frame, 4);
    assert!(matches!(
        found[0].message,
        Err(DecodeError {
            kind: ErrorKind::Truncated { available: 40, .. },
            ..
        })
    ));
}

#[test]
fn capture_started_mid_stream_skips_to_the_first_header() {
    // No handshake: the first segment starts inside a message.
    let conversation = conversation();
    let mut stream = conversation[4].bytes()[25..].to_vec();
    stream.extend_from_slice(&conversation[2].bytes());
    let mut full = TcpCaptureWriter::new(CLIENT, SERVER);
    full.send(true, &stream);
    let file = drop_records(&full.into_bytes(), &[1, 2, 3]);
    let found = decode_capture(&file, SessionParams::default()).expect("decode");
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].message, Ok(Message::Keepalive));
    assert_eq!(found[0].frame, 1);
}

#[test]
fn framing_error_is_reported_and_decoding_resyncs() {
    let conversation = conversation();
    let mut capture = TcpCaptureWriter::new(CLIENT, SERVER);
    let mut bad = conversation[2].bytes().to_vec();
    bad[18] = 9; // unknown message type
    let mut stream = bad.clone();
    stream.extend_from_slice(&conversation[2].bytes());
    capture.send(true, &stream);
    let found = decode_capture(&capture.into_bytes(), SessionParams::default()).expect("decode");
    assert_eq!(found.len(), 2, "{found:#?}");
    assert_eq!(found[0].bytes.as_ref(), &bad[..]);
    assert!(matches!(
        found[0].message,
        Err(DecodeError {
            kind: ErrorKind::BadType(9),
            ..
        })
    ));
    assert_eq!(found[1].message, Ok(Message::Keepalive));
}

#[test]
fn a_new_connection_on_the_same_ports_starts_afresh() {
    let conversation = conversation();
    let mut first = TcpCaptureWriter::new(CLIENT, SERVER);
    first.send(true, &conversation[0].bytes());
    first.send(false, &conversation[1].bytes());
    first.close();
    let mut second = TcpCaptureWriter::with_initial_sequence(CLIENT, SERVER, 5, 6);
    second.send(true, &conversation[0].bytes());
    let mut file = first.into_bytes();
    file.extend_from_slice(&second.into_bytes()[24..]); // records only
    let found = decode_capture(&file, SessionParams::default()).expect("decode");
    assert_eq!(found.len(), 3);
    // The second connection's OPEN is decoded before its peer's OPEN: defaults.
    assert_eq!(found[2].params, SessionParams::default());
    assert_eq!(found[2].frame, 8 + 4);
}

#[test]
fn a_syn_recorded_after_its_data_is_not_a_new_connection() {
    let conversation = conversation();
    let mut capture = TcpCaptureWriter::new(CLIENT, SERVER);
    capture.send(true, &conversation[0].bytes());
    capture.send(false, &conversation[1].bytes());
    capture.send(true, &conversation[2].bytes());
    // Move the client's SYN (frame 1) after its OPEN (frame 4).
    let recs = records(&capture.into_bytes());
    let reordered: Vec<Record> = [1usize, 2, 3, 0, 4, 5]
        .iter()
        .map(|&i| Record {
            ts_sec: recs[i].ts_sec,
            ts_usec: recs[i].ts_usec,
            data: recs[i].data.clone(),
        })
        .collect();
    let file = classic_pcap(&reordered, 1, false, false);
    let found = decode_capture(&file, SessionParams::default()).expect("decode");
    assert_eq!(found.len(), 3, "{found:#?}");
    assert_eq!(found[0].message.as_ref(), Ok(&conversation[0].message));
    assert_eq!(found[1].message.as_ref(), Ok(&conversation[1].message));
    // Still the same session: the KEEPALIVE gets the negotiated parameters.
    assert_same(&found[2], &conversation[2], 6);
}

#[test]
fn assumed_params_apply_until_both_opens_are_seen() {
    let assumed = client_to_server_params();
    let update = Message::Update(announce_v4(
        vec![4_200_000_001],
        Ipv4Addr::new(10, 0, 0, 1),
        vec![Nlri::with_path_id(v4("203.0.113.0/24"), 3)],
    ));
    let mut capture = TcpCaptureWriter::new(CLIENT, SERVER);
    capture.send(true, &update.to_bytes(&assumed).expect("encode"));
    let found = decode_capture(&capture.into_bytes(), assumed).expect("decode");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].params, assumed);
    assert_eq!(found[0].message, Ok(update));
}

#[test]
fn too_large_payload_is_an_error() {
    let payload = Bytes::from(vec![0u8; 70_000]);
    let err = write_bgp_pcap(&tmp_path("big.pcap"), CLIENT, SERVER, &[(true, payload)])
        .expect_err("a 70000-byte segment cannot exist");
    assert!(
        matches!(err, PcapError::PayloadTooLarge { index: 0, .. }),
        "{err}"
    );
}

/// Thousands of packets, every other message sent second half first: the
/// streamed output must be in frame order across the points where the
/// reader hands messages over, and each message at its last byte's frame.
#[test]
fn streamed_messages_stay_in_frame_order_under_reordering() {
    let params = SessionParams::default();
    let mut capture = TcpCaptureWriter::new(CLIENT, SERVER);
    let mut expected = Vec::new(); // (frame, message) in output order
    let mut offset = 0u32;
    for i in 0..1500u32 {
        let message = Message::Update(announce_v4(
            vec![65001],
            Ipv4Addr::new(10, 0, 0, 1),
            vec![Nlri::new(v4(&format!("10.{}.{}.0/24", i / 256, i % 256)))],
        ));
        let bytes = message.to_bytes(&params).expect("encode");
        let (head, tail) = bytes.split_at(20);
        let last_byte_frame = if i % 2 == 0 {
            capture.send_at(true, offset + 20, tail);
            let frame = capture.packets();
            // The server's KEEPALIVE completes while the UPDATE waits for
            // its head, yet the UPDATE's last byte came first.
            capture.send(
                false,
                &Message::Keepalive.to_bytes(&params).expect("encode"),
            );
            expected.push((u64::from(capture.packets()), Message::Keepalive));
            capture.send_at(true, offset, head);
            frame
        } else {
            capture.send_at(true, offset, head);
            capture.send_at(true, offset + 20, tail);
            capture.packets()
        };
        offset += bytes.len() as u32;
        expected.push((u64::from(last_byte_frame), message));
    }
    expected.sort_by_key(|(frame, _)| *frame);
    let file = capture.into_bytes();

    let mut streamed = Vec::new();
    visit_capture(&file, params, |m| {
        streamed.push(m);
        ControlFlow::Continue(())
    })
    .expect("visit");
    let got: Vec<(u64, Message)> = streamed
        .into_iter()
        .map(|m| (m.frame, m.message.expect("decodes")))
        .collect();
    assert_eq!(got.len(), expected.len());
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g, e, "message {i}");
    }

    // A visitor can stop the walk.
    let mut seen = 0;
    visit_capture(&file, params, |_| {
        seen += 1;
        if seen == 10 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .expect("visit");
    assert_eq!(seen, 10);
}

// ---------------------------------------------------------------------------
// Formats and link types: the same conversation in every container.
// ---------------------------------------------------------------------------

/// A packet record of a classic little-endian microsecond pcap.
struct Record {
    ts_sec: u32,
    ts_usec: u32,
    data: Vec<u8>,
}

fn records(file: &[u8]) -> Vec<Record> {
    let mut out = Vec::new();
    let mut pos = 24;
    let u32_at = |p: usize| u32::from_le_bytes(file[p..p + 4].try_into().expect("4 bytes"));
    while pos < file.len() {
        let len = u32_at(pos + 8) as usize;
        out.push(Record {
            ts_sec: u32_at(pos),
            ts_usec: u32_at(pos + 4),
            data: file[pos + 16..pos + 16 + len].to_vec(),
        });
        pos += 16 + len;
    }
    out
}

/// `file` without the records numbered (1-based) in `dropped`.
fn drop_records(file: &[u8], dropped: &[usize]) -> Vec<u8> {
    let kept: Vec<Record> = records(file)
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !dropped.contains(&(i + 1)))
        .map(|(_, r)| r)
        .collect();
    classic_pcap(&kept, 1, false, false)
}

/// A classic pcap holding `records`, in either byte order and precision.
fn classic_pcap(records: &[Record], linktype: u32, big_endian: bool, nanos: bool) -> Vec<u8> {
    let u32b = |v: u32| {
        if big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let u16b = |v: u16| {
        if big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let mut f = Vec::new();
    f.extend_from_slice(&u32b(if nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 }));
    f.extend_from_slice(&u16b(2));
    f.extend_from_slice(&u16b(4));
    f.extend_from_slice(&u32b(0));
    f.extend_from_slice(&u32b(0));
    f.extend_from_slice(&u32b(65535));
    f.extend_from_slice(&u32b(linktype));
    for r in records {
        f.extend_from_slice(&u32b(r.ts_sec));
        f.extend_from_slice(&u32b(if nanos { r.ts_usec * 1000 } else { r.ts_usec }));
        f.extend_from_slice(&u32b(r.data.len() as u32));
        f.extend_from_slice(&u32b(r.data.len() as u32));
        f.extend_from_slice(&r.data);
    }
    f
}

/// A pcapng with one interface of `linktype` holding `records` as enhanced
/// packet blocks, with a name resolution block thrown in to be skipped.
fn pcapng(records: &[Record], linktype: u16, big_endian: bool) -> Vec<u8> {
    let u32b = |v: u32| {
        if big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let u16b = |v: u16| {
        if big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let block = |f: &mut Vec<u8>, kind: u32, body: &[u8]| {
        let padded = body.len().div_ceil(4) * 4;
        let total = (12 + padded) as u32;
        f.extend_from_slice(&u32b(kind));
        f.extend_from_slice(&u32b(total));
        f.extend_from_slice(body);
        f.resize(f.len() + padded - body.len(), 0);
        f.extend_from_slice(&u32b(total));
    };
    let mut f = Vec::new();
    let mut shb = Vec::new();
    shb.extend_from_slice(&u32b(0x1a2b_3c4d));
    shb.extend_from_slice(&u16b(1));
    shb.extend_from_slice(&u16b(0));
    shb.extend_from_slice(&[0xff; 8]); // section length unknown
    block(&mut f, 0x0a0d_0d0a, &shb);
    let mut idb = Vec::new();
    idb.extend_from_slice(&u16b(linktype));
    idb.extend_from_slice(&u16b(0));
    idb.extend_from_slice(&u32b(0));
    // if_tsresol = 9 (nanoseconds), then end of options.
    idb.extend_from_slice(&u16b(9));
    idb.extend_from_slice(&u16b(1));
    idb.extend_from_slice(&[9, 0, 0, 0]);
    idb.extend_from_slice(&[0, 0, 0, 0]);
    block(&mut f, 1, &idb);
    block(&mut f, 4, &[0, 0, 0, 0]); // name resolution block: end of records
    for r in records {
        let ticks = u64::from(r.ts_sec) * 1_000_000_000 + u64::from(r.ts_usec) * 1000;
        let mut epb = Vec::new();
        epb.extend_from_slice(&u32b(0));
        epb.extend_from_slice(&u32b((ticks >> 32) as u32));
        epb.extend_from_slice(&u32b(ticks as u32));
        epb.extend_from_slice(&u32b(r.data.len() as u32));
        epb.extend_from_slice(&u32b(r.data.len() as u32));
        epb.extend_from_slice(&r.data);
        block(&mut f, 6, &epb);
    }
    f
}

/// Rewrites each Ethernet frame's link header; `ip` is the IP packet.
fn relink(records: &[Record], link: impl Fn(&[u8]) -> Vec<u8>) -> Vec<Record> {
    records
        .iter()
        .map(|r| Record {
            ts_sec: r.ts_sec,
            ts_usec: r.ts_usec,
            data: link(&r.data[14..]),
        })
        .collect()
}

fn prefixed(prefix: &[u8], ip: &[u8]) -> Vec<u8> {
    [prefix, ip].concat()
}

#[test]
fn every_container_and_link_type_gives_the_same_messages() {
    let conversation = conversation();
    let path = tmp_path("formats.pcap");
    write_bgp_pcap(&path, CLIENT, SERVER, &payloads(&conversation)).expect("write");
    let original = std::fs::read(&path).expect("read back");
    let expected = decode_capture(&original, SessionParams::default()).expect("decode original");
    assert_eq!(expected.len(), conversation.len());
    let recs = records(&original);

    let vlan = relink(&recs, |ip| {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        f.extend_from_slice(&[0x88, 0xa8, 0, 100, 0x81, 0x00, 0, 200, 0x08, 0x00]);
        f.extend_from_slice(ip);
        // Ethernet padding past the IP packet must be ignored.
        f.extend_from_slice(&[0; 6]);
        f
    });
    let sll = relink(&recs, |ip| {
        let mut header = vec![0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0];
        header.extend_from_slice(&[0x08, 0x00]);
        prefixed(&header, ip)
    });
    let sll2 = relink(&recs, |ip| {
        let mut header = vec![0x08, 0x00, 0, 0, 0, 0, 0, 3, 0, 1, 0, 6];
        header.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0, 0]);
        prefixed(&header, ip)
    });
    let raw = relink(&recs, |ip| ip.to_vec());
    let null_le = relink(&recs, |ip| prefixed(&2u32.to_le_bytes(), ip));
    let null_be = relink(&recs, |ip| prefixed(&2u32.to_be_bytes(), ip));

    let variants: Vec<(&str, Vec<u8>)> = vec![
        ("classic big-endian", classic_pcap(&recs, 1, true, false)),
        ("classic nanosecond", classic_pcap(&recs, 1, false, true)),
        (
            "classic big-endian nanosecond",
            classic_pcap(&recs, 1, true, true),
        ),
        ("pcapng little-endian", pcapng(&recs, 1, false)),
        ("pcapng big-endian", pcapng(&recs, 1, true)),
        ("802.1ad + 802.1Q", classic_pcap(&vlan, 1, false, false)),
        ("Linux SLL", classic_pcap(&sll, 113, false, false)),
        ("Linux SLL2", pcapng(&sll2, 276, true)),
        ("raw IP", classic_pcap(&raw, 101, false, false)),
        ("IPv4 link type", classic_pcap(&raw, 228, false, false)),
        (
            "null, little-endian family",
            classic_pcap(&null_le, 0, false, false),
        ),
        (
            "null, big-endian family",
            classic_pcap(&null_be, 0, true, false),
        ),
    ];
    for (name, file) in variants {
        let found = decode_capture(&file, SessionParams::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(found.len(), expected.len(), "{name}");
        for (f, e) in found.iter().zip(&expected) {
            assert_eq!((f.frame, f.src, f.dst), (e.frame, e.src, e.dst), "{name}");
            assert!(
                (f.timestamp - e.timestamp).abs() < 1e-6,
                "{name}: timestamp"
            );
            assert_eq!(
                (&f.bytes, &f.params, &f.message),
                (&e.bytes, &e.params, &e.message),
                "{name}"
            );
        }
    }
}

/// Builds an IPv6 TCP packet (checksum not computed: the reader does not check).
fn ipv6_tcp(
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    flags: u8,
    extension: bool,
    payload: &[u8],
) -> Vec<u8> {
    let (SocketAddr::V6(s), SocketAddr::V6(d)) = (src, dst) else {
        panic!("IPv6 endpoints expected");
    };
    let mut tcp = Vec::new();
    tcp.extend_from_slice(&s.port().to_be_bytes());
    tcp.extend_from_slice(&d.port().to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&0u32.to_be_bytes());
    tcp.extend_from_slice(&[5 << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
    tcp.extend_from_slice(payload);
    let mut upper = Vec::new();
    if extension {
        // Destination options header (8 bytes, padding only).
        upper.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
    }
    upper.extend_from_slice(&tcp);
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&(upper.len() as u16).to_be_bytes());
    ip.extend_from_slice(&[if extension { 60 } else { 6 }, 64]);
    ip.extend_from_slice(&s.ip().octets());
    ip.extend_from_slice(&d.ip().octets());
    ip.extend_from_slice(&upper);
    ip
}

#[test]
fn ipv6_with_extension_headers_is_reassembled() {
    let a: SocketAddr = "[2001:db8::a]:40000".parse().expect("addr");
    let b: SocketAddr = "[2001:db8::b]:179".parse().expect("addr");
    let open = Message::Open(client_open())
        .to_bytes(&SessionParams::default())
        .expect("encode");
    let keepalive = Message::Keepalive
        .to_bytes(&SessionParams::default())
        .expect("encode");
    let isn = 1000;
    let packets = [
        ipv6_tcp(a, b, isn, 0x02, false, &[]),
        ipv6_tcp(a, b, isn + 1, 0x18, true, &open[..30]),
        ipv6_tcp(a, b, isn + 31, 0x18, false, &open[30..]),
        ipv6_tcp(a, b, isn + 1 + open.len() as u32, 0x18, true, &keepalive),
    ];
    let recs: Vec<Record> = packets
        .into_iter()
        .enumerate()
        .map(|(i, p)| Record {
            ts_sec: 1,
            ts_usec: i as u32,
            data: p,
        })
        .collect();
    let found = decode_capture(
        &classic_pcap(&recs, 229, false, false),
        SessionParams::default(),
    )
    .expect("decode");
    assert_eq!(found.len(), 2, "{found:#?}");
    assert_eq!((found[0].frame, found[0].src, found[0].dst), (3, a, b));
    assert_eq!(found[0].message, Ok(Message::Open(client_open())));
    assert_eq!(
        (found[1].frame, &found[1].message),
        (4, &Ok(Message::Keepalive))
    );
}

// ---------------------------------------------------------------------------
// Bad input: errors, never panics.
// ---------------------------------------------------------------------------

#[test]
fn garbage_and_empty_files_are_errors() {
    for (name, data) in [
        ("empty", Vec::new()),
        ("three bytes", vec![1, 2, 3]),
        ("text", b"this is not a capture file at all".to_vec()),
        ("zeros", vec![0; 100]),
    ] {
        let result = decode_capture(&data, SessionParams::default());
        assert!(
            matches!(result, Err(PcapError::NotACapture)),
            "{name}: {result:?}"
        );
    }
    let missing = read_bgp_messages(&tmp_path("does-not-exist.pcap"));
    assert!(matches!(missing, Err(PcapError::Io { .. })), "{missing:?}");
}

#[test]
fn truncated_files_are_errors_not_panics() {
    let file = {
        let mut capture = TcpCaptureWriter::new(CLIENT, SERVER);
        for s in conversation() {
            capture.send(s.from_client, &s.bytes());
        }
        capture.into_bytes()
    };
    let boundaries: Vec<usize> = {
        let mut b = vec![24];
        for r in records(&file) {
            b.push(b.last().copied().unwrap_or(24) + 16 + r.data.len());
        }
        b
    };
    for cut in 0..file.len() {
        let result = decode_capture(&file[..cut], SessionParams::default());
        if boundaries.contains(&cut) {
            assert!(result.is_ok(), "cut at record boundary {cut}: {result:?}");
        } else if cut >= 4 {
            assert!(
                matches!(result, Err(PcapError::Truncated { .. })),
                "cut at {cut}: {result:?}"
            );
        } else {
            assert!(result.is_err(), "cut at {cut}");
        }
    }
    let ng = pcapng(&records(&file), 1, false);
    for cut in (0..ng.len()).step_by(3) {
        let _ = decode_capture(&ng[..cut], SessionParams::default());
    }
}

/// A small deterministic generator (xorshift64) for corruption tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn corrupted_captures_never_panic() {
    let mut capture = TcpCaptureWriter::new(CLIENT, SERVER);
    for s in conversation() {
        capture.send(s.from_client, &s.bytes());
    }
    let classic = capture.into_bytes();
    let recs = records(&classic);
    let ng_le = pcapng(&recs, 1, false);
    let ng_be = pcapng(&recs, 276, true);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for original in [&classic, &ng_le, &ng_be] {
        for _ in 0..3000 {
            let mut file = original.clone();
            for _ in 0..1 + rng.below(8) {
                let at = rng.below(file.len());
                file[at] = rng.next() as u8;
            }
            // Whatever happens, it must come back as a value.
            let _ = decode_capture(&file, SessionParams::default());
        }
    }
    // Random packet contents behind a valid header, on every link type.
    for linktype in [0, 1, 101, 108, 113, 228, 229, 276] {
        let recs: Vec<Record> = (0..200)
            .map(|_| Record {
                ts_sec: 0,
                ts_usec: 0,
                data: (0..rng.below(120)).map(|_| rng.next() as u8).collect(),
            })
            .collect();
        let _ = decode_capture(
            &classic_pcap(&recs, linktype, false, false),
            SessionParams::default(),
        );
    }
}

#[test]
fn unsupported_link_type_is_an_error() {
    let recs = vec![Record {
        ts_sec: 0,
        ts_usec: 0,
        data: vec![0; 40],
    }];
    let result = decode_capture(
        &classic_pcap(&recs, 147, false, false),
        SessionParams::default(),
    );
    assert!(
        matches!(
            result,
            Err(PcapError::UnsupportedLinkType {
                frame: 1,
                linktype: 147
            })
        ),
        "{result:?}"
    );
}

// ---------------------------------------------------------------------------
// tshark agrees with our encoding of every message kind.
// ---------------------------------------------------------------------------

fn every_capability(asn: u32, id: Ipv4Addr, hostname: &str) -> Open {
    Open::new(
        asn,
        180,
        id,
        vec![
            Capability::Multiprotocol {
                family: Family::IPV4_UNICAST,
            },
            Capability::Multiprotocol {
                family: Family::IPV6_UNICAST,
            },
            Capability::RouteRefresh,
            Capability::ExtendedNextHop {
                entries: vec![(Family::IPV4_UNICAST, Afi::IPV6)],
            },
            Capability::ExtendedMessage,
            Capability::GracefulRestart(GracefulRestart {
                restarting: false,
                notification: true,
                restart_time: 120,
                families: vec![
                    GracefulRestartFamily {
                        family: Family::IPV4_UNICAST,
                        forwarding_preserved: true,
                    },
                    GracefulRestartFamily {
                        family: Family::IPV6_UNICAST,
                        forwarding_preserved: false,
                    },
                ],
            }),
            Capability::FourOctetAs { asn },
            Capability::AddPath {
                entries: vec![
                    (Family::IPV4_UNICAST, AddPathDirection::Both),
                    (Family::IPV6_UNICAST, AddPathDirection::Both),
                ],
            },
            Capability::EnhancedRouteRefresh,
            Capability::Fqdn {
                hostname: hostname.to_owned(),
                domain: "cluster.local".to_owned(),
            },
            // Long-Lived Graceful Restart (RFC 9494), which the codec keeps opaque.
            Capability::Unknown {
                code: 71,
                data: Bytes::from_static(&[0, 1, 1, 0x80, 0, 0, 0x0e, 0x10]),
            },
        ],
    )
}

fn attr(value: AttributeValue) -> PathAttribute {
    PathAttribute::new(value)
}

/// Every attribute a 4-octet session carries, with ADD-PATH NLRI.
fn update_every_attribute() -> Update {
    Update {
        withdrawn: vec![Nlri::with_path_id(v4("192.0.2.128/25"), 4)],
        attributes: vec![
            attr(AttributeValue::Origin(Origin::Igp)),
            attr(AttributeValue::AsPath(AsPath {
                segments: [
                    AsSegment {
                        kind: SegmentType::Sequence,
                        asns: Asns::from_slice(&[4_200_000_001, 65010]),
                    },
                    AsSegment {
                        kind: SegmentType::Set,
                        asns: Asns::from_slice(&[65020, 4_200_000_030]),
                    },
                ]
                .into_iter()
                .collect(),
            })),
            attr(AttributeValue::NextHop(Ipv4Addr::new(10, 0, 0, 1))),
            attr(AttributeValue::MultiExitDisc(50)),
            attr(AttributeValue::LocalPref(200)),
            attr(AttributeValue::AtomicAggregate),
            attr(AttributeValue::Aggregator(Aggregator {
                asn: 4_200_000_001,
                address: Ipv4Addr::new(10, 0, 0, 1),
            })),
            attr(AttributeValue::Communities(vec![
                Community((65001 << 16) | 100),
                Community::NO_EXPORT,
            ])),
            attr(AttributeValue::OriginatorId(Ipv4Addr::new(10, 0, 0, 9))),
            attr(AttributeValue::ClusterList(vec![
                Ipv4Addr::new(10, 0, 0, 8),
                Ipv4Addr::new(10, 0, 0, 7),
            ])),
            attr(AttributeValue::ExtendedCommunities(vec![
                // Route target 65001:100 (two-octet AS specific).
                ExtendedCommunity([0x00, 0x02, 0xfd, 0xe9, 0, 0, 0, 100]),
                // Route origin 4200000001:7 (four-octet AS specific).
                ExtendedCommunity([0x02, 0x03, 0xfa, 0x56, 0xea, 0x01, 0, 7]),
            ])),
            attr(AttributeValue::LargeCommunities(vec![LargeCommunity {
                global: 4_200_000_001,
                local1: 1,
                local2: 2,
            }])),
            // An optional transitive attribute of an unassigned type.
            PathAttribute {
                flags: 0xc0,
                value: AttributeValue::Unknown {
                    type_code: 200,
                    data: Bytes::from_static(b"opaque"),
                },
            },
        ],
        nlri: vec![
            Nlri::with_path_id(v4("192.0.2.0/25"), 1),
            Nlri::with_path_id(v4("198.51.100.0/24"), 2),
            Nlri::with_path_id(v4("10.1.0.0/16"), 3),
        ],
        faults: vec![],
    }
}

/// What a 2-octet session carries for 4-octet ASes: AS_TRANS plus AS4_PATH
/// and AS4_AGGREGATOR (RFC 6793 §4.2.2).
fn update_as4() -> Update {
    let as_trans = u32::from(AS_TRANS);
    Update {
        withdrawn: vec![],
        attributes: vec![
            attr(AttributeValue::Origin(Origin::Incomplete)),
            attr(AttributeValue::AsPath(AsPath::sequence(vec![
                as_trans, 65010,
            ]))),
            attr(AttributeValue::NextHop(Ipv4Addr::new(10, 0, 0, 1))),
            attr(AttributeValue::Aggregator(Aggregator {
                asn: as_trans,
                address: Ipv4Addr::new(10, 0, 0, 1),
            })),
            attr(AttributeValue::As4Path(AsPath::sequence(vec![
                4_200_000_001,
                65010,
            ]))),
            attr(AttributeValue::As4Aggregator(Aggregator {
                asn: 4_200_000_001,
                address: Ipv4Addr::new(10, 0, 0, 1),
            })),
        ],
        nlri: vec![Nlri::new(v4("203.0.113.0/24"))],
        faults: vec![],
    }
}

/// Many prefixes: a message longer than 4096 bytes (extended message).
fn update_extended() -> Update {
    let nlri = (0..1200u32)
        .map(|i| Nlri::with_path_id(v4(&format!("10.{}.{}.0/24", i / 256, i % 256)), i))
        .collect();
    announce_v4(vec![4_200_000_001], Ipv4Addr::new(10, 0, 0, 1), nlri)
}

fn ipv6(s: &str) -> Prefix {
    s.parse().expect("test prefix")
}

/// A 4-octet, extended-message, ADD-PATH session with every message kind.
fn every_message_kind() -> Vec<(bool, Message)> {
    let v6_reach = Update {
        withdrawn: vec![],
        attributes: vec![
            attr(AttributeValue::Origin(Origin::Egp)),
            attr(AttributeValue::AsPath(AsPath::sequence(vec![
                4_200_000_001,
            ]))),
            attr(AttributeValue::MpReach(Box::new(MpReach {
                family: Family::IPV6_UNICAST,
                next_hop: NextHop::Ipv6 {
                    global: "2001:db8::1".parse().expect("addr"),
                    link_local: Some("fe80::1".parse().expect("addr")),
                },
                nlri: vec![
                    Nlri::with_path_id(ipv6("2001:db8:1::/48"), 1),
                    Nlri::with_path_id(ipv6("2001:db8:2:3::/64"), 2),
                ],
                unparsed: Bytes::new(),
            }))),
            attr(AttributeValue::LargeCommunities(vec![LargeCommunity {
                global: 65001,
                local1: 0,
                local2: 4_294_967_295,
            }])),
        ],
        nlri: vec![],
        faults: vec![],
    };
    let v6_global_only = Update {
        attributes: vec![
            attr(AttributeValue::Origin(Origin::Igp)),
            attr(AttributeValue::AsPath(AsPath::sequence(vec![65002]))),
            attr(AttributeValue::MpReach(Box::new(MpReach {
                family: Family::IPV6_UNICAST,
                next_hop: NextHop::Ipv6 {
                    global: "2001:db8::2".parse().expect("addr"),
                    link_local: None,
                },
                nlri: vec![Nlri::with_path_id(ipv6("2001:db8:ff::/48"), 5)],
                unparsed: Bytes::new(),
            }))),
        ],
        ..Update::default()
    };
    let v6_unreach = Update {
        attributes: vec![attr(AttributeValue::MpUnreach(Box::new(MpUnreach {
            family: Family::IPV6_UNICAST,
            withdrawn: vec![Nlri::with_path_id(ipv6("2001:db8:1::/48"), 1)],
            unparsed: Bytes::new(),
        })))],
        ..Update::default()
    };
    let refresh = |subtype| Message::RouteRefresh(RouteRefresh::new(Family::IPV4_UNICAST, subtype));
    vec![
        (
            true,
            Message::Open(every_capability(
                4_200_000_001,
                Ipv4Addr::new(10, 0, 0, 1),
                "node-1",
            )),
        ),
        (
            false,
            Message::Open(every_capability(
                65002,
                Ipv4Addr::new(10, 0, 0, 2),
                "node-2",
            )),
        ),
        (true, Message::Keepalive),
        (false, Message::Keepalive),
        (true, Message::Update(update_every_attribute())),
        (true, Message::Update(v6_reach)),
        (false, Message::Update(v6_global_only)),
        (true, Message::Update(v6_unreach)),
        (true, Message::Update(update_extended())),
        (
            true,
            Message::Update(Update::end_of_rib(Family::IPV4_UNICAST)),
        ),
        (
            true,
            Message::Update(Update::end_of_rib(Family::IPV6_UNICAST)),
        ),
        (false, refresh(RouteRefreshSubtype::Request)),
        (true, refresh(RouteRefreshSubtype::BeginningOfRefresh)),
        (true, refresh(RouteRefreshSubtype::EndOfRefresh)),
        (
            false,
            Message::Notification(Notification::shutdown(2, "maintenance: draining node-2")),
        ),
    ]
}

/// A session without 4-octet AS support: OPENs without the capability.
fn two_octet_session() -> Vec<(bool, Message)> {
    let open = |my_as, id| {
        Message::Open(Open {
            version: 4,
            my_as,
            hold_time: 90,
            bgp_id: id,
            capabilities: vec![Capability::RouteRefresh],
            capability_layout: CapabilityLayout::Grouped,
        })
    };
    vec![
        (true, open(65001, Ipv4Addr::new(10, 0, 0, 1))),
        (false, open(65002, Ipv4Addr::new(10, 0, 0, 2))),
        (true, Message::Keepalive),
        (true, Message::Update(update_as4())),
        (
            true,
            Message::Notification(Notification::new(6, 4, Bytes::new())),
        ),
    ]
}

/// Encodes a conversation with the parameters the OPENs negotiate.
fn encode_session(messages: &[(bool, Message)]) -> Vec<(bool, Bytes)> {
    let opens: Vec<&Open> = messages
        .iter()
        .filter_map(|(_, m)| match m {
            Message::Open(o) => Some(o),
            _ => None,
        })
        .collect();
    messages
        .iter()
        .map(|(from_client, m)| {
            let (sender, receiver) = if *from_client {
                (opens[0], opens[1])
            } else {
                (opens[1], opens[0])
            };
            let params = SessionParams::negotiate_send(sender, receiver);
            (*from_client, m.to_bytes(&params).expect("encodable"))
        })
        .collect()
}

fn tshark_available() -> bool {
    Command::new("tshark")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Per frame, tshark's BGP message types and any warnings, errors or malformations.
fn tshark_report(path: &std::path::Path) -> Vec<(u64, Vec<u8>, Vec<String>)> {
    let output = Command::new("tshark")
        .arg("-r")
        .arg(path)
        .args([
            "-o",
            "ip.check_checksum:TRUE",
            "-o",
            "tcp.check_checksum:TRUE",
        ])
        .args(["-T", "fields", "-E", "occurrence=a", "-E", "aggregator=|"])
        .args([
            "-e",
            "frame.number",
            "-e",
            "bgp.type",
            "-e",
            "_ws.malformed",
        ])
        .args(["-e", "_ws.expert.severity", "-e", "_ws.expert.message"])
        .output()
        .expect("run tshark");
    assert!(
        output.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            let field = |i: usize| fields.get(i).copied().unwrap_or("");
            let list =
                |i: usize| -> Vec<&str> { field(i).split('|').filter(|s| !s.is_empty()).collect() };
            let frame = field(0).parse().expect("frame number");
            let types = list(1)
                .iter()
                .map(|t| t.parse().expect("bgp.type"))
                .collect();
            let mut problems = Vec::new();
            if !field(2).is_empty() {
                problems.push(format!("malformed: {}", field(2)));
            }
            let severities = list(3);
            let messages = list(4);
            for (i, severity) in severities.iter().enumerate() {
                // Expert severities: chat 0x200000, note 0x400000, warning 0x600000, error 0x800000.
                let level = severity
                    .trim_start_matches("0x")
                    .parse::<u32>()
                    .ok()
                    .or_else(|| u32::from_str_radix(severity.trim_start_matches("0x"), 16).ok())
                    .unwrap_or(u32::MAX);
                if level >= 0x0060_0000 {
                    problems.push(format!("{}: {}", severity, messages.get(i).unwrap_or(&"?")));
                }
            }
            (frame, types, problems)
        })
        .collect()
}

fn check_with_tshark(name: &str, messages: &[(bool, Message)]) {
    let payloads = encode_session(messages);
    let path = tmp_path(&format!("tshark-{name}.pcap"));
    write_bgp_pcap(&path, CLIENT, SERVER, &payloads).expect("write");

    // Our reader decodes it back exactly first.
    let found = read_bgp_messages(&path).expect("read");
    assert_eq!(found.len(), messages.len(), "{name}");
    for (f, (_, m)) in found.iter().zip(messages) {
        assert_eq!(f.message.as_ref(), Ok(m), "{name}: our own decode");
    }

    // tshark 4.0 does not implement RFC 8654: it calls every BGP length
    // above 4096 invalid. Such frames must draw exactly that complaint and
    // nothing else; every other frame must be clean.
    let extended_frames: Vec<u64> = found
        .iter()
        .filter(|f| f.bytes.len() > MAX_MESSAGE_LEN)
        .map(|f| f.frame)
        .collect();
    let report = tshark_report(&path);
    let mut problems = Vec::new();
    let mut tshark_types = Vec::new();
    for (frame, types, frame_problems) in &report {
        if extended_frames.contains(frame) {
            let only_length = frame_problems
                .iter()
                .all(|p| p.contains("Length is invalid") || p.starts_with("malformed"));
            if !only_length || frame_problems.is_empty() {
                problems.push(format!(
                    "frame {frame} (extended message): {frame_problems:?}"
                ));
            }
            continue;
        }
        tshark_types.extend(types.iter().map(|t| (*frame, *t)));
        for p in frame_problems {
            problems.push(format!("frame {frame}: {p}"));
        }
    }
    let ours: Vec<(u64, u8)> = found
        .iter()
        .filter(|f| !extended_frames.contains(&f.frame))
        .map(|f| {
            (
                f.frame,
                f.message.as_ref().map(|m| m.type_code()).unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        tshark_types, ours,
        "{name}: tshark's BGP messages (frame, type) vs ours"
    );
    assert!(
        problems.is_empty(),
        "{name}: tshark found problems:\n{}",
        problems.join("\n")
    );
}

#[test]
fn tshark_dissects_every_message_kind_cleanly() {
    if !tshark_available() {
        println!("SKIPPED: tshark not installed");
        return;
    }
    check_with_tshark("every-kind", &every_message_kind());
    check_with_tshark("two-octet", &two_octet_session());

    // Negative control: the same check flags a corrupted capture. One
    // UPDATE byte changed without fixing the TCP checksum.
    let path = tmp_path("tshark-every-kind.pcap");
    let mut file = std::fs::read(&path).expect("read back");
    let local_pref = [0x40, 0x05, 0x04, 0, 0, 0, 200];
    let at = file
        .windows(local_pref.len())
        .position(|w| w == local_pref)
        .expect("LOCAL_PREF in the capture");
    file[at + 6] = 201;
    let corrupted = tmp_path("tshark-corrupted.pcap");
    std::fs::write(&corrupted, file).expect("write");
    let flagged = tshark_report(&corrupted)
        .iter()
        .any(|(_, _, problems)| problems.iter().any(|p| p.contains("Bad checksum")));
    assert!(
        flagged,
        "tshark did not flag a corrupted segment: the check is blind"
    );
}
