//! The datastore conformance suite: one set of cases every backend must
//! pass, written against `Arc<dyn Datastore>` only. A backend takes part by
//! implementing [`StoreUnderTest`] (a fresh, empty store per case plus two
//! backend-specific hooks) and invoking [`crate::datastore_conformance!`],
//! which makes one `#[tokio::test]` per case.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::store::{Datastore, Kind, Revision, StoreError, WatchEvent, WatchStream, Write};

/// A backend prepared for one conformance case.
#[async_trait::async_trait]
pub trait StoreUnderTest: Send + Sync {
    /// The store; empty when the case starts.
    fn store(&self) -> Arc<dyn Datastore>;

    /// Makes every revision up to the store's current one unavailable to
    /// watches, as etcd's compaction or the API server's expired watch
    /// window does. `false` when the backend keeps no history to discard
    /// (the compaction case then only checks that watches still work).
    async fn compact(&self) -> bool;

    /// Stores a garbage value for (kind, name) behind the backend's back,
    /// as a bug or a hand edit would, and says how the backend must read it.
    async fn plant_garbage(&self, kind: Kind, name: &str) -> Garbage;
}

/// What a backend holds after [`StoreUnderTest::plant_garbage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Garbage {
    /// The backend stores values as opaque bytes (sqlite, etcd): it must
    /// hand back exactly these bytes; the decoder above reports them.
    Opaque(Vec<u8>),
    /// The backend stores structured objects (Kubernetes): reading the
    /// object must fail with `Corrupt` naming it.
    Undecodable,
}

/// How long a case waits for a watch event before failing.
pub const EVENT_WAIT: Duration = Duration::from_secs(10);

fn spec(n: u64) -> Vec<u8> {
    json!({ "n": n, "cidr": "10.0.0.0/26" })
        .to_string()
        .into_bytes()
}

fn parse(value: &[u8]) -> Value {
    serde_json::from_slice(value).expect("stored value is JSON")
}

async fn next_event(watch: &mut WatchStream) -> Result<WatchEvent, StoreError> {
    tokio::time::timeout(EVENT_WAIT, watch.next())
        .await
        .expect("a watch event within EVENT_WAIT")
        .expect("the watch stream did not end")
}

/// Asserts that nothing arrives on the watch for a short while.
async fn assert_quiet(watch: &mut WatchStream) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(300), watch.next()).await {
        panic!("unexpected watch item {item:?}");
    }
}

fn put_of(event: WatchEvent) -> (String, Value, Revision) {
    match event {
        WatchEvent::Put(o) => (o.name, parse(&o.value), o.revision),
        other => panic!("expected a put, got {other:?}"),
    }
}

