//! The interop matrix driver (docs/interop.md), shared by
//! `interop_matrix_{frr,bird,gobgp}.rs`: a dual-stack `NetnsPair`, one
//! felix `Speaker` with a session over IPv4 and one over IPv6 to the
//! daemon, the exchange (routes and withdrawals both ways) and the
//! wrong-MD5-key case. Each test file declares `mod interop_common;` and
//! `mod interop_matrix_common;`.

#![allow(dead_code)]

use crate::interop_common::{wait_until, NetnsPair};
use bgp::speaker::{BestPathChange, NeighborConfig, Speaker, SpeakerConfig};
use bgp::wire::{Family, Prefix};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

fn run(args: &[&str]) {
    let status = Command::new(args[0])
        .args(&args[1..])
        .status()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(status.success(), "{args:?} failed: {status}");
}

/// The veth device in namespace `ns` (a `NetnsPair` has exactly one).
fn veth_in(ns: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", ns, "-o", "link", "show", "type", "veth"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let name = text
        .split(':')
        .nth(1)
        .unwrap_or_else(|| panic!("no veth in {ns}: {text}"));
    name.trim().split('@').next().unwrap().to_string()
}

/// Adds IPv6 addresses `fd00:A:B::1/64` (peer) and `::2` (felix) to the
/// pair's veth, without duplicate address detection (usable at once); A.B
/// are the middle octets of the pair's IPv4 /30. Returns all addresses.
pub fn add_ipv6(pair: &NetnsPair) -> MatrixAddrs {
    let octets: Vec<&str> = pair.peer_ip.split('.').collect();
    let base = format!("fd00:{}:{}", octets[1], octets[2]);
    let (peer6, felix6) = (format!("{base}::1"), format!("{base}::2"));
    for (ns, ip) in [(&pair.peer, &peer6), (&pair.felix, &felix6)] {
        let dev = veth_in(ns);
        run(&[
            "ip",
            "-n",
            ns,
            "-6",
            "addr",
            "add",
            &format!("{ip}/64"),
            "dev",
            &dev,
            "nodad",
        ]);
    }
    MatrixAddrs {
        peer_ns: pair.peer.clone(),
        peer4: pair.peer_ip.parse().unwrap(),
        felix4: pair.felix_ip.parse().unwrap(),
        peer6: peer6.parse().unwrap(),
        felix6: felix6.parse().unwrap(),
    }
}

/// Waits until something listens on TCP port 179 in the peer namespace.
pub fn wait_bgp_listening(pair: &NetnsPair, limit: Duration) -> bool {
    wait_until(limit, || {
        let out = pair.exec_peer(&["ss", "-Hltn", "sport = :179"]);
        out.lines().count() >= 1
    })
}

/// A TcpExt counter (e.g. `TCPMD5Failure`) in namespace `ns`, from
/// `/proc/net/netstat` read inside it.
pub fn tcp_ext_counter(ns: &str, name: &str) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "cat", "/proc/net/netstat"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    if lines.len() < 2 {
        return 0;
    }
    let names = lines[0].split_whitespace();
    let values = lines[1].split_whitespace();
    names
        .zip(values)
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// The addresses of a dual-stack pair.
#[derive(Clone, Debug)]
pub struct MatrixAddrs {
    pub peer_ns: String,
    pub peer4: Ipv4Addr,
    pub felix4: Ipv4Addr,
    pub peer6: Ipv6Addr,
    pub felix6: Ipv6Addr,
}

/// What the matrix driver needs from a daemon (BIRD, GoBGP, FRR).
pub trait MatrixDaemon: Send + Sync {
    fn name(&self) -> String;
    /// The daemon's table holds `prefix` (with `next_hop` in its entry,
    /// unless `next_hop` is empty).
    fn has_route(&self, prefix: &str, next_hop: &str) -> bool;
    /// Makes the daemon withdraw its own route `prefix`.
    fn withdraw(&self, prefix: &str);
    /// Tables, session states, logs: printed when a case fails.
    fn diag(&self) -> String;
}

