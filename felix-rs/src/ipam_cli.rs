//! `felix ipam …`: the operator's view of IPAM, like `calicoctl ipam`.
//!
//! Every command takes `--datastore URL` (`sqlite:PATH`, `etcd://…`,
//! `kubernetes`) and most take `--output json`. Exit codes: 0 done, 1 the
//! request failed (or `check` found something), 2 bad usage.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};
use ipam::block::IpamBlockSpec;
use ipam::pool::{parse_cidr, AllowedUse, EncapMode, IpPoolSpec};
use ipam::store::{self, Datastore, DEFAULT_DATASTORE};
use ipam::{
    AllocationAttrs, Allocator, AllocatorConfig, AssignIpRequest, AutoAssignRequest, BlockRelease,
    IpamError, LiveSet, ReleaseRequest,
};
use ipnet::IpNet;
use serde::Serialize;

/// `felix ipam` arguments.
#[derive(Args, Debug)]
pub struct IpamArgs {
    /// Where IPAM state lives: sqlite:PATH, etcd://HOST:PORT[,HOST:PORT...] or kubernetes.
    #[arg(long, global = true, value_name = "URL", default_value = DEFAULT_DATASTORE)]
    pub datastore: String,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    #[command(subcommand)]
    pub command: IpamCommand,
}

/// Text or JSON.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    #[default]
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum IpamCommand {
    /// Allocate addresses for a handle on a node; prints them.
    Allocate(AllocateArgs),
    /// Release addresses, by address or by handle.
    Release(ReleaseArgs),
    /// Pools with their usage; with --blocks, every block; with --ip, who holds an address.
    Show(ShowArgs),
    /// Create, list and delete IP pools.
    #[command(subcommand)]
    Pools(PoolsCommand),
    /// Report leaked addresses, stale handles, unfinished affinities, unowned blocks
    /// (exit 1 when something needs repair).
    Check(LiveArgs),
    /// Repair what `check` reports, and give back blocks empty for longer than the grace period.
    Gc(GcArgs),
}

#[derive(Args, Debug)]
pub struct AllocateArgs {
    #[arg(long)]
    pub node: String,
    #[arg(long)]
    pub handle: String,
    /// IPv4 addresses to allocate (default 1 when neither --ipv6 nor --ip is given).
    #[arg(long, value_name = "N")]
    pub ipv4: Option<u32>,
    /// IPv6 addresses to allocate.
    #[arg(long, value_name = "M", default_value_t = 0)]
    pub ipv6: u32,
    /// Allocate this address instead.
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["ipv4", "ipv6"])]
    pub ip: Option<IpAddr>,
    /// Only from these pools (by name).
    #[arg(long = "pool", value_name = "NAME")]
    pub pools: Vec<String>,
    #[arg(long)]
    pub namespace: Option<String>,
    #[arg(long)]
    pub pod: Option<String>,
    #[arg(long)]
    pub interface: Option<String>,
    /// Never borrow from another node's block.
    #[arg(long)]
    pub strict_affinity: bool,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["ip", "handle"])))]
pub struct ReleaseArgs {
    /// Addresses to release (repeat).
    #[arg(long, value_name = "ADDR")]
    pub ip: Vec<IpAddr>,
    /// Release everything this handle holds; with --ip, only if the handle holds it.
    #[arg(long, value_name = "ID")]
    pub handle: Option<String>,
    /// With one --ip: only if it still carries this allocation sequence number.
    #[arg(long, value_name = "N", requires = "ip")]
    pub sequence: Option<u64>,
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// Also list every block with its affinity and usage.
    #[arg(long)]
    pub blocks: bool,
    /// Show who holds this address.
    #[arg(long, value_name = "ADDR")]
    pub ip: Option<IpAddr>,
}

#[derive(Subcommand, Debug)]
pub enum PoolsCommand {
    /// Create a pool (refused when it overlaps another or is smaller than a block).
    Create(PoolCreateArgs),
    /// List pools.
    List,
    /// Delete a pool (refused while addresses in it are in use).
    Delete {
        #[arg(value_name = "NAME")]
        name: String,
    },
}

#[derive(Args, Debug)]
pub struct PoolCreateArgs {
    /// Pool name (default: from the CIDR, e.g. 10-244-0-0-16).
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub cidr: String,
    /// Block prefix length (default 26 for IPv4, 122 for IPv6).
    #[arg(long)]
    pub block_size: Option<u8>,
    /// Always, CrossSubnet or Never.
    #[arg(long, default_value = "Never")]
    pub ipip_mode: EncapMode,
    /// Always, CrossSubnet or Never.
    #[arg(long, default_value = "Never")]
    pub vxlan_mode: EncapMode,
    #[arg(long)]
    pub nat_outgoing: bool,
    #[arg(long)]
    pub disabled: bool,
    /// all(), has(k), k == 'v', k != 'v', joined with &&.
    #[arg(long, default_value = "all()")]
    pub node_selector: String,
    /// Workload and/or Tunnel (comma-separated).
    #[arg(long, value_delimiter = ',', value_parser = parse_use)]
    pub allowed_uses: Vec<AllowedUse>,
}

