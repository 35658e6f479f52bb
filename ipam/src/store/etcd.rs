//! The `etcd` backend: etcd v3 over gRPC (`etcd-client`).
//!
//! Layout: one key per object, `/felix/v1/<plural>/<name>`, holding the
//! spec's JSON. An object's [`Revision`] is its key's `mod_revision`; a
//! listing's is the response header's store revision. Writes are single
//! transactions (etcd API guarantees: a txn is atomic and serialisable):
//! - create: `If(create_revision(key) == 0) Then(put)`;
//! - update: `If(mod_revision(key) == expected) Then(put) Else(get)`, the
//!   `get` telling a conflict from a deletion;
//! - delete: `If(mod_revision(key) == expected) Then(delete) Else(get)`.
//!
//! Watches start at `after + 1` and end with [`StoreError::Compacted`] when
//! etcd has compacted that revision away, or with
//! [`StoreError::Unavailable`] when the connection is lost (the caller lists
//! and watches again; the gRPC channel reconnects by itself).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KeyValue, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use futures_util::stream;

use super::{
    checks, Datastore, Kind, Listing, Object, Revision, StoreError, WatchEvent, WatchStream, Write,
};

/// Root of every key felix writes.
pub const KEY_ROOT: &str = "/felix/v1";

/// Objects fetched per range request when listing; pages are read at the
/// first page's revision, so the listing is one consistent snapshot.
const LIST_PAGE: i64 = 500;

/// How to reach an etcd cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `HOST:PORT` of each member.
    pub endpoints: Vec<String>,
    /// TLS (HTTPS to every endpoint) when set.
    pub tls: Option<EtcdTls>,
    /// etcd user/password authentication when set.
    pub auth: Option<EtcdAuth>,
    /// Deadline of one request; a request past it fails with `Unavailable`.
    pub request_timeout: Duration,
    /// Deadline of establishing a connection to a member.
    pub connect_timeout: Duration,
}

/// PEM files for TLS to etcd.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EtcdTls {
    /// CA bundle that signs the servers' certificates (system roots are not
    /// used: etcd clusters run their own CA).
    pub ca: Option<PathBuf>,
    /// Client certificate and key, for clusters with `--client-cert-auth`.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// etcd user/password authentication (`etcdctl user add`, `auth enable`).
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdAuth {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for EtcdAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl EtcdConfig {
    /// Endpoints with default timeouts, no TLS, no auth.
    pub fn new(endpoints: Vec<String>) -> Self {
        EtcdConfig {
            endpoints,
            tls: None,
            auth: None,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
        }
    }

    /// Parses `etcd://HOST:PORT[,HOST:PORT…][?OPTION=VALUE&…]`. Options:
    /// `ca`, `cert`, `key` (PEM file paths; any of them turns TLS on),
    /// `username` with `password` or `password-file` (a file whose first
    /// line is the password: keeps it out of process listings), `timeout`
    /// (request deadline in seconds). Values are percent-decoded.
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        let invalid = |why: String| StoreError::Invalid(format!("etcd URL {url:?}: {why}"));
        let rest = url
            .strip_prefix("etcd://")
            .ok_or_else(|| invalid("must start with etcd://".into()))?;
        let (hosts, query) = match rest.split_once('?') {
            Some((h, q)) => (h, q),
            None => (rest, ""),
        };
        let hosts = hosts.strip_suffix('/').unwrap_or(hosts);
        let mut endpoints = Vec::new();
        for host in hosts.split(',') {
            check_endpoint(host).map_err(|why| invalid(format!("endpoint {host:?}: {why}")))?;
            endpoints.push(host.to_owned());
        }
        let mut config = EtcdConfig::new(endpoints);
        let mut tls = EtcdTls::default();
        let (mut username, mut password) = (None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| invalid(format!("option {pair:?} has no '='")))?;
            let v = percent_decode(v).map_err(|why| invalid(format!("option {k}: {why}")))?;
            match k {
                "ca" => tls.ca = Some(PathBuf::from(v)),
                "cert" => tls.cert = Some(PathBuf::from(v)),
                "key" => tls.key = Some(PathBuf::from(v)),
                "username" => username = Some(v),
                "password" => password = Some(v),
                "password-file" => {
                    let text = std::fs::read_to_string(&v)
                        .map_err(|e| invalid(format!("password-file {v:?}: {e}")))?;
                    password = Some(text.lines().next().unwrap_or_default().to_owned());
                }
                "timeout" => {
                    let secs: f64 = v
                        .parse()
                        .ok()
                        .filter(|s: &f64| s.is_finite() && *s > 0.0 && *s <= 3600.0)
                        .ok_or_else(|| {
                            invalid(format!("timeout {v:?} is not 0 < seconds <= 3600"))
                        })?;
                    config.request_timeout = Duration::from_secs_f64(secs);
                }
                other => {
                    return Err(invalid(format!(
                        "unknown option {other:?} (known: ca, cert, key, username, password, \
                         password-file, timeout)"
                    )))
                }
            }
        }
        if tls != EtcdTls::default() {
            if tls.cert.is_some() != tls.key.is_some() {
                return Err(invalid("cert and key must be given together".into()));
            }
            config.tls = Some(tls);
        }
        config.auth = match (username, password) {
            (Some(username), Some(password)) => Some(EtcdAuth { username, password }),
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "username and password must be given together".into(),
                ))
            }
        };
        Ok(config)
    }

    /// The `etcd://` URL of this configuration (secrets left out).
    pub fn url(&self) -> String {
        format!("etcd://{}", self.endpoints.join(","))
    }
}

