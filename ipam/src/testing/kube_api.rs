//! A mock Kubernetes API server for felix's custom resources, as a `tower`
//! service behind a real `kube::Client`. No API server can run on these
//! machines, so the `kubernetes` backend is tested against the API's wire
//! contract as the Kubernetes documentation states it (API concepts:
//! resource versions, watches, 410 Gone, bookmarks; API conventions:
//! `Status` objects, optimistic concurrency):
//!
//! - cluster-scoped resources at `/apis/crd.felix-rs.io/v1/<plural>[/<name>]`
//!   for the plurals of [`Kind`]; anything else is 404 NotFound;
//! - one store-wide `resourceVersion` counter, as etcd's revision is;
//! - POST 201 / 409 `AlreadyExists`; PUT 200 / 404 / 409 `Conflict` on a
//!   stale `metadata.resourceVersion` / 422 without one; DELETE 200 / 404 /
//!   409 `Conflict` when `preconditions.resourceVersion` is stale;
//!   malformed bodies 400, names that are not DNS-1123 subdomains and specs
//!   that are not objects 422;
//! - lists carry `metadata.resourceVersion`, items sorted by name, `limit`
//!   truncates and sets `metadata.continue`; a `continue` token gives the
//!   next page at the first page's resourceVersion while nothing has
//!   changed since, and is 410 `Expired` after any change (a real server
//!   keeps serving the first page's snapshot until compaction, then
//!   answers the same 410), or when [`MockApiServer::expire_next_continue`]
//!   says so;
//! - `?watch=true&resourceVersion=R` streams newline-delimited
//!   `{"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR","object":…}` events of
//!   the changes after R, then live ones; without R (or R = "0") it first
//!   sends every current object as ADDED; a DELETED object carries the
//!   deletion's resourceVersion; a bookmark follows the replay when
//!   `allowWatchBookmarks=true`; R older than the retained history is an
//!   ERROR event with a 410 `Expired` Status (or, switched by
//!   [`MockApiServer::set_gone_as_http_status`], an HTTP 410 answer).
//!
//! What a real server does that this one does not: authentication and
//! RBAC, admission, schema validation beyond "spec is an object",
//! `timeoutSeconds` (a watch lasts until [`MockApiServer::close_watches_after`]
//! ends it), continuing a list across changes, field/label selectors,
//! server-side apply.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::store::kubernetes::{GROUP, VERSION};
use crate::store::Kind;

type MockBody = UnsyncBoxBody<Bytes, Infallible>;

/// The mock API server; clones share one state.
#[derive(Clone)]
pub struct MockApiServer {
    state: Arc<Mutex<ApiState>>,
}

impl Default for MockApiServer {
    fn default() -> Self {
        MockApiServer::new()
    }
}

/// Where the resourceVersion counter starts: a real cluster's is never 0
/// (the store holds other objects), and "0" means "any version" in lists
/// and watches.
const FIRST_RESOURCE_VERSION: u64 = 1000;

#[derive(Default)]
struct ApiState {
    resource_version: u64,
    uids: u64,
    /// (plural, name) -> full object JSON.
    objects: BTreeMap<(String, String), Value>,
    /// Changes after `compacted_through`, oldest first.
    history: Vec<Change>,
    compacted_through: u64,
    watchers: Vec<Watcher>,
    gone_as_http_status: bool,
    close_watches_after: Option<usize>,
    fail_next: Option<(u16, String)>,
    expire_next_continue: bool,
    requests: Vec<String>,
}

struct Change {
    resource_version: u64,
    plural: String,
    kind: &'static str,
    object: Value,
}

struct Watcher {
    plural: String,
    tx: mpsc::UnboundedSender<Bytes>,
    sent: usize,
}

