//! `evnet trace`: what the data plane does with one packet from an ENI,
//! step by step, the way `ovn-trace` explains OVN's — anti-spoofing, the
//! sender's egress groups, the route inside the VPC, the receiver's ingress
//! groups — computed from the resources alone.
//!
//! The verdicts follow the data plane's rules exactly (`evnet-plan`'s
//! nftables rendering and routing):
//! * anti-spoofing: the source address must be one of the ENI's own unless
//!   its `source_dest_check` is off;
//! * egress: an ENI without groups sends anything; otherwise a rule of one of
//!   its groups must match (protocol, destination port for TCP/UDP, the
//!   destination in the rule's CIDR or among the members of its group);
//! * route: the whole VPC block is routed (a distributed router on every
//!   host); an address no ENI holds goes nowhere (no flooding, no learning);
//!   a subnet's gateway answers on the sender's host;
//! * the sender's subnet's route table (the tc-BPF data plane): an address
//!   outside the VPC follows the table's longest route to a peering or an
//!   ENI; inside the VPC only a route to an ENI more specific than the
//!   local route does (as AWS allows for middleboxes);
//! * across a peering: an inactive or unknown peering is a blackhole; the
//!   peering leads into the peer VPC's block and no further (not
//!   transitive), and the receiver's table must route the source back
//!   across the same peering; a peer VPC of another tenant is described
//!   without naming its resources;
//! * to an appliance (a route to an ENI): the packet goes, addresses
//!   unchanged, to that ENI wherever it runs, which takes it only with its
//!   source/destination check off, through its ingress groups; what it
//!   does next is the appliance's; a deleted or detached ENI is a
//!   blackhole; an appliance's own packets follow the local route;
//! * to a NAT gateway: the same, to the gateway's host; it sends the packet
//!   to the external network with its source translated to its elastic IP
//!   (outbound only); a deleted gateway is a blackhole;
//! * to the internet gateway: out with the source's elastic IP, translated
//!   on the sender's host; without one, dropped;
//! * ingress: a rule of one of the receiver's groups must match the source
//!   (an ENI without groups receives nothing new);
//! * groups are stateful: replies of an allowed flow pass both ways.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::resources::{
    ElasticIp, Eni, Host, Instance, InternetGateway, NatGateway, Peering, PeeringStatus, Protocol, Route, RouteTable, SecurityGroup, SgRule, Subnet, Vpc,
};
use crate::rule::Rule;

/// The packet to trace: from an ENI (by id) to an address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TraceRequest {
    #[schemars(with = "crate::schema::EniId")]
    pub source_eni_id: String,
    pub destination_ip: Ipv4Addr,
    /// `tcp`, `udp` or `icmp` (`all` is not a packet's protocol).
    pub protocol: Protocol,
    /// Destination port (TCP and UDP; required for them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The source address the packet carries; the ENI's primary address
    /// when absent (give another to see anti-spoofing act).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<Ipv4Addr>,
}

/// Where a step happens in the data plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TraceStage {
    AntiSpoofing,
    Egress,
    Route,
    Ingress,
}

impl TraceStage {
    /// The stage as people read it (`anti-spoofing`, `egress`, …).
    pub fn label(self) -> &'static str {
        match self {
            TraceStage::AntiSpoofing => "anti-spoofing",
            TraceStage::Egress => "egress",
            TraceStage::Route => "route",
            TraceStage::Ingress => "ingress",
        }
    }
}

/// One step: what was checked, whether the packet went on, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TraceStep {
    pub stage: TraceStage,
    /// `true`: the packet goes on past this step.
    pub pass: bool,
    pub detail: String,
}

/// What happens to the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TraceVerdict {
    /// Reaches the destination ENI's instance.
    Delivered,
    /// Reaches an appliance (an ENI a route sends it to) with its
    /// addresses unchanged; the appliance decides what comes next.
    DeliveredToAppliance,
    /// Leaves the VPC for an external network, its source translated: by
    /// the internet gateway to the sender's elastic IP, or through a NAT
    /// gateway to the gateway's.
    ToExternalNetwork,
    /// Answered by the VPC's router (a subnet gateway address).
    AnsweredByGateway,
    /// Answered by instance metadata (169.254.169.254), the agent on the
    /// sender's host.
    AnsweredByMetadata,
    Dropped,
}

/// Instance metadata's address, answered on each ENI's host (docs/metadata.md).
pub const METADATA_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// Its port (TCP).
pub const METADATA_PORT: u16 = 80;

/// The answer: every step up to the one that decided, and the verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Trace {
    pub verdict: TraceVerdict,
    pub steps: Vec<TraceStep>,
    /// The ENI that holds the destination address, if one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_eni_id: Option<String>,
    /// The host the packet is delivered on, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_host_id: Option<String>,
}

/// What a trace reads: the source ENI's VPC, the VPCs it is actively
/// peered with, and everything in them.
pub struct TraceWorld<'a> {
    pub vpc: &'a Vpc,
    /// Subnets of the VPC and of its peers.
    pub subnets: Vec<&'a Subnet>,
    /// Every ENI of the VPC and of its peers.
    pub enis: Vec<&'a Eni>,
    /// Route tables of the VPC and of its peers.
    pub route_tables: Vec<&'a RouteTable>,
    /// Peerings the VPC takes part in, whatever their status.
    pub peerings: Vec<&'a Peering>,
    /// The VPCs at the other end of its active peerings.
    pub peer_vpcs: Vec<&'a Vpc>,
    /// Groups by id (those the ENIs use and those their rules name).
    pub groups: BTreeMap<&'a str, &'a SecurityGroup>,
    pub instances: BTreeMap<&'a str, &'a Instance>,
    pub hosts: BTreeMap<&'a str, &'a Host>,
    /// The VPC's NAT gateways, each with its elastic IP's address (if the
    /// elastic IP is still there); their hosts are among `hosts`.
    pub nat_gateways: Vec<(&'a NatGateway, Option<Ipv4Addr>)>,
    /// The VPC's internet gateway, if it has one.
    pub internet_gateways: Vec<&'a InternetGateway>,
    /// Elastic IPs associated with the VPC's ENIs.
    pub elastic_ips: Vec<&'a ElasticIp>,
}

/// Why a request cannot be traced (the caller's mistake).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceError {
    /// `all` as a packet's protocol.
    NotAPacketProtocol,
    /// TCP or UDP without a port.
    PortRequired,
}

impl std::fmt::Display for TraceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TraceError::NotAPacketProtocol => f.write_str("a packet's protocol is tcp, udp or icmp, not all"),
            TraceError::PortRequired => f.write_str("tcp and udp packets need a destination port (port)"),
        }
    }
}

impl TraceRequest {
    /// Whether the request describes a packet at all, on its own.
    pub fn check_packet(&self) -> Result<(), TraceError> {
        match self.protocol {
            Protocol::All => Err(TraceError::NotAPacketProtocol),
            Protocol::Tcp | Protocol::Udp if self.port.is_none() => Err(TraceError::PortRequired),
            _ => Ok(()),
        }
    }
}

