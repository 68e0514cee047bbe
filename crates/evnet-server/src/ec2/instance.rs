//! Instances: RunInstances with `NetworkInterface.N` (existing ENIs, or new
//! ones in a subnet) and `Placement`, DescribeInstances, TerminateInstances,
//! mapped onto evnet's instances (a network namespace on a host the
//! scheduler chooses by bandwidth and count).
//!
//! `ImageId`, `InstanceType` and `KeyName` describe a machine image, which
//! evnet does not run: they are accepted and not kept. `Placement.HostId`
//! names an evnet host (its id or name); the tag `evnet:placement` (`spread`
//! or `pack`) on the instance's TagSpecification chooses the scheduler's
//! strategy. Network interfaces outlive their instance (EC2's
//! `DeleteOnTermination=false`), as they do in evnet.

use axum::extract::{Path, State};
use evnet_model::*;

use super::error::{Ec2Error, Ec2Result};
use super::network::EniSpec;
use super::params::{select, tag_filter};
use super::render;
use super::tags::{check_user_tags, name_from_tags};
use super::xml::{leaf, set, Node};
use super::Ctx;
use crate::api::compute;
use crate::extract::Body;

/// Most instances one RunInstances may start.
pub const MAX_COUNT: u32 = 20;
pub const TAG_PLACEMENT: &str = "evnet:placement";

/// What each new instance's network interfaces come from.
enum Interfaces {
    /// `NetworkInterface.N` (one instance): existing ENIs or specs, in device order.
    Listed(Vec<Listed>),
    /// `SubnetId` (and `SecurityGroupId.N`, `PrivateIpAddress`): one new ENI per instance.
    PerInstance(Box<dyn Fn() -> Ec2Result<EniSpec> + Send + Sync>),
}

enum Listed {
    Existing(String),
    New(EniSpec),
}

fn host(ctx: &Ctx) -> Ec2Result<Option<String>> {
    if let Some(az) = ctx.p.get("Placement.AvailabilityZone").filter(|a| !a.is_empty()) {
        return Err(Ec2Error::unsupported(format!("Placement.AvailabilityZone ({az}): evnet has no availability zones; use Placement.HostId")));
    }
    if let Some(t) = ctx.p.get("Placement.Tenancy")
        && t != "default" {
            return Err(Ec2Error::unsupported(format!("Placement.Tenancy {t}: evnet offers 'default'")));
        }
    let Some(h) = ctx.p.get("Placement.HostId").filter(|h| !h.is_empty()) else { return Ok(None) };
    let snap = ctx.st.cache.read();
    if snap.hosts.contains_key(h) {
        return Ok(Some(h.to_string()));
    }
    snap.hosts
        .values()
        .find(|x| x.value.name == h)
        .map(|x| Some(x.value.id.clone()))
        .ok_or_else(|| Ec2Error::bad("InvalidHost.NotFound", format!("The host '{h}' does not exist (Placement.HostId takes an evnet host's id or name)")))
}

fn interfaces(ctx: &Ctx, count: u32) -> Ec2Result<Interfaces> {
    let listed = ctx.p.structs("NetworkInterface");
    if listed.is_empty() {
        let Some(subnet) = ctx.p.get("SubnetId").map(str::to_string) else {
            return Err(Ec2Error::missing("SubnetId or NetworkInterface.N (evnet has no default VPC)"));
        };
        if Kind::of_id(&subnet) != Some(Kind::Subnet) {
            return Err(Ec2Error::not_found(Kind::Subnet, &subnet));
        }
        if count > 1 && ctx.p.get("PrivateIpAddress").is_some() {
            return Err(Ec2Error::bad("InvalidParameterCombination", "PrivateIpAddress applies to one instance; MaxCount must be 1"));
        }
        if !ctx.p.list("SecurityGroup").is_empty() {
            return Err(Ec2Error::unsupported("SecurityGroup.N (group names): give SecurityGroupId.N"));
        }
        let p = ctx.p.clone();
        return Ok(Interfaces::PerInstance(Box::new(move || EniSpec::parse(&p, subnet.clone(), "SecurityGroupId"))));
    }
    if count > 1 {
        return Err(Ec2Error::bad("InvalidParameterCombination", "NetworkInterface.N applies to one instance; MaxCount must be 1"));
    }
    if ctx.p.get("SubnetId").is_some() || !ctx.p.list("SecurityGroupId").is_empty() {
        return Err(Ec2Error::bad(
            "InvalidParameterCombination",
            "Network interfaces and an instance-level subnet ID or security groups may not be specified on the same request",
        ));
    }
    let mut out: Vec<(u32, Listed)> = vec![];
    for n in listed {
        let index = n.parse::<u32>("DeviceIndex")?.ok_or_else(|| Ec2Error::missing("NetworkInterface.N.DeviceIndex"))?;
        if n.bool("AssociatePublicIpAddress")? == Some(true) {
            return Err(Ec2Error::unsupported("AssociatePublicIpAddress: evnet has no public addresses yet"));
        }
        if n.bool("DeleteOnTermination")? == Some(true) {
            return Err(Ec2Error::unsupported("DeleteOnTermination: evnet's network interfaces always outlive their instance"));
        }
        let item = match (n.get("NetworkInterfaceId"), n.get("SubnetId")) {
            (Some(id), None) => {
                if Kind::of_id(id) != Some(Kind::Eni) {
                    return Err(Ec2Error::not_found(Kind::Eni, id));
                }
                Listed::Existing(id.to_string())
            }
            (None, Some(subnet)) => {
                if Kind::of_id(subnet) != Some(Kind::Subnet) {
                    return Err(Ec2Error::not_found(Kind::Subnet, subnet));
                }
                Listed::New(EniSpec::parse(&n, subnet.to_string(), "SecurityGroupId")?)
            }
            _ => {
                return Err(Ec2Error::bad(
                    "InvalidParameterCombination",
                    "each NetworkInterface.N names either NetworkInterfaceId or SubnetId",
                ))
            }
        };
        out.push((index, item));
    }
    out.sort_by_key(|(i, _)| *i);
    for (want, (have, _)) in out.iter().enumerate() {
        if *have != want as u32 {
            return Err(Ec2Error::invalid_value("NetworkInterface.N.DeviceIndex values must be 0, 1, 2, … each once (device 0 is the primary)"));
        }
    }
    Ok(Interfaces::Listed(out.into_iter().map(|(_, l)| l).collect()))
}

