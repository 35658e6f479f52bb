//! The node agent's pod API: answers `felix-cni` / `felix-ipam` over a unix
//! socket ([`felix_cni::api`] is the wire protocol) by calling the IPAM
//! [`Allocator`]. The agent holds the only datastore connection, so a pod
//! start opens none.
//!
//! Handles are the plugin's attachment ids (`felix-cni:NET:CONTAINER:IF`);
//! allocations carry the node, pod namespace, pod name and interface as
//! attributes, which is how GC keeps to this node's attachments.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use felix_cni::api::{ApiError, ApiErrorKind, Attachment, Request, Response, MAX_MESSAGE_BYTES};
use ipam::block::InUse;
use ipam::handle::IpamHandleSpec;
use ipam::store::{Kind, StoreError};
use ipam::{AllocationAttrs, Allocator, AutoAssignRequest, IpamError};
use ipnet::IpNet;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, info, warn};

use crate::latency_histogram::LatencyHistogram;
use crate::local_pods::LocalPods;

/// Where `felix node pod-api` listens unless told otherwise (the plugin's
/// default, [`felix_cni::config::DEFAULT_AGENT_SOCKET`]).
pub const DEFAULT_SOCKET: &str = felix_cni::config::DEFAULT_AGENT_SOCKET;

/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What can stop the server.
#[derive(Debug, thiserror::Error)]
pub enum PodApiError {
    #[error("another process answers on {0}; refusing to take its socket over")]
    InUse(PathBuf),
    #[error("{path}: {source}")]
    Socket { path: PathBuf, source: io::Error },
}

/// Answers requests: the protocol logic, without the socket.
pub struct PodApi {
    allocator: Arc<Allocator>,
    node: String,
    /// Assign / release / GC of one attachment run one at a time, so that
    /// an ADD retried while the first attempt is still running finds the
    /// first one's addresses instead of taking a second set. Different
    /// attachments' run side by side: the allocator is safe for concurrent
    /// use, and a node's concurrent pod starts reach it together.
    writes: HandleLocks,
    /// The node's pods, for the agent's route programmer (none when the
    /// API runs without an agent, `felix node pod-api`).
    pods: Option<LocalPods>,
    /// How long each request took, by operation ([`OPS`]), from accepting
    /// the connection to the answer; the agent's /metrics shows it.
    latency: Arc<LatencyHistogram>,
}

/// The operations of the pod API, as the latency histogram labels them.
pub const OPS: [&str; 5] = ["assign", "lookup", "release", "gc", "status"];

impl PodApi {
    pub fn new(allocator: Arc<Allocator>, node: impl Into<String>) -> Self {
        PodApi {
            allocator,
            node: node.into(),
            writes: HandleLocks::default(),
            pods: None,
            latency: Arc::new(LatencyHistogram::new(&OPS)),
        }
    }

    /// The request latency histogram (shared: it keeps counting).
    pub fn latency(&self) -> Arc<LatencyHistogram> {
        Arc::clone(&self.latency)
    }

    /// Records every attachment assigned or released in `pods`.
    pub fn with_local_pods(mut self, pods: LocalPods) -> Self {
        self.pods = Some(pods);
        self
    }

