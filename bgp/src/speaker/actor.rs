//! The speaker's actor task: owns the [`Rib`], the neighbours' sessions and
//! their [`UpdatePacker`]s; everything else talks to it through channels.

use super::{
    BestPathChange, Command, ListenRange, NeighborConfig, PathView, PeerStatus, RouteView,
    SpeakerConfig, SpeakerError, SpeakerStatus, BATCH_INTERVAL, CONNECT_RETRY, CONNECT_RETRY_MAX,
    STALE_PATH_TIME, UPDATE_BACKLOG,
};
use crate::fsm::{DownReason, Negotiated, PeerAsn, PeerConfig};
use crate::rib::hash::PrefixHashMap;
use crate::rib::pack::{AttrSet, UpdatePacker};
use crate::rib::{
    family_of, AdjRibOutChanges, Changes, PathAttributes, PeerId, PeerInfo, PeerPolicy, PrefixList,
    Rib, RibConfig, RibError, Route, RouteSource,
};
use crate::session::{
    Listener, Session, SessionConfig, SessionEvent, SessionHandle, UpdateBacklog,
};
use crate::wire::error::cease_subcode;
use crate::wire::{
    AsPath, Family, GracefulRestart, GracefulRestartFamily, Message, Origin, RouteRefresh,
    RouteRefreshSubtype, SegmentType, Update,
};
use bytes::Bytes;
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument, Span};

mod deferral;
mod dynamic;
mod refresh;
mod writer;

use writer::{Outgoing, PackerOp, WriterInput};

/// Binds and starts the listener (if configured) and spawns the actor.
/// Returns the listener's bound address.
pub(super) fn spawn(
    config: SpeakerConfig,
    commands: mpsc::UnboundedReceiver<Command>,
) -> Result<Option<SocketAddr>, SpeakerError> {
    let listener = match config.listen {
        Some(address) => {
            let mut listener = Listener::bind(address)
                .map_err(|source| SpeakerError::Listen { address, source })?;
            listener
                .start()
                .map_err(|source| SpeakerError::Listen { address, source })?;
            Some(listener)
        }
        None => None,
    };
    let listen = listener.as_ref().map(Listener::local_addr);
    let mut rib_config = RibConfig::new(config.asn, config.router_id);
    rib_config.cluster_id = config.cluster_id;
    rib_config.max_paths = config.max_paths.max(1);
    let (events_tx, events) = mpsc::unbounded_channel();
    let (unknown_tx, unknown) = mpsc::unbounded_channel();
    let config_copy = config.clone();
    let span = tracing::info_span!("bgp_speaker", asn = config.asn, router_id = %config.router_id);
    let mut rib = Rib::new(rib_config);
    // An empty RIB: nothing to re-evaluate.
    drop(rib.set_resolver(Box::new(super::next_hop::ForwardableNextHop)));
    // Best-path changes only while someone subscribes.
    rib.report_best_paths(false);
    let actor = Actor {
        rib,
        config,
        listen,
        listener,
        peers: BTreeMap::new(),
        by_id: HashMap::new(),
        subscribers: Vec::new(),
        commands,
        events,
        events_tx,
        next_generation: 0,
        flush_at: None,
        started: Instant::now(),
        ranges: Vec::new(),
        unknown,
        unknown_tx,
        deferral: deferral::Deferral::at_start(&config_copy),
    };
    tokio::spawn(actor.run().instrument(span));
    Ok(listen)
}

/// At most this many session events are handled in a row before the
/// actor looks at commands and timers again.
const EVENT_BATCH: usize = 256;

/// A session event tagged with the neighbour and the session instance it
/// came from (events of a removed neighbour's session are ignored).
struct PeerEvent {
    address: IpAddr,
    generation: u64,
    /// `None`: the session task has ended.
    event: Option<SessionEvent>,
}

/// The running session of a neighbour and the tasks around it.
struct SessionParts {
    handle: Arc<SessionHandle>,
    /// Inputs of the writer task (which owns the packer).
    outbox: mpsc::UnboundedSender<Outgoing>,
    writer: JoinHandle<()>,
}

/// What exists while the session is Established.
struct UpState {
    negotiated: Box<Negotiated>,
    /// Changes went to the writer's packer since the last flush.
    dirty: bool,
    /// Packer operations not handed to the writer yet: they go in one
    /// message per batch of events ([`Actor::hand_over`]), not one per
    /// UPDATE, so a full table wakes the writer a few thousand times
    /// instead of once per UPDATE.
    ops: Vec<PackerOp>,
    since: Instant,
    /// Families the peer has sent End-of-RIB for on this session.
    end_of_rib: BTreeSet<Family>,
    /// Families between the peer's BoRR and EoRR (RFC 7313), with the
    /// time their stale paths go if no EoRR arrives.
    refreshing: refresh::Refreshes,
}

/// Paths kept stale across the neighbour's graceful restart (RFC 4724 §4.2).
struct StaleState {
    /// Families still waiting for End-of-RIB.
    families: Vec<Family>,
    /// Restart timer (session still down) or stale-path timer (session
    /// back, End-of-RIB outstanding).
    deadline: Instant,
}

