//! The programmer's task: reconcile at start, after changes (a burst of
//! changes is applied by one reconcile), and fully on a slow periodic resync
//! that repairs anything changed behind felix's back.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, Instant};

use super::{DesiredRoute, DesiredRoutes, InvalidRoute, ReconcileReport, RouteProgrammer};

/// Timing of the programmer's task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgrammerConfig {
    /// Full reconcile period (Calico's `RouteRefreshInterval` is 90 s).
    pub resync_interval: Duration,
    /// Wait after a change before reconciling, so that the changes of a
    /// burst (a BGP UPDATE carrying many prefixes) go out together.
    pub coalesce: Duration,
    /// Wait before retrying after a whole reconcile failed (socket error).
    pub retry_after: Duration,
}

impl Default for ProgrammerConfig {
    fn default() -> Self {
        ProgrammerConfig {
            resync_interval: Duration::from_secs(90),
            coalesce: Duration::from_millis(5),
            retry_after: Duration::from_secs(1),
        }
    }
}

/// What the task has done so far (for `/readyz`, metrics and `felix status`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProgrammerStatus {
    /// Reconciles completed (0 until the first one: not ready).
    pub reconciles: u64,
    /// The last reconcile's report.
    pub last: Option<ReconcileReport>,
    /// The last whole-reconcile failure, cleared by the next success.
    pub last_error: Option<String>,
}

enum Change {
    Upsert(DesiredRoute),
    Remove(IpNet),
    Replace(DesiredRoutes),
    Resync,
    Flush(oneshot::Sender<ReconcileReport>),
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Vec<Change>>,
    wake: Notify,
}

impl Shared {
    fn push(&self, change: Change) {
        self.push_all([change]);
    }
    fn push_all(&self, changes: impl IntoIterator<Item = Change>) {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .extend(changes);
        self.wake.notify_one();
    }
    fn take(&self) -> Vec<Change> {
        std::mem::take(
            &mut *self
                .pending
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }
}

/// The node agent's handle on a running programmer; cheap to clone.
#[derive(Clone)]
pub struct RouteProgrammerHandle {
    shared: Arc<Shared>,
    status: watch::Receiver<ProgrammerStatus>,
}

impl std::fmt::Debug for RouteProgrammerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteProgrammerHandle")
            .finish_non_exhaustive()
    }
}

impl RouteProgrammerHandle {
    /// Adds or changes one desired route (validated here, so a bad route is
    /// refused to the caller rather than logged by the task).
    pub fn upsert(&self, route: DesiredRoute) -> Result<(), InvalidRoute> {
        route.validate()?;
        self.shared.push(Change::Upsert(route));
        Ok(())
    }

    /// Removes one desired route.
    pub fn remove(&self, destination: IpNet) {
        self.shared.push(Change::Remove(destination));
    }

    /// Replaces the whole desired table.
    pub fn set_desired(&self, table: DesiredRoutes) {
        self.shared.push(Change::Replace(table));
    }

    /// Runs a full reconcile now and returns its report (`None` if the
    /// task has stopped).
    pub async fn resync(&self) -> Option<ReconcileReport> {
        let (tx, rx) = oneshot::channel();
        self.shared.push_all([Change::Resync, Change::Flush(tx)]);
        rx.await.ok()
    }

    /// Waits until every change sent before this call is reconciled, and
    /// returns that reconcile's report (`None` if the task has stopped).
    pub async fn flush(&self) -> Option<ReconcileReport> {
        let (tx, rx) = oneshot::channel();
        self.shared.push(Change::Flush(tx));
        rx.await.ok()
    }

    /// The task's status, updated after every reconcile.
    pub fn status(&self) -> watch::Receiver<ProgrammerStatus> {
        self.status.clone()
    }
}

impl RouteProgrammer {
    /// Runs the programmer as a task on the current tokio runtime: a full
    /// reconcile at once (with the desired table set so far), then after
    /// every change and every `resync_interval`. Abort the returned task to
    /// stop it; the kernel routes stay.
    pub fn spawn(self, config: ProgrammerConfig) -> (RouteProgrammerHandle, JoinHandle<()>) {
        let shared = Arc::new(Shared::default());
        let (status_tx, status_rx) = watch::channel(ProgrammerStatus::default());
        let task = tokio::spawn(run(self, Arc::clone(&shared), config, status_tx));
        (
            RouteProgrammerHandle {
                shared,
                status: status_rx,
            },
            task,
        )
    }
}

async fn run(
    mut programmer: RouteProgrammer,
    shared: Arc<Shared>,
    config: ProgrammerConfig,
    status: watch::Sender<ProgrammerStatus>,
) {
    let mut full = true;
    let mut next_resync = Instant::now() + config.resync_interval;
    loop {
        if !full {
            tokio::select! {
                _ = shared.wake.notified() => {
                    if !config.coalesce.is_zero() {
                        sleep(config.coalesce).await;
                    }
                }
                _ = sleep_until(next_resync) => full = true,
            }
        }
        let mut waiters = Vec::new();
        for change in shared.take() {
            match change {
                // Validated by the handle.
                Change::Upsert(route) => {
                    let _ = programmer.upsert(route);
                }
                Change::Remove(dst) => programmer.remove(&dst),
                Change::Replace(table) => programmer.set_desired(table),
                Change::Resync => full = true,
                Change::Flush(tx) => waiters.push(tx),
            }
        }
        let result = if full {
            next_resync = Instant::now() + config.resync_interval;
            programmer.reconcile().await
        } else {
            programmer.reconcile_changes().await
        };
        match result {
            Ok(report) => {
                full = false;
                tracing::debug!(
                    full = report.full,
                    added = report.added,
                    replaced = report.replaced,
                    deleted = report.deleted,
                    errors = report.errors.len(),
                    duration_ms = report.duration.as_millis() as u64,
                    "routes reconciled"
                );
                for w in waiters {
                    let _ = w.send(report.clone());
                }
                status.send_modify(|s| {
                    s.reconciles += 1;
                    s.last = Some(report);
                    s.last_error = None;
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "route reconcile failed; retrying with a full resync");
                status.send_modify(|s| s.last_error = Some(e.to_string()));
                // Keep the flush waiters for the retry.
                for w in waiters {
                    shared.push(Change::Flush(w));
                }
                full = true;
                sleep(config.retry_after).await;
            }
        }
    }
}
