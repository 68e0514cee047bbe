//! evnet's control plane.
//!
//! `app(state)` is the whole REST API as an axum `Router`: it validates
//! requests, checks the caller's token and tenancy, and turns each request
//! into one store transaction that compares revisions (optimistic
//! concurrency). Reads come from a [`cache::Cache`] that follows the store by
//! list + watch. The scheduler's choices and bandwidth admission happen in
//! the same transaction as the change they admit. Each host's desired state
//! ([`desired`]) is computed from the cache and served to its agent as a
//! long poll keyed by generation.
//!
//! The server keeps no state of its own besides the store: several replicas
//! may share one etcd ([`cluster`]): each keeps its cache from the etcd
//! watch, and the loops that must run once (bandwidth controller, host
//! liveness) run on the replica that holds their lease-based leadership.

pub mod api;
pub mod audit;
pub mod auth;
pub mod bandwidth;
pub mod cache;
pub mod cluster;
pub mod common;
pub mod desired;
pub mod ec2;
pub mod error;
pub mod extract;
pub mod fanout;
pub mod frontdoor;
pub mod keys;
pub mod metrics;
pub mod natgw_failover;
pub mod openapi;
pub mod quota;
pub mod ratelimit;
pub mod serve;
pub mod state;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use axum::Router;
use evnet_store::Store;

use crate::api::{access_keys, cluster as cluster_api, compute, external, infra, network, stats, trace};
use crate::state::{AppState, Settings};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The whole API.
pub fn app(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/tenants", post(infra::create_tenant).get(infra::list_tenants))
        .route("/tenants/{id}", get(infra::get_tenant).delete(infra::delete_tenant))
        .route("/tenants/{id}/access-keys", post(access_keys::create).get(access_keys::list))
        .route("/tenants/{id}/access-keys/{key}", axum::routing::delete(access_keys::delete))
        .route("/tenants/{id}/quotas", get(infra::get_quotas).put(infra::put_quotas))
        .route("/bootstrap-tokens", post(infra::create_bootstrap_token))
        .route("/hosts", post(infra::register_host).get(infra::list_hosts))
        .route("/hosts/{id}", get(infra::get_host).patch(infra::patch_host).delete(infra::delete_host))
        .route("/hosts/{id}/heartbeat", post(infra::heartbeat))
        .route("/hosts/{id}/desired", get(infra::desired))
        .route("/hosts/{id}/bandwidth", post(stats::report))
        .route("/hosts/{id}/bandwidth/caps", get(stats::watch_caps))
        .route("/enis/{id}/stats", get(stats::eni_stats))
        .route("/bandwidth-stats", get(stats::overview))
        .route("/trace", post(trace::trace))
        .route("/cluster", get(cluster_api::status))
        .route("/cluster/self", get(cluster_api::this_server))
        .route("/audit", get(infra::audit))
        .route("/vpcs", post(network::create_vpc).get(network::list_vpcs))
        .route("/vpcs/{id}", get(network::get_vpc).patch(network::patch_vpc).delete(network::delete_vpc))
        .route("/vpcs/{id}/dhcp-options", put(network::put_vpc_dhcp_options).delete(network::delete_vpc_dhcp_options))
        .route("/subnets", post(network::create_subnet).get(network::list_subnets))
        .route("/subnets/{id}", get(network::get_subnet).patch(network::patch_subnet).delete(network::delete_subnet))
        .route("/subnets/{id}/dhcp-options", put(network::put_subnet_dhcp_options).delete(network::delete_subnet_dhcp_options))
        .route("/security-groups", post(network::create_sg).get(network::list_sgs))
        .route("/security-groups/{id}", get(network::get_sg).patch(network::patch_sg).delete(network::delete_sg))
        .route("/route-tables", post(network::create_rtb).get(network::list_rtbs))
        .route("/route-tables/{id}", get(network::get_rtb).patch(network::patch_rtb).delete(network::delete_rtb))
        .route("/peerings", post(network::create_peering).get(network::list_peerings))
        .route("/peerings/{id}", get(network::get_peering).delete(network::delete_peering))
        .route("/peerings/{id}/accept", post(network::accept_peering))
        .route("/external-networks", post(external::create_external_network).get(external::list_external_networks))
        .route("/external-networks/{id}", get(external::get_external_network).delete(external::delete_external_network))
        .route("/internet-gateways", post(external::create_igw).get(external::list_igws))
        .route("/internet-gateways/{id}", get(external::get_igw).patch(external::patch_igw).delete(external::delete_igw))
        .route("/elastic-ips", post(external::allocate_eip).get(external::list_eips))
        .route("/elastic-ips/{id}", get(external::get_eip).patch(external::patch_eip).delete(external::release_eip))
        .route("/elastic-ips/{id}/associate", post(external::associate_eip))
        .route("/elastic-ips/{id}/disassociate", post(external::disassociate_eip))
        .route("/nat-gateways", post(external::create_natgw).get(external::list_natgws))
        .route("/nat-gateways/{id}", get(external::get_natgw).patch(external::patch_natgw).delete(external::delete_natgw))
        .route("/instances", post(compute::create_instance).get(compute::list_instances))
        .route("/instances/{id}", get(compute::get_instance).patch(compute::patch_instance).delete(compute::delete_instance))
        .route("/enis", post(compute::create_eni).get(compute::list_enis))
        .route("/enis/{id}", get(compute::get_eni).patch(compute::patch_eni).delete(compute::delete_eni))
        .route("/enis/{id}/attach", post(compute::attach_eni))
        .route("/enis/{id}/detach", post(compute::detach_eni))
        .route("/enis/{id}/assign-ips", post(compute::assign_ips))
        .route("/enis/{id}/unassign-ips", post(compute::unassign_ips))
        .route("/bandwidth-pools", post(compute::create_pool).get(compute::list_pools))
        .route("/bandwidth-pools/{id}", get(compute::get_pool).patch(compute::patch_pool).delete(compute::delete_pool))
        .method_not_allowed_fallback(method_not_allowed);
    Router::new()
        .nest("/v1", v1)
        .route("/ec2", get(ec2::handle).post(ec2::handle))
        .route("/ec2/", get(ec2::handle).post(ec2::handle))
        .route("/openapi.json", get(openapi::serve))
        .route("/metrics", get(metrics::serve_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async {
            error::ApiError::new(axum::http::StatusCode::NOT_FOUND, "no_such_route", "no such route; see /openapi.json")
        })
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), cluster_api::require_store))
        .layer(axum::middleware::from_fn_with_state(state.clone(), frontdoor::frontdoor))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn method_not_allowed(method: axum::http::Method) -> error::ApiError {
    error::ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("this path does not take {method}; see /openapi.json for the operations it does"),
    )
}

