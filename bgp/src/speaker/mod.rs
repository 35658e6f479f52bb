//! The public BGP speaker: one [`Rib`](crate::rib::Rib), one
//! [`Session`](crate::session::Session) and one
//! [`UpdatePacker`](crate::rib::pack::UpdatePacker) per neighbour, and a
//! [`Listener`](crate::session::Listener), tied together by one actor task
//! (see docs/bgp-speaker.md).
//!
//! [`Speaker`] is a cheap, clonable handle to that task: add and remove
//! neighbours at run time, originate and withdraw prefixes, subscribe to
//! best-path changes (what the route programmer installs in the kernel),
//! and read [`SpeakerStatus`] / [`RouteView`] snapshots for operators.
//!
//! ```no_run
//! # async fn demo() -> Result<(), bgp::speaker::SpeakerError> {
//! use bgp::speaker::{NeighborConfig, Speaker, SpeakerConfig};
//! let mut config = SpeakerConfig::new(65001, "10.0.0.1".parse().unwrap());
//! config.listen = Some("10.0.0.1:179".parse().unwrap());
//! let speaker = Speaker::start(config).await?;
//! let mut changes = speaker.subscribe();
//! speaker.add_neighbor(NeighborConfig::new("10.0.0.2".parse().unwrap(), 65002)).await?;
//! speaker.originate("10.244.1.0/26".parse().unwrap(), vec![]).await?;
//! while let Some(change) = changes.recv().await {
//!     println!("{} via {:?}", change.prefix, change.next_hops);
//! }
//! # Ok(()) }
//! ```

mod actor;
pub mod next_hop;
pub mod view;

pub use view::*;

pub use crate::fsm::PeerAsn;

use crate::rib::{PrefixList, Route};
use crate::wire::{Community, Family};
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long the speaker collects RIB changes before it packs and sends
/// them: a burst of UPDATEs (a peer's initial table, a node's pod blocks)
/// leaves in few, full UPDATE messages.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(20);

/// How many received UPDATEs of one neighbour may wait for the RIB before
/// its session stops reading ([`crate::session::UpdateBacklog`]): at most
/// 4 KB each (64 KB with extended messages), so the queue stays small while
/// a full table arrives.
pub const UPDATE_BACKLOG: usize = 256;

/// ConnectRetryTime, and the idle time before a dropped session reconnects
/// by itself (RFC 4271 §10 suggests 120 s; a node agent wants its peers
/// back sooner).
pub const CONNECT_RETRY: Duration = Duration::from_secs(5);

/// The cap of ConnectRetry's exponential backoff (5, 10, 20, 30, 30 … s,
/// each with RFC 4271 §10 jitter): a peer that stays away is not hammered,
/// one that comes back is found within half a minute.
pub const CONNECT_RETRY_MAX: Duration = Duration::from_secs(30);

/// How long paths kept across a peer's graceful restart may stay stale
/// after the session is back, waiting for its End-of-RIB (FRR's default
/// stale-path time).
pub const STALE_PATH_TIME: Duration = Duration::from_secs(360);

/// Default [`SpeakerConfig::enhanced_refresh_time`]: how long a
/// neighbour's paths marked stale by its Beginning-of-RIB-Refresh wait for
/// the End-of-RIB-Refresh before they are removed anyway (RFC 7313 §4 lets
/// an implementation bound how long it keeps stale routes and names no
/// value; the stale-path time of graceful restart).
pub const ENHANCED_REFRESH_TIME: Duration = STALE_PATH_TIME;

/// Default [`SpeakerConfig::selection_deferral_time`]: the default restart
/// time we offer, so that peers do not give up on our stale routes first.
pub const SELECTION_DEFERRAL_TIME: Duration = Duration::from_secs(120);

