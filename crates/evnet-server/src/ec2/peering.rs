//! VPC peering connections: Create (pending acceptance), Accept, Describe,
//! Delete, through the REST API's peering operations.

use axum::extract::{Path, State};
use evnet_model::*;

use super::error::{Ec2Error, Ec2Result};
use super::params::{select, tag_filter};
use super::render;
use super::tags::{check_user_tags, name_from_tags};
use super::xml::{branch, leaf, set, Node};
use super::Ctx;
use crate::api::network;
use crate::extract::Body;

pub async fn create(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let vpc_a = ctx.p.id("VpcId", Kind::Vpc)?;
    let vpc_b = ctx.p.get("PeerVpcId").ok_or_else(|| Ec2Error::missing("PeerVpcId"))?.to_string();
    if Kind::of_id(&vpc_b) != Some(Kind::Vpc) {
        return Err(Ec2Error::not_found(Kind::Vpc, &vpc_b));
    }
    if let Some(o) = ctx.p.get("PeerOwnerId")
        && o != ctx.tenant {
            return Err(Ec2Error::unsupported(format!("PeerOwnerId {o}: evnet peers VPCs of one tenant ({})", ctx.tenant)));
        }
    if let Some(r) = ctx.p.get("PeerRegion")
        && r != ctx.region {
            return Err(Ec2Error::unsupported(format!("PeerRegion {r}: this endpoint serves one region ({})", ctx.region)));
        }
    let tags = ctx.p.tag_specs("vpc-peering-connection")?;
    check_user_tags(&tags)?;
    let req = CreatePeering { vpc_a, vpc_b, name: name_from_tags(&tags), tags, client_token: None };
    let (_, axum::Json(p)) = network::create_peering(State(ctx.st.clone()), ctx.caller.clone(), Body(req)).await?;
    let snap = ctx.st.cache.read();
    Ok(vec![branch("vpcPeeringConnection", render::peering(&snap, &p, &ctx.region))])
}

pub async fn accept(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let id = ctx.p.id("VpcPeeringConnectionId", Kind::Peering)?;
    let axum::Json(p) = network::accept_peering(State(ctx.st.clone()), ctx.caller.clone(), Path(id), Body(network::AcceptPeering {})).await?;
    let snap = ctx.st.cache.read();
    Ok(vec![branch("vpcPeeringConnection", render::peering(&snap, &p, &ctx.region))])
}

fn peering_filter(snap: &crate::cache::Snapshot, p: &Peering, name: &str) -> Vec<String> {
    let cidr = |v: &str| snap.vpcs.get(v).map(|x| x.value.cidr_block.to_string()).into_iter().collect();
    let owner = |v: &str| snap.vpcs.get(v).map(|x| x.value.tenant.clone()).into_iter().collect();
    match name {
        "vpc-peering-connection-id" => vec![p.id.clone()],
        "status-code" => vec![render::peering_status(p).0.to_string()],
        "status-message" => vec![render::peering_status(p).1.to_string()],
        "requester-vpc-info.vpc-id" => vec![p.vpc_a.clone()],
        "accepter-vpc-info.vpc-id" => vec![p.vpc_b.clone()],
        "requester-vpc-info.cidr-block" => cidr(&p.vpc_a),
        "accepter-vpc-info.cidr-block" => cidr(&p.vpc_b),
        "requester-vpc-info.owner-id" => owner(&p.vpc_a),
        "accepter-vpc-info.owner-id" => owner(&p.vpc_b),
        _ => tag_filter(&p.tags, name),
    }
}

const PEERING_FILTERS: &[&str] = &[
    "vpc-peering-connection-id", "status-code", "status-message", "requester-vpc-info.vpc-id", "accepter-vpc-info.vpc-id",
    "requester-vpc-info.cidr-block", "accepter-vpc-info.cidr-block", "requester-vpc-info.owner-id", "accepter-vpc-info.owner-id",
];

pub async fn describe(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let ids = ctx.p.ids("VpcPeeringConnectionId", Kind::Peering)?;
    let filters = ctx.p.filters()?;
    let paging = ctx.p.paging()?;
    let snap = ctx.st.cache.read();
    let all = snap.peerings.values().filter(|e| network::peering_seen_by(&snap, &e.value, &ctx.caller)).map(|e| (e.value.id.clone(), e.value.clone()));
    let (items, next) = select(all, Kind::Peering, &ids, &filters, &paging, PEERING_FILTERS, &|p, n| peering_filter(&snap, p, n))?;
    let mut out = vec![set("vpcPeeringConnectionSet", items.iter().map(|p| render::peering(&snap, p, &ctx.region)))];
    out.extend(next.map(|t| leaf("nextToken", t)));
    Ok(out)
}

pub async fn delete(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let id = ctx.p.id("VpcPeeringConnectionId", Kind::Peering)?;
    network::delete_peering(State(ctx.st.clone()), ctx.caller.clone(), Path(id)).await?;
    Ok(vec![leaf("return", true)])
}
