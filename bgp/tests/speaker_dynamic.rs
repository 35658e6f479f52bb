//! Dynamic neighbours of listen ranges over loopback (no root needed): a
//! route reflector configured with only a listen range; client speakers on
//! 127.0.1.x connect to it, are reflected to each other, and vanish (routes
//! withdrawn) when they leave; a speaker outside the range is refused; a
//! range's TCP MD5 key applies to every address in it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bgp::speaker::{ListenRange, NeighborConfig, PeerAsn, Speaker, SpeakerConfig, SpeakerError};
use bgp::wire::{self, Community, Message, Open, SessionParams};
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(20);
const AS: u32 = 65000;

fn ip(third: u8, last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, third, last))
}

async fn speaker(me: IpAddr, listen: bool) -> Speaker {
    let IpAddr::V4(id) = me else { unreachable!() };
    let mut config = SpeakerConfig::new(AS, id);
    config.hold_time = 9;
    if listen {
        config.listen = Some(SocketAddr::new(me, 0));
    }
    Speaker::start(config).await.unwrap()
}

/// A client at `me` connecting to the reflector.
async fn client(me: IpAddr, rr: &Speaker, rr_ip: IpAddr, password: Option<&str>) -> Speaker {
    let s = speaker(me, false).await;
    let mut n = NeighborConfig::new(rr_ip, AS);
    n.port = rr.listen_addr().unwrap().port();
    n.local_address = Some(me);
    n.password = password.map(str::to_string);
    s.add_neighbor(n).await.unwrap();
    s
}

async fn eventually<F: std::future::Future<Output = bool>>(mut f: impl FnMut() -> F) -> bool {
    let end = Instant::now() + WAIT;
    while Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f().await
}

async fn has_route(s: &Speaker, prefix: &str) -> bool {
    let p: IpNet = prefix.parse().unwrap();
    s.routes(Some(p)).await.iter().any(|r| r.prefix == p)
}

async fn established(s: &Speaker, address: IpAddr) -> bool {
    s.status()
        .await
        .peers
        .iter()
        .any(|p| p.address == address && p.state == "Established")
}

#[tokio::test]
async fn reflector_with_only_a_listen_range() {
    let rr_ip = ip(1, 1);
    let rr = speaker(rr_ip, true).await;
    let mut range = ListenRange::new("127.0.1.0/28".parse().unwrap(), AS);
    range.template.rr_client = true;
    rr.add_listen_range(range.clone()).await.unwrap();
    assert!(matches!(
        rr.add_listen_range(range).await,
        Err(SpeakerError::ListenRange { .. })
    ));

    let (c1_ip, c2_ip) = (ip(1, 2), ip(1, 3));
    let c1 = client(c1_ip, &rr, rr_ip, None).await;
    let c2 = client(c2_ip, &rr, rr_ip, None).await;
    c1.originate("10.50.1.0/24".parse().unwrap(), vec![])
        .await
        .unwrap();
    assert!(
        eventually(|| has_route(&c2, "10.50.1.0/24")).await,
        "not reflected: {:?}",
        rr.status().await
    );
    let status = rr.status().await;
    assert_eq!(status.peers.len(), 2, "{status:?}");
    assert!(status.peers.iter().all(|p| p.dynamic && p.rr_client));
    let reflected = c2.routes(Some("10.50.1.0/24".parse().unwrap())).await;
    assert_eq!(reflected[0].paths[0].next_hop, Some(c1_ip));

    // Outside the range: refused, no neighbour created.
    let outsider_ip = ip(2, 9);
    let outsider = client(outsider_ip, &rr, rr_ip, None).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!established(&outsider, rr_ip).await);
    let status = rr.status().await;
    assert!(
        status.peers.iter().all(|p| p.address != outsider_ip),
        "{status:?}"
    );
    outsider.shutdown(None).await;

    // c1 leaves: its neighbour goes, its route is withdrawn at c2.
    c1.shutdown(None).await;
    assert!(
        eventually(|| async { !has_route(&c2, "10.50.1.0/24").await }).await,
        "route of the departed client still at c2"
    );
    assert!(
        eventually(|| async {
            let s = rr.status().await;
            s.peers.len() == 1 && s.peers[0].address == c2_ip
        })
        .await,
        "dynamic neighbor not removed: {:?}",
        rr.status().await
    );

    // It may come back: a new dynamic neighbour.
    let c1 = client(c1_ip, &rr, rr_ip, None).await;
    assert!(eventually(|| established(&rr, c1_ip)).await);

    // Removing the range removes its neighbours.
    rr.remove_listen_range("127.0.1.0/28".parse().unwrap())
        .await
        .unwrap();
    assert!(rr.status().await.peers.is_empty());
    c1.shutdown(None).await;
    c2.shutdown(None).await;
    rr.shutdown(None).await;
}

