//! felix's `bgp::session` against BIRD 2 across a veth between two network
//! namespaces (root and bird2 needed; otherwise the test prints SKIPPED).
//!
//! BIRD exports two static routes with communities; felix must reach
//! Established, receive both with their communities, get its own route into
//! BIRD's table, and its ManualStop must reach BIRD as Cease /
//! Administrative Shutdown with the RFC 9003 message.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod interop_common;

use bgp::fsm::{PeerAsn, PeerConfig, State};
use bgp::session::{Session, SessionConfig, SessionEvent, SessionHandle};
use bgp::wire::{AsPath, AttributeValue, Community, Family, Nlri, Origin, PathAttribute, Update};
use interop_common::{skip_unless, wait_until, NetnsPair};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

const BIRD_AS: u32 = 65010;
const FELIX_AS: u32 = 65020;

fn bird_config(pair: &NetnsPair, extra: &str) -> String {
    format!(
        r#"router id {peer};
log "{log}" all;
protocol device {{ }}
protocol static routes4 {{
    ipv4 {{ import all; }};
    route 192.0.2.0/24 blackhole;
    route 198.51.100.0/25 blackhole;
}}
filter to_felix {{
    if net = 192.0.2.0/24 then bgp_community.add(({asn}, 1));
    if net = 198.51.100.0/25 then {{
        bgp_community.add(({asn}, 2));
        bgp_community.add(({asn}, 3));
    }}
    accept;
}}
protocol bgp felix {{
    local {peer} as {asn};
    neighbor {felix} as {felix_as};
    hold time 9;
    connect delay time 1;
    connect retry time 1;
    error wait time 1, 2;
    {extra}
    ipv4 {{ import all; export filter to_felix; }};
}}
"#,
        peer = pair.peer_ip,
        felix = pair.felix_ip,
        asn = BIRD_AS,
        felix_as = FELIX_AS,
        extra = extra,
        log = pair.path("bird.log").display(),
    )
}

fn birdc(sock: &str, args: &[&str]) -> String {
    let out = Command::new("birdc")
        .args(["-s", sock])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn next(h: &mut SessionHandle) -> SessionEvent {
    tokio::time::timeout(Duration::from_secs(10), h.events.recv())
        .await
        .expect("timed out waiting for a session event")
        .expect("session ended")
}

/// Starts BIRD in the pair's peer namespace with `extra` protocol lines;
/// returns its control socket.
fn start_bird(pair: &mut NetnsPair, extra: &str) -> String {
    let conf = pair.path("bird.conf");
    std::fs::write(&conf, bird_config(pair, extra)).unwrap();
    let sock = pair.path("bird.ctl").display().to_string();
    let pid = pair.path("bird.pid");
    pair.pid_files.push(pid.clone());
    let out = pair.exec_peer(&[
        "bird",
        "-c",
        &conf.display().to_string(),
        "-s",
        &sock,
        "-P",
        &pid.display().to_string(),
    ]);
    assert!(
        wait_until(Duration::from_secs(5), || birdc(&sock, &["show", "status"])
            .contains("Daemon is up")),
        "BIRD did not start: {out}"
    );
    sock
}

/// TCP MD5 (RFC 2385) and GTSM (RFC 5082) on felix's outgoing connection,
/// against BIRD's `password` and `ttl security`.
#[test]
fn felix_session_with_bird_md5_and_gtsm() {
    if skip_unless(&["bird", "birdc", "ip"]) {
        return;
    }
    let mut pair = NetnsPair::new("m");
    let sock = start_bird(&mut pair, "password \"s3cret-key\"; ttl security on;");
    let remote = SocketAddr::new(pair.peer_ip.parse().unwrap(), 179);
    let local: Ipv4Addr = pair.felix_ip.parse().unwrap();
    let result = pair.in_felix(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut peer = PeerConfig::new(FELIX_AS, local, PeerAsn::Exact(BIRD_AS));
            peer.hold_time = 9;
            peer.connect_retry = Duration::from_secs(1);
            peer.capabilities.families = vec![Family::IPV4_UNICAST];
            let mut config = SessionConfig::new(peer, remote);
            config.md5_key = Some(b"s3cret-key".to_vec());
            config.gtsm_hops = Some(1);
            let mut h = Session::spawn(config).unwrap();
            let SessionEvent::Established(_) = next(&mut h).await else {
                panic!("expected Established");
            };
            h.stop(None).await;
        })
    });
    if let Err(e) = result {
        let log = std::fs::read_to_string(pair.path("bird.log")).unwrap_or_default();
        eprintln!(
            "BIRD log:\n{log}\n{}",
            birdc(&sock, &["show", "protocols", "all"])
        );
        std::panic::resume_unwind(e);
    }
}

