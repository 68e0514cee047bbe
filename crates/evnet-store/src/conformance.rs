//! The conformance suite every [`Store`] backend must pass.
//!
//! Each check is a `pub async fn` that takes a fresh, empty store and panics
//! (with a message saying what broke) when the backend misbehaves;
//! [`run_all`] runs them all, each on a new store from `make`. Backends that
//! persist also run [`durability`], which takes a function that (re)opens
//! the same underlying storage.
//!
//! The checks need a multi-threaded tokio runtime (some race tasks against
//! each other). Every wait on a watch is bounded by [`RECV_TIMEOUT`], so a
//! broken backend fails instead of hanging.
//!
//! Assumptions about the store given to the suite: it starts empty at
//! revision 0 and keeps at least a few hundred revisions of history, and it
//! drops a watcher that leaves [`LAG_REVISIONS`] batches unread (the default
//! [`crate::StoreOptions::watch_capacity`] is 1,024).
//!
//! ```no_run
//! # async fn demo() {
//! evnet_store::conformance::run_all(evnet_store::MemStore::new).await;
//! # }
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::{
    Compare, EventKind, Revision, Store, StoreError, Txn, TxnOp, TxnResponse, WatchBatch,
    WatchStream,
};

/// The longest any check waits for one watch item.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(20);

/// How many unread revisions [`lagging_watcher`] piles onto a watcher.
pub const LAG_REVISIONS: usize = 3_000;

/// Runs every check except [`durability`], each on a fresh store.
pub async fn run_all<S: Store, F: Fn() -> S>(make: F) {
    get_and_range(make()).await;
    range_is_sorted_and_carries_the_revision(make()).await;
    compare_on_absent_and_present_keys(make()).await;
    failed_compare_writes_nothing(make()).await;
    one_revision_per_txn(make()).await;
    delete_of_missing_key_changes_nothing(make()).await;
    versions_and_recreation(make()).await;
    revisions_are_monotonic(make()).await;
    watch_replays_history_then_follows_live(make()).await;
    watch_from_a_future_revision(make()).await;
    watch_filters_by_prefix(make()).await;
    watch_reports_deletes(make()).await;
    watch_order_under_concurrent_writers(make()).await;
    compaction(make()).await;
    lagging_watcher(make()).await;
    concurrent_txns_on_one_key_exactly_one_wins(make()).await;
}

fn put(key: &str, value: &str) -> TxnOp {
    TxnOp::Put {
        key: key.to_owned(),
        value: value.as_bytes().to_vec(),
    }
}

fn delete(key: &str) -> TxnOp {
    TxnOp::Delete {
        key: key.to_owned(),
    }
}

fn ops(ops: Vec<TxnOp>) -> Txn {
    Txn {
        compares: Vec::new(),
        ops,
    }
}

fn guarded(compares: Vec<(&str, Revision)>, ops: Vec<TxnOp>) -> Txn {
    Txn {
        compares: compares
            .into_iter()
            .map(|(key, revision)| Compare::ModRevision {
                key: key.to_owned(),
                revision,
            })
            .collect(),
        ops,
    }
}

fn must<T>(what: &str, result: Result<T, StoreError>) -> T {
    match result {
        Ok(value) => value,
        Err(err) => panic!("{what} failed: {err}"),
    }
}

async fn run<S: Store>(store: &S, txn: Txn) -> TxnResponse {
    must("txn", store.txn(txn).await)
}

async fn revision<S: Store>(store: &S) -> Revision {
    must("current_revision", store.current_revision().await)
}

async fn watch<S: Store>(store: &S, prefix: &str, start: Revision) -> WatchStream {
    must("watch", store.watch(prefix, start).await)
}

