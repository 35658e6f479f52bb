//! `bgp::rib`: decision process, ECMP, split horizon, route reflection,
//! export rewrites, graceful restart, max-prefix, prefix lists, IPv6, and
//! a randomized check of incremental best-path maintenance.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bgp::rib::{
    Action, Changes, NextHopResolver, PathAttributes, PeerId, PeerInfo, PrefixList, PrefixRule,
    Rib, RibConfig, RibError, Route, RouteSource,
};
use bgp::wire::{
    attr_type, AsPath, AttributeValue, Community, DecodeError, Disposition, ErrorKind, Family,
    MpReach, MpUnreach, NextHop, Nlri, Origin, PathAttribute, SessionParams, Update,
};
use bytes::Bytes;
use ipnet::IpNet;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const LOCAL_AS: u32 = 65000;
const PARAMS: SessionParams = SessionParams {
    four_octet_as: true,
    extended_message: false,
    add_path: bgp::wire::AddPathFamilies::EMPTY,
};
const BOTH: [Family; 2] = [Family::IPV4_UNICAST, Family::IPV6_UNICAST];

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}
fn ip4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn config() -> RibConfig {
    RibConfig::new(LOCAL_AS, ip4("10.0.0.1"))
}

/// One announcement's attributes, built up field by field.
#[derive(Clone)]
struct Ann {
    path: Vec<u32>,
    next_hop: Ipv4Addr,
    origin: Origin,
    med: Option<u32>,
    local_pref: Option<u32>,
    originator: Option<Ipv4Addr>,
    clusters: Vec<Ipv4Addr>,
    communities: Vec<Community>,
    extra: Vec<PathAttribute>,
}

impl Ann {
    fn new(path: &[u32], next_hop: &str) -> Self {
        Ann {
            path: path.to_vec(),
            next_hop: ip4(next_hop),
            origin: Origin::Igp,
            med: None,
            local_pref: None,
            originator: None,
            clusters: Vec::new(),
            communities: Vec::new(),
            extra: Vec::new(),
        }
    }
    fn med(mut self, m: u32) -> Self {
        self.med = Some(m);
        self
    }
    fn lp(mut self, l: u32) -> Self {
        self.local_pref = Some(l);
        self
    }
    fn origin(mut self, o: Origin) -> Self {
        self.origin = o;
        self
    }
    fn originator(mut self, o: &str) -> Self {
        self.originator = Some(ip4(o));
        self
    }
    fn clusters(mut self, c: &[&str]) -> Self {
        self.clusters = c.iter().map(|s| ip4(s)).collect();
        self
    }

    fn common(&self) -> Vec<PathAttribute> {
        let mut a = vec![
            PathAttribute::new(AttributeValue::Origin(self.origin)),
            PathAttribute::new(AttributeValue::AsPath(AsPath::sequence(
                self.path.iter().copied(),
            ))),
        ];
        if let Some(m) = self.med {
            a.push(PathAttribute::new(AttributeValue::MultiExitDisc(m)));
        }
        if let Some(l) = self.local_pref {
            a.push(PathAttribute::new(AttributeValue::LocalPref(l)));
        }
        if let Some(o) = self.originator {
            a.push(PathAttribute::new(AttributeValue::OriginatorId(o)));
        }
        if !self.clusters.is_empty() {
            a.push(PathAttribute::new(AttributeValue::ClusterList(
                self.clusters.clone(),
            )));
        }
        if !self.communities.is_empty() {
            a.push(PathAttribute::new(AttributeValue::Communities(
                self.communities.clone(),
            )));
        }
        a.extend(self.extra.iter().cloned());
        a
    }

    /// An IPv4 UPDATE announcing `prefixes`.
    fn update(&self, prefixes: &[&str]) -> Update {
        let mut attributes = self.common();
        attributes.push(PathAttribute::new(AttributeValue::NextHop(self.next_hop)));
        Update {
            attributes,
            nlri: prefixes.iter().map(|p| Nlri::new(net(p))).collect(),
            ..Update::default()
        }
    }

    /// An MP_REACH_NLRI UPDATE announcing IPv6 `prefixes` via `next_hop`.
    fn update_v6(&self, prefixes: &[&str], next_hop: &str) -> Update {
        let mut attributes = self.common();
        attributes.push(PathAttribute::new(AttributeValue::MpReach(Box::new(
            MpReach {
                family: Family::IPV6_UNICAST,
                next_hop: NextHop::Ipv6 {
                    global: next_hop.parse().unwrap(),
                    link_local: None,
                },
                nlri: prefixes.iter().map(|p| Nlri::new(net(p))).collect(),
                unparsed: Bytes::new(),
            },
        ))));
        Update {
            attributes,
            ..Update::default()
        }
    }
}

fn withdraw(prefixes: &[&str]) -> Update {
    Update {
        withdrawn: prefixes.iter().map(|p| Nlri::new(net(p))).collect(),
        ..Update::default()
    }
}

fn peer_info(address: &str, asn: u32) -> PeerInfo {
    let mut info = PeerInfo::new(address.parse().unwrap(), asn, asn == LOCAL_AS);
    info.local_ipv4 = Some(ip4("10.0.0.1"));
    info.local_ipv6 = Some("fd00::1".parse().unwrap());
    info
}

/// Adds and brings up a peer.
fn add(rib: &mut Rib, info: PeerInfo, router_id: &str) -> PeerId {
    let id = rib.add_peer(info);
    rib.peer_up(id, ip4(router_id), &BOTH).unwrap();
    id
}
fn ebgp(rib: &mut Rib, address: &str, asn: u32, router_id: &str) -> PeerId {
    add(rib, peer_info(address, asn), router_id)
}
fn ibgp(rib: &mut Rib, address: &str, router_id: &str, client: bool) -> PeerId {
    let mut info = peer_info(address, LOCAL_AS);
    info.rr_client = client;
    add(rib, info, router_id)
}

fn announce(rib: &mut Rib, peer: PeerId, update: &Update) -> Changes {
    rib.apply_update(peer, update, &PARAMS).unwrap()
}

fn best_source(rib: &Rib, prefix: &str) -> Option<RouteSource> {
    rib.best(&net(prefix)).first().map(|r| r.source())
}

const P: &str = "10.244.1.0/26";

/// Two peers `a` (lower address 10.1.0.2, lower router id 10.9.0.2) and `b`
/// (10.1.0.3, 10.9.0.3): `a` wins every tie-break after the step under test,
/// so `b` winning shows the step decided.
fn pair(rib: &mut Rib, a_asn: u32, b_asn: u32) -> (PeerId, PeerId) {
    let a = add(rib, peer_info("10.1.0.2", a_asn), "10.9.0.2");
    let b = add(rib, peer_info("10.1.0.3", b_asn), "10.9.0.3");
    (a, b)
}

fn race(rib: &mut Rib, a: PeerId, ann_a: Ann, b: PeerId, ann_b: Ann) -> Option<RouteSource> {
    announce(rib, a, &ann_a.update(&[P]));
    announce(rib, b, &ann_b.update(&[P]));
    best_source(rib, P)
}

// ---- decision steps in isolation ----

#[test]
fn tie_breaks_alone_prefer_lower_router_id_then_address() {
    let mut rib = Rib::new(config());
    let (a, b) = pair(&mut rib, LOCAL_AS, LOCAL_AS);
    let w = race(
        &mut rib,
        a,
        Ann::new(&[65001], "10.1.0.2"),
        b,
        Ann::new(&[65001], "10.1.0.3"),
    );
    assert_eq!(w, Some(RouteSource::Peer(a)));
}

