//! The restarting speaker's side of graceful restart (RFC 4724 §4.1): after
//! a restart with forwarding kept, our UPDATEs and End-of-RIB markers wait
//! until every peer has sent its End-of-RIB (or the selection deferral
//! timer expires), so that no peer is sent a partial table — for a route
//! reflector, the routes it has not re-learned yet — followed by an
//! End-of-RIB that makes the peer drop the rest as stale.

use super::{Actor, SpeakerConfig};
use tokio::time::Instant;
use tracing::info;

/// Selection deferral in progress.
pub(super) struct Deferral {
    /// Selection_Deferral_Timer (RFC 4724 §4.1).
    pub(super) deadline: Instant,
}

impl Deferral {
    /// A deferral for a speaker that starts as a graceful restart.
    pub(super) fn at_start(config: &SpeakerConfig) -> Option<Deferral> {
        (config.restarting && config.graceful_restart_time.is_some()).then(|| Deferral {
            deadline: Instant::now() + config.selection_deferral_time,
        })
    }
}

impl Actor {
    /// Whether every neighbour we wait for has sent End-of-RIB for every
    /// family of its session. Neighbours that did not offer graceful
    /// restart, or that are restarting themselves (R bit), are not waited
    /// for (§4.1); neighbours not Established yet are (until the timer),
    /// except stopped ones. At least one session must be up.
    fn deferral_complete(&self) -> bool {
        let mut any_up = false;
        for peer in self.peers.values().filter(|p| p.session.is_some()) {
            let Some(up) = &peer.up else {
                return false;
            };
            any_up = true;
            let waits = up
                .negotiated
                .peer_graceful_restart
                .as_ref()
                .is_some_and(|gr| !gr.restarting);
            if waits
                && !up
                    .negotiated
                    .families
                    .iter()
                    .all(|f| up.end_of_rib.contains(f))
            {
                return false;
            }
        }
        any_up
    }

    /// Ends the deferral once [`Actor::deferral_complete`] holds.
    pub(super) fn check_deferral(&mut self) {
        if self.deferral.is_some() && self.deferral_complete() {
            self.end_deferral("End-of-RIB received from every peer");
        }
    }

    /// Route selection is final: what waited in the packers (the table, then
    /// End-of-RIB) goes out.
    pub(super) fn end_deferral(&mut self, why: &str) {
        if self.deferral.take().is_some() {
            info!("graceful restart: {why}; sending our routes and End-of-RIB");
            self.schedule_flush();
        }
    }
}
