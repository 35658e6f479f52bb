//! The pool index: one object (`IPPoolIndex` named `default`) that maps
//! every pool's name to its CIDR and that every pool create and delete
//! rewrites compare-and-swap.
//!
//! Why: refusing a pool that overlaps another needs "create this pool only
//! if the set of pools is still the one I checked", and no store can
//! compare a whole listing. Two creates that read the same pools and each
//! create their own object would both succeed. With the index, both
//! rewrite the same object on the revision they read, so one of them
//! conflicts, reads again and sees the other's pool.
//!
//! - sqlite, etcd ([`Datastore::transactional`]): the pool and the index
//!   are written in one transaction (create: index + pool; delete: pool +
//!   index), so the index always equals the stored pools.
//! - Kubernetes (no transaction over two objects): create writes the index
//!   first (a reservation), then the pool; delete removes the pool, then
//!   rewrites the index. A crash in between leaves an entry without a pool
//!   (a stale reservation): creates overlapping it are refused with
//!   [`PoolError::OverlapsReserved`], which says how to free it (deleting
//!   the pool by name removes the entry). Never the other way round: no
//!   pool exists that the index lacks, except pools written by other
//!   clients (`kubectl apply`), which the checks below still read.
//!
//! Every check reads the index first and the pool listing second, and
//! checks against both (stored pools win over entries of the same name):
//! a store from before the index existed, or pools created by `kubectl`,
//! are checked too, and the first write creates the index from them. A
//! delete rewrites the index even when it holds no entry for the pool, so
//! a create that read the pool listing before the delete conflicts and
//! reads again instead of writing the deleted pool back as an entry.

use std::collections::BTreeMap;

use ipnet::IpNet;
use kube::CustomResource;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::allocator::{AllocatorConfig, IpamError};
use crate::block_writes::backoff;
use crate::codec::{decode, encode};
use crate::pool::{IpPoolSpec, PoolError};
use crate::store::{write_one, Datastore, Kind, Revision, StoreError, Write};

/// The name of the one index object.
pub const INDEX_NAME: &str = "default";

/// The stored spec of the index; also the `IPPoolIndex` custom resource
/// ([`IpPoolIndexResource`]). Written by felix.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, CustomResource, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
#[kube(
    group = "crd.felix-rs.io",
    version = "v1",
    kind = "IPPoolIndex",
    plural = "ippoolindexes",
    root = "IpPoolIndexResource",
    category = "felix",
    doc = "Every pool's CIDR by pool name, rewritten by each pool create and delete so that two overlapping creates cannot both succeed. Written by felix.",
    derive = "PartialEq",
    derive = "Default"
)]
#[schemars(description = "Every pool's CIDR by name, as felix last wrote it.")]
pub struct IpPoolIndexSpec {
    /// Pool name -> CIDR.
    #[serde(default)]
    #[schemars(schema_with = "pools_schema")]
    pub pools: BTreeMap<String, IpNet>,
}

fn pools_schema(g: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "additionalProperties": crate::crd::cidr_schema(g),
        "description": "Pool name -> the pool's CIDR."
    })
}

/// The index and the stored pools, read in that order.
struct IndexRead {
    /// `None`: no index stored yet (a store from before it existed).
    revision: Option<Revision>,
    entries: BTreeMap<String, IpNet>,
    stored: BTreeMap<String, IpNet>,
}

impl IndexRead {
    async fn read(store: &dyn Datastore) -> Result<IndexRead, IpamError> {
        let (revision, entries) = match store.get(Kind::IpPoolIndex, INDEX_NAME).await {
            Ok(obj) => {
                let spec: IpPoolIndexSpec = decode(&obj)?;
                (Some(obj.revision), spec.pools)
            }
            Err(StoreError::NotFound { .. }) => (None, BTreeMap::new()),
            Err(e) => return Err(e.into()),
        };
        let mut stored = BTreeMap::new();
        for obj in store.list(Kind::IpPool, "").await?.objects {
            let spec: IpPoolSpec = decode(&obj)?;
            stored.insert(obj.name, spec.cidr);
        }
        Ok(IndexRead {
            revision,
            entries,
            stored,
        })
    }