/// The speaker's own settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpeakerConfig {
    /// Local AS number.
    pub asn: u32,
    /// BGP identifier; also the IPv4 next hop announced to peers whose
    /// [`NeighborConfig::local_address`] is not set.
    pub router_id: Ipv4Addr,
    /// Accept connections on this address (port 0: any free port, see
    /// [`Speaker::listen_addr`]). `None`: do not listen (only active
    /// neighbours then come up).
    pub listen: Option<SocketAddr>,
    /// Route-reflector cluster id (RFC 4456 §7); the router id when `None`.
    pub cluster_id: Option<Ipv4Addr>,
    /// Hold time offered to every peer, seconds (0, or at least 3).
    pub hold_time: u16,
    /// Address families offered in the Multiprotocol capability (RFC 4760).
    pub families: Vec<Family>,
    /// Offer graceful restart (RFC 4724) with this restart time, seconds.
    pub graceful_restart_time: Option<u16>,
    /// This start is a graceful restart with forwarding state kept (RFC
    /// 4724 §4.1): the OPENs sent within the restart time carry the Restart
    /// State bit, and every family the Forwarding State bit, so peers keep
    /// our routes as stale until our End-of-RIB rather than flushing them
    /// when the session comes back. Set it when the previous instance's
    /// routes are still in the kernel (felix never flushes them on exit).
    pub restarting: bool,
    /// ECMP: how many equal best paths a [`BestPathChange`] carries (1: no
    /// multipath).
    pub max_paths: usize,
    /// With `restarting`: the longest time our UPDATEs and End-of-RIB wait
    /// for the peers' End-of-RIB (RFC 4724 §4.1 selection deferral). Keep it
    /// below the peers' stale-path time, or they flush our routes first.
    pub selection_deferral_time: Duration,
    /// How long paths marked stale by a neighbour's Beginning-of-RIB-Refresh
    /// wait for its End-of-RIB-Refresh (RFC 7313 §4);
    /// [`ENHANCED_REFRESH_TIME`] by default. Not in felix's configuration
    /// file: tests shorten it.
    pub enhanced_refresh_time: Duration,
}

impl SpeakerConfig {
    /// Not listening, no cluster id, hold time 90 s, IPv4 unicast, graceful
    /// restart offered with 120 s, no ECMP.
    pub fn new(asn: u32, router_id: Ipv4Addr) -> Self {
        SpeakerConfig {
            asn,
            router_id,
            listen: None,
            cluster_id: None,
            hold_time: 90,
            families: vec![Family::IPV4_UNICAST],
            graceful_restart_time: Some(120),
            restarting: false,
            max_paths: 1,
            selection_deferral_time: SELECTION_DEFERRAL_TIME,
            enhanced_refresh_time: ENHANCED_REFRESH_TIME,
        }
    }
}

/// One neighbour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeighborConfig {
    /// The neighbour's address; incoming connections must come from it.
    pub address: IpAddr,
    /// The neighbour's TCP port (179).
    pub port: u16,
    /// The neighbour's AS (equal to ours: iBGP).
    pub asn: u32,
    /// TCP MD5 key (RFC 2385). Applied to outgoing connections always, to
    /// incoming ones only for neighbours added before the listener started
    /// (see docs/bgp-speaker.md).
    pub password: Option<String>,
    /// The neighbour is a route-reflector client of ours (RFC 4456; iBGP).
    pub rr_client: bool,
    /// Never connect: only accept the neighbour's connection.
    pub passive: bool,
    /// Source address of our connections, and our next hop towards this
    /// neighbour (the router id when `None`, for IPv4).
    pub local_address: Option<IpAddr>,
    /// Set NEXT_HOP to ourselves on routes to this iBGP neighbour.
    pub next_hop_self: bool,
    /// Maximum prefixes accepted per family; exceeding it closes the
    /// session.
    pub max_prefixes: Option<u32>,
    /// Import filter (`None`: accept everything).
    pub import: Option<PrefixList>,
    /// Export filter (`None`: advertise everything).
    pub export: Option<PrefixList>,
    /// Communities added to every route sent to this neighbour.
    pub export_communities: Vec<Community>,
    /// Hold time proposed to this neighbour (0 or at least 3 s); `None`:
    /// the speaker's [`SpeakerConfig::hold_time`].
    pub hold_time: Option<u16>,
    /// Keepalive interval (RFC 4271 §10); `None`: a third of the
    /// negotiated hold time. Applies only when shorter than that third.
    pub keepalive_time: Option<u16>,
    /// Outgoing TTL (eBGP multihop: the number of hops to the
    /// neighbour); `None`: the system default. Exclusive with `gtsm_hops`.
    pub ttl: Option<u8>,
    /// GTSM (RFC 5082): send with TTL 255 and drop segments from the
    /// neighbour that arrive with a TTL below 256 − hops (1: directly
    /// connected). The neighbour must do the same.
    pub gtsm_hops: Option<u8>,
    /// Accept whatever AS the neighbour's OPEN names instead of `asn`
    /// (dynamic neighbours of a range with [`PeerAsn::Any`]); iBGP or eBGP
    /// follows from it. `asn` is 0 until the session is Established, then
    /// the AS the neighbour announced.
    pub any_asn: bool,
}