async fn delete_enis(ctx: &Ctx, ids: &[String]) {
    for id in ids {
        if let Err(e) = compute::delete_eni(State(ctx.st.clone()), ctx.caller.clone(), Path(id.clone())).await {
            tracing::warn!(eni = %id, error = %e.message, "could not remove an ENI made for an instance that failed to start");
        }
    }
}

/// Makes one instance with its interfaces; undoes the ENIs it made when the
/// instance cannot be placed.
async fn run_one(ctx: &Ctx, listed: Vec<Listed>, req: CreateInstance) -> Ec2Result<Instance> {
    let mut made = vec![];
    let mut eni_ids = vec![];
    for l in listed {
        match l {
            Listed::Existing(id) => eni_ids.push(id),
            Listed::New(spec) => match spec.create(ctx).await {
                Ok(e) => {
                    made.push(e.id.clone());
                    eni_ids.push(e.id);
                }
                Err(e) => {
                    delete_enis(ctx, &made).await;
                    return Err(e);
                }
            },
        }
    }
    let req = CreateInstance { eni_ids, ..req };
    match compute::create_instance(State(ctx.st.clone()), ctx.caller.clone(), Body(req)).await {
        Ok((_, axum::Json(i))) => Ok(i),
        Err(e) => {
            delete_enis(ctx, &made).await;
            Err(e.into())
        }
    }
}