    /// The entries the index should hold: its own, the stored pools'
    /// CIDRs over them, and `without` removed unless it is stored.
    fn pools(&self, without: Option<&str>) -> BTreeMap<String, IpNet> {
        let mut pools = self.entries.clone();
        pools.extend(self.stored.iter().map(|(n, c)| (n.clone(), *c)));
        if let Some(name) = without.filter(|n| !self.stored.contains_key(*n)) {
            pools.remove(name);
        }
        pools
    }

    /// Refuses `cidr` when it overlaps a stored pool or an entry.
    fn check(&self, cidr: IpNet) -> Result<(), PoolError> {
        crate::pool::check_overlap(cidr, self.stored.iter().map(|(n, c)| (n.as_str(), *c)))?;
        let reserved = self
            .entries
            .iter()
            .filter(|(n, _)| !self.stored.contains_key(*n));
        crate::pool::check_overlap(cidr, reserved.map(|(n, c)| (n.as_str(), *c))).map_err(|e| {
            match e {
                PoolError::Overlaps {
                    cidr,
                    other,
                    other_cidr,
                } => PoolError::OverlapsReserved {
                    cidr,
                    other,
                    other_cidr,
                },
                e => e,
            }
        })
    }

    /// The write that replaces the index with `pools`, on the revision read.
    fn write(&self, pools: BTreeMap<String, IpNet>) -> Result<Write, StoreError> {
        let value = encode(Kind::IpPoolIndex, INDEX_NAME, &IpPoolIndexSpec { pools })?;
        let (kind, name) = (Kind::IpPoolIndex, INDEX_NAME.to_owned());
        Ok(match &self.revision {
            None => Write::Create { kind, name, value },
            Some(expected) => Write::Update {
                kind,
                name,
                value,
                expected: expected.clone(),
            },
        })
    }
}

/// How one attempt at an index write ended.
enum Tried {
    Done,
    /// The index changed since it was read: read it again.
    Raced,
}

impl Tried {
    /// `Raced` when the index was written since it was read (a conflict,
    /// or its creation lost to another), the error for any other failure.
    fn from<T>(result: Result<T, StoreError>) -> Result<Tried, IpamError> {
        match result {
            Ok(_) => Ok(Tried::Done),
            Err(
                StoreError::Conflict {
                    kind: Kind::IpPoolIndex,
                    ..
                }
                | StoreError::AlreadyExists {
                    kind: Kind::IpPoolIndex,
                    ..
                },
            ) => Ok(Tried::Raced),
            Err(e) => Err(e.into()),
        }
    }
}

/// The attempts at one index write: each after the first waits the
/// allocator's back-off; after `max_attempts`, `TooManyConflicts`.
struct Attempts<'a> {
    config: &'a AllocatorConfig,
    what: String,
    made: u32,
}

impl<'a> Attempts<'a> {
    fn new(config: &'a AllocatorConfig, what: String) -> Self {
        Attempts {
            config,
            what,
            made: 0,
        }
    }

    /// Waits for the next attempt, or says there is none left.
    async fn next(&mut self) -> Result<(), IpamError> {
        if self.made >= self.config.max_attempts {
            return Err(IpamError::TooManyConflicts {
                what: format!("pool index ({})", self.what),
                attempts: self.config.max_attempts,
            });
        }
        if self.made > 0 {
            debug!(what = %self.what, attempt = self.made, "pool index changed; reading it again");
            backoff(self.config, self.made - 1).await;
        }
        self.made += 1;
        Ok(())
    }
}