/// `write_all` applies every write or none. On a transactional store a
/// create and an update go in together (each reads back at the revision
/// returned), and a batch with one failing condition (stale revision,
/// taken name, missing object) writes nothing and names the failing
/// object. A store without transactions refuses before writing anything.
pub async fn write_all_is_all_or_nothing(t: &dyn StoreUnderTest) {
    let s = t.store();
    let r1 = s.create(Kind::IpamBlock, "blk", spec(1)).await.unwrap();
    let create = |name: &str, n| Write::Create {
        kind: Kind::IpamHandle,
        name: name.into(),
        value: spec(n),
    };
    let update = |rev: &Revision, n| Write::Update {
        kind: Kind::IpamBlock,
        name: "blk".into(),
        value: spec(n),
        expected: rev.clone(),
    };
    if !s.transactional() {
        let err = s
            .write_all(vec![update(&r1, 2), create("h1", 1)])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
        let o = s.get(Kind::IpamBlock, "blk").await.unwrap();
        assert_eq!((parse(&o.value), o.revision), (parse(&spec(1)), r1));
        assert!(matches!(
            s.get(Kind::IpamHandle, "h1").await,
            Err(StoreError::NotFound { .. })
        ));
        return;
    }
    let revs = s
        .write_all(vec![update(&r1, 2), create("h1", 1)])
        .await
        .unwrap();
    assert_eq!(revs.len(), 2);
    let blk = s.get(Kind::IpamBlock, "blk").await.unwrap();
    assert_eq!(
        (parse(&blk.value), &blk.revision),
        (parse(&spec(2)), &revs[0])
    );
    let h1 = s.get(Kind::IpamHandle, "h1").await.unwrap();
    assert_eq!(
        (parse(&h1.value), &h1.revision),
        (parse(&spec(1)), &revs[1])
    );

    // Stale revision: nothing written, the block named.
    let err = s
        .write_all(vec![create("h2", 1), update(&r1, 3)])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict { kind: Kind::IpamBlock, name, .. } if name == "blk"),
        "{err:?}"
    );
    // Taken name: nothing written, the handle named.
    let err = s
        .write_all(vec![update(&revs[0], 3), create("h2", 1), create("h1", 2)])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::AlreadyExists { kind: Kind::IpamHandle, name } if name == "h1"),
        "{err:?}"
    );
    // Missing object: nothing written, it is named.
    let gone = Write::Update {
        kind: Kind::IpamHandle,
        name: "gone".into(),
        value: spec(1),
        expected: revs[1].clone(),
    };
    let err = s.write_all(vec![create("h2", 1), gone]).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::NotFound { kind: Kind::IpamHandle, name } if name == "gone"),
        "{err:?}"
    );
    assert!(matches!(
        s.get(Kind::IpamHandle, "h2").await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(s.get(Kind::IpamBlock, "blk").await.unwrap(), blk);
    assert_eq!(s.get(Kind::IpamHandle, "h1").await.unwrap(), h1);
}

/// A delete in `write_all` goes with the other writes or not at all: a
/// delete on a stale revision (or of a missing object) fails the whole
/// batch naming it; a good one removes the object as the update lands.
pub async fn write_all_deletes_atomically(t: &dyn StoreUnderTest) {
    let s = t.store();
    if !s.transactional() {
        return;
    }
    let pool = s.create(Kind::IpPool, "p", spec(1)).await.unwrap();
    let index = s.create(Kind::IpPoolIndex, "i", spec(1)).await.unwrap();
    let bump = |rev: &Revision| Write::Update {
        kind: Kind::IpPoolIndex,
        name: "i".into(),
        value: spec(2),
        expected: rev.clone(),
    };
    let delete = |rev: &Revision| Write::Delete {
        kind: Kind::IpPool,
        name: "p".into(),
        expected: rev.clone(),
    };
    // The pool changed after it was read: nothing deleted, nothing updated.
    let newer = s.update(Kind::IpPool, "p", spec(3), &pool).await.unwrap();
    let err = s
        .write_all(vec![bump(&index), delete(&pool)])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict { kind: Kind::IpPool, name, .. } if name == "p"),
        "{err:?}"
    );
    assert_eq!(s.get(Kind::IpPoolIndex, "i").await.unwrap().revision, index);
    assert_eq!(s.get(Kind::IpPool, "p").await.unwrap().revision, newer);
    // On the current revision: both applied.
    let revs = s
        .write_all(vec![delete(&newer), bump(&index)])
        .await
        .unwrap();
    assert_eq!(revs.len(), 2);
    assert!(matches!(
        s.get(Kind::IpPool, "p").await,
        Err(StoreError::NotFound { .. })
    ));
    let i = s.get(Kind::IpPoolIndex, "i").await.unwrap();
    assert_eq!((parse(&i.value), &i.revision), (parse(&spec(2)), &revs[1]));
    // Deleting what is gone: NotFound naming it, the update not applied.
    let err = s
        .write_all(vec![bump(&revs[1]), delete(&newer)])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::NotFound { kind: Kind::IpPool, name } if name == "p"),
        "{err:?}"
    );
    assert_eq!(s.get(Kind::IpPoolIndex, "i").await.unwrap(), i);
}

/// A created object reads back with the same value and revision.
pub async fn create_then_get(t: &dyn StoreUnderTest) {
    let s = t.store();
    let rev = s.create(Kind::IpPool, "pool-a", spec(1)).await.unwrap();
    let o = s.get(Kind::IpPool, "pool-a").await.unwrap();
    assert_eq!((o.kind, o.name.as_str()), (Kind::IpPool, "pool-a"));
    assert_eq!(parse(&o.value), parse(&spec(1)));
    assert_eq!(o.revision, rev);
    // Same name, other kind: a separate object.
    assert!(matches!(
        s.get(Kind::IpamBlock, "pool-a").await,
        Err(StoreError::NotFound {
            kind: Kind::IpamBlock,
            ..
        })
    ));
}

