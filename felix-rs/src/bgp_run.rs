//! `felix bgp run`: the configuration (a TOML file and/or command-line
//! flags) of a stand-alone BGP speaker, e.g. a dedicated route reflector.
//!
//! [`RunArgs`] are the flags; [`RunPlan::from_args`] reads the file they
//! name, merges the flags in (scalars override, neighbours and prefixes
//! extend) and checks the result. Every mistake is a [`ConfigError`] that
//! names the offending value.

use crate::control::{ControlError, ControlSocket, Handler, Request};
use bgp::rib::{Action, PrefixList, PrefixListError, PrefixRule};
use bgp::speaker::{ListenRange, NeighborConfig, PeerAsn, Speaker, SpeakerConfig, SpeakerError};
use bgp::wire::{Community, Family};
use clap::Args;
use ipnet::IpNet;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::signal::unix::{signal, SignalKind};

/// Where the control socket lives unless `--control-socket` or the file's
/// `control_socket` says otherwise.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/felix/bgp.sock";

/// The BGP port.
pub const BGP_PORT: u16 = 179;

/// Flags of `felix bgp run`.
#[derive(Args, Clone, Debug, Default)]
pub struct RunArgs {
    /// TOML configuration file (see docs/cli.md); flags override its
    /// scalars and add to its neighbours and prefixes.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Local AS number (plain, e.g. 65000, or asdot, e.g. 1.10).
    #[arg(long, value_name = "AS")]
    pub asn: Option<String>,
    /// BGP identifier (an IPv4 address).
    #[arg(long, value_name = "ID")]
    pub router_id: Option<String>,
    /// Listen address, `ADDR[:PORT]`.
    #[arg(
        long,
        value_name = "ADDR[:PORT]",
        help = "Accept connections on ADDR[:PORT] (port 179 unless given; IPv6 with a port as [ADDR]:PORT)"
    )]
    pub listen: Option<String>,
    /// Neighbours, `ADDR:AS[:PASSWORD]` (IPv6 in brackets).
    #[arg(
        long = "neighbor",
        value_name = "ADDR:AS[:PASSWORD]",
        help = "Peer with ADDR in AS, with an optional TCP MD5 password; IPv6 as [ADDR]:AS[:PASSWORD]. Repeat for more neighbours"
    )]
    pub neighbors: Vec<String>,
    /// Accept dynamic neighbours from PREFIX in AS (`PREFIX:AS`, or
    /// `PREFIX:any` for whatever AS each peer announces), as
    /// route-reflector clients. Repeatable.
    #[arg(
        long = "listen-range",
        value_name = "PREFIX:AS",
        help = "Accept peers connecting from PREFIX (e.g. 10.0.0.0/24:65000) in AS (or `any` AS) as dynamic route-reflector clients; needs --listen. Repeatable"
    )]
    pub listen_ranges: Vec<String>,
    /// Make the neighbour ADDR a route-reflector client. Repeatable.
    #[arg(long = "rr-client", value_name = "ADDR")]
    pub rr_clients: Vec<String>,
    /// Hold time proposed to one neighbour, `ADDR=SECS`. Repeatable.
    #[arg(long = "neighbor-hold-time", value_name = "ADDR=SECS")]
    pub neighbor_hold_times: Vec<String>,
    /// Keepalive interval for one neighbour, `ADDR=SECS`. Repeatable.
    #[arg(long = "neighbor-keepalive", value_name = "ADDR=SECS")]
    pub neighbor_keepalives: Vec<String>,
    /// Outgoing TTL (eBGP multihop) towards one neighbour, `ADDR=TTL`.
    /// Repeatable.
    #[arg(long = "neighbor-ttl", value_name = "ADDR=TTL")]
    pub neighbor_ttls: Vec<String>,
    /// GTSM (RFC 5082) with one neighbour, `ADDR[=HOPS]` (1 hop unless
    /// given). Repeatable.
    #[arg(long = "neighbor-gtsm", value_name = "ADDR[=HOPS]")]
    pub neighbor_gtsm: Vec<String>,
    /// Announce PREFIX (e.g. 10.0.0.0/24). Repeatable.
    #[arg(long = "originate", value_name = "PREFIX")]
    pub originate: Vec<String>,
    /// Control socket for `felix bgp status` / `routes` [default: /run/felix/bgp.sock].
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
    /// This start is a graceful restart: the routes of the previous run are
    /// still forwarded, so tell peers (RFC 4724 Restart State and
    /// Forwarding State bits) to keep them until our End-of-RIB.
    #[arg(long)]
    pub graceful_restart_recovery: bool,
}

/// Why a configuration was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Toml { path: PathBuf, message: String },
    #[error("bad AS number {0:?}: expected 1..4294967295 or asdot X.Y")]
    BadAs(String),
    #[error("bad {what} {value:?}: {reason}")]
    BadValue {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("no local AS: give --asn or `asn` in the config file")]
    MissingAsn,
    #[error("no router id: give --router-id or `router_id` in the config file")]
    MissingRouterId,
    #[error("router id must not be 0.0.0.0")]
    ZeroRouterId,
    #[error("hold time {0} is invalid: 0 (no keepalives) or at least 3 seconds")]
    BadHoldTime(u16),
    #[error("neighbor {0} is configured twice")]
    DuplicateNeighbor(IpAddr),
    #[error("neighbor {address}: AS 0 is not a valid AS")]
    NeighborAsZero { address: IpAddr },
    #[error("--rr-client {0}: no such neighbor (add it with --neighbor or in the config file)")]
    UnknownRrClient(IpAddr),
    #[error("--{flag} {address}: no such neighbor (add it with --neighbor or in the config file)")]
    UnknownNeighbor { flag: &'static str, address: IpAddr },
    #[error("neighbor {address}: {reason}")]
    NeighborValue { address: IpAddr, reason: String },
    #[error("listen range {0} is configured twice")]
    DuplicateListenRange(IpNet),
    #[error("listen range {0}: AS 0 is not a valid AS")]
    ListenRangeAsZero(IpNet),
    #[error("listen ranges need a listen address (--listen or `listen`)")]
    ListenRangeWithoutListen,
    #[error("listen range {prefix}: {reason}")]
    ListenRangeValue { prefix: IpNet, reason: String },
    #[error("listen range {prefix}: {source}")]
    ListenRangePrefixList {
        prefix: IpNet,
        source: PrefixListError,
    },
    #[error("prefix {0} is originated twice")]
    DuplicateOriginate(IpNet),
    #[error("neighbor {address}: {source}")]
    PrefixList {
        address: IpAddr,
        source: PrefixListError,
    },
}

