//! evnet's store: an etcd-shaped key-value interface.
//!
//! Keys are strings, values bytes. Every write transaction that changes
//! something bumps one global revision; each key remembers the revision it was
//! created at, last modified at, and how many times it was written. Readers
//! get a revision with every list so they can watch from just after it;
//! a watch that asks for history the store no longer keeps fails with
//! [`StoreError::Compacted`] and the reader lists again.
//!
//! Backends: [`MemStore`] (tests, benchmarks), [`EmbeddedStore`] (a redb
//! file under the server's data dir; an acknowledged write is on disk, and
//! concurrent writers share one fsync through group commit) and
//! [`EtcdStore`] (an etcd cluster, for several servers; an acknowledged
//! write is committed by etcd's quorum). The first two are thin shells
//! around one state machine (`state`), so they answer identically; all
//! three pass [`conformance`]. [`etcd_process`] runs real etcd members on
//! loopback for tests, benchmarks and the lab.
//!
//! Semantics worth knowing:
//! - A transaction's ops apply in order at one revision; a key written twice
//!   in one transaction keeps the last value and counts two versions.
//!   Transactions that change nothing (all deletes of missing keys, no ops)
//!   succeed without a new revision.
//! - Watches deliver one [`WatchBatch`] per revision that has events under
//!   the prefix, in revision order: the kept history first, then live. A
//!   watcher that lets [`StoreOptions::watch_capacity`] batches pile up is
//!   dropped with one `Err(Lagged)`; writers never wait for watchers.
//! - History is bounded ([`StoreOptions::history_revisions`]) and not
//!   persisted: after a restart, watching from the reopened revision or
//!   earlier answers `Compacted`. A watch from 0 is a watch from 1.
//! - Reads never wait for the disk: both backends serve `get` and `range`
//!   from memory (the embedded store loads every key when it opens), and a
//!   write becomes visible to readers and watchers only once it is durable.
//! - A caller that stops waiting for `txn` (drops the future) may still have
//!   its transaction applied.

use async_trait::async_trait;

pub mod conformance;
mod embedded;
mod etcd;
pub mod etcd_process;
mod mem;
mod state;

pub use embedded::{CommitStats, EmbeddedStore};
pub use etcd::{EtcdMemberInfo, EtcdOptions, EtcdStore, EtcdTls};
pub use mem::MemStore;

/// A store revision. 0 means "before anything was written".
pub type Revision = u64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: Revision,
    pub mod_revision: Revision,
    /// How many times the key was written since it was created (1 after the
    /// first put).
    pub version: u64,
}

/// A condition a transaction checks before it writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's `mod_revision` equals `revision`; 0 means "the key does not
    /// exist".
    ModRevision { key: String, revision: Revision },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    Put {
        key: String,
        value: Vec<u8>,
    },
    /// Deleting a missing key is not an error and changes nothing.
    Delete {
        key: String,
    },
}

/// All `compares` hold → all `ops` apply atomically at one new revision.
/// Any compare fails → nothing is written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub ops: Vec<TxnOp>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResponse {
    pub succeeded: bool,
    /// The revision the ops were written at when `succeeded` (and something
    /// changed); otherwise the current revision.
    pub revision: Revision,
    /// When a compare failed: the index of the first compare that failed.
    pub failed_compare: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeResponse {
    /// Sorted by key.
    pub kvs: Vec<KeyValue>,
    /// The store's revision at the moment of the read.
    pub revision: Revision,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    /// For a put: the new key-value. For a delete: the key, an empty value,
    /// `mod_revision` = the revision of the delete, and `create_revision` and
    /// `version` 0.
    pub kv: KeyValue,
}

/// The events of one revision, in op order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchBatch {
    pub revision: Revision,
    pub events: Vec<WatchEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// `compacted` is the newest revision whose history is gone.
    #[error(
        "revision {requested} has been compacted (history kept only after revision {compacted}); list again"
    )]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    #[error("the watcher fell too far behind and was dropped; list again")]
    Lagged,
    #[error("store is closed")]
    Closed,
    #[error("store I/O failed: {0}")]
    Io(String),
    /// The store's servers could not be reached or did not answer in time
    /// (etcd down or without quorum). A write that ended so may or may not
    /// have been applied.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The disk under the store has no space left: the write was not made
    /// (nothing of it is visible), reads still answer, and writes succeed
    /// again once space returns.
    #[error("the store's disk is full: {0}")]
    Full(String),
}

/// A stream of watch batches; yields `Err` once (then ends) when the
/// watcher is dropped for lagging or the store closes.
pub type WatchStream = tokio::sync::mpsc::Receiver<Result<WatchBatch, StoreError>>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;
    /// Every key starting with `prefix`, sorted, with the revision of the read.
    async fn range(&self, prefix: &str) -> Result<RangeResponse, StoreError>;
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError>;
    /// Changes to keys starting with `prefix` at revisions ≥ `start_revision`
    /// (history first, then live). `start_revision` = current + 1 means "only
    /// what comes next".
    async fn watch(
        &self,
        prefix: &str,
        start_revision: Revision,
    ) -> Result<WatchStream, StoreError>;
    async fn current_revision(&self) -> Result<Revision, StoreError>;
    /// Forgets history up to and including `revision`.
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;
}

/// Tuning shared by every backend in this crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// How many of the most recent revisions watches can replay; older
    /// history is compacted as new revisions arrive. Default 100,000.
    pub history_revisions: u64,
    /// How many unread batches a live watcher may hold before it is dropped
    /// with [`StoreError::Lagged`] (on top of the history queued when the
    /// watch opened). Default 1,024.
    pub watch_capacity: usize,
    /// The most transactions the embedded store commits with one fsync.
    /// Default 1,024.
    pub max_batch: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            history_revisions: 100_000,
            watch_capacity: 1024,
            max_batch: 1024,
        }
    }
}
