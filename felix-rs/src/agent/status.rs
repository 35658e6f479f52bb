//! `felix status`: one screen about the node agent, read over its control
//! socket (a unix socket, mode 0600 in a 0700 directory). The agent
//! writes one JSON [`AgentStatus`] to every connection and closes it.

use super::forwarding::{RemoteRoute, Via};
use bgp::speaker::PeerStatus;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Read;
use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// What `felix status` shows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub node: String,
    pub address: String,
    /// The node's IPv6 address (dual stack).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_v6: Option<String>,
    pub asn: u32,
    pub router_id: Option<Ipv4Addr>,
    pub datastore: String,
    /// The last datastore read succeeded.
    pub datastore_ok: bool,
    pub mesh: bool,
    /// Registered nodes (name → IPv4 address, then the IPv6 one if any).
    pub nodes: BTreeMap<String, String>,
    pub peers: Vec<PeerStatus>,
    /// This node's affine blocks, originated via BGP.
    pub blocks: Vec<IpNet>,
    /// Remote prefixes learned via BGP and how they are forwarded.
    pub routes: BTreeMap<IpNet, RemoteRoute>,
    /// Whether a route programmer is attached (else routes are only shown).
    pub programming: bool,
    /// Routes the programmer reported installed at its last reconcile.
    pub routes_programmed: Option<usize>,
    /// The pools the NAT outgoing table masquerades, as last written
    /// (empty: no pool wants NAT, the table is removed); `None` before the
    /// first write, after a failed one, or without NAT in this build.
    #[serde(default)]
    pub nat_outgoing: Option<BTreeSet<IpNet>>,
    /// This node's addresses per pool, as last read (every
    /// [`super::run::USAGE_REFRESH`]).
    #[serde(default)]
    pub ipam_usage: Vec<ipam::PoolUsage>,
    pub ready: bool,
    /// Newest last; each prefixed with its age at the time of the answer.
    pub last_errors: Vec<String>,
    /// Configuration that could not be honoured.
    pub warnings: Vec<String>,
}

/// How many of `prefixes` are IPv4 and IPv6.
fn count_by_family<'a>(prefixes: impl Iterator<Item = &'a IpNet>) -> (usize, usize) {
    prefixes.fold((0, 0), |(v4, v6), p| match p {
        IpNet::V4(_) => (v4 + 1, v6),
        IpNet::V6(_) => (v4, v6 + 1),
    })
}

impl AgentStatus {
    /// This node's blocks: (IPv4, IPv6).
    pub fn blocks_by_family(&self) -> (usize, usize) {
        count_by_family(self.blocks.iter())
    }

    /// The learned routes: (IPv4, IPv6).
    pub fn routes_by_family(&self) -> (usize, usize) {
        count_by_family(self.routes.keys())
    }
}

/// Renders the one screen.
pub fn render(s: &AgentStatus) -> String {
    let mut o = String::new();
    let rid = s.router_id.map(|r| r.to_string()).unwrap_or_default();
    let v6 = s
        .address_v6
        .as_ref()
        .map(|a| format!(" {a}"))
        .unwrap_or_default();
    let _ = writeln!(
        o,
        "node       {}  address {}{v6}  AS {}  router id {}  {}",
        s.node,
        s.address,
        s.asn,
        rid,
        if s.ready { "READY" } else { "NOT READY" }
    );
    let _ = writeln!(
        o,
        "datastore  {} ({})  nodes: {}  mesh: {}",
        s.datastore,
        if s.datastore_ok { "ok" } else { "FAILING" },
        s.nodes.len(),
        if s.mesh { "on" } else { "off" }
    );
    let _ = writeln!(o, "\npeers");
    let _ = writeln!(
        o,
        "  {:<18} {:<8} {:<12} {:>8} {:>8} {:>8}  last error",
        "address", "AS", "state", "uptime", "accepted", "sent"
    );
    for p in &s.peers {
        let up = p.uptime_secs.map(|u| format!("{u}s")).unwrap_or_default();
        let _ = writeln!(
            o,
            "  {:<18} {:<8} {:<12} {:>8} {:>8} {:>8}  {}",
            p.address.to_string(),
            p.asn,
            p.state,
            up,
            p.accepted,
            p.advertised,
            p.last_error.as_deref().unwrap_or("")
        );
    }
    let blocks: Vec<String> = s.blocks.iter().map(|b| b.to_string()).collect();
    let (b4, b6) = s.blocks_by_family();
    let _ = writeln!(o, "\nblocks     {b4} IPv4, {b6} IPv6: {}", blocks.join(" "));
    for u in &s.ipam_usage {
        let _ = writeln!(
            o,
            "  pool {}: {} of {} addresses in use in {} block(s)",
            u.pool, u.in_use, u.capacity, u.blocks
        );
    }
    let prog = match (s.programming, s.routes_programmed) {
        (false, _) => "not programmed (no route programmer in this build)".to_string(),
        (true, Some(n)) => format!("{n} programmed"),
        (true, None) => "programming…".to_string(),
    };
    let (r4, r6) = s.routes_by_family();
    let _ = writeln!(
        o,
        "routes     {} learned ({r4} IPv4, {r6} IPv6), {prog}",
        s.routes.len()
    );
    for (prefix, r) in &s.routes {
        let hops: Vec<String> = r.next_hops.iter().map(|h| h.to_string()).collect();
        let how = match (&r.pending, r.via) {
            (Some(why), via) => format!("{via:?}, not programmed: {why}"),
            (None, Via::Direct) => "Direct".to_string(),
            (None, via) => {
                let g: Vec<String> = r.gateways.iter().map(|h| h.to_string()).collect();
                format!("{via:?} via {}", g.join(","))
            }
        };
        let _ = writeln!(
            o,
            "  {:<20} via {:<28} {how}",
            prefix.to_string(),
            hops.join(","),
        );
    }
    let nat = match &s.nat_outgoing {
        None => "not written (see last errors)".to_string(),
        Some(p) if p.is_empty() => "none (no pool with natOutgoing; no table)".to_string(),
        Some(p) => {
            let pools: Vec<String> = p.iter().map(ToString::to_string).collect();
            format!(
                "pools {} (table {})",
                pools.join(", "),
                super::nat_outgoing::TABLE
            )
        }
    };
    let _ = writeln!(o, "nat outgoing {nat}");
    if !s.warnings.is_empty() {
        let _ = writeln!(o, "\nwarnings");
        for w in &s.warnings {
            let _ = writeln!(o, "  {w}");
        }
    }
    let _ = writeln!(o, "\nlast errors");
    if s.last_errors.is_empty() {
        let _ = writeln!(o, "  (none)");
    }
    for e in &s.last_errors {
        let _ = writeln!(o, "  {e}");
    }
    o
}

