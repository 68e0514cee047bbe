//! Tenants, bootstrap tokens and hosts (registration with a bootstrap
//! token, the admin's changes, heartbeat, desired state).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use evnet_model::desired::HostDesired;
use evnet_model::validate::{check_name, check_tags};
use evnet_model::*;
use evnet_store::Txn;
use serde::Deserialize;

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
            || snap.bandwidth_pools.values().any(|v| v.value.tenant == id)
            || snap.elastic_ips.values().any(|v| v.value.tenant == id);
        if owns {
            return Err(ModelError::conflict(
                "dependency_violation",
                format!("tenant {id} still owns resources; delete its instances, ENIs, pools and VPCs and release its elastic IPs first"),
            )
            .into());
        }
        let mut ops = vec![del(keys::resource(Kind::Tenant, &id))];
        for (sha, (rec, _)) in &snap.tokens {
            if *rec == (TokenRecord::Tenant { tenant_id: id.clone() }) {
                ops.push(del(keys::token(sha)));
            }
        }
        for (akid, rec) in &snap.access_keys {
            if rec.tenant_id == id {
                ops.push(del(keys::access_key(akid)));
            }
        }
        ops.push(del(keys::quota(&id)));
        Ok(Plan::Write(Txn { compares: vec![cmp(keys::resource(Kind::Tenant, &id), t.mod_revision)], ops }, ()))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn create_bootstrap_token(
    State(st): State<AppState>,
    caller: Caller,
    Body(req): Body<CreateBootstrapToken>,
) -> ApiResult<(StatusCode, Json<BootstrapToken>)> {
    caller.require_admin("issue bootstrap tokens")?;
    let ttl = req.ttl_seconds.unwrap_or(DEFAULT_BOOTSTRAP_TTL_SECONDS);
    if ttl == 0 || ttl > MAX_BOOTSTRAP_TTL_SECONDS {
        return Err(ModelError::invalid("invalid_ttl", format!("ttl_seconds must be between 1 and {MAX_BOOTSTRAP_TTL_SECONDS}")).into());
    }
    let token = new_token();
    let expires_at_ms = now_ms() + ttl * 1000;
    let key = keys::token(&sha256_hex(&token));
    let record = TokenRecord::Bootstrap { expires_at_ms };
    commit(&st, |_| Ok(Plan::Write(Txn { compares: vec![cmp(key.clone(), 0)], ops: vec![put(key.clone(), &record)] }, ()))).await?;
    Ok(created(BootstrapToken { token, expires_at_ms }))
}

/// `POST /v1/hosts`: with a bootstrap token (which it consumes) or the
/// admin's, registers a new host and answers its credential, once. A name
/// that is registered already is refused: its agent keeps the credential
/// it holds, and only the admin changes a host (`PATCH /v1/hosts/{id}`).
pub async fn register_host(
    State(st): State<AppState>,
    caller: Caller,
    Body(req): Body<RegisterHost>,
) -> ApiResult<(StatusCode, Json<RegisteredHost>)> {
    let bootstrap = match &caller {
        Caller::Admin => None,
        Caller::Bootstrap(sha) => Some(sha.clone()),
        _ => {
            return Err(ApiError::forbidden(
                "register hosts: registration takes a bootstrap token, which the admin issues (POST /v1/bootstrap-tokens)",
            ))
        }
    };
    check_name(&req.name)?;
    evnet_model::validate::check_labels(&req.labels)?;
    check_nic(req.nic_mbps)?;
    check_underlay_ip(req.underlay_ip)?;
    let credential = new_token();
    let credential_key = keys::token(&sha256_hex(&credential));
    let id = new_id(Kind::Host);
    commit(&st, |snap| {
        if let Some((existing, _)) = snap.hostnames.get(&req.name) {
            return Err(ModelError::conflict(
                "host_exists",
                format!(
                    "a host named {:?} is registered already ({existing}); its agent keeps using the credential it was given. \
                     To register it anew, the admin deletes it first (DELETE /v1/hosts/{existing}); the admin changes its \
                     underlay address or NIC with PATCH /v1/hosts/{existing}",
                    req.name
                ),
            )
            .into());
        }
        if snap.hosts.values().any(|o| o.value.underlay_ip == req.underlay_ip) {
            return Err(underlay_taken(req.underlay_ip));
        }
        let h = Host {
            id: id.clone(),
            name: req.name.clone(),
            tags: Default::default(),
            tenant: SYSTEM_TENANT.into(),
            created_at: now_rfc3339(),
            revision: 0,
            underlay_ip: req.underlay_ip,
            nic_mbps: req.nic_mbps,
            labels: req.labels.clone(),
            status: HostStatus::Ready,
            last_heartbeat_ms: now_ms(),
            applied_generation: 0,
            failures: vec![],
            netns: None,
        };
        let mut txn = Txn {
            compares: vec![cmp(keys::hostname(&req.name), 0), cmp(credential_key.clone(), 0)],
            ops: vec![
                put(keys::resource(Kind::Host, &id), &h),
                put_raw(keys::hostname(&req.name), &id),
                put(credential_key.clone(), &TokenRecord::Host { host_id: id.clone() }),
            ],
        };
        if let Some(sha) = &bootstrap {
            // Single use: the token's key is deleted in the same transaction,
            // compared at the revision it was read at.
            let Some((TokenRecord::Bootstrap { .. }, rev)) = snap.tokens.get(sha) else {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "token_used",
                    "this bootstrap token has been used already; the admin issues a new one (POST /v1/bootstrap-tokens)",
                ));
            };
            txn.compares.push(cmp(keys::token(sha), *rev));
            txn.ops.push(del(keys::token(sha)));
        }
        Ok(Plan::Write(txn, ()))
    })
    .await?;
    let host = read_back(&st.cache.read().hosts, &id)?;
    Ok(created(RegisteredHost { host, credential }))
}