/// The next item of a watch; panics if none comes within [`RECV_TIMEOUT`].
async fn next(rx: &mut WatchStream) -> Option<Result<WatchBatch, StoreError>> {
    tokio::time::timeout(RECV_TIMEOUT, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no watch item within {RECV_TIMEOUT:?}"))
}

async fn next_batch(rx: &mut WatchStream) -> WatchBatch {
    match next(rx).await {
        Some(Ok(batch)) => batch,
        Some(Err(err)) => panic!("watch ended with an error: {err}"),
        None => panic!("watch ended without an error"),
    }
}

fn summary(batch: &WatchBatch) -> (Revision, Vec<(EventKind, String, Vec<u8>)>) {
    (
        batch.revision,
        batch
            .events
            .iter()
            .map(|e| (e.kind, e.kv.key.clone(), e.kv.value.clone()))
            .collect(),
    )
}

/// `get` of absent and present keys; `range` by prefix, including the empty
/// prefix and a prefix that is itself a key.
pub async fn get_and_range<S: Store>(store: S) {
    assert_eq!(
        must("get", store.get("a").await),
        None,
        "empty store has no keys"
    );
    let empty = must("range", store.range("").await);
    assert!(empty.kvs.is_empty());
    assert_eq!(empty.revision, 0, "a new store is at revision 0");

    let r = run(
        &store,
        ops(vec![
            put("a", "1"),
            put("a/x", "2"),
            put("ab", "3"),
            put("b", "4"),
        ]),
    )
    .await;
    assert!(r.succeeded);
    let a = must("get", store.get("a").await).expect("a was written");
    assert_eq!(a.value, b"1");
    assert_eq!(
        (a.create_revision, a.mod_revision, a.version),
        (r.revision, r.revision, 1)
    );
    assert_eq!(
        must("get", store.get("a/").await),
        None,
        "get is exact, not by prefix"
    );

    let keys =
        |resp: crate::RangeResponse| resp.kvs.into_iter().map(|kv| kv.key).collect::<Vec<_>>();
    assert_eq!(
        keys(must("range", store.range("a").await)),
        ["a", "a/x", "ab"]
    );
    assert_eq!(keys(must("range", store.range("a/").await)), ["a/x"]);
    assert_eq!(
        keys(must("range", store.range("").await)),
        ["a", "a/x", "ab", "b"]
    );
    assert!(keys(must("range", store.range("c").await)).is_empty());
}

/// Range answers sorted by key whatever the write order, with the current
/// revision.
pub async fn range_is_sorted_and_carries_the_revision<S: Store>(store: S) {
    for key in ["k/5", "k/1", "k/9", "k/3", "k/10", "k/0"] {
        run(&store, ops(vec![put(key, key)])).await;
    }
    run(&store, ops(vec![put("other", "x")])).await;
    let resp = must("range", store.range("k/").await);
    let keys: Vec<&str> = resp.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["k/0", "k/1", "k/10", "k/3", "k/5", "k/9"]);
    assert_eq!(
        resp.revision, 7,
        "the range carries the store revision, not the newest key's"
    );
    assert_eq!(resp.revision, revision(&store).await);
}

