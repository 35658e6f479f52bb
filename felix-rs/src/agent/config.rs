//! The agent's own configuration: a TOML file (see docs/agent.md for a
//! complete example), then `FELIX_*` environment variables over it. BGP
//! settings use Calico's names (`[bgp]` is a `BGPConfiguration` spec,
//! `[[bgp_peers]]` are `BGPPeer` specs with a `name`); the datastore's
//! objects of the same kinds are merged over them at run time.

use super::resources::{BgpConfigurationSpec, BgpPeerSpec};
use ipnet::{Ipv4Net, Ipv6Net};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Where the pieces live unless configured.
pub const DEFAULT_DATASTORE: &str = "sqlite:/var/lib/felix/felix.db";
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/felix/agent.sock";
pub const DEFAULT_POD_API_SOCKET: &str = "/run/felix/pod-api.sock";
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:9099";

/// Why the configuration was refused.
#[derive(Debug, Error)]
pub enum AgentConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {name}={value:?}: {message}")]
    Env {
        name: &'static str,
        value: String,
        message: String,
    },
    #[error("node address: {0}")]
    NodeAddress(String),
    #[error("{0}")]
    Invalid(String),
}

/// The node's IPv6 address as configured (`node_address_v6`,
/// `FELIX_NODE_ADDRESS_V6`): Calico's `IP6` (`none`, `autodetect` or an
/// address). IPv6 is opt-in, as in Calico: unset means `none`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NodeAddressV6 {
    /// No IPv6: IPv4 only.
    #[default]
    None,
    /// The global address of the interface holding the IPv6 default route,
    /// else the global address on the IPv4 node interface.
    Autodetect,
    /// `ADDR/LEN`.
    Address(Ipv6Net),
}

impl std::str::FromStr for NodeAddressV6 {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(NodeAddressV6::None),
            "autodetect" => Ok(NodeAddressV6::Autodetect),
            _ => s
                .parse()
                .map(NodeAddressV6::Address)
                .map_err(|e| format!("{s:?}: expected none, autodetect or an IPv6 ADDR/LEN ({e})")),
        }
    }
}

impl<'de> Deserialize<'de> for NodeAddressV6 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// A `[[bgp_peers]]` entry: a named `BGPPeer` spec.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct NamedPeer {
    pub name: String,
    #[serde(flatten)]
    pub spec: BgpPeerSpec,
}

/// The file as written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    pub node_name: Option<String>,
    /// `ADDR/LEN`; detected when absent.
    pub node_address: Option<Ipv4Net>,
    /// `ADDR/LEN`, `autodetect` or `none` (the default).
    pub node_address_v6: Option<NodeAddressV6>,
    pub router_id: Option<Ipv4Addr>,
    /// This node's AS (the cluster's, `bgp.asNumber`, when absent).
    pub as_number: Option<u32>,
    /// Makes this node a route reflector (Calico node `routeReflectorClusterID`).
    pub route_reflector_cluster_id: Option<Ipv4Addr>,
    pub datastore: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub control_socket: Option<PathBuf>,
    pub pod_api_socket: Option<PathBuf>,
    pub http_listen: Option<SocketAddr>,
    pub log_format: Option<LogFormat>,
    pub log_level: Option<String>,
    /// Periodic route resync, seconds.
    pub resync_seconds: Option<u64>,
    /// Announce the start as a graceful restart (kernel routes kept); unset:
    /// when the kernel holds felix routes from a previous run.
    pub graceful_restart_recovery: Option<bool>,
    #[serde(default)]
    pub bgp: BgpConfigurationSpec,
    #[serde(default)]
    pub bgp_peers: Vec<NamedPeer>,
}

/// The resolved configuration the agent runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentConfig {
    pub node_name: String,
    pub node_address: Ipv4Net,
    /// The node's IPv6 address (dual stack); `None`: IPv4 only.
    pub node_address_v6: Option<Ipv6Net>,
    pub router_id: Ipv4Addr,
    pub as_number: Option<u32>,
    pub route_reflector_cluster_id: Option<Ipv4Addr>,
    pub datastore: String,
    pub labels: BTreeMap<String, String>,
    pub control_socket: PathBuf,
    pub pod_api_socket: PathBuf,
    pub http_listen: SocketAddr,
    pub log_format: LogFormat,
    pub log_level: String,
    pub resync_seconds: u64,
    /// `None`: decided at start (a restart when the kernel holds felix
    /// routes from the previous run).
    pub graceful_restart_recovery: Option<bool>,
    pub bgp: BgpConfigurationSpec,
    pub bgp_peers: BTreeMap<String, BgpPeerSpec>,
}

