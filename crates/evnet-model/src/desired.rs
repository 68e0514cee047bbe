//! The desired state of one host: everything its agent needs to build the
//! host's kernel objects, computed by the server from the store and served as
//! a whole snapshot with a generation number.
//!
//! The agent reconciles against the latest snapshot (level-triggered) and
//! reports the generation it applied; a generation is the store revision the
//! snapshot was computed at, so a client that wrote at revision R waits for
//! `applied_generation >= R` on the hosts it cares about.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::resources::{DhcpOptions, Protocol};

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HostDesired {
    pub host_id: String,
    pub host_name: String,
    pub underlay_ip: Option<Ipv4Addr>,
    pub nic_mbps: u64,
    pub generation: u64,
    /// VPCs with at least one ENI attached on this host, sorted by id.
    pub vpcs: Vec<VpcDesired>,
    /// Instances placed on this host, sorted by id.
    pub instances: Vec<InstanceDesired>,
    /// Groups used by ENIs on this host, with referenced groups' members
    /// resolved to addresses; sorted by id.
    pub security_groups: Vec<SecurityGroupDesired>,
    /// VPCs peered (actively) with a VPC of this host that have no ENI
    /// here themselves: where their ENIs are, so packets across the
    /// peering reach them and their replies are checked. Sorted by id.
    #[serde(default)]
    pub peer_vpcs: Vec<PeerVpcDesired>,
    /// External networks the host's elastic IPs are on: how the host
    /// reaches each. Sorted by id.
    #[serde(default)]
    pub external_networks: Vec<ExternalNetworkDesired>,
    /// Elastic IPs associated with ENIs attached here (1:1 NAT on this
    /// host). Sorted by public address.
    #[serde(default)]
    pub elastic_ips: Vec<ElasticIpDesired>,
    /// NAT gateways placed on this host, sorted by id. The gateway's VPC is
    /// among `vpcs` (the host holds the gateway's end of it); every other
    /// host of the VPC sees the gateway as a [`RemoteEni`] with its
    /// source/dest check off, here.
    #[serde(default)]
    pub nat_gateways: Vec<NatGatewayDesired>,
}

/// A NAT gateway as its host builds it: an appliance on its VPC (reached
/// like an ENI by `private_ip` and `mac`) with a leg on the external
/// network holding `public_ip`, translating what it forwards out to that
/// address and letting back in only replies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NatGatewayDesired {
    pub nat_gateway_id: String,
    pub vpc_id: String,
    pub vni: u32,
    #[schemars(with = "String")]
    pub vpc_cidr: Ipv4Net,
    pub subnet_id: String,
    #[schemars(with = "String")]
    pub subnet_cidr: Ipv4Net,
    /// The subnet's gateway: the next hop back into the VPC.
    pub subnet_gateway_ip: Ipv4Addr,
    pub private_ip: Ipv4Addr,
    /// Derived from the id (`validate::mac_for_nat_gateway`), so every host
    /// addresses the gateway alike wherever it runs.
    pub mac: String,
    pub elastic_ip_id: String,
    pub public_ip: Ipv4Addr,
    pub external_network_id: String,
    #[schemars(with = "String")]
    pub external_cidr: Ipv4Net,
    /// The external network's router: the gateway's default route.
    pub external_gateway_ip: Ipv4Addr,
    /// The host's device on the external network; the gateway's outer leg
    /// is a macvlan on it.
    pub host_interface: String,
}

/// An external network as a host reaches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ExternalNetworkDesired {
    pub external_network_id: String,
    #[schemars(with = "String")]
    pub cidr_block: Ipv4Net,
    /// The network's router: the next hop of what leaves for it.
    pub gateway_ip: Ipv4Addr,
    /// The host's device on the network (the lab's `ext0`).
    pub host_interface: String,
}

/// An elastic IP associated with a local ENI's address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ElasticIpDesired {
    pub allocation_id: String,
    pub public_ip: Ipv4Addr,
    pub external_network_id: String,
    pub eni_id: String,
    pub private_ip: Ipv4Addr,
}

/// A VPC peered with one of the host's VPCs, seen from the host: its VNI
/// and every attached ENI (on other hosts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PeerVpcDesired {
    pub vpc_id: String,
    pub vni: u32,
    #[schemars(with = "String")]
    pub cidr_block: Ipv4Net,
    /// Sorted by id.
    pub enis: Vec<RemoteEni>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct VpcDesired {
    pub vpc_id: String,
    pub vni: u32,
    #[schemars(with = "String")]
    pub cidr_block: Ipv4Net,
    /// All subnets of the VPC: their gateways live on every host.
    pub subnets: Vec<SubnetDesired>,
    /// ENIs of this VPC attached on other hosts, sorted by id.
    pub remote_enis: Vec<RemoteEni>,
    /// Routes to other VPCs' blocks through peerings both sides accept.
    #[serde(default)]
    pub peer_routes: Vec<PeerRoute>,
    /// The VPC's route tables, sorted by id; each subnet names the one it
    /// uses.
    #[serde(default)]
    pub route_tables: Vec<RouteTableDesired>,
    /// The VPC's DHCP option set, for the ENIs of subnets without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp_options: Option<DhcpOptions>,
}

