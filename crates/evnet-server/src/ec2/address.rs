//! Elastic IP addresses: Allocate, Associate, Disassociate, Release and
//! Describe, through the REST API's elastic-IP operations.
//!
//! evnet keeps one association per address and gives it no id of its own;
//! EC2's association id is `eipassoc-` and the allocation id's hex digits.
//! An external network is EC2's public IPv4 pool (`PublicIpv4Pool`).

use std::net::Ipv4Addr;

use axum::extract::{Path, State};
use evnet_model::*;

use super::Ctx;
use super::error::{Ec2Error, Ec2Result};
use super::params::{Paging, select, tag_filter};
use super::render::{hex_of, tag_set};
use super::tags::{check_user_tags, name_from_tags};
use super::xml::{Node, leaf, set};
use crate::api::external;
use crate::cache::Snapshot;
use crate::extract::Body;

pub fn association_id(eip_id: &str) -> String {
    format!("eipassoc-{}", hex_of(eip_id))
}

/// Parameters of EC2 addresses evnet has no counterpart for.
const REFUSED: &[(&str, &str)] = &[
    ("Address", "evnet allocates the next free address of the pool"),
    ("NetworkBorderGroup", "this endpoint has one border group, its region"),
    ("CustomerOwnedIpv4Pool", "evnet has no customer-owned pools"),
    ("IpamPoolId", "evnet has no IPAM pools"),
];

pub async fn allocate(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    if let Some(d) = ctx.p.get("Domain")
        && d != "vpc"
    {
        return Err(Ec2Error::unsupported(format!("Domain {d}: evnet's addresses are for VPCs (vpc)")));
    }
    for (p, why) in REFUSED {
        if ctx.p.get(p).is_some() {
            return Err(Ec2Error::unsupported(format!("{p}: {why}")));
        }
    }
    let pool = match ctx.p.get("PublicIpv4Pool") {
        None | Some("amazon") => None,
        Some(p) if Kind::of_id(p) == Some(Kind::ExternalNetwork) => Some(p.to_string()),
        Some(p) => return Err(Ec2Error::invalid_value(format!("PublicIpv4Pool {p}: name an external network (extnet-…) or leave it out"))),
    };
    let tags = ctx.p.tag_specs("elastic-ip")?;
    check_user_tags(&tags)?;
    let req = AllocateElasticIp { external_network_id: pool, name: name_from_tags(&tags), tags, client_token: None };
    let (_, axum::Json(e)) = external::allocate_eip(State(ctx.st.clone()), ctx.caller.clone(), Body(req)).await.map_err(|e| {
        // EC2 names the elastic-IP quota's refusal for itself.
        if e.code == "quota_exceeded" { Ec2Error::bad("AddressLimitExceeded", e.message) } else { e.into() }
    })?;
    Ok(vec![
        leaf("publicIp", e.address),
        leaf("allocationId", &e.id),
        leaf("publicIpv4Pool", &e.external_network_id),
        leaf("networkBorderGroup", &ctx.region),
        leaf("domain", "vpc"),
    ])
}

/// The caller's elastic IP named by `AllocationId`, or else by `PublicIp`.
fn allocation(ctx: &Ctx, snap: &Snapshot) -> Ec2Result<String> {
    if ctx.p.get("AllocationId").is_some() {
        return ctx.p.id("AllocationId", Kind::ElasticIp);
    }
    let ip = ctx.p.get("PublicIp").ok_or_else(|| Ec2Error::missing("AllocationId"))?;
    let address: Ipv4Addr = ip.parse().map_err(|_| Ec2Error::invalid_value(format!("PublicIp {ip} is not an IPv4 address")))?;
    snap.elastic_ips
        .values()
        .find(|e| e.value.address == address && ctx.caller.sees(&e.value.tenant))
        .map(|e| e.value.id.clone())
        .ok_or_else(|| Ec2Error::bad("InvalidAddress.NotFound", format!("Address '{ip}' not found.")))
}

pub async fn associate(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let (id, eni_id) = {
        let snap = ctx.st.cache.read();
        let id = allocation(ctx, &snap)?;
        let eni_id = match (ctx.p.get("NetworkInterfaceId"), ctx.p.get("InstanceId")) {
            (Some(_), _) => ctx.p.id("NetworkInterfaceId", Kind::Eni)?,
            (None, Some(_)) => {
                // An instance stands for its primary interface (device 0).
                let i = ctx.p.id("InstanceId", Kind::Instance)?;
                if !snap.instances.get(&i).is_some_and(|x| ctx.caller.sees(&x.value.tenant)) {
                    return Err(Ec2Error::not_found(Kind::Instance, &i));
                }
                let eni = snap.enis_of_instance(&i).into_iter().find(|e| e.attachment.as_ref().is_some_and(|a| a.device_index == 0));
                eni.map(|e| e.id.clone())
                    .ok_or_else(|| Ec2Error::bad("InvalidInstanceID", format!("Instance {i} has no network interface at device index 0")))?
            }
            (None, None) => return Err(Ec2Error::missing("NetworkInterfaceId")),
        };
        (id, eni_id)
    };
    let req = AssociateElasticIp {
        eni_id,
        private_ip: ctx.p.parse::<Ipv4Addr>("PrivateIpAddress")?,
        allow_reassociation: ctx.p.bool("AllowReassociation")?.unwrap_or(false),
    };
    let e = external::associate_eip_op(&ctx.st, &ctx.caller, &id, &req).await.map_err(|e| {
        // Moving an address needs AllowReassociation, as in EC2.
        if e.code == "eip_associated" { Ec2Error::bad("Resource.AlreadyAssociated", e.message) } else { e.into() }
    })?;
    Ok(vec![leaf("associationId", association_id(&e.id)), leaf("return", true)])
}

