//! `felix node run`: the agent's main loop.
//!
//! 1. Registers the node ([`FelixNode`]) in the datastore.
//! 2. Starts the BGP speaker on the node address.
//! 3. Follows `FelixNode`, `BGPPeer`, `BGPConfiguration` (and the block
//!    affinities when a [`BlockSource`] is attached): every change re-plans
//!    the neighbours ([`peering::plan`]) and adds/removes only the
//!    difference, so a new node or peer takes effect without a restart.
//! 4. Originates the node's affine blocks; withdraws a block whose affinity
//!    is gone.
//! 5. Follows the IP pools: when one wants VXLAN or IPIP for this node, takes
//!    a tunnel address from IPAM and registers it (with the VTEP MAC) on the
//!    node's object, as Calico does; other nodes' registrations give the
//!    VTEPs to program.
//! 6. Turns the speaker's best paths into [`DesiredRoutes`]
//!    ([`forwarding::remote_route`]: direct, VXLAN or IPIP per block) plus
//!    the tunnels, and hands them to the [`RouteSink`] (on every change and
//!    every `resync_seconds`), once nodes and pools have been read.
//! 7. Writes the NAT outgoing table from the pools
//!    ([`NatOutgoingReconciler`]) once they are read, on every change and
//!    every `resync_seconds`.
//! 8. Serves `felix status` (control socket) and `/metrics`, `/livez`,
//!    `/readyz`.
//!
//! On SIGINT/SIGTERM the agent exits without a Cease: its sessions just
//! close, so peers that negotiated graceful restart keep its routes as
//! stale (RFC 4724 §4.2), while its own kernel routes, tunnel devices,
//! NAT outgoing table and registration stay (a restart neither flushes
//! routes nor makes the node leave the mesh or change its VTEP).
//! The next start finds felix's routes in the kernel and announces itself
//! as restarting (R and F bits); until every peer's End-of-RIB is in, the
//! route programmer only adds and changes routes, so forwarding never
//! stops. A node taken out for good is removed with `felix node remove`:
//! its peers then drop it and its routes at once.

use super::config::AgentConfig;
use super::follow::{self, KindUpdate};
use super::forwarding::{self, DesiredRoutes, LocalVtep, Topology, Tunnels};
use super::http::{self, Counters, Responder};
use super::nat_outgoing::{NatOutgoingReconciler, NatOutgoingSink};
use super::peering::{self, PeeringInputs};
use super::resources::{
    format_mac, BgpConfigurationSpec, BgpPeerSpec, FelixNode, NodeBgp, DEFAULT_BGP_CONFIGURATION,
};
use super::status::{self, AgentStatus};
use bgp::speaker::{BestPathChange, NeighborConfig, Speaker, SpeakerConfig};
use bgp::wire::Family;
use ipam::pool::IpPoolSpec;
use ipam::store::{Datastore, Kind, StoreError};
use ipam::TunnelKind;
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

/// How many recent errors `felix status` shows.
pub const LAST_ERRORS: usize = 10;

/// How often the node's address usage per pool is read again for
/// `felix status` and /metrics (one block read per affine block).
pub const USAGE_REFRESH: Duration = Duration::from_secs(10);

/// The node's affine blocks and tunnel addresses, from IPAM.
#[async_trait::async_trait]
pub trait BlockSource: Send + Sync {
    /// The blocks confirmed affine to `node` (claimed by its first pod's
    /// allocation through the pod API, or by its tunnel address).
    async fn affine_blocks(&self, node: &str) -> Result<BTreeSet<IpNet>, String>;
    /// Makes sure `node` (with `labels`) holds a tunnel address of `kind`
    /// when a pool wants that tunnel and none otherwise; returns it.
    async fn tunnel_address(
        &self,
        node: &str,
        kind: TunnelKind,
        labels: &BTreeMap<String, String>,
    ) -> Result<Option<Ipv4Addr>, String>;
    /// `node`'s address usage per pool (for `felix status` and /metrics);
    /// none where IPAM cannot say.
    async fn usage(&self, _node: &str) -> Result<Vec<ipam::PoolUsage>, String> {
        Ok(Vec::new())
    }
}