/// One case of the matrix: two sessions between felix and the daemon, one
/// over the IPv4 addresses (IPv4 unicast) and one over the IPv6 addresses
/// (IPv6 unicast).
#[derive(Clone, Debug)]
pub struct MatrixCase {
    pub felix_as: u32,
    pub peer_as: u32,
    /// Prefixes the daemon originates (IPv4, IPv6).
    pub peer_prefixes: [&'static str; 2],
    /// Prefixes felix originates (IPv4, IPv6).
    pub felix_prefixes: [&'static str; 2],
    /// TCP MD5 key felix uses on both sessions.
    pub password: Option<String>,
}

/// Polls an async predicate, sleeping on the runtime between tries (the
/// felix side runs a current-thread runtime: blocking it would stop its
/// sessions' keepalives).
pub async fn poll_async<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f().await
}

async fn matrix_speaker(a: &MatrixAddrs, case: &MatrixCase) -> Speaker {
    // Not listening: incoming connections would not be MD5-signed (see
    // docs/bgp-speaker.md); felix connects, the daemons accept.
    let mut config = SpeakerConfig::new(case.felix_as, a.felix4);
    config.hold_time = 9;
    config.families = vec![Family::IPV4_UNICAST, Family::IPV6_UNICAST];
    let speaker = Speaker::start(config).await.unwrap();
    for (peer, local) in [
        (IpAddr::from(a.peer4), IpAddr::from(a.felix4)),
        (IpAddr::from(a.peer6), IpAddr::from(a.felix6)),
    ] {
        let mut n = NeighborConfig::new(peer, case.peer_as);
        n.local_address = Some(local);
        n.password = case.password.clone();
        speaker.add_neighbor(n).await.unwrap();
    }
    speaker
}

async fn established(speaker: &Speaker) -> usize {
    speaker
        .status()
        .await
        .peers
        .iter()
        .filter(|p| p.state == "Established")
        .count()
}

fn drain(
    best: &mut tokio::sync::mpsc::UnboundedReceiver<BestPathChange>,
    seen: &mut Vec<BestPathChange>,
) {
    while let Ok(c) = best.try_recv() {
        seen.push(c);
    }
}

/// Runs the full exchange of `case` against `daemon` (already started and
/// listening): both sessions Established; the daemon's IPv4 and IPv6
/// prefixes in `routes()` and on the best-path stream with the daemon's
/// address as next hop (AS path = the daemon's AS for eBGP; empty with
/// LOCAL_PREF 100 for iBGP); felix's prefixes in the daemon's table with
/// felix's address as next hop; felix's withdrawals leave the daemon's
/// table; the daemon's withdrawals leave `routes()` and come as
/// withdrawals on the stream.
pub fn run_matrix_exchange(
    pair: &NetnsPair,
    a: &MatrixAddrs,
    daemon: Arc<dyn MatrixDaemon>,
    case: MatrixCase,
) {
    let a = a.clone();
    let d = daemon.clone();
    let result = pair.in_felix(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(matrix_exchange(a, d, case))
    });
    if let Err(e) = result {
        eprintln!("{} diagnostics:\n{}", daemon.name(), daemon.diag());
        std::panic::resume_unwind(e);
    }
}

