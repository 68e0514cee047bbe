//! Network interfaces: Create/Describe/Delete, Attach/Detach,
//! ModifyNetworkInterfaceAttribute, Assign/UnassignPrivateIpAddresses.

use std::net::Ipv4Addr;

use axum::extract::{Path, State};
use evnet_model::validate::check_name;
use evnet_model::*;

use super::error::{Ec2Error, Ec2Result};
use super::params::{select, tag_filter};
use super::render;
use super::tags::{bandwidth_from_tags, check_user_tags, name_from_tags};
use super::xml::{branch, leaf, ok_return, set, Node};
use super::Ctx;
use crate::api::compute;
use crate::extract::Body;

fn ip(v: &str, param: &str) -> Ec2Result<Ipv4Addr> {
    v.parse().map_err(|_| Ec2Error::invalid_value(format!("Value ({v}) for parameter {param} is not an IPv4 address")))
}

fn description_name(d: &str) -> Ec2Result<String> {
    check_name(d).map_err(|e| Ec2Error::invalid_value(format!("Description: {}", e.message)))?;
    Ok(d.to_string())
}

/// What creates an ENI, from CreateNetworkInterface's parameters or from a
/// `NetworkInterface.N` of RunInstances.
#[derive(Debug, Clone)]
pub struct EniSpec {
    pub subnet_id: String,
    pub description: Option<String>,
    pub private_ip: Option<Ipv4Addr>,
    pub secondary_ips: Vec<Ipv4Addr>,
    pub secondary_count: u32,
    pub groups: Vec<String>,
    pub tags: Tags,
    pub client_token: Option<String>,
}

impl EniSpec {
    /// Reads the parameters an ENI create shares with RunInstances'
    /// `NetworkInterface.N` (`groups_param` names the list of group ids).
    pub fn parse(p: &super::params::Params, subnet_id: String, groups_param: &str) -> Ec2Result<Self> {
        let mut private_ip = p.get("PrivateIpAddress").map(|v| ip(v, "PrivateIpAddress")).transpose()?;
        let mut secondary_ips = vec![];
        for s in p.structs("PrivateIpAddresses") {
            let Some(a) = s.get("PrivateIpAddress") else { continue };
            let a = ip(a, "PrivateIpAddresses.N.PrivateIpAddress")?;
            if s.bool("Primary")? == Some(true) {
                if private_ip.is_some_and(|x| x != a) {
                    return Err(Ec2Error::bad("InvalidParameterCombination", "PrivateIpAddress and a primary PrivateIpAddresses.N name different addresses"));
                }
                private_ip = Some(a);
            } else {
                secondary_ips.push(a);
            }
        }
        if let Some(t) = p.get("InterfaceType")
            && t != "interface" {
                return Err(Ec2Error::unsupported(format!("InterfaceType '{t}': evnet's network interfaces are of type 'interface'")));
            }
        for k in ["Ipv6AddressCount", "Ipv6Addresses.1.Ipv6Address", "Ipv4PrefixCount", "Ipv6PrefixCount"] {
            if p.get(k).is_some() {
                return Err(Ec2Error::unsupported(format!("{k}: evnet's network interfaces take IPv4 addresses only")));
            }
        }
        Ok(Self {
            subnet_id,
            description: p.get("Description").filter(|d| !d.is_empty()).map(description_name).transpose()?,
            private_ip,
            secondary_ips,
            secondary_count: p.parse::<u32>("SecondaryPrivateIpAddressCount")?.unwrap_or(0),
            groups: p.list(groups_param),
            tags: Tags::new(),
            client_token: None,
        })
    }

    pub async fn create(mut self, ctx: &Ctx) -> Ec2Result<Eni> {
        let bandwidth = bandwidth_from_tags(&mut self.tags, BandwidthSpec::default())?;
        check_user_tags(&self.tags)?;
        let name = self.description.clone().or_else(|| name_from_tags(&self.tags));
        let req = CreateEni {
            subnet_id: self.subnet_id,
            name,
            private_ip: self.private_ip,
            secondary_ips: self.secondary_ips,
            secondary_ip_count: self.secondary_count,
            security_group_ids: self.groups,
            source_dest_check: None,
            bandwidth,
            tags: self.tags,
            client_token: self.client_token,
        };
        let (_, axum::Json(e)) = compute::create_eni(State(ctx.st.clone()), ctx.caller.clone(), Body(req)).await?;
        Ok(e)
    }
}

pub async fn create_network_interface(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let subnet = ctx.p.id("SubnetId", Kind::Subnet)?;
    let mut spec = EniSpec::parse(&ctx.p, subnet, "SecurityGroupId")?;
    spec.tags = ctx.p.tag_specs("network-interface")?;
    spec.client_token = ctx.p.get("ClientToken").map(str::to_string);
    let token = spec.client_token.clone();
    let e = spec.create(ctx).await?;
    let snap = ctx.st.cache.read();
    let mut out = vec![branch("networkInterface", render::network_interface(&snap, &e))];
    out.extend(token.map(|t| leaf("clientToken", t)));
    Ok(out)
}

