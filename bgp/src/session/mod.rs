//! One tokio task per BGP peer, driving the sans-IO [`crate::fsm`] over TCP.
//!
//! The session is the only part of the BGP stack that touches sockets and
//! clocks (issue 3). [`Session::spawn`] starts the task and returns a
//! [`SessionHandle`]: the task connects to the peer (unless the peer is
//! passive), accepts connections handed over with
//! [`SessionHandle::incoming`] (from a [`Listener`] or any other acceptor),
//! frames the byte stream with [`wire::frame_len`], decodes with
//! [`wire::decode`] in the parameters negotiated for the connection, feeds
//! the FSM and performs its actions. Received UPDATEs and session changes
//! come out as [`SessionEvent`]s.
//!
//! Connection collisions (RFC 4271 §6.8) are handled with a second [`Fsm`]
//! for a connection the peer opens while ours is in OpenSent or
//! OpenConfirm; see docs/bgp-session.md.
//!
//! Malformed input never panics and is never dropped silently: the FSM
//! answers a decode error with the codec's NOTIFICATION, which is written
//! and flushed before the connection is closed (RFC 4271 §6).

mod backlog;
mod listener;
pub mod sockopt;

pub use backlog::UpdateBacklog;
pub use listener::{Listener, UnknownSourceSender};

use crate::fsm::{Action, ConfigError, DownReason, Event, Fsm, Negotiated, PeerConfig, State};
use crate::wire::{self, EncodeError, Message, RouteRefresh, SessionParams, Update};
use bytes::{Bytes, BytesMut};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

/// The well-known BGP port (RFC 4271 §8.2.1).
pub const BGP_PORT: u16 = 179;

/// How long a write may block before the connection counts as failed (a
/// peer that stops reading; RFC 9687's send hold timer in spirit).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a closed connection is drained after our FIN, so that unread
/// input does not turn the close into a RST that could discard the
/// NOTIFICATION we just sent.
const LINGER: Duration = Duration::from_secs(2);

/// Where and how to reach one peer.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// The FSM's configuration (ASes, identifiers, timers, capabilities).
    pub peer: PeerConfig,
    /// The peer's address and port (normally [`BGP_PORT`]). Incoming
    /// connections must come from this IP address.
    pub remote: SocketAddr,
    /// Local address (and port, 0 for any) outgoing connections bind to.
    pub local: Option<SocketAddr>,
    /// Give up a connection attempt after this long (the FSM retries after
    /// ConnectRetry).
    pub connect_timeout: Duration,
    /// TCP MD5 signature key (RFC 2385) for outgoing connections. For
    /// incoming ones, set it on the listening socket
    /// ([`Listener::set_md5`]).
    pub md5_key: Option<Vec<u8>>,
    /// Outgoing TTL: `Some(n)` for eBGP multihop; `None` leaves the system
    /// default. Ignored when `gtsm_hops` is set.
    pub ttl: Option<u8>,
    /// GTSM (RFC 5082): send with TTL 255 and drop segments that arrive with
    /// a TTL below 256 − hops (1 for a directly connected peer).
    pub gtsm_hops: Option<u8>,
    /// The session serves one connection: once a connection was handed
    /// over and none is left, the task ends (a dynamic neighbour of a
    /// listen range, which exists only while the peer is connected).
    pub single_connection: bool,
    /// Flow control for received UPDATEs: the session stops reading while
    /// the consumer has this many unprocessed (it calls
    /// [`UpdateBacklog::processed`] for each). `None`: read at once,
    /// however far behind the consumer is.
    pub update_backlog: Option<Arc<UpdateBacklog>>,
}

impl SessionConfig {
    /// A peer at `remote`, no local binding, 5 s connect timeout, no MD5,
    /// default TTL.
    pub fn new(peer: PeerConfig, remote: SocketAddr) -> Self {
        SessionConfig {
            peer,
            remote,
            local: None,
            connect_timeout: Duration::from_secs(5),
            md5_key: None,
            ttl: None,
            gtsm_hops: None,
            single_connection: false,
            update_backlog: None,
        }
    }
}

/// What a session reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionEvent {
    /// The session reached Established with these parameters.
    Established(Box<Negotiated>),
    /// An UPDATE from the peer (with its RFC 7606 `faults` intact).
    Update(Update),
    /// A ROUTE-REFRESH request from the peer (RFC 2918).
    RouteRefresh(RouteRefresh),
    /// The session left Established.
    Down(DownReason),
}

