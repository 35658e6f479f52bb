//! The datastore contract every IPAM object goes through.
//!
//! A datastore is a set of objects addressed by ([`Kind`], name), each with an
//! opaque [`Revision`] that changes on every write. All writes after the
//! first are compare-and-swap on the revision the writer read: this is what
//! keeps one address from being handed out twice when several allocators
//! race (ARCHITECTURE.md, principle 3). Values are the JSON encoding of the
//! object's `spec` with Calico's field names, so the Kubernetes backend can
//! store them as CRD specs unchanged.
//!
//! Backends: `sqlite` (embedded default), `etcd`, `kubernetes`.

use std::fmt;
use std::pin::Pin;

use futures_core::Stream;

pub mod checks;
pub mod etcd;
pub mod kubernetes;
pub mod sqlite;
mod url;

pub use url::{open, DatastoreUrl, DEFAULT_DATASTORE};

/// The kinds of object felix stores; one CRD each in the Kubernetes backend
/// (group `crd.felix-rs.io`, version `v1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    IpPool,
    IpamBlock,
    BlockAffinity,
    IpamHandle,
    FelixNode,
    BgpPeer,
    BgpConfiguration,
    /// The one object every pool create and delete rewrites, so that two
    /// creates of overlapping pools conflict ([`crate::pool_index`]).
    IpPoolIndex,
}

impl Kind {
    /// Every kind, in a fixed order.
    pub const ALL: [Kind; 8] = [
        Kind::IpPool,
        Kind::IpamBlock,
        Kind::BlockAffinity,
        Kind::IpamHandle,
        Kind::FelixNode,
        Kind::BgpPeer,
        Kind::BgpConfiguration,
        Kind::IpPoolIndex,
    ];

    /// The CRD kind name (`IPPool`, `IPAMBlock`, …).
    pub fn crd_kind(self) -> &'static str {
        match self {
            Kind::IpPool => "IPPool",
            Kind::IpamBlock => "IPAMBlock",
            Kind::BlockAffinity => "BlockAffinity",
            Kind::IpamHandle => "IPAMHandle",
            Kind::FelixNode => "FelixNode",
            Kind::BgpPeer => "BGPPeer",
            Kind::BgpConfiguration => "BGPConfiguration",
            Kind::IpPoolIndex => "IPPoolIndex",
        }
    }

    /// The lower-case plural used in key paths and Kubernetes resource URLs
    /// (`ippools`, `ipamblocks`, …).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::IpPool => "ippools",
            Kind::IpamBlock => "ipamblocks",
            Kind::BlockAffinity => "blockaffinities",
            Kind::IpamHandle => "ipamhandles",
            Kind::FelixNode => "felixnodes",
            Kind::BgpPeer => "bgppeers",
            Kind::BgpConfiguration => "bgpconfigurations",
            Kind::IpPoolIndex => "ippoolindexes",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.crd_kind())
    }
}

/// An object's version as the backend knows it: SQLite's and etcd's
/// revisions are integers, Kubernetes' `resourceVersion` is an opaque
/// string. Callers only compare revisions for equality and hand them back.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Revision(pub String);

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub kind: Kind,
    /// Unique within its kind; a valid Kubernetes object name (DNS-1123
    /// subdomain: lower-case alphanumerics, `-` and `.`, at most 253 bytes).
    pub name: String,
    /// JSON object of the object's spec. sqlite and etcd store the bytes as
    /// given (undecodable values are reported as `Corrupt` by the decoder
    /// above the store); the Kubernetes backend can only store a JSON object
    /// and hands back an equal JSON value re-encoded, not the same bytes.
    pub value: Vec<u8>,
    pub revision: Revision,
}

/// The result of a list: the objects and the store revision they were read
/// at, from which a watch can resume without missing a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub objects: Vec<Object>,
    pub revision: Revision,
}

/// A change seen by a watch, in the order the store applied them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// Created or updated; carries the new value and revision.
    Put(Object),
    /// Deleted; `revision` is the store revision of the deletion.
    Deleted {
        kind: Kind,
        name: String,
        revision: Revision,
    },
}

/// A stream of changes. It ends with `Err(StoreError::Compacted)` when the
/// requested start revision is no longer available: the watcher must list
/// again and watch from the listing's revision.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, StoreError>> + Send>>;

/// What can go wrong at the datastore boundary (ARCHITECTURE.md, principle
/// 4: conflict / not found / unavailable, plus corrupt stored data).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} {name:?} not found")]
    NotFound { kind: Kind, name: String },
    #[error("{kind} {name:?} already exists")]
    AlreadyExists { kind: Kind, name: String },
    /// The object changed since the caller read it: re-read and retry.
    #[error("{kind} {name:?} was modified concurrently (expected revision {expected})")]
    Conflict {
        kind: Kind,
        name: String,
        expected: Revision,
    },
    /// A stored value that cannot be decoded; names the key so an operator
    /// can find and repair it.
    #[error("{kind} {name:?} holds a corrupt value: {reason}")]
    Corrupt {
        kind: Kind,
        name: String,
        reason: String,
    },
    /// The watch start revision has been compacted away: list again.
    #[error("revision {0} is no longer available (compacted); list and watch again")]
    Compacted(Revision),
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A [`Datastore::write_all`] of this many writes is more than the
    /// store takes in one transaction (etcd's `--max-txn-ops`, 128 by
    /// default); nothing was written. Write fewer at once.
    #[error("the datastore refused a transaction of {writes} writes as too large (etcd --max-txn-ops); nothing was written")]
    TooManyWrites { writes: usize },
    /// The backend could not be reached or failed; worth retrying later.
    #[error("datastore unavailable: {0}")]
    Unavailable(String),
}

