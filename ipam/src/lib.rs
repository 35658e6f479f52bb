//! `ipam` — Calico-style block IPAM for felix-rs: pools, /26 blocks with node
//! affinity, handles, garbage collection, over a compare-and-swap
//! [`store::Datastore`] (SQLite embedded, etcd, Kubernetes CRDs).
//!
//! **Being built** (issue 4): today it holds the datastore contract only.

pub mod names;
pub mod store;