/// Why `felix status` could not read the agent.
#[derive(Debug, Error)]
pub enum StatusError {
    #[error("cannot reach the agent at {path}: {source} (is `felix node run` running?)")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading from {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the agent's answer does not decode: {0}")]
    Decode(#[from] serde_json::Error),
}

/// Reads the status from the agent's control socket.
pub fn query(path: &Path) -> Result<AgentStatus, StatusError> {
    let mut stream =
        std::os::unix::net::UnixStream::connect(path).map_err(|source| StatusError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    let read_err = |source| StatusError::Read {
        path: path.to_path_buf(),
        source,
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(read_err)?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).map_err(read_err)?;
    Ok(serde_json::from_slice(&buf)?)
}

/// Binds the control socket (replacing a stale file; the directory is
/// created 0700, the socket made 0600).
pub fn bind(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("another agent answers on {}", path.display()),
        ));
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_screen_names_node_peers_blocks_routes_and_errors() {
        let s = AgentStatus {
            node: "n1".into(),
            address: "10.0.0.1/24".into(),
            asn: 64512,
            datastore: "sqlite:/x.db".into(),
            datastore_ok: true,
            mesh: true,
            peers: vec![PeerStatus {
                address: "10.0.0.2".parse().unwrap(),
                asn: 64512,
                state: "Established".into(),
                uptime_secs: Some(5),
                rr_client: false,
                received: 1,
                accepted: 1,
                advertised: 1,
                last_error: None,
                dynamic: false,
                end_of_rib: false,
            }],
            blocks: vec!["10.244.0.0/26".parse().unwrap()],
            routes: [
                (
                    "10.244.0.64/26".parse().unwrap(),
                    RemoteRoute {
                        next_hops: vec!["10.0.0.2".parse().unwrap()],
                        via: Via::Direct,
                        gateways: vec!["10.0.0.2".parse().unwrap()],
                        pending: None,
                    },
                ),
                (
                    "10.244.1.0/26".parse().unwrap(),
                    RemoteRoute {
                        next_hops: vec!["10.0.1.3".parse().unwrap()],
                        via: Via::Vxlan,
                        gateways: vec!["10.244.1.0".parse().unwrap()],
                        pending: None,
                    },
                ),
                (
                    "10.244.1.64/26".parse().unwrap(),
                    RemoteRoute {
                        next_hops: vec!["10.0.1.4".parse().unwrap()],
                        via: Via::Vxlan,
                        gateways: vec![],
                        pending: Some("node node-4 has no VTEP registered yet".into()),
                    },
                ),
            ]
            .into(),
            last_errors: vec!["3s ago: datastore unavailable".into()],
            nat_outgoing: Some(["10.244.0.0/16".parse().unwrap()].into()),
            ..Default::default()
        };
        let text = render(&s);
        for needle in [
            "n1",
            "NOT READY",
            "10.0.0.2",
            "Established",
            "10.244.0.0/26",
            "10.244.0.64/26",
            "not programmed",
            "Vxlan via 10.244.1.0",
            "not programmed: node node-4 has no VTEP",
            "1 IPv4, 0 IPv6",
            "3 learned (3 IPv4, 0 IPv6)",
            "datastore unavailable",
            "nat outgoing pools 10.244.0.0/16 (table inet felix)",
        ] {
            assert!(text.contains(needle), "{needle} in\n{text}");
        }
    }

    #[tokio::test]
    async fn query_reads_what_the_socket_serves() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/agent.sock");
        let listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let served = AgentStatus {
            node: "n9".into(),
            ..Default::default()
        };
        let body = serde_json::to_vec(&served).unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(&body).await.unwrap();
        });
        let p = path.clone();
        let got = tokio::task::spawn_blocking(move || query(&p))
            .await
            .unwrap()
            .unwrap();
        server.await.unwrap();
        assert_eq!(got, served);
        drop(dir);
        assert!(matches!(query(&path), Err(StatusError::Connect { .. })));
    }
}
