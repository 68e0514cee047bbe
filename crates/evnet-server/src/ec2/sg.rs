//! Security groups: Create/Describe/Delete and Authorize/Revoke for ingress
//! and egress, with rules that name address ranges or other groups.

use axum::extract::{Path, State};
use evnet_model::*;

use super::error::{Ec2Error, Ec2Result};
use super::params::{select, tag_filter, Params};
use super::render;
use super::tags::check_user_tags;
use super::xml::{leaf, set, Node};
use super::Ctx;
use crate::api::network;
use crate::extract::Body;

fn protocol(v: &str) -> Ec2Result<Protocol> {
    Ok(match v.to_ascii_lowercase().as_str() {
        "-1" | "all" => Protocol::All,
        "tcp" | "6" => Protocol::Tcp,
        "udp" | "17" => Protocol::Udp,
        "icmp" | "1" => Protocol::Icmp,
        other => {
            return Err(Ec2Error::invalid_value(format!(
                "Invalid value '{other}' for IP protocol: evnet's groups match tcp, udp, icmp or -1 (all)"
            )))
        }
    })
}

/// One permission's protocol and ports, as evnet stores them.
fn ports(proto: Protocol, from: Option<i64>, to: Option<i64>) -> Ec2Result<(Option<u16>, Option<u16>)> {
    match proto {
        Protocol::Tcp | Protocol::Udp => {
            let (Some(f), Some(t)) = (from, to) else {
                return Err(Ec2Error::missing("FromPort and ToPort (a tcp or udp rule names its port range)"));
            };
            if !(0..=65535).contains(&f) || !(0..=65535).contains(&t) || f > t {
                return Err(Ec2Error::invalid_value(format!("Invalid port range {f}-{t}: ports are 0 to 65535 and FromPort ≤ ToPort")));
            }
            if f == 0 && t == 65535 { Ok((None, None)) } else { Ok((Some(f as u16), Some(t as u16))) }
        }
        Protocol::Icmp => match (from.unwrap_or(-1), to.unwrap_or(-1)) {
            (-1, -1) => Ok((None, None)),
            (f, t) => Err(Ec2Error::unsupported(format!(
                "ICMP type {f} code {t}: evnet's icmp rules match every type and code (use -1 and -1)"
            ))),
        },
        Protocol::All => Ok((None, None)),
    }
}

/// The group a `Groups.M` entry names, by id or by name in the same VPC.
fn source_group(ctx: &Ctx, vpc_id: &str, g: &Params) -> Ec2Result<String> {
    if let Some(id) = g.get("GroupId") {
        let snap = ctx.st.cache.read();
        return match snap.security_groups.get(id) {
            Some(e) if e.value.tenant == ctx.tenant => Ok(id.to_string()),
            _ => Err(Ec2Error::not_found(Kind::SecurityGroup, id)),
        };
    }
    if let Some(name) = g.get("GroupName") {
        let snap = ctx.st.cache.read();
        return snap
            .security_groups
            .values()
            .find(|e| e.value.tenant == ctx.tenant && e.value.vpc_id == vpc_id && e.value.name == name)
            .map(|e| e.value.id.clone())
            .ok_or_else(|| Ec2Error::bad("InvalidGroup.NotFound", format!("The security group '{name}' does not exist in VPC '{vpc_id}'")));
    }
    Err(Ec2Error::missing("Groups.N.GroupId"))
}

