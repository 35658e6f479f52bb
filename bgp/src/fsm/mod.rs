//! The BGP finite state machine of RFC 4271 §8, sans-IO.
//!
//! One [`Fsm`] per TCP connection attempt to a peer. The driver (the
//! `session` task) owns the socket and the clock: it feeds [`Event`]s with
//! the current [`Instant`], performs the returned [`Action`]s in order, and
//! calls [`Fsm::handle_timeout`] when [`Fsm::next_timeout`] is reached.
//! Nothing here reads a clock, touches a socket or panics.
//!
//! See docs/bgp-fsm.md for the transitions, the collision procedure
//! (RFC 4271 §6.8) and what differs from the RFC's text.

mod collision;
mod config;
mod event;
mod negotiate;
mod timers;

pub use collision::{resolve_collision, Survivor};
pub use config::{ConfigError, OfferedCapabilities, PeerAsn, PeerConfig};
pub use event::{Action, DownReason, Event, State};
pub use negotiate::Negotiated;

use crate::wire::error::{cease_subcode, code, open_subcode};
use crate::wire::{
    msg_type, DecodeError, Disposition, Message, Notification, Open, RouteRefresh, Update,
};
use bytes::Bytes;
use negotiate::{check_open, keepalive_interval, negotiate, negotiate_hold_time, PeerIdentity};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use timers::{Timer, Timers};

/// The "large value" the hold timer gets while waiting for the peer's OPEN
/// (RFC 4271 §8.2.2 suggests 4 minutes).
pub const OPEN_SENT_HOLD_TIME: Duration = Duration::from_secs(240);

/// FSM Error subcodes (RFC 6608 §3).
pub mod fsm_subcode {
    pub const UNSPECIFIED: u8 = 0;
    pub const UNEXPECTED_IN_OPEN_SENT: u8 = 1;
    pub const UNEXPECTED_IN_OPEN_CONFIRM: u8 = 2;
    pub const UNEXPECTED_IN_ESTABLISHED: u8 = 3;
}

/// How an event changes the ConnectRetryCounter (RFC 4271 §8.1.1).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Counter {
    Reset,
    Keep,
    Increment,
}

/// The events after mapping from [`Event`] and the timers.
#[derive(Debug)]
enum Input {
    Start {
        passive: bool,
    },
    ManualStop(Option<String>),
    AutomaticStop(u8, Bytes),
    Timer(Timer),
    TcpUp,
    TcpFails,
    Open(Open),
    /// A decode error with the SessionReset disposition (events 21, 22, 28).
    ResetError(DecodeError),
    /// A decode error that leaves the session up (RFC 7606).
    Fault(DecodeError),
    Notification(Notification),
    Keepalive,
    Update(Update),
    RouteRefresh(RouteRefresh),
    CollisionDump,
    UpdateSent,
}

impl Input {
    /// Message type code, for inputs that are received messages.
    fn message_type(&self) -> Option<u8> {
        match self {
            Input::Open(_) => Some(msg_type::OPEN),
            Input::Update(_) | Input::Fault(_) => Some(msg_type::UPDATE),
            Input::Notification(_) => Some(msg_type::NOTIFICATION),
            Input::Keepalive => Some(msg_type::KEEPALIVE),
            Input::RouteRefresh(_) => Some(msg_type::ROUTE_REFRESH),
            _ => None,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Input::Start { .. } => "start",
            Input::ManualStop(_) => "ManualStop",
            Input::AutomaticStop(..) => "AutomaticStop",
            Input::Timer(Timer::ConnectRetry) => "ConnectRetryTimer_Expires",
            Input::Timer(Timer::Hold) => "HoldTimer_Expires",
            Input::Timer(Timer::Keepalive) => "KeepaliveTimer_Expires",
            Input::Timer(Timer::DelayOpen) => "DelayOpenTimer_Expires",
            Input::Timer(Timer::IdleHold) => "IdleHoldTimer_Expires",
            Input::TcpUp => "TCP connection",
            Input::TcpFails => "TcpConnectionFails",
            Input::Open(_) => "OPEN",
            Input::ResetError(_) => "malformed message",
            Input::Fault(_) => "UPDATE",
            Input::Notification(_) => "NOTIFICATION",
            Input::Keepalive => "KEEPALIVE",
            Input::Update(_) => "UPDATE",
            Input::RouteRefresh(_) => "ROUTE-REFRESH",
            Input::CollisionDump => "OpenCollisionDump",
            Input::UpdateSent => "UpdateSent",
        }
    }
}

