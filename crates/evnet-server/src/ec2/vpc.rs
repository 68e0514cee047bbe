//! VPCs and subnets: Create/Describe/Delete and the attributes evnet has.

use axum::extract::{Path, State};
use evnet_model::*;

use super::error::{Ec2Error, Ec2Result};
use super::params::{select, tag_filter};
use super::render;
use super::tags::{check_user_tags, name_from_tags};
use super::xml::{branch, leaf, ok_return, set, Node};
use super::Ctx;
use crate::api::network;
use crate::extract::Body;

fn state(ctx: &Ctx) -> State<crate::state::AppState> {
    State(ctx.st.clone())
}

fn refuse_ipv6(ctx: &Ctx) -> Ec2Result<()> {
    for k in ["Ipv6CidrBlock", "Ipv6Pool", "Ipv6IpamPoolId", "Ipv6NetmaskLength", "Ipv6Native"] {
        if ctx.p.get(k).is_some() {
            return Err(Ec2Error::unsupported(format!("{k}: evnet's VPCs are IPv4 only")));
        }
    }
    if ctx.p.bool("AmazonProvidedIpv6CidrBlock")? == Some(true) {
        return Err(Ec2Error::unsupported("AmazonProvidedIpv6CidrBlock: evnet's VPCs are IPv4 only"));
    }
    for k in ["Ipv4IpamPoolId", "Ipv4NetmaskLength"] {
        if ctx.p.get(k).is_some() {
            return Err(Ec2Error::unsupported(format!("{k}: evnet has no IPAM pools; give CidrBlock")));
        }
    }
    Ok(())
}

pub async fn create_vpc(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    refuse_ipv6(ctx)?;
    let cidr = ctx.p.req("CidrBlock")?.to_string();
    if let Some(t) = ctx.p.get("InstanceTenancy")
        && t != "default" {
            return Err(Ec2Error::invalid_value(format!("InstanceTenancy '{t}' is not available; evnet offers 'default'")));
        }
    let tags = ctx.p.tag_specs("vpc")?;
    check_user_tags(&tags)?;
    let req = CreateVpc { cidr_block: cidr, name: name_from_tags(&tags), tags, client_token: None, dhcp_options: None };
    let (_, axum::Json(v)) = network::create_vpc(state(ctx), ctx.caller.clone(), Body(req)).await?;
    Ok(vec![branch("vpc", render::vpc(&v))])
}

fn vpc_filter(v: &Vpc, name: &str) -> Vec<String> {
    match name {
        "vpc-id" => vec![v.id.clone()],
        "cidr" | "cidr-block-association.cidr-block" => vec![v.cidr_block.to_string()],
        "state" => vec!["available".into()],
        "owner-id" => vec![v.tenant.clone()],
        "is-default" => vec!["false".into()],
        "dhcp-options-id" => vec!["default".into()],
        _ => tag_filter(&v.tags, name),
    }
}

pub async fn describe_vpcs(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let ids = ctx.p.ids("VpcId", Kind::Vpc)?;
    let filters = ctx.p.filters()?;
    let paging = ctx.p.paging()?;
    let snap = ctx.st.cache.read();
    let all = snap.vpcs.values().filter(|e| e.value.tenant == ctx.tenant).map(|e| (e.value.id.clone(), e.value.clone()));
    let known = ["vpc-id", "cidr", "cidr-block-association.cidr-block", "state", "owner-id", "is-default", "dhcp-options-id"];
    let (items, next) = select(all, Kind::Vpc, &ids, &filters, &paging, &known, &|v, n| vpc_filter(v, n))?;
    let mut out = vec![set("vpcSet", items.iter().map(|v| render::vpc(v)))];
    out.extend(next.map(|t| leaf("nextToken", t)));
    Ok(out)
}

pub async fn delete_vpc(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let id = ctx.p.id("VpcId", Kind::Vpc)?;
    network::delete_vpc(state(ctx), ctx.caller.clone(), Path(id)).await?;
    Ok(ok_return())
}

/// A boolean attribute evnet does not have (it is always off): turning it
/// off succeeds and changes nothing, turning it on is refused.
fn off_only(ctx: &Ctx, attr: &str, why: &str) -> Ec2Result<bool> {
    match ctx.p.bool(&format!("{attr}.Value"))? {
        None => Ok(false),
        Some(false) => Ok(true),
        Some(true) => Err(Ec2Error::unsupported(format!("{attr}: {why}"))),
    }
}

fn check_vpc(ctx: &Ctx, id: &str) -> Ec2Result<()> {
    let snap = ctx.st.cache.read();
    match snap.vpcs.get(id) {
        Some(v) if v.value.tenant == ctx.tenant => Ok(()),
        _ => Err(Ec2Error::not_found(Kind::Vpc, id)),
    }
}