/// Builds the shared state over a store: starts the cache and returns once
/// it has listed the store. The server is alone on its store and leads
/// every loop.
pub async fn state(store: Arc<dyn Store>, admin_token: &str, settings: Settings) -> anyhow::Result<AppState> {
    state_in(store, admin_token, settings, Arc::new(cluster::Cluster::solo(""))).await
}

/// Like [`state`], for a server that is one of several ([`cluster::Cluster`]).
pub async fn state_in(store: Arc<dyn Store>, admin_token: &str, settings: Settings, cluster: Arc<cluster::Cluster>) -> anyhow::Result<AppState> {
    let cache = cache::Cache::start(store.clone()).await?;
    let audit = match &settings.audit_log {
        Some(p) => Some(Arc::new(audit::AuditLog::open(p).map_err(|e| anyhow::anyhow!("cannot open the audit log {}: {e}", p.display()))?)),
        None => None,
    };
    Ok(AppState {
        cluster,
        limiter: Arc::new(ratelimit::Limiter::new(settings.rate_limit_rps, settings.rate_limit_burst)),
        metrics_token_sha: settings.metrics_token.as_ref().map(|t| auth::sha256_hex(&t.0).into()),
        audit,
        store,
        cache,
        admin_token_sha: auth::sha256_hex(admin_token).into(),
        access_key_sealing: Arc::new(ec2::credentials::sealing_key(admin_token)),
        settings: Arc::new(settings),
        ip_reservations: Default::default(),
        slot_reservations: Default::default(),
        desired: Default::default(),
        metrics: Default::default(),
        bandwidth: Default::default(),
    })
}