#[test]
fn felix_session_with_bird() {
    if skip_unless(&["bird", "birdc", "ip"]) {
        return;
    }
    let mut pair = NetnsPair::new("b");
    let sock = start_bird(&mut pair, "");
    let remote = SocketAddr::new(pair.peer_ip.parse().unwrap(), 179);
    let local: Ipv4Addr = pair.felix_ip.parse().unwrap();
    let sock2 = sock.clone();
    let result = pair.in_felix(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut peer = PeerConfig::new(FELIX_AS, local, PeerAsn::Exact(BIRD_AS));
            peer.hold_time = 9;
            peer.connect_retry = Duration::from_secs(1);
            peer.capabilities.families = vec![Family::IPV4_UNICAST];
            peer.capabilities.route_refresh = true;
            let mut config = SessionConfig::new(peer, remote);
            config.local = Some(SocketAddr::new(local.into(), 0));
            let mut h = Session::spawn(config).unwrap();

            let SessionEvent::Established(n) = next(&mut h).await else {
                panic!("expected Established");
            };
            assert_eq!(n.peer_asn, BIRD_AS);
            assert_eq!(n.hold_time, 9);
            assert_eq!(h.state(), State::Established);

            // BIRD's routes with their communities.
            let mut routes: BTreeMap<String, Vec<Community>> = BTreeMap::new();
            while routes.len() < 2 {
                let SessionEvent::Update(u) = next(&mut h).await else {
                    panic!("expected Update");
                };
                assert!(u.faults.is_empty(), "{:?}", u.faults);
                let communities = u
                    .attributes
                    .iter()
                    .find_map(|a| match &a.value {
                        AttributeValue::Communities(c) => Some(c.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                for nlri in &u.nlri {
                    routes.insert(nlri.prefix.to_string(), communities.clone());
                }
            }
            let c = |low: u32| Community((BIRD_AS << 16) | low);
            assert_eq!(routes["192.0.2.0/24"], vec![c(1)]);
            assert_eq!(routes["198.51.100.0/25"], vec![c(2), c(3)]);

            let bird_protocols = birdc(&sock2, &["show", "protocols", "felix"]);
            assert!(bird_protocols.contains("Established"), "{bird_protocols}");

            // A route from felix into BIRD's table.
            h.send_update(Update {
                attributes: vec![
                    PathAttribute::new(AttributeValue::Origin(Origin::Igp)),
                    PathAttribute::new(AttributeValue::AsPath(AsPath::sequence([FELIX_AS]))),
                    PathAttribute::new(AttributeValue::NextHop(local)),
                ],
                nlri: vec![Nlri::new("10.77.0.0/24".parse().unwrap())],
                ..Update::default()
            })
            .await
            .unwrap();
            assert!(
                wait_until(Duration::from_secs(5), || birdc(
                    &sock2,
                    &["show", "route", "10.77.0.0/24"]
                )
                .contains("10.77.0.0/24")),
                "felix's route not in BIRD: {}",
                birdc(&sock2, &["show", "route", "all"])
            );

            h.stop(Some("felix interop test".into())).await;
        })
    });
    if let Err(e) = result {
        let log = std::fs::read_to_string(pair.path("bird.log")).unwrap_or_default();
        eprintln!("BIRD log:\n{log}");
        std::panic::resume_unwind(e);
    }

    // BIRD saw the Cease with our shutdown communication.
    let seen = wait_until(Duration::from_secs(5), || {
        let all = birdc(&sock, &["show", "protocols", "all", "felix"]);
        let log = std::fs::read_to_string(pair.path("bird.log")).unwrap_or_default();
        (all + &log).contains("felix interop test")
    });
    assert!(
        seen,
        "BIRD did not report the shutdown: {}\n{}",
        birdc(&sock, &["show", "protocols", "all", "felix"]),
        std::fs::read_to_string(pair.path("bird.log")).unwrap_or_default()
    );
}