fn parse_use(s: &str) -> Result<AllowedUse, String> {
    match s.to_ascii_lowercase().as_str() {
        "workload" => Ok(AllowedUse::Workload),
        "tunnel" => Ok(AllowedUse::Tunnel),
        _ => Err(format!("{s:?}: expected Workload or Tunnel")),
    }
}

#[derive(Args, Debug)]
pub struct LiveArgs {
    /// The nodes that exist (comma-separated); affinities and blocks of others are reported.
    #[arg(long, value_delimiter = ',', value_name = "NODE,...")]
    pub nodes: Option<Vec<String>>,
    /// A file with the live owners' handle ids, one per line; addresses of other handles
    /// are reported as leaked.
    #[arg(long, value_name = "FILE")]
    pub owners: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct GcArgs {
    #[command(flatten)]
    pub live: LiveArgs,
    /// Give back blocks empty for at least this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub empty_block_grace: u64,
}

/// What went wrong running a command.
#[derive(Debug, thiserror::Error)]
pub enum IpamCliError {
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Store(#[from] ipam::store::StoreError),
    #[error("{0}")]
    Usage(String),
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl IpamCliError {
    /// 2 for usage errors, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            IpamCliError::Usage(_) | IpamCliError::Io { .. } => 2,
            IpamCliError::Ipam(IpamError::Pool(_) | IpamError::Invalid(_)) => 2,
            _ => 1,
        }
    }
}

/// The text to print and the exit code.
#[derive(Debug)]
pub struct Outcome {
    pub stdout: String,
    pub exit: u8,
}

fn done(stdout: String) -> Outcome {
    Outcome { stdout, exit: 0 }
}

fn json<T: Serialize>(value: &T) -> String {
    let mut s = serde_json::to_string_pretty(value)
        .unwrap_or_else(|e| format!("{{\"error\":{:?}}}", e.to_string()));
    s.push('\n');
    s
}

/// Runs one `felix ipam` command.
pub async fn run(args: &IpamArgs) -> Result<Outcome, IpamCliError> {
    let store = store::open(&args.datastore).await?;
    run_on(store, args).await
}

/// Runs one command against an open datastore.
pub async fn run_on(store: Arc<dyn Datastore>, args: &IpamArgs) -> Result<Outcome, IpamCliError> {
    let out = args.output;
    match &args.command {
        IpamCommand::Allocate(a) => allocate(store, a, out).await,
        IpamCommand::Release(r) => release(store, r, out).await,
        IpamCommand::Show(s) => show(store, s, out).await,
        IpamCommand::Pools(p) => pools(store, p, out).await,
        IpamCommand::Check(live) => check(store, live, out).await,
        IpamCommand::Gc(gc) => collect(store, gc, out).await,
    }
}

async fn allocate(
    store: Arc<dyn Datastore>,
    a: &AllocateArgs,
    out: OutputFormat,
) -> Result<Outcome, IpamCliError> {
    let alloc = Allocator::new(
        store,
        AllocatorConfig {
            strict_affinity: a.strict_affinity,
            ..one_shot_config()
        },
    );
    let attrs = AllocationAttrs {
        namespace: a.namespace.clone(),
        pod: a.pod.clone(),
        node: None,
        interface: a.interface.clone(),
        kind: None,
    };
    let leases = if let Some(ip) = a.ip {
        vec![
            alloc
                .assign_ip(&AssignIpRequest {
                    ip: Some(ip),
                    handle: a.handle.clone(),
                    node: a.node.clone(),
                    attrs,
                })
                .await?,
        ]
    } else {
        let num_v4 = a.ipv4.unwrap_or(if a.ipv6 == 0 { 1 } else { 0 });
        alloc
            .auto_assign(&AutoAssignRequest {
                handle: a.handle.clone(),
                node: a.node.clone(),
                num_v4,
                num_v6: a.ipv6,
                attrs,
                pools: a.pools.clone(),
                node_labels: None,
                ..AutoAssignRequest::default()
            })
            .await?
            .leases
    };
    Ok(done(match out {
        OutputFormat::Json => json(&leases),
        OutputFormat::Table => leases.iter().map(|l| format!("{}\n", l.ip)).collect(),
    }))
}

async fn release(
    store: Arc<dyn Datastore>,
    r: &ReleaseArgs,
    out: OutputFormat,
) -> Result<Outcome, IpamCliError> {
    let alloc = Allocator::new(store, one_shot_config());
    if r.ip.is_empty() {
        let Some(handle) = &r.handle else {
            return Err(IpamCliError::Usage("give --ip or --handle".into()));
        };
        let ips = alloc.release_by_handle(handle).await?;
        return Ok(done(match out {
            OutputFormat::Json => json(&serde_json::json!({ "handle": handle, "released": ips })),
            OutputFormat::Table if ips.is_empty() => {
                format!("handle {handle:?} held no addresses; nothing to do\n")
            }
            OutputFormat::Table => ips.iter().map(|ip| format!("released {ip}\n")).collect(),
        }));
    }
    if r.sequence.is_some() && r.ip.len() != 1 {
        return Err(IpamCliError::Usage(
            "--sequence applies to exactly one --ip".into(),
        ));
    }
    let reqs: Vec<ReleaseRequest> =
        r.ip.iter()
            .map(|ip| ReleaseRequest {
                ip: *ip,
                handle: r.handle.clone(),
                sequence: r.sequence,
            })
            .collect();
    let outcomes = alloc.release_ips(&reqs).await?;
    let refused = outcomes
        .iter()
        .any(|o| matches!(o.outcome, BlockRelease::Refused { .. }));
    let stdout = match out {
        OutputFormat::Json => json(&outcomes),
        OutputFormat::Table => outcomes
            .iter()
            .map(|o| match &o.outcome {
                BlockRelease::Released { handle_id } => format!(
                    "released {} (handle {})\n",
                    o.ip,
                    handle_id.as_deref().unwrap_or("-")
                ),
                BlockRelease::NotAllocated => {
                    format!("{} was not allocated; nothing to do\n", o.ip)
                }
                BlockRelease::Refused { reason } => format!("refused {}: {reason}\n", o.ip),
            })
            .collect(),
    };
    Ok(Outcome {
        stdout,
        exit: u8::from(refused),
    })
}

#[derive(Serialize)]
struct Usage {
    grouping: &'static str,
    cidr: IpNet,
    name: String,
    total: u128,
    in_use: u128,
    free: u128,
}

fn percent(part: u128, total: u128) -> String {
    if total == 0 {
        return "0%".into();
    }
    format!("{}%", part.saturating_mul(100) / total)
}

fn table(rows: &[Vec<String>]) -> String {
    let mut widths = Vec::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if widths.len() <= i {
                widths.push(0);
            }
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

async fn show(
    store: Arc<dyn Datastore>,
    s: &ShowArgs,
    out: OutputFormat,
) -> Result<Outcome, IpamCliError> {
    let alloc = Allocator::new(store, one_shot_config());
    let pools = alloc.pools().await?;
    let blocks: Vec<IpamBlockSpec> = alloc.blocks().await?.into_iter().map(|(_, b)| b).collect();

    if let Some(ip) = s.ip {
        let block = blocks.iter().find(|b| b.cidr.contains(&ip));
        let pool = pools.iter().find(|p| p.spec.cidr.contains(&ip));
        let used = block.and_then(|b| b.in_use_at(ip));
        let stdout = match out {
            OutputFormat::Json => json(&serde_json::json!({
                "ip": ip,
                "pool": pool.map(|p| &p.name),
                "block": block.map(|b| b.cidr),
                "affinity": block.and_then(|b| b.affinity.clone()),
                "allocation": used,
            })),
            OutputFormat::Table => match (&used, pool) {
                (Some(u), _) => {
                    let mut text = format!(
                        "{ip} is in use by handle {} (sequence {})\n",
                        u.handle_id.as_deref().unwrap_or("-"),
                        u.sequence
                    );
                    if let Some(b) = block {
                        let _ = writeln!(
                            text,
                            "  block {} affinity {}",
                            b.cidr,
                            b.affinity.as_deref().unwrap_or("none")
                        );
                    }
                    for (k, v) in &u.attributes {
                        let _ = writeln!(text, "  {k}: {v}");
                    }
                    text
                }
                (None, Some(p)) => format!("{ip} is not in use (pool {})\n", p.name),
                (None, None) => format!("{ip} is not in any pool\n"),
            },
        };
        return Ok(done(stdout));
    }

    let mut usage = Vec::new();
    for pool in &pools {
        let total = u128::from(pool.spec.block_len()) * pool.spec.block_count();
        let in_use: u128 = blocks
            .iter()
            .filter(|b| pool.spec.cidr.contains(&b.cidr))
            .map(|b| b.in_use_count() as u128)
            .sum();
        usage.push(Usage {
            grouping: "IP Pool",
            cidr: pool.spec.cidr,
            name: pool.name.clone(),
            total,
            in_use,
            free: total - in_use,
        });
        if s.blocks {
            for b in blocks.iter().filter(|b| pool.spec.cidr.contains(&b.cidr)) {
                usage.push(Usage {
                    grouping: "Block",
                    cidr: b.cidr,
                    name: b.affinity.clone().unwrap_or_else(|| "(none)".into()),
                    total: b.size() as u128,
                    in_use: b.in_use_count() as u128,
                    free: b.free() as u128,
                });
            }
        }
    }
    if s.blocks {
        for b in blocks
            .iter()
            .filter(|b| !pools.iter().any(|p| p.spec.cidr.contains(&b.cidr)))
        {
            usage.push(Usage {
                grouping: "Block (no pool)",
                cidr: b.cidr,
                name: b.affinity.clone().unwrap_or_else(|| "(none)".into()),
                total: b.size() as u128,
                in_use: b.in_use_count() as u128,
                free: b.free() as u128,
            });
        }
    }
    let stdout = match out {
        OutputFormat::Json => json(&usage),
        OutputFormat::Table => {
            let mut rows = vec![vec![
                "GROUPING".into(),
                "CIDR".into(),
                if s.blocks { "POOL / AFFINITY" } else { "POOL" }.into(),
                "IPS TOTAL".into(),
                "IPS IN USE".into(),
                "IPS FREE".into(),
            ]];
            for u in &usage {
                rows.push(vec![
                    u.grouping.into(),
                    u.cidr.to_string(),
                    u.name.clone(),
                    u.total.to_string(),
                    format!("{} ({})", u.in_use, percent(u.in_use, u.total)),
                    format!("{} ({})", u.free, percent(u.free, u.total)),
                ]);
            }
            table(&rows)
        }
    };
    Ok(done(stdout))
}

async fn pools(
    store: Arc<dyn Datastore>,
    p: &PoolsCommand,
    out: OutputFormat,
) -> Result<Outcome, IpamCliError> {
    let alloc = Allocator::new(store, one_shot_config());
    match p {
        PoolsCommand::Create(c) => {
            let cidr = parse_cidr(&c.cidr).map_err(IpamError::from)?;
            let mut spec = IpPoolSpec::new(cidr);
            if let Some(size) = c.block_size {
                spec.block_size = size;
            }
            spec.ipip_mode = c.ipip_mode;
            spec.vxlan_mode = c.vxlan_mode;
            spec.nat_outgoing = c.nat_outgoing;
            spec.disabled = c.disabled;
            spec.node_selector = c.node_selector.clone();
            if !c.allowed_uses.is_empty() {
                spec.allowed_uses = c.allowed_uses.clone();
            }
            let name = c
                .name
                .clone()
                .unwrap_or_else(|| ipam::names::cidr_name(&cidr));
            alloc.create_pool(&name, spec.clone()).await?;
            Ok(done(match out {
                OutputFormat::Json => json(&serde_json::json!({ "name": name, "spec": spec })),
                OutputFormat::Table => format!("created pool {name} ({cidr})\n"),
            }))
        }
        PoolsCommand::List => {
            let pools = alloc.pools().await?;
            Ok(done(match out {
                OutputFormat::Json => json(
                    &pools
                        .iter()
                        .map(|p| serde_json::json!({ "name": p.name, "spec": p.spec }))
                        .collect::<Vec<_>>(),
                ),
                OutputFormat::Table => {
                    let mut rows = vec![[
                        "NAME", "CIDR", "BLOCK", "IPIP", "VXLAN", "NAT", "DISABLED", "SELECTOR",
                    ]
                    .map(String::from)
                    .to_vec()];
                    for p in &pools {
                        rows.push(vec![
                            p.name.clone(),
                            p.spec.cidr.to_string(),
                            format!("/{}", p.spec.block_size),
                            p.spec.ipip_mode.to_string(),
                            p.spec.vxlan_mode.to_string(),
                            p.spec.nat_outgoing.to_string(),
                            p.spec.disabled.to_string(),
                            p.spec.node_selector.clone(),
                        ]);
                    }
                    table(&rows)
                }
            }))
        }
        PoolsCommand::Delete { name } => {
            let blocks = alloc.delete_pool(name).await?;
            Ok(done(match out {
                OutputFormat::Json => {
                    json(&serde_json::json!({ "deleted": name, "blocksReleased": blocks }))
                }
                OutputFormat::Table => format!(
                    "deleted pool {name} ({} empty blocks released)\n",
                    blocks.len()
                ),
            }))
        }
    }
}

fn live_set(live: &LiveArgs) -> Result<LiveSet, IpamCliError> {
    let owners = match &live.owners {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| IpamCliError::Io {
                path: path.clone(),
                source,
            })?;
            Some(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned)
                    .collect::<HashSet<_>>(),
            )
        }
    };
    Ok(LiveSet {
        nodes: live
            .nodes
            .as_ref()
            .map(|n| n.iter().cloned().collect::<HashSet<_>>()),
        owners,
    })
}

