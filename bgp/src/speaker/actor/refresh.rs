//! Enhanced route refresh as the receiving side (RFC 7313 §4): the peer
//! brackets a re-advertisement of one family in a Beginning-of-RIB-Refresh
//! (BoRR) and an End-of-RIB-Refresh (EoRR). At the BoRR its paths of that
//! family are marked stale; each path it announces again replaces its
//! stale copy; at the EoRR the paths still stale are the ones it no longer
//! has, and they are removed. Best paths do not change at the BoRR, so
//! nothing is withdrawn from anyone while the refresh runs.
//!
//! What to do with a marker is decided by [`Refreshes`], which keeps no
//! clock: the caller passes the time in, so the rules and the EoRR timeout
//! are tested without waiting.

use super::Actor;
use crate::wire::{Family, RouteRefreshSubtype};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// What the session negotiated and has seen that a marker's meaning
/// depends on.
#[derive(Clone, Copy, Debug)]
pub(super) struct MarkerContext {
    /// Both sides sent the Enhanced Route Refresh capability.
    pub enhanced: bool,
    /// The marker's family is one of the session's.
    pub family_negotiated: bool,
    /// The peer sent the Graceful Restart capability (RFC 4724).
    pub peer_graceful_restart: bool,
    /// The peer has sent End-of-RIB for the marker's family on this
    /// session.
    pub end_of_rib: bool,
}

/// What a received BoRR or EoRR does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum MarkerAction {
    /// BoRR: mark the peer's paths of the family stale.
    MarkStale,
    /// EoRR closing a refresh: remove the paths still stale.
    Sweep,
    /// Nothing; `warn` says whether the RFC asks for an error to be logged.
    Ignore { why: &'static str, warn: bool },
}

/// The peer's refreshes in progress on one session: per family, when its
/// stale paths go if no EoRR comes.
#[derive(Debug, Default)]
pub(super) struct Refreshes {
    deadlines: BTreeMap<Family, Instant>,
}

impl Refreshes {
    /// A BoRR or EoRR for `family` received at `now`; a refresh begun now
    /// waits at most `timeout` for its EoRR.
    pub(super) fn marker(
        &mut self,
        context: MarkerContext,
        family: Family,
        subtype: RouteRefreshSubtype,
        now: Instant,
        timeout: Duration,
    ) -> MarkerAction {
        // RFC 7313 §4: markers are sent only to a peer that advertised the
        // capability; from one to which we did not, or for a family the
        // session does not carry, they mean nothing.
        if !context.enhanced || !context.family_negotiated {
            return MarkerAction::Ignore {
                why: "enhanced route refresh not negotiated for the family",
                warn: false,
            };
        }
        match subtype {
            RouteRefreshSubtype::BeginningOfRefresh => {
                // RFC 7313 §4: a speaker that received the Graceful Restart
                // capability MUST ignore a BoRR for a family before the
                // peer's End-of-RIB for it, and SHOULD log an error. (Its
                // paths may still be stale from its restart; the End-of-RIB
                // sweeps those.)
                if context.peer_graceful_restart && !context.end_of_rib {
                    return MarkerAction::Ignore {
                        why: "BoRR before End-of-RIB from a graceful-restart peer",
                        warn: true,
                    };
                }
                // RFC 7313 does not say what a second BoRR before the EoRR
                // means; we take it as the refresh begun again: every path
                // is marked again, as the peer will send them all again,
                // and the timeout starts over.
                self.deadlines.insert(family, now + timeout);
                MarkerAction::MarkStale
            }
            RouteRefreshSubtype::EndOfRefresh => {
                // RFC 7313 §4: an EoRR without a BoRR before it MAY be
                // ignored. Sweeping then would remove nothing anyway unless
                // paths are stale for another reason (a graceful restart,
                // whose End-of-RIB is what must sweep them).
                if self.deadlines.remove(&family).is_none() {
                    return MarkerAction::Ignore {
                        why: "EoRR without a BoRR before it",
                        warn: false,
                    };
                }
                MarkerAction::Sweep
            }
            RouteRefreshSubtype::Request | RouteRefreshSubtype::Other(_) => MarkerAction::Ignore {
                why: "not a refresh marker",
                warn: false,
            },
        }
    }