/// The rules a request's `IpPermissions.N` (or its top-level `IpProtocol`,
/// `FromPort`, `ToPort`, `CidrIp`, `SourceSecurityGroupName`) describe.
fn rules(ctx: &Ctx, vpc_id: &str) -> Ec2Result<Vec<SgRule>> {
    let mut out = vec![];
    let perms = ctx.p.structs("IpPermissions");
    let top = ctx.p.get("IpProtocol").is_some() || ctx.p.get("CidrIp").is_some() || ctx.p.get("SourceSecurityGroupName").is_some();
    if perms.is_empty() && !top {
        return Err(Ec2Error::missing("IpPermissions"));
    }
    for p in &perms {
        let proto = protocol(p.req("IpProtocol").map_err(|_| Ec2Error::missing("IpPermissions.N.IpProtocol"))?)?;
        let (from_port, to_port) = ports(proto, p.parse("FromPort")?, p.parse("ToPort")?)?;
        for k in ["Ipv6Ranges", "PrefixListIds"] {
            if !p.structs(k).is_empty() {
                return Err(Ec2Error::unsupported(format!("IpPermissions.N.{k}: evnet's groups match IPv4 ranges and groups")));
            }
        }
        let ranges = p.structs("IpRanges");
        let groups = p.structs("Groups");
        if ranges.is_empty() && groups.is_empty() {
            return Err(Ec2Error::missing("IpPermissions.N.IpRanges or IpPermissions.N.Groups"));
        }
        for r in ranges {
            let c = r.req("CidrIp").map_err(|_| Ec2Error::missing("IpRanges.N.CidrIp"))?;
            let cidr = ipam::parse_cidr(c).map_err(|e| Ec2Error::invalid_value(e.message))?;
            out.push(SgRule { protocol: proto, from_port, to_port, cidr: Some(cidr), source_group_id: None });
        }
        for g in groups {
            let id = source_group(ctx, vpc_id, &g)?;
            out.push(SgRule { protocol: proto, from_port, to_port, cidr: None, source_group_id: Some(id) });
        }
    }
    if top {
        let proto = protocol(ctx.p.get("IpProtocol").unwrap_or("-1"))?;
        let (from_port, to_port) = ports(proto, ctx.p.parse("FromPort")?, ctx.p.parse("ToPort")?)?;
        if let Some(c) = ctx.p.get("CidrIp") {
            let cidr = ipam::parse_cidr(c).map_err(|e| Ec2Error::invalid_value(e.message))?;
            out.push(SgRule { protocol: proto, from_port, to_port, cidr: Some(cidr), source_group_id: None });
        }
        if let Some(n) = ctx.p.get("SourceSecurityGroupName") {
            let mut g = Params::default();
            g.0.insert("GroupName".into(), n.into());
            let id = source_group(ctx, vpc_id, &g)?;
            out.push(SgRule { protocol: proto, from_port, to_port, cidr: None, source_group_id: Some(id) });
        }
    }
    Ok(out)
}

/// The group a request names by `GroupId` (or `GroupName`), as it stands.
fn group(ctx: &Ctx) -> Ec2Result<(SecurityGroup, u64)> {
    let snap = ctx.st.cache.read();
    if let Some(id) = ctx.p.get("GroupId") {
        return match snap.security_groups.get(id) {
            Some(e) if e.value.tenant == ctx.tenant => Ok(((*e.value).clone(), e.mod_revision)),
            _ => Err(Ec2Error::not_found(Kind::SecurityGroup, id)),
        };
    }
    let name = ctx.p.get("GroupName").ok_or_else(|| Ec2Error::missing("GroupId"))?;
    let found: Vec<_> = snap.security_groups.values().filter(|e| e.value.tenant == ctx.tenant && e.value.name == name).collect();
    match found.as_slice() {
        [e] => Ok(((*e.value).clone(), e.mod_revision)),
        [] => Err(Ec2Error::bad("InvalidGroup.NotFound", format!("The security group '{name}' does not exist"))),
        _ => Err(Ec2Error::bad("InvalidParameterValue", format!("several VPCs have a group named '{name}'; give GroupId"))),
    }
}

pub async fn create_security_group(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let name = ctx.p.req("GroupName")?.to_string();
    let description = ctx.p.req("GroupDescription")?.to_string();
    if name.starts_with("sg-") {
        return Err(Ec2Error::invalid_value(format!("Group names may not start with 'sg-': '{name}'")));
    }
    let vpc_id = ctx.p.get("VpcId").ok_or_else(|| Ec2Error::missing("VpcId (evnet has no default VPC)"))?.to_string();
    if Kind::of_id(&vpc_id) != Some(Kind::Vpc) {
        return Err(Ec2Error::not_found(Kind::Vpc, &vpc_id));
    }
    let tags = ctx.p.tag_specs("security-group")?;
    check_user_tags(&tags)?;
    let req = CreateSecurityGroup { vpc_id, name, description, ingress: vec![], egress: None, tags, client_token: None };
    let (_, axum::Json(g)) = network::create_sg(State(ctx.st.clone()), ctx.caller.clone(), Body(req)).await?;
    let mut out = vec![leaf("return", true), leaf("groupId", &g.id)];
    out.extend(render::tag_set(&g.tags));
    Ok(out)
}

fn rule_values(rules: &[SgRule], name: &str) -> Vec<String> {
    rules
        .iter()
        .flat_map(|r| match name {
            "cidr" | "cidr-ip" => r.cidr.map(|c| c.to_string()).into_iter().collect::<Vec<_>>(),
            "group-id" => r.source_group_id.clone().into_iter().collect(),
            "protocol" => vec![render::protocol_name(r.protocol).to_string()],
            "from-port" => r.from_port.map(|p| p.to_string()).into_iter().collect(),
            "to-port" => r.to_port.map(|p| p.to_string()).into_iter().collect(),
            _ => vec![],
        })
        .collect()
}

