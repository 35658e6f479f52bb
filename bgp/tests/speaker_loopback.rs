//! `bgp::speaker` over real TCP on the loopback interface (no root needed):
//! several speakers on distinct 127.0.0.x addresses, each listening on its
//! own address and binding its outgoing sessions to it (the listener routes
//! connections by source address).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bgp::speaker::{BestPathChange, NeighborConfig, PeerStatus, Speaker, SpeakerConfig};
use bgp::wire::{AsPath, Community};
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{timeout, Instant};

const WAIT: Duration = Duration::from_secs(20);

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A speaker listening on 127.0.0.`last`, port chosen by the system.
async fn speaker(asn: u32, last: u8, cluster_id: Option<Ipv4Addr>) -> Speaker {
    let mut config = SpeakerConfig::new(asn, Ipv4Addr::new(10, 0, 0, last));
    config.listen = Some(SocketAddr::new(ip(last), 0));
    config.hold_time = 9;
    config.cluster_id = cluster_id;
    Speaker::start(config).await.unwrap()
}

/// Configures `a` and `b` as neighbours of each other: `a` connects, `b`
/// only accepts.
async fn connect(
    a: &Speaker,
    a_last: u8,
    b: &Speaker,
    b_last: u8,
    rr_client_of_b: bool,
    rr_client_of_a: bool,
) {
    let mut to_b = NeighborConfig::new(ip(b_last), b.config().asn);
    to_b.port = b.listen_addr().unwrap().port();
    to_b.local_address = Some(ip(a_last));
    to_b.rr_client = rr_client_of_a;
    a.add_neighbor(to_b).await.unwrap();
    let mut to_a = NeighborConfig::new(ip(a_last), a.config().asn);
    to_a.port = a.listen_addr().unwrap().port();
    to_a.local_address = Some(ip(b_last));
    to_a.passive = true;
    to_a.rr_client = rr_client_of_b;
    b.add_neighbor(to_a).await.unwrap();
}

/// Waits for a change matching `pred`, skipping others.
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

async fn peer_status(s: &Speaker, address: IpAddr) -> PeerStatus {
    s.status()
        .await
        .peers
        .into_iter()
        .find(|p| p.address == address)
        .expect("peer in status")
}

