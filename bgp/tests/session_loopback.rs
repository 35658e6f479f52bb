//! `bgp::session` over real TCP on 127.0.0.1 (no root needed): two felix
//! sessions establish, exchange an UPDATE, keep the session up with
//! KEEPALIVEs and shut it down with Cease; a raw TCP peer sending
//! malformed bytes gets the codec's NOTIFICATION back before the close.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bgp::fsm::{DownReason, PeerAsn, PeerConfig, State};
use bgp::session::{
    EncodedMessages, Listener, Session, SessionConfig, SessionError, SessionEvent, SessionHandle,
};
use bgp::wire::{
    self, AsPath, AttributeValue, Community, Message, Nlri, Notification, Open, Origin,
    PathAttribute, SessionParams, Update,
};
use bytes::{Bytes, BytesMut};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

fn peer_config(local_asn: u32, id: [u8; 4], peer_asn: u32, passive: bool) -> PeerConfig {
    let mut c = PeerConfig::new(local_asn, Ipv4Addr::from(id), PeerAsn::Exact(peer_asn));
    c.hold_time = 3;
    c.connect_retry = Duration::from_secs(1);
    c.connect_retry_max = Duration::from_secs(1);
    c.passive = passive;
    c
}

/// A passive session for a peer on 127.0.0.1 and a listener that hands it
/// the peer's connections.
fn passive_side(config: PeerConfig, listener: &mut Listener) -> SessionHandle {
    let remote: SocketAddr = "127.0.0.1:179".parse().unwrap();
    let handle = Session::spawn(SessionConfig::new(config, remote)).unwrap();
    listener.add_peer(handle.incoming_sender());
    handle
}

async fn next_event(h: &mut SessionHandle) -> SessionEvent {
    timeout(WAIT, h.events.recv())
        .await
        .expect("timed out waiting for a session event")
        .expect("session ended")
}

fn sample_update() -> Update {
    Update {
        attributes: vec![
            PathAttribute::new(AttributeValue::Origin(Origin::Igp)),
            PathAttribute::new(AttributeValue::AsPath(AsPath::sequence([65001]))),
            PathAttribute::new(AttributeValue::NextHop(Ipv4Addr::new(127, 0, 0, 1))),
            PathAttribute::new(AttributeValue::Communities(vec![Community(
                (65001 << 16) | 42,
            )])),
        ],
        nlri: vec![Nlri::new("10.1.0.0/16".parse().unwrap())],
        ..Update::default()
    }
}

#[tokio::test]
async fn two_sessions_establish_exchange_keepalive_and_cease() {
    let mut listener = Listener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = listener.local_addr().port();
    let mut b = passive_side(peer_config(65002, [2, 2, 2, 2], 65001, true), &mut listener);
    listener.start().unwrap();

    let remote = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
    let mut a_config = SessionConfig::new(peer_config(65001, [1, 1, 1, 1], 65002, false), remote);
    a_config.local = Some("127.0.0.1:0".parse().unwrap());
    let mut a = Session::spawn(a_config).unwrap();

    let SessionEvent::Established(na) = next_event(&mut a).await else {
        panic!("expected Established");
    };
    let SessionEvent::Established(nb) = next_event(&mut b).await else {
        panic!("expected Established");
    };
    assert_eq!(na.peer_asn, 65002);
    assert_eq!(nb.peer_asn, 65001);
    assert_eq!(na.hold_time, 3);
    assert!(na.receive.four_octet_as);
    assert_eq!(a.state(), State::Established);

    a.send_update(sample_update()).await.unwrap();
    let SessionEvent::Update(got) = next_event(&mut b).await else {
        panic!("expected Update");
    };
    assert_eq!(got, sample_update());

    // Messages the caller encoded go out as they are under the connection's
    // send parameters, and are refused under others.
    let mut bytes = BytesMut::new();
    Message::Update(sample_update())
        .encode(&na.send, &mut bytes)
        .unwrap();
    let bytes = bytes.freeze();
    let other = SessionParams {
        four_octet_as: !na.send.four_octet_as,
        ..na.send
    };
    let refused = a
        .send_encoded(EncodedMessages {
            bytes: bytes.clone(),
            params: other,
            updates: true,
        })
        .await;
    assert!(matches!(refused, Err(SessionError::OtherParams)));
    a.send_encoded(EncodedMessages {
        bytes,
        params: na.send,
        updates: true,
    })
    .await
    .unwrap();
    let SessionEvent::Update(got) = next_event(&mut b).await else {
        panic!("expected the encoded Update");
    };
    assert_eq!(got, sample_update());

    // Hold time 3 s: without KEEPALIVEs (every second) both hold timers
    // would expire within this wait.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(a.state(), State::Established);
    assert_eq!(b.state(), State::Established);
    assert!(a.events.try_recv().is_err(), "no event expected on a");
    assert!(b.events.try_recv().is_err(), "no event expected on b");

    a.stop(Some("maintenance".into())).await;
    let SessionEvent::Down(DownReason::NotificationReceived(n)) = next_event(&mut b).await else {
        panic!("expected Down with the peer's NOTIFICATION");
    };
    assert_eq!((n.code, n.subcode), (6, 2));
    assert_eq!(n.shutdown_message(), Some("maintenance"));
    let SessionEvent::Down(DownReason::ManualStop) = next_event(&mut a).await else {
        panic!("expected Down(ManualStop) on the stopped side");
    };
    b.stop(None).await;
}