/// Traces `req` from `source` through `world`.
pub fn trace(req: &TraceRequest, source: &Eni, world: &TraceWorld<'_>) -> Result<Trace, TraceError> {
    req.check_packet()?;
    let mut t = Trace { verdict: TraceVerdict::Dropped, steps: vec![], destination_eni_id: None, destination_host_id: None };
    let src_ip = req.source_ip.unwrap_or(source.private_ip);
    let dst = req.destination_ip;
    let what = packet_text(req, src_ip);

    // Anti-spoofing, on the sender's host.
    let own = source.all_ips().any(|ip| ip == src_ip);
    let step = match (own, source.source_dest_check) {
        (true, _) => TraceStep { stage: TraceStage::AntiSpoofing, pass: true, detail: format!("{src_ip} is {}'s own address", source.id) },
        (false, false) => TraceStep {
            stage: TraceStage::AntiSpoofing,
            pass: true,
            detail: format!("{src_ip} is not {}'s, but its source/destination check is off", source.id),
        },
        (false, true) => TraceStep {
            stage: TraceStage::AntiSpoofing,
            pass: false,
            detail: format!("{src_ip} is not one of {}'s addresses: dropped before anything else sees it", source.id),
        },
    };
    if !push(&mut t, step) {
        return Ok(t);
    }

    // Instance metadata, before groups and routes, as the data plane does:
    // only TCP to its port, and only from the ENI's own address (even with
    // its source/destination check off).
    if dst == METADATA_IP {
        let ok = own && req.protocol == Protocol::Tcp && req.port == Some(METADATA_PORT);
        let detail = if !own {
            format!("{dst} is instance metadata, which answers only {}'s own addresses: dropped", source.id)
        } else if ok {
            format!("{dst} is instance metadata: {what} is answered by the agent on the sender's host, with this instance's data only")
        } else {
            format!("{dst} is instance metadata, which takes only TCP to port {METADATA_PORT}: {what} is dropped")
        };
        t.steps.push(TraceStep { stage: TraceStage::Route, pass: ok, detail });
        if ok {
            t.verdict = TraceVerdict::AnsweredByMetadata;
            t.destination_host_id = source.attachment.as_ref().map(|a| a.host_id.clone());
        }
        return Ok(t);
    }

    // Egress groups of the sender.
    let v = group_verdict(&source.security_group_ids, world, req, dst, false);
    if !push(&mut t, group_step(TraceStage::Egress, v, &source.id, &what)) {
        return Ok(t);
    }

    // Route: to an appliance, inside the VPC, or across a peering.
    let src_host = source.attachment.as_ref().map(|a| a.host_id.as_str());
    let inside = world.vpc.cidr_block.contains(&dst);
    let table = table_of(world, world.vpc, &source.subnet_id);
    if let Some((tb, r)) = table.and_then(|tb| longest_route(tb, dst, world, inside).map(|r| (tb, r))) {
        if is_nat_route(r) {
            return Ok(to_nat_gateway(t, world, src_host, dst, tb, r));
        }
        if is_eni_route(r, world) && r.target != source.id {
            return Ok(to_appliance(t, world, req, src_host, src_ip, &what, tb, r));
        }
        if is_igw_route(r) {
            return Ok(to_internet(t, world, source, src_host, src_ip, dst, tb, r));
        }
    }
    if !inside {
        let Some(hop) = peering_hop(&mut t, world, source, dst) else { return Ok(t) };
        return Ok(deliver(t, world, req, src_host, dst, src_ip, &what, Some(hop)));
    }
    if let Some(s) = world.subnets.iter().find(|s| s.vpc_id == world.vpc.id && s.gateway_ip == dst) {
        t.steps.push(TraceStep {
            stage: TraceStage::Route,
            pass: true,
            detail: format!("{dst} is the gateway of {} ({}): the VPC's router on the sender's host answers", s.id, s.cidr_block),
        });
        t.verdict = TraceVerdict::AnsweredByGateway;
        return Ok(t);
    }
    Ok(deliver(t, world, req, src_host, dst, src_ip, &what, None))
}

/// How a packet crosses into a peer VPC: the peer and the words for it.
struct PeeringHop<'a> {
    vpc: &'a Vpc,
    peering: &'a Peering,
    /// The route that sent it there, as people read it.
    route: String,
    /// The peer belongs to another tenant: name none of its resources.
    foreign: bool,
}

/// The route table a subnet of `vpc` uses: the one it is associated with,
/// else the VPC's main table.
fn table_of<'a>(world: &TraceWorld<'a>, vpc: &Vpc, subnet_id: &str) -> Option<&'a RouteTable> {
    let of_vpc = || world.route_tables.iter().copied().filter(|t| t.vpc_id == vpc.id);
    of_vpc().find(|t| t.subnet_ids.iter().any(|s| s == subnet_id)).or_else(|| of_vpc().find(|t| t.id == vpc.main_route_table_id || t.main))
}

/// Whether the data plane installs `r` as a hop: a route to a peering
/// (active or not) — the same test the server's desired state applies.
fn is_peering_route(r: &Route, world: &TraceWorld<'_>) -> bool {
    r.target.starts_with("pcx-") || world.peerings.iter().any(|p| p.id == r.target)
}

/// Whether `r` sends to an ENI (an appliance) — the same test the
/// server's desired state applies.
fn is_eni_route(r: &Route, world: &TraceWorld<'_>) -> bool {
    r.target.starts_with("eni-") || world.enis.iter().any(|e| e.id == r.target)
}

/// Whether `r` sends to an internet gateway.
fn is_igw_route(r: &Route) -> bool {
    r.target.starts_with("igw-")
}

/// Whether `r` sends to a NAT gateway (which the data plane treats as an
/// appliance of the VPC).
fn is_nat_route(r: &Route) -> bool {
    r.target.starts_with("nat-")
}

/// The longest route of `table` the data plane installs (to a peering, an
/// ENI, an internet or a NAT gateway) that covers `ip`; `inside` the VPC's block, only a route to an
/// ENI inside the block (more specific than the local route) counts.
fn longest_route<'a>(table: &'a RouteTable, ip: Ipv4Addr, world: &TraceWorld<'_>, inside: bool) -> Option<&'a Route> {
    let vpc = world.vpcs_block(&table.vpc_id);
    table
        .routes
        .iter()
        .filter(|r| r.destination_cidr.contains(&ip))
        .filter(|r| {
            if inside {
                (is_eni_route(r, world) || is_nat_route(r)) && vpc.is_some_and(|b| b.contains(&r.destination_cidr))
            } else {
                is_peering_route(r, world) || is_eni_route(r, world) || is_igw_route(r) || is_nat_route(r)
            }
        })
        .max_by_key(|r| r.destination_cidr.prefix_len())
}

impl TraceWorld<'_> {
    /// The block of the source's VPC or of one of its peers.
    fn vpcs_block(&self, vpc_id: &str) -> Option<ipnet::Ipv4Net> {
        std::iter::once(self.vpc).chain(self.peer_vpcs.iter().copied()).find(|v| v.id == vpc_id).map(|v| v.cidr_block)
    }
}

/// The sender's table sends `dst` across an active peering into the peer's
/// block, or the packet stops (the reason pushed as a failed route step).
fn peering_hop<'a>(t: &mut Trace, world: &TraceWorld<'a>, source: &Eni, dst: Ipv4Addr) -> Option<PeeringHop<'a>> {
    let mut stop = |detail: String| t.steps.push(TraceStep { stage: TraceStage::Route, pass: false, detail });
    let outside = format!("{dst} is outside {} ({})", world.vpc.id, world.vpc.cidr_block);
    let Some(table) = table_of(world, world.vpc, &source.subnet_id) else {
        stop(format!("{outside} and {}'s subnet {} has no route table: no route", source.id, source.subnet_id));
        return None;
    };
    let Some(route) = longest_route(table, dst, world, false) else {
        let other = table.routes.iter().filter(|r| r.target != "local" && r.destination_cidr.contains(&dst)).max_by_key(|r| r.destination_cidr.prefix_len());
        stop(match other {
            Some(r) => format!(
                "{outside}; {} sends {} to {}, a target the data plane does not forward yet (it forwards routes to peerings, ENIs, internet and NAT gateways): dropped",
                table.id, r.destination_cidr, r.target
            ),
            None => format!("{outside} and {} has no route for it: dropped", table.id),
        });
        return None;
    };
    if !is_peering_route(route, world) {
        // Only a route to the sender itself is left here.
        stop(format!(
            "{outside}; {} sends {} to {} itself: an appliance's own packets follow the local route, which does not cover {dst}: dropped",
            table.id, route.destination_cidr, route.target
        ));
        return None;
    }
    let text = format!("{} → {} in {}", route.destination_cidr, route.target, table.id);
    let peering = world.peerings.iter().copied().find(|p| p.id == route.target);
    let peer_id = peering.filter(|p| p.status == PeeringStatus::Active).and_then(|p| {
        if p.vpc_a == world.vpc.id {
            Some(p.vpc_b.as_str())
        } else if p.vpc_b == world.vpc.id {
            Some(p.vpc_a.as_str())
        } else {
            None
        }
    });
    let (Some(peering), Some(peer_id)) = (peering, peer_id) else {
        let why = match peering {
            None => format!("{} is no peering of {}", route.target, world.vpc.id),
            Some(_) => format!("{} is not active (pending acceptance)", route.target),
        };
        stop(format!("{outside}; the route {text} is a blackhole: {why}: dropped"));
        return None;
    };
    let Some(peer) = world.peer_vpcs.iter().copied().find(|v| v.id == peer_id) else {
        stop(format!("{outside}; the route {text} leads to {peer_id}, which is gone: dropped"));
        return None;
    };
    if !peer.cidr_block.contains(&dst) {
        stop(format!(
            "{outside}; the route {text} leads into {} ({}), and {dst} is not in it: a peering goes no further than the peer VPC (not transitive): dropped",
            peer.id, peer.cidr_block
        ));
        return None;
    }
    Some(PeeringHop { vpc: peer, peering, route: text, foreign: peer.tenant != world.vpc.tenant })
}

