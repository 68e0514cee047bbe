//! [`EmbeddedStore`]: the shared core, persisted to a redb file with group
//! commit.
//!
//! Reads are served from memory (the whole key space is loaded on open).
//! Writes go through one writer thread that owns the database:
//!
//! 1. it takes every transaction queued so far (up to
//!    [`StoreOptions::max_batch`]),
//! 2. plans them in order against the applied state ([`Core::plan`]: each
//!    sees the effects of the ones before it),
//! 3. writes the final value of every touched key and the new revision in
//!    one redb write transaction committed with [`Durability::Immediate`]
//!    (one fsync for the whole batch),
//! 4. applies the plan to memory — only now do readers and watchers see it —
//!    and answers each caller.
//!
//! So a `txn` returns only after its effects are on disk, and many concurrent
//! writers share one fsync. A batch whose transactions change nothing (failed
//! compares, deletes of missing keys) skips the disk.
//!
//! If a commit fails the batch's callers get [`StoreError::Io`] and the store
//! refuses every later write with the same error: after a failed fsync the
//! file's state is unknown, so only a reopen (which reads what is really on
//! disk) may continue. Reads keep answering from the last applied state.
//!
//! A commit that fails because the disk is full (ENOSPC, EDQUOT) is answered
//! with [`StoreError::Full`] instead, and the writer closes the file: the
//! next batch reopens it (redb repairs it to its last completed commit) and
//! goes on only if the file's revision is the one in memory, which holds
//! exactly the writes that were acknowledged. Until the reopen succeeds and
//! its commit fits, writes answer `Full`; reads are unaffected.
//!
//! On disk: table `kv` maps each key to its `create_revision`, `mod_revision`
//! and `version` (little-endian u64 each) followed by the value; table `meta`
//! holds the store revision and a format number. History is not persisted: a
//! reopened store treats everything up to its revision as compacted.
//!
//! Crash safety is redb's: commits use its default one-phase commit with
//! checksums, so after a crash the file opens at the last completed commit
//! (redb verifies and repairs the file on that open, which takes time
//! proportional to the file's size).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::thread::JoinHandle;

use async_trait::async_trait;
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use crate::state::{BatchPlan, Core};
use crate::{
    KeyValue, RangeResponse, Revision, Store, StoreError, StoreOptions, Txn, TxnResponse,
    WatchStream,
};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_REVISION: &str = "revision";
const META_FORMAT: &str = "format";
const FORMAT: u64 = 1;
const HEADER: usize = 24;

/// What the writer thread has committed since the store was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Disk commits (each one fsync). Batches that changed nothing are not
    /// committed and not counted.
    pub commits: u64,
    /// Transactions answered by those commits (including ones whose compare
    /// failed but that rode in a batch that wrote something).
    pub txns: u64,
    /// The most transactions one commit carried.
    pub largest_batch: u64,
}

#[derive(Debug, Default)]
struct Counters {
    commits: AtomicU64,
    txns: AtomicU64,
    largest_batch: AtomicU64,
}

struct Request {
    txn: Txn,
    reply: oneshot::Sender<Result<TxnResponse, StoreError>>,
}

/// A durable store in one redb file; see the module docs for how writes
/// reach the disk. Only one `EmbeddedStore` may have a file open at a time
/// (redb locks it). Dropping the store finishes the queued writes (the
/// dropping thread waits for them), closes the file and ends every watch
/// with `Err(Closed)`.
pub struct EmbeddedStore {
    core: Arc<RwLock<Core>>,
    counters: Arc<Counters>,
    queue: Option<mpsc::UnboundedSender<Request>>,
    writer: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn io_error(context: impl std::fmt::Display, err: impl std::fmt::Display) -> StoreError {
    StoreError::Io(format!("{context}: {err}"))
}

/// [`StoreError::Full`] when `err` comes from a disk without space (ENOSPC,
/// EDQUOT), else [`StoreError::Io`].
fn classify(context: &str, err: redb::Error) -> StoreError {
    let full = match &err {
        redb::Error::Io(e) => e.kind() == std::io::ErrorKind::StorageFull || matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)),
        _ => false,
    };
    if full { StoreError::Full(format!("{context}: {err}")) } else { io_error(context, err) }
}

