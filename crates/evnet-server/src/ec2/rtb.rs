//! Route tables: Create/Describe/Delete, Create/Replace/DeleteRoute and
//! Associate/Disassociate, through the REST API's PATCH of the table (which
//! keeps the local route and checks targets and associations).

use axum::extract::{Path, State};
use evnet_model::*;

use super::error::{Ec2Error, Ec2Result};
use super::params::{select, tag_filter};
use super::render::{self, hex_of};
use super::tags::{check_user_tags, name_from_tags};
use super::xml::{branch, leaf, ok_return, set, Node};
use super::Ctx;
use crate::api::network;
use crate::extract::Body;

pub async fn create_route_table(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let vpc_id = ctx.p.id("VpcId", Kind::Vpc)?;
    let tags = ctx.p.tag_specs("route-table")?;
    check_user_tags(&tags)?;
    let token = ctx.p.get("ClientToken").map(str::to_string);
    let req = CreateRouteTable { vpc_id, name: name_from_tags(&tags), routes: vec![], subnet_ids: vec![], tags, client_token: token.clone() };
    let (_, axum::Json(t)) = network::create_rtb(State(ctx.st.clone()), ctx.caller.clone(), Body(req)).await?;
    let snap = ctx.st.cache.read();
    let mut out = vec![branch("routeTable", render::route_table(&snap, &t))];
    out.extend(token.map(|t| leaf("clientToken", t)));
    Ok(out)
}

fn rtb_filter(snap: &crate::cache::Snapshot, t: &RouteTable, name: &str) -> Vec<String> {
    let targets = |k: Kind| t.routes.iter().filter(|r| Kind::of_id(&r.target) == Some(k)).map(|r| r.target.clone()).collect();
    match name {
        "route-table-id" => vec![t.id.clone()],
        "vpc-id" => vec![t.vpc_id.clone()],
        "owner-id" => vec![t.tenant.clone()],
        "association.main" => vec![t.main.to_string()],
        "association.subnet-id" => t.subnet_ids.clone(),
        "association.route-table-id" => vec![t.id.clone()],
        "association.route-table-association-id" => {
            let mut v: Vec<String> = t.subnet_ids.iter().map(|s| render::association_id(s)).collect();
            if t.main {
                v.push(render::association_id(&t.id));
            }
            v
        }
        "route.destination-cidr-block" => t.routes.iter().map(|r| r.destination_cidr.to_string()).collect(),
        "route.gateway-id" => t.routes.iter().filter(|r| r.target == "local").map(|r| r.target.clone()).collect(),
        "route.network-interface-id" => targets(Kind::Eni),
        "route.vpc-peering-connection-id" => targets(Kind::Peering),
        "route.state" => t.routes.iter().map(|r| render::route_state(snap, &t.vpc_id, r).into()).collect(),
        "route.origin" => t.routes.iter().map(|r| if r.target == "local" { "CreateRouteTable".into() } else { "CreateRoute".into() }).collect(),
        _ => tag_filter(&t.tags, name),
    }
}

const RTB_FILTERS: &[&str] = &[
    "route-table-id", "vpc-id", "owner-id", "association.main", "association.subnet-id", "association.route-table-id",
    "association.route-table-association-id", "route.destination-cidr-block", "route.gateway-id",
    "route.network-interface-id", "route.vpc-peering-connection-id", "route.state", "route.origin",
];

pub async fn describe_route_tables(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let ids = ctx.p.ids("RouteTableId", Kind::RouteTable)?;
    let filters = ctx.p.filters()?;
    let paging = ctx.p.paging()?;
    let snap = ctx.st.cache.read();
    let all = snap.route_tables.values().filter(|e| e.value.tenant == ctx.tenant).map(|e| (e.value.id.clone(), e.value.clone()));
    let (items, next) = select(all, Kind::RouteTable, &ids, &filters, &paging, RTB_FILTERS, &|t, n| rtb_filter(&snap, t, n))?;
    let mut out = vec![set("routeTableSet", items.iter().map(|t| render::route_table(&snap, t)))];
    out.extend(next.map(|t| leaf("nextToken", t)));
    Ok(out)
}

pub async fn delete_route_table(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let id = ctx.p.id("RouteTableId", Kind::RouteTable)?;
    {
        let snap = ctx.st.cache.read();
        if let Some(t) = snap.route_tables.get(&id).filter(|t| t.value.tenant == ctx.tenant)
            && let Some(s) = t.value.subnet_ids.first() {
                return Err(Ec2Error::bad(
                    "DependencyViolation",
                    format!("The routeTable '{id}' has dependencies and cannot be deleted: subnet {s} is associated with it"),
                ));
            }
    }
    network::delete_rtb(State(ctx.st.clone()), ctx.caller.clone(), Path(id)).await?;
    Ok(ok_return())
}

