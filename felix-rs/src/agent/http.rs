//! The agent's HTTP endpoint for the DaemonSet's probes and Prometheus:
//! `GET /livez`, `GET /readyz`, `GET /metrics` (text exposition format
//! 0.0.4). A few lines of HTTP/1.1 by hand: one request per connection,
//! no body, `Connection: close`.

use super::status::AgentStatus;
use std::fmt::Write as _;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Answers one path: status code and body.
pub type Responder = Arc<dyn Fn(&str) -> (u16, String) + Send + Sync>;

/// Serves until the listener fails.
pub async fn serve(listener: TcpListener, respond: Responder) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let respond = respond.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            // Read until the end of the request head (or 4 KiB).
            while len < buf.len() {
                match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    stream.read(&mut buf[len..]),
                )
                .await
                {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => len += n,
                }
                if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let (code, body) = match head.split_whitespace().collect::<Vec<_>>()[..] {
                ["GET", path, ..] => respond(path),
                _ => (400, "bad request\n".to_string()),
            };
            let reason = match code {
                200 => "OK",
                404 => "Not Found",
                503 => "Service Unavailable",
                _ => "Bad Request",
            };
            let ctype = "text/plain; version=0.0.4; charset=utf-8";
            let answer = format!(
                "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// Counters the status does not carry.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    /// Seconds the last route reconcile took.
    pub reconcile_seconds: f64,
    pub reconciles: u64,
    pub reconcile_errors: u64,
    pub neighbor_changes: u64,
    /// NAT outgoing table writes that failed.
    pub nat_errors: u64,
}

