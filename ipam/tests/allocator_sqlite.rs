#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The allocator suite against the SQLite backend.

#[macro_use]
mod allocator_suite;

async fn sqlite() -> (
    std::sync::Arc<dyn ipam::store::Datastore>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let store = ipam::store::sqlite::SqliteStore::open(dir.path().join("ipam.db"))
        .await
        .unwrap();
    (std::sync::Arc::new(store), dir)
}

allocator_suite!(sqlite().await);