struct Peer {
    config: NeighborConfig,
    id: PeerId,
    generation: u64,
    /// `None` once stopped (maximum prefixes): the neighbour stays
    /// configured but idle until removed and added again.
    session: Option<SessionParts>,
    /// Bumped whenever the session comes up or goes down; batches packed
    /// for an older epoch are not sent.
    epoch: Arc<AtomicU64>,
    /// Routes the writer's packer could not send (for the status).
    rejected: Arc<AtomicUsize>,
    /// Flow control with the session: UPDATEs it read and we have not
    /// processed yet.
    backlog: Arc<UpdateBacklog>,
    up: Option<UpState>,
    last_error: Option<String>,
    stale: Option<StaleState>,
    /// Created for a connection from a listen range; removed when the
    /// session ends.
    dynamic: bool,
    span: Span,
}

struct Actor {
    config: SpeakerConfig,
    listen: Option<SocketAddr>,
    listener: Option<Listener>,
    rib: Rib,
    peers: BTreeMap<IpAddr, Peer>,
    by_id: HashMap<PeerId, IpAddr>,
    subscribers: Vec<mpsc::UnboundedSender<BestPathChange>>,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedReceiver<PeerEvent>,
    events_tx: mpsc::UnboundedSender<PeerEvent>,
    next_generation: u64,
    /// When the pending Adj-RIB-Out changes are packed and sent.
    flush_at: Option<Instant>,
    /// When the speaker started: a graceful restart's Restart State is
    /// announced only within the restart time after it (RFC 4724 §4.1).
    started: Instant,
    /// Listen ranges of dynamic neighbours.
    ranges: Vec<ListenRange>,
    /// Connections the listener has no neighbour for.
    unknown: mpsc::UnboundedReceiver<(tokio::net::TcpStream, IpAddr)>,
    unknown_tx: crate::session::UnknownSourceSender,
    /// After a graceful restart: our UPDATEs and End-of-RIB wait for the
    /// peers' End-of-RIB (RFC 4724 §4.1).
    deferral: Option<deferral::Deferral>,
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl Actor {
    async fn run(mut self) {
        info!(listen = ?self.listen, "speaker started");
        loop {
            let stale_deadline = self
                .peers
                .values()
                .filter_map(|p| p.stale.as_ref().map(|s| s.deadline))
                .chain(self.next_refresh_deadline())
                .min();
            tokio::select! {
                command = self.commands.recv() => match command {
                    None => {
                        debug!("every handle dropped");
                        self.shutdown(None).await;
                        break;
                    }
                    Some(Command::Shutdown(message, reply)) => {
                        self.shutdown(message).await;
                        let _ = reply.send(());
                        break;
                    }
                    Some(command) => self.command(command),
                },
                Some(event) = self.events.recv() => {
                    self.session_event(event);
                    // What else is queued, without going through `select!`
                    // (and re-arming its timers) per UPDATE; bounded so
                    // commands and timers still get their turn.
                    for _ in 1..EVENT_BATCH {
                        match self.events.try_recv() {
                            Ok(event) => self.session_event(event),
                            Err(_) => break,
                        }
                    }
                }
                Some((stream, from)) = self.unknown.recv() => self.dynamic_incoming(stream, from),
                () = sleep_until(self.flush_at) => self.flush(),
                () = sleep_until(stale_deadline) => {
                    self.expire_stale();
                    self.expire_refreshes();
                }
                () = sleep_until(self.deferral.as_ref().map(|d| d.deadline)) => {
                    self.end_deferral("selection deferral timer expired");
                }
            }
            self.hand_over();
        }
        info!("speaker stopped");
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::AddNeighbor(neighbor, reply) => {
                let _ = reply.send(self.add_neighbor(*neighbor));
            }
            Command::RemoveNeighbor(address, reply) => self.remove_neighbor(address, reply),
            Command::AddListenRange(range, reply) => {
                let _ = reply.send(self.add_listen_range(*range));
            }
            Command::RefreshNeighbor(address, reply) => {
                let _ = reply.send(self.refresh(address));
            }
            Command::RemoveListenRange(prefix, reply) => {
                let _ = reply.send(self.remove_listen_range(prefix));
            }
            Command::Originate(prefix, communities, reply) => {
                let _ = reply.send(self.originate(prefix, communities));
            }
            Command::Withdraw(prefix, reply) => {
                let changes = self.rib.withdraw_local(prefix);
                self.apply_changes(changes);
                let _ = reply.send(Ok(()));
            }
            Command::Subscribe(tx) => {
                let snapshot: Vec<BestPathChange> = self
                    .rib
                    .loc_rib()
                    .map(|(prefix, paths)| best_path_change(prefix, paths.to_vec()))
                    .collect();
                if snapshot.into_iter().all(|c| tx.send(c).is_ok()) {
                    self.subscribers.push(tx);
                    self.rib.report_best_paths(true);
                }
            }
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Routes(prefix, reply) => {
                let _ = reply.send(self.routes(prefix));
            }
            // Handled by `run`.
            Command::Shutdown(_, reply) => {
                let _ = reply.send(());
            }
        }
    }