/// Finds the ENI that holds `dst` (in the source's VPC, or in the peer the
/// hop leads to), checks the return route of a peering, then the
/// receiver's ingress groups.
#[allow(clippy::too_many_arguments)]
fn deliver(
    mut t: Trace,
    world: &TraceWorld<'_>,
    req: &TraceRequest,
    src_host: Option<&str>,
    dst: Ipv4Addr,
    src_ip: Ipv4Addr,
    what: &str,
    hop: Option<PeeringHop<'_>>,
) -> Trace {
    let vpc = hop.as_ref().map_or(world.vpc, |h| h.vpc);
    let foreign = hop.as_ref().is_some_and(|h| h.foreign);
    let across = hop.as_ref().map_or_else(String::new, |h| format!("across {} ({}), ", h.peering.id, h.route));
    let stop = |t: &mut Trace, detail: String| t.steps.push(TraceStep { stage: TraceStage::Route, pass: false, detail });
    let Some(dest) = world.enis.iter().find(|e| e.vpc_id == vpc.id && e.all_ips().any(|ip| ip == dst)) else {
        stop(&mut t, format!("{across}no ENI of {} holds {dst}: the VXLAN neither floods nor learns, so the packet goes nowhere", vpc.id));
        return t;
    };
    let dest_name = if foreign { format!("an ENI of {} (another tenant's)", vpc.id) } else { dest.id.clone() };
    if !foreign {
        t.destination_eni_id = Some(dest.id.clone());
    }
    let Some(att) = &dest.attachment else {
        stop(&mut t, format!("{across}{dst} is {dest_name}, which is not attached to an instance: nothing receives it"));
        return t;
    };
    if let Some(h) = &hop {
        // The receiver's table must send the source back across the same peering.
        let back = table_of(world, vpc, &dest.subnet_id).and_then(|tb| longest_route(tb, src_ip, world, false).map(|r| (tb, r)));
        let ok = back.is_some_and(|(_, r)| r.target == h.peering.id);
        if !ok {
            let now = match back {
                Some((_, r)) if foreign => format!("its table sends {src_ip} to {} instead", r.target),
                Some((tb, r)) => format!("its table {} sends {src_ip} to {} instead", tb.id, r.target),
                None => "its table has no route for it".to_string(),
            };
            stop(
                &mut t,
                format!("{across}{dst} is {dest_name}, but {} does not route {src_ip} back across {} ({now}): both sides' tables must route, dropped on receipt", vpc.id, h.peering.id),
            );
            return t;
        }
    }
    let path = path_text(world, src_host, &att.host_id, vpc.vni, foreign);
    let whose = if foreign { String::new() } else { whose_text(world, att) };
    let back = if hop.is_some() { format!("; {} routes {src_ip} back the same way", vpc.id) } else { String::new() };
    t.steps.push(TraceStep { stage: TraceStage::Route, pass: src_host.is_some(), detail: format!("{across}{dst} is {dest_name}{whose}; routed {path}{back}") });
    if src_host.is_none() {
        return t;
    }

    // Ingress groups of the receiver.
    let v = group_verdict(&dest.security_group_ids, world, req, src_ip, true);
    let step = if foreign {
        let pass = matches!(v, GroupVerdict::Allowed(_));
        let detail = if pass { "the receiver's groups (another tenant's) admit it" } else { "the receiver's groups (another tenant's) refuse it" };
        TraceStep { stage: TraceStage::Ingress, pass, detail: format!("{what}: {detail}") }
    } else {
        group_step(TraceStage::Ingress, v, &dest.id, what)
    };
    if push(&mut t, step) {
        t.verdict = TraceVerdict::Delivered;
        if !foreign {
            t.destination_host_id = Some(att.host_id.clone());
        }
    }
    t
}

/// How the packet travels from the sender's host to `to_host`.
fn path_text(world: &TraceWorld<'_>, src_host: Option<&str>, to_host: &str, vni: u32, foreign: bool) -> String {
    let host_name = |id: &str| world.hosts.get(id).map_or_else(|| id.to_string(), |h| h.name.clone());
    match src_host {
        Some(h) if h == to_host => format!("on the same host ({})", host_name(h)),
        Some(h) if foreign => format!("from {} over VXLAN {vni}", host_name(h)),
        Some(h) => {
            let ul = |id: &str| world.hosts.get(id).map_or_else(|| "?".to_string(), |h| h.underlay_ip.to_string());
            format!("from {} to {} over VXLAN {vni} ({} → {})", host_name(h), host_name(to_host), ul(h), ul(to_host))
        }
        None => format!("to {} (the sender is not attached: it sends nothing until it is)", if foreign { "its host".to_string() } else { host_name(to_host) }),
    }
}

/// ` (ethN of instance NAME)` for an attached ENI.
fn whose_text(world: &TraceWorld<'_>, att: &crate::resources::Attachment) -> String {
    let inst = world.instances.get(att.instance_id.as_str()).map_or(att.instance_id.as_str(), |i| i.name.as_str());
    format!(" (eth{} of instance {inst})", att.device_index)
}

/// A route of the sender's table sends the packet to an ENI of its VPC
/// (an appliance): it must be attached and have its source/destination
/// check off; its ingress groups decide; the appliance does the rest.
#[allow(clippy::too_many_arguments)]
fn to_appliance(mut t: Trace, world: &TraceWorld<'_>, req: &TraceRequest, src_host: Option<&str>, src_ip: Ipv4Addr, what: &str, table: &RouteTable, route: &Route) -> Trace {
    let dst = req.destination_ip;
    let text = format!("{} → {} in {}", route.destination_cidr, route.target, table.id);
    let stop = |t: &mut Trace, detail: String| t.steps.push(TraceStep { stage: TraceStage::Route, pass: false, detail });
    let Some(app) = world.enis.iter().copied().find(|e| e.id == route.target && e.vpc_id == world.vpc.id) else {
        stop(&mut t, format!("the route {text} is a blackhole: {} is no ENI of {} (deleted?): dropped", route.target, world.vpc.id));
        return t;
    };
    t.destination_eni_id = Some(app.id.clone());
    let Some(att) = &app.attachment else {
        stop(&mut t, format!("the route {text} is a blackhole: {} is not attached to an instance: dropped", app.id));
        return t;
    };
    if app.source_dest_check {
        stop(
            &mut t,
            format!("the route {text} sends {dst} to {}, whose source/destination check is on: it takes only packets addressed to it, dropped", app.id),
        );
        return t;
    }
    let path = path_text(world, src_host, &att.host_id, world.vpc.vni, false);
    t.steps.push(TraceStep {
        stage: TraceStage::Route,
        pass: src_host.is_some(),
        detail: format!("the route {text} sends {dst} to the appliance {}{}, addresses unchanged; routed {path}", app.id, whose_text(world, att)),
    });
    if src_host.is_none() {
        return t;
    }
    let v = group_verdict(&app.security_group_ids, world, req, src_ip, true);
    if push(&mut t, group_step(TraceStage::Ingress, v, &app.id, what)) {
        t.verdict = TraceVerdict::DeliveredToAppliance;
        t.destination_host_id = Some(att.host_id.clone());
        t.steps.push(TraceStep {
            stage: TraceStage::Route,
            pass: true,
            detail: format!("{} forwards it or not: what the appliance does next is its own (trace from it with --source-ip {src_ip})", app.id),
        });
    }
    t
}