/// Reading a missing object is `NotFound` naming it.
pub async fn get_missing_is_not_found(t: &dyn StoreUnderTest) {
    let err = t.store().get(Kind::IpamHandle, "nobody").await.unwrap_err();
    assert!(
        matches!(&err, StoreError::NotFound { kind: Kind::IpamHandle, name } if name == "nobody"),
        "{err:?}"
    );
}

/// A second create of a name is `AlreadyExists` and changes nothing.
pub async fn create_existing_is_already_exists(t: &dyn StoreUnderTest) {
    let s = t.store();
    let rev = s
        .create(Kind::BlockAffinity, "node-1-10-0-0-0-26", spec(1))
        .await
        .unwrap();
    let err = s
        .create(Kind::BlockAffinity, "node-1-10-0-0-0-26", spec(2))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::AlreadyExists {
                kind: Kind::BlockAffinity,
                ..
            }
        ),
        "{err:?}"
    );
    let o = s
        .get(Kind::BlockAffinity, "node-1-10-0-0-0-26")
        .await
        .unwrap();
    assert_eq!((parse(&o.value), o.revision), (parse(&spec(1)), rev));
}

/// Listing filters by kind and name prefix and sorts by name.
pub async fn list_prefix_sorted(t: &dyn StoreUnderTest) {
    let s = t.store();
    for name in ["b-2", "a-1", "b-10", "b-1", "c", "b"] {
        s.create(Kind::IpamBlock, name, spec(0)).await.unwrap();
    }
    s.create(Kind::IpamHandle, "b-3", spec(0)).await.unwrap();
    let names =
        |l: crate::store::Listing| l.objects.into_iter().map(|o| o.name).collect::<Vec<_>>();
    assert_eq!(
        names(s.list(Kind::IpamBlock, "b-").await.unwrap()),
        ["b-1", "b-10", "b-2"]
    );
    assert_eq!(
        names(s.list(Kind::IpamBlock, "").await.unwrap()),
        ["a-1", "b", "b-1", "b-10", "b-2", "c"]
    );
    assert!(s
        .list(Kind::IpamBlock, "zz")
        .await
        .unwrap()
        .objects
        .is_empty());
    assert!(s.list(Kind::BgpPeer, "").await.unwrap().objects.is_empty());
    // The names alone: the same set, the same order.
    assert_eq!(
        s.list_names(Kind::IpamBlock, "b-").await.unwrap(),
        ["b-1", "b-10", "b-2"]
    );
    assert_eq!(
        s.list_names(Kind::IpamBlock, "").await.unwrap(),
        ["a-1", "b", "b-1", "b-10", "b-2", "c"]
    );
    assert!(s.list_names(Kind::BgpPeer, "").await.unwrap().is_empty());
    // Objects in a listing carry their own revisions, as get does.
    let listing = s.list(Kind::IpamBlock, "c").await.unwrap();
    let got = s.get(Kind::IpamBlock, "c").await.unwrap();
    assert_eq!(listing.objects, vec![got]);
}

/// Update succeeds on the current revision, then fails on the old one
/// without touching the stored value.
pub async fn update_compare_and_swap(t: &dyn StoreUnderTest) {
    let s = t.store();
    let r1 = s.create(Kind::IpamBlock, "blk", spec(1)).await.unwrap();
    let r2 = s
        .update(Kind::IpamBlock, "blk", spec(2), &r1)
        .await
        .unwrap();
    assert_ne!(r1, r2);
    let o = s.get(Kind::IpamBlock, "blk").await.unwrap();
    assert_eq!((parse(&o.value), &o.revision), (parse(&spec(2)), &r2));
    let err = s
        .update(Kind::IpamBlock, "blk", spec(3), &r1)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict { kind: Kind::IpamBlock, name, expected }
            if name == "blk" && *expected == r1),
        "{err:?}"
    );
    let o = s.get(Kind::IpamBlock, "blk").await.unwrap();
    assert_eq!((parse(&o.value), o.revision), (parse(&spec(2)), r2));
}

