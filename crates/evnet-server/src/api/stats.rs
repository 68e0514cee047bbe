//! Bandwidth figures: agents report (`POST /v1/hosts/{id}/bandwidth`,
//! answered with the controller's caps); callers read one ENI's figures
//! (`GET /v1/enis/{id}/stats`) or everything they can see at once
//! (`GET /v1/bandwidth-stats`, what `evnet top` shows).

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::Json;
use evnet_model::desired::{DirectionStats, HostBandwidthCaps, HostBandwidthReport};
use evnet_model::*;
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::cache::Entry;
use crate::common::*;
use crate::error::ApiResult;
use crate::extract::{Body, Q};
use crate::state::AppState;

/// One ENI's bandwidth: measured rate, estimated demand and allocated rate
/// in bit/s, `tx` = what it sends, `rx` = what it receives, as its agent last
/// reported them (`updated_at_ms`, Unix ms; `null` before the first report).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EniStats {
    pub eni_id: String,
    pub name: String,
    pub host_id: Option<String>,
    pub guaranteed_bps: u64,
    pub limit_bps: u64,
    pub tx: DirectionStats,
    pub rx: DirectionStats,
    pub updated_at_ms: Option<u64>,
}

/// A host's totals over the ENIs the caller sees on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HostStats {
    pub host_id: String,
    pub name: String,
    pub nic_bps: u64,
    pub tx: DirectionStats,
    pub rx: DirectionStats,
    pub enis: u32,
}

/// Everything `evnet top` shows.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BandwidthStats {
    pub hosts: Vec<HostStats>,
    pub enis: Vec<EniStats>,
}

fn eni_stats_of(st: &AppState, eni: &Eni, hosts: &BTreeMap<String, Entry<Host>>) -> EniStats {
    let host_id = eni.attachment.as_ref().map(|a| a.host_id.clone());
    let nic = host_id.as_ref().and_then(|h| hosts.get(h)).map_or(0, |h| h.value.nic_mbps);
    // Figures only count while the ENI is attached where they were measured.
    let f = st.bandwidth.eni(&eni.id).filter(|f| Some(&f.host_id) == host_id.as_ref());
    EniStats {
        eni_id: eni.id.clone(),
        name: eni.name.clone(),
        host_id,
        guaranteed_bps: eni.bandwidth.guaranteed_bps(),
        limit_bps: if nic == 0 { eni.bandwidth.limit_mbps.unwrap_or(0) * 1_000_000 } else { eni.bandwidth.limit_bps(nic) },
        tx: f.as_ref().map(|f| f.tx).unwrap_or_default(),
        rx: f.as_ref().map(|f| f.rx).unwrap_or_default(),
        updated_at_ms: f.map(|f| f.updated_at_ms),
    }
}

/// `POST /v1/hosts/{id}/bandwidth` (agents): the host's latest figures in,
/// the caps for its ENIs out.
const FORWARDED: &str = "x-evnet-forwarded";

