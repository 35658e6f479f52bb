//! Following one kind of datastore object: list, then watch from the
//! listing's revision, and hand the agent the whole current set after
//! every change. A watch that ends (compaction, backend restart) is
//! followed by a fresh list, so no change is missed for long.

use futures_util::StreamExt;
use ipam::store::{Datastore, Kind, Listing, WatchEvent};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long to wait before listing again after a datastore error.
pub const RETRY: Duration = Duration::from_secs(1);

/// What a follower reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KindUpdate {
    /// Every object of `kind` (name → JSON value) as of the latest change.
    Snapshot {
        kind: Kind,
        objects: BTreeMap<String, Vec<u8>>,
    },
    /// The datastore failed; the follower retries after [`RETRY`].
    Error { kind: Kind, message: String },
}

/// Follows `kind` until `tx` is closed.
pub async fn follow(store: Arc<dyn Datastore>, kind: Kind, tx: mpsc::UnboundedSender<KindUpdate>) {
    loop {
        if let Err(message) = follow_once(&*store, kind, &tx).await {
            if tx.send(KindUpdate::Error { kind, message }).is_err() {
                return;
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(RETRY).await;
    }
}

async fn follow_once(
    store: &dyn Datastore,
    kind: Kind,
    tx: &mpsc::UnboundedSender<KindUpdate>,
) -> Result<(), String> {
    let Listing { objects, revision } = store.list(kind, "").await.map_err(|e| e.to_string())?;
    let mut current: BTreeMap<String, Vec<u8>> =
        objects.into_iter().map(|o| (o.name, o.value)).collect();
    let send = |current: &BTreeMap<String, Vec<u8>>| {
        tx.send(KindUpdate::Snapshot {
            kind,
            objects: current.clone(),
        })
        .is_ok()
    };
    if !send(&current) {
        return Ok(());
    }
    let mut stream = store
        .watch(kind, Some(&revision))
        .await
        .map_err(|e| e.to_string())?;
    while let Some(event) = stream.next().await {
        match event.map_err(|e| e.to_string())? {
            WatchEvent::Put(o) => {
                current.insert(o.name, o.value);
            }
            WatchEvent::Deleted { name, .. } => {
                current.remove(&name);
            }
        }
        if !send(&current) {
            return Ok(());
        }
    }
    Err(format!("the {kind} watch ended; listing again"))
}

/// Decodes every value of a snapshot; the ones that do not decode are
/// returned as messages naming the object (and left out).
pub fn decode_all<T: serde::de::DeserializeOwned>(
    kind: Kind,
    objects: &BTreeMap<String, Vec<u8>>,
) -> (BTreeMap<String, T>, Vec<String>) {
    let mut good = BTreeMap::new();
    let mut bad = Vec::new();
    for (name, value) in objects {
        match serde_json::from_slice(value) {
            Ok(v) => {
                good.insert(name.clone(), v);
            }
            Err(e) => bad.push(format!("{kind} {name:?}: {e}; ignored")),
        }
    }
    (good, bad)
}