impl NeighborConfig {
    /// An active neighbour on port 179, no password, no policy.
    pub fn new(address: IpAddr, asn: u32) -> Self {
        NeighborConfig {
            address,
            port: crate::session::BGP_PORT,
            asn,
            password: None,
            rr_client: false,
            passive: false,
            local_address: None,
            next_hop_self: false,
            max_prefixes: None,
            import: None,
            export: None,
            export_communities: Vec::new(),
            hold_time: None,
            keepalive_time: None,
            ttl: None,
            gtsm_hops: None,
            any_asn: false,
        }
    }
}

/// A listen range (dynamic neighbours, e.g. route-reflector clients): a
/// connection from an address inside `prefix` for which no neighbour is
/// configured creates a passive neighbour from [`ListenRange::template`];
/// when its session ends, the neighbour is removed and its routes
/// withdrawn. Connections from addresses in no range are still refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenRange {
    /// Peers' source addresses.
    pub prefix: IpNet,
    /// The peers' AS: exactly this one (equal to ours: iBGP), or
    /// [`PeerAsn::Any`]: whatever each peer's OPEN says.
    pub asn: PeerAsn,
    /// The per-peer settings every neighbour of the range gets, as for a
    /// configured neighbour: `rr_client`, `next_hop_self`, `local_address`
    /// (our next hop towards the range's peers), `max_prefixes`, `import`,
    /// `export`, `export_communities`, `hold_time`, `keepalive_time`,
    /// `ttl`, `gtsm_hops`. Its `password` is the range's TCP MD5 key,
    /// installed on the listening socket with the prefix length
    /// (`TCP_MD5SIG_EXT`). Its `address`, `port`, `asn`, `any_asn` and
    /// `passive` are not used: each neighbour has the address it connected
    /// from, the range's `asn`, and is passive.
    pub template: NeighborConfig,
}

impl ListenRange {
    /// Peers in `prefix` (host bits cleared) of AS `asn`; no password, no
    /// policy, not route-reflector clients, the speaker's timers.
    pub fn new(prefix: IpNet, asn: u32) -> Self {
        let prefix = prefix.trunc();
        ListenRange {
            prefix,
            asn: PeerAsn::Exact(asn),
            template: NeighborConfig::new(prefix.network(), asn),
        }
    }

    /// The neighbour a connection from `address` gets: passive (the peer
    /// connected; we never connect back), the template's settings. Its MD5
    /// key is the range's, already on the listener.
    pub fn neighbor(&self, address: IpAddr) -> NeighborConfig {
        let (asn, any_asn) = match self.asn {
            PeerAsn::Exact(asn) => (asn, false),
            PeerAsn::Any => (0, true),
        };
        NeighborConfig {
            address,
            port: crate::session::BGP_PORT,
            asn,
            any_asn,
            passive: true,
            password: None,
            ..self.template.clone()
        }
    }
}

/// Why a speaker request failed.
#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    /// The speaker was shut down (or its task ended).
    #[error("the speaker is not running")]
    Closed,
    /// The listen address could not be bound or listened on.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    /// The speaker's configuration is not usable.
    #[error("invalid speaker configuration: {0}")]
    Config(String),
    /// A neighbour with this address is already configured.
    #[error("neighbor {0} is already configured")]
    DuplicateNeighbor(IpAddr),
    /// No neighbour with this address is configured.
    #[error("no neighbor {0}")]
    UnknownNeighbor(IpAddr),
    /// The neighbour's configuration is not usable.
    #[error("invalid configuration for neighbor {address}: {reason}")]
    NeighborConfig { address: IpAddr, reason: String },
    /// The session task could not be started.
    #[error("session for {address} failed to start: {source}")]
    Session {
        address: IpAddr,
        source: crate::session::SessionError,
    },
    /// The neighbour's session is not Established, or the neighbour did
    /// not offer Route Refresh (RFC 2918).
    #[error("cannot ask {address} for a route refresh: {reason}")]
    Refresh { address: IpAddr, reason: String },
    /// The listen range cannot be added (or removed).
    #[error("listen range {prefix}: {reason}")]
    ListenRange { prefix: IpNet, reason: String },
    /// The prefix's family is not one the speaker offers.
    #[error("{prefix}: family {family} is not configured")]
    FamilyNotConfigured { prefix: IpNet, family: Family },
}

