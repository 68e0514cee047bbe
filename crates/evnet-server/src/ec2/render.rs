//! evnet's resources as EC2 describes them (the shapes of botocore's EC2
//! service model: `Vpc`, `Subnet`, `NetworkInterface`, `SecurityGroup`,
//! `RouteTable`, `VpcPeeringConnection`, `Instance`).
//!
//! Ids EC2 has and evnet does not are derived from evnet's: an ENI's
//! attachment is `eni-attach-` and the ENI's hex digits, a subnet's route
//! table association `rtbassoc-` and the subnet's, the main association
//! `rtbassoc-` and the main table's, a reservation `r-` and the instance's.

use evnet_model::*;

use super::xml::{branch, leaf, set, Node};
use crate::cache::Snapshot;

/// The hex digits of an evnet id.
pub fn hex_of(id: &str) -> &str {
    id.rsplit_once('-').map(|(_, h)| h).unwrap_or(id)
}

pub fn attachment_id(eni_id: &str) -> String {
    format!("eni-attach-{}", hex_of(eni_id))
}

pub fn association_id(subnet_or_table_id: &str) -> String {
    format!("rtbassoc-{}", hex_of(subnet_or_table_id))
}

pub fn reservation_id(instance_id: &str) -> String {
    format!("r-{}", hex_of(instance_id))
}

/// The `evnet:` tags an ENI shows for its bandwidth (they are not stored as
/// tags: they show the ENI's bandwidth as it is).
pub const TAG_GUARANTEED: &str = "evnet:guaranteed-mbps";
pub const TAG_LIMIT: &str = "evnet:limit-mbps";
pub const TAG_WEIGHT: &str = "evnet:weight";
pub const TAG_BURST: &str = "evnet:burst-kbytes";
pub const BANDWIDTH_TAGS: [&str; 4] = [TAG_GUARANTEED, TAG_LIMIT, TAG_WEIGHT, TAG_BURST];

pub fn eni_tags(e: &Eni) -> Tags {
    let mut t = e.tags.clone();
    t.insert(TAG_GUARANTEED.into(), e.bandwidth.guaranteed_mbps.to_string());
    if let Some(l) = e.bandwidth.limit_mbps {
        t.insert(TAG_LIMIT.into(), l.to_string());
    }
    t.insert(TAG_WEIGHT.into(), e.bandwidth.weight.to_string());
    t.insert(TAG_BURST.into(), e.bandwidth.burst_kbytes.to_string());
    t
}

pub fn tag_set(tags: &Tags) -> Option<Node> {
    (!tags.is_empty()).then(|| set("tagSet", tags.iter().map(|(k, v)| vec![leaf("key", k), leaf("value", v)])))
}

pub fn flat(nodes: Vec<Option<Node>>) -> Vec<Node> {
    nodes.into_iter().flatten().collect()
}

pub fn vpc(v: &Vpc) -> Vec<Node> {
    flat(vec![
        Some(leaf("vpcId", &v.id)),
        Some(leaf("ownerId", &v.tenant)),
        Some(leaf("state", "available")),
        Some(leaf("cidrBlock", v.cidr_block)),
        Some(set(
            "cidrBlockAssociationSet",
            [vec![
                leaf("associationId", format!("vpc-cidr-assoc-{}", hex_of(&v.id))),
                leaf("cidrBlock", v.cidr_block),
                branch("cidrBlockState", vec![leaf("state", "associated")]),
            ]],
        )),
        Some(leaf("dhcpOptionsId", "default")),
        Some(leaf("instanceTenancy", "default")),
        Some(leaf("isDefault", false)),
        tag_set(&v.tags),
    ])
}

pub fn subnet(s: &Subnet) -> Vec<Node> {
    flat(vec![
        Some(leaf("subnetId", &s.id)),
        Some(leaf("ownerId", &s.tenant)),
        Some(leaf("state", "available")),
        Some(leaf("vpcId", &s.vpc_id)),
        Some(leaf("cidrBlock", s.cidr_block)),
        Some(leaf("availableIpAddressCount", s.available_ip_count)),
        Some(leaf("defaultForAz", false)),
        Some(leaf("mapPublicIpOnLaunch", false)),
        Some(leaf("assignIpv6AddressOnCreation", false)),
        tag_set(&s.tags),
    ])
}

/// An ENI's description: its name, unless the name is just its id.
pub fn description(e: &Eni) -> String {
    if e.name == e.id { String::new() } else { e.name.clone() }
}

fn group_set(snap: &Snapshot, groups: &[String]) -> Node {
    set(
        "groupSet",
        groups.iter().map(|g| {
            let name = snap.security_groups.get(g).map(|x| x.value.name.clone()).unwrap_or_default();
            vec![leaf("groupId", g), leaf("groupName", name)]
        }),
    )
}

fn private_ips(e: &Eni) -> Node {
    set("privateIpAddressesSet", e.all_ips().map(|ip| vec![leaf("privateIpAddress", ip), leaf("primary", ip == e.private_ip)]))
}

