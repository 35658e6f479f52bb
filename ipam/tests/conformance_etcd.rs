//! The datastore conformance suite against a real etcd (Debian
//! `etcd-server`), one fresh server per case.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ipam::testing::EtcdUnderTest;

ipam::datastore_conformance!(EtcdUnderTest::start);