/// A compare with revision 0 means "absent"; with a key's mod revision it
/// means "unchanged since".
pub async fn compare_on_absent_and_present_keys<S: Store>(store: S) {
    let created = run(&store, guarded(vec![("k", 0)], vec![put("k", "v1")])).await;
    assert!(created.succeeded, "compare with 0 on an absent key holds");
    assert_eq!(created.failed_compare, None);

    let again = run(&store, guarded(vec![("k", 0)], vec![put("k", "v2")])).await;
    assert!(!again.succeeded, "compare with 0 on a present key fails");
    assert_eq!(again.failed_compare, Some(0));

    let absent_nonzero = run(&store, guarded(vec![("missing", 1)], vec![put("x", "x")])).await;
    assert!(
        !absent_nonzero.succeeded,
        "an absent key's mod revision is 0, not 1"
    );

    let updated = run(
        &store,
        guarded(vec![("k", created.revision)], vec![put("k", "v3")]),
    )
    .await;
    assert!(
        updated.succeeded,
        "compare with the current mod revision holds"
    );
    let stale = run(
        &store,
        guarded(vec![("k", created.revision)], vec![put("k", "v4")]),
    )
    .await;
    assert!(!stale.succeeded, "compare with a stale mod revision fails");
    let k = must("get", store.get("k").await).unwrap();
    assert_eq!(k.value, b"v3");

    // Deleted keys compare as absent again.
    run(&store, ops(vec![delete("k")])).await;
    let recreated = run(&store, guarded(vec![("k", 0)], vec![put("k", "v5")])).await;
    assert!(recreated.succeeded);

    // The index of the first failing compare is reported.
    let cur = must("get", store.get("k").await).unwrap().mod_revision;
    let second_fails = run(
        &store,
        guarded(
            vec![("k", cur), ("missing", 9), ("k", 0)],
            vec![put("k", "x")],
        ),
    )
    .await;
    assert_eq!(
        (second_fails.succeeded, second_fails.failed_compare),
        (false, Some(1))
    );
}

/// A failed compare writes none of the ops and does not move the revision;
/// its answer carries the current revision.
pub async fn failed_compare_writes_nothing<S: Store>(store: S) {
    run(&store, ops(vec![put("a", "1")])).await;
    let before = revision(&store).await;
    let resp = run(
        &store,
        guarded(
            vec![("a", 0)],
            vec![put("b", "2"), delete("a"), put("c", "3")],
        ),
    )
    .await;
    assert!(!resp.succeeded);
    assert_eq!(
        resp.revision, before,
        "a failed txn answers the current revision"
    );
    assert_eq!(
        revision(&store).await,
        before,
        "a failed txn does not bump the revision"
    );
    let all = must("range", store.range("").await);
    assert_eq!(
        all.kvs.len(),
        1,
        "nothing of a failed txn is written: {:?}",
        all.kvs
    );
    assert_eq!(all.kvs[0].value, b"1");
}

/// All ops of a txn share one new revision.
pub async fn one_revision_per_txn<S: Store>(store: S) {
    run(&store, ops(vec![put("gone", "x")])).await;
    let before = revision(&store).await;
    let resp = run(
        &store,
        ops(vec![
            put("p/1", "a"),
            put("p/2", "b"),
            delete("gone"),
            put("p/3", "c"),
        ]),
    )
    .await;
    assert!(resp.succeeded);
    assert_eq!(resp.revision, before + 1, "one txn, one revision");
    assert_eq!(revision(&store).await, before + 1);
    for kv in must("range", store.range("p/").await).kvs {
        assert_eq!(
            kv.mod_revision, resp.revision,
            "{} was written at the txn's revision",
            kv.key
        );
        assert_eq!(kv.create_revision, resp.revision);
    }
    assert_eq!(must("get", store.get("gone").await), None);

    // Writing a key twice in one txn keeps the last value, at one revision.
    let twice = run(&store, ops(vec![put("t", "first"), put("t", "second")])).await;
    let t = must("get", store.get("t").await).unwrap();
    assert_eq!(
        (t.value.as_slice(), t.mod_revision),
        (&b"second"[..], twice.revision)
    );
    assert_eq!(twice.revision, before + 2);
}

/// Deleting a missing key succeeds, changes nothing and makes no revision.
pub async fn delete_of_missing_key_changes_nothing<S: Store>(store: S) {
    run(&store, ops(vec![put("a", "1")])).await;
    let before = revision(&store).await;
    let mut rx = watch(&store, "", before + 1).await;
    let resp = run(&store, ops(vec![delete("missing")])).await;
    assert!(resp.succeeded, "deleting a missing key is not an error");
    assert_eq!(resp.revision, before);
    assert_eq!(
        revision(&store).await,
        before,
        "nothing changed, so no new revision"
    );
    let empty = run(&store, Txn::default()).await;
    assert_eq!(
        (empty.succeeded, empty.revision),
        (true, before),
        "an empty txn changes nothing"
    );
    // The next real change is the next revision, and the watch sees only it.
    let resp = run(&store, ops(vec![put("b", "2")])).await;
    assert_eq!(resp.revision, before + 1);
    let batch = next_batch(&mut rx).await;
    assert_eq!(
        summary(&batch),
        (
            before + 1,
            vec![(EventKind::Put, "b".into(), b"2".to_vec())]
        )
    );
}

