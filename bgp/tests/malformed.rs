//! Malformed-input table: hand-built bad messages, each mapped to the
//! NOTIFICATION code/subcode RFC 4271 §6 prescribes and the RFC 7606
//! disposition. Errors that keep the session up come back as faults on an
//! otherwise decoded UPDATE; the rest fail `decode`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bgp::wire::{
    decode, AddPathFamilies, DecodeError, Disposition, Family, Message, SessionParams,
};
use bytes::Bytes;

use Disposition::{
    AttributeDiscard as Discard, SessionReset as Reset, TreatAsWithdraw as Withdraw,
};

const FOUR: SessionParams = SessionParams {
    four_octet_as: true,
    extended_message: false,
    add_path: AddPathFamilies::EMPTY,
};
const TWO: SessionParams = SessionParams {
    four_octet_as: false,
    extended_message: false,
    add_path: AddPathFamilies::EMPTY,
};

fn message(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    m.push(ty);
    m.extend_from_slice(body);
    m
}

fn with_length(mut m: Vec<u8>, len: u16) -> Vec<u8> {
    m[16..18].copy_from_slice(&len.to_be_bytes());
    m
}

/// OPEN body: version 4, AS 65001, hold 90, id 192.0.2.1, then `params`.
fn open_body(version: u8, asn: u16, hold: u16, id: [u8; 4], params: &[u8]) -> Vec<u8> {
    let mut b = vec![version];
    b.extend_from_slice(&asn.to_be_bytes());
    b.extend_from_slice(&hold.to_be_bytes());
    b.extend_from_slice(&id);
    b.push(params.len() as u8);
    b.extend_from_slice(params);
    b
}

fn open(params: &[u8]) -> Vec<u8> {
    message(1, &open_body(4, 65001, 90, [192, 0, 2, 1], params))
}

/// A capabilities optional parameter holding one capability.
fn cap(code: u8, value: &[u8]) -> Vec<u8> {
    let mut c = vec![2, (value.len() + 2) as u8, code, value.len() as u8];
    c.extend_from_slice(value);
    c
}

fn update_body(withdrawn: &[u8], attrs: &[u8], nlri: &[u8]) -> Vec<u8> {
    let mut b = (withdrawn.len() as u16).to_be_bytes().to_vec();
    b.extend_from_slice(withdrawn);
    b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    b.extend_from_slice(attrs);
    b.extend_from_slice(nlri);
    b
}

fn update(attrs: &[u8], nlri: &[u8]) -> Vec<u8> {
    message(2, &update_body(&[], attrs, nlri))
}

fn attr(flags: u8, ty: u8, value: &[u8]) -> Vec<u8> {
    let mut a = vec![flags, ty, value.len() as u8];
    a.extend_from_slice(value);
    a
}

const ORIGIN: [u8; 4] = [0x40, 1, 1, 0];
const AS_PATH4: [u8; 9] = [0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xe9];
const NEXT_HOP: [u8; 7] = [0x40, 3, 4, 10, 0, 0, 1];
const NLRI: [u8; 4] = [24, 10, 1, 2];

/// ORIGIN, AS_PATH and NEXT_HOP, then `extra`.
fn base_plus(extra: &[u8]) -> Vec<u8> {
    [&ORIGIN[..], &AS_PATH4, &NEXT_HOP, extra].concat()
}

/// A valid MP_REACH_NLRI for 2001:db8::/32 via 2001:db8::1.
fn mp_reach_v6() -> Vec<u8> {
    let mut v = vec![0, 2, 1, 16];
    v.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    v.push(0);
    v.extend_from_slice(&[32, 0x20, 0x01, 0x0d, 0xb8]);
    attr(0x80, 14, &v)
}

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    params: SessionParams,
    code: u8,
    subcode: u8,
    disposition: Disposition,
    /// Expected NOTIFICATION data, where the RFC fixes it.
    data: Option<Vec<u8>>,
}

fn case(
    name: &'static str,
    bytes: Vec<u8>,
    code: u8,
    subcode: u8,
    disposition: Disposition,
) -> Case {
    Case {
        name,
        bytes,
        params: FOUR,
        code,
        subcode,
        disposition,
        data: None,
    }
}

