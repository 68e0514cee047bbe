//! Internet and NAT gateways: DescribeInternetGateways, and Create,
//! Describe and Delete of NAT gateways, through the REST API's operations.
//!
//! An evnet internet gateway is made with its VPC and never detached, so
//! EC2's Create/Attach/Detach/DeleteInternetGateway have no counterpart
//! here (the REST API and `evnet igw` make and delete them); described, a
//! gateway is `attached` to its VPC.

use axum::extract::{Path, State};
use evnet_model::*;

use super::Ctx;
use super::error::{Ec2Error, Ec2Result};
use super::params::{select, tag_filter};
use super::render::{flat, tag_set};
use super::tags::{check_user_tags, name_from_tags};
use super::xml::{Node, branch, leaf, set};
use crate::api::external;
use crate::cache::Snapshot;
use crate::extract::Body;

fn internet_gateway(g: &InternetGateway) -> Vec<Node> {
    flat(vec![
        Some(leaf("internetGatewayId", &g.id)),
        Some(leaf("ownerId", &g.tenant)),
        Some(set("attachmentSet", [vec![leaf("vpcId", &g.vpc_id), leaf("state", "attached")]])),
        tag_set(&g.tags),
    ])
}

fn igw_filter(g: &InternetGateway, name: &str) -> Vec<String> {
    match name {
        "internet-gateway-id" => vec![g.id.clone()],
        "attachment.vpc-id" => vec![g.vpc_id.clone()],
        "attachment.state" => vec!["attached".into()],
        "owner-id" => vec![g.tenant.clone()],
        _ => tag_filter(&g.tags, name),
    }
}

const IGW_FILTERS: &[&str] = &["internet-gateway-id", "attachment.vpc-id", "attachment.state", "owner-id"];

pub async fn describe_internet_gateways(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let ids = ctx.p.ids("InternetGatewayId", Kind::InternetGateway)?;
    let filters = ctx.p.filters()?;
    let paging = ctx.p.paging()?;
    let snap = ctx.st.cache.read();
    let all = snap.internet_gateways.values().filter(|e| e.value.tenant == ctx.tenant).map(|e| (e.value.id.clone(), (*e.value).clone()));
    let (items, next) = select(all, Kind::InternetGateway, &ids, &filters, &paging, IGW_FILTERS, &igw_filter)?;
    let mut out = vec![set("internetGatewaySet", items.iter().map(internet_gateway))];
    out.extend(next.map(|t| leaf("nextToken", t)));
    Ok(out)
}

/// A NAT gateway as EC2 describes it: its one address, public and private.
/// It has no network interface of its own in evnet.
fn nat_gateway(snap: &Snapshot, n: &NatGateway) -> Vec<Node> {
    let eip = snap.elastic_ips.get(&n.elastic_ip_id).map(|e| e.value.clone());
    let mut address = vec![leaf("allocationId", &n.elastic_ip_id), leaf("privateIp", n.private_ip)];
    if let Some(e) = &eip {
        address.push(leaf("publicIp", e.address));
        address.push(leaf("associationId", super::address::association_id(&e.id)));
    }
    address.push(leaf("isPrimary", true));
    address.push(leaf("status", "succeeded"));
    flat(vec![
        Some(leaf("createTime", &n.created_at)),
        Some(set("natGatewayAddressSet", [address])),
        Some(leaf("natGatewayId", &n.id)),
        Some(leaf("state", "available")),
        Some(leaf("subnetId", &n.subnet_id)),
        Some(leaf("vpcId", &n.vpc_id)),
        tag_set(&n.tags),
        Some(leaf("connectivityType", "public")),
    ])
}

pub async fn create_nat_gateway(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    if ctx.p.get("ConnectivityType").is_some_and(|c| c != "public") {
        return Err(Ec2Error::unsupported("ConnectivityType private: evnet's NAT gateways reach an external network"));
    }
    for p in
        ["PrivateIpAddress", "SecondaryAllocationId.1", "SecondaryPrivateIpAddress.1", "SecondaryPrivateIpAddressCount", "AvailabilityMode"]
    {
        if ctx.p.get(p).is_some() {
            return Err(Ec2Error::unsupported(format!(
                "{p}: an evnet NAT gateway has one elastic IP and takes the next free address of its subnet"
            )));
        }
    }
    let subnet_id = ctx.p.id("SubnetId", Kind::Subnet)?;
    let elastic_ip_id = ctx.p.id("AllocationId", Kind::ElasticIp)?;
    let tags = ctx.p.tag_specs("natgateway")?;
    check_user_tags(&tags)?;
    let client_token = ctx.p.get("ClientToken").map(str::to_string);
    let req = CreateNatGateway { subnet_id, elastic_ip_id, name: name_from_tags(&tags), tags, client_token: client_token.clone() };
    let (_, axum::Json(n)) = external::create_natgw(State(ctx.st.clone()), ctx.caller.clone(), Body(req)).await.map_err(|e| {
        // An address that is taken is EC2's own refusal.
        if e.code == "eip_associated" { Ec2Error::bad("Resource.AlreadyAssociated", e.message) } else { e.into() }
    })?;
    let snap = ctx.st.cache.read();
    let mut out = vec![branch("natGateway", nat_gateway(&snap, &n))];
    out.extend(client_token.map(|t| leaf("clientToken", t)));
    Ok(out)
}

fn nat_filter(n: &NatGateway, name: &str) -> Vec<String> {
    match name {
        "nat-gateway-id" => vec![n.id.clone()],
        "state" => vec!["available".into()],
        "subnet-id" => vec![n.subnet_id.clone()],
        "vpc-id" => vec![n.vpc_id.clone()],
        _ => tag_filter(&n.tags, name),
    }
}

const NAT_FILTERS: &[&str] = &["nat-gateway-id", "state", "subnet-id", "vpc-id"];

pub async fn describe_nat_gateways(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let ids = ctx.p.ids("NatGatewayId", Kind::NatGateway)?;
    let filters = ctx.p.filters()?;
    let paging = ctx.p.paging()?;
    let snap = ctx.st.cache.read();
    let all = snap.nat_gateways.values().filter(|e| e.value.tenant == ctx.tenant).map(|e| (e.value.id.clone(), (*e.value).clone()));
    let (items, next) = select(all, Kind::NatGateway, &ids, &filters, &paging, NAT_FILTERS, &nat_filter)?;
    let mut out = vec![set("natGatewaySet", items.iter().map(|n| nat_gateway(&snap, n)))];
    out.extend(next.map(|t| leaf("nextToken", t)));
    Ok(out)
}

/// Deleting frees the gateway's elastic IP at once (EC2 answers `deleting`
/// and frees it a little later).
pub async fn delete_nat_gateway(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let id = ctx.p.id("NatGatewayId", Kind::NatGateway)?;
    external::delete_natgw(State(ctx.st.clone()), ctx.caller.clone(), Path(id.clone())).await?;
    Ok(vec![leaf("natGatewayId", id)])
}