/// The Prometheus text for a status snapshot.
pub fn metrics(s: &AgentStatus, c: &Counters) -> String {
    let mut o = String::new();
    let mut gauge = |name: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, v) in samples {
            let _ = writeln!(o, "{name}{labels} {v}");
        }
    };
    let peer_label = |p: &bgp::speaker::PeerStatus| format!("{{peer=\"{}\"}}", p.address);
    let established: Vec<(String, f64)> = s
        .peers
        .iter()
        .map(|p| (peer_label(p), f64::from(u8::from(p.state == "Established"))))
        .collect();
    gauge(
        "felix_bgp_session_established",
        "1 when the BGP session to the peer is Established.",
        &established,
    );
    let accepted: Vec<(String, f64)> = s
        .peers
        .iter()
        .map(|p| (peer_label(p), p.accepted as f64))
        .collect();
    gauge(
        "felix_bgp_prefixes_accepted",
        "Prefixes accepted from the peer.",
        &accepted,
    );
    let advertised: Vec<(String, f64)> = s
        .peers
        .iter()
        .map(|p| (peer_label(p), p.advertised as f64))
        .collect();
    gauge(
        "felix_bgp_prefixes_advertised",
        "Prefixes advertised to the peer.",
        &advertised,
    );
    gauge(
        "felix_routes_learned",
        "Remote prefixes the speaker selected a best path for.",
        &[(String::new(), s.routes.len() as f64)],
    );
    if let Some(n) = s.routes_programmed {
        gauge(
            "felix_routes_programmed",
            "Routes the route programmer holds in the kernel.",
            &[(String::new(), n as f64)],
        );
    }
    gauge(
        "felix_route_reconcile_duration_seconds",
        "Duration of the last route reconcile.",
        &[(String::new(), c.reconcile_seconds)],
    );
    gauge(
        "felix_ipam_blocks",
        "Blocks affine to this node.",
        &[(String::new(), s.blocks.len() as f64)],
    );
    let pool_label = |u: &ipam::PoolUsage| format!("{{pool=\"{}\"}}", u.pool);
    let in_use: Vec<(String, f64)> = s
        .ipam_usage
        .iter()
        .map(|u| (pool_label(u), u.in_use as f64))
        .collect();
    gauge(
        "felix_ipam_addresses_in_use",
        "Addresses handed out from this node's blocks, by pool.",
        &in_use,
    );
    let capacity: Vec<(String, f64)> = s
        .ipam_usage
        .iter()
        .map(|u| (pool_label(u), u.capacity as f64))
        .collect();
    gauge(
        "felix_ipam_addresses_capacity",
        "Addresses in this node's blocks, by pool.",
        &capacity,
    );
    if let Some(pools) = &s.nat_outgoing {
        gauge(
            "felix_nat_outgoing_pools",
            "Pools whose pods' traffic leaving the cluster is masqueraded (as last written).",
            &[(String::new(), pools.len() as f64)],
        );
    }
    let family = |(v4, v6): (usize, usize)| {
        [
            ("{family=\"ipv4\"}".to_string(), v4 as f64),
            ("{family=\"ipv6\"}".to_string(), v6 as f64),
        ]
    };
    gauge(
        "felix_routes_learned_by_family",
        "Remote prefixes learned, per address family.",
        &family(s.routes_by_family()),
    );
    gauge(
        "felix_ipam_blocks_by_family",
        "Blocks affine to this node, per address family.",
        &family(s.blocks_by_family()),
    );
    gauge(
        "felix_ready",
        "1 when every configured session is Established and the first reconcile is done.",
        &[(String::new(), f64::from(u8::from(s.ready)))],
    );
    let _ = writeln!(
        o,
        "# HELP felix_route_reconciles_total Route reconciles run.\n# TYPE felix_route_reconciles_total counter\nfelix_route_reconciles_total {}",
        c.reconciles
    );
    let _ = writeln!(
        o,
        "# HELP felix_route_reconcile_errors_total Route reconciles that failed.\n# TYPE felix_route_reconcile_errors_total counter\nfelix_route_reconcile_errors_total {}",
        c.reconcile_errors
    );
    let _ = writeln!(
        o,
        "# HELP felix_bgp_neighbor_changes_total Neighbours added or removed at run time.\n# TYPE felix_bgp_neighbor_changes_total counter\nfelix_bgp_neighbor_changes_total {}",
        c.neighbor_changes
    );
    let _ = writeln!(
        o,
        "# HELP felix_nat_outgoing_errors_total NAT outgoing table writes that failed.\n# TYPE felix_nat_outgoing_errors_total counter\nfelix_nat_outgoing_errors_total {}",
        c.nat_errors
    );
    o
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[tokio::test]
    async fn serves_paths_with_codes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let respond: Responder = Arc::new(|path| match path {
            "/livez" => (200, "ok\n".into()),
            "/readyz" => (503, "not ready: peers\n".into()),
            _ => (404, "no\n".into()),
        });
        tokio::spawn(serve(listener, respond));
        for (path, want) in [("/livez", "200 OK"), ("/readyz", "503"), ("/x", "404")] {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            assert!(
                out.starts_with(&format!("HTTP/1.1 {want}")),
                "{path}: {out}"
            );
        }
    }

    #[test]
    fn metrics_carry_sessions_routes_and_blocks() {
        let s = AgentStatus {
            peers: vec![bgp::speaker::PeerStatus {
                address: "10.0.0.2".parse().unwrap(),
                asn: 1,
                state: "Established".into(),
                uptime_secs: None,
                rr_client: false,
                received: 3,
                accepted: 2,
                advertised: 1,
                last_error: None,
                dynamic: false,
                end_of_rib: false,
            }],
            blocks: vec![
                "10.244.0.0/26".parse().unwrap(),
                "fd00:10:244::/122".parse().unwrap(),
            ],
            routes: [
                ("10.244.0.64/26", "10.0.0.2"),
                ("fd00:10:244::40/122", "fd00::2"),
                ("fd00:10:244::80/122", "fd00::3"),
            ]
            .into_iter()
            .map(|(p, h)| {
                let hop: std::net::IpAddr = h.parse().unwrap();
                (
                    p.parse().unwrap(),
                    crate::agent::forwarding::RemoteRoute {
                        next_hops: vec![hop],
                        via: crate::agent::forwarding::Via::Direct,
                        gateways: vec![hop],
                        pending: None,
                    },
                )
            })
            .collect(),
            ..Default::default()
        };
        let text = metrics(&s, &Counters::default());
        assert!(text.contains("felix_bgp_session_established{peer=\"10.0.0.2\"} 1"));
        assert!(text.contains("felix_bgp_prefixes_accepted{peer=\"10.0.0.2\"} 2"));
        assert!(text.contains("felix_ipam_blocks 2"));
        assert!(text.contains("felix_routes_learned 3"));
        assert!(text.contains("felix_routes_learned_by_family{family=\"ipv4\"} 1"));
        assert!(text.contains("felix_routes_learned_by_family{family=\"ipv6\"} 2"));
        assert!(text.contains("felix_ipam_blocks_by_family{family=\"ipv6\"} 1"));
        assert!(text.contains("felix_ready 0"));
        assert!(text.contains("felix_nat_outgoing_errors_total 0"));
        assert!(!text.contains("felix_nat_outgoing_pools"));
        let s = AgentStatus {
            nat_outgoing: Some(["10.244.0.0/16".parse().unwrap()].into()),
            ..Default::default()
        };
        assert!(metrics(&s, &Counters::default()).contains("felix_nat_outgoing_pools 1"));
        let s = AgentStatus {
            ipam_usage: vec![ipam::PoolUsage {
                pool: "10.244.0.0/16".parse().unwrap(),
                blocks: 2,
                in_use: 70,
                capacity: 128,
            }],
            ..Default::default()
        };
        let text = metrics(&s, &Counters::default());
        assert!(text.contains("felix_ipam_addresses_in_use{pool=\"10.244.0.0/16\"} 70\n"));
        assert!(text.contains("felix_ipam_addresses_capacity{pool=\"10.244.0.0/16\"} 128\n"));
    }
}
