//! Tags: CreateTags, DeleteTags and DescribeTags over every taggable
//! resource, through the REST API's own PATCH of each resource.
//!
//! A `Name` tag also names the resource (evnet's `name`). On an ENI the
//! `evnet:` tags are its bandwidth — `evnet:guaranteed-mbps`,
//! `evnet:limit-mbps`, `evnet:weight`, `evnet:burst-kbytes` — and setting
//! them has the same live effect as `PATCH /v1/enis/{id}` with a bandwidth:
//! admission on the ENI's host, then the agent reshapes without a reconnect.
//! Deleting one restores its default. Elsewhere `evnet:` and `aws:` keys are
//! reserved.

use axum::extract::{Path, State};
use evnet_model::validate::{check_name, check_tags};
use evnet_model::*;

use super::error::{Ec2Error, Ec2Result};
use super::params::{known_filter, Params};
use super::render::{self, BANDWIDTH_TAGS, TAG_BURST, TAG_GUARANTEED, TAG_LIMIT, TAG_WEIGHT};
use super::xml::{leaf, ok_return, set, Node};
use super::Ctx;
use crate::api::{compute, network};
use crate::extract::Body;

/// The evnet name a `Name` tag gives, when it is a valid name.
pub fn name_from_tags(tags: &Tags) -> Option<String> {
    tags.get("Name").filter(|n| check_name(n).is_ok()).cloned()
}

/// Refuses reserved keys and tags evnet cannot hold.
pub fn check_user_tags(tags: &Tags) -> Ec2Result<()> {
    for k in tags.keys() {
        if k.starts_with("aws:") || k.starts_with("evnet:") {
            return Err(Ec2Error::invalid_value(format!(
                "Tag key '{k}' is reserved: aws: keys belong to AWS, evnet: keys are an ENI's bandwidth ({})",
                BANDWIDTH_TAGS.join(", ")
            )));
        }
    }
    check_tags(tags).map_err(|e| Ec2Error::invalid_value(e.message))
}

/// Splits an ENI's requested tags into plain tags and its bandwidth.
pub fn bandwidth_from_tags(tags: &mut Tags, base: BandwidthSpec) -> Ec2Result<Option<BandwidthSpec>> {
    let mut b = base;
    let mut any = false;
    for key in BANDWIDTH_TAGS {
        let Some(v) = tags.remove(key) else { continue };
        any = true;
        let bad = || Ec2Error::invalid_value(format!("Tag {key} must be a whole number, not '{v}'"));
        match key {
            TAG_GUARANTEED => b.guaranteed_mbps = v.trim().parse().map_err(|_| bad())?,
            TAG_LIMIT => b.limit_mbps = Some(v.trim().parse().map_err(|_| bad())?),
            TAG_WEIGHT => b.weight = v.trim().parse().map_err(|_| bad())?,
            TAG_BURST => b.burst_kbytes = v.trim().parse().map_err(|_| bad())?,
            _ => {}
        }
    }
    if any {
        b.validate().map_err(|e| Ec2Error::invalid_value(format!("{} (from the evnet: tags)", e.message)))?;
        Ok(Some(b))
    } else {
        Ok(None)
    }
}

/// EC2's resource type of an id.
pub fn resource_type(kind: Kind) -> Option<&'static str> {
    Some(match kind {
        Kind::Vpc => "vpc",
        Kind::Subnet => "subnet",
        Kind::Eni => "network-interface",
        Kind::SecurityGroup => "security-group",
        Kind::RouteTable => "route-table",
        Kind::Instance => "instance",
        Kind::Peering => "vpc-peering-connection",
        Kind::ElasticIp => "elastic-ip",
        Kind::InternetGateway => "internet-gateway",
        Kind::NatGateway => "natgateway",
        _ => return None,
    })
}

/// A resource's tags as it stands, with its revision (and an ENI's bandwidth).
fn current(ctx: &Ctx, id: &str) -> Ec2Result<(Kind, Tags, u64, Option<BandwidthSpec>)> {
    let kind = Kind::of_id(id).filter(|k| resource_type(*k).is_some()).ok_or_else(|| {
        Ec2Error::invalid_value(format!("Invalid id: \"{id}\" (expecting a vpc-, subnet-, eni-, sg-, rtb-, pcx-, eipalloc-, igw-, nat- or i- id)"))
    })?;
    let snap = ctx.st.cache.read();
    macro_rules! look {
        ($map:expr) => {
            match $map.get(id) {
                Some(e) if e.value.tenant == ctx.tenant => (e.value.tags.clone(), e.mod_revision),
                _ => return Err(Ec2Error::not_found(kind, id)),
            }
        };
    }
    let (tags, rev, bw) = match kind {
        Kind::Vpc => { let (t, r) = look!(snap.vpcs); (t, r, None) }
        Kind::Subnet => { let (t, r) = look!(snap.subnets); (t, r, None) }
        Kind::SecurityGroup => { let (t, r) = look!(snap.security_groups); (t, r, None) }
        Kind::RouteTable => { let (t, r) = look!(snap.route_tables); (t, r, None) }
        Kind::Instance => { let (t, r) = look!(snap.instances); (t, r, None) }
        Kind::Peering => { let (t, r) = look!(snap.peerings); (t, r, None) }
        Kind::ElasticIp => { let (t, r) = look!(snap.elastic_ips); (t, r, None) }
        Kind::InternetGateway => { let (t, r) = look!(snap.internet_gateways); (t, r, None) }
        Kind::NatGateway => { let (t, r) = look!(snap.nat_gateways); (t, r, None) }
        Kind::Eni => {
            let (t, r) = look!(snap.enis);
            (t, r, snap.enis.get(id).map(|e| e.value.bandwidth))
        }
        _ => unreachable!("filtered above"),
    };
    Ok((kind, tags, rev, bw))
}

