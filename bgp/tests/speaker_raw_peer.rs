//! `bgp::speaker` against a hand-driven peer on the loopback interface (no
//! root): the test speaks BGP itself over a TCP socket, so it can do what a
//! well-behaved speaker does not do on demand — drop the connection without
//! a NOTIFICATION (graceful restart), ask for a route refresh, exceed a
//! prefix limit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bgp::speaker::{
    BestPathChange, NeighborConfig, PeerStatus, Speaker, SpeakerConfig, ENHANCED_REFRESH_TIME,
};
use bgp::wire::{
    self, AsPath, AttributeValue, Capability, Family, GracefulRestart, GracefulRestartFamily,
    Message, MpReach, NextHop, Nlri, Open, Origin, PathAttribute, RouteRefresh,
    RouteRefreshSubtype, SessionParams, Update,
};
use bytes::BytesMut;
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{timeout, Instant};

const WAIT: Duration = Duration::from_secs(20);
const PEER_AS: u32 = 65002;

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A BGP peer driven by the test.
struct RawPeer {
    stream: TcpStream,
    buf: BytesMut,
    params: SessionParams,
}

impl RawPeer {
    /// Connects from `local` and exchanges OPEN/KEEPALIVE (hold time 0: no
    /// keepalives needed). `None` if the speaker refused the connection
    /// (e.g. its session is idle before an automatic restart).
    async fn establish(local: IpAddr, to: SocketAddr, caps: Vec<Capability>) -> Option<RawPeer> {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(local, 0)).unwrap();
        let stream = socket.connect(to).await.ok()?;
        let mut peer = RawPeer {
            stream,
            buf: BytesMut::new(),
            params: SessionParams::default(),
        };
        let open = Open::new(PEER_AS, 0, Ipv4Addr::new(10, 0, 0, 99), caps);
        peer.send(Message::Open(open)).await;
        let Some(Message::Open(_)) = peer.try_recv().await else {
            return None;
        };
        let Some(Message::Keepalive) = peer.try_recv().await else {
            return None;
        };
        peer.send(Message::Keepalive).await;
        peer.params.four_octet_as = true;
        Some(peer)
    }

    async fn send(&mut self, m: Message) {
        let bytes = m.to_bytes(&self.params).unwrap();
        self.stream.write_all(&bytes).await.unwrap();
    }

    /// The next message; `None` on EOF or timeout.
    async fn try_recv(&mut self) -> Option<Message> {
        timeout(WAIT, async {
            loop {
                if let Some(n) = wire::frame_len(&self.buf, &self.params).unwrap() {
                    let frame = self.buf.split_to(n).freeze();
                    return Some(wire::decode(&frame, &self.params).unwrap());
                }
                if self.stream.read_buf(&mut self.buf).await.ok()? == 0 {
                    return None;
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    async fn recv(&mut self) -> Message {
        self.try_recv().await.expect("connection closed")
    }

    /// Reads until an UPDATE announcing `prefix`, returns it.
    async fn recv_announce(&mut self, prefix: IpNet) -> Update {
        loop {
            if let Message::Update(u) = self.recv().await {
                if u.nlri.iter().any(|n| n.prefix == prefix) {
                    return u;
                }
            }
        }
    }
}

fn capabilities() -> Vec<Capability> {
    vec![
        Capability::Multiprotocol {
            family: Family::IPV4_UNICAST,
        },
        Capability::RouteRefresh,
        Capability::EnhancedRouteRefresh,
        Capability::GracefulRestart(GracefulRestart {
            restarting: false,
            notification: false,
            restart_time: 60,
            families: vec![GracefulRestartFamily {
                family: Family::IPV4_UNICAST,
                forwarding_preserved: true,
            }],
        }),
    ]
}

fn announce(prefixes: &[&str], next_hop: Ipv4Addr) -> Message {
    Message::Update(Update {
        attributes: vec![
            PathAttribute::new(AttributeValue::Origin(Origin::Igp)),
            PathAttribute::new(AttributeValue::AsPath(AsPath::sequence([PEER_AS]))),
            PathAttribute::new(AttributeValue::NextHop(next_hop)),
        ],
        nlri: prefixes
            .iter()
            .map(|p| Nlri::new(p.parse().unwrap()))
            .collect(),
        ..Update::default()
    })
}

async fn speaker(last: u8) -> Speaker {
    let mut config = SpeakerConfig::new(65001, Ipv4Addr::new(10, 0, 0, last));
    config.listen = Some(SocketAddr::new(ip(last), 0));
    Speaker::start(config).await.unwrap()
}

async fn wait_change(
    rx: &mut UnboundedReceiver<BestPathChange>,
    pred: impl Fn(&BestPathChange) -> bool,
) -> BestPathChange {
    timeout(WAIT, async {
        loop {
            let c = rx.recv().await.expect("subscription ended");
            if pred(&c) {
                return c;
            }
        }
    })
    .await
    .expect("timed out waiting for a best-path change")
}

async fn wait_peer(s: &Speaker, pred: impl Fn(&PeerStatus) -> bool) -> PeerStatus {
    let end = Instant::now() + WAIT;
    loop {
        let p = s.status().await.peers.remove(0);
        if pred(&p) {
            return p;
        }
        assert!(Instant::now() < end, "timed out: {p:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn end_of_rib_route_refresh_and_graceful_restart() {
    let s = speaker(51).await;
    let mut best = s.subscribe();
    let mut n = NeighborConfig::new(ip(52), PEER_AS);
    n.passive = true;
    s.add_neighbor(n).await.unwrap();
    let ours: IpNet = "10.6.0.0/24".parse().unwrap();
    s.originate(ours, vec![]).await.unwrap();
    let to = s.listen_addr().unwrap();

    // Initial table, then End-of-RIB; next hop = our end of the session,
    // 127.0.0.51 (no local address configured; not the router id
    // 10.0.0.51, which is no address of ours), our AS prepended.
    let mut peer = RawPeer::establish(ip(52), to, capabilities())
        .await
        .unwrap();
    let u = peer.recv_announce(ours).await;
    assert_eq!(u.next_hop(), Some(Ipv4Addr::new(127, 0, 0, 51)));
    let Message::Update(eor) = peer.recv().await else {
        panic!("expected End-of-RIB");
    };
    assert_eq!(eor.is_end_of_rib(), Some(Family::IPV4_UNICAST));

    // The peer's route.
    let theirs: IpNet = "10.5.0.0/24".parse().unwrap();
    peer.send(announce(&["10.5.0.0/24"], Ipv4Addr::new(127, 0, 0, 52)))
        .await;
    let c = wait_change(&mut best, |c| c.prefix == theirs).await;
    assert_eq!(c.next_hops, vec![ip(52)]);

    // Enhanced route refresh: BoRR, the table again, EoRR.
    peer.send(Message::RouteRefresh(RouteRefresh::new(
        Family::IPV4_UNICAST,
        RouteRefreshSubtype::Request,
    )))
    .await;
    let Message::RouteRefresh(borr) = peer.recv().await else {
        panic!("expected BoRR");
    };
    assert_eq!(borr.subtype, RouteRefreshSubtype::BeginningOfRefresh);
    peer.recv_announce(ours).await;
    let Message::RouteRefresh(eorr) = peer.recv().await else {
        panic!("expected EoRR");
    };
    assert_eq!(eorr.subtype, RouteRefreshSubtype::EndOfRefresh);

    // The connection drops without a NOTIFICATION: graceful restart keeps
    // the peer's route, stale, and installed.
    drop(peer);
    let down = wait_peer(&s, |p| p.state != "Established").await;
    assert!(down.last_error.is_some());
    let routes = s.routes(Some(theirs)).await;
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert!(routes[0].paths[0].stale);
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(c) = best.try_recv() {
        assert!(
            !(c.prefix == theirs && c.is_withdrawal()),
            "route withdrawn despite graceful restart"
        );
    }

    // Back (after the session's idle hold): End-of-RIB without the route
    // sweeps it.
    let end = Instant::now() + WAIT;
    let mut peer = loop {
        if let Some(p) = RawPeer::establish(ip(52), to, capabilities()).await {
            break p;
        }
        assert!(Instant::now() < end, "could not reconnect");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    peer.recv_announce(ours).await;
    peer.send(Message::Update(Update::end_of_rib(Family::IPV4_UNICAST)))
        .await;
    wait_change(&mut best, |c| c.prefix == theirs && c.is_withdrawal()).await;
    s.shutdown(None).await;
}

#[tokio::test]
async fn max_prefixes_closes_the_session() {
    let s = speaker(61).await;
    let mut n = NeighborConfig::new(ip(62), PEER_AS);
    n.passive = true;
    n.max_prefixes = Some(1);
    s.add_neighbor(n).await.unwrap();
    let to = s.listen_addr().unwrap();
    let mut peer = RawPeer::establish(ip(62), to, capabilities())
        .await
        .unwrap();
    peer.send(announce(
        &["10.7.0.0/24", "10.7.1.0/24"],
        Ipv4Addr::new(127, 0, 0, 62),
    ))
    .await;
    let notification = loop {
        match peer.recv().await {
            Message::Notification(n) => break n,
            _ => continue,
        }
    };
    // Cease / Maximum Number of Prefixes Reached, data AFI 1, SAFI 1 and
    // the limit 1 (RFC 4486 §4).
    assert_eq!(
        (notification.code, notification.subcode),
        (6, 1),
        "{}",
        notification.describe()
    );
    assert_eq!(&notification.data[..], &[0, 1, 1, 0, 0, 0, 1]);
    let p = wait_peer(&s, |p| p.state == "Idle").await;
    assert!(p.last_error.unwrap().contains("maximum number of prefixes"));
    assert_eq!(p.accepted, 0);
    assert!(s.routes(None).await.is_empty());
    s.shutdown(None).await;
}

/// What arrives within `d` (UPDATEs and End-of-RIB markers, in order),
/// KEEPALIVEs skipped.
async fn updates_within(peer: &mut RawPeer, d: Duration) -> Vec<Update> {
    let mut got = Vec::new();
    let end = Instant::now() + d;
    while let Ok(Some(m)) = timeout(
        end.saturating_duration_since(Instant::now()),
        peer.try_recv(),
    )
    .await
    {
        if let Message::Update(u) = m {
            got.push(u);
        }
    }
    got
}

/// A restarting speaker (RFC 4724 §4.1) with one passive neighbour at
/// 127.0.0.`peer` and an originated prefix.
async fn restarting_speaker(last: u8, peer: u8, deferral: Duration) -> (Speaker, SocketAddr) {
    let mut config = SpeakerConfig::new(65001, Ipv4Addr::new(10, 0, 0, last));
    config.listen = Some(SocketAddr::new(ip(last), 0));
    config.restarting = true;
    config.selection_deferral_time = deferral;
    let s = Speaker::start(config).await.unwrap();
    let mut n = NeighborConfig::new(ip(peer), PEER_AS);
    n.passive = true;
    s.add_neighbor(n).await.unwrap();
    s.originate("10.60.0.0/24".parse().unwrap(), vec![])
        .await
        .unwrap();
    let to = s.listen_addr().unwrap();
    (s, to)
}

fn announces(u: &Update, prefix: &str) -> bool {
    let p: IpNet = prefix.parse().unwrap();
    u.nlri.iter().any(|n| n.prefix == p)
}

#[tokio::test]
async fn restarting_speaker_defers_its_table_until_the_peers_end_of_rib() {
    let (s, to) = restarting_speaker(55, 56, Duration::from_secs(60)).await;
    let mut peer = RawPeer::establish(ip(56), to, capabilities())
        .await
        .unwrap();
    let early = updates_within(&mut peer, Duration::from_millis(1000)).await;
    assert!(
        early.is_empty(),
        "sent before the peer's End-of-RIB: {early:?}"
    );

    peer.send(announce(&["10.61.0.0/24"], Ipv4Addr::new(127, 0, 0, 56)))
        .await;
    peer.send(Message::Update(Update::end_of_rib(Family::IPV4_UNICAST)))
        .await;
    let got = updates_within(&mut peer, Duration::from_millis(1500)).await;
    let table = got.iter().position(|u| announces(u, "10.60.0.0/24"));
    let eor = got.iter().position(|u| u.is_end_of_rib().is_some());
    assert!(
        matches!((table, eor), (Some(t), Some(e)) if t < e),
        "expected our table, then End-of-RIB: {got:?}"
    );
    s.shutdown(None).await;
}

#[tokio::test]
async fn selection_deferral_timer_ends_the_wait() {
    let (s, to) = restarting_speaker(57, 58, Duration::from_millis(1500)).await;
    let started = Instant::now();
    let mut peer = RawPeer::establish(ip(58), to, capabilities())
        .await
        .unwrap();
    let early = updates_within(&mut peer, Duration::from_millis(700)).await;
    assert!(early.is_empty(), "sent before the timer: {early:?}");
    // No End-of-RIB from the peer: the timer releases the table.
    let got = updates_within(&mut peer, Duration::from_millis(2500)).await;
    assert!(got.iter().any(|u| announces(u, "10.60.0.0/24")), "{got:?}");
    assert!(
        got.last().and_then(Update::is_end_of_rib).is_some(),
        "{got:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(1400));
    s.shutdown(None).await;
}

#[tokio::test]
async fn peer_without_graceful_restart_is_not_waited_for() {
    let (s, to) = restarting_speaker(59, 60, Duration::from_secs(60)).await;
    let caps: Vec<Capability> = capabilities()
        .into_iter()
        .filter(|c| !matches!(c, Capability::GracefulRestart(_)))
        .collect();
    let mut peer = RawPeer::establish(ip(60), to, caps).await.unwrap();
    let got = updates_within(&mut peer, Duration::from_millis(1500)).await;
    assert!(got.iter().any(|u| announces(u, "10.60.0.0/24")), "{got:?}");
    assert!(
        got.last().and_then(Update::is_end_of_rib).is_some(),
        "{got:?}"
    );
    s.shutdown(None).await;
}

fn announce_v6(prefix: &str, next_hop: &str) -> Message {
    Message::Update(Update {
        attributes: vec![
            PathAttribute::new(AttributeValue::Origin(Origin::Igp)),
            PathAttribute::new(AttributeValue::AsPath(AsPath::sequence([PEER_AS]))),
            PathAttribute::new(AttributeValue::MpReach(Box::new(MpReach {
                family: Family::IPV6_UNICAST,
                next_hop: NextHop::Ipv6 {
                    global: next_hop.parse().unwrap(),
                    link_local: None,
                },
                nlri: vec![Nlri::new(prefix.parse().unwrap())],
                unparsed: bytes::Bytes::new(),
            }))),
        ],
        ..Update::default()
    })
}

/// IPv6 routes over an IPv4 session, as GoBGP and FRR send them without an
/// IPv6 address for the session: next hop `::ffff:a.b.c.d`. Nothing can
/// forward to that, so the path is unresolvable: not best, not on the
/// stream, not in `routes()`; the same route with a real IPv6 next hop is.
#[tokio::test]
async fn ipv4_mapped_ipv6_next_hop_is_unresolvable() {
    let mut config = SpeakerConfig::new(65001, Ipv4Addr::new(10, 0, 0, 63));
    config.listen = Some(SocketAddr::new(ip(63), 0));
    config.families = vec![Family::IPV4_UNICAST, Family::IPV6_UNICAST];
    let s = Speaker::start(config).await.unwrap();
    let mut best = s.subscribe();
    let mut n = NeighborConfig::new(ip(64), PEER_AS);
    n.passive = true;
    s.add_neighbor(n).await.unwrap();
    let to = s.listen_addr().unwrap();
    let mut caps = capabilities();
    caps.push(Capability::Multiprotocol {
        family: Family::IPV6_UNICAST,
    });
    let mut peer = RawPeer::establish(ip(64), to, caps).await.unwrap();
    peer.send(announce_v6("2001:db8:1::/48", "::ffff:127.0.0.64"))
        .await;
    peer.send(announce_v6("2001:db8:2::/48", "2001:db8::64"))
        .await;
    let c = wait_change(&mut best, |c| !c.is_withdrawal()).await;
    assert_eq!(c.prefix.to_string(), "2001:db8:2::/48", "{c:?}");
    assert_eq!(c.next_hops, vec!["2001:db8::64".parse::<IpAddr>().unwrap()]);
    let routes = s.routes(None).await;
    let prefixes: Vec<String> = routes.iter().map(|r| r.prefix.to_string()).collect();
    assert_eq!(prefixes, vec!["2001:db8:2::/48"], "{routes:?}");
    // Both were received and accepted by policy all the same.
    let p = wait_peer(&s, |p| p.received == 2).await;
    assert_eq!(p.accepted, 2, "{p:?}");
    s.shutdown(None).await;
}

/// `Speaker::refresh` sends the peer a ROUTE-REFRESH request per family;
/// it is refused for an unknown neighbour and for one that is not up.
#[tokio::test]
async fn refresh_sends_route_refresh_requests() {
    let s = speaker(65).await;
    let mut n = NeighborConfig::new(ip(66), PEER_AS);
    n.passive = true;
    s.add_neighbor(n).await.unwrap();
    assert!(matches!(
        s.refresh(ip(66)).await,
        Err(bgp::speaker::SpeakerError::Refresh { .. })
    ));
    assert!(matches!(
        s.refresh(ip(67)).await,
        Err(bgp::speaker::SpeakerError::UnknownNeighbor(_))
    ));
    let to = s.listen_addr().unwrap();
    let mut peer = RawPeer::establish(ip(66), to, capabilities())
        .await
        .unwrap();
    wait_peer(&s, |p| p.state == "Established").await;
    s.refresh(ip(66)).await.unwrap();
    let got = loop {
        match peer.recv().await {
            Message::RouteRefresh(r) => break r,
            _ => continue,
        }
    };
    assert_eq!(
        got,
        RouteRefresh::new(Family::IPV4_UNICAST, RouteRefreshSubtype::Request)
    );
    s.shutdown(None).await;
}

/// Connects from `local` and sends an OPEN with `hold_time`, nothing else.
async fn open_with(local: IpAddr, to: SocketAddr, hold_time: u16) -> RawPeer {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(local, 0)).unwrap();
    let stream = socket.connect(to).await.unwrap();
    let mut peer = RawPeer {
        stream,
        buf: BytesMut::new(),
        params: SessionParams::default(),
    };
    let open = Open::new(
        PEER_AS,
        hold_time,
        Ipv4Addr::new(10, 0, 0, 99),
        capabilities(),
    );
    peer.send(Message::Open(open)).await;
    peer
}

/// The neighbour's own hold time goes in our OPEN instead of the
/// speaker's (90 s), the negotiated one (the smaller of both, RFC 4271
/// §4.2) is enforced, and the neighbour's keepalive interval is used when
/// shorter than a third of it.
#[tokio::test]
async fn per_neighbor_hold_and_keepalive_times() {
    let s = speaker(71).await;
    let mut n = NeighborConfig::new(ip(72), PEER_AS);
    n.passive = true;
    n.hold_time = Some(6);
    n.keepalive_time = Some(1);
    s.add_neighbor(n).await.unwrap();
    let mut peer = open_with(ip(72), s.listen_addr().unwrap(), 30).await;
    let Message::Open(open) = peer.recv().await else {
        panic!("no OPEN");
    };
    assert_eq!(open.hold_time, 6);
    assert!(matches!(peer.recv().await, Message::Keepalive));
    peer.send(Message::Keepalive).await;
    peer.params.four_octet_as = true;
    // The peer says nothing more: min(6, 30) = 6 s later the session ends.
    let started = Instant::now();
    let mut keepalives = 0;
    let notification = loop {
        match peer.recv().await {
            Message::Keepalive => keepalives += 1,
            Message::Notification(n) => break n,
            _ => {}
        }
    };
    let waited = started.elapsed();
    assert_eq!(
        (notification.code, notification.subcode),
        (4, 0),
        "Hold Timer Expired: {}",
        notification.describe()
    );
    assert!(waited >= Duration::from_secs(4), "after {waited:?}");
    // Every second (a third of 6 s would give 2 in that time).
    assert!(keepalives >= 4, "{keepalives} keepalives in {waited:?}");
    s.shutdown(None).await;
}

/// Connects from `local` with an outgoing TTL, waits for the speaker's
/// OPEN (sent once its session took the connection and set its socket
/// options), then sends ours.
async fn connect_with_ttl(local: IpAddr, to: SocketAddr, ttl: u32) -> RawPeer {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(local, 0)).unwrap();
    socket2::SockRef::from(&socket).set_ttl_v4(ttl).unwrap();
    let stream = socket.connect(to).await.unwrap();
    let mut peer = RawPeer {
        stream,
        buf: BytesMut::new(),
        params: SessionParams::default(),
    };
    assert!(matches!(peer.recv().await, Message::Open(_)));
    let open = Open::new(PEER_AS, 0, Ipv4Addr::new(10, 0, 0, 99), capabilities());
    peer.send(Message::Open(open)).await;
    peer
}

/// GTSM (RFC 5082) on accepted connections: a peer sending with TTL 255
/// gets a session, one sending with the default TTL (64) is not heard
/// once the speaker has the connection: its OPEN never arrives, so no
/// KEEPALIVE answers it.
#[tokio::test]
async fn gtsm_hears_only_peers_sending_with_ttl_255() {
    let s = speaker(73).await;
    for last in [74, 75] {
        let mut n = NeighborConfig::new(ip(last), PEER_AS);
        n.passive = true;
        n.gtsm_hops = Some(1);
        s.add_neighbor(n).await.unwrap();
    }
    let to = s.listen_addr().unwrap();

    let mut good = connect_with_ttl(ip(75), to, 255).await;
    assert!(matches!(good.recv().await, Message::Keepalive));
    good.send(Message::Keepalive).await;

    let mut bad = connect_with_ttl(ip(74), to, 64).await;
    let heard = timeout(Duration::from_secs(3), async {
        loop {
            match bad.try_recv().await {
                Some(Message::Keepalive) => return true,
                Some(_) => continue,
                None => return false,
            }
        }
    })
    .await
    .unwrap_or(false);
    assert!(!heard, "a TTL-64 peer got a KEEPALIVE through GTSM");

    let end = Instant::now() + WAIT;
    loop {
        let status = s.status().await;
        let state = |a: IpAddr| {
            status
                .peers
                .iter()
                .find(|p| p.address == a)
                .map(|p| p.state.clone())
                .unwrap()
        };
        if state(ip(75)) == "Established" {
            assert_ne!(state(ip(74)), "Established");
            break;
        }
        assert!(Instant::now() < end, "{status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.shutdown(None).await;
}

async fn wait_peer_at(s: &Speaker, address: IpAddr, pred: impl Fn(&PeerStatus) -> bool) {
    let end = Instant::now() + WAIT;
    loop {
        let status = s.status().await;
        let p = status.peers.iter().find(|p| p.address == address).unwrap();
        if pred(p) {
            return;
        }
        assert!(Instant::now() < end, "timed out: {p:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until a route for `prefix` is there (`present`) or not.
async fn wait_routes(s: &Speaker, prefix: &str, present: bool) {
    let net: IpNet = prefix.parse().unwrap();
    let end = Instant::now() + WAIT;
    while s.routes(Some(net)).await.is_empty() == present {
        assert!(Instant::now() < end, "{prefix} present should be {present}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn route_refresh(subtype: RouteRefreshSubtype) -> Message {
    Message::RouteRefresh(RouteRefresh::new(Family::IPV4_UNICAST, subtype))
}

/// Enhanced route refresh received (RFC 7313 §4): between the peer's BoRR
/// and EoRR its earlier routes are kept (stale, nothing withdrawn); at the
/// EoRR the ones it did not announce again are removed. A peer without the
/// capability has its BoRR/EoRR ignored, and an EoRR without a BoRR is
/// ignored.
#[tokio::test]
async fn enhanced_route_refresh_from_the_peer_purges_what_it_did_not_resend() {
    let s = speaker(81).await;
    let mut best = s.subscribe();
    for peer in [82, 83] {
        let mut n = NeighborConfig::new(ip(peer), PEER_AS);
        n.passive = true;
        s.add_neighbor(n).await.unwrap();
    }
    let to = s.listen_addr().unwrap();
    let nh = Ipv4Addr::new(127, 0, 0, 82);
    let mut peer = RawPeer::establish(ip(82), to, capabilities())
        .await
        .unwrap();
    peer.send(announce(&["10.8.1.0/24", "10.8.2.0/24", "10.8.3.0/24"], nh))
        .await;
    wait_routes(&s, "10.8.3.0/24", true).await;

    peer.send(announce(&["10.8.4.0/24"], nh)).await;
    wait_routes(&s, "10.8.4.0/24", true).await;
    // The peer offered graceful restart: its BoRR counts only after its
    // End-of-RIB (RFC 7313 §4; see
    // `borr_before_end_of_rib_is_ignored_from_a_graceful_restart_peer`).
    peer.send(Message::Update(Update::end_of_rib(Family::IPV4_UNICAST)))
        .await;

    peer.send(route_refresh(RouteRefreshSubtype::BeginningOfRefresh))
        .await;
    peer.send(announce(&["10.8.1.0/24", "10.8.3.0/24"], nh))
        .await;
    // Processed in order: once 10.8.5.0/24 is in, the re-announcements
    // before it are too.
    peer.send(announce(&["10.8.5.0/24"], nh)).await;
    wait_routes(&s, "10.8.5.0/24", true).await;
    let stale = |routes: Vec<bgp::speaker::RouteView>| {
        assert_eq!(routes.len(), 1, "{routes:?}");
        routes[0].paths[0].stale
    };
    assert!(!stale(s.routes(Some("10.8.1.0/24".parse().unwrap())).await));
    assert!(stale(s.routes(Some("10.8.2.0/24".parse().unwrap())).await));
    assert!(stale(s.routes(Some("10.8.4.0/24".parse().unwrap())).await));
    while let Ok(c) = best.try_recv() {
        assert!(!c.is_withdrawal(), "withdrawn during the refresh: {c:?}");
    }

    peer.send(route_refresh(RouteRefreshSubtype::EndOfRefresh))
        .await;
    let gone = wait_change(&mut best, |c| c.is_withdrawal()).await;
    let gone2 = wait_change(&mut best, |c| c.is_withdrawal()).await;
    let mut gone = [gone.prefix.to_string(), gone2.prefix.to_string()];
    gone.sort();
    assert_eq!(gone, ["10.8.2.0/24", "10.8.4.0/24"]);
    wait_routes(&s, "10.8.2.0/24", false).await;
    for kept in ["10.8.1.0/24", "10.8.3.0/24", "10.8.5.0/24"] {
        assert!(
            !stale(s.routes(Some(kept.parse().unwrap())).await),
            "{kept}"
        );
    }

    // The connection drops without a NOTIFICATION: graceful restart keeps
    // the routes, stale. Back, the peer sends a stray EoRR (no BoRR before
    // it): ignored, the stale routes stay until End-of-RIB.
    drop(peer);
    wait_peer_at(&s, ip(82), |p| p.state != "Established").await;
    let end = Instant::now() + WAIT;
    let mut peer = loop {
        if let Some(p) = RawPeer::establish(ip(82), to, capabilities()).await {
            break p;
        }
        assert!(Instant::now() < end, "could not reconnect");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    peer.send(route_refresh(RouteRefreshSubtype::EndOfRefresh))
        .await;
    peer.send(announce(&["10.8.6.0/24"], nh)).await;
    wait_routes(&s, "10.8.6.0/24", true).await;
    assert!(stale(s.routes(Some("10.8.1.0/24".parse().unwrap())).await));
    peer.send(Message::Update(Update::end_of_rib(Family::IPV4_UNICAST)))
        .await;
    wait_routes(&s, "10.8.1.0/24", false).await;

    // Without the capability, BoRR/EoRR mean nothing: nothing goes.
    let plain: Vec<Capability> = capabilities()
        .into_iter()
        .filter(|c| *c != Capability::EnhancedRouteRefresh)
        .collect();
    let mut plain_peer = RawPeer::establish(ip(83), to, plain).await.unwrap();
    let nh = Ipv4Addr::new(127, 0, 0, 83);
    plain_peer.send(announce(&["10.9.1.0/24"], nh)).await;
    wait_routes(&s, "10.9.1.0/24", true).await;
    plain_peer
        .send(route_refresh(RouteRefreshSubtype::BeginningOfRefresh))
        .await;
    plain_peer
        .send(route_refresh(RouteRefreshSubtype::EndOfRefresh))
        .await;
    plain_peer.send(announce(&["10.9.2.0/24"], nh)).await;
    wait_routes(&s, "10.9.2.0/24", true).await;
    let routes = s.routes(Some("10.9.1.0/24".parse().unwrap())).await;
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert!(!routes[0].paths[0].stale);
    s.shutdown(None).await;
}

/// A speaker whose refreshes wait `eorr_wait` for the peer's EoRR, with
/// passive neighbours at 127.0.0.`peers`.
async fn refresh_speaker(last: u8, peers: &[u8], eorr_wait: Duration) -> (Speaker, SocketAddr) {
    let mut config = SpeakerConfig::new(65001, Ipv4Addr::new(10, 0, 0, last));
    config.listen = Some(SocketAddr::new(ip(last), 0));
    config.enhanced_refresh_time = eorr_wait;
    let s = Speaker::start(config).await.unwrap();
    for peer in peers {
        let mut n = NeighborConfig::new(ip(*peer), PEER_AS);
        n.passive = true;
        s.add_neighbor(n).await.unwrap();
    }
    let to = s.listen_addr().unwrap();
    (s, to)
}

async fn is_stale(s: &Speaker, prefix: &str) -> bool {
    let routes = s.routes(Some(prefix.parse().unwrap())).await;
    assert_eq!(routes.len(), 1, "{prefix}: {routes:?}");
    routes[0].paths[0].stale
}

/// RFC 7313 §4: a BoRR with no EoRR after it — the stale paths go when
/// the speaker's EoRR wait runs out (shortened here from 360 s to 1.5 s);
/// the routes the peer sent again in between stay, not stale.
#[tokio::test]
async fn a_refresh_without_eorr_is_swept_at_the_timeout() {
    let wait = Duration::from_millis(1500);
    let (s, to) = refresh_speaker(91, &[92], wait).await;
    let mut best = s.subscribe();
    let nh = Ipv4Addr::new(127, 0, 0, 92);
    let mut peer = RawPeer::establish(ip(92), to, capabilities())
        .await
        .unwrap();
    peer.send(announce(&["10.91.1.0/24", "10.91.2.0/24"], nh))
        .await;
    peer.send(Message::Update(Update::end_of_rib(Family::IPV4_UNICAST)))
        .await;
    wait_routes(&s, "10.91.2.0/24", true).await;

    peer.send(route_refresh(RouteRefreshSubtype::BeginningOfRefresh))
        .await;
    let begun = Instant::now();
    peer.send(announce(&["10.91.1.0/24"], nh)).await;
    peer.send(announce(&["10.91.3.0/24"], nh)).await;
    wait_routes(&s, "10.91.3.0/24", true).await;
    // Before the timeout: kept, stale, nothing withdrawn.
    assert!(is_stale(&s, "10.91.2.0/24").await);
    assert!(!is_stale(&s, "10.91.1.0/24").await);

    let gone = wait_change(&mut best, |c| c.is_withdrawal()).await;
    assert!(
        begun.elapsed() >= wait - Duration::from_millis(100),
        "swept after {:?}",
        begun.elapsed()
    );
    assert_eq!(gone.prefix.to_string(), "10.91.2.0/24");
    for kept in ["10.91.1.0/24", "10.91.3.0/24"] {
        assert!(!is_stale(&s, kept).await, "{kept}");
    }
    // The refresh is over: a late EoRR sweeps nothing more.
    peer.send(route_refresh(RouteRefreshSubtype::EndOfRefresh))
        .await;
    peer.send(announce(&["10.91.4.0/24"], nh)).await;
    wait_routes(&s, "10.91.4.0/24", true).await;
    assert!(!is_stale(&s, "10.91.1.0/24").await);
    while let Ok(c) = best.try_recv() {
        assert!(!c.is_withdrawal(), "withdrawn: {c:?}");
    }
    s.shutdown(None).await;
}

/// RFC 7313 §4: from a peer that sent the Graceful Restart capability, a
/// BoRR before its End-of-RIB for the family is ignored — what it sent
/// stays, not stale, and the EoRR after it removes nothing. From a peer
/// without that capability the same BoRR starts a refresh.
#[tokio::test]
async fn borr_before_end_of_rib_is_ignored_from_a_graceful_restart_peer() {
    let (s, to) = refresh_speaker(93, &[94, 95], ENHANCED_REFRESH_TIME).await;
    let mut best = s.subscribe();
    let nh = Ipv4Addr::new(127, 0, 0, 94);
    let mut peer = RawPeer::establish(ip(94), to, capabilities())
        .await
        .unwrap();
    peer.send(announce(&["10.93.1.0/24", "10.93.2.0/24"], nh))
        .await;
    peer.send(route_refresh(RouteRefreshSubtype::BeginningOfRefresh))
        .await;
    peer.send(announce(&["10.93.1.0/24"], nh)).await;
    peer.send(announce(&["10.93.3.0/24"], nh)).await;
    wait_routes(&s, "10.93.3.0/24", true).await;
    assert!(!is_stale(&s, "10.93.2.0/24").await);
    peer.send(route_refresh(RouteRefreshSubtype::EndOfRefresh))
        .await;
    peer.send(announce(&["10.93.4.0/24"], nh)).await;
    wait_routes(&s, "10.93.4.0/24", true).await;
    assert!(!is_stale(&s, "10.93.2.0/24").await);
    while let Ok(c) = best.try_recv() {
        assert!(!c.is_withdrawal(), "withdrawn: {c:?}");
    }
    // After its End-of-RIB the same BoRR counts.
    peer.send(Message::Update(Update::end_of_rib(Family::IPV4_UNICAST)))
        .await;
    peer.send(route_refresh(RouteRefreshSubtype::BeginningOfRefresh))
        .await;
    peer.send(announce(&["10.93.5.0/24"], nh)).await;
    wait_routes(&s, "10.93.5.0/24", true).await;
    assert!(is_stale(&s, "10.93.2.0/24").await);

    // No graceful restart offered, no End-of-RIB sent: the BoRR counts.
    let no_gr: Vec<Capability> = capabilities()
        .into_iter()
        .filter(|c| !matches!(c, Capability::GracefulRestart(_)))
        .collect();
    let nh = Ipv4Addr::new(127, 0, 0, 95);
    let mut plain = RawPeer::establish(ip(95), to, no_gr).await.unwrap();
    plain
        .send(announce(&["10.95.1.0/24", "10.95.2.0/24"], nh))
        .await;
    wait_routes(&s, "10.95.2.0/24", true).await;
    plain
        .send(route_refresh(RouteRefreshSubtype::BeginningOfRefresh))
        .await;
    plain.send(announce(&["10.95.1.0/24"], nh)).await;
    plain
        .send(route_refresh(RouteRefreshSubtype::EndOfRefresh))
        .await;
    wait_routes(&s, "10.95.2.0/24", false).await;
    assert!(!is_stale(&s, "10.95.1.0/24").await);
    s.shutdown(None).await;
}

/// RFC 7313 §4 as the sender: a ROUTE-REFRESH request that arrives before
/// our End-of-RIB (here held back by a restart's selection deferral) is
/// answered by the initial table and End-of-RIB, with no BoRR before the
/// End-of-RIB; a request after it by BoRR, the table, EoRR.
#[tokio::test]
async fn no_borr_before_our_end_of_rib() {
    let (s, to) = restarting_speaker(96, 97, Duration::from_secs(60)).await;
    let mut peer = RawPeer::establish(ip(97), to, capabilities())
        .await
        .unwrap();
    peer.send(route_refresh(RouteRefreshSubtype::Request)).await;
    peer.send(Message::Update(Update::end_of_rib(Family::IPV4_UNICAST)))
        .await;
    let mut got = Vec::new();
    loop {
        let m = peer.recv().await;
        let eor = matches!(&m, Message::Update(u) if u.is_end_of_rib().is_some());
        got.push(m);
        if eor {
            break;
        }
    }
    assert!(
        got.iter()
            .any(|m| matches!(m, Message::Update(u) if announces(u, "10.60.0.0/24"))),
        "{got:?}"
    );
    assert!(
        !got.iter().any(|m| matches!(m, Message::RouteRefresh(_))),
        "a refresh marker before End-of-RIB: {got:?}"
    );

    peer.send(route_refresh(RouteRefreshSubtype::Request)).await;
    let Message::RouteRefresh(borr) = peer.recv().await else {
        panic!("expected BoRR");
    };
    assert_eq!(borr.subtype, RouteRefreshSubtype::BeginningOfRefresh);
    peer.recv_announce("10.60.0.0/24".parse().unwrap()).await;
    let Message::RouteRefresh(eorr) = peer.recv().await else {
        panic!("expected EoRR");
    };
    assert_eq!(eorr.subtype, RouteRefreshSubtype::EndOfRefresh);
    s.shutdown(None).await;
}