#[test]
fn higher_local_pref_wins() {
    let mut rib = Rib::new(config());
    let (a, b) = pair(&mut rib, LOCAL_AS, LOCAL_AS);
    let w = race(
        &mut rib,
        a,
        Ann::new(&[65001], "10.1.0.2").lp(100),
        b,
        Ann::new(&[65001], "10.1.0.3").lp(200),
    );
    assert_eq!(w, Some(RouteSource::Peer(b)));
}

#[test]
fn local_pref_from_ebgp_is_ignored_and_default_applies() {
    let mut cfg = config();
    cfg.default_local_pref = 300;
    let mut rib = Rib::new(cfg);
    // a: iBGP with LOCAL_PREF 200; b: eBGP claiming 1000 (ignored → 300).
    let (a, b) = pair(&mut rib, LOCAL_AS, 65001);
    let w = race(
        &mut rib,
        a,
        Ann::new(&[65001], "10.1.0.2").lp(200),
        b,
        Ann::new(&[65001, 65002], "10.1.0.3").lp(1000),
    );
    assert_eq!(w, Some(RouteSource::Peer(b)));
    assert_eq!(rib.best(&net(P))[0].attrs.local_pref, None);
}

#[test]
fn shorter_as_path_wins() {
    let mut rib = Rib::new(config());
    let (a, b) = pair(&mut rib, 65001, 65002);
    let w = race(
        &mut rib,
        a,
        Ann::new(&[65001, 65009], "10.1.0.2"),
        b,
        Ann::new(&[65002], "10.1.0.3"),
    );
    assert_eq!(w, Some(RouteSource::Peer(b)));
}

#[test]
fn lower_origin_wins() {
    let mut rib = Rib::new(config());
    let (a, b) = pair(&mut rib, 65001, 65002);
    let w = race(
        &mut rib,
        a,
        Ann::new(&[65001], "10.1.0.2").origin(Origin::Incomplete),
        b,
        Ann::new(&[65002], "10.1.0.3").origin(Origin::Egp),
    );
    assert_eq!(w, Some(RouteSource::Peer(b)));
}

#[test]
fn lower_med_wins_within_the_same_neighbour_as() {
    let mut rib = Rib::new(config());
    let (a, b) = pair(&mut rib, 65001, 65001);
    let w = race(
        &mut rib,
        a,
        Ann::new(&[65001], "10.1.0.2").med(20),
        b,
        Ann::new(&[65001], "10.1.0.3").med(10),
    );
    assert_eq!(w, Some(RouteSource::Peer(b)));
}

#[test]
fn missing_med_counts_as_zero() {
    let mut rib = Rib::new(config());
    let (a, b) = pair(&mut rib, 65001, 65001);
    let w = race(
        &mut rib,
        a,
        Ann::new(&[65001], "10.1.0.2").med(1),
        b,
        Ann::new(&[65001], "10.1.0.3"),
    );
    assert_eq!(w, Some(RouteSource::Peer(b)));
}

#[test]
fn med_is_not_compared_across_neighbour_ases_unless_configured() {
    let mut rib = Rib::new(config());
    let (a, b) = pair(&mut rib, 65001, 65002);
    let w = race(
        &mut rib,
        a,
        Ann::new(&[65001], "10.1.0.2").med(20),
        b,
        Ann::new(&[65002], "10.1.0.3").med(10),
    );
    assert_eq!(
        w,
        Some(RouteSource::Peer(a)),
        "MED ignored: router id decides"
    );

    let mut cfg = config();
    cfg.always_compare_med = true;
    let mut rib = Rib::new(cfg);
    let (a, b) = pair(&mut rib, 65001, 65002);
    let w = race(
        &mut rib,
        a,
        Ann::new(&[65001], "10.1.0.2").med(20),
        b,
        Ann::new(&[65002], "10.1.0.3").med(10),
    );
    assert_eq!(w, Some(RouteSource::Peer(b)));
}

#[test]
fn med_elimination_is_per_neighbour_as() {
    // a (AS 65001, MED 5), b (AS 65001, MED 50), c (AS 65002, MED 1).
    // b is removed by a; a and c both survive MED; a wins on router id.
    // A pairwise sort could wrongly pick by the c–b or c–a order.
    let mut rib = Rib::new(config());
    let (a, b) = pair(&mut rib, 65001, 65001);
    let c = add(&mut rib, peer_info("10.1.0.4", 65002), "10.9.0.4");
    announce(
        &mut rib,
        c,
        &Ann::new(&[65002], "10.1.0.4").med(1).update(&[P]),
    );
    announce(
        &mut rib,
        b,
        &Ann::new(&[65001], "10.1.0.3").med(50).update(&[P]),
    );
    announce(
        &mut rib,
        a,
        &Ann::new(&[65001], "10.1.0.2").med(5).update(&[P]),
    );
    assert_eq!(best_source(&rib, P), Some(RouteSource::Peer(a)));
    announce(&mut rib, a, &withdraw(&[P]));
    // Now b survives MED (nothing lower in 65001) beside c, and wins on
    // router id (10.9.0.3 < 10.9.0.4) despite c's lower MED.
    assert_eq!(best_source(&rib, P), Some(RouteSource::Peer(b)));
}

#[test]
fn ebgp_beats_ibgp() {
    let mut rib = Rib::new(config());
    let (a, b) = pair(&mut rib, LOCAL_AS, 65001);
    let w = race(
        &mut rib,
        a,
        Ann::new(&[65001], "10.1.0.2"),
        b,
        Ann::new(&[65001], "10.1.0.3"),
    );
    assert_eq!(w, Some(RouteSource::Peer(b)));
}

/// Resolver with per-address answers; unknown addresses cost 0.
struct Costs(HashMap<IpAddr, Option<u32>>);
impl NextHopResolver for Costs {
    fn resolve(&self, next_hop: IpAddr) -> Option<u32> {
        self.0.get(&next_hop).copied().unwrap_or(Some(0))
    }
}

#[test]
fn lower_igp_cost_wins_and_unreachable_next_hops_are_excluded() {
    let mut rib = Rib::new(config());
    let (a, b) = pair(&mut rib, LOCAL_AS, LOCAL_AS);
    rib.set_resolver(Box::new(Costs(HashMap::from([
        (IpAddr::V4(ip4("10.1.0.2")), Some(10)),
        (IpAddr::V4(ip4("10.1.0.3")), Some(5)),
    ]))));
    let w = race(
        &mut rib,
        a,
        Ann::new(&[65001], "10.1.0.2"),
        b,
        Ann::new(&[65001], "10.1.0.3"),
    );
    assert_eq!(w, Some(RouteSource::Peer(b)));
    // b's next hop becomes unreachable: even a higher LOCAL_PREF can't help.
    announce(
        &mut rib,
        b,
        &Ann::new(&[65001], "10.1.0.3").lp(500).update(&[P]),
    );
    let changes = rib.set_resolver(Box::new(Costs(HashMap::from([(
        IpAddr::V4(ip4("10.1.0.3")),
        None,
    )]))));
    assert_eq!(best_source(&rib, P), Some(RouteSource::Peer(a)));
    assert_eq!(changes.best.len(), 1);
}

#[test]
fn originator_id_stands_in_for_router_id() {
    let mut rib = Rib::new(config());
    let (a, b) = pair(&mut rib, LOCAL_AS, LOCAL_AS);
    // b's ORIGINATOR_ID is lower than a's router id.
    let w = race(
        &mut rib,
        a,
        Ann::new(&[65001], "10.1.0.2"),
        b,
        Ann::new(&[65001], "10.1.0.3").originator("1.1.1.1"),
    );
    assert_eq!(w, Some(RouteSource::Peer(b)));
}

