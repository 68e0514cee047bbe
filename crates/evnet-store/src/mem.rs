//! [`MemStore`]: the shared core behind a lock, nothing on disk.

use std::sync::{PoisonError, RwLock};

use async_trait::async_trait;

use crate::state::Core;
use crate::{
    KeyValue, RangeResponse, Revision, Store, StoreError, StoreOptions, Txn, TxnResponse,
    WatchStream,
};

/// An in-memory store for tests, simulations and benchmarks. It behaves
/// exactly like [`crate::EmbeddedStore`] (the same core decides every answer)
/// but forgets everything when dropped. Dropping it ends every watch with
/// `Err(Closed)`.
#[derive(Debug)]
pub struct MemStore {
    core: RwLock<Core>,
}

impl MemStore {
    /// An empty store with [`StoreOptions::default`].
    pub fn new() -> Self {
        Self::with_options(StoreOptions::default())
    }

    pub fn with_options(options: StoreOptions) -> Self {
        MemStore {
            core: RwLock::new(Core::new(options)),
        }
    }
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for MemStore {
    fn drop(&mut self) {
        self.core
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .close();
    }
}

// The core never leaves its state half-changed on a panic (plan does not
// mutate; apply only inserts into collections), so a poisoned lock still
// guards a consistent state.
impl MemStore {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Core> {
        self.core.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Core> {
        self.core.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl Store for MemStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.read().get(key))
    }

    async fn range(&self, prefix: &str) -> Result<RangeResponse, StoreError> {
        Ok(self.read().range(prefix))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        let mut core = self.write();
        let plan = core.plan(std::slice::from_ref(&txn));
        let mut responses = core.apply(plan);
        Ok(responses.pop().expect("one answer per transaction"))
    }

    async fn watch(
        &self,
        prefix: &str,
        start_revision: Revision,
    ) -> Result<WatchStream, StoreError> {
        self.write().watch(prefix, start_revision)
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.read().revision())
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.write().compact(revision);
        Ok(())
    }
}