fn eni_filter(snap: &crate::cache::Snapshot, e: &Eni, name: &str) -> Vec<String> {
    let att = e.attachment.as_ref();
    match name {
        "network-interface-id" => vec![e.id.clone()],
        "subnet-id" => vec![e.subnet_id.clone()],
        "vpc-id" => vec![e.vpc_id.clone()],
        "status" => vec![match e.status {
            EniStatus::Available => "available".into(),
            EniStatus::InUse => "in-use".into(),
        }],
        "private-ip-address" | "addresses.private-ip-address" => e.all_ips().map(|i| i.to_string()).collect(),
        "mac-address" => vec![e.mac.clone()],
        "group-id" => e.security_group_ids.clone(),
        "group-name" => e.security_group_ids.iter().filter_map(|g| snap.security_groups.get(g).map(|x| x.value.name.clone())).collect(),
        "description" => vec![render::description(e)],
        "owner-id" => vec![e.tenant.clone()],
        "source-dest-check" => vec![e.source_dest_check.to_string()],
        "interface-type" => vec!["interface".into()],
        "requester-managed" => vec!["false".into()],
        "attachment.instance-id" => att.map(|a| a.instance_id.clone()).into_iter().collect(),
        "attachment.attachment-id" => att.map(|_| render::attachment_id(&e.id)).into_iter().collect(),
        "attachment.device-index" => att.map(|a| a.device_index.to_string()).into_iter().collect(),
        "attachment.status" => att.map(|_| "attached".to_string()).into_iter().collect(),
        "attachment.instance-owner-id" => att.map(|_| e.tenant.clone()).into_iter().collect(),
        _ => tag_filter(&render::eni_tags(e), name),
    }
}

const ENI_FILTERS: &[&str] = &[
    "network-interface-id", "subnet-id", "vpc-id", "status", "private-ip-address", "addresses.private-ip-address",
    "mac-address", "group-id", "group-name", "description", "owner-id", "source-dest-check", "interface-type",
    "requester-managed", "attachment.instance-id", "attachment.attachment-id", "attachment.device-index",
    "attachment.status", "attachment.instance-owner-id",
];

pub async fn describe_network_interfaces(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let ids = ctx.p.ids("NetworkInterfaceId", Kind::Eni)?;
    let filters = ctx.p.filters()?;
    let paging = ctx.p.paging()?;
    let snap = ctx.st.cache.read();
    let all = snap.enis.values().filter(|e| e.value.tenant == ctx.tenant).map(|e| (e.value.id.clone(), e.value.clone()));
    let (items, next) = select(all, Kind::Eni, &ids, &filters, &paging, ENI_FILTERS, &|e, n| eni_filter(&snap, e, n))?;
    let mut out = vec![set("networkInterfaceSet", items.iter().map(|e| render::network_interface(&snap, e)))];
    out.extend(next.map(|t| leaf("nextToken", t)));
    Ok(out)
}

pub async fn delete_network_interface(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let id = ctx.p.id("NetworkInterfaceId", Kind::Eni)?;
    compute::delete_eni(State(ctx.st.clone()), ctx.caller.clone(), Path(id)).await?;
    Ok(ok_return())
}

pub async fn attach_network_interface(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let id = ctx.p.id("NetworkInterfaceId", Kind::Eni)?;
    let instance_id = ctx.p.id("InstanceId", Kind::Instance)?;
    let device_index = ctx.p.parse::<u32>("DeviceIndex")?.ok_or_else(|| Ec2Error::missing("DeviceIndex"))?;
    if ctx.p.parse::<u32>("NetworkCardIndex")?.is_some_and(|n| n != 0) {
        return Err(Ec2Error::unsupported("NetworkCardIndex: evnet's instances have one network card (0)"));
    }
    {
        let snap = ctx.st.cache.read();
        if let Some(a) = snap.enis.get(&id).filter(|e| e.value.tenant == ctx.tenant).and_then(|e| e.value.attachment.clone())
            && a.instance_id != instance_id {
                return Err(Ec2Error::bad("InvalidNetworkInterface.InUse", format!("Interface: {id} in use by {}", a.instance_id)));
            }
    }
    let req = AttachEni { instance_id, device_index: Some(device_index) };
    let _ = compute::attach_eni(State(ctx.st.clone()), ctx.caller.clone(), Path(id.clone()), Body(req)).await?;
    Ok(vec![leaf("attachmentId", render::attachment_id(&id)), leaf("networkCardIndex", 0)])
}