/// Updating a missing object is `NotFound`, and does not create it.
pub async fn update_missing_is_not_found(t: &dyn StoreUnderTest) {
    let s = t.store();
    let r = s.create(Kind::IpamHandle, "other", spec(0)).await.unwrap();
    let err = s
        .update(Kind::IpamHandle, "ghost", spec(1), &r)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    assert!(matches!(
        s.get(Kind::IpamHandle, "ghost").await,
        Err(StoreError::NotFound { .. })
    ));
}

/// Delete is compare-and-swap too; deleting twice is `NotFound`.
pub async fn delete_compare_and_swap(t: &dyn StoreUnderTest) {
    let s = t.store();
    let r1 = s.create(Kind::IpamHandle, "h", spec(1)).await.unwrap();
    let r2 = s.update(Kind::IpamHandle, "h", spec(2), &r1).await.unwrap();
    let err = s.delete(Kind::IpamHandle, "h", &r1).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert_eq!(s.get(Kind::IpamHandle, "h").await.unwrap().revision, r2);
    s.delete(Kind::IpamHandle, "h", &r2).await.unwrap();
    assert!(matches!(
        s.get(Kind::IpamHandle, "h").await,
        Err(StoreError::NotFound { .. })
    ));
    let err = s.delete(Kind::IpamHandle, "h", &r2).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    // The name is free again.
    s.create(Kind::IpamHandle, "h", spec(3)).await.unwrap();
}

/// Names that are not Kubernetes object names are refused with `Invalid`,
/// and nothing is written; so are revisions the backend never issued.
pub async fn invalid_input_is_refused(t: &dyn StoreUnderTest) {
    let s = t.store();
    for name in ["Upper", "a/b", "", "-x", "x_y", "a..b"] {
        let err = s.create(Kind::IpPool, name, spec(1)).await.unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{name:?}: {err:?}");
    }
    assert!(s.list(Kind::IpPool, "").await.unwrap().objects.is_empty());
    s.create(Kind::IpPool, "p", spec(1)).await.unwrap();
    let bogus = Revision("not-a-revision".into());
    match s.update(Kind::IpPool, "p", spec(2), &bogus).await {
        // Kubernetes resourceVersions are opaque: the server just sees a
        // mismatch.
        Err(StoreError::Invalid(_)) | Err(StoreError::Conflict { .. }) => {}
        other => panic!("update with a bogus revision: {other:?}"),
    }
    let listing = s.list(Kind::IpPool, "").await.unwrap();
    assert_eq!(listing.objects.len(), 1);
    assert_eq!(parse(&listing.objects[0].value), parse(&spec(1)));
}

/// A watch from a listing sees create, update and delete in order, with
/// the revisions the writes returned, and nothing of other kinds.
pub async fn watch_sees_changes_in_order(t: &dyn StoreUnderTest) {
    let s = t.store();
    let listing = s.list(Kind::IpamBlock, "").await.unwrap();
    let mut w = s
        .watch(Kind::IpamBlock, Some(&listing.revision))
        .await
        .unwrap();
    let r1 = s.create(Kind::IpamBlock, "a", spec(1)).await.unwrap();
    s.create(Kind::IpamHandle, "a", spec(9)).await.unwrap();
    let r2 = s.update(Kind::IpamBlock, "a", spec(2), &r1).await.unwrap();
    let r3 = s.create(Kind::IpamBlock, "b", spec(3)).await.unwrap();
    s.delete(Kind::IpamBlock, "a", &r2).await.unwrap();

    assert_eq!(
        put_of(next_event(&mut w).await.unwrap()),
        ("a".into(), parse(&spec(1)), r1)
    );
    assert_eq!(
        put_of(next_event(&mut w).await.unwrap()),
        ("a".into(), parse(&spec(2)), r2)
    );
    assert_eq!(
        put_of(next_event(&mut w).await.unwrap()),
        ("b".into(), parse(&spec(3)), r3)
    );
    match next_event(&mut w).await.unwrap() {
        WatchEvent::Deleted {
            kind,
            name,
            revision,
        } => {
            assert_eq!((kind, name.as_str()), (Kind::IpamBlock, "a"));
            // The deletion is a change of its own, later than the others.
            let after = s.list(Kind::IpamBlock, "").await.unwrap().revision;
            assert_eq!(revision, after);
        }
        other => panic!("expected the deletion, got {other:?}"),
    }
    assert_quiet(&mut w).await;
}