impl Case {
    fn params(mut self, p: SessionParams) -> Self {
        self.params = p;
        self
    }
    fn data(mut self, d: &[u8]) -> Self {
        self.data = Some(d.to_vec());
        self
    }
}

fn cases() -> Vec<Case> {
    let keepalive = message(4, &[]);
    let mut bad_marker = keepalive.clone();
    bad_marker[3] = 0;
    let mut v6_nh_len4 = vec![0, 2, 1, 4, 10, 0, 0, 1, 0];
    v6_nh_len4.extend_from_slice(&[32, 0x20, 0x01, 0x0d, 0xb8]);
    let mut v4_nh_len6 = vec![0, 1, 1, 6, 10, 0, 0, 1, 0, 0, 0];
    v4_nh_len6.extend_from_slice(&[24, 10, 1, 2]);
    let mut v6_prefix_129 = vec![0, 2, 1, 16];
    v6_prefix_129.extend_from_slice(&[
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0,
    ]);
    v6_prefix_129.extend_from_slice(&[129; 17]);

    vec![
        // Message header (RFC 4271 §6.1).
        case("marker not all ones", bad_marker, 1, 1, Reset),
        case(
            "length below 19",
            with_length(keepalive.clone(), 18),
            1,
            2,
            Reset,
        )
        .data(&[0, 18]),
        case(
            "UPDATE over 4096 without extended message",
            with_length(update(&[], &[]), 4097),
            1,
            2,
            Reset,
        )
        .data(&[0x10, 0x01]),
        case("KEEPALIVE of 20 bytes", message(4, &[0]), 1, 2, Reset).data(&[0, 20]),
        case(
            "OPEN shorter than 29",
            message(1, &[4, 0, 1, 0, 90, 1, 2, 3, 4]),
            1,
            2,
            Reset,
        ),
        case(
            "NOTIFICATION shorter than 21",
            message(3, &[6]),
            1,
            2,
            Reset,
        ),
        case(
            "ROUTE-REFRESH shorter than 23",
            message(5, &[0, 1, 0]),
            1,
            2,
            Reset,
        ),
        case("unknown message type 9", message(9, &[]), 1, 3, Reset).data(&[9]),
        case(
            "header length disagrees with the bytes",
            with_length(message(4, &[]), 23),
            1,
            2,
            Reset,
        ),
        // OPEN (RFC 4271 §6.2, RFC 5492, RFC 7607).
        case(
            "OPEN version 3",
            message(1, &open_body(3, 65001, 90, [192, 0, 2, 1], &[])),
            2,
            1,
            Reset,
        )
        .data(&[0, 4]),
        case(
            "OPEN hold time 1",
            message(1, &open_body(4, 65001, 1, [192, 0, 2, 1], &[])),
            2,
            6,
            Reset,
        ),
        case(
            "OPEN hold time 2",
            message(1, &open_body(4, 65001, 2, [192, 0, 2, 1], &[])),
            2,
            6,
            Reset,
        ),
        case(
            "OPEN BGP identifier 0.0.0.0",
            message(1, &open_body(4, 65001, 90, [0; 4], &[])),
            2,
            3,
            Reset,
        ),
        case(
            "OPEN my AS 0",
            message(1, &open_body(4, 0, 90, [192, 0, 2, 1], &[])),
            2,
            2,
            Reset,
        ),
        case(
            "OPEN optional parameter type 1",
            open(&[1, 2, 0, 0]),
            2,
            4,
            Reset,
        ),
        case(
            "OPEN parameter overruns",
            open(&[2, 9, 65, 4, 0, 0, 0xfd, 0xe9]),
            2,
            0,
            Reset,
        ),
        case(
            "capability overruns its parameter",
            open(&[2, 4, 65, 4, 0, 0]),
            2,
            0,
            Reset,
        ),
        case(
            "multiprotocol capability of 3 bytes",
            open(&cap(1, &[0, 1, 1])),
            2,
            0,
            Reset,
        ),
        case(
            "4-octet AS capability of 2 bytes",
            open(&cap(65, &[0xfd, 0xe9])),
            2,
            0,
            Reset,
        ),
        case(
            "graceful restart capability of 3 bytes",
            open(&cap(64, &[0, 120, 0])),
            2,
            0,
            Reset,
        ),
        case(
            "route refresh capability with a value",
            open(&cap(2, &[0])),
            2,
            0,
            Reset,
        ),
        // UPDATE structure (RFC 4271 §6.3, RFC 7606 §4, §5.3).
        case(
            "withdrawn length overruns",
            message(2, &[0, 9, 24, 10, 1, 2, 0, 0]),
            3,
            1,
            Reset,
        ),
        case(
            "total attribute length overruns",
            message(2, &[0, 0, 0, 40, 0x40, 1, 1, 0]),
            3,
            1,
            Reset,
        ),
        case(
            "withdrawn prefix /33",
            message(2, &update_body(&[33, 10, 1, 2, 3, 4], &[], &[])),
            3,
            10,
            Reset,
        ),
        case(
            "NLRI prefix /33",
            update(&base_plus(&[]), &[33, 10, 1, 2, 3, 4]),
            3,
            10,
            Reset,
        ),
        case(
            "NLRI prefix truncated",
            update(&base_plus(&[]), &[24, 10, 1]),
            3,
            10,
            Reset,
        ),
        case(
            "ADD-PATH NLRI without its path id",
            update(&base_plus(&[]), &[0, 0, 24]),
            3,
            10,
            Reset,
        )
        .params(SessionParams {
            add_path: AddPathFamilies::EMPTY.with(Family::IPV4_UNICAST),
            ..FOUR
        }),
        case(
            "attribute length overruns the list",
            update(&[&ORIGIN[..], &[0x40, 2, 9, 2, 1]].concat(), &NLRI),
            3,
            1,
            Withdraw,
        ),
        case(
            "attribute header truncated",
            update(&[&ORIGIN[..], &[0x40, 2]].concat(), &NLRI),
            3,
            1,
            Withdraw,
        ),
        case(
            "attribute overrun after MP_REACH_NLRI",
            update(
                &[&ORIGIN[..], &AS_PATH4, &mp_reach_v6(), &[0x40, 5, 9, 0]].concat(),
                &[],
            ),
            3,
            1,
            Reset,
        ),
        case(
            "duplicate ORIGIN",
            update(&base_plus(&ORIGIN), &NLRI),
            3,
            1,
            Discard,
        ),
        case(
            "duplicate MP_REACH_NLRI",
            update(
                &[&ORIGIN[..], &AS_PATH4, &mp_reach_v6(), &mp_reach_v6()].concat(),
                &[],
            ),
            3,
            1,
            Reset,
        ),
        case(
            "unrecognised well-known attribute 99",
            update(&base_plus(&attr(0x40, 99, &[1])), &NLRI),
            3,
            2,
            Reset,
        )
        .data(&[0x40, 99, 1, 1]),
        case(
            "missing ORIGIN",
            update(&[&AS_PATH4[..], &NEXT_HOP].concat(), &NLRI),
            3,
            3,
            Withdraw,
        )
        .data(&[1]),
        case(
            "missing AS_PATH",
            update(&[&ORIGIN[..], &NEXT_HOP].concat(), &NLRI),
            3,
            3,
            Withdraw,
        )
        .data(&[2]),
        case(
            "missing NEXT_HOP",
            update(&[&ORIGIN[..], &AS_PATH4].concat(), &NLRI),
            3,
            3,
            Withdraw,
        )
        .data(&[3]),
        // Per-attribute checks (RFC 4271 §6.3, RFC 7606 §7, RFC 6793 §6).
        case(
            "ORIGIN flagged optional",
            update(
                &[&[0xc0, 1, 1, 0][..], &AS_PATH4, &NEXT_HOP].concat(),
                &NLRI,
            ),
            3,
            4,
            Withdraw,
        )
        .data(&[0xc0, 1, 1, 0]),
        case(
            "well-known attribute with Partial set",
            update(
                &[&[0x60, 1, 1, 0][..], &AS_PATH4, &NEXT_HOP].concat(),
                &NLRI,
            ),
            3,
            4,
            Withdraw,
        ),
        case(
            "MED flagged well-known",
            update(&base_plus(&attr(0x40, 4, &[0, 0, 0, 1])), &NLRI),
            3,
            4,
            Withdraw,
        ),
        case(
            "ORIGIN of 2 bytes",
            update(
                &[&[0x40, 1, 2, 0, 0][..], &AS_PATH4, &NEXT_HOP].concat(),
                &NLRI,
            ),
            3,
            5,
            Withdraw,
        )
        .data(&[0x40, 1, 2, 0, 0]),
        case(
            "ORIGIN value 3",
            update(
                &[&[0x40, 1, 1, 3][..], &AS_PATH4, &NEXT_HOP].concat(),
                &NLRI,
            ),
            3,
            6,
            Withdraw,
        )
        .data(&[0x40, 1, 1, 3]),
        case(
            "NEXT_HOP of 5 bytes",
            update(
                &[&ORIGIN[..], &AS_PATH4, &[0x40, 3, 5, 10, 0, 0, 1, 0]].concat(),
                &NLRI,
            ),
            3,
            5,
            Withdraw,
        ),
        case(
            "NEXT_HOP 0.0.0.0",
            update(
                &[&ORIGIN[..], &AS_PATH4, &[0x40, 3, 4, 0, 0, 0, 0]].concat(),
                &NLRI,
            ),
            3,
            8,
            Withdraw,
        )
        .data(&[0x40, 3, 4, 0, 0, 0, 0]),
        case(
            "NEXT_HOP multicast",
            update(
                &[&ORIGIN[..], &AS_PATH4, &[0x40, 3, 4, 224, 0, 0, 1]].concat(),
                &NLRI,
            ),
            3,
            8,
            Withdraw,
        ),
        case(
            "MED of 3 bytes",
            update(&base_plus(&attr(0x80, 4, &[0, 0, 1])), &NLRI),
            3,
            5,
            Withdraw,
        ),
        case(
            "LOCAL_PREF of 5 bytes",
            update(&base_plus(&attr(0x40, 5, &[0, 0, 0, 0, 1])), &NLRI),
            3,
            5,
            Withdraw,
        ),
        case(
            "ATOMIC_AGGREGATE of 1 byte",
            update(&base_plus(&attr(0x40, 6, &[0])), &NLRI),
            3,
            5,
            Discard,
        ),
        case(
            "AGGREGATOR of 7 bytes on a 4-octet session",
            update(&base_plus(&attr(0xc0, 7, &[0, 0, 1, 10, 0, 0, 1])), &NLRI),
            3,
            5,
            Discard,
        ),
        case(
            "AGGREGATOR of 8 bytes on a 2-octet session",
            update(
                &[
                    &ORIGIN[..],
                    &[0x40, 2, 4, 2, 1, 0xfd, 0xe9],
                    &NEXT_HOP,
                    &attr(0xc0, 7, &[0, 0, 0, 1, 10, 0, 0, 1]),
                ]
                .concat(),
                &NLRI,
            ),
            3,
            5,
            Discard,
        )
        .params(TWO),
        case(
            "COMMUNITIES of 5 bytes",
            update(&base_plus(&attr(0xc0, 8, &[0, 1, 0, 2, 3])), &NLRI),
            3,
            5,
            Withdraw,
        ),
        case(
            "COMMUNITIES empty",
            update(&base_plus(&attr(0xc0, 8, &[])), &NLRI),
            3,
            5,
            Withdraw,
        ),
        case(
            "AS_PATH segment overruns",
            update(
                &[
                    &ORIGIN[..],
                    &[0x40, 2, 6, 2, 2, 0, 0, 0xfd, 0xe9],
                    &NEXT_HOP,
                ]
                .concat(),
                &NLRI,
            ),
            3,
            11,
            Withdraw,
        ),
        case(
            "AS_PATH segment type 5",
            update(
                &[
                    &ORIGIN[..],
                    &[0x40, 2, 6, 5, 1, 0, 0, 0xfd, 0xe9],
                    &NEXT_HOP,
                ]
                .concat(),
                &NLRI,
            ),
            3,
            11,
            Withdraw,
        ),
        case(
            "AS_PATH zero-length segment",
            update(
                &[&ORIGIN[..], &[0x40, 2, 2, 2, 0], &NEXT_HOP].concat(),
                &NLRI,
            ),
            3,
            11,
            Withdraw,
        ),
        case(
            "AS_PATH of 2-octet width on a 4-octet session",
            update(
                &[&ORIGIN[..], &[0x40, 2, 4, 2, 1, 0xfd, 0xe9], &NEXT_HOP].concat(),
                &NLRI,
            ),
            3,
            11,
            Withdraw,
        ),
        case(
            "AS4_PATH segment overruns",
            update(
                &[
                    &ORIGIN[..],
                    &[0x40, 2, 4, 2, 1, 0x5b, 0xa0],
                    &NEXT_HOP,
                    &attr(0xc0, 17, &[2, 2, 0, 1, 0, 0]),
                ]
                .concat(),
                &NLRI,
            ),
            3,
            9,
            Discard,
        )
        .params(TWO),
        case(
            "AS4_PATH with a confederation segment",
            update(
                &[
                    &ORIGIN[..],
                    &[0x40, 2, 4, 2, 1, 0x5b, 0xa0],
                    &NEXT_HOP,
                    &attr(0xc0, 17, &[3, 1, 0, 1, 0, 0]),
                ]
                .concat(),
                &NLRI,
            ),
            3,
            9,
            Discard,
        )
        .params(TWO),
        case(
            "ORIGINATOR_ID of 3 bytes",
            update(&base_plus(&attr(0x80, 9, &[1, 2, 3])), &NLRI),
            3,
            5,
            Withdraw,
        ),
        case(
            "CLUSTER_LIST of 6 bytes",
            update(&base_plus(&attr(0x80, 10, &[1, 2, 3, 4, 5, 6])), &NLRI),
            3,
            5,
            Withdraw,
        ),
        case(
            "EXTENDED_COMMUNITIES of 12 bytes",
            update(&base_plus(&attr(0xc0, 16, &[0; 12])), &NLRI),
            3,
            5,
            Withdraw,
        ),
        case(
            "LARGE_COMMUNITY of 8 bytes",
            update(&base_plus(&attr(0xc0, 32, &[0; 8])), &NLRI),
            3,
            5,
            Withdraw,
        ),
        case(
            "MP_REACH_NLRI flagged transitive",
            update(
                &[&ORIGIN[..], &AS_PATH4, &{
                    let mut a = mp_reach_v6();
                    a[0] = 0xc0;
                    a
                }]
                .concat(),
                &[],
            ),
            3,
            4,
            Reset,
        ),
        case(
            "MP_REACH_NLRI IPv6 with a 4-byte next hop",
            update(
                &[&ORIGIN[..], &AS_PATH4, &attr(0x80, 14, &v6_nh_len4)].concat(),
                &[],
            ),
            3,
            9,
            Reset,
        ),
        case(
            "MP_REACH_NLRI IPv4 with a 6-byte next hop",
            update(
                &[&ORIGIN[..], &AS_PATH4, &attr(0x80, 14, &v4_nh_len6)].concat(),
                &[],
            ),
            3,
            9,
            Reset,
        ),
        case(
            "MP_REACH_NLRI prefix /129",
            update(
                &[&ORIGIN[..], &AS_PATH4, &attr(0x80, 14, &v6_prefix_129)].concat(),
                &[],
            ),
            3,
            9,
            Reset,
        ),
        case(
            "MP_REACH_NLRI shorter than its fixed part",
            update(
                &[&ORIGIN[..], &AS_PATH4, &attr(0x80, 14, &[0, 2, 1, 16])].concat(),
                &[],
            ),
            3,
            9,
            Reset,
        ),
        case(
            "MP_REACH_NLRI next hop overruns",
            update(
                &[
                    &ORIGIN[..],
                    &AS_PATH4,
                    &attr(0x80, 14, &[0, 2, 1, 16, 0x20, 0x01]),
                ]
                .concat(),
                &[],
            ),
            3,
            9,
            Reset,
        ),
        case(
            "MP_UNREACH_NLRI of 2 bytes",
            update(&attr(0x80, 15, &[0, 2]), &[]),
            3,
            9,
            Reset,
        ),
        case(
            "MP_UNREACH_NLRI prefix overruns",
            update(&attr(0x80, 15, &[0, 2, 1, 64, 0x20, 0x01]), &[]),
            3,
            9,
            Reset,
        ),
        // ROUTE-REFRESH (RFC 7313 §5).
        case(
            "BoRR with 5 bytes of body",
            message(5, &[0, 1, 1, 1, 0]),
            7,
            1,
            Reset,
        ),
        case(
            "EoRR with 6 bytes of body",
            message(5, &[0, 1, 2, 1, 0, 0]),
            7,
            1,
            Reset,
        ),
    ]
}

