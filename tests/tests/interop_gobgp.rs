//! felix's `bgp::session` against GoBGP across a veth between two network
//! namespaces (root and gobgpd/gobgp needed; otherwise the test prints
//! SKIPPED).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod interop_common;

use bgp::fsm::{PeerAsn, PeerConfig, State};
use bgp::session::{Session, SessionConfig, SessionEvent, SessionHandle};
use bgp::wire::{AttributeValue, Community, Family};
use interop_common::{skip_unless, wait_until, NetnsPair};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

const GOBGP_AS: u32 = 65030;
const FELIX_AS: u32 = 65020;
/// gRPC port of gobgpd inside its namespace (each namespace has its own
/// loopback, so a fixed port cannot clash).
const API: &str = "50071";

fn gobgp(pair: &NetnsPair, args: &[&str]) -> String {
    let mut all = vec!["gobgp", "-p", API];
    all.extend_from_slice(args);
    pair.exec_peer(&all)
}

async fn next(h: &mut SessionHandle) -> SessionEvent {
    tokio::time::timeout(Duration::from_secs(10), h.events.recv())
        .await
        .expect("timed out waiting for a session event")
        .expect("session ended")
}

#[test]
fn felix_session_with_gobgp() {
    if skip_unless(&["gobgpd", "gobgp", "ip"]) {
        return;
    }
    let pair = NetnsPair::new("g");
    let conf = pair.path("gobgpd.toml");
    std::fs::write(
        &conf,
        format!(
            r#"[global.config]
  as = {GOBGP_AS}
  router-id = "{peer}"
  port = 179
  local-address-list = ["{peer}"]

[[neighbors]]
  [neighbors.config]
    neighbor-address = "{felix}"
    peer-as = {FELIX_AS}
  [neighbors.timers.config]
    connect-retry = 1
    hold-time = 9
    keepalive-interval = 3
"#,
            peer = pair.peer_ip,
            felix = pair.felix_ip
        ),
    )
    .unwrap();
    let log = std::fs::File::create(pair.path("gobgpd.log")).unwrap();
    // Killed with everything else in the namespace by the guard's Drop.
    let mut daemon = Command::new("ip")
        .args(["netns", "exec", &pair.peer, "gobgpd", "-f"])
        .arg(&conf)
        .args([
            "--api-hosts",
            &format!("127.0.0.1:{API}"),
            "--pprof-disable",
        ])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || gobgp(&pair, &["global"])
            .contains(&pair.peer_ip)),
        "gobgpd did not start"
    );
    let added = gobgp(
        &pair,
        &[
            "global",
            "rib",
            "add",
            "203.0.113.0/24",
            "community",
            "65030:7",
        ],
    );
    assert!(!added.contains("rror"), "{added}");

    let remote = SocketAddr::new(pair.peer_ip.parse().unwrap(), 179);
    let local: Ipv4Addr = pair.felix_ip.parse().unwrap();
    let result = pair.in_felix(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut peer = PeerConfig::new(FELIX_AS, local, PeerAsn::Exact(GOBGP_AS));
            peer.hold_time = 9;
            peer.connect_retry = Duration::from_secs(1);
            peer.capabilities.families = vec![Family::IPV4_UNICAST];
            peer.capabilities.route_refresh = true;
            let mut h = Session::spawn(SessionConfig::new(peer, remote)).unwrap();
            let SessionEvent::Established(n) = next(&mut h).await else {
                panic!("expected Established");
            };
            assert_eq!(n.peer_asn, GOBGP_AS);
            assert_eq!(h.state(), State::Established);
            loop {
                let SessionEvent::Update(u) = next(&mut h).await else {
                    panic!("expected Update");
                };
                if u.nlri
                    .iter()
                    .any(|n| n.prefix.to_string() == "203.0.113.0/24")
                {
                    let communities = u.attributes.iter().find_map(|a| match &a.value {
                        AttributeValue::Communities(c) => Some(c.clone()),
                        _ => None,
                    });
                    assert_eq!(communities, Some(vec![Community((GOBGP_AS << 16) | 7)]));
                    break;
                }
            }
            h.stop(Some("felix interop test".into())).await;
        })
    });
    let log = std::fs::read_to_string(pair.path("gobgpd.log")).unwrap_or_default();
    if let Err(e) = result {
        eprintln!("gobgpd log:\n{log}");
        let _ = daemon.kill();
        std::panic::resume_unwind(e);
    }
    let seen = wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(pair.path("gobgpd.log"))
            .unwrap_or_default()
            .to_lowercase()
            .contains("administrative shutdown")
    });
    let log = std::fs::read_to_string(pair.path("gobgpd.log")).unwrap_or_default();
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(seen, "gobgpd did not report the Cease:\n{log}");
}