async fn matrix_exchange(a: MatrixAddrs, d: Arc<dyn MatrixDaemon>, case: MatrixCase) {
    let name = d.name();
    let ibgp = case.felix_as == case.peer_as;
    let started = tokio::time::Instant::now();
    let speaker = matrix_speaker(&a, &case).await;
    let mut best = speaker.subscribe();
    let mut seen = Vec::new();
    let up = poll_async(Duration::from_secs(15), || async {
        established(&speaker).await == 2
    })
    .await;
    assert!(up, "{name}: sessions not up: {:?}", speaker.status().await);
    println!(
        "{name}: both sessions Established after {:?}",
        started.elapsed()
    );

    // The daemon's routes at felix.
    let peer_nh: [IpAddr; 2] = [a.peer4.into(), a.peer6.into()];
    for (prefix, nh) in case.peer_prefixes.iter().zip(peer_nh) {
        let p: Prefix = prefix.parse().unwrap();
        let found = poll_async(Duration::from_secs(10), || async {
            !speaker.routes(Some(p)).await.is_empty()
        })
        .await;
        assert!(
            found,
            "{name}: {prefix} not at felix: {:?}",
            speaker.routes(None).await
        );
        let routes = speaker.routes(Some(p)).await;
        let r = routes.iter().find(|r| r.prefix == p).unwrap();
        let path = &r.paths[0];
        assert_eq!(path.next_hop, Some(nh), "{name}: {r:?}");
        assert_eq!(path.from, Some(nh), "{name}: {r:?}");
        if ibgp {
            assert_eq!(path.as_path, "", "{name}: {r:?}");
            assert_eq!(path.local_pref, Some(100), "{name}: {r:?}");
        } else {
            assert_eq!(path.as_path, case.peer_as.to_string(), "{name}: {r:?}");
        }
        drain(&mut best, &mut seen);
        assert!(
            seen.iter()
                .any(|c| c.prefix == p && !c.is_withdrawal() && c.next_hops == vec![nh]),
            "{name}: {prefix} not on the best-path stream: {seen:?}"
        );
    }
    println!(
        "{name}: daemon's IPv4 and IPv6 routes at felix after {:?}",
        started.elapsed()
    );

    // felix's routes at the daemon.
    let felix_nh = [a.felix4.to_string(), a.felix6.to_string()];
    for prefix in case.felix_prefixes {
        // The table query sees absence (not a vacuous check).
        assert!(
            !d.has_route(prefix, ""),
            "{name}: {prefix} before felix sent it"
        );
        speaker
            .originate(prefix.parse().unwrap(), vec![])
            .await
            .unwrap();
    }
    for (prefix, nh) in case.felix_prefixes.iter().zip(&felix_nh) {
        let found = poll_async(Duration::from_secs(10), || async {
            d.has_route(prefix, nh)
        })
        .await;
        assert!(
            found,
            "{name}: felix's {prefix} (next hop {nh}) not in the daemon"
        );
        let wrong = if prefix.contains(':') {
            "2001:db8::dead"
        } else {
            "192.0.2.254"
        };
        assert!(
            !d.has_route(prefix, wrong),
            "{name}: next hop check is vacuous"
        );
    }
    println!(
        "{name}: felix's routes at the daemon after {:?}",
        started.elapsed()
    );

    // felix withdraws.
    for prefix in case.felix_prefixes {
        speaker.withdraw(prefix.parse().unwrap()).await.unwrap();
    }
    for prefix in case.felix_prefixes {
        let gone = poll_async(Duration::from_secs(10), || async {
            !d.has_route(prefix, "")
        })
        .await;
        assert!(
            gone,
            "{name}: felix's withdrawal of {prefix} not seen by the daemon"
        );
    }

    // The daemon withdraws.
    for prefix in case.peer_prefixes {
        d.withdraw(prefix);
    }
    for prefix in case.peer_prefixes {
        let p: Prefix = prefix.parse().unwrap();
        let gone = poll_async(Duration::from_secs(10), || async {
            speaker.routes(Some(p)).await.is_empty()
        })
        .await;
        assert!(gone, "{name}: daemon's withdrawal of {prefix} not at felix");
        drain(&mut best, &mut seen);
        assert!(
            seen.iter().any(|c| c.prefix == p && c.is_withdrawal()),
            "{name}: no withdrawal of {prefix} on the stream: {seen:?}"
        );
    }
    println!(
        "{name}: withdrawals both ways done after {:?}",
        started.elapsed()
    );
    assert_eq!(
        established(&speaker).await,
        2,
        "{:?}",
        speaker.status().await
    );
    speaker.shutdown(Some("felix interop matrix".into())).await;
}

/// felix with the wrong MD5 key: neither session reaches Established
/// within `limit`, and the daemon's namespace counts MD5 failures.
pub fn run_matrix_md5_wrong(
    pair: &NetnsPair,
    a: &MatrixAddrs,
    daemon: Arc<dyn MatrixDaemon>,
    case: MatrixCase,
    limit: Duration,
) {
    let a = a.clone();
    let before = tcp_ext_counter(&pair.peer, "TCPMD5Failure");
    let name = daemon.name();
    let result = pair.in_felix(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let speaker = matrix_speaker(&a, &case).await;
            let up = poll_async(limit, || async { established(&speaker).await > 0 }).await;
            let status = speaker.status().await;
            speaker.shutdown(None).await;
            (up, status)
        })
    });
    let (up, status) = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name} diagnostics:\n{}", daemon.diag());
            std::panic::resume_unwind(e);
        }
    };
    assert!(
        !up,
        "{name}: a session came up with the wrong password: {status:?}"
    );
    let after = tcp_ext_counter(&pair.peer, "TCPMD5Failure");
    println!(
        "{name}: wrong MD5 key: states {:?}, TcpExtTCPMD5Failure {before} -> {after}",
        status
            .peers
            .iter()
            .map(|p| p.state.clone())
            .collect::<Vec<_>>()
    );
    assert!(
        after > before,
        "{name}: TcpExtTCPMD5Failure did not increase ({before} -> {after})"
    );
}