impl EmbeddedStore {
    /// Opens (or creates) the store file at `path` with
    /// [`StoreOptions::default`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, StoreOptions::default())
    }

    /// Opens (or creates) the store file at `path`, loads every key and the
    /// revision, and starts the writer thread.
    pub fn open_with(path: impl AsRef<Path>, options: StoreOptions) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let context = format!("opening store {}", path.display());
        let db = Database::create(&path).map_err(|e| io_error(&context, e))?;
        init(&db).map_err(|e| io_error(&context, e))?;
        let (kvs, revision) = load(&db).map_err(|e| io_error(&context, e))?;
        tracing::debug!(path = %path.display(), keys = kvs.len(), revision, "opened store");

        let core = Arc::new(RwLock::new(Core::restore(kvs, revision, options.clone())));
        let (queue, requests) = mpsc::unbounded_channel();
        let writer_core = Arc::clone(&core);
        let max_batch = options.max_batch.max(1);
        let counters = Arc::new(Counters::default());
        let writer = Writer {
            db: Some(db),
            core: writer_core,
            counters: Arc::clone(&counters),
            max_batch,
            path: path.clone(),
        };
        let writer = std::thread::Builder::new()
            .name("evnet-store-writer".into())
            .spawn(move || writer.run(requests))
            .map_err(|e| io_error("starting the store writer thread", e))?;
        Ok(EmbeddedStore {
            core,
            counters,
            queue: Some(queue),
            writer: Some(writer),
            path,
        })
    }

    /// Group-commit counters, for metrics and benchmarks.
    pub fn commit_stats(&self) -> CommitStats {
        CommitStats {
            commits: self.counters.commits.load(Ordering::Relaxed),
            txns: self.counters.txns.load(Ordering::Relaxed),
            largest_batch: self.counters.largest_batch.load(Ordering::Relaxed),
        }
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Core> {
        self.core.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Core> {
        self.core.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what is queued and exit,
        // which drops (closes) the database.
        self.queue.take();
        let panicked = self
            .writer
            .take()
            .is_some_and(|writer| writer.join().is_err());
        if panicked {
            tracing::error!(path = %self.path.display(), "store writer thread panicked");
        }
        self.write().close();
    }
}

/// Creates the tables on a new file and checks the format of an old one.
#[expect(
    clippy::result_large_err,
    reason = "once per open or per committed batch; the error is turned into a StoreError at once"
)]
fn init(db: &Database) -> Result<(), redb::Error> {
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate);
    {
        let kv = tx.open_table(KV)?;
        let mut meta = tx.open_table(META)?;
        let format = meta.get(META_FORMAT)?.map(|v| v.value());
        match format {
            Some(FORMAT) => {}
            Some(other) => {
                return Err(redb::Error::Io(std::io::Error::other(format!(
                    "unsupported store format {other} (this build reads format {FORMAT})"
                ))));
            }
            None if kv.len()? == 0 && meta.get(META_REVISION)?.is_none() => {
                meta.insert(META_FORMAT, FORMAT)?;
            }
            None => {
                return Err(redb::Error::Io(std::io::Error::other(
                    "the file holds keys but no format marker; it is not an evnet store",
                )));
            }
        }
    }
    tx.commit()?;
    Ok(())
}

#[expect(
    clippy::result_large_err,
    reason = "once per open or per committed batch; the error is turned into a StoreError at once"
)]
fn load(db: &Database) -> Result<(BTreeMap<String, KeyValue>, Revision), redb::Error> {
    let tx = db.begin_read()?;
    let revision = tx
        .open_table(META)?
        .get(META_REVISION)?
        .map_or(0, |v| v.value());
    let mut kvs = BTreeMap::new();
    for entry in tx.open_table(KV)?.iter()? {
        let (key, value) = entry?;
        let kv = decode(key.value(), value.value()).ok_or_else(|| {
            redb::Error::Io(std::io::Error::other(format!(
                "the record of key {:?} is shorter than its header",
                key.value()
            )))
        })?;
        kvs.insert(kv.key.clone(), kv);
    }
    Ok((kvs, revision))
}

fn encode(kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + kv.value.len());
    out.extend_from_slice(&kv.create_revision.to_le_bytes());
    out.extend_from_slice(&kv.mod_revision.to_le_bytes());
    out.extend_from_slice(&kv.version.to_le_bytes());
    out.extend_from_slice(&kv.value);
    out
}

fn decode(key: &str, record: &[u8]) -> Option<KeyValue> {
    if record.len() < HEADER {
        return None;
    }
    let word = |i: usize| u64::from_le_bytes(record[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    Some(KeyValue {
        key: key.to_owned(),
        value: record[HEADER..].to_vec(),
        create_revision: word(0),
        mod_revision: word(1),
        version: word(2),
    })
}

#[expect(
    clippy::result_large_err,
    reason = "once per open or per committed batch; the error is turned into a StoreError at once"
)]
fn persist(db: &Database, plan: &BatchPlan) -> Result<(), redb::Error> {
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate);
    {
        let mut kv_table = tx.open_table(KV)?;
        for (key, value) in &plan.writes {
            match value {
                Some(kv) => {
                    kv_table.insert(key.as_str(), encode(kv).as_slice())?;
                }
                None => {
                    kv_table.remove(key.as_str())?;
                }
            }
        }
        tx.open_table(META)?.insert(META_REVISION, plan.revision)?;
    }
    tx.commit()?;
    Ok(())
}