/// `version` counts writes since creation; `create_revision` stays; a key
/// deleted and put again starts over.
pub async fn versions_and_recreation<S: Store>(store: S) {
    let first = run(&store, ops(vec![put("k", "1")])).await.revision;
    run(&store, ops(vec![put("other", "x")])).await;
    let second = run(&store, ops(vec![put("k", "2")])).await.revision;
    let third = run(&store, ops(vec![put("k", "3")])).await.revision;
    let k = must("get", store.get("k").await).unwrap();
    assert_eq!(
        (k.create_revision, k.mod_revision, k.version),
        (first, third, 3)
    );
    assert!(first < second && second < third);

    run(&store, ops(vec![delete("k")])).await;
    let again = run(&store, ops(vec![put("k", "4")])).await.revision;
    let k = must("get", store.get("k").await).unwrap();
    assert_eq!(
        (k.create_revision, k.mod_revision, k.version),
        (again, again, 1)
    );
}

/// The revision only ever goes up, by exactly one per changing txn.
pub async fn revisions_are_monotonic<S: Store>(store: S) {
    let mut last = revision(&store).await;
    for i in 0..50 {
        let resp = run(&store, ops(vec![put(&format!("m/{}", i % 7), "v")])).await;
        assert_eq!(resp.revision, last + 1);
        let now = revision(&store).await;
        assert_eq!(now, resp.revision);
        last = now;
    }
}

/// A watch from an old revision replays the kept history, then delivers new
/// revisions as they happen, without gaps or repeats.
pub async fn watch_replays_history_then_follows_live<S: Store>(store: S) {
    for i in 1..=3 {
        run(&store, ops(vec![put("w", &i.to_string())])).await;
    }
    let mut rx = watch(&store, "w", 2).await;
    assert_eq!(
        summary(&next_batch(&mut rx).await),
        (2, vec![(EventKind::Put, "w".into(), b"2".to_vec())])
    );
    assert_eq!(
        summary(&next_batch(&mut rx).await),
        (3, vec![(EventKind::Put, "w".into(), b"3".to_vec())])
    );
    run(&store, ops(vec![put("w", "4")])).await;
    let live = next_batch(&mut rx).await;
    assert_eq!(
        summary(&live),
        (4, vec![(EventKind::Put, "w".into(), b"4".to_vec())])
    );
    let kv = &live.events[0].kv;
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (1, 4, 4),
        "events carry full metadata"
    );

    // Watching from 0 or 1 on a store that kept everything replays it all.
    for start in [0, 1] {
        let mut all = watch(&store, "", start).await;
        for want in 1..=4 {
            assert_eq!(next_batch(&mut all).await.revision, want);
        }
    }

    // A watch from current + 1 sees only what comes next.
    let mut fresh = watch(&store, "", revision(&store).await + 1).await;
    run(&store, ops(vec![put("w", "5")])).await;
    assert_eq!(next_batch(&mut fresh).await.revision, 5);
}

/// A watch may start past the current revision: it sees nothing before its
/// start.
pub async fn watch_from_a_future_revision<S: Store>(store: S) {
    let mut rx = watch(&store, "", 3).await;
    for i in 1..=4 {
        run(&store, ops(vec![put("f", &i.to_string())])).await;
    }
    assert_eq!(next_batch(&mut rx).await.revision, 3);
    assert_eq!(next_batch(&mut rx).await.revision, 4);
}