    // ---- neighbours ----

    fn add_neighbor(&mut self, n: NeighborConfig) -> Result<(), SpeakerError> {
        self.start_neighbor(n, false)
    }

    /// The FSM configuration of neighbour `n`, or why it is refused (AS 0,
    /// timers the FSM refuses, TTL/GTSM values). The address itself is
    /// checked by the caller.
    fn peer_config(&self, n: &NeighborConfig) -> Result<PeerConfig, String> {
        let address = n.address;
        if n.asn == 0 && !n.any_asn {
            return Err("AS 0 is reserved (RFC 7607)".into());
        }
        if n.local_address
            .is_some_and(|l| l.is_ipv4() != address.is_ipv4())
        {
            return Err("local address is of another family".into());
        }
        let peer_asn = if n.any_asn {
            PeerAsn::Any
        } else {
            PeerAsn::Exact(n.asn)
        };
        let mut peer_config = PeerConfig::new(self.config.asn, self.config.router_id, peer_asn);
        peer_config.hold_time = n.hold_time.unwrap_or(self.config.hold_time);
        peer_config.keepalive_time = n.keepalive_time;
        peer_config.connect_retry = CONNECT_RETRY;
        peer_config.connect_retry_max = CONNECT_RETRY_MAX;
        peer_config.passive = n.passive;
        peer_config.validate().map_err(|e| e.to_string())?;
        match (n.ttl, n.gtsm_hops) {
            (Some(_), Some(_)) => Err("ttl and gtsm_hops are exclusive".into()),
            (Some(0), _) => Err("TTL 0".into()),
            (_, Some(h)) if h == 0 || h == 255 => Err("GTSM hops must be 1..=254".into()),
            _ => Ok(peer_config),
        }
    }

    /// Adds a neighbour and starts its session; a `dynamic` one serves a
    /// single connection (see [`SessionConfig::single_connection`]).
    fn start_neighbor(&mut self, n: NeighborConfig, dynamic: bool) -> Result<(), SpeakerError> {
        let address = n.address;
        if self.peers.contains_key(&address) {
            return Err(SpeakerError::DuplicateNeighbor(address));
        }
        if address.is_unspecified() || address.is_multicast() {
            return Err(SpeakerError::NeighborConfig {
                address,
                reason: "not a unicast address".into(),
            });
        }
        let mut peer_config =
            self.peer_config(&n)
                .map_err(|reason| SpeakerError::NeighborConfig {
                    address,
                    reason: reason.to_string(),
                })?;
        let span = tracing::info_span!("bgp_peer", peer = %address, asn = n.asn);
        let caps = &mut peer_config.capabilities;
        caps.families = self.config.families.clone();
        caps.route_refresh = true;
        caps.enhanced_route_refresh = true;
        // RFC 4724 §4.1: after a restart with forwarding kept (felix leaves
        // its kernel routes in place), the OPEN says so: R while the restart
        // is under way, F for every family, so peers keep our routes as
        // stale until our End-of-RIB instead of flushing them.
        let recovering = self.config.restarting;
        let restart_bit = |restart_time: u16| {
            recovering && self.started.elapsed() < Duration::from_secs(u64::from(restart_time))
        };
        caps.graceful_restart =
            self.config
                .graceful_restart_time
                .map(|restart_time| GracefulRestart {
                    restarting: restart_bit(restart_time),
                    notification: false,
                    restart_time: restart_time.min(4095),
                    families: self
                        .config
                        .families
                        .iter()
                        .map(|&family| GracefulRestartFamily {
                            family,
                            forwarding_preserved: recovering,
                        })
                        .collect(),
                });
        let mut session_config = SessionConfig::new(peer_config, SocketAddr::new(address, n.port));
        session_config.local = n.local_address.map(|a| SocketAddr::new(a, 0));
        session_config.md5_key = n.password.as_ref().map(|p| p.as_bytes().to_vec());
        session_config.ttl = n.ttl;
        session_config.gtsm_hops = n.gtsm_hops;
        session_config.single_connection = dynamic;
        let backlog = Arc::new(UpdateBacklog::new(UPDATE_BACKLOG));
        session_config.update_backlog = Some(backlog.clone());

        let mut handle = Session::spawn(session_config)
            .map_err(|source| SpeakerError::Session { address, source })?;
        if let Some(listener) = &self.listener {
            if let Some(password) = &n.password {
                if let Err(e) = listener.set_md5(address, password.as_bytes()) {
                    span.in_scope(|| {
                        warn!("MD5 key not set on the listener ({e}): only outgoing connections are signed")
                    });
                }
            }
            listener.add_peer(handle.incoming_sender());
        }

        let generation = self.next_generation;
        self.next_generation += 1;
        let mut events = std::mem::replace(&mut handle.events, mpsc::unbounded_channel().1);
        let forward_to = self.events_tx.clone();
        tokio::spawn(
            async move {
                while let Some(event) = events.recv().await {
                    let tagged = PeerEvent {
                        address,
                        generation,
                        event: Some(event),
                    };
                    if forward_to.send(tagged).is_err() {
                        return;
                    }
                }
                let _ = forward_to.send(PeerEvent {
                    address,
                    generation,
                    event: None,
                });
            }
            .instrument(span.clone()),
        );
        let handle = Arc::new(handle);
        let epoch = Arc::new(AtomicU64::new(0));
        let (outbox, outbox_rx) = mpsc::unbounded_channel();
        let rejected = Arc::new(AtomicUsize::new(0));
        let writer = tokio::spawn(
            writer::write_loop(handle.clone(), epoch.clone(), rejected.clone(), outbox_rx)
                .instrument(span.clone()),
        );

        // An any-AS neighbour's AS, and so iBGP or eBGP, is set when it is
        // Established.
        let internal = !n.any_asn && n.asn == self.config.asn;
        let mut info = PeerInfo::new(address, n.asn, internal);
        info.rr_client = n.rr_client;
        info.local_ipv4 = match n.local_address {
            Some(IpAddr::V4(a)) => Some(a),
            _ => Some(self.config.router_id),
        };
        info.local_ipv6 = match n.local_address {
            Some(IpAddr::V6(a)) => Some(a),
            _ => None,
        };
        info.policy = PeerPolicy {
            import: n.import.clone().unwrap_or_else(PrefixList::permit_all),
            export: n.export.clone().unwrap_or_else(PrefixList::permit_all),
            max_prefixes: n.max_prefixes,
            next_hop_self: n.next_hop_self,
            send_med: false,
            export_communities: n.export_communities.clone(),
            export_large_communities: Vec::new(),
        };
        let id = self.rib.add_peer(info);
        self.by_id.insert(id, address);
        span.in_scope(|| {
            info!(
                passive = n.passive,
                rr_client = n.rr_client,
                dynamic,
                "neighbor added"
            )
        });
        self.peers.insert(
            address,
            Peer {
                config: n,
                id,
                generation,
                session: Some(SessionParts {
                    handle,
                    outbox,
                    writer,
                }),
                epoch,
                rejected,
                backlog,
                up: None,
                last_error: None,
                stale: None,
                dynamic,
                span,
            },
        );
        Ok(())
    }