fn check_nic(nic_mbps: u64) -> ApiResult<()> {
    if nic_mbps == 0 || nic_mbps > bandwidth::MAX_MBPS {
        return Err(ModelError::invalid("invalid_bandwidth", format!("nic_mbps must be between 1 and {}", bandwidth::MAX_MBPS)).into());
    }
    Ok(())
}

fn underlay_taken(ip: std::net::Ipv4Addr) -> ApiError {
    ModelError::conflict("underlay_ip_taken", format!("another host already uses underlay address {ip}")).into()
}

/// `PATCH /v1/hosts/{id}` (admin only): the underlay address (unique among
/// hosts), the NIC's capacity (admitted against the guarantees already on
/// the host) and labels.
pub async fn patch_host(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<PatchHost>,
) -> ApiResult<Json<Host>> {
    caller.require_admin("change hosts: a host's underlay address and NIC change only through the admin")?;
    if let Some(ip) = req.underlay_ip {
        check_underlay_ip(ip)?;
    }
    if let Some(n) = req.nic_mbps {
        check_nic(n)?;
    }
    if let Some(l) = &req.labels {
        evnet_model::validate::check_labels(l)?;
    }
    commit(&st, |snap| {
        let e = visible(&snap.hosts, Kind::Host, &id, &Caller::Admin)?;
        check_revision(req.revision, e.mod_revision, &id)?;
        let mut h = arc_clone(&e.value);
        let mut txn = Txn { compares: vec![cmp(keys::resource(Kind::Host, &id), e.mod_revision)], ops: vec![] };
        if let Some(ip) = req.underlay_ip {
            if snap.hosts.values().any(|o| o.value.id != id && o.value.underlay_ip == ip) {
                return Err(underlay_taken(ip));
            }
            h.underlay_ip = ip;
        }
        if let Some(n) = req.nic_mbps
            && n != h.nic_mbps
        {
            let (used, ledger_rev) = snap.host_guaranteed(&id);
            let probe = placement::HostLoad {
                host_id: id.clone(),
                host_name: h.name.clone(),
                ready: true,
                nic_mbps: n,
                guaranteed_mbps: 0,
                instance_count: 0,
            };
            probe.admit(used, st.settings.headroom_percent)?;
            // The guarantees on the host must not change under this check.
            txn.compares.push(cmp(keys::hostbw(&id), ledger_rev));
            h.nic_mbps = n;
        }
        if let Some(l) = &req.labels {
            h.labels = l.clone();
        }
        txn.ops.push(put(keys::resource(Kind::Host, &id), &h));
        Ok(Plan::Write(txn, ()))
    })
    .await?;
    Ok(Json(read_back(&st.cache.read().hosts, &id)?))
}