/// Only events under the prefix are delivered; revisions without any are
/// skipped; a revision that touches keys inside and outside carries only
/// the inside ones.
pub async fn watch_filters_by_prefix<S: Store>(store: S) {
    let mut rx = watch(&store, "a/", 1).await;
    run(&store, ops(vec![put("b/1", "x")])).await; // 1: nothing under a/
    run(
        &store,
        ops(vec![put("a/1", "x"), put("b/2", "x"), put("a/2", "y")]),
    )
    .await; // 2
    run(&store, ops(vec![put("a", "x"), put("ab", "x")])).await; // 3: "a" and "ab" are not under "a/"
    run(&store, ops(vec![delete("a/1")])).await; // 4
    let two = next_batch(&mut rx).await;
    assert_eq!(
        summary(&two),
        (
            2,
            vec![
                (EventKind::Put, "a/1".into(), b"x".to_vec()),
                (EventKind::Put, "a/2".into(), b"y".to_vec())
            ]
        ),
        "events keep op order and drop keys outside the prefix"
    );
    let four = next_batch(&mut rx).await;
    assert_eq!(
        summary(&four),
        (4, vec![(EventKind::Delete, "a/1".into(), Vec::new())])
    );
}

/// A delete event carries the key, an empty value and the delete's revision.
pub async fn watch_reports_deletes<S: Store>(store: S) {
    run(&store, ops(vec![put("d/1", "x"), put("d/2", "y")])).await;
    let mut rx = watch(&store, "d/", 2).await;
    let resp = run(
        &store,
        ops(vec![delete("d/2"), delete("d/missing"), delete("d/1")]),
    )
    .await;
    let batch = next_batch(&mut rx).await;
    assert_eq!(batch.revision, resp.revision);
    assert_eq!(
        batch.events.len(),
        2,
        "deleting a missing key makes no event: {batch:?}"
    );
    for (event, key) in batch.events.iter().zip(["d/2", "d/1"]) {
        assert_eq!(event.kind, EventKind::Delete);
        assert_eq!(event.kv.key, key);
        assert!(event.kv.value.is_empty());
        assert_eq!(event.kv.mod_revision, resp.revision);
    }
}

/// Under concurrent writers a watcher sees every revision under its prefix
/// once, in increasing order, each batch holding exactly that revision's
/// events, and each writer's own writes in the order it made them.
pub async fn watch_order_under_concurrent_writers<S: Store>(store: S) {
    const WRITERS: usize = 8;
    const EACH: usize = 40;
    let store = Arc::new(store);
    let start = revision(&*store).await + 1;
    let mut rx = watch(&*store, "ord/", start).await;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                let txn = if w % 4 == 3 {
                    // Some writers also touch keys outside the prefix.
                    ops(vec![
                        put(&format!("noise/{w}"), "x"),
                        put(&format!("ord/{w}/{i:03}"), "v"),
                    ])
                } else {
                    ops(vec![put(&format!("ord/{w}/{i:03}"), "v")])
                };
                must("txn", store.txn(txn).await);
            }
            for i in 0..EACH / 4 {
                must(
                    "txn",
                    store
                        .txn(ops(vec![put(&format!("noise/{w}/{i}"), "x")]))
                        .await,
                );
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer task panicked");
    }
    let mut last = 0;
    let mut per_writer: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    let mut seen = 0;
    while seen < WRITERS * EACH {
        let batch = next_batch(&mut rx).await;
        assert!(
            batch.revision > last,
            "revision {} came after {last}",
            batch.revision
        );
        assert!(batch.revision >= start);
        last = batch.revision;
        assert_eq!(
            batch.events.len(),
            1,
            "only one ord/ key per txn: {batch:?}"
        );
        for event in &batch.events {
            assert_eq!(event.kv.mod_revision, batch.revision);
            let rest = event.kv.key.strip_prefix("ord/").expect("only ord/ keys");
            let (w, i) = rest.split_once('/').unwrap();
            per_writer
                .entry(w.parse().unwrap())
                .or_default()
                .push(i.parse().unwrap());
            seen += 1;
        }
    }
    for (w, seq) in per_writer {
        assert_eq!(
            seq,
            (0..EACH).collect::<Vec<_>>(),
            "writer {w}'s writes out of order"
        );
    }
    assert!(last <= revision(&*store).await);
}