/// The ENI an attachment id names, when it is attached.
fn attachment_eni(ctx: &Ctx, attachment_id: &str) -> Ec2Result<String> {
    let not_found = || Ec2Error::bad("InvalidAttachmentID.NotFound", format!("The attachment ID '{attachment_id}' does not exist"));
    let hex = attachment_id.strip_prefix("eni-attach-").ok_or_else(not_found)?;
    let eni = format!("eni-{hex}");
    let snap = ctx.st.cache.read();
    match snap.enis.get(&eni) {
        Some(e) if e.value.tenant == ctx.tenant && e.value.attachment.is_some() => Ok(eni),
        _ => Err(not_found()),
    }
}

pub async fn detach_network_interface(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let attachment = ctx.p.req("AttachmentId")?.to_string();
    let eni = attachment_eni(ctx, &attachment)?;
    let _ = compute::detach_eni(State(ctx.st.clone()), ctx.caller.clone(), Path(eni), Body(compute::DetachEni {})).await?;
    Ok(ok_return())
}

pub async fn modify_network_interface_attribute(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let id = ctx.p.id("NetworkInterfaceId", Kind::Eni)?;
    let mut req = PatchEni::default();
    let mut any = false;
    if let Some(d) = ctx.p.get("Description.Value") {
        req.name = Some(if d.is_empty() { id.clone() } else { description_name(d)? });
        any = true;
    }
    if let Some(s) = ctx.p.bool("SourceDestCheck.Value")? {
        req.source_dest_check = Some(s);
        any = true;
    }
    let groups = ctx.p.list("SecurityGroupId");
    if !groups.is_empty() {
        req.security_group_ids = Some(groups);
        any = true;
    }
    if ctx.p.get("Attachment.AttachmentId").is_some() {
        let a = ctx.p.req("Attachment.AttachmentId")?;
        if attachment_eni(ctx, a)? != id {
            return Err(Ec2Error::bad("InvalidAttachmentID.NotFound", format!("The attachment ID '{a}' is not {id}'s")));
        }
        if ctx.p.bool("Attachment.DeleteOnTermination")? == Some(true) {
            return Err(Ec2Error::unsupported("DeleteOnTermination: evnet's network interfaces always outlive their instance"));
        }
        any = true;
    }
    for k in ["AssociatePublicIpAddress", "EnaSrdSpecification.EnaSrdEnabled", "ConnectionTrackingSpecification.TcpEstablishedTimeout"] {
        if ctx.p.get(k).is_some() {
            return Err(Ec2Error::unsupported(format!("{k} is not an attribute evnet's network interfaces have")));
        }
    }
    if !any {
        return Err(Ec2Error::missing("Description, SourceDestCheck, SecurityGroupId.N or Attachment"));
    }
    let _ = compute::patch_eni(State(ctx.st.clone()), ctx.caller.clone(), Path(id), Body(req)).await?;
    Ok(ok_return())
}

pub async fn assign_private_ip_addresses(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let id = ctx.p.id("NetworkInterfaceId", Kind::Eni)?;
    let ips = ctx.p.list("PrivateIpAddress").iter().map(|v| ip(v, "PrivateIpAddress.N")).collect::<Ec2Result<Vec<_>>>()?;
    let count = ctx.p.parse::<u32>("SecondaryPrivateIpAddressCount")?.unwrap_or(0);
    if ips.is_empty() && count == 0 {
        return Err(Ec2Error::missing("PrivateIpAddress.N or SecondaryPrivateIpAddressCount"));
    }
    if !ips.is_empty() && count > 0 {
        return Err(Ec2Error::bad("InvalidParameterCombination", "give either PrivateIpAddress.N or SecondaryPrivateIpAddressCount, not both"));
    }
    if ctx.p.bool("AllowReassignment")? == Some(true) {
        return Err(Ec2Error::unsupported("AllowReassignment: an address belongs to one ENI; unassign it from the other first"));
    }
    let req = SecondaryIps { ips, count };
    let (_, assigned) = compute::assign_ips_op(&ctx.st, &ctx.caller, &id, &req).await?;
    Ok(vec![
        leaf("networkInterfaceId", &id),
        set("assignedPrivateIpAddressesSet", assigned.iter().map(|a| vec![leaf("privateIpAddress", a)])),
        leaf("return", true),
    ])
}

pub async fn unassign_private_ip_addresses(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let id = ctx.p.id("NetworkInterfaceId", Kind::Eni)?;
    let ips = ctx.p.list("PrivateIpAddress").iter().map(|v| ip(v, "PrivateIpAddress.N")).collect::<Ec2Result<Vec<_>>>()?;
    if ips.is_empty() {
        return Err(Ec2Error::missing("PrivateIpAddress.1"));
    }
    compute::unassign_ips_op(&ctx.st, &ctx.caller, &id, &ips).await?;
    Ok(ok_return())
}