async fn check(
    store: Arc<dyn Datastore>,
    live: &LiveArgs,
    out: OutputFormat,
) -> Result<Outcome, IpamCliError> {
    let alloc = Allocator::new(store, one_shot_config());
    let report = alloc.check(&live_set(live)?).await?;
    let exit = u8::from(!report.is_clean());
    let stdout = match out {
        OutputFormat::Json => json(&report),
        OutputFormat::Table => {
            let mut t = String::new();
            for l in &report.leaked {
                let _ = writeln!(
                    t,
                    "leaked address {} (block {}, handle {}, {})",
                    l.ip,
                    l.block,
                    l.handle_id.as_deref().unwrap_or("-"),
                    attrs_text(&l.attributes)
                );
            }
            for h in &report.stale_handles {
                let _ = writeln!(t, "handle of a departed owner: {h}");
            }
            for m in &report.handle_mismatches {
                let _ = writeln!(
                    t,
                    "handle {} counts {} in {} but holds {}{}",
                    m.handle_id,
                    m.counted,
                    m.block,
                    m.held,
                    if m.counted > m.held {
                        " (harmless over-count)"
                    } else {
                        ""
                    }
                );
            }
            for a in &report.affinities_of_unknown_nodes {
                let _ = writeln!(
                    t,
                    "affinity of unknown node {}: {}",
                    a.spec.node, a.spec.cidr
                );
            }
            for a in &report.unfinished_affinities {
                let _ = writeln!(
                    t,
                    "unfinished affinity {} ({:?}) for {} on {}",
                    a.name, a.spec.state, a.spec.node, a.spec.cidr
                );
            }
            for b in &report.blocks_without_affinity {
                let _ = writeln!(t, "block without affinity: {b}");
            }
            for b in &report.blocks_of_unknown_nodes {
                let _ = writeln!(t, "block of an unknown node: {b}");
            }
            for c in &report.corrupt {
                let _ = writeln!(t, "corrupt: {c}");
            }
            if report.is_clean() {
                t.push_str("IPAM is consistent\n");
            }
            t
        }
    };
    Ok(Outcome { stdout, exit })
}