pub async fn modify_vpc_attribute(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let id = ctx.p.id("VpcId", Kind::Vpc)?;
    check_vpc(ctx, &id)?;
    let mut any = false;
    any |= off_only(ctx, "EnableDnsSupport", "evnet's VPCs have no DNS resolver")?;
    any |= off_only(ctx, "EnableDnsHostnames", "evnet's VPCs have no DNS hostnames")?;
    any |= off_only(ctx, "EnableNetworkAddressUsageMetrics", "evnet does not publish network address usage metrics")?;
    if !any {
        return Err(Ec2Error::missing("EnableDnsSupport, EnableDnsHostnames or EnableNetworkAddressUsageMetrics"));
    }
    Ok(ok_return())
}

pub async fn describe_vpc_attribute(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let id = ctx.p.id("VpcId", Kind::Vpc)?;
    check_vpc(ctx, &id)?;
    let attr = ctx.p.req("Attribute")?;
    let elem = match attr {
        "enableDnsSupport" => "enableDnsSupport",
        "enableDnsHostnames" => "enableDnsHostnames",
        "enableNetworkAddressUsageMetrics" => "enableNetworkAddressUsageMetrics",
        a => return Err(Ec2Error::invalid_value(format!("Value ({a}) for parameter Attribute is invalid"))),
    };
    Ok(vec![leaf("vpcId", id), branch(elem, vec![leaf("value", false)])])
}

pub async fn create_subnet(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    refuse_ipv6(ctx)?;
    for k in ["AvailabilityZone", "AvailabilityZoneId", "OutpostArn"] {
        if ctx.p.get(k).is_some() {
            return Err(Ec2Error::unsupported(format!(
                "{k}: evnet has no availability zones; a subnet spans every host, and instances are placed by RunInstances"
            )));
        }
    }
    let vpc_id = ctx.p.id("VpcId", Kind::Vpc)?;
    let cidr = ctx.p.req("CidrBlock")?.to_string();
    let tags = ctx.p.tag_specs("subnet")?;
    check_user_tags(&tags)?;
    let req = CreateSubnet { vpc_id, cidr_block: cidr, name: name_from_tags(&tags), tags, client_token: None, dhcp_options: None };
    let (_, axum::Json(s)) = network::create_subnet(state(ctx), ctx.caller.clone(), Body(req)).await?;
    Ok(vec![branch("subnet", render::subnet(&s))])
}

fn subnet_filter(s: &Subnet, name: &str) -> Vec<String> {
    match name {
        "subnet-id" => vec![s.id.clone()],
        "vpc-id" => vec![s.vpc_id.clone()],
        "cidr" | "cidr-block" | "cidrBlock" => vec![s.cidr_block.to_string()],
        "state" => vec!["available".into()],
        "owner-id" => vec![s.tenant.clone()],
        "available-ip-address-count" => vec![s.available_ip_count.to_string()],
        "default-for-az" | "map-public-ip-on-launch" => vec!["false".into()],
        _ => tag_filter(&s.tags, name),
    }
}

pub async fn describe_subnets(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let ids = ctx.p.ids("SubnetId", Kind::Subnet)?;
    let filters = ctx.p.filters()?;
    let paging = ctx.p.paging()?;
    let snap = ctx.st.cache.read();
    let all = snap
        .subnets
        .values()
        .filter(|e| e.value.tenant == ctx.tenant)
        .map(|e| (e.value.id.clone(), network::subnet_view(&snap, &e.value)));
    let known = ["subnet-id", "vpc-id", "cidr", "cidr-block", "cidrBlock", "state", "owner-id", "available-ip-address-count", "default-for-az", "map-public-ip-on-launch"];
    let (items, next) = select(all, Kind::Subnet, &ids, &filters, &paging, &known, &|s, n| subnet_filter(s, n))?;
    let mut out = vec![set("subnetSet", items.iter().map(render::subnet))];
    out.extend(next.map(|t| leaf("nextToken", t)));
    Ok(out)
}

pub async fn delete_subnet(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let id = ctx.p.id("SubnetId", Kind::Subnet)?;
    network::delete_subnet(state(ctx), ctx.caller.clone(), Path(id)).await?;
    Ok(ok_return())
}

pub async fn modify_subnet_attribute(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let id = ctx.p.id("SubnetId", Kind::Subnet)?;
    {
        let snap = ctx.st.cache.read();
        if !snap.subnets.get(&id).is_some_and(|s| s.value.tenant == ctx.tenant) {
            return Err(Ec2Error::not_found(Kind::Subnet, &id));
        }
    }
    let mut any = false;
    any |= off_only(ctx, "MapPublicIpOnLaunch", "evnet has no public addresses yet")?;
    any |= off_only(ctx, "AssignIpv6AddressOnCreation", "evnet's subnets are IPv4 only")?;
    any |= off_only(ctx, "EnableDns64", "evnet's subnets have no DNS")?;
    any |= off_only(ctx, "MapCustomerOwnedIpOnLaunch", "evnet has no customer-owned address pools")?;
    for k in ["CustomerOwnedIpv4Pool", "PrivateDnsHostnameTypeOnLaunch", "EnableLniAtDeviceIndex"] {
        if ctx.p.get(k).is_some() {
            return Err(Ec2Error::unsupported(format!("{k} is not an attribute evnet's subnets have")));
        }
    }
    if !any {
        return Err(Ec2Error::missing("MapPublicIpOnLaunch or another attribute"));
    }
    Ok(ok_return())
}