/// The most severe error a decode produced: the `Err`, or the worst fault.
fn worst(bytes: &[u8], params: &SessionParams) -> Option<DecodeError> {
    match decode(&Bytes::copy_from_slice(bytes), params) {
        Err(e) => Some(e),
        Ok(Message::Update(u)) => u.faults.into_iter().min_by_key(|f| f.disposition),
        Ok(_) => None,
    }
}

#[test]
fn every_malformed_message_maps_to_its_notification_and_disposition() {
    let cases = cases();
    assert!(
        cases.len() >= 40,
        "the table must hold at least 40 cases, has {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for c in &cases {
        match worst(&c.bytes, &c.params) {
            None => failures.push(format!("{}: decoded without error", c.name)),
            Some(e) => {
                let got = (e.code, e.subcode, e.disposition);
                let want = (c.code, c.subcode, c.disposition);
                if got != want {
                    failures.push(format!(
                        "{}: got {got:?} ({}), want {want:?}",
                        c.name, e.kind
                    ));
                }
                if let Some(d) = &c.data {
                    if e.data[..] != d[..] {
                        failures.push(format!(
                            "{}: data {:02x?}, want {:02x?}",
                            c.name,
                            &e.data[..],
                            d
                        ));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn errors_that_keep_the_session_return_the_rest_of_the_update() {
    // A bad ATOMIC_AGGREGATE is discarded; the route stays usable.
    let bytes = update(&base_plus(&attr(0x40, 6, &[0])), &NLRI);
    let Ok(Message::Update(u)) = decode(&Bytes::from(bytes), &FOUR) else {
        panic!("expected an UPDATE");
    };
    assert_eq!(u.nlri.len(), 1);
    assert_eq!(u.attributes.len(), 3, "ORIGIN, AS_PATH, NEXT_HOP kept");
    assert!(!u.treat_as_withdraw());

    // A bad ORIGIN value: the UPDATE's prefixes must be withdrawn.
    let bytes = update(
        &[&[0x40, 1, 1, 3][..], &AS_PATH4, &NEXT_HOP].concat(),
        &NLRI,
    );
    let Ok(Message::Update(u)) = decode(&Bytes::from(bytes), &FOUR) else {
        panic!("expected an UPDATE");
    };
    assert!(u.treat_as_withdraw());
    assert_eq!(
        u.nlri.len(),
        1,
        "the prefixes stay locatable for withdrawal"
    );
}

#[test]
fn duplicate_attribute_keeps_the_first_occurrence() {
    let bytes = update(&base_plus(&[0x40, 1, 1, 2]), &NLRI);
    let Ok(Message::Update(u)) = decode(&Bytes::from(bytes), &FOUR) else {
        panic!("expected an UPDATE");
    };
    assert_eq!(
        u.attribute(1),
        Some(&bgp::wire::AttributeValue::Origin(bgp::wire::Origin::Igp))
    );
}

#[test]
fn well_formed_messages_used_in_the_table_decode_cleanly() {
    // Guards the table: its building blocks are valid on their own, so
    // each case fails for the reason it names.
    for (name, bytes, params) in [
        ("keepalive", message(4, &[]), FOUR),
        ("open", open(&cap(65, &[0, 0, 0xfd, 0xe9])), FOUR),
        ("update", update(&base_plus(&[]), &NLRI), FOUR),
        (
            "mp_reach",
            update(&[&ORIGIN[..], &AS_PATH4, &mp_reach_v6()].concat(), &[]),
            FOUR,
        ),
        (
            "two-octet update",
            update(
                &[&ORIGIN[..], &[0x40, 2, 4, 2, 1, 0xfd, 0xe9], &NEXT_HOP].concat(),
                &NLRI,
            ),
            TWO,
        ),
        ("route refresh", message(5, &[0, 1, 0, 1]), FOUR),
        ("borr", message(5, &[0, 1, 1, 1]), FOUR),
    ] {
        match decode(&Bytes::from(bytes), &params) {
            Ok(Message::Update(u)) => assert!(u.faults.is_empty(), "{name}: {:?}", u.faults),
            Ok(_) => {}
            Err(e) => panic!("{name}: {e}"),
        }
    }
}