/// `container` instances of host `host_id` that ran and whose namespace the
/// host reports gone (the runtime removed the container without a CNI
/// DEL): each is deleted as its tenant would delete it, detaching its ENIs,
/// and the ENIs its CNI ADD made are deleted too, freeing their addresses.
/// Only running container instances of that very host are touched, so a
/// host's report reaches nothing it does not hold.
async fn reap_vanished_containers(st: &AppState, host_id: &str, vanished: &[String]) {
    for iid in vanished {
        let (inst, made) = {
            let snap = st.cache.read();
            let Some(ie) = snap.instances.get(iid) else { continue };
            let i = &ie.value;
            if i.host_id != host_id || i.kind != InstanceKind::Container || i.state != InstanceState::Running {
                continue;
            }
            let made: Vec<String> = snap
                .enis_of_instance(iid)
                .into_iter()
                .filter(|e| evnet_model::cni::created_by_cni(&e.tags))
                .map(|e| e.id.clone())
                .collect();
            (i.clone(), made)
        };
        let caller = Caller::Tenant(inst.tenant.clone());
        match crate::api::compute::delete_instance(State(st.clone()), caller.clone(), Path(inst.id.clone())).await {
            Ok(_) => tracing::info!(instance = %inst.id, host = %host_id, netns = %inst.netns, "deleted a container instance whose namespace is gone"),
            Err(e) => {
                tracing::warn!(instance = %inst.id, error = ?e, "could not delete a container instance whose namespace is gone");
                continue;
            }
        }
        for eni in made {
            if let Err(e) = crate::api::compute::delete_eni(State(st.clone()), caller.clone(), Path(eni.clone())).await {
                tracing::warn!(eni = %eni, error = ?e, "could not delete the ENI of a vanished container");
            }
        }
    }
}

pub async fn list_hosts(State(st): State<AppState>, caller: Caller, Q(q): Q<ListQuery>) -> ApiResult<Json<Page<Host>>> {
    if let Caller::Bootstrap(_) = caller {
        return Err(ApiError::forbidden("list hosts: a bootstrap token only registers a host"));
    }
    let snap = st.cache.read();
    // Hosts are shared infrastructure: tenants and the admin read them all;
    // a host's credential reads only its own.
    Ok(Json(paginate(&snap.hosts, &Caller::Admin, &q, |h| {
        if let Caller::Host(own) = &caller
            && *own != h.id
        {
            return false;
        }
        q.status.as_deref().is_none_or(|s| serde_json::to_value(h.status).ok().and_then(|v| v.as_str().map(|x| x == s)).unwrap_or(false))
    })?))
}