#[tokio::test]
async fn send_before_established_is_refused() {
    let remote: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let mut h = Session::spawn(SessionConfig::new(
        peer_config(65001, [1, 1, 1, 1], 65002, true),
        remote,
    ))
    .unwrap();
    let r = h.send_update(sample_update()).await;
    assert!(matches!(r, Err(bgp::session::SessionError::NotEstablished)));
    h.stop(None).await;
}

/// A passive felix session with a raw TCP peer: returns the session and the
/// raw peer's end of the connection.
async fn raw_peer() -> (SessionHandle, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let h = Session::spawn(SessionConfig::new(
        peer_config(65001, [1, 1, 1, 1], 65002, true),
        "127.0.0.1:179".parse().unwrap(),
    ))
    .unwrap();
    let raw = TcpStream::connect(addr).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    h.incoming(server).unwrap();
    (h, raw)
}

/// Reads until the session closes the connection.
async fn read_to_end(raw: &mut TcpStream) -> Bytes {
    let mut all = Vec::new();
    timeout(WAIT, raw.read_to_end(&mut all))
        .await
        .expect("connection not closed")
        .unwrap();
    Bytes::from(all)
}

fn messages(stream: Bytes) -> Vec<Message> {
    wire::split_stream(stream, SessionParams::default())
        .map(|m| wire::decode(&m.unwrap(), &SessionParams::default()).unwrap())
        .collect()
}

fn notification_bytes(code: u8, subcode: u8, data: &[u8]) -> Vec<u8> {
    let mut v = vec![0xff; 16];
    v.extend_from_slice(&((21 + data.len()) as u16).to_be_bytes());
    v.extend_from_slice(&[3, code, subcode]);
    v.extend_from_slice(data);
    v
}

/// Sends `bad` before any OPEN from us: felix answers its OPEN, then the
/// NOTIFICATION, then closes.
async fn malformed_before_open(bad: &[u8], expected: Vec<u8>) {
    let (mut h, mut raw) = raw_peer().await;
    raw.write_all(bad).await.unwrap();
    let got = read_to_end(&mut raw).await;
    assert!(
        got.ends_with(&expected),
        "expected {expected:02x?} at the end of {got:02x?}"
    );
    let msgs = messages(got);
    assert!(matches!(msgs.first(), Some(Message::Open(_))), "{msgs:?}");
    h.wait_state(|s| s == State::Idle).await.unwrap();
    h.stop(None).await;
}

#[tokio::test]
async fn bad_marker_gets_header_error_1_1() {
    let mut bad = vec![0xff; 16];
    bad[3] = 0;
    bad.extend_from_slice(&[0, 19, 4]);
    malformed_before_open(&bad, notification_bytes(1, 1, &[])).await;
}