fn sg_filter(g: &SecurityGroup, name: &str) -> Vec<String> {
    if let Some(rest) = name.strip_prefix("egress.ip-permission.") {
        return rule_values(&g.egress, rest);
    }
    if let Some(rest) = name.strip_prefix("ip-permission.") {
        return rule_values(&g.ingress, rest);
    }
    match name {
        "group-id" => vec![g.id.clone()],
        "group-name" => vec![g.name.clone()],
        "vpc-id" => vec![g.vpc_id.clone()],
        "description" => vec![g.description.clone()],
        "owner-id" => vec![g.tenant.clone()],
        _ => tag_filter(&g.tags, name),
    }
}

const SG_FILTERS: &[&str] = &[
    "group-id", "group-name", "vpc-id", "description", "owner-id",
    "ip-permission.cidr", "ip-permission.group-id", "ip-permission.protocol", "ip-permission.from-port", "ip-permission.to-port",
    "egress.ip-permission.cidr", "egress.ip-permission.group-id", "egress.ip-permission.protocol",
    "egress.ip-permission.from-port", "egress.ip-permission.to-port",
];

pub async fn describe_security_groups(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let ids = ctx.p.ids("GroupId", Kind::SecurityGroup)?;
    let names = ctx.p.list("GroupName");
    let filters = ctx.p.filters()?;
    let paging = ctx.p.paging()?;
    let snap = ctx.st.cache.read();
    for n in &names {
        if !snap.security_groups.values().any(|e| e.value.tenant == ctx.tenant && e.value.name == *n) {
            return Err(Ec2Error::bad("InvalidGroup.NotFound", format!("The security group '{n}' does not exist")));
        }
    }
    let all = snap
        .security_groups
        .values()
        .filter(|e| e.value.tenant == ctx.tenant && (names.is_empty() || names.contains(&e.value.name)))
        .map(|e| (e.value.id.clone(), e.value.clone()));
    let (items, next) = select(all, Kind::SecurityGroup, &ids, &filters, &paging, SG_FILTERS, &|g, n| sg_filter(g, n))?;
    let mut out = vec![set("securityGroupInfo", items.iter().map(|g| render::security_group(g)))];
    out.extend(next.map(|t| leaf("nextToken", t)));
    Ok(out)
}

pub async fn delete_security_group(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    let (g, _) = group(ctx)?;
    network::delete_sg(State(ctx.st.clone()), ctx.caller.clone(), Path(g.id.clone())).await?;
    Ok(vec![leaf("return", true), leaf("groupId", g.id)])
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Ingress,
    Egress,
}

/// Adds or removes rules, retrying when the group changed meanwhile.
async fn change(ctx: &Ctx, dir: Direction, add: bool) -> Ec2Result<Vec<Node>> {
    for _ in 0..8 {
        let (g, rev) = group(ctx)?;
        let wanted = rules(ctx, &g.vpc_id)?;
        let mut list = if dir == Direction::Ingress { g.ingress.clone() } else { g.egress.clone() };
        for r in &wanted {
            let have = list.iter().position(|x| x == r);
            match (add, have) {
                (true, Some(_)) => {
                    return Err(Ec2Error::bad(
                        "InvalidPermission.Duplicate",
                        format!("the specified rule ({} {:?}) already exists in {}", render::protocol_name(r.protocol), r.cidr.map(|c| c.to_string()).or(r.source_group_id.clone()), g.id),
                    ))
                }
                (true, None) => list.push(r.clone()),
                (false, Some(i)) => {
                    list.remove(i);
                }
                (false, None) => {
                    return Err(Ec2Error::bad(
                        "InvalidPermission.NotFound",
                        format!("The specified rule does not exist in this security group ({})", g.id),
                    ))
                }
            }
        }
        let mut req = PatchSecurityGroup { revision: Some(rev), ..Default::default() };
        if dir == Direction::Ingress {
            req.ingress = Some(list);
        } else {
            req.egress = Some(list);
        }
        match network::patch_sg(State(ctx.st.clone()), ctx.caller.clone(), Path(g.id.clone()), Body(req)).await {
            Err(e) if e.code == "revision_mismatch" => continue,
            Err(e) => return Err(e.into()),
            Ok(_) => return Ok(vec![leaf("return", true)]),
        }
    }
    Err(Ec2Error::bad("IncorrectState", "the group changed too often while its rules were written; retry"))
}

pub async fn authorize_ingress(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    change(ctx, Direction::Ingress, true).await
}

pub async fn authorize_egress(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    change(ctx, Direction::Egress, true).await
}

pub async fn revoke_ingress(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    change(ctx, Direction::Ingress, false).await
}

pub async fn revoke_egress(ctx: &Ctx) -> Ec2Result<Vec<Node>> {
    change(ctx, Direction::Egress, false).await
}