/// NotifMsgVerErr (event 24): the peer refused our version.
fn is_version_error(n: &Notification) -> bool {
    n.code == code::OPEN_MESSAGE && n.subcode == open_subcode::UNSUPPORTED_VERSION
}

fn cease(subcode: u8) -> Notification {
    Notification::new(code::CEASE, subcode, Bytes::new())
}

/// The RFC 4271 §8 state machine for one connection to one peer.
#[derive(Clone, Debug)]
pub struct Fsm {
    config: PeerConfig,
    local_open: Open,
    state: State,
    timers: Timers,
    connect_retry_counter: u32,
    /// The peer's OPEN once accepted (OpenConfirm, Established).
    peer: Option<(Open, PeerIdentity)>,
    /// Negotiated hold time of the current connection, seconds.
    hold_time: u16,
    negotiated: Option<Negotiated>,
    update_faults: u64,
    last_update_fault: Option<DecodeError>,
    last_down: Option<DownReason>,
    /// ConnectRetry / idle hold waits since the last Established or start:
    /// the exponent of the backoff.
    retry_attempts: u32,
    /// State of the jitter generator (SplitMix64).
    jitter_state: u64,
}

/// One step of SplitMix64: a small, well-mixed generator; jitter needs
/// spread, not unpredictability.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Fsm {
    /// A stopped FSM (Idle) for `config`.
    pub fn new(config: PeerConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let config_seed = config.jitter_seed.unwrap_or_else(|| {
            use std::hash::BuildHasher;
            std::collections::hash_map::RandomState::new().hash_one(config.local_id)
        });
        Ok(Fsm {
            local_open: config.open(),
            config,
            state: State::Idle,
            timers: Timers::default(),
            connect_retry_counter: 0,
            peer: None,
            hold_time: 0,
            negotiated: None,
            update_faults: 0,
            last_update_fault: None,
            last_down: None,
            retry_attempts: 0,
            jitter_state: config_seed,
        })
    }

    /// The next ConnectRetry / idle hold wait (RFC 4271 §10): the base
    /// time doubled per earlier attempt, capped, times a jitter factor in
    /// 0.75..=1.0.
    fn next_retry_wait(&mut self) -> Duration {
        let base = self.config.connect_retry;
        let cap = self.config.connect_retry_max;
        let doubled = base.saturating_mul(1u32 << self.retry_attempts.min(20));
        self.retry_attempts = self.retry_attempts.saturating_add(1);
        self.jittered(doubled.min(cap))
    }

    /// `period` times a fresh factor in 0.75..=1.0 when jitter is on
    /// (RFC 4271 §10: ConnectRetry and Keepalive; the speaker has no
    /// MinASOriginationInterval / MinRouteAdvertisementInterval timers).
    fn jittered(&mut self, period: Duration) -> Duration {
        if !self.config.jitter {
            return period;
        }
        // 53 random bits → a factor uniformly in [0.75, 1.0).
        let unit = (splitmix64(&mut self.jitter_state) >> 11) as f64 / (1u64 << 53) as f64;
        period.mul_f64(0.75 + 0.25 * unit)
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Idle with an automatic restart pending: a connection from the peer
    /// is taken now rather than refused (see `step`).
    pub fn accepts_peer_connection_in_idle(&self) -> bool {
        self.state == State::Idle && self.timers.idle_hold.is_some()
    }

    pub fn config(&self) -> &PeerConfig {
        &self.config
    }

    /// The OPEN this FSM sends.
    pub fn local_open(&self) -> &Open {
        &self.local_open
    }

    /// ConnectRetryCounter (RFC 4271 §8.1.1).
    pub fn connect_retry_counter(&self) -> u32 {
        self.connect_retry_counter
    }

    /// The peer's OPEN, once accepted (OpenConfirm and Established): what
    /// the session layer compares for collision detection.
    pub fn peer_open(&self) -> Option<&Open> {
        self.peer.as_ref().map(|(open, _)| open)
    }

    /// The peer's BGP Identifier, once its OPEN was accepted.
    pub fn peer_id(&self) -> Option<Ipv4Addr> {
        self.peer_open().map(|o| o.bgp_id)
    }

    /// The peer's AS, once its OPEN was accepted.
    pub fn peer_asn(&self) -> Option<u32> {
        self.peer.as_ref().map(|(_, id)| id.asn)
    }

    /// What was agreed, while Established.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    /// Non-fatal UPDATE errors (RFC 7606) received over the FSM's life.
    pub fn update_faults(&self) -> u64 {
        self.update_faults
    }

    pub fn last_update_fault(&self) -> Option<&DecodeError> {
        self.last_update_fault.as_ref()
    }

    /// Why the last connection went down.
    pub fn last_down_reason(&self) -> Option<&DownReason> {
        self.last_down.as_ref()
    }

    /// When [`Fsm::handle_timeout`] must next be called, if ever.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// Processes one event at time `now`; returns what to do, in order.
    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let input = match event {
            Event::ManualStart | Event::AutomaticStart => Input::Start { passive: false },
            Event::ManualStartPassive | Event::AutomaticStartPassive => {
                Input::Start { passive: true }
            }
            Event::ManualStop { shutdown_message } => Input::ManualStop(shutdown_message),
            Event::AutomaticStop {
                cease_subcode,
                data,
            } => Input::AutomaticStop(cease_subcode, data),
            Event::TcpConnectionAcked | Event::TcpConnectionConfirmed => Input::TcpUp,
            Event::TcpConnectionFails => Input::TcpFails,
            Event::Message(Message::Open(open)) => Input::Open(open),
            Event::Message(Message::Update(update)) => Input::Update(update),
            Event::Message(Message::Notification(n)) => Input::Notification(n),
            Event::Message(Message::Keepalive) => Input::Keepalive,
            Event::Message(Message::RouteRefresh(r)) => Input::RouteRefresh(r),
            Event::DecodeError(e) if e.disposition == Disposition::SessionReset => {
                Input::ResetError(e)
            }
            Event::DecodeError(e) => Input::Fault(e),
            Event::OpenCollisionDump => Input::CollisionDump,
            Event::UpdateSent => Input::UpdateSent,
        };
        let mut out = Vec::new();
        self.step(input, now, &mut out);
        out
    }

    /// Fires every timer due at `now` (RFC 4271 events 9–13, and the
    /// automatic restart), earliest first.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        // Each firing clears its timer and restarts none at or before
        // `now` (all periods are positive); the bound is a safety net.
        for _ in 0..16 {
            match self.timers.take_expired(now) {
                Some(timer) => self.step(Input::Timer(timer), now, &mut out),
                None => break,
            }
        }
        out
    }

    fn step(&mut self, input: Input, now: Instant, out: &mut Vec<Action>) {
        use State::*;
        match (self.state, input) {
            // ---- Idle (RFC 4271 §8.2.2) ----
            // A start event begins a new backoff; an automatic restart
            // (IdleHold) continues the current one.
            (Idle, Input::Start { passive }) => {
                self.retry_attempts = 0;
                self.start(passive, now, out)
            }
            (Idle, Input::Timer(Timer::IdleHold)) => self.start(false, now, out),
            (Idle, Input::ManualStop(_) | Input::AutomaticStop(..)) => self.timers.idle_hold = None,
            // The peer connects while our automatic restart waits out its
            // idle hold: take its connection (a passive automatic start,
            // RFC 4271 event 5) instead of refusing it. The idle hold paces
            // our own attempts; refusing the peer's would keep a peer that
            // just came up waiting for the whole backoff (up to
            // `connect_retry_max`). The backoff goes on if this fails too.
            (Idle, Input::TcpUp) if self.timers.idle_hold.is_some() => {
                self.timers.idle_hold = None;
                self.peer = None;
                self.state = Active;
                self.step(Input::TcpUp, now, out);
            }
            // Stopped, or no automatic restart: no connection is wanted.
            (Idle, Input::TcpUp) => out.push(Action::Disconnect),
            (Idle, _) => {}

            // Start events are ignored outside Idle; IdleHold only runs in
            // Idle; UPDATEs sent matter only in Established.
            (_, Input::Start { .. } | Input::Timer(Timer::IdleHold)) => {}
            (Established, Input::UpdateSent) => self.restart_keepalive(now),
            (_, Input::UpdateSent) => {}

            // ---- Connect and Active ----
            (Connect, Input::ManualStop(_)) => {
                self.teardown(None, DownReason::ManualStop, Counter::Reset, now, out)
            }
            (Active, Input::ManualStop(message)) => {
                // A connection exists only while DelayOpen runs.
                let notification = self
                    .timers
                    .delay_open
                    .map(|_| Self::manual_stop_notification(message));
                self.teardown(
                    notification,
                    DownReason::ManualStop,
                    Counter::Reset,
                    now,
                    out,
                )
            }
            (Connect, Input::Timer(Timer::ConnectRetry)) => {
                out.push(Action::Disconnect);
                self.timers.delay_open = None;
                self.timers.connect_retry = Some(now + self.next_retry_wait());
                out.push(Action::Connect);
            }
            (Active, Input::Timer(Timer::ConnectRetry)) => {
                self.timers.connect_retry = Some(now + self.next_retry_wait());
                out.push(Action::Connect);
                self.state = Connect;
            }
            (Connect | Active, Input::Timer(Timer::DelayOpen)) => {
                self.timers.connect_retry = None;
                self.send_open(now, out);
            }
            (Connect | Active, Input::TcpUp) => {
                self.timers.connect_retry = None;
                match self.config.delay_open {
                    Some(delay) => self.timers.delay_open = Some(now + delay),
                    None => self.send_open(now, out),
                }
            }
            (Connect, Input::TcpFails) if self.timers.delay_open.is_some() => {
                out.push(Action::Disconnect);
                self.timers.delay_open = None;
                self.enter_active(now);
            }
            (Connect, Input::TcpFails) => {
                self.teardown(None, DownReason::ConnectionFailed, Counter::Keep, now, out)
            }
            (Active, Input::TcpFails) => self.teardown(
                None,
                DownReason::ConnectionFailed,
                Counter::Increment,
                now,
                out,
            ),
            // Event 20: BGPOpen while DelayOpen runs.
            (Connect | Active, Input::Open(open)) if self.timers.delay_open.is_some() => {
                match check_open(&self.config, &open) {
                    Ok(peer) => {
                        self.timers.connect_retry = None;
                        self.timers.delay_open = None;
                        out.push(Action::Send(Message::Open(self.local_open.clone())));
                        self.accept_open(open, peer, now, out);
                    }
                    Err(n) => self.fail(n, now, out),
                }
            }
            (Connect | Active, Input::ResetError(e)) => {
                self.fail(Notification::from_error(&e), now, out)
            }
            (Connect | Active, Input::Notification(n)) if is_version_error(&n) => {
                let counter = if self.timers.delay_open.is_some() {
                    Counter::Keep
                } else {
                    Counter::Increment
                };
                self.teardown(None, DownReason::NotificationReceived(n), counter, now, out)
            }
            (Connect | Active, Input::AutomaticStop(subcode, _)) => self.teardown(
                None,
                DownReason::AutomaticStop(subcode),
                Counter::Increment,
                now,
                out,
            ),
            (state @ (Connect | Active), input) => {
                let reason = match input {
                    Input::Notification(n) => DownReason::NotificationReceived(n),
                    other => DownReason::UnexpectedEvent(other.name(), state),
                };
                self.teardown(None, reason, Counter::Increment, now, out)
            }

            // ---- OpenSent, OpenConfirm, Established: common events ----
            (OpenSent | OpenConfirm | Established, Input::ManualStop(message)) => {
                let n = Self::manual_stop_notification(message);
                self.teardown(Some(n), DownReason::ManualStop, Counter::Reset, now, out)
            }
            (OpenSent | OpenConfirm | Established, Input::AutomaticStop(subcode, data)) => self
                .teardown(
                    Some(Notification::new(code::CEASE, subcode, data)),
                    DownReason::AutomaticStop(subcode),
                    Counter::Increment,
                    now,
                    out,
                ),
            (OpenSent | OpenConfirm | Established, Input::Timer(Timer::Hold)) => self.teardown(
                Some(Notification::new(code::HOLD_TIMER_EXPIRED, 0, Bytes::new())),
                DownReason::HoldTimerExpired,
                Counter::Increment,
                now,
                out,
            ),
            // A second connection is tracked by the session layer with its
            // own Fsm (RFC 4271 §6.8).
            (OpenSent | OpenConfirm | Established, Input::TcpUp) => {}
            (OpenSent | OpenConfirm | Established, Input::CollisionDump) => self.teardown(
                Some(cease(cease_subcode::CONNECTION_COLLISION_RESOLUTION)),
                DownReason::CollisionResolution,
                Counter::Increment,
                now,
                out,
            ),
            (OpenSent | OpenConfirm | Established, Input::ResetError(e)) => {
                self.fail(Notification::from_error(&e), now, out)
            }
            // Never answer a NOTIFICATION with one: the peer has closed.
            (OpenSent | OpenConfirm | Established, Input::Notification(n)) => {
                let counter = if is_version_error(&n) {
                    Counter::Keep
                } else {
                    Counter::Increment
                };
                self.teardown(None, DownReason::NotificationReceived(n), counter, now, out)
            }
            (OpenConfirm | Established, Input::Timer(Timer::Keepalive)) => {
                out.push(Action::Send(Message::Keepalive));
                self.restart_keepalive(now);
            }

            // ---- OpenSent ----
            (OpenSent, Input::TcpFails) => {
                out.push(Action::Disconnect);
                self.timers.hold = None;
                self.enter_active(now);
            }
            (OpenSent, Input::Open(open)) => match check_open(&self.config, &open) {
                Ok(peer) => {
                    self.timers.delay_open = None;
                    self.timers.connect_retry = None;
                    self.accept_open(open, peer, now, out);
                }
                Err(n) => self.fail(n, now, out),
            },

            // ---- OpenConfirm ----
            (OpenConfirm, Input::TcpFails) => self.teardown(
                None,
                DownReason::ConnectionFailed,
                Counter::Increment,
                now,
                out,
            ),
            (OpenConfirm, Input::Keepalive) => self.establish(now, out),

            // ---- Established ----
            (Established, Input::TcpFails) => self.teardown(
                None,
                DownReason::ConnectionFailed,
                Counter::Increment,
                now,
                out,
            ),
            (Established, Input::Keepalive) => self.restart_hold(now),
            (Established, Input::Update(update)) => {
                self.restart_hold(now);
                if let Some(last) = update.faults.last() {
                    self.update_faults += update.faults.len() as u64;
                    self.last_update_fault = Some(last.clone());
                }
                out.push(Action::Update(update));
            }
            (Established, Input::Fault(e)) => {
                self.restart_hold(now);
                self.update_faults += 1;
                self.last_update_fault = Some(e);
            }
            (Established, Input::RouteRefresh(r)) => {
                self.restart_hold(now);
                out.push(Action::RouteRefresh(r));
            }

            // Anything else in OpenSent/OpenConfirm/Established is a Finite
            // State Machine Error (RFC 4271 §8.2.2, subcodes RFC 6608).
            (state @ (OpenSent | OpenConfirm | Established), input) => {
                let n = match input.message_type() {
                    Some(ty) => {
                        let subcode = match state {
                            OpenSent => fsm_subcode::UNEXPECTED_IN_OPEN_SENT,
                            OpenConfirm => fsm_subcode::UNEXPECTED_IN_OPEN_CONFIRM,
                            _ => fsm_subcode::UNEXPECTED_IN_ESTABLISHED,
                        };
                        Notification::new(code::FSM, subcode, vec![ty])
                    }
                    None => Notification::new(code::FSM, fsm_subcode::UNSPECIFIED, Bytes::new()),
                };
                self.fail(n, now, out)
            }
        }
    }

    fn manual_stop_notification(message: Option<String>) -> Notification {
        match message {
            Some(m) => Notification::shutdown(cease_subcode::ADMINISTRATIVE_SHUTDOWN, &m),
            None => cease(cease_subcode::ADMINISTRATIVE_SHUTDOWN),
        }
    }

    /// Start events in Idle: Connect (initiating) or Active (listening).
    fn start(&mut self, passive: bool, now: Instant, out: &mut Vec<Action>) {
        self.timers.clear();
        self.connect_retry_counter = 0;
        if passive || self.config.passive {
            self.enter_active(now);
        } else {
            self.timers.connect_retry = Some(now + self.next_retry_wait());
            out.push(Action::Connect);
            self.state = State::Connect;
        }
    }

    /// Listen for the peer; with a configured passive peer, never connect.
    fn enter_active(&mut self, now: Instant) {
        if !self.config.passive {
            self.timers.connect_retry = Some(now + self.next_retry_wait());
        } else {
            self.timers.connect_retry = None;
        }
        self.peer = None;
        self.state = State::Active;
    }

    /// Sends our OPEN and waits for the peer's with the large hold timer.
    fn send_open(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.timers.delay_open = None;
        out.push(Action::Send(Message::Open(self.local_open.clone())));
        self.timers.hold = Some(now + OPEN_SENT_HOLD_TIME);
        self.state = State::OpenSent;
    }

    /// The peer's OPEN passed the checks: KEEPALIVE, timers, OpenConfirm.
    fn accept_open(&mut self, open: Open, peer: PeerIdentity, now: Instant, out: &mut Vec<Action>) {
        self.hold_time = negotiate_hold_time(self.config.hold_time, open.hold_time);
        out.push(Action::Send(Message::Keepalive));
        self.restart_keepalive(now);
        self.timers.hold = None;
        self.restart_hold(now);
        self.peer = Some((open, peer));
        self.state = State::OpenConfirm;
    }

    fn establish(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some((open, peer)) = &self.peer else {
            // OpenConfirm always holds the peer's OPEN; if not, fail safe.
            let n = Notification::new(code::FSM, fsm_subcode::UNSPECIFIED, Bytes::new());
            return self.fail(n, now, out);
        };
        let negotiated = negotiate(
            &self.local_open,
            open,
            *peer,
            self.hold_time,
            self.config.keepalive_time,
        );
        self.restart_hold(now);
        self.retry_attempts = 0;
        self.state = State::Established;
        out.push(Action::Established(Box::new(negotiated.clone())));
        self.negotiated = Some(negotiated);
    }

    fn restart_hold(&mut self, now: Instant) {
        self.timers.hold =
            (self.hold_time > 0).then(|| now + Duration::from_secs(u64::from(self.hold_time)));
    }

    /// KeepaliveTimer (re)start, jittered: the period only shrinks, so
    /// the peer's hold timer is never put at risk.
    fn restart_keepalive(&mut self, now: Instant) {
        self.timers.keepalive = keepalive_interval(self.hold_time, self.config.keepalive_time)
            .map(|k| now + self.jittered(k));
    }

    /// Sends `notification` for an error we found, then tears down.
    fn fail(&mut self, notification: Notification, now: Instant, out: &mut Vec<Action>) {
        let reason = DownReason::NotificationSent(notification.clone());
        self.teardown(Some(notification), reason, Counter::Increment, now, out)
    }

    /// Teardown to Idle: optional NOTIFICATION, route release if
    /// Established, Disconnect, all timers stopped (RFC 4271 §8.2.2).
    fn teardown(
        &mut self,
        notification: Option<Notification>,
        reason: DownReason,
        counter: Counter,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if let Some(n) = notification {
            out.push(Action::Send(Message::Notification(n)));
        }
        if self.state == State::Established {
            out.push(Action::SessionDown {
                reason: reason.clone(),
            });
        }
        out.push(Action::Disconnect);
        self.timers.clear();
        self.peer = None;
        self.negotiated = None;
        self.hold_time = 0;
        match counter {
            Counter::Reset => self.connect_retry_counter = 0,
            Counter::Keep => {}
            Counter::Increment => {
                self.connect_retry_counter = self.connect_retry_counter.saturating_add(1)
            }
        }
        let stopped = matches!(
            reason,
            DownReason::ManualStop | DownReason::AutomaticStop(_)
        );
        if self.config.automatic_restart && !stopped {
            self.timers.idle_hold = Some(now + self.next_retry_wait());
        }
        self.last_down = Some(reason);
        self.state = State::Idle;
    }
}