fn table(ctx: &Ctx, id: &str) -> Ec2Result<(RouteTable, u64)> {
    let snap = ctx.st.cache.read();
    match snap.route_tables.get(id) {
        Some(e) if e.value.tenant == ctx.tenant => Ok(((*e.value).clone(), e.mod_revision)),
        _ => Err(Ec2Error::not_found(Kind::RouteTable, id)),
    }
}

/// The target a CreateRoute/ReplaceRoute names.
fn target(ctx: &Ctx) -> Ec2Result<String> {
    for k in [
        "GatewayId", "NatGatewayId", "TransitGatewayId", "EgressOnlyInternetGatewayId", "CarrierGatewayId",
        "LocalGatewayId", "VpcEndpointId", "CoreNetworkArn", "OdbNetworkArn",
    ] {
        if let Some(v) = ctx.p.get(k) {
            if k == "GatewayId" && v == "local" {
                return Ok("local".into());
            }
            // Internet and NAT gateways the tenant made (through the REST
            // API or the CLI); other gateways evnet does not have.
            let snap = ctx.st.cache.read();
            let mine = |t: Option<&str>| t.is_some_and(|t| t == ctx.tenant);
            return match k {
                "GatewayId" if v.starts_with("igw-") => {
                    if Kind::of_id(v) == Some(Kind::InternetGateway) && mine(snap.internet_gateways.get(v).map(|g| g.value.tenant.as_str())) {
                        Ok(v.to_string())
                    } else {
                        Err(Ec2Error::not_found(Kind::InternetGateway, v))
                    }
                }
                "NatGatewayId" => {
                    if Kind::of_id(v) == Some(Kind::NatGateway) && mine(snap.nat_gateways.get(v).map(|g| g.value.tenant.as_str())) {
                        Ok(v.to_string())
                    } else {
                        Err(Ec2Error::not_found(Kind::NatGateway, v))
                    }
                }
                _ => Err(Ec2Error::unsupported(format!(
                    "{k} ({v}): routes go to local, a network interface, a peering, an internet gateway (igw-) or a NAT gateway (nat-)"
                ))),
            };
        }
    }
    if ctx.p.bool("LocalTarget")? == Some(true) {
        return Ok("local".into());
    }
    if let Some(e) = ctx.p.get("NetworkInterfaceId") {
        return Ok(e.to_string());
    }
    if let Some(p) = ctx.p.get("VpcPeeringConnectionId") {
        return Ok(p.to_string());
    }
    if let Some(i) = ctx.p.get("InstanceId") {
        let snap = ctx.st.cache.read();
        if !snap.instances.get(i).is_some_and(|x| x.value.tenant == ctx.tenant) {
            return Err(Ec2Error::not_found(Kind::Instance, i));
        }
        return snap
            .enis_of_instance(i)
            .first()
            .map(|e| e.id.clone())
            .ok_or_else(|| Ec2Error::invalid_value(format!("instance {i} has no network interface to route to")));
    }
    Err(Ec2Error::missing("NetworkInterfaceId, VpcPeeringConnectionId or InstanceId"))
}

fn destination(ctx: &Ctx) -> Ec2Result<ipnet::Ipv4Net> {
    for k in ["DestinationIpv6CidrBlock", "DestinationPrefixListId"] {
        if ctx.p.get(k).is_some() {
            return Err(Ec2Error::unsupported(format!("{k}: evnet's routes have IPv4 destinations")));
        }
    }
    let d = ctx.p.req("DestinationCidrBlock")?;
    ipam::parse_cidr(d).map_err(|e| Ec2Error::invalid_value(e.message))
}

/// Rewrites a table's routes or associations, retrying when it changed meanwhile.
async fn patch<F>(ctx: &Ctx, id: &str, change: F) -> Ec2Result<()>
where
    F: Fn(&mut RouteTable) -> Ec2Result<()>,
{
    for _ in 0..8 {
        let (mut t, rev) = table(ctx, id)?;
        let (routes, subnets) = (t.routes.clone(), t.subnet_ids.clone());
        change(&mut t)?;
        let req = PatchRouteTable {
            routes: (t.routes != routes).then(|| t.routes.clone()),
            subnet_ids: (t.subnet_ids != subnets).then(|| t.subnet_ids.clone()),
            revision: Some(rev),
            ..Default::default()
        };
        match network::patch_rtb(State(ctx.st.clone()), ctx.caller.clone(), Path(id.to_string()), Body(req)).await {
            Err(e) if e.code == "revision_mismatch" => continue,
            Err(e) if e.code == "invalid_route" || e.code == "cannot_remove_local_route" => {
                return Err(Ec2Error::invalid_value(e.message))
            }
            Err(e) => return Err(e.into()),
            Ok(_) => return Ok(()),
        }
    }
    Err(Ec2Error::bad("IncorrectState", format!("{id} changed too often; retry")))
}