/// A watch resumed from a listing's revision sees exactly the changes made
/// after the listing, and one resumed from an event's revision exactly the
/// changes after that event.
pub async fn watch_resumes_from_revision(t: &dyn StoreUnderTest) {
    let s = t.store();
    let r1 = s.create(Kind::BlockAffinity, "x1", spec(1)).await.unwrap();
    s.create(Kind::BlockAffinity, "x2", spec(2)).await.unwrap();
    let listing = s.list(Kind::BlockAffinity, "").await.unwrap();
    let r1b = s
        .update(Kind::BlockAffinity, "x1", spec(11), &r1)
        .await
        .unwrap();
    let r3 = s.create(Kind::BlockAffinity, "x3", spec(3)).await.unwrap();

    let mut w = s
        .watch(Kind::BlockAffinity, Some(&listing.revision))
        .await
        .unwrap();
    assert_eq!(
        put_of(next_event(&mut w).await.unwrap()),
        ("x1".into(), parse(&spec(11)), r1b.clone())
    );
    assert_eq!(
        put_of(next_event(&mut w).await.unwrap()),
        ("x3".into(), parse(&spec(3)), r3.clone())
    );
    let r4 = s.create(Kind::BlockAffinity, "x4", spec(4)).await.unwrap();
    assert_eq!(
        put_of(next_event(&mut w).await.unwrap()),
        ("x4".into(), parse(&spec(4)), r4.clone())
    );
    drop(w);

    let mut w = s.watch(Kind::BlockAffinity, Some(&r1b)).await.unwrap();
    assert_eq!(put_of(next_event(&mut w).await.unwrap()).2, r3);
    assert_eq!(put_of(next_event(&mut w).await.unwrap()).2, r4);
    assert_quiet(&mut w).await;
}

/// A watch without a start revision sees only what changes after it began.
pub async fn watch_from_now(t: &dyn StoreUnderTest) {
    let s = t.store();
    s.create(Kind::BgpPeer, "old", spec(1)).await.unwrap();
    let mut w = s.watch(Kind::BgpPeer, None).await.unwrap();
    let r = s.create(Kind::BgpPeer, "new", spec(2)).await.unwrap();
    assert_eq!(
        put_of(next_event(&mut w).await.unwrap()),
        ("new".into(), parse(&spec(2)), r)
    );
    assert_quiet(&mut w).await;
}

/// A watch from a revision the store has discarded ends with `Compacted`;
/// a fresh listing then gives a revision to watch from again.
pub async fn watch_compacted_start(t: &dyn StoreUnderTest) {
    let s = t.store();
    let r = s.create(Kind::IpamBlock, "c", spec(0)).await.unwrap();
    let old = s.list(Kind::IpamBlock, "").await.unwrap().revision;
    let mut rev = r;
    for n in 1..=5 {
        rev = s.update(Kind::IpamBlock, "c", spec(n), &rev).await.unwrap();
    }
    if !t.compact().await {
        return;
    }
    let first = match s.watch(Kind::IpamBlock, Some(&old)).await {
        Err(e) => Err(e),
        Ok(mut w) => next_event(&mut w).await,
    };
    assert!(matches!(first, Err(StoreError::Compacted(_))), "{first:?}");

    let fresh = s.list(Kind::IpamBlock, "").await.unwrap();
    let mut w = s
        .watch(Kind::IpamBlock, Some(&fresh.revision))
        .await
        .unwrap();
    let r = s
        .update(Kind::IpamBlock, "c", spec(99), &rev)
        .await
        .unwrap();
    assert_eq!(
        put_of(next_event(&mut w).await.unwrap()),
        ("c".into(), parse(&spec(99)), r)
    );
}