/// The writer thread: owns the database and is the only one that changes
/// the core's keys.
struct Writer {
    /// `None` after a commit failed for want of space, until a reopen works.
    db: Option<Database>,
    core: Arc<RwLock<Core>>,
    counters: Arc<Counters>,
    max_batch: usize,
    path: PathBuf,
}

impl Writer {
    fn run(mut self, mut requests: mpsc::UnboundedReceiver<Request>) {
        let mut failure: Option<StoreError> = None;
        let mut batch: Vec<Request> = Vec::new();
        while let Some(first) = requests.blocking_recv() {
            batch.push(first);
            while batch.len() < self.max_batch {
                match requests.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            if let Some(err) = &failure {
                for request in batch.drain(..) {
                    let _ = request.reply.send(Err(err.clone()));
                }
                continue;
            }
            let (txns, replies): (Vec<Txn>, Vec<_>) =
                batch.drain(..).map(|r| (r.txn, r.reply)).unzip();
            if self.db.is_none()
                && let Err(err) = self.reopen()
            {
                let permanent = !matches!(err, StoreError::Full(_));
                for reply in replies {
                    let _ = reply.send(Err(err.clone()));
                }
                if permanent {
                    failure = Some(err);
                }
                continue;
            }
            match self.commit(txns, replies) {
                Ok(()) => {}
                // Out of space: the file is closed; the next batch reopens it.
                Err(StoreError::Full(_)) => self.db = None,
                Err(err) => failure = Some(err),
            }
        }
    }

    /// Reopens the file after a commit that ran out of space. The file must
    /// hold the revision memory holds (the failed commit was never applied
    /// to memory, nor acknowledged); anything else is a permanent error.
    fn reopen(&mut self) -> Result<(), StoreError> {
        let context = format!("reopening store {}", self.path.display());
        let db = Database::create(&self.path).map_err(|e| classify(&context, e.into()))?;
        let (_, revision) = load(&db).map_err(|e| classify(&context, e))?;
        let expected = self.core.read().unwrap_or_else(PoisonError::into_inner).revision();
        if revision != expected {
            return Err(StoreError::Io(format!(
                "{context}: the file is at revision {revision}, memory at {expected}; refusing writes until a restart"
            )));
        }
        tracing::info!(path = %self.path.display(), revision, "store reopened after running out of space");
        self.db = Some(db);
        Ok(())
    }

    /// Plans, persists and applies one batch, answering every caller.
    /// Returns the error that must refuse all later writes, if the disk
    /// commit failed.
    fn commit(
        &self,
        txns: Vec<Txn>,
        replies: Vec<oneshot::Sender<Result<TxnResponse, StoreError>>>,
    ) -> Result<(), StoreError> {
        let plan = self
            .core
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .plan(&txns);
        let count = txns.len() as u64;
        drop(txns);
        if !plan.revisions.is_empty() {
            let db = self.db.as_ref().ok_or_else(|| StoreError::Closed)?;
            if let Err(err) = persist(db, &plan) {
                let err = classify(&format!("committing to store {}", self.path.display()), err);
                if matches!(err, StoreError::Full(_)) {
                    tracing::error!(path = %self.path.display(), error = %err, "store commit failed: no space; writes are refused until it returns");
                } else {
                    tracing::error!(path = %self.path.display(), error = %err, "store commit failed; refusing further writes");
                }
                for reply in replies {
                    let _ = reply.send(Err(err.clone()));
                }
                return Err(err);
            }
            self.counters.commits.fetch_add(1, Ordering::Relaxed);
            self.counters.txns.fetch_add(count, Ordering::Relaxed);
            self.counters
                .largest_batch
                .fetch_max(count, Ordering::Relaxed);
        }
        let responses = self
            .core
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .apply(plan);
        for (reply, response) in replies.into_iter().zip(responses) {
            // A caller that stopped waiting still had its write applied.
            let _ = reply.send(Ok(response));
        }
        Ok(())
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.read().get(key))
    }

    async fn range(&self, prefix: &str) -> Result<RangeResponse, StoreError> {
        Ok(self.read().range(prefix))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        let (reply, answer) = oneshot::channel();
        let queue = self.queue.as_ref().ok_or(StoreError::Closed)?;
        queue
            .send(Request { txn, reply })
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let kv = KeyValue {
            key: "a/b".into(),
            value: vec![0, 1, 2, 255],
            create_revision: 3,
            mod_revision: u64::MAX,
            version: 7,
        };
        assert_eq!(decode("a/b", &encode(&kv)), Some(kv));
        assert_eq!(decode("k", &[0; HEADER - 1]), None);
    }

    #[test]
    fn a_file_opened_twice_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let first = EmbeddedStore::open(&path).unwrap();
        let second = EmbeddedStore::open(&path);
        assert!(matches!(second, Err(StoreError::Io(_))), "{second:?}");
        drop(first);
        EmbeddedStore::open(&path).unwrap();
    }
}
