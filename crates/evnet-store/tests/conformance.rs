//! Runs the conformance suite on both backends.

use evnet_store::{EmbeddedStore, MemStore, conformance};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mem_store_conforms() {
    conformance::run_all(MemStore::new).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let counter = std::sync::atomic::AtomicUsize::new(0);
    conformance::run_all(|| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        EmbeddedStore::open(dir.path().join(format!("store-{n}.redb"))).unwrap()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_store_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("durable.redb");
    conformance::durability(|| EmbeddedStore::open(&path).unwrap()).await;
}
