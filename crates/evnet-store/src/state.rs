//! The state machine both backends share.
//!
//! [`Core`] holds the keys, the global revision, a bounded history of recent
//! revisions and the live watchers. Writing is split in two so a durable
//! backend can put a step between them:
//!
//! 1. [`Core::plan`] evaluates a batch of transactions in order against the
//!    current state — each one sees the effects of the ones before it — and
//!    returns a [`BatchPlan`]: every caller's answer, one [`WatchBatch`] per new
//!    revision, and the final value of every key the batch touched. It does
//!    not change the core, so readers keep seeing the last applied state.
//! 2. [`Core::apply`] installs a plan: keys, revision, history, and delivery
//!    to watchers.
//!
//! [`crate::MemStore`] plans and applies under one lock; the embedded store
//! plans, writes the plan to disk, and applies only after the disk commit.
//! Nothing here does IO or blocks: delivering to a watcher is a `try_send`,
//! and a watcher without room is dropped with [`StoreError::Lagged`].

use std::collections::{BTreeMap, VecDeque};

use tokio::sync::mpsc;

use crate::{
    Compare, EventKind, KeyValue, RangeResponse, Revision, StoreError, StoreOptions, Txn, TxnOp,
    TxnResponse, WatchBatch, WatchEvent, WatchStream,
};

/// A live watcher. Its channel always keeps one slot free so the final
/// `Err(Lagged)` or `Err(Closed)` can be delivered without blocking.
#[derive(Debug)]
struct Watcher {
    prefix: String,
    /// The first revision the watcher wants.
    start: Revision,
    tx: mpsc::Sender<Result<WatchBatch, StoreError>>,
}

/// The result of evaluating a batch of transactions; see [`Core::plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BatchPlan {
    /// One answer per transaction, in input order.
    pub responses: Vec<TxnResponse>,
    /// One entry per new revision, in revision order.
    pub revisions: Vec<WatchBatch>,
    /// The final state of every key the batch changed: `None` = deleted.
    pub writes: BTreeMap<String, Option<KeyValue>>,
    /// The store's revision once the plan is applied.
    pub revision: Revision,
}

/// Keys, revision, history and watchers. See the module docs.
#[derive(Debug)]
pub(crate) struct Core {
    kvs: BTreeMap<String, KeyValue>,
    revision: Revision,
    /// Every revision in `(compacted, revision]`, oldest first.
    history: VecDeque<WatchBatch>,
    /// History up to and including this revision is gone.
    compacted: Revision,
    watchers: Vec<Watcher>,
    options: StoreOptions,
}

impl Core {
    /// An empty store at revision 0 with nothing compacted.
    pub fn new(options: StoreOptions) -> Self {
        Self::restore(BTreeMap::new(), 0, options)
    }

    /// A store restored from persisted keys at `revision`. History starts
    /// empty, so everything up to `revision` counts as compacted.
    pub fn restore(
        kvs: BTreeMap<String, KeyValue>,
        revision: Revision,
        options: StoreOptions,
    ) -> Self {
        Core {
            kvs,
            revision,
            history: VecDeque::new(),
            compacted: revision,
            watchers: Vec::new(),
            options,
        }
    }

    pub fn revision(&self) -> Revision {
        self.revision
    }

    #[cfg(test)]
    pub fn compacted(&self) -> Revision {
        self.compacted
    }

    pub fn get(&self, key: &str) -> Option<KeyValue> {
        self.kvs.get(key).cloned()
    }

