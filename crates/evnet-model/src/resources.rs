//! The resources of the public API (DESIGN §2) and the bodies of the
//! requests that create and change them.
//!
//! Every resource carries `id`, `name`, `tags`, `tenant`, `created_at` and
//! `revision` (the store revision of its last change, for optimistic
//! concurrency). Request bodies reject unknown fields.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::bandwidth::{BandwidthSpec, MAX_MBPS};
use crate::schema;
use crate::validate::{
    MAX_DEVICE_INDEX, MAX_DHCP_SERVERS, MAX_ENIS_PER_INSTANCE, MAX_ROUTES, MAX_RULES, MAX_SECONDARY_IPS,
    MAX_SECURITY_GROUPS_PER_ENI,
};

pub type Tags = BTreeMap<String, String>;

/// The tenant that owns infrastructure (hosts) rather than tenant resources.
pub const SYSTEM_TENANT: &str = "system";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Tenant {
    #[schemars(with = "schema::TenantId")]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub tags: Tags,
    pub tenant: String,
    pub created_at: String,
    #[serde(default)]
    pub revision: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HostStatus {
    Ready,
    Lost,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Host {
    #[schemars(with = "schema::HostId")]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub tags: Tags,
    pub tenant: String,
    pub created_at: String,
    #[serde(default)]
    pub revision: u64,
    pub underlay_ip: Ipv4Addr,
    /// Capacity of the host's NIC in each direction.
    pub nic_mbps: u64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub status: HostStatus,
    /// Unix milliseconds of the last heartbeat that was stored. A heartbeat
    /// that changes nothing else is stored only when this is older than a
    /// third of the time after which the host is marked lost (5 s by
    /// default), so it may lag the latest heartbeat by that much.
    #[serde(default)]
    pub last_heartbeat_ms: u64,
    /// The desired-state generation the agent reports it has applied.
    #[serde(default)]
    pub applied_generation: u64,
    /// What the agent's last pass could not build (empty when everything
    /// applied); the rest of the host's objects were built.
    #[serde(default)]
    pub failures: Vec<ReconcileFailure>,
    /// The network namespace the host's agent manages, as it reports it
    /// (absent: the machine's own); a `vm`'s taps are there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Vpc {
    #[schemars(with = "schema::VpcId")]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub tags: Tags,
    pub tenant: String,
    pub created_at: String,
    #[serde(default)]
    pub revision: u64,
    #[schemars(with = "String")]
    pub cidr_block: Ipv4Net,
    /// The VXLAN network identifier, unique across all tenants.
    pub vni: u32,
    /// The route table every subnet uses unless associated with another.
    pub main_route_table_id: String,
    /// The group an ENI gets when it names none.
    pub default_security_group_id: String,
    /// What DHCP gives the VPC's ENIs, unless their subnet has a set of
    /// its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp_options: Option<DhcpOptions>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Subnet {
    #[schemars(with = "schema::SubnetId")]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub tags: Tags,
    pub tenant: String,
    pub created_at: String,
    #[serde(default)]
    pub revision: u64,
    pub vpc_id: String,
    #[schemars(with = "String")]
    pub cidr_block: Ipv4Net,
    pub gateway_ip: Ipv4Addr,
    /// Computed when read: addresses an ENI could still take.
    #[serde(default)]
    pub available_ip_count: u32,
    /// Set while a delete checks that nothing uses the subnet; no new ENI
    /// may take an address in it meanwhile.
    #[serde(default, skip_serializing_if = "is_false")]
    pub deleting: bool,
    /// What DHCP gives the subnet's ENIs; when set, it replaces the VPC's
    /// set as a whole (nothing of the VPC's is merged in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp_options: Option<DhcpOptions>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A DHCP option set, as in AWS: what the agent's DHCP answers carry
/// besides the address and routes, for a VPC's ENIs or a subnet's (a
/// subnet's set, when it has one, wins over its VPC's as a whole). Also the
/// body of `PUT /v1/vpcs/{id}/dhcp-options` and `PUT
/// /v1/subnets/{id}/dhcp-options`; an empty set gives none of these options
/// ([`crate::validate::check_dhcp_options`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DhcpOptions {
    /// DNS servers (DHCP option 6), in the order clients should try
    /// them; unicast addresses, each once.
    #[serde(default)]
    #[schemars(length(max = MAX_DHCP_SERVERS), extend("uniqueItems" = true))]
    pub domain_name_servers: Vec<Ipv4Addr>,
    /// The domain name clients search (DHCP option 15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<schema::DomainName>")]
    pub domain_name: Option<String>,
    /// NTP servers (DHCP option 42); unicast addresses, each once.
    #[serde(default)]
    #[schemars(length(max = MAX_DHCP_SERVERS), extend("uniqueItems" = true))]
    pub ntp_servers: Vec<Ipv4Addr>,
}

impl DhcpOptions {
    /// Whether the set gives nothing.
    pub fn is_empty(&self) -> bool {
        self.domain_name_servers.is_empty() && self.domain_name.is_none() && self.ntp_servers.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PlacementStrategy {
    /// Put the instance on the host with the fewest instances.
    #[default]
    Spread,
    /// Fill hosts one after another.
    Pack,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Placed; its host has not yet reported it running (a `container`:
    /// also while its namespace is not there).
    Pending,
    /// Its namespace exists on its host.
    Running,
}

/// What an instance is, and who owns its network namespace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceKind {
    /// evnet makes the namespace (named after the host and the instance)
    /// and removes it with the instance.
    #[default]
    Netns,
    /// A container runtime owns the namespace, given as a path: evnet
    /// builds the ENIs' devices inside it, removes only those, and never
    /// deletes the namespace.
    Container,
    /// A virtual machine: each ENI is a tap device (`evt<10 hex>`) in its
    /// host's namespace, which a VM monitor (QEMU, Firecracker, …) opens;
    /// the guest learns its addresses by DHCP. Needs the tc-BPF data plane.
    Vm,
}

/// One ENI of a `vm` instance as its VM monitor needs it: the tap to open,
/// the namespace the tap is in, and the MAC to give the guest's NIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct VmTap {
    #[schemars(with = "schema::EniId")]
    pub eni_id: String,
    pub device_index: u32,
    /// The tap device's name (`evt<10 hex of the ENI id>`).
    pub tap: String,
    /// The network namespace the tap is in: the one its host's agent
    /// manages (absent: the machine's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// The MAC the guest's NIC must have (the ENI's).
    #[schemars(with = "schema::Mac")]
    pub mac: String,
    /// QEMU's arguments for this NIC: `-netdev tap,… -device virtio-net-pci,…`.
    pub qemu_args: String,
}

/// QEMU's `-netdev`/`-device` arguments that plug the tap `tap` into a guest
/// as a virtio NIC with `mac` (`id` names the netdev; the device is
/// `<id>-nic`).
pub fn qemu_nic_args(id: &str, tap: &str, mac: &str) -> String {
    format!("-netdev tap,id={id},ifname={tap},script=no,downscript=no -device virtio-net-pci,netdev={id},id={id}-nic,mac={mac}")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Instance {
    #[schemars(with = "schema::InstanceId")]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub tags: Tags,
    pub tenant: String,
    pub created_at: String,
    #[serde(default)]
    pub revision: u64,
    pub host_id: String,
    pub state: InstanceState,
    #[serde(default)]
    pub kind: InstanceKind,
    /// The instance's network namespace, unique on the machine: a name
    /// under `/run/netns` evnet gives it (`netns`), or the path the runtime
    /// gave (`container`); empty for a `vm` (its taps are in the host's).
    pub netns: String,
    /// A `vm`'s taps are owned by this user (uid), so an unprivileged VM
    /// monitor running as it may open them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap_uid: Option<u32>,
    /// … or by this group (gid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap_gid: Option<u32>,
    /// A `vm`'s ENIs as its VM monitor needs them, in device order (filled
    /// on every read from its attached ENIs; never stored).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taps: Vec<VmTap>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum EniStatus {
    Available,
    InUse,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Attachment {
    pub instance_id: String,
    pub host_id: String,
    pub device_index: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Eni {
    #[schemars(with = "schema::EniId")]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub tags: Tags,
    pub tenant: String,
    pub created_at: String,
    #[serde(default)]
    pub revision: u64,
    pub subnet_id: String,
    pub vpc_id: String,
    #[schemars(with = "schema::Mac")]
    pub mac: String,
    pub private_ip: Ipv4Addr,
    #[serde(default)]
    pub secondary_ips: Vec<Ipv4Addr>,
    #[serde(default)]
    pub security_group_ids: Vec<String>,
    pub source_dest_check: bool,
    pub bandwidth: BandwidthSpec,
    #[serde(default)]
    pub attachment: Option<Attachment>,
    pub status: EniStatus,
}

impl Eni {
    /// The primary address followed by the secondaries.
    pub fn all_ips(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        std::iter::once(self.private_ip).chain(self.secondary_ips.iter().copied())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    All,
    Tcp,
    Udp,
    Icmp,
}

/// One security-group rule: traffic of `protocol` on ports
/// `from_port..=to_port` (TCP and UDP only) from or to `cidr` or the members
/// of `source_group_id`. Exactly one of the two peers is given; ports are
/// given only for `tcp` and `udp`, `to_port` only with `from_port`, and
/// `from_port` ≤ `to_port` ([`crate::validate::check_sg_rule`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SgRule {
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<schema::Cidr>")]
    pub cidr: Option<Ipv4Net>,
    /// A group of the same VPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<schema::SecurityGroupId>")]
    pub source_group_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SecurityGroup {
    #[schemars(with = "schema::SecurityGroupId")]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub tags: Tags,
    pub tenant: String,
    pub created_at: String,
    #[serde(default)]
    pub revision: u64,
    pub vpc_id: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub ingress: Vec<SgRule>,
    #[serde(default)]
    pub egress: Vec<SgRule>,
    /// Set while a delete checks that no ENI uses the group.
    #[serde(default, skip_serializing_if = "is_false")]
    pub deleting: bool,
}

/// A route: packets to `destination_cidr` go to `target`, which is `local`
/// (inside the VPC), an ENI id (an appliance), a peering id, the VPC's
/// internet gateway (`igw-…`) or a NAT gateway in the VPC (`nat-…`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    #[schemars(with = "schema::RouteDestination")]
    pub destination_cidr: Ipv4Net,
    #[schemars(with = "schema::RouteTarget")]
    pub target: String,
    /// Reported by the server in every answer, never stored: `blackhole`
    /// when the route's target is gone or cannot forward (a deleted or
    /// detached ENI, a deleted peering, a peering not yet accepted, a
    /// deleted internet or NAT gateway), else
    /// `active`. Ignored on input, so a table read back can be sent back
    /// as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<RouteState>,
}

impl Route {
    pub fn new(destination_cidr: Ipv4Net, target: impl Into<String>) -> Self {
        Route { destination_cidr, target: target.into(), state: None }
    }

    /// The route as it is stored: without the reported state.
    pub fn stored(&self) -> Self {
        Route { state: None, ..self.clone() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RouteState {
    Active,
    Blackhole,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RouteTable {
    #[schemars(with = "schema::RouteTableId")]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub tags: Tags,
    pub tenant: String,
    pub created_at: String,
    #[serde(default)]
    pub revision: u64,
    pub vpc_id: String,
    /// The main table holds the VPC's local route, which cannot be removed.
    pub main: bool,
    pub routes: Vec<Route>,
    /// Subnets that use this table instead of the main one.
    #[serde(default)]
    pub subnet_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Peering {
    #[schemars(with = "schema::PeeringId")]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub tags: Tags,
    pub tenant: String,
    pub created_at: String,
    #[serde(default)]
    pub revision: u64,
    /// The requester's VPC.
    pub vpc_a: String,
    /// The accepter's VPC: its owner accepts the peering.
    pub vpc_b: String,
    /// A peering forwards only once accepted. Peerings stored before
    /// acceptance existed read as `active`.
    #[serde(default)]
    pub status: PeeringStatus,
}

/// Where a peering is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PeeringStatus {
    /// Made by the owner of `vpc_a`; the owner of `vpc_b` has not accepted it.
    PendingAcceptance,
    /// Accepted: routes across it forward where both sides' tables say so.
    #[default]
    Active,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PoolScope {
    Tenant,
    Vpc,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BandwidthPool {
    #[schemars(with = "schema::BandwidthPoolId")]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub tags: Tags,
    pub tenant: String,
    pub created_at: String,
    #[serde(default)]
    pub revision: u64,
    pub scope: PoolScope,
    #[serde(default)]
    pub vpc_id: Option<String>,
    /// Aggregate cap in each direction over all members.
    pub limit_mbps: u64,
    pub members: Vec<String>,
}

/// A range of addresses, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddressRange {
    pub start: Ipv4Addr,
    /// At or after `start`.
    pub end: Ipv4Addr,
}

/// A provider network outside every VPC (the internet, or in the lab a
/// namespace standing for it), which the admin defines and every tenant
/// reads. Elastic IPs are drawn from it; internet gateways lead to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ExternalNetwork {
    #[schemars(with = "schema::ExternalNetworkId")]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub tags: Tags,
    /// Always `system`: the network is shared infrastructure.
    pub tenant: String,
    pub created_at: String,
    #[serde(default)]
    pub revision: u64,
    /// The provider block.
    #[schemars(with = "String")]
    pub cidr: Ipv4Net,
    /// The provider's router in the block, where traffic to the outside
    /// goes next.
    pub gateway_ip: Ipv4Addr,
    /// The addresses elastic IPs are drawn from.
    pub allocation_pool: AddressRange,
    /// The device on every host through which the host reaches this
    /// network (its uplink, or in the lab the link into the `external`
    /// namespace); the data plane sends elastic and NAT traffic out of it.
    pub host_interface: String,
    /// Computed when read: addresses of the pool not allocated.
    #[serde(default)]
    pub available_ip_count: u32,
    /// Set while a delete checks that nothing uses the network; no elastic
    /// IP may be allocated from it meanwhile.
    #[serde(default, skip_serializing_if = "is_false")]
    pub deleting: bool,
}

/// A VPC's way to an external network: routes to it (`igw-…`) carry the
/// traffic of ENIs with an elastic IP, and NAT gateways of the VPC need it.
/// At most one per VPC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct InternetGateway {
    #[schemars(with = "schema::InternetGatewayId")]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub tags: Tags,
    pub tenant: String,
    pub created_at: String,
    #[serde(default)]
    pub revision: u64,
    pub vpc_id: String,
    pub external_network_id: String,
}

/// What an elastic IP maps to: an ENI's private address (1:1 NAT, on the
/// host the ENI is attached to), or the private address of a NAT gateway
/// (the source of what the gateway sends out). Exactly one of `eni_id` and
/// `nat_gateway_id` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EipAssociation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<schema::EniId>")]
    pub eni_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<schema::NatGatewayId>")]
    pub nat_gateway_id: Option<String>,
    /// The ENI's address (its primary or a secondary), or the NAT
    /// gateway's.
    pub private_ip: Ipv4Addr,
}

/// An address of an external network held by a tenant until released.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ElasticIp {
    #[schemars(with = "schema::ElasticIpId")]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub tags: Tags,
    pub tenant: String,
    pub created_at: String,
    #[serde(default)]
    pub revision: u64,
    pub external_network_id: String,
    /// Unique across every external network for as long as it is held.
    pub address: Ipv4Addr,
    /// `null` while not associated.
    #[serde(default)]
    pub association: Option<EipAssociation>,
}

/// Where a NAT gateway is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NatGatewayState {
    /// Placed on `host_id`, a host that was ready when it was placed.
    Available,
}

/// Outbound-only access for the ENIs of the subnets whose route tables
/// send traffic to it (`nat-…`): their packets leave with the source
/// rewritten to the gateway's elastic IP; nothing from outside starts a
/// connection through it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NatGateway {
    #[schemars(with = "schema::NatGatewayId")]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub tags: Tags,
    pub tenant: String,
    pub created_at: String,
    #[serde(default)]
    pub revision: u64,
    pub vpc_id: String,
    /// The subnet it sits in; it holds an address of it.
    pub subnet_id: String,
    /// Its own address in the subnet (what its elastic IP is associated with).
    pub private_ip: Ipv4Addr,
    pub elastic_ip_id: String,
    pub state: NatGatewayState,
    /// The host the gateway runs on, which the server chooses among ready
    /// hosts. It is the server's to rewrite: the gateway moves to another
    /// host when its host is lost, so readers follow this field rather than
    /// remember it.
    #[schemars(with = "schema::HostId")]
    pub host_id: String,
}

// ---------------------------------------------------------------------------
// Request bodies. Their `#[schemars]` attributes state in `/openapi.json`
// what the handlers' validation enforces, from the same constants.

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    #[schemars(with = "schema::Name")]
    pub name: String,
    #[serde(default)]
    #[schemars(with = "schema::Tags")]
    pub tags: Tags,
}

/// What `POST /v1/tenants` answers: the tenant and its token, shown once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TenantWithToken {
    #[serde(flatten)]
    pub tenant: Tenant,
    pub token: String,
}

/// An access key of a tenant, for the EC2 Query API's Signature Version 4.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AccessKey {
    /// `AKIA` and 16 characters.
    pub access_key_id: String,
    pub tenant: String,
    pub created_at: String,
}

/// What `POST /v1/tenants/{id}/access-keys` answers: the key and its
/// secret, shown only this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AccessKeyWithSecret {
    #[serde(flatten)]
    pub key: AccessKey,
    pub secret_access_key: String,
}

/// `POST /v1/tenants/{id}/access-keys` takes an empty object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccessKey {}

/// `POST /v1/hosts`: registers a new host (a name that is taken answers 409
/// `host_exists`; the admin changes a host with `PATCH /v1/hosts/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterHost {
    #[schemars(with = "schema::Name")]
    pub name: String,
    pub underlay_ip: Ipv4Addr,
    /// Capacity of the host's NIC in each direction.
    #[schemars(range(min = 1, max = MAX_MBPS))]
    pub nic_mbps: u64,
    #[serde(default)]
    #[schemars(with = "schema::Labels")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// The desired-state generation the agent has applied.
    #[serde(default)]
    pub applied_generation: u64,
    /// Instances whose namespaces exist on the host.
    #[serde(default)]
    #[schemars(with = "Vec<schema::InstanceId>")]
    pub running_instances: Vec<String>,
    /// What the agent's last pass could not build, per object (empty when
    /// everything applied). A failure in one VPC or instance does not stop
    /// the others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub failures: Vec<ReconcileFailure>,
    /// `container` instances whose namespace is gone from the host (their
    /// runtime removed it): one that was running is deleted, and the ENIs
    /// its CNI ADD made with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<schema::InstanceId>", length(max = 1024))]
    pub vanished_instances: Vec<String>,
    /// The network namespace the agent manages (`--host-netns`; absent:
    /// the machine's own), where it makes `vm` instances' taps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), extend("pattern" = "^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$"))]
    pub host_netns: Option<String>,
}