/// Parses the TOML text of a configuration file.
pub fn parse_file(text: &str) -> Result<AgentFile, String> {
    toml::from_str(text).map_err(|e| e.to_string())
}

/// How the node's addresses are found when the configuration does not give
/// them: the IPv4 one, and the IPv6 one for `autodetect` (given the IPv4
/// node address, whose interface is the fallback).
pub trait DetectAddresses {
    fn ipv4(&self) -> Result<Ipv4Net, String>;
    fn ipv6(&self, ipv4: Ipv4Net) -> Result<Ipv6Net, String>;
}

/// The running system's addresses ([`detect_node_address`],
/// [`detect_node_address_v6`]).
pub struct SystemAddresses;

impl DetectAddresses for SystemAddresses {
    fn ipv4(&self) -> Result<Ipv4Net, String> {
        detect_node_address()
    }
    fn ipv6(&self, ipv4: Ipv4Net) -> Result<Ipv6Net, String> {
        detect_node_address_v6(ipv4.addr())
    }
}

/// An IPv4 detection closure alone (IPv6 `autodetect` then fails).
impl<F: Fn() -> Result<Ipv4Net, String>> DetectAddresses for F {
    fn ipv4(&self) -> Result<Ipv4Net, String> {
        self()
    }
    fn ipv6(&self, _: Ipv4Net) -> Result<Ipv6Net, String> {
        Err("IPv6 detection is not available here".into())
    }
}

/// Reads `path` (if any), applies the environment `env` (name → value)
/// and resolves defaults; `detect` finds the node addresses when neither
/// gives them.
pub fn load(
    path: Option<&Path>,
    env: &BTreeMap<String, String>,
    detect: impl DetectAddresses,
) -> Result<AgentConfig, AgentConfigError> {
    let mut file = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|source| AgentConfigError::Read {
                path: p.to_path_buf(),
                source,
            })?;
            parse_file(&text).map_err(|message| AgentConfigError::Parse {
                path: p.to_path_buf(),
                message,
            })?
        }
        None => AgentFile::default(),
    };
    apply_env(&mut file, env)?;
    resolve(file, detect)
}

fn env_parse<T: std::str::FromStr>(
    env: &BTreeMap<String, String>,
    name: &'static str,
) -> Result<Option<T>, AgentConfigError>
where
    T::Err: std::fmt::Display,
{
    match env.get(name) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|e: T::Err| AgentConfigError::Env {
                name,
                value: v.clone(),
                message: e.to_string(),
            }),
    }
}

/// `FELIX_NODE_NAME`, `FELIX_NODE_ADDRESS`, `FELIX_NODE_ADDRESS_V6`, `FELIX_ROUTER_ID`,
/// `FELIX_AS_NUMBER`, `FELIX_DATASTORE`, `FELIX_LOG_FORMAT`,
/// `FELIX_LOG_LEVEL`, `FELIX_HTTP_LISTEN` override the file.
fn apply_env(file: &mut AgentFile, env: &BTreeMap<String, String>) -> Result<(), AgentConfigError> {
    if let Some(v) = env.get("FELIX_NODE_NAME") {
        file.node_name = Some(v.clone());
    }
    if let Some(v) = env_parse(env, "FELIX_NODE_ADDRESS")? {
        file.node_address = Some(v);
    }
    if let Some(v) = env_parse(env, "FELIX_NODE_ADDRESS_V6")? {
        file.node_address_v6 = Some(v);
    }
    if let Some(v) = env_parse(env, "FELIX_ROUTER_ID")? {
        file.router_id = Some(v);
    }
    if let Some(v) = env_parse(env, "FELIX_AS_NUMBER")? {
        file.as_number = Some(v);
    }
    if let Some(v) = env.get("FELIX_DATASTORE") {
        file.datastore = Some(v.clone());
    }
    if let Some(v) = env.get("FELIX_LOG_FORMAT") {
        file.log_format = Some(match v.as_str() {
            "human" => LogFormat::Human,
            "json" => LogFormat::Json,
            _ => {
                return Err(AgentConfigError::Env {
                    name: "FELIX_LOG_FORMAT",
                    value: v.clone(),
                    message: "expected human or json".into(),
                })
            }
        });
    }
    if let Some(v) = env.get("FELIX_LOG_LEVEL") {
        file.log_level = Some(v.clone());
    }
    if let Some(v) = env_parse(env, "FELIX_HTTP_LISTEN")? {
        file.http_listen = Some(v);
    }
    Ok(())
}

