//! `check` and `gc`: find and repair what crashes and departed owners
//! leave behind.
//!
//! The allocator's write order (module docs of [`crate::allocator`])
//! means a crash can only leave:
//! - an address whose owner is gone (the owner died, or its CNI DEL never
//!   came) — found against the caller's set of live owners;
//! - a handle that over-counts (crash between handle and block write), or
//!   whose owner is gone;
//! - an affinity stuck `pending` (crash mid-claim) or `pendingDeletion`
//!   (crash mid-give-back);
//! - a block whose affinity object is missing;
//! - affinities and blocks of nodes that no longer exist.
//!
//! `gc` releases with the sequence number `check` saw, so an address that
//! was reallocated in between is left alone.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use crate::affinity::{AffinityState, BlockAffinity, BlockAffinitySpec};
use crate::allocator::{now, Allocator, IpamError, ReleaseRequest};
use crate::block::{BlockRelease, IpamBlockSpec};
use crate::codec::{decode, encode};
use crate::handle::IpamHandleSpec;
use crate::names::{affinity_name, cidr_name};
use crate::store::{Kind, StoreError};

/// What exists, as the caller knows it. `None`: unknown, do not judge.
#[derive(Debug, Clone, Default)]
pub struct LiveSet {
    /// Nodes that exist.
    pub nodes: Option<HashSet<String>>,
    /// Handle ids whose owner exists (e.g. from the pods on each node).
    /// Tunnel handles (`vxlan-tunnel-addr-NODE`) are judged by `nodes`.
    pub owners: Option<HashSet<String>>,
}

/// An address held for an owner that no longer exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeakedAddress {
    pub ip: IpAddr,
    pub block: IpNet,
    pub handle_id: Option<String>,
    pub sequence: u64,
    pub attributes: BTreeMap<String, String>,
}

/// A handle whose counts disagree with the blocks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HandleMismatch {
    pub handle_id: String,
    pub block: String,
    pub counted: u64,
    pub held: u64,
}

/// What `check` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    /// Addresses of owners that no longer exist (or with no owner at all).
    pub leaked: Vec<LeakedAddress>,
    /// Handles of owners that no longer exist.
    pub stale_handles: Vec<String>,
    /// Handles counting more (harmless, a crash between the two writes) or
    /// fewer (should not happen) addresses than the blocks hold.
    pub handle_mismatches: Vec<HandleMismatch>,
    /// Affinities of nodes that no longer exist.
    pub affinities_of_unknown_nodes: Vec<BlockAffinity>,
    /// Affinities left `pending` or `pendingDeletion`.
    pub unfinished_affinities: Vec<BlockAffinity>,
    /// Blocks with no affinity, or whose affinity object is missing.
    pub blocks_without_affinity: Vec<IpNet>,
    /// Blocks affine to nodes that no longer exist.
    pub blocks_of_unknown_nodes: Vec<IpNet>,
    /// Stored objects that do not decode: `KIND NAME: reason`.
    pub corrupt: Vec<String>,
}

impl CheckReport {
    /// True when there is nothing to repair (over-counting handles of live
    /// owners are harmless and do not count).
    pub fn is_clean(&self) -> bool {
        self.leaked.is_empty()
            && self.stale_handles.is_empty()
            && self.handle_mismatches.iter().all(|m| m.counted >= m.held)
            && self.affinities_of_unknown_nodes.is_empty()
            && self.unfinished_affinities.is_empty()
            && self.blocks_without_affinity.is_empty()
            && self.blocks_of_unknown_nodes.is_empty()
            && self.corrupt.is_empty()
    }
}

/// What `gc` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    pub released: Vec<IpAddr>,
    pub handles_deleted: Vec<String>,
    pub affinities_confirmed: Vec<String>,
    pub affinities_deleted: Vec<String>,
    pub blocks_released: Vec<IpNet>,
    pub blocks_unaffined: Vec<IpNet>,
}

/// What removing a node did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeRemoval {
    pub released: Vec<IpAddr>,
    pub blocks_released: Vec<IpNet>,
    /// Blocks kept because other nodes' pods still hold addresses in them;
    /// their affinity is cleared.
    pub blocks_unaffined: Vec<IpNet>,
}

fn corrupt_line(e: &StoreError) -> String {
    e.to_string()
}