/// Most failures one heartbeat may carry, and the longest error text.
pub const MAX_REPORTED_FAILURES: usize = 1024;
pub const MAX_FAILURE_ERROR_LEN: usize = 2048;

impl Heartbeat {
    /// The report's bounds: at most [`MAX_REPORTED_FAILURES`] failures, each
    /// naming its object, with an error of at most [`MAX_FAILURE_ERROR_LEN`]
    /// bytes.
    pub fn validate(&self) -> Result<(), crate::ModelError> {
        if self.vanished_instances.len() > MAX_REPORTED_FAILURES {
            return Err(crate::ModelError::invalid(
                "too_many_failures",
                format!("a heartbeat reports at most {MAX_REPORTED_FAILURES} vanished instances, not {}", self.vanished_instances.len()),
            ));
        }
        if self.failures.len() > MAX_REPORTED_FAILURES {
            return Err(crate::ModelError::invalid(
                "too_many_failures",
                format!("a heartbeat reports at most {MAX_REPORTED_FAILURES} failures, not {}", self.failures.len()),
            ));
        }
        if let Some(n) = &self.host_netns {
            let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
            if n.is_empty() || n.len() > 64 || !n.chars().all(ok_char) || n.starts_with(['.', '-']) {
                return Err(crate::ModelError::invalid(
                    "invalid_netns",
                    "`host_netns` must be a name under /run/netns: 1 to 64 of A-Z a-z 0-9 . _ -, not starting with . or -",
                ));
            }
        }
        for f in &self.failures {
            if f.object.is_empty() || f.object.len() > 255 {
                return Err(crate::ModelError::invalid("invalid_failure", "a failure's `object` must be 1-255 bytes"));
            }
            if f.error.len() > MAX_FAILURE_ERROR_LEN {
                return Err(crate::ModelError::invalid(
                    "invalid_failure",
                    format!("a failure's `error` must be at most {MAX_FAILURE_ERROR_LEN} bytes"),
                ));
            }
        }
        Ok(())
    }
}