fn check_endpoint(host: &str) -> Result<(), String> {
    let (name, port) = host
        .rsplit_once(':')
        .ok_or_else(|| "expected HOST:PORT".to_owned())?;
    if name.is_empty() || name.contains(['/', '@', ' ']) {
        return Err("bad host".into());
    }
    if name.contains(':') && !(name.starts_with('[') && name.ends_with(']')) {
        return Err("an IPv6 address must be in brackets: [ADDR]:PORT".into());
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(()),
        _ => Err(format!("bad port {port:?}")),
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent escape in {s:?}"))?;
                out.push(hex);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

/// The etcd v3 datastore.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    url: String,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").field("url", &self.url).finish()
    }
}

impl EtcdStore {
    /// Connects (lazily: members that are down are retried on each request)
    /// and, with auth configured, logs in. Fails with `Invalid` for
    /// unreadable TLS files and `Unavailable` when login is impossible.
    pub async fn connect(config: EtcdConfig) -> Result<Self, StoreError> {
        if config.endpoints.is_empty() {
            return Err(StoreError::Invalid("etcd: no endpoints".into()));
        }
        let mut options = ConnectOptions::new()
            .with_timeout(config.request_timeout)
            .with_connect_timeout(config.connect_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_require_leader(true);
        let scheme = if let Some(tls) = &config.tls {
            options = options.with_tls(tls_options(tls)?);
            "https"
        } else {
            "http"
        };
        if let Some(auth) = &config.auth {
            options = options
                .with_user(auth.username.clone(), auth.password.clone())
                .with_auto_token_refresh(true);
        }
        let endpoints: Vec<String> = config
            .endpoints
            .iter()
            .map(|e| format!("{scheme}://{e}"))
            .collect();
        let client = Client::connect(&endpoints, Some(options))
            .await
            .map_err(|e| unavailable("connect", e))?;
        Ok(EtcdStore {
            client,
            url: config.url(),
        })
    }

    /// The underlying client (tests use it to plant raw keys and compact).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs `op` on the object's key if its `mod_revision` is still
    /// `expected`; otherwise reads the key to tell `Conflict` from
    /// `NotFound`. Returns the store revision of the write.
    async fn compare_and_swap(
        &self,
        what: &str,
        kind: Kind,
        name: &str,
        expected: &Revision,
        op: TxnOp,
    ) -> Result<i64, StoreError> {
        let expected_rev = parse_revision(kind, name, expected)?;
        let k = key(kind, name);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                k.clone(),
                CompareOp::Equal,
                expected_rev,
            )])
            .and_then([op])
            .or_else([TxnOp::get(k, Some(GetOptions::new().with_keys_only()))]);
        let resp = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(|e| map_error(what, e))?;
        cas_outcome(kind, name, expected, resp)
    }

    /// One listing, page by page at the first page's revision.
    async fn list_snapshot(
        &self,
        kind: Kind,
        name_prefix: &str,
    ) -> Result<Result<Listing, StoreError>, etcd_client::Error> {
        let prefix = format!("{}{name_prefix}", kind_prefix(kind));
        let end = prefix_end(prefix.as_bytes());
        let mut kv = self.client.kv_client();
        let mut start = prefix.into_bytes();
        let mut at: Option<i64> = None;
        let mut objects = Vec::new();
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE);
            if let Some(rev) = at {
                options = options.with_revision(rev);
            }
            let resp = kv.get(start.clone(), Some(options)).await?;
            let rev = *at.get_or_insert(resp.header().map(|h| h.revision()).unwrap_or_default());
            for kv in resp.kvs() {
                match object_from_kv(kind, kv) {
                    Ok(object) => objects.push(object),
                    Err(e) => return Ok(Err(e)),
                }
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => {
                    objects.sort_by(|a, b| a.name.cmp(&b.name));
                    return Ok(Ok(Listing {
                        objects,
                        revision: revision(rev),
                    }));
                }
            }
        }
    }
}