#[test]
fn shorter_cluster_list_wins() {
    let mut rib = Rib::new(config());
    let (a, b) = pair(&mut rib, LOCAL_AS, LOCAL_AS);
    let w = race(
        &mut rib,
        a,
        Ann::new(&[65001], "10.1.0.2")
            .originator("1.1.1.1")
            .clusters(&["2.2.2.2", "3.3.3.3"]),
        b,
        Ann::new(&[65001], "10.1.0.3")
            .originator("1.1.1.1")
            .clusters(&["2.2.2.2"]),
    );
    assert_eq!(w, Some(RouteSource::Peer(b)));
}

#[test]
fn lowest_peer_address_breaks_the_last_tie() {
    let mut rib = Rib::new(config());
    // b has the lower address but the same originator as a.
    let a = add(&mut rib, peer_info("10.1.0.9", LOCAL_AS), "10.9.0.1");
    let b = add(&mut rib, peer_info("10.1.0.3", LOCAL_AS), "10.9.0.2");
    let w = race(
        &mut rib,
        a,
        Ann::new(&[65001], "10.1.0.9").originator("1.1.1.1"),
        b,
        Ann::new(&[65001], "10.1.0.3").originator("1.1.1.1"),
    );
    assert_eq!(w, Some(RouteSource::Peer(b)));
}

#[test]
fn local_routes_win_over_learned_ones() {
    let mut rib = Rib::new(config());
    let (a, _) = pair(&mut rib, LOCAL_AS, LOCAL_AS);
    announce(
        &mut rib,
        a,
        &Ann::new(&[], "10.1.0.2").lp(1000).update(&[P]),
    );
    let attrs = PathAttributes {
        origin: Origin::Incomplete,
        ..PathAttributes::default()
    };
    let changes = rib.originate(net(P), attrs);
    assert_eq!(best_source(&rib, P), Some(RouteSource::Local));
    assert_eq!(changes.best.len(), 1);
    rib.withdraw_local(net(P));
    assert_eq!(best_source(&rib, P), Some(RouteSource::Peer(a)));
}

// ---- steps in order ----

#[test]
fn an_earlier_step_beats_a_later_one() {
    // Each case: a is better at an earlier step, b at every later one.
    let cases: Vec<(u32, Ann, u32, Ann)> = vec![
        // LOCAL_PREF over AS_PATH length.
        (
            LOCAL_AS,
            Ann::new(&[65001, 65002, 65003], "10.1.0.2").lp(200),
            LOCAL_AS,
            Ann::new(&[65001], "10.1.0.3").lp(100),
        ),
        // AS_PATH length over ORIGIN.
        (
            65001,
            Ann::new(&[65001], "10.1.0.2").origin(Origin::Incomplete),
            65001,
            Ann::new(&[65001, 65002], "10.1.0.3"),
        ),
        // ORIGIN over MED.
        (
            65001,
            Ann::new(&[65001], "10.1.0.2").med(100),
            65001,
            Ann::new(&[65001], "10.1.0.3").origin(Origin::Egp).med(1),
        ),
        // MED over eBGP/iBGP.
        (
            LOCAL_AS,
            Ann::new(&[65001], "10.1.0.2").med(1),
            65001,
            Ann::new(&[65001], "10.1.0.3").med(100),
        ),
        // eBGP/iBGP over router id (b's ORIGINATOR_ID is the lowest).
        (
            65001,
            Ann::new(&[65001], "10.1.0.2"),
            LOCAL_AS,
            Ann::new(&[65001], "10.1.0.3").originator("1.1.1.1"),
        ),
    ];
    for (i, (a_asn, ann_a, b_asn, ann_b)) in cases.into_iter().enumerate() {
        let mut rib = Rib::new(config());
        // Here a gets the *worse* tie-breaks: higher address and router id.
        let b = add(&mut rib, peer_info("10.1.0.2", b_asn), "10.9.0.2");
        let a = add(&mut rib, peer_info("10.1.0.3", a_asn), "10.9.0.3");
        let w = race(&mut rib, a, ann_a, b, ann_b);
        assert_eq!(w, Some(RouteSource::Peer(a)), "case {i}");
    }
}

// ---- ECMP ----

#[test]
fn ecmp_returns_the_tied_set_up_to_max_paths() {
    let mut cfg = config();
    cfg.max_paths = 2;
    let mut rib = Rib::new(cfg);
    let peers: Vec<PeerId> = (2..5)
        .map(|i| {
            ebgp(
                &mut rib,
                &format!("10.1.0.{i}"),
                65000 + i,
                &format!("10.9.0.{i}"),
            )
        })
        .collect();
    for (i, p) in peers.iter().enumerate() {
        let asn = 65002 + i as u32;
        let nh = format!("10.1.0.{}", i + 2);
        announce(&mut rib, *p, &Ann::new(&[asn], &nh).update(&[P]));
    }
    let best = rib.best(&net(P));
    assert_eq!(best.len(), 2);
    assert_eq!(best[0].source(), RouteSource::Peer(peers[0]));
    assert_eq!(best[1].source(), RouteSource::Peer(peers[1]));

    let mut cfg = config();
    cfg.max_paths = 8;
    let mut rib = Rib::new(cfg);
    let peers: Vec<PeerId> = (2..5)
        .map(|i| {
            ebgp(
                &mut rib,
                &format!("10.1.0.{i}"),
                65000 + i,
                &format!("10.9.0.{i}"),
            )
        })
        .collect();
    for (i, p) in peers.iter().enumerate() {
        let nh = format!("10.1.0.{}", i + 2);
        // The third has a longer path: not equal.
        let path: Vec<u32> = if i == 2 {
            vec![1, 2]
        } else {
            vec![65002 + i as u32]
        };
        announce(&mut rib, *p, &Ann::new(&path, &nh).update(&[P]));
    }
    assert_eq!(rib.best(&net(P)).len(), 2);
    // Different MEDs (different neighbour ASes, so both survive MED) are
    // not multipath-equal.
    announce(
        &mut rib,
        peers[1],
        &Ann::new(&[65003], "10.1.0.3").med(7).update(&[P]),
    );
    assert_eq!(rib.best(&net(P)).len(), 1);
}

#[test]
fn ecmp_needs_equal_ebgp_ibgp_and_distinct_next_hops() {
    let mut cfg = config();
    cfg.max_paths = 4;
    let mut rib = Rib::new(cfg);
    let e = ebgp(&mut rib, "10.1.0.2", 65002, "10.9.0.2");
    let i = ibgp(&mut rib, "10.1.0.3", "10.9.0.3", false);
    announce(&mut rib, e, &Ann::new(&[65002], "10.1.0.2").update(&[P]));
    announce(&mut rib, i, &Ann::new(&[65002], "10.1.0.3").update(&[P]));
    assert_eq!(rib.best(&net(P)).len(), 1);
    let e2 = ebgp(&mut rib, "10.1.0.4", 65004, "10.9.0.4");
    // Same next hop as e: adds nothing to forward over.
    announce(&mut rib, e2, &Ann::new(&[65004], "10.1.0.2").update(&[P]));
    assert_eq!(rib.best(&net(P)).len(), 1);
    let changes = announce(&mut rib, e2, &Ann::new(&[65004], "10.1.0.4").update(&[P]));
    assert_eq!(rib.best(&net(P)).len(), 2);
    assert_eq!(changes.best.len(), 1);
    assert_eq!(changes.best[0].paths.len(), 2);
}