    fn remove_neighbor(
        &mut self,
        address: IpAddr,
        reply: oneshot::Sender<Result<(), SpeakerError>>,
    ) {
        let Some(stopped) = self.forget_neighbor(
            address,
            Stop::Cease(cease_subcode::PEER_DECONFIGURED, Bytes::new()),
        ) else {
            let _ = reply.send(Err(SpeakerError::UnknownNeighbor(address)));
            return;
        };
        tokio::spawn(async move {
            if let Some(stopped) = stopped {
                let _ = stopped.await;
            }
            let _ = reply.send(Ok(()));
        });
    }

    /// Removes a neighbour: its routes are withdrawn from the others and
    /// its session is stopped `how`. `None` if there is no such neighbour;
    /// otherwise the task that ends with the session, if one was running.
    fn forget_neighbor(&mut self, address: IpAddr, how: Stop) -> Option<Option<JoinHandle<()>>> {
        let peer = self.peers.remove(&address)?;
        peer.span.in_scope(|| info!("neighbor removed"));
        if let Some(listener) = &self.listener {
            listener.remove_peer(address);
        }
        self.by_id.remove(&peer.id);
        match self.rib.remove_peer(peer.id) {
            Ok(changes) => self.apply_changes(changes),
            Err(e) => warn!(peer = %address, "removing from the RIB: {e}"),
        }
        Some(peer.session.map(|s| stop_session(s, how)))
    }

    /// Sends the neighbour a ROUTE-REFRESH request per family (RFC 2918 §3),
    /// through its writer, after what is already queued.
    fn refresh(&mut self, address: IpAddr) -> Result<(), SpeakerError> {
        let Some(peer) = self.peers.get(&address) else {
            return Err(SpeakerError::UnknownNeighbor(address));
        };
        let refused = |reason: &str| SpeakerError::Refresh {
            address,
            reason: reason.to_string(),
        };
        let (Some(up), Some(session)) = (&peer.up, &peer.session) else {
            return Err(refused("the session is not Established"));
        };
        if !up.negotiated.route_refresh {
            return Err(refused("the peer did not offer Route Refresh"));
        }
        let requests = up
            .negotiated
            .families
            .iter()
            .map(|&f| Message::RouteRefresh(RouteRefresh::new(f, RouteRefreshSubtype::Request)))
            .collect();
        peer.span
            .in_scope(|| info!(families = ?up.negotiated.families, "asking for a route refresh"));
        let epoch = peer.epoch.load(Ordering::SeqCst);
        session
            .outbox
            .send((epoch, WriterInput::Messages(requests)))
            .map_err(|_| refused("the session has ended"))
    }

    async fn shutdown(&mut self, message: Option<String>) {
        info!(?message, "shutting down");
        let stopping: Vec<JoinHandle<()>> = std::mem::take(&mut self.peers)
            .into_values()
            .filter_map(|p| p.session)
            .map(|s| stop_session(s, Stop::Shutdown(message.clone())))
            .collect();
        for s in stopping {
            let _ = s.await;
        }
        self.subscribers.clear();
        self.listener = None;
    }

