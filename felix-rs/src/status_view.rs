//! Text tables for `felix bgp status` and `felix bgp routes`, in the spirit
//! of `birdc show protocols` / `show route`: one line per peer or path,
//! columns aligned, `-` where there is nothing to show.

use bgp::speaker::{PathView, PeerStatus, RouteView, SpeakerStatus};
use std::fmt::Write;

/// `3661` -> `1h1m`: the two largest units, like BIRD's "since" column.
pub fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// Lays out rows under a header: columns left-aligned, two spaces apart,
/// no trailing blanks.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let columns = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate().take(columns) {
            if i + 1 < columns {
                let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// The `felix bgp status` text.
pub fn render_status(status: &SpeakerStatus) -> String {
    let established = status
        .peers
        .iter()
        .filter(|p| p.state == "Established")
        .count();
    let listen = status.listen.map_or_else(
        || "not listening".to_string(),
        |a| format!("listening on {a}"),
    );
    let mut out = format!(
        "BGP speaker AS {}, router id {}, {listen}; {} peer{}, {established} established\n",
        status.asn,
        status.router_id,
        status.peers.len(),
        if status.peers.len() == 1 { "" } else { "s" },
    );
    if status.peers.is_empty() {
        return out;
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = status.peers.iter().map(peer_row).collect();
    out.push_str(&table(
        &[
            "Peer",
            "AS",
            "State",
            "Uptime",
            "Recv/Acc/Adv",
            "RR",
            "Last error",
        ],
        &rows,
    ));
    out
}

fn peer_row(peer: &PeerStatus) -> Vec<String> {
    vec![
        // A dynamic neighbour (from a listen range) is marked as such.
        if peer.dynamic {
            format!("{} (dynamic)", peer.address)
        } else {
            peer.address.to_string()
        },
        peer.asn.to_string(),
        peer.state.clone(),
        or_dash(peer.uptime_secs.map(human_duration)),
        format!("{}/{}/{}", peer.received, peer.accepted, peer.advertised),
        if peer.rr_client { "client" } else { "-" }.to_string(),
        or_dash(peer.last_error.as_deref()),
    ]
}

/// The `felix bgp routes` text: one line per path, the prefix on its first
/// path only, `*` marking the best path.
pub fn render_routes(routes: &[RouteView]) -> String {
    if routes.is_empty() {
        return "No routes.\n".to_string();
    }
    let mut rows = Vec::new();
    for route in routes {
        for (i, path) in route.paths.iter().enumerate() {
            let prefix = if i == 0 {
                route.prefix.to_string()
            } else {
                String::new()
            };
            rows.push(path_row(prefix, path));
        }
    }
    let paths = rows.len();
    let mut out = table(
        &[
            "",
            "Prefix",
            "Next hop",
            "From",
            "AS path",
            "Origin",
            "LocPrf",
            "MED",
            "Communities",
        ],
        &rows,
    );
    let _ = writeln!(
        out,
        "\n{} prefix{}, {paths} path{}",
        routes.len(),
        if routes.len() == 1 { "" } else { "es" },
        if paths == 1 { "" } else { "s" },
    );
    out
}

fn path_row(prefix: String, path: &PathView) -> Vec<String> {
    let mut communities = path.communities.join(" ");
    if path.stale {
        if !communities.is_empty() {
            communities.push(' ');
        }
        communities.push_str("(stale)");
    }
    if communities.is_empty() {
        communities.push('-');
    }
    vec![
        if path.best { "*" } else { "" }.to_string(),
        prefix,
        or_dash(path.next_hop),
        path.from
            .map_or_else(|| "local".to_string(), |a| a.to_string()),
        if path.as_path.is_empty() {
            "-".to_string()
        } else {
            path.as_path.clone()
        },
        path.origin.clone(),
        or_dash(path.local_pref),
        or_dash(path.med),
        communities,
    ]
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(61), "1m1s");
        assert_eq!(human_duration(3_720), "1h2m");
        assert_eq!(human_duration(90_000), "1d1h");
    }

    fn peer(address: &str, state: &str) -> PeerStatus {
        PeerStatus {
            address: address.parse().unwrap(),
            asn: 65001,
            state: state.to_string(),
            uptime_secs: None,
            rr_client: false,
            received: 0,
            accepted: 0,
            advertised: 0,
            last_error: None,
            dynamic: false,
            end_of_rib: false,
        }
    }

    #[test]
    fn status_table() {
        let status = SpeakerStatus {
            asn: 65000,
            router_id: "10.0.0.1".parse().unwrap(),
            listen: Some("0.0.0.0:179".parse().unwrap()),
            peers: vec![
                PeerStatus {
                    uptime_secs: Some(3_720),
                    rr_client: true,
                    received: 12,
                    accepted: 10,
                    advertised: 3,
                    ..peer("10.0.0.2", "Established")
                },
                PeerStatus {
                    asn: 4_200_000_000,
                    last_error: Some("Hold timer expired".into()),
                    ..peer("2001:db8::3", "Active")
                },
                PeerStatus {
                    dynamic: true,
                    rr_client: true,
                    ..peer("10.0.1.7", "OpenSent")
                },
            ],
        };
        let text = render_status(&status);
        let expected = "\
BGP speaker AS 65000, router id 10.0.0.1, listening on 0.0.0.0:179; 3 peers, 1 established

Peer                AS          State        Uptime  Recv/Acc/Adv  RR      Last error
10.0.0.2            65001       Established  1h2m    12/10/3       client  -
2001:db8::3         4200000000  Active       -       0/0/0         -       Hold timer expired
10.0.1.7 (dynamic)  65001       OpenSent     -       0/0/0         client  -
";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn status_without_peers() {
        let status = SpeakerStatus {
            asn: 65000,
            router_id: "10.0.0.1".parse().unwrap(),
            listen: None,
            peers: vec![],
        };
        assert_eq!(
            render_status(&status),
            "BGP speaker AS 65000, router id 10.0.0.1, not listening; 0 peers, 0 established\n"
        );
    }

    #[test]
    fn routes_table() {
        let path = PathView {
            best: true,
            next_hop: Some("10.0.0.2".parse().unwrap()),
            from: Some("10.0.0.2".parse().unwrap()),
            as_path: "65001 65002".into(),
            origin: "IGP".into(),
            local_pref: Some(100),
            med: None,
            communities: vec!["65000:1".into()],
            stale: false,
        };
        let routes = vec![
            RouteView {
                prefix: "10.0.0.0/24".parse().unwrap(),
                paths: vec![
                    path.clone(),
                    PathView {
                        best: false,
                        next_hop: Some("10.0.0.3".parse().unwrap()),
                        from: Some("10.0.0.3".parse().unwrap()),
                        as_path: "65003".into(),
                        med: Some(20),
                        communities: vec![],
                        stale: true,
                        ..path.clone()
                    },
                ],
            },
            RouteView {
                prefix: "10.9.0.0/16".parse().unwrap(),
                paths: vec![PathView {
                    next_hop: None,
                    from: None,
                    as_path: String::new(),
                    local_pref: None,
                    communities: vec![],
                    ..path
                }],
            },
        ];
        let text = render_routes(&routes);
        let expected = "\
\x20  Prefix       Next hop  From      AS path      Origin  LocPrf  MED  Communities
*  10.0.0.0/24  10.0.0.2  10.0.0.2  65001 65002  IGP     100     -    65000:1
                10.0.0.3  10.0.0.3  65003        IGP     100     20   (stale)
*  10.9.0.0/16  -         local     -            IGP     -       -    -

2 prefixes, 3 paths
";
        assert_eq!(text, expected, "\n{text}");
        assert_eq!(render_routes(&[]), "No routes.\n");
    }
}