/// A change of one prefix's best-path set, for the route programmer.
///
/// A change is sent for every prefix whose best path (or ECMP set) changed;
/// a prefix with no path left comes with empty `paths` and `next_hops`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BestPathChange {
    /// The prefix.
    pub prefix: IpNet,
    /// The next hops to forward to: those of the best path and its ECMP
    /// members, without duplicates. Empty when the prefix is unreachable or
    /// when the best path is one this speaker originates (`local`).
    pub next_hops: Vec<IpAddr>,
    /// The best path is originated by this speaker (nothing to install).
    pub local: bool,
    /// The best path first, then the other ECMP members (the RIB's view).
    pub paths: Vec<Route>,
}

impl BestPathChange {
    /// The prefix is no longer reachable: remove its route.
    pub fn is_withdrawal(&self) -> bool {
        self.paths.is_empty()
    }
}

/// A request to the actor task.
pub(crate) enum Command {
    AddNeighbor(
        Box<NeighborConfig>,
        oneshot::Sender<Result<(), SpeakerError>>,
    ),
    RemoveNeighbor(IpAddr, oneshot::Sender<Result<(), SpeakerError>>),
    AddListenRange(Box<ListenRange>, oneshot::Sender<Result<(), SpeakerError>>),
    RefreshNeighbor(IpAddr, oneshot::Sender<Result<(), SpeakerError>>),
    RemoveListenRange(IpNet, oneshot::Sender<Result<(), SpeakerError>>),
    Originate(
        IpNet,
        Vec<Community>,
        oneshot::Sender<Result<(), SpeakerError>>,
    ),
    Withdraw(IpNet, oneshot::Sender<Result<(), SpeakerError>>),
    Subscribe(mpsc::UnboundedSender<BestPathChange>),
    Status(oneshot::Sender<SpeakerStatus>),
    Routes(Option<IpNet>, oneshot::Sender<Vec<RouteView>>),
    Shutdown(Option<String>, oneshot::Sender<()>),
}

struct SpeakerInner {
    commands: mpsc::UnboundedSender<Command>,
    config: SpeakerConfig,
    listen: Option<SocketAddr>,
}

/// Handle to a running speaker; clone it freely (every clone talks to the
/// same actor task). The speaker keeps running when every handle is
/// dropped only until the last one goes: then its sessions are stopped as
/// by [`Speaker::shutdown`] without a message.
#[derive(Clone)]
pub struct Speaker {
    inner: Arc<SpeakerInner>,
}

impl std::fmt::Debug for Speaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Speaker")
            .field("asn", &self.inner.config.asn)
            .field("router_id", &self.inner.config.router_id)
            .field("listen", &self.inner.listen)
            .finish()
    }
}

impl Speaker {
    /// Starts the speaker on the current tokio runtime: binds and starts
    /// the listener (if `config.listen` is set) and spawns the actor task.
    /// Neighbours are added with [`Speaker::add_neighbor`].
    pub async fn start(config: SpeakerConfig) -> Result<Speaker, SpeakerError> {
        if config.asn == 0 {
            return Err(SpeakerError::Config("AS 0 is reserved (RFC 7607)".into()));
        }
        if config.router_id.is_unspecified() {
            return Err(SpeakerError::Config(
                "router id 0.0.0.0 is not allowed (RFC 6286)".into(),
            ));
        }
        if config.hold_time == 1 || config.hold_time == 2 {
            return Err(SpeakerError::Config(format!(
                "hold time {} s is neither 0 nor at least 3",
                config.hold_time
            )));
        }
        if config.families.is_empty() {
            return Err(SpeakerError::Config("no address family configured".into()));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let listen = actor::spawn(config.clone(), rx)?;
        Ok(Speaker {
            inner: Arc::new(SpeakerInner {
                commands: tx,
                config,
                listen,
            }),
        })
    }

    /// The address the listener is bound to (with the actual port when
    /// `listen` asked for port 0).
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.inner.listen
    }

