//! `ipam` — Calico-style block IPAM for felix-rs: pools, /26 blocks with node
//! affinity, handles, garbage collection, over a compare-and-swap `Datastore`
//! (SQLite embedded, etcd, Kubernetes CRDs).
//!
//! **Not built yet** (issue 4). This crate exists so the workspace has the
//! layout of the design; it exports nothing.