impl ConfigError {
    fn bad(what: &'static str, value: &str, reason: impl ToString) -> Self {
        ConfigError::BadValue {
            what,
            value: value.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// The configuration file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub asn: Option<u32>,
    pub router_id: Option<Ipv4Addr>,
    pub listen: Option<String>,
    pub cluster_id: Option<Ipv4Addr>,
    pub hold_time: Option<u16>,
    pub families: Option<Vec<String>>,
    pub graceful_restart_time: Option<u16>,
    /// See [`RunArgs::graceful_restart_recovery`].
    pub graceful_restart_recovery: Option<bool>,
    /// Seconds our routes wait for the peers' End-of-RIB after a graceful
    /// restart (RFC 4724 §4.1 selection deferral).
    pub selection_deferral_time: Option<u64>,
    pub max_paths: Option<usize>,
    pub control_socket: Option<PathBuf>,
    #[serde(default)]
    pub originate: Vec<FileOriginate>,
    #[serde(default, rename = "neighbor")]
    pub neighbors: Vec<FileNeighbor>,
    #[serde(default, rename = "listen_range")]
    pub listen_ranges: Vec<FileListenRange>,
}

/// One `[[listen_range]]` table: dynamic neighbours.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileListenRange {
    pub prefix: IpNet,
    /// An AS number, or `"any"`: whatever AS each peer announces.
    pub asn: FileRangeAsn,
    #[serde(default)]
    pub rr_client: bool,
    pub password: Option<String>,
    #[serde(default)]
    pub next_hop_self: bool,
    pub max_prefixes: Option<u32>,
    pub import: Option<Vec<FileRule>>,
    pub export: Option<Vec<FileRule>>,
    #[serde(default)]
    pub export_communities: Vec<String>,
    /// Our next hop towards the range's peers (our end of each connection
    /// otherwise).
    pub local_address: Option<IpAddr>,
    /// Hold time proposed to the range's peers (the global one otherwise).
    pub hold_time: Option<u16>,
    pub keepalive_time: Option<u16>,
    pub ttl: Option<u8>,
    pub gtsm_hops: Option<u8>,
}

/// A listen range's `asn`: `65000` or `"any"` (asdot `"1.10"` too).
#[derive(Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum FileRangeAsn {
    Number(u32),
    Text(String),
}

/// `originate = ["10.0.0.0/24", { prefix = "10.1.0.0/24", communities = ["65000:1"] }]`
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FileOriginate {
    Prefix(IpNet),
    WithCommunities {
        prefix: IpNet,
        #[serde(default)]
        communities: Vec<String>,
    },
}

/// One `[[neighbor]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileNeighbor {
    pub address: IpAddr,
    pub asn: u32,
    pub port: Option<u16>,
    pub password: Option<String>,
    #[serde(default)]
    pub rr_client: bool,
    #[serde(default)]
    pub passive: bool,
    pub local_address: Option<IpAddr>,
    #[serde(default)]
    pub next_hop_self: bool,
    pub max_prefixes: Option<u32>,
    pub import: Option<Vec<FileRule>>,
    pub export: Option<Vec<FileRule>>,
    #[serde(default)]
    pub export_communities: Vec<String>,
    /// Hold time proposed to this neighbour (the global one otherwise).
    pub hold_time: Option<u16>,
    /// Keepalive interval (a third of the negotiated hold time otherwise).
    pub keepalive_time: Option<u16>,
    /// Outgoing TTL: eBGP multihop.
    pub ttl: Option<u8>,
    /// GTSM (RFC 5082): the neighbour is this many hops away (1: directly
    /// connected).
    pub gtsm_hops: Option<u8>,
}

/// One prefix-list rule: `{ prefix = "10.0.0.0/8", le = 24, action = "permit" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRule {
    pub prefix: IpNet,
    pub ge: Option<u8>,
    pub le: Option<u8>,
    pub action: FileAction,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileAction {
    Permit,
    Deny,
}

/// A checked configuration: what the speaker is started with.
#[derive(Clone, Debug, PartialEq)]
pub struct RunPlan {
    pub asn: u32,
    pub router_id: Ipv4Addr,
    /// None: the speaker's default.
    pub listen: Option<SocketAddr>,
    pub cluster_id: Option<Ipv4Addr>,
    /// None: the speaker's default.
    pub hold_time: Option<u16>,
    /// Empty: the speaker's default.
    pub families: Vec<Family>,
    pub graceful_restart_time: Option<u16>,
    /// Announce a graceful restart in progress (flag or file).
    pub graceful_restart_recovery: bool,
    /// None: the speaker's default.
    pub selection_deferral_time: Option<u64>,
    /// None: the speaker's default.
    pub max_paths: Option<usize>,
    pub neighbors: Vec<NeighborConfig>,
    pub listen_ranges: Vec<ListenRange>,
    pub originate: Vec<(IpNet, Vec<Community>)>,
    pub control_socket: PathBuf,
}