impl MockApiServer {
    pub fn new() -> Self {
        let state = ApiState {
            resource_version: FIRST_RESOURCE_VERSION,
            compacted_through: FIRST_RESOURCE_VERSION,
            ..ApiState::default()
        };
        MockApiServer {
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// A `kube::Client` whose requests this server answers.
    pub fn client(&self) -> kube::Client {
        let server = self.clone();
        let service = tower::service_fn(move |req: Request<kube::client::Body>| {
            let server = server.clone();
            async move { Ok::<_, Infallible>(server.handle(req).await) }
        });
        kube::Client::new(service, "default")
    }

    /// Forgets the change history up to the current resourceVersion, as the
    /// API server's watch cache and etcd's compaction do: watches from an
    /// older version get 410 Gone.
    pub fn compact(&self) {
        let mut s = self.lock();
        s.compacted_through = s.resource_version;
        s.history.clear();
    }

    /// Answers too-old watch versions with HTTP 410 instead of a 200 with
    /// an ERROR event (API servers do both, depending on where the watch
    /// is served from).
    pub fn set_gone_as_http_status(&self, on: bool) {
        self.lock().gone_as_http_status = on;
    }

    /// Ends every watch response after `events` events, as a server does
    /// when a watch's `timeoutSeconds` runs out; `None`: never.
    pub fn close_watches_after(&self, events: Option<usize>) {
        self.lock().close_watches_after = events;
    }

    /// Stores an object as given, bypassing every check (a corrupt object
    /// written by another client, or by hand with `kubectl edit`).
    pub fn put_raw(&self, plural: &str, name: &str, mut object: Value) {
        let mut s = self.lock();
        s.resource_version += 1;
        let rv = s.resource_version;
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), json!(rv.to_string()));
        }
        s.objects
            .insert((plural.to_owned(), name.to_owned()), object.clone());
        s.record(plural, "ADDED", object);
    }

    /// Answers the next request with this HTTP status and body instead of
    /// serving it (an overloaded, forbidden or broken server).
    pub fn fail_next(&self, code: u16, body: &str) {
        self.lock().fail_next = Some((code, body.to_owned()));
    }

    /// Answers the next list request that carries a `continue` token with
    /// 410 `Expired` (as a server does once the token's snapshot is
    /// compacted).
    pub fn expire_next_continue(&self) {
        self.lock().expire_next_continue = true;
    }

    /// The stored object, as the API server holds it.
    pub fn object(&self, plural: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&(plural.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Every request so far, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// Open watch responses.
    pub fn open_watches(&self) -> usize {
        let mut s = self.lock();
        s.watchers.retain(|w| !w.tx.is_closed());
        s.watchers.len()
    }

    fn lock(&self) -> MutexGuard<'_, ApiState> {
        // A panicking test thread must not hide the state from the others.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn handle(&self, req: Request<kube::client::Body>) -> Response<MockBody> {
        let (parts, body) = req.into_parts();
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return status(400, "BadRequest", &format!("unreadable body: {e}"), None),
        };
        let path = parts.uri.path().to_owned();
        let query = parse_query(parts.uri.query().unwrap_or(""));
        let mut s = self.lock();
        s.requests.push(format!(
            "{} {}",
            parts.method,
            parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("")
        ));
        if let Some((code, body)) = s.fail_next.take() {
            let mut response = Response::new(UnsyncBoxBody::new(Full::new(Bytes::from(body))));
            *response.status_mut() =
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return response;
        }
        let prefix = format!("/apis/{GROUP}/{VERSION}/");
        let Some(rest) = path.strip_prefix(&prefix) else {
            return not_found_path(&path);
        };
        let (plural, name) = match rest.split_once('/') {
            Some((p, n)) if !n.is_empty() && !n.contains('/') => (p, Some(n)),
            Some(_) => return not_found_path(&path),
            None => (rest, None),
        };
        let Some(kind) = Kind::ALL.into_iter().find(|k| k.plural() == plural) else {
            return not_found_path(&path);
        };
        match (&parts.method, name) {
            (&Method::GET, None) if query.get("watch").is_some_and(|w| w == "true" || w == "1") => {
                s.watch(kind, &query)
            }
            (&Method::GET, None) => s.list(kind, &query),
            (&Method::GET, Some(name)) => s.get(kind, name),
            (&Method::POST, None) => s.create(kind, &body),
            (&Method::PUT, Some(name)) => s.replace(kind, name, &body),
            (&Method::DELETE, Some(name)) => s.delete(kind, name, &body),
            (m, _) => status(
                405,
                "MethodNotAllowed",
                &format!("{m} is not supported here"),
                None,
            ),
        }
    }
}

impl ApiState {
    fn next_version(&mut self) -> u64 {
        self.resource_version += 1;
        self.resource_version
    }

    /// Records a change and sends it to the open watches of its plural.
    fn record(&mut self, plural: &str, kind: &'static str, object: Value) {
        let line = event_line(kind, &object);
        self.history.push(Change {
            resource_version: self.resource_version,
            plural: plural.to_owned(),
            kind,
            object,
        });
        let limit = self.close_watches_after;
        self.watchers.retain_mut(|w| {
            if w.plural != plural {
                return !w.tx.is_closed();
            }
            if w.tx.send(line.clone()).is_err() {
                return false;
            }
            w.sent += 1;
            limit.is_none_or(|l| w.sent < l)
        });
    }