/// The kind of object a reconcile failure concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailedObjectKind {
    /// A VPC's routing domain on the host (its namespace, VXLAN, ENI veths, firewall).
    Vpc,
    /// An instance's namespace.
    Instance,
    /// The host's own namespace (the underlay filter, VXLAN creation).
    Host,
}

impl FailedObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailedObjectKind::Vpc => "vpc",
            FailedObjectKind::Instance => "instance",
            FailedObjectKind::Host => "host",
        }
    }
}

/// One object the agent could not build in its last pass: its kind, its id
/// (the VPC's, instance's or host's; a leftover namespace's name when it is
/// none of those) and what failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReconcileFailure {
    pub kind: FailedObjectKind,
    #[schemars(length(min = 1, max = 255))]
    pub object: String,
    /// The op that failed and the kernel's error.
    #[schemars(length(max = 2048))]
    pub error: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVpc {
    #[schemars(with = "schema::VpcCidr")]
    pub cidr_block: String,
    #[serde(default)]
    #[schemars(with = "Option<schema::Name>")]
    pub name: Option<String>,
    #[serde(default)]
    #[schemars(with = "schema::Tags")]
    pub tags: Tags,
    #[serde(default)]
    #[schemars(with = "Option<schema::ClientToken>")]
    pub client_token: Option<String>,
    /// What DHCP gives the VPC's ENIs (none when left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp_options: Option<DhcpOptions>,
}