    /// The families whose EoRR did not come by `now`; they are no longer
    /// in progress. RFC 7313 §4 lets an implementation bound how long it
    /// keeps stale paths.
    pub(super) fn expired(&mut self, now: Instant) -> Vec<Family> {
        let due: Vec<Family> = self
            .deadlines
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(f, _)| *f)
            .collect();
        for f in &due {
            self.deadlines.remove(f);
        }
        due
    }

    /// The earliest time a refresh in progress times out.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.values().copied().min()
    }
}

impl Actor {
    /// A BoRR or EoRR from the neighbour at `address` (see
    /// [`Refreshes::marker`] for when it is ignored).
    pub(super) fn refresh_marker(
        &mut self,
        address: IpAddr,
        family: Family,
        subtype: RouteRefreshSubtype,
    ) {
        let Some(peer) = self.peers.get_mut(&address) else {
            return;
        };
        let Some(up) = peer.up.as_mut() else {
            return;
        };
        let context = MarkerContext {
            enhanced: up.negotiated.enhanced_route_refresh,
            family_negotiated: up.negotiated.families.contains(&family),
            peer_graceful_restart: up.negotiated.peer_graceful_restart.is_some(),
            end_of_rib: up.end_of_rib.contains(&family),
        };
        let timeout = self.config.enhanced_refresh_time;
        let action = up
            .refreshing
            .marker(context, family, subtype, Instant::now(), timeout);
        let id = peer.id;
        match action {
            MarkerAction::Ignore { why, warn: true } => peer
                .span
                .in_scope(|| warn!(%family, ?subtype, "route refresh marker ignored: {why}")),
            MarkerAction::Ignore { why, warn: false } => peer
                .span
                .in_scope(|| debug!(%family, ?subtype, "route refresh marker ignored: {why}")),
            MarkerAction::MarkStale => match self.rib.mark_stale(id, family) {
                Ok(marked) => peer
                    .span
                    .in_scope(|| info!(%family, marked, "enhanced route refresh begins")),
                Err(e) => warn!(peer = %address, "mark_stale: {e}"),
            },
            MarkerAction::Sweep => {
                self.sweep_refreshed(address, family, "enhanced route refresh ends");
            }
        }
    }

    /// Refreshes whose EoRR did not come in time: their stale paths go.
    pub(super) fn expire_refreshes(&mut self) {
        let now = Instant::now();
        let expired: Vec<(IpAddr, Family)> = self
            .peers
            .iter_mut()
            .filter_map(|(a, p)| Some((*a, p.up.as_mut()?)))
            .flat_map(|(a, up)| up.refreshing.expired(now).into_iter().map(move |f| (a, f)))
            .collect();
        for (address, family) in expired {
            self.sweep_refreshed(address, family, "no EoRR in time: stale routes removed");
        }
    }

    /// The earliest EoRR deadline of any neighbour.
    pub(super) fn next_refresh_deadline(&self) -> Option<Instant> {
        self.peers
            .values()
            .filter_map(|p| p.up.as_ref()?.refreshing.next_deadline())
            .min()
    }