#[tokio::test]
async fn listen_range_md5_key_covers_the_range() {
    let rr_ip = ip(3, 1);
    let rr = speaker(rr_ip, true).await;
    let mut range = ListenRange::new("127.0.3.0/24".parse().unwrap(), AS);
    range.template.password = Some("range-secret".into());
    rr.add_listen_range(range).await.unwrap();

    let good = client(ip(3, 2), &rr, rr_ip, Some("range-secret")).await;
    let bad = client(ip(3, 3), &rr, rr_ip, Some("wrong")).await;
    let none = client(ip(3, 4), &rr, rr_ip, None).await;
    assert!(
        eventually(|| established(&good, rr_ip)).await,
        "{:?}",
        rr.status().await
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!established(&bad, rr_ip).await);
    assert!(!established(&none, rr_ip).await);
    let status = rr.status().await;
    assert_eq!(status.peers.len(), 1, "{status:?}");
    assert_eq!(status.peers[0].address, ip(3, 2));
    for s in [good, bad, none, rr] {
        s.shutdown(None).await;
    }
}

/// A range's session values are checked when it is added, as a
/// neighbour's are: a refused range is not added.
#[tokio::test]
async fn listen_range_with_bad_session_values_is_refused() {
    let s = speaker(ip(7, 1), true).await;
    let prefix: IpNet = "127.0.7.0/24".parse().unwrap();
    let mut hold = ListenRange::new(prefix, AS);
    hold.template.hold_time = Some(2);
    let mut both = ListenRange::new(prefix, AS);
    both.template.ttl = Some(2);
    both.template.gtsm_hops = Some(1);
    let mut zero = ListenRange::new(prefix, AS);
    zero.asn = PeerAsn::Exact(0);
    for bad in [hold, both, zero] {
        let r = s.add_listen_range(bad.clone()).await;
        assert!(
            matches!(r, Err(SpeakerError::ListenRange { .. })),
            "{bad:?}: {r:?}"
        );
    }
    // Nothing was half-added: the prefix is still free.
    s.add_listen_range(ListenRange::new(prefix, AS))
        .await
        .unwrap();
    s.shutdown(None).await;
}

#[tokio::test]
async fn listen_range_needs_a_listener() {
    let s = speaker(ip(4, 1), false).await;
    let r = s
        .add_listen_range(ListenRange::new("127.0.4.0/24".parse().unwrap(), AS))
        .await;
    assert!(matches!(r, Err(SpeakerError::ListenRange { .. })), "{r:?}");
    s.shutdown(None).await;
}

/// A dual-stack listener (`[::]`): IPv4 peers' MD5 keys (a neighbour's and
/// a listen range's) are installed as IPv4-mapped keys, which is how Linux
/// takes IPv4 keys on an IPv6 socket; signed IPv4 connections then come in.
#[tokio::test]
async fn dual_stack_listener_takes_md5_keys_of_ipv4_peers() {
    let rr_ip = ip(5, 1);
    let IpAddr::V4(id) = rr_ip else {
        unreachable!()
    };
    let mut config = SpeakerConfig::new(AS, id);
    config.hold_time = 9;
    config.listen = Some(SocketAddr::new(
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        0,
    ));
    let rr = Speaker::start(config).await.unwrap();
    let mut range = ListenRange::new("127.0.5.0/28".parse().unwrap(), AS);
    range.template.password = Some("range-secret".into());
    rr.add_listen_range(range).await.unwrap();
    let mut static_peer = NeighborConfig::new(ip(5, 20), AS);
    static_peer.passive = true;
    static_peer.password = Some("peer-secret".into());
    rr.add_neighbor(static_peer).await.unwrap();

    let in_range = client(ip(5, 2), &rr, rr_ip, Some("range-secret")).await;
    let static_client = client(ip(5, 20), &rr, rr_ip, Some("peer-secret")).await;
    let unsigned = client(ip(5, 3), &rr, rr_ip, None).await;
    assert!(
        eventually(|| established(&in_range, rr_ip)).await,
        "{:?}",
        rr.status().await
    );
    assert!(
        eventually(|| established(&static_client, rr_ip)).await,
        "{:?}",
        rr.status().await
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!established(&unsigned, rr_ip).await);
    for s in [in_range, static_client, unsigned, rr] {
        s.shutdown(None).await;
    }
}