impl Allocator {
    /// Finds what needs repair; changes nothing.
    pub async fn check(&self, live: &LiveSet) -> Result<CheckReport, IpamError> {
        let mut report = CheckReport::default();
        let store = self.store();
        let blocks = store.list(Kind::IpamBlock, "").await?;
        let affinities = store.list(Kind::BlockAffinity, "").await?;
        let handles = store.list(Kind::IpamHandle, "").await?;
        let node_known = |n: &str| live.nodes.as_ref().is_none_or(|s| s.contains(n));
        // A tunnel address belongs to its node, not to a pod.
        let owner_known = |h: &str| match crate::tunnel::tunnel_owner(h) {
            Some(node) => node_known(node),
            None => live.owners.as_ref().is_none_or(|s| s.contains(h)),
        };

        let mut held: BTreeMap<(String, String), u64> = BTreeMap::new();
        let mut block_specs = Vec::new();
        for obj in &blocks.objects {
            match IpamBlockSpec::from_object(obj) {
                Ok(spec) => block_specs.push(spec),
                Err(e) => report.corrupt.push(corrupt_line(&e)),
            }
        }
        let mut affinity_names = HashSet::new();
        for obj in &affinities.objects {
            match decode::<BlockAffinitySpec>(obj) {
                Ok(spec) => {
                    affinity_names.insert(obj.name.clone());
                    let aff = BlockAffinity {
                        name: obj.name.clone(),
                        spec,
                    };
                    if !node_known(&aff.spec.node) {
                        report.affinities_of_unknown_nodes.push(aff);
                    } else if aff.spec.state != AffinityState::Confirmed {
                        report.unfinished_affinities.push(aff);
                    }
                }
                Err(e) => report.corrupt.push(corrupt_line(&e)),
            }
        }
        for block in &block_specs {
            for used in block.in_use() {
                if let Some(h) = &used.handle_id {
                    *held.entry((h.clone(), block.cidr.to_string())).or_insert(0) += 1;
                }
                let owner_gone = used.handle_id.as_deref().is_none_or(|h| !owner_known(h));
                if owner_gone {
                    report.leaked.push(LeakedAddress {
                        ip: used.ip,
                        block: block.cidr,
                        handle_id: used.handle_id,
                        sequence: used.sequence,
                        attributes: used.attributes,
                    });
                }
            }
            match block.affine_node() {
                None => report.blocks_without_affinity.push(block.cidr),
                Some(node) if !node_known(node) => report.blocks_of_unknown_nodes.push(block.cidr),
                Some(node) => {
                    if !affinity_names.contains(&affinity_name(node, &block.cidr)) {
                        report.blocks_without_affinity.push(block.cidr);
                    }
                }
            }
        }
        let mut counted: BTreeMap<(String, String), u64> = BTreeMap::new();
        for obj in &handles.objects {
            let spec: IpamHandleSpec = match decode(obj) {
                Ok(spec) => spec,
                Err(e) => {
                    report.corrupt.push(corrupt_line(&e));
                    continue;
                }
            };
            if !owner_known(&spec.handle_id) {
                report.stale_handles.push(spec.handle_id.clone());
            }
            for (block, n) in &spec.block {
                counted.insert((spec.handle_id.clone(), block.clone()), *n);
            }
        }
        let keys: HashSet<&(String, String)> = held.keys().chain(counted.keys()).collect();
        let mut mismatches: Vec<HandleMismatch> = keys
            .into_iter()
            .filter_map(|key| {
                let c = counted.get(key).copied().unwrap_or(0);
                let h = held.get(key).copied().unwrap_or(0);
                (c != h).then(|| HandleMismatch {
                    handle_id: key.0.clone(),
                    block: key.1.clone(),
                    counted: c,
                    held: h,
                })
            })
            .collect();
        mismatches.sort_by(|a, b| (&a.handle_id, &a.block).cmp(&(&b.handle_id, &b.block)));
        report.handle_mismatches = mismatches;
        Ok(report)
    }

