//! The pods of this node and their host routes, for the agent's route
//! programmer.
//!
//! The CNI plugin adds `ADDR/32 dev fx… scope link` (and `/128`) for each
//! pod address with felix's route protocol, the same number the route
//! programmer owns ([`crate::routes::FELIX_ROUTE_PROTOCOL`]). So that a
//! reconcile keeps those routes and removes only stale ones, the pod routes
//! are part of the agent's desired state: the pod API records every
//! attachment it assigns or releases here, and at start the agent loads the
//! attachments IPAM holds for the node ([`LocalPods::load`]).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use felix_cni::api::Attachment;
use felix_cni::pod_iface::host_veth_name;
use ipam::{Allocator, IpamError};

/// One pod attachment: its host-side veth and its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPod {
    pub veth: String,
    pub addresses: Vec<IpAddr>,
}

/// The node's pod attachments by IPAM handle; cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct LocalPods {
    pods: Arc<Mutex<BTreeMap<String, LocalPod>>>,
}

impl LocalPods {
    pub fn new() -> Self {
        Self::default()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, LocalPod>> {
        self.pods.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `attachment`'s addresses (before the plugin is answered, so
    /// before its routes exist).
    pub fn insert(&self, attachment: &Attachment, addresses: Vec<IpAddr>) {
        let veth = host_veth_name(&attachment.container_id, &attachment.ifname);
        self.map()
            .insert(attachment.handle_id(), LocalPod { veth, addresses });
    }

    /// Forgets an attachment by its IPAM handle.
    pub fn remove(&self, handle: &str) {
        self.map().remove(handle);
    }

    /// Every pod address with its host-side veth.
    pub fn routes(&self) -> Vec<(IpAddr, String)> {
        self.map()
            .values()
            .flat_map(|pod| pod.addresses.iter().map(|a| (*a, pod.veth.clone())))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }

    /// The attachments IPAM holds for `node`: every allocated address whose
    /// `node` attribute is `node` and whose handle is a CNI attachment
    /// (`felix-cni:NET:CONTAINER:IF`), in any block (borrowed addresses too).
    pub async fn load(allocator: &Allocator, node: &str) -> Result<LocalPods, IpamError> {
        let pods = LocalPods::new();
        let mut found: BTreeMap<String, (Attachment, Vec<IpAddr>)> = BTreeMap::new();
        for (_, block) in allocator.blocks().await? {
            for used in block.in_use() {
                if used.attributes.get("node").map(String::as_str) != Some(node) {
                    continue;
                }
                let Some(handle) = used.handle_id else {
                    continue;
                };
                let Some(attachment) = Attachment::from_handle_id(&handle) else {
                    continue;
                };
                found
                    .entry(handle)
                    .or_insert_with(|| (attachment, Vec::new()))
                    .1
                    .push(used.ip);
            }
        }
        for (attachment, addresses) in found.into_values() {
            pods.insert(&attachment, addresses);
        }
        Ok(pods)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn routes_follow_inserts_and_removes() {
        let pods = LocalPods::new();
        let a = Attachment {
            network: "n".into(),
            container_id: "c1".into(),
            ifname: "eth0".into(),
        };
        pods.insert(
            &a,
            vec!["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
        );
        let routes = pods.routes();
        assert_eq!(routes.len(), 2);
        assert!(routes
            .iter()
            .all(|(_, veth)| *veth == host_veth_name("c1", "eth0")));
        pods.remove(&a.handle_id());
        assert!(pods.is_empty());
    }
}