    fn sweep_refreshed(&mut self, address: IpAddr, family: Family, what: &str) {
        let Some(peer) = self.peers.get(&address) else {
            return;
        };
        match self.rib.sweep_stale(peer.id, family) {
            Ok(changes) => {
                peer.span.in_scope(|| info!(%family, "{what}"));
                self.apply_changes(changes);
            }
            Err(e) => warn!(peer = %address, "sweep_stale: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: Family = Family::IPV4_UNICAST;
    const BORR: RouteRefreshSubtype = RouteRefreshSubtype::BeginningOfRefresh;
    const EORR: RouteRefreshSubtype = RouteRefreshSubtype::EndOfRefresh;
    const TIMEOUT: Duration = Duration::from_secs(360);

    fn context() -> MarkerContext {
        MarkerContext {
            enhanced: true,
            family_negotiated: true,
            peer_graceful_restart: true,
            end_of_rib: true,
        }
    }

    fn ignored(a: MarkerAction) -> bool {
        matches!(a, MarkerAction::Ignore { .. })
    }

    #[test]
    fn borr_marks_and_eorr_sweeps_once() {
        let t0 = Instant::now();
        let mut r = Refreshes::default();
        assert_eq!(
            r.marker(context(), V4, BORR, t0, TIMEOUT),
            MarkerAction::MarkStale
        );
        assert_eq!(r.next_deadline(), Some(t0 + TIMEOUT));
        assert_eq!(
            r.marker(context(), V4, EORR, t0, TIMEOUT),
            MarkerAction::Sweep
        );
        assert_eq!(r.next_deadline(), None);
        // A second EoRR has no BoRR before it any more.
        assert!(ignored(r.marker(context(), V4, EORR, t0, TIMEOUT)));
    }

    #[test]
    fn eorr_without_borr_is_ignored() {
        let mut r = Refreshes::default();
        let a = r.marker(context(), V4, EORR, Instant::now(), TIMEOUT);
        assert_eq!(
            a,
            MarkerAction::Ignore {
                why: "EoRR without a BoRR before it",
                warn: false
            }
        );
    }

    #[test]
    fn markers_without_the_capability_or_family_are_ignored() {
        let now = Instant::now();
        for context in [
            MarkerContext {
                enhanced: false,
                ..context()
            },
            MarkerContext {
                family_negotiated: false,
                ..context()
            },
        ] {
            let mut r = Refreshes::default();
            assert!(ignored(r.marker(context, V4, BORR, now, TIMEOUT)));
            assert_eq!(r.next_deadline(), None);
        }
    }

    /// RFC 7313 §4: a BoRR before End-of-RIB from a peer that sent the
    /// Graceful Restart capability is ignored (and logged as an error); a
    /// peer without that capability is not held to its End-of-RIB.
    #[test]
    fn borr_before_end_of_rib_is_ignored_only_from_graceful_restart_peers() {
        let now = Instant::now();
        let early = MarkerContext {
            end_of_rib: false,
            ..context()
        };
        let mut r = Refreshes::default();
        assert_eq!(
            r.marker(early, V4, BORR, now, TIMEOUT),
            MarkerAction::Ignore {
                why: "BoRR before End-of-RIB from a graceful-restart peer",
                warn: true
            }
        );
        assert_eq!(r.next_deadline(), None);
        // Its EoRR then closes nothing.
        assert!(ignored(r.marker(early, V4, EORR, now, TIMEOUT)));

        let no_gr = MarkerContext {
            peer_graceful_restart: false,
            ..early
        };
        assert_eq!(
            r.marker(no_gr, V4, BORR, now, TIMEOUT),
            MarkerAction::MarkStale
        );
    }

    #[test]
    fn a_second_borr_restarts_the_timeout() {
        let t0 = Instant::now();
        let mut r = Refreshes::default();
        r.marker(context(), V4, BORR, t0, TIMEOUT);
        let t1 = t0 + Duration::from_secs(100);
        assert_eq!(
            r.marker(context(), V4, BORR, t1, TIMEOUT),
            MarkerAction::MarkStale
        );
        assert_eq!(r.next_deadline(), Some(t1 + TIMEOUT));
        assert!(r.expired(t0 + TIMEOUT).is_empty());
        assert_eq!(r.expired(t1 + TIMEOUT), [V4]);
    }

    /// Without an EoRR the refresh ends at its timeout, per family; the
    /// family is then no longer in progress (a late EoRR is ignored).
    #[test]
    fn refreshes_expire_at_their_timeout() {
        let t0 = Instant::now();
        let mut r = Refreshes::default();
        r.marker(context(), V4, BORR, t0, TIMEOUT);
        r.marker(
            context(),
            Family::IPV6_UNICAST,
            BORR,
            t0 + Duration::from_secs(10),
            TIMEOUT,
        );
        assert!(r
            .expired(t0 + TIMEOUT - Duration::from_millis(1))
            .is_empty());
        assert_eq!(r.expired(t0 + TIMEOUT), [V4]);
        assert_eq!(
            r.next_deadline(),
            Some(t0 + TIMEOUT + Duration::from_secs(10))
        );
        assert!(ignored(r.marker(
            context(),
            V4,
            EORR,
            t0 + TIMEOUT,
            TIMEOUT
        )));
        assert_eq!(
            r.expired(t0 + TIMEOUT + Duration::from_secs(10)),
            [Family::IPV6_UNICAST]
        );
        assert_eq!(r.next_deadline(), None);
    }
}