/// A route of the sender's table sends the packet to a NAT gateway of its
/// VPC: an appliance on its host that takes anything (it has no security
/// groups) and sends it to the external network with its source translated
/// to the gateway's elastic IP; only replies come back through it.
fn to_nat_gateway(mut t: Trace, world: &TraceWorld<'_>, src_host: Option<&str>, dst: Ipv4Addr, table: &RouteTable, route: &Route) -> Trace {
    let text = format!("{} → {} in {}", route.destination_cidr, route.target, table.id);
    let Some((nat, eip)) = world.nat_gateways.iter().copied().find(|(n, _)| n.id == route.target && n.vpc_id == world.vpc.id) else {
        t.steps.push(TraceStep {
            stage: TraceStage::Route,
            pass: false,
            detail: format!("the route {text} is a blackhole: {} is no NAT gateway of {} (deleted?): dropped", route.target, world.vpc.id),
        });
        return t;
    };
    let Some(eip) = eip else {
        t.steps.push(TraceStep {
            stage: TraceStage::Route,
            pass: false,
            detail: format!("the route {text} is a blackhole: {}'s elastic IP is gone: dropped", nat.id),
        });
        return t;
    };
    let path = path_text(world, src_host, &nat.host_id, world.vpc.vni, false);
    t.steps.push(TraceStep {
        stage: TraceStage::Route,
        pass: src_host.is_some(),
        detail: format!("the route {text} sends {dst} to the NAT gateway {} ({}), routed {path}", nat.id, nat.private_ip),
    });
    if src_host.is_none() {
        return t;
    }
    t.verdict = TraceVerdict::ToExternalNetwork;
    t.destination_host_id = Some(nat.host_id.clone());
    t.steps.push(TraceStep {
        stage: TraceStage::Route,
        pass: true,
        detail: format!(
            "{} sends it to the external network with its source translated to {eip} (its elastic IP); outbound only: replies come back, nothing from outside starts a connection through it",
            nat.id
        ),
    });
    t
}

/// A route of the sender's table sends the packet to its VPC's internet
/// gateway: it leaves with its source translated to the elastic IP of its
/// source address, on the sender's host; without one it is dropped.
#[allow(clippy::too_many_arguments)]
fn to_internet(mut t: Trace, world: &TraceWorld<'_>, source: &Eni, src_host: Option<&str>, src_ip: Ipv4Addr, dst: Ipv4Addr, table: &RouteTable, route: &Route) -> Trace {
    let text = format!("{} → {} in {}", route.destination_cidr, route.target, table.id);
    let stop = |t: &mut Trace, detail: String| t.steps.push(TraceStep { stage: TraceStage::Route, pass: false, detail });
    if !world.internet_gateways.iter().any(|g| g.id == route.target && g.vpc_id == world.vpc.id) {
        stop(&mut t, format!("the route {text} is a blackhole: {} is not {}'s internet gateway (deleted?): dropped", route.target, world.vpc.id));
        return t;
    }
    let eip = world.elastic_ips.iter().find(|x| x.association.as_ref().is_some_and(|a| a.eni_id.as_deref() == Some(source.id.as_str()) && a.private_ip == src_ip));
    let Some(eip) = eip else {
        stop(&mut t, format!("the route {text} leads out by the internet gateway, but {src_ip} has no elastic IP (evnet eip associate): dropped on the sender's host"));
        return t;
    };
    let host = src_host.and_then(|h| world.hosts.get(h)).map_or("the sender's host".to_string(), |h| h.name.clone());
    t.steps.push(TraceStep {
        stage: TraceStage::Route,
        pass: src_host.is_some(),
        detail: format!(
            "the route {text} leads out by the internet gateway: on {host} the source {src_ip} becomes its elastic IP {} ({}), and the packet leaves for {dst} on {}",
            eip.address, eip.id, eip.external_network_id
        ),
    });
    if src_host.is_some() {
        t.verdict = TraceVerdict::ToExternalNetwork;
    }
    t
}

/// Appends `step`; whether the packet goes on.
fn push(t: &mut Trace, step: TraceStep) -> bool {
    let pass = step.pass;
    t.steps.push(step);
    pass
}

/// The egress step of sender `eni`, or the ingress step of receiver `eni`.
fn group_step(stage: TraceStage, v: GroupVerdict, eni: &str, what: &str) -> TraceStep {
    let egress = stage == TraceStage::Egress;
    let (pass, detail) = match v {
        GroupVerdict::NoGroups if egress => (true, format!("{eni} has no security groups: it may send anything")),
        GroupVerdict::NoGroups => (false, format!("{eni} has no security groups: it accepts no new traffic")),
        GroupVerdict::Allowed(why) => (true, format!("{what} allowed {} by {why}", if egress { "out" } else { "in" })),
        GroupVerdict::Denied(groups) => (
            false,
            format!(
                "no {} rule of {groups} allows {what}: dropped on the {} host",
                if egress { "egress" } else { "ingress" },
                if egress { "sender's" } else { "receiver's" }
            ),
        ),
    };
    TraceStep { stage, pass, detail }
}

enum GroupVerdict {
    NoGroups,
    Allowed(String),
    Denied(String),
}

/// Evaluates the ingress (`peer` = the source) or egress (`peer` = the
/// destination) rules of `group_ids`.
fn group_verdict(group_ids: &[String], world: &TraceWorld<'_>, req: &TraceRequest, peer: Ipv4Addr, ingress: bool) -> GroupVerdict {
    if group_ids.is_empty() {
        return GroupVerdict::NoGroups;
    }
    let mut seen = std::collections::BTreeSet::new();
    for gid in group_ids {
        if !seen.insert(gid.as_str()) {
            continue;
        }
        let Some(g) = world.groups.get(gid.as_str()) else { continue };
        let rules = if ingress { &g.ingress } else { &g.egress };
        for (i, r) in rules.iter().enumerate() {
            if rule_matches(r, world, req, peer) {
                return GroupVerdict::Allowed(format!("{} ({}) {} rule {}: {}", g.id, g.name, if ingress { "ingress" } else { "egress" }, i + 1, rule_text(r, ingress)));
            }
        }
    }
    let mut names: Vec<&str> = seen.into_iter().collect();
    names.sort_unstable();
    GroupVerdict::Denied(names.join(", "))
}

/// The data plane's match: [`Rule::matches`], the same conversion the
/// enforcers read; a rule that matches nothing converts to `None`.
fn rule_matches(r: &SgRule, world: &TraceWorld<'_>, req: &TraceRequest, peer: Ipv4Addr) -> bool {
    let Some(rule) = Rule::from_sg(r) else { return false };
    rule.matches(req.protocol, req.port, peer, |g, ip| {
        world.enis.iter().filter(|e| e.security_group_ids.iter().any(|x| x == g)).any(|e| e.all_ips().any(|a| a == ip))
    })
}

fn rule_text(r: &SgRule, ingress: bool) -> String {
    match Rule::from_sg(r) {
        Some(rule) => rule.describe(ingress),
        None => "a rule that matches nothing".to_string(),
    }
}