/// What one IPv4 session carrying both families showed.
#[derive(Debug)]
pub struct SingleSession {
    /// The daemon's IPv4 prefix at felix.
    pub v4_at_felix: bool,
    /// The next hop of the daemon's IPv6 prefix in felix's Loc-RIB
    /// (`None`: did not arrive, or arrived with an unresolvable next hop).
    pub v6_at_felix: Option<IpAddr>,
    /// Prefixes felix received from the daemon, both families, before
    /// next-hop resolution.
    pub received: u64,
    /// felix's IPv4 prefix at the daemon.
    pub v4_at_daemon: bool,
    /// felix's IPv6 prefix at the daemon (felix has no IPv6 address on an
    /// IPv4 session, so it does not export IPv6 routes there).
    pub v6_at_daemon: bool,
    /// Negotiated state of the session.
    pub state: String,
}

/// Only the IPv4 session (the daemon configured for both families on it):
/// what arrives where within a few seconds.
pub fn run_single_ipv4_session(
    pair: &NetnsPair,
    a: &MatrixAddrs,
    daemon: Arc<dyn MatrixDaemon>,
    case: MatrixCase,
) -> SingleSession {
    let a = a.clone();
    let d = daemon.clone();
    let result = pair.in_felix(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut config = SpeakerConfig::new(case.felix_as, a.felix4);
            config.hold_time = 9;
            config.families = vec![Family::IPV4_UNICAST, Family::IPV6_UNICAST];
            let speaker = Speaker::start(config).await.unwrap();
            let mut n = NeighborConfig::new(a.peer4.into(), case.peer_as);
            n.local_address = Some(a.felix4.into());
            speaker.add_neighbor(n).await.unwrap();
            let up = poll_async(Duration::from_secs(15), || async {
                established(&speaker).await == 1
            })
            .await;
            assert!(up, "sessions not up: {:?}", speaker.status().await);
            for prefix in case.felix_prefixes {
                speaker
                    .originate(prefix.parse().unwrap(), vec![])
                    .await
                    .unwrap();
            }
            let p4: Prefix = case.peer_prefixes[0].parse().unwrap();
            let p6: Prefix = case.peer_prefixes[1].parse().unwrap();
            let v4_at_felix = poll_async(Duration::from_secs(5), || async {
                !speaker.routes(Some(p4)).await.is_empty()
            })
            .await;
            poll_async(Duration::from_secs(3), || async {
                !speaker.routes(Some(p6)).await.is_empty()
            })
            .await;
            let v6_at_felix = speaker
                .routes(Some(p6))
                .await
                .first()
                .and_then(|r| r.paths[0].next_hop);
            let v4_at_daemon = poll_async(Duration::from_secs(5), || async {
                d.has_route(case.felix_prefixes[0], "")
            })
            .await;
            let v6_at_daemon = poll_async(Duration::from_secs(1), || async {
                d.has_route(case.felix_prefixes[1], "")
            })
            .await;
            let status = speaker.status().await;
            let state = status.peers[0].state.clone();
            let received = status.peers[0].received;
            speaker.shutdown(None).await;
            SingleSession {
                v4_at_felix,
                v6_at_felix,
                received,
                v4_at_daemon,
                v6_at_daemon,
                state,
            }
        })
    });
    match result {
        Ok(r) => {
            println!("{}: one IPv4 session, both families: {r:?}", daemon.name());
            r
        }
        Err(e) => {
            eprintln!("{} diagnostics:\n{}", daemon.name(), daemon.diag());
            std::panic::resume_unwind(e);
        }
    }
}
