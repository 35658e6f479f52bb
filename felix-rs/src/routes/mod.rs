//! The route programmer: felix's desired routes, converged into the kernel
//! FIB over rtnetlink.
//!
//! Felix owns exactly the routes of the main table that carry
//! [`FELIX_ROUTE_PROTOCOL`]; it never reads-modifies-writes anything else.
//! [`RouteProgrammer::reconcile`] dumps those routes (IPv4 and IPv6),
//! compares them with the desired table and sends only the differences,
//! pipelined on one socket. Because the kernel keeps routes across a felix
//! restart, a new programmer with the same desired table changes nothing,
//! and after its first reconcile only stale routes are gone.
//! [`RouteProgrammer::spawn`] runs the reconcile at start, after every change
//! (bursts coalesce) and on a slow periodic resync. See
//! docs/route-programmer.md.

mod desired;
mod driver;
pub(crate) mod kernel;
mod socket;

use std::collections::{HashMap, HashSet};
use std::io;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use rtnetlink::packet_route::AddressFamily;

pub use desired::{DesiredRoute, DesiredRoutes, InvalidRoute, NextHop, RouteKind};
pub use driver::{ProgrammerConfig, ProgrammerStatus, RouteProgrammerHandle};
use kernel::KernelRoute;
pub use kernel::RouteOp;
pub use socket::SocketError;
use socket::{RouteSocket, RouteWriter, WriteError};

/// The `rtm_protocol` value of every route felix installs, and the only one
/// whose routes felix ever changes or deletes.
///
/// 102 (0x66, ASCII `f`) is unused by the kernel (0–4, and 8–18, 42, 99,
/// 186–192 in `/etc/iproute2/rt_protos`), by FRR (186–198), BIRD (12), and by
/// Calico's Felix, which uses 80 for its VXLAN/no-encap routes. Keeping
/// off 80 lets felix-rs run next to Calico without either deleting the
/// other's routes. To see felix's routes: `ip route show proto 102`.
pub const FELIX_ROUTE_PROTOCOL: u8 = 102;

/// How one route failed; the others of the same reconcile go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The route names a device that does not exist (a veth already gone).
    #[error("route {route}: device {device} not found")]
    DeviceNotFound {
        /// The route.
        route: IpNet,
        /// The missing device.
        device: String,
    },
    /// A route of another protocol holds this prefix (and metric); felix
    /// leaves it alone rather than overwrite it.
    #[error("route {route}: a route not owned by felix (another protocol) holds this prefix")]
    ForeignRoute {
        /// The route.
        route: IpNet,
    },
    /// The kernel refused the write.
    #[error("route {route}: kernel refused {op}: {}", io::Error::from_raw_os_error(*.errno))]
    Kernel {
        /// The route.
        route: IpNet,
        /// What felix asked.
        op: RouteOp,
        /// The kernel's errno.
        errno: i32,
    },
    /// No answer from the kernel for this write.
    #[error("route {route}: no answer from the kernel to {op}")]
    NoAnswer {
        /// The route.
        route: IpNet,
        /// What felix asked.
        op: RouteOp,
    },
}

impl RouteError {
    /// The route the error is about.
    pub fn route(&self) -> IpNet {
        match self {
            RouteError::DeviceNotFound { route, .. }
            | RouteError::ForeignRoute { route }
            | RouteError::Kernel { route, .. }
            | RouteError::NoAnswer { route, .. } => *route,
        }
    }
}

/// What one reconcile did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// A full reconcile (kernel dumped) rather than the changed prefixes only.
    pub full: bool,
    /// Routes added.
    pub added: usize,
    /// Felix routes replaced because they differed from the desired ones.
    pub replaced: usize,
    /// Stale felix routes deleted.
    pub deleted: usize,
    /// Desired routes the kernel already had.
    pub unchanged: usize,
    /// Per-route failures.
    pub errors: Vec<RouteError>,
    /// Wall time.
    pub duration: Duration,
}

impl ReconcileReport {
    /// True when the reconcile changed nothing in the kernel.
    pub fn no_changes(&self) -> bool {
        self.added == 0 && self.replaced == 0 && self.deleted == 0
    }
}

/// Desired-state route programmer (see the module docs).
#[derive(Debug)]
pub struct RouteProgrammer {
    socket: RouteSocket,
    writer: RouteWriter,
    desired: DesiredRoutes,
    /// Felix's kernel routes as of the last dump, updated by felix's own
    /// successful writes since. `None` until the first full reconcile.
    kernel: Option<HashMap<IpNet, KernelRoute>>,
    /// Prefixes whose desired route changed since the last reconcile.
    dirty: HashSet<IpNet>,
    /// While set, felix routes the desired table does not list stay in the
    /// kernel (see [`RouteProgrammer::keep_unlisted`]).
    keep_unlisted: bool,
}