/// Writes a resource's tags (and an ENI's bandwidth) at `revision`.
async fn write(ctx: &Ctx, kind: Kind, id: &str, tags: Tags, revision: u64, bandwidth: Option<BandwidthSpec>) -> Result<(), crate::error::ApiError> {
    let st = || State(ctx.st.clone());
    let c = || ctx.caller.clone();
    let path = || Path(id.to_string());
    let name = name_from_tags(&tags);
    let nt = PatchNameTags { name: name.clone(), tags: Some(tags.clone()), revision: Some(revision) };
    match kind {
        Kind::Vpc => network::patch_vpc(st(), c(), path(), Body(nt)).await.map(|_| ()),
        Kind::Subnet => network::patch_subnet(st(), c(), path(), Body(nt)).await.map(|_| ()),
        Kind::Instance => compute::patch_instance(st(), c(), path(), Body(nt)).await.map(|_| ()),
        Kind::ElasticIp => crate::api::external::patch_eip(st(), c(), path(), Body(nt)).await.map(|_| ()),
        Kind::InternetGateway => crate::api::external::patch_igw(st(), c(), path(), Body(nt)).await.map(|_| ()),
        Kind::NatGateway => crate::api::external::patch_natgw(st(), c(), path(), Body(nt)).await.map(|_| ()),
        Kind::SecurityGroup => {
            // A group's name is its GroupName, which EC2 does not change through tags.
            let req = PatchSecurityGroup { tags: Some(tags), revision: Some(revision), ..Default::default() };
            network::patch_sg(st(), c(), path(), Body(req)).await.map(|_| ())
        }
        Kind::RouteTable => {
            let req = PatchRouteTable { name, tags: Some(tags), revision: Some(revision), ..Default::default() };
            network::patch_rtb(st(), c(), path(), Body(req)).await.map(|_| ())
        }
        Kind::Eni => {
            let req = PatchEni { name, tags: Some(tags), bandwidth, revision: Some(revision), ..Default::default() };
            compute::patch_eni(st(), c(), path(), Body(req)).await.map(|_| ())
        }
        _ => Err(crate::error::ApiError::from(ModelError::invalid(
            "not_taggable",
            format!("the tags of {id} are set when it is created (TagSpecification)"),
        ))),
    }
}

/// Applies `change` to a resource's tags, retrying when it changed meanwhile.
async fn update<F>(ctx: &Ctx, id: &str, change: F) -> Ec2Result<()>
where
    F: Fn(Kind, &mut Tags, Option<BandwidthSpec>) -> Ec2Result<Option<BandwidthSpec>>,
{
    for _ in 0..8 {
        let (kind, mut tags, rev, bw) = current(ctx, id)?;
        if kind == Kind::Peering {
            return Err(Ec2Error::unsupported(format!("the tags of a VPC peering connection ({id}) are set when it is created")));
        }
        let bandwidth = change(kind, &mut tags, bw)?;
        match write(ctx, kind, id, tags, rev, bandwidth).await {
            Err(e) if e.code == "revision_mismatch" => continue,
            r => return r.map_err(Ec2Error::from),
        }
    }
    Err(Ec2Error::bad("IncorrectState", format!("{id} changed too often while its tags were written; retry")))
}

fn tag_list(p: &Params) -> Vec<(String, Option<String>)> {
    p.structs("Tag").into_iter().filter_map(|t| t.get("Key").map(|k| (k.to_string(), t.get("Value").map(str::to_string)))).collect()
}

pub async fn create_tags(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let ids = ctx.p.list("ResourceId");
    if ids.is_empty() {
        return Err(Ec2Error::missing("ResourceId.1"));
    }
    let tags = tag_list(&ctx.p);
    if tags.is_empty() {
        return Err(Ec2Error::missing("Tag.1.Key"));
    }
    for id in &ids {
        current(ctx, id)?;
    }
    for id in &ids {
        update(ctx, id, |kind, have, bw| {
            let mut add: Tags = tags.iter().map(|(k, v)| (k.clone(), v.clone().unwrap_or_default())).collect();
            let bandwidth = match (kind, bw) {
                (Kind::Eni, Some(base)) => bandwidth_from_tags(&mut add, base)?,
                _ => None,
            };
            check_user_tags(&add)?;
            have.extend(add);
            check_tags(have).map_err(|e| Ec2Error::invalid_value(e.message))?;
            Ok(bandwidth)
        })
        .await?;
    }
    Ok(ok_return())
}

