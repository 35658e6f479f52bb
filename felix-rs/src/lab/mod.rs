//! `felix lab up|down|status`: a felix cluster in network namespaces on
//! this machine (docs/lab.md).
//!
//! `up` lays the topology out ([`plan::LabPlan`]), then makes it step by
//! step, recording every namespace and process in the state file
//! ([`state::LabState`]) before moving on; `down` removes what the state
//! file lists, then sweeps every namespace whose name starts with the
//! lab's prefix (and the processes in them), so that a lab whose `up`
//! crashed is still removed completely.

pub mod build;
pub mod cli;
pub mod plan;
pub mod state;
pub mod tor;
