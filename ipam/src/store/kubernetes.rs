//! The `kubernetes` backend: one cluster-scoped custom resource per object,
//! in group `crd.felix-rs.io`, version `v1`, kind [`Kind::crd_kind`], plural
//! [`Kind::plural`], with the stored JSON value as its `spec`.
//!
//! Concurrency is the API server's optimistic concurrency (Kubernetes API
//! conventions, "Concurrency Control and Consistency"): an object's
//! [`Revision`] is its `metadata.resourceVersion`; update is a replace (PUT)
//! carrying that resourceVersion, answered 409 Conflict when it is stale;
//! delete carries `preconditions.resourceVersion`. A list's revision is the
//! list's `metadata.resourceVersion`, and a watch from it sees every later
//! change (API concepts, "Efficient detection of changes"); a resourceVersion
//! the server no longer has is answered 410 Gone, here [`StoreError::Compacted`].
//!
//! Verbs used (for RBAC): `get`, `list`, `watch`, `create`, `update`,
//! `delete` on the eight plurals of group `crd.felix-rs.io`.

use std::collections::VecDeque;
use std::pin::Pin;

use futures_util::{stream, Stream, StreamExt};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, ObjectMeta, PostParams,
    Preconditions, TypeMeta, WatchEvent as KubeWatchEvent, WatchParams,
};
use kube::Client;
use serde_json::Value;

use super::{
    checks, Datastore, Kind, Listing, Object, Revision, StoreError, WatchEvent, WatchStream,
};

/// API group of felix's custom resources.
pub const GROUP: &str = "crd.felix-rs.io";
/// Their only version.
pub const VERSION: &str = "v1";

/// The API resource a kind is stored as.
pub fn api_resource(kind: Kind) -> ApiResource {
    ApiResource {
        group: GROUP.to_owned(),
        version: VERSION.to_owned(),
        api_version: format!("{GROUP}/{VERSION}"),
        kind: kind.crd_kind().to_owned(),
        plural: kind.plural().to_owned(),
    }
}

/// The Kubernetes datastore.
#[derive(Clone)]
pub struct KubeStore {
    client: Client,
    /// Objects per list request (`limit`); the rest follow by `continue`.
    list_page: u32,
}

/// Objects per list page by default.
pub const LIST_PAGE: u32 = 500;

/// How often a list starts again when its `continue` token expired
/// (410) before the last page.
const LIST_RESTARTS: u32 = 5;

impl std::fmt::Debug for KubeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStore").finish_non_exhaustive()
    }
}

impl KubeStore {
    /// A store over an existing client (tests pass one over a mock service).
    pub fn new(client: Client) -> Self {
        KubeStore {
            client,
            list_page: LIST_PAGE,
        }
    }

    /// The same store listing `n` objects per request (at least 1).
    pub fn with_list_page(mut self, n: u32) -> Self {
        self.list_page = n.max(1);
        self
    }

    /// Every object of `kind`, page by page (`limit` + `continue`), and the
    /// first page's resourceVersion: the pages are one snapshot at it (the
    /// API server's guarantee for `continue`). A token that expired (410)
    /// starts the list again, a bounded number of times.
    async fn list_all(&self, kind: Kind) -> Result<(Vec<DynamicObject>, String), StoreError> {
        let api = self.api(kind);
        'restart: for _ in 0..LIST_RESTARTS {
            let mut items = Vec::new();
            let mut revision: Option<String> = None;
            let mut token: Option<String> = None;
            loop {
                let mut params = ListParams::default().limit(self.list_page);
                if let Some(t) = &token {
                    params = params.continue_token(t);
                }
                let page = match api.list(&params).await {
                    Ok(page) => page,
                    Err(kube::Error::Api(s)) if s.code == 410 && token.is_some() => {
                        continue 'restart
                    }
                    Err(e) => return Err(map_error(kind, "", None, e)),
                };
                if revision.is_none() {
                    revision = page
                        .metadata
                        .resource_version
                        .clone()
                        .filter(|rv| !rv.is_empty());
                }
                token = page.metadata.continue_.clone().filter(|t| !t.is_empty());
                items.extend(page.items);
                if token.is_none() {
                    let revision = revision.ok_or_else(|| {
                        StoreError::Unavailable(format!(
                            "kubernetes list of {} has no resourceVersion",
                            kind.plural()
                        ))
                    })?;
                    return Ok((items, revision));
                }
            }
        }
        Err(StoreError::Unavailable(format!(
            "kubernetes list of {}: the continue token expired {LIST_RESTARTS} times",
            kind.plural()
        )))
    }

    /// A store over the in-cluster service account, or else the current
    /// kubeconfig context (`kube::Client::try_default`).
    pub async fn from_default_config() -> Result<Self, StoreError> {
        let client = Client::try_default().await.map_err(|e| {
            StoreError::Unavailable(format!("kubernetes client configuration: {e}"))
        })?;
        Ok(KubeStore::new(client))
    }

    fn api(&self, kind: Kind) -> Api<DynamicObject> {
        Api::all_with(self.client.clone(), &api_resource(kind))
    }
}