/// Where the admin token comes from: `EVNET_ADMIN_TOKEN`, else the file
/// `DATA_DIR/admin-token` (mode 0600), created with a random token the
/// first time.
pub fn admin_token(data_dir: &Path, from_env: Option<String>) -> anyhow::Result<String> {
    if let Some(t) = from_env.filter(|t| !t.trim().is_empty()) {
        return Ok(t.trim().to_string());
    }
    let path = data_dir.join("admin-token");
    if let Ok(t) = std::fs::read_to_string(&path)
        && !t.trim().is_empty()
    {
        private_file(&path)?;
        return Ok(t.trim().to_string());
    }
    let token = auth::new_token();
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path)?;
    private_file(&path)?;
    f.write_all(token.as_bytes())?;
    f.sync_all()?;
    Ok(token)
}

/// Where the server keeps its state.
#[derive(Debug, Clone, Default)]
pub enum StoreConfig {
    /// A redb file in the data dir: one server.
    #[default]
    Embedded,
    /// An etcd cluster: any number of servers.
    Etcd(evnet_store::EtcdOptions),
}

/// Sets `path` to mode 0600 if it exists.
fn private_file(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(anyhow::anyhow!("cannot set {} to mode 0600: {e}", path.display())),
        _ => Ok(()),
    }
}

/// The files of a data directory that hold secrets or the store.
pub const PRIVATE_FILES: &[&str] = &["admin-token", "evnet.redb", "audit.log"];

/// Makes the data directory (mode 0700) and tightens what is in it already:
/// the directory to 0700, its store, admin token and audit log to 0600.
pub fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| anyhow::anyhow!("cannot set {} to mode 0700: {e}", dir.display()))?;
    for f in PRIVATE_FILES {
        private_file(&dir.join(f))?;
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub admin_token: Option<String>,
    pub settings: Settings,
    pub store: StoreConfig,
    /// The URL other servers and `GET /v1/cluster` give for this server;
    /// default `http://LISTEN`.
    pub advertise_url: Option<String>,
    /// TTL of the leadership lease on etcd.
    pub leader_ttl: std::time::Duration,
    pub timeouts: serve::Timeouts,
}

/// Prepares the data directory and opens the store in it: the admin token
/// and the store.
pub fn open_data_dir(data_dir: &Path, admin_token_env: Option<String>) -> anyhow::Result<(String, Arc<dyn Store>)> {
    prepare_data_dir(data_dir)?;
    let token = admin_token(data_dir, admin_token_env)?;
    Ok((token, open_embedded(data_dir)?))
}

/// Opens the embedded store file of a prepared data directory (mode 0600).
fn open_embedded(data_dir: &Path) -> anyhow::Result<Arc<dyn Store>> {
    let path = data_dir.join("evnet.redb");
    let store: Arc<dyn Store> = Arc::new(evnet_store::EmbeddedStore::open(&path)?);
    // redb creates the file with the process's umask: tighten it.
    private_file(&path)?;
    Ok(store)
}

/// Runs the server until `shutdown` resolves, then finishes the requests in
/// flight.
pub async fn run(config: ServerConfig, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    prepare_data_dir(&config.data_dir)?;
    let token = admin_token(&config.data_dir, config.admin_token.clone())?;
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let url = config.advertise_url.clone().unwrap_or_else(|| format!("http://{}", config.listen));
    let (store, cluster): (Arc<dyn Store>, _) = match &config.store {
        StoreConfig::Embedded => (open_embedded(&config.data_dir)?, cluster::Cluster::solo(&url)),
        StoreConfig::Etcd(opts) => {
            let etcd = evnet_store::EtcdStore::connect(opts.clone()).await?;
            (Arc::new(etcd.clone()), cluster::Cluster::etcd(etcd, &url, config.leader_ttl))
        }
    };
    let cluster = Arc::new(cluster);
    let mut settings = config.settings.clone();
    if settings.audit_log.is_none() {
        settings.audit_log = Some(config.data_dir.join("audit.log"));
    }
    let st = state_in(store, &token, settings, cluster.clone()).await?;
    let campaign = tokio::spawn(cluster.clone().run());
    tokio::spawn(infra::watch_host_liveness(st.clone()));
    tokio::spawn(natgw_failover::run(st.clone()));
    tokio::spawn(bandwidth::run(st.clone()));
    let limiter = st.limiter.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            tick.tick().await;
            limiter.shrink();
        }
    });
    tracing::info!(addr = %listener.local_addr()?, server = %cluster.me.id, store = cluster.store_kind().0, data_dir = %config.data_dir.display(), "evnet server listening");
    serve::serve(listener, app(st), config.timeouts, shutdown).await?;
    campaign.abort();
    cluster.resign().await;
    tracing::info!("evnet server stopped");
    Ok(())
}
