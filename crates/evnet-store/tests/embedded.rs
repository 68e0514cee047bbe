//! Behaviour specific to the embedded backend and to closing stores.

use std::sync::Arc;

use evnet_store::{
    EmbeddedStore, MemStore, Store, StoreError, StoreOptions, Txn, TxnOp, WatchStream,
};

fn put(key: String) -> Txn {
    Txn {
        compares: Vec::new(),
        ops: vec![TxnOp::Put {
            key,
            value: b"v".to_vec(),
        }],
    }
}

async fn write_concurrently(store: Arc<EmbeddedStore>, writers: usize, each: usize) {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            for i in 0..each {
                let resp = store.txn(put(format!("k/{w}/{i}"))).await.unwrap();
                assert!(resp.succeeded);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path().join("s.redb")).unwrap());
    write_concurrently(Arc::clone(&store), 64, 20).await;
    let stats = store.commit_stats();
    assert_eq!(
        stats.txns,
        64 * 20,
        "every changing txn went through a commit"
    );
    assert_eq!(store.current_revision().await.unwrap(), 64 * 20);
    assert!(
        stats.largest_batch > 1 && stats.commits < stats.txns,
        "64 writers never shared a commit: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_batch_bounds_a_commit() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        max_batch: 4,
        ..StoreOptions::default()
    };
    let store = Arc::new(EmbeddedStore::open_with(dir.path().join("s.redb"), options).unwrap());
    write_concurrently(Arc::clone(&store), 16, 10).await;
    let stats = store.commit_stats();
    assert_eq!(stats.txns, 160);
    assert!(stats.largest_batch <= 4, "{stats:?}");
    assert!(stats.commits >= 40, "{stats:?}");
}

#[tokio::test]
async fn a_batch_that_changes_nothing_skips_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path().join("s.redb")).unwrap();
    store.txn(put("a".into())).await.unwrap();
    let before = store.commit_stats();
    let noop = Txn {
        compares: Vec::new(),
        ops: vec![TxnOp::Delete {
            key: "missing".into(),
        }],
    };
    assert!(store.txn(noop).await.unwrap().succeeded);
    let failed = Txn {
        compares: vec![evnet_store::Compare::ModRevision {
            key: "a".into(),
            revision: 0,
        }],
        ops: vec![TxnOp::Put {
            key: "b".into(),
            value: Vec::new(),
        }],
    };
    assert!(!store.txn(failed).await.unwrap().succeeded);
    assert_eq!(store.commit_stats(), before);
}

async fn assert_closed(mut rx: WatchStream) {
    assert_eq!(rx.recv().await, Some(Err(StoreError::Closed)));
    assert_eq!(rx.recv().await, None);
}

#[tokio::test]
async fn dropping_a_store_ends_its_watches_with_closed() {
    let mem = MemStore::new();
    let rx = mem.watch("", 1).await.unwrap();
    drop(mem);
    assert_closed(rx).await;

    let dir = tempfile::tempdir().unwrap();
    let embedded = EmbeddedStore::open(dir.path().join("s.redb")).unwrap();
    embedded.txn(put("a".into())).await.unwrap();
    let mut rx = embedded.watch("", 1).await.unwrap();
    assert_eq!(rx.recv().await.unwrap().unwrap().revision, 1);
    drop(embedded);
    assert_closed(rx).await;
}