fn tls_options(tls: &EtcdTls) -> Result<TlsOptions, StoreError> {
    let read = |what: &str, path: &PathBuf| {
        std::fs::read(path).map_err(|e| {
            StoreError::Invalid(format!("etcd TLS {what} file {}: {e}", path.display()))
        })
    };
    let mut options = TlsOptions::new();
    if let Some(ca) = &tls.ca {
        options = options.ca_certificate(Certificate::from_pem(read("ca", ca)?));
    }
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        options = options.identity(Identity::from_pem(read("cert", cert)?, read("key", key)?));
    }
    Ok(options)
}

/// The key of one object.
pub fn key(kind: Kind, name: &str) -> String {
    format!("{KEY_ROOT}/{}/{name}", kind.plural())
}

fn kind_prefix(kind: Kind) -> String {
    format!("{KEY_ROOT}/{}/", kind.plural())
}

/// The first key after every key starting with `prefix` (etcd's range end
/// for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn parse_revision(kind: Kind, name: &str, rev: &Revision) -> Result<i64, StoreError> {
    rev.0.parse::<i64>().ok().filter(|r| *r > 0).ok_or_else(|| {
        StoreError::Invalid(format!(
            "{kind} {name:?}: {:?} is not an etcd revision (a positive integer)",
            rev.0
        ))
    })
}

fn revision(r: i64) -> Revision {
    Revision(r.to_string())
}

/// Maps a client error: transport failures, deadlines, leader loss and
/// refused credentials are all `Unavailable` (the message says which).
fn map_error(context: &str, e: etcd_client::Error) -> StoreError {
    unavailable(context, e)
}

fn unavailable(context: &str, e: etcd_client::Error) -> StoreError {
    StoreError::Unavailable(format!("etcd {context}: {e}"))
}

/// A transaction with more operations than the server's `--max-txn-ops`
/// (gRPC INVALID_ARGUMENT, "etcdserver: too many operations in txn
/// request"); refused before anything is applied.
fn is_too_many_ops(e: &etcd_client::Error) -> bool {
    e.to_string().contains("too many operations in txn request")
}

/// A read at a revision etcd has compacted away (gRPC OUT_OF_RANGE, "mvcc:
/// required revision has been compacted").
fn is_compacted(e: &etcd_client::Error) -> bool {
    e.to_string()
        .contains("required revision has been compacted")
}

fn object_from_kv(kind: Kind, kv: &KeyValue) -> Result<Object, StoreError> {
    let prefix = kind_prefix(kind);
    let name = kv
        .key()
        .strip_prefix(prefix.as_bytes())
        .and_then(|n| std::str::from_utf8(n).ok())
        .ok_or_else(|| StoreError::Corrupt {
            kind,
            name: String::from_utf8_lossy(kv.key()).into_owned(),
            reason: "key outside the kind's prefix or not UTF-8".into(),
        })?
        .to_owned();
    Ok(Object {
        kind,
        name,
        value: kv.value().to_vec(),
        revision: revision(kv.mod_revision()),
    })
}

/// Outcome of a compare-and-swap transaction whose `Else` branch reads the
/// key: `Ok(header revision)` or the error the read explains.
fn cas_outcome(
    kind: Kind,
    name: &str,
    expected: &Revision,
    resp: etcd_client::TxnResponse,
) -> Result<i64, StoreError> {
    let header_rev = resp.header().map(|h| h.revision()).unwrap_or_default();
    if resp.succeeded() {
        return Ok(header_rev);
    }
    let exists = resp.op_responses().iter().any(|op| match op {
        TxnOpResponse::Get(get) => !get.kvs().is_empty(),
        _ => false,
    });
    Err(if exists {
        StoreError::Conflict {
            kind,
            name: name.to_owned(),
            expected: expected.clone(),
        }
    } else {
        StoreError::NotFound {
            kind,
            name: name.to_owned(),
        }
    })
}