/// Why a request to a session failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("invalid peer configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("the session task has ended")]
    Closed,
    #[error("the session is not Established")]
    NotEstablished,
    #[error("only UPDATE and ROUTE-REFRESH can be sent by the user, not {0}")]
    NotAllowed(&'static str),
    #[error("message cannot be encoded: {0}")]
    Encode(#[from] EncodeError),
    #[error("messages encoded for other session parameters than the connection's")]
    OtherParams,
    #[error("connection failed while sending: {0}")]
    Io(#[from] io::Error),
}

enum Command {
    Incoming(TcpStream),
    Send(Vec<Message>, oneshot::Sender<Result<(), SessionError>>),
    SendEncoded(EncodedMessages, oneshot::Sender<Result<(), SessionError>>),
    Stop(StopReason),
}

/// UPDATE and ROUTE-REFRESH messages encoded back to back (e.g. by
/// `rib::pack::UpdatePacker::flush_encoded`), and the parameters they were
/// encoded under: sent only on a connection that negotiated the same.
#[derive(Clone, Debug)]
pub struct EncodedMessages {
    pub bytes: Bytes,
    pub params: SessionParams,
    /// Whether there is an UPDATE among them (which restarts the
    /// keepalive timer, RFC 4271 §4.4).
    pub updates: bool,
}

/// Why the local side ends a session, which fixes the Cease it sends.
#[derive(Clone, Debug)]
enum StopReason {
    /// RFC 4271 event 2: Cease / Administrative Shutdown, with an RFC 9003
    /// message if given.
    Manual(Option<String>),
    /// RFC 4271 event 8: a Cease of this subcode with this data, e.g.
    /// Peer De-configured, or Maximum Number of Prefixes Reached with its
    /// RFC 4486 data.
    Automatic { subcode: u8, data: Bytes },
}

/// Hands connections accepted elsewhere over to a session; cheap to clone.
#[derive(Clone, Debug)]
pub struct IncomingSender {
    peer: IpAddr,
    tx: mpsc::UnboundedSender<Command>,
}

impl IncomingSender {
    /// The peer address this session accepts connections from.
    pub fn peer(&self) -> IpAddr {
        self.peer
    }

    /// Passes an accepted connection to the session (which checks its
    /// source address, RFC 4271 event 14/15).
    pub fn send(&self, stream: TcpStream) -> Result<(), SessionError> {
        self.tx
            .send(Command::Incoming(stream))
            .map_err(|_| SessionError::Closed)
    }
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Incoming(_) => f.write_str("Incoming"),
            Command::Send(m, _) => write!(f, "Send({} messages)", m.len()),
            Command::SendEncoded(m, _) => write!(f, "SendEncoded({} bytes)", m.bytes.len()),
            Command::Stop(r) => write!(f, "Stop({r:?})"),
        }
    }
}

/// The user's side of a running session.
#[derive(Debug)]
pub struct SessionHandle {
    commands: mpsc::UnboundedSender<Command>,
    state: watch::Receiver<State>,
    task: Option<JoinHandle<()>>,
    peer: SocketAddr,
    /// Everything the session reports, in order. Unbounded: the session
    /// never waits for the consumer (its timers must keep running).
    pub events: mpsc::UnboundedReceiver<SessionEvent>,
}

