//! felix's `bgp::speaker::Speaker` against BIRD 2 across a veth between two
//! network namespaces (root and bird2 needed; otherwise the test prints
//! SKIPPED).
//!
//! Routes both ways: BIRD's static routes (with communities) appear in
//! `Speaker::routes()` and on the best-path stream; the prefix felix
//! originates appears in `birdc show route` with felix's AS and address;
//! a withdrawal leaves BIRD's table; enhanced route refresh both ways
//! (BIRD's `reload in` gets BoRR, felix's table, EoRR; BIRD's `reload
//! out` leaves felix's copy of its routes fresh and unwithdrawn, and after
//! a soft reconfiguration that filters one route out, the refresh removes
//! it); `shutdown` reaches BIRD as Cease /
//! Administrative Shutdown with the message. The namespaces and BIRD are
//! removed by `NetnsPair`'s Drop, also on failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod interop_common;

use bgp::speaker::{NeighborConfig, Speaker, SpeakerConfig};
use bgp::wire::{Community, Prefix};
use interop_common::{skip_unless, wait_until, NetnsPair};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

const BIRD_AS: u32 = 65010;
const FELIX_AS: u32 = 65020;
const WAIT: Duration = Duration::from_secs(20);

fn bird_config(pair: &NetnsPair) -> String {
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
    accept;
}}
protocol bgp felix {{
    local {peer} as {asn};
    neighbor {felix} as {felix_as};
    hold time 9;
    connect delay time 1;
    connect retry time 1;
    error wait time 1, 2;
    graceful restart on;
    debug {{ states, events, packets }};
    ipv4 {{ import all; export filter to_felix; }};
}}
"#,
        peer = pair.peer_ip,
        felix = pair.felix_ip,
        asn = BIRD_AS,
        felix_as = FELIX_AS,
        log = pair.path("bird.log").display(),
    )
}

