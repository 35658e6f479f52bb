//! The agent's [`RouteSink`] over the kernel: turns the agent's
//! [`DesiredRoutes`](super::forwarding::DesiredRoutes) into the route
//! programmer's table and reconciles it (ARCHITECTURE.md, principle 2).
//!
//! Wired today: a blackhole per local block, and remote blocks reached
//! directly (one next hop, or ECMP over several). Remote blocks that need
//! VXLAN or IPIP are not programmed yet (the VTEP addresses are not
//! registered by the agent): they are reported as an error naming them, and
//! everything else is still programmed.

use super::forwarding::{DesiredRoutes, Via};
use super::run::RouteSink;
use crate::routes::{self, NextHop, RouteProgrammer};

/// Programs the agent's desired routes into the kernel (felix's protocol
/// number only; other routes are never touched).
pub struct KernelRoutes {
    programmer: RouteProgrammer,
}

impl KernelRoutes {
    /// Opens the netlink sockets (needs a tokio runtime).
    pub fn open() -> Result<Self, routes::SocketError> {
        Ok(KernelRoutes {
            programmer: RouteProgrammer::new()?,
        })
    }
}

/// The programmer's table for `desired`, and the prefixes left out
/// (encapsulated routes, not wired yet).
pub fn kernel_table(desired: &DesiredRoutes) -> (routes::DesiredRoutes, Vec<String>) {
    let mut table = routes::DesiredRoutes::new();
    let mut skipped = Vec::new();
    for block in &desired.blackholes {
        if let Err(e) = table.blackhole(*block) {
            skipped.push(format!("{block}: {e}"));
        }
    }
    for (prefix, route) in &desired.remote {
        let added = match (route.via, route.next_hops.as_slice()) {
            (Via::Direct, [one]) => table.via_gateway(*prefix, *one).map(|_| ()),
            (Via::Direct, hops) => table
                .multipath(*prefix, hops.iter().map(|h| NextHop::gateway(*h)).collect())
                .map(|_| ()),
            (Via::Vxlan | Via::Ipip, _) => {
                skipped.push(format!(
                    "{prefix}: {:?} encapsulation is not wired yet",
                    route.via
                ));
                continue;
            }
        };
        if let Err(e) = added {
            skipped.push(format!("{prefix}: {e}"));
        }
    }
    (table, skipped)
}

#[async_trait::async_trait]
impl RouteSink for KernelRoutes {
    async fn program(&mut self, desired: &DesiredRoutes) -> Result<usize, String> {
        let (table, skipped) = kernel_table(desired);
        let wanted = table.len();
        self.programmer.set_desired(table);
        let report = self
            .programmer
            .reconcile()
            .await
            .map_err(|e| format!("route reconcile: {e}"))?;
        let mut problems = skipped;
        problems.extend(report.errors.iter().map(|e| e.to_string()));
        if problems.is_empty() {
            Ok(wanted)
        } else {
            Err(problems.join("; "))
        }
    }

    async fn previous_routes(&mut self) -> Result<usize, String> {
        self.programmer
            .kernel_route_count()
            .await
            .map_err(|e| format!("listing felix's kernel routes: {e}"))
    }

    fn keep_unlisted(&mut self, keep: bool) {
        self.programmer.keep_unlisted(keep);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::agent::forwarding::RemoteRoute;
    use crate::routes::RouteKind;

    #[test]
    fn direct_routes_and_blackholes_are_programmed_tunnels_are_reported() {
        let mut desired = DesiredRoutes::default();
        desired.blackholes.insert("10.244.0.0/26".parse().unwrap());
        desired.remote.insert(
            "10.244.0.64/26".parse().unwrap(),
            RemoteRoute {
                next_hops: vec!["10.0.0.2".parse().unwrap()],
                via: Via::Direct,
            },
        );
        desired.remote.insert(
            "10.244.0.128/26".parse().unwrap(),
            RemoteRoute {
                next_hops: vec!["10.0.0.3".parse().unwrap(), "10.0.0.4".parse().unwrap()],
                via: Via::Direct,
            },
        );
        desired.remote.insert(
            "10.244.0.192/26".parse().unwrap(),
            RemoteRoute {
                next_hops: vec!["10.1.0.5".parse().unwrap()],
                via: Via::Vxlan,
            },
        );
        let (table, skipped) = kernel_table(&desired);
        assert_eq!(table.len(), 3);
        assert!(matches!(
            table.get(&"10.244.0.0/26".parse().unwrap()).unwrap().kind,
            RouteKind::Blackhole
        ));
        assert!(table.get(&"10.244.0.64/26".parse().unwrap()).is_some());
        assert!(table.get(&"10.244.0.128/26".parse().unwrap()).is_some());
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].starts_with("10.244.0.192/26"), "{skipped:?}");
    }
}