/// A client speaker at `me` in AS `asn` peering with the reflector.
async fn client_in(me: IpAddr, asn: u32, rr: &Speaker, rr_ip: IpAddr) -> Speaker {
    let IpAddr::V4(id) = me else { unreachable!() };
    let mut config = SpeakerConfig::new(asn, id);
    config.hold_time = 9;
    let s = Speaker::start(config).await.unwrap();
    let mut n = NeighborConfig::new(rr_ip, AS);
    n.port = rr.listen_addr().unwrap().port();
    n.local_address = Some(me);
    s.add_neighbor(n).await.unwrap();
    s
}

/// Sends an OPEN from `me` in AS `asn`; returns the reflector's OPEN and
/// the message after it (KEEPALIVE: our OPEN was accepted).
async fn open_from(me: IpAddr, asn: u32, to: SocketAddr) -> (Open, Message) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(me, 0)).unwrap();
    let mut stream = socket.connect(to).await.unwrap();
    let params = SessionParams::default();
    let IpAddr::V4(id) = me else { unreachable!() };
    let open = Open::new(asn, 30, id, vec![]);
    let bytes = Message::Open(open).to_bytes(&params).unwrap();
    stream.write_all(&bytes).await.unwrap();
    let mut buf = bytes::BytesMut::new();
    let mut messages = Vec::new();
    tokio::time::timeout(WAIT, async {
        while messages.len() < 2 {
            if let Some(n) = wire::frame_len(&buf, &params).unwrap() {
                let frame = buf.split_to(n).freeze();
                messages.push(wire::decode(&frame, &params).unwrap());
                continue;
            }
            assert!(stream.read_buf(&mut buf).await.unwrap() > 0, "closed");
        }
    })
    .await
    .unwrap();
    let second = messages.pop().unwrap();
    let Some(Message::Open(open)) = messages.pop() else {
        panic!("no OPEN first");
    };
    (open, second)
}