pub async fn get_host(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Host>> {
    match &caller {
        Caller::Host(_) => caller.require_host(&id, "read hosts")?,
        Caller::Bootstrap(_) => return Err(ApiError::forbidden("read hosts: a bootstrap token only registers a host")),
        Caller::Admin | Caller::Tenant(_) => {}
    }
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
        // A NAT gateway's create compares its host's key, so this sees
        // every one placed here before it.
        if let Some(n) = snap.nat_gateways.values().find(|n| n.value.host_id == id) {
            return Err(ModelError::conflict(
                "dependency_violation",
                format!("host {id} runs NAT gateway {} (of tenant {}); it must be deleted first", n.value.id, n.value.tenant),
            )
            .into());
        }
        let mut txn = Txn {
            compares: vec![cmp(keys::resource(Kind::Host, &id), h.mod_revision)],
            ops: vec![del(keys::resource(Kind::Host, &id)), del(keys::hostname(&h.value.name)), del(keys::hostbw(&id))],
        };
        // Its credentials die with it.
        for (sha, (rec, _)) in &snap.tokens {
            if matches!(rec, TokenRecord::Host { host_id } if *host_id == id) {
                txn.ops.push(del(keys::token(sha)));
            }
        }
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
    req.validate()?;
    caller.require_host(&id, "send heartbeats")?;
    check_generation(&st, &id, req.applied_generation).await?;
    let refresh_ms = heartbeat_refresh_ms(&st);
    commit(&st, |snap| {
        let e = visible(&snap.hosts, Kind::Host, &id, &Caller::Admin)?;
        let now = now_ms();
        let mut h = arc_clone(&e.value);
        h.last_heartbeat_ms = now;
        h.status = HostStatus::Ready;
        h.applied_generation = h.applied_generation.max(req.applied_generation);
        h.failures = req.failures.clone();
        h.netns = req.host_netns.clone();
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
        // A heartbeat that changes nothing but the time is written only when
        // the stored time is older than the refresh interval: a fleet's
        // heartbeats would otherwise be most of the store's writes.
        let old = &e.value;
        let unchanged = txn.ops.len() == 1
            && old.status == HostStatus::Ready
            && old.applied_generation == h.applied_generation
            && old.failures == h.failures
            && old.netns == h.netns
            && now.saturating_sub(old.last_heartbeat_ms) < refresh_ms;
        if unchanged {
            return Ok(Plan::Done(()));
        }
        Ok(Plan::Write(txn, ()))
    })
    .await?;
    reap_vanished_containers(&st, &id, &req.vanished_instances).await;
    Ok(Json(read_back(&st.cache.read().hosts, &id)?))
}

/// How old a host's stored heartbeat time may grow before a heartbeat that
/// changes nothing else rewrites it: a third of the time after which the
/// host is marked lost, so two missed refreshes still leave it ready.
fn heartbeat_refresh_ms(st: &AppState) -> u64 {
    st.settings.host_lost_after_ms / 3
}

/// A heartbeat may report only a generation the host was given: at most its
/// current desired generation. A generation from a server whose cache is
/// ahead of this one's (replicas share the store) is waited for, briefly.
async fn check_generation(st: &AppState, id: &str, applied: u64) -> ApiResult<()> {
    let current = |st: &AppState| st.desired.current(st, id).map(|d| d.generation).unwrap_or(0);
    if applied <= current(st) {
        return Ok(());
    }
    if applied > st.cache.revision() {
        let _ = tokio::time::timeout(Duration::from_secs(1), st.cache.wait_for(applied)).await;
    }
    let now = current(st);
    if applied <= now {
        return Ok(());
    }
    Err(ModelError::invalid(
        "generation_not_issued",
        format!(
            "applied_generation {applied} is beyond host {id}'s current desired generation {now}; report only a generation read from GET /v1/hosts/{id}/desired"
        ),
    )
    .into())
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
    caller.require_host(&id, "read a host's desired state")?;
    if !st.cache.read().hosts.contains_key(&id) {
        return Err(ModelError::not_found("host", &id).into());
    }
    let timeout = Duration::from_millis(q.timeout_ms.unwrap_or(30_000).min(300_000));
    let deadline = tokio::time::Instant::now() + timeout;
    // Woken only by changes that touch this host (crate::fanout).
    let mut rx = st.cache.watch_host(&id);
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

/// Marks hosts whose heartbeats stopped as `lost`, and removes expired
/// bootstrap tokens, forever, every second.
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
        // Bootstrap tokens that expired unused are removed.
        let expired: Vec<(String, u64)> = st
            .cache
            .read()
            .tokens
            .iter()
            .filter(|(_, (r, _))| matches!(r, TokenRecord::Bootstrap { expires_at_ms } if *expires_at_ms < now))
            .map(|(sha, (_, rev))| (sha.clone(), *rev))
            .collect();
        for (sha, rev) in expired {
            let txn = Txn { compares: vec![cmp(keys::token(&sha), rev)], ops: vec![del(keys::token(&sha))] };
            if let Err(e) = st.store.txn(txn).await {
                tracing::error!(error = %e, "could not remove an expired bootstrap token");
            }
        }
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

/// `GET /v1/tenants/{id}/quotas`: the admin, or the tenant itself.
pub async fn get_quotas(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Quotas>> {
    let snap = st.cache.read();
    visible(&snap.tenants, Kind::Tenant, &id, &caller)?;
    Ok(Json(crate::quota::of(&snap, &id)))
}

/// `PUT /v1/tenants/{id}/quotas` (admin): the quotas given change, the
/// others keep their values.
pub async fn put_quotas(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<SetQuotas>,
) -> ApiResult<Json<Quotas>> {
    caller.require_admin("set quotas")?;
    // The values' bounds first, so a bad body answers 422 whatever the id.
    Quotas::default().with(&req)?;
    let (_, q) = commit(&st, |snap| {
        let t = visible(&snap.tenants, Kind::Tenant, &id, &caller)?;
        let q = crate::quota::of(snap, &id).with(&req)?;
        // The tenant must still exist when its quotas are written.
        let txn = Txn { compares: vec![cmp(keys::resource(Kind::Tenant, &id), t.mod_revision)], ops: vec![put(keys::quota(&id), &q)] };
        Ok(Plan::Write(txn, q))
    })
    .await?;
    Ok(Json(q))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// RFC 3339: records at or after this time.
    pub since: Option<String>,
    pub limit: Option<usize>,
    pub page_token: Option<String>,
}

/// `GET /v1/audit` (admin): the audit log, oldest first.
pub async fn audit(State(st): State<AppState>, caller: Caller, Q(q): Q<AuditQuery>) -> ApiResult<Json<AuditPage>> {
    caller.require_admin("read the audit log")?;
    let since = match &q.since {
        Some(s) => Some(time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).map_err(|_| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", format!("since={s:?} is not an RFC 3339 time (2026-01-31T12:00:00Z)"))
        })?),
        None => None,
    };
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_limit", format!("limit must be between 1 and {MAX_PAGE}")));
    }
    let after = match &q.page_token {
        Some(t) => t.parse::<u64>().map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", "page_token is the next_page_token of an earlier answer"))?,
        None => 0,
    };
    let Some(log) = &st.audit else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no_audit_log", "this server keeps no audit log (it runs without a data directory)"));
    };
    let page = log.read(since, after, limit).map_err(|e| {
        tracing::error!(error = %e, "cannot read the audit log");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable", format!("cannot read the audit log: {e}; retry later"))
    })?;
    Ok(Json(page))
}