/// `compact(rev)` forgets history up to and including `rev`: watching from
/// there answers `Compacted`, watching from after it still works.
pub async fn compaction<S: Store>(store: S) {
    for i in 1..=5 {
        run(&store, ops(vec![put("c", &i.to_string())])).await;
    }
    must("compact", store.compact(3).await);
    for start in [1, 3] {
        match store.watch("", start).await {
            Err(StoreError::Compacted {
                requested,
                compacted,
            }) => {
                assert_eq!((requested, compacted), (start, 3));
            }
            other => panic!(
                "watch from compacted revision {start} answered {:?}",
                other.map(|_| ())
            ),
        }
    }
    let mut rx = watch(&store, "", 4).await;
    assert_eq!(next_batch(&mut rx).await.revision, 4);
    assert_eq!(next_batch(&mut rx).await.revision, 5);
    // Compaction loses history only, never data.
    assert_eq!(must("get", store.get("c").await).unwrap().value, b"5");
    assert_eq!(revision(&store).await, 5);
    // Compacting to an older revision again is harmless.
    must("compact", store.compact(2).await);
    assert!(matches!(
        store.watch("", 3).await,
        Err(StoreError::Compacted { .. })
    ));
}

/// A watcher that never reads is dropped with exactly one `Err(Lagged)`
/// after the batches it had room for, and writers never wait for it.
pub async fn lagging_watcher<S: Store>(store: S) {
    const WRITERS: usize = 30;
    let store = Arc::new(store);
    let mut rx = watch(&*store, "lag/", 1).await;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            for i in (w..LAG_REVISIONS).step_by(WRITERS) {
                must(
                    "txn",
                    store.txn(ops(vec![put(&format!("lag/{i}"), "v")])).await,
                );
            }
        }));
    }
    let writers = async {
        for task in tasks {
            task.await.expect("writer task panicked");
        }
    };
    tokio::time::timeout(Duration::from_secs(120), writers)
        .await
        .expect("writers must finish while a watcher is not reading");
    assert_eq!(revision(&*store).await, LAG_REVISIONS as Revision);

    let mut expected = 1;
    loop {
        match next(&mut rx).await {
            Some(Ok(batch)) => {
                assert_eq!(
                    batch.revision, expected,
                    "batches before the error are gapless"
                );
                expected += 1;
            }
            Some(Err(StoreError::Lagged)) => break,
            Some(Err(other)) => panic!("expected Lagged, got {other}"),
            None => panic!(
                "the watch ended without Lagged after {} batches",
                expected - 1
            ),
        }
    }
    assert!(
        (expected as usize) <= LAG_REVISIONS,
        "the watcher got everything yet was reported as lagging"
    );
    assert!(
        next(&mut rx).await.is_none(),
        "the stream ends after Lagged"
    );
    // The store is unharmed and new watchers work.
    let mut fresh = watch(&*store, "lag/", LAG_REVISIONS as Revision).await;
    assert_eq!(
        next_batch(&mut fresh).await.revision,
        LAG_REVISIONS as Revision
    );
}