    /// The configuration the speaker was started with.
    pub fn config(&self) -> &SpeakerConfig {
        &self.inner.config
    }

    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, SpeakerError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .commands
            .send(make(tx))
            .map_err(|_| SpeakerError::Closed)?;
        rx.await.map_err(|_| SpeakerError::Closed)
    }

    /// Configures a neighbour and starts its session (connecting unless
    /// `passive`; accepting its connections when listening).
    pub async fn add_neighbor(&self, neighbor: NeighborConfig) -> Result<(), SpeakerError> {
        self.request(|tx| Command::AddNeighbor(Box::new(neighbor), tx))
            .await?
    }

    /// Stops the neighbour's session and forgets the neighbour: its routes
    /// are withdrawn from the others. Returns once the session has ended.
    /// The neighbour is told with Cease / Peer De-configured (RFC 4486).
    pub async fn remove_neighbor(&self, address: IpAddr) -> Result<(), SpeakerError> {
        self.request(|tx| Command::RemoveNeighbor(address, tx))
            .await?
    }

    /// Asks the neighbour to send its routes again (ROUTE-REFRESH, RFC 2918,
    /// one per family of the session): a "soft reset in", e.g. after an
    /// import policy change. Returns once the requests are queued.
    pub async fn refresh(&self, address: IpAddr) -> Result<(), SpeakerError> {
        self.request(|tx| Command::RefreshNeighbor(address, tx))
            .await?
    }

    /// Accepts dynamic neighbours from `range` (see [`ListenRange`]). The
    /// speaker must be listening; ranges must not overlap exactly (the
    /// most specific range containing a peer's address applies).
    pub async fn add_listen_range(&self, range: ListenRange) -> Result<(), SpeakerError> {
        self.request(|tx| Command::AddListenRange(Box::new(range), tx))
            .await?
    }

    /// Stops accepting neighbours from the range `prefix`; its dynamic
    /// neighbours are removed as by [`Speaker::remove_neighbor`].
    pub async fn remove_listen_range(&self, prefix: IpNet) -> Result<(), SpeakerError> {
        self.request(|tx| Command::RemoveListenRange(prefix.trunc(), tx))
            .await?
    }

    /// Originates `prefix` (ORIGIN IGP, empty AS path, next hop: ourselves)
    /// with `communities`, replacing an earlier origination of it.
    pub async fn originate(
        &self,
        prefix: IpNet,
        communities: Vec<Community>,
    ) -> Result<(), SpeakerError> {
        self.request(|tx| Command::Originate(prefix, communities, tx))
            .await?
    }

    /// Stops originating `prefix` (nothing happens if it was not).
    pub async fn withdraw(&self, prefix: IpNet) -> Result<(), SpeakerError> {
        self.request(|tx| Command::Withdraw(prefix, tx)).await?
    }

    /// A stream of best-path changes. It starts with one change per prefix
    /// currently reachable (the current Loc-RIB), then every change as it
    /// happens, in order. Unbounded: the speaker never waits for, and never
    /// drops changes for, a slow consumer. Ends when the speaker stops.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<BestPathChange> {
        let (tx, rx) = mpsc::unbounded_channel();
        // A stopped speaker drops `tx`: the receiver then ends at once.
        let _ = self.inner.commands.send(Command::Subscribe(tx));
        rx
    }

    /// The speaker and every neighbour (empty peer list once stopped).
    pub async fn status(&self) -> SpeakerStatus {
        match self.request(Command::Status).await {
            Ok(s) => s,
            Err(_) => SpeakerStatus {
                asn: self.inner.config.asn,
                router_id: self.inner.config.router_id,
                listen: self.inner.listen,
                peers: Vec::new(),
            },
        }
    }

    /// Every path of every prefix in the RIB (with `Some(p)`: of `p` and the
    /// prefixes inside it), prefixes in order, best path first.
    pub async fn routes(&self, prefix: Option<IpNet>) -> Vec<RouteView> {
        self.request(|tx| Command::Routes(prefix, tx))
            .await
            .unwrap_or_default()
    }

    /// Stops every session with Cease / Administrative Shutdown (with the
    /// RFC 9003 message if given) and ends the speaker; later requests fail
    /// with [`SpeakerError::Closed`]. Returns when the sessions have ended.
    pub async fn shutdown(&self, message: Option<String>) {
        let _ = self.request(|tx| Command::Shutdown(message, tx)).await;
    }
}