/// Polls `s`'s status of `address` until `pred` holds.
async fn wait_peer(s: &Speaker, address: IpAddr, pred: impl Fn(&PeerStatus) -> bool) -> PeerStatus {
    let end = Instant::now() + WAIT;
    loop {
        let p = peer_status(s, address).await;
        if pred(&p) {
            return p;
        }
        assert!(Instant::now() < end, "timed out: {p:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn ebgp_chain_originate_withdraw_status_remove() {
    // A (AS 65001, 127.0.0.21) — B (AS 65002, .22) — C (AS 65003, .23).
    let a = speaker(65001, 21, None).await;
    let b = speaker(65002, 22, None).await;
    let c = speaker(65003, 23, None).await;
    let mut at_c = c.subscribe();
    connect(&a, 21, &b, 22, false, false).await;
    connect(&b, 22, &c, 23, false, false).await;
    for (s, peer) in [(&a, ip(22)), (&b, ip(21)), (&b, ip(23)), (&c, ip(22))] {
        wait_peer(s, peer, |p| p.state == "Established").await;
    }

    let prefix: IpNet = "10.1.0.0/24".parse().unwrap();
    let community = Community((65001 << 16) | 7);
    a.originate(prefix, vec![community]).await.unwrap();

    let change = wait_change(&mut at_c, |c| c.prefix == prefix && !c.is_withdrawal()).await;
    assert_eq!(change.next_hops, vec![ip(22)]);
    assert!(!change.local);
    let attrs = &change.paths[0].attrs;
    assert_eq!(attrs.as_path, AsPath::sequence([65002, 65001]));
    assert_eq!(attrs.next_hop, Some(ip(22)));
    assert!(attrs.communities.contains(&community));

    // routes(): the path at C, learned from B.
    let routes = c.routes(Some(prefix)).await;
    assert_eq!(routes.len(), 1);
    let path = &routes[0].paths[0];
    assert!(path.best);
    assert_eq!(path.from, Some(ip(22)));
    assert_eq!(path.as_path, "65002 65001");
    assert_eq!(path.next_hop, Some(ip(22)));
    assert_eq!(path.origin, "IGP");
    assert_eq!(path.communities, vec!["65001:7".to_string()]);
    // At A the path is local.
    let local = a.routes(None).await;
    assert_eq!(local[0].paths[0].from, None);
    assert_eq!(local[0].paths[0].as_path, "");
    // Outside the asked prefix: nothing.
    assert!(c
        .routes(Some("10.2.0.0/16".parse().unwrap()))
        .await
        .is_empty());

    // status() counts at B: one prefix received and accepted from A, one
    // advertised to C (none back to A: it came from there).
    let from_a = wait_peer(&b, ip(21), |p| p.accepted == 1).await;
    assert_eq!((from_a.received, from_a.advertised), (1, 0));
    assert_eq!(from_a.asn, 65001);
    assert!(from_a.uptime_secs.is_some());
    let to_c = wait_peer(&b, ip(23), |p| p.advertised == 1).await;
    assert_eq!((to_c.received, to_c.accepted), (0, 0));
    let status = b.status().await;
    assert_eq!(status.asn, 65002);
    assert_eq!(status.listen, b.listen_addr());

    // A late subscriber starts with the current Loc-RIB.
    let mut late = c.subscribe();
    let snapshot = wait_change(&mut late, |c| c.prefix == prefix).await;
    assert_eq!(snapshot.next_hops, vec![ip(22)]);

    // Withdrawal propagates.
    a.withdraw(prefix).await.unwrap();
    wait_change(&mut at_c, |c| c.prefix == prefix && c.is_withdrawal()).await;
    assert!(c.routes(None).await.is_empty());
    wait_peer(&b, ip(23), |p| p.advertised == 0).await;

    // remove_neighbor: C hears the Cease, its session with B goes down.
    a.originate(prefix, vec![]).await.unwrap();
    wait_change(&mut at_c, |c| c.prefix == prefix && !c.is_withdrawal()).await;
    b.remove_neighbor(ip(23)).await.unwrap();
    assert!(b.status().await.peers.iter().all(|p| p.address != ip(23)));
    let gone = wait_peer(&c, ip(22), |p| p.last_error.is_some()).await;
    let error = gone.last_error.unwrap();
    assert!(error.contains("Cease / Peer De-configured"), "{error}");
    // Not a graceful restart (a NOTIFICATION): the route goes at once.
    wait_change(&mut at_c, |c| c.prefix == prefix && c.is_withdrawal()).await;
    assert!(b.remove_neighbor(ip(23)).await.is_err());

    for s in [&a, &b, &c] {
        s.shutdown(Some("test over".into())).await;
    }
    assert!(a.originate(prefix, vec![]).await.is_err());
    // Subscriptions end with the speaker.
    assert!(
        timeout(WAIT, async { while at_c.recv().await.is_some() {} })
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn route_reflector_sets_originator_and_cluster_list() {
    // B (127.0.0.32) reflects between its iBGP clients A (.31) and C (.33).
    let cluster = Ipv4Addr::new(10, 255, 0, 1);
    let a = speaker(65000, 31, None).await;
    let b = speaker(65000, 32, Some(cluster)).await;
    let c = speaker(65000, 33, None).await;
    let mut at_c = c.subscribe();
    connect(&a, 31, &b, 32, true, false).await;
    connect(&c, 33, &b, 32, true, false).await;

    let prefix: IpNet = "10.2.0.0/24".parse().unwrap();
    a.originate(prefix, vec![]).await.unwrap();
    let change = wait_change(&mut at_c, |c| c.prefix == prefix && !c.is_withdrawal()).await;
    let attrs = &change.paths[0].attrs;
    assert_eq!(attrs.originator_id, Some(Ipv4Addr::new(10, 0, 0, 31)));
    assert_eq!(attrs.cluster_list, vec![cluster]);
    // iBGP: next hop unchanged (A's session address), AS path empty.
    assert_eq!(change.next_hops, vec![ip(31)]);
    assert!(attrs.as_path.is_empty());
    assert_eq!(attrs.local_pref, Some(100));

    let status = b.status().await;
    assert!(status.peers.iter().all(|p| p.rr_client));

    // Reflected withdrawal.
    a.withdraw(prefix).await.unwrap();
    wait_change(&mut at_c, |c| c.prefix == prefix && c.is_withdrawal()).await;
    for s in [&a, &b, &c] {
        s.shutdown(None).await;
    }
}

#[tokio::test]
async fn both_sides_active_and_configuration_errors() {
    // Both speakers connect (a connection collision, RFC 4271 §6.8, that
    // the session layer resolves) and still exchange routes.
    let a = speaker(65101, 41, None).await;
    let b = speaker(65102, 42, None).await;
    let mut at_b = b.subscribe();
    for (from, from_last, to, to_last) in [(&a, 41, &b, 42), (&b, 42, &a, 41)] {
        let mut n = NeighborConfig::new(ip(to_last), to.config().asn);
        n.port = to.listen_addr().unwrap().port();
        n.local_address = Some(ip(from_last));
        from.add_neighbor(n).await.unwrap();
    }
    let prefix: IpNet = "10.3.0.0/24".parse().unwrap();
    a.originate(prefix, vec![]).await.unwrap();
    let change = wait_change(&mut at_b, |c| c.prefix == prefix && !c.is_withdrawal()).await;
    assert_eq!(change.next_hops, vec![ip(41)]);

    // Errors.
    let dup = NeighborConfig::new(ip(42), 65102);
    assert!(a.add_neighbor(dup).await.is_err());
    assert!(a
        .add_neighbor(NeighborConfig::new(ip(43), 0))
        .await
        .is_err());
    assert!(a.remove_neighbor(ip(99)).await.is_err());
    assert!(a
        .originate("2001:db8::/48".parse().unwrap(), vec![])
        .await
        .is_err());
    assert!(
        Speaker::start(SpeakerConfig::new(0, Ipv4Addr::new(1, 1, 1, 1)))
            .await
            .is_err()
    );
    a.shutdown(None).await;
    b.shutdown(None).await;
}