    fn record(&self, attachment: &Attachment, addresses: &[IpNet]) {
        if let Some(pods) = &self.pods {
            pods.insert(attachment, addresses.iter().map(IpNet::addr).collect());
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Answers one request.
    pub async fn answer(&self, request: Request) -> Response {
        let result = match request {
            Request::Assign {
                attachment,
                pod_namespace,
                pod_name,
                num_v4,
                num_v6,
            } => {
                self.assign(&attachment, pod_namespace, pod_name, num_v4, num_v6)
                    .await
            }
            Request::Lookup { attachment } => {
                let handle = attachment.handle_id();
                match self.addresses(&handle).await {
                    Ok(held) if held.is_empty() => Err(ApiError {
                        kind: ApiErrorKind::NotFound,
                        message: format!("{handle} holds no addresses"),
                    }),
                    Ok(held) => Ok(Response::Addresses(held)),
                    Err(e) => Err(api_error(e)),
                }
            }
            Request::Release { attachment } => {
                let handle = attachment.handle_id();
                let _writes = self.writes.lock(&handle).await;
                self.release(&handle)
                    .await
                    .map(Response::Released)
                    .map_err(api_error)
            }
            Request::Gc { network, valid } => self.gc(&network, &valid).await.map_err(api_error),
            Request::Status => self
                .allocator
                .pools()
                .await
                .map(|_| Response::Ready {
                    node: self.node.clone(),
                })
                .map_err(api_error),
        };
        result.unwrap_or_else(Response::Error)
    }

    async fn assign(
        &self,
        attachment: &Attachment,
        pod_namespace: Option<String>,
        pod_name: Option<String>,
        num_v4: u32,
        num_v6: u32,
    ) -> Result<Response, ApiError> {
        if num_v4 + num_v6 == 0 || num_v4 > 1 || num_v6 > 1 {
            return Err(ApiError {
                kind: ApiErrorKind::Invalid,
                message: format!("a pod takes at most one address per family (asked {num_v4} IPv4, {num_v6} IPv6)"),
            });
        }
        let handle = attachment.handle_id();
        let _writes = self.writes.lock(&handle).await;
        let held = self.addresses(&handle).await.map_err(api_error)?;
        if !held.is_empty() {
            debug!(%handle, "assign: the attachment holds addresses already");
            self.record(attachment, &held);
            return Ok(Response::Addresses(held));
        }
        let request = AutoAssignRequest {
            handle: handle.clone(),
            node: self.node.clone(),
            num_v4,
            num_v6,
            attrs: AllocationAttrs {
                namespace: pod_namespace,
                pod: pod_name,
                node: Some(self.node.clone()),
                interface: Some(attachment.ifname.clone()),
                kind: None,
            },
            ..AutoAssignRequest::default()
        };
        let assigned = self
            .allocator
            .auto_assign(&request)
            .await
            .map_err(api_error)?;
        // Each address with its block's prefix length (what felix-ipam
        // hands to a delegating plugin; felix-cni makes /32s and /128s).
        let addresses: Vec<IpNet> = assigned
            .leases
            .iter()
            .map(|lease| {
                IpNet::new(lease.ip, lease.block.prefix_len()).unwrap_or(IpNet::from(lease.ip))
            })
            .collect();
        info!(%handle, ?addresses, "assigned");
        self.record(attachment, &addresses);
        Ok(Response::Addresses(addresses))
    }

    async fn release(&self, handle: &str) -> Result<u32, IpamError> {
        let released = self.allocator.release_by_handle(handle).await?;
        if let Some(pods) = &self.pods {
            pods.remove(handle);
        }
        if !released.is_empty() {
            info!(%handle, ?released, "released");
        }
        Ok(u32::try_from(released.len()).unwrap_or(u32::MAX))
    }

    /// The addresses a handle holds, with their blocks' prefix lengths.
    async fn addresses(&self, handle: &str) -> Result<Vec<IpNet>, IpamError> {
        Ok(self
            .holdings(handle)
            .await?
            .into_iter()
            .map(|(block, u)| IpNet::new(u.ip, block.prefix_len()).unwrap_or(IpNet::from(u.ip)))
            .collect())
    }

    /// The addresses a handle holds (with their blocks).
    async fn holdings(&self, handle: &str) -> Result<Vec<(IpNet, InUse)>, IpamError> {
        self.allocator.holdings(handle).await
    }

    /// Releases this node's attachments of `network` that are not in
    /// `valid` (CNI spec 1.1, "GC").
    async fn gc(&self, network: &str, valid: &[Attachment]) -> Result<Response, IpamError> {
        let valid: BTreeSet<String> = valid.iter().map(Attachment::handle_id).collect();
        let prefix = Attachment::network_prefix(network);
        let listing = self.allocator.store().list(Kind::IpamHandle, "").await?;
        let mut collected = Vec::new();
        for object in listing.objects {
            let Ok(spec) = serde_json::from_slice::<IpamHandleSpec>(&object.value) else {
                warn!(name = %object.name, "gc: skipping a handle that does not decode");
                continue;
            };
            let handle = spec.handle_id;
            if !handle.starts_with(&prefix) || valid.contains(&handle) {
                continue;
            }
            let _writes = self.writes.lock(&handle).await;
            let held = self.holdings(&handle).await?;
            let ours = !held.is_empty()
                && held
                    .iter()
                    .all(|(_, u)| u.attributes.get("node") == Some(&self.node));
            if !ours {
                continue;
            }
            self.release(&handle).await?;
            if let Some(attachment) = Attachment::from_handle_id(&handle) {
                collected.push(attachment);
            }
        }
        Ok(Response::Collected(collected))
    }
}

/// One lock per IPAM handle, made when first asked for and forgotten
/// when nobody holds or waits for it (the map holds only attachments in
/// flight).
#[derive(Default)]
struct HandleLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl HandleLocks {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<()>>>> {
        self.locks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until nobody else holds `handle`'s lock, then holds it until
    /// the guard is dropped.
    async fn lock(&self, handle: &str) -> HandleGuard<'_> {
        let lock = Arc::clone(self.map().entry(handle.to_owned()).or_default());
        // The guard exists before the wait, so that a request given up
        // while waiting still forgets the lock.
        let mut guard = HandleGuard {
            locks: self,
            handle: handle.to_owned(),
            lock,
            held: None,
        };
        guard.held = Some(Arc::clone(&guard.lock).lock_owned().await);
        guard
    }
}

/// A held (or awaited) [`HandleLocks`] entry.
struct HandleGuard<'a> {
    locks: &'a HandleLocks,
    handle: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for HandleGuard<'_> {
    fn drop(&mut self) {
        // Under the map's lock, where every other user takes its
        // reference: the map's and ours left means nobody else holds or
        // waits for it.
        let mut map = self.locks.map();
        self.held = None;
        if Arc::strong_count(&self.lock) == 2 {
            map.remove(&self.handle);
        }
    }
}

fn api_error(e: IpamError) -> ApiError {
    let kind = match &e {
        IpamError::Exhausted { .. } | IpamError::NoPool { .. } => ApiErrorKind::Exhausted,
        IpamError::Invalid(_) => ApiErrorKind::Invalid,
        IpamError::Store(StoreError::Unavailable(_)) | IpamError::TooManyConflicts { .. } => {
            ApiErrorKind::Unavailable
        }
        _ => ApiErrorKind::Internal,
    };
    ApiError {
        kind,
        message: e.to_string(),
    }
}

/// The listening socket. Dropping it removes the socket file.
pub struct PodApiServer {
    listener: UnixListener,
    path: PathBuf,
}

impl PodApiServer {
    /// Binds `path` (mode 0600), creating its directory. A stale socket
    /// file left by a crash is replaced; a live one is not.
    pub async fn bind(path: &Path) -> Result<Self, PodApiError> {
        let socket_error = |source| PodApiError::Socket {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(socket_error)?;
        }
        if path.exists() {
            if UnixStream::connect(path).await.is_ok() {
                return Err(PodApiError::InUse(path.to_owned()));
            }
            std::fs::remove_file(path).map_err(socket_error)?;
        }
        // Bound and restricted under a temporary name, then renamed into
        // place: a client that sees the socket file can connect at once
        // and never finds it listening-but-not-yet-0600 (or not yet
        // listening at all).
        let staging = path.with_file_name(format!(
            ".{}.{}",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id()
        ));
        let _ = std::fs::remove_file(&staging);
        let listener = UnixListener::bind(&staging).map_err(socket_error)?;
        use std::os::unix::fs::PermissionsExt;
        let placed = std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::rename(&staging, path));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&staging);
            return Err(socket_error(e));
        }
        Ok(PodApiServer {
            listener,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves until `shutdown` completes; each connection on a task of its
    /// own.
    pub async fn serve(self, api: Arc<PodApi>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let api = Arc::clone(&api);
                        tokio::spawn(async move {
                            if let Err(e) = serve_connection(&api, stream).await {
                                debug!("pod API connection: {e}");
                            }
                        });
                    }
                    Err(e) => {
                        warn!("pod API accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }
}

impl Drop for PodApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn serve_connection(api: &PodApi, stream: UnixStream) -> io::Result<()> {
    let started = Instant::now();
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(MAX_MESSAGE_BYTES));
    let mut line = Vec::new();
    tokio::time::timeout(READ_TIMEOUT, reader.read_until(b'\n', &mut line))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request in time"))??;
    let response = match serde_json::from_slice::<Request>(&line) {
        Ok(request) => {
            let op = op_name(&request);
            let response = api.answer(request).await;
            api.latency.observe(op, started.elapsed());
            debug!(
                op,
                elapsed_us = started.elapsed().as_micros(),
                "pod API request"
            );
            response
        }
        Err(e) => Response::Error(ApiError {
            kind: ApiErrorKind::Invalid,
            message: format!("request cannot be decoded: {e}"),
        }),
    };
    let mut bytes = serde_json::to_vec(&response).map_err(io::Error::other)?;
    bytes.push(b'\n');
    write.write_all(&bytes).await?;
    write.shutdown().await
}

fn op_name(request: &Request) -> &'static str {
    match request {
        Request::Assign { .. } => "assign",
        Request::Lookup { .. } => "lookup",
        Request::Release { .. } => "release",
        Request::Gc { .. } => "gc",
        Request::Status => "status",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use ipam::store::sqlite::SqliteStore;
    use ipam::AllocatorConfig;

    #[tokio::test]
    async fn one_handle_waits_other_handles_do_not_and_idle_locks_are_forgotten() {
        let locks = HandleLocks::default();
        let a = locks.lock("a").await;
        // Another handle is not held up by `a`.
        let b = tokio::time::timeout(Duration::from_secs(5), locks.lock("b"))
            .await
            .expect("b must not wait for a");
        // The same handle waits until `a` is dropped.
        let second_a = locks.lock("a");
        tokio::pin!(second_a);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut second_a)
                .await
                .is_err(),
            "a second holder of a while a is held"
        );
        drop(a);
        let a_again = tokio::time::timeout(Duration::from_secs(5), second_a)
            .await
            .expect("a is free once dropped");
        assert_eq!(locks.map().len(), 2);
        drop(a_again);
        drop(b);
        assert!(locks.map().is_empty(), "idle locks are forgotten");
        // A wait given up also forgets its entry.
        let held = locks.lock("c").await;
        let mut waiting = Box::pin(locks.lock("c"));
        assert!(
            tokio::time::timeout(Duration::from_millis(10), &mut waiting)
                .await
                .is_err()
        );
        drop(waiting);
        drop(held);
        assert!(locks.map().is_empty());
        drop(locks.lock("c").await);
        assert!(locks.map().is_empty());
    }

    fn attachment(container: &str) -> Attachment {
        Attachment {
            network: "net".into(),
            container_id: container.into(),
            ifname: "eth0".into(),
        }
    }

    fn assign(container: &str) -> Request {
        Request::Assign {
            attachment: attachment(container),
            pod_namespace: None,
            pod_name: None,
            num_v4: 1,
            num_v6: 0,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_assigns_one_set_per_attachment() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("ipam.db"))
            .await
            .unwrap();
        let allocator = Arc::new(Allocator::new(Arc::new(store), AllocatorConfig::default()));
        allocator
            .create_pool(
                "pool",
                ipam::pool::IpPoolSpec::new("10.9.0.0/16".parse().unwrap()),
            )
            .await
            .unwrap();
        let api = Arc::new(PodApi::new(Arc::clone(&allocator), "node-a"));
        // Eight attachments, each asked for three times at once (a runtime
        // retrying an ADD whose first attempt is still running).
        let mut tasks = Vec::new();
        for pod in 0..8 {
            for _ in 0..3 {
                let api = Arc::clone(&api);
                tasks.push(tokio::spawn(async move {
                    let container = format!("c{pod}");
                    (container.clone(), api.answer(assign(&container)).await)
                }));
            }
        }
        let mut by_pod: HashMap<String, BTreeSet<Vec<IpNet>>> = HashMap::new();
        for task in tasks {
            let (pod, response) = task.await.unwrap();
            let Response::Addresses(addresses) = response else {
                panic!("{pod}: {response:?}");
            };
            assert_eq!(addresses.len(), 1, "{pod}");
            by_pod.entry(pod).or_default().insert(addresses);
        }
        let mut all = BTreeSet::new();
        for (pod, answers) in &by_pod {
            assert_eq!(answers.len(), 1, "{pod} got different answers: {answers:?}");
            let held = allocator
                .holdings(&attachment(pod).handle_id())
                .await
                .unwrap();
            assert_eq!(held.len(), 1, "{pod} holds {held:?}");
            assert!(all.insert(held[0].1.ip), "{pod}'s address is shared");
        }
        assert_eq!(all.len(), 8);
        assert!(api.writes.map().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn served_requests_are_counted_in_the_latency_histogram() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("ipam.db"))
            .await
            .unwrap();
        let allocator = Arc::new(Allocator::new(Arc::new(store), AllocatorConfig::default()));
        let api = Arc::new(PodApi::new(allocator, "node-a"));
        let latency = api.latency();
        let socket = dir.path().join("pod-api.sock");
        let server = PodApiServer::bind(&socket).await.unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(server.serve(api, async {
            let _ = stop_rx.await;
        }));
        for _ in 0..2 {
            let socket = socket.clone();
            tokio::task::spawn_blocking(move || {
                felix_cni::api::call(&socket, &Request::Status, Duration::from_secs(5))
            })
            .await
            .unwrap()
            .unwrap();
        }
        let _ = stop_tx.send(());
        served.await.unwrap();
        let text = latency.render("x_seconds", "h", "op");
        assert!(
            text.contains("x_seconds_count{op=\"status\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("x_seconds_bucket{op=\"status\",le=\"+Inf\"} 2\n"));
        assert!(text.contains("x_seconds_count{op=\"assign\"} 0\n"));
    }
}