#[tokio::test]
async fn bad_length_gets_header_error_1_2_with_the_length() {
    let mut bad = vec![0xff; 16];
    bad.extend_from_slice(&[0, 20, 4, 0]); // a 20-byte KEEPALIVE
    malformed_before_open(&bad, notification_bytes(1, 2, &[0, 20])).await;
}

#[tokio::test]
async fn bad_type_gets_header_error_1_3_with_the_type() {
    let mut bad = vec![0xff; 16];
    bad.extend_from_slice(&[0, 19, 9]);
    malformed_before_open(&bad, notification_bytes(1, 3, &[9])).await;
}

#[tokio::test]
async fn bad_open_version_gets_2_1() {
    let open = Message::Open(Open::new(65002, 3, Ipv4Addr::new(2, 2, 2, 2), vec![]));
    let mut bytes = BytesMut::new();
    open.encode(&SessionParams::default(), &mut bytes).unwrap();
    bytes[19] = 3; // version 3
    malformed_before_open(&bytes, notification_bytes(2, 1, &[0, 4])).await;
}

#[tokio::test]
async fn malformed_update_in_established_gets_the_codec_notification() {
    let (mut h, mut raw) = raw_peer().await;
    let params = SessionParams::default();
    let mut out = BytesMut::new();
    Message::Open(Open::new(65002, 3, Ipv4Addr::new(2, 2, 2, 2), vec![]))
        .encode(&params, &mut out)
        .unwrap();
    Message::Keepalive.encode(&params, &mut out).unwrap();
    raw.write_all(&out).await.unwrap();
    let SessionEvent::Established(_) = next_event(&mut h).await else {
        panic!("expected Established");
    };

    // An UPDATE whose Withdrawn Routes Length runs past the message.
    let mut bad = vec![0xff; 16];
    bad.extend_from_slice(&[0, 23, 2, 0, 9, 0, 0]);
    let expected = match wire::decode(
        &Bytes::from(bad.clone()),
        &SessionParams {
            four_octet_as: true,
            ..SessionParams::default()
        },
    ) {
        Err(e) => Notification::from_error(&e),
        Ok(m) => panic!("codec accepted {m:?}"),
    };
    assert_eq!(expected.code, 3);
    raw.write_all(&bad).await.unwrap();

    let SessionEvent::Down(DownReason::NotificationSent(n)) = next_event(&mut h).await else {
        panic!("expected Down(NotificationSent)");
    };
    assert_eq!(n, expected);
    let got = read_to_end(&mut raw).await;
    let msgs = messages(got);
    assert_eq!(
        msgs.last(),
        Some(&Message::Notification(expected)),
        "{msgs:?}"
    );
    h.stop(None).await;
}

#[tokio::test]
async fn peer_notification_is_reported_and_not_answered() {
    let (mut h, mut raw) = raw_peer().await;
    let params = SessionParams::default();
    let mut out = BytesMut::new();
    Message::Open(Open::new(65002, 3, Ipv4Addr::new(2, 2, 2, 2), vec![]))
        .encode(&params, &mut out)
        .unwrap();
    Message::Keepalive.encode(&params, &mut out).unwrap();
    raw.write_all(&out).await.unwrap();
    let SessionEvent::Established(_) = next_event(&mut h).await else {
        panic!("expected Established");
    };
    let n = Notification::new(6, 4, Bytes::new());
    raw.write_all(&Message::Notification(n.clone()).to_bytes(&params).unwrap())
        .await
        .unwrap();
    let SessionEvent::Down(DownReason::NotificationReceived(got)) = next_event(&mut h).await else {
        panic!("expected Down(NotificationReceived)");
    };
    assert_eq!(got, n);
    let rest = messages(read_to_end(&mut raw).await);
    assert!(
        !rest.iter().any(|m| matches!(m, Message::Notification(_))),
        "{rest:?}"
    );
    h.stop(None).await;
}