/// Builds the custom resource for a value; the value must be a JSON object
/// (a CRD's `spec` is an object in its structural schema).
fn resource(
    kind: Kind,
    name: &str,
    value: &[u8],
    revision: Option<&Revision>,
) -> Result<DynamicObject, StoreError> {
    let spec = match serde_json::from_slice::<Value>(value) {
        Ok(spec @ Value::Object(_)) => spec,
        Ok(_) => {
            return Err(StoreError::Invalid(format!(
                "{kind} {name:?}: the kubernetes datastore stores a JSON object as the spec, \
                 not another JSON value"
            )))
        }
        Err(e) => {
            return Err(StoreError::Invalid(format!(
                "{kind} {name:?}: the kubernetes datastore stores JSON specs: {e}"
            )))
        }
    };
    let ar = api_resource(kind);
    Ok(DynamicObject {
        types: Some(TypeMeta {
            api_version: ar.api_version,
            kind: ar.kind,
        }),
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            resource_version: revision.map(|r| r.0.clone()),
            ..ObjectMeta::default()
        },
        data: serde_json::json!({ "spec": spec }),
    })
}

/// Reads a custom resource back; one without a name, a resourceVersion or
/// an object `spec` is `Corrupt`.
fn object(kind: Kind, o: &DynamicObject) -> Result<Object, StoreError> {
    let name = o.metadata.name.clone().unwrap_or_default();
    let corrupt = |reason: &str| StoreError::Corrupt {
        kind,
        name: if name.is_empty() {
            "<unnamed>".to_owned()
        } else {
            name.clone()
        },
        reason: reason.to_owned(),
    };
    if name.is_empty() {
        return Err(corrupt("object without metadata.name"));
    }
    let revision = o
        .metadata
        .resource_version
        .clone()
        .filter(|rv| !rv.is_empty())
        .ok_or_else(|| corrupt("object without metadata.resourceVersion"))?;
    let spec = match o.data.get("spec") {
        Some(spec @ Value::Object(_)) => spec,
        Some(_) => return Err(corrupt("spec is not a JSON object")),
        None => return Err(corrupt("object without a spec")),
    };
    let value = serde_json::to_vec(spec).map_err(|e| corrupt(&format!("spec re-encoding: {e}")))?;
    Ok(Object {
        kind,
        name,
        value,
        revision: Revision(revision),
    })
}

/// What the API server said, mapped to the datastore's errors. `409` with
/// reason `AlreadyExists` answers a create; any other 409 is a stale
/// resourceVersion (update) or failed precondition (delete).
fn map_error(kind: Kind, name: &str, expected: Option<&Revision>, e: kube::Error) -> StoreError {
    match e {
        kube::Error::Api(status) => match status.code {
            404 => StoreError::NotFound {
                kind,
                name: name.to_owned(),
            },
            409 if status.reason == "AlreadyExists" => StoreError::AlreadyExists {
                kind,
                name: name.to_owned(),
            },
            409 => StoreError::Conflict {
                kind,
                name: name.to_owned(),
                expected: expected.cloned().unwrap_or_else(|| Revision(String::new())),
            },
            410 => {
                StoreError::Compacted(expected.cloned().unwrap_or_else(|| Revision(String::new())))
            }
            400 | 422 => StoreError::Invalid(format!(
                "kubernetes refused {kind} {name:?}: {} ({})",
                status.message, status.reason
            )),
            code => StoreError::Unavailable(format!(
                "kubernetes API answered {code} for {kind} {name:?}: {} ({})",
                status.message, status.reason
            )),
        },
        other => StoreError::Unavailable(format!("kubernetes API, {kind} {name:?}: {other}")),
    }
}

#[async_trait::async_trait]
impl Datastore for KubeStore {
    async fn get(&self, kind: Kind, name: &str) -> Result<Object, StoreError> {
        checks::name(kind, name)?;
        let o = self
            .api(kind)
            .get(name)
            .await
            .map_err(|e| map_error(kind, name, None, e))?;
        object(kind, &o)
    }