/// `PATCH /v1/vpcs/{id}` and `PATCH /v1/subnets/{id}`: a new name and/or
/// new tags; fields left out stay as they are. With `revision`, the change
/// applies only if the resource is still at it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchNameTags {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<schema::Name>")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<schema::Tags>")]
    pub tags: Option<Tags>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSubnet {
    #[schemars(with = "schema::VpcId")]
    pub vpc_id: String,
    #[schemars(with = "schema::SubnetCidr")]
    pub cidr_block: String,
    #[serde(default)]
    #[schemars(with = "Option<schema::Name>")]
    pub name: Option<String>,
    #[serde(default)]
    #[schemars(with = "schema::Tags")]
    pub tags: Tags,
    #[serde(default)]
    #[schemars(with = "Option<schema::ClientToken>")]
    pub client_token: Option<String>,
    /// What DHCP gives the subnet's ENIs, replacing the VPC's set (the
    /// VPC's applies when left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp_options: Option<DhcpOptions>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInstance {
    #[serde(default)]
    #[schemars(with = "Option<schema::Name>")]
    pub name: Option<String>,
    /// The host to run on; the scheduler chooses when absent.
    #[serde(default)]
    #[schemars(with = "Option<schema::HostId>")]
    pub host_id: Option<String>,
    #[serde(default)]
    pub placement: PlacementStrategy,
    /// `netns` (the default: evnet makes the namespace), `container` (a
    /// runtime made it: `netns` and `host_id` are then required) or `vm`
    /// (its ENIs are taps for a VM monitor).
    #[serde(default)]
    pub kind: InstanceKind,
    /// A `container` instance's namespace, as its runtime gave it.
    #[serde(default)]
    #[schemars(with = "Option<schema::NetnsPath>")]
    pub netns: Option<String>,
    /// A `vm` instance's taps' owner user (uid), so a VM monitor that runs
    /// unprivileged as it can open them. Only with kind `vm`.
    #[serde(default)]
    pub tap_uid: Option<u32>,
    /// A `vm` instance's taps' group (gid). Only with kind `vm`.
    #[serde(default)]
    pub tap_gid: Option<u32>,
    /// ENIs to attach at creation, in device order; their guarantees count
    /// when the scheduler chooses a host.
    #[serde(default)]
    #[schemars(with = "Vec<schema::EniId>", length(max = MAX_ENIS_PER_INSTANCE), extend("uniqueItems" = true))]
    pub eni_ids: Vec<String>,
    #[serde(default)]
    #[schemars(with = "schema::Tags")]
    pub tags: Tags,
    #[serde(default)]
    #[schemars(with = "Option<schema::ClientToken>")]
    pub client_token: Option<String>,
}