    pub fn range(&self, prefix: &str) -> RangeResponse {
        let kvs = self
            .kvs
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, kv)| kv.clone())
            .collect();
        RangeResponse {
            kvs,
            revision: self.revision,
        }
    }

    /// Evaluates `txns` in order against the current state without changing
    /// it. A transaction whose compares all hold applies its ops at the next
    /// revision, if they change anything (deleting a missing key does not);
    /// one whose compare fails writes nothing.
    pub fn plan(&self, txns: &[Txn]) -> BatchPlan {
        let mut writes: BTreeMap<String, Option<KeyValue>> = BTreeMap::new();
        let mut revisions = Vec::new();
        let mut responses = Vec::with_capacity(txns.len());
        let mut revision = self.revision;

        for txn in txns {
            let lookup =
                |writes: &BTreeMap<String, Option<KeyValue>>, key: &str| match writes.get(key) {
                    Some(staged) => staged.clone(),
                    None => self.kvs.get(key).cloned(),
                };

            let failed = txn.compares.iter().position(|compare| match compare {
                Compare::ModRevision {
                    key,
                    revision: want,
                } => {
                    let have = lookup(&writes, key).map_or(0, |kv| kv.mod_revision);
                    have != *want
                }
            });
            if let Some(index) = failed {
                responses.push(TxnResponse {
                    succeeded: false,
                    revision,
                    failed_compare: Some(index),
                });
                continue;
            }

            let next = revision + 1;
            let mut events = Vec::new();
            for op in &txn.ops {
                match op {
                    TxnOp::Put { key, value } => {
                        let kv = match lookup(&writes, key) {
                            Some(old) => KeyValue {
                                key: key.clone(),
                                value: value.clone(),
                                create_revision: old.create_revision,
                                mod_revision: next,
                                version: old.version + 1,
                            },
                            None => KeyValue {
                                key: key.clone(),
                                value: value.clone(),
                                create_revision: next,
                                mod_revision: next,
                                version: 1,
                            },
                        };
                        writes.insert(key.clone(), Some(kv.clone()));
                        events.push(WatchEvent {
                            kind: EventKind::Put,
                            kv,
                        });
                    }
                    TxnOp::Delete { key } => {
                        if lookup(&writes, key).is_some() {
                            writes.insert(key.clone(), None);
                            events.push(WatchEvent {
                                kind: EventKind::Delete,
                                kv: KeyValue {
                                    key: key.clone(),
                                    value: Vec::new(),
                                    create_revision: 0,
                                    mod_revision: next,
                                    version: 0,
                                },
                            });
                        }
                    }
                }
            }
            if !events.is_empty() {
                revision = next;
                revisions.push(WatchBatch { revision, events });
            }
            responses.push(TxnResponse {
                succeeded: true,
                revision,
                failed_compare: None,
            });
        }

        // Keys that a batch deleted but never held before need no write.
        writes.retain(|key, value| value.is_some() || self.kvs.contains_key(key));
        BatchPlan {
            responses,
            revisions,
            writes,
            revision,
        }
    }

    /// Installs a plan made by [`Core::plan`] on this same state, delivers
    /// its revisions to watchers, trims history to the configured length, and
    /// returns the callers' answers.
    pub fn apply(&mut self, plan: BatchPlan) -> Vec<TxnResponse> {
        debug_assert!(plan.revision >= self.revision);
        for (key, value) in plan.writes {
            match value {
                Some(kv) => {
                    self.kvs.insert(key, kv);
                }
                None => {
                    self.kvs.remove(&key);
                }
            }
        }
        self.revision = plan.revision;
        for batch in plan.revisions {
            self.publish(&batch);
            self.history.push_back(batch);
        }
        let keep_from = self.revision.saturating_sub(self.options.history_revisions);
        self.forget_through(keep_from);
        plan.responses
    }

    /// Drops history up to and including `revision` (at most the current
    /// revision; compacting to an older revision than before changes nothing).
    pub fn compact(&mut self, revision: Revision) {
        self.forget_through(revision.min(self.revision));
    }

    fn forget_through(&mut self, revision: Revision) {
        if revision <= self.compacted {
            return;
        }
        self.compacted = revision;
        while self.history.front().is_some_and(|b| b.revision <= revision) {
            self.history.pop_front();
        }
    }

    /// Opens a watch on keys under `prefix` from `start` (0 counts as 1: no
    /// revision 0 ever holds changes). The kept history is queued at once;
    /// live revisions follow as they are applied.
    pub fn watch(&mut self, prefix: &str, start: Revision) -> Result<WatchStream, StoreError> {
        let from = start.max(1);
        if from <= self.compacted {
            return Err(StoreError::Compacted {
                requested: start,
                compacted: self.compacted,
            });
        }
        let replay: Vec<WatchBatch> = self
            .history
            .iter()
            .filter(|batch| batch.revision >= from)
            .filter_map(|batch| filter_batch(batch, prefix))
            .collect();
        // Room for the whole replay, the live allowance, and the final error.
        let (tx, rx) = mpsc::channel(replay.len() + self.options.watch_capacity.max(1) + 1);
        for batch in replay {
            tx.try_send(Ok(batch))
                .expect("the channel was sized for the replay");
        }
        self.watchers.push(Watcher {
            prefix: prefix.to_owned(),
            start: from,
            tx,
        });
        Ok(rx)
    }

    /// Ends every watch with `Err(Closed)`.
    pub fn close(&mut self) {
        for watcher in self.watchers.drain(..) {
            // Fails only if the reader is gone, and then nobody is listening.
            let _ = watcher.tx.try_send(Err(StoreError::Closed));
        }
    }

    fn publish(&mut self, batch: &WatchBatch) {
        self.watchers.retain(|watcher| {
            if watcher.tx.is_closed() {
                return false;
            }
            if batch.revision < watcher.start {
                return true;
            }
            let Some(filtered) = filter_batch(batch, &watcher.prefix) else {
                return true;
            };
            // Keep the last slot for the error that ends the stream.
            if watcher.tx.capacity() <= 1 {
                tracing::debug!(prefix = %watcher.prefix, revision = batch.revision, "dropping lagging watcher");
                let _ = watcher.tx.try_send(Err(StoreError::Lagged));
                return false;
            }
            watcher.tx.try_send(Ok(filtered)).is_ok()
        });
    }

    #[cfg(test)]
    fn history_revisions(&self) -> Vec<Revision> {
        self.history.iter().map(|b| b.revision).collect()
    }
}