impl RunPlan {
    /// Reads `--config` (if any) and merges the flags in.
    pub fn from_args(args: &RunArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file_config(path)?,
            None => FileConfig::default(),
        };
        Self::merge(file, args)
    }

    /// Merges already-parsed file contents with the flags and checks the result.
    pub fn merge(file: FileConfig, args: &RunArgs) -> Result<Self, ConfigError> {
        let asn = match &args.asn {
            Some(text) => parse_asn(text)?,
            None => match file.asn {
                Some(0) => return Err(ConfigError::BadAs("0".into())),
                Some(asn) => asn,
                None => return Err(ConfigError::MissingAsn),
            },
        };
        let router_id = match &args.router_id {
            Some(text) => text
                .parse::<Ipv4Addr>()
                .map_err(|e| ConfigError::bad("router id", text, e))?,
            None => file.router_id.ok_or(ConfigError::MissingRouterId)?,
        };
        if router_id.is_unspecified() {
            return Err(ConfigError::ZeroRouterId);
        }
        let listen = match args.listen.as_deref().or(file.listen.as_deref()) {
            Some(text) => Some(parse_listen(text)?),
            None => None,
        };
        if let Some(hold) = file.hold_time {
            if hold == 1 || hold == 2 {
                return Err(ConfigError::BadHoldTime(hold));
            }
        }
        let families = file
            .families
            .unwrap_or_default()
            .iter()
            .map(|name| parse_family(name))
            .collect::<Result<Vec<_>, _>>()?;

        let mut neighbors = Vec::new();
        let mut seen = BTreeSet::new();
        for n in file.neighbors {
            let plan = neighbor_from_file(n)?;
            if !seen.insert(plan.address) {
                return Err(ConfigError::DuplicateNeighbor(plan.address));
            }
            neighbors.push(plan);
        }
        for text in &args.neighbors {
            let plan = parse_neighbor_flag(text)?;
            if !seen.insert(plan.address) {
                return Err(ConfigError::DuplicateNeighbor(plan.address));
            }
            neighbors.push(plan);
        }
        for text in &args.rr_clients {
            let address = text
                .parse::<IpAddr>()
                .map_err(|e| ConfigError::bad("--rr-client address", text, e))?;
            let neighbor = neighbors
                .iter_mut()
                .find(|n| n.address == address)
                .ok_or(ConfigError::UnknownRrClient(address))?;
            neighbor.rr_client = true;
        }
        apply_neighbor_flags(&mut neighbors, args)?;
        for n in &neighbors {
            check_neighbor_session(n, file.hold_time.unwrap_or(90))?;
        }

        let mut listen_ranges: Vec<ListenRange> = Vec::new();
        let from_file = file.listen_ranges.into_iter().map(listen_range_from_file);
        let from_flags = args
            .listen_ranges
            .iter()
            .map(|t| parse_listen_range_flag(t));
        for range in from_file.chain(from_flags) {
            let range = range?;
            if listen_ranges.iter().any(|r| r.prefix == range.prefix) {
                return Err(ConfigError::DuplicateListenRange(range.prefix));
            }
            check_range_session(&range, file.hold_time.unwrap_or(90))?;
            listen_ranges.push(range);
        }
        if !listen_ranges.is_empty() && listen.is_none() {
            return Err(ConfigError::ListenRangeWithoutListen);
        }

        let mut originate: Vec<(IpNet, Vec<Community>)> = Vec::new();
        let from_file = file.originate.into_iter().map(|o| match o {
            FileOriginate::Prefix(prefix) => Ok((prefix, Vec::new())),
            FileOriginate::WithCommunities {
                prefix,
                communities,
            } => Ok((prefix, parse_communities(&communities)?)),
        });
        let from_flags = args.originate.iter().map(|text| {
            text.parse::<IpNet>()
                .map(|p| (p, Vec::new()))
                .map_err(|e| ConfigError::bad("prefix", text, e))
        });
        for item in from_file.chain(from_flags) {
            let (prefix, communities) = item?;
            let prefix = prefix.trunc();
            if originate.iter().any(|(p, _)| *p == prefix) {
                return Err(ConfigError::DuplicateOriginate(prefix));
            }
            originate.push((prefix, communities));
        }

        let control_socket = args
            .control_socket
            .clone()
            .or(file.control_socket)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET));

        Ok(RunPlan {
            asn,
            router_id,
            listen,
            cluster_id: file.cluster_id,
            hold_time: file.hold_time,
            families,
            graceful_restart_time: file.graceful_restart_time,
            graceful_restart_recovery: args.graceful_restart_recovery
                || file.graceful_restart_recovery.unwrap_or(false),
            selection_deferral_time: file.selection_deferral_time,
            max_paths: file.max_paths,
            neighbors,
            listen_ranges,
            originate,
            control_socket,
        })
    }
}

/// Reads and parses a TOML configuration file.
pub fn read_file_config(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_file_config(&text).map_err(|message| ConfigError::Toml {
        path: path.to_path_buf(),
        message,
    })
}

/// Parses TOML configuration text; the error is toml's message, with the
/// line and column.
pub fn parse_file_config(text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
}

fn neighbor_from_file(n: FileNeighbor) -> Result<NeighborConfig, ConfigError> {
    if n.asn == 0 {
        return Err(ConfigError::NeighborAsZero { address: n.address });
    }
    let address = n.address;
    peer_from_file(n, |source| ConfigError::PrefixList { address, source })
}

/// The neighbour a `[[neighbor]]` table describes, or the template of a
/// `[[listen_range]]` (whose per-peer keys are a neighbour's): every
/// setting is converted here and only here. `list_error` names the table
/// in a prefix-list error.
fn peer_from_file(
    n: FileNeighbor,
    list_error: impl Fn(PrefixListError) -> ConfigError,
) -> Result<NeighborConfig, ConfigError> {
    let list = |rules: Option<Vec<FileRule>>| -> Result<Option<PrefixList>, ConfigError> {
        rules
            .map(|rules| prefix_list(&rules))
            .transpose()
            .map_err(&list_error)
    };
    let mut config = NeighborConfig::new(n.address, n.asn);
    if let Some(port) = n.port {
        config.port = port;
    }
    config.password = n.password;
    config.rr_client = n.rr_client;
    config.passive = n.passive;
    config.local_address = n.local_address;
    config.next_hop_self = n.next_hop_self;
    config.max_prefixes = n.max_prefixes;
    config.import = list(n.import)?;
    config.export = list(n.export)?;
    config.export_communities = parse_communities(&n.export_communities)?;
    config.hold_time = n.hold_time;
    config.keepalive_time = n.keepalive_time;
    config.ttl = n.ttl;
    config.gtsm_hops = n.gtsm_hops;
    Ok(config)
}

/// The per-neighbour session flags (`--neighbor-hold-time ADDR=SECS` …),
/// each naming a neighbour of the file or of `--neighbor`.
fn apply_neighbor_flags(
    neighbors: &mut [NeighborConfig],
    args: &RunArgs,
) -> Result<(), ConfigError> {
    type Setter = fn(&mut NeighborConfig, &str, &str) -> Result<(), ConfigError>;
    let flags: [(&'static str, &[String], Setter); 4] = [
        (
            "neighbor-hold-time",
            &args.neighbor_hold_times,
            |n, text, v| {
                n.hold_time = Some(parse_number("--neighbor-hold-time", text, v)?);
                Ok(())
            },
        ),
        (
            "neighbor-keepalive",
            &args.neighbor_keepalives,
            |n, text, v| {
                n.keepalive_time = Some(parse_number("--neighbor-keepalive", text, v)?);
                Ok(())
            },
        ),
        ("neighbor-ttl", &args.neighbor_ttls, |n, text, v| {
            n.ttl = Some(parse_number("--neighbor-ttl", text, v)?);
            Ok(())
        }),
        ("neighbor-gtsm", &args.neighbor_gtsm, |n, text, v| {
            n.gtsm_hops = Some(if v.is_empty() {
                1
            } else {
                parse_number("--neighbor-gtsm", text, v)?
            });
            Ok(())
        }),
    ];
    for (flag, values, set) in flags {
        for text in values {
            let (addr, value) = text.split_once('=').unwrap_or((text, ""));
            let address = addr
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .map_err(|e| ConfigError::bad("neighbor address", text, e))?;
            if value.is_empty() && flag != "neighbor-gtsm" {
                return Err(ConfigError::bad("value", text, "expected ADDR=VALUE"));
            }
            let neighbor = neighbors
                .iter_mut()
                .find(|n| n.address == address)
                .ok_or(ConfigError::UnknownNeighbor { flag, address })?;
            set(neighbor, text, value)?;
        }
    }
    Ok(())
}

fn parse_number<T: std::str::FromStr>(
    what: &'static str,
    text: &str,
    value: &str,
) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|e| ConfigError::bad(what, text, e))
}

/// The session values of one neighbour the speaker would refuse: hold
/// time 1–2 s (RFC 4271 §4.2), a keepalive not below the hold time, TTL 0,
/// GTSM hops outside 1..=254, TTL and GTSM together.
fn check_neighbor_session(n: &NeighborConfig, default_hold: u16) -> Result<(), ConfigError> {
    session_values_problem(n, default_hold).map_err(|reason| ConfigError::NeighborValue {
        address: n.address,
        reason,
    })
}