// ---- split horizon and route reflection ----

fn sent(changes: &Changes, peer: PeerId) -> Vec<IpNet> {
    changes
        .for_peer(peer)
        .announce
        .iter()
        .map(|r| r.nlri.prefix)
        .collect()
}

#[test]
fn ibgp_split_horizon_without_reflection() {
    let mut rib = Rib::new(config());
    let i1 = ibgp(&mut rib, "10.1.0.2", "10.9.0.2", false);
    let i2 = ibgp(&mut rib, "10.1.0.3", "10.9.0.3", false);
    let e = ebgp(&mut rib, "10.2.0.2", 65002, "10.9.0.4");
    let c = announce(&mut rib, i1, &Ann::new(&[65001], "10.1.0.2").update(&[P]));
    assert!(sent(&c, i2).is_empty());
    assert!(sent(&c, i1).is_empty(), "never back to the source");
    assert_eq!(sent(&c, e), vec![net(P)]);
    // eBGP-learned routes go to every iBGP peer.
    let q = "10.244.2.0/26";
    let c = announce(&mut rib, e, &Ann::new(&[65002], "10.2.0.2").update(&[q]));
    assert_eq!(sent(&c, i1), vec![net(q)]);
    assert_eq!(sent(&c, i2), vec![net(q)]);
    assert!(sent(&c, e).is_empty());
}

#[test]
fn reflection_rules_and_attributes() {
    let mut cfg = config();
    cfg.cluster_id = Some(ip4("9.9.9.9"));
    let mut rib = Rib::new(cfg);
    let c1 = ibgp(&mut rib, "10.1.0.2", "10.9.0.2", true);
    let c2 = ibgp(&mut rib, "10.1.0.3", "10.9.0.3", true);
    let n1 = ibgp(&mut rib, "10.1.0.4", "10.9.0.4", false);
    let n2 = ibgp(&mut rib, "10.1.0.5", "10.9.0.5", false);
    let e = ebgp(&mut rib, "10.2.0.2", 65002, "10.9.0.6");

    // From a client: to all clients and non-clients (and eBGP), not back.
    let ch = announce(
        &mut rib,
        c1,
        &Ann::new(&[], "10.1.0.2").update(&["10.244.1.0/26"]),
    );
    for p in [c2, n1, n2, e] {
        assert_eq!(sent(&ch, p).len(), 1, "{p:?}");
    }
    assert!(sent(&ch, c1).is_empty());
    let to_c2 = &ch.for_peer(c2).announce[0].attrs;
    assert_eq!(to_c2.originator_id, Some(ip4("10.9.0.2")));
    assert_eq!(to_c2.cluster_list, vec![ip4("9.9.9.9")]);
    assert_eq!(to_c2.next_hop, Some(IpAddr::V4(ip4("10.1.0.2"))));
    assert_eq!(to_c2.local_pref, Some(100));
    let to_e = &ch.for_peer(e).announce[0].attrs;
    assert_eq!(to_e.originator_id, None);
    assert!(to_e.cluster_list.is_empty());

    // From a non-client: to clients only.
    let ch = announce(
        &mut rib,
        n1,
        &Ann::new(&[], "10.1.0.4").update(&["10.244.2.0/26"]),
    );
    assert_eq!(sent(&ch, c1).len(), 1);
    assert_eq!(sent(&ch, c2).len(), 1);
    assert!(sent(&ch, n2).is_empty());
    assert!(sent(&ch, n1).is_empty());
    assert_eq!(sent(&ch, e).len(), 1);

    // An existing ORIGINATOR_ID is kept; our cluster goes in front.
    let ch = announce(
        &mut rib,
        n1,
        &Ann::new(&[], "10.1.0.4")
            .originator("7.7.7.7")
            .clusters(&["8.8.8.8"])
            .update(&["10.244.3.0/26"]),
    );
    let to_c1 = &ch.for_peer(c1).announce[0].attrs;
    assert_eq!(to_c1.originator_id, Some(ip4("7.7.7.7")));
    assert_eq!(to_c1.cluster_list, vec![ip4("9.9.9.9"), ip4("8.8.8.8")]);

    // From eBGP: to all, without reflection attributes.
    let ch = announce(
        &mut rib,
        e,
        &Ann::new(&[65002], "10.2.0.2").update(&["10.244.4.0/26"]),
    );
    for p in [c1, c2, n1, n2] {
        let r = &ch.for_peer(p).announce[0].attrs;
        assert_eq!(r.originator_id, None);
        assert!(r.cluster_list.is_empty());
    }
}

#[test]
fn reflection_loops_and_own_as_are_dropped() {
    let mut cfg = config();
    cfg.cluster_id = Some(ip4("9.9.9.9"));
    let mut rib = Rib::new(cfg);
    let c1 = ibgp(&mut rib, "10.1.0.2", "10.9.0.2", true);
    let e = ebgp(&mut rib, "10.2.0.2", 65002, "10.9.0.6");
    // ORIGINATOR_ID is us.
    announce(
        &mut rib,
        c1,
        &Ann::new(&[], "10.1.0.2")
            .originator("10.0.0.1")
            .update(&[P]),
    );
    assert!(rib.best(&net(P)).is_empty());
    // Our cluster in CLUSTER_LIST.
    announce(
        &mut rib,
        c1,
        &Ann::new(&[], "10.1.0.2")
            .originator("1.1.1.1")
            .clusters(&["5.5.5.5", "9.9.9.9"])
            .update(&[P]),
    );
    assert!(rib.best(&net(P)).is_empty());
    // Our AS in an eBGP path.
    announce(
        &mut rib,
        e,
        &Ann::new(&[65002, LOCAL_AS, 65003], "10.2.0.2").update(&[P]),
    );
    assert!(rib.best(&net(P)).is_empty());
    // A looped re-announcement withdraws the earlier good path.
    announce(&mut rib, e, &Ann::new(&[65002], "10.2.0.2").update(&[P]));
    assert_eq!(rib.best(&net(P)).len(), 1);
    let ch = announce(
        &mut rib,
        e,
        &Ann::new(&[65002, LOCAL_AS], "10.2.0.2").update(&[P]),
    );
    assert!(rib.best(&net(P)).is_empty());
    assert_eq!(ch.best.len(), 1);
    assert!(ch.best[0].paths.is_empty());
    assert_eq!(ch.for_peer(c1).withdraw, vec![Nlri::new(net(P))]);
}

// ---- eBGP export rewrites ----

#[test]
fn ebgp_export_rewrites() {
    let mut rib = Rib::new(config());
    let i = ibgp(&mut rib, "10.1.0.2", "10.9.0.2", false);
    let mut info = peer_info("10.2.0.2", 65002);
    info.policy.export_communities = vec![Community(0xFDE8_0001)];
    let e = add(&mut rib, info, "10.9.0.6");
    let mut ann = Ann::new(&[65001], "10.1.0.7")
        .lp(300)
        .med(40)
        .originator("7.7.7.7")
        .clusters(&["8.8.8.8"]);
    ann.communities = vec![Community(0xFDE8_0064)];
    ann.extra = vec![
        PathAttribute {
            flags: 0xC0, // optional transitive
            value: AttributeValue::Unknown {
                type_code: 99,
                data: Bytes::from_static(b"x"),
            },
        },
        PathAttribute {
            flags: 0x80, // optional non-transitive
            value: AttributeValue::Unknown {
                type_code: 98,
                data: Bytes::from_static(b"y"),
            },
        },
    ];
    let ch = announce(&mut rib, i, &ann.update(&[P]));
    let out = &ch.for_peer(e).announce;
    assert_eq!(out.len(), 1);
    let a = &out[0].attrs;
    assert_eq!(a.as_path, AsPath::sequence([LOCAL_AS, 65001]));
    assert_eq!(a.next_hop, Some(IpAddr::V4(ip4("10.0.0.1"))));
    assert_eq!(a.local_pref, None);
    assert_eq!(a.med, None);
    assert_eq!(a.originator_id, None);
    assert!(a.cluster_list.is_empty());
    assert_eq!(
        a.communities,
        vec![Community(0xFDE8_0001), Community(0xFDE8_0064)]
    );
    assert_eq!(a.unknown.len(), 1);
    assert_eq!(a.unknown[0].type_code(), 99);
    assert!(a.unknown[0].is_partial());
    let wire = a.to_wire_attributes();
    assert!(wire
        .iter()
        .all(|w| w.type_code() != attr_type::LOCAL_PREF && w.type_code() != attr_type::NEXT_HOP));
    assert_eq!(a.mp_next_hop(), Some(NextHop::Ipv4(ip4("10.0.0.1"))));
}

