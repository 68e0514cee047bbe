//! What the agent's in-process tests share: a server on a memory store and
//! an agent task running against a kernel until told to stop.

use std::sync::Arc;

use evnet_agent::AgentConfig;
use evnet_kernel::Kernel;
use evnet_store::MemStore;

pub const ADMIN: &str = "admin-token-for-tests";

/// A server on a free loopback port; its URL.
pub async fn server() -> String {
    let st = evnet_server::state(Arc::new(MemStore::new()), ADMIN, Default::default()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, evnet_server::app(st)).await.unwrap() });
    format!("http://{addr}")
}

/// Runs an agent with `cfg` on `kernel` until the returned sender is used
/// or dropped.
pub fn spawn_agent(cfg: AgentConfig, kernel: Arc<dyn Kernel>) -> (tokio::task::JoinHandle<()>, tokio::sync::oneshot::Sender<()>) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let h = tokio::spawn(async move {
        evnet_agent::run(cfg, kernel, async move {
            let _ = rx.await;
        })
        .await
        .unwrap()
    });
    (h, tx)
}
