//! Per-peer configuration the FSM runs with (RFC 4271 §8.1.1 session
//! attributes, plus the capabilities felix offers).

use crate::wire::{AddPathDirection, Capability, Family, GracefulRestart, Open};
use std::net::Ipv4Addr;
use std::time::Duration;

/// Which AS the peer must be in (RFC 4271 §6.2 "Bad Peer AS").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerAsn {
    /// The peer's OPEN must announce exactly this AS.
    Exact(u32),
    /// Any AS is accepted (dynamic neighbours, e.g. route-reflector clients
    /// matched by address range); the negotiated AS decides iBGP vs eBGP.
    Any,
}

/// Capabilities we advertise in our OPEN (RFC 5492). The 4-octet AS
/// capability (RFC 6793) is always sent: [`Open::new`] adds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OfferedCapabilities {
    /// Multiprotocol families (RFC 4760). Empty: no MP capability is sent,
    /// which means IPv4 unicast only.
    pub families: Vec<Family>,
    /// RFC 2918.
    pub route_refresh: bool,
    /// RFC 7313.
    pub enhanced_route_refresh: bool,
    /// RFC 4724.
    pub graceful_restart: Option<GracefulRestart>,
    /// RFC 7911, per family.
    pub add_path: Vec<(Family, AddPathDirection)>,
    /// RFC 8654.
    pub extended_message: bool,
}

impl OfferedCapabilities {
    /// The capability list for our OPEN, in a fixed order.
    pub fn to_capabilities(&self) -> Vec<Capability> {
        let mut caps: Vec<Capability> = self
            .families
            .iter()
            .map(|&family| Capability::Multiprotocol { family })
            .collect();
        if self.route_refresh {
            caps.push(Capability::RouteRefresh);
        }
        if self.enhanced_route_refresh {
            caps.push(Capability::EnhancedRouteRefresh);
        }
        if self.extended_message {
            caps.push(Capability::ExtendedMessage);
        }
        if let Some(gr) = &self.graceful_restart {
            caps.push(Capability::GracefulRestart(gr.clone()));
        }
        if !self.add_path.is_empty() {
            caps.push(Capability::AddPath {
                entries: self.add_path.clone(),
            });
        }
        caps
    }
}

/// Everything the FSM needs to know about one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    /// Our AS; 4-octet values go out as AS_TRANS plus the capability.
    pub local_asn: u32,
    /// Our BGP Identifier (RFC 6286: any non-zero value).
    pub local_id: Ipv4Addr,
    pub peer_asn: PeerAsn,
    /// Hold time we propose, in seconds: 0 (no keepalives) or at least 3
    /// (RFC 4271 §4.2).
    pub hold_time: u16,
    /// KeepaliveTime (RFC 4271 §10): `None` is one third of the negotiated
    /// hold time; a value applies when shorter than that third.
    pub keepalive_time: Option<u16>,
    /// ConnectRetryTime (RFC 4271 §10 suggests 120 s). Also the idle hold
    /// time before an automatic restart. The first wait; each further
    /// attempt without reaching Established doubles it, up to
    /// `connect_retry_max`.
    pub connect_retry: Duration,
    /// The cap of the exponential backoff of `connect_retry`.
    pub connect_retry_max: Duration,
    /// Multiply each ConnectRetry / idle hold wait and each KeepaliveTimer
    /// period by a random factor in 0.75..=1.0, drawn anew every time the
    /// timer starts (RFC 4271 §10 jitter), so that peers restarted together
    /// do not retry or send keepalives in lockstep.
    pub jitter: bool,
    /// Seed of the jitter's generator; `None`: a random one. Tests fix it,
    /// which makes the FSM deterministic again.
    pub jitter_seed: Option<u64>,
    /// Never initiate a TCP connection: wait in Active for the peer to
    /// connect (PassiveTcpEstablishment, but without the RFC's eventual
    /// outgoing attempt; see docs/bgp-fsm.md).
    pub passive: bool,
    /// DelayOpenTime (RFC 4271 §8.1.1): wait this long after the TCP
    /// connection comes up before sending our OPEN. `None`: DelayOpen off.
    pub delay_open: Option<Duration>,
    /// AllowAutomaticStart (RFC 4271 §8.1.1): after falling to Idle for any
    /// reason but a stop event, restart by itself after `connect_retry`.
    pub automatic_restart: bool,
    /// Accept a peer that does not send the 4-octet AS capability (RFC 6793
    /// §4.2); otherwise its OPEN is refused with Unsupported Capability.
    pub allow_two_octet_peer: bool,
    pub capabilities: OfferedCapabilities,
}