pub async fn run_instances(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let min = ctx.p.parse::<u32>("MinCount")?.ok_or_else(|| Ec2Error::missing("MinCount"))?;
    let max = ctx.p.parse::<u32>("MaxCount")?.ok_or_else(|| Ec2Error::missing("MaxCount"))?;
    if min == 0 || min > max {
        return Err(Ec2Error::invalid_value(format!("MinCount ({min}) must be at least 1 and at most MaxCount ({max})")));
    }
    if max > MAX_COUNT {
        return Err(Ec2Error::bad("InstanceLimitExceeded", format!("one RunInstances starts at most {MAX_COUNT} instances, not {max}")));
    }
    let host_id = host(ctx)?;
    let mut tags = ctx.p.tag_specs_any(&["instance", "network-interface"])?;
    let eni_tags = tags.remove("network-interface").unwrap_or_default();
    let mut inst_tags = tags.remove("instance").unwrap_or_default();
    let placement = match inst_tags.remove(TAG_PLACEMENT).as_deref() {
        None | Some("spread") => PlacementStrategy::Spread,
        Some("pack") => PlacementStrategy::Pack,
        Some(o) => return Err(Ec2Error::invalid_value(format!("Tag {TAG_PLACEMENT} must be spread or pack, not '{o}'"))),
    };
    check_user_tags(&inst_tags)?;
    let ifaces = interfaces(ctx, max)?;
    let token = ctx.p.get("ClientToken").map(str::to_string);
    let base = CreateInstance {
        name: name_from_tags(&inst_tags),
        host_id,
        placement,
        kind: InstanceKind::Netns,
        netns: None,
        tap_uid: None,
        tap_gid: None,
        eni_ids: vec![],
        tags: inst_tags,
        client_token: if max == 1 { token } else { None },
    };
    let mut started: Vec<Instance> = vec![];
    let mut failure = None;
    for _ in 0..max {
        let listed = match &ifaces {
            Interfaces::Listed(l) => l
                .iter()
                .map(|x| match x {
                    Listed::Existing(id) => Listed::Existing(id.clone()),
                    Listed::New(s) => Listed::New(EniSpec { tags: eni_tags.clone(), ..s.clone() }),
                })
                .collect(),
            Interfaces::PerInstance(f) => vec![Listed::New(EniSpec { tags: eni_tags.clone(), ..f()? })],
        };
        match run_one(ctx, listed, base.clone()).await {
            Ok(i) => started.push(i),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    if let Some(e) = failure
        && (started.len() as u32) < min {
            for i in &started {
                let _ = compute::delete_instance(State(ctx.st.clone()), ctx.caller.clone(), Path(i.id.clone())).await;
            }
            return Err(e);
        }
    let snap = ctx.st.cache.read();
    let first = started.first().map(|i| i.id.clone()).unwrap_or_default();
    Ok(vec![
        leaf("reservationId", render::reservation_id(&first)),
        leaf("ownerId", &ctx.tenant),
        set("groupSet", Vec::<Vec<Node>>::new()),
        set("instancesSet", started.iter().map(|i| render::instance(&snap, snap.instances.get(&i.id).map(|e| &*e.value).unwrap_or(i)))),
    ])
}

fn instance_filter(snap: &crate::cache::Snapshot, i: &Instance, name: &str) -> Vec<String> {
    let enis = snap.enis_of_instance(&i.id);
    let primary = enis.first();
    match name {
        "instance-id" => vec![i.id.clone()],
        "instance-state-name" => vec![match i.state {
            InstanceState::Pending => "pending".into(),
            InstanceState::Running => "running".into(),
        }],
        "instance-state-code" => vec![match i.state {
            InstanceState::Pending => "0".into(),
            InstanceState::Running => "16".into(),
        }],
        "owner-id" => vec![i.tenant.clone()],
        "reservation-id" => vec![render::reservation_id(&i.id)],
        "host-id" | "placement.host-id" => vec![i.host_id.clone()],
        "subnet-id" => primary.map(|e| e.subnet_id.clone()).into_iter().collect(),
        "vpc-id" => primary.map(|e| e.vpc_id.clone()).into_iter().collect(),
        "private-ip-address" => primary.map(|e| e.private_ip.to_string()).into_iter().collect(),
        "network-interface.network-interface-id" => enis.iter().map(|e| e.id.clone()).collect(),
        "network-interface.subnet-id" => enis.iter().map(|e| e.subnet_id.clone()).collect(),
        "network-interface.vpc-id" => enis.iter().map(|e| e.vpc_id.clone()).collect(),
        "network-interface.addresses.private-ip-address" => enis.iter().flat_map(|e| e.all_ips().map(|x| x.to_string())).collect(),
        "network-interface.group-id" | "instance.group-id" => enis.iter().flat_map(|e| e.security_group_ids.clone()).collect(),
        _ => tag_filter(&i.tags, name),
    }
}

const INSTANCE_FILTERS: &[&str] = &[
    "instance-id", "instance-state-name", "instance-state-code", "owner-id", "reservation-id", "host-id", "placement.host-id",
    "subnet-id", "vpc-id", "private-ip-address", "network-interface.network-interface-id", "network-interface.subnet-id",
    "network-interface.vpc-id", "network-interface.addresses.private-ip-address", "network-interface.group-id", "instance.group-id",
];

pub async fn describe_instances(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let ids = ctx.p.ids("InstanceId", Kind::Instance)?;
    let filters = ctx.p.filters()?;
    let paging = ctx.p.paging()?;
    let snap = ctx.st.cache.read();
    let all = snap.instances.values().filter(|e| e.value.tenant == ctx.tenant).map(|e| (e.value.id.clone(), e.value.clone()));
    let (items, next) = select(all, Kind::Instance, &ids, &filters, &paging, INSTANCE_FILTERS, &|i, n| instance_filter(&snap, i, n))?;
    let mut out = vec![set("reservationSet", items.iter().map(|i| render::reservation(&snap, i)))];
    out.extend(next.map(|t| leaf("nextToken", t)));
    Ok(out)
}

pub async fn terminate_instances(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let ids = ctx.p.ids("InstanceId", Kind::Instance)?;
    if ids.is_empty() {
        return Err(Ec2Error::missing("InstanceId.1"));
    }
    let mut before = vec![];
    {
        let snap = ctx.st.cache.read();
        for id in &ids {
            match snap.instances.get(id) {
                Some(e) if e.value.tenant == ctx.tenant => before.push(e.value.state),
                _ => return Err(Ec2Error::not_found(Kind::Instance, id)),
            }
        }
    }
    for id in &ids {
        compute::delete_instance(State(ctx.st.clone()), ctx.caller.clone(), Path(id.clone())).await?;
    }
    Ok(vec![set(
        "instancesSet",
        ids.iter().zip(before).map(|(id, s)| {
            vec![leaf("instanceId", id), render::state_of("currentState", None), render::state_of("previousState", Some(s))]
        }),
    )])
}