    fn get(&self, kind: Kind, name: &str) -> Response<MockBody> {
        match self
            .objects
            .get(&(kind.plural().to_owned(), name.to_owned()))
        {
            Some(o) => json_response(200, o),
            None => not_found(kind, name),
        }
    }

    fn list(&mut self, kind: Kind, query: &BTreeMap<String, String>) -> Response<MockBody> {
        // A token is `RESOURCEVERSION-OFFSET` of the first page.
        let offset = match query.get("continue") {
            None => 0,
            Some(token) => {
                let parsed = token.split_once('-').and_then(|(rv, at)| {
                    Some((rv.parse::<u64>().ok()?, at.parse::<usize>().ok()?))
                });
                let expire = std::mem::take(&mut self.expire_next_continue);
                match parsed {
                    Some((rv, at)) if rv == self.resource_version && !expire => at,
                    _ => {
                        return status(
                            410,
                            "Expired",
                            "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                            None,
                        )
                    }
                }
            }
        };
        let mut items: Vec<Value> = self
            .objects
            .iter()
            .filter(|((p, _), _)| p == kind.plural())
            .map(|(_, o)| o.clone())
            .skip(offset)
            .collect();
        let mut metadata = json!({ "resourceVersion": self.resource_version.to_string() });
        if let Some(limit) = query.get("limit").and_then(|l| l.parse::<usize>().ok()) {
            if limit > 0 && items.len() > limit {
                metadata["continue"] =
                    json!(format!("{}-{}", self.resource_version, offset + limit));
                metadata["remainingItemCount"] = json!(items.len() - limit);
                items.truncate(limit);
            }
        }
        json_response(
            200,
            &json!({
                "apiVersion": format!("{GROUP}/{VERSION}"),
                "kind": format!("{}List", kind.crd_kind()),
                "metadata": metadata,
                "items": items,
            }),
        )
    }

    fn create(&mut self, kind: Kind, body: &[u8]) -> Response<MockBody> {
        let (mut object, name) = match parse_object(kind, body) {
            Ok(o) => o,
            Err(r) => return r.response(),
        };
        if object["metadata"]
            .get("resourceVersion")
            .and_then(Value::as_str)
            .is_some_and(|rv| !rv.is_empty())
        {
            return status(
                500,
                "InternalError",
                "resourceVersion should not be set on objects to be created",
                None,
            );
        }
        let key = (kind.plural().to_owned(), name.clone());
        if self.objects.contains_key(&key) {
            return status(
                409,
                "AlreadyExists",
                &format!("{}.{GROUP} \"{name}\" already exists", kind.plural()),
                Some((kind, &name)),
            );
        }
        let rv = self.next_version();
        self.uids += 1;
        let meta = &mut object["metadata"];
        meta["resourceVersion"] = json!(rv.to_string());
        meta["uid"] = json!(format!("00000000-0000-4000-8000-{:012x}", self.uids));
        meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        meta["generation"] = json!(1);
        if let Some(o) = object.as_object_mut() {
            o.remove("status");
        }
        self.objects.insert(key, object.clone());
        self.record(kind.plural(), "ADDED", object.clone());
        json_response(201, &object)
    }

    fn replace(&mut self, kind: Kind, url_name: &str, body: &[u8]) -> Response<MockBody> {
        let (mut object, name) = match parse_object(kind, body) {
            Ok(o) => o,
            Err(r) => return r.response(),
        };
        if name != url_name {
            return status(
                400,
                "BadRequest",
                &format!("the name of the object ({name}) does not match the name on the URL ({url_name})"),
                None,
            );
        }
        let key = (kind.plural().to_owned(), name.clone());
        let Some(current) = self.objects.get(&key).cloned() else {
            return not_found(kind, &name);
        };
        let given = object["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if given.is_empty() {
            return status(
                422,
                "Invalid",
                &format!(
                    "{}.{GROUP} \"{name}\" is invalid: metadata.resourceVersion: Invalid value: \
                     0x0: must be specified for an update",
                    kind.crd_kind()
                ),
                Some((kind, &name)),
            );
        }
        if current["metadata"]["resourceVersion"].as_str() != Some(given.as_str()) {
            return conflict(
                kind,
                &name,
                "the object has been modified; please apply your changes to the latest version \
                 and try again",
            );
        }
        let rv = self.next_version();
        let generation = current["metadata"]["generation"].as_u64().unwrap_or(1)
            + u64::from(current.get("spec") != object.get("spec"));
        let meta = &mut object["metadata"];
        meta["resourceVersion"] = json!(rv.to_string());
        meta["uid"] = current["metadata"]["uid"].clone();
        meta["creationTimestamp"] = current["metadata"]["creationTimestamp"].clone();
        meta["generation"] = json!(generation);
        self.objects.insert(key, object.clone());
        self.record(kind.plural(), "MODIFIED", object.clone());
        json_response(200, &object)
    }