/// Where the desired routes go: the route programmer.
#[async_trait::async_trait]
pub trait RouteSink: Send {
    /// Converges the kernel to `desired`; returns how many routes it holds.
    async fn program(&mut self, desired: &DesiredRoutes) -> Result<usize, String>;
    /// How many of felix's routes the kernel holds before the first
    /// [`program`](Self::program): more than zero means a previous run left
    /// them in place (a restart).
    async fn previous_routes(&mut self) -> Result<usize, String> {
        Ok(0)
    }
    /// While set, [`program`](Self::program) adds and changes routes but
    /// removes none (after a restart, until BGP has re-learned everything).
    fn keep_unlisted(&mut self, _keep: bool) {}
}

/// What the agent is built with.
#[derive(Default)]
pub struct Plugins {
    pub blocks: Option<Arc<dyn BlockSource>>,
    pub routes: Option<Box<dyn RouteSink>>,
    /// NAT outgoing for pools with `natOutgoing` (the kernel's nftables).
    pub nat: Option<Box<dyn NatOutgoingSink>>,
    /// The pod API's request latency, for /metrics.
    pub pod_api_latency: Option<Arc<crate::latency_histogram::LatencyHistogram>>,
}

/// Why the agent stopped.
#[derive(Debug, Error)]
pub enum AgentError {
    #[error("registering node {node}: {source}")]
    Register { node: String, source: StoreError },
    #[error("starting the BGP speaker: {0}")]
    Speaker(#[from] bgp::speaker::SpeakerError),
    #[error("control socket {path}: {source}")]
    Control {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("HTTP listener {addr}: {source}")]
    Http {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("signals: {0}")]
    Signal(std::io::Error),
}

/// What the status socket, metrics and the loop share.
#[derive(Default)]
struct Shared {
    status: AgentStatus,
    counters: Counters,
    errors: VecDeque<(Instant, String)>,
}

impl Shared {
    fn error(&mut self, message: String) {
        tracing::warn!("{message}");
        if self.errors.len() == LAST_ERRORS {
            self.errors.pop_front();
        }
        self.errors.push_back((Instant::now(), message));
    }