/// The error of the first write of a failed [`Datastore::write_all`]
/// transaction whose condition does not hold, from the transaction's
/// failure branch (a keys-only get of every key, at the same revision).
fn write_all_failure(writes: &[Write], resp: &etcd_client::TxnResponse) -> StoreError {
    let found = resp.op_responses().into_iter().map(|op| match op {
        TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.mod_revision()),
        _ => None,
    });
    for (w, have) in writes.iter().zip(found) {
        let (kind, name) = (w.kind(), w.name().to_owned());
        match (w, have) {
            (Write::Create { .. }, Some(_)) => return StoreError::AlreadyExists { kind, name },
            (Write::Update { .. } | Write::Delete { .. }, None) => {
                return StoreError::NotFound { kind, name }
            }
            (Write::Update { expected, .. } | Write::Delete { expected, .. }, Some(have))
                if expected.0 != have.to_string() =>
            {
                return StoreError::Conflict {
                    kind,
                    name,
                    expected: expected.clone(),
                }
            }
            _ => {}
        }
    }
    // Not reached: the failure branch reads what the compares saw.
    StoreError::Unavailable("etcd refused a transaction whose conditions all hold".into())
}

#[async_trait::async_trait]
impl Datastore for EtcdStore {
    async fn get(&self, kind: Kind, name: &str) -> Result<Object, StoreError> {
        checks::name(kind, name)?;
        let resp = self
            .client
            .kv_client()
            .get(key(kind, name), None)
            .await
            .map_err(|e| map_error("get", e))?;
        match resp.kvs().first() {
            Some(kv) => object_from_kv(kind, kv),
            None => Err(StoreError::NotFound {
                kind,
                name: name.to_owned(),
            }),
        }
    }

    async fn list(&self, kind: Kind, name_prefix: &str) -> Result<Listing, StoreError> {
        // A compaction between two pages makes the snapshot revision
        // unreadable: start again at the new head, a bounded number of times.
        let mut attempts = 0;
        loop {
            match self.list_snapshot(kind, name_prefix).await {
                Err(e) if is_compacted(&e) && attempts < 3 => attempts += 1,
                other => return other.map_err(|e| map_error("list", e))?,
            }
        }
    }

