#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The allocator suite against a real etcd (Debian `etcd-server`), one
//! server per case on loopback ports (`ipam::testing::EtcdUnderTest`).

#[macro_use]
mod allocator_suite;

async fn etcd() -> (
    std::sync::Arc<dyn ipam::store::Datastore>,
    ipam::testing::EtcdUnderTest,
) {
    let t = ipam::testing::EtcdUnderTest::start().await;
    (
        t.store.clone() as std::sync::Arc<dyn ipam::store::Datastore>,
        t,
    )
}

allocator_suite!(etcd().await);
