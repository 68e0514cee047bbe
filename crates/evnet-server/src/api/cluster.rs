//! `GET /v1/cluster` (admin): the servers on the store, which one leads
//! each loop, the store and its revision, and each server's lag; and the
//! gate that answers 503 `store_unavailable` while this server's cache has
//! lost the store.

use std::collections::BTreeMap;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::cluster::{from_keys, LOOPS};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// One etcd member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StoreMember {
    pub name: String,
    pub client_urls: Vec<String>,
    /// Whether it is the raft leader.
    pub leader: bool,
}

/// The store the servers share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StoreStatus {
    /// `embedded` or `etcd`.
    pub kind: String,
    /// The etcd endpoints this server was given (empty for embedded).
    pub endpoints: Vec<String>,
    /// The store's current revision.
    pub revision: u64,
    /// etcd's members as the cluster lists them (empty for embedded).
    pub members: Vec<StoreMember>,
}

/// What one server says of itself (`GET /v1/cluster/self`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ServerSelf {
    pub id: String,
    pub url: String,
    pub started_at: String,
    /// The revision its cache has reached.
    pub cache_revision: u64,
    /// Whether its cache is following the store.
    pub connected: bool,
    /// The loops it leads.
    pub leads: Vec<String>,
    /// Bandwidth controller rounds this server has run since it started:
    /// it grows on the server leading the `bandwidth` loop, so a new
    /// leader's loop is seen running once its count moves.
    pub bandwidth_rounds: u64,
}

/// One server as `GET /v1/cluster` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ServerStatus {
    pub id: String,
    pub url: String,
    pub started_at: String,
    /// Whether it answered `GET /v1/cluster/self` just now.
    pub reachable: bool,
    pub cache_revision: Option<u64>,
    /// How many revisions its cache is behind the store's current one.
    pub lag_revisions: Option<u64>,
    pub connected: Option<bool>,
    /// The loops it leads (from the leadership keys).
    pub leads: Vec<String>,
}

/// `GET /v1/cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ClusterStatus {
    /// The id of the server that answered.
    pub this_server: String,
    pub store: StoreStatus,
    /// The leadership lease's TTL, in ms.
    pub lease_ttl_ms: u64,
    /// Loop → the id of the server leading it (absent: nobody right now).
    pub leaders: BTreeMap<String, String>,
    pub servers: Vec<ServerStatus>,
}

fn this(st: &AppState) -> ServerSelf {
    ServerSelf {
        id: st.cluster.me.id.clone(),
        url: st.cluster.me.url.clone(),
        started_at: st.cluster.me.started_at.clone(),
        cache_revision: st.cache.revision(),
        connected: st.cache.connected(),
        leads: st.cluster.leading(),
        bandwidth_rounds: st.bandwidth.rounds.load(std::sync::atomic::Ordering::Relaxed),
    }
}

/// `GET /v1/cluster/self` (admin): this server alone, cheap; what the
/// others ask to learn its lag.
pub async fn this_server(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<ServerSelf>> {
    caller.require_admin("read the cluster's state")?;
    Ok(Json(this(&st)))
}

/// `GET /v1/cluster` (admin).
pub async fn status(State(st): State<AppState>, caller: Caller, headers: HeaderMap) -> ApiResult<Json<ClusterStatus>> {
    caller.require_admin("read the cluster's state")?;
    let revision = st.store.current_revision().await?;
    let (kind, endpoints) = st.cluster.store_kind();
    let members = match st.cluster.etcd_store() {
        Some(etcd) => etcd
            .members()
            .await?
            .into_iter()
            .map(|m| StoreMember { name: m.name, client_urls: m.client_urls, leader: m.leader })
            .collect(),
        None => Vec::new(),
    };
    let me = this(&st);
    let (records, leaders) = match st.cluster.etcd_store() {
        Some(_) => from_keys(&st.cache.read().cluster),
        None => (
            vec![st.cluster.me.clone()],
            LOOPS.iter().map(|l| (l.to_string(), me.id.clone())).collect(),
        ),
    };
    let auth = headers.get(header::AUTHORIZATION).cloned();
    let http = st.cluster.http.clone();
    let mut asks = tokio::task::JoinSet::new();
    for (i, r) in records.iter().enumerate() {
        if r.id == me.id {
            continue;
        }
        let url = format!("{}/v1/cluster/self", r.url.trim_end_matches('/'));
        let http = http.clone();
        let auth = auth.clone();
        asks.spawn(async move {
            let mut q = http.get(url);
            if let Some(a) = auth {
                q = q.header(header::AUTHORIZATION, a);
            }
            let answer = match q.send().await {
                Ok(resp) if resp.status().is_success() => resp.json::<ServerSelf>().await.ok(),
                _ => None,
            };
            (i, answer)
        });
    }
    let mut answers: BTreeMap<usize, ServerSelf> = BTreeMap::new();
    while let Some(done) = asks.join_next().await {
        if let Ok((i, Some(a))) = done {
            answers.insert(i, a);
        }
    }
    let mut servers: Vec<ServerStatus> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let seen = if r.id == me.id { Some(&me) } else { answers.get(&i).filter(|a| a.id == r.id) };
            ServerStatus {
                id: r.id.clone(),
                url: r.url.clone(),
                started_at: r.started_at.clone(),
                reachable: seen.is_some(),
                cache_revision: seen.map(|s| s.cache_revision),
                lag_revisions: seen.map(|s| revision.saturating_sub(s.cache_revision)),
                connected: seen.map(|s| s.connected),
                leads: leaders.iter().filter(|(_, id)| **id == r.id).map(|(l, _)| l.clone()).collect(),
            }
        })
        .collect();
    servers.sort_by(|a, b| (&a.started_at, &a.id).cmp(&(&b.started_at, &b.id)));
    Ok(Json(ClusterStatus {
        this_server: me.id.clone(),
        store: StoreStatus { kind: kind.to_string(), endpoints, revision, members },
        lease_ttl_ms: st.cluster.ttl.as_millis() as u64,
        leaders,
        servers,
    }))
}

/// Answers 503 `store_unavailable` for API calls while this server's cache
/// is not following the store (etcd unreachable, or a watch being
/// re-established): its answers could be stale, and clients with several
/// servers go on to the next one. `/v1/cluster…`, `/healthz` and
/// `/metrics` still answer.
pub async fn require_store(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path.starts_with("/v1/") && !path.starts_with("/v1/cluster") && !st.cache.connected() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "this server has lost its connection to the store; retry, or use another server",
        )
        .into_response();
    }
    next.run(req).await
}