/// The "received" column of BIRD's "Export updates:" line (routes BIRD's
/// protocol was offered for export).
fn export_updates(protocol_all: &str) -> u64 {
    protocol_all
        .lines()
        .find_map(|l| l.trim().strip_prefix("Export updates:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn birdc(sock: &str, args: &[&str]) -> String {
    let out = Command::new("birdc")
        .args(["-s", sock])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Like `wait_until`, but sleeps on the runtime: the felix side runs a
/// current-thread runtime, and blocking it would stop its sessions'
/// keepalives.
async fn wait_until_async(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f()
}

fn start_bird(pair: &mut NetnsPair) -> String {
    let conf = pair.path("bird.conf");
    std::fs::write(&conf, bird_config(pair)).unwrap();
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

#[test]
fn speaker_exchanges_routes_with_bird() {
    if skip_unless(&["bird", "birdc", "ip"]) {
        return;
    }
    let mut pair = NetnsPair::new("s");
    let sock = start_bird(&mut pair);
    let bird_ip: IpAddr = pair.peer_ip.parse().unwrap();
    let felix_ip: Ipv4Addr = pair.felix_ip.parse().unwrap();
    let sock_inner = sock.clone();
    let log_path = pair.path("bird.log");
    let conf_path = pair.path("bird.conf");
    let result = pair.in_felix(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let sock = sock_inner;
            // Both sides connect; felix also listens on the BGP port.
            let mut config = SpeakerConfig::new(FELIX_AS, felix_ip);
            config.listen = Some(SocketAddr::new(felix_ip.into(), 179));
            config.hold_time = 9;
            let speaker = Speaker::start(config).await.unwrap();
            let mut best = speaker.subscribe();
            let mut bird = NeighborConfig::new(bird_ip, BIRD_AS);
            bird.local_address = Some(felix_ip.into());
            speaker.add_neighbor(bird).await.unwrap();

            // BIRD's routes arrive, with next hop = BIRD and its AS.
            let mut seen = std::collections::BTreeSet::new();
            tokio::time::timeout(WAIT, async {
                while seen.len() < 2 {
                    let c = best.recv().await.unwrap();
                    if !c.is_withdrawal() {
                        assert_eq!(c.next_hops, vec![bird_ip], "{c:?}");
                        seen.insert(c.prefix.to_string());
                    }
                }
            })
            .await
            .unwrap_or_else(|_| panic!("BIRD's routes did not arrive: {seen:?}"));
            let routes = speaker.routes(None).await;
            let r = routes
                .iter()
                .find(|r| r.prefix.to_string() == "192.0.2.0/24")
                .unwrap_or_else(|| panic!("{routes:?}"));
            assert_eq!(r.paths[0].from, Some(bird_ip));
            assert_eq!(r.paths[0].as_path, BIRD_AS.to_string());
            assert_eq!(r.paths[0].communities, vec![format!("{BIRD_AS}:1")]);
            assert!(routes
                .iter()
                .any(|r| r.prefix.to_string() == "198.51.100.0/25"));

            let status = speaker.status().await;
            assert_eq!(status.peers[0].state, "Established");
            assert_eq!(status.peers[0].accepted, 2);

            // ROUTE-REFRESH: BIRD exports its routes again (its "Export
            // updates" counter grows by at least its two routes).
            let exported = || export_updates(&birdc(&sock, &["show", "protocols", "all", "felix"]));
            let before = exported();
            speaker.refresh(bird_ip).await.unwrap();
            assert!(
                wait_until_async(Duration::from_secs(10), || exported() >= before + 2).await,
                "BIRD did not re-send after ROUTE-REFRESH: {} -> {}\n{}",
                before,
                exported(),
                birdc(&sock, &["show", "protocols", "all", "felix"])
            );

            // felix's route in BIRD's table.
            let prefix: Prefix = "10.99.0.0/24".parse().unwrap();
            speaker
                .originate(prefix, vec![Community((FELIX_AS << 16) | 5)])
                .await
                .unwrap();
            let show = || birdc(&sock, &["show", "route", "10.99.0.0/24", "all"]);
            assert!(
                wait_until_async(Duration::from_secs(10), || {
                    let s = show();
                    s.contains("10.99.0.0/24") && s.contains(&felix_ip.to_string())
                })
                .await,
                "felix's route not in BIRD: {}",
                birdc(&sock, &["show", "route", "all"])
            );
            let s = show();
            assert!(s.contains(&format!("BGP.as_path: {FELIX_AS}")), "{s}");
            assert!(s.contains(&format!("({FELIX_AS},5)")), "{s}");

            // Withdrawal leaves BIRD's table.
            speaker.withdraw(prefix).await.unwrap();
            assert!(
                wait_until_async(Duration::from_secs(10), || !show().contains("10.99.0.0/24"))
                    .await,
                "withdrawal not seen by BIRD: {}",
                show()
            );

            // Enhanced route refresh (RFC 7313; BIRD 2 always offers it).
            // BIRD asks (reload in): felix answers BoRR, its table, EoRR,
            // and its route stays in BIRD.
            speaker.originate(prefix, vec![]).await.unwrap();
            assert!(
                wait_until_async(Duration::from_secs(10), || show().contains("10.99.0.0/24")).await,
                "felix's route not back in BIRD"
            );
            let bird_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
            birdc(&sock, &["reload", "in", "felix"]);
            assert!(
                wait_until_async(Duration::from_secs(10), || {
                    let log = bird_log();
                    log.contains("Got BEGIN-OF-RR") && log.contains("Got END-OF-RR")
                })
                .await,
                "BIRD did not get BoRR/EoRR from felix:\n{}",
                bird_log()
            );
            assert!(show().contains("10.99.0.0/24"), "{}", show());

            // BIRD refreshes on its own (reload out): BoRR, its routes,
            // EoRR. felix keeps both routes, none stale, none withdrawn.
            while best.try_recv().is_ok() {}
            let eorrs_sent = || bird_log().matches("Sending END-OF-RR").count();
            let before = eorrs_sent();
            birdc(&sock, &["reload", "out", "felix"]);
            assert!(
                wait_until_async(Duration::from_secs(10), || eorrs_sent() > before).await,
                "BIRD sent no EoRR:\n{}",
                bird_log()
            );
            // Both routes there and fresh, and still so a moment later
            // (felix has processed the EoRR by then: nothing was purged).
            let fresh = |routes: &[bgp::speaker::RouteView]| {
                ["192.0.2.0/24", "198.51.100.0/25"].iter().all(|p| {
                    routes
                        .iter()
                        .any(|r| r.prefix.to_string() == *p && !r.paths[0].stale)
                })
            };
            let end = tokio::time::Instant::now() + Duration::from_secs(10);
            while !fresh(&speaker.routes(None).await) {
                assert!(tokio::time::Instant::now() < end, "routes not fresh");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let routes = speaker.routes(None).await;
            assert!(fresh(&routes), "{routes:?}");
            while let Ok(c) = best.try_recv() {
                assert!(!c.is_withdrawal(), "withdrawn by a refresh: {c:?}");
            }

            // BIRD's export filter now rejects 198.51.100.0/25; a soft
            // reconfiguration does not re-export, the next refresh does:
            // the route leaves felix, 192.0.2.0/24 stays.
            let conf = std::fs::read_to_string(&conf_path).unwrap();
            let conf = conf.replace(
                "    accept;\n}",
                "    if net = 198.51.100.0/25 then reject;\n    accept;\n}",
            );
            std::fs::write(&conf_path, conf).unwrap();
            let out = birdc(&sock, &["configure", "soft"]);
            assert!(out.contains("Reconfigured"), "{out}");
            birdc(&sock, &["reload", "out", "felix"]);
            let gone = |routes: &[bgp::speaker::RouteView], p: &str| {
                !routes.iter().any(|r| r.prefix.to_string() == p)
            };
            let end = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let routes = speaker.routes(None).await;
                if gone(&routes, "198.51.100.0/25") {
                    assert!(!gone(&routes, "192.0.2.0/24"), "{routes:?}");
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < end,
                    "198.51.100.0/25 still at felix: {routes:?}\n{}",
                    bird_log()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }

            speaker
                .shutdown(Some("felix speaker interop test".into()))
                .await;
        })
    });
    if let Err(e) = result {
        let log = std::fs::read_to_string(pair.path("bird.log")).unwrap_or_default();
        eprintln!(
            "BIRD log:\n{log}\n{}",
            birdc(&sock, &["show", "protocols", "all", "felix"])
        );
        std::panic::resume_unwind(e);
    }
    let seen = wait_until(Duration::from_secs(5), || {
        let all = birdc(&sock, &["show", "protocols", "all", "felix"]);
        let log = std::fs::read_to_string(pair.path("bird.log")).unwrap_or_default();
        (all + &log).contains("felix speaker interop test")
    });
    assert!(
        seen,
        "BIRD did not report the shutdown: {}",
        birdc(&sock, &["show", "protocols", "all", "felix"])
    );
}