pub fn network_interface(snap: &Snapshot, e: &Eni) -> Vec<Node> {
    let status = match e.status {
        EniStatus::Available => "available",
        EniStatus::InUse => "in-use",
    };
    flat(vec![
        Some(leaf("networkInterfaceId", &e.id)),
        Some(leaf("subnetId", &e.subnet_id)),
        Some(leaf("vpcId", &e.vpc_id)),
        Some(leaf("description", description(e))),
        Some(leaf("ownerId", &e.tenant)),
        Some(leaf("requesterManaged", false)),
        Some(leaf("status", status)),
        Some(leaf("macAddress", &e.mac)),
        Some(leaf("privateIpAddress", e.private_ip)),
        Some(leaf("sourceDestCheck", e.source_dest_check)),
        Some(group_set(snap, &e.security_group_ids)),
        e.attachment.as_ref().map(|a| {
            branch(
                "attachment",
                vec![
                    leaf("attachmentId", attachment_id(&e.id)),
                    leaf("instanceId", &a.instance_id),
                    leaf("instanceOwnerId", &e.tenant),
                    leaf("deviceIndex", a.device_index),
                    leaf("status", "attached"),
                    leaf("deleteOnTermination", false),
                ],
            )
        }),
        Some(private_ips(e)),
        Some(leaf("interfaceType", "interface")),
        tag_set(&eni_tags(e)),
    ])
}

pub fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::All => "-1",
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Icmp => "icmp",
    }
}

/// Rules as EC2's `IpPermission`s: one per protocol and port range, with
/// its address ranges and groups.
pub fn ip_permissions(name: &'static str, rules: &[SgRule], owner: &str, vpc_id: &str) -> Node {
    let mut perms: Vec<((Protocol, Option<u16>, Option<u16>), Vec<&SgRule>)> = vec![];
    for r in rules {
        let key = (r.protocol, r.from_port, r.to_port);
        match perms.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(r),
            None => perms.push((key, vec![r])),
        }
    }
    set(
        name,
        perms.into_iter().map(|((proto, from, to), rs)| {
            let mut n = vec![leaf("ipProtocol", protocol_name(proto))];
            match proto {
                Protocol::Tcp | Protocol::Udp => {
                    n.push(leaf("fromPort", from.unwrap_or(0)));
                    n.push(leaf("toPort", to.unwrap_or(65535)));
                }
                Protocol::Icmp => {
                    n.push(leaf("fromPort", -1));
                    n.push(leaf("toPort", -1));
                }
                Protocol::All => {}
            }
            n.push(set(
                "groups",
                rs.iter().filter_map(|r| r.source_group_id.as_ref()).map(|g| vec![leaf("userId", owner), leaf("groupId", g), leaf("vpcId", vpc_id)]),
            ));
            n.push(set("ipRanges", rs.iter().filter_map(|r| r.cidr).map(|c| vec![leaf("cidrIp", c)])));
            n
        }),
    )
}

pub fn security_group(g: &SecurityGroup) -> Vec<Node> {
    flat(vec![
        Some(leaf("ownerId", &g.tenant)),
        Some(leaf("groupId", &g.id)),
        Some(leaf("groupName", &g.name)),
        Some(leaf("groupDescription", &g.description)),
        Some(leaf("vpcId", &g.vpc_id)),
        Some(ip_permissions("ipPermissions", &g.ingress, &g.tenant, &g.vpc_id)),
        Some(ip_permissions("ipPermissionsEgress", &g.egress, &g.tenant, &g.vpc_id)),
        tag_set(&g.tags),
    ])
}

/// A route's state as `DescribeRouteTables` says it.
pub fn route_state(snap: &Snapshot, vpc_id: &str, r: &Route) -> &'static str {
    match crate::api::network::route_state(snap, vpc_id, r) {
        RouteState::Active => "active",
        RouteState::Blackhole => "blackhole",
    }
}

pub fn route(snap: &Snapshot, vpc_id: &str, r: &Route) -> Vec<Node> {
    let mut n = vec![leaf("destinationCidrBlock", r.destination_cidr)];
    match Kind::of_id(&r.target) {
        Some(Kind::Eni) => {
            n.push(leaf("networkInterfaceId", &r.target));
            if let Some(a) = snap.enis.get(&r.target).and_then(|e| e.value.attachment.clone()) {
                n.push(leaf("instanceId", a.instance_id));
            }
        }
        Some(Kind::Peering) => n.push(leaf("vpcPeeringConnectionId", &r.target)),
        Some(Kind::NatGateway) => n.push(leaf("natGatewayId", &r.target)),
        _ => n.push(leaf("gatewayId", &r.target)),
    }
    n.push(leaf("state", route_state(snap, vpc_id, r)));
    n.push(leaf("origin", if r.target == "local" { "CreateRouteTable" } else { "CreateRoute" }));
    n
}

fn associated() -> Node {
    branch("associationState", vec![leaf("state", "associated")])
}