/// A route table as the data plane applies it: its routes other than
/// `local` (the VPC's block, always routed inside it), targets resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RouteTableDesired {
    pub route_table_id: String,
    /// Sorted by destination.
    pub routes: Vec<RouteDesired>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RouteDesired {
    #[schemars(with = "String")]
    pub destination_cidr: Ipv4Net,
    pub target: RouteTargetDesired,
}

/// Where a route sends its packets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RouteTargetDesired {
    /// Into the peer VPC of an active peering: the packet is looked up
    /// among the peer's ENIs (never further: peering is not transitive).
    Peering { peering_id: String, peer_vpc_id: String, peer_vni: u32 },
    /// To an attached ENI of the same VPC with its source/dest check off
    /// (an appliance; with the check on, the route is a blackhole: the ENI
    /// would take only packets addressed to it), found by its primary
    /// address `ip` wherever it runs: the packet keeps its addresses.
    Eni { eni_id: String, ip: Ipv4Addr },
    /// To the VPC's internet gateway: out by the sender's elastic IP,
    /// translated on the sender's host; dropped from an address without
    /// one.
    InternetGateway { internet_gateway_id: String },
    /// A target that is gone or not usable (a peering not active, an
    /// unknown id): the packets are dropped, as AWS does.
    Blackhole { target: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SubnetDesired {
    pub subnet_id: String,
    #[schemars(with = "String")]
    pub cidr_block: Ipv4Net,
    pub gateway_ip: Ipv4Addr,
    /// The route table it uses: the one it is associated with, else its
    /// VPC's main table.
    #[serde(default)]
    pub route_table_id: String,
    /// The subnet's DHCP option set; when present it replaces the VPC's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp_options: Option<DhcpOptions>,
}

impl VpcDesired {
    /// The DHCP option set of an ENI in subnet `subnet_id` of this VPC: the
    /// subnet's when it has one, else the VPC's, else none.
    pub fn dhcp_options_for(&self, subnet_id: &str) -> Option<&DhcpOptions> {
        match self.subnets.iter().find(|s| s.subnet_id == subnet_id) {
            Some(SubnetDesired { dhcp_options: Some(o), .. }) => Some(o),
            _ => self.dhcp_options.as_ref(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RemoteEni {
    pub eni_id: String,
    pub mac: String,
    pub ips: Vec<Ipv4Addr>,
    pub host_id: String,
    pub underlay_ip: Ipv4Addr,
    /// Off: the ENI may send from any address (an appliance), so its host's
    /// overlay packets are not checked against its addresses.
    #[serde(default = "yes")]
    pub source_dest_check: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PeerRoute {
    pub peering_id: String,
    #[schemars(with = "String")]
    pub destination_cidr: Ipv4Net,
    pub peer_vpc_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct InstanceDesired {
    pub instance_id: String,
    /// `container`: `netns` is the runtime's, a path; the agent never makes
    /// or deletes it and touches only the devices it put there.
    #[serde(default)]
    pub kind: crate::resources::InstanceKind,
    pub netns: String,
    /// Attached ENIs, sorted by device index.
    pub enis: Vec<EniDesired>,
    /// A `vm`'s taps' owner user and group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap_uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap_gid: Option<u32>,
    /// The instance's name (what instance metadata shows of it, with its
    /// tags and tenant).
    #[serde(default)]
    pub name: String,
    /// Its tags: instance metadata's `tags/instance/<key>`.
    #[serde(default)]
    pub tags: crate::resources::Tags,
    /// Its tenant: instance metadata's `owner-id`.
    #[serde(default)]
    pub tenant: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EniDesired {
    pub eni_id: String,
    pub vpc_id: String,
    pub subnet_id: String,
    #[schemars(with = "String")]
    pub subnet_cidr: Ipv4Net,
    pub gateway_ip: Ipv4Addr,
    pub mac: String,
    pub private_ip: Ipv4Addr,
    pub secondary_ips: Vec<Ipv4Addr>,
    pub device_index: u32,
    pub source_dest_check: bool,
    pub security_group_ids: Vec<String>,
    pub bandwidth: EniBandwidth,
}

/// Which of an instance's further ENIs in other VPCs route their VPC's
/// whole block: `secondaries` are `(key, block)` in device order; a block is
/// kept unless it overlaps `primary` (eth0's VPC, reached by the default
/// route) or a block kept before it (two VPCs with one CIDR: the lower
/// device index keeps it). The planner installs these routes; `evnet trace`
/// picks the ENI a packet from an instance leaves by with the same rule.
pub fn routed_vpc_blocks<K>(primary: Ipv4Net, secondaries: impl IntoIterator<Item = (K, Ipv4Net)>) -> Vec<(K, Ipv4Net)> {
    let overlaps = |a: &Ipv4Net, b: &Ipv4Net| a.contains(&b.network()) || b.contains(&a.network());
    let mut kept: Vec<(K, Ipv4Net)> = Vec::new();
    for (k, block) in secondaries {
        if !overlaps(&primary, &block) && !kept.iter().any(|(_, b)| overlaps(b, &block)) {
            kept.push((k, block));
        }
    }
    kept
}

/// An ENI's bandwidth in bit/s, the limit resolved against the host's NIC.
/// `egress_rate_bps` / `ingress_rate_bps` are the rates the bandwidth
/// controller currently allocates (0: not yet allocated, use the limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EniBandwidth {
    pub guaranteed_bps: u64,
    pub limit_bps: u64,
    pub weight: u32,
    pub burst_bytes: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SecurityGroupDesired {
    pub group_id: String,
    pub ingress: Vec<RuleDesired>,
    pub egress: Vec<RuleDesired>,
    /// Addresses of this group's members (all ENIs in it, on any host).
    pub member_ips: Vec<Ipv4Addr>,
}

/// A rule with its peer resolved: `cidr` or the members of `group_id`
/// (whose addresses are that group's `member_ips`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RuleDesired {
    pub protocol: Protocol,
    pub from_port: Option<u16>,
    pub to_port: Option<u16>,
    #[schemars(with = "Option<String>")]
    pub cidr: Option<Ipv4Net>,
    pub group_id: Option<String>,
}

/// One direction of an ENI's bandwidth as its agent last saw it, in bit/s:
/// the measured rate, the estimated demand and the rate allocated to it (the
/// rate of its shaper).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectionStats {
    pub rate_bps: u64,
    pub demand_bps: u64,
    pub allocated_bps: u64,
}

/// An ENI's bandwidth in both directions: `tx` is what it sends, `rx` what
/// it receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EniBandwidthReport {
    #[schemars(with = "crate::schema::EniId")]
    pub eni_id: String,
    pub tx: DirectionStats,
    pub rx: DirectionStats,
}

/// What an agent reports about its ENIs' bandwidth (`POST
/// /v1/hosts/{id}/bandwidth`), about once a second.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostBandwidthReport {
    pub enis: Vec<EniBandwidthReport>,
    /// What local ENIs send to ENIs on other hosts, per pair (the tc-BPF
    /// data plane meters each pair before its cap). The controller shares
    /// each receiving host's NIC among these pairs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pairs: Vec<PairBandwidthReport>,
}

/// What one local ENI sends to one ENI on another host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PairBandwidthReport {
    /// The sender, on the reporting host.
    #[schemars(with = "crate::schema::EniId")]
    pub src_eni_id: String,
    /// The receiver, on another host.
    #[schemars(with = "crate::schema::EniId")]
    pub dst_eni_id: String,
    /// Offered: what the sender sent to it, before the pair's cap.
    pub rate_bps: u64,
    /// The sender's estimate of what the pair would send uncapped.
    pub demand_bps: u64,
    /// The cap in force on the pair; `None`: uncapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cap_bps: Option<u64>,
}

/// A cap the bandwidth controller puts on one ENI for what one host cannot
/// see (pools spanning hosts); `None`: no cap beyond the ENI's own limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EniCaps {
    pub eni_id: String,
    pub tx_cap_bps: Option<u64>,
    pub rx_cap_bps: Option<u64>,
}

/// The controller's answer to a report: the caps for the host's ENIs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HostBandwidthCaps {
    pub enis: Vec<EniCaps>,
    /// Caps on what the host's ENIs send to ENIs on other hosts (whose
    /// NICs would otherwise be oversubscribed); pairs not listed are
    /// uncapped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pairs: Vec<PairCaps>,
    /// Moves on every change of this host's caps (`GET
    /// /v1/hosts/{id}/bandwidth/caps?after=` waits for it to pass a
    /// value); an agent keeps the caps of the highest version it has seen.
    #[serde(default)]
    pub version: u64,
}

/// The controller's cap on what one ENI sends to one ENI on another host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PairCaps {
    #[schemars(with = "crate::schema::EniId")]
    pub src_eni_id: String,
    #[schemars(with = "crate::schema::EniId")]
    pub dst_eni_id: String,
    pub cap_bps: u64,
}

#[cfg(test)]
mod routed_blocks_tests {
    use super::routed_vpc_blocks;

    #[test]
    fn a_block_overlapping_the_primary_or_an_earlier_one_is_not_routed() {
        let n = |s: &str| s.parse().unwrap();
        let kept = routed_vpc_blocks(
            n("10.0.0.0/16"),
            [(1, n("10.1.0.0/16")), (2, n("10.0.0.0/16")), (3, n("10.1.4.0/24")), (4, n("10.0.7.0/24")), (5, n("172.16.0.0/12"))],
        );
        assert_eq!(kept, vec![(1, n("10.1.0.0/16")), (5, n("172.16.0.0/12"))]);
        assert!(routed_vpc_blocks::<u32>(n("10.0.0.0/16"), []).is_empty());
    }
}
