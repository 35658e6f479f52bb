//! Dynamic neighbours of listen ranges: a connection from an address with
//! no configured neighbour, inside a [`ListenRange`], creates a passive
//! neighbour from the range's template; it is removed (its routes
//! withdrawn) when its session ends.

use super::{Actor, ListenRange, SpeakerError, Stop};
use crate::wire::error::cease_subcode;
use bytes::Bytes;
use ipnet::IpNet;
use std::net::IpAddr;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

/// The most specific range containing `address`.
pub(super) fn range_for(ranges: &[ListenRange], address: IpAddr) -> Option<&ListenRange> {
    ranges
        .iter()
        .filter(|r| r.prefix.contains(&address))
        .max_by_key(|r| r.prefix.prefix_len())
}

impl Actor {
    pub(super) fn add_listen_range(&mut self, range: ListenRange) -> Result<(), SpeakerError> {
        let prefix = range.prefix;
        let invalid = |reason: &str| SpeakerError::ListenRange {
            prefix,
            reason: reason.to_string(),
        };
        // The template's values, checked once here rather than at each
        // connection (a host address of the range stands in).
        self.peer_config(&range.neighbor(range.prefix.network()))
            .map_err(|reason| invalid(&reason))?;
        if self.ranges.iter().any(|r| r.prefix == prefix) {
            return Err(invalid("already configured"));
        }
        let Some(listener) = &self.listener else {
            return Err(invalid("the speaker is not listening"));
        };
        if let Some(password) = &range.template.password {
            listener
                .set_md5_prefix(prefix, password.as_bytes())
                .map_err(|e| invalid(&format!("TCP MD5 key not set on the listener: {e}")))?;
        }
        listener.set_unknown_source(Some(self.unknown_tx.clone()));
        info!(%prefix, asn = ?range.asn, rr_client = range.template.rr_client, "listen range added");
        self.ranges.push(range);
        Ok(())
    }

    pub(super) fn remove_listen_range(&mut self, prefix: IpNet) -> Result<(), SpeakerError> {
        let Some(i) = self.ranges.iter().position(|r| r.prefix == prefix) else {
            return Err(SpeakerError::ListenRange {
                prefix,
                reason: "no such listen range".into(),
            });
        };
        let range = self.ranges.remove(i);
        if let Some(listener) = &self.listener {
            if range.template.password.is_some() {
                if let Err(e) = listener.set_md5_prefix(prefix, &[]) {
                    warn!(%prefix, "removing the range's MD5 key: {e}");
                }
            }
            if self.ranges.is_empty() {
                listener.set_unknown_source(None);
            }
        }
        // Its dynamic neighbours go, unless a remaining range covers them.
        let gone: Vec<IpAddr> = self
            .peers
            .iter()
            .filter(|(a, p)| {
                p.dynamic && prefix.contains(*a) && range_for(&self.ranges, **a).is_none()
            })
            .map(|(a, _)| *a)
            .collect();
        for address in gone {
            let cease = Stop::Cease(cease_subcode::PEER_DECONFIGURED, Bytes::new());
            drop(self.forget_neighbor(address, cease));
        }
        info!(%prefix, "listen range removed");
        Ok(())
    }

    /// A connection the listener has no neighbour for.
    pub(super) fn dynamic_incoming(&mut self, stream: TcpStream, from: IpAddr) {
        if let Some(peer) = self.peers.get(&from) {
            // Configured meanwhile: its session decides.
            if let Some(session) = &peer.session {
                let _ = session.handle.incoming(stream);
            }
            return;
        }
        let Some(range) = range_for(&self.ranges, from) else {
            debug!(%from, "connection from an address in no listen range refused");
            return;
        };
        let neighbor = range.neighbor(from);
        if let Err(e) = self.start_neighbor(neighbor, true) {
            warn!(%from, "dynamic neighbor not created: {e}");
            return;
        }
        let handed = self
            .peers
            .get(&from)
            .and_then(|p| p.session.as_ref())
            .map(|s| s.handle.incoming(stream));
        if !matches!(handed, Some(Ok(()))) {
            self.dynamic_ended(from);
        }
    }

    /// The session of a dynamic neighbour has ended: the neighbour goes.
    pub(super) fn dynamic_ended(&mut self, address: IpAddr) {
        if self.peers.get(&address).is_some_and(|p| p.dynamic) {
            let how = Stop::Shutdown(None);
            drop(self.forget_neighbor(address, how));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn most_specific_range_applies() {
        let wide = ListenRange::new("10.0.0.0/8".parse().unwrap(), 65000);
        let mut narrow = ListenRange::new("10.1.0.0/16".parse().unwrap(), 65000);
        narrow.template.rr_client = true;
        let ranges = vec![wide, narrow];
        let pick = |a: &str| range_for(&ranges, a.parse().unwrap()).map(|r| r.prefix.to_string());
        assert_eq!(pick("10.1.2.3").as_deref(), Some("10.1.0.0/16"));
        assert_eq!(pick("10.2.0.1").as_deref(), Some("10.0.0.0/8"));
        assert_eq!(pick("192.0.2.1"), None);
        assert_eq!(pick("2001:db8::1"), None);
    }

    #[test]
    fn template_carries_the_session_values_and_any_asn() {
        let mut r = ListenRange::new("10.0.0.0/24".parse().unwrap(), 65000);
        r.asn = crate::fsm::PeerAsn::Any;
        r.template.hold_time = Some(6);
        r.template.keepalive_time = Some(2);
        r.template.gtsm_hops = Some(1);
        r.template.export_communities = vec![crate::wire::Community(7)];
        let n = r.neighbor("10.0.0.9".parse().unwrap());
        assert!(n.any_asn && n.passive);
        assert_eq!(n.asn, 0);
        assert_eq!((n.hold_time, n.keepalive_time), (Some(6), Some(2)));
        assert_eq!((n.ttl, n.gtsm_hops), (None, Some(1)));
        assert_eq!(n.export_communities, r.template.export_communities);
        r.asn = crate::fsm::PeerAsn::Exact(65001);
        let n = r.neighbor("10.0.0.9".parse().unwrap());
        assert!(!n.any_asn);
        assert_eq!(n.asn, 65001);
    }

    #[test]
    fn template_makes_a_passive_neighbor() {
        let mut r = ListenRange::new("10.0.0.7/24".parse().unwrap(), 65000);
        r.template.rr_client = true;
        r.template.password = Some("secret".into());
        assert_eq!(r.prefix.to_string(), "10.0.0.0/24");
        let n = r.neighbor("10.0.0.9".parse().unwrap());
        assert!(n.passive && n.rr_client);
        assert_eq!(n.asn, 65000);
        // The key lives on the listener for the whole range.
        assert_eq!(n.password, None);
    }
}
