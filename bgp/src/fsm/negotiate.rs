//! Checking the peer's OPEN (RFC 4271 §6.2, RFC 6793, RFC 6286, RFC 5492)
//! and what the two OPENs agree on.

use super::config::{PeerAsn, PeerConfig};
use crate::wire::error::{code, open_subcode};
use crate::wire::{
    cap_code, Capability, Family, GracefulRestart, Notification, Open, SessionParams, AS_TRANS,
};
use bytes::Bytes;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// What both OPENs agreed on: handed to the driver when the session reaches
/// Established.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// min(ours, theirs) in seconds; 0: no hold timer, no keepalives
    /// (RFC 4271 §4.2).
    pub hold_time: u16,
    /// One third of the hold time, or the configured keepalive time if
    /// shorter (at least 1 s); `None` when the hold time is 0.
    pub keepalive_interval: Option<Duration>,
    /// The peer's AS: its 4-octet capability value if sent, else My AS.
    pub peer_asn: u32,
    pub peer_id: Ipv4Addr,
    /// The peer is in our AS.
    pub internal: bool,
    /// Context to decode the peer's messages in.
    pub receive: SessionParams,
    /// Context to encode our messages in.
    pub send: SessionParams,
    /// Families both sides support (RFC 4760 §8; an OPEN without any
    /// Multiprotocol capability means IPv4 unicast only).
    pub families: Vec<Family>,
    /// Both sides advertised Route Refresh (RFC 2918): each may ask the other.
    pub route_refresh: bool,
    /// Both sides advertised Enhanced Route Refresh (RFC 7313).
    pub enhanced_route_refresh: bool,
    /// The peer's Graceful Restart capability, if it sent one (RFC 4724).
    pub peer_graceful_restart: Option<GracefulRestart>,
    pub local_open: Open,
    pub remote_open: Open,
    /// Our end of the TCP connection. The FSM knows no sockets: it leaves
    /// this `None`, and the session layer fills it in before reporting
    /// Established (the speaker's next hop when none is configured).
    pub local_address: Option<IpAddr>,
}

/// Who the peer turned out to be, once its OPEN passed [`check_open`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PeerIdentity {
    pub asn: u32,
    pub internal: bool,
}

fn open_error(subcode: u8, data: impl Into<Bytes>) -> Notification {
    Notification::new(code::OPEN_MESSAGE, subcode, data)
}

/// Validates the peer's OPEN against our configuration; on failure returns
/// the NOTIFICATION to send (RFC 4271 §6.2).
pub(crate) fn check_open(config: &PeerConfig, open: &Open) -> Result<PeerIdentity, Notification> {
    if open.version != 4 {
        // Data: the largest version we support, 2 octets.
        return Err(open_error(open_subcode::UNSUPPORTED_VERSION, vec![0u8, 4]));
    }
    let my_as_field = Bytes::copy_from_slice(&open.my_as.to_be_bytes());
    let asn = match open.four_octet_as() {
        Some(asn) => asn,
        None => {
            if !config.allow_two_octet_peer {
                // RFC 5492 §5: data lists the capability we require.
                let mut data = [cap_code::FOUR_OCTET_AS, 4, 0, 0, 0, 0];
                data[2..].copy_from_slice(&config.local_asn.to_be_bytes());
                return Err(open_error(
                    open_subcode::UNSUPPORTED_CAPABILITY,
                    data.to_vec(),
                ));
            }
            // RFC 6793 §4.2: AS_TRANS is never a real AS; a 2-octet peer
            // sending it is misconfigured.
            if open.my_as == AS_TRANS {
                return Err(open_error(open_subcode::BAD_PEER_AS, my_as_field));
            }
            u32::from(open.my_as)
        }
    };
    let acceptable = asn != 0
        && match config.peer_asn {
            PeerAsn::Exact(expected) => asn == expected,
            PeerAsn::Any => true,
        };
    if !acceptable {
        return Err(open_error(open_subcode::BAD_PEER_AS, my_as_field));
    }
    if open.hold_time == 1 || open.hold_time == 2 {
        return Err(open_error(
            open_subcode::UNACCEPTABLE_HOLD_TIME,
            Bytes::new(),
        ));
    }
    let internal = asn == config.local_asn;
    // RFC 6286 §2.2: non-zero; equal to ours only between different ASes.
    if open.bgp_id.is_unspecified() || (internal && open.bgp_id == config.local_id) {
        return Err(open_error(open_subcode::BAD_BGP_IDENTIFIER, Bytes::new()));
    }
    Ok(PeerIdentity { asn, internal })
}

/// min(ours, theirs), with 0 winning (RFC 4271 §4.2).
pub(crate) fn negotiate_hold_time(local: u16, remote: u16) -> u16 {
    local.min(remote)
}

/// RFC 4271 §10: one third of the negotiated hold time, or the configured
/// KeepaliveTime if that is shorter (a peer that negotiates a shorter hold
/// time must not be left without keepalives); whole seconds, at least 1.
pub(crate) fn keepalive_interval(hold_time: u16, configured: Option<u16>) -> Option<Duration> {
    (hold_time > 0).then(|| {
        let third = hold_time / 3;
        let secs = configured.map_or(third, |k| k.min(third)).max(1);
        Duration::from_secs(u64::from(secs))
    })
}

fn families(open: &Open) -> BTreeSet<Family> {
    let mut set: BTreeSet<Family> = open.families().collect();
    if set.is_empty() {
        set.insert(Family::IPV4_UNICAST);
    }
    set
}

fn has(open: &Open, wanted: fn(&Capability) -> bool) -> bool {
    open.capabilities.iter().any(wanted)
}

/// Everything agreed once both OPENs are known.
pub(crate) fn negotiate(
    local_open: &Open,
    remote_open: &Open,
    peer: PeerIdentity,
    hold_time: u16,
    keepalive_time: Option<u16>,
) -> Negotiated {
    let both =
        |wanted: fn(&Capability) -> bool| has(local_open, wanted) && has(remote_open, wanted);
    Negotiated {
        hold_time,
        keepalive_interval: keepalive_interval(hold_time, keepalive_time),
        peer_asn: peer.asn,
        peer_id: remote_open.bgp_id,
        internal: peer.internal,
        receive: SessionParams::negotiate_receive(local_open, remote_open),
        send: SessionParams::negotiate_send(local_open, remote_open),
        families: families(local_open)
            .intersection(&families(remote_open))
            .copied()
            .collect(),
        route_refresh: both(|c| matches!(c, Capability::RouteRefresh)),
        enhanced_route_refresh: both(|c| matches!(c, Capability::EnhancedRouteRefresh)),
        peer_graceful_restart: remote_open.graceful_restart().cloned(),
        local_open: local_open.clone(),
        remote_open: remote_open.clone(),
        local_address: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_and_keepalive() {
        assert_eq!(negotiate_hold_time(90, 30), 30);
        assert_eq!(negotiate_hold_time(0, 30), 0);
        assert_eq!(keepalive_interval(90, None), Some(Duration::from_secs(30)));
        assert_eq!(keepalive_interval(3, None), Some(Duration::from_secs(1)));
        assert_eq!(keepalive_interval(4, None), Some(Duration::from_secs(1)));
        assert_eq!(keepalive_interval(0, None), None);
        // A configured keepalive time applies when shorter than a third
        // of the negotiated hold time, never when longer.
        assert_eq!(
            keepalive_interval(90, Some(10)),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            keepalive_interval(9, Some(10)),
            Some(Duration::from_secs(3))
        );
        assert_eq!(keepalive_interval(0, Some(10)), None);
    }
}