impl SessionHandle {
    /// The FSM state of the session's main connection.
    pub fn state(&self) -> State {
        *self.state.borrow()
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Waits until the state satisfies `pred` (or the task ends).
    pub async fn wait_state(
        &mut self,
        pred: impl Fn(State) -> bool,
    ) -> Result<State, SessionError> {
        self.state
            .wait_for(|s| pred(*s))
            .await
            .map(|s| *s)
            .map_err(|_| SessionError::Closed)
    }

    /// Hands an accepted connection from the peer to the session.
    pub fn incoming(&self, stream: TcpStream) -> Result<(), SessionError> {
        self.commands
            .send(Command::Incoming(stream))
            .map_err(|_| SessionError::Closed)
    }

    /// A sender for accepted connections, for a [`Listener`].
    pub fn incoming_sender(&self) -> IncomingSender {
        IncomingSender {
            peer: self.peer.ip(),
            tx: self.commands.clone(),
        }
    }

    /// Sends one UPDATE (Established only).
    pub async fn send_update(&self, update: Update) -> Result<(), SessionError> {
        self.send_messages(vec![Message::Update(update)]).await
    }

    /// Sends UPDATEs and ROUTE-REFRESHes in one write, in order
    /// (Established only). Returns once they are written to the socket.
    pub async fn send_messages(&self, messages: Vec<Message>) -> Result<(), SessionError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Send(messages, tx))
            .map_err(|_| SessionError::Closed)?;
        rx.await.map_err(|_| SessionError::Closed)?
    }

    /// Sends encoded UPDATEs and ROUTE-REFRESHes in one write (Established
    /// only, and only if the connection's send parameters are
    /// `messages.params`). Returns once they are written to the socket.
    pub async fn send_encoded(&self, messages: EncodedMessages) -> Result<(), SessionError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::SendEncoded(messages, tx))
            .map_err(|_| SessionError::Closed)?;
        rx.await.map_err(|_| SessionError::Closed)?
    }

    /// Stops the session (RFC 4271 event 2, ManualStop): a Cease /
    /// Administrative Shutdown NOTIFICATION (with an RFC 9003 message if
    /// given) on an open connection, then the task ends. Returns when it
    /// has.
    pub async fn stop(&mut self, shutdown_message: Option<String>) {
        self.stop_for(StopReason::Manual(shutdown_message)).await;
    }

    /// Stops the session with a Cease of `subcode` and `data` (RFC 4271
    /// event 8, AutomaticStop; subcodes from RFC 4486): e.g. Peer
    /// De-configured when the neighbour is removed, or Maximum Number of
    /// Prefixes Reached with AFI, SAFI and the limit. Returns when the task
    /// has ended.
    pub async fn stop_with_cease(&mut self, subcode: u8, data: Bytes) {
        self.stop_for(StopReason::Automatic { subcode, data }).await;
    }

    async fn stop_for(&mut self, reason: StopReason) {
        let _ = self.commands.send(Command::Stop(reason));
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                warn!(peer = %self.peer, "session task failed: {e}");
            }
        }
    }
}

/// Spawns sessions.
pub struct Session;

impl Session {
    /// Starts a session task on the current tokio runtime (RFC 4271 event 1,
    /// ManualStart; the FSM waits for the peer if `config.peer.passive`).
    pub fn spawn(config: SessionConfig) -> Result<SessionHandle, SessionError> {
        let fsm = Fsm::new(config.peer.clone())?;
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let (state_tx, state_rx) = watch::channel(State::Idle);
        let peer = config.remote;
        let span = tracing::info_span!("bgp_session", peer = %peer);
        let driver = Driver {
            config,
            primary: Conn::new(fsm, true),
            secondary: None,
            connecting: None,
            commands: cmd_rx,
            events: ev_tx,
            state: state_tx,
            had_connection: false,
        };
        let task = tokio::spawn(driver.run().instrument(span));
        Ok(SessionHandle {
            commands: cmd_tx,
            state: state_rx,
            task: Some(task),
            peer,
            events: ev_rx,
        })
    }
}

type ConnectFuture = Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>>;

/// One TCP connection and the FSM that runs it.
struct Conn {
    fsm: Fsm,
    stream: Option<TcpStream>,
    buf: BytesMut,
    recv: SessionParams,
    send: SessionParams,
    /// We initiated this connection (for collision resolution).
    outgoing: bool,
}

impl Conn {
    fn new(fsm: Fsm, outgoing: bool) -> Self {
        Conn {
            fsm,
            stream: None,
            buf: BytesMut::with_capacity(4096),
            recv: SessionParams::default(),
            send: SessionParams::default(),
            outgoing,
        }
    }

    /// The connection is up and in the OPEN exchange or Established.
    fn is_open(&self) -> bool {
        self.stream.is_some()
            && matches!(
                self.fsm.state(),
                State::OpenSent | State::OpenConfirm | State::Established
            )
    }

    fn attach(&mut self, stream: TcpStream, outgoing: bool) {
        self.close();
        self.stream = Some(stream);
        self.outgoing = outgoing;
    }

    /// Closes the connection: FIN now, then drain input in the background
    /// so the close does not become a RST.
    fn close(&mut self) {
        self.buf.clear();
        self.recv = SessionParams::default();
        self.send = SessionParams::default();
        if let Some(mut stream) = self.stream.take() {
            tokio::spawn(async move {
                let _ = stream.shutdown().await;
                let mut sink = [0u8; 4096];
                let _ = tokio::time::timeout(LINGER, async {
                    while let Ok(n) = stream.read(&mut sink).await {
                        if n == 0 {
                            break;
                        }
                    }
                })
                .await;
            });
        }
    }