/// [`check_neighbor_session`] for the neighbours a listen range creates.
fn check_range_session(r: &ListenRange, default_hold: u16) -> Result<(), ConfigError> {
    let template = r.neighbor(r.prefix.network());
    session_values_problem(&template, default_hold).map_err(|reason| {
        ConfigError::ListenRangeValue {
            prefix: r.prefix,
            reason,
        }
    })
}

fn session_values_problem(n: &NeighborConfig, default_hold: u16) -> Result<(), String> {
    let hold = n.hold_time.unwrap_or(default_hold);
    if hold == 1 || hold == 2 {
        return Err(format!(
            "hold time {hold} is invalid: 0 (no keepalives) or at least 3 seconds"
        ));
    }
    if let Some(k) = n.keepalive_time {
        if k == 0 || (hold > 0 && k >= hold) {
            return Err(format!(
                "keepalive time {k} must be positive and below the hold time ({hold})"
            ));
        }
    }
    if n.ttl == Some(0) {
        return Err("TTL 0".into());
    }
    if n.gtsm_hops.is_some_and(|h| h == 0 || h == 255) {
        return Err("GTSM hops must be 1..=254".into());
    }
    if n.ttl.is_some() && n.gtsm_hops.is_some() {
        return Err("ttl and gtsm_hops are exclusive (GTSM sends with TTL 255)".into());
    }
    Ok(())
}

fn listen_range_from_file(r: FileListenRange) -> Result<ListenRange, ConfigError> {
    let prefix = r.prefix.trunc();
    let asn = match r.asn {
        FileRangeAsn::Number(0) => return Err(ConfigError::ListenRangeAsZero(prefix)),
        FileRangeAsn::Number(asn) => PeerAsn::Exact(asn),
        FileRangeAsn::Text(text) => parse_range_asn(&text)?,
    };
    // The range's per-peer keys, as a neighbour table; the template's
    // address, AS, port and passivity are not used (`ListenRange::template`).
    // (Two serde structs because `#[serde(flatten)]` of a shared one loses
    // toml's error positions.)
    let as_neighbor = FileNeighbor {
        address: prefix.network(),
        asn: 1,
        port: None,
        passive: false,
        local_address: r.local_address,
        password: r.password,
        rr_client: r.rr_client,
        next_hop_self: r.next_hop_self,
        max_prefixes: r.max_prefixes,
        import: r.import,
        export: r.export,
        export_communities: r.export_communities,
        hold_time: r.hold_time,
        keepalive_time: r.keepalive_time,
        ttl: r.ttl,
        gtsm_hops: r.gtsm_hops,
    };
    let template = peer_from_file(as_neighbor, |source| ConfigError::ListenRangePrefixList {
        prefix,
        source,
    })?;
    Ok(ListenRange {
        prefix,
        asn,
        template,
    })
}

/// A listen range's AS: a number (plain or asdot) or `any`.
fn parse_range_asn(text: &str) -> Result<PeerAsn, ConfigError> {
    if text.eq_ignore_ascii_case("any") {
        Ok(PeerAsn::Any)
    } else {
        parse_asn(text).map(PeerAsn::Exact)
    }
}

/// `PREFIX:AS` (IPv6 prefixes in brackets: `[2001:db8::/64]:65000`; AS
/// `any` for any AS): a range of route-reflector clients.
pub fn parse_listen_range_flag(text: &str) -> Result<ListenRange, ConfigError> {
    let bad = |reason: &str| ConfigError::bad("--listen-range", text, reason);
    let (prefix, asn) = match text.strip_prefix('[') {
        Some(after) => {
            let (prefix, rest) = after
                .split_once(']')
                .ok_or_else(|| bad("missing ']' after the IPv6 prefix"))?;
            let asn = rest
                .strip_prefix(':')
                .ok_or_else(|| bad("expected [PREFIX]:AS"))?;
            (prefix, asn)
        }
        None => text
            .rsplit_once(':')
            .ok_or_else(|| bad("expected PREFIX:AS, e.g. 10.0.0.0/24:65000"))?,
    };
    let prefix: IpNet = prefix
        .parse()
        .map_err(|_| bad("not a prefix (IPv6 ranges need brackets: [2001:db8::/64]:65000)"))?;
    let mut range = ListenRange::new(prefix, 1);
    range.asn = parse_range_asn(asn)?;
    range.template.rr_client = true;
    Ok(range)
}

/// A prefix list from its rules; what no rule matches is denied.
pub fn prefix_list(rules: &[FileRule]) -> Result<PrefixList, PrefixListError> {
    let rules = rules
        .iter()
        .map(|r| {
            let action = match r.action {
                FileAction::Permit => Action::Permit,
                FileAction::Deny => Action::Deny,
            };
            PrefixRule::new(r.prefix, r.ge, r.le, action)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PrefixList {
        rules,
        default: Action::Deny,
    })
}

/// An AS number: `65000` or asdot `1.10` (= 65546); 0 is refused.
pub fn parse_asn(text: &str) -> Result<u32, ConfigError> {
    let bad = || ConfigError::BadAs(text.to_string());
    let asn = match text.split_once('.') {
        Some((high, low)) => {
            let high: u16 = high.parse().map_err(|_| bad())?;
            let low: u16 = low.parse().map_err(|_| bad())?;
            (u32::from(high) << 16) | u32::from(low)
        }
        None => text.parse::<u32>().map_err(|_| bad())?,
    };
    if asn == 0 {
        return Err(bad());
    }
    Ok(asn)
}

/// `ADDR[:PORT]`, `[V6ADDR]:PORT` or a bare IPv6 address; port 179 by default.
pub fn parse_listen(text: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    bare.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, BGP_PORT))
        .map_err(|_| {
            ConfigError::bad(
                "listen address",
                text,
                "expected ADDR, ADDR:PORT or [IPV6]:PORT",
            )
        })
}

/// `ADDR:AS[:PASSWORD]`, with IPv6 addresses in brackets:
/// `[2001:db8::1]:65001[:PASSWORD]`. The password is everything after the
/// second separator, colons included.
pub fn parse_neighbor_flag(text: &str) -> Result<NeighborConfig, ConfigError> {
    let bad = |reason: &str| ConfigError::bad("--neighbor", text, reason);
    let (addr, rest) = if let Some(after) = text.strip_prefix('[') {
        let (addr, rest) = after
            .split_once(']')
            .ok_or_else(|| bad("missing ']' after the IPv6 address"))?;
        let rest = rest
            .strip_prefix(':')
            .ok_or_else(|| bad("expected [ADDR]:AS[:PASSWORD]"))?;
        (addr, rest)
    } else {
        let (addr, rest) = text
            .split_once(':')
            .ok_or_else(|| bad("expected ADDR:AS[:PASSWORD] ([ADDR]:AS for IPv6)"))?;
        (addr, rest)
    };
    let address: IpAddr = addr.parse().map_err(|_| {
        if addr.contains(':') || text.matches(':').count() > 2 {
            bad("IPv6 neighbours need brackets: [2001:db8::1]:65001")
        } else {
            bad("not an IP address")
        }
    })?;
    let (asn_text, password) = match rest.split_once(':') {
        Some((asn, password)) => (asn, Some(password)),
        None => (rest, None),
    };
    let asn = parse_asn(asn_text)?;
    let mut plan = NeighborConfig::new(address, asn);
    match password {
        Some("") => return Err(bad("empty password")),
        Some(p) => plan.password = Some(p.to_string()),
        None => {}
    }
    Ok(plan)
}

