//! `POST /v1/trace`: what the data plane does with one packet from one of
//! the caller's ENIs (see `evnet_model::trace`). Read-only; answers from the
//! watched cache.

use axum::extract::State;
use axum::Json;
use evnet_model::trace::{trace as run_trace, Trace, TraceRequest, TraceWorld};
use evnet_model::*;

use crate::auth::Caller;
use crate::common::*;
use crate::error::{ApiError, ApiResult};
use crate::extract::Body;
use crate::state::AppState;

/// `POST /v1/trace`.
pub async fn trace(State(st): State<AppState>, caller: Caller, Body(req): Body<TraceRequest>) -> ApiResult<Json<Trace>> {
    let invalid = |e: evnet_model::trace::TraceError| ApiError::from(ModelError::invalid("invalid_trace", e.to_string()));
    req.check_packet().map_err(invalid)?;
    let snap = st.cache.read();
    let source = &visible(&snap.enis, Kind::Eni, &req.source_eni_id, &caller)?.value;
    let vpc = &visible(&snap.vpcs, Kind::Vpc, &source.vpc_id, &caller)?.value;
    // The VPC and those at the other end of its active peerings.
    let peerings: Vec<&Peering> = snap.peerings.values().map(|p| &*p.value).filter(|p| p.vpc_a == vpc.id || p.vpc_b == vpc.id).collect();
    let peer_vpcs: Vec<&Vpc> = peerings
        .iter()
        .filter(|p| p.status == PeeringStatus::Active)
        .map(|p| if p.vpc_a == vpc.id { &p.vpc_b } else { &p.vpc_a })
        .filter_map(|id| snap.vpcs.get(id))
        .map(|v| &*v.value)
        .collect();
    let in_world = |vpc_id: &str| vpc_id == vpc.id || peer_vpcs.iter().any(|v| v.id == vpc_id);
    let enis: Vec<&Eni> = snap.enis.values().map(|e| &*e.value).filter(|e| in_world(&e.vpc_id)).collect();
    // Only the instances and hosts those ENIs are attached to.
    let attachments = || enis.iter().filter_map(|e| e.attachment.as_ref());
    let instances = attachments().filter_map(|a| snap.instances.get(&a.instance_id)).map(|i| (i.value.id.as_str(), &*i.value)).collect();
    let nats: Vec<&NatGateway> = snap.nat_gateways.values().map(|n| &*n.value).filter(|n| n.vpc_id == vpc.id).collect();
    let hosts = attachments()
        .map(|a| a.host_id.as_str())
        .chain(nats.iter().map(|n| n.host_id.as_str()))
        .filter_map(|h| snap.hosts.get(h))
        .map(|h| (h.value.id.as_str(), &*h.value))
        .collect();
    let source_id = source.id.as_str();
    let world = TraceWorld {
        internet_gateways: snap.internet_gateways.values().map(|g| &*g.value).filter(|g| g.vpc_id == vpc.id).collect(),
        // The source's own: a trace describes only its sender's way out.
        elastic_ips: snap
            .elastic_ips
            .values()
            .map(|x| &*x.value)
            .filter(|x| x.association.as_ref().is_some_and(|a| a.eni_id.as_deref() == Some(source_id)))
            .collect(),
        vpc,
        subnets: snap.subnets.values().map(|s| &*s.value).filter(|s| in_world(&s.vpc_id)).collect(),
        groups: snap.security_groups.values().map(|g| &*g.value).filter(|g| in_world(&g.vpc_id)).map(|g| (g.id.as_str(), g)).collect(),
        route_tables: snap.route_tables.values().map(|t| &*t.value).filter(|t| in_world(&t.vpc_id)).collect(),
        instances,
        hosts,
        enis,
        peerings,
        peer_vpcs: peer_vpcs.clone(),
        nat_gateways: nats.iter().map(|n| (*n, snap.elastic_ips.get(&n.elastic_ip_id).map(|e| e.value.address))).collect(),
    };
    let t = run_trace(&req, source, &world).map_err(invalid)?;
    Ok(Json(t))
}