    // ---- local routes ----

    fn originate(
        &mut self,
        prefix: IpNet,
        mut communities: Vec<crate::wire::Community>,
    ) -> Result<(), SpeakerError> {
        let family = family_of(&prefix);
        if !self.config.families.contains(&family) {
            return Err(SpeakerError::FamilyNotConfigured { prefix, family });
        }
        communities.sort_unstable();
        communities.dedup();
        let attrs = PathAttributes {
            communities,
            ..PathAttributes::default()
        };
        let changes = self.rib.originate(prefix, attrs);
        self.apply_changes(changes);
        Ok(())
    }

    // ---- session events ----

    fn session_event(&mut self, event: PeerEvent) {
        let Some(peer) = self.peers.get_mut(&event.address) else {
            return;
        };
        if peer.generation != event.generation {
            return;
        }
        let Some(session_event) = event.event else {
            if peer.dynamic {
                self.dynamic_ended(event.address);
            }
            return;
        };
        match session_event {
            SessionEvent::Established(n) => self.established(event.address, n),
            SessionEvent::Update(u) => {
                let backlog = peer.backlog.clone();
                self.update(event.address, u);
                backlog.processed();
            }
            SessionEvent::RouteRefresh(r) => {
                let Some(up) = peer.up.as_mut() else {
                    return;
                };
                match r.subtype {
                    RouteRefreshSubtype::Request if up.negotiated.families.contains(&r.family) => {
                        peer.span
                            .in_scope(|| info!(family = %r.family, "route refresh: re-sending"));
                        // RFC 2918 §4: the whole Adj-RIB-Out of the family
                        // again (RFC 7313 §4: between BoRR and EoRR).
                        let mut ops = Vec::new();
                        if up.negotiated.enhanced_route_refresh {
                            ops.push(PackerOp::BracketRefresh(r.family));
                        }
                        let announce = self
                            .rib
                            .adj_rib_out(peer.id)
                            .into_iter()
                            .filter(|o| family_of(&o.nlri.prefix) == r.family)
                            .collect();
                        let out = AdjRibOutChanges {
                            announce,
                            withdraw: Vec::new(),
                        };
                        to_ops(out, &peer.span, &mut PrefixHashMap::default(), &mut ops);
                        send_ops(peer, ops);
                        self.schedule_flush();
                    }
                    subtype @ (RouteRefreshSubtype::BeginningOfRefresh
                    | RouteRefreshSubtype::EndOfRefresh) => {
                        self.refresh_marker(event.address, r.family, subtype)
                    }
                    // RFC 7313 §5: an unknown subtype MUST be ignored and
                    // SHOULD be logged as an error.
                    RouteRefreshSubtype::Other(subtype) => peer.span.in_scope(|| {
                        warn!(family = %r.family, subtype, "route refresh of unknown subtype ignored")
                    }),
                    RouteRefreshSubtype::Request => peer.span.in_scope(|| {
                        debug!(family = %r.family, "route refresh request for a family not negotiated ignored")
                    }),
                }
            }
            SessionEvent::Down(reason) => self.down(event.address, reason),
        }
    }

    fn established(&mut self, address: IpAddr, negotiated: Box<Negotiated>) {
        let Some(peer) = self.peers.get_mut(&address) else {
            return;
        };
        peer.epoch.fetch_add(1, Ordering::SeqCst);
        if let Some(stale) = peer.stale.as_mut() {
            stale.deadline = Instant::now() + STALE_PATH_TIME;
        }
        let id = peer.id;
        let families = negotiated.families.clone();
        let peer_id = negotiated.peer_id;
        let (configured_local, negotiated_local) =
            (peer.config.local_address, negotiated.local_address);
        // A neighbour of an any-AS range: its OPEN told us its AS.
        let learned_asn = peer
            .config
            .any_asn
            .then_some((negotiated.peer_asn, negotiated.internal));
        if let Some((asn, _)) = learned_asn {
            peer.config.asn = asn;
        }
        peer.span
            .in_scope(|| info!(%peer_id, ?families, peer_asn = negotiated.peer_asn, "established"));
        let mut packer = UpdatePacker::new(negotiated.send);
        for family in &families {
            packer.queue_end_of_rib(*family);
        }
        if let Some(session) = &peer.session {
            let epoch = peer.epoch.load(Ordering::SeqCst);
            let _ = session.outbox.send((epoch, WriterInput::Packer(packer)));
        }
        peer.up = Some(UpState {
            negotiated,
            dirty: true,
            ops: Vec::new(),
            since: Instant::now(),
            end_of_rib: BTreeSet::new(),
            refreshing: refresh::Refreshes::default(),
        });
        // Without a configured local address, our end of this connection
        // is our next hop to the peer (not the router id, which need not be
        // an address of ours at all).
        if let (None, Some(local)) = (configured_local, negotiated_local) {
            let (v4, v6) = match local {
                IpAddr::V4(a) => (Some(a), None),
                IpAddr::V6(a) => (Some(self.config.router_id), Some(a)),
            };
            if let Err(e) = self.rib.set_peer_local_addresses(id, v4, v6) {
                warn!(peer = %address, "local address: {e}");
            }
        }
        if let Some((asn, internal)) = learned_asn {
            if let Err(e) = self.rib.set_peer_asn(id, asn, internal) {
                warn!(peer = %address, "peer AS: {e}");
            }
        }
        match self.rib.peer_up(id, peer_id, &families) {
            Ok(changes) => self.apply_changes(changes),
            Err(e) => warn!(peer = %address, "peer_up: {e}"),
        }
        self.schedule_flush();
        self.check_deferral();
    }

