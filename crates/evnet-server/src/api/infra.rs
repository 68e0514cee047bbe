//! Tenants, agent tokens and hosts (registration, heartbeat, desired state).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use evnet_model::desired::HostDesired;
use evnet_model::validate::{check_name, check_tags};
use evnet_model::*;
use evnet_store::Txn;
use serde::{Deserialize, Serialize};

use crate::auth::{new_token, sha256_hex, Caller};
use crate::cache::TokenRecord;
use crate::common::*;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Q};
use crate::keys;
use crate::state::AppState;

pub async fn create_tenant(
    State(st): State<AppState>,
    caller: Caller,
    Body(req): Body<CreateTenant>,
) -> ApiResult<(StatusCode, Json<TenantWithToken>)> {
    caller.require_admin("create tenants")?;
    check_name(&req.name)?;
    check_tags(&req.tags)?;
    let token = new_token();
    let id = new_id(Kind::Tenant);
    let tenant = Tenant {
        id: id.clone(),
        name: req.name.clone(),
        tags: req.tags.clone(),
        tenant: id.clone(),
        created_at: now_rfc3339(),
        revision: 0,
    };
    let (_, ()) = commit(&st, |snap| {
        if snap.tenants.values().any(|t| t.value.name == req.name) {
            return Err(ModelError::conflict("name_taken", format!("a tenant named {:?} exists already", req.name)).into());
        }
        let txn = Txn {
            compares: vec![cmp(keys::resource(Kind::Tenant, &id), 0)],
            ops: vec![
                put(keys::resource(Kind::Tenant, &id), &tenant),
                put(keys::token(&sha256_hex(&token)), &TokenRecord::Tenant { tenant_id: id.clone() }),
            ],
        };
        Ok(Plan::Write(txn, ()))
    })
    .await?;
    let tenant = read_back(&st.cache.read().tenants, &id)?;
    Ok(created(TenantWithToken { tenant, token }))
}

pub async fn list_tenants(State(st): State<AppState>, caller: Caller, Q(q): Q<ListQuery>) -> ApiResult<Json<Page<Tenant>>> {
    let snap = st.cache.read();
    Ok(Json(paginate(&snap.tenants, &caller, &q, |_| true)?))
}