fn resolve(file: AgentFile, detect: impl DetectAddresses) -> Result<AgentConfig, AgentConfigError> {
    let node_name = match file.node_name {
        Some(n) => n,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .map_err(|e| AgentConfigError::Invalid(format!("no node_name and no hostname: {e}")))?,
    };
    if !valid_object_name(&node_name) {
        return Err(AgentConfigError::Invalid(format!(
            "node_name {node_name:?} is not a valid object name (lower-case letters, digits, '-', '.', at most 253)"
        )));
    }
    let node_address = match file.node_address {
        Some(a) => a,
        None => detect.ipv4().map_err(AgentConfigError::NodeAddress)?,
    };
    if node_address.addr().is_unspecified() || node_address.addr().is_loopback() {
        return Err(AgentConfigError::NodeAddress(format!(
            "{node_address} cannot be a node address"
        )));
    }
    let node_address_v6 = match file.node_address_v6.unwrap_or_default() {
        NodeAddressV6::None => None,
        NodeAddressV6::Address(a) => Some(a),
        NodeAddressV6::Autodetect => Some(
            detect
                .ipv6(node_address)
                .map_err(|e| AgentConfigError::NodeAddress(format!("IPv6 autodetect: {e}")))?,
        ),
    };
    if let Some(a) = node_address_v6 {
        if !usable_global_v6(a.addr()) {
            return Err(AgentConfigError::NodeAddress(format!(
                "{a} cannot be a node's IPv6 address (it must be a global or unique-local unicast address)"
            )));
        }
    }
    let mut bgp_peers = BTreeMap::new();
    for p in file.bgp_peers {
        if bgp_peers.insert(p.name.clone(), p.spec).is_some() {
            return Err(AgentConfigError::Invalid(format!(
                "bgp_peers: {:?} appears twice",
                p.name
            )));
        }
    }
    if file.as_number == Some(0) || file.bgp.as_number == Some(0) {
        return Err(AgentConfigError::Invalid("AS number 0 is reserved".into()));
    }
    let http_listen = match file.http_listen {
        Some(a) => a,
        None => DEFAULT_HTTP_LISTEN
            .parse()
            .map_err(|e| AgentConfigError::Invalid(format!("{e}")))?,
    };
    Ok(AgentConfig {
        node_name,
        router_id: file.router_id.unwrap_or(node_address.addr()),
        node_address,
        node_address_v6,
        as_number: file.as_number,
        route_reflector_cluster_id: file.route_reflector_cluster_id,
        datastore: file
            .datastore
            .unwrap_or_else(|| DEFAULT_DATASTORE.to_string()),
        labels: file.labels,
        control_socket: file
            .control_socket
            .unwrap_or_else(|| DEFAULT_CONTROL_SOCKET.into()),
        pod_api_socket: file
            .pod_api_socket
            .unwrap_or_else(|| DEFAULT_POD_API_SOCKET.into()),
        http_listen,
        log_format: file.log_format.unwrap_or_default(),
        log_level: file.log_level.unwrap_or_else(|| "info".into()),
        resync_seconds: file.resync_seconds.unwrap_or(60),
        graceful_restart_recovery: file.graceful_restart_recovery,
        bgp: file.bgp,
        bgp_peers,
    })
}

/// A DNS-1123 subdomain (what every datastore backend accepts as a name).
pub fn valid_object_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric())
}