    async fn list_names(&self, kind: Kind, name_prefix: &str) -> Result<Vec<String>, StoreError> {
        // Keys only, page by page; no snapshot revision is needed (nothing
        // watches from a list of names), so a compaction cannot break it.
        let prefix = kind_prefix(kind);
        let end = prefix_end(format!("{prefix}{name_prefix}").as_bytes());
        let mut start = format!("{prefix}{name_prefix}").into_bytes();
        let mut kv = self.client.kv_client();
        let mut names = Vec::new();
        loop {
            let options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE)
                .with_keys_only();
            let resp = kv
                .get(start.clone(), Some(options))
                .await
                .map_err(|e| map_error("list", e))?;
            for kv in resp.kvs() {
                names.push(object_from_kv(kind, kv)?.name);
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => return Ok(names),
            }
        }
    }

    async fn create(&self, kind: Kind, name: &str, value: Vec<u8>) -> Result<Revision, StoreError> {
        checks::name(kind, name)?;
        let k = key(kind, name);
        let txn = Txn::new()
            .when([Compare::create_revision(k.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(k, value, None)]);
        let resp = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(|e| map_error("create", e))?;
        if resp.succeeded() {
            Ok(revision(
                resp.header().map(|h| h.revision()).unwrap_or_default(),
            ))
        } else {
            Err(StoreError::AlreadyExists {
                kind,
                name: name.to_owned(),
            })
        }
    }

    async fn update(
        &self,
        kind: Kind,
        name: &str,
        value: Vec<u8>,
        expected: &Revision,
    ) -> Result<Revision, StoreError> {
        checks::name(kind, name)?;
        let put = TxnOp::put(key(kind, name), value, None);
        self.compare_and_swap("update", kind, name, expected, put)
            .await
            .map(revision)
    }

    async fn delete(&self, kind: Kind, name: &str, expected: &Revision) -> Result<(), StoreError> {
        checks::name(kind, name)?;
        let delete = TxnOp::delete(key(kind, name), None);
        self.compare_and_swap("delete", kind, name, expected, delete)
            .await
            .map(|_| ())
    }

    fn transactional(&self) -> bool {
        true
    }

    async fn write_all(&self, writes: Vec<Write>) -> Result<Vec<Revision>, StoreError> {
        let mut compares = Vec::with_capacity(writes.len());
        let mut puts = Vec::with_capacity(writes.len());
        let mut gets = Vec::with_capacity(writes.len());
        for w in &writes {
            checks::name(w.kind(), w.name())?;
            let k = key(w.kind(), w.name());
            let compare = match w.expected() {
                None => Compare::create_revision(k.clone(), CompareOp::Equal, 0),
                Some(expected) => {
                    let rev = parse_revision(w.kind(), w.name(), expected)?;
                    Compare::mod_revision(k.clone(), CompareOp::Equal, rev)
                }
            };
            compares.push(compare);
            puts.push(match w {
                Write::Create { value, .. } | Write::Update { value, .. } => {
                    TxnOp::put(k.clone(), value.clone(), None)
                }
                Write::Delete { .. } => TxnOp::delete(k.clone(), None),
            });
            gets.push(TxnOp::get(k, Some(GetOptions::new().with_keys_only())));
        }
        let txn = Txn::new().when(compares).and_then(puts).or_else(gets);
        let resp =
            self.client
                .kv_client()
                .txn(txn)
                .await
                .map_err(|e| match is_too_many_ops(&e) {
                    true => StoreError::TooManyWrites {
                        writes: writes.len(),
                    },
                    false => map_error("write_all", e),
                })?;
        if !resp.succeeded() {
            return Err(write_all_failure(&writes, &resp));
        }
        let rev = revision(resp.header().map(|h| h.revision()).unwrap_or_default());
        Ok(vec![rev; writes.len()])
    }

    async fn watch(&self, kind: Kind, after: Option<&Revision>) -> Result<WatchStream, StoreError> {
        let after = match after {
            Some(after) => after
                .0
                .parse::<i64>()
                .ok()
                .filter(|r| *r >= 0)
                .ok_or_else(|| StoreError::Invalid(format!("{after:?} is not an etcd revision")))?,
            // "From now" is from the current revision, read first: a watch
            // created without a start revision races with writes sent on
            // other gRPC streams right after this call returns.
            None => self
                .client
                .kv_client()
                .get(
                    kind_prefix(kind),
                    Some(GetOptions::new().with_keys_only().with_limit(1)),
                )
                .await
                .map_err(|e| map_error("watch", e))?
                .header()
                .map(|h| h.revision())
                .unwrap_or_default(),
        };
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(after + 1);
        let watch = self
            .client
            .watch_client()
            .watch(kind_prefix(kind), Some(options))
            .await
            .map_err(|e| map_error("watch", e))?;
        let state = EtcdWatch {
            kind,
            after: revision(after),
            watch,
            pending: VecDeque::new(),
            done: false,
        };
        Ok(Box::pin(stream::unfold(state, EtcdWatch::next)))
    }
}

/// The state of one watch stream.
struct EtcdWatch {
    kind: Kind,
    /// The last revision delivered (or the start): what `Compacted` names.
    after: Revision,
    /// Owns the request side too: dropping it cancels the watch.
    watch: etcd_client::WatchStream,
    pending: VecDeque<Result<WatchEvent, StoreError>>,
    done: bool,
}

impl EtcdWatch {
    async fn next(mut self) -> Option<(Result<WatchEvent, StoreError>, Self)> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some((item, self));
            }
            if self.done {
                return None;
            }
            let end = match self.watch.message().await {
                Ok(Some(resp)) if resp.compact_revision() != 0 => {
                    StoreError::Compacted(self.after.clone())
                }
                Ok(Some(resp)) if resp.canceled() => StoreError::Unavailable(format!(
                    "etcd cancelled the watch: {}",
                    resp.cancel_reason()
                )),
                Ok(Some(resp)) => {
                    for event in resp.events() {
                        let Some(kv) = event.kv() else { continue };
                        let item = match event.event_type() {
                            EventType::Put => object_from_kv(self.kind, kv).map(WatchEvent::Put),
                            EventType::Delete => {
                                object_name(self.kind, kv).map(|name| WatchEvent::Deleted {
                                    kind: self.kind,
                                    name,
                                    revision: revision(kv.mod_revision()),
                                })
                            }
                        };
                        if let Ok(WatchEvent::Put(Object { revision: r, .. }))
                        | Ok(WatchEvent::Deleted { revision: r, .. }) = &item
                        {
                            self.after = r.clone();
                        }
                        self.pending.push_back(item);
                    }
                    continue;
                }
                Ok(None) => StoreError::Unavailable("etcd closed the watch stream".into()),
                Err(e) => map_error("watch", e),
            };
            self.done = true;
            self.pending.push_back(Err(end));
        }
    }
}