/// Many tasks race a create-if-absent and then a compare-and-swap on one
/// key: exactly one wins each round, and the key holds the winner's value.
pub async fn concurrent_txns_on_one_key_exactly_one_wins<S: Store>(store: S) {
    const RACERS: usize = 16;
    let store = Arc::new(store);
    let mut expected_rev = 0;
    for round in 0..5 {
        let guard = if round == 0 {
            0
        } else {
            must("get", store.get("race").await)
                .expect("race exists")
                .mod_revision
        };
        let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
        let mut tasks = Vec::new();
        for r in 0..RACERS {
            let store = Arc::clone(&store);
            let barrier = Arc::clone(&barrier);
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let value = format!("{round}-{r}");
                let txn = guarded(
                    vec![("race", guard)],
                    vec![put("race", &value), put(&format!("won/{round}/{r}"), "1")],
                );
                let resp = must("txn", store.txn(txn).await);
                (value, resp)
            }));
        }
        let mut winners = Vec::new();
        for task in tasks {
            let (value, resp) = task.await.expect("racer panicked");
            if resp.succeeded {
                winners.push((value, resp.revision));
            } else {
                assert_eq!(resp.failed_compare, Some(0));
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one racer wins, got {winners:?}"
        );
        expected_rev += 1;
        let (value, rev) = &winners[0];
        assert_eq!(*rev, expected_rev, "losers make no revisions");
        let race = must("get", store.get("race").await).unwrap();
        assert_eq!(
            (race.value.as_slice(), race.mod_revision),
            (value.as_bytes(), *rev)
        );
        let won = must("range", store.range(&format!("won/{round}/")).await);
        assert_eq!(won.kvs.len(), 1, "only the winner's other op was written");
    }
}

/// For backends that persist: `open` must open the same storage each time
/// (with the previous handle dropped first). Checks that keys, their
/// metadata and the revision survive a reopen, that a reopened store treats
/// its old history as compacted, and that revisions continue from where
/// they were.
pub async fn durability<S: Store, F: Fn() -> S>(open: F) {
    let (before, rev) = {
        let store = open();
        assert_eq!(
            revision(&store).await,
            0,
            "durability starts from empty storage"
        );
        run(
            &store,
            ops(vec![put("a/1", "one"), put("a/2", "two"), put("b/1", "x")]),
        )
        .await;
        run(&store, ops(vec![put("a/1", "uno")])).await;
        run(&store, ops(vec![delete("b/1")])).await;
        run(&store, ops(vec![put("bin", "\u{0}\u{ff}")])).await;
        let failed = run(&store, guarded(vec![("a/1", 0)], vec![put("never", "x")])).await;
        assert!(!failed.succeeded);
        let before = must("range", store.range("").await);
        (before, revision(&store).await)
    };
    assert_eq!(rev, 4);

    let store = open();
    let after = must("range", store.range("").await);
    assert_eq!(
        after, before,
        "keys, metadata and revision survive a reopen"
    );
    assert_eq!(revision(&store).await, rev);
    let a1 = must("get", store.get("a/1").await).unwrap();
    assert_eq!(
        (
            a1.value.as_slice(),
            a1.create_revision,
            a1.mod_revision,
            a1.version
        ),
        (&b"uno"[..], 1, 2, 2)
    );
    assert_eq!(
        must("get", store.get("b/1").await),
        None,
        "deletes survive a reopen"
    );

    match store.watch("", rev).await {
        Err(StoreError::Compacted {
            requested,
            compacted,
        }) => assert_eq!((requested, compacted), (rev, rev)),
        other => panic!(
            "history is not kept across a reopen, yet watch answered {:?}",
            other.map(|_| ())
        ),
    }
    let mut rx = watch(&store, "a/", rev + 1).await;
    let resp = run(&store, ops(vec![put("a/1", "eins")])).await;
    assert_eq!(resp.revision, rev + 1, "revisions continue after a reopen");
    let batch = next_batch(&mut rx).await;
    assert_eq!(batch.revision, rev + 1);
    let kv = &batch.events[0].kv;
    assert_eq!(
        (kv.create_revision, kv.version),
        (1, 3),
        "metadata continues after a reopen"
    );
    drop(rx);
    drop(store);

    let store = open();
    assert_eq!(revision(&store).await, rev + 1);
    assert_eq!(must("get", store.get("a/1").await).unwrap().value, b"eins");
}