    /// Encodes and writes `messages`, flushing. Fails on an encode error
    /// (nothing written) or an I/O error / timeout.
    async fn write(&mut self, messages: &[Message]) -> Result<(), SessionError> {
        if self.stream.is_none() {
            return Err(SessionError::NotEstablished);
        }
        let mut out = BytesMut::new();
        for m in messages {
            m.encode(&self.send, &mut out)?;
        }
        self.write_bytes(&out).await
    }

    /// Writes encoded messages, flushing. Fails on an I/O error / timeout.
    async fn write_bytes(&mut self, out: &[u8]) -> Result<(), SessionError> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(SessionError::NotEstablished);
        };
        let write = async {
            stream.write_all(out).await?;
            stream.flush().await
        };
        match tokio::time::timeout(SEND_TIMEOUT, write).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "send timed out").into()),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Which {
    Primary,
    Secondary,
}

enum Wake {
    Command(Option<Command>),
    Read(Which, io::Result<usize>),
    Connected(io::Result<TcpStream>),
    Timer,
    /// The consumer caught up with the UPDATE backlog: read again.
    Resume,
}

struct Driver {
    config: SessionConfig,
    primary: Conn,
    /// A connection the peer opened while `primary` was past Active:
    /// collision candidate (RFC 4271 §6.8).
    secondary: Option<Conn>,
    connecting: Option<ConnectFuture>,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<SessionEvent>,
    state: watch::Sender<State>,
    /// A connection was accepted at some point (see
    /// [`SessionConfig::single_connection`]).
    had_connection: bool,
}

/// An IPv4 address seen through a dual-stack socket (`::ffff:a.b.c.d`) as
/// the IPv4 address it is.
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

async fn read_some(conn: &mut Conn) -> io::Result<usize> {
    match conn.stream.as_mut() {
        Some(s) => s.read_buf(&mut conn.buf).await,
        None => std::future::pending().await,
    }
}

async fn read_some_opt(conn: &mut Option<Conn>) -> io::Result<usize> {
    match conn {
        Some(c) => read_some(c).await,
        None => std::future::pending().await,
    }
}