/// `POST /v1/enis`. The primary and the secondary addresses are distinct,
/// and `secondary_ips` plus `secondary_ip_count` are at most
/// [`MAX_SECONDARY_IPS`] together.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEni {
    #[schemars(with = "schema::SubnetId")]
    pub subnet_id: String,
    #[serde(default)]
    #[schemars(with = "Option<schema::Name>")]
    pub name: Option<String>,
    /// A specific primary address; the next free one when absent.
    #[serde(default)]
    pub private_ip: Option<Ipv4Addr>,
    /// Specific secondary addresses.
    #[serde(default)]
    #[schemars(length(max = MAX_SECONDARY_IPS), extend("uniqueItems" = true))]
    pub secondary_ips: Vec<Ipv4Addr>,
    /// How many more secondary addresses to take from the pool.
    #[serde(default)]
    #[schemars(range(max = MAX_SECONDARY_IPS))]
    pub secondary_ip_count: u32,
    /// Groups of the same VPC; the VPC's default group when empty.
    #[serde(default)]
    #[schemars(with = "Vec<schema::SecurityGroupId>", length(max = MAX_SECURITY_GROUPS_PER_ENI))]
    pub security_group_ids: Vec<String>,
    #[serde(default)]
    pub source_dest_check: Option<bool>,
    #[serde(default)]
    pub bandwidth: Option<BandwidthSpec>,
    #[serde(default)]
    #[schemars(with = "schema::Tags")]
    pub tags: Tags,
    #[serde(default)]
    #[schemars(with = "Option<schema::ClientToken>")]
    pub client_token: Option<String>,
}