    fn delete(&mut self, kind: Kind, name: &str, body: &[u8]) -> Response<MockBody> {
        let options: Value = if body.is_empty() {
            json!({})
        } else {
            match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => return status(400, "BadRequest", &format!("DeleteOptions: {e}"), None),
            }
        };
        let key = (kind.plural().to_owned(), name.to_owned());
        let Some(mut object) = self.objects.get(&key).cloned() else {
            return not_found(kind, name);
        };
        let have_rv = object["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if let Some(want) = options["preconditions"]["resourceVersion"].as_str() {
            if want != have_rv {
                return conflict(
                    kind,
                    name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {want}, \
                         ResourceVersion in object meta: {have_rv}"
                    ),
                );
            }
        }
        if let Some(want) = options["preconditions"]["uid"].as_str() {
            let have = object["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if want != have {
                return conflict(
                    kind,
                    name,
                    &format!("Precondition failed: UID in precondition: {want}, UID in object meta: {have}"),
                );
            }
        }
        self.objects.remove(&key);
        let rv = self.next_version();
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let uid = object["metadata"]["uid"].clone();
        self.record(kind.plural(), "DELETED", object);
        json_response(
            200,
            &json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": { "name": name, "group": GROUP, "kind": kind.plural(), "uid": uid },
            }),
        )
    }

    fn watch(&mut self, kind: Kind, query: &BTreeMap<String, String>) -> Response<MockBody> {
        let plural = kind.plural();
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        let from = query
            .get("resourceVersion")
            .map(String::as_str)
            .unwrap_or("");
        let mut sent = 0usize;
        if from.is_empty() || from == "0" {
            // "Get state and start at most recent": synthetic ADDED events.
            for ((p, _), o) in &self.objects {
                if p == plural {
                    let _ = tx.send(event_line("ADDED", o));
                    sent += 1;
                }
            }
        } else {
            let Ok(from) = from.parse::<u64>() else {
                return status(
                    400,
                    "BadRequest",
                    &format!("invalid resource version {from:?}"),
                    None,
                );
            };
            if from < self.compacted_through {
                let message = format!(
                    "too old resource version: {from} ({})",
                    self.compacted_through
                );
                if self.gone_as_http_status {
                    return status(410, "Gone", &message, None);
                }
                let _ = tx.send(event_line(
                    "ERROR",
                    &status_body(410, "Expired", &message, None),
                ));
                drop(tx);
                return stream_response(rx);
            }
            if from > self.resource_version {
                return status(
                    504,
                    "Timeout",
                    &format!(
                        "Too large resource version: {from}, current: {}",
                        self.resource_version
                    ),
                    None,
                );
            }
            let limit = self.close_watches_after.unwrap_or(usize::MAX);
            for change in self
                .history
                .iter()
                .filter(|c| c.plural == plural && c.resource_version > from)
                .take(limit)
            {
                let _ = tx.send(event_line(change.kind, &change.object));
                sent += 1;
            }
        }
        let limit = self.close_watches_after;
        if limit.is_some_and(|l| sent >= l) {
            // Ended before catching up: no bookmark (it would claim changes
            // as delivered that were not).
            return stream_response(rx);
        }
        if query
            .get("allowWatchBookmarks")
            .is_some_and(|b| b == "true")
        {
            let bookmark = json!({
                "apiVersion": format!("{GROUP}/{VERSION}"),
                "kind": kind.crd_kind(),
                "metadata": { "resourceVersion": self.resource_version.to_string() },
            });
            let _ = tx.send(event_line("BOOKMARK", &bookmark));
        }
        self.watchers.push(Watcher {
            plural: plural.to_owned(),
            tx,
            sent,
        });
        stream_response(rx)
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({ "type": kind, "object": object })
        .to_string()
        .into_bytes();
    line.push(b'\n');
    Bytes::from(line)
}

