//! A store that passes every call on to another, telling a hook about it
//! first: the hook counts calls, delays them or makes them fail
//! (`ipam/tests/allocation_cost.rs`), and the wrapper can hide the inner
//! store's transactions (`felix-rs/benches/ipam.rs`, to measure the
//! Kubernetes backend's write order on a fast store).

use std::sync::Arc;

use crate::store::{Datastore, Kind, Listing, Object, Revision, StoreError, WatchStream, Write};

/// One call about to be passed on.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// `get`, `list`, `list_names`, `create`, `update`, `delete`,
    /// `write_all` or `watch`.
    pub op: &'static str,
    /// The kind of the object; for `write_all`, of its first write (a
    /// block when the batch is empty).
    pub kind: Kind,
    /// The writes of a `write_all`; empty otherwise.
    pub writes: &'a [Write],
}

/// What a wrapper does before passing a call on; an error is returned in
/// place of the call (which then never reaches the inner store).
#[async_trait::async_trait]
pub trait CallHook: Send + Sync {
    async fn before(&self, call: Call<'_>) -> Result<(), StoreError>;
}

/// Passes every call on unchanged.
#[async_trait::async_trait]
impl CallHook for () {
    async fn before(&self, _: Call<'_>) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A shared hook (the test keeps its own handle to read what it saw).
#[async_trait::async_trait]
impl<H: CallHook + ?Sized> CallHook for Arc<H> {
    async fn before(&self, call: Call<'_>) -> Result<(), StoreError> {
        (**self).before(call).await
    }
}

/// `inner` behind `hook`.
pub struct Interposed<H> {
    pub inner: Arc<dyn Datastore>,
    pub hook: H,
    /// False: [`Datastore::transactional`] says no and `write_all` is
    /// refused, as by a store without transactions.
    pub transactions: bool,
}

impl<H: CallHook> Interposed<H> {
    /// `inner` behind `hook`, its transactions shown.
    pub fn new(inner: Arc<dyn Datastore>, hook: H) -> Self {
        Interposed {
            inner,
            hook,
            transactions: true,
        }
    }

    async fn before(&self, op: &'static str, kind: Kind) -> Result<(), StoreError> {
        self.hook
            .before(Call {
                op,
                kind,
                writes: &[],
            })
            .await
    }
}

impl Interposed<()> {
    /// `inner` with its transactions over several objects hidden.
    pub fn without_transactions(inner: Arc<dyn Datastore>) -> Self {
        Interposed {
            inner,
            hook: (),
            transactions: false,
        }
    }
}

#[async_trait::async_trait]
impl<H: CallHook> Datastore for Interposed<H> {
    async fn get(&self, kind: Kind, name: &str) -> Result<Object, StoreError> {
        self.before("get", kind).await?;
        self.inner.get(kind, name).await
    }

    async fn list(&self, kind: Kind, name_prefix: &str) -> Result<Listing, StoreError> {
        self.before("list", kind).await?;
        self.inner.list(kind, name_prefix).await
    }

    async fn list_names(&self, kind: Kind, name_prefix: &str) -> Result<Vec<String>, StoreError> {
        self.before("list_names", kind).await?;
        self.inner.list_names(kind, name_prefix).await
    }

    async fn create(&self, kind: Kind, name: &str, value: Vec<u8>) -> Result<Revision, StoreError> {
        self.before("create", kind).await?;
        self.inner.create(kind, name, value).await
    }

    async fn update(
        &self,
        kind: Kind,
        name: &str,
        value: Vec<u8>,
        expected: &Revision,
    ) -> Result<Revision, StoreError> {
        self.before("update", kind).await?;
        self.inner.update(kind, name, value, expected).await
    }

    async fn delete(&self, kind: Kind, name: &str, expected: &Revision) -> Result<(), StoreError> {
        self.before("delete", kind).await?;
        self.inner.delete(kind, name, expected).await
    }

    fn transactional(&self) -> bool {
        self.transactions && self.inner.transactional()
    }

    async fn write_all(&self, writes: Vec<Write>) -> Result<Vec<Revision>, StoreError> {
        if !self.transactions {
            return Err(StoreError::Invalid(
                "this datastore has no transactions over several objects".into(),
            ));
        }
        let kind = writes.first().map_or(Kind::IpamBlock, Write::kind);
        self.hook
            .before(Call {
                op: "write_all",
                kind,
                writes: &writes,
            })
            .await?;
        self.inner.write_all(writes).await
    }

    async fn watch(&self, kind: Kind, after: Option<&Revision>) -> Result<WatchStream, StoreError> {
        self.before("watch", kind).await?;
        self.inner.watch(kind, after).await
    }
}
