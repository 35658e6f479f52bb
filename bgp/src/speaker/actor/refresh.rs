//! Enhanced route refresh as the receiving side (RFC 7313 §4): the peer
//! brackets a re-advertisement of one family in a Beginning-of-RIB-Refresh
//! (BoRR) and an End-of-RIB-Refresh (EoRR). At the BoRR its paths of that
//! family are marked stale; each path it announces again replaces its
//! stale copy; at the EoRR the paths still stale are the ones it no longer
//! has, and they are removed. Best paths do not change at the BoRR, so
//! nothing is withdrawn from anyone while the refresh runs.

use super::Actor;
use crate::speaker::ENHANCED_REFRESH_TIME;
use crate::wire::{Family, RouteRefreshSubtype};
use std::net::IpAddr;
use tokio::time::Instant;
use tracing::{debug, info, warn};

impl Actor {
    /// A BoRR or EoRR from the neighbour at `address`. Ignored unless both
    /// sides offered Enhanced Route Refresh and the family is one of the
    /// session's; an EoRR without a BoRR before it is ignored too.
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
        if !up.negotiated.enhanced_route_refresh || !up.negotiated.families.contains(&family) {
            peer.span.in_scope(
                || debug!(%family, ?subtype, "route refresh marker ignored (not negotiated)"),
            );
            return;
        }
        let id = peer.id;
        match subtype {
            RouteRefreshSubtype::BeginningOfRefresh => {
                // A second BoRR restarts the refresh: the paths announced
                // since the first are marked again, as the peer will send
                // them again.
                up.refreshing
                    .insert(family, Instant::now() + ENHANCED_REFRESH_TIME);
                match self.rib.mark_stale(id, family) {
                    Ok(marked) => peer
                        .span
                        .in_scope(|| info!(%family, marked, "enhanced route refresh begins")),
                    Err(e) => warn!(peer = %address, "mark_stale: {e}"),
                }
            }
            RouteRefreshSubtype::EndOfRefresh => {
                if up.refreshing.remove(&family).is_none() {
                    peer.span
                        .in_scope(|| debug!(%family, "EoRR without a BoRR before it ignored"));
                    return;
                }
                self.sweep_refreshed(address, family, "enhanced route refresh ends");
            }
            _ => {}
        }
    }

    /// Refreshes whose EoRR did not come in time: their stale paths go.
    pub(super) fn expire_refreshes(&mut self) {
        let now = Instant::now();
        let expired: Vec<(IpAddr, Family)> = self
            .peers
            .iter_mut()
            .filter_map(|(a, p)| Some((*a, p.up.as_mut()?)))
            .flat_map(|(a, up)| {
                let due: Vec<Family> = up
                    .refreshing
                    .iter()
                    .filter(|(_, d)| **d <= now)
                    .map(|(f, _)| *f)
                    .collect();
                for f in &due {
                    up.refreshing.remove(f);
                }
                due.into_iter().map(move |f| (a, f))
            })
            .collect();
        for (address, family) in expired {
            self.sweep_refreshed(address, family, "no EoRR in time: stale routes removed");
        }
    }

    /// The earliest EoRR deadline of any neighbour.
    pub(super) fn next_refresh_deadline(&self) -> Option<Instant> {
        self.peers
            .values()
            .filter_map(|p| p.up.as_ref())
            .flat_map(|up| up.refreshing.values().copied())
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