    /// A paginated list ([`KubeStore::list_all`]): one consistent snapshot
    /// at the first page's resourceVersion, filtered by name prefix here
    /// (the API has no name-prefix selector).
    async fn list(&self, kind: Kind, name_prefix: &str) -> Result<Listing, StoreError> {
        let (items, revision) = self.list_all(kind).await?;
        let mut objects = Vec::new();
        for item in &items {
            if item
                .metadata
                .name
                .as_deref()
                .is_some_and(|n| !n.starts_with(name_prefix))
            {
                continue;
            }
            objects.push(object(kind, item)?);
        }
        objects.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Listing {
            objects,
            revision: Revision(revision),
        })
    }

    async fn create(&self, kind: Kind, name: &str, value: Vec<u8>) -> Result<Revision, StoreError> {
        checks::name(kind, name)?;
        let body = resource(kind, name, &value, None)?;
        let created = self
            .api(kind)
            .create(&PostParams::default(), &body)
            .await
            .map_err(|e| map_error(kind, name, None, e))?;
        Ok(object(kind, &created)?.revision)
    }

    async fn update(
        &self,
        kind: Kind,
        name: &str,
        value: Vec<u8>,
        expected: &Revision,
    ) -> Result<Revision, StoreError> {
        checks::name(kind, name)?;
        if expected.0.is_empty() {
            return Err(StoreError::Invalid(format!(
                "{kind} {name:?}: empty resourceVersion"
            )));
        }
        let body = resource(kind, name, &value, Some(expected))?;
        let replaced = self
            .api(kind)
            .replace(name, &PostParams::default(), &body)
            .await
            .map_err(|e| map_error(kind, name, Some(expected), e))?;
        Ok(object(kind, &replaced)?.revision)
    }

    async fn delete(&self, kind: Kind, name: &str, expected: &Revision) -> Result<(), StoreError> {
        checks::name(kind, name)?;
        if expected.0.is_empty() {
            return Err(StoreError::Invalid(format!(
                "{kind} {name:?}: empty resourceVersion"
            )));
        }
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: Some(expected.0.clone()),
                uid: None,
            }),
            ..DeleteParams::default()
        };
        self.api(kind)
            .delete(name, &params)
            .await
            .map_err(|e| map_error(kind, name, Some(expected), e))?;
        Ok(())
    }

    /// Watches from `after`, or from a fresh list's resourceVersion when
    /// `None` (a watch without a resourceVersion would first replay every
    /// object as ADDED). When the server ends a watch normally (its
    /// `timeoutSeconds`), the stream resumes from the last resourceVersion
    /// seen, bookmarks included.
    async fn watch(&self, kind: Kind, after: Option<&Revision>) -> Result<WatchStream, StoreError> {
        let api = self.api(kind);
        let start = match after {
            Some(rev) => rev.clone(),
            None => {
                let list = api
                    .list(&ListParams::default().limit(1))
                    .await
                    .map_err(|e| map_error(kind, "", None, e))?;
                Revision(list.metadata.resource_version.unwrap_or_default())
            }
        };
        let mut watch = KubeWatch {
            api,
            kind,
            last: start,
            events: None,
            pending: VecDeque::new(),
            quiet_reopens: 0,
            done: false,
        };
        // Open the first request before returning, so a refusal (410) is
        // the stream's first item.
        watch.open().await;
        Ok(Box::pin(stream::unfold(watch, KubeWatch::next)))
    }
}

type EventStream =
    Pin<Box<dyn Stream<Item = Result<KubeWatchEvent<DynamicObject>, kube::Error>> + Send>>;

/// Watch requests in a row that the server ends without a single event
/// before the stream gives up with `Unavailable` (a server that closes
/// every watch at once would otherwise be polled in a tight loop).
const MAX_QUIET_REOPENS: u32 = 3;

/// The state of one watch: the open request and where to resume.
struct KubeWatch {
    api: Api<DynamicObject>,
    kind: Kind,
    /// resourceVersion of the last change (or bookmark) seen.
    last: Revision,
    events: Option<EventStream>,
    pending: VecDeque<Result<WatchEvent, StoreError>>,
    quiet_reopens: u32,
    done: bool,
}