/// `ipv4-unicast` or `ipv6-unicast`.
pub fn parse_family(name: &str) -> Result<Family, ConfigError> {
    match name {
        "ipv4-unicast" => Ok(Family::IPV4_UNICAST),
        "ipv6-unicast" => Ok(Family::IPV6_UNICAST),
        _ => Err(ConfigError::bad(
            "family",
            name,
            "expected ipv4-unicast or ipv6-unicast",
        )),
    }
}

/// A standard community: `HIGH:LOW` (each 0..65535) or `no-export`,
/// `no-advertise`, `no-export-subconfed`.
pub fn parse_community(text: &str) -> Result<Community, ConfigError> {
    match text {
        "no-export" => return Ok(Community::NO_EXPORT),
        "no-advertise" => return Ok(Community::NO_ADVERTISE),
        "no-export-subconfed" => return Ok(Community::NO_EXPORT_SUBCONFED),
        _ => {}
    }
    let bad = || ConfigError::bad("community", text, "expected HIGH:LOW (0..65535 each)");
    let (high, low) = text.split_once(':').ok_or_else(bad)?;
    let high: u16 = high.parse().map_err(|_| bad())?;
    let low: u16 = low.parse().map_err(|_| bad())?;
    Ok(Community((u32::from(high) << 16) | u32::from(low)))
}

fn parse_communities(texts: &[String]) -> Result<Vec<Community>, ConfigError> {
    texts.iter().map(|t| parse_community(t)).collect()
}

impl RunPlan {
    /// The speaker's settings; what the plan leaves open keeps
    /// [`SpeakerConfig::new`]'s default.
    pub fn speaker_config(&self) -> SpeakerConfig {
        let mut config = SpeakerConfig::new(self.asn, self.router_id);
        config.listen = self.listen;
        config.cluster_id = self.cluster_id;
        if let Some(hold) = self.hold_time {
            config.hold_time = hold;
        }
        if !self.families.is_empty() {
            config.families = self.families.clone();
        }
        if self.graceful_restart_time.is_some() {
            config.graceful_restart_time = self.graceful_restart_time;
        }
        config.restarting = self.graceful_restart_recovery;
        if let Some(secs) = self.selection_deferral_time {
            config.selection_deferral_time = Duration::from_secs(secs);
        }
        if let Some(max_paths) = self.max_paths {
            config.max_paths = max_paths;
        }
        config
    }
}

/// Why `felix bgp run` stopped with an error.
#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("starting the speaker: {0}")]
    Start(SpeakerError),
    #[error("adding neighbor {address}: {source}")]
    Neighbor {
        address: IpAddr,
        source: SpeakerError,
    },
    #[error("{0}")]
    ListenRange(SpeakerError),
    #[error("originating {prefix}: {source}")]
    Originate { prefix: IpNet, source: SpeakerError },
    #[error("installing signal handlers: {0}")]
    Signal(std::io::Error),
}

/// Answers control-socket requests from a running speaker.
#[derive(Clone, Debug)]
pub struct SpeakerHandler(pub Speaker);

impl Handler for SpeakerHandler {
    async fn handle(&self, request: Request) -> Result<serde_json::Value, String> {
        let value = match request {
            Request::Status => serde_json::to_value(self.0.status().await),
            Request::Routes { prefix } => serde_json::to_value(self.0.routes(prefix).await),
            Request::Refresh { peer } => match self.0.refresh(peer).await {
                Ok(()) => Ok(serde_json::json!({ "refreshed": peer })),
                Err(e) => return Err(e.to_string()),
            },
        };
        value.map_err(|e| e.to_string())
    }
}

/// How long a graceful shutdown may take before the daemon exits anyway.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the speaker described by `plan` until SIGINT or SIGTERM, then
/// stops every session with an Administrative Shutdown and removes the
/// control socket. Must be called within a tokio runtime.
pub async fn run(plan: RunPlan) -> Result<(), RunError> {
    let mut sigterm = signal(SignalKind::terminate()).map_err(RunError::Signal)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(RunError::Signal)?;
    let control = ControlSocket::bind(&plan.control_socket)?;
    let speaker = Speaker::start(plan.speaker_config())
        .await
        .map_err(RunError::Start)?;
    if let Err(e) = configure(&speaker, &plan).await {
        speaker.shutdown(None).await;
        return Err(e);
    }
    eprintln!(
        "felix bgp: AS {}, router id {}, {}, {} neighbor(s), control socket {}",
        plan.asn,
        plan.router_id,
        speaker.listen_addr().map_or_else(
            || "not listening".to_string(),
            |a| format!("listening on {a}")
        ),
        plan.neighbors.len(),
        control.path().display(),
    );
    let handler = Arc::new(SpeakerHandler(speaker.clone()));
    let signal_name = tokio::select! {
        () = control.serve(handler) => "control socket closed",
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    };
    eprintln!("felix bgp: {signal_name}, shutting down");
    let message = Some("felix bgp shutting down".to_string());
    if tokio::time::timeout(SHUTDOWN_TIMEOUT, speaker.shutdown(message))
        .await
        .is_err()
    {
        eprintln!("felix bgp: sessions did not close within {SHUTDOWN_TIMEOUT:?}; exiting");
    }
    drop(control);
    Ok(())
}

async fn configure(speaker: &Speaker, plan: &RunPlan) -> Result<(), RunError> {
    for neighbor in &plan.neighbors {
        speaker
            .add_neighbor(neighbor.clone())
            .await
            .map_err(|source| RunError::Neighbor {
                address: neighbor.address,
                source,
            })?;
    }
    for range in &plan.listen_ranges {
        speaker
            .add_listen_range(range.clone())
            .await
            .map_err(RunError::ListenRange)?;
    }
    for (prefix, communities) in &plan.originate {
        speaker
            .originate(*prefix, communities.clone())
            .await
            .map_err(|source| RunError::Originate {
                prefix: *prefix,
                source,
            })?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> RunArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            run: RunArgs,
        }
        let mut argv = vec!["felix"];
        argv.extend_from_slice(list);
        Cli::try_parse_from(argv).unwrap().run
    }

    fn plan(file: &str, flags: &[&str]) -> Result<RunPlan, ConfigError> {
        RunPlan::merge(parse_file_config(file).unwrap(), &args(flags))
    }

    const FILE: &str = r#"