/// A garbage value never panics the backend: a structured backend reports
/// `Corrupt` naming the object, an opaque one hands back exactly the bytes
/// (for the decoder above to report); other objects stay readable.
pub async fn garbage_value_is_reported_or_returned(t: &dyn StoreUnderTest) {
    let s = t.store();
    let bad = "bad-10-0-0-0-26";
    s.create(Kind::IpamBlock, "good", spec(1)).await.unwrap();
    match t.plant_garbage(Kind::IpamBlock, bad).await {
        Garbage::Undecodable => {
            let err = s.get(Kind::IpamBlock, bad).await.unwrap_err();
            assert!(
                matches!(&err, StoreError::Corrupt { kind: Kind::IpamBlock, name, .. } if name == bad),
                "{err:?}"
            );
            assert!(err.to_string().contains(bad), "{err}");
            let err = s.list(Kind::IpamBlock, "").await.unwrap_err();
            assert!(
                matches!(&err, StoreError::Corrupt { name, .. } if name == bad),
                "{err:?}"
            );
        }
        Garbage::Opaque(bytes) => {
            assert_eq!(s.get(Kind::IpamBlock, bad).await.unwrap().value, bytes);
            let listing = s.list(Kind::IpamBlock, "").await.unwrap();
            assert_eq!(listing.objects.len(), 2);
            assert_eq!(listing.objects[0].value, bytes);
        }
    }
    assert_eq!(
        parse(&s.get(Kind::IpamBlock, "good").await.unwrap().value),
        parse(&spec(1))
    );
    assert_eq!(
        s.list(Kind::IpamBlock, "go").await.unwrap().objects.len(),
        1
    );
}

/// Tasks incrementing one counter by read / compare-and-swap, retrying on
/// conflict.
pub const CAS_TASKS: u64 = 8;
/// Increments per task in [`concurrent_cas_increments`].
pub const CAS_INCREMENTS: u64 = 25;

/// 8 tasks incrementing one counter by compare-and-swap lose no update:
/// the final count is the number of successful writes, and no two writes
/// produced the same count.
pub async fn concurrent_cas_increments(t: &dyn StoreUnderTest) {
    let s = t.store();
    s.create(Kind::IpamHandle, "counter", spec(0))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..CAS_TASKS {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut written = Vec::new();
            let mut conflicts = 0u64;
            while (written.len() as u64) < CAS_INCREMENTS {
                let o = s.get(Kind::IpamHandle, "counter").await.unwrap();
                let n = parse(&o.value)["n"].as_u64().unwrap() + 1;
                match s
                    .update(Kind::IpamHandle, "counter", spec(n), &o.revision)
                    .await
                {
                    Ok(_) => written.push(n),
                    Err(StoreError::Conflict { .. }) => conflicts += 1,
                    Err(e) => panic!("increment failed: {e}"),
                }
            }
            (written, conflicts)
        }));
    }
    let mut all = BTreeSet::new();
    for task in tasks {
        let (written, _conflicts) = task.await.unwrap();
        for n in written {
            assert!(all.insert(n), "two writes both produced count {n}");
        }
    }
    let total = CAS_TASKS * CAS_INCREMENTS;
    assert_eq!(all, (1..=total).collect::<BTreeSet<_>>());
    let o = s.get(Kind::IpamHandle, "counter").await.unwrap();
    assert_eq!(parse(&o.value)["n"], json!(total));
}

/// Makes one `#[tokio::test]` per conformance case. `$make` is an async
/// function (or closure) returning a fresh [`StoreUnderTest`]; the calling
/// crate needs `tokio` with the `macros` and `rt-multi-thread` features.
///
/// ```ignore
/// ipam::datastore_conformance!(my_backend);
/// async fn my_backend() -> MyHarness { … }
/// ```
#[macro_export]
macro_rules! datastore_conformance {
    ($make:path) => {
        $crate::datastore_conformance!(@cases $make;
            create_then_get,
            get_missing_is_not_found,
            create_existing_is_already_exists,
            list_prefix_sorted,
            update_compare_and_swap,
            update_missing_is_not_found,
            delete_compare_and_swap,
            invalid_input_is_refused,
            watch_sees_changes_in_order,
            watch_resumes_from_revision,
            watch_from_now,
            watch_compacted_start,
            garbage_value_is_reported_or_returned,
            concurrent_cas_increments,
            write_all_is_all_or_nothing,
            write_all_deletes_atomically,
        );
    };
    (@cases $make:path; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let under_test = $make().await;
                $crate::testing::conformance::$case(&under_test).await;
            }
        )*
    };
}
