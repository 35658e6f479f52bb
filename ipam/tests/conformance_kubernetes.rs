//! The datastore conformance suite against the kubernetes backend, over a
//! real `kube::Client` talking to the mock API server
//! (`ipam::testing::kube_api`; no API server runs on these machines).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ipam::testing::KubeUnderTest;

ipam::datastore_conformance!(KubeUnderTest::start);