/// The IPv4 address (with prefix length) of the interface that holds the
/// IPv4 default route, read from `/proc/net/route` and the interface's
/// addresses.
pub fn detect_node_address() -> Result<Ipv4Net, String> {
    let table = std::fs::read_to_string("/proc/net/route")
        .map_err(|e| format!("reading /proc/net/route: {e}"))?;
    let iface = default_route_interface(&table)
        .ok_or("no IPv4 default route: set node_address or FELIX_NODE_ADDRESS")?;
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| format!("listing addresses: {e}"))?;
    for a in addrs {
        if a.interface_name != iface {
            continue;
        }
        let (Some(addr), Some(mask)) = (
            a.address.as_ref().and_then(|s| s.as_sockaddr_in()),
            a.netmask.as_ref().and_then(|s| s.as_sockaddr_in()),
        ) else {
            continue;
        };
        let len = u32::from(mask.ip()).count_ones() as u8;
        return Ipv4Net::new(addr.ip(), len).map_err(|e| e.to_string());
    }
    Err(format!(
        "interface {iface} (default route) has no IPv4 address"
    ))
}

/// An IPv6 address a node can peer and be routed to from: not
/// unspecified, loopback, multicast, link-local (fe80::/10: a BGP next hop
/// must be usable from other links) or IPv4-mapped.
pub fn usable_global_v6(a: Ipv6Addr) -> bool {
    !(a.is_unspecified()
        || a.is_loopback()
        || a.is_multicast()
        || (a.segments()[0] & 0xffc0) == 0xfe80
        || a.to_ipv4_mapped().is_some())
}

/// IPv6 autodetection (Calico's `IP6=autodetect`, first-found style): the
/// global address of the interface holding the IPv6 default route
/// (`/proc/net/ipv6_route`), else the global address on the interface
/// holding `ipv4` (the IPv4 node address).
pub fn detect_node_address_v6(ipv4: Ipv4Addr) -> Result<Ipv6Net, String> {
    let table = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| format!("listing addresses: {e}"))?;
    let mut v4_iface = None;
    let mut v6: Vec<(String, Ipv6Net)> = Vec::new();
    for a in addrs {
        if let Some(s) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
            if s.ip() == ipv4 {
                v4_iface = Some(a.interface_name.clone());
            }
            continue;
        }
        let (Some(addr), Some(mask)) = (
            a.address.as_ref().and_then(|s| s.as_sockaddr_in6()),
            a.netmask.as_ref().and_then(|s| s.as_sockaddr_in6()),
        ) else {
            continue;
        };
        let len = u128::from(mask.ip()).count_ones() as u8;
        if let Ok(net) = Ipv6Net::new(addr.ip(), len) {
            v6.push((a.interface_name.clone(), net));
        }
    }
    pick_node_address_v6(
        default_route_interface_v6(&table).as_deref(),
        v4_iface.as_deref(),
        &v6,
    )
}

/// The choice of [`detect_node_address_v6`], pure: the first usable global
/// address of `default_iface`, else of `v4_iface`.
pub fn pick_node_address_v6(
    default_iface: Option<&str>,
    v4_iface: Option<&str>,
    addresses: &[(String, Ipv6Net)],
) -> Result<Ipv6Net, String> {
    for iface in [default_iface, v4_iface].into_iter().flatten() {
        if let Some((_, a)) = addresses
            .iter()
            .find(|(i, a)| i == iface && usable_global_v6(a.addr()))
        {
            return Ok(*a);
        }
    }
    Err(format!(
        "no global IPv6 address on the IPv6 default route's interface ({}) nor on the IPv4 node interface ({}): set node_address_v6 or FELIX_NODE_ADDRESS_V6",
        default_iface.unwrap_or("none"),
        v4_iface.unwrap_or("none")
    ))
}

/// The interface of the first IPv6 default route (`::/0` with a device) in
/// a `/proc/net/ipv6_route` dump (columns: destination, its length, source,
/// its length, next hop, metric, refcount, use, flags, device; `lo` holds
/// the unreachable default the kernel lists when there is none).
pub fn default_route_interface_v6(table: &str) -> Option<String> {
    table.lines().find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols.len() >= 10
            && cols[0] == "00000000000000000000000000000000"
            && cols[1] == "00"
            && cols[9] != "lo")
            .then(|| cols[9].to_string())
    })
}

/// The interface of the first default route in a `/proc/net/route` dump.
pub fn default_route_interface(table: &str) -> Option<String> {
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols.len() > 7 && cols[1] == "00000000" && cols[7] == "00000000")
            .then(|| cols[0].to_string())
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// The example in docs/agent.md, kept in sync by this test.
    const EXAMPLE: &str = r#"