    /// Repairs what [`Allocator::check`] finds.
    pub async fn gc(&self, live: &LiveSet) -> Result<GcReport, IpamError> {
        let report = self.check(live).await?;
        let mut done = GcReport::default();

        // Addresses of departed owners, released only if unchanged since
        // the check (same holder, same sequence).
        let reqs: Vec<ReleaseRequest> = report
            .leaked
            .iter()
            .map(|l| ReleaseRequest {
                ip: l.ip,
                handle: l.handle_id.clone(),
                sequence: Some(l.sequence),
            })
            .collect();
        for out in self.release_ips(&reqs).await? {
            if matches!(out.outcome, BlockRelease::Released { .. }) {
                done.released.push(out.ip);
            }
        }
        for handle in &report.stale_handles {
            done.released.extend(self.release_by_handle(handle).await?);
            done.handles_deleted.push(handle.clone());
        }

        // Departed nodes.
        let mut gone: Vec<String> = report
            .affinities_of_unknown_nodes
            .iter()
            .map(|a| a.spec.node.clone())
            .collect();
        let blocks = self.blocks().await?;
        for cidr in &report.blocks_of_unknown_nodes {
            if let Some((_, b)) = blocks.iter().find(|(_, b)| b.cidr == *cidr) {
                gone.extend(b.affine_node().map(str::to_owned));
            }
        }
        gone.sort();
        gone.dedup();
        for node in &gone {
            let removal = self.remove_node(node).await?;
            done.released.extend(removal.released);
            done.blocks_released.extend(removal.blocks_released);
            done.blocks_unaffined.extend(removal.blocks_unaffined);
        }

        // Unfinished claims and give-backs.
        for aff in &report.unfinished_affinities {
            let block = blocks.iter().find(|(_, b)| b.cidr == aff.spec.cidr);
            let ours = block.is_some_and(|(_, b)| b.affine_node() == Some(aff.spec.node.as_str()));
            match (aff.spec.state, ours) {
                (AffinityState::Pending, true) => {
                    self.set_affinity_state(
                        &aff.name,
                        &aff.spec.node,
                        aff.spec.cidr,
                        AffinityState::Confirmed,
                    )
                    .await?;
                    done.affinities_confirmed.push(aff.name.clone());
                }
                (AffinityState::PendingDeletion, true) => {
                    if self.give_back_block(aff.spec.cidr, true).await? {
                        done.blocks_released.push(aff.spec.cidr);
                        done.affinities_deleted.push(aff.name.clone());
                    } else {
                        self.set_affinity_state(
                            &aff.name,
                            &aff.spec.node,
                            aff.spec.cidr,
                            AffinityState::Confirmed,
                        )
                        .await?;
                        done.affinities_confirmed.push(aff.name.clone());
                    }
                }
                (_, false) => {
                    let state = aff.spec.state;
                    if self
                        .delete_affinity_if(&aff.name, |s| s.state == state)
                        .await?
                    {
                        done.affinities_deleted.push(aff.name.clone());
                    }
                }
                (AffinityState::Confirmed, true) => {}
            }
        }

        // Blocks without an affinity object: re-index live nodes' blocks;
        // give back empty unowned ones.
        for cidr in &report.blocks_without_affinity {
            let Some((_, block)) = blocks.iter().find(|(_, b)| b.cidr == *cidr) else {
                continue;
            };
            match block.affine_node() {
                Some(node) => {
                    let name = affinity_name(node, cidr);
                    self.set_affinity_state(&name, node, *cidr, AffinityState::Confirmed)
                        .await?;
                    done.affinities_confirmed.push(name);
                }
                None => {
                    if block.is_empty() && self.give_back_block(*cidr, true).await? {
                        done.blocks_released.push(*cidr);
                    }
                }
            }
        }
        Ok(done)
    }

    /// Removes a node: releases the addresses its pods held (in any block),
    /// gives its empty blocks back, and clears its affinity on blocks that
    /// other nodes' pods still use.
    ///
    /// A claim ahead running for the node in this allocator finishes
    /// first (it holds the node's lock), so its block goes too.
    pub async fn remove_node(&self, node: &str) -> Result<NodeRemoval, IpamError> {
        let _node = self.node_lock(node).await;
        let mut out = NodeRemoval::default();
        let blocks = self.blocks().await?;
        let mut reqs = Vec::new();
        for (_, block) in &blocks {
            for used in block.in_use() {
                if used.attributes.get("node").map(String::as_str) == Some(node) {
                    reqs.push(ReleaseRequest {
                        ip: used.ip,
                        handle: used.handle_id.clone(),
                        sequence: Some(used.sequence),
                    });
                }
            }
        }
        for r in self.release_ips(&reqs).await? {
            if matches!(r.outcome, BlockRelease::Released { .. }) {
                out.released.push(r.ip);
            }
        }
        let mut cidrs: Vec<IpNet> = blocks
            .iter()
            .filter(|(_, b)| b.affine_node() == Some(node))
            .map(|(_, b)| b.cidr)
            .collect();
        let (affinities, _) = self.affinities_of(node).await?;
        cidrs.extend(affinities.iter().map(|a| a.spec.cidr));
        cidrs.sort();
        cidrs.dedup();
        for cidr in cidrs {
            if self.give_back_block(cidr, true).await? {
                out.blocks_released.push(cidr);
            } else if self.clear_block_affinity(cidr, node).await? {
                out.blocks_unaffined.push(cidr);
            }
            self.delete_affinity_if(&affinity_name(node, &cidr), |_| true)
                .await?;
        }
        Ok(out)
    }

    /// Clears a block's affinity to `node` (the block stays, unowned).
    async fn clear_block_affinity(&self, cidr: IpNet, node: &str) -> Result<bool, IpamError> {
        let name = cidr_name(&cidr);
        for attempt in 0..self.config().max_attempts {
            let obj = match self.store().get(Kind::IpamBlock, &name).await {
                Ok(obj) => obj,
                Err(StoreError::NotFound { .. }) => return Ok(false),
                Err(e) => return Err(e.into()),
            };
            let mut spec = IpamBlockSpec::from_object(&obj)?;
            if spec.affine_node() != Some(node) {
                return Ok(false);
            }
            spec.affinity = None;
            if spec.is_empty() {
                spec.empty_since = Some(now());
            }
            let value = encode(Kind::IpamBlock, &name, &spec)?;
            match self
                .store()
                .update(Kind::IpamBlock, &name, value, &obj.revision)
                .await
            {
                Ok(_) => return Ok(true),
                Err(StoreError::Conflict { .. }) => {}
                Err(StoreError::NotFound { .. }) => return Ok(false),
                Err(e) => return Err(e.into()),
            }
            self.backoff(attempt).await;
        }
        Err(self.too_many(format!("block {cidr}")))
    }
}