#[test]
fn local_med_is_sent_only_when_configured_and_next_hop_self_for_ibgp() {
    let mut rib = Rib::new(config());
    let mut info = peer_info("10.2.0.2", 65002);
    info.policy.send_med = true;
    let e = add(&mut rib, info, "10.9.0.6");
    let mut info = peer_info("10.1.0.2", LOCAL_AS);
    info.policy.next_hop_self = true;
    let i = add(&mut rib, info, "10.9.0.2");
    let ch = rib.originate(
        net(P),
        PathAttributes {
            med: Some(5),
            ..PathAttributes::default()
        },
    );
    let to_e = &ch.for_peer(e).announce[0].attrs;
    assert_eq!(to_e.med, Some(5));
    assert_eq!(to_e.as_path, AsPath::sequence([LOCAL_AS]));
    let to_i = &ch.for_peer(i).announce[0].attrs;
    assert_eq!(to_i.next_hop, Some(IpAddr::V4(ip4("10.0.0.1"))));
    assert_eq!(to_i.local_pref, Some(100));
    assert!(to_i.as_path.is_empty());
    // eBGP-learned route to iBGP with next-hop-self.
    let e2 = ebgp(&mut rib, "10.3.0.2", 65003, "10.9.0.7");
    let ch = announce(
        &mut rib,
        e2,
        &Ann::new(&[65003], "10.3.0.2").update(&["10.5.0.0/16"]),
    );
    assert_eq!(
        ch.for_peer(i).announce[0].attrs.next_hop,
        Some(IpAddr::V4(ip4("10.0.0.1")))
    );
}

#[test]
fn well_known_communities_limit_export() {
    let mut rib = Rib::new(config());
    let src = ebgp(&mut rib, "10.2.0.2", 65002, "10.9.0.6");
    let e = ebgp(&mut rib, "10.3.0.2", 65003, "10.9.0.7");
    let i = ibgp(&mut rib, "10.1.0.2", "10.9.0.2", false);
    let mut ann = Ann::new(&[65002], "10.2.0.2");
    ann.communities = vec![Community::NO_EXPORT];
    let ch = announce(&mut rib, src, &ann.update(&[P]));
    assert!(sent(&ch, e).is_empty());
    assert_eq!(sent(&ch, i).len(), 1);
    ann.communities = vec![Community::NO_ADVERTISE];
    let ch = announce(&mut rib, src, &ann.update(&[P]));
    assert_eq!(ch.for_peer(i).withdraw.len(), 1);
    assert!(rib.adj_rib_out(i).is_empty());
}

// ---- UPDATE handling ----

#[test]
fn treat_as_withdraw_withdraws_everything_announced() {
    let mut rib = Rib::new(config());
    let e = ebgp(&mut rib, "10.2.0.2", 65002, "10.9.0.6");
    announce(
        &mut rib,
        e,
        &Ann::new(&[65002], "10.2.0.2").update(&[P, "10.5.0.0/16"]),
    );
    assert_eq!(rib.loc_rib().count(), 2);
    let mut bad = Ann::new(&[65002], "10.2.0.2").update(&[P, "10.5.0.0/16"]);
    bad.faults.push(DecodeError::new(
        ErrorKind::MalformedAsPath("test"),
        Bytes::new(),
        Disposition::TreatAsWithdraw,
    ));
    assert!(bad.treat_as_withdraw());
    let ch = announce(&mut rib, e, &bad);
    assert_eq!(rib.loc_rib().count(), 0);
    assert_eq!(ch.best.len(), 2);
}

#[test]
fn graceful_restart_keeps_stale_paths_until_end_of_rib() {
    let mut rib = Rib::new(config());
    let e = ebgp(&mut rib, "10.2.0.2", 65002, "10.9.0.6");
    let i = ibgp(&mut rib, "10.1.0.2", "10.9.0.2", false);
    let q = "10.5.0.0/16";
    announce(&mut rib, e, &Ann::new(&[65002], "10.2.0.2").update(&[P, q]));
    announce(
        &mut rib,
        e,
        &Ann::new(&[65002], "10.2.0.2").update_v6(&["fd00:5::/48"], "fd00::2"),
    );
    let ch = rib.peer_down_graceful(e, &[Family::IPV4_UNICAST]).unwrap();
    // IPv4 kept (stale, still best, nothing re-sent); IPv6 not preserved.
    assert_eq!(rib.best(&net(P)).len(), 1);
    assert!(rib.best(&net(P))[0].stale());
    assert!(rib.best(&net("fd00:5::/48")).is_empty());
    assert_eq!(ch.best.len(), 1);
    assert_eq!(ch.for_peer(i).withdraw, vec![Nlri::new(net("fd00:5::/48"))]);
    assert!(rib.adj_rib_in(e).iter().all(|(_, r)| r.stale()));

    rib.peer_up(e, ip4("10.9.0.6"), &BOTH).unwrap();
    let ch = announce(&mut rib, e, &Ann::new(&[65002], "10.2.0.2").update(&[P]));
    assert!(ch.best.is_empty(), "same path refreshed: no best change");
    assert!(!rib.best(&net(P))[0].stale());
    assert!(rib.best(&net(q))[0].stale());
    let ch = announce(&mut rib, e, &Update::end_of_rib(Family::IPV4_UNICAST));
    assert!(rib.best(&net(q)).is_empty());
    assert_eq!(rib.best(&net(P)).len(), 1);
    assert_eq!(ch.best.len(), 1);
    assert_eq!(ch.for_peer(i).withdraw, vec![Nlri::new(net(q))]);
}