async fn await_connect(f: &mut Option<ConnectFuture>) -> io::Result<TcpStream> {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn backlog_drained(backlog: &Option<Arc<UpdateBacklog>>) {
    match backlog {
        Some(b) => b.wait_below_limit().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

/// The TTL options of `config` on a socket of the session, before it
/// carries any BGP message: GTSM (RFC 5082 §3: send with TTL 255, drop
/// segments that arrive with a TTL below 256 − hops), or else the eBGP
/// multihop TTL. Accepted connections get them too (the listening socket
/// is shared by all peers, so the minimum TTL is set per connection, after
/// the handshake: the SYN itself is not filtered).
pub(crate) fn set_ttl_options(config: &SessionConfig, socket: &impl AsFd) -> io::Result<()> {
    let remote = config.remote;
    if let Some(hops) = config.gtsm_hops {
        sockopt::set_ttl(socket, remote, 255)?;
        sockopt::set_min_ttl(socket, remote, 255u8.saturating_sub(hops.saturating_sub(1)))?;
    } else if let Some(ttl) = config.ttl {
        sockopt::set_ttl(socket, remote, ttl)?;
    }
    Ok(())
}

/// Opens a TCP connection to the peer with the configured source address
/// and socket options.
async fn connect(config: SessionConfig) -> io::Result<TcpStream> {
    let remote = config.remote;
    let socket = match remote {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(key) = &config.md5_key {
        sockopt::set_md5(&socket, remote, key)?;
    }
    set_ttl_options(&config, &socket)?;
    if let Some(local) = config.local {
        socket.set_reuseaddr(true)?;
        socket.bind(local)?;
    }
    let stream = tokio::time::timeout(config.connect_timeout, socket.connect(remote))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

impl Driver {
    async fn run(mut self) {
        info!("session starting");
        let actions = self.primary.fsm.handle(Event::ManualStart, now());
        self.perform(Which::Primary, actions).await;
        loop {
            self.publish_state();
            if self.single_connection_done() {
                debug!("the connection is gone: single-connection session ends");
                break;
            }
            let deadline = match (
                self.primary.fsm.next_timeout(),
                self.secondary.as_ref().and_then(|c| c.fsm.next_timeout()),
            ) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let paused = self
                .config
                .update_backlog
                .as_ref()
                .is_some_and(|b| b.is_full());
            let wake = tokio::select! {
                c = self.commands.recv() => Wake::Command(c),
                r = read_some(&mut self.primary), if !paused => Wake::Read(Which::Primary, r),
                r = read_some_opt(&mut self.secondary), if !paused => Wake::Read(Which::Secondary, r),
                () = backlog_drained(&self.config.update_backlog), if paused => Wake::Resume,
                r = await_connect(&mut self.connecting) => Wake::Connected(r),
                () = sleep_until(deadline) => Wake::Timer,
            };
            match wake {
                Wake::Command(None) => {
                    debug!("all handles dropped: stopping");
                    self.stop(StopReason::Manual(None)).await;
                    break;
                }
                Wake::Command(Some(Command::Stop(reason))) => {
                    self.stop(reason).await;
                    break;
                }
                Wake::Command(Some(Command::Incoming(stream))) => self.incoming(stream).await,
                Wake::Command(Some(Command::Send(messages, reply))) => {
                    let r = self.send_user(messages).await;
                    let _ = reply.send(r);
                }
                Wake::Command(Some(Command::SendEncoded(messages, reply))) => {
                    let r = self.send_user_encoded(messages).await;
                    let _ = reply.send(r);
                }
                Wake::Read(which, Ok(0)) => {
                    debug!("connection closed by peer");
                    self.event(which, Event::TcpConnectionFails).await;
                }
                Wake::Read(which, Ok(_)) => self.process_input(which).await,
                Wake::Read(which, Err(e)) => {
                    debug!("read failed: {e}");
                    self.event(which, Event::TcpConnectionFails).await;
                }
                Wake::Connected(r) => {
                    self.connecting = None;
                    match r {
                        Ok(stream) => {
                            debug!("connected");
                            self.primary.attach(stream, true);
                            self.event(Which::Primary, Event::TcpConnectionAcked).await;
                        }
                        Err(e) => {
                            debug!("connect failed: {e}");
                            self.event(Which::Primary, Event::TcpConnectionFails).await;
                        }
                    }
                }
                Wake::Resume => {}
                Wake::Timer => {
                    let t = now();
                    let actions = self.primary.fsm.handle_timeout(t);
                    self.perform(Which::Primary, actions).await;
                    if let Some(c) = self.secondary.as_mut() {
                        let actions = c.fsm.handle_timeout(t);
                        self.perform(Which::Secondary, actions).await;
                    }
                    self.resolve_collisions().await;
                    self.after_step();
                }
            }
        }
        self.publish_state();
        info!("session ended");
    }

    fn single_connection_done(&self) -> bool {
        self.config.single_connection
            && self.had_connection
            && self.secondary.is_none()
            && self.primary.stream.is_none()
            && self.connecting.is_none()
            && self.primary.fsm.state() != State::Established
    }

    fn publish_state(&self) {
        let s = self.primary.fsm.state();
        self.state.send_if_modified(|old| {
            let changed = *old != s;
            *old = s;
            changed
        });
    }

    fn conn(&mut self, which: &Which) -> Option<&mut Conn> {
        match which {
            Which::Primary => Some(&mut self.primary),
            Which::Secondary => self.secondary.as_mut(),
        }
    }

    async fn stop(&mut self, reason: StopReason) {
        info!(?reason, "stopping");
        self.connecting = None;
        let event = || match reason.clone() {
            StopReason::Manual(shutdown_message) => Event::ManualStop { shutdown_message },
            StopReason::Automatic { subcode, data } => Event::AutomaticStop {
                cease_subcode: subcode,
                data,
            },
        };
        let actions = self.primary.fsm.handle(event(), now());
        self.perform(Which::Primary, actions).await;
        if let Some(c) = self.secondary.as_mut() {
            let actions = c.fsm.handle(event(), now());
            self.perform(Which::Secondary, actions).await;
        }
        self.secondary = None;
        self.primary.close();
    }

    /// Feeds one event to a connection's FSM and performs the actions.
    async fn event(&mut self, which: Which, event: Event) {
        let Some(conn) = self.conn(&which) else {
            return;
        };
        let mut actions = conn.fsm.handle(event, now());
        if self.collision_loser() == Some(which) {
            // RFC 4271 §6.8 resolves on receipt of the OPEN: a connection
            // that loses by it gets the Cease instead of what the step
            // would send (its KEEPALIVE would let the peer take the
            // losing connection to Established before the Cease).
            actions = self.dump_actions(which);
        }
        self.perform(which, actions).await;
        self.resolve_collisions().await;
        self.after_step();
    }

    /// Frames and decodes everything buffered on a connection.
    async fn process_input(&mut self, which: Which) {
        loop {
            let Some(conn) = self.conn(&which) else {
                return;
            };
            if conn.stream.is_none() {
                return;
            }
            let event = match wire::frame_len(&conn.buf, &conn.recv) {
                Ok(None) => return,
                Ok(Some(len)) => {
                    let msg = conn.buf.split_to(len).freeze();
                    match wire::decode(&msg, &conn.recv) {
                        Ok(m) => Event::Message(m),
                        Err(e) => {
                            warn!("malformed message from peer: {e}");
                            Event::DecodeError(e)
                        }
                    }
                }
                Err(e) => {
                    warn!("bad message header from peer: {e}");
                    conn.buf.clear();
                    Event::DecodeError(e)
                }
            };
            self.event(which, event).await;
        }
    }

    /// Performs FSM actions for one connection, in order. A write failure
    /// becomes TcpConnectionFails once the list is done.
    async fn perform(&mut self, which: Which, actions: Vec<Action>) {
        let mut queue = std::collections::VecDeque::from(actions);
        let mut rounds = 0;
        while let Some(action) = queue.pop_front() {
            let mut failed = false;
            match action {
                Action::Connect => {
                    if matches!(which, Which::Primary) {
                        self.primary.close();
                        debug!("connecting");
                        self.connecting = Some(Box::pin(connect(self.config.clone())));
                    }
                }
                Action::Disconnect => {
                    if matches!(which, Which::Primary) {
                        self.connecting = None;
                    }
                    if let Some(c) = self.conn(&which) {
                        c.close();
                    }
                }
                Action::Send(m) => {
                    if let Some(c) = self.conn(&which) {
                        if c.stream.is_some() {
                            if let Message::Notification(n) = &m {
                                info!("sending NOTIFICATION {}", n.describe());
                            }
                            if let Err(e) = c.write(std::slice::from_ref(&m)).await {
                                debug!("send failed: {e}");
                                c.close();
                                failed = true;
                            }
                        }
                    }
                }
                Action::Established(mut n) => {
                    info!(peer_asn = n.peer_asn, peer_id = %n.peer_id, hold = n.hold_time, "established");
                    if let Some(c) = self.conn(&which) {
                        c.recv = n.receive;
                        c.send = n.send;
                        n.local_address = c
                            .stream
                            .as_ref()
                            .and_then(|s| s.local_addr().ok())
                            .map(|a| unmapped(a.ip()));
                    }
                    let _ = self.events.send(SessionEvent::Established(n));
                }
                Action::Update(u) => {
                    if let Some(backlog) = &self.config.update_backlog {
                        backlog.handed_over();
                    }
                    let _ = self.events.send(SessionEvent::Update(u));
                }
                Action::RouteRefresh(r) => {
                    let _ = self.events.send(SessionEvent::RouteRefresh(r));
                }
                Action::SessionDown { reason } => {
                    info!("session down: {reason}");
                    let _ = self.events.send(SessionEvent::Down(reason));
                }
            }
            if failed && rounds < 4 {
                rounds += 1;
                // The remaining actions refer to a connection that is gone;
                // the FSM's answer to the failure replaces them, except
                // reports that already happened.
                let Some(c) = self.conn(&which) else {
                    break;
                };
                let more = c.fsm.handle(Event::TcpConnectionFails, now());
                queue.retain(|a| {
                    matches!(
                        a,
                        Action::Established(_) | Action::Update(_) | Action::RouteRefresh(_)
                    )
                });
                queue.extend(more);
            }
        }
    }

    /// User messages: Established only, then UpdateSent for the keepalive
    /// timer.
    async fn send_user(&mut self, messages: Vec<Message>) -> Result<(), SessionError> {
        for m in &messages {
            match m {
                Message::Update(_) | Message::RouteRefresh(_) => {}
                Message::Open(_) => return Err(SessionError::NotAllowed("OPEN")),
                Message::Keepalive => return Err(SessionError::NotAllowed("KEEPALIVE")),
                Message::Notification(_) => return Err(SessionError::NotAllowed("NOTIFICATION")),
            }
        }
        if self.primary.fsm.state() != State::Established {
            return Err(SessionError::NotEstablished);
        }
        let mut out = BytesMut::new();
        for m in &messages {
            m.encode(&self.primary.send, &mut out)?;
        }
        let updates = messages.iter().any(|m| matches!(m, Message::Update(_)));
        self.write_user(&out, updates).await
    }

    /// [`Driver::send_user`] for messages encoded by the caller.
    async fn send_user_encoded(&mut self, messages: EncodedMessages) -> Result<(), SessionError> {
        if self.primary.fsm.state() != State::Established {
            return Err(SessionError::NotEstablished);
        }
        if messages.params != self.primary.send {
            return Err(SessionError::OtherParams);
        }
        self.write_user(&messages.bytes, messages.updates).await
    }

    /// Writes the user's encoded messages on the Established connection,
    /// then UpdateSent for the keepalive timer if `updates`.
    async fn write_user(&mut self, out: &[u8], updates: bool) -> Result<(), SessionError> {
        match self.primary.write_bytes(out).await {
            Ok(()) => {
                if updates {
                    self.event(Which::Primary, Event::UpdateSent).await;
                }
                Ok(())
            }
            Err(SessionError::Io(e)) => {
                self.primary.close();
                self.event(Which::Primary, Event::TcpConnectionFails).await;
                Err(SessionError::Io(e))
            }
            Err(e) => Err(e),
        }
    }

    /// A connection the peer opened (RFC 4271 events 14–17).
    async fn incoming(&mut self, stream: TcpStream) {
        let from = stream.peer_addr().ok();
        // A dual-stack listener hands IPv4 peers over as ::ffff:a.b.c.d.
        if from.map(|a| unmapped(a.ip())) != Some(self.config.remote.ip()) {
            // Event 15 (Tcp_CR_Invalid): not this peer's.
            warn!(?from, "refusing connection from an unexpected address");
            return;
        }
        if let Err(e) = set_ttl_options(&self.config, &stream) {
            warn!(?from, "refusing connection: TTL/GTSM options not set: {e}");
            return;
        }
        let _ = stream.set_nodelay(true);
        self.had_connection = true;
        // Our own connection, open or still being opened.
        let ours = self.primary.stream.is_some() || self.connecting.is_some();
        match self.primary.fsm.state() {
            State::Idle if !self.primary.fsm.accepts_peer_connection_in_idle() => {
                debug!("refusing incoming connection in Idle (stopped)");
            }
            State::Idle | State::Connect | State::Active if !ours => {
                debug!(?from, "accepting incoming connection");
                self.primary.attach(stream, false);
                self.event(Which::Primary, Event::TcpConnectionConfirmed)
                    .await;
            }
            // RFC 4271 §8: an incoming connection runs its own FSM until the
            // peer is identified; our attempt goes on beside it (dropping it
            // here, while the peer may do the same with its own, can leave
            // both speakers without a connection).
            State::Connect | State::Active | State::OpenSent | State::OpenConfirm
                if self.secondary.is_none() =>
            {
                debug!(
                    ?from,
                    "incoming connection beside ours: collision candidate"
                );
                let Ok(fsm) = Fsm::new(self.config.peer.clone()) else {
                    return;
                };
                let mut conn = Conn::new(fsm, false);
                conn.attach(stream, false);
                let actions = conn.fsm.handle(Event::ManualStartPassive, now());
                self.secondary = Some(conn);
                self.perform(Which::Secondary, actions).await;
                self.event(Which::Secondary, Event::TcpConnectionConfirmed)
                    .await;
            }
            s => {
                // Established (the new connection loses, RFC 4271 §6.8) or a
                // second candidate already exists.
                debug!(?from, state = ?s, "refusing incoming connection");
            }
        }
    }

    /// After every step: drop a dead secondary (or promote it if the main
    /// connection died), publish the state.
    fn after_step(&mut self) {
        // A candidate only ever waits for the peer (it never connects): out
        // of the OPEN exchange, its connection is gone.
        if self.secondary.as_ref().is_some_and(|c| !c.is_open()) {
            if let Some(mut c) = self.secondary.take() {
                debug!("collision candidate closed");
                c.close();
            }
        }
        let primary_gone = self.primary.fsm.state() != State::Established
            && self.primary.stream.is_none()
            && self.connecting.is_none();
        if primary_gone && self.secondary.is_some() {
            if let Some(s) = self.secondary.take() {
                debug!("main connection down: the peer's connection takes over");
                self.primary = s;
            }
        }
        self.publish_state();
    }

    /// Collision resolution between the two connections, if both exist and
    /// one has the peer's identifier. Returns the loser's actions to run.
    ///
    /// Only two open connections collide: a connection that has failed, or
    /// that is still being opened, is no rival (RFC 4271 §6.8 compares
    /// connections in OpenConfirm, and in OpenSent when the peer's
    /// identifier is known, here from the other connection's OPEN).
    fn collision_loser(&self) -> Option<Which> {
        let secondary = self.secondary.as_ref()?;
        let p = self.primary.fsm.state();
        let s = secondary.fsm.state();
        if p == State::Established {
            return Some(Which::Secondary);
        }
        if s == State::Established {
            return Some(Which::Primary);
        }
        if !self.primary.is_open() || !secondary.is_open() {
            return None;
        }
        let (peer_id, peer_asn) = if s == State::OpenConfirm {
            (secondary.fsm.peer_id()?, secondary.fsm.peer_asn()?)
        } else if p == State::OpenConfirm {
            (self.primary.fsm.peer_id()?, self.primary.fsm.peer_asn()?)
        } else {
            return None;
        };
        let cfg = &self.config.peer;
        let survivor =
            crate::fsm::resolve_collision(cfg.local_id, cfg.local_asn, peer_id, peer_asn);
        let outgoing_wins = survivor == crate::fsm::Survivor::Outgoing;
        // The loser is the connection whose direction lost.
        if self.primary.outgoing == outgoing_wins {
            Some(Which::Secondary)
        } else {
            Some(Which::Primary)
        }
    }

    /// Event 23 (OpenCollisionDump) for the losing connection: what closes
    /// it. Reports from the loser (none expected: it is never Established)
    /// would be misleading and are dropped.
    fn dump_actions(&mut self, loser: Which) -> Vec<Action> {
        let Some(conn) = self.conn(&loser) else {
            return Vec::new();
        };
        conn.fsm
            .handle(Event::OpenCollisionDump, now())
            .into_iter()
            .filter(|a| matches!(a, Action::Send(_) | Action::Disconnect))
            .collect()
    }

    async fn resolve_collisions(&mut self) {
        let Some(loser) = self.collision_loser() else {
            return;
        };
        info!(
            loser = match loser {
                Which::Primary => "existing connection",
                Which::Secondary => "new connection",
            },
            "connection collision resolved"
        );
        let actions = self.dump_actions(loser);
        self.perform(loser, actions).await;
        if let Which::Primary = loser {
            if let Some(s) = self.secondary.take() {
                self.primary = s;
            }
        } else {
            self.secondary = None;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::fsm::PeerAsn;
    use std::net::Ipv4Addr;

    fn socket(remote: SocketAddr) -> TcpSocket {
        match remote {
            SocketAddr::V4(_) => TcpSocket::new_v4().unwrap(),
            SocketAddr::V6(_) => TcpSocket::new_v6().unwrap(),
        }
    }

    /// RFC 5082 §3 on the socket, read back with getsockopt: TTL 255 out,
    /// minimum TTL 256 − hops in; eBGP multihop sets only the TTL.
    #[tokio::test]
    async fn gtsm_and_multihop_socket_options() {
        for remote in ["127.0.0.1:179", "[::1]:179"] {
            let remote: SocketAddr = remote.parse().unwrap();
            let peer = PeerConfig::new(65001, Ipv4Addr::new(10, 0, 0, 1), PeerAsn::Exact(65002));
            let mut config = SessionConfig::new(peer, remote);

            let plain = socket(remote);
            let default_ttl = sockopt::ttl(&plain, remote).unwrap();
            set_ttl_options(&config, &plain).unwrap();
            assert_eq!(sockopt::ttl(&plain, remote).unwrap(), default_ttl);
            assert_eq!(sockopt::min_ttl(&plain, remote).unwrap(), 0);

            config.gtsm_hops = Some(1);
            let direct = socket(remote);
            set_ttl_options(&config, &direct).unwrap();
            assert_eq!(sockopt::ttl(&direct, remote).unwrap(), 255, "{remote}");
            assert_eq!(sockopt::min_ttl(&direct, remote).unwrap(), 255, "{remote}");

            config.gtsm_hops = Some(3);
            let three = socket(remote);
            set_ttl_options(&config, &three).unwrap();
            assert_eq!(sockopt::min_ttl(&three, remote).unwrap(), 253, "{remote}");

            config.gtsm_hops = None;
            config.ttl = Some(2);
            let multihop = socket(remote);
            set_ttl_options(&config, &multihop).unwrap();
            assert_eq!(sockopt::ttl(&multihop, remote).unwrap(), 2, "{remote}");
            assert_eq!(sockopt::min_ttl(&multihop, remote).unwrap(), 0, "{remote}");
        }
    }
}