fn filter_batch(batch: &WatchBatch, prefix: &str) -> Option<WatchBatch> {
    let events: Vec<WatchEvent> = batch
        .events
        .iter()
        .filter(|e| e.kv.key.starts_with(prefix))
        .cloned()
        .collect();
    (!events.is_empty()).then_some(WatchBatch {
        revision: batch.revision,
        events,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> TxnOp {
        TxnOp::Put {
            key: key.into(),
            value: value.as_bytes().to_vec(),
        }
    }

    fn cas(key: &str, revision: Revision, ops: Vec<TxnOp>) -> Txn {
        Txn {
            compares: vec![Compare::ModRevision {
                key: key.into(),
                revision,
            }],
            ops,
        }
    }

    fn run(core: &mut Core, txns: &[Txn]) -> Vec<TxnResponse> {
        let plan = core.plan(txns);
        core.apply(plan)
    }

    #[test]
    fn later_txns_in_a_batch_see_earlier_ones() {
        let core = Core::new(StoreOptions::default());
        let txns = vec![
            cas("k", 0, vec![put("k", "a")]),
            // Loses: k now exists.
            cas("k", 0, vec![put("k", "b")]),
            // Wins: k was written at revision 1 by the first txn.
            cas("k", 1, vec![put("k", "c")]),
        ];
        let plan = core.plan(&txns);
        assert_eq!(
            plan.responses,
            vec![
                TxnResponse {
                    succeeded: true,
                    revision: 1,
                    failed_compare: None
                },
                TxnResponse {
                    succeeded: false,
                    revision: 1,
                    failed_compare: Some(0)
                },
                TxnResponse {
                    succeeded: true,
                    revision: 2,
                    failed_compare: None
                },
            ]
        );
        assert_eq!(plan.revision, 2);
        let k = plan.writes["k"].clone().unwrap();
        assert_eq!(
            (k.value, k.create_revision, k.mod_revision, k.version),
            (b"c".to_vec(), 1, 2, 2)
        );
        // Planning alone changes nothing.
        assert_eq!(core.revision(), 0);
        assert_eq!(core.get("k"), None);
    }

    #[test]
    fn delete_then_put_in_one_txn_recreates_the_key() {
        let mut core = Core::new(StoreOptions::default());
        run(
            &mut core,
            &[Txn {
                compares: vec![],
                ops: vec![put("k", "a"), put("k", "b")],
            }],
        );
        let k = core.get("k").unwrap();
        assert_eq!((k.create_revision, k.mod_revision, k.version), (1, 1, 2));
        run(
            &mut core,
            &[Txn {
                compares: vec![],
                ops: vec![TxnOp::Delete { key: "k".into() }, put("k", "c")],
            }],
        );
        let k = core.get("k").unwrap();
        assert_eq!(
            (
                k.value.as_slice(),
                k.create_revision,
                k.mod_revision,
                k.version
            ),
            (&b"c"[..], 2, 2, 1)
        );
    }

    #[test]
    fn deleting_a_key_created_in_the_same_batch_leaves_no_write() {
        let core = Core::new(StoreOptions::default());
        let plan = core.plan(&[
            Txn {
                compares: vec![],
                ops: vec![put("k", "a")],
            },
            Txn {
                compares: vec![],
                ops: vec![TxnOp::Delete { key: "k".into() }],
            },
        ]);
        assert!(plan.writes.is_empty());
        assert_eq!(plan.revision, 2);
        assert_eq!(plan.revisions.len(), 2);
    }

    #[test]
    fn history_is_bounded_and_compaction_follows() {
        let options = StoreOptions {
            history_revisions: 3,
            ..StoreOptions::default()
        };
        let mut core = Core::new(options);
        for i in 0..5 {
            run(
                &mut core,
                &[Txn {
                    compares: vec![],
                    ops: vec![put(&format!("k{i}"), "v")],
                }],
            );
        }
        assert_eq!(core.history_revisions(), vec![3, 4, 5]);
        assert_eq!(core.compacted(), 2);
        assert!(matches!(
            core.watch("", 2),
            Err(StoreError::Compacted {
                requested: 2,
                compacted: 2
            })
        ));
        let mut rx = core.watch("", 3).unwrap();
        let got: Vec<Revision> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|b| b.unwrap().revision)
            .collect();
        assert_eq!(got, vec![3, 4, 5]);
        core.compact(100);
        assert_eq!(
            core.compacted(),
            5,
            "compaction stops at the current revision"
        );
        core.compact(1);
        assert_eq!(core.compacted(), 5, "compaction never moves back");
    }

    #[test]
    fn a_full_watcher_gets_one_lagged_error_and_is_dropped() {
        let options = StoreOptions {
            watch_capacity: 2,
            ..StoreOptions::default()
        };
        let mut core = Core::new(options);
        let mut rx = core.watch("", 1).unwrap();
        for i in 0..10 {
            run(
                &mut core,
                &[Txn {
                    compares: vec![],
                    ops: vec![put(&format!("k{i}"), "v")],
                }],
            );
        }
        assert!(core.watchers.is_empty());
        let mut got = Vec::new();
        while let Ok(item) = rx.try_recv() {
            got.push(item.map(|b| b.revision));
        }
        assert_eq!(got, vec![Ok(1), Ok(2), Err(StoreError::Lagged)]);
        assert!(rx.is_closed());
    }

    #[test]
    fn range_takes_exactly_the_prefix() {
        let mut core = Core::new(StoreOptions::default());
        let ops = ["a", "a/1", "a/2", "a0", "b", "`"]
            .iter()
            .map(|k| put(k, "v"))
            .collect();
        run(
            &mut core,
            &[Txn {
                compares: vec![],
                ops,
            }],
        );
        let keys = |p: &str| {
            core.range(p)
                .kvs
                .into_iter()
                .map(|kv| kv.key)
                .collect::<Vec<_>>()
        };
        assert_eq!(keys("a/"), vec!["a/1", "a/2"]);
        assert_eq!(keys("a"), vec!["a", "a/1", "a/2", "a0"]);
        assert_eq!(keys(""), vec!["`", "a", "a/1", "a/2", "a0", "b"]);
        assert!(keys("c").is_empty());
    }
}