/// RFC 7313 §4: a BoRR marks the peer's paths of one family stale without
/// any best-path change; the re-announced ones lose the mark, and the EoRR
/// (a sweep) removes only the rest. Other families and peers are untouched.
#[test]
fn enhanced_route_refresh_marks_then_sweeps_one_family() {
    let mut rib = Rib::new(config());
    let e = ebgp(&mut rib, "10.2.0.2", 65002, "10.9.0.6");
    let other = ebgp(&mut rib, "10.3.0.2", 65003, "10.9.0.7");
    let i = ibgp(&mut rib, "10.1.0.2", "10.9.0.2", false);
    let q = "10.5.0.0/16";
    let ann = Ann::new(&[65002], "10.2.0.2");
    announce(&mut rib, e, &ann.update(&[P, q]));
    announce(&mut rib, e, &ann.update_v6(&["fd00:5::/48"], "fd00::2"));
    announce(
        &mut rib,
        other,
        &Ann::new(&[65003], "10.3.0.2").update(&["10.6.0.0/16"]),
    );

    assert_eq!(rib.mark_stale(e, Family::IPV4_UNICAST).unwrap(), 2);
    assert!(rib.best(&net(P))[0].stale() && rib.best(&net(q))[0].stale());
    assert!(!rib.best(&net("fd00:5::/48"))[0].stale());
    assert!(!rib.best(&net("10.6.0.0/16"))[0].stale());

    // The refresh re-announces P only: P is fresh again, nothing changes.
    let ch = announce(&mut rib, e, &ann.update(&[P]));
    assert!(ch.best.is_empty(), "same path refreshed: no best change");
    assert!(!rib.best(&net(P))[0].stale());
    assert!(rib.best(&net(q))[0].stale());

    // EoRR: q, no longer announced, goes (and is withdrawn from i).
    let ch = rib.sweep_stale(e, Family::IPV4_UNICAST).unwrap();
    assert!(rib.best(&net(q)).is_empty());
    assert_eq!(rib.best(&net(P)).len(), 1);
    assert_eq!(rib.best(&net("fd00:5::/48")).len(), 1);
    assert_eq!(rib.best(&net("10.6.0.0/16")).len(), 1);
    assert_eq!(ch.best.len(), 1);
    assert_eq!(ch.for_peer(i).withdraw, vec![Nlri::new(net(q))]);
    assert_eq!(rib.prefix_count(e, Family::IPV4_UNICAST), 1);
}

#[test]
fn sweep_on_timer_and_hard_peer_down() {
    let mut rib = Rib::new(config());
    let e = ebgp(&mut rib, "10.2.0.2", 65002, "10.9.0.6");
    announce(&mut rib, e, &Ann::new(&[65002], "10.2.0.2").update(&[P]));
    rib.peer_down_graceful(e, &BOTH).unwrap();
    let ch = rib.sweep_stale(e, Family::IPV4_UNICAST).unwrap();
    assert!(rib.best(&net(P)).is_empty());
    assert_eq!(ch.best.len(), 1);
    assert_eq!(rib.prefix_count(e, Family::IPV4_UNICAST), 0);

    rib.peer_up(e, ip4("10.9.0.6"), &BOTH).unwrap();
    announce(
        &mut rib,
        e,
        &Ann::new(&[65002], "10.2.0.2").update(&[P, "10.5.0.0/16"]),
    );
    let ch = rib.peer_down(e).unwrap();
    assert_eq!(ch.best.len(), 2);
    assert_eq!(rib.loc_rib().count(), 0);
    assert!(rib.adj_rib_in(e).is_empty());
}

#[test]
fn max_prefix_signal_carries_rfc4486_data() {
    let mut rib = Rib::new(config());
    let mut info = peer_info("10.2.0.2", 65002);
    info.policy.max_prefixes = Some(2);
    let e = add(&mut rib, info, "10.9.0.6");
    let ann = Ann::new(&[65002], "10.2.0.2");
    announce(&mut rib, e, &ann.update(&["10.1.0.0/24", "10.2.0.0/24"]));
    // Re-announcing and replacing within the limit is fine.
    let mut u = ann.update(&["10.1.0.0/24", "10.3.0.0/24"]);
    u.withdrawn = vec![Nlri::new(net("10.2.0.0/24"))];
    announce(&mut rib, e, &u);
    let err = rib
        .apply_update(e, &ann.update(&["10.4.0.0/24"]), &PARAMS)
        .unwrap_err();
    let RibError::MaxPrefixes(m) = err else {
        panic!("{err:?}")
    };
    assert_eq!(m.family, Family::IPV4_UNICAST);
    let n = m.notification();
    assert_eq!((n.code, n.subcode), (6, 1));
    assert_eq!(&n.data[..], &[0, 1, 1, 0, 0, 0, 2]);
    // Nothing was applied.
    assert_eq!(rib.prefix_count(e, Family::IPV4_UNICAST), 2);
    assert!(rib.best(&net("10.4.0.0/24")).is_empty());
}

#[test]
fn import_and_export_prefix_lists() {
    let mut rib = Rib::new(config());
    let mut info = peer_info("10.2.0.2", 65002);
    // Import only the pool CIDR.
    info.policy.import = PrefixList::only_within([net("10.244.0.0/16")]);
    // Export only my pod block.
    info.policy.export = PrefixList::only_exact([net("10.244.9.0/26")]);
    let e = add(&mut rib, info, "10.9.0.6");
    let other = ebgp(&mut rib, "10.3.0.2", 65003, "10.9.0.7");
    announce(
        &mut rib,
        e,
        &Ann::new(&[65002], "10.2.0.2").update(&["10.244.1.0/26", "192.168.0.0/24"]),
    );
    assert_eq!(rib.best(&net("10.244.1.0/26")).len(), 1);
    assert!(rib.best(&net("192.168.0.0/24")).is_empty());
    let ch1 = rib.originate(net("10.244.9.0/26"), PathAttributes::default());
    let ch2 = rib.originate(net("10.96.0.0/12"), PathAttributes::default());
    assert_eq!(sent(&ch1, e), vec![net("10.244.9.0/26")]);
    assert!(sent(&ch2, e).is_empty());
    assert_eq!(sent(&ch2, other), vec![net("10.96.0.0/12")]);
    // A deny rule before a permit.
    let list = PrefixList {
        rules: vec![
            PrefixRule::new(net("10.244.5.0/24"), Some(24), None, Action::Deny).unwrap(),
            PrefixRule::or_longer(net("10.244.0.0/16"), Action::Permit),
        ],
        default: Action::Deny,
    };
    let mut policy = rib.peer_info(e).unwrap().policy.clone();
    policy.export = list;
    let ch = rib.set_peer_policy(e, policy).unwrap();
    // Now the learned 10.244.1.0/26 is exportable but it came from e itself;
    // 10.96/12 stays denied; the pod block stays.
    assert!(ch.for_peer(e).is_empty());
    rib.originate(net("10.244.5.64/26"), PathAttributes::default());
    assert!(rib
        .adj_rib_out(e)
        .iter()
        .all(|r| r.nlri.prefix != net("10.244.5.64/26")));
}

#[test]
fn ipv6_via_mp_reach_and_unreach() {
    let mut rib = Rib::new(config());
    let e = ebgp(&mut rib, "fd00::2", 65002, "10.9.0.6");
    let i = ibgp(&mut rib, "10.1.0.2", "10.9.0.2", false);
    let other = ebgp(&mut rib, "fd00::3", 65003, "10.9.0.7");
    let ch = announce(
        &mut rib,
        e,
        &Ann::new(&[65002], "0.0.0.0").update_v6(&["fd00:10::/64", "fd00:11::/64"], "fd00::2"),
    );
    assert_eq!(ch.best.len(), 2);
    let best = &rib.best(&net("fd00:10::/64"))[0];
    assert_eq!(
        best.attrs.next_hop,
        Some(IpAddr::V6("fd00::2".parse::<Ipv6Addr>().unwrap()))
    );
    // Prefixes of one UPDATE share their attributes.
    let other_best = &rib.best(&net("fd00:11::/64"))[0];
    assert!(std::sync::Arc::ptr_eq(&best.attrs, &other_best.attrs));
    // iBGP keeps the next hop; eBGP gets ours.
    assert_eq!(
        ch.for_peer(i).announce[0].attrs.next_hop,
        Some(IpAddr::V6("fd00::2".parse().unwrap()))
    );
    let to_other = &ch.for_peer(other).announce;
    assert_eq!(
        to_other[0].attrs.next_hop,
        Some(IpAddr::V6("fd00::1".parse().unwrap()))
    );
    assert!(std::sync::Arc::ptr_eq(
        &to_other[0].attrs,
        &to_other[1].attrs
    ));
    let unreach = Update {
        attributes: vec![PathAttribute::new(AttributeValue::MpUnreach(Box::new(
            MpUnreach {
                family: Family::IPV6_UNICAST,
                withdrawn: vec![Nlri::new(net("fd00:10::/64"))],
                unparsed: Bytes::new(),
            },
        )))],
        ..Update::default()
    };
    let ch = announce(&mut rib, e, &unreach);
    assert!(rib.best(&net("fd00:10::/64")).is_empty());
    assert_eq!(
        ch.for_peer(other).withdraw,
        vec![Nlri::new(net("fd00:10::/64"))]
    );
    assert_eq!(rib.prefix_count(e, Family::IPV6_UNICAST), 1);
}