pub async fn create_route(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let id = ctx.p.id("RouteTableId", Kind::RouteTable)?;
    let dest = destination(ctx)?;
    let target = target(ctx)?;
    patch(ctx, &id, |t| {
        if t.routes.iter().any(|r| r.destination_cidr == dest) {
            return Err(Ec2Error::bad("RouteAlreadyExists", format!("The route identified by {dest} already exists.")));
        }
        t.routes.push(Route::new(dest, target.clone()));
        Ok(())
    })
    .await?;
    Ok(ok_return())
}

fn no_route(id: &str, dest: ipnet::Ipv4Net) -> Ec2Error {
    Ec2Error::bad("InvalidRoute.NotFound", format!("no route with destination-cidr-block {dest} in route table {id}"))
}

pub async fn replace_route(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let id = ctx.p.id("RouteTableId", Kind::RouteTable)?;
    let dest = destination(ctx)?;
    let target = target(ctx)?;
    patch(ctx, &id, |t| {
        let r = t.routes.iter_mut().find(|r| r.destination_cidr == dest).ok_or_else(|| no_route(&id, dest))?;
        if r.target == "local" {
            return Err(Ec2Error::invalid_value(format!("the local route {dest} cannot be replaced")));
        }
        r.target = target.clone();
        Ok(())
    })
    .await?;
    Ok(ok_return())
}

pub async fn delete_route(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let id = ctx.p.id("RouteTableId", Kind::RouteTable)?;
    let dest = destination(ctx)?;
    patch(ctx, &id, |t| {
        let i = t.routes.iter().position(|r| r.destination_cidr == dest).ok_or_else(|| no_route(&id, dest))?;
        if t.routes[i].target == "local" {
            return Err(Ec2Error::invalid_value(format!("cannot remove local route {dest} in route table {id}")));
        }
        t.routes.remove(i);
        Ok(())
    })
    .await?;
    Ok(ok_return())
}

pub async fn associate_route_table(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let id = ctx.p.id("RouteTableId", Kind::RouteTable)?;
    if let Some(g) = ctx.p.get("GatewayId") {
        return Err(Ec2Error::unsupported(format!("GatewayId ({g}): evnet associates route tables with subnets only")));
    }
    let subnet = ctx.p.id("SubnetId", Kind::Subnet)?;
    {
        let snap = ctx.st.cache.read();
        if !snap.subnets.get(&subnet).is_some_and(|s| s.value.tenant == ctx.tenant) {
            return Err(Ec2Error::not_found(Kind::Subnet, &subnet));
        }
        if let Some(other) = snap.route_tables.values().find(|t| t.value.id != id && t.value.subnet_ids.contains(&subnet)) {
            return Err(Ec2Error::bad(
                "Resource.AlreadyAssociated",
                format!("the specified association for route table {} conflicts with an existing association", other.value.id),
            ));
        }
    }
    let (t, _) = table(ctx, &id)?;
    if t.main {
        return Err(Ec2Error::invalid_value(format!(
            "{id} is the main route table: every subnet without a table of its own uses it already"
        )));
    }
    patch(ctx, &id, |t| {
        if !t.subnet_ids.contains(&subnet) {
            t.subnet_ids.push(subnet.clone());
        }
        Ok(())
    })
    .await?;
    Ok(vec![leaf("associationId", render::association_id(&subnet)), branch("associationState", vec![leaf("state", "associated")])])
}

pub async fn disassociate_route_table(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let assoc = ctx.p.req("AssociationId")?.to_string();
    let not_found = || Ec2Error::bad("InvalidAssociationID.NotFound", format!("The association ID '{assoc}' does not exist"));
    let hex = assoc.strip_prefix("rtbassoc-").ok_or_else(not_found)?;
    let subnet = format!("subnet-{hex}");
    let table_id = {
        let snap = ctx.st.cache.read();
        if snap.route_tables.get(&format!("rtb-{}", hex_of(hex))).is_some_and(|t| t.value.tenant == ctx.tenant && t.value.main) {
            return Err(Ec2Error::invalid_value(format!("{assoc} is the main route table's association, which cannot be removed")));
        }
        snap.route_tables
            .values()
            .find(|t| t.value.tenant == ctx.tenant && t.value.subnet_ids.contains(&subnet))
            .map(|t| t.value.id.clone())
            .ok_or_else(not_found)?
    };
    patch(ctx, &table_id, |t| {
        t.subnet_ids.retain(|s| *s != subnet);
        Ok(())
    })
    .await?;
    Ok(ok_return())
}