    fn snapshot(&self) -> AgentStatus {
        let mut s = self.status.clone();
        s.last_errors = self
            .errors
            .iter()
            .map(|(at, m)| format!("{}s ago: {m}", at.elapsed().as_secs()))
            .collect();
        s
    }
}

/// The node object this agent registers.
pub fn node_object(config: &AgentConfig) -> FelixNode {
    FelixNode {
        bgp: NodeBgp {
            ipv4_address: config.node_address,
            ipv6_address: config.node_address_v6,
            as_number: config.as_number,
            route_reflector_cluster_id: config.route_reflector_cluster_id,
        },
        labels: config.labels.clone(),
        ipv4_vxlan_tunnel_addr: None,
        vxlan_tunnel_mac_addr: None,
        ipv4_ipip_tunnel_addr: None,
    }
}

/// Where the speaker listens: the IPv4 node address; with an IPv6 node
/// address, one dual-stack socket on `[::]` (the speaker has one listener;
/// IPv4 peers arrive as `::ffff:a.b.c.d` and are mapped back).
pub fn listen_address(config: &AgentConfig) -> SocketAddr {
    let ip = match config.node_address_v6 {
        Some(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        None => IpAddr::V4(config.node_address.addr()),
    };
    SocketAddr::new(ip, config.bgp.port())
}

/// The address families the speaker offers (RFC 4760): IPv6 unicast too
/// when the node is dual stack.
pub fn families(config: &AgentConfig) -> Vec<Family> {
    let mut f = vec![Family::IPV4_UNICAST];
    if config.node_address_v6.is_some() {
        f.push(Family::IPV6_UNICAST);
    }
    f
}

/// Takes the tunnel fields of the node's stored object over into `me`, so
/// that re-registering at start does not withdraw the VTEP the other
/// nodes forward to (they are checked against IPAM once the pools are read).
async fn keep_stored_tunnels(store: &dyn Datastore, name: &str, me: &mut FelixNode) {
    let Ok(obj) = store.get(Kind::FelixNode, name).await else {
        return;
    };
    if let Ok(stored) = serde_json::from_slice::<FelixNode>(&obj.value) {
        me.ipv4_vxlan_tunnel_addr = stored.ipv4_vxlan_tunnel_addr;
        me.vxlan_tunnel_mac_addr = stored.vxlan_tunnel_mac_addr;
        me.ipv4_ipip_tunnel_addr = stored.ipv4_ipip_tunnel_addr;
    }
}

/// Creates or updates the node's object (compare-and-swap, retried on a
/// concurrent change).
pub async fn register(
    store: &dyn Datastore,
    name: &str,
    node: &FelixNode,
) -> Result<(), StoreError> {
    let value = serde_json::to_vec(node).map_err(|e| StoreError::Invalid(e.to_string()))?;
    for _ in 0..10 {
        match store.create(Kind::FelixNode, name, value.clone()).await {
            Ok(_) => return Ok(()),
            Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
        let current = match store.get(Kind::FelixNode, name).await {
            Ok(o) => o,
            Err(StoreError::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        };
        if current.value == value {
            return Ok(());
        }
        match store
            .update(Kind::FelixNode, name, value.clone(), &current.revision)
            .await
        {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Unavailable(format!(
        "FelixNode {name:?} kept changing while registering"
    )))
}

/// What a stopped agent hands back: its BGP speaker, still running.
/// Dropping it while the runtime runs makes the speaker close every
/// session with a Cease, which makes the peers flush our routes; drop the
/// runtime first instead, so that the sessions just close (no NOTIFICATION)
/// and the peers keep our routes through the restart (RFC 4724 §4.2).
#[must_use = "drop the runtime before this, or the peers flush our routes"]
pub struct Stopped {
    pub speaker: Speaker,
}

/// Runs the agent until SIGINT/SIGTERM.
pub async fn run(
    config: AgentConfig,
    store: Arc<dyn Datastore>,
    mut plugins: Plugins,
) -> Result<Stopped, AgentError> {
    let mut me = node_object(&config);
    keep_stored_tunnels(&*store, &config.node_name, &mut me).await;
    register(&*store, &config.node_name, &me)
        .await
        .map_err(|source| AgentError::Register {
            node: config.node_name.clone(),
            source,
        })?;
    tracing::info!(node = %config.node_name, address = %config.node_address,
        address_v6 = ?config.node_address_v6, "node registered");

    let asn = config
        .as_number
        .or(config.bgp.as_number)
        .unwrap_or(super::resources::DEFAULT_AS_NUMBER);
    let mut sc = SpeakerConfig::new(asn, config.router_id);
    sc.listen = Some(listen_address(&config));
    sc.families = families(&config);
    sc.cluster_id = config.route_reflector_cluster_id;
    sc.max_paths = 8;
    let restarting = match (
        config.graceful_restart_recovery,
        plugins.routes.as_deref_mut(),
    ) {
        (Some(forced), _) => forced,
        (None, Some(sink)) => match sink.previous_routes().await {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(
                        routes = n,
                        "the kernel holds felix routes of a previous run: graceful restart"
                    );
                }
                n > 0
            }
            Err(e) => {
                tracing::warn!("{e}; starting as a fresh start");
                false
            }
        },
        (None, None) => false,
    };
    sc.restarting = restarting;
    // Until BGP has re-learned everything, stale kernel routes keep
    // forwarding: nothing is removed before the peers' End-of-RIB (or the
    // selection deferral time).
    let restart_sync = restarting.then(|| Instant::now() + sc.selection_deferral_time);
    if let (true, Some(sink)) = (restarting, plugins.routes.as_deref_mut()) {
        sink.keep_unlisted(true);
    }
    let speaker = Speaker::start(sc).await?;
    let mut best = speaker.subscribe();

    let shared = Arc::new(Mutex::new(Shared::default()));
    if let Ok(mut s) = shared.lock() {
        s.status.node = config.node_name.clone();
        s.status.address = config.node_address.to_string();
        s.status.address_v6 = config.node_address_v6.map(|a| a.to_string());
        s.status.asn = asn;
        s.status.router_id = Some(config.router_id);
        s.status.datastore = config.datastore.clone();
        s.status.programming = plugins.routes.is_some();
    }

    let control = status::bind(&config.control_socket).map_err(|source| AgentError::Control {
        path: config.control_socket.clone(),
        source,
    })?;
    tokio::spawn(serve_status(control, shared.clone()));
    let http_listener = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .map_err(|source| AgentError::Http {
            addr: config.http_listen,
            source,
        })?;
    tokio::spawn(http::serve(
        http_listener,
        responder(shared.clone(), plugins.pod_api_latency.clone()),
    ));

    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut kinds = vec![
        Kind::FelixNode,
        Kind::BgpPeer,
        Kind::BgpConfiguration,
        Kind::IpPool,
    ];
    if plugins.blocks.is_some() {
        kinds.push(Kind::BlockAffinity);
    }
    for kind in kinds {
        tokio::spawn(follow::follow(store.clone(), kind, tx.clone()));
    }
    drop(tx);

    let mut sigterm = signal(SignalKind::terminate()).map_err(AgentError::Signal)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(AgentError::Signal)?;
    let mut state = LoopState {
        config: &config,
        store: store.clone(),
        me,
        speaker: speaker.clone(),
        shared: shared.clone(),
        nodes: BTreeMap::new(),
        store_peers: BTreeMap::new(),
        store_bgp: BgpConfigurationSpec::default(),
        neighbors: BTreeMap::new(),
        blocks: BTreeSet::new(),
        learned: BTreeMap::new(),
        desired: DesiredRoutes::default(),
        pools: Vec::new(),
        tunnels_due: false,
        reconciled: false,
        seen: BTreeSet::new(),
        restart_sync,
        wait_blocks: plugins.blocks.is_some(),
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let resync = Duration::from_secs(config.resync_seconds.max(1));
    let mut nat = plugins
        .nat
        .take()
        .map(|sink| NatOutgoingReconciler::new(sink, resync));
    let mut last_sync = Instant::now();
    let mut last_usage: Option<Instant> = None;
    let mut routes_dirty = true;
    loop {
        tokio::select! {
            update = rx.recv() => {
                let Some(update) = update else { break };
                let changed = state.apply(update, plugins.blocks.as_deref()).await;
                routes_dirty |= changed;
                state.program_nat(nat.as_mut()).await;
            }
            change = best.recv() => {
                let Some(change) = change else { break };
                state.learn(change);
                // Drain what else is queued, to program a burst at once.
                while let Ok(change) = best.try_recv() {
                    state.learn(change);
                }
                routes_dirty = true;
            }
            _ = tick.tick() => {
                if last_sync.elapsed() >= resync {
                    routes_dirty = true;
                }
                state.program_nat(nat.as_mut()).await;
                if last_usage.is_none_or(|at| at.elapsed() >= USAGE_REFRESH) {
                    state.refresh_usage(plugins.blocks.as_deref()).await;
                    last_usage = Some(Instant::now());
                }
                if state.tunnels_due {
                    routes_dirty |= state.ensure_tunnels(plugins.blocks.as_deref()).await;
                }
                if state.refresh_status().await {
                    // Re-learned after a restart: what is stale can go now.
                    if let Some(sink) = plugins.routes.as_deref_mut() {
                        sink.keep_unlisted(false);
                    }
                    routes_dirty = true;
                }
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
        if routes_dirty && state.program(plugins.routes.as_deref_mut()).await {
            routes_dirty = false;
            last_sync = Instant::now();
        }
    }
    // No Cease: peers keep our routes through a graceful restart (the
    // kernel routes and tunnel devices stay too); the sessions close with
    // the process.
    tracing::info!(
        "stopping: BGP sessions dropped without Cease (graceful restart), \
         kernel routes, tunnel devices, NAT outgoing table and registration kept"
    );
    let _ = std::fs::remove_file(&config.control_socket);
    drop(state);
    Ok(Stopped { speaker })
}

struct LoopState<'a> {
    config: &'a AgentConfig,
    store: Arc<dyn Datastore>,
    me: FelixNode,
    speaker: Speaker,
    shared: Arc<Mutex<Shared>>,
    nodes: BTreeMap<String, FelixNode>,
    store_peers: BTreeMap<String, BgpPeerSpec>,
    store_bgp: BgpConfigurationSpec,
    neighbors: BTreeMap<IpAddr, NeighborConfig>,
    blocks: BTreeSet<IpNet>,
    learned: BTreeMap<IpNet, Vec<IpAddr>>,
    desired: DesiredRoutes,
    pools: Vec<IpPoolSpec>,
    /// The tunnel addresses need another try (IPAM or registration failed).
    tunnels_due: bool,
    reconciled: bool,
    /// Kinds heard from at least once (the plan waits for all of them).
    seen: BTreeSet<Kind>,
    /// After a graceful restart: until when stale kernel routes are kept at
    /// the latest (`None` once every peer's End-of-RIB is in).
    restart_sync: Option<Instant>,
    /// Peerings wait for the first read of the block affinities, so that
    /// our blocks are originated before any session (a restarting node's
    /// End-of-RIB must not go out without them).
    wait_blocks: bool,
}

impl LoopState<'_> {
    fn error(&self, message: String) {
        if let Ok(mut s) = self.shared.lock() {
            s.error(message);
        }
    }

    /// Applies a datastore update; true when the routes or tunnels may
    /// have to change (blocks, nodes' VTEPs, pools).
    async fn apply(&mut self, update: KindUpdate, blocks: Option<&dyn BlockSource>) -> bool {
        let (kind, objects) = match update {
            KindUpdate::Error { kind, message } => {
                self.error(format!("datastore ({kind}): {message}"));
                if let Ok(mut s) = self.shared.lock() {
                    s.status.datastore_ok = false;
                }
                return false;
            }
            KindUpdate::Snapshot { kind, objects } => (kind, objects),
        };
        if let Ok(mut s) = self.shared.lock() {
            s.status.datastore_ok = true;
        }
        self.seen.insert(kind);
        let mut bad = Vec::new();
        match kind {
            Kind::FelixNode => {
                let (nodes, b) = follow::decode_all::<FelixNode>(kind, &objects);
                for b in b {
                    self.error(b);
                }
                self.nodes = nodes;
                // Our own object may have been deleted (node removal):
                // keep peering as ourselves.
                self.nodes
                    .insert(self.config.node_name.clone(), self.me.clone());
                self.replan_when_ready().await;
                // Other nodes' VTEPs may have changed.
                return true;
            }
            Kind::IpPool => {
                let (pools, b) = follow::decode_all::<IpPoolSpec>(kind, &objects);
                for b in b {
                    self.error(b);
                }
                self.pools = pools.into_values().collect();
                self.ensure_tunnels(blocks).await;
                return true;
            }
            Kind::BgpPeer => {
                let (peers, b) = follow::decode_all::<BgpPeerSpec>(kind, &objects);
                bad = b;
                self.store_peers = peers;
            }
            Kind::BgpConfiguration => {
                let (configs, b) = follow::decode_all::<BgpConfigurationSpec>(kind, &objects);
                bad = b;
                self.store_bgp = configs
                    .get(DEFAULT_BGP_CONFIGURATION)
                    .cloned()
                    .unwrap_or_default();
            }
            Kind::BlockAffinity => {
                let changed = self.refresh_blocks(blocks).await;
                self.replan_when_ready().await;
                return changed;
            }
            _ => {}
        }
        for b in bad {
            self.error(b);
        }
        self.replan_when_ready().await;
        false
    }

    /// Re-plans the peerings once every kind they come from is read.
    async fn replan_when_ready(&mut self) {
        if self.all_seen() {
            self.replan().await;
        }
    }

    /// Takes (or gives back) the node's tunnel addresses as the pools say
    /// and registers them with the VTEP MAC; true when the registration
    /// changed. A failure is retried every second.
    async fn ensure_tunnels(&mut self, blocks: Option<&dyn BlockSource>) -> bool {
        let Some(source) = blocks else { return false };
        let name = self.config.node_name.clone();
        let mut me = self.me.clone();
        let mut failed = false;
        for kind in TunnelKind::ALL {
            match source
                .tunnel_address(&name, kind, &self.config.labels)
                .await
            {
                Ok(address) => match kind {
                    TunnelKind::Vxlan => {
                        me.ipv4_vxlan_tunnel_addr = address;
                        me.vxlan_tunnel_mac_addr =
                            address.map(|_| format_mac(crate::tunnel::vxlan::vtep_mac(&name)));
                    }
                    TunnelKind::Ipip => me.ipv4_ipip_tunnel_addr = address,
                },
                Err(e) => {
                    self.error(format!("{kind:?} tunnel address: {e}"));
                    failed = true;
                }
            }
        }
        self.tunnels_due = failed;
        if me == self.me {
            return false;
        }
        match register(&*self.store, &name, &me).await {
            Ok(()) => {
                tracing::info!(
                    vxlan = ?me.ipv4_vxlan_tunnel_addr,
                    ipip = ?me.ipv4_ipip_tunnel_addr,
                    "tunnel addresses registered"
                );
                self.me = me;
                self.nodes.insert(name, self.me.clone());
                true
            }
            Err(e) => {
                self.error(format!("registering tunnel addresses: {e}"));
                self.tunnels_due = true;
                false
            }
        }
    }

    /// Every kind the plan needs has been read once.
    fn all_seen(&self) -> bool {
        [Kind::FelixNode, Kind::BgpPeer, Kind::BgpConfiguration]
            .iter()
            .all(|k| self.seen.contains(k))
            && (!self.wait_blocks || self.seen.contains(&Kind::BlockAffinity))
    }

    async fn refresh_blocks(&mut self, blocks: Option<&dyn BlockSource>) -> bool {
        let Some(source) = blocks else { return false };
        let now = match source.affine_blocks(&self.config.node_name).await {
            Ok(b) => b,
            Err(e) => {
                self.error(format!("listing affine blocks: {e}"));
                return false;
            }
        };
        if now == self.blocks {
            return false;
        }
        for gone in self.blocks.difference(&now) {
            tracing::info!(block = %gone, "affinity released: withdrawing");
            if let Err(e) = self.speaker.withdraw(*gone).await {
                self.error(format!("withdrawing {gone}: {e}"));
            }
        }
        for new in now.difference(&self.blocks) {
            tracing::info!(block = %new, "affine block: originating");
            if let Err(e) = self.speaker.originate(*new, Vec::new()).await {
                self.error(format!("originating {new}: {e}"));
            }
        }
        self.blocks = now;
        if let Ok(mut s) = self.shared.lock() {
            s.status.blocks = self.blocks.iter().copied().collect();
        }
        true
    }

    async fn replan(&mut self) {
        let bgp = self.config.bgp.overridden_by(&self.store_bgp);
        let mut peers = self.config.bgp_peers.clone();
        peers.extend(self.store_peers.clone());
        let plan = peering::plan(&PeeringInputs {
            node_name: &self.config.node_name,
            node: &self.me,
            nodes: &self.nodes,
            bgp: &bgp,
            peers: &peers,
        });
        let mut changes = 0;
        let stale: Vec<IpAddr> = self
            .neighbors
            .iter()
            .filter(|(a, n)| plan.neighbors.get(a) != Some(n))
            .map(|(a, _)| *a)
            .collect();
        for address in stale {
            tracing::info!(peer = %address, "removing neighbour");
            if let Err(e) = self.speaker.remove_neighbor(address).await {
                self.error(format!("removing neighbour {address}: {e}"));
            }
            self.neighbors.remove(&address);
            changes += 1;
        }
        for (address, n) in &plan.neighbors {
            if self.neighbors.contains_key(address) {
                continue;
            }
            tracing::info!(peer = %address, asn = n.asn, rr_client = n.rr_client, "adding neighbour");
            match self.speaker.add_neighbor(n.clone()).await {
                Ok(()) => {
                    self.neighbors.insert(*address, n.clone());
                    changes += 1;
                }
                Err(e) => self.error(format!("adding neighbour {address}: {e}")),
            }
        }
        if let Ok(mut s) = self.shared.lock() {
            s.counters.neighbor_changes += changes;
            s.status.mesh = bgp.mesh();
            s.status.warnings = plan.warnings;
            s.status.nodes = self
                .nodes
                .iter()
                .map(|(n, v)| {
                    let mut a = v.bgp.ipv4_address.to_string();
                    if let Some(v6) = v.bgp.ipv6_address {
                        let _ = write!(a, " {v6}");
                    }
                    (n.clone(), a)
                })
                .collect();
        }
    }

    fn learn(&mut self, change: BestPathChange) {
        if change.is_withdrawal() || change.local || change.next_hops.is_empty() {
            self.learned.remove(&change.prefix);
            return;
        }
        self.learned.insert(change.prefix, change.next_hops);
    }

    /// Hands the desired state to the sink; false (nothing done) until the
    /// nodes and pools have been read: programming before that would take
    /// away routes and tunnel entries a restart should keep.
    async fn program(&mut self, sink: Option<&mut (dyn RouteSink + '_)>) -> bool {
        if !(self.seen.contains(&Kind::FelixNode) && self.seen.contains(&Kind::IpPool)) {
            return false;
        }
        let topo = Topology {
            me: &self.me,
            nodes: &self.nodes,
            pools: &self.pools,
        };
        let remote = self
            .learned
            .iter()
            .filter(|(p, _)| !self.blocks.contains(p))
            .map(|(p, hops)| (*p, forwarding::remote_route(*p, hops, &topo)))
            .collect();
        let tunnels = Tunnels {
            vxlan: self.me.vtep().map(|v| LocalVtep {
                address: v.vtep_address,
                mac: v.vtep_mac,
            }),
            vxlan_peers: forwarding::vxlan_peers(&self.config.node_name, &self.nodes),
            ipip: self.me.ipv4_ipip_tunnel_addr,
        };
        self.desired = DesiredRoutes {
            blackholes: self.blocks.clone(),
            remote,
            tunnels: Some(tunnels),
        };
        let started = Instant::now();
        let result = match sink {
            Some(sink) => Some(sink.program(&self.desired).await),
            None => None,
        };
        let elapsed = started.elapsed().as_secs_f64();
        self.reconciled = true;
        let failed = matches!(result, Some(Err(_)));
        if let Ok(mut s) = self.shared.lock() {
            s.status.routes = self.desired.remote.clone();
            s.counters.reconciles += 1;
            s.counters.reconcile_seconds = elapsed;
            match result {
                Some(Ok(n)) => s.status.routes_programmed = Some(n),
                Some(Err(e)) => {
                    s.counters.reconcile_errors += 1;
                    s.error(format!("programming routes: {e}"));
                }
                None => {}
            }
        }
        if failed {
            tracing::warn!("route reconcile failed; retried at the next change or resync");
        }
        true
    }

    /// Writes the NAT outgoing table when it is due (once the pools are
    /// read: before that a restarted agent keeps the previous table). A
    /// failure is reported, never fatal.
    async fn program_nat(&mut self, nat: Option<&mut NatOutgoingReconciler>) {
        let Some(nat) = nat else { return };
        if !self.seen.contains(&Kind::IpPool) {
            return;
        }
        let Some(result) = nat.reconcile(&self.pools, Instant::now()).await else {
            return;
        };
        if let Ok(mut s) = self.shared.lock() {
            match result {
                Ok(written) => {
                    if s.status.nat_outgoing.as_ref() != Some(&written.masquerade) {
                        tracing::info!(pools = ?written.masquerade, "NAT outgoing table written");
                    }
                    s.status.nat_outgoing = Some(written.masquerade);
                }
                Err(e) => {
                    s.status.nat_outgoing = None;
                    s.counters.nat_errors += 1;
                    s.error(format!("NAT outgoing: {e}"));
                }
            }
        }
    }

    /// Refreshes the status; true when a graceful restart's re-learning
    /// just finished (stale kernel routes may go).
    /// Reads the node's address usage per pool into the status; a failure
    /// keeps the last figures and is reported.
    async fn refresh_usage(&mut self, blocks: Option<&dyn BlockSource>) {
        let Some(source) = blocks else { return };
        match source.usage(&self.config.node_name).await {
            Ok(usage) => {
                if let Ok(mut s) = self.shared.lock() {
                    s.status.ipam_usage = usage;
                }
            }
            Err(e) => self.error(format!("reading IPAM usage: {e}")),
        }
    }

    async fn refresh_status(&mut self) -> bool {
        let speaker = self.speaker.status().await;
        let planned: Vec<_> = speaker
            .peers
            .iter()
            .filter(|p| self.neighbors.contains_key(&p.address))
            .collect();
        let established = planned.iter().all(|p| p.state == "Established");
        let ready = self.reconciled && self.all_seen() && established;
        let mut synced = false;
        if let Some(deadline) = self.restart_sync {
            let relearned = self.all_seen()
                && established
                && planned.len() == self.neighbors.len()
                && planned.iter().all(|p| p.end_of_rib);
            if relearned || Instant::now() >= deadline {
                tracing::info!(
                    relearned,
                    "graceful restart: routes re-learned; stale kernel routes are removed now"
                );
                self.restart_sync = None;
                synced = true;
            }
        }
        if let Ok(mut s) = self.shared.lock() {
            s.status.peers = speaker.peers;
            s.status.ready = ready;
        }
        synced
    }
}

async fn serve_status(listener: tokio::net::UnixListener, shared: Arc<Mutex<Shared>>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let body = shared
            .lock()
            .ok()
            .and_then(|s| serde_json::to_vec(&s.snapshot()).ok())
            .unwrap_or_default();
        tokio::spawn(async move {
            let _ = stream.write_all(&body).await;
            let _ = stream.shutdown().await;
        });
    }
}

fn responder(
    shared: Arc<Mutex<Shared>>,
    pod_api_latency: Option<Arc<crate::latency_histogram::LatencyHistogram>>,
) -> Responder {
    Arc::new(move |path| {
        let Ok(s) = shared.lock() else {
            return (503, "state poisoned\n".into());
        };
        match path {
            "/livez" => (200, "ok\n".into()),
            "/readyz" if s.status.ready => (200, "ready\n".into()),
            "/readyz" => (
                503,
                "not ready: waiting for configured BGP sessions and the first reconcile\n".into(),
            ),
            "/metrics" => {
                let mut text = http::metrics(&s.snapshot(), &s.counters);
                if let Some(h) = &pod_api_latency {
                    text.push_str(&h.render(
                        "felix_cni_request_duration_seconds",
                        "Pod API requests of the CNI plugin, from accepting the connection to the answer.",
                        "op",
                    ));
                }
                (200, text)
            }
            _ => (404, "not found\n".into()),
        }
    })
}
