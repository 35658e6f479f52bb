#![allow(clippy::unwrap_used, clippy::expect_used)]
//! SQLite-specific behaviour of the embedded backend (the shared
//! conformance suite covers the `Datastore` contract itself).

use std::time::Duration;

use futures_util_lite::next;
use ipam::store::sqlite::{SqliteOptions, SqliteStore};
use ipam::store::{Datastore, Kind, StoreError, WatchEvent};

mod futures_util_lite {
    use std::future::poll_fn;
    use std::pin::Pin;

    use futures_core::Stream;

    pub async fn next<S: Stream + Unpin + ?Sized>(s: &mut S) -> Option<S::Item> {
        poll_fn(|cx| Pin::new(&mut *s).poll_next(cx)).await
    }
}

fn opts() -> SqliteOptions {
    SqliteOptions {
        watch_poll: Duration::from_millis(5),
        ..SqliteOptions::default()
    }
}

#[tokio::test]
async fn cas_and_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_with(dir.path().join("s.db"), opts())
        .await
        .unwrap();
    let r1 = store
        .create(Kind::IpPool, "p1", b"{}".to_vec())
        .await
        .unwrap();
    assert!(matches!(
        store.create(Kind::IpPool, "p1", b"{}".to_vec()).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    let r2 = store
        .update(Kind::IpPool, "p1", b"{\"a\":1}".to_vec(), &r1)
        .await
        .unwrap();
    assert_ne!(r1, r2);
    assert!(matches!(
        store.update(Kind::IpPool, "p1", b"{}".to_vec(), &r1).await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        store.delete(Kind::IpPool, "p1", &r1).await,
        Err(StoreError::Conflict { .. })
    ));
    // A second handle on the same file (another process would do the same).
    let other = SqliteStore::open(dir.path().join("s.db")).await.unwrap();
    assert_eq!(other.get(Kind::IpPool, "p1").await.unwrap().revision, r2);
    other.delete(Kind::IpPool, "p1", &r2).await.unwrap();
    assert!(matches!(
        store.get(Kind::IpPool, "p1").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.create(Kind::IpPool, "Bad_Name", b"{}".to_vec()).await,
        Err(StoreError::Invalid(_))
    ));
}

#[tokio::test]
async fn list_by_prefix_is_one_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("s.db")).await.unwrap();
    for name in ["node1-a", "node1-b", "node2-a"] {
        store
            .create(Kind::BlockAffinity, name, b"{}".to_vec())
            .await
            .unwrap();
    }
    store
        .create(Kind::IpamBlock, "node1-z", b"{}".to_vec())
        .await
        .unwrap();
    let l = store.list(Kind::BlockAffinity, "node1-").await.unwrap();
    let names: Vec<_> = l.objects.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["node1-a", "node1-b"]);
    assert_eq!(l.revision.0, "4");
    assert_eq!(
        store
            .list(Kind::BlockAffinity, "")
            .await
            .unwrap()
            .objects
            .len(),
        3
    );
}

#[tokio::test]
async fn watch_from_listing_then_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_with(dir.path().join("s.db"), opts())
        .await
        .unwrap();
    let rev = store
        .create(Kind::IpamHandle, "h1", b"1".to_vec())
        .await
        .unwrap();
    let listing = store.list(Kind::IpamHandle, "").await.unwrap();
    let mut w = store
        .watch(Kind::IpamHandle, Some(&listing.revision))
        .await
        .unwrap();
    store
        .create(Kind::IpPool, "p", b"{}".to_vec())
        .await
        .unwrap();
    let rev2 = store
        .update(Kind::IpamHandle, "h1", b"2".to_vec(), &rev)
        .await
        .unwrap();
    store.delete(Kind::IpamHandle, "h1", &rev2).await.unwrap();
    let e1 = tokio::time::timeout(Duration::from_secs(5), next(&mut w))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match e1 {
        WatchEvent::Put(o) => {
            assert_eq!(o.value, b"2");
            assert_eq!(o.revision, rev2);
        }
        other => panic!("unexpected {other:?}"),
    }
    let e2 = tokio::time::timeout(Duration::from_secs(5), next(&mut w))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(e2, WatchEvent::Deleted { ref name, .. } if name == "h1"));

    // Trim the log to nothing: a watch from the first revision is refused.
    store.compact(0).await.unwrap();
    let mut old = store.watch(Kind::IpamHandle, Some(&rev)).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), next(&mut old))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(e, Err(StoreError::Compacted(_))), "{e:?}");
    assert!(next(&mut old).await.is_none());
}

/// Writes never checkpoint: the WAL reaches the database file through the
/// checkpoint thread. With no thread (interval far away) the database file
/// stays as small as the schema while 4 MB of writes sit in the WAL; with
/// a 50 ms interval they are in the database file soon after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_happen_off_the_write_path() {
    async fn db_size_after_writes(interval: Duration) -> u64 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = SqliteStore::open_with(
            &path,
            SqliteOptions {
                checkpoint_interval: interval,
                ..opts()
            },
        )
        .await
        .unwrap();
        let value = format!("{{\"pad\":\"{}\"}}", "x".repeat(4000)).into_bytes();
        for i in 0..1000 {
            store
                .create(Kind::IpamHandle, &format!("h{i}"), value.clone())
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let size = std::fs::metadata(&path).unwrap().len();
        drop(store);
        size
    }
    let without = db_size_after_writes(Duration::from_secs(3600)).await;
    let with = db_size_after_writes(Duration::from_millis(50)).await;
    assert!(
        without < 1 << 20,
        "a write checkpointed: db file {without} B"
    );
    assert!(
        with > 4 << 20,
        "the checkpoint thread did not run: db file {with} B"
    );
}