pub async fn disassociate(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let id = {
        let snap = ctx.st.cache.read();
        match ctx.p.get("AssociationId") {
            Some(a) => {
                let hex = a.strip_prefix("eipassoc-").unwrap_or("");
                let id = format!("eipalloc-{hex}");
                let associated =
                    snap.elastic_ips.get(&id).is_some_and(|e| ctx.caller.sees(&e.value.tenant) && e.value.association.is_some());
                if Kind::of_id(&id) != Some(Kind::ElasticIp) || !associated {
                    return Err(Ec2Error::bad("InvalidAssociationID.NotFound", format!("The association ID '{a}' does not exist")));
                }
                id
            }
            None => allocation(ctx, &snap)?,
        }
    };
    external::disassociate_eip_op(&ctx.st, &ctx.caller, &id).await?;
    Ok(vec![leaf("return", true)])
}

pub async fn release(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    if ctx.p.get("NetworkBorderGroup").is_some_and(|g| g != ctx.region) {
        return Err(Ec2Error::unsupported("NetworkBorderGroup: this endpoint has one border group, its region"));
    }
    let id = allocation(ctx, &ctx.st.cache.read())?;
    external::release_eip(State(ctx.st.clone()), ctx.caller.clone(), Path(id)).await?;
    Ok(vec![leaf("return", true)])
}

fn address_filter(snap: &Snapshot, e: &ElasticIp, name: &str) -> Vec<String> {
    let a = e.association.as_ref();
    let eni = a.and_then(|a| a.eni_id.clone());
    match name {
        "allocation-id" => vec![e.id.clone()],
        "association-id" => a.map(|_| association_id(&e.id)).into_iter().collect(),
        "domain" => vec!["vpc".into()],
        "public-ip" => vec![e.address.to_string()],
        "private-ip-address" => a.map(|a| a.private_ip.to_string()).into_iter().collect(),
        "network-interface-id" => eni.into_iter().collect(),
        "network-interface-owner-id" => eni.map(|_| e.tenant.clone()).into_iter().collect(),
        "instance-id" => eni.and_then(|x| snap.enis.get(&x)?.value.attachment.clone()).map(|a| a.instance_id).into_iter().collect(),
        "public-ipv4-pool" => vec![e.external_network_id.clone()],
        _ => tag_filter(&e.tags, name),
    }
}

const ADDRESS_FILTERS: &[&str] = &[
    "allocation-id",
    "association-id",
    "domain",
    "public-ip",
    "private-ip-address",
    "network-interface-id",
    "network-interface-owner-id",
    "instance-id",
    "public-ipv4-pool",
];

/// An address as EC2 describes it. A NAT gateway's address shows its
/// private address and association, without an interface.
fn address(snap: &Snapshot, e: &ElasticIp, region: &str) -> Vec<Node> {
    let mut n = vec![leaf("publicIp", e.address), leaf("allocationId", &e.id), leaf("domain", "vpc")];
    if let Some(a) = &e.association {
        n.push(leaf("associationId", association_id(&e.id)));
        if let Some(eni) = &a.eni_id {
            if let Some(i) = snap.enis.get(eni).and_then(|x| x.value.attachment.clone()) {
                n.push(leaf("instanceId", i.instance_id));
            }
            n.push(leaf("networkInterfaceId", eni));
            n.push(leaf("networkInterfaceOwnerId", &e.tenant));
        }
        n.push(leaf("privateIpAddress", a.private_ip));
    }
    n.extend(tag_set(&e.tags));
    n.push(leaf("publicIpv4Pool", &e.external_network_id));
    n.push(leaf("networkBorderGroup", region));
    n
}

pub async fn describe(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let mut ids = ctx.p.ids("AllocationId", Kind::ElasticIp)?;
    let filters = ctx.p.filters()?;
    let snap = ctx.st.cache.read();
    let mine = || snap.elastic_ips.values().filter(|e| ctx.caller.sees(&e.value.tenant));
    for ip in ctx.p.list("PublicIp") {
        let found = ip.parse::<Ipv4Addr>().ok().and_then(|a| mine().find(|e| e.value.address == a));
        match found {
            Some(e) => ids.push(e.value.id.clone()),
            None => return Err(Ec2Error::bad("InvalidAddress.NotFound", format!("Address '{ip}' not found."))),
        }
    }
    let all = mine().map(|e| (e.value.id.clone(), (*e.value).clone()));
    // EC2 answers every address at once: no paging.
    let (items, _) =
        select(all, Kind::ElasticIp, &ids, &filters, &Paging::default(), ADDRESS_FILTERS, &|e, n| address_filter(&snap, e, n))?;
    Ok(vec![set("addressesSet", items.iter().map(|e| address(&snap, e, &ctx.region)))])
}