#[test]
fn route_refresh_resends_the_full_adj_rib_out_and_peer_up_dumps_it() {
    let mut rib = Rib::new(config());
    let e = ebgp(&mut rib, "10.2.0.2", 65002, "10.9.0.6");
    announce(
        &mut rib,
        e,
        &Ann::new(&[65002], "10.2.0.2").update(&[P, "10.5.0.0/16"]),
    );
    rib.originate(net("10.244.9.0/26"), PathAttributes::default());
    let late = rib.add_peer(peer_info("10.3.0.2", 65003));
    let ch = rib.peer_up(late, ip4("10.9.0.7"), &BOTH).unwrap();
    assert_eq!(ch.for_peer(late).announce.len(), 3);
    assert_eq!(rib.adj_rib_out(late), ch.for_peer(late).announce);
    // Family not negotiated: nothing of it is exported.
    let v6only = rib.add_peer(peer_info("10.3.0.3", 65004));
    let ch = rib
        .peer_up(v6only, ip4("10.9.0.8"), &[Family::IPV6_UNICAST])
        .unwrap();
    assert!(ch.for_peer(v6only).is_empty());
}

// ---- randomized: incremental best == best from scratch ----

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct RefPeer {
    internal: bool,
    router_id: Ipv4Addr,
    address: IpAddr,
}

/// The decision process written plainly, over (peer index, attributes).
fn reference_best(cands: &[(usize, PathAttributes)], peers: &[RefPeer]) -> Option<usize> {
    let mut c: Vec<&(usize, PathAttributes)> = cands.iter().collect();
    let lp = |a: &PathAttributes| a.local_pref.unwrap_or(100);
    let max_lp = c.iter().map(|x| lp(&x.1)).max()?;
    c.retain(|x| lp(&x.1) == max_lp);
    let min_len = c.iter().map(|x| x.1.as_path.len()).min()?;
    c.retain(|x| x.1.as_path.len() == min_len);
    let rank = |o: Origin| match o {
        Origin::Igp => 0,
        Origin::Egp => 1,
        Origin::Incomplete => 2,
    };
    let min_origin = c.iter().map(|x| rank(x.1.origin)).min()?;
    c.retain(|x| rank(x.1.origin) == min_origin);
    let nas = |a: &PathAttributes| a.as_path.first_as().unwrap_or(LOCAL_AS);
    let med = |a: &PathAttributes| a.med.unwrap_or(0);
    let snapshot = c.clone();
    c.retain(|x| {
        !snapshot
            .iter()
            .any(|o| nas(&o.1) == nas(&x.1) && med(&o.1) < med(&x.1))
    });
    if c.iter().any(|x| !peers[x.0].internal) {
        c.retain(|x| !peers[x.0].internal);
    }
    c.into_iter()
        .min_by_key(|x| {
            (
                x.1.originator_id.unwrap_or(peers[x.0].router_id),
                x.1.cluster_list.len(),
                peers[x.0].address,
            )
        })
        .map(|x| x.0)
}

#[test]
fn randomized_incremental_best_matches_from_scratch() {
    for seed in 1..=20u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut rib = Rib::new(config());
        let specs = [
            ("10.1.0.5", 65001, "10.9.0.1"),
            ("10.1.0.3", 65001, "10.9.0.2"),
            ("10.1.0.4", 65002, "10.9.0.3"),
            ("10.1.0.2", LOCAL_AS, "10.9.0.4"),
            ("10.1.0.1", LOCAL_AS, "10.9.0.5"),
        ];
        let mut ids = Vec::new();
        let mut refs = Vec::new();
        for (addr, asn, rid) in specs {
            ids.push(ebgp(&mut rib, addr, asn, rid));
            refs.push(RefPeer {
                internal: asn == LOCAL_AS,
                router_id: ip4(rid),
                address: addr.parse().unwrap(),
            });
        }
        let observer = ebgp(&mut rib, "10.7.0.1", 65007, "10.9.0.7");
        let prefixes = ["10.0.1.0/24", "10.0.2.0/24", "10.0.3.0/24", "10.0.4.0/24"];
        // The model: what each peer currently announces.
        let mut model: BTreeMap<(usize, &str), PathAttributes> = BTreeMap::new();
        // Mirrors fed only from `Changes`.
        let mut programmed: BTreeMap<IpNet, RouteSource> = BTreeMap::new();
        let mut observed: BTreeMap<Nlri, std::sync::Arc<PathAttributes>> = BTreeMap::new();

        for step in 0..300 {
            let pi = rng.below(ids.len() as u64) as usize;
            let prefix = prefixes[rng.below(prefixes.len() as u64) as usize];
            let changes = if rng.below(3) == 0 {
                model.remove(&(pi, prefix));
                announce(&mut rib, ids[pi], &withdraw(&[prefix]))
            } else {
                let first = [65001, 65002, 65003][rng.below(3) as usize];
                let mut path = vec![first];
                for _ in 0..rng.below(3) {
                    path.push(64600 + rng.below(5) as u32);
                }
                if refs[pi].internal && rng.below(4) == 0 {
                    path.clear();
                }
                let mut ann = Ann::new(&path, &format!("10.1.{pi}.1"));
                if rng.below(2) == 0 {
                    ann = ann.med(rng.below(3) as u32);
                }
                if refs[pi].internal {
                    ann = ann.lp(100 + 50 * rng.below(2) as u32);
                    if rng.below(3) == 0 {
                        ann = ann.originator(&format!("10.9.0.{}", rng.below(8)));
                    }
                    if rng.below(3) == 0 {
                        ann = ann.clusters(&["3.3.3.3"]);
                    }
                }
                ann.origin = [Origin::Igp, Origin::Egp, Origin::Incomplete][rng.below(3) as usize];
                let update = ann.update(&[prefix]);
                let mut attrs = PathAttributes::from_update(&update, &PARAMS);
                attrs.next_hop = update.next_hop().map(IpAddr::V4);
                if !refs[pi].internal {
                    attrs.local_pref = None;
                    attrs.originator_id = None;
                    attrs.cluster_list.clear();
                }
                model.insert((pi, prefix), attrs);
                announce(&mut rib, ids[pi], &update)
            };
            for c in &changes.best {
                match c.paths.first() {
                    Some(r) => programmed.insert(c.prefix, r.source()),
                    None => programmed.remove(&c.prefix),
                };
            }
            let out = changes.for_peer(observer);
            for w in &out.withdraw {
                observed.remove(w);
            }
            for a in &out.announce {
                observed.insert(a.nlri, a.attrs.clone());
            }

            for prefix in prefixes {
                let cands: Vec<(usize, PathAttributes)> = model
                    .iter()
                    .filter(|((_, p), _)| *p == prefix)
                    .map(|((i, _), a)| (*i, a.clone()))
                    .collect();
                let want = reference_best(&cands, &refs).map(|i| RouteSource::Peer(ids[i]));
                let got: Option<&Route> = rib.best(&net(prefix)).first();
                assert_eq!(
                    got.map(|r| r.source()),
                    want,
                    "seed {seed} step {step} {prefix}"
                );
                if let Some(r) = got {
                    let RouteSource::Peer(p) = r.source() else {
                        panic!()
                    };
                    let i = ids.iter().position(|x| *x == p).unwrap();
                    assert_eq!(Some(&*r.attrs), model.get(&(i, prefix)));
                }
                assert_eq!(programmed.get(&net(prefix)).copied(), want);
            }
            let full: BTreeMap<Nlri, std::sync::Arc<PathAttributes>> = rib
                .adj_rib_out(observer)
                .into_iter()
                .map(|r| (r.nlri, r.attrs))
                .collect();
            assert_eq!(full, observed, "seed {seed} step {step}");
            assert_eq!(rib.advertised_count(observer), full.len());
            assert_eq!(observed.len(), rib.loc_rib().count());
        }
    }
}