node_name = "node-1"
node_address = "10.0.0.1/24"
node_address_v6 = "fd00::1/64"
router_id = "10.0.0.1"
as_number = 64512
datastore = "sqlite:/var/lib/felix/felix.db"
labels = { rack = "r1" }
control_socket = "/run/felix/agent.sock"
pod_api_socket = "/run/felix/pod-api.sock"
http_listen = "127.0.0.1:9099"
log_format = "json"
log_level = "info"
resync_seconds = 60
graceful_restart_recovery = false

[bgp]
nodeToNodeMeshEnabled = true
asNumber = 64512
listenPort = 179

[[bgp_peers]]
name = "tor"
peerIP = "10.0.0.254"
asNumber = 65000
nodeSelector = "rack == 'r1'"
password = "s3cret"
sourceAddress = "UseNodeIP"
"#;

    fn no_detect() -> Result<Ipv4Net, String> {
        Err("not in this test".into())
    }

    #[test]
    fn the_documented_example_parses_completely() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/agent.md"))
            .unwrap();
        assert!(
            doc.contains(EXAMPLE.trim()),
            "docs/agent.md must carry EXAMPLE verbatim"
        );
        let file = parse_file(EXAMPLE).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, EXAMPLE).unwrap();
        let c = load(Some(&path), &BTreeMap::new(), no_detect).unwrap();
        assert_eq!(c.node_name, "node-1");
        assert_eq!(c.node_address, "10.0.0.1/24".parse().unwrap());
        assert_eq!(c.node_address_v6, Some("fd00::1/64".parse().unwrap()));
        assert_eq!(c.log_format, LogFormat::Json);
        assert!(c.bgp.mesh());
        assert_eq!(c.bgp_peers["tor"].as_number, Some(65000));
        assert_eq!(file.labels["rack"], "r1");
    }

    #[test]
    fn environment_overrides_and_detection_fills_in() {
        let env: BTreeMap<String, String> = [
            ("FELIX_NODE_NAME", "n7"),
            ("FELIX_AS_NUMBER", "65010"),
            ("FELIX_DATASTORE", "sqlite:/tmp/x.db"),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
        let c = load(None, &env, || Ok("192.0.2.5/24".parse().unwrap())).unwrap();
        assert_eq!(c.node_name, "n7");
        assert_eq!(c.as_number, Some(65010));
        assert_eq!(c.router_id, "192.0.2.5".parse::<Ipv4Addr>().unwrap());
        assert_eq!(c.datastore, "sqlite:/tmp/x.db");
        assert_eq!(c.http_listen, DEFAULT_HTTP_LISTEN.parse().unwrap());
    }

    #[test]
    fn bad_input_is_refused_with_a_message_naming_it() {
        let env = |k: &str, v: &str| -> BTreeMap<String, String> {
            [
                ("FELIX_NODE_NAME".into(), "n1".into()),
                (k.to_string(), v.to_string()),
            ]
            .into()
        };
        let ok = || Ok("192.0.2.5/24".parse().unwrap());
        let e = load(None, &env("FELIX_AS_NUMBER", "x"), ok).unwrap_err();
        assert!(e.to_string().contains("FELIX_AS_NUMBER"), "{e}");
        let e = load(None, &env("FELIX_NODE_NAME", "Bad_Name"), ok).unwrap_err();
        assert!(e.to_string().contains("Bad_Name"), "{e}");
        let e = load(None, &env("FELIX_LOG_FORMAT", "xml"), ok).unwrap_err();
        assert!(e.to_string().contains("human or json"), "{e}");
        let e = load(None, &env("FELIX_NODE_ADDRESS", "127.0.0.1/8"), ok).unwrap_err();
        assert!(e.to_string().contains("127.0.0.1"), "{e}");
        let e = load(None, &env("X", "y"), no_detect).unwrap_err();
        assert!(matches!(e, AgentConfigError::NodeAddress(_)), "{e}");
        assert!(parse_file("node_nam = \"x\"")
            .unwrap_err()
            .contains("node_nam"));
        let twice = "[[bgp_peers]]\nname = \"a\"\n[[bgp_peers]]\nname = \"a\"\n";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        std::fs::write(&path, twice).unwrap();
        let e = load(Some(&path), &env("X", "y"), ok).unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
    }

    #[test]
    fn default_route_interface_from_proc_net_route() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth1\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     eth0\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(default_route_interface(table).as_deref(), Some("eth0"));
        assert_eq!(default_route_interface("Iface\n"), None);
    }

    /// A detector with both families, to see which one `load` asks for.
    struct Both;
    impl DetectAddresses for Both {
        fn ipv4(&self) -> Result<Ipv4Net, String> {
            Ok("192.0.2.5/24".parse().unwrap())
        }
        fn ipv6(&self, ipv4: Ipv4Net) -> Result<Ipv6Net, String> {
            assert_eq!(ipv4, "192.0.2.5/24".parse().unwrap());
            Ok("2001:db8::5/64".parse().unwrap())
        }
    }

    #[test]
    fn ipv6_is_opt_in_configured_or_autodetected() {
        let env = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            std::iter::once(("FELIX_NODE_NAME", "n1"))
                .chain(pairs.iter().copied())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        // Unset: IPv4 only (Calico's IP6 defaults to none).
        let c = load(None, &env(&[]), Both).unwrap();
        assert_eq!(c.node_address_v6, None);
        let c = load(None, &env(&[("FELIX_NODE_ADDRESS_V6", "none")]), Both).unwrap();
        assert_eq!(c.node_address_v6, None);
        let c = load(None, &env(&[("FELIX_NODE_ADDRESS_V6", "autodetect")]), Both).unwrap();
        assert_eq!(c.node_address_v6, Some("2001:db8::5/64".parse().unwrap()));
        let c = load(
            None,
            &env(&[("FELIX_NODE_ADDRESS_V6", "fd00:0:0:1::7/64")]),
            Both,
        )
        .unwrap();
        assert_eq!(c.node_address_v6, Some("fd00:0:0:1::7/64".parse().unwrap()));
        // Refused, naming the value.
        for bad in [
            "fe80::1/64",
            "::1/128",
            "::ffff:10.0.0.1/96",
            "10.0.0.1/24",
            "auto",
        ] {
            let e = load(None, &env(&[("FELIX_NODE_ADDRESS_V6", bad)]), Both).unwrap_err();
            assert!(e.to_string().contains(bad), "{bad}: {e}");
        }
        // Autodetection that finds nothing is an error, not IPv4-only.
        let e = load(
            None,
            &env(&[("FELIX_NODE_ADDRESS_V6", "autodetect")]),
            || Ok("192.0.2.5/24".parse().unwrap()),
        )
        .unwrap_err();
        assert!(e.to_string().contains("IPv6 autodetect"), "{e}");
        assert!(parse_file("node_address_v6 = \"fd00::/300\"")
            .unwrap_err()
            .contains("fd00::/300"));
    }

    #[test]
    fn ipv6_default_route_interface_from_proc_net_ipv6_route() {
        let table = "\
fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth1
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000001 00000000 00000003     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
";
        assert_eq!(default_route_interface_v6(table).as_deref(), Some("eth0"));
        // Only the kernel's unreachable default (on lo): no default route.
        let none = table.lines().skip(2).collect::<Vec<_>>().join("\n");
        assert_eq!(default_route_interface_v6(&none), None);
        assert_eq!(default_route_interface_v6(""), None);
    }

    #[test]
    fn ipv6_detection_takes_a_global_address_of_the_default_or_the_ipv4_interface() {
        let a = |i: &str, n: &str| (i.to_string(), n.parse::<Ipv6Net>().unwrap());
        let addrs = vec![
            a("eth0", "fe80::1/64"),
            a("eth0", "2001:db8::1/64"),
            a("eth1", "fe80::2/64"),
            a("eth1", "fd00:1::2/64"),
        ];
        let pick = |d, v| pick_node_address_v6(d, v, &addrs);
        // The default route's interface first, its link-local skipped.
        assert_eq!(
            pick(Some("eth0"), Some("eth1")),
            Ok("2001:db8::1/64".parse().unwrap())
        );
        // No IPv6 default route: the IPv4 node interface's global address.
        assert_eq!(
            pick(None, Some("eth1")),
            Ok("fd00:1::2/64".parse().unwrap())
        );
        // A default route on an interface with only a link-local address.
        let only_ll = vec![a("eth0", "fe80::1/64")];
        let e = pick_node_address_v6(Some("eth0"), Some("eth0"), &only_ll).unwrap_err();
        assert!(e.contains("eth0"), "{e}");
        assert!(pick(None, None).is_err());
    }
}