pub async fn delete_tags(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let ids = ctx.p.list("ResourceId");
    if ids.is_empty() {
        return Err(Ec2Error::missing("ResourceId.1"));
    }
    let tags = tag_list(&ctx.p);
    for id in &ids {
        current(ctx, id)?;
    }
    for id in &ids {
        update(ctx, id, |kind, have, bw| {
            let mut bandwidth = None;
            if tags.is_empty() {
                have.clear();
            }
            for (k, v) in &tags {
                if kind == Kind::Eni && BANDWIDTH_TAGS.contains(&k.as_str()) {
                    let mut b = bandwidth.or(bw).unwrap_or_default();
                    let d = BandwidthSpec::default();
                    match k.as_str() {
                        TAG_GUARANTEED => b.guaranteed_mbps = d.guaranteed_mbps,
                        TAG_LIMIT => b.limit_mbps = d.limit_mbps,
                        TAG_WEIGHT => b.weight = d.weight,
                        _ => b.burst_kbytes = d.burst_kbytes,
                    }
                    bandwidth = Some(b);
                    continue;
                }
                if v.as_ref().is_none_or(|v| have.get(k) == Some(v)) {
                    have.remove(k);
                }
            }
            Ok(bandwidth)
        })
        .await?;
    }
    Ok(ok_return())
}

pub async fn describe_tags(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let filters = ctx.p.filters()?;
    let known = ["key", "value", "resource-id", "resource-type"];
    for f in &filters {
        if !known.contains(&f.name.as_str()) && !known_filter(&[], &f.name) {
            return Err(Ec2Error::invalid_value(format!("The filter '{}' is invalid", f.name)));
        }
    }
    let paging = ctx.p.paging()?;
    let snap = ctx.st.cache.read();
    let mut rows: Vec<(String, &'static str, String, String)> = vec![];
    macro_rules! rows {
        ($map:expr, $kind:expr, $tags:expr) => {
            for e in $map.values().filter(|e| e.value.tenant == ctx.tenant) {
                let rt = resource_type($kind).unwrap_or("");
                #[allow(clippy::redundant_closure_call)]
                for (k, v) in ($tags)(&*e.value) {
                    rows.push((e.value.id.clone(), rt, k, v));
                }
            }
        };
    }
    rows!(snap.vpcs, Kind::Vpc, |v: &Vpc| v.tags.clone());
    rows!(snap.subnets, Kind::Subnet, |v: &Subnet| v.tags.clone());
    rows!(snap.enis, Kind::Eni, render::eni_tags);
    rows!(snap.security_groups, Kind::SecurityGroup, |v: &SecurityGroup| v.tags.clone());
    rows!(snap.route_tables, Kind::RouteTable, |v: &RouteTable| v.tags.clone());
    rows!(snap.instances, Kind::Instance, |v: &Instance| v.tags.clone());
    rows!(snap.peerings, Kind::Peering, |v: &Peering| v.tags.clone());
    rows!(snap.elastic_ips, Kind::ElasticIp, |v: &ElasticIp| v.tags.clone());
    rows!(snap.internet_gateways, Kind::InternetGateway, |v: &InternetGateway| v.tags.clone());
    rows!(snap.nat_gateways, Kind::NatGateway, |v: &NatGateway| v.tags.clone());
    rows.sort();
    rows.retain(|(id, rt, k, v)| {
        filters.iter().all(|f| {
            let have = match f.name.as_str() {
                "key" | "tag-key" => k.clone(),
                "value" | "tag-value" => v.clone(),
                "resource-id" => id.clone(),
                "resource-type" => rt.to_string(),
                n => match n.strip_prefix("tag:") {
                    Some(tk) if tk == k => v.clone(),
                    _ => return false,
                },
            };
            f.matches(&[have])
        })
    });
    let token_of = |id: &str, k: &str| hex::encode(format!("{id}\n{k}"));
    if let Some(t) = &paging.next_token {
        let after = hex::decode(t).ok().and_then(|b| String::from_utf8(b).ok()).and_then(|s| s.split_once('\n').map(|(a, b)| (a.to_string(), b.to_string())));
        let Some((aid, ak)) = after else {
            return Err(Ec2Error::invalid_value(format!("The token '{t}' is invalid")));
        };
        rows.retain(|(id, _, k, _)| (id.as_str(), k.as_str()) > (aid.as_str(), ak.as_str()));
    }
    let mut next = None;
    if let Some(m) = paging.max
        && rows.len() > m {
            rows.truncate(m);
            next = rows.last().map(|(id, _, k, _)| token_of(id, k));
        }
    let mut out = vec![set(
        "tagSet",
        rows.into_iter().map(|(id, rt, k, v)| vec![leaf("resourceId", id), leaf("resourceType", rt), leaf("key", k), leaf("value", v)]),
    )];
    out.extend(next.map(|t| leaf("nextToken", t)));
    Ok(out)
}
