//! Test support shared by this crate's tests and other crates' (cargo
//! feature `testing`): a real etcd server fixture, a mock Kubernetes API
//! server, and the datastore conformance suite with a harness per backend.
//!
//! Test code: it panics on failure by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod conformance;
pub mod etcd_server;
pub mod interposed;
pub mod kube_api;

use std::sync::Arc;

use crate::allocator::Allocator;
use crate::store::etcd::{self, EtcdStore};
use crate::store::kubernetes::KubeStore;
use crate::store::sqlite::SqliteStore;
use crate::store::{Datastore, Kind};

pub use conformance::{Garbage, StoreUnderTest};
pub use etcd_server::{EtcdFixtureError, EtcdServer};
pub use interposed::{Call, CallHook, Interposed};
pub use kube_api::MockApiServer;

/// Addresses in use in every block `alloc`'s store holds.
pub async fn addresses_in_use(alloc: &Allocator) -> usize {
    alloc
        .blocks()
        .await
        .unwrap()
        .iter()
        .map(|(_, b)| b.in_use_count())
        .sum()
}

/// A value no decoder accepts: not UTF-8, not JSON.
const GARBAGE: &[u8] = b"\x00not json\xff";

/// The etcd backend against its own fresh etcd server.
pub struct EtcdUnderTest {
    /// Kept for the test's lifetime: dropping it stops etcd.
    pub server: EtcdServer,
    pub store: Arc<EtcdStore>,
}

impl EtcdUnderTest {
    /// Starts etcd and connects a store to it.
    pub async fn start() -> Self {
        let server = EtcdServer::start().await.unwrap();
        let store = Arc::new(server.store().await.unwrap());
        EtcdUnderTest { server, store }
    }
}

#[async_trait::async_trait]
impl StoreUnderTest for EtcdUnderTest {
    fn store(&self) -> Arc<dyn Datastore> {
        self.store.clone()
    }

    async fn compact(&self) -> bool {
        let mut client = self.store.client().clone();
        let head = client
            .get("/", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        client.compact(head, None).await.unwrap();
        true
    }

    async fn plant_garbage(&self, kind: Kind, name: &str) -> Garbage {
        let mut client = self.store.client().clone();
        client
            .put(etcd::key(kind, name), GARBAGE, None)
            .await
            .unwrap();
        Garbage::Opaque(GARBAGE.to_vec())
    }
}

/// The sqlite backend on a file in a fresh temporary directory.
pub struct SqliteUnderTest {
    pub dir: tempfile::TempDir,
    pub store: Arc<SqliteStore>,
}

impl SqliteUnderTest {
    /// Opens a new database file.
    pub async fn open() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("felix-sqlite-")
            .tempdir()
            .unwrap();
        let store = Arc::new(SqliteStore::open(dir.path().join("ipam.db")).await.unwrap());
        SqliteUnderTest { dir, store }
    }
}

#[async_trait::async_trait]
impl StoreUnderTest for SqliteUnderTest {
    fn store(&self) -> Arc<dyn Datastore> {
        self.store.clone()
    }

    async fn compact(&self) -> bool {
        self.store.compact(0).await.unwrap();
        true
    }

    async fn plant_garbage(&self, kind: Kind, name: &str) -> Garbage {
        // A second connection writing behind the store's back, as a hand
        // edit with the sqlite3 shell would.
        let conn = rusqlite::Connection::open(self.store.path()).unwrap();
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        conn.execute(
            "INSERT INTO objects (kind, name, value, revision) VALUES (?1, ?2, ?3, 1)",
            rusqlite::params![kind.plural(), name, GARBAGE],
        )
        .unwrap();
        Garbage::Opaque(GARBAGE.to_vec())
    }
}

/// The kubernetes backend against the mock API server.
pub struct KubeUnderTest {
    pub server: MockApiServer,
    pub store: Arc<KubeStore>,
}

impl KubeUnderTest {
    /// A fresh mock server and a store over a `kube::Client` talking to it.
    pub async fn start() -> Self {
        let server = MockApiServer::new();
        let store = Arc::new(KubeStore::new(server.client()));
        KubeUnderTest { server, store }
    }
}

#[async_trait::async_trait]
impl StoreUnderTest for KubeUnderTest {
    fn store(&self) -> Arc<dyn Datastore> {
        self.store.clone()
    }

    async fn compact(&self) -> bool {
        self.server.compact();
        true
    }

    async fn plant_garbage(&self, kind: Kind, name: &str) -> Garbage {
        // Written by another client without the schema felix installs: the
        // spec is a string.
        self.server.put_raw(
            kind.plural(),
            name,
            serde_json::json!({
                "apiVersion": "crd.felix-rs.io/v1",
                "kind": kind.crd_kind(),
                "metadata": { "name": name },
                "spec": "garbage",
            }),
        );
        Garbage::Undecodable
    }
}