asn = 65000
router_id = "10.0.0.1"
listen = "0.0.0.0"
cluster_id = "10.0.0.100"
hold_time = 30
families = ["ipv4-unicast", "ipv6-unicast"]
graceful_restart_time = 120
selection_deferral_time = 90
originate = ["10.0.0.0/24", { prefix = "10.0.1.0/24", communities = ["65000:1", "no-export"] }]

[[neighbor]]
address = "10.0.0.2"
asn = 65000
rr_client = true
port = 1179
local_address = "10.0.0.1"
max_prefixes = 1000
import = [
  { prefix = "10.66.0.0/16", ge = 16, le = 32, action = "deny" },
  { prefix = "10.0.0.0/8", le = 24, action = "permit" },
]
export_communities = ["65000:100"]

[[neighbor]]
address = "2001:db8::2"
asn = 65002
password = "s3cret"
passive = true
next_hop_self = true
export = [{ prefix = "2001:db8::/32", le = 64, action = "permit" }]
"#;

    #[test]
    fn full_file() {
        let p = plan(FILE, &[]).unwrap();
        assert_eq!(p.asn, 65000);
        assert_eq!(p.router_id, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(p.listen, Some("0.0.0.0:179".parse().unwrap()));
        assert_eq!(p.cluster_id, Some(Ipv4Addr::new(10, 0, 0, 100)));
        assert_eq!(p.hold_time, Some(30));
        assert_eq!(p.families, [Family::IPV4_UNICAST, Family::IPV6_UNICAST]);
        assert_eq!(p.graceful_restart_time, Some(120));
        assert_eq!(
            p.speaker_config().selection_deferral_time,
            Duration::from_secs(90)
        );
        assert_eq!(p.control_socket, PathBuf::from(DEFAULT_CONTROL_SOCKET));
        assert_eq!(
            p.originate,
            [
                ("10.0.0.0/24".parse().unwrap(), vec![]),
                (
                    "10.0.1.0/24".parse().unwrap(),
                    vec![Community(65000 << 16 | 1), Community::NO_EXPORT]
                ),
            ]
        );
        let a = &p.neighbors[0];
        assert!(a.rr_client && !a.passive);
        assert_eq!(a.port, 1179);
        assert_eq!(a.local_address, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(a.max_prefixes, Some(1000));
        assert_eq!(a.export_communities, [Community(65000 << 16 | 100)]);
        let import = a.import.as_ref().unwrap();
        assert!(import.permits(&"10.1.2.0/24".parse().unwrap()));
        assert!(!import.permits(&"10.1.2.0/25".parse().unwrap()));
        assert!(!import.permits(&"10.66.1.0/24".parse().unwrap()));
        assert!(!import.permits(&"192.168.0.0/24".parse().unwrap()));
        assert!(a.export.is_none());
        let b = &p.neighbors[1];
        assert_eq!(b.address, "2001:db8::2".parse::<IpAddr>().unwrap());
        assert_eq!(b.password.as_deref(), Some("s3cret"));
        assert!(b.passive && b.next_hop_self && !b.rr_client);
        assert!(b.import.is_none());
        assert!(b
            .export
            .as_ref()
            .unwrap()
            .permits(&"2001:db8:1::/48".parse().unwrap()));
    }

    #[test]
    fn flags_alone() {
        let p = plan(
            "",
            &[
                "--asn",
                "65000",
                "--router-id",
                "192.0.2.1",
                "--listen",
                "127.0.0.1:1179",
                "--neighbor",
                "192.0.2.2:65001",
                "--neighbor",
                "192.0.2.3:1.10:pa:ss",
                "--neighbor",
                "[2001:db8::1]:65003",
                "--rr-client",
                "192.0.2.3",
                "--originate",
                "198.51.100.0/24",
                "--control-socket",
                "/tmp/x.sock",
            ],
        )
        .unwrap();
        assert_eq!(p.asn, 65000);
        assert_eq!(p.listen, Some("127.0.0.1:1179".parse().unwrap()));
        assert_eq!(p.neighbors.len(), 3);
        assert_eq!(p.neighbors[0].asn, 65001);
        assert!(!p.neighbors[0].rr_client);
        assert_eq!(p.neighbors[1].asn, 65546);
        assert_eq!(p.neighbors[1].password.as_deref(), Some("pa:ss"));
        assert!(p.neighbors[1].rr_client);
        assert_eq!(
            p.neighbors[2].address,
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(p.originate.len(), 1);
        assert_eq!(p.control_socket, PathBuf::from("/tmp/x.sock"));
        assert_eq!(p.hold_time, None);
        assert!(p.families.is_empty());
    }

    #[test]
    fn flags_override_and_extend_the_file() {
        let p = plan(
            FILE,
            &[
                "--asn",
                "65010",
                "--listen",
                "[::1]:1179",
                "--neighbor",
                "10.0.0.9:65009",
                "--rr-client",
                "10.0.0.9",
                "--originate",
                "10.9.0.0/16",
            ],
        )
        .unwrap();
        assert_eq!(p.asn, 65010);
        assert_eq!(p.router_id, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(p.listen, Some("[::1]:1179".parse().unwrap()));
        assert_eq!(p.neighbors.len(), 3);
        assert!(p.neighbors[2].rr_client);
        assert_eq!(p.originate.len(), 3);
    }

    fn err(file: &str, flags: &[&str]) -> String {
        plan(file, flags).unwrap_err().to_string()
    }

    const MIN: &[&str] = &["--asn", "65000", "--router-id", "10.0.0.1"];

    fn with_min(extra: &[&'static str]) -> Vec<&'static str> {
        MIN.iter().chain(extra).copied().collect()
    }

    #[test]
    fn bad_input_is_named() {
        assert!(err("", &[]).contains("no local AS"));
        assert!(err("", &["--asn", "65000"]).contains("no router id"));
        assert!(err("", &["--asn", "0", "--router-id", "1.1.1.1"]).contains("bad AS number \"0\""));
        assert!(err("", &["--asn", "4294967296", "--router-id", "1.1.1.1"]).contains("bad AS"));
        assert!(err("", &["--asn", "x", "--router-id", "1.1.1.1"]).contains("bad AS"));
        assert!(err("", &["--asn", "1", "--router-id", "1.1.1"]).contains("bad router id"));
        assert!(err("", &["--asn", "1", "--router-id", "0.0.0.0"]).contains("0.0.0.0"));
        assert!(err("", &with_min(&["--listen", "nowhere"])).contains("bad listen address"));
        assert!(err("", &with_min(&["--neighbor", "10.0.0.2"])).contains("ADDR:AS"));
        assert!(err("", &with_min(&["--neighbor", "10.0.0.300:1"])).contains("not an IP address"));
        assert!(err("", &with_min(&["--neighbor", "2001:db8::1:65001"])).contains("brackets"));
        assert!(err("", &with_min(&["--neighbor", "[2001:db8::1:65001"])).contains("']'"));
        assert!(err("", &with_min(&["--neighbor", "10.0.0.2:65536x"])).contains("bad AS"));
        assert!(err("", &with_min(&["--neighbor", "10.0.0.2:1:"])).contains("empty password"));
        assert!(err("", &with_min(&["--rr-client", "10.0.0.2"]))
            .contains("--rr-client 10.0.0.2: no such neighbor"));
        assert!(err("", &with_min(&["--originate", "10.0.0.0"])).contains("bad prefix"));
        assert!(err(
            "",
            &with_min(&["--originate", "10.0.0.0/8", "--originate", "10.0.0.1/8"])
        )
        .contains("originated twice"));
        assert!(err(FILE, &["--neighbor", "10.0.0.2:65000"])
            .contains("neighbor 10.0.0.2 is configured twice"));
        assert!(err("hold_time = 2", MIN).contains("hold time 2"));
        assert!(err("families = [\"l2vpn-evpn\"]", MIN).contains("bad family"));
        assert!(err(
            "[[neighbor]]\naddress = \"10.0.0.2\"\nasn = 1\nexport_communities = [\"1:70000\"]",
            MIN
        )
        .contains("bad community \"1:70000\""));
        assert!(err(
            "[[neighbor]]\naddress = \"10.0.0.2\"\nasn = 1\nimport = [{ prefix = \"10.0.0.0/16\", ge = 8, action = \"permit\" }]",
            MIN
        )
        .contains("neighbor 10.0.0.2: prefix-list rule 10.0.0.0/16: ge 8"));
        assert!(err("[[neighbor]]\naddress = \"10.0.0.2\"\nasn = 0", MIN).contains("AS 0"));
    }

    #[test]
    fn listen_ranges_from_file_and_flags() {
        let file =
            "listen = \"0.0.0.0\"\n[[listen_range]]\nprefix = \"10.0.0.7/24\"\nasn = 65000\n\
                    rr_client = true\npassword = \"s3cret\"\nmax_prefixes = 100\n\
                    import = [{ prefix = \"10.244.0.0/16\", le = 26, action = \"permit\" }]\n";
        let p = plan(
            file,
            &with_min(&[
                "--listen-range",
                "10.1.0.0/16:65001",
                "--listen-range",
                "[2001:db8::/64]:1.10",
            ]),
        )
        .unwrap();
        assert_eq!(p.listen_ranges.len(), 3);
        let r = &p.listen_ranges[0];
        assert_eq!(r.prefix.to_string(), "10.0.0.0/24");
        assert_eq!((r.asn, r.template.rr_client), (PeerAsn::Exact(65000), true));
        assert_eq!(r.template.password.as_deref(), Some("s3cret"));
        assert_eq!(r.template.max_prefixes, Some(100));
        assert!(r
            .template
            .import
            .as_ref()
            .unwrap()
            .permits(&"10.244.1.0/26".parse().unwrap()));
        let r = &p.listen_ranges[1];
        assert_eq!(
            (r.prefix.to_string().as_str(), r.asn),
            ("10.1.0.0/16", PeerAsn::Exact(65001))
        );
        assert!(r.template.rr_client && r.template.password.is_none());
        assert_eq!(p.listen_ranges[2].asn, PeerAsn::Exact(65546));

        assert!(err("", &with_min(&["--listen-range", "10.0.0.0/24:65000"]))
            .contains("need a listen address"));
        let listen = ["--listen", "0.0.0.0"];
        let e = |extra: &[&'static str]| {
            let mut flags = with_min(&listen);
            flags.extend_from_slice(extra);
            err("", &flags)
        };
        assert!(e(&["--listen-range", "10.0.0.0/24"]).contains("expected PREFIX:AS"));
        assert!(e(&["--listen-range", "10.0.0/24:1"]).contains("not a prefix"));
        assert!(e(&["--listen-range", "10.0.0.0/24:x"]).contains("bad AS"));
        assert!(e(&["--listen-range", "2001:db8::1:1"]).contains("brackets"));
        // The prefix length makes the last colon unambiguous.
        let r = parse_listen_range_flag("2001:db8::/64:65000").unwrap();
        assert_eq!(
            (r.prefix.to_string().as_str(), r.asn),
            ("2001:db8::/64", PeerAsn::Exact(65000))
        );
        assert!(e(&[
            "--listen-range",
            "10.0.0.0/24:1",
            "--listen-range",
            "10.0.0.9/24:2"
        ])
        .contains("listen range 10.0.0.0/24 is configured twice"));
        assert!(err(
            "listen = \"0.0.0.0\"\n[[listen_range]]\nprefix = \"10.0.0.0/24\"\nasn = 0",
            MIN
        )
        .contains("AS 0"));
    }

    /// What a route-reflector operator sets per range: AS (or any), MD5,
    /// rr-client, timers, TTL/GTSM, policy, max-prefix, export communities;
    /// the values a neighbour may not have are refused for a range too.
    #[test]
    fn listen_range_per_neighbor_settings() {
        let file = "listen = \"0.0.0.0\"\nhold_time = 30\n\
                    [[listen_range]]\nprefix = \"10.0.0.0/24\"\nasn = \"any\"\n\
                    rr_client = true\npassword = \"k\"\nhold_time = 9\nkeepalive_time = 2\n\
                    gtsm_hops = 1\nmax_prefixes = 5000\nexport_communities = [\"65000:7\"]\n\
                    export = [{ prefix = \"10.244.0.0/16\", le = 26, action = \"permit\" }]\n\
                    [[listen_range]]\nprefix = \"10.1.0.0/24\"\nasn = \"1.10\"\nttl = 3\n\
                    local_address = \"10.1.0.1\"\n";
        let p = plan(file, &with_min(&["--listen-range", "10.2.0.0/24:any"])).unwrap();
        let r = &p.listen_ranges[0];
        assert_eq!(r.asn, PeerAsn::Any);
        assert!(r.template.rr_client);
        assert_eq!(r.template.password.as_deref(), Some("k"));
        assert_eq!(
            (r.template.hold_time, r.template.keepalive_time),
            (Some(9), Some(2))
        );
        assert_eq!((r.template.ttl, r.template.gtsm_hops), (None, Some(1)));
        assert_eq!(r.template.max_prefixes, Some(5000));
        assert_eq!(
            r.template.export_communities,
            vec![Community((65000 << 16) | 7)]
        );
        let export = r.template.export.as_ref().unwrap();
        assert!(export.permits(&"10.244.3.0/26".parse().unwrap()));
        assert!(!export.permits(&"10.0.0.0/8".parse().unwrap()));
        let r = &p.listen_ranges[1];
        assert_eq!(r.asn, PeerAsn::Exact(65546));
        assert_eq!((r.template.hold_time, r.template.ttl), (None, Some(3)));
        assert_eq!(r.template.local_address, Some("10.1.0.1".parse().unwrap()));
        assert_eq!(p.listen_ranges[0].template.local_address, None);
        assert_eq!(p.listen_ranges[2].asn, PeerAsn::Any);

        let range = |extra: &str| {
            err(
                &format!("listen = \"0.0.0.0\"\n[[listen_range]]\nprefix = \"10.0.0.0/24\"\nasn = 65000\n{extra}"),
                MIN,
            )
        };
        assert!(range("hold_time = 2").contains("listen range 10.0.0.0/24: hold time 2"));
        assert!(range("keepalive_time = 90").contains("keepalive time 90"));
        assert!(range("ttl = 2\ngtsm_hops = 1").contains("exclusive"));
        assert!(range("gtsm_hops = 255").contains("GTSM hops"));
        assert!(range("export_communities = [\"x\"]").contains("x"));
        let e = err(
            "listen = \"0.0.0.0\"\n[[listen_range]]\nprefix = \"10.0.0.0/24\"\nasn = \"some\"",
            MIN,
        );
        assert!(e.contains("bad AS"), "{e}");
    }

    #[test]
    fn toml_errors_carry_the_position() {
        let e = parse_file_config("asn = 65000\nrouter_id = \"10.0.0\"\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        let e = parse_file_config("asn = 1\nbogus = true\n").unwrap_err();
        assert!(e.contains("bogus"), "{e}");
        let e =
            parse_file_config("[[neighbor]]\naddress = \"10.0.0.2\"\nasn = 1\nrr-client = true\n")
                .unwrap_err();
        assert!(e.contains("rr-client"), "{e}");
    }

    #[test]
    fn per_neighbor_session_values_from_file_and_flags() {
        let file = r#"
asn = 65000
router_id = "10.0.0.1"
hold_time = 30
[[neighbor]]
address = "10.0.0.2"
asn = 65002
hold_time = 9
keepalive_time = 2
ttl = 3
[[neighbor]]
address = "10.0.0.3"
asn = 65003
gtsm_hops = 1
"#;
        let p = plan(file, &[]).unwrap();
        let a = &p.neighbors[0];
        assert_eq!(
            (a.hold_time, a.keepalive_time, a.ttl, a.gtsm_hops),
            (Some(9), Some(2), Some(3), None)
        );
        assert_eq!(p.neighbors[1].gtsm_hops, Some(1));
        assert_eq!(p.neighbors[1].hold_time, None, "the global one applies");

        let p = plan(
            "asn = 65000\nrouter_id = \"10.0.0.1\"\n",
            &[
                "--neighbor",
                "10.0.0.2:65002",
                "--neighbor",
                "[2001:db8::2]:65002",
                "--neighbor-hold-time",
                "10.0.0.2=15",
                "--neighbor-keepalive",
                "10.0.0.2=4",
                "--neighbor-ttl",
                "10.0.0.2=2",
                "--neighbor-gtsm",
                "2001:db8::2",
            ],
        )
        .unwrap();
        let a = &p.neighbors[0];
        assert_eq!(
            (a.hold_time, a.keepalive_time, a.ttl, a.gtsm_hops),
            (Some(15), Some(4), Some(2), None)
        );
        assert_eq!(p.neighbors[1].gtsm_hops, Some(1));
    }

    #[test]
    fn bad_per_neighbor_session_values() {
        let base = "asn = 65000\nrouter_id = \"10.0.0.1\"\n[[neighbor]]\naddress = \"10.0.0.2\"\nasn = 65002\n";
        for (extra, expected) in [
            ("hold_time = 2\n", "hold time 2"),
            ("keepalive_time = 0\n", "keepalive time 0"),
            ("hold_time = 9\nkeepalive_time = 9\n", "below the hold time"),
            ("ttl = 0\n", "TTL 0"),
            ("gtsm_hops = 0\n", "GTSM hops"),
            ("gtsm_hops = 255\n", "GTSM hops"),
            ("ttl = 2\ngtsm_hops = 1\n", "exclusive"),
        ] {
            let e = plan(&format!("{base}{extra}"), &[])
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("neighbor 10.0.0.2") && e.contains(expected),
                "{extra}: {e}"
            );
        }
        let e = plan(base, &["--neighbor-ttl", "10.0.0.9=2"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no such neighbor"), "{e}");
        let e = plan(base, &["--neighbor-hold-time", "10.0.0.2"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("ADDR=VALUE"), "{e}");
        let e = plan(base, &["--neighbor-ttl", "10.0.0.2=300"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--neighbor-ttl"), "{e}");
    }

    #[test]
    fn read_missing_file() {
        let a = RunArgs {
            config: Some(PathBuf::from("/nonexistent/felix.toml")),
            ..RunArgs::default()
        };
        let e = RunPlan::from_args(&a).unwrap_err().to_string();
        assert!(e.starts_with("reading /nonexistent/felix.toml"), "{e}");
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../deploy/examples/route-reflector.toml");
        let p = plan(text, &[]).unwrap();
        assert_eq!(p.asn, 64512);
        assert_eq!(p.neighbors.len(), 3);
        assert!(p.neighbors[0].rr_client && p.neighbors[1].rr_client);
        let upstream = &p.neighbors[2];
        assert!(!upstream.rr_client);
        assert!(upstream
            .import
            .as_ref()
            .unwrap()
            .permits(&"0.0.0.0/0".parse().unwrap()));
        let config = p.speaker_config();
        assert_eq!(config.listen, Some("0.0.0.0:179".parse().unwrap()));
        assert_eq!(config.cluster_id, Some(Ipv4Addr::new(10, 0, 0, 10)));
        let n = upstream;
        assert_eq!(n.port, BGP_PORT);
        assert_eq!(n.password.as_deref(), Some("change-me"));
        assert_eq!(n.max_prefixes, Some(10000));
    }

    #[test]
    fn plan_defaults_keep_the_speaker_defaults() {
        let p = plan("", MIN).unwrap();
        assert_eq!(
            p.speaker_config(),
            SpeakerConfig::new(65000, Ipv4Addr::new(10, 0, 0, 1))
        );
        let n = parse_neighbor_flag("10.0.0.2:65001").unwrap();
        assert_eq!(n, NeighborConfig::new("10.0.0.2".parse().unwrap(), 65001));
    }

    #[test]
    fn listen_forms() {
        assert_eq!(
            parse_listen("10.0.0.1").unwrap(),
            "10.0.0.1:179".parse().unwrap()
        );
        assert_eq!(parse_listen("::").unwrap(), "[::]:179".parse().unwrap());
        assert_eq!(parse_listen("[::1]").unwrap(), "[::1]:179".parse().unwrap());
        assert_eq!(
            parse_listen("[::1]:1179").unwrap(),
            "[::1]:1179".parse().unwrap()
        );
    }
}