fn object_name(kind: Kind, kv: &KeyValue) -> Result<String, StoreError> {
    kv.key()
        .strip_prefix(kind_prefix(kind).as_bytes())
        .and_then(|n| std::str::from_utf8(n).ok())
        .map(str::to_owned)
        .ok_or_else(|| StoreError::Corrupt {
            kind,
            name: String::from_utf8_lossy(kv.key()).into_owned(),
            reason: "key outside the kind's prefix or not UTF-8".into(),
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn url_with_endpoints_tls_and_auth() {
        let dir = tempfile_dir();
        let pw = dir.join("pw");
        std::fs::write(&pw, "s3cret\nignored\n").unwrap();
        let url = format!(
            "etcd://10.0.0.1:2379,[fd00::1]:2379,etcd-2.example:2379?ca=/etc/ca%20x.pem&cert=/c.pem\
             &key=/k.pem&username=felix&password-file={}&timeout=1.5",
            pw.display()
        );
        let c = EtcdConfig::from_url(&url).unwrap();
        assert_eq!(
            c.endpoints,
            ["10.0.0.1:2379", "[fd00::1]:2379", "etcd-2.example:2379"]
        );
        let tls = c.tls.unwrap();
        assert_eq!(tls.ca, Some(PathBuf::from("/etc/ca x.pem")));
        assert_eq!(tls.cert, Some(PathBuf::from("/c.pem")));
        assert_eq!(tls.key, Some(PathBuf::from("/k.pem")));
        let auth = c.auth.unwrap();
        assert_eq!(
            (auth.username.as_str(), auth.password.as_str()),
            ("felix", "s3cret")
        );
        assert!(!format!("{auth:?}").contains("s3cret"));
        assert_eq!(c.request_timeout, Duration::from_millis(1500));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn plain_url_has_no_tls_nor_auth() {
        let c = EtcdConfig::from_url("etcd://127.0.0.1:2379").unwrap();
        assert_eq!(c.endpoints, ["127.0.0.1:2379"]);
        assert_eq!((&c.tls, &c.auth), (&None, &None));
        assert_eq!(c.url(), "etcd://127.0.0.1:2379");
    }

    #[test]
    fn bad_urls_are_refused_with_the_reason() {
        for (url, why) in [
            ("http://127.0.0.1:2379", "etcd://"),
            ("etcd://", "HOST:PORT"),
            ("etcd://host", "HOST:PORT"),
            ("etcd://host:0", "bad port"),
            ("etcd://host:99999", "bad port"),
            ("etcd://fd00::1:2379", "brackets"),
            ("etcd://a:1,,b:2", "HOST:PORT"),
            ("etcd://a:1?bogus=1", "unknown option"),
            ("etcd://a:1?ca", "no '='"),
            ("etcd://a:1?cert=/c", "together"),
            ("etcd://a:1?username=u", "together"),
            ("etcd://a:1?timeout=-1", "timeout"),
            ("etcd://a:1?ca=%zz", "percent"),
            (
                "etcd://a:1?password-file=/nonexistent/pw&username=u",
                "password-file",
            ),
        ] {
            match EtcdConfig::from_url(url) {
                Err(StoreError::Invalid(msg)) => assert!(msg.contains(why), "{url}: {msg}"),
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    #[test]
    fn keys_and_prefix_ranges() {
        assert_eq!(
            key(Kind::IpamBlock, "10-0-0-0-26"),
            "/felix/v1/ipamblocks/10-0-0-0-26"
        );
        assert_eq!(
            prefix_end(b"/felix/v1/ipamblocks/"),
            b"/felix/v1/ipamblocks0"
        );
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("felix-etcd-url-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
