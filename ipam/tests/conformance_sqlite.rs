//! The datastore conformance suite against the embedded sqlite backend, one
//! fresh database file per case.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ipam::testing::SqliteUnderTest;

ipam::datastore_conformance!(SqliteUnderTest::open);