impl PeerConfig {
    /// A configuration with RFC 4271 §10's suggested timers (hold 90 s,
    /// ConnectRetry 120 s, no backoff beyond it; ConnectRetry and Keepalive
    /// jittered), active, no DelayOpen, automatic restart on,
    /// 2-octet peers allowed and no optional capabilities beyond 4-octet AS.
    pub fn new(local_asn: u32, local_id: Ipv4Addr, peer_asn: PeerAsn) -> Self {
        PeerConfig {
            local_asn,
            local_id,
            peer_asn,
            hold_time: 90,
            keepalive_time: None,
            connect_retry: Duration::from_secs(120),
            connect_retry_max: Duration::from_secs(120),
            jitter: true,
            jitter_seed: None,
            passive: false,
            delay_open: None,
            automatic_restart: true,
            allow_two_octet_peer: true,
            capabilities: OfferedCapabilities::default(),
        }
    }

    /// Checks the values the RFCs constrain.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.local_asn == 0 {
            return Err(ConfigError::ZeroLocalAsn);
        }
        if self.peer_asn == PeerAsn::Exact(0) {
            return Err(ConfigError::ZeroPeerAsn);
        }
        if self.local_id.is_unspecified() {
            return Err(ConfigError::ZeroBgpIdentifier);
        }
        if self.hold_time == 1 || self.hold_time == 2 {
            return Err(ConfigError::HoldTime(self.hold_time));
        }
        if let Some(k) = self.keepalive_time {
            if k == 0 || (self.hold_time > 0 && k >= self.hold_time) {
                return Err(ConfigError::KeepaliveTime {
                    keepalive: k,
                    hold: self.hold_time,
                });
            }
        }
        if self.connect_retry.is_zero() {
            return Err(ConfigError::ZeroConnectRetry);
        }
        if self.connect_retry_max < self.connect_retry {
            return Err(ConfigError::ConnectRetryMax);
        }
        if self.delay_open.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::ZeroDelayOpen);
        }
        Ok(())
    }

    /// The OPEN we send (RFC 4271 §4.2, RFC 6793 §3).
    pub fn open(&self) -> Open {
        Open::new(
            self.local_asn,
            self.hold_time,
            self.local_id,
            self.capabilities.to_capabilities(),
        )
    }
}

/// A [`PeerConfig`] the FSM cannot run with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("local AS 0 is reserved (RFC 7607)")]
    ZeroLocalAsn,
    #[error("peer AS 0 is reserved (RFC 7607)")]
    ZeroPeerAsn,
    #[error("BGP identifier 0.0.0.0 is not allowed (RFC 6286 §2.1)")]
    ZeroBgpIdentifier,
    #[error("hold time {0} s is neither 0 nor at least 3 (RFC 4271 §4.2)")]
    HoldTime(u16),
    #[error("keepalive time {keepalive} s must be positive and below the hold time ({hold} s)")]
    KeepaliveTime { keepalive: u16, hold: u16 },
    #[error("ConnectRetry time must be positive")]
    ZeroConnectRetry,
    #[error("the ConnectRetry backoff cap is below the ConnectRetry time")]
    ConnectRetryMax,
    #[error("DelayOpen time must be positive (use None to disable it)")]
    ZeroDelayOpen,
}