fn attrs_text(attrs: &BTreeMap<String, String>) -> String {
    if attrs.is_empty() {
        return "no attributes".into();
    }
    attrs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

async fn collect(
    store: Arc<dyn Datastore>,
    gc: &GcArgs,
    out: OutputFormat,
) -> Result<Outcome, IpamCliError> {
    let alloc = Allocator::new(
        store,
        AllocatorConfig {
            empty_block_grace: std::time::Duration::from_secs(gc.empty_block_grace),
            ..one_shot_config()
        },
    );
    let mut report = alloc.gc(&live_set(&gc.live)?).await?;
    report
        .blocks_released
        .extend(alloc.reclaim_empty_blocks().await?);
    let stdout = match out {
        OutputFormat::Json => json(&report),
        OutputFormat::Table => {
            let mut t = String::new();
            for ip in &report.released {
                let _ = writeln!(t, "released {ip}");
            }
            for h in &report.handles_deleted {
                let _ = writeln!(t, "deleted handle {h}");
            }
            for a in &report.affinities_confirmed {
                let _ = writeln!(t, "confirmed affinity {a}");
            }
            for a in &report.affinities_deleted {
                let _ = writeln!(t, "deleted affinity {a}");
            }
            for b in &report.blocks_released {
                let _ = writeln!(t, "released block {b}");
            }
            for b in &report.blocks_unaffined {
                let _ = writeln!(t, "cleared affinity of block {b} (still in use)");
            }
            if t.is_empty() {
                t.push_str("nothing to repair\n");
            }
            t
        }
    };
    Ok(done(stdout))
}

/// Each command is one short process: the allocator's read cache would
/// only cost the watches it opens.
fn one_shot_config() -> AllocatorConfig {
    AllocatorConfig {
        cached_reads: false,
        ..AllocatorConfig::default()
    }
}