/// `PATCH /v1/enis/{id}`: fields left out stay as they are. With
/// `revision`, the change applies only if the ENI is still at it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchEni {
    #[serde(default)]
    #[schemars(with = "Option<schema::Name>")]
    pub name: Option<String>,
    #[serde(default)]
    #[schemars(with = "Option<schema::Tags>")]
    pub tags: Option<Tags>,
    #[serde(default)]
    #[schemars(with = "Option<Vec<schema::SecurityGroupId>>", length(min = 1, max = MAX_SECURITY_GROUPS_PER_ENI))]
    pub security_group_ids: Option<Vec<String>>,
    #[serde(default)]
    pub source_dest_check: Option<bool>,
    #[serde(default)]
    pub bandwidth: Option<BandwidthSpec>,
    #[serde(default)]
    pub revision: Option<u64>,
}

/// `POST /v1/enis/{id}/assign-ips` and `…/unassign-ips`: secondary
/// addresses by name, or (assign only) how many to take from the subnet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecondaryIps {
    #[serde(default)]
    pub ips: Vec<Ipv4Addr>,
    #[serde(default)]
    pub count: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachEni {
    #[schemars(with = "schema::InstanceId")]
    pub instance_id: String,
    /// The device slot; the lowest free one when absent.
    #[serde(default)]
    #[schemars(range(max = MAX_DEVICE_INDEX))]
    pub device_index: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSecurityGroup {
    #[schemars(with = "schema::VpcId")]
    pub vpc_id: String,
    #[schemars(with = "schema::Name")]
    pub name: String,
    #[serde(default)]
    #[schemars(with = "schema::Description")]
    pub description: String,
    #[serde(default)]
    #[schemars(length(max = MAX_RULES))]
    pub ingress: Vec<SgRule>,
    /// Allow-all when absent, as in AWS.
    #[serde(default)]
    #[schemars(length(max = MAX_RULES))]
    pub egress: Option<Vec<SgRule>>,
    #[serde(default)]
    #[schemars(with = "schema::Tags")]
    pub tags: Tags,
    #[serde(default)]
    #[schemars(with = "Option<schema::ClientToken>")]
    pub client_token: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchSecurityGroup {
    #[serde(default)]
    #[schemars(with = "Option<schema::Name>")]
    pub name: Option<String>,
    #[serde(default)]
    #[schemars(with = "Option<schema::Description>")]
    pub description: Option<String>,
    #[serde(default)]
    #[schemars(length(max = MAX_RULES))]
    pub ingress: Option<Vec<SgRule>>,
    #[serde(default)]
    #[schemars(length(max = MAX_RULES))]
    pub egress: Option<Vec<SgRule>>,
    #[serde(default)]
    #[schemars(with = "Option<schema::Tags>")]
    pub tags: Option<Tags>,
    #[serde(default)]
    pub revision: Option<u64>,
}

/// `POST /v1/route-tables`. The VPC's local route is added when `routes`
/// holds none.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRouteTable {
    #[schemars(with = "schema::VpcId")]
    pub vpc_id: String,
    #[serde(default)]
    #[schemars(with = "Option<schema::Name>")]
    pub name: Option<String>,
    #[serde(default)]
    #[schemars(length(max = MAX_ROUTES + 1))]
    pub routes: Vec<Route>,
    #[serde(default)]
    #[schemars(with = "Vec<schema::SubnetId>")]
    pub subnet_ids: Vec<String>,
    #[serde(default)]
    #[schemars(with = "schema::Tags")]
    pub tags: Tags,
    #[serde(default)]
    #[schemars(with = "Option<schema::ClientToken>")]
    pub client_token: Option<String>,
}

/// `PATCH /v1/route-tables/{id}`. New `routes` keep the VPC's local route.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchRouteTable {
    #[serde(default)]
    #[schemars(with = "Option<schema::Name>")]
    pub name: Option<String>,
    #[serde(default)]
    #[schemars(length(max = MAX_ROUTES + 1))]
    pub routes: Option<Vec<Route>>,
    #[serde(default)]
    #[schemars(with = "Option<Vec<schema::SubnetId>>")]
    pub subnet_ids: Option<Vec<String>>,
    #[serde(default)]
    #[schemars(with = "Option<schema::Tags>")]
    pub tags: Option<Tags>,
    #[serde(default)]
    pub revision: Option<u64>,
}