enum Planned {
    Write(RouteOp, KernelRoute),
}

impl RouteProgrammer {
    /// Opens the rtnetlink socket (in the calling thread's network
    /// namespace) on the current tokio runtime. The desired table starts
    /// empty: set it before the first reconcile, or that reconcile removes
    /// every felix route.
    pub fn new() -> Result<Self, SocketError> {
        Ok(RouteProgrammer {
            socket: RouteSocket::open()?,
            writer: RouteWriter::open()?,
            desired: DesiredRoutes::new(),
            kernel: None,
            dirty: HashSet::new(),
            keep_unlisted: false,
        })
    }

    /// While `keep` is set, reconciles add and replace routes but delete
    /// none: after a restart the previous run's routes keep forwarding until
    /// the desired table is complete again (BGP re-learned, RFC 4724 §4.1).
    /// Turning it off makes the next full reconcile remove what is stale.
    pub fn keep_unlisted(&mut self, keep: bool) {
        self.keep_unlisted = keep;
    }

    /// How many felix routes the kernel holds now (IPv4 and IPv6): at start,
    /// more than zero means a previous run's routes are still in place.
    pub async fn kernel_route_count(&self) -> Result<usize, SocketError> {
        let mut n = 0;
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            n += self
                .socket
                .dump_routes(family)
                .await?
                .iter()
                .filter(|m| KernelRoute::from_message(m).is_some())
                .count();
        }
        Ok(n)
    }

    /// The desired table.
    pub fn desired(&self) -> &DesiredRoutes {
        &self.desired
    }

    /// Replaces the whole desired table.
    pub fn set_desired(&mut self, table: DesiredRoutes) {
        for r in self.desired.iter() {
            if table.get(&r.destination) != Some(r) {
                self.dirty.insert(r.destination);
            }
        }
        for r in table.iter() {
            if self.desired.get(&r.destination) != Some(r) {
                self.dirty.insert(r.destination);
            }
        }
        self.desired = table;
    }

    /// Adds or changes one desired route.
    pub fn upsert(&mut self, route: DesiredRoute) -> Result<(), InvalidRoute> {
        let dst = route.destination;
        if self.desired.get(&dst) != Some(&route) {
            self.desired.insert(route)?;
            self.dirty.insert(dst);
        }
        Ok(())
    }

    /// Removes one desired route (its kernel route goes at the next reconcile).
    pub fn remove(&mut self, destination: &IpNet) {
        if self.desired.remove(destination).is_some() {
            self.dirty.insert(*destination);
        }
    }

    /// Full reconcile: dump felix's kernel routes, diff against the desired
    /// table, write only the differences.
    pub async fn reconcile(&mut self) -> Result<ReconcileReport, SocketError> {
        self.full_reconcile(None::<fn() -> DesiredRoutes>).await
    }

    /// Full reconcile against the table `desired` returns, asked for only
    /// *after* the kernel has been dumped.
    ///
    /// For routes another process adds once it has told the agent (a pod
    /// route: the CNI plugin adds it after the agent assigned the address):
    /// every such route the dump shows was announced before the dump, so it
    /// is in the table taken after it, and a live pod's route is never
    /// mistaken for a stale one.
    pub async fn reconcile_with(
        &mut self,
        desired: impl FnOnce() -> DesiredRoutes,
    ) -> Result<ReconcileReport, SocketError> {
        self.full_reconcile(Some(desired)).await
    }

    async fn full_reconcile(
        &mut self,
        desired: Option<impl FnOnce() -> DesiredRoutes>,
    ) -> Result<ReconcileReport, SocketError> {
        let started = Instant::now();
        let links = self.socket.link_indexes().await?;
        let mut kernel = HashMap::new();
        let mut duplicates = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            for msg in self.socket.dump_routes(family).await? {
                if let Some(route) = KernelRoute::from_message(&msg) {
                    if let Some(first) = kernel.insert(route.destination, route) {
                        // A second felix route for the same prefix (another
                        // metric): keep one, delete the other.
                        duplicates.push(first);
                    }
                }
            }
        }
        self.kernel = Some(kernel);
        if let Some(desired) = desired {
            self.set_desired(desired());
        }
        let mut dsts: HashSet<IpNet> = self.desired.iter().map(|r| r.destination).collect();
        if let Some(k) = &self.kernel {
            dsts.extend(k.keys().copied());
        }
        let mut report = self.converge(dsts, &links, duplicates).await;
        report.full = true;
        report.duration = started.elapsed();
        Ok(report)
    }

    /// Reconciles only the prefixes changed since the last reconcile against
    /// felix's view of the kernel (a full reconcile if there is none yet).
    /// The periodic full [`reconcile`](Self::reconcile) repairs anything
    /// changed behind felix's back.
    pub async fn reconcile_changes(&mut self) -> Result<ReconcileReport, SocketError> {
        if self.kernel.is_none() {
            return self.reconcile().await;
        }
        let started = Instant::now();
        let links = self.socket.link_indexes().await?;
        let dsts = std::mem::take(&mut self.dirty);
        let mut report = self.converge(dsts, &links, Vec::new()).await;
        report.duration = started.elapsed();
        Ok(report)
    }

    /// Plans and writes the changes for `dsts`; deletes go first so that a
    /// route moving to another metric is deleted before it is re-added.
    async fn converge(
        &mut self,
        dsts: HashSet<IpNet>,
        links: &HashMap<String, u32>,
        duplicates: Vec<KernelRoute>,
    ) -> ReconcileReport {
        self.dirty.clear();
        let mut report = ReconcileReport::default();
        let mut deletes: Vec<Planned> = duplicates
            .into_iter()
            .map(|r| Planned::Write(RouteOp::Delete, r))
            .collect();
        let mut writes: Vec<Planned> = Vec::new();
        let kernel = self.kernel.get_or_insert_with(HashMap::new);
        let mut dsts: Vec<IpNet> = dsts.into_iter().collect();
        dsts.sort();
        for dst in dsts {
            let have = kernel.get(&dst);
            let Some(want) = self.desired.get(&dst) else {
                if let Some(have) = have.filter(|_| !self.keep_unlisted) {
                    deletes.push(Planned::Write(RouteOp::Delete, have.clone()));
                }
                continue;
            };
            let want = match KernelRoute::resolve(want, links) {
                Ok(w) => w,
                Err(e) => {
                    // Leave whatever the kernel has for this prefix: the
                    // route is not wrong, only its device is not there (yet).
                    report.errors.push(e);
                    continue;
                }
            };
            match have {
                Some(h) if h.satisfies(&want) => report.unchanged += 1,
                Some(h) if h.priority == want.priority => {
                    writes.push(Planned::Write(RouteOp::Replace, want))
                }
                Some(h) => {
                    deletes.push(Planned::Write(RouteOp::Delete, h.clone()));
                    writes.push(Planned::Write(RouteOp::Add, want));
                }
                None => writes.push(Planned::Write(RouteOp::Add, want)),
            }
        }
        for plan in [deletes, writes] {
            if plan.is_empty() {
                continue;
            }
            let requests = plan
                .iter()
                .map(|Planned::Write(op, r)| kernel::request(*op, r))
                .collect();
            let results = self.writer.write_all(requests).await;
            for (Planned::Write(op, route), result) in plan.into_iter().zip(results) {
                let dst = route.destination;
                match (op, result) {
                    // ESRCH: already gone (the kernel drops a veth's routes
                    // with the veth), which is what felix wanted.
                    (RouteOp::Delete, Ok(()))
                    | (RouteOp::Delete, Err(WriteError::Errno(libc::ESRCH))) => {
                        report.deleted += 1;
                        if kernel.get(&dst) == Some(&route) {
                            kernel.remove(&dst);
                        }
                    }
                    (RouteOp::Add, Ok(())) => {
                        report.added += 1;
                        kernel.insert(dst, route);
                    }
                    (RouteOp::Replace, Ok(())) => {
                        report.replaced += 1;
                        kernel.insert(dst, route);
                    }
                    (RouteOp::Add, Err(WriteError::Errno(libc::EEXIST))) => {
                        report.errors.push(RouteError::ForeignRoute { route: dst })
                    }
                    (op, Err(WriteError::Errno(errno))) => report.errors.push(RouteError::Kernel {
                        route: dst,
                        op,
                        errno,
                    }),
                    (op, Err(WriteError::NoAnswer)) => {
                        report.errors.push(RouteError::NoAnswer { route: dst, op })
                    }
                }
            }
        }
        for e in &report.errors {
            tracing::warn!(error = %e, "route not programmed");
        }
        report
    }
}