    fn update(&mut self, address: IpAddr, update: Update) {
        let Some(peer) = self.peers.get_mut(&address) else {
            return;
        };
        let Some(up) = peer.up.as_mut() else {
            return;
        };
        let id = peer.id;
        let end_of_rib = update.is_end_of_rib();
        if let Some(family) = end_of_rib {
            up.end_of_rib.insert(family);
            peer.span.in_scope(|| debug!(%family, "End-of-RIB"));
            if let Some(stale) = peer.stale.as_mut() {
                stale.families.retain(|f| *f != family);
                if stale.families.is_empty() {
                    peer.stale = None;
                }
            }
        }
        let params = up.negotiated.receive;
        match self.rib.apply_update(id, &update, &params) {
            Ok(changes) => self.apply_changes(changes),
            Err(RibError::MaxPrefixes(exceeded)) => {
                let notification = exceeded.notification();
                let message = format!(
                    "maximum number of prefixes reached ({} {})",
                    exceeded.limit, exceeded.family
                );
                peer.span.in_scope(|| {
                    warn!(
                        "{message}: closing the session with {}",
                        notification.describe()
                    )
                });
                peer.last_error = Some(message.clone());
                peer.up = None;
                peer.stale = None;
                peer.epoch.fetch_add(1, Ordering::SeqCst);
                if let Some(session) = peer.session.take() {
                    drop(stop_session(
                        session,
                        Stop::Cease(notification.subcode, notification.data.clone()),
                    ));
                }
                match self.rib.peer_down(id) {
                    Ok(changes) => self.apply_changes(changes),
                    Err(e) => warn!(peer = %address, "peer_down: {e}"),
                }
            }
            Err(e) => warn!(peer = %address, "UPDATE not applied: {e}"),
        }
        if end_of_rib.is_some() {
            self.check_deferral();
        }
    }