/// `POST /v1/peerings`: two different VPCs with disjoint blocks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePeering {
    #[schemars(with = "schema::VpcId")]
    pub vpc_a: String,
    #[schemars(with = "schema::VpcId")]
    pub vpc_b: String,
    #[serde(default)]
    #[schemars(with = "Option<schema::Name>")]
    pub name: Option<String>,
    #[serde(default)]
    #[schemars(with = "schema::Tags")]
    pub tags: Tags,
    #[serde(default)]
    #[schemars(with = "Option<schema::ClientToken>")]
    pub client_token: Option<String>,
}

/// `POST /v1/bandwidth-pools`: a `vpc`-scoped pool names its VPC, a
/// `tenant`-scoped one names none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBandwidthPool {
    pub scope: PoolScope,
    #[serde(default)]
    #[schemars(with = "Option<schema::VpcId>")]
    pub vpc_id: Option<String>,
    #[schemars(range(min = 1, max = MAX_MBPS))]
    pub limit_mbps: u64,
    #[serde(default)]
    #[schemars(with = "Vec<schema::EniId>", extend("uniqueItems" = true))]
    pub members: Vec<String>,
    #[serde(default)]
    #[schemars(with = "Option<schema::Name>")]
    pub name: Option<String>,
    #[serde(default)]
    #[schemars(with = "schema::Tags")]
    pub tags: Tags,
    #[serde(default)]
    #[schemars(with = "Option<schema::ClientToken>")]
    pub client_token: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchBandwidthPool {
    #[serde(default)]
    #[schemars(range(min = 1, max = MAX_MBPS))]
    pub limit_mbps: Option<u64>,
    #[serde(default)]
    #[schemars(with = "Option<Vec<schema::EniId>>", extend("uniqueItems" = true))]
    pub members: Option<Vec<String>>,
    #[serde(default)]
    #[schemars(with = "Option<schema::Name>")]
    pub name: Option<String>,
    #[serde(default)]
    #[schemars(with = "Option<schema::Tags>")]
    pub tags: Option<Tags>,
    #[serde(default)]
    pub revision: Option<u64>,
}