/// A server that does not lead the bandwidth loop forwards the report to
/// the one that does (its controller needs every host's figures) and
/// answers with the leader's caps; if the leader cannot be reached it keeps
/// the report and answers its own (empty) caps.
pub async fn report(
    State(st): State<AppState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    Path(id): Path<String>,
    Body(req): Body<HostBandwidthReport>,
) -> ApiResult<Json<HostBandwidthCaps>> {
    caller.require_host(&id, "report bandwidth")?;
    tracing::trace!(host = %id, pairs = req.pairs.len(), "bandwidth report received");
    visible(&st.cache.read().hosts, Kind::Host, &id, &Caller::Admin)?;
    // A forwarded report is never forwarded again (caches that disagree on
    // the leader for a moment must not bounce it between them).
    let forwarded = headers.contains_key(FORWARDED);
    if !forwarded && !st.cluster.leads(crate::cluster::BANDWIDTH) {
        let leader = crate::cluster::leader_url(&st.cache.read().cluster, crate::cluster::BANDWIDTH, &st.cluster.me.id);
        if let Some(url) = leader {
            let mut q = st.cluster.http.post(format!("{}/v1/hosts/{id}/bandwidth", url.trim_end_matches('/'))).json(&req).header(FORWARDED, "1");
            if let Some(a) = headers.get(axum::http::header::AUTHORIZATION) {
                q = q.header(axum::http::header::AUTHORIZATION, a.clone());
            }
            match q.send().await {
                Ok(resp) if resp.status().is_success() => {
                    if let Ok(caps) = resp.json::<HostBandwidthCaps>().await {
                        st.bandwidth.record(&id, req, now_ms());
                        return Ok(Json(caps));
                    }
                }
                Ok(resp) => tracing::debug!(status = %resp.status(), "the bandwidth leader refused a forwarded report"),
                Err(e) => tracing::debug!(error = %e, "cannot forward a bandwidth report to the leader"),
            }
        }
    }
    Ok(Json(st.bandwidth.record(&id, req, now_ms())))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapsQuery {
    pub after: Option<u64>,
    pub timeout_ms: Option<u64>,
}

/// `GET /v1/hosts/{id}/bandwidth/caps`: the host's caps; with `after`, a
/// long poll that answers when their version passes it or the timeout
/// (default 30 s) ends. So new caps reach a host as soon as a round makes
/// them, not at its next report. Only the server that runs the controller
/// has caps to give: the others answer 409 `not_bandwidth_leader` (the
/// agent then takes the caps from its reports' answers, which they
/// forward to the leader).
pub async fn watch_caps(State(st): State<AppState>, caller: Caller, Path(id): Path<String>, Q(q): Q<CapsQuery>) -> ApiResult<Json<HostBandwidthCaps>> {
    caller.require_host(&id, "watch bandwidth caps")?;
    visible(&st.cache.read().hosts, Kind::Host, &id, &Caller::Admin)?;
    if !st.cluster.leads(crate::cluster::BANDWIDTH) {
        return Err(ModelError::conflict("not_bandwidth_leader", "this server does not run the bandwidth controller; take the caps from the answers to POST /v1/hosts/{id}/bandwidth").into());
    }
    let timeout = std::time::Duration::from_millis(q.timeout_ms.unwrap_or(30_000).min(300_000));
    let deadline = tokio::time::Instant::now() + timeout;
    Ok(Json(st.bandwidth.wait_caps(&id, q.after.unwrap_or(0), deadline).await))
}

/// `GET /v1/enis/{id}/stats`.
pub async fn eni_stats(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<EniStats>> {
    let snap = st.cache.read();
    let e = visible(&snap.enis, Kind::Eni, &id, &caller)?;
    Ok(Json(eni_stats_of(&st, &e.value, &snap.hosts)))
}

/// `GET /v1/bandwidth-stats`: the caller's attached ENIs and, per host they
/// are on, the totals over those ENIs (the admin sees everything).
pub async fn overview(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<BandwidthStats>> {
    caller.require_person("read bandwidth figures")?;
    let snap = st.cache.read();
    let mut out = BandwidthStats::default();
    let mut hosts: BTreeMap<String, HostStats> = BTreeMap::new();
    if caller == Caller::Admin {
        for (id, h) in &snap.hosts {
            hosts.insert(id.clone(), empty_host(&h.value));
        }
    }
    for e in snap.enis.values() {
        if !caller.sees(&e.value.tenant) || e.value.attachment.is_none() {
            continue;
        }
        let s = eni_stats_of(&st, &e.value, &snap.hosts);
        if let Some(h) = s.host_id.as_ref().and_then(|h| snap.hosts.get(h)) {
            let t = hosts.entry(h.value.id.clone()).or_insert_with(|| empty_host(&h.value));
            add(&mut t.tx, &s.tx);
            add(&mut t.rx, &s.rx);
            t.enis += 1;
        }
        out.enis.push(s);
    }
    out.hosts = hosts.into_values().collect();
    Ok(Json(out))
}

fn empty_host(h: &Host) -> HostStats {
    HostStats {
        host_id: h.id.clone(),
        name: h.name.clone(),
        nic_bps: h.nic_mbps.saturating_mul(1_000_000),
        tx: DirectionStats::default(),
        rx: DirectionStats::default(),
        enis: 0,
    }
}

fn add(to: &mut DirectionStats, s: &DirectionStats) {
    to.rate_bps += s.rate_bps;
    to.demand_bps += s.demand_bps;
    to.allocated_bps += s.allocated_bps;
}