/// Creates pool `name` (already validated) unless its CIDR overlaps a pool
/// or a reservation, or its name is taken; race-free against other
/// creates (module doc).
pub(crate) async fn create(
    store: &dyn Datastore,
    config: &AllocatorConfig,
    name: &str,
    spec: &IpPoolSpec,
) -> Result<(), IpamError> {
    let value = encode(Kind::IpPool, name, spec)?;
    let mut attempts = Attempts::new(config, format!("creating pool {name:?}"));
    loop {
        attempts.next().await?;
        let read = IndexRead::read(store).await?;
        read.check(spec.cidr)?;
        let mut pools = read.pools(None);
        if pools.contains_key(name) {
            return Err(StoreError::AlreadyExists {
                kind: Kind::IpPool,
                name: name.to_owned(),
            }
            .into());
        }
        pools.insert(name.to_owned(), spec.cidr);
        let index = read.write(pools)?;
        if store.transactional() {
            let pool = Write::Create {
                kind: Kind::IpPool,
                name: name.to_owned(),
                value: value.clone(),
            };
            if let Tried::Done = Tried::from(store.write_all(vec![index, pool]).await)? {
                return Ok(());
            }
        } else if let Tried::Done = Tried::from(write_one(store, index).await)? {
            return create_reserved(store, config, name, value).await;
        }
    }
}

/// Creates the pool whose index entry was just written; gives the entry
/// back when the create certainly failed (an unknown outcome keeps it: a
/// stale reservation is safe, a pool the index lacks is not).
async fn create_reserved(
    store: &dyn Datastore,
    config: &AllocatorConfig,
    name: &str,
    value: Vec<u8>,
) -> Result<(), IpamError> {
    match store.create(Kind::IpPool, name, value).await {
        Ok(_) => Ok(()),
        Err(e @ (StoreError::AlreadyExists { .. } | StoreError::Invalid(_))) => {
            if let Err(undo) = unregister(store, config, name).await {
                warn!(pool = name, error = %undo, "could not give back the pool index entry of a refused create");
            }
            Err(e.into())
        }
        Err(e) => Err(e.into()),
    }
}

/// Deletes pool `name` stored at `revision` and its index entry (module
/// doc: one transaction where the store has them).
pub(crate) async fn delete(
    store: &dyn Datastore,
    config: &AllocatorConfig,
    name: &str,
    revision: &Revision,
) -> Result<(), IpamError> {
    let pool = Write::Delete {
        kind: Kind::IpPool,
        name: name.to_owned(),
        expected: revision.clone(),
    };
    if !store.transactional() {
        write_one(store, pool).await?;
        return unregister(store, config, name).await;
    }
    let mut attempts = Attempts::new(config, format!("deleting pool {name:?}"));
    loop {
        attempts.next().await?;
        let read = IndexRead::read(store).await?;
        let mut pools = read.pools(None);
        pools.remove(name);
        let index = read.write(pools)?;
        if let Tried::Done = Tried::from(store.write_all(vec![pool.clone(), index]).await)? {
            return Ok(());
        }
    }
}

/// Rewrites the index without `name` (kept when a pool of that name is
/// stored). Always writes, so that creates that read before conflict.
pub(crate) async fn unregister(
    store: &dyn Datastore,
    config: &AllocatorConfig,
    name: &str,
) -> Result<(), IpamError> {
    let mut attempts = Attempts::new(config, format!("removing pool {name:?}"));
    loop {
        attempts.next().await?;
        let read = IndexRead::read(store).await?;
        let write = read.write(read.pools(Some(name)))?;
        if let Tried::Done = Tried::from(write_one(store, write).await)? {
            return Ok(());
        }
    }
}

/// Removes the entry of `name` when no pool of that name is stored (a
/// stale reservation); false when there was none.
pub(crate) async fn forget_reservation(
    store: &dyn Datastore,
    config: &AllocatorConfig,
    name: &str,
) -> Result<bool, IpamError> {
    let read = IndexRead::read(store).await?;
    if read.stored.contains_key(name) || !read.entries.contains_key(name) {
        return Ok(false);
    }
    unregister(store, config, name).await?;
    Ok(true)
}

/// The index as stored (`None`: not created yet).
pub async fn read_index(store: &dyn Datastore) -> Result<Option<IpPoolIndexSpec>, IpamError> {
    match store.get(Kind::IpPoolIndex, INDEX_NAME).await {
        Ok(obj) => Ok(Some(decode(&obj)?)),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