/// `POST /v1/external-networks` (admin). `gateway_ip` defaults to the
/// network address + 1 and `allocation_pool` to the block without its
/// network, gateway and broadcast addresses; a gateway inside the block
/// needs a pool given with it. The pool lies in the block, without the
/// network, broadcast and gateway addresses, `start` ≤ `end`
/// ([`crate::external::gateway_and_pool`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateExternalNetwork {
    #[schemars(with = "schema::ExternalCidr")]
    pub cidr: String,
    #[serde(default)]
    pub gateway_ip: Option<Ipv4Addr>,
    #[serde(default)]
    pub allocation_pool: Option<AddressRange>,
    /// The device every host reaches the network through; default `evext0`.
    #[serde(default)]
    #[schemars(with = "Option<schema::InterfaceName>")]
    pub host_interface: Option<String>,
    #[serde(default)]
    #[schemars(with = "Option<schema::Name>")]
    pub name: Option<String>,
    #[serde(default)]
    #[schemars(with = "schema::Tags")]
    pub tags: Tags,
    #[serde(default)]
    #[schemars(with = "Option<schema::ClientToken>")]
    pub client_token: Option<String>,
}

/// `POST /v1/internet-gateways`: one per VPC. `external_network_id` may be
/// left out when exactly one external network exists.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInternetGateway {
    #[schemars(with = "schema::VpcId")]
    pub vpc_id: String,
    #[serde(default)]
    #[schemars(with = "Option<schema::ExternalNetworkId>")]
    pub external_network_id: Option<String>,
    #[serde(default)]
    #[schemars(with = "Option<schema::Name>")]
    pub name: Option<String>,
    #[serde(default)]
    #[schemars(with = "schema::Tags")]
    pub tags: Tags,
    #[serde(default)]
    #[schemars(with = "Option<schema::ClientToken>")]
    pub client_token: Option<String>,
}

/// `POST /v1/elastic-ips`: allocates the next free address of the
/// external network's pool. `external_network_id` may be left out when
/// exactly one external network exists.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AllocateElasticIp {
    #[serde(default)]
    #[schemars(with = "Option<schema::ExternalNetworkId>")]
    pub external_network_id: Option<String>,
    #[serde(default)]
    #[schemars(with = "Option<schema::Name>")]
    pub name: Option<String>,
    #[serde(default)]
    #[schemars(with = "schema::Tags")]
    pub tags: Tags,
    #[serde(default)]
    #[schemars(with = "Option<schema::ClientToken>")]
    pub client_token: Option<String>,
}

/// `POST /v1/elastic-ips/{id}/associate`: maps the elastic IP to one of
/// the ENI's addresses (its primary when `private_ip` is left out). The
/// ENI's VPC needs an internet gateway to the elastic IP's external
/// network. An elastic IP associated elsewhere moves only with
/// `allow_reassociation` (never away from a NAT gateway); a private address
/// has at most one elastic IP.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AssociateElasticIp {
    #[schemars(with = "schema::EniId")]
    pub eni_id: String,
    #[serde(default)]
    pub private_ip: Option<Ipv4Addr>,
    #[serde(default)]
    pub allow_reassociation: bool,
}

/// `POST /v1/elastic-ips/{id}/disassociate` takes no fields; the body may
/// be left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DisassociateElasticIp {}

/// `POST /v1/nat-gateways`: a gateway in `subnet_id` whose traffic leaves
/// from `elastic_ip_id`, an elastic IP of the caller that is not
/// associated and comes from the external network of the VPC's internet
/// gateway (which the VPC must have).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNatGateway {
    #[schemars(with = "schema::SubnetId")]
    pub subnet_id: String,
    #[schemars(with = "schema::ElasticIpId")]
    pub elastic_ip_id: String,
    #[serde(default)]
    #[schemars(with = "Option<schema::Name>")]
    pub name: Option<String>,
    #[serde(default)]
    #[schemars(with = "schema::Tags")]
    pub tags: Tags,
    #[serde(default)]
    #[schemars(with = "Option<schema::ClientToken>")]
    pub client_token: Option<String>,
}

/// One page of a list: the items and, when more follow, the token that
/// fetches the next page (`?page_token=`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// The error body of every 4xx and 5xx: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}