fn packet_text(req: &TraceRequest, src: Ipv4Addr) -> String {
    match (req.protocol, req.port) {
        (Protocol::Icmp, _) => format!("icmp {src} → {}", req.destination_ip),
        (p, Some(port)) => format!("{} {src} → {}:{port}", if p == Protocol::Tcp { "tcp" } else { "udp" }, req.destination_ip),
        (_, None) => format!("{src} → {}", req.destination_ip),
    }
}

/// One of an instance's ENIs, as routing inside the instance sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceEni {
    pub eni_id: String,
    pub device_index: u32,
    pub vpc_id: String,
    pub vpc_block: ipnet::Ipv4Net,
    /// Its primary and secondary addresses.
    pub ips: Vec<Ipv4Addr>,
}

/// The ENI a packet from an instance to `destination` leaves by, as the
/// planner sets the instance's routing up (`evnet_plan::policy`): a packet
/// whose source is one of an ENI's addresses leaves by that ENI (its
/// rule sends it to the ENI's own table); any other packet follows the
/// main table: an ENI in another VPC whose block holds the destination
/// ([`crate::desired::routed_vpc_blocks`]), else eth0. `None` when that
/// leaves nothing (no eth0).
pub fn leaving_eni(enis: &[InstanceEni], destination: Ipv4Addr, source_ip: Option<Ipv4Addr>) -> Option<&InstanceEni> {
    let mut enis: Vec<&InstanceEni> = enis.iter().collect();
    enis.sort_by_key(|e| e.device_index);
    if let Some(src) = source_ip
        && let Some(e) = enis.iter().find(|e| e.ips.contains(&src))
    {
        return Some(e);
    }
    let primary = enis.iter().find(|e| e.device_index == 0)?;
    let others = enis.iter().filter(|e| e.device_index > 0 && e.vpc_id != primary.vpc_id).map(|e| (*e, e.vpc_block));
    match crate::desired::routed_vpc_blocks(primary.vpc_block, others).into_iter().find(|(_, b)| b.contains(&destination)) {
        Some((e, _)) => Some(e),
        None => Some(primary),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{Attachment, EniStatus, HostStatus, InstanceState};
    use crate::BandwidthSpec;

    fn eni(id: &str, ip: [u8; 4], groups: &[&str], host: Option<&str>) -> Eni {
        Eni {
            id: id.into(),
            name: id.into(),
            tags: Default::default(),
            tenant: "t".into(),
            created_at: String::new(),
            revision: 1,
            subnet_id: "subnet-1".into(),
            vpc_id: "vpc-1".into(),
            mac: "02:00:00:00:00:01".into(),
            private_ip: Ipv4Addr::from(ip),
            secondary_ips: vec![],
            security_group_ids: groups.iter().map(|g| g.to_string()).collect(),
            source_dest_check: true,
            bandwidth: BandwidthSpec::default(),
            attachment: host.map(|h| Attachment { instance_id: format!("i-{id}"), host_id: h.into(), device_index: 0 }),
            status: if host.is_some() { EniStatus::InUse } else { EniStatus::Available },
        }
    }

    fn group(id: &str, ingress: Vec<SgRule>, egress: Vec<SgRule>) -> SecurityGroup {
        SecurityGroup {
            id: id.into(),
            name: id.into(),
            tags: Default::default(),
            tenant: "t".into(),
            created_at: String::new(),
            revision: 1,
            vpc_id: "vpc-1".into(),
            description: String::new(),
            ingress,
            egress,
            deleting: false,
        }
    }

    fn rule(protocol: Protocol, ports: Option<(u16, u16)>, cidr: Option<&str>, group: Option<&str>) -> SgRule {
        SgRule {
            protocol,
            from_port: ports.map(|p| p.0),
            to_port: ports.map(|p| p.1),
            cidr: cidr.map(|c| c.parse().unwrap()),
            source_group_id: group.map(str::to_string),
        }
    }

    struct Fixture {
        vpc: Vpc,
        subnet: Subnet,
        enis: Vec<Eni>,
        groups: Vec<SecurityGroup>,
        hosts: Vec<Host>,
        /// vpc-2 (10.9.0.0/16, tenant u), peered with vpc-1 by pcx-1.
        peer: Vpc,
        peer_subnet: Subnet,
        tables: Vec<RouteTable>,
        peerings: Vec<Peering>,
        nats: Vec<NatGateway>,
        igws: Vec<InternetGateway>,
        eips: Vec<ElasticIp>,
    }

    fn table(id: &str, vpc: &str, routes: &[(&str, &str)]) -> RouteTable {
        RouteTable {
            id: id.into(),
            name: id.into(),
            tags: Default::default(),
            tenant: String::new(),
            created_at: String::new(),
            revision: 1,
            vpc_id: vpc.into(),
            main: true,
            routes: routes.iter().map(|(c, t)| Route::new(c.parse().unwrap(), *t)).collect(),
            subnet_ids: vec![],
        }
    }

    impl Fixture {
        fn new() -> Fixture {
            let vpc = Vpc {
                id: "vpc-1".into(),
                name: "v".into(),
                tags: Default::default(),
                tenant: "t".into(),
                created_at: String::new(),
                revision: 1,
                cidr_block: "10.0.0.0/16".parse().unwrap(),
                vni: 7,
                main_route_table_id: "rtb-1".into(),
                default_security_group_id: "sg-default".into(),
                dhcp_options: None,
            };
            let subnet = Subnet {
                id: "subnet-1".into(),
                name: "s".into(),
                tags: Default::default(),
                tenant: "t".into(),
                created_at: String::new(),
                revision: 1,
                vpc_id: "vpc-1".into(),
                cidr_block: "10.0.1.0/24".parse().unwrap(),
                gateway_ip: Ipv4Addr::new(10, 0, 1, 1),
                available_ip_count: 0,
                deleting: false,
                dhcp_options: None,
            };
            let host = |id: &str, n: u8| Host {
                id: id.into(),
                name: id.into(),
                tags: Default::default(),
                tenant: String::new(),
                created_at: String::new(),
                revision: 1,
                underlay_ip: Ipv4Addr::new(198, 18, 0, n),
                nic_mbps: 1000,
                labels: Default::default(),
                status: HostStatus::Ready,
                last_heartbeat_ms: 0,
                applied_generation: 0,
                netns: None,
                failures: vec![],
            };
            let default = group(
                "sg-default",
                vec![rule(Protocol::All, None, None, Some("sg-default"))],
                vec![rule(Protocol::All, None, Some("0.0.0.0/0"), None)],
            );
            let web = group(
                "sg-web",
                vec![rule(Protocol::Tcp, Some((80, 80)), Some("10.0.0.0/16"), None), rule(Protocol::Icmp, None, None, Some("sg-default"))],
                vec![rule(Protocol::Tcp, Some((5432, 5432)), Some("10.0.2.0/24"), None)],
            );
            let peer = Vpc {
                id: "vpc-2".into(),
                tenant: "u".into(),
                cidr_block: "10.9.0.0/16".parse().unwrap(),
                vni: 9,
                main_route_table_id: "rtb-2".into(),
                default_security_group_id: "sg-p".into(),
                ..vpc.clone()
            };
            let peer_subnet = Subnet { id: "subnet-2".into(), vpc_id: "vpc-2".into(), cidr_block: "10.9.1.0/24".parse().unwrap(), gateway_ip: Ipv4Addr::new(10, 9, 1, 1), ..subnet.clone() };
            let mut p = eni("eni-p", [10, 9, 1, 4], &["sg-p"], Some("host-2"));
            p.vpc_id = "vpc-2".into();
            p.subnet_id = "subnet-2".into();
            let sg_p = SecurityGroup { vpc_id: "vpc-2".into(), ..group("sg-p", vec![rule(Protocol::Icmp, None, Some("10.0.0.0/16"), None)], vec![]) };
            let peering = Peering {
                id: "pcx-1".into(),
                name: String::new(),
                tags: Default::default(),
                tenant: "t".into(),
                created_at: String::new(),
                revision: 1,
                vpc_a: "vpc-1".into(),
                vpc_b: "vpc-2".into(),
                status: PeeringStatus::Active,
            };
            Fixture {
                peer,
                peer_subnet,
                tables: vec![table("rtb-1", "vpc-1", &[("10.9.0.0/16", "pcx-1")]), table("rtb-2", "vpc-2", &[("10.0.0.0/16", "pcx-1")])],
                peerings: vec![peering],
                nats: vec![],
                vpc,
                subnet,
                enis: vec![
                    eni("eni-a", [10, 0, 1, 4], &["sg-default"], Some("host-1")),
                    eni("eni-b", [10, 0, 1, 5], &["sg-default"], Some("host-2")),
                    eni("eni-web", [10, 0, 1, 6], &["sg-web"], Some("host-1")),
                    eni("eni-idle", [10, 0, 1, 7], &["sg-default"], None),
                    eni("eni-bare", [10, 0, 1, 8], &[], Some("host-2")),
                    p,
                ],
                groups: vec![default, web, sg_p],
                igws: vec![],
                eips: vec![],
                hosts: vec![host("host-1", 1), host("host-2", 2)],
            }
        }

        fn run(&self, from: &str, to: [u8; 4], protocol: Protocol, port: Option<u16>, source_ip: Option<[u8; 4]>) -> Trace {
            let instances: Vec<Instance> = self
                .enis
                .iter()
                .filter_map(|e| e.attachment.as_ref())
                .map(|a| Instance {
                    id: a.instance_id.clone(),
                    name: a.instance_id.clone(),
                    tags: Default::default(),
                    tenant: "t".into(),
                    created_at: String::new(),
                    revision: 1,
                    host_id: a.host_id.clone(),
                    state: InstanceState::Running,
                    kind: Default::default(),
                    netns: String::new(),
                    tap_uid: None,
                    tap_gid: None,
                    taps: vec![],
                })
                .collect();
            let world = TraceWorld {
                vpc: &self.vpc,
                subnets: vec![&self.subnet, &self.peer_subnet],
                enis: self.enis.iter().collect(),
                route_tables: self.tables.iter().collect(),
                peerings: self.peerings.iter().collect(),
                peer_vpcs: if self.peerings[0].status == PeeringStatus::Active { vec![&self.peer] } else { vec![] },
                groups: self.groups.iter().map(|g| (g.id.as_str(), g)).collect(),
                instances: instances.iter().map(|i| (i.id.as_str(), i)).collect(),
                hosts: self.hosts.iter().map(|h| (h.id.as_str(), h)).collect(),
                nat_gateways: self.nats.iter().map(|n| (n, Some(Ipv4Addr::new(203, 0, 113, 10)))).collect(),
                internet_gateways: self.igws.iter().collect(),
                elastic_ips: self.eips.iter().collect(),
            };
            let source = self.enis.iter().find(|e| e.id == from).unwrap();
            let req = TraceRequest {
                source_eni_id: from.into(),
                destination_ip: Ipv4Addr::from(to),
                protocol,
                port,
                source_ip: source_ip.map(Ipv4Addr::from),
            };
            trace(&req, source, &world).unwrap()
        }
    }

    fn stages(t: &Trace) -> Vec<(TraceStage, bool)> {
        t.steps.iter().map(|s| (s.stage, s.pass)).collect()
    }

    #[test]
    fn members_of_the_default_group_reach_each_other_across_hosts() {
        let f = Fixture::new();
        let t = f.run("eni-a", [10, 0, 1, 5], Protocol::Tcp, Some(22), None);
        assert_eq!(t.verdict, TraceVerdict::Delivered);
        assert_eq!(t.destination_host_id.as_deref(), Some("host-2"));
        assert!(t.steps[2].detail.contains("VXLAN 7 (198.18.0.1 → 198.18.0.2)"), "{:?}", t.steps[2]);
        assert!(t.steps[3].detail.contains("sg-default"), "{:?}", t.steps[3]);
    }

    #[test]
    fn a_spoofed_source_is_dropped_first_unless_the_check_is_off() {
        let mut f = Fixture::new();
        let t = f.run("eni-a", [10, 0, 1, 5], Protocol::Icmp, None, Some([10, 0, 1, 99]));
        assert_eq!(t.verdict, TraceVerdict::Dropped);
        assert_eq!(stages(&t), vec![(TraceStage::AntiSpoofing, false)]);
        f.enis[0].source_dest_check = false;
        // Passes anti-spoofing, but 10.0.1.99 is no member of the receiver's group.
        let t = f.run("eni-a", [10, 0, 1, 5], Protocol::Icmp, None, Some([10, 0, 1, 99]));
        assert_eq!(stages(&t), vec![(TraceStage::AntiSpoofing, true), (TraceStage::Egress, true), (TraceStage::Route, true), (TraceStage::Ingress, false)]);
    }

    #[test]
    fn ports_protocols_and_groups_decide_ingress() {
        let f = Fixture::new();
        assert_eq!(f.run("eni-a", [10, 0, 1, 6], Protocol::Tcp, Some(80), None).verdict, TraceVerdict::Delivered);
        let t = f.run("eni-a", [10, 0, 1, 6], Protocol::Tcp, Some(81), None);
        assert_eq!(t.verdict, TraceVerdict::Dropped);
        assert_eq!(t.steps.last().unwrap().stage, TraceStage::Ingress);
        assert!(t.steps.last().unwrap().detail.contains("sg-web"));
        assert_eq!(f.run("eni-a", [10, 0, 1, 6], Protocol::Udp, Some(80), None).verdict, TraceVerdict::Dropped);
        // ICMP from members of sg-default only.
        assert_eq!(f.run("eni-a", [10, 0, 1, 6], Protocol::Icmp, None, None).verdict, TraceVerdict::Delivered);
        assert_eq!(f.run("eni-bare", [10, 0, 1, 6], Protocol::Icmp, None, None).verdict, TraceVerdict::Dropped);
    }

    #[test]
    fn egress_rules_bind_the_sender() {
        let f = Fixture::new();
        // sg-web may only send tcp 5432 to 10.0.2.0/24.
        let t = f.run("eni-web", [10, 0, 1, 4], Protocol::Icmp, None, None);
        assert_eq!(stages(&t), vec![(TraceStage::AntiSpoofing, true), (TraceStage::Egress, false)]);
        // No groups: sends anything, but receives nothing new.
        let t = f.run("eni-bare", [10, 0, 1, 4], Protocol::Tcp, Some(9), None);
        assert_eq!(t.verdict, TraceVerdict::Dropped, "10.0.1.8 is no member of sg-default: {t:?}");
        let t = f.run("eni-a", [10, 0, 1, 8], Protocol::Tcp, Some(9), None);
        assert_eq!(t.steps.last().unwrap().stage, TraceStage::Ingress);
        assert!(!t.steps.last().unwrap().pass);
    }

    #[test]
    fn instance_metadata_answers_tcp_80_from_the_enis_own_address_only() {
        let f = Fixture::new();
        let t = f.run("eni-a", [169, 254, 169, 254], Protocol::Tcp, Some(80), None);
        assert_eq!(t.verdict, TraceVerdict::AnsweredByMetadata, "{t:?}");
        assert_eq!(stages(&t), vec![(TraceStage::AntiSpoofing, true), (TraceStage::Route, true)]);
        for (p, port) in [(Protocol::Tcp, Some(443)), (Protocol::Udp, Some(80)), (Protocol::Icmp, None)] {
            let t = f.run("eni-a", [169, 254, 169, 254], p, port, None);
            assert_eq!(t.verdict, TraceVerdict::Dropped, "{p:?} {port:?}");
        }
    }

    #[test]
    fn routes_inside_the_vpc_only() {
        let f = Fixture::new();
        let t = f.run("eni-a", [10, 0, 1, 1], Protocol::Icmp, None, None);
        assert_eq!(t.verdict, TraceVerdict::AnsweredByGateway);
        let t = f.run("eni-a", [10, 0, 9, 9], Protocol::Icmp, None, None);
        assert_eq!(t.verdict, TraceVerdict::Dropped);
        assert!(t.steps.last().unwrap().detail.contains("no ENI"));
        let t = f.run("eni-a", [192, 168, 0, 1], Protocol::Icmp, None, None);
        assert!(t.steps.last().unwrap().detail.contains("outside vpc-1"));
        let t = f.run("eni-a", [10, 0, 1, 7], Protocol::Icmp, None, None);
        assert!(t.steps.last().unwrap().detail.contains("not attached"));
        assert_eq!(t.destination_eni_id.as_deref(), Some("eni-idle"));
        let t = f.run("eni-a", [10, 0, 1, 6], Protocol::Tcp, Some(80), None);
        assert!(t.steps[2].detail.contains("on the same host (host-1)"), "{:?}", t.steps[2]);
    }

    #[test]
    fn a_peering_forwards_where_both_tables_route_and_no_further() {
        let mut f = Fixture::new();
        let t = f.run("eni-a", [10, 9, 1, 4], Protocol::Icmp, None, None);
        assert_eq!(t.verdict, TraceVerdict::Delivered, "{t:?}");
        let route = &t.steps[2].detail;
        assert!(route.contains("across pcx-1 (10.9.0.0/16 → pcx-1 in rtb-1)") && route.contains("VXLAN 9"), "{route}");
        // vpc-2 is another tenant's: its ENI, groups and hosts go unnamed.
        assert!(!route.contains("eni-p") && t.destination_eni_id.is_none() && t.destination_host_id.is_none(), "{t:?}");
        assert!(t.steps[3].detail.contains("admit"), "{:?}", t.steps[3]);
        // The receiver's groups admit ICMP only.
        let t = f.run("eni-a", [10, 9, 1, 4], Protocol::Tcp, Some(22), None);
        assert_eq!(stages(&t).last(), Some(&(TraceStage::Ingress, false)));
        // Not transitive: a route to 10.8/16 across pcx-1 leads nowhere.
        f.tables[0].routes.push(Route::new("10.8.0.0/16".parse().unwrap(), "pcx-1"));
        let t = f.run("eni-a", [10, 8, 0, 1], Protocol::Icmp, None, None);
        assert!(t.steps.last().unwrap().detail.contains("not transitive"), "{t:?}");
        // A longer route to an ENI wins: eni-b's check is on, so it takes nothing.
        f.tables[0].routes.push(Route::new("10.9.1.0/24".parse().unwrap(), "eni-b"));
        let t = f.run("eni-a", [10, 9, 1, 4], Protocol::Icmp, None, None);
        assert!(t.steps.last().unwrap().detail.contains("source/destination check is on"), "{t:?}");
        f.tables[0].routes.pop();
        assert_eq!(f.run("eni-a", [10, 9, 1, 4], Protocol::Icmp, None, None).verdict, TraceVerdict::Delivered);
        // Only one side routes: dropped on receipt.
        f.tables[1].routes.clear();
        let t = f.run("eni-a", [10, 9, 1, 4], Protocol::Icmp, None, None);
        assert!(t.steps.last().unwrap().detail.contains("both sides' tables must route"), "{t:?}");
        // Pending: a blackhole.
        f.tables[1].routes.push(Route::new("10.0.0.0/16".parse().unwrap(), "pcx-1"));
        f.peerings[0].status = PeeringStatus::PendingAcceptance;
        let t = f.run("eni-a", [10, 9, 1, 4], Protocol::Icmp, None, None);
        assert!(t.steps.last().unwrap().detail.contains("blackhole"), "{t:?}");
        // No route at all, or one to a target not forwarded.
        let t = f.run("eni-a", [192, 168, 0, 1], Protocol::Icmp, None, None);
        assert!(t.steps.last().unwrap().detail.contains("no route"), "{t:?}");
        f.tables[0].routes.push(Route::new("0.0.0.0/0".parse().unwrap(), "vgw-1"));
        let t = f.run("eni-a", [192, 168, 0, 1], Protocol::Icmp, None, None);
        assert!(t.steps.last().unwrap().detail.contains("does not forward yet"), "{t:?}");
    }

    #[test]
    fn routes_to_an_appliance_send_packets_there_unchanged() {
        let mut f = Fixture::new();
        // eni-b (host-2) is the appliance; rtb-1 sends 10.0.1.6/32 (eni-web)
        // and everything outside the VPC through it.
        f.enis[1].source_dest_check = false;
        f.tables[0].routes.push(Route::new("10.0.1.6/32".parse().unwrap(), "eni-b"));
        f.tables[0].routes.push(Route::new("0.0.0.0/0".parse().unwrap(), "eni-b"));
        let t = f.run("eni-a", [10, 0, 1, 6], Protocol::Tcp, Some(80), None);
        assert_eq!(t.verdict, TraceVerdict::DeliveredToAppliance, "{t:?}");
        assert_eq!((t.destination_eni_id.as_deref(), t.destination_host_id.as_deref()), (Some("eni-b"), Some("host-2")));
        assert!(t.steps[2].detail.contains("10.0.1.6/32 → eni-b in rtb-1") && t.steps[2].detail.contains("host-1 to host-2"), "{:?}", t.steps[2]);
        // Inside the VPC, only a more specific route: eni-bare is reached directly.
        let t = f.run("eni-a", [10, 0, 1, 8], Protocol::Icmp, None, None);
        assert_eq!(t.destination_eni_id.as_deref(), Some("eni-bare"), "{t:?}");
        // Outside: the default route, ahead of no route at all.
        assert_eq!(f.run("eni-a", [192, 0, 2, 9], Protocol::Icmp, None, None).verdict, TraceVerdict::DeliveredToAppliance);
        // The peering's /16 is longer than the default route: the peer is reached across it.
        assert_eq!(f.run("eni-a", [10, 9, 1, 4], Protocol::Icmp, None, None).verdict, TraceVerdict::Delivered);
        // The appliance's groups decide what it takes.
        f.enis[1].security_group_ids = vec!["sg-web".into()];
        let t = f.run("eni-a", [192, 0, 2, 9], Protocol::Tcp, Some(22), None);
        assert_eq!(stages(&t).last(), Some(&(TraceStage::Ingress, false)), "{t:?}");
        f.enis[1].security_group_ids = vec!["sg-default".into()];
        // Its own packets follow the local route (outside the VPC: none).
        let t = f.run("eni-b", [10, 0, 1, 6], Protocol::Tcp, Some(80), None);
        assert_eq!(t.verdict, TraceVerdict::Delivered, "{t:?}");
        let t = f.run("eni-b", [192, 0, 2, 9], Protocol::Icmp, None, None);
        assert!(t.steps.last().unwrap().detail.contains("own packets follow the local route"), "{t:?}");
        // Detached, deleted, or with its check on: dropped.
        f.enis[1].source_dest_check = true;
        assert!(f.run("eni-a", [10, 0, 1, 6], Protocol::Icmp, None, None).steps.last().unwrap().detail.contains("check is on"));
        f.enis[1].attachment = None;
        assert!(f.run("eni-a", [10, 0, 1, 6], Protocol::Icmp, None, None).steps.last().unwrap().detail.contains("blackhole"));
        f.enis.remove(1);
        assert!(f.run("eni-a", [10, 0, 1, 6], Protocol::Icmp, None, None).steps.last().unwrap().detail.contains("blackhole"));
    }

    #[test]
    fn a_route_to_the_internet_gateway_leaves_by_an_elastic_ip() {
        use crate::resources::EipAssociation;
        let mut f = Fixture::new();
        f.tables[0].routes.push(Route::new("0.0.0.0/0".parse().unwrap(), "igw-1"));
        // No such gateway: a blackhole.
        let t = f.run("eni-a", [192, 0, 2, 9], Protocol::Icmp, None, None);
        assert!(t.steps.last().unwrap().detail.contains("blackhole"), "{t:?}");
        f.igws.push(InternetGateway {
            id: "igw-1".into(),
            name: String::new(),
            tags: Default::default(),
            tenant: "t".into(),
            created_at: String::new(),
            revision: 1,
            vpc_id: "vpc-1".into(),
            external_network_id: "extnet-1".into(),
        });
        // No elastic IP for the source: dropped.
        let t = f.run("eni-a", [192, 0, 2, 9], Protocol::Icmp, None, None);
        assert!(t.verdict == TraceVerdict::Dropped && t.steps.last().unwrap().detail.contains("no elastic IP"), "{t:?}");
        f.eips.push(ElasticIp {
            id: "eipalloc-1".into(),
            name: String::new(),
            tags: Default::default(),
            tenant: "t".into(),
            created_at: String::new(),
            revision: 1,
            external_network_id: "extnet-1".into(),
            address: Ipv4Addr::new(203, 0, 113, 10),
            association: Some(EipAssociation { eni_id: Some("eni-a".into()), nat_gateway_id: None, private_ip: Ipv4Addr::new(10, 0, 1, 4) }),
        });
        let t = f.run("eni-a", [192, 0, 2, 9], Protocol::Icmp, None, None);
        assert_eq!(t.verdict, TraceVerdict::ToExternalNetwork, "{t:?}");
        assert!(t.steps.last().unwrap().detail.contains("becomes its elastic IP 203.0.113.10"), "{t:?}");
        // The peering's longer route still wins for the peer's block; another ENI has no elastic IP.
        assert_eq!(f.run("eni-a", [10, 9, 1, 4], Protocol::Icmp, None, None).verdict, TraceVerdict::Delivered);
        assert_eq!(f.run("eni-b", [192, 0, 2, 9], Protocol::Icmp, None, None).verdict, TraceVerdict::Dropped);
    }


    #[test]
    fn a_route_to_a_nat_gateway_leaves_translated_to_its_elastic_ip() {
        let mut f = Fixture::new();
        f.nats.push(NatGateway {
            id: "nat-1".into(),
            name: "nat-1".into(),
            tags: Default::default(),
            tenant: "t".into(),
            created_at: String::new(),
            revision: 1,
            vpc_id: "vpc-1".into(),
            subnet_id: "subnet-1".into(),
            private_ip: Ipv4Addr::new(10, 0, 1, 9),
            elastic_ip_id: "eipalloc-1".into(),
            state: crate::resources::NatGatewayState::Available,
            host_id: "host-2".into(),
        });
        f.tables[0].routes.push(Route::new("0.0.0.0/0".parse().unwrap(), "nat-1"));
        let t = f.run("eni-a", [192, 0, 2, 9], Protocol::Tcp, Some(443), None);
        assert_eq!(t.verdict, TraceVerdict::ToExternalNetwork, "{t:?}");
        assert_eq!(t.destination_host_id.as_deref(), Some("host-2"));
        let last = &t.steps.last().unwrap().detail;
        assert!(last.contains("translated to 203.0.113.10") && last.contains("outbound only"), "{last}");
        assert!(t.steps[2].detail.contains("NAT gateway nat-1 (10.0.1.9)") && t.steps[2].detail.contains("host-1 to host-2"), "{:?}", t.steps[2]);
        // Inside the VPC the local route wins; a peer's block is longer.
        assert_eq!(f.run("eni-a", [10, 0, 1, 5], Protocol::Icmp, None, None).destination_eni_id.as_deref(), Some("eni-b"));
        assert_eq!(f.run("eni-a", [10, 9, 1, 4], Protocol::Icmp, None, None).verdict, TraceVerdict::Delivered);
        // Deleted: a blackhole.
        f.nats.clear();
        assert!(f.run("eni-a", [192, 0, 2, 9], Protocol::Icmp, None, None).steps.last().unwrap().detail.contains("blackhole"));
    }


    #[test]
    fn a_rule_with_an_empty_port_range_matches_nothing() {
        let mut f = Fixture::new();
        f.groups[1].ingress = vec![rule(Protocol::Tcp, Some((90, 80)), Some("0.0.0.0/0"), None)];
        assert_eq!(f.run("eni-a", [10, 0, 1, 6], Protocol::Tcp, Some(85), None).verdict, TraceVerdict::Dropped);
    }

    #[test]
    fn bad_requests_are_refused() {
        let f = Fixture::new();
        let world = TraceWorld {
            vpc: &f.vpc,
            subnets: vec![],
            enis: vec![],
            route_tables: vec![],
            peerings: vec![],
            peer_vpcs: vec![],
            groups: BTreeMap::new(),
            instances: BTreeMap::new(),
            hosts: BTreeMap::new(),
            nat_gateways: vec![],
            internet_gateways: vec![],
            elastic_ips: vec![],
        };
        let req = |protocol, port| TraceRequest { source_eni_id: "eni-a".into(), destination_ip: Ipv4Addr::LOCALHOST, protocol, port, source_ip: None };
        assert_eq!(trace(&req(Protocol::All, None), &f.enis[0], &world), Err(TraceError::NotAPacketProtocol));
        assert_eq!(trace(&req(Protocol::Udp, None), &f.enis[0], &world), Err(TraceError::PortRequired));
        assert!(trace(&req(Protocol::Icmp, None), &f.enis[0], &world).is_ok());
    }

    #[test]
    fn a_packet_from_an_enis_address_leaves_by_that_eni() {
        let e = |id: &str, idx, vpc: &str, block: &str, ips: &[[u8; 4]]| InstanceEni {
            eni_id: id.into(),
            device_index: idx,
            vpc_id: vpc.into(),
            vpc_block: block.parse().unwrap(),
            ips: ips.iter().map(|ip| Ipv4Addr::from(*ip)).collect(),
        };
        // eth0 and eth1 in one VPC, eth2 in another.
        let enis = [
            e("eni-2", 2, "vpc-b", "10.9.0.0/16", &[[10, 9, 1, 5]]),
            e("eni-0", 0, "vpc-a", "10.0.0.0/16", &[[10, 0, 1, 10]]),
            e("eni-1", 1, "vpc-a", "10.0.0.0/16", &[[10, 0, 2, 20], [10, 0, 2, 21]]),
        ];
        let from = |dst: [u8; 4], src: Option<[u8; 4]>| {
            leaving_eni(&enis, Ipv4Addr::from(dst), src.map(Ipv4Addr::from)).map(|e| e.eni_id.as_str())
        };
        // Unbound: the main table (eth0, or the other VPC's block by eth2).
        assert_eq!(from([10, 0, 1, 99], None), Some("eni-0"));
        assert_eq!(from([10, 0, 2, 99], None), Some("eni-0"), "eth1's own subnet is not in the main table's choice");
        assert_eq!(from([10, 9, 3, 3], None), Some("eni-2"));
        // From a further ENI's address, any address of it: by that ENI.
        assert_eq!(from([10, 0, 1, 99], Some([10, 0, 2, 21])), Some("eni-1"));
        assert_eq!(from([10, 9, 3, 3], Some([10, 0, 2, 20])), Some("eni-1"), "its table's default route, not the main table's block");
        // From eth0's address towards the other VPC's block: by eth0 too.
        assert_eq!(from([10, 9, 3, 3], Some([10, 0, 1, 10])), Some("eni-0"));
        // A source no ENI holds: the main table (anti-spoofing then decides).
        assert_eq!(from([10, 9, 3, 3], Some([10, 0, 1, 77])), Some("eni-2"));
        // No eth0: only a packet from an ENI's address leaves.
        assert_eq!(leaving_eni(&enis[2..], Ipv4Addr::new(10, 0, 1, 99), None), None);
        assert_eq!(
            leaving_eni(&enis[2..], Ipv4Addr::new(10, 0, 1, 99), Some(Ipv4Addr::new(10, 0, 2, 20))).map(|e| e.eni_id.as_str()),
            Some("eni-1")
        );
    }
}