pub fn route_table(snap: &Snapshot, t: &RouteTable) -> Vec<Node> {
    let mut assocs = vec![];
    if t.main {
        assocs.push(vec![leaf("routeTableAssociationId", association_id(&t.id)), leaf("routeTableId", &t.id), leaf("main", true), associated()]);
    }
    for s in &t.subnet_ids {
        assocs.push(vec![
            leaf("routeTableAssociationId", association_id(s)),
            leaf("routeTableId", &t.id),
            leaf("subnetId", s),
            leaf("main", false),
            associated(),
        ]);
    }
    flat(vec![
        Some(leaf("routeTableId", &t.id)),
        Some(leaf("vpcId", &t.vpc_id)),
        Some(leaf("ownerId", &t.tenant)),
        Some(set("routeSet", t.routes.iter().map(|r| route(snap, &t.vpc_id, r)))),
        Some(set("associationSet", assocs)),
        Some(set("propagatingVgwSet", Vec::<Vec<Node>>::new())),
        tag_set(&t.tags),
    ])
}

fn vpc_info(snap: &Snapshot, vpc_id: &str, region: &str) -> Vec<Node> {
    let v = snap.vpcs.get(vpc_id).map(|v| v.value.clone());
    flat(vec![
        v.as_ref().map(|v| leaf("cidrBlock", v.cidr_block)),
        v.as_ref().map(|v| set("cidrBlockSet", [vec![leaf("cidrBlock", v.cidr_block)]])),
        v.as_ref().map(|v| leaf("ownerId", &v.tenant)),
        Some(leaf("vpcId", vpc_id)),
        Some(leaf("region", region)),
    ])
}

pub fn peering_status(p: &Peering) -> (&'static str, &'static str) {
    match p.status {
        PeeringStatus::PendingAcceptance => ("pending-acceptance", "Pending Acceptance by the owner of the accepter VPC"),
        PeeringStatus::Active => ("active", "Active"),
    }
}

pub fn peering(snap: &Snapshot, p: &Peering, region: &str) -> Vec<Node> {
    let (code, message) = peering_status(p);
    flat(vec![
        Some(leaf("vpcPeeringConnectionId", &p.id)),
        Some(branch("requesterVpcInfo", vpc_info(snap, &p.vpc_a, region))),
        Some(branch("accepterVpcInfo", vpc_info(snap, &p.vpc_b, region))),
        Some(branch("status", vec![leaf("code", code), leaf("message", message)])),
        tag_set(&p.tags),
    ])
}

pub fn instance_state(s: Option<InstanceState>) -> Node {
    let (code, name) = match s {
        Some(InstanceState::Pending) => (0, "pending"),
        Some(InstanceState::Running) => (16, "running"),
        None => (48, "terminated"),
    };
    branch("instanceState", vec![leaf("code", code), leaf("name", name)])
}

pub fn state_of(name: &'static str, s: Option<InstanceState>) -> Node {
    match instance_state(s) {
        Node::Branch(_, c) => branch(name, c),
        n => n,
    }
}

pub fn instance(snap: &Snapshot, i: &Instance) -> Vec<Node> {
    let enis = snap.enis_of_instance(&i.id);
    let primary = enis.first().cloned();
    let ifaces = enis.iter().map(|e| {
        let a = e.attachment.clone();
        flat(vec![
            Some(leaf("networkInterfaceId", &e.id)),
            Some(leaf("subnetId", &e.subnet_id)),
            Some(leaf("vpcId", &e.vpc_id)),
            Some(leaf("description", description(e))),
            Some(leaf("ownerId", &e.tenant)),
            Some(leaf("status", "in-use")),
            Some(leaf("macAddress", &e.mac)),
            Some(leaf("privateIpAddress", e.private_ip)),
            Some(leaf("sourceDestCheck", e.source_dest_check)),
            Some(group_set(snap, &e.security_group_ids)),
            a.map(|a| {
                branch(
                    "attachment",
                    vec![
                        leaf("attachmentId", attachment_id(&e.id)),
                        leaf("deviceIndex", a.device_index),
                        leaf("status", "attached"),
                        leaf("deleteOnTermination", false),
                    ],
                )
            }),
            Some(private_ips(e)),
            Some(leaf("interfaceType", "interface")),
        ])
    });
    flat(vec![
        Some(leaf("instanceId", &i.id)),
        Some(instance_state(Some(i.state))),
        Some(leaf("launchTime", &i.created_at)),
        Some(branch("placement", vec![leaf("hostId", &i.host_id), leaf("tenancy", "default")])),
        primary.as_ref().map(|e| leaf("subnetId", &e.subnet_id)),
        primary.as_ref().map(|e| leaf("vpcId", &e.vpc_id)),
        primary.as_ref().map(|e| leaf("privateIpAddress", e.private_ip)),
        primary.as_ref().map(|e| leaf("sourceDestCheck", e.source_dest_check)),
        Some(group_set(snap, primary.as_ref().map(|e| e.security_group_ids.as_slice()).unwrap_or(&[]))),
        Some(set("networkInterfaceSet", ifaces)),
        tag_set(&i.tags),
    ])
}

pub fn reservation(snap: &Snapshot, i: &Instance) -> Vec<Node> {
    vec![
        leaf("reservationId", reservation_id(&i.id)),
        leaf("ownerId", &i.tenant),
        set("groupSet", Vec::<Vec<Node>>::new()),
        set("instancesSet", [instance(snap, i)]),
    ]
}