pub async fn get_tenant(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Tenant>> {
    let snap = st.cache.read();
    Ok(Json(arc_clone(&visible(&snap.tenants, Kind::Tenant, &id, &caller)?.value)))
}

pub async fn delete_tenant(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    caller.require_admin("delete tenants")?;
    commit(&st, |snap| {
        let t = visible(&snap.tenants, Kind::Tenant, &id, &caller)?;
        let owns = snap.vpcs.values().any(|v| v.value.tenant == id)
            || snap.enis.values().any(|v| v.value.tenant == id)
            || snap.instances.values().any(|v| v.value.tenant == id)
            || snap.bandwidth_pools.values().any(|v| v.value.tenant == id);
        if owns {
            return Err(ModelError::conflict(
                "dependency_violation",
                format!("tenant {id} still owns resources; delete its instances, ENIs, pools and VPCs first"),
            )
            .into());
        }
        let mut ops = vec![del(keys::resource(Kind::Tenant, &id))];
        for (sha, rec) in &snap.tokens {
            if *rec == (TokenRecord::Tenant { tenant_id: id.clone() }) {
                ops.push(del(keys::token(sha)));
            }
        }
        for (akid, rec) in &snap.access_keys {
            if rec.tenant_id == id {
                ops.push(del(keys::access_key(akid)));
            }
        }
        Ok(Plan::Write(Txn { compares: vec![cmp(keys::resource(Kind::Tenant, &id), t.mod_revision)], ops }, ()))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AgentToken {
    pub token: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateAgentToken {}

pub async fn create_agent_token(
    State(st): State<AppState>,
    caller: Caller,
    Body(_): Body<CreateAgentToken>,
) -> ApiResult<(StatusCode, Json<AgentToken>)> {
    caller.require_admin("issue agent tokens")?;
    let token = new_token();
    let key = keys::token(&sha256_hex(&token));
    commit(&st, |_| Ok(Plan::Write(Txn { compares: vec![cmp(key.clone(), 0)], ops: vec![put(key.clone(), &TokenRecord::Agent)] }, ())))
        .await?;
    Ok(created(AgentToken { token }))
}

pub async fn register_host(
    State(st): State<AppState>,
    caller: Caller,
    Body(req): Body<RegisterHost>,
) -> ApiResult<(StatusCode, Json<Host>)> {
    caller.require_infra("register hosts")?;
    check_name(&req.name)?;
    if req.nic_mbps == 0 || req.nic_mbps > bandwidth::MAX_MBPS {
        return Err(ModelError::invalid(
            "invalid_bandwidth",
            format!("nic_mbps must be between 1 and {}", bandwidth::MAX_MBPS),
        )
        .into());
    }
    let fresh_id = new_id(Kind::Host);
    let (_, (id, is_new)) = commit(&st, |snap| {
        let now = now_ms();
        match snap.hostnames.get(&req.name) {
            Some((id, _)) => {
                let e = snap.hosts.get(id).ok_or_else(ApiError::conflict_retry)?;
                let mut h = arc_clone(&e.value);
                if h.nic_mbps != req.nic_mbps {
                    let (used, _) = snap.host_guaranteed(id);
                    let probe = placement::HostLoad {
                        host_id: id.clone(),
                        host_name: h.name.clone(),
                        ready: true,
                        nic_mbps: req.nic_mbps,
                        guaranteed_mbps: 0,
                        instance_count: 0,
                    };
                    probe.admit(used, st.settings.headroom_percent)?;
                }
                if snap.hosts.values().any(|o| o.value.id != *id && o.value.underlay_ip == req.underlay_ip) {
                    return Err(underlay_taken(req.underlay_ip));
                }
                h.underlay_ip = req.underlay_ip;
                h.nic_mbps = req.nic_mbps;
                h.labels = req.labels.clone();
                h.status = HostStatus::Ready;
                h.last_heartbeat_ms = now;
                let txn = Txn {
                    compares: vec![cmp(keys::resource(Kind::Host, id), e.mod_revision)],
                    ops: vec![put(keys::resource(Kind::Host, id), &h)],
                };
                Ok(Plan::Write(txn, (id.clone(), false)))
            }
            None => {
                if snap.hosts.values().any(|o| o.value.underlay_ip == req.underlay_ip) {
                    return Err(underlay_taken(req.underlay_ip));
                }
                let h = Host {
                    id: fresh_id.clone(),
                    name: req.name.clone(),
                    tags: Default::default(),
                    tenant: SYSTEM_TENANT.into(),
                    created_at: now_rfc3339(),
                    revision: 0,
                    underlay_ip: req.underlay_ip,
                    nic_mbps: req.nic_mbps,
                    labels: req.labels.clone(),
                    status: HostStatus::Ready,
                    last_heartbeat_ms: now,
                    applied_generation: 0,
                    failures: vec![],
                };
                let txn = Txn {
                    compares: vec![cmp(keys::hostname(&req.name), 0)],
                    ops: vec![put(keys::resource(Kind::Host, &fresh_id), &h), put_raw(keys::hostname(&req.name), &fresh_id)],
                };
                Ok(Plan::Write(txn, (fresh_id.clone(), true)))
            }
        }
    })
    .await?;
    let host = read_back(&st.cache.read().hosts, &id)?;
    Ok((if is_new { StatusCode::CREATED } else { StatusCode::OK }, Json(host)))
}

fn underlay_taken(ip: std::net::Ipv4Addr) -> ApiError {
    ModelError::conflict("underlay_ip_taken", format!("another host already uses underlay address {ip}")).into()
}

pub async fn list_hosts(State(st): State<AppState>, caller: Caller, Q(q): Q<ListQuery>) -> ApiResult<Json<Page<Host>>> {
    let snap = st.cache.read();
    // Hosts are shared infrastructure: every caller may read them.
    Ok(Json(paginate(&snap.hosts, &Caller::Admin, &q, |h| {
        let _ = &caller;
        q.status.as_deref().is_none_or(|s| serde_json::to_value(h.status).ok().and_then(|v| v.as_str().map(|x| x == s)).unwrap_or(false))
    })?))
}

pub async fn get_host(State(st): State<AppState>, _caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Host>> {
    let snap = st.cache.read();
    Ok(Json(arc_clone(&visible(&snap.hosts, Kind::Host, &id, &Caller::Admin)?.value)))
}

pub async fn delete_host(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    caller.require_admin("delete hosts")?;
    commit(&st, |snap| {
        let h = visible(&snap.hosts, Kind::Host, &id, &caller)?;
        if snap.instances.values().any(|i| i.value.host_id == id) {
            return Err(ModelError::conflict(
                "dependency_violation",
                format!("host {id} still runs instances; delete or move them first"),
            )
            .into());
        }
        let txn = Txn {
            compares: vec![cmp(keys::resource(Kind::Host, &id), h.mod_revision)],
            ops: vec![del(keys::resource(Kind::Host, &id)), del(keys::hostname(&h.value.name)), del(keys::hostbw(&id))],
        };
        Ok(Plan::Write(txn, ()))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn heartbeat(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<Heartbeat>,
) -> ApiResult<Json<Host>> {
    caller.require_infra("send heartbeats")?;
    req.validate()?;
    commit(&st, |snap| {
        let e = visible(&snap.hosts, Kind::Host, &id, &Caller::Admin)?;
        let mut h = arc_clone(&e.value);
        h.last_heartbeat_ms = now_ms();
        h.status = HostStatus::Ready;
        h.applied_generation = h.applied_generation.max(req.applied_generation);
        h.failures = req.failures.clone();
        let mut txn = Txn {
            compares: vec![cmp(keys::resource(Kind::Host, &id), e.mod_revision)],
            ops: vec![put(keys::resource(Kind::Host, &id), &h)],
        };
        for iid in &req.running_instances {
            if let Some(ie) = snap.instances.get(iid)
                && ie.value.host_id == id && ie.value.state != InstanceState::Running {
                    let mut i = arc_clone(&ie.value);
                    i.state = InstanceState::Running;
                    txn.compares.push(cmp(keys::resource(Kind::Instance, iid), ie.mod_revision));
                    txn.ops.push(put(keys::resource(Kind::Instance, iid), &i));
                }
        }
        Ok(Plan::Write(txn, ()))
    })
    .await?;
    Ok(Json(read_back(&st.cache.read().hosts, &id)?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredQuery {
    pub since: Option<u64>,
    pub timeout_ms: Option<u64>,
}

/// The host's desired state; with `since`, a long poll that answers when
/// the generation moves past it or the timeout (default 30 s) ends.
pub async fn desired(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Q(q): Q<DesiredQuery>,
) -> ApiResult<Json<HostDesired>> {
    caller.require_infra("read a host's desired state")?;
    if !st.cache.read().hosts.contains_key(&id) {
        return Err(ModelError::not_found("host", &id).into());
    }
    let timeout = Duration::from_millis(q.timeout_ms.unwrap_or(30_000).min(300_000));
    let deadline = tokio::time::Instant::now() + timeout;
    let mut rx = st.cache.subscribe();
    loop {
        let d = st.desired.current(&st, &id).ok_or_else(|| ApiError::from(ModelError::not_found("host", &id)))?;
        match q.since {
            Some(since) if d.generation <= since => {}
            _ => return Ok(Json(d)),
        }
        tokio::select! {
            changed = rx.changed() => { if changed.is_err() { return Ok(Json(d)); } }
            _ = tokio::time::sleep_until(deadline) => return Ok(Json(d)),
        }
    }
}

/// Marks hosts whose heartbeats stopped as `lost`, forever, every second.
pub async fn watch_host_liveness(st: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if !st.cluster.leads(crate::cluster::HOST_LIVENESS) {
            continue;
        }
        let now = now_ms();
        let stale: Vec<(String, u64, Host)> = st
            .cache
            .read()
            .hosts
            .values()
            .filter(|h| h.value.status == HostStatus::Ready && now.saturating_sub(h.value.last_heartbeat_ms) > st.settings.host_lost_after_ms)
            .map(|h| (h.value.id.clone(), h.mod_revision, arc_clone(&h.value)))
            .collect();
        for (id, rev, mut h) in stale {
            tracing::warn!(host = %h.name, "no heartbeat for {} ms: marking host lost", now - h.last_heartbeat_ms);
            h.status = HostStatus::Lost;
            let txn = Txn { compares: vec![cmp(keys::resource(Kind::Host, &id), rev)], ops: vec![put(keys::resource(Kind::Host, &id), &h)] };
            if let Err(e) = st.store.txn(txn).await {
                tracing::error!(error = %e, "could not mark host lost");
            }
        }
    }
}