fn stream_response(rx: mpsc::UnboundedReceiver<Bytes>) -> Response<MockBody> {
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|line| (Ok::<_, Infallible>(Frame::data(line)), rx))
    });
    let mut response = Response::new(UnsyncBoxBody::new(StreamBody::new(frames)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// A request the server refuses: the `Status` it answers with.
struct Refusal {
    code: u16,
    reason: &'static str,
    message: String,
    details: Option<(Kind, String)>,
}

impl Refusal {
    fn response(self) -> Response<MockBody> {
        let details = self.details.as_ref().map(|(k, n)| (*k, n.as_str()));
        status(self.code, self.reason, &self.message, details)
    }
}

/// Parses a request body as an object of `kind` and checks it: malformed
/// bodies are refused 400, bad names and specs 422. Returns the object and
/// its name.
fn parse_object(kind: Kind, body: &[u8]) -> Result<(Value, String), Refusal> {
    let bad_request = |message: String| Refusal {
        code: 400,
        reason: "BadRequest",
        message,
        details: None,
    };
    let object: Value =
        serde_json::from_slice(body).map_err(|e| bad_request(format!("body is not JSON: {e}")))?;
    let want_api = format!("{GROUP}/{VERSION}");
    if object["apiVersion"].as_str() != Some(want_api.as_str())
        || object["kind"].as_str() != Some(kind.crd_kind())
    {
        return Err(bad_request(format!(
            "the API version in the data ({}) does not match the expected API version \
             ({want_api}), or the kind ({}) is not {}",
            object["apiVersion"],
            object["kind"],
            kind.crd_kind()
        )));
    }
    if !object["metadata"].is_object() {
        return Err(bad_request("metadata must be an object".into()));
    }
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    validate(kind, &name, &object)?;
    Ok((object, name))
}

/// Name and spec checks, refused 422 Invalid.
fn validate(kind: Kind, name: &str, object: &Value) -> Result<(), Refusal> {
    let invalid = |field: &str, why: &str| Refusal {
        code: 422,
        reason: "Invalid",
        message: format!(
            "{}.{GROUP} \"{name}\" is invalid: {field}: {why}",
            kind.crd_kind()
        ),
        details: Some((kind, name.to_owned())),
    };
    if !crate::names::is_valid_object_name(name) {
        return Err(invalid(
            "metadata.name",
            "Invalid value: a lowercase RFC 1123 subdomain must consist of lower case \
             alphanumeric characters, '-' or '.'",
        ));
    }
    match object.get("spec") {
        Some(Value::Object(_)) => Ok(()),
        Some(_) => Err(invalid("spec", "Invalid value: must be of type object")),
        None => Err(invalid("spec", "Required value")),
    }
}

fn status_body(code: u16, reason: &str, message: &str, details: Option<(Kind, &str)>) -> Value {
    let mut body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    });
    if let Some((kind, name)) = details {
        body["details"] = json!({ "name": name, "group": GROUP, "kind": kind.plural() });
    }
    body
}

fn status(
    code: u16,
    reason: &str,
    message: &str,
    details: Option<(Kind, &str)>,
) -> Response<MockBody> {
    json_response(code, &status_body(code, reason, message, details))
}

fn not_found(kind: Kind, name: &str) -> Response<MockBody> {
    status(
        404,
        "NotFound",
        &format!("{}.{GROUP} \"{name}\" not found", kind.plural()),
        Some((kind, name)),
    )
}

fn not_found_path(path: &str) -> Response<MockBody> {
    status(
        404,
        "NotFound",
        &format!("the server could not find the requested resource ({path})"),
        None,
    )
}

fn conflict(kind: Kind, name: &str, why: &str) -> Response<MockBody> {
    status(
        409,
        "Conflict",
        &format!(
            "Operation cannot be fulfilled on {}.{GROUP} \"{name}\": {why}",
            kind.plural()
        ),
        Some((kind, name)),
    )
}

fn json_response(code: u16, body: &Value) -> Response<MockBody> {
    let mut response = Response::new(UnsyncBoxBody::new(Full::new(Bytes::from(body.to_string()))));
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// `a=b&c=d`, percent- and `+`-decoded as `application/x-www-form-urlencoded`.
fn parse_query(query: &str) -> BTreeMap<String, String> {
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let hex = (bytes[i] == b'%')
                .then(|| bytes.get(i + 1..i + 3))
                .flatten()
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(b) => {
                    out.push(b);
                    i += 3;
                }
                None => {
                    out.push(bytes[i]);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}