/// One write of an atomic [`Datastore::write_all`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Creates an object; fails with `AlreadyExists` when the name is taken.
    Create {
        kind: Kind,
        name: String,
        value: Vec<u8>,
    },
    /// Replaces an object if its revision is still `expected`; fails with
    /// `Conflict`, or `NotFound` when it is gone.
    Update {
        kind: Kind,
        name: String,
        value: Vec<u8>,
        expected: Revision,
    },
    /// Deletes an object if its revision is still `expected`; fails with
    /// `Conflict`, or `NotFound` when it is gone. Its revision in the
    /// result is the store revision of the transaction.
    Delete {
        kind: Kind,
        name: String,
        expected: Revision,
    },
}

impl Write {
    pub fn kind(&self) -> Kind {
        match self {
            Write::Create { kind, .. }
            | Write::Update { kind, .. }
            | Write::Delete { kind, .. } => *kind,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Write::Create { name, .. }
            | Write::Update { name, .. }
            | Write::Delete { name, .. } => name,
        }
    }

    /// The revision the write is conditional on (`None` for a create).
    pub fn expected(&self) -> Option<&Revision> {
        match self {
            Write::Create { .. } => None,
            Write::Update { expected, .. } | Write::Delete { expected, .. } => Some(expected),
        }
    }
}

/// Applies one write on its own (stores without transactions).
pub(crate) async fn write_one(store: &dyn Datastore, write: Write) -> Result<(), StoreError> {
    match write {
        Write::Create { kind, name, value } => store.create(kind, &name, value).await.map(drop),
        Write::Update {
            kind,
            name,
            value,
            expected,
        } => store.update(kind, &name, value, &expected).await.map(drop),
        Write::Delete {
            kind,
            name,
            expected,
        } => store.delete(kind, &name, &expected).await,
    }
}

/// The compare-and-swap object store every IPAM operation is built on.
#[async_trait::async_trait]
pub trait Datastore: Send + Sync {
    /// Reads one object.
    async fn get(&self, kind: Kind, name: &str) -> Result<Object, StoreError>;

    /// Lists the objects of a kind whose names start with `name_prefix`
    /// (empty: all), sorted by name, with the store revision of the read.
    async fn list(&self, kind: Kind, name_prefix: &str) -> Result<Listing, StoreError>;

    /// The names of the objects of a kind whose names start with
    /// `name_prefix`, sorted: a listing without the values, for callers that
    /// only need to know what exists (the allocator looking for a block no
    /// one has claimed). Backends that can skip the values override it.
    async fn list_names(&self, kind: Kind, name_prefix: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .list(kind, name_prefix)
            .await?
            .objects
            .into_iter()
            .map(|o| o.name)
            .collect())
    }

    /// Creates an object; `AlreadyExists` when the name is taken. A name
    /// that is not a Kubernetes object name is refused with `Invalid` before
    /// anything is written ([`checks::name`]).
    async fn create(&self, kind: Kind, name: &str, value: Vec<u8>) -> Result<Revision, StoreError>;

    /// Replaces an object if its revision is still `expected`; `Conflict`
    /// otherwise, `NotFound` when it was deleted.
    async fn update(
        &self,
        kind: Kind,
        name: &str,
        value: Vec<u8>,
        expected: &Revision,
    ) -> Result<Revision, StoreError>;

    /// Deletes an object if its revision is still `expected`.
    async fn delete(&self, kind: Kind, name: &str, expected: &Revision) -> Result<(), StoreError>;

    /// Whether [`Datastore::write_all`] works here: sqlite and etcd apply
    /// it as one transaction; the Kubernetes API has no transaction over
    /// several objects.
    fn transactional(&self) -> bool {
        false
    }

    /// Applies every write or none, atomically (the allocator writes a
    /// block and the handles it counts together). Each write's condition
    /// is checked as by [`Datastore::create`] / [`Datastore::update`] /
    /// [`Datastore::delete`]; a batch larger than the store takes in one
    /// transaction is refused with `TooManyWrites`, nothing written; when
    /// one fails nothing is written and the error is the first failing
    /// write's (naming its kind and name). Returns the new revision of each
    /// write, in order. Backends that are not [`Datastore::transactional`]
    /// refuse with `Invalid` before writing anything.
    async fn write_all(&self, writes: Vec<Write>) -> Result<Vec<Revision>, StoreError> {
        let _ = writes;
        Err(StoreError::Invalid(
            "this datastore has no transactions over several objects".into(),
        ))
    }

    /// Streams the changes to a kind after `after` (a revision from a
    /// listing or an earlier event); from now when `None`.
    async fn watch(&self, kind: Kind, after: Option<&Revision>) -> Result<WatchStream, StoreError>;
}