/// A range's per-neighbour settings reach the neighbours it creates: any
/// AS (an iBGP and an eBGP client both come up, each with its own AS, and
/// the eBGP client's route is reflected to the iBGP one with its AS path),
/// the hold time in our OPEN, the communities set on export, the maximum
/// prefix count (a client over it is closed with Cease / Maximum Number of
/// Prefixes Reached). A range with a fixed AS refuses another AS (Bad
/// Peer AS).
#[tokio::test]
async fn listen_range_settings_apply_to_its_dynamic_neighbors() {
    let rr_ip = ip(6, 1);
    let rr = speaker(rr_ip, true).await;
    let mut range = ListenRange::new("127.0.6.0/28".parse().unwrap(), AS);
    range.asn = PeerAsn::Any;
    range.template.rr_client = true;
    range.template.hold_time = Some(6);
    range.template.max_prefixes = Some(2);
    range.template.export_communities = vec![Community((AS << 16) | 77)];
    rr.add_listen_range(range).await.unwrap();
    let mut fixed = ListenRange::new("127.0.6.16/28".parse().unwrap(), AS);
    fixed.template.hold_time = Some(12);
    rr.add_listen_range(fixed).await.unwrap();
    let to = rr.listen_addr().unwrap();

    // Our OPEN to a peer of the range proposes the range's hold time; any
    // AS is accepted (KEEPALIVE). The fixed range proposes its own hold
    // time, accepts its AS and refuses another with Bad Peer AS.
    let (open, next) = open_from(ip(6, 9), 65123, to).await;
    assert_eq!(open.hold_time, 6);
    assert!(matches!(next, Message::Keepalive), "{next:?}");
    let (open, next) = open_from(ip(6, 17), AS, to).await;
    assert_eq!(open.hold_time, 12);
    assert!(matches!(next, Message::Keepalive), "{next:?}");
    let (_, next) = open_from(ip(6, 18), 65099, to).await;
    let Message::Notification(n) = next else {
        panic!("expected Bad Peer AS, got {next:?}");
    };
    assert_eq!((n.code, n.subcode), (2, 2), "{}", n.describe());

    let ibgp = client_in(ip(6, 2), AS, &rr, rr_ip).await;
    let ebgp = client_in(ip(6, 3), 65099, &rr, rr_ip).await;
    for c in [&ibgp, &ebgp] {
        assert!(
            eventually(|| established(c, rr_ip)).await,
            "{:?}",
            rr.status().await
        );
    }
    // The reflector learned each one's AS from its OPEN.
    let asns = || async {
        let status = rr.status().await;
        let asn_of = |a: IpAddr| status.peers.iter().find(|p| p.address == a).map(|p| p.asn);
        (asn_of(ip(6, 2)), asn_of(ip(6, 3)))
    };
    assert!(
        eventually(|| async { asns().await == (Some(AS), Some(65099)) }).await,
        "{:?}",
        rr.status().await
    );

    // The eBGP client's route reaches the iBGP client through the reflector
    // with its AS path and the range's export community.
    ebgp.originate("10.66.0.0/24".parse().unwrap(), vec![])
        .await
        .unwrap();
    assert!(eventually(|| has_route(&ibgp, "10.66.0.0/24")).await);
    let r = ibgp.routes(Some("10.66.0.0/24".parse().unwrap())).await;
    assert_eq!(r[0].paths[0].as_path, "65099", "{r:?}");
    assert_eq!(r[0].paths[0].communities, vec!["65000:77".to_string()]);

    // Over the range's prefix limit: Cease / Maximum Number of Prefixes.
    for p in ["10.67.0.0/24", "10.67.1.0/24", "10.67.2.0/24"] {
        ibgp.originate(p.parse().unwrap(), vec![]).await.unwrap();
    }
    assert!(
        eventually(|| async {
            ibgp.status().await.peers[0]
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("Maximum Number of Prefixes"))
        })
        .await,
        "{:?}",
        ibgp.status().await
    );
    for s in [ibgp, ebgp, rr] {
        s.shutdown(None).await;
    }
}

/// A range's `local_address` is the next hop towards its dynamic
/// neighbours, in place of our end of their connection; a range whose local
/// address is of the other family is refused.
#[tokio::test]
async fn listen_range_local_address_is_the_next_hop_to_its_peers() {
    let rr_ip = ip(8, 1);
    let rr = speaker(rr_ip, true).await;
    let mut range = ListenRange::new("127.0.8.0/28".parse().unwrap(), AS);
    range.template.local_address = Some(ip(8, 50));
    rr.add_listen_range(range).await.unwrap();
    let mut plain = ListenRange::new("127.0.8.16/28".parse().unwrap(), AS);
    plain.template.rr_client = true;
    rr.add_listen_range(plain).await.unwrap();
    let mut v6 = ListenRange::new("127.0.9.0/28".parse().unwrap(), AS);
    v6.template.local_address = Some("::1".parse().unwrap());
    assert!(matches!(
        rr.add_listen_range(v6).await,
        Err(SpeakerError::ListenRange { .. })
    ));
    rr.originate("10.88.0.0/24".parse().unwrap(), vec![])
        .await
        .unwrap();

    let with = client(ip(8, 2), &rr, rr_ip, None).await;
    let without = client(ip(8, 17), &rr, rr_ip, None).await;
    let next_hop = |s: Speaker| async move {
        assert!(eventually(|| has_route(&s, "10.88.0.0/24")).await);
        let r = s.routes(Some("10.88.0.0/24".parse().unwrap())).await;
        s.shutdown(None).await;
        r[0].paths[0].next_hop
    };
    assert_eq!(next_hop(with).await, Some(ip(8, 50)));
    assert_eq!(next_hop(without).await, Some(rr_ip));
    rr.shutdown(None).await;
}