// ---- randomized: what peers were told == export of the Loc-RIB ----

/// Adj-RIBs-Out are not stored: the RIB sends the difference between the
/// exports of a prefix's old and new best path. Mirrors built only from the
/// returned `Changes` must equal a from-scratch export of the Loc-RIB
/// (`adj_rib_out`) after every operation, including the ones that change
/// export inputs other than the best path: a source's new router id after a
/// graceful restart (ORIGINATOR_ID), a target's export policy, sessions going
/// down and up.
#[test]
fn randomized_adj_rib_out_mirrors_match_the_loc_rib_export() {
    for seed in 1..=20u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut rib = Rib::new(config());
        // Sources: two reflector clients, a non-client, an eBGP peer.
        let sources = [
            ibgp(&mut rib, "10.1.0.1", "10.9.0.1", true),
            ibgp(&mut rib, "10.1.0.2", "10.9.0.2", true),
            ibgp(&mut rib, "10.1.0.3", "10.9.0.3", false),
            ebgp(&mut rib, "10.1.0.4", 65004, "10.9.0.4"),
        ];
        // Observers: a client, a non-client, an eBGP peer.
        let observers = [
            ibgp(&mut rib, "10.7.0.1", "10.9.7.1", true),
            ibgp(&mut rib, "10.7.0.2", "10.9.7.2", false),
            ebgp(&mut rib, "10.7.0.3", 65007, "10.9.7.3"),
        ];
        let prefixes = [
            "10.0.1.0/24",
            "10.0.2.0/24",
            "10.0.3.0/24",
            "10.0.4.0/25",
            "10.0.5.0/24",
        ];
        let mut mirrors: Vec<BTreeMap<Nlri, std::sync::Arc<PathAttributes>>> =
            vec![BTreeMap::new(); observers.len()];
        for step in 0..400 {
            let si = rng.below(sources.len() as u64) as usize;
            let src = sources[si];
            let prefix = prefixes[rng.below(prefixes.len() as u64) as usize];
            let changes = match rng.below(12) {
                0 => rib.peer_down_graceful(src, &BOTH).unwrap(),
                1 => {
                    // Back with a new router id (stale paths stay until
                    // re-announced or swept).
                    let rid = format!("10.9.{}.{}", rng.below(4), 1 + rng.below(4));
                    rib.peer_up(src, ip4(&rid), &BOTH).unwrap()
                }
                2 => rib.sweep_stale(src, Family::IPV4_UNICAST).unwrap(),
                3 => {
                    let oi = rng.below(observers.len() as u64) as usize;
                    let mut policy = rib.peer_info(observers[oi]).unwrap().policy.clone();
                    policy.export = if rng.below(2) == 0 {
                        PrefixList::permit_all()
                    } else {
                        PrefixList::only_exact([net(prefix)])
                    };
                    rib.set_peer_policy(observers[oi], policy).unwrap()
                }
                4 => {
                    let oi = rng.below(observers.len() as u64) as usize;
                    let down = rib.peer_down(observers[oi]).unwrap();
                    mirrors[oi].clear();
                    let up = rib.peer_up(observers[oi], ip4("10.9.7.9"), &BOTH).unwrap();
                    for (o, mirror) in observers.iter().zip(mirrors.iter_mut()) {
                        apply_out(mirror, &down, *o);
                    }
                    up
                }
                5 | 6 => rib
                    .apply_update(src, &withdraw(&[prefix]), &PARAMS)
                    .unwrap_or_default(),
                _ => {
                    let mut ann = Ann::new(
                        &[65001 + rng.below(3) as u32],
                        &format!("10.1.0.{}", si + 1),
                    );
                    if si < 3 {
                        ann = ann.lp(100 + 50 * rng.below(2) as u32);
                        if rng.below(3) == 0 {
                            ann = ann.originator(&format!("10.9.0.{}", 1 + rng.below(4)));
                        }
                    }
                    if rng.below(2) == 0 {
                        ann = ann.med(rng.below(3) as u32);
                    }
                    // Usually a peer that is down does not send: skip then.
                    rib.apply_update(src, &ann.update(&[prefix]), &PARAMS)
                        .unwrap_or_default()
                }
            };
            for (o, mirror) in observers.iter().zip(mirrors.iter_mut()) {
                apply_out(mirror, &changes, *o);
                let full: BTreeMap<Nlri, std::sync::Arc<PathAttributes>> = rib
                    .adj_rib_out(*o)
                    .into_iter()
                    .map(|r| (r.nlri, r.attrs))
                    .collect();
                assert_eq!(&full, mirror, "seed {seed} step {step} observer {o:?}");
                assert_eq!(
                    rib.advertised_count(*o),
                    full.len(),
                    "seed {seed} step {step}"
                );
            }
        }
    }
}

fn apply_out(
    mirror: &mut BTreeMap<Nlri, std::sync::Arc<PathAttributes>>,
    changes: &Changes,
    peer: PeerId,
) {
    let out = changes.for_peer(peer);
    for w in &out.withdraw {
        assert!(mirror.remove(w).is_some(), "withdrawal of {w:?} never sent");
    }
    for a in &out.announce {
        let old = mirror.insert(a.nlri, a.attrs.clone());
        assert_ne!(old.as_ref(), Some(&a.attrs), "duplicate announcement");
    }
}

/// With best-path reporting off (a reflector nobody subscribes to), an
/// UPDATE still changes the Loc-RIB and the peers' exports, but
/// `Changes::best` stays empty; switched on again, it reports again.
#[test]
fn best_path_reporting_can_be_switched_off() {
    let mut rib = Rib::new(config());
    let a = ebgp(&mut rib, "10.1.0.2", 65001, "10.9.0.2");
    let b = ebgp(&mut rib, "10.1.0.3", 65002, "10.9.0.3");
    rib.report_best_paths(false);
    let c = announce(&mut rib, a, &Ann::new(&[65001], "10.1.0.2").update(&[P]));
    assert!(c.best.is_empty(), "no best-path changes while off");
    assert_eq!(c.for_peer(b).announce.len(), 1, "exports still computed");
    assert_eq!(best_source(&rib, P), Some(RouteSource::Peer(a)));
    rib.report_best_paths(true);
    let c = announce(&mut rib, a, &withdraw(&[P]));
    assert_eq!(c.best.len(), 1);
    assert!(c.best[0].paths.is_empty(), "reported as unreachable");
}
