//! The conformance suite on a real etcd: each check gets a fresh one-member
//! cluster on loopback ports of its own (etcd's revisions are global, and
//! the suite starts every check from an empty store at revision 0). Without
//! etcd these tests skip, except under `CI=true`, where they fail.

use std::time::Duration;

use evnet_store::etcd_process::{require_etcd, EtcdCluster};
use evnet_store::{
    conformance, EtcdOptions, EtcdStore, KeyValue, RangeResponse, Revision, Store, StoreError, Txn, TxnOp,
    TxnResponse, WatchStream,
};

/// A store that owns the etcd member it talks to, so the member lives
/// exactly as long as the check that uses it.
struct OwnedEtcd {
    store: EtcdStore,
    _cluster: EtcdCluster,
    _dir: tempfile::TempDir,
}

#[async_trait::async_trait]
impl Store for OwnedEtcd {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.store.get(key).await
    }
    async fn range(&self, prefix: &str) -> Result<RangeResponse, StoreError> {
        self.store.range(prefix).await
    }
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        self.store.txn(txn).await
    }
    async fn watch(&self, prefix: &str, start: Revision) -> Result<WatchStream, StoreError> {
        self.store.watch(prefix, start).await
    }
    async fn current_revision(&self) -> Result<Revision, StoreError> {
        self.store.current_revision().await
    }
    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.store.compact(revision).await
    }
}

async fn fresh(bin: &std::path::Path) -> OwnedEtcd {
    let dir = tempfile::tempdir().unwrap();
    let cluster = EtcdCluster::start(bin, dir.path(), 1).await.expect("etcd starts");
    let store = EtcdStore::connect(EtcdOptions::new(cluster.endpoints())).await.expect("connects to etcd");
    OwnedEtcd { store, _cluster: cluster, _dir: dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_store_conforms() {
    let Some(bin) = require_etcd() else { return };
    let handle = tokio::runtime::Handle::current();
    tokio::time::timeout(
        Duration::from_secs(300),
        conformance::run_all(|| tokio::task::block_in_place(|| handle.block_on(fresh(&bin)))),
    )
    .await
    .expect("the suite finishes within 5 minutes");
}

/// A watch from before a compaction answers `Compacted`, and one reading
/// live history that gets compacted away under it is not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_on_etcd_answers_compacted_then_relist_works() {
    let Some(bin) = require_etcd() else { return };
    let s = fresh(&bin).await;
    for i in 0..10 {
        s.txn(Txn { compares: vec![], ops: vec![TxnOp::Put { key: format!("k/{i}"), value: b"v".to_vec() }] }).await.unwrap();
    }
    s.compact(6).await.unwrap();
    match s.watch("k/", 2).await {
        Err(StoreError::Compacted { requested: 2, compacted: 6 }) => {}
        other => panic!("expected Compacted{{2, 6}}, got {:?}", other.map(|_| ())),
    }
    // What a reader does next: list, then watch from after the list.
    let listed = s.range("k/").await.unwrap();
    assert_eq!(listed.kvs.len(), 10);
    let mut rx = s.watch("k/", listed.revision + 1).await.unwrap();
    s.txn(Txn { compares: vec![], ops: vec![TxnOp::Put { key: "k/new".into(), value: b"v".to_vec() }] }).await.unwrap();
    let b = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap().unwrap();
    assert_eq!(b.revision, listed.revision + 1);
}

/// With etcd gone, calls answer `Unavailable` within the request timeout,
/// never hang, and a running watch ends with an error; with etcd back the
/// store works again on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_is_unavailable_within_the_timeout_and_recovers() {
    let Some(bin) = require_etcd() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = EtcdCluster::start(&bin, dir.path(), 1).await.unwrap();
    let mut opts = EtcdOptions::new(cluster.endpoints());
    opts.request_timeout = Duration::from_secs(1);
    let store = EtcdStore::connect(opts).await.unwrap();
    let put = |v: &str| Txn { compares: vec![], ops: vec![TxnOp::Put { key: "a".into(), value: v.as_bytes().to_vec() }] };
    store.txn(put("1")).await.unwrap();
    let mut rx = store.watch("", 1).await.unwrap();
    assert_eq!(rx.recv().await.unwrap().unwrap().revision, 1);

    cluster.kill(0);
    let started = std::time::Instant::now();
    match store.txn(put("2")).await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("a write with etcd down answered {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3), "answered after {:?}", started.elapsed());
    assert!(matches!(store.get("a").await, Err(StoreError::Unavailable(_))));
    let ended = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("the watch ends");
    assert!(matches!(ended, Some(Err(StoreError::Unavailable(_))) | None), "{ended:?}");

    cluster.restart(0).unwrap();
    cluster.wait_ready(Duration::from_secs(30)).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match store.txn(put("3")).await {
            Ok(r) => {
                assert!(r.succeeded);
                break;
            }
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the store did not recover: {e}"),
        }
    }
    assert_eq!(store.get("a").await.unwrap().unwrap().value, b"3");
}

/// A range larger than one gRPC answer may be (4 MiB by default) is read in
/// pages at one revision: 1,300 keys of 4 KiB (5.2 MB) come back whole, in
/// order, and nothing outside the prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_larger_than_one_answer_is_read_whole() {
    let Some(bin) = require_etcd() else { return };
    let s = fresh(&bin).await;
    let value = vec![b'x'; 4096];
    for batch in 0..13 {
        let ops = (0..100).map(|i| TxnOp::Put { key: format!("/big/{:05}", batch * 100 + i), value: value.clone() }).collect();
        assert!(s.txn(Txn { compares: vec![], ops }).await.unwrap().succeeded);
    }
    s.txn(Txn { compares: vec![], ops: vec![TxnOp::Put { key: "/bigger".into(), value: b"outside the prefix".to_vec() }] }).await.unwrap();
    let r = s.range("/big/").await.expect("a 5 MB range is read");
    assert_eq!(r.kvs.len(), 1300);
    assert!(r.kvs.windows(2).all(|w| w[0].key < w[1].key));
    assert!(r.kvs.iter().all(|kv| kv.key.starts_with("/big/") && kv.value.len() == 4096));
    assert_eq!(r.revision, s.current_revision().await.unwrap());
}
