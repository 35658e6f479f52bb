#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The RFC 4271 §8 FSM, driven only by events and fake instants.

use bgp::fsm::{
    fsm_subcode, resolve_collision, Action, DownReason, Event, Fsm, Negotiated, PeerAsn,
    PeerConfig, State, Survivor, OPEN_SENT_HOLD_TIME,
};
use bgp::wire::error::{cease_subcode, code, open_subcode};
use bgp::wire::{
    AddPathDirection, Capability, CapabilityLayout, DecodeError, Disposition, ErrorKind, Family,
    Message, Notification, Open, RouteRefresh, RouteRefreshSubtype, SessionParams, Update,
    AS_TRANS,
};
use bytes::Bytes;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

const LOCAL_ASN: u32 = 65001;
const PEER_ASN: u32 = 65002;
const LOCAL_ID: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const PEER_ID: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Without jitter, so that deadlines are exact (the jitter and backoff
/// have their own tests).
fn config() -> PeerConfig {
    let mut c = PeerConfig::new(LOCAL_ASN, LOCAL_ID, PeerAsn::Exact(PEER_ASN));
    c.jitter = false;
    c
}

fn fsm(config: PeerConfig) -> Fsm {
    Fsm::new(config).unwrap()
}

fn peer_open(hold_time: u16) -> Open {
    Open::new(PEER_ASN, hold_time, PEER_ID, vec![])
}

/// An OPEN from a speaker without 4-octet AS support (RFC 6793 "OLD").
fn two_octet_open(my_as: u16, hold_time: u16, bgp_id: Ipv4Addr) -> Open {
    Open {
        version: 4,
        my_as,
        hold_time,
        bgp_id,
        capabilities: vec![],
        capability_layout: CapabilityLayout::Grouped,
    }
}

fn msg(m: Message) -> Event {
    Event::Message(m)
}

fn open_event(open: Open) -> Event {
    msg(Message::Open(open))
}

fn send_notification(n: Notification) -> Action {
    Action::Send(Message::Notification(n))
}

fn notif(code: u8, subcode: u8, data: &[u8]) -> Notification {
    Notification::new(code, subcode, Bytes::copy_from_slice(data))
}

fn manual_stop() -> Event {
    Event::ManualStop {
        shutdown_message: None,
    }
}

/// Drives a fresh active FSM to OpenSent at `t0`.
fn to_open_sent(config: PeerConfig, t0: Instant) -> Fsm {
    let mut f = fsm(config);
    assert_eq!(f.handle(Event::ManualStart, t0), vec![Action::Connect]);
    let open = f.local_open().clone();
    assert_eq!(
        f.handle(Event::TcpConnectionAcked, t0),
        vec![Action::Send(Message::Open(open))]
    );
    assert_eq!(f.state(), State::OpenSent);
    f
}

fn to_open_confirm(config: PeerConfig, peer: Open, t0: Instant) -> Fsm {
    let mut f = to_open_sent(config, t0);
    assert_eq!(
        f.handle(open_event(peer), t0),
        vec![Action::Send(Message::Keepalive)]
    );
    assert_eq!(f.state(), State::OpenConfirm);
    f
}

fn established(actions: &[Action]) -> Negotiated {
    match actions {
        [Action::Established(n)] => (**n).clone(),
        other => panic!("expected Established, got {other:?}"),
    }
}

fn to_established(config: PeerConfig, peer: Open, t0: Instant) -> (Fsm, Negotiated) {
    let mut f = to_open_confirm(config, peer, t0);
    let n = established(&f.handle(msg(Message::Keepalive), t0));
    assert_eq!(f.state(), State::Established);
    (f, n)
}

#[test]
fn config_is_validated() {
    let mut c = config();
    c.hold_time = 2;
    assert!(Fsm::new(c).is_err());
    let mut c = config();
    c.local_id = Ipv4Addr::UNSPECIFIED;
    assert!(Fsm::new(c).is_err());
    let mut c = config();
    c.connect_retry = Duration::ZERO;
    assert!(Fsm::new(c).is_err());
}

#[test]
fn happy_path_active() {
    let t0 = Instant::now();
    let v6 = Family::IPV6_UNICAST;
    let v4 = Family::IPV4_UNICAST;
    let mut c = config();
    c.capabilities.families = vec![v4, v6];
    c.capabilities.route_refresh = true;
    c.capabilities.add_path = vec![(v4, AddPathDirection::Receive)];
    let mut f = fsm(c.clone());
    assert_eq!(f.state(), State::Idle);
    assert_eq!(f.next_timeout(), None);

    assert_eq!(f.handle(Event::ManualStart, t0), vec![Action::Connect]);
    assert_eq!(f.state(), State::Connect);
    assert_eq!(f.next_timeout(), Some(t0 + secs(120)));

    let ours = Open::new(
        LOCAL_ASN,
        90,
        LOCAL_ID,
        vec![
            Capability::Multiprotocol { family: v4 },
            Capability::Multiprotocol { family: v6 },
            Capability::RouteRefresh,
            Capability::AddPath {
                entries: vec![(v4, AddPathDirection::Receive)],
            },
        ],
    );
    assert_eq!(ours.four_octet_as(), Some(LOCAL_ASN));
    let t1 = t0 + secs(1);
    assert_eq!(
        f.handle(Event::TcpConnectionAcked, t1),
        vec![Action::Send(Message::Open(ours.clone()))]
    );
    assert_eq!(f.state(), State::OpenSent);
    assert_eq!(f.next_timeout(), Some(t1 + OPEN_SENT_HOLD_TIME));

    let peer = Open::new(
        PEER_ASN,
        30,
        PEER_ID,
        vec![
            Capability::Multiprotocol { family: v4 },
            Capability::RouteRefresh,
            Capability::AddPath {
                entries: vec![(v4, AddPathDirection::Both)],
            },
        ],
    );
    let t2 = t0 + secs(2);
    assert_eq!(
        f.handle(open_event(peer.clone()), t2),
        vec![Action::Send(Message::Keepalive)]
    );
    assert_eq!(f.state(), State::OpenConfirm);
    assert_eq!(f.peer_id(), Some(PEER_ID));
    // Keepalive timer: 30 / 3.
    assert_eq!(f.next_timeout(), Some(t2 + secs(10)));

    let t3 = t0 + secs(3);
    let n = established(&f.handle(msg(Message::Keepalive), t3));
    assert_eq!(f.state(), State::Established);
    assert_eq!(n.hold_time, 30);
    assert_eq!(n.keepalive_interval, Some(secs(10)));
    assert_eq!(n.peer_asn, PEER_ASN);
    assert_eq!(n.peer_id, PEER_ID);
    assert!(!n.internal);
    assert_eq!(n.families, vec![v4]);
    assert!(n.route_refresh);
    assert!(!n.enhanced_route_refresh);
    assert_eq!(n.peer_graceful_restart, None);
    assert_eq!(n.receive, SessionParams::negotiate_receive(&ours, &peer));
    assert_eq!(n.send, SessionParams::negotiate_send(&ours, &peer));
    assert!(n.receive.four_octet_as && n.send.four_octet_as);
    // We receive path ids (we said Receive, they said Both), never send.
    assert!(n.receive.add_path.contains(v4));
    assert!(!n.send.add_path.contains(v4));
    assert_eq!(f.negotiated(), Some(&n));
    assert_eq!(n.remote_open, peer);
}

#[test]
fn happy_path_passive() {
    let t0 = Instant::now();
    let mut c = config();
    c.passive = true;
    c.hold_time = 9;
    let mut f = fsm(c);
    assert_eq!(f.handle(Event::ManualStart, t0), vec![]);
    assert_eq!(f.state(), State::Active);
    // A passive peer never connects: no ConnectRetry timer.
    assert_eq!(f.next_timeout(), None);
    let ours = f.local_open().clone();
    assert_eq!(
        f.handle(Event::TcpConnectionConfirmed, t0),
        vec![Action::Send(Message::Open(ours))]
    );
    assert_eq!(f.state(), State::OpenSent);
    assert_eq!(
        f.handle(open_event(peer_open(90)), t0),
        vec![Action::Send(Message::Keepalive)]
    );
    let n = established(&f.handle(msg(Message::Keepalive), t0));
    assert_eq!(n.hold_time, 9);
    assert_eq!(n.keepalive_interval, Some(secs(3)));
    assert_eq!(n.families, vec![Family::IPV4_UNICAST]);
}

#[test]
fn rfc_passive_start_connects_after_connect_retry() {
    let t0 = Instant::now();
    let mut f = fsm(config());
    assert_eq!(f.handle(Event::ManualStartPassive, t0), vec![]);
    assert_eq!(f.state(), State::Active);
    assert_eq!(f.next_timeout(), Some(t0 + secs(120)));
    assert_eq!(f.handle_timeout(t0 + secs(119)), vec![]);
    assert_eq!(f.handle_timeout(t0 + secs(120)), vec![Action::Connect]);
    assert_eq!(f.state(), State::Connect);
    assert_eq!(f.next_timeout(), Some(t0 + secs(240)));
}

#[test]
fn two_octet_only_peer() {
    let t0 = Instant::now();
    let local_asn = 4_200_000_001;
    let mut c = PeerConfig::new(local_asn, LOCAL_ID, PeerAsn::Exact(65002));
    c.allow_two_octet_peer = true;
    let f = fsm(c.clone());
    // Our OPEN: AS_TRANS in My AS, the real AS in the capability.
    assert_eq!(f.local_open().my_as, AS_TRANS);
    assert_eq!(f.local_open().four_octet_as(), Some(local_asn));
    let (_, n) = to_established(c, two_octet_open(65002, 90, PEER_ID), t0);
    assert_eq!(n.peer_asn, 65002);
    assert!(!n.receive.four_octet_as);
    assert!(!n.send.four_octet_as);
}

#[test]
fn two_octet_peer_refused_when_not_allowed() {
    let t0 = Instant::now();
    let mut c = config();
    c.allow_two_octet_peer = false;
    let mut f = to_open_sent(c, t0);
    let actions = f.handle(open_event(two_octet_open(65002, 90, PEER_ID)), t0);
    let [a, b, c_, d] = LOCAL_ASN.to_be_bytes();
    assert_eq!(
        actions,
        vec![
            send_notification(notif(
                code::OPEN_MESSAGE,
                open_subcode::UNSUPPORTED_CAPABILITY,
                &[65, 4, a, b, c_, d]
            )),
            Action::Disconnect
        ]
    );
    assert_eq!(f.state(), State::Idle);
}

#[test]
fn four_octet_peer_with_as_trans() {
    let t0 = Instant::now();
    let peer_asn = 4_200_000_002;
    let c = PeerConfig::new(LOCAL_ASN, LOCAL_ID, PeerAsn::Exact(peer_asn));
    let peer = Open::new(peer_asn, 90, PEER_ID, vec![]);
    assert_eq!(peer.my_as, AS_TRANS);
    let (_, n) = to_established(c, peer, t0);
    assert_eq!(n.peer_asn, peer_asn);
    assert!(n.receive.four_octet_as && n.send.four_octet_as);
}

#[test]
fn dynamic_neighbour_accepts_any_as_and_detects_ibgp() {
    let t0 = Instant::now();
    let c = PeerConfig::new(LOCAL_ASN, LOCAL_ID, PeerAsn::Any);
    let (_, n) = to_established(c, Open::new(LOCAL_ASN, 90, PEER_ID, vec![]), t0);
    assert!(n.internal);
    assert_eq!(n.peer_asn, LOCAL_ASN);
}

/// Sends `open` in OpenSent and checks the NOTIFICATION and teardown.
fn assert_open_refused(c: PeerConfig, open: Open, expected: Notification) {
    let t0 = Instant::now();
    let mut f = to_open_sent(c, t0);
    assert_eq!(
        f.handle(open_event(open), t0),
        vec![send_notification(expected.clone()), Action::Disconnect]
    );
    assert_eq!(f.state(), State::Idle);
    assert_eq!(f.connect_retry_counter(), 1);
    assert_eq!(
        f.last_down_reason(),
        Some(&DownReason::NotificationSent(expected))
    );
}

#[test]
fn open_bad_peer_as() {
    assert_open_refused(
        config(),
        Open::new(65099, 90, PEER_ID, vec![]),
        notif(code::OPEN_MESSAGE, open_subcode::BAD_PEER_AS, &[0xfe, 0x4b]),
    );
    // 4-octet AS mismatch: data is the My AS field, AS_TRANS.
    assert_open_refused(
        config(),
        Open::new(4_200_000_009, 90, PEER_ID, vec![]),
        notif(code::OPEN_MESSAGE, open_subcode::BAD_PEER_AS, &[0x5b, 0xa0]),
    );
    // AS_TRANS without the capability is not a real AS.
    let mut c = config();
    c.peer_asn = PeerAsn::Any;
    assert_open_refused(
        c,
        two_octet_open(AS_TRANS, 90, PEER_ID),
        notif(code::OPEN_MESSAGE, open_subcode::BAD_PEER_AS, &[0x5b, 0xa0]),
    );
}

#[test]
fn open_bad_bgp_identifier() {
    let bad_id = notif(code::OPEN_MESSAGE, open_subcode::BAD_BGP_IDENTIFIER, &[]);
    assert_open_refused(
        config(),
        Open::new(PEER_ASN, 90, Ipv4Addr::UNSPECIFIED, vec![]),
        bad_id.clone(),
    );
    // Equal to ours on iBGP (RFC 6286 §2.2).
    let ibgp = PeerConfig::new(LOCAL_ASN, LOCAL_ID, PeerAsn::Exact(LOCAL_ASN));
    assert_open_refused(ibgp, Open::new(LOCAL_ASN, 90, LOCAL_ID, vec![]), bad_id);
    // Equal to ours on eBGP is allowed.
    let t0 = Instant::now();
    let (_, n) = to_established(config(), Open::new(PEER_ASN, 90, LOCAL_ID, vec![]), t0);
    assert_eq!(n.peer_id, LOCAL_ID);
}

#[test]
fn open_unacceptable_hold_time() {
    for hold in [1, 2] {
        assert_open_refused(
            config(),
            peer_open(hold),
            notif(
                code::OPEN_MESSAGE,
                open_subcode::UNACCEPTABLE_HOLD_TIME,
                &[],
            ),
        );
    }
}

#[test]
fn open_unsupported_version() {
    // As the codec reports it.
    let mut v3 = peer_open(90);
    v3.version = 3;
    let bytes = Message::Open(v3.clone())
        .to_bytes(&SessionParams::default())
        .unwrap();
    let err = bgp::wire::decode(&bytes, &SessionParams::default()).unwrap_err();
    assert_eq!(err.disposition, Disposition::SessionReset);
    let expected = notif(
        code::OPEN_MESSAGE,
        open_subcode::UNSUPPORTED_VERSION,
        &[0, 4],
    );
    let t0 = Instant::now();
    let mut f = to_open_sent(config(), t0);
    assert_eq!(
        f.handle(Event::DecodeError(err), t0),
        vec![send_notification(expected.clone()), Action::Disconnect]
    );
    assert_eq!(f.state(), State::Idle);
    // And as a hand-built OPEN.
    assert_open_refused(config(), v3, expected);
}

#[test]
fn peer_refuses_our_version() {
    let t0 = Instant::now();
    let mut f = to_open_sent(config(), t0);
    let n = notif(
        code::OPEN_MESSAGE,
        open_subcode::UNSUPPORTED_VERSION,
        &[0, 4],
    );
    // Never answer a NOTIFICATION with one.
    assert_eq!(
        f.handle(msg(Message::Notification(n)), t0),
        vec![Action::Disconnect]
    );
    assert_eq!(f.state(), State::Idle);
    // NotifMsgVerErr does not count as a retry.
    assert_eq!(f.connect_retry_counter(), 0);
}

fn hold_expired() -> Action {
    send_notification(notif(code::HOLD_TIMER_EXPIRED, 0, &[]))
}

#[test]
fn hold_timer_expires_in_open_sent() {
    let t0 = Instant::now();
    let mut f = to_open_sent(config(), t0);
    assert_eq!(OPEN_SENT_HOLD_TIME, secs(240));
    assert_eq!(f.next_timeout(), Some(t0 + secs(240)));
    assert_eq!(f.handle_timeout(t0 + secs(239)), vec![]);
    assert_eq!(
        f.handle_timeout(t0 + secs(240)),
        vec![hold_expired(), Action::Disconnect]
    );
    assert_eq!(f.state(), State::Idle);
    assert_eq!(f.last_down_reason(), Some(&DownReason::HoldTimerExpired));
}

#[test]
fn keepalives_then_hold_expiry_in_open_confirm() {
    let t0 = Instant::now();
    let mut f = to_open_confirm(config(), peer_open(30), t0);
    for k in [10, 20] {
        assert_eq!(f.next_timeout(), Some(t0 + secs(k)));
        assert_eq!(
            f.handle_timeout(t0 + secs(k)),
            vec![Action::Send(Message::Keepalive)]
        );
        assert_eq!(f.state(), State::OpenConfirm);
    }
    // Keepalive and hold are both due at 30: the hold timer wins.
    assert_eq!(f.next_timeout(), Some(t0 + secs(30)));
    assert_eq!(
        f.handle_timeout(t0 + secs(30)),
        vec![hold_expired(), Action::Disconnect]
    );
    assert_eq!(f.state(), State::Idle);
}

#[test]
fn keepalives_and_hold_in_established() {
    let t0 = Instant::now();
    let (mut f, n) = to_established(config(), peer_open(90), t0);
    assert_eq!(n.keepalive_interval, Some(secs(30)));
    // Keepalives every 30 s while the peer keeps talking.
    for k in 1..=5u64 {
        let due = t0 + secs(30 * k);
        assert_eq!(f.next_timeout(), Some(due));
        assert_eq!(
            f.handle_timeout(due),
            vec![Action::Send(Message::Keepalive)]
        );
        assert_eq!(f.handle(msg(Message::Keepalive), due), vec![]);
    }
    // Sending an UPDATE restarts the keepalive timer.
    let t = t0 + secs(160);
    assert_eq!(f.handle(Event::UpdateSent, t), vec![]);
    assert_eq!(f.next_timeout(), Some(t + secs(30)));
    // An UPDATE restarts the hold timer too.
    assert_eq!(
        f.handle(msg(Message::Update(Update::default())), t),
        vec![Action::Update(Update::default())]
    );
    // Silence from the peer: keepalives until the hold timer fires.
    let now = loop {
        let now = f.next_timeout().unwrap();
        let actions = f.handle_timeout(now);
        if actions != vec![Action::Send(Message::Keepalive)] {
            assert_eq!(
                actions,
                vec![
                    hold_expired(),
                    Action::SessionDown {
                        reason: DownReason::HoldTimerExpired
                    },
                    Action::Disconnect
                ]
            );
            break now;
        }
    };
    assert_eq!(now, t + secs(90));
    assert_eq!(f.state(), State::Idle);
    assert_eq!(f.negotiated(), None);
}

#[test]
fn zero_hold_time_means_no_timers() {
    let t0 = Instant::now();
    let (f, n) = to_established(config(), peer_open(0), t0);
    assert_eq!(n.hold_time, 0);
    assert_eq!(n.keepalive_interval, None);
    assert_eq!(f.next_timeout(), None);
}

#[test]
fn unexpected_messages_are_fsm_errors() {
    let t0 = Instant::now();
    // UPDATE in OpenConfirm (RFC 6608 subcode 2, data: the message type).
    let mut f = to_open_confirm(config(), peer_open(90), t0);
    assert_eq!(
        f.handle(msg(Message::Update(Update::default())), t0),
        vec![
            send_notification(notif(
                code::FSM,
                fsm_subcode::UNEXPECTED_IN_OPEN_CONFIRM,
                &[2]
            )),
            Action::Disconnect
        ]
    );
    assert_eq!(f.state(), State::Idle);
    // KEEPALIVE in OpenSent.
    let mut f = to_open_sent(config(), t0);
    assert_eq!(
        f.handle(msg(Message::Keepalive), t0),
        vec![
            send_notification(notif(code::FSM, fsm_subcode::UNEXPECTED_IN_OPEN_SENT, &[4])),
            Action::Disconnect
        ]
    );
    // OPEN in Established.
    let (mut f, _) = to_established(config(), peer_open(90), t0);
    let n = notif(code::FSM, fsm_subcode::UNEXPECTED_IN_ESTABLISHED, &[1]);
    assert_eq!(
        f.handle(open_event(peer_open(90)), t0),
        vec![
            send_notification(n.clone()),
            Action::SessionDown {
                reason: DownReason::NotificationSent(n)
            },
            Action::Disconnect
        ]
    );
    // ROUTE-REFRESH in OpenSent.
    let mut f = to_open_sent(config(), t0);
    let rr = RouteRefresh::new(Family::IPV4_UNICAST, RouteRefreshSubtype::Request);
    assert_eq!(
        f.handle(msg(Message::RouteRefresh(rr)), t0),
        vec![
            send_notification(notif(code::FSM, fsm_subcode::UNEXPECTED_IN_OPEN_SENT, &[5])),
            Action::Disconnect
        ]
    );
    // A KEEPALIVE in Connect (no connection should exist): just drop.
    let mut f = fsm(config());
    f.handle(Event::ManualStart, t0);
    assert_eq!(
        f.handle(msg(Message::Keepalive), t0),
        vec![Action::Disconnect]
    );
    assert_eq!(f.state(), State::Idle);
    assert_eq!(f.connect_retry_counter(), 1);
}

#[test]
fn route_refresh_in_established_is_delivered() {
    let t0 = Instant::now();
    let (mut f, _) = to_established(config(), peer_open(90), t0);
    let rr = RouteRefresh::new(Family::IPV4_UNICAST, RouteRefreshSubtype::Request);
    assert_eq!(
        f.handle(msg(Message::RouteRefresh(rr.clone())), t0),
        vec![Action::RouteRefresh(rr)]
    );
    assert_eq!(f.state(), State::Established);
}

#[test]
fn manual_stop_in_each_state() {
    let t0 = Instant::now();
    let cease = send_notification(notif(
        code::CEASE,
        cease_subcode::ADMINISTRATIVE_SHUTDOWN,
        &[],
    ));

    let mut f = fsm(config());
    assert_eq!(f.handle(manual_stop(), t0), vec![]);
    assert_eq!(f.state(), State::Idle);

    let mut f = fsm(config());
    f.handle(Event::ManualStart, t0);
    assert_eq!(f.handle(manual_stop(), t0), vec![Action::Disconnect]);
    assert_eq!(f.state(), State::Idle);

    let mut f = fsm(config());
    f.handle(Event::ManualStartPassive, t0);
    assert_eq!(f.state(), State::Active);
    assert_eq!(f.handle(manual_stop(), t0), vec![Action::Disconnect]);
    assert_eq!(f.state(), State::Idle);

    let mut f = to_open_sent(config(), t0);
    assert_eq!(
        f.handle(manual_stop(), t0),
        vec![cease.clone(), Action::Disconnect]
    );
    assert_eq!(f.state(), State::Idle);

    let mut f = to_open_confirm(config(), peer_open(90), t0);
    assert_eq!(
        f.handle(manual_stop(), t0),
        vec![cease.clone(), Action::Disconnect]
    );
    assert_eq!(f.state(), State::Idle);

    let (mut f, _) = to_established(config(), peer_open(90), t0);
    let stop = Event::ManualStop {
        shutdown_message: Some("maintenance".into()),
    };
    let shutdown = Notification::shutdown(cease_subcode::ADMINISTRATIVE_SHUTDOWN, "maintenance");
    assert_eq!(shutdown.shutdown_message(), Some("maintenance"));
    assert_eq!(
        f.handle(stop, t0),
        vec![
            send_notification(shutdown),
            Action::SessionDown {
                reason: DownReason::ManualStop
            },
            Action::Disconnect
        ]
    );
    assert_eq!(f.state(), State::Idle);
    assert_eq!(f.connect_retry_counter(), 0);
    // A stop does not restart by itself.
    assert_eq!(f.next_timeout(), None);
}

#[test]
fn automatic_stop_sends_its_cease() {
    let t0 = Instant::now();
    let (mut f, _) = to_established(config(), peer_open(90), t0);
    let actions = f.handle(
        Event::AutomaticStop {
            cease_subcode: cease_subcode::MAX_PREFIXES_REACHED,
            // RFC 4486 §4: AFI 1, SAFI 1, limit 100.
            data: Bytes::from_static(&[0, 1, 1, 0, 0, 0, 100]),
        },
        t0,
    );
    assert_eq!(
        actions[0],
        send_notification(notif(
            code::CEASE,
            cease_subcode::MAX_PREFIXES_REACHED,
            &[0, 1, 1, 0, 0, 0, 100]
        ))
    );
    assert_eq!(actions.last(), Some(&Action::Disconnect));
    assert_eq!(f.state(), State::Idle);
    assert_eq!(f.next_timeout(), None);
}

#[test]
fn tcp_failure_in_connect_restarts_after_connect_retry() {
    let t0 = Instant::now();
    let mut f = fsm(config());
    f.handle(Event::ManualStart, t0);
    assert_eq!(
        f.handle(Event::TcpConnectionFails, t0),
        vec![Action::Disconnect]
    );
    assert_eq!(f.state(), State::Idle);
    assert_eq!(f.last_down_reason(), Some(&DownReason::ConnectionFailed));
    // Automatic restart after the idle hold (ConnectRetry) time.
    assert_eq!(f.next_timeout(), Some(t0 + secs(120)));
    assert_eq!(f.handle_timeout(t0 + secs(120)), vec![Action::Connect]);
    assert_eq!(f.state(), State::Connect);

    // Without automatic restart, it stays Idle.
    let mut c = config();
    c.automatic_restart = false;
    let mut f = fsm(c);
    f.handle(Event::ManualStart, t0);
    f.handle(Event::TcpConnectionFails, t0);
    assert_eq!(f.next_timeout(), None);
}

#[test]
fn peer_connection_during_the_idle_hold_is_taken_not_refused() {
    let t0 = Instant::now();
    let mut f = fsm(config());
    f.handle(Event::ManualStart, t0);
    f.handle(Event::TcpConnectionFails, t0);
    assert_eq!(f.state(), State::Idle);
    assert!(f.accepts_peer_connection_in_idle());
    // The peer comes up and connects before our idle hold ends.
    let actions = f.handle(Event::TcpConnectionConfirmed, t0 + secs(3));
    assert!(
        matches!(actions.as_slice(), [Action::Send(Message::Open(_)), ..]),
        "{actions:?}"
    );
    assert_eq!(f.state(), State::OpenSent);
    assert!(!f.accepts_peer_connection_in_idle());
    // The idle hold is gone: only the OpenSent hold timer runs.
    assert_eq!(f.next_timeout(), Some(t0 + secs(3) + OPEN_SENT_HOLD_TIME));

    // Stopped by hand: a connection is still refused.
    let mut f = fsm(config());
    f.handle(Event::ManualStart, t0);
    f.handle(manual_stop(), t0);
    assert!(!f.accepts_peer_connection_in_idle());
    assert_eq!(
        f.handle(Event::TcpConnectionConfirmed, t0),
        vec![Action::Disconnect]
    );
    assert_eq!(f.state(), State::Idle);
}

#[test]
fn connect_retry_expiry_in_connect_retries() {
    let t0 = Instant::now();
    let mut f = fsm(config());
    f.handle(Event::ManualStart, t0);
    assert_eq!(
        f.handle_timeout(t0 + secs(120)),
        vec![Action::Disconnect, Action::Connect]
    );
    assert_eq!(f.state(), State::Connect);
    assert_eq!(f.next_timeout(), Some(t0 + secs(240)));
}

#[test]
fn tcp_failure_in_active_counts_a_retry() {
    let t0 = Instant::now();
    let mut f = fsm(config());
    f.handle(Event::ManualStartPassive, t0);
    assert_eq!(
        f.handle(Event::TcpConnectionFails, t0),
        vec![Action::Disconnect]
    );
    assert_eq!(f.state(), State::Idle);
    assert_eq!(f.connect_retry_counter(), 1);
}

#[test]
fn tcp_failure_in_open_sent_goes_active_then_connects() {
    let t0 = Instant::now();
    let mut f = to_open_sent(config(), t0);
    let t1 = t0 + secs(5);
    assert_eq!(
        f.handle(Event::TcpConnectionFails, t1),
        vec![Action::Disconnect]
    );
    assert_eq!(f.state(), State::Active);
    assert_eq!(f.next_timeout(), Some(t1 + secs(120)));
    assert_eq!(f.handle_timeout(t1 + secs(120)), vec![Action::Connect]);
    assert_eq!(f.state(), State::Connect);
}

#[test]
fn tcp_failure_in_open_confirm_and_established() {
    let t0 = Instant::now();
    let mut f = to_open_confirm(config(), peer_open(90), t0);
    assert_eq!(
        f.handle(Event::TcpConnectionFails, t0),
        vec![Action::Disconnect]
    );
    assert_eq!(f.state(), State::Idle);
    let (mut f, _) = to_established(config(), peer_open(90), t0);
    assert_eq!(
        f.handle(Event::TcpConnectionFails, t0),
        vec![
            Action::SessionDown {
                reason: DownReason::ConnectionFailed
            },
            Action::Disconnect
        ]
    );
}

#[test]
fn delay_open_sends_open_after_timer() {
    let t0 = Instant::now();
    let mut c = config();
    c.delay_open = Some(secs(5));
    let mut f = fsm(c);
    f.handle(Event::ManualStart, t0);
    let t1 = t0 + secs(1);
    assert_eq!(f.handle(Event::TcpConnectionAcked, t1), vec![]);
    assert_eq!(f.state(), State::Connect);
    assert_eq!(f.next_timeout(), Some(t1 + secs(5)));
    assert_eq!(f.handle_timeout(t1 + secs(4)), vec![]);
    let ours = f.local_open().clone();
    assert_eq!(
        f.handle_timeout(t1 + secs(5)),
        vec![Action::Send(Message::Open(ours))]
    );
    assert_eq!(f.state(), State::OpenSent);
    assert_eq!(f.next_timeout(), Some(t1 + secs(5) + OPEN_SENT_HOLD_TIME));
}

#[test]
fn delay_open_answers_peer_open_at_once() {
    let t0 = Instant::now();
    let mut c = config();
    c.delay_open = Some(secs(5));
    c.passive = true;
    let mut f = fsm(c);
    f.handle(Event::ManualStart, t0);
    assert_eq!(f.handle(Event::TcpConnectionConfirmed, t0), vec![]);
    assert_eq!(f.state(), State::Active);
    let ours = f.local_open().clone();
    assert_eq!(
        f.handle(open_event(peer_open(90)), t0 + secs(1)),
        vec![
            Action::Send(Message::Open(ours)),
            Action::Send(Message::Keepalive)
        ]
    );
    assert_eq!(f.state(), State::OpenConfirm);
    established(&f.handle(msg(Message::Keepalive), t0 + secs(1)));
}

#[test]
fn delay_open_refuses_bad_open_with_notification() {
    let t0 = Instant::now();
    let mut c = config();
    c.delay_open = Some(secs(5));
    let mut f = fsm(c);
    f.handle(Event::ManualStart, t0);
    f.handle(Event::TcpConnectionAcked, t0);
    assert_eq!(
        f.handle(open_event(peer_open(1)), t0),
        vec![
            send_notification(notif(
                code::OPEN_MESSAGE,
                open_subcode::UNACCEPTABLE_HOLD_TIME,
                &[]
            )),
            Action::Disconnect
        ]
    );
    assert_eq!(f.state(), State::Idle);
}

#[test]
fn collision_resolution_both_ways() {
    assert_eq!(
        resolve_collision(LOCAL_ID, LOCAL_ASN, PEER_ID, PEER_ASN),
        Survivor::Incoming
    );
    assert_eq!(
        resolve_collision(PEER_ID, PEER_ASN, LOCAL_ID, LOCAL_ASN),
        Survivor::Outgoing
    );
}

#[test]
fn collision_between_two_fsms() {
    // Our outgoing connection reached OpenConfirm; then the peer's
    // connection delivers an OPEN too. Our id is lower: dump the outgoing.
    let t0 = Instant::now();
    let mut outgoing = to_open_confirm(config(), peer_open(90), t0);
    let mut incoming_config = config();
    incoming_config.passive = true;
    let mut incoming = fsm(incoming_config);
    incoming.handle(Event::ManualStart, t0);
    incoming.handle(Event::TcpConnectionConfirmed, t0);
    incoming.handle(open_event(peer_open(90)), t0);
    assert_eq!(incoming.state(), State::OpenConfirm);

    let survivor = resolve_collision(
        LOCAL_ID,
        LOCAL_ASN,
        incoming.peer_id().unwrap(),
        incoming.peer_asn().unwrap(),
    );
    assert_eq!(survivor, Survivor::Incoming);
    assert_eq!(
        outgoing.handle(Event::OpenCollisionDump, t0),
        vec![
            send_notification(notif(
                code::CEASE,
                cease_subcode::CONNECTION_COLLISION_RESOLUTION,
                &[]
            )),
            Action::Disconnect
        ]
    );
    assert_eq!(outgoing.state(), State::Idle);
    assert_eq!(
        outgoing.last_down_reason(),
        Some(&DownReason::CollisionResolution)
    );
    established(&incoming.handle(msg(Message::Keepalive), t0));
}

#[test]
fn session_reset_decode_error_tears_down() {
    let t0 = Instant::now();
    let (mut f, _) = to_established(config(), peer_open(90), t0);
    let err = DecodeError::reset(ErrorKind::MalformedAsPath("segment overrun"), Bytes::new());
    let n = Notification::from_error(&err);
    assert_eq!((n.code, n.subcode), (3, 11));
    assert_eq!(
        f.handle(Event::DecodeError(err), t0),
        vec![
            send_notification(n.clone()),
            Action::SessionDown {
                reason: DownReason::NotificationSent(n)
            },
            Action::Disconnect
        ]
    );
    assert_eq!(f.state(), State::Idle);

    // A header error in OpenSent.
    let mut f = to_open_sent(config(), t0);
    let err = DecodeError::reset(ErrorKind::BadMarker, Bytes::new());
    assert_eq!(
        f.handle(Event::DecodeError(err), t0),
        vec![send_notification(notif(1, 1, &[])), Action::Disconnect]
    );
    assert_eq!(f.state(), State::Idle);
}

#[test]
fn treat_as_withdraw_update_keeps_session() {
    let t0 = Instant::now();
    let (mut f, _) = to_established(config(), peer_open(90), t0);
    let fault = DecodeError::new(
        ErrorKind::InvalidOrigin(7),
        Bytes::from_static(&[0x40, 1, 1, 7]),
        Disposition::TreatAsWithdraw,
    );
    let update = Update {
        faults: vec![fault.clone()],
        ..Update::default()
    };
    assert!(update.treat_as_withdraw());
    assert_eq!(
        f.handle(msg(Message::Update(update.clone())), t0),
        vec![Action::Update(update)]
    );
    assert_eq!(f.state(), State::Established);
    assert_eq!(f.update_faults(), 1);
    assert_eq!(f.last_update_fault(), Some(&fault));
}

#[test]
fn idle_refuses_connections() {
    let t0 = Instant::now();
    let mut f = fsm(config());
    assert_eq!(
        f.handle(Event::TcpConnectionConfirmed, t0),
        vec![Action::Disconnect]
    );
    assert_eq!(f.state(), State::Idle);
    assert_eq!(f.handle(msg(Message::Keepalive), t0), vec![]);
}

mod randomized {
    use super::*;
    use proptest::prelude::*;

    /// One driver step: an event, or firing the timers.
    #[derive(Clone, Debug)]
    enum Step {
        Event(Event),
        /// `handle_timeout` at the next deadline (if any), else at `now`.
        Timeout,
    }

    fn steps() -> Vec<Step> {
        let rr = RouteRefresh::new(Family::IPV4_UNICAST, RouteRefreshSubtype::Request);
        let twa = Update {
            faults: vec![DecodeError::new(
                ErrorKind::InvalidOrigin(7),
                Bytes::new(),
                Disposition::TreatAsWithdraw,
            )],
            ..Update::default()
        };
        let events = vec![
            Event::ManualStart,
            Event::ManualStartPassive,
            Event::AutomaticStart,
            Event::AutomaticStartPassive,
            manual_stop(),
            Event::ManualStop {
                shutdown_message: Some("bye".into()),
            },
            Event::AutomaticStop {
                cease_subcode: 1,
                data: Bytes::new(),
            },
            Event::TcpConnectionAcked,
            Event::TcpConnectionConfirmed,
            Event::TcpConnectionFails,
            open_event(peer_open(90)),
            open_event(peer_open(0)),
            open_event(peer_open(3)),
            open_event(two_octet_open(65002, 30, PEER_ID)),
            open_event(Open::new(65099, 90, PEER_ID, vec![])),
            open_event(peer_open(1)),
            msg(Message::Keepalive),
            msg(Message::Update(Update::default())),
            msg(Message::Update(twa.clone())),
            msg(Message::Notification(notif(6, 2, &[]))),
            msg(Message::Notification(notif(2, 1, &[0, 4]))),
            msg(Message::RouteRefresh(rr)),
            Event::DecodeError(DecodeError::reset(ErrorKind::BadMarker, Bytes::new())),
            Event::DecodeError(DecodeError::reset(
                ErrorKind::UnsupportedVersion(3),
                Bytes::from_static(&[0, 4]),
            )),
            Event::DecodeError(twa.faults[0].clone()),
            Event::OpenCollisionDump,
            Event::UpdateSent,
        ];
        let mut steps: Vec<Step> = events.into_iter().map(Step::Event).collect();
        // Timers often, so that timer paths get exercised.
        steps.extend(std::iter::repeat_n(Step::Timeout, 8));
        steps
    }

    /// Whether the peer ended the connection itself (no NOTIFICATION due).
    fn peer_closed(step: &Step) -> bool {
        matches!(
            step,
            Step::Event(Event::TcpConnectionFails | Event::Message(Message::Notification(_)))
        )
    }

    fn check_step(before: State, after: State, step: &Step, actions: &[Action], f: &Fsm) {
        let sent_notification = actions
            .iter()
            .any(|a| matches!(a, Action::Send(Message::Notification(_))));
        let in_session = matches!(
            before,
            State::OpenSent | State::OpenConfirm | State::Established
        );
        if in_session && after == State::Idle {
            assert!(
                actions.contains(&Action::Disconnect),
                "{before:?} -> Idle on {step:?} without Disconnect: {actions:?}"
            );
            assert!(
                sent_notification || peer_closed(step),
                "{before:?} -> Idle on {step:?} without NOTIFICATION: {actions:?}"
            );
        }
        // Connections are only dropped to Idle with a Disconnect.
        if before != State::Idle && after == State::Idle {
            assert!(actions.contains(&Action::Disconnect), "{step:?}");
        }
        // A NOTIFICATION is always followed by the connection's end.
        if sent_notification {
            assert_eq!(after, State::Idle, "{step:?}: {actions:?}");
            assert_eq!(actions.last(), Some(&Action::Disconnect));
        }
        for a in actions {
            match a {
                Action::Update(_) | Action::RouteRefresh(_) => {
                    assert_eq!((before, after), (State::Established, State::Established))
                }
                Action::Established(_) => {
                    assert_eq!((before, after), (State::OpenConfirm, State::Established))
                }
                Action::SessionDown { .. } => {
                    assert_eq!(before, State::Established);
                    assert_ne!(after, State::Established);
                }
                Action::Send(Message::Open(_)) => {
                    // Idle too: the peer's connection taken while an
                    // automatic restart waits (its own test above).
                    assert!(matches!(
                        before,
                        State::Idle | State::Connect | State::Active
                    ));
                    assert!(matches!(after, State::OpenSent | State::OpenConfirm));
                }
                _ => {}
            }
        }
        if before == State::Established && after != State::Established {
            assert!(actions
                .iter()
                .any(|a| matches!(a, Action::SessionDown { .. })));
        }
        assert_eq!(f.negotiated().is_some(), after == State::Established);
        assert_eq!(
            f.peer_open().is_some(),
            matches!(after, State::OpenConfirm | State::Established)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

        #[test]
        fn random_event_sequences(
            passive in any::<bool>(),
            automatic_restart in any::<bool>(),
            delay_open in proptest::option::of(1u64..10),
            hold_time in prop_oneof![Just(0u16), Just(3u16), Just(90u16)],
            script in proptest::collection::vec((0usize..64, 0u64..200_000), 1..80),
            start_established in any::<bool>(),
        ) {
            let mut c = config();
            c.passive = passive;
            c.automatic_restart = automatic_restart;
            c.delay_open = delay_open.map(secs);
            c.hold_time = hold_time;
            let mut f = fsm(c);
            let all = steps();
            let mut now = Instant::now();
            // Half the runs start from Established, to explore from there.
            let mut prefix = vec![
                Step::Event(Event::ManualStart),
                Step::Event(Event::TcpConnectionConfirmed),
            ];
            if delay_open.is_some() {
                prefix.push(Step::Timeout);
            }
            prefix.push(Step::Event(open_event(peer_open(90))));
            prefix.push(Step::Event(msg(Message::Keepalive)));
            if !start_established {
                prefix.clear();
            }
            let script = prefix
                .iter()
                .map(|s| (s.clone(), 0))
                .chain(script.into_iter().map(|(pick, dt)| (all[pick % all.len()].clone(), dt)));
            let mut reached_established = false;
            for (step, dt_ms) in script {
                let step = &step;
                now += Duration::from_millis(dt_ms);
                let before = f.state();
                let actions = match step {
                    Step::Event(e) => f.handle(e.clone(), now),
                    Step::Timeout => {
                        if let Some(t) = f.next_timeout() {
                            now = now.max(t);
                        }
                        f.handle_timeout(now)
                    }
                };
                check_step(before, f.state(), step, &actions, &f);
                reached_established |= f.state() == State::Established;
                if matches!(step, Step::Timeout) {
                    // Everything due has fired.
                    prop_assert!(f.next_timeout().is_none_or(|t| t > now));
                }
            }
            if start_established {
                prop_assert!(reached_established);
            }
        }
    }
}

/// RFC 4271 §10 jitter (each wait × 0.75..=1.0) and exponential backoff
/// of ConnectRetry, capped; Established starts the backoff over, and so
/// does a start event. Driven by a fake clock.
#[test]
fn connect_retry_backs_off_with_jitter() {
    let mut c = config();
    c.connect_retry = secs(5);
    c.connect_retry_max = secs(40);
    c.jitter = true;
    c.jitter_seed = Some(7);
    let mut f = fsm(c);
    let mut now = Instant::now();
    assert_eq!(f.handle(Event::ManualStart, now), vec![Action::Connect]);
    let mut waits = Vec::new();
    for _ in 0..12 {
        let deadline = f.next_timeout().unwrap();
        waits.push(deadline - now);
        now = deadline;
        // The attempt times out: the FSM drops it and tries again.
        assert_eq!(
            f.handle_timeout(now),
            vec![Action::Disconnect, Action::Connect]
        );
        assert_eq!(f.state(), State::Connect);
    }
    let bases = [5, 10, 20, 40, 40, 40, 40, 40, 40, 40, 40, 40];
    for (wait, base) in waits.iter().zip(bases) {
        let base = secs(base);
        assert!(
            *wait >= base.mul_f64(0.75) && *wait <= base,
            "wait {wait:?} outside [0.75, 1.0] × {base:?}: {waits:?}"
        );
    }
    // Jittered: the capped waits are not all the same.
    let capped: std::collections::BTreeSet<Duration> = waits[3..].iter().copied().collect();
    assert!(capped.len() > 4, "{waits:?}");

    // Established resets the backoff: after the session fails, the
    // automatic restart waits about the base time again.
    let open = f.local_open().clone();
    assert_eq!(
        f.handle(Event::TcpConnectionAcked, now),
        vec![Action::Send(Message::Open(open))]
    );
    f.handle(open_event(peer_open(90)), now);
    let actions = f.handle(msg(Message::Keepalive), now);
    established(&actions);
    let actions = f.handle(Event::TcpConnectionFails, now);
    assert!(actions.contains(&Action::Disconnect), "{actions:?}");
    assert_eq!(f.state(), State::Idle);
    let wait = f.next_timeout().unwrap() - now;
    assert!(wait >= secs(5).mul_f64(0.75) && wait <= secs(5), "{wait:?}");

    // Two seeds give different waits.
    let first_wait = |seed| {
        let mut c = config();
        c.jitter = true;
        c.jitter_seed = Some(seed);
        let mut f = fsm(c);
        let t = Instant::now();
        f.handle(Event::ManualStart, t);
        f.next_timeout().unwrap() - t
    };
    assert_ne!(first_wait(1), first_wait(2));
}

#[test]
fn connect_retry_cap_below_base_is_refused() {
    let mut c = config();
    c.connect_retry = secs(10);
    c.connect_retry_max = secs(5);
    assert!(Fsm::new(c).is_err());
}

/// The keepalive periods of an Established session with jitter on and a
/// fixed seed: each (re)start of the KeepaliveTimer, after a KEEPALIVE or
/// an UPDATE sent, draws a new factor in 0.75..=1.0 (RFC 4271 §10).
fn jittered_keepalive_waits(seed: u64) -> Vec<Duration> {
    let mut c = config();
    c.jitter = true;
    c.jitter_seed = Some(seed);
    let t0 = Instant::now();
    let (mut f, n) = to_established(c, peer_open(90), t0);
    assert_eq!(n.keepalive_interval, Some(secs(30)));
    let mut now = t0;
    let mut last_heard = t0;
    let mut waits = Vec::new();
    for i in 0..20 {
        let due = f.next_timeout().unwrap();
        waits.push(due - now);
        if i % 4 == 3 {
            // An UPDATE sent before the keepalive was due restarts it.
            now += (due - now) / 2;
            assert_eq!(f.handle(Event::UpdateSent, now), vec![]);
            continue;
        }
        now = due;
        assert_eq!(
            f.handle_timeout(now),
            vec![Action::Send(Message::Keepalive)]
        );
        assert_eq!(f.handle(msg(Message::Keepalive), now), vec![]);
        last_heard = now;
    }
    // The hold timer is not jittered: silence from the peer ends the
    // session exactly the hold time after its last message.
    let end = loop {
        let due = f.next_timeout().unwrap();
        let actions = f.handle_timeout(due);
        if actions != vec![Action::Send(Message::Keepalive)] {
            assert!(actions.contains(&hold_expired()), "{actions:?}");
            break due;
        }
    };
    assert_eq!(end, last_heard + secs(90));
    waits
}

#[test]
fn keepalive_timer_is_jittered() {
    let waits = jittered_keepalive_waits(11);
    for w in &waits {
        assert!(
            *w >= secs(30).mul_f64(0.75) && *w <= secs(30),
            "keepalive wait {w:?} outside [22.5 s, 30 s]: {waits:?}"
        );
    }
    // A new factor each time: the waits differ from each other.
    let distinct: std::collections::BTreeSet<Duration> = waits.iter().copied().collect();
    assert!(distinct.len() > waits.len() / 2, "{waits:?}");
    // Spread over the interval, not stuck at one end.
    assert!(waits.iter().any(|w| *w < secs(27)), "{waits:?}");
    assert!(waits.iter().any(|w| *w > secs(26)), "{waits:?}");
    // Deterministic under a fixed seed; another seed gives other waits.
    assert_eq!(jittered_keepalive_waits(11), waits);
    assert_ne!(jittered_keepalive_waits(12), waits);
}

#[test]
fn keepalive_timer_without_jitter_is_exact() {
    let t0 = Instant::now();
    let (f, _) = to_established(config(), peer_open(9), t0);
    assert_eq!(f.next_timeout(), Some(t0 + secs(3)));
}