    fn down(&mut self, address: IpAddr, reason: DownReason) {
        let Some(peer) = self.peers.get_mut(&address) else {
            return;
        };
        let Some(up) = peer.up.take() else {
            return;
        };
        peer.epoch.fetch_add(1, Ordering::SeqCst);
        if reason != DownReason::ManualStop {
            peer.last_error = Some(reason.to_string());
        }
        // RFC 4724 §4.2: the session dropped without a NOTIFICATION and both
        // sides offered graceful restart → keep the peer's routes, stale.
        let preserved: Vec<Family> = match (&self.config.graceful_restart_time, &reason) {
            (Some(_), DownReason::HoldTimerExpired | DownReason::ConnectionFailed) => up
                .negotiated
                .peer_graceful_restart
                .as_ref()
                .filter(|gr| gr.restart_time > 0)
                .map(|gr| {
                    gr.families
                        .iter()
                        .map(|f| f.family)
                        .filter(|f| up.negotiated.families.contains(f))
                        .collect()
                })
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let id = peer.id;
        let result = if preserved.is_empty() {
            peer.span
                .in_scope(|| info!(%reason, "session down: routes removed"));
            peer.stale = None;
            self.rib.peer_down(id)
        } else {
            let restart_time = up
                .negotiated
                .peer_graceful_restart
                .as_ref()
                .map_or(0, |gr| gr.restart_time);
            peer.span.in_scope(|| {
                info!(%reason, restart_time, ?preserved, "session down: routes kept stale (graceful restart)")
            });
            peer.stale = Some(StaleState {
                families: preserved.clone(),
                deadline: Instant::now() + Duration::from_secs(u64::from(restart_time)),
            });
            self.rib.peer_down_graceful(id, &preserved)
        };
        match result {
            Ok(changes) => self.apply_changes(changes),
            Err(e) => warn!(peer = %address, "peer down: {e}"),
        }
    }

    /// Restart or stale-path timers that expired: the stale paths go.
    fn expire_stale(&mut self) {
        let now = Instant::now();
        let expired: Vec<IpAddr> = self
            .peers
            .iter()
            .filter(|(_, p)| p.stale.as_ref().is_some_and(|s| s.deadline <= now))
            .map(|(a, _)| *a)
            .collect();
        for address in expired {
            let Some(peer) = self.peers.get_mut(&address) else {
                continue;
            };
            let Some(stale) = peer.stale.take() else {
                continue;
            };
            let id = peer.id;
            let session_back = peer.up.is_some();
            peer.span.in_scope(|| {
                info!(
                    session_back,
                    "graceful restart timer expired: stale routes removed"
                )
            });
            if session_back {
                for family in stale.families {
                    match self.rib.sweep_stale(id, family) {
                        Ok(changes) => self.apply_changes(changes),
                        Err(e) => warn!(peer = %address, "sweep_stale: {e}"),
                    }
                }
            } else {
                match self.rib.peer_down(id) {
                    Ok(changes) => self.apply_changes(changes),
                    Err(e) => warn!(peer = %address, "peer_down: {e}"),
                }
            }
        }
    }

    // ---- changes out ----

    /// Best-path changes to the subscribers, Adj-RIB-Out changes to the
    /// peers' packers (sent at the next flush).
    fn apply_changes(&mut self, changes: Changes) {
        if !changes.best.is_empty() && !self.subscribers.is_empty() {
            let best: Vec<BestPathChange> = changes
                .best
                .into_iter()
                .map(|c| best_path_change(c.prefix, c.paths))
                .collect();
            self.subscribers
                .retain(|s| best.iter().all(|c| s.send(c.clone()).is_ok()));
            if self.subscribers.is_empty() {
                self.rib.report_best_paths(false);
            }
        }
        let mut sets: PrefixHashMap<usize, Option<Arc<AttrSet>>> = PrefixHashMap::default();
        let mut queued = false;
        for (id, out) in changes.out {
            if out.is_empty() {
                continue;
            }
            let Some(peer) = self.by_id.get(&id).and_then(|a| self.peers.get_mut(a)) else {
                continue;
            };
            let Some(up) = peer.up.as_mut() else {
                continue;
            };
            up.dirty = true;
            up.ops.reserve(out.announce.len() + out.withdraw.len());
            to_ops(out, &peer.span, &mut sets, &mut up.ops);
            queued = true;
        }
        if queued {
            self.schedule_flush();
        }
    }

    fn schedule_flush(&mut self) {
        if self.flush_at.is_none() {
            self.flush_at = Some(Instant::now() + BATCH_INTERVAL);
        }
    }

    /// Has every peer's writer pack and send the changes queued since the
    /// last flush.
    fn flush(&mut self) {
        self.flush_at = None;
        if self.deferral.is_some() {
            return;
        }
        self.hand_over();
        for peer in self.peers.values_mut() {
            let (Some(up), Some(session)) = (peer.up.as_mut(), peer.session.as_ref()) else {
                continue;
            };
            if !std::mem::take(&mut up.dirty) {
                continue;
            }
            let epoch = peer.epoch.load(Ordering::SeqCst);
            let _ = session.outbox.send((epoch, WriterInput::Flush));
        }
    }

    /// Gives each writer the packer operations collected for it since
    /// the last hand-over, in one message.
    fn hand_over(&mut self) {
        for peer in self.peers.values_mut() {
            let (Some(up), Some(session)) = (peer.up.as_mut(), peer.session.as_ref()) else {
                continue;
            };
            if up.ops.is_empty() {
                continue;
            }
            let ops = std::mem::take(&mut up.ops);
            let epoch = peer.epoch.load(Ordering::SeqCst);
            let _ = session.outbox.send((epoch, WriterInput::Changes(ops)));
        }
    }

    // ---- views ----

    fn status(&self) -> SpeakerStatus {
        let peers = self
            .peers
            .values()
            .map(|p| {
                let state = p
                    .session
                    .as_ref()
                    .map_or_else(|| "Idle".to_string(), |s| format!("{:?}", s.handle.state()));
                let accepted = self.rib.prefix_count(p.id, Family::IPV4_UNICAST)
                    + self.rib.prefix_count(p.id, Family::IPV6_UNICAST);
                PeerStatus {
                    address: p.config.address,
                    asn: p.config.asn,
                    state,
                    uptime_secs: p.up.as_ref().map(|u| u.since.elapsed().as_secs()),
                    rr_client: p.config.rr_client,
                    received: self.rib.received_count(p.id) as u64,
                    accepted: accepted as u64,
                    // What export gives the peer, less what the packer
                    // could not send (queued routes count as sent).
                    advertised: p.up.as_ref().map_or(0, |_| {
                        self.rib
                            .advertised_count(p.id)
                            .saturating_sub(p.rejected.load(Ordering::Relaxed))
                            as u64
                    }),
                    last_error: p.last_error.clone(),
                    dynamic: p.dynamic,
                    end_of_rib: p.up.as_ref().is_some_and(|u| {
                        u.negotiated
                            .families
                            .iter()
                            .all(|f| u.end_of_rib.contains(f))
                    }),
                }
            })
            .collect();
        SpeakerStatus {
            asn: self.config.asn,
            router_id: self.config.router_id,
            listen: self.listen,
            peers,
        }
    }

    fn routes(&self, within: Option<IpNet>) -> Vec<RouteView> {
        self.rib
            .loc_rib()
            .filter(|(prefix, _)| within.is_none_or(|w| w.contains(prefix)))
            .map(|(prefix, best)| {
                let mut paths: Vec<PathView> = Vec::new();
                // Best (and ECMP members) first, in the RIB's order.
                for route in best {
                    paths.push(self.path_view(route, true));
                }
                for route in self.rib.candidates(&prefix) {
                    if !best.iter().any(|b| b.same_path(route)) {
                        paths.push(self.path_view(route, false));
                    }
                }
                RouteView { prefix, paths }
            })
            .collect()
    }

    fn path_view(&self, route: &Route, best: bool) -> PathView {
        let a = &route.attrs;
        PathView {
            best,
            next_hop: a.next_hop,
            from: match route.source() {
                RouteSource::Local => None,
                RouteSource::Peer(id) => self.by_id.get(&id).copied(),
            },
            as_path: format_as_path(&a.as_path),
            origin: match a.origin {
                Origin::Igp => "IGP",
                Origin::Egp => "EGP",
                Origin::Incomplete => "incomplete",
            }
            .to_string(),
            local_pref: a.local_pref,
            med: a.med,
            communities: a.communities.iter().map(ToString::to_string).collect(),
            stale: route.stale(),
        }
    }
}

/// Stops a session once its writer has sent what was queued; the returned
/// task ends when the session task has.
/// How the speaker ends a session: which Cease goes to the peer.
enum Stop {
    /// Administrative Shutdown with an optional RFC 9003 message.
    Shutdown(Option<String>),
    /// A Cease of this subcode and data (RFC 4486).
    Cease(u8, Bytes),
}

fn stop_session(session: SessionParts, how: Stop) -> JoinHandle<()> {
    let SessionParts {
        handle,
        outbox,
        writer,
    } = session;
    drop(outbox);
    tokio::spawn(async move {
        let _ = writer.await;
        match Arc::try_unwrap(handle) {
            Ok(mut handle) => match how {
                Stop::Shutdown(message) => handle.stop(message).await,
                Stop::Cease(subcode, data) => handle.stop_with_cease(subcode, data).await,
            },
            // Unreachable: the writer held the only other reference.
            Err(_) => warn!("session handle still shared: dropped without stop"),
        }
    })
}

/// One peer's Adj-RIB-Out changes as packer operations. `sets` caches the
/// wire attribute set of each exported attribute `Arc` (shared by the peers
/// the RIB gave the same `Arc`).
fn to_ops(
    out: AdjRibOutChanges,
    span: &Span,
    sets: &mut PrefixHashMap<usize, Option<Arc<AttrSet>>>,
    ops: &mut Vec<PackerOp>,
) {
    ops.extend(out.withdraw.into_iter().map(PackerOp::Withdraw));
    // The exported attributes of the last `Announce`: the routes of one
    // UPDATE share them, and go as `AnnounceSame` (no look-up, no reference
    // count change per prefix).
    let mut run: Option<usize> = None;
    for route in out.announce {
        let key = Arc::as_ptr(&route.attrs) as usize;
        if run == Some(key) {
            ops.push(PackerOp::AnnounceSame(route.nlri));
            continue;
        }
        let set = sets
            .entry(key)
            .or_insert_with(|| attr_set(&route.attrs, span))
            .clone();
        run = set.is_some().then_some(key);
        ops.push(match set {
            Some(set) => PackerOp::Announce(route.nlri, set),
            // Cannot be sent: make sure the peer does not keep an older
            // version.
            None => PackerOp::Withdraw(route.nlri),
        });
    }
}

/// Queues packer operations for an Established peer's writer (handed over
/// after the current batch of events, sent at the next flush). They belong
/// to the current connection: `UpState` goes with it.
fn send_ops(peer: &mut Peer, mut ops: Vec<PackerOp>) {
    let Some(up) = peer.up.as_mut() else {
        return;
    };
    up.dirty = true;
    if up.ops.is_empty() {
        up.ops = ops;
    } else {
        up.ops.append(&mut ops);
    }
}

fn attr_set(attrs: &PathAttributes, span: &Span) -> Option<Arc<AttrSet>> {
    let Some(next_hop) = attrs.mp_next_hop() else {
        span.in_scope(|| warn!("exported route without next hop not sent"));
        return None;
    };
    match AttrSet::new(attrs.to_wire_attributes(), next_hop) {
        Ok(set) => Some(Arc::new(set)),
        Err(e) => {
            span.in_scope(|| warn!("exported attributes refused by the packer: {e}"));
            None
        }
    }
}

fn best_path_change(prefix: IpNet, paths: Vec<Route>) -> BestPathChange {
    let local = paths
        .first()
        .is_some_and(|r| r.source() == RouteSource::Local);
    let mut next_hops: Vec<IpAddr> = Vec::new();
    if !local {
        for hop in paths.iter().filter_map(|r| r.attrs.next_hop) {
            if !next_hops.contains(&hop) {
                next_hops.push(hop);
            }
        }
    }
    BestPathChange {
        prefix,
        next_hops,
        local,
        paths,
    }
}

/// "65001 65002 {65003 65004}": sequences plain, sets in braces,
/// confederation segments in parentheses.
fn format_as_path(path: &AsPath) -> String {
    path.segments
        .iter()
        .map(|s| {
            let asns: Vec<String> = s.asns.iter().map(u32::to_string).collect();
            let asns = asns.join(" ");
            match s.kind {
                SegmentType::Sequence => asns,
                SegmentType::Set => format!("{{{asns}}}"),
                SegmentType::ConfedSequence => format!("({asns})"),
                SegmentType::ConfedSet => format!("({{{asns}}})"),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