impl KubeWatch {
    /// Opens a watch request from `last`; a refusal ends the stream.
    async fn open(&mut self) {
        let params = WatchParams::default();
        match self.api.watch(&params, &self.last.0).await {
            Ok(events) => self.events = Some(Box::pin(events)),
            Err(e) => self.end(map_error(self.kind, "", Some(&self.last), e)),
        }
    }

    fn end(&mut self, e: StoreError) {
        self.pending.push_back(Err(e));
        self.done = true;
        self.events = None;
    }

    async fn next(mut self) -> Option<(Result<WatchEvent, StoreError>, Self)> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some((item, self));
            }
            if self.done {
                return None;
            }
            let Some(events) = self.events.as_mut() else {
                self.open().await;
                continue;
            };
            match events.next().await {
                Some(Ok(event)) => {
                    self.quiet_reopens = 0;
                    self.handle(event);
                }
                Some(Err(e)) => {
                    let err = map_error(self.kind, "", Some(&self.last), e);
                    self.end(err);
                }
                None => {
                    // The server closed the watch (timeoutSeconds): resume.
                    self.events = None;
                    self.quiet_reopens += 1;
                    if self.quiet_reopens > MAX_QUIET_REOPENS {
                        self.end(StoreError::Unavailable(format!(
                            "kubernetes closed {} watches on {} in a row without an event",
                            MAX_QUIET_REOPENS,
                            self.kind.plural()
                        )));
                    }
                }
            }
        }
    }

    fn handle(&mut self, event: KubeWatchEvent<DynamicObject>) {
        let kind = self.kind;
        match event {
            KubeWatchEvent::Added(o) | KubeWatchEvent::Modified(o) => {
                let item = object(kind, &o);
                if let Ok(object) = &item {
                    self.last = object.revision.clone();
                }
                self.pending.push_back(item.map(WatchEvent::Put));
            }
            KubeWatchEvent::Deleted(o) => {
                let item = match (o.metadata.name, o.metadata.resource_version) {
                    (Some(name), Some(rv)) if !rv.is_empty() => {
                        self.last = Revision(rv.clone());
                        Ok(WatchEvent::Deleted {
                            kind,
                            name,
                            revision: Revision(rv),
                        })
                    }
                    (name, _) => Err(StoreError::Corrupt {
                        kind,
                        name: name.unwrap_or_else(|| "<unnamed>".into()),
                        reason: "DELETED event without name or resourceVersion".into(),
                    }),
                };
                self.pending.push_back(item);
            }
            KubeWatchEvent::Bookmark(b) => {
                // Nothing changed, but everything up to here was delivered:
                // a later resume may start from it (fewer 410s).
                if !b.metadata.resource_version.is_empty() {
                    self.last = Revision(b.metadata.resource_version);
                }
            }
            KubeWatchEvent::Error(status) => {
                let err = if status.code == 410 {
                    StoreError::Compacted(self.last.clone())
                } else {
                    StoreError::Unavailable(format!(
                        "kubernetes watch of {} failed: {} ({}, {})",
                        kind.plural(),
                        status.message,
                        status.reason,
                        status.code
                    ))
                };
                self.end(err);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn resources_carry_kind_plural_and_group() {
        let ar = api_resource(Kind::IpamBlock);
        assert_eq!(
            (
                ar.group.as_str(),
                ar.version.as_str(),
                ar.api_version.as_str()
            ),
            ("crd.felix-rs.io", "v1", "crd.felix-rs.io/v1")
        );
        assert_eq!(
            (ar.kind.as_str(), ar.plural.as_str()),
            ("IPAMBlock", "ipamblocks")
        );
    }

    #[test]
    fn spec_round_trips_and_non_objects_are_refused() {
        let value = br#"{"cidr":"10.0.0.0/26","affinity":"host:n1"}"#;
        let mut o = resource(Kind::IpamBlock, "b", value, Some(&Revision("7".into()))).unwrap();
        assert_eq!(o.metadata.resource_version.as_deref(), Some("7"));
        let back = object(Kind::IpamBlock, &o).unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&back.value).unwrap(),
            serde_json::from_slice::<Value>(value).unwrap()
        );
        for bad in [&b"[1]"[..], b"3", b"nope"] {
            assert!(matches!(
                resource(Kind::IpamBlock, "b", bad, None),
                Err(StoreError::Invalid(_))
            ));
        }
        o.data = serde_json::json!({ "spec": "garbage" });
        let err = object(Kind::IpamBlock, &o).unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { name, .. } if name == "b"),
            "{err:?}"
        );
        o.data = serde_json::json!({});
        assert!(matches!(
            object(Kind::IpamBlock, &o),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
